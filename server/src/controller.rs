//! The controller's part in replication: it alone writes the replicated
//! topics' records and their partitions' states (docs/cluster.md,
//! "Partitions"), and keeps the partition map every node follows.
//!
//! Every decision is one new version of one object in the store, created
//! with `PutMode::Create` after reading the version before it. A
//! controller that loses a race (a newer controller wrote first) gets a
//! conflict, rereads that object and decides again at its next pass; one
//! deposed meanwhile finds the newer controller epoch and stops. The map
//! is only the controller's copy of what it wrote.

use std::collections::{BTreeMap, BTreeSet};

use strata_broker::topic::TopicMeta;
use strata_cluster::partition_state::assign;
use strata_cluster::{
    ClusterError, ControlStore, IsrReport, MapVersion, MappedTopic, NodeId, NodeView, PartitionMap,
    PartitionState, Replica, TopicRecord,
};

/// Why a replicated topic could not be created.
#[derive(Debug)]
pub enum CreateRefusal {
    /// A replicated topic of that name exists.
    Exists,
    /// More replicas than live nodes.
    TooFewNodes { wanted: u32, alive: usize },
    /// The store failed.
    Store(ClusterError),
}

/// The controller's copy of every replicated topic and partition state.
pub struct PartitionController {
    control: ControlStore,
    epoch: u64,
    map: PartitionMap,
    /// Where the next topic's first leader goes (round robin, as Kafka
    /// starts each topic's assignment at a random broker).
    next_start: usize,
    /// Nodes being drained, and the version of that list in the store.
    draining: BTreeSet<NodeId>,
    draining_version: u64,
}

/// Most reassignment steps (replica added or removed, leader moved) one
/// pass makes: a join or a drain moves partitions a few at a time.
const STEPS_PER_PASS: usize = 8;

impl PartitionController {
    /// Reads every replicated topic and partition state from the store,
    /// for a controller of `epoch`.
    pub async fn load(control: ControlStore, epoch: u64) -> Result<Self, ClusterError> {
        let mut topics = BTreeMap::new();
        for name in control.topic_names().await? {
            let Some((version, record)) = control.topic_record(&name).await? else {
                continue;
            };
            if record.deleted {
                continue;
            }
            let mut partitions = Vec::with_capacity(record.meta.partitions as usize);
            for p in 0..record.meta.partitions {
                match control.partition_state(&name, p).await? {
                    Some(found) => partitions.push(found),
                    None => {
                        // A crash between the topic's record and its
                        // partitions' first states: the topic is unusable
                        // until created again; leave it out.
                        tracing::warn!(topic = %name, partition = p, "a replicated topic lacks a partition state; leaving it out");
                        break;
                    }
                }
            }
            if partitions.len() == record.meta.partitions as usize {
                topics.insert(
                    name,
                    MappedTopic {
                        meta: record.meta,
                        version,
                        partitions,
                    },
                );
            }
        }
        let (draining_version, draining) = control.draining().await?;
        Ok(Self {
            draining: draining.into_iter().collect(),
            draining_version,
            control,
            epoch,
            map: PartitionMap {
                version: MapVersion {
                    controller_epoch: epoch,
                    counter: 1,
                },
                topics,
            },
            next_start: 0,
        })
    }

    /// The map as the controller has it now.
    pub fn map(&self) -> &PartitionMap {
        &self.map
    }

    /// The nodes being drained.
    pub fn draining(&self) -> &BTreeSet<NodeId> {
        &self.draining
    }

    /// Starts draining `node`: its replicas move to other live nodes
    /// (keeping each partition's replication factor where enough remain)
    /// and its leaderships to other in-sync replicas, a few per pass. The
    /// list is kept in the store, so a new controller goes on with it.
    pub async fn drain(&mut self, node: &NodeId) -> Result<(), ClusterError> {
        if self.draining.contains(node) {
            return Ok(());
        }
        let mut next: Vec<NodeId> = self.draining.iter().cloned().collect();
        next.push(node.clone());
        self.control
            .write_draining(self.draining_version + 1, &next)
            .await?;
        self.draining_version += 1;
        self.draining.insert(node.clone());
        tracing::info!(%node, "draining the node");
        Ok(())
    }

    fn changed(&mut self) {
        self.map.version.counter += 1;
    }

    /// Creates a replicated topic: its record, then each partition's first
    /// state (replicas spread over the live nodes that are not being
    /// drained, Kafka's way).
    pub async fn create_topic(
        &mut self,
        meta: TopicMeta,
        nodes: &[NodeView],
    ) -> Result<(), CreateRefusal> {
        if self.map.topics.contains_key(&meta.name) {
            return Err(CreateRefusal::Exists);
        }
        let alive: Vec<&NodeView> = nodes
            .iter()
            .filter(|n| n.alive && !self.draining.contains(&n.id))
            .collect();
        let wanted = meta.config.replicas();
        let ids: Vec<NodeId> = alive.iter().map(|n| n.id.clone()).collect();
        let Some(assigned) = assign(meta.partitions, wanted as usize, &ids, self.next_start) else {
            return Err(CreateRefusal::TooFewNodes {
                wanted,
                alive: alive.len(),
            });
        };
        self.next_start = self.next_start.wrapping_add(1);
        // A record the map lacks is a deleted topic's, or one a controller
        // crash left without its partitions' states: either way the next
        // version makes the topic anew.
        let version = self
            .control
            .topic_record(&meta.name)
            .await
            .map_err(CreateRefusal::Store)?
            .map_or(1, |(version, _)| version + 1);
        let record = TopicRecord {
            meta: meta.clone(),
            deleted: false,
        };
        match self
            .control
            .write_topic_record(&meta.name, version, &record)
            .await
        {
            Ok(()) => {}
            Err(e) if e.is_conflict() => return Err(CreateRefusal::Exists),
            Err(e) => return Err(CreateRefusal::Store(e)),
        }
        let incarnation = |id: &NodeId| {
            alive
                .iter()
                .find(|n| n.id == *id)
                .map_or(0, |n| n.incarnation)
        };
        let mut partitions = Vec::with_capacity(assigned.len());
        for (p, replicas) in assigned.iter().enumerate() {
            let replicas: Vec<Replica> = replicas
                .iter()
                .map(|id| Replica {
                    node: id.clone(),
                    incarnation: incarnation(id),
                })
                .collect();
            let state = PartitionState::initial(&replicas, self.epoch);
            // A topic of the same name deleted before may have left states:
            // continue after them.
            let next = self
                .control
                .partition_state(&meta.name, p as u32)
                .await
                .map_err(CreateRefusal::Store)?
                .map_or(1, |(v, _)| v + 1);
            self.control
                .write_partition_state(&meta.name, p as u32, next, &state)
                .await
                .map_err(CreateRefusal::Store)?;
            partitions.push((next, state));
        }
        tracing::info!(topic = %meta.name, partitions = meta.partitions, replication_factor = wanted, "created a replicated topic");
        self.map.topics.insert(
            meta.name.clone(),
            MappedTopic {
                meta,
                version,
                partitions,
            },
        );
        self.changed();
        Ok(())
    }

    /// Deletes a replicated topic (a new version of its record that says
    /// so); `false` when there is none.
    pub async fn delete_topic(&mut self, name: &str) -> Result<bool, ClusterError> {
        let Some(topic) = self.map.topics.get(name) else {
            return Ok(false);
        };
        let record = TopicRecord {
            meta: topic.meta.clone(),
            deleted: true,
        };
        self.control
            .write_topic_record(name, topic.version + 1, &record)
            .await?;
        self.map.topics.remove(name);
        self.changed();
        tracing::info!(topic = %name, "deleted a replicated topic");
        Ok(true)
    }

    /// One pass over every partition: leaders of dead nodes and of old
    /// incarnations are replaced from the ISR, dead or replaced members
    /// leave it, leaderless partitions get a leader back when an ISR member
    /// returns, and the leaders' ISR reports are applied. `deaths` is false
    /// while this controller is too new to tell a dead node from one whose
    /// first heartbeat has not come; `presumed_dead` is a node it knows to
    /// be dead meanwhile (the controller it replaced for its silence).
    /// Returns whether the map changed, or `None` when this controller
    /// found itself deposed (it rereads its epoch before its first write
    /// of a pass, so a deposed controller's decisions land only in the
    /// moment between that read and the write).
    pub async fn maintain(
        &mut self,
        nodes: &[NodeView],
        reports: &[IsrReport],
        deaths: bool,
        presumed_dead: Option<&NodeId>,
    ) -> Option<bool> {
        let mut epoch_checked = false;
        let mut steps = 0;
        let mut load = Load::of(&self.map, nodes);
        let alive = |id: &NodeId| nodes.iter().any(|n| n.id == *id && n.alive);
        let current = |id: &NodeId| nodes.iter().find(|n| n.id == *id).map(|n| n.incarnation);
        let mut changed = false;
        let names: Vec<String> = self.map.topics.keys().cloned().collect();
        for name in names {
            let count = self.map.topics[&name].partitions.len();
            for p in 0..count {
                let (version, state) = self.map.topics[&name].partitions[p].clone();
                let mut next = state.clone();
                let epoch = self.epoch;
                for member in state.isr.clone() {
                    if current(&member.node).is_some_and(|now| now > member.incarnation) {
                        let now = current(&member.node).unwrap_or(member.incarnation);
                        if let Some(c) = next.on_new_incarnation(&member.node, now, alive, epoch) {
                            next = c;
                        }
                    } else if (deaths || presumed_dead == Some(&member.node))
                        && !alive(&member.node)
                        && let Some(c) = next.on_node_dead(&member.node, alive, epoch)
                    {
                        next = c;
                    }
                }
                if next.leader.is_none() {
                    for member in next.isr.clone() {
                        if alive(&member.node) && current(&member.node) == Some(member.incarnation)
                        {
                            if let Some(c) = next.expand_isr(&member, epoch) {
                                next = c;
                            }
                            break;
                        }
                    }
                }
                let (leader_epoch, led) = (next.leader_epoch, next.leader.is_some());
                for report in reports.iter().filter(|r| {
                    r.topic == name
                        && r.partition == p as u32
                        && r.leader_epoch == leader_epoch
                        && led
                }) {
                    for replica in &report.caught_up {
                        if current(&replica.node) == Some(replica.incarnation)
                            && let Some(c) = next.expand_isr(replica, epoch)
                        {
                            next = c;
                        }
                    }
                    for node in &report.lagging {
                        if let Some(c) = next.shrink_isr(node, epoch) {
                            next = c;
                        }
                    }
                }
                if next == state && deaths && steps < STEPS_PER_PASS {
                    let rf = self.map.topics[&name].meta.config.replicas() as usize;
                    if let Some(step) = balance_step(&next, rf, &load, nodes, &self.draining, epoch)
                    {
                        load.apply(&next, &step);
                        next = step;
                        steps += 1;
                    }
                }
                if next == state {
                    continue;
                }
                if !epoch_checked {
                    epoch_checked = true;
                    match self.control.controller().await {
                        Ok(Some(newest)) if newest.epoch > self.epoch => return None,
                        Ok(_) => {}
                        Err(error) => {
                            tracing::warn!(%error, "cannot reread the controller epoch; deciding next pass");
                            return Some(changed);
                        }
                    }
                }
                match self
                    .control
                    .write_partition_state(&name, p as u32, version + 1, &next)
                    .await
                {
                    Ok(()) => {
                        log_change(&name, p as u32, &state, &next);
                        if let Some(topic) = self.map.topics.get_mut(&name) {
                            topic.partitions[p] = (version + 1, next);
                        }
                        changed = true;
                    }
                    Err(error) => {
                        // A conflict (a newer controller wrote) or an outage:
                        // reread what is there and decide again next pass.
                        tracing::warn!(topic = %name, partition = p, %error, "could not write a partition state; rereading it");
                        if let Ok(Some(found)) = self.control.partition_state(&name, p as u32).await
                            && let Some(topic) = self.map.topics.get_mut(&name)
                        {
                            topic.partitions[p] = found;
                            changed = true;
                        }
                    }
                }
            }
        }
        if changed {
            self.changed();
        }
        Some(changed)
    }
}

/// One log line per election and ISR change, with metrics.
fn log_change(topic: &str, partition: u32, before: &PartitionState, after: &PartitionState) {
    let isr = |s: &PartitionState| {
        s.isr
            .iter()
            .map(ToString::to_string)
            .collect::<Vec<_>>()
            .join(",")
    };
    if before.leader_epoch != after.leader_epoch {
        metrics::counter!("strata_cluster_leader_elections_total").increment(1);
        tracing::warn!(
            topic,
            partition,
            from = ?before.leader.as_ref().map(NodeId::as_str),
            to = ?after.leader.as_ref().map(NodeId::as_str),
            leader_epoch = after.leader_epoch,
            isr = %isr(after),
            "elected a partition leader"
        );
    }
    if after.isr.len() < before.isr.len() {
        metrics::counter!("strata_cluster_isr_shrinks_total").increment(1);
        tracing::warn!(topic, partition, from = %isr(before), to = %isr(after), "the ISR shrank");
    } else if after.isr != before.isr {
        metrics::counter!("strata_cluster_isr_expands_total").increment(1);
        tracing::info!(topic, partition, from = %isr(before), to = %isr(after), "the ISR changed");
    }
}

/// How many replicas and leaderships each live node holds.
struct Load {
    replicas: BTreeMap<NodeId, usize>,
    leaders: BTreeMap<NodeId, usize>,
}

impl Load {
    fn of(map: &PartitionMap, nodes: &[NodeView]) -> Self {
        let mut load = Self {
            replicas: nodes
                .iter()
                .filter(|n| n.alive)
                .map(|n| (n.id.clone(), 0))
                .collect(),
            leaders: BTreeMap::new(),
        };
        for topic in map.topics.values() {
            for (_, state) in &topic.partitions {
                load.count(state, 1);
            }
        }
        load
    }

    fn count(&mut self, state: &PartitionState, sign: isize) {
        let bump = |n: &mut usize| *n = n.saturating_add_signed(sign);
        for node in &state.replicas {
            if let Some(n) = self.replicas.get_mut(node) {
                bump(n);
            }
        }
        if let Some(leader) = &state.leader {
            bump(self.leaders.entry(leader.clone()).or_default());
        }
    }

    fn apply(&mut self, before: &PartitionState, after: &PartitionState) {
        self.count(before, -1);
        self.count(after, 1);
    }

    fn replicas_of(&self, node: &NodeId) -> usize {
        self.replicas.get(node).copied().unwrap_or(0)
    }

    fn leaders_of(&self, node: &NodeId) -> usize {
        self.leaders.get(node).copied().unwrap_or(0)
    }
}

/// The next step, if any, that moves `state` towards no replica on a
/// draining node, `rf` replicas spread evenly over the live nodes, and
/// leaderships spread evenly too. A replica moves in steps that never
/// weaken the ISR: the new node is added, catches up and joins the ISR
/// (the leader reports it), the leadership moves off the old node if it
/// led, and only then is the old replica removed.
fn balance_step(
    state: &PartitionState,
    rf: usize,
    load: &Load,
    nodes: &[NodeView],
    draining: &BTreeSet<NodeId>,
    epoch: u64,
) -> Option<PartitionState> {
    state.leader.as_ref()?;
    let live = |n: &NodeId| nodes.iter().any(|v| v.id == *n && v.alive) && !draining.contains(n);
    let candidates: Vec<&NodeId> = load
        .replicas
        .keys()
        .filter(|n| live(n) && !state.replicas.contains(n))
        .collect();
    let fewest = |among: &[&NodeId]| {
        among
            .iter()
            .min_by_key(|n| load.replicas_of(n))
            .map(|n| (*n).clone())
    };
    let staying: Vec<&NodeId> = state
        .replicas
        .iter()
        .filter(|n| !draining.contains(*n))
        .collect();
    // A replica to remove: a draining node's once enough others stay, or
    // the most loaded node's when there is one replica too many.
    let leaving = match state.replicas.iter().find(|n| draining.contains(*n)) {
        Some(gone) => {
            if staying.len() < rf && !candidates.is_empty() {
                return state.add_replica(&fewest(&candidates)?, epoch);
            }
            Some(gone.clone())
        }
        None if state.replicas.len() > rf => state
            .replicas
            .iter()
            .max_by_key(|n| (load.replicas_of(n), state.leader.as_ref() != Some(*n)))
            .cloned(),
        None => None,
    };
    if let Some(leaving) = leaving {
        if state.leader.as_ref() == Some(&leaving) {
            let to = state
                .isr
                .iter()
                .map(|m| &m.node)
                .filter(|n| **n != leaving && live(n))
                .min_by_key(|n| load.leaders_of(n))?;
            return state.move_leader(to, epoch);
        }
        return state.remove_replica(&leaving, epoch);
    }
    // A node with two replicas fewer than the busiest one of this
    // partition takes one (a node that joined).
    if let Some(newcomer) = fewest(&candidates) {
        let busiest = state.replicas.iter().max_by_key(|n| load.replicas_of(n))?;
        if load.replicas_of(busiest) > load.replicas_of(&newcomer) + 1 {
            return state.add_replica(&newcomer, epoch);
        }
    }
    // Leaderships: from a node that leads two more than an in-sync
    // replica of this partition, to that replica.
    let leader = state.leader.as_ref()?;
    let to = state
        .isr
        .iter()
        .map(|m| &m.node)
        .filter(|n| *n != leader && live(n))
        .min_by_key(|n| load.leaders_of(n))?;
    if load.leaders_of(leader) > load.leaders_of(to) + 1 {
        return state.move_leader(to, epoch);
    }
    None
}

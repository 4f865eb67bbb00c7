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

use std::collections::BTreeMap;

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
}

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
        Ok(Self {
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

    fn changed(&mut self) {
        self.map.version.counter += 1;
    }

    /// Creates a replicated topic: its record, then each partition's first
    /// state (replicas spread over the live nodes, Kafka's way).
    pub async fn create_topic(
        &mut self,
        meta: TopicMeta,
        nodes: &[NodeView],
    ) -> Result<(), CreateRefusal> {
        if self.map.topics.contains_key(&meta.name) {
            return Err(CreateRefusal::Exists);
        }
        let alive: Vec<&NodeView> = nodes.iter().filter(|n| n.alive).collect();
        let wanted = meta.config.replicas();
        let ids: Vec<NodeId> = alive.iter().map(|n| n.id.clone()).collect();
        let Some(assigned) = assign(meta.partitions, wanted as usize, &ids, self.next_start) else {
            return Err(CreateRefusal::TooFewNodes {
                wanted,
                alive: alive.len(),
            });
        };
        self.next_start = self.next_start.wrapping_add(1);
        let version = match self
            .control
            .topic_record(&meta.name)
            .await
            .map_err(CreateRefusal::Store)?
        {
            Some((_, record)) if !record.deleted => return Err(CreateRefusal::Exists),
            Some((version, _)) => version + 1,
            None => 1,
        };
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

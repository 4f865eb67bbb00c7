//! This node's replicas of replicated topics (docs/cluster.md,
//! "Replication"): it follows the controller's partition map, leads the
//! partitions the map says it leads, and copies the others from their
//! leaders.
//!
//! - As a **leader** of a partition, it takes produces, counts a produce as
//!   committed once every in-sync replica has it durable (the high
//!   watermark), serves its followers' fetches ([`leader`]), and offloads.
//! - As a **follower**, one task per partition first truncates the log to
//!   where it agrees with the leader (KIP-101), then fetches from the
//!   leader's log end and appends the batches at their offsets
//!   ([`follower`]).
//! - As an **observer** of a partition it holds no replica of, it does
//!   what a follower does, but its fetches count for nothing: it never
//!   acknowledges, joins the ISR or leads. It is there so that every read
//!   on every node sees the whole partition: the hot tail copied, the
//!   rest in the cold tier.
//!
//! Readers everywhere see only what is below the high watermark, so a read
//! from any replica never returns a record that could still be truncated.
//! Topics with one replica are not here: they are the node's own, as on a
//! single server.

mod follower;
pub mod leader;

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;
use std::time::{Duration, Instant};

use parking_lot::Mutex;
use strata_broker::epochs::EpochStart;
use strata_broker::{Broker, Topic};
use strata_cluster::replication::LeaderProgress;
use strata_cluster::tokens::Token;
use strata_cluster::{
    IsrReport, MapVersion, NodeId, NodeView, PartitionMap, PartitionState, Replica,
};
use strata_tiering::{OffloadScope, Tiering};
use tokio::sync::watch;

use crate::api_error::ApiError;

/// How this node replicates.
#[derive(Debug, Clone)]
pub struct ReplicationConfig {
    /// A follower that has not caught up for this long leaves the ISR.
    pub max_lag: Duration,
    /// How long a follower's fetch waits at the leader's log end.
    pub fetch_wait: Duration,
    /// How long a produce waits for its in-sync replicas.
    pub ack_timeout: Duration,
    /// Most bytes one fetch returns.
    pub fetch_bytes: usize,
}

impl Default for ReplicationConfig {
    fn default() -> Self {
        Self {
            max_lag: Duration::from_millis(2500),
            fetch_wait: Duration::from_millis(500),
            ack_timeout: Duration::from_secs(10),
            fetch_bytes: 4 * 1024 * 1024,
        }
    }
}

/// Where work for a partition goes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Route {
    /// Not replicated, or led here.
    Here,
    /// Led by another node, at this URL.
    Node(NodeId, String),
    /// No leader now (its in-sync replicas are down) or unknown yet.
    Nobody,
}

/// What this node does for one replicated partition.
enum Role {
    Leader(LeaderProgress),
    Follower {
        leader: NodeId,
        leader_epoch: u64,
        task: tokio::task::AbortHandle,
    },
    /// A replica of a partition that has no leader now.
    Waiting,
}

struct Inner {
    /// This node at its registered incarnation (`None` before).
    me: Option<Replica>,
    secret: Option<Token>,
    map: PartitionMap,
    /// Whether a map from the controller arrived since this process started.
    has_map: bool,
    urls: BTreeMap<NodeId, String>,
    roles: HashMap<(String, u32), Role>,
}

/// This node's replicas.
pub struct Replication {
    id: NodeId,
    broker: Arc<Broker>,
    tiering: Arc<Tiering>,
    config: ReplicationConfig,
    http: reqwest::Client,
    inner: Mutex<Inner>,
    runtime: tokio::runtime::Handle,
    stopping: watch::Receiver<bool>,
}

impl std::fmt::Debug for Replication {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Replication").field("id", &self.id).finish()
    }
}

impl Replication {
    /// This node's replicas; nothing is led or followed until the first
    /// map arrives. Readers of replicated partitions see only the cold tier
    /// until then (what is committed locally is not known yet).
    pub fn new(
        id: NodeId,
        broker: Arc<Broker>,
        tiering: Arc<Tiering>,
        config: ReplicationConfig,
        http: reqwest::Client,
        stopping: watch::Receiver<bool>,
    ) -> Arc<Self> {
        for topic in broker.topics() {
            if topic.config().is_replicated() {
                for p in topic.partitions() {
                    p.set_writable(false);
                    p.set_high_watermark(Some(p.start_offset()));
                }
            }
        }
        Arc::new(Self {
            id,
            broker,
            tiering,
            config,
            http,
            inner: Mutex::new(Inner {
                me: None,
                secret: None,
                map: PartitionMap::default(),
                has_map: false,
                urls: BTreeMap::new(),
                roles: HashMap::new(),
            }),
            runtime: tokio::runtime::Handle::current(),
            stopping,
        })
    }

    /// This node registered as `me`; nodes authenticate to each other
    /// with `secret`.
    pub fn registered(&self, me: Replica, secret: Option<Token>) {
        let mut inner = self.inner.lock();
        inner.me = Some(me);
        inner.secret = secret;
    }

    /// The map this node holds, `None` before the first.
    pub fn map_version(&self) -> Option<MapVersion> {
        let inner = self.inner.lock();
        inner.has_map.then_some(inner.map.version)
    }

    /// How many partitions this node leads and holds a replica of.
    pub fn counts(&self) -> (u64, u64) {
        let inner = self.inner.lock();
        inner.map.counts(&self.id)
    }

    /// The state of a replicated partition as this node knows it.
    pub fn state(&self, topic: &str, partition: u32) -> Option<PartitionState> {
        self.inner.lock().map.state(topic, partition).cloned()
    }

    /// Whether `topic` is in the map (a replicated topic that exists).
    pub fn knows_topic(&self, topic: &str) -> bool {
        self.inner.lock().map.topics.contains_key(topic)
    }

    /// Where work for a partition of `topic` goes.
    pub fn route(&self, topic: &Topic, partition: u32) -> Route {
        if !topic.config().is_replicated() {
            return Route::Here;
        }
        let inner = self.inner.lock();
        match inner.map.state(topic.name(), partition) {
            Some(state) => match &state.leader {
                Some(leader) if *leader == self.id => {
                    match inner.roles.get(&key(topic.name(), partition)) {
                        Some(Role::Leader(_)) => Route::Here,
                        _ => Route::Nobody,
                    }
                }
                Some(leader) => match inner.urls.get(leader) {
                    Some(url) => Route::Node(leader.clone(), url.clone()),
                    None => Route::Nobody,
                },
                None => Route::Nobody,
            },
            None => Route::Nobody,
        }
    }

    /// Where reads of a partition go: here when this node holds a replica
    /// (or the topic is not replicated), else the leader.
    pub fn read_route(&self, topic: &Topic, partition: u32) -> Route {
        if !topic.config().is_replicated() {
            return Route::Here;
        }
        let holds = self
            .inner
            .lock()
            .map
            .state(topic.name(), partition)
            .is_some_and(|s| s.replicas.contains(&self.id));
        if holds {
            Route::Here
        } else {
            self.route(topic, partition)
        }
    }

    /// The node secret to present to other nodes, if authentication is on.
    pub fn secret(&self) -> Option<Token> {
        self.inner.lock().secret.clone()
    }

    /// Follows `map` (from the controller) with the nodes' URLs in
    /// `nodes`: creates local replicas of new topics, deletes those of
    /// deleted ones, and takes up each partition's role.
    pub async fn apply(self: &Arc<Self>, map: PartitionMap, nodes: &[NodeView]) {
        let this = self.clone();
        let nodes = nodes.to_vec();
        let applied = tokio::task::spawn_blocking(move || this.apply_blocking(map, &nodes)).await;
        if let Err(error) = applied {
            tracing::error!(%error, "applying the partition map failed");
        }
    }

    fn apply_blocking(self: &Arc<Self>, map: PartitionMap, nodes: &[NodeView]) {
        let Some(me) = self.inner.lock().me.clone() else {
            return;
        };
        // The map first: a request that finds a local replica finds its
        // state too (and a leader whose role is not taken up yet answers
        // 503 until it is).
        let had_map = {
            let mut inner = self.inner.lock();
            inner.urls = nodes
                .iter()
                .map(|n| (n.id.clone(), n.url.clone()))
                .collect();
            inner.map = map.clone();
            std::mem::replace(&mut inner.has_map, true)
        };
        // Local replicas of topics no longer in the map (deleted while
        // this node was away, or here): delete them.
        if had_map || map.version.counter > 0 {
            for topic in self.broker.topics() {
                if topic.config().is_replicated() && !map.topics.contains_key(topic.name()) {
                    self.drop_roles(topic.name());
                    tracing::info!(
                        topic = topic.name(),
                        "deleting the local replicas of a deleted topic"
                    );
                    if let Err(error) = self.broker.delete_topic(topic.name()) {
                        tracing::warn!(topic = topic.name(), %error, "could not delete a local replica");
                    }
                }
            }
        }
        for (name, mapped) in &map.topics {
            let holds = mapped
                .partitions
                .iter()
                .any(|(_, s)| s.replicas.contains(&self.id));
            // Every node keeps the topic, holding replicas or not, so that
            // it can take any request for it and pass it on.
            let topic = match self.broker.topic(name) {
                Ok(topic) if topic.meta().partitions == mapped.meta.partitions => Some(topic),
                Ok(_) => {
                    tracing::error!(topic = %name, "a local topic of the same name has another shape; not replicating it");
                    None
                }
                Err(_) => {
                    let starts = vec![0; mapped.meta.partitions as usize];
                    match self.broker.restore_topic(mapped.meta.clone(), &starts) {
                        Ok(topic) => {
                            self.tiering.topic_created(&topic);
                            for p in topic.partitions() {
                                p.set_writable(false);
                                p.set_high_watermark(Some(0));
                            }
                            tracing::info!(topic = %name, replicas_here = holds, "created a replicated topic here");
                            Some(topic)
                        }
                        Err(error) => {
                            tracing::warn!(topic = %name, %error, "could not create a local replica");
                            None
                        }
                    }
                }
            };
            let Some(topic) = topic else { continue };
            for (p, (_, state)) in mapped.partitions.iter().enumerate() {
                self.take_role(&topic, p as u32, state, &me);
            }
        }
    }

    fn drop_roles(&self, topic: &str) {
        let mut inner = self.inner.lock();
        inner.roles.retain(|(t, _), role| {
            if t == topic {
                if let Role::Follower { task, .. } = role {
                    task.abort();
                }
                false
            } else {
                true
            }
        });
    }

    /// Takes up this node's role for one partition in `state`.
    fn take_role(
        self: &Arc<Self>,
        topic: &Arc<Topic>,
        p: u32,
        state: &PartitionState,
        me: &Replica,
    ) {
        let Some(partition) = topic.partitions().get(p as usize).cloned() else {
            return;
        };
        let k = key(topic.name(), p);
        let mut inner = self.inner.lock();
        let current = inner.roles.get_mut(&k);
        let leads = state.leader.as_ref() == Some(&self.id) && state.isr.contains(me);
        if !leads {
            // Before anything else: no produce appends here any more.
            partition.set_writable(false);
        }
        if state.leader.as_ref() == Some(&self.id) && !state.isr.contains(me) {
            // The map names an older incarnation of this node (its disk was
            // lost): this process holds none of what that one acknowledged,
            // and must not lead. The controller moves the leadership.
            if let Some(Role::Follower { task, .. }) = inner.roles.insert(k, Role::Waiting) {
                task.abort();
            }
            return;
        }
        if state.leader.as_ref() == Some(&self.id) {
            if let Some(Role::Leader(progress)) = current
                && progress.leader_epoch() == state.leader_epoch
            {
                progress.on_state(state);
                let hw = progress.high_watermark(partition.log_end_offset());
                partition.set_high_watermark(Some(hw));
                return;
            }
            if let Some(Role::Follower { task, .. }) = current {
                task.abort();
            }
            drop(inner);
            // Taking over: this epoch writes from the log end on. What this
            // node copied as a follower may be above the old high
            // watermark; it stays (a new leader keeps its log, KIP-101) and
            // becomes committed once the followers have it.
            let end = partition.log_end_offset();
            if let Err(error) = partition.record_epoch(EpochStart {
                epoch: state.leader_epoch,
                start: end,
            }) {
                tracing::error!(topic = topic.name(), partition = p, %error, "could not record the leader epoch; not leading");
                return;
            }
            if let Err(error) = topic.reindex_partition(p) {
                tracing::warn!(topic = topic.name(), partition = p, %error, "could not rebuild the idempotency keys");
            }
            let known = partition.high_watermark().unwrap_or(end).min(end);
            let mut progress = LeaderProgress::new(me.clone(), state, known, Instant::now());
            let hw = progress.high_watermark(end);
            partition.set_high_watermark(Some(hw));
            partition.set_writable(true);
            tracing::info!(
                topic = topic.name(),
                partition = p,
                leader_epoch = state.leader_epoch,
                log_end = end,
                high_watermark = hw,
                "leading the partition"
            );
            self.inner.lock().roles.insert(k, Role::Leader(progress));
            return;
        }
        // A node that holds no replica of the partition observes it: it
        // copies the leader's hot tail as a follower does, but never
        // acknowledges, joins the ISR or leads, so that range reads, SQL,
        // views, snapshots and lookups on any node see every committed
        // record (the cold tier it reads from the store).
        let observing = !state.replicas.contains(&self.id);
        let Some(leader) = state.leader.clone() else {
            if let Some(Role::Follower { task, .. }) = inner.roles.insert(k, Role::Waiting) {
                task.abort();
            }
            return;
        };
        if let Some(Role::Follower {
            leader: following,
            leader_epoch,
            ..
        }) = current
            && *following == leader
            && *leader_epoch == state.leader_epoch
        {
            return;
        }
        if let Some(Role::Follower { task, .. }) = inner.roles.remove(&k) {
            task.abort();
        }
        let task = self
            .runtime
            .spawn(follower::follow(
                self.clone(),
                topic.clone(),
                partition,
                leader.clone(),
                state.leader_epoch,
            ))
            .abort_handle();
        if observing {
            tracing::info!(topic = topic.name(), partition = p, %leader, leader_epoch = state.leader_epoch, "observing the partition's leader (no replica here)");
        } else {
            tracing::info!(topic = topic.name(), partition = p, %leader, leader_epoch = state.leader_epoch, "following the partition's leader");
        }
        inner.roles.insert(
            k,
            Role::Follower {
                leader,
                leader_epoch: state.leader_epoch,
                task,
            },
        );
    }

    /// ISR changes to ask the controller for: replicas this node's
    /// partitions count in sync that the ISR lacks, and followers that
    /// lagged too long.
    pub fn reports(&self) -> Vec<IsrReport> {
        let now = Instant::now();
        let mut inner = self.inner.lock();
        let max_lag = self.config.max_lag;
        let mut reports = Vec::new();
        let (mut under_replicated, mut lag) = (0u64, 0u64);
        let mut lag_time = Duration::ZERO;
        let Inner { roles, map, .. } = &mut *inner;
        for ((topic, partition), role) in roles.iter_mut() {
            let Role::Leader(progress) = role else {
                continue;
            };
            if map
                .state(topic, *partition)
                .is_some_and(|s| progress.acking().len() < s.replicas.len())
            {
                under_replicated += 1;
            }
            if let Ok(t) = self.broker.topic(topic)
                && let Some(p) = t.partitions().get(*partition as usize)
            {
                lag = lag.max(progress.max_lag(p.log_end_offset()));
            }
            lag_time = lag_time.max(progress.max_lag_time(now));
            let lagging = progress.lagging(now, max_lag);
            let caught_up = progress.pending().to_vec();
            if lagging.is_empty() && caught_up.is_empty() {
                continue;
            }
            reports.push(IsrReport {
                topic: topic.clone(),
                partition: *partition,
                leader_epoch: progress.leader_epoch(),
                caught_up,
                lagging,
            });
        }
        metrics::gauge!("strata_cluster_under_replicated_partitions").set(under_replicated as f64);
        metrics::gauge!("strata_cluster_replication_lag_records").set(lag as f64);
        metrics::gauge!("strata_cluster_replication_lag_seconds").set(lag_time.as_secs_f64());
        reports
    }

    /// The URL of a node, as the last map's view gave it.
    fn url_of(&self, node: &NodeId) -> Option<String> {
        self.inner.lock().urls.get(node).cloned()
    }

    fn me(&self) -> Option<Replica> {
        self.inner.lock().me.clone()
    }

    /// Fails unless every one of `partitions` of `topic` is led here with
    /// at least `min_insync_replicas` replicas acking (`503
    /// not_enough_replicas` otherwise, nothing written); returns the
    /// leader epoch of each, for [`Replication::await_committed`].
    pub fn check_writable(
        &self,
        topic: &Topic,
        partitions: &[u32],
    ) -> Result<Vec<(u32, u64)>, ApiError> {
        if !topic.config().is_replicated() {
            return Ok(Vec::new());
        }
        let min = topic.config().min_insync() as usize;
        let inner = self.inner.lock();
        let mut epochs = Vec::with_capacity(partitions.len());
        for &p in partitions {
            match inner.roles.get(&key(topic.name(), p)) {
                Some(Role::Leader(progress)) => {
                    epochs.push((p, progress.leader_epoch()));
                    let acking = progress.acking().len();
                    if acking < min {
                        return Err(ApiError::not_enough_replicas(format!(
                            "partition {p} of topic {:?} has {acking} in-sync replicas, fewer than min_insync_replicas ({min})",
                            topic.name()
                        )));
                    }
                }
                _ => {
                    return Err(ApiError::unavailable(
                        format!(
                            "this node does not lead partition {p} of topic {:?} now",
                            topic.name()
                        ),
                        1,
                    ));
                }
            }
        }
        Ok(epochs)
    }

    /// After a local produce made `ends` (partition, end offset) durable
    /// here, appended as the leader of the `epochs` that
    /// [`Replication::check_writable`] returned: waits until they are
    /// committed (every in-sync replica has them) with this node still the
    /// leader at that epoch, or fails with `503`.
    pub async fn await_committed(
        &self,
        topic: &Topic,
        ends: &[(u32, u64)],
        epochs: &[(u32, u64)],
    ) -> Result<(), ApiError> {
        if !topic.config().is_replicated() {
            return Ok(());
        }
        let deadline = tokio::time::Instant::now() + self.config.ack_timeout;
        for &(p, end) in ends {
            let Some(partition) = topic.partitions().get(p as usize) else {
                continue;
            };
            let epoch = epochs.iter().find(|(q, _)| *q == p).map(|(_, e)| *e);
            self.advance(topic.name(), partition);
            let mut visible = partition.subscribe();
            // The borrow the wait returns is dropped at once: holding it
            // would block every writer of the partition's watch.
            let reached = tokio::time::timeout_at(deadline, visible.wait_for(|&v| v >= end))
                .await
                .is_ok_and(|waited| waited.is_ok());
            // Still the leader at the epoch it appended in: otherwise the
            // records may have been truncated and the offsets reused by
            // another leader's records, which this node now copies.
            let same_leader = epoch.is_some() && self.leading_epoch(topic.name(), p) == epoch;
            match (reached, same_leader) {
                (true, true) => {}
                (true, false) => {
                    return Err(ApiError::not_enough_replicas(format!(
                        "partition {p} of topic {:?}: the leadership moved before the in-sync \
                         replicas confirmed; retry with the same Idempotency-Key",
                        topic.name()
                    )));
                }
                _ => {
                    return Err(ApiError::not_enough_replicas(format!(
                        "partition {p} of topic {:?}: the in-sync replicas did not confirm within {} ms; \
                         retry with the same Idempotency-Key",
                        topic.name(),
                        self.config.ack_timeout.as_millis()
                    )));
                }
            }
        }
        Ok(())
    }

    /// The leader epoch this node leads a partition at, if it leads it.
    fn leading_epoch(&self, topic: &str, partition: u32) -> Option<u64> {
        match self.inner.lock().roles.get(&key(topic, partition)) {
            Some(Role::Leader(progress)) => Some(progress.leader_epoch()),
            _ => None,
        }
    }

    /// Recomputes a led partition's high watermark (after a local append:
    /// alone in the ISR, the leader commits at once).
    fn advance(&self, topic: &str, partition: &strata_broker::Partition) {
        let hw = match self.inner.lock().roles.get_mut(&key(topic, partition.id())) {
            Some(Role::Leader(progress)) => progress.high_watermark(partition.log_end_offset()),
            _ => return,
        };
        partition.set_high_watermark(Some(hw));
    }
}

impl OffloadScope for Replication {
    /// Topics with one replica are this node's own; a replicated partition
    /// is offloaded by its leader alone.
    fn offloads(&self, topic: &str, partition: u32) -> bool {
        let inner = self.inner.lock();
        match inner.map.state(topic, partition) {
            None => !self
                .broker
                .topic(topic)
                .is_ok_and(|t| t.config().is_replicated()),
            Some(_) => matches!(
                inner.roles.get(&key(topic, partition)),
                Some(Role::Leader(_))
            ),
        }
    }
}

fn key(topic: &str, partition: u32) -> (String, u32) {
    (topic.to_string(), partition)
}

//! This node's part in the cluster: registering, finding or becoming the
//! controller, and heartbeats over HTTP (docs/cluster.md).
//!
//! Every node registers its incarnation in the store and then, every
//! heartbeat interval:
//!
//! - as a **follower**, sends a heartbeat to the controller and keeps the
//!   cluster view it answers with. When the controller has not answered
//!   for the failure timeout, it reads the newest controller epoch from the
//!   store: a newer one is followed; otherwise it claims the next epoch
//!   itself (one claimant wins, the others follow it);
//! - as the **controller**, records heartbeats (its own too) in its
//!   liveness table, logs every node that dies or joins, and rereads the
//!   newest epoch once per failure timeout: a controller that was paused
//!   and deposed meanwhile finds the newer epoch and follows it. (Followers
//!   also name the epoch they follow in each heartbeat; a controller that
//!   receives one naming a newer epoch, e.g. at a reused address, steps
//!   down at once.)
//!
//! A single node is a cluster of one: it becomes the controller of the
//! next epoch at its first tick and sends no heartbeats over the network.
//! When every node restarts together, each first follows the newest epoch
//! it finds (unless that epoch is its own) and replaces it only after a
//! failure timeout of silence.
//! A store that is down delays registration (retried every tick) but not
//! serving: nothing else waits for the cluster yet.

use std::path::PathBuf;
use std::sync::{Arc, OnceLock};
use std::time::{Duration, Instant};

use parking_lot::Mutex;
use strata_broker::Broker;
use strata_cluster::liveness::Beat;
use strata_cluster::tokens::Token;
use strata_cluster::{
    ClusterError, ClusterIdentity, ClusterView, ControlStore, ControllerRecord, Heartbeat,
    IsrReport, Liveness, LocalIdentity, NodeId, PartitionMap, Registration, Replica,
};
use strata_tiering::ColdStore;
use tokio::sync::watch;

use crate::api_error::ApiError;
use crate::controller::{CreateRefusal, PartitionController};
use crate::error::ServerError;
use crate::replication::Replication;

/// A controller that hears from no other node rereads the newest epoch
/// this many failure timeouts apart (instead of every one).
pub const ALONE_CHECK_FACTOR: u32 = 12;

/// How a node takes part in the cluster.
#[derive(Debug, Clone)]
pub struct ClusterConfig {
    /// The node's name; `None` for the one kept in the data directory
    /// (generated at the first start).
    pub node_id: Option<NodeId>,
    /// The URL other nodes and clients reach this node at; `None` for
    /// `http://<listen address>`.
    pub advertise: Option<String>,
    /// How often a node sends its heartbeat (and the controller looks at
    /// its table).
    pub heartbeat_interval: Duration,
    /// How long without a heartbeat before a node counts as dead, and
    /// without an answer from the controller before a node replaces it.
    pub failure_timeout: Duration,
}

impl Default for ClusterConfig {
    fn default() -> Self {
        Self {
            node_id: None,
            advertise: None,
            heartbeat_interval: Duration::from_millis(500),
            failure_timeout: Duration::from_millis(2500),
        }
    }
}

/// Why a heartbeat was refused.
#[derive(Debug)]
pub enum Refusal {
    /// This node is not the controller (any more); the newest epoch it
    /// knows of, if any.
    NotController(Option<ControllerRecord>),
    /// The sender is an older incarnation of a node that registered again.
    StaleIncarnation,
    /// The sender never registered that incarnation in the store.
    NotRegistered,
}

/// This node's membership: its identity, whom it follows, and (as the
/// controller) who is alive.
pub struct Membership {
    id: NodeId,
    data_dir: PathBuf,
    control: ControlStore,
    config: ClusterConfig,
    broker: Arc<Broker>,
    /// The heartbeat client, and what the TLS files looked like when it
    /// was made: a rotated certificate makes a new one.
    http: Mutex<(reqwest::Client, Option<crate::tls::Stamp>)>,
    /// The same for other requests between nodes (a longer timeout).
    node_http: Mutex<(reqwest::Client, Option<crate::tls::Stamp>)>,
    tls: Option<crate::tls::TlsConfig>,
    state: Mutex<State>,
    /// This node's replicas (set once the cold tier is open).
    replication: OnceLock<Arc<Replication>>,
    /// As the controller: the replicated topics and partition states.
    controller: tokio::sync::Mutex<Option<PartitionController>>,
    /// The controller's map as last changed, for heartbeat answers.
    map: Mutex<Option<PartitionMap>>,
    /// ISR changes leaders asked for since the controller's last pass.
    reports: Mutex<Vec<IsrReport>>,
    /// As the controller: the nodes being drained (for the view).
    draining: Mutex<std::collections::BTreeSet<NodeId>>,
}

struct State {
    identity: LocalIdentity,
    me: Option<Registration>,
    cluster_id: Option<String>,
    /// The token nodes present to each other (with authentication on).
    node_secret: Option<Token>,
    /// The controller this node follows (or is).
    controller: Option<ControllerRecord>,
    /// When the followed controller last answered (or was first followed).
    last_contact: Instant,
    /// When the controller last reread the newest epoch.
    epoch_checked: Instant,
    /// The controller's table; empty on followers.
    liveness: Liveness,
    /// The view the controller last answered with (followers).
    view: Option<ClusterView>,
    /// Whether the last tick failed, so an outage is logged when it
    /// starts and ends, not at every tick.
    failing: bool,
    /// Nodes the controller looked up in the store lately (see `learn`).
    looked_up: std::collections::HashMap<NodeId, Instant>,
    /// When this node last became the controller.
    controller_since: Instant,
    /// The controller this node replaced for its silence, if any.
    deposed: Option<NodeId>,
    /// When the controller last passed over the partitions.
    last_pass: Instant,
}

impl Membership {
    /// This node's membership over the data directory `data_dir` and the
    /// cluster of `cold`'s root. Reads (or makes) the node's identity; the
    /// store is not touched until [`Membership::run`].
    pub fn open(
        data_dir: PathBuf,
        cold: &ColdStore,
        config: ClusterConfig,
        broker: Arc<Broker>,
        tls: Option<&crate::tls::TlsConfig>,
    ) -> Result<Self, ServerError> {
        let identity = LocalIdentity::load_or_create(&data_dir, config.node_id.as_ref())
            .map_err(ServerError::Identity)?;
        let tls = tls.cloned();
        let http = heartbeat_client(&config, tls.as_ref())?;
        let node_http = node_client(tls.as_ref(), NODE_REQUEST_TIMEOUT)?;
        let stamp = tls.as_ref().map(crate::tls::stamp);
        let now = Instant::now();
        Ok(Self {
            id: identity.id.clone(),
            data_dir,
            control: ControlStore::new(cold),
            http: Mutex::new((http, stamp)),
            node_http: Mutex::new((node_http, stamp)),
            tls,
            broker,
            state: Mutex::new(State {
                identity,
                me: None,
                cluster_id: None,
                node_secret: None,
                controller: None,
                last_contact: now,
                epoch_checked: now,
                liveness: Liveness::new(config.failure_timeout),
                view: None,
                failing: false,
                looked_up: std::collections::HashMap::new(),
                controller_since: now,
                deposed: None,
                last_pass: now,
            }),
            config,
            replication: OnceLock::new(),
            controller: tokio::sync::Mutex::new(None),
            map: Mutex::new(None),
            reports: Mutex::new(Vec::new()),
            draining: Mutex::new(std::collections::BTreeSet::new()),
        })
    }

    /// This node's name.
    pub fn id(&self) -> &NodeId {
        &self.id
    }

    /// Gives membership this node's replicas, which follow the partition
    /// maps the controller sends (call once, before [`Membership::run`]).
    pub fn set_replication(&self, replication: Arc<Replication>) {
        let _ = self.replication.set(replication);
    }

    /// A client for requests to other nodes (TLS as configured; made
    /// again when the TLS files change), with a timeout for requests that
    /// may take long: forwarded produces, followers' fetches.
    pub fn client(&self) -> reqwest::Client {
        let Some(tls) = &self.tls else {
            return self.node_http.lock().0.clone();
        };
        let now = crate::tls::stamp(tls);
        let mut http = self.node_http.lock();
        if http.1.as_ref() != Some(&now) {
            match node_client(Some(tls), NODE_REQUEST_TIMEOUT) {
                Ok(client) => http.0 = client,
                Err(error) => {
                    tracing::warn!(%error, "the TLS files changed but do not load; requests to other nodes keep the previous ones");
                }
            }
            http.1 = Some(now);
        }
        http.0.clone()
    }

    /// The controller's URL, `None` while none is known or this node is it.
    pub fn controller_url(&self) -> Option<String> {
        let state = self.state.lock();
        match (&state.me, &state.controller) {
            (Some(me), Some(c)) if c.node == me.node && c.incarnation == me.incarnation => None,
            (_, Some(c)) => Some(c.url.clone()),
            _ => None,
        }
    }

    /// How many nodes are alive, as the controller last said (1 while
    /// nothing is known: this node).
    pub fn live_nodes(&self) -> usize {
        self.view().map_or(1, |view| {
            view.nodes.iter().filter(|n| n.alive).count().max(1)
        })
    }

    /// Whether the cluster has replicated topic `name` although this node
    /// has no local copy yet: it was made through another node a moment
    /// ago, and this node creates it from the controller's next map. A
    /// request for it is then worth retrying, not a `404`. (One read of the
    /// store; only asked when the topic is not found here.)
    pub async fn topic_on_its_way(&self, name: &str) -> bool {
        if self.live_nodes() < 2 {
            return false;
        }
        matches!(self.control.topic_record(name).await, Ok(Some((_, record))) if !record.deleted)
    }

    /// As the controller, creates a replicated topic (its record and each
    /// partition's first state), and applies the new map here.
    pub async fn create_replicated_topic(
        &self,
        meta: strata_broker::topic::TopicMeta,
    ) -> Result<(), ApiError> {
        let nodes = self.controller_nodes()?;
        let name = meta.name.clone();
        let mut controller = self.controller.lock().await;
        let Some(controller) = controller.as_mut() else {
            return Err(ApiError::unavailable("the controller is starting", 1));
        };
        match controller.create_topic(meta, &nodes).await {
            Ok(()) => {}
            Err(CreateRefusal::Exists) => {
                return Err(strata_broker::BrokerError::TopicExists(name).into());
            }
            Err(CreateRefusal::TooFewNodes { wanted, alive }) => {
                return Err(ApiError::invalid_request(format!(
                    "replication_factor {wanted} is more than the {alive} live nodes"
                )));
            }
            Err(CreateRefusal::Store(error)) => return Err(error.into()),
        }
        let map = controller.map().clone();
        *self.map.lock() = Some(map.clone());
        if let Some(replication) = self.replication.get() {
            replication.apply(map, &nodes).await;
        }
        Ok(())
    }

    /// As the controller, deletes a replicated topic; `false` when there is
    /// none.
    pub async fn delete_replicated_topic(&self, name: &str) -> Result<bool, ApiError> {
        let nodes = self.controller_nodes()?;
        let mut controller = self.controller.lock().await;
        let Some(controller) = controller.as_mut() else {
            return Err(ApiError::unavailable("the controller is starting", 1));
        };
        if !controller.delete_topic(name).await? {
            return Ok(false);
        }
        let map = controller.map().clone();
        *self.map.lock() = Some(map.clone());
        if let Some(replication) = self.replication.get() {
            replication.apply(map, &nodes).await;
        }
        Ok(true)
    }

    /// As the controller, starts draining `node` (see
    /// [`PartitionController::drain`]); `Ok(false)` when no such node is
    /// registered.
    pub async fn drain(&self, node: &NodeId) -> Result<bool, ApiError> {
        let nodes = self.controller_nodes()?;
        if !nodes.iter().any(|n| n.id == *node) {
            return Ok(false);
        }
        let mut controller = self.controller.lock().await;
        let Some(controller) = controller.as_mut() else {
            return Err(ApiError::unavailable("the controller is starting", 1));
        };
        controller.drain(node).await?;
        *self.draining.lock() = controller.draining().clone();
        Ok(true)
    }

    /// The nodes as this node, the controller, sees them.
    fn controller_nodes(&self) -> Result<Vec<strata_cluster::NodeView>, ApiError> {
        let state = self.state.lock();
        match (&state.me, &state.controller) {
            (Some(me), Some(c)) if c.node == me.node && c.incarnation == me.incarnation => {
                Ok(state.liveness.nodes(Instant::now()))
            }
            _ => Err(ApiError::unavailable(
                "this node is not the cluster's controller",
                1,
            )),
        }
    }

    /// Whether `token` is the secret the cluster's nodes present to each
    /// other (never before this node has registered).
    pub fn is_node_secret(&self, token: &Token) -> bool {
        self.state
            .lock()
            .node_secret
            .as_ref()
            .is_some_and(|secret| secret.hash().matches(&token.hash()))
    }

    /// Takes part in the cluster, reachable at `url` (unless configured
    /// otherwise), until `stopping` turns true.
    pub async fn run(self: Arc<Self>, url: String, mut stopping: watch::Receiver<bool>) {
        let url = self.config.advertise.clone().unwrap_or(url);
        let mut tick = tokio::time::interval(self.config.heartbeat_interval);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                _ = tick.tick() => {}
                _ = stopping.wait_for(|s| *s) => return,
            }
            // A tick can wait long on a store that is down (its client
            // retries); shutting down does not wait for it. Stopping
            // mid-tick is safe: each step is one create or one read.
            let ticked = tokio::select! {
                ticked = self.tick(&url) => ticked,
                _ = stopping.wait_for(|s| *s) => return,
            };
            match ticked {
                Ok(()) => {
                    let recovered = std::mem::replace(&mut self.state.lock().failing, false);
                    if recovered {
                        tracing::info!(node = %self.id, "cluster membership works again");
                    }
                }
                Err(error) => {
                    let started = !std::mem::replace(&mut self.state.lock().failing, true);
                    if started {
                        tracing::warn!(node = %self.id, %error, "cluster membership: the object store failed, retrying every heartbeat interval");
                    } else {
                        tracing::debug!(node = %self.id, %error, "cluster membership: still failing");
                    }
                }
            }
        }
    }

    async fn tick(&self, url: &str) -> Result<(), ClusterError> {
        let registered = self.state.lock().me.clone();
        let me = match registered {
            Some(me) => me,
            None => self.register(url).await?,
        };
        let controller = self.state.lock().controller.clone();
        match controller {
            None => self.find_controller(&me, 0, true).await,
            Some(c) if c.node == me.node && c.incarnation == me.incarnation => {
                self.lead(&me, &c).await
            }
            Some(c) => self.follow(&me, &c).await,
        }
    }

    async fn register(&self, url: &str) -> Result<Registration, ClusterError> {
        let ClusterIdentity {
            cluster_id,
            node_secret,
        } = self.control.identity().await?;
        let identity = self.state.lock().identity.clone();
        let me = self
            .control
            .register(&identity, url, strata_broker::timestamp::now_ms())
            .await?;
        if me.incarnation != identity.incarnation {
            let saved = LocalIdentity {
                incarnation: me.incarnation,
                ..identity
            };
            let data_dir = self.data_dir.clone();
            let to_save = saved.clone();
            tokio::task::spawn_blocking(move || to_save.save(&data_dir))
                .await
                .map_err(|e| ClusterError::Io {
                    path: self
                        .data_dir
                        .join(strata_cluster::identity::IDENTITY_FILE)
                        .display()
                        .to_string(),
                    error: std::io::Error::other(e),
                })??;
            self.state.lock().identity = saved;
        }
        tracing::info!(node = %me.node, incarnation = me.incarnation, url = %me.url, %cluster_id, "registered in the cluster");
        if let Some(replication) = self.replication.get() {
            replication.registered(
                Replica {
                    node: me.node.clone(),
                    incarnation: me.incarnation,
                },
                Some(node_secret.clone()),
            );
        }
        let mut state = self.state.lock();
        state.cluster_id = Some(cluster_id);
        state.node_secret = Some(node_secret);
        state.me = Some(me.clone());
        Ok(me)
    }

    /// Follows the newest controller epoch in the store, or claims the next
    /// one when there is none, it names this node (a previous process of
    /// it), or `replace` and it is no newer than `known`.
    async fn find_controller(
        &self,
        me: &Registration,
        known: u64,
        replace: bool,
    ) -> Result<(), ClusterError> {
        let newest = self.control.controller().await?;
        let claim_after = match &newest {
            None => Some(0),
            // A previous process of this node (never a newer incarnation:
            // then this process is the stale one and only follows).
            Some(c) if c.node == me.node && c.incarnation <= me.incarnation => Some(c.epoch),
            Some(c) if c.epoch <= known && replace => Some(c.epoch),
            Some(_) => None,
        };
        let followed = match claim_after {
            Some(after) => match self.control.claim_controller(after, me).await? {
                Some(mine) => {
                    tracing::info!(node = %me.node, epoch = mine.epoch, "became the cluster controller");
                    metrics::counter!("strata_cluster_controller_elections_total").increment(1);
                    // The epoch is won whatever happens next: a failed
                    // listing only leaves silent nodes out of the view
                    // until they send a heartbeat.
                    let registrations = match self.control.registrations().await {
                        Ok(found) => found,
                        Err(error) => {
                            tracing::warn!(%error, "could not list the registered nodes");
                            Vec::new()
                        }
                    };
                    *self.controller.lock().await = None;
                    let mut state = self.state.lock();
                    state.controller_since = Instant::now();
                    // Replaced for its silence: it is dead for this
                    // controller's first decisions, which need not wait a
                    // failure timeout to tell it from a node not heard yet.
                    state.deposed = newest
                        .as_ref()
                        .filter(|c| c.node != me.node && replace)
                        .map(|c| c.node.clone());
                    state.liveness = Liveness::new(self.config.failure_timeout);
                    for registration in &registrations {
                        state.liveness.know(registration);
                    }
                    state
                        .liveness
                        .heartbeat(&self.heartbeat(me, mine.epoch), Instant::now());
                    state.epoch_checked = Instant::now();
                    Some(mine)
                }
                // Another node claimed it first: follow whoever did.
                None => self.control.controller().await?,
            },
            None => newest,
        };
        let mut state = self.state.lock();
        if followed.as_ref().map(|c| c.epoch) != state.controller.as_ref().map(|c| c.epoch) {
            // A new controller gets a whole failure timeout to answer.
            state.last_contact = Instant::now();
            state.view = None;
            if let Some(c) = followed.as_ref().filter(|c| c.node != me.node) {
                tracing::info!(node = %me.node, controller = %c.node, epoch = c.epoch, "following the cluster controller");
            }
        }
        state.controller = followed;
        Ok(())
    }

    async fn lead(&self, me: &Registration, mine: &ControllerRecord) -> Result<(), ClusterError> {
        let now = Instant::now();
        let beat = self.heartbeat(me, mine.epoch);
        let check_epoch = {
            let mut state = self.state.lock();
            state.liveness.heartbeat(&beat, now);
            for dead in state.liveness.newly_dead(now) {
                tracing::warn!(node = %dead, "node stopped sending heartbeats: counted as dead");
            }
            let nodes = state.liveness.nodes(now);
            let alive = nodes.iter().filter(|n| n.alive).count();
            metrics::gauge!("strata_cluster_nodes_alive").set(alive as f64);
            // In a cluster of one (no other node ever registered or heard
            // from), only a newcomer that cannot reach this node could
            // depose it: look less often, so that a single node costs the
            // store little. A node cut off from known peers keeps looking
            // every timeout: that is when it is most likely deposed.
            let every = if nodes.len() <= 1 {
                self.config.failure_timeout * ALONE_CHECK_FACTOR
            } else {
                self.config.failure_timeout
            };
            now.duration_since(state.epoch_checked) >= every
        };
        self.control_partitions(mine.epoch).await?;
        if check_epoch {
            // Counted as checked even if the store fails: an outage must not
            // turn the check into one request per tick.
            self.state.lock().epoch_checked = now;
            let newest = self.control.controller().await?;
            let mut state = self.state.lock();
            // An equal epoch held by another node happens only on stores
            // without conditional writes, where two claims can both land.
            let deposed = newest.filter(|c| {
                c.epoch > mine.epoch
                    || (c.epoch == mine.epoch
                        && (c.node != mine.node || c.incarnation != mine.incarnation))
            });
            if let Some(newer) = deposed {
                tracing::warn!(node = %me.node, epoch = mine.epoch, controller = %newer.node, newer = newer.epoch, "deposed as controller by a newer epoch");
                metrics::gauge!("strata_cluster_nodes_alive").set(0.0);
                state.controller = Some(newer);
                state.last_contact = now;
            }
        }
        Ok(())
    }

    /// The controller's pass over the replicated partitions: loads them at
    /// the first pass of its epoch, then handles deaths, new incarnations
    /// and the leaders' ISR reports, and applies the map on this node.
    async fn control_partitions(&self, epoch: u64) -> Result<(), ClusterError> {
        let (nodes, deaths) = {
            let mut state = self.state.lock();
            let now = Instant::now();
            if now.duration_since(state.last_pass) > self.config.failure_timeout / 2 {
                // This process was paused or starved: its table is stale
                // (everyone looks dead) and it may have been deposed. It
                // waits as a new controller would, rereading its epoch.
                state.controller_since = now;
                if let Some(long_ago) = now.checked_sub(self.config.failure_timeout * 2) {
                    state.epoch_checked = long_ago;
                }
            }
            state.last_pass = now;
            let mut nodes = state.liveness.nodes(now);
            let alive = nodes.iter().filter(|n| n.alive).count();
            // Deaths count only while this controller hears from a
            // majority of the nodes it has heard from: one cut off from
            // the others must not take their partitions away.
            let quorum = alive * 2 > state.liveness.heard();
            let settled = quorum && state.controller_since.elapsed() >= self.config.failure_timeout;
            if !settled {
                for node in &mut nodes {
                    if Some(&node.id) == state.deposed.as_ref() {
                        node.alive = false;
                    }
                }
            }
            (nodes, settled)
        };
        let presumed_dead = if deaths {
            None
        } else {
            self.state.lock().deposed.clone()
        };
        let mut held = self.controller.lock().await;
        let fresh = match held.as_ref() {
            Some(c) if c.map().version.controller_epoch == epoch => false,
            _ => {
                *held = Some(PartitionController::load(self.control.clone(), epoch).await?);
                true
            }
        };
        let Some(controller) = held.as_mut() else {
            return Ok(());
        };
        let mut reports = std::mem::take(&mut *self.reports.lock());
        if let Some(replication) = self.replication.get() {
            reports.extend(replication.reports());
        }
        let Some(changed) = controller
            .maintain(&nodes, &reports, deaths, presumed_dead.as_ref())
            .await
        else {
            tracing::warn!(node = %self.id, epoch, "deposed as controller: a newer epoch exists");
            *held = None;
            let mut state = self.state.lock();
            state.controller = None;
            return Ok(());
        };
        let map = controller.map().clone();
        if fresh || changed {
            *self.map.lock() = Some(map.clone());
        }
        if fresh {
            *self.draining.lock() = controller.draining().clone();
        }
        if let Some(replication) = self.replication.get()
            && replication.map_version() != Some(map.version)
        {
            replication.apply(map, &nodes).await;
        }
        Ok(())
    }

    async fn follow(&self, me: &Registration, c: &ControllerRecord) -> Result<(), ClusterError> {
        let beat = self.heartbeat(me, c.epoch);
        let url = format!("{}/v1/cluster/heartbeat", c.url.trim_end_matches('/'));
        let mut request = self.heartbeat_client().post(&url).json(&beat);
        if let Some(secret) = self.state.lock().node_secret.clone() {
            request = request.bearer_auth(secret.expose());
        }
        let answer = request.send().await;
        let refused = match answer {
            Ok(response) if response.status().is_success() => {
                match response.json::<ClusterView>().await {
                    Ok(mut view) => {
                        if let Some(map) = view.map.take()
                            && let Some(replication) = self.replication.get()
                        {
                            replication.apply(map, &view.nodes).await;
                        }
                        let mut state = self.state.lock();
                        // The controller may have claimed a newer epoch at
                        // the same URL (a restart): follow that epoch, so
                        // that its death is detected from its own silence.
                        if view.controller_epoch > c.epoch
                            && let Some(node) = view.nodes.iter().find(|n| n.id == view.controller)
                        {
                            state.controller = Some(ControllerRecord {
                                epoch: view.controller_epoch,
                                node: node.id.clone(),
                                incarnation: node.incarnation,
                                url: node.url.clone(),
                            });
                        }
                        state.view = Some(view);
                        state.last_contact = Instant::now();
                        return Ok(());
                    }
                    Err(_) => false,
                }
            }
            Ok(response) if response.status() == reqwest::StatusCode::CONFLICT => {
                let body: serde_json::Value = response.json().await.unwrap_or_default();
                if body["error"]["code"] == "not_registered" {
                    // Register again only if the store really lacks this
                    // incarnation (e.g. it was wiped); otherwise the
                    // controller finds it at its next lookup.
                    let newest = self.control.registration(&me.node).await?;
                    if newest.map(|r| r.incarnation) != Some(me.incarnation) {
                        tracing::warn!(node = %me.node, "the store lacks this node's registration: registering again");
                        self.state.lock().me = None;
                    }
                    return Ok(());
                }
                true
            }
            Ok(_) | Err(_) => false,
        };
        let lost = self.state.lock().last_contact.elapsed() >= self.config.failure_timeout;
        if refused || lost {
            // A refusal means that node no longer holds the newest epoch it
            // knows of: reread, but replace it only once it is silent.
            self.find_controller(me, c.epoch, lost).await?;
        }
        Ok(())
    }

    /// The heartbeat client, made again when the TLS files changed (a
    /// pair that does not load keeps the old client, as the server keeps
    /// its old certificate).
    fn heartbeat_client(&self) -> reqwest::Client {
        let Some(tls) = &self.tls else {
            return self.http.lock().0.clone();
        };
        let now = crate::tls::stamp(tls);
        let mut http = self.http.lock();
        if http.1.as_ref() != Some(&now) {
            match heartbeat_client(&self.config, Some(tls)) {
                Ok(client) => http.0 = client,
                Err(error) => {
                    tracing::warn!(%error, "the TLS files changed but do not load; heartbeats keep the previous ones");
                }
            }
            http.1 = Some(now);
        }
        http.0.clone()
    }

    fn heartbeat(&self, me: &Registration, controller_epoch: u64) -> Heartbeat {
        // A node leads the partitions of its own topics, and what the map
        // says of the replicated ones.
        let own: u64 = self
            .broker
            .topics()
            .iter()
            .filter(|t| !t.config().is_replicated())
            .map(|t| t.partitions().len() as u64)
            .sum();
        let (led, held) = self.replication.get().map_or((0, 0), |r| r.counts());
        let (map_version, reports) = match self.replication.get() {
            Some(r) => (r.map_version(), r.reports()),
            None => (None, Vec::new()),
        };
        Heartbeat {
            node: me.node.clone(),
            incarnation: me.incarnation,
            url: me.url.clone(),
            controller_epoch,
            leader_of: own + led,
            replica_of: own + held,
            map_version,
            reports,
        }
    }

    /// Answers another node's heartbeat: the cluster view when this node is
    /// the controller of the newest epoch it knows.
    pub fn on_heartbeat(&self, beat: &Heartbeat) -> Result<ClusterView, Refusal> {
        let now = Instant::now();
        let mut state = self.state.lock();
        let mine = match (&state.me, &state.controller) {
            (Some(me), Some(c)) if c.node == me.node && c.incarnation == me.incarnation => {
                c.clone()
            }
            _ => return Err(Refusal::NotController(state.controller.clone())),
        };
        if !state.liveness.knows(&beat.node, beat.incarnation) {
            return Err(Refusal::NotRegistered);
        }
        if beat.controller_epoch > mine.epoch {
            tracing::warn!(node = %mine.node, epoch = mine.epoch, newer = beat.controller_epoch, "deposed as controller: a node follows a newer epoch");
            // Reread the store at the next tick.
            state.controller = None;
            return Err(Refusal::NotController(None));
        }
        match state.liveness.heartbeat(beat, now) {
            Beat::Stale => return Err(Refusal::StaleIncarnation),
            Beat::Joined => {
                tracing::info!(node = %beat.node, incarnation = beat.incarnation, url = %beat.url, "node is alive");
            }
            Beat::Alive => {}
        }
        drop(state);
        self.reports.lock().extend(beat.reports.iter().cloned());
        let state = self.state.lock();
        let mut view = self.controller_view(&state, &mine, now);
        let map = self.map.lock();
        if let Some(map) = map.as_ref()
            && beat.map_version != Some(map.version)
        {
            view.map = Some(map.clone());
        }
        Ok(view)
    }

    /// Looks `node` up in the store (a node that registered after this
    /// controller took over): known afterwards if it registered at
    /// `incarnation` or later.
    pub async fn learn(&self, node: &NodeId) -> Result<(), ClusterError> {
        {
            // At most one store lookup per node and heartbeat interval, so
            // heartbeats from an unregistered name cannot load the store.
            let mut state = self.state.lock();
            let now = Instant::now();
            state
                .looked_up
                .retain(|_, at| now.duration_since(*at) < self.config.heartbeat_interval);
            if state.looked_up.contains_key(node) {
                return Ok(());
            }
            state.looked_up.insert(node.clone(), now);
        }
        if let Some(registration) = self.control.registration(node).await?
            && registration.node == *node
        {
            self.state.lock().liveness.know(&registration);
        }
        Ok(())
    }

    fn controller_view(&self, state: &State, mine: &ControllerRecord, now: Instant) -> ClusterView {
        let draining = self.draining.lock();
        let mut nodes = state.liveness.nodes(now);
        for node in &mut nodes {
            // Shown until it holds nothing; it gets nothing new after.
            node.draining = draining.contains(&node.id) && node.replica_of > 0;
        }
        ClusterView {
            cluster_id: state.cluster_id.clone().unwrap_or_default(),
            controller: mine.node.clone(),
            controller_epoch: mine.epoch,
            nodes,
            map: None,
        }
    }

    /// The cluster as this node knows it: the controller's own table on the
    /// controller, the view of the last heartbeat answer elsewhere; `None`
    /// while no controller is known.
    pub fn view(&self) -> Option<ClusterView> {
        let state = self.state.lock();
        match (&state.me, &state.controller) {
            (Some(me), Some(c)) if c.node == me.node && c.incarnation == me.incarnation => {
                Some(self.controller_view(&state, c, Instant::now()))
            }
            _ => state.view.clone(),
        }
    }
}

/// The client heartbeats are sent with. Nodes that serve HTTPS trust the
/// certificates they serve (one cluster certificate, or a CA chain in the
/// same file), besides the system's roots; where clients must show a
/// certificate, a node shows its own.
fn heartbeat_client(
    config: &ClusterConfig,
    tls: Option<&crate::tls::TlsConfig>,
) -> Result<reqwest::Client, ServerError> {
    node_client(
        tls,
        config.heartbeat_interval.max(Duration::from_millis(200)) * 2,
    )
}

/// How long a request passed to another node (a produce, a follower's
/// fetch) may take before it counts as failed.
pub const NODE_REQUEST_TIMEOUT: Duration = Duration::from_secs(30);

/// A client for requests from this node to another, giving up after
/// `timeout` (see [`heartbeat_client`] for TLS).
fn node_client(
    tls: Option<&crate::tls::TlsConfig>,
    timeout: Duration,
) -> Result<reqwest::Client, ServerError> {
    let mut http = reqwest::Client::builder().timeout(timeout);
    if let Some(tls) = tls {
        let read = |path: &std::path::Path| {
            std::fs::read(path).map_err(|error| ServerError::Tls {
                message: format!("reading {}: {error}", path.display()),
            })
        };
        let cert = read(&tls.cert)?;
        for root in reqwest::Certificate::from_pem_bundle(&cert).map_err(|e| ServerError::Tls {
            message: format!("the heartbeat client: {e}"),
        })? {
            http = http.add_root_certificate(root);
        }
        if tls.client_ca.is_some() {
            let mut identity = read(&tls.key)?;
            identity.extend_from_slice(&cert);
            http = http.identity(reqwest::Identity::from_pem(&identity).map_err(|e| {
                ServerError::Tls {
                    message: format!("the heartbeat client: {e}"),
                }
            })?);
        }
    }
    http.build().map_err(|e| ServerError::Tls {
        message: format!("the heartbeat client: {e}"),
    })
}

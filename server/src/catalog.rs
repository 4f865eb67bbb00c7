//! The cluster-wide catalog this node serves: views and consumer-group
//! offsets live in the control store (API.md "Cluster": any node shows the
//! same, and they survive the loss of any one node).
//!
//! - **Groups** are read and committed straight in the store
//!   ([`strata_cluster::Groups`]): a commit answered by one node is what the
//!   next read on any node sees.
//! - **Views**: their definitions are one versioned object,
//!   `_cluster/views/`; each node keeps a copy in its data directory (the
//!   query service plans, reads and materializes from it) and brings it in
//!   line with the store every [`REFRESH_EVERY`], at once after its own
//!   changes, and before answering for a view it does not know. So a view
//!   made through one node is readable at once through every other; a
//!   deleted one may still be read through another node for up to
//!   [`REFRESH_EVERY`]. A materialized view's state is derived data: each
//!   node builds its own from the log and the cold tier.
//! - A data directory from before these were cluster-wide is adopted: its
//!   groups that the store does not have, and its views when the store has
//!   never held any (later, a view the store lacks was deleted while this
//!   node was away, and goes).

use std::sync::Arc;

use serde::{Deserialize, Serialize};
use strata_broker::Broker;
use strata_cluster::{ClusterError, ControlStore, Groups};
use strata_query::views::View;
use strata_query::{QueryError, QueryService};
use tokio::sync::{Mutex, watch};

use crate::api_error::ApiError;
use crate::auth::REFRESH_EVERY;

/// The views of the cluster, as stored in `_cluster/views/`.
#[derive(Debug, Default, Serialize, Deserialize)]
struct ViewList {
    views: Vec<View>,
}

/// This node's window on the cluster-wide catalog.
pub struct Catalog {
    control: ControlStore,
    query: Arc<QueryService>,
    broker: Arc<Broker>,
    groups: Groups,
    /// The version of `_cluster/views/` this node's views match (held
    /// while they are brought in line, so that one change applies at once).
    synced: Mutex<u64>,
    /// Whether this data directory's own groups are in the store.
    groups_adopted: Mutex<bool>,
}

impl Catalog {
    /// The catalog in `control`'s store, served with `query`'s views and
    /// `broker`'s (pre-cluster) groups.
    pub fn new(control: ControlStore, query: Arc<QueryService>, broker: Arc<Broker>) -> Self {
        Self {
            groups: Groups::new(control.clone()),
            control,
            query,
            broker,
            synced: Mutex::new(0),
            groups_adopted: Mutex::new(false),
        }
    }

    /// At start: adopts this data directory's groups and views and reads
    /// the cluster's; a store that does not answer yet is retried by
    /// [`Self::run`].
    pub async fn open(&self) {
        let opened = async {
            self.adopt_groups().await?;
            self.sync_views().await
        };
        if let Err(error) = opened.await {
            tracing::warn!(%error, "cannot read the cluster's views and groups yet; retrying in the background");
        }
    }

    /// The cluster's consumer groups.
    pub fn groups(&self) -> &Groups {
        &self.groups
    }

    /// Creates a view cluster-wide and on this node.
    ///
    /// # Contract
    ///
    /// When this returns `Ok`, the view is durable in the store and on
    /// this node, and every node answers for it from its next request for
    /// the view on. Two nodes creating one name at once: one wins, the
    /// other gets `ViewExists`.
    pub async fn create_view(
        &self,
        name: &str,
        sql: &str,
        materialized: bool,
    ) -> Result<View, ApiError> {
        let view = self.query.prepare_view(name, sql, materialized).await?;
        let mut synced = self.synced.lock().await;
        loop {
            let (version, mut list) = self.control.views::<ViewList>().await?;
            if list.views.iter().any(|v| v.name == view.name) {
                return Err(QueryError::ViewExists(view.name).into());
            }
            list.views.push(view.clone());
            match self.control.write_views(version + 1, &list).await {
                Ok(()) => {
                    self.apply(&mut synced, version + 1, list).await;
                    return Ok(view);
                }
                Err(e) if e.is_conflict() => continue,
                Err(e) => return Err(e.into()),
            }
        }
    }

    /// Deletes a view cluster-wide and on this node (`ViewNotFound` when
    /// the cluster has none of that name).
    ///
    /// # Contract
    ///
    /// Durable in the store when it returns `Ok`; other nodes drop the view
    /// within [`REFRESH_EVERY`].
    pub async fn delete_view(&self, name: &str) -> Result<(), ApiError> {
        let mut synced = self.synced.lock().await;
        loop {
            let (version, mut list) = self.control.views::<ViewList>().await?;
            let before = list.views.len();
            list.views.retain(|v| v.name != name);
            if list.views.len() == before {
                return Err(QueryError::ViewNotFound(name.chars().take(128).collect()).into());
            }
            match self.control.write_views(version + 1, &list).await {
                Ok(()) => {
                    self.apply(&mut synced, version + 1, list).await;
                    return Ok(());
                }
                Err(e) if e.is_conflict() => continue,
                Err(e) => return Err(e.into()),
            }
        }
    }

    /// Brings this node's views in line with the cluster's (one LIST when
    /// nothing changed), adopting this data directory's views into a store
    /// that has never held any.
    pub async fn sync_views(&self) -> Result<(), ClusterError> {
        let mut synced = self.synced.lock().await;
        let newest = self.control.views_version().await?;
        if newest == 0 {
            return self.adopt_views(&mut synced).await;
        }
        if newest == *synced {
            return Ok(());
        }
        let (version, list) = self.control.views::<ViewList>().await?;
        self.apply(&mut synced, version, list).await;
        Ok(())
    }

    /// Rereads the cluster's views when this node has no view `name`
    /// (made through another node a moment ago); a store that does not
    /// answer leaves the node's own views in force.
    pub async fn know_view(&self, name: &str) {
        if self.query.has_view(name) {
            return;
        }
        if let Err(error) = self.sync_views().await {
            tracing::debug!(%error, "answering from the views last read");
        }
    }

    /// Every view this node knows, after a reread if the store answers.
    pub async fn views(&self) -> Vec<View> {
        if let Err(error) = self.sync_views().await {
            tracing::debug!(%error, "listing the views last read");
        }
        self.query.views().list()
    }

    /// Copies this data directory's groups into the store (once).
    async fn adopt_groups(&self) -> Result<(), ClusterError> {
        let mut adopted = self.groups_adopted.lock().await;
        if !*adopted {
            let copied = self.groups.adopt(self.broker.groups()).await?;
            if copied > 0 {
                tracing::info!(
                    groups = copied,
                    "consumer groups of this data directory are now cluster-wide"
                );
            }
            *adopted = true;
        }
        Ok(())
    }

    async fn adopt_views(&self, synced: &mut u64) -> Result<(), ClusterError> {
        let local = self.query.views().list();
        if local.is_empty() {
            return Ok(());
        }
        let count = local.len();
        // Another node adopting at the same time: keep both sides' views.
        let mut version = 0;
        let mut list = ViewList::default();
        loop {
            for view in &local {
                if !list.views.iter().any(|v| v.name == view.name) {
                    list.views.push(view.clone());
                }
            }
            match self.control.write_views(version + 1, &list).await {
                Ok(()) => break,
                Err(e) if e.is_conflict() => {
                    (version, list) = self.control.views::<ViewList>().await?;
                }
                Err(e) => return Err(e),
            }
        }
        tracing::info!(
            views = count,
            "views of this data directory are now cluster-wide"
        );
        self.apply(synced, version + 1, list).await;
        Ok(())
    }

    /// Makes this node's views those of `list`, version `version`. A view
    /// that cannot be stored here is logged and tried again at the next
    /// sync (`synced` stays behind).
    async fn apply(&self, synced: &mut u64, version: u64, list: ViewList) {
        let mut whole = true;
        for local in self.query.views().list() {
            if !list.views.contains(&local) {
                if let Err(error) = self.query.remove_view(&local.name).await {
                    tracing::warn!(%error, view = %local.name, "cannot remove a deleted view");
                    whole = false;
                } else {
                    tracing::info!(view = %local.name, "view deleted through another node");
                }
            }
        }
        for view in list.views {
            let name = view.name.clone();
            if let Err(error) = self.query.install_view(view).await {
                tracing::warn!(%error, view = %name, "cannot store a view of the cluster");
                whole = false;
            }
        }
        if whole {
            *synced = version;
        }
    }

    /// Keeps this node's views in line with the cluster's, and adopts this
    /// data directory's groups, until `stopping` turns true.
    pub async fn run(self: Arc<Self>, mut stopping: watch::Receiver<bool>) {
        let mut failing = false;
        let mut tick = tokio::time::interval(REFRESH_EVERY);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                _ = tick.tick() => {}
                _ = stopping.wait_for(|s| *s) => return,
            }
            let done = tokio::select! {
                done = async {
                    self.adopt_groups().await?;
                    self.sync_views().await
                } => done,
                _ = stopping.wait_for(|s| *s) => return,
            };
            match done {
                Ok(()) if failing => {
                    failing = false;
                    tracing::info!("views and groups are read from the object store again");
                }
                Ok(()) => {}
                Err(error) if !failing => {
                    failing = true;
                    tracing::warn!(%error, "cannot reread the views; the last ones read stay in force");
                }
                Err(_) => {}
            }
        }
    }
}

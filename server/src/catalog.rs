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
//!   line with the store every [`REFRESH_EVERY`](crate::periodic::REFRESH_EVERY), at once after its own
//!   changes, and before answering for a name it does not know. So a view
//!   made through one node is readable at once through every other; a
//!   deleted one may still be read through another node for up to
//!   [`REFRESH_EVERY`](crate::periodic::REFRESH_EVERY). A materialized view's state is derived data: each
//!   node builds its own from the log and the cold tier, and one it could
//!   not plan yet (its topic not here yet) is planned again at each sync.
//! - A data directory from before these were cluster-wide is adopted once
//!   (a marker file records it): its groups' positions and its views that
//!   the store lacks are added to the store. After that, a view the store
//!   lacks was deleted while this node was away, and goes.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use serde::{Deserialize, Serialize};
use strata_broker::Broker;
use strata_cluster::{ClusterError, ControlStore, Groups};
use strata_query::views::View;
use strata_query::{QueryError, QueryService};
use tokio::sync::{Mutex, watch};

use crate::api_error::ApiError;
use crate::periodic::{Messages, refresh_every};

/// Marker files in the data directory: its pre-cluster groups, views are
/// in the store.
const GROUPS_ADOPTED: &str = "groups-adopted";
const VIEWS_ADOPTED: &str = "views-adopted";

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
    data_dir: PathBuf,
    groups: Groups,
    /// The version of `_cluster/views/` this node's views match. Held while
    /// they are brought in line and while this node changes the list, so
    /// that changes apply one at a time and never go back.
    synced: Mutex<u64>,
    groups_adopted: AtomicBool,
    views_adopted: AtomicBool,
}

impl Catalog {
    /// The catalog in `control`'s store, served with `query`'s views and
    /// the pre-cluster groups of `broker`, whose data directory is
    /// `data_dir`.
    pub fn new(
        control: ControlStore,
        query: Arc<QueryService>,
        broker: Arc<Broker>,
        data_dir: &Path,
    ) -> Self {
        let adopted = |marker: &str| AtomicBool::new(data_dir.join(marker).exists());
        Self {
            groups: Groups::new(control.clone()),
            control,
            query,
            broker,
            groups_adopted: adopted(GROUPS_ADOPTED),
            views_adopted: adopted(VIEWS_ADOPTED),
            data_dir: data_dir.to_path_buf(),
            synced: Mutex::new(0),
        }
    }

    /// The cluster's consumer groups.
    pub fn groups(&self) -> &Groups {
        &self.groups
    }

    /// Adopts this data directory's groups (once) and brings this node's
    /// views in line with the cluster's. At start, and every
    /// [`REFRESH_EVERY`](crate::periodic::REFRESH_EVERY) from [`Self::run`]; the two are tried apart, so
    /// that one failing does not hold the other up.
    pub async fn refresh(&self) -> Result<(), ClusterError> {
        let groups = self.adopt_groups().await;
        let views = self.sync_views().await;
        groups.and(views)
    }

    /// Creates a view cluster-wide and on this node.
    ///
    /// # Contract
    ///
    /// When this returns `Ok`, the view is durable in the store, and every
    /// node answers for it from its next request for the view on (this one
    /// at once, unless storing its copy failed: then it logs why and tries
    /// again at each sync). Two nodes creating one name at once: one wins,
    /// the other gets `ViewExists`.
    pub async fn create_view(
        &self,
        name: &str,
        sql: &str,
        materialized: bool,
    ) -> Result<View, ApiError> {
        // The checks below look at this node's views: bring them up first.
        self.know_view(name).await;
        let view = self.query.prepare_view(name, sql, materialized).await?;
        self.update_views(|list| {
            if list.views.iter().any(|v| v.name == view.name) {
                return Err(QueryError::ViewExists(view.name.clone()).into());
            }
            list.views.push(view.clone());
            Ok(())
        })
        .await?;
        Ok(view)
    }

    /// Deletes a view cluster-wide and on this node (`ViewNotFound` when
    /// the cluster has none of that name).
    ///
    /// # Contract
    ///
    /// Durable in the store when it returns `Ok`; other nodes drop the view
    /// within [`REFRESH_EVERY`](crate::periodic::REFRESH_EVERY) while they can read the store.
    pub async fn delete_view(&self, name: &str) -> Result<(), ApiError> {
        self.update_views(|list| {
            let before = list.views.len();
            list.views.retain(|v| v.name != name);
            if list.views.len() == before {
                return Err(QueryError::ViewNotFound(name.chars().take(128).collect()).into());
            }
            Ok(())
        })
        .await
    }

    /// Writes the next version of the cluster's views with `change`
    /// applied to the newest (again on a conflict), then brings this
    /// node's views in line with it.
    async fn update_views(
        &self,
        change: impl Fn(&mut ViewList) -> Result<(), ApiError>,
    ) -> Result<(), ApiError> {
        self.adopt_views().await?;
        let mut synced = self.synced.lock().await;
        self.write_views(&mut synced, |list| change(list).map(|()| true))
            .await
            .map(drop)
    }

    /// The read, change, create-the-next-version loop of every change to
    /// the cluster's views, with `synced` held; `change` returns `false`
    /// for nothing to write. Returns whether a version was written.
    async fn write_views<E: From<ClusterError>>(
        &self,
        synced: &mut u64,
        change: impl Fn(&mut ViewList) -> Result<bool, E>,
    ) -> Result<bool, E> {
        loop {
            let (version, mut list) = self.control.views::<ViewList>().await?;
            if !change(&mut list)? {
                return Ok(false);
            }
            match self.control.write_views(version + 1, &list).await {
                Ok(()) => {
                    self.apply(synced, version + 1, list).await;
                    return Ok(true);
                }
                Err(e) if e.is_conflict() => continue,
                Err(e) => return Err(e.into()),
            }
        }
    }

    /// Brings this node's views in line with the cluster's (one LIST when
    /// nothing changed), and plans again the materialized views it could
    /// not keep yet.
    pub async fn sync_views(&self) -> Result<(), ClusterError> {
        self.adopt_views().await?;
        // Read outside the lock: a slow store holds up no reader.
        let newest = self.control.views_version().await?;
        if newest != *self.synced.lock().await {
            let (version, list) = self.control.views::<ViewList>().await?;
            let mut synced = self.synced.lock().await;
            // Another sync or change may have gone further meanwhile.
            if version > *synced {
                self.apply(&mut synced, version, list).await;
            }
        }
        for view in self.query.views().list() {
            if view.materialized
                && !self.query.keeps(&view.name)
                && let Err(error) = self.query.keep_view(&view).await
            {
                tracing::debug!(%error, view = %view.name, "the materialized view cannot be kept yet");
            }
        }
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

    /// Adds this data directory's groups' positions that the store lacks
    /// (once per data directory).
    async fn adopt_groups(&self) -> Result<(), ClusterError> {
        if self.groups_adopted.load(Ordering::Acquire) {
            return Ok(());
        }
        let changed = self.groups.adopt(self.broker.groups()).await?;
        if changed > 0 {
            tracing::info!(
                groups = changed,
                "consumer groups of this data directory are now cluster-wide"
            );
        }
        self.mark_adopted(GROUPS_ADOPTED, &self.groups_adopted)
    }

    /// Adds this data directory's views that the store lacks (by name;
    /// once per data directory), before any sync could take them for
    /// views deleted while this node was away.
    async fn adopt_views(&self) -> Result<(), ClusterError> {
        if self.views_adopted.load(Ordering::Acquire) {
            return Ok(());
        }
        let mut synced = self.synced.lock().await;
        if self.views_adopted.load(Ordering::Acquire) {
            return Ok(());
        }
        let local = self.query.views().list();
        let adopted = self
            .write_views(&mut synced, |list| {
                let before = list.views.len();
                for view in &local {
                    if !list.views.iter().any(|v| v.name == view.name) {
                        list.views.push(view.clone());
                    }
                }
                Ok::<_, ClusterError>(list.views.len() > before)
            })
            .await?;
        if adopted {
            tracing::info!("views of this data directory are now cluster-wide");
        }
        self.mark_adopted(VIEWS_ADOPTED, &self.views_adopted)
    }

    fn mark_adopted(&self, marker: &str, flag: &AtomicBool) -> Result<(), ClusterError> {
        strata_broker::durable::write_atomic(&self.data_dir.join(marker), b"")?;
        flag.store(true, Ordering::Release);
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
                    tracing::info!(view = %local.name, "view deleted or replaced through another node");
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

    /// Calls [`Self::refresh`] every [`REFRESH_EVERY`](crate::periodic::REFRESH_EVERY) until `stopping`
    /// turns true.
    pub async fn run(self: Arc<Self>, stopping: watch::Receiver<bool>) {
        let messages = Messages {
            failing: "cannot reread the views or adopt the groups; the last views read stay in force",
            recovered: "views and groups are read from the object store again",
        };
        refresh_every(stopping, messages, || self.refresh()).await;
    }
}

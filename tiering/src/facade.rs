//! [`Tiering`], the cold tier of one server: its configuration, opening
//! (manifests, lease, leftovers of a crash), the cache of committed
//! manifests, and the background loop. What it does lives beside it, one
//! job per file: `offload` (segments → Parquet → manifest), `retention`,
//! `pins` (reads that keep objects alive), `deletion` (of a topic's cold
//! data) and `partition_reads` (records by offset and time).

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use parking_lot::Mutex;
use strata_broker::{Broker, Topic};
use tokio::sync::watch;

use crate::cold_read;
use crate::error::{Result, TieringError};
use crate::lease::Lease;
use crate::manifest::{Manifest, ManifestStore};
use crate::pins::Readers;
use crate::store::ColdStore;
use crate::upload::UploadJournal;

/// How the offloader runs.
#[derive(Debug, Clone)]
pub struct TieringConfig {
    /// Pause between background offload passes.
    pub interval: Duration,
    /// A sealed segment is offloaded only once it is this old.
    pub offload_after: Duration,
    /// Crash tests only: abort the process at this step of an offload, to
    /// prove recovery from it.
    pub crash_at: Option<CrashPoint>,
    /// How long a file dropped by retention stays in the object store, so
    /// that reads which listed it just before can finish; reads pinned
    /// before the drop keep it longer (see [`PinnedManifest`]).
    pub object_delete_grace: Duration,
    /// Publish each topic's cold tier as a Delta Lake table ([`crate::delta`]).
    pub delta_table: bool,
    /// Merge adjacent small cold files ([`crate::compaction`]).
    pub compaction: bool,
    /// The size compaction merges small files up to (files under an
    /// eighth of it are small: [`crate::compaction::SMALL_FRACTION`]).
    pub compact_target_bytes: u64,
}

impl Default for TieringConfig {
    fn default() -> Self {
        Self {
            interval: Duration::from_secs(5),
            offload_after: Duration::ZERO,
            crash_at: None,
            object_delete_grace: Duration::from_secs(60),
            delta_table: true,
            compaction: true,
            compact_target_bytes: 128 << 20,
        }
    }
}

/// A step of an offload at which a crash test aborts the process
/// (`STRATA_CRASH_AT`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CrashPoint {
    /// Once the first part of a multipart upload is stored.
    DuringUpload,
    /// Once the file is uploaded and durable, before the manifest commit.
    AfterUpload,
    /// Once the manifest is committed, before local retention.
    AfterCommit,
    /// Once a Delta table commit is stored, before this process notes it.
    AfterTableCommit,
    /// Once a compaction's merged file is stored, before the manifest commit.
    BeforeCompactionCommit,
    /// Once a compaction's manifest is committed, before anything else.
    AfterCompactionCommit,
}

impl std::str::FromStr for CrashPoint {
    type Err = TieringError;

    fn from_str(name: &str) -> Result<Self> {
        match name {
            "during_upload" => Ok(Self::DuringUpload),
            "after_upload" => Ok(Self::AfterUpload),
            "after_commit" => Ok(Self::AfterCommit),
            "after_table_commit" => Ok(Self::AfterTableCommit),
            "before_compaction_commit" => Ok(Self::BeforeCompactionCommit),
            "after_compaction_commit" => Ok(Self::AfterCompactionCommit),
            other => Err(TieringError::Config(format!(
                "unknown crash point {other:?}; expected during_upload, after_upload, after_commit, \
                 after_table_commit, before_compaction_commit or after_compaction_commit"
            ))),
        }
    }
}

type PartitionKey = (String, u32);

/// The cold tier of one server.
#[derive(Debug)]
pub struct Tiering {
    pub(crate) broker: Arc<Broker>,
    pub(crate) lease: Lease,
    pub(crate) cold: ColdStore,
    pub(crate) manifests: ManifestStore,
    pub(crate) config: TieringConfig,
    /// Newest committed manifest per partition.
    pub(crate) committed: Mutex<HashMap<PartitionKey, Arc<Manifest>>>,
    /// Serialises offloads of one partition (background pass and `tiering/run`).
    pub(crate) offloading: Mutex<HashMap<PartitionKey, Arc<tokio::sync::Mutex<()>>>>,
    /// Footers and decoded row windows of recently read cold files.
    pub(crate) cache: crate::read_cache::ReadCache,
    /// Multipart uploads in progress, so a crash's can be aborted.
    pub(crate) uploads: Arc<UploadJournal>,
    /// Topics whose description this process has stored.
    pub(crate) described: Mutex<HashMap<String, Arc<tokio::sync::OnceCell<()>>>>,
    /// Topics whose cold data is deleted while their local deletion is
    /// still under way: never offloaded again (a topic re-created under the
    /// same name is another `Topic`, and is offloaded).
    pub(crate) deleting: Mutex<Vec<std::sync::Weak<Topic>>>,
    /// Objects dropped from manifests (with the time they were dropped),
    /// deleted once their grace period ends and no read that may still
    /// use them is running.
    pub(crate) pending_deletes: Mutex<Vec<(i64, object_store::path::Path)>>,
    /// The topics' Delta tables, as far as this process knows them.
    pub(crate) tables: crate::delta::Tables,
    /// Reads of the cold tier in progress, by start time.
    pub(crate) readers: Arc<Readers>,
    /// Which partitions this node offloads; every one when unset. Weak:
    /// the scope (the server's replicas) holds this tier.
    pub(crate) scope: parking_lot::RwLock<Option<std::sync::Weak<dyn OffloadScope>>>,
    /// This node's name: the owner of the topics it creates.
    pub(crate) owner: String,
}

/// What a topic's Delta table lists, as far as start-up could read it.
pub(crate) enum InTable {
    Files(std::collections::HashSet<String>),
    Unknown,
}

/// Which partitions a node offloads. In a cluster only a partition's
/// leader does (its followers hold the same records); a single server
/// offloads every partition.
pub trait OffloadScope: Send + Sync + std::fmt::Debug {
    /// Whether this node offloads (and applies retention to) `partition`
    /// of `topic` now.
    fn offloads(&self, topic: &str, partition: u32) -> bool;
}

impl Tiering {
    /// Loads the manifest of every partition of every topic.
    /// `owner` names this server in the writer lease (see [`Lease`]); it
    /// must stay the same across restarts of the same server.
    pub async fn open(
        broker: Arc<Broker>,
        cold: ColdStore,
        config: TieringConfig,
        owner: &str,
    ) -> Result<Arc<Self>> {
        let lease = Lease::acquire(&cold, owner).await?;
        let uploads = Arc::new(UploadJournal::open(&broker.config().data_dir)?);
        if let Some(multipart) = &cold.multipart {
            uploads.abort_abandoned(multipart.as_ref()).await;
        }
        let manifests = ManifestStore::new(&cold);
        let tiering = Arc::new(Self {
            broker,
            lease,
            cold,
            manifests,
            config,
            committed: Mutex::default(),
            offloading: Mutex::default(),
            described: Mutex::default(),
            deleting: Mutex::default(),
            cache: crate::read_cache::ReadCache::default(),
            uploads,
            pending_deletes: Mutex::default(),
            tables: crate::delta::Tables::default(),
            readers: Arc::default(),
            scope: parking_lot::RwLock::new(None),
            owner: owner.to_string(),
        });
        tiering.restore_missing_topics(&[]).await?;
        for topic in tiering.broker.topics() {
            let in_table = tiering.files_in_table(topic.name()).await;
            for p in topic.partitions() {
                let manifest = tiering.manifests.load(topic.name(), p.id()).await?;
                if manifest.end_offset < p.start_offset() && !manifest.files.is_empty() {
                    tracing::error!(
                        topic = topic.name(),
                        partition = p.id(),
                        cold_end = manifest.end_offset,
                        local_start = p.start_offset(),
                        "offsets between the cold tier and local disk are missing"
                    );
                }
                tiering.remove_orphans(&manifest, in_table.as_ref()).await?;
                tiering.remember(manifest);
            }
        }
        tracing::info!(store = %tiering.cold.url, "cold tier ready");
        Ok(tiering)
    }

    /// Re-creates, from the store alone, this node's own topics that have
    /// cold data but no local directory (a lost or replaced disk): each
    /// partition continues at the cold tier's end offset.
    pub(crate) async fn restore_missing_topics(&self, adopt: &[String]) -> Result<()> {
        for (meta, owner) in self.manifests.topic_metas().await? {
            // A replicated topic comes back through the cluster (from its
            // other replicas); another node's own topic is that node's.
            let others = owner.is_some_and(|owner| owner != self.owner && !adopt.contains(&owner));
            if self.broker.topic(&meta.name).is_ok() || meta.config.is_replicated() || others {
                continue;
            }
            let mut starts = Vec::new();
            for p in 0..meta.partitions {
                starts.push(self.manifests.load(&meta.name, p).await?.end_offset);
            }
            tracing::warn!(topic = %meta.name, ?starts, "restoring a topic from the cold tier");
            self.broker.restore_topic(meta, &starts)?;
        }
        Ok(())
    }

    /// What the topic's table lists, at start-up: files it may still list
    /// must not be deleted before a publish removes them. `None` when it
    /// has no table; when it cannot be read, every file counts as listed.
    async fn files_in_table(&self, topic: &str) -> Option<InTable> {
        if !self.config.delta_table {
            return None;
        }
        match self.table_files(topic).await {
            Ok(files) => files.map(|f| InTable::Files(f.into_keys().collect())),
            Err(error) => {
                tracing::warn!(topic, %error, "could not read the topic's Delta table; its orphaned files wait for the next publish");
                Some(InTable::Unknown)
            }
        }
    }

    /// Deletes data files of a partition that its manifest does not list:
    /// uploads a crash left uncommitted, and files whose deletion after
    /// retention was still pending when the server stopped. Until then a
    /// glob over the topic's files could see them. Those the topic's table
    /// may list (`in_table`) are deleted only once it no longer does.
    pub(crate) async fn remove_orphans(
        &self,
        manifest: &Manifest,
        in_table: Option<&InTable>,
    ) -> Result<()> {
        use futures::TryStreamExt;
        let dir = self
            .cold
            .root
            .topic(&manifest.topic)
            .join(manifest.partition.to_string());
        self.cold.remove_staged_uploads(&dir).await?;
        let listed: Vec<object_store::ObjectMeta> =
            self.cold.store.list(Some(&dir)).try_collect().await?;
        let committed: std::collections::HashSet<&str> =
            manifest.files.iter().map(|f| f.path.as_str()).collect();
        for object in listed {
            let path = object.location.to_string();
            if path.ends_with(".parquet") && !committed.contains(path.as_str()) {
                let relative =
                    crate::delta::actions::relative_path(&self.cold.root, &manifest.topic, &path);
                match in_table {
                    // The table cannot be read: the file stays until a
                    // start that can read it.
                    Some(InTable::Unknown) => continue,
                    Some(InTable::Files(files)) if files.contains(relative) => {
                        self.drop_objects(
                            &manifest.topic,
                            manifest.partition,
                            manifest.version,
                            vec![object.location],
                        );
                        continue;
                    }
                    _ => {}
                }
                tracing::info!(%path, "removing an orphaned cold file");
                object_store::ObjectStoreExt::delete(self.cold.store.as_ref(), &object.location)
                    .await?;
            }
        }
        Ok(())
    }

    /// Restores, as this node's, the topics of `owners` that have cold data
    /// but no local directory: nodes known to be gone (a server whose disk
    /// was lost and which came back under a new name). The topics become
    /// this node's at their next offload.
    pub async fn adopt_topics_of(&self, owners: &[String]) -> Result<()> {
        if owners.is_empty() {
            return Ok(());
        }
        self.restore_missing_topics(owners).await
    }

    /// From now on, offloads only the partitions `scope` names (while it
    /// lives: once it is dropped, nothing).
    pub fn set_scope(&self, scope: &Arc<dyn OffloadScope>) {
        *self.scope.write() = Some(Arc::downgrade(scope));
    }

    pub(crate) fn offloads(&self, topic: &str, partition: u32) -> bool {
        match self.scope.read().as_ref() {
            None => true,
            Some(scope) => scope
                .upgrade()
                .is_some_and(|scope| scope.offloads(topic, partition)),
        }
    }

    /// Records that `topic` was just created: its cold tier is empty (a
    /// name with cold data is restored at start-up, and deletion removes
    /// cold data first), so reads of it need not ask the object store,
    /// which may be down.
    pub fn topic_created(&self, topic: &strata_broker::Topic) {
        for p in topic.partitions() {
            if self.cached(topic.name(), p.id()).is_none() {
                self.remember(Manifest::empty(topic.name(), p.id()));
            }
        }
    }

    /// Caches `manifest` as the partition's latest, unless a newer version
    /// is cached already (a slow load that read an older version must not
    /// replace what a commit put there meanwhile); returns the one cached.
    pub(crate) fn remember(&self, manifest: Manifest) -> Arc<Manifest> {
        let mut committed = self.committed.lock();
        let key = (manifest.topic.clone(), manifest.partition);
        match committed.get(&key) {
            Some(cached) if cached.version > manifest.version => cached.clone(),
            _ => {
                let manifest = Arc::new(manifest);
                committed.insert(key, manifest.clone());
                manifest
            }
        }
    }

    pub(crate) async fn manifest(&self, topic: &str, partition: u32) -> Result<Arc<Manifest>> {
        let cached = self
            .committed
            .lock()
            .get(&(topic.to_string(), partition))
            .cloned();
        if let Some(m) = cached {
            return Ok(m);
        }
        let loaded = self.manifests.load(topic, partition).await?;
        if self.deleting_named(topic) {
            // Not cached: it would outlive the deletion under the same name.
            return Ok(Arc::new(loaded));
        }
        Ok(self.remember(loaded))
    }

    /// Whether the object store answers: lists the cold tier's root within
    /// `timeout`. Returns how long it took, or why it failed (unreachable,
    /// refused credentials, no answer in time), for readiness checks.
    pub async fn probe_store(&self, timeout: Duration) -> std::result::Result<Duration, String> {
        let started = std::time::Instant::now();
        let listing = self
            .cold
            .store
            .list_with_delimiter(Some(self.cold.root.path()));
        match tokio::time::timeout(timeout, listing).await {
            Ok(Ok(_)) => Ok(started.elapsed()),
            Ok(Err(e)) => Err(e.to_string()),
            Err(_) => Err(format!("no answer within {timeout:?}")),
        }
    }

    /// Opens the rows of one cold file that can match `scan` (see
    /// [`cold_read::scan_file`]).
    pub async fn scan_file(
        &self,
        scan: &cold_read::FileScan<'_>,
        batch_rows: usize,
    ) -> Result<Option<cold_read::OpenedScan>> {
        cold_read::scan_file(&self.cold.store, &self.cache, scan, batch_rows).await
    }

    pub(crate) fn cached(&self, topic: &str, partition: u32) -> Option<Arc<Manifest>> {
        self.committed
            .lock()
            .get(&(topic.to_string(), partition))
            .cloned()
    }

    /// Drops what this process cached of `topic` (objects under `prefix`).
    pub(crate) fn forget_topic(&self, topic: &str, prefix: &str) {
        self.committed.lock().retain(|(t, _), _| t != topic);
        self.described.lock().remove(topic);
        self.tables.forget(topic);
        self.cache.forget(prefix);
    }

    /// True while a topic of this name is being deleted (or its deleted
    /// `Topic` is still held by a reader).
    pub(crate) fn deleting_named(&self, name: &str) -> bool {
        self.deleting
            .lock()
            .iter()
            .any(|t| t.upgrade().is_some_and(|t| t.name() == name))
    }

    pub(crate) fn is_deleting(&self, topic: &Arc<Topic>) -> bool {
        let mut deleting = self.deleting.lock();
        deleting.retain(|t| t.strong_count() > 0);
        deleting
            .iter()
            .any(|t| t.upgrade().is_some_and(|t| Arc::ptr_eq(&t, topic)))
    }

    /// Runs offload passes (renewing the lease) every `interval` until
    /// `stopping` turns true, then gives the lease up.
    pub async fn run_background(self: Arc<Self>, mut stopping: watch::Receiver<bool>) {
        // Renewed on its own clock: a pass over a large backlog can take
        // longer than the lease lasts.
        let renewing = tokio::spawn(Self::renew_lease(self.clone(), stopping.clone()));
        // On its own clock too: a slow table commit must not hold offloads
        // up, nor a long offload pass the table.
        let publishing = tokio::spawn(Self::publish_in_background(self.clone(), stopping.clone()));
        let compacting = tokio::spawn(Self::compact_in_background(self.clone(), stopping.clone()));
        loop {
            tokio::select! {
                _ = tokio::time::sleep(self.config.interval) => {}
                _ = stopping.wait_for(|s| *s) => break,
            }
            if let Err(e) = self.lease.renew().await {
                tracing::error!(error = %e, "the cold tier's writer lease is lost; offloading stops");
                continue;
            }
            // Shutdown may cut a pass short: an offload is safe to abandon at
            // any point (the next start redoes what was not committed).
            tokio::select! {
                _ = self.offload_all() => {}
                _ = stopping.wait_for(|s| *s) => break,
            }
        }
        renewing.abort();
        publishing.abort();
        compacting.abort();
        self.lease.release().await;
    }

    /// Runs `pass` every `interval` until `stopping` turns true (cutting
    /// a pass short then: publishing and compaction are safe to abandon at
    /// any point, each commit being whole or absent).
    async fn every_interval<F: std::future::Future<Output = ()>>(
        &self,
        mut stopping: watch::Receiver<bool>,
        mut pass: impl FnMut() -> F,
    ) {
        loop {
            tokio::select! {
                _ = tokio::time::sleep(self.config.interval) => {}
                _ = stopping.wait_for(|s| *s) => return,
            }
            tokio::select! {
                _ = pass() => {}
                _ = stopping.wait_for(|s| *s) => return,
            }
        }
    }

    async fn compact_in_background(self: Arc<Self>, stopping: watch::Receiver<bool>) {
        if self.config.compaction {
            self.every_interval(stopping, || self.compact_all()).await;
        }
    }

    async fn publish_in_background(self: Arc<Self>, stopping: watch::Receiver<bool>) {
        if self.config.delta_table {
            self.every_interval(stopping, || self.publish_all()).await;
        }
    }

    async fn renew_lease(self: Arc<Self>, mut stopping: watch::Receiver<bool>) {
        let every = Duration::from_millis(crate::lease::RENEW_EVERY_MS as u64);
        loop {
            tokio::select! {
                _ = tokio::time::sleep(every) => {}
                _ = stopping.wait_for(|s| *s) => return,
            }
            if let Err(e) = self.lease.renew().await {
                tracing::warn!(error = %e, "could not renew the cold tier's writer lease");
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::manifest::ColdFile;

    #[tokio::test]
    async fn a_slow_load_never_replaces_a_newer_cached_manifest() {
        let dir = tempfile::tempdir().unwrap();
        let broker = Arc::new(
            Broker::open(strata_broker::BrokerConfig {
                data_dir: dir.path().to_path_buf(),
                ..strata_broker::BrokerConfig::default()
            })
            .unwrap(),
        );
        let cold = ColdStore::open("memory://").unwrap();
        let tiering = Tiering::open(broker, cold, TieringConfig::default(), "test")
            .await
            .unwrap();
        let loaded = Manifest::empty("t", 0);
        let file = ColdFile {
            path: "t/0/0-9.parquet".into(),
            first_offset: 0,
            last_offset: 9,
            min_timestamp: 0,
            max_timestamp: 0,
            records: 10,
            bytes: 100,
        };
        let committed = loaded.with_file(file).unwrap();
        tiering.remember(committed.clone());
        // The load began before the commit and ends after it.
        let kept = tiering.remember(loaded);
        assert_eq!(kept.version, committed.version);
        assert_eq!(tiering.cached("t", 0).unwrap().end_offset, 10);
    }
}

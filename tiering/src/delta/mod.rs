//! Each topic's cold tier as a Delta Lake table at `<root>/<topic>/`, so
//! that any Delta reader (delta-rs, DuckDB, Spark, Trino) sees a snapshot
//! of it with no Strata process running.
//!
//! The manifests stay the source of truth; the table follows them. A
//! publish diffs each partition's manifest against the files the table
//! lists under `<partition>/` and commits the difference (adds, removes)
//! in one Delta commit, with a `txn` action per partition
//! (`strata/<topic>/<partition>` → manifest version) recording how far the
//! table follows it. Replaying a publish after a crash finds no difference,
//! so it commits nothing: each cold file is in the table exactly once.
//! Commits go through delta-rs's default log store, which creates
//! `_delta_log/<version>.json` with the object store's conditional put, as
//! the manifests do; delta-rs also writes checkpoints (every 100 versions)
//! and expires old log entries (after 30 days), so reading the log stays
//! cheap.
//!
//! An object a manifest drops (retention) is deleted only after the table
//! has removed it ([`Tiering::drop_objects`]), and then only after the
//! usual grace period, so a reader of the latest table version never meets
//! a missing file and one that just read the previous version can finish.
//! The table says so: its `delta.deletedFileRetentionDuration` is that
//! grace period, and once a removal's grace has passed the next publish
//! writes a checkpoint ("tidy"), which leaves out the expired tombstones.
//! Without it every reader would go on reading a compaction's thousand
//! removes for Delta's default week.

pub mod actions;

use std::collections::HashMap;
use std::sync::Arc;

use deltalake_core::kernel::transaction::{CommitBuilder, CommitProperties};
use deltalake_core::operations::create::CreateBuilder;
use deltalake_core::protocol::{DeltaOperation, SaveMode, checkpoints};
use deltalake_core::{DeltaTable, DeltaTableBuilder, DeltaTableError};
use object_store::ObjectStoreExt;
use object_store::path::Path;
use parking_lot::Mutex;
use strata_broker::Topic;

use crate::error::{Result, TieringError};
use crate::facade::Tiering;
use crate::manifest::{ColdFile, Manifest};
use crate::store::Backend;

type PartitionKey = (String, u32);

/// What this process knows of the topics' tables.
#[derive(Default)]
pub(crate) struct Tables {
    /// Each topic's table as last loaded or committed (`None`: not loaded);
    /// its async lock serialises publishing the topic.
    open: Mutex<HashMap<String, Arc<tokio::sync::Mutex<Option<DeltaTable>>>>>,
    /// The manifest version each partition's files were last published at.
    published: Mutex<HashMap<PartitionKey, u64>>,
    /// Each topic's newest table version this process has seen.
    versions: Mutex<HashMap<String, u64>>,
    /// Objects a partition's manifest dropped at a version: deleted only
    /// once the table follows that version.
    awaiting: Mutex<Vec<(PartitionKey, u64, Path)>>,
    /// Each topic's due tidy checkpoints: when the oldest and the newest
    /// tombstones not yet left out of a checkpoint expire (ms). Kept in
    /// memory only: after a restart, delta-rs's checkpoint every 100
    /// versions leaves them out.
    tidy: Mutex<HashMap<String, (i64, i64)>>,
}

impl std::fmt::Debug for Tables {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Tables")
            .field("open", &self.open.lock().len())
            .field("versions", &*self.versions.lock())
            .field("awaiting", &self.awaiting.lock().len())
            .finish()
    }
}

impl Tables {
    /// Forgets a deleted topic.
    pub(crate) fn forget(&self, topic: &str) {
        self.open.lock().remove(topic);
        self.published.lock().retain(|(t, _), _| t != topic);
        self.versions.lock().remove(topic);
        self.awaiting.lock().retain(|((t, _), _, _)| t != topic);
        self.tidy.lock().remove(topic);
    }

    /// Notes tombstones written at `now_ms` that expire `retention` later.
    fn schedule_tidy(&self, topic: &str, now_ms: i64, retention: std::time::Duration) {
        let due = now_ms.saturating_add(i64::try_from(retention.as_millis()).unwrap_or(i64::MAX));
        let mut tidy = self.tidy.lock();
        let entry = tidy.entry(topic.to_string()).or_insert((due, due));
        *entry = (entry.0.min(due), entry.1.max(due));
    }

    /// Whether a tidy checkpoint of `topic` is due at `now_ms`.
    fn tidy_due(&self, topic: &str, now_ms: i64) -> bool {
        self.tidy
            .lock()
            .get(topic)
            .is_some_and(|(first, _)| *first < now_ms)
    }

    /// Records a tidy checkpoint written at `now_ms`: tombstones that had
    /// not expired yet make the next one due when they do.
    fn tidied(&self, topic: &str, now_ms: i64) {
        let mut tidy = self.tidy.lock();
        match tidy.get(topic).copied() {
            Some((_, last)) if last >= now_ms => {
                tidy.insert(topic.to_string(), (last, last));
            }
            _ => {
                tidy.remove(topic);
            }
        }
    }
}

/// A topic's table, as its description shows it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TableInfo {
    /// Always `"delta"`.
    pub format: &'static str,
    /// The table's root: the object store's URL and the topic.
    pub location: String,
    /// The newest table version this server has published or read; `None`
    /// until it has (a topic with nothing offloaded yet has no table).
    pub version: Option<u64>,
}

impl From<DeltaTableError> for TieringError {
    fn from(error: DeltaTableError) -> Self {
        match error {
            DeltaTableError::ObjectStore { source } => Self::Store(source),
            other => Self::Table(other.to_string()),
        }
    }
}

impl Tiering {
    /// The table `topic` is published as, when tables are on.
    pub fn table_info(&self, topic: &str) -> Option<TableInfo> {
        self.config.delta_table.then(|| TableInfo {
            format: "delta",
            location: actions::location(&self.cold.url, topic),
            version: self.tables.versions.lock().get(topic).copied(),
        })
    }

    /// Hands over objects that version `version` of a partition's manifest
    /// no longer lists, for deletion after the grace period: at once, or,
    /// when tables are on, once the table follows that version.
    pub(crate) fn drop_objects(&self, topic: &str, partition: u32, version: u64, paths: Vec<Path>) {
        if self.config.delta_table {
            let key = (topic.to_string(), partition);
            self.tables
                .awaiting
                .lock()
                .extend(paths.into_iter().map(|path| (key.clone(), version, path)));
        } else {
            let now = strata_broker::timestamp::now_ms();
            self.pending_deletes
                .lock()
                .extend(paths.into_iter().map(|path| (now, path)));
        }
    }

    /// Publishes the cold tier of `topic`'s partitions that this node
    /// offloads to the topic's Delta table (creating it on first use).
    ///
    /// # Contract
    ///
    /// When this returns `Ok`, the table lists exactly the files of those
    /// partitions' manifests as they were when it began, each once. A
    /// publish is one atomic Delta commit, or none when the table is
    /// already up to date; one cut short by a crash is redone by the next.
    /// Objects the manifests dropped are queued for deletion only once the
    /// commit that removes them from the table has succeeded.
    pub async fn publish_table(&self, topic: &Arc<Topic>) -> Result<()> {
        if !self.config.delta_table {
            return Ok(());
        }
        let name = topic.name();
        if self
            .tables
            .tidy_due(name, strata_broker::timestamp::now_ms())
        {
            self.tidy_table(topic).await;
        }
        // The common case, a topic whose table is up to date, costs no
        // lock and no request.
        let current = topic.partitions().iter().all(|p| {
            !self.offloads(name, p.id())
                || self.cached(name, p.id()).is_some_and(|m| {
                    m.version == 0
                        || self
                            .tables
                            .published
                            .lock()
                            .get(&(name.to_string(), p.id()))
                            == Some(&m.version)
                })
        });
        if current {
            self.release_published(name);
            return Ok(());
        }
        // The manifests of all partitions as of one moment (offloads and
        // retention wait while they are read, not during the commit: a
        // slow store must not hold offloads up).
        let mut manifests = Vec::new();
        {
            let _held = self.lock_partitions(topic).await;
            for p in topic.partitions() {
                if self.offloads(name, p.id()) {
                    let manifest = self.manifest(name, p.id()).await?;
                    // Version 0: never committed, nothing to publish.
                    if manifest.version > 0 {
                        manifests.push(manifest);
                    }
                }
            }
        }
        let pending: Vec<&Arc<Manifest>> = {
            let published = self.tables.published.lock();
            manifests
                .iter()
                .filter(|m| published.get(&(name.to_string(), m.partition)) != Some(&m.version))
                .collect()
        };
        self.report_publish_lag(name, &manifests);
        if pending.is_empty() {
            self.release_published(name);
            return Ok(());
        }
        // Held through the commit; a deletion of the topic takes it too
        // (after marking the topic), so no commit re-creates the log of a
        // deleted topic.
        let mut slot = self.hold_table(name).await;
        if self.is_deleting(topic) {
            return Ok(());
        }
        let table = match slot.as_mut() {
            Some(table) => {
                table.update_incremental(None).await?;
                table
            }
            None => slot.insert(self.load_or_create_table(name).await?),
        };
        // A node whose view of a partition is older than what the table
        // already follows (another node led it since) must not roll the
        // table back: it forgets its view and reloads it next time. Only in
        // a cluster: a single server is the table's one writer (and each
        // check reads the log's `txn` actions).
        let clustered = self.scope.read().is_some();
        let mut current = Vec::with_capacity(pending.len());
        for manifest in pending {
            if !clustered {
                current.push(manifest);
                continue;
            }
            let app = actions::app_id(name, manifest.partition);
            let followed = table
                .snapshot()?
                .transaction_version(table.log_store().as_ref(), app)
                .await?
                .and_then(|v| u64::try_from(v).ok());
            if followed.is_some_and(|v| v > manifest.version) {
                self.committed
                    .lock()
                    .remove(&(name.to_string(), manifest.partition));
                continue;
            }
            current.push(manifest);
        }
        let pending = current;
        let version = self.commit_difference(name, table, &pending).await?;
        self.tables
            .versions
            .lock()
            .insert(name.to_string(), version);
        {
            let mut published = self.tables.published.lock();
            for m in &pending {
                published.insert((name.to_string(), m.partition), m.version);
            }
        }
        self.release_published(name);
        self.report_publish_lag(name, &manifests);
        metrics::gauge!("strata_table_version", "topic" => name.to_string()).set(version as f64);
        Ok(())
    }

    /// Commits what the table lacks or has too much of for `pending`'s
    /// manifests, with their progress; returns the table's version after.
    async fn commit_difference(
        &self,
        name: &str,
        table: &mut DeltaTable,
        pending: &[&Arc<Manifest>],
    ) -> Result<u64> {
        let now = strata_broker::timestamp::now_ms();
        let mut listed: HashMap<u32, HashMap<String, i64>> = HashMap::new();
        for file in table.snapshot()?.log_data() {
            let path = file.path().into_owned();
            if let Some(partition) = actions::partition_of(&path) {
                listed
                    .entry(partition)
                    .or_default()
                    .insert(path, file.size());
            }
        }
        let (mut adds, mut removes, mut progress) = (Vec::new(), Vec::new(), Vec::new());
        // Whether any add brings new records, any remove drops records.
        let (mut changes, mut deletes) = (false, false);
        for manifest in pending {
            let files: HashMap<&str, &ColdFile> = manifest
                .files
                .iter()
                .map(|f| (actions::relative_path(&self.cold.root, name, &f.path), f))
                .collect();
            let in_table = listed.remove(&manifest.partition).unwrap_or_default();
            let added: Vec<(&str, &ColdFile)> = files
                .iter()
                .filter(|(path, _)| !in_table.contains_key(**path))
                .map(|(path, file)| (*path, *file))
                .collect();
            let removed: Vec<(&str, i64)> = in_table
                .iter()
                .filter(|(path, _)| !files.contains_key(path.as_str()))
                .map(|(path, size)| (path.as_str(), *size))
                .collect();
            // Files that only rearrange records (compaction) are no change
            // of data: streaming readers of the table skip them.
            let added_ranges: Vec<(u64, u64)> = added
                .iter()
                .map(|(_, f)| (f.first_offset, f.last_offset))
                .collect();
            let removed_ranges: Vec<(u64, u64)> = removed
                .iter()
                .filter_map(|(path, _)| actions::offsets_of(path))
                .collect();
            for (path, file) in added {
                let change =
                    !actions::covered((file.first_offset, file.last_offset), &removed_ranges);
                changes |= change;
                adds.push(actions::add(path, manifest.partition, file, now, change));
            }
            for (path, size) in removed {
                let change = !actions::offsets_of(path)
                    .is_some_and(|range| actions::covered(range, &added_ranges));
                deletes |= change;
                removes.push(actions::remove(path, size, now, change));
            }
            progress.push(actions::progress(
                name,
                manifest.partition,
                manifest.version,
                now,
            ));
        }
        let version = table.version().unwrap_or_default();
        if adds.is_empty() && removes.is_empty() {
            // Already there (a publish redone after a crash): committing
            // only the progress would grow the log for nothing.
            return Ok(version);
        }
        let operation = if deletes {
            DeltaOperation::Delete { predicate: None }
        } else if changes {
            DeltaOperation::Write {
                mode: SaveMode::Append,
                partition_by: None,
                predicate: None,
            }
        } else {
            self.housekeeping()
        };
        let (added, removed) = (adds.len(), removes.len());
        adds.append(&mut removes);
        let properties = progress
            .into_iter()
            .fold(CommitProperties::default(), |p, txn| {
                p.with_application_transaction(txn)
            });
        let committed = CommitBuilder::from(properties)
            .with_actions(adds)
            .build(Some(table.snapshot()?), table.log_store(), operation)
            .await?;
        self.crash_point(crate::facade::CrashPoint::AfterTableCommit);
        table.state = Some(committed.snapshot());
        self.make_commit_durable(name, committed.version()).await?;
        if removed > 0 {
            self.tables.schedule_tidy(
                name,
                now,
                actions::retention(self.config.object_delete_grace),
            );
        }
        if !changes && !deletes {
            // A compaction: the checkpoint a reader starts from lists the
            // merged files (and the small ones' removes) instead of
            // hundreds of adds with their statistics. Only an
            // optimisation: a failure leaves readers the commits.
            match checkpoints::create_checkpoint(table, None).await {
                Ok(()) => {
                    metrics::counter!("strata_table_checkpoints_total", "topic" => name.to_string())
                        .increment(1)
                }
                Err(error) => tracing::warn!(topic = name, %error,
                    "could not write a checkpoint of the table after compaction"),
            }
        }
        self.make_checkpoint_durable(name, committed.version())
            .await?;
        let label = || name.to_string();
        metrics::counter!("strata_table_commits_total", "topic" => label()).increment(1);
        metrics::counter!("strata_table_files_added_total", "topic" => label())
            .increment(added as u64);
        metrics::counter!("strata_table_files_removed_total", "topic" => label())
            .increment(removed as u64);
        tracing::debug!(
            topic = name,
            version = committed.version(),
            added,
            removed,
            "published to the table"
        );
        Ok(committed.version())
    }

    /// Writes a checkpoint of `topic`'s table now that tombstones have
    /// expired (see the module's doc). Only an optimisation: a failure is
    /// logged, and the checkpoint is tried again at the next publish.
    async fn tidy_table(&self, topic: &Arc<Topic>) {
        let name = topic.name();
        let now = strata_broker::timestamp::now_ms();
        let mut slot = self.hold_table(name).await;
        if self.is_deleting(topic) {
            return;
        }
        let result = async {
            let table = match slot.as_mut() {
                Some(table) => {
                    table.update_incremental(None).await?;
                    table
                }
                None => slot.insert(self.load_or_create_table(name).await?),
            };
            if self
                .has_checkpoint(name, table.version().unwrap_or_default())
                .await
            {
                let marker = actions::checkpoint_marker(name, now);
                let committed = CommitBuilder::from(
                    CommitProperties::default().with_application_transaction(marker),
                )
                .build(
                    Some(table.snapshot()?),
                    table.log_store(),
                    self.housekeeping(),
                )
                .await?;
                table.state = Some(committed.snapshot());
                self.make_commit_durable(name, committed.version()).await?;
            }
            checkpoints::create_checkpoint(table, None).await?;
            self.make_checkpoint_durable(name, table.version().unwrap_or_default())
                .await
        }
        .await;
        match result {
            Ok(()) => {
                self.tables.tidied(name, now);
                metrics::counter!("strata_table_checkpoints_total", "topic" => name.to_string())
                    .increment(1);
            }
            Err(error) => tracing::warn!(topic = name, %error,
                "could not write a checkpoint of the table without its expired removes"),
        }
    }

    /// The topic's table, created (empty, with the records' columns, its
    /// file retention the grace period) when there is none yet; one
    /// created with another retention gets this one.
    async fn load_or_create_table(&self, name: &str) -> Result<DeltaTable> {
        let grace = self.config.object_delete_grace;
        if let Some(table) = self.load_table(name).await? {
            if table
                .snapshot()?
                .table_config()
                .deleted_file_retention_duration
                == Some(actions::retention(grace))
            {
                return Ok(table);
            }
            let updated = table
                .set_tbl_properties()
                .with_properties(HashMap::from([(
                    actions::RETENTION_PROPERTY.to_string(),
                    actions::retention_interval(grace),
                )]))
                .await?;
            self.make_commit_durable(name, updated.version().unwrap_or_default())
                .await?;
            return Ok(updated);
        }
        // Another node may create it at the same moment: the loser's
        // conditional put fails, and its next publish loads the table.
        let created = CreateBuilder::new()
            .with_log_store(self.table_handle(name)?.log_store())
            .with_table_name(name)
            .with_comment(format!("the cold tier of Strata topic {name}"))
            .with_columns(actions::columns())
            .with_configuration([(
                actions::RETENTION_PROPERTY,
                Some(actions::retention_interval(grace)),
            )])
            .with_save_mode(SaveMode::Ignore)
            .await?;
        self.make_commit_durable(name, created.version().unwrap_or_default())
            .await?;
        tracing::info!(topic = name, "created the topic's Delta table");
        Ok(created)
    }

    /// The topic's table as stored now; `None` when it has none.
    async fn load_table(&self, name: &str) -> Result<Option<DeltaTable>> {
        let mut table = self.table_handle(name)?;
        match table.load().await {
            Ok(()) => Ok(Some(table)),
            Err(DeltaTableError::NotATable(_)) => Ok(None),
            Err(e) => Err(e.into()),
        }
    }

    /// The topic's table, not loaded: through this tier's store, or, on a
    /// local directory, as delta-rs reads local tables (a `file` URL over
    /// the file system's root, so that it sorts the directory's listings).
    fn table_handle(&self, name: &str) -> Result<DeltaTable> {
        let no_location =
            || TieringError::Internal(format!("no table location for topic {name:?}"));
        let (store, url): (Arc<dyn object_store::ObjectStore>, url::Url) = match &self.cold.backend
        {
            Backend::Local { root } => (
                Arc::new(object_store::local::LocalFileSystem::new()),
                url::Url::from_file_path(root.join(name)).map_err(|()| no_location())?,
            ),
            Backend::S3 { .. } | Backend::Memory => (
                self.cold.store.clone(),
                actions::internal_url(&self.cold.root, name).ok_or_else(no_location)?,
            ),
        };
        Ok(DeltaTableBuilder::from_url(url.clone())?
            .with_storage_backend(store, url)
            .build()?)
    }

    /// Makes a table commit durable where the store does not by itself (a
    /// local directory: fsynced with its directory), before the next one
    /// is written: a lost commit below a stored one would break the table.
    async fn make_commit_durable(&self, name: &str, version: u64) -> Result<()> {
        let path = self
            .cold
            .root
            .topic(name)
            .join("_delta_log")
            .join(format!("{version:020}.json"));
        self.cold.make_durable(&path).await
    }

    /// The operation of commits that change no data: compaction, and the
    /// marker of a tidy checkpoint.
    fn housekeeping(&self) -> DeltaOperation {
        DeltaOperation::Optimize {
            predicate: None,
            target_size: i64::try_from(self.config.compact_target_bytes).unwrap_or(i64::MAX),
        }
    }

    fn checkpoint_path(&self, name: &str, version: u64) -> Path {
        let log = self.cold.root.topic(name).join("_delta_log");
        log.join(format!("{version:020}.checkpoint.parquet"))
    }

    /// Whether `version` of the table has a checkpoint.
    async fn has_checkpoint(&self, name: &str, version: u64) -> bool {
        self.cold
            .store
            .head(&self.checkpoint_path(name, version))
            .await
            .is_ok()
    }

    /// Makes the checkpoint of `version` durable on `file://`, when there
    /// is one (delta-rs writes one every 100 versions, and compaction one
    /// after its commit): the checkpoint before `_last_checkpoint`, which
    /// points readers to it.
    async fn make_checkpoint_durable(&self, name: &str, version: u64) -> Result<()> {
        if self
            .cold
            .make_durable_if_present(&self.checkpoint_path(name, version))
            .await?
        {
            let log = self.cold.root.topic(name).join("_delta_log");
            self.cold
                .make_durable_if_present(&log.join("_last_checkpoint"))
                .await?;
        }
        Ok(())
    }

    /// Queues for deletion the dropped objects of `topic` whose partitions
    /// the table now follows.
    fn release_published(&self, topic: &str) {
        let due: Vec<Path> = {
            let published = self.tables.published.lock();
            let mut awaiting = self.tables.awaiting.lock();
            let (due, later): (Vec<_>, Vec<_>) =
                awaiting.drain(..).partition(|(key, version, _)| {
                    key.0 == topic && published.get(key).is_some_and(|p| p >= version)
                });
            *awaiting = later;
            due.into_iter()
                .map(|(_, _, path)| path)
                // Written again since it was dropped (a retried upload of
                // the same offsets): it is live, not garbage.
                .filter(|path| !self.lists(path))
                .collect()
        };
        if !due.is_empty() {
            // The grace period starts now: a reader may have just read the
            // version that still listed them.
            let now = strata_broker::timestamp::now_ms();
            self.pending_deletes
                .lock()
                .extend(due.into_iter().map(|path| (now, path)));
        }
    }

    fn report_publish_lag(&self, topic: &str, manifests: &[Arc<Manifest>]) {
        let published = self.tables.published.lock();
        let behind: u64 = manifests
            .iter()
            .map(|m| {
                let done = published
                    .get(&(topic.to_string(), m.partition))
                    .copied()
                    .unwrap_or(0);
                m.version.saturating_sub(done)
            })
            .sum();
        metrics::gauge!("strata_table_publish_lag_versions", "topic" => topic.to_string())
            .set(behind as f64);
    }

    /// Publishes every topic's table (the background publisher's pass).
    pub async fn publish_all(&self) {
        for topic in self.broker.topics() {
            if let Err(error) = self.publish_table(&topic).await {
                metrics::counter!("strata_table_publish_errors_total", "topic" => topic.name().to_string())
                    .increment(1);
                tracing::warn!(topic = topic.name(), %error, "could not publish the Delta table; will retry");
            }
        }
    }

    /// The files the topic's table lists now, relative to its root, with
    /// their sizes; `None` when it has no table.
    pub async fn table_files(&self, name: &str) -> Result<Option<HashMap<String, i64>>> {
        let Some(table) = self.load_table(name).await? else {
            return Ok(None);
        };
        let files = table
            .snapshot()?
            .log_data()
            .into_iter()
            .map(|f| (f.path().into_owned(), f.size()))
            .collect();
        if let Some(version) = table.version() {
            self.tables
                .versions
                .lock()
                .insert(name.to_string(), version);
        }
        // Not kept as the publisher's table: replacing its slot would
        // leave a publish in progress and a deletion on different locks.
        Ok(Some(files))
    }

    /// The slot of `topic`'s table, locked: waits for a publish in
    /// progress to end and holds further ones off while the guard lives
    /// (a publish holds it through its commit, topic deletion through the
    /// deletion).
    pub(crate) async fn hold_table(
        &self,
        topic: &str,
    ) -> tokio::sync::OwnedMutexGuard<Option<DeltaTable>> {
        let slot = self
            .tables
            .open
            .lock()
            .entry(topic.to_string())
            .or_default()
            .clone();
        slot.lock_owned().await
    }

    /// Locks the offloads of every partition of `topic`, in partition
    /// order (the one order every holder of several takes them in).
    pub(crate) async fn lock_partitions(
        &self,
        topic: &Topic,
    ) -> Vec<tokio::sync::OwnedMutexGuard<()>> {
        let locks: Vec<_> = {
            let mut offloading = self.offloading.lock();
            topic
                .partitions()
                .iter()
                .map(|p| {
                    offloading
                        .entry((topic.name().to_string(), p.id()))
                        .or_default()
                        .clone()
                })
                .collect()
        };
        let mut held = Vec::with_capacity(locks.len());
        for lock in locks {
            held.push(lock.lock_owned().await);
        }
        held
    }
}

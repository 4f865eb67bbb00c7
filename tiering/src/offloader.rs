//! The offloader: sealed segments → Parquet → committed manifest → local
//! retention. One [`Tiering`] per server; it is also the broker's
//! [`ColdTier`], answering reads below a partition's local start offset.
//!
//! Order of effects for every segment, and why a crash at any point is safe:
//! 1. upload the Parquet file (a crash leaves an orphan that no manifest
//!    lists; the retry rewrites the same object);
//! 2. commit the next manifest version (the file now belongs to the cold tier);
//! 3. only then delete local segments that local retention no longer needs.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use parking_lot::Mutex;
use strata_broker::cold::{BoxFuture, ColdRecord, ColdStats, ColdTier};
use strata_broker::{Broker, BrokerError, Partition, Topic};
use tokio::sync::watch;

use crate::cold_read;
use crate::convert::write_segment;
use crate::error::{Result, TieringError};
use crate::lease::Lease;
use crate::manifest::{Manifest, ManifestStore};
use crate::store::ColdStore;
use crate::upload::{FileUpload, UploadJournal};

/// How the offloader runs.
#[derive(Debug, Clone)]
pub struct TieringConfig {
    /// Pause between background offload passes.
    pub interval: Duration,
    /// A sealed segment is offloaded only once it is this old.
    pub offload_after: Duration,
    /// Crash tests only: abort the process at this step of an offload
    /// (`during_upload`: once the first part of a multipart upload is
    /// stored; `after_upload`; `after_commit`), to prove recovery from it.
    pub crash_at: Option<String>,
    /// How long a file dropped by retention stays in the object store, so
    /// that reads which listed it just before can finish; reads pinned
    /// before the drop keep it longer (see [`ColdSnapshot`]).
    pub object_delete_grace: Duration,
}

impl Default for TieringConfig {
    fn default() -> Self {
        Self {
            interval: Duration::from_secs(5),
            offload_after: Duration::ZERO,
            crash_at: None,
            object_delete_grace: Duration::from_secs(60),
        }
    }
}

/// What one offload pass committed.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, serde::Serialize)]
pub struct OffloadSummary {
    pub files: u64,
    pub records: u64,
    pub bytes: u64,
}

impl std::ops::AddAssign for OffloadSummary {
    fn add_assign(&mut self, other: Self) {
        self.files += other.files;
        self.records += other.records;
        self.bytes += other.bytes;
    }
}

type PartitionKey = (String, u32);

/// The cold tier of one server.
#[derive(Debug)]
pub struct Tiering {
    broker: Arc<Broker>,
    lease: Lease,
    cold: ColdStore,
    manifests: ManifestStore,
    config: TieringConfig,
    /// Newest committed manifest per partition.
    committed: Mutex<HashMap<PartitionKey, Arc<Manifest>>>,
    /// Serialises offloads of one partition (background pass and `tiering/run`).
    offloading: Mutex<HashMap<PartitionKey, Arc<tokio::sync::Mutex<()>>>>,
    /// Footers and decoded row windows of recently read cold files.
    cache: cold_read::ReadCache,
    /// Multipart uploads in progress, so a crash's can be aborted.
    uploads: Arc<UploadJournal>,
    /// Topics whose description this process has stored.
    described: Mutex<std::collections::HashSet<String>>,
    /// Topics whose cold data is deleted while their local deletion is
    /// still under way: never offloaded again (a topic re-created under the
    /// same name is another `Topic`, and is offloaded).
    deleting: Mutex<Vec<std::sync::Weak<Topic>>>,
    /// Objects dropped from manifests (with the time they were dropped),
    /// deleted once their grace period ends and no read that may still
    /// use them is running.
    pending_deletes: Mutex<Vec<(i64, object_store::path::Path)>>,
    /// Reads of the cold tier in progress, by start time.
    readers: Arc<Readers>,
}

/// Start times of running cold reads, so that objects a read may use are
/// not deleted under it.
#[derive(Debug, Default)]
struct Readers {
    running: Mutex<std::collections::BTreeMap<u64, i64>>,
    next_id: std::sync::atomic::AtomicU64,
}

impl Readers {
    fn oldest_start(&self) -> Option<i64> {
        self.running.lock().values().min().copied()
    }
}

/// Keeps every object that a manifest listed at the pin's creation from
/// being deleted until the pin is dropped.
#[derive(Debug)]
pub struct ReadPin {
    readers: Arc<Readers>,
    id: u64,
}

impl Drop for ReadPin {
    fn drop(&mut self) {
        self.readers.running.lock().remove(&self.id);
    }
}

/// A partition's cold tier as committed when a read began. Every file it
/// lists stays readable while the snapshot lives, whatever retention does.
#[derive(Debug)]
pub struct ColdSnapshot {
    pub manifest: Arc<Manifest>,
    _pin: ReadPin,
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
        let manifests =
            ManifestStore::new(cold.store.clone(), cold.root.clone(), cold.conditional_put);
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
            cache: cold_read::ReadCache::default(),
            uploads,
            pending_deletes: Mutex::default(),
            readers: Arc::default(),
        });
        tiering.restore_missing_topics().await?;
        for topic in tiering.broker.topics() {
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
                tiering.remove_orphans(&manifest).await?;
                tiering.remember(manifest);
            }
        }
        tracing::info!(store = %tiering.cold.url, "cold tier ready");
        Ok(tiering)
    }

    /// Re-creates, from the store alone, topics that have cold data but no
    /// local directory (a lost or replaced disk): each partition continues
    /// at the cold tier's end offset.
    async fn restore_missing_topics(&self) -> Result<()> {
        for meta in self.manifests.topic_metas().await? {
            if self.broker.topic(&meta.name).is_ok() {
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

    /// Deletes data files of a partition that its manifest does not list:
    /// uploads a crash left uncommitted, and files whose deletion after
    /// retention was still pending when the server stopped. Until then a
    /// glob over the topic's files could see them.
    async fn remove_orphans(&self, manifest: &Manifest) -> Result<()> {
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
                tracing::info!(%path, "removing an orphaned cold file");
                object_store::ObjectStoreExt::delete(self.cold.store.as_ref(), &object.location)
                    .await?;
            }
        }
        Ok(())
    }

    /// Caches `manifest` as the partition's latest, unless a newer version
    /// is cached already (a slow load that read an older version must not
    /// replace what a commit put there meanwhile); returns the one cached.
    fn remember(&self, manifest: Manifest) -> Arc<Manifest> {
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

    async fn manifest(&self, topic: &str, partition: u32) -> Result<Arc<Manifest>> {
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

    /// The partition's cold tier as last committed, pinned for a read (see
    /// [`ColdSnapshot`]).
    pub async fn cold_snapshot(&self, topic: &str, partition: u32) -> Result<ColdSnapshot> {
        // Pin before reading the manifest: an object dropped after this
        // moment may be listed by the manifest read next.
        let id = self
            .readers
            .next_id
            .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        self.readers
            .running
            .lock()
            .insert(id, strata_broker::timestamp::now_ms());
        let pin = ReadPin {
            readers: self.readers.clone(),
            id,
        };
        Ok(ColdSnapshot {
            manifest: self.manifest(topic, partition).await?,
            _pin: pin,
        })
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

    fn cached(&self, topic: &str, partition: u32) -> Option<Arc<Manifest>> {
        self.committed
            .lock()
            .get(&(topic.to_string(), partition))
            .cloned()
    }

    /// Offloads every sealed segment of a topic not yet in the cold tier
    /// (sealing the active segments first when `roll`), and returns when
    /// they are committed.
    pub async fn offload_topic(&self, topic: &str, roll: bool) -> Result<OffloadSummary> {
        let topic = self.broker.topic(topic)?;
        if roll {
            let rolling = topic.clone();
            tokio::task::spawn_blocking(move || {
                rolling
                    .partitions()
                    .iter()
                    .try_for_each(|p| p.roll().map(|_| ()))
            })
            .await
            .map_err(|e| TieringError::Internal(e.to_string()))??;
        }
        let results = self.offload_partitions(&topic).await;
        self.report_lag(&topic);
        let mut summary = OffloadSummary::default();
        for (_, result) in results {
            summary += result?;
        }
        Ok(summary)
    }

    /// Offloads the partitions of a topic, as many at a time as there are
    /// cores (each conversion is one blocking thread of CPU work).
    async fn offload_partitions(&self, topic: &Arc<Topic>) -> Vec<(u32, Result<OffloadSummary>)> {
        use futures::StreamExt;
        let parallel = std::thread::available_parallelism().map_or(1, |n| n.get());
        let partitions: Vec<Arc<Partition>> = topic.partitions().to_vec();
        futures::stream::iter(partitions)
            .map(|p| async move { (p.id(), self.offload_partition(topic, &p).await) })
            .buffer_unordered(parallel)
            .collect()
            .await
    }

    /// One pass over every topic (the background offloader's unit of work).
    pub async fn offload_all(&self) -> OffloadSummary {
        let mut summary = OffloadSummary::default();
        for topic in self.broker.topics() {
            for (partition, result) in self.offload_partitions(&topic).await {
                match result {
                    Ok(s) => summary += s,
                    Err(e) => {
                        metrics::counter!("strata_offload_errors_total", "topic" => topic.name().to_string()).increment(1);
                        tracing::warn!(topic = topic.name(), partition, error = %e, "offload failed; will retry");
                    }
                }
            }
            self.report_lag(&topic);
        }
        summary
    }

    /// Sets the per-topic lag and size gauges: records and bytes sealed on
    /// local disk but not yet committed to the cold tier, and how long ago
    /// the oldest of those segments was sealed (the worst partition).
    fn report_lag(&self, topic: &Topic) {
        let (mut records, mut bytes, mut seconds, mut cold_bytes) = (0u64, 0u64, 0f64, 0u64);
        for p in topic.partitions() {
            let cold_end = self.cached(topic.name(), p.id()).map_or(0, |m| {
                cold_bytes += m.bytes();
                m.end_offset
            });
            let waiting: Vec<_> = p
                .segments()
                .into_iter()
                .filter(|s| s.sealed && s.end_offset > cold_end)
                .collect();
            records += waiting
                .iter()
                .map(|s| s.end_offset - s.base_offset.max(cold_end))
                .sum::<u64>();
            bytes += waiting.iter().map(|s| s.size_bytes).sum::<u64>();
            // A sealed segment's file was last written when it was sealed.
            let oldest = waiting
                .first()
                .and_then(|s| std::fs::metadata(&s.path).ok()?.modified().ok());
            if let Some(age) = oldest.and_then(|t| t.elapsed().ok()) {
                seconds = seconds.max(age.as_secs_f64());
            }
        }
        let label = || topic.name().to_string();
        metrics::gauge!("strata_offload_lag_records", "topic" => label()).set(records as f64);
        metrics::gauge!("strata_offload_lag_bytes", "topic" => label()).set(bytes as f64);
        metrics::gauge!("strata_offload_lag_seconds", "topic" => label()).set(seconds);
        metrics::gauge!("strata_cold_bytes", "topic" => label()).set(cold_bytes as f64);
    }

    async fn offload_partition(
        &self,
        topic: &Arc<Topic>,
        p: &Arc<Partition>,
    ) -> Result<OffloadSummary> {
        let key = (topic.name().to_string(), p.id());
        let lock = self.offloading.lock().entry(key).or_default().clone();
        let _only_one = lock.lock().await;
        if self.is_deleting(topic) {
            return Ok(OffloadSummary::default());
        }
        let mut manifest = self.manifest(topic.name(), p.id()).await?;
        let mut summary = OffloadSummary::default();
        if !self.described.lock().contains(topic.name()) {
            self.manifests.put_topic_meta(topic.meta()).await?;
            self.described.lock().insert(topic.name().to_string());
        }
        for segment in p.segments() {
            if !segment.sealed || segment.end_offset <= manifest.end_offset {
                continue;
            }
            if !self.old_enough(&segment) {
                break;
            }
            if manifest.files.is_empty() && manifest.end_offset < segment.base_offset {
                // Nothing offloaded yet: the cold tier starts where the log does.
                let mut start = (*manifest).clone();
                start.start_offset = segment.base_offset;
                start.end_offset = segment.base_offset;
                manifest = Arc::new(start);
            }
            let path = self.cold.root.data_file(
                topic.name(),
                p.id(),
                segment.base_offset,
                segment.end_offset - 1,
            );
            let crash = self.config.crash_at.as_deref() == Some("during_upload");
            let upload = FileUpload::new(&self.cold, &self.uploads, path.0.clone(), crash);
            let file = write_segment(upload, &path, p.clone(), &segment).await?;
            self.cold.make_durable(&path.0).await?;
            self.crash_point("after_upload");
            let next = manifest.with_file(file.clone())?;
            if let Err(e) = self.commit(&next).await {
                // Whatever happened (a conflict, an outage), forget this
                // view: the next pass reloads the manifest and retries.
                self.committed
                    .lock()
                    .remove(&(topic.name().to_string(), p.id()));
                return Err(e);
            }
            self.crash_point("after_commit");
            manifest = self.remember(next);
            summary += OffloadSummary {
                files: 1,
                records: file.records,
                bytes: file.bytes,
            };
            let label = || topic.name().to_string();
            metrics::counter!("strata_offload_files_total", "topic" => label()).increment(1);
            metrics::counter!("strata_offload_records_total", "topic" => label())
                .increment(file.records);
            metrics::counter!("strata_offload_bytes_total", "topic" => label())
                .increment(file.bytes);
            tracing::debug!(topic = topic.name(), partition = p.id(), file = %file.path, "offloaded segment");
        }
        let manifest = self.apply_total_retention(topic, p, manifest).await?;
        self.apply_local_retention(topic, p, &manifest).await?;
        self.delete_due_objects().await;
        Ok(summary)
    }

    /// `retention_ms`: drops whole cold files whose newest record is older,
    /// manifest first, objects after a grace period (so reads that already
    /// hold the old manifest finish), and local segments below the new start.
    async fn apply_total_retention(
        &self,
        topic: &Topic,
        p: &Arc<Partition>,
        manifest: Arc<Manifest>,
    ) -> Result<Arc<Manifest>> {
        let retention = topic.config().retention_ms;
        if retention < 0 {
            return Ok(manifest);
        }
        let now = strata_broker::timestamp::now_ms();
        let Some((next, expired)) = manifest.without_expired(now.saturating_sub(retention)) else {
            return Ok(manifest);
        };
        self.commit(&next).await?;
        let start_offset = next.start_offset;
        let next = self.remember(next);
        // Stamped once readers can no longer get the old manifest: a read
        // pinned before this moment may still use the dropped files.
        let dropped_at = strata_broker::timestamp::now_ms();
        self.pending_deletes.lock().extend(
            expired
                .into_iter()
                .map(|f| (dropped_at, object_store::path::Path::from(f.path))),
        );
        delete_local_below(p, start_offset).await?;
        tracing::info!(
            topic = topic.name(),
            partition = p.id(),
            start_offset,
            "retention moved the start"
        );
        Ok(next)
    }

    /// Commits the next manifest version while this server holds the lease,
    /// and makes it durable. When this returns `Ok`, the version is the
    /// partition's cold tier.
    async fn commit(&self, next: &Manifest) -> Result<()> {
        self.lease.check().await?;
        self.manifests.commit(next).await?;
        let path = self
            .cold
            .root
            .manifest(&next.topic, next.partition, next.version)
            .0;
        self.cold.make_durable(&path).await
    }

    /// Deletes dropped objects whose grace period has passed and that no
    /// running read can still use (every read began after the drop).
    async fn delete_due_objects(&self) {
        let now = strata_broker::timestamp::now_ms();
        let grace = i64::try_from(self.config.object_delete_grace.as_millis()).unwrap_or(i64::MAX);
        let oldest_read = self.readers.oldest_start().unwrap_or(i64::MAX);
        let due: Vec<object_store::path::Path> = {
            let mut pending = self.pending_deletes.lock();
            let (due, later): (Vec<_>, Vec<_>) = pending.drain(..).partition(|(dropped, _)| {
                dropped.saturating_add(grace) <= now && *dropped < oldest_read
            });
            *pending = later;
            due.into_iter().map(|(_, path)| path).collect()
        };
        for path in due {
            if let Err(e) =
                object_store::ObjectStoreExt::delete(self.cold.store.as_ref(), &path).await
            {
                tracing::warn!(%path, error = %e, "could not delete an expired cold file; it is no longer referenced");
            }
        }
    }

    /// Deletes local segments that are committed to the cold tier and beyond
    /// the topic's `local_retention_bytes` / `local_retention_ms`.
    async fn apply_local_retention(
        &self,
        topic: &Topic,
        p: &Arc<Partition>,
        manifest: &Manifest,
    ) -> Result<()> {
        let config = topic.config();
        let segments = p.segments();
        let mut local_bytes: u64 = segments.iter().map(|s| s.size_bytes).sum();
        let now = strata_broker::timestamp::now_ms();
        let mut delete_below = None;
        for s in segments
            .iter()
            .filter(|s| s.sealed && s.end_offset <= manifest.end_offset)
        {
            let over_bytes = config.local_retention_bytes >= 0
                && local_bytes > config.local_retention_bytes as u64;
            let too_old = config.local_retention_ms >= 0
                && s.max_timestamp
                    .is_some_and(|ts| now.saturating_sub(ts) > config.local_retention_ms);
            if !(over_bytes || too_old) {
                break;
            }
            local_bytes -= s.size_bytes;
            delete_below = Some(s.end_offset);
        }
        if let Some(offset) = delete_below {
            let removed = delete_local_below(p, offset).await?;
            tracing::debug!(
                topic = topic.name(),
                partition = p.id(),
                segments = removed,
                "local retention"
            );
        }
        Ok(())
    }

    /// Whether a sealed segment has waited `offload_after` since it was
    /// sealed (its file's last write).
    fn old_enough(&self, segment: &strata_broker::segment::SegmentInfo) -> bool {
        if self.config.offload_after.is_zero() {
            return true;
        }
        std::fs::metadata(&segment.path)
            .and_then(|m| m.modified())
            .ok()
            .and_then(|t| t.elapsed().ok())
            .is_none_or(|age| age >= self.config.offload_after)
    }

    /// Drops what this process cached of `topic` (objects under `prefix`).
    fn forget_topic(&self, topic: &str, prefix: &str) {
        self.committed.lock().retain(|(t, _), _| t != topic);
        self.described.lock().remove(topic);
        self.cache.forget(prefix);
    }

    /// True while a topic of this name is being deleted (or its deleted
    /// `Topic` is still held by a reader).
    fn deleting_named(&self, name: &str) -> bool {
        self.deleting
            .lock()
            .iter()
            .any(|t| t.upgrade().is_some_and(|t| t.name() == name))
    }

    fn is_deleting(&self, topic: &Arc<Topic>) -> bool {
        let mut deleting = self.deleting.lock();
        deleting.retain(|t| t.strong_count() > 0);
        deleting
            .iter()
            .any(|t| t.upgrade().is_some_and(|t| Arc::ptr_eq(&t, topic)))
    }

    fn crash_point(&self, step: &str) {
        if self.config.crash_at.as_deref() == Some(step) {
            tracing::warn!(step, "crash test: aborting");
            std::process::abort();
        }
    }

    /// Runs offload passes (renewing the lease) every `interval` until
    /// `stopping` turns true, then gives the lease up.
    pub async fn run_background(self: Arc<Self>, mut stopping: watch::Receiver<bool>) {
        // Renewed on its own clock: a pass over a large backlog can take
        // longer than the lease lasts.
        let renewing = tokio::spawn(Self::renew_lease(self.clone(), stopping.clone()));
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
        self.lease.release().await;
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

/// Deletes a partition's local segments below `offset` on a blocking thread
/// (file removal and a directory fsync); returns how many went.
async fn delete_local_below(p: &Arc<Partition>, offset: u64) -> Result<usize> {
    let partition = p.clone();
    let removed = tokio::task::spawn_blocking(move || partition.delete_segments_below(offset))
        .await
        .map_err(|e| TieringError::Internal(format!("local retention failed: {e}")))??;
    Ok(removed.len())
}

/// A tiering failure as the broker's error (mapped to the API's codes by the broker).
pub fn to_broker(e: TieringError) -> BrokerError {
    // Uploads and Parquet reads report store failures wrapped as parquet's
    // `External` errors: the store is just as unavailable then.
    let unavailable = matches!(
        &e,
        TieringError::Store(_)
            | TieringError::Parquet(parquet::errors::ParquetError::External(_))
            | TieringError::Conflict { .. }
    );
    match e {
        TieringError::Broker(e) => e,
        e if unavailable => BrokerError::Unavailable {
            message: format!("the cold tier is unavailable: {e}"),
            retry_after_secs: 5,
        },
        e => BrokerError::Internal(e.to_string()),
    }
}

/// A tiering failure as an API error.
pub(crate) fn to_api(e: TieringError) -> strata_broker::http::ApiError {
    to_broker(e).into()
}

impl ColdTier for Tiering {
    fn stats(&self, topic: &str, partition: u32) -> ColdStats {
        let Some(m) = self.cached(topic, partition) else {
            return ColdStats::default();
        };
        ColdStats {
            files: m.files.len() as u64,
            bytes: m.bytes(),
            start_offset: m.start_offset,
            end_offset: m.end_offset,
            min_timestamp: m.files.iter().map(|f| f.min_timestamp).min(),
            max_timestamp: m.files.iter().map(|f| f.max_timestamp).max(),
        }
    }

    fn read<'a>(
        &'a self,
        topic: &'a str,
        partition: u32,
        from: u64,
        max_records: u64,
        max_bytes: u64,
    ) -> BoxFuture<'a, strata_broker::Result<Vec<ColdRecord>>> {
        Box::pin(async move {
            let snapshot = self
                .cold_snapshot(topic, partition)
                .await
                .map_err(to_broker)?;
            cold_read::read_records(
                &self.cold.store,
                &self.cache,
                snapshot.manifest.files_from(from),
                from,
                max_records,
                max_bytes,
            )
            .await
            .map_err(to_broker)
        })
    }

    fn offset_for_timestamp<'a>(
        &'a self,
        topic: &'a str,
        partition: u32,
        target: i64,
    ) -> BoxFuture<'a, strata_broker::Result<Option<(u64, i64)>>> {
        Box::pin(async move {
            let snapshot = self
                .cold_snapshot(topic, partition)
                .await
                .map_err(to_broker)?;
            let files = &snapshot.manifest.files;
            cold_read::offset_for_timestamp(&self.cold.store, &self.cache, files, target)
                .await
                .map_err(to_broker)
        })
    }

    fn delete_topic<'a>(&'a self, topic: &'a str) -> BoxFuture<'a, strata_broker::Result<()>> {
        Box::pin(async move {
            let mut mark = DeletionMark::new(self, topic);
            // Let offloads already running finish (their commits would
            // otherwise recreate objects after the deletion), and hold
            // every partition's offload lock while deleting.
            let locks: Vec<_> = self
                .offloading
                .lock()
                .iter()
                .filter(|((t, _), _)| t == topic)
                .map(|(_, lock)| lock.clone())
                .collect();
            let mut held = Vec::with_capacity(locks.len());
            for lock in &locks {
                held.push(lock.lock().await);
            }
            let prefix = format!("{}/", self.cold.root.topic(topic));
            // Its objects go with the topic; a queued deletion could
            // otherwise hit a re-created topic's file of the same name.
            self.pending_deletes
                .lock()
                .retain(|(_, path)| !path.as_ref().starts_with(&prefix));
            self.forget_topic(topic, &prefix);
            self.manifests
                .delete_topic(topic)
                .await
                .map_err(to_broker)?;
            // Reads that ran during the deletion may have cached what it removed.
            self.forget_topic(topic, &prefix);
            mark.done = true;
            Ok(())
        })
    }
}

/// Marks a topic as being deleted, so it is not offloaded again nor its
/// manifests cached; a deletion that fails or is abandoned (its request
/// dropped) unmarks it, so the topic, still there, is offloaded as before.
struct DeletionMark<'a> {
    tiering: &'a Tiering,
    topic: Option<std::sync::Weak<Topic>>,
    done: bool,
}

impl<'a> DeletionMark<'a> {
    fn new(tiering: &'a Tiering, name: &str) -> Self {
        let topic = tiering.broker.topic(name).ok().map(|t| Arc::downgrade(&t));
        if let Some(topic) = &topic {
            tiering.deleting.lock().push(topic.clone());
        }
        Self {
            tiering,
            topic,
            done: false,
        }
    }
}

impl Drop for DeletionMark<'_> {
    fn drop(&mut self) {
        if let (false, Some(topic)) = (self.done, &self.topic) {
            self.tiering
                .deleting
                .lock()
                .retain(|t| !std::sync::Weak::ptr_eq(t, topic));
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

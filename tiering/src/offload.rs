//! Offload passes: sealed segments → Parquet → committed manifest.
//!
//! Order of effects for every segment, and why a crash at any point is safe:
//! 1. upload the Parquet file (a crash leaves an orphan that no manifest
//!    lists; the retry rewrites the same object);
//! 2. commit the next manifest version (the file now belongs to the cold tier);
//! 3. only then delete local segments that local retention no longer needs
//!    (`retention`).
//!
//! Partitions of a topic are offloaded side by side; one partition's
//! offloads (background pass and `tiering/run`) are serialised by its lock.

use std::sync::Arc;

use strata_broker::{Partition, Topic};

use crate::error::{Result, TieringError};
use crate::facade::CrashPoint;
use crate::facade::Tiering;
use crate::manifest::Manifest;
use crate::parquet_writer::write_segment;
use crate::upload::FileUpload;

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

impl Tiering {
    /// Offloads every sealed segment of a topic not yet in the cold tier
    /// (sealing the active segments first when `roll`), and returns when
    /// they are committed, and published to the topic's table.
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
        self.publish_table(&topic).await?;
        Ok(summary)
    }

    /// Offloads the partitions of a topic, as many at a time as there are
    /// cores (each conversion is one blocking thread of CPU work).
    pub(crate) async fn offload_partitions(
        &self,
        topic: &Arc<Topic>,
    ) -> Vec<(u32, Result<OffloadSummary>)> {
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
    pub(crate) fn report_lag(&self, topic: &Topic) {
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

    pub(crate) async fn offload_partition(
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
        if !self.offloads(topic.name(), p.id()) {
            self.follow_cold_tier(topic, p).await?;
            return Ok(OffloadSummary::default());
        }
        let mut manifest = self.manifest(topic.name(), p.id()).await?;
        let mut summary = OffloadSummary::default();
        // Once per topic and process, by one partition while the others
        // wait: two writes of the same object at once raced on the local
        // store (one's fsync found the file replaced under it).
        let described = self
            .described
            .lock()
            .entry(topic.name().to_string())
            .or_default()
            .clone();
        described
            .get_or_try_init(|| self.manifests.put_topic_meta(topic.meta(), &self.owner))
            .await?;
        // Space management: a nearly full data disk cannot wait for a segment
        // to fill or age, nor keep local copies of what is cold already.
        let space = self.broker.disk_space();
        let pressure = space.is_some_and(|space| space.under_pressure());
        if space.is_some_and(|space| space.is_critical()) {
            let partition = p.clone();
            match tokio::task::spawn_blocking(move || partition.roll()).await {
                Ok(Ok(_)) => {}
                Ok(Err(error)) => {
                    tracing::debug!(topic = topic.name(), partition = p.id(), %error, "could not roll under disk pressure");
                }
                Err(error) => return Err(TieringError::Internal(error.to_string())),
            }
        }
        for segment in p.segments() {
            if !segment.sealed || segment.end_offset <= manifest.end_offset {
                continue;
            }
            if !pressure && !self.old_enough(&segment) {
                break;
            }
            if segment.end_offset > p.end_offset() {
                // Not committed yet (a replicated partition's followers
                // have not all got it): it could still be truncated.
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
            let crash = self.config.crash_at == Some(CrashPoint::DuringUpload);
            let upload = FileUpload::new(&self.cold, &self.uploads, path.0.clone(), crash);
            let file = write_segment(upload, &path, p.clone(), &segment).await?;
            self.cold.make_durable(&path.0).await?;
            self.crash_point(CrashPoint::AfterUpload);
            let next = manifest.with_file(file.clone())?;
            if let Err(e) = self.commit(&next).await {
                // Whatever happened (a conflict, an outage), forget this
                // view: the next pass reloads the manifest and retries.
                self.committed
                    .lock()
                    .remove(&(topic.name().to_string(), p.id()));
                return Err(e);
            }
            self.crash_point(CrashPoint::AfterCommit);
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
        self.apply_local_retention(topic, p, &manifest, pressure)
            .await?;
        self.delete_due_objects().await;
        Ok(summary)
    }

    /// Commits the next manifest version while this server holds the lease,
    /// and makes it durable. When this returns `Ok`, the version is the
    /// partition's cold tier.
    pub(crate) async fn commit(&self, next: &Manifest) -> Result<()> {
        self.lease.check().await?;
        self.manifests.commit(next).await
    }

    /// Whether a sealed segment has waited `offload_after` since it was
    /// sealed (its file's last write).
    pub(crate) fn old_enough(&self, segment: &strata_broker::segment::SegmentInfo) -> bool {
        if self.config.offload_after.is_zero() {
            return true;
        }
        std::fs::metadata(&segment.path)
            .and_then(|m| m.modified())
            .ok()
            .and_then(|t| t.elapsed().ok())
            .is_none_or(|age| age >= self.config.offload_after)
    }

    pub(crate) fn crash_point(&self, step: CrashPoint) {
        if self.config.crash_at == Some(step) {
            tracing::warn!(?step, "crash test: aborting");
            std::process::abort();
        }
    }
}

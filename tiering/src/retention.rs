//! Retention: total retention (`retention_ms`) drops whole cold files from
//! the manifest; local retention deletes local segments, but only those
//! already committed to the cold tier.

use std::sync::Arc;

use strata_broker::{Partition, Topic};

use crate::error::{Result, TieringError};
use crate::facade::Tiering;
use crate::manifest::Manifest;

impl Tiering {
    /// `retention_ms`: drops whole cold files whose newest record is older,
    /// manifest first, objects after a grace period (so reads that already
    /// hold the old manifest finish), and local segments below the new start.
    pub(crate) async fn apply_total_retention(
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
        // From now on readers can no longer get the old manifest (a read
        // pinned before may still use the dropped files).
        self.drop_objects(
            topic.name(),
            p.id(),
            next.version,
            expired
                .into_iter()
                .map(|f| object_store::path::Path::from(f.path))
                .collect(),
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

    /// A replica another node offloads (a follower's): drops the local
    /// segments that node has offloaded, as local retention would on it.
    /// The manifest is reread from the store only when some sealed segment
    /// is due, so an idle follower costs the store nothing.
    pub(crate) async fn follow_cold_tier(&self, topic: &Topic, p: &Arc<Partition>) -> Result<()> {
        let pressure = self
            .broker
            .disk_space()
            .is_some_and(|space| space.under_pressure());
        let config = topic.config();
        let segments = p.segments();
        let local_bytes: u64 = segments.iter().map(|s| s.size_bytes).sum();
        let now = strata_broker::timestamp::now_ms();
        let due = segments.iter().filter(|s| s.sealed).any(|s| {
            pressure
                || (config.local_retention_bytes >= 0
                    && local_bytes > config.local_retention_bytes as u64)
                || (config.local_retention_ms >= 0
                    && s.max_timestamp
                        .is_some_and(|ts| now.saturating_sub(ts) > config.local_retention_ms))
        });
        if !due {
            return Ok(());
        }
        let manifest = self.manifests.load(topic.name(), p.id()).await?;
        let manifest = self.remember(manifest);
        self.apply_local_retention(topic, p, &manifest, pressure)
            .await
    }

    /// Deletes local segments that are committed to the cold tier and beyond
    /// the topic's `local_retention_bytes` / `local_retention_ms`, or all of
    /// them when the data disk is under `pressure` (reads of them go to the
    /// cold tier).
    pub(crate) async fn apply_local_retention(
        &self,
        topic: &Topic,
        p: &Arc<Partition>,
        manifest: &Manifest,
        pressure: bool,
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
            if !(over_bytes || too_old || pressure) {
                break;
            }
            local_bytes -= s.size_bytes;
            delete_below = Some(s.end_offset);
        }
        if let Some(offset) = delete_below {
            let removed = delete_local_below(p, offset).await?;
            if pressure {
                tracing::info!(
                    topic = topic.name(),
                    partition = p.id(),
                    segments = removed,
                    "the data disk is nearly full: dropped local copies of offloaded segments"
                );
            } else {
                tracing::debug!(
                    topic = topic.name(),
                    partition = p.id(),
                    segments = removed,
                    "local retention"
                );
            }
        }
        Ok(())
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

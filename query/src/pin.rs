//! Pinning: the one protocol by which every read across both tiers
//! (consume, offset-for-timestamp, describe, range, SQL) sees each offset
//! exactly once.
//!
//! A read pins each partition it covers before it reads anything: first the
//! hot tier (its end offset and the local segments as they are; segments
//! deleted later stay readable through the pin), then the cold tier's
//! manifest (files it lists are not deleted while the pin lives). Offsets
//! below the manifest's end come from Parquet, the rest from local
//! segments. The order is what makes this exact: a segment is deleted only
//! after its file is committed, so a manifest read after the segments were
//! pinned covers everything deleted before; and nothing appended after the
//! pin is seen.

use std::ops::Range;
use std::sync::Arc;

use strata_broker::cursor::PinnedLog;
use strata_broker::partitioner::partition_for_key;
use strata_broker::{Broker, Partition};
use strata_tiering::{ColdStats, PinnedManifest, Tiering};

use crate::error::Result;
use crate::scan::ScanSpec;

/// One partition pinned for a read.
#[derive(Debug)]
pub struct PinnedPartition {
    pub id: u32,
    hot: PinnedLog,
    cold: PinnedManifest,
    /// [`Partition::keys_by_default_partitioner`], read once pinned.
    keys_by_default: Option<u32>,
}

impl PinnedPartition {
    /// Whether the read can skip this partition for `keys`: it holds every
    /// keyed record where the default partitioner puts it, and none of
    /// `keys` hashes here (false for no keys: any key is wanted).
    pub fn holds_none_of(&self, keys: &[String]) -> bool {
        self.keys_by_default.is_some_and(|count| {
            !keys.is_empty()
                && keys
                    .iter()
                    .all(|k| partition_for_key(k.as_bytes(), count) != self.id)
        })
    }

    /// One past the last offset the read can see.
    pub fn end_offset(&self) -> u64 {
        self.hot.end_offset()
    }

    /// The first offset readable from either tier.
    pub fn start_offset(&self) -> u64 {
        let (hot, cold) = (self.hot.start_offset(), self.cold_stats());
        if cold.files > 0 {
            cold.start_offset.min(hot)
        } else {
            hot
        }
    }

    /// The pinned hot tier.
    pub fn hot(&self) -> &PinnedLog {
        &self.hot
    }

    /// The pinned cold tier.
    pub fn cold(&self) -> &PinnedManifest {
        &self.cold
    }

    /// What the pinned cold tier holds.
    pub fn cold_stats(&self) -> ColdStats {
        ColdStats::of(&self.cold.manifest)
    }

    /// Offsets below this come from the cold tier.
    pub fn cold_end(&self) -> u64 {
        let m = &self.cold.manifest;
        if m.files.is_empty() {
            0
        } else {
            m.end_offset.min(self.end_offset())
        }
    }

    /// Cold files that can hold rows of `spec`, and all cold files.
    pub fn cold_files(&self, spec: &ScanSpec) -> (usize, usize) {
        let files = &self.cold.manifest.files;
        let hi = spec.offsets.end.min(self.cold_end());
        let matching = files
            .iter()
            .filter(|f| {
                f.first_offset < hi
                    && f.last_offset >= spec.offsets.start
                    && spec.from_ms.is_none_or(|from| f.max_timestamp >= from)
                    && spec.to_ms.is_none_or(|to| f.min_timestamp < to)
            })
            .count();
        (matching, files.len())
    }

    /// Local segments that can hold rows of `spec`, and all local segments
    /// above the cold tier.
    pub fn hot_segments(&self, spec: &ScanSpec) -> (usize, usize) {
        let range = self.hot_range(spec);
        let all = self
            .hot
            .segments()
            .iter()
            .filter(|s| s.end_offset > self.cold_end())
            .count();
        let matching = self
            .hot
            .segments()
            .iter()
            .filter(|s| {
                s.end_offset > range.start
                    && s.base_offset < range.end
                    && spec
                        .from_ms
                        .is_none_or(|from| s.max_timestamp.is_some_and(|max| max >= from))
                    && spec
                        .to_ms
                        .is_none_or(|to| s.min_timestamp.is_some_and(|min| min < to))
            })
            .count();
        (matching, all)
    }

    pub(crate) fn hot_range(&self, spec: &ScanSpec) -> Range<u64> {
        let start = spec
            .offsets
            .start
            .max(self.cold_end())
            .max(self.hot.start_offset());
        start..spec.offsets.end.min(self.end_offset())
    }
}

/// The partitions of one topic pinned for a read.
#[derive(Debug)]
pub struct PinnedTopic {
    pub topic: String,
    pub partitions: Vec<Arc<PinnedPartition>>,
}

/// Pins `partitions` of `topic` (all when `None`); an unknown partition is
/// `PartitionNotFound`.
pub async fn pin_topic(
    broker: &Broker,
    tiering: &Tiering,
    topic: &str,
    partitions: Option<&[u32]>,
) -> Result<PinnedTopic> {
    let topic = broker.topic(topic)?;
    let all = topic.partitions();
    let chosen: Vec<_> = match partitions {
        None => all.iter().collect(),
        Some(ids) => ids
            .iter()
            .map(|&id| topic.partition(&id.to_string()))
            .collect::<strata_broker::Result<_>>()?,
    };
    let mut pinned = Vec::with_capacity(chosen.len());
    for p in chosen {
        pinned.push(Arc::new(pin_partition(tiering, topic.name(), p).await?));
    }
    Ok(PinnedTopic {
        topic: topic.name().to_string(),
        partitions: pinned,
    })
}

/// Pins one partition of `topic` (see the module doc).
pub async fn pin_partition(
    tiering: &Tiering,
    topic: &str,
    partition: &Partition,
) -> Result<PinnedPartition> {
    // Hot first, then cold: see the module doc.
    let hot = partition.pin();
    let cold = tiering.pin_manifest(topic, partition.id()).await?;
    // After pinning: the mark goes away before a record that breaks it
    // is appended (see its contract).
    let keys_by_default = partition.keys_by_default_partitioner();
    Ok(PinnedPartition {
        id: partition.id(),
        hot,
        cold,
        keys_by_default,
    })
}

//! A partition's cold tier as the server's reads see it: what it holds
//! ([`ColdStats`]), its records from an offset on, and the first offset at
//! or after a time. The server joins these with the hot tier's answers.

use strata_broker::batch::record_size;

use crate::cold_read;
use crate::error::Result;
use crate::facade::Tiering;
use crate::manifest::Manifest;
use crate::pins::PinnedManifest;

/// One partition's cold tier at a moment.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct ColdStats {
    pub files: u64,
    pub bytes: u64,
    /// First offset still in the cold tier (meaningful when `files > 0`).
    pub start_offset: u64,
    /// One past the last offset committed to the cold tier (0 when none).
    pub end_offset: u64,
    pub min_timestamp: Option<i64>,
    pub max_timestamp: Option<i64>,
}

/// A record read back from the cold tier.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ColdRecord {
    pub offset: u64,
    pub timestamp: i64,
    pub key: Option<String>,
    /// The record's JSON text.
    pub value: String,
    pub headers: Vec<(String, String)>,
}

impl ColdStats {
    /// What a manifest holds.
    pub fn of(m: &Manifest) -> Self {
        Self {
            files: m.files.len() as u64,
            bytes: m.bytes(),
            start_offset: m.start_offset,
            end_offset: m.end_offset,
            min_timestamp: m.files.iter().map(|f| f.min_timestamp).min(),
            max_timestamp: m.files.iter().map(|f| f.max_timestamp).max(),
        }
    }
}

impl ColdRecord {
    /// The record's size as every budget counts it (the hot tier's rule).
    pub fn data_len(&self) -> usize {
        let headers: usize = self.headers.iter().map(|(n, v)| n.len() + v.len()).sum();
        record_size(
            self.key.as_ref().map_or(0, String::len),
            self.value.len(),
            headers,
        )
    }
}

impl Tiering {
    /// The partition's cold tier as last committed (no I/O).
    pub fn cold_stats(&self, topic: &str, partition: u32) -> ColdStats {
        self.cached(topic, partition)
            .map_or_else(ColdStats::default, |m| ColdStats::of(&m))
    }

    /// Records of a pinned manifest from `from` on, in offset order, up to
    /// `max_records` or about `max_bytes` ([`ColdRecord::data_len`]; at
    /// least one record when any exists), and never past its end.
    pub async fn read_pinned_records(
        &self,
        pinned: &PinnedManifest,
        from: u64,
        max_records: u64,
        max_bytes: u64,
    ) -> Result<Vec<ColdRecord>> {
        cold_read::read_records(
            &self.cold.store,
            &self.cache,
            pinned.manifest.files_from(from),
            from,
            max_records,
            max_bytes,
        )
        .await
    }

    /// The earliest record of a pinned manifest with `timestamp >= target`,
    /// as (offset, timestamp).
    pub async fn pinned_offset_for_timestamp(
        &self,
        pinned: &PinnedManifest,
        target: i64,
    ) -> Result<Option<(u64, i64)>> {
        let files = &pinned.manifest.files;
        cold_read::offset_for_timestamp(&self.cold.store, &self.cache, files, target).await
    }
}

//! The hot tier's view of a cold tier: what lies below a partition's local
//! start offset. The broker knows nothing of object stores; the tiering
//! crate implements [`ColdTier`] and the HTTP routes consult it, so that
//! offloaded offsets are read back invisibly to the caller.

use std::future::Future;
use std::pin::Pin;

use crate::error::Result;

/// A boxed, sendable future (keeps the trait object-safe without extra crates).
pub type BoxFuture<'a, T> = Pin<Box<dyn Future<Output = T> + Send + 'a>>;

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

impl ColdRecord {
    /// Bytes of the record's key, value and headers: what a consume's
    /// `max_bytes` budget counts.
    pub fn data_len(&self) -> usize {
        let headers: usize = self.headers.iter().map(|(n, v)| n.len() + v.len()).sum();
        self.key.as_ref().map_or(0, String::len) + self.value.len() + headers
    }
}

/// What the broker asks of a cold tier.
pub trait ColdTier: Send + Sync + 'static {
    /// The partition's cold tier as last committed (no I/O).
    fn stats(&self, topic: &str, partition: u32) -> ColdStats;

    /// Records from `from` on, in offset order, up to `max_records` or
    /// about `max_bytes` (at least one record when any exists), and never
    /// past the cold tier's end.
    fn read<'a>(
        &'a self,
        topic: &'a str,
        partition: u32,
        from: u64,
        max_records: u64,
        max_bytes: u64,
    ) -> BoxFuture<'a, Result<Vec<ColdRecord>>>;

    /// The earliest cold record with `timestamp >= target`, as (offset, timestamp).
    fn offset_for_timestamp<'a>(
        &'a self,
        topic: &'a str,
        partition: u32,
        target: i64,
    ) -> BoxFuture<'a, Result<Option<(u64, i64)>>>;

    /// Removes every cold file and manifest of a deleted topic.
    fn delete_topic<'a>(&'a self, topic: &'a str) -> BoxFuture<'a, Result<()>>;
}

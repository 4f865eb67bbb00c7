//! Sparse per-segment indexes, like Kafka's `.index` and `.timeindex`.
//!
//! The offset index maps a record offset (relative to the segment's base) to
//! the file position of the batch holding it. The time index maps a timestamp
//! to the first offset worth scanning: entry `(t, rel)` promises that every
//! record before `base + rel` has a timestamp `<= t`, so timestamps may arrive
//! out of order and a lookup still finds the earliest record at or after a
//! given time.
//!
//! File formats (little-endian):
//! - `.index`: entries of `relative_offset u32 | position u32`.
//! - `.timeindex`: header `b"STI1" | reserved u32 | min_timestamp i64`, then
//!   entries of `max_timestamp_before i64 | relative_offset u32`. Sealing
//!   adds `(max timestamp of the segment, record count)` unless an earlier
//!   entry already holds that maximum, so a sealed segment's last entry
//!   always carries its max timestamp.

/// Bytes of one `.index` entry.
pub const OFFSET_ENTRY_LEN: usize = 8;
/// Bytes of one `.timeindex` entry.
pub const TIME_ENTRY_LEN: usize = 12;
const TIME_HEADER_LEN: usize = 16;
const TIME_MAGIC: &[u8; 4] = b"STI1";

/// Offset index: (relative offset, file position) of sampled batch starts.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct OffsetIndex {
    entries: Vec<(u32, u32)>,
}

impl OffsetIndex {
    /// Adds an entry; offsets and positions must grow.
    pub fn push(&mut self, relative_offset: u32, position: u32) {
        debug_assert!(
            self.entries
                .last()
                .is_none_or(|&(r, p)| r < relative_offset && p < position)
        );
        self.entries.push((relative_offset, position));
    }

    /// The last entry at or before `relative_offset`: where to start scanning.
    pub fn lookup(&self, relative_offset: u32) -> Option<(u32, u32)> {
        let after = self.entries.partition_point(|&(r, _)| r <= relative_offset);
        after.checked_sub(1).map(|i| self.entries[i])
    }

    /// The last entry.
    pub fn last(&self) -> Option<(u32, u32)> {
        self.entries.last().copied()
    }

    /// Number of entries.
    pub fn len(&self) -> usize {
        self.entries.len()
    }

    /// True when there is no entry.
    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    /// The `.index` file bytes.
    pub fn encode(&self) -> Vec<u8> {
        let mut out = Vec::with_capacity(self.entries.len() * OFFSET_ENTRY_LEN);
        for &(r, p) in &self.entries {
            out.extend_from_slice(&r.to_le_bytes());
            out.extend_from_slice(&p.to_le_bytes());
        }
        out
    }

    /// Parses and sanity-checks a `.index` file of a segment `segment_len`
    /// bytes long; `None` means the index must be rebuilt from the log.
    pub fn decode(bytes: &[u8], segment_len: u64) -> Option<Self> {
        if !bytes.len().is_multiple_of(OFFSET_ENTRY_LEN) || bytes.is_empty() {
            return None;
        }
        let mut index = Self::default();
        for chunk in bytes.chunks_exact(OFFSET_ENTRY_LEN) {
            let r = u32::from_le_bytes(chunk[0..4].try_into().ok()?);
            let p = u32::from_le_bytes(chunk[4..8].try_into().ok()?);
            let grows = index
                .entries
                .last()
                .is_none_or(|&(lr, lp)| lr < r && lp < p);
            if !grows || u64::from(p) >= segment_len {
                return None;
            }
            index.entries.push((r, p));
        }
        // The first batch always starts at position 0 with relative offset 0.
        (index.entries[0] == (0, 0)).then_some(index)
    }
}

/// Time index: (max timestamp of all records before `rel`, `rel`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TimeIndex {
    min_timestamp: i64,
    entries: Vec<(i64, u32)>,
}

impl Default for TimeIndex {
    fn default() -> Self {
        Self {
            min_timestamp: i64::MAX,
            entries: Vec::new(),
        }
    }
}

impl TimeIndex {
    /// Records that every record before `relative_offset` has a timestamp
    /// `<= max_before`; kept only when it raises the bound.
    pub fn push(&mut self, max_before: i64, relative_offset: u32) {
        match self.entries.last() {
            Some(&(t, r)) if max_before <= t || relative_offset <= r => {}
            _ if max_before == i64::MIN => {}
            _ => self.entries.push((max_before, relative_offset)),
        }
    }

    /// Lowers the segment's minimum timestamp to `ts` if smaller.
    pub fn observe_min(&mut self, ts: i64) {
        self.min_timestamp = self.min_timestamp.min(ts);
    }

    /// The smallest timestamp seen, if any record was.
    pub fn min_timestamp(&self) -> Option<i64> {
        (self.min_timestamp != i64::MAX).then_some(self.min_timestamp)
    }

    /// The largest bound recorded (for a sealed segment: its max timestamp).
    pub fn last(&self) -> Option<(i64, u32)> {
        self.entries.last().copied()
    }

    /// The relative offset from which to scan for the first record with
    /// `timestamp >= target`: every record before it is older than `target`.
    pub fn lookup(&self, target: i64) -> u32 {
        let after = self.entries.partition_point(|&(t, _)| t < target);
        after.checked_sub(1).map_or(0, |i| self.entries[i].1)
    }

    /// The `.timeindex` file bytes.
    pub fn encode(&self) -> Vec<u8> {
        let mut out = Vec::with_capacity(TIME_HEADER_LEN + self.entries.len() * TIME_ENTRY_LEN);
        out.extend_from_slice(TIME_MAGIC);
        out.extend_from_slice(&0u32.to_le_bytes());
        out.extend_from_slice(&self.min_timestamp.to_le_bytes());
        for &(t, r) in &self.entries {
            out.extend_from_slice(&t.to_le_bytes());
            out.extend_from_slice(&r.to_le_bytes());
        }
        out
    }

    /// Parses and sanity-checks a `.timeindex` file; `None` means rebuild.
    pub fn decode(bytes: &[u8]) -> Option<Self> {
        if bytes.len() < TIME_HEADER_LEN
            || &bytes[0..4] != TIME_MAGIC
            || !(bytes.len() - TIME_HEADER_LEN).is_multiple_of(TIME_ENTRY_LEN)
        {
            return None;
        }
        let mut index = Self {
            min_timestamp: i64::from_le_bytes(bytes[8..16].try_into().ok()?),
            entries: Vec::new(),
        };
        for chunk in bytes[TIME_HEADER_LEN..].chunks_exact(TIME_ENTRY_LEN) {
            let t = i64::from_le_bytes(chunk[0..8].try_into().ok()?);
            let r = u32::from_le_bytes(chunk[8..12].try_into().ok()?);
            if index
                .entries
                .last()
                .is_some_and(|&(lt, lr)| lt >= t || lr >= r)
            {
                return None;
            }
            index.entries.push((t, r));
        }
        Some(index)
    }
}

/// Decides which batches get index entries: the first one, then one every
/// `interval_bytes` of log.
#[derive(Debug, Clone)]
pub struct SegmentIndex {
    pub offsets: OffsetIndex,
    pub times: TimeIndex,
    interval_bytes: u64,
    bytes_since_entry: u64,
    max_timestamp: i64,
}

impl SegmentIndex {
    /// An empty index sampling every `interval_bytes`.
    pub fn new(interval_bytes: u32) -> Self {
        Self {
            offsets: OffsetIndex::default(),
            times: TimeIndex::default(),
            interval_bytes: u64::from(interval_bytes.max(1)),
            bytes_since_entry: 0,
            max_timestamp: i64::MIN,
        }
    }

    /// Indexes loaded from files of a sealed segment.
    pub fn loaded(offsets: OffsetIndex, times: TimeIndex, interval_bytes: u32) -> Self {
        let max_timestamp = times.last().map_or(i64::MIN, |(t, _)| t);
        Self {
            offsets,
            times,
            interval_bytes: u64::from(interval_bytes.max(1)),
            bytes_since_entry: 0,
            max_timestamp,
        }
    }

    /// Accounts for a batch appended at `position`.
    pub fn on_batch(
        &mut self,
        relative_offset: u32,
        position: u32,
        len: usize,
        min_ts: i64,
        max_ts: i64,
    ) {
        if self.offsets.is_empty() || self.bytes_since_entry >= self.interval_bytes {
            self.offsets.push(relative_offset, position);
            self.times.push(self.max_timestamp, relative_offset);
            self.bytes_since_entry = 0;
        }
        self.bytes_since_entry += len as u64;
        self.max_timestamp = self.max_timestamp.max(max_ts);
        self.times.observe_min(min_ts);
    }

    /// Largest timestamp of the indexed batches, if any.
    pub fn max_timestamp(&self) -> Option<i64> {
        (self.max_timestamp != i64::MIN).then_some(self.max_timestamp)
    }

    /// Adds the closing time-index entry of a sealed segment of `count` records.
    pub fn seal(&mut self, count: u32) {
        self.times.push(self.max_timestamp, count);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn offset_lookup_finds_the_entry_at_or_before() {
        let mut index = OffsetIndex::default();
        index.push(0, 0);
        index.push(10, 4096);
        index.push(25, 9000);
        assert_eq!(index.lookup(0), Some((0, 0)));
        assert_eq!(index.lookup(9), Some((0, 0)));
        assert_eq!(index.lookup(10), Some((10, 4096)));
        assert_eq!(index.lookup(24), Some((10, 4096)));
        assert_eq!(index.lookup(1000), Some((25, 9000)));
        let decoded = OffsetIndex::decode(&index.encode(), 10_000).unwrap();
        assert_eq!(decoded, index);
    }

    #[test]
    fn damaged_offset_index_is_refused() {
        let mut index = OffsetIndex::default();
        index.push(0, 0);
        index.push(10, 4096);
        let bytes = index.encode();
        assert!(OffsetIndex::decode(&bytes[..bytes.len() - 1], 10_000).is_none());
        assert!(
            OffsetIndex::decode(&bytes, 4096).is_none(),
            "position past the end"
        );
        let mut swapped = bytes.clone();
        swapped[8..12].copy_from_slice(&0u32.to_le_bytes());
        assert!(
            OffsetIndex::decode(&swapped, 10_000).is_none(),
            "offsets must grow"
        );
        assert!(OffsetIndex::decode(&[], 10).is_none());
    }

    #[test]
    fn time_lookup_handles_out_of_order_timestamps() {
        // Batches (rel, ts range): 0:[100,500] 10:[50,60] 20:[700,800] 30:[10,20]
        let mut index = SegmentIndex::new(1);
        index.on_batch(0, 0, 10, 100, 500);
        index.on_batch(10, 10, 10, 50, 60);
        index.on_batch(20, 20, 10, 700, 800);
        index.on_batch(30, 30, 10, 10, 20);
        index.seal(40);
        let t = &index.times;
        // Anything <= 500 may be in the first batch.
        assert_eq!(t.lookup(50), 0);
        assert_eq!(t.lookup(500), 0);
        // Records before rel 10 are all <= 500, so a search for 501 starts there.
        assert_eq!(t.lookup(501), 10);
        assert_eq!(t.lookup(800), 10);
        // Records before rel 30 are all <= 800.
        assert_eq!(t.lookup(801), 30);
        assert_eq!(t.last(), Some((800, 30)));
        assert_eq!(t.min_timestamp(), Some(10));
        assert_eq!(index.max_timestamp(), Some(800));
        assert_eq!(TimeIndex::decode(&t.encode()).unwrap(), *t);
    }

    #[test]
    fn sparse_sampling_by_bytes() {
        let mut index = SegmentIndex::new(100);
        for i in 0..10u32 {
            index.on_batch(i, i * 40, 40, 0, 0);
        }
        // Entries at batches 0, 3, 6, 9 (every >= 100 bytes).
        assert_eq!(index.offsets.len(), 4);
        assert_eq!(index.offsets.lookup(5), Some((3, 120)));
    }
}

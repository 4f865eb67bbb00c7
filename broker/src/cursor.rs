//! Reading a partition's log in offset order, without blocking its writer.

use std::ops::{ControlFlow, Range};
use std::sync::Arc;

use crate::batch::RecordView;
use crate::batch::{BATCH_HEADER_LEN, BatchView, Peek, peek_batch};
use crate::block_reader::BlockReader;
use crate::error::{BrokerError, Result};
use crate::partition::PartitionStats;
use crate::segment::{Segment, SegmentInfo};

/// A partition's log pinned at one moment: its end offset then, and every
/// segment it had. Segments that retention deletes afterwards stay readable
/// through the snapshot until it is dropped (their files stay open), so a
/// long read sees exactly the records that were there when it began.
#[derive(Debug, Clone)]
pub struct PinnedLog {
    segments: Vec<Arc<Segment>>,
    end_offset: u64,
}

impl PinnedLog {
    pub(crate) fn new(segments: Vec<Arc<Segment>>, end_offset: u64) -> Self {
        Self {
            segments,
            end_offset,
        }
    }

    /// First offset on local disk when the snapshot was taken.
    pub fn start_offset(&self) -> u64 {
        self.segments
            .first()
            .map_or(self.end_offset, |s| s.base_offset())
            .min(self.end_offset)
    }

    /// One past the last record of the snapshot.
    pub fn end_offset(&self) -> u64 {
        self.end_offset
    }

    /// The pinned segments, oldest first.
    pub fn segments(&self) -> Vec<SegmentInfo> {
        self.segments.iter().map(|s| s.info()).collect()
    }

    /// A cursor over `[from, to)`, clamped to the snapshot. `from` below
    /// the snapshot's start is `OffsetOutOfRange`.
    pub fn cursor(&self, from: u64, to: u64) -> Result<LogCursor> {
        let (start, end) = (self.start_offset(), self.end_offset);
        if from < start || from > end {
            return Err(BrokerError::OffsetOutOfRange {
                offset: from,
                start_offset: start,
                end_offset: end,
            });
        }
        let first = self
            .segments
            .partition_point(|s| s.base_offset() <= from)
            .saturating_sub(1);
        Ok(LogCursor::new(
            self.segments[first..].to_vec(),
            from,
            to.min(end),
        ))
    }

    /// Offsets, sizes and time bounds of the snapshot, as partition `id`'s.
    pub fn stats(&self, id: u32) -> PartitionStats {
        let infos = self.segments();
        PartitionStats {
            partition: id,
            start_offset: self.start_offset(),
            end_offset: self.end_offset,
            segments: infos.len(),
            bytes: infos.iter().map(|s| s.size_bytes).sum(),
            min_timestamp: infos.iter().filter_map(|s| s.min_timestamp).min(),
            max_timestamp: infos.iter().filter_map(|s| s.max_timestamp).max(),
        }
    }

    /// The earliest record of the snapshot with `timestamp >= target` as
    /// (offset, timestamp), or `None` when every record is older. Correct
    /// for out-of-order timestamps: the time index bounds where scanning
    /// may start.
    pub fn offset_for_timestamp(&self, target: i64) -> Result<Option<(u64, i64)>> {
        let start = self
            .segments
            .iter()
            .find(|s| s.info().max_timestamp.is_some_and(|max| max >= target))
            .map(|s| s.scan_start_for_time(target).max(self.start_offset()));
        let Some(start) = start else {
            return Ok(None);
        };
        let end = self.end_offset;
        let mut cursor = self.cursor(start.min(end), end)?;
        while let Some(batch) = cursor.next_batch()? {
            if batch.max_timestamp() < target {
                continue;
            }
            for record in batch.records() {
                let record = record.map_err(|e| BrokerError::Internal(e.to_string()))?;
                if record.offset >= start && record.offset < end && record.timestamp >= target {
                    return Ok(Some((record.offset, record.timestamp)));
                }
            }
        }
        Ok(None)
    }

    /// The offset ranges within `offsets` that can hold records with
    /// `from_ms <= timestamp < to_ms`, pruned by each segment's time
    /// bounds and, for the lower bound, its time index. Records inside the
    /// ranges still need filtering: timestamps may be out of order.
    pub fn ranges_for(
        &self,
        offsets: Range<u64>,
        from_ms: Option<i64>,
        to_ms: Option<i64>,
    ) -> Vec<Range<u64>> {
        let mut ranges: Vec<Range<u64>> = Vec::new();
        for segment in &self.segments {
            let info = segment.info();
            let (Some(min_ts), Some(max_ts)) = (info.min_timestamp, info.max_timestamp) else {
                continue;
            };
            if from_ms.is_some_and(|from| max_ts < from) || to_ms.is_some_and(|to| min_ts >= to) {
                continue;
            }
            let mut start = offsets.start.max(info.base_offset);
            if let Some(from) = from_ms {
                start = start.max(segment.scan_start_for_time(from));
            }
            let end = offsets.end.min(info.end_offset).min(self.end_offset);
            if start >= end {
                continue;
            }
            match ranges.last_mut() {
                Some(last) if last.end == start => last.end = end,
                _ => ranges.push(start..end),
            }
        }
        ranges
    }
}

/// Iterates batches of a partition from an offset up to the end offset that
/// was visible when the cursor was made (a snapshot: later appends are not
/// seen). Holds its segments open, so segments deleted underneath it by
/// retention stay readable until the cursor is dropped.
#[derive(Debug)]
pub struct LogCursor {
    segments: Vec<Arc<Segment>>,
    seg: usize,
    pos: u64,
    limit: u64,
    from: u64,
    end_offset: u64,
    reader: BlockReader,
    /// The `O_DIRECT` handle of the current segment, in direct mode.
    direct_file: Option<std::fs::File>,
    /// Where the next batch must start: offsets are dense, and a batch's
    /// base offset is not covered by its CRC, so this is what catches a
    /// damaged one.
    expected: Option<u64>,
}

impl LogCursor {
    /// A cursor over `segments` (ordered, the first one holding `from`).
    pub(crate) fn new(segments: Vec<Arc<Segment>>, from: u64, end_offset: u64) -> Self {
        let (pos, limit) = segments
            .first()
            .map_or((0, 0), |s| (s.position_for(from), s.visible_len()));
        Self {
            segments,
            seg: 0,
            pos,
            limit,
            from,
            end_offset,
            reader: BlockReader::default(),
            direct_file: None,
            expected: None,
        }
    }

    /// Reads around the page cache from now on: for bulk readers (the
    /// offloader) that would otherwise pay a page-cache copy per byte.
    pub fn with_direct_io(mut self) -> Result<Self> {
        self.reader = BlockReader::direct();
        self.direct_file = self
            .segments
            .get(self.seg)
            .map(|s| s.open_direct())
            .transpose()?;
        Ok(self)
    }

    /// One past the last offset this cursor will return.
    pub fn end_offset(&self) -> u64 {
        self.end_offset
    }

    /// The next batch holding records in `[from, end_offset)`, CRC-verified.
    /// Its first records may lie before `from`; callers skip them.
    pub fn next_batch(&mut self) -> Result<Option<BatchView<'_>>> {
        let Some((pos, len)) = self.advance()? else {
            return Ok(None);
        };
        let seg = &self.segments[self.seg];
        let file = self.direct_file.as_ref().unwrap_or(seg.file());
        let bytes = self
            .reader
            .read(file, pos, len, pos + len as u64)
            .map_err(|source| read_error(seg, source))?;
        match peek_batch(bytes) {
            Ok(Peek::Batch(view)) => Ok(Some(view)),
            _ => Err(corrupt(seg, pos, "batch changed while reading")),
        }
    }

    /// Calls `visit` with each record from `from` on, in offset order, until
    /// the end or until `visit` breaks; a record it breaks on is not
    /// consumed. Returns the offset to continue from. The cursor is spent
    /// after a break.
    pub fn for_each_record(
        &mut self,
        mut visit: impl FnMut(&RecordView<'_>) -> ControlFlow<()>,
    ) -> Result<u64> {
        let mut next = self.from;
        let end = self.end_offset;
        while let Some(batch) = self.next_batch()? {
            for record in batch.records() {
                let record = record.map_err(|e| BrokerError::Corrupt {
                    path: "log".into(),
                    message: e.to_string(),
                })?;
                if record.offset < next {
                    continue;
                }
                if record.offset >= end || visit(&record).is_break() {
                    return Ok(next);
                }
                next = record.offset + 1;
            }
        }
        Ok(next.max(self.from))
    }

    /// Finds where the next wanted batch starts and how long it is.
    fn advance(&mut self) -> Result<Option<(u64, usize)>> {
        let mut need = BATCH_HEADER_LEN;
        loop {
            let Some(seg) = self.segments.get(self.seg) else {
                return Ok(None);
            };
            if self.pos >= self.limit {
                self.seg += 1;
                self.pos = 0;
                self.reader.reset();
                if self.direct_file.is_some() {
                    self.direct_file = self
                        .segments
                        .get(self.seg)
                        .map(|s| s.open_direct())
                        .transpose()?;
                }
                self.limit = self.segments.get(self.seg).map_or(0, |s| s.visible_len());
                if let Some(next) = self.segments.get(self.seg) {
                    self.expected = Some(next.base_offset());
                }
                continue;
            }
            let file = self.direct_file.as_ref().unwrap_or(seg.file());
            let bytes = self
                .reader
                .read(file, self.pos, need, self.limit)
                .map_err(|source| read_error(seg, source))?;
            let view = match peek_batch(bytes) {
                Ok(Peek::Batch(view)) => view,
                Ok(Peek::NeedBytes(n)) if self.pos + n as u64 <= self.limit => {
                    need = n;
                    continue;
                }
                Ok(Peek::NeedBytes(_)) => {
                    return Err(corrupt(seg, self.pos, "batch runs past the end"));
                }
                Err(e) => return Err(corrupt(seg, self.pos, &e.to_string())),
            };
            need = BATCH_HEADER_LEN;
            if let Some(expected) = self.expected.filter(|&e| e != view.base_offset()) {
                let found = view.base_offset();
                let message = format!("batch starts at offset {found}, expected {expected}");
                return Err(corrupt(seg, self.pos, &message));
            }
            self.expected = Some(view.next_offset());
            if view.base_offset() >= self.end_offset {
                self.seg = self.segments.len();
                return Ok(None);
            }
            let (pos, len) = (self.pos, view.len());
            self.pos += len as u64;
            if view.next_offset() <= self.from {
                continue;
            }
            view.verify()
                .map_err(|e| corrupt(seg, pos, &e.to_string()))?;
            return Ok(Some((pos, len)));
        }
    }
}

fn read_error(seg: &Segment, source: std::io::Error) -> BrokerError {
    BrokerError::Io {
        context: format!("reading {}", seg.path().display()),
        source,
    }
}

fn corrupt(seg: &Segment, pos: u64, message: &str) -> BrokerError {
    BrokerError::Corrupt {
        path: seg.path().display().to_string(),
        message: format!("at byte {pos}: {message}"),
    }
}

//! Reading offloaded records back from Parquet: by offset (consume below
//! the local start) and by time (offset for a timestamp). Row groups are
//! chosen from the files' statistics, so a read fetches only the row groups
//! (ranged GETs) that can hold what it wants.

// `ParquetObjectReader` is deprecated upstream in favour of hand-written
// `AsyncFileReader`s; it still does exactly what is needed here (ranged GETs,
// footer and page-index loading), so it stays until DataFusion moves on.
#![allow(deprecated)]

use std::collections::VecDeque;
use std::ops::Range;
use std::sync::Arc;

use parking_lot::Mutex;

use arrow_array::RecordBatch;
use arrow_array::cast::AsArray;
use arrow_array::types::{Int64Type, TimestampMillisecondType};
use futures::TryStreamExt;
use object_store::ObjectStore;
use object_store::path::Path;
use parquet::arrow::arrow_reader::{
    ArrowReaderMetadata, ArrowReaderOptions, RowSelection, RowSelector,
};
use parquet::arrow::async_reader::{ParquetObjectReader, ParquetRecordBatchStream};
use parquet::arrow::{ParquetRecordBatchStreamBuilder, ProjectionMask};
use parquet::file::metadata::{ParquetMetaData, RowGroupMetaData};
use parquet::file::page_index::column_index::ColumnIndexMetaData;
use parquet::file::statistics::Statistics;
use strata_broker::cold::ColdRecord;

use crate::convert::RecordColumns;
use crate::error::{Result, TieringError};
use crate::manifest::ColdFile;

/// Rows per batch when reading back.
const READ_BATCH_ROWS: usize = 8192;

/// What recent reads of cold files left behind for the next ones: parsed
/// footers (with page indexes) and decoded windows of rows. A consumer
/// reads the same file request after request; each footer costs ranged GETs
/// to fetch and CPU to decode, and the pages under one request of a few
/// thousand records also hold its neighbours (a page of offsets covers
/// ~128 K rows), so consumed rows are decoded [`WINDOW_ROWS`] at a time and
/// the windows kept, bounded by [`WINDOWS_CACHED_BYTES`].
#[derive(Debug, Default)]
pub struct ReadCache {
    footers: Mutex<VecDeque<(String, ArrowReaderMetadata)>>,
    windows: Mutex<Windows>,
}

/// Footers kept by a [`ReadCache`].
const FOOTERS_CACHED: usize = 64;
/// Most rows of a cold file decoded together for consumers (row groups
/// hold a whole number of them).
pub const WINDOW_ROWS: u64 = 32 * 1024;
/// Decoded bytes a window is sized for: files of large records get windows
/// of fewer rows (a power of two, at least one), so what one consume
/// request decodes stays bounded whatever the records' size.
pub const WINDOW_BYTES: u64 = 8 << 20;
/// Bytes of decoded windows a [`ReadCache`] keeps (least recently used go
/// first): a dozen windows of ~130-byte records, so a dozen consumers
/// reading cold data side by side each keep theirs.
pub const WINDOWS_CACHED_BYTES: usize = 64 << 20;

/// Decoded windows, least recently used first.
#[derive(Debug, Default)]
struct Windows {
    entries: VecDeque<Window>,
    bytes: usize,
}

#[derive(Debug)]
struct Window {
    path: String,
    index: u64,
    batches: Arc<[RecordBatch]>,
    bytes: usize,
}

impl Windows {
    fn get(&mut self, path: &str, index: u64) -> Option<Arc<[RecordBatch]>> {
        let at = self
            .entries
            .iter()
            .position(|w| w.index == index && w.path == path)?;
        let window = self.entries.remove(at)?;
        let batches = window.batches.clone();
        self.entries.push_back(window);
        Some(batches)
    }

    fn insert(&mut self, window: Window) {
        if self.get(&window.path, window.index).is_some() {
            return; // another reader decoded it meanwhile
        }
        self.bytes += window.bytes;
        self.entries.push_back(window);
        while self.bytes > WINDOWS_CACHED_BYTES {
            let Some(old) = self.entries.pop_front() else {
                break;
            };
            self.bytes -= old.bytes;
        }
    }
}

impl ReadCache {
    /// A reader of `file` and its footer, from the cache when there.
    async fn open(
        &self,
        store: &Arc<dyn ObjectStore>,
        file: &ColdFile,
    ) -> Result<(ParquetObjectReader, ArrowReaderMetadata)> {
        let mut reader = ParquetObjectReader::new(store.clone(), Path::from(file.path.as_str()))
            .with_file_size(file.bytes);
        let cached = {
            let entries = self.footers.lock();
            entries
                .iter()
                .find(|(path, _)| *path == file.path)
                .map(|(_, m)| m.clone())
        };
        if let Some(metadata) = cached {
            return Ok((reader, metadata));
        }
        let options = ArrowReaderOptions::new().with_page_index(true);
        let metadata = ArrowReaderMetadata::load_async(&mut reader, options).await?;
        // Reads index columns by position: a file of another shape is refused
        // here rather than read as if it were one of ours.
        if metadata.schema().fields() != crate::convert::schema().fields() {
            return Err(TieringError::CorruptFile {
                path: file.path.clone(),
                message: format!("unexpected columns {:?}", metadata.schema().fields()),
            });
        }
        let mut entries = self.footers.lock();
        entries.push_back((file.path.clone(), metadata.clone()));
        if entries.len() > FOOTERS_CACHED {
            entries.pop_front();
        }
        Ok((reader, metadata))
    }

    /// Rows per window of `file`: [`WINDOW_ROWS`], or fewer so that a
    /// window decodes to about [`WINDOW_BYTES`] (from the footer's
    /// uncompressed sizes).
    async fn window_rows(&self, store: &Arc<dyn ObjectStore>, file: &ColdFile) -> Result<u64> {
        let (_, metadata) = self.open(store, file).await?;
        Ok(window_rows_for(bytes_per_row(metadata.metadata())))
    }

    /// Rows `[index * rows, (index + 1) * rows)` of `file` (fewer in its
    /// last window), decoded, from the cache when there.
    async fn window(
        &self,
        store: &Arc<dyn ObjectStore>,
        file: &ColdFile,
        index: u64,
        window_rows: u64,
    ) -> Result<Arc<[RecordBatch]>> {
        if let Some(batches) = self.windows.lock().get(&file.path, index) {
            return Ok(batches);
        }
        let first = index * window_rows;
        let rows = window_rows.min(file.records.saturating_sub(first)) as usize;
        let (reader, metadata) = self.open(store, file).await?;
        let selection = RowSelection::from(vec![
            RowSelector::skip(first as usize),
            RowSelector::select(rows),
        ]);
        let batches: Vec<RecordBatch> =
            ParquetRecordBatchStreamBuilder::new_with_metadata(reader, metadata)
                .with_row_selection(selection)
                .with_batch_size(rows.max(1))
                .build()?
                .try_collect()
                .await?;
        let batches: Arc<[RecordBatch]> = batches.into();
        self.windows.lock().insert(Window {
            path: file.path.clone(),
            index,
            bytes: batches.iter().map(|b| b.get_array_memory_size()).sum(),
            batches: batches.clone(),
        });
        Ok(batches)
    }

    /// Forgets what was read from files under `prefix` (a deleted topic: a
    /// new topic of the same name writes new files under the same names).
    pub fn forget(&self, prefix: &str) {
        self.footers
            .lock()
            .retain(|(path, _)| !path.starts_with(prefix));
        let mut windows = self.windows.lock();
        windows.entries.retain(|w| !w.path.starts_with(prefix));
        windows.bytes = windows.entries.iter().map(|w| w.bytes).sum();
    }
}

async fn open(
    store: &Arc<dyn ObjectStore>,
    cache: &ReadCache,
    file: &ColdFile,
    pick: impl Fn(&RowGroupMetaData) -> bool,
) -> Result<Option<ParquetRecordBatchStream<ParquetObjectReader>>> {
    let (reader, metadata) = cache.open(store, file).await?;
    let builder = ParquetRecordBatchStreamBuilder::new_with_metadata(reader, metadata);
    let groups: Vec<usize> = builder
        .metadata()
        .row_groups()
        .iter()
        .enumerate()
        .filter(|(_, rg)| pick(rg))
        .map(|(i, _)| i)
        .collect();
    if groups.is_empty() {
        return Ok(None);
    }
    Ok(Some(
        builder
            .with_row_groups(groups)
            .with_batch_size(READ_BATCH_ROWS)
            .build()?,
    ))
}

/// Records from `from` on in `files` (the manifest's files from that
/// offset), up to `max_records` or about `max_bytes`. Offsets are dense
/// and sorted inside a file, so the rows wanted are known by position; they
/// come from the cache's decoded windows (see [`ReadCache`]).
pub async fn read_records(
    store: &Arc<dyn ObjectStore>,
    cache: &ReadCache,
    files: &[ColdFile],
    from: u64,
    max_records: u64,
    max_bytes: u64,
) -> Result<Vec<ColdRecord>> {
    let mut out = Vec::new();
    let mut bytes = 0u64;
    for file in files {
        let mut row = from.saturating_sub(file.first_offset);
        let window_rows = cache.window_rows(store, file).await?;
        while row < file.records {
            let index = row / window_rows;
            let window_end = ((index + 1) * window_rows).min(file.records);
            let mut first = index * window_rows;
            for batch in cache.window(store, file, index, window_rows).await?.iter() {
                let n = batch.num_rows() as u64;
                if row < first + n {
                    let columns = RecordColumns::new(batch)?;
                    for i in (row - first) as usize..n as usize {
                        let record = record_at(&columns, i);
                        let size = record.data_len() as u64;
                        if out.len() as u64 >= max_records
                            || (!out.is_empty() && bytes + size > max_bytes)
                        {
                            return Ok(out);
                        }
                        bytes += size;
                        out.push(record);
                    }
                    row = first + n;
                }
                first += n;
            }
            if row < window_end {
                return Err(TieringError::Internal(format!(
                    "{} holds fewer rows than its manifest entry says",
                    file.path
                )));
            }
        }
        if out.len() as u64 >= max_records {
            break;
        }
    }
    Ok(out)
}

/// Average uncompressed bytes of a row of a file (from its footer).
fn bytes_per_row(meta: &ParquetMetaData) -> u64 {
    let groups = meta.row_groups();
    let rows: u64 = groups.iter().map(|rg| rg.num_rows().max(0) as u64).sum();
    let bytes: u64 = groups
        .iter()
        .map(|rg| rg.total_byte_size().max(0) as u64)
        .sum();
    bytes / rows.max(1)
}

/// Rows per window for rows of `row_bytes` (uncompressed) each: the
/// largest power of two up to [`WINDOW_ROWS`] whose rows fit in
/// [`WINDOW_BYTES`], and at least one.
fn window_rows_for(row_bytes: u64) -> u64 {
    let fit = WINDOW_BYTES / row_bytes.max(1);
    if fit == 0 {
        return 1;
    }
    (1u64 << fit.ilog2()).min(WINDOW_ROWS)
}

/// A stream of record batches decoded from one cold file.
pub type ColdBatchStream = ParquetRecordBatchStream<ParquetObjectReader>;

/// A cold file opened for a scan, with what its statistics pruned.
pub struct OpenedScan {
    pub batches: ColdBatchStream,
    /// Row groups that will be read.
    pub row_groups: usize,
    /// Row groups of the file.
    pub row_groups_total: usize,
    /// Rows selected inside those row groups (before exact filtering).
    pub rows: usize,
}

/// What a scan wants from one cold file.
#[derive(Debug, Clone)]
pub struct FileScan<'a> {
    pub file: &'a ColdFile,
    /// Offsets wanted; rows outside are never decoded.
    pub offsets: Range<u64>,
    /// Wanted timestamps `from_ms <= ts < to_ms`: row groups and pages
    /// whose statistics exclude them are skipped, but rows inside the
    /// pages read still need filtering.
    pub from_ms: Option<i64>,
    pub to_ms: Option<i64>,
    /// Columns of [`crate::convert::schema`] to decode, by index, ascending.
    pub columns: &'a [usize],
    /// Decode `key` and `value` as `Utf8View` ([`crate::convert::view_schema`]).
    pub string_views: bool,
}

/// Column of `timestamp` in every cold file.
const TIMESTAMP_COLUMN: usize = 2;

/// Opens a stream of the rows of `scan.file` that can match `scan`, or
/// `None` when the manifest's ranges rule every row out (a file whose
/// row-group statistics rule every row out opens with no row groups). Offsets are dense inside
/// a file, so the offset range becomes a row range; the time bounds drop
/// row groups by their statistics and pages by the page index.
pub async fn scan_file(
    store: &Arc<dyn ObjectStore>,
    cache: &ReadCache,
    scan: &FileScan<'_>,
    batch_rows: usize,
) -> Result<Option<OpenedScan>> {
    let file = scan.file;
    let lo = scan.offsets.start.max(file.first_offset) - file.first_offset;
    let hi = scan
        .offsets
        .end
        .min(file.last_offset + 1)
        .saturating_sub(file.first_offset);
    if lo >= hi
        || scan.from_ms.is_some_and(|from| file.max_timestamp < from)
        || scan.to_ms.is_some_and(|to| file.min_timestamp >= to)
    {
        return Ok(None);
    }
    let (reader, mut metadata) = cache.open(store, file).await?;
    if scan.string_views {
        let options = ArrowReaderOptions::new().with_schema(crate::convert::view_schema());
        metadata = ArrowReaderMetadata::try_new(metadata.metadata().clone(), options)?;
    }
    let plan = plan_rows(metadata.metadata(), lo..hi, scan.from_ms, scan.to_ms);
    // Batches of large records hold fewer rows, like consume windows.
    let rows_fitting = window_rows_for(bytes_per_row(metadata.metadata()));
    let batch_rows = batch_rows.min(usize::try_from(rows_fitting).unwrap_or(usize::MAX));
    let row_groups_total = metadata.metadata().num_row_groups();
    let (row_groups, rows) = (plan.groups.len(), plan.ranges.iter().map(|r| r.len()).sum());
    let mask = ProjectionMask::roots(
        metadata.metadata().file_metadata().schema_descr(),
        scan.columns.iter().copied(),
    );
    let selection = RowSelection::from_consecutive_ranges(plan.ranges.into_iter(), plan.rows);
    let batches = ParquetRecordBatchStreamBuilder::new_with_metadata(reader, metadata)
        .with_row_groups(plan.groups)
        .with_row_selection(selection)
        .with_projection(mask)
        .with_batch_size(batch_rows)
        .build()?;
    Ok(Some(OpenedScan {
        batches,
        row_groups,
        row_groups_total,
        rows,
    }))
}

/// Row groups to read and the row ranges within them (counted across the
/// chosen groups only, as [`RowSelection`] wants).
#[derive(Debug, Default, PartialEq, Eq)]
struct RowPlan {
    groups: Vec<usize>,
    ranges: Vec<Range<usize>>,
    rows: usize,
}

fn plan_rows(
    meta: &ParquetMetaData,
    wanted: Range<u64>,
    from_ms: Option<i64>,
    to_ms: Option<i64>,
) -> RowPlan {
    let overlaps = |min: Option<i64>, max: Option<i64>| {
        !(from_ms.is_some_and(|from| max.is_some_and(|max| max < from))
            || to_ms.is_some_and(|to| min.is_some_and(|min| min >= to)))
    };
    let mut plan = RowPlan::default();
    let mut group_start = 0u64;
    for (i, rg) in meta.row_groups().iter().enumerate() {
        let rows = rg.num_rows() as u64;
        let group = group_start..group_start + rows;
        group_start += rows;
        let want = wanted.start.max(group.start)..wanted.end.min(group.end);
        if want.is_empty() {
            continue;
        }
        let (min, max) = match rg.column(TIMESTAMP_COLUMN).statistics() {
            Some(Statistics::Int64(s)) => (s.min_opt().copied(), s.max_opt().copied()),
            _ => (None, None),
        };
        if !overlaps(min, max) {
            continue;
        }
        let before = plan.ranges.len();
        for page in page_rows(meta, i, rows, &overlaps) {
            let a = want.start.max(group.start + page.start);
            let b = want.end.min(group.start + page.end);
            if a < b {
                // Counted across the chosen groups only: skipped groups add nothing.
                let chosen = |offset: u64| plan.rows + (offset - group.start) as usize;
                plan.ranges.push(chosen(a)..chosen(b));
            }
        }
        if plan.ranges.len() > before {
            plan.groups.push(i);
            plan.rows += rows as usize;
        }
    }
    plan
}

/// Row ranges (within row group `rg`) of the timestamp pages that can
/// overlap the wanted times; the whole group when there is no page index.
fn page_rows(
    meta: &ParquetMetaData,
    rg: usize,
    rows: u64,
    overlaps: &impl Fn(Option<i64>, Option<i64>) -> bool,
) -> Vec<Range<u64>> {
    let whole: Vec<Range<u64>> = std::iter::once(0..rows).collect();
    let (Some(columns), Some(offsets)) = (meta.column_index(), meta.offset_index()) else {
        return whole;
    };
    let (Some(ColumnIndexMetaData::INT64(index)), Some(pages)) = (
        columns.get(rg).and_then(|c| c.get(TIMESTAMP_COLUMN)),
        offsets.get(rg).and_then(|o| o.get(TIMESTAMP_COLUMN)),
    ) else {
        return whole;
    };
    let locations = pages.page_locations();
    let mut out: Vec<Range<u64>> = Vec::new();
    for (p, location) in locations.iter().enumerate() {
        let start = location.first_row_index as u64;
        let end = locations
            .get(p + 1)
            .map_or(rows, |next| next.first_row_index as u64);
        if !overlaps(index.min_value(p).copied(), index.max_value(p).copied()) {
            continue;
        }
        match out.last_mut() {
            Some(last) if last.end == start => last.end = end,
            _ => out.push(start..end),
        }
    }
    out
}

/// The earliest record with `timestamp >= target` in `files`, as (offset, timestamp).
pub async fn offset_for_timestamp(
    store: &Arc<dyn ObjectStore>,
    cache: &ReadCache,
    files: &[ColdFile],
    target: i64,
) -> Result<Option<(u64, i64)>> {
    for file in files.iter().filter(|f| f.max_timestamp >= target) {
        let pick = |rg: &RowGroupMetaData| match rg.column(2).statistics() {
            Some(Statistics::Int64(s)) => s.max_opt().is_none_or(|&max| max >= target),
            _ => true,
        };
        let Some(mut stream) = open(store, cache, file, pick).await? else {
            continue;
        };
        while let Some(batch) = stream.try_next().await? {
            let offsets = batch.column(1).as_primitive::<Int64Type>();
            let stamps = batch.column(2).as_primitive::<TimestampMillisecondType>();
            if let Some(i) = (0..batch.num_rows()).find(|&i| stamps.value(i) >= target) {
                return Ok(Some((offsets.value(i) as u64, stamps.value(i))));
            }
        }
    }
    Ok(None)
}

/// Row `i` of a cold-file batch as a record.
fn record_at(columns: &RecordColumns<'_>, i: usize) -> ColdRecord {
    ColdRecord {
        offset: columns.offset(i),
        timestamp: columns.timestamp(i),
        key: columns.key(i).map(str::to_string),
        value: columns.value(i).to_string(),
        headers: columns
            .headers(i)
            .map(|(name, value)| (name.to_string(), value.to_string()))
            .collect(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn window(path: &str, index: u64, bytes: usize) -> Window {
        Window {
            path: path.into(),
            index,
            batches: Arc::from(Vec::new()),
            bytes,
        }
    }

    /// Metadata of a file of rows 0..25 (offset and time = row number) in
    /// row groups of 10, with the page index.
    fn three_row_groups() -> ParquetMetaData {
        use arrow_array::{Int32Array, Int64Array};
        use parquet::arrow::ArrowWriter;
        use parquet::file::properties::{EnabledStatistics, WriterProperties};
        let rows: Vec<i64> = (0..25).collect();
        let batch = RecordBatch::try_from_iter([
            ("partition", Arc::new(Int32Array::from(vec![0; 25])) as _),
            ("offset", Arc::new(Int64Array::from(rows.clone())) as _),
            ("timestamp", Arc::new(Int64Array::from(rows)) as _),
        ])
        .unwrap();
        let props = WriterProperties::builder()
            .set_max_row_group_row_count(Some(10))
            .set_statistics_enabled(EnabledStatistics::Page)
            .build();
        let mut file = Vec::new();
        let mut writer = ArrowWriter::try_new(&mut file, batch.schema(), Some(props)).unwrap();
        writer.write(&batch).unwrap();
        writer.close().unwrap();
        let options = ArrowReaderOptions::new().with_page_index(true);
        let meta = ArrowReaderMetadata::load(&bytes::Bytes::from(file), options).unwrap();
        meta.metadata().as_ref().clone()
    }

    #[test]
    fn windows_of_large_records_hold_fewer_rows() {
        assert_eq!(window_rows_for(150), WINDOW_ROWS, "small records: the most");
        assert_eq!(window_rows_for(0), WINDOW_ROWS);
        assert_eq!(window_rows_for(4096), 2048);
        assert_eq!(window_rows_for(5000), 1024, "a power of two that fits");
        assert_eq!(window_rows_for(WINDOW_BYTES), 1);
        assert_eq!(window_rows_for(10 * WINDOW_BYTES), 1, "at least one row");
        for bytes in [1, 100, 777, 4096, 70_000, 1 << 20] {
            let rows = window_rows_for(bytes);
            assert!(rows.is_power_of_two() && rows <= WINDOW_ROWS);
            assert!(rows == 1 || rows * bytes <= WINDOW_BYTES);
        }
    }

    #[test]
    fn row_plans_count_rows_of_the_chosen_groups_only() {
        let meta = three_row_groups();
        assert_eq!(meta.num_row_groups(), 3);
        // Starting in the second group: the first is skipped and counts for nothing.
        let plan = plan_rows(&meta, 15..22, None, None);
        assert_eq!(plan.groups, vec![1, 2]);
        assert_eq!(plan.ranges, vec![5..10, 10..12]);
        assert_eq!(plan.rows, 15);
        // A time range that only the last group can hold.
        let plan = plan_rows(&meta, 0..25, Some(21), Some(23));
        assert_eq!(plan.groups, vec![2]);
        assert_eq!(plan.ranges, vec![0..5]);
        assert_eq!(plan.rows, 5);
    }

    #[test]
    fn windows_evict_the_least_recently_used_beyond_the_byte_budget() {
        let mut windows = Windows::default();
        let third = WINDOWS_CACHED_BYTES / 3;
        windows.insert(window("a", 0, third));
        windows.insert(window("a", 1, third));
        windows.insert(window("b", 0, third));
        assert!(windows.get("a", 0).is_some(), "a/0 now most recently used");
        windows.insert(window("b", 1, third));
        assert!(windows.get("a", 1).is_none(), "least recently used went");
        assert!(windows.get("a", 0).is_some() && windows.get("b", 0).is_some());
        assert!(windows.get("b", 1).is_some());
        assert_eq!(windows.bytes, 3 * third);
        // Inserting a window that is already there changes nothing.
        windows.insert(window("b", 1, third));
        assert_eq!((windows.entries.len(), windows.bytes), (3, 3 * third));
    }
}

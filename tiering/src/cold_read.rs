//! Reading offloaded records back from Parquet: by offset (consume below
//! the local start) and by time (offset for a timestamp). Row groups are
//! chosen from the files' statistics, so a read fetches only the row groups
//! (ranged GETs) that can hold what it wants.

// `ParquetObjectReader` is deprecated upstream in favour of hand-written
// `AsyncFileReader`s; it still does exactly what is needed here (ranged GETs,
// footer and page-index loading), so it stays until DataFusion moves on.
#![allow(deprecated)]

use std::ops::Range;
use std::sync::Arc;

use arrow_array::BooleanArray;
use arrow_array::RecordBatch;
use arrow_array::cast::AsArray;
use arrow_array::types::{Int64Type, TimestampMillisecondType};
use futures::{StreamExt, TryStreamExt};
use object_store::ObjectStore;
use parquet::arrow::arrow_reader::{
    ArrowPredicateFn, ArrowReaderMetadata, ArrowReaderOptions, RowFilter, RowSelection,
};
use parquet::arrow::async_reader::{ParquetObjectReader, ParquetRecordBatchStream};
use parquet::arrow::{ParquetRecordBatchStreamBuilder, ProjectionMask};
use parquet::file::metadata::{ParquetMetaData, RowGroupMetaData};
use parquet::file::page_index::column_index::ColumnIndexMetaData;
use parquet::file::statistics::Statistics;
use strata_broker::page::PageBudget;

use crate::partition_reads::ColdRecord;

use crate::error::{Result, TieringError};
use crate::manifest::ColdFile;
use crate::read_cache::{ReadCache, bytes_per_row, window_rows_for};
use crate::schema::{RecordColumns, col};

/// Rows per batch when reading back.
const READ_BATCH_ROWS: usize = 8192;

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
    let mut page = PageBudget::new(max_records, max_bytes);
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
                        if !page.admit(record.data_len()) {
                            return Ok(out);
                        }
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
        if page.is_full() {
            break;
        }
    }
    Ok(out)
}

/// A stream of record batches decoded from one cold file, timestamps in
/// milliseconds ([`crate::schema::from_file_batch`]).
pub type ColdBatchStream =
    futures::stream::BoxStream<'static, parquet::errors::Result<RecordBatch>>;

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
    /// Columns of [`crate::schema::schema`] to decode, by index, ascending.
    pub columns: &'a [usize],
    /// Decode `key` and `value` as `Utf8View` ([`crate::schema::view_schema`]).
    pub string_views: bool,
    /// Only rows with one of these keys (sorted, no repeats) are
    /// returned: row groups whose `key` bloom filter rules all of them out
    /// are skipped, and in the others the `key` column is decoded first,
    /// the rest only where it matches. Empty: any key.
    pub keys: &'a [String],
}

/// Most keys whose bloom filters a scan checks; a longer list reads every
/// row group its other bounds allow.
pub const MAX_BLOOM_KEYS: usize = 1000;

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
    // The time bounds in the file's unit, for its statistics.
    let per_ms = crate::schema::units_per_ms(metadata.schema());
    let (from, to) = (
        scan.from_ms.map(|t| t.saturating_mul(per_ms)),
        scan.to_ms.map(|t| t.saturating_mul(per_ms)),
    );
    if scan.string_views {
        let read = crate::schema::read_schema(metadata.schema(), true);
        let options = ArrowReaderOptions::new().with_schema(read);
        metadata = ArrowReaderMetadata::try_new(metadata.metadata().clone(), options)?;
    }
    let mut builder = ParquetRecordBatchStreamBuilder::new_with_metadata(reader, metadata);
    let mut plan = plan_rows(builder.metadata(), lo..hi, from, to, &[]);
    if !scan.keys.is_empty() && scan.keys.len() <= MAX_BLOOM_KEYS {
        let mut absent = Vec::new();
        for &group in &plan.groups {
            // The first five Parquet leaf columns are the Arrow columns of
            // the same index.
            let filter = builder
                .get_row_group_column_bloom_filter(group, col::KEY)
                .await?;
            if filter.is_some_and(|f| !scan.keys.iter().any(|k| f.check(&k.as_str()))) {
                absent.push(group);
            }
        }
        if !absent.is_empty() {
            plan = plan_rows(builder.metadata(), lo..hi, from, to, &absent);
        }
    }
    // Batches of large records hold fewer rows, like consume windows.
    let rows_fitting = window_rows_for(bytes_per_row(builder.metadata()));
    let batch_rows = batch_rows.min(usize::try_from(rows_fitting).unwrap_or(usize::MAX));
    let row_groups_total = builder.metadata().num_row_groups();
    let (row_groups, rows) = (plan.groups.len(), plan.ranges.iter().map(|r| r.len()).sum());
    let mask = ProjectionMask::roots(
        builder.metadata().file_metadata().schema_descr(),
        scan.columns.iter().copied(),
    );
    let selection = RowSelection::from_consecutive_ranges(plan.ranges.into_iter(), plan.rows);
    if !scan.keys.is_empty() {
        // The `key` column is decoded first and the other columns only in
        // the pages that hold a wanted key: one key's history in a file of
        // millions of rows decodes a page per match, not every value.
        let keys = scan.keys.to_vec();
        let only_key = ProjectionMask::roots(
            builder.metadata().file_metadata().schema_descr(),
            [col::KEY],
        );
        let predicate = ArrowPredicateFn::new(only_key, move |batch: RecordBatch| {
            key_matches(batch.column(0), &keys)
        });
        builder = builder.with_row_filter(RowFilter::new(vec![Box::new(predicate)]));
    }
    let batches = builder
        .with_row_groups(plan.groups)
        .with_row_selection(selection)
        .with_projection(mask)
        .with_batch_size(batch_rows)
        .build()?
        .map(|batch| {
            crate::schema::from_file_batch(batch?)
                .map_err(|e| parquet::errors::ParquetError::External(Box::new(e)))
        })
        .boxed();
    Ok(Some(OpenedScan {
        batches,
        row_groups,
        row_groups_total,
        rows,
    }))
}

/// Which rows of a `key` column (`Utf8` or `Utf8View`) hold one of
/// `keys` (sorted); a null key is null (a filter drops it).
pub fn key_matches(
    column: &dyn arrow_array::Array,
    keys: &[String],
) -> std::result::Result<BooleanArray, arrow_schema::ArrowError> {
    // A bit at a time over the strings in place (`from_unary`): this runs
    // over every row of every file a key read opens.
    let wanted = |key: &str| match keys {
        [only] => key == only,
        _ => keys.binary_search_by(|w| w.as_str().cmp(key)).is_ok(),
    };
    if let Some(view) = column.as_string_view_opt() {
        Ok(BooleanArray::from_unary(view, wanted))
    } else if let Some(text) = column.as_string_opt::<i32>() {
        Ok(BooleanArray::from_unary(text, wanted))
    } else {
        Err(arrow_schema::ArrowError::InvalidArgumentError(format!(
            "a key column of type {}",
            column.data_type()
        )))
    }
}

/// Row groups to read and the row ranges within them (counted across the
/// chosen groups only, as [`RowSelection`] wants).
#[derive(Debug, Default, PartialEq, Eq)]
struct RowPlan {
    groups: Vec<usize>,
    ranges: Vec<Range<usize>>,
    rows: usize,
}

/// The rows of `wanted` (as row numbers of the file) whose row group and
/// page statistics allow `from..to` (in the file's timestamp unit),
/// outside the row groups `skip`.
fn plan_rows(
    meta: &ParquetMetaData,
    wanted: Range<u64>,
    from: Option<i64>,
    to: Option<i64>,
    skip: &[usize],
) -> RowPlan {
    let overlaps = |min: Option<i64>, max: Option<i64>| {
        !(from.is_some_and(|from| max.is_some_and(|max| max < from))
            || to.is_some_and(|to| min.is_some_and(|min| min >= to)))
    };
    let mut plan = RowPlan::default();
    let mut group_start = 0u64;
    for (i, rg) in meta.row_groups().iter().enumerate() {
        let rows = rg.num_rows() as u64;
        let group = group_start..group_start + rows;
        group_start += rows;
        let want = wanted.start.max(group.start)..wanted.end.min(group.end);
        if want.is_empty() || skip.contains(&i) {
            continue;
        }
        let (min, max) = match rg.column(col::TIMESTAMP).statistics() {
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
        columns.get(rg).and_then(|c| c.get(col::TIMESTAMP)),
        offsets.get(rg).and_then(|o| o.get(col::TIMESTAMP)),
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
        let per_ms = crate::schema::units_per_ms(cache.open(store, file).await?.1.schema());
        let in_file = target.saturating_mul(per_ms);
        // The first five Parquet leaf columns are the Arrow columns of the same
        // index (only `headers`, last, has two leaves).
        let pick = |rg: &RowGroupMetaData| match rg.column(col::TIMESTAMP).statistics() {
            Some(Statistics::Int64(s)) => s.max_opt().is_none_or(|&max| max >= in_file),
            _ => true,
        };
        let Some(mut stream) = open(store, cache, file, pick).await? else {
            continue;
        };
        while let Some(batch) = stream.try_next().await? {
            let batch = crate::schema::from_file_batch(batch)?;
            let offsets = batch.column(col::OFFSET).as_primitive::<Int64Type>();
            let stamps = batch
                .column(col::TIMESTAMP)
                .as_primitive::<TimestampMillisecondType>();
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

    /// Metadata of a file of rows 0..25 (offset and time = row number) in
    /// row groups of 10, with the page index.
    fn three_row_groups() -> ParquetMetaData {
        use arrow_array::{Int32Array, Int64Array, RecordBatch};
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
    fn row_plans_count_rows_of_the_chosen_groups_only() {
        let meta = three_row_groups();
        assert_eq!(meta.num_row_groups(), 3);
        // Starting in the second group: the first is skipped and counts for nothing.
        let plan = plan_rows(&meta, 15..22, None, None, &[]);
        assert_eq!(plan.groups, vec![1, 2]);
        assert_eq!(plan.ranges, vec![5..10, 10..12]);
        assert_eq!(plan.rows, 15);
        // A time range that only the last group can hold.
        let plan = plan_rows(&meta, 0..25, Some(21), Some(23), &[]);
        assert_eq!(plan.groups, vec![2]);
        assert_eq!(plan.ranges, vec![0..5]);
        assert_eq!(plan.rows, 5);
    }

    /// Files of both generations (milliseconds without field ids, written
    /// before; microseconds with them) read back alike on every path:
    /// windows, scans with time bounds and string views, time lookups.
    #[tokio::test]
    async fn millisecond_and_microsecond_files_read_alike() {
        use crate::schema::{ArrowBatchBuilder, file_schema, schema, to_file_batch};
        use parquet::arrow::ArrowWriter;
        let store: Arc<dyn ObjectStore> = Arc::new(object_store::memory::InMemory::new());
        let mut builder = ArrowBatchBuilder::new();
        for offset in 0..50u64 {
            let value = format!("{{\"n\":{offset}}}");
            let headers = [("h".to_string(), "v".to_string())];
            let stamp = 1_700_000_000_000 + offset as i64 * 7;
            builder
                .push_parts(0, offset, stamp, Some("k"), &value, &headers)
                .unwrap();
        }
        let batch = builder.finish().unwrap();
        let mut files = Vec::new();
        for (name, micros) in [("ms.parquet", false), ("us.parquet", true)] {
            let (file_schema, written) = if micros {
                (file_schema(), to_file_batch(&batch).unwrap())
            } else {
                (schema(), batch.clone())
            };
            let mut bytes = Vec::new();
            let mut writer = ArrowWriter::try_new(&mut bytes, file_schema, None).unwrap();
            writer.write(&written).unwrap();
            writer.close().unwrap();
            let path = object_store::path::Path::from(name);
            let size = bytes.len() as u64;
            object_store::ObjectStoreExt::put(store.as_ref(), &path, bytes.into())
                .await
                .unwrap();
            files.push(ColdFile {
                path: name.into(),
                first_offset: 0,
                last_offset: 49,
                min_timestamp: 1_700_000_000_000,
                max_timestamp: 1_700_000_000_343,
                records: 50,
                bytes: size,
            });
        }
        let cache = ReadCache::default();
        let mut seen = Vec::new();
        for file in &files {
            let records = read_records(&store, &cache, std::slice::from_ref(file), 0, 100, 1 << 20)
                .await
                .unwrap();
            let stamps: Vec<i64> = records.iter().map(|r| r.timestamp).collect();
            let scan = FileScan {
                file,
                offsets: 0..50,
                from_ms: Some(1_700_000_000_070),
                to_ms: Some(1_700_000_000_140),
                columns: &[col::OFFSET, col::TIMESTAMP, col::VALUE],
                string_views: true,
                keys: &[],
            };
            let opened = scan_file(&store, &cache, &scan, 1024)
                .await
                .unwrap()
                .unwrap();
            let batches: Vec<RecordBatch> = opened.batches.try_collect().await.unwrap();
            let scanned: Vec<i64> = batches
                .iter()
                .flat_map(|b| {
                    let at = b.schema().index_of("timestamp").unwrap();
                    b.column(at)
                        .as_primitive::<TimestampMillisecondType>()
                        .values()
                        .to_vec()
                })
                .collect();
            let found = offset_for_timestamp(
                &store,
                &cache,
                std::slice::from_ref(file),
                1_700_000_000_100,
            )
            .await
            .unwrap();
            seen.push((stamps, scanned.contains(&1_700_000_000_105), found));
        }
        assert_eq!(seen[0].0.len(), 50);
        assert_eq!(seen[0].0[3], 1_700_000_000_021);
        assert!(seen[0].1, "the time-bounded scan finds the row");
        assert_eq!(seen[0].2, Some((15, 1_700_000_000_105)));
        assert_eq!(seen[0], seen[1], "both generations read alike");
    }
}

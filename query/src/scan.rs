//! The union read across both tiers: the rows of a pinned partition
//! ([`crate::pin`]) in offset order, cold files first, then local segments,
//! pruned by time and key and streamed in batches.

use std::ops::{ControlFlow, Range};
use std::sync::Arc;

use arrow::array::{Array, BooleanArray, RecordBatch, Scalar};
use arrow::array::{RecordBatchOptions, TimestampMillisecondArray};
use arrow::compute::filter_record_batch;
use arrow::compute::kernels::boolean::and;
use arrow::compute::kernels::cmp::{gt_eq, lt};
use arrow::datatypes::SchemaRef;
use datafusion::physical_plan::metrics::Count;
use futures::stream::{self, BoxStream, StreamExt, TryStreamExt};
use strata_broker::batch::RecordView;
use strata_tiering::Tiering;
use strata_tiering::cold_read::{FileScan, key_matches};
use strata_tiering::schema::{ArrowBatchBuilder, schema, view_schema};
use tokio::sync::mpsc;

use crate::error::{QueryError, Result};
use crate::pin::{PinnedPartition, PinnedTopic};

/// What a scan read and skipped (shown by `EXPLAIN ANALYZE`).
#[derive(Debug, Clone, Default)]
pub struct ScanMetrics {
    /// Cold files opened.
    pub cold_files: Count,
    /// Row groups read from them, and skipped by their statistics.
    pub row_groups_read: Count,
    pub row_groups_pruned: Count,
    /// Rows decoded from cold files (pages outside the wanted rows are skipped).
    pub cold_rows: Count,
    /// Records read from local segments.
    pub hot_records: Count,
    /// Partitions skipped because none of the wanted keys can be there
    /// ([`PinnedPartition::holds_none_of`]).
    pub partitions_pruned: Count,
}

/// Rows per batch a scan yields.
pub const SCAN_BATCH_ROWS: usize = 8192;

pub use strata_tiering::schema::col;

/// What a scan reads: filters that every returned row satisfies, and the
/// columns it returns.
#[derive(Debug, Clone)]
pub struct ScanSpec {
    /// `from_ms <= timestamp`, when set.
    pub from_ms: Option<i64>,
    /// `timestamp < to_ms`, when set.
    pub to_ms: Option<i64>,
    /// Offsets wanted in each partition.
    pub offsets: Range<u64>,
    /// Only records with one of these keys, sorted and without repeats
    /// (see [`ScanSpec::with_keys`]); empty: any key.
    pub keys: Vec<String>,
    /// Output columns (indexes of [`schema`], ascending).
    pub columns: Vec<usize>,
    /// At most this many rows per partition.
    pub limit: Option<u64>,
    /// `key` and `value` as `Utf8View` (for the SQL engine) instead of `Utf8`.
    pub string_views: bool,
}

impl Default for ScanSpec {
    fn default() -> Self {
        Self {
            from_ms: None,
            to_ms: None,
            offsets: 0..u64::MAX,
            keys: Vec::new(),
            columns: col::ALL.to_vec(),
            limit: None,
            string_views: false,
        }
    }
}

impl ScanSpec {
    /// This scan restricted to `keys` (any order, repeats allowed).
    pub fn with_keys(mut self, keys: impl IntoIterator<Item = String>) -> Self {
        self.keys = keys.into_iter().collect();
        self.keys.sort_unstable();
        self.keys.dedup();
        self
    }

    /// The schema of the batches the scan yields.
    pub fn output_schema(&self) -> Result<SchemaRef> {
        let full = if self.string_views {
            view_schema()
        } else {
            schema()
        };
        Ok(Arc::new(full.project(&self.columns)?))
    }

    /// Columns decoded from cold files: the output plus what the filters need.
    fn read_columns(&self) -> Vec<usize> {
        let mut cols = self.columns.clone();
        cols.push(col::OFFSET);
        if self.from_ms.is_some() || self.to_ms.is_some() {
            cols.push(col::TIMESTAMP);
        }
        if !self.keys.is_empty() {
            cols.push(col::KEY);
        }
        cols.sort_unstable();
        cols.dedup();
        cols
    }

    fn matches(&self, record: &RecordView<'_>) -> bool {
        self.from_ms.is_none_or(|from| record.timestamp >= from)
            && self.to_ms.is_none_or(|to| record.timestamp < to)
            && (self.keys.is_empty()
                || record.key.is_some_and(|key| {
                    self.keys
                        .binary_search_by(|k| k.as_bytes().cmp(key))
                        .is_ok()
                }))
    }

    /// Keeps the rows of a cold batch (with `read` columns) that match, in
    /// the output columns.
    fn filter_cold(&self, batch: RecordBatch, read: &[usize]) -> Result<RecordBatch> {
        let position = |c: usize| read.iter().position(|&r| r == c);
        let mut mask: Option<BooleanArray> = None;
        let mut combine = |next: BooleanArray| -> Result<()> {
            mask = Some(match mask.take() {
                Some(m) => and(&m, &next)?,
                None => next,
            });
            Ok(())
        };
        if let Some(i) =
            position(col::TIMESTAMP).filter(|_| self.from_ms.is_some() || self.to_ms.is_some())
        {
            let stamps = batch.column(i);
            if let Some(from) = self.from_ms {
                let bound = TimestampMillisecondArray::new_scalar(from).into_inner();
                let bound = bound.with_timezone_opt(timestamp_tz(stamps));
                combine(gt_eq(stamps, &Scalar::new(bound))?)?;
            }
            if let Some(to) = self.to_ms {
                let bound = TimestampMillisecondArray::new_scalar(to).into_inner();
                let bound = bound.with_timezone_opt(timestamp_tz(stamps));
                combine(lt(stamps, &Scalar::new(bound))?)?;
            }
        }
        if let (false, Some(i)) = (self.keys.is_empty(), position(col::KEY)) {
            combine(key_matches(batch.column(i).as_ref(), &self.keys)?)?;
        }
        let batch = match mask {
            Some(mask) => filter_record_batch(&batch, &mask)?,
            None => batch,
        };
        let keep: Vec<usize> = self.columns.iter().filter_map(|&c| position(c)).collect();
        project(&batch, &keep, &self.output_schema()?)
    }
}

fn timestamp_tz(array: &dyn Array) -> Option<Arc<str>> {
    match array.data_type() {
        arrow::datatypes::DataType::Timestamp(_, tz) => tz.clone(),
        _ => None,
    }
}

/// `batch` restricted to `columns`, labelled with `schema` and cast to its
/// types where they differ (hot batches are built with `Utf8` strings; keeps
/// the row count when no column is left, as `count(*)` needs).
fn project(batch: &RecordBatch, columns: &[usize], schema: &SchemaRef) -> Result<RecordBatch> {
    let arrays = columns
        .iter()
        .zip(schema.fields())
        .map(|(&i, field)| {
            let array = batch.column(i);
            if array.data_type() == field.data_type() {
                Ok(array.clone())
            } else {
                arrow::compute::cast(array, field.data_type())
            }
        })
        .collect::<Result<Vec<_>, _>>()?;
    let options = RecordBatchOptions::new().with_row_count(Some(batch.num_rows()));
    Ok(RecordBatch::try_new_with_options(
        schema.clone(),
        arrays,
        &options,
    )?)
}

/// A stream of record batches.
pub type BatchStream = BoxStream<'static, Result<RecordBatch>>;

/// The rows of `spec` in one pinned partition, in offset order: cold files
/// first, then local segments. Reading runs ahead by at most two batches.
pub fn scan_partition(
    tiering: Arc<Tiering>,
    part: Arc<PinnedPartition>,
    spec: Arc<ScanSpec>,
    metrics: ScanMetrics,
) -> BatchStream {
    if part.holds_none_of(&spec.keys) {
        metrics.partitions_pruned.add(1);
        return stream::empty().boxed();
    }
    let (tx, rx) = mpsc::channel::<Result<RecordBatch>>(2);
    let task = tokio::spawn(async move {
        let mut left = spec.limit.unwrap_or(u64::MAX);
        let result = match scan_cold(&tiering, &part, &spec, &tx, &mut left, &metrics).await {
            Ok(true) if left > 0 => scan_hot(part, spec, tx.clone(), left, metrics).await,
            Ok(_) => Ok(()),
            Err(e) => Err(e),
        };
        if let Err(e) = result {
            let _ = tx.send(Err(e)).await;
        }
    });
    // The channel closing is the end only if the task finished: a task
    // that panicked must not look like a short result. Dropping the stream
    // (the reader went away) stops the task.
    let task = AbortOnDrop(task);
    stream::unfold(Some((rx, task)), |state| async move {
        let (mut rx, mut task) = state?;
        match rx.recv().await {
            Some(item) => Some((item, Some((rx, task)))),
            None => match (&mut task.0).await {
                Ok(()) => None,
                Err(e) => Some((
                    Err(QueryError::Internal(format!(
                        "a partition scan failed: {e}"
                    ))),
                    None,
                )),
            },
        }
    })
    .boxed()
}

/// Every partition of `snapshot` in order (partition, then offset), at most
/// `limit` rows in all.
pub fn scan_topic(
    tiering: Arc<Tiering>,
    snapshot: PinnedTopic,
    spec: Arc<ScanSpec>,
    limit: Option<u64>,
) -> BatchStream {
    let batches = stream::iter(snapshot.partitions)
        .map(move |part| {
            scan_partition(tiering.clone(), part, spec.clone(), ScanMetrics::default())
        })
        .flatten();
    match limit {
        None => batches.boxed(),
        Some(limit) => limit_rows(batches, limit),
    }
}

/// Ends `batches` after `limit` rows, cutting the last batch. Once the
/// limit is reached `batches` is not polled again (it would go on scanning
/// the next partitions for rows nobody wants).
pub fn limit_rows(
    batches: impl futures::Stream<Item = Result<RecordBatch>> + Send + 'static,
    limit: u64,
) -> BatchStream {
    stream::unfold((batches.boxed(), limit), |(mut batches, left)| async move {
        if left == 0 {
            return None;
        }
        match batches.next().await? {
            Ok(batch) => {
                let take = left.min(batch.num_rows() as u64);
                Some((Ok(batch.slice(0, take as usize)), (batches, left - take)))
            }
            Err(e) => Some((Err(e), (batches, left))),
        }
    })
    .try_filter(|b| futures::future::ready(b.num_rows() > 0))
    .boxed()
}

/// A spawned task that is aborted when this is dropped.
struct AbortOnDrop(tokio::task::JoinHandle<()>);

impl Drop for AbortOnDrop {
    fn drop(&mut self) {
        self.0.abort();
    }
}

/// Sends the matching cold rows; false when the receiver is gone.
async fn scan_cold(
    tiering: &Tiering,
    part: &PinnedPartition,
    spec: &ScanSpec,
    tx: &mpsc::Sender<Result<RecordBatch>>,
    left: &mut u64,
    metrics: &ScanMetrics,
) -> Result<bool> {
    let hi = spec.offsets.end.min(part.cold_end());
    let read = spec.read_columns();
    for file in part.cold().manifest.files_from(spec.offsets.start) {
        if file.first_offset >= hi || *left == 0 {
            break;
        }
        let scan = FileScan {
            file,
            offsets: spec.offsets.start..hi,
            from_ms: spec.from_ms,
            to_ms: spec.to_ms,
            columns: &read,
            string_views: spec.string_views,
            keys: &spec.keys,
        };
        let Some(opened) = tiering.scan_file(&scan, SCAN_BATCH_ROWS).await? else {
            continue;
        };
        metrics.cold_files.add(1);
        metrics.row_groups_read.add(opened.row_groups);
        metrics
            .row_groups_pruned
            .add(opened.row_groups_total - opened.row_groups);
        metrics.cold_rows.add(opened.rows);
        let mut batches = opened.batches;
        while let Some(batch) = batches.try_next().await.map_err(QueryError::from)? {
            if tx.is_closed() {
                return Ok(false);
            }
            let batch = spec.filter_cold(batch, &read)?;
            if batch.num_rows() == 0 {
                continue;
            }
            let take = (*left).min(batch.num_rows() as u64);
            *left -= take;
            if tx.send(Ok(batch.slice(0, take as usize))).await.is_err() {
                return Ok(false);
            }
            if *left == 0 {
                break;
            }
        }
    }
    Ok(true)
}

/// Sends the matching rows of local segments, read on a blocking thread.
async fn scan_hot(
    part: Arc<PinnedPartition>,
    spec: Arc<ScanSpec>,
    tx: mpsc::Sender<Result<RecordBatch>>,
    left: u64,
    metrics: ScanMetrics,
) -> Result<()> {
    let range = part.hot_range(&spec);
    if range.is_empty() {
        return Ok(());
    }
    tokio::task::spawn_blocking(move || {
        let mut reader = HotReader {
            spec: &spec,
            partition: part.id,
            builder: ArrowBatchBuilder::new(),
            tx: &tx,
            left,
            error: None,
            schema: spec.output_schema()?,
        };
        for r in part.hot().ranges_for(range, spec.from_ms, spec.to_ms) {
            let mut cursor = part.hot().cursor(r.start, r.end)?;
            let next = cursor.for_each_record(|record| reader.visit(record))?;
            metrics.hot_records.add((next - r.start) as usize);
            if let Some(e) = reader.error.take() {
                return Err(e);
            }
            if reader.left == 0 || tx.is_closed() {
                return Ok(());
            }
        }
        reader.flush()
    })
    .await
    .map_err(|e| QueryError::Internal(format!("hot-tier reader failed: {e}")))?
}

struct HotReader<'a> {
    spec: &'a ScanSpec,
    partition: u32,
    builder: ArrowBatchBuilder,
    tx: &'a mpsc::Sender<Result<RecordBatch>>,
    left: u64,
    error: Option<QueryError>,
    schema: SchemaRef,
}

impl HotReader<'_> {
    fn visit(&mut self, record: &RecordView<'_>) -> ControlFlow<()> {
        // A reader that went away is noticed between flushes too: a
        // filter that matches little would otherwise scan on for nobody.
        if record.offset.is_multiple_of(4096) && self.tx.is_closed() {
            return ControlFlow::Break(());
        }
        if !self.spec.matches(record) {
            return ControlFlow::Continue(());
        }
        if let Err(e) = self.builder.push(self.partition, record) {
            self.error = Some(e.into());
            return ControlFlow::Break(());
        }
        self.left -= 1;
        if self.builder.len() >= SCAN_BATCH_ROWS
            || self.builder.data_bytes() >= strata_tiering::schema::BATCH_BYTES
            || self.left == 0
        {
            if let Err(e) = self.flush() {
                self.error = Some(e);
                return ControlFlow::Break(());
            }
            if self.left == 0 || self.tx.is_closed() {
                return ControlFlow::Break(());
            }
        }
        ControlFlow::Continue(())
    }

    fn flush(&mut self) -> Result<()> {
        if self.builder.is_empty() {
            return Ok(());
        }
        let batch = self.builder.finish()?;
        let batch = project(&batch, &self.spec.columns, &self.schema)?;
        // A closed channel means the reader went away: nothing to report.
        let _ = self.tx.blocking_send(Ok(batch));
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use datafusion::arrow::array::Int64Array;

    use super::*;

    fn rows(n: i64) -> Result<RecordBatch> {
        Ok(RecordBatch::try_from_iter([(
            "offset",
            Arc::new(Int64Array::from_iter_values(0..n)) as _,
        )])
        .unwrap())
    }

    #[tokio::test]
    async fn a_limit_stops_polling_once_reached() {
        // The third item stands for the rest of a scan: reaching it is a bug.
        let batches = stream::iter([rows(3), rows(4)])
            .chain(stream::once(async { panic!("polled past the limit") }));
        let got: Vec<RecordBatch> = limit_rows(batches, 5).try_collect().await.unwrap();
        let counts: Vec<usize> = got.iter().map(RecordBatch::num_rows).collect();
        assert_eq!(counts, vec![3, 2]);
    }
}

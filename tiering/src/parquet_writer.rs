//! Sealed segment → Arrow record batches → one Parquet file on the object store.
//!
//! Rows are in offset order ([`crate::schema`] is their shape). zstd (level
//! 1); statistics and the page index on every column, so readers prune row
//! groups and pages by `offset` and `timestamp`. Row groups hold up to
//! [`ROW_GROUP_ROWS`] rows (or [`ROW_GROUP_BYTES`] encoded, for large
//! records): large enough to compress and write at full speed, small
//! enough that a time or offset filter skips most of a big file; pages
//! (~1 MiB; `value`'s [`VALUE_PAGE_BYTES`]) give finer pruning inside a
//! row group. The `key` column has a
//! bloom filter per row group, so a reader looking for one key skips the
//! row groups that cannot hold it.
//!
//! The segment is read, built into batches of
//! [`crate::schema::OFFLOAD_BATCH_ROWS`] rows (or
//! [`crate::schema::BATCH_BYTES`] of record data) and encoded on a blocking
//! thread; finished chunks of the file go through a one-slot channel to its
//! upload ([`crate::upload`]): memory stays bounded by one batch, one
//! encoded row group and a few upload parts, whatever the segment's or
//! records' size.

use std::ops::ControlFlow;
use std::sync::Arc;

use arrow_array::RecordBatch;
use bytes::Bytes;
use parquet::arrow::ArrowWriter;
use parquet::basic::{Compression, Encoding, ZstdLevel};
use parquet::file::metadata::SortingColumn;
use parquet::file::properties::{EnabledStatistics, WriterProperties};
use parquet::schema::types::ColumnPath;
use strata_broker::Partition;
use strata_broker::segment::SegmentInfo;
use tokio::sync::mpsc;

use crate::error::{Result, TieringError};
use crate::manifest::ColdFile;
use crate::paths::DataFilePath;
use crate::schema::{ArrowBatchBuilder, file_schema, to_file_batch};
use crate::upload::{FileUpload, UPLOAD_PART_BYTES};

/// Rows per Parquet row group.
pub const ROW_GROUP_ROWS: usize = 1 << 20;
/// Encoded bytes at which a row group is closed before [`ROW_GROUP_ROWS`]
/// (records of kilobytes and more): the writer holds a row group's pages
/// in memory until it closes.
pub const ROW_GROUP_BYTES: usize = 64 << 20;
/// Bytes at which a `value` data page is closed.
pub const VALUE_PAGE_BYTES: usize = 64 << 10;
/// False-positive rate of the `key` column's bloom filters.
pub const KEY_BLOOM_FPP: f64 = 0.01;

/// Rows per row group of a file compaction writes: smaller than an
/// offloaded segment's, because a merged file spans a longer time and
/// engines that prune by row-group statistics only (not the page index)
/// read a whole row group for a time filter.
pub const MERGED_ROW_GROUP_ROWS: usize = 128 * 1024;

fn writer_properties(row_group_rows: usize) -> WriterProperties {
    WriterProperties::builder()
        .set_compression(Compression::ZSTD(ZstdLevel::try_new(1).unwrap_or_default()))
        .set_statistics_enabled(EnabledStatistics::Page)
        .set_max_row_group_row_count(Some(row_group_rows))
        .set_sorting_columns(Some(vec![SortingColumn {
            column_idx: crate::schema::col::OFFSET as i32,
            descending: false,
            nulls_first: false,
        }]))
        // Offsets, timestamps and JSON values rarely repeat: dictionaries only cost time.
        .set_column_dictionary_enabled(ColumnPath::from("offset"), false)
        .set_column_dictionary_enabled(ColumnPath::from("timestamp"), false)
        // Offsets rise by one and timestamps mostly by little: stored as
        // deltas they take a few bits a value instead of 8 bytes, so a
        // time-range read decompresses a fraction of what it did (zstd of
        // plain 8-byte values was most of a one-day query's time).
        .set_column_encoding(ColumnPath::from("offset"), Encoding::DELTA_BINARY_PACKED)
        .set_column_encoding(ColumnPath::from("timestamp"), Encoding::DELTA_BINARY_PACKED)
        .set_column_dictionary_enabled(ColumnPath::from("value"), false)
        // Nothing prunes by the JSON text: its min/max would cost a string
        // comparison per row and bytes in every page header for nothing.
        .set_column_statistics_enabled(ColumnPath::from("value"), EnabledStatistics::None)
        // A read of one key's history decompresses a whole `value` page per
        // record it finds: pages of ~1,000 values instead of ~1 MiB make
        // that ~8x less (a page is at least one write batch of rows).
        .set_column_data_page_size_limit(ColumnPath::from("value"), VALUE_PAGE_BYTES)
        // A lookup of one key (SQL `key = …`, snapshots of keys) opens only
        // the row groups whose filter may hold it. parquet sizes it for a
        // row group of distinct keys, then folds it down to the keys there
        // are (about 1.2 bytes per distinct key at 1 % false positives).
        .set_column_bloom_filter_enabled(ColumnPath::from("key"), true)
        .set_column_bloom_filter_fpp(ColumnPath::from("key"), KEY_BLOOM_FPP)
        .set_column_bloom_filter_max_ndv(ColumnPath::from("key"), ROW_GROUP_ROWS as u64)
        .build()
}

/// Summary of an encoded file, before it is committed.
#[derive(Debug, Clone, Copy)]
struct Stats {
    records: u64,
    min_timestamp: i64,
    max_timestamp: i64,
    /// The file's size.
    bytes: u64,
}

/// Writes the records of one sealed `segment` of `partition` as a Parquet
/// file at `path` through `upload` and returns its manifest entry.
/// Idempotent: the same segment always yields the same path, and a retry
/// overwrites it.
///
/// Reading, Arrow building, Parquet encoding and compression all run on a
/// blocking thread, which hands finished chunks of the file to this task
/// for upload: the async runtime's workers stay free to serve requests.
pub async fn write_segment(
    upload: FileUpload,
    path: &DataFilePath,
    partition: Arc<Partition>,
    segment: &SegmentInfo,
) -> Result<ColdFile> {
    let (base, end) = (segment.base_offset, segment.end_offset);
    let stats = encode_and_upload(upload, end - base, move |tx| {
        encode_segment(&partition, base, end, tx)
    })
    .await?;
    Ok(ColdFile {
        path: path.0.to_string(),
        first_offset: base,
        last_offset: end - 1,
        min_timestamp: stats.min_timestamp,
        max_timestamp: stats.max_timestamp,
        records: stats.records,
        bytes: stats.bytes,
    })
}

/// Writes the records of `files` (adjacent files of one partition, in
/// offset order) as one Parquet file at `path` through `upload`, and
/// returns its manifest entry: compaction's rewrite. `batches` yields the
/// files' record batches (of [`crate::schema::schema`]) in offset order;
/// they are encoded on a blocking thread as a segment's are, so memory
/// stays bounded by a batch, a row group and a few upload parts.
pub async fn write_merged(
    upload: FileUpload,
    path: &DataFilePath,
    files: &[ColdFile],
    mut batches: mpsc::Receiver<RecordBatch>,
) -> Result<ColdFile> {
    let (Some(first), Some(last)) = (files.first(), files.last()) else {
        return Err(TieringError::Internal("nothing to merge".into()));
    };
    let records = files.iter().map(|f| f.records).sum();
    let stats = encode_and_upload(upload, records, move |tx| {
        encode_batches(tx, MERGED_ROW_GROUP_ROWS, &mut |emit| {
            while let Some(batch) = batches.blocking_recv() {
                emit(batch)?;
            }
            Ok(())
        })
    })
    .await?;
    Ok(ColdFile {
        path: path.0.to_string(),
        first_offset: first.first_offset,
        last_offset: last.last_offset,
        min_timestamp: files.iter().map(|f| f.min_timestamp).min().unwrap_or(0),
        max_timestamp: files.iter().map(|f| f.max_timestamp).max().unwrap_or(0),
        records: stats.records,
        bytes: stats.bytes,
    })
}

/// Runs `encode` (which sends the file's chunks) on a blocking thread and
/// uploads what it sends; finishes the upload only if it encoded exactly
/// `records` records, else aborts it.
async fn encode_and_upload(
    mut upload: FileUpload,
    records: u64,
    encode: impl FnOnce(mpsc::Sender<Bytes>) -> Result<Stats> + Send + 'static,
) -> Result<Stats> {
    let (tx, mut rx) = mpsc::channel::<Bytes>(1);
    let encoder = tokio::task::spawn_blocking(move || encode(tx));
    let uploaded: Result<()> = async {
        while let Some(chunk) = rx.recv().await {
            upload.put(chunk).await?;
        }
        Ok(())
    }
    .await;
    // An upload that gave up reads no more chunks: closing the channel makes
    // the encoder's next hand-off fail instead of waiting for ever.
    drop(rx);
    let encoded = encoder
        .await
        .unwrap_or_else(|e| Err(TieringError::Internal(format!("encoder failed: {e}"))));
    let finished = match (uploaded, encoded) {
        (Ok(()), Ok(stats)) if stats.records == records => upload.finish().await.map(|()| stats),
        (Ok(()), Ok(stats)) => Err(TieringError::Internal(format!(
            "{} records were encoded, {records} expected",
            stats.records
        ))),
        (Err(e), _) | (_, Err(e)) => Err(e),
    };
    match finished {
        Ok(stats) => Ok(stats),
        Err(e) => {
            // Don't leave parts of an unfinished multipart upload behind.
            upload.abort().await;
            Err(e)
        }
    }
}

/// A `Write` that ships the Parquet file in chunks of exactly
/// [`UPLOAD_PART_BYTES`] (the last one shorter) to the uploading task.
struct ChunkSink {
    tx: mpsc::Sender<Bytes>,
    /// The chunk being filled: `buf[start..]`, with `start` chosen so that
    /// the chunk is block-aligned in memory, as direct I/O wants.
    buf: Vec<u8>,
    start: usize,
    /// Bytes of the file so far.
    written: u64,
}

impl ChunkSink {
    fn new(tx: mpsc::Sender<Bytes>) -> Self {
        let (buf, start) = aligned_chunk();
        Self {
            tx,
            buf,
            start,
            written: 0,
        }
    }

    fn filled(&self) -> usize {
        self.buf.len() - self.start
    }

    fn ship(&mut self) -> std::io::Result<()> {
        if self.filled() == 0 {
            return Ok(());
        }
        let (next, start) = aligned_chunk();
        let buf = std::mem::replace(&mut self.buf, next);
        // `Bytes::from` keeps the vector's allocation, so the slice stays aligned.
        let chunk = Bytes::from(buf).slice(std::mem::replace(&mut self.start, start)..);
        self.tx
            .blocking_send(chunk)
            .map_err(|_| std::io::Error::other("the upload stopped"))
    }
}

/// An empty buffer for one upload part and the index at which the part
/// starts block-aligned.
fn aligned_chunk() -> (Vec<u8>, usize) {
    strata_broker::direct_io::aligned_vec(UPLOAD_PART_BYTES)
}

impl std::io::Write for ChunkSink {
    fn write(&mut self, data: &[u8]) -> std::io::Result<usize> {
        // Every chunk but the last is exactly one upload part long.
        let mut rest = data;
        while !rest.is_empty() {
            let take = (UPLOAD_PART_BYTES - self.filled()).min(rest.len());
            self.buf.extend_from_slice(&rest[..take]);
            rest = &rest[take..];
            if self.filled() == UPLOAD_PART_BYTES {
                self.ship()?;
            }
        }
        self.written += data.len() as u64;
        Ok(data.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

/// Reads offsets `[base, end)`, encodes them as one Parquet file and sends
/// it in chunks; returns the records' statistics and the file's size.
fn encode_segment(
    partition: &Partition,
    base: u64,
    end: u64,
    tx: mpsc::Sender<Bytes>,
) -> Result<Stats> {
    let mut read = None;
    let mut stats = encode_batches(tx, ROW_GROUP_ROWS, &mut |emit| {
        read = Some(read_segment(partition, base, end, emit)?);
        Ok(())
    })?;
    if let Some(read) = read {
        stats.min_timestamp = read.min_timestamp;
        stats.max_timestamp = read.max_timestamp;
    }
    Ok(stats)
}

/// Where a producer of batches hands each one.
type Emit<'a> = &'a mut dyn FnMut(RecordBatch) -> Result<()>;

/// Encodes the batches `produce` hands over (of [`crate::schema::schema`],
/// in offset order) as one Parquet file, sent in chunks; returns how many
/// records it holds and its size (the timestamps are the producer's to
/// know).
fn encode_batches(
    tx: mpsc::Sender<Bytes>,
    row_group_rows: usize,
    produce: &mut dyn FnMut(Emit<'_>) -> Result<()>,
) -> Result<Stats> {
    let sink = ChunkSink::new(tx);
    let mut writer =
        ArrowWriter::try_new(sink, file_schema(), Some(writer_properties(row_group_rows)))?;
    let mut records = 0u64;
    produce(&mut |batch| {
        records += batch.num_rows() as u64;
        writer.write(&to_file_batch(&batch)?)?;
        if writer.in_progress_size() >= ROW_GROUP_BYTES {
            writer.flush()?;
        }
        Ok(())
    })?;
    // `into_inner` writes the footer and hands the sink back.
    let mut sink = writer.into_inner()?;
    sink.ship()
        .map_err(|e| TieringError::Internal(format!("handing the file to the upload: {e}")))?;
    Ok(Stats {
        records,
        min_timestamp: i64::MAX,
        max_timestamp: i64::MIN,
        bytes: sink.written,
    })
}

/// Reads offsets `[base, end)` and hands them to `emit` as record batches.
fn read_segment(
    partition: &Partition,
    base: u64,
    end: u64,
    emit: &mut dyn FnMut(RecordBatch) -> Result<()>,
) -> Result<Stats> {
    let mut cursor = partition.cursor(base)?.with_direct_io()?;
    let mut builder = ArrowBatchBuilder::new();
    let mut stats = Stats {
        records: 0,
        min_timestamp: i64::MAX,
        max_timestamp: i64::MIN,
        bytes: 0,
    };
    let mut failure = None;
    let id = partition.id();
    cursor.for_each_record(|record| {
        if record.offset >= end {
            return ControlFlow::Break(());
        }
        if let Err(e) = builder.push(id, record) {
            failure = Some(e);
            return ControlFlow::Break(());
        }
        stats.records += 1;
        stats.min_timestamp = stats.min_timestamp.min(record.timestamp);
        stats.max_timestamp = stats.max_timestamp.max(record.timestamp);
        let full = builder.is_full();
        if let Err(e) = if full {
            builder.finish().and_then(&mut *emit)
        } else {
            Ok(())
        } {
            failure = Some(e);
            return ControlFlow::Break(());
        }
        ControlFlow::Continue(())
    })?;
    if let Some(e) = failure {
        return Err(e);
    }
    if !builder.is_empty() {
        emit(builder.finish()?)?;
    }
    Ok(stats)
}

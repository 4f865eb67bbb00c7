//! Sealed segment → Arrow record batches → one Parquet file on the object store.
//!
//! Columns: `partition` int32, `offset` int64, `timestamp` timestamp(ms,
//! UTC), `key` utf8 (nullable), `value` utf8 (the record's JSON text),
//! `headers` map<utf8, utf8>. Rows are in offset order. zstd (level 1);
//! statistics and the page index on every column, so readers prune row
//! groups and pages by `offset` and `timestamp`. Row groups hold up to
//! [`ROW_GROUP_ROWS`] rows (or [`ROW_GROUP_BYTES`] encoded, for large
//! records): large enough to compress and write at full speed, small
//! enough that a time or offset filter skips most of a big file; pages
//! (~1 MiB) give finer pruning inside a row group.
//!
//! The segment is read, built into batches of [`BATCH_ROWS`] rows (or
//! [`BATCH_BYTES`] of record data) and encoded on a blocking thread;
//! finished chunks of the file go through a one-slot channel to its upload
//! ([`crate::upload`]): memory stays bounded by one batch, one encoded row
//! group and a few upload parts, whatever the segment's or records' size.

use std::ops::ControlFlow;
use std::sync::{Arc, LazyLock};

use arrow_array::builder::{
    Int32Builder, Int64Builder, MapBuilder, MapFieldNames, StringBuilder,
    TimestampMillisecondBuilder,
};
use arrow_array::cast::AsArray;
use arrow_array::{
    Array, ArrayRef, Int32Array, Int64Array, RecordBatch, StringArray, TimestampMillisecondArray,
};
use arrow_schema::{DataType, Field, Schema, SchemaRef, TimeUnit};
use bytes::Bytes;
use parquet::arrow::ArrowWriter;
use parquet::basic::{Compression, ZstdLevel};
use parquet::file::metadata::SortingColumn;
use parquet::file::properties::{EnabledStatistics, WriterProperties};
use parquet::schema::types::ColumnPath;
use strata_broker::Partition;
use strata_broker::batch::RecordView;
use strata_broker::segment::SegmentInfo;
use tokio::sync::mpsc;

use crate::error::{Result, TieringError};
use crate::manifest::ColdFile;
use crate::paths::DataFilePath;
use crate::upload::{FileUpload, UPLOAD_PART_BYTES};

/// Rows per Parquet row group.
pub const ROW_GROUP_ROWS: usize = 1 << 20;
/// Encoded bytes at which a row group is closed before [`ROW_GROUP_ROWS`]
/// (records of kilobytes and more): the writer holds a row group's pages
/// in memory until it closes.
pub const ROW_GROUP_BYTES: usize = 64 << 20;
/// Rows per Arrow batch handed from the segment reader to the writer.
pub const BATCH_ROWS: usize = 32 * 1024;
/// Bytes of record data (key, value, headers) at which a batch is handed
/// on before [`BATCH_ROWS`]: batches of large records stay small.
pub const BATCH_BYTES: usize = 8 << 20;

/// [`schema`] with `key` and `value` as `Utf8View`: the types the SQL
/// engine reads them as (decoding dictionary-encoded strings into views
/// copies nothing, and short keys compare inline).
pub fn view_schema() -> SchemaRef {
    static SCHEMA: LazyLock<SchemaRef> = LazyLock::new(|| {
        let fields: Vec<Field> = schema()
            .fields()
            .iter()
            .map(|f| match f.data_type() {
                DataType::Utf8 => f.as_ref().clone().with_data_type(DataType::Utf8View),
                _ => f.as_ref().clone(),
            })
            .collect();
        Arc::new(Schema::new(fields))
    });
    SCHEMA.clone()
}

/// The Arrow schema of every cold file (and of range reads).
pub fn schema() -> SchemaRef {
    static SCHEMA: LazyLock<SchemaRef> = LazyLock::new(|| {
        let entries = Field::new(
            "key_value",
            DataType::Struct(
                vec![
                    Field::new("key", DataType::Utf8, false),
                    Field::new("value", DataType::Utf8, true),
                ]
                .into(),
            ),
            false,
        );
        Arc::new(Schema::new(vec![
            Field::new("partition", DataType::Int32, false),
            Field::new("offset", DataType::Int64, false),
            Field::new(
                "timestamp",
                DataType::Timestamp(TimeUnit::Millisecond, Some("UTC".into())),
                false,
            ),
            Field::new("key", DataType::Utf8, true),
            Field::new("value", DataType::Utf8, false),
            Field::new("headers", DataType::Map(Arc::new(entries), false), false),
        ]))
    });
    SCHEMA.clone()
}

fn writer_properties() -> WriterProperties {
    WriterProperties::builder()
        .set_compression(Compression::ZSTD(ZstdLevel::try_new(1).unwrap_or_default()))
        .set_statistics_enabled(EnabledStatistics::Page)
        .set_max_row_group_row_count(Some(ROW_GROUP_ROWS))
        .set_sorting_columns(Some(vec![SortingColumn {
            column_idx: 1,
            descending: false,
            nulls_first: false,
        }]))
        // Offsets, timestamps and JSON values rarely repeat: dictionaries only cost time.
        .set_column_dictionary_enabled(ColumnPath::from("offset"), false)
        .set_column_dictionary_enabled(ColumnPath::from("timestamp"), false)
        .set_column_dictionary_enabled(ColumnPath::from("value"), false)
        // Nothing prunes by the JSON text: its min/max would cost a string
        // comparison per row and bytes in every page header for nothing.
        .set_column_statistics_enabled(ColumnPath::from("value"), EnabledStatistics::None)
        .build()
}

/// Typed access to the rows of a batch of [`schema`] (as read back from a
/// cold file, or built by [`BatchBuilder`]).
pub struct RecordColumns<'a> {
    partitions: &'a Int32Array,
    offsets: &'a Int64Array,
    stamps: &'a TimestampMillisecondArray,
    keys: &'a StringArray,
    values: &'a StringArray,
    header_bounds: &'a [i32],
    header_keys: &'a StringArray,
    header_values: &'a StringArray,
}

impl<'a> RecordColumns<'a> {
    /// The columns of `batch`, which must have the six columns of [`schema`].
    pub fn new(batch: &'a RecordBatch) -> Result<Self> {
        let bad = |what: &str| {
            TieringError::Internal(format!("a record batch has an unexpected {what} column"))
        };
        if batch.num_columns() != 6 {
            return Err(bad("number of"));
        }
        let headers = batch.column(5).as_map_opt().ok_or_else(|| bad("headers"))?;
        Ok(Self {
            partitions: batch
                .column(0)
                .as_primitive_opt()
                .ok_or_else(|| bad("partition"))?,
            offsets: batch
                .column(1)
                .as_primitive_opt()
                .ok_or_else(|| bad("offset"))?,
            stamps: batch
                .column(2)
                .as_primitive_opt()
                .ok_or_else(|| bad("timestamp"))?,
            keys: batch.column(3).as_string_opt().ok_or_else(|| bad("key"))?,
            values: batch
                .column(4)
                .as_string_opt()
                .ok_or_else(|| bad("value"))?,
            header_bounds: headers.value_offsets(),
            header_keys: headers
                .keys()
                .as_string_opt()
                .ok_or_else(|| bad("headers key"))?,
            header_values: headers
                .values()
                .as_string_opt()
                .ok_or_else(|| bad("headers value"))?,
        })
    }

    pub fn partition(&self, row: usize) -> u32 {
        self.partitions.value(row) as u32
    }

    pub fn offset(&self, row: usize) -> u64 {
        self.offsets.value(row) as u64
    }

    pub fn timestamp(&self, row: usize) -> i64 {
        self.stamps.value(row)
    }

    pub fn key(&self, row: usize) -> Option<&'a str> {
        self.keys.is_valid(row).then(|| self.keys.value(row))
    }

    /// The record's JSON text.
    pub fn value(&self, row: usize) -> &'a str {
        self.values.value(row)
    }

    /// The record's headers, in produce order.
    pub fn headers(&self, row: usize) -> impl Iterator<Item = (&'a str, &'a str)> + use<'a> {
        let (keys, values) = (self.header_keys, self.header_values);
        let range = self.header_bounds[row] as usize..self.header_bounds[row + 1] as usize;
        range.map(move |j| (keys.value(j), values.value(j)))
    }
}

/// Accumulates records into Arrow arrays of [`schema`].
pub struct BatchBuilder {
    partition: Int32Builder,
    offset: Int64Builder,
    timestamp: TimestampMillisecondBuilder,
    key: StringBuilder,
    value: StringBuilder,
    headers: MapBuilder<StringBuilder, StringBuilder>,
    rows: usize,
    bytes: usize,
}

impl BatchBuilder {
    /// An empty builder sized for [`BATCH_ROWS`] rows.
    pub fn new() -> Self {
        let names = MapFieldNames {
            entry: "key_value".into(),
            key: "key".into(),
            value: "value".into(),
        };
        Self {
            partition: Int32Builder::with_capacity(BATCH_ROWS),
            offset: Int64Builder::with_capacity(BATCH_ROWS),
            timestamp: TimestampMillisecondBuilder::with_capacity(BATCH_ROWS).with_timezone("UTC"),
            key: StringBuilder::with_capacity(BATCH_ROWS, BATCH_ROWS * 16),
            value: StringBuilder::with_capacity(BATCH_ROWS, BATCH_ROWS * 128),
            headers: MapBuilder::new(Some(names), StringBuilder::new(), StringBuilder::new()),
            rows: 0,
            bytes: 0,
        }
    }

    /// Appends one record; fails only on text that is not UTF-8.
    pub fn push(&mut self, partition: u32, record: &RecordView<'_>) -> Result<()> {
        let offset = record.offset;
        let text = |bytes| {
            std::str::from_utf8(bytes)
                .map_err(|e| TieringError::Internal(format!("record {offset} is not UTF-8: {e}")))
        };
        self.partition.append_value(partition as i32);
        self.offset.append_value(record.offset as i64);
        self.timestamp.append_value(record.timestamp);
        match record.key {
            Some(key) => self.key.append_value(text(key)?),
            None => self.key.append_null(),
        }
        self.value.append_value(text(record.value)?);
        for (name, value) in record.headers() {
            self.headers.keys().append_value(text(name)?);
            self.headers.values().append_value(text(value)?);
        }
        self.headers.append(true)?;
        self.rows += 1;
        self.bytes += record.data_len();
        Ok(())
    }

    /// Bytes of record data (keys, values, headers) appended since the last
    /// [`BatchBuilder::finish`].
    pub fn data_bytes(&self) -> usize {
        self.bytes
    }

    /// Whether the batch should be handed on: [`BATCH_ROWS`] rows or
    /// [`BATCH_BYTES`] of record data.
    pub fn is_full(&self) -> bool {
        self.rows >= BATCH_ROWS || self.bytes >= BATCH_BYTES
    }

    /// Rows appended since the last [`BatchBuilder::finish`].
    pub fn len(&self) -> usize {
        self.rows
    }

    /// True when no rows wait to be finished.
    pub fn is_empty(&self) -> bool {
        self.rows == 0
    }

    /// The rows appended so far as a batch; the builder starts over empty.
    pub fn finish(&mut self) -> Result<RecordBatch> {
        let columns: Vec<ArrayRef> = vec![
            Arc::new(self.partition.finish()),
            Arc::new(self.offset.finish()),
            Arc::new(self.timestamp.finish()),
            Arc::new(self.key.finish()),
            Arc::new(self.value.finish()),
            Arc::new(self.headers.finish()),
        ];
        self.rows = 0;
        self.bytes = 0;
        Ok(RecordBatch::try_new(schema(), columns)?)
    }
}

impl Default for BatchBuilder {
    fn default() -> Self {
        Self::new()
    }
}

/// Summary of a converted segment, before it is committed.
#[derive(Debug, Clone, Copy)]
struct Stats {
    records: u64,
    min_timestamp: i64,
    max_timestamp: i64,
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
    mut upload: FileUpload,
    path: &DataFilePath,
    partition: Arc<Partition>,
    segment: &SegmentInfo,
) -> Result<ColdFile> {
    let (tx, mut rx) = mpsc::channel::<Bytes>(1);
    let (base, end) = (segment.base_offset, segment.end_offset);
    let encoder = tokio::task::spawn_blocking(move || encode_segment(&partition, base, end, tx));
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
    let encoded = encoder.await.unwrap_or_else(|e| {
        Err(TieringError::Internal(format!(
            "segment encoder failed: {e}"
        )))
    });
    let finished = match (uploaded, encoded) {
        (Ok(()), Ok((stats, bytes))) if stats.records == end - base => {
            upload.finish().await.map(|()| (stats, bytes))
        }
        (Ok(()), Ok((stats, _))) => Err(TieringError::Internal(format!(
            "segment {base}..{end} yielded {} records",
            stats.records
        ))),
        (Err(e), _) | (_, Err(e)) => Err(e),
    };
    let (stats, bytes) = match finished {
        Ok(done) => done,
        Err(e) => {
            // Don't leave parts of an unfinished multipart upload behind.
            upload.abort().await;
            return Err(e);
        }
    };
    Ok(ColdFile {
        path: path.0.to_string(),
        first_offset: base,
        last_offset: end - 1,
        min_timestamp: stats.min_timestamp,
        max_timestamp: stats.max_timestamp,
        records: stats.records,
        bytes,
    })
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
    let block = crate::upload::DIRECT_BLOCK;
    let mut buf: Vec<u8> = Vec::with_capacity(UPLOAD_PART_BYTES + block);
    let start = buf.as_ptr().align_offset(block);
    buf.resize(start, 0);
    (buf, start)
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
) -> Result<(Stats, u64)> {
    let sink = ChunkSink::new(tx);
    let mut writer = ArrowWriter::try_new(sink, schema(), Some(writer_properties()))?;
    let stats = read_segment(partition, base, end, &mut |batch| {
        writer.write(&batch)?;
        if writer.in_progress_size() >= ROW_GROUP_BYTES {
            writer.flush()?;
        }
        Ok(())
    })?;
    // `into_inner` writes the footer and hands the sink back.
    let mut sink = writer.into_inner()?;
    sink.ship()
        .map_err(|e| TieringError::Internal(format!("handing the file to the upload: {e}")))?;
    Ok((stats, sink.written))
}

/// Reads offsets `[base, end)` and hands them to `emit` as record batches.
fn read_segment(
    partition: &Partition,
    base: u64,
    end: u64,
    emit: &mut dyn FnMut(RecordBatch) -> Result<()>,
) -> Result<Stats> {
    let mut cursor = partition.cursor(base)?.with_direct_io()?;
    let mut builder = BatchBuilder::new();
    let mut stats = Stats {
        records: 0,
        min_timestamp: i64::MAX,
        max_timestamp: i64::MIN,
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
    if builder.rows > 0 {
        emit(builder.finish()?)?;
    }
    Ok(stats)
}

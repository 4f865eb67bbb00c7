//! The Arrow shape of a topic's records, one owner for every crate: the
//! column indexes ([`col`]), the schema of records in memory and range
//! reads ([`schema`], [`view_schema`] for SQL) and of cold files
//! ([`file_schema`], with [`to_file_batch`] and [`from_file_batch`]
//! between the two), typed access to a batch's rows ([`RecordColumns`])
//! and building batches from log records ([`ArrowBatchBuilder`]).
//!
//! Columns: `partition` int32, `offset` int64, `timestamp` timestamp(ms,
//! UTC; µs in cold files), `key` utf8 (nullable), `value` utf8 (the
//! record's JSON text), `headers` map<utf8, utf8>.

use std::sync::{Arc, LazyLock};

use arrow_array::builder::{
    Int32Builder, Int64Builder, MapBuilder, MapFieldNames, StringBuilder,
    TimestampMillisecondBuilder,
};
use arrow_array::cast::AsArray;
use arrow_array::types::{TimestampMicrosecondType, TimestampMillisecondType};
use arrow_array::{
    Array, ArrayRef, Int32Array, Int64Array, RecordBatch, StringArray, TimestampMicrosecondArray,
    TimestampMillisecondArray,
};
use arrow_schema::{DataType, Field, Schema, SchemaRef, TimeUnit};
use strata_broker::batch::RecordView;

use crate::error::{Result, TieringError};

/// Column indexes of [`schema`].
pub mod col {
    pub const PARTITION: usize = 0;
    pub const OFFSET: usize = 1;
    pub const TIMESTAMP: usize = 2;
    pub const KEY: usize = 3;
    pub const VALUE: usize = 4;
    pub const HEADERS: usize = 5;
    /// Every column, in order.
    pub const ALL: [usize; 6] = [PARTITION, OFFSET, TIMESTAMP, KEY, VALUE, HEADERS];
}

/// Rows per Arrow batch handed from the segment reader to the writer.
pub const OFFLOAD_BATCH_ROWS: usize = 32 * 1024;
/// Bytes of record data (key, value, headers) at which a batch is handed
/// on before [`OFFLOAD_BATCH_ROWS`]: batches of large records stay small.
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

/// The Parquet field ids of [`file_schema`]'s columns (and of the
/// `headers` map's key and value), so that the files are native Iceberg
/// data files and readers can match columns by id, not name.
pub mod field_id {
    pub const PARTITION: i32 = 1;
    pub const OFFSET: i32 = 2;
    pub const TIMESTAMP: i32 = 3;
    pub const KEY: i32 = 4;
    pub const VALUE: i32 = 5;
    pub const HEADERS: i32 = 6;
    pub const HEADER_KEY: i32 = 7;
    pub const HEADER_VALUE: i32 = 8;
}

/// Microseconds per millisecond: the unit step between [`schema`] and
/// [`file_schema`].
const MICROS_PER_MILLI: i64 = 1000;

/// The schema cold files are written in: [`schema`] with `timestamp` in
/// microseconds, the unit Delta Lake and Iceberg use (Spark's Iceberg
/// reader crashed on millisecond files), and a Parquet field id on every
/// column. The values stay whole milliseconds. Files written before hold
/// milliseconds and no ids; both are read ([`from_file_batch`]).
pub fn file_schema() -> SchemaRef {
    static SCHEMA: LazyLock<SchemaRef> = LazyLock::new(|| {
        let with_id = |field: &Field, id: i32| {
            field.clone().with_metadata(
                [(
                    parquet::arrow::PARQUET_FIELD_ID_META_KEY.to_string(),
                    id.to_string(),
                )]
                .into(),
            )
        };
        let memory = schema();
        let ids = [
            field_id::PARTITION,
            field_id::OFFSET,
            field_id::TIMESTAMP,
            field_id::KEY,
            field_id::VALUE,
            field_id::HEADERS,
        ];
        let fields: Vec<Field> = memory
            .fields()
            .iter()
            .zip(ids)
            .map(|(field, id)| match field.data_type() {
                DataType::Timestamp(_, tz) => with_id(
                    &field
                        .as_ref()
                        .clone()
                        .with_data_type(DataType::Timestamp(TimeUnit::Microsecond, tz.clone())),
                    id,
                ),
                DataType::Map(entries, sorted) => {
                    let DataType::Struct(kv) = entries.data_type() else {
                        return with_id(field, id);
                    };
                    let kv: Vec<Field> = kv
                        .iter()
                        .zip([field_id::HEADER_KEY, field_id::HEADER_VALUE])
                        .map(|(f, id)| with_id(f, id))
                        .collect();
                    let entries = entries
                        .as_ref()
                        .clone()
                        .with_data_type(DataType::Struct(kv.into()));
                    with_id(
                        &field
                            .as_ref()
                            .clone()
                            .with_data_type(DataType::Map(Arc::new(entries), *sorted)),
                        id,
                    )
                }
                _ => with_id(field, id),
            })
            .collect();
        Arc::new(Schema::new(fields))
    });
    SCHEMA.clone()
}

/// How many of a cold file's timestamp units make one millisecond, by the
/// file's Arrow schema: 1000 for files of [`file_schema`], 1 for the
/// millisecond files written before.
pub fn units_per_ms(file: &Schema) -> i64 {
    match file.field_with_name("timestamp").map(|f| f.data_type()) {
        Ok(DataType::Timestamp(TimeUnit::Microsecond, _)) => MICROS_PER_MILLI,
        _ => 1,
    }
}

/// `batch` (of [`schema`]) as it is written to a cold file ([`file_schema`]).
pub fn to_file_batch(batch: &RecordBatch) -> Result<RecordBatch> {
    let mut columns = batch.columns().to_vec();
    let millis = columns[col::TIMESTAMP]
        .as_primitive_opt::<TimestampMillisecondType>()
        .ok_or_else(|| TieringError::Internal("a batch without millisecond timestamps".into()))?;
    let micros: TimestampMicrosecondArray = millis
        .unary::<_, TimestampMicrosecondType>(|ms| ms.saturating_mul(MICROS_PER_MILLI))
        .with_timezone_opt(millis.timezone());
    columns[col::TIMESTAMP] = Arc::new(micros);
    // The map's key and value carry their field ids in its type.
    let file = file_schema();
    let headers = file.field(col::HEADERS).data_type();
    columns[col::HEADERS] =
        arrow_array::make_array(retype(columns[col::HEADERS].to_data(), headers)?);
    Ok(RecordBatch::try_new(file, columns)?)
}

/// `data` as type `to`, which differs from its own only in the metadata
/// of nested fields (no copy: the buffers stay).
fn retype(data: arrow_data::ArrayData, to: &DataType) -> Result<arrow_data::ArrayData> {
    let children = match to {
        DataType::Map(entries, _) => data
            .child_data()
            .iter()
            .map(|child| retype(child.clone(), entries.data_type()))
            .collect::<Result<Vec<_>>>()?,
        DataType::Struct(fields) => data
            .child_data()
            .iter()
            .zip(fields.iter())
            .map(|(child, field)| retype(child.clone(), field.data_type()))
            .collect::<Result<Vec<_>>>()?,
        _ => return Ok(data),
    };
    Ok(data
        .into_builder()
        .data_type(to.clone())
        .child_data(children)
        .build()?)
}

/// A batch decoded from a cold file with [`read_schema`] (any projection
/// of its columns), with `timestamp`, if there, in milliseconds whatever
/// the file's unit: the batches of [`schema`] (or [`view_schema`]) that
/// readers expect. Microseconds that are not whole milliseconds (a file
/// another writer made) round toward the past, as request timestamps do.
pub fn from_file_batch(batch: RecordBatch) -> Result<RecordBatch> {
    let schema = batch.schema();
    let Ok(at) = schema.index_of("timestamp") else {
        return Ok(batch);
    };
    let Some(micros) = batch
        .column(at)
        .as_primitive_opt::<TimestampMicrosecondType>()
    else {
        return Ok(batch);
    };
    let millis: TimestampMillisecondArray = micros
        .unary::<_, TimestampMillisecondType>(|us| us.div_euclid(MICROS_PER_MILLI))
        .with_timezone_opt(micros.timezone());
    let mut fields: Vec<Field> = schema.fields().iter().map(|f| f.as_ref().clone()).collect();
    fields[at] = fields[at]
        .clone()
        .with_data_type(millis.data_type().clone());
    let mut columns = batch.columns().to_vec();
    columns[at] = Arc::new(millis);
    Ok(RecordBatch::try_new(
        Arc::new(Schema::new(fields)),
        columns,
    )?)
}

/// The schema to decode a cold file with: [`schema`] (or, for SQL, which
/// wants `key` and `value` as views, [`view_schema`]) in the file's
/// timestamp unit, without the file's field ids, so that what is decoded
/// differs from what readers expect only in that unit ([`from_file_batch`]).
pub fn read_schema(file: &Schema, views: bool) -> SchemaRef {
    let memory = if views { view_schema() } else { schema() };
    if units_per_ms(file) == 1 {
        return memory;
    }
    let fields: Vec<Field> = memory
        .fields()
        .iter()
        .map(|f| match f.data_type() {
            DataType::Timestamp(_, tz) => f
                .as_ref()
                .clone()
                .with_data_type(DataType::Timestamp(TimeUnit::Microsecond, tz.clone())),
            _ => f.as_ref().clone(),
        })
        .collect();
    Arc::new(Schema::new(fields))
}

/// Typed access to the rows of a batch of [`schema`] (as read back from a
/// cold file, or built by [`ArrowBatchBuilder`]).
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
        if batch.num_columns() != col::ALL.len() {
            return Err(bad("number of"));
        }
        let headers = batch
            .column(col::HEADERS)
            .as_map_opt()
            .ok_or_else(|| bad("headers"))?;
        Ok(Self {
            partitions: batch
                .column(col::PARTITION)
                .as_primitive_opt()
                .ok_or_else(|| bad("partition"))?,
            offsets: batch
                .column(col::OFFSET)
                .as_primitive_opt()
                .ok_or_else(|| bad("offset"))?,
            stamps: batch
                .column(col::TIMESTAMP)
                .as_primitive_opt()
                .ok_or_else(|| bad("timestamp"))?,
            keys: batch
                .column(col::KEY)
                .as_string_opt()
                .ok_or_else(|| bad("key"))?,
            values: batch
                .column(col::VALUE)
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
pub struct ArrowBatchBuilder {
    partition: Int32Builder,
    offset: Int64Builder,
    timestamp: TimestampMillisecondBuilder,
    key: StringBuilder,
    value: StringBuilder,
    headers: MapBuilder<StringBuilder, StringBuilder>,
    rows: usize,
    bytes: usize,
}

impl ArrowBatchBuilder {
    /// An empty builder sized for [`OFFLOAD_BATCH_ROWS`] rows.
    pub fn new() -> Self {
        let names = MapFieldNames {
            entry: "key_value".into(),
            key: "key".into(),
            value: "value".into(),
        };
        Self {
            partition: Int32Builder::with_capacity(OFFLOAD_BATCH_ROWS),
            offset: Int64Builder::with_capacity(OFFLOAD_BATCH_ROWS),
            timestamp: TimestampMillisecondBuilder::with_capacity(OFFLOAD_BATCH_ROWS)
                .with_timezone("UTC"),
            key: StringBuilder::with_capacity(OFFLOAD_BATCH_ROWS, OFFLOAD_BATCH_ROWS * 16),
            value: StringBuilder::with_capacity(OFFLOAD_BATCH_ROWS, OFFLOAD_BATCH_ROWS * 128),
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
        let key = record.key.map(text).transpose()?;
        let value = text(record.value)?;
        let headers = record
            .headers()
            .map(|(name, value)| Ok((text(name)?, text(value)?)));
        self.append(partition, offset, record.timestamp, key, value, headers)
    }

    /// Appends one record given as its parts (a record kept outside a
    /// batch, such as a key index's copy).
    pub fn push_parts(
        &mut self,
        partition: u32,
        offset: u64,
        timestamp: i64,
        key: Option<&str>,
        value: &str,
        headers: &[(String, String)],
    ) -> Result<()> {
        let headers = headers.iter().map(|(n, v)| Ok((n.as_str(), v.as_str())));
        self.append(partition, offset, timestamp, key, value, headers)
    }

    fn append<'h>(
        &mut self,
        partition: u32,
        offset: u64,
        timestamp: i64,
        key: Option<&str>,
        value: &str,
        headers: impl Iterator<Item = Result<(&'h str, &'h str)>>,
    ) -> Result<()> {
        self.partition.append_value(partition as i32);
        self.offset.append_value(offset as i64);
        self.timestamp.append_value(timestamp);
        match key {
            Some(key) => self.key.append_value(key),
            None => self.key.append_null(),
        }
        self.value.append_value(value);
        let mut header_bytes = 0;
        for header in headers {
            let (name, value) = header?;
            self.headers.keys().append_value(name);
            self.headers.values().append_value(value);
            header_bytes += name.len() + value.len();
        }
        self.headers.append(true)?;
        self.rows += 1;
        self.bytes +=
            strata_broker::batch::record_size(key.map_or(0, str::len), value.len(), header_bytes);
        Ok(())
    }

    /// Bytes of record data (keys, values, headers) appended since the last
    /// [`ArrowBatchBuilder::finish`].
    pub fn data_bytes(&self) -> usize {
        self.bytes
    }

    /// Whether the batch should be handed on: [`OFFLOAD_BATCH_ROWS`] rows or
    /// [`BATCH_BYTES`] of record data.
    pub fn is_full(&self) -> bool {
        self.rows >= OFFLOAD_BATCH_ROWS || self.bytes >= BATCH_BYTES
    }

    /// Rows appended since the last [`ArrowBatchBuilder::finish`].
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

impl Default for ArrowBatchBuilder {
    fn default() -> Self {
        Self::new()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn id(field: &Field) -> Option<&str> {
        field
            .metadata()
            .get(parquet::arrow::PARQUET_FIELD_ID_META_KEY)
            .map(String::as_str)
    }

    #[test]
    fn files_are_microseconds_with_a_field_id_on_every_column() {
        let file = file_schema();
        let ids: Vec<_> = file.fields().iter().map(|f| id(f)).collect();
        let want: Vec<Option<&str>> = ["1", "2", "3", "4", "5", "6"].map(Some).into();
        assert_eq!(ids, want);
        assert_eq!(units_per_ms(&file), 1000);
        assert_eq!(units_per_ms(&schema()), 1);
        let DataType::Map(entries, _) = file.field(col::HEADERS).data_type() else {
            panic!("headers is a map")
        };
        let DataType::Struct(kv) = entries.data_type() else {
            panic!("entries are a struct")
        };
        assert_eq!(id(&kv[0]), Some("7"));
        assert_eq!(id(&kv[1]), Some("8"));
    }

    #[test]
    fn batches_go_to_files_and_back_unchanged() {
        let mut builder = ArrowBatchBuilder::new();
        let headers = [("a".to_string(), "b".to_string())];
        builder
            .push_parts(3, 10, 1_700_000_000_123, Some("k"), "{}", &headers)
            .unwrap();
        builder.push_parts(3, 11, -5, None, "1", &[]).unwrap();
        let batch = builder.finish().unwrap();
        let file = to_file_batch(&batch).unwrap();
        assert_eq!(file.schema(), file_schema());
        let stamps = file
            .column(col::TIMESTAMP)
            .as_primitive::<TimestampMicrosecondType>();
        assert_eq!(
            stamps.values().to_vec(),
            vec![1_700_000_000_123_000, -5_000]
        );
        // As read back: the file's columns without their ids, then converted.
        let read = RecordBatch::try_new(
            read_schema(&file_schema(), false),
            file.columns()
                .iter()
                .zip(read_schema(&file_schema(), false).fields())
                .map(|(c, f)| arrow_array::make_array(retype(c.to_data(), f.data_type()).unwrap()))
                .collect(),
        )
        .unwrap();
        assert_eq!(from_file_batch(read).unwrap(), batch);
    }
}

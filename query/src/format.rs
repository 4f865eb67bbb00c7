//! Output formats: record batches in, body chunks out, one batch at a time,
//! so a result of any size streams with bounded memory.
//!
//! Two shapes: *records* (range reads, snapshots) are the API's record
//! objects (`value` is the produced JSON, not a string); a *table* (SQL,
//! views) is whatever columns the query returns. `arrow` (IPC stream) and
//! `parquet` carry the batches natively in both shapes.

use std::sync::Arc;

use arrow::array::{Array, RecordBatch, StringArray};
use arrow::datatypes::{DataType, Field, Schema, SchemaRef};
use arrow::ipc::writer::StreamWriter;
use arrow::json::writer::LineDelimited;
use arrow::json::{StructMode, WriterBuilder};
use bytes::Bytes;
use parquet::arrow::ArrowWriter;
use parquet::basic::{Compression, ZstdLevel};
use parquet::file::properties::WriterProperties;
use strata_broker::render::{RecordFields, write_fields};
use strata_broker::timestamp::TimestampWriter;
use strata_tiering::schema::RecordColumns;

use crate::error::{QueryError, Result};
use crate::scan::col;

/// A response format, as named by `format=`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Format {
    Ndjson,
    Json,
    Csv,
    Arrow,
    Parquet,
}

impl Format {
    /// Every name `parse` accepts.
    pub const NAMES: &'static str = "ndjson, json, csv, arrow, parquet";

    /// The format named `text`; anything else is `invalid_request`.
    pub fn parse(text: &str) -> Result<Self> {
        match text {
            "ndjson" => Ok(Self::Ndjson),
            "json" => Ok(Self::Json),
            "csv" => Ok(Self::Csv),
            "arrow" => Ok(Self::Arrow),
            "parquet" => Ok(Self::Parquet),
            other => Err(QueryError::InvalidRequest(format!(
                "unknown format {:?}; use one of {}",
                other.chars().take(40).collect::<String>(),
                Self::NAMES
            ))),
        }
    }

    /// The `Content-Type` of a response in this format.
    pub fn content_type(self) -> &'static str {
        match self {
            Self::Ndjson => "application/x-ndjson",
            Self::Json => "application/json",
            Self::Csv => "text/csv; charset=utf-8",
            Self::Arrow => "application/vnd.apache.arrow.stream",
            Self::Parquet => "application/vnd.apache.parquet",
        }
    }
}

/// What the rows are.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Shape {
    /// The topic schema's six columns, written as the API's record objects.
    Records,
    /// Any columns, written as a table.
    Table,
}

/// Response timestamps: RFC 3339, UTC, exactly milliseconds.
const TIMESTAMP_TZ_FORMAT: &str = "%Y-%m-%dT%H:%M:%S%.3fZ";
const TIMESTAMP_FORMAT: &str = "%Y-%m-%dT%H:%M:%S%.3f";
/// Parquet output flushes a row group at this many buffered bytes.
const PARQUET_ROW_GROUP_BYTES: usize = 16 * 1024 * 1024;

/// Encodes a stream of batches of one schema into body chunks.
pub struct Encoder {
    inner: Inner,
    rows: u64,
    /// The schema written: the input's, with `Utf8View` columns as `Utf8`.
    schema: SchemaRef,
    /// Whether batches need casting to `schema`.
    cast: bool,
}

enum Inner {
    Records {
        format: Format,
        times: TimestampWriter,
    },
    TableJson {
        writer: arrow::json::Writer<Vec<u8>, LineDelimited>,
        columns: Vec<String>,
    },
    TableNdjson {
        writer: arrow::json::Writer<Vec<u8>, LineDelimited>,
    },
    TableCsv {
        schema: SchemaRef,
    },
    Arrow {
        writer: StreamWriter<Vec<u8>>,
    },
    Parquet {
        writer: ArrowWriter<Vec<u8>>,
    },
}

impl Encoder {
    /// An encoder of `format` for batches of `schema`. String views (the
    /// SQL engine's strings) are written as plain strings, so every output
    /// has the types the API documents.
    pub fn new(format: Format, shape: Shape, schema: &SchemaRef) -> Result<Self> {
        let input = schema;
        let schema = &plain_strings(input);
        let inner = match (format, shape) {
            (Format::Arrow, _) => Inner::Arrow {
                writer: StreamWriter::try_new(Vec::new(), schema)?,
            },
            (Format::Parquet, _) => Inner::Parquet {
                writer: ArrowWriter::try_new(Vec::new(), schema.clone(), Some(parquet_props()))?,
            },
            (_, Shape::Records) => {
                if schema.fields().len() != col::ALL.len() {
                    return Err(QueryError::Internal(
                        "record output needs the topic's six columns".into(),
                    ));
                }
                Inner::Records {
                    format,
                    times: TimestampWriter::default(),
                }
            }
            (Format::Json, Shape::Table) => Inner::TableJson {
                writer: json_writer(StructMode::ListOnly),
                columns: schema.fields().iter().map(|f| f.name().clone()).collect(),
            },
            (Format::Ndjson, Shape::Table) => Inner::TableNdjson {
                writer: json_writer(StructMode::ObjectOnly),
            },
            (Format::Csv, Shape::Table) => Inner::TableCsv {
                schema: csv_schema(schema),
            },
        };
        Ok(Self {
            inner,
            rows: 0,
            cast: schema != input,
            schema: schema.clone(),
        })
    }

    /// Bytes that open the body.
    pub fn start(&mut self) -> Result<Bytes> {
        let mut out = Vec::new();
        match &mut self.inner {
            Inner::Records { format, .. } => match format {
                Format::Json => out.extend_from_slice(b"{\"records\":["),
                Format::Csv => {
                    out.extend_from_slice(b"partition,offset,timestamp,key,value,headers\n")
                }
                _ => {}
            },
            Inner::TableJson { columns, .. } => {
                out.extend_from_slice(b"{\"columns\":");
                serde_json::to_writer(&mut out, columns)
                    .map_err(|e| QueryError::Internal(e.to_string()))?;
                out.extend_from_slice(b",\"rows\":[");
            }
            Inner::TableCsv { schema } => {
                out = write_csv(&RecordBatch::new_empty(schema.clone()), true)?;
            }
            Inner::Arrow { writer } => out = std::mem::take(writer.get_mut()),
            Inner::TableNdjson { .. } | Inner::Parquet { .. } => {}
        }
        Ok(out.into())
    }

    /// The bytes of one batch.
    pub fn batch(&mut self, batch: &RecordBatch) -> Result<Bytes> {
        let cast;
        let batch = if self.cast {
            cast = cast_batch(batch, &self.schema)?;
            &cast
        } else {
            batch
        };
        let first = self.rows == 0;
        self.rows += batch.num_rows() as u64;
        let out = match &mut self.inner {
            Inner::Records { format, times } => {
                let mut out = Vec::with_capacity(batch.num_rows() * 160);
                write_records(batch, *format, times, first, &mut out)?;
                out
            }
            Inner::TableJson { writer, .. } => {
                writer.write(batch)?;
                let lines = std::mem::take(writer.get_mut());
                rows_as_array_items(&lines, first)
            }
            Inner::TableNdjson { writer } => {
                writer.write(batch)?;
                std::mem::take(writer.get_mut())
            }
            Inner::TableCsv { schema } => write_csv(&nested_as_json(batch, schema)?, false)?,
            Inner::Arrow { writer } => {
                writer.write(batch)?;
                std::mem::take(writer.get_mut())
            }
            Inner::Parquet { writer } => {
                writer.write(batch)?;
                if writer.in_progress_size() >= PARQUET_ROW_GROUP_BYTES {
                    writer.flush()?;
                }
                std::mem::take(writer.inner_mut())
            }
        };
        Ok(out.into())
    }

    /// Bytes that close the body.
    pub fn finish(mut self) -> Result<Bytes> {
        let out = match &mut self.inner {
            Inner::Records { format, .. } => match format {
                Format::Json => b"]}".to_vec(),
                _ => Vec::new(),
            },
            Inner::TableJson { .. } => b"]}".to_vec(),
            Inner::TableNdjson { .. } | Inner::TableCsv { .. } => Vec::new(),
            Inner::Arrow { writer } => {
                writer.finish()?;
                std::mem::take(writer.get_mut())
            }
            Inner::Parquet { writer } => {
                writer.finish()?;
                std::mem::take(writer.inner_mut())
            }
        };
        Ok(out.into())
    }
}

/// `schema` with top-level `Utf8View` fields as `Utf8`.
fn plain_strings(schema: &SchemaRef) -> SchemaRef {
    if !schema
        .fields()
        .iter()
        .any(|f| matches!(f.data_type(), DataType::Utf8View | DataType::Union(..)))
    {
        return schema.clone();
    }
    let fields: Vec<Field> = schema
        .fields()
        .iter()
        .map(|f| match f.data_type() {
            DataType::Utf8View => f.as_ref().clone().with_data_type(DataType::Utf8),
            // `value->'page'` (json_get) is a union of JSON kinds: written as
            // the member's text, as `->>` would give it.
            DataType::Union(..) => f
                .as_ref()
                .clone()
                .with_data_type(DataType::Utf8)
                .with_nullable(true),
            _ => f.as_ref().clone(),
        })
        .collect();
    Arc::new(Schema::new_with_metadata(fields, schema.metadata().clone()))
}

fn cast_batch(batch: &RecordBatch, schema: &SchemaRef) -> Result<RecordBatch> {
    let columns = batch
        .columns()
        .iter()
        .zip(schema.fields())
        .map(|(c, f)| match c.data_type() {
            DataType::Union(..) => union_as_text(c.as_ref()),
            _ => Ok(arrow::compute::cast(c, f.data_type())?),
        })
        .collect::<Result<Vec<_>>>()?;
    let options = arrow::array::RecordBatchOptions::new().with_row_count(Some(batch.num_rows()));
    Ok(RecordBatch::try_new_with_options(
        schema.clone(),
        columns,
        &options,
    )?)
}

/// Each value of a union as the text of the member it holds (a string as
/// itself, a number or boolean as written, JSON arrays and objects as their
/// JSON text); null where the member is null.
fn union_as_text(array: &dyn Array) -> Result<Arc<dyn Array>> {
    let union = array
        .as_any()
        .downcast_ref::<arrow::array::UnionArray>()
        .ok_or_else(|| QueryError::Internal("a union column is not a UnionArray".into()))?;
    let mut out = arrow::array::StringBuilder::with_capacity(union.len(), union.len() * 16);
    for i in 0..union.len() {
        let child = union.child(union.type_id(i));
        let at = union.value_offset(i);
        if child.data_type() == &DataType::Null || child.is_null(at) {
            out.append_null();
        } else {
            out.append_value(arrow::util::display::array_value_to_string(child, at)?);
        }
    }
    Ok(Arc::new(out.finish()))
}

fn json_writer(mode: StructMode) -> arrow::json::Writer<Vec<u8>, LineDelimited> {
    WriterBuilder::new()
        .with_explicit_nulls(true)
        .with_struct_mode(mode)
        .with_timestamp_tz_format(TIMESTAMP_TZ_FORMAT.into())
        .with_timestamp_format(TIMESTAMP_FORMAT.into())
        .build::<_, LineDelimited>(Vec::new())
}

/// One batch as CSV (the header line alone when `header`).
fn write_csv(batch: &RecordBatch, header: bool) -> Result<Vec<u8>> {
    let mut writer = arrow::csv::WriterBuilder::new()
        .with_header(header)
        .with_timestamp_tz_format(TIMESTAMP_TZ_FORMAT.into())
        .with_timestamp_format(TIMESTAMP_FORMAT.into())
        .build(Vec::new());
    writer.write(batch)?;
    Ok(writer.into_inner())
}

fn parquet_props() -> WriterProperties {
    WriterProperties::builder()
        .set_compression(Compression::ZSTD(ZstdLevel::try_new(1).unwrap_or_default()))
        .build()
}

/// Lines of `[..]` rows as items of one JSON array (`,` between them).
fn rows_as_array_items(lines: &[u8], first: bool) -> Vec<u8> {
    let mut out = Vec::with_capacity(lines.len() + 1);
    let mut need_comma = !first;
    for line in lines.split(|&b| b == b'\n').filter(|l| !l.is_empty()) {
        if need_comma {
            out.push(b',');
        }
        out.extend_from_slice(line);
        need_comma = true;
    }
    out
}

fn is_nested(data_type: &DataType) -> bool {
    data_type.is_nested() || matches!(data_type, DataType::Map(..))
}

/// `schema` with nested columns (maps, lists, structs) as JSON text: CSV
/// has no other way to hold them.
fn csv_schema(schema: &SchemaRef) -> SchemaRef {
    let fields: Vec<Field> = schema
        .fields()
        .iter()
        .map(|f| {
            if is_nested(f.data_type()) {
                Field::new(f.name(), DataType::Utf8, true)
            } else {
                f.as_ref().clone()
            }
        })
        .collect();
    Arc::new(Schema::new(fields))
}

fn nested_as_json(batch: &RecordBatch, schema: &SchemaRef) -> Result<RecordBatch> {
    if !batch
        .schema()
        .fields()
        .iter()
        .any(|f| is_nested(f.data_type()))
    {
        return Ok(batch.clone());
    }
    let columns = batch
        .columns()
        .iter()
        .map(|c| {
            if is_nested(c.data_type()) {
                json_text(c)
            } else {
                Ok(c.clone())
            }
        })
        .collect::<Result<Vec<_>>>()?;
    Ok(RecordBatch::try_new(schema.clone(), columns)?)
}

/// Each value of `array` as JSON text.
fn json_text(array: &Arc<dyn Array>) -> Result<Arc<dyn Array>> {
    let field = Field::new("v", array.data_type().clone(), true);
    let batch = RecordBatch::try_new(Arc::new(Schema::new(vec![field])), vec![array.clone()])?;
    let mut writer = json_writer(StructMode::ListOnly);
    writer.write(&batch)?;
    let lines = writer.into_inner();
    let texts: Vec<Option<&str>> = lines
        .split(|&b| b == b'\n')
        .filter(|l| !l.is_empty())
        .zip(0..)
        .map(|(line, i)| {
            // Each line is `[value]`.
            let inner = &line[1..line.len() - 1];
            (array.is_valid(i)).then(|| std::str::from_utf8(inner).unwrap_or_default())
        })
        .collect();
    Ok(Arc::new(StringArray::from(texts)))
}

/// Writes the rows of a six-column topic batch as records.
fn write_records(
    batch: &RecordBatch,
    format: Format,
    times: &mut TimestampWriter,
    first: bool,
    out: &mut Vec<u8>,
) -> Result<()> {
    let columns = RecordColumns::new(batch)?;
    for i in 0..batch.num_rows() {
        let fields = RecordFields {
            offset: columns.offset(i),
            timestamp: columns.timestamp(i),
            key: columns.key(i).map(str::as_bytes),
            value: columns.value(i).as_bytes(),
        };
        let header_pairs = columns
            .headers(i)
            .map(|(name, value)| (name.as_bytes(), value.as_bytes()));
        let partition = columns.partition(i);
        match format {
            Format::Json => {
                if !(first && i == 0) {
                    out.push(b',');
                }
                write_fields(out, times, partition, fields, header_pairs);
            }
            Format::Csv => write_csv_record(out, times, partition, fields, header_pairs),
            _ => {
                write_fields(out, times, partition, fields, header_pairs);
                out.push(b'\n');
            }
        }
    }
    Ok(())
}

fn write_csv_record<'h>(
    out: &mut Vec<u8>,
    times: &mut TimestampWriter,
    partition: u32,
    fields: RecordFields<'_>,
    headers: impl Iterator<Item = (&'h [u8], &'h [u8])>,
) {
    use strata_broker::render::{write_headers, write_int};
    write_int(out, u64::from(partition));
    out.push(b',');
    write_int(out, fields.offset);
    out.push(b',');
    times.write(fields.timestamp, out);
    out.push(b',');
    if let Some(key) = fields.key {
        write_csv_field(out, key);
    }
    out.push(b',');
    write_csv_field(out, fields.value);
    out.push(b',');
    let mut object = Vec::new();
    write_headers(&mut object, headers);
    write_csv_field(out, &object);
    out.push(b'\n');
}

/// One CSV field, quoted (RFC 4180) when it holds a separator, quote or line break.
fn write_csv_field(out: &mut Vec<u8>, text: &[u8]) {
    if !text
        .iter()
        .any(|&b| matches!(b, b',' | b'"' | b'\n' | b'\r'))
    {
        out.extend_from_slice(text);
        return;
    }
    out.push(b'"');
    for &b in text {
        if b == b'"' {
            out.push(b'"');
        }
        out.push(b);
    }
    out.push(b'"');
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn formats_parse_by_name_only() {
        assert_eq!(Format::parse("arrow").unwrap(), Format::Arrow);
        let err = Format::parse("xml").unwrap_err().to_string();
        assert!(err.contains("xml") && err.contains("ndjson"), "{err}");
    }

    #[test]
    fn csv_fields_are_quoted_only_when_needed() {
        let mut out = Vec::new();
        write_csv_field(&mut out, b"plain");
        out.push(b'|');
        write_csv_field(&mut out, br#"{"a":1,"b":"x"}"#);
        assert_eq!(
            String::from_utf8(out).unwrap(),
            r#"plain|"{""a"":1,""b"":""x""}""#
        );
    }

    #[test]
    fn table_rows_join_into_one_array() {
        assert_eq!(rows_as_array_items(b"[1]\n[2]\n", true), b"[1],[2]");
        assert_eq!(rows_as_array_items(b"[3]\n", false), b",[3]");
    }
}

//! Parsing produce requests (JSON or NDJSON) into validated records.
//!
//! Keys, headers and timestamps are parsed; the value is kept as the exact
//! JSON text the producer sent (validated, not turned into a tree), which is
//! what makes ingest fast. Validation is all or nothing: the first invalid
//! record fails the whole request, and nothing has been written yet.

use std::borrow::Cow;
use std::cell::{Cell, RefCell};
use std::fmt;

use serde::Deserialize;
use serde::de::{self, DeserializeSeed, Deserializer, MapAccess, SeqAccess, Visitor};
use serde_json::error::Category;
use serde_json::value::RawValue;

use crate::error::{BrokerError, Result};
use crate::timestamp::{check_range, parse_timestamp};

/// One record of a produce request, borrowed from the request body.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ProducedRecord<'a> {
    pub key: Option<Cow<'a, str>>,
    /// The record's value as JSON text, without line breaks.
    pub value: Cow<'a, str>,
    pub headers: Vec<(Cow<'a, str>, Cow<'a, str>)>,
    /// Producer timestamp in epoch milliseconds.
    pub timestamp: Option<i64>,
    pub partition: Option<u32>,
}

/// The two accepted body encodings.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BodyFormat {
    /// `{"records": [...]}`
    Json,
    /// One record object per line.
    Ndjson,
}

impl BodyFormat {
    /// The format a `Content-Type` asks for. NDJSON when it says so, JSON
    /// otherwise (so `curl -d` without a content type works).
    pub fn from_content_type(content_type: Option<&str>) -> Self {
        let essence = content_type
            .and_then(|ct| ct.split(';').next())
            .map(|ct| ct.trim().to_ascii_lowercase());
        match essence.as_deref() {
            Some(
                "application/x-ndjson"
                | "application/ndjson"
                | "application/jsonlines"
                | "application/x-jsonlines",
            ) => Self::Ndjson,
            _ => Self::Json,
        }
    }
}

/// Parses a whole request body; records whose key, value and headers add up
/// to more than `max_record_bytes` are refused.
pub fn parse_body(
    body: &[u8],
    format: BodyFormat,
    max_record_bytes: usize,
) -> Result<Vec<ProducedRecord<'_>>> {
    let text = std::str::from_utf8(body)
        .map_err(|e| BrokerError::InvalidRequest(format!("request body is not UTF-8: {e}")))?;
    match format {
        BodyFormat::Json => parse_json(text, max_record_bytes),
        BodyFormat::Ndjson => parse_ndjson(text, max_record_bytes),
    }
}

/// Parses `{"records": [...]}` in one pass. serde reports errors through
/// its own type, so the index of the record being parsed, and any error of
/// ours, ride along in cells and are turned into the API's error after.
fn parse_json(text: &str, max_record_bytes: usize) -> Result<Vec<ProducedRecord<'_>>> {
    let state = ParseState {
        max_record_bytes,
        current: Cell::new(None),
        ours: RefCell::new(None),
    };
    let mut de = serde_json::Deserializer::from_str(text);
    let parsed = BodySeed(&state)
        .deserialize(&mut de)
        .and_then(|records| de.end().map(|()| records));
    parsed.map_err(|e| {
        if let Some(ours) = state.ours.take() {
            return ours;
        }
        match (e.classify(), state.current.get()) {
            (Category::Data, Some(index)) => BrokerError::InvalidRecord {
                index,
                message: e.to_string(),
            },
            _ => BrokerError::InvalidRequest(format!(
                "request body must be {{\"records\": [...]}}: {e}"
            )),
        }
    })
}

struct ParseState {
    max_record_bytes: usize,
    /// Index of the record being parsed, while inside the array.
    current: Cell<Option<usize>>,
    /// An error of ours (not serde's) that stopped the parse.
    ours: RefCell<Option<BrokerError>>,
}

struct BodySeed<'s>(&'s ParseState);

impl<'de, 's> DeserializeSeed<'de> for BodySeed<'s> {
    type Value = Vec<ProducedRecord<'de>>;
    fn deserialize<D: Deserializer<'de>>(self, d: D) -> std::result::Result<Self::Value, D::Error> {
        d.deserialize_map(self)
    }
}

impl<'de, 's> Visitor<'de> for BodySeed<'s> {
    type Value = Vec<ProducedRecord<'de>>;
    fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
        f.write_str("an object with a \"records\" array")
    }
    fn visit_map<M: MapAccess<'de>>(
        self,
        mut map: M,
    ) -> std::result::Result<Self::Value, M::Error> {
        let mut records = None;
        while let Some(key) = map.next_key::<Cow<'de, str>>()? {
            if key != "records" {
                return Err(de::Error::unknown_field(&key, &["records"]));
            }
            if records.is_some() {
                return Err(de::Error::duplicate_field("records"));
            }
            records = Some(map.next_value_seed(RecordsSeed(self.0))?);
        }
        records.ok_or_else(|| de::Error::missing_field("records"))
    }
}

struct RecordsSeed<'s>(&'s ParseState);

impl<'de, 's> DeserializeSeed<'de> for RecordsSeed<'s> {
    type Value = Vec<ProducedRecord<'de>>;
    fn deserialize<D: Deserializer<'de>>(self, d: D) -> std::result::Result<Self::Value, D::Error> {
        d.deserialize_seq(self)
    }
}

impl<'de, 's> Visitor<'de> for RecordsSeed<'s> {
    type Value = Vec<ProducedRecord<'de>>;
    fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
        f.write_str("an array of records")
    }
    fn visit_seq<A: SeqAccess<'de>>(
        self,
        mut seq: A,
    ) -> std::result::Result<Self::Value, A::Error> {
        let mut out = Vec::with_capacity(seq.size_hint().unwrap_or(0));
        loop {
            let index = out.len();
            self.0.current.set(Some(index));
            let Some(record) = seq.next_element::<RecordIn<'de>>()? else {
                break;
            };
            match finish_record(record, index, self.0.max_record_bytes) {
                Ok(record) => out.push(record),
                Err(e) => {
                    let message = e.to_string();
                    *self.0.ours.borrow_mut() = Some(e);
                    return Err(de::Error::custom(message));
                }
            }
        }
        self.0.current.set(None);
        Ok(out)
    }
}

fn parse_ndjson(text: &str, max_record_bytes: usize) -> Result<Vec<ProducedRecord<'_>>> {
    text.lines()
        .filter(|line| !line.trim().is_empty())
        .enumerate()
        .map(|(index, line)| {
            let record: RecordIn<'_> =
                serde_json::from_str(line).map_err(|e| BrokerError::InvalidRecord {
                    index,
                    message: e.to_string(),
                })?;
            finish_record(record, index, max_record_bytes)
        })
        .collect()
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RecordIn<'a> {
    #[serde(default, borrow)]
    key: Option<Cow<'a, str>>,
    #[serde(default, borrow, deserialize_with = "present")]
    value: Option<&'a RawValue>,
    #[serde(default, borrow)]
    headers: Option<Headers<'a>>,
    #[serde(default)]
    timestamp: Option<Timestamp>,
    #[serde(default)]
    partition: Option<u32>,
}

/// Distinguishes `"value": null` (a tombstone) from a missing `value`.
fn present<'de, D: Deserializer<'de>>(
    d: D,
) -> std::result::Result<Option<&'de RawValue>, D::Error> {
    <&RawValue>::deserialize(d).map(Some)
}

/// Checks what serde cannot (a present value, the size limit) and keeps the
/// value as single-line JSON text.
fn finish_record(
    record: RecordIn<'_>,
    index: usize,
    max_record_bytes: usize,
) -> Result<ProducedRecord<'_>> {
    let value = record.value.ok_or_else(|| BrokerError::InvalidRecord {
        index,
        message: "missing field `value` (use null for a tombstone)".into(),
    })?;
    let headers = record.headers.map(|h| h.0).unwrap_or_default();
    let size = value.get().len()
        + record.key.as_ref().map_or(0, |k| k.len())
        + headers
            .iter()
            .map(|(n, v)| n.len() + v.len())
            .sum::<usize>();
    if size > max_record_bytes {
        return Err(BrokerError::PayloadTooLarge {
            message: format!(
                "record {index} is {size} bytes (key + value + headers), over max_record_bytes ({max_record_bytes})"
            ),
            index: Some(index),
        });
    }
    Ok(ProducedRecord {
        key: record.key,
        value: without_line_breaks(value.get()),
        headers,
        timestamp: record.timestamp.map(|t| t.0),
        partition: record.partition,
    })
}

/// JSON text with whitespace outside strings removed when it spans lines, so
/// every stored value fits on one NDJSON line. Strings cannot hold raw line
/// breaks, so any `\n` or `\r` is insignificant whitespace.
fn without_line_breaks(json: &str) -> Cow<'_, str> {
    if memchr::memchr2(b'\n', b'\r', json.as_bytes()).is_none() {
        return Cow::Borrowed(json);
    }
    let mut out = String::with_capacity(json.len());
    let (mut in_string, mut escaped) = (false, false);
    for c in json.chars() {
        if in_string {
            out.push(c);
            match (escaped, c) {
                (true, _) => escaped = false,
                (false, '\\') => escaped = true,
                (false, '"') => in_string = false,
                _ => {}
            }
        } else if !matches!(c, ' ' | '\t' | '\n' | '\r') {
            in_string = c == '"';
            out.push(c);
        }
    }
    Cow::Owned(out)
}

/// A record's headers: an object of string to string, in produce order.
struct Headers<'a>(Vec<(Cow<'a, str>, Cow<'a, str>)>);

impl<'de: 'a, 'a> Deserialize<'de> for Headers<'a> {
    fn deserialize<D: Deserializer<'de>>(d: D) -> std::result::Result<Self, D::Error> {
        struct HeadersVisitor;
        impl<'de> Visitor<'de> for HeadersVisitor {
            type Value = Headers<'de>;
            fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
                f.write_str("an object of string header values")
            }
            fn visit_map<M: MapAccess<'de>>(
                self,
                mut map: M,
            ) -> std::result::Result<Self::Value, M::Error> {
                let mut out: Vec<(Cow<'de, str>, Cow<'de, str>)> = Vec::new();
                while let Some((name, value)) =
                    map.next_entry::<BorrowedStr<'de>, BorrowedStr<'de>>()?
                {
                    if name.0.len() > usize::from(u16::MAX) {
                        return Err(de::Error::custom("header name longer than 65535 bytes"));
                    }
                    if out.len() == usize::from(u16::MAX) {
                        return Err(de::Error::custom("more than 65535 headers"));
                    }
                    if out.iter().any(|(n, _)| *n == name.0) {
                        return Err(de::Error::custom(format!(
                            "header {:?} given twice",
                            name.0
                        )));
                    }
                    out.push((name.0, value.0));
                }
                Ok(Headers(out))
            }
        }
        d.deserialize_map(HeadersVisitor)
    }
}

struct BorrowedStr<'a>(Cow<'a, str>);

impl<'de: 'a, 'a> Deserialize<'de> for BorrowedStr<'a> {
    fn deserialize<D: Deserializer<'de>>(d: D) -> std::result::Result<Self, D::Error> {
        Cow::<'de, str>::deserialize(d).map(BorrowedStr)
    }
}

/// A timestamp field: epoch milliseconds or an RFC 3339 string.
struct Timestamp(i64);

impl<'de> Deserialize<'de> for Timestamp {
    fn deserialize<D: Deserializer<'de>>(d: D) -> std::result::Result<Self, D::Error> {
        struct TsVisitor;
        impl Visitor<'_> for TsVisitor {
            type Value = Timestamp;
            fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
                f.write_str("epoch milliseconds or an RFC 3339 string")
            }
            fn visit_i64<E: de::Error>(self, v: i64) -> std::result::Result<Timestamp, E> {
                check_range(v).map(Timestamp).map_err(E::custom)
            }
            fn visit_u64<E: de::Error>(self, v: u64) -> std::result::Result<Timestamp, E> {
                let v = i64::try_from(v).map_err(|_| E::custom("timestamp out of range"))?;
                self.visit_i64(v)
            }
            fn visit_str<E: de::Error>(self, v: &str) -> std::result::Result<Timestamp, E> {
                parse_timestamp(v).map(Timestamp).map_err(E::custom)
            }
        }
        d.deserialize_any(TsVisitor)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn json(body: &str) -> Result<Vec<ProducedRecord<'_>>> {
        parse_body(body.as_bytes(), BodyFormat::Json, 1024)
    }

    #[test]
    fn parses_every_field() {
        let records = json(
            r#"{"records": [{"key": "user-1", "value": {"page": "/home", "n": 1.50},
                "headers": {"source": "web"}, "timestamp": "2024-01-01T00:00:00Z", "partition": 2},
               {"value": null}, {"value": [1, "two"], "timestamp": 5, "key": null}]}"#,
        )
        .unwrap();
        assert_eq!(records.len(), 3);
        assert_eq!(records[0].key.as_deref(), Some("user-1"));
        assert_eq!(records[0].value, r#"{"page": "/home", "n": 1.50}"#);
        assert_eq!(
            records[0].headers,
            vec![(Cow::from("source"), Cow::from("web"))]
        );
        assert_eq!(records[0].timestamp, Some(1_704_067_200_000));
        assert_eq!(records[0].partition, Some(2));
        assert_eq!(records[1].value, "null");
        assert_eq!(records[2].timestamp, Some(5));
        assert_eq!(records[2].key, None);
    }

    #[test]
    fn multi_line_values_are_joined() {
        let records =
            json("{\"records\": [{\"value\": {\n  \"a\": \"x y\\n\",\n  \"b\": [1,\n 2]\n}}]}")
                .unwrap();
        assert_eq!(records[0].value, r#"{"a":"x y\n","b":[1,2]}"#);
    }

    #[test]
    fn bad_records_name_their_index() {
        for (body, index) in [
            (r#"{"records": [{"value": 1}, {"key": "k"}]}"#, 1),
            (r#"{"records": [{"value": 1, "timestamp": "soon"}]}"#, 0),
            (r#"{"records": [{"value": 1}, {"value": 1, "key": 5}]}"#, 1),
            (r#"{"records": [{"value": 1, "headers": {"a": 1}}]}"#, 0),
            (r#"{"records": [{"value": 1, "partition": -1}]}"#, 0),
            (r#"{"records": [{"value": 1, "vaule": 2}]}"#, 0),
            (r#"{"records": [{"value": 1, "timestamp": 1.5}]}"#, 0),
        ] {
            match json(body) {
                Err(BrokerError::InvalidRecord { index: got, .. }) => {
                    assert_eq!(got, index, "{body}")
                }
                other => panic!("{body}: {other:?}"),
            }
        }
    }

    #[test]
    fn malformed_bodies_are_invalid_requests() {
        for body in [
            r#"{"records": [{"value": 1}"#,
            "[]",
            r#"{"record": []}"#,
            r#"{"records": {}}"#,
            "",
        ] {
            assert!(
                matches!(json(body), Err(BrokerError::InvalidRequest(_))),
                "{body}"
            );
        }
        assert!(matches!(
            parse_body(&[0xff, 0xfe], BodyFormat::Json, 10),
            Err(BrokerError::InvalidRequest(_))
        ));
    }

    #[test]
    fn ndjson_lines_are_records() {
        let body = "{\"value\": 1}\n\n{\"key\": \"k\", \"value\": \"v\"}\r\n";
        let records = parse_body(body.as_bytes(), BodyFormat::Ndjson, 1024).unwrap();
        assert_eq!(records.len(), 2);
        assert_eq!(records[1].value, "\"v\"");
        let bad = "{\"value\": 1}\n{\"value\": \n";
        assert!(matches!(
            parse_body(bad.as_bytes(), BodyFormat::Ndjson, 1024),
            Err(BrokerError::InvalidRecord { index: 1, .. })
        ));
    }

    #[test]
    fn oversized_record_is_refused() {
        let body = format!(
            r#"{{"records": [{{"value": 1}}, {{"value": "{}"}}]}}"#,
            "x".repeat(2000)
        );
        assert!(matches!(
            json(&body),
            Err(BrokerError::PayloadTooLarge { index: Some(1), .. })
        ));
    }

    #[test]
    fn content_types() {
        assert_eq!(
            BodyFormat::from_content_type(Some("application/x-ndjson")),
            BodyFormat::Ndjson
        );
        assert_eq!(
            BodyFormat::from_content_type(Some("application/json; charset=utf-8")),
            BodyFormat::Json
        );
        assert_eq!(BodyFormat::from_content_type(None), BodyFormat::Json);
    }
}

//! Parsing produce requests (JSON or NDJSON) into validated records.
//!
//! Keys, headers and timestamps are parsed; the value is kept as the exact
//! JSON text the producer sent (validated, not turned into a tree), which is
//! what makes ingest fast. Validation is all or nothing: the first invalid
//! record fails the whole request, and nothing has been written yet.

use std::borrow::Cow;
use std::fmt;

use serde::Deserialize;
use serde::de::{self, Deserializer, MapAccess, Visitor};
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

/// Parses a whole request body; records larger than `max_record_bytes` are refused.
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

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct JsonBody<'a> {
    #[serde(borrow)]
    records: Vec<&'a RawValue>,
}

fn parse_json(text: &str, max_record_bytes: usize) -> Result<Vec<ProducedRecord<'_>>> {
    let body: JsonBody<'_> = serde_json::from_str(text).map_err(|e| {
        BrokerError::InvalidRequest(format!("request body must be {{\"records\": [...]}}: {e}"))
    })?;
    body.records
        .iter()
        .enumerate()
        .map(|(index, raw)| parse_record(raw.get(), index, max_record_bytes))
        .collect()
}

fn parse_ndjson(text: &str, max_record_bytes: usize) -> Result<Vec<ProducedRecord<'_>>> {
    text.lines()
        .filter(|line| !line.trim().is_empty())
        .enumerate()
        .map(|(index, line)| parse_record(line, index, max_record_bytes))
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

fn parse_record(text: &str, index: usize, max_record_bytes: usize) -> Result<ProducedRecord<'_>> {
    if text.len() > max_record_bytes {
        return Err(BrokerError::PayloadTooLarge {
            message: format!(
                "record {index} is {} bytes, over max_record_bytes ({max_record_bytes})",
                text.len()
            ),
            index: Some(index),
        });
    }
    let invalid = |message: String| BrokerError::InvalidRecord { index, message };
    let record: RecordIn<'_> = serde_json::from_str(text).map_err(|e| invalid(e.to_string()))?;
    let value = record
        .value
        .ok_or_else(|| invalid("missing field `value` (use null for a tombstone)".into()))?;
    Ok(ProducedRecord {
        key: record.key,
        value: without_line_breaks(value.get()),
        headers: record.headers.map(|h| h.0).unwrap_or_default(),
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
                let mut out = Vec::new();
                while let Some((name, value)) =
                    map.next_entry::<BorrowedStr<'de>, BorrowedStr<'de>>()?
                {
                    if name.0.len() > usize::from(u16::MAX) {
                        return Err(de::Error::custom("header name longer than 65535 bytes"));
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

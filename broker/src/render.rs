//! Writing records as the API's JSON objects, straight into a byte buffer.
//! This is the consume hot path, so values (already JSON text) are copied,
//! never parsed.

use crate::batch::RecordView;
use crate::timestamp::TimestampWriter;

/// Appends `{"partition":..,"offset":..,"timestamp":..,"key":..,"value":..,"headers":{..}}`.
pub fn write_record(
    out: &mut Vec<u8>,
    times: &mut TimestampWriter,
    partition: u32,
    record: &RecordView<'_>,
) {
    let fields = RecordFields {
        offset: record.offset,
        timestamp: record.timestamp,
        key: record.key,
        value: record.value,
    };
    write_fields(out, times, partition, fields, record.headers());
}

/// The fields of a record, however it was stored.
pub struct RecordFields<'a> {
    pub offset: u64,
    pub timestamp: i64,
    pub key: Option<&'a [u8]>,
    /// The record's JSON text, written as is.
    pub value: &'a [u8],
}

/// Appends a record object from its fields, like [`write_record`].
pub fn write_fields<'h>(
    out: &mut Vec<u8>,
    times: &mut TimestampWriter,
    partition: u32,
    record: RecordFields<'_>,
    headers: impl Iterator<Item = (&'h [u8], &'h [u8])>,
) {
    out.extend_from_slice(b"{\"partition\":");
    write_int(out, u64::from(partition));
    out.extend_from_slice(b",\"offset\":");
    write_int(out, record.offset);
    out.extend_from_slice(b",\"timestamp\":\"");
    times.write(record.timestamp, out);
    out.extend_from_slice(b"\",\"key\":");
    match record.key {
        Some(key) => write_str(out, key),
        None => out.extend_from_slice(b"null"),
    }
    out.extend_from_slice(b",\"value\":");
    out.extend_from_slice(record.value);
    out.extend_from_slice(b",\"headers\":");
    write_headers(out, headers);
    out.push(b'}');
}

/// Appends headers as a JSON object of strings (`{}` when there are none).
pub fn write_headers<'h>(out: &mut Vec<u8>, headers: impl Iterator<Item = (&'h [u8], &'h [u8])>) {
    out.push(b'{');
    for (i, (name, value)) in headers.enumerate() {
        if i > 0 {
            out.push(b',');
        }
        write_str(out, name);
        out.push(b':');
        write_str(out, value);
    }
    out.push(b'}');
}

/// Appends a decimal integer.
pub fn write_int(out: &mut Vec<u8>, mut value: u64) {
    let mut digits = [0u8; 20];
    let mut i = digits.len();
    loop {
        i -= 1;
        digits[i] = b'0' + (value % 10) as u8;
        value /= 10;
        if value == 0 {
            break;
        }
    }
    out.extend_from_slice(&digits[i..]);
}

/// Appends UTF-8 bytes as a JSON string literal, escaping what JSON requires.
pub fn write_str(out: &mut Vec<u8>, text: &[u8]) {
    out.push(b'"');
    let mut start = 0;
    for (i, &b) in text.iter().enumerate() {
        let escape: &[u8] = match b {
            b'"' => b"\\\"",
            b'\\' => b"\\\\",
            b'\n' => b"\\n",
            b'\r' => b"\\r",
            b'\t' => b"\\t",
            0..=0x1f => {
                out.extend_from_slice(&text[start..i]);
                out.extend_from_slice(format!("\\u{b:04x}").as_bytes());
                start = i + 1;
                continue;
            }
            _ => continue,
        };
        out.extend_from_slice(&text[start..i]);
        out.extend_from_slice(escape);
        start = i + 1;
    }
    out.extend_from_slice(&text[start..]);
    out.push(b'"');
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::batch::BatchBuilder;

    #[test]
    fn renders_a_record_as_valid_json() {
        let mut builder = BatchBuilder::with_capacity(128);
        builder.push(
            1_704_067_200_000,
            Some("us\"er\n1".as_bytes()),
            br#"{"page":"/home"}"#,
            &[("source", "web\u{1}")],
        );
        builder.push(0, None, b"null", &[]);
        let mut batch = builder.finish(0, 0);
        batch.set_base_offset(41);
        let view = batch.view();
        let mut out = Vec::new();
        let mut times = TimestampWriter::default();
        for record in view.records() {
            write_record(&mut out, &mut times, 3, &record.unwrap());
            out.push(b'\n');
        }
        let lines: Vec<serde_json::Value> = out
            .split(|&b| b == b'\n')
            .filter(|l| !l.is_empty())
            .map(|l| serde_json::from_slice(l).unwrap())
            .collect();
        assert_eq!(
            lines[0],
            serde_json::json!({"partition": 3, "offset": 41, "timestamp": "2024-01-01T00:00:00.000Z",
                "key": "us\"er\n1", "value": {"page": "/home"}, "headers": {"source": "web\u{1}"}})
        );
        assert_eq!(
            lines[1],
            serde_json::json!({"partition": 3, "offset": 42, "timestamp": "1970-01-01T00:00:00.000Z",
                "key": null, "value": null, "headers": {}})
        );
    }
}

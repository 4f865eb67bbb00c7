//! Every decoder of the broker's files and request bodies, fed arbitrary
//! and damaged bytes: each returns a value or an error, never panics.

use proptest::prelude::*;
use strata_broker::batch::{BatchBuilder, Peek, peek_batch};
use strata_broker::index::{OffsetIndex, TimeIndex};
use strata_broker::produce::{BodyFormat, parse_body};
use strata_broker::segment::parse_log_file_name;
use strata_broker::timestamp::parse_timestamp;

/// Decodes everything a batch holds, as recovery and readers do.
fn decode_batch(bytes: &[u8]) {
    if let Ok(Peek::Batch(view)) = peek_batch(bytes) {
        let _ = view.verify();
        let _ = (
            view.base_offset(),
            view.record_count(),
            view.max_timestamp(),
        );
        for record in view.records() {
            let Ok(record) = record else { break };
            let _ = record.data_len();
            for header in record.headers() {
                let _ = header;
            }
        }
    }
}

/// A valid batch of a few records, for mutation.
fn valid_batch() -> Vec<u8> {
    let mut builder = BatchBuilder::with_capacity(1024);
    builder.push(1, Some(b"k"), b"{\"a\":1}", &[("h", "v")]);
    builder.push(2, None, b"null", &[]);
    builder.push(3, Some(b""), b"\"x\"", &[("a", "1"), ("b", "2")]);
    let mut batch = builder.finish(10, 0);
    batch.set_base_offset(7);
    batch.as_bytes().to_vec()
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(2000))]

    #[test]
    fn arbitrary_bytes_as_a_batch(bytes in proptest::collection::vec(any::<u8>(), 0..2048)) {
        decode_batch(&bytes);
    }

    /// Damage inside a real batch (the header's length and magic intact,
    /// so the decoder goes on into the records).
    #[test]
    fn a_damaged_batch(flips in proptest::collection::vec((any::<prop::sample::Index>(), any::<u8>()), 1..8)) {
        let mut bytes = valid_batch();
        for (at, value) in flips {
            let i = at.index(bytes.len());
            // Keep the length (8..12) and magic (16) so records are decoded.
            if !(8..12).contains(&i) && i != 16 {
                bytes[i] = value;
            }
        }
        decode_batch(&bytes);
    }

    #[test]
    fn arbitrary_bytes_as_indexes(bytes in proptest::collection::vec(any::<u8>(), 0..1024), len in any::<u64>()) {
        let _ = OffsetIndex::decode(&bytes, len);
        let _ = TimeIndex::decode(&bytes);
    }

    #[test]
    fn arbitrary_bytes_as_a_produce_body(bytes in proptest::collection::vec(any::<u8>(), 0..1024)) {
        let _ = parse_body(&bytes, BodyFormat::Json, 1 << 20);
        let _ = parse_body(&bytes, BodyFormat::Ndjson, 1 << 20);
    }

    /// Bodies that are nearly right: records with fields of every JSON type.
    #[test]
    fn json_shaped_produce_bodies(
        records in proptest::collection::vec(
            proptest::collection::vec((
                prop_oneof![Just("key"), Just("value"), Just("headers"), Just("timestamp"), Just("partition"), Just("other")],
                prop_oneof![
                    Just("null".to_string()),
                    any::<i64>().prop_map(|n| n.to_string()),
                    any::<f64>().prop_map(|f| format!("{f:?}")),
                    "\\PC{0,10}".prop_map(|s| serde_json::to_string(&s).unwrap()),
                    Just("{\"h\":1}".to_string()),
                    Just("[1,2]".to_string()),
                    Just("\"2024-01-01T00:00:00Z\"".to_string()),
                ],
            ), 0..6),
            0..6,
        )
    ) {
        let objects: Vec<String> = records
            .iter()
            .map(|fields| {
                let inner: Vec<String> = fields.iter().map(|(k, v)| format!("\"{k}\":{v}")).collect();
                format!("{{{}}}", inner.join(","))
            })
            .collect();
        let json = format!("{{\"records\":[{}]}}", objects.join(","));
        let _ = parse_body(json.as_bytes(), BodyFormat::Json, 1 << 20);
        let ndjson = objects.join("\n");
        let _ = parse_body(ndjson.as_bytes(), BodyFormat::Ndjson, 1 << 20);
    }

    #[test]
    /// A consumer group's offsets file holding anything: the store opens
    /// or refuses with an error, never panics.
    #[test]
    fn arbitrary_bytes_as_a_group_file(bytes in proptest::collection::vec(any::<u8>(), 0..512)) {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("g.json"), &bytes).unwrap();
        let _ = strata_broker::groups::GroupStore::open(dir.path());
    }

    fn arbitrary_text_as_timestamps_and_file_names(text in "\\PC{0,40}") {
        let _ = parse_timestamp(&text);
        let _ = parse_log_file_name(&text);
    }
}

#[test]
fn the_valid_batch_decodes() {
    // Guards the mutation test's starting point: it must be a real batch.
    let bytes = valid_batch();
    let Ok(Peek::Batch(view)) = peek_batch(&bytes) else {
        panic!("not a batch");
    };
    view.verify().unwrap();
    assert_eq!(view.records().filter(Result::is_ok).count(), 3);
}

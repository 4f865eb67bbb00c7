//! Idempotent produce through the broker's API: a retry after a partial
//! failure writes only what is missing, also after the broker reopens.

use std::sync::Arc;

use serde_json::{Value, json};
use strata_broker::produce::{BodyFormat, ProducedRecord, parse_body};
use strata_broker::{Broker, BrokerConfig, BrokerError, TopicConfigOverrides};

fn open(dir: &std::path::Path) -> Arc<Broker> {
    Arc::new(
        Broker::open(BrokerConfig {
            data_dir: dir.to_path_buf(),
            ..BrokerConfig::default()
        })
        .expect("open broker"),
    )
}

fn body(records: &[Value]) -> Vec<u8> {
    json!({ "records": records }).to_string().into_bytes()
}

fn parse(body: &[u8]) -> Vec<ProducedRecord<'_>> {
    parse_body(body, BodyFormat::Json, 1 << 20).expect("valid body")
}

/// Guards the partial-failure rule of API.md: "If the first attempt failed
/// part-way (some partitions durable, others not), the retry writes only
/// the missing records and answers with the offsets of all of them."
#[test]
fn a_retry_after_a_partial_attempt_writes_only_the_missing_partitions() {
    let dir = tempfile::tempdir().unwrap();
    let broker = open(dir.path());
    broker
        .create_topic("t", Some(3), &TopicConfigOverrides::default())
        .unwrap();
    let full = body(&[
        json!({"partition": 0, "value": "a"}),
        json!({"partition": 1, "value": "b"}),
        json!({"partition": 0, "value": "c"}),
        json!({"partition": 2, "value": "d", "timestamp": 5}),
        json!({"partition": 1, "key": "user-1", "value": "e"}),
    ]);
    let hash = strata_broker::idempotency::body_hash(&full);
    // The first attempt made only partition 0 durable: the records the
    // full body assigns there, tagged with its key and hash.
    let partial = body(&[
        json!({"partition": 0, "value": "a"}),
        json!({"partition": 0, "value": "c"}),
    ]);
    let topic = broker.topic("t").unwrap();
    // Real times: the index is rebuilt from batches within the window.
    let t0 = strata_broker::timestamp::now_ms();
    let first = topic
        .produce_idempotent(&parse(&partial), t0, "req-1", hash)
        .unwrap();
    assert_eq!(
        first
            .iter()
            .map(|a| (a.partition, a.offset))
            .collect::<Vec<_>>(),
        vec![(0, 0), (0, 1)]
    );
    // Someone else writes meanwhile; then the broker restarts, so the
    // retry must find the first attempt in the log, not in memory.
    topic
        .produce(
            &parse(&body(&[json!({"partition": 0, "value": "other"})])),
            1_500,
        )
        .unwrap();
    drop(topic);
    broker.close().unwrap();
    drop(broker);
    let broker = open(dir.path());
    let topic = broker.topic("t").unwrap();
    let ends_before: Vec<u64> = topic.partitions().iter().map(|p| p.end_offset()).collect();

    let retry = topic
        .produce_idempotent(&parse(&full), t0 + 2, "req-1", hash)
        .unwrap();
    let got: Vec<(u32, u64, i64)> = retry
        .iter()
        .map(|a| (a.partition, a.offset, a.timestamp))
        .collect();
    // Partition 0's records keep the first attempt's offsets and times;
    // the others are written now, after what partitions 1 and 2 held.
    assert_eq!(
        got,
        vec![
            (0, 0, t0),
            (1, 0, t0 + 2),
            (0, 1, t0),
            (2, 0, 5),
            (1, 1, t0 + 2)
        ]
    );
    let ends_after: Vec<u64> = topic.partitions().iter().map(|p| p.end_offset()).collect();
    let written: u64 = ends_after
        .iter()
        .zip(&ends_before)
        .map(|(a, b)| a - b)
        .sum();
    assert_eq!(written, 3, "only the missing records were written");
    assert_eq!(ends_after[0], ends_before[0]);

    // A third attempt writes nothing and answers the same.
    let again = topic
        .produce_idempotent(&parse(&full), t0 + 3, "req-1", hash)
        .unwrap();
    assert_eq!(again, retry);
    let ends_final: Vec<u64> = topic.partitions().iter().map(|p| p.end_offset()).collect();
    assert_eq!(ends_final, ends_after);

    // The same key with another body is refused and writes nothing.
    let other = body(&[json!({"value": "different"})]);
    let refused = topic.produce_idempotent(
        &parse(&other),
        3_000,
        "req-1",
        strata_broker::idempotency::body_hash(&other),
    );
    assert!(
        matches!(refused, Err(BrokerError::IdempotencyKeyReused { .. })),
        "{refused:?}"
    );
    let ends_refused: Vec<u64> = topic.partitions().iter().map(|p| p.end_offset()).collect();
    assert_eq!(ends_refused, ends_after);
}

/// Guards the retry's assignment: keyless records must land where the
/// first attempt put them although other produces moved the round robin.
#[test]
fn keyless_records_of_a_retry_are_assigned_as_the_first_time() {
    let dir = tempfile::tempdir().unwrap();
    let broker = open(dir.path());
    broker
        .create_topic("rr", Some(4), &TopicConfigOverrides::default())
        .unwrap();
    let topic = broker.topic("rr").unwrap();
    let records: Vec<Value> = (0..9).map(|i| json!({"value": i})).collect();
    let full = body(&records);
    let hash = strata_broker::idempotency::body_hash(&full);
    let first = topic
        .produce_idempotent(&parse(&full), 1, "k", hash)
        .unwrap();
    let spread: std::collections::BTreeSet<u32> = first.iter().map(|a| a.partition).collect();
    assert_eq!(spread.len(), 4, "keyless records still spread: {first:?}");
    for _ in 0..3 {
        topic
            .produce(&parse(&body(&[json!({"value": "x"})])), 2)
            .unwrap();
    }
    let retry = topic
        .produce_idempotent(&parse(&full), 3, "k", hash)
        .unwrap();
    assert_eq!(retry, first);
}

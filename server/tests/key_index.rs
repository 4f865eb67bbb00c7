//! The key index behind `snapshot?key=` (issue #12): lookups answered from
//! the index equal an oracle computed from what was produced — out-of-order
//! timestamps, tombstones, never-written keys, keys whose latest record is
//! hot and keys whose latest record is cold, explicit partitions that break
//! the key → partition mapping, `as_of` — and stay equal across a restart,
//! a deleted index directory, a damaged index file and a topic deleted and
//! created again under the same name.

use std::collections::HashMap;
use std::time::Duration;

use reqwest::StatusCode;
use serde_json::{Value, json};
use strata_test_support::{Rng, TestServer, eventually};

/// A record as produced, with where it landed.
#[derive(Debug, Clone)]
struct Produced {
    partition: u64,
    offset: u64,
    timestamp: i64,
    key: String,
    value: Value,
}

const KEYS: u64 = 150;

/// Produces `count` random records in requests of 100; timestamps jump
/// around inside `times`, a tenth are tombstones and a third name their
/// partition.
async fn produce_random(
    server: &TestServer,
    topic: &str,
    partitions: u64,
    rng: &mut Rng,
    count: usize,
    times: std::ops::Range<i64>,
    log: &mut Vec<Produced>,
) {
    let mut left = count;
    while left > 0 {
        let n = left.min(100);
        left -= n;
        let records: Vec<Value> = (0..n)
            .map(|_| {
                let key = format!("k{}", rng.below(KEYS));
                let span = (times.end - times.start) as u64;
                let timestamp = times.start + rng.below(span) as i64;
                let value = if rng.below(10) == 0 {
                    Value::Null
                } else {
                    json!({"n": rng.below(1_000_000), "key": key})
                };
                let mut record = json!({"key": key, "value": value, "timestamp": timestamp});
                if rng.below(3) == 0 {
                    record["partition"] = json!(rng.below(partitions));
                    record["headers"] = json!({"explicit": "yes"});
                }
                record
            })
            .collect();
        let acks = server.api.produce(topic, &records).await;
        for (record, ack) in records.iter().zip(acks) {
            log.push(Produced {
                partition: ack["partition"].as_u64().expect("partition"),
                offset: ack["offset"].as_u64().expect("offset"),
                timestamp: record["timestamp"].as_i64().expect("timestamp"),
                key: record["key"].as_str().expect("key").to_string(),
                value: record["value"].clone(),
            });
        }
    }
}

/// Each key's latest record before `as_of` (by timestamp, then partition,
/// then offset), tombstones included.
fn oracle(log: &[Produced], as_of: i64) -> HashMap<String, Produced> {
    let mut latest: HashMap<String, Produced> = HashMap::new();
    for r in log.iter().filter(|r| r.timestamp < as_of) {
        let newer = latest.get(&r.key).is_none_or(|b| {
            (r.timestamp, r.partition, r.offset) > (b.timestamp, b.partition, b.offset)
        });
        if newer {
            latest.insert(r.key.clone(), r.clone());
        }
    }
    latest
}

/// One lookup: how it was answered (`Strata-Lookup`) and its records as
/// (key, partition, offset, value).
async fn lookup(
    server: &TestServer,
    topic: &str,
    keys: &[String],
    as_of: Option<i64>,
) -> (String, Vec<(String, u64, u64, Value)>) {
    let mut url = format!("http://{}/v1/topics/{topic}/snapshot?", server.addr);
    for key in keys {
        url.push_str(&format!("key={key}&"));
    }
    if let Some(t) = as_of {
        url.push_str(&format!("as_of={t}"));
    }
    let response = reqwest::get(&url).await.expect("lookup");
    assert_eq!(response.status(), StatusCode::OK);
    let how = response
        .headers()
        .get("strata-lookup")
        .and_then(|v| v.to_str().ok())
        .unwrap_or("missing")
        .to_string();
    let body: Value = response.json().await.expect("JSON");
    let rows = body["records"]
        .as_array()
        .expect("records")
        .iter()
        .map(|r| {
            (
                r["key"].as_str().expect("key").to_string(),
                r["partition"].as_u64().expect("partition"),
                r["offset"].as_u64().expect("offset"),
                r["value"].clone(),
            )
        })
        .collect();
    (how, rows)
}

/// Every key (and two never written), 100 per request, against the
/// oracle; returns how the lookups were answered.
async fn check_all(
    server: &TestServer,
    topic: &str,
    log: &[Produced],
    as_of: Option<i64>,
) -> Vec<String> {
    let expected = oracle(log, as_of.unwrap_or(i64::MAX));
    let mut keys: Vec<String> = (0..KEYS).map(|k| format!("k{k}")).collect();
    keys.insert(7, "never-written".into());
    keys.push("k-never".into());
    let mut answers = Vec::new();
    for chunk in keys.chunks(100) {
        let (how, rows) = lookup(server, topic, chunk, as_of).await;
        let want: Vec<(String, u64, u64, Value)> = chunk
            .iter()
            .filter_map(|k| expected.get(k))
            .filter(|r| !r.value.is_null())
            .map(|r| (r.key.clone(), r.partition, r.offset, r.value.clone()))
            .collect();
        assert_eq!(
            rows,
            want,
            "lookup ({how}) of {} keys at as_of {as_of:?}",
            chunk.len()
        );
        answers.push(how);
    }
    answers
}

/// Waits until lookups of `topic` are answered by the index.
async fn until_indexed(server: &TestServer, topic: &str) {
    eventually(
        Duration::from_secs(30),
        "lookups answered by the index",
        || async {
            let (how, _) = lookup(server, topic, &["k1".to_string()], None).await;
            (how == "index").then_some(())
        },
    )
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn lookups_equal_an_oracle_across_tiers_restarts_and_a_lost_index() {
    let mut server = TestServer::start().await;
    let topic = "kv";
    server
        .api
        .create_topic(
            topic,
            3,
            json!({"segment_bytes": 16384, "local_retention_bytes": 0}),
        )
        .await;
    let mut rng = Rng(0x5eed_1234_abcd);
    let mut log = Vec::new();
    // Most of the history goes cold, the rest stays hot.
    produce_random(
        &server,
        topic,
        3,
        &mut rng,
        1500,
        1_000_000..2_000_000,
        &mut log,
    )
    .await;
    server.api.offload(topic).await;
    produce_random(
        &server,
        topic,
        3,
        &mut rng,
        700,
        1_500_000..2_500_000,
        &mut log,
    )
    .await;

    until_indexed(&server, topic).await;
    let answers = check_all(&server, topic, &log, None).await;
    assert!(
        answers.iter().all(|h| h == "index"),
        "answered by {answers:?}"
    );
    // An as_of inside the history: some keys have later records, so the
    // index cannot know and the scan answers; equal all the same.
    check_all(&server, topic, &log, Some(1_700_000)).await;
    check_all(&server, topic, &log, Some(1_000_000)).await;

    // Records produced after the index caught up are found at once
    // (the lookup applies the tail itself).
    produce_random(
        &server,
        topic,
        3,
        &mut rng,
        300,
        2_400_000..2_600_000,
        &mut log,
    )
    .await;
    check_all(&server, topic, &log, None).await;

    server = server.restart().await;
    until_indexed(&server, topic).await;
    check_all(&server, topic, &log, None).await;

    // A lost index is rebuilt from the log and the cold tier.
    server = server
        .restart_after(|dir| std::fs::remove_dir_all(dir.join("index")).expect("remove the index"))
        .await;
    check_all(&server, topic, &log, None).await;
    until_indexed(&server, topic).await;
    let answers = check_all(&server, topic, &log, None).await;
    assert!(
        answers.iter().all(|h| h == "index"),
        "answered by {answers:?}"
    );

    // A damaged index file is deleted and rebuilt.
    server = server
        .restart_after(|dir| {
            std::fs::write(dir.join("index").join("keys.redb"), b"not a database").expect("damage")
        })
        .await;
    until_indexed(&server, topic).await;
    check_all(&server, topic, &log, None).await;

    // A topic deleted and created again under its name knows nothing of
    // the old one's keys.
    let (status, _) = server.api.delete(&format!("/v1/topics/{topic}")).await;
    assert_eq!(status, StatusCode::NO_CONTENT);
    server.api.create_topic(topic, 2, json!({})).await;
    let mut fresh = Vec::new();
    produce_random(
        &server,
        topic,
        2,
        &mut rng,
        120,
        5_000_000..5_100_000,
        &mut fresh,
    )
    .await;
    check_all(&server, topic, &fresh, None).await;
    until_indexed(&server, topic).await;
    check_all(&server, topic, &fresh, None).await;
}

/// Retention that removed a key's latest record: the index still holds
/// it, so the lookup must not answer from it (it scans, and finds what
/// the log still has: nothing for keys all of whose records expired).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_key_whose_records_retention_removed_is_gone() {
    let server = TestServer::start().await;
    let topic = "expiring";
    let year_ms = 365 * 86_400_000i64;
    server
        .api
        .create_topic(
            topic,
            1,
            json!({"segment_bytes": 16384, "local_retention_bytes": 0, "retention_ms": year_ms}),
        )
        .await;
    let ancient: Vec<Value> = (0..600)
        .map(|i| json!({"key": format!("k{}", i % 40), "value": {"old": i}, "timestamp": 1_000_000 + i}))
        .collect();
    for chunk in ancient.chunks(100) {
        server.api.produce(topic, chunk).await;
    }
    until_indexed(&server, topic).await;
    server.api.offload(topic).await;
    let (_, described) = server.api.get(&format!("/v1/topics/{topic}")).await;
    assert_eq!(
        described["partitions"][0]["start_offset"], 600,
        "retention dropped every ancient record: {described}"
    );
    let now_ms = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .expect("clock")
        .as_millis() as i64;
    let mut recent = Vec::new();
    let records: Vec<Value> = (0..100)
        .map(|i| json!({"key": format!("k{}", i % 20), "value": {"new": i}, "timestamp": now_ms - 60_000 + i}))
        .collect();
    for (record, ack) in records
        .iter()
        .zip(server.api.produce(topic, &records).await)
    {
        recent.push(Produced {
            partition: 0,
            offset: ack["offset"].as_u64().expect("offset"),
            timestamp: record["timestamp"].as_i64().expect("timestamp"),
            key: record["key"].as_str().expect("key").to_string(),
            value: record["value"].clone(),
        });
    }
    let live: Vec<String> = (0..20).map(|k| format!("k{k}")).collect();
    let expired: Vec<String> = (20..40).map(|k| format!("k{k}")).collect();
    let expected = oracle(&recent, i64::MAX);
    let (how, rows) = lookup(&server, topic, &expired, None).await;
    assert_eq!(how, "scan", "the index cannot answer for expired records");
    assert!(rows.is_empty(), "expired keys are gone: {rows:?}");
    let rows = eventually(
        Duration::from_secs(30),
        "live keys from the index",
        || async {
            let (how, rows) = lookup(&server, topic, &live, None).await;
            (how == "index").then_some(rows)
        },
    )
    .await;
    let want: Vec<(String, u64, u64, Value)> = live
        .iter()
        .map(|k| &expected[k])
        .map(|r| (r.key.clone(), r.partition, r.offset, r.value.clone()))
        .collect();
    assert_eq!(rows, want);
}

/// Partitions that never had a record are indexed too (they were left
/// "not indexed yet", so every lookup of the topic scanned).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_topic_with_empty_partitions_answers_from_the_index() {
    let server = TestServer::start().await;
    server.api.create_topic("sparse", 4, json!({})).await;
    let records: Vec<Value> = (0..10)
        .map(|i| json!({"key": format!("k{i}"), "value": {"i": i}, "partition": 0}))
        .collect();
    server.api.produce("sparse", &records).await;
    until_indexed(&server, "sparse").await;
    let (_, rows) = lookup(
        &server,
        "sparse",
        &["k3".to_string(), "k9".to_string()],
        None,
    )
    .await;
    assert_eq!(
        rows,
        [
            ("k3".to_string(), 0, 3, json!({"i": 3})),
            ("k9".to_string(), 0, 9, json!({"i": 9}))
        ]
    );
}

/// A topic is indexed from its first lookup by key on (ingest into topics
/// nobody looks up pays nothing for the index): before it, the topic's
/// description lists no index and lookups scan; after it, the index is
/// built, listed, and answers; and a restart keeps following the topic.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_topic_is_indexed_from_its_first_lookup_on() {
    let server = TestServer::start().await;
    let records: Vec<Value> = (0..50)
        .map(|i| json!({"key": format!("k{}", i % 5), "value": {"i": i}}))
        .collect();
    for topic in ["lazy", "looked_up"] {
        server.api.create_topic(topic, 2, json!({})).await;
        server.api.produce(topic, &records).await;
    }
    // Passes of the index loop go over every topic: once another topic
    // looked up is indexed, passes ran with "lazy" there.
    until_indexed(&server, "looked_up").await;
    let (_, described) = server.api.get("/v1/topics/lazy").await;
    assert_eq!(described["indexes"], json!([]), "not looked up: no index");

    let (how, rows) = lookup(&server, "lazy", &["k1".to_string()], None).await;
    assert_eq!(how, "scan", "the first lookup scans");
    assert_eq!(rows.len(), 1);
    assert_eq!(rows[0].3, json!({"i": 46}));
    until_indexed(&server, "lazy").await;
    let (_, described) = server.api.get("/v1/topics/lazy").await;
    assert_eq!(
        described["indexes"],
        json!([{"kind": "latest_by_key", "records_behind": 0}])
    );
    // After a restart the index goes on following the topic, with no
    // lookup to start it again.
    let server = server.restart().await;
    server.api.produce("lazy", &records[..5]).await;
    eventually(
        Duration::from_secs(30),
        "the index caught up after a restart",
        || async {
            let (_, described) = server.api.get("/v1/topics/lazy").await;
            (described["indexes"][0]["records_behind"] == 0).then_some(())
        },
    )
    .await;
    let (how, rows) = lookup(&server, "lazy", &["k1".to_string()], None).await;
    assert_eq!((how.as_str(), &rows[0].3), ("index", &json!({"i": 1})));
}

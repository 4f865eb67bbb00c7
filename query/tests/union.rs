//! The query service over a real broker and cold tier, in process: the
//! union read and SQL give every record exactly once across the tier
//! boundary, on `memory://`, `file://` and the S3-compatible test server.

use std::collections::BTreeMap;
use std::sync::Arc;

use arrow::array::{Array, AsArray, RecordBatch};
use arrow::datatypes::{Int32Type, Int64Type, TimestampMillisecondType};
use futures::StreamExt;
use serde_json::{Value, json};
use strata_broker::produce::{BodyFormat, parse_body};
use strata_broker::{Broker, TopicConfigOverrides};
use strata_query::scan::{self, ScanSpec};
use strata_query::{Format, QueryConfig, QueryService};
use strata_test_support::storage::Storage;
use strata_test_support::{test_config, test_s3};
use strata_tiering::{Tiering, TieringConfig};

/// (partition, offset) → (timestamp, key) of every acknowledged record.
type Oracle = BTreeMap<(i32, i64), (i64, Option<String>)>;

fn produce(broker: &Broker, first: i64, n: i64, oracle: &mut Oracle) {
    let topic = broker.topic("events").unwrap();
    let records: Vec<Value> = (first..first + n)
        .map(|i| {
            json!({"key": (i % 4 != 0).then(|| format!("k{}", i % 9)),
                   "value": {"i": i},
                   "timestamp": 1_000_000 + (i * 7_919) % 5_000,
                   "partition": i % 2})
        })
        .collect();
    // Small requests, so that segments roll often.
    for chunk in records.chunks(40) {
        let body = serde_json::to_vec(&json!({ "records": chunk })).unwrap();
        let parsed = parse_body(&body, BodyFormat::Json, 1 << 20).unwrap();
        let acks = topic.produce(&parsed, 0).unwrap();
        for (ack, record) in acks.iter().zip(chunk) {
            oracle.insert(
                (ack.partition as i32, ack.offset as i64),
                (ack.timestamp, record["key"].as_str().map(str::to_string)),
            );
        }
    }
}

async fn read(tiering: &Arc<Tiering>, broker: &Broker, spec: ScanSpec) -> Vec<RecordBatch> {
    let snapshot = strata_query::pin::pin_topic(broker, tiering, "events", None)
        .await
        .unwrap();
    let stream = scan::scan_topic(tiering.clone(), snapshot, Arc::new(spec), None);
    stream.map(|b| b.unwrap()).collect().await
}

fn rows(batches: &[RecordBatch]) -> Vec<(i32, i64, i64, Option<String>)> {
    let mut out = Vec::new();
    for b in batches {
        let p = b.column(0).as_primitive::<Int32Type>();
        let o = b.column(1).as_primitive::<Int64Type>();
        let t = b.column(2).as_primitive::<TimestampMillisecondType>();
        let k = b.column(3).as_string::<i32>();
        for i in 0..b.num_rows() {
            let key = k.is_valid(i).then(|| k.value(i).to_string());
            out.push((p.value(i), o.value(i), t.value(i), key));
        }
    }
    out
}

async fn union_reads_are_exact(url: &str) {
    let storage = Storage::open(
        url,
        test_config(std::path::Path::new("replaced")),
        TieringConfig::default(),
    )
    .await;
    let (dir, broker, tiering) = (
        &storage.dir,
        storage.broker.clone(),
        storage.tiering.clone(),
    );
    let overrides = TopicConfigOverrides {
        segment_bytes: Some(4096),
        local_retention_bytes: Some(0),
        ..Default::default()
    };
    broker.create_topic("events", Some(2), &overrides).unwrap();
    let mut oracle = Oracle::new();
    produce(&broker, 0, 1500, &mut oracle);
    let summary = tiering.offload_topic("events", true).await.unwrap();
    assert!(summary.files > 4, "{url}: {summary:?}");
    produce(&broker, 1500, 500, &mut oracle);
    for p in broker.topic("events").unwrap().partitions() {
        assert!(
            p.start_offset() > 0,
            "{url}: the oldest records are only cold"
        );
    }

    // Everything, in (partition, offset) order, each record once.
    let all = rows(&read(&tiering, &broker, ScanSpec::default()).await);
    let expected: Vec<_> = oracle
        .iter()
        .map(|(&(p, o), (t, k))| (p, o, *t, k.clone()))
        .collect();
    assert_eq!(all, expected, "{url}");

    // Time windows, a key, an offset range and a projection.
    for (from, to) in [
        (1_000_000, 1_000_100),
        (1_002_000, 1_004_999),
        (0, 1_000_001),
    ] {
        for keys in [vec!["k3"], vec!["k5", "k3", "k5"]] {
            let spec = ScanSpec {
                from_ms: Some(from),
                to_ms: Some(to),
                offsets: 100..900,
                ..ScanSpec::default()
            }
            .with_keys(keys.iter().map(|k| k.to_string()));
            let got = rows(&read(&tiering, &broker, spec).await);
            let want: Vec<_> = expected
                .iter()
                .filter(|(_, o, t, k)| {
                    (from..to).contains(t)
                        && k.as_deref().is_some_and(|k| keys.contains(&k))
                        && (100..900).contains(o)
                })
                .cloned()
                .collect();
            assert_eq!(got, want, "{url} [{from}, {to}) {keys:?}");
        }
    }
    let offsets_only = ScanSpec {
        columns: vec![1],
        limit: Some(10),
        ..ScanSpec::default()
    };
    let batches = read(&tiering, &broker, offsets_only).await;
    assert_eq!(batches.iter().map(RecordBatch::num_rows).sum::<usize>(), 20);
    assert!(batches.iter().all(|b| b.num_columns() == 1));

    // SQL over both tiers.
    let service = QueryService::open(
        broker.clone(),
        tiering.clone(),
        QueryConfig::new(dir.path().to_path_buf()),
    )
    .unwrap();
    let sql = "SELECT \"partition\", count(*) AS n, count(DISTINCT \"offset\") AS d FROM events GROUP BY \"partition\" ORDER BY \"partition\"";
    let output = service.sql(sql.into(), Format::Json).await.unwrap();
    let mut body = output.first.to_vec();
    let mut rest = output.rest;
    while let Some(chunk) = rest.recv().await {
        body.extend_from_slice(&chunk.unwrap());
    }
    let result: Value = serde_json::from_slice(&body).unwrap();
    assert_eq!(
        result["rows"],
        json!([[0, 1000, 1000], [1, 1000, 1000]]),
        "{url}"
    );
    drop(service);
    broker.close().unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn union_reads_on_memory_store() {
    union_reads_are_exact("memory://").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn union_reads_on_file_store() {
    let dir = tempfile::tempdir().unwrap();
    union_reads_are_exact(&format!("file://{}/cold", dir.path().display())).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn union_reads_on_s3() {
    let Some((_, url)) = test_s3("query-union") else {
        eprintln!("no S3 test server (run scripts/test.sh): skipped");
        return;
    };
    union_reads_are_exact(&url).await;
}

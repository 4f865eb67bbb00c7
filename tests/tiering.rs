//! The cold tier through the `strata` binary: offload over HTTP, reads
//! across the tier boundary, an external Parquet reader, and crashes in the
//! middle of an offload.

use std::path::Path;

use reqwest::StatusCode;
use serde_json::{Value, json};
use strata_test_support::{ChildServer, run_python, test_python, test_s3};

fn binary() -> &'static Path {
    Path::new(env!("CARGO_BIN_EXE_strata"))
}

fn dataset(n: i64) -> Vec<Value> {
    (0..n)
        .map(|i| {
            json!({"key": if i % 5 == 0 { None } else { Some(format!("user-{}", i % 13)) },
                   "value": if i % 17 == 0 { json!(null) } else { json!({"i": i, "page": format!("/p/{}", i % 7), "f": 1.5}) },
                   "headers": if i % 3 == 0 { json!({"src": "web"}) } else { json!({}) },
                   "timestamp": 1_700_000_000_000i64 + ((i * 7919) % n) * 1000,
                   "partition": i % 2})
        })
        .collect()
}

async fn load(server: &ChildServer, topic: &str, records: &[Value]) {
    server
        .api
        .create_topic(
            topic,
            2,
            json!({"segment_bytes": 8192, "local_retention_bytes": 0}),
        )
        .await;
    for chunk in records.chunks(50) {
        server.api.produce(topic, chunk).await;
    }
}

async fn offload(server: &ChildServer, topic: &str) -> Value {
    let (status, body) = server
        .api
        .post(
            &format!("/v1/topics/{topic}/tiering/run?roll=true"),
            &json!({}),
        )
        .await;
    assert_eq!(status, StatusCode::OK, "{body}");
    body
}

async fn all_records(server: &ChildServer, topic: &str) -> Vec<Vec<Value>> {
    let mut out = Vec::new();
    for p in 0..2 {
        let records = server.api.consume_all(topic, p, 0).await;
        for (i, r) in records.iter().enumerate() {
            assert_eq!(
                r["offset"], i as u64,
                "partition {p}: dense, each offset once"
            );
        }
        out.push(records);
    }
    out
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn consume_and_time_lookups_cross_the_tier_boundary() {
    let dir = tempfile::tempdir().unwrap();
    let server = ChildServer::spawn(binary(), dir.path(), &[]);
    let records = dataset(600);
    load(&server, "lake", &records).await;
    let before = all_records(&server, "lake").await;
    assert_eq!(before[0].len() + before[1].len(), 600);

    let (status, body) = server.api.get("/v1/topics/lake/tiering/run").await;
    assert_eq!(status, StatusCode::METHOD_NOT_ALLOWED, "{body}");
    // Only `true` and `false` (schemathesis found `?roll=` accepted).
    for bad in ["maybe", ""] {
        let (status, body) = server
            .api
            .post(
                &format!("/v1/topics/lake/tiering/run?roll={bad}"),
                &json!({}),
            )
            .await;
        assert_eq!(
            (status, body["error"]["code"].clone()),
            (StatusCode::BAD_REQUEST, json!("invalid_request")),
            "roll={bad:?}"
        );
    }
    let (status, body) = server
        .api
        .post("/v1/topics/nope/tiering/run", &json!({}))
        .await;
    assert_eq!(
        (status, body["error"]["code"].clone()),
        (StatusCode::NOT_FOUND, json!("topic_not_found"))
    );
    let summary = offload(&server, "lake").await;
    assert_eq!(summary["records"], 600, "{summary}");
    assert!(summary["files"].as_u64().unwrap() >= 4, "{summary}");
    let (_, described) = server.api.get("/v1/topics/lake").await;
    for p in described["partitions"].as_array().unwrap() {
        assert_eq!(p["start_offset"], 0, "{p}");
        assert_eq!(
            p["local_start_offset"], 300,
            "local segments deleted once committed: {p}"
        );
        assert_eq!(p["cold"]["end_offset"], 300, "{p}");
        assert!(
            p["cold"]["files"].as_u64().unwrap() >= 2 && p["cold"]["bytes"].as_u64().unwrap() > 0
        );
    }
    // Consume from offset 0 now reads Parquet, invisibly: identical records.
    assert_eq!(all_records(&server, "lake").await, before);
    // New records after the boundary continue the offsets.
    let acks = server
        .api
        .produce("lake", &[json!({"value": "after", "partition": 1})])
        .await;
    assert_eq!(acks[0]["offset"], 300);

    for p in 0..2usize {
        let stamps: Vec<i64> = records
            .iter()
            .filter(|r| r["partition"] == p)
            .map(|r| r["timestamp"].as_i64().unwrap())
            .collect();
        for target in [
            0,
            1_700_000_000_000i64,
            1_700_000_123_000,
            1_700_000_598_000,
            1_700_000_599_001,
        ] {
            let (status, body) = server
                .api
                .get(&format!(
                    "/v1/topics/lake/partitions/{p}/offset?timestamp={target}"
                ))
                .await;
            assert_eq!(status, StatusCode::OK);
            let want = stamps.iter().position(|&ts| ts >= target);
            match want {
                Some(offset) => assert_eq!(
                    body["offset"], offset,
                    "partition {p} target {target}: {body}"
                ),
                None => assert!(body["offset"].as_u64().unwrap() >= 300, "{body}"),
            }
        }
    }

    // An engine that is not ours reads the files and finds exactly the records.
    if let Some(python) = test_python() {
        let script = r#"
import json, sys, glob, pyarrow.parquet as pq
rows = []
for path in sorted(glob.glob(sys.argv[1] + "/*/*.parquet")):
    for r in pq.read_table(path).to_pylist():
        rows.append([r["partition"], r["offset"], int(r["timestamp"].timestamp() * 1000), r["key"], r["value"], dict(r["headers"])])
print(json.dumps(rows))
"#;
        let out = run_python(&python, script, &dir.path().join("cold/lake"));
        let rows: Vec<Value> = serde_json::from_str(&out).unwrap();
        assert_eq!(rows.len(), 600);
        let mut seen = std::collections::HashSet::new();
        for row in &rows {
            let (p, offset) = (
                row[0].as_u64().unwrap() as usize,
                row[1].as_u64().unwrap() as usize,
            );
            assert!(seen.insert((p, offset)), "record {p}/{offset} twice");
            let want = &before[p][offset];
            assert_eq!(
                strata_server::broker::timestamp::format_timestamp(row[2].as_i64().unwrap()),
                want["timestamp"]
            );
            assert_eq!(row[3], want["key"]);
            assert_eq!(
                serde_json::from_str::<Value>(row[4].as_str().unwrap()).unwrap(),
                want["value"]
            );
            assert_eq!(row[5], want["headers"]);
        }
    }

    // Deleting the topic removes its cold files and manifests too.
    let (status, _) = server.api.delete("/v1/topics/lake").await;
    assert_eq!(status, StatusCode::NO_CONTENT);
    let left = walk_files(&dir.path().join("cold/lake"));
    assert!(left.is_empty(), "cold data left behind: {left:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn crashes_in_the_middle_of_an_offload_lose_and_double_nothing() {
    for step in ["after_upload", "after_commit"] {
        let dir = tempfile::tempdir().unwrap();
        let server = ChildServer::spawn(binary(), dir.path(), &[]);
        load(&server, "crashy", &dataset(400)).await;
        let before = all_records(&server, "crashy").await;
        server.terminate();

        // The server aborts at `step` of its first offload.
        let server =
            ChildServer::spawn_with_env(binary(), dir.path(), &[], &[("STRATA_CRASH_AT", step)]);
        let url = format!("{}/v1/topics/crashy/tiering/run?roll=true", server.api.base);
        let outcome = server.api.http.post(url).send().await;
        assert!(outcome.is_err() || !outcome.unwrap().status().is_success());
        let status = server.wait_exit();
        assert!(!status.success(), "{step}: the crash point fired");

        // As a crash in the middle of a local upload leaves it: a staging
        // file, which object_store's listings do not show. (Partitions
        // offload side by side: the crash may have come before partition 0
        // wrote anything, directory included.)
        let partition_dir = dir.path().join("cold/crashy/0");
        std::fs::create_dir_all(&partition_dir).unwrap();
        let staged = partition_dir.join("00000000000000000000-00000000000000000009.parquet#42");
        std::fs::write(&staged, b"half a file").unwrap();
        let server = ChildServer::spawn(binary(), dir.path(), &[]);
        assert!(
            !staged.exists(),
            "{step}: staged uploads are removed on start"
        );
        assert_eq!(
            all_records(&server, "crashy").await,
            before,
            "{step}: nothing lost or doubled after the crash"
        );
        // An upload the crash left uncommitted is removed on start.
        let (_, d) = server.api.get("/v1/topics/crashy").await;
        let committed: u64 = d["partitions"]
            .as_array()
            .unwrap()
            .iter()
            .map(|p| p["cold"]["files"].as_u64().unwrap())
            .sum();
        let on_disk = ["0", "1"]
            .iter()
            .filter_map(|p| std::fs::read_dir(dir.path().join("cold/crashy").join(p)).ok())
            .flatten()
            .filter(|e| {
                e.as_ref()
                    .is_ok_and(|e| e.file_name().to_string_lossy().ends_with(".parquet"))
            })
            .count() as u64;
        assert_eq!(on_disk, committed, "{step}: only committed files remain");
        let summary = offload(&server, "crashy").await;
        assert!(summary["records"].as_u64().unwrap() <= 400, "{summary}");
        assert_eq!(
            all_records(&server, "crashy").await,
            before,
            "{step}: offload completes after restart"
        );
        let (_, d) = server.api.get("/v1/topics/crashy").await;
        for p in d["partitions"].as_array().unwrap() {
            assert_eq!(p["cold"]["end_offset"], 200, "{step}: {p}");
            assert_eq!(p["local_start_offset"], 200, "{step}: {p}");
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kill9_at_random_points_of_an_offload() {
    let dir = tempfile::tempdir().unwrap();
    let server = ChildServer::spawn(binary(), dir.path(), &[]);
    load(&server, "killed", &dataset(3000)).await;
    let before = all_records(&server, "killed").await;
    let mut server = server;
    // Kill points spread over the offload: at once, early, later.
    for delay_ms in [0u64, 3, 9, 20, 45, 80] {
        let url = format!("{}/v1/topics/killed/tiering/run?roll=true", server.api.base);
        let http = server.api.http.clone();
        let run = tokio::spawn(async move { http.post(url).send().await });
        tokio::time::sleep(std::time::Duration::from_millis(delay_ms)).await;
        server.kill9();
        let _ = run.await;
        server = ChildServer::spawn(binary(), dir.path(), &[]);
        assert_eq!(
            all_records(&server, "killed").await,
            before,
            "after a kill {delay_ms} ms into an offload"
        );
    }
    offload(&server, "killed").await;
    assert_eq!(
        all_records(&server, "killed").await,
        before,
        "offload completes after the crashes"
    );
    let (_, d) = server.api.get("/v1/topics/killed").await;
    for p in d["partitions"].as_array().unwrap() {
        assert_eq!(p["cold"]["end_offset"], 1500, "{p}");
    }
    // Each record is in exactly one committed file: the glob sees it once.
    if let Some(python) = test_python() {
        let script = "import sys, glob, pyarrow.parquet as pq; print(sum(pq.read_metadata(p).num_rows for p in glob.glob(sys.argv[1] + '/*/*.parquet')))";
        let out = run_python(&python, script, &dir.path().join("cold/killed"));
        assert_eq!(out.trim(), "3000");
    }
}

/// Open multipart uploads under `prefix` of `bucket`, as the S3 server
/// lists them (object_store cannot list them; boto3 ships with moto).
fn open_uploads(python: &Path, endpoint: &str, bucket: &str, prefix: &str) -> usize {
    let script = "import os, sys, boto3\n\
        endpoint, bucket, prefix = sys.argv[1].split('|')\n\
        s3 = boto3.client('s3', endpoint_url=endpoint, region_name=os.environ.get('AWS_REGION', 'us-east-1'))\n\
        print(len(s3.list_multipart_uploads(Bucket=bucket, Prefix=prefix).get('Uploads', [])))";
    let arg = format!("{endpoint}|{bucket}|{prefix}");
    run_python(python, script, Path::new(&arg))
        .trim()
        .parse()
        .expect("a count")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_upload_cut_short_by_a_crash_is_aborted_on_restart() {
    let Some((s3, url)) = test_s3("mpu") else {
        eprintln!("no S3 server (run scripts/test.sh): skipped");
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let args = ["--object-store", url.as_str()];
    // ~14 MB of values that barely compress: a Parquet file of two parts.
    let mut x = 0x9e37_79b9_7f4a_7c15u64;
    let alphabet = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_";
    let records: Vec<Value> = (0..36_000)
        .map(|i| {
            let text: String = (0..400)
                .map(|_| {
                    x ^= x << 13;
                    x ^= x >> 7;
                    x ^= x << 17;
                    alphabet[(x % 64) as usize] as char
                })
                .collect();
            json!({"value": {"i": i, "noise": text}, "partition": 0})
        })
        .collect();

    let server = ChildServer::spawn_with_env(
        binary(),
        &data,
        &args,
        &[("STRATA_CRASH_AT", "during_upload")],
    );
    server
        .api
        .create_topic("big", 2, json!({"local_retention_bytes": 0}))
        .await;
    for chunk in records.chunks(500) {
        server.api.produce("big", chunk).await;
    }
    let url_run = format!("{}/v1/topics/big/tiering/run?roll=true", server.api.base);
    let outcome = server.api.http.post(url_run).send().await;
    assert!(outcome.is_err() || !outcome.unwrap().status().is_success());
    assert!(!server.wait_exit().success(), "the crash point fired");
    let notes = || std::fs::read_dir(data.join("uploads")).unwrap().count();
    assert_eq!(notes(), 1, "the open upload is in the journal");
    let (bucket, prefix) = url
        .trim_start_matches("s3://")
        .split_once('/')
        .expect("s3://bucket/prefix");
    let endpoint = format!("http://{s3}");
    let python = test_python();
    if let Some(python) = &python {
        assert_eq!(open_uploads(python, &endpoint, bucket, prefix), 1);
    }

    let server = ChildServer::spawn(binary(), &data, &args);
    assert_eq!(notes(), 0, "aborted on start");
    if let Some(python) = &python {
        assert_eq!(open_uploads(python, &endpoint, bucket, prefix), 0);
    }
    let summary = offload(&server, "big").await;
    assert_eq!(summary["records"], 36_000, "{summary}");
    assert_eq!(notes(), 0, "a completed upload leaves the journal");
    let got = all_records(&server, "big").await;
    assert_eq!(got[0].len(), 36_000);
    for (record, want) in got[0].iter().zip(&records) {
        assert_eq!(record["value"], want["value"]);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn object_store_outage_backs_pressure_and_loses_nothing() {
    let Some((s3, url)) = test_s3("outage") else {
        eprintln!("no S3 server (run scripts/test.sh): skipped");
        return;
    };
    let proxy = strata_test_support::FaultProxy::start(s3);
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("strata.toml");
    std::fs::write(&config, "max_local_bytes = 300000\n").unwrap();
    let endpoint = format!("http://{}", proxy.addr);
    let env = [("AWS_ENDPOINT", endpoint.as_str())];
    let args = [
        "--object-store",
        url.as_str(),
        "--config",
        config.to_str().unwrap(),
    ];
    let server = ChildServer::spawn_with_env(binary(), &dir.path().join("data"), &args, &env);
    server
        .api
        .create_topic(
            "out",
            1,
            json!({"segment_bytes": 16384, "local_retention_bytes": 0}),
        )
        .await;

    proxy.cut();
    // Guards Tiering::topic_created: a topic created while the store is
    // down is served from local disk alone (its cold tier is known empty),
    // so creating, describing, producing and consuming ask nothing of it.
    server.api.create_topic("fresh", 1, json!({})).await;
    server
        .api
        .produce("fresh", &[json!({"value": "during the outage"})])
        .await;
    assert_eq!(server.api.consume_all("fresh", 0, 0).await.len(), 1);
    let (status, body) = server.api.get("/v1/topics/fresh").await;
    assert_eq!(status, StatusCode::OK, "{body}");
    let mut acked = Vec::new();
    let mut refused = None;
    for n in 0..400 {
        let batch: Vec<Value> = (0..20)
            .map(|i| json!({"value": {"n": n, "i": i, "pad": "x".repeat(80)}}))
            .collect();
        let response = server
            .api
            .http
            .post(format!("{}/v1/topics/out/records", server.api.base))
            .json(&json!({ "records": batch }))
            .send()
            .await
            .unwrap();
        if response.status() == StatusCode::SERVICE_UNAVAILABLE {
            assert!(response.headers().contains_key("retry-after"));
            refused = Some(n);
            break;
        }
        assert_eq!(response.status(), StatusCode::OK);
        acked.extend(batch);
    }
    let refused = refused.expect("produce hits the local budget while the store is down");
    // Liveness stays up; readiness says what is wrong, with Retry-After.
    let (status, _) = server.api.get("/health").await;
    assert_eq!(status, StatusCode::OK);
    let ready = server
        .api
        .http
        .get(format!("{}/health/ready", server.api.base))
        .send()
        .await
        .unwrap();
    assert_eq!(ready.status(), StatusCode::SERVICE_UNAVAILABLE);
    assert!(ready.headers().contains_key("retry-after"));
    let ready: Value = ready.json().await.unwrap();
    assert_eq!(ready["status"], "not_ready", "{ready}");
    assert_eq!(ready["checks"]["object_store"]["ok"], false, "{ready}");
    assert!(
        ready["checks"]["object_store"]["error"].is_string(),
        "{ready}"
    );
    assert_eq!(ready["checks"]["local_budget"]["ok"], false, "{ready}");
    assert!(
        refused > 10,
        "produce kept working during the outage until the budget ({refused} batches)"
    );
    let (status, body) = server
        .api
        .post("/v1/topics/out/tiering/run?roll=true", &json!({}))
        .await;
    assert_eq!(
        status,
        StatusCode::SERVICE_UNAVAILABLE,
        "offload cannot reach the store: {body}"
    );

    proxy.restore();
    strata_test_support::eventually(
        std::time::Duration::from_secs(60),
        "offload after the outage",
        || {
            let api = server.api.clone();
            async move {
                let (status, _) = api
                    .post("/v1/topics/out/tiering/run?roll=true", &json!({}))
                    .await;
                (status == StatusCode::OK).then_some(())
            }
        },
    )
    .await;
    let (_, d) = server.api.get("/v1/topics/out").await;
    assert_eq!(d["partitions"][0]["cold"]["end_offset"], acked.len(), "{d}");
    // Every check recovers by itself, the cluster view included (its
    // heartbeats go through the store too, on their own clock).
    strata_test_support::eventually(
        std::time::Duration::from_secs(30),
        "ready again once the store answers",
        || {
            let api = server.api.clone();
            async move {
                let (status, _) = api.get("/health/ready").await;
                (status == StatusCode::OK).then_some(())
            }
        },
    )
    .await;
    let records = server.api.consume_all("out", 0, 0).await;
    assert_eq!(records.len(), acked.len());
    for (i, (record, sent)) in records.iter().zip(&acked).enumerate() {
        assert_eq!(record["offset"], i);
        assert_eq!(&record["value"], &sent["value"]);
    }
    // Space was freed: produce is accepted again.
    server
        .api
        .produce("out", &[json!({"value": "after"})])
        .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_lost_local_disk_is_rebuilt_from_the_object_store() {
    let dir = tempfile::tempdir().unwrap();
    let store = format!("file://{}", dir.path().join("store").display());
    let data = dir.path().join("data");
    let server = ChildServer::spawn(binary(), &data, &["--object-store", &store]);
    load(&server, "durable", &dataset(500)).await;
    offload(&server, "durable").await;
    let before = all_records(&server, "durable").await;
    let (_, described) = server.api.get("/v1/topics/durable").await;
    // Stopped cleanly, so it hands back the cold tier's writer lease; a new
    // server (a new name) would otherwise wait for the lease to expire.
    assert!(server.terminate().success());

    std::fs::remove_dir_all(&data).unwrap();
    let server = ChildServer::spawn(binary(), &data, &["--object-store", &store]);
    let (status, restored) = server.api.get("/v1/topics/durable").await;
    assert_eq!(status, StatusCode::OK, "{restored}");
    assert_eq!(restored["config"], described["config"]);
    assert_eq!(
        all_records(&server, "durable").await,
        before,
        "every offloaded record, from the store alone"
    );
    for p in restored["partitions"].as_array().unwrap() {
        assert_eq!(
            (p["start_offset"].clone(), p["end_offset"].clone()),
            (json!(0), json!(250)),
            "{p}"
        );
    }
    let acks = server
        .api
        .produce("durable", &[json!({"value": "next", "partition": 0})])
        .await;
    assert_eq!(
        acks[0]["offset"], 250,
        "offsets continue after the cold tier"
    );
}

/// Every file below `dir` (none when it does not exist).
fn walk_files(dir: &Path) -> Vec<std::path::PathBuf> {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return Vec::new();
    };
    entries
        .flatten()
        .flat_map(|e| {
            let path = e.path();
            if path.is_dir() {
                walk_files(&path)
            } else {
                vec![path]
            }
        })
        .collect()
}

//! The cold tier as a Delta Lake table, read by engines that are not ours:
//! delta-rs (the `deltalake` Python package) and DuckDB's delta extension,
//! with no Strata process running. Each record of the cold tier is in the
//! table exactly once, with microsecond timestamps; retention removes a
//! file from the table before deleting it, and a reader of the version
//! before can still finish; a crash between a manifest commit and the
//! table's, or right after the table's, leaves nothing lost or doubled.
//! Compaction merges small files under the readers' feet, crash or not.

use std::path::Path;
use std::time::Duration;

use reqwest::StatusCode;
use serde_json::{Value, json};
use strata_test_support::{ChildServer, eventually, run_python, test_python, test_s3};

fn binary() -> &'static Path {
    Path::new(env!("CARGO_BIN_EXE_strata"))
}

/// Reads the table at `sys.argv[1]` (a path, or `s3://…` with the `AWS_*`
/// variables of the test's S3 server) with delta-rs, and, for a local
/// table, with DuckDB too; a `@N` suffix reads version N. Prints, per
/// reader, the column type of `timestamp` and every row's
/// `[partition, offset, timestamp in µs, key, value]`.
const READ_TABLE: &str = r#"
import glob, json, os, sys, tempfile
import pyarrow as pa
import deltalake
arg = sys.argv[1]
location, _, version = arg.partition("@")
version = int(version) if version else None
options = None
if location.startswith("s3://"):
    options = {"AWS_ENDPOINT_URL": os.environ["AWS_ENDPOINT"], "AWS_ALLOW_HTTP": "true",
               "AWS_REGION": os.environ["AWS_REGION"], "AWS_ACCESS_KEY_ID": os.environ["AWS_ACCESS_KEY_ID"],
               "AWS_SECRET_ACCESS_KEY": os.environ["AWS_SECRET_ACCESS_KEY"]}
dt = deltalake.DeltaTable(location, version=version, storage_options=options)
t = dt.to_pyarrow_table()
us = t.column("timestamp").cast(pa.int64()).to_pylist()
rows = [[p, o, s, k, v] for p, o, s, k, v in zip(t.column("partition").to_pylist(), t.column("offset").to_pylist(), us, t.column("key").to_pylist(), t.column("value").to_pylist())]
out = {"delta_rs": {"type": str(t.schema.field("timestamp").type), "rows": sorted(rows),
                    "version": dt.version(), "files": len(dt.file_uris()),
                    "txn": dt.transaction_version("strata/" + os.path.basename(location.rstrip("/")) + "/0")}}
if not location.startswith("s3://"):
    import duckdb, duckdb_extension_delta
    ext = glob.glob(os.path.join(os.path.dirname(duckdb_extension_delta.__file__), "extensions", "*", "delta.duckdb_extension"))[0]
    con = duckdb.connect(config={"autoinstall_known_extensions": "false", "autoload_known_extensions": "false",
                                 "extension_directory": tempfile.mkdtemp()})
    con.execute(f"LOAD '{ext}'")
    if version is None:
        scan = f"delta_scan('{location}')"
        got = con.execute(f'select partition, "offset", epoch_us(timestamp), key, value from {scan}').fetchall()
        kind = con.execute(f"select typeof(timestamp) from {scan} limit 1").fetchall()
        out["duckdb"] = {"type": kind[0][0] if kind else None, "rows": sorted([list(r) for r in got])}
print(json.dumps(out))
"#;

/// The Arrow schema pyarrow reads from the first data file under
/// `sys.argv[1]`: the `timestamp` type, and the Parquet field ids of the
/// columns and of the `headers` map's key and value.
const FILE_SCHEMA: &str = r#"
import glob, json, sys
import pyarrow.parquet as pq
path = sorted(glob.glob(sys.argv[1] + "/[0-9]*/*.parquet"))[0]
s = pq.read_schema(path)
fid = lambda f: (f.metadata or {}).get(b"PARQUET:field_id", b"").decode()
kv = s.field("headers").type
print(json.dumps({"timestamp": str(s.field("timestamp").type),
                  "ids": [fid(s.field(n)) for n in s.names],
                  "map_ids": [fid(kv.key_field), fid(kv.item_field)]}))
"#;

fn read_table(python: &Path, location: &str) -> Value {
    serde_json::from_str(&run_python(python, READ_TABLE, Path::new(location))).expect("json")
}

/// What the server holds, as `[partition, offset, µs, key, value]` rows.
async fn records(server: &ChildServer, topic: &str, partitions: u32) -> Vec<Value> {
    let (_, described) = server.api.get(&format!("/v1/topics/{topic}")).await;
    let mut rows = Vec::new();
    for p in 0..partitions {
        let start = described["partitions"][p as usize]["start_offset"]
            .as_u64()
            .expect("start_offset");
        for r in server.api.consume_all(topic, p, start).await {
            let ms = chrono::DateTime::parse_from_rfc3339(r["timestamp"].as_str().unwrap())
                .unwrap()
                .timestamp_millis();
            rows.push(json!([
                p,
                r["offset"],
                ms * 1000,
                r["key"],
                r["value"].to_string()
            ]));
        }
    }
    rows.sort_by_key(|r| (r[0].as_u64(), r[1].as_u64()));
    rows
}

async fn produce(server: &ChildServer, topic: &str, from: i64, n: i64, at_ms: i64) {
    let batch: Vec<Value> = (from..from + n)
        .map(|i| {
            json!({"key": if i % 4 == 0 { None } else { Some(format!("k{}", i % 9)) },
                   "value": {"i": i},
                   "timestamp": at_ms + i,
                   "partition": i % 2})
        })
        .collect();
    for chunk in batch.chunks(100) {
        server.api.produce(topic, chunk).await;
    }
}

async fn table_of(server: &ChildServer, topic: &str) -> Value {
    let (status, body) = server.api.get(&format!("/v1/topics/{topic}")).await;
    assert_eq!(status, StatusCode::OK, "{body}");
    body["table"].clone()
}

fn assert_rows(read: &Value, reader: &str, want: &[Value]) {
    let got = read[reader]["rows"].as_array().expect("rows");
    assert_eq!(
        read[reader]["type"],
        if reader == "duckdb" {
            json!("TIMESTAMP WITH TIME ZONE")
        } else {
            json!("timestamp[us, tz=UTC]")
        },
        "{reader}: microseconds, UTC"
    );
    assert_eq!(got.len(), want.len(), "{reader}: every record once");
    // `value` is the record's JSON text; compare it parsed.
    for (g, w) in got.iter().zip(want) {
        assert_eq!(
            g.as_array().unwrap()[..4],
            w.as_array().unwrap()[..4],
            "{reader}"
        );
        let parsed = |v: &Value| serde_json::from_str::<Value>(v.as_str().unwrap()).unwrap();
        assert_eq!(parsed(&g[4]), parsed(&w[4]), "{reader}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn other_engines_read_the_cold_tier_as_a_delta_table() {
    let python = test_python().expect("the test needs deltalake and DuckDB: run scripts/test.sh");
    let s3 = test_s3("lake");
    let mut stores = vec![None];
    stores.extend(s3.map(|(_, url)| Some(url)));
    for store in stores {
        let dir = tempfile::tempdir().unwrap();
        let args: Vec<&str> = match &store {
            Some(url) => vec!["--object-store", url.as_str()],
            None => vec![],
        };
        let server = ChildServer::spawn(binary(), dir.path(), &args);
        server
            .api
            .create_topic(
                "clicks",
                2,
                json!({"segment_bytes": 4096, "local_retention_bytes": 0}),
            )
            .await;
        let table = table_of(&server, "clicks").await;
        assert_eq!(table["format"], "delta", "{table}");
        assert_eq!(table["version"], Value::Null, "no table before any offload");
        let location = table["location"].as_str().unwrap().to_string();
        match &store {
            Some(url) => assert_eq!(location, format!("{url}/clicks")),
            None => assert_eq!(
                location,
                format!("file://{}/cold/clicks", dir.path().display())
            ),
        }

        let now = strata_server::broker::timestamp::now_ms();
        produce(&server, "clicks", 0, 400, now).await;
        let first = server.api.offload("clicks").await;
        assert_eq!(first["records"], 400, "{first}");
        let v1 = table_of(&server, "clicks").await["version"]
            .as_u64()
            .expect("a version");
        // Publishing again with nothing new commits nothing.
        server.api.offload("clicks").await;
        assert_eq!(table_of(&server, "clicks").await["version"], v1);
        produce(&server, "clicks", 400, 300, now).await;
        server.api.offload("clicks").await;
        let v2 = table_of(&server, "clicks").await["version"]
            .as_u64()
            .unwrap();
        assert!(v2 > v1, "a second publish: {v1} -> {v2}");
        let want = records(&server, "clicks", 2).await;
        assert_eq!(want.len(), 700);
        server.terminate();

        // No Strata process runs now.
        let path = match &store {
            Some(_) => location.clone(),
            None => dir.path().join("cold/clicks").display().to_string(),
        };
        let read = read_table(&python, &path);
        assert_rows(&read, "delta_rs", &want);
        assert_eq!(read["delta_rs"]["version"], v2);
        assert!(
            read["delta_rs"]["txn"].as_u64().is_some_and(|v| v >= 2),
            "the partition's manifest version is the table's txn: {read}"
        );
        if store.is_none() {
            assert_rows(&read, "duckdb", &want);
            // The files themselves are what table readers expect.
            let files = run_python(&python, FILE_SCHEMA, &dir.path().join("cold/clicks"));
            let files: Value = serde_json::from_str(&files).unwrap();
            assert_eq!(
                files,
                json!({"timestamp": "timestamp[us, tz=UTC]",
                       "ids": ["1", "2", "3", "4", "5", "6"], "map_ids": ["7", "8"]})
            );
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn retention_removes_files_from_the_table_before_deleting_them() {
    let python = test_python().expect("the test needs deltalake and DuckDB: run scripts/test.sh");
    let dir = tempfile::tempdir().unwrap();
    let server = ChildServer::spawn(binary(), dir.path(), &[]);
    server
        .api
        .create_topic(
            "aging",
            2,
            json!({"segment_bytes": 4096, "local_retention_bytes": 0, "retention_ms": 4000}),
        )
        .await;
    let table_dir = dir.path().join("cold/aging");
    let old = strata_server::broker::timestamp::now_ms();
    produce(&server, "aging", 0, 200, old).await;
    server.api.offload("aging").await;
    let before = table_of(&server, "aging").await["version"]
        .as_u64()
        .unwrap();
    let old_rows = records(&server, "aging", 2).await;
    assert_rows(
        &read_table(&python, &table_dir.display().to_string()),
        "delta_rs",
        &old_rows,
    );

    // Newer records, then the old ones expire: retention drops their files.
    produce(&server, "aging", 200, 100, old + 60_000).await;
    eventually(
        Duration::from_secs(30),
        "retention drops the old files",
        || async {
            server.api.offload("aging").await;
            let (_, d) = server.api.get("/v1/topics/aging").await;
            let starts: Vec<u64> = d["partitions"]
                .as_array()
                .unwrap()
                .iter()
                .map(|p| p["start_offset"].as_u64().unwrap())
                .collect();
            (starts == [100, 100]).then_some(())
        },
    )
    .await;
    let latest = read_table(&python, &table_dir.display().to_string());
    let kept: Vec<Value> = records(&server, "aging", 2).await;
    assert_eq!(kept.len(), 100);
    assert_rows(&latest, "delta_rs", &kept);
    assert_rows(&latest, "duckdb", &kept);
    // A reader that began at the version before the removal still reads
    // every file of it: the files outlive their removal by the grace period.
    let older = read_table(&python, &format!("{}@{before}", table_dir.display()));
    assert_rows(&older, "delta_rs", &old_rows);
    server.terminate();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn crashes_around_a_table_commit_lose_and_double_nothing() {
    let python = test_python().expect("the test needs deltalake and DuckDB: run scripts/test.sh");
    for step in ["after_commit", "after_table_commit"] {
        let dir = tempfile::tempdir().unwrap();
        let server = ChildServer::spawn(binary(), dir.path(), &[]);
        server
            .api
            .create_topic(
                "crashy",
                2,
                json!({"segment_bytes": 4096, "local_retention_bytes": 0}),
            )
            .await;
        produce(
            &server,
            "crashy",
            0,
            300,
            strata_server::broker::timestamp::now_ms(),
        )
        .await;
        let want = records(&server, "crashy", 2).await;
        server.terminate();

        // The server aborts at `step` of its first offload and publish.
        let server =
            ChildServer::spawn_with_env(binary(), dir.path(), &[], &[("STRATA_CRASH_AT", step)]);
        let url = format!("{}/v1/topics/crashy/tiering/run?roll=true", server.api.base);
        let outcome = server.api.http.post(url).send().await;
        assert!(outcome.is_err() || !outcome.unwrap().status().is_success());
        assert!(
            !server.wait_exit().success(),
            "{step}: the crash point fired"
        );

        let server = ChildServer::spawn(binary(), dir.path(), &[]);
        server.api.offload("crashy").await;
        let version = table_of(&server, "crashy").await["version"].as_u64();
        assert!(version.is_some(), "{step}: published after the restart");
        assert_eq!(records(&server, "crashy", 2).await, want, "{step}");
        server.terminate();
        let read = read_table(
            &python,
            &dir.path().join("cold/crashy").display().to_string(),
        );
        assert_rows(&read, "delta_rs", &want);
        assert_rows(&read, "duckdb", &want);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn deleting_a_topic_deletes_its_table_and_a_new_one_starts_empty() {
    let python = test_python().expect("the test needs deltalake and DuckDB: run scripts/test.sh");
    let dir = tempfile::tempdir().unwrap();
    let server = ChildServer::spawn(binary(), dir.path(), &[]);
    let config = json!({"segment_bytes": 4096, "local_retention_bytes": 0});
    server.api.create_topic("again", 2, config.clone()).await;
    produce(
        &server,
        "again",
        0,
        200,
        strata_server::broker::timestamp::now_ms(),
    )
    .await;
    server.api.offload("again").await;
    let (status, _) = server.api.delete("/v1/topics/again").await;
    assert_eq!(status, StatusCode::NO_CONTENT);
    let log = dir.path().join("cold/again/_delta_log");
    let left = std::fs::read_dir(&log).map_or(0, |entries| entries.count());
    assert_eq!(left, 0, "the table's log goes with the topic");
    server.api.create_topic("again", 2, config).await;
    assert_eq!(table_of(&server, "again").await["version"], Value::Null);
    produce(
        &server,
        "again",
        0,
        50,
        strata_server::broker::timestamp::now_ms(),
    )
    .await;
    server.api.offload("again").await;
    let want = records(&server, "again", 2).await;
    assert_eq!(want.len(), 50);
    let read = read_table(
        &python,
        &dir.path().join("cold/again").display().to_string(),
    );
    assert_rows(&read, "delta_rs", &want);
    server.terminate();
}

/// A server whose background passes (offload, publish, compaction) run
/// every 100 ms.
fn spawn_eager(dir: &Path, env: &[(&str, &str)]) -> ChildServer {
    spawn_configured(dir, "[tiering]\noffload_interval_ms = 100\n", env)
}

/// A server over `dir/data` with the config file `toml`.
fn spawn_configured(dir: &Path, toml: &str, env: &[(&str, &str)]) -> ChildServer {
    let config = dir.join("strata.toml");
    std::fs::write(&config, toml).unwrap();
    let config = config.display().to_string();
    let data = dir.join("data");
    ChildServer::spawn_with_env(binary(), &data, &["--config", &config], env)
}

async fn cold_files(server: &ChildServer, topic: &str) -> u64 {
    let (_, d) = server.api.get(&format!("/v1/topics/{topic}")).await;
    d["partitions"]
        .as_array()
        .unwrap()
        .iter()
        .map(|p| p["cold"]["files"].as_u64().unwrap())
        .sum()
}

/// Many small files (a segment of 4 KiB each) of a topic whose records
/// are all offloaded.
async fn small_files(server: &ChildServer, topic: &str, count: i64) -> Vec<Value> {
    server
        .api
        .create_topic(
            topic,
            2,
            json!({"segment_bytes": 4096, "local_retention_bytes": 0}),
        )
        .await;
    produce(
        server,
        topic,
        0,
        count,
        strata_server::broker::timestamp::now_ms(),
    )
    .await;
    server.api.offload(topic).await;
    records(server, topic, 2).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn compaction_merges_small_files_under_the_readers() {
    let python = test_python().expect("the test needs deltalake and DuckDB: run scripts/test.sh");
    let dir = tempfile::tempdir().unwrap();
    // Loaded with compaction off: a compaction running while the files
    // arrive merges runs of 16 as they come and leaves a tail of fewer,
    // which waits for more files (by design); this test wants them all.
    let server = spawn_configured(dir.path(), "[tiering]\ncompaction = false\n", &[]);
    let want = small_files(&server, "small", 4000).await;
    assert_eq!(want.len(), 4000);
    let before = cold_files(&server, "small").await;
    assert!(before >= 32, "{before} files");
    server.terminate();
    let server = spawn_eager(dir.path(), &[]);
    // At least 16 files a partition: merged whatever their size.
    let files = eventually(
        Duration::from_secs(60),
        "compaction merges the small files",
        || async {
            let files = cold_files(&server, "small").await;
            (files <= 4).then_some(files)
        },
    )
    .await;
    assert!(files >= 2, "one file or more per partition: {files}");
    assert_eq!(
        records(&server, "small", 2).await,
        want,
        "every record once"
    );
    // The table follows: its newest version lists the merged files only.
    eventually(
        Duration::from_secs(30),
        "the table follows the compaction",
        || async {
            let read = read_table(
                &python,
                &dir.path().join("data/cold/small").display().to_string(),
            );
            (read["delta_rs"]["files"].as_u64() == Some(files)).then_some(())
        },
    )
    .await;
    server.terminate();
    // A compaction's commit is checkpointed: a reader starts from the
    // merged files, not from every small file's add (regression guard).
    let log = dir.path().join("data/cold/small/_delta_log");
    let last: Value = serde_json::from_slice(
        &std::fs::read(log.join("_last_checkpoint")).expect("a checkpoint after compaction"),
    )
    .expect("_last_checkpoint is JSON");
    let version = last["version"].as_u64().expect("its version");
    assert!(
        log.join(format!("{version:020}.checkpoint.parquet"))
            .exists(),
        "{last}"
    );
    let newest = std::fs::read_dir(&log)
        .expect("the log")
        .filter_map(|e| {
            let name = e.ok()?.file_name().into_string().ok()?;
            name.strip_suffix(".json")?.parse::<u64>().ok()
        })
        .max()
        .expect("commits");
    assert!(
        newest - version < 4 && version > 0,
        "the checkpoint ({version}) is of a compaction, near the newest commit ({newest})"
    );
    let read = read_table(
        &python,
        &dir.path().join("data/cold/small").display().to_string(),
    );
    assert_rows(&read, "delta_rs", &want);
    assert_rows(&read, "duckdb", &want);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn crashes_in_the_middle_of_a_compaction_lose_and_double_nothing() {
    let python = test_python().expect("the test needs deltalake and DuckDB: run scripts/test.sh");
    for step in ["before_compaction_commit", "after_compaction_commit"] {
        let dir = tempfile::tempdir().unwrap();
        // No compaction yet: the files stay small until the next server.
        let server = spawn_configured(dir.path(), "[tiering]\ncompaction = false\n", &[]);
        let want = small_files(&server, "crashy", 4000).await;
        let before = cold_files(&server, "crashy").await;
        assert!(before >= 32, "{step}: {before} files");
        server.terminate();

        // The first compaction aborts the process at `step`.
        let server = spawn_eager(dir.path(), &[("STRATA_CRASH_AT", step)]);
        assert!(
            !server.wait_exit().success(),
            "{step}: the crash point fired"
        );

        let server = spawn_eager(dir.path(), &[]);
        assert_eq!(records(&server, "crashy", 2).await, want, "{step}");
        eventually(
            Duration::from_secs(60),
            "compaction completes after the crash",
            || async { (cold_files(&server, "crashy").await <= 4).then_some(()) },
        )
        .await;
        assert_eq!(records(&server, "crashy", 2).await, want, "{step}");
        let files = cold_files(&server, "crashy").await;
        eventually(Duration::from_secs(30), "the table follows", || async {
            let read = read_table(
                &python,
                &dir.path().join("data/cold/crashy").display().to_string(),
            );
            (read["delta_rs"]["files"].as_u64() == Some(files)).then_some(())
        })
        .await;
        server.terminate();
        let read = read_table(
            &python,
            &dir.path().join("data/cold/crashy").display().to_string(),
        );
        assert_rows(&read, "delta_rs", &want);
        assert_rows(&read, "duckdb", &want);
    }
}

/// The table of a replicated topic, published by whichever node leads each
/// partition (docs/cluster.md: only the leader offloads): three nodes
/// commit to one Delta log, a leader dies by kill -9 and its successor
/// publishes on; delta-rs and DuckDB, with no Strata process running, read
/// every acknowledged record exactly once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_leaders_of_a_replicated_topic_publish_one_table() {
    let python = test_python().expect("the test needs deltalake and DuckDB: run scripts/test.sh");
    let root = tempfile::tempdir().unwrap();
    let store = format!("file://{}", root.path().display());
    let config = root.path().join("strata.toml");
    std::fs::write(
        &config,
        "[cluster]\nheartbeat_interval_ms = 200\nfailure_timeout_ms = 1500\n",
    )
    .unwrap();
    let dirs: Vec<_> = (0..3).map(|_| tempfile::tempdir().unwrap()).collect();
    let mut nodes: Vec<Option<ChildServer>> = dirs
        .iter()
        .enumerate()
        .map(|(i, dir)| {
            let name = format!("n{}", i + 1);
            let args = [
                "--node-id",
                name.as_str(),
                "--object-store",
                store.as_str(),
                "--config",
                config.to_str().unwrap(),
            ];
            Some(ChildServer::spawn(binary(), dir.path(), &args))
        })
        .collect();
    let first = nodes[0].as_ref().unwrap();
    eventually(Duration::from_secs(20), "three live nodes", || async {
        let (_, view) = first.api.get("/v1/cluster").await;
        let live = view["nodes"]
            .as_array()?
            .iter()
            .filter(|n| n["alive"] == true)
            .count();
        (live == 3).then_some(())
    })
    .await;
    first
        .api
        .create_topic(
            "orders",
            3,
            json!({"replication_factor": 3, "segment_bytes": 4096, "local_retention_bytes": 0}),
        )
        .await;
    let leaders = |server: &ChildServer| {
        let api = server.api.clone();
        async move {
            eventually(
                Duration::from_secs(20),
                "every partition led, three in sync",
                || async {
                    let (status, body) = api.get("/v1/topics/orders").await;
                    let parts = body["partitions"].as_array()?;
                    (status == StatusCode::OK
                        && parts.iter().all(|p| {
                            p["leader"].is_string()
                                && p["isr"].as_array().is_some_and(|isr| isr.len() == 3)
                        }))
                    .then(|| {
                        parts
                            .iter()
                            .map(|p| p["leader"].as_str().unwrap().to_string())
                            .collect::<Vec<_>>()
                    })
                },
            )
            .await
        }
    };
    leaders(first).await;
    let now = strata_server::broker::timestamp::now_ms();
    let produce_through = |server: &ChildServer, from: i64| {
        let api = server.api.clone();
        async move {
            let batch: Vec<Value> = (from..from + 150)
                .map(|i| json!({"key": format!("k{}", i % 7), "value": {"i": i}, "timestamp": now + i, "partition": i % 3}))
                .collect();
            // Refused while a new leader takes over (503, or 404 before
            // it knows the topic); retried with a key, so never doubled.
            for (n, chunk) in batch.chunks(50).enumerate() {
                eventually(
                    Duration::from_secs(20),
                    "an acknowledged produce",
                    || async {
                        let answer = api
                            .http
                            .post(format!("{}/v1/topics/orders/records", api.base))
                            .header("Idempotency-Key", format!("orders-{from}-{n}"))
                            .json(&json!({ "records": chunk }))
                            .send()
                            .await
                            .ok()?;
                        (answer.status() == StatusCode::OK).then_some(())
                    },
                )
                .await;
            }
        }
    };
    let offload_everywhere = |nodes: &Vec<Option<ChildServer>>| {
        let apis: Vec<_> = nodes.iter().flatten().map(|n| n.api.clone()).collect();
        async move {
            let mut records = 0;
            for api in apis {
                records += api.offload("orders").await["records"].as_u64().unwrap_or(0);
            }
            records
        }
    };
    produce_through(first, 0).await;
    let published = offload_everywhere(&nodes).await;
    assert_eq!(
        published, 150,
        "each partition offloaded once, by its leader"
    );

    // The leader of partition 0 dies; its successor publishes what follows.
    let led = leaders(first).await;
    println!("leaders of the partitions: {led:?}");
    let publishers: std::collections::BTreeSet<_> = led.iter().collect();
    assert!(publishers.len() >= 2, "several nodes publish: {led:?}");
    let victim: usize = led[0][1..].parse::<usize>().unwrap() - 1;
    nodes[victim].take().unwrap().kill9();
    let survivor = nodes.iter().flatten().next().unwrap();
    eventually(
        Duration::from_secs(10),
        "a new leader of partition 0",
        || async {
            let (_, body) = survivor.api.get("/v1/topics/orders").await;
            let leader = body["partitions"][0]["leader"].as_str()?.to_string();
            (leader != led[0]).then_some(())
        },
    )
    .await;
    produce_through(survivor, 150).await;
    // Until the new leader has taken over and offloaded its part.
    let deadline = std::time::Instant::now() + Duration::from_secs(20);
    let mut published = 0;
    while published < 150 {
        assert!(
            std::time::Instant::now() < deadline,
            "only {published} of 150 records offloaded after the failover"
        );
        match offload_everywhere(&nodes).await {
            0 => tokio::time::sleep(Duration::from_millis(100)).await,
            n => published += n,
        }
    }
    assert_eq!(published, 150, "nothing offloaded twice");
    let want = records(survivor, "orders", 3).await;
    assert_eq!(want.len(), 300);
    for node in nodes.into_iter().flatten() {
        node.terminate();
    }

    // No Strata process runs now.
    let read = read_table(&python, &root.path().join("orders").display().to_string());
    assert_rows(&read, "delta_rs", &want);
    assert_rows(&read, "duckdb", &want);
}

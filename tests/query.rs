//! Reads across both tiers through the `strata` binary: time-range reads in
//! every format against an oracle, SQL, views, snapshots, bad input, and a
//! long read while offload and retention run underneath it.

use std::collections::BTreeMap;
use std::path::Path;
use std::sync::Arc;

use arrow::array::{Array, AsArray, RecordBatch};
use arrow::datatypes::{Int32Type, Int64Type, TimestampMillisecondType};
use reqwest::StatusCode;
use serde_json::{Value, json};
use strata_test_support::{Api, ChildServer, eventually, run_python, test_python};

fn binary() -> &'static Path {
    Path::new(env!("CARGO_BIN_EXE_strata"))
}

const BASE_MS: i64 = 1_700_000_000_000;
const PARTITIONS: u32 = 3;

/// Records with out-of-order timestamps, keys (some null), tombstones and headers.
fn dataset(n: i64, seed: i64) -> Vec<Value> {
    (0..n)
        .map(|i| {
            let j = i + seed;
            json!({"key": if j % 7 == 0 { None } else { Some(format!("user-{}", j % 11)) },
                   "value": if j % 13 == 0 { json!(null) } else { json!({"i": j, "page": format!("/p/{}", j % 5), "n": j % 100}) },
                   "headers": if j % 3 == 0 { json!({"src": "web", "q": "a,\"b\""}) } else { json!({}) },
                   "timestamp": BASE_MS + ((j * 7919) % 1000) * 1000 + j,
                   "partition": j % i64::from(PARTITIONS)})
        })
        .collect()
}

async fn create(api: &Api, topic: &str) {
    api.create_topic(
        topic,
        PARTITIONS,
        json!({"segment_bytes": 16384, "local_retention_bytes": 0}),
    )
    .await;
}

async fn produce(api: &Api, topic: &str, records: &[Value]) {
    for chunk in records.chunks(200) {
        api.produce(topic, chunk).await;
    }
}

async fn offload(api: &Api, topic: &str) {
    let (status, body) = api
        .post(
            &format!("/v1/topics/{topic}/tiering/run?roll=true"),
            &json!({}),
        )
        .await;
    assert_eq!(status, StatusCode::OK, "{body}");
}

/// Every record of the topic, in (partition, offset) order, read by consume.
async fn oracle(api: &Api, topic: &str) -> Vec<Value> {
    let mut all = Vec::new();
    for p in 0..PARTITIONS {
        all.extend(api.consume_all(topic, p, 0).await);
    }
    all
}

/// A server with `topic` loaded: the first part offloaded (and deleted from
/// local disk), the rest hot.
async fn loaded(dir: &Path, topic: &str, n: i64) -> (ChildServer, Vec<Value>) {
    let server = ChildServer::spawn(binary(), dir, &[]);
    create(&server.api, topic).await;
    let records = dataset(n, 0);
    let (cold, hot) = records.split_at(records.len() * 2 / 3);
    produce(&server.api, topic, cold).await;
    offload(&server.api, topic).await;
    produce(&server.api, topic, hot).await;
    let all = oracle(&server.api, topic).await;
    assert_eq!(all.len(), n as usize);
    let (_, described) = server.api.get(&format!("/v1/topics/{topic}")).await;
    for p in described["partitions"].as_array().unwrap() {
        assert!(
            p["local_start_offset"].as_u64().unwrap() > 0,
            "part of every partition lives only in the cold tier: {p}"
        );
    }
    (server, all)
}

/// Waits (at most `secs` seconds) until a query gets a slot and runs.
async fn until_a_query_runs(api: &Api, secs: u64) {
    eventually(
        std::time::Duration::from_secs(secs),
        "the slot is free again",
        || async {
            let (status, body) = api
                .post("/v1/query", &json!({"sql": "SELECT 2 AS n"}))
                .await;
            (status == StatusCode::OK).then_some(body)
        },
    )
    .await;
}

fn ts(record: &Value) -> i64 {
    let text = record["timestamp"].as_str().unwrap();
    chrono::DateTime::parse_from_rfc3339(text)
        .unwrap()
        .timestamp_millis()
}

async fn get_raw(api: &Api, path: &str) -> (StatusCode, bytes::Bytes) {
    let response = reqwest::get(format!("{}{path}", api.base)).await.unwrap();
    let status = response.status();
    (status, response.bytes().await.unwrap())
}

async fn post_raw(api: &Api, path: &str, body: &Value) -> (StatusCode, bytes::Bytes) {
    let response = reqwest::Client::new()
        .post(format!("{}{path}", api.base))
        .json(body)
        .send()
        .await
        .unwrap();
    let status = response.status();
    (status, response.bytes().await.unwrap())
}

/// Arrow batches of the topic schema as API record objects.
fn batches_to_records(batches: &[RecordBatch]) -> Vec<Value> {
    let mut out = Vec::new();
    for b in batches {
        let partitions = b.column(0).as_primitive::<Int32Type>();
        let offsets = b.column(1).as_primitive::<Int64Type>();
        let stamps = b.column(2).as_primitive::<TimestampMillisecondType>();
        let keys = b.column(3).as_string::<i32>();
        let values = b.column(4).as_string::<i32>();
        let headers = b.column(5).as_map();
        for i in 0..b.num_rows() {
            let entries = headers.value(i);
            let names = entries.column(0).as_string::<i32>();
            let texts = entries.column(1).as_string::<i32>();
            let object: serde_json::Map<String, Value> = (0..entries.len())
                .map(|j| (names.value(j).to_string(), json!(texts.value(j))))
                .collect();
            out.push(json!({
                "partition": partitions.value(i),
                "offset": offsets.value(i),
                "timestamp": chrono::DateTime::from_timestamp_millis(stamps.value(i)).unwrap()
                    .format("%Y-%m-%dT%H:%M:%S%.3fZ").to_string(),
                "key": keys.is_valid(i).then(|| keys.value(i)),
                "value": serde_json::from_str::<Value>(values.value(i)).unwrap(),
                "headers": object,
            }));
        }
    }
    out
}

fn parse_body(format: &str, body: &[u8]) -> Vec<Value> {
    match format {
        "ndjson" => body
            .split(|&b| b == b'\n')
            .filter(|l| !l.is_empty())
            .map(|l| serde_json::from_slice(l).unwrap())
            .collect(),
        "json" => {
            let v: Value = serde_json::from_slice(body).unwrap();
            v["records"].as_array().unwrap().clone()
        }
        "csv" => {
            let mut reader = csv_reader(body);
            let header = reader.next().unwrap();
            assert_eq!(
                header,
                [
                    "partition",
                    "offset",
                    "timestamp",
                    "key",
                    "value",
                    "headers"
                ]
            );
            reader
                .map(|f| {
                    json!({"partition": f[0].parse::<u64>().unwrap(), "offset": f[1].parse::<u64>().unwrap(),
                       "timestamp": f[2], "key": if f[3].is_empty() { None } else { Some(&f[3]) },
                       "value": serde_json::from_str::<Value>(&f[4]).unwrap(),
                       "headers": serde_json::from_str::<Value>(&f[5]).unwrap()})
                })
                .collect()
        }
        "arrow" => {
            let reader = arrow::ipc::reader::StreamReader::try_new(
                std::io::Cursor::new(body.to_vec()),
                None,
            )
            .unwrap();
            batches_to_records(&reader.collect::<Result<Vec<_>, _>>().unwrap())
        }
        "parquet" => {
            let reader = parquet::arrow::arrow_reader::ParquetRecordBatchReader::try_new(
                bytes::Bytes::copy_from_slice(body),
                1024,
            )
            .unwrap();
            batches_to_records(&reader.collect::<Result<Vec<_>, _>>().unwrap())
        }
        other => panic!("unknown format {other}"),
    }
}

/// A minimal RFC 4180 reader (fields with quotes, commas and doubled quotes).
fn csv_reader(body: &[u8]) -> impl Iterator<Item = Vec<String>> + '_ {
    let text = std::str::from_utf8(body).unwrap();
    let mut rows = Vec::new();
    let (mut row, mut field, mut quoted, mut chars) =
        (Vec::new(), String::new(), false, text.chars().peekable());
    while let Some(c) = chars.next() {
        match (c, quoted) {
            ('"', true) if chars.peek() == Some(&'"') => {
                chars.next();
                field.push('"');
            }
            ('"', true) => quoted = false,
            ('"', false) if field.is_empty() => quoted = true,
            (',', false) => row.push(std::mem::take(&mut field)),
            ('\n', false) => {
                row.push(std::mem::take(&mut field));
                rows.push(std::mem::take(&mut row));
            }
            (c, _) => field.push(c),
        }
    }
    rows.into_iter()
}

/// Deterministic pseudo-random numbers for the windows.
struct Lcg(u64);

impl Lcg {
    fn next(&mut self, n: u64) -> u64 {
        self.0 = self
            .0
            .wrapping_mul(6_364_136_223_846_793_005)
            .wrapping_add(1_442_695_040_888_963_407);
        (self.0 >> 33) % n
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn range_reads_match_the_oracle_in_every_format() {
    let dir = tempfile::tempdir().unwrap();
    let (server, all) = loaded(dir.path(), "lake", 3000).await;
    let api = &server.api;

    // Everything, each record once, in partition then offset order.
    let (status, body) = get_raw(api, "/v1/topics/lake/range").await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(parse_body("ndjson", &body), all);

    let mut rng = Lcg(42);
    let formats = ["ndjson", "json", "csv", "arrow", "parquet"];
    for round in 0..40 {
        let a = BASE_MS + rng.next(1_003_000) as i64;
        let b = a + rng.next(400_000) as i64;
        let mut query = format!("from={a}&to={b}");
        let partition = (round % 3 == 0).then(|| rng.next(u64::from(PARTITIONS)));
        if let Some(p) = partition {
            query.push_str(&format!("&partition={p}"));
        }
        let key = (round % 4 == 1).then(|| format!("user-{}", rng.next(11)));
        if let Some(k) = &key {
            query.push_str(&format!("&key={k}"));
        }
        let limit = (round % 5 == 2).then(|| rng.next(50));
        if let Some(l) = limit {
            query.push_str(&format!("&limit={l}"));
        }
        let expected: Vec<Value> = all
            .iter()
            .filter(|r| {
                let t = ts(r);
                t >= a
                    && t < b
                    && partition.is_none_or(|p| r["partition"] == p)
                    && key.as_ref().is_none_or(|k| r["key"] == k.as_str())
            })
            .take(limit.map_or(usize::MAX, |l| l as usize))
            .cloned()
            .collect();
        let format = formats[round % formats.len()];
        let (status, body) = get_raw(
            api,
            &format!("/v1/topics/lake/range?{query}&format={format}"),
        )
        .await;
        assert_eq!(status, StatusCode::OK, "{query}");
        assert_eq!(parse_body(format, &body), expected, "{format} {query}");
    }

    // RFC 3339 bounds mean the same as epoch milliseconds.
    let from = chrono::DateTime::from_timestamp_millis(BASE_MS + 200_000).unwrap();
    let (_, by_text) = get_raw(
        api,
        &format!(
            "/v1/topics/lake/range?from={}&to={}",
            from.to_rfc3339_opts(chrono::SecondsFormat::Millis, true),
            BASE_MS + 300_000
        ),
    )
    .await;
    let (_, by_ms) = get_raw(
        api,
        &format!(
            "/v1/topics/lake/range?from={}&to={}",
            BASE_MS + 200_000,
            BASE_MS + 300_000
        ),
    )
    .await;
    assert_eq!(by_text, by_ms);
    assert!(!by_ms.is_empty());

    // An engine that is not ours reads the Arrow and Parquet output.
    if let Some(python) = test_python() {
        for format in ["arrow", "parquet"] {
            let (_, body) = get_raw(api, &format!("/v1/topics/lake/range?format={format}")).await;
            let path = dir.path().join(format!("out.{format}"));
            std::fs::write(&path, &body).unwrap();
            let script = format!(
                "import sys, pyarrow as pa, pyarrow.parquet as pq, pyarrow.ipc as ipc\n\
                 t = {}\n\
                 print(t.num_rows, t.column('offset').to_pylist()[:3], t.column('partition').to_pylist()[-1])\n",
                if format == "arrow" {
                    "ipc.open_stream(open(sys.argv[1], 'rb')).read_all()"
                } else {
                    "pq.read_table(sys.argv[1])"
                }
            );
            let out = run_python(&python, &script, &path);
            assert_eq!(out.trim(), "3000 [0, 1, 2] 2", "{format}");
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sql_counts_groups_filters_and_json_across_both_tiers() {
    let dir = tempfile::tempdir().unwrap();
    let (server, all) = loaded(dir.path(), "lake", 3000).await;
    let api = &server.api;
    let sql = |q: &str| json!({"sql": q, "format": "json"});

    let (status, body) = api
        .post("/v1/query", &sql("SELECT count(*) AS n FROM lake"))
        .await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert_eq!(body, json!({"columns": ["n"], "rows": [[3000]]}));

    let (_, body) = api
        .post(
            "/v1/query",
            &sql("SELECT \"partition\", count(*) AS n, max(\"offset\") AS last FROM lake GROUP BY \"partition\" ORDER BY \"partition\""),
        )
        .await;
    let mut expected = Vec::new();
    for p in 0..PARTITIONS {
        let n = all.iter().filter(|r| r["partition"] == p).count() as i64;
        expected.push(json!([p, n, n - 1]));
    }
    assert_eq!(body["rows"], json!(expected));

    let (a, b) = (BASE_MS + 100_000, BASE_MS + 350_000);
    let window = |r: &&Value| ts(r) >= a && ts(r) < b;
    let q = format!(
        "SELECT count(*) FROM lake WHERE timestamp >= to_timestamp_millis({a}) AND timestamp < '{}'",
        chrono::DateTime::from_timestamp_millis(b)
            .unwrap()
            .to_rfc3339()
    );
    let (status, body) = api.post("/v1/query", &sql(&q)).await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert_eq!(body["rows"], json!([[all.iter().filter(window).count()]]));

    // JSON functions over the value text, across both tiers.
    let (status, body) = api
        .post(
            "/v1/query",
            &sql("SELECT json_get_str(value, 'page') AS page, count(*) AS n, sum(json_get_int(value, 'n')) AS total FROM lake WHERE value <> 'null' GROUP BY page ORDER BY page"),
        )
        .await;
    assert_eq!(status, StatusCode::OK, "{body}");
    let mut pages: BTreeMap<String, (i64, i64)> = BTreeMap::new();
    for r in all.iter().filter(|r| !r["value"].is_null()) {
        let e = pages
            .entry(r["value"]["page"].as_str().unwrap().to_string())
            .or_default();
        e.0 += 1;
        e.1 += r["value"]["n"].as_i64().unwrap();
    }
    let expected: Vec<Value> = pages.iter().map(|(p, (n, t))| json!([p, n, t])).collect();
    assert_eq!(body["rows"], json!(expected));
    // `->` gives a union of JSON kinds: written as its member's text, in
    // every format (`->>` gives the same text).
    let q = "SELECT value->'page' AS a, value->>'page' AS b, value->'n' AS n FROM lake WHERE value <> 'null' ORDER BY \"partition\", \"offset\" LIMIT 3";
    for format in ["json", "ndjson", "csv", "arrow"] {
        let (status, body) = post_raw(api, "/v1/query", &json!({"sql": q, "format": format})).await;
        assert_eq!(status, StatusCode::OK, "{format}: {body:?}");
    }
    let (status, body) = api.post("/v1/query", &sql(q)).await;
    assert_eq!(status, StatusCode::OK, "{body}");
    for row in body["rows"].as_array().unwrap() {
        assert_eq!(row[0], row[1], "{row}");
        assert!(row[2].as_str().unwrap().parse::<i64>().is_ok(), "{row}");
    }

    // Other formats of the same result.
    let q = "SELECT \"partition\", \"offset\", key, timestamp FROM lake WHERE \"offset\" < 2 ORDER BY \"partition\", \"offset\"";
    let (_, body) = post_raw(api, "/v1/query", &json!({"sql": q, "format": "ndjson"})).await;
    let rows: Vec<Value> = parse_body("ndjson", &body);
    assert_eq!(rows.len(), 6);
    assert_eq!(rows[0]["timestamp"], all[0]["timestamp"]);
    assert_eq!(rows[0]["key"], all[0]["key"]);
    let (_, body) = post_raw(api, "/v1/query", &json!({"sql": q, "format": "csv"})).await;
    let text = String::from_utf8(body.to_vec()).unwrap();
    assert!(
        text.starts_with("partition,offset,key,timestamp\n0,0,"),
        "{text}"
    );
    assert_eq!(text.lines().count(), 7);
    let (_, body) = post_raw(
        api,
        "/v1/query",
        &json!({"sql": "SELECT * FROM lake", "format": "arrow"}),
    )
    .await;
    let mut everything = parse_body("arrow", &body);
    everything.sort_by_key(|r| (r["partition"].as_u64(), r["offset"].as_u64()));
    assert!(everything == all, "SELECT * returns every record once");
    let (_, body) = post_raw(
        api,
        "/v1/query",
        &json!({"sql": "SELECT * FROM lake WHERE \"partition\" = 1", "format": "parquet"}),
    )
    .await;
    let mut one: Vec<Value> = parse_body("parquet", &body);
    one.sort_by_key(|r| r["offset"].as_u64());
    let expected: Vec<Value> = all
        .iter()
        .filter(|r| r["partition"] == 1)
        .cloned()
        .collect();
    assert_eq!(one, expected);

    // A narrow time filter prunes cold files and hot segments: a topic
    // whose timestamps rise with its offsets, like most streams.
    create(api, "timeline").await;
    let timeline: Vec<Value> = (0..3000i64)
        .map(|i| json!({"key": format!("k{}", i % 10), "value": {"i": i}, "timestamp": BASE_MS + i * 1000 - (i % 7) * 300}))
        .collect();
    produce(api, "timeline", &timeline[..2400]).await;
    offload(api, "timeline").await;
    produce(api, "timeline", &timeline[2400..]).await;
    let (a, b) = (BASE_MS + 1_000_000, BASE_MS + 1_100_000);
    let filter =
        format!("timestamp >= to_timestamp_millis({a}) AND timestamp < to_timestamp_millis({b})");
    let (status, body) = api
        .post(
            "/v1/query",
            &sql(&format!(
                "EXPLAIN SELECT count(*) FROM timeline WHERE {filter}"
            )),
        )
        .await;
    assert_eq!(status, StatusCode::OK, "{body}");
    let plan = body.to_string();
    let scan = plan
        .split("TopicScanExec: ")
        .nth(1)
        .expect("the physical plan scans the topic")
        .split('"')
        .next()
        .unwrap()
        .to_string();
    let counts = |name: &str| -> (u64, u64) {
        let at = scan.find(&format!("{name}=")).unwrap() + name.len() + 1;
        let mut words = scan[at..]
            .split(|c: char| !c.is_ascii_digit())
            .filter(|w| !w.is_empty());
        (
            words.next().unwrap().parse().unwrap(),
            words.next().unwrap().parse().unwrap(),
        )
    };
    let (cold, cold_all) = counts("cold_files");
    assert!(
        cold_all >= 6 && cold * 2 < cold_all,
        "cold files pruned: {scan}"
    );
    let (hot, hot_all) = counts("hot_segments");
    assert!(hot_all > 0 && hot == 0, "hot segments pruned: {scan}");
    assert!(scan.contains(&format!("time=[{a}, {b})")), "{scan}");
    assert!(
        scan.contains("columns=[timestamp]"),
        "only the filtered column is read: {scan}"
    );
    // A key filter reaches the scan, whose bloom filters skip the cold
    // row groups without the key (issue #12): a key never written reads
    // none; the rows of keys that exist are exactly the filter's.
    let (status, body) = api
        .post(
            "/v1/query",
            &sql("EXPLAIN ANALYZE SELECT count(*) FROM timeline WHERE key = 'never-written'"),
        )
        .await;
    assert_eq!(status, StatusCode::OK, "{body}");
    let analyzed = body.to_string();
    assert!(
        analyzed.contains("keys=1"),
        "the key reaches the scan: {analyzed}"
    );
    assert!(
        analyzed.contains("row_groups_read=0") && !analyzed.contains("row_groups_pruned=0"),
        "no cold row group read for an absent key: {analyzed}"
    );
    for (predicate, keys) in [
        ("key = 'k3'", vec!["k3"]),
        ("key IN ('k1', 'k4', 'nope')", vec!["k1", "k4"]),
        ("key IN ('k1', 'k4') AND key = 'k4'", vec!["k4"]),
    ] {
        let (_, body) = api
            .post(
                "/v1/query",
                &sql(&format!("SELECT count(*) FROM timeline WHERE {predicate}")),
            )
            .await;
        let expected = timeline
            .iter()
            .filter(|r| keys.iter().any(|k| r["key"] == *k))
            .count();
        assert!(expected > 0);
        assert_eq!(body["rows"], json!([[expected]]), "{predicate}");
    }
    let (_, body) = api
        .post(
            "/v1/query",
            &sql(&format!("SELECT count(*) FROM timeline WHERE {filter}")),
        )
        .await;
    let expected = timeline
        .iter()
        .filter(|r| (a..b).contains(&r["timestamp"].as_i64().unwrap()))
        .count();
    assert_eq!(body["rows"], json!([[expected]]));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn views_are_durable_and_bad_requests_are_refused() {
    let dir = tempfile::tempdir().unwrap();
    let (server, all) = loaded(dir.path(), "lake", 900).await;
    let api = &server.api;
    let view_sql = "SELECT key, count(*) AS n FROM lake WHERE key IS NOT NULL GROUP BY key";
    let (status, body) = api
        .post("/v1/views", &json!({"name": "per_key", "sql": view_sql}))
        .await;
    assert_eq!(status, StatusCode::CREATED, "{body}");
    let (status, body) = api
        .post(
            "/v1/views",
            &json!({"name": "top_keys", "sql": "SELECT key, n FROM per_key ORDER BY n DESC, key LIMIT 3"}),
        )
        .await;
    assert_eq!(status, StatusCode::CREATED, "views may use views: {body}");

    let mut counts: BTreeMap<String, i64> = BTreeMap::new();
    for r in all.iter().filter(|r| !r["key"].is_null()) {
        *counts.entry(r["key"].as_str().unwrap().into()).or_default() += 1;
    }
    let mut top: Vec<(String, i64)> = counts.into_iter().collect();
    top.sort_by(|a, b| b.1.cmp(&a.1).then(a.0.cmp(&b.0)));
    let expected: Vec<Value> = top.iter().take(3).map(|(k, n)| json!([k, n])).collect();
    let (status, body) = api.get("/v1/views/top_keys?format=json").await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert_eq!(body, json!({"columns": ["key", "n"], "rows": expected}));
    // Regression: without LIMIT a view's ORDER BY was lost when it was read.
    let (status, body) = api
        .post(
            "/v1/views",
            &json!({"name": "ranked", "sql": "SELECT key, n FROM per_key ORDER BY n DESC, key"}),
        )
        .await;
    assert_eq!(status, StatusCode::CREATED, "{body}");
    let all_ranked: Vec<Value> = top.iter().map(|(k, n)| json!([k, n])).collect();
    let (status, body) = api.get("/v1/views/ranked").await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert_eq!(body, json!({"columns": ["key", "n"], "rows": all_ranked}));

    // Bad requests: each gets its status and code, and changes nothing.
    let cases = [
        (
            json!({"name": "per_key", "sql": view_sql}),
            StatusCode::CONFLICT,
            "view_exists",
        ),
        (
            json!({"name": "lake", "sql": view_sql}),
            StatusCode::CONFLICT,
            "topic_exists",
        ),
        (
            json!({"name": "bad-name", "sql": view_sql}),
            StatusCode::BAD_REQUEST,
            "invalid_request",
        ),
        (
            json!({"name": "v", "sql": "SELEC nothing"}),
            StatusCode::BAD_REQUEST,
            "invalid_request",
        ),
        (
            json!({"name": "v", "sql": "SELECT * FROM nowhere"}),
            StatusCode::BAD_REQUEST,
            "invalid_request",
        ),
        (
            json!({"name": "v", "sql": "DROP VIEW per_key"}),
            StatusCode::BAD_REQUEST,
            "invalid_request",
        ),
        (
            json!({"name": "v"}),
            StatusCode::BAD_REQUEST,
            "invalid_request",
        ),
    ];
    for (request, status, code) in cases {
        let (got, body) = api.post("/v1/views", &request).await;
        assert_eq!(
            (got, body["error"]["code"].as_str()),
            (status, Some(code)),
            "{request}: {body}"
        );
    }
    let (_, listed) = api.get("/v1/views").await;
    let names: Vec<&str> = listed["views"]
        .as_array()
        .unwrap()
        .iter()
        .map(|v| v["name"].as_str().unwrap())
        .collect();
    assert_eq!(names, ["per_key", "ranked", "top_keys"]);

    // Views survive a restart.
    let data_dir = server.data_dir.clone();
    assert!(server.terminate().success());
    let server = ChildServer::spawn(binary(), &data_dir, &[]);
    let api = &server.api;
    let (status, body) = api.get("/v1/views/top_keys").await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert_eq!(body["rows"], json!(expected));
    let (status, body) = get_raw(api, "/v1/views/per_key?format=csv").await;
    assert_eq!(status, StatusCode::OK);
    assert!(String::from_utf8_lossy(&body).starts_with("key,n\n"));

    let (status, _) = api.delete("/v1/views/per_key").await;
    assert_eq!(status, StatusCode::NO_CONTENT);
    let (status, body) = api.get("/v1/views/per_key").await;
    assert_eq!(
        (status, body["error"]["code"].as_str()),
        (StatusCode::NOT_FOUND, Some("view_not_found"))
    );
    let (status, body) = api.delete("/v1/views/per_key").await;
    assert_eq!(
        (status, body["error"]["code"].as_str()),
        (StatusCode::NOT_FOUND, Some("view_not_found"))
    );
    // A view whose source is gone fails clearly, and the server goes on.
    let (status, body) = api.get("/v1/views/top_keys").await;
    assert_eq!(status, StatusCode::BAD_REQUEST, "{body}");

    // Range and query refusals.
    let bad = [
        (
            "/v1/topics/nope/range",
            StatusCode::NOT_FOUND,
            "topic_not_found",
        ),
        (
            "/v1/topics/bad%20name/range",
            StatusCode::BAD_REQUEST,
            "invalid_topic_name",
        ),
        (
            "/v1/topics/lake/range?from=2&to=1",
            StatusCode::BAD_REQUEST,
            "invalid_request",
        ),
        (
            "/v1/topics/lake/range?from=yesterday",
            StatusCode::BAD_REQUEST,
            "invalid_request",
        ),
        (
            "/v1/topics/lake/range?format=xml",
            StatusCode::BAD_REQUEST,
            "invalid_request",
        ),
        (
            "/v1/topics/lake/range?partition=9",
            StatusCode::NOT_FOUND,
            "partition_not_found",
        ),
        (
            "/v1/topics/lake/range?limit=-1",
            StatusCode::BAD_REQUEST,
            "invalid_request",
        ),
        (
            "/v1/topics/lake/range?frm=1",
            StatusCode::BAD_REQUEST,
            "invalid_request",
        ),
        (
            "/v1/topics/nope/snapshot",
            StatusCode::NOT_FOUND,
            "topic_not_found",
        ),
        (
            "/v1/topics/lake/snapshot?as_of=soon",
            StatusCode::BAD_REQUEST,
            "invalid_request",
        ),
        ("/v1/views/nope", StatusCode::NOT_FOUND, "view_not_found"),
    ];
    for (path, status, code) in bad {
        let (got, body) = api.get(path).await;
        assert_eq!(
            (got, body["error"]["code"].as_str()),
            (status, Some(code)),
            "{path}: {body}"
        );
        assert!(
            body["error"]["message"]
                .as_str()
                .is_some_and(|m| !m.is_empty())
        );
    }
    for request in [
        json!({"sql": "SELECT nonsense FROM"}),
        json!({"sql": "SELECT * FROM nope"}),
        json!({"sql": "SELECT 1", "format": "xml"}),
        json!({"sql": "CREATE TABLE t AS SELECT 1"}),
        json!({"query": "SELECT 1"}),
    ] {
        let (status, body) = api.post("/v1/query", &request).await;
        assert_eq!(
            (status, body["error"]["code"].as_str()),
            (StatusCode::BAD_REQUEST, Some("invalid_request")),
            "{request}: {body}"
        );
    }
    let (status, body) = api
        .post("/v1/query", &json!({"sql": "SELECT count(*) FROM lake"}))
        .await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert_eq!(body["rows"], json!([[900]]), "nothing changed");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn queries_over_their_time_or_memory_limit_fail_alone() {
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("strata.toml");
    std::fs::write(
        &config,
        "[query]\ntimeout_ms = 300\nmemory_limit_bytes = 1048576\n",
    )
    .unwrap();
    let data = dir.path().join("data");
    let server = ChildServer::spawn(binary(), &data, &["--config", config.to_str().unwrap()]);
    let api = &server.api;
    let slow = "SELECT count(*) FROM generate_series(1, 2000000000) AS a(v) WHERE v % 7 = 3";
    let (status, body) = api.post("/v1/query", &json!({"sql": slow})).await;
    assert_eq!(status, StatusCode::BAD_REQUEST, "{body}");
    let message = body["error"]["message"].as_str().unwrap();
    assert!(message.contains("time limit"), "{message}");

    let hungry = "SELECT array_agg(v) FROM generate_series(1, 3000000) AS a(v)";
    let (status, body) = api.post("/v1/query", &json!({"sql": hungry})).await;
    assert_eq!(status, StatusCode::BAD_REQUEST, "{body}");
    let message = body["error"]["message"].as_str().unwrap();
    assert!(message.contains("memory"), "{message}");

    let (status, _) = api.get("/health").await;
    assert_eq!(status, StatusCode::OK);
    let (status, body) = api
        .post("/v1/query", &json!({"sql": "SELECT 1 + 1 AS two"}))
        .await;
    assert_eq!(
        (status, body["rows"].clone()),
        (StatusCode::OK, json!([[2]]))
    );
}

/// Regression: `SELECT 1+1+…+1` of 3,000 terms (6 KB) overflowed a worker's
/// stack and aborted the whole server (SIGABRT), as did a view with that SQL.
/// Hostile shapes now get an answer, a result or `400` naming the limit,
/// and the process stays up.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hostile_sql_gets_an_answer_and_the_server_stays_up() {
    use strata_server::query::sql_limits::MAX_EXPRESSION_DEPTH;
    let dir = tempfile::tempdir().unwrap();
    let server = ChildServer::spawn(binary(), &dir.path().join("data"), &[]);
    let api = &server.api;
    api.create_topic("hostile", 1, json!({})).await;
    api.produce("hostile", &[json!({"key": "k", "value": 1})])
        .await;
    // `first+1+1…` with `terms` terms in all.
    let chain = |first: &str, terms: usize| format!("{first}{}", "+1".repeat(terms - 1));
    let query = |sql: String| async move { api.post("/v1/query", &json!({ "sql": sql })).await };
    let limit = MAX_EXPRESSION_DEPTH.to_string();
    let refused = |(status, body): (StatusCode, Value)| {
        assert_eq!(status, StatusCode::BAD_REQUEST, "{body}");
        assert_eq!(body["error"]["code"], "invalid_request", "{body}");
        body["error"]["message"].as_str().unwrap().to_string()
    };

    // The reported request, and far longer chains: 400 naming the limit.
    for terms in [3000, MAX_EXPRESSION_DEPTH + 2, 200_000] {
        let message = refused(query(format!("SELECT {}", chain("1", terms))).await);
        assert!(message.contains(&limit), "{message}");
    }
    // A chain at the limit runs, over a constant and over a column
    // (evaluated per row).
    let terms = MAX_EXPRESSION_DEPTH + 1;
    let (status, body) = query(format!("SELECT {} AS n", chain("1", terms))).await;
    assert_eq!((status, &body["rows"]), (StatusCode::OK, &json!([[terms]])));
    let sql = format!("SELECT {} AS n FROM hostile", chain("\"offset\"", terms));
    let (status, body) = query(sql).await;
    assert_eq!(
        (status, &body["rows"]),
        (StatusCode::OK, &json!([[terms - 1]]))
    );
    // Long OR chains, deep brackets, calls, prefix operators and CASEs: refused.
    let or_chain = vec!["key = 'k'"; 5000].join(" OR ");
    refused(query(format!("SELECT count(*) FROM hostile WHERE {or_chain}")).await);
    for sql in [
        format!("SELECT {}1{}", "(".repeat(100_000), ")".repeat(100_000)),
        format!("SELECT {}1{}", "abs(".repeat(5000), ")".repeat(5000)),
        format!("SELECT {}1", "- ".repeat(100_000)),
        format!("SELECT {}TRUE", "NOT ".repeat(100_000)),
        format!(
            "SELECT {}1{}",
            "CASE WHEN TRUE THEN ".repeat(5000),
            " END".repeat(5000)
        ),
    ] {
        refused(query(sql).await);
    }
    // Wide rather than deep: huge IN lists and CASEs run.
    let in_list = (0..20_000)
        .map(|i| i.to_string())
        .collect::<Vec<_>>()
        .join(",");
    let sql = format!("SELECT count(*) AS n FROM hostile WHERE \"offset\" IN ({in_list})");
    let (status, body) = query(sql).await;
    assert_eq!((status, &body["rows"]), (StatusCode::OK, &json!([[1]])));
    let whens: String = (0..5000)
        .map(|i| format!(" WHEN \"offset\" = {i} THEN {i}"))
        .collect();
    let (status, body) = query(format!("SELECT CASE{whens} END AS n FROM hostile")).await;
    assert_eq!((status, &body["rows"]), (StatusCode::OK, &json!([[0]])));

    // Views: the reported SQL is refused; a chain at the limit is stored
    // and read.
    let view = |name: &str, terms: usize| json!({"name": name, "sql": format!("SELECT {} AS n", chain("1", terms))});
    let message = refused(api.post("/v1/views", &view("deep", 3000)).await);
    assert!(message.contains(&limit), "{message}");
    let (status, _) = api.get("/v1/views/deep").await;
    assert_eq!(status, StatusCode::NOT_FOUND);
    let (status, body) = api.post("/v1/views", &view("long", terms)).await;
    assert_eq!(status, StatusCode::CREATED, "{body}");
    let (status, body) = api.get("/v1/views/long?format=json").await;
    assert_eq!((status, &body["rows"]), (StatusCode::OK, &json!([[terms]])));

    // Still up, still serving.
    let (status, body) = api.get("/health").await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert_eq!(api.consume_all("hostile", 0, 0).await.len(), 1);
    assert!(server.terminate().success());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn queries_beyond_the_concurrency_limit_are_told_to_retry() {
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("strata.toml");
    std::fs::write(&config, "[query]\nmax_concurrent = 1\ntimeout_ms = 3000\n").unwrap();
    let data = dir.path().join("data");
    let server = ChildServer::spawn(binary(), &data, &["--config", config.to_str().unwrap()]);
    let api = &server.api;
    // A query whose result is not read holds its slot while it streams.
    let big =
        json!({"sql": "SELECT v FROM generate_series(1, 500000000) AS a(v)", "format": "ndjson"});
    let streaming = api
        .http
        .post(format!("{}/v1/query", api.base))
        .json(&big)
        .send()
        .await
        .unwrap();
    assert_eq!(streaming.status(), StatusCode::OK);
    let response = api
        .http
        .post(format!("{}/v1/query", api.base))
        .json(&json!({"sql": "SELECT 1"}))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), StatusCode::SERVICE_UNAVAILABLE);
    assert_eq!(response.headers()["retry-after"], "1");
    let body: Value = response.json().await.unwrap();
    assert_eq!(body["error"]["code"], "unavailable");
    // Produce and consume are not queries: they go on.
    let (status, _) = api.get("/health").await;
    assert_eq!(status, StatusCode::OK);
    // A client that stops reading does not keep the slot past the time
    // limit (3 s here).
    let started = std::time::Instant::now();
    until_a_query_runs(api, 15).await;
    assert!(started.elapsed() >= std::time::Duration::from_secs(2));
    drop(streaming);
}

/// A query whose client hangs up stops at once and frees its slot, even
/// one that has produced nothing yet (a long aggregation), long before its
/// time limit.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_query_whose_client_leaves_frees_its_slot() {
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("strata.toml");
    std::fs::write(&config, "[query]\nmax_concurrent = 1\ntimeout_ms = 60000\n").unwrap();
    let data = dir.path().join("data");
    let server = ChildServer::spawn(binary(), &data, &["--config", config.to_str().unwrap()]);
    let api = &server.api;
    let endless = json!({"sql": "SELECT sum(v) FROM generate_series(1, 1000000000000) AS a(v)"});
    let gave_up = api
        .http
        .post(format!("{}/v1/query", api.base))
        .timeout(std::time::Duration::from_millis(500))
        .json(&endless)
        .send()
        .await;
    assert!(gave_up.is_err(), "the aggregation is still running");
    let started = std::time::Instant::now();
    until_a_query_runs(api, 30).await;
    assert!(
        started.elapsed() < std::time::Duration::from_secs(20),
        "freed when the client left, not at the 60 s limit"
    );
}

/// A range read whose client stays connected but stops reading is cut
/// short after `stalled_read_ms`, so its snapshot does not pin segments
/// and cold files for ever.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stalled_range_read_is_cut_short() {
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("strata.toml");
    std::fs::write(&config, "[query]\nstalled_read_ms = 300\n").unwrap();
    let data = dir.path().join("data");
    let server = ChildServer::spawn(binary(), &data, &["--config", config.to_str().unwrap()]);
    let api = &server.api;
    create(api, "wide").await;
    // ~30 MB of response: more than the channel and the socket buffers hold.
    let text = "x".repeat(1000);
    let records: Vec<Value> = (0..30_000)
        .map(|i| json!({"value": {"i": i, "t": text}}))
        .collect();
    produce(api, "wide", &records).await;

    let response = api
        .http
        .get(format!("{}/v1/topics/wide/range?format=ndjson", api.base))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), StatusCode::OK);
    // Not reading: the server gives up on the client and ends the read.
    eventually(
        std::time::Duration::from_secs(30),
        "the stalled read ended",
        || async {
            let (_, metrics) = get_raw(api, "/metrics").await;
            let metrics = String::from_utf8_lossy(&metrics).into_owned();
            metrics
                .lines()
                .any(|l| l.starts_with("strata_queries_total{") && l.contains("kind=\"range\""))
                .then_some(())
        },
    )
    .await;
    let received = match response.bytes().await {
        Ok(body) => body.iter().filter(|&&b| b == b'\n').count(),
        Err(_) => 0, // the connection ended without its last chunk
    };
    assert!(
        received < records.len(),
        "{received} lines: the response was cut short"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn snapshots_match_a_reference_at_any_time() {
    let dir = tempfile::tempdir().unwrap();
    let server = ChildServer::spawn(binary(), dir.path(), &[]);
    let api = &server.api;
    create(api, "users").await;
    // A change log: 40 keys, updates and tombstones, timestamps out of order.
    let log: Vec<Value> = (0..2400i64)
        .map(|i| {
            let key = format!("k{:02}", (i * 17) % 40);
            let value = if i % 9 == 4 {
                json!(null)
            } else {
                json!({"v": i})
            };
            json!({"key": key, "value": value, "timestamp": BASE_MS + (i * 37 % 2400) * 10})
        })
        .collect();
    let (first, rest) = log.split_at(1500);
    produce(api, "users", first).await;
    offload(api, "users").await;
    produce(api, "users", rest).await;
    let all = oracle(api, "users").await;

    for as_of in [
        BASE_MS + 5_000,
        BASE_MS + 12_345,
        BASE_MS + 23_990,
        BASE_MS + 100_000,
    ] {
        // Reference: per key, the record with the greatest (timestamp, partition, offset) before as_of.
        let mut latest: BTreeMap<String, &Value> = BTreeMap::new();
        for r in all.iter().filter(|r| ts(r) < as_of) {
            let k = r["key"].as_str().unwrap().to_string();
            let newer = |old: &&Value| {
                (ts(r), r["partition"].as_u64(), r["offset"].as_u64())
                    > (ts(old), old["partition"].as_u64(), old["offset"].as_u64())
            };
            if latest.get(&k).is_none_or(newer) {
                latest.insert(k, r);
            }
        }
        let expected: Vec<Value> = latest
            .values()
            .filter(|r| !r["value"].is_null())
            .map(|r| (*r).clone())
            .collect();
        assert!(!expected.is_empty());
        for format in ["json", "ndjson"] {
            let (status, body) = get_raw(
                api,
                &format!("/v1/topics/users/snapshot?as_of={as_of}&format={format}"),
            )
            .await;
            assert_eq!(status, StatusCode::OK);
            assert_eq!(
                parse_body(format, &body),
                expected,
                "as_of {as_of} {format}"
            );
        }
    }
    let (status, body) = api.get("/v1/topics/users/snapshot").await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert!(body["records"].as_array().is_some_and(|r| r.len() <= 40));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_long_read_returns_its_snapshot_while_offload_and_retention_run() {
    let dir = tempfile::tempdir().unwrap();
    let server = Arc::new(ChildServer::spawn(binary(), dir.path(), &[]));
    let api = &server.api;
    api.create_topic(
        "race",
        PARTITIONS,
        json!({"segment_bytes": 1 << 20, "local_retention_bytes": 0}),
    )
    .await;
    // ~30 MB of records: far more than the socket buffers and the server's
    // two chunks in flight, so the read is still running on the server
    // when the offload and the deletions happen.
    let pad = "x".repeat(400);
    let records: Vec<Value> = dataset(60_000, 0)
        .into_iter()
        .map(|mut r| {
            r["headers"]["pad"] = json!(pad);
            r
        })
        .collect();
    produce(api, "race", &records).await;
    let expected = oracle(api, "race").await;

    for format in ["ndjson", "arrow"] {
        let response = reqwest::get(format!("{}/v1/topics/race/range?format={format}", api.base))
            .await
            .unwrap();
        assert_eq!(response.status(), StatusCode::OK);
        let mut body = response.bytes_stream();
        use futures_util::StreamExt;
        let mut bytes = Vec::new();
        bytes.extend_from_slice(&body.next().await.unwrap().unwrap());
        // Underneath the open read: appends, offload of everything so far,
        // and local retention deleting every offloaded segment.
        produce(api, "race", &dataset(600, 7)).await;
        offload(api, "race").await;
        let (_, described) = api.get("/v1/topics/race").await;
        for p in described["partitions"].as_array().unwrap() {
            assert_eq!(
                p["local_start_offset"], p["cold"]["end_offset"],
                "offloaded segments are gone from local disk: {p}"
            );
        }
        let read_before = bytes.len();
        while let Some(chunk) = body.next().await {
            bytes.extend_from_slice(&chunk.unwrap());
        }
        eprintln!(
            "{format}: {read_before} of {} bytes read before the changes",
            bytes.len()
        );
        let got = parse_body(format, &bytes);
        let wanted: Vec<Value> = if format == "ndjson" {
            expected.clone()
        } else {
            // The second read began after the first round of changes.
            oracle_before_round_two(&expected, &server).await
        };
        assert_eq!(got.len(), wanted.len(), "{format}");
        assert!(got == wanted, "{format}: the read is exactly its snapshot");
    }
}

/// What the topic held before the second round of changes: the first
/// snapshot plus the 600 records appended in the first round.
async fn oracle_before_round_two(first: &[Value], server: &ChildServer) -> Vec<Value> {
    let now = oracle(&server.api, "race").await;
    let mut out = Vec::new();
    for p in 0..PARTITIONS {
        let base = first.iter().filter(|r| r["partition"] == p).count() as u64;
        let round_one = 200; // 600 records spread evenly over 3 partitions
        out.extend(
            now.iter()
                .filter(|r| r["partition"] == p && r["offset"].as_u64().unwrap() < base + round_one)
                .cloned(),
        );
    }
    out
}

/// Reads of a key skip the partitions it cannot be in while every keyed
/// record is where the default partitioner puts it; one record placed
/// explicitly elsewhere takes that away, durably, before it is appended,
/// so it is found, also after kill -9 (issue #12).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn key_reads_skip_partitions_the_key_cannot_be_in() {
    let dir = tempfile::tempdir().unwrap();
    let server = ChildServer::spawn(binary(), dir.path(), &[]);
    let topic = "placed";
    server
        .api
        .create_topic(
            topic,
            4,
            json!({"segment_bytes": 16384, "local_retention_bytes": 0}),
        )
        .await;
    let mut records: Vec<Value> = (0..400)
        .map(
            |i| json!({"key": format!("k{}", i % 40), "value": {"i": i}, "timestamp": BASE_MS + i}),
        )
        .collect();
    let (cold, hot) = records.split_at(300);
    produce(&server.api, topic, cold).await;
    offload(&server.api, topic).await;
    produce(&server.api, topic, hot).await;
    // Every read of `key` against the records produced, and how many
    // partitions the SQL scan skipped.
    async fn check(api: &Api, topic: &str, key: &str, records: &[Value]) -> u64 {
        let want: Vec<&Value> = records.iter().filter(|r| r["key"] == key).collect();
        let (status, body) = get_raw(
            api,
            &format!("/v1/topics/{topic}/range?key={key}&format=ndjson"),
        )
        .await;
        assert_eq!(status, StatusCode::OK);
        let got = parse_body("ndjson", &body);
        let mut got_values: Vec<&Value> = got.iter().map(|r| &r["value"]).collect();
        let mut want_values: Vec<&Value> = want.iter().map(|r| &r["value"]).collect();
        got_values.sort_by_key(|v| v.to_string());
        want_values.sort_by_key(|v| v.to_string());
        assert_eq!(got_values, want_values, "range?key={key}");
        let count = json!({"sql": format!("SELECT count(*) FROM {topic} WHERE key = '{key}'"), "format": "json"});
        let (_, body) = api.post("/v1/query", &count).await;
        assert_eq!(body["rows"], json!([[want.len()]]), "SQL count of {key}");
        let analyze = json!({"sql": format!("EXPLAIN ANALYZE SELECT count(*) FROM {topic} WHERE key = '{key}'"), "format": "json"});
        let (status, body) = api.post("/v1/query", &analyze).await;
        assert_eq!(status, StatusCode::OK, "{body}");
        let plan = body.to_string();
        let at = plan
            .find("partitions_pruned=")
            .expect("the scan reports pruning")
            + "partitions_pruned=".len();
        plan[at..]
            .split(|c: char| !c.is_ascii_digit())
            .next()
            .and_then(|n| n.parse().ok())
            .unwrap_or_else(|| panic!("a count: {plan}"))
    }
    assert_eq!(
        check(&server.api, topic, "k7", &records).await,
        3,
        "only k7's partition is read"
    );
    assert_eq!(
        check(&server.api, topic, "never-written", &records).await,
        3
    );
    // k7 explicitly into a partition its hash does not pick.
    let (_, described) = server
        .api
        .post(
            "/v1/query",
            &json!({"sql": format!("SELECT DISTINCT \"partition\" FROM {topic} WHERE key = 'k7'"), "format": "json"}),
        )
        .await;
    let home = described["rows"][0][0].as_u64().expect("k7's partition");
    let elsewhere = json!({"key": "k7", "value": {"i": "elsewhere"}, "timestamp": BASE_MS + 1000, "partition": (home + 1) % 4});
    server
        .api
        .produce(topic, std::slice::from_ref(&elsewhere))
        .await;
    records.push(elsewhere);
    assert_eq!(check(&server.api, topic, "k7", &records).await, 2);
    // The mark stays gone across a crash; other partitions keep theirs.
    server.kill9();
    let server = ChildServer::spawn(binary(), dir.path(), &[]);
    assert_eq!(check(&server.api, topic, "k7", &records).await, 2);
    let other = (0..40)
        .map(|i| format!("k{i}"))
        .find(|k| {
            strata_server::broker::partitioner::partition_for_key(k.as_bytes(), 4) as u64
                == (home + 2) % 4
        })
        .expect("a key of another partition");
    assert_eq!(
        check(&server.api, topic, &other, &records).await,
        2,
        "{other}: the changed partition is read too"
    );
}

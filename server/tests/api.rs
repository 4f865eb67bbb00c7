//! The broker's HTTP API end to end: a real server on an ephemeral port.

use std::time::{Duration, Instant};

use reqwest::{Method, StatusCode};
use serde_json::{Value, json};
use strata_broker::partitioner::partition_for_key;
use strata_test_support::{Api, TestServer, eventually};

fn record(key: Option<&str>, value: Value) -> Value {
    json!({"key": key, "value": value})
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn health_and_metrics() {
    let server = TestServer::start().await;
    let (status, body) = server.api.get("/health").await;
    assert_eq!((status, body), (StatusCode::OK, json!({"status": "ok"})));
    server.api.create_topic("m", 1, json!({})).await;
    server.api.produce("m", &[record(None, json!(1))]).await;
    let text = reqwest::get(format!("{}/metrics", server.api.base))
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert!(
        text.contains("strata_produce_records_total{topic=\"m\"}"),
        "{text}"
    );
    assert!(text.contains("strata_fsync_seconds_bucket"), "{text}");
    assert!(
        text.contains("strata_http_request_duration_seconds"),
        "{text}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn topic_lifecycle() {
    let server = TestServer::start().await;
    let api = &server.api;
    let created = api
        .create_topic(
            "clicks",
            3,
            json!({"segment_bytes": 4096, "timestamp_type": "log_append_time"}),
        )
        .await;
    assert_eq!(created["name"], "clicks");
    assert_eq!(created["config"]["segment_bytes"], 4096);
    assert_eq!(created["config"]["timestamp_type"], "log_append_time");
    assert_eq!(created["config"]["retention_ms"], -1);
    assert_eq!(created["config"]["replication_factor"], 1, "a lone node");
    assert_eq!(created["config"]["min_insync_replicas"], 1);
    let partitions = created["partitions"].as_array().unwrap();
    assert_eq!(partitions.len(), 3);
    // A topic with one replica is this node's own: it leads it at epoch 0.
    let mut second = partitions[1].clone();
    let node = second["leader"].as_str().expect("a leader").to_string();
    for field in ["leader", "replicas", "isr", "leader_epoch"] {
        second.as_object_mut().unwrap().remove(field);
    }
    assert_eq!(partitions[1]["replicas"], json!([node]));
    assert_eq!(partitions[1]["isr"], json!([node]));
    assert_eq!(partitions[1]["leader_epoch"], 0);
    assert_eq!(
        second,
        json!({"partition": 1, "start_offset": 0, "local_start_offset": 0, "end_offset": 0,
               "hot": {"segments": 1, "bytes": 0}, "cold": {"files": 0, "bytes": 0, "end_offset": 0},
               "min_timestamp": null, "max_timestamp": null})
    );
    let (status, body) = api.post("/v1/topics", &json!({"name": "clicks"})).await;
    assert_eq!(status, StatusCode::CONFLICT);
    assert_eq!(body["error"]["code"], "topic_exists");

    api.create_topic("views", 1, json!({})).await;
    let (_, list) = api.get("/v1/topics").await;
    let names: Vec<&str> = list["topics"]
        .as_array()
        .unwrap()
        .iter()
        .map(|t| t["name"].as_str().unwrap())
        .collect();
    assert_eq!(names, ["clicks", "views"]);

    let (status, _) = api.delete("/v1/topics/views").await;
    assert_eq!(status, StatusCode::NO_CONTENT);
    let (status, body) = api.get("/v1/topics/views").await;
    assert_eq!(status, StatusCode::NOT_FOUND);
    assert_eq!(body["error"]["code"], "topic_not_found");
    assert!(!server.data_dir().join("topics/views").exists());
    // A deleted topic can be created again, empty.
    api.create_topic("views", 2, json!({})).await;
    assert_eq!(api.end_offsets("views").await, [0, 0]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn produce_and_consume_round_trip() {
    let server = TestServer::start().await;
    let api = &server.api;
    api.create_topic("events", 2, json!({})).await;
    let produced = vec![
        json!({"key": "user-1", "value": {"page": "/home", "n": 1.5e3, "nested": [1, {"a": null}]},
               "headers": {"source": "web", "trace": "x\"y"}, "timestamp": "2024-01-01T00:00:00Z", "partition": 0}),
        json!({"key": null, "value": "just a string", "timestamp": 1704067200123i64, "partition": 0}),
        json!({"value": null, "partition": 0, "timestamp": "2024-01-01T01:00:00.5+01:00"}),
        json!({"value": [1, 2, 3], "partition": 1, "timestamp": 0}),
    ];
    let offsets = api.produce("events", &produced).await;
    assert_eq!(
        offsets,
        vec![
            json!({"partition": 0, "offset": 0, "timestamp": "2024-01-01T00:00:00.000Z"}),
            json!({"partition": 0, "offset": 1, "timestamp": "2024-01-01T00:00:00.123Z"}),
            json!({"partition": 0, "offset": 2, "timestamp": "2024-01-01T00:00:00.500Z"}),
            json!({"partition": 1, "offset": 0, "timestamp": "1970-01-01T00:00:00.000Z"}),
        ]
    );
    let p0 = api.consume_all("events", 0, 0).await;
    assert_eq!(
        p0,
        vec![
            json!({"partition": 0, "offset": 0, "timestamp": "2024-01-01T00:00:00.000Z", "key": "user-1",
                   "value": {"page": "/home", "n": 1500.0, "nested": [1, {"a": null}]},
                   "headers": {"source": "web", "trace": "x\"y"}}),
            json!({"partition": 0, "offset": 1, "timestamp": "2024-01-01T00:00:00.123Z", "key": null,
                   "value": "just a string", "headers": {}}),
            json!({"partition": 0, "offset": 2, "timestamp": "2024-01-01T00:00:00.500Z", "key": null,
                   "value": null, "headers": {}}),
        ]
    );
    // Values come back as the exact JSON text that was produced.
    let body =
        br#"{"records": [{"value": {"page":"/home","n":1.5e3,"s":"\u00e9"}, "partition": 1}]}"#
            .to_vec();
    let (status, _) = api
        .call(
            Method::POST,
            "/v1/topics/events/records",
            Some("application/json"),
            Some(body),
        )
        .await;
    assert_eq!(status, StatusCode::OK);
    let raw = reqwest::get(format!(
        "{}/v1/topics/events/partitions/1/records?offset=1&max_records=1",
        api.base
    ))
    .await
    .unwrap()
    .text()
    .await
    .unwrap();
    assert!(
        raw.contains(r#""value":{"page":"/home","n":1.5e3,"s":"\u00e9"}"#),
        "{raw}"
    );
    let (_, page) = api
        .get("/v1/topics/events/partitions/0/records?offset=1&max_records=1")
        .await;
    assert_eq!(page["records"].as_array().unwrap().len(), 1);
    assert_eq!(
        (page["next_offset"].clone(), page["end_offset"].clone()),
        (json!(2), json!(3))
    );
    // max_bytes cuts the page but always returns at least one record.
    let (_, page) = api
        .get("/v1/topics/events/partitions/0/records?offset=0&max_bytes=1")
        .await;
    assert_eq!(page["records"].as_array().unwrap().len(), 1);
    // At the end: empty page.
    let (status, page) = api
        .get("/v1/topics/events/partitions/0/records?offset=3")
        .await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(
        page,
        json!({"records": [], "next_offset": 3, "end_offset": 3})
    );

    let (_, described) = api.get("/v1/topics/events").await;
    let p = &described["partitions"][0];
    assert_eq!(p["end_offset"], 3);
    assert_eq!(p["min_timestamp"], "2024-01-01T00:00:00.000Z");
    assert_eq!(p["max_timestamp"], "2024-01-01T00:00:00.500Z");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ndjson_produce() {
    let server = TestServer::start().await;
    let api = &server.api;
    api.create_topic("nd", 1, json!({})).await;
    let body = "{\"key\":\"a\",\"value\":{\"x\":1}}\n\n{\"value\":2}\n"
        .as_bytes()
        .to_vec();
    let (status, out) = api
        .call(
            Method::POST,
            "/v1/topics/nd/records",
            Some("application/x-ndjson"),
            Some(body),
        )
        .await;
    assert_eq!(status, StatusCode::OK, "{out}");
    assert_eq!(out["offsets"].as_array().unwrap().len(), 2);
    let records = api.consume_all("nd", 0, 0).await;
    assert_eq!(records[0]["value"], json!({"x": 1}));
    assert_eq!(records[1]["value"], json!(2));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn keys_land_where_kafka_puts_them_and_null_keys_spread() {
    let server = TestServer::start().await;
    let api = &server.api;
    api.create_topic("keyed", 5, json!({})).await;
    let keys: Vec<String> = (0..200).map(|i| format!("user-{i}")).collect();
    let records: Vec<Value> = keys.iter().map(|k| record(Some(k), json!(k))).collect();
    let offsets = api.produce("keyed", &records).await;
    for (key, ack) in keys.iter().zip(&offsets) {
        assert_eq!(
            ack["partition"],
            partition_for_key(key.as_bytes(), 5),
            "{key}"
        );
    }
    let before = api.end_offsets("keyed").await;
    let nulls: Vec<Value> = (0..100).map(|i| record(None, json!(i))).collect();
    api.produce("keyed", &nulls).await;
    let after = api.end_offsets("keyed").await;
    for (b, a) in before.iter().zip(&after) {
        assert_eq!(
            a - b,
            20,
            "null keys spread evenly: {before:?} -> {after:?}"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn log_append_time_ignores_producer_timestamps() {
    let server = TestServer::start().await;
    let api = &server.api;
    api.create_topic("lat", 1, json!({"timestamp_type": "log_append_time"}))
        .await;
    let offsets = api
        .produce("lat", &[json!({"value": 1, "timestamp": 0})])
        .await;
    let ts = offsets[0]["timestamp"].as_str().unwrap();
    assert!(!ts.starts_with("1970"), "{ts}");
    assert_eq!(api.consume_all("lat", 0, 0).await[0]["timestamp"], ts);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn offset_for_timestamp_with_out_of_order_timestamps() {
    let server = TestServer::start().await;
    let api = &server.api;
    // Small segments so the search crosses segment and index boundaries.
    api.create_topic("t", 1, json!({"segment_bytes": 2048}))
        .await;
    let stamps: Vec<i64> = (0..300)
        .map(|i| 1_000_000 + ((i * 7919) % 300) * 1000)
        .collect();
    for chunk in stamps.chunks(10) {
        let records: Vec<Value> = chunk
            .iter()
            .map(|&ts| json!({"value": ts, "timestamp": ts}))
            .collect();
        api.produce("t", &records).await;
    }
    let (_, d) = api.get("/v1/topics/t").await;
    assert!(
        d["partitions"][0]["hot"]["segments"].as_u64().unwrap() > 3,
        "{d}"
    );
    for target in [
        0i64, 1_000_000, 1_000_500, 1_150_000, 1_299_000, 1_299_001, 5_000_000,
    ] {
        let expected = stamps.iter().position(|&ts| ts >= target);
        let (status, body) = api
            .get(&format!(
                "/v1/topics/t/partitions/0/offset?timestamp={target}"
            ))
            .await;
        assert_eq!(status, StatusCode::OK);
        match expected {
            Some(offset) => {
                assert_eq!(body["offset"], offset, "target {target}");
                let ts = strata_broker::timestamp::format_timestamp(stamps[offset]);
                assert_eq!(body["timestamp"], ts);
            }
            None => assert_eq!(
                body,
                json!({"offset": 300, "timestamp": null}),
                "target {target}"
            ),
        }
    }
    let (_, body) = api
        .get("/v1/topics/t/partitions/0/offset?timestamp=1970-01-01T00:16:40Z")
        .await;
    assert_eq!(
        body["offset"],
        stamps.iter().position(|&ts| ts >= 1_000_000).unwrap()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn long_poll_wakes_on_new_data() {
    let server = TestServer::start().await;
    let api = server.api.clone();
    api.create_topic("lp", 1, json!({})).await;
    let waiter = {
        let api = api.clone();
        tokio::spawn(async move {
            api.get("/v1/topics/lp/partitions/0/records?offset=0&wait_ms=20000")
                .await
        })
    };
    // Produce once the consumer is parked at the end of the partition
    // (before, the record could arrive first and no poll ever waited).
    eventually(Duration::from_secs(10), "the consume to wait", || {
        let api = api.clone();
        async move {
            let text = reqwest::get(format!("{}/metrics", api.base))
                .await
                .ok()?
                .text()
                .await
                .ok()?;
            text.contains("strata_consume_long_polls{topic=\"lp\"} 1")
                .then_some(())
        }
    })
    .await;
    let started = Instant::now();
    api.produce("lp", &[record(None, json!("wake"))]).await;
    let (status, page) = waiter.await.unwrap();
    assert_eq!(status, StatusCode::OK);
    assert!(
        started.elapsed() < Duration::from_secs(5),
        "the long poll (20 s) was not woken by the record"
    );
    assert_eq!(page["records"][0]["value"], "wake");

    // Without data the wait ends with an empty page.
    let started = Instant::now();
    let (_, page) = api
        .get("/v1/topics/lp/partitions/0/records?offset=1&wait_ms=200")
        .await;
    assert!(started.elapsed() >= Duration::from_millis(200));
    assert_eq!(
        page,
        json!({"records": [], "next_offset": 1, "end_offset": 1})
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn consumer_groups() {
    let server = TestServer::start().await;
    let api = &server.api;
    api.create_topic("g", 2, json!({})).await;
    let records: Vec<Value> = (0..10)
        .map(|i| json!({"value": i, "partition": 0}))
        .collect();
    api.produce("g", &records).await;
    let (status, body) = api.get("/v1/groups/readers/offsets").await;
    assert_eq!(status, StatusCode::NOT_FOUND, "{body}");
    let commit = json!({"offsets": [{"topic": "g", "partition": 0, "offset": 4}, {"topic": "g", "partition": 1, "offset": 0}]});
    let (status, _) = api.post("/v1/groups/readers/offsets", &commit).await;
    assert_eq!(status, StatusCode::NO_CONTENT);
    let expected = json!({"offsets": [
        {"topic": "g", "partition": 0, "offset": 4, "end_offset": 10, "lag": 6},
        {"topic": "g", "partition": 1, "offset": 0, "end_offset": 0, "lag": 0}]});
    assert_eq!(api.get("/v1/groups/readers/offsets").await.1, expected);

    let (status, body) = api
        .post(
            "/v1/groups/readers/offsets",
            &json!({"offsets": [{"topic": "nope", "partition": 0, "offset": 1}]}),
        )
        .await;
    assert_eq!(
        (status, body["error"]["code"].clone()),
        (StatusCode::NOT_FOUND, json!("topic_not_found"))
    );
    let (status, body) = api
        .post(
            "/v1/groups/readers/offsets",
            &json!({"offsets": [{"topic": "g", "partition": 7, "offset": 1}]}),
        )
        .await;
    assert_eq!(
        (status, body["error"]["code"].clone()),
        (StatusCode::NOT_FOUND, json!("partition_not_found"))
    );
    let (status, body) = api.post("/v1/groups/a%2Fb/offsets", &commit).await;
    assert_eq!(
        (status, body["error"]["code"].clone()),
        (StatusCode::BAD_REQUEST, json!("invalid_request"))
    );

    // Commits are durable across a restart.
    let server = server.restart().await;
    assert_eq!(
        server.api.get("/v1/groups/readers/offsets").await.1,
        expected
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn restart_preserves_everything() {
    let server = TestServer::start().await;
    server
        .api
        .create_topic("keep", 3, json!({"segment_bytes": 4096}))
        .await;
    let mut produced = Vec::new();
    for batch in 0..20 {
        let records: Vec<Value> = (0..25)
            .map(|i| json!({"key": format!("k{}", (batch * 25 + i) % 17), "value": {"b": batch, "i": i}, "headers": {"h": "v"}}))
            .collect();
        server.api.produce("keep", &records).await;
        produced.extend(records);
    }
    let mut before = Vec::new();
    for p in 0..3 {
        before.push(server.api.consume_all("keep", p, 0).await);
    }
    let (_, mut described_before) = server.api.get("/v1/topics/keep").await;
    let server = server.restart().await;
    let (_, mut described_after) = server.api.get("/v1/topics/keep").await;
    // The key index (built from a topic's first lookup on) and its lag
    // are a moment's figures, not stored state.
    for described in [&mut described_before, &mut described_after] {
        described["indexes"] = Value::Null;
    }
    assert_eq!(described_before, described_after);
    let mut total = 0;
    for p in 0..3 {
        let after = server.api.consume_all("keep", p, 0).await;
        assert_eq!(after, before[p as usize], "partition {p}");
        total += after.len();
    }
    assert_eq!(total, produced.len());
    // Appends continue densely after the restart.
    let offsets = server
        .api
        .produce("keep", &[json!({"value": "after", "partition": 0})])
        .await;
    assert_eq!(offsets[0]["offset"], before[0].len());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unknown_routes_and_methods_answer_json() {
    let server = TestServer::start().await;
    let api = &server.api;
    let (status, body) = api.get("/v2/nothing").await;
    assert_eq!(
        (status, body["error"]["code"].clone()),
        (StatusCode::NOT_FOUND, json!("not_found"))
    );
    let (status, body) = api.call(Method::PUT, "/v1/topics", None, None).await;
    assert_eq!(status, StatusCode::METHOD_NOT_ALLOWED, "{body}");
}

#[test]
fn api_is_cloneable_for_tasks() {
    let api = Api::new("http://127.0.0.1:1/");
    assert_eq!(api.clone().base, "http://127.0.0.1:1");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn local_disk_budget_answers_503_with_retry_after() {
    let config = strata_broker::BrokerConfig {
        max_local_bytes: 20_000,
        ..strata_broker::BrokerConfig::default()
    };
    let server = TestServer::start_with(config).await;
    let api = &server.api;
    api.create_topic("full", 1, json!({})).await;
    let batch: Vec<Value> = (0..50)
        .map(|i| json!({"value": format!("{i:0>100}")}))
        .collect();
    let mut accepted = 0;
    let response = loop {
        let response = api
            .http
            .post(format!("{}/v1/topics/full/records", api.base))
            .json(&json!({ "records": batch }))
            .send()
            .await
            .unwrap();
        if response.status() != StatusCode::OK {
            break response;
        }
        accepted += 1;
        assert!(accepted < 100, "the budget never applied");
    };
    assert_eq!(response.status(), StatusCode::SERVICE_UNAVAILABLE);
    assert_eq!(response.headers()["retry-after"], "5");
    let body: Value = response.json().await.unwrap();
    assert_eq!(body["error"]["code"], "unavailable");
    assert_eq!(
        api.end_offsets("full").await,
        [accepted * 50],
        "nothing of the refused request was written"
    );
    // Reads keep working.
    assert_eq!(
        api.consume_all("full", 0, 0).await.len() as u64,
        accepted * 50
    );
}

/// A consume's `max_bytes` counts header bytes too: records whose headers
/// are large fill a page as quickly as large values do.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn max_bytes_counts_headers() {
    let server = TestServer::start().await;
    let api = &server.api;
    api.create_topic("tagged", 1, json!({})).await;
    let big = "h".repeat(100_000);
    let records: Vec<Value> = (0..5)
        .map(|i| json!({"value": i, "headers": {"trace": big}}))
        .collect();
    api.produce("tagged", &records).await;
    let (status, page) = api
        .get("/v1/topics/tagged/partitions/0/records?offset=0&max_bytes=250000")
        .await;
    assert_eq!(status, StatusCode::OK);
    let returned = page["records"].as_array().unwrap();
    assert_eq!(
        returned.len(),
        2,
        "two records' headers fit in 250,000 bytes"
    );
    assert_eq!(returned[1]["headers"]["trace"], json!(big));
    assert_eq!(page["next_offset"], json!(2));
}

/// Names at their 249-character limit work everywhere a shorter name does:
/// a topic is created, produced to, deleted and created again, and a group
/// of such a name commits (their temporary and trash file names would
/// otherwise pass the file system's 255-byte limit).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn names_at_the_length_limit_work_end_to_end() {
    let server = TestServer::start().await;
    let api = &server.api;
    let long = "t".repeat(249);
    for round in 0..2 {
        api.create_topic(&long, 1, json!({})).await;
        api.produce(&long, &[json!({"value": round})]).await;
        let (status, body) = api.delete(&format!("/v1/topics/{long}")).await;
        assert_eq!(status, StatusCode::NO_CONTENT, "round {round}: {body}");
        let (status, _) = api.get(&format!("/v1/topics/{long}")).await;
        assert_eq!(status, StatusCode::NOT_FOUND);
    }
    api.create_topic("short", 1, json!({})).await;
    let group = "g".repeat(249);
    let commit = json!({"offsets": [{"topic": "short", "partition": 0, "offset": 0}]});
    let (status, body) = api
        .post(&format!("/v1/groups/{group}/offsets"), &commit)
        .await;
    assert_eq!(status, StatusCode::NO_CONTENT, "{body}");
    let (status, _) = api.get(&format!("/v1/groups/{group}/offsets")).await;
    assert_eq!(status, StatusCode::OK);
}

/// Regression: a consume's `max_bytes` counted each header's 6 length bytes
/// in the hot tier but not in the cold tier, so the same records made
/// pages of different sizes depending on where they lived. Both now count
/// key + value + header names and values (docs/api.md).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hot_and_cold_consume_count_max_bytes_alike() {
    let server = TestServer::start().await;
    let api = &server.api;
    api.create_topic("sizes", 1, json!({"local_retention_bytes": 0}))
        .await;
    // Each record: key "k" (1) + value "\"v\"" (3) + five headers of 2 + 1
    // bytes (15) = 19 bytes; with the length prefixes it would be 49.
    let headers: serde_json::Map<String, Value> =
        (0..5).map(|i| (format!("h{i}"), json!("x"))).collect();
    let records: Vec<Value> = (0..12)
        .map(|_| json!({"key": "k", "value": "v", "headers": headers}))
        .collect();
    api.produce("sizes", &records).await;
    let page = |api: &Api| {
        let api = api.clone();
        async move {
            let (status, body) = api
                .get("/v1/topics/sizes/partitions/0/records?offset=0&max_bytes=76")
                .await;
            assert_eq!(status, StatusCode::OK, "{body}");
            body["records"].as_array().unwrap().len()
        }
    };
    assert_eq!(page(api).await, 4, "hot");
    let (status, body) = api
        .post("/v1/topics/sizes/tiering/run?roll=true", &json!({}))
        .await;
    assert_eq!(status, StatusCode::OK, "{body}");
    let (_, described) = api.get("/v1/topics/sizes").await;
    assert_eq!(
        described["partitions"][0]["local_start_offset"], 12,
        "the records must be read back from the cold tier: {described}"
    );
    assert_eq!(page(api).await, 4, "cold");
}

/// `/health/ready` reports what it checked: the data directory's disk, the
/// object store (here the local `file://` cold tier), the local budget and
/// the cluster (ready once this node has a view of it: a node alone
/// elects itself within a heartbeat or two).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn readiness_reports_each_check() {
    let server = TestServer::start().await;
    let body = strata_test_support::eventually(
        std::time::Duration::from_secs(15),
        "readiness",
        || async {
            let (status, body) = server.api.get("/health/ready").await;
            (status == StatusCode::OK).then_some(body)
        },
    )
    .await;
    assert_eq!(body["status"], "ready");
    let cluster = &body["checks"]["cluster"];
    assert_eq!(cluster["ok"], true, "{body}");
    assert_eq!(
        cluster["controller"], cluster["node"],
        "alone, it leads: {body}"
    );
    assert_eq!(
        (cluster["nodes"].as_u64(), cluster["alive"].as_u64()),
        (Some(1), Some(1)),
        "{body}"
    );
    let checks = &body["checks"];
    assert_eq!(checks["disk"]["ok"], true, "{body}");
    assert!(checks["disk"]["free_bytes"].as_u64().unwrap() > 0);
    assert_eq!(checks["object_store"]["ok"], true, "{body}");
    assert_eq!(checks["local_budget"]["ok"], true, "{body}");
}

/// API.md, "Cluster": asking for more replicas than live nodes is `400
/// invalid_request`, as is `min_insync_replicas` above the replication
/// factor; neither creates anything.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn more_replicas_than_live_nodes_is_refused() {
    let server = TestServer::start().await;
    let api = &server.api;
    for config in [
        json!({"replication_factor": 2}),
        json!({"replication_factor": 1, "min_insync_replicas": 2}),
        json!({"replication_factor": 0}),
    ] {
        let (status, body) = api
            .post("/v1/topics", &json!({"name": "wide", "config": config}))
            .await;
        assert_eq!(status, StatusCode::BAD_REQUEST, "{config}: {body}");
        assert_eq!(body["error"]["code"], "invalid_request", "{body}");
    }
    let (status, body) = api
        .post(
            "/v1/topics",
            &json!({"name": "wide", "config": {"replication_factor": 2}}),
        )
        .await;
    assert!(
        body["error"]["message"]
            .as_str()
            .is_some_and(|m| m.contains("more than the 1 live nodes")),
        "{status} {body}"
    );
    let (status, _) = api.get("/v1/topics/wide").await;
    assert_eq!(status, StatusCode::NOT_FOUND, "nothing was created");
}

//! Materialized views (issue #12): kept up to date as records arrive, and
//! equal to the same SQL run over everything acknowledged, after random
//! produce, offload, restarts and a deleted index directory; `?key=` reads
//! one row; `Strata-View-Offsets` says which records a read reflects; a
//! shape that cannot be maintained is refused naming what.

use reqwest::StatusCode;
use serde_json::{Value, json};
use strata_test_support::{Rng, TestServer};

const TOPIC: &str = "mv";

fn views() -> Vec<(&'static str, String)> {
    vec![
        (
            "per_key",
            format!(
                "SELECT key, count(*) AS n, sum(json_get_int(value, 'n')) AS total, \
                 min(json_get_int(value, 'n')) AS lo, max(json_get_int(value, 'n')) AS hi, \
                 avg(json_get_int(value, 'n')) AS mean \
                 FROM {TOPIC} WHERE key IS NOT NULL GROUP BY key ORDER BY key"
            ),
        ),
        (
            "per_hour",
            format!(
                "SELECT date_trunc('hour', \"timestamp\") AS hour, count(*) AS n \
                 FROM {TOPIC} GROUP BY 1 ORDER BY hour DESC"
            ),
        ),
        (
            "key_pages",
            format!(
                "SELECT key, json_get_str(value, 'page') AS page, count(*) AS n \
                 FROM {TOPIC} GROUP BY key, page ORDER BY key, page"
            ),
        ),
        (
            // An alias that shadows a column: GROUP BY names the column,
            // ORDER BY the output (as DataFusion resolves them).
            "shadow",
            format!(
                "SELECT upper(key) AS key, count(*) AS n FROM {TOPIC} \
                 WHERE key IS NOT NULL GROUP BY key ORDER BY key DESC LIMIT 10"
            ),
        ),
        (
            "top_pages",
            format!(
                "SELECT json_get_str(value, 'page') AS page, count(*) AS n, max(\"offset\") AS last \
                 FROM {TOPIC} WHERE json_get_str(value, 'page') IS NOT NULL \
                 GROUP BY page ORDER BY n DESC, page LIMIT 3"
            ),
        ),
    ]
}

async fn produce_random(server: &TestServer, rng: &mut Rng, count: usize) {
    for _ in 0..count / 100 {
        let records: Vec<Value> = (0..100)
            .map(|_| {
                let value = match rng.below(10) {
                    0 => Value::Null,
                    1 => json!({"other": true}),
                    _ => json!({"n": rng.below(1000) as i64 - 300, "page": format!("/p{}", rng.below(7))}),
                };
                let key = (rng.below(8) > 0).then(|| format!("k{}", rng.below(30)));
                json!({"key": key, "value": value, "timestamp": 1_700_000_000_000i64 + rng.below(20) as i64 * 3_600_000})
            })
            .collect();
        server.api.produce(TOPIC, &records).await;
    }
}

/// Numbers equal, floats to 1e-9 relative (avg is a sum over a count in
/// both, but summed in another order).
fn same(a: &Value, b: &Value) -> bool {
    match (a, b) {
        (Value::Number(x), Value::Number(y)) => {
            let (x, y) = (
                x.as_f64().unwrap_or(f64::NAN),
                y.as_f64().unwrap_or(f64::NAN),
            );
            x == y || (x - y).abs() <= 1e-9 * x.abs().max(y.abs())
        }
        (Value::Array(x), Value::Array(y)) => {
            x.len() == y.len() && x.iter().zip(y).all(|(a, b)| same(a, b))
        }
        (Value::Object(x), Value::Object(y)) => {
            x.len() == y.len() && x.iter().all(|(k, v)| y.get(k).is_some_and(|w| same(v, w)))
        }
        _ => a == b,
    }
}

/// Reads a view; returns its body and `Strata-View-Offsets`.
async fn read_view(server: &TestServer, path: &str) -> (StatusCode, Value, Option<String>) {
    let response = reqwest::get(format!("http://{}{path}", server.addr))
        .await
        .expect("read");
    let status = response.status();
    let offsets = response
        .headers()
        .get("strata-view-offsets")
        .and_then(|v| v.to_str().ok())
        .map(str::to_string);
    (status, response.json().await.expect("JSON"), offsets)
}

/// Polls `/metrics` until a maintenance pass has reported every view
/// caught up (its lag gauges appear only after the first pass).
async fn wait_for_background(server: &TestServer) {
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(30);
    loop {
        let (_, metrics) = server.api.get_text("/metrics").await;
        let caught_up = |name: &str| {
            ["strata_view_lag_records", "strata_view_lag_seconds"]
                .iter()
                .all(|gauge| {
                    metrics.lines().any(|l| {
                        l.starts_with(&format!("{gauge}{{view=\"{name}\"}}"))
                            && l.split_whitespace()
                                .last()
                                .and_then(|v| v.parse::<f64>().ok())
                                == Some(0.0)
                    })
                })
        };
        if views().iter().all(|(name, _)| caught_up(name)) {
            return;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "the views were not caught up in the background:\n{metrics}"
        );
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
}

/// Every view equals its SQL, and says it reflects every record.
async fn check_views(server: &TestServer, what: &str) {
    let ends = server.api.end_offsets(TOPIC).await;
    for (name, sql) in views() {
        let (status, view, offsets) = read_view(server, &format!("/v1/views/{name}")).await;
        assert_eq!(status, StatusCode::OK, "{what}: {name}: {view}");
        let (_, direct) = server.api.post("/v1/query", &json!({ "sql": sql })).await;
        assert!(
            same(&view, &direct),
            "{what}: view {name} differs from its SQL:\n{view}\n{direct}"
        );
        assert!(
            !view["rows"].as_array().expect("rows").is_empty(),
            "{what}: {name} is empty"
        );
        let expected: Vec<String> = ends
            .iter()
            .enumerate()
            .map(|(p, end)| format!("{TOPIC}/{p}={end}"))
            .collect();
        assert_eq!(
            offsets,
            Some(expected.join(",")),
            "{what}: {name} reflects every record"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn materialized_views_equal_their_sql_across_offload_restarts_and_a_lost_state() {
    let mut server = TestServer::start().await;
    server
        .api
        .create_topic(
            TOPIC,
            3,
            json!({"segment_bytes": 16384, "local_retention_bytes": 0}),
        )
        .await;
    let mut rng = Rng(0xfeed_beef_1234);
    produce_random(&server, &mut rng, 600).await;
    for (name, sql) in views() {
        let (status, body) = server
            .api
            .post(
                "/v1/views",
                &json!({"name": name, "sql": sql, "materialized": true}),
            )
            .await;
        assert_eq!(status, StatusCode::CREATED, "{name}: {body}");
        assert_eq!(body["materialized"], true);
    }
    // Regression guard for the shared pass (one read of a topic's records
    // for all its views): before any read, the background alone builds
    // every view from all 600 records; the reads below then apply nothing.
    wait_for_background(&server).await;
    check_views(&server, "after creation").await;
    produce_random(&server, &mut rng, 1500).await;
    server.api.offload(TOPIC).await;
    produce_random(&server, &mut rng, 400).await;
    check_views(&server, "after offload").await;

    // One key's row.
    let (status, one, _) = read_view(&server, "/v1/views/per_key?key=k3").await;
    assert_eq!(status, StatusCode::OK, "{one}");
    let (_, all, _) = read_view(&server, "/v1/views/per_key").await;
    let k3: Vec<&Value> = all["rows"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|r| r[0] == "k3")
        .collect();
    assert_eq!(
        one["rows"].as_array().unwrap().iter().collect::<Vec<_>>(),
        k3
    );
    // Two grouping columns, the key first: that key's rows.
    let (status, one, _) = read_view(&server, "/v1/views/key_pages?key=k3").await;
    assert_eq!(status, StatusCode::OK, "{one}");
    let (_, all, _) = read_view(&server, "/v1/views/key_pages").await;
    let k3: Vec<&Value> = all["rows"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|r| r[0] == "k3")
        .collect();
    assert!(k3.len() > 1);
    assert_eq!(
        one["rows"].as_array().unwrap().iter().collect::<Vec<_>>(),
        k3
    );
    let (_, none, _) = read_view(&server, "/v1/views/key_pages?key=never").await;
    assert_eq!(none["rows"], json!([]));
    let (status, body, _) = read_view(&server, "/v1/views/per_hour?key=k3").await;
    assert_eq!(status, StatusCode::BAD_REQUEST, "{body}");

    server = server.restart().await;
    check_views(&server, "after a restart").await;
    produce_random(&server, &mut rng, 300).await;
    check_views(&server, "after more records").await;

    server = server
        .restart_after(|dir| std::fs::remove_dir_all(dir.join("index")).expect("remove the state"))
        .await;
    check_views(&server, "after the state was lost").await;

    // Deleted and created again under the same name: a fresh state.
    let (status, _) = server.api.delete("/v1/views/top_pages").await;
    assert_eq!(status, StatusCode::NO_CONTENT);
    let (name, sql) = views().pop().unwrap();
    let (status, _) = server
        .api
        .post(
            "/v1/views",
            &json!({"name": name, "sql": sql, "materialized": true}),
        )
        .await;
    assert_eq!(status, StatusCode::CREATED);
    check_views(&server, "after the view was created again").await;

    // The topic deleted and created again: the views start afresh.
    let (status, _) = server.api.delete(&format!("/v1/topics/{TOPIC}")).await;
    assert_eq!(status, StatusCode::NO_CONTENT);
    server.api.create_topic(TOPIC, 3, json!({})).await;
    produce_random(&server, &mut rng, 300).await;
    check_views(&server, "after the topic was created again").await;
    server = server.restart().await;
    produce_random(&server, &mut rng, 200).await;
    check_views(&server, "after the topic was created again and a restart").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_shape_that_cannot_be_maintained_is_refused_naming_what() {
    let server = TestServer::start().await;
    server.api.create_topic(TOPIC, 1, json!({})).await;
    for (sql, names) in [
        (
            "SELECT key, count(DISTINCT value) AS n FROM mv GROUP BY key",
            "DISTINCT",
        ),
        ("SELECT key, value FROM mv", "GROUP BY"),
        (
            "SELECT key, count(*) AS n FROM mv GROUP BY key HAVING count(*) > 2",
            "HAVING",
        ),
        (
            "SELECT a.key, count(*) AS n FROM mv a JOIN mv b ON a.key = b.key GROUP BY a.key",
            "join",
        ),
    ] {
        let (status, body) = server
            .api
            .post(
                "/v1/views",
                &json!({"name": "nope", "sql": sql, "materialized": true}),
            )
            .await;
        assert_eq!(status, StatusCode::BAD_REQUEST, "{sql}: {body}");
        assert_eq!(body["error"]["code"], "invalid_request", "{body}");
        let message = body["error"]["message"].as_str().unwrap();
        assert!(message.contains(names), "{sql}: {message}");
        let (status, _) = server.api.get("/v1/views/nope").await;
        assert_eq!(
            status,
            StatusCode::NOT_FOUND,
            "a refused view is not created"
        );
    }
    // The same SQL as a plain view still works.
    let (status, body) = server
        .api
        .post(
            "/v1/views",
            &json!({"name": "plain", "sql": "SELECT key, count(DISTINCT value) AS n FROM mv GROUP BY key"}),
        )
        .await;
    assert_eq!(status, StatusCode::CREATED, "{body}");
}

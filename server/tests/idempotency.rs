//! Idempotent produce over HTTP (API.md, "Idempotent produce"): retries
//! answer the first offsets and write nothing, also after a restart; a key
//! reused with another body is `409`; bad keys are `400` and write nothing.

use std::time::Duration;

use reqwest::StatusCode;
use serde_json::{Value, json};
use strata_test_support::{Api, TestServer, eventually};

fn records() -> Value {
    json!({"records": [
        {"value": {"n": 1}},
        {"key": "user-7", "value": {"n": 2}},
        {"partition": 2, "value": {"n": 3}, "headers": {"h": "v"}},
        {"value": {"n": 4}, "timestamp": "2026-01-01T00:00:00Z"},
    ]})
}

async fn total_end(api: &Api, topic: &str) -> u64 {
    api.end_offsets(topic).await.iter().sum()
}

#[tokio::test]
async fn a_retried_produce_answers_the_first_offsets_and_writes_nothing() {
    let server = TestServer::start().await;
    let api = server.api.clone();
    api.create_topic("idem", 3, json!({})).await;

    let (status, first) = api.produce_keyed("idem", &records(), b"order-42").await;
    assert_eq!(status, StatusCode::OK, "{first}");
    assert_eq!(total_end(&api, "idem").await, 4);
    // Other producers move the round robin between the attempts.
    api.produce("idem", &[json!({"value": "x"}), json!({"value": "y"})])
        .await;

    let (status, retry) = api.produce_keyed("idem", &records(), b"order-42").await;
    assert_eq!(status, StatusCode::OK, "{retry}");
    assert_eq!(retry, first, "the retry answers exactly the first offsets");
    assert_eq!(total_end(&api, "idem").await, 6, "the retry wrote nothing");

    // The same key with another body: 409, nothing written.
    let other = json!({"records": [{"value": "another request"}]});
    let (status, body) = api.produce_keyed("idem", &other, b"order-42").await;
    assert_eq!(status, StatusCode::CONFLICT, "{body}");
    assert_eq!(body["error"]["code"], "idempotency_key_reused", "{body}");
    assert_eq!(total_end(&api, "idem").await, 6);

    // Another key is another request.
    let (status, _) = api.produce_keyed("idem", &records(), b"order-43").await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(total_end(&api, "idem").await, 10);

    // After a restart the keys are still known (rebuilt from the log).
    let server = server.restart().await;
    let api = server.api.clone();
    let (status, after) = api.produce_keyed("idem", &records(), b"order-42").await;
    assert_eq!(status, StatusCode::OK, "{after}");
    assert_eq!(after, first);
    let (status, _) = api.produce_keyed("idem", &other, b"order-42").await;
    assert_eq!(status, StatusCode::CONFLICT);
    assert_eq!(total_end(&api, "idem").await, 10);

    // Each record was written exactly once.
    let mut values = Vec::new();
    for p in 0..3 {
        for r in api.consume_all("idem", p, 0).await {
            values.push(r["value"].to_string());
        }
    }
    values.sort();
    let n1 = values.iter().filter(|v| *v == "{\"n\":1}").count();
    assert_eq!((values.len(), n1), (10, 2), "{values:?}");
}

#[tokio::test]
async fn bad_idempotency_keys_are_refused_and_write_nothing() {
    let server = TestServer::start().await;
    let api = server.api.clone();
    api.create_topic("keys", 3, json!({})).await;
    let long = [b'k'; 129];
    for key in [&b""[..], &long[..], b"caf\xc3\xa9", b"tab\there"] {
        let (status, body) = api.produce_keyed("keys", &records(), key).await;
        assert_eq!(status, StatusCode::BAD_REQUEST, "{key:?}: {body}");
        assert_eq!(body["error"]["code"], "invalid_request", "{body}");
    }
    assert_eq!(total_end(&api, "keys").await, 0);
    // 128 printable characters, spaces included, are a key.
    let longest = [b'~'; 128];
    let (status, body) = api.produce_keyed("keys", &records(), &longest).await;
    assert_eq!(status, StatusCode::OK, "{body}");
    let (status, body) = api.produce_keyed("keys", &records(), b"a b").await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert_eq!(total_end(&api, "keys").await, 8);
}

#[tokio::test]
async fn keys_are_forgotten_after_the_window() {
    let server = TestServer::start().await;
    let api = server.api.clone();
    api.create_topic("short", 1, json!({"idempotency_window_ms": 50}))
        .await;
    let body = json!({"records": [{"value": 1}]});
    let (status, first) = api.produce_keyed("short", &body, b"k").await;
    assert_eq!(status, StatusCode::OK);
    // Past the window the same key and body are a new request.
    eventually(
        Duration::from_secs(10),
        "a retry past the window to write again",
        || {
            let api = api.clone();
            let body = body.clone();
            let first = first.clone();
            async move {
                let (status, again) = api.produce_keyed("short", &body, b"k").await;
                (status == StatusCode::OK && again != first).then_some(())
            }
        },
    )
    .await;
    let (status, _) = api
        .post(
            "/v1/topics",
            &json!({"name": "bad", "config": {"idempotency_window_ms": -1}}),
        )
        .await;
    assert_eq!(status, StatusCode::BAD_REQUEST);
}

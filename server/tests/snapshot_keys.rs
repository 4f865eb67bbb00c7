//! `GET /v1/topics/{t}/snapshot?key=K` (API.md "Serving reads"): the
//! latest record of each key asked for, in the order asked, each key once;
//! none for a key never written or whose latest record is a tombstone;
//! `as_of` bounds it as for the whole snapshot.

use reqwest::StatusCode;
use serde_json::{Value, json};
use strata_test_support::TestServer;

fn keys_of(body: &Value) -> Vec<(String, Value)> {
    body["records"]
        .as_array()
        .expect("records")
        .iter()
        .map(|r| {
            (
                r["key"].as_str().expect("key").to_string(),
                r["value"].clone(),
            )
        })
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn latest_record_of_each_key_asked_for_in_the_order_asked() {
    let server = TestServer::start().await;
    let api = &server.api;
    api.create_topic("users", 3, json!({})).await;
    let odd = "o'brien\\x -- /* ; DROP";
    api.produce(
        "users",
        &[
            json!({"key": "k1", "value": {"v": 1}, "timestamp": 1_000}),
            json!({"key": "k2", "value": {"v": 1}, "timestamp": 1_000}),
            json!({"key": odd, "value": {"v": "quoted"}, "timestamp": 1_000}),
            json!({"key": "k1", "value": {"v": 2}, "timestamp": 2_000}),
            json!({"key": "gone", "value": {"v": 1}, "timestamp": 1_000}),
            json!({"key": "gone", "value": null, "timestamp": 2_000}),
        ],
    )
    .await;

    let odd_q: String = form_urlencoded_key(odd);
    let (status, body) = api
        .get(&format!(
            "/v1/topics/users/snapshot?key=k2&key=k1&key=gone&key=never&key=k2&key={odd_q}"
        ))
        .await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert_eq!(
        keys_of(&body),
        [
            ("k2".to_string(), json!({"v": 1})),
            ("k1".to_string(), json!({"v": 2})),
            (odd.to_string(), json!({"v": "quoted"})),
        ],
        "order asked, each once, no tombstone, no unknown key"
    );

    let (_, before) = api
        .get("/v1/topics/users/snapshot?key=k1&key=gone&as_of=1500")
        .await;
    assert_eq!(
        keys_of(&before),
        [
            ("k1".to_string(), json!({"v": 1})),
            ("gone".to_string(), json!({"v": 1})),
        ],
        "as_of sees the key before its later record and its tombstone"
    );

    let too_many: String = (0..1001).map(|i| format!("key=k{i}&")).collect();
    let (status, body) = api
        .get(&format!("/v1/topics/users/snapshot?{too_many}"))
        .await;
    assert_eq!(status, StatusCode::BAD_REQUEST, "{body}");
    let (status, _) = api.get("/v1/topics/users/snapshot?as_of=1&as_of=2").await;
    assert_eq!(status, StatusCode::BAD_REQUEST, "only key may repeat");
}

/// `text` percent-encoded for a query string.
fn form_urlencoded_key(text: &str) -> String {
    text.bytes()
        .map(|b| match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'_' | b'.' => (b as char).to_string(),
            _ => format!("%{b:02X}"),
        })
        .collect()
}

//! Bad input gets the documented status and error code, and changes nothing.

use reqwest::{Method, StatusCode};
use serde_json::{Value, json};
use strata_broker::BrokerConfig;
use strata_test_support::{Api, TestServer};

async fn expect_error(
    api: &Api,
    method: Method,
    path: &str,
    content_type: Option<&str>,
    body: Option<Vec<u8>>,
    status: StatusCode,
    code: &str,
) -> Value {
    let (got, body) = api.call(method, path, content_type, body).await;
    assert_eq!(got, status, "{path}: {body}");
    assert_eq!(body["error"]["code"], code, "{path}: {body}");
    assert!(
        body["error"]["message"]
            .as_str()
            .is_some_and(|m| !m.is_empty()),
        "{body}"
    );
    body
}

async fn produce_raw(
    api: &Api,
    topic: &str,
    content_type: &str,
    body: &str,
    status: StatusCode,
    code: &str,
) -> Value {
    expect_error(
        api,
        Method::POST,
        &format!("/v1/topics/{topic}/records"),
        Some(content_type),
        Some(body.as_bytes().to_vec()),
        status,
        code,
    )
    .await
}

async fn start() -> TestServer {
    let config = BrokerConfig {
        max_request_bytes: 64 * 1024,
        max_record_bytes: 1024,
        ..BrokerConfig::default()
    };
    let server = TestServer::start_with(config).await;
    server.api.create_topic("t", 2, json!({})).await;
    server
        .api
        .produce("t", &[json!({"value": "seed", "partition": 0})])
        .await;
    server
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_produce_requests_write_nothing() {
    let server = start().await;
    let api = &server.api;
    let before = api.end_offsets("t").await;
    let json_ct = "application/json";
    let cases: Vec<(&str, &str, StatusCode, &str, Option<u64>)> = vec![
        (
            json_ct,
            r#"{"records": [{"value": 1}"#,
            StatusCode::BAD_REQUEST,
            "invalid_request",
            None,
        ),
        (
            json_ct,
            "not json",
            StatusCode::BAD_REQUEST,
            "invalid_request",
            None,
        ),
        (
            json_ct,
            r#"{"records": {"value": 1}}"#,
            StatusCode::BAD_REQUEST,
            "invalid_request",
            None,
        ),
        (
            json_ct,
            r#"{"records": [], "extra": 1}"#,
            StatusCode::BAD_REQUEST,
            "invalid_request",
            None,
        ),
        (
            json_ct,
            r#"{"records": [{"value": 1}, {"key": "k"}]}"#,
            StatusCode::BAD_REQUEST,
            "invalid_record",
            Some(1),
        ),
        (
            json_ct,
            r#"{"records": [{"value": 1}, {"value": 2, "timestamp": "last tuesday"}]}"#,
            StatusCode::BAD_REQUEST,
            "invalid_record",
            Some(1),
        ),
        (
            json_ct,
            r#"{"records": [{"value": 1, "timestamp": 99999999999999999}]}"#,
            StatusCode::BAD_REQUEST,
            "invalid_record",
            Some(0),
        ),
        (
            json_ct,
            r#"{"records": [{"value": 1}, {"value": 1}, {"value": 1, "partition": 2}]}"#,
            StatusCode::BAD_REQUEST,
            "invalid_record",
            Some(2),
        ),
        (
            json_ct,
            r#"{"records": [{"value": 1, "key": 7}]}"#,
            StatusCode::BAD_REQUEST,
            "invalid_record",
            Some(0),
        ),
        (
            json_ct,
            r#"{"records": [{"value": 1, "headers": {"a": 1}}]}"#,
            StatusCode::BAD_REQUEST,
            "invalid_record",
            Some(0),
        ),
        (
            json_ct,
            r#"{"records": [{"value": 1, "colour": "red"}]}"#,
            StatusCode::BAD_REQUEST,
            "invalid_record",
            Some(0),
        ),
        (
            "application/x-ndjson",
            "{\"value\": 1}\n{\"value\": 2\n{\"value\": 3}\n",
            StatusCode::BAD_REQUEST,
            "invalid_record",
            Some(1),
        ),
        (
            "application/x-ndjson",
            "{\"value\": 1}\n{\"key\": \"no value\"}\n",
            StatusCode::BAD_REQUEST,
            "invalid_record",
            Some(1),
        ),
    ];
    for (ct, body, status, code, index) in cases {
        let error = produce_raw(api, "t", ct, body, status, code).await;
        if let Some(index) = index {
            assert_eq!(error["error"]["index"], index, "{body}: {error}");
        }
    }
    // A record over max_record_bytes (1 KiB here), and a body over max_request_bytes (64 KiB).
    let big_record = format!(
        r#"{{"records": [{{"value": 1}}, {{"value": "{}"}}]}}"#,
        "x".repeat(2000)
    );
    let error = produce_raw(
        api,
        "t",
        json_ct,
        &big_record,
        StatusCode::PAYLOAD_TOO_LARGE,
        "payload_too_large",
    )
    .await;
    assert_eq!(error["error"]["index"], 1);
    let many: Vec<Value> = (0..1000)
        .map(|i| json!({"value": format!("{i:0>100}")}))
        .collect();
    let big_body = json!({ "records": many }).to_string();
    produce_raw(
        api,
        "t",
        json_ct,
        &big_body,
        StatusCode::PAYLOAD_TOO_LARGE,
        "payload_too_large",
    )
    .await;
    // The same oversized body streamed without a Content-Length is cut off too.
    let chunks: Vec<Result<Vec<u8>, std::io::Error>> = big_body
        .as_bytes()
        .chunks(4096)
        .map(|c| Ok(c.to_vec()))
        .collect();
    let response = api
        .http
        .post(format!("{}/v1/topics/t/records", api.base))
        .header("content-type", json_ct)
        .body(reqwest::Body::wrap_stream(futures_util::stream::iter(
            chunks,
        )))
        .send()
        .await;
    // The server answers 413 as soon as the limit is crossed, before the
    // client has sent everything; the client may then see the refusal or,
    // racing it, a connection closed under its unsent body. Both mean the
    // body was cut off; that nothing was written is checked below.
    match response {
        Ok(response) => assert_eq!(response.status(), StatusCode::PAYLOAD_TOO_LARGE),
        Err(e) => assert!(e.is_request() || e.is_body(), "{e}"),
    }

    assert_eq!(
        api.end_offsets("t").await,
        before,
        "nothing of a bad request is written"
    );
    assert_eq!(api.consume_all("t", 0, 0).await.len(), 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_topic_names_never_touch_the_disk() {
    let server = start().await;
    let api = &server.api;
    let long = "a".repeat(250);
    // (URL clients normalise "." and ".." segments away; the create test below covers them.)
    for name in [
        "..%2Fx",
        "a%2Fb",
        "a%20b",
        "%2E%2E%2F",
        long.as_str(),
        "%C3%BC",
    ] {
        expect_error(
            api,
            Method::GET,
            &format!("/v1/topics/{name}"),
            None,
            None,
            StatusCode::BAD_REQUEST,
            "invalid_topic_name",
        )
        .await;
        expect_error(
            api,
            Method::POST,
            &format!("/v1/topics/{name}/records"),
            Some("application/json"),
            Some(br#"{"records": [{"value": 1}]}"#.to_vec()),
            StatusCode::BAD_REQUEST,
            "invalid_topic_name",
        )
        .await;
    }
    for name in ["../x", "a/b", "", ".", "..", long.as_str(), "ü"] {
        expect_error(
            api,
            Method::POST,
            "/v1/topics",
            Some("application/json"),
            Some(json!({"name": name}).to_string().into_bytes()),
            StatusCode::BAD_REQUEST,
            "invalid_topic_name",
        )
        .await;
    }
    let data = server.data_dir();
    assert!(!data.join("x").exists() && !data.join("topics/a").exists());
    let mut entries: Vec<String> = std::fs::read_dir(data.join("topics"))
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    entries.sort();
    assert_eq!(entries, ["t"]);

    expect_error(
        api,
        Method::GET,
        "/v1/topics/missing",
        None,
        None,
        StatusCode::NOT_FOUND,
        "topic_not_found",
    )
    .await;
    produce_raw(
        api,
        "missing",
        "application/json",
        r#"{"records": [{"value": 1}]}"#,
        StatusCode::NOT_FOUND,
        "topic_not_found",
    )
    .await;
    expect_error(
        api,
        Method::DELETE,
        "/v1/topics/missing",
        None,
        None,
        StatusCode::NOT_FOUND,
        "topic_not_found",
    )
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_create_requests() {
    let server = start().await;
    let api = &server.api;
    for body in [
        json!({"name": "x", "partitions": 0}),
        json!({"name": "x", "partitions": -1}),
        json!({"name": "x", "partitions": "two"}),
        json!({"name": "x", "config": {"segment_bytes": 1}}),
        json!({"name": "x", "config": {"no_such_key": 1}}),
        json!({"name": "x", "config": {"timestamp_type": "sometimes"}}),
        json!({"partitions": 1}),
    ] {
        expect_error(
            api,
            Method::POST,
            "/v1/topics",
            Some("application/json"),
            Some(body.to_string().into_bytes()),
            StatusCode::BAD_REQUEST,
            "invalid_request",
        )
        .await;
    }
    assert_eq!(api.get("/v1/topics/x").await.0, StatusCode::NOT_FOUND);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_consume_requests() {
    let server = start().await;
    let api = &server.api;
    let base = "/v1/topics/t/partitions";
    for (path, status, code) in [
        (
            format!("{base}/0/records?offset=abc"),
            StatusCode::BAD_REQUEST,
            "invalid_request",
        ),
        (
            format!("{base}/0/records?offset=-1"),
            StatusCode::BAD_REQUEST,
            "invalid_request",
        ),
        (
            format!("{base}/0/records?offset=0&max_records=0"),
            StatusCode::BAD_REQUEST,
            "invalid_request",
        ),
        (
            format!("{base}/0/records?offset=0&wait_ms=99999999"),
            StatusCode::BAD_REQUEST,
            "invalid_request",
        ),
        (
            format!("{base}/0/records?offset=0&bogus=1"),
            StatusCode::BAD_REQUEST,
            "invalid_request",
        ),
        (
            format!("{base}/2/records?offset=0"),
            StatusCode::NOT_FOUND,
            "partition_not_found",
        ),
        (
            format!("{base}/99999999999/records?offset=0"),
            StatusCode::NOT_FOUND,
            "partition_not_found",
        ),
        (
            format!("{base}/x/records?offset=0"),
            StatusCode::BAD_REQUEST,
            "invalid_request",
        ),
        (
            format!("{base}/0/offset"),
            StatusCode::BAD_REQUEST,
            "invalid_request",
        ),
        (
            format!("{base}/0/offset?timestamp=noon"),
            StatusCode::BAD_REQUEST,
            "invalid_request",
        ),
        (
            format!("{base}/5/offset?timestamp=0"),
            StatusCode::NOT_FOUND,
            "partition_not_found",
        ),
    ] {
        expect_error(api, Method::GET, &path, None, None, status, code).await;
    }
    let error = expect_error(
        api,
        Method::GET,
        &format!("{base}/0/records?offset=2"),
        None,
        None,
        StatusCode::RANGE_NOT_SATISFIABLE,
        "offset_out_of_range",
    )
    .await;
    assert_eq!(
        (
            error["error"]["start_offset"].clone(),
            error["error"]["end_offset"].clone()
        ),
        (json!(0), json!(1))
    );
}

/// Regression guarded: on plain HTTP (served by `axum::serve`, which sets
/// no timer) a client that sent part of its headers and then nothing held
/// its connection for ever, and with it shutdown: a slow-loris attack.
/// Now plain HTTP and HTTPS share one accept loop with a header timeout.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_that_never_finishes_its_headers_is_cut_off() {
    use std::time::{Duration, Instant};
    use strata_server::connections::HEADER_READ_TIMEOUT;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    let server = start().await;
    let mut slow = tokio::net::TcpStream::connect(server.addr)
        .await
        .expect("connect");
    slow.write_all(b"GET /health HTTP/1.1\r\nHost: strata\r\nX-Slow: ")
        .await
        .expect("write part of the headers");
    let started = Instant::now();
    // Meanwhile the server answers everyone else.
    let (status, _) = server.api.get("/health").await;
    assert_eq!(status, StatusCode::OK);
    let mut rest = Vec::new();
    let closed = tokio::time::timeout(
        HEADER_READ_TIMEOUT + Duration::from_secs(15),
        slow.read_to_end(&mut rest),
    )
    .await;
    assert!(
        closed.is_ok(),
        "the connection was still open after {:?}",
        started.elapsed()
    );
    assert!(
        started.elapsed() >= HEADER_READ_TIMEOUT - Duration::from_secs(1),
        "cut off after {:?}, before the timeout",
        started.elapsed()
    );
}

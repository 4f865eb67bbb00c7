//! Limits the real binary derives from its environment.

use std::os::unix::fs::PermissionsExt;
use std::path::Path;

use reqwest::StatusCode;
use serde_json::json;
use strata_test_support::ChildServer;

/// Regression: `POST /v1/topics` with 10,000 partitions (inside the
/// documented range) answered `500 internal` ("Too many open files") after
/// seconds of work under an open-file limit of 20,000. A topic that does
/// not fit the limit is now refused up front with `400` naming it, and
/// nothing is created.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_topic_beyond_the_open_file_limit_is_refused_up_front() {
    let dir = tempfile::tempdir().unwrap();
    // `strata serve` under an open-file limit of 512 (soft and hard).
    let wrapper = dir.path().join("strata-512");
    std::fs::write(
        &wrapper,
        format!(
            "#!/bin/sh\nexec prlimit --nofile=512:512 {} \"$@\"\n",
            Path::new(env!("CARGO_BIN_EXE_strata")).display()
        ),
    )
    .unwrap();
    std::fs::set_permissions(&wrapper, std::fs::Permissions::from_mode(0o755)).unwrap();
    let server = ChildServer::spawn(&wrapper, &dir.path().join("data"), &[]);
    let api = &server.api;

    let (status, body) = api
        .post("/v1/topics", &json!({"name": "wide", "partitions": 10000}))
        .await;
    assert_eq!(status, StatusCode::BAD_REQUEST, "{body}");
    assert_eq!(body["error"]["code"], "invalid_request");
    let message = body["error"]["message"].as_str().unwrap();
    assert!(message.contains("open-file limit is 512"), "{message}");
    let (status, _) = api.get("/v1/topics/wide").await;
    assert_eq!(status, StatusCode::NOT_FOUND, "nothing was created");

    // What fits is created and works.
    let (status, body) = api
        .post("/v1/topics", &json!({"name": "fits", "partitions": 50}))
        .await;
    assert_eq!(status, StatusCode::CREATED, "{body}");
    api.produce("fits", &[json!({"key": "k", "value": 1})])
        .await;
    let (status, _) = api.get("/health").await;
    assert_eq!(status, StatusCode::OK);
    assert!(server.terminate().success());
}

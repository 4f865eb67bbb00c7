//! Graceful shutdown and recovery of the `strata` binary.

use std::fs::OpenOptions;
use std::io::Write;
use std::path::Path;

use serde_json::{Value, json};
use strata_test_support::ChildServer;

fn binary() -> &'static Path {
    Path::new(env!("CARGO_BIN_EXE_strata"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn torn_tail_is_truncated_and_everything_before_is_served() {
    let dir = tempfile::tempdir().unwrap();
    let server = ChildServer::spawn(binary(), dir.path(), &[]);
    server.api.create_topic("torn", 1, json!({})).await;
    let records: Vec<Value> = (0..500)
        .map(|i| json!({"key": format!("k{i}"), "value": {"i": i}}))
        .collect();
    for chunk in records.chunks(100) {
        server.api.produce("torn", chunk).await;
    }
    let before = server.api.consume_all("torn", 0, 0).await;
    assert_eq!(before.len(), 500);
    let status = server.terminate();
    assert!(status.success(), "SIGTERM exits 0: {status:?}");

    let segment = dir.path().join("topics/torn/0/00000000000000000000.log");
    let clean_len = std::fs::metadata(&segment).unwrap().len();
    OpenOptions::new()
        .append(true)
        .open(&segment)
        .unwrap()
        .write_all(&[0x5a; 333])
        .unwrap();

    let server = ChildServer::spawn(binary(), dir.path(), &[]);
    assert_eq!(server.api.consume_all("torn", 0, 0).await, before);
    assert_eq!(std::fs::metadata(&segment).unwrap().len(), clean_len);
    assert!(
        server.log().contains("truncating torn or corrupt tail"),
        "{}",
        server.log()
    );
    let offsets = server
        .api
        .produce("torn", &[json!({"value": "next"})])
        .await;
    assert_eq!(offsets[0]["offset"], 500);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_second_server_on_the_same_directory_refuses_to_start() {
    let dir = tempfile::tempdir().unwrap();
    let _first = ChildServer::spawn(binary(), dir.path(), &[]);
    let stderr = strata_test_support::serve_refused(binary(), dir.path(), &[]);
    // The message docs/operations.md quotes, with its cause said once.
    let line = format!(
        "strata: opening data directory {}: {} is in use by another strata server",
        dir.path().display(),
        dir.path().display()
    );
    assert!(stderr.lines().any(|l| l == line), "{stderr}");
    assert_eq!(stderr.matches("in use by another").count(), 1, "{stderr}");
}

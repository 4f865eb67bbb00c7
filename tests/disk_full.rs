//! A full data disk is back-pressure, not a failure (issue #14): on a small
//! real file system that really returns ENOSPC, produce answers `503
//! unavailable` with `Retry-After` (never `500`), the server drops local
//! copies of what is already in the cold tier, and writes resume by
//! themselves, with no restart and nothing acknowledged lost or doubled.
//!
//! Regression guarded: filling an 85 MB volume made produce answer `500
//! internal` with the OS error, and the partition stayed read-only until
//! the server was restarted.
//!
//! The small file system is a loop-mounted ext4 volume that
//! `scripts/test.sh` prepares (as root) and names in
//! `STRATA_TEST_SMALL_DISK`; without it this test fails rather than pass
//! untested.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use serde_json::{Value, json};
use strata_test_support::ChildServer;

fn binary() -> &'static Path {
    Path::new(env!("CARGO_BIN_EXE_strata"))
}

/// The directory on the small file system, checked to be small.
fn small_disk() -> (PathBuf, u64) {
    let dir = std::env::var_os("STRATA_TEST_SMALL_DISK")
        .map(PathBuf::from)
        .expect(
            "STRATA_TEST_SMALL_DISK must name a directory on a small (<= 256 MiB) file system: \
         run scripts/test.sh as root, which loop-mounts one",
        );
    let space = strata_broker::disk::space(&dir).expect("statvfs of STRATA_TEST_SMALL_DISK");
    assert!(
        space.total_bytes <= 256 << 20,
        "{} is on a file system of {} bytes, not a small one",
        dir.display(),
        space.total_bytes
    );
    (dir, space.total_bytes)
}

/// Records of one request: 64 values of about 4 KiB, ids `n*64..n*64+63`.
fn request(n: u64) -> Value {
    let records: Vec<Value> = (0..64)
        .map(|i| json!({"value": {"id": n * 64 + i, "pad": format!("{n:08}-{i:02}-").repeat(300)}}))
        .collect();
    json!({ "records": records })
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_full_disk_answers_503_and_writes_resume_without_a_restart() {
    let (small, volume_bytes) = small_disk();
    let data = tempfile::tempdir_in(&small).expect("data dir on the small disk");
    // The cold tier lives elsewhere, as an object store would.
    let cold = tempfile::tempdir().expect("cold dir");
    let cold_url = format!("file://{}", cold.path().display());
    let server = ChildServer::spawn(binary(), data.path(), &["--object-store", &cold_url]);
    let api = server.api.clone();
    // The default topic configuration: 128 MiB segments, more than the volume.
    api.create_topic("fill", 1, json!({})).await;

    let mut acked: HashMap<u64, u64> = HashMap::new(); // offset -> id
    let (mut refused, mut resumed_after_refusal, mut acked_bytes) = (0usize, false, 0u64);
    let deadline = Instant::now() + Duration::from_secs(240);
    let mut n = 0u64;
    // Twice the volume must get through: impossible unless space is reclaimed.
    while acked_bytes < 2 * volume_bytes {
        assert!(
            Instant::now() < deadline,
            "only {acked_bytes} bytes acknowledged in 240 s ({refused} refusals); log:\n{}",
            server.log()
        );
        let body = request(n);
        let response = api
            .http
            .post(format!("{}/v1/topics/fill/records", api.base))
            .json(&body)
            .send()
            .await
            .expect("the server answers");
        let status = response.status();
        if status == reqwest::StatusCode::SERVICE_UNAVAILABLE {
            let retry_after = response.headers().get("retry-after").cloned();
            let error: Value = response.json().await.expect("JSON error");
            assert_eq!(error["error"]["code"], "unavailable", "{error}");
            assert!(retry_after.is_some(), "503 without Retry-After: {error}");
            refused += 1;
            // Polling the server back to health; not a synchronisation sleep.
            tokio::time::sleep(Duration::from_millis(200)).await;
            continue;
        }
        let text = response.text().await.expect("body");
        assert_eq!(status, reqwest::StatusCode::OK, "produce {n}: {text}");
        let answer: Value = serde_json::from_str(&text).expect("JSON");
        for (i, ack) in answer["offsets"]
            .as_array()
            .expect("offsets")
            .iter()
            .enumerate()
        {
            let offset = ack["offset"].as_u64().expect("offset");
            assert!(
                acked.insert(offset, n * 64 + i as u64).is_none(),
                "offset {offset} acknowledged twice"
            );
        }
        acked_bytes += body.to_string().len() as u64;
        resumed_after_refusal |= refused > 0;
        n += 1;
    }
    eprintln!(
        "{refused} refusals, {acked_bytes} bytes acknowledged on a {volume_bytes}-byte volume"
    );
    assert!(
        refused > 0,
        "the disk never filled: the volume is not small"
    );
    assert!(
        resumed_after_refusal,
        "writes never resumed after a refusal"
    );
    let log = server.log();
    assert!(
        log.contains("dropped local copies of offloaded segments"),
        "space management never ran; log:\n{log}"
    );
    assert!(!log.contains("panicked"), "log:\n{log}");

    // Everything acknowledged, once each, at its offset, offsets dense
    // (the older part now read from the cold tier).
    let records = api.consume_all("fill", 0, 0).await;
    for (i, record) in records.iter().enumerate() {
        assert_eq!(record["offset"], i as u64, "offsets are dense");
    }
    for (offset, id) in &acked {
        let found = records.get(*offset as usize).map(|r| &r["value"]["id"]);
        assert_eq!(
            found,
            Some(&json!(id)),
            "acknowledged record at {offset} lost or changed"
        );
    }
    assert_eq!(
        records.len(),
        acked.len(),
        "records that were refused appeared anyway"
    );
    let status = server.terminate();
    assert!(
        status.success(),
        "clean shutdown after a full disk: {status:?}"
    );
}

//! The whole API fuzzed from its own OpenAPI description by an independent
//! tool (issue #14): schemathesis (installed by `scripts/test.sh` next to
//! `STRATA_TEST_PYTHON`) generates requests from `GET /openapi.json`, valid
//! and invalid, and checks every answer: no `5xx`, no status, content type,
//! header or body the description does not allow, invalid input refused.
//! A bounded budget (about two minutes) with a fixed seed keeps CI
//! repeatable; `STRATA_FUZZ_SECONDS` and `STRATA_FUZZ_SEED` run a longer or
//! different campaign.
//!
//! The one check left out is "schema-valid request rejected": some input
//! the description cannot constrain is refused with `400` by design (SQL
//! that does not parse, a partition the topic does not have).

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use serde_json::json;
use strata_test_support::{ChildServer, output_within, test_python};

fn binary() -> &'static Path {
    Path::new(env!("CARGO_BIN_EXE_strata"))
}

/// The schemathesis command of the test venv.
fn schemathesis() -> PathBuf {
    let python = test_python()
        .expect("the API fuzz test needs schemathesis: run scripts/test.sh (STRATA_TEST_PYTHON)");
    let tool = python.with_file_name("schemathesis");
    assert!(
        tool.is_file(),
        "{} is missing: run scripts/test.sh, which installs it",
        tool.display()
    );
    tool
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_api_holds_up_under_schemathesis() {
    let tool = schemathesis();
    let dir = tempfile::tempdir().expect("data dir");
    // Long polls end within a second, so a slow answer means a hang.
    let config = dir.path().join("strata.toml");
    std::fs::write(&config, "max_wait_ms = 1000\n").expect("config");
    let data = dir.path().join("data");
    let server = ChildServer::spawn(
        binary(),
        &data,
        &["--config", config.to_str().expect("utf-8 path")],
    );
    // Something to find, so that generated requests reach past the 404s.
    server.api.create_topic("fuzz", 2, json!({})).await;
    server
        .api
        .produce(
            "fuzz",
            &[json!({"key": "k", "value": {"n": 1}}), json!({"value": 2})],
        )
        .await;
    let (status, view) = server
        .api
        .post(
            "/v1/views",
            &json!({"name": "fuzz_view", "sql": "SELECT key, value FROM fuzz"}),
        )
        .await;
    assert!(status.is_success(), "create view: {view}");

    let seconds = std::env::var("STRATA_FUZZ_SECONDS").unwrap_or_else(|_| "120".into());
    let seed = std::env::var("STRATA_FUZZ_SEED").unwrap_or_else(|_| "20261203".into());
    let budget: u64 = seconds.parse().expect("STRATA_FUZZ_SECONDS is a number");
    let mut command = Command::new(&tool);
    command
        .arg("run")
        .arg(format!("{}/openapi.json", server.api.base))
        .args(["--checks", "all"])
        .args(["--exclude-checks", "positive_data_acceptance"])
        .args(["--phases", "examples,coverage,fuzzing"])
        .args(["--max-examples", "30"])
        .args(["--max-time", &seconds])
        .args(["--seed", &seed])
        .args(["--max-response-time", "15"])
        .args(["--request-timeout", "30"])
        .args(["--workers", "2"])
        .args(["--no-color"])
        .current_dir(dir.path());
    let output = output_within(&mut command, Duration::from_secs(budget + 480));
    let report = String::from_utf8_lossy(&output.stdout);
    assert!(
        output.status.success(),
        "schemathesis found problems:\n{report}\n{}\nserver log:\n{}",
        String::from_utf8_lossy(&output.stderr),
        server.log()
    );
    let (_, description) = server.api.get("/openapi.json").await;
    let operations: usize = description["paths"]
        .as_object()
        .expect("paths")
        .values()
        .map(|item| item.as_object().map_or(0, |methods| methods.len()))
        .sum();
    assert!(operations >= 25, "{operations} operations described");
    assert!(
        report.contains(&format!("Tested: {operations}")),
        "schemathesis did not test all {operations} operations:\n{report}"
    );
    // Still up, and nothing panicked underneath.
    let (status, _) = server.api.get("/health").await;
    assert!(status.is_success());
    let log = server.log();
    assert!(!log.contains("panicked"), "server log:\n{log}");
    let status = server.terminate();
    assert!(status.success(), "clean shutdown: {status:?}");
}

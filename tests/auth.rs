//! Tokens end to end with the `strata` binary: the first admin token made
//! on the server's machine with `--data-dir`, tokens made and used by the
//! CLI through `STRATA_TOKEN`, and no token in the server's log or metrics.

use std::path::Path;
use std::process::{Command, Output};

use reqwest::StatusCode;
use serde_json::json;
use std::time::Duration;

use strata_test_support::{ChildServer, output_within};

fn binary() -> &'static Path {
    Path::new(env!("CARGO_BIN_EXE_strata"))
}

fn strata(server: Option<&ChildServer>, token: Option<&str>, args: &[&str]) -> Output {
    let mut command = Command::new(binary());
    command.args(args).env_remove("STRATA_TOKEN");
    if let Some(server) = server {
        command.env("STRATA_SERVER", &server.api.base);
    }
    if let Some(token) = token {
        command.env("STRATA_TOKEN", token);
    }
    output_within(&mut command, Duration::from_secs(60))
}

fn ok(output: Output) -> String {
    assert!(
        output.status.success(),
        "{}",
        String::from_utf8_lossy(&output.stderr)
    );
    String::from_utf8(output.stdout).expect("utf-8")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_first_admin_token_is_made_on_the_machine_and_no_token_is_ever_logged() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().to_str().expect("path");
    let admin = ok(strata(
        None,
        None,
        &[
            "token",
            "create",
            "admin",
            "--allow",
            "admin",
            "--data-dir",
            data,
        ],
    ))
    .trim()
    .to_string();
    assert!(admin.starts_with("st_"), "{admin}");

    let server = ChildServer::spawn(binary(), dir.path(), &["--auth"]);
    let (status, _) = server.api.get("/v1/topics").await;
    assert_eq!(status, StatusCode::UNAUTHORIZED);
    let refused = strata(Some(&server), None, &["topic", "list"]);
    assert!(!refused.status.success(), "no token, no listing");

    ok(strata(
        Some(&server),
        Some(&admin),
        &["topic", "create", "clicks", "--partitions", "1"],
    ));
    let producer = ok(strata(
        Some(&server),
        Some(&admin),
        &[
            "token",
            "create",
            "loader",
            "--allow",
            "produce:clicks",
            "--allow",
            "consume:clicks",
        ],
    ))
    .trim()
    .to_string();
    let listed = ok(strata(Some(&server), Some(&admin), &["token", "list"]));
    assert!(listed.contains("admin\tadmin"), "{listed}");
    assert!(
        listed.contains("loader\tproduce:clicks consume:clicks"),
        "{listed}"
    );
    assert!(!listed.contains(&producer) && !listed.contains(&admin));

    let api = server.api.with_token(&producer);
    let (status, body) = api
        .post(
            "/v1/topics/clicks/records",
            &json!({"records": [{"value": {"n": 1}}]}),
        )
        .await;
    assert_eq!(status, StatusCode::OK, "{body}");
    let (status, _) = api.post("/v1/topics", &json!({"name": "x"})).await;
    assert_eq!(status, StatusCode::FORBIDDEN);

    ok(strata(
        Some(&server),
        Some(&admin),
        &["token", "revoke", "loader"],
    ));
    let (status, _) = api.get("/v1/topics/clicks").await;
    assert_eq!(status, StatusCode::UNAUTHORIZED, "revoked");

    let (_, metrics) = server.api.with_token(&admin).get_text("/metrics").await;
    assert!(metrics.contains("strata_http_request_duration_seconds"));
    assert!(
        metrics.contains("strata_auth_refused_total{code=\"unauthorized\"}"),
        "refusals are counted by code"
    );
    let log = server.log();
    assert!(
        log.contains("token created"),
        "the log says what happened: {log}"
    );
    for secret in [&admin, &producer] {
        let hex = &secret[3..];
        assert!(!log.contains(hex), "a token in the log:\n{log}");
        assert!(!metrics.contains(hex), "a token in the metrics");
    }
}

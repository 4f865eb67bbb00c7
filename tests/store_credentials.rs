//! An object store that refuses the server's credentials (issue #14): a
//! clear error in the log and in `/health/ready`, never silence, and never
//! the secret itself.
//!
//! The store is a real S3 server: a moto server of its own (from the test
//! venv, `STRATA_TEST_PYTHON`) that accepts any request for its first few
//! and then checks signatures, so the server starts with keys the store
//! does not know and has them refused a moment later, as when credentials
//! are revoked or rotated under a running server.

use std::net::TcpListener;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use strata_test_support::{ChildServer, eventually, test_python};

fn binary() -> &'static Path {
    Path::new(env!("CARGO_BIN_EXE_strata"))
}

/// Requests moto serves before it starts checking credentials: the
/// bucket's creation and the server's start (about four) fit, the server's
/// background work soon goes past.
const UNCHECKED_REQUESTS: &str = "8";

const SECRET: &str = "strata-test-secret-that-must-not-be-logged";

/// Kills the moto server when the test ends, however it ends.
struct Moto(Child);

impl Drop for Moto {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn refused_credentials_show_in_readiness_and_the_log() {
    let python = test_python().expect("the test needs moto: run scripts/test.sh");
    let port = TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .expect("a free port")
        .port();
    let _moto = Moto(
        Command::new(python.with_file_name("moto_server"))
            .args(["-H", "127.0.0.1", "-p", &port.to_string()])
            .env("INITIAL_NO_AUTH_ACTION_COUNT", UNCHECKED_REQUESTS)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("start moto_server"),
    );
    let endpoint = format!("http://127.0.0.1:{port}");
    let http = reqwest::Client::new();
    // Unsigned while moto does not check yet: the bucket.
    eventually(Duration::from_secs(30), "moto to listen", || async {
        http.put(format!("{endpoint}/strata-credentials"))
            .send()
            .await
            .ok()
            .filter(|r| r.status().is_success())
            .map(|_| ())
    })
    .await;

    let dir = tempfile::tempdir().expect("data dir");
    let server = ChildServer::spawn_with_env(
        binary(),
        dir.path(),
        &["--object-store", "s3://strata-credentials/p"],
        &[
            ("AWS_ENDPOINT", endpoint.as_str()),
            ("AWS_ALLOW_HTTP", "true"),
            ("AWS_REGION", "us-east-1"),
            ("AWS_ACCESS_KEY_ID", "AKIASTRATATESTUNKNOWN"),
            ("AWS_SECRET_ACCESS_KEY", SECRET),
        ],
    );
    let ready = eventually(
        Duration::from_secs(60),
        "readiness to report the refused credentials",
        || async {
            let (status, body) = server.api.get("/health/ready").await;
            (status.as_u16() == 503 && body["checks"]["object_store"]["ok"] == false)
                .then_some(body)
        },
    )
    .await;
    let error = ready["checks"]["object_store"]["error"]
        .as_str()
        .unwrap_or_default();
    assert!(
        error.contains("403") || error.contains("privileges"),
        "readiness names the refusal: {ready}"
    );
    let (status, _) = server.api.get("/health").await;
    assert!(status.is_success(), "liveness stays up");
    // The child's output is read on another thread: the line the server
    // logged before answering may not have been collected yet.
    let log = eventually(Duration::from_secs(30), "the log to say so", || async {
        let log = server.log();
        log.contains("readiness: the object store does not answer")
            .then_some(log)
    })
    .await;
    assert!(!log.contains(SECRET), "the secret leaked into the log");
    assert!(
        !ready.to_string().contains(SECRET),
        "the secret leaked into readiness"
    );
    assert!(server.terminate().code().is_some(), "the server stops");
}

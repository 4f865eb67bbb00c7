//! Shared fixtures for Strata's integration and end-to-end tests: a server
//! in this process or as a child process on an ephemeral port, an HTTP
//! client for the API, and polling with a deadline (never sleeps as
//! synchronisation); [`storage`] holds the storage crates without HTTP;
//! [`power_loss`] is a FUSE file system that loses unsynced writes.

pub mod power_loss;
pub mod storage;
pub mod tls;

use std::future::Future;
use std::io::{BufRead, BufReader};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use reqwest::{Method, StatusCode};
use serde_json::{Value, json};
use strata_server::broker::BrokerConfig;
use strata_server::query::QueryConfig;
use strata_server::tiering::TieringConfig;
use strata_server::{AuthConfig, ClusterConfig, Server, ServerConfig};
use tempfile::TempDir;
use tokio::sync::oneshot;
use tokio::task::JoinHandle;

/// A JSON API client bound to one server.
#[derive(Clone, Debug)]
pub struct Api {
    pub base: String,
    pub http: reqwest::Client,
    /// Sent as `Authorization: Bearer <token>` when set.
    pub token: Option<String>,
}

impl Api {
    pub fn new(base: &str) -> Self {
        Self {
            base: base.trim_end_matches('/').to_string(),
            http: reqwest::Client::new(),
            token: None,
        }
    }

    /// The same client, sending `token` with every request.
    pub fn with_token(&self, token: &str) -> Self {
        Self {
            token: Some(token.to_string()),
            ..self.clone()
        }
    }

    /// Sends a request with an optional raw body; returns status and parsed
    /// JSON (`Value::Null` for an empty body).
    pub async fn call(
        &self,
        method: Method,
        path: &str,
        content_type: Option<&str>,
        body: Option<Vec<u8>>,
    ) -> (StatusCode, Value) {
        let mut request = self.http.request(method, format!("{}{path}", self.base));
        if let Some(token) = &self.token {
            request = request.bearer_auth(token);
        }
        if let Some(ct) = content_type {
            request = request.header("content-type", ct);
        }
        if let Some(body) = body {
            request = request.body(body);
        }
        let response = request
            .send()
            .await
            .unwrap_or_else(|e| panic!("{path}: {e}"));
        let status = response.status();
        let bytes = response.bytes().await.expect("response body");
        let value = if bytes.is_empty() {
            Value::Null
        } else {
            serde_json::from_slice(&bytes).unwrap_or_else(|e| {
                panic!(
                    "{path}: not JSON ({e}): {}",
                    String::from_utf8_lossy(&bytes)
                )
            })
        };
        (status, value)
    }

    pub async fn get(&self, path: &str) -> (StatusCode, Value) {
        self.call(Method::GET, path, None, None).await
    }

    /// A GET whose answer is text (e.g. `/metrics`).
    pub async fn get_text(&self, path: &str) -> (StatusCode, String) {
        let mut request = self.http.get(format!("{}{path}", self.base));
        if let Some(token) = &self.token {
            request = request.bearer_auth(token);
        }
        let response = request
            .send()
            .await
            .unwrap_or_else(|e| panic!("{path}: {e}"));
        let status = response.status();
        (status, response.text().await.expect("response body"))
    }

    pub async fn post(&self, path: &str, body: &Value) -> (StatusCode, Value) {
        self.call(
            Method::POST,
            path,
            Some("application/json"),
            Some(body.to_string().into_bytes()),
        )
        .await
    }

    pub async fn delete(&self, path: &str) -> (StatusCode, Value) {
        self.call(Method::DELETE, path, None, None).await
    }

    /// Creates a topic, panicking unless the server answers 201.
    pub async fn create_topic(&self, name: &str, partitions: u32, config: Value) -> Value {
        let (status, body) = self
            .post(
                "/v1/topics",
                &json!({"name": name, "partitions": partitions, "config": config}),
            )
            .await;
        assert_eq!(status, StatusCode::CREATED, "create {name}: {body}");
        body
    }

    /// Produces `records` (the API's record objects), panicking unless 200;
    /// returns the `offsets` entries.
    pub async fn produce(&self, topic: &str, records: &[Value]) -> Vec<Value> {
        let (status, body) = self
            .post(
                &format!("/v1/topics/{topic}/records"),
                &json!({ "records": records }),
            )
            .await;
        assert_eq!(status, StatusCode::OK, "produce to {topic}: {body}");
        body["offsets"].as_array().cloned().expect("offsets array")
    }

    /// Produces `body` with an `Idempotency-Key` header (raw bytes, so tests
    /// can send keys that are not valid text); returns status and JSON.
    pub async fn produce_keyed(
        &self,
        topic: &str,
        body: &Value,
        key: &[u8],
    ) -> (StatusCode, Value) {
        let key = reqwest::header::HeaderValue::from_bytes(key).expect("a header value");
        let response = self
            .http
            .post(format!("{}/v1/topics/{topic}/records", self.base))
            .header("content-type", "application/json")
            .header("idempotency-key", key)
            .body(body.to_string())
            .send()
            .await
            .expect("produce");
        let status = response.status();
        let value = response.json().await.expect("JSON response");
        (status, value)
    }

    /// Offloads `topic` now (`tiering/run?roll=true`), panicking unless 200;
    /// returns the summary.
    pub async fn offload(&self, topic: &str) -> Value {
        let (status, body) = self
            .post(
                &format!("/v1/topics/{topic}/tiering/run?roll=true"),
                &json!({}),
            )
            .await;
        assert_eq!(status, StatusCode::OK, "offload of {topic}: {body}");
        body
    }

    /// Reads a whole partition from `offset` to its current end.
    pub async fn consume_all(&self, topic: &str, partition: u32, mut offset: u64) -> Vec<Value> {
        let mut out = Vec::new();
        loop {
            let (status, page) = self
                .get(&format!("/v1/topics/{topic}/partitions/{partition}/records?offset={offset}&max_records=10000&max_bytes=16777216"))
                .await;
            assert_eq!(
                status,
                StatusCode::OK,
                "consume {topic}/{partition}@{offset}: {page}"
            );
            let records = page["records"].as_array().cloned().unwrap_or_default();
            let next = page["next_offset"].as_u64().expect("next_offset");
            let end = page["end_offset"].as_u64().expect("end_offset");
            out.extend(records);
            if next >= end {
                return out;
            }
            assert!(next > offset, "consume made no progress at {offset}");
            offset = next;
        }
    }

    /// Each partition's `end_offset`, from the topic description.
    pub async fn end_offsets(&self, topic: &str) -> Vec<u64> {
        let (status, body) = self.get(&format!("/v1/topics/{topic}")).await;
        assert_eq!(status, StatusCode::OK, "describe {topic}: {body}");
        body["partitions"]
            .as_array()
            .expect("partitions")
            .iter()
            .map(|p| p["end_offset"].as_u64().expect("end_offset"))
            .collect()
    }
}

/// The Python with pyarrow that `scripts/test.sh` installs (`STRATA_TEST_PYTHON`).
/// `None` outside that script; under CI its absence is an error.
pub fn test_python() -> Option<PathBuf> {
    match std::env::var_os("STRATA_TEST_PYTHON") {
        Some(path) => Some(PathBuf::from(path)),
        None if std::env::var_os("CI").is_some() => {
            panic!("CI must provide STRATA_TEST_PYTHON: run scripts/test.sh")
        }
        None => None,
    }
}

/// Runs a Python script with `STRATA_TEST_PYTHON` and one argument; returns
/// its standard output (panics when the script fails).
pub fn run_python(python: &Path, script: &str, arg: &Path) -> String {
    let out = Command::new(python)
        .args(["-c", script])
        .arg(arg)
        .output()
        .expect("run python");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// Polls `check` until it returns `Some`, panicking with `what` after `timeout`.
pub async fn eventually<T, F, Fut>(timeout: Duration, what: &str, mut check: F) -> T
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Option<T>>,
{
    let deadline = Instant::now() + timeout;
    let mut pause = Duration::from_millis(5);
    loop {
        if let Some(value) = check().await {
            return value;
        }
        assert!(
            Instant::now() < deadline,
            "timed out after {timeout:?} waiting for {what}"
        );
        tokio::time::sleep(pause).await;
        pause = (pause * 2).min(Duration::from_millis(200));
    }
}

/// A small deterministic generator (xorshift), so that a randomized test
/// replays from its seed.
pub struct Rng(pub u64);

impl Rng {
    /// A number in `0..n`.
    pub fn below(&mut self, n: u64) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0 % n
    }
}

/// A broker config with small, test-friendly limits under `data_dir`.
pub fn test_config(data_dir: &Path) -> BrokerConfig {
    BrokerConfig {
        data_dir: data_dir.to_path_buf(),
        ..BrokerConfig::default()
    }
}

/// The whole server (hot tier, cold tier on `file://<data_dir>/cold`,
/// queries) running inside the test process on an ephemeral port.
pub struct TestServer {
    pub addr: SocketAddr,
    pub api: Api,
    pub config: BrokerConfig,
    auth: AuthConfig,
    shutdown: Option<oneshot::Sender<()>>,
    task: Option<JoinHandle<strata_server::Result<()>>>,
    dir: Option<TempDir>,
}

impl TestServer {
    /// A server on a fresh temporary data directory.
    pub async fn start() -> Self {
        let dir = TempDir::new().expect("temp dir");
        let config = test_config(dir.path());
        Self::start_in(config, AuthConfig::default(), Some(dir)).await
    }

    /// A server on a fresh temporary data directory with authentication
    /// as `auth` says.
    pub async fn start_with_auth(auth: AuthConfig) -> Self {
        let dir = TempDir::new().expect("temp dir");
        let config = test_config(dir.path());
        Self::start_in(config, auth, Some(dir)).await
    }

    /// A server on a fresh temporary data directory (removed when the
    /// server is dropped), with the settings of `config` other than `data_dir`.
    pub async fn start_with(config: BrokerConfig) -> Self {
        let dir = TempDir::new().expect("temp dir");
        let config = BrokerConfig {
            data_dir: dir.path().to_path_buf(),
            ..config
        };
        Self::start_in(config, AuthConfig::default(), Some(dir)).await
    }

    async fn start_in(config: BrokerConfig, auth: AuthConfig, dir: Option<TempDir>) -> Self {
        let server = Server::open(ServerConfig {
            broker: config.clone(),
            object_store: None,
            // Offload only when a test asks (`tiering/run`), so that what
            // a test sees does not depend on the background pass's timing.
            tiering: TieringConfig {
                interval: Duration::from_secs(24 * 3600),
                ..TieringConfig::default()
            },
            query: QueryConfig::new(config.data_dir.clone()),
            cluster: ClusterConfig::default(),
            auth: auth.clone(),
            tls: None,
        })
        .await
        .expect("open server");
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind");
        let addr = listener.local_addr().expect("addr");
        let (tx, rx) = oneshot::channel::<()>();
        let task = tokio::spawn(server.run(listener, async move {
            let _ = rx.await;
        }));
        Self {
            addr,
            api: Api::new(&format!("http://{addr}")),
            config,
            auth,
            shutdown: Some(tx),
            task: Some(task),
            dir,
        }
    }

    /// The data directory.
    pub fn data_dir(&self) -> &Path {
        &self.config.data_dir
    }

    /// Graceful shutdown; panics if the server did not stop cleanly.
    pub async fn stop(mut self) -> (BrokerConfig, Option<TempDir>) {
        self.stop_inner().await;
        (self.config.clone(), self.dir.take())
    }

    async fn stop_inner(&mut self) {
        if let Some(tx) = self.shutdown.take() {
            let _ = tx.send(());
        }
        if let Some(task) = self.task.take() {
            task.await.expect("server task").expect("clean shutdown");
        }
    }

    /// Stops gracefully, runs `meddle` on the data directory (to damage or
    /// remove something), and starts again on it.
    pub async fn restart_after(self, meddle: impl FnOnce(&Path)) -> Self {
        let auth = self.auth.clone();
        let (config, dir) = self.stop().await;
        meddle(&config.data_dir);
        Self::start_in(config, auth, dir).await
    }

    /// Stops gracefully and starts again on the same data directory.
    pub async fn restart(self) -> Self {
        let auth = self.auth.clone();
        let (config, dir) = self.stop().await;
        Self::start_in(config, auth, dir).await
    }
}

impl Drop for TestServer {
    fn drop(&mut self) {
        if let Some(tx) = self.shutdown.take() {
            let _ = tx.send(());
        }
    }
}

/// Runs `command` to its end and returns what it printed, killing it and
/// panicking after `timeout` (a command that should exit at once must not
/// hang a test run).
pub fn output_within(command: &mut Command, timeout: Duration) -> std::process::Output {
    let mut child = command
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn");
    let deadline = Instant::now() + timeout;
    while child.try_wait().expect("wait").is_none() {
        if Instant::now() >= deadline {
            let _ = child.kill();
            let out = child.wait_with_output().expect("output");
            panic!(
                "{command:?} did not exit within {timeout:?}; stderr:\n{}",
                String::from_utf8_lossy(&out.stderr)
            );
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    child.wait_with_output().expect("output")
}

/// Runs `binary serve` on `data_dir` with `extra_args`, expecting it to
/// refuse to start (within 60 s); returns what it printed on stderr.
pub fn serve_refused(binary: &Path, data_dir: &Path, extra_args: &[&std::ffi::OsStr]) -> String {
    let out = output_within(
        Command::new(binary)
            .args(["serve", "--listen", "127.0.0.1:0", "--data-dir"])
            .arg(data_dir)
            .args(extra_args),
        Duration::from_secs(60),
    );
    let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
    assert!(!out.status.success(), "the server started: {stderr}");
    stderr
}

/// `strata serve` as a child process (for crash tests with SIGKILL).
pub struct ChildServer {
    child: Child,
    pub api: Api,
    pub data_dir: PathBuf,
    log: Arc<Mutex<String>>,
}

impl ChildServer {
    /// Starts `binary serve` on port 0 over `data_dir` and waits for its
    /// ready line, which carries the address.
    pub fn spawn(binary: &Path, data_dir: &Path, extra_args: &[&str]) -> Self {
        Self::spawn_with_env(binary, data_dir, extra_args, &[])
    }

    /// Like [`ChildServer::spawn`], with extra environment variables.
    pub fn spawn_with_env(
        binary: &Path,
        data_dir: &Path,
        extra_args: &[&str],
        env: &[(&str, &str)],
    ) -> Self {
        let mut child = Command::new(binary)
            .args(["serve", "--listen", "127.0.0.1:0", "--data-dir"])
            .arg(data_dir)
            .args(extra_args)
            .env("STRATA_LOG", "info")
            .envs(env.iter().copied())
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .expect("spawn strata serve");
        let stderr = child.stderr.take().expect("stderr");
        let log = Arc::new(Mutex::new(String::new()));
        let (tx, rx) = std::sync::mpsc::channel();
        let sink = log.clone();
        std::thread::spawn(move || {
            let mut tx = Some(tx);
            for line in BufReader::new(stderr).lines().map_while(Result::ok) {
                let ready = ["listening on http://", "listening on https://"]
                    .iter()
                    .find_map(|marker| line.find(marker).map(|at| at + marker.len()));
                // Logged before the ready address is sent: a test that
                // looks at the log once the server is up finds that line.
                {
                    let mut log = sink.lock().unwrap_or_else(|e| e.into_inner());
                    log.push_str(&line);
                    log.push('\n');
                }
                if let Some(at) = ready {
                    let addr = line[at..]
                        .split_whitespace()
                        .next()
                        .unwrap_or("")
                        .to_string();
                    if let Some(tx) = tx.take() {
                        let _ = tx.send(addr);
                    }
                }
            }
        });
        let addr = match rx.recv_timeout(Duration::from_secs(60)) {
            Ok(addr) => addr,
            Err(_) => {
                let _ = child.kill();
                panic!(
                    "strata serve did not become ready; log:\n{}",
                    log.lock().map(|l| l.clone()).unwrap_or_default()
                );
            }
        };
        Self {
            child,
            api: Api::new(&format!("http://{addr}")),
            data_dir: data_dir.to_path_buf(),
            log,
        }
    }

    /// Everything the server logged so far.
    pub fn log(&self) -> String {
        self.log.lock().map(|l| l.clone()).unwrap_or_default()
    }

    /// Waits (up to 60 s) for the process to exit by itself, e.g. at a crash point.
    pub fn wait_exit(mut self) -> ExitStatus {
        self.exit_status(Duration::from_secs(60), "exit")
    }

    /// Polls for the exit status, panicking with the log after `timeout`.
    fn exit_status(&mut self, timeout: Duration, what: &str) -> ExitStatus {
        let deadline = Instant::now() + timeout;
        loop {
            if let Some(status) = self.child.try_wait().expect("wait") {
                return status;
            }
            assert!(
                Instant::now() < deadline,
                "server did not {what}; log:\n{}",
                self.log()
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// SIGKILL: the process dies at once, flushing nothing.
    pub fn kill9(mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }

    /// SIGSTOP: the process stops where it is, its sockets open (a long
    /// GC pause, a VM frozen), until [`ChildServer::resume`].
    pub fn pause(&self) {
        self.signal("-STOP");
    }

    /// SIGCONT after [`ChildServer::pause`].
    pub fn resume(&self) {
        self.signal("-CONT");
    }

    fn signal(&self, signal: &str) {
        let pid = self.child.id().to_string();
        let sent = Command::new("kill")
            .args([signal, &pid])
            .status()
            .expect("kill");
        assert!(sent.success(), "could not send {signal} to {pid}");
    }

    /// SIGTERM, then waits for the exit status (panics after 30 s).
    pub fn terminate(mut self) -> ExitStatus {
        let pid = self.child.id().to_string();
        let sent = Command::new("kill")
            .args(["-TERM", &pid])
            .status()
            .expect("kill -TERM");
        assert!(sent.success(), "could not signal {pid}");
        self.exit_status(Duration::from_secs(30), "exit after SIGTERM")
    }
}

impl Drop for ChildServer {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A TCP proxy in front of a server that a test can cut and restore, to
/// play an outage of that server (e.g. the object store) without losing
/// its state. It runs on its own thread and runtime, so a test that blocks
/// its own thread (waiting for a child process) cannot starve it.
pub struct FaultProxy {
    pub addr: SocketAddr,
    up: Arc<std::sync::atomic::AtomicBool>,
    target: Arc<Mutex<Option<SocketAddr>>>,
    connections: Arc<Mutex<Vec<tokio::task::AbortHandle>>>,
    stop: Option<oneshot::Sender<()>>,
}

impl FaultProxy {
    /// Starts forwarding `127.0.0.1:<ephemeral>` to `target`.
    pub fn start(target: SocketAddr) -> Self {
        let proxy = Self::unrouted();
        proxy.route_to(target);
        proxy
    }

    /// Starts a proxy that refuses connections until [`FaultProxy::route_to`]:
    /// an address to give a server before it has one (e.g. a cluster
    /// node's `--advertise`, so that the links to it can be cut).
    pub fn unrouted() -> Self {
        use std::sync::atomic::Ordering;
        let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind proxy");
        listener.set_nonblocking(true).expect("non-blocking proxy");
        let addr = listener.local_addr().expect("proxy addr");
        let up = Arc::new(std::sync::atomic::AtomicBool::new(true));
        let target: Arc<Mutex<Option<SocketAddr>>> = Arc::default();
        let connections: Arc<Mutex<Vec<tokio::task::AbortHandle>>> = Arc::default();
        let (stop, mut stopped) = oneshot::channel::<()>();
        let (up2, target2, conns2) = (up.clone(), target.clone(), connections.clone());
        std::thread::spawn(move || {
            let runtime = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .expect("proxy runtime");
            runtime.block_on(async move {
                let listener = tokio::net::TcpListener::from_std(listener).expect("proxy listener");
                loop {
                    let (mut inbound, _) = tokio::select! {
                        accepted = listener.accept() => match accepted {
                            Ok(accepted) => accepted,
                            Err(_) => continue,
                        },
                        _ = &mut stopped => return,
                    };
                    let target = *target2.lock().unwrap_or_else(|e| e.into_inner());
                    let Some(target) = target.filter(|_| up2.load(Ordering::SeqCst)) else {
                        drop(inbound);
                        continue;
                    };
                    let task = tokio::spawn(async move {
                        if let Ok(mut outbound) = tokio::net::TcpStream::connect(target).await {
                            let _ =
                                tokio::io::copy_bidirectional(&mut inbound, &mut outbound).await;
                        }
                    });
                    conns2
                        .lock()
                        .unwrap_or_else(|e| e.into_inner())
                        .push(task.abort_handle());
                }
            });
        });
        Self {
            addr,
            up,
            target,
            connections,
            stop: Some(stop),
        }
    }

    /// Forwards new connections to `target` from now on.
    pub fn route_to(&self, target: SocketAddr) {
        *self.target.lock().unwrap_or_else(|e| e.into_inner()) = Some(target);
    }

    /// Refuses new connections and breaks the open ones.
    pub fn cut(&self) {
        self.up.store(false, std::sync::atomic::Ordering::SeqCst);
        for c in self
            .connections
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .drain(..)
        {
            c.abort();
        }
    }

    /// Forwards again.
    pub fn restore(&self) {
        self.up.store(true, std::sync::atomic::Ordering::SeqCst);
    }
}

impl Drop for FaultProxy {
    fn drop(&mut self) {
        self.cut();
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
    }
}

/// The S3-compatible server that `scripts/test.sh` started: its address
/// (from `AWS_ENDPOINT`) and a fresh `s3://` URL under `STRATA_TEST_S3`.
/// `None` outside that script; under CI its absence is an error.
pub fn test_s3(name: &str) -> Option<(SocketAddr, String)> {
    let (Ok(endpoint), Ok(url)) = (
        std::env::var("AWS_ENDPOINT"),
        std::env::var("STRATA_TEST_S3"),
    ) else {
        assert!(
            std::env::var_os("CI").is_none(),
            "CI must provide an S3 server: run scripts/test.sh"
        );
        return None;
    };
    let host = endpoint.trim_start_matches("http://").trim_end_matches('/');
    let addr: SocketAddr = host
        .parse()
        .unwrap_or_else(|_| panic!("AWS_ENDPOINT {endpoint} is not http://IP:PORT"));
    Some((
        addr,
        format!(
            "{}/{name}-{}",
            url.trim_end_matches('/'),
            std::process::id()
        ),
    ))
}

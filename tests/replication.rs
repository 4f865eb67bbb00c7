//! Replicated topics across three `strata serve` processes sharing one
//! `file://` root (docs/cluster.md): produce through any node, read the
//! same records from every node, kill -9 a partition's leader and keep
//! going within 5 s with nothing acknowledged lost or doubled, and a killed
//! node that comes back catching up and rejoining the in-sync replicas.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use reqwest::StatusCode;
use serde_json::{Value, json};
use strata_test_support::{Api, ChildServer, FaultProxy, eventually};
use tempfile::TempDir;

fn binary() -> &'static Path {
    Path::new(env!("CARGO_BIN_EXE_strata"))
}

/// Heartbeats and failure detection fast enough for a test, slow enough
/// that a busy 2-core machine does not fail over for nothing.
const CONFIG: &str = "[cluster]\nheartbeat_interval_ms = 200\nfailure_timeout_ms = 1500\n";

impl Drop for Cluster {
    fn drop(&mut self) {
        self.keep_logs();
    }
}

struct Cluster {
    _root: TempDir,
    store: String,
    config: PathBuf,
    dirs: BTreeMap<String, TempDir>,
    nodes: BTreeMap<String, ChildServer>,
    /// With [`Cluster::with_links`]: each node advertises the address of a
    /// proxy in front of it, so that every link towards it (followers'
    /// fetches, forwarded requests, heartbeats to it) can be cut while
    /// clients still reach it directly and its own requests go out.
    links: Option<BTreeMap<String, FaultProxy>>,
}

impl Cluster {
    fn start(names: &[&str]) -> Self {
        Self::start_on(names, None, false)
    }

    /// Nodes sharing `store` (an `s3://` URL), or a `file://` root of
    /// their own when `None`; `with_links`: each behind a proxy that
    /// [`Cluster::cut_links_to`] cuts.
    fn start_on(names: &[&str], store: Option<String>, with_links: bool) -> Self {
        let root = TempDir::new().unwrap();
        std::fs::create_dir_all(root.path().join("lake")).unwrap();
        let store =
            store.unwrap_or_else(|| format!("file://{}", root.path().join("lake").display()));
        let config = root.path().join("strata.toml");
        std::fs::write(&config, CONFIG).unwrap();
        let mut cluster = Self {
            _root: root,
            store,
            config,
            dirs: BTreeMap::new(),
            nodes: BTreeMap::new(),
            links: with_links.then(BTreeMap::new),
        };
        for name in names {
            cluster
                .dirs
                .insert(name.to_string(), TempDir::new().unwrap());
            cluster.spawn(name);
        }
        cluster
    }

    fn spawn(&mut self, name: &str) {
        let dir = self.dirs[name].path().to_path_buf();
        let mut args = vec![
            "--node-id".to_string(),
            name.to_string(),
            "--object-store".to_string(),
            self.store.clone(),
            "--config".to_string(),
            self.config.display().to_string(),
        ];
        if let Some(links) = &mut self.links {
            let proxy = links
                .entry(name.to_string())
                .or_insert_with(FaultProxy::unrouted);
            args.extend(["--advertise".to_string(), format!("http://{}", proxy.addr)]);
        }
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        let node = ChildServer::spawn(binary(), &dir, &args);
        if let Some(links) = &self.links {
            let addr = node.api.base.trim_start_matches("http://");
            links[name].route_to(addr.parse().expect("the node's address"));
        }
        self.nodes.insert(name.to_string(), node);
    }

    /// Cuts every link towards `name` (its outgoing requests still pass).
    fn cut_links_to(&self, name: &str) {
        self.links.as_ref().expect("a cluster with links")[name].cut();
    }

    fn restore_links_to(&self, name: &str) {
        self.links.as_ref().expect("a cluster with links")[name].restore();
    }

    /// Creates `topic` through `through` and waits until every running
    /// node knows it.
    async fn create_topic(&self, through: &str, topic: &str, partitions: u32, config: Value) {
        self.api(through)
            .create_topic(topic, partitions, config)
            .await;
        for name in self.nodes.keys() {
            eventually(Duration::from_secs(10), "the topic everywhere", || async {
                (self.api(name).get(&format!("/v1/topics/{topic}")).await.0 == StatusCode::OK)
                    .then_some(())
            })
            .await;
        }
    }

    /// Writes each node's log to `$STRATA_TEST_LOGS/<node>.log` when that
    /// variable is set (for a failure's post-mortem).
    fn keep_logs(&self) {
        if let Some(dir) = std::env::var_os("STRATA_TEST_LOGS") {
            for (name, node) in &self.nodes {
                let _ = std::fs::write(Path::new(&dir).join(format!("{name}.log")), node.log());
            }
        }
    }

    fn api(&self, name: &str) -> &Api {
        &self.nodes[name].api
    }

    fn kill9(&mut self, name: &str) {
        self.nodes.remove(name).expect("running").kill9();
    }

    /// Waits until every running node sees `alive` live nodes.
    async fn settle(&self, alive: usize) {
        for (name, node) in &self.nodes {
            eventually(
                Duration::from_secs(20),
                &format!("{name} to see {alive} live nodes"),
                || async {
                    let (status, view) = node.api.get("/v1/cluster").await;
                    let live = view["nodes"]
                        .as_array()
                        .map_or(0, |n| n.iter().filter(|n| n["alive"] == true).count());
                    (status == StatusCode::OK && live == alive).then_some(())
                },
            )
            .await;
        }
    }
}

/// Produces `records` through `api` with `key` until it is acknowledged
/// (retrying refusals, as a client with an idempotency key may); returns
/// the offsets answer.
async fn produce_until_acked(
    api: &Api,
    topic: &str,
    key: &str,
    records: &[Value],
    within: Duration,
) -> Vec<Value> {
    let started = Instant::now();
    loop {
        let response = api
            .http
            .post(format!("{}/v1/topics/{topic}/records", api.base))
            .header("Idempotency-Key", key)
            .json(&json!({ "records": records }))
            .send()
            .await;
        if let Ok(response) = response {
            let status = response.status();
            let body: Value = response.json().await.unwrap_or_default();
            if status == StatusCode::OK {
                return body["offsets"].as_array().expect("offsets").clone();
            }
            assert!(
                status == StatusCode::SERVICE_UNAVAILABLE || status == StatusCode::NOT_FOUND,
                "a produce may be refused for a while, never failed otherwise: {status} {body}"
            );
        }
        assert!(
            started.elapsed() < within,
            "no acknowledgement within {within:?}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// The `(partition, offset)` of every entry of a JSON array of records,
/// acknowledgements or committed positions.
fn positions(entries: &Value) -> Vec<(u64, u64)> {
    entries
        .as_array()
        .expect("an array")
        .iter()
        .map(|e| {
            (
                e["partition"].as_u64().unwrap(),
                e["offset"].as_u64().unwrap(),
            )
        })
        .collect()
}

/// Every record of `topic` as `api` reads it: (partition, offset) → value.
async fn read_all(api: &Api, topic: &str, partitions: u32) -> BTreeMap<(u64, u64), Value> {
    let mut all = BTreeMap::new();
    for p in 0..partitions {
        for record in api.consume_all(topic, p, 0).await {
            let at = (u64::from(p), record["offset"].as_u64().unwrap());
            assert!(
                all.insert(at, record["value"].clone()).is_none(),
                "offset {at:?} twice"
            );
        }
    }
    all
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn three_nodes_replicate_fail_over_and_lose_nothing_acknowledged() {
    let mut cluster = Cluster::start(&["n1", "n2", "n3"]);
    cluster.settle(3).await;

    // Created through any node (passed on to the controller).
    let created = cluster
        .api("n2")
        .create_topic("orders", 3, json!({"segment_bytes": 4096}))
        .await;
    assert_eq!(created["config"]["replication_factor"], 3, "{created}");
    assert_eq!(created["config"]["min_insync_replicas"], 2, "{created}");
    for name in ["n1", "n2", "n3"] {
        let described = eventually(
            Duration::from_secs(10),
            "the topic on every node",
            || async {
                let (status, body) = cluster.api(name).get("/v1/topics/orders").await;
                (status == StatusCode::OK).then_some(body)
            },
        )
        .await;
        for p in described["partitions"].as_array().unwrap() {
            assert_eq!(p["replicas"].as_array().unwrap().len(), 3, "{described}");
            assert_eq!(p["leader_epoch"], 1, "{described}");
            assert!(p["leader"].is_string(), "{described}");
        }
    }

    // Acknowledged records, by where they were acknowledged.
    let mut acked: BTreeMap<(u64, u64), Value> = BTreeMap::new();
    let mut round = 0;
    let mut produce_round = |api: Api, within: Duration| {
        round += 1;
        let n = round;
        async move {
            let records: Vec<Value> = (0..9)
                .map(|i| json!({"key": format!("k{i}"), "value": {"round": n, "i": i}}))
                .collect();
            let offsets =
                produce_until_acked(&api, "orders", &format!("round-{n}"), &records, within).await;
            // A retry of the same request writes nothing and answers the same.
            let again =
                produce_until_acked(&api, "orders", &format!("round-{n}"), &records, within).await;
            assert_eq!(
                offsets, again,
                "an idempotent retry answers with the first offsets"
            );
            offsets
                .iter()
                .zip(&records)
                .map(|(o, r)| {
                    (
                        (
                            o["partition"].as_u64().unwrap(),
                            o["offset"].as_u64().unwrap(),
                        ),
                        r["value"].clone(),
                    )
                })
                .collect::<Vec<_>>()
        }
    };
    for name in ["n1", "n2", "n3", "n1", "n2", "n3"] {
        let api = cluster.api(name).clone();
        acked.extend(produce_round(api, Duration::from_secs(20)).await);
    }
    // Every node reads the same: each acknowledged record once, at its offset.
    for name in ["n1", "n2", "n3"] {
        let seen = eventually(
            Duration::from_secs(10),
            "every node to hold every record",
            || async {
                let seen = read_all(cluster.api(name), "orders", 3).await;
                (seen == acked).then_some(seen)
            },
        )
        .await;
        assert_eq!(seen.len(), 54);
    }

    // A topic that needs all three replicas in sync (API.md: fewer in-sync
    // replicas than min_insync_replicas is 503 not_enough_replicas,
    // nothing acknowledged).
    cluster
        .create_topic(
            "n1",
            "strict",
            1,
            json!({"replication_factor": 3, "min_insync_replicas": 3}),
        )
        .await;
    for name in ["n1", "n2", "n3"] {
        eventually(Duration::from_secs(10), "strict everywhere", || async {
            (cluster.api(name).get("/v1/topics/strict").await.0 == StatusCode::OK).then_some(())
        })
        .await;
    }
    produce_until_acked(
        cluster.api("n1"),
        "strict",
        "strict-1",
        &[json!({"value": 1})],
        Duration::from_secs(10),
    )
    .await;

    // Kill -9 the leader of partition 0; the others take over.
    let (_, described) = cluster.api("n1").get("/v1/topics/orders").await;
    let victim = described["partitions"][0]["leader"]
        .as_str()
        .unwrap()
        .to_string();
    let survivor = ["n1", "n2", "n3"]
        .into_iter()
        .find(|n| *n != victim)
        .unwrap();
    cluster.kill9(&victim);
    let killed = Instant::now();
    let api = cluster.api(survivor).clone();
    acked.extend(produce_round(api, Duration::from_secs(5)).await);
    let failover = killed.elapsed();
    println!(
        "failover: produce through {survivor} acknowledged {failover:?} after kill -9 of {victim}"
    );
    assert!(
        failover < Duration::from_secs(5),
        "failover took {failover:?}"
    );
    for _ in 0..3 {
        let api = cluster.api(survivor).clone();
        acked.extend(produce_round(api, Duration::from_secs(10)).await);
    }
    let (_, described) = cluster.api(survivor).get("/v1/topics/orders").await;
    for p in described["partitions"].as_array().unwrap() {
        assert_ne!(p["leader"], victim.as_str(), "{described}");
        assert!(p["leader_epoch"].as_u64().unwrap() >= 1, "{described}");
    }
    for name in cluster.nodes.keys() {
        let seen = eventually(
            Duration::from_secs(10),
            "the survivors to agree",
            || async {
                let seen = read_all(cluster.api(name), "orders", 3).await;
                (seen == acked).then_some(seen)
            },
        )
        .await;
        // Offsets stay dense: each partition holds 0..n.
        for p in 0..3u64 {
            let offsets: Vec<u64> = seen
                .keys()
                .filter(|(q, _)| *q == p)
                .map(|(_, o)| *o)
                .collect();
            assert_eq!(offsets, (0..offsets.len() as u64).collect::<Vec<_>>());
        }
    }

    // With two of three in sync, "strict" refuses writes and keeps
    // nothing of them.
    let refused = eventually(Duration::from_secs(15), "strict to refuse", || async {
        let (status, body) = cluster
            .api(survivor)
            .post(
                "/v1/topics/strict/records",
                &json!({"records": [{"value": 2}]}),
            )
            .await;
        (status == StatusCode::SERVICE_UNAVAILABLE
            && body["error"]["code"] == "not_enough_replicas")
            .then_some(body)
    })
    .await;
    println!("strict: {refused}");
    let (_, strict) = cluster.api(survivor).get("/v1/topics/strict").await;
    assert_eq!(strict["partitions"][0]["end_offset"], 1, "{strict}");

    // The killed node comes back with its disk, catches up and rejoins
    // every ISR.
    cluster.spawn(&victim);
    cluster.settle(3).await;
    eventually(
        Duration::from_secs(30),
        "the node back in every ISR",
        || async {
            let (_, described) = cluster.api(survivor).get("/v1/topics/orders").await;
            described["partitions"]
                .as_array()?
                .iter()
                .all(|p| p["isr"].as_array().is_some_and(|isr| isr.len() == 3))
                .then_some(())
        },
    )
    .await;
    // Three in sync again: "strict" takes writes.
    produce_until_acked(
        cluster.api(survivor),
        "strict",
        "strict-3",
        &[json!({"value": 3})],
        Duration::from_secs(30),
    )
    .await;
    let seen = eventually(
        Duration::from_secs(10),
        "the returned node to hold every record",
        || async {
            let seen = read_all(cluster.api(&victim), "orders", 3).await;
            (seen == acked).then_some(seen)
        },
    )
    .await;
    assert_eq!(seen.len(), acked.len());
}

/// The node that leads the most partitions of `topic`, as `api` sees it.
async fn busiest_leader(api: &Api, topic: &str) -> String {
    let (_, described) = api.get(&format!("/v1/topics/{topic}")).await;
    let mut led: BTreeMap<String, usize> = BTreeMap::new();
    for p in described["partitions"].as_array().expect("partitions") {
        if let Some(leader) = p["leader"].as_str() {
            *led.entry(leader.to_string()).or_default() += 1;
        }
    }
    led.into_iter().max_by_key(|(_, n)| *n).expect("a leader").0
}

/// Waits until every partition of `topic` has `isr` in-sync replicas, as
/// `api` sees it.
async fn full_isr(api: &Api, topic: &str, isr: usize, within: Duration) {
    eventually(within, "every partition back to a full ISR", || async {
        let (status, described) = api.get(&format!("/v1/topics/{topic}")).await;
        (status == StatusCode::OK
            && described["partitions"].as_array()?.iter().all(|p| {
                p["isr"].as_array().is_some_and(|m| m.len() == isr) && p["leader"].is_string()
            }))
        .then_some(())
    })
    .await;
}

/// One acknowledged record.
struct Acked {
    /// When the attempt that was acknowledged was sent, and when its
    /// answer came.
    sent: Instant,
    answered: Instant,
    partition: u64,
    offset: u64,
    value: Value,
}

/// A producer that runs until stopped: each request (12 keyed records,
/// every partition) goes to the next live node and is retried with its
/// idempotency key until acknowledged; every acknowledgement is recorded
/// with its time.
struct Producer {
    targets: std::sync::Arc<std::sync::Mutex<Vec<Api>>>,
    acked: std::sync::Arc<std::sync::Mutex<Vec<Acked>>>,
    stop: tokio::sync::watch::Sender<bool>,
    task: tokio::task::JoinHandle<u64>,
}

impl Producer {
    fn start(targets: Vec<Api>, topic: &'static str) -> Self {
        let targets = std::sync::Arc::new(std::sync::Mutex::new(targets));
        let acked = std::sync::Arc::new(std::sync::Mutex::new(Vec::new()));
        let (stop, stopping) = tokio::sync::watch::channel(false);
        let http = reqwest::Client::builder()
            .timeout(Duration::from_secs(2))
            .build()
            .unwrap();
        let (t, a) = (targets.clone(), acked.clone());
        let task = tokio::spawn(async move {
            let mut sent = 0u64;
            let mut turn = 0usize;
            while !*stopping.borrow() {
                sent += 1;
                let key = format!("request-{sent}");
                let records: Vec<Value> = (0..12)
                    .map(|i| json!({"key": format!("k{i}"), "value": {"request": sent, "i": i}}))
                    .collect();
                let started = Instant::now();
                let mut last = String::new();
                loop {
                    assert!(
                        started.elapsed() < Duration::from_secs(30),
                        "request {sent} was not acknowledged within 30 s; last answer: {last}"
                    );
                    let api = {
                        let targets = t.lock().unwrap();
                        turn += 1;
                        targets[turn % targets.len()].clone()
                    };
                    let attempt = Instant::now();
                    let answer = http
                        .post(format!("{}/v1/topics/{topic}/records", api.base))
                        .header("Idempotency-Key", &key)
                        .json(&json!({ "records": records }))
                        .send()
                        .await;
                    let answer = match answer {
                        Ok(answer) => answer,
                        Err(error) => {
                            last = format!("{} {error}", api.base);
                            tokio::time::sleep(Duration::from_millis(50)).await;
                            continue;
                        }
                    };
                    let status = answer.status();
                    let body: Value = answer.json().await.unwrap_or_default();
                    if status == StatusCode::OK {
                        let answered = Instant::now();
                        let mut acked = a.lock().unwrap();
                        for (o, r) in body["offsets"].as_array().unwrap().iter().zip(&records) {
                            acked.push(Acked {
                                sent: attempt,
                                answered,
                                partition: o["partition"].as_u64().unwrap(),
                                offset: o["offset"].as_u64().unwrap(),
                                value: r["value"].clone(),
                            });
                        }
                        break;
                    }
                    assert!(
                        matches!(
                            status,
                            StatusCode::SERVICE_UNAVAILABLE | StatusCode::NOT_FOUND
                        ),
                        "request {sent}: {status} {body}"
                    );
                    tokio::time::sleep(Duration::from_millis(50)).await;
                }
            }
            sent
        });
        Self {
            targets,
            acked,
            stop,
            task,
        }
    }

    fn set_targets(&self, targets: Vec<Api>) {
        *self.targets.lock().unwrap() = targets;
    }

    /// How long after `since` the first request sent after it was
    /// acknowledged, waiting for one.
    async fn next_ack_after(&self, since: Instant, within: Duration) -> Duration {
        eventually(within, "an acknowledgement after the fault", || async {
            let acked = self.acked.lock().unwrap();
            acked
                .iter()
                .find(|a| a.sent > since)
                .map(|a| a.answered - since)
        })
        .await
    }

    /// Records acknowledged for requests sent and answered within `from..to`.
    fn acked_within(&self, from: Instant, to: Instant) -> usize {
        let acked = self.acked.lock().unwrap();
        acked
            .iter()
            .filter(|a| a.sent >= from && a.answered <= to)
            .count()
    }

    async fn finish(self) -> BTreeMap<(u64, u64), Value> {
        let _ = self.stop.send(true);
        let sent = self.task.await.expect("the producer");
        let acked = self.acked.lock().unwrap();
        let mut all = BTreeMap::new();
        for a in acked.iter() {
            let (p, o) = (a.partition, a.offset);
            assert!(
                all.insert((p, o), a.value.clone()).is_none(),
                "two acknowledgements at {p}/{o}"
            );
        }
        assert_eq!(
            all.len() as u64,
            sent * 12,
            "every request acknowledged once"
        );
        all
    }
}

/// Jepsen's lesson in small: a steady idempotent producer while the node
/// leading the most partitions is killed (with and without its data
/// directory), paused past the failure timeout, and cut off from the
/// other nodes while it still reaches them (every link towards it cut for
/// longer than the failure timeout). Every acknowledged record is then
/// read back exactly once, at its offset, from every node, by consume,
/// range and SQL; service came back within 5 s of each kill and pause, and
/// within 10 s of the cut link's repair.
async fn nemesis(store: Option<String>) {
    let names = ["n1", "n2", "n3"];
    let mut cluster = Cluster::start_on(&names, store, true);
    cluster.settle(3).await;
    cluster
        .api("n1")
        .create_topic(
            "jepsen",
            6,
            json!({"replication_factor": 3, "min_insync_replicas": 2, "segment_bytes": 8192}),
        )
        .await;
    let all_apis = |cluster: &Cluster, except: &str| -> Vec<Api> {
        cluster
            .nodes
            .iter()
            .filter(|(n, _)| n.as_str() != except)
            .map(|(_, node)| node.api.clone())
            .collect()
    };
    let producer = Producer::start(all_apis(&cluster, ""), "jepsen");
    tokio::time::sleep(Duration::from_millis(500)).await;
    let mut figures = Vec::new();
    for round in ["kill -9", "kill -9 and wipe", "pause", "cut links"] {
        let any = cluster.nodes.values().next().unwrap().api.clone();
        let victim = busiest_leader(&any, "jepsen").await;
        if round == "cut links" {
            // The leader still heartbeats to the controller, so it keeps
            // leading (as a Kafka leader with its ZooKeeper session does):
            // its followers cannot fetch, its ISR shrinks below
            // min_insync_replicas and its partitions refuse writes — never
            // acknowledge what is not replicated — until the links heal.
            let cut = Instant::now();
            cluster.cut_links_to(&victim);
            tokio::time::sleep(Duration::from_secs(4)).await;
            let repaired = Instant::now();
            cluster.restore_links_to(&victim);
            let during = producer.acked_within(cut, repaired);
            let unavailable = producer
                .next_ack_after(repaired, Duration::from_secs(20))
                .await;
            println!(
                "round {round:?} on {victim}: {during} records acknowledged during the 4 s cut; produce acknowledged again {unavailable:?} after the links were restored"
            );
            assert!(
                unavailable < Duration::from_secs(10),
                "{round}: unavailable for {unavailable:?} after the repair"
            );
            cluster.settle(3).await;
            full_isr(&any, "jepsen", 3, Duration::from_secs(30)).await;
            continue;
        }
        producer.set_targets(all_apis(&cluster, &victim));
        let fault = Instant::now();
        match round {
            "pause" => cluster.nodes[&victim].pause(),
            _ => cluster.kill9(&victim),
        }
        // Service is back once a request spanning every partition is
        // acknowledged after the fault.
        let unavailable = producer
            .next_ack_after(fault, Duration::from_secs(15))
            .await;
        println!("round {round:?} on {victim}: produce acknowledged again after {unavailable:?}");
        figures.push(unavailable);
        match round {
            "pause" => {
                tokio::time::sleep(Duration::from_secs(2)).await;
                cluster.nodes[&victim].resume();
            }
            "kill -9 and wipe" => {
                cluster.dirs.insert(victim.clone(), TempDir::new().unwrap());
                cluster.spawn(&victim);
            }
            _ => cluster.spawn(&victim),
        }
        cluster.settle(3).await;
        let any = cluster.nodes.values().next().unwrap().api.clone();
        full_isr(&any, "jepsen", 3, Duration::from_secs(30)).await;
        producer.set_targets(all_apis(&cluster, ""));
    }
    tokio::time::sleep(Duration::from_millis(500)).await;
    let acked = producer.finish().await;
    assert!(
        acked.len() >= 12 * 10,
        "the producer made progress: {}",
        acked.len()
    );
    for (name, node) in &cluster.nodes {
        let seen = eventually(
            Duration::from_secs(15),
            "every node to hold every record",
            || async {
                let seen = read_all(&node.api, "jepsen", 6).await;
                (seen == acked).then_some(seen)
            },
        )
        .await;
        for p in 0..6u64 {
            let offsets: Vec<u64> = seen
                .keys()
                .filter(|(q, _)| *q == p)
                .map(|(_, o)| *o)
                .collect();
            assert_eq!(
                offsets,
                (0..offsets.len() as u64).collect::<Vec<_>>(),
                "{name}: dense offsets"
            );
        }
        let (status, range) = node.api.get("/v1/topics/jepsen/range?format=json").await;
        assert_eq!(status, StatusCode::OK, "{range}");
        assert_eq!(
            range["records"].as_array().unwrap().len(),
            acked.len(),
            "{name}: range"
        );
        let (status, counted) = node
            .api
            .post(
                "/v1/query?format=json",
                &json!({"sql": "SELECT count(*) AS n FROM jepsen"}),
            )
            .await;
        assert_eq!(status, StatusCode::OK, "{counted}");
        assert_eq!(
            counted["rows"][0][0],
            acked.len() as u64,
            "{name}: SQL count"
        );
    }
    for (round, took) in ["kill -9", "kill -9 and wipe", "pause"]
        .iter()
        .zip(&figures)
    {
        assert!(
            *took < Duration::from_secs(5),
            "{round}: unavailable for {took:?}"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn nemesis_on_a_file_root() {
    nemesis(None).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn nemesis_on_s3() {
    let Some((_, url)) = strata_test_support::test_s3("nemesis") else {
        return;
    };
    nemesis(Some(url)).await;
}

/// A node that joins gets its share of replicas and leaderships, and a
/// drained node gives all of its up (keeping every partition's replication
/// factor) so that stopping it costs nothing; a steady producer meanwhile
/// loses and doubles nothing.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_joining_node_takes_its_share_and_a_drained_one_gives_all_up() {
    let mut cluster = Cluster::start(&["n1", "n2", "n3"]);
    cluster.settle(3).await;
    cluster
        .create_topic("n1", "moving", 6, json!({"replication_factor": 3}))
        .await;
    let apis =
        |cluster: &Cluster| -> Vec<Api> { cluster.nodes.values().map(|n| n.api.clone()).collect() };
    let producer = Producer::start(apis(&cluster), "moving");

    // A fourth node joins: within 60 s it holds a fair share of the 18
    // replicas and leads at least one of the 6 partitions.
    cluster.dirs.insert("n4".into(), TempDir::new().unwrap());
    cluster.spawn("n4");
    cluster.settle(4).await;
    let joined = Instant::now();
    let counts = |described: &Value, node: &str| -> (usize, usize) {
        let partitions = described["partitions"]
            .as_array()
            .cloned()
            .unwrap_or_default();
        let held = partitions
            .iter()
            .filter(|p| {
                p["replicas"]
                    .as_array()
                    .is_some_and(|r| r.iter().any(|n| n == node))
            })
            .count();
        let led = partitions.iter().filter(|p| p["leader"] == node).count();
        (held, led)
    };
    eventually(
        Duration::from_secs(60),
        "n4 to hold and lead its share",
        || async {
            let (_, described) = cluster.api("n1").get("/v1/topics/moving").await;
            let (held, led) = counts(&described, "n4");
            let settled = described["partitions"].as_array()?.iter().all(|p| {
                p["replicas"].as_array().is_some_and(|r| r.len() == 3)
                    && p["isr"].as_array().is_some_and(|r| r.len() == 3)
            });
            (held >= 4 && led >= 1 && settled).then_some(())
        },
    )
    .await;
    println!(
        "n4 held and led its share {:?} after joining",
        joined.elapsed()
    );
    producer.set_targets(apis(&cluster));

    // Drain n1 through another node; it ends up holding nothing, every
    // partition keeps three replicas, and it can be stopped.
    let (status, answer) = cluster
        .api("n2")
        .post("/v1/cluster/nodes/n1/drain", &json!({}))
        .await;
    assert_eq!(status, StatusCode::ACCEPTED, "{answer}");
    let (status, _) = cluster
        .api("n2")
        .post("/v1/cluster/nodes/nobody/drain", &json!({}))
        .await;
    assert_eq!(status, StatusCode::NOT_FOUND);
    eventually(Duration::from_secs(60), "n1 to hold nothing", || async {
        let (_, described) = cluster.api("n2").get("/v1/topics/moving").await;
        let (held, led) = counts(&described, "n1");
        let full = described["partitions"].as_array()?.iter().all(|p| {
            p["replicas"].as_array().is_some_and(|r| r.len() == 3)
                && p["isr"].as_array().is_some_and(|r| r.len() == 3)
        });
        (held == 0 && led == 0 && full).then_some(())
    })
    .await;
    let view = eventually(
        Duration::from_secs(10),
        "the view to show n1 drained",
        || async {
            let (_, view) = cluster.api("n3").get("/v1/cluster").await;
            let n1 = view["nodes"]
                .as_array()?
                .iter()
                .find(|n| n["id"] == "n1")?
                .clone();
            (n1["replica_of"] == 0 && n1["draining"] == false).then_some(view)
        },
    )
    .await;
    println!("after the drain: {view}");
    producer.set_targets(
        cluster
            .nodes
            .iter()
            .filter(|(n, _)| n.as_str() != "n1")
            .map(|(_, node)| node.api.clone())
            .collect(),
    );
    let stopped = Instant::now();
    assert!(cluster.nodes.remove("n1").unwrap().terminate().success());
    let unavailable = producer
        .next_ack_after(stopped, Duration::from_secs(10))
        .await;
    println!("produce acknowledged {unavailable:?} after the drained node stopped");
    assert!(
        unavailable < Duration::from_secs(2),
        "stopping a drained node cost {unavailable:?}"
    );
    tokio::time::sleep(Duration::from_millis(500)).await;
    let acked = producer.finish().await;
    for (name, node) in &cluster.nodes {
        let seen = eventually(
            Duration::from_secs(15),
            "every node to hold every record",
            || async {
                let seen = read_all(&node.api, "moving", 6).await;
                (seen == acked).then_some(seen)
            },
        )
        .await;
        assert_eq!(seen.len(), acked.len(), "{name}");
    }
}

/// Consumer-group offsets and views are cluster-wide (API.md "Cluster"):
/// whichever node commits or creates them, every node answers the same;
/// commits through two nodes at once are both kept; and they outlive the
/// loss of the node that made them, disk included.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn groups_and_views_are_the_same_on_every_node_and_outlive_one() {
    let mut cluster = Cluster::start(&["n1", "n2", "n3"]);
    cluster.settle(3).await;
    cluster
        .create_topic("n1", "events", 2, json!({"replication_factor": 3}))
        .await;
    let records: Vec<Value> = (0..6)
        .map(|i| json!({"key": format!("k{}", i % 3), "value": {"i": i}}))
        .collect();
    produce_until_acked(
        cluster.api("n2"),
        "events",
        "events-1",
        &records,
        Duration::from_secs(20),
    )
    .await;
    let offsets = |commits: &[(u32, u64)]| json!({"offsets": commits.iter().map(|(p, o)| json!({"topic": "events", "partition": p, "offset": o})).collect::<Vec<_>>()});
    let committed = |api: Api, group: &'static str| async move {
        let (status, body) = api.get(&format!("/v1/groups/{group}/offsets")).await;
        assert_eq!(status, StatusCode::OK, "{body}");
        positions(&body["offsets"])
    };

    // A commit through one node is what every node answers next.
    let (status, body) = cluster
        .api("n1")
        .post("/v1/groups/readers/offsets", &offsets(&[(0, 2)]))
        .await;
    assert_eq!(status, StatusCode::NO_CONTENT, "{body}");
    for name in ["n1", "n2", "n3"] {
        assert_eq!(
            committed(cluster.api(name).clone(), "readers").await,
            [(0, 2)]
        );
    }
    // Commits through three nodes at once: none is lost.
    let (first, second, third) = (offsets(&[(0, 3)]), offsets(&[(1, 1)]), offsets(&[(1, 2)]));
    let (a, b, c) = tokio::join!(
        cluster.api("n1").post("/v1/groups/readers/offsets", &first),
        cluster
            .api("n2")
            .post("/v1/groups/readers/offsets", &second),
        cluster.api("n3").post("/v1/groups/racers/offsets", &third),
    );
    for (status, body) in [a, b, c] {
        assert_eq!(status, StatusCode::NO_CONTENT, "{body}");
    }
    for name in ["n1", "n2", "n3"] {
        assert_eq!(
            committed(cluster.api(name).clone(), "readers").await,
            [(0, 3), (1, 1)]
        );
        assert_eq!(
            committed(cluster.api(name).clone(), "racers").await,
            [(1, 2)]
        );
    }

    // A view made through one node is read at once through the others.
    let plain = "SELECT key, count(*) AS n FROM events GROUP BY key ORDER BY key";
    let expected = json!({"columns": ["key", "n"], "rows": [["k0", 2], ["k1", 2], ["k2", 2]]});
    for (through, name, materialized) in
        [("n1", "plain_counts", false), ("n2", "kept_counts", true)]
    {
        let (status, body) = cluster
            .api(through)
            .post(
                "/v1/views",
                &json!({"name": name, "sql": plain, "materialized": materialized}),
            )
            .await;
        assert_eq!(status, StatusCode::CREATED, "{body}");
        for reader in ["n1", "n2", "n3"] {
            let (status, body) = cluster
                .api(reader)
                .get(&format!("/v1/views/{name}?format=json"))
                .await;
            assert_eq!(status, StatusCode::OK, "{name} through {reader}: {body}");
            assert_eq!(body, expected, "{name} through {reader}");
        }
    }
    // The same name through another node: taken.
    let (status, body) = cluster
        .api("n3")
        .post("/v1/views", &json!({"name": "plain_counts", "sql": plain}))
        .await;
    assert_eq!(status, StatusCode::CONFLICT, "{body}");
    let names = |body: &Value| -> Vec<String> {
        body["views"]
            .as_array()
            .unwrap()
            .iter()
            .map(|v| v["name"].as_str().unwrap().to_string())
            .collect()
    };
    let (_, listed) = cluster.api("n3").get("/v1/views").await;
    assert_eq!(names(&listed), ["kept_counts", "plain_counts"], "{listed}");

    // n1, which made the group and the plain view, dies with its disk.
    cluster.kill9("n1");
    for name in ["n2", "n3"] {
        assert_eq!(
            committed(cluster.api(name).clone(), "readers").await,
            [(0, 3), (1, 1)]
        );
        let (status, body) = cluster
            .api(name)
            .get("/v1/views/plain_counts?format=json")
            .await;
        assert_eq!(status, StatusCode::OK, "{body}");
        assert_eq!(body, expected);
    }
    // Deleted through n2 while n1 is away: gone from n3 within the refresh.
    let (status, body) = cluster.api("n2").delete("/v1/views/plain_counts").await;
    assert_eq!(status, StatusCode::NO_CONTENT, "{body}");
    eventually(Duration::from_secs(10), "the deletion on n3", || async {
        let (status, _) = cluster.api("n3").get("/v1/views/plain_counts").await;
        (status == StatusCode::NOT_FOUND).then_some(())
    })
    .await;

    // n1 comes back on an empty disk: it knows the cluster's groups and
    // views, not the one deleted while it was away.
    cluster.dirs.insert("n1".into(), TempDir::new().unwrap());
    cluster.spawn("n1");
    cluster.settle(3).await;
    assert_eq!(
        committed(cluster.api("n1").clone(), "readers").await,
        [(0, 3), (1, 1)]
    );
    let (_, listed) = cluster.api("n1").get("/v1/views").await;
    assert_eq!(names(&listed), ["kept_counts"], "{listed}");
    let (status, _) = cluster.api("n1").get("/v1/views/plain_counts").await;
    assert_eq!(status, StatusCode::NOT_FOUND);
    let body = eventually(
        Duration::from_secs(20),
        "n1 to read the kept view",
        || async {
            // Read from its state (the header says so), not from its SQL:
            // n1 planned it once it learnt the topic, after its start.
            let api = cluster.api("n1");
            let answer = api
                .http
                .get(format!("{}/v1/views/kept_counts?format=json", api.base))
                .send()
                .await
                .ok()?;
            let kept = answer.headers().contains_key("strata-view-offsets");
            let body: Value = answer.json().await.ok()?;
            (kept && body == expected).then_some(body)
        },
    )
    .await;
    assert_eq!(body, expected);
    // The deleted name is free again, through any node.
    let (status, body) = cluster
        .api("n1")
        .post("/v1/views", &json!({"name": "plain_counts", "sql": plain}))
        .await;
    assert_eq!(status, StatusCode::CREATED, "{body}");
}

/// A data directory from before groups and views were cluster-wide keeps
/// them, and they become the cluster's: a node that joins later answers
/// for them (API.md "Cluster").
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_data_directory_from_before_shares_its_groups_and_views() {
    let root = TempDir::new().unwrap();
    let store = format!("file://{}", root.path().display());
    let config = root.path().join("strata.toml");
    std::fs::write(&config, CONFIG).unwrap();
    // Two nodes that kept groups and views each on its own disk.
    let legacy = |offsets: &str, view: &str| {
        let dir = TempDir::new().unwrap();
        for sub in ["groups", "views"] {
            std::fs::create_dir_all(dir.path().join(sub)).unwrap();
        }
        std::fs::write(
            dir.path().join("groups/legacy.json"),
            format!(r#"{{"offsets": {offsets}}}"#),
        )
        .unwrap();
        std::fs::write(
            dir.path().join(format!("views/{view}.json")),
            format!(r#"{{"name": "{view}", "sql": "SELECT 1 AS one", "created_at": "2024-01-01T00:00:00.000Z"}}"#),
        )
        .unwrap();
        dir
    };
    let first = legacy(
        r#"[{"topic": "kept", "partition": 0, "offset": 5}]"#,
        "old_view",
    );
    let second = legacy(
        r#"[{"topic": "kept", "partition": 0, "offset": 9}, {"topic": "kept", "partition": 1, "offset": 6}]"#,
        "other_view",
    );
    let args = |name: &'static str| {
        [
            "--node-id".to_string(),
            name.to_string(),
            "--object-store".to_string(),
            store.clone(),
            "--config".to_string(),
            config.display().to_string(),
        ]
    };
    let spawn = |name: &'static str, dir: &Path| {
        let args = args(name);
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        ChildServer::spawn(binary(), dir, &args)
    };
    // n1 adopts before it listens, so before n2 starts.
    let n1 = spawn("n1", first.path());
    let n2 = spawn("n2", second.path());
    let fresh = TempDir::new().unwrap();
    let n3 = spawn("n3", fresh.path());
    eventually(Duration::from_secs(20), "three live nodes", || async {
        let (_, view) = n1.api.get("/v1/cluster").await;
        let live = view["nodes"]
            .as_array()
            .map_or(0, |n| n.iter().filter(|n| n["alive"] == true).count());
        (live == 3).then_some(())
    })
    .await;
    n1.api
        .create_topic("kept", 2, json!({"replication_factor": 3}))
        .await;
    // The group merged: n1's position of partition 0 (adopted first), n2's
    // of partition 1; read through the node that had neither.
    let offsets = eventually(Duration::from_secs(10), "the group on n3", || async {
        let (status, body) = n3.api.get("/v1/groups/legacy/offsets").await;
        (status == StatusCode::OK && body["offsets"].as_array().is_some_and(|o| o.len() == 2))
            .then_some(body)
    })
    .await;
    let merged = positions(&offsets["offsets"]);
    assert_eq!(merged, [(0, 5), (1, 6)], "{offsets}");
    for view in ["old_view", "other_view"] {
        let (status, body) = n3.api.get(&format!("/v1/views/{view}?format=json")).await;
        assert_eq!(status, StatusCode::OK, "{body}");
        assert_eq!(body, json!({"columns": ["one"], "rows": [[1]]}));
    }
    // Adopted once: a view deleted afterwards is not brought back when a
    // node that had it restarts.
    let (status, _) = n3.api.delete("/v1/views/other_view").await;
    assert_eq!(status, StatusCode::NO_CONTENT);
    assert!(n2.terminate().success());
    let n2 = spawn("n2", second.path());
    let (_, listed) = n2.api.get("/v1/views").await;
    let names: Vec<&str> = listed["views"]
        .as_array()
        .unwrap()
        .iter()
        .map(|v| v["name"].as_str().unwrap())
        .collect();
    assert_eq!(names, ["old_view"], "{listed}");
}

/// Any node answers any read (API.md "Cluster"): with four nodes and two
/// replicas per partition, every node lacks a replica of some partitions,
/// yet range reads, SQL, snapshots, key lookups and a materialized view
/// through every node see every acknowledged record once — the hot tail
/// observed from the leaders, the rest read from the cold tier.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_node_reads_partitions_it_holds_no_replica_of() {
    let names = ["n1", "n2", "n3", "n4"];
    let cluster = Cluster::start(&names);
    cluster.settle(4).await;
    cluster
        .create_topic("n1", "spread", 4, json!({"replication_factor": 2}))
        .await;
    let described = eventually(
        Duration::from_secs(20),
        "the topic led everywhere",
        || async {
            let (status, body) = cluster.api("n1").get("/v1/topics/spread").await;
            (status == StatusCode::OK
                && body["partitions"]
                    .as_array()?
                    .iter()
                    .all(|p| p["isr"].as_array().is_some_and(|isr| isr.len() == 2)))
            .then_some(body)
        },
    )
    .await;
    for name in names {
        let held = described["partitions"]
            .as_array()
            .unwrap()
            .iter()
            .filter(|p| p["replicas"].as_array().unwrap().iter().any(|r| r == name))
            .count();
        println!("{name} holds replicas of {held} of 4 partitions");
    }
    assert!(
        names.iter().any(|name| described["partitions"]
            .as_array()
            .unwrap()
            .iter()
            .any(|p| !p["replicas"].as_array().unwrap().iter().any(|r| r == name))),
        "some node lacks a replica: {described}"
    );
    // A materialized view, made before the records (kept as they arrive).
    let view_sql = "SELECT key, count(*) AS n FROM spread GROUP BY key ORDER BY key";
    let (status, body) = cluster
        .api("n2")
        .post(
            "/v1/views",
            &json!({"name": "spread_counts", "sql": view_sql, "materialized": true}),
        )
        .await;
    assert_eq!(status, StatusCode::CREATED, "{body}");

    let mut latest: BTreeMap<String, Value> = BTreeMap::new();
    let mut total = 0;
    for round in 0..4 {
        let records: Vec<Value> = (0..10)
            .map(|i| json!({"key": format!("k{i}"), "value": {"round": round, "i": i}}))
            .collect();
        let api = cluster.api(names[round % 4]).clone();
        produce_until_acked(
            &api,
            "spread",
            &format!("spread-{round}"),
            &records,
            Duration::from_secs(20),
        )
        .await;
        for r in &records {
            latest.insert(r["key"].as_str().unwrap().to_string(), r["value"].clone());
        }
        total += records.len();
        if round == 1 {
            // The first half goes to the cold tier (each leader offloads
            // its partitions; the other nodes' runs offload nothing).
            let mut files = 0;
            for name in names {
                let ran = cluster.api(name).offload("spread").await;
                println!("{name} offloaded: {ran}");
                files += ran["files"].as_u64().unwrap_or(0);
            }
            assert!(files > 0, "something was offloaded");
        }
    }
    let expected_view: Vec<Value> = latest.keys().map(|k| json!([k, 4])).collect();

    for name in names {
        let api = cluster.api(name);
        let range = eventually(
            Duration::from_secs(20),
            &format!("{name}: every record in range"),
            || async {
                let (status, body) = api.get("/v1/topics/spread/range?format=json").await;
                (status == StatusCode::OK && body["records"].as_array()?.len() == total)
                    .then_some(body)
            },
        )
        .await;
        let mut seen: Vec<(u64, u64)> = positions(&range["records"]);
        seen.sort();
        seen.dedup();
        assert_eq!(seen.len(), total, "{name}: each record once");
        let (status, counted) = api
            .post(
                "/v1/query?format=json",
                &json!({"sql": "SELECT count(*) AS n FROM spread"}),
            )
            .await;
        assert_eq!(status, StatusCode::OK, "{counted}");
        assert_eq!(counted["rows"][0][0], total as u64, "{name}: SQL count");
        for (key, value) in &latest {
            let (status, found) = api
                .get(&format!("/v1/topics/spread/snapshot?key={key}&format=json"))
                .await;
            assert_eq!(status, StatusCode::OK, "{found}");
            assert_eq!(
                found["records"][0]["value"], *value,
                "{name}: latest of {key}: {found}"
            );
        }
        let (status, view) = api.get("/v1/views/spread_counts?format=json").await;
        assert_eq!(status, StatusCode::OK, "{view}");
        assert_eq!(
            view["rows"],
            json!(expected_view),
            "{name}: the materialized view"
        );
    }
}

/// A node that has not learnt a topic just created through another node
/// answers a produce for it with a retriable `503`, not a `404` that a
/// client would take for "no such topic" (regression: `bench produce
/// --direct` lost ~0.5 % of its requests to 404s right after creating the
/// topic). Made deterministic by cutting every link to the controller, so
/// that n3 gets no map with the topic until the links are back.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_topic_made_elsewhere_a_moment_ago_is_retriable_not_missing() {
    let cluster = Cluster::start_on(&["n1", "n2", "n3"], None, true);
    cluster.settle(3).await;
    let (_, view) = cluster.api("n1").get("/v1/cluster").await;
    let controller = view["controller"].as_str().unwrap().to_string();
    let other = ["n1", "n2", "n3"]
        .into_iter()
        .find(|n| *n != controller)
        .unwrap();
    cluster.cut_links_to(&controller);
    cluster
        .api(&controller)
        .create_topic("fresh", 1, json!({"replication_factor": 2}))
        .await;
    let (status, body) = cluster
        .api(other)
        .post(
            "/v1/topics/fresh/records",
            &json!({"records": [{"value": 1}]}),
        )
        .await;
    assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE, "{body}");
    assert_eq!(body["error"]["code"], "unavailable", "{body}");
    assert!(
        body["error"]["message"]
            .as_str()
            .is_some_and(|m| m.contains("just created")),
        "{body}"
    );
    // A topic that exists nowhere is still a 404.
    let (status, _) = cluster
        .api(other)
        .post(
            "/v1/topics/never/records",
            &json!({"records": [{"value": 1}]}),
        )
        .await;
    assert_eq!(status, StatusCode::NOT_FOUND);
    cluster.restore_links_to(&controller);
    produce_until_acked(
        cluster.api(other),
        "fresh",
        "fresh-1",
        &[json!({"value": 1})],
        Duration::from_secs(20),
    )
    .await;
}

//! Cluster membership with several nodes on one shared `file://` store:
//! real memberships, each on its own runtime and loopback port, sending
//! real heartbeats over HTTP. A node is killed by shutting its runtime down
//! (every task and connection of it ends at once, as with kill -9); a
//! controller is cut off from the others by a fault proxy in front of it.
//!
//! These tests serve the cluster routes of each node alone (whole servers
//! sharing a store, with replicated topics: tests/replication.rs).

use std::sync::Arc;
use std::time::{Duration, Instant};

use strata_server::ClusterConfig;
use strata_server::broker::{Broker, BrokerConfig};
use strata_server::cluster::{ClusterView, NodeId};
use strata_server::connections;
use strata_server::membership::Membership;
use strata_server::tiering::ColdStore;
use strata_server::tls::{TlsConfig, TlsState};
use strata_test_support::tls::{client_trusting, make_cert};
use strata_test_support::{Api, FaultProxy, eventually};
use tempfile::TempDir;
use tokio::sync::watch;

// Short enough for a quick test, long enough that a busy 2-core machine
// does not miss a heartbeat window and fail over for nothing.
const HEARTBEAT: Duration = Duration::from_millis(150);
const FAILURE_TIMEOUT: Duration = Duration::from_millis(1500);

/// One node: its membership served on a loopback port, on a runtime of its
/// own so that killing it ends everything it runs.
struct Node {
    id: String,
    dir: Option<TempDir>,
    api: Api,
    proxy: Option<FaultProxy>,
    runtime: Option<tokio::runtime::Runtime>,
    _stop: watch::Sender<bool>,
}

impl Node {
    /// Starts node `id` on `dir` (a new one when `None`), reachable by the
    /// others directly or, with `behind_proxy`, through a fault proxy.
    fn start(cold: &ColdStore, id: &str, dir: Option<TempDir>, behind_proxy: bool) -> Self {
        Self::start_with(cold, id, dir, behind_proxy, None)
    }

    /// [`Node::start`], serving HTTPS with `tls` when given (and sending
    /// its heartbeats over HTTPS, trusting that certificate).
    fn start_with(
        cold: &ColdStore,
        id: &str,
        dir: Option<TempDir>,
        behind_proxy: bool,
        tls: Option<&TlsConfig>,
    ) -> Self {
        let dir = dir.unwrap_or_else(|| TempDir::new().expect("tempdir"));
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(1)
            .enable_all()
            .build()
            .expect("node runtime");
        let broker = Arc::new(
            Broker::open(BrokerConfig {
                data_dir: dir.path().to_path_buf(),
                ..BrokerConfig::default()
            })
            .expect("open broker"),
        );
        let membership = Arc::new(
            Membership::open(
                dir.path().to_path_buf(),
                cold,
                ClusterConfig {
                    node_id: Some(NodeId::parse(id).expect("node id")),
                    advertise: None,
                    heartbeat_interval: HEARTBEAT,
                    failure_timeout: FAILURE_TIMEOUT,
                },
                broker,
                tls,
            )
            .expect("open membership"),
        );
        let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
        listener.set_nonblocking(true).expect("non-blocking");
        let addr = listener.local_addr().expect("addr");
        let proxy = behind_proxy.then(|| FaultProxy::start(addr));
        let scheme = if tls.is_some() { "https" } else { "http" };
        let url = format!("{scheme}://{}", proxy.as_ref().map_or(addr, |p| p.addr));
        let (stop, stopping) = watch::channel(false);
        let routes: axum::Router =
            strata_server::routes::cluster::routes(membership.clone()).into();
        let tls_state = tls.map(|config| TlsState::open(config.clone()).expect("TLS files"));
        runtime.spawn(async move {
            let listener = tokio::net::TcpListener::from_std(listener).expect("listener");
            let _ = connections::serve(listener, routes, tls_state, std::future::pending()).await;
        });
        runtime.spawn(membership.run(url, stopping));
        let mut api = Api::new(&format!("{scheme}://{addr}"));
        if let Some(tls) = tls {
            api.http = client_trusting(&tls.cert);
        }
        Self {
            id: id.to_string(),
            dir: Some(dir),
            api,
            proxy,
            runtime: Some(runtime),
            _stop: stop,
        }
    }

    /// Ends every task and connection of the node at once; its data
    /// directory stays, for a restart.
    fn kill(mut self) -> TempDir {
        if let Some(runtime) = self.runtime.take() {
            runtime.shutdown_background();
        }
        self.dir.take().expect("a running node has its directory")
    }

    async fn view(&self) -> Option<ClusterView> {
        let (status, body) = self.api.get("/v1/cluster").await;
        if !status.is_success() {
            return None;
        }
        Some(serde_json::from_value(body).expect("a cluster view"))
    }
}

impl Drop for Node {
    fn drop(&mut self) {
        if let Some(runtime) = self.runtime.take() {
            runtime.shutdown_background();
        }
    }
}

/// Waits until every node in `nodes` shows the same controller (not one of
/// `not`) and, when given, exactly `alive` as the live nodes; returns that
/// view.
async fn agreed(
    nodes: &[&Node],
    alive: Option<&[&str]>,
    not: &[&str],
    within: Duration,
) -> ClusterView {
    let what = format!("nodes to agree that {alive:?} are alive, with a controller not in {not:?}");
    eventually(within, &what, || async {
        let mut views = Vec::new();
        for node in nodes {
            views.push(node.view().await?);
        }
        let first = views[0].clone();
        let live: Vec<&str> = first
            .nodes
            .iter()
            .filter(|n| n.alive)
            .map(|n| n.id.as_str())
            .collect();
        let same = views.iter().all(|v| {
            v.controller == first.controller
                && v.controller_epoch == first.controller_epoch
                && v.cluster_id == first.cluster_id
                && v.nodes.iter().filter(|n| n.alive).count() == live.len()
        });
        let live_ok = alive.is_none_or(|alive| live == alive);
        (same && live_ok && !not.contains(&first.controller.as_str())).then_some(first)
    })
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn nodes_agree_on_one_controller_and_replace_it_when_it_dies() {
    let store_dir = TempDir::new().expect("tempdir");
    let cold = ColdStore::open(&format!("file://{}", store_dir.path().display())).expect("store");
    let n1 = Node::start(&cold, "n1", None, false);
    let n2 = Node::start(&cold, "n2", None, false);
    let n3 = Node::start(&cold, "n3", None, false);
    let view = agreed(
        &[&n1, &n2, &n3],
        Some(&["n1", "n2", "n3"]),
        &[],
        Duration::from_secs(10),
    )
    .await;
    assert_eq!(view.cluster_id.len(), 32);
    assert!(view.nodes.iter().all(|n| n.incarnation == 1), "{view:?}");

    // A heartbeat from a node that never registered is refused and listed
    // nowhere.
    let controller = [&n1, &n2, &n3]
        .into_iter()
        .find(|n| n.id == view.controller.as_str())
        .expect("the controller is one of the nodes");
    let forged = serde_json::json!({"node": "ghost", "incarnation": 1, "url": "http://127.0.0.1:9",
        "controller_epoch": view.controller_epoch, "leader_of": 0, "replica_of": 0});
    let (status, body) = controller.api.post("/v1/cluster/heartbeat", &forged).await;
    assert_eq!(status.as_u16(), 409, "{body}");
    assert_eq!(body["error"]["code"], "not_registered");
    let after = controller.view().await.expect("view");
    assert!(
        after.nodes.iter().all(|n| n.id.as_str() != "ghost"),
        "{after:?}"
    );

    // Kill the controller: the others elect one of themselves.
    let mut nodes = vec![n1, n2, n3];
    let at = nodes
        .iter()
        .position(|n| n.id == view.controller.as_str())
        .expect("the controller is one of the nodes");
    let dead = nodes.remove(at);
    let dead_id = dead.id.clone();
    let killed = Instant::now();
    let dead_dir = dead.kill();
    let survivors: Vec<&str> = nodes.iter().map(|n| n.id.as_str()).collect();
    let refs: Vec<&Node> = nodes.iter().collect();
    let after = agreed(
        &refs,
        Some(&survivors),
        &[&dead_id],
        Duration::from_secs(10),
    )
    .await;
    let failover = killed.elapsed();
    eprintln!(
        "a new controller ({}) within {failover:?} of the old one's death",
        after.controller
    );
    assert!(after.controller_epoch > view.controller_epoch);
    let gone = after
        .nodes
        .iter()
        .find(|n| n.id.as_str() == dead_id)
        .expect("a dead node stays listed");
    assert!(!gone.alive);

    // It comes back with its disk: same incarnation, and it follows the
    // new controller instead of taking over.
    let back = Node::start(&cold, &dead_id, Some(dead_dir), false);
    nodes.push(back);
    let refs: Vec<&Node> = nodes.iter().collect();
    let mut all: Vec<String> = nodes.iter().map(|n| n.id.clone()).collect();
    all.sort_unstable();
    let all: Vec<&str> = all.iter().map(String::as_str).collect();
    let rejoined = agreed(&refs, Some(&all), &[], Duration::from_secs(10)).await;
    assert_eq!(
        rejoined.controller, after.controller,
        "a returning node does not take over"
    );
    assert_eq!(rejoined.controller_epoch, after.controller_epoch);
    let returned = rejoined
        .nodes
        .iter()
        .find(|n| n.id.as_str() == dead_id)
        .expect("listed");
    assert_eq!(
        returned.incarnation, 1,
        "a restart with its disk keeps its incarnation"
    );

    // A follower that lost its disk comes back as a new incarnation.
    let at = nodes
        .iter()
        .position(|n| n.id != rejoined.controller.as_str())
        .expect("a follower");
    let follower = nodes.remove(at);
    let follower_id = follower.id.clone();
    drop(follower.kill());
    nodes.push(Node::start(&cold, &follower_id, None, false));
    let refs: Vec<&Node> = nodes.iter().collect();
    eventually(
        Duration::from_secs(10),
        "the new incarnation to be alive",
        || async {
            let view = refs[0].view().await?;
            let node = view.nodes.iter().find(|n| n.id.as_str() == follower_id)?;
            (node.incarnation == 2 && node.alive).then_some(())
        },
    )
    .await;
    let renewed = agreed(&refs, Some(&all), &[], Duration::from_secs(10)).await;
    assert_eq!(renewed.controller, rejoined.controller);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_controller_cut_off_from_the_others_is_deposed_and_follows() {
    let store_dir = TempDir::new().expect("tempdir");
    let cold = ColdStore::open(&format!("file://{}", store_dir.path().display())).expect("store");
    // n1 starts first and alone, so it becomes the controller; the others
    // reach it only through its proxy.
    let n1 = Node::start(&cold, "n1", None, true);
    agreed(&[&n1], Some(&["n1"]), &[], Duration::from_secs(10)).await;
    let n2 = Node::start(&cold, "n2", None, false);
    let n3 = Node::start(&cold, "n3", None, false);
    let view = agreed(
        &[&n1, &n2, &n3],
        Some(&["n1", "n2", "n3"]),
        &[],
        Duration::from_secs(10),
    )
    .await;
    assert_eq!(view.controller.as_str(), "n1");

    // Cut n1 off: it still runs and still believes it is the controller,
    // but the others replace it, and it finds the newer epoch and follows.
    n1.proxy.as_ref().expect("proxy").cut();
    // (n1 may be alive again in the new view as soon as it follows.)
    let after = agreed(&[&n2, &n3], None, &["n1"], Duration::from_secs(10)).await;
    assert!(after.controller_epoch > view.controller_epoch);
    let deposed = eventually(
        Duration::from_secs(10),
        "n1 to follow the new controller",
        || async {
            let v = n1.view().await?;
            (v.controller == after.controller).then_some(v)
        },
    )
    .await;
    assert_eq!(deposed.controller_epoch, after.controller_epoch);

    // With the link back, n1 is alive again as a follower.
    n1.proxy.as_ref().expect("proxy").restore();
    let healed = agreed(
        &[&n1, &n2, &n3],
        Some(&["n1", "n2", "n3"]),
        &[],
        Duration::from_secs(10),
    )
    .await;
    assert_eq!(healed.controller, after.controller);
    assert_eq!(healed.controller_epoch, after.controller_epoch);
}

/// TLS between nodes (issue #14): with `--tls-cert`, nodes serve HTTPS and
/// send their heartbeats over HTTPS, trusting the cluster's certificate;
/// they register, elect one controller and see each other alive.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn heartbeats_travel_over_tls() {
    let store_dir = TempDir::new().expect("tempdir");
    let certs = TempDir::new().expect("tempdir");
    let (cert, key) = make_cert(certs.path(), "cluster");
    let tls = TlsConfig {
        cert,
        key,
        client_ca: None,
    };
    let cold = ColdStore::open(&format!("file://{}", store_dir.path().display())).expect("store");
    let n1 = Node::start_with(&cold, "n1", None, false, Some(&tls));
    let n2 = Node::start_with(&cold, "n2", None, false, Some(&tls));
    let view = agreed(
        &[&n1, &n2],
        Some(&["n1", "n2"]),
        &[],
        Duration::from_secs(10),
    )
    .await;
    assert!(
        view.nodes.iter().all(|n| n.url.starts_with("https://")),
        "{view:?}"
    );
    // Plain HTTP gets nothing from a node that serves HTTPS.
    let plain = reqwest::Client::new()
        .get(n1.api.base.replacen("https://", "http://", 1) + "/v1/cluster")
        .send()
        .await;
    assert!(plain.is_err(), "{plain:?}");
}

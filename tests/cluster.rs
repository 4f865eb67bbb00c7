//! The `strata` binary as a cluster of one: `GET /v1/cluster`, a node's
//! name kept in its data directory, and a data directory that refuses to
//! serve as another node. (Several nodes: server/tests/membership.rs.)

use std::path::Path;
use std::time::Duration;

use serde_json::{Value, json};
use strata_test_support::{Api, ChildServer, eventually, serve_refused};

fn binary() -> &'static Path {
    Path::new(env!("CARGO_BIN_EXE_strata"))
}

/// The cluster view once this node knows its controller.
async fn cluster(api: &Api) -> Value {
    eventually(Duration::from_secs(10), "the cluster view", || async {
        let (status, body) = api.get("/v1/cluster").await;
        status.is_success().then_some(body)
    })
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_single_node_is_a_cluster_of_one_under_a_name_it_keeps() {
    let dir = tempfile::tempdir().unwrap();
    let server = ChildServer::spawn(binary(), dir.path(), &["--node-id", "n1"]);
    let view = cluster(&server.api).await;
    assert_eq!(view["controller"], "n1", "{view}");
    let nodes = view["nodes"].as_array().expect("nodes");
    assert_eq!(nodes.len(), 1, "{view}");
    assert_eq!(nodes[0]["id"], "n1");
    assert_eq!(nodes[0]["alive"], true);
    assert_eq!(nodes[0]["incarnation"], 1);
    assert!(
        nodes[0]["url"]
            .as_str()
            .is_some_and(|u| u.starts_with("http://127.0.0.1:")),
        "{view}"
    );
    let epoch = view["controller_epoch"].as_u64().expect("epoch");

    server.api.create_topic("counted", 3, json!({})).await;
    eventually(
        Duration::from_secs(10),
        "leader_of to count the new partitions",
        || async {
            let view = cluster(&server.api).await;
            (view["nodes"][0]["leader_of"] == 3 && view["nodes"][0]["replica_of"] == 3)
                .then_some(())
        },
    )
    .await;
    assert!(server.terminate().success());

    // Another name on the same disk is refused before anything is served.
    let stderr = serve_refused(binary(), dir.path(), &["--node-id".as_ref(), "n2".as_ref()]);
    assert!(stderr.contains("belongs to node \"n1\""), "{stderr}");

    // Without --node-id it is n1 again, same incarnation, a newer epoch.
    let server = ChildServer::spawn(binary(), dir.path(), &[]);
    let view = cluster(&server.api).await;
    assert_eq!(view["controller"], "n1", "{view}");
    assert_eq!(view["nodes"][0]["incarnation"], 1);
    assert!(view["controller_epoch"].as_u64().expect("epoch") > epoch);
    assert!(server.log().contains("became the cluster controller"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_invalid_node_id_or_advertise_url_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    for (flag, value, says) in [
        ("--node-id", "no/slashes", "invalid --node-id"),
        (
            "--advertise",
            "127.0.0.1:9",
            "--advertise must be an http:// or https:// URL",
        ),
    ] {
        let stderr = serve_refused(binary(), dir.path(), &[flag.as_ref(), value.as_ref()]);
        assert!(stderr.contains(says), "{stderr}");
    }
}

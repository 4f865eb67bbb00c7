//! Power loss (issue #14): the data directory and the default `file://`
//! cold tier on a file system that throws away every write not yet fsynced
//! when the power is cut ([`PowerLossFs`], a FUSE layer in the test
//! support). kill -9 alone cannot find these bugs: the page cache survives
//! it.
//!
//! Regression guarded: after kill -9 plus the loss of unsynced writes,
//! `_lease.json` was empty and the server refused to start ("corrupt
//! manifest _lease.json: EOF while parsing"). Each round here produces,
//! offloads, commits group offsets, then cuts the power and starts again:
//! the server must start, and every acknowledged record, offset commit and
//! view must be there.
//!
//! Needs root and `/dev/fuse` (scripts/test.sh runs as root).

use std::collections::HashMap;
use std::path::Path;

use serde_json::{Value, json};
use strata_test_support::ChildServer;
use strata_test_support::power_loss::PowerLossFs;

fn binary() -> &'static Path {
    Path::new(env!("CARGO_BIN_EXE_strata"))
}

const PARTITIONS: u32 = 2;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_power_cut_loses_nothing_acknowledged_and_the_server_starts_again() {
    // SAFETY: geteuid has no preconditions.
    assert_eq!(
        unsafe { libc::geteuid() },
        0,
        "the power-loss test mounts a FUSE file system: run it as root (scripts/test.sh)"
    );
    let dir = tempfile::tempdir().expect("tempdir");
    let (lower, mount_point) = (dir.path().join("lower"), dir.path().join("mnt"));
    std::fs::create_dir_all(&lower).expect("lower");
    std::fs::create_dir_all(&mount_point).expect("mount point");
    let fs = PowerLossFs::mount(&lower, &mount_point).expect("mount the power-loss file system");
    let data = mount_point.join("data");

    let mut server = ChildServer::spawn(binary(), &data, &[]);
    server
        .api
        .create_topic(
            "pl",
            PARTITIONS,
            json!({"segment_bytes": 16384, "local_retention_bytes": 0}),
        )
        .await;
    let (status, body) = server
        .api
        .post(
            "/v1/views",
            &json!({"name": "pl_keys", "sql": "SELECT key, count(*) AS n FROM pl GROUP BY key"}),
        )
        .await;
    assert!(status.is_success(), "{body}");

    let mut acked: HashMap<(u64, u64), Value> = HashMap::new();
    let mut lost_in_all = 0;
    for round in 0..3u64 {
        for n in 0..40u64 {
            let records: Vec<Value> = (0..10)
                .map(|i| json!({"key": format!("k{}", i % 3), "value": {"round": round, "n": n, "i": i}}))
                .collect();
            for (record, ack) in records.iter().zip(server.api.produce("pl", &records).await) {
                let at = (
                    ack["partition"].as_u64().expect("partition"),
                    ack["offset"].as_u64().expect("offset"),
                );
                assert!(acked.insert(at, record["value"].clone()).is_none());
            }
            if n % 10 == 9 {
                // Offload now: Parquet files, manifests and the lease on
                // the lossy file system too.
                let (status, body) = server
                    .api
                    .post("/v1/topics/pl/tiering/run?roll=true", &json!({}))
                    .await;
                assert!(status.is_success(), "offload: {body}");
            }
        }
        let committed = round * 100 + 7;
        let (status, body) = server
            .api
            .post(
                "/v1/groups/g/offsets",
                &json!({"offsets": [{"topic": "pl", "partition": 0, "offset": committed}]}),
            )
            .await;
        assert!(status.is_success(), "{body}");

        server.kill9();
        let lost = fs.cut();
        lost_in_all += lost;
        eprintln!("round {round}: the power cut lost the unsynced writes of {lost} files");
        server = ChildServer::spawn(binary(), &data, &[]);

        for p in 0..PARTITIONS {
            let records = server.api.consume_all("pl", p, 0).await;
            for (i, record) in records.iter().enumerate() {
                assert_eq!(record["offset"], i as u64, "partition {p}: dense offsets");
            }
            for ((partition, offset), value) in
                acked.iter().filter(|((q, _), _)| *q == u64::from(p))
            {
                assert_eq!(
                    records.get(*offset as usize).map(|r| &r["value"]),
                    Some(value),
                    "round {round}: acknowledged record {partition}/{offset} lost or changed"
                );
            }
        }
        let (status, offsets) = server.api.get("/v1/groups/g/offsets").await;
        assert!(status.is_success(), "{offsets}");
        assert_eq!(offsets["offsets"][0]["offset"], committed, "{offsets}");
        let (status, body) = server.api.get("/v1/views/pl_keys").await;
        assert!(status.is_success(), "round {round}: the view: {body}");
    }
    assert!(
        lost_in_all > 0,
        "no power cut lost anything: the test did not test power loss"
    );
    assert!(server.terminate().success());
    drop(fs);
}

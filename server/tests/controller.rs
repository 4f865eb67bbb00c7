//! The controller's decisions about replicated partitions, against a real
//! `memory://` store (every object a create-only version, as on S3 and
//! `file://`): an election when a leader dies, a new controller that takes
//! over from the store alone (a controller killed between any two writes
//! leaves nothing it must finish), a deposed controller that writes
//! nothing, a crash between a topic's record and its partitions' states,
//! ISR changes from leaders' reports, and a drain that moves every replica
//! in steps that keep the ISR whole.

use strata_server::broker::TopicConfig;
use strata_server::broker::topic::TopicMeta;
use strata_server::cluster::{
    ControlStore, IsrReport, NodeId, NodeView, PartitionState, Registration, Replica, TopicRecord,
};
use strata_server::controller::PartitionController;
use strata_server::tiering::ColdStore;

fn id(n: &str) -> NodeId {
    NodeId::parse(n).unwrap()
}

fn node(n: &str, alive: bool) -> NodeView {
    NodeView {
        id: id(n),
        url: format!("http://{n}"),
        alive,
        incarnation: 1,
        leader_of: 0,
        replica_of: 0,
        draining: false,
    }
}

fn three(dead: &[&str]) -> Vec<NodeView> {
    ["n1", "n2", "n3"]
        .iter()
        .map(|n| node(n, !dead.contains(n)))
        .collect()
}

fn meta(name: &str, partitions: u32) -> TopicMeta {
    TopicMeta {
        name: name.into(),
        partitions,
        config: TopicConfig {
            replication_factor: 3,
            min_insync_replicas: 2,
            ..TopicConfig::default()
        },
    }
}

/// Claims the next controller epoch for `n1`.
async fn claim(control: &ControlStore) -> u64 {
    let after = control.controller().await.unwrap().map_or(0, |c| c.epoch);
    let me = Registration {
        node: id("n1"),
        incarnation: 1,
        url: "http://n1".into(),
        registered_ms: 0,
    };
    control
        .claim_controller(after, &me)
        .await
        .unwrap()
        .expect("claimed")
        .epoch
}

fn state(c: &PartitionController, topic: &str, p: u32) -> PartitionState {
    c.map().state(topic, p).expect("a state").clone()
}

#[tokio::test]
async fn elections_survive_a_controller_crash_and_a_deposed_controller_writes_nothing() {
    let control = ControlStore::new(&ColdStore::open("memory://").unwrap());
    let epoch = claim(&control).await;
    let mut first = PartitionController::load(control.clone(), epoch)
        .await
        .unwrap();
    first.create_topic(meta("t", 3), &three(&[])).await.unwrap();
    let before = state(&first, "t", 0);
    assert_eq!(before.leader_epoch, 1);
    assert_eq!(before.isr.len(), 3);

    // The leader of partition 0 dies: its ISR member next in preference
    // leads at the next epoch, and the dead one leaves the ISR.
    let leader = before.leader.clone().unwrap();
    let dead = [leader.as_str()];
    let changed = first.maintain(&three(&dead), &[], true, None).await;
    assert_eq!(changed, Some(true));
    let after = state(&first, "t", 0);
    assert_ne!(after.leader, Some(leader.clone()));
    assert_eq!(after.leader_epoch, 2);
    assert!(!after.isr.iter().any(|m| m.node == leader));

    // The controller dies here. A new one (a newer epoch) finds exactly
    // what was written in the store, and has nothing to redo.
    let newer = claim(&control).await;
    let mut second = PartitionController::load(control.clone(), newer)
        .await
        .unwrap();
    assert_eq!(state(&second, "t", 0), after);
    assert_eq!(
        second.maintain(&three(&dead), &[], true, None).await,
        Some(false)
    );

    // The old controller wakes up with a stale view (everyone dead but
    // itself): it finds the newer epoch before its first write, and
    // writes nothing.
    let all_dead = three(&["n2", "n3"]);
    assert_eq!(first.maintain(&all_dead, &[], true, None).await, None);
    let reloaded = PartitionController::load(control.clone(), newer)
        .await
        .unwrap();
    for p in 0..3 {
        assert_eq!(state(&reloaded, "t", p), state(&second, "t", p));
    }

    // The dead node comes back with its disk: the new leader reports it
    // caught up, and it rejoins the ISR; a lagging follower leaves it.
    let back = Replica {
        node: leader.clone(),
        incarnation: 1,
    };
    let now = state(&second, "t", 0);
    let report = IsrReport {
        topic: "t".into(),
        partition: 0,
        leader_epoch: now.leader_epoch,
        caught_up: vec![back.clone()],
        lagging: Vec::new(),
    };
    assert_eq!(
        second.maintain(&three(&[]), &[report], true, None).await,
        Some(true)
    );
    assert!(state(&second, "t", 0).isr.contains(&back));
    // A report from a deposed leader (an older epoch) is ignored.
    let stale = IsrReport {
        topic: "t".into(),
        partition: 0,
        leader_epoch: 1,
        caught_up: Vec::new(),
        lagging: vec![back.node.clone()],
    };
    second.maintain(&three(&[]), &[stale], true, None).await;
    assert!(state(&second, "t", 0).isr.contains(&back));
}

#[tokio::test]
async fn a_crash_between_a_topic_record_and_its_states_leaves_it_out() {
    let control = ControlStore::new(&ColdStore::open("memory://").unwrap());
    let epoch = claim(&control).await;
    // What a controller killed right after the topic's record leaves.
    control
        .write_topic_record(
            "half",
            1,
            &TopicRecord {
                meta: meta("half", 2),
                deleted: false,
            },
        )
        .await
        .unwrap();
    let mut controller = PartitionController::load(control.clone(), epoch)
        .await
        .unwrap();
    assert!(!controller.map().topics.contains_key("half"), "left out");
    // Created again, it continues after the record left behind.
    controller
        .create_topic(meta("half", 2), &three(&[]))
        .await
        .unwrap_or_else(|_| panic!("created again"));
    let (version, record) = control.topic_record("half").await.unwrap().unwrap();
    assert_eq!(version, 2);
    assert!(!record.deleted);
    assert_eq!(state(&controller, "half", 1).leader_epoch, 1);
}

#[tokio::test]
async fn a_drain_moves_every_replica_without_weakening_an_isr() {
    let control = ControlStore::new(&ColdStore::open("memory://").unwrap());
    let epoch = claim(&control).await;
    let mut controller = PartitionController::load(control.clone(), epoch)
        .await
        .unwrap();
    let mut nodes = three(&[]);
    nodes.push(node("n4", true));
    controller
        .create_topic(meta("d", 4), &nodes[..3])
        .await
        .unwrap();
    controller.drain(&id("n1")).await.unwrap();
    // A new controller goes on with the drain (the list is in the store).
    let mut controller = PartitionController::load(control.clone(), epoch)
        .await
        .unwrap();
    assert!(controller.draining().contains(&id("n1")));
    for _ in 0..40 {
        // Leaders report every added replica caught up at once.
        let reports: Vec<IsrReport> = (0..4)
            .map(|p| {
                let s = state(&controller, "d", p);
                IsrReport {
                    topic: "d".into(),
                    partition: p,
                    leader_epoch: s.leader_epoch,
                    caught_up: s
                        .replicas
                        .iter()
                        .map(|n| Replica {
                            node: n.clone(),
                            incarnation: 1,
                        })
                        .collect(),
                    lagging: Vec::new(),
                }
            })
            .collect();
        controller.maintain(&nodes, &reports, true, None).await;
        for p in 0..4 {
            let s = state(&controller, "d", p);
            s.check().expect("every version keeps the invariants");
            assert!(s.isr.len() >= 2, "the ISR never drops below min ISR: {s:?}");
        }
    }
    for p in 0..4 {
        let s = state(&controller, "d", p);
        assert!(!s.replicas.contains(&id("n1")), "partition {p}: {s:?}");
        assert_eq!(s.replicas.len(), 3, "the replication factor is kept");
        assert_eq!(s.isr.len(), 3);
        assert_ne!(s.leader, Some(id("n1")));
    }
}

//! Replication of one partition (pure logic): what a leader tracks of its
//! followers, the high watermark it derives, when a follower joins or
//! leaves the in-sync replicas, and where a follower must truncate when
//! leadership changes (KIP-101). The server crate moves the bytes.
//!
//! The rules, as in Kafka:
//!
//! - a follower fetches from its own log end, and fetches again only once
//!   what it appended is durable: the offset it asks for is its ack;
//! - the high watermark is the least log end over the leader and every
//!   in-sync replica; records below it are committed (acknowledged to
//!   producers, visible to readers) and never truncated by any in-sync
//!   replica;
//! - a follower is *caught up* when it asks for the leader's log end; one
//!   that was not caught up for the lag limit leaves the ISR, one that
//!   catches up joins it;
//! - a replica the leader counts as caught up counts towards acks at once,
//!   before the controller records it in the ISR (KIP-497's "maximal
//!   ISR"): the controller may already list it, and if this leader died
//!   it could be elected, so it must hold every acknowledged record;
//! - a replica leaves the acks' set only once the controller recorded the
//!   smaller ISR (a deposed leader cannot shrink it, so it cannot
//!   acknowledge alone).

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use strata_broker::epochs::EpochStart;

use crate::node_id::NodeId;
use crate::partition_state::{PartitionState, Replica};

#[derive(Debug, Clone)]
struct Follower {
    replica: Replica,
    /// Its durable log end, as its last fetch said.
    log_end: u64,
    /// When it last asked for the leader's log end (or when this leader
    /// took over, as a grace period).
    caught_up_at: Instant,
}

/// A leader's view of one partition's replicas.
#[derive(Debug, Clone)]
pub struct LeaderProgress {
    me: Replica,
    leader_epoch: u64,
    isr: Vec<Replica>,
    /// Counted as in sync by this leader, not yet recorded by the controller.
    pending: Vec<Replica>,
    followers: BTreeMap<NodeId, Follower>,
    high_watermark: u64,
}

impl LeaderProgress {
    /// This node (`me`) leads `state` from now on; `high_watermark` is
    /// what it knew as a follower (a new leader never lowers it).
    pub fn new(me: Replica, state: &PartitionState, high_watermark: u64, now: Instant) -> Self {
        let followers = state
            .isr
            .iter()
            .filter(|r| r.node != me.node)
            .map(|r| {
                (
                    r.node.clone(),
                    Follower {
                        replica: r.clone(),
                        log_end: 0,
                        caught_up_at: now,
                    },
                )
            })
            .collect();
        Self {
            me,
            leader_epoch: state.leader_epoch,
            isr: state.isr.clone(),
            pending: Vec::new(),
            followers,
            high_watermark,
        }
    }

    /// The leader epoch this progress belongs to.
    pub fn leader_epoch(&self) -> u64 {
        self.leader_epoch
    }

    /// A newer version of the state at the same leader epoch (an ISR
    /// change): replicas it records stop being pending.
    pub fn on_state(&mut self, state: &PartitionState) {
        self.isr = state.isr.clone();
        self.pending.retain(|r| !state.isr.contains(r));
        // A node moved off the partition (it may go on fetching as an
        // observer, which records nothing): its lag is no follower's.
        self.followers
            .retain(|node, _| state.replicas.iter().any(|r| r == node));
    }

    /// The replicas whose acks a produce needs: the recorded ISR and the
    /// pending ones.
    pub fn acking(&self) -> Vec<Replica> {
        let mut all = self.isr.clone();
        all.extend(self.pending.iter().cloned());
        all
    }

    /// Records a fetch by `replica` from `offset` (its durable log end)
    /// while this leader's log ends at `leader_end`. Returns `true` when
    /// the replica just caught up without being in the ISR: the caller
    /// asks the controller to add it (it counts towards acks already).
    pub fn on_fetch(
        &mut self,
        replica: &Replica,
        offset: u64,
        leader_end: u64,
        now: Instant,
    ) -> bool {
        let follower = self
            .followers
            .entry(replica.node.clone())
            .or_insert_with(|| Follower {
                replica: replica.clone(),
                log_end: 0,
                caught_up_at: now,
            });
        if follower.replica != *replica {
            // A new incarnation: nothing it acked before counts.
            *follower = Follower {
                replica: replica.clone(),
                log_end: 0,
                caught_up_at: now,
            };
        }
        follower.log_end = offset;
        let caught_up = offset >= leader_end;
        if caught_up {
            follower.caught_up_at = now;
        }
        if caught_up && !self.acking().contains(replica) {
            self.pending.push(replica.clone());
            return true;
        }
        false
    }

    /// The high watermark for a leader log end of `leader_end`: the least
    /// log end of every replica that acks (never lower than before).
    pub fn high_watermark(&mut self, leader_end: u64) -> u64 {
        let mut hw = leader_end;
        for replica in self.acking() {
            if replica.node == self.me.node {
                continue;
            }
            let end = self
                .followers
                .get(&replica.node)
                .filter(|f| f.replica == replica)
                .map_or(0, |f| f.log_end);
            hw = hw.min(end);
        }
        self.high_watermark = self.high_watermark.max(hw);
        self.high_watermark
    }

    /// In-sync followers that have not caught up for `max_lag`: the
    /// controller should take them out of the ISR. Pending ones that lag
    /// are dropped here at once (the controller never recorded them).
    pub fn lagging(&mut self, now: Instant, max_lag: Duration) -> Vec<NodeId> {
        let stale = |f: Option<&Follower>| {
            f.is_none_or(|f| now.saturating_duration_since(f.caught_up_at) > max_lag)
        };
        let followers = &self.followers;
        self.pending
            .retain(|r| !stale(followers.get(&r.node).filter(|f| f.replica == *r)));
        self.isr
            .iter()
            .filter(|r| r.node != self.me.node)
            .filter(|r| stale(followers.get(&r.node).filter(|f| f.replica == **r)))
            .map(|r| r.node.clone())
            .collect()
    }

    /// How many records the furthest-behind follower lacks of a leader log
    /// ending at `leader_end` (followers never heard from count from 0).
    pub fn max_lag(&self, leader_end: u64) -> u64 {
        self.followers
            .values()
            .map(|f| leader_end.saturating_sub(f.log_end))
            .max()
            .unwrap_or(0)
    }

    /// How long the furthest-behind follower has gone without being caught
    /// up, at `now` (Kafka's replica lag time; zero with no follower).
    pub fn max_lag_time(&self, now: Instant) -> Duration {
        self.followers
            .values()
            .map(|f| now.saturating_duration_since(f.caught_up_at))
            .max()
            .unwrap_or_default()
    }

    /// The replicas this leader counts in sync but the controller has not
    /// recorded (to report again until it does).
    pub fn pending(&self) -> &[Replica] {
        &self.pending
    }
}

/// Where a follower must cut its log so that it is a prefix of the new
/// leader's (KIP-101): `local_latest` is the newest epoch in its history
/// (`None` for none), `leader_says` the leader's answer for that epoch
/// (the newest epoch at or below it in the leader's history and where it
/// ends there; `None` when the leader has no such epoch, with
/// `leader_start` the offset its history starts at), `local_end_of` the
/// follower's own answer for an epoch. Never above `local_end`.
pub fn truncation_point(
    local_latest: Option<EpochStart>,
    leader_says: Option<EpochStart>,
    leader_start: u64,
    local_end: u64,
    local_end_of: impl Fn(u64) -> Option<EpochStart>,
) -> u64 {
    let Some(latest) = local_latest else {
        // No history: nothing here was written under any known leader.
        return leader_start.min(local_end);
    };
    let point = match leader_says {
        None => leader_start,
        Some(said) if said.epoch == latest.epoch => said.start,
        // The leader never had our latest epoch: our records of it
        // diverge; cut where the epoch both know ends, on both sides.
        Some(said) => said
            .start
            .min(local_end_of(said.epoch).map_or(latest.start, |e| e.start)),
    };
    point.min(local_end)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn replica(node: &str, incarnation: u64) -> Replica {
        Replica {
            node: NodeId::parse(node).unwrap(),
            incarnation,
        }
    }

    fn state(isr: &[Replica]) -> PartitionState {
        PartitionState {
            leader: Some(isr[0].node.clone()),
            leader_epoch: 3,
            replicas: ["a", "b", "c"]
                .iter()
                .map(|n| NodeId::parse(n).unwrap())
                .collect(),
            isr: isr.to_vec(),
            controller_epoch: 1,
        }
    }

    #[test]
    fn the_high_watermark_waits_for_every_in_sync_replica() {
        let (a, b, c) = (replica("a", 1), replica("b", 1), replica("c", 1));
        let now = Instant::now();
        let mut p = LeaderProgress::new(
            a.clone(),
            &state(&[a.clone(), b.clone(), c.clone()]),
            0,
            now,
        );
        assert_eq!(p.high_watermark(10), 0);
        assert!(!p.on_fetch(&b, 10, 10, now));
        assert_eq!(p.high_watermark(10), 0, "c has nothing yet");
        p.on_fetch(&c, 7, 10, now);
        assert_eq!(p.high_watermark(10), 7);
        // Another incarnation of c acks nothing of the old one's.
        p.on_fetch(&replica("c", 2), 10, 10, now);
        assert_eq!(p.high_watermark(12), 7, "never lower, not higher either");
    }

    #[test]
    fn a_caught_up_replica_acks_at_once_and_is_reported_until_recorded() {
        let (a, b) = (replica("a", 1), replica("b", 2));
        let now = Instant::now();
        let mut p = LeaderProgress::new(a.clone(), &state(std::slice::from_ref(&a)), 0, now);
        assert_eq!(p.high_watermark(5), 5, "alone in the ISR");
        assert!(!p.on_fetch(&b, 3, 8, now), "behind: not caught up");
        assert_eq!(p.high_watermark(8), 8);
        assert!(p.on_fetch(&b, 8, 8, now), "caught up: report it");
        assert_eq!(p.pending(), std::slice::from_ref(&b));
        assert_eq!(p.high_watermark(12), 8, "b acks from now on");
        p.on_state(&state(&[a.clone(), b.clone()]));
        assert!(p.pending().is_empty());
        assert!(!p.on_fetch(&b, 12, 12, now), "in the ISR already");
        assert_eq!(p.high_watermark(12), 12);
    }

    #[test]
    fn lag_time_is_since_the_furthest_behind_follower_last_caught_up() {
        let (a, b, c) = (replica("a", 1), replica("b", 1), replica("c", 1));
        let t0 = Instant::now();
        let mut p =
            LeaderProgress::new(a.clone(), &state(&[a.clone(), b.clone(), c.clone()]), 0, t0);
        let t2 = t0 + Duration::from_secs(2);
        p.on_fetch(&b, 5, 5, t2);
        p.on_fetch(&c, 3, 5, t2);
        assert_eq!(
            p.max_lag_time(t2),
            Duration::from_secs(2),
            "c is behind since t0"
        );
        p.on_fetch(&c, 5, 5, t2);
        assert_eq!(p.max_lag_time(t2), Duration::ZERO, "both caught up");
        let t3 = t0 + Duration::from_secs(3);
        p.on_fetch(&c, 5, 9, t3);
        assert_eq!(
            p.max_lag_time(t3 + Duration::from_secs(1)),
            Duration::from_secs(2)
        );
        // c moved off the partition (it may observe it, recording nothing).
        let mut moved = state(&[a.clone(), b.clone()]);
        moved.replicas = vec![a.node.clone(), b.node.clone()];
        p.on_state(&moved);
        p.on_fetch(&b, 9, 9, t3);
        assert_eq!(
            p.max_lag_time(t3),
            Duration::ZERO,
            "no lag kept for a node moved off"
        );
        assert_eq!(p.max_lag(9), 0);
        let alone = LeaderProgress::new(a.clone(), &state(std::slice::from_ref(&a)), 0, t0);
        assert_eq!(alone.max_lag_time(t2), Duration::ZERO, "no follower");
    }

    #[test]
    fn laggards_are_named_and_pending_ones_dropped() {
        let (a, b, c) = (replica("a", 1), replica("b", 1), replica("c", 1));
        let t0 = Instant::now();
        let mut p = LeaderProgress::new(a.clone(), &state(&[a.clone(), b.clone()]), 0, t0);
        let lag = Duration::from_secs(2);
        let t1 = t0 + Duration::from_secs(1);
        p.on_fetch(&c, 0, 0, t1);
        assert!(p.lagging(t1, lag).is_empty(), "within the grace period");
        let t3 = t0 + Duration::from_secs(3);
        p.on_fetch(&b, 4, 9, t3);
        let named = p.lagging(t3, lag);
        assert_eq!(named, vec![b.node.clone()], "b fetches but stays behind");
        assert_eq!(p.pending(), std::slice::from_ref(&c));
        let t4 = t0 + Duration::from_secs(4);
        p.lagging(t4, lag);
        assert!(p.pending().is_empty(), "c stopped fetching");
    }

    #[test]
    fn truncation_follows_kip_101() {
        let e = |epoch, start| EpochStart { epoch, start };
        let none = |_| None;
        // Same latest epoch: cut where the leader's copy of it ends.
        assert_eq!(
            truncation_point(Some(e(3, 10)), Some(e(3, 15)), 0, 20, none),
            15
        );
        // The leader is ahead: nothing to cut.
        assert_eq!(
            truncation_point(Some(e(3, 10)), Some(e(3, 30)), 0, 20, none),
            20
        );
        // Our epoch 4 never reached the leader, whose epoch 3 ends at 18;
        // ours ends at 16: cut at 16.
        let ours = |epoch| (epoch == 3).then_some(e(3, 16));
        assert_eq!(
            truncation_point(Some(e(4, 16)), Some(e(3, 18)), 0, 20, ours),
            16
        );
        // The leader knows no epoch that old.
        assert_eq!(truncation_point(Some(e(1, 0)), None, 5, 20, none), 5);
        // No history at all.
        assert_eq!(truncation_point(None, None, 0, 20, none), 0);
    }
}

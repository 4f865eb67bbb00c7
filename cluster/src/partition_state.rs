//! A partition's leader, leader epoch and in-sync replicas, and the only
//! transitions the controller may make between them (pure logic).
//!
//! This is Kafka's ZooKeeper-era state (`{leader, leader_epoch, isr}`,
//! KIP-497), kept as create-only versions on the store
//! (`<root>/_cluster/partitions/<topic>/<partition>/<version:020>.json`,
//! docs/cluster.md). The rules that make failover lose nothing
//! acknowledged:
//!
//! - a leader only ever comes from the in-sync replicas (no unclean
//!   election): when the last in-sync replica dies, the partition has no
//!   leader until that replica comes back with its disk;
//! - the ISR never becomes empty, so the last replica known to hold every
//!   acknowledged record stays named;
//! - every change of leader increments the leader epoch, which fences the
//!   old leader (followers and manifest commits refuse older epochs);
//! - an ISR member is a node *at one incarnation*: a node that comes back
//!   without its disk is a new incarnation and is not in the ISR until it
//!   has caught up (KIP-966's lesson).

use std::fmt;

use serde::{Deserialize, Serialize};

use crate::node_id::NodeId;

/// A node at one incarnation, written `n1@3`.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub struct Replica {
    pub node: NodeId,
    pub incarnation: u64,
}

impl fmt::Display for Replica {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}@{}", self.node, self.incarnation)
    }
}

impl TryFrom<String> for Replica {
    type Error = String;
    fn try_from(text: String) -> Result<Self, String> {
        let (node, incarnation) = text
            .rsplit_once('@')
            .ok_or_else(|| format!("replica {text:?} is not node@incarnation"))?;
        Ok(Self {
            node: NodeId::parse(node).map_err(|e| e.to_string())?,
            incarnation: incarnation
                .parse()
                .map_err(|_| format!("replica {text:?} has no incarnation number"))?,
        })
    }
}

impl From<Replica> for String {
    fn from(replica: Replica) -> Self {
        replica.to_string()
    }
}

/// One version of a partition's state.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PartitionState {
    /// The leader, `None` while no in-sync replica is alive.
    pub leader: Option<NodeId>,
    /// Incremented at every change of leader.
    pub leader_epoch: u64,
    /// The nodes assigned a replica, preferred leader first.
    pub replicas: Vec<NodeId>,
    /// The replicas known to hold every acknowledged record; never empty.
    pub isr: Vec<Replica>,
    /// The controller epoch that wrote this version.
    pub controller_epoch: u64,
}

impl PartitionState {
    /// A new partition on `replicas` (at their current incarnations), led
    /// by the first.
    pub fn initial(replicas: &[Replica], controller_epoch: u64) -> Self {
        Self {
            leader: replicas.first().map(|r| r.node.clone()),
            leader_epoch: 1,
            replicas: replicas.iter().map(|r| r.node.clone()).collect(),
            isr: replicas.to_vec(),
            controller_epoch,
        }
    }

    /// The invariants every version keeps; `Err` names the broken one.
    pub fn check(&self) -> Result<(), String> {
        if self.isr.is_empty() {
            return Err("the ISR is empty".into());
        }
        let mut nodes: Vec<&NodeId> = self.replicas.iter().collect();
        nodes.sort();
        nodes.dedup();
        if nodes.len() != self.replicas.len() {
            return Err("a node holds two replicas".into());
        }
        for member in &self.isr {
            if !self.replicas.contains(&member.node) {
                return Err(format!("ISR member {member} is not a replica"));
            }
        }
        let mut members: Vec<&NodeId> = self.isr.iter().map(|m| &m.node).collect();
        members.sort();
        members.dedup();
        if members.len() != self.isr.len() {
            return Err("a node is in the ISR twice".into());
        }
        if let Some(leader) = &self.leader
            && !self.isr.iter().any(|m| m.node == *leader)
        {
            return Err(format!("leader {leader} is not in the ISR"));
        }
        Ok(())
    }

    fn next(&self, controller_epoch: u64) -> Self {
        Self {
            controller_epoch,
            ..self.clone()
        }
    }

    /// After `dead` stopped sending heartbeats: it leaves the ISR (unless
    /// it is the last member), and if it led, the first alive ISR member in
    /// preference order leads with the next epoch, or nobody does.
    /// `None` when nothing changes.
    pub fn on_node_dead(
        &self,
        dead: &NodeId,
        alive: impl Fn(&NodeId) -> bool,
        controller_epoch: u64,
    ) -> Option<Self> {
        let in_isr = self.isr.iter().any(|m| m.node == *dead);
        let led = self.leader.as_ref() == Some(dead);
        if !in_isr && !led {
            return None;
        }
        let mut next = self.next(controller_epoch);
        if next.isr.len() > 1 {
            next.isr.retain(|m| m.node != *dead);
        }
        if led {
            next.leader = self
                .replicas
                .iter()
                .find(|n| *n != dead && alive(n) && next.isr.iter().any(|m| m.node == **n))
                .cloned();
            next.leader_epoch += 1;
        }
        let changed = next.leader != self.leader
            || next.leader_epoch != self.leader_epoch
            || next.isr != self.isr;
        changed.then_some(next)
    }

    /// After a node registered a new incarnation (its disk may be lost):
    /// its old incarnation leaves the ISR (the last member stays named, as
    /// after a death), and it loses the leadership if it held it.
    pub fn on_new_incarnation(
        &self,
        node: &NodeId,
        incarnation: u64,
        alive: impl Fn(&NodeId) -> bool,
        controller_epoch: u64,
    ) -> Option<Self> {
        let stale = self
            .isr
            .iter()
            .any(|m| m.node == *node && m.incarnation < incarnation);
        if !stale {
            return None;
        }
        // As a death: the old incarnation is gone, with whatever it held.
        self.on_node_dead(node, |n| n != node && alive(n), controller_epoch)
    }

    /// A follower fell behind (or stopped fetching): it leaves the ISR.
    /// The leader never leaves this way, and the ISR never empties.
    pub fn shrink_isr(&self, lagging: &NodeId, controller_epoch: u64) -> Option<Self> {
        if self.leader.as_ref() == Some(lagging)
            || self.isr.len() <= 1
            || !self.isr.iter().any(|m| m.node == *lagging)
        {
            return None;
        }
        let mut next = self.next(controller_epoch);
        next.isr.retain(|m| m.node != *lagging);
        Some(next)
    }

    /// A replica caught up with the leader at `incarnation`: it joins the
    /// ISR (replacing an older incarnation of it). A partition without a
    /// leader gets this one back when it is the ISR's last member coming
    /// back at the same incarnation.
    pub fn expand_isr(&self, caught_up: &Replica, controller_epoch: u64) -> Option<Self> {
        if !self.replicas.contains(&caught_up.node) || self.isr.contains(caught_up) {
            if self.leader.is_none() && self.isr.contains(caught_up) {
                let mut next = self.next(controller_epoch);
                next.leader = Some(caught_up.node.clone());
                next.leader_epoch += 1;
                return Some(next);
            }
            return None;
        }
        // Only the leader can say a replica caught up; with no leader,
        // nobody can, and a new incarnation may hold nothing.
        self.leader.as_ref()?;
        let mut next = self.next(controller_epoch);
        next.isr.retain(|m| m.node != caught_up.node);
        next.isr.push(caught_up.clone());
        Some(next)
    }
}

impl PartitionState {
    /// `node` gets a replica too (a reassignment's first step): it is not
    /// in sync, and joins the ISR once the leader says it caught up.
    pub fn add_replica(&self, node: &NodeId, controller_epoch: u64) -> Option<Self> {
        if self.replicas.contains(node) {
            return None;
        }
        let mut next = self.next(controller_epoch);
        next.replicas.push(node.clone());
        Some(next)
    }

    /// The leadership moves to `to`, an in-sync replica, at the next
    /// epoch (a drain, or balancing leaders): the old leader becomes its
    /// follower, holding nothing the new one lacks.
    pub fn move_leader(&self, to: &NodeId, controller_epoch: u64) -> Option<Self> {
        if self.leader.as_ref() == Some(to)
            || self.leader.is_none()
            || !self.isr.iter().any(|m| m.node == *to)
        {
            return None;
        }
        let mut next = self.next(controller_epoch);
        next.leader = Some(to.clone());
        next.leader_epoch += 1;
        // The preferred leader (first replica) is the one it moved to.
        next.replicas.retain(|n| n != to);
        next.replicas.insert(0, to.clone());
        Some(next)
    }

    /// `node`'s replica goes (a reassignment's last step): never the
    /// leader's, and only while every other replica is in sync, so the ISR
    /// keeps every acknowledged record and never empties.
    pub fn remove_replica(&self, node: &NodeId, controller_epoch: u64) -> Option<Self> {
        let others_in_sync = self
            .replicas
            .iter()
            .filter(|n| *n != node)
            .all(|n| self.isr.iter().any(|m| m.node == *n));
        if !self.replicas.contains(node)
            || self.leader.as_ref() == Some(node)
            || self.replicas.len() <= 1
            || !others_in_sync
        {
            return None;
        }
        let mut next = self.next(controller_epoch);
        next.replicas.retain(|n| n != node);
        next.isr.retain(|m| m.node != *node);
        Some(next)
    }
}

/// Assigns `replication_factor` replicas of each of `partitions`
/// partitions over `nodes` (in id order), Kafka's way: round-robin leaders
/// starting at `start`, followers shifted so that replicas of one node's
/// partitions spread over the others. `None` when there are fewer nodes
/// than the replication factor.
pub fn assign(
    partitions: u32,
    replication_factor: usize,
    nodes: &[NodeId],
    start: usize,
) -> Option<Vec<Vec<NodeId>>> {
    let n = nodes.len();
    if replication_factor == 0 || replication_factor > n {
        return None;
    }
    // Kafka's AdminUtils.assignReplicasToBrokers without racks: followers
    // sit at a shift from the leader that grows once per round of leaders.
    let mut shift = start % n.max(2).saturating_sub(1).max(1);
    let mut assigned = Vec::with_capacity(partitions as usize);
    for p in 0..partitions as usize {
        if p > 0 && p % n == 0 {
            shift += 1;
        }
        let first = (start + p) % n;
        let mut replicas = vec![nodes[first].clone()];
        for j in 0..replication_factor - 1 {
            let at = (first + 1 + (shift + j) % (n - 1)) % n;
            replicas.push(nodes[at].clone());
        }
        assigned.push(replicas);
    }
    Some(assigned)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn id(n: &str) -> NodeId {
        NodeId::parse(n).expect("id")
    }

    fn replica(n: &str, incarnation: u64) -> Replica {
        Replica {
            node: id(n),
            incarnation,
        }
    }

    fn three() -> PartitionState {
        PartitionState::initial(&[replica("n1", 1), replica("n2", 1), replica("n3", 1)], 1)
    }

    #[test]
    fn a_replica_moves_by_add_catch_up_lead_and_remove() {
        let state = three();
        let n4 = id("n4");
        let added = state.add_replica(&n4, 2).expect("added");
        assert!(added.add_replica(&n4, 2).is_none(), "once");
        assert_eq!(added.isr.len(), 3, "not in sync yet");
        added.check().expect("valid");
        // n1 cannot go before n4 caught up, nor while it leads.
        assert!(added.remove_replica(&id("n1"), 2).is_none());
        let synced = added.expand_isr(&replica("n4", 1), 2).expect("caught up");
        assert!(
            synced.remove_replica(&id("n1"), 2).is_none(),
            "the leader stays"
        );
        assert!(synced.move_leader(&id("n5"), 2).is_none(), "not a replica");
        let moved = synced.move_leader(&n4, 2).expect("moved");
        assert_eq!(moved.leader, Some(n4.clone()));
        assert_eq!(moved.leader_epoch, state.leader_epoch + 1);
        assert_eq!(moved.replicas[0], n4);
        let removed = moved.remove_replica(&id("n1"), 2).expect("removed");
        assert_eq!(removed.replicas.len(), 3);
        assert!(!removed.isr.iter().any(|m| m.node == id("n1")));
        removed.check().expect("valid");
    }

    #[test]
    fn replicas_are_written_node_at_incarnation() {
        let state = three();
        let json = serde_json::to_value(&state).expect("json");
        assert_eq!(json["isr"], serde_json::json!(["n1@1", "n2@1", "n3@1"]));
        let back: PartitionState = serde_json::from_value(json).expect("parse");
        assert_eq!(back, state);
        assert!(serde_json::from_str::<Replica>("\"n1\"").is_err());
        assert!(serde_json::from_str::<Replica>("\"n/1@2\"").is_err());
    }

    #[test]
    fn a_dead_leader_is_replaced_from_the_isr_with_a_new_epoch() {
        let state = three();
        let next = state
            .on_node_dead(&id("n1"), |_| true, 2)
            .expect("a change");
        assert_eq!(next.leader, Some(id("n2")));
        assert_eq!(next.leader_epoch, 2);
        assert_eq!(next.isr, [replica("n2", 1), replica("n3", 1)]);
        assert_eq!(next.controller_epoch, 2);
        next.check().expect("valid");
        // A follower's death only shrinks the ISR.
        let later = next.on_node_dead(&id("n3"), |_| true, 2).expect("a change");
        assert_eq!(
            (later.leader.clone(), later.leader_epoch),
            (Some(id("n2")), 2)
        );
        assert_eq!(later.isr, [replica("n2", 1)]);
    }

    #[test]
    fn no_unclean_election_the_last_isr_member_stays_named() {
        let mut state = three();
        state = state.shrink_isr(&id("n2"), 1).expect("shrink");
        state = state.shrink_isr(&id("n3"), 1).expect("shrink");
        assert_eq!(
            state.shrink_isr(&id("n1"), 1),
            None,
            "the leader never shrinks out"
        );
        let offline = state
            .on_node_dead(&id("n1"), |_| true, 2)
            .expect("a change");
        assert_eq!(offline.leader, None, "n2 and n3 are alive but out of sync");
        assert_eq!(offline.isr, [replica("n1", 1)]);
        offline.check().expect("valid");
        // n2 cannot join with nobody leading; n1 back with its disk leads.
        assert_eq!(offline.expand_isr(&replica("n2", 1), 3), None);
        let back = offline
            .expand_isr(&replica("n1", 1), 3)
            .expect("n1 leads again");
        assert_eq!(
            (back.leader, back.leader_epoch),
            (Some(id("n1")), offline.leader_epoch + 1)
        );
        // n1 back without its disk (a new incarnation) does not lead.
        assert_eq!(offline.expand_isr(&replica("n1", 2), 3), None);
    }

    #[test]
    fn a_new_incarnation_leaves_the_isr_until_it_catches_up() {
        let state = three();
        let next = state
            .on_new_incarnation(&id("n2"), 2, |_| true, 2)
            .expect("a change");
        assert_eq!(next.isr, [replica("n1", 1), replica("n3", 1)]);
        let caught_up = next.expand_isr(&replica("n2", 2), 2).expect("joins");
        assert_eq!(caught_up.isr.last(), Some(&replica("n2", 2)));
        assert_eq!(state.on_new_incarnation(&id("n2"), 1, |_| true, 2), None);
        // A leader that restarted without its disk is replaced.
        let led = state
            .on_new_incarnation(&id("n1"), 2, |_| true, 2)
            .expect("a change");
        assert_eq!(led.leader, Some(id("n2")));
        assert_eq!(led.leader_epoch, 2);
    }

    #[test]
    fn assignment_spreads_leaders_and_replicas_evenly() {
        let nodes = [id("n1"), id("n2"), id("n3")];
        let assigned = assign(6, 3, &nodes, 0).expect("enough nodes");
        for replicas in &assigned {
            let mut distinct = replicas.clone();
            distinct.sort();
            distinct.dedup();
            assert_eq!(distinct.len(), 3, "{replicas:?}");
        }
        for node in &nodes {
            let leads = assigned.iter().filter(|r| r[0] == *node).count();
            assert_eq!(leads, 2, "{node} leads a fair share");
        }
        assert_eq!(assign(1, 4, &nodes, 0), None, "more replicas than nodes");
        assert_eq!(assign(1, 0, &nodes, 0), None);
    }

    mod properties {
        use super::*;
        use proptest::prelude::*;

        #[derive(Debug, Clone)]
        enum Event {
            Dead(usize),
            NewIncarnation(usize),
            Shrink(usize),
            Expand(usize),
        }

        fn event() -> impl Strategy<Value = Event> {
            prop_oneof![
                (0..3usize).prop_map(Event::Dead),
                (0..3usize).prop_map(Event::NewIncarnation),
                (0..3usize).prop_map(Event::Shrink),
                (0..3usize).prop_map(Event::Expand),
            ]
        }

        proptest! {
            /// Every partition gets distinct nodes, and leaders differ in
            /// number by at most one between any two nodes.
            #[test]
            fn assignment_is_distinct_and_fair(n in 1..7usize, rf_seed in 0..7usize, partitions in 0..40u32, start in 0..10usize) {
                let nodes: Vec<NodeId> = (0..n).map(|i| id(&format!("n{i}"))).collect();
                let rf = 1 + rf_seed % n;
                let assigned = assign(partitions, rf, &nodes, start).expect("rf <= n");
                prop_assert_eq!(assigned.len(), partitions as usize);
                for replicas in &assigned {
                    let mut distinct = replicas.clone();
                    distinct.sort();
                    distinct.dedup();
                    prop_assert_eq!(distinct.len(), rf, "{:?}", replicas);
                }
                let leads: Vec<usize> = nodes.iter().map(|node| assigned.iter().filter(|r| r[0] == *node).count()).collect();
                let (min, max) = (leads.iter().min().copied().unwrap_or(0), leads.iter().max().copied().unwrap_or(0));
                prop_assert!(max - min <= 1, "{:?}", leads);
            }

            /// Whatever happens, in any order: every version is valid, the
            /// leader epoch never goes back and grows at every change of
            /// leader, and a new leader was in the previous ISR.
            #[test]
            fn every_transition_keeps_the_invariants(events in proptest::collection::vec(event(), 0..40)) {
                let names = ["n1", "n2", "n3"];
                let mut incarnations = [1u64, 1, 1];
                let mut state = three();
                for (step, e) in events.into_iter().enumerate() {
                    let controller_epoch = 1 + step as u64;
                    let next = match e {
                        Event::Dead(i) => state.on_node_dead(&id(names[i]), |n| n.as_str() != names[i], controller_epoch),
                        Event::NewIncarnation(i) => {
                            incarnations[i] += 1;
                            state.on_new_incarnation(&id(names[i]), incarnations[i], |_| true, controller_epoch)
                        }
                        Event::Shrink(i) => state.shrink_isr(&id(names[i]), controller_epoch),
                        Event::Expand(i) => state.expand_isr(&replica(names[i], incarnations[i]), controller_epoch),
                    };
                    let Some(next) = next else { continue };
                    prop_assert!(next.check().is_ok(), "{:?}: {next:?}", next.check());
                    prop_assert!(next.leader_epoch >= state.leader_epoch);
                    if next.leader != state.leader {
                        prop_assert!(next.leader_epoch > state.leader_epoch);
                        if let Some(leader) = &next.leader {
                            prop_assert!(
                                state.isr.iter().any(|m| m.node == *leader),
                                "{leader} led without having been in sync: {state:?}"
                            );
                        }
                    }
                    state = next;
                }
            }
        }
    }
}

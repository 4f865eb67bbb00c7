//! The controller's table of heartbeats: which nodes are alive.
//!
//! Pure logic over an injected clock, so the transitions are unit-tested
//! without waiting. A node is alive while its last heartbeat is younger
//! than the failure timeout. A heartbeat from an older incarnation than
//! the one known is refused: that process was replaced (its disk was lost
//! and a new incarnation registered) and must not pass for the new one.

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use crate::control::Registration;
use crate::messages::{Heartbeat, NodeView};
use crate::node_id::NodeId;

/// What a heartbeat changed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Beat {
    /// The node was dead or unknown and is alive now.
    Joined,
    /// The node was alive and still is.
    Alive,
    /// From an incarnation older than the one known: ignored.
    Stale,
}

#[derive(Debug, Clone)]
struct Member {
    incarnation: u64,
    url: String,
    last_seen: Option<Instant>,
    leader_of: u64,
    replica_of: u64,
    /// Whether the last look saw it alive (to report each death once).
    was_alive: bool,
}

/// Heartbeats received, by node.
#[derive(Debug, Clone)]
pub struct Liveness {
    timeout: Duration,
    members: BTreeMap<NodeId, Member>,
}

impl Liveness {
    /// An empty table where a node is dead `timeout` after its last beat.
    pub fn new(timeout: Duration) -> Self {
        Self {
            timeout,
            members: BTreeMap::new(),
        }
    }

    /// Adds a registered node, dead until it sends a heartbeat. A newer
    /// incarnation replaces what was known of the node.
    pub fn know(&mut self, registration: &Registration) {
        let newer = self
            .members
            .get(&registration.node)
            .is_none_or(|m| m.incarnation < registration.incarnation);
        if newer {
            self.members.insert(
                registration.node.clone(),
                Member {
                    incarnation: registration.incarnation,
                    url: registration.url.clone(),
                    last_seen: None,
                    leader_of: 0,
                    replica_of: 0,
                    was_alive: false,
                },
            );
        }
    }

    /// Records a heartbeat received at `now`.
    pub fn heartbeat(&mut self, beat: &Heartbeat, now: Instant) -> Beat {
        let alive_before = self.is_alive(&beat.node, now);
        match self.members.get(&beat.node) {
            Some(m) if m.incarnation > beat.incarnation => return Beat::Stale,
            Some(m) if m.incarnation < beat.incarnation => {
                self.members.remove(&beat.node);
            }
            _ => {}
        }
        let incarnation_changed = !self.members.contains_key(&beat.node);
        self.members.insert(
            beat.node.clone(),
            Member {
                incarnation: beat.incarnation,
                url: beat.url.clone(),
                last_seen: Some(now),
                leader_of: beat.leader_of,
                replica_of: beat.replica_of,
                was_alive: true,
            },
        );
        if alive_before && !incarnation_changed {
            Beat::Alive
        } else {
            Beat::Joined
        }
    }

    /// Whether `node` is known at `incarnation` or later (registered, or
    /// heard from).
    pub fn knows(&self, node: &NodeId, incarnation: u64) -> bool {
        self.members
            .get(node)
            .is_some_and(|m| m.incarnation >= incarnation)
    }

    /// Whether `node` sent a heartbeat within the timeout before `now`.
    pub fn is_alive(&self, node: &NodeId, now: Instant) -> bool {
        self.members.get(node).is_some_and(|m| self.alive(m, now))
    }

    fn alive(&self, member: &Member, now: Instant) -> bool {
        member
            .last_seen
            .is_some_and(|seen| now.saturating_duration_since(seen) < self.timeout)
    }

    /// How many nodes this table has heard from at least once: what a
    /// majority is counted against (nodes registered but never heard from
    /// by this controller do not count).
    pub fn heard(&self) -> usize {
        self.members
            .values()
            .filter(|m| m.last_seen.is_some())
            .count()
    }

    /// Nodes that were alive at the last look and are dead at `now`, each
    /// reported once per death.
    pub fn newly_dead(&mut self, now: Instant) -> Vec<NodeId> {
        let timeout = self.timeout;
        let mut dead = Vec::new();
        for (id, m) in &mut self.members {
            let alive = m
                .last_seen
                .is_some_and(|seen| now.saturating_duration_since(seen) < timeout);
            if m.was_alive && !alive {
                dead.push(id.clone());
            }
            m.was_alive = alive;
        }
        dead
    }

    /// Every known node at `now`, in id order.
    pub fn nodes(&self, now: Instant) -> Vec<NodeView> {
        self.members
            .iter()
            .map(|(id, m)| NodeView {
                id: id.clone(),
                url: m.url.clone(),
                alive: self.alive(m, now),
                incarnation: m.incarnation,
                leader_of: m.leader_of,
                replica_of: m.replica_of,
                draining: false,
            })
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn beat(node: &str, incarnation: u64) -> Heartbeat {
        Heartbeat {
            node: NodeId::parse(node).expect("id"),
            incarnation,
            url: format!("http://{node}"),
            controller_epoch: 1,
            leader_of: 0,
            replica_of: 0,
            map_version: None,
            reports: Vec::new(),
        }
    }

    #[test]
    fn a_node_is_alive_until_its_heartbeats_stop_for_the_timeout() {
        let t0 = Instant::now();
        let timeout = Duration::from_millis(2500);
        let mut live = Liveness::new(timeout);
        let n1 = NodeId::parse("n1").expect("id");
        live.know(&Registration {
            node: n1.clone(),
            incarnation: 1,
            url: "http://n1".into(),
            registered_ms: 0,
        });
        assert!(!live.is_alive(&n1, t0), "registered but never heard from");
        assert_eq!(live.heartbeat(&beat("n1", 1), t0), Beat::Joined);
        let later = t0 + Duration::from_millis(1000);
        assert_eq!(live.heartbeat(&beat("n1", 1), later), Beat::Alive);
        assert!(live.is_alive(&n1, later + Duration::from_millis(2499)));
        assert!(
            live.newly_dead(later + Duration::from_millis(2499))
                .is_empty()
        );
        let dead_at = later + timeout;
        assert!(!live.is_alive(&n1, dead_at));
        assert_eq!(live.newly_dead(dead_at), vec![n1.clone()]);
        assert!(
            live.newly_dead(dead_at).is_empty(),
            "a death is reported once"
        );
        assert_eq!(live.heartbeat(&beat("n1", 1), dead_at), Beat::Joined);
    }

    #[test]
    fn an_older_incarnation_cannot_pass_for_the_newer_one() {
        let t0 = Instant::now();
        let mut live = Liveness::new(Duration::from_secs(1));
        assert_eq!(live.heartbeat(&beat("n1", 2), t0), Beat::Joined);
        assert_eq!(live.heartbeat(&beat("n1", 1), t0), Beat::Stale);
        let nodes = live.nodes(t0);
        assert_eq!(nodes.len(), 1);
        assert_eq!(nodes[0].incarnation, 2);
        assert_eq!(
            live.heartbeat(&beat("n1", 3), t0),
            Beat::Joined,
            "a new incarnation is a new member even while the old one looked alive"
        );
    }

    #[test]
    fn nodes_are_listed_in_id_order_with_what_they_reported() {
        let t0 = Instant::now();
        let mut live = Liveness::new(Duration::from_secs(1));
        let mut b = beat("n2", 1);
        b.leader_of = 3;
        b.replica_of = 9;
        live.heartbeat(&b, t0);
        live.heartbeat(&beat("n1", 1), t0);
        let nodes = live.nodes(t0);
        let ids: Vec<&str> = nodes.iter().map(|n| n.id.as_str()).collect();
        assert_eq!(ids, ["n1", "n2"]);
        assert_eq!((nodes[1].leader_of, nodes[1].replica_of), (3, 9));
    }
}

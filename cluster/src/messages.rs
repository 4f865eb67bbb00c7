//! What nodes and the controller say to each other over HTTP, and the
//! cluster view every node shows at `GET /v1/cluster`.

use serde::{Deserialize, Serialize};

use crate::node_id::NodeId;
use crate::partition_map::{MapVersion, PartitionMap};
use crate::partition_state::Replica;

/// A node's periodic "I am alive" to the controller.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Heartbeat {
    pub node: NodeId,
    pub incarnation: u64,
    /// Where other nodes and clients reach the sender.
    pub url: String,
    /// The controller epoch the sender believes current; a controller that
    /// sees a newer one than its own has been deposed.
    pub controller_epoch: u64,
    /// Partitions the sender leads and holds a replica of.
    pub leader_of: u64,
    pub replica_of: u64,
    /// The partition map the sender holds (`None`: none yet); the answer
    /// carries the controller's when it is another.
    #[serde(default)]
    pub map_version: Option<MapVersion>,
    /// ISR changes the sender, as a leader, asks for.
    #[serde(default)]
    pub reports: Vec<IsrReport>,
}

/// A leader's request to change a partition's ISR: replicas that caught
/// up join it, followers that lagged leave it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct IsrReport {
    pub topic: String,
    pub partition: u32,
    /// The leader epoch the sender leads at (a stale leader's report is
    /// ignored).
    pub leader_epoch: u64,
    #[serde(default)]
    pub caught_up: Vec<Replica>,
    #[serde(default)]
    pub lagging: Vec<NodeId>,
}

/// The cluster as the controller sees it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ClusterView {
    pub cluster_id: String,
    pub controller: NodeId,
    pub controller_epoch: u64,
    /// Every registered node, in id order.
    pub nodes: Vec<NodeView>,
    /// The partition map, in a heartbeat's answer when the sender's is
    /// another (never in `GET /v1/cluster`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub map: Option<PartitionMap>,
}

/// One node in the [`ClusterView`].
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct NodeView {
    pub id: NodeId,
    pub url: String,
    /// Whether the controller heard from it within the failure timeout.
    pub alive: bool,
    pub incarnation: u64,
    pub leader_of: u64,
    pub replica_of: u64,
    /// Being drained: its replicas and leaderships are moving away.
    #[serde(default)]
    pub draining: bool,
}

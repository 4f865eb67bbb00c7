//! # strata-cluster: the cluster's control plane on the object store
//!
//! Nodes that share one object-store root form one cluster, with no other
//! service: the store the cold tier needs anyway is also the source of
//! truth for who is in the cluster and who is its controller. Every piece
//! of control state is a directory of create-only versions
//! ([`strata_tiering::VersionedObjects`]): whoever creates version N+1
//! first wins, everyone else rereads. Epochs, not clocks, fence a deposed
//! controller. Liveness is not kept in the store: nodes send heartbeats to
//! the controller over HTTP (the server crate carries them).
//!
//! - [`error`]: `ClusterError`, the crate's one error type;
//! - [`node_id`]: the validated name of a node;
//! - [`identity`]: a node's name and incarnation, kept in its data
//!   directory (a node whose disk was lost comes back as a new incarnation);
//! - [`control`]: the control objects under `<root>/_cluster/` (cluster id,
//!   node registrations, controller epochs) and their contracts;
//! - [`liveness`]: the controller's table of heartbeats (pure logic);
//! - [`partition_state`]: a partition's leader, leader epoch and in-sync
//!   replicas, the transitions the controller may make between them, and
//!   replica assignment (pure logic);
//! - [`replication`]: a leader's view of its followers, the high
//!   watermark, ISR joins and leaves, and KIP-101 truncation (pure logic);
//! - [`partition_map`]: the replicated topics and their partitions' states,
//!   as the controller tells every node;
//! - [`groups`]: consumer-group offsets, cluster-wide (a commit through
//!   one node is merged with those through others, never lost);
//! - [`tokens`]: bearer tokens (only their hashes are stored) and
//!   permissions, kept cluster-wide as one versioned object;
//! - [`messages`]: what nodes and the controller say to each other, and
//!   the cluster view that `GET /v1/cluster` shows.
//!
//! The crate knows nothing of HTTP. docs/cluster.md explains the protocol.

pub mod control;
pub mod error;
pub mod groups;
pub mod identity;
pub mod liveness;
pub mod messages;
pub mod node_id;
pub mod partition_map;
pub mod partition_state;
pub mod replication;
pub mod tokens;

pub use control::{ClusterIdentity, ControlStore, ControllerRecord, Registration, TopicRecord};
pub use error::{ClusterError, Result};
pub use groups::Groups;
pub use identity::LocalIdentity;
pub use liveness::Liveness;
pub use messages::{ClusterView, Heartbeat, IsrReport, NodeView};
pub use node_id::NodeId;
pub use partition_map::{MapVersion, MappedTopic, PartitionMap};
pub use partition_state::{PartitionState, Replica};

//! The replicated topics and the state of each of their partitions, as
//! the controller tells every node (Kafka's metadata and LeaderAndIsr
//! requests in one message). The store holds the truth (one versioned
//! object per topic and per partition); the map is the controller's copy,
//! sent with heartbeat answers whenever it changed, so that nodes learn
//! of new leaders within a heartbeat interval without reading the store.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};
use strata_broker::topic::TopicMeta;

use crate::node_id::NodeId;
use crate::partition_state::PartitionState;

/// Which map a node holds: a new controller starts a new series.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
pub struct MapVersion {
    pub controller_epoch: u64,
    pub counter: u64,
}

/// One replicated topic.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct MappedTopic {
    pub meta: TopicMeta,
    /// The version of the topic's record in the store.
    pub version: u64,
    /// Each partition's newest state and its version in the store, by
    /// partition number.
    pub partitions: Vec<(u64, PartitionState)>,
}

/// Every replicated topic.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct PartitionMap {
    pub version: MapVersion,
    pub topics: BTreeMap<String, MappedTopic>,
}

impl PartitionMap {
    /// The state of one partition.
    pub fn state(&self, topic: &str, partition: u32) -> Option<&PartitionState> {
        self.topics
            .get(topic)?
            .partitions
            .get(partition as usize)
            .map(|(_, state)| state)
    }

    /// How many partitions `node` leads and holds a replica of.
    pub fn counts(&self, node: &NodeId) -> (u64, u64) {
        let mut led = 0;
        let mut held = 0;
        for topic in self.topics.values() {
            for (_, state) in &topic.partitions {
                led += u64::from(state.leader.as_ref() == Some(node));
                held += u64::from(state.replicas.contains(node));
            }
        }
        (led, held)
    }
}

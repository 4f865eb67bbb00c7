//! The name of a node.

use std::fmt;

use serde::{Deserialize, Serialize};

use strata_broker::config::name_problem;

use crate::error::{ClusterError, Result};

/// Longest node id.
pub const MAX_NODE_ID_LEN: usize = 64;

/// A node's stable name: `[A-Za-z0-9._-]{1,64}`, not `.` or `..`, so it is
/// always one safe path segment and one safe metric label.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub struct NodeId(String);

impl NodeId {
    /// Checks `id` and makes it a node id.
    pub fn parse(id: &str) -> Result<Self> {
        match name_problem(id, MAX_NODE_ID_LEN) {
            None => Ok(Self(id.to_string())),
            Some(problem) => Err(ClusterError::InvalidNodeId {
                id: id.chars().take(100).collect(),
                reason: problem.reason(MAX_NODE_ID_LEN),
            }),
        }
    }

    /// The id as text.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for NodeId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl TryFrom<String> for NodeId {
    type Error = ClusterError;
    fn try_from(id: String) -> Result<Self> {
        Self::parse(&id)
    }
}

impl From<NodeId> for String {
    fn from(id: NodeId) -> Self {
        id.0
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn node_ids_are_safe_path_segments() {
        for good in ["n1", "node-2.eu_west", &"x".repeat(64)] {
            assert_eq!(NodeId::parse(good).expect(good).as_str(), good);
        }
        for bad in ["", ".", "..", "a/b", "n 1", "n\u{e9}", &"x".repeat(65)] {
            assert!(
                matches!(NodeId::parse(bad), Err(ClusterError::InvalidNodeId { .. })),
                "{bad:?} was accepted"
            );
        }
    }

    #[test]
    fn a_node_id_is_checked_when_read_from_json() {
        let id: NodeId = serde_json::from_str("\"n1\"").expect("valid");
        assert_eq!(id.as_str(), "n1");
        assert!(serde_json::from_str::<NodeId>("\"../etc\"").is_err());
    }
}

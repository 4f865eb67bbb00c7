//! The cluster crate's one error type.

use strata_tiering::TieringError;

/// Everything that can go wrong keeping the cluster's control state.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ClusterError {
    /// A node id outside `[A-Za-z0-9._-]{1,64}`.
    #[error("invalid node id {id:?}: {reason}")]
    InvalidNodeId { id: String, reason: String },
    /// The data directory was made by another node.
    #[error("the data directory {dir} belongs to node {found:?}, not {wanted:?}")]
    WrongNode {
        dir: String,
        found: String,
        wanted: String,
    },
    /// Reading or writing the node's identity file failed.
    #[error("{path}: {error}")]
    Io {
        path: String,
        #[source]
        error: std::io::Error,
    },
    /// A token name or permission that breaks the rules.
    #[error("{0}")]
    InvalidToken(String),
    /// A token of that name exists.
    #[error("a token named {0:?} exists")]
    TokenExists(String),
    /// No token of that name exists.
    #[error("no token named {0:?}")]
    TokenNotFound(String),
    /// The operating system's random number generator failed.
    #[error("the system random number generator failed")]
    Random,
    /// Writing a file of the data directory failed.
    #[error(transparent)]
    LocalDisk(#[from] strata_broker::BrokerError),
    /// A control object or identity file that does not parse.
    #[error("corrupt cluster state {path}: {message}")]
    Corrupt { path: String, message: String },
    /// The object store failed, or another writer created the version this
    /// one wanted ([`ClusterError::is_conflict`]).
    #[error(transparent)]
    Store(#[from] TieringError),
}

impl ClusterError {
    /// Whether another writer won the race for a version: reread and decide
    /// again.
    pub fn is_conflict(&self) -> bool {
        matches!(self, Self::Store(TieringError::Conflict { .. }))
    }
}

/// Result with [`ClusterError`].
pub type Result<T, E = ClusterError> = std::result::Result<T, E>;

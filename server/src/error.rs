//! The server crate's one error type: what can stop a server from starting
//! or from shutting down cleanly. (Errors of a request are answered, not
//! returned: see [`crate::api_error`].)

use strata_broker::BrokerError;
use strata_query::QueryError;
use strata_tiering::TieringError;

/// Why a server could not start, or did not stop cleanly. Each start-up
/// variant names the step that failed, as docs/operations.md quotes them.
/// The cause is part of the message, not a `source` (anyhow's `{:#}` would
/// print it twice).
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ServerError {
    /// The data directory could not be opened (locked by another server,
    /// a bad setting, recovery refused to go on).
    #[error("opening data directory {path}: {error}")]
    OpenDataDir { path: String, error: BrokerError },
    /// The object store could not be opened (a bad URL or credentials).
    #[error("opening the cold tier {url}: {error}")]
    OpenColdTier { url: String, error: TieringError },
    /// The cold tier's manifests could not be loaded (the store is
    /// unreachable after its retries, a manifest is corrupt, the writer
    /// lease is held by another server).
    #[error("loading the cold tier's manifests: {0}")]
    LoadColdTier(TieringError),
    /// The query service could not start (e.g. a corrupt view file).
    #[error("starting the query service: {0}")]
    StartQuery(QueryError),
    /// The node's identity could not be read or made (the data directory
    /// belongs to another node, or its identity file is damaged).
    #[error("reading the node's identity: {0}")]
    Identity(strata_cluster::ClusterError),
    /// The TLS certificate or key could not be loaded.
    #[error("TLS: {message}")]
    Tls { message: String },
    /// The data directory could not be closed cleanly at shutdown.
    #[error("closing the data directory: {0}")]
    Close(BrokerError),
    /// A file of the server's own (its id), the listener, or a task.
    #[error("{what}: {error}")]
    Io { what: String, error: std::io::Error },
}

/// Result with [`ServerError`].
pub type Result<T, E = ServerError> = std::result::Result<T, E>;

impl ServerError {
    pub(crate) fn io(what: impl Into<String>, error: std::io::Error) -> Self {
        Self::Io {
            what: what.into(),
            error,
        }
    }
}

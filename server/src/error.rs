//! The server crate's one error type: what can stop a server from starting
//! or from shutting down cleanly. (Errors of a request are answered, not
//! returned: see [`crate::api_error`].)

use strata_broker::BrokerError;
use strata_query::QueryError;
use strata_tiering::TieringError;

/// Why a server could not start, or did not stop cleanly.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ServerError {
    /// The data directory could not be opened or closed.
    #[error("the hot tier: {0}")]
    Broker(#[from] BrokerError),
    /// The object store or its manifests could not be opened.
    #[error("the cold tier: {0}")]
    Tiering(#[from] TieringError),
    /// The query service could not start.
    #[error("the query service: {0}")]
    Query(#[from] QueryError),
    /// A file of the server's own (its id) or the listener failed.
    #[error("{what}: {source}")]
    Io {
        what: String,
        #[source]
        source: std::io::Error,
    },
}

/// Result with [`ServerError`].
pub type Result<T, E = ServerError> = std::result::Result<T, E>;

impl ServerError {
    pub(crate) fn io(what: impl Into<String>, source: std::io::Error) -> Self {
        Self::Io {
            what: what.into(),
            source,
        }
    }
}

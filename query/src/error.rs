//! The query crate's one error type. The server crate maps it to the API's
//! statuses and codes, in one place.

use std::time::Duration;

use datafusion::error::DataFusionError;
use strata_broker::BrokerError;
use strata_tiering::TieringError;

/// Everything that can go wrong reading across the tiers.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum QueryError {
    /// The hot tier refused or failed (unknown topic, partition, ...).
    #[error(transparent)]
    Broker(#[from] BrokerError),
    /// The cold tier failed.
    #[error(transparent)]
    Tiering(#[from] TieringError),
    /// A bad parameter or body: the message says what to fix.
    #[error("{0}")]
    InvalidRequest(String),
    /// The SQL engine refused the query (parse, plan or execution error).
    #[error("{0}")]
    Sql(String),
    #[error("view {0:?} does not exist")]
    ViewNotFound(String),
    #[error("view {0:?} already exists; delete it first to replace it")]
    ViewExists(String),
    #[error("a topic named {0:?} exists; views and topics share one namespace")]
    NameTaken(String),
    #[error(
        "the query ran longer than its time limit ({0:?}); narrow the time range, add filters or aggregate"
    )]
    Timeout(Duration),
    #[error("the query needs more memory or spill space than its limits allow: {0}")]
    MemoryLimit(String),
    #[error("{0} queries are already running; retry shortly")]
    Busy(usize),
    #[error("{0}")]
    Internal(String),
}

/// Result with [`QueryError`].
pub type Result<T, E = QueryError> = std::result::Result<T, E>;

impl From<DataFusionError> for QueryError {
    fn from(e: DataFusionError) -> Self {
        // Our own errors travel through DataFusion wrapped as `External`.
        let e = match e {
            DataFusionError::External(inner) => match inner.downcast::<QueryError>() {
                Ok(ours) => return *ours,
                Err(other) => DataFusionError::External(other),
            },
            DataFusionError::Context(_, inner) => return Self::from(*inner),
            DataFusionError::Shared(shared) => match std::sync::Arc::try_unwrap(shared) {
                Ok(inner) => return Self::from(inner),
                Err(shared) => DataFusionError::Shared(shared),
            },
            other => other,
        };
        match e {
            DataFusionError::ResourcesExhausted(message) => Self::MemoryLimit(message),
            DataFusionError::Internal(message) => Self::Internal(message),
            DataFusionError::IoError(io) => Self::Internal(format!("I/O: {io}")),
            DataFusionError::ObjectStore(store) => Self::Tiering(TieringError::Store(*store)),
            other => Self::Sql(other.to_string()),
        }
    }
}

impl From<QueryError> for DataFusionError {
    fn from(e: QueryError) -> Self {
        DataFusionError::External(Box::new(e))
    }
}

impl From<arrow::error::ArrowError> for QueryError {
    fn from(e: arrow::error::ArrowError) -> Self {
        Self::Internal(format!("arrow: {e}"))
    }
}

impl From<parquet::errors::ParquetError> for QueryError {
    fn from(e: parquet::errors::ParquetError) -> Self {
        Self::Tiering(TieringError::Parquet(e))
    }
}

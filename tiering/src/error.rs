//! The tiering crate's one error type.

/// Everything that can go wrong offloading to or reading from the cold tier.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum TieringError {
    /// A bad object-store URL or tiering setting.
    #[error("invalid configuration: {0}")]
    Config(String),
    /// The object store failed (after its own retries).
    #[error("object store: {0}")]
    Store(#[from] object_store::Error),
    #[error("parquet: {0}")]
    Parquet(#[from] parquet::errors::ParquetError),
    #[error("arrow: {0}")]
    Arrow(#[from] arrow_schema::ArrowError),
    /// The hot tier refused or failed.
    #[error(transparent)]
    Broker(#[from] strata_broker::BrokerError),
    /// A manifest that does not parse or breaks its invariants.
    #[error("corrupt manifest {path}: {message}")]
    CorruptManifest { path: String, message: String },
    /// A cold file whose schema is not the one Strata writes.
    #[error("cold file {path} is not in Strata's format: {message}")]
    CorruptFile { path: String, message: String },
    /// Another writer created the version (of a manifest or another
    /// versioned object) this one wanted, or it vanished while being read.
    #[error("{path} was written concurrently by another writer")]
    Conflict { path: String },
    /// The topic's Delta table could not be read or committed to.
    #[error("delta table: {0}")]
    Table(String),
    /// A local segment does not continue where the cold tier ends.
    #[error("{0}")]
    Gap(String),
    #[error("{0}")]
    Internal(String),
}

impl TieringError {
    /// Whether the object store could not be reached or refused the
    /// request, so that a retry later may succeed (the server answers
    /// `503` with `Retry-After`). Uploads and Parquet reads report store
    /// failures wrapped as parquet's `External` errors; a concurrent
    /// manifest commit is retried the same way.
    pub fn is_store_unavailable(&self) -> bool {
        matches!(
            self,
            Self::Store(_)
                | Self::Parquet(parquet::errors::ParquetError::External(_))
                | Self::Conflict { .. }
        )
    }
}

/// Result with [`TieringError`].
pub type Result<T, E = TieringError> = std::result::Result<T, E>;

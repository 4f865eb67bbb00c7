//! The broker's one error type. The server crate (`api_error`) maps each
//! variant to the status code and error code that docs/api.md documents.

use std::io;

/// Everything that can go wrong in the broker, from bad input to disk failures.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum BrokerError {
    /// The request as a whole is malformed: bad JSON, a bad parameter, a bad config value.
    #[error("{0}")]
    InvalidRequest(String),

    /// One record of a batch is invalid; nothing of the batch was written.
    #[error("record {index}: {message}")]
    InvalidRecord { index: usize, message: String },

    /// A produce reused an `Idempotency-Key` of the window with another body.
    #[error("Idempotency-Key {key:?} was used for a different request body")]
    IdempotencyKeyReused { key: String },

    /// A topic (or group) name outside `[A-Za-z0-9._-]{1,249}`, or `.`/`..`.
    #[error("invalid name {name:?}: {reason}")]
    InvalidTopicName { name: String, reason: String },

    #[error("topic {0:?} does not exist")]
    TopicNotFound(String),

    #[error("topic {topic:?} has no partition {partition} (it has {count})")]
    PartitionNotFound {
        topic: String,
        partition: String,
        count: u32,
    },

    /// Something else that does not exist (a consumer group, a route).
    #[error("{0}")]
    NotFound(String),

    #[error("topic {0:?} already exists")]
    TopicExists(String),

    /// The request body or one record is larger than the configured limit.
    #[error("{message}")]
    PayloadTooLarge {
        message: String,
        index: Option<usize>,
    },

    /// A consume outside `[start_offset, end_offset]`.
    #[error("offset {offset} is outside [{start_offset}, {end_offset}]")]
    OffsetOutOfRange {
        offset: u64,
        start_offset: u64,
        end_offset: u64,
    },

    /// Transient overload or shutdown; the client should retry after `retry_after_secs`.
    #[error("{message}")]
    Unavailable {
        message: String,
        retry_after_secs: u64,
    },

    /// Stored data failed validation in a place where it cannot be repaired automatically.
    #[error("corrupt data in {path}: {message}")]
    Corrupt { path: String, message: String },

    /// A failure that is the server's fault, not the client's.
    #[error("{0}")]
    Internal(String),

    /// An I/O error, with what the broker was doing when it happened.
    #[error("{context}: {source}")]
    Io {
        context: String,
        #[source]
        source: io::Error,
    },
}

/// Result with [`BrokerError`].
pub type Result<T, E = BrokerError> = std::result::Result<T, E>;

/// Attaches what the broker was doing to an `io::Error`.
pub(crate) trait IoContext<T> {
    fn context(self, what: impl FnOnce() -> String) -> Result<T>;
}

impl<T> IoContext<T> for io::Result<T> {
    fn context(self, what: impl FnOnce() -> String) -> Result<T> {
        self.map_err(|source| BrokerError::Io {
            context: what(),
            source,
        })
    }
}

impl BrokerError {
    /// Whether the file system ran out of space (or the user's quota): a
    /// condition that passes once space is freed, unlike a failing disk.
    pub fn is_out_of_space(&self) -> bool {
        matches!(self, Self::Io { source, .. }
            if matches!(source.raw_os_error(), Some(libc::ENOSPC | libc::EDQUOT)))
    }
}

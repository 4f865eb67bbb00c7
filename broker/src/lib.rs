//! # strata-broker: the hot tier
//!
//! Topics split into partitions; each partition is an append-only log of
//! segment files on local disk (`{base_offset:020}.log` with a sparse
//! `.index` and `.timeindex`), written in CRC32C-protected batches and made
//! durable by group commit: a produce is acknowledged only after an fsync
//! that covers it, and one fsync covers every batch written meanwhile. On
//! start, the tail of each partition is validated and a torn or corrupt end
//! is truncated. Readers see only durable records and never block writers.
//! A produce with an idempotency key tags its batches, so that a retry
//! writes nothing twice ([`idempotency`]).
//!
//! The broker knows nothing of HTTP, object stores or SQL: the server
//! crate serves its routes, and the tiering crate reads sealed segments
//! through [`Partition::segments`] and [`Partition::cursor`]. [`render`]
//! writes records as the API's JSON objects, the one shape every read
//! returns.

pub mod batch;
mod block_reader;
pub mod broker;
pub mod config;
pub mod cursor;
pub mod direct_io;
pub mod disk;
pub mod durable;
pub mod epochs;
pub mod error;
pub mod groups;
pub mod idempotency;
pub mod index;
pub mod metrics;
pub mod open_files;
pub mod page;
pub mod partition;
pub mod partitioner;
pub mod produce;
pub mod render;
pub mod segment;
mod tail;

/// The block size of direct I/O (alignment of offsets, lengths and buffers).
pub use direct_io::BLOCK;
pub mod timestamp;
pub mod topic;

pub use broker::Broker;
pub use config::{BrokerConfig, TimestampType, TopicConfig, TopicConfigOverrides};
pub use error::{BrokerError, Result};
pub use partition::{Appended, Partition};
pub use topic::Topic;

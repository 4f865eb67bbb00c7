//! # strata-tiering: the cold tier
//!
//! Sealed hot segments become Parquet files on object storage (`file://`,
//! `s3://` for AWS S3, MinIO and other S3-compatible stores, `memory://` for
//! tests). Each partition has a manifest on the store, committed atomically
//! by version, that lists its files with their offset and time ranges; a
//! file belongs to the cold tier only once a committed manifest lists it, and
//! only then may local retention delete the segment. Offloading is
//! idempotent: data file names depend only on their offsets, so a retry
//! after a crash rewrites the same object.
//!
//! State that writers race on (manifests; the cluster's control objects in
//! strata-cluster) is kept as create-only versions ([`versioned`]).
//!
//! Readers (the query crate) take a [`PinnedManifest`] of a partition and scan
//! its files with [`Tiering::scan_file`]; the server reads records by offset
//! and time through [`partition_reads`]. Objects that retention drops are
//! deleted only once no read that began before the drop is still running.
//! Each topic's cold tier is also published as a Delta Lake table
//! ([`delta`]), which follows the manifests; [`compaction`] merges small
//! files.
//!
//! The crate knows nothing of HTTP.

pub mod cold_read;
pub mod compaction;
mod deletion;
pub mod delta;
pub mod error;
pub mod facade;
pub mod lease;
pub mod manifest;
mod offload;
pub mod parquet_writer;
pub mod partition_reads;
pub mod paths;
mod pins;
pub mod read_cache;
mod retention;
pub mod schema;
pub mod store;
pub mod upload;
pub mod versioned;

pub use compaction::CompactionSummary;
pub use delta::TableInfo;
pub use error::{Result, TieringError};
pub use facade::{CrashPoint, OffloadScope, Tiering, TieringConfig};
pub use offload::OffloadSummary;
pub use partition_reads::{ColdRecord, ColdStats};
pub use pins::{PinnedManifest, ReadPin};
pub use store::{Backend, ColdStore};
pub use versioned::VersionedObjects;

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

pub mod cold_read;
pub mod convert;
pub mod error;
pub mod http;
pub mod lease;
pub mod manifest;
pub mod offloader;
pub mod paths;
pub mod store;

pub use error::{Result, TieringError};
pub use offloader::{OffloadSummary, Tiering, TieringConfig};
pub use store::ColdStore;

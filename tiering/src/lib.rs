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
//! Readers (the query crate) take a [`ColdSnapshot`] of a partition and scan
//! its files with [`Tiering::scan_file`]; objects that retention drops are
//! deleted only once no read that began before the drop is still running.

pub mod cold_read;
pub mod convert;
pub mod error;
pub mod http;
pub mod lease;
pub mod manifest;
pub mod offloader;
pub mod paths;
pub mod store;
pub mod upload;

pub use error::{Result, TieringError};
pub use offloader::{ColdSnapshot, OffloadSummary, ReadPin, Tiering, TieringConfig, to_broker};
pub use store::ColdStore;

//! # strata-query: reads across both tiers
//!
//! The reads that let the log replace a serving database. Every read pins
//! the partitions it covers when it starts ([`pin`]): offsets
//! below the cold tier's end come from Parquet files on the object store,
//! the rest from local segments, so each record is returned exactly once,
//! also while the offloader and retention run underneath, and nothing
//! appended after the read began is seen.
//!
//! - [`pin`]: the one pinning protocol every read across both tiers uses;
//! - [`scan`]: the union read, pruned by time (manifest, row-group and page
//!   statistics, segment time bounds and time index), streamed in batches;
//! - [`table`]: topics as DataFusion tables with time, offset and partition
//!   predicates and projections pushed down;
//! - [`key_index`]: each key's latest record, kept up to date as records
//!   are committed, for `snapshot?key=` lookups;
//! - [`materialized`]: materialized views, kept up to date as records
//!   arrive;
//! - `derived_db`: the redb databases both keep (opening, rebuilding a
//!   damaged file, compacting);
//! - [`sql`]: the SQL engine (DataFusion with JSON functions, a shared
//!   memory pool that spills, no DDL or DML);
//! - [`sql_limits`]: how long and how deep a SQL text may be, checked
//!   before it is parsed (a deep tree would overflow the stack);
//! - [`views`]: named SQL views stored durably on local disk;
//! - [`format`]: ndjson, json, csv, Arrow IPC and Parquet output, one batch
//!   at a time;
//! - [`service`]: the query runtime and its limits (the server crate
//!   serves its routes).

mod derived_db;
pub mod error;
pub mod format;
pub mod key_index;
pub mod materialized;
pub mod pin;
pub mod scan;
pub mod service;
pub mod sql;
pub mod sql_limits;
pub mod table;
pub mod views;

pub use error::{QueryError, Result};
pub use format::Format;
pub use service::{QueryConfig, QueryService, RangeRequest};

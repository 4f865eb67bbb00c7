//! # strata-server: the HTTP server above the storage crates
//!
//! The only crate that knows HTTP. It opens the hot tier
//! (`strata-broker`), the cold tier (`strata-tiering`) and the query service
//! (`strata-query`) over one data directory and object store, and serves
//! the API of docs/api.md until shutdown:
//!
//! - [`server`]: [`Server::open`] and [`Server::run`] (mini-redis style:
//!   a listener and a shutdown future in, a clean stop out), the
//!   background offloader and segment roller;
//! - [`routes`]: every route, one module per resource;
//! - [`auth`]: bearer tokens and the permission each route needs;
//! - [`catalog`]: views and consumer-group offsets, cluster-wide;
//! - [`quota`]: per-token byte rates (`429` with `Retry-After`);
//! - [`membership`]: this node's part in the cluster (registration,
//!   controller election, heartbeats; the control objects themselves are
//!   in `strata-cluster`);
//! - [`controller`]: the controller's decisions about replicated topics
//!   and partition states;
//! - [`replication`]: this node's replicas: leading, following, the high
//!   watermark and acknowledgements;
//! - [`forward`]: requests passed on to the node that must do them;
//! - [`periodic`]: state reread from the object store in the background
//!   (tokens, views, groups);
//! - [`connections`]: the accept loop of HTTP and HTTPS, with handshake,
//!   header and drain timeouts;
//! - [`tls`]: HTTPS with rustls, certificates reloaded when their files
//!   change;
//! - [`tiers`]: the union of the tiers for consume, offset-for-timestamp
//!   and describe (range reads and SQL take theirs in the query crate);
//! - [`request`]: parameters, body limits, JSON responses;
//! - [`api_error`]: the one mapping of every crate's errors to HTTP
//!   statuses and the API's error codes;
//! - [`render`]: cold records as the API's JSON.
//!
//! The binary (`strata serve`) adds configuration, logging and signals.

pub mod api_error;
pub mod auth;
pub mod catalog;
pub mod connections;
pub mod controller;
pub mod error;
pub mod forward;
pub mod membership;
pub mod openapi;
pub mod periodic;
pub mod quota;
pub mod render;
pub mod replication;
pub mod request;
pub mod routes;
pub mod server;
pub mod tiers;
pub mod tls;

/// The storage crates, for the binary and tests (which depend on this crate
/// alone).
pub use strata_broker as broker;
pub use strata_cluster as cluster;
pub use strata_query as query;
pub use strata_tiering as tiering;

pub use api_error::ApiError;
pub use auth::AuthConfig;
pub use error::{Result, ServerError};
pub use membership::ClusterConfig;
pub use server::{Server, ServerConfig};
pub use tls::TlsConfig;

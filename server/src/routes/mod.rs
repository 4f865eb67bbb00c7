//! Every route of the API (docs/api.md), one module per resource, with
//! JSON `404`/`405` fallbacks and the request-latency metric for all.

pub mod cluster;
mod groups;
mod health;
mod query;
mod records;
mod replication;
mod tiering;
mod tokens;
mod topics;

use std::sync::Arc;
use std::time::Instant;

use axum::Router;
use axum::extract::{MatchedPath, Request};
use axum::http::StatusCode;
use axum::middleware::{self, Next};
use axum::response::Response;
use axum::routing::get;
use metrics_exporter_prometheus::PrometheusHandle;
use strata_broker::Broker;
use strata_query::QueryService;
use strata_tiering::Tiering;
use tokio::sync::watch;
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;

use crate::api_error::ApiError;
use crate::auth::{Auth, authorize};
use crate::catalog::Catalog;
use crate::membership::Membership;
use crate::openapi;
use crate::quota::Quotas;

/// What every handler can reach.
#[derive(Clone)]
pub struct AppState {
    /// The hot tier.
    pub broker: Arc<Broker>,
    /// The cold tier: offsets below a partition's local start are read here.
    pub tiering: Arc<Tiering>,
    /// Range reads, SQL, views and snapshots.
    pub query: Arc<QueryService>,
    pub metrics: PrometheusHandle,
    /// Turns true when the server starts shutting down (ends long polls).
    pub stopping: watch::Receiver<bool>,
    /// This node's part in the cluster.
    pub membership: Arc<Membership>,
    /// This node's replicas of replicated topics.
    pub replication: Arc<crate::replication::Replication>,
    /// Tokens and who may do what.
    pub auth: Arc<Auth>,
    /// Per-token byte rates.
    pub quotas: Arc<Quotas>,
    /// Views and consumer groups, cluster-wide.
    pub catalog: Arc<Catalog>,
}

/// The local topic `name`. A replicated topic that the cluster has but
/// this node has not created yet (made through another node a moment
/// ago) answers `503` with `Retry-After` instead of `404`: a client's
/// retry finds it.
pub(super) async fn local_topic(
    app: &AppState,
    name: &str,
) -> Result<Arc<strata_broker::Topic>, ApiError> {
    match app.broker.topic(name) {
        Err(strata_broker::BrokerError::TopicNotFound(_))
            if app.membership.topic_on_its_way(name).await =>
        {
            Err(ApiError::unavailable(
                format!("topic {name:?} was just created; this node does not know it yet"),
                1,
            ))
        }
        found => Ok(found?),
    }
}

/// The whole API, and its OpenAPI description served at `/openapi.json`:
/// every route is registered through `routes!`, which collects the
/// handler's `#[utoipa::path]` entry with it.
pub fn router(state: AppState) -> Router {
    let membership = state.membership.clone();
    let replicas = state.replication.clone();
    let auth = state.auth.clone();
    let (api, description) = OpenApiRouter::new()
        .routes(routes!(health::live))
        .routes(routes!(health::ready))
        .routes(routes!(health::metrics_text))
        .routes(routes!(topics::list, topics::create))
        .routes(routes!(topics::describe, topics::delete))
        .routes(routes!(records::produce))
        .routes(routes!(records::consume))
        .routes(routes!(records::offset_for_timestamp))
        .routes(routes!(tiering::run))
        .routes(routes!(query::range))
        .routes(routes!(query::snapshot))
        .routes(routes!(query::sql))
        .routes(routes!(query::list_views, query::create_view))
        .routes(routes!(query::read_view, query::delete_view))
        .routes(routes!(groups::fetch, groups::commit))
        .routes(routes!(tokens::list, tokens::create))
        .routes(routes!(tokens::revoke))
        .with_state(state)
        .merge(cluster::routes(membership))
        .merge(replication::routes(replicas))
        .split_for_parts();
    let description = Arc::new(openapi::finish(description));
    api.route(
        "/openapi.json",
        get(move || async move { axum::Json(description.as_ref().clone()) }),
    )
    .fallback(not_found)
    .method_not_allowed_fallback(method_not_allowed)
    .layer(middleware::from_fn_with_state(auth, authorize))
    .layer(middleware::from_fn(track_request))
}

async fn not_found() -> ApiError {
    ApiError::new(StatusCode::NOT_FOUND, "not_found", "no such route")
}

async fn method_not_allowed() -> ApiError {
    ApiError::new(
        StatusCode::METHOD_NOT_ALLOWED,
        "invalid_request",
        "method not allowed on this route",
    )
}

async fn track_request(request: Request, next: Next) -> Response {
    let route = request
        .extensions()
        .get::<MatchedPath>()
        .map_or("unmatched".to_string(), |p| p.as_str().to_string());
    let method = request.method().to_string();
    let started = Instant::now();
    let response = next.run(request).await;
    metrics::histogram!(
        "strata_http_request_duration_seconds",
        "method" => method,
        "route" => route,
        "status" => response.status().as_u16().to_string()
    )
    .record(started.elapsed().as_secs_f64());
    response
}

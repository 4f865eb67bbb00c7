//! `GET /v1/cluster` (the cluster view) and `POST /v1/cluster/heartbeat`
//! (between nodes; docs/cluster.md).

use std::sync::Arc;

use axum::Router;
use axum::body::Body;
use axum::extract::State;
use axum::http::{HeaderMap, StatusCode};
use axum::response::Response;
use axum::routing::{get, post};
use strata_cluster::{ClusterView, Heartbeat};

use crate::api_error::ApiError;
use crate::membership::{Membership, Refusal};
use crate::request::{MAX_ADMIN_BODY, json_response, read_body};

/// The cluster routes alone, served by every node as part of the API.
pub fn routes(membership: Arc<Membership>) -> Router {
    Router::new()
        .route("/v1/cluster", get(view))
        .route("/v1/cluster/heartbeat", post(heartbeat))
        .with_state(membership)
}

fn view_response(view: &ClusterView) -> Result<Response, ApiError> {
    let body = serde_json::to_vec(view).map_err(|e| ApiError::internal(e.to_string()))?;
    Ok(json_response(StatusCode::OK, body))
}

/// `200` with the cluster view, `503` while this node knows no controller
/// (the object store has been unreachable since it started).
async fn view(State(membership): State<Arc<Membership>>) -> Result<Response, ApiError> {
    match membership.view() {
        Some(view) => view_response(&view),
        None => Err(ApiError::unavailable(
            "this node has not found the cluster's controller yet",
            1,
        )),
    }
}

/// `200` with the cluster view when this node is the controller; `409
/// not_controller`, `409 not_registered` or `409 stale_incarnation`
/// otherwise.
async fn heartbeat(
    State(membership): State<Arc<Membership>>,
    headers: HeaderMap,
    body: Body,
) -> Result<Response, ApiError> {
    let bytes = read_body(&headers, body, MAX_ADMIN_BODY).await?;
    let beat: Heartbeat = serde_json::from_slice(&bytes)
        .map_err(|e| ApiError::invalid_request(format!("not a heartbeat: {e}")))?;
    let mut answer = membership.on_heartbeat(&beat);
    if matches!(answer, Err(Refusal::NotRegistered)) {
        // Registered after this controller listed the nodes: look it up
        // once. A heartbeat from a node that never registered is refused,
        // so nothing unregistered enters the table.
        membership.learn(&beat.node).await?;
        answer = membership.on_heartbeat(&beat);
    }
    match answer {
        Ok(view) => view_response(&view),
        Err(Refusal::NotController(newest)) => {
            let mut error = ApiError::new(
                StatusCode::CONFLICT,
                "not_controller",
                "this node is not the cluster's controller",
            );
            if let Some(c) = newest {
                error.extra.push(("controller", c.node.to_string().into()));
                error.extra.push(("controller_epoch", c.epoch.into()));
            }
            Err(error)
        }
        Err(Refusal::NotRegistered) => Err(ApiError::new(
            StatusCode::CONFLICT,
            "not_registered",
            format!(
                "node {} has not registered incarnation {} in the object store",
                beat.node, beat.incarnation
            ),
        )),
        Err(Refusal::StaleIncarnation) => Err(ApiError::new(
            StatusCode::CONFLICT,
            "stale_incarnation",
            format!(
                "node {} registered a newer incarnation than {}",
                beat.node, beat.incarnation
            ),
        )),
    }
}

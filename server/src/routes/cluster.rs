//! `GET /v1/cluster` (the cluster view) and `POST /v1/cluster/heartbeat`
//! (between nodes; docs/cluster.md).

use std::sync::Arc;

use axum::body::Body;
use axum::extract::State;
use axum::http::{HeaderMap, StatusCode};
use axum::response::Response;
use strata_cluster::{ClusterView, Heartbeat};
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;

use crate::api_error::ApiError;
use crate::forward;
use crate::membership::{Membership, Refusal};
use crate::request::{ApiPath, MAX_ADMIN_BODY, json_response, read_body};

/// The cluster routes alone, served by every node as part of the API.
pub fn routes(membership: Arc<Membership>) -> OpenApiRouter {
    OpenApiRouter::new()
        .routes(routes!(view))
        .routes(routes!(heartbeat))
        .routes(routes!(drain))
        .with_state(membership)
}

fn view_response(view: &ClusterView) -> Result<Response, ApiError> {
    let body = serde_json::to_vec(view).map_err(|e| ApiError::internal(e.to_string()))?;
    Ok(json_response(StatusCode::OK, body))
}

/// `200` with the cluster view, `503` while this node knows no controller
/// (the object store has been unreachable since it started).
#[utoipa::path(get, path = "/v1/cluster", operation_id = "cluster_view", tag = "cluster",
    responses((status = 200, description = "the nodes, the controller and its epoch", body = serde_json::Value)))]
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
#[utoipa::path(post, path = "/v1/cluster/heartbeat", operation_id = "heartbeat", tag = "cluster",
    description = "Between nodes only (node secret when authentication is on).",
    request_body = serde_json::Value,
    responses(
        (status = 200, description = "the controller's view", body = serde_json::Value),
        (status = 400, description = "`invalid_request`"),
        (status = 409, description = "`not_controller`, `not_registered`, `stale_incarnation`"),
        (status = 413, description = "`payload_too_large`")))]
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

/// `202`: the node's replicas and leaderships move to the other live
/// nodes, a few partitions per controller pass; `GET /v1/cluster` shows
/// `"draining": true` until it holds no replica. Passed on to the
/// controller from any node.
#[utoipa::path(post, path = "/v1/cluster/nodes/{id}/drain", operation_id = "drain_node", tag = "cluster",
    params(("id" = String, Path, description = "node id")),
    responses(
        (status = 202, description = "`{\"node\", \"draining\": true}`", body = serde_json::Value),
        (status = 400, description = "`invalid_request` (not a node id)"),
        (status = 404, description = "`node_not_found`")))]
async fn drain(
    State(membership): State<Arc<Membership>>,
    headers: HeaderMap,
    ApiPath(id): ApiPath<String>,
) -> Result<Response, ApiError> {
    let node = strata_cluster::NodeId::parse(&id)?;
    if let Some(url) = membership.controller_url() {
        return forward::relay(
            &membership.client(),
            reqwest::Method::POST,
            &format!(
                "{}/v1/cluster/nodes/{node}/drain",
                url.trim_end_matches('/')
            ),
            &headers,
        )
        .await;
    }
    if !membership.drain(&node).await? {
        return Err(ApiError::new(
            StatusCode::NOT_FOUND,
            "node_not_found",
            format!("no node {node} is registered"),
        ));
    }
    let body = serde_json::json!({"node": node, "draining": true});
    Ok(json_response(
        StatusCode::ACCEPTED,
        body.to_string().into_bytes(),
    ))
}

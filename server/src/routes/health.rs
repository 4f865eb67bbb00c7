//! `GET /health` (liveness), `GET /health/ready` (readiness, with what was
//! checked) and `GET /metrics` (Prometheus text).

use std::time::Duration;

use axum::extract::State;
use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use serde_json::json;

use super::AppState;
use crate::request::json_response;

/// How long the readiness check waits for the object store.
pub const STORE_PROBE_TIMEOUT: Duration = Duration::from_secs(3);

/// Always `200 {"status":"ok"}` while the process serves requests.
#[utoipa::path(get, path = "/health", operation_id = "live", tag = "health",
    description = "Liveness: `200` whenever the process serves requests (with `/openapi.json`, the only routes that never need a token).",
    responses((status = 200, description = "`{\"status\":\"ok\"}`", body = serde_json::Value)))]
pub(super) async fn live() -> Response {
    json_response(StatusCode::OK, br#"{"status":"ok"}"#.to_vec())
}

/// `200` when the server can take writes and offload them, else `503`
/// (with `Retry-After`), with each check's findings either way.
#[utoipa::path(get, path = "/health/ready", operation_id = "ready", tag = "health",
    description = "Readiness, with each check's findings (disk, object store, local budget, cluster).",
    responses(
        (status = 200, description = "every check passes", body = serde_json::Value),
        (status = 503, description = "a check fails; the body still lists every check", body = serde_json::Value)))]
pub(super) async fn ready(State(app): State<AppState>) -> Response {
    let data_dir = app.broker.config().data_dir.clone();
    let disk =
        match tokio::task::spawn_blocking(move || strata_broker::disk::space(&data_dir)).await {
            // Not ready below the reserve: produce is refused there.
            Ok(Ok(space)) => json!({
                "ok": !space.is_low(),
                "free_bytes": space.free_bytes,
                "total_bytes": space.total_bytes,
                "reserve_bytes": space.reserve_bytes(),
            }),
            Ok(Err(e)) => json!({"ok": false, "error": e.to_string()}),
            Err(e) => json!({"ok": false, "error": e.to_string()}),
        };
    let store = match app.tiering.probe_store(STORE_PROBE_TIMEOUT).await {
        Ok(took) => json!({"ok": true, "latency_ms": took.as_millis() as u64}),
        Err(error) => {
            tracing::warn!(%error, "readiness: the object store does not answer");
            json!({"ok": false, "error": error})
        }
    };
    let mut local_only = 0u64;
    for topic in app.broker.topics() {
        for p in topic.partitions() {
            let cold = app.tiering.cold_stats(topic.name(), p.id());
            local_only += p
                .end_offset()
                .saturating_sub(cold.end_offset.max(p.start_offset()));
        }
    }
    let local = json!({
        "ok": app.broker.check_local_budget().is_ok(),
        "bytes": app.broker.local_bytes(),
        "max_local_bytes": app.broker.config().max_local_bytes,
        "records_not_offloaded": local_only,
    });
    let node = app.membership.id().to_string();
    let cluster = match app.membership.view() {
        Some(view) => json!({
            "ok": true,
            "node": node,
            "controller": view.controller,
            "controller_epoch": view.controller_epoch,
            "nodes": view.nodes.len(),
            "alive": view.nodes.iter().filter(|n| n.alive).count(),
        }),
        None => json!({
            "ok": false,
            "node": node,
            "error": "no view of the cluster yet: no controller heard from",
        }),
    };
    let ok = [&disk, &store, &local, &cluster]
        .iter()
        .all(|c| c["ok"] == true);
    let body = json!({
        "status": if ok { "ready" } else { "not_ready" },
        "checks": {"disk": disk, "object_store": store, "local_budget": local, "cluster": cluster},
    });
    let status = if ok {
        StatusCode::OK
    } else {
        StatusCode::SERVICE_UNAVAILABLE
    };
    let mut response = json_response(status, body.to_string().into_bytes());
    if !ok {
        response
            .headers_mut()
            .insert(header::RETRY_AFTER, HeaderValue::from(5u64));
    }
    response
}

#[utoipa::path(get, path = "/metrics", operation_id = "metrics", tag = "health",
    description = "Prometheus text exposition (admin when authentication is on).",
    responses((status = 200, description = "metrics", body = String, content_type = "text/plain")))]
pub(super) async fn metrics_text(State(app): State<AppState>) -> Response {
    for topic in app.broker.topics() {
        let bytes: u64 = topic.partitions().iter().map(|p| p.local_bytes()).sum();
        metrics::gauge!("strata_local_bytes", "topic" => topic.name().to_string())
            .set(bytes as f64);
    }
    let mut response = app.metrics.render().into_response();
    response.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("text/plain; version=0.0.4; charset=utf-8"),
    );
    response
}

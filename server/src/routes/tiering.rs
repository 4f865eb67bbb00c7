//! `POST /v1/topics/{topic}/tiering/run[?roll=true]`: offload now.

use axum::extract::{RawQuery, State};
use axum::http::StatusCode;
use axum::response::Response;
use strata_tiering::TieringError;

use super::AppState;
use crate::api_error::ApiError;
use crate::request::{ApiPath, Params, json_response};

#[utoipa::path(post, path = "/v1/topics/{topic}/tiering/run", operation_id = "offload_now", tag = "operations",
    params(
        ("topic" = String, Path, description = "topic name"),
        ("roll" = Option<bool>, Query, description = "seal the active segments first")),
    responses(
        (status = 200, description = "what was offloaded", body = serde_json::Value),
        (status = 400, description = "`invalid_request`, `invalid_topic_name`"),
        (status = 404, description = "`topic_not_found`")))]
pub(super) async fn run(
    State(app): State<AppState>,
    ApiPath(topic): ApiPath<String>,
    RawQuery(query): RawQuery,
) -> Result<Response, ApiError> {
    let params = Params::parse(query.as_deref(), &["roll"])?;
    let roll = params.flag("roll")?;
    // Its own task: a client that hangs up does not cut the offload short.
    let tiering = app.tiering.clone();
    let summary = tokio::spawn(async move { tiering.offload_topic(&topic, roll).await })
        .await
        .unwrap_or_else(|e| Err(TieringError::Internal(format!("offload task: {e}"))))?;
    let body = serde_json::to_vec(&summary).map_err(|e| ApiError::internal(e.to_string()))?;
    Ok(json_response(StatusCode::OK, body))
}

//! `POST /v1/topics/{topic}/tiering/run[?roll=true]`: offload now.

use std::sync::Arc;

use axum::Router;
use axum::extract::{RawQuery, State};
use axum::http::StatusCode;
use axum::response::Response;
use axum::routing::post;
use strata_broker::http::{ApiError, ApiPath, Params, json_response};

use crate::error::TieringError;
use crate::offloader::{Tiering, to_api};

/// The tiering routes.
pub fn router(tiering: Arc<Tiering>) -> Router {
    Router::new()
        .route("/v1/topics/{topic}/tiering/run", post(run))
        .with_state(tiering)
}

async fn run(
    State(tiering): State<Arc<Tiering>>,
    ApiPath(topic): ApiPath<String>,
    RawQuery(query): RawQuery,
) -> Result<Response, ApiError> {
    let params = Params::parse(query.as_deref(), &["roll"])?;
    let roll = match params.get("roll") {
        None | Some("false") => false,
        Some("true") | Some("") => true,
        Some(other) => {
            return Err(ApiError::invalid_request(format!(
                "roll must be true or false, got {other:?}"
            )));
        }
    };
    // Its own task: a client that hangs up does not cut the offload short.
    let summary = tokio::spawn(async move { tiering.offload_topic(&topic, roll).await })
        .await
        .unwrap_or_else(|e| Err(TieringError::Internal(format!("offload task: {e}"))))
        .map_err(to_api)?;
    let body =
        serde_json::to_vec(&summary).map_err(|e| ApiError::invalid_request(e.to_string()))?;
    Ok(json_response(StatusCode::OK, body))
}

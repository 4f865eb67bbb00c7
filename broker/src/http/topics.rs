//! `/v1/topics`: create, list, describe, delete.

use axum::body::Body;
use axum::extract::State;
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use serde::Deserialize;
use serde_json::{Value, json};

use super::{ApiError, ApiPath, AppState, blocking, json_response, read_body};
use crate::cold::ColdTier;
use crate::config::TopicConfigOverrides;
use crate::timestamp::format_timestamp;
use crate::topic::Topic;

/// Largest accepted body of an admin request.
const MAX_ADMIN_BODY: usize = 1024 * 1024;

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct CreateTopic {
    name: String,
    #[serde(default)]
    partitions: Option<u32>,
    #[serde(default)]
    config: TopicConfigOverrides,
}

pub(super) async fn create(
    State(app): State<AppState>,
    headers: HeaderMap,
    body: Body,
) -> Result<Response, ApiError> {
    let bytes = read_body(&headers, body, MAX_ADMIN_BODY).await?;
    let request: CreateTopic = serde_json::from_slice(&bytes).map_err(|e| {
        ApiError::invalid_request(format!(
            "expected {{\"name\", \"partitions\", \"config\"}}: {e}"
        ))
    })?;
    let broker = app.broker.clone();
    let topic =
        blocking(move || broker.create_topic(&request.name, request.partitions, &request.config))
            .await?;
    Ok(json_response(
        StatusCode::CREATED,
        describe_topic(&topic, app.cold.as_deref())
            .to_string()
            .into_bytes(),
    ))
}

pub(super) async fn list(State(app): State<AppState>) -> Response {
    let topics: Vec<Value> = app
        .broker
        .topics()
        .iter()
        .map(|t| describe_topic(t, app.cold.as_deref()))
        .collect();
    json_response(
        StatusCode::OK,
        json!({ "topics": topics }).to_string().into_bytes(),
    )
}

pub(super) async fn describe(
    State(app): State<AppState>,
    ApiPath(name): ApiPath<String>,
) -> Result<Response, ApiError> {
    let topic = app.broker.topic(&name)?;
    Ok(json_response(
        StatusCode::OK,
        describe_topic(&topic, app.cold.as_deref())
            .to_string()
            .into_bytes(),
    ))
}

pub(super) async fn delete(
    State(app): State<AppState>,
    ApiPath(name): ApiPath<String>,
) -> Result<Response, ApiError> {
    // Cold data first: if the object store fails, nothing is deleted and
    // the request can be retried; a topic re-created later under the same
    // name can never inherit a stale manifest.
    app.broker.topic(&name)?;
    if let Some(cold) = &app.cold {
        cold.delete_topic(&name).await?;
    }
    let broker = app.broker.clone();
    blocking(move || broker.delete_topic(&name)).await?;
    Ok(StatusCode::NO_CONTENT.into_response())
}

/// The API's topic description, hot and cold tiers together.
pub fn describe_topic(topic: &Topic, cold: Option<&dyn ColdTier>) -> Value {
    let partitions: Vec<Value> = topic
        .partitions()
        .iter()
        .map(|p| {
            let hot = p.stats();
            let cold = cold
                .map(|c| c.stats(topic.name(), p.id()))
                .unwrap_or_default();
            let start = if cold.files > 0 {
                cold.start_offset.min(hot.start_offset)
            } else {
                hot.start_offset
            };
            let min = [hot.min_timestamp, cold.min_timestamp]
                .into_iter()
                .flatten()
                .min();
            let max = [hot.max_timestamp, cold.max_timestamp]
                .into_iter()
                .flatten()
                .max();
            json!({
                "partition": hot.partition,
                "start_offset": start,
                "local_start_offset": hot.start_offset,
                "end_offset": hot.end_offset,
                "hot": {"segments": hot.segments, "bytes": hot.bytes},
                "cold": {"files": cold.files, "bytes": cold.bytes, "end_offset": cold.end_offset},
                "min_timestamp": min.map(format_timestamp),
                "max_timestamp": max.map(format_timestamp),
            })
        })
        .collect();
    json!({
        "name": topic.name(),
        "config": topic.config(),
        "partitions": partitions,
    })
}

//! `/v1/topics`: create, list, describe, delete.

use axum::body::Body;
use axum::extract::State;
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use serde::Deserialize;
use serde_json::{Value, json};

use super::{ApiError, ApiPath, AppState, blocking, json_response, read_body};
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
        describe_topic(&topic).to_string().into_bytes(),
    ))
}

pub(super) async fn list(State(app): State<AppState>) -> Response {
    let topics: Vec<Value> = app
        .broker
        .topics()
        .iter()
        .map(|t| describe_topic(t))
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
        describe_topic(&topic).to_string().into_bytes(),
    ))
}

pub(super) async fn delete(
    State(app): State<AppState>,
    ApiPath(name): ApiPath<String>,
) -> Result<Response, ApiError> {
    let broker = app.broker.clone();
    blocking(move || broker.delete_topic(&name)).await?;
    Ok(StatusCode::NO_CONTENT.into_response())
}

/// The API's topic description. The cold tier is empty until the tiering
/// crate reports otherwise.
pub fn describe_topic(topic: &Topic) -> Value {
    let partitions: Vec<Value> = topic
        .partitions()
        .iter()
        .map(|p| {
            let s = p.stats();
            json!({
                "partition": s.partition,
                "start_offset": s.start_offset,
                "local_start_offset": s.start_offset,
                "end_offset": s.end_offset,
                "hot": {"segments": s.segments, "bytes": s.bytes},
                "cold": {"files": 0, "bytes": 0, "end_offset": 0},
                "min_timestamp": s.min_timestamp.map(format_timestamp),
                "max_timestamp": s.max_timestamp.map(format_timestamp),
            })
        })
        .collect();
    json!({
        "name": topic.name(),
        "config": topic.config(),
        "partitions": partitions,
    })
}

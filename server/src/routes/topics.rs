//! `/v1/topics`: create, list, describe, delete.

use axum::Extension;
use axum::body::Body;
use axum::extract::State;
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use serde::Deserialize;
use serde_json::{Value, json};
use strata_broker::TopicConfigOverrides;

use super::AppState;
use crate::api_error::ApiError;
use crate::auth::{Need, Principal};
use crate::request::{ApiPath, MAX_ADMIN_BODY, blocking, json_response, read_body};
use crate::tiers::describe_topic;

/// `POST /v1/topics`.
#[derive(Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
struct CreateTopic {
    name: String,
    /// Default: the server's `default_partitions`.
    #[serde(default)]
    #[schema(minimum = 1, maximum = 10000)]
    partitions: Option<u32>,
    #[serde(default)]
    #[schema(value_type = crate::openapi::TopicConfig)]
    config: TopicConfigOverrides,
}

#[utoipa::path(post, path = "/v1/topics", operation_id = "create_topic", tag = "topics",
    request_body = CreateTopic,
    responses(
        (status = 201, description = "created", body = crate::openapi::TopicDescription),
        (status = 400, description = "`invalid_request`, `invalid_topic_name`"),
        (status = 409, description = "`topic_exists`, or `view_exists` (a view has that name)"),
        (status = 413, description = "`payload_too_large`")))]
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
    if app.query.has_view(&request.name) {
        // SQL would not know which of the two a name means.
        return Err(ApiError::new(
            StatusCode::CONFLICT,
            "view_exists",
            format!("a view is named {:?}", request.name),
        ));
    }
    let broker = app.broker.clone();
    let topic =
        blocking(move || broker.create_topic(&request.name, request.partitions, &request.config))
            .await?;
    app.tiering.topic_created(&topic);
    Ok(json_response(
        StatusCode::CREATED,
        describe_topic(&topic, &app.tiering)
            .await?
            .to_string()
            .into_bytes(),
    ))
}

/// Lists the topics the caller may produce to or consume (every topic
/// with authentication off, or for an admin): a listing leaks no names.
#[utoipa::path(get, path = "/v1/topics", operation_id = "list_topics", tag = "topics",
    responses((status = 200, description = "the topics the caller may see", body = crate::openapi::TopicList)))]
pub(super) async fn list(
    State(app): State<AppState>,
    Extension(principal): Extension<Principal>,
) -> Result<Response, ApiError> {
    let mut topics: Vec<Value> = Vec::new();
    for topic in app.broker.topics() {
        if !principal.may(Need::ProduceOrConsume(topic.name())) {
            continue;
        }
        topics.push(describe_topic(&topic, &app.tiering).await?);
    }
    Ok(json_response(
        StatusCode::OK,
        json!({ "topics": topics }).to_string().into_bytes(),
    ))
}

#[utoipa::path(get, path = "/v1/topics/{topic}", operation_id = "describe_topic", tag = "topics",
    params(("topic" = String, Path, description = "topic name")),
    responses(
        (status = 200, description = "the topic", body = crate::openapi::TopicDescription),
        (status = 400, description = "`invalid_topic_name`"),
        (status = 404, description = "`topic_not_found`")))]
pub(super) async fn describe(
    State(app): State<AppState>,
    ApiPath(name): ApiPath<String>,
) -> Result<Response, ApiError> {
    let topic = app.broker.topic(&name)?;
    Ok(json_response(
        StatusCode::OK,
        describe_topic(&topic, &app.tiering)
            .await?
            .to_string()
            .into_bytes(),
    ))
}

#[utoipa::path(delete, path = "/v1/topics/{topic}", operation_id = "delete_topic", tag = "topics",
    params(("topic" = String, Path, description = "topic name")),
    responses(
        (status = 204, description = "deleted from both tiers"),
        (status = 400, description = "`invalid_topic_name`"),
        (status = 404, description = "`topic_not_found`")))]
pub(super) async fn delete(
    State(app): State<AppState>,
    ApiPath(name): ApiPath<String>,
) -> Result<Response, ApiError> {
    // Cold data first: if the object store fails, nothing is deleted and
    // the request can be retried; a topic re-created later under the same
    // name can never inherit a stale manifest.
    app.broker.topic(&name)?;
    app.tiering.delete_topic(&name).await?;
    let broker = app.broker.clone();
    blocking(move || broker.delete_topic(&name)).await?;
    Ok(StatusCode::NO_CONTENT.into_response())
}

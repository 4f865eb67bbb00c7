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
use crate::forward;
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
    app.catalog.know_view(&request.name).await;
    if app.query.has_view(&request.name) {
        // SQL would not know which of the two a name means.
        return Err(ApiError::new(
            StatusCode::CONFLICT,
            "view_exists",
            format!("a view is named {:?}", request.name),
        ));
    }
    let mut request = request;
    resolve_replication(&app, &mut request.config)?;
    if request.config.replication_factor.unwrap_or(1) > 1 {
        return create_replicated(&app, &headers, request).await;
    }
    let broker = app.broker.clone();
    let topic =
        blocking(move || broker.create_topic(&request.name, request.partitions, &request.config))
            .await?;
    app.tiering.topic_created(&topic);
    Ok(json_response(
        StatusCode::CREATED,
        describe_topic(&app, &topic).await?.to_string().into_bytes(),
    ))
}

/// Fixes a new topic's `replication_factor` (given, else the server's
/// default, else min(3, live nodes)) and `min_insync_replicas` (given,
/// else the default, else min(2, replication factor)); more replicas than
/// live nodes is `400`.
fn resolve_replication(app: &AppState, config: &mut TopicConfigOverrides) -> Result<(), ApiError> {
    let defaults = &app.broker.config().topic_defaults;
    let live = app.membership.live_nodes();
    let nonzero = |n: u32| (n > 0).then_some(n);
    let factor = config
        .replication_factor
        .or(nonzero(defaults.replication_factor))
        .unwrap_or(live.min(3) as u32);
    if factor == 0 {
        return Err(ApiError::invalid_request(
            "replication_factor must be at least 1",
        ));
    }
    if factor as usize > live && factor <= strata_broker::config::MAX_REPLICATION_FACTOR {
        return Err(ApiError::invalid_request(format!(
            "replication_factor {factor} is more than the {live} live nodes"
        )));
    }
    let min_insync = config
        .min_insync_replicas
        .or(nonzero(defaults.min_insync_replicas))
        .unwrap_or(factor.min(2));
    if min_insync == 0 {
        return Err(ApiError::invalid_request(
            "min_insync_replicas must be at least 1",
        ));
    }
    config.replication_factor = Some(factor);
    config.min_insync_replicas = Some(min_insync);
    Ok(())
}

/// Creates a replicated topic through the controller (here, or passed on
/// to it), then waits (up to 5 s) until this node's map has it, so that
/// the client can use it through this node at once.
async fn create_replicated(
    app: &AppState,
    headers: &HeaderMap,
    request: CreateTopic,
) -> Result<Response, ApiError> {
    strata_broker::config::validate_new_topic_name(&request.name)?;
    let partitions = request
        .partitions
        .unwrap_or(app.broker.config().default_partitions);
    if !(1..=strata_broker::config::MAX_PARTITIONS).contains(&partitions) {
        return Err(ApiError::invalid_request(format!(
            "partitions must be between 1 and {}",
            strata_broker::config::MAX_PARTITIONS
        )));
    }
    let config = request.config.apply(&app.broker.config().topic_defaults)?;
    if app.broker.topic(&request.name).is_ok() {
        return Err(strata_broker::BrokerError::TopicExists(request.name).into());
    }
    let name = request.name.clone();
    match app.membership.controller_url() {
        None => {
            let meta = strata_broker::topic::TopicMeta {
                name: request.name,
                partitions,
                config: config.clone(),
            };
            app.membership.create_replicated_topic(meta).await?;
        }
        Some(url) => {
            let body = json!({"name": name, "partitions": partitions, "config": config});
            let (status, answer_headers, answer) = forward::send(
                &app.membership.client(),
                reqwest::Method::POST,
                &format!("{}/v1/topics", url.trim_end_matches('/')),
                headers,
                &[],
                "application/json",
                body.to_string().into_bytes(),
            )
            .await?;
            if status != StatusCode::CREATED {
                return Ok(forward::pass_on(status, &answer_headers, answer));
            }
        }
    }
    let deadline = tokio::time::Instant::now() + std::time::Duration::from_secs(5);
    while !app.replication.knows_topic(&name) && tokio::time::Instant::now() < deadline {
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    }
    match app.broker.topic(&name) {
        Ok(topic) => Ok(json_response(
            StatusCode::CREATED,
            describe_topic(app, &topic).await?.to_string().into_bytes(),
        )),
        Err(_) => Ok(json_response(
            StatusCode::CREATED,
            json!({"name": name, "partitions": [], "config": config})
                .to_string()
                .into_bytes(),
        )),
    }
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
        topics.push(describe_topic(&app, &topic).await?);
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
        describe_topic(&app, &topic).await?.to_string().into_bytes(),
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
    headers: HeaderMap,
    ApiPath(name): ApiPath<String>,
) -> Result<Response, ApiError> {
    if app.replication.knows_topic(&name) {
        return delete_replicated(&app, &headers, &name).await;
    }
    // Cold data first: if the object store fails, nothing is deleted and
    // the request can be retried; a topic re-created later under the same
    // name can never inherit a stale manifest.
    app.broker.topic(&name)?;
    app.tiering.delete_topic(&name).await?;
    let broker = app.broker.clone();
    let deleted = name.clone();
    blocking(move || broker.delete_topic(&deleted)).await?;
    // Derived data: a failure here is logged, and the index's own checks
    // (its start-up sweep, the topic object) forget the topic later.
    if let Err(error) = app.query.key_index().topic_deleted(&name).await {
        tracing::warn!(%error, topic = %name, "the key index did not forget a deleted topic yet");
    }
    Ok(StatusCode::NO_CONTENT.into_response())
}

/// Deletes a replicated topic: its cold data first, then (by the
/// controller) its record; every node then deletes its replicas.
async fn delete_replicated(
    app: &AppState,
    headers: &HeaderMap,
    name: &str,
) -> Result<Response, ApiError> {
    match app.membership.controller_url() {
        None => {
            app.tiering.delete_topic(name).await?;
            if !app.membership.delete_replicated_topic(name).await? {
                return Err(strata_broker::BrokerError::TopicNotFound(name.to_string()).into());
            }
            Ok(StatusCode::NO_CONTENT.into_response())
        }
        Some(url) => {
            forward::relay(
                &app.membership.client(),
                reqwest::Method::DELETE,
                &format!("{}/v1/topics/{name}", url.trim_end_matches('/')),
                headers,
            )
            .await
        }
    }
}

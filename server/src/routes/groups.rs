//! `/v1/groups/{group}/offsets`: commit and fetch consumer-group offsets
//! (cluster-wide: [`crate::catalog`]).

use axum::Extension;
use axum::body::Body;
use axum::extract::State;
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use serde::Deserialize;
use serde_json::json;
use strata_broker::BrokerError;
use strata_broker::config::validate_name;
use strata_broker::groups::CommittedOffset;

use super::AppState;
use crate::api_error::ApiError;
use crate::auth::{Need, Principal};
use crate::request::{ApiPath, MAX_ADMIN_BODY, json_response, read_body};

/// `POST /v1/groups/{group}/offsets`.
#[derive(Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
struct Commit {
    #[schema(value_type = Vec<crate::openapi::CommittedOffset>)]
    offsets: Vec<CommittedOffset>,
}

fn check_group(group: &str) -> Result<(), ApiError> {
    validate_name(group).map_err(|e| match e {
        BrokerError::InvalidTopicName { reason, .. } => {
            ApiError::invalid_request(format!("invalid group name {group:?}: {reason}"))
        }
        other => other.into(),
    })
}

#[utoipa::path(post, path = "/v1/groups/{group}/offsets", operation_id = "commit_offsets", tag = "groups",
    params(("group" = String, Path, description = "consumer group name")),
    request_body = Commit,
    responses(
        (status = 204, description = "committed, durably"),
        (status = 400, description = "`invalid_request`, `invalid_topic_name`"),
        (status = 404, description = "`topic_not_found`, `partition_not_found`"),
        (status = 413, description = "`payload_too_large`")))]
pub(super) async fn commit(
    State(app): State<AppState>,
    Extension(principal): Extension<Principal>,
    ApiPath(group): ApiPath<String>,
    headers: HeaderMap,
    body: Body,
) -> Result<Response, ApiError> {
    check_group(&group)?;
    let bytes = read_body(&headers, body, MAX_ADMIN_BODY).await?;
    let commit: Commit = serde_json::from_slice(&bytes).map_err(|e| {
        ApiError::invalid_request(format!(
            "expected {{\"offsets\": [{{\"topic\", \"partition\", \"offset\"}}]}}: {e}"
        ))
    })?;
    // Every topic is checked before any is looked up: a forbidden topic
    // and an unknown one answer alike.
    for c in &commit.offsets {
        principal.require(Need::Consume(&c.topic))?;
    }
    for c in &commit.offsets {
        let topic = app.broker.topic(&c.topic)?;
        topic.partition(&c.partition.to_string())?;
    }
    app.catalog.groups().commit(&group, &commit.offsets).await?;
    Ok(StatusCode::NO_CONTENT.into_response())
}

/// The group's offsets of the topics the caller may consume.
#[utoipa::path(get, path = "/v1/groups/{group}/offsets", operation_id = "fetch_offsets", tag = "groups",
    params(("group" = String, Path, description = "consumer group name")),
    responses(
        (status = 200, description = "the group's offsets with lag", body = serde_json::Value),
        (status = 400, description = "`invalid_request`"),
        (status = 404, description = "`not_found`")))]
pub(super) async fn fetch(
    State(app): State<AppState>,
    Extension(principal): Extension<Principal>,
    ApiPath(group): ApiPath<String>,
) -> Result<Response, ApiError> {
    check_group(&group)?;
    let offsets = match app.catalog.groups().offsets(&group).await? {
        Some(offsets) => offsets,
        // To a token that is not an admin, an unknown group looks like one
        // with nothing it may see: telling them apart would leak names.
        None if !principal.may(Need::Admin) => Vec::new(),
        None => {
            return Err(BrokerError::NotFound(format!(
                "consumer group {group:?} has no committed offsets"
            ))
            .into());
        }
    };
    let entries: Vec<_> = offsets
        .into_iter()
        .filter(|c| principal.may_consume(&c.topic))
        .filter_map(|c| {
            let topic = app.broker.topic(&c.topic).ok()?;
            let end = topic.partitions().get(c.partition as usize)?.end_offset();
            Some(json!({
                "topic": c.topic,
                "partition": c.partition,
                "offset": c.offset,
                "end_offset": end,
                "lag": end.saturating_sub(c.offset),
            }))
        })
        .collect();
    Ok(json_response(
        StatusCode::OK,
        json!({ "offsets": entries }).to_string().into_bytes(),
    ))
}

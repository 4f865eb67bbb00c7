//! `/v1/tokens`: create, list, revoke (admin only; see `crate::auth`).

use axum::body::Body;
use axum::extract::State;
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use serde::Deserialize;
use serde_json::json;
use strata_cluster::tokens::{Permission, Quota, TokenRecord};

use super::AppState;
use crate::api_error::ApiError;
use crate::request::{ApiPath, MAX_ADMIN_BODY, json_response, read_body};

/// `POST /v1/tokens`.
#[derive(Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
struct CreateToken {
    name: String,
    /// `admin`, `produce:<topic glob>`, `consume:<topic glob>`, `query`.
    permissions: Vec<String>,
    #[serde(default)]
    #[schema(minimum = 1)]
    produce_bytes_per_sec: Option<u64>,
    #[serde(default)]
    #[schema(minimum = 1)]
    consume_bytes_per_sec: Option<u64>,
}

fn shown(record: &TokenRecord) -> serde_json::Value {
    let mut shown = json!({
        "name": record.name,
        "permissions": record.permissions,
        "created_at": record.created_at,
    });
    if let Some(rate) = record.quota.produce_bytes_per_sec {
        shown["produce_bytes_per_sec"] = json!(rate);
    }
    if let Some(rate) = record.quota.consume_bytes_per_sec {
        shown["consume_bytes_per_sec"] = json!(rate);
    }
    shown
}

/// `201 {"name", "token", "permissions", "created_at"}`: the token is in
/// this answer and nowhere else.
#[utoipa::path(post, path = "/v1/tokens", operation_id = "create_token", tag = "security",
    request_body = CreateToken,
    responses(
        (status = 201, description = "created; the token is shown this once", body = serde_json::Value),
        (status = 400, description = "`invalid_request`"),
        (status = 409, description = "`token_exists`"),
        (status = 413, description = "`payload_too_large`")))]
pub(super) async fn create(
    State(app): State<AppState>,
    headers: HeaderMap,
    body: Body,
) -> Result<Response, ApiError> {
    let bytes = read_body(&headers, body, MAX_ADMIN_BODY).await?;
    let request: CreateToken = serde_json::from_slice(&bytes).map_err(|e| {
        ApiError::invalid_request(format!("expected {{\"name\", \"permissions\"}}: {e}"))
    })?;
    let permissions = request
        .permissions
        .iter()
        .map(|p| Permission::parse(p))
        .collect::<Result<Vec<_>, _>>()
        .map_err(ApiError::invalid_request)?;
    if request.produce_bytes_per_sec == Some(0) || request.consume_bytes_per_sec == Some(0) {
        return Err(ApiError::invalid_request(
            "a byte rate must be at least 1 (leave it out for no limit)",
        ));
    }
    let quota = Quota {
        produce_bytes_per_sec: request.produce_bytes_per_sec,
        consume_bytes_per_sec: request.consume_bytes_per_sec,
    };
    let (token, record) = app.auth.create(&request.name, permissions, quota).await?;
    let mut body = shown(&record);
    body["token"] = json!(token.expose());
    Ok(json_response(
        StatusCode::CREATED,
        body.to_string().into_bytes(),
    ))
}

/// `200 {"tokens": [{"name", "permissions", "created_at"}]}`, never a
/// token or its hash.
#[utoipa::path(get, path = "/v1/tokens", operation_id = "list_tokens", tag = "security",
    responses((status = 200, description = "every token's name and permissions (never a secret)", body = serde_json::Value)))]
pub(super) async fn list(State(app): State<AppState>) -> Response {
    let tokens: Vec<_> = app.auth.list().await.iter().map(shown).collect();
    json_response(
        StatusCode::OK,
        json!({ "tokens": tokens }).to_string().into_bytes(),
    )
}

/// `204`, or `404 token_not_found`.
#[utoipa::path(delete, path = "/v1/tokens/{name}", operation_id = "revoke_token", tag = "security",
    params(("name" = String, Path, description = "token name")),
    responses(
        (status = 204, description = "revoked"),
        (status = 400, description = "`invalid_request`"),
        (status = 404, description = "`token_not_found`")))]
pub(super) async fn revoke(
    State(app): State<AppState>,
    ApiPath(name): ApiPath<String>,
) -> Result<Response, ApiError> {
    app.auth.revoke(&name).await?;
    Ok(StatusCode::NO_CONTENT.into_response())
}

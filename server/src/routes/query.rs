//! The query routes: `GET /v1/topics/{t}/range`, `GET /v1/topics/{t}/snapshot`,
//! `POST /v1/query` and `/v1/views`. Results stream: the first chunk is
//! ready before the status is sent (so an early error still gets its
//! status), the rest follows with bounded memory.

use axum::Extension;
use axum::body::Body;
use axum::extract::{RawQuery, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use futures::stream::{self, StreamExt};
use serde::Deserialize;
use serde_json::json;
use strata_broker::timestamp::{now_ms, parse_timestamp};
use strata_query::Format;
use strata_query::service::{Output, RangeRequest};

use super::AppState;
use crate::api_error::ApiError;
use crate::auth::{Need, Principal};
use crate::quota::{Direction, Meter, Quotas};
use crate::request::{ApiPath, MAX_QUERY_BODY, Params, json_response, read_body};

/// The caller's consume meter, refused with `429` while it is in debt.
fn consume_meter(app: &AppState, principal: &Principal) -> Result<Option<Meter>, ApiError> {
    let meter = Quotas::meter(principal, Direction::Consume);
    app.quotas.take(meter.as_ref(), 0)?;
    Ok(meter)
}

/// A streaming `200` answer; with a meter, each chunk is charged as it is
/// sent.
fn streaming(output: Output, app: &AppState, meter: Option<Meter>) -> Response {
    let Output {
        content_type,
        headers,
        first,
        rest,
    } = output;
    let rest = stream::unfold(
        rest,
        |mut rx| async move { rx.recv().await.map(|c| (c, rx)) },
    );
    let quotas = app.quotas.clone();
    // A metered stream holds each chunk back while the token is in debt,
    // so that one long read keeps to its rate.
    let body = Body::from_stream(stream::once(async move { Ok(first) }).chain(rest).then(
        move |chunk| {
            let pause = match (&meter, &chunk) {
                (Some(meter), Ok(bytes)) => quotas.charge(meter, bytes.len() as u64),
                _ => std::time::Duration::ZERO,
            };
            async move {
                if !pause.is_zero() {
                    tokio::time::sleep(pause).await;
                }
                chunk
            }
        },
    ));
    let mut response = (StatusCode::OK, body).into_response();
    response
        .headers_mut()
        .insert(header::CONTENT_TYPE, HeaderValue::from_static(content_type));
    for (name, value) in headers {
        if let Ok(value) = HeaderValue::from_str(&value) {
            response.headers_mut().insert(name, value);
        }
    }
    response
}

fn format_param(params: &Params, default: Format) -> Result<Format, ApiError> {
    Ok(params.get("format").map_or(Ok(default), Format::parse)?)
}

fn time_param(params: &Params, name: &str) -> Result<Option<i64>, ApiError> {
    params
        .get(name)
        .map(|text| {
            parse_timestamp(text).map_err(|e| ApiError::invalid_request(format!("{name}: {e}")))
        })
        .transpose()
}

#[utoipa::path(get, path = "/v1/topics/{topic}/range", operation_id = "range", tag = "reads",
    params(
        ("topic" = String, Path, description = "topic name"),
        ("from" = Option<String>, Query, description = "epoch ms or RFC 3339, inclusive"),
        ("to" = Option<String>, Query, description = "epoch ms or RFC 3339, exclusive"),
        ("partition" = Option<u32>, Query, description = "one partition only"),
        ("key" = Option<String>, Query, description = "one key only"),
        ("limit" = Option<u64>, Query, description = "most records"),
        ("format" = Option<crate::openapi::OutputFormat>, Query, description = "default ndjson")),
    responses(
        (status = 200, description = "the records, streamed", content(
            (serde_json::Value = "application/json"),
            (String = "application/x-ndjson"),
            (String = "text/csv"),
            (Vec<u8> = "application/vnd.apache.arrow.stream"),
            (Vec<u8> = "application/vnd.apache.parquet"))),
        (status = 400, description = "`invalid_request`, `invalid_topic_name`"),
        (status = 404, description = "`topic_not_found`, `partition_not_found`")))]
pub(super) async fn range(
    State(app): State<AppState>,
    Extension(principal): Extension<Principal>,
    ApiPath(topic): ApiPath<String>,
    RawQuery(query): RawQuery,
) -> Result<Response, ApiError> {
    let meter = consume_meter(&app, &principal)?;
    let params = Params::parse(
        query.as_deref(),
        &["from", "to", "partition", "key", "limit", "format"],
    )?;
    let request = RangeRequest {
        topic,
        from_ms: time_param(&params, "from")?,
        to_ms: time_param(&params, "to")?,
        partition: params
            .u64("partition")?
            .map(|p| u32::try_from(p).unwrap_or(u32::MAX)),
        key: params.get("key").map(str::to_string),
        limit: params.u64("limit")?,
        format: format_param(&params, Format::Ndjson)?,
    };
    Ok(streaming(app.query.range(request).await?, &app, meter))
}

#[utoipa::path(get, path = "/v1/topics/{topic}/snapshot", operation_id = "snapshot", tag = "reads",
    params(
        ("topic" = String, Path, description = "topic name"),
        ("as_of" = Option<String>, Query, description = "epoch ms or RFC 3339 (default: now)"),
        ("key" = Option<Vec<String>>, Query, description = "only these keys (repeat up to 1000 times)"),
        ("format" = Option<crate::openapi::OutputFormat>, Query, description = "default json")),
    responses(
        (status = 200, description = "each key's latest record, streamed", headers(
            ("strata-lookup" = String, description = "with `key`: `index` when the key index answered, `scan` when the snapshot's SQL did")),
            content(
            (serde_json::Value = "application/json"),
            (String = "application/x-ndjson"),
            (String = "text/csv"),
            (Vec<u8> = "application/vnd.apache.arrow.stream"),
            (Vec<u8> = "application/vnd.apache.parquet"))),
        (status = 400, description = "`invalid_request`, `invalid_topic_name`"),
        (status = 404, description = "`topic_not_found`")))]
pub(super) async fn snapshot(
    State(app): State<AppState>,
    Extension(principal): Extension<Principal>,
    ApiPath(topic): ApiPath<String>,
    RawQuery(query): RawQuery,
) -> Result<Response, ApiError> {
    let meter = consume_meter(&app, &principal)?;
    let params = Params::parse_repeatable(query.as_deref(), &["as_of", "format", "key"], &["key"])?;
    let as_of = time_param(&params, "as_of")?.unwrap_or_else(now_ms);
    let format = format_param(&params, Format::Json)?;
    Ok(streaming(
        app.query
            .snapshot(&topic, as_of, params.all("key"), format)
            .await?,
        &app,
        meter,
    ))
}

/// `POST /v1/query`.
#[derive(Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
struct QueryBody {
    sql: String,
    #[serde(default)]
    #[schema(value_type = Option<crate::openapi::OutputFormat>)]
    format: Option<String>,
}

#[utoipa::path(post, path = "/v1/query", operation_id = "sql", tag = "reads",
    request_body = QueryBody,
    responses(
        (status = 200, description = "the rows, streamed", content(
            (serde_json::Value = "application/json"),
            (String = "application/x-ndjson"),
            (String = "text/csv"),
            (Vec<u8> = "application/vnd.apache.arrow.stream"),
            (Vec<u8> = "application/vnd.apache.parquet"))),
        (status = 400, description = "`invalid_request`, `invalid_sql` (naming a limit when one is hit)"),
        (status = 404, description = "`topic_not_found`, `not_found`"),
        (status = 413, description = "`payload_too_large`")))]
pub(super) async fn sql(
    State(app): State<AppState>,
    Extension(principal): Extension<Principal>,
    headers: HeaderMap,
    body: Body,
) -> Result<Response, ApiError> {
    let bytes = read_body(&headers, body, MAX_QUERY_BODY).await?;
    let request: QueryBody = serde_json::from_slice(&bytes)
        .map_err(|e| ApiError::invalid_request(format!("expected {{\"sql\", \"format\"}}: {e}")))?;
    let format = request
        .format
        .as_deref()
        .map_or(Ok(Format::Json), Format::parse)?;
    let meter = consume_meter(&app, &principal)?;
    check_topics(&app, &principal, &request.sql).await?;
    Ok(streaming(
        app.query.sql(request.sql, format).await?,
        &app,
        meter,
    ))
}

/// `403` unless the caller may consume every topic `sql` reads (through
/// views too), checked before the query runs.
async fn check_topics(app: &AppState, principal: &Principal, sql: &str) -> Result<(), ApiError> {
    if principal.may(Need::Admin) {
        return Ok(());
    }
    principal.require_consume_all(&app.query.topics_read(sql).await?)
}

/// `POST /v1/views`.
#[derive(Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
struct CreateView {
    name: String,
    sql: String,
    /// Keep the view up to date as records arrive (`GROUP BY` views over
    /// one topic with count, sum, min, max, avg).
    #[serde(default)]
    materialized: bool,
}

#[utoipa::path(post, path = "/v1/views", operation_id = "create_view", tag = "views",
    request_body = CreateView,
    responses(
        (status = 201, description = "created", body = serde_json::Value),
        (status = 400, description = "`invalid_request`, `invalid_sql`"),
        (status = 409, description = "`view_exists`, `topic_exists` (a topic has that name)"),
        (status = 413, description = "`payload_too_large`")))]
pub(super) async fn create_view(
    State(app): State<AppState>,
    Extension(principal): Extension<Principal>,
    headers: HeaderMap,
    body: Body,
) -> Result<Response, ApiError> {
    let bytes = read_body(&headers, body, MAX_QUERY_BODY).await?;
    let request: CreateView = serde_json::from_slice(&bytes).map_err(|e| {
        ApiError::invalid_request(format!(
            "expected {{\"name\", \"sql\", \"materialized\"}}: {e}"
        ))
    })?;
    // Views and topics share one namespace: a name the caller may not
    // consume is refused whether or not a topic has it, so that creating a
    // view cannot tell which topics exist.
    if !principal.may(Need::Admin) {
        principal.require(Need::Consume(&request.name))?;
    }
    check_topics(&app, &principal, &request.sql).await?;
    let view = app
        .catalog
        .create_view(&request.name, &request.sql, request.materialized)
        .await?;
    Ok(json_response(StatusCode::CREATED, json_bytes(&json!(view))))
}

/// The views whose topics the caller may all consume (a view's SQL names
/// its topics).
#[utoipa::path(get, path = "/v1/views", operation_id = "list_views", tag = "views",
    responses((status = 200, description = "the views the caller may read", body = serde_json::Value)))]
pub(super) async fn list_views(
    State(app): State<AppState>,
    Extension(principal): Extension<Principal>,
) -> Result<Response, ApiError> {
    let mut views = Vec::new();
    for view in app.catalog.views().await {
        if principal.may(Need::Admin)
            || app
                .query
                .view_topics(&view.name)
                .await
                .is_ok_and(|topics| topics.iter().all(|t| principal.may_consume(t)))
        {
            views.push(view);
        }
    }
    Ok(json_response(
        StatusCode::OK,
        json_bytes(&json!({ "views": views })),
    ))
}

#[utoipa::path(get, path = "/v1/views/{name}", operation_id = "read_view", tag = "views",
    params(
        ("name" = String, Path, description = "view name"),
        ("format" = Option<crate::openapi::OutputFormat>, Query, description = "default json"),
        ("key" = Option<String>, Query, description = "one key's row (a materialized view whose first column is the topic's key)")),
    responses(
        (status = 200, description = "the view's rows, streamed", headers(
            ("strata-view-offsets" = String, description = "materialized views: the records the rows reflect, `<topic>/<partition>=<next offset>,...`")),
            content(
            (serde_json::Value = "application/json"),
            (String = "application/x-ndjson"),
            (String = "text/csv"),
            (Vec<u8> = "application/vnd.apache.arrow.stream"),
            (Vec<u8> = "application/vnd.apache.parquet"))),
        (status = 400, description = "`invalid_request`"),
        (status = 404, description = "`view_not_found`")))]
pub(super) async fn read_view(
    State(app): State<AppState>,
    Extension(principal): Extension<Principal>,
    ApiPath(name): ApiPath<String>,
    RawQuery(query): RawQuery,
) -> Result<Response, ApiError> {
    let params = Params::parse(query.as_deref(), &["format", "key"])?;
    let format = format_param(&params, Format::Json)?;
    app.catalog.know_view(&name).await;
    require_view(&app, &principal, &name).await?;
    let meter = consume_meter(&app, &principal)?;
    Ok(streaming(
        app.query
            .read_view(&name, format, params.get("key"))
            .await?,
        &app,
        meter,
    ))
}

/// Deletes a view the caller may read: one that reads only topics it may
/// consume.
#[utoipa::path(delete, path = "/v1/views/{name}", operation_id = "delete_view", tag = "views",
    params(("name" = String, Path, description = "view name")),
    responses(
        (status = 204, description = "deleted"),
        (status = 400, description = "`invalid_request`"),
        (status = 404, description = "`view_not_found`")))]
pub(super) async fn delete_view(
    State(app): State<AppState>,
    Extension(principal): Extension<Principal>,
    ApiPath(name): ApiPath<String>,
) -> Result<Response, ApiError> {
    app.catalog.know_view(&name).await;
    require_view(&app, &principal, &name).await?;
    app.catalog.delete_view(&name).await?;
    Ok(StatusCode::NO_CONTENT.into_response())
}

/// `403` unless the caller may read view `name` (may consume every topic
/// it reads). To a caller that is not an admin, an unknown view and a
/// forbidden one get the same answer, naming no topic: either difference
/// would leak names (which views exist, which topics a view reads).
async fn require_view(app: &AppState, principal: &Principal, name: &str) -> Result<(), ApiError> {
    if principal.may(Need::Admin) {
        return Ok(());
    }
    let allowed = match app.query.view_topics(name).await {
        Ok(topics) => topics.iter().all(|topic| principal.may_consume(topic)),
        Err(strata_query::QueryError::ViewNotFound(_)) => false,
        Err(e) => return Err(e.into()),
    };
    if allowed {
        Ok(())
    } else {
        Err(ApiError::forbidden(format!(
            "this token may not read view {:?}",
            name.chars().take(128).collect::<String>()
        )))
    }
}

fn json_bytes(value: &serde_json::Value) -> Vec<u8> {
    serde_json::to_vec(value).unwrap_or_default()
}

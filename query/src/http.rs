//! The query routes: `GET /v1/topics/{t}/range`, `GET /v1/topics/{t}/snapshot`,
//! `POST /v1/query` and `/v1/views`. [`api_error`] is the one place where
//! query errors become the API's statuses and codes.

use std::sync::Arc;

use axum::Router;
use axum::body::Body;
use axum::extract::{RawQuery, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use futures::stream::{self, StreamExt};
use serde::Deserialize;
use serde_json::json;
use strata_broker::http::{ApiError, ApiPath, Params, json_response, read_body};
use strata_broker::timestamp::{now_ms, parse_timestamp};

use crate::error::QueryError;
use crate::format::Format;
use crate::service::{Output, QueryService, RangeRequest};

/// Largest accepted body of a query or view request.
const MAX_QUERY_BODY: usize = 1024 * 1024;

type Service = Arc<QueryService>;

/// The query routes, to merge into the server's router.
pub fn router(service: Arc<QueryService>) -> Router {
    Router::new()
        .route("/v1/topics/{topic}/range", get(range))
        .route("/v1/topics/{topic}/snapshot", get(snapshot))
        .route("/v1/query", post(query))
        .route("/v1/views", get(list_views).post(create_view))
        .route("/v1/views/{name}", get(read_view).delete(delete_view))
        .with_state(service)
}

/// A query error as the API's error response.
pub fn api_error(e: QueryError) -> ApiError {
    let message = e.to_string();
    match e {
        QueryError::Broker(e) => e.into(),
        QueryError::Tiering(e) => strata_tiering::to_broker(e).into(),
        QueryError::InvalidRequest(_)
        | QueryError::Sql(_)
        | QueryError::Timeout(_)
        | QueryError::MemoryLimit(_) => ApiError::invalid_request(message),
        QueryError::ViewNotFound(_) => {
            ApiError::new(StatusCode::NOT_FOUND, "view_not_found", message)
        }
        QueryError::ViewExists(_) => ApiError::new(StatusCode::CONFLICT, "view_exists", message),
        QueryError::NameTaken(_) => ApiError::new(StatusCode::CONFLICT, "topic_exists", message),
        QueryError::Busy(_) => {
            let mut e = ApiError::new(StatusCode::SERVICE_UNAVAILABLE, "unavailable", message);
            e.retry_after_secs = Some(1);
            e
        }
        QueryError::Internal(_) => {
            ApiError::new(StatusCode::INTERNAL_SERVER_ERROR, "internal", message)
        }
    }
}

/// A streaming `200` response.
fn streaming(output: Output) -> Response {
    let Output {
        content_type,
        first,
        rest,
    } = output;
    let rest = stream::unfold(
        rest,
        |mut rx| async move { rx.recv().await.map(|c| (c, rx)) },
    );
    let body = Body::from_stream(stream::once(async move { Ok(first) }).chain(rest));
    let mut response = (StatusCode::OK, body).into_response();
    response
        .headers_mut()
        .insert(header::CONTENT_TYPE, HeaderValue::from_static(content_type));
    response
}

fn format_param(params: &Params, default: Format) -> Result<Format, ApiError> {
    params
        .get("format")
        .map_or(Ok(default), Format::parse)
        .map_err(api_error)
}

fn time_param(params: &Params, name: &str) -> Result<Option<i64>, ApiError> {
    params
        .get(name)
        .map(|text| {
            parse_timestamp(text).map_err(|e| ApiError::invalid_request(format!("{name}: {e}")))
        })
        .transpose()
}

async fn range(
    State(service): State<Service>,
    ApiPath(topic): ApiPath<String>,
    RawQuery(query): RawQuery,
) -> Result<Response, ApiError> {
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
    let output = service.range(request).await.map_err(api_error)?;
    Ok(streaming(output))
}

async fn snapshot(
    State(service): State<Service>,
    ApiPath(topic): ApiPath<String>,
    RawQuery(query): RawQuery,
) -> Result<Response, ApiError> {
    let params = Params::parse(query.as_deref(), &["as_of", "format"])?;
    let as_of = time_param(&params, "as_of")?.unwrap_or_else(now_ms);
    let format = format_param(&params, Format::Json)?;
    let output = service
        .snapshot(&topic, as_of, format)
        .await
        .map_err(api_error)?;
    Ok(streaming(output))
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct QueryBody {
    sql: String,
    #[serde(default)]
    format: Option<String>,
}

async fn query(
    State(service): State<Service>,
    headers: HeaderMap,
    body: Body,
) -> Result<Response, ApiError> {
    let bytes = read_body(&headers, body, MAX_QUERY_BODY).await?;
    let request: QueryBody = serde_json::from_slice(&bytes)
        .map_err(|e| ApiError::invalid_request(format!("expected {{\"sql\", \"format\"}}: {e}")))?;
    let format = request
        .format
        .as_deref()
        .map_or(Ok(Format::Json), Format::parse)
        .map_err(api_error)?;
    let output = service.sql(request.sql, format).await.map_err(api_error)?;
    Ok(streaming(output))
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct CreateView {
    name: String,
    sql: String,
}

async fn create_view(
    State(service): State<Service>,
    headers: HeaderMap,
    body: Body,
) -> Result<Response, ApiError> {
    let bytes = read_body(&headers, body, MAX_QUERY_BODY).await?;
    let request: CreateView = serde_json::from_slice(&bytes)
        .map_err(|e| ApiError::invalid_request(format!("expected {{\"name\", \"sql\"}}: {e}")))?;
    let view = service
        .create_view(&request.name, &request.sql)
        .await
        .map_err(api_error)?;
    Ok(json_response(StatusCode::CREATED, json_bytes(&json!(view))))
}

async fn list_views(State(service): State<Service>) -> Response {
    let views = service.views().list();
    json_response(StatusCode::OK, json_bytes(&json!({ "views": views })))
}

async fn read_view(
    State(service): State<Service>,
    ApiPath(name): ApiPath<String>,
    RawQuery(query): RawQuery,
) -> Result<Response, ApiError> {
    let params = Params::parse(query.as_deref(), &["format"])?;
    let format = format_param(&params, Format::Json)?;
    let output = service.read_view(&name, format).await.map_err(api_error)?;
    Ok(streaming(output))
}

async fn delete_view(
    State(service): State<Service>,
    ApiPath(name): ApiPath<String>,
) -> Result<Response, ApiError> {
    service.delete_view(&name).await.map_err(api_error)?;
    Ok(StatusCode::NO_CONTENT.into_response())
}

fn json_bytes(value: &serde_json::Value) -> Vec<u8> {
    serde_json::to_vec(value).unwrap_or_default()
}

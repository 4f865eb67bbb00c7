//! Produce, consume by offset, and offset-for-timestamp.

use std::time::Duration;

use axum::Extension;
use axum::body::Body;
use axum::extract::{RawQuery, State};
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::Response;
use strata_broker::idempotency::{body_hash, check_key};
use strata_broker::produce::{BodyFormat, parse_body};
use strata_broker::render::write_int;
use strata_broker::timestamp::{TimestampWriter, now_ms, parse_timestamp};
use strata_broker::topic::Ack;

use super::AppState;
use crate::api_error::ApiError;
use crate::auth::Principal;
use crate::quota::{Direction, Quotas};
use crate::request::{ApiPath, Params, blocking, json_response, read_body};
use crate::tiers::{self, PageRequest};

/// The header that makes a produce idempotent (API.md, "Idempotent produce").
const IDEMPOTENCY_KEY: &str = "idempotency-key";

/// Default and largest `max_records` of a consume.
const DEFAULT_MAX_RECORDS: u64 = 1000;
const MAX_MAX_RECORDS: u64 = 100_000;
/// Default and largest `max_bytes` of a consume.
const DEFAULT_MAX_BYTES: u64 = 1024 * 1024;
const MAX_MAX_BYTES: u64 = 64 * 1024 * 1024;

#[utoipa::path(post, path = "/v1/topics/{topic}/records", operation_id = "produce", tag = "records",
    params(
        ("topic" = String, Path, description = "topic name"),
        ("Idempotency-Key" = Option<String>, Header, description = "makes retries of this request answer with the first answer's offsets")),
    request_body(content(
        (crate::openapi::ProduceBody = "application/json"),
        (String = "application/x-ndjson"))),
    responses(
        (status = 200, description = "durable: every record's partition, offset and timestamp", body = crate::openapi::ProduceAnswer),
        (status = 400, description = "`invalid_request`, `invalid_record` (with `index`), `invalid_topic_name`"),
        (status = 404, description = "`topic_not_found`"),
        (status = 409, description = "`idempotency_key_reused`"),
        (status = 413, description = "`payload_too_large`")))]
pub(super) async fn produce(
    State(app): State<AppState>,
    Extension(principal): Extension<Principal>,
    ApiPath(topic): ApiPath<String>,
    headers: HeaderMap,
    body: Body,
) -> Result<Response, ApiError> {
    let topic = app.broker.topic(&topic)?;
    app.broker.check_local_budget()?;
    let content_type = headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok());
    let format = BodyFormat::from_content_type(content_type);
    let config = app.broker.config();
    // Refused before the body is read while in debt; charged before
    // anything is written.
    let meter = Quotas::meter(&principal, Direction::Produce);
    app.quotas.take(meter.as_ref(), 0)?;
    let body = read_body(&headers, body, config.max_request_bytes).await?;
    if let Some(meter) = &meter {
        app.quotas.charge(meter, body.len() as u64);
    }
    let max_record_bytes = config.max_record_bytes;
    let idempotency_key = match headers.get(IDEMPOTENCY_KEY) {
        Some(value) => Some(check_key(value.as_bytes())?.to_string()),
        None => None,
    };
    let rendered = blocking(move || {
        let records = parse_body(&body, format, max_record_bytes)?;
        let acks = match &idempotency_key {
            Some(key) => topic.produce_idempotent(&records, now_ms(), key, body_hash(&body))?,
            None => topic.produce(&records, now_ms())?,
        };
        Ok(render_acks(&acks))
    })
    .await?;
    Ok(json_response(StatusCode::OK, rendered))
}

fn render_acks(acks: &[Ack]) -> Vec<u8> {
    let mut out = Vec::with_capacity(16 + acks.len() * 72);
    out.extend_from_slice(b"{\"offsets\":[");
    let mut times = TimestampWriter::default();
    for (i, ack) in acks.iter().enumerate() {
        if i > 0 {
            out.push(b',');
        }
        out.extend_from_slice(b"{\"partition\":");
        write_int(&mut out, u64::from(ack.partition));
        out.extend_from_slice(b",\"offset\":");
        write_int(&mut out, ack.offset);
        out.extend_from_slice(b",\"timestamp\":\"");
        times.write(ack.timestamp, &mut out);
        out.extend_from_slice(b"\"}");
    }
    out.extend_from_slice(b"]}");
    out
}

#[utoipa::path(get, path = "/v1/topics/{topic}/partitions/{partition}/records", operation_id = "consume", tag = "records",
    params(
        ("topic" = String, Path, description = "topic name"),
        ("partition" = u32, Path, description = "partition number"),
        ("offset" = Option<u64>, Query, description = "first offset (default: the partition's start)"),
        ("max_records" = Option<u32>, Query, description = "1..=100000, default 1000"),
        ("max_bytes" = Option<u64>, Query, description = "1..=67108864, default 1048576"),
        ("wait_ms" = Option<u64>, Query, description = "long-poll time at the end of the log")),
    responses(
        (status = 200, description = "a page of records", body = crate::openapi::RecordPage),
        (status = 400, description = "`invalid_request`, `invalid_topic_name`"),
        (status = 404, description = "`topic_not_found`, `partition_not_found`"),
        (status = 416, description = "`offset_out_of_range`")))]
pub(super) async fn consume(
    State(app): State<AppState>,
    Extension(principal): Extension<Principal>,
    ApiPath((topic, partition)): ApiPath<(String, String)>,
    RawQuery(query): RawQuery,
) -> Result<Response, ApiError> {
    let meter = Quotas::meter(&principal, Direction::Consume);
    app.quotas.take(meter.as_ref(), 0)?;
    let params = Params::parse(
        query.as_deref(),
        &["offset", "max_records", "max_bytes", "wait_ms"],
    )?;
    let request = PageRequest {
        offset: params.u64("offset")?,
        max_records: params.u64_in("max_records", DEFAULT_MAX_RECORDS, 1, MAX_MAX_RECORDS)?,
        max_bytes: params.u64_in("max_bytes", DEFAULT_MAX_BYTES, 1, MAX_MAX_BYTES)?,
        wait: Duration::from_millis(params.u64_in(
            "wait_ms",
            0,
            0,
            app.broker.config().max_wait_ms,
        )?),
    };
    let topic = app.broker.topic(&topic)?;
    let partition = topic.partition(&partition)?.clone();
    let body = tiers::consume(
        &app.tiering,
        &topic,
        &partition,
        request,
        app.stopping.clone(),
    )
    .await?;
    if let Some(meter) = &meter {
        app.quotas.charge(meter, body.len() as u64);
    }
    Ok(json_response(StatusCode::OK, body))
}

#[utoipa::path(get, path = "/v1/topics/{topic}/partitions/{partition}/offset", operation_id = "offset_for_timestamp", tag = "records",
    params(
        ("topic" = String, Path, description = "topic name"),
        ("partition" = u32, Path, description = "partition number"),
        ("timestamp" = String, Query, description = "epoch milliseconds or RFC 3339")),
    responses(
        (status = 200, description = "the earliest offset at or after the timestamp", body = crate::openapi::OffsetAnswer),
        (status = 400, description = "`invalid_request`, `invalid_topic_name`"),
        (status = 404, description = "`topic_not_found`, `partition_not_found`")))]
pub(super) async fn offset_for_timestamp(
    State(app): State<AppState>,
    ApiPath((topic, partition)): ApiPath<(String, String)>,
    RawQuery(query): RawQuery,
) -> Result<Response, ApiError> {
    let params = Params::parse(query.as_deref(), &["timestamp"])?;
    let text = params
        .get("timestamp")
        .ok_or_else(|| ApiError::invalid_request("the timestamp parameter is required"))?;
    let target = parse_timestamp(text).map_err(ApiError::invalid_request)?;
    let topic = app.broker.topic(&topic)?;
    let partition = topic.partition(&partition)?;
    let body = tiers::offset_for_timestamp(&app.tiering, &topic, partition, target).await?;
    Ok(json_response(StatusCode::OK, body.to_string().into_bytes()))
}

//! Produce, consume by offset, and offset-for-timestamp.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use axum::Extension;
use axum::body::Body;
use axum::extract::{RawQuery, State};
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::Response;
use strata_broker::Topic;
use strata_broker::idempotency::{body_hash, check_key};
use strata_broker::produce::{BodyFormat, ProducedRecord, parse_body};
use strata_broker::render::write_int;
use strata_broker::timestamp::{TimestampWriter, now_ms, parse_timestamp};
use strata_broker::topic::Ack;

use super::{AppState, local_topic};
use crate::api_error::ApiError;
use crate::auth::Principal;
use crate::forward;
use crate::quota::{Direction, Quotas};
use crate::replication::Route;
use crate::request::{ApiPath, Params, blocking, blocking_api, json_response, read_body};
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
    let topic = local_topic(&app, &topic).await?;
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
    if topic.config().is_replicated() {
        let request = Replicated {
            body,
            format,
            max_record_bytes,
            idempotency_key,
        };
        return produce_replicated(&app, topic, &headers, request).await;
    }
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

/// A produce to a replicated topic, parsed from the request.
struct Replicated {
    body: bytes::Bytes,
    format: BodyFormat,
    max_record_bytes: usize,
    idempotency_key: Option<String>,
}

/// Each partition's records go to its leader: those led here are written
/// here, the others are passed on (at once, in parallel) to their leaders,
/// each with the hash of the whole body so that a retry deduplicates
/// whichever node splits it. Answers once every part is committed (on
/// every in-sync replica); a part that fails fails the request, and a
/// retry with the same `Idempotency-Key` completes it exactly once.
async fn produce_replicated(
    app: &AppState,
    topic: Arc<Topic>,
    headers: &HeaderMap,
    request: Replicated,
) -> Result<Response, ApiError> {
    let Replicated {
        body,
        format,
        max_record_bytes,
        idempotency_key,
    } = request;
    let hash = headers
        .get(forward::BODY_HASH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| u128::from_str_radix(v, 16).ok())
        .unwrap_or_else(|| body_hash(&body));
    let forwarded = headers.contains_key(forward::FORWARDED);
    let replication = app.replication.clone();
    let client = app.membership.client();
    let runtime = tokio::runtime::Handle::current();
    let caller = headers.clone();
    let producing = topic.clone();
    let key = idempotency_key.clone();
    let (local, remote, count, epochs) = blocking_api(move || {
        let records = parse_body(&body, format, max_record_bytes)?;
        let assignment = producing.assign(&records, key.as_deref())?;
        let mut here: Vec<usize> = Vec::new();
        let mut elsewhere: BTreeMap<String, Vec<usize>> = BTreeMap::new();
        let mut routes: BTreeMap<u32, Route> = BTreeMap::new();
        for (i, &p) in assignment.iter().enumerate() {
            let route = routes
                .entry(p)
                .or_insert_with(|| replication.route(&producing, p));
            match route {
                Route::Here => here.push(i),
                Route::Node(_, url) if !forwarded => {
                    elsewhere.entry(url.clone()).or_default().push(i)
                }
                Route::Node(..) | Route::Nobody => {
                    return Err(ApiError::unavailable(
                        format!(
                            "partition {p} of topic {:?} has no leader this node can reach now",
                            producing.name()
                        ),
                        1,
                    ));
                }
            }
        }
        let local: Vec<u32> = routes
            .iter()
            .filter(|(_, r)| **r == Route::Here)
            .map(|(p, _)| *p)
            .collect();
        let epochs = replication.check_writable(&producing, &local)?;
        let mut remote = Vec::new();
        for (url, indexes) in elsewhere {
            let part: Vec<(&ProducedRecord<'_>, u32)> = indexes
                .iter()
                .map(|&i| (&records[i], assignment[i]))
                .collect();
            let sub_body = forward::render_records(&part)?;
            let target = format!(
                "{}/v1/topics/{}/records",
                url.trim_end_matches('/'),
                producing.name()
            );
            let mut extra = vec![(forward::BODY_HASH, format!("{hash:x}"))];
            if let Some(key) = &key {
                extra.push((IDEMPOTENCY_KEY, key.clone()));
            }
            let client = client.clone();
            let caller = caller.clone();
            let sending = runtime.spawn(async move {
                forward::send(
                    &client,
                    reqwest::Method::POST,
                    &target,
                    &caller,
                    &extra,
                    "application/x-ndjson",
                    sub_body,
                )
                .await
            });
            remote.push((indexes, sending));
        }
        let acks = if here.is_empty() {
            Vec::new()
        } else {
            let mine: Vec<ProducedRecord<'_>> = here.iter().map(|&i| records[i].clone()).collect();
            let mine_assigned: Vec<u32> = here.iter().map(|&i| assignment[i]).collect();
            let idempotency = key.as_deref().map(|k| (k, hash));
            producing.produce_assigned(&mine, &mine_assigned, now_ms(), idempotency)?
        };
        Ok((
            here.into_iter().zip(acks).collect::<Vec<_>>(),
            remote,
            records.len(),
            epochs,
        ))
    })
    .await?;
    let mut ends: BTreeMap<u32, u64> = BTreeMap::new();
    for (_, ack) in &local {
        let end = ends.entry(ack.partition).or_default();
        *end = (*end).max(ack.offset + 1);
    }
    let ends: Vec<(u32, u64)> = ends.into_iter().collect();
    app.replication
        .await_committed(&topic, &ends, &epochs)
        .await?;
    let mut acks: Vec<Option<Ack>> = vec![None; count];
    for (i, ack) in local {
        acks[i] = Some(ack);
    }
    for (indexes, sending) in remote {
        let (status, headers, body) = sending
            .await
            .map_err(|e| ApiError::internal(e.to_string()))??;
        if status != StatusCode::OK {
            return Ok(forward::pass_on(status, &headers, body));
        }
        let answer: serde_json::Value = serde_json::from_slice(&body)
            .map_err(|e| ApiError::internal(format!("a leader's answer: {e}")))?;
        let offsets = answer["offsets"].as_array().cloned().unwrap_or_default();
        if offsets.len() != indexes.len() {
            return Err(ApiError::internal("a leader answered for other records"));
        }
        for (i, offset) in indexes.into_iter().zip(offsets) {
            let timestamp = offset["timestamp"]
                .as_str()
                .and_then(|t| parse_timestamp(t).ok())
                .unwrap_or_default();
            acks[i] = Some(Ack {
                partition: offset["partition"].as_u64().unwrap_or_default() as u32,
                offset: offset["offset"].as_u64().unwrap_or_default(),
                timestamp,
            });
        }
    }
    let acks: Vec<Ack> = acks.into_iter().flatten().collect();
    if acks.len() != count {
        return Err(ApiError::internal(
            "a record of the request has no acknowledgement",
        ));
    }
    Ok(json_response(StatusCode::OK, render_acks(&acks)))
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
    headers: HeaderMap,
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
    let topic = local_topic(&app, &topic).await?;
    let partition = topic.partition(&partition)?.clone();
    match app.replication.read_route(&topic, partition.id()) {
        Route::Here => {}
        Route::Node(_, url) if !headers.contains_key(forward::FORWARDED) => {
            let path = format!(
                "{}/v1/topics/{}/partitions/{}/records?{}",
                url.trim_end_matches('/'),
                topic.name(),
                partition.id(),
                query.as_deref().unwrap_or("")
            );
            return forward::relay(
                &app.membership.client(),
                reqwest::Method::GET,
                &path,
                &headers,
            )
            .await;
        }
        Route::Node(..) | Route::Nobody => {
            return Err(ApiError::unavailable(
                format!(
                    "partition {} of topic {:?} has no replica this node can reach now",
                    partition.id(),
                    topic.name()
                ),
                1,
            ));
        }
    }
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
    let topic = local_topic(&app, &topic).await?;
    let partition = topic.partition(&partition)?;
    let body = tiers::offset_for_timestamp(&app.tiering, &topic, partition, target).await?;
    Ok(json_response(StatusCode::OK, body.to_string().into_bytes()))
}

//! Produce, consume by offset, and offset-for-timestamp.

use std::ops::ControlFlow;
use std::sync::Arc;
use std::time::Duration;

use axum::body::Body;
use axum::extract::{RawQuery, State};
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::Response;

use super::render::{write_cold_record, write_int, write_record};
use super::{ApiError, ApiPath, AppState, Params, blocking, json_response, read_body};
use crate::cold::ColdRecord;
use crate::error::BrokerError;
use crate::partition::Partition;
use crate::produce::{BodyFormat, parse_body};
use crate::timestamp::{TimestampWriter, now_ms, parse_timestamp};
use crate::topic::{Ack, Topic};

/// Default and largest `max_records` of a consume.
const DEFAULT_MAX_RECORDS: u64 = 1000;
const MAX_MAX_RECORDS: u64 = 100_000;
/// Default and largest `max_bytes` of a consume.
const DEFAULT_MAX_BYTES: u64 = 1024 * 1024;
const MAX_MAX_BYTES: u64 = 64 * 1024 * 1024;

pub(super) async fn produce(
    State(app): State<AppState>,
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
    let body = read_body(&headers, body, config.max_request_bytes).await?;
    let max_record_bytes = config.max_record_bytes;
    let rendered = blocking(move || {
        let records = parse_body(&body, format, max_record_bytes)?;
        let acks = topic.produce(&records, now_ms())?;
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

pub(super) async fn consume(
    State(app): State<AppState>,
    ApiPath((topic, partition)): ApiPath<(String, String)>,
    RawQuery(query): RawQuery,
) -> Result<Response, ApiError> {
    let params = Params::parse(
        query.as_deref(),
        &["offset", "max_records", "max_bytes", "wait_ms"],
    )?;
    let offset = params.u64("offset")?;
    let max_records = params.u64_in("max_records", DEFAULT_MAX_RECORDS, 1, MAX_MAX_RECORDS)?;
    let max_bytes = params.u64_in("max_bytes", DEFAULT_MAX_BYTES, 1, MAX_MAX_BYTES)?;
    let wait_ms = params.u64_in("wait_ms", 0, 0, app.broker.config().max_wait_ms)?;
    let topic = app.broker.topic(&topic)?;
    let partition = topic.partition(&partition)?.clone();
    let cold = app
        .cold
        .as_ref()
        .map(|c| (c, c.stats(topic.name(), partition.id())));
    let local_start = partition.start_offset();
    let start = match cold {
        Some((_, stats)) if stats.files > 0 => stats.start_offset.min(local_start),
        _ => local_start,
    };
    let offset = offset.unwrap_or(start);
    let end = partition.end_offset();
    if offset < start || offset > end {
        return Err(BrokerError::OffsetOutOfRange {
            offset,
            start_offset: start,
            end_offset: end,
        }
        .into());
    }
    let cold = cold.map(|(c, _)| c.clone());
    if let Some(cold) = cold.as_ref().filter(|_| offset < local_start) {
        let records = cold
            .read(topic.name(), partition.id(), offset, max_records, max_bytes)
            .await?;
        let body = render_cold(&topic, partition.id(), offset, &records, end);
        return Ok(json_response(StatusCode::OK, body));
    }
    if offset == end && wait_ms > 0 {
        wait_for_data(
            &partition,
            offset,
            Duration::from_millis(wait_ms),
            app.stopping.clone(),
        )
        .await;
    }
    let (hot_topic, hot_partition) = (topic.clone(), partition.clone());
    let read =
        blocking(move || read_records(&hot_topic, &hot_partition, offset, max_records, max_bytes))
            .await;
    match (read, cold) {
        (Ok(body), _) => Ok(json_response(StatusCode::OK, body)),
        // Local retention deleted the segment since `local_start` was read:
        // it is committed to the cold tier, so read it from there.
        (Err(e), Some(cold)) if e.code == "offset_out_of_range" => {
            let records = cold
                .read(topic.name(), partition.id(), offset, max_records, max_bytes)
                .await?;
            Ok(json_response(
                StatusCode::OK,
                render_cold(&topic, partition.id(), offset, &records, end),
            ))
        }
        (Err(e), _) => Err(e),
    }
}

/// A consume page of records read back from the cold tier.
fn render_cold(
    topic: &Topic,
    partition: u32,
    from: u64,
    records: &[ColdRecord],
    end: u64,
) -> Vec<u8> {
    let mut out = Vec::with_capacity(4096);
    out.extend_from_slice(b"{\"records\":[");
    let mut times = TimestampWriter::default();
    let mut bytes = 0u64;
    for (i, record) in records.iter().enumerate() {
        if i > 0 {
            out.push(b',');
        }
        write_cold_record(&mut out, &mut times, partition, record);
        bytes += record.data_len() as u64;
    }
    let next = records.last().map_or(from, |r| r.offset + 1);
    out.extend_from_slice(b"],\"next_offset\":");
    write_int(&mut out, next);
    out.extend_from_slice(b",\"end_offset\":");
    write_int(&mut out, end);
    out.push(b'}');
    topic.metrics().records_out.increment(records.len() as u64);
    topic.metrics().bytes_out.increment(bytes);
    out
}

/// Long poll: returns once `end_offset` passes `offset`, the wait ends, or
/// the server begins shutting down. Woken by the partition, never polling.
async fn wait_for_data(
    partition: &Partition,
    offset: u64,
    wait: Duration,
    mut stopping: tokio::sync::watch::Receiver<bool>,
) {
    let mut end = partition.subscribe();
    let grown = end.wait_for(|&e| e > offset);
    tokio::select! {
        _ = tokio::time::timeout(wait, grown) => {}
        _ = stopping.wait_for(|&s| s) => {}
    }
}

fn read_records(
    topic: &Topic,
    partition: &Arc<Partition>,
    offset: u64,
    max_records: u64,
    max_bytes: u64,
) -> Result<Vec<u8>, BrokerError> {
    let mut cursor = partition.cursor(offset)?;
    let end = cursor.end_offset();
    let mut out = Vec::with_capacity(4096);
    out.extend_from_slice(b"{\"records\":[");
    let (mut count, mut bytes) = (0u64, 0u64);
    let id = partition.id();
    let mut times = TimestampWriter::default();
    let next = cursor.for_each_record(|record| {
        let size = record.data_len() as u64;
        if count >= max_records || (count > 0 && bytes + size > max_bytes) {
            return ControlFlow::Break(());
        }
        if count > 0 {
            out.push(b',');
        }
        write_record(&mut out, &mut times, id, record);
        count += 1;
        bytes += size;
        ControlFlow::Continue(())
    })?;
    out.extend_from_slice(b"],\"next_offset\":");
    write_int(&mut out, next);
    out.extend_from_slice(b",\"end_offset\":");
    write_int(&mut out, end);
    out.push(b'}');
    topic.metrics().records_out.increment(count);
    topic.metrics().bytes_out.increment(bytes);
    Ok(out)
}

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
    let partition = topic.partition(&partition)?.clone();
    let in_cold = match &app.cold {
        Some(cold) => {
            cold.offset_for_timestamp(topic.name(), partition.id(), target)
                .await?
        }
        None => None,
    };
    let found = match in_cold {
        Some(found) => (Some(found), partition.end_offset()),
        None => {
            blocking(move || {
                Ok((
                    partition.offset_for_timestamp(target)?,
                    partition.end_offset(),
                ))
            })
            .await?
        }
    };
    let body = match found {
        (Some((offset, ts)), _) => {
            serde_json::json!({"offset": offset, "timestamp": crate::timestamp::format_timestamp(ts)})
        }
        (None, end) => serde_json::json!({"offset": end, "timestamp": null}),
    };
    Ok(json_response(StatusCode::OK, body.to_string().into_bytes()))
}

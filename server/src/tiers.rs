//! The union of the hot and the cold tier for the reads the broker's log
//! and the tiering crate each answer half of: consume by offset,
//! offset-for-timestamp and describe. Offsets below a partition's
//! local start are read from the cold tier, the rest from local segments,
//! invisibly to the caller. (Range reads and SQL take their union in the
//! query crate, at a pinned snapshot of both tiers.)

use std::ops::ControlFlow;
use std::sync::Arc;
use std::time::Duration;

use serde_json::{Value, json};
use strata_broker::page::PageBudget;
use strata_broker::render::{write_int, write_record};
use strata_broker::timestamp::{TimestampWriter, format_timestamp};
use strata_broker::{BrokerError, Partition, Topic};
use strata_tiering::{ColdRecord, ColdStats, Tiering};
use tokio::sync::watch;

use crate::api_error::ApiError;
use crate::render::write_cold_record;
use crate::request::blocking;

/// The first offset still readable from either tier.
pub fn start_offset(local_start: u64, cold: &ColdStats) -> u64 {
    if cold.files > 0 {
        cold.start_offset.min(local_start)
    } else {
        local_start
    }
}

/// What one consume asks for.
#[derive(Debug, Clone, Copy)]
pub struct PageRequest {
    /// First offset; the partition's start when absent.
    pub offset: Option<u64>,
    pub max_records: u64,
    /// About how many bytes of keys, values and headers (at least one
    /// record is returned when any exists).
    pub max_bytes: u64,
    /// How long to wait for a record at the end of the partition.
    pub wait: Duration,
}

/// One page of a consume, as the API's JSON response body.
pub async fn consume(
    tiering: &Tiering,
    topic: &Arc<Topic>,
    partition: &Arc<Partition>,
    request: PageRequest,
    stopping: watch::Receiver<bool>,
) -> Result<Vec<u8>, ApiError> {
    let PageRequest {
        offset,
        max_records,
        max_bytes,
        wait,
    } = request;
    let cold = tiering.cold_stats(topic.name(), partition.id());
    let local_start = partition.start_offset();
    let start = start_offset(local_start, &cold);
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
    let read_cold = || async {
        let records = tiering
            .read_records(topic.name(), partition.id(), offset, max_records, max_bytes)
            .await?;
        Ok::<_, ApiError>(cold_page(topic, partition.id(), offset, &records, end))
    };
    if offset < local_start {
        return read_cold().await;
    }
    if offset == end && !wait.is_zero() {
        wait_for_data(topic, partition, offset, wait, stopping).await;
    }
    let (hot_topic, hot_partition) = (topic.clone(), partition.clone());
    let read =
        blocking(move || hot_page(&hot_topic, &hot_partition, offset, max_records, max_bytes))
            .await;
    match read {
        Ok(body) => Ok(body),
        // Local retention deleted the segment since `local_start` was read:
        // it is committed to the cold tier, so read it from there.
        Err(e) if e.code == "offset_out_of_range" => read_cold().await,
        Err(e) => Err(e),
    }
}

/// Long poll: returns once `end_offset` passes `offset`, the wait ends, or
/// the server begins shutting down. Woken by the partition, never polling.
async fn wait_for_data(
    topic: &Topic,
    partition: &Partition,
    offset: u64,
    wait: Duration,
    mut stopping: watch::Receiver<bool>,
) {
    let mut end = partition.subscribe();
    // Counted once subscribed: from here on no record can be missed.
    let _waiting = LongPoll::start(topic);
    let grown = end.wait_for(|&e| e > offset);
    tokio::select! {
        _ = tokio::time::timeout(wait, grown) => {}
        _ = stopping.wait_for(|&s| s) => {}
    }
}

/// Counts a waiting consume in `strata_consume_long_polls` while it lives.
struct LongPoll(metrics::Gauge);

impl LongPoll {
    fn start(topic: &Topic) -> Self {
        let gauge =
            metrics::gauge!("strata_consume_long_polls", "topic" => topic.name().to_string());
        gauge.increment(1.0);
        Self(gauge)
    }
}

impl Drop for LongPoll {
    fn drop(&mut self) {
        self.0.decrement(1.0);
    }
}

/// A consume page read from local segments.
fn hot_page(
    topic: &Topic,
    partition: &Arc<Partition>,
    offset: u64,
    max_records: u64,
    max_bytes: u64,
) -> Result<Vec<u8>, BrokerError> {
    let mut cursor = partition.cursor(offset)?;
    let end = cursor.end_offset();
    let mut out = page_start();
    let mut page = PageBudget::new(max_records, max_bytes);
    let id = partition.id();
    let mut times = TimestampWriter::default();
    let next = cursor.for_each_record(|record| {
        if !page.admit(record.data_len()) {
            return ControlFlow::Break(());
        }
        if page.records() > 1 {
            out.push(b',');
        }
        write_record(&mut out, &mut times, id, record);
        ControlFlow::Continue(())
    })?;
    page_end(&mut out, next, end);
    topic.metrics().records_out.increment(page.records());
    topic.metrics().bytes_out.increment(page.bytes());
    Ok(out)
}

/// A consume page of records read back from the cold tier (which cut the
/// page by the same rules as [`hot_page`]).
fn cold_page(
    topic: &Topic,
    partition: u32,
    from: u64,
    records: &[ColdRecord],
    end: u64,
) -> Vec<u8> {
    let mut out = page_start();
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
    page_end(&mut out, next, end);
    topic.metrics().records_out.increment(records.len() as u64);
    topic.metrics().bytes_out.increment(bytes);
    out
}

fn page_start() -> Vec<u8> {
    let mut out = Vec::with_capacity(4096);
    out.extend_from_slice(b"{\"records\":[");
    out
}

fn page_end(out: &mut Vec<u8>, next: u64, end: u64) {
    out.extend_from_slice(b"],\"next_offset\":");
    write_int(out, next);
    out.extend_from_slice(b",\"end_offset\":");
    write_int(out, end);
    out.push(b'}');
}

/// The earliest offset whose timestamp is at or after `target`, across
/// both tiers, as the API's JSON (`{"offset", "timestamp"}`; the end
/// offset and `null` when there is none).
pub async fn offset_for_timestamp(
    tiering: &Tiering,
    topic: &Topic,
    partition: Arc<Partition>,
    target: i64,
) -> Result<Value, ApiError> {
    let in_cold = tiering
        .offset_for_timestamp(topic.name(), partition.id(), target)
        .await?;
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
    Ok(match found {
        (Some((offset, ts)), _) => json!({"offset": offset, "timestamp": format_timestamp(ts)}),
        (None, end) => json!({"offset": end, "timestamp": null}),
    })
}

/// The API's topic description, hot and cold tiers together.
pub fn describe_topic(topic: &Topic, tiering: &Tiering) -> Value {
    let partitions: Vec<Value> = topic
        .partitions()
        .iter()
        .map(|p| {
            let hot = p.stats();
            let cold = tiering.cold_stats(topic.name(), p.id());
            let min = [hot.min_timestamp, cold.min_timestamp]
                .into_iter()
                .flatten()
                .min();
            let max = [hot.max_timestamp, cold.max_timestamp]
                .into_iter()
                .flatten()
                .max();
            json!({
                "partition": hot.partition,
                "start_offset": start_offset(hot.start_offset, &cold),
                "local_start_offset": hot.start_offset,
                "end_offset": hot.end_offset,
                "hot": {"segments": hot.segments, "bytes": hot.bytes},
                "cold": {"files": cold.files, "bytes": cold.bytes, "end_offset": cold.end_offset},
                "min_timestamp": min.map(format_timestamp),
                "max_timestamp": max.map(format_timestamp),
            })
        })
        .collect();
    json!({
        "name": topic.name(),
        "config": topic.config(),
        "partitions": partitions,
    })
}

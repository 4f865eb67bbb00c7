//! Consume by offset, offset-for-timestamp and describe, across both
//! tiers. Each pins the partition first ([`strata_query::pin`], the
//! protocol range reads and SQL use too): offsets below the pinned cold
//! tier's end are read from Parquet, the rest from the pinned local
//! segments, so each offset is read exactly once whatever the offloader and
//! retention do meanwhile, invisibly to the caller.

use std::ops::ControlFlow;
use std::sync::Arc;
use std::time::Duration;

use serde_json::{Value, json};
use strata_broker::page::PageBudget;
use strata_broker::render::{write_int, write_record};
use strata_broker::timestamp::{TimestampWriter, format_timestamp};
use strata_broker::{BrokerError, Partition, Topic};
use strata_query::pin::{PinnedPartition, pin_partition};
use strata_tiering::{ColdRecord, Tiering};
use tokio::sync::watch;

use crate::api_error::ApiError;
use crate::render::write_cold_record;
use crate::request::blocking;

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
    let mut pinned = pin_partition(tiering, topic.name(), partition).await?;
    let offset = offset.unwrap_or_else(|| pinned.start_offset());
    check_offset(&pinned, offset)?;
    if offset == pinned.end_offset() && !wait.is_zero() {
        // The pin would hide what arrives meanwhile: wait unpinned (so
        // retention is not held up by a waiting consumer), then pin again.
        drop(pinned);
        wait_for_data(topic, partition, offset, wait, stopping).await;
        pinned = pin_partition(tiering, topic.name(), partition).await?;
        check_offset(&pinned, offset)?;
    }
    if offset < pinned.cold_end() {
        let mut records = tiering
            .read_pinned_records(pinned.cold(), offset, max_records, max_bytes)
            .await?;
        // The manifest may reach past the pinned hot end (a lost disk).
        records.retain(|r| r.offset < pinned.cold_end());
        return Ok(cold_page(topic, &pinned, offset, &records));
    }
    let topic = topic.clone();
    blocking(move || hot_page(&topic, &pinned, offset, max_records, max_bytes)).await
}

/// `OffsetOutOfRange` unless `offset` is within what `pinned` can read.
fn check_offset(pinned: &PinnedPartition, offset: u64) -> Result<(), BrokerError> {
    let (start, end) = (pinned.start_offset(), pinned.end_offset());
    if offset < start || offset > end {
        return Err(BrokerError::OffsetOutOfRange {
            offset,
            start_offset: start,
            end_offset: end,
        });
    }
    Ok(())
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

/// A consume page read from the pinned local segments.
fn hot_page(
    topic: &Topic,
    pinned: &PinnedPartition,
    offset: u64,
    max_records: u64,
    max_bytes: u64,
) -> Result<Vec<u8>, BrokerError> {
    let end = pinned.end_offset();
    let mut cursor = pinned.hot().cursor(offset, end)?;
    let mut out = page_start();
    let mut page = PageBudget::new(max_records, max_bytes);
    let mut times = TimestampWriter::default();
    let next = cursor.for_each_record(|record| {
        if !page.admit(record.data_len()) {
            return ControlFlow::Break(());
        }
        if page.records() > 1 {
            out.push(b',');
        }
        write_record(&mut out, &mut times, pinned.id, record);
        ControlFlow::Continue(())
    })?;
    page_end(&mut out, next, end);
    topic.metrics().records_out.increment(page.records());
    topic.metrics().bytes_out.increment(page.bytes());
    Ok(out)
}

/// A consume page of records read back from the pinned cold tier (which
/// cut the page by the same rules as [`hot_page`]).
fn cold_page(
    topic: &Topic,
    pinned: &PinnedPartition,
    from: u64,
    records: &[ColdRecord],
) -> Vec<u8> {
    let mut out = page_start();
    let mut times = TimestampWriter::default();
    let mut bytes = 0u64;
    for (i, record) in records.iter().enumerate() {
        if i > 0 {
            out.push(b',');
        }
        write_cold_record(&mut out, &mut times, pinned.id, record);
        bytes += record.data_len() as u64;
    }
    let next = records.last().map_or(from, |r| r.offset + 1);
    page_end(&mut out, next, pinned.end_offset());
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
    partition: &Partition,
    target: i64,
) -> Result<Value, ApiError> {
    let pinned = Arc::new(pin_partition(tiering, topic.name(), partition).await?);
    let in_cold = tiering
        .pinned_offset_for_timestamp(pinned.cold(), target)
        .await?;
    let found = match in_cold {
        Some(found) => Some(found),
        None => {
            let pinned = pinned.clone();
            blocking(move || pinned.hot().offset_for_timestamp(target)).await?
        }
    };
    Ok(match found {
        Some((offset, ts)) => json!({"offset": offset, "timestamp": format_timestamp(ts)}),
        None => json!({"offset": pinned.end_offset(), "timestamp": null}),
    })
}

/// The API's topic description, hot and cold tiers together, each
/// partition as one pin sees it, with its leader, replicas, in-sync
/// replicas and leader epoch (a topic with one replica is this node's:
/// it leads it at epoch 0).
pub async fn describe_topic(
    app: &crate::routes::AppState,
    topic: &Topic,
) -> Result<Value, ApiError> {
    let tiering = &app.tiering;
    let me = app.membership.id().to_string();
    let mut partitions = Vec::with_capacity(topic.partitions().len());
    let mut unindexed = 0;
    // One read of the index for the whole topic (a topic may have
    // thousands of partitions).
    let indexed = app
        .query
        .key_index()
        .progress_of(topic.name(), topic.partitions().len() as u32)
        .unwrap_or_default();
    for p in topic.partitions() {
        let state = app.replication.state(topic.name(), p.id());
        let (leader, replicas, isr, leader_epoch) = match &state {
            Some(s) => (
                json!(s.leader.as_ref().map(|l| l.to_string())),
                json!(s.replicas.iter().map(|r| r.to_string()).collect::<Vec<_>>()),
                json!(s.isr.iter().map(|r| r.node.to_string()).collect::<Vec<_>>()),
                s.leader_epoch,
            ),
            None => (json!(me), json!([me]), json!([me]), 0),
        };
        let pinned = pin_partition(tiering, topic.name(), p).await?;
        let indexed = indexed.get(p.id() as usize).copied().flatten().unwrap_or(0);
        unindexed += pinned
            .end_offset()
            .saturating_sub(indexed.max(pinned.start_offset()));
        let hot = pinned.hot().stats(p.id());
        let cold = pinned.cold_stats();
        let min = [hot.min_timestamp, cold.min_timestamp]
            .into_iter()
            .flatten()
            .min();
        let max = [hot.max_timestamp, cold.max_timestamp]
            .into_iter()
            .flatten()
            .max();
        partitions.push(json!({
            "partition": hot.partition,
            "start_offset": pinned.start_offset(),
            "local_start_offset": hot.start_offset,
            "end_offset": hot.end_offset,
            "hot": {"segments": hot.segments, "bytes": hot.bytes},
            "cold": {"files": cold.files, "bytes": cold.bytes, "end_offset": cold.end_offset},
            "min_timestamp": min.map(format_timestamp),
            "max_timestamp": max.map(format_timestamp),
            "leader": leader,
            "replicas": replicas,
            "isr": isr,
            "leader_epoch": leader_epoch,
        }));
    }
    // A topic is indexed from its first lookup by key on.
    let indexes = if indexed.iter().any(Option::is_some) {
        json!([{"kind": "latest_by_key", "records_behind": unindexed}])
    } else {
        json!([])
    };
    let table = tiering
        .table_info(topic.name())
        .map(|t| json!({"format": t.format, "version": t.version, "location": t.location}));
    Ok(json!({
        "name": topic.name(),
        "config": topic.config(),
        "partitions": partitions,
        "indexes": indexes,
        "table": table,
    }))
}

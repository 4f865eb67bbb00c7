//! A leader's side of replication: its followers' fetches (each one also
//! the follower's ack of everything below the offset it asks for) and
//! their questions about where an epoch ends (KIP-101).

use std::time::Instant;

use serde::Serialize;
use strata_broker::Partition;
use strata_broker::epochs::EpochStart;
use strata_cluster::Replica;

use super::{Replication, Role, key};
use crate::api_error::ApiError;
use crate::request::blocking;

/// A follower's fetch.
#[derive(Debug, Clone)]
pub struct FetchRequest {
    /// The follower's durable log end: where to read from.
    pub offset: u64,
    /// The leader epoch the follower follows.
    pub leader_epoch: u64,
    pub replica: Replica,
    /// The high watermark the follower knows: a change wakes the long poll.
    pub high_watermark: u64,
    pub max_bytes: usize,
}

/// What a fetch returns.
#[derive(Debug, Clone)]
pub struct FetchAnswer {
    /// Whole batches, as in the leader's log.
    pub bytes: Vec<u8>,
    pub high_watermark: u64,
    /// The leader-epoch entries from the fetch offset on.
    pub epochs: Vec<EpochStart>,
}

/// Where an epoch ends in the leader's log.
#[derive(Debug, Clone, Serialize)]
pub struct EpochAnswer {
    /// The newest epoch at or below the one asked for, `null` when the
    /// leader's history starts later.
    pub epoch: Option<u64>,
    /// Where that epoch ends (or the history starts).
    pub end_offset: u64,
}

impl Replication {
    fn led(
        &self,
        topic: &str,
        p: u32,
        leader_epoch: u64,
    ) -> Result<std::sync::Arc<Partition>, ApiError> {
        let topic = self.broker.topic(topic)?;
        let partition = topic
            .partitions()
            .get(p as usize)
            .cloned()
            .ok_or_else(|| ApiError::not_leader(format!("no partition {p}")))?;
        let inner = self.inner.lock();
        match inner.roles.get(&key(topic.name(), p)) {
            Some(Role::Leader(progress)) if progress.leader_epoch() == leader_epoch => {
                Ok(partition)
            }
            Some(Role::Leader(progress)) => Err(ApiError::not_leader(format!(
                "this node leads at epoch {}, not {leader_epoch}",
                progress.leader_epoch()
            ))),
            _ => Err(ApiError::not_leader(format!(
                "this node does not lead partition {p} of {:?}",
                topic.name()
            ))),
        }
    }

    /// Answers a follower's fetch: records its position (its ack), moves
    /// the high watermark, waits up to the fetch wait at the log end, and
    /// returns the batches from its offset. An observer's fetch (a node
    /// with no replica of the partition) is answered alike, but its
    /// position counts for nothing.
    pub async fn serve_fetch(
        &self,
        topic: &str,
        p: u32,
        request: FetchRequest,
    ) -> Result<FetchAnswer, ApiError> {
        let partition = self.led(topic, p, request.leader_epoch)?;
        let hw = {
            let mut inner = self.inner.lock();
            // A node without a replica observes: it is served, but its
            // position is no acknowledgement and never counts for the ISR.
            let observer = !inner
                .map
                .state(topic, p)
                .is_some_and(|s| s.replicas.contains(&request.replica.node));
            let Some(Role::Leader(progress)) = inner.roles.get_mut(&key(topic, p)) else {
                return Err(ApiError::not_leader("leadership moved".to_string()));
            };
            let end = partition.log_end_offset();
            if request.offset > end {
                return Err(ApiError::diverged(format!(
                    "the follower's log ends at {}, past the leader's end {end}",
                    request.offset
                )));
            }
            if observer {
                None
            } else {
                if progress.on_fetch(&request.replica, request.offset, end, Instant::now()) {
                    tracing::info!(topic, partition = p, replica = %request.replica, "a replica caught up");
                }
                Some(progress.high_watermark(end))
            }
        };
        if let Some(hw) = hw {
            partition.set_high_watermark(Some(hw));
        }
        if request.offset == partition.log_end_offset()
            && partition.end_offset() <= request.high_watermark
        {
            let mut log_end = partition.subscribe_log_end();
            let mut visible = partition.subscribe();
            let mut stopping = self.stopping.clone();
            tokio::select! {
                _ = log_end.wait_for(|&e| e > request.offset) => {}
                _ = visible.wait_for(|&v| v > request.high_watermark) => {}
                _ = tokio::time::sleep(self.config.fetch_wait) => {}
                _ = stopping.wait_for(|&s| s) => {}
            }
        }
        let reading = partition.clone();
        let (offset, max_bytes) = (request.offset, request.max_bytes);
        let fetched = blocking(move || reading.read_log(offset, max_bytes)).await?;
        Ok(FetchAnswer {
            bytes: fetched.bytes,
            high_watermark: partition.end_offset(),
            epochs: partition.leader_epochs().since(request.offset),
        })
    }

    /// Where `epoch` ends in this leader's log.
    pub fn serve_epoch_end(
        &self,
        topic: &str,
        p: u32,
        epoch: u64,
        leader_epoch: u64,
    ) -> Result<EpochAnswer, ApiError> {
        let partition = self.led(topic, p, leader_epoch)?;
        let history = partition.leader_epochs();
        Ok(match partition.epoch_end(epoch) {
            Some(found) => EpochAnswer {
                epoch: Some(found.epoch),
                end_offset: found.start,
            },
            None => EpochAnswer {
                epoch: None,
                end_offset: history
                    .entries()
                    .first()
                    .map_or(partition.start_offset(), |e| e.start),
            },
        })
    }
}

/// The `Strata-Leader-Epochs` header: `epoch:start` pairs.
pub fn render_epochs(epochs: &[EpochStart]) -> String {
    epochs
        .iter()
        .map(|e| format!("{}:{}", e.epoch, e.start))
        .collect::<Vec<_>>()
        .join(",")
}

/// Reads a `Strata-Leader-Epochs` header.
pub fn parse_epochs(text: &str) -> Option<Vec<EpochStart>> {
    text.split(',')
        .filter(|s| !s.is_empty())
        .map(|pair| {
            let (epoch, start) = pair.split_once(':')?;
            Some(EpochStart {
                epoch: epoch.parse().ok()?,
                start: start.parse().ok()?,
            })
        })
        .collect()
}

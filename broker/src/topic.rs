//! A topic: its configuration, its partitions, and the produce path that
//! assigns records to partitions and appends them.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use serde::{Deserialize, Serialize};

use crate::batch::{ATTR_LOG_APPEND_TIME, BatchBuilder, EncodedBatch, Header};
use crate::config::{TimestampType, TopicConfig};
use crate::error::{BrokerError, Result};
use crate::partition::{LogConfig, Partition};
use crate::partitioner::partition_for_key;
use crate::produce::ProducedRecord;

/// What `topic.json` holds.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TopicMeta {
    pub name: String,
    pub partitions: u32,
    pub config: TopicConfig,
}

/// Where a produced record landed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Ack {
    pub partition: u32,
    pub offset: u64,
    pub timestamp: i64,
}

/// Per-topic counters for `/metrics`.
#[derive(Debug)]
pub struct TopicMetrics {
    pub records_in: metrics::Counter,
    pub bytes_in: metrics::Counter,
    pub records_out: metrics::Counter,
    pub bytes_out: metrics::Counter,
}

impl TopicMetrics {
    fn new(topic: &str) -> Self {
        let label = || [("topic", topic.to_string())];
        Self {
            records_in: metrics::counter!("strata_produce_records_total", &label()),
            bytes_in: metrics::counter!("strata_produce_bytes_total", &label()),
            records_out: metrics::counter!("strata_consume_records_total", &label()),
            bytes_out: metrics::counter!("strata_consume_bytes_total", &label()),
        }
    }
}

/// An open topic.
#[derive(Debug)]
pub struct Topic {
    meta: TopicMeta,
    dir: PathBuf,
    partitions: Vec<Arc<Partition>>,
    next_spread: AtomicU64,
    metrics: TopicMetrics,
}

impl Topic {
    /// Opens every partition of a topic stored in `dir`.
    pub(crate) fn open(dir: &Path, meta: TopicMeta, index_interval_bytes: u32) -> Result<Self> {
        let log_config = LogConfig {
            segment_bytes: meta.config.segment_bytes,
            segment_ms: meta.config.segment_ms,
            index_interval_bytes,
        };
        let partitions = (0..meta.partitions)
            .map(|p| Partition::open(p, &dir.join(p.to_string()), log_config).map(Arc::new))
            .collect::<Result<Vec<_>>>()?;
        Ok(Self {
            metrics: TopicMetrics::new(&meta.name),
            meta,
            dir: dir.to_path_buf(),
            partitions,
            next_spread: AtomicU64::new(0),
        })
    }

    /// Name, partition count and configuration, as stored in `topic.json`.
    pub fn meta(&self) -> &TopicMeta {
        &self.meta
    }

    /// The topic's name.
    pub fn name(&self) -> &str {
        &self.meta.name
    }

    /// The effective configuration.
    pub fn config(&self) -> &TopicConfig {
        &self.meta.config
    }

    /// The directory holding `topic.json` and one directory per partition.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// All partitions, by number.
    pub fn partitions(&self) -> &[Arc<Partition>] {
        &self.partitions
    }

    /// Counters for `/metrics`.
    pub fn metrics(&self) -> &TopicMetrics {
        &self.metrics
    }

    /// A partition by the text of its number (as it appears in a URL).
    pub fn partition(&self, text: &str) -> Result<&Arc<Partition>> {
        let not_found = || BrokerError::PartitionNotFound {
            topic: self.meta.name.clone(),
            partition: text.chars().take(40).collect(),
            count: self.meta.partitions,
        };
        let digits = !text.is_empty() && text.bytes().all(|b| b.is_ascii_digit());
        if !digits || (text.len() > 1 && text.starts_with('0')) {
            return Err(BrokerError::InvalidRequest(format!(
                "partition {text:?} is not a partition number"
            )));
        }
        let number: u32 = text.parse().map_err(|_| not_found())?;
        self.partitions.get(number as usize).ok_or_else(not_found)
    }

    /// Appends `records` and returns, in request order, where each landed.
    /// Blocks until every record is durable. Validation happens before any
    /// write, so an invalid record leaves the topic unchanged.
    pub fn produce(&self, records: &[ProducedRecord<'_>], now_ms: i64) -> Result<Vec<Ack>> {
        let count = self.partitions.len() as u32;
        let assignment = self.assign(records, count)?;
        let log_append = self.meta.config.timestamp_type == TimestampType::LogAppendTime;
        let timestamp_of = |r: &ProducedRecord<'_>| match (log_append, r.timestamp) {
            (false, Some(ts)) => ts,
            _ => now_ms,
        };

        let mut builders: Vec<Option<BatchBuilder>> = (0..count).map(|_| None).collect();
        let mut slot_in_batch = Vec::with_capacity(records.len());
        let mut headers: Vec<Header<'_>> = Vec::new();
        let mut bytes = 0u64;
        for (record, &p) in records.iter().zip(&assignment) {
            let builder =
                builders[p as usize].get_or_insert_with(|| BatchBuilder::with_capacity(64 * 1024));
            slot_in_batch.push(u64::from(builder.len()));
            headers.clear();
            headers.extend(record.headers.iter().map(|(n, v)| (n.as_ref(), v.as_ref())));
            let key = record.key.as_deref().map(str::as_bytes);
            builder.push(timestamp_of(record), key, record.value.as_bytes(), &headers);
            bytes += (record.value.len() + key.map_or(0, <[u8]>::len)) as u64;
        }

        let attributes = if log_append { ATTR_LOG_APPEND_TIME } else { 0 };
        let mut batches: Vec<(usize, EncodedBatch)> = builders
            .into_iter()
            .enumerate()
            .filter_map(|(p, builder)| Some((p, builder?.finish(now_ms, attributes))))
            .collect();
        // All or nothing: every partition is locked (in partition order, as
        // every produce locks them) and made ready before any batch is
        // appended, so a partition that refuses leaves the others untouched.
        let slots = batches
            .iter()
            .map(|(p, batch)| self.partitions[*p].prepare_append(batch, now_ms))
            .collect::<Result<Vec<_>>>()?;
        let mut base_offsets = vec![0u64; count as usize];
        let mut pending = Vec::with_capacity(batches.len());
        for (slot, (p, batch)) in slots.into_iter().zip(&mut batches) {
            let n = u64::from(batch.view().record_count());
            let base = slot.append(batch, now_ms);
            base_offsets[*p] = base;
            pending.push((*p, base + n));
        }
        for (p, target) in pending {
            self.partitions[p].wait_durable(target)?;
        }
        self.metrics.records_in.increment(records.len() as u64);
        self.metrics.bytes_in.increment(bytes);
        Ok(records
            .iter()
            .zip(assignment)
            .zip(slot_in_batch)
            .map(|((record, p), slot)| Ack {
                partition: p,
                offset: base_offsets[p as usize] + slot,
                timestamp: timestamp_of(record),
            })
            .collect())
    }

    /// Picks each record's partition: explicit, else Kafka's murmur2 of the
    /// key, else round-robin for null keys.
    fn assign(&self, records: &[ProducedRecord<'_>], count: u32) -> Result<Vec<u32>> {
        let spread = records
            .iter()
            .filter(|r| r.partition.is_none() && r.key.is_none())
            .count() as u64;
        let mut next_spread = if spread > 0 {
            self.next_spread.fetch_add(spread, Ordering::Relaxed)
        } else {
            0
        };
        records
            .iter()
            .enumerate()
            .map(|(index, r)| match (r.partition, &r.key) {
                (Some(p), _) if p < count => Ok(p),
                (Some(p), _) => Err(BrokerError::InvalidRecord {
                    index,
                    message: format!(
                        "partition {p} does not exist: topic {:?} has partitions 0..{}",
                        self.meta.name,
                        count - 1
                    ),
                }),
                (None, Some(key)) => Ok(partition_for_key(key.as_bytes(), count)),
                (None, None) => {
                    let p = (next_spread % u64::from(count)) as u32;
                    next_spread += 1;
                    Ok(p)
                }
            })
            .collect()
    }
}

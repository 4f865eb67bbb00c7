//! A topic: its configuration, its partitions, and the produce path that
//! assigns records to partitions and appends them.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use serde::{Deserialize, Serialize};

use crate::batch::{ATTR_LOG_APPEND_TIME, ATTR_PRODUCER, BatchBuilder, EncodedBatch, Header};
use crate::config::{TimestampType, TopicConfig};
use crate::error::{BrokerError, Result};
use crate::idempotency::{IdempotencyIndex, Landed, ProducerTag, check_key, recover_partition};
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
    /// Idempotent produce requests that found an earlier attempt.
    pub idempotent_retries: metrics::Counter,
}

impl TopicMetrics {
    fn new(topic: &str) -> Self {
        let label = || [("topic", topic.to_string())];
        Self {
            records_in: metrics::counter!("strata_produce_records_total", &label()),
            bytes_in: metrics::counter!("strata_produce_bytes_total", &label()),
            records_out: metrics::counter!("strata_consume_records_total", &label()),
            bytes_out: metrics::counter!("strata_consume_bytes_total", &label()),
            idempotent_retries: metrics::counter!(
                "strata_produce_idempotent_retries_total",
                &label()
            ),
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
    idempotency: IdempotencyIndex,
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
        // Batches written with an idempotency key within the window.
        let idempotency = IdempotencyIndex::default();
        let since = crate::timestamp::now_ms().saturating_sub(meta.config.idempotency_window_ms);
        let mut found = Vec::new();
        for p in &partitions {
            recover_partition(&mut found, p.id(), &p.pin(), since)?;
        }
        idempotency.recover(found);
        Ok(Self {
            metrics: TopicMetrics::new(&meta.name),
            meta,
            dir: dir.to_path_buf(),
            partitions,
            next_spread: AtomicU64::new(0),
            idempotency,
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
        let assignment = self.assign(records, None)?;
        self.produce_assigned(records, &assignment, now_ms, None)
    }

    /// [`Self::produce`] with an idempotency key (see
    /// [`crate::idempotency`]): the first request with `key` is written as
    /// usual; a retry with the same `body_hash` writes only the partitions
    /// no earlier attempt made durable (nothing, when the first succeeded)
    /// and answers with every record's offset, as the first would have.
    /// Another body under the same key within the window is
    /// `IdempotencyKeyReused` and writes nothing.
    pub fn produce_idempotent(
        &self,
        records: &[ProducedRecord<'_>],
        now_ms: i64,
        key: &str,
        body_hash: u128,
    ) -> Result<Vec<Ack>> {
        check_key(key.as_bytes())?;
        let assignment = self.assign(records, Some(key))?;
        self.produce_assigned(records, &assignment, now_ms, Some((key, body_hash)))
    }

    /// Appends `records`, each to the partition `assignment` names (from
    /// [`Self::assign`]), idempotently when `idempotency` gives the key and
    /// the hash of the whole request's body. In a cluster, a request whose
    /// partitions have different leaders is split: each leader gets the
    /// records of its partitions, in request order, with the whole body's
    /// hash, so that a retry after leaders moved still matches.
    pub fn produce_assigned(
        &self,
        records: &[ProducedRecord<'_>],
        assignment: &[u32],
        now_ms: i64,
        idempotency: Option<(&str, u128)>,
    ) -> Result<Vec<Ack>> {
        let Some((key, body_hash)) = idempotency else {
            let (landed, outcome) = self.append(records, assignment, |_| true, None, now_ms);
            outcome?;
            let landed: Vec<_> = landed
                .into_iter()
                .map(|base| base.map(|b| (b, now_ms)))
                .collect();
            return Ok(self.acks(records, assignment, &landed));
        };
        check_key(key.as_bytes())?;
        let window = self.meta.config.idempotency_window_ms;
        let mut claim = self.idempotency.claim(key, now_ms, window);
        let mut landed: Vec<Option<(u64, i64)>> = vec![None; self.partitions.len()];
        if let Some(entry) = &claim.entry {
            if entry.body_hash != body_hash {
                return Err(BrokerError::IdempotencyKeyReused {
                    key: key.to_string(),
                });
            }
            for l in &entry.landed {
                if let Some(slot) = landed.get_mut(l.partition as usize) {
                    *slot = Some((l.base_offset, l.append_time));
                }
            }
        }
        let missing: Vec<bool> = landed.iter().map(Option::is_none).collect();
        if claim.entry.is_some() {
            self.metrics.idempotent_retries.increment(1);
        }
        let tag = ProducerTag { key, body_hash };
        let (written, outcome) = self.append(
            records,
            assignment,
            |p| missing[p as usize],
            Some(&tag),
            now_ms,
        );
        for (p, base) in written.into_iter().enumerate() {
            if let Some(base_offset) = base {
                landed[p] = Some((base_offset, now_ms));
                claim.landed(
                    body_hash,
                    Landed {
                        partition: p as u32,
                        base_offset,
                        append_time: now_ms,
                    },
                );
            }
        }
        outcome?;
        Ok(self.acks(records, assignment, &landed))
    }

    /// Rebuilds what the idempotency index knows of `partition` from its
    /// log (a follower that became the leader: the batches it copied carry
    /// their keys).
    pub fn reindex_partition(&self, partition: u32) -> Result<()> {
        let Some(p) = self.partitions.get(partition as usize) else {
            return Ok(());
        };
        let since =
            crate::timestamp::now_ms().saturating_sub(self.meta.config.idempotency_window_ms);
        let mut found = Vec::new();
        recover_partition(&mut found, p.id(), &p.pin(), since)?;
        self.idempotency.recover(found);
        Ok(())
    }

    /// Appends, as one batch per partition, the records assigned to each
    /// partition `wanted` accepts, and waits until they are durable.
    /// Returns each partition's base offset where its batch is durable,
    /// and the first error. Every batch is prepared before any is
    /// appended, so a partition that refuses leaves the others untouched.
    fn append(
        &self,
        records: &[ProducedRecord<'_>],
        assignment: &[u32],
        wanted: impl Fn(u32) -> bool,
        tag: Option<&ProducerTag<'_>>,
        now_ms: i64,
    ) -> (Vec<Option<u64>>, Result<()>) {
        let count = self.partitions.len();
        let mut based = vec![None; count];
        let log_append = self.meta.config.timestamp_type == TimestampType::LogAppendTime;
        let mut builders: Vec<Option<BatchBuilder>> = (0..count).map(|_| None).collect();
        let mut headers: Vec<Header<'_>> = Vec::new();
        let (mut written, mut bytes) = (0u64, 0u64);
        for (record, &p) in records.iter().zip(assignment) {
            if !wanted(p) {
                continue;
            }
            // A key placed where the default partitioner would not put it
            // takes its partition's mark away first (reads of a key skip
            // marked partitions its hash does not pick). Only an explicit
            // partition can do that: `assignment` comes from `assign`,
            // which hashes every other keyed record (no hash here on the
            // usual path).
            let partition = &self.partitions[p as usize];
            if let (Some(_), Some(key), Some(count)) = (
                record.partition,
                &record.key,
                partition.keys_by_default_partitioner(),
            ) && partition_for_key(key.as_bytes(), count) != p
                && let Err(e) = partition.unmark_keys_by_default()
            {
                return (based, Err(e));
            }
            let builder = builders[p as usize].get_or_insert_with(|| match tag {
                Some(tag) => BatchBuilder::with_producer(64 * 1024, tag),
                None => BatchBuilder::with_capacity(64 * 1024),
            });
            headers.clear();
            headers.extend(record.headers.iter().map(|(n, v)| (n.as_ref(), v.as_ref())));
            let key = record.key.as_deref().map(str::as_bytes);
            builder.push(
                timestamp_of(log_append, record, now_ms),
                key,
                record.value.as_bytes(),
                &headers,
            );
            written += 1;
            bytes += (record.value.len() + key.map_or(0, <[u8]>::len)) as u64;
        }
        let mut attributes = if log_append { ATTR_LOG_APPEND_TIME } else { 0 };
        if tag.is_some() {
            attributes |= ATTR_PRODUCER;
        }
        let mut batches: Vec<(usize, EncodedBatch)> = builders
            .into_iter()
            .enumerate()
            .filter_map(|(p, builder)| Some((p, builder?.finish(now_ms, attributes))))
            .collect();
        // Every partition is locked (in partition order, as every produce
        // locks them) and made ready before any batch is appended.
        let slots = match batches
            .iter()
            .map(|(p, batch)| self.partitions[*p].prepare_append(batch, now_ms))
            .collect::<Result<Vec<_>>>()
        {
            Ok(slots) => slots,
            Err(e) => return (based, Err(e)),
        };
        let mut pending = Vec::with_capacity(batches.len());
        for (slot, (p, batch)) in slots.into_iter().zip(&mut batches) {
            pending.push((*p, slot.append(batch, now_ms)));
        }
        let mut outcome = Ok(());
        for (p, appended) in pending {
            match self.partitions[p].wait_durable(appended) {
                Ok(()) => based[p] = Some(appended.base),
                Err(e) => {
                    if outcome.is_ok() {
                        outcome = Err(e);
                    }
                }
            }
        }
        if outcome.is_ok() {
            self.metrics.records_in.increment(written);
            self.metrics.bytes_in.increment(bytes);
        }
        (based, outcome)
    }

    /// Where each record landed, given each partition's batch (base offset
    /// and append time): records of a partition are its batch's records in
    /// request order.
    fn acks(
        &self,
        records: &[ProducedRecord<'_>],
        assignment: &[u32],
        landed: &[Option<(u64, i64)>],
    ) -> Vec<Ack> {
        let log_append = self.meta.config.timestamp_type == TimestampType::LogAppendTime;
        let mut next = vec![0u64; landed.len()];
        records
            .iter()
            .zip(assignment)
            .map(|(record, &p)| {
                let (base, append_time) = landed[p as usize].unwrap_or((0, 0));
                let slot = &mut next[p as usize];
                *slot += 1;
                Ack {
                    partition: p,
                    offset: base + *slot - 1,
                    timestamp: timestamp_of(log_append, record, append_time),
                }
            })
            .collect()
    }

    /// Picks each record's partition: explicit, else Kafka's murmur2 of the
    /// key, else round-robin for null keys. With an idempotency key the
    /// round robin starts where the key hashes to, so that a retry of the
    /// same body assigns every record as the first attempt did.
    pub fn assign(
        &self,
        records: &[ProducedRecord<'_>],
        idempotency_key: Option<&str>,
    ) -> Result<Vec<u32>> {
        let count = self.partitions.len() as u32;
        let spread = records
            .iter()
            .filter(|r| r.partition.is_none() && r.key.is_none())
            .count() as u64;
        let mut next_spread = match idempotency_key {
            Some(key) => u64::from(partition_for_key(key.as_bytes(), count)),
            None if spread > 0 => self.next_spread.fetch_add(spread, Ordering::Relaxed),
            None => 0,
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

/// A record's timestamp: the producer's, or `append_time` when it has none
/// or the topic uses log-append time.
fn timestamp_of(log_append: bool, record: &ProducedRecord<'_>, append_time: i64) -> i64 {
    match (log_append, record.timestamp) {
        (false, Some(ts)) => ts,
        _ => append_time,
    }
}

//! The key index: each key's latest record, per partition, so that
//! `snapshot?key=K` answers from one B-tree read instead of a scan of the
//! whole history (issue #12). A topic is indexed from its first lookup by
//! key on (and across restarts after that): the index costs CPU in step
//! with ingest, which topics nobody looks up by key should not pay.
//!
//! - [`entry`]: how one record is stored;
//! - [`store`]: the redb database and its atomic apply;
//! - [`maintain`]: the loop that applies every partition's committed
//!   records.
//!
//! # Contract
//!
//! The index is derived data, never a source of truth: it is rebuilt from
//! the log and the cold tier when it is missing or damaged. A lookup never
//! answers from an index that is behind what was acknowledged: it pins the
//! partitions first and applies the records between the index's progress
//! and the pinned end (the "tail") itself. It answers exactly what the
//! snapshot's SQL would — the latest record by timestamp, ties by
//! partition and offset, tombstones hiding their key — and falls back to
//! that SQL whenever the index cannot know the answer: not built yet, too
//! far behind, a key whose latest record retention removed, or an `as_of`
//! before a key's latest record.

pub mod entry;
mod maintain;
pub mod store;

use std::collections::{HashMap, HashSet};
use std::path::Path;
use std::sync::{Arc, Weak};

use arrow::array::RecordBatch;
use futures::TryStreamExt;
use parking_lot::Mutex;
use strata_broker::{Broker, Topic};
use strata_tiering::Tiering;
use strata_tiering::schema::{ArrowBatchBuilder, RecordColumns};
use tokio::sync::watch;

use self::entry::Entry;
use self::maintain::blocking;
use self::store::IndexStore;
use crate::error::Result;
use crate::pin::pin_topic;
use crate::scan::{ScanMetrics, ScanSpec, scan_partition};

/// Most committed records a lookup applies itself past the index's
/// progress; further behind (a rebuild), lookups take the scan.
pub const MAX_TAIL: u64 = 100_000;

/// What a lookup found.
#[derive(Debug)]
pub enum Lookup {
    /// The rows, in the order of the keys asked (each at most once).
    Rows(RecordBatch),
    /// The index cannot know; the reason is for logs and tests.
    Scan(&'static str),
}

/// The node's key index and which topics it was built for.
#[derive(Debug)]
pub struct KeyIndex {
    store: Arc<IndexStore>,
    /// The topic objects the index follows: a topic of the same name that
    /// is another object was deleted and created again.
    verified: Mutex<HashMap<String, Weak<Topic>>>,
    /// Topics looked up by key since this process started. A topic is
    /// indexed once it has been looked up (the index keeps its progress
    /// across restarts): ingest into topics nobody looks up by key pays
    /// nothing for the index.
    wanted: Mutex<HashSet<String>>,
}

impl KeyIndex {
    /// Opens the index kept in `dir` (see [`IndexStore::open`]).
    pub fn open(dir: &Path) -> Result<Self> {
        Ok(Self {
            store: Arc::new(IndexStore::open(dir)?),
            verified: Mutex::default(),
            wanted: Mutex::default(),
        })
    }

    /// Bytes the index takes on disk.
    pub fn bytes(&self) -> u64 {
        self.store.bytes()
    }

    /// The next offset the index will apply of each of partitions
    /// `0..count` of `topic` (`None`: not indexed yet), in one read.
    pub fn progress_of(&self, topic: &str, count: u32) -> Result<Vec<Option<u64>>> {
        self.store.progress_of(topic, count)
    }

    /// Keeps the index up to date until `stopping` (see [`maintain`]).
    pub async fn maintain(
        self: Arc<Self>,
        broker: Arc<Broker>,
        tiering: Arc<Tiering>,
        stopping: watch::Receiver<bool>,
    ) {
        maintain::run(self, broker, tiering, stopping).await;
    }

    /// Whether `topic` was looked up by key since this process started.
    fn is_wanted(&self, topic: &str) -> bool {
        self.wanted.lock().contains(topic)
    }

    fn is_verified(&self, topic: &Arc<Topic>) -> bool {
        self.verified
            .lock()
            .get(topic.name())
            .is_some_and(|seen| std::ptr::eq(seen.as_ptr(), Arc::as_ptr(topic)))
    }

    fn was_seen(&self, name: &str) -> bool {
        self.verified.lock().contains_key(name)
    }

    fn verify(&self, topic: &Arc<Topic>) {
        self.verified
            .lock()
            .insert(topic.name().to_string(), Arc::downgrade(topic));
    }

    fn forget_missing(&self, live: &HashSet<&str>) {
        self.verified
            .lock()
            .retain(|name, _| live.contains(name.as_str()));
    }

    /// Forgets a topic that is being deleted, so that one created later
    /// under its name starts from nothing even across a restart.
    /// (The topic stays in `verified`: a pass that was applying the old
    /// topic's records meanwhile is undone when the next one finds another
    /// topic object under the name.)
    pub async fn topic_deleted(&self, topic: &str) -> Result<()> {
        self.reset(topic).await
    }

    async fn reset(&self, topic: &str) -> Result<()> {
        tracing::info!(topic, "the key index forgets a deleted topic");
        let (store, topic) = (self.store.clone(), topic.to_string());
        blocking(move || store.reset(&topic, None)).await
    }

    /// The latest record with `timestamp < as_of_ms` of each of `keys` in
    /// `topic`, or [`Lookup::Scan`] (see the module's contract).
    pub async fn lookup(
        &self,
        broker: &Broker,
        tiering: &Arc<Tiering>,
        topic: &str,
        as_of_ms: i64,
        keys: &[String],
    ) -> Result<Lookup> {
        let current = broker.topic(topic)?;
        if !self.is_wanted(topic) && self.wanted.lock().insert(topic.to_string()) {
            tracing::debug!(
                topic,
                "the key index follows the topic from its first lookup on"
            );
        }
        if !self.is_verified(&current) {
            return Ok(Lookup::Scan("the topic is not indexed yet"));
        }
        let mut seen = HashSet::new();
        let wanted: Vec<String> = keys
            .iter()
            .filter(|k| seen.insert(k.as_str()))
            .cloned()
            .collect();
        // The index is read before the partitions are pinned: everything
        // acknowledged before the request is below the pinned ends, and
        // the records between the index's progress and those ends (the
        // tail) are applied here.
        let ids: Vec<u32> = (0..current.partitions().len() as u32).collect();
        let (store, name, asked) = (self.store.clone(), topic.to_string(), wanted.clone());
        let hits = blocking(move || {
            let keys: Vec<&str> = asked.iter().map(String::as_str).collect();
            store.lookup(&name, &ids, &keys)
        })
        .await?;
        let pinned = pin_topic(broker, tiering, topic, None).await?;
        if pinned.partitions.len() != hits.len() {
            return Ok(Lookup::Scan("the topic changed during the lookup"));
        }
        let mut best: Vec<Option<(u32, Entry)>> = vec![None; wanted.len()];
        for (part, hits) in pinned.partitions.iter().zip(hits) {
            let Some(done) = hits.progress else {
                return Ok(Lookup::Scan("a partition is not indexed yet"));
            };
            let (start, end) = (part.start_offset(), part.end_offset());
            if done > end {
                return Ok(Lookup::Scan("the index is ahead of the log"));
            }
            if end - done > MAX_TAIL {
                return Ok(Lookup::Scan("the index is far behind the log"));
            }
            let mut found = hits.entries;
            if done < end {
                apply_tail(tiering, part.clone(), done..end, &wanted, &mut found).await?;
            }
            for (i, entry) in found.into_iter().enumerate() {
                let Some(entry) = entry else { continue };
                if entry.unindexed {
                    return Ok(Lookup::Scan("a key's latest record is too large to index"));
                }
                if entry.offset < start {
                    return Ok(Lookup::Scan("retention removed a key's latest record"));
                }
                if entry.timestamp >= as_of_ms {
                    return Ok(Lookup::Scan("a key has records at or after as_of"));
                }
                let newer = best[i].as_ref().is_none_or(|(p, b)| {
                    (entry.timestamp, part.id, entry.offset) > (b.timestamp, *p, b.offset)
                });
                if newer {
                    best[i] = Some((part.id, entry));
                }
            }
        }
        let mut rows = ArrowBatchBuilder::new();
        for (key, found) in wanted.iter().zip(best) {
            if let Some((partition, e)) = found.filter(|(_, e)| !e.is_tombstone()) {
                rows.push_parts(
                    partition,
                    e.offset,
                    e.timestamp,
                    Some(key),
                    &e.value,
                    &e.headers,
                )?;
            }
        }
        Ok(Lookup::Rows(rows.finish()?))
    }
}

/// Folds the records `offsets` of a pinned partition into `found` (one
/// entry per key of `keys`).
async fn apply_tail(
    tiering: &Arc<Tiering>,
    part: Arc<crate::pin::PinnedPartition>,
    offsets: std::ops::Range<u64>,
    keys: &[String],
    found: &mut [Option<Entry>],
) -> Result<()> {
    let positions: HashMap<&str, usize> = keys
        .iter()
        .enumerate()
        .map(|(i, k)| (k.as_str(), i))
        .collect();
    let spec = ScanSpec {
        offsets,
        ..ScanSpec::default()
    };
    let mut batches = scan_partition(
        tiering.clone(),
        part,
        Arc::new(spec),
        ScanMetrics::default(),
    );
    while let Some(batch) = batches.try_next().await? {
        let columns = RecordColumns::new(&batch)?;
        for row in 0..batch.num_rows() {
            let Some(&i) = columns.key(row).and_then(|k| positions.get(k)) else {
                continue;
            };
            let (timestamp, offset) = (columns.timestamp(row), columns.offset(row));
            if found[i]
                .as_ref()
                .is_none_or(|e| !e.is_after(timestamp, offset))
            {
                found[i] = Some(Entry {
                    timestamp,
                    offset,
                    value: columns.value(row).to_string(),
                    headers: columns
                        .headers(row)
                        .map(|(n, v)| (n.to_string(), v.to_string()))
                        .collect(),
                    unindexed: false,
                });
            }
        }
    }
    Ok(())
}

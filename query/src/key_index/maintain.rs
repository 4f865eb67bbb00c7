//! Keeping the key index up to date: a loop that follows every local
//! partition's committed records (the same pinned union read as range
//! reads, so a partition offloaded before it was indexed is read from the
//! cold tier) and applies them in order, a step of up to
//! [`RECORDS_PER_STEP`] records per transaction.

use std::collections::{BTreeSet, HashMap, HashSet};
use std::sync::Arc;
use std::time::{Duration, Instant};

use futures::TryStreamExt;
use strata_broker::{Broker, Partition, Topic};
use strata_tiering::Tiering;
use tokio::sync::watch;

use super::KeyIndex;
use crate::error::{QueryError, Result};
use crate::pin::pin_partition;
use crate::scan::{ScanMetrics, ScanSpec, scan_partition};

/// Pause between passes that found nothing to apply.
const IDLE: Duration = Duration::from_millis(20);
/// Most records one pass applies to one partition, so that every
/// partition moves on in turn.
const RECORDS_PER_STEP: u64 = 64 * 1024;
/// How often topics that no longer exist are dropped from the index.
const SWEEP_EVERY: Duration = Duration::from_secs(5);

/// Runs until `stopping`: applies what every partition committed, forgets
/// deleted topics, and syncs the index before returning.
pub(crate) async fn run(
    index: Arc<KeyIndex>,
    broker: Arc<Broker>,
    tiering: Arc<Tiering>,
    mut stopping: watch::Receiver<bool>,
) {
    let mut failing = false;
    let mut swept: Option<Instant> = None;
    let mut known = Known::new();
    while !*stopping.borrow() {
        let busy = match pass(&index, &broker, &tiering, &mut swept, &stopping, &mut known).await {
            Ok(busy) => {
                if std::mem::take(&mut failing) {
                    tracing::info!("the key index is being updated again");
                }
                busy
            }
            Err(error) => {
                if !std::mem::replace(&mut failing, true) {
                    tracing::warn!(%error, "the key index cannot be updated; lookups scan the log until it can");
                }
                false
            }
        };
        if !busy {
            tokio::select! {
                () = tokio::time::sleep(if failing { IDLE * 50 } else { IDLE }) => {}
                _ = stopping.changed() => {}
            }
        }
    }
    let store = index.store.clone();
    if let Ok(Err(error)) = tokio::task::spawn_blocking(move || store.sync()).await {
        tracing::warn!(%error, "the key index could not be synced at shutdown");
    }
}

/// Each partition's progress as last read or written, by topic: a pass
/// touches only partitions whose end moved past it, so an idle index of
/// thousands of partitions costs a comparison per partition.
type Known = HashMap<String, Vec<Option<u64>>>;

/// One pass over every topic; true when records were applied.
async fn pass(
    index: &Arc<KeyIndex>,
    broker: &Broker,
    tiering: &Arc<Tiering>,
    swept: &mut Option<Instant>,
    stopping: &watch::Receiver<bool>,
    known: &mut Known,
) -> Result<bool> {
    let topics = broker.topics();
    if swept.is_none_or(|at| at.elapsed() >= SWEEP_EVERY) {
        sweep(index, &topics).await?;
        let live: HashSet<&str> = topics.iter().map(|t| t.name()).collect();
        known.retain(|name, _| live.contains(name.as_str()));
        *swept = Some(Instant::now());
    }
    let mut busy = false;
    for topic in &topics {
        if !index.is_verified(topic) {
            // A topic that replaced one of the same name (deleted and
            // created again) starts from nothing; the first topics seen
            // after a start are the ones the index was built from.
            if index.was_seen(topic.name()) {
                index.reset(topic.name()).await?;
            }
            index.verify(topic);
            known.remove(topic.name());
        }
        let wanted = index.is_wanted(topic.name());
        let progress = match known.get_mut(topic.name()) {
            // A topic first looked up since it was loaded: load it again,
            // marking its empty partitions.
            Some(p)
                if p.len() == topic.partitions().len()
                    && !(wanted && p.iter().all(Option::is_none)) =>
            {
                p
            }
            _ => {
                let loaded = load_progress(index, topic, wanted).await?;
                known
                    .entry(topic.name().to_string())
                    .insert_entry(loaded)
                    .into_mut()
            }
        };
        if !wanted && progress.iter().all(Option::is_none) {
            // Never looked up by key (here, or before a restart).
            continue;
        }
        let mut behind = 0;
        for (partition, done) in topic.partitions().iter().zip(progress.iter_mut()) {
            if *stopping.borrow() {
                return Ok(false);
            }
            let end = partition.end_offset();
            if done.is_some_and(|d| d >= end) {
                continue;
            }
            // One partition that cannot be read (a cold file that fails,
            // a topic deleted meanwhile) holds up no other.
            match step(index, tiering, topic, partition, *done).await {
                Ok((applied, left, now)) => {
                    busy |= applied;
                    behind += left;
                    *done = Some(now);
                }
                Err(error) => {
                    tracing::debug!(%error, topic = topic.name(), partition = partition.id(),
                        "the key index skips a partition this pass");
                }
            }
        }
        metrics::gauge!("strata_key_index_lag_records", "topic" => topic.name().to_string())
            .set(behind as f64);
    }
    let store = index.store.clone();
    let bytes = blocking(move || {
        // An idle index makes its last commits durable too.
        store.sync_if_due()?;
        store.compact_if_due()?;
        Ok(store.bytes())
    })
    .await?;
    metrics::gauge!("strata_key_index_bytes").set(bytes as f64);
    Ok(busy)
}

/// Every partition's progress from the store, in one read; for a topic
/// looked up by key (`wanted`), partitions never indexed that hold nothing
/// yet are marked indexed (in one transaction), so that lookups of them
/// need not scan.
async fn load_progress(
    index: &Arc<KeyIndex>,
    topic: &Topic,
    wanted: bool,
) -> Result<Vec<Option<u64>>> {
    let (store, name) = (index.store.clone(), topic.name().to_string());
    let count = topic.partitions().len() as u32;
    let mut progress = blocking(move || store.progress_of(&name, count)).await?;
    if !wanted {
        return Ok(progress);
    }
    let empty: Vec<u32> = topic
        .partitions()
        .iter()
        .zip(&progress)
        .filter(|(p, done)| done.is_none() && p.end_offset() == 0)
        .map(|(p, _)| p.id())
        .collect();
    if !empty.is_empty() {
        let (store, name, marked) = (index.store.clone(), topic.name().to_string(), empty.clone());
        blocking(move || store.mark_indexed(&name, &marked)).await?;
        for id in empty {
            progress[id as usize] = Some(0);
        }
    }
    Ok(progress)
}

/// Drops the index of topics that no longer exist.
async fn sweep(index: &Arc<KeyIndex>, topics: &[Arc<Topic>]) -> Result<()> {
    let store = index.store.clone();
    let held = blocking(move || store.partitions()).await?;
    let live: HashSet<&str> = topics.iter().map(|t| t.name()).collect();
    let gone: BTreeSet<String> = held
        .into_iter()
        .map(|(topic, _)| topic)
        .filter(|t| !live.contains(t.as_str()))
        .collect();
    for topic in gone {
        index.reset(&topic).await?;
    }
    index.forget_missing(&live);
    Ok(())
}

/// Applies up to [`RECORDS_PER_STEP`] committed records of one partition
/// from `progress` on; returns whether any were, how many committed
/// records are left, and the partition's progress now.
async fn step(
    index: &Arc<KeyIndex>,
    tiering: &Arc<Tiering>,
    topic: &Topic,
    partition: &Arc<Partition>,
    progress: Option<u64>,
) -> Result<(bool, u64, u64)> {
    let id = partition.id();
    let name = topic.name().to_string();
    let pinned = pin_partition(tiering, &name, partition).await?;
    let (start, end) = (pinned.start_offset(), pinned.end_offset());
    // An index ahead of the log (a follower whose high watermark is not
    // known again yet) waits; lookups scan meanwhile.
    let from = progress.unwrap_or(start).max(start);
    if from >= end {
        if progress.is_none() {
            // Nothing to apply yet, but the partition is indexed: lookups
            // of an empty partition need not scan.
            let (store, at) = (index.store.clone(), name.clone());
            blocking(move || store.apply(&at, id, end, &[])).await?;
        }
        return Ok((false, 0, from.max(progress.unwrap_or(0))));
    }
    let to = end.min(from + RECORDS_PER_STEP);
    let spec = ScanSpec {
        offsets: from..to,
        ..ScanSpec::default()
    };
    let mut batches = scan_partition(
        tiering.clone(),
        Arc::new(pinned),
        Arc::new(spec),
        ScanMetrics::default(),
    );
    // The whole step in one transaction: a commit copies every B-tree
    // page it touches, and a step's batches touch mostly the same pages
    // (at 1 M keys, a transaction per batch of 8 K records copied a page
    // per record). A step's records are bounded by RECORDS_PER_STEP.
    let mut read = Vec::new();
    while let Some(batch) = batches.try_next().await? {
        if batch.num_rows() > 0 {
            read.push(batch);
        }
    }
    let (store, at) = (index.store.clone(), name.clone());
    blocking(move || store.apply(&at, id, to, &read)).await?;
    Ok((true, end - to, to))
}

/// Runs blocking index work off the async threads.
pub(super) async fn blocking<T: Send + 'static>(
    work: impl FnOnce() -> Result<T> + Send + 'static,
) -> Result<T> {
    tokio::task::spawn_blocking(work)
        .await
        .map_err(|e| QueryError::Internal(format!("the key index task failed: {e}")))?
}

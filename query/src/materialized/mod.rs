//! Materialized views (`"materialized": true`): views kept up to date as
//! records arrive instead of computed from the whole history at each read
//! (issue #12).
//!
//! - [`shape`]: which SQL can be maintained, and its partial and final
//!   queries;
//! - [`state`]: the views' state on disk and its atomic merge.
//!
//! # Contract
//!
//! A read returns what the view's SQL returns over everything
//! acknowledged before the read: it first applies, under the view's lock,
//! every partition's committed records up to the partition's end as the
//! read starts (usually few: a background task keeps every view close),
//! then runs the view's final query over the state. The state is bounded
//! by the number of groups, survives restarts (progress and state change
//! together), and is rebuilt from the log and the cold tier when lost.
//! Records that retention drops after they were applied stay counted: a
//! view keeps what it has seen (the same SQL run on demand counts only
//! what is still kept).

pub mod shape;
pub mod state;

use std::collections::{BTreeMap, HashMap};
use std::path::Path;
use std::sync::{Arc, Weak};
use std::time::{Duration, Instant};

use arrow::array::RecordBatch;
use datafusion::arrow::datatypes::SchemaRef;
use futures::TryStreamExt;
use parking_lot::RwLock;
use strata_broker::{Broker, Topic};
use strata_tiering::Tiering;
use tokio::sync::watch;

use self::shape::Shape;
use self::state::{Codec, ViewState};
use crate::error::{QueryError, Result};
use crate::pin::pin_partition;
use crate::sql::SqlEngine;

/// Most offsets of one partition one partial query covers.
const OFFSETS_PER_CHUNK: u64 = 64 * 1024;
/// Pause between maintenance passes.
const IDLE: Duration = Duration::from_millis(150);

/// One materialized view being kept.
pub struct Live {
    pub name: String,
    pub shape: Shape,
    codec: Codec,
    /// Held while records are applied (by the background task or a
    /// read), with the topic object the state was built from: another
    /// object under the name (deleted and created again) starts it afresh.
    applying: tokio::sync::Mutex<Option<Weak<Topic>>>,
}

impl std::fmt::Debug for Live {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Live")
            .field("name", &self.name)
            .finish_non_exhaustive()
    }
}

/// The node's materialized views.
#[derive(Debug)]
pub struct Materialized {
    state: Arc<ViewState>,
    live: RwLock<HashMap<String, Arc<Live>>>,
}

/// What a read of a materialized view gives: its rows and, per partition,
/// the next offset they reflect.
pub struct ViewRead {
    pub schema: SchemaRef,
    pub batches: datafusion::execution::SendableRecordBatchStream,
    pub offsets: Vec<(u32, u64)>,
}

impl Materialized {
    /// Opens the state kept in `dir`.
    pub fn open(dir: &Path) -> Result<Self> {
        Ok(Self {
            state: Arc::new(ViewState::open(dir)?),
            live: RwLock::default(),
        })
    }

    /// Starts keeping view `name` of `shape`, whose partial rows have
    /// `partial_schema`.
    pub fn register(&self, name: &str, shape: Shape, partial_schema: SchemaRef) -> Result<()> {
        let codec = Codec::new(partial_schema, shape.groups)?;
        let live = Arc::new(Live {
            name: name.to_string(),
            shape,
            codec,
            applying: tokio::sync::Mutex::new(None),
        });
        self.live.write().insert(name.to_string(), live);
        Ok(())
    }

    /// The view `name`, if it is kept.
    pub fn get(&self, name: &str) -> Option<Arc<Live>> {
        self.live.read().get(name).cloned()
    }

    /// Stops keeping `name` and drops its state.
    pub async fn forget(&self, name: &str) -> Result<()> {
        let live = self.live.write().remove(name);
        // A read or pass applying right now finishes first.
        let _applying = match &live {
            Some(live) => Some(live.applying.lock().await),
            None => None,
        };
        let (state, name) = (self.state.clone(), name.to_string());
        blocking(move || state.drop_view(&name)).await
    }

    /// Drops the state of views that are not kept (deleted while the
    /// server was down).
    pub async fn sweep(&self) -> Result<()> {
        let state = self.state.clone();
        let held = blocking(move || state.views()).await?;
        for name in held {
            if self.get(&name).is_none() {
                let state = self.state.clone();
                blocking(move || state.drop_view(&name)).await?;
            }
        }
        Ok(())
    }

    /// Checks, holding `live`'s lock (`applying`), that the view is still
    /// the one kept and which topic object its state follows; starts the
    /// state afresh when the topic was deleted and created again.
    async fn topic_of(
        &self,
        live: &Live,
        broker: &Broker,
        applying: &mut Option<Weak<Topic>>,
    ) -> Result<Arc<Topic>> {
        if !self
            .get(&live.name)
            .is_some_and(|now| std::ptr::eq(Arc::as_ptr(&now), live))
        {
            // Deleted (and perhaps created again) since this began.
            return Err(QueryError::ViewNotFound(live.name.clone()));
        }
        let topic = broker.topic(&live.shape.topic)?;
        let replaced = applying
            .as_ref()
            .is_some_and(|seen| !std::ptr::eq(seen.as_ptr(), Arc::as_ptr(&topic)));
        if replaced || self.ahead_of(live, &topic).await? {
            tracing::info!(view = %live.name, "the view's topic was created again; its state starts afresh");
            let (state, name) = (self.state.clone(), live.name.clone());
            blocking(move || state.drop_view(&name)).await?;
        }
        *applying = Some(Arc::downgrade(&topic));
        Ok(topic)
    }

    /// Applies the next chunk of `partition` below `end` (from `start`),
    /// holding `live`'s lock; returns the partition's progress when there
    /// was nothing left to apply.
    async fn step(
        &self,
        live: &Live,
        engine: &SqlEngine,
        partition: u32,
        start: u64,
        end: u64,
    ) -> Result<Option<u64>> {
        let (state, name) = (self.state.clone(), live.name.clone());
        let next = blocking(move || state.progress(&name, partition))
            .await?
            .unwrap_or(0);
        let from = next.max(start);
        if from >= end {
            return Ok(Some(next.max(end)));
        }
        let to = end.min(from + OFFSETS_PER_CHUNK);
        let sql = live.shape.partial_sql(partition, from, to);
        let batches: Vec<RecordBatch> = engine.execute(&sql).await?.try_collect().await?;
        let merges = &live.shape.merges;
        tokio::task::block_in_place(|| {
            self.state
                .apply(&live.name, &live.codec, merges, partition, to, &batches)
        })?;
        Ok(None)
    }

    /// The (start, end) of each partition of `topic` as it is now: every
    /// record acknowledged before now is below its end.
    async fn bounds(tiering: &Tiering, topic: &Topic) -> Result<Vec<(u32, u64, u64)>> {
        let mut out = Vec::with_capacity(topic.partitions().len());
        for partition in topic.partitions() {
            let pinned = pin_partition(tiering, topic.name(), partition).await?;
            out.push((partition.id(), pinned.start_offset(), pinned.end_offset()));
        }
        Ok(out)
    }

    /// Applies every partition's committed records to `live`'s state, a
    /// chunk per hold of its lock (reads and deletion wait for one chunk at
    /// most); returns the next offset of each partition it now reflects.
    pub async fn catch_up(
        &self,
        live: &Live,
        engine: &SqlEngine,
        broker: &Broker,
        tiering: &Tiering,
        stopping: &watch::Receiver<bool>,
    ) -> Result<Vec<(u32, u64)>> {
        let topic = self
            .topic_of(live, broker, &mut *live.applying.lock().await)
            .await?;
        let mut offsets = Vec::with_capacity(topic.partitions().len());
        for (id, start, end) in Self::bounds(tiering, &topic).await? {
            loop {
                if *stopping.borrow() {
                    return Ok(offsets);
                }
                let applying = live.applying.lock().await;
                // Still the view kept, over the same topic object (checked
                // in full once per pass: a check per chunk read every
                // partition's progress, quadratic in partitions).
                let current = self
                    .get(&live.name)
                    .is_some_and(|now| std::ptr::eq(Arc::as_ptr(&now), live));
                let same = applying
                    .as_ref()
                    .is_some_and(|seen| std::ptr::eq(seen.as_ptr(), Arc::as_ptr(&topic)));
                if !current || !same {
                    return Ok(offsets);
                }
                if let Some(done) = self.step(live, engine, id, start, end).await? {
                    offsets.push((id, done));
                    break;
                }
                // A long catch-up (a view built over a long history) is
                // flushed as it goes, not only at the end of its pass.
                tokio::task::block_in_place(|| self.state.sync_if_due())?;
            }
        }
        Ok(offsets)
    }

    /// [`Materialized::catch_up`] for several views of one topic at once:
    /// each chunk of records is read once, then each view's partial query
    /// runs over it in memory. A view ahead of the others waits for them
    /// (one chunk each). Returns each view's next offsets, in the order of
    /// `lives`; a view that was deleted or whose topic was replaced gets
    /// `None` (the next pass takes it alone).
    pub async fn catch_up_together(
        &self,
        lives: &[Arc<Live>],
        engine: &SqlEngine,
        broker: &Broker,
        tiering: &Tiering,
        stopping: &watch::Receiver<bool>,
    ) -> Result<Vec<Option<Offsets>>> {
        let mut offsets = vec![None; lives.len()];
        let Some(first) = lives.first() else {
            return Ok(offsets);
        };
        let topic = broker.topic(&first.shape.topic)?;
        let mut kept = Vec::with_capacity(lives.len());
        for (i, live) in lives.iter().enumerate() {
            let seen = self
                .topic_of(live, broker, &mut *live.applying.lock().await)
                .await;
            if seen.is_ok_and(|seen| Arc::ptr_eq(&seen, &topic)) {
                kept.push(i);
                offsets[i] = Some(Vec::new());
            }
        }
        // The only place more than one view's lock is held: in one order.
        kept.sort_by(|a, b| lives[*a].name.cmp(&lives[*b].name));
        let table = format!("\"{}\"", topic.name().replace('"', "\"\""));
        for (id, start, end) in Self::bounds(tiering, &topic).await? {
            loop {
                if *stopping.borrow() {
                    return Ok(offsets);
                }
                let mut guards = Vec::with_capacity(kept.len());
                for &i in &kept {
                    guards.push(lives[i].applying.lock().await);
                }
                // Still the views kept, over the same topic object.
                kept.retain(|&i| {
                    let live = &lives[i];
                    let current = self
                        .get(&live.name)
                        .is_some_and(|now| Arc::ptr_eq(&now, live));
                    if !current {
                        offsets[i] = None;
                    }
                    current
                });
                let same = guards.iter().all(|applying| {
                    applying
                        .as_ref()
                        .is_some_and(|seen| std::ptr::eq(seen.as_ptr(), Arc::as_ptr(&topic)))
                });
                if !same {
                    return Ok(offsets);
                }
                let mut next = Vec::with_capacity(kept.len());
                for &i in &kept {
                    let (state, name) = (self.state.clone(), lives[i].name.clone());
                    let done = blocking(move || state.progress(&name, id))
                        .await?
                        .unwrap_or(0);
                    next.push((i, done));
                }
                let Some(from) = next
                    .iter()
                    .map(|(_, done)| (*done).max(start))
                    .filter(|from| *from < end)
                    .min()
                else {
                    for (i, done) in next {
                        if let Some(offsets) = &mut offsets[i] {
                            offsets.push((id, done.max(end)));
                        }
                    }
                    break;
                };
                let to = end.min(from + OFFSETS_PER_CHUNK);
                let sql = format!(
                    "SELECT * FROM {table} WHERE \"partition\" = {id} AND \"offset\" >= {from} AND \"offset\" < {to}"
                );
                let read = engine.execute(&sql).await?;
                let schema = read.schema();
                let records: Vec<RecordBatch> = read.try_collect().await?;
                for (i, done) in next {
                    if done.max(start) != from {
                        continue;
                    }
                    let live = &lives[i];
                    let batches: Vec<RecordBatch> = engine
                        .execute_over_all(
                            &live.shape.partial_sql(id, from, to),
                            topic.name(),
                            schema.clone(),
                            records.clone(),
                        )
                        .await?
                        .try_collect()
                        .await?;
                    tokio::task::block_in_place(|| {
                        self.state.apply(
                            &live.name,
                            &live.codec,
                            &live.shape.merges,
                            id,
                            to,
                            &batches,
                        )
                    })?;
                }
                tokio::task::block_in_place(|| self.state.sync_if_due())?;
            }
        }
        Ok(offsets)
    }

    /// Committed records of `live`'s topic its state does not reflect yet.
    pub fn behind(&self, live: &Live, broker: &Broker) -> Result<u64> {
        let topic = broker.topic(&live.shape.topic)?;
        let mut behind = 0;
        for p in topic.partitions() {
            let done = self.state.progress(&live.name, p.id())?.unwrap_or(0);
            behind += p.end_offset().saturating_sub(done);
        }
        Ok(behind)
    }

    /// Whether the state has applied offsets a partition of `topic` does
    /// not have: it was built from another topic of the same name.
    async fn ahead_of(&self, live: &Live, topic: &Topic) -> Result<bool> {
        for partition in topic.partitions() {
            let (state, name, id) = (self.state.clone(), live.name.clone(), partition.id());
            let progress = blocking(move || state.progress(&name, id)).await?;
            if progress.is_some_and(|p| p > partition.log_end_offset()) {
                return Ok(true);
            }
        }
        Ok(false)
    }

    /// Reads `live`: catches up, then runs its final query over the state
    /// (with `key`, only that key's row).
    pub async fn read(
        &self,
        live: &Live,
        engine: &SqlEngine,
        broker: &Broker,
        tiering: &Tiering,
        key: Option<&str>,
    ) -> Result<ViewRead> {
        let mut applying = live.applying.lock().await;
        let topic = self.topic_of(live, broker, &mut applying).await?;
        let mut offsets = Vec::with_capacity(topic.partitions().len());
        for (id, start, end) in Self::bounds(tiering, &topic).await? {
            loop {
                if let Some(done) = self.step(live, engine, id, start, end).await? {
                    offsets.push((id, done));
                    break;
                }
            }
        }
        let first = key.filter(|_| live.shape.key_first);
        let state =
            tokio::task::block_in_place(|| self.state.read(&live.name, &live.codec, first))?;
        drop(applying);
        let batches = engine
            .execute_over(&live.shape.final_sql(key), shape::STATE_TABLE, state)
            .await?;
        Ok(ViewRead {
            schema: batches.schema(),
            batches,
            offsets,
        })
    }

    /// Keeps every view close to its topics until `stopping`.
    pub async fn maintain(
        self: Arc<Self>,
        engine: Arc<SqlEngine>,
        broker: Arc<Broker>,
        tiering: Arc<Tiering>,
        mut stopping: watch::Receiver<bool>,
    ) {
        if let Err(error) = self.sweep().await {
            tracing::warn!(%error, "could not drop the state of deleted materialized views");
        }
        let mut failing: HashMap<String, bool> = HashMap::new();
        // What each view reflected after its last pass (the topic object
        // and each partition's next offset): an idle view costs one
        // comparison per partition.
        let mut reflected: HashMap<usize, Reflected> = HashMap::new();
        // When each view last reflected every committed record (or was
        // first seen): its lag in seconds is the time since.
        let mut current: HashMap<usize, Instant> = HashMap::new();
        while !*stopping.borrow() {
            let views: Vec<Arc<Live>> = self.live.read().values().cloned().collect();
            reflected.retain(|kept, _| views.iter().any(|v| Arc::as_ptr(v) as usize == *kept));
            current.retain(|kept, _| views.iter().any(|v| Arc::as_ptr(v) as usize == *kept));
            // The views with records to apply, by topic: a topic's chunk
            // is read once for all its views.
            let mut busy: BTreeMap<String, Vec<Arc<Live>>> = BTreeMap::new();
            for live in views {
                let idle = broker.topic(&live.shape.topic).is_ok_and(|topic| {
                    reflected
                        .get(&(Arc::as_ptr(&live) as usize))
                        .is_some_and(|(seen, offsets)| {
                            std::ptr::eq(seen.as_ptr(), Arc::as_ptr(&topic))
                                && offsets.len() == topic.partitions().len()
                                && topic
                                    .partitions()
                                    .iter()
                                    .zip(offsets)
                                    .all(|(p, (_, next))| p.end_offset() <= *next)
                        })
                });
                if !idle {
                    busy.entry(live.shape.topic.clone()).or_default().push(live);
                }
            }
            for lives in busy.into_values() {
                let results: Vec<Option<Result<Offsets>>> = if lives.len() == 1 {
                    vec![Some(
                        self.catch_up(&lives[0], &engine, &broker, &tiering, &stopping)
                            .await,
                    )]
                } else {
                    match self
                        .catch_up_together(&lives, &engine, &broker, &tiering, &stopping)
                        .await
                    {
                        Ok(offsets) => offsets.into_iter().map(|o| o.map(Ok)).collect(),
                        // One view's failure must not hold the others
                        // back: each goes alone this pass.
                        Err(_) => {
                            let mut alone = Vec::with_capacity(lives.len());
                            for live in &lives {
                                alone.push(Some(
                                    self.catch_up(live, &engine, &broker, &tiering, &stopping)
                                        .await,
                                ));
                            }
                            alone
                        }
                    }
                };
                for (live, result) in lives.iter().zip(results) {
                    let Some(result) = result else {
                        continue;
                    };
                    let was = failing
                        .insert(live.name.clone(), result.is_err())
                        .unwrap_or(false);
                    match result {
                        Err(error) if !was => tracing::warn!(%error, view = %live.name,
                            "a materialized view cannot be updated; its reads catch up themselves"),
                        Ok(offsets) => {
                            if let Ok(topic) = broker.topic(&live.shape.topic) {
                                let behind: u64 = topic
                                    .partitions()
                                    .iter()
                                    .zip(&offsets)
                                    .map(|(p, (_, next))| p.end_offset().saturating_sub(*next))
                                    .sum();
                                metrics::gauge!("strata_view_lag_records", "view" => live.name.clone())
                                    .set(behind as f64);
                                let since = current
                                    .entry(Arc::as_ptr(live) as usize)
                                    .or_insert_with(Instant::now);
                                let seconds = if behind == 0 {
                                    *since = Instant::now();
                                    0.0
                                } else {
                                    since.elapsed().as_secs_f64()
                                };
                                metrics::gauge!("strata_view_lag_seconds", "view" => live.name.clone())
                                    .set(seconds);
                                reflected.insert(
                                    Arc::as_ptr(live) as usize,
                                    (Arc::downgrade(&topic), offsets),
                                );
                            }
                        }
                        Err(_) => {}
                    }
                }
            }
            let state = self.state.clone();
            if let Err(error) = blocking(move || state.sync_if_due()).await {
                tracing::warn!(%error, "the materialized views' state could not be synced");
            }
            tokio::select! {
                () = tokio::time::sleep(IDLE) => {}
                _ = stopping.changed() => {}
            }
        }
        let state = self.state.clone();
        if let Err(error) = blocking(move || state.sync()).await {
            tracing::warn!(%error, "the materialized views' state could not be synced at shutdown");
        }
    }
}

/// Each partition's next offset a view's state reflects.
type Offsets = Vec<(u32, u64)>;

/// The topic object a view's state followed at its last pass, and each
/// partition's next offset then.
type Reflected = (Weak<Topic>, Offsets);

async fn blocking<T: Send + 'static>(
    work: impl FnOnce() -> Result<T> + Send + 'static,
) -> Result<T> {
    tokio::task::spawn_blocking(work)
        .await
        .map_err(|e| QueryError::Internal(format!("a materialized view task failed: {e}")))?
}

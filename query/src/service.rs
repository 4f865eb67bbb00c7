//! The query service: every read runs on its own runtime (so a heavy query
//! cannot starve produce and consume on the server's runtime) and streams
//! its result as encoded chunks through a two-slot channel, so memory stays
//! bounded whatever the result's size.

use std::collections::BTreeSet;
use std::future::Future;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use datafusion::arrow::datatypes::SchemaRef;
use futures::{StreamExt, TryStreamExt};
use strata_broker::Broker;
use strata_tiering::Tiering;
use tokio::sync::{Semaphore, mpsc};

use crate::error::{QueryError, Result};
use crate::format::{Encoder, Format, Shape};
use crate::key_index::{KeyIndex, Lookup};
use crate::materialized::Materialized;
use crate::materialized::shape::{STATE_TABLE, Shape as ViewShape, analyze};
use crate::pin;
use crate::scan::{self, BatchStream, ScanSpec};
use crate::sql::{MAX_SNAPSHOT_KEYS, SqlConfig, SqlEngine, snapshot_keys_sql, snapshot_sql};
use crate::sql_limits::QUERY_THREAD_STACK;
use crate::views::{View, ViewStore};
use datafusion::common::tree_node::TreeNode;

/// Limits of the query service.
#[derive(Debug, Clone)]
pub struct QueryConfig {
    /// The data directory: views live in `views/`, spills in `tmp/query/`.
    pub data_dir: PathBuf,
    /// Longest a SQL query, view read or snapshot may run.
    pub timeout: Duration,
    /// Memory all running SQL queries may hold together.
    pub memory_limit: usize,
    /// Disk all running SQL queries' spill files may take together (the
    /// data disk is the log's: a full one stops produce).
    pub spill_limit: u64,
    /// SQL queries (and view reads, snapshots) running at once; more get `503`.
    pub max_concurrent: usize,
    /// How long a response waits for a client that stopped reading before
    /// it is ended (range reads, which have no time limit, release their
    /// snapshot then).
    pub stalled_read: Duration,
    /// Worker threads of the query runtime.
    pub threads: usize,
    /// Keep the key index (`<data_dir>/index/`) and answer key lookups
    /// from it; off, lookups run the snapshot's SQL.
    pub key_index: bool,
}

impl QueryConfig {
    /// The defaults for a server whose data lives in `data_dir`.
    pub fn new(data_dir: PathBuf) -> Self {
        Self {
            data_dir,
            timeout: Duration::from_secs(60),
            memory_limit: 256 * 1024 * 1024,
            spill_limit: 4 << 30,
            max_concurrent: 8,
            stalled_read: Duration::from_secs(60),
            threads: std::thread::available_parallelism().map_or(2, |n| n.get()),
            key_index: true,
        }
    }
}

/// A time-range read (`GET /v1/topics/{t}/range`).
#[derive(Debug, Clone)]
pub struct RangeRequest {
    pub topic: String,
    pub from_ms: Option<i64>,
    pub to_ms: Option<i64>,
    pub partition: Option<u32>,
    pub key: Option<String>,
    pub limit: Option<u64>,
    pub format: Format,
}

/// A streaming result: its first chunk is ready (so errors found before it
/// got their status), the rest follows.
#[derive(Debug)]
pub struct Output {
    pub content_type: &'static str,
    /// Response headers the read sets, such as `Strata-Lookup`.
    pub headers: Vec<(&'static str, String)>,
    pub first: Bytes,
    pub rest: mpsc::Receiver<Result<Bytes>>,
}

/// Most committed records a materialized view's read applies itself;
/// further behind (a view being built), the read runs the view's SQL.
pub const MAX_VIEW_CATCH_UP: u64 = 1_000_000;

/// The response header of a materialized view's read: which records it
/// reflects, as `<topic>/<partition>=<next offset>,...`.
pub const VIEW_OFFSETS_HEADER: &str = "strata-view-offsets";

/// The response header saying how a key lookup was answered: `index`, or
/// `scan` (the snapshot's SQL, when the index cannot know).
pub const LOOKUP_HEADER: &str = "strata-lookup";

/// Range reads, SQL, views and snapshots of one server.
#[derive(Debug)]
pub struct QueryService {
    broker: Arc<Broker>,
    tiering: Arc<Tiering>,
    views: Arc<ViewStore>,
    keys: Arc<KeyIndex>,
    materialized: Arc<Materialized>,
    sql: Arc<SqlEngine>,
    config: QueryConfig,
    permits: Arc<Semaphore>,
    runtime: Option<tokio::runtime::Runtime>,
}

impl Drop for QueryService {
    fn drop(&mut self) {
        // Dropping a runtime inside another one would panic.
        if let Some(runtime) = self.runtime.take() {
            runtime.shutdown_background();
        }
    }
}

impl QueryService {
    /// Loads the views and starts the query runtime.
    pub fn open(broker: Arc<Broker>, tiering: Arc<Tiering>, config: QueryConfig) -> Result<Self> {
        let views = Arc::new(ViewStore::open(&config.data_dir.join("views"))?);
        let keys = Arc::new(KeyIndex::open(&config.data_dir.join("index"))?);
        let materialized = Arc::new(Materialized::open(&config.data_dir.join("index"))?);
        let spill_dir = config.data_dir.join("tmp").join("query");
        // Spill files of queries cut short by a crash are garbage.
        let _ = std::fs::remove_dir_all(&spill_dir);
        let sql = SqlEngine::new(
            broker.clone(),
            tiering.clone(),
            views.clone(),
            &SqlConfig {
                memory_limit: config.memory_limit,
                spill_dir,
                spill_limit: config.spill_limit,
                target_partitions: config.threads,
            },
        )?;
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(config.threads.max(1))
            .thread_name("strata-query")
            // SQL trees are walked recursively (see `sql_limits`).
            .thread_stack_size(QUERY_THREAD_STACK)
            .enable_all()
            .build()
            .map_err(|e| QueryError::Internal(format!("starting the query runtime: {e}")))?;
        let service = Self {
            broker,
            tiering,
            views,
            keys,
            materialized,
            sql: Arc::new(sql),
            permits: Arc::new(Semaphore::new(config.max_concurrent.max(1))),
            config,
            runtime: Some(runtime),
        };
        for view in service.views.list().into_iter().filter(|v| v.materialized) {
            // Planned on the query runtime, whose threads have the stack.
            let (engine, broker) = (service.sql.clone(), service.broker.clone());
            let (tx, rx) = std::sync::mpsc::channel();
            let sql = view.sql.clone();
            service.query_runtime()?.spawn(async move {
                let _ = tx.send(materialize(&engine, &broker, &sql).await);
            });
            // Waited for here, so that reads never see a materialized view
            // that is not kept yet (open may run inside another runtime,
            // whose thread this blocks briefly).
            let kept = rx
                .recv()
                .map_err(|_| QueryError::Internal("planning a materialized view stopped".into()))?;
            match kept {
                Ok((shape, schema)) => service.materialized.register(&view.name, shape, schema)?,
                Err(error) => tracing::warn!(%error, view = %view.name,
                    "a materialized view cannot be kept; it is computed at each read"),
            }
        }
        Ok(service)
    }

    /// The stored views.
    pub fn views(&self) -> &ViewStore {
        &self.views
    }

    /// The key index.
    pub fn key_index(&self) -> &KeyIndex {
        &self.keys
    }

    /// Starts the upkeep of the key index on the query runtime; the task
    /// ends (with the index synced) once `stopping` turns true.
    pub fn start_background(
        &self,
        stopping: tokio::sync::watch::Receiver<bool>,
    ) -> Result<tokio::task::JoinHandle<()>> {
        let (keys, broker, tiering) =
            (self.keys.clone(), self.broker.clone(), self.tiering.clone());
        let views = self.materialized.clone().maintain(
            self.sql.clone(),
            broker.clone(),
            tiering.clone(),
            stopping.clone(),
        );
        let index = self.config.key_index;
        Ok(self.query_runtime()?.spawn(async move {
            if index {
                tokio::join!(keys.maintain(broker, tiering, stopping), views);
            } else {
                views.await;
            }
        }))
    }

    /// Every record of the request's window, partition by partition in
    /// offset order, from both tiers, at a snapshot taken now.
    pub async fn range(&self, request: RangeRequest) -> Result<Output> {
        if let (Some(from), Some(to)) = (request.from_ms, request.to_ms)
            && from > to
        {
            return Err(QueryError::InvalidRequest(format!(
                "from ({from} ms) is after to ({to} ms)"
            )));
        }
        // Check the names now, so that errors come before the read is spawned.
        let topic = self.broker.topic(&request.topic)?;
        if let Some(p) = request.partition {
            topic.partition(&p.to_string())?;
        }
        let (broker, tiering) = (self.broker.clone(), self.tiering.clone());
        let spec = ScanSpec {
            from_ms: request.from_ms,
            to_ms: request.to_ms,
            // No partition needs more than the whole limit.
            limit: request.limit,
            ..ScanSpec::default()
        }
        .with_keys(request.key.clone());
        let read = async move {
            let partitions = request.partition.map(|p| vec![p]);
            let snapshot =
                pin::pin_topic(&broker, &tiering, &request.topic, partitions.as_deref()).await?;
            let schema = spec.output_schema()?;
            let batches = scan::scan_topic(tiering, snapshot, Arc::new(spec), request.limit);
            Ok((schema, batches))
        };
        self.stream("range", request.format, Shape::Records, None, read)
            .await
    }

    /// Runs one SQL query.
    pub async fn sql(&self, sql: String, format: Format) -> Result<Output> {
        self.run_sql("sql", sql, format, Shape::Table).await
    }

    /// Runs `sql` within the limits (a slot, the time limit).
    async fn run_sql(
        &self,
        kind: &'static str,
        sql: String,
        format: Format,
        shape: Shape,
    ) -> Result<Output> {
        let permit = self.permit()?;
        let engine = self.sql.clone();
        let run = async move { sql_batches(&engine, &sql).await };
        let limits = Limits::new(permit, self.config.timeout);
        self.stream(kind, format, shape, Some(limits), run).await
    }

    /// Every topic that `sql` reads, views resolved (see
    /// [`SqlEngine::topics_read`]), for checking permissions before it runs.
    pub async fn topics_read(&self, sql: &str) -> Result<BTreeSet<String>> {
        // Parsed on the query runtime, whose threads have the stack for it.
        let engine = self.sql.clone();
        let sql = sql.to_string();
        self.query_runtime()?
            .spawn(async move { engine.topics_read(&sql) })
            .await
            .map_err(|e| QueryError::Internal(format!("reading the query's topics failed: {e}")))?
    }

    /// Every topic that reading view `name` reads: the topics of the SQL
    /// [`QueryService::read_view`] runs, the view's own (not of `SELECT *
    /// FROM name`, which would name a topic of the same name instead).
    pub async fn view_topics(&self, name: &str) -> Result<BTreeSet<String>> {
        let Some(view) = self.views.get(name) else {
            return Err(QueryError::ViewNotFound(name.chars().take(128).collect()));
        };
        self.topics_read(&view.sql).await
    }

    /// Whether a view is named `name` (a topic may not take its name).
    pub fn has_view(&self, name: &str) -> bool {
        self.views.get(name).is_some()
    }

    /// Checks a new view without storing it: a valid name that no topic
    /// or view of this node has, SQL that plans and, materialized, a shape
    /// that can be kept up to date incrementally.
    pub async fn prepare_view(&self, name: &str, sql: &str, materialized: bool) -> Result<View> {
        crate::views::check_name(name)?;
        if self.broker.topic(name).is_ok() {
            return Err(QueryError::NameTaken(name.to_string()));
        }
        if self.views.get(name).is_some() {
            return Err(QueryError::ViewExists(name.to_string()));
        }
        // Planned on the query runtime, whose threads have the stack for it.
        let engine = self.sql.clone();
        let (checked, broker) = (sql.to_string(), self.broker.clone());
        self.query_runtime()?
            .spawn(async move {
                engine.check(&checked).await?;
                if materialized {
                    materialize(&engine, &broker, &checked).await?;
                }
                Ok::<_, QueryError>(())
            })
            .await
            .map_err(|e| QueryError::Internal(format!("checking the view failed: {e}")))??;
        Ok(View {
            name: name.to_string(),
            sql: sql.to_string(),
            created_at: strata_broker::timestamp::format_timestamp(
                strata_broker::timestamp::now_ms(),
            ),
            materialized,
        })
    }

    /// Stores `view` on this node, in place of a different view of the
    /// same name, and starts keeping it up to date when it is materialized
    /// (from the log and the cold tier: its state is derived). A view this
    /// node has already, unchanged, keeps its state.
    ///
    /// # Contract
    ///
    /// Durable on local disk when it returns `Ok`. A materialized view
    /// whose SQL this node cannot plan yet (a topic it does not know yet)
    /// is stored, computed at each read meanwhile, and kept once
    /// [`Self::keep_view`] succeeds.
    pub async fn install_view(&self, view: View) -> Result<()> {
        if self.views.get(&view.name).as_ref() == Some(&view) {
            return Ok(());
        }
        self.remove_view(&view.name).await?;
        let views = self.views.clone();
        let stored = view.clone();
        tokio::task::spawn_blocking(move || views.create(stored))
            .await
            .map_err(|e| QueryError::Internal(format!("storing the view failed: {e}")))??;
        if view.materialized
            && let Err(error) = self.keep_view(&view).await
        {
            tracing::warn!(%error, view = %view.name,
                "a materialized view cannot be kept yet; it is computed at each read");
        }
        Ok(())
    }

    /// Plans stored materialized view `view` and starts keeping it up to
    /// date (a no-op when it is kept already).
    pub async fn keep_view(&self, view: &View) -> Result<()> {
        if self.keeps(&view.name) {
            return Ok(());
        }
        let engine = self.sql.clone();
        let (sql, broker) = (view.sql.clone(), self.broker.clone());
        let (shape, schema) = self
            .query_runtime()?
            .spawn(async move { materialize(&engine, &broker, &sql).await })
            .await
            .map_err(|e| QueryError::Internal(format!("planning the view failed: {e}")))??;
        self.materialized.register(&view.name, shape, schema)
    }

    /// Whether view `name` is materialized and kept up to date here.
    pub fn keeps(&self, name: &str) -> bool {
        self.materialized.get(name).is_some()
    }

    /// Removes view `name` from this node and drops its kept state; a
    /// no-op when this node has no such view. Durable when it returns.
    pub async fn remove_view(&self, name: &str) -> Result<()> {
        if self.views.get(name).is_some() {
            let views = self.views.clone();
            let removed = name.to_string();
            tokio::task::spawn_blocking(move || views.delete(&removed))
                .await
                .map_err(|e| QueryError::Internal(format!("deleting the view failed: {e}")))??;
        }
        // Any state left by an earlier view of this name goes too.
        self.materialized.forget(name).await
    }

    /// The current rows of a view; with `key`, only the row of that key
    /// (a materialized view whose first column is the topic's key).
    pub async fn read_view(&self, name: &str, format: Format, key: Option<&str>) -> Result<Output> {
        let Some(view) = self.views.get(name) else {
            return Err(QueryError::ViewNotFound(name.chars().take(128).collect()));
        };
        let live = self.materialized.get(name);
        if key.is_some() && !live.as_ref().is_some_and(|l| l.shape.key_first) {
            return Err(QueryError::InvalidRequest(
                "key= reads one row of a materialized view whose first column is the topic's key"
                    .into(),
            ));
        }
        // A view still being built over a long history is computed from
        // its SQL meanwhile (the same rows; a key read waits for it).
        let building = |live: &Arc<crate::materialized::Live>| {
            key.is_none()
                && self
                    .materialized
                    .behind(live, &self.broker)
                    .is_ok_and(|n| n > MAX_VIEW_CATCH_UP)
        };
        let Some(live) = live.filter(|l| !building(l)) else {
            // The view's own SQL, not `SELECT * FROM view`: the optimizer
            // drops an ORDER BY without LIMIT inside a subquery, so the
            // rows came back in partition order although the same SQL
            // through /v1/query is ordered (issue #12).
            return self.run_sql("view", view.sql, format, Shape::Table).await;
        };
        let permit = self.permit()?;
        let (views, engine) = (self.materialized.clone(), self.sql.clone());
        let (broker, tiering) = (self.broker.clone(), self.tiering.clone());
        let key = key.map(str::to_string);
        let (tx, rx) = tokio::sync::oneshot::channel();
        let read = async move {
            let read = views
                .read(&live, &engine, &broker, &tiering, key.as_deref())
                .await?;
            let offsets = read
                .offsets
                .iter()
                .map(|(p, next)| format!("{}/{p}={next}", live.shape.topic))
                .collect::<Vec<_>>()
                .join(",");
            let _ = tx.send(offsets);
            let batches: BatchStream = read.batches.map_err(QueryError::from).boxed();
            Ok((read.schema, batches))
        };
        let limits = Limits::new(permit, self.config.timeout);
        let mut output = self
            .stream(
                "materialized_view",
                format,
                Shape::Table,
                Some(limits),
                read,
            )
            .await?;
        if let Ok(offsets) = rx.await {
            output.headers.push((VIEW_OFFSETS_HEADER, offsets));
        }
        Ok(output)
    }

    /// The table a topic's change log describes at `as_of_ms`; with
    /// `keys`, only the rows of those keys, in the order asked.
    pub async fn snapshot(
        &self,
        topic: &str,
        as_of_ms: i64,
        keys: &[String],
        format: Format,
    ) -> Result<Output> {
        self.broker.topic(topic)?;
        if keys.len() > MAX_SNAPSHOT_KEYS {
            return Err(QueryError::InvalidRequest(format!(
                "at most {MAX_SNAPSHOT_KEYS} keys per snapshot lookup, got {}",
                keys.len()
            )));
        }
        if keys.is_empty() {
            let sql = snapshot_sql(topic, as_of_ms);
            return self.run_sql("snapshot", sql, format, Shape::Records).await;
        }
        let started = Instant::now();
        let found = if self.config.key_index {
            self.lookup(topic, as_of_ms, keys).await
        } else {
            Ok(Lookup::Scan("the key index is off"))
        };
        match found {
            Ok(Lookup::Rows(rows)) => {
                metrics::histogram!("strata_lookup_seconds")
                    .record(started.elapsed().as_secs_f64());
                let schema = rows.schema();
                let batches = futures::stream::once(async move { Ok(rows) }).boxed();
                let answer = async move { Ok((schema, batches)) };
                let mut output = self
                    .stream("lookup", format, Shape::Records, None, answer)
                    .await?;
                output.headers.push((LOOKUP_HEADER, "index".into()));
                return Ok(output);
            }
            Ok(Lookup::Scan(reason)) => {
                metrics::counter!("strata_lookup_scans_total", "reason" => reason).increment(1);
                tracing::debug!(topic, reason, "a key lookup scans the log");
            }
            Err(e @ QueryError::Broker(_)) => return Err(e),
            Err(error) => {
                metrics::counter!("strata_lookup_scans_total", "reason" => "index error")
                    .increment(1);
                tracing::warn!(%error, topic, "the key index failed; the lookup scans the log");
            }
        }
        let sql = snapshot_keys_sql(topic, as_of_ms, keys);
        let mut output = self
            .run_sql("snapshot", sql, format, Shape::Records)
            .await?;
        output.headers.push((LOOKUP_HEADER, "scan".into()));
        Ok(output)
    }

    /// A key lookup from the index, run on the query runtime.
    async fn lookup(&self, topic: &str, as_of_ms: i64, keys: &[String]) -> Result<Lookup> {
        let (index, broker, tiering) =
            (self.keys.clone(), self.broker.clone(), self.tiering.clone());
        let (topic, keys) = (topic.to_string(), keys.to_vec());
        self.query_runtime()?
            .spawn(async move {
                index
                    .lookup(&broker, &tiering, &topic, as_of_ms, &keys)
                    .await
            })
            .await
            .map_err(|e| QueryError::Internal(format!("a key lookup failed: {e}")))?
    }

    fn query_runtime(&self) -> Result<&tokio::runtime::Runtime> {
        self.runtime
            .as_ref()
            .ok_or_else(|| QueryError::Internal("the query runtime is stopped".into()))
    }

    fn permit(&self) -> Result<tokio::sync::OwnedSemaphorePermit> {
        self.permits
            .clone()
            .try_acquire_owned()
            .map_err(|_| QueryError::Busy(self.config.max_concurrent))
    }

    /// Runs `make` and encodes its batches on the query runtime; returns
    /// once the first chunk (with the first batch) is ready. With `limits`,
    /// the query holds its slot until the last chunk is sent, and fails
    /// once its time is up.
    async fn stream<F>(
        &self,
        kind: &'static str,
        format: Format,
        shape: Shape,
        limits: Option<Limits>,
        make: F,
    ) -> Result<Output>
    where
        F: Future<Output = Result<(SchemaRef, BatchStream)>> + Send + 'static,
    {
        let (tx, mut rx) = mpsc::channel::<Result<Bytes>>(2);
        let started = Instant::now();
        let stalled = self.config.stalled_read;
        self.query_runtime()?.spawn(async move {
            let deadline = limits.as_ref().map(|l| (l.deadline, l.timeout));
            let result = encode(make, format, shape, deadline, stalled, &tx).await;
            drop(limits);
            let outcome = if result.is_ok() { "ok" } else { "error" };
            metrics::counter!("strata_queries_total", "kind" => kind, "outcome" => outcome)
                .increment(1);
            metrics::histogram!("strata_query_seconds", "kind" => kind)
                .record(started.elapsed().as_secs_f64());
            if let Err(e) = result {
                let _ = tx.send(Err(e)).await;
            }
        });
        match rx.recv().await {
            Some(Ok(first)) => Ok(Output {
                content_type: format.content_type(),
                headers: Vec::new(),
                first,
                rest: rx,
            }),
            Some(Err(e)) => Err(e),
            None => Err(QueryError::Internal(
                "the query stopped without a result".into(),
            )),
        }
    }
}

/// The slot and the deadline of a SQL query.
struct Limits {
    _permit: tokio::sync::OwnedSemaphorePermit,
    deadline: tokio::time::Instant,
    timeout: Duration,
}

impl Limits {
    fn new(permit: tokio::sync::OwnedSemaphorePermit, timeout: Duration) -> Self {
        Self {
            _permit: permit,
            deadline: tokio::time::Instant::now() + timeout,
            timeout,
        }
    }
}

/// The shape of a view to materialize and its partial rows' schema, or
/// `400` naming what cannot be maintained incrementally.
async fn materialize(
    engine: &SqlEngine,
    broker: &Broker,
    sql: &str,
) -> Result<(ViewShape, SchemaRef)> {
    let refuse = |why: String| {
        QueryError::InvalidRequest(format!(
            "this view cannot be materialized (kept up to date as records arrive): {why}"
        ))
    };
    let output = engine.check(sql).await?;
    let names: Vec<String> = output.fields().iter().map(|f| f.name().clone()).collect();
    let shape = analyze(sql, &names).map_err(refuse)?;
    if broker.topic(&shape.topic).is_err() {
        return Err(refuse(format!(
            "it must read a topic, and {:?} is not one",
            shape.topic
        )));
    }
    let partial = engine.check(&shape.partial_sql(0, 0, 0)).await?;
    // Over the state, the final query must only project, order and
    // limit: an aggregate or window left in it is one the rewrite did not
    // know (it would aggregate groups, not records).
    let empty = datafusion::arrow::record_batch::RecordBatch::new_empty(partial.clone());
    let plan = engine
        .plan_over(&shape.final_sql(None), STATE_TABLE, empty)
        .await?;
    let mut left = None;
    plan.apply(|node| {
        if matches!(
            node,
            datafusion::logical_expr::LogicalPlan::Aggregate(_)
                | datafusion::logical_expr::LogicalPlan::Window(_)
        ) {
            left = Some(node.display().to_string());
            return Ok(datafusion::common::tree_node::TreeNodeRecursion::Stop);
        }
        Ok(datafusion::common::tree_node::TreeNodeRecursion::Continue)
    })?;
    if let Some(node) = left {
        return Err(refuse(format!(
            "only count, sum, min, max and avg can be kept ({node})"
        )));
    }
    Ok((shape, partial))
}

async fn sql_batches(engine: &SqlEngine, sql: &str) -> Result<(SchemaRef, BatchStream)> {
    let stream = engine.execute(sql).await?;
    let schema = stream.schema();
    Ok((schema, stream.map_err(QueryError::from).boxed()))
}

/// Waits for `fut` until the deadline, if there is one.
async fn before<T>(
    deadline: Option<(tokio::time::Instant, Duration)>,
    fut: impl Future<Output = T>,
) -> Result<T> {
    match deadline {
        None => Ok(fut.await),
        Some((at, limit)) => tokio::time::timeout_at(at, fut)
            .await
            .map_err(|_| QueryError::Timeout(limit)),
    }
}

/// What waiting for the next batch gave.
enum Next {
    Batch(Result<datafusion::arrow::record_batch::RecordBatch>),
    End,
    /// The client went away first: the query stops (its stream is dropped).
    Gone,
}

/// The next batch, unless the client goes away (or the deadline passes)
/// first: a query that produces nothing for a while, such as a large
/// aggregation, stops when its client leaves, not at its next batch.
async fn next_batch(
    batches: &mut BatchStream,
    tx: &mpsc::Sender<Result<Bytes>>,
    deadline: Option<(tokio::time::Instant, Duration)>,
) -> Result<Next> {
    before(deadline, async {
        tokio::select! {
            batch = batches.next() => batch.map_or(Next::End, Next::Batch),
            () = tx.closed() => Next::Gone,
        }
    })
    .await
}

/// Sends `chunk`; false when the client is gone or has not taken it for
/// `stalled` (its response then ends, cut short).
async fn send(
    tx: &mpsc::Sender<Result<Bytes>>,
    chunk: Bytes,
    deadline: Option<(tokio::time::Instant, Duration)>,
    stalled: Duration,
) -> Result<bool> {
    let sent = before(deadline, tokio::time::timeout(stalled, tx.send(Ok(chunk)))).await?;
    Ok(matches!(sent, Ok(Ok(()))))
}

async fn encode<F>(
    make: F,
    format: Format,
    shape: Shape,
    deadline: Option<(tokio::time::Instant, Duration)>,
    stalled: Duration,
    tx: &mpsc::Sender<Result<Bytes>>,
) -> Result<()>
where
    F: Future<Output = Result<(SchemaRef, BatchStream)>>,
{
    let (schema, mut batches) = before(deadline, make).await??;
    let mut encoder = Encoder::new(format, shape, &schema)?;
    // The first chunk carries the first batch: an error in it still gets
    // an error status instead of a cut-off body.
    let mut first = encoder.start()?.to_vec();
    let mut done = false;
    match next_batch(&mut batches, tx, deadline).await? {
        Next::Batch(batch) => first.extend_from_slice(&encoder.batch(&batch?)?),
        Next::End => done = true,
        Next::Gone => return Ok(()),
    }
    // Sends count against the time limit too: a client that stops reading
    // must not hold its query (and its slot) forever.
    if !send(tx, first.into(), deadline, stalled).await? {
        return Ok(());
    }
    while !done {
        match next_batch(&mut batches, tx, deadline).await? {
            Next::Batch(batch) => {
                let chunk = encoder.batch(&batch?)?;
                if !send(tx, chunk, deadline, stalled).await? {
                    return Ok(());
                }
            }
            Next::End => done = true,
            Next::Gone => return Ok(()),
        }
    }
    send(tx, encoder.finish()?, deadline, stalled).await?;
    Ok(())
}

//! SQL over topics and views with Apache DataFusion.
//!
//! Each query gets a fresh session that knows only the tables it names: a
//! topic becomes a [`TopicTable`], a view is planned from its stored SQL
//! (views may use views, up to [`MAX_VIEW_DEPTH`] deep). All sessions share
//! one runtime environment, so the memory pool bounds every query together;
//! sorts, aggregations and joins that outgrow it spill to disk.

use std::collections::BTreeSet;
use std::path::PathBuf;
use std::sync::Arc;

use datafusion::arrow::datatypes::SchemaRef;
use datafusion::catalog::view::ViewTable;
use datafusion::common::TableReference;
use datafusion::dataframe::DataFrame;
use datafusion::execution::SendableRecordBatchStream;
use datafusion::execution::memory_pool::FairSpillPool;
use datafusion::execution::runtime_env::{RuntimeEnv, RuntimeEnvBuilder};
use datafusion::prelude::{SQLOptions, SessionConfig, SessionContext};
use futures::future::BoxFuture;
use strata_broker::Broker;
use strata_tiering::Tiering;

use crate::error::{QueryError, Result};
use crate::sql_limits::check_sql;
use crate::table::TopicTable;
use crate::views::ViewStore;

/// How deep views may nest.
pub const MAX_VIEW_DEPTH: usize = 16;

/// Limits and resources of the SQL engine.
#[derive(Debug, Clone)]
pub struct SqlConfig {
    /// Memory all running queries may hold together (bytes).
    pub memory_limit: usize,
    /// Where sorts and aggregations spill when they outgrow the memory limit.
    pub spill_dir: PathBuf,
    /// Bytes all spill files together may take; a query that needs more fails.
    pub spill_limit: u64,
    /// Partitions DataFusion plans for (parallelism within a query).
    pub target_partitions: usize,
}

/// Plans and runs SQL over the topics and views of one server.
#[derive(Debug)]
pub struct SqlEngine {
    broker: Arc<Broker>,
    tiering: Arc<Tiering>,
    views: Arc<ViewStore>,
    runtime: Arc<RuntimeEnv>,
    target_partitions: usize,
}

impl SqlEngine {
    /// An engine with its memory pool and spill directory.
    pub fn new(
        broker: Arc<Broker>,
        tiering: Arc<Tiering>,
        views: Arc<ViewStore>,
        config: &SqlConfig,
    ) -> Result<Self> {
        std::fs::create_dir_all(&config.spill_dir).map_err(|e| {
            QueryError::Internal(format!("creating {}: {e}", config.spill_dir.display()))
        })?;
        let runtime = RuntimeEnvBuilder::new()
            .with_memory_pool(Arc::new(FairSpillPool::new(config.memory_limit)))
            .with_temp_file_path(config.spill_dir.clone())
            .with_max_temp_directory_size(config.spill_limit)
            .build_arc()?;
        Ok(Self {
            broker,
            tiering,
            views,
            runtime,
            target_partitions: config.target_partitions.max(1),
        })
    }

    fn session(&self) -> Result<SessionContext> {
        let config = SessionConfig::new()
            .with_target_partitions(self.target_partitions)
            .with_information_schema(false);
        let mut ctx = SessionContext::new_with_config_rt(config, self.runtime.clone());
        datafusion_functions_json::register_all(&mut ctx)?;
        Ok(ctx)
    }

    /// Checks that `sql` is one query that plans against the current topics
    /// and views (for storing it as a view).
    ///
    /// Must run on a thread with [`crate::sql_limits::QUERY_THREAD_STACK`]
    /// of stack, as [`Self::execute`] must.
    pub async fn check(&self, sql: &str) -> Result<SchemaRef> {
        let ctx = self.session()?;
        let plan = self.plan(&ctx, sql).await?;
        Ok(Arc::clone(plan.schema().inner()))
    }

    /// Runs one query and streams its result.
    pub async fn execute(&self, sql: &str) -> Result<SendableRecordBatchStream> {
        let ctx = self.session()?;
        let plan = self.plan(&ctx, sql).await?;
        Ok(DataFrame::new(ctx.state(), plan).execute_stream().await?)
    }

    /// Plans `sql` over one in-memory table `name` holding `batch` (a
    /// materialized view's state); no topic or view is visible to it.
    pub async fn plan_over(
        &self,
        sql: &str,
        name: &str,
        batch: datafusion::arrow::record_batch::RecordBatch,
    ) -> Result<datafusion::logical_expr::LogicalPlan> {
        Ok(self
            .over(name, batch)?
            .state()
            .create_logical_plan(sql)
            .await?)
    }

    /// Runs `sql` over one in-memory table (see [`Self::plan_over`]).
    pub async fn execute_over(
        &self,
        sql: &str,
        name: &str,
        batch: datafusion::arrow::record_batch::RecordBatch,
    ) -> Result<SendableRecordBatchStream> {
        let ctx = self.over(name, batch)?;
        let plan = ctx.state().create_logical_plan(sql).await?;
        Ok(DataFrame::new(ctx.state(), plan).execute_stream().await?)
    }

    /// Runs `sql` over one in-memory table `name` of `batches` (records
    /// of a topic read once for several materialized views).
    pub async fn execute_over_all(
        &self,
        sql: &str,
        name: &str,
        schema: datafusion::arrow::datatypes::SchemaRef,
        batches: Vec<datafusion::arrow::record_batch::RecordBatch>,
    ) -> Result<SendableRecordBatchStream> {
        let ctx = self.over_all(name, schema, batches)?;
        let plan = ctx.state().create_logical_plan(sql).await?;
        Ok(DataFrame::new(ctx.state(), plan).execute_stream().await?)
    }

    fn over(
        &self,
        name: &str,
        batch: datafusion::arrow::record_batch::RecordBatch,
    ) -> Result<SessionContext> {
        self.over_all(name, batch.schema(), vec![batch])
    }

    fn over_all(
        &self,
        name: &str,
        schema: datafusion::arrow::datatypes::SchemaRef,
        batches: Vec<datafusion::arrow::record_batch::RecordBatch>,
    ) -> Result<SessionContext> {
        let ctx = self.session()?;
        let table = datafusion::datasource::MemTable::try_new(schema, vec![batches])?;
        ctx.register_table(TableReference::bare(name), Arc::new(table))?;
        Ok(ctx)
    }

    async fn plan(
        &self,
        ctx: &SessionContext,
        sql: &str,
    ) -> Result<datafusion::logical_expr::LogicalPlan> {
        self.register_tables(ctx, sql.to_string(), 0).await?;
        let plan = ctx.state().create_logical_plan(sql).await?;
        SQLOptions::new()
            .with_allow_ddl(false)
            .with_allow_dml(false)
            .with_allow_statements(false)
            .verify_plan(&plan)
            .map_err(|e| QueryError::Sql(format!("only queries are allowed here: {e}")))?;
        Ok(plan)
    }

    /// Every topic that `sql` reads, through views (recursively): the
    /// relations it names that are neither views nor table functions. A
    /// name that is no topic counts as one too, so that a permission check
    /// answers alike for an unknown topic and a forbidden one. Parses
    /// only; must run on a query thread, as [`Self::check`] must.
    pub fn topics_read(&self, sql: &str) -> Result<BTreeSet<String>> {
        let ctx = self.session()?;
        let mut topics = BTreeSet::new();
        self.collect_topics(&ctx, sql, 0, &mut topics)?;
        Ok(topics)
    }

    fn collect_topics(
        &self,
        ctx: &SessionContext,
        sql: &str,
        depth: usize,
        topics: &mut BTreeSet<String>,
    ) -> Result<()> {
        check_sql(sql)?;
        let state = ctx.state();
        let dialect = state.config().options().sql_parser.dialect;
        let statement = state.sql_to_statement(sql, &dialect)?;
        for reference in state.resolve_table_references(&statement)? {
            let name = reference.table().to_string();
            if self.broker.topic(&name).is_ok() {
                topics.insert(name);
            } else if let Some(view) = self.views.get(&name) {
                if depth >= MAX_VIEW_DEPTH {
                    return Err(QueryError::Sql(format!(
                        "views nest deeper than {MAX_VIEW_DEPTH} levels at {name:?} (does a view use itself?)"
                    )));
                }
                self.collect_topics(ctx, &view.sql, depth + 1, topics)?;
            } else if !state.table_functions().contains_key(&name) {
                topics.insert(name);
            }
        }
        Ok(())
    }

    /// Registers the topics and views that `sql` names (views recursively).
    fn register_tables<'a>(
        &'a self,
        ctx: &'a SessionContext,
        sql: String,
        depth: usize,
    ) -> BoxFuture<'a, Result<()>> {
        Box::pin(async move {
            // Before anything parses it: see `sql_limits`.
            check_sql(&sql)?;
            let state = ctx.state();
            let dialect = state.config().options().sql_parser.dialect;
            let statement = state.sql_to_statement(&sql, &dialect)?;
            for reference in state.resolve_table_references(&statement)? {
                let name = reference.table().to_string();
                let bare = TableReference::bare(name.clone());
                if ctx.table_exist(bare.clone())? {
                    continue;
                }
                if self.broker.topic(&name).is_ok() {
                    let table = TopicTable::new(self.broker.clone(), self.tiering.clone(), &name);
                    ctx.register_table(bare, Arc::new(table))?;
                } else if let Some(view) = self.views.get(&name) {
                    if depth >= MAX_VIEW_DEPTH {
                        return Err(QueryError::Sql(format!(
                            "views nest deeper than {MAX_VIEW_DEPTH} levels at {name:?} (does a view use itself?)"
                        )));
                    }
                    self.register_tables(ctx, view.sql.clone(), depth + 1)
                        .await?;
                    let plan = ctx.state().create_logical_plan(&view.sql).await?;
                    ctx.register_table(bare, Arc::new(ViewTable::new(plan, Some(view.sql))))?;
                }
                // Anything else is left for the planner to report as unknown.
            }
            Ok(())
        })
    }
}

/// Quotes `name` as an SQL identifier.
pub fn quote_identifier(name: &str) -> String {
    format!("\"{}\"", name.replace('"', "\"\""))
}

/// Most keys one snapshot lookup may ask for.
pub const MAX_SNAPSHOT_KEYS: usize = 1000;

/// The SQL of a snapshot restricted to `keys`: each key's latest record
/// (as [`snapshot_sql`] chooses it), in the order the keys are given, each
/// key once (the first time it is given). Keys are SQL string literals
/// with `'` doubled; the session's dialect (generic) has no backslash
/// escapes, so no key can end its literal early.
pub fn snapshot_keys_sql(topic: &str, as_of_ms: i64, keys: &[String]) -> String {
    let t = quote_identifier(topic);
    let mut seen = std::collections::HashSet::new();
    let wanted: Vec<&String> = keys.iter().filter(|k| seen.insert(k.as_str())).collect();
    let literal = |k: &str| format!("'{}'", k.replace('\'', "''"));
    let list = wanted
        .iter()
        .map(|k| literal(k))
        .collect::<Vec<_>>()
        .join(", ");
    let rows = wanted
        .iter()
        .enumerate()
        .map(|(i, k)| format!("({}, {i})", literal(k)))
        .collect::<Vec<_>>()
        .join(", ");
    format!(
        "SELECT s.\"partition\", s.\"offset\", s.\"timestamp\", s.\"key\", s.\"value\", s.\"headers\" FROM (\
           SELECT *, row_number() OVER (PARTITION BY \"key\" \
             ORDER BY \"timestamp\" DESC, \"partition\" DESC, \"offset\" DESC) AS strata_rank \
           FROM {t} \
           WHERE \"timestamp\" < to_timestamp_millis({as_of_ms}) AND \"key\" IN ({list})\
         ) AS s JOIN (VALUES {rows}) AS strata_wanted(strata_key, strata_at) \
           ON s.\"key\" = strata_wanted.strata_key \
         WHERE s.strata_rank = 1 AND s.\"value\" <> 'null' ORDER BY strata_wanted.strata_at"
    )
}

/// The query that reconstructs a topic's table at `as_of_ms`: for each key,
/// the latest record with `timestamp < as_of` (latest by timestamp, ties
/// broken by log position), without keys whose latest value is `null`.
pub fn snapshot_sql(topic: &str, as_of_ms: i64) -> String {
    let t = quote_identifier(topic);
    format!(
        "SELECT \"partition\", \"offset\", \"timestamp\", \"key\", \"value\", \"headers\" FROM (\
           SELECT *, row_number() OVER (PARTITION BY \"key\" \
             ORDER BY \"timestamp\" DESC, \"partition\" DESC, \"offset\" DESC) AS strata_rank \
           FROM {t} \
           WHERE \"timestamp\" < to_timestamp_millis({as_of_ms}) AND \"key\" IS NOT NULL\
         ) WHERE strata_rank = 1 AND \"value\" <> 'null' ORDER BY \"key\""
    )
}

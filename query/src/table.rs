//! Topics as DataFusion tables. A scan pins the topic (see [`crate::scan`])
//! when the query is planned, and predicates on `timestamp`, `offset` and
//! `partition` become the scan's bounds: partitions outside are not read,
//! cold files and row groups are pruned by the manifest and Parquet
//! statistics, local segments by their time bounds and time index. Only the
//! columns the query uses are decoded from cold files.

use std::collections::BTreeSet;
use std::fmt;
use std::ops::Range;
use std::sync::Arc;

use async_trait::async_trait;
use datafusion::arrow::datatypes::SchemaRef;
use datafusion::catalog::{Session, TableProvider};
use datafusion::common::ScalarValue;
use datafusion::common::tree_node::TreeNodeRecursion;
use datafusion::error::{DataFusionError, Result as DfResult};
use datafusion::execution::TaskContext;
use datafusion::logical_expr::{
    Between, BinaryExpr, Expr, Operator, TableProviderFilterPushDown, TableType,
};
use datafusion::physical_expr::{EquivalenceProperties, PhysicalExpr};
use datafusion::physical_plan::empty::EmptyExec;
use datafusion::physical_plan::execution_plan::{Boundedness, EmissionType};
use datafusion::physical_plan::metrics::{ExecutionPlanMetricsSet, MetricBuilder, MetricsSet};
use datafusion::physical_plan::stream::RecordBatchStreamAdapter;
use datafusion::physical_plan::{
    DisplayAs, DisplayFormatType, ExecutionPlan, Partitioning, PlanProperties,
    SendableRecordBatchStream,
};
use futures::TryStreamExt;
use strata_broker::Broker;
use strata_tiering::Tiering;
use strata_tiering::schema::{schema, view_schema};

use crate::error::QueryError;
use crate::pin::{self, PinnedPartition};
use crate::scan::{self, ScanMetrics, ScanSpec, col};
use strata_tiering::cold_read::MAX_BLOOM_KEYS;

/// A topic as a table of `partition, offset, timestamp, key, value, headers`.
#[derive(Debug)]
pub struct TopicTable {
    broker: Arc<Broker>,
    tiering: Arc<Tiering>,
    topic: String,
}

impl TopicTable {
    /// The table of `topic` (which must exist when scanned).
    pub fn new(broker: Arc<Broker>, tiering: Arc<Tiering>, topic: &str) -> Self {
        Self {
            broker,
            tiering,
            topic: topic.to_string(),
        }
    }
}

#[async_trait]
impl TableProvider for TopicTable {
    fn schema(&self) -> SchemaRef {
        view_schema()
    }

    fn table_type(&self) -> TableType {
        TableType::Base
    }

    fn supports_filters_pushdown(
        &self,
        filters: &[&Expr],
    ) -> DfResult<Vec<TableProviderFilterPushDown>> {
        // Inexact: the scan prunes by the bounds; DataFusion still filters
        // the rows (timestamps inside a batch may be out of order).
        Ok(filters
            .iter()
            .map(|f| {
                if Bounds::default().apply(f) {
                    TableProviderFilterPushDown::Inexact
                } else {
                    TableProviderFilterPushDown::Unsupported
                }
            })
            .collect())
    }

    async fn scan(
        &self,
        _state: &dyn Session,
        projection: Option<&Vec<usize>>,
        filters: &[Expr],
        limit: Option<usize>,
    ) -> DfResult<Arc<dyn ExecutionPlan>> {
        let mut bounds = Bounds::default();
        for filter in filters {
            bounds.apply(filter);
        }
        let topic = self.broker.topic(&self.topic).map_err(QueryError::from)?;
        let ids: Vec<u32> = (0..topic.partitions().len() as u32)
            .filter(|&p| bounds.has_partition(p))
            .collect();
        let spec = ScanSpec {
            from_ms: bounds.from_ms,
            to_ms: bounds.to_ms,
            offsets: bounds.offsets.clone(),
            keys: Vec::new(),
            columns: projection.cloned().unwrap_or_else(|| col::ALL.to_vec()),
            limit: limit.map(|l| l as u64),
            string_views: true,
        }
        .with_keys(bounds.keys.clone().unwrap_or_default());
        let output = spec.output_schema()?;
        let no_key = bounds.keys.as_ref().is_some_and(BTreeSet::is_empty);
        if ids.is_empty() || spec.offsets.is_empty() || bounds.time_is_empty() || no_key {
            return Ok(Arc::new(EmptyExec::new(output)));
        }
        let snapshot = pin::pin_topic(&self.broker, &self.tiering, &self.topic, Some(&ids))
            .await
            .map_err(DataFusionError::from)?;
        Ok(Arc::new(TopicScanExec::new(
            self.tiering.clone(),
            snapshot,
            spec,
            output,
        )))
    }
}

/// What SQL predicates say about where rows can be.
#[derive(Debug, Clone, PartialEq)]
pub struct Bounds {
    pub from_ms: Option<i64>,
    pub to_ms: Option<i64>,
    pub offsets: Range<u64>,
    partitions_from: i64,
    partitions_to: i64,
    partitions_in: Option<BTreeSet<i64>>,
    /// `key = 'k'` or `key IN (...)`: only these keys can match (cold row
    /// groups are pruned by their bloom filters); `None`: any key.
    pub keys: Option<BTreeSet<String>>,
}

impl Default for Bounds {
    fn default() -> Self {
        Self {
            from_ms: None,
            to_ms: None,
            offsets: 0..u64::MAX,
            partitions_from: 0,
            partitions_to: i64::MAX,
            partitions_in: None,
            keys: None,
        }
    }
}

#[derive(Clone, Copy)]
enum Bound {
    /// `column >= value` (in the column's unit).
    AtLeast(i64),
    /// `column < value`.
    Below(i64),
}

impl Bounds {
    /// Narrows the bounds by `expr` when it is a comparison of `timestamp`,
    /// `offset` or `partition` with constants (or an `AND` of such);
    /// returns whether the whole of `expr` was understood.
    pub fn apply(&mut self, expr: &Expr) -> bool {
        match expr {
            Expr::BinaryExpr(BinaryExpr {
                left,
                op: Operator::And,
                right,
            }) => {
                let l = self.apply(left);
                let r = self.apply(right);
                l && r
            }
            Expr::BinaryExpr(BinaryExpr { left, op, right }) => {
                if let (Some(column), Expr::Literal(value, _)) = (column_name(left), right.as_ref())
                {
                    self.compare(column, *op, value)
                } else if let (Expr::Literal(value, _), Some(column)) =
                    (left.as_ref(), column_name(right))
                {
                    match op.swap() {
                        Some(op) => self.compare(column, op, value),
                        None => false,
                    }
                } else {
                    false
                }
            }
            Expr::Between(Between {
                expr,
                negated: false,
                low,
                high,
            }) => match (column_name(expr), low.as_ref(), high.as_ref()) {
                (Some(column), Expr::Literal(low, _), Expr::Literal(high, _)) => {
                    let a = self.compare(column, Operator::GtEq, low);
                    let b = self.compare(column, Operator::LtEq, high);
                    a && b
                }
                _ => false,
            },
            Expr::InList(list)
                if !list.negated
                    && column_name(&list.expr) == Some("key")
                    && list.list.len() <= MAX_BLOOM_KEYS =>
            {
                let values: Option<BTreeSet<String>> = list
                    .list
                    .iter()
                    .map(|e| match e {
                        Expr::Literal(v, _) => text(v),
                        _ => None,
                    })
                    .collect();
                match values {
                    Some(values) => {
                        self.narrow_keys(values);
                        true
                    }
                    None => false,
                }
            }
            Expr::InList(list) if !list.negated && column_name(&list.expr) == Some("partition") => {
                let values: Option<BTreeSet<i64>> = list
                    .list
                    .iter()
                    .map(|e| match e {
                        Expr::Literal(v, _) => integer(v),
                        _ => None,
                    })
                    .collect();
                match values {
                    Some(values) => {
                        self.partitions_in = Some(match self.partitions_in.take() {
                            Some(old) => old.intersection(&values).copied().collect(),
                            None => values,
                        });
                        true
                    }
                    None => false,
                }
            }
            _ => false,
        }
    }

    /// Whether partition `p` can hold rows.
    pub fn has_partition(&self, p: u32) -> bool {
        let p = i64::from(p);
        p >= self.partitions_from
            && p < self.partitions_to
            && self
                .partitions_in
                .as_ref()
                .is_none_or(|set| set.contains(&p))
    }

    fn time_is_empty(&self) -> bool {
        matches!((self.from_ms, self.to_ms), (Some(from), Some(to)) if from >= to)
    }

    fn narrow_keys(&mut self, keys: BTreeSet<String>) {
        self.keys = Some(match self.keys.take() {
            Some(old) => old.intersection(&keys).cloned().collect(),
            None => keys,
        });
    }

    fn compare(&mut self, column: &str, op: Operator, value: &ScalarValue) -> bool {
        if column == "key" {
            return match (op, text(value)) {
                (Operator::Eq, Some(key)) => {
                    self.narrow_keys(BTreeSet::from([key]));
                    true
                }
                _ => false,
            };
        }
        let bounds: Vec<Bound> = match (column, op) {
            ("timestamp", _) => match timestamp_ms(value) {
                Some((ms, exact)) => range_bounds(op, ms, exact),
                None => return false,
            },
            ("offset" | "partition", _) => match integer(value) {
                Some(v) => range_bounds(op, v, true),
                None => return false,
            },
            _ => return false,
        };
        if bounds.is_empty() {
            return false;
        }
        for bound in bounds {
            match (column, bound) {
                ("timestamp", Bound::AtLeast(v)) => {
                    self.from_ms = Some(self.from_ms.map_or(v, |f| f.max(v)));
                }
                ("timestamp", Bound::Below(v)) => {
                    self.to_ms = Some(self.to_ms.map_or(v, |t| t.min(v)));
                }
                ("offset", Bound::AtLeast(v)) => {
                    self.offsets.start = self.offsets.start.max(v.max(0) as u64);
                }
                ("offset", Bound::Below(v)) => {
                    self.offsets.end = self.offsets.end.min(v.max(0) as u64);
                }
                (_, Bound::AtLeast(v)) => self.partitions_from = self.partitions_from.max(v),
                (_, Bound::Below(v)) => self.partitions_to = self.partitions_to.min(v),
            }
        }
        true
    }
}

/// The bounds `column op value` sets; `exact` is false when `value` was
/// rounded down from a finer unit, and the bounds are widened to cover it.
fn range_bounds(op: Operator, v: i64, exact: bool) -> Vec<Bound> {
    let after = v.saturating_add(1);
    match op {
        Operator::Eq => vec![Bound::AtLeast(v), Bound::Below(after)],
        Operator::GtEq => vec![Bound::AtLeast(v)],
        Operator::Gt if exact => vec![Bound::AtLeast(after)],
        Operator::Gt => vec![Bound::AtLeast(v)],
        Operator::Lt if exact => vec![Bound::Below(v)],
        Operator::Lt | Operator::LtEq => vec![Bound::Below(after)],
        _ => Vec::new(),
    }
}

/// The column an expression reads, looking through casts that keep every
/// value distinct and in order (to `Int64`, or to a timestamp of
/// millisecond or finer unit). A cast to a coarser unit, such as seconds,
/// maps many values to one: bounds on it say nothing exact about the
/// column, so it is not looked through (and nothing is pushed down).
fn column_name(expr: &Expr) -> Option<&str> {
    use datafusion::arrow::datatypes::{DataType, TimeUnit};
    let keeps_order = |to: &DataType| {
        matches!(
            to,
            DataType::Int64
                | DataType::Timestamp(
                    TimeUnit::Millisecond | TimeUnit::Microsecond | TimeUnit::Nanosecond,
                    _
                )
        )
    };
    match expr {
        Expr::Column(c) => Some(c.name.as_str()),
        Expr::Cast(cast) if keeps_order(cast.field.data_type()) => column_name(&cast.expr),
        Expr::TryCast(cast) if keeps_order(cast.field.data_type()) => column_name(&cast.expr),
        _ => None,
    }
}

/// A string literal's text.
fn text(value: &ScalarValue) -> Option<String> {
    match value {
        ScalarValue::Utf8(Some(s))
        | ScalarValue::Utf8View(Some(s))
        | ScalarValue::LargeUtf8(Some(s)) => Some(s.clone()),
        _ => None,
    }
}

fn integer(value: &ScalarValue) -> Option<i64> {
    match value {
        ScalarValue::Int8(Some(v)) => Some(i64::from(*v)),
        ScalarValue::Int16(Some(v)) => Some(i64::from(*v)),
        ScalarValue::Int32(Some(v)) => Some(i64::from(*v)),
        ScalarValue::Int64(Some(v)) => Some(*v),
        ScalarValue::UInt8(Some(v)) => Some(i64::from(*v)),
        ScalarValue::UInt16(Some(v)) => Some(i64::from(*v)),
        ScalarValue::UInt32(Some(v)) => Some(i64::from(*v)),
        ScalarValue::UInt64(Some(v)) => i64::try_from(*v).ok(),
        _ => None,
    }
}

/// Milliseconds of a timestamp constant, and whether that is exact.
fn timestamp_ms(value: &ScalarValue) -> Option<(i64, bool)> {
    let floor = |v: i64, per_ms: i64| (v.div_euclid(per_ms), v.rem_euclid(per_ms) == 0);
    match value {
        ScalarValue::TimestampMillisecond(Some(v), _) => Some((*v, true)),
        ScalarValue::TimestampSecond(Some(v), _) => Some((v.saturating_mul(1000), true)),
        ScalarValue::TimestampMicrosecond(Some(v), _) => Some(floor(*v, 1_000)),
        ScalarValue::TimestampNanosecond(Some(v), _) => Some(floor(*v, 1_000_000)),
        _ => None,
    }
}

/// Reads pinned partitions of a topic, one DataFusion partition each.
#[derive(Debug)]
pub struct TopicScanExec {
    tiering: Arc<Tiering>,
    topic: String,
    parts: Vec<Arc<PinnedPartition>>,
    spec: Arc<ScanSpec>,
    properties: Arc<PlanProperties>,
    metrics: ExecutionPlanMetricsSet,
}

impl TopicScanExec {
    fn new(
        tiering: Arc<Tiering>,
        snapshot: pin::PinnedTopic,
        spec: ScanSpec,
        output: SchemaRef,
    ) -> Self {
        let properties = PlanProperties::new(
            EquivalenceProperties::new(output),
            Partitioning::UnknownPartitioning(snapshot.partitions.len()),
            EmissionType::Incremental,
            Boundedness::Bounded,
        );
        Self {
            tiering,
            topic: snapshot.topic,
            parts: snapshot.partitions,
            spec: Arc::new(spec),
            properties: Arc::new(properties),
            metrics: ExecutionPlanMetricsSet::new(),
        }
    }
}

impl DisplayAs for TopicScanExec {
    fn fmt_as(&self, _: DisplayFormatType, f: &mut fmt::Formatter) -> fmt::Result {
        let (mut cold, mut cold_all, mut hot, mut hot_all) = (0, 0, 0, 0);
        for part in &self.parts {
            let (c, ca) = part.cold_files(&self.spec);
            let (h, ha) = part.hot_segments(&self.spec);
            (cold, cold_all, hot, hot_all) = (cold + c, cold_all + ca, hot + h, hot_all + ha);
        }
        let schema = schema();
        let columns: Vec<&str> = self
            .spec
            .columns
            .iter()
            .map(|&c| schema.field(c).name().as_str())
            .collect();
        let partitions: Vec<u32> = self.parts.iter().map(|p| p.id).collect();
        write!(
            f,
            "TopicScanExec: topic={}, partitions={partitions:?}, columns=[{}], time=[{}, {}), cold_files={cold} of {cold_all}, hot_segments={hot} of {hot_all}",
            self.topic,
            columns.join(", "),
            self.spec.from_ms.map_or("-".into(), |v| v.to_string()),
            self.spec.to_ms.map_or("-".into(), |v| v.to_string()),
        )?;
        if self.spec.offsets != (0..u64::MAX) {
            write!(
                f,
                ", offsets=[{}, {})",
                self.spec.offsets.start, self.spec.offsets.end
            )?;
        }
        if !self.spec.keys.is_empty() {
            // Bloom filters prune cold row groups for these keys.
            write!(f, ", keys={}", self.spec.keys.len())?;
        }
        Ok(())
    }
}

impl ExecutionPlan for TopicScanExec {
    fn name(&self) -> &str {
        "TopicScanExec"
    }

    fn properties(&self) -> &Arc<PlanProperties> {
        &self.properties
    }

    fn children(&self) -> Vec<&Arc<dyn ExecutionPlan>> {
        Vec::new()
    }

    fn apply_expressions(
        &self,
        _f: &mut dyn FnMut(&Arc<dyn PhysicalExpr>) -> DfResult<TreeNodeRecursion>,
    ) -> DfResult<TreeNodeRecursion> {
        Ok(TreeNodeRecursion::Continue)
    }

    #[allow(deprecated)]
    fn with_new_children(
        self: Arc<Self>,
        _children: Vec<Arc<dyn ExecutionPlan>>,
    ) -> DfResult<Arc<dyn ExecutionPlan>> {
        Ok(self)
    }

    fn metrics(&self) -> Option<MetricsSet> {
        Some(self.metrics.clone_inner())
    }

    fn execute(
        &self,
        partition: usize,
        _context: Arc<TaskContext>,
    ) -> DfResult<SendableRecordBatchStream> {
        let part = self.parts.get(partition).cloned().ok_or_else(|| {
            DataFusionError::Internal(format!("TopicScanExec has no partition {partition}"))
        })?;
        let counter =
            |name: &'static str| MetricBuilder::new(&self.metrics).counter(name, partition);
        let metrics = ScanMetrics {
            cold_files: counter("cold_files_read"),
            row_groups_read: counter("row_groups_read"),
            row_groups_pruned: counter("row_groups_pruned"),
            cold_rows: counter("cold_rows_decoded"),
            hot_records: counter("hot_records_read"),
            partitions_pruned: counter("partitions_pruned"),
        };
        let batches = scan::scan_partition(self.tiering.clone(), part, self.spec.clone(), metrics)
            .map_err(DataFusionError::from);
        Ok(Box::pin(RecordBatchStreamAdapter::new(
            self.properties.eq_properties.schema().clone(),
            batches,
        )))
    }
}

#[cfg(test)]
mod tests {
    use datafusion::logical_expr::{col as column, lit};

    use super::*;

    fn ts(ms: i64) -> Expr {
        lit(ScalarValue::TimestampMillisecond(
            Some(ms),
            Some("UTC".into()),
        ))
    }

    #[test]
    fn time_offset_and_partition_predicates_become_bounds() {
        let mut b = Bounds::default();
        assert!(
            b.apply(
                &column("timestamp")
                    .gt_eq(ts(1000))
                    .and(column("timestamp").lt(ts(2000)))
            )
        );
        assert!(b.apply(&column("offset").gt(lit(5i64))));
        assert!(b.apply(&lit(3i32).gt(column("partition"))));
        assert_eq!((b.from_ms, b.to_ms), (Some(1000), Some(2000)));
        assert_eq!(b.offsets, 6..u64::MAX);
        assert!(b.has_partition(2) && !b.has_partition(3));
    }

    #[test]
    fn finer_units_widen_the_bounds() {
        let mut b = Bounds::default();
        let micros = |v| lit(ScalarValue::TimestampMicrosecond(Some(v), None));
        assert!(b.apply(&column("timestamp").gt(micros(1_500))));
        assert!(b.apply(&column("timestamp").lt(micros(9_500))));
        assert_eq!((b.from_ms, b.to_ms), (Some(1), Some(10)));
    }

    #[test]
    fn key_equality_and_lists_narrow_the_keys() {
        let mut b = Bounds::default();
        assert!(b.apply(&column("key").in_list(vec![lit("a"), lit("b")], false)));
        assert!(b.apply(&column("key").eq(lit("b"))));
        assert_eq!(b.keys, Some(BTreeSet::from(["b".to_string()])));
        assert!(b.apply(&column("key").eq(lit("z"))));
        assert_eq!(
            b.keys,
            Some(BTreeSet::new()),
            "contradicting keys match nothing"
        );
        let mut negated = Bounds::default();
        assert!(!negated.apply(&column("key").in_list(vec![lit("a")], true)));
        let many: Vec<_> = (0..=MAX_BLOOM_KEYS).map(|i| lit(format!("k{i}"))).collect();
        assert!(!Bounds::default().apply(&column("key").in_list(many, false)));
    }

    #[test]
    fn other_predicates_are_left_to_the_engine() {
        let mut b = Bounds::default();
        assert!(!b.apply(&column("key").not_eq(lit("a"))));
        assert!(!b.apply(&column("key").gt(lit("a"))));
        assert!(!b.apply(&column("offset").not_eq(lit(1i64))));
        assert_eq!(b, Bounds::default());
        let mut list = Bounds::default();
        assert!(list.apply(&column("partition").in_list(vec![lit(1i32), lit(4i32)], false)));
        assert!(list.has_partition(4) && !list.has_partition(2));
    }

    #[test]
    fn casts_to_coarser_units_are_not_bounds() {
        use datafusion::arrow::datatypes::{DataType, TimeUnit};
        let cast = |to: DataType| {
            Expr::Cast(datafusion::logical_expr::Cast::new(
                Box::new(column("timestamp")),
                to,
            ))
        };
        // Every record of the second 1 matches: its milliseconds 1000..2000.
        let second = lit(ScalarValue::TimestampSecond(Some(1), None));
        let mut b = Bounds::default();
        assert!(!b.apply(&cast(DataType::Timestamp(TimeUnit::Second, None)).eq(second)));
        assert_eq!(b, Bounds::default(), "nothing pushed down");
        // A cast to a finer unit keeps every value apart: still a bound.
        let micros = lit(ScalarValue::TimestampMicrosecond(Some(1_500_000), None));
        let mut b = Bounds::default();
        assert!(b.apply(&cast(DataType::Timestamp(TimeUnit::Microsecond, None)).gt_eq(micros)));
        assert_eq!(b.from_ms, Some(1500));
    }
}

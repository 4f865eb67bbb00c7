//! The state of materialized views on disk: one redb database per node
//! (`<data>/index/views.redb`), a table per view (`view/<name>`: the
//! grouping values, in Arrow's row format, → the partial aggregates, in
//! the same format) and one table of how far each view has applied each
//! partition (`<view>/<partition>` → next offset).
//!
//! # Contract
//!
//! [`ViewState::apply`] merges one chunk's partial rows and moves the
//! partition's progress together, in memory; [`ViewState::sync`] writes
//! every view's merged rows and progress in one durable commit (the
//! maintainer calls it at most [`SYNC_EVERY`] apart and at shutdown). So
//! a view's state, in memory and on disk, is always exactly the aggregate
//! of the records below its progress: a crash loses at most the progress
//! since the last flush, which is applied again from the log, and counts
//! nothing twice. Holding the rows until a flush writes a group once per
//! flush instead of once per chunk; what is held is bounded by the number
//! of groups. The state is derived data: a damaged file is deleted and
//! rebuilt.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::path::Path;
use std::time::Instant;

use arrow::array::{ArrayRef, RecordBatch, UInt32Array};
use arrow::compute::kernels::zip::zip;
use arrow::compute::kernels::{cmp, numeric};
use arrow::compute::{is_null, take};
use arrow::datatypes::SchemaRef;
use arrow::row::{RowConverter, SortField};
use datafusion::common::ScalarValue;
use parking_lot::Mutex;
use redb::{ReadableDatabase, ReadableTable, TableDefinition, TableHandle};

use super::shape::Merge;
use crate::derived_db::{DerivedDb, err};
use crate::error::{QueryError, Result};
use crate::key_index::store::{PROGRESS, SYNC_EVERY, read_progress};

/// redb's page cache for the views' state (see [`DerivedDb::open`]).
const CACHE_BYTES: usize = 32 << 20;

fn table(view: &str) -> String {
    format!("view/{view}")
}

/// The materialized views' state (see the module doc).
pub struct ViewState {
    db: DerivedDb,
    /// Rows and progress applied since the last flush, by view: the
    /// state is the database overlaid with them.
    pending: Mutex<HashMap<String, Pending>>,
    /// When the last flush was.
    flushed: Mutex<Instant>,
}

impl std::fmt::Debug for ViewState {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ViewState").finish_non_exhaustive()
    }
}

/// Encodes a view's rows: its grouping columns and its partial columns,
/// with the partial query's schema.
pub struct Codec {
    schema: SchemaRef,
    groups: usize,
    keys: RowConverter,
    values: RowConverter,
}

impl Codec {
    /// The codec of rows of `schema` whose first `groups` columns group.
    pub fn new(schema: SchemaRef, groups: usize) -> Result<Self> {
        let fields = |range: std::ops::Range<usize>| {
            schema.fields()[range]
                .iter()
                .map(|f| SortField::new(f.data_type().clone()))
                .collect::<Vec<_>>()
        };
        let n = schema.fields().len();
        Ok(Self {
            keys: RowConverter::new(fields(0..groups))?,
            values: RowConverter::new(fields(groups..n))?,
            schema,
            groups,
        })
    }
}

/// `old` merged with `new`, column by column and row by row (the arrays
/// of a column have the same type and length): counts and sums add, `min`
/// and `max` keep the smaller or larger; a null on either side (a group
/// whose values were all null) keeps the other side.
fn merge(merges: &[Merge], old: &[ArrayRef], new: &[ArrayRef]) -> Result<Vec<ArrayRef>> {
    merges
        .iter()
        .zip(old.iter().zip(new))
        .map(|(kind, (old, new))| {
            let both = match kind {
                Merge::Count | Merge::Sum => numeric::add_wrapping(old, new)?,
                Merge::Min => zip(&cmp::lt(new, old)?, new, old)?,
                Merge::Max => zip(&cmp::gt(new, old)?, new, old)?,
            };
            let either = zip(&is_null(old)?, new, &both)?;
            Ok(zip(&is_null(new)?, old, &either)?)
        })
        .collect()
}

/// A view's rows and progress applied since the last flush.
#[derive(Debug, Default)]
struct Pending {
    rows: BTreeMap<Vec<u8>, Vec<u8>>,
    progress: BTreeMap<u32, u64>,
}

/// A view's state table in `txn`, if it has one.
fn open_state(
    txn: &redb::ReadTransaction,
    view: &str,
) -> Result<Option<redb::ReadOnlyTable<&'static [u8], &'static [u8]>>> {
    let name = table(view);
    match txn.open_table(TableDefinition::<&[u8], &[u8]>::new(&name)) {
        Ok(t) => Ok(Some(t)),
        Err(redb::TableError::TableDoesNotExist(_)) => Ok(None),
        Err(e) => Err(err("reading", e)),
    }
}

impl ViewState {
    /// Opens (or creates) the state in `dir` (see [`DerivedDb::open`]).
    pub fn open(dir: &Path) -> Result<Self> {
        std::fs::create_dir_all(dir).map_err(|e| err("creating its directory", e))?;
        Ok(Self {
            db: DerivedDb::open(&dir.join("views.redb"), CACHE_BYTES)?,
            pending: Mutex::default(),
            flushed: Mutex::new(Instant::now()),
        })
    }

    /// How far `view` has applied `partition` (`None`: not at all).
    pub fn progress(&self, view: &str, partition: u32) -> Result<Option<u64>> {
        let pending = self.pending.lock();
        if let Some(&next) = pending.get(view).and_then(|p| p.progress.get(&partition)) {
            return Ok(Some(next));
        }
        read_progress(&self.db.get(), &format!("{view}/{partition}"))
    }

    /// Merges the partial rows of `batches` (offsets `..to` of
    /// `partition`) into `view`'s state and sets its progress to `to`,
    /// both in memory until the next flush ([`ViewState::sync`]).
    pub fn apply(
        &self,
        view: &str,
        codec: &Codec,
        merges: &[Merge],
        partition: u32,
        to: u64,
        batches: &[RecordBatch],
    ) -> Result<()> {
        let mut all = self.pending.lock();
        let txn = self.db.get().begin_read().map_err(|e| err("reading", e))?;
        let state = open_state(&txn, view)?;
        let pending = all.entry(view.to_string()).or_default();
        // Merged here first and taken into `pending` only once every batch
        // merged: an error leaves the state as it was (progress and rows
        // move together, as a transaction would).
        let mut staged: BTreeMap<Vec<u8>, Vec<u8>> = BTreeMap::new();
        for batch in batches {
            if batch.num_columns() != codec.schema.fields().len() {
                return Err(QueryError::Internal(
                    "a view's partial rows do not match its state".into(),
                ));
            }
            // Column at a time: one read per group, then the groups
            // already held merged as arrays and every row encoded at once
            // (a group appears once in a chunk's partial rows).
            let keys = codec
                .keys
                .convert_columns(&batch.columns()[..codec.groups])?;
            let (mut held, mut olds) = (Vec::new(), Vec::new());
            for row in 0..batch.num_rows() {
                let key = keys.row(row);
                let old = match staged
                    .get(key.as_ref())
                    .or_else(|| pending.rows.get(key.as_ref()))
                {
                    Some(old) => Some(old.clone()),
                    None => match &state {
                        Some(state) => state
                            .get(key.as_ref())
                            .map_err(|e| err("reading", e))?
                            .map(|old| old.value().to_vec()),
                        None => None,
                    },
                };
                if let Some(old) = old {
                    held.push(row as u32);
                    olds.push(old);
                }
            }
            let values = &batch.columns()[codec.groups..];
            let fresh = codec.values.convert_columns(values)?;
            let parser = codec.values.parser();
            let old = codec
                .values
                .convert_rows(olds.iter().map(|bytes| parser.parse(bytes)))?;
            let indices = UInt32Array::from(held.clone());
            let new = values
                .iter()
                .map(|column| Ok(take(column, &indices, None)?))
                .collect::<Result<Vec<_>>>()?;
            let merged = codec.values.convert_columns(&merge(merges, &old, &new)?)?;
            let mut held = held.iter().zip(merged.iter()).peekable();
            for row in 0..batch.num_rows() {
                let value = match held.next_if(|(h, _)| **h as usize == row) {
                    Some((_, merged)) => merged,
                    None => fresh.row(row),
                };
                staged.insert(keys.row(row).as_ref().to_vec(), value.as_ref().to_vec());
            }
        }
        pending.rows.append(&mut staged);
        pending.progress.insert(partition, to);
        Ok(())
    }

    /// Writes every view's pending rows and progress in one durable
    /// commit.
    pub fn sync(&self) -> Result<()> {
        let mut pending = self.pending.lock();
        if pending.is_empty() {
            *self.flushed.lock() = Instant::now();
            return Ok(());
        }
        let txn = self.db.get().begin_write().map_err(|e| err("writing", e))?;
        {
            let mut progress = txn.open_table(PROGRESS).map_err(|e| err("writing", e))?;
            for (view, held) in pending.iter() {
                let name = table(view);
                let mut state = txn
                    .open_table(TableDefinition::<&[u8], &[u8]>::new(&name))
                    .map_err(|e| err("writing", e))?;
                for (key, value) in &held.rows {
                    state
                        .insert(key.as_slice(), value.as_slice())
                        .map_err(|e| err("writing", e))?;
                }
                for (partition, next) in &held.progress {
                    progress
                        .insert(format!("{view}/{partition}").as_str(), next)
                        .map_err(|e| err("writing", e))?;
                }
            }
        }
        txn.commit().map_err(|e| err("committing", e))?;
        pending.clear();
        *self.flushed.lock() = Instant::now();
        Ok(())
    }

    /// [`ViewState::sync`] when the last flush is [`SYNC_EVERY`] old.
    pub fn sync_if_due(&self) -> Result<()> {
        if self.flushed.lock().elapsed() >= SYNC_EVERY {
            self.sync()?;
            self.db.compact_if_due()?;
        }
        Ok(())
    }

    /// The state of `view` as one batch of the partial schema: every group,
    /// or with `first`, the groups whose first grouping value is `first`.
    pub fn read(&self, view: &str, codec: &Codec, first: Option<&str>) -> Result<RecordBatch> {
        // Rows sort by their first grouping value first: one key's groups
        // share the prefix that value encodes to.
        let prefix = match first {
            Some(text) => {
                let field = codec.schema.field(0);
                let value = ScalarValue::try_from_string(text.to_string(), field.data_type())?;
                let first_only =
                    RowConverter::new(vec![SortField::new(field.data_type().clone())])?;
                let rows = first_only.convert_columns(&[value.to_array()?])?;
                rows.row(0).as_ref().to_vec()
            }
            None => Vec::new(),
        };
        // The flushed rows overlaid with the pending ones, merged in key
        // order (a pending row replaces the flushed one).
        let (mut keys, mut values): (Vec<Vec<u8>>, Vec<Vec<u8>>) = (Vec::new(), Vec::new());
        let all = self.pending.lock();
        let mut pending = all
            .get(view)
            .map(|p| p.rows.range(prefix.clone()..))
            .into_iter()
            .flatten()
            .take_while(|(k, _)| k.starts_with(&prefix))
            .peekable();
        let txn = self.db.get().begin_read().map_err(|e| err("reading", e))?;
        if let Some(state) = open_state(&txn, view)? {
            let range = state
                .range(prefix.as_slice()..)
                .map_err(|e| err("reading", e))?;
            for entry in range {
                let (k, v) = entry.map_err(|e| err("reading", e))?;
                let k = k.value();
                if !k.starts_with(&prefix) {
                    break;
                }
                while let Some((pk, pv)) = pending.next_if(|(pk, _)| pk.as_slice() < k) {
                    keys.push(pk.clone());
                    values.push(pv.clone());
                }
                match pending.next_if(|(pk, _)| pk.as_slice() == k) {
                    Some((pk, pv)) => {
                        keys.push(pk.clone());
                        values.push(pv.clone());
                    }
                    None => {
                        keys.push(k.to_vec());
                        values.push(v.value().to_vec());
                    }
                }
            }
        }
        for (pk, pv) in pending {
            keys.push(pk.clone());
            values.push(pv.clone());
        }
        drop(all);
        let (kp, vp) = (codec.keys.parser(), codec.values.parser());
        let mut columns = codec.keys.convert_rows(keys.iter().map(|k| kp.parse(k)))?;
        columns.extend(
            codec
                .values
                .convert_rows(values.iter().map(|v| vp.parse(v)))?,
        );
        Ok(RecordBatch::try_new(codec.schema.clone(), columns)?)
    }

    /// Forgets `view` entirely.
    pub fn drop_view(&self, view: &str) -> Result<()> {
        let mut pending = self.pending.lock();
        pending.remove(view);
        let txn = self.db.get().begin_write().map_err(|e| err("writing", e))?;
        {
            let name = table(view);
            txn.delete_table(TableDefinition::<&[u8], &[u8]>::new(&name))
                .map_err(|e| err("writing", e))?;
            let mut progress = txn.open_table(PROGRESS).map_err(|e| err("writing", e))?;
            let prefix = format!("{view}/");
            progress
                .retain(|k, _| !k.starts_with(&prefix))
                .map_err(|e| err("writing", e))?;
        }
        txn.commit().map_err(|e| err("committing", e))
    }

    /// Names of the views that have state.
    pub fn views(&self) -> Result<Vec<String>> {
        let mut names: BTreeSet<String> = self.pending.lock().keys().cloned().collect();
        let txn = self.db.get().begin_read().map_err(|e| err("reading", e))?;
        let tables = txn.list_tables().map_err(|e| err("reading", e))?;
        names.extend(tables.filter_map(|t| t.name().strip_prefix("view/").map(str::to_string)));
        Ok(names.into_iter().collect())
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use arrow::array::{Array, Int64Array, StringArray};

    use super::*;

    fn ints(values: &[Option<i64>]) -> ArrayRef {
        Arc::new(Int64Array::from(values.to_vec()))
    }

    fn strings(values: &[Option<&str>]) -> ArrayRef {
        Arc::new(StringArray::from(values.to_vec()))
    }

    /// Guards the column-at-a-time merge: each kind, and a null on either
    /// side keeping the other (a group whose values were all null so far).
    #[test]
    fn merges_column_at_a_time_keeping_the_non_null_side() {
        let old = [
            ints(&[Some(2), Some(5), None, Some(7)]),
            ints(&[Some(3), Some(9), Some(4), None]),
            ints(&[Some(3), Some(9), None, Some(1)]),
            strings(&[Some("b"), Some("m"), None, Some("q")]),
        ];
        let new = [
            ints(&[Some(1), Some(-5), Some(6), None]),
            ints(&[Some(1), Some(10), None, Some(8)]),
            ints(&[Some(4), Some(2), Some(5), None]),
            strings(&[Some("a"), Some("z"), Some("c"), None]),
        ];
        let merges = [Merge::Sum, Merge::Min, Merge::Max, Merge::Min];
        let merged = merge(&merges, &old, &new).unwrap();
        assert_eq!(
            merged[0].as_ref(),
            ints(&[Some(3), Some(0), Some(6), Some(7)]).as_ref()
        );
        assert_eq!(
            merged[1].as_ref(),
            ints(&[Some(1), Some(9), Some(4), Some(8)]).as_ref()
        );
        assert_eq!(
            merged[2].as_ref(),
            ints(&[Some(4), Some(9), Some(5), Some(1)]).as_ref()
        );
        assert_eq!(
            merged[3].as_ref(),
            strings(&[Some("a"), Some("m"), Some("c"), Some("q")]).as_ref()
        );
        let both_null = merge(&[Merge::Count], &[ints(&[None])], &[ints(&[None])]).unwrap();
        assert!(both_null[0].is_null(0));
    }

    /// Guards apply's read-merge-write: groups met before merge, new ones
    /// are stored as they come, and the state reads back whole.
    #[test]
    fn apply_merges_held_groups_and_stores_new_ones() {
        let dir = tempfile::tempdir().unwrap();
        let state = ViewState::open(dir.path()).unwrap();
        let schema = Arc::new(arrow::datatypes::Schema::new(vec![
            arrow::datatypes::Field::new("__g0", arrow::datatypes::DataType::Utf8, true),
            arrow::datatypes::Field::new("n", arrow::datatypes::DataType::Int64, true),
            arrow::datatypes::Field::new("top", arrow::datatypes::DataType::Int64, true),
        ]));
        let codec = Codec::new(schema.clone(), 1).unwrap();
        let merges = [Merge::Count, Merge::Max];
        let batch = |keys: &[&str], n: &[i64], top: &[i64]| {
            RecordBatch::try_new(
                schema.clone(),
                vec![
                    strings(&keys.iter().map(|k| Some(*k)).collect::<Vec<_>>()),
                    Arc::new(Int64Array::from(n.to_vec())),
                    Arc::new(Int64Array::from(top.to_vec())),
                ],
            )
            .unwrap()
        };
        // A chunk that fails part-way changes nothing (regression guard:
        // its first batch's rows must not be merged without its progress).
        let wrong = RecordBatch::try_new(
            Arc::new(arrow::datatypes::Schema::new(vec![
                arrow::datatypes::Field::new("__g0", arrow::datatypes::DataType::Utf8, true),
            ])),
            vec![strings(&[Some("a")])],
        )
        .unwrap();
        let failed = state.apply(
            "v",
            &codec,
            &merges,
            0,
            10,
            &[batch(&["a", "c"], &[2, 1], &[5, 7]), wrong],
        );
        assert!(failed.is_err());
        assert_eq!(state.progress("v", 0).unwrap(), None);
        assert_eq!(state.read("v", &codec, None).unwrap().num_rows(), 0);
        state
            .apply(
                "v",
                &codec,
                &merges,
                0,
                10,
                &[batch(&["a", "c"], &[2, 1], &[5, 7])],
            )
            .unwrap();
        state
            .apply(
                "v",
                &codec,
                &merges,
                0,
                20,
                &[
                    batch(&["b", "c"], &[4, 3], &[1, 2]),
                    batch(&["a"], &[1], &[9]),
                ],
            )
            .unwrap();
        let check = |state: &ViewState| {
            let read = state.read("v", &codec, None).unwrap();
            assert_eq!(
                read.column(0).as_ref(),
                strings(&[Some("a"), Some("b"), Some("c")]).as_ref()
            );
            assert_eq!(
                read.column(1).as_ref(),
                ints(&[Some(3), Some(4), Some(4)]).as_ref()
            );
            assert_eq!(
                read.column(2).as_ref(),
                ints(&[Some(9), Some(1), Some(7)]).as_ref()
            );
            assert_eq!(state.progress("v", 0).unwrap(), Some(20));
            let one = state.read("v", &codec, Some("c")).unwrap();
            assert_eq!(one.column(1).as_ref(), ints(&[Some(4)]).as_ref());
        };
        // Held in memory, then flushed, then merged over what was flushed.
        check(&state);
        state.sync().unwrap();
        check(&state);
        state
            .apply("v", &codec, &merges, 0, 30, &[batch(&["a"], &[1], &[1])])
            .unwrap();
        assert_eq!(state.progress("v", 0).unwrap(), Some(30));
        let a = state.read("v", &codec, Some("a")).unwrap();
        assert_eq!(a.column(1).as_ref(), ints(&[Some(4)]).as_ref());
        // Pending rows before, between, after and over the flushed ones.
        state
            .apply(
                "v",
                &codec,
                &merges,
                0,
                40,
                &[batch(&["0", "bb", "d"], &[1, 1, 1], &[0, 0, 0])],
            )
            .unwrap();
        let all = state.read("v", &codec, None).unwrap();
        assert_eq!(
            all.column(0).as_ref(),
            strings(&[
                Some("0"),
                Some("a"),
                Some("b"),
                Some("bb"),
                Some("c"),
                Some("d")
            ])
            .as_ref()
        );
        assert_eq!(
            all.column(1).as_ref(),
            ints(&[Some(1), Some(4), Some(4), Some(1), Some(4), Some(1)]).as_ref()
        );
        // A crash before the next flush: the flushed state and progress
        // come back together.
        drop(state);
        let state = ViewState::open(dir.path()).unwrap();
        check(&state);
        assert_eq!(state.views().unwrap(), vec!["v".to_string()]);
        state.drop_view("v").unwrap();
        assert_eq!(state.progress("v", 0).unwrap(), None);
        assert!(state.views().unwrap().is_empty());
    }
}

//! The state of materialized views on disk: one redb database per node
//! (`<data>/index/views.redb`), a table per view (`view/<name>`: the
//! grouping values, in Arrow's row format, → the partial aggregates, in
//! the same format) and one table of how far each view has applied each
//! partition (`<view>/<partition>` → next offset).
//!
//! # Contract
//!
//! [`ViewState::apply`] merges one chunk's partial rows and moves the
//! partition's progress in one transaction, so a view's state is always
//! exactly the aggregate of the records below its progress: a crash
//! between chunks loses nothing and counts nothing twice. Commits are
//! fsynced (views are updated a chunk at a time, not a record at a time).
//! The state is derived data: a damaged file is deleted and rebuilt.

use std::path::Path;

use arrow::array::{ArrayRef, RecordBatch};
use arrow::datatypes::SchemaRef;
use arrow::row::{RowConverter, SortField};
use datafusion::common::ScalarValue;
use redb::{Database, ReadableDatabase, ReadableTable, TableDefinition, TableHandle};

use super::shape::Merge;
use crate::error::{QueryError, Result};
use crate::key_index::store::{PROGRESS, err, open_database, read_progress};

fn table(view: &str) -> String {
    format!("view/{view}")
}

/// The materialized views' state (see the module doc).
pub struct ViewState {
    db: Database,
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

    fn scalars(&self, bytes: &[u8]) -> Result<Vec<ScalarValue>> {
        let parser = self.values.parser();
        let arrays = self.values.convert_rows([parser.parse(bytes)])?;
        arrays
            .iter()
            .map(|a| Ok(ScalarValue::try_from_array(a, 0)?))
            .collect()
    }

    fn encode(&self, scalars: &[ScalarValue]) -> Result<Vec<u8>> {
        let arrays = scalars
            .iter()
            .map(|s| Ok(s.to_array()?))
            .collect::<Result<Vec<ArrayRef>>>()?;
        let rows = self.values.convert_columns(&arrays)?;
        Ok(rows.row(0).as_ref().to_vec())
    }
}

/// `state` merged with `new`, column by column.
fn merge(merges: &[Merge], state: &mut [ScalarValue], new: Vec<ScalarValue>) -> Result<()> {
    for ((kind, old), new) in merges.iter().zip(state.iter_mut()).zip(new) {
        if new.is_null() {
            continue;
        }
        if old.is_null() {
            *old = new;
            continue;
        }
        let replace = match kind {
            Merge::Count | Merge::Sum => {
                *old = old.add(&new)?;
                false
            }
            Merge::Min => new.partial_cmp(old).is_some_and(|o| o.is_lt()),
            Merge::Max => new.partial_cmp(old).is_some_and(|o| o.is_gt()),
        };
        if replace {
            *old = new;
        }
    }
    Ok(())
}

impl ViewState {
    /// Opens (or creates) the state in `dir` (see [`open_database`]).
    pub fn open(dir: &Path) -> Result<Self> {
        std::fs::create_dir_all(dir).map_err(|e| err("creating its directory", e))?;
        Ok(Self {
            db: open_database(&dir.join("views.redb"))?,
        })
    }

    /// How far `view` has applied `partition` (`None`: not at all).
    pub fn progress(&self, view: &str, partition: u32) -> Result<Option<u64>> {
        read_progress(&self.db, &format!("{view}/{partition}"))
    }

    /// Merges the partial rows of `batches` (offsets `..to` of
    /// `partition`) into `view`'s state and sets its progress to `to`.
    pub fn apply(
        &self,
        view: &str,
        codec: &Codec,
        merges: &[Merge],
        partition: u32,
        to: u64,
        batches: &[RecordBatch],
    ) -> Result<()> {
        let txn = self.db.begin_write().map_err(|e| err("writing", e))?;
        {
            let name = table(view);
            let mut state = txn
                .open_table(TableDefinition::<&[u8], &[u8]>::new(&name))
                .map_err(|e| err("writing", e))?;
            for batch in batches {
                if batch.num_columns() != codec.schema.fields().len() {
                    return Err(QueryError::Internal(
                        "a view's partial rows do not match its state".into(),
                    ));
                }
                let keys = codec
                    .keys
                    .convert_columns(&batch.columns()[..codec.groups])?;
                let values = &batch.columns()[codec.groups..];
                for row in 0..batch.num_rows() {
                    let key = keys.row(row);
                    let new = values
                        .iter()
                        .map(|a| Ok(ScalarValue::try_from_array(a, row)?))
                        .collect::<Result<Vec<_>>>()?;
                    let merged = match state.get(key.as_ref()).map_err(|e| err("reading", e))? {
                        Some(old) => {
                            let mut old = codec.scalars(old.value())?;
                            merge(merges, &mut old, new)?;
                            old
                        }
                        None => new,
                    };
                    let bytes = codec.encode(&merged)?;
                    state
                        .insert(key.as_ref(), bytes.as_slice())
                        .map_err(|e| err("writing", e))?;
                }
            }
            let mut progress = txn.open_table(PROGRESS).map_err(|e| err("writing", e))?;
            progress
                .insert(format!("{view}/{partition}").as_str(), to)
                .map_err(|e| err("writing", e))?;
        }
        txn.commit().map_err(|e| err("committing", e))
    }

    /// The state of `view` as one batch of the partial schema: every group,
    /// or with `first`, the groups whose first grouping value is `first`.
    pub fn read(&self, view: &str, codec: &Codec, first: Option<&str>) -> Result<RecordBatch> {
        let txn = self.db.begin_read().map_err(|e| err("reading", e))?;
        let name = table(view);
        let state = match txn.open_table(TableDefinition::<&[u8], &[u8]>::new(&name)) {
            Ok(t) => Some(t),
            Err(redb::TableError::TableDoesNotExist(_)) => None,
            Err(e) => return Err(err("reading", e)),
        };
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
        let (mut keys, mut values) = (Vec::new(), Vec::new());
        if let Some(state) = state {
            let range = state
                .range(prefix.as_slice()..)
                .map_err(|e| err("reading", e))?;
            for entry in range {
                let (k, v) = entry.map_err(|e| err("reading", e))?;
                if !k.value().starts_with(&prefix) {
                    break;
                }
                keys.push(k.value().to_vec());
                values.push(v.value().to_vec());
            }
        }
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
        let txn = self.db.begin_write().map_err(|e| err("writing", e))?;
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
        let txn = self.db.begin_read().map_err(|e| err("reading", e))?;
        let tables = txn.list_tables().map_err(|e| err("reading", e))?;
        Ok(tables
            .filter_map(|t| t.name().strip_prefix("view/").map(str::to_string))
            .collect())
    }
}

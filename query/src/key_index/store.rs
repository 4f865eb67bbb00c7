//! The key index on disk: one redb database per node (`<data>/index/keys.redb`),
//! a table per partition (`keys/<topic>/<partition>`, key → [`entry`]) and
//! one table of how far each partition has been applied.
//!
//! # Contract
//!
//! - [`IndexStore::apply`] is atomic: a partition's entries and its
//!   progress change together, so after any crash the index is exactly the
//!   result of applying the partition's records below its progress.
//! - Commits are made durable at most [`SYNC_EVERY`] apart (and by
//!   [`IndexStore::sync`]); a crash loses at most that much progress, which
//!   the maintainer applies again from the log. Nothing here is a source of
//!   truth: a damaged file is deleted and rebuilt.

use std::collections::HashMap;
use std::path::Path;
use std::time::{Duration, Instant};

use arrow::array::RecordBatch;
use parking_lot::Mutex;
use redb::{Database, Durability, ReadableDatabase, ReadableTable, TableDefinition, TableHandle};
use strata_tiering::schema::RecordColumns;

use super::entry::{self, Entry};
use crate::derived_db::{DerivedDb, err};
use crate::error::Result;

/// redb's page cache for the index (see [`DerivedDb::open`]).
const CACHE_BYTES: usize = 96 << 20;

/// Longest a commit stays volatile (see the contract).
pub const SYNC_EVERY: Duration = Duration::from_secs(1);

/// Commits of derived data (the key index, the views' state) that are
/// made durable at most [`SYNC_EVERY`] apart: an fsync per commit would
/// cost more than applying the records again after a crash. A redb commit
/// without durability is still atomic; a crash returns the database to
/// its last durable commit.
#[derive(Debug)]
pub(crate) struct LazySync {
    /// When commits were last made durable, and whether any were made
    /// since without being durable.
    state: Mutex<(Instant, bool)>,
}

impl LazySync {
    pub(crate) fn new() -> Self {
        Self {
            state: Mutex::new((Instant::now(), false)),
        }
    }

    /// Begins a write transaction of `db`, durable only when the last
    /// durable commit is [`SYNC_EVERY`] old; pass the returned flag to
    /// [`LazySync::committed`] once it commits.
    pub(crate) fn begin(&self, db: &Database) -> Result<(redb::WriteTransaction, bool)> {
        let mut txn = db.begin_write().map_err(|e| err("writing", e))?;
        let durable = self.state.lock().0.elapsed() >= SYNC_EVERY;
        if !durable {
            txn.set_durability(Durability::None)
                .map_err(|e| err("writing", e))?;
        }
        Ok((txn, durable))
    }

    /// Records a commit (`durable`: made durable, with everything before).
    pub(crate) fn committed(&self, durable: bool) {
        let mut state = self.state.lock();
        *state = if durable {
            (Instant::now(), false)
        } else {
            (state.0, true)
        };
    }

    /// Makes every commit of `db` so far durable.
    pub(crate) fn sync(&self, db: &Database) -> Result<()> {
        let txn = db.begin_write().map_err(|e| err("writing", e))?;
        txn.commit().map_err(|e| err("committing", e))?;
        self.committed(true);
        Ok(())
    }

    /// [`LazySync::sync`] when a commit has stayed volatile for
    /// [`SYNC_EVERY`] (a database gone idle keeps the contract).
    pub(crate) fn sync_if_due(&self, db: &Database) -> Result<()> {
        let (at, dirty) = *self.state.lock();
        if dirty && at.elapsed() >= SYNC_EVERY {
            self.sync(db)?;
        }
        Ok(())
    }
}

/// `<topic>/<partition>` → the next offset to apply (the materialized
/// views' database has one too, `<view>/<partition>` → ...).
pub(crate) const PROGRESS: TableDefinition<&str, u64> = TableDefinition::new("progress");

/// The entry `at` of `db`'s [`PROGRESS`] table (`None`: absent).
pub(crate) fn read_progress(db: &Database, at: &str) -> Result<Option<u64>> {
    let txn = db.begin_read().map_err(|e| err("reading", e))?;
    let table = match txn.open_table(PROGRESS) {
        Ok(t) => t,
        Err(redb::TableError::TableDoesNotExist(_)) => return Ok(None),
        Err(e) => return Err(err("reading", e)),
    };
    Ok(table
        .get(at)
        .map_err(|e| err("reading", e))?
        .map(|v| v.value()))
}

/// Prefix of the per-partition tables' names.
const KEYS: &str = "keys/";

fn name(topic: &str, partition: u32) -> String {
    format!("{topic}/{partition}")
}

fn keys_table(name: &str) -> String {
    format!("{KEYS}{name}")
}

/// What the index holds for some keys in one partition.
#[derive(Debug)]
pub struct PartitionHits {
    /// The next offset to apply: entries reflect every record below it.
    /// `None` when the partition was never indexed.
    pub progress: Option<u64>,
    /// One per key asked, in order.
    pub entries: Vec<Option<Entry>>,
}

/// The node's key index (see the module doc).
#[derive(Debug)]
pub struct IndexStore {
    db: DerivedDb,
    synced: LazySync,
}

impl IndexStore {
    /// Opens (or creates) the index in `dir`. A file that does not open
    /// (damaged, or of another format) is deleted and started afresh: the
    /// maintainer rebuilds it from the log and the cold tier.
    pub fn open(dir: &Path) -> Result<Self> {
        std::fs::create_dir_all(dir).map_err(|e| err("creating its directory", e))?;
        Ok(Self {
            db: DerivedDb::open(&dir.join("keys.redb"), CACHE_BYTES)?,
            synced: LazySync::new(),
        })
    }

    /// Bytes the index takes on disk.
    pub fn bytes(&self) -> u64 {
        self.db.bytes()
    }

    /// Compacts the file when it is mostly free space (see
    /// [`DerivedDb::compact_if_due`]).
    pub fn compact_if_due(&self) -> Result<bool> {
        self.db.compact_if_due()
    }

    /// How far `partition` of `topic` has been applied (`None`: never).
    pub fn progress(&self, topic: &str, partition: u32) -> Result<Option<u64>> {
        read_progress(&self.db.get(), &name(topic, partition))
    }

    /// The progress of partitions `0..count` of `topic`, in one read.
    pub fn progress_of(&self, topic: &str, count: u32) -> Result<Vec<Option<u64>>> {
        let txn = self.db.get().begin_read().map_err(|e| err("reading", e))?;
        let table = match txn.open_table(PROGRESS) {
            Ok(t) => t,
            Err(redb::TableError::TableDoesNotExist(_)) => return Ok(vec![None; count as usize]),
            Err(e) => return Err(err("reading", e)),
        };
        (0..count)
            .map(|p| {
                Ok(table
                    .get(name(topic, p).as_str())
                    .map_err(|e| err("reading", e))?
                    .map(|v| v.value()))
            })
            .collect()
    }

    /// Marks `partitions` of `topic`, which hold nothing yet, as indexed
    /// (progress 0), in one transaction.
    pub fn mark_indexed(&self, topic: &str, partitions: &[u32]) -> Result<()> {
        let txn = self.db.get().begin_write().map_err(|e| err("writing", e))?;
        {
            let mut progress = txn.open_table(PROGRESS).map_err(|e| err("writing", e))?;
            for &p in partitions {
                progress
                    .insert(name(topic, p).as_str(), 0)
                    .map_err(|e| err("writing", e))?;
            }
        }
        txn.commit().map_err(|e| err("committing", e))?;
        self.synced.committed(true);
        Ok(())
    }

    /// Every (topic, partition) the index holds.
    pub fn partitions(&self) -> Result<Vec<(String, u32)>> {
        let txn = self.db.get().begin_read().map_err(|e| err("reading", e))?;
        let tables = txn.list_tables().map_err(|e| err("reading", e))?;
        Ok(tables
            .filter_map(|t| {
                let (topic, partition) = t.name().strip_prefix(KEYS)?.rsplit_once('/')?;
                Some((topic.to_string(), partition.parse().ok()?))
            })
            .collect())
    }

    /// Applies the records of `batches` (rows of [`strata_tiering::schema::schema`],
    /// offsets `from..to` of the partition) and sets its progress to `to`,
    /// in one transaction. A key keeps its latest record (by timestamp,
    /// then offset); records without a key are not indexed.
    pub fn apply(
        &self,
        topic: &str,
        partition: u32,
        to: u64,
        batches: &[RecordBatch],
    ) -> Result<()> {
        let (txn, durable) = self.synced.begin(&self.db.get())?;
        let at = name(topic, partition);
        {
            let table_name = keys_table(&at);
            let mut table = txn
                .open_table(TableDefinition::<&str, &[u8]>::new(&table_name))
                .map_err(|e| err("writing", e))?;
            let mut encoded = Vec::new();
            for batch in batches {
                let columns = RecordColumns::new(batch)?;
                // The newest row of each key in this batch, then one read
                // and at most one write per key.
                let mut newest: HashMap<&str, usize> = HashMap::new();
                for row in 0..batch.num_rows() {
                    let Some(key) = columns.key(row) else {
                        continue;
                    };
                    let order = (columns.timestamp(row), columns.offset(row));
                    newest
                        .entry(key)
                        .and_modify(|best| {
                            if order > (columns.timestamp(*best), columns.offset(*best)) {
                                *best = row;
                            }
                        })
                        .or_insert(row);
                }
                // In key order: neighbouring keys share B-tree pages, so
                // each page is copied once per chunk rather than once per
                // key (a chunk touches most pages of a big index).
                let mut newest: Vec<(&str, usize)> = newest.into_iter().collect();
                newest.sort_unstable_by_key(|&(key, _)| key);
                for (key, row) in newest {
                    let order = (columns.timestamp(row), columns.offset(row));
                    let stored = table.get(key).map_err(|e| err("reading", e))?;
                    if stored.is_some_and(|s| entry::order(s.value()).is_some_and(|o| o >= order)) {
                        continue;
                    }
                    encoded.clear();
                    let headers: Vec<(&str, &str)> = columns.headers(row).collect();
                    let fits = entry::encode(
                        &mut encoded,
                        order.0,
                        order.1,
                        columns.value(row),
                        headers.into_iter(),
                    );
                    if fits.is_none() {
                        // A record the entry format cannot hold: its key
                        // is marked so that lookups of it scan, never
                        // answering from an older record.
                        encoded.clear();
                        entry::encode_unindexed(&mut encoded, order.0, order.1);
                    }
                    table
                        .insert(key, encoded.as_slice())
                        .map_err(|e| err("writing", e))?;
                }
            }
            let mut progress = txn.open_table(PROGRESS).map_err(|e| err("writing", e))?;
            progress
                .insert(at.as_str(), to)
                .map_err(|e| err("writing", e))?;
        }
        txn.commit().map_err(|e| err("committing", e))?;
        self.synced.committed(durable);
        Ok(())
    }

    /// Forgets a partition (`None`: every partition of the topic), so that it
    /// is indexed again from its start.
    pub fn reset(&self, topic: &str, partition: Option<u32>) -> Result<()> {
        let txn = self.db.get().begin_write().map_err(|e| err("writing", e))?;
        {
            let doomed: Vec<String> = match partition {
                Some(p) => vec![name(topic, p)],
                None => self
                    .partitions()?
                    .into_iter()
                    .filter(|(t, _)| t == topic)
                    .map(|(t, p)| name(&t, p))
                    .collect(),
            };
            let mut progress = txn.open_table(PROGRESS).map_err(|e| err("writing", e))?;
            for at in &doomed {
                progress
                    .remove(at.as_str())
                    .map_err(|e| err("writing", e))?;
                let table_name = keys_table(at);
                txn.delete_table(TableDefinition::<&str, &[u8]>::new(&table_name))
                    .map_err(|e| err("writing", e))?;
            }
        }
        txn.commit().map_err(|e| err("committing", e))?;
        self.synced.committed(true);
        Ok(())
    }

    /// Makes every commit so far durable.
    pub fn sync(&self) -> Result<()> {
        self.synced.sync(&self.db.get())
    }

    /// [`IndexStore::sync`] when a commit has stayed volatile for
    /// [`SYNC_EVERY`] (an index gone idle keeps the contract).
    pub fn sync_if_due(&self) -> Result<()> {
        self.synced.sync_if_due(&self.db.get())
    }

    /// What the index holds for `keys` in each of `partitions`, all read
    /// in one snapshot.
    pub fn lookup(
        &self,
        topic: &str,
        partitions: &[u32],
        keys: &[&str],
    ) -> Result<Vec<PartitionHits>> {
        let txn = self.db.get().begin_read().map_err(|e| err("reading", e))?;
        let progress = match txn.open_table(PROGRESS) {
            Ok(t) => Some(t),
            Err(redb::TableError::TableDoesNotExist(_)) => None,
            Err(e) => return Err(err("reading", e)),
        };
        let mut out = Vec::with_capacity(partitions.len());
        for &p in partitions {
            let at = name(topic, p);
            let done = match &progress {
                Some(t) => t
                    .get(at.as_str())
                    .map_err(|e| err("reading", e))?
                    .map(|v| v.value()),
                None => None,
            };
            let table_name = keys_table(&at);
            let table = match txn.open_table(TableDefinition::<&str, &[u8]>::new(&table_name)) {
                Ok(t) => Some(t),
                Err(redb::TableError::TableDoesNotExist(_)) => None,
                Err(e) => return Err(err("reading", e)),
            };
            let mut entries = Vec::with_capacity(keys.len());
            for key in keys {
                let found = match &table {
                    Some(t) => t.get(*key).map_err(|e| err("reading", e))?,
                    None => None,
                };
                entries.push(match found {
                    None => None,
                    Some(bytes) => Some(entry::decode(bytes.value()).ok_or_else(|| {
                        err(
                            "decoding an entry",
                            format!("{topic}/{p} holds a damaged entry"),
                        )
                    })?),
                });
            }
            out.push(PartitionHits {
                progress: done,
                entries,
            });
        }
        Ok(out)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use strata_tiering::schema::ArrowBatchBuilder;

    fn batch(first: u64, n: u64) -> RecordBatch {
        let mut rows = ArrowBatchBuilder::new();
        for offset in first..first + n {
            let key = format!("k{}", offset % 50);
            let value = format!("{{\"o\":{offset}}}");
            rows.push_parts(0, offset, offset as i64, Some(&key), &value, &[])
                .unwrap();
        }
        rows.finish().unwrap()
    }

    /// A damaged index file (cut short anywhere, or not a database at
    /// all) opens as an empty index instead of failing or panicking.
    #[test]
    fn damaged_files_open_empty() {
        let dir = tempfile::tempdir().unwrap();
        {
            let store = IndexStore::open(dir.path()).unwrap();
            store.apply("t", 0, 500, &[batch(0, 500)]).unwrap();
            store.sync().unwrap();
            assert_eq!(store.progress("t", 0).unwrap(), Some(500));
            let hits = store.lookup("t", &[0], &["k7", "nope"]).unwrap();
            assert_eq!(hits[0].entries[0].as_ref().map(|e| e.offset), Some(457));
            assert!(hits[0].entries[1].is_none());
        }
        let path = dir.path().join("keys.redb");
        let whole = std::fs::read(&path).unwrap();
        let mut cuts: Vec<usize> = (0..whole.len()).step_by(whole.len() / 16 + 1).collect();
        cuts.push(whole.len() - 1);
        for cut in cuts {
            std::fs::write(&path, &whole[..cut]).unwrap();
            let store = IndexStore::open(dir.path()).unwrap();
            // Whatever survived is consistent: no progress, or all of it.
            let progress = store.progress("t", 0).unwrap();
            assert!(
                matches!(progress, None | Some(500)),
                "cut at {cut}: {progress:?}"
            );
            store.apply("t", 1, 10, &[batch(0, 10)]).unwrap();
        }
        std::fs::write(&path, b"not a database").unwrap();
        let store = IndexStore::open(dir.path()).unwrap();
        assert_eq!(store.progress("t", 0).unwrap(), None);
    }

    /// Later records win by timestamp, not by arrival: an older record
    /// applied after a newer one leaves the newer one.
    #[test]
    fn the_latest_by_timestamp_wins() {
        let dir = tempfile::tempdir().unwrap();
        let store = IndexStore::open(dir.path()).unwrap();
        let mut rows = ArrowBatchBuilder::new();
        rows.push_parts(0, 0, 200, Some("k"), "\"new\"", &[])
            .unwrap();
        rows.push_parts(0, 1, 100, Some("k"), "\"old\"", &[])
            .unwrap();
        store.apply("t", 0, 2, &[rows.finish().unwrap()]).unwrap();
        let mut rows = ArrowBatchBuilder::new();
        rows.push_parts(0, 2, 150, Some("k"), "\"older\"", &[])
            .unwrap();
        rows.push_parts(0, 3, 200, Some("k"), "\"tie\"", &[])
            .unwrap();
        store.apply("t", 0, 4, &[rows.finish().unwrap()]).unwrap();
        let hits = store.lookup("t", &[0], &["k"]).unwrap();
        assert_eq!(
            hits[0].entries[0].as_ref().map(|e| e.value.as_str()),
            Some("\"tie\"")
        );
        store.reset("t", None).unwrap();
        assert_eq!(store.progress("t", 0).unwrap(), None);
        assert!(store.partitions().unwrap().is_empty());
    }
}

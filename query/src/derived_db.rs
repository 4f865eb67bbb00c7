//! The redb databases of derived data (the key index, the materialized
//! views' state): how one opens, and when its file is compacted.
//!
//! # Contract
//!
//! - Nothing in them is a source of truth: a file that does not open
//!   because it is damaged is deleted and rebuilt from the log.
//! - A transaction begun through [`DerivedDb::get`] sees the database as
//!   redb promises; compaction never runs under one (redb refuses while a
//!   transaction is open, and no transaction begins while it runs).

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use parking_lot::{Mutex, RwLock, RwLockReadGuard};
use redb::{CompactionMode, Database};

use crate::error::{QueryError, Result};

/// An error of a derived database (`what` it was doing when it failed).
pub(crate) fn err(what: &str, e: impl std::fmt::Display) -> QueryError {
    QueryError::Internal(format!("the index failed {what}: {e}"))
}

/// How often a database is checked for space to reclaim.
pub const COMPACT_CHECK_EVERY: Duration = Duration::from_secs(10);
/// Files smaller than this are never compacted.
const COMPACT_MIN_BYTES: u64 = 4 << 20;

/// One database of derived data (see the module's contract).
#[derive(Debug)]
pub(crate) struct DerivedDb {
    db: RwLock<Database>,
    path: PathBuf,
    /// When the file was last checked for space to reclaim.
    checked: Mutex<Instant>,
}

impl DerivedDb {
    /// Opens (or creates) the database at `path`. A file that does not
    /// open because it is damaged (or of another format) is deleted and
    /// started afresh; "already open" and I/O errors other than
    /// unreadable data are returned.
    ///
    /// `cache_bytes` bounds redb's page cache (its default is 1 GiB, which
    /// a catch-up of 100 M records over 1 M keys filled: the server's peak
    /// RSS was 766 MiB); pages beyond it are read through the OS's.
    pub(crate) fn open(path: &Path, cache_bytes: usize) -> Result<Self> {
        let create = || {
            redb::Builder::new()
                .set_cache_size(cache_bytes)
                .create(path)
        };
        // redb can panic instead of failing on some damaged files: either
        // way the file is damaged and is rebuilt.
        let opened = std::panic::catch_unwind(create)
            .unwrap_or_else(|_| Err(redb::DatabaseError::RepairAborted));
        let db = match opened {
            Ok(db) => db,
            // Not damage: the file stays.
            Err(e @ redb::DatabaseError::DatabaseAlreadyOpen) => return Err(err("opening", e)),
            Err(redb::DatabaseError::Storage(redb::StorageError::Io(e)))
                if !matches!(
                    e.kind(),
                    std::io::ErrorKind::InvalidData | std::io::ErrorKind::UnexpectedEof
                ) =>
            {
                return Err(err("opening", e));
            }
            Err(error) => {
                tracing::warn!(%error, path = %path.display(),
                    "derived data does not open; rebuilding it from the log");
                std::fs::remove_file(path).map_err(|e| err("removing a damaged file", e))?;
                create().map_err(|e| err("creating its file", e))?
            }
        };
        Ok(Self {
            db: RwLock::new(db),
            path: path.to_path_buf(),
            checked: Mutex::new(Instant::now()),
        })
    }

    /// The database, to begin a transaction on; waits while a compaction
    /// runs.
    pub(crate) fn get(&self) -> RwLockReadGuard<'_, Database> {
        self.db.read()
    }

    /// Bytes the file takes.
    pub(crate) fn bytes(&self) -> u64 {
        std::fs::metadata(&self.path).map_or(0, |m| m.len())
    }

    /// Compacts the file when it is mostly free space, checked at most
    /// every [`COMPACT_CHECK_EVERY`]; true when it did.
    ///
    /// Why: commits that are not durable ([`crate::key_index::store::LazySync`])
    /// cannot reuse the pages they free until the next durable one, so a
    /// catch-up of millions of records leaves a file several times its
    /// data (41 MB for 10 MB of entries, measured), which redb keeps.
    /// Compaction packs it (to 11 MB, in ~50 ms); transactions wait
    /// meanwhile, and one already open makes it wait for the next check.
    pub(crate) fn compact_if_due(&self) -> Result<bool> {
        {
            let mut checked = self.checked.lock();
            if checked.elapsed() < COMPACT_CHECK_EVERY {
                return Ok(false);
            }
            *checked = Instant::now();
        }
        self.compact_if_mostly_free()
    }

    /// [`DerivedDb::compact_if_due`] without the wait between checks.
    fn compact_if_mostly_free(&self) -> Result<bool> {
        if self.bytes() < COMPACT_MIN_BYTES {
            return Ok(false);
        }
        let stats = {
            let db = self.get();
            let txn = db.begin_write().map_err(|e| err("writing", e))?;
            let stats = txn.stats().map_err(|e| err("reading", e))?;
            txn.abort().map_err(|e| err("writing", e))?;
            stats
        };
        if stats.fragmented_bytes() <= stats.stored_bytes() + stats.metadata_bytes() {
            return Ok(false);
        }
        let before = self.bytes();
        let started = Instant::now();
        match self.db.write().compact(CompactionMode::Maximum) {
            Ok(_) => {
                tracing::debug!(path = %self.path.display(), before, after = self.bytes(),
                    took_ms = started.elapsed().as_millis() as u64, "compacted derived data");
                Ok(true)
            }
            Err(redb::CompactionError::TransactionInProgress) => Ok(false),
            Err(e) => Err(err("compacting", e)),
        }
    }
}

#[cfg(test)]
mod tests {
    use redb::{Durability, ReadableDatabase, ReadableTable, TableDefinition};

    use super::*;

    const TABLE: TableDefinition<u64, &[u8]> = TableDefinition::new("t");

    /// A database whose 20,000 keys were rewritten by commits that are
    /// not durable (as the key index applies a catch-up), then one
    /// durable commit: mostly free pages.
    fn fragmented(dir: &Path) -> DerivedDb {
        let db = DerivedDb::open(&dir.join("d.redb"), 1 << 20).unwrap();
        for round in 0..20u8 {
            let mut txn = db.get().begin_write().unwrap();
            txn.set_durability(Durability::None).unwrap();
            {
                let mut t = txn.open_table(TABLE).unwrap();
                for k in 0..20_000u64 {
                    t.insert(k, [round; 100].as_slice()).unwrap();
                }
            }
            txn.commit().unwrap();
        }
        db.get().begin_write().unwrap().commit().unwrap();
        db
    }

    #[test]
    fn a_file_of_mostly_free_pages_is_compacted_and_keeps_its_data() {
        let dir = tempfile::tempdir().unwrap();
        let db = fragmented(dir.path());
        let before = db.bytes();
        assert!(db.compact_if_mostly_free().unwrap(), "{before} bytes");
        let after = db.bytes();
        assert!(after * 2 < before, "{before} -> {after}");
        let txn = db.get().begin_read().unwrap();
        let t = txn.open_table(TABLE).unwrap();
        for k in [0, 9_999, 19_999] {
            assert_eq!(t.get(k).unwrap().unwrap().value(), [19u8; 100].as_slice());
        }
        // Packed now: nothing more to gain.
        drop((t, txn));
        assert!(!db.compact_if_mostly_free().unwrap());
    }

    #[test]
    fn an_open_transaction_puts_compaction_off() {
        let dir = tempfile::tempdir().unwrap();
        let db = fragmented(dir.path());
        let reading = db.get().begin_read().unwrap();
        assert!(!db.compact_if_mostly_free().unwrap());
        drop(reading);
        assert!(db.compact_if_mostly_free().unwrap());
    }
}

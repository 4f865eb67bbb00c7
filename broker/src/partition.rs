//! One partition: an append-only log of segments with group-commit durability.
//!
//! Writers append a batch under a short lock (a `pwrite`, no fsync), then
//! wait for durability: the first waiter becomes the *sync leader* and
//! fsyncs everything written so far, while later writers keep appending;
//! when it finishes, every writer covered by that fsync returns, and the next
//! waiter leads the next fsync. One fsync thus covers as many batches as
//! arrive while the previous one runs. Records become visible to readers
//! (and count in `end_offset`) only once durable.

use std::fs;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::Instant;

use parking_lot::{Condvar, Mutex, MutexGuard, RwLock};
use tokio::sync::watch;

use crate::batch::EncodedBatch;
use crate::cursor::LogCursor;
use crate::durable::{TMP_SUFFIX, sync_dir};
use crate::error::{BrokerError, IoContext, Result};
use crate::segment::{Segment, SegmentInfo, parse_log_file_name};

/// How a partition rolls and indexes its segments.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct LogConfig {
    /// Roll when the active segment would grow past this many bytes.
    pub segment_bytes: u64,
    /// Roll when the active segment's first batch is this old.
    pub segment_ms: i64,
    /// Bytes of log between two sparse index entries.
    pub index_interval_bytes: u32,
}

/// Offsets and sizes of a partition's hot tier at one moment.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PartitionStats {
    pub partition: u32,
    /// First offset on local disk.
    pub start_offset: u64,
    /// The offset the next record will get.
    pub end_offset: u64,
    pub segments: usize,
    pub bytes: u64,
    pub min_timestamp: Option<i64>,
    pub max_timestamp: Option<i64>,
}

#[derive(Debug)]
struct Writer {
    active: Arc<Segment>,
    position: u64,
    next_offset: u64,
    first_append_ms: Option<i64>,
}

#[derive(Debug, Default)]
struct SyncState {
    in_progress: bool,
    failed: Option<String>,
}

/// A partition's log on local disk.
#[derive(Debug)]
pub struct Partition {
    id: u32,
    dir: PathBuf,
    config: LogConfig,
    segments: RwLock<Vec<Arc<Segment>>>,
    writer: Mutex<Writer>,
    sync: Mutex<SyncState>,
    synced: Condvar,
    end_offset: AtomicU64,
    end_tx: watch::Sender<u64>,
    closed: AtomicBool,
    fsync_seconds: metrics::Histogram,
}

impl Partition {
    /// Opens (or creates) the partition in `dir`, recovering from a crash:
    /// the last segment is validated batch by batch and a torn or corrupt
    /// tail is truncated; missing or damaged indexes are rebuilt.
    pub fn open(id: u32, dir: &Path, config: LogConfig) -> Result<Self> {
        fs::create_dir_all(dir).context(|| format!("creating {}", dir.display()))?;
        let bases = list_segments(dir)?;
        let interval = config.index_interval_bytes;
        let mut segments = Vec::with_capacity(bases.len().max(1));
        let (active, tail) = match bases.split_last() {
            None => {
                let segment = Segment::create(dir, 0, interval)?;
                sync_dir(dir)?;
                (segment, None)
            }
            Some((&last, sealed)) => {
                for &base in sealed {
                    let segment = Segment::open_sealed(
                        dir.join(crate::segment::log_file_name(base)),
                        base,
                        interval,
                    )?;
                    segments.push(Arc::new(segment));
                }
                let (segment, tail) = Segment::recover_active(
                    dir.join(crate::segment::log_file_name(last)),
                    last,
                    interval,
                )?;
                (segment, Some(tail))
            }
        };
        let active = Arc::new(active);
        segments.push(active.clone());
        check_continuity(&segments)?;
        let (position, next_offset, first_append_ms) = tail
            .map_or((0, active.base_offset(), None), |t| {
                (t.position, t.next_offset, t.first_append_ms)
            });
        let (end_tx, _) = watch::channel(next_offset);
        Ok(Self {
            id,
            dir: dir.to_path_buf(),
            config,
            segments: RwLock::new(segments),
            writer: Mutex::new(Writer {
                active,
                position,
                next_offset,
                first_append_ms,
            }),
            sync: Mutex::new(SyncState::default()),
            synced: Condvar::new(),
            end_offset: AtomicU64::new(next_offset),
            end_tx,
            closed: AtomicBool::new(false),
            fsync_seconds: metrics::histogram!("strata_fsync_seconds"),
        })
    }

    /// The partition number.
    pub fn id(&self) -> u32 {
        self.id
    }

    /// The offset the next record will get; every offset below it is durable.
    pub fn end_offset(&self) -> u64 {
        self.end_offset.load(Ordering::Acquire)
    }

    /// The first offset still on local disk.
    pub fn start_offset(&self) -> u64 {
        self.segments.read().first().map_or(0, |s| s.base_offset())
    }

    /// A receiver that changes whenever `end_offset` grows (for long polls).
    pub fn subscribe(&self) -> watch::Receiver<u64> {
        self.end_tx.subscribe()
    }

    /// Appends one batch and returns its base offset. The batch is written
    /// but not yet durable: call [`Partition::wait_durable`] before acking.
    pub fn append(&self, batch: &mut EncodedBatch, now_ms: i64) -> Result<u64> {
        let mut w = self.writer.lock();
        if self.closed.load(Ordering::Acquire) {
            return Err(BrokerError::Unavailable {
                message: "the server is shutting down".into(),
                retry_after_secs: 1,
            });
        }
        if let Some(reason) = &self.sync.lock().failed {
            return Err(BrokerError::Internal(format!(
                "partition {} is read-only: {reason}",
                self.id
            )));
        }
        let len = batch.as_bytes().len() as u64;
        let count = u64::from(batch.view().record_count());
        if self.should_roll(&w, len, count, now_ms) {
            self.roll_locked(&mut w)?;
        }
        let base = w.next_offset;
        batch.set_base_offset(base);
        if let Err(source) = w.active.file().write_all_at(batch.as_bytes(), w.position) {
            // Leave no partial batch behind; recovery would cut it anyway.
            let _ = w.active.file().set_len(w.position);
            return Err(BrokerError::Io {
                context: format!("appending to {}", w.active.path().display()),
                source,
            });
        }
        w.active.on_append(&batch.view(), w.position);
        w.position += len;
        w.next_offset += count;
        w.first_append_ms.get_or_insert(now_ms);
        Ok(base)
    }

    /// Blocks until every offset below `target` is durable (fsynced) and
    /// visible. When this returns `Ok`, those records survive a crash.
    pub fn wait_durable(&self, target: u64) -> Result<()> {
        let mut st = self.sync.lock();
        loop {
            if let Some(reason) = &st.failed {
                return Err(BrokerError::Internal(format!(
                    "fsync failed earlier: {reason}"
                )));
            }
            if self.end_offset() >= target {
                return Ok(());
            }
            if st.in_progress {
                self.synced.wait(&mut st);
                continue;
            }
            st.in_progress = true;
            let outcome = MutexGuard::unlocked(&mut st, || self.sync_once());
            st.in_progress = false;
            if let Err(e) = outcome {
                // After a failed fsync the page cache may have dropped the
                // data (fsyncgate): never report it durable by retrying.
                st.failed = Some(e.to_string());
            }
            self.synced.notify_all();
        }
    }

    /// Fsyncs everything written so far and publishes it to readers.
    fn sync_once(&self) -> Result<()> {
        let (segment, position, next_offset) = {
            let w = self.writer.lock();
            (w.active.clone(), w.position, w.next_offset)
        };
        let started = Instant::now();
        segment
            .file()
            .sync_data()
            .context(|| format!("fsyncing {}", segment.path().display()))?;
        self.fsync_seconds.record(started.elapsed().as_secs_f64());
        self.publish(&segment, position, next_offset);
        Ok(())
    }

    fn publish(&self, segment: &Segment, position: u64, next_offset: u64) {
        segment.publish(position, next_offset);
        let previous = self.end_offset.fetch_max(next_offset, Ordering::AcqRel);
        if next_offset > previous {
            self.end_tx.send_if_modified(|v| {
                let grew = next_offset > *v;
                *v = (*v).max(next_offset);
                grew
            });
        }
    }

    fn should_roll(&self, w: &Writer, len: u64, count: u64, now_ms: i64) -> bool {
        if w.position == 0 {
            return false;
        }
        let relative_end = w.next_offset + count - w.active.base_offset();
        w.position + len > self.config.segment_bytes
            || w.first_append_ms
                .is_some_and(|t| now_ms.saturating_sub(t) >= self.config.segment_ms)
            || relative_end > u64::from(u32::MAX)
    }

    /// Seals the active segment if it is non-empty and older than
    /// `segment_ms`; returns whether it rolled.
    pub fn roll_if_due(&self, now_ms: i64) -> Result<bool> {
        let mut w = self.writer.lock();
        let due = w.position > 0
            && w.first_append_ms
                .is_some_and(|t| now_ms.saturating_sub(t) >= self.config.segment_ms);
        if due && !self.closed.load(Ordering::Acquire) {
            self.roll_locked(&mut w)?;
        }
        Ok(due)
    }

    /// Seals the active segment now if it holds any record; returns whether it rolled.
    pub fn roll(&self) -> Result<bool> {
        let mut w = self.writer.lock();
        if w.position == 0 || self.closed.load(Ordering::Acquire) {
            return Ok(false);
        }
        self.roll_locked(&mut w)?;
        Ok(true)
    }

    fn roll_locked(&self, w: &mut Writer) -> Result<()> {
        let old = w.active.clone();
        old.file()
            .sync_data()
            .context(|| format!("fsyncing {}", old.path().display()))?;
        self.publish(&old, w.position, w.next_offset);
        old.seal()?;
        let new = Arc::new(Segment::create(
            &self.dir,
            w.next_offset,
            self.config.index_interval_bytes,
        )?);
        sync_dir(&self.dir)?;
        self.segments.write().push(new.clone());
        w.active = new;
        w.position = 0;
        w.first_append_ms = None;
        tracing::debug!(partition = self.id, base = w.next_offset, "rolled segment");
        Ok(())
    }

    /// Fsyncs what was written and refuses further appends.
    pub fn close(&self) -> Result<()> {
        let w = self.writer.lock();
        self.closed.store(true, Ordering::Release);
        w.active
            .file()
            .sync_all()
            .context(|| format!("fsyncing {}", w.active.path().display()))?;
        self.publish(&w.active, w.position, w.next_offset);
        Ok(())
    }

    /// The segments, oldest first; the last one is active (not sealed).
    pub fn segments(&self) -> Vec<SegmentInfo> {
        self.segments.read().iter().map(|s| s.info()).collect()
    }

    /// A cursor from `from` up to the current end offset.
    /// `from` outside `[start_offset, end_offset]` is `OffsetOutOfRange`.
    pub fn cursor(&self, from: u64) -> Result<LogCursor> {
        let end = self.end_offset();
        let segments = self.segments.read();
        let start = segments.first().map_or(0, |s| s.base_offset());
        if from < start || from > end {
            return Err(BrokerError::OffsetOutOfRange {
                offset: from,
                start_offset: start,
                end_offset: end,
            });
        }
        let first = segments
            .partition_point(|s| s.base_offset() <= from)
            .saturating_sub(1);
        Ok(LogCursor::new(segments[first..].to_vec(), from, end))
    }

    /// The earliest record with `timestamp >= target` as (offset, timestamp),
    /// or `None` when every record is older. Correct for out-of-order
    /// timestamps: the time index bounds where scanning may start.
    pub fn offset_for_timestamp(&self, target: i64) -> Result<Option<(u64, i64)>> {
        let end = self.end_offset();
        let start = {
            let segments = self.segments.read();
            segments
                .iter()
                .find(|s| s.info().max_timestamp.is_some_and(|max| max >= target))
                .map(|s| s.scan_start_for_time(target))
        };
        let Some(start) = start else {
            return Ok(None);
        };
        let mut cursor = match self.cursor(start.min(end)) {
            Ok(cursor) => cursor,
            // Retention moved the start past it: scan from the new start.
            Err(BrokerError::OffsetOutOfRange { start_offset, .. }) => self.cursor(start_offset)?,
            Err(e) => return Err(e),
        };
        let mut found = None;
        while let Some(batch) = cursor.next_batch()? {
            if batch.max_timestamp() < target {
                continue;
            }
            for record in batch.records() {
                let record = record.map_err(|e| BrokerError::Internal(e.to_string()))?;
                if record.offset >= start && record.offset < end && record.timestamp >= target {
                    found = Some((record.offset, record.timestamp));
                    break;
                }
            }
            if found.is_some() {
                break;
            }
        }
        Ok(found)
    }

    /// Offsets, sizes and time bounds of the hot tier now.
    pub fn stats(&self) -> PartitionStats {
        let infos = self.segments();
        PartitionStats {
            partition: self.id,
            start_offset: infos.first().map_or(0, |s| s.base_offset),
            end_offset: self.end_offset(),
            segments: infos.len(),
            bytes: infos.iter().map(|s| s.size_bytes).sum(),
            min_timestamp: infos.iter().filter_map(|s| s.min_timestamp).min(),
            max_timestamp: infos.iter().filter_map(|s| s.max_timestamp).max(),
        }
    }
}

fn list_segments(dir: &Path) -> Result<Vec<u64>> {
    let mut bases = Vec::new();
    let entries = fs::read_dir(dir).context(|| format!("listing {}", dir.display()))?;
    for entry in entries {
        let entry = entry.context(|| format!("listing {}", dir.display()))?;
        let name = entry.file_name();
        let name = name.to_string_lossy();
        if name.ends_with(TMP_SUFFIX) {
            let _ = fs::remove_file(entry.path());
        } else if let Some(base) = parse_log_file_name(&name) {
            bases.push(base);
        }
    }
    bases.sort_unstable();
    Ok(bases)
}

fn check_continuity(segments: &[Arc<Segment>]) -> Result<()> {
    for pair in segments.windows(2) {
        let (end, next) = (pair[0].info().end_offset, pair[1].base_offset());
        if end != next {
            return Err(BrokerError::Corrupt {
                path: pair[1].path().display().to_string(),
                message: format!(
                    "offsets are not dense: previous segment ends at {end}, this one starts at {next}"
                ),
            });
        }
    }
    Ok(())
}

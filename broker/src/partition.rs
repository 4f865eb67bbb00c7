//! One partition: an append-only log of segments with group-commit durability.
//!
//! Writers append a batch under a short lock (a copy into the active
//! segment's aligned tail buffer, no I/O), then wait for durability: the
//! first waiter becomes the *sync leader*, takes everything appended so far,
//! writes it (direct I/O, see `tail`) and fsyncs, while later writers keep
//! appending; when it finishes, every writer covered by that fsync returns,
//! and the next waiter leads the next write. One write and one fsync thus
//! cover as many batches as arrive while the previous one runs. Records
//! become visible to readers (and count in `end_offset`) only once durable,
//! and, on a replicated partition, only once committed (below the high
//! watermark that the replication layer sets: see `replica`).
//!
//! Rolling happens under the writer lock without I/O on the old segment:
//! its last bytes are queued, and the next leader writes them, trims the
//! padding, fsyncs and seals it before it writes anything of the new one.
//! So the log on disk is always a durable prefix, and recovery after a crash
//! in the middle of a roll drops the unfinished newer segment.
//!
//! This file is longer than most (about 600 lines) on purpose: appends, the
//! sync leader, rolls and retention share one lock protocol (the writer
//! lock, the sealing queue, the sync state), and it can only be checked
//! when it is read in one place.

use std::fs::{self, OpenOptions};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU32, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use parking_lot::{Condvar, Mutex, MutexGuard, RwLock};
use tokio::sync::watch;

mod replica;

pub use replica::Fetched;

use crate::batch::EncodedBatch;
use crate::cursor::{LogCursor, PinnedLog};
use crate::durable::{TMP_SUFFIX, sync_dir};
use crate::epochs::LeaderEpochs;
use crate::error::{BrokerError, IoContext, Result};
use crate::segment::{
    Segment, SegmentInfo, log_file_name, parse_log_file_name, remove_segment_files,
};
use crate::tail::{Flush, Tail};

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
    tail: Tail,
    next_offset: u64,
    first_append_ms: Option<i64>,
    /// Segments rolled away whose last bytes the next leader writes and seals.
    sealing: Vec<Sealing>,
    /// The sync state's generation when this writer was made.
    generation: u64,
}

#[derive(Debug)]
struct Sealing {
    segment: Arc<Segment>,
    tail: Tail,
    flush: Option<Flush>,
    end_offset: u64,
}

#[derive(Debug, Default)]
struct SyncState {
    in_progress: bool,
    failed: Option<Failure>,
    /// Bumped by each recovery from a full disk, which discards what was
    /// appended but not durable: a batch of an older generation is durable
    /// only if it ended at or before its generation's last durable end.
    generation: u64,
    /// The durable end offset each past generation finished at.
    generation_ends: Vec<u64>,
}

/// Why the partition stopped taking writes.
#[derive(Debug)]
struct Failure {
    reason: String,
    /// The file system was full: passes once space is freed, and the
    /// partition recovers in place (see [`Partition::recover`]).
    out_of_space: bool,
    /// When a recovery was last tried.
    last_try: Option<Instant>,
}

/// How often a partition stopped by a full disk tries to take writes again.
const RECOVERY_BACKOFF: Duration = Duration::from_secs(1);

/// The file whose presence says that every keyed record of the partition
/// is where the default partitioner puts its key; it holds the topic's
/// partition count in decimal (see [`Partition::keys_by_default_partitioner`]).
pub const KEYS_BY_DEFAULT_FILE: &str = "keys-by-default-partitioner";

/// Where an appended batch landed; [`Partition::wait_durable`] takes it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Appended {
    /// The batch's first offset.
    pub base: u64,
    /// One past its last offset.
    pub end: u64,
    generation: u64,
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
    /// One past the last durable record (the log end offset).
    durable_end: AtomicU64,
    /// One past the last committed record of a replicated partition;
    /// `u64::MAX` while the partition is not replicated (every durable
    /// record is committed). Readers see `min(durable_end, high_watermark)`.
    high_watermark: AtomicU64,
    /// Sends what readers may see whenever it grows.
    end_tx: watch::Sender<u64>,
    /// Sends the durable end whenever it changes (followers' long polls).
    log_end_tx: watch::Sender<u64>,
    /// Which leader epoch wrote which offsets (see [`crate::epochs`]).
    epochs: Mutex<LeaderEpochs>,
    closed: AtomicBool,
    /// Whether produces may append (false on a follower of a replicated
    /// partition: only the leader's batches, through `append_replica`).
    writable: AtomicBool,
    /// Bytes of all segments on local disk, appended but unwritten included.
    local_bytes: AtomicU64,
    /// The partition count of [`KEYS_BY_DEFAULT_FILE`] while it exists; 0
    /// once it is gone (or never was).
    keys_by_default: AtomicU32,
    /// Held while the mark is being removed, so that no append of a
    /// record that needs it gone overtakes the removal.
    unmarking: Mutex<()>,
    fsync_seconds: metrics::Histogram,
}

impl Partition {
    /// Opens (or creates) the partition in `dir`, recovering from a crash:
    /// the last segment is validated batch by batch and a torn or corrupt
    /// tail is truncated; missing or damaged indexes are rebuilt; a segment
    /// left behind by a crash in the middle of a roll is dropped.
    pub fn open(id: u32, dir: &Path, config: LogConfig) -> Result<Self> {
        fs::create_dir_all(dir).context(|| format!("creating {}", dir.display()))?;
        let interval = config.index_interval_bytes;
        let bases = list_segments(dir)?;
        let mut segments = Vec::with_capacity(bases.len().max(1));
        let mut active_base = bases.last().copied();
        for (i, &base) in bases.iter().enumerate().take(bases.len().saturating_sub(1)) {
            let (segment, unsealed) =
                Segment::open_sealed(dir.join(log_file_name(base)), base, interval)?;
            let (end, next_base) = (segment.info().end_offset, bases[i + 1]);
            if end != next_base {
                if !(unsealed && end < next_base) {
                    return Err(BrokerError::Corrupt {
                        path: segment.path().display().to_string(),
                        message: format!(
                            "offsets are not dense: segment ends at {end}, the next starts at {next_base}"
                        ),
                    });
                }
                // Crash between a roll and the old segment's last write: no
                // record after this point was ever acknowledged.
                tracing::warn!(segment = %segment.path().display(), "dropping segments after an unfinished roll");
                for &later in &bases[i + 1..] {
                    remove_segment_files(dir, later)?;
                }
                active_base = Some(base);
                break;
            }
            if unsealed {
                segment.seal()?;
            }
            segments.push(Arc::new(segment));
        }
        let (active, tail) = match active_base {
            None => {
                let segment = Segment::create(dir, 0, interval)?;
                sync_dir(dir)?;
                (segment, None)
            }
            Some(base) => {
                let (segment, tail) =
                    Segment::recover_active(dir.join(log_file_name(base)), base, interval)?;
                (segment, Some(tail))
            }
        };
        let (position, next_offset, first_append_ms) = tail
            .map_or((0, active.base_offset(), None), |t| {
                (t.position, t.next_offset, t.first_append_ms)
            });
        let tail = Tail::open(active.path(), position)?;
        let active = Arc::new(active);
        segments.push(active.clone());
        let (end_tx, _) = watch::channel(next_offset);
        let local_bytes = segments.iter().map(|s| s.info().size_bytes).sum::<u64>();
        let epochs = LeaderEpochs::load(dir)?;
        let keys_by_default = fs::read_to_string(dir.join(KEYS_BY_DEFAULT_FILE))
            .ok()
            .and_then(|count| count.trim().parse().ok())
            .unwrap_or(0);
        Ok(Self {
            id,
            dir: dir.to_path_buf(),
            config,
            segments: RwLock::new(segments),
            writer: Mutex::new(Writer {
                active,
                tail,
                next_offset,
                first_append_ms,
                sealing: Vec::new(),
                generation: 0,
            }),
            sync: Mutex::new(SyncState::default()),
            synced: Condvar::new(),
            durable_end: AtomicU64::new(next_offset),
            high_watermark: AtomicU64::new(u64::MAX),
            end_tx,
            log_end_tx: watch::channel(next_offset).0,
            epochs: Mutex::new(epochs),
            closed: AtomicBool::new(false),
            writable: AtomicBool::new(true),
            local_bytes: AtomicU64::new(local_bytes),
            keys_by_default: AtomicU32::new(keys_by_default),
            unmarking: Mutex::new(()),
            fsync_seconds: metrics::histogram!("strata_fsync_seconds"),
        })
    }

    /// The partition number.
    pub fn id(&self) -> u32 {
        self.id
    }

    /// `Some(n)` when every keyed record this partition ever held, in
    /// either tier, is where the default partitioner puts its key among
    /// `n` partitions (murmur2, as Kafka's), so a read of some keys may
    /// skip it when none of them hashes here.
    ///
    /// # Contract
    ///
    /// Only a partition created empty, of a topic that is not replicated,
    /// starts with the mark ([`KEYS_BY_DEFAULT_FILE`], written with the
    /// topic); it is removed, durably, before any record whose key hashes
    /// elsewhere is appended, and never comes back. A reader that reads it
    /// after pinning the partition therefore sees no such record below
    /// its pinned end while it says `Some`.
    pub fn keys_by_default_partitioner(&self) -> Option<u32> {
        match self.keys_by_default.load(Ordering::SeqCst) {
            0 => None,
            count => Some(count),
        }
    }

    /// Removes the mark of [`Partition::keys_by_default_partitioner`];
    /// durable when it returns.
    pub(crate) fn unmark_keys_by_default(&self) -> Result<()> {
        let _one = self.unmarking.lock();
        if self.keys_by_default.load(Ordering::SeqCst) == 0 {
            return Ok(());
        }
        let path = self.dir.join(KEYS_BY_DEFAULT_FILE);
        if let Err(e) = fs::remove_file(&path)
            && e.kind() != std::io::ErrorKind::NotFound
        {
            return Err(e).context(|| format!("removing {}", path.display()));
        }
        sync_dir(&self.dir)?;
        self.keys_by_default.store(0, Ordering::SeqCst);
        Ok(())
    }

    /// Bytes of this partition's segments on local disk.
    pub fn local_bytes(&self) -> u64 {
        self.local_bytes.load(Ordering::Relaxed)
    }

    /// The end of what readers see: every offset below it is durable and
    /// committed. On a partition that is not replicated (a single node),
    /// the offset the next record will get.
    pub fn end_offset(&self) -> u64 {
        self.log_end_offset()
            .min(self.high_watermark.load(Ordering::Acquire))
    }

    /// The offset the next record will get; every offset below it is
    /// durable on this node (but, when replicated, perhaps not committed).
    pub fn log_end_offset(&self) -> u64 {
        self.durable_end.load(Ordering::Acquire)
    }

    /// The first offset still on local disk.
    pub fn start_offset(&self) -> u64 {
        self.segments.read().first().map_or(0, |s| s.base_offset())
    }

    /// A receiver that changes whenever `end_offset` grows (for long polls).
    pub fn subscribe(&self) -> watch::Receiver<u64> {
        self.end_tx.subscribe()
    }

    /// A receiver that changes whenever `log_end_offset` does (for a
    /// follower's long poll at its leader: committed or not).
    pub fn subscribe_log_end(&self) -> watch::Receiver<u64> {
        self.log_end_tx.subscribe()
    }

    /// Appends one batch and returns where it landed. The batch is only in
    /// memory: call [`Partition::wait_durable`] before acknowledging it.
    pub fn append(&self, batch: &mut EncodedBatch, now_ms: i64) -> Result<Appended> {
        Ok(self.prepare_append(batch, now_ms)?.append(batch, now_ms))
    }

    /// Locks the writer and makes room for `batch` (checks that the
    /// partition takes writes, rolls the segment if due): after this
    /// succeeds, [`AppendSlot::append`] cannot fail. Lets a produce to
    /// several partitions find every refusal before it appends anything.
    pub fn prepare_append(&self, batch: &EncodedBatch, now_ms: i64) -> Result<AppendSlot<'_>> {
        self.prepare(batch, now_ms, false)
    }

    /// [`Partition::prepare_append`], for a leader's batch on a follower
    /// when `replica` (taken whether or not produces may append).
    fn prepare(&self, batch: &EncodedBatch, now_ms: i64, replica: bool) -> Result<AppendSlot<'_>> {
        let mut w = self.writer.lock();
        if !replica && !self.writable.load(Ordering::Acquire) {
            return Err(BrokerError::Unavailable {
                message: format!("partition {} is not led by this node now", self.id),
                retry_after_secs: 1,
            });
        }
        if self.closed.load(Ordering::Acquire) {
            return Err(BrokerError::Unavailable {
                message: format!("partition {} is closed (shutting down or deleted)", self.id),
                retry_after_secs: 1,
            });
        }
        self.recover_locked(&mut w)?;
        let len = batch.as_bytes().len() as u64;
        let count = u64::from(batch.view().record_count());
        if self.should_roll(&w, len, count, now_ms) {
            self.roll_locked(&mut w)?;
        }
        Ok(AppendSlot {
            partition: self,
            writer: w,
        })
    }

    /// Blocks until the appended batch (and every offset before it) is
    /// durable (fsynced) and visible. When this returns `Ok`, those records
    /// survive a crash; an error means the batch was not written (a retry
    /// does not double it).
    pub fn wait_durable(&self, appended: Appended) -> Result<()> {
        let mut st = self.sync.lock();
        loop {
            if appended.generation != st.generation {
                let durable = st
                    .generation_ends
                    .get(appended.generation as usize)
                    .is_some_and(|&end| appended.end <= end);
                return if durable {
                    Ok(())
                } else {
                    Err(BrokerError::Unavailable {
                        message: format!(
                            "partition {}: the data disk filled before this write was durable; \
                             nothing of it was written to this partition",
                            self.id
                        ),
                        retry_after_secs: 5,
                    })
                };
            }
            // Durable first: records a sync published before a later write
            // failed are acknowledged, not reported as failed (a retry
            // would double them).
            if self.log_end_offset() >= appended.end {
                return Ok(());
            }
            if let Some(failure) = &st.failed {
                return Err(self.refusal(failure));
            }
            if st.in_progress {
                self.synced.wait(&mut st);
                continue;
            }
            self.lead(&mut st, || self.sync_once())?;
        }
    }

    /// Runs `work` as the sync leader (the caller holds the sync lock and no
    /// leader is active). A failure makes the partition read-only: after a
    /// failed write or fsync the kernel may have dropped the data
    /// (fsyncgate), so nothing later may be reported durable.
    fn lead<T>(
        &self,
        st: &mut MutexGuard<'_, SyncState>,
        work: impl FnOnce() -> Result<T>,
    ) -> Result<T> {
        st.in_progress = true;
        let outcome = MutexGuard::unlocked(st, work);
        st.in_progress = false;
        let outcome = outcome.map_err(|e| self.fail(st, e));
        self.synced.notify_all();
        outcome
    }

    /// Stops writes after `error` and returns what to answer: `503` when the
    /// disk is full (the partition recovers once space is back), else the
    /// error itself (the partition stays read-only until a restart).
    fn fail(&self, st: &mut SyncState, error: BrokerError) -> BrokerError {
        let out_of_space = error.is_out_of_space();
        if out_of_space {
            tracing::warn!(partition = self.id, %error, "the data disk is full; the partition refuses writes until space is freed");
        } else {
            tracing::error!(partition = self.id, %error, "log write failed; partition is now read-only");
        }
        let failure = Failure {
            reason: error.to_string(),
            out_of_space,
            last_try: Some(Instant::now()),
        };
        let answer = if out_of_space {
            self.refusal(&failure)
        } else {
            error
        };
        st.failed = Some(failure);
        answer
    }

    /// The error a write gets while the partition is stopped by `failure`.
    fn refusal(&self, failure: &Failure) -> BrokerError {
        if failure.out_of_space {
            BrokerError::Unavailable {
                message: format!(
                    "partition {} cannot write, the data disk is full ({}); \
                     writes resume by themselves once space is freed",
                    self.id, failure.reason
                ),
                retry_after_secs: 5,
            }
        } else {
            BrokerError::Internal(format!(
                "partition {} is read-only after a failed write: {}",
                self.id, failure.reason
            ))
        }
    }

    /// Takes writes again if a full disk stopped them and space may be back
    /// (at most once per second); returns whether the partition takes writes.
    /// Cheap when nothing failed. See [`Partition::recover_locked`].
    pub fn recover(&self) -> bool {
        if self.sync.lock().failed.is_none() {
            return true;
        }
        let mut w = self.writer.lock();
        !self.closed.load(Ordering::Acquire) && self.recover_locked(&mut w).is_ok()
    }

    /// `Ok` when the partition takes writes; after a full disk, first
    /// recovers in place: every segment is cut back to what was durable
    /// (published), the log is reopened from disk as at a start, and what
    /// was appended but never durable is discarded (its writers get an
    /// error, see [`Partition::wait_durable`]). Nothing acknowledged is
    /// touched. Any other failure stays until a restart.
    fn recover_locked(&self, w: &mut Writer) -> Result<()> {
        let mut st = self.sync.lock();
        let in_progress = st.in_progress;
        let Some(failure) = st.failed.as_mut() else {
            return Ok(());
        };
        let due = failure.out_of_space
            && !in_progress
            && failure
                .last_try
                .is_none_or(|t| t.elapsed() >= RECOVERY_BACKOFF);
        if !due {
            return Err(self.refusal(failure));
        }
        failure.last_try = Some(Instant::now());
        if let Err(error) = self.reopen(w) {
            if !error.is_out_of_space() {
                // Not the disk's space: something a restart must look at.
                tracing::error!(partition = self.id, %error, "recovery after a full disk failed; partition is now read-only");
                failure.reason = error.to_string();
                failure.out_of_space = false;
            } else {
                tracing::debug!(partition = self.id, %error, "not recovered from the full disk yet");
            }
            return Err(self.refusal(failure));
        }
        let end = self.log_end_offset();
        st.generation_ends.push(end);
        st.generation += 1;
        w.generation = st.generation;
        st.failed = None;
        tracing::warn!(
            partition = self.id,
            end_offset = end,
            "space is back; the partition takes writes again"
        );
        Ok(())
    }

    /// Cuts every unsealed segment (the active one, and rolled ones whose
    /// sealing had not finished — a failed sync drops them from the sealing
    /// queue, not from the list) back to its durable length, and replaces
    /// the writer and segment list with the log reopened from disk.
    fn reopen(&self, w: &mut Writer) -> Result<()> {
        let unsealed: Vec<Arc<Segment>> = self
            .segments
            .read()
            .iter()
            .filter(|s| !s.info().sealed)
            .cloned()
            .collect();
        for segment in &unsealed {
            let path = segment.path();
            OpenOptions::new()
                .write(true)
                .open(path)
                .and_then(|file| {
                    file.set_len(segment.visible_len())?;
                    file.sync_all()
                })
                .context(|| format!("cutting {} back to its durable length", path.display()))?;
        }
        let fresh = Partition::open(self.id, &self.dir, self.config)?;
        if fresh.log_end_offset() != self.log_end_offset() {
            return Err(BrokerError::Internal(format!(
                "partition {} reopened at end offset {}, not at its durable end {}",
                self.id,
                fresh.log_end_offset(),
                self.log_end_offset()
            )));
        }
        *w = fresh.writer.into_inner();
        *self.segments.write() = fresh.segments.into_inner();
        self.local_bytes
            .store(fresh.local_bytes.into_inner(), Ordering::Relaxed);
        Ok(())
    }

    /// Waits for any running leader, then leads `work`.
    fn lead_now<T>(&self, work: impl FnOnce() -> Result<T>) -> Result<T> {
        let mut st = self.sync.lock();
        while st.in_progress {
            self.synced.wait(&mut st);
        }
        if let Some(failure) = &st.failed {
            return Err(self.refusal(failure));
        }
        self.lead(&mut st, work)
    }

    /// Writes and fsyncs everything appended so far (sealing rolled
    /// segments first, in order) and publishes it to readers.
    fn sync_once(&self) -> Result<()> {
        let (sealing, flush, segment, file, position, next_offset) = {
            let mut w = self.writer.lock();
            let flush = w.tail.take();
            (
                std::mem::take(&mut w.sealing),
                flush,
                w.active.clone(),
                w.tail.file().clone(),
                w.tail.len(),
                w.next_offset,
            )
        };
        for old in sealing {
            if let Some(flush) = old.flush {
                flush
                    .write()
                    .context(|| format!("writing {}", old.segment.path().display()))?;
            }
            old.tail
                .trim()
                .context(|| format!("fsyncing {}", old.segment.path().display()))?;
            self.publish(&old.segment, old.tail.len(), old.end_offset);
            old.segment.seal()?;
        }
        let started = Instant::now();
        if let Some(flush) = flush {
            flush
                .write()
                .context(|| format!("writing {}", segment.path().display()))?;
        }
        file.sync_data()
            .context(|| format!("fsyncing {}", segment.path().display()))?;
        self.fsync_seconds.record(started.elapsed().as_secs_f64());
        self.publish(&segment, position, next_offset);
        Ok(())
    }

    fn publish(&self, segment: &Segment, position: u64, next_offset: u64) {
        segment.publish(position, next_offset);
        let previous = self.durable_end.fetch_max(next_offset, Ordering::AcqRel);
        if next_offset > previous {
            self.announce();
        }
    }

    /// Tells long polls what readers may see now, and followers' long polls
    /// where the log ends.
    fn announce(&self) {
        let end = self.log_end_offset();
        self.log_end_tx.send_if_modified(|v| {
            let changed = end != *v;
            *v = end;
            changed
        });
        let visible = self.end_offset();
        self.end_tx.send_if_modified(|v| {
            let changed = visible != *v;
            *v = visible;
            changed
        });
    }

    fn should_roll(&self, w: &Writer, len: u64, count: u64, now_ms: i64) -> bool {
        let position = w.tail.len();
        if position == 0 {
            return false;
        }
        let relative_end = w.next_offset + count - w.active.base_offset();
        position + len > self.config.segment_bytes
            || w.first_append_ms
                .is_some_and(|t| now_ms.saturating_sub(t) >= self.config.segment_ms)
            || relative_end > u64::from(u32::MAX)
    }

    /// Seals the active segment if it is non-empty and older than
    /// `segment_ms`; returns whether it rolled. Sealing is complete (index
    /// files written) when this returns.
    pub fn roll_if_due(&self, now_ms: i64) -> Result<bool> {
        self.roll_when(|w| {
            w.first_append_ms
                .is_some_and(|t| now_ms.saturating_sub(t) >= self.config.segment_ms)
        })
    }

    /// Seals the active segment now if it holds any record; returns whether
    /// it rolled. Sealing is complete when this returns.
    pub fn roll(&self) -> Result<bool> {
        self.roll_when(|_| true)
    }

    fn roll_when(&self, due: impl FnOnce(&Writer) -> bool) -> Result<bool> {
        {
            let mut w = self.writer.lock();
            if self.closed.load(Ordering::Acquire) {
                return Ok(false);
            }
            // First: a recovery replaces the writer the checks below look at.
            if let Err(e) = self.recover_locked(&mut w) {
                return if w.tail.len() == 0 || !due(&w) {
                    Ok(false)
                } else {
                    Err(e)
                };
            }
            if w.tail.len() == 0 || !due(&w) {
                return Ok(false);
            }
            self.roll_locked(&mut w)?;
        }
        self.lead_now(|| self.sync_once())?;
        Ok(true)
    }

    /// Starts a new active segment; the old one is queued for sealing by the
    /// next leader (no I/O on it here, so appends are not held up).
    fn roll_locked(&self, w: &mut Writer) -> Result<()> {
        let path = self.dir.join(crate::segment::log_file_name(w.next_offset));
        let stray = path.is_file();
        let created = Segment::create(&self.dir, w.next_offset, self.config.index_interval_bytes)
            .and_then(|new| sync_dir(&self.dir).map(|()| new))
            .and_then(|new| Tail::open(new.path(), 0).map(|tail| (new, tail)));
        let (new, tail) = match created {
            Ok(created) => created,
            Err(e) if !stray && self.undo_roll(&path) => {
                // Nothing changed: appends go on into the current segment,
                // and the next one retries the roll (out of descriptors, say).
                tracing::warn!(partition = self.id, error = %e, "roll failed; will retry");
                return Err(BrokerError::Unavailable {
                    message: format!("partition {} could not roll its segment: {e}", self.id),
                    retry_after_secs: 1,
                });
            }
            Err(e) => {
                // A segment file that recovery would take for the next one
                // stays behind: appending on would break density.
                return Err(self.fail(&mut self.sync.lock(), e));
            }
        };
        let new = Arc::new(new);
        let mut old_tail = std::mem::replace(&mut w.tail, tail);
        let old = std::mem::replace(&mut w.active, new.clone());
        w.sealing.push(Sealing {
            segment: old,
            flush: old_tail.take(),
            tail: old_tail,
            end_offset: w.next_offset,
        });
        self.segments.write().push(new);
        w.first_append_ms = None;
        tracing::debug!(partition = self.id, base = w.next_offset, "rolled segment");
        Ok(())
    }

    /// Removes the segment file a failed roll may have created at `path`
    /// (durably); true when none is left.
    fn undo_roll(&self, path: &Path) -> bool {
        match fs::symlink_metadata(path) {
            Ok(meta) if meta.is_file() => {
                fs::remove_file(path).is_ok() && sync_dir(&self.dir).is_ok()
            }
            Ok(_) => true, // not a segment of ours (the roll failed on it)
            Err(e) => e.kind() == std::io::ErrorKind::NotFound,
        }
    }

    /// Writes and fsyncs what was appended, trims the active segment's
    /// padding, and refuses further appends (graceful shutdown, deletion).
    pub fn close(&self) -> Result<()> {
        self.closed.store(true, Ordering::Release);
        // Appends in flight finish under the writer lock before the last write.
        drop(self.writer.lock());
        self.lead_now(|| {
            self.sync_once()?;
            let w = self.writer.lock();
            w.tail
                .trim()
                .context(|| format!("fsyncing {}", w.active.path().display()))
        })
    }

    /// Deletes the sealed segments that hold only offsets below `offset`
    /// (never the active one) and returns them; `start_offset` moves up.
    /// Readers that already hold a cursor over them finish their reads:
    /// the files stay open until the last cursor is dropped.
    pub fn delete_segments_below(&self, offset: u64) -> Result<Vec<SegmentInfo>> {
        // Held throughout: a recovery after a full disk reopens the
        // directory under it and must not see files vanish half-way.
        let _writer = self.writer.lock();
        let removed: Vec<Arc<Segment>> = {
            let mut segments = self.segments.write();
            let keep_from = segments
                .iter()
                .position(|s| {
                    let info = s.info();
                    !info.sealed || info.end_offset > offset
                })
                .unwrap_or(segments.len().saturating_sub(1));
            segments.drain(..keep_from).collect()
        };
        let mut infos = Vec::with_capacity(removed.len());
        for segment in removed {
            remove_segment_files(&self.dir, segment.base_offset())?;
            let info = segment.info();
            self.local_bytes
                .fetch_sub(info.size_bytes, Ordering::Relaxed);
            infos.push(info);
        }
        if !infos.is_empty() {
            sync_dir(&self.dir)?;
        }
        Ok(infos)
    }

    /// The segments, oldest first; the last one is active (not sealed).
    pub fn segments(&self) -> Vec<SegmentInfo> {
        self.segments.read().iter().map(|s| s.info()).collect()
    }

    /// The log as it is now, pinned for a long read (see [`PinnedLog`]).
    pub fn pin(&self) -> PinnedLog {
        let end = self.end_offset();
        PinnedLog::new(self.segments.read().clone(), end)
    }

    /// A cursor from `from` up to the current end offset.
    /// `from` outside `[start_offset, end_offset]` is `OffsetOutOfRange`.
    pub fn cursor(&self, from: u64) -> Result<LogCursor> {
        self.cursor_to(from, self.end_offset())
    }

    /// A cursor from `from` up to `end` (the end readers see, or the
    /// durable end for a follower's fetch).
    fn cursor_to(&self, from: u64, end: u64) -> Result<LogCursor> {
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

/// A partition's writer, locked and ready for one batch (see
/// [`Partition::prepare_append`]).
pub struct AppendSlot<'a> {
    partition: &'a Partition,
    writer: MutexGuard<'a, Writer>,
}

impl AppendSlot<'_> {
    /// The offset the batch will get.
    pub fn next_offset(&self) -> u64 {
        self.writer.next_offset
    }

    /// Appends `batch` to the tail (not yet durable: see
    /// [`Partition::wait_durable`]) and returns where it landed.
    pub fn append(mut self, batch: &mut EncodedBatch, now_ms: i64) -> Appended {
        let w = &mut *self.writer;
        let len = batch.as_bytes().len() as u64;
        let count = u64::from(batch.view().record_count());
        let base = w.next_offset;
        batch.set_base_offset(base);
        let position = w.tail.len();
        w.tail.append(batch.as_bytes());
        self.partition.local_bytes.fetch_add(len, Ordering::Relaxed);
        w.active.on_append(&batch.view(), position);
        w.next_offset += count;
        w.first_append_ms.get_or_insert(now_ms);
        Appended {
            base,
            end: w.next_offset,
            generation: w.generation,
        }
    }
}

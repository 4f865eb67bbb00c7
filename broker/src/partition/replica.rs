//! What replication does to a partition's log: reading whole batches for a
//! follower, appending a leader's batches at their own offsets, the high
//! watermark that bounds what readers see, truncation to a leader-epoch
//! boundary, and the leader-epoch history (see [`crate::epochs`]).
//!
//! The broker does not know who leads: the cluster layer calls these.

use std::sync::Arc;
use std::sync::atomic::Ordering;

use super::Partition;
use crate::batch::{EncodedBatch, Peek, peek_batch};
use crate::durable::sync_dir;
use crate::epochs::{EpochStart, LeaderEpochs};
use crate::error::{BrokerError, IoContext, Result};
use crate::partition::Appended;
use crate::segment::{Segment, remove_segment_files};

/// Whole batches read for a follower.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Fetched {
    /// Encoded batches, back to back, exactly as in the log.
    pub bytes: Vec<u8>,
    /// The offset after the last batch (where the next fetch starts).
    pub next_offset: u64,
}

impl Partition {
    /// Whole durable batches from `from` (a batch boundary, as a follower's
    /// log end always is), at least one if any, stopping before
    /// `max_bytes` would be passed. Reads past the high watermark: a
    /// follower copies what is durable here, committed or not.
    /// `from` outside `[start_offset, log_end_offset]` is `OffsetOutOfRange`.
    pub fn read_log(&self, from: u64, max_bytes: usize) -> Result<Fetched> {
        let mut cursor = self.cursor_to(from, self.log_end_offset())?;
        let mut out = Fetched {
            bytes: Vec::new(),
            next_offset: from,
        };
        while let Some(batch) = cursor.next_batch()? {
            if batch.next_offset() <= from {
                continue;
            }
            if batch.base_offset() != out.next_offset {
                return Err(BrokerError::InvalidRequest(format!(
                    "offset {from} of partition {} is not where a batch starts",
                    self.id
                )));
            }
            if !out.bytes.is_empty() && out.bytes.len() + batch.len() > max_bytes {
                break;
            }
            out.bytes.extend_from_slice(batch.bytes());
            out.next_offset = batch.next_offset();
        }
        Ok(out)
    }

    /// Appends a leader's batches (as [`Partition::read_log`] returned
    /// them) at their own offsets and batch boundaries; returns where the
    /// last landed, for [`Partition::wait_durable`]. Every batch is checked
    /// (CRC, records, and that it starts at this log's end) before it is
    /// appended; a bad one stops the append there, with the batches before
    /// it appended.
    pub fn append_replica(&self, mut bytes: &[u8], now_ms: i64) -> Result<Option<Appended>> {
        let mut last = None;
        while !bytes.is_empty() {
            let bad = |message: String| BrokerError::Corrupt {
                path: format!("replicated batches for partition {}", self.id),
                message,
            };
            let view = match peek_batch(bytes) {
                Ok(Peek::Batch(view)) => view,
                Ok(Peek::NeedBytes(_)) => return Err(bad("an incomplete batch".into())),
                Err(e) => return Err(bad(e.to_string())),
            };
            view.verify().map_err(|e| bad(e.to_string()))?;
            if view.record_count() == 0 {
                return Err(bad("a batch without records".into()));
            }
            let mut batch = EncodedBatch::from_verified(view.bytes().to_vec());
            let slot = self.prepare(&batch, now_ms, true)?;
            let expected = slot.next_offset();
            if view.base_offset() != expected {
                return Err(BrokerError::InvalidRequest(format!(
                    "partition {}: a replicated batch starts at {}, the log ends at {expected}",
                    self.id,
                    view.base_offset()
                )));
            }
            last = Some(slot.append(&mut batch, now_ms));
            bytes = &bytes[view.len()..];
        }
        Ok(last)
    }

    /// Lets produces append (a leader) or not (a follower, and a replica
    /// whose role is not known yet). Appends already under way finish
    /// first: when this returns `false`-setting, no produce appends any
    /// more (the writer lock orders them).
    pub fn set_writable(&self, writable: bool) {
        let _writer = self.writer.lock();
        self.writable.store(writable, Ordering::Release);
    }

    /// The high watermark: `None` while the partition is not replicated.
    pub fn high_watermark(&self) -> Option<u64> {
        match self.high_watermark.load(Ordering::Acquire) {
            u64::MAX => None,
            hw => Some(hw),
        }
    }

    /// Sets what readers may see to `min(log end, hw)`; `None` makes every
    /// durable record visible (a partition that is not replicated, or one
    /// whose only in-sync replica is this node).
    pub fn set_high_watermark(&self, hw: Option<u64>) {
        self.high_watermark
            .store(hw.unwrap_or(u64::MAX), Ordering::Release);
        self.announce();
    }

    /// Removes every record from `offset` on (`offset` must be a batch
    /// boundary at or above the first local offset), durably, with the
    /// leader-epoch entries that covered them. For a follower that must
    /// match a new leader (KIP-101); the caller makes sure nothing appends
    /// meanwhile. Readers never saw the removed records if they were above
    /// the high watermark, as they are when the caller follows the
    /// protocol.
    pub fn truncate_from(&self, offset: u64) -> Result<()> {
        self.lead_now(|| self.sync_once())?;
        let w = self.writer.lock();
        if offset >= w.next_offset {
            return Ok(());
        }
        if w.next_offset != self.log_end_offset() {
            return Err(BrokerError::Unavailable {
                message: format!("partition {}: appends in flight during truncation", self.id),
                retry_after_secs: 1,
            });
        }
        let segments: Vec<Arc<Segment>> = self.segments.read().clone();
        let start = segments.first().map_or(0, |s| s.base_offset());
        if offset < start {
            return Err(BrokerError::InvalidRequest(format!(
                "partition {} cannot truncate to {offset}, below its first local offset {start}",
                self.id
            )));
        }
        let mut cut = None;
        for segment in segments.iter().rev() {
            if segment.base_offset() >= offset {
                remove_segment_files(&self.dir, segment.base_offset())?;
            } else {
                let position = segment.batch_position(offset)?.ok_or_else(|| {
                    BrokerError::InvalidRequest(format!(
                        "offset {offset} of partition {} is not where a batch starts",
                        self.id
                    ))
                })?;
                cut = Some((segment.clone(), position));
                break;
            }
        }
        match cut {
            Some((segment, position)) => {
                let path = segment.path();
                std::fs::OpenOptions::new()
                    .write(true)
                    .open(path)
                    .and_then(|file| {
                        file.set_len(position)?;
                        file.sync_all()
                    })
                    .context(|| format!("truncating {}", path.display()))?;
            }
            None => {
                Segment::create(&self.dir, offset, self.config.index_interval_bytes)?;
            }
        }
        let end = self.reload(w)?;
        tracing::warn!(
            partition = self.id,
            end_offset = end,
            "truncated to match the leader"
        );
        Ok(())
    }

    /// Starts the log over, empty, at `offset` past its end: a replica
    /// whose leader no longer holds this replica's end locally (the
    /// records between are in the cold tier, which every node reads).
    /// Nothing below the old end is kept locally.
    pub fn restart_at(&self, offset: u64) -> Result<()> {
        self.lead_now(|| self.sync_once())?;
        let w = self.writer.lock();
        if offset <= w.next_offset {
            return Err(BrokerError::InvalidRequest(format!(
                "partition {} can only start over past its end {}, not at {offset}",
                self.id, w.next_offset
            )));
        }
        let segments: Vec<Arc<Segment>> = self.segments.read().clone();
        for segment in &segments {
            remove_segment_files(&self.dir, segment.base_offset())?;
        }
        Segment::create(&self.dir, offset, self.config.index_interval_bytes)?;
        let end = self.reload(w)?;
        tracing::warn!(
            partition = self.id,
            start_offset = end,
            "started the local log over at the leader's start"
        );
        Ok(())
    }

    /// Makes a cut of the log's files durable (the directory) and replaces
    /// the writer and segments with the log reopened from disk; returns
    /// its end. Writers waiting on what was cut get an error; the high
    /// watermark, the epoch history and long polls follow the cut.
    fn reload(&self, mut w: parking_lot::MutexGuard<'_, super::Writer>) -> Result<u64> {
        sync_dir(&self.dir)?;
        let fresh = Partition::open(self.id, &self.dir, self.config)?;
        let end = fresh.log_end_offset();
        *w = fresh.writer.into_inner();
        *self.segments.write() = fresh.segments.into_inner();
        self.local_bytes
            .store(fresh.local_bytes.into_inner(), Ordering::Relaxed);
        {
            let mut st = self.sync.lock();
            st.generation_ends.push(end);
            st.generation += 1;
            w.generation = st.generation;
        }
        self.durable_end.store(end, Ordering::Release);
        let _ = self
            .high_watermark
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |hw| {
                (hw != u64::MAX && hw > end).then_some(end)
            });
        {
            let mut epochs = self.epochs.lock();
            epochs.truncate_from(end);
            epochs.save(&self.dir)?;
        }
        drop(w);
        self.announce();
        Ok(end)
    }

    /// The leader-epoch history.
    pub fn leader_epochs(&self) -> LeaderEpochs {
        self.epochs.lock().clone()
    }

    /// Records, durably, that `entry.epoch` writes from `entry.start` on
    /// (a leader taking over at its log end, or a follower copying the
    /// leader's entries before the records they cover). An entry older
    /// than the latest is refused (`false`); the latest again is a no-op.
    pub fn record_epoch(&self, entry: EpochStart) -> Result<bool> {
        let mut epochs = self.epochs.lock();
        let before = epochs.clone();
        if !epochs.push(entry) {
            return Ok(false);
        }
        if *epochs != before
            && let Err(e) = epochs.save(&self.dir)
        {
            *epochs = before;
            return Err(e);
        }
        Ok(true)
    }

    /// Where `epoch` ends in this log (see [`LeaderEpochs::end_of`]).
    pub fn epoch_end(&self, epoch: u64) -> Option<EpochStart> {
        self.epochs.lock().end_of(epoch, self.log_end_offset())
    }
}

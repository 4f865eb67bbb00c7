//! The active segment's write path: appends land in a block-aligned memory
//! buffer, and the group-commit leader writes it out with direct I/O.
//!
//! Buffered writes into the page cache cost more CPU than everything else
//! on the produce path (measured: `docs/benchmarks.md`), so the log is
//! written with `O_DIRECT` where the filesystem supports it. Direct I/O
//! wants block-aligned offsets, lengths and memory, so the buffer always
//! starts at a block boundary of the file: it keeps a copy of the last,
//! partly filled block, each write rewrites that block whole, and the file
//! ends in zero padding up to the next block until the segment is sealed or
//! closed (recovery cuts a padding tail like any torn tail). Without direct
//! I/O support the same aligned writes go through the page cache.

use std::fs::{File, OpenOptions};
use std::os::unix::fs::FileExt;
use std::path::Path;
use std::sync::Arc;

use parking_lot::Mutex;

use crate::error::{IoContext, Result};

pub use crate::direct_io::BLOCK;
use crate::direct_io::round_up;

/// The write buffer's first size (16 blocks).
const INITIAL_BUFFER: usize = 64 * 1024;

/// A growable byte buffer whose contents start at a `BLOCK`-aligned address.
#[derive(Debug)]
struct AlignedBuf {
    raw: Vec<u8>,
    start: usize,
    len: usize,
}

impl AlignedBuf {
    fn with_capacity(capacity: usize) -> Self {
        let capacity = capacity.max(BLOCK);
        let (mut raw, start) = crate::direct_io::aligned_vec(capacity);
        raw.resize(start + capacity, 0);
        Self { raw, start, len: 0 }
    }

    fn capacity(&self) -> usize {
        self.raw.len() - self.start
    }

    fn bytes(&self) -> &[u8] {
        &self.raw[self.start..self.start + self.len]
    }

    fn extend(&mut self, bytes: &[u8]) {
        let needed = round_up(self.len + bytes.len());
        if needed > self.capacity() {
            let mut bigger = Self::with_capacity(needed.max(self.capacity() * 2));
            bigger.extend(self.bytes());
            *self = bigger;
        }
        let at = self.start + self.len;
        self.raw[at..at + bytes.len()].copy_from_slice(bytes);
        self.len += bytes.len();
    }

    /// The contents zero-padded to a whole number of blocks.
    fn padded(&mut self) -> &[u8] {
        let padded = round_up(self.len);
        self.raw[self.start + self.len..self.start + padded].fill(0);
        &self.raw[self.start..self.start + padded]
    }
}

fn round_down(n: u64) -> u64 {
    n / BLOCK as u64 * BLOCK as u64
}

/// Buffers whose write finished, kept for the next take: allocating (and
/// zeroing) megabytes per fsync showed up in profiles.
type Spares = Arc<Mutex<Vec<AlignedBuf>>>;

/// Spare buffers kept per segment.
const MAX_SPARES: usize = 2;

/// Bytes appended to the active segment and not yet written to its file.
#[derive(Debug)]
pub(crate) struct Tail {
    file: Arc<File>,
    spares: Spares,
    buf: AlignedBuf,
    /// File position of `buf[0]`, a multiple of `BLOCK`.
    buf_pos: u64,
    /// Logical length of the segment: everything appended.
    len: u64,
    /// Logical length already handed to a [`Flush`].
    written: u64,
}

/// One write of the tail, taken under the partition's writer lock and
/// performed outside it.
#[derive(Debug)]
pub(crate) struct Flush {
    file: Arc<File>,
    buf: AlignedBuf,
    pos: u64,
    spares: Spares,
}

impl Flush {
    /// Writes the taken bytes (padded to whole blocks) at their position.
    pub(crate) fn write(mut self) -> std::io::Result<()> {
        let pos = self.pos;
        let written = self.file.write_all_at(self.buf.padded(), pos);
        let mut spares = self.spares.lock();
        if spares.len() < MAX_SPARES {
            self.buf.len = 0;
            spares.push(self.buf);
        }
        written
    }
}

impl Tail {
    /// Opens the write side of a segment whose valid content is `len` bytes,
    /// loading its last partial block so the next write can rewrite it.
    pub(crate) fn open(path: &Path, len: u64) -> Result<Self> {
        let file = open_for_append(path)?;
        let buf_pos = round_down(len);
        // Small at first: a topic of thousands of partitions must not cost
        // a MiB each before it sees a record; a busy partition's buffer
        // grows by doubling and keeps its size.
        let mut buf = AlignedBuf::with_capacity(INITIAL_BUFFER);
        let partial = (len - buf_pos) as usize;
        if partial > 0 {
            let mut head = vec![0u8; partial];
            File::open(path)
                .and_then(|f| f.read_exact_at(&mut head, buf_pos))
                .context(|| format!("reading the tail of {}", path.display()))?;
            buf.extend(&head);
        }
        Ok(Self {
            file: Arc::new(file),
            spares: Spares::default(),
            buf,
            buf_pos,
            len,
            written: len,
        })
    }

    /// Logical length: every byte appended so far.
    pub(crate) fn len(&self) -> u64 {
        self.len
    }

    /// The write handle (for fsync and truncation).
    pub(crate) fn file(&self) -> &Arc<File> {
        &self.file
    }

    /// Appends bytes in memory; they reach the file with the next [`Tail::take`].
    pub(crate) fn append(&mut self, bytes: &[u8]) {
        self.buf.extend(bytes);
        self.len += bytes.len() as u64;
    }

    /// Takes everything not yet written, keeping a copy of the last partial
    /// block for the write after. `None` when nothing is pending.
    pub(crate) fn take(&mut self) -> Option<Flush> {
        if self.len == self.written {
            return None;
        }
        let next_pos = round_down(self.len);
        let keep_from = (next_pos - self.buf_pos) as usize;
        let spare = self.spares.lock().pop();
        let mut next = spare.unwrap_or_else(|| AlignedBuf::with_capacity(self.buf.capacity()));
        next.extend(&self.buf.bytes()[keep_from..]);
        let taken = std::mem::replace(&mut self.buf, next);
        let flush = Flush {
            file: self.file.clone(),
            buf: taken,
            pos: self.buf_pos,
            spares: self.spares.clone(),
        };
        self.buf_pos = next_pos;
        self.written = self.len;
        Some(flush)
    }

    /// Cuts the zero padding after the logical end and fsyncs (seal, close).
    pub(crate) fn trim(&self) -> std::io::Result<()> {
        self.file.set_len(self.len)?;
        self.file.sync_all()
    }
}

/// Opens a segment file for writing, with direct I/O when the filesystem
/// allows it.
fn open_for_append(path: &Path) -> Result<File> {
    let mut options = OpenOptions::new();
    options.write(true);
    crate::direct_io::open(path, &options)
        .map(|(file, _direct)| file)
        .context(|| format!("opening {} for writing", path.display()))
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(40))]
        /// Whatever the sizes of appends and how they are grouped into
        /// writes, the file holds exactly the appended bytes once trimmed,
        /// and only zero padding before that.
        #[test]
        fn aligned_writes_reproduce_the_appended_bytes(
            prefix in proptest::collection::vec(any::<u8>(), 0..10_000),
            groups in proptest::collection::vec(proptest::collection::vec(proptest::collection::vec(any::<u8>(), 0..9000), 0..4), 1..6),
        ) {
            let dir = tempfile::tempdir().unwrap();
            let path = dir.path().join("seg.log");
            std::fs::write(&path, &prefix).unwrap();
            let mut tail = Tail::open(&path, prefix.len() as u64).unwrap();
            let mut expected = prefix.clone();
            for group in &groups {
                for bytes in group {
                    tail.append(bytes);
                    expected.extend_from_slice(bytes);
                }
                if let Some(flush) = tail.take() {
                    flush.write().unwrap();
                }
                let on_disk = std::fs::read(&path).unwrap();
                prop_assert_eq!(&on_disk[..expected.len()], &expected[..]);
                prop_assert!(on_disk[expected.len()..].iter().all(|&b| b == 0));
                prop_assert!(on_disk.len() - expected.len() < BLOCK);
            }
            tail.trim().unwrap();
            prop_assert_eq!(std::fs::read(&path).unwrap(), expected);
        }
    }

    #[test]
    fn nothing_to_take_after_a_take() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("seg.log");
        std::fs::write(&path, b"").unwrap();
        let mut tail = Tail::open(&path, 0).unwrap();
        assert!(tail.take().is_none());
        tail.append(b"abc");
        assert!(tail.take().is_some());
        assert!(tail.take().is_none());
        assert_eq!(tail.len(), 3);
    }
}

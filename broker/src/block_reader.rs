//! Reading a segment file through a reusable buffer, for scans and cursors.
//!
//! In direct mode reads go around the page cache (`O_DIRECT` handles,
//! block-aligned reads into an aligned buffer): a bulk reader such as the
//! offloader then pays no page-cache copy, which on the reference machine
//! was half its CPU. Without the page cache there is no kernel read-ahead
//! either, and every miss would stall the reader for a disk round trip, so
//! direct mode reads ahead itself: while the caller parses one chunk, a
//! helper thread reads the next one.

use std::fs::File;
use std::os::unix::fs::FileExt;
use std::sync::mpsc;

use crate::tail::BLOCK;

/// Bytes read from a segment file at a time through the page cache.
pub const READ_CHUNK: usize = 256 * 1024;
/// Bytes read at a time in direct mode: each read is a disk round trip, so
/// fewer, larger ones.
const DIRECT_CHUNK: usize = 1024 * 1024;
/// Room in front of a read-ahead chunk for the unparsed tail of the chunk
/// before it (a batch that straddles the two). A longer tail falls back to
/// a plain read.
const TAIL_ROOM: usize = 1024 * 1024;

/// A reusable read buffer over one file at a time; see the module docs.
#[derive(Debug, Default)]
pub(crate) struct BlockReader {
    buf: Buffer,
    /// File position of the first buffered byte.
    start: u64,
    direct: bool,
    /// Direct mode: the helper reading the chunk after the buffered one.
    ahead: Option<ReadAhead>,
    /// Misses served by the chunk read ahead.
    read_ahead_hits: u64,
}

impl BlockReader {
    /// A reader for `O_DIRECT` handles, reading ahead.
    pub(crate) fn direct() -> Self {
        Self {
            direct: true,
            ..Self::default()
        }
    }

    /// Forgets the buffered bytes; call before reading another file.
    pub(crate) fn reset(&mut self) {
        self.buf.len = 0;
        self.start = 0;
        if let Some(ahead) = &mut self.ahead {
            ahead.cancel();
        }
    }

    /// Bytes from `pos`: at least `need` of them unless `limit` comes first.
    pub(crate) fn read(
        &mut self,
        file: &File,
        pos: u64,
        need: usize,
        limit: u64,
    ) -> std::io::Result<&[u8]> {
        let wanted_end = (pos + need as u64).min(limit);
        if pos < self.start || wanted_end > self.end() {
            if self.direct && self.take_read_ahead(pos, wanted_end) {
                self.read_ahead_hits += 1;
            } else {
                self.read_now(file, pos, need, limit)?;
            }
            if self.end() < wanted_end {
                return Err(std::io::Error::new(
                    std::io::ErrorKind::UnexpectedEof,
                    "segment shorter than expected",
                ));
            }
            let end = self.end();
            if self.direct && end < limit {
                self.ahead
                    .get_or_insert_with(ReadAhead::default)
                    .start(file, end, limit);
            }
        }
        let from = self.buf.off + (pos - self.start) as usize;
        let to = self.buf.off + ((limit - self.start) as usize).min(self.buf.len);
        Ok(&self.buf.raw[from..to])
    }

    /// One past the file position of the last buffered byte.
    fn end(&self) -> u64 {
        self.start + self.buf.len as u64
    }

    /// Reads the chunk holding `pos` (and `need` bytes after it) now.
    fn read_now(&mut self, file: &File, pos: u64, need: usize, limit: u64) -> std::io::Result<()> {
        if let Some(ahead) = &mut self.ahead {
            ahead.cancel();
        }
        let (block, chunk) = if self.direct {
            (BLOCK as u64, DIRECT_CHUNK)
        } else {
            (1, READ_CHUNK)
        };
        let start = pos / block * block;
        let want = ((pos - start) as usize + need.max(chunk)).min((limit - start) as usize);
        let want = want.div_ceil(block as usize) * block as usize;
        self.buf.prepare(0, want);
        let n = read_up_to(file, self.buf.space(want), start)?;
        self.start = start;
        self.buf.len = n;
        Ok(())
    }

    /// Continues the buffer with the chunk read ahead, when that chunk
    /// starts where the buffer ends and, together with the buffer's unread
    /// tail, covers `[pos, wanted_end)`. False when a plain read is needed.
    fn take_read_ahead(&mut self, pos: u64, wanted_end: u64) -> bool {
        let Some(ahead) = &mut self.ahead else {
            return false;
        };
        let Some((mut next, next_start)) = ahead.finish() else {
            return false;
        };
        let end = self.start + self.buf.len as u64;
        let keep_from = pos / BLOCK as u64 * BLOCK as u64;
        let usable = next_start == end
            && keep_from >= self.start
            && keep_from <= next_start
            && (next_start - keep_from) as usize <= TAIL_ROOM
            && next_start + next.len as u64 >= wanted_end;
        if usable {
            let tail = (next_start - keep_from) as usize;
            let from = self.buf.off + (keep_from - self.start) as usize;
            let (to_lo, to_hi) = (next.off - tail, next.off);
            next.raw[to_lo..to_hi].copy_from_slice(&self.buf.raw[from..from + tail]);
            next.off -= tail;
            next.len += tail;
            self.start = keep_from;
        }
        // The buffer not kept becomes the spare the next read ahead fills.
        let spare = if usable {
            std::mem::replace(&mut self.buf, next)
        } else {
            next
        };
        if let Some(ahead) = &mut self.ahead {
            ahead.spare = Some(spare);
        }
        usable
    }
}

/// A block-aligned byte buffer: `raw[off..off + len]` holds data, `off` is
/// aligned to [`BLOCK`] so `O_DIRECT` can read into it.
#[derive(Debug, Default)]
struct Buffer {
    raw: Vec<u8>,
    off: usize,
    len: usize,
}

impl Buffer {
    /// Makes room for `room` bytes before and `want` bytes from an aligned
    /// `off`; forgets the data.
    fn prepare(&mut self, room: usize, want: usize) {
        if self.raw.len() < room + want + BLOCK {
            self.raw = vec![0u8; room + want + BLOCK];
        }
        self.off = self.raw.as_ptr().align_offset(BLOCK) + room;
        self.len = 0;
    }

    /// The `want` bytes at `off`, to read into.
    fn space(&mut self, want: usize) -> &mut [u8] {
        &mut self.raw[self.off..self.off + want]
    }
}

/// The read-ahead helper of a direct-mode reader: a thread that reads one
/// chunk at a time into a spare buffer. It ends when the reader is dropped.
#[derive(Debug, Default)]
struct ReadAhead {
    channel: Option<(mpsc::Sender<Request>, mpsc::Receiver<Done>)>,
    /// File position of the chunk being read, while one is.
    pending: Option<u64>,
    spare: Option<Buffer>,
}

struct Request {
    file: File,
    start: u64,
    want: usize,
    buf: Buffer,
}

struct Done {
    buf: Buffer,
    result: std::io::Result<usize>,
}

impl ReadAhead {
    /// Starts reading `[start, start + DIRECT_CHUNK)` (up to `limit`) of `file`.
    fn start(&mut self, file: &File, start: u64, limit: u64) {
        if self.pending.is_some() {
            return;
        }
        let Ok(file) = file.try_clone() else {
            return; // out of descriptors: reads just stay synchronous
        };
        let want = (((limit - start) as usize).min(DIRECT_CHUNK)).div_ceil(BLOCK) * BLOCK;
        let mut buf = self.spare.take().unwrap_or_default();
        buf.prepare(TAIL_ROOM, want);
        let request = Request {
            file,
            start,
            want,
            buf,
        };
        let (requests, _) = self.channel.get_or_insert_with(spawn_reader);
        if requests.send(request).is_ok() {
            self.pending = Some(start);
        }
    }

    /// Waits for the chunk being read: its buffer and file position, or
    /// `None` when nothing was being read or the read failed (the caller
    /// then reads itself and sees the error).
    fn finish(&mut self) -> Option<(Buffer, u64)> {
        let start = self.pending.take()?;
        let (_, done) = self.channel.as_ref()?;
        let Done { mut buf, result } = done.recv().ok()?;
        match result {
            Ok(n) => {
                buf.len = n;
                Some((buf, start))
            }
            Err(_) => {
                self.spare = Some(buf);
                None
            }
        }
    }

    /// Drops the chunk being read, if any, keeping its buffer.
    fn cancel(&mut self) {
        if let Some((buf, _)) = self.finish() {
            self.spare = Some(buf);
        }
    }
}

fn spawn_reader() -> (mpsc::Sender<Request>, mpsc::Receiver<Done>) {
    let (requests, inbox) = mpsc::channel::<Request>();
    let (outbox, done) = mpsc::channel::<Done>();
    let spawned = std::thread::Builder::new()
        .name("strata-readahead".into())
        .spawn(move || {
            for Request {
                file,
                start,
                want,
                mut buf,
            } in inbox
            {
                let result = read_up_to(&file, buf.space(want), start);
                if outbox.send(Done { buf, result }).is_err() {
                    break;
                }
            }
        });
    if spawned.is_err() {
        // No thread: the sender's receiver is gone, so `start` finds every
        // send failing and reads stay synchronous.
        let (requests, _) = mpsc::channel();
        let (_, done) = mpsc::channel();
        return (requests, done);
    }
    (requests, done)
}

/// Reads into `buf` from `pos` until it is full or the file ends.
pub(crate) fn read_up_to(file: &File, buf: &mut [u8], pos: u64) -> std::io::Result<usize> {
    let mut done = 0;
    while done < buf.len() {
        match file.read_at(&mut buf[done..], pos + done as u64) {
            Ok(0) => break,
            Ok(n) => done += n,
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
    Ok(done)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Write;

    /// A file of `len` bytes where byte `i` is `i % 251`.
    fn patterned_file(len: usize) -> (tempfile::NamedTempFile, Vec<u8>) {
        let bytes: Vec<u8> = (0..len).map(|i| (i % 251) as u8).collect();
        let mut file = tempfile::NamedTempFile::new().expect("temp file");
        file.write_all(&bytes).expect("write");
        (file, bytes)
    }

    /// Walks the file in steps of varying size, as a batch parser does,
    /// and checks every returned slice against the file's bytes.
    fn walk(reader: &mut BlockReader, file: &File, bytes: &[u8]) {
        let limit = bytes.len() as u64;
        let mut pos = 0u64;
        let mut step = 1usize;
        while pos < limit {
            let need = step % 300_000 + 1;
            let got = reader.read(file, pos, need, limit).expect("read");
            let end = (pos as usize + need).min(bytes.len());
            assert!(got.len() >= end - pos as usize, "short read at {pos}");
            assert_eq!(&got[..end - pos as usize], &bytes[pos as usize..end]);
            pos += (need as u64).min(limit - pos);
            step = step.wrapping_mul(7919).wrapping_add(13);
        }
    }

    #[test]
    fn direct_mode_with_read_ahead_returns_the_file_bytes() {
        let (file, bytes) = patterned_file(5 * DIRECT_CHUNK + 12_345);
        let handle = File::open(file.path()).expect("open");
        let mut reader = BlockReader::direct();
        walk(&mut reader, &handle, &bytes);
        assert!(
            reader.read_ahead_hits >= 4,
            "{} hits",
            reader.read_ahead_hits
        );
        // Jumping back and reading another file after a reset still works.
        let got = reader
            .read(&handle, 7, 10, bytes.len() as u64)
            .expect("read");
        assert_eq!(&got[..10], &bytes[7..17]);
        reader.reset();
        let (other, other_bytes) = patterned_file(DIRECT_CHUNK / 2 + 3);
        let other_handle = File::open(other.path()).expect("open");
        walk(&mut reader, &other_handle, &other_bytes);
    }

    #[test]
    fn buffered_mode_returns_the_file_bytes() {
        let (file, bytes) = patterned_file(3 * READ_CHUNK + 77);
        let handle = File::open(file.path()).expect("open");
        walk(&mut BlockReader::default(), &handle, &bytes);
    }

    #[test]
    fn reading_past_the_end_is_an_error() {
        let (file, bytes) = patterned_file(1000);
        let handle = File::open(file.path()).expect("open");
        let mut reader = BlockReader::direct();
        let err = reader
            .read(&handle, 900, 200, bytes.len() as u64 + 500)
            .expect_err("short file");
        assert_eq!(err.kind(), std::io::ErrorKind::UnexpectedEof);
    }
}

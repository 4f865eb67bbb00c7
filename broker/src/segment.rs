//! One segment of a partition's log: `{base_offset:020}.log` plus, once
//! sealed, its `.index` and `.timeindex`.
//!
//! The active segment is appended to by the partition's writer; readers see
//! only its *visible* prefix — bytes whose fsync has completed — so a reader
//! never returns a record that a crash could still take back. Sealed segments
//! are immutable.

use std::fs::{self, File, OpenOptions};
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};

use parking_lot::RwLock;

use crate::batch::{BatchView, Peek, peek_batch};
use crate::block_reader::BlockReader;
use crate::durable::write_atomic;
use crate::error::{BrokerError, IoContext, Result};
use crate::index::{OffsetIndex, SegmentIndex, TimeIndex};
use crate::tail::BLOCK;

/// File name of the log of the segment starting at `base_offset`.
pub fn log_file_name(base_offset: u64) -> String {
    format!("{base_offset:020}.log")
}

/// Parses a segment's base offset out of a `{base_offset:020}.log` file name.
pub fn parse_log_file_name(name: &str) -> Option<u64> {
    let digits = name.strip_suffix(".log")?;
    (digits.len() == 20 && digits.bytes().all(|b| b.is_ascii_digit()))
        .then(|| digits.parse().ok())
        .flatten()
}

/// What a reader may know about a segment.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SegmentInfo {
    /// Offset of the first record.
    pub base_offset: u64,
    /// One past the offset of the last visible record.
    pub end_offset: u64,
    /// Visible bytes of the log file.
    pub size_bytes: u64,
    /// True once the segment is immutable.
    pub sealed: bool,
    pub min_timestamp: Option<i64>,
    pub max_timestamp: Option<i64>,
    /// Path of the `.log` file.
    pub path: PathBuf,
}

#[derive(Debug)]
struct SegmentState {
    index: SegmentIndex,
    visible_len: u64,
    visible_end: u64,
    sealed: bool,
}

/// A segment file and its in-memory indexes.
#[derive(Debug)]
pub struct Segment {
    base_offset: u64,
    path: PathBuf,
    file: File,
    state: RwLock<SegmentState>,
}

/// Where appends continue after recovering an active segment.
#[derive(Debug, Clone, Copy)]
pub(crate) struct AppendPoint {
    pub position: u64,
    pub next_offset: u64,
    pub first_append_ms: Option<i64>,
}

struct Scan {
    valid_len: u64,
    next_offset: u64,
    first_append_ms: Option<i64>,
    problem: Option<String>,
}

impl Segment {
    /// Creates a new, empty active segment. The caller fsyncs the directory.
    pub(crate) fn create(dir: &Path, base_offset: u64, index_interval: u32) -> Result<Self> {
        let path = dir.join(log_file_name(base_offset));
        OpenOptions::new()
            .write(true)
            .create_new(true)
            .open(&path)
            .context(|| format!("creating segment {}", path.display()))?;
        let file = File::open(&path).context(|| format!("opening {}", path.display()))?;
        Ok(Self::new(
            base_offset,
            path,
            file,
            SegmentIndex::new(index_interval),
            0,
            base_offset,
            false,
        ))
    }

    fn new(
        base_offset: u64,
        path: PathBuf,
        file: File,
        index: SegmentIndex,
        len: u64,
        end: u64,
        sealed: bool,
    ) -> Self {
        Self {
            base_offset,
            path,
            file,
            state: RwLock::new(SegmentState {
                index,
                visible_len: len,
                visible_end: end,
                sealed,
            }),
        }
    }

    /// Opens a segment that is not the partition's last, loading its index
    /// files or rebuilding them from the log when they are missing or
    /// damaged. Returns whether it still needs [`Segment::seal`]: a crash
    /// can come between a roll and the sealing of the old segment, and then
    /// the caller decides whether it is sealed or becomes active again.
    pub(crate) fn open_sealed(
        path: PathBuf,
        base_offset: u64,
        index_interval: u32,
    ) -> Result<(Self, bool)> {
        let file = File::open(&path).context(|| format!("opening {}", path.display()))?;
        let len = file_len(&file, &path)?;
        // The seal writes the time index last: if it exists, the seal
        // completed, whether or not the index files still decode.
        let had_index = path.with_extension("timeindex").exists();
        let indexes = load_indexes(&path, len);
        if let Some((offsets, times)) = indexes {
            let (last_rel, last_pos) = offsets.last().unwrap_or((0, 0));
            let tail = scan(
                &file,
                len,
                base_offset,
                u64::from(last_pos),
                base_offset + u64::from(last_rel),
                None,
            )?;
            if tail.problem.is_none() {
                let index = SegmentIndex::loaded(offsets, times, index_interval);
                return Ok((
                    Self::new(base_offset, path, file, index, len, tail.next_offset, true),
                    false,
                ));
            }
        }
        tracing::info!(segment = %path.display(), "rebuilding segment indexes");
        let mut index = SegmentIndex::new(index_interval);
        let scanned = scan(&file, len, base_offset, 0, base_offset, Some(&mut index))?;
        if let Some(problem) = scanned.problem {
            // Without a time index the segment was never sealed: a crash cut
            // its last write short (a torn batch, or padding), and none of
            // those bytes was acknowledged. With one, this is damage.
            if had_index && !is_zero_padding(&file, scanned.valid_len, len)? {
                return Err(BrokerError::Corrupt {
                    path: path.display().to_string(),
                    message: format!(
                        "sealed segment is damaged at byte {}: {problem}",
                        scanned.valid_len
                    ),
                });
            }
            tracing::warn!(
                segment = %path.display(),
                at = scanned.valid_len,
                %problem,
                "truncating the unfinished end of a rolled segment"
            );
            truncate(&path, scanned.valid_len)?;
        }
        let segment = Self::new(
            base_offset,
            path,
            file,
            index,
            scanned.valid_len,
            scanned.next_offset,
            false,
        );
        if had_index {
            // Its seal had completed: never dropped by recovery, sealed again
            // now that its indexes were rebuilt.
            segment.seal()?;
            return Ok((segment, false));
        }
        Ok((segment, true))
    }

    /// Opens the last segment of a partition after a stop or a crash:
    /// validates every batch by CRC and offset continuity, truncates a torn
    /// or corrupt tail, and rebuilds the in-memory indexes.
    pub(crate) fn recover_active(
        path: PathBuf,
        base_offset: u64,
        index_interval: u32,
    ) -> Result<(Self, AppendPoint)> {
        let file = File::open(&path).context(|| format!("opening {}", path.display()))?;
        let len = file_len(&file, &path)?;
        let mut index = SegmentIndex::new(index_interval);
        let scanned = scan(&file, len, base_offset, 0, base_offset, Some(&mut index))?;
        let truncated_bytes = len - scanned.valid_len;
        if truncated_bytes > 0 {
            tracing::warn!(
                segment = %path.display(),
                at = scanned.valid_len,
                bytes = truncated_bytes,
                problem = scanned.problem.as_deref().unwrap_or("trailing bytes"),
                "truncating torn or corrupt tail"
            );
            truncate(&path, scanned.valid_len)?;
        }
        for ext in ["index", "timeindex"] {
            // Stale indexes of a segment that is active again describe nothing.
            let _ = fs::remove_file(path.with_extension(ext));
        }
        let tail = AppendPoint {
            position: scanned.valid_len,
            next_offset: scanned.next_offset,
            first_append_ms: scanned.first_append_ms,
        };
        let segment = Self::new(
            base_offset,
            path,
            file,
            index,
            scanned.valid_len,
            scanned.next_offset,
            false,
        );
        Ok((segment, tail))
    }

    /// Offset of the first record.
    pub fn base_offset(&self) -> u64 {
        self.base_offset
    }

    /// Path of the `.log` file.
    pub fn path(&self) -> &Path {
        &self.path
    }

    pub(crate) fn file(&self) -> &File {
        &self.file
    }

    /// A read handle that bypasses the page cache where the filesystem
    /// allows it (see [`BlockReader::direct`]).
    pub(crate) fn open_direct(&self) -> Result<File> {
        let mut options = OpenOptions::new();
        options.read(true);
        crate::direct_io::open(&self.path, &options)
            .map(|(file, _direct)| file)
            .context(|| format!("opening {}", self.path.display()))
    }

    /// A consistent description of the visible part.
    pub fn info(&self) -> SegmentInfo {
        let st = self.state.read();
        let empty = st.visible_end == self.base_offset;
        SegmentInfo {
            base_offset: self.base_offset,
            end_offset: st.visible_end,
            size_bytes: st.visible_len,
            sealed: st.sealed,
            min_timestamp: if empty {
                None
            } else {
                st.index.times.min_timestamp()
            },
            max_timestamp: if empty {
                None
            } else {
                st.index.max_timestamp()
            },
            path: self.path.clone(),
        }
    }

    /// Bytes readers may see.
    pub(crate) fn visible_len(&self) -> u64 {
        self.state.read().visible_len
    }

    /// Records a batch appended at `position` in the indexes.
    pub(crate) fn on_append(&self, batch: &BatchView<'_>, position: u64) {
        let rel = (batch.base_offset() - self.base_offset) as u32;
        let mut st = self.state.write();
        st.index.on_batch(
            rel,
            position as u32,
            batch.len(),
            batch.min_timestamp(),
            batch.max_timestamp(),
        );
    }

    /// Makes the first `len` bytes (records below `end`) visible to readers;
    /// the caller guarantees they are durable.
    pub(crate) fn publish(&self, len: u64, end: u64) {
        let mut st = self.state.write();
        st.visible_len = st.visible_len.max(len);
        st.visible_end = st.visible_end.max(end);
    }

    /// Writes the index files and marks the segment immutable. Call only once
    /// everything appended is durable and published.
    pub(crate) fn seal(&self) -> Result<()> {
        let (offsets, times) = {
            let mut st = self.state.write();
            let count = (st.visible_end - self.base_offset) as u32;
            st.index.seal(count);
            st.sealed = true;
            (st.index.offsets.encode(), st.index.times.encode())
        };
        write_atomic(&self.path.with_extension("index"), &offsets)?;
        write_atomic(&self.path.with_extension("timeindex"), &times)
    }

    /// File position of a batch at or before `offset`.
    pub(crate) fn position_for(&self, offset: u64) -> u64 {
        let rel = offset
            .saturating_sub(self.base_offset)
            .min(u64::from(u32::MAX)) as u32;
        let st = self.state.read();
        st.index
            .offsets
            .lookup(rel)
            .map_or(0, |(_, pos)| u64::from(pos))
    }

    /// File position of the batch that starts at `offset`, or `None` when
    /// no visible batch starts there (`offset` at the visible end counts:
    /// its position is the visible length).
    pub(crate) fn batch_position(&self, offset: u64) -> Result<Option<u64>> {
        let (len, end) = {
            let st = self.state.read();
            (st.visible_len, st.visible_end)
        };
        if offset == end {
            return Ok(Some(len));
        }
        let mut pos = self.position_for(offset);
        let mut reader = BlockReader::default();
        while pos < len {
            let bytes = reader
                .read(&self.file, pos, crate::batch::BATCH_HEADER_LEN, len)
                .context(|| format!("reading {}", self.path.display()))?;
            let header =
                crate::batch::BatchHeader::parse(bytes).map_err(|e| BrokerError::Corrupt {
                    path: self.path.display().to_string(),
                    message: e.to_string(),
                })?;
            if header.base_offset >= offset {
                return Ok((header.base_offset == offset).then_some(pos));
            }
            pos += header.len as u64;
        }
        Ok(None)
    }

    /// An offset from which scanning finds the first record with `timestamp >= target`.
    pub(crate) fn scan_start_for_time(&self, target: i64) -> u64 {
        self.base_offset + u64::from(self.state.read().index.times.lookup(target))
    }
}

/// Removes the files of the segment starting at `base_offset` in `dir`.
pub(crate) fn remove_segment_files(dir: &Path, base_offset: u64) -> Result<()> {
    let log = dir.join(log_file_name(base_offset));
    for path in [
        log.with_extension("index"),
        log.with_extension("timeindex"),
        log,
    ] {
        match fs::remove_file(&path) {
            Err(e) if e.kind() != std::io::ErrorKind::NotFound => {
                return Err(BrokerError::Io {
                    context: format!("removing {}", path.display()),
                    source: e,
                });
            }
            _ => {}
        }
    }
    Ok(())
}

fn truncate(path: &Path, len: u64) -> Result<()> {
    OpenOptions::new()
        .write(true)
        .open(path)
        .and_then(|f| f.set_len(len).and_then(|()| f.sync_all()))
        .context(|| format!("truncating {}", path.display()))
}

/// True when `file[from..to]` is all zeros (less than one block of it).
fn is_zero_padding(file: &File, from: u64, to: u64) -> Result<bool> {
    if to - from >= BLOCK as u64 {
        return Ok(false);
    }
    let mut bytes = vec![0u8; (to - from) as usize];
    file.read_exact_at(&mut bytes, from)
        .map_err(|source| BrokerError::Io {
            context: "reading a segment tail".into(),
            source,
        })?;
    Ok(bytes.iter().all(|&b| b == 0))
}

fn file_len(file: &File, path: &Path) -> Result<u64> {
    file.metadata()
        .map(|m| m.len())
        .context(|| format!("reading metadata of {}", path.display()))
}

fn load_indexes(log_path: &Path, log_len: u64) -> Option<(OffsetIndex, TimeIndex)> {
    let offsets = fs::read(log_path.with_extension("index")).ok()?;
    let times = fs::read(log_path.with_extension("timeindex")).ok()?;
    Some((
        OffsetIndex::decode(&offsets, log_len)?,
        TimeIndex::decode(&times)?,
    ))
}

/// Walks the batches of `file` from `pos` (holding `offset`) to `len`,
/// checking CRCs and offset continuity. Stops at the first problem, which it
/// reports together with the length of the valid prefix.
fn scan(
    file: &File,
    len: u64,
    base_offset: u64,
    mut pos: u64,
    mut offset: u64,
    mut index: Option<&mut SegmentIndex>,
) -> Result<Scan> {
    let mut reader = BlockReader::default();
    let mut out = Scan {
        valid_len: pos,
        next_offset: offset,
        first_append_ms: None,
        problem: None,
    };
    let mut need = crate::batch::BATCH_HEADER_LEN;
    while pos < len {
        let bytes = reader
            .read(file, pos, need, len)
            .map_err(|source| BrokerError::Io {
                context: "scanning segment".into(),
                source,
            })?;
        let view = match peek_batch(bytes) {
            Ok(Peek::Batch(view)) => view,
            Ok(Peek::NeedBytes(n)) if pos + n as u64 <= len => {
                need = n;
                continue;
            }
            Ok(Peek::NeedBytes(_)) => {
                out.problem = Some("incomplete batch at end of file".into());
                break;
            }
            Err(e) => {
                out.problem = Some(e.to_string());
                break;
            }
        };
        need = crate::batch::BATCH_HEADER_LEN;
        if let Err(e) = view.verify() {
            out.problem = Some(e.to_string());
            break;
        }
        if view.base_offset() != offset || view.record_count() == 0 {
            out.problem = Some(format!(
                "batch has base offset {} and {} records where offset {offset} was expected",
                view.base_offset(),
                view.record_count()
            ));
            break;
        }
        if let Some(index) = index.as_deref_mut() {
            let rel = (offset - base_offset) as u32;
            index.on_batch(
                rel,
                pos as u32,
                view.len(),
                view.min_timestamp(),
                view.max_timestamp(),
            );
        }
        out.first_append_ms.get_or_insert(view.append_time());
        offset = view.next_offset();
        pos += view.len() as u64;
        out.valid_len = pos;
        out.next_offset = offset;
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn file_names_round_trip() {
        assert_eq!(log_file_name(42), "00000000000000000042.log");
        assert_eq!(parse_log_file_name("00000000000000000042.log"), Some(42));
        assert_eq!(parse_log_file_name("42.log"), None);
        assert_eq!(parse_log_file_name("0000000000000000004x.log"), None);
        assert_eq!(parse_log_file_name("00000000000000000042.index"), None);
    }
}

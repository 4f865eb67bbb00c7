//! Uploading one Parquet file, and cleaning up after uploads that a crash
//! cut short.
//!
//! A file that fits in one part is one PUT. A larger one is a multipart
//! upload of [`UPLOAD_PART_BYTES`] parts, at most [`UPLOADS_IN_FLIGHT`] at a
//! time. Parts of an upload that is never completed stay on S3, billed and
//! invisible to listings, until someone aborts the upload by its id, and
//! object_store cannot list open uploads. So on stores that can abort by id
//! (S3 and compatible stores, `memory://`) the id goes into a journal in the
//! data directory, durably, before the first part is sent, and leaves it once
//! the upload is completed or aborted; on start, every upload still in the
//! journal is aborted. On `file://` stores the file is written next to its
//! final name as `<name>#<n>` (as object_store's local store stages its
//! uploads; listings hide such files) and renamed into place; the offloader
//! removes leftovers on start ([`crate::ColdStore::remove_staged_uploads`]).
//! Those writes use direct I/O: through the page cache, the kernel's copy
//! was a tenth of the offloader's CPU on the reference machine, and the
//! Parquet files would push the hot segments that consumers read out of the
//! cache.

use std::collections::VecDeque;
use std::path::PathBuf;
use std::sync::Arc;

use bytes::Bytes;
use object_store::buffered::BufWriter;
use object_store::multipart::{MultipartStore, PartId};
use object_store::path::Path;
use object_store::{MultipartId, ObjectStore, ObjectStoreExt, PutPayload};
use serde::{Deserialize, Serialize};
use tokio::io::AsyncWriteExt;
use tokio::task::JoinHandle;

use crate::error::{Result, TieringError};
use crate::store::ColdStore;

/// Bytes of each multipart upload part (all but the last are exactly this
/// long, as Cloudflare R2 wants; S3 wants at least 5 MiB).
pub const UPLOAD_PART_BYTES: usize = 8 * 1024 * 1024;
/// Parts of one file uploaded concurrently.
pub const UPLOADS_IN_FLIGHT: usize = 2;

/// Multipart uploads in progress, one small JSON file each under
/// `<data_dir>/uploads/`.
#[derive(Debug)]
pub struct UploadJournal {
    dir: PathBuf,
}

#[derive(Debug, Serialize, Deserialize)]
struct JournalEntry {
    path: String,
    upload_id: String,
}

impl UploadJournal {
    /// The journal under `data_dir` (created if missing).
    pub fn open(data_dir: &std::path::Path) -> Result<Self> {
        let dir = data_dir.join("uploads");
        std::fs::create_dir_all(&dir)
            .map_err(|e| TieringError::Internal(format!("creating {}: {e}", dir.display())))?;
        Ok(Self { dir })
    }

    /// Notes that upload `id` of `path` is open. When this returns, the note
    /// is durable.
    async fn record(&self, path: &Path, id: &MultipartId) -> Result<PathBuf> {
        let entry = JournalEntry {
            path: path.to_string(),
            upload_id: id.clone(),
        };
        let bytes = serde_json::to_vec(&entry)
            .map_err(|e| TieringError::Internal(format!("encoding an upload note: {e}")))?;
        // Object paths can be longer than a file name may be: name the note
        // by a digest of the path, and the time, so a retry of the same
        // path never overwrites the note of an upload not yet aborted.
        let digest = {
            use std::hash::{Hash, Hasher};
            let mut hasher = std::hash::DefaultHasher::new();
            path.as_ref().hash(&mut hasher);
            hasher.finish()
        };
        let name = self
            .dir
            .join(format!("{digest:016x}-{}.json", unique_suffix()));
        let file = name.clone();
        tokio::task::spawn_blocking(move || strata_broker::durable::write_atomic(&file, &bytes))
            .await
            .map_err(|e| TieringError::Internal(e.to_string()))?
            .map_err(|e| TieringError::Internal(format!("writing an upload note: {e}")))?;
        Ok(name)
    }

    /// Forgets an upload that was completed or aborted.
    fn remove(&self, note: &std::path::Path) {
        if let Err(e) = std::fs::remove_file(note) {
            tracing::warn!(note = %note.display(), error = %e, "could not remove an upload note");
        }
    }

    /// Aborts every upload the journal still lists (left by a crash: run
    /// before any upload starts). One that cannot be aborted now stays
    /// listed for the next start. Returns how many were aborted.
    pub async fn abort_abandoned(&self, store: &dyn MultipartStore) -> usize {
        let mut aborted = 0;
        for (note, entry) in self.entries() {
            let path = Path::from(entry.path.as_str());
            match store.abort_multipart(&path, &entry.upload_id).await {
                Ok(()) | Err(object_store::Error::NotFound { .. }) => {
                    tracing::info!(path = %entry.path, "aborted an upload a crash cut short");
                    self.remove(&note);
                    aborted += 1;
                }
                Err(e) => tracing::warn!(
                    path = %entry.path, error = %e,
                    "could not abort an upload a crash cut short; will retry on the next start"
                ),
            }
        }
        aborted
    }

    fn entries(&self) -> Vec<(PathBuf, JournalEntry)> {
        let Ok(dir) = std::fs::read_dir(&self.dir) else {
            return Vec::new();
        };
        dir.filter_map(|e| e.ok().map(|e| e.path()))
            .filter(|p| p.extension().is_some_and(|x| x == "json"))
            .filter_map(|note| {
                let bytes = std::fs::read(&note).ok()?;
                match serde_json::from_slice(&bytes) {
                    Ok(entry) => Some((note, entry)),
                    Err(e) => {
                        tracing::warn!(note = %note.display(), error = %e, "ignoring an unreadable upload note");
                        None
                    }
                }
            })
            .collect()
    }
}

/// The upload of one file, fed chunk by chunk; all chunks but the last
/// must be exactly [`UPLOAD_PART_BYTES`] long.
pub enum FileUpload {
    /// `file://` stores: written directly, renamed into place.
    Local(LocalUpload),
    /// Stores that can abort a multipart upload by id (S3, memory).
    Journaled(JournaledUpload),
    /// Any other store: object_store's `BufWriter`.
    Buffered(BufWriter),
}

/// A file of a `file://` store, written as `<name>#<n>` with direct I/O
/// where the file system allows it, then renamed to `<name>`.
pub struct LocalUpload {
    target: PathBuf,
    staging: PathBuf,
    file: Option<Arc<std::fs::File>>,
    /// Whether `file` is still open with `O_DIRECT`.
    direct: bool,
    written: u64,
}

/// A multipart upload noted in the [`UploadJournal`] while it is open.
pub struct JournaledUpload {
    store: Arc<dyn ObjectStore>,
    multipart: Arc<dyn MultipartStore>,
    journal: Arc<UploadJournal>,
    path: Path,
    /// The chunk received last: a part once another follows, else the
    /// whole file or its last part.
    held: Option<Bytes>,
    open: Option<OpenUpload>,
    /// Crash tests only: abort the process once the first part is stored.
    crash_after_first_part: bool,
    /// Parts sent at once: [`UPLOADS_IN_FLIGHT`], or 1 where the store
    /// needs parts in order.
    in_flight_limit: usize,
}

struct OpenUpload {
    id: MultipartId,
    note: PathBuf,
    /// Parts being sent, in part order.
    in_flight: VecDeque<JoinHandle<object_store::Result<PartId>>>,
    parts: Vec<PartId>,
}

impl OpenUpload {
    /// Waits for the oldest part in flight.
    async fn settle_one(&mut self) -> Result<()> {
        if let Some(part) = self.in_flight.pop_front() {
            let part = part
                .await
                .map_err(|e| TieringError::Internal(format!("a part upload failed: {e}")))??;
            self.parts.push(part);
        }
        Ok(())
    }
}

impl FileUpload {
    /// An upload of `path` to `cold`'s store.
    pub fn new(
        cold: &ColdStore,
        journal: &Arc<UploadJournal>,
        path: Path,
        crash_after_first_part: bool,
    ) -> Self {
        if let Some(root) = cold.local_root() {
            return Self::Local(LocalUpload::new(root.join(path.as_ref())));
        }
        match &cold.multipart {
            Some(multipart) => Self::Journaled(JournaledUpload {
                store: cold.store.clone(),
                multipart: multipart.clone(),
                journal: journal.clone(),
                path,
                held: None,
                open: None,
                crash_after_first_part,
                // object_store 0.13's in-memory store loses (or panics on) a
                // part that arrives before the one in front of it.
                in_flight_limit: if cold.backend == crate::store::Backend::Memory {
                    1
                } else {
                    UPLOADS_IN_FLIGHT
                },
            }),
            None => Self::Buffered(
                BufWriter::with_capacity(cold.store.clone(), path, UPLOAD_PART_BYTES)
                    .with_max_concurrency(UPLOADS_IN_FLIGHT),
            ),
        }
    }

    /// Adds the next chunk of the file.
    pub async fn put(&mut self, chunk: Bytes) -> Result<()> {
        match self {
            Self::Local(upload) => upload.put(chunk).await,
            Self::Buffered(writer) => Ok(writer.put(chunk).await?),
            Self::Journaled(upload) => {
                if let Some(previous) = upload.held.replace(chunk) {
                    upload.send_part(previous).await?;
                }
                Ok(())
            }
        }
    }

    /// Completes the upload: when this returns, the object is in the store.
    pub async fn finish(&mut self) -> Result<()> {
        match self {
            Self::Local(upload) => upload.finish().await,
            Self::Buffered(writer) => writer
                .shutdown()
                .await
                .map_err(|e| TieringError::Internal(format!("completing the upload: {e}"))),
            Self::Journaled(upload) => upload.finish().await,
        }
    }

    /// Gives the upload up, deleting what was uploaded of it (best effort:
    /// an upload that cannot be aborted now stays in the journal).
    pub async fn abort(&mut self) {
        let result = match self {
            Self::Local(upload) => upload.abort().await,
            Self::Buffered(writer) => writer.abort().await.map_err(TieringError::from),
            Self::Journaled(upload) => upload.abort().await,
        };
        if let Err(e) = result {
            tracing::warn!(error = %e, "could not abort an upload");
        }
    }
}

impl JournaledUpload {
    async fn finish(&mut self) -> Result<()> {
        let last = self.held.take().unwrap_or_default();
        if self.open.is_none() {
            self.store.put(&self.path, PutPayload::from(last)).await?;
            return Ok(());
        }
        self.send_part(last).await?;
        let Some(open) = self.open.as_mut() else {
            return Err(TieringError::Internal("an upload lost its id".into()));
        };
        while !open.in_flight.is_empty() {
            open.settle_one().await?;
        }
        self.multipart
            .complete_multipart(&self.path, &open.id, open.parts.clone())
            .await?;
        if let Some(open) = self.open.take() {
            self.journal.remove(&open.note);
        }
        Ok(())
    }

    async fn abort(&mut self) -> Result<()> {
        let Some(open) = self.open.take() else {
            return Ok(());
        };
        open.in_flight.iter().for_each(JoinHandle::abort);
        self.multipart.abort_multipart(&self.path, &open.id).await?;
        self.journal.remove(&open.note);
        Ok(())
    }

    /// Sends `bytes` as the next part, opening (and noting) the upload first
    /// if needed; waits while `in_flight_limit` parts are on their way.
    async fn send_part(&mut self, bytes: Bytes) -> Result<()> {
        let open = match &mut self.open {
            Some(open) => open,
            None => {
                let id = self.multipart.create_multipart(&self.path).await?;
                let note = match self.journal.record(&self.path, &id).await {
                    Ok(note) => note,
                    Err(e) => {
                        let _ = self.multipart.abort_multipart(&self.path, &id).await;
                        return Err(e);
                    }
                };
                self.open.insert(OpenUpload {
                    id,
                    note,
                    in_flight: VecDeque::new(),
                    parts: Vec::new(),
                })
            }
        };
        let (multipart, path, id) = (self.multipart.clone(), self.path.clone(), open.id.clone());
        let index = open.parts.len() + open.in_flight.len();
        open.in_flight.push_back(tokio::spawn(async move {
            multipart
                .put_part(&path, &id, index, PutPayload::from(bytes))
                .await
        }));
        while open.in_flight.len() >= self.in_flight_limit {
            open.settle_one().await?;
            if self.crash_after_first_part && open.parts.len() == 1 {
                tracing::warn!(path = %self.path, "crash test: aborting during an upload");
                std::process::abort();
            }
        }
        Ok(())
    }
}

impl LocalUpload {
    fn new(target: PathBuf) -> Self {
        let mut staging = target.clone().into_os_string();
        staging.push(format!("#{}", unique_suffix()));
        Self {
            target,
            staging: staging.into(),
            file: None,
            direct: false,
            written: 0,
        }
    }

    /// Writes the next chunk at the end of the staging file.
    async fn put(&mut self, chunk: Bytes) -> Result<()> {
        if chunk.is_empty() {
            return Ok(());
        }
        let file = match &self.file {
            Some(file) => file.clone(),
            None => {
                let staging = self.staging.clone();
                let (file, direct) = blocking(move || open_staging(&staging)).await?;
                self.direct = direct;
                self.file.insert(Arc::new(file)).clone()
            }
        };
        // Direct I/O wants whole blocks from an aligned address; the last,
        // short chunk (and any unaligned one) goes through the page cache.
        let aligned = chunk.len().is_multiple_of(DIRECT_BLOCK)
            && (chunk.as_ptr() as usize).is_multiple_of(DIRECT_BLOCK);
        let direct = self.direct && aligned;
        self.direct = direct;
        let (at, len) = (self.written, chunk.len() as u64);
        blocking(move || {
            use std::os::unix::fs::FileExt;
            if !direct {
                clear_direct(&file)?;
            }
            file.write_all_at(&chunk, at)
        })
        .await?;
        self.written += len;
        Ok(())
    }

    /// Renames the staging file into place (an empty file when nothing was
    /// put). Durability is the caller's: see [`ColdStore::make_durable`].
    async fn finish(&mut self) -> Result<()> {
        if self.file.is_none() {
            let staging = self.staging.clone();
            blocking(move || open_staging(&staging).map(|_| ())).await?;
        }
        self.file = None;
        let (staging, target) = (self.staging.clone(), self.target.clone());
        blocking(move || std::fs::rename(&staging, &target)).await
    }

    async fn abort(&mut self) -> Result<()> {
        self.file = None;
        let staging = self.staging.clone();
        blocking(move || match std::fs::remove_file(&staging) {
            Err(e) if e.kind() != std::io::ErrorKind::NotFound => Err(e),
            _ => Ok(()),
        })
        .await
    }
}

/// An upload dropped before it finished (its offload was cancelled) leaves
/// no staging file behind.
impl Drop for LocalUpload {
    fn drop(&mut self) {
        if self.file.take().is_some() {
            let _ = std::fs::remove_file(&self.staging);
        }
    }
}

/// An upload dropped while open (its offload was cancelled) is aborted in
/// the background; if that cannot happen, the journal still names it for
/// the next start.
impl Drop for JournaledUpload {
    fn drop(&mut self) {
        let Some(open) = self.open.take() else {
            return;
        };
        open.in_flight.iter().for_each(JoinHandle::abort);
        let Ok(runtime) = tokio::runtime::Handle::try_current() else {
            return;
        };
        let (multipart, journal, path) = (
            self.multipart.clone(),
            self.journal.clone(),
            self.path.clone(),
        );
        runtime.spawn(async move {
            match multipart.abort_multipart(&path, &open.id).await {
                Ok(()) => journal.remove(&open.note),
                Err(e) => tracing::warn!(%path, error = %e, "could not abort a dropped upload"),
            }
        });
    }
}

/// Digits that differ between uploads: this process's id and the time in
/// nanoseconds (uploads of one path never run at the same time).
fn unique_suffix() -> String {
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_nanos());
    format!("{}{nanos}", std::process::id())
}

/// The block size direct I/O is aligned to (the broker's, for segments).
pub use strata_broker::BLOCK as DIRECT_BLOCK;

/// Creates the staging file (and its directory), with `O_DIRECT` when the
/// file system allows it; returns whether it did.
fn open_staging(path: &std::path::Path) -> std::io::Result<(std::fs::File, bool)> {
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir)?;
    }
    let mut options = std::fs::OpenOptions::new();
    options.write(true).create(true).truncate(true);
    strata_broker::direct_io::open(path, &options)
}

/// Turns `O_DIRECT` off for `file` (idempotent).
fn clear_direct(file: &std::fs::File) -> std::io::Result<()> {
    use std::os::fd::AsRawFd;
    let fd = file.as_raw_fd();
    // SAFETY: fcntl on a descriptor this process owns, with integer flags.
    let flags = unsafe { libc::fcntl(fd, libc::F_GETFL) };
    if flags < 0 {
        return Err(std::io::Error::last_os_error());
    }
    if flags & libc::O_DIRECT != 0 {
        // SAFETY: as above.
        if unsafe { libc::fcntl(fd, libc::F_SETFL, flags & !libc::O_DIRECT) } < 0 {
            return Err(std::io::Error::last_os_error());
        }
    }
    Ok(())
}

/// Runs file I/O on the blocking pool.
async fn blocking<T: Send + 'static>(
    io: impl FnOnce() -> std::io::Result<T> + Send + 'static,
) -> Result<T> {
    tokio::task::spawn_blocking(io)
        .await
        .map_err(|e| TieringError::Internal(e.to_string()))?
        .map_err(|e| TieringError::Internal(format!("writing a cold file: {e}")))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// `len` bytes of `fill`, starting at a block-aligned address.
    fn aligned_bytes(len: usize, fill: u8) -> Bytes {
        let (mut buf, start) = strata_broker::direct_io::aligned_vec(len);
        buf.resize(start + len, fill);
        Bytes::from(buf).slice(start..)
    }

    fn names(dir: &std::path::Path) -> Vec<String> {
        let mut names: Vec<String> = std::fs::read_dir(dir)
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .collect();
        names.sort();
        names
    }

    #[tokio::test]
    async fn local_upload_writes_whole_parts_directly_and_renames_into_place() {
        let dir = tempfile::tempdir().unwrap();
        let target = dir.path().join("topic/0/file.parquet");
        let supports_direct = open_staging(&dir.path().join("probe")).unwrap().1;
        std::fs::remove_file(dir.path().join("probe")).unwrap();
        let mut upload = LocalUpload::new(target.clone());
        let mut expected = Vec::new();
        for (fill, len) in [(1u8, 64 * DIRECT_BLOCK), (2, 64 * DIRECT_BLOCK), (3, 1234)] {
            let chunk = aligned_bytes(len, fill);
            expected.extend_from_slice(&chunk);
            upload.put(chunk).await.unwrap();
            if fill < 3 {
                assert_eq!(upload.direct, supports_direct, "whole aligned parts");
            }
        }
        assert!(!upload.direct, "the short tail went through the page cache");
        assert!(!target.exists(), "invisible until finished");
        upload.finish().await.unwrap();
        assert_eq!(std::fs::read(&target).unwrap(), expected);
        assert_eq!(names(&dir.path().join("topic/0")), ["file.parquet"]);
    }

    #[tokio::test]
    async fn an_aborted_local_upload_leaves_nothing() {
        let dir = tempfile::tempdir().unwrap();
        let target = dir.path().join("file.parquet");
        let mut upload = LocalUpload::new(target.clone());
        upload.put(aligned_bytes(DIRECT_BLOCK, 7)).await.unwrap();
        assert_eq!(names(dir.path()).len(), 1, "a staging file");
        upload.abort().await.unwrap();
        assert!(names(dir.path()).is_empty());
    }
}

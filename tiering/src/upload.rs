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
//! journal is aborted. On `file://` stores the local object store stages an
//! upload as a `<name>#<n>` file, which listings hide; the offloader removes
//! those on start instead ([`crate::ColdStore::remove_staged_uploads`]).

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
        let name = self
            .dir
            .join(format!("{}.json", path.as_ref().replace('/', "~")));
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
    /// Stores without abort by id (`file://`): object_store's `BufWriter`.
    Buffered(BufWriter),
    Journaled(JournaledUpload),
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
        match &cold.multipart {
            Some(multipart) => Self::Journaled(JournaledUpload {
                store: cold.store.clone(),
                multipart: multipart.clone(),
                journal: journal.clone(),
                path,
                held: None,
                open: None,
                crash_after_first_part,
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
    /// if needed; waits while [`UPLOADS_IN_FLIGHT`] parts are on their way.
    async fn send_part(&mut self, bytes: Bytes) -> Result<()> {
        let open = match &mut self.open {
            Some(open) => open,
            None => {
                let id = self.multipart.create_multipart(&self.path).await?;
                let note = self.journal.record(&self.path, &id).await?;
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
        while open.in_flight.len() >= UPLOADS_IN_FLIGHT {
            open.settle_one().await?;
            if self.crash_after_first_part && open.parts.len() == 1 {
                tracing::warn!(path = %self.path, "crash test: aborting during an upload");
                std::process::abort();
            }
        }
        Ok(())
    }
}

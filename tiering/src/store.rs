//! Opening the object store named by a URL.

use std::sync::Arc;
use std::time::Duration;

use object_store::aws::{AmazonS3Builder, S3ConditionalPut};
use object_store::local::LocalFileSystem;
use object_store::memory::InMemory;
use object_store::multipart::MultipartStore;
use object_store::{BackoffConfig, ObjectStore, RetryConfig};

use crate::error::{Result, TieringError};
use crate::paths::ColdRoot;

/// An object store and the root under which Strata keeps its files.
#[derive(Clone)]
pub struct ColdStore {
    pub store: Arc<dyn ObjectStore>,
    /// The same store, on stores whose multipart uploads can be aborted by
    /// id (S3, memory): their uploads are journaled (see [`crate::upload`]).
    pub multipart: Option<Arc<dyn MultipartStore>>,
    pub root: ColdRoot,
    /// What the store promises for conditional writes (`PutMode::Create`).
    pub conditional_put: bool,
    /// Whether the store also does compare-and-swap (`PutMode::Update`);
    /// the local file system store does not.
    pub conditional_update: bool,
    /// The URL without credentials, for logs.
    pub url: String,
    /// Which kind of store this is.
    pub backend: Backend,
}

/// The kinds of object store, chosen once from the URL's scheme; code that
/// must treat one differently matches on this, never on the URL.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Backend {
    /// `file://`: a local directory. Objects are fsynced with their
    /// directory by [`ColdStore::make_durable`] (the local object store
    /// writes without fsync); only create-if-absent, no compare-and-swap.
    Local { root: std::path::PathBuf },
    /// `s3://`: AWS S3, MinIO and other S3-compatible stores.
    S3 { bucket: String },
    /// `memory://`: in this process only, for tests.
    Memory,
}

impl std::fmt::Debug for ColdStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ColdStore")
            .field("url", &self.url)
            .field("root", &self.root)
            .field("conditional_put", &self.conditional_put)
            .field("conditional_update", &self.conditional_update)
            .field("backend", &self.backend)
            .field("journaled_uploads", &self.multipart.is_some())
            .finish()
    }
}

/// Retries with exponential backoff on transient errors (5xx, timeouts).
fn retry() -> RetryConfig {
    RetryConfig {
        backoff: BackoffConfig {
            init_backoff: Duration::from_millis(100),
            max_backoff: Duration::from_secs(5),
            base: 2.0,
        },
        max_retries: 5,
        retry_timeout: Duration::from_secs(60),
    }
}

impl ColdStore {
    /// Opens `file:///abs/path`, `s3://bucket/prefix` (credentials, region,
    /// endpoint and `AWS_ALLOW_HTTP` from the standard `AWS_*` variables;
    /// path-style requests, as MinIO wants) or `memory://`.
    pub fn open(url: &str) -> Result<Self> {
        if let Some(path) = url.strip_prefix("file://") {
            if !path.starts_with('/') {
                return Err(TieringError::Config(format!(
                    "file:// URLs need an absolute path, got {url:?}"
                )));
            }
            std::fs::create_dir_all(path)
                .map_err(|e| TieringError::Config(format!("cannot create {path}: {e}")))?;
            let store = LocalFileSystem::new_with_prefix(path)?;
            return Ok(Self {
                store: Arc::new(store),
                multipart: None,
                root: ColdRoot::new(""),
                conditional_put: true,
                conditional_update: false,
                url: url.to_string(),
                backend: Backend::Local { root: path.into() },
            });
        }
        if url.starts_with("memory://") {
            let store = Arc::new(InMemory::new());
            return Ok(Self {
                store: store.clone(),
                multipart: Some(store),
                root: ColdRoot::new(url.trim_start_matches("memory://")),
                conditional_put: true,
                conditional_update: true,
                url: url.to_string(),
                backend: Backend::Memory,
            });
        }
        if let Some(rest) = url.strip_prefix("s3://") {
            let (bucket, prefix) = rest.split_once('/').unwrap_or((rest, ""));
            if bucket.is_empty() {
                return Err(TieringError::Config(format!(
                    "s3:// URL without a bucket: {url:?}"
                )));
            }
            let conditional_put =
                std::env::var("AWS_CONDITIONAL_PUT").map_or(true, |v| v != "disabled");
            let mut builder = AmazonS3Builder::from_env()
                .with_bucket_name(bucket)
                .with_virtual_hosted_style_request(false)
                .with_retry(retry());
            if conditional_put {
                builder = builder.with_conditional_put(S3ConditionalPut::ETagMatch);
            }
            let store = Arc::new(builder.build()?);
            return Ok(Self {
                store: store.clone(),
                multipart: Some(store),
                root: ColdRoot::new(prefix),
                conditional_put,
                conditional_update: conditional_put,
                url: url.to_string(),
                backend: Backend::S3 {
                    bucket: bucket.to_string(),
                },
            });
        }
        Err(TieringError::Config(format!(
            "object store URL must start with file://, s3:// or memory://, got {url:?}"
        )))
    }

    /// The directory of a `file://` store.
    pub fn local_root(&self) -> Option<&std::path::Path> {
        match &self.backend {
            Backend::Local { root } => Some(root),
            Backend::S3 { .. } | Backend::Memory => None,
        }
    }

    /// `file://` stores only: deletes under `dir` the staging files
    /// (`<name>#<n>`) of uploads that a crash cut short, which listings do
    /// not show. Run before any upload starts. Returns how many went.
    pub async fn remove_staged_uploads(&self, dir: &object_store::path::Path) -> Result<usize> {
        let Some(root) = self.local_root() else {
            return Ok(0);
        };
        let dir = root.join(dir.as_ref());
        tokio::task::spawn_blocking(move || {
            let Ok(entries) = std::fs::read_dir(&dir) else {
                return Ok(0);
            };
            let mut removed = 0;
            for entry in entries.flatten() {
                let name = entry.file_name();
                let staged = name.to_str().and_then(|n| n.rsplit_once('#')).is_some_and(
                    |(_, n)| !n.is_empty() && n.bytes().all(|b| b.is_ascii_digit()),
                );
                if staged {
                    tracing::info!(path = %entry.path().display(), "removing an upload a crash cut short");
                    std::fs::remove_file(entry.path())?;
                    removed += 1;
                }
            }
            Ok(removed)
        })
        .await
        .map_err(|e| TieringError::Internal(e.to_string()))?
        .map_err(|e: std::io::Error| TieringError::Internal(format!("removing staged uploads: {e}")))
    }

    /// Whether `bytes`, read from this store, are a JSON object that a power
    /// cut tore: on `file://`, an object whose write was not yet fsynced
    /// (see [`ColdStore::make_durable`]) can come back empty or cut short
    /// after a power loss, and its writer never relied on it (the write had
    /// not returned). S3 puts are atomic, so there it is damage, never a tear.
    ///
    /// Only a short read counts: empty or cut short, or with zero bytes
    /// where the file system had not written the data yet (the JSON Strata
    /// writes never holds a NUL byte). A whole object that does not parse
    /// is damage, reported by the reader, never dropped.
    pub fn is_torn_json(&self, bytes: &[u8]) -> bool {
        self.local_root().is_some()
            && (bytes.contains(&0)
                || serde_json::from_slice::<serde::de::IgnoredAny>(bytes)
                    .is_err_and(|e| e.is_eof()))
    }

    /// Makes a written object durable. A no-op for S3 (a completed PUT is
    /// durable); for `file://` stores it fsyncs the file and its directory,
    /// which the local object store does not do.
    pub async fn make_durable(&self, path: &object_store::path::Path) -> Result<()> {
        self.fsync_local(path, true).await
    }

    /// [`ColdStore::make_durable`] for an object that may not exist (one
    /// another library wrote, or not); returns whether it did.
    pub async fn make_durable_if_present(&self, path: &object_store::path::Path) -> Result<bool> {
        let Some(root) = self.local_root() else {
            return Ok(true);
        };
        if !tokio::fs::try_exists(root.join(path.as_ref()))
            .await
            .unwrap_or(false)
        {
            return Ok(false);
        }
        self.make_durable(path).await?;
        Ok(true)
    }

    /// Makes the removal or creation of entries in directory `dir` durable
    /// (fsyncs it on `file://`; a no-op elsewhere).
    pub async fn make_dir_durable(&self, dir: &object_store::path::Path) -> Result<()> {
        self.fsync_local(dir, false).await
    }

    async fn fsync_local(&self, path: &object_store::path::Path, is_file: bool) -> Result<()> {
        let Some(root) = self.local_root() else {
            return Ok(());
        };
        let target = root.join(path.as_ref());
        tokio::task::spawn_blocking(move || {
            std::fs::File::open(&target)?.sync_all()?;
            match target.parent().filter(|_| is_file) {
                Some(dir) => std::fs::File::open(dir)?.sync_all(),
                None => Ok(()),
            }
        })
        .await
        .map_err(|e| TieringError::Internal(e.to_string()))?
        .map_err(|e| TieringError::Internal(format!("fsyncing {path}: {e}")))
    }
}

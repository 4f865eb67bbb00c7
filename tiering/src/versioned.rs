//! Create-only versioned objects: the one way Strata keeps state that
//! several writers may race on in the object store.
//!
//! A piece of state is a directory of immutable versions
//! `<dir>/<version:020>.json`; the newest version is the state. A writer
//! that read version N writes N+1 with `PutMode::Create`: whoever creates it
//! first wins, everyone else gets [`TieringError::Conflict`], rereads and
//! decides again. This needs only create-if-absent, which every store has
//! (`file://` has no compare-and-swap), and no clock. The cold tier's
//! manifests and the cluster's control objects (strata-cluster) are kept
//! this way.

use bytes::Bytes;
use futures::TryStreamExt;
use object_store::path::Path;
use object_store::{ObjectStore, ObjectStoreExt, PutMode, PutOptions, PutPayload};

use crate::error::{Result, TieringError};
use crate::store::ColdStore;

/// The versions of one piece of state, kept in one directory of a store.
#[derive(Debug, Clone)]
pub struct VersionedObjects {
    cold: ColdStore,
    dir: Path,
}

impl VersionedObjects {
    /// The versions kept in `dir` of `cold`'s store.
    pub fn new(cold: &ColdStore, dir: Path) -> Self {
        Self {
            cold: cold.clone(),
            dir,
        }
    }

    /// The directory the versions are kept in.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// The object of one version.
    pub fn path(&self, version: u64) -> Path {
        self.dir.clone().join(format!("{version:020}.json"))
    }

    /// The newest version there is, 0 when there is none (versions start
    /// at 1). One LIST of the directory.
    pub async fn newest(&self) -> Result<u64> {
        Ok(self
            .cold
            .store
            .list(Some(&self.dir))
            .try_filter_map(|meta| async move { Ok(version_of(&meta.location)) })
            .try_fold(0u64, |max, v| async move { Ok(max.max(v)) })
            .await?)
    }

    /// The bytes of one version, `None` when it does not exist (never
    /// written, or deleted as too old).
    pub async fn read(&self, version: u64) -> Result<Option<Bytes>> {
        match self.cold.store.get(&self.path(version)).await {
            Ok(found) => Ok(Some(found.bytes().await?)),
            Err(object_store::Error::NotFound { .. }) => Ok(None),
            Err(e) => Err(e.into()),
        }
    }

    /// The newest version and its bytes, `None` when there is none.
    pub async fn read_newest(&self) -> Result<Option<(u64, Bytes)>> {
        // A version can vanish between the LIST and the GET only when
        // enough newer ones landed meanwhile to make it old enough to
        // delete: list again.
        for _ in 0..4 {
            let newest = self.newest().await?;
            if newest == 0 {
                return Ok(None);
            }
            match self.read(newest).await? {
                Some(bytes) if self.cold.is_torn_json(&bytes) => {
                    // Its create never returned (it is durable before it
                    // does): nobody relied on it, and the next writer must
                    // be able to create this version again.
                    tracing::warn!(path = %self.path(newest), "removing a version a power cut tore");
                    self.remove_torn(newest).await?;
                }
                Some(bytes) => return Ok(Some((newest, bytes))),
                None => {}
            }
        }
        Err(TieringError::Conflict {
            path: self.dir.to_string(),
        })
    }

    /// Creates `version` with `bytes`.
    ///
    /// # Contract
    ///
    /// - **Atomic**: readers see the version whole or not at all (one PUT
    ///   of one object).
    /// - **Exclusive**: on stores with conditional writes, no other writer
    ///   can have created the same version; a second create of it fails
    ///   with [`TieringError::Conflict`] and changes nothing. Without them
    ///   (Garage), a version that already exists is refused, but two
    ///   writers racing can both succeed (docs/operations.md).
    /// - **Durable when it returns `Ok`**: on S3 a completed PUT is; on
    ///   `file://` the object and its directory are fsynced first.
    pub async fn create(&self, version: u64, bytes: Vec<u8>) -> Result<()> {
        let path = self.path(version);
        let store: &dyn ObjectStore = self.cold.store.as_ref();
        let mode = if self.cold.conditional_put {
            PutMode::Create
        } else {
            // Without conditional writes, at least refuse a version that exists.
            match store.head(&path).await {
                Ok(_) => {
                    return Err(TieringError::Conflict {
                        path: path.to_string(),
                    });
                }
                Err(object_store::Error::NotFound { .. }) => PutMode::Overwrite,
                Err(e) => return Err(e.into()),
            }
        };
        let opts = PutOptions {
            mode,
            ..PutOptions::default()
        };
        match store.put_opts(&path, PutPayload::from(bytes), opts).await {
            Ok(_) => {}
            Err(object_store::Error::AlreadyExists { .. }) => {
                return Err(TieringError::Conflict {
                    path: path.to_string(),
                });
            }
            Err(e) => return Err(e.into()),
        }
        self.cold.make_durable(&path).await
    }

    /// Deletes a torn `version` durably (its directory fsynced on `file://`),
    /// if it is still torn: another process of the same `file://` root may
    /// have removed and created it again meanwhile. (Between this second
    /// read and the delete a window remains; it needs two processes
    /// restarting over one root after a power cut at the same moment.)
    async fn remove_torn(&self, version: u64) -> Result<()> {
        match self.read(version).await? {
            Some(bytes) if self.cold.is_torn_json(&bytes) => {}
            _ => return Ok(()),
        }
        match self.cold.store.delete(&self.path(version)).await {
            Ok(()) | Err(object_store::Error::NotFound { .. }) => {}
            Err(e) => return Err(e.into()),
        }
        self.cold.make_dir_durable(&self.dir).await
    }

    /// Deletes `version`, best effort: old versions are garbage, and a
    /// reader that lists just before the delete lists again.
    pub async fn forget(&self, version: u64) {
        let old = self.path(version);
        if let Err(e) = self.cold.store.delete(&old).await {
            tracing::debug!(path = %old, error = %e, "could not delete an old version");
        }
    }
}

/// The version number in a version object's file name.
pub fn version_of(path: &Path) -> Option<u64> {
    let name = path.filename()?;
    let digits = name.strip_suffix(".json")?;
    (digits.len() == 20).then(|| digits.parse().ok()).flatten()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn version_numbers_come_only_from_twenty_digit_names() {
        assert_eq!(
            version_of(&Path::from("a/00000000000000000007.json")),
            Some(7)
        );
        assert_eq!(version_of(&Path::from("a/7.json")), None);
        assert_eq!(version_of(&Path::from("a/0000000000000000000x.json")), None);
        assert_eq!(version_of(&Path::from("a/00000000000000000007.tmp")), None);
    }

    #[tokio::test]
    async fn a_version_is_created_once_and_the_newest_wins() {
        let cold = ColdStore::open("memory://v").expect("memory store");
        let objects = VersionedObjects::new(&cold, Path::from("v/state"));
        assert_eq!(objects.read_newest().await.expect("read"), None);
        objects.create(1, b"one".to_vec()).await.expect("create 1");
        assert!(matches!(
            objects.create(1, b"again".to_vec()).await,
            Err(TieringError::Conflict { .. })
        ));
        objects.create(2, b"two".to_vec()).await.expect("create 2");
        let (version, bytes) = objects.read_newest().await.expect("read").expect("some");
        assert_eq!((version, &bytes[..]), (2, &b"two"[..]));
        objects.forget(1).await;
        assert_eq!(objects.read(1).await.expect("read"), None);
        assert_eq!(objects.newest().await.expect("newest"), 2);
    }

    /// Guards the power-loss rule: on `file://` a version whose create never
    /// returned can come back empty or cut short; it must neither stop a
    /// reader nor block the next writer from creating that version.
    #[tokio::test]
    async fn a_version_torn_by_a_power_cut_is_dropped_on_file_stores() {
        let dir = tempfile::tempdir().expect("tempdir");
        let url = format!("file://{}", dir.path().display());
        let cold = ColdStore::open(&url).expect("file store");
        let objects = VersionedObjects::new(&cold, Path::from("state"));
        objects
            .create(1, b"{\"n\":1}".to_vec())
            .await
            .expect("create 1");
        for torn in [&b""[..], &b"{\"n\":"[..]] {
            std::fs::write(dir.path().join("state/00000000000000000002.json"), torn)
                .expect("tear version 2");
            let (version, bytes) = objects.read_newest().await.expect("read").expect("some");
            assert_eq!((version, &bytes[..]), (1, &b"{\"n\":1}"[..]));
        }
        objects
            .create(2, b"{\"n\":2}".to_vec())
            .await
            .expect("create 2 again");
        assert_eq!(
            objects.read_newest().await.expect("read").expect("some").0,
            2
        );
        // Elsewhere bytes that do not parse are damage, reported by the caller.
        let memory = ColdStore::open("memory://t").expect("memory store");
        assert!(!memory.is_torn_json(b""));
        assert!(cold.is_torn_json(b"") && !cold.is_torn_json(b"{}"));
        assert!(
            cold.is_torn_json(&[0; 64]),
            "zeros where data was not written yet"
        );
        assert!(
            cold.is_torn_json(b"{\"n\":1}\0\0\0\0"),
            "a whole-looking prefix, then unwritten zeros"
        );
        // Whole but damaged: reported by the reader, never dropped.
        assert!(!cold.is_torn_json(b"{\"n\":1}}") && !cold.is_torn_json(b"garbage"));
    }
}

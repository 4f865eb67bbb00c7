//! A partition's cold-tier manifest: the committed Parquet files and the
//! offset the cold tier holds everything below.
//!
//! Each commit writes a new, immutable version
//! `<root>/<topic>/_manifest/<partition>/<version:020>.json` with
//! `PutMode::Create`, so two writers can never both commit version N: the
//! second gets `AlreadyExists` and must reload. A file is part of the cold
//! tier exactly when a committed manifest lists it; an uploaded file that no
//! manifest lists is an orphan, rewritten in place by the next offload of
//! the same offsets. Readers find the newest version with one LIST of the
//! manifest directory, and data files by offset or time without listing.

use std::sync::Arc;

use futures::{StreamExt, TryStreamExt};
use object_store::{ObjectStore, ObjectStoreExt, PutPayload};
use serde::{Deserialize, Serialize};

use crate::error::{Result, TieringError};
use crate::paths::ColdRoot;
use crate::store::ColdStore;
use crate::versioned::VersionedObjects;
use strata_broker::topic::TopicMeta;

/// Manifest versions kept behind the newest (older ones are deleted).
const KEEP_VERSIONS: u64 = 8;

/// One committed Parquet file.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ColdFile {
    /// Object path relative to the store root.
    pub path: String,
    pub first_offset: u64,
    pub last_offset: u64,
    pub min_timestamp: i64,
    pub max_timestamp: i64,
    pub records: u64,
    pub bytes: u64,
}

/// The state of one partition's cold tier.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Manifest {
    /// Format version of this document.
    pub format: u32,
    pub version: u64,
    pub topic: String,
    pub partition: u32,
    /// The first offset still in the cold tier (retention moves it up).
    pub start_offset: u64,
    /// One past the last offset committed to the cold tier ("offloaded through").
    pub end_offset: u64,
    /// Committed files, by offset, contiguous from `start_offset` to `end_offset`.
    pub files: Vec<ColdFile>,
}

impl Manifest {
    /// Parses a stored manifest (the object at `path`) and checks its
    /// invariants: any bytes give a manifest whose files are contiguous
    /// from `start_offset` to `end_offset`, or `CorruptManifest`.
    pub fn decode(bytes: &[u8], path: &str) -> Result<Self> {
        let manifest: Manifest =
            serde_json::from_slice(bytes).map_err(|e| TieringError::CorruptManifest {
                path: path.to_string(),
                message: e.to_string(),
            })?;
        manifest.check(path)?;
        Ok(manifest)
    }

    /// The manifest of a partition with nothing offloaded (version 0, never stored).
    pub fn empty(topic: &str, partition: u32) -> Self {
        Self {
            format: 1,
            version: 0,
            topic: topic.to_string(),
            partition,
            start_offset: 0,
            end_offset: 0,
            files: Vec::new(),
        }
    }

    /// Total bytes of the committed files.
    pub fn bytes(&self) -> u64 {
        self.files.iter().map(|f| f.bytes).sum()
    }

    /// The next version with `file` appended; `file` must start at `end_offset`.
    pub fn with_file(&self, file: ColdFile) -> Result<Self> {
        if file.first_offset != self.end_offset || file.last_offset < file.first_offset {
            return Err(TieringError::Gap(format!(
                "file {} holds offsets {}..={} but the cold tier of {}/{} ends at {}",
                file.path,
                file.first_offset,
                file.last_offset,
                self.topic,
                self.partition,
                self.end_offset
            )));
        }
        let mut next = self.clone();
        next.version += 1;
        if next.files.is_empty() {
            next.start_offset = file.first_offset;
        }
        next.end_offset = file.last_offset + 1;
        next.files.push(file);
        Ok(next)
    }

    /// The next version without the leading files whose newest record is
    /// older than `cutoff_ms`, and those files; `None` when none expired.
    pub fn without_expired(&self, cutoff_ms: i64) -> Option<(Self, Vec<ColdFile>)> {
        let expired = self
            .files
            .iter()
            .take_while(|f| f.max_timestamp < cutoff_ms)
            .count();
        if expired == 0 {
            return None;
        }
        let mut next = self.clone();
        next.version += 1;
        let removed: Vec<ColdFile> = next.files.drain(..expired).collect();
        next.start_offset = next
            .files
            .first()
            .map_or(next.end_offset, |f| f.first_offset);
        Some((next, removed))
    }

    /// The next version with the adjacent files `expected` replaced by
    /// `merged`, which must hold exactly their offsets and records
    /// (compaction); `None` when they are not all there, adjacent, any
    /// more (retention or another compaction got there first). They are
    /// found by content, not position: retention may have dropped files
    /// before them meanwhile.
    pub fn with_merged(&self, expected: &[ColdFile], merged: ColdFile) -> Result<Option<Self>> {
        let Some(start) = expected
            .first()
            .and_then(|first| self.files.iter().position(|f| f == first))
        else {
            return Ok(None);
        };
        let run = start..start + expected.len();
        let Some(current) = self.files.get(run.clone()) else {
            return Ok(None);
        };
        if current != expected {
            return Ok(None);
        }
        let (Some(first), Some(last)) = (current.first(), current.last()) else {
            return Ok(None);
        };
        let records: u64 = current.iter().map(|f| f.records).sum();
        if merged.first_offset != first.first_offset
            || merged.last_offset != last.last_offset
            || merged.records != records
        {
            return Err(TieringError::Internal(format!(
                "merged file {} holds {}..={} ({} records), not {}..={} ({records})",
                merged.path,
                merged.first_offset,
                merged.last_offset,
                merged.records,
                first.first_offset,
                last.last_offset
            )));
        }
        let mut next = self.clone();
        next.version += 1;
        next.files.splice(run, [merged]);
        Ok(Some(next))
    }

    /// Files holding offsets at or after `offset`, in order.
    pub fn files_from(&self, offset: u64) -> &[ColdFile] {
        let first = self.files.partition_point(|f| f.last_offset < offset);
        &self.files[first..]
    }

    fn check(&self, path: &str) -> Result<()> {
        let bad = |message: String| {
            Err(TieringError::CorruptManifest {
                path: path.to_string(),
                message,
            })
        };
        let mut expected = self.start_offset;
        for f in &self.files {
            if f.first_offset != expected || f.last_offset < f.first_offset {
                return bad(format!(
                    "file {} does not continue at offset {expected}",
                    f.path
                ));
            }
            let Some(next) = f.last_offset.checked_add(1) else {
                return bad(format!(
                    "file {} ends at the largest offset there is",
                    f.path
                ));
            };
            expected = next;
        }
        // With no files, `expected` is `start_offset`: both ends must meet.
        if expected != self.end_offset {
            return bad(format!(
                "files end at {expected}, end_offset says {}",
                self.end_offset
            ));
        }
        Ok(())
    }
}

/// The field of a stored topic description that names its owner.
const OWNER_FIELD: &str = "owner";

/// Reads and commits manifests of one store.
#[derive(Debug, Clone)]
pub struct ManifestStore {
    cold: ColdStore,
    store: Arc<dyn ObjectStore>,
    root: ColdRoot,
}

impl ManifestStore {
    /// The manifests of the cold tier `cold`.
    pub fn new(cold: &ColdStore) -> Self {
        Self {
            cold: cold.clone(),
            store: cold.store.clone(),
            root: cold.root.clone(),
        }
    }

    /// The versions of a partition's manifest.
    fn versions(&self, topic: &str, partition: u32) -> VersionedObjects {
        VersionedObjects::new(&self.cold, self.root.manifest_dir(topic, partition))
    }

    /// The newest committed manifest of a partition (empty when none).
    pub async fn load(&self, topic: &str, partition: u32) -> Result<Manifest> {
        let versions = self.versions(topic, partition);
        let Some((newest, bytes)) = versions.read_newest().await? else {
            return Ok(Manifest::empty(topic, partition));
        };
        let path = versions.path(newest);
        let manifest = Manifest::decode(&bytes, path.as_ref())?;
        if manifest.version != newest || manifest.topic != topic || manifest.partition != partition
        {
            return Err(TieringError::CorruptManifest {
                path: path.to_string(),
                message: "names another version, topic or partition".into(),
            });
        }
        Ok(manifest)
    }

    /// Commits `manifest` as its version, with the contract of
    /// [`VersionedObjects::create`]: atomic, exclusive per version
    /// ([`TieringError::Conflict`] when another writer committed it first),
    /// durable when it returns `Ok`.
    pub async fn commit(&self, manifest: &Manifest) -> Result<()> {
        let bytes = serde_json::to_vec_pretty(manifest)
            .map_err(|e| TieringError::Internal(e.to_string()))?;
        let versions = self.versions(&manifest.topic, manifest.partition);
        versions.create(manifest.version, bytes).await?;
        if manifest.version > KEEP_VERSIONS {
            versions.forget(manifest.version - KEEP_VERSIONS).await;
        }
        Ok(())
    }

    /// Stores the topic's description next to its data, with the node
    /// that owns (offloads) it; durable when this returns `Ok` (fsynced on
    /// `file://`).
    pub async fn put_topic_meta(&self, meta: &TopicMeta, owner: &str) -> Result<()> {
        let mut value =
            serde_json::to_value(meta).map_err(|e| TieringError::Internal(e.to_string()))?;
        if let Some(object) = value.as_object_mut() {
            object.insert(OWNER_FIELD.into(), owner.into());
        }
        let bytes =
            serde_json::to_vec_pretty(&value).map_err(|e| TieringError::Internal(e.to_string()))?;
        let path = self.root.topic_meta(&meta.name);
        self.store.put(&path, PutPayload::from(bytes)).await?;
        self.cold.make_durable(&path).await
    }

    /// The descriptions of every topic in the store, each with the node
    /// that stored it (`None` for descriptions from before the cluster).
    pub async fn topic_metas(&self) -> Result<Vec<(TopicMeta, Option<String>)>> {
        let listing = self
            .store
            .list_with_delimiter(Some(self.root.path()))
            .await?;
        let mut metas = Vec::new();
        for dir in listing.common_prefixes {
            let Some(name) = dir.filename() else { continue };
            let path = self.root.topic_meta(name);
            let bytes = match self.store.get(&path).await {
                Ok(found) => found.bytes().await?,
                Err(object_store::Error::NotFound { .. }) => continue,
                Err(e) => return Err(e.into()),
            };
            if self.cold.is_torn_json(&bytes) {
                // Rewritten by the first offload of the topic after start.
                tracing::warn!(%path, "skipping a topic description a power cut tore");
                continue;
            }
            let corrupt = |e: serde_json::Error| TieringError::CorruptManifest {
                path: path.to_string(),
                message: e.to_string(),
            };
            let mut value: serde_json::Value = serde_json::from_slice(&bytes).map_err(corrupt)?;
            let owner = value
                .as_object_mut()
                .and_then(|object| object.remove(OWNER_FIELD))
                .and_then(|owner| owner.as_str().map(str::to_string));
            let meta: TopicMeta = serde_json::from_value(value).map_err(corrupt)?;
            metas.push((meta, owner));
        }
        Ok(metas)
    }

    /// Deletes every manifest version and data file of a topic, its
    /// description first (so a half-done delete is not restored later).
    pub async fn delete_topic(&self, topic: &str) -> Result<()> {
        match self.store.delete(&self.root.topic_meta(topic)).await {
            Ok(()) | Err(object_store::Error::NotFound { .. }) => {}
            Err(e) => return Err(e.into()),
        }
        // Manifests first, then the Delta table's log: a deletion cut
        // short leaves unreferenced data files, never a manifest or a
        // table that lists deleted ones.
        let topic_dir = self.root.topic(topic);
        for prefix in [
            topic_dir.clone().join("_manifest"),
            topic_dir.clone().join("_delta_log"),
            topic_dir,
        ] {
            let locations = self
                .store
                .list(Some(&prefix))
                .map_ok(|meta| meta.location)
                .boxed();
            self.store
                .delete_stream(locations)
                .try_for_each(|_| futures::future::ready(Ok(())))
                .await?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use proptest::prelude::*;

    use super::*;

    proptest! {
        /// Any bytes: a manifest that keeps its invariants, or an error.
        #[test]
        fn arbitrary_bytes_decode_to_a_checked_manifest_or_an_error(
            bytes in proptest::collection::vec(any::<u8>(), 0..512)
        ) {
            if let Ok(m) = Manifest::decode(&bytes, "m") {
                prop_assert!(m.files.is_empty() || m.files[0].first_offset == m.start_offset);
            }
        }

        /// Well-formed JSON with arbitrary numbers: decoded only when the
        /// files are contiguous and end at `end_offset`.
        #[test]
        fn arbitrary_manifests_decode_only_when_contiguous(
            start in 0u64..100,
            end in 0u64..200,
            files in proptest::collection::vec((0u64..150, 0u64..150), 0..5),
        ) {
            let files: Vec<ColdFile> = files.iter().map(|&(a, b)| file(a, b.max(a))).collect();
            let m = Manifest {
                format: 1,
                version: 1,
                topic: "t".into(),
                partition: 0,
                start_offset: start,
                end_offset: end,
                files,
            };
            let bytes = serde_json::to_vec(&m).unwrap();
            let mut contiguous = m.start_offset;
            let mut gap = false;
            for f in &m.files {
                gap |= f.first_offset != contiguous;
                contiguous = f.last_offset + 1;
            }
            let valid = !gap && contiguous == m.end_offset;
            prop_assert_eq!(Manifest::decode(&bytes, "m").is_ok(), valid);
            if let Ok(decoded) = Manifest::decode(&bytes, "m") {
                let mut at = decoded.start_offset;
                for f in &decoded.files {
                    prop_assert_eq!(f.first_offset, at);
                    at = f.last_offset + 1;
                }
                prop_assert!(decoded.files.is_empty() || at == decoded.end_offset);
            }
        }
    }

    fn file(first: u64, last: u64) -> ColdFile {
        ColdFile {
            path: format!("t/0/{first}-{last}.parquet"),
            first_offset: first,
            last_offset: last,
            min_timestamp: 0,
            max_timestamp: 0,
            records: last - first + 1,
            bytes: 10,
        }
    }

    #[test]
    fn files_must_continue_the_tier() {
        let m = Manifest::empty("t", 0).with_file(file(0, 9)).unwrap();
        assert_eq!((m.version, m.start_offset, m.end_offset), (1, 0, 10));
        let m = m.with_file(file(10, 19)).unwrap();
        assert_eq!((m.version, m.end_offset), (2, 20));
        assert!(m.with_file(file(21, 30)).is_err());
        assert!(m.with_file(file(5, 30)).is_err());
        assert_eq!(m.files_from(0).len(), 2);
        assert_eq!(m.files_from(10).len(), 1);
        assert_eq!(m.files_from(20).len(), 0);
        m.check("x").unwrap();
        let (kept, removed) = m.without_expired(1).unwrap();
        assert_eq!(
            (
                kept.version,
                kept.start_offset,
                kept.end_offset,
                kept.files.len()
            ),
            (3, 20, 20, 0)
        );
        assert_eq!(removed.len(), 2);
        kept.check("x").unwrap();
        assert!(m.without_expired(0).is_none());
    }

    /// Regression (review): a merge is found by its files, not their
    /// position, so retention dropping a file before the run meanwhile
    /// does not throw the merge away.
    #[test]
    fn merges_replace_their_run_wherever_it_now_is() {
        let mut m = Manifest::empty("t", 0);
        for first in (0..40).step_by(10) {
            m = m.with_file(file(first, first + 9)).unwrap();
        }
        let run = m.files[1..3].to_vec();
        let mut dropped = m.clone();
        dropped.files.remove(0);
        dropped.start_offset = 10;
        let merged = file(10, 29);
        let next = dropped.with_merged(&run, merged.clone()).unwrap().unwrap();
        assert_eq!(next.files, vec![merged.clone(), file(30, 39)]);
        next.check("x").unwrap();
        // Gone or changed: no merge.
        assert!(next.with_merged(&run, merged.clone()).unwrap().is_none());
        // A merged file that does not hold exactly the run's records.
        assert!(dropped.with_merged(&run, file(10, 28)).is_err());
    }

    #[tokio::test]
    async fn commit_is_exclusive_per_version() {
        let manifests = ManifestStore::new(&ColdStore::open("memory://root").unwrap());
        assert_eq!(
            manifests.load("t", 0).await.unwrap(),
            Manifest::empty("t", 0)
        );
        let m1 = Manifest::empty("t", 0).with_file(file(0, 9)).unwrap();
        manifests.commit(&m1).await.unwrap();
        assert!(matches!(
            manifests.commit(&m1).await,
            Err(TieringError::Conflict { .. })
        ));
        let m2 = m1.with_file(file(10, 19)).unwrap();
        manifests.commit(&m2).await.unwrap();
        assert_eq!(manifests.load("t", 0).await.unwrap(), m2);
        manifests.delete_topic("t").await.unwrap();
        assert_eq!(
            manifests.load("t", 0).await.unwrap(),
            Manifest::empty("t", 0)
        );
    }
}

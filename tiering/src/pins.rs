//! Read pins: every object a committed manifest listed when a read began
//! stays in the object store until that read ends, whatever retention
//! drops meanwhile (dropped objects are deleted once their grace period has
//! passed and no read that may still use them is running).

use std::sync::Arc;

use parking_lot::Mutex;

use crate::error::Result;
use crate::facade::Tiering;
use crate::manifest::Manifest;

/// Start times of running cold reads, so that objects a read may use are
/// not deleted under it.
#[derive(Debug, Default)]
pub(crate) struct Readers {
    pub(crate) running: Mutex<std::collections::BTreeMap<u64, i64>>,
    pub(crate) next_id: std::sync::atomic::AtomicU64,
}

impl Readers {
    pub(crate) fn oldest_start(&self) -> Option<i64> {
        self.running.lock().values().min().copied()
    }
}

/// Keeps every object that a manifest listed at the pin's creation from
/// being deleted until the pin is dropped.
#[derive(Debug)]
pub struct ReadPin {
    pub(crate) readers: Arc<Readers>,
    pub(crate) id: u64,
}

impl Drop for ReadPin {
    fn drop(&mut self) {
        self.readers.running.lock().remove(&self.id);
    }
}

/// A partition's cold tier as committed when a read began. Every file it
/// lists stays readable while the snapshot lives, whatever retention does.
#[derive(Debug)]
pub struct PinnedManifest {
    pub manifest: Arc<Manifest>,
    pub(crate) _pin: ReadPin,
}

impl Tiering {
    /// The partition's cold tier as last committed, pinned for a read (see
    /// [`PinnedManifest`]).
    pub async fn pin_manifest(&self, topic: &str, partition: u32) -> Result<PinnedManifest> {
        // Pin before reading the manifest: an object dropped after this
        // moment may be listed by the manifest read next.
        let id = self
            .readers
            .next_id
            .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        self.readers
            .running
            .lock()
            .insert(id, strata_broker::timestamp::now_ms());
        let pin = ReadPin {
            readers: self.readers.clone(),
            id,
        };
        Ok(PinnedManifest {
            manifest: self.manifest(topic, partition).await?,
            _pin: pin,
        })
    }

    /// Whether the manifest of the partition `path` belongs to (as cached)
    /// lists it.
    pub(crate) fn lists(&self, path: &object_store::path::Path) -> bool {
        let mut parts = path.as_ref().rsplit('/');
        let (Some(_file), Some(partition), Some(topic)) =
            (parts.next(), parts.next(), parts.next())
        else {
            return false;
        };
        let Ok(partition) = partition.parse::<u32>() else {
            return false;
        };
        self.committed
            .lock()
            .get(&(topic.to_string(), partition))
            .is_some_and(|m| m.files.iter().any(|f| f.path == path.as_ref()))
    }

    /// Deletes dropped objects whose grace period has passed and that no
    /// running read can still use (every read began after the drop).
    pub(crate) async fn delete_due_objects(&self) {
        let now = strata_broker::timestamp::now_ms();
        let grace = i64::try_from(self.config.object_delete_grace.as_millis()).unwrap_or(i64::MAX);
        let oldest_read = self.readers.oldest_start().unwrap_or(i64::MAX);
        let due: Vec<object_store::path::Path> = {
            let mut pending = self.pending_deletes.lock();
            let (due, later): (Vec<_>, Vec<_>) = pending.drain(..).partition(|(dropped, _)| {
                dropped.saturating_add(grace) <= now && *dropped < oldest_read
            });
            *pending = later;
            due.into_iter().map(|(_, path)| path).collect()
        };
        for path in due {
            if self.lists(&path) {
                // Committed again since it was dropped (the same offsets
                // offloaded or merged once more): live.
                continue;
            }
            if let Err(e) =
                object_store::ObjectStoreExt::delete(self.cold.store.as_ref(), &path).await
            {
                tracing::warn!(%path, error = %e, "could not delete an expired cold file; it is no longer referenced");
            }
        }
    }
}

//! Deleting a topic's cold data: its manifests and files, with offloads of
//! the topic held off meanwhile, so that nothing recreates what is deleted.

use std::sync::Arc;

use strata_broker::Topic;

use crate::error::Result;
use crate::facade::Tiering;

impl Tiering {
    /// Removes every cold file and manifest of a topic about to be deleted.
    ///
    /// # Contract
    ///
    /// When this returns `Ok`, no manifest of the topic remains, and no
    /// offload that was running or starts while the topic still exists
    /// commits again. If it fails or is dropped, the topic is offloaded as
    /// before and the call can be retried.
    pub async fn delete_topic(&self, topic: &str) -> Result<()> {
        let mut mark = DeletionMark::new(self, topic);
        // Let offloads already running finish (their commits would
        // otherwise recreate objects after the deletion), and hold
        // every partition's offload lock while deleting.
        // In partition order, as every holder of several takes them
        // (`Tiering::lock_partitions`).
        let mut locks: Vec<_> = self
            .offloading
            .lock()
            .iter()
            .filter(|((t, _), _)| t == topic)
            .map(|((_, p), lock)| (*p, lock.clone()))
            .collect();
        locks.sort_by_key(|(p, _)| *p);
        let mut held = Vec::with_capacity(locks.len());
        for (_, lock) in &locks {
            held.push(lock.lock().await);
        }
        // And no Delta commit of the topic runs or starts (one would
        // re-create the log this deletes).
        let _table = self.hold_table(topic).await;
        let prefix = format!("{}/", self.cold.root.topic(topic));
        // Its objects go with the topic; a queued deletion could
        // otherwise hit a re-created topic's file of the same name.
        self.pending_deletes
            .lock()
            .retain(|(_, path)| !path.as_ref().starts_with(&prefix));
        self.forget_topic(topic, &prefix);
        self.manifests.delete_topic(topic).await?;
        // Reads that ran during the deletion may have cached what it removed.
        self.forget_topic(topic, &prefix);
        mark.done = true;
        Ok(())
    }
}

/// Marks a topic as being deleted, so it is not offloaded again nor its
/// manifests cached; a deletion that fails or is abandoned (its request
/// dropped) unmarks it, so the topic, still there, is offloaded as before.
struct DeletionMark<'a> {
    tiering: &'a Tiering,
    topic: Option<std::sync::Weak<Topic>>,
    done: bool,
}

impl<'a> DeletionMark<'a> {
    fn new(tiering: &'a Tiering, name: &str) -> Self {
        let topic = tiering.broker.topic(name).ok().map(|t| Arc::downgrade(&t));
        if let Some(topic) = &topic {
            tiering.deleting.lock().push(topic.clone());
        }
        Self {
            tiering,
            topic,
            done: false,
        }
    }
}

impl Drop for DeletionMark<'_> {
    fn drop(&mut self) {
        if let (false, Some(topic)) = (self.done, &self.topic) {
            self.tiering
                .deleting
                .lock()
                .retain(|t| !std::sync::Weak::ptr_eq(t, topic));
        }
    }
}

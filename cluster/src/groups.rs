//! Consumer-group offsets, cluster-wide: each group is a directory of
//! create-only versions under `<root>/_cluster/groups/<group>/`, each
//! holding every committed position of the group. Any node commits and
//! reads them, and they outlive the loss of any node (API.md "Cluster").
//!
//! A commit merges into the newest version and creates the next one; a
//! writer that loses the race rereads and merges again, so commits through
//! different nodes are applied one after the other, none lost. Each node
//! remembers the version it wrote last, so a commit with no other writer
//! is one create (no listing).

use std::collections::HashMap;
use std::sync::Mutex;

use serde::{Deserialize, Serialize};
use strata_broker::groups::{CommittedOffset, GroupOffsets as Offsets, GroupStore, to_list};

use crate::control::ControlStore;
use crate::error::Result;

/// Versions of a group kept behind its newest (older ones are deleted).
const KEEP_VERSIONS: u64 = 4;

/// One version of a group: every position it has committed.
#[derive(Debug, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct GroupRecord {
    offsets: Vec<CommittedOffset>,
}

/// The cluster's consumer groups, as this node reads and commits them.
#[derive(Debug)]
pub struct Groups {
    control: ControlStore,
    /// The newest version this node has read or written, per group: the
    /// first guess of the next commit.
    known: Mutex<HashMap<String, (u64, Offsets)>>,
}

impl Groups {
    /// The groups kept by `control`'s store.
    pub fn new(control: ControlStore) -> Self {
        Self {
            control,
            known: Mutex::default(),
        }
    }

    /// Merges `offsets` into group `group`'s positions (a later commit of
    /// a partition replaces the earlier one).
    ///
    /// # Contract
    ///
    /// Atomic and durable when it returns `Ok`, and then seen by every
    /// node: a commit through another node at the same time is merged, not
    /// lost (on stores with conditional writes; see docs/cluster.md). An
    /// error may come after the commit took effect: committing the same
    /// positions again is harmless. `group` must already be a valid name
    /// (it is a path segment).
    pub async fn commit(&self, group: &str, offsets: &[CommittedOffset]) -> Result<()> {
        self.update(group, |merged| {
            for c in offsets {
                merged.insert((c.topic.clone(), c.partition), c.offset);
            }
            true
        })
        .await
    }

    /// Creates the next version of `group` from the newest with `change`
    /// applied; `change` returns `false` for nothing to write.
    async fn update(&self, group: &str, change: impl Fn(&mut Offsets) -> bool) -> Result<()> {
        let versions = self.control.group_versions(group);
        let mut guess = self.remembered(group);
        loop {
            let (version, mut merged) = match guess.take() {
                Some(known) => known,
                None => self.read(group).await?.unwrap_or_default(),
            };
            if !change(&mut merged) {
                return Ok(());
            }
            let record = GroupRecord {
                offsets: to_list(&merged),
            };
            let next = version + 1;
            match crate::control::create(&versions, next, &record).await {
                Ok(()) => {}
                // Another node committed since: reread and merge again.
                Err(e) if e.is_conflict() => continue,
                Err(e) => return Err(e),
            }
            // A guess far behind can create a version that was deleted as
            // old, below the newest, where no reader looks: only a version
            // that is the newest after its create counts (a newer one made
            // since holds it, or not; merging again is right either way).
            if versions.newest().await? != next {
                versions.forget(next).await;
                continue;
            }
            if next > KEEP_VERSIONS {
                versions.forget(next - KEEP_VERSIONS).await;
            }
            self.remember(group, next, merged);
            return Ok(());
        }
    }

    /// The group's committed positions, `None` for a group that never
    /// committed. Always the newest version in the store (another node's
    /// commit that returned is seen).
    pub async fn offsets(&self, group: &str) -> Result<Option<Vec<CommittedOffset>>> {
        Ok(self
            .read(group)
            .await?
            .map(|(_, offsets)| to_list(&offsets)))
    }

    /// Merges the groups of a data directory written before groups were
    /// cluster-wide into the store: each (topic, partition) position the
    /// store's group lacks is added (one committed in the cluster since is
    /// newer, and stays). Returns how many groups changed.
    pub async fn adopt(&self, local: &GroupStore) -> Result<usize> {
        let mut adopted = 0;
        for group in local.names() {
            let Some(offsets) = local.offsets(&group) else {
                continue;
            };
            let added = std::sync::atomic::AtomicBool::new(false);
            self.update(&group, |merged| {
                let before = merged.len();
                for c in &offsets {
                    merged
                        .entry((c.topic.clone(), c.partition))
                        .or_insert(c.offset);
                }
                let grew = merged.len() > before;
                added.store(grew, std::sync::atomic::Ordering::Relaxed);
                grew
            })
            .await?;
            if added.load(std::sync::atomic::Ordering::Relaxed) {
                adopted += 1;
            }
        }
        Ok(adopted)
    }

    async fn read(&self, group: &str) -> Result<Option<(u64, Offsets)>> {
        let versions = self.control.group_versions(group);
        let Some((version, record)) = crate::control::newest::<GroupRecord>(&versions).await?
        else {
            return Ok(None);
        };
        let offsets: Offsets = record
            .offsets
            .into_iter()
            .map(|c| ((c.topic, c.partition), c.offset))
            .collect();
        self.remember(group, version, offsets.clone());
        Ok(Some((version, offsets)))
    }

    fn remembered(&self, group: &str) -> Option<(u64, Offsets)> {
        self.known
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
            .get(group)
            .cloned()
    }

    fn remember(&self, group: &str, version: u64, offsets: Offsets) {
        let mut known = self
            .known
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        let newer = known.get(group).is_none_or(|(v, _)| *v < version);
        if newer {
            known.insert(group.to_string(), (version, offsets));
        }
    }
}

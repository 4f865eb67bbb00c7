//! Consumer-group offsets of one data directory, one durable JSON file per
//! group. A server keeps its groups cluster-wide in the object store
//! (`strata_cluster::groups`) and reads these only to adopt the groups of
//! a data directory from before that.

use std::collections::BTreeMap;
use std::fs;
use std::path::{Path, PathBuf};

use parking_lot::Mutex;
use serde::{Deserialize, Serialize};

use crate::durable::{TMP_SUFFIX, write_atomic};
use crate::error::{BrokerError, IoContext, Result};

/// One committed position of a group.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CommittedOffset {
    pub topic: String,
    pub partition: u32,
    pub offset: u64,
}

#[derive(Debug, Default, Serialize, Deserialize)]
struct GroupFile {
    offsets: Vec<CommittedOffset>,
}

/// A group's positions by (topic, partition).
pub type GroupOffsets = BTreeMap<(String, u32), u64>;

/// All groups' committed offsets; every commit is fsynced before it returns.
#[derive(Debug)]
pub struct GroupStore {
    dir: PathBuf,
    groups: Mutex<BTreeMap<String, GroupOffsets>>,
}

impl GroupStore {
    /// Loads every group stored under `dir`.
    pub fn open(dir: &Path) -> Result<Self> {
        fs::create_dir_all(dir).context(|| format!("creating {}", dir.display()))?;
        let mut groups = BTreeMap::new();
        for entry in fs::read_dir(dir).context(|| format!("listing {}", dir.display()))? {
            let path = entry
                .context(|| format!("listing {}", dir.display()))?
                .path();
            let name = path
                .file_name()
                .map(|n| n.to_string_lossy().into_owned())
                .unwrap_or_default();
            if name.ends_with(TMP_SUFFIX) {
                let _ = fs::remove_file(&path);
                continue;
            }
            let Some(group) = name.strip_suffix(".json") else {
                continue;
            };
            let bytes = fs::read(&path).context(|| format!("reading {}", path.display()))?;
            let file: GroupFile =
                serde_json::from_slice(&bytes).map_err(|e| BrokerError::Corrupt {
                    path: path.display().to_string(),
                    message: e.to_string(),
                })?;
            let offsets = file
                .offsets
                .into_iter()
                .map(|c| ((c.topic, c.partition), c.offset))
                .collect();
            groups.insert(group.to_string(), offsets);
        }
        Ok(Self {
            dir: dir.to_path_buf(),
            groups: Mutex::new(groups),
        })
    }

    /// Merges `offsets` into the group's and stores them durably: when this
    /// returns `Ok`, the commit survives a crash.
    pub fn commit(&self, group: &str, offsets: &[CommittedOffset]) -> Result<()> {
        let mut groups = self.groups.lock();
        let mut merged = groups.get(group).cloned().unwrap_or_default();
        for c in offsets {
            merged.insert((c.topic.clone(), c.partition), c.offset);
        }
        let file = GroupFile {
            offsets: to_list(&merged),
        };
        let bytes =
            serde_json::to_vec_pretty(&file).map_err(|e| BrokerError::Internal(e.to_string()))?;
        write_atomic(&self.dir.join(format!("{group}.json")), &bytes)?;
        groups.insert(group.to_string(), merged);
        Ok(())
    }

    /// The names of every group stored here.
    pub fn names(&self) -> Vec<String> {
        self.groups.lock().keys().cloned().collect()
    }

    /// The group's committed offsets, or `None` for a group that never committed.
    pub fn offsets(&self, group: &str) -> Option<Vec<CommittedOffset>> {
        self.groups.lock().get(group).map(to_list)
    }
}

/// A group's positions as stored and answered: sorted by topic, then
/// partition.
pub fn to_list(offsets: &GroupOffsets) -> Vec<CommittedOffset> {
    offsets
        .iter()
        .map(|((topic, partition), &offset)| CommittedOffset {
            topic: topic.clone(),
            partition: *partition,
            offset,
        })
        .collect()
}

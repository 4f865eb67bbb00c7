//! The broker: the set of topics under one data directory, their creation,
//! deletion and recovery, and the consumer-group store.
//!
//! Layout under `data_dir`:
//! ```text
//! .lock                       held while a server owns the directory
//! topics/<topic>/topic.json   name, partition count, effective config
//! topics/<topic>/<p>/         {base_offset:020}.log / .index / .timeindex
//! groups/<group>.json         committed consumer offsets
//! staging/, trash/            topics being created or deleted
//! ```

use std::collections::BTreeMap;
use std::fs::{self, File};
use std::path::{Path, PathBuf};
use std::sync::Arc;

use parking_lot::{Mutex, RwLock};

use crate::config::{
    BrokerConfig, MAX_PARTITIONS, TopicConfigOverrides, validate_name, validate_new_topic_name,
};
use crate::durable::{sync_dir, write_atomic};
use crate::error::{BrokerError, IoContext, Result};
use crate::groups::GroupStore;
use crate::topic::{Topic, TopicMeta};

/// The broker of one data directory.
#[derive(Debug)]
pub struct Broker {
    config: BrokerConfig,
    topics: RwLock<BTreeMap<String, Arc<Topic>>>,
    admin: Mutex<()>,
    groups: GroupStore,
    disk: crate::disk::DiskWatch,
    _lock: File,
}

impl Broker {
    /// Opens the data directory (creating it when missing), takes its lock,
    /// and recovers every topic.
    pub fn open(config: BrokerConfig) -> Result<Self> {
        config.validate()?;
        // Counters are registered when topics open: the recorder must exist first.
        crate::metrics::prometheus_handle();
        let root = config.data_dir.clone();
        for dir in ["topics", "groups", "staging", "trash"] {
            fs::create_dir_all(root.join(dir))
                .context(|| format!("creating {}", root.join(dir).display()))?;
        }
        let lock = take_lock(&root)?;
        for dir in ["staging", "trash"] {
            // Half-created topics were never visible; half-deleted ones were already gone.
            remove_children(&root.join(dir))?;
        }
        let mut topics = BTreeMap::new();
        for entry in fs::read_dir(root.join("topics")).context(|| "listing topics".to_string())? {
            let dir = entry.context(|| "listing topics".to_string())?.path();
            let meta = read_meta(&dir)?;
            let topic = Topic::open(&dir, meta, config.index_interval_bytes)?;
            topics.insert(topic.name().to_string(), Arc::new(topic));
        }
        tracing::info!(data_dir = %root.display(), topics = topics.len(), "recovered data directory");
        let broker = Self {
            groups: GroupStore::open(&root.join("groups"))?,
            config,
            topics: RwLock::new(topics),
            admin: Mutex::new(()),
            disk: crate::disk::DiskWatch::default(),
            _lock: lock,
        };
        broker.watch_disk();
        Ok(broker)
    }

    /// The configuration the broker runs with.
    pub fn config(&self) -> &BrokerConfig {
        &self.config
    }

    /// The consumer-group store.
    pub fn groups(&self) -> &GroupStore {
        &self.groups
    }

    /// Creates a topic. It appears whole or not at all, also across a crash:
    /// it is built under `staging/` and renamed into `topics/`.
    pub fn create_topic(
        &self,
        name: &str,
        partitions: Option<u32>,
        overrides: &TopicConfigOverrides,
    ) -> Result<Arc<Topic>> {
        validate_new_topic_name(name)?;
        let partitions = partitions.unwrap_or(self.config.default_partitions);
        if !(1..=MAX_PARTITIONS).contains(&partitions) {
            return Err(BrokerError::InvalidRequest(format!(
                "partitions must be between 1 and {MAX_PARTITIONS}, got {partitions}"
            )));
        }
        let config = overrides.apply(&self.config.topic_defaults)?;
        let meta = TopicMeta {
            name: name.to_string(),
            partitions,
            config,
        };
        self.install_topic(meta, &[], true)
    }

    /// Re-creates a topic known only to the cold tier (the local disk was
    /// lost or replaced): partition `p` starts empty at `start_offsets[p]`,
    /// the offset after everything the cold tier holds, so offsets continue.
    pub fn restore_topic(&self, meta: TopicMeta, start_offsets: &[u64]) -> Result<Arc<Topic>> {
        validate_name(&meta.name)?;
        meta.config.validate()?;
        if start_offsets.len() != meta.partitions as usize {
            return Err(BrokerError::InvalidRequest(format!(
                "{} start offsets for {} partitions",
                start_offsets.len(),
                meta.partitions
            )));
        }
        self.install_topic(meta, start_offsets, false)
    }

    /// Builds a topic under `staging/` (with empty first segments at
    /// `start_offsets`, when given) and renames it into `topics/`, so it
    /// appears whole or not at all, also across a crash.
    ///
    /// With `check_open_files`, a topic that would not fit the open-file
    /// budget is refused (under the admin lock, so two creations cannot
    /// both take the same headroom).
    fn install_topic(
        &self,
        meta: TopicMeta,
        start_offsets: &[u64],
        check_open_files: bool,
    ) -> Result<Arc<Topic>> {
        let name = meta.name.clone();
        let partitions = meta.partitions;
        let _admin = self.admin.lock();
        if check_open_files
            && let Some((headroom, limit)) = crate::open_files::partition_headroom()
            && u64::from(partitions) > headroom
        {
            return Err(BrokerError::InvalidRequest(format!(
                "a topic of {partitions} partitions needs about {} open files; this server \
                 can open enough for {headroom} more partitions (its open-file limit is \
                 {limit}): ask for at most {headroom}, or raise the limit (ulimit -n, \
                 LimitNOFILE)",
                u64::from(partitions) * crate::open_files::FILES_PER_PARTITION
            )));
        }
        if self.topics.read().contains_key(&name) {
            return Err(BrokerError::TopicExists(name));
        }
        let staged = self.config.data_dir.join("staging").join(&name);
        let _ = fs::remove_dir_all(&staged);
        fs::create_dir_all(&staged).context(|| format!("creating {}", staged.display()))?;
        if start_offsets.is_empty() && !meta.config.is_replicated() {
            // A new topic that only its leader appends to: every partition
            // starts with the mark that its keys are where the default
            // partitioner puts them (see Partition::keys_by_default_partitioner).
            for p in 0..partitions {
                let dir = staged.join(p.to_string());
                fs::create_dir_all(&dir).context(|| format!("creating {}", dir.display()))?;
                let mark = dir.join(crate::partition::KEYS_BY_DEFAULT_FILE);
                write_atomic(&mark, partitions.to_string().as_bytes())?;
                sync_dir(&dir)?;
            }
        }
        for (p, &start) in start_offsets.iter().enumerate() {
            let dir = staged.join(p.to_string());
            fs::create_dir_all(&dir).context(|| format!("creating {}", dir.display()))?;
            let first = dir.join(crate::segment::log_file_name(start));
            fs::File::create(&first).context(|| format!("creating {}", first.display()))?;
            sync_dir(&dir)?;
        }
        let bytes =
            serde_json::to_vec_pretty(&meta).map_err(|e| BrokerError::Internal(e.to_string()))?;
        write_atomic(&staged.join("topic.json"), &bytes)?;
        let final_dir = self.topics_dir().join(&name);
        fs::rename(&staged, &final_dir).context(|| format!("moving topic {name} into place"))?;
        sync_dir(&self.topics_dir())?;
        let partitions = meta.partitions;
        let topic = match Topic::open(&final_dir, meta, self.config.index_interval_bytes) {
            Ok(topic) => Arc::new(topic),
            Err(e) => {
                // Never visible and empty: take it away again, so the name
                // can be created later and the next start does not trip on it.
                let _ = fs::remove_dir_all(&final_dir);
                let _ = sync_dir(&self.topics_dir());
                return Err(e);
            }
        };
        sync_dir(&final_dir)?;
        self.topics.write().insert(name.clone(), topic.clone());
        tracing::info!(topic = name, partitions, "created topic");
        Ok(topic)
    }

    /// Deletes a topic and its local data. Readers holding it finish their reads.
    pub fn delete_topic(&self, name: &str) -> Result<()> {
        validate_name(name)?;
        let _admin = self.admin.lock();
        let topic = self
            .topics
            .write()
            .remove(name)
            .ok_or_else(|| BrokerError::TopicNotFound(name.to_string()))?;
        for p in topic.partitions() {
            let _ = p.close();
        }
        let trash = self
            .config
            .data_dir
            .join("trash")
            .join(crate::durable::fitting_file_name(
                name,
                &format!(".{}", crate::timestamp::now_ms()),
            ));
        fs::rename(topic.dir(), &trash).context(|| format!("moving topic {name} to the trash"))?;
        sync_dir(&self.topics_dir())?;
        fs::remove_dir_all(&trash).context(|| format!("removing {}", trash.display()))?;
        tracing::info!(topic = name, "deleted topic");
        Ok(())
    }

    /// A topic by name: `InvalidTopicName` or `TopicNotFound` otherwise.
    pub fn topic(&self, name: &str) -> Result<Arc<Topic>> {
        validate_name(name)?;
        self.topics
            .read()
            .get(name)
            .cloned()
            .ok_or_else(|| BrokerError::TopicNotFound(name.to_string()))
    }

    /// Every topic, by name.
    pub fn topics(&self) -> Vec<Arc<Topic>> {
        self.topics.read().values().cloned().collect()
    }

    /// Bytes of all segments on local disk.
    pub fn local_bytes(&self) -> u64 {
        self.topics()
            .iter()
            .flat_map(|t| t.partitions().iter().map(|p| p.local_bytes()))
            .sum()
    }

    /// Measures the data directory's free space (see [`crate::disk`]) and
    /// lets partitions that a full disk stopped take writes again.
    pub fn watch_disk(&self) {
        if let Err(error) = self.disk.refresh(&self.config.data_dir) {
            tracing::warn!(%error, "cannot measure the data directory's free space");
        }
        for topic in self.topics() {
            for p in topic.partitions() {
                p.recover();
            }
        }
    }

    /// The data directory's space as last measured by [`Broker::watch_disk`].
    pub fn disk_space(&self) -> Option<crate::disk::DiskSpace> {
        self.disk.last()
    }

    /// `Unavailable` (503 with `Retry-After`) once the local disk budget
    /// `max_local_bytes` is used up, or the data disk's free space is below
    /// its reserve: produce must wait for offload and local retention to
    /// free space rather than fill the disk.
    pub fn check_local_budget(&self) -> Result<()> {
        if let Some(space) = self.disk.last().filter(|s| s.is_low()) {
            return Err(BrokerError::Unavailable {
                message: format!(
                    "the data disk is nearly full ({} bytes free, {} kept in reserve); \
                     retry once offloaded segments leave the local disk",
                    space.free_bytes,
                    space.reserve_bytes()
                ),
                retry_after_secs: 5,
            });
        }
        let budget = self.config.max_local_bytes;
        if budget < 0 {
            return Ok(());
        }
        let used = self.local_bytes();
        if used >= budget as u64 {
            return Err(BrokerError::Unavailable {
                message: format!(
                    "the local disk budget is used up ({used} of max_local_bytes {budget}); \
                     retry once segments are offloaded to the cold tier"
                ),
                retry_after_secs: 5,
            });
        }
        Ok(())
    }

    /// Seals active segments older than their topic's `segment_ms`.
    pub fn roll_due_segments(&self, now_ms: i64) {
        for topic in self.topics() {
            for p in topic.partitions() {
                if let Err(e) = p.roll_if_due(now_ms) {
                    tracing::error!(topic = topic.name(), partition = p.id(), error = %e, "time-based roll failed");
                }
            }
        }
    }

    /// Fsyncs every partition and refuses further appends (graceful shutdown).
    pub fn close(&self) -> Result<()> {
        let mut first_error = None;
        for topic in self.topics() {
            for p in topic.partitions() {
                if let Err(e) = p.close() {
                    tracing::error!(topic = topic.name(), partition = p.id(), error = %e, "close failed");
                    first_error.get_or_insert(e);
                }
            }
        }
        first_error.map_or(Ok(()), Err)
    }

    fn topics_dir(&self) -> PathBuf {
        self.config.data_dir.join("topics")
    }
}

fn take_lock(root: &Path) -> Result<File> {
    let path = root.join(".lock");
    let file = File::create(&path).context(|| format!("creating {}", path.display()))?;
    match file.try_lock() {
        Ok(()) => Ok(file),
        Err(fs::TryLockError::WouldBlock) => Err(BrokerError::Unavailable {
            message: format!("{} is in use by another strata server", root.display()),
            retry_after_secs: 1,
        }),
        Err(fs::TryLockError::Error(source)) => Err(BrokerError::Io {
            context: format!("locking {}", path.display()),
            source,
        }),
    }
}

fn remove_children(dir: &Path) -> Result<()> {
    for entry in fs::read_dir(dir).context(|| format!("listing {}", dir.display()))? {
        let path = entry
            .context(|| format!("listing {}", dir.display()))?
            .path();
        fs::remove_dir_all(&path).context(|| format!("removing {}", path.display()))?;
    }
    Ok(())
}

fn read_meta(dir: &Path) -> Result<TopicMeta> {
    let path = dir.join("topic.json");
    let bytes = fs::read(&path).context(|| format!("reading {}", path.display()))?;
    let meta: TopicMeta = serde_json::from_slice(&bytes).map_err(|e| BrokerError::Corrupt {
        path: path.display().to_string(),
        message: e.to_string(),
    })?;
    validate_name(&meta.name)?;
    if dir.file_name().is_none_or(|n| n != meta.name.as_str()) {
        return Err(BrokerError::Corrupt {
            path: path.display().to_string(),
            message: format!("names topic {:?} but lives in another directory", meta.name),
        });
    }
    Ok(meta)
}

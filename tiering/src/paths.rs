//! Every object path the cold tier uses, as typed values built in one place.
//!
//! ```text
//! <root>/<topic>/<partition>/<first_offset:020>-<last_offset:020>.parquet
//! <root>/<topic>/_manifest/<partition>/<version:020>.json
//! ```
//! Data file names depend only on the offsets they hold, so a retried
//! offload rewrites the same object, and a glob over
//! `<root>/<topic>/*/*.parquet` sees each offloaded record once. Topic names
//! are validated by the broker (`[A-Za-z0-9._-]`), so they are safe path
//! segments.

use object_store::path::Path;

/// The prefix under which all cold data lives.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ColdRoot(Path);

impl ColdRoot {
    /// A root at `prefix` inside the store (empty for the store's root).
    pub fn new(prefix: &str) -> Self {
        Self(Path::from(prefix.trim_matches('/')))
    }

    /// The root itself.
    pub fn path(&self) -> &Path {
        &self.0
    }

    /// Everything of one topic.
    pub fn topic(&self, topic: &str) -> Path {
        self.0.clone().join(topic)
    }

    /// The topic's description (partitions, config), so a server that lost
    /// its local disk can re-create the topic from the store alone.
    pub fn topic_meta(&self, topic: &str) -> Path {
        self.topic(topic).join("_topic.json")
    }

    /// The data file holding offsets `first..=last` of a partition.
    pub fn data_file(&self, topic: &str, partition: u32, first: u64, last: u64) -> DataFilePath {
        DataFilePath(
            self.topic(topic)
                .join(partition.to_string())
                .join(format!("{first:020}-{last:020}.parquet")),
        )
    }

    /// The directory of a partition's manifest versions.
    pub fn manifest_dir(&self, topic: &str, partition: u32) -> Path {
        self.topic(topic)
            .join("_manifest")
            .join(partition.to_string())
    }
}

/// Path of a Parquet data file.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DataFilePath(pub Path);

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn layout() {
        let root = ColdRoot::new("/lake/");
        assert_eq!(
            root.data_file("clicks", 2, 0, 999).0.as_ref(),
            "lake/clicks/2/00000000000000000000-00000000000000000999.parquet"
        );
        assert_eq!(
            root.manifest_dir("clicks", 2).as_ref(),
            "lake/clicks/_manifest/2"
        );
        assert_eq!(ColdRoot::new("").topic("t").as_ref(), "t");
    }
}

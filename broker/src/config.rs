//! Broker and per-topic configuration with working defaults.

use std::path::PathBuf;

use serde::{Deserialize, Serialize};

use crate::error::{BrokerError, Result};

/// Where a record's timestamp comes from.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "snake_case")]
pub enum TimestampType {
    /// The producer's timestamp, or the broker's time when the record has none.
    #[default]
    CreateTime,
    /// Always the broker's time at append.
    LogAppendTime,
}

/// The effective configuration of one topic.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct TopicConfig {
    /// Roll the active segment before it grows past this many bytes.
    pub segment_bytes: u64,
    /// Roll the active segment once its first batch is this old.
    pub segment_ms: i64,
    /// Local (hot) bytes kept per partition once offloaded; -1 = no limit.
    pub local_retention_bytes: i64,
    /// Local (hot) age kept once offloaded; -1 = no limit.
    pub local_retention_ms: i64,
    /// Total retention across both tiers; -1 = forever.
    pub retention_ms: i64,
    pub timestamp_type: TimestampType,
    /// How long a produce's `Idempotency-Key` is remembered.
    pub idempotency_window_ms: i64,
    /// How many nodes hold each partition; 0 in `[topic_defaults]` means
    /// min(3, live nodes), fixed when a topic is created (a topic stored
    /// before the cluster existed reads as 0: one copy). See
    /// [`TopicConfig::replicas`].
    pub replication_factor: u32,
    /// How many in-sync replicas a produce needs; 0 means
    /// min(2, replication factor). See [`TopicConfig::min_insync`].
    pub min_insync_replicas: u32,
}

impl Default for TopicConfig {
    fn default() -> Self {
        Self {
            segment_bytes: 128 * 1024 * 1024,
            segment_ms: 600_000,
            local_retention_bytes: 1024 * 1024 * 1024,
            local_retention_ms: 3_600_000,
            retention_ms: -1,
            timestamp_type: TimestampType::CreateTime,
            idempotency_window_ms: 3_600_000,
            replication_factor: 0,
            min_insync_replicas: 0,
        }
    }
}

/// Most replicas a partition may have.
pub const MAX_REPLICATION_FACTOR: u32 = 16;

/// Smallest accepted `segment_bytes`.
pub const MIN_SEGMENT_BYTES: u64 = 1024;
/// Largest accepted `segment_bytes` (index positions are 32-bit).
pub const MAX_SEGMENT_BYTES: u64 = 2 * 1024 * 1024 * 1024 - 1;

/// Topic settings given at creation; absent keys keep the server's defaults.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TopicConfigOverrides {
    pub segment_bytes: Option<u64>,
    pub segment_ms: Option<i64>,
    pub local_retention_bytes: Option<i64>,
    pub local_retention_ms: Option<i64>,
    pub retention_ms: Option<i64>,
    pub timestamp_type: Option<TimestampType>,
    pub idempotency_window_ms: Option<i64>,
    pub replication_factor: Option<u32>,
    pub min_insync_replicas: Option<u32>,
}

impl TopicConfigOverrides {
    /// `defaults` with these overrides applied, validated.
    pub fn apply(&self, defaults: &TopicConfig) -> Result<TopicConfig> {
        let config = TopicConfig {
            segment_bytes: self.segment_bytes.unwrap_or(defaults.segment_bytes),
            segment_ms: self.segment_ms.unwrap_or(defaults.segment_ms),
            local_retention_bytes: self
                .local_retention_bytes
                .unwrap_or(defaults.local_retention_bytes),
            local_retention_ms: self
                .local_retention_ms
                .unwrap_or(defaults.local_retention_ms),
            retention_ms: self.retention_ms.unwrap_or(defaults.retention_ms),
            timestamp_type: self.timestamp_type.unwrap_or(defaults.timestamp_type),
            idempotency_window_ms: self
                .idempotency_window_ms
                .unwrap_or(defaults.idempotency_window_ms),
            replication_factor: self
                .replication_factor
                .unwrap_or(defaults.replication_factor),
            min_insync_replicas: self
                .min_insync_replicas
                .unwrap_or(defaults.min_insync_replicas),
        };
        config.validate()?;
        Ok(config)
    }
}

impl TopicConfig {
    /// How many nodes hold each partition (1 for a topic from before the
    /// cluster, whose `replication_factor` reads as 0).
    pub fn replicas(&self) -> u32 {
        self.replication_factor.max(1)
    }

    /// How many in-sync replicas a produce needs.
    pub fn min_insync(&self) -> u32 {
        match self.min_insync_replicas {
            0 => self.replicas().min(2),
            n => n,
        }
    }

    /// Whether the topic is replicated: led and followed across nodes,
    /// with its state in the cluster's objects. A topic with one replica
    /// is the node's own, as on a single server.
    pub fn is_replicated(&self) -> bool {
        self.replicas() > 1
    }

    /// Checks every value's range.
    pub fn validate(&self) -> Result<()> {
        let bad = |msg: String| Err(BrokerError::InvalidRequest(msg));
        if self.replication_factor > MAX_REPLICATION_FACTOR {
            return bad(format!(
                "replication_factor must be between 1 and {MAX_REPLICATION_FACTOR}, got {}",
                self.replication_factor
            ));
        }
        if self.min_insync_replicas > self.replicas() && self.replication_factor != 0 {
            return bad(format!(
                "min_insync_replicas ({}) must not exceed replication_factor ({})",
                self.min_insync_replicas,
                self.replicas()
            ));
        }
        if !(MIN_SEGMENT_BYTES..=MAX_SEGMENT_BYTES).contains(&self.segment_bytes) {
            return bad(format!(
                "segment_bytes must be between {MIN_SEGMENT_BYTES} and {MAX_SEGMENT_BYTES}, got {}",
                self.segment_bytes
            ));
        }
        if self.segment_ms < 1 {
            return bad(format!(
                "segment_ms must be at least 1, got {}",
                self.segment_ms
            ));
        }
        if self.idempotency_window_ms < 0 {
            return bad(format!(
                "idempotency_window_ms must be a non-negative number, got {}",
                self.idempotency_window_ms
            ));
        }
        for (name, value) in [
            ("local_retention_bytes", self.local_retention_bytes),
            ("local_retention_ms", self.local_retention_ms),
            ("retention_ms", self.retention_ms),
        ] {
            if value < -1 {
                return bad(format!(
                    "{name} must be -1 (unlimited) or a non-negative number, got {value}"
                ));
            }
        }
        Ok(())
    }
}

/// Server-wide broker settings. Every field has a working default.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct BrokerConfig {
    /// Root of all local data (`topics/`, `groups/`).
    pub data_dir: PathBuf,
    /// Largest accepted request body, in bytes.
    pub max_request_bytes: usize,
    /// Largest accepted record (key + value + header bytes).
    pub max_record_bytes: usize,
    /// Bytes of log between two sparse index entries.
    pub index_interval_bytes: u32,
    /// Partitions of a topic created without `partitions`.
    pub default_partitions: u32,
    /// Longest accepted `wait_ms` of a long-polling consume.
    pub max_wait_ms: u64,
    /// Local disk budget for all segments, in bytes (-1 = none). Once
    /// reached (e.g. the object store is down and nothing can be offloaded
    /// and deleted), produce answers `503 unavailable` with `Retry-After`.
    pub max_local_bytes: i64,
    /// Defaults of every topic's configuration.
    pub topic_defaults: TopicConfig,
}

impl Default for BrokerConfig {
    fn default() -> Self {
        Self {
            data_dir: PathBuf::from("./data"),
            max_request_bytes: 64 * 1024 * 1024,
            max_record_bytes: 1024 * 1024,
            index_interval_bytes: 4096,
            default_partitions: 1,
            max_wait_ms: 60_000,
            max_local_bytes: -1,
            topic_defaults: TopicConfig::default(),
        }
    }
}

/// Largest accepted `max_request_bytes` and `max_record_bytes`: one
/// request becomes at most one batch per partition, and a batch stays under
/// [`crate::batch::MAX_BATCH_LEN`].
pub const MAX_REQUEST_BYTES: usize = 512 * 1024 * 1024;

impl BrokerConfig {
    /// Checks every value's range.
    pub fn validate(&self) -> Result<()> {
        let bad = |msg: String| Err(BrokerError::InvalidRequest(msg));
        if !(1..=MAX_REQUEST_BYTES).contains(&self.max_request_bytes) {
            return bad(format!(
                "max_request_bytes must be between 1 and {MAX_REQUEST_BYTES}"
            ));
        }
        if !(1..=MAX_REQUEST_BYTES).contains(&self.max_record_bytes) {
            return bad(format!(
                "max_record_bytes must be between 1 and {MAX_REQUEST_BYTES}"
            ));
        }
        if !(1..=MAX_PARTITIONS).contains(&self.default_partitions) {
            return bad(format!(
                "default_partitions must be between 1 and {MAX_PARTITIONS}"
            ));
        }
        if self.max_wait_ms > 600_000 {
            return bad("max_wait_ms must be at most 600000 (10 minutes)".into());
        }
        if self.max_local_bytes < -1 {
            return bad("max_local_bytes must be -1 (no budget) or a number of bytes".into());
        }
        if self.index_interval_bytes == 0 {
            return bad("index_interval_bytes must be at least 1".into());
        }
        self.topic_defaults.validate()
    }
}

/// Most partitions a topic may have.
pub const MAX_PARTITIONS: u32 = 10_000;

/// A name no topic or group may take: the object store's `<root>/_cluster/`
/// holds the cluster's control objects, beside the topics' directories.
pub const RESERVED_NAME: &str = "_cluster";

/// What is wrong with a name, by [`name_problem`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum NameProblem {
    Empty,
    TooLong,
    Dots,
    Characters,
}

impl NameProblem {
    /// The reason, for a rule whose longest name is `max` characters.
    pub fn reason(self, max: usize) -> String {
        match self {
            Self::Empty => "must not be empty".into(),
            Self::TooLong => format!("must be at most {max} characters"),
            Self::Dots => "must not be \".\" or \"..\"".into(),
            Self::Characters => "may only contain ASCII letters, digits, '.', '_' and '-'".into(),
        }
    }
}

/// The one rule for every name that becomes a path segment, a URL segment
/// or a metric label (topics, groups, nodes, tokens): 1 to `max` of
/// `[A-Za-z0-9._-]`, not `.` or `..`. `None` when `name` keeps it.
pub fn name_problem(name: &str, max: usize) -> Option<NameProblem> {
    if name.is_empty() {
        Some(NameProblem::Empty)
    } else if name.len() > max {
        Some(NameProblem::TooLong)
    } else if name == "." || name == ".." {
        Some(NameProblem::Dots)
    } else if !name
        .bytes()
        .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'-'))
    {
        Some(NameProblem::Characters)
    } else {
        None
    }
}

/// Longest topic or group name (Kafka's).
pub const MAX_NAME_LEN: usize = 249;

/// Checks a topic or group name: [`name_problem`] with at most
/// [`MAX_NAME_LEN`] characters. A valid name is always a safe single path
/// component.
pub fn validate_name(name: &str) -> Result<()> {
    match name_problem(name, MAX_NAME_LEN) {
        None => Ok(()),
        Some(problem) => Err(BrokerError::InvalidTopicName {
            name: name.chars().take(300).collect(),
            reason: problem.reason(MAX_NAME_LEN),
        }),
    }
}

/// Checks the name of a topic being created: [`validate_name`], and not
/// [`RESERVED_NAME`] (only new topics: a group may be called anything, and
/// a topic made before the name was reserved still opens).
pub fn validate_new_topic_name(name: &str) -> Result<()> {
    validate_name(name)?;
    if name == RESERVED_NAME {
        return Err(BrokerError::InvalidTopicName {
            name: name.to_string(),
            reason: "is reserved: the cluster keeps its objects under <root>/_cluster".into(),
        });
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_follow_kafkas_rule() {
        for ok in ["clicks", "a.b_c-D9", ".x", "..x", &"a".repeat(249)] {
            assert!(validate_name(ok).is_ok(), "{ok}");
        }
        for bad in [
            "",
            ".",
            "..",
            "../x",
            "a/b",
            "a b",
            "ü",
            &"a".repeat(250),
            "a\0b",
        ] {
            assert!(validate_name(bad).is_err(), "{bad:?}");
        }
        assert!(
            validate_name("_cluster").is_ok(),
            "a group may be called so"
        );
        assert!(
            validate_new_topic_name("_cluster").is_err(),
            "a new topic may not"
        );
    }

    #[test]
    fn overrides_are_validated() {
        let defaults = TopicConfig::default();
        let config = TopicConfigOverrides {
            segment_bytes: Some(4096),
            ..Default::default()
        }
        .apply(&defaults)
        .unwrap();
        assert_eq!(config.segment_bytes, 4096);
        assert_eq!(config.segment_ms, defaults.segment_ms);
        for bad in [
            TopicConfigOverrides {
                segment_bytes: Some(10),
                ..Default::default()
            },
            TopicConfigOverrides {
                segment_ms: Some(0),
                ..Default::default()
            },
            TopicConfigOverrides {
                retention_ms: Some(-2),
                ..Default::default()
            },
        ] {
            assert!(bad.apply(&defaults).is_err(), "{bad:?}");
        }
    }
}

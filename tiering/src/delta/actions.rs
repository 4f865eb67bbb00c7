//! The Delta Lake shape of a topic's cold tier, without I/O: the table's
//! columns, where its objects are, and the log actions that add or remove
//! one cold file.

use std::collections::HashMap;
use std::time::Duration;

use deltalake_core::kernel::{Action, Add, DataType, MapType, Remove, StructField, Transaction};

use crate::manifest::ColdFile;
use crate::paths::ColdRoot;

/// The table's columns: those of every cold file
/// ([`crate::schema::file_schema`]) in Delta's types; `timestamp` is
/// Delta's `timestamp` (µs, UTC), as the files hold it (older millisecond
/// files are cast up by readers, losslessly).
pub fn columns() -> Vec<StructField> {
    vec![
        StructField::new("partition", DataType::INTEGER, false),
        StructField::new("offset", DataType::LONG, false),
        StructField::new("timestamp", DataType::TIMESTAMP, false),
        StructField::new("key", DataType::STRING, true),
        StructField::new("value", DataType::STRING, false),
        StructField::new(
            "headers",
            MapType::new(DataType::STRING, DataType::STRING, true),
            false,
        ),
    ]
}

/// The table property that says how long a removed file stays readable.
pub const RETENTION_PROPERTY: &str = "delta.deletedFileRetentionDuration";

/// [`RETENTION_PROPERTY`]'s value for Strata's deletion grace period:
/// Strata deletes a file the table removed once `grace` has passed (and no
/// read pins it), so that is how long the table keeps its tombstone; a
/// checkpoint drops tombstones older than that ([`Delta`'s protocol]).
/// Whole seconds, rounded up ([`retention`]).
///
/// [`Delta`'s protocol]: https://github.com/delta-io/delta/blob/master/PROTOCOL.md#checkpoints
pub fn retention_interval(grace: Duration) -> String {
    format!("interval {} seconds", retention(grace).as_secs())
}

/// The retention [`retention_interval`] states.
pub fn retention(grace: Duration) -> Duration {
    Duration::from_secs(grace.as_secs() + u64::from(grace.subsec_nanos() > 0))
}

/// The application id under which a partition's publishing progress (the
/// manifest version its files were last published at) is kept in the
/// table's log, as a Delta `txn` action.
pub fn app_id(topic: &str, partition: u32) -> String {
    format!("strata/{topic}/{partition}")
}

/// The id's progress as Delta records it.
pub fn progress(topic: &str, partition: u32, manifest_version: u64, now_ms: i64) -> Transaction {
    Transaction {
        app_id: app_id(topic, partition),
        version: i64::try_from(manifest_version).unwrap_or(i64::MAX),
        last_updated: Some(now_ms),
    }
}

/// A commit's marker that holds nothing else: the kernel writes one
/// checkpoint per version, so a checkpoint of a version that has one
/// needs a new version first. Its application id is no partition's.
pub fn checkpoint_marker(topic: &str, now_ms: i64) -> Transaction {
    Transaction {
        app_id: format!("strata/{topic}/checkpoint"),
        version: now_ms,
        last_updated: Some(now_ms),
    }
}

/// The partition a table path (`<partition>/<first>-<last>.parquet`,
/// relative to the table's root) belongs to, if it is one of Strata's.
pub fn partition_of(relative: &str) -> Option<u32> {
    relative.split_once('/')?.0.parse().ok()
}

/// The offsets a data file holds (`first..=last`), from its name
/// (`<partition>/<first:020>-<last:020>.parquet`, relative or not).
pub fn offsets_of(path: &str) -> Option<(u64, u64)> {
    let name = path.rsplit('/').next()?.strip_suffix(".parquet")?;
    let (first, last) = name.split_once('-')?;
    Some((first.parse().ok()?, last.parse().ok()?))
}

/// Whether `range` (`first..=last`) is covered by `others`' ranges: a file
/// that only rearranges records other files of the same commit held
/// (compaction), which Delta marks `dataChange: false`.
pub fn covered(range: (u64, u64), others: &[(u64, u64)]) -> bool {
    let mut sorted = others.to_vec();
    sorted.sort_unstable();
    let mut next = range.0;
    for (first, last) in sorted {
        if first > next {
            break;
        }
        if last >= next {
            match last.checked_add(1) {
                Some(after) => next = after,
                None => return true,
            }
        }
        if next > range.1 {
            return true;
        }
    }
    next > range.1
}

/// Where a topic's table lives, as a URL for delta-rs over a store whose
/// root is the bucket's (S3) or the process's (memory). delta-rs reaches
/// every object through the store Strata hands it, by this URL's path; the
/// `memory` scheme is one it has a log store for without its own cloud
/// crates, and one whose listings it trusts to be sorted, as S3's and
/// memory's are. (A local directory's are not: it gets a `file` URL.)
pub fn internal_url(root: &ColdRoot, topic: &str) -> Option<url::Url> {
    url::Url::parse(&format!("memory:///{}", root.topic(topic))).ok()
}

/// Where a topic's table lives, for people and other engines: the object
/// store's URL (without credentials) and the topic.
pub fn location(store_url: &str, topic: &str) -> String {
    format!("{}/{topic}", store_url.trim_end_matches('/'))
}

/// A data file's path relative to its table's root.
pub fn relative_path<'a>(root: &ColdRoot, topic: &str, path: &'a str) -> &'a str {
    let prefix = root.topic(topic);
    let prefix = prefix.as_ref();
    match path.strip_prefix(prefix) {
        Some(rest) if prefix.is_empty() => rest,
        Some(rest) => rest.strip_prefix('/').unwrap_or(rest),
        None => path,
    }
}

/// The action that adds a cold file, with the statistics readers prune by:
/// its record count, and the bounds of `partition`, `offset` and
/// `timestamp` (from the manifest, exact), none of which has nulls.
/// `data_change` is false for a file that rearranges records (compaction).
pub fn add(
    relative: &str,
    partition: u32,
    file: &ColdFile,
    now_ms: i64,
    data_change: bool,
) -> Action {
    Action::Add(Add {
        path: relative.to_string(),
        partition_values: HashMap::new(),
        size: i64::try_from(file.bytes).unwrap_or(i64::MAX),
        modification_time: now_ms,
        data_change,
        stats: Some(stats(partition, file)),
        ..Add::default()
    })
}

/// The action that removes a file from the table (before it is deleted);
/// `data_change` is false when the commit's adds hold its records.
pub fn remove(relative: &str, size: i64, now_ms: i64, data_change: bool) -> Action {
    Action::Remove(Remove {
        path: relative.to_string(),
        data_change,
        deletion_timestamp: Some(now_ms),
        extended_file_metadata: Some(true),
        partition_values: Some(HashMap::new()),
        size: Some(size),
        ..Remove::default()
    })
}

/// Delta's per-file statistics (the `stats` JSON of an `add`).
fn stats(partition: u32, file: &ColdFile) -> String {
    serde_json::json!({
        "numRecords": file.records,
        "minValues": {
            "partition": partition,
            "offset": file.first_offset,
            "timestamp": timestamp(file.min_timestamp),
        },
        "maxValues": {
            "partition": partition,
            "offset": file.last_offset,
            "timestamp": timestamp(file.max_timestamp),
        },
        "nullCount": {"partition": 0, "offset": 0, "timestamp": 0, "value": 0},
    })
    .to_string()
}

/// A timestamp as Delta's statistics write it: ISO 8601 in UTC, to the
/// millisecond (the precision the files hold, so the bounds are exact).
fn timestamp(ms: i64) -> String {
    chrono::DateTime::from_timestamp_millis(ms)
        .unwrap_or_default()
        .format("%Y-%m-%dT%H:%M:%S%.3fZ")
        .to_string()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn file() -> ColdFile {
        ColdFile {
            path: "lake/clicks/2/00000000000000000010-00000000000000000019.parquet".into(),
            first_offset: 10,
            last_offset: 19,
            min_timestamp: 1_700_000_000_123,
            max_timestamp: 1_700_000_001_456,
            records: 10,
            bytes: 4096,
        }
    }

    #[test]
    fn the_retention_is_the_grace_in_whole_seconds_rounded_up() {
        assert_eq!(retention_interval(Duration::ZERO), "interval 0 seconds");
        assert_eq!(
            retention_interval(Duration::from_secs(60)),
            "interval 60 seconds"
        );
        assert_eq!(
            retention_interval(Duration::from_millis(1500)),
            "interval 2 seconds"
        );
    }

    #[test]
    fn paths_are_relative_to_the_topic() {
        let root = ColdRoot::new("lake");
        let file = file();
        let rel = relative_path(&root, "clicks", &file.path);
        assert_eq!(rel, "2/00000000000000000010-00000000000000000019.parquet");
        assert_eq!(partition_of(rel), Some(2));
        assert_eq!(partition_of("_delta_log/0.json"), None);
        let bare = ColdRoot::new("");
        assert_eq!(relative_path(&bare, "t", "t/0/x.parquet"), "0/x.parquet");
        assert_eq!(
            internal_url(&root, "clicks").unwrap().path(),
            "/lake/clicks"
        );
        assert_eq!(location("s3://b/lake/", "clicks"), "s3://b/lake/clicks");
    }

    #[test]
    fn statistics_bound_offsets_and_times_exactly() {
        let Action::Add(add) = add("2/f.parquet", 2, &file(), 5, true) else {
            panic!("not an add")
        };
        let stats: serde_json::Value = serde_json::from_str(add.stats.as_deref().unwrap()).unwrap();
        assert_eq!(stats["numRecords"], 10);
        assert_eq!(stats["minValues"]["offset"], 10);
        assert_eq!(stats["maxValues"]["offset"], 19);
        assert_eq!(stats["minValues"]["timestamp"], "2023-11-14T22:13:20.123Z");
        assert_eq!(stats["maxValues"]["timestamp"], "2023-11-14T22:13:21.456Z");
        assert_eq!(stats["maxValues"]["partition"], 2);
        assert_eq!(add.size, 4096);
        assert!(add.data_change);
    }

    #[test]
    fn rearranged_files_are_told_from_new_and_dropped_ones() {
        assert_eq!(
            offsets_of("2/00000000000000000010-00000000000000000019.parquet"),
            Some((10, 19))
        );
        assert_eq!(offsets_of("2/x.parquet"), None);
        // A merged file covers the files it replaced, and they it.
        assert!(covered((0, 29), &[(10, 19), (0, 9), (20, 29)]));
        assert!(covered((10, 19), &[(0, 29)]));
        // Records no file of the commit holds: a change.
        assert!(!covered((0, 39), &[(0, 9), (10, 19)]));
        assert!(!covered((0, 9), &[(5, 20)]));
        assert!(!covered((0, 9), &[]));
        assert!(covered((5, u64::MAX), &[(0, u64::MAX)]));
    }

    #[test]
    fn progress_is_the_manifest_version() {
        let txn = progress("clicks", 3, 42, 7);
        assert_eq!(txn.app_id, "strata/clicks/3");
        assert_eq!(txn.version, 42);
    }
}

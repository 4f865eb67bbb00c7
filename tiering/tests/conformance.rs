//! The cold tier's conformance suite: [`suite`] runs every scenario, whole,
//! against every store (`memory://`, `file://`, and the S3-compatible
//! server that `scripts/test.sh` starts, named by `STRATA_TEST_S3`; CI
//! fails when it is missing). What a store cannot do is a capability flag
//! ([`Capabilities`]), checked where a scenario depends on it, as
//! object_store's own suite does. Tests for one store's peculiarities
//! follow the suite.

use std::sync::Arc;
use std::time::{Duration, Instant};

use futures::TryStreamExt;
use object_store::ObjectStoreExt;

use serde_json::json;
use strata_broker::{BrokerConfig, TopicConfigOverrides};
use strata_test_support::eventually;
use strata_test_support::storage::{Storage, produce};
use strata_tiering::cold_read::FileScan;
use strata_tiering::manifest::{ColdFile, ManifestStore};
use strata_tiering::{Backend, ColdStore, Tiering, TieringConfig, TieringError};

/// What a store promises beyond the common contract.
struct Capabilities {
    /// A second open of the URL sees the same objects (not `memory://`,
    /// which is new on every open), so restarts and a second writer can
    /// be tested.
    persistent: bool,
}

impl Capabilities {
    fn of(url: &str) -> Self {
        let store = ColdStore::open(url).unwrap();
        Self {
            persistent: store.backend != Backend::Memory,
        }
    }
}

async fn fixture(url: &str) -> Storage {
    fixture_with(url, TieringConfig::default()).await
}

async fn fixture_with(url: &str, config: TieringConfig) -> Storage {
    Storage::open(url, BrokerConfig::default(), config).await
}

/// Records of a partition's cold tier as committed now, as a consume
/// reads them (pin, then read the pinned manifest).
async fn read_records(
    tiering: &Tiering,
    topic: &str,
    partition: u32,
    from: u64,
    max_records: u64,
    max_bytes: u64,
) -> Vec<strata_tiering::ColdRecord> {
    let pinned = tiering.pin_manifest(topic, partition).await.unwrap();
    tiering
        .read_pinned_records(&pinned, from, max_records, max_bytes)
        .await
        .unwrap()
}

async fn conformance(url: &str) {
    let mut f = fixture(url).await;
    let overrides = TopicConfigOverrides {
        segment_bytes: Some(4096),
        local_retention_bytes: Some(0),
        ..Default::default()
    };
    let topic = f.broker.create_topic("conf", Some(2), &overrides).unwrap();
    // Out-of-order timestamps, keys, headers, nulls; several segments per partition.
    let records: Vec<serde_json::Value> = (0..400)
        .map(|i: i64| {
            json!({"key": if i % 7 == 0 { None } else { Some(format!("k{i}")) },
                   "value": if i % 11 == 0 { json!(null) } else { json!({"i": i, "s": "x".repeat((i % 50) as usize)}) },
                   "headers": {"n": i.to_string()},
                   "timestamp": 1_000_000 + ((i * 37) % 400) * 10,
                   "partition": i % 2})
        })
        .collect();
    for chunk in records.chunks(20) {
        produce(&f.broker, "conf", chunk);
    }
    let summary = f.tiering.offload_topic("conf", true).await.unwrap();
    assert_eq!(summary.records, 400);
    assert!(summary.files >= 4, "{summary:?}");
    // Idempotent: nothing left to offload.
    assert_eq!(
        f.tiering.offload_topic("conf", true).await.unwrap().files,
        0
    );

    check_key_bloom_filters(&f, "conf").await;
    check_key_pruning(&f.tiering, "conf").await;
    for p in 0..2u32 {
        let stats = f.tiering.cold_stats("conf", p);
        assert_eq!((stats.start_offset, stats.end_offset), (0, 200));
        let partition = &topic.partitions()[p as usize];
        assert_eq!(
            partition.start_offset(),
            200,
            "local segments deleted after commit"
        );
        // Every record reads back from the cold tier, identical, from any offset.
        let expected: Vec<&serde_json::Value> =
            records.iter().filter(|r| r["partition"] == p).collect();
        for from in [0u64, 1, 57, 199] {
            let mut got = Vec::new();
            let mut next = from;
            while next < 200 {
                let page = read_records(&f.tiering, "conf", p, next, 33, 1 << 20).await;
                assert!(!page.is_empty());
                next = page.last().unwrap().offset + 1;
                got.extend(page);
            }
            assert_eq!(got.len() as u64, 200 - from);
            for (record, want) in got.iter().zip(&expected[from as usize..]) {
                assert_eq!(record.key.as_deref(), want["key"].as_str());
                let value: serde_json::Value = serde_json::from_str(&record.value).unwrap();
                assert_eq!(&value, &want["value"]);
                assert_eq!(record.timestamp, want["timestamp"].as_i64().unwrap());
                assert_eq!(
                    record.headers,
                    vec![(
                        "n".to_string(),
                        want["headers"]["n"].as_str().unwrap().to_string()
                    )]
                );
            }
        }
        // Offset for timestamp agrees with a scan of what was produced.
        for target in [0i64, 1_000_000, 1_001_234, 1_002_000, 1_003_990, 1_003_991] {
            let want = expected
                .iter()
                .enumerate()
                .find(|(_, r)| r["timestamp"].as_i64().unwrap() >= target)
                .map(|(i, r)| (i as u64, r["timestamp"].as_i64().unwrap()));
            let pinned = f.tiering.pin_manifest("conf", p).await.unwrap();
            assert_eq!(
                f.tiering
                    .pinned_offset_for_timestamp(&pinned, target)
                    .await
                    .unwrap(),
                want,
                "target {target}"
            );
        }
    }

    // A restart finds the same cold tier from the object store alone. The
    // old tier goes first: it holds the prefix's lease, and on file:// its lock.
    let capabilities = Capabilities::of(url);
    if capabilities.persistent {
        let before = f.tiering.cold_stats("conf", 1);
        f = f.reopen_tiering(TieringConfig::default()).await;
        assert_eq!(f.tiering.cold_stats("conf", 1), before);
    }
    // Commits are exclusive: a second writer of the same version is refused.
    if capabilities.persistent {
        check_exclusive_commits(url).await;
    }
    f.tiering.delete_topic("conf").await.unwrap();
    assert_eq!(f.tiering.cold_stats("conf", 0).files, 0);
    // Until its local deletion follows, the deleted topic is not offloaded again.
    produce(&f.broker, "conf", &records[..2]);
    assert_eq!(
        f.tiering.offload_topic("conf", true).await.unwrap().files,
        0
    );
    assert_eq!(f.tiering.cold_stats("conf", 0).files, 0);
}

async fn check_exclusive_commits(url: &str) {
    let store = ColdStore::open(url).unwrap();
    let manifests = ManifestStore::new(&store);
    let current = manifests.load("conf", 0).await.unwrap();
    assert!(current.version >= 2);
    let mut stale = current.clone();
    stale.version -= 1;
    assert!(matches!(
        manifests.commit(&stale).await,
        Err(TieringError::Conflict { .. })
    ));
}

/// `retention_ms` drops whole cold files whose newest record is older, and
/// moves the partition's start offset up; newer files stay readable.
async fn retention(url: &str) {
    let f = fixture(url).await;
    let overrides = TopicConfigOverrides {
        segment_bytes: Some(2048),
        local_retention_bytes: Some(0),
        retention_ms: Some(3_600_000),
        ..Default::default()
    };
    f.broker.create_topic("ret", Some(1), &overrides).unwrap();
    let now = strata_broker::timestamp::now_ms();
    let old: Vec<serde_json::Value> = (0..100)
        .map(|i| json!({"value": i, "timestamp": 1_000_000 + i}))
        .collect();
    let new: Vec<serde_json::Value> = (100..200)
        .map(|i| json!({"value": i, "timestamp": now}))
        .collect();
    for chunk in old.chunks(10) {
        produce(&f.broker, "ret", chunk);
    }
    f.broker.topic("ret").unwrap().partitions()[0]
        .roll()
        .unwrap();
    for chunk in new.chunks(10) {
        produce(&f.broker, "ret", chunk);
    }
    f.tiering.offload_topic("ret", true).await.unwrap();
    let stats = f.tiering.cold_stats("ret", 0);
    assert_eq!(
        stats.start_offset, 100,
        "files of old records expired: {stats:?}"
    );
    assert_eq!(stats.end_offset, 200);
    let page = read_records(&f.tiering, "ret", 0, 100, 1000, 1 << 20).await;
    assert_eq!(page.len(), 100);
    assert_eq!(page[0].offset, 100);
    assert!(f.broker.topic("ret").unwrap().partitions()[0].start_offset() >= 100);
}

/// Bytes that do not repeat (a xorshift sequence), so sizes are exact.
fn noise(len: usize, seed: u64) -> Vec<u8> {
    let mut x = seed | 1;
    (0..len)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            x as u8
        })
        .collect()
}

/// A file of several parts goes up as a multipart upload (journaled where
/// the store can abort uploads by id) and reads back byte for byte; an
/// upload given up leaves no object and no journal entry; a single-part
/// file is one PUT.
async fn uploads(url: &str) {
    use object_store::ObjectStoreExt;
    use strata_tiering::upload::{FileUpload, UPLOAD_PART_BYTES, UploadJournal};
    let dir = tempfile::tempdir().unwrap();
    let cold = ColdStore::open(url).unwrap();
    let journal = Arc::new(UploadJournal::open(dir.path()).unwrap());
    let journal_entries = || {
        std::fs::read_dir(dir.path().join("uploads"))
            .unwrap()
            .count()
    };
    let root = cold.root.topic("uploads");
    for (name, parts) in [("three.parquet", 3usize), ("one.parquet", 1)] {
        let path = root.clone().join(name);
        let chunks: Vec<Vec<u8>> = (0..parts)
            .map(|i| {
                let len = if i + 1 < parts {
                    UPLOAD_PART_BYTES
                } else {
                    1234
                };
                noise(len, i as u64 + 7)
            })
            .collect();
        let mut upload = FileUpload::new(&cold, &journal, path.clone(), false);
        for chunk in &chunks {
            upload.put(bytes::Bytes::from(chunk.clone())).await.unwrap();
        }
        upload.finish().await.unwrap();
        let stored = cold.store.get(&path).await.unwrap().bytes().await.unwrap();
        assert_eq!(stored.to_vec(), chunks.concat(), "{name} reads back");
        assert_eq!(journal_entries(), 0, "{name}: the journal is empty");
    }
    let path = root.clone().join("given-up.parquet");
    let mut upload = FileUpload::new(&cold, &journal, path.clone(), false);
    for seed in 0..3 {
        let chunk = noise(UPLOAD_PART_BYTES, seed);
        upload.put(bytes::Bytes::from(chunk)).await.unwrap();
    }
    if cold.multipart.is_some() {
        assert_eq!(journal_entries(), 1, "an open multipart upload is noted");
    }
    upload.abort().await;
    assert!(matches!(
        cold.store.head(&path).await,
        Err(object_store::Error::NotFound { .. })
    ));
    assert_eq!(journal_entries(), 0, "an aborted upload leaves the journal");

    // An upload dropped half-way (its offload cancelled) is aborted too.
    let path = root.join("dropped.parquet");
    let mut upload = FileUpload::new(&cold, &journal, path.clone(), false);
    for seed in 0..3 {
        let chunk = noise(UPLOAD_PART_BYTES, seed);
        upload.put(bytes::Bytes::from(chunk)).await.unwrap();
    }
    drop(upload);
    // On file://, staging files are `<name>#<digits>` beside the final name.
    let staged = || match url.strip_prefix("file://") {
        Some(dir) => std::fs::read_dir(std::path::Path::new(dir).join("uploads"))
            .unwrap()
            .filter(|e| {
                e.as_ref()
                    .unwrap()
                    .file_name()
                    .to_string_lossy()
                    .contains('#')
            })
            .count(),
        None => 0,
    };
    let deadline = Instant::now() + Duration::from_secs(30);
    while journal_entries() + staged() > 0 {
        assert!(
            Instant::now() < deadline,
            "a dropped upload was never aborted"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert!(matches!(
        cold.store.head(&path).await,
        Err(object_store::Error::NotFound { .. })
    ));
}

/// Consumes a cold file of several decode windows (`WINDOW_ROWS`) in
/// requests that start and end inside windows and cross their edges: every
/// record exactly once, in order, each from its own row.
async fn reads_across_windows(url: &str) {
    use strata_tiering::read_cache::WINDOW_ROWS;
    let f = fixture(url).await;
    let overrides = TopicConfigOverrides {
        segment_bytes: Some(1 << 30),
        local_retention_bytes: Some(0),
        ..Default::default()
    };
    f.broker.create_topic("wide", Some(1), &overrides).unwrap();
    let total = 2 * WINDOW_ROWS + 1234;
    let records: Vec<serde_json::Value> = (0..total)
        .map(|i| json!({"key": format!("k{}", i % 13), "value": i}))
        .collect();
    for chunk in records.chunks(5000) {
        produce(&f.broker, "wide", chunk);
    }
    let summary = f.tiering.offload_topic("wide", true).await.unwrap();
    assert_eq!((summary.records, summary.files), (total, 1));
    for (from, page) in [
        (0u64, 10_000u64),
        (WINDOW_ROWS - 7, 9_999),
        (WINDOW_ROWS, 65_537),
    ] {
        let mut next = from;
        while next < total {
            let got = read_records(&f.tiering, "wide", 0, next, page, 64 << 20).await;
            assert_eq!(got.len() as u64, page.min(total - next), "from {next}");
            for (i, record) in got.iter().enumerate() {
                let offset = next + i as u64;
                assert_eq!(record.offset, offset);
                assert_eq!(record.value, offset.to_string());
                assert_eq!(record.key, Some(format!("k{}", offset % 13)));
            }
            next += got.len() as u64;
        }
    }
}

/// A cold tier on `url` that deletes what retention drops as soon as no
/// read pins it (no grace period), and a topic `topic` of `records`
/// records stamped now that expire after `retention_ms`, all offloaded.
async fn expiring_topic(
    url: &str,
    topic: &str,
    records: usize,
    retention_ms: i64,
) -> (Storage, Vec<serde_json::Value>) {
    let impatient = TieringConfig {
        object_delete_grace: Duration::ZERO,
        ..TieringConfig::default()
    };
    let f = fixture_with(url, impatient).await;
    let overrides = TopicConfigOverrides {
        retention_ms: Some(retention_ms),
        local_retention_bytes: Some(0),
        ..Default::default()
    };
    f.broker.create_topic(topic, Some(1), &overrides).unwrap();
    let now = strata_broker::timestamp::now_ms();
    let records: Vec<serde_json::Value> = (0..records)
        .map(|i| json!({"value": i, "timestamp": now}))
        .collect();
    produce(&f.broker, topic, &records);
    assert_eq!(f.tiering.offload_topic(topic, true).await.unwrap().files, 1);
    (f, records)
}

/// Runs offload passes until retention has dropped every file of
/// partition 0 of `topic` from its manifest.
async fn until_retention_drops_all(tiering: &Tiering, topic: &str) {
    let deadline = Instant::now() + Duration::from_secs(30);
    while tiering.cold_stats(topic, 0).files > 0 {
        assert!(
            Instant::now() < deadline,
            "retention never dropped the file"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
        tiering.offload_topic(topic, false).await.unwrap();
    }
}

/// Retention never deletes a file under a read that listed it: with no
/// grace period at all, a file dropped from the manifest while a snapshot
/// lists it stays whole and readable, and goes once the snapshot is dropped.
async fn pinned_reads_outlive_retention(url: &str) {
    let (
        Storage {
            dir: _dir,
            cold,
            tiering,
            ..
        },
        _,
    ) = expiring_topic(url, "pinned", 50, 1_500).await;

    let snapshot = tiering.pin_manifest("pinned", 0).await.unwrap();
    let file = snapshot.manifest.files[0].clone();
    until_retention_drops_all(&tiering, "pinned").await;
    assert_eq!(tiering.cold_stats("pinned", 0).start_offset, 50);
    let path = object_store::path::Path::from(file.path.as_str());
    cold.store.head(&path).await.expect("a pinned file stays");
    assert_eq!(
        count_offsets(&tiering, &file).await,
        (0..50).collect::<Vec<u64>>()
    );

    drop(snapshot);
    tiering.offload_topic("pinned", false).await.unwrap();
    assert!(
        matches!(
            cold.store.head(&path).await,
            Err(object_store::Error::NotFound { .. })
        ),
        "unpinned and past its (zero) grace period, the file is deleted"
    );
}

/// A topic deleted and created again under the same name writes files of
/// the same names; a deletion the old topic's retention had queued must
/// not take the new topic's file.
async fn a_recreated_topic_keeps_its_files(url: &str) {
    let (
        Storage {
            dir: _dir,
            broker,
            cold,
            tiering,
            ..
        },
        records,
    ) = expiring_topic(url, "again", 20, 1_000).await;
    // A pinned read keeps the expired file queued for deletion.
    let pin = tiering.pin_manifest("again", 0).await.unwrap();
    until_retention_drops_all(&tiering, "again").await;
    tiering.delete_topic("again").await.unwrap();
    broker.delete_topic("again").unwrap();

    broker
        .create_topic("again", Some(1), &TopicConfigOverrides::default())
        .unwrap();
    produce(&broker, "again", &records);
    assert_eq!(tiering.offload_topic("again", true).await.unwrap().files, 1);
    let file = tiering
        .pin_manifest("again", 0)
        .await
        .unwrap()
        .manifest
        .files[0]
        .clone();
    drop(pin);
    tiering.offload_topic("again", false).await.unwrap();
    let path = object_store::path::Path::from(file.path.as_str());
    cold.store
        .head(&path)
        .await
        .expect("the new topic's file stays");
    assert_eq!(
        count_offsets(&tiering, &file).await,
        (0..20).collect::<Vec<u64>>()
    );
}

/// Every cold file of `topic` carries a bloom filter on `key` per row
/// group that holds each key of the row group and (these keys, this fpp)
/// rules out one that is absent.
async fn check_key_bloom_filters(f: &Storage, topic: &str) {
    use parquet::file::properties::ReaderProperties;
    use parquet::file::reader::{FileReader, SerializedFileReader};
    use parquet::file::serialized_reader::ReadOptionsBuilder;

    let listed: Vec<object_store::ObjectMeta> = f
        .cold
        .store
        .list(Some(&f.cold.root.topic(topic)))
        .try_collect()
        .await
        .unwrap();
    let files: Vec<_> = listed
        .iter()
        .filter(|o| o.location.as_ref().ends_with(".parquet"))
        .collect();
    assert!(!files.is_empty());
    for object in files {
        let bytes = f
            .cold
            .store
            .get(&object.location)
            .await
            .unwrap()
            .bytes()
            .await
            .unwrap();
        let options = ReadOptionsBuilder::new()
            .with_reader_properties(
                ReaderProperties::builder()
                    .set_read_bloom_filter(true)
                    .build(),
            )
            .build();
        let reader = SerializedFileReader::new_with_options(bytes, options).unwrap();
        let schema = reader.metadata().file_metadata().schema_descr_ptr();
        let key = (0..schema.num_columns())
            .find(|&i| schema.column(i).name() == "key")
            .expect("a key column");
        for g in 0..reader.num_row_groups() {
            let group = reader.get_row_group(g).unwrap();
            let filter = group
                .get_column_bloom_filter(key)
                .unwrap_or_else(|| panic!("{}: no bloom filter on key", object.location));
            let keys: Vec<String> = group
                .get_row_iter(None)
                .unwrap()
                .filter_map(|row| {
                    let row = row.unwrap();
                    row.get_column_iter()
                        .find(|(name, _)| name.as_str() == "key")
                        .and_then(|(_, field)| match field {
                            parquet::record::Field::Str(s) => Some(s.clone()),
                            _ => None,
                        })
                })
                .collect();
            assert!(!keys.is_empty());
            for k in &keys {
                assert!(filter.check(&k.as_str()), "{k} missing from the filter");
            }
            assert!(!filter.check(&"no-such-key"), "an absent key passes");
        }
    }
}

/// A scan for keys prunes by the bloom filters: a key no file holds reads
/// no row group; a key a file holds reads the row groups that have it,
/// and returns only its rows.
/// Partition 0 of `topic` holds record `i = 2 * offset`, keyed `k{i}`
/// unless `i % 7 == 0` (the fixture above).
async fn check_key_pruning(tiering: &Tiering, topic: &str) {
    let pinned = tiering.pin_manifest(topic, 0).await.unwrap();
    assert!(!pinned.manifest.files.is_empty());
    for file in &pinned.manifest.files {
        let scan = |keys| FileScan {
            file,
            offsets: 0..u64::MAX,
            from_ms: None,
            to_ms: None,
            columns: &[1, 3],
            string_views: false,
            keys,
        };
        let absent = ["no-such-key".to_string()];
        let opened = tiering.scan_file(&scan(&absent), 1024).await.unwrap();
        assert_eq!(
            opened.map(|o| o.row_groups),
            Some(0),
            "{}: an absent key read a row group",
            file.path
        );
        let offset = (file.first_offset..=file.last_offset)
            .find(|o| (2 * o) % 7 != 0)
            .expect("a keyed record");
        let present = [format!("k{}", 2 * offset)];
        let opened = tiering
            .scan_file(&scan(&present), 1024)
            .await
            .unwrap()
            .expect("rows");
        assert!(opened.row_groups >= 1);
        let batches: Vec<_> = opened.batches.try_collect().await.unwrap();
        let found = batches.iter().any(|b| {
            let keys = b
                .column(1)
                .as_any()
                .downcast_ref::<arrow_array::StringArray>()
                .unwrap();
            keys.iter().any(|k| k == Some(present[0].as_str()))
        });
        assert!(found, "{}: the key's row group was read", file.path);
        // The key column is filtered before the others are decoded: only
        // the key's one record comes back (regression guard for reading
        // one key's history from files of millions of rows).
        let rows: usize = batches.iter().map(|b| b.num_rows()).sum();
        assert_eq!(rows, 1, "{}: rows of other keys came back", file.path);
    }
}

/// Every offset in `file`, read as a query scan reads it.
async fn count_offsets(tiering: &Tiering, file: &ColdFile) -> Vec<u64> {
    let scan = FileScan {
        file,
        offsets: 0..u64::MAX,
        from_ms: None,
        to_ms: None,
        columns: &[1],
        string_views: false,
        keys: &[],
    };
    let opened = tiering.scan_file(&scan, 1024).await.unwrap().expect("rows");
    let batches: Vec<_> = opened.batches.try_collect().await.unwrap();
    batches
        .iter()
        .flat_map(|b| {
            let offsets = b
                .column(0)
                .as_any()
                .downcast_ref::<arrow_array::Int64Array>()
                .expect("offset column");
            offsets
                .values()
                .iter()
                .map(|&o| o as u64)
                .collect::<Vec<_>>()
        })
        .collect()
}

/// An upload that fails part-way through a file fails the offload (the
/// encoder, still holding chunks, is not left waiting for a reader that is
/// gone), and the next pass, once the store works again, completes it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failed_upload_fails_the_offload_and_the_next_pass_completes() {
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path().join("cold");
    let f = fixture(&format!("file://{}", root.display())).await;
    let overrides = TopicConfigOverrides {
        segment_bytes: Some(256 << 20),
        ..Default::default()
    };
    f.broker.create_topic("stuck", Some(1), &overrides).unwrap();
    // ~40 MB of text zstd cannot shrink much: a file of several 8 MiB parts.
    const ALPHABET: &[u8] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    let mut produced = 0u64;
    for batch in 0..80u64 {
        let records: Vec<serde_json::Value> = (0..500u64)
            .map(|i| {
                let seed = (batch * 500 + i + 1).wrapping_mul(0x9e37_79b9_7f4a_7c15);
                let text: String = noise(1000, seed)
                    .iter()
                    .map(|b| ALPHABET[(b & 63) as usize] as char)
                    .collect();
                json!({ "value": text })
            })
            .collect();
        produce(&f.broker, "stuck", &records);
        produced += records.len() as u64;
    }
    // The partition's data directory cannot be created: every upload fails.
    std::fs::create_dir_all(root.join("stuck")).unwrap();
    std::fs::write(root.join("stuck").join("0"), b"in the way").unwrap();
    let failed = tokio::time::timeout(
        Duration::from_secs(300),
        f.tiering.offload_topic("stuck", true),
    )
    .await
    .expect("a failed upload ends the offload");
    assert!(failed.is_err(), "{failed:?}");
    assert_eq!(f.tiering.cold_stats("stuck", 0).files, 0);

    std::fs::remove_file(root.join("stuck").join("0")).unwrap();
    let done = tokio::time::timeout(
        Duration::from_secs(300),
        f.tiering.offload_topic("stuck", false),
    )
    .await
    .expect("the retry ends")
    .unwrap();
    assert_eq!((done.files, done.records), (1, produced));
    let parts = done.bytes / strata_tiering::upload::UPLOAD_PART_BYTES as u64;
    assert!(
        parts >= 3,
        "{} bytes: too few parts to fill the hand-off",
        done.bytes
    );

    // Read back in pages: records of ~1 KB decode in windows of fewer rows
    // than small ones do, and every record still comes once, in order.
    let mut next = 0u64;
    while next < produced {
        let page = read_records(&f.tiering, "stuck", 0, next, 3000, 4 << 20).await;
        assert!(!page.is_empty(), "stalled at {next}");
        for record in &page {
            assert_eq!(record.offset, next);
            assert_eq!(record.value.len(), 1002, "a JSON string of 1000 characters");
            next += 1;
        }
    }
}

/// A fixture that deletes dropped files after `grace` and merges small
/// files up to 256 KiB, with `topic`: one partition of 4 KiB segments,
/// none kept locally once offloaded.
async fn compacting(url: &str, grace: Duration, topic: &str) -> Storage {
    let config = TieringConfig {
        object_delete_grace: grace,
        compact_target_bytes: 256 << 10,
        ..TieringConfig::default()
    };
    let f = fixture_with(url, config).await;
    let overrides = TopicConfigOverrides {
        segment_bytes: Some(4096),
        local_retention_bytes: Some(0),
        ..Default::default()
    };
    f.broker.create_topic(topic, Some(1), &overrides).unwrap();
    f
}

/// Compaction merges adjacent small files into fewer, bigger ones, with
/// every record still there once (values, keys, timestamps); a read pinned
/// before keeps the old files until it ends; the Delta table follows; a
/// second compaction finds nothing to do.
async fn compaction(url: &str) {
    let f = compacting(url, Duration::ZERO, "merge").await;
    let records: Vec<serde_json::Value> = (0..800)
        .map(|i| {
            json!({"key": format!("k{}", i % 7), "value": {"i": i, "pad": "x".repeat(40)},
                   "timestamp": 1_700_000_000_000i64 + i * 1000})
        })
        .collect();
    for chunk in records.chunks(20) {
        produce(&f.broker, "merge", chunk);
    }
    let before = f.tiering.offload_topic("merge", true).await.unwrap().files;
    assert!(before >= 20, "small segments make many files: {before}");
    let pinned = f.tiering.pin_manifest("merge", 0).await.unwrap();
    let old = pinned.manifest.files.clone();

    let summary = f.tiering.compact_topic("merge").await.unwrap();
    assert!(summary.merges >= 1 && summary.files_in >= 16, "{summary:?}");
    let after = f.tiering.pin_manifest("merge", 0).await.unwrap();
    assert_eq!(
        after.manifest.files.len() as u64,
        before - summary.files_in + summary.merges,
        "{summary:?}"
    );
    assert!(after.manifest.files.len() < old.len());
    let got = read_records(&f.tiering, "merge", 0, 0, 10_000, 64 << 20).await;
    assert_eq!(got.len(), 800, "every record once");
    for (i, record) in got.iter().enumerate() {
        assert_eq!(record.offset, i as u64);
        assert_eq!(record.key, Some(format!("k{}", i % 7)));
        assert_eq!(record.timestamp, 1_700_000_000_000 + i as i64 * 1000);
        let value: serde_json::Value = serde_json::from_str(&record.value).unwrap();
        assert_eq!(value["i"], i);
    }
    // The read pinned before still reads the files it listed.
    let merged_away: Vec<&ColdFile> = old
        .iter()
        .filter(|f| !after.manifest.files.contains(f))
        .collect();
    assert_eq!(merged_away.len() as u64, summary.files_in);
    let gone = object_store::path::Path::from(merged_away[0].path.as_str());
    f.tiering.offload_topic("merge", false).await.unwrap();
    f.cold.store.head(&gone).await.expect("a pinned file stays");
    let pinned_read = f
        .tiering
        .read_pinned_records(&pinned, 0, 10_000, 64 << 20)
        .await
        .unwrap();
    assert_eq!(pinned_read.len(), 800);
    // The table lists the new files, not the old ones.
    let listed: std::collections::HashSet<String> = f
        .tiering
        .table_files("merge")
        .await
        .unwrap()
        .expect("a table")
        .into_keys()
        .collect();
    // Table paths are relative to the topic: `<partition>/<file>`.
    let relative = |path: &str| {
        let mut parts = path.rsplit('/');
        let name = parts.next().unwrap_or_default();
        format!("{}/{name}", parts.next().unwrap_or_default())
    };
    let want: std::collections::HashSet<String> = after
        .manifest
        .files
        .iter()
        .map(|f| relative(&f.path))
        .collect();
    assert_eq!(listed, want);
    drop((pinned, after));
    f.tiering.offload_topic("merge", false).await.unwrap();
    assert!(
        matches!(
            f.cold.store.head(&gone).await,
            Err(object_store::Error::NotFound { .. })
        ),
        "replaced and unpinned, past its (zero) grace period: deleted"
    );
    assert_eq!(f.tiering.compact_topic("merge").await.unwrap().merges, 0);
}

/// The `remove` actions of the table's newest checkpoint, and its version
/// (`None`: no checkpoint yet).
async fn checkpoint_removes(f: &Storage, topic: &str) -> Option<(u64, usize)> {
    let log = f.cold.root.topic(topic).join("_delta_log");
    let last = f
        .cold
        .store
        .get(&log.clone().join("_last_checkpoint"))
        .await
        .ok()?;
    let last: serde_json::Value = serde_json::from_slice(&last.bytes().await.unwrap()).unwrap();
    let version = last["version"].as_u64().expect("a checkpoint version");
    let file = format!("{version:020}.checkpoint.parquet");
    let bytes = f.cold.store.get(&log.join(file.as_str())).await.unwrap();
    let reader = parquet::arrow::arrow_reader::ParquetRecordBatchReaderBuilder::try_new(
        bytes.bytes().await.unwrap(),
    )
    .unwrap()
    .build()
    .unwrap();
    let mut removes = 0;
    for batch in reader {
        let batch = batch.unwrap();
        let remove = batch.column_by_name("remove").expect("a remove column");
        removes += remove.len() - remove.null_count();
    }
    Some((version, removes))
}

/// The table keeps a removed file's tombstone for the deletion grace
/// period, not Delta's default week: once it has passed, a publish writes
/// a checkpoint without the compaction's removes, so readers stop reading
/// them (regression guard: DuckDB's `delta_scan` spent most of a query on
/// them).
async fn expired_removes_leave_the_checkpoint(url: &str) {
    let f = compacting(url, Duration::from_secs(1), "tidy").await;
    let records: Vec<serde_json::Value> = (0..1200)
        .map(|i| json!({"key": format!("k{i}"), "value": {"i": i, "pad": "x".repeat(40)}}))
        .collect();
    for chunk in records.chunks(20) {
        produce(&f.broker, "tidy", chunk);
    }
    f.tiering.offload_topic("tidy", true).await.unwrap();
    let summary = f.tiering.compact_topic("tidy").await.unwrap();
    assert!(summary.files_in >= 16, "{summary:?}");
    f.tiering.offload_topic("tidy", false).await.unwrap();
    let compacted = f.tiering.table_info("tidy").and_then(|t| t.version);
    let compacted = compacted.expect("the table follows the compaction");
    let (version, removes) = eventually(
        Duration::from_secs(30),
        "a checkpoint without the expired removes",
        || async {
            f.tiering.offload_topic("tidy", false).await.unwrap();
            checkpoint_removes(&f, "tidy")
                .await
                .filter(|(_, removes)| *removes == 0)
        },
    )
    .await;
    assert!(version >= compacted, "{version} < {compacted}");
    assert_eq!(removes, 0);
    // The table says how long it keeps them.
    let log = f.cold.root.topic("tidy").join("_delta_log");
    let created = f
        .cold
        .store
        .get(&log.join("00000000000000000000.json"))
        .await
        .unwrap()
        .bytes()
        .await
        .unwrap();
    let created = String::from_utf8_lossy(&created);
    assert!(
        created.contains(r#""delta.deletedFileRetentionDuration":"interval 1 seconds""#),
        "{created}"
    );
    // Every record is still there once.
    let got = read_records(&f.tiering, "tidy", 0, 0, 10_000, 64 << 20).await;
    assert_eq!(got.len(), 1200);
}

/// Every scenario on the store at `url`, each under a prefix of its own.
async fn suite(url: &str) {
    let at = |scenario: &str| match url.strip_suffix("://") {
        Some(scheme) => format!("{scheme}://{scenario}"),
        None => format!("{}/{scenario}", url.trim_end_matches('/')),
    };
    conformance(&at("conformance")).await;
    uploads(&at("uploads")).await;
    reads_across_windows(&at("windows")).await;
    retention(&at("retention")).await;
    pinned_reads_outlive_retention(&at("pinned")).await;
    a_recreated_topic_keeps_its_files(&at("recreated")).await;
    compaction(&at("compaction")).await;
    expired_removes_leave_the_checkpoint(&at("tidy")).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn memory_store() {
    suite("memory://").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn file_store() {
    let dir = tempfile::tempdir().unwrap();
    suite(&format!("file://{}", dir.path().display())).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn s3_store() {
    // Panics in CI when no S3 server is configured: a skipped store is not
    // a passed one.
    let Some((_, url)) = strata_test_support::test_s3("conformance") else {
        eprintln!("STRATA_TEST_S3 is not set: the S3 run of the conformance suite is skipped");
        return;
    };
    suite(&url).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn offload_after_holds_back_young_segments() {
    let cold_dir = tempfile::tempdir().unwrap();
    let url = format!("file://{}", cold_dir.path().display());
    let patient = TieringConfig {
        offload_after: std::time::Duration::from_secs(3600),
        ..TieringConfig::default()
    };
    let f = Storage::open(&url, BrokerConfig::default(), patient).await;
    f.broker
        .create_topic("young", Some(1), &TopicConfigOverrides::default())
        .unwrap();
    f.produce("young", &[json!({"value": 1})]);
    assert_eq!(
        f.tiering.offload_topic("young", true).await.unwrap().files,
        0,
        "sealed a moment ago: too young"
    );
    let f = f.reopen_tiering(TieringConfig::default()).await;
    assert_eq!(
        f.tiering.offload_topic("young", false).await.unwrap().files,
        1
    );
}

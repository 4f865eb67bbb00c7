//! The partition log through its library API: rolling, indexes, recovery.

use std::fs::OpenOptions;
use std::io::Write;
use std::ops::ControlFlow;
use std::path::Path;

use strata_broker::batch::{BatchBuilder, EncodedBatch};
use strata_broker::partition::{LogConfig, Partition};

const CONFIG: LogConfig = LogConfig {
    segment_bytes: 4096,
    segment_ms: 60_000,
    index_interval_bytes: 256,
};

fn batch(first: u64, count: u64, ts: impl Fn(u64) -> i64) -> EncodedBatch {
    let mut builder = BatchBuilder::with_capacity(1024);
    for i in first..first + count {
        let value = format!("{{\"n\":{i}}}");
        let key = format!("k{i}");
        builder.push(ts(i), Some(key.as_bytes()), value.as_bytes(), &[("h", "v")]);
    }
    builder.finish(0, 0)
}

fn append(p: &Partition, first: u64, count: u64, now_ms: i64) -> u64 {
    let appended = p
        .append(&mut batch(first, count, |i| i as i64 * 10), now_ms)
        .unwrap();
    assert_eq!(appended.end, appended.base + count);
    p.wait_durable(appended).unwrap();
    appended.base
}

/// A directory holding a closed partition of offsets 0..400 in batches of
/// 10 (several segments of [`CONFIG`]).
fn closed_partition_of_400() -> tempfile::TempDir {
    let dir = tempfile::tempdir().unwrap();
    let p = Partition::open(0, dir.path(), CONFIG).unwrap();
    for i in 0..40 {
        append(&p, i * 10, 10, 0);
    }
    p.close().unwrap();
    dir
}

fn values(p: &Partition, from: u64) -> Vec<(u64, String)> {
    let mut out = Vec::new();
    let mut cursor = p.cursor(from).unwrap();
    cursor
        .for_each_record(|r| {
            out.push((r.offset, String::from_utf8(r.value.to_vec()).unwrap()));
            ControlFlow::Continue(())
        })
        .unwrap();
    out
}

fn segment_files(dir: &Path) -> Vec<String> {
    let mut names: Vec<String> = std::fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .filter(|n| n.ends_with(".log"))
        .collect();
    names.sort();
    names
}

#[test]
fn rolls_by_size_and_reads_across_segments() {
    let dir = tempfile::tempdir().unwrap();
    let p = Partition::open(0, dir.path(), CONFIG).unwrap();
    for i in 0..100 {
        assert_eq!(append(&p, i * 10, 10, 0), i * 10);
    }
    let segments = p.segments();
    assert!(segments.len() > 5, "{} segments", segments.len());
    for pair in segments.windows(2) {
        assert_eq!(pair[0].end_offset, pair[1].base_offset);
        assert!(pair[0].sealed && pair[0].size_bytes <= CONFIG.segment_bytes);
    }
    assert_eq!(segment_files(dir.path())[0], "00000000000000000000.log");
    assert!(dir.path().join("00000000000000000000.index").exists());
    assert!(dir.path().join("00000000000000000000.timeindex").exists());
    for from in [0, 1, 9, 10, 57, 333, 998, 999, 1000] {
        let got = values(&p, from);
        let want: Vec<(u64, String)> = (from..1000)
            .map(|i| (i, format!("{{\"n\":{i}}}")))
            .collect();
        assert_eq!(got, want, "from {from}");
    }
    assert!(p.cursor(1001).is_err());
}

#[test]
fn rolls_by_time() {
    let dir = tempfile::tempdir().unwrap();
    let config = LogConfig {
        segment_ms: 1000,
        segment_bytes: 1 << 20,
        ..CONFIG
    };
    let p = Partition::open(0, dir.path(), config).unwrap();
    append(&p, 0, 5, 10_000);
    append(&p, 5, 5, 10_999);
    assert_eq!(p.segments().len(), 1);
    append(&p, 10, 5, 11_000);
    assert_eq!(
        p.segments().len(),
        2,
        "the first batch is 1000 ms old: roll"
    );
    assert!(!p.roll_if_due(11_999).unwrap());
    assert!(
        p.roll_if_due(12_000).unwrap(),
        "idle active segment rolls in the background"
    );
    assert_eq!(p.segments().len(), 3);
    assert!(
        !p.roll_if_due(99_000).unwrap(),
        "an empty active segment never rolls"
    );
    assert_eq!(values(&p, 0).len(), 15);
}

#[test]
fn torn_tail_is_truncated_on_open() {
    let dir = tempfile::tempdir().unwrap();
    {
        let p = Partition::open(0, dir.path(), CONFIG).unwrap();
        for i in 0..30 {
            append(&p, i * 10, 10, 0);
        }
        p.close().unwrap();
    }
    let last = dir.path().join(segment_files(dir.path()).last().unwrap());
    let good_len = std::fs::metadata(&last).unwrap().len();
    // A half-written batch: a plausible header followed by garbage.
    let mut torn = batch(300, 10, |_| 0).as_bytes()[..70].to_vec();
    torn[0..8].copy_from_slice(&300u64.to_le_bytes());
    OpenOptions::new()
        .append(true)
        .open(&last)
        .unwrap()
        .write_all(&torn)
        .unwrap();

    let p = Partition::open(0, dir.path(), CONFIG).unwrap();
    assert_eq!(std::fs::metadata(&last).unwrap().len(), good_len);
    assert_eq!(p.end_offset(), 300);
    assert_eq!(values(&p, 0).len(), 300);
    assert_eq!(
        append(&p, 300, 10, 0),
        300,
        "appends continue where the valid log ends"
    );

    // A flipped byte inside the last batch: CRC catches it, the batch is cut.
    p.close().unwrap();
    drop(p);
    let last = dir.path().join(segment_files(dir.path()).last().unwrap());
    let mut bytes = std::fs::read(&last).unwrap();
    let at = bytes.len() - 5;
    bytes[at] ^= 0x40;
    std::fs::write(&last, &bytes).unwrap();
    let p = Partition::open(0, dir.path(), CONFIG).unwrap();
    assert_eq!(p.end_offset(), 300);
}

#[test]
fn missing_or_damaged_indexes_are_rebuilt() {
    let dir = tempfile::tempdir().unwrap();
    let before = {
        let p = Partition::open(0, dir.path(), CONFIG).unwrap();
        let mut last = None;
        for i in 0..50 {
            last = Some(
                p.append(
                    &mut batch(i * 10, 10, |n| 1_000 + ((n * 37) % 500) as i64),
                    0,
                )
                .unwrap(),
            );
        }
        p.wait_durable(last.unwrap()).unwrap();
        p.close().unwrap();
        let lookups: Vec<_> = [0, 1_000, 1_250, 1_499, 1_500]
            .iter()
            .map(|&t| p.pin().offset_for_timestamp(t).unwrap())
            .collect();
        (p.segments(), lookups)
    };
    std::fs::remove_file(dir.path().join("00000000000000000000.index")).unwrap();
    let second = segment_files(dir.path())[1].replace(".log", ".timeindex");
    std::fs::write(dir.path().join(&second), b"garbage").unwrap();
    let p = Partition::open(0, dir.path(), CONFIG).unwrap();
    let lookups: Vec<_> = [0, 1_000, 1_250, 1_499, 1_500]
        .iter()
        .map(|&t| p.pin().offset_for_timestamp(t).unwrap())
        .collect();
    assert_eq!((p.segments(), lookups), before);
    assert!(
        dir.path().join("00000000000000000000.index").exists(),
        "rebuilt index is written back"
    );
    assert_eq!(values(&p, 123).len(), 500 - 123);
}

#[test]
fn offset_for_timestamp_scans_from_the_time_index() {
    let dir = tempfile::tempdir().unwrap();
    let p = Partition::open(0, dir.path(), CONFIG).unwrap();
    // Timestamps go down then up: the earliest record >= T is not the first
    // one in a segment whose max is >= T.
    let ts = |n: u64| {
        if n < 200 {
            10_000 - n as i64 * 10
        } else {
            n as i64 * 100
        }
    };
    let mut last = None;
    for i in 0..40 {
        let mut b = batch(i * 10, 10, ts);
        last = Some(p.append(&mut b, 0).unwrap());
    }
    p.wait_durable(last.unwrap()).unwrap();
    for target in [0, 5_000, 8_005, 10_000, 10_001, 20_000, 39_900, 39_901] {
        let want = (0..400u64).find(|&n| ts(n) >= target).map(|n| (n, ts(n)));
        assert_eq!(
            p.pin().offset_for_timestamp(target).unwrap(),
            want,
            "target {target}"
        );
    }
}

#[test]
fn a_crash_in_the_middle_of_a_roll_drops_the_unfinished_segment() {
    let dir = closed_partition_of_400();
    let files = segment_files(dir.path());
    assert!(files.len() >= 3, "{files:?}");
    // Make the second-to-last segment look like a roll the crash interrupted:
    // its last batch never written, never sealed, while a newer segment exists.
    let victim = dir.path().join(&files[files.len() - 2]);
    let newer = dir.path().join(&files[files.len() - 1]);
    std::fs::remove_file(victim.with_extension("index")).unwrap();
    std::fs::remove_file(victim.with_extension("timeindex")).unwrap();
    let victim_base: u64 = files[files.len() - 2][..20].parse().unwrap();
    let len = std::fs::metadata(&victim).unwrap().len();
    let bytes = std::fs::read(&victim).unwrap();
    // Cut the last batch: find its start by walking the batch lengths.
    let mut pos = 0usize;
    let mut last_start = 0usize;
    let mut last_next = victim_base;
    let mut kept_end = victim_base;
    while pos < len as usize {
        let batch_len = u32::from_le_bytes(bytes[pos + 8..pos + 12].try_into().unwrap()) as usize;
        let base = u64::from_le_bytes(bytes[pos..pos + 8].try_into().unwrap());
        let count = u32::from_le_bytes(bytes[pos + 20..pos + 24].try_into().unwrap()) as u64;
        last_start = pos;
        kept_end = last_next;
        last_next = base + count;
        pos += batch_len;
    }
    let mut cut = bytes[..last_start].to_vec();
    cut.extend_from_slice(&[0u8; 100]); // with direct-I/O padding after it
    std::fs::write(&victim, &cut).unwrap();

    let p = Partition::open(0, dir.path(), CONFIG).unwrap();
    assert!(
        !newer.exists(),
        "the segment after the unfinished roll is dropped"
    );
    assert_eq!(p.end_offset(), kept_end);
    assert_eq!(values(&p, 0).len() as u64, kept_end);
    assert_eq!(append(&p, kept_end, 10, 0), kept_end);
}

#[test]
fn zero_padding_of_an_unsealed_segment_is_trimmed() {
    let dir = tempfile::tempdir().unwrap();
    {
        let p = Partition::open(0, dir.path(), CONFIG).unwrap();
        for i in 0..12 {
            append(&p, i * 10, 10, 0);
        }
        p.close().unwrap();
    }
    let files = segment_files(dir.path());
    let first = dir.path().join(&files[0]);
    let unseal = || {
        for extension in ["index", "timeindex"] {
            std::fs::remove_file(first.with_extension(extension)).unwrap();
        }
    };
    unseal();
    let clean = std::fs::read(&first).unwrap();
    let mut padded = clean.clone();
    padded.extend_from_slice(&[0u8; 1000]);
    std::fs::write(&first, &padded).unwrap();
    let p = Partition::open(0, dir.path(), CONFIG).unwrap();
    assert_eq!(std::fs::read(&first).unwrap(), clean);
    assert_eq!(values(&p, 0).len(), 120);

    // Garbage after a segment whose seal completed (index files present)
    // is damage: refuse to start rather than guess.
    drop(p);
    let mut damaged = clean.clone();
    damaged.extend_from_slice(&[0x17u8; 1000]);
    std::fs::write(&first, &damaged).unwrap();
    assert!(Partition::open(0, dir.path(), CONFIG).is_err());
    // Without index files it is the torn end of a roll: cut, and keep going.
    unseal();
    let p = Partition::open(0, dir.path(), CONFIG).unwrap();
    assert_eq!(std::fs::read(&first).unwrap(), clean);
    assert_eq!(values(&p, 0).len(), 120);
}

#[test]
fn deleting_segments_never_breaks_a_read_in_progress() {
    let dir = tempfile::tempdir().unwrap();
    let p = Partition::open(0, dir.path(), CONFIG).unwrap();
    for i in 0..50 {
        append(&p, i * 10, 10, 0);
    }
    let mut cursor = p.cursor(0).unwrap();
    let sealed_end = p
        .segments()
        .iter()
        .rev()
        .find(|s| s.sealed)
        .unwrap()
        .end_offset;
    let removed = p.delete_segments_below(sealed_end).unwrap();
    assert!(!removed.is_empty());
    assert_eq!(p.start_offset(), sealed_end);
    assert!(
        !dir.path().join("00000000000000000000.log").exists(),
        "files are gone"
    );
    // The cursor made before the deletion still reads every record, in order.
    let mut next = 0;
    cursor
        .for_each_record(|r| {
            assert_eq!(r.offset, next);
            next += 1;
            ControlFlow::Continue(())
        })
        .unwrap();
    assert_eq!(next, 500);
    assert!(
        p.cursor(0).is_err(),
        "new reads start at the new start offset"
    );
}

/// A produce whose records go to several partitions is all or nothing: when
/// one partition refuses (here: closed), none of the others takes its
/// share, so a retry doubles nothing.
#[test]
fn a_produce_one_partition_refuses_writes_nothing() {
    use strata_broker::produce::{BodyFormat, parse_body};
    use strata_broker::{Broker, BrokerConfig, TopicConfigOverrides};
    let dir = tempfile::tempdir().unwrap();
    let broker = Broker::open(BrokerConfig {
        data_dir: dir.path().to_path_buf(),
        ..BrokerConfig::default()
    })
    .unwrap();
    let topic = broker
        .create_topic("t", Some(2), &TopicConfigOverrides::default())
        .unwrap();
    let body = r#"{"records":[{"value":1,"partition":0},{"value":2,"partition":1}]}"#;
    let records = parse_body(body.as_bytes(), BodyFormat::Json, 1 << 20).unwrap();
    topic.partitions()[1].close().unwrap();
    assert!(topic.produce(&records, 0).is_err(), "partition 1 is closed");

    let alone = r#"{"records":[{"value":3,"partition":0}]}"#;
    let records = parse_body(alone.as_bytes(), BodyFormat::Json, 1 << 20).unwrap();
    let acks = topic.produce(&records, 0).unwrap();
    assert_eq!(
        acks[0].offset, 0,
        "partition 0 took nothing from the refused produce"
    );
    assert_eq!(
        values(&topic.partitions()[0], 0),
        vec![(0, "3".to_string())]
    );
}

/// A sealed segment whose index files are damaged and whose log is damaged
/// too is reported as corrupt: it is not mistaken for a roll a crash cut
/// short, which would truncate it and drop the (acknowledged) segments after it.
#[test]
fn a_damaged_sealed_segment_is_corrupt_not_an_unfinished_roll() {
    let dir = closed_partition_of_400();
    let files = segment_files(dir.path());
    assert!(files.len() >= 3, "{files:?}");
    let victim = dir.path().join(&files[0]);
    std::fs::write(victim.with_extension("timeindex"), b"garbage").unwrap();
    let mut bytes = std::fs::read(&victim).unwrap();
    let middle = bytes.len() / 2;
    bytes[middle] ^= 0xff;
    std::fs::write(&victim, &bytes).unwrap();

    let Err(error) = Partition::open(0, dir.path(), CONFIG) else {
        panic!("a damaged sealed segment opened");
    };
    assert!(error.to_string().contains("damaged"), "{error}");
    assert_eq!(
        segment_files(dir.path()),
        files,
        "nothing truncated or dropped"
    );
    assert_eq!(std::fs::read(&victim).unwrap(), bytes);
}

/// A batch's base offset is not covered by its CRC: a damaged one is caught
/// by the readers' check that offsets continue, not served as other offsets.
#[test]
fn a_damaged_base_offset_is_caught_by_readers() {
    let dir = closed_partition_of_400();
    let first = dir.path().join(&segment_files(dir.path())[0]);
    let mut bytes = std::fs::read(&first).unwrap();
    // The second batch's base offset (the first 8 bytes of the batch).
    let second = u32::from_le_bytes(bytes[8..12].try_into().unwrap()) as usize;
    bytes[second] ^= 0x40;
    std::fs::write(&first, &bytes).unwrap();

    let p = Partition::open(0, dir.path(), CONFIG).unwrap();
    let mut cursor = p.cursor(0).unwrap();
    let mut seen = Vec::new();
    let read = cursor.for_each_record(|r| {
        seen.push(r.offset);
        ControlFlow::Continue(())
    });
    let error = read.expect_err("the damage is reported");
    assert!(error.to_string().contains("expected 10"), "{error}");
    assert_eq!(
        seen,
        (0..10).collect::<Vec<u64>>(),
        "only the records before it"
    );
}

/// A roll that fails before it changed anything (here the next segment's
/// name is taken by a directory) is retryable: the partition stays
/// writable, the next roll succeeds, and offsets stay dense.
#[test]
fn a_failed_roll_leaves_the_partition_writable() {
    let dir = tempfile::tempdir().unwrap();
    {
        let p = Partition::open(0, dir.path(), CONFIG).unwrap();
        append(&p, 0, 10, 0);
        let blocker = dir.path().join("00000000000000000010.log");
        std::fs::create_dir(&blocker).unwrap();
        let refused = p.roll().expect_err("the name is taken");
        assert!(refused.to_string().contains("could not roll"), "{refused}");
        assert_eq!(append(&p, 10, 10, 0), 10, "still writable");
        std::fs::remove_dir(&blocker).unwrap();
        assert!(p.roll().unwrap());
        assert_eq!(append(&p, 20, 10, 0), 20);
        p.close().unwrap();
    }
    let p = Partition::open(0, dir.path(), CONFIG).unwrap();
    let offsets: Vec<u64> = values(&p, 0).into_iter().map(|(o, _)| o).collect();
    assert_eq!(offsets, (0..30).collect::<Vec<u64>>());
}

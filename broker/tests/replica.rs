//! What replication does to a partition's log (`Partition::read_log`,
//! `append_replica`, the high watermark, `truncate_from`, the epoch
//! history), through the library API: a follower that copies a leader's
//! batches holds the same offsets, batch boundaries and bytes.

use std::ops::ControlFlow;

use strata_broker::batch::{BatchBuilder, EncodedBatch};
use strata_broker::epochs::EpochStart;
use strata_broker::partition::{LogConfig, Partition};

const CONFIG: LogConfig = LogConfig {
    segment_bytes: 4096,
    segment_ms: 60_000,
    index_interval_bytes: 256,
};

fn batch(tag: &str, first: u64, count: u64) -> EncodedBatch {
    let mut builder = BatchBuilder::with_capacity(1024);
    for i in first..first + count {
        let value = format!("{{\"{tag}\":{i}}}");
        builder.push(i as i64, Some(b"k"), value.as_bytes(), &[]);
    }
    builder.finish(0, 0)
}

fn append(p: &Partition, tag: &str, first: u64, count: u64) {
    let appended = p.append(&mut batch(tag, first, count), 0).unwrap();
    assert_eq!(appended.base, first);
    p.wait_durable(appended).unwrap();
}

fn values(p: &Partition) -> Vec<(u64, String)> {
    let mut out = Vec::new();
    p.cursor(p.start_offset())
        .unwrap()
        .for_each_record(|r| {
            out.push((r.offset, String::from_utf8(r.value.to_vec()).unwrap()));
            ControlFlow::Continue(())
        })
        .unwrap();
    out
}

/// Copies everything the leader has that the follower lacks, in fetches
/// of at most `max_bytes`.
fn catch_up(leader: &Partition, follower: &Partition, max_bytes: usize) -> usize {
    let mut fetches = 0;
    while follower.log_end_offset() < leader.log_end_offset() {
        let fetched = leader
            .read_log(follower.log_end_offset(), max_bytes)
            .unwrap();
        assert!(!fetched.bytes.is_empty());
        let appended = follower.append_replica(&fetched.bytes, 0).unwrap().unwrap();
        follower.wait_durable(appended).unwrap();
        assert_eq!(follower.log_end_offset(), fetched.next_offset);
        fetches += 1;
    }
    fetches
}

#[test]
fn a_follower_holds_the_same_offsets_batches_and_bytes_across_segments() {
    let (ld, fd) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    let leader = Partition::open(0, ld.path(), CONFIG).unwrap();
    let follower = Partition::open(0, fd.path(), CONFIG).unwrap();
    for i in 0..60 {
        append(&leader, "a", i * 7, 7);
    }
    assert!(
        leader.segments().len() > 3,
        "the test needs several segments"
    );
    let fetches = catch_up(&leader, &follower, 1000);
    assert!(fetches > 5, "small fetches take several rounds");
    assert_eq!(values(&follower), values(&leader));
    let all = |p: &Partition| p.read_log(0, usize::MAX).unwrap();
    assert_eq!(all(&follower), all(&leader), "same batches, byte for byte");
    // A fetch from the middle of a batch is refused, not answered with a
    // batch the follower would misplace.
    assert!(leader.read_log(3, 1000).is_err());
    // A batch that does not start at the follower's end is refused.
    let far = leader.read_log(14, 100).unwrap();
    assert!(follower.append_replica(&far.bytes, 0).is_err());
    // Damaged bytes are refused, and nothing of them lands.
    append(&leader, "a", 420, 7);
    let mut next = leader.read_log(420, 1000).unwrap();
    let last = next.bytes.len() - 1;
    next.bytes[last] ^= 0xff;
    assert!(follower.append_replica(&next.bytes, 0).is_err());
    assert_eq!(follower.log_end_offset(), 420);
}

#[test]
fn readers_see_only_what_is_below_the_high_watermark() {
    let dir = tempfile::tempdir().unwrap();
    let p = Partition::open(0, dir.path(), CONFIG).unwrap();
    p.set_high_watermark(Some(0));
    append(&p, "a", 0, 10);
    assert_eq!(p.log_end_offset(), 10);
    assert_eq!(p.end_offset(), 0, "durable is not committed");
    assert!(values(&p).is_empty());
    let watch = p.subscribe();
    p.set_high_watermark(Some(6));
    assert_eq!(
        *watch.borrow(),
        6,
        "long polls hear of the new high watermark"
    );
    assert_eq!(p.end_offset(), 6);
    // The high watermark bounds whole records, not batches.
    assert_eq!(values(&p).len(), 6);
    p.set_high_watermark(None);
    assert_eq!(p.end_offset(), 10);
    assert_eq!(p.high_watermark(), None);
}

#[test]
fn truncation_cuts_back_to_a_batch_boundary_and_the_log_goes_on_from_there() {
    let (ld, fd) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    let leader = Partition::open(0, ld.path(), CONFIG).unwrap();
    let follower = Partition::open(0, fd.path(), CONFIG).unwrap();
    for i in 0..40 {
        append(&leader, "a", i * 10, 10);
    }
    catch_up(&leader, &follower, 5000);
    // The follower had records the leader never acknowledged (a deposed
    // leader's tail), across a segment boundary.
    for i in 40..60 {
        append(&follower, "stale", i * 10, 10);
    }
    follower
        .record_epoch(EpochStart { epoch: 1, start: 0 })
        .unwrap();
    follower
        .record_epoch(EpochStart {
            epoch: 2,
            start: 400,
        })
        .unwrap();
    assert!(follower.truncate_from(395).is_err(), "not a batch boundary");
    follower.truncate_from(400).unwrap();
    assert_eq!(follower.log_end_offset(), 400);
    assert_eq!(
        follower.leader_epochs().latest(),
        Some(EpochStart { epoch: 1, start: 0 }),
        "the entry of the removed records goes with them"
    );
    for i in 40..50 {
        append(&leader, "b", i * 10, 10);
    }
    catch_up(&leader, &follower, 5000);
    assert_eq!(values(&follower), values(&leader));
    assert!(!values(&follower).iter().any(|(_, v)| v.contains("stale")));
    // After a restart too.
    follower.close().unwrap();
    drop(follower);
    let reopened = Partition::open(0, fd.path(), CONFIG).unwrap();
    assert_eq!(values(&reopened), values(&leader));
    assert_eq!(reopened.leader_epochs().latest().unwrap().epoch, 1);
    // Truncating to the very start of a segment, and appending after it.
    let base = reopened.segments()[2].base_offset;
    reopened.truncate_from(base).unwrap();
    assert_eq!(reopened.log_end_offset(), base);
    append(&reopened, "c", base, 3);
    assert_eq!(values(&reopened).last().unwrap().0, base + 2);
}

#[test]
fn epoch_history_answers_where_an_epoch_ends() {
    let dir = tempfile::tempdir().unwrap();
    let p = Partition::open(0, dir.path(), CONFIG).unwrap();
    assert!(p.record_epoch(EpochStart { epoch: 3, start: 0 }).unwrap());
    append(&p, "a", 0, 10);
    assert!(
        p.record_epoch(EpochStart {
            epoch: 5,
            start: 10
        })
        .unwrap()
    );
    append(&p, "a", 10, 5);
    assert!(
        !p.record_epoch(EpochStart {
            epoch: 4,
            start: 15
        })
        .unwrap()
    );
    assert_eq!(
        p.epoch_end(3),
        Some(EpochStart {
            epoch: 3,
            start: 10
        })
    );
    assert_eq!(
        p.epoch_end(4),
        Some(EpochStart {
            epoch: 3,
            start: 10
        })
    );
    assert_eq!(
        p.epoch_end(5),
        Some(EpochStart {
            epoch: 5,
            start: 15
        })
    );
    assert_eq!(p.epoch_end(2), None);
}

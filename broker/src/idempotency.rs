//! Idempotent produce: a request retried with the same `Idempotency-Key`
//! and body writes nothing twice and answers with the offsets of the first
//! attempt, also after a restart or a crash.
//!
//! The log is the record of truth: every batch an idempotent request
//! writes carries a [`ProducerTag`] (the key and a hash of the body) in its
//! header, so the tag is durable exactly when the records are, and it is
//! replicated and offloaded with them. This module's [`IdempotencyIndex`]
//! is derived data: which partitions each recent key landed in, rebuilt
//! from the local log when a topic opens ([`recover_partition`]).
//!
//! Granularity is the partition: an attempt writes one batch per partition
//! it touches, holding every record of the request assigned there
//! (assignment is a pure function of the body and the key, see
//! `Topic::assign`), so a retry after a partial failure writes exactly
//! the partitions that have no batch for the key yet.
//!
//! Bounds: keys older than the topic's `idempotency_window_ms` are
//! forgotten; so are keys whose batches local retention deleted before a
//! restart (the index is rebuilt from local segments only). Memory is a
//! few hundred bytes per key in the window.

use std::collections::{HashMap, HashSet, VecDeque};
use std::os::unix::fs::FileExt;
use std::time::SystemTime;

use parking_lot::{Condvar, Mutex};

pub use crate::batch::ProducerTag;
use crate::batch::{BATCH_HEADER_LEN, BatchHeader};
use crate::cursor::PinnedLog;
use crate::error::{BrokerError, IoContext, Result};

/// Longest accepted idempotency key, in bytes.
pub const MAX_KEY_LEN: usize = 128;

/// Checks an `Idempotency-Key` (as the header's bytes): 1 to
/// [`MAX_KEY_LEN`] printable ASCII characters (space to `~`).
pub fn check_key(key: &[u8]) -> Result<&str> {
    let printable = key.iter().all(|b| (0x20..=0x7e).contains(b));
    match std::str::from_utf8(key) {
        Ok(text) if printable && !key.is_empty() && key.len() <= MAX_KEY_LEN => Ok(text),
        _ => Err(BrokerError::InvalidRequest(format!(
            "Idempotency-Key must be 1 to {MAX_KEY_LEN} printable ASCII characters"
        ))),
    }
}

/// The hash that tells a retry (same body) from a different request
/// reusing a key: 128-bit XXH3 of the request body's bytes.
pub fn body_hash(body: &[u8]) -> u128 {
    twox_hash::XxHash3_128::oneshot(body)
}

/// One attempt's batch in one partition.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Landed {
    pub partition: u32,
    pub base_offset: u64,
    /// The batch's append time: the timestamp of its records that had none.
    pub append_time: i64,
}

/// What the index knows of one key.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Entry {
    pub body_hash: u128,
    /// Append time of the key's first batch; the window counts from here.
    pub first_seen: i64,
    pub landed: Vec<Landed>,
}

#[derive(Debug, Default)]
struct Inner {
    entries: HashMap<String, Entry>,
    /// Keys by `first_seen`, oldest first, for expiry.
    order: VecDeque<(i64, String)>,
    /// Keys of requests running now: a second request with one waits.
    in_flight: HashSet<String>,
}

/// The recent idempotency keys of one topic and where they landed.
#[derive(Debug, Default)]
pub(crate) struct IdempotencyIndex {
    inner: Mutex<Inner>,
    released: Condvar,
}

impl IdempotencyIndex {
    /// Claims `key` for one request: waits while another request with the
    /// same key runs, forgets keys older than `window_ms`, and returns
    /// what is known of the key. The claim ends when dropped.
    pub(crate) fn claim(&self, key: &str, now_ms: i64, window_ms: i64) -> Claim<'_> {
        let mut inner = self.inner.lock();
        while inner.in_flight.contains(key) {
            self.released.wait(&mut inner);
        }
        let horizon = now_ms.saturating_sub(window_ms);
        while inner.order.front().is_some_and(|(t, _)| *t < horizon) {
            if let Some((t, old)) = inner.order.pop_front()
                && inner.entries.get(&old).is_some_and(|e| e.first_seen == t)
            {
                inner.entries.remove(&old);
            }
        }
        inner.in_flight.insert(key.to_string());
        // The queue is only roughly in time order (requests take `now`
        // before waiting here): the key's own age decides.
        let entry = inner
            .entries
            .get(key)
            .filter(|e| e.first_seen >= horizon)
            .cloned();
        Claim {
            index: self,
            key: key.to_string(),
            entry,
        }
    }

    /// Adds the batches found in the log at start-up, oldest first (so
    /// that expiry sees keys in time order and a key reused after its
    /// window ends up naming the newer request).
    pub(crate) fn recover(&self, mut found: Vec<(String, u128, Landed)>) {
        found.sort_by_key(|(_, _, landed)| landed.append_time);
        let mut inner = self.inner.lock();
        for (key, body_hash, landed) in found {
            Self::add(&mut inner, &key, body_hash, landed);
        }
    }

    fn add(inner: &mut Inner, key: &str, body_hash: u128, landed: Landed) {
        match inner.entries.get_mut(key) {
            // A key reused after its window names a new request.
            Some(entry) if entry.body_hash == body_hash => {
                entry.first_seen = entry.first_seen.min(landed.append_time);
                entry.landed.retain(|l| l.partition != landed.partition);
                entry.landed.push(landed);
            }
            _ => {
                inner.entries.insert(
                    key.to_string(),
                    Entry {
                        body_hash,
                        first_seen: landed.append_time,
                        landed: vec![landed],
                    },
                );
                inner.order.push_back((landed.append_time, key.to_string()));
            }
        }
    }

    /// Number of keys remembered.
    #[cfg(test)]
    fn len(&self) -> usize {
        self.inner.lock().entries.len()
    }
}

/// One request's hold on its key (see [`IdempotencyIndex::claim`]).
#[derive(Debug)]
pub(crate) struct Claim<'a> {
    index: &'a IdempotencyIndex,
    key: String,
    /// What earlier attempts left, if any within the window.
    pub entry: Option<Entry>,
}

impl Claim<'_> {
    /// Records a batch of this request that is durable.
    pub(crate) fn landed(&mut self, body_hash: u128, landed: Landed) {
        let mut inner = self.index.inner.lock();
        // Another claim may have expired the key meanwhile: what earlier
        // attempts wrote must not be forgotten by this one.
        if !inner.entries.contains_key(&self.key)
            && let Some(earlier) = self.entry.clone()
        {
            inner
                .order
                .push_back((earlier.first_seen, self.key.clone()));
            inner.entries.insert(self.key.clone(), earlier);
        }
        IdempotencyIndex::add(&mut inner, &self.key, body_hash, landed);
    }
}

impl Drop for Claim<'_> {
    fn drop(&mut self) {
        self.index.inner.lock().in_flight.remove(&self.key);
        self.index.released.notify_all();
    }
}

/// Collects every tagged batch of partition `id` appended at or after
/// `since` (epoch ms), for [`IdempotencyIndex::recover`]. Only segments
/// modified since then are looked at, and of their batches only the header
/// and the tag are read (one small read per batch, not the records).
pub(crate) fn recover_partition(
    found: &mut Vec<(String, u128, Landed)>,
    id: u32,
    log: &PinnedLog,
    since: i64,
) -> Result<()> {
    for segment in log.segments() {
        let file = std::fs::File::open(&segment.path)
            .context(|| format!("opening {}", segment.path.display()))?;
        let modified = file
            .metadata()
            .and_then(|m| m.modified())
            .ok()
            .and_then(|t| t.duration_since(SystemTime::UNIX_EPOCH).ok())
            .map_or(i64::MAX, |d| {
                i64::try_from(d.as_millis()).unwrap_or(i64::MAX)
            });
        if modified < since {
            continue;
        }
        let mut head = [0u8; BATCH_HEADER_LEN + 1 + MAX_KEY_LEN + 16];
        let mut at = 0u64;
        while at + BATCH_HEADER_LEN as u64 <= segment.size_bytes {
            let want = head.len().min((segment.size_bytes - at) as usize);
            let got = &mut head[..want];
            file.read_exact_at(got, at)
                .context(|| format!("reading {}", segment.path.display()))?;
            // Only whole batches are visible; a header that does not parse
            // ends the scan of this segment (recovery validated the rest).
            let Ok(header) = BatchHeader::parse(got) else {
                break;
            };
            if header.append_time >= since
                && let Some(tag) = header.producer
            {
                let landed = Landed {
                    partition: id,
                    base_offset: header.base_offset,
                    append_time: header.append_time,
                };
                found.push((tag.key.to_string(), tag.body_hash, landed));
            }
            at += header.len as u64;
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn landed(partition: u32, base_offset: u64, append_time: i64) -> Landed {
        Landed {
            partition,
            base_offset,
            append_time,
        }
    }

    #[test]
    fn keys_are_checked() {
        assert_eq!(check_key(b"a").ok(), Some("a"));
        assert!(check_key(b"order-42 retry ~").is_ok());
        assert!(check_key(&[b'k'; MAX_KEY_LEN]).is_ok());
        assert!(check_key(b"").is_err());
        assert!(check_key(&[b'k'; MAX_KEY_LEN + 1]).is_err());
        assert!(check_key(b"tab\there").is_err());
        assert!(check_key("é".as_bytes()).is_err());
    }

    #[test]
    fn a_claim_sees_what_earlier_attempts_left_until_the_window_ends() {
        let index = IdempotencyIndex::default();
        {
            let mut claim = index.claim("k", 1_000, 500);
            assert_eq!(claim.entry, None);
            claim.landed(7, landed(0, 10, 1_000));
            claim.landed(7, landed(2, 4, 1_000));
        }
        let claim = index.claim("k", 1_400, 500);
        let entry = claim.entry.clone().expect("remembered");
        assert_eq!(entry.body_hash, 7);
        assert_eq!(
            entry.landed,
            vec![landed(0, 10, 1_000), landed(2, 4, 1_000)]
        );
        drop(claim);
        // Past the window the key is forgotten (and may name a new request).
        let claim = index.claim("k", 1_501, 500);
        assert_eq!(claim.entry, None);
        assert_eq!(index.len(), 0);
    }

    #[test]
    fn a_second_request_with_a_key_waits_for_the_first() {
        let index = std::sync::Arc::new(IdempotencyIndex::default());
        let mut first = index.claim("k", 0, 1_000);
        let second = {
            let index = index.clone();
            std::thread::spawn(move || index.claim("k", 0, 1_000).entry.clone())
        };
        // The second claim cannot return before the first lands and ends.
        first.landed(1, landed(0, 0, 0));
        drop(first);
        let seen = second.join().expect("the waiting claim");
        assert_eq!(seen.map(|e| e.landed.len()), Some(1));
    }

    #[test]
    fn a_key_reused_after_its_window_names_the_newer_request() {
        let index = IdempotencyIndex::default();
        let tag_a = ProducerTag {
            key: "k",
            body_hash: 1,
        };
        let tag_b = ProducerTag {
            key: "k",
            body_hash: 2,
        };
        // Found newest first (another partition was scanned first).
        index.recover(vec![
            (tag_b.key.to_string(), tag_b.body_hash, landed(1, 5, 10_000)),
            (tag_a.key.to_string(), tag_a.body_hash, landed(0, 0, 0)),
        ]);
        let claim = index.claim("k", 10_000, 5_000);
        assert_eq!(claim.entry.as_ref().map(|e| e.body_hash), Some(2));
    }

    #[test]
    fn a_retry_keeps_earlier_partitions_when_its_key_expires_meanwhile() {
        let index = IdempotencyIndex::default();
        {
            let mut first = index.claim("k", 0, 100);
            first.landed(9, landed(0, 0, 0));
        }
        let mut retry = index.claim("k", 99, 100);
        assert!(retry.entry.is_some());
        // Another request's claim expires "k" while the retry runs.
        drop(index.claim("other", 150, 100));
        retry.landed(9, landed(1, 0, 99));
        drop(retry);
        let entry = index.claim("k", 100, 100).entry.clone();
        let partitions: Vec<u32> =
            entry.map_or(vec![], |e| e.landed.iter().map(|l| l.partition).collect());
        assert_eq!(partitions, vec![0, 1]);
    }

    #[test]
    fn a_key_past_its_window_is_new_even_behind_younger_keys() {
        let index = IdempotencyIndex::default();
        // "young" is queued first but "old" is older (taken before a wait).
        index
            .claim("young", 100, 1_000)
            .landed(1, landed(0, 1, 100));
        index.claim("old", 100, 1_000).landed(2, landed(0, 0, 50));
        let claim = index.claim("old", 1_060, 1_000);
        assert_eq!(claim.entry, None);
    }
}

//! A partition's leader-epoch history: which leader epoch wrote which
//! offsets (Kafka's `leader-epoch-checkpoint`, KIP-101).
//!
//! Each entry `(epoch, start)` says that records from `start` on were
//! written under `epoch`, up to the next entry's start. A leader adds an
//! entry when it takes over (at its log end); a follower copies the
//! leader's entries as it copies the records they cover. When leadership
//! changes, a follower asks the new leader where its own latest epoch ends
//! in the leader's log ([`LeaderEpochs::end_of`]) and truncates there:
//! records past that point were never acknowledged (the new leader, an
//! in-sync replica, has every acknowledged record) and may differ from the
//! leader's. Truncating to a high watermark instead loses acknowledged
//! records in some double failures (KIP-101's examples).
//!
//! The file is `leader-epochs` in the partition's directory, one
//! `epoch start` line per entry, replaced atomically on every change.
//! A missing file is an empty history (a partition that never had a
//! leader, or one from before the cluster existed: epoch 0 from offset 0).

use std::path::{Path, PathBuf};

use crate::error::{BrokerError, IoContext, Result};

/// The file name, in the partition's directory.
pub const EPOCHS_FILE: &str = "leader-epochs";

/// One entry: `epoch` wrote the records from `start` on.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct EpochStart {
    pub epoch: u64,
    pub start: u64,
}

/// The history of one partition, oldest first; epochs and starts both
/// never decrease.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct LeaderEpochs {
    entries: Vec<EpochStart>,
}

impl LeaderEpochs {
    /// Reads the history in `dir` (empty when there is none).
    pub fn load(dir: &Path) -> Result<Self> {
        let path = dir.join(EPOCHS_FILE);
        let text = match std::fs::read_to_string(&path) {
            Ok(text) => text,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Self::default()),
            Err(e) => return Err(e).context(|| format!("reading {}", path.display())),
        };
        Self::parse(&text).map_err(|message| BrokerError::Corrupt {
            path: path.display().to_string(),
            message,
        })
    }

    fn parse(text: &str) -> std::result::Result<Self, String> {
        let mut history = Self::default();
        for (n, line) in text
            .lines()
            .enumerate()
            .filter(|(_, l)| !l.trim().is_empty())
        {
            let mut fields = line.split_ascii_whitespace().map(str::parse::<u64>);
            let (Some(Ok(epoch)), Some(Ok(start)), None) =
                (fields.next(), fields.next(), fields.next())
            else {
                return Err(format!("line {} is not `epoch start`: {line:?}", n + 1));
            };
            if !history.push(EpochStart { epoch, start }) {
                return Err(format!("line {} goes backwards: {line:?}", n + 1));
            }
        }
        Ok(history)
    }

    fn path(dir: &Path) -> PathBuf {
        dir.join(EPOCHS_FILE)
    }

    /// Writes the history to `dir` atomically and durably.
    pub fn save(&self, dir: &Path) -> Result<()> {
        let text: String = self
            .entries
            .iter()
            .map(|e| format!("{} {}\n", e.epoch, e.start))
            .collect();
        crate::durable::write_atomic(&Self::path(dir), text.as_bytes())
    }

    /// The entries, oldest first.
    pub fn entries(&self) -> &[EpochStart] {
        &self.entries
    }

    /// The newest epoch that wrote records here (or took over), if any.
    pub fn latest(&self) -> Option<EpochStart> {
        self.entries.last().copied()
    }

    /// Adds `entry` if its epoch is newer than the latest; returns false
    /// (and changes nothing) when it would make the history go backwards.
    /// An entry for the latest epoch again is a no-op that returns true.
    pub fn push(&mut self, entry: EpochStart) -> bool {
        match self.entries.last_mut() {
            Some(last) if entry.epoch == last.epoch => true,
            Some(last) if entry.epoch < last.epoch || entry.start < last.start => false,
            Some(last) if entry.start == last.start => {
                // The previous epoch wrote nothing: only the newer one counts.
                *last = entry;
                true
            }
            _ => {
                self.entries.push(entry);
                true
            }
        }
    }

    /// Where `epoch` ends in this log: the largest epoch at or below it
    /// that this history knows, and the offset where the next epoch
    /// starts (`log_end` when it is the latest). `None` when every entry
    /// is newer than `epoch` (the asker must truncate to the first entry's
    /// start).
    pub fn end_of(&self, epoch: u64, log_end: u64) -> Option<EpochStart> {
        let at = self.entries.partition_point(|e| e.epoch <= epoch);
        let found = self.entries.get(at.checked_sub(1)?)?;
        let end = self.entries.get(at).map_or(log_end, |next| next.start);
        Some(EpochStart {
            epoch: found.epoch,
            start: end,
        })
    }

    /// Forgets entries for records from `offset` on (after a truncation).
    pub fn truncate_from(&mut self, offset: u64) {
        self.entries.retain(|e| e.start < offset);
    }

    /// The entries a follower fetching from `offset` needs: the one in
    /// force at `offset` and every later one.
    pub fn since(&self, offset: u64) -> Vec<EpochStart> {
        let at = self.entries.partition_point(|e| e.start <= offset);
        self.entries[at.saturating_sub(1)..].to_vec()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn history(entries: &[(u64, u64)]) -> LeaderEpochs {
        let mut h = LeaderEpochs::default();
        for &(epoch, start) in entries {
            assert!(h.push(EpochStart { epoch, start }));
        }
        h
    }

    #[test]
    fn end_of_an_epoch_is_the_next_start_or_the_log_end() {
        let h = history(&[(1, 0), (3, 10), (4, 25)]);
        let end = |e| h.end_of(e, 40).map(|x| (x.epoch, x.start));
        assert_eq!(end(0), None);
        assert_eq!(end(1), Some((1, 10)));
        // Epoch 2 never wrote here: its records (if any elsewhere) end
        // where epoch 1's do.
        assert_eq!(end(2), Some((1, 10)));
        assert_eq!(end(3), Some((3, 25)));
        assert_eq!(end(4), Some((4, 40)));
        assert_eq!(end(9), Some((4, 40)));
    }

    #[test]
    fn history_never_goes_backwards() {
        let mut h = history(&[(2, 5)]);
        assert!(!h.push(EpochStart { epoch: 1, start: 9 }));
        assert!(!h.push(EpochStart { epoch: 3, start: 4 }));
        assert!(h.push(EpochStart { epoch: 2, start: 7 }));
        assert_eq!(h.entries(), &[EpochStart { epoch: 2, start: 5 }]);
        // An epoch that wrote nothing is replaced by the next.
        assert!(h.push(EpochStart { epoch: 3, start: 5 }));
        assert_eq!(h.entries(), &[EpochStart { epoch: 3, start: 5 }]);
    }

    #[test]
    fn truncation_and_since() {
        let mut h = history(&[(1, 0), (2, 10), (5, 20)]);
        assert_eq!(h.since(15).len(), 2);
        assert_eq!(h.since(0).len(), 3);
        assert_eq!(
            h.since(25),
            vec![EpochStart {
                epoch: 5,
                start: 20
            }]
        );
        h.truncate_from(20);
        assert_eq!(
            h.latest(),
            Some(EpochStart {
                epoch: 2,
                start: 10
            })
        );
    }

    #[test]
    fn round_trips_through_its_file_and_refuses_damage() {
        let dir = tempfile::tempdir().unwrap();
        assert_eq!(
            LeaderEpochs::load(dir.path()).unwrap(),
            LeaderEpochs::default()
        );
        let h = history(&[(1, 0), (4, 100)]);
        h.save(dir.path()).unwrap();
        assert_eq!(LeaderEpochs::load(dir.path()).unwrap(), h);
        std::fs::write(dir.path().join(EPOCHS_FILE), "4 100\n1 0\n").unwrap();
        assert!(LeaderEpochs::load(dir.path()).is_err());
        std::fs::write(dir.path().join(EPOCHS_FILE), "x\n").unwrap();
        assert!(LeaderEpochs::load(dir.path()).is_err());
    }
}

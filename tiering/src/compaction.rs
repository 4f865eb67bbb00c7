//! Compaction: adjacent small files of a partition merged into one file
//! near a target size.
//!
//! Each sealed segment is one file, so a topic with little traffic, or a
//! short `segment_ms`, makes many small files (a 10-minute roll makes 144
//! per partition a day), and every query pays a request and a footer per
//! file. A compaction picks a run of adjacent small files ([`pick_run`]),
//! reads them in offset order and writes their records as one file with
//! the offloader's writer (so it is in the current format: microseconds,
//! field ids; millisecond files from before are rewritten on the way),
//! named by its offsets like any other. Then, under the partition's
//! offload lock, it commits the manifest version that replaces the run by
//! the new file, if the run is still there (retention may have dropped
//! part of it meanwhile; the new file is then deleted). The replaced files
//! go the way of files retention drops: removed from the Delta table first,
//! deleted after the grace period, and kept while a read that pinned them
//! runs.
//!
//! Crash safety: a crash before the manifest commit leaves the new file
//! unreferenced (removed at the next start, as every orphan); after it, the
//! replaced files are orphans that the table may still list, removed from
//! it by the next publish and deleted after.

use std::ops::Range;
use std::sync::Arc;

use futures::TryStreamExt;
use strata_broker::Topic;
use tokio::sync::mpsc;

use crate::cold_read::{FileScan, scan_file};
use crate::error::Result;
use crate::facade::{CrashPoint, Tiering};
use crate::manifest::ColdFile;
use crate::parquet_writer::write_merged;
use crate::schema::col;
use crate::upload::FileUpload;

/// A run of small files is merged once it has this many files, even if
/// together they are far below the target: a query pays per file, and a
/// topic that trickles may never reach half the target.
pub const MIN_RUN_FILES: usize = 16;

/// Rows per batch read from the files being merged.
const MERGE_BATCH_ROWS: usize = 32 * 1024;

/// What compactions did.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq, serde::Serialize)]
pub struct CompactionSummary {
    /// Files written (one per merged run).
    pub merges: u64,
    /// Files they replaced.
    pub files_in: u64,
    /// Bytes of the replaced files.
    pub bytes_in: u64,
    /// Bytes of the files written.
    pub bytes_out: u64,
}

impl std::ops::AddAssign for CompactionSummary {
    fn add_assign(&mut self, other: Self) {
        self.merges += other.merges;
        self.files_in += other.files_in;
        self.bytes_in += other.bytes_in;
        self.bytes_out += other.bytes_out;
    }
}

/// A file under `target / SMALL_FRACTION` bytes is small. A bigger one
/// costs a query little (one request and one footer per 16 MiB at the
/// default target), and a full segment's file is about that big (a 128 MiB
/// segment compresses to ~20 MiB): rewriting those would encode every
/// record of a busy topic twice, competing with ingest for the CPU (on
/// two cores, produce p99 19-21 ms instead of 14 ms) for no gain.
pub const SMALL_FRACTION: u64 = 8;

/// The run of `files` to merge next, if any: the first run of adjacent
/// small files (each under `target / SMALL_FRACTION` bytes) of at most
/// `target` bytes together that holds at least two files and either
/// reaches half the target or has [`MIN_RUN_FILES`] files. A file that is
/// not small is never rewritten, so each record is rewritten a bounded
/// number of times.
pub fn pick_run(files: &[ColdFile], target: u64) -> Option<Range<usize>> {
    let small = |f: &ColdFile| f.bytes < target / SMALL_FRACTION;
    let mut i = 0;
    while i < files.len() {
        if !small(&files[i]) {
            i += 1;
            continue;
        }
        let start = i;
        let mut bytes = 0u64;
        while i < files.len() && small(&files[i]) && bytes + files[i].bytes <= target {
            bytes += files[i].bytes;
            i += 1;
        }
        let count = i - start;
        if count >= 2 && (bytes >= target / 2 || count >= MIN_RUN_FILES) {
            return Some(start..i);
        }
    }
    None
}

impl Tiering {
    /// Compacts every partition of `topic` this node offloads until no run
    /// is left to merge, then publishes the topic's table.
    ///
    /// # Contract
    ///
    /// When this returns `Ok`, every merge it made is committed to the
    /// manifest (and the table): readers see the same records, each once,
    /// in fewer files. Reads that began before keep the files they pinned.
    pub async fn compact_topic(&self, topic: &str) -> Result<CompactionSummary> {
        let topic = self.broker.topic(topic)?;
        let mut summary = CompactionSummary::default();
        for p in topic.partitions() {
            while let Some(done) = self.compact_partition(&topic, p.id()).await? {
                summary += done;
            }
        }
        self.publish_table(&topic).await?;
        Ok(summary)
    }

    /// One merge per partition of every topic (the background pass).
    pub async fn compact_all(&self) {
        for topic in self.broker.topics() {
            for p in topic.partitions() {
                if let Err(error) = self.compact_partition(&topic, p.id()).await {
                    metrics::counter!("strata_compaction_errors_total", "topic" => topic.name().to_string())
                        .increment(1);
                    tracing::warn!(topic = topic.name(), partition = p.id(), %error, "compaction failed; will retry");
                }
            }
        }
    }

    /// Merges the next run of `partition`'s small files, if there is one;
    /// returns what it did (`None`: nothing to merge, or the run changed
    /// while it was being merged).
    pub(crate) async fn compact_partition(
        &self,
        topic: &Arc<Topic>,
        partition: u32,
    ) -> Result<Option<CompactionSummary>> {
        let name = topic.name();
        if !self.config.compaction || !self.offloads(name, partition) || self.is_deleting(topic) {
            return Ok(None);
        }
        // Every pass asks every partition: one with nothing to merge (the
        // common case) costs no pin.
        if self
            .cached(name, partition)
            .is_some_and(|m| pick_run(&m.files, self.config.compact_target_bytes).is_none())
        {
            return Ok(None);
        }
        // Pinned: retention cannot delete the files while they are read.
        let pinned = self.pin_manifest(name, partition).await?;
        let Some(run) = pick_run(&pinned.manifest.files, self.config.compact_target_bytes) else {
            return Ok(None);
        };
        let files: Vec<ColdFile> = pinned.manifest.files[run.clone()].to_vec();
        let (first, last) = (files[0].first_offset, files[files.len() - 1].last_offset);
        let path = self.cold.root.data_file(name, partition, first, last);
        let (tx, rx) = mpsc::channel(2);
        let reading = {
            let files = files.clone();
            async move {
                for file in &files {
                    let scan = FileScan {
                        file,
                        offsets: file.first_offset..file.last_offset + 1,
                        from_ms: None,
                        to_ms: None,
                        columns: &col::ALL,
                        string_views: false,
                        keys: &[],
                    };
                    let Some(opened) =
                        scan_file(&self.cold.store, &self.cache, &scan, MERGE_BATCH_ROWS).await?
                    else {
                        continue;
                    };
                    let mut batches = opened.batches;
                    while let Some(batch) = batches.try_next().await? {
                        if tx.send(batch).await.is_err() {
                            // The writer gave up; its error says why.
                            return Ok(());
                        }
                    }
                }
                Ok::<(), crate::TieringError>(())
            }
        };
        let upload = FileUpload::new(&self.cold, &self.uploads, path.0.clone(), false);
        let (read, written) = tokio::join!(reading, write_merged(upload, &path, &files, rx));
        read?;
        let merged = written?;
        self.cold.make_durable(&path.0).await?;
        self.crash_point(CrashPoint::BeforeCompactionCommit);
        drop(pinned);

        let key = (name.to_string(), partition);
        let lock = self
            .offloading
            .lock()
            .entry(key.clone())
            .or_default()
            .clone();
        let _only_one = lock.lock().await;
        let current = self.manifest(name, partition).await?;
        let next = match self.is_deleting(topic) || !self.offloads(name, partition) {
            true => None,
            false => current.with_merged(&files, merged.clone())?,
        };
        let Some(next) = next else {
            // The run changed meanwhile: the new file is nobody's, unless
            // another compaction of the same run committed it already.
            if !current.files.iter().any(|f| f.path == merged.path) {
                object_store::ObjectStoreExt::delete(self.cold.store.as_ref(), &path.0).await?;
            }
            return Ok(None);
        };
        if let Err(e) = self.commit(&next).await {
            // As for an offload: reload at the next pass. The file stays
            // (the commit may have landed); an unreferenced one is an
            // orphan, removed at the next start.
            self.committed.lock().remove(&key);
            return Err(e);
        }
        self.crash_point(CrashPoint::AfterCompactionCommit);
        let version = next.version;
        self.remember(next);
        self.drop_objects(
            name,
            partition,
            version,
            files
                .iter()
                .map(|f| object_store::path::Path::from(f.path.as_str()))
                .collect(),
        );
        let summary = CompactionSummary {
            merges: 1,
            files_in: files.len() as u64,
            bytes_in: files.iter().map(|f| f.bytes).sum(),
            bytes_out: merged.bytes,
        };
        let label = || name.to_string();
        metrics::counter!("strata_compaction_merges_total", "topic" => label()).increment(1);
        metrics::counter!("strata_compaction_files_total", "topic" => label())
            .increment(summary.files_in);
        metrics::counter!("strata_compaction_bytes_written_total", "topic" => label())
            .increment(summary.bytes_out);
        tracing::debug!(
            topic = name,
            partition,
            files = files.len(),
            first,
            last,
            "compacted"
        );
        Ok(Some(summary))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn files(sizes: &[u64]) -> Vec<ColdFile> {
        let mut at = 0;
        sizes
            .iter()
            .map(|&bytes| {
                let file = ColdFile {
                    path: format!("t/0/{at}.parquet"),
                    first_offset: at,
                    last_offset: at + 9,
                    min_timestamp: 0,
                    max_timestamp: 0,
                    records: 10,
                    bytes,
                };
                at += 10;
                file
            })
            .collect()
    }

    #[test]
    fn runs_are_adjacent_small_files_up_to_the_target() {
        // Small: under an eighth of the target (12 of 100).
        // Half the target together.
        assert_eq!(pick_run(&files(&[10; 6]), 100), Some(0..6));
        assert_eq!(pick_run(&files(&[11, 11, 11, 11, 11]), 100), Some(0..5));
        // Big files split runs and are never rewritten: a full segment's
        // file is not small.
        assert_eq!(pick_run(&files(&[10, 10, 20, 10, 10]), 100), None);
        assert_eq!(pick_run(&files(&[20, 20, 20, 20, 20]), 100), None);
        assert_eq!(
            pick_run(&files(&[60, 10, 10, 10, 10, 10, 60]), 100),
            Some(1..6)
        );
        // At most the target: the rest is the next run.
        assert_eq!(pick_run(&files(&[11; 12]), 100), Some(0..9));
        // Too little, too few: wait.
        assert_eq!(pick_run(&files(&[1, 1, 1]), 100), None);
        // Many tiny files are merged anyway.
        let tiny = vec![1; MIN_RUN_FILES];
        assert_eq!(pick_run(&files(&tiny), 100), Some(0..MIN_RUN_FILES));
        assert_eq!(pick_run(&files(&[]), 100), None);
    }
}

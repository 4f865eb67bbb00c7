//! The read cache of cold files: parsed footers and decoded windows of
//! rows that recent reads left behind for the next ones, bounded by count
//! and bytes.

// `ParquetObjectReader` is deprecated upstream (see `cold_read`).
#![allow(deprecated)]

use std::collections::VecDeque;
use std::sync::Arc;

use arrow_array::RecordBatch;
use futures::{StreamExt, TryStreamExt};
use object_store::ObjectStore;
use object_store::path::Path;
use parking_lot::Mutex;
use parquet::arrow::ParquetRecordBatchStreamBuilder;
use parquet::arrow::arrow_reader::{
    ArrowReaderMetadata, ArrowReaderOptions, RowSelection, RowSelector,
};
use parquet::arrow::async_reader::ParquetObjectReader;
use parquet::file::metadata::ParquetMetaData;

use crate::error::{Result, TieringError};
use crate::manifest::ColdFile;

/// What recent reads of cold files left behind for the next ones: parsed
/// footers (with page indexes) and decoded windows of rows. A consumer
/// reads the same file request after request; each footer costs ranged GETs
/// to fetch and CPU to decode, and the pages under one request of a few
/// thousand records also hold its neighbours (a page of offsets covers
/// ~128 K rows), so consumed rows are decoded [`WINDOW_ROWS`] at a time and
/// the windows kept, bounded by [`WINDOWS_CACHED_BYTES`].
#[derive(Debug, Default)]
pub struct ReadCache {
    footers: Mutex<VecDeque<(String, ArrowReaderMetadata)>>,
    windows: Mutex<Windows>,
}

/// Footers kept by a [`ReadCache`].
const FOOTERS_CACHED: usize = 64;
/// Most rows of a cold file decoded together for consumers (row groups
/// hold a whole number of them).
pub const WINDOW_ROWS: u64 = 32 * 1024;
/// Decoded bytes a window is sized for: files of large records get windows
/// of fewer rows (a power of two, at least one), so what one consume
/// request decodes stays bounded whatever the records' size.
pub const WINDOW_BYTES: u64 = 8 << 20;
/// Bytes of decoded windows a [`ReadCache`] keeps (least recently used go
/// first): a dozen windows of ~130-byte records, so a dozen consumers
/// reading cold data side by side each keep theirs.
pub const WINDOWS_CACHED_BYTES: usize = 64 << 20;

/// Decoded windows, least recently used first.
#[derive(Debug, Default)]
struct Windows {
    entries: VecDeque<Window>,
    bytes: usize,
}

#[derive(Debug)]
struct Window {
    path: String,
    index: u64,
    batches: Arc<[RecordBatch]>,
    bytes: usize,
}

impl Windows {
    fn get(&mut self, path: &str, index: u64) -> Option<Arc<[RecordBatch]>> {
        let at = self
            .entries
            .iter()
            .position(|w| w.index == index && w.path == path)?;
        let window = self.entries.remove(at)?;
        let batches = window.batches.clone();
        self.entries.push_back(window);
        Some(batches)
    }

    fn insert(&mut self, window: Window) {
        if self.get(&window.path, window.index).is_some() {
            return; // another reader decoded it meanwhile
        }
        self.bytes += window.bytes;
        self.entries.push_back(window);
        while self.bytes > WINDOWS_CACHED_BYTES {
            let Some(old) = self.entries.pop_front() else {
                break;
            };
            self.bytes -= old.bytes;
        }
    }
}

impl ReadCache {
    /// A reader of `file` and its footer, from the cache when there.
    pub(crate) async fn open(
        &self,
        store: &Arc<dyn ObjectStore>,
        file: &ColdFile,
    ) -> Result<(ParquetObjectReader, ArrowReaderMetadata)> {
        let mut reader = ParquetObjectReader::new(store.clone(), Path::from(file.path.as_str()))
            .with_file_size(file.bytes);
        let cached = {
            let entries = self.footers.lock();
            entries
                .iter()
                .find(|(path, _)| *path == file.path)
                .map(|(_, m)| m.clone())
        };
        if let Some(metadata) = cached {
            return Ok((reader, metadata));
        }
        let options = ArrowReaderOptions::new().with_page_index(true);
        let mut metadata = ArrowReaderMetadata::load_async(&mut reader, options.clone()).await?;
        // Reads index columns by position: a file of another shape is refused
        // here rather than read as if it were one of ours. Files of the
        // current shape are decoded without their field ids (see
        // `schema::read_schema`); older ones (milliseconds) as they are.
        let fields = metadata.schema().fields();
        if fields == crate::schema::file_schema().fields() {
            let read = crate::schema::read_schema(metadata.schema(), false);
            metadata = ArrowReaderMetadata::try_new(
                metadata.metadata().clone(),
                options.with_schema(read),
            )?;
        } else if fields != crate::schema::schema().fields() {
            return Err(TieringError::CorruptFile {
                path: file.path.clone(),
                message: format!("unexpected columns {:?}", metadata.schema().fields()),
            });
        }
        let mut entries = self.footers.lock();
        entries.push_back((file.path.clone(), metadata.clone()));
        if entries.len() > FOOTERS_CACHED {
            entries.pop_front();
        }
        Ok((reader, metadata))
    }

    /// Rows per window of `file`: [`WINDOW_ROWS`], or fewer so that a
    /// window decodes to about [`WINDOW_BYTES`] (from the footer's
    /// uncompressed sizes).
    pub(crate) async fn window_rows(
        &self,
        store: &Arc<dyn ObjectStore>,
        file: &ColdFile,
    ) -> Result<u64> {
        let (_, metadata) = self.open(store, file).await?;
        Ok(window_rows_for(bytes_per_row(metadata.metadata())))
    }

    /// Rows `[index * rows, (index + 1) * rows)` of `file` (fewer in its
    /// last window), decoded, from the cache when there.
    pub(crate) async fn window(
        &self,
        store: &Arc<dyn ObjectStore>,
        file: &ColdFile,
        index: u64,
        window_rows: u64,
    ) -> Result<Arc<[RecordBatch]>> {
        if let Some(batches) = self.windows.lock().get(&file.path, index) {
            return Ok(batches);
        }
        let first = index * window_rows;
        let rows = window_rows.min(file.records.saturating_sub(first)) as usize;
        let (reader, metadata) = self.open(store, file).await?;
        let selection = RowSelection::from(vec![
            RowSelector::skip(first as usize),
            RowSelector::select(rows),
        ]);
        let batches: Vec<RecordBatch> =
            ParquetRecordBatchStreamBuilder::new_with_metadata(reader, metadata)
                .with_row_selection(selection)
                .with_batch_size(rows.max(1))
                .build()?
                .map(|batch| crate::schema::from_file_batch(batch?))
                .try_collect()
                .await?;
        let batches: Arc<[RecordBatch]> = batches.into();
        self.windows.lock().insert(Window {
            path: file.path.clone(),
            index,
            bytes: batches.iter().map(|b| b.get_array_memory_size()).sum(),
            batches: batches.clone(),
        });
        Ok(batches)
    }

    /// Forgets what was read from files under `prefix` (a deleted topic: a
    /// new topic of the same name writes new files under the same names).
    pub fn forget(&self, prefix: &str) {
        self.footers
            .lock()
            .retain(|(path, _)| !path.starts_with(prefix));
        let mut windows = self.windows.lock();
        windows.entries.retain(|w| !w.path.starts_with(prefix));
        windows.bytes = windows.entries.iter().map(|w| w.bytes).sum();
    }
}

/// Average uncompressed bytes of a row of a file (from its footer).
pub(crate) fn bytes_per_row(meta: &ParquetMetaData) -> u64 {
    let groups = meta.row_groups();
    let rows: u64 = groups.iter().map(|rg| rg.num_rows().max(0) as u64).sum();
    let bytes: u64 = groups
        .iter()
        .map(|rg| rg.total_byte_size().max(0) as u64)
        .sum();
    bytes / rows.max(1)
}

/// Rows per window for rows of `row_bytes` (uncompressed) each: the
/// largest power of two up to [`WINDOW_ROWS`] whose rows fit in
/// [`WINDOW_BYTES`], and at least one.
pub(crate) fn window_rows_for(row_bytes: u64) -> u64 {
    let fit = WINDOW_BYTES / row_bytes.max(1);
    if fit == 0 {
        return 1;
    }
    (1u64 << fit.ilog2()).min(WINDOW_ROWS)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn window(path: &str, index: u64, bytes: usize) -> Window {
        Window {
            path: path.into(),
            index,
            batches: Arc::from(Vec::new()),
            bytes,
        }
    }

    #[test]
    fn windows_of_large_records_hold_fewer_rows() {
        assert_eq!(window_rows_for(150), WINDOW_ROWS, "small records: the most");
        assert_eq!(window_rows_for(0), WINDOW_ROWS);
        assert_eq!(window_rows_for(4096), 2048);
        assert_eq!(window_rows_for(5000), 1024, "a power of two that fits");
        assert_eq!(window_rows_for(WINDOW_BYTES), 1);
        assert_eq!(window_rows_for(10 * WINDOW_BYTES), 1, "at least one row");
        for bytes in [1, 100, 777, 4096, 70_000, 1 << 20] {
            let rows = window_rows_for(bytes);
            assert!(rows.is_power_of_two() && rows <= WINDOW_ROWS);
            assert!(rows == 1 || rows * bytes <= WINDOW_BYTES);
        }
    }

    #[test]
    fn windows_evict_the_least_recently_used_beyond_the_byte_budget() {
        let mut windows = Windows::default();
        let third = WINDOWS_CACHED_BYTES / 3;
        windows.insert(window("a", 0, third));
        windows.insert(window("a", 1, third));
        windows.insert(window("b", 0, third));
        assert!(windows.get("a", 0).is_some(), "a/0 now most recently used");
        windows.insert(window("b", 1, third));
        assert!(windows.get("a", 1).is_none(), "least recently used went");
        assert!(windows.get("a", 0).is_some() && windows.get("b", 0).is_some());
        assert!(windows.get("b", 1).is_some());
        assert_eq!(windows.bytes, 3 * third);
        // Inserting a window that is already there changes nothing.
        windows.insert(window("b", 1, third));
        assert_eq!((windows.entries.len(), windows.bytes), (3, 3 * third));
    }
}

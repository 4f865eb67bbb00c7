//! Crash-safe small files: write a temporary file, fsync it, rename it over
//! the target, fsync the directory. A reader sees the old or the new content,
//! never a torn mix, also after a crash at any point.

use std::fs::{self, File, OpenOptions};
use std::io::Write;
use std::path::Path;

use crate::error::{IoContext, Result};

/// Suffix of temporary files; recovery deletes leftovers.
pub const TMP_SUFFIX: &str = ".tmp";

/// Atomically replaces `path` with `bytes`. When this returns, the new
/// content is durable.
pub fn write_atomic(path: &Path, bytes: &[u8]) -> Result<()> {
    let mut tmp_name = path.as_os_str().to_owned();
    tmp_name.push(TMP_SUFFIX);
    let tmp = Path::new(&tmp_name);
    let mut file = OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .open(tmp)
        .context(|| format!("creating {}", tmp.display()))?;
    file.write_all(bytes)
        .and_then(|()| file.sync_all())
        .context(|| format!("writing {}", tmp.display()))?;
    fs::rename(tmp, path).context(|| format!("renaming {} into place", tmp.display()))?;
    if let Some(dir) = path.parent() {
        sync_dir(dir)?;
    }
    Ok(())
}

/// Fsyncs a directory so that entries created, renamed or removed in it survive a crash.
pub fn sync_dir(dir: &Path) -> Result<()> {
    File::open(dir)
        .and_then(|d| d.sync_all())
        .context(|| format!("fsyncing directory {}", dir.display()))
}

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
    let name = path
        .file_name()
        .map_or_else(String::new, |n| n.to_string_lossy().into_owned());
    let tmp = path.with_file_name(fitting_file_name(&name, TMP_SUFFIX));
    let tmp = tmp.as_path();
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

/// Longest file name most Linux file systems take, in bytes.
const MAX_FILE_NAME_BYTES: usize = 255;

/// `{name}{suffix}`, or, when that is longer than a file name may be (a
/// topic or group name near its 249-character limit plus a suffix), a
/// fixed-length digest of `name` followed by `suffix`.
pub fn fitting_file_name(name: &str, suffix: &str) -> String {
    use std::hash::{Hash, Hasher};
    if name.len() + suffix.len() <= MAX_FILE_NAME_BYTES {
        return format!("{name}{suffix}");
    }
    // SipHash with fixed keys: the same name gives the same digest (in one build).
    let mut hasher = std::hash::DefaultHasher::new();
    name.hash(&mut hasher);
    format!("{:016x}{suffix}", hasher.finish())
}

/// Fsyncs a directory so that entries created, renamed or removed in it survive a crash.
pub fn sync_dir(dir: &Path) -> Result<()> {
    File::open(dir)
        .and_then(|d| d.sync_all())
        .context(|| format!("fsyncing directory {}", dir.display()))
}

//! Direct I/O, written once for every crate: opening a file with `O_DIRECT`
//! where the file system allows it (and without where it refuses, e.g.
//! tmpfs), and buffers whose contents start at a [`BLOCK`]-aligned address,
//! as `O_DIRECT` requires of memory, offsets and lengths.

use std::fs::{File, OpenOptions};
use std::os::unix::fs::OpenOptionsExt;
use std::path::Path;

/// Alignment of every direct read and write: offset, length and memory.
pub const BLOCK: usize = 4096;

/// Opens `path` as `options` say, with `O_DIRECT` added where the file
/// system supports it. Returns the file and whether it is direct.
pub fn open(path: &Path, options: &OpenOptions) -> std::io::Result<(File, bool)> {
    match options.clone().custom_flags(libc::O_DIRECT).open(path) {
        Ok(file) => Ok((file, true)),
        Err(e) if e.raw_os_error() == Some(libc::EINVAL) => {
            tracing::debug!(path = %path.display(), "no direct I/O here; going through the page cache");
            Ok((options.open(path)?, false))
        }
        Err(e) => Err(e),
    }
}

/// An empty-looking buffer for direct I/O: a `Vec` with room for
/// `capacity` bytes after a zeroed prefix, whose length is the returned
/// offset, at which the contents start [`BLOCK`]-aligned. Appending up to
/// `capacity` bytes never moves it.
pub fn aligned_vec(capacity: usize) -> (Vec<u8>, usize) {
    let mut buf: Vec<u8> = Vec::with_capacity(capacity + BLOCK);
    let start = buf.as_ptr().align_offset(BLOCK);
    buf.resize(start, 0);
    (buf, start)
}

/// `n` rounded up to a whole number of blocks.
pub fn round_up(n: usize) -> usize {
    n.div_ceil(BLOCK) * BLOCK
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn aligned_vecs_start_aligned_and_do_not_move() {
        for capacity in [0, 1, BLOCK, 3 * BLOCK + 5] {
            let (mut buf, start) = aligned_vec(capacity);
            assert_eq!(buf.len(), start);
            let at = buf.as_ptr() as usize;
            assert_eq!((at + start) % BLOCK, 0);
            buf.resize(start + capacity, 7);
            assert_eq!(buf.as_ptr() as usize, at, "no reallocation");
        }
    }

    #[test]
    fn opening_falls_back_where_direct_io_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("f");
        let mut options = OpenOptions::new();
        options.write(true).create(true);
        let (file, _direct) = open(&path, &options).unwrap();
        drop(file);
        assert!(path.exists());
    }
}

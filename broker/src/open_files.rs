//! The open-file budget. Every segment keeps its file open (the active one
//! twice: read and direct-write handles), so partitions cost file
//! descriptors. A topic that would exhaust the process's limit is refused
//! up front, instead of failing half-way with "Too many open files" after
//! seconds of work, as a 10,000-partition topic did under a limit of
//! 20,000.

/// Descriptors a new partition opens: its active segment, read and written.
pub const FILES_PER_PARTITION: u64 = 2;

/// Descriptors kept free for connections, rolls, uploads and spill files:
/// this many, or a quarter of the limit when that is smaller.
pub const RESERVED_FILES: u64 = 1024;

/// How many more partitions this process can open, and its open-file
/// limit; `None` where either cannot be read (then nothing is refused).
pub fn partition_headroom() -> Option<(u64, u64)> {
    let mut limit = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: getrlimit only writes the struct passed in.
    if unsafe { libc::getrlimit(libc::RLIMIT_NOFILE, &mut limit) } != 0 {
        return None;
    }
    let soft = limit.rlim_cur;
    let open = std::fs::read_dir("/proc/self/fd").ok()?.count() as u64;
    let reserved = RESERVED_FILES.min(soft / 4);
    let free = soft.saturating_sub(open).saturating_sub(reserved);
    Some((free / FILES_PER_PARTITION, soft))
}

//! The space left on the file system of the data directory: the reserve
//! below which produce is refused, the pressure at which offloaded segments
//! leave the local disk at once, and readiness (`GET /health/ready`).
//!
//! A full disk is back-pressure, not a failure: below the reserve produce
//! answers `503` with `Retry-After`, so rolling, sealing (index files) and
//! small control files always find room; under pressure (less than four
//! times the reserve free) the offloader offloads sealed segments
//! without waiting and drops local copies of everything already in the
//! cold tier (what Redpanda calls space management), and when it is
//! critical (less than twice the reserve free) it rolls active segments
//! first, so they can go too. If a burst still fills the disk, the
//! partition recovers in place (`Partition::recover`).

use std::path::Path;
use std::sync::atomic::{AtomicU64, Ordering};

/// The largest reserve: 64 MiB (a smaller volume keeps a twentieth).
pub const MAX_RESERVE_BYTES: u64 = 64 << 20;

/// Bytes of a file system.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
pub struct DiskSpace {
    /// Bytes an unprivileged writer may still use.
    pub free_bytes: u64,
    pub total_bytes: u64,
}

impl DiskSpace {
    /// Free bytes produce keeps for rolling, sealing and control files:
    /// [`MAX_RESERVE_BYTES`], or a twentieth of a smaller volume.
    pub fn reserve_bytes(&self) -> u64 {
        MAX_RESERVE_BYTES.min(self.total_bytes / 20)
    }

    /// Below the reserve: produce is refused.
    pub fn is_low(&self) -> bool {
        self.free_bytes < self.reserve_bytes()
    }

    /// Less than four times the reserve free: offloaded segments leave the
    /// local disk now, whatever local retention says, and sealed ones are
    /// offloaded without waiting. (Not a share of the volume, as Redpanda's
    /// 80 %: on a volume that other data fills, the offloader would then
    /// ignore `offload_after` and local retention for good.)
    pub fn under_pressure(&self) -> bool {
        self.free_bytes < self.reserve_bytes().saturating_mul(4)
    }

    /// Less than twice the reserve free: active segments are rolled too, so
    /// they can be offloaded and dropped.
    pub fn is_critical(&self) -> bool {
        self.free_bytes < self.critical_bytes()
    }

    fn critical_bytes(&self) -> u64 {
        self.reserve_bytes().saturating_mul(2)
    }
}

/// The data directory's space as last measured, so that a produce checks
/// it without a system call (the server measures once a second).
#[derive(Debug, Default)]
pub struct DiskWatch {
    free: AtomicU64,
    /// 0 until the first measurement.
    total: AtomicU64,
}

impl DiskWatch {
    /// Measures `path`'s file system now and keeps the figures.
    pub fn refresh(&self, path: &Path) -> std::io::Result<DiskSpace> {
        let now = space(path)?;
        self.free.store(now.free_bytes, Ordering::Relaxed);
        self.total.store(now.total_bytes, Ordering::Relaxed);
        Ok(now)
    }

    /// The last measurement, `None` before the first.
    pub fn last(&self) -> Option<DiskSpace> {
        let total_bytes = self.total.load(Ordering::Relaxed);
        (total_bytes > 0).then(|| DiskSpace {
            free_bytes: self.free.load(Ordering::Relaxed),
            total_bytes,
        })
    }
}

/// The space of the file system holding `path`.
// statvfs's field types differ by platform (`c_ulong`, `fsblkcnt_t`): the
// conversions are real on some and identities on 64-bit Linux.
#[allow(clippy::useless_conversion)]
pub fn space(path: &Path) -> std::io::Result<DiskSpace> {
    use std::os::unix::ffi::OsStrExt;
    let c_path = std::ffi::CString::new(path.as_os_str().as_bytes())
        .map_err(|e| std::io::Error::new(std::io::ErrorKind::InvalidInput, e))?;
    // SAFETY: an all-zero statvfs is a valid value of this plain C struct.
    let mut stat: libc::statvfs = unsafe { std::mem::zeroed() };
    // SAFETY: `c_path` is a NUL-terminated string and `stat` a valid struct
    // that statvfs only writes.
    if unsafe { libc::statvfs(c_path.as_ptr(), &mut stat) } != 0 {
        return Err(std::io::Error::last_os_error());
    }
    let block = u64::from(stat.f_frsize);
    Ok(DiskSpace {
        free_bytes: u64::from(stat.f_bavail).saturating_mul(block),
        total_bytes: u64::from(stat.f_blocks).saturating_mul(block),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_temp_directory_has_space() {
        let dir = tempfile::tempdir().unwrap();
        let space = space(dir.path()).unwrap();
        assert!(space.total_bytes > 0 && space.free_bytes <= space.total_bytes);
        assert!(super::space(&dir.path().join("missing")).is_err());
    }

    #[test]
    fn the_reserve_is_64_mib_or_a_twentieth_of_a_small_volume() {
        let gib = DiskSpace {
            free_bytes: 100 << 20,
            total_bytes: 10 << 30,
        };
        assert_eq!(gib.reserve_bytes(), 64 << 20);
        assert!(!gib.is_low() && gib.under_pressure());
        let roomy = DiskSpace {
            free_bytes: 3 << 30,
            ..gib
        };
        assert!(!roomy.is_low() && !roomy.under_pressure());
        let small = DiskSpace {
            free_bytes: 4 << 20,
            total_bytes: 100 << 20,
        };
        assert_eq!(small.reserve_bytes(), 5 << 20);
        assert!(small.is_low() && small.under_pressure() && small.is_critical());
        let crowded = DiskSpace {
            free_bytes: 15 << 20,
            ..small
        };
        assert!(!crowded.is_low() && crowded.under_pressure() && !crowded.is_critical());
        let watch = DiskWatch::default();
        assert_eq!(watch.last(), None);
        let dir = tempfile::tempdir().unwrap();
        let now = watch.refresh(dir.path()).unwrap();
        assert_eq!(watch.last(), Some(now));
    }
}

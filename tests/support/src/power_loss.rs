//! A FUSE file system that loses every write not yet fsynced when the
//! power is cut, for power-loss tests (LazyFS's idea, in the test support).
//!
//! [`PowerLossFs::mount`] serves a directory (`lower`) at a mount point.
//! File contents written through the mount are held in memory until the
//! file is fsynced (`fsync` or `fdatasync`), which writes them to `lower`
//! and syncs it there; [`PowerLossFs::cut`] throws away everything not yet
//! fsynced, as a power cut would after the page cache is gone. Directory
//! operations (create, rename, link, unlink, mkdir) go to `lower` at once:
//! the model is a file system that journals metadata but not data
//! (ext4 `data=writeback`), where the classic power-loss bug is a file
//! renamed into place before its data was synced — empty after the cut.
//!
//! Every answer bypasses the kernel's caches (direct I/O, zero TTLs), so
//! after a cut readers see exactly what `lower` and the unsynced writes
//! left. Inodes are those of `lower`, so hard links share their unsynced
//! contents. Needs root (or `fusermount`) and `/dev/fuse`.

use std::collections::HashMap;
use std::ffi::OsStr;
use std::fs::{self, File, OpenOptions};
use std::os::unix::fs::{FileExt, MetadataExt, OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use fuser::consts::FOPEN_DIRECT_IO;
use fuser::{
    FUSE_ROOT_ID, FileAttr, FileType, Filesystem, MountOption, ReplyAttr, ReplyCreate, ReplyData,
    ReplyDirectory, ReplyEmpty, ReplyEntry, ReplyOpen, ReplyStatfs, ReplyWrite, Request, TimeOrNow,
};

/// Nothing is cached by the kernel: after a cut, every read asks again.
const TTL: Duration = Duration::ZERO;

#[derive(Default)]
struct State {
    /// Inode (of `lower`) → a path of it, relative to `lower`.
    paths: HashMap<u64, PathBuf>,
    /// Inode → its whole current contents, while some of it is unsynced.
    unsynced: HashMap<u64, Vec<u8>>,
    /// Whether writes are refused (the machine is "off" between a cut and
    /// the next start).
    frozen: bool,
}

/// The handle of a mounted power-loss file system; unmounts when dropped.
pub struct PowerLossFs {
    state: Arc<Mutex<State>>,
    _session: fuser::BackgroundSession,
}

impl PowerLossFs {
    /// Serves `lower` at `mount_point` (both existing directories).
    pub fn mount(lower: &Path, mount_point: &Path) -> std::io::Result<Self> {
        let state = Arc::new(Mutex::new(State::default()));
        let fs = Fs {
            lower: lower.to_path_buf(),
            root_ino: fs::metadata(lower)?.ino(),
            state: state.clone(),
        };
        let options = [
            MountOption::FSName("strata-power-loss".into()),
            MountOption::DefaultPermissions,
        ];
        let session = fuser::spawn_mount2(fs, mount_point, &options)?;
        Ok(Self {
            state,
            _session: session,
        })
    }

    /// The power cut: every write not yet fsynced is lost. Call it after
    /// the processes writing here are dead (kill -9), as a real cut stops
    /// them first.
    pub fn cut(&self) -> usize {
        let mut state = lock(&self.state);
        let lost = state.unsynced.len();
        state.unsynced.clear();
        lost
    }

    /// How many files have unsynced contents now.
    pub fn unsynced_files(&self) -> usize {
        lock(&self.state).unsynced.len()
    }

    /// Refuses (`EIO`) or accepts writes again.
    pub fn freeze(&self, frozen: bool) {
        lock(&self.state).frozen = frozen;
    }
}

fn lock(state: &Mutex<State>) -> MutexGuard<'_, State> {
    state.lock().unwrap_or_else(|e| e.into_inner())
}

struct Fs {
    lower: PathBuf,
    root_ino: u64,
    state: Arc<Mutex<State>>,
}

fn errno(e: &std::io::Error) -> i32 {
    e.raw_os_error().unwrap_or(libc::EIO)
}

fn kind(meta: &fs::Metadata) -> FileType {
    let t = meta.file_type();
    if t.is_dir() {
        FileType::Directory
    } else if t.is_symlink() {
        FileType::Symlink
    } else {
        FileType::RegularFile
    }
}

fn time(secs: i64, nanos: i64) -> SystemTime {
    if secs >= 0 {
        UNIX_EPOCH + Duration::new(secs as u64, nanos as u32)
    } else {
        UNIX_EPOCH
    }
}

impl Fs {
    /// The FUSE inode of a `lower` inode (the root is always 1).
    fn fuse_ino(&self, lower_ino: u64) -> u64 {
        if lower_ino == self.root_ino {
            FUSE_ROOT_ID
        } else {
            lower_ino
        }
    }

    fn path(&self, ino: u64) -> Option<PathBuf> {
        if ino == FUSE_ROOT_ID {
            return Some(self.lower.clone());
        }
        lock(&self.state)
            .paths
            .get(&ino)
            .map(|p| self.lower.join(p))
    }

    fn child(&self, parent: u64, name: &OsStr) -> Option<PathBuf> {
        self.path(parent).map(|p| p.join(name))
    }

    /// Stats `path` in `lower`, remembers it, and describes it as FUSE
    /// sees it (the size of unsynced contents included).
    fn attr_of(&self, path: &Path) -> std::io::Result<FileAttr> {
        let meta = fs::symlink_metadata(path)?;
        let ino = self.fuse_ino(meta.ino());
        let mut state = lock(&self.state);
        if ino != FUSE_ROOT_ID
            && let Ok(relative) = path.strip_prefix(&self.lower)
        {
            state.paths.insert(ino, relative.to_path_buf());
        }
        let size = state
            .unsynced
            .get(&ino)
            .map_or(meta.len(), |c| c.len() as u64);
        Ok(FileAttr {
            ino,
            size,
            blocks: size.div_ceil(512),
            atime: time(meta.atime(), meta.atime_nsec()),
            mtime: time(meta.mtime(), meta.mtime_nsec()),
            ctime: time(meta.ctime(), meta.ctime_nsec()),
            crtime: UNIX_EPOCH,
            kind: kind(&meta),
            perm: (meta.permissions().mode() & 0o7777) as u16,
            nlink: meta.nlink() as u32,
            uid: meta.uid(),
            gid: meta.gid(),
            rdev: 0,
            blksize: 4096,
            flags: 0,
        })
    }

    /// The current contents of `ino` (unsynced, or as in `lower`).
    fn contents<'a>(&self, state: &'a mut State, ino: u64) -> std::io::Result<&'a mut Vec<u8>> {
        if !state.unsynced.contains_key(&ino) {
            let path = match state.paths.get(&ino) {
                Some(p) => self.lower.join(p),
                None => return Err(std::io::Error::from_raw_os_error(libc::ESTALE)),
            };
            let bytes = fs::read(path)?;
            state.unsynced.insert(ino, bytes);
        }
        Ok(state.unsynced.get_mut(&ino).expect("inserted above"))
    }

    /// Writes `ino`'s unsynced contents to `lower` and syncs them there.
    /// The path is checked to still be that inode (a rename or unlink may
    /// have moved it), so the bytes never land in another file.
    fn sync(&self, ino: u64) -> std::io::Result<()> {
        let mut state = lock(&self.state);
        if !state.unsynced.contains_key(&ino) {
            return Ok(());
        }
        let Some(path) = state.paths.get(&ino).map(|p| self.lower.join(p)) else {
            return Err(std::io::Error::from_raw_os_error(libc::ESTALE));
        };
        let file = OpenOptions::new().write(true).open(&path)?;
        if self.fuse_ino(file.metadata()?.ino()) != ino {
            return Err(std::io::Error::from_raw_os_error(libc::ESTALE));
        }
        let bytes = state.unsynced.remove(&ino).unwrap_or_default();
        file.set_len(bytes.len() as u64)?;
        file.write_all_at(&bytes, 0)?;
        file.sync_all()
    }

    /// Forgets an inode whose last link went: its unsynced contents are
    /// gone with it, and a new file that reuses the number starts empty.
    fn forget_if_gone(&self, ino: u64, links_before: u64) {
        if links_before <= 1 {
            let mut state = lock(&self.state);
            state.unsynced.remove(&ino);
            state.paths.remove(&ino);
        }
    }
}

impl Filesystem for Fs {
    fn lookup(&mut self, _req: &Request<'_>, parent: u64, name: &OsStr, reply: ReplyEntry) {
        let Some(path) = self.child(parent, name) else {
            return reply.error(libc::ESTALE);
        };
        match self.attr_of(&path) {
            Ok(attr) => reply.entry(&TTL, &attr, 0),
            Err(e) => reply.error(errno(&e)),
        }
    }

    fn getattr(&mut self, _req: &Request<'_>, ino: u64, _fh: Option<u64>, reply: ReplyAttr) {
        match self.path(ino).map(|p| self.attr_of(&p)) {
            Some(Ok(attr)) => reply.attr(&TTL, &attr),
            Some(Err(e)) => reply.error(errno(&e)),
            None => reply.error(libc::ESTALE),
        }
    }

    #[allow(clippy::too_many_arguments)]
    fn setattr(
        &mut self,
        _req: &Request<'_>,
        ino: u64,
        mode: Option<u32>,
        _uid: Option<u32>,
        _gid: Option<u32>,
        size: Option<u64>,
        _atime: Option<TimeOrNow>,
        _mtime: Option<TimeOrNow>,
        _ctime: Option<SystemTime>,
        _fh: Option<u64>,
        _crtime: Option<SystemTime>,
        _chgtime: Option<SystemTime>,
        _bkuptime: Option<SystemTime>,
        _flags: Option<u32>,
        reply: ReplyAttr,
    ) {
        let Some(path) = self.path(ino) else {
            return reply.error(libc::ESTALE);
        };
        if let Some(mode) = mode
            && let Err(e) = fs::set_permissions(&path, fs::Permissions::from_mode(mode))
        {
            return reply.error(errno(&e));
        }
        if let Some(size) = size {
            // A truncation is data too: lost unless synced.
            let mut state = lock(&self.state);
            match self.contents(&mut state, ino) {
                Ok(bytes) => bytes.resize(size as usize, 0),
                Err(e) => return reply.error(errno(&e)),
            }
        }
        match self.attr_of(&path) {
            Ok(attr) => reply.attr(&TTL, &attr),
            Err(e) => reply.error(errno(&e)),
        }
    }

    fn mkdir(
        &mut self,
        _req: &Request<'_>,
        parent: u64,
        name: &OsStr,
        mode: u32,
        _umask: u32,
        reply: ReplyEntry,
    ) {
        let Some(path) = self.child(parent, name) else {
            return reply.error(libc::ESTALE);
        };
        let made = fs::create_dir(&path)
            .and_then(|()| fs::set_permissions(&path, fs::Permissions::from_mode(mode)))
            .and_then(|()| self.attr_of(&path));
        match made {
            Ok(attr) => reply.entry(&TTL, &attr, 0),
            Err(e) => reply.error(errno(&e)),
        }
    }

    fn unlink(&mut self, _req: &Request<'_>, parent: u64, name: &OsStr, reply: ReplyEmpty) {
        let Some(path) = self.child(parent, name) else {
            return reply.error(libc::ESTALE);
        };
        let before = fs::symlink_metadata(&path).map(|m| (self.fuse_ino(m.ino()), m.nlink()));
        match fs::remove_file(&path) {
            Ok(()) => {
                if let Ok((ino, links)) = before {
                    self.forget_if_gone(ino, links);
                    let mut state = lock(&self.state);
                    let relative = path.strip_prefix(&self.lower).ok().map(Path::to_path_buf);
                    if state.paths.get(&ino) == relative.as_ref() {
                        // Another link remains; a lookup finds it again.
                        state.paths.remove(&ino);
                    }
                }
                reply.ok()
            }
            Err(e) => reply.error(errno(&e)),
        }
    }

    fn rmdir(&mut self, _req: &Request<'_>, parent: u64, name: &OsStr, reply: ReplyEmpty) {
        match self.child(parent, name).map(fs::remove_dir) {
            Some(Ok(())) => reply.ok(),
            Some(Err(e)) => reply.error(errno(&e)),
            None => reply.error(libc::ESTALE),
        }
    }

    fn rename(
        &mut self,
        _req: &Request<'_>,
        parent: u64,
        name: &OsStr,
        newparent: u64,
        newname: &OsStr,
        flags: u32,
        reply: ReplyEmpty,
    ) {
        let (Some(from), Some(to)) = (self.child(parent, name), self.child(newparent, newname))
        else {
            return reply.error(libc::ESTALE);
        };
        let replaced = fs::symlink_metadata(&to).ok();
        if flags & libc::RENAME_NOREPLACE != 0 && replaced.is_some() {
            return reply.error(libc::EEXIST);
        }
        match fs::rename(&from, &to) {
            Ok(()) => {
                if let Some(old) = replaced.filter(|m| m.is_file()) {
                    self.forget_if_gone(self.fuse_ino(old.ino()), old.nlink());
                }
                // Paths under a renamed directory are found again by lookup.
                let _ = self.attr_of(&to);
                reply.ok()
            }
            Err(e) => reply.error(errno(&e)),
        }
    }

    fn link(
        &mut self,
        _req: &Request<'_>,
        ino: u64,
        newparent: u64,
        newname: &OsStr,
        reply: ReplyEntry,
    ) {
        let (Some(from), Some(to)) = (self.path(ino), self.child(newparent, newname)) else {
            return reply.error(libc::ESTALE);
        };
        match fs::hard_link(&from, &to).and_then(|()| self.attr_of(&to)) {
            Ok(attr) => reply.entry(&TTL, &attr, 0),
            Err(e) => reply.error(errno(&e)),
        }
    }

    fn open(&mut self, _req: &Request<'_>, ino: u64, _flags: i32, reply: ReplyOpen) {
        match self.path(ino) {
            Some(path) if path.exists() => reply.opened(0, FOPEN_DIRECT_IO),
            _ => reply.error(libc::ENOENT),
        }
    }

    fn create(
        &mut self,
        _req: &Request<'_>,
        parent: u64,
        name: &OsStr,
        mode: u32,
        _umask: u32,
        flags: i32,
        reply: ReplyCreate,
    ) {
        let Some(path) = self.child(parent, name) else {
            return reply.error(libc::ESTALE);
        };
        let existed = path.exists();
        let mut options = OpenOptions::new();
        options.write(true).mode(mode);
        if flags & libc::O_EXCL != 0 {
            options.create_new(true);
        } else {
            options.create(true);
        }
        let created = options.open(&path).and_then(|file| {
            if !existed {
                // A new file may reuse the number of one deleted earlier.
                let ino = self.fuse_ino(file.metadata()?.ino());
                lock(&self.state).unsynced.remove(&ino);
            }
            self.attr_of(&path)
        });
        match created {
            Ok(attr) => {
                if flags & libc::O_TRUNC != 0 {
                    let mut state = lock(&self.state);
                    if let Ok(bytes) = self.contents(&mut state, attr.ino) {
                        bytes.clear();
                    }
                }
                reply.created(&TTL, &attr, 0, 0, FOPEN_DIRECT_IO)
            }
            Err(e) => reply.error(errno(&e)),
        }
    }

    fn read(
        &mut self,
        _req: &Request<'_>,
        ino: u64,
        _fh: u64,
        offset: i64,
        size: u32,
        _flags: i32,
        _lock_owner: Option<u64>,
        reply: ReplyData,
    ) {
        let offset = offset.max(0) as usize;
        let state = lock(&self.state);
        if let Some(bytes) = state.unsynced.get(&ino) {
            let end = (offset + size as usize).min(bytes.len());
            return reply.data(bytes.get(offset..end).unwrap_or_default());
        }
        let path = state.paths.get(&ino).map(|p| self.lower.join(p));
        drop(state);
        let Some(path) = path.or_else(|| self.path(ino)) else {
            return reply.error(libc::ESTALE);
        };
        let mut buf = vec![0u8; size as usize];
        let read = File::open(&path).and_then(|f| {
            let mut done = 0;
            while done < buf.len() {
                let n = f.read_at(&mut buf[done..], (offset + done) as u64)?;
                if n == 0 {
                    break;
                }
                done += n;
            }
            Ok(done)
        });
        match read {
            Ok(n) => reply.data(&buf[..n]),
            Err(e) => reply.error(errno(&e)),
        }
    }

    fn write(
        &mut self,
        _req: &Request<'_>,
        ino: u64,
        _fh: u64,
        offset: i64,
        data: &[u8],
        _write_flags: u32,
        _flags: i32,
        _lock_owner: Option<u64>,
        reply: ReplyWrite,
    ) {
        let mut state = lock(&self.state);
        if state.frozen {
            return reply.error(libc::EIO);
        }
        let offset = offset.max(0) as usize;
        match self.contents(&mut state, ino) {
            Ok(bytes) => {
                if bytes.len() < offset + data.len() {
                    bytes.resize(offset + data.len(), 0);
                }
                bytes[offset..offset + data.len()].copy_from_slice(data);
                reply.written(data.len() as u32)
            }
            Err(e) => reply.error(errno(&e)),
        }
    }

    fn flush(&mut self, _req: &Request<'_>, _ino: u64, _fh: u64, _lock: u64, reply: ReplyEmpty) {
        reply.ok() // close() makes nothing durable
    }

    fn fsync(
        &mut self,
        _req: &Request<'_>,
        ino: u64,
        _fh: u64,
        _datasync: bool,
        reply: ReplyEmpty,
    ) {
        match self.sync(ino) {
            Ok(()) => reply.ok(),
            Err(e) => reply.error(errno(&e)),
        }
    }

    fn readdir(
        &mut self,
        _req: &Request<'_>,
        ino: u64,
        _fh: u64,
        offset: i64,
        mut reply: ReplyDirectory,
    ) {
        let Some(dir) = self.path(ino) else {
            return reply.error(libc::ESTALE);
        };
        let entries = match fs::read_dir(&dir) {
            Ok(entries) => entries,
            Err(e) => return reply.error(errno(&e)),
        };
        let mut all = vec![
            (ino, FileType::Directory, ".".into()),
            (ino, FileType::Directory, "..".into()),
        ];
        for entry in entries.flatten() {
            if let Ok(meta) = entry.metadata() {
                all.push((self.fuse_ino(meta.ino()), kind(&meta), entry.file_name()));
            }
        }
        for (i, (ino, kind, name)) in all.into_iter().enumerate().skip(offset.max(0) as usize) {
            if reply.add(ino, (i + 1) as i64, kind, name) {
                break;
            }
        }
        reply.ok()
    }

    fn fsyncdir(&mut self, _req: &Request<'_>, _ino: u64, _fh: u64, _d: bool, reply: ReplyEmpty) {
        reply.ok() // directory operations went to `lower` already
    }

    fn statfs(&mut self, _req: &Request<'_>, _ino: u64, reply: ReplyStatfs) {
        // SAFETY: an all-zero statvfs is a valid value of this plain C struct.
        let mut stat: libc::statvfs = unsafe { std::mem::zeroed() };
        let Ok(path) = std::ffi::CString::new(self.lower.as_os_str().as_encoded_bytes()) else {
            return reply.error(libc::EINVAL);
        };
        // SAFETY: a NUL-terminated path and a struct statvfs only writes.
        if unsafe { libc::statvfs(path.as_ptr(), &mut stat) } != 0 {
            return reply.error(libc::EIO);
        }
        reply.statfs(
            stat.f_blocks,
            stat.f_bfree,
            stat.f_bavail,
            stat.f_files,
            stat.f_ffree,
            stat.f_bsize as u32,
            255,
            stat.f_frsize as u32,
        );
    }
}

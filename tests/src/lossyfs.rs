//! `lossyfs`: a FUSE filesystem that forgets what was never synced, as a
//! machine that loses power forgets its page cache (Jepsen's LazyFS, here
//! in Rust on `fuser`, mounted in pure Rust through `/dev/fuse`; needs root).
//!
//! It mirrors a backing directory. File data written through it stays in
//! this process's memory until the file is fsynced (`fsync` or `fdatasync`,
//! or a write to a file opened `O_SYNC`/`O_DSYNC`); then it is written to
//! the backing file. [`LossyDisk::power_cut`] drops every byte not yet
//! synced. The harness SIGKILLs the broker first, so nothing writes during
//! the cut, then cuts, then restarts the broker on what survived.
//!
//! What is modelled, and what is not:
//! - **Data** — writes, truncations (`ftruncate`, `O_TRUNC`) and
//!   size-changing `fallocate` are cached per file and reach the backing
//!   file only at that file's fsync; a cut undoes all of them. Reads see
//!   the cached data, as they would see the page cache.
//! - **Metadata** — create, mkdir, unlink, rmdir and rename pass through at
//!   once and survive a cut (as in LazyFS). A journaling filesystem can lose
//!   a recent one that no directory fsync followed; that is not modelled
//!   (directory fsync is accepted and does nothing). A file created and
//!   never synced survives a cut at its last synced length (empty if none).
//! - **Caches** — the kernel's page cache is bypassed (direct I/O) and
//!   attributes and entries are not cached, so after a cut every reader sees
//!   only what survived. Hence no shared `mmap` of files (RocksDB does not
//!   use it by default).
//! - **Handles** opened before a cut belong to the dead machine: their
//!   operations fail with `EIO`.
//! - No hard links, symlinks or xattrs; POSIX locks are kept by the kernel
//!   (the filesystem does not implement them, so they stay local).
//!
//! The overlay logic ([`Dirty`]) is pure and unit-tested against a model;
//! `tests/lossyfs.rs` tests the mounted filesystem, and RocksDB on it.

use std::collections::BTreeMap;
use std::collections::HashMap;
use std::ffi::OsStr;
use std::fs::File;
use std::os::unix::fs::FileExt;
use std::os::unix::fs::MetadataExt;
use std::os::unix::fs::OpenOptionsExt;
use std::os::unix::fs::PermissionsExt;
use std::path::Path;
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::Mutex;
use std::sync::MutexGuard;
use std::time::Duration;
use std::time::UNIX_EPOCH;

use anyhow::Context;
use fuser::Errno;
use fuser::FileAttr;
use fuser::FileHandle;
use fuser::FileType;
use fuser::Filesystem;
use fuser::FopenFlags;
use fuser::Generation;
use fuser::INodeNo;
use fuser::LockOwner;
use fuser::OpenFlags;
use fuser::RenameFlags;
use fuser::ReplyAttr;
use fuser::ReplyCreate;
use fuser::ReplyData;
use fuser::ReplyDirectory;
use fuser::ReplyEmpty;
use fuser::ReplyEntry;
use fuser::ReplyOpen;
use fuser::ReplyStatfs;
use fuser::ReplyWrite;
use fuser::Request;
use fuser::TimeOrNow;
use fuser::WriteFlags;

/// Attributes and entries are never cached by the kernel: after a cut,
/// sizes must come from what survived.
const TTL: Duration = Duration::ZERO;

/// The unsynced state of one file: what its users see, on top of the
/// backing file (which holds what was last synced).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Dirty {
    /// Cached writes by offset; never overlapping.
    extents: BTreeMap<u64, Vec<u8>>,
    /// The file's length as its users see it.
    len: u64,
    /// Backing bytes at and past this offset are no longer part of the file
    /// (an unsynced truncation cut them off); read as zeros if the file
    /// grows again. Never above `len`.
    keep: u64,
}

impl Dirty {
    /// No unsynced change yet to a file whose backing file is `len` long.
    pub fn new(len: u64) -> Self {
        Dirty { extents: BTreeMap::new(), len, keep: len }
    }

    /// The length users see.
    pub fn len(&self) -> u64 {
        self.len
    }

    /// Whether the file is empty as users see it.
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// Bytes held in memory (what a cut drops).
    pub fn cached_bytes(&self) -> u64 {
        self.extents.values().map(|v| v.len() as u64).sum()
    }

    /// A write of `data` at `off`.
    pub fn write(&mut self, off: u64, data: &[u8]) {
        if data.is_empty() {
            return;
        }
        let end = off + data.len() as u64;
        self.punch(off, end);
        self.len = self.len.max(end);
        // Sequential writes (a WAL, an SST being built) extend the extent
        // that ends where they start: one extent per file, not per write.
        if let Some((&s, v)) = self.extents.range_mut(..off).next_back()
            && s + v.len() as u64 == off
        {
            v.extend_from_slice(data);
            return;
        }
        self.extents.insert(off, data.to_vec());
    }

    /// A truncation (or extension, with zeros) to `len`.
    pub fn truncate(&mut self, len: u64) {
        if len < self.len {
            self.punch(len, u64::MAX);
            self.keep = self.keep.min(len);
        }
        self.len = len;
    }

    /// Forgets cached bytes in `from..to`.
    fn punch(&mut self, from: u64, to: u64) {
        let mut keep = Vec::new();
        let before = self.extents.range(..from).next_back().map(|(s, _)| *s);
        let inside: Vec<u64> = self.extents.range(from..to).map(|(s, _)| *s).collect();
        for s in before.into_iter().chain(inside) {
            let Some(mut v) = self.extents.remove(&s) else { continue };
            let e = s + v.len() as u64;
            if e <= from {
                // Entirely before the range: untouched.
                keep.push((s, v));
                continue;
            }
            if e > to {
                keep.push((to, v[(to - s) as usize..].to_vec()));
            }
            if s < from {
                v.truncate((from - s) as usize);
                keep.push((s, v));
            }
        }
        self.extents.extend(keep);
    }

    /// Reads up to `size` bytes at `off`, the backing file under the cache.
    pub fn read(&self, backing: &File, off: u64, size: u64) -> std::io::Result<Vec<u8>> {
        let end = off.saturating_add(size).min(self.len);
        if off >= end {
            return Ok(Vec::new());
        }
        let mut buf = vec![0u8; (end - off) as usize];
        let base_end = end.min(self.keep);
        if base_end > off {
            read_fully(backing, &mut buf[..(base_end - off) as usize], off)?;
        }
        let first = self.extents.range(..=off).next_back().map(|(s, _)| *s).unwrap_or(off);
        for (&s, v) in self.extents.range(first..end) {
            let (from, to) = (s.max(off), (s + v.len() as u64).min(end));
            if from < to {
                buf[(from - off) as usize..(to - off) as usize]
                    .copy_from_slice(&v[(from - s) as usize..(to - s) as usize]);
            }
        }
        Ok(buf)
    }

    /// Writes the cached state into `backing` (the fsync). The host's own
    /// disk is not expected to lose power, so the backing file is not
    /// itself fsynced: what reached it is what survives a cut.
    pub fn sync(&self, backing: &File) -> std::io::Result<()> {
        if backing.metadata()?.len() > self.keep {
            backing.set_len(self.keep)?;
        }
        for (s, v) in &self.extents {
            backing.write_all_at(v, *s)?;
        }
        backing.set_len(self.len)
    }
}

/// Fills `buf` from `file` at `off`; stops early at the end of the file
/// (the rest stays as it was: zeros).
fn read_fully(file: &File, mut buf: &mut [u8], mut off: u64) -> std::io::Result<()> {
    while !buf.is_empty() {
        match file.read_at(buf, off) {
            Ok(0) => break,
            Ok(n) => {
                buf = &mut buf[n..];
                off += n as u64;
            }
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
    Ok(())
}

/// An open file: its inode, the backing file (always opened read-write, so
/// an fsync through a read-only handle can still write the cache back) and
/// the power epoch it was opened in.
#[derive(Debug)]
struct Handle {
    ino: u64,
    file: Arc<File>,
    epoch: u64,
}

/// Counters of a disk, for tests and the harness's messages.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct DiskStats {
    /// Power cuts so far.
    pub cuts: u64,
    /// Bytes the cuts dropped (cached writes; truncations not counted).
    pub dropped_bytes: u64,
    /// Files whose cached state a cut dropped.
    pub dropped_files: u64,
    /// File syncs that wrote cached data back.
    pub syncs: u64,
}

#[derive(Debug)]
struct Inner {
    root: PathBuf,
    /// Inode number → path relative to `root` (`""` is the root). An
    /// unlinked inode has no path (it may still be open).
    paths: HashMap<u64, PathBuf>,
    inos: HashMap<PathBuf, u64>,
    next_ino: u64,
    dirty: HashMap<u64, Dirty>,
    handles: HashMap<u64, Handle>,
    /// Open directories: the listing taken at `opendir`, so that offsets
    /// into it stay stable while entries are created and deleted (a
    /// listing rebuilt per call would skip or repeat entries, e.g. under
    /// `remove_dir_all`).
    dirs: HashMap<u64, Vec<(u64, FileType, std::ffi::OsString)>>,
    next_fh: u64,
    /// Bumped by every cut; handles of an older epoch are dead.
    epoch: u64,
    stats: DiskStats,
}

impl Inner {
    fn full(&self, rel: &Path) -> PathBuf {
        self.root.join(rel)
    }

    fn intern(&mut self, rel: &Path) -> u64 {
        if let Some(ino) = self.inos.get(rel) {
            return *ino;
        }
        let ino = self.next_ino;
        self.next_ino += 1;
        self.inos.insert(rel.to_path_buf(), ino);
        self.paths.insert(ino, rel.to_path_buf());
        ino
    }

    fn child(&self, parent: INodeNo, name: &OsStr) -> Result<PathBuf, Errno> {
        let p = self.paths.get(&parent.0).ok_or(Errno::ENOENT)?;
        Ok(p.join(name))
    }

    /// The inode's metadata: by path, or through an open handle when it
    /// has been unlinked.
    fn metadata(&self, ino: u64) -> Result<std::fs::Metadata, Errno> {
        if let Some(p) = self.paths.get(&ino) {
            return std::fs::symlink_metadata(self.full(p)).map_err(Errno::from);
        }
        let h = self.handles.values().find(|h| h.ino == ino).ok_or(Errno::ENOENT)?;
        h.file.metadata().map_err(Errno::from)
    }

    fn attr(&self, ino: u64) -> Result<FileAttr, Errno> {
        let m = self.metadata(ino)?;
        Ok(file_attr(ino, &m, self.dirty.get(&ino).map(Dirty::len)))
    }

    fn handle(&self, fh: FileHandle) -> Result<&Handle, Errno> {
        let h = self.handles.get(&fh.0).ok_or(Errno::EBADF)?;
        if h.epoch != self.epoch {
            // Opened before the power cut, by a process of the dead machine.
            return Err(Errno::EIO);
        }
        Ok(h)
    }

    /// The inode's unsynced state, created from the backing file's length.
    fn dirty_of(&mut self, ino: u64, file: &File) -> Result<&mut Dirty, Errno> {
        match self.dirty.entry(ino) {
            std::collections::hash_map::Entry::Occupied(e) => Ok(e.into_mut()),
            std::collections::hash_map::Entry::Vacant(e) => {
                let len = file.metadata().map_err(Errno::from)?.len();
                Ok(e.insert(Dirty::new(len)))
            }
        }
    }

    fn sync(&mut self, ino: u64, file: &File) -> Result<(), Errno> {
        if let Some(d) = self.dirty.get(&ino) {
            d.sync(file).map_err(Errno::from)?;
            self.dirty.remove(&ino);
            self.stats.syncs += 1;
        }
        Ok(())
    }

    fn open_handle(&mut self, ino: u64, file: File) -> u64 {
        let fh = self.next_fh;
        self.next_fh += 1;
        self.handles.insert(fh, Handle { ino, file: Arc::new(file), epoch: self.epoch });
        fh
    }

    /// Renames the paths of `from` and everything under it to `to`.
    fn moved(&mut self, from: &Path, to: &Path) {
        if let Some(gone) = self.inos.remove(to) {
            self.paths.remove(&gone);
            // The replaced file's cache goes with it unless it is open.
            if !self.handles.values().any(|h| h.ino == gone) {
                self.dirty.remove(&gone);
            }
        }
        let affected: Vec<(PathBuf, u64)> =
            self.inos.iter().filter(|(p, _)| p.starts_with(from)).map(|(p, i)| (p.clone(), *i)).collect();
        for (p, ino) in affected {
            let Ok(rest) = p.strip_prefix(from) else { continue };
            let new = if rest.as_os_str().is_empty() { to.to_path_buf() } else { to.join(rest) };
            self.inos.remove(&p);
            self.inos.insert(new.clone(), ino);
            self.paths.insert(ino, new);
        }
    }

    fn forget_path(&mut self, rel: &Path) {
        if let Some(ino) = self.inos.remove(rel) {
            self.paths.remove(&ino);
            if !self.handles.values().any(|h| h.ino == ino) {
                self.dirty.remove(&ino);
            }
        }
    }
}

fn file_attr(ino: u64, m: &std::fs::Metadata, len: Option<u64>) -> FileAttr {
    let t = |s: i64, ns: i64| UNIX_EPOCH + Duration::new(s.max(0) as u64, ns.clamp(0, 999_999_999) as u32);
    let size = len.unwrap_or(m.len());
    let ctime = t(m.ctime(), m.ctime_nsec());
    FileAttr {
        ino: INodeNo(ino),
        size,
        blocks: size.div_ceil(512),
        atime: t(m.atime(), m.atime_nsec()),
        mtime: t(m.mtime(), m.mtime_nsec()),
        ctime,
        crtime: ctime,
        kind: FileType::from_std(m.file_type()).unwrap_or(FileType::RegularFile),
        perm: (m.mode() & 0o7777) as u16,
        nlink: m.nlink() as u32,
        uid: m.uid(),
        gid: m.gid(),
        rdev: m.rdev() as u32,
        blksize: 4096,
        flags: 0,
    }
}

/// Data of an open file goes to the process directly (no page cache), so
/// that what a reader sees after a cut is what survived.
fn open_flags() -> FopenFlags {
    FopenFlags::FOPEN_DIRECT_IO
}

/// The filesystem served to the kernel.
#[derive(Debug, Clone)]
struct LossyFs {
    inner: Arc<Mutex<Inner>>,
}

impl LossyFs {
    fn lock(&self) -> MutexGuard<'_, Inner> {
        // A panic in one request must not wedge the disk for the rest.
        self.inner.lock().unwrap_or_else(|p| p.into_inner())
    }
}

/// The operations, each answering with a `Result` (the trait methods
/// below send it as the reply).
impl LossyFs {
    fn do_lookup(&self, parent: INodeNo, name: &OsStr) -> Result<FileAttr, Errno> {
        let mut s = self.lock();
        let rel = s.child(parent, name)?;
        std::fs::symlink_metadata(s.full(&rel)).map_err(Errno::from)?;
        let ino = s.intern(&rel);
        s.attr(ino)
    }

    fn do_setattr(
        &self,
        ino: INodeNo,
        mode: Option<u32>,
        size: Option<u64>,
        fh: Option<FileHandle>,
    ) -> Result<FileAttr, Errno> {
        let mut s = self.lock();
        if let Some(mode) = mode {
            let p = s.full(s.paths.get(&ino.0).ok_or(Errno::ENOENT)?);
            std::fs::set_permissions(p, std::fs::Permissions::from_mode(mode & 0o7777)).map_err(Errno::from)?;
        }
        if let Some(size) = size {
            // The backing file to measure: the handle's, or one opened by
            // path for a truncate(2) without a handle.
            let file = match fh {
                Some(fh) => s.handle(fh)?.file.clone(),
                None => {
                    let p = s.full(s.paths.get(&ino.0).ok_or(Errno::ENOENT)?);
                    Arc::new(File::open(p).map_err(Errno::from)?)
                }
            };
            s.dirty_of(ino.0, &file)?.truncate(size);
        }
        s.attr(ino.0)
    }

    fn do_mkdir(&self, parent: INodeNo, name: &OsStr, mode: u32, umask: u32) -> Result<FileAttr, Errno> {
        let mut s = self.lock();
        let rel = s.child(parent, name)?;
        let full = s.full(&rel);
        std::fs::create_dir(&full).map_err(Errno::from)?;
        std::fs::set_permissions(&full, std::fs::Permissions::from_mode(mode & !umask & 0o7777))
            .map_err(Errno::from)?;
        let ino = s.intern(&rel);
        s.attr(ino)
    }

    fn do_remove(&self, parent: INodeNo, name: &OsStr, dir: bool) -> Result<(), Errno> {
        let mut s = self.lock();
        let rel = s.child(parent, name)?;
        let full = s.full(&rel);
        if dir { std::fs::remove_dir(full) } else { std::fs::remove_file(full) }.map_err(Errno::from)?;
        s.forget_path(&rel);
        Ok(())
    }

    fn do_rename(
        &self,
        parent: INodeNo,
        name: &OsStr,
        newparent: INodeNo,
        newname: &OsStr,
        flags: RenameFlags,
    ) -> Result<(), Errno> {
        if flags != RenameFlags::empty() {
            // RENAME_NOREPLACE / RENAME_EXCHANGE: not needed by RocksDB.
            return Err(Errno::EINVAL);
        }
        let mut s = self.lock();
        let from = s.child(parent, name)?;
        let to = s.child(newparent, newname)?;
        std::fs::rename(s.full(&from), s.full(&to)).map_err(Errno::from)?;
        s.moved(&from, &to);
        Ok(())
    }

    fn do_open(&self, ino: INodeNo, flags: OpenFlags) -> Result<u64, Errno> {
        let mut s = self.lock();
        let p = s.full(s.paths.get(&ino.0).ok_or(Errno::ENOENT)?);
        let file = std::fs::OpenOptions::new().read(true).write(true).open(p).map_err(Errno::from)?;
        if flags.0 & libc::O_TRUNC != 0 {
            s.dirty_of(ino.0, &file)?.truncate(0);
        }
        Ok(s.open_handle(ino.0, file))
    }

    fn do_create(
        &self,
        parent: INodeNo,
        name: &OsStr,
        mode: u32,
        umask: u32,
        flags: i32,
    ) -> Result<(FileAttr, u64), Errno> {
        let mut s = self.lock();
        let rel = s.child(parent, name)?;
        let file = std::fs::OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .create_new(flags & libc::O_EXCL != 0)
            .mode(mode & !umask & 0o7777)
            .open(s.full(&rel))
            .map_err(Errno::from)?;
        let ino = s.intern(&rel);
        if flags & libc::O_TRUNC != 0 {
            s.dirty_of(ino, &file)?.truncate(0);
        }
        let fh = s.open_handle(ino, file);
        Ok((s.attr(ino)?, fh))
    }

    fn do_read(&self, ino: INodeNo, fh: FileHandle, offset: u64, size: u32) -> Result<Vec<u8>, Errno> {
        let s = self.lock();
        let file = s.handle(fh)?.file.clone();
        match s.dirty.get(&ino.0) {
            Some(d) => d.read(&file, offset, size as u64).map_err(Errno::from),
            None => {
                let len = file.metadata().map_err(Errno::from)?.len();
                let n = len.saturating_sub(offset).min(size as u64) as usize;
                let mut buf = vec![0u8; n];
                read_fully(&file, &mut buf, offset).map_err(Errno::from)?;
                Ok(buf)
            }
        }
    }

    fn do_write(&self, ino: INodeNo, fh: FileHandle, offset: u64, data: &[u8], flags: OpenFlags) -> Result<u32, Errno> {
        let mut s = self.lock();
        let file = s.handle(fh)?.file.clone();
        s.dirty_of(ino.0, &file)?.write(offset, data);
        if flags.0 & (libc::O_SYNC | libc::O_DSYNC) != 0 {
            // A synchronous write is durable when it returns.
            s.sync(ino.0, &file)?;
        }
        Ok(data.len() as u32)
    }

    fn do_fsync(&self, ino: INodeNo, fh: FileHandle) -> Result<(), Errno> {
        let mut s = self.lock();
        let file = s.handle(fh)?.file.clone();
        s.sync(ino.0, &file)
    }

    fn do_readdir(&self, ino: INodeNo) -> Result<Vec<(u64, FileType, std::ffi::OsString)>, Errno> {
        let mut s = self.lock();
        let rel = s.paths.get(&ino.0).ok_or(Errno::ENOENT)?.clone();
        let mut names: Vec<(std::ffi::OsString, FileType)> = std::fs::read_dir(s.full(&rel))
            .map_err(Errno::from)?
            .filter_map(Result::ok)
            .map(|e| {
                let kind = e.file_type().ok().and_then(FileType::from_std).unwrap_or(FileType::RegularFile);
                (e.file_name(), kind)
            })
            .collect();
        // Sorted, so that offsets mean the same across calls.
        names.sort_by(|a, b| a.0.cmp(&b.0));
        let mut entries = vec![(ino.0, FileType::Directory, ".".into()), (ino.0, FileType::Directory, "..".into())];
        for (name, kind) in names {
            let child = s.intern(&rel.join(&name));
            entries.push((child, kind, name));
        }
        Ok(entries)
    }

    fn do_fallocate(&self, ino: INodeNo, fh: FileHandle, offset: u64, length: u64, mode: i32) -> Result<(), Errno> {
        let mut s = self.lock();
        let file = s.handle(fh)?.file.clone();
        match mode {
            // Grows the file (zeros), cached like a write.
            0 => {
                let d = s.dirty_of(ino.0, &file)?;
                if offset + length > d.len() {
                    d.truncate(offset + length);
                }
                Ok(())
            }
            // Reserves space only: nothing a cut could lose.
            libc::FALLOC_FL_KEEP_SIZE => Ok(()),
            _ => Err(Errno::EOPNOTSUPP),
        }
    }
}

fn empty(reply: ReplyEmpty, r: Result<(), Errno>) {
    match r {
        Ok(()) => reply.ok(),
        Err(e) => reply.error(e),
    }
}

fn entry(reply: ReplyEntry, r: Result<FileAttr, Errno>) {
    match r {
        Ok(a) => reply.entry(&TTL, &a, Generation(0)),
        Err(e) => reply.error(e),
    }
}

fn attr(reply: ReplyAttr, r: Result<FileAttr, Errno>) {
    match r {
        Ok(a) => reply.attr(&TTL, &a),
        Err(e) => reply.error(e),
    }
}

impl Filesystem for LossyFs {
    fn lookup(&self, _req: &Request, parent: INodeNo, name: &OsStr, reply: ReplyEntry) {
        entry(reply, self.do_lookup(parent, name));
    }

    fn getattr(&self, _req: &Request, ino: INodeNo, _fh: Option<FileHandle>, reply: ReplyAttr) {
        attr(reply, self.lock().attr(ino.0));
    }

    fn setattr(
        &self,
        _req: &Request,
        ino: INodeNo,
        mode: Option<u32>,
        _uid: Option<u32>,
        _gid: Option<u32>,
        size: Option<u64>,
        _atime: Option<TimeOrNow>,
        _mtime: Option<TimeOrNow>,
        _ctime: Option<std::time::SystemTime>,
        fh: Option<FileHandle>,
        _crtime: Option<std::time::SystemTime>,
        _chgtime: Option<std::time::SystemTime>,
        _bkuptime: Option<std::time::SystemTime>,
        _flags: Option<fuser::BsdFileFlags>,
        reply: ReplyAttr,
    ) {
        attr(reply, self.do_setattr(ino, mode, size, fh));
    }

    fn mkdir(&self, _req: &Request, parent: INodeNo, name: &OsStr, mode: u32, umask: u32, reply: ReplyEntry) {
        entry(reply, self.do_mkdir(parent, name, mode, umask));
    }

    fn unlink(&self, _req: &Request, parent: INodeNo, name: &OsStr, reply: ReplyEmpty) {
        empty(reply, self.do_remove(parent, name, false));
    }

    fn rmdir(&self, _req: &Request, parent: INodeNo, name: &OsStr, reply: ReplyEmpty) {
        empty(reply, self.do_remove(parent, name, true));
    }

    fn rename(
        &self,
        _req: &Request,
        parent: INodeNo,
        name: &OsStr,
        newparent: INodeNo,
        newname: &OsStr,
        flags: RenameFlags,
        reply: ReplyEmpty,
    ) {
        empty(reply, self.do_rename(parent, name, newparent, newname, flags));
    }

    fn open(&self, _req: &Request, ino: INodeNo, flags: OpenFlags, reply: ReplyOpen) {
        match self.do_open(ino, flags) {
            Ok(fh) => reply.opened(FileHandle(fh), open_flags()),
            Err(e) => reply.error(e),
        }
    }

    fn create(
        &self,
        _req: &Request,
        parent: INodeNo,
        name: &OsStr,
        mode: u32,
        umask: u32,
        flags: i32,
        reply: ReplyCreate,
    ) {
        match self.do_create(parent, name, mode, umask, flags) {
            Ok((a, fh)) => reply.created(&TTL, &a, Generation(0), FileHandle(fh), open_flags()),
            Err(e) => reply.error(e),
        }
    }

    fn read(
        &self,
        _req: &Request,
        ino: INodeNo,
        fh: FileHandle,
        offset: u64,
        size: u32,
        _flags: OpenFlags,
        _lock_owner: Option<LockOwner>,
        reply: ReplyData,
    ) {
        match self.do_read(ino, fh, offset, size) {
            Ok(data) => reply.data(&data),
            Err(e) => reply.error(e),
        }
    }

    fn write(
        &self,
        _req: &Request,
        ino: INodeNo,
        fh: FileHandle,
        offset: u64,
        data: &[u8],
        _write_flags: WriteFlags,
        flags: OpenFlags,
        _lock_owner: Option<LockOwner>,
        reply: ReplyWrite,
    ) {
        match self.do_write(ino, fh, offset, data, flags) {
            Ok(n) => reply.written(n),
            Err(e) => reply.error(e),
        }
    }

    fn flush(&self, _req: &Request, _ino: INodeNo, _fh: FileHandle, _lock_owner: LockOwner, reply: ReplyEmpty) {
        // close(2) does not make data durable.
        reply.ok();
    }

    fn release(
        &self,
        _req: &Request,
        ino: INodeNo,
        fh: FileHandle,
        _flags: OpenFlags,
        _lock_owner: Option<LockOwner>,
        _flush: bool,
        reply: ReplyEmpty,
    ) {
        let mut s = self.lock();
        s.handles.remove(&fh.0);
        // An unlinked file's cache goes with its last handle.
        if !s.paths.contains_key(&ino.0) && !s.handles.values().any(|h| h.ino == ino.0) {
            s.dirty.remove(&ino.0);
        }
        reply.ok();
    }

    fn fsync(&self, _req: &Request, ino: INodeNo, fh: FileHandle, _datasync: bool, reply: ReplyEmpty) {
        empty(reply, self.do_fsync(ino, fh));
    }

    fn opendir(&self, _req: &Request, ino: INodeNo, _flags: OpenFlags, reply: ReplyOpen) {
        match self.do_readdir(ino) {
            Ok(entries) => {
                let mut s = self.lock();
                let fh = s.next_fh;
                s.next_fh += 1;
                s.dirs.insert(fh, entries);
                reply.opened(FileHandle(fh), FopenFlags::empty());
            }
            Err(e) => reply.error(e),
        }
    }

    fn readdir(&self, _req: &Request, ino: INodeNo, fh: FileHandle, offset: u64, mut reply: ReplyDirectory) {
        let listed = self.lock().dirs.get(&fh.0).cloned();
        let entries = match listed {
            Some(entries) => entries,
            None => match self.do_readdir(ino) {
                Ok(entries) => entries,
                Err(e) => return reply.error(e),
            },
        };
        for (i, (child, kind, name)) in entries.into_iter().enumerate().skip(offset as usize) {
            if reply.add(INodeNo(child), i as u64 + 1, kind, name) {
                break;
            }
        }
        reply.ok();
    }

    fn releasedir(&self, _req: &Request, _ino: INodeNo, fh: FileHandle, _flags: OpenFlags, reply: ReplyEmpty) {
        self.lock().dirs.remove(&fh.0);
        reply.ok();
    }

    fn fsyncdir(&self, _req: &Request, _ino: INodeNo, _fh: FileHandle, _datasync: bool, reply: ReplyEmpty) {
        // Directory entries are durable at once (see the module docs).
        reply.ok();
    }

    fn statfs(&self, _req: &Request, _ino: INodeNo, reply: ReplyStatfs) {
        // A large, mostly free disk (4 KiB blocks).
        reply.statfs(1 << 28, 1 << 27, 1 << 27, 1 << 20, 1 << 19, 4096, 255, 4096);
    }

    fn access(&self, _req: &Request, _ino: INodeNo, _mask: fuser::AccessFlags, reply: ReplyEmpty) {
        reply.ok();
    }

    fn fallocate(
        &self,
        _req: &Request,
        ino: INodeNo,
        fh: FileHandle,
        offset: u64,
        length: u64,
        mode: i32,
        reply: ReplyEmpty,
    ) {
        empty(reply, self.do_fallocate(ino, fh, offset, length, mode));
    }
}

/// A mounted [`lossyfs`](self) over a backing directory; unmounted on
/// drop (lazily: a process still holding files open does not keep it).
pub struct LossyDisk {
    fs: LossyFs,
    mountpoint: PathBuf,
    session: Option<fuser::BackgroundSession>,
}

impl std::fmt::Debug for LossyDisk {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("LossyDisk").field("mountpoint", &self.mountpoint).finish()
    }
}

impl LossyDisk {
    /// Mounts the filesystem at `mountpoint` (an existing, empty
    /// directory) over `backing` (an existing directory). Needs root and
    /// `/dev/fuse`.
    pub fn mount(backing: &Path, mountpoint: &Path) -> anyhow::Result<Self> {
        let root = backing.canonicalize().with_context(|| format!("backing dir {}", backing.display()))?;
        let mut inner = Inner {
            root,
            paths: HashMap::new(),
            inos: HashMap::new(),
            next_ino: INodeNo::ROOT.0 + 1,
            dirty: HashMap::new(),
            handles: HashMap::new(),
            dirs: HashMap::new(),
            next_fh: 1,
            epoch: 0,
            stats: DiskStats::default(),
        };
        inner.paths.insert(INodeNo::ROOT.0, PathBuf::new());
        inner.inos.insert(PathBuf::new(), INodeNo::ROOT.0);
        let fs = LossyFs { inner: Arc::new(Mutex::new(inner)) };
        let mut config = fuser::Config::default();
        config.mount_options = vec![fuser::MountOption::FSName("lossyfs".into()), fuser::MountOption::RW];
        let session = fuser::spawn_mount(fs.clone(), mountpoint, &config)
            .with_context(|| format!("mount lossyfs at {} (needs root and /dev/fuse)", mountpoint.display()))?;
        Ok(LossyDisk { fs, mountpoint: mountpoint.to_path_buf(), session: Some(session) })
    }

    /// Drops every byte not yet synced, as a power cut does. Call it with
    /// no process using the disk (SIGKILLed and reaped): handles opened
    /// before it fail from now on. Returns the bytes dropped.
    pub fn power_cut(&self) -> u64 {
        let mut s = self.fs.lock();
        let bytes: u64 = s.dirty.values().map(Dirty::cached_bytes).sum();
        s.stats.cuts += 1;
        s.stats.dropped_bytes += bytes;
        s.stats.dropped_files += s.dirty.len() as u64;
        s.dirty.clear();
        s.epoch += 1;
        bytes
    }

    /// Bytes written and not yet synced (what a cut now would drop).
    pub fn unsynced_bytes(&self) -> u64 {
        self.fs.lock().dirty.values().map(Dirty::cached_bytes).sum()
    }

    /// Counters so far.
    pub fn stats(&self) -> DiskStats {
        self.fs.lock().stats
    }

    /// Where it is mounted.
    pub fn mountpoint(&self) -> &Path {
        &self.mountpoint
    }
}

impl Drop for LossyDisk {
    fn drop(&mut self) {
        // Lazy, so that a broker still exiting does not keep it mounted;
        // then the session's own unmount finds nothing left to do.
        let _ = std::process::Command::new("umount").arg("-l").arg(&self.mountpoint).output();
        drop(self.session.take());
    }
}

#[cfg(test)]
mod tests {
    use rand::Rng;
    use rand::SeedableRng;

    use super::*;

    /// The overlay against a model: the file's content as users see it
    /// (`visible`) and as the last sync left it (`synced`). Random writes,
    /// truncations, syncs and cuts; after each step a read of every byte
    /// must match the model, and after a cut what is visible is what was
    /// synced.
    #[test]
    fn dirty_overlay_matches_a_model_file() -> anyhow::Result<()> {
        let seed = crate::seed("dirty_overlay_matches_a_model_file");
        let mut rng = rand::rngs::StdRng::seed_from_u64(seed);
        let dir = tempfile::tempdir()?;
        for round in 0..40 {
            let path = dir.path().join(format!("f{round}"));
            let initial: Vec<u8> = (0..rng.random_range(0..300)).map(|_| rng.random()).collect();
            std::fs::write(&path, &initial)?;
            let file = std::fs::OpenOptions::new().read(true).write(true).open(&path)?;
            let mut synced = initial.clone();
            let mut visible = initial;
            let mut d = Dirty::new(visible.len() as u64);
            for step in 0..200 {
                match rng.random_range(0..10) {
                    0..=5 => {
                        let off = rng.random_range(0..visible.len() as u64 + 50);
                        let data: Vec<u8> = (0..rng.random_range(1..80)).map(|_| rng.random()).collect();
                        d.write(off, &data);
                        let end = off as usize + data.len();
                        if visible.len() < end {
                            visible.resize(end, 0);
                        }
                        visible[off as usize..end].copy_from_slice(&data);
                    }
                    6 => {
                        let len = rng.random_range(0..visible.len() as u64 + 60);
                        d.truncate(len);
                        visible.resize(len as usize, 0);
                    }
                    7 => {
                        d.sync(&file)?;
                        d = Dirty::new(file.metadata()?.len());
                        synced = visible.clone();
                    }
                    8 => {
                        // The power cut: the backing file is what remains.
                        d = Dirty::new(file.metadata()?.len());
                        visible = synced.clone();
                    }
                    _ => {
                        let off = rng.random_range(0..visible.len() as u64 + 10);
                        let n = rng.random_range(0..100);
                        let got = d.read(&file, off, n)?;
                        let want: Vec<u8> = visible.iter().skip(off as usize).take(n as usize).copied().collect();
                        anyhow::ensure!(got == want, "seed {seed} round {round} step {step}: partial read differs");
                    }
                }
                anyhow::ensure!(d.len() == visible.len() as u64, "seed {seed} round {round} step {step}: length");
                let all = d.read(&file, 0, u64::MAX)?;
                anyhow::ensure!(
                    all == visible,
                    "seed {seed} round {round} step {step}: content differs from the model"
                );
                anyhow::ensure!(std::fs::read(&path)? == synced, "seed {seed} round {round} step {step}: backing file");
            }
        }
        Ok(())
    }

    #[test]
    fn sequential_writes_share_one_extent() {
        let mut d = Dirty::new(0);
        for i in 0..1000u64 {
            d.write(i * 10, &[i as u8; 10]);
        }
        assert_eq!(d.extents.len(), 1);
        assert_eq!(d.cached_bytes(), 10_000);
        assert_eq!(d.len(), 10_000);
    }
}

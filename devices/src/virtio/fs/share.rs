//! The file system a guest sees through virtio-fs: fuse-backend-rs's
//! `PassthroughFs` over the host directory, behind [`Share`], which decides
//! what the guest may do before any host system call is made.
//!
//! `Share` implements the `FileSystem` trait itself and forwards only the
//! operations it allows; every operation it does not forward gets the trait's
//! default answer (`ENOSYS`/`ENOTTY`), so nothing new in fuse-backend-rs can
//! reach the host unseen. What it enforces:
//!
//! - **Read-only** shares: every operation that could change the host
//!   directory fails with `EROFS` (the transport refuses the same opcodes
//!   before they are even decoded, see `mod.rs`; this is the second line).
//! - **Names** are single path components: no `/`, not empty, not `.`/`..`
//!   (lookups may name `..`, which at the share's root stays at the root).
//! - **Only regular files are opened**: an inode that is a symlink, device,
//!   FIFO or socket is never opened on the host (a symlink is never followed,
//!   a device never reaches the guest, a FIFO cannot block the worker);
//!   truncation and mode changes never go through a symlink.
//! - **Identity**: every request runs as the user running vmapp (the guest's
//!   uid/gid are not used to switch credentials), ownership can only be given
//!   to that user, device nodes and set-user-ID bits cannot be created.
//! - **A view** (host-root mode, see `view.rs`): only allowed trees are
//!   shown; a lookup of any other name is `ENOENT` before the host is asked,
//!   listings of the directories on the way show only the way, and nothing
//!   can be created there. `READDIRPLUS` is refused with a view, so every
//!   entry goes through the lookup check.
//! - **An inode budget**: every inode the guest holds is an `O_PATH` fd in
//!   this process; past [`Share::max_inodes`] distinct inodes a lookup or a
//!   create answers `ENFILE` to the guest, so a guest cannot starve the rest
//!   of the VMM of fds. `READDIRPLUS` (a lookup of a whole directory at once)
//!   lists without lookups near the budget (node id 0 entries).

use std::collections::HashMap;
use std::ffi::CStr;
use std::io;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::path::Path;
use std::sync::{Mutex, MutexGuard};
use std::time::Duration;

use fuse_backend_rs::abi::fuse_abi::{
    stat64, statvfs64, CreateIn, FsOptions, OpenOptions, SetattrValid,
};
use fuse_backend_rs::api::filesystem::{
    Context, DirEntry, Entry, FileSystem, ZeroCopyReader, ZeroCopyWriter, ROOT_ID,
};
use fuse_backend_rs::passthrough::{CachePolicy, Config, PassthroughFs};

use super::view::{identity, Exposure, Identity, View};

/// Errors setting up a share.
#[derive(Debug, thiserror::Error)]
pub enum ShareError {
    /// The host directory is missing or not a directory.
    #[error("shared directory {0}: {1}")]
    Dir(String, io::Error),
    /// fuse-backend-rs could not be set up.
    #[error("shared directory {0}: cannot set up the file server: {1}")]
    Backend(String, io::Error),
}

fn err(code: i32) -> io::Error {
    io::Error::from_raw_os_error(code)
}

const RENAME_NOREPLACE: u32 = 1;
const RENAME_EXCHANGE: u32 = 2;

/// Entries one `READDIRPLUS` reply can carry at most (a 128 KiB buffer of
/// 152-byte entries, rounded up): the room it needs left in the budget.
const READDIRPLUS_ROOM: usize = 1024;

/// The default inode budget of a share: a third of the fd limit above a
/// reserve for the rest of the VMM, at least 1024; open handles get half as
/// many again, so two shares (a host-root VM's root and home) fit. With the
/// usual hard limit of 1,048,576 (raised to by `Fs::new`) that is about
/// 350,000 inodes.
pub fn default_max_inodes() -> usize {
    let mut r = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: getrlimit writes into a valid rlimit struct; checked.
    let soft = if unsafe { libc::getrlimit(libc::RLIMIT_NOFILE, &mut r) } == 0 {
        r.rlim_cur
    } else {
        1024
    };
    let third = soft.saturating_sub(4096) / 3;
    usize::try_from(third).unwrap_or(usize::MAX).max(1024)
}

/// A READDIRPLUS entry without a lookup (node id 0, no attributes).
fn unlooked_entry() -> Entry {
    Entry {
        inode: 0,
        generation: 0,
        // SAFETY: stat64 is plain data; all-zero is a valid value.
        attr: unsafe { std::mem::zeroed() },
        attr_flags: 0,
        attr_timeout: std::time::Duration::ZERO,
        entry_timeout: std::time::Duration::ZERO,
    }
}

/// A host directory as the guest may use it.
pub struct Share {
    inner: PassthroughFs<()>,
    read_only: bool,
    root: std::path::PathBuf,
    view: Option<View>,
    uid: u32,
    gid: u32,
    /// Lookup counts of the inodes the guest holds (the root aside).
    held: Mutex<HashMap<u64, u64>>,
    max_inodes: usize,
    /// Open file and directory handles (each an fd), bounded like inodes.
    handles: std::sync::atomic::AtomicUsize,
    /// The flags each open file handle was opened with: READ and WRITE
    /// pass these on instead of the guest's (see [`host_flags`]).
    open_flags: Mutex<HashMap<u64, u32>>,
}

impl Share {
    /// Serves all of `dir` (see [`Share::expose`] for less).
    pub fn new(dir: &Path, read_only: bool) -> Result<Self, ShareError> {
        let name = dir.display().to_string();
        let md = std::fs::metadata(dir).map_err(|e| ShareError::Dir(name.clone(), e))?;
        if !md.is_dir() {
            return Err(ShareError::Dir(name, err(libc::ENOTDIR)));
        }
        let root = dir
            .canonicalize()
            .map_err(|e| ShareError::Dir(name.clone(), e))?;
        // fuse-backend-rs takes the root as a string.
        let Some(root_dir) = root.to_str().map(str::to_string) else {
            return Err(ShareError::Dir(name, err(libc::EINVAL)));
        };
        let cfg = Config {
            root_dir,
            // Attributes and names may be cached by the guest for a second;
            // host-side changes show up after that (virtiofsd's `auto`).
            cache_policy: CachePolicy::Auto,
            attr_timeout: Duration::from_secs(1),
            entry_timeout: Duration::from_secs(1),
            xattr: false,
            do_import: true,
            writeback: false,
            no_open: false,
            no_opendir: false,
            killpriv_v2: false,
            inode_file_handles: false,
            ..Config::default()
        };
        let inner = PassthroughFs::new(cfg).map_err(|e| ShareError::Backend(name.clone(), e))?;
        // SAFETY: geteuid/getegid have no preconditions.
        let (uid, gid) = unsafe { (libc::geteuid(), libc::getegid()) };
        Ok(Self {
            inner,
            read_only,
            root,
            view: None,
            uid,
            gid,
            held: Mutex::new(HashMap::new()),
            max_inodes: default_max_inodes(),
            handles: std::sync::atomic::AtomicUsize::new(0),
            open_flags: Mutex::new(HashMap::new()),
        })
    }

    /// Shows the guest only what `e` allows (see `view.rs`), resolved
    /// against the directory as it is now.
    pub fn expose(mut self, e: &Exposure) -> Self {
        self.view = Some(View::new(&self.root, e));
        self
    }

    /// Sets the inode budget (see the module documentation).
    pub fn max_inodes(mut self, n: usize) -> Self {
        self.max_inodes = n.max(1);
        self
    }

    fn held(&self) -> MutexGuard<'_, HashMap<u64, u64>> {
        self.held.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Refuses an open when half as many handles are open as inodes may be
    /// held (so a share's fds stay within 1.5 × its inode budget).
    fn handle_room(&self) -> io::Result<()> {
        if self.handles.load(std::sync::atomic::Ordering::Relaxed) >= (self.max_inodes / 2).max(1) {
            return Err(err(libc::ENFILE));
        }
        Ok(())
    }

    /// Remembers the flags file handle `h` was opened with.
    fn opened_with(&self, h: Option<u64>, flags: u32) {
        if let Some(h) = h {
            self.open_flags
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .insert(h, flags);
        }
    }

    /// The flags to pass with a READ or WRITE on `h`: those it was opened
    /// with, so that fuse-backend-rs never changes the fd's flags. A handle
    /// not opened as a file (a directory's, or none) is refused: fuse-backend-rs
    /// would take a directory's and could close its fd.
    fn flags_of(&self, h: u64) -> io::Result<u32> {
        self.open_flags
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .get(&h)
            .copied()
            .ok_or_else(|| err(libc::EBADF))
    }

    fn took_handle(&self, h: Option<u64>) {
        if h.is_some() {
            self.handles
                .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        }
    }

    fn dropped_handle(&self) {
        let _ = self.handles.fetch_update(
            std::sync::atomic::Ordering::Relaxed,
            std::sync::atomic::Ordering::Relaxed,
            |n| Some(n.saturating_sub(1)),
        );
    }

    /// Refuses a request that would add an inode when the budget is spent.
    fn room(&self) -> io::Result<()> {
        if self.held().len() >= self.max_inodes {
            return Err(err(libc::ENFILE));
        }
        Ok(())
    }

    /// Counts an entry the guest now holds; past the budget, a new inode is
    /// dropped again and the guest gets ENFILE.
    fn admit(&self, ctx: &Context, e: Entry) -> io::Result<Entry> {
        let mut held = self.held();
        if !held.contains_key(&e.inode) && held.len() >= self.max_inodes {
            drop(held);
            self.inner.forget(ctx, e.inode, 1);
            return Err(err(libc::ENFILE));
        }
        *held.entry(e.inode).or_insert(0) += 1;
        Ok(e)
    }

    fn release(&self, inode: u64, count: u64) {
        let mut held = self.held();
        if let Some(n) = held.get_mut(&inode) {
            *n = n.saturating_sub(count);
            if *n == 0 {
                held.remove(&inode);
            }
        }
    }

    /// Whether the guest may only read.
    pub fn read_only(&self) -> bool {
        self.read_only
    }

    fn writable(&self) -> io::Result<()> {
        if self.read_only {
            Err(err(libc::EROFS))
        } else {
            Ok(())
        }
    }

    fn kind(&self, ctx: &Context, inode: u64) -> io::Result<u32> {
        Ok(self.inner.getattr(ctx, inode, None)?.0.st_mode & libc::S_IFMT)
    }

    /// An `O_PATH` fd of `inode` of this process's own, opened by the path
    /// the file server's fd has now and checked to be the same file (device
    /// and inode): a path changed meanwhile cannot lead elsewhere.
    fn reopen(&self, ctx: &Context, inode: u64, dir: bool) -> io::Result<OwnedFd> {
        let want = self.identity(ctx, inode)?;
        let path = self.inner.readlinkat_proc_file(inode)?;
        let c = std::ffi::CString::new(path.into_os_string().into_encoded_bytes())
            .map_err(|_| err(libc::EINVAL))?;
        let mut flags = libc::O_PATH | libc::O_NOFOLLOW | libc::O_CLOEXEC;
        if dir {
            flags |= libc::O_DIRECTORY;
        }
        // SAFETY: a valid path; the fd is owned below.
        let fd = unsafe { libc::open(c.as_ptr(), flags) };
        if fd < 0 {
            return Err(io::Error::last_os_error());
        }
        // SAFETY: a new fd this function owns.
        let fd = unsafe { OwnedFd::from_raw_fd(fd) };
        // SAFETY: stat64 is plain data, filled by fstat64.
        let mut st: stat64 = unsafe { std::mem::zeroed() };
        // SAFETY: a valid fd and out pointer.
        if unsafe { libc::fstat64(fd.as_raw_fd(), &mut st) } != 0 {
            return Err(io::Error::last_os_error());
        }
        if identity(&st) != want {
            return Err(err(libc::ENOENT));
        }
        Ok(fd)
    }

    fn identity(&self, ctx: &Context, inode: u64) -> io::Result<Identity> {
        Ok(identity(&self.inner.getattr(ctx, inode, None)?.0))
    }

    /// Looks `name` up in `parent` if the view shows it (the host is not
    /// asked for a name a way does not show), dropping the lookup of an
    /// entry the view hides.
    fn look_up_visible(&self, ctx: &Context, parent: u64, name: &CStr) -> io::Result<Entry> {
        let Some(view) = &self.view else {
            return self.inner.lookup(ctx, parent, name);
        };
        let p = self.identity(ctx, parent)?;
        if !view.may_look_up(p, name.to_bytes()) {
            return Err(err(libc::ENOENT));
        }
        let e = self.inner.lookup(ctx, parent, name)?;
        if !view.may_show(p, &e.attr) {
            self.inner.forget(ctx, e.inode, 1);
            return Err(err(libc::ENOENT));
        }
        Ok(e)
    }

    /// Refuses to create, remove or rename `name` in `parent` where the
    /// view forbids it: in a way directory, or a hidden name.
    fn may_change(&self, ctx: &Context, parent: u64, name: &CStr) -> io::Result<()> {
        let Some(view) = &self.view else {
            return Ok(());
        };
        let p = self.identity(ctx, parent)?;
        if view.is_way(p) || !view.may_look_up(p, name.to_bytes()) {
            return Err(err(libc::EACCES));
        }
        Ok(())
    }

    /// Opens only regular files; in a read-only share only for reading.
    fn openable(&self, ctx: &Context, inode: u64, flags: u32) -> io::Result<()> {
        if self.read_only && (open_writes(flags) || flags & libc::O_TRUNC as u32 != 0) {
            return Err(err(libc::EROFS));
        }
        match self.kind(ctx, inode)? {
            libc::S_IFREG => Ok(()),
            libc::S_IFDIR => Err(err(libc::EISDIR)),
            libc::S_IFLNK => Err(err(libc::ELOOP)),
            _ => Err(err(libc::EACCES)),
        }
    }
}

/// A guest's open flags as the host opens the file: without `O_NOATIME`,
/// which the guest kernel sets (on every exec, for one) and which the host
/// refuses with EPERM for a file vmapp's user does not own — every file of
/// a host-root share when vmapp is not root.
pub fn host_flags(flags: u32) -> u32 {
    flags & !(libc::O_NOATIME as u32)
}

/// `fstatat` of `name` in the directory `dir` (an `O_PATH` fd), not
/// following a symlink.
fn stat_at(dir: &OwnedFd, name: &[u8]) -> Option<stat64> {
    let c = std::ffi::CString::new(name).ok()?;
    // SAFETY: stat64 is plain data; fstatat fills it.
    let mut st: stat64 = unsafe { std::mem::zeroed() };
    // SAFETY: a valid fd, C string and out pointer.
    let r = unsafe {
        libc::fstatat64(
            dir.as_raw_fd(),
            c.as_ptr(),
            &mut st,
            libc::AT_SYMLINK_NOFOLLOW,
        )
    };
    (r == 0).then_some(st)
}

/// Whether open flags ask for write access.
pub fn open_writes(flags: u32) -> bool {
    let acc = flags & libc::O_ACCMODE as u32;
    acc == libc::O_WRONLY as u32 || acc == libc::O_RDWR as u32
}

/// A name the guest gives for a new or existing directory entry.
fn component(name: &CStr) -> io::Result<()> {
    let b = name.to_bytes();
    if b.is_empty() || b == b"." || b == b".." || b.contains(&b'/') {
        return Err(err(libc::EINVAL));
    }
    Ok(())
}

/// Strips set-user-ID (and, but on directories, set-group-ID) from a mode.
fn safe_mode(mode: u32, dir: bool) -> u32 {
    let mut m = mode & !libc::S_ISUID;
    if !dir {
        m &= !libc::S_ISGID;
    }
    m
}

impl FileSystem for Share {
    type Inode = u64;
    type Handle = u64;

    fn init(&self, capable: FsOptions) -> io::Result<FsOptions> {
        // PassthroughFs asks for none of these; without BIG_WRITES/MAX_PAGES
        // the server caps writes at 8 KiB. AUTO_INVAL_DATA drops cached
        // pages of a file whose mtime changed on the host.
        let mut o = self.inner.init(capable)?
            | FsOptions::BIG_WRITES
            | FsOptions::MAX_PAGES
            | FsOptions::ASYNC_READ
            | FsOptions::PARALLEL_DIROPS
            | FsOptions::AUTO_INVAL_DATA;
        if self.view.is_some() {
            // READDIRPLUS hands out entries without a lookup: not with a view.
            o.remove(FsOptions::DO_READDIRPLUS | FsOptions::READDIRPLUS_AUTO);
        }
        Ok(o)
    }

    fn destroy(&self) {
        self.inner.destroy()
    }

    fn lookup(&self, ctx: &Context, parent: u64, name: &CStr) -> io::Result<Entry> {
        let b = name.to_bytes();
        if b.is_empty() || b.contains(&b'/') {
            return Err(err(libc::EINVAL));
        }
        // `..` of the root is the root (PassthroughFs does the same; this
        // does not depend on it).
        let name = if parent == ROOT_ID && b == b".." {
            c"."
        } else {
            name
        };
        let e = self.look_up_visible(ctx, parent, name)?;
        self.admit(ctx, e)
    }

    fn forget(&self, ctx: &Context, inode: u64, count: u64) {
        self.release(inode, count);
        self.inner.forget(ctx, inode, count)
    }

    fn batch_forget(&self, ctx: &Context, requests: Vec<(u64, u64)>) {
        for &(inode, count) in &requests {
            self.release(inode, count);
        }
        self.inner.batch_forget(ctx, requests)
    }

    fn getattr(
        &self,
        ctx: &Context,
        inode: u64,
        handle: Option<u64>,
    ) -> io::Result<(stat64, Duration)> {
        self.inner.getattr(ctx, inode, handle)
    }

    fn setattr(
        &self,
        ctx: &Context,
        inode: u64,
        mut attr: stat64,
        handle: Option<u64>,
        valid: SetattrValid,
    ) -> io::Result<(stat64, Duration)> {
        self.writable()?;
        if (valid.contains(SetattrValid::UID) && attr.st_uid != self.uid)
            || (valid.contains(SetattrValid::GID) && attr.st_gid != self.gid)
        {
            return Err(err(libc::EPERM));
        }
        if valid.intersects(SetattrValid::MODE | SetattrValid::SIZE) {
            let kind = self.kind(ctx, inode)?;
            if valid.contains(SetattrValid::SIZE) && kind != libc::S_IFREG {
                return Err(err(if kind == libc::S_IFDIR {
                    libc::EISDIR
                } else {
                    libc::EINVAL
                }));
            }
            if valid.contains(SetattrValid::MODE) {
                if kind == libc::S_IFLNK {
                    return Err(err(libc::EOPNOTSUPP));
                }
                attr.st_mode = safe_mode(attr.st_mode, kind == libc::S_IFDIR);
            }
        }
        self.inner.setattr(ctx, inode, attr, handle, valid)
    }

    fn readlink(&self, ctx: &Context, inode: u64) -> io::Result<Vec<u8>> {
        self.inner.readlink(ctx, inode)
    }

    fn symlink(
        &self,
        ctx: &Context,
        linkname: &CStr,
        parent: u64,
        name: &CStr,
    ) -> io::Result<Entry> {
        self.writable()?;
        component(name)?;
        self.may_change(ctx, parent, name)?;
        self.room()?;
        let e = self.inner.symlink(ctx, linkname, parent, name)?;
        self.admit(ctx, e)
    }

    fn mknod(
        &self,
        ctx: &Context,
        inode: u64,
        name: &CStr,
        mode: u32,
        _rdev: u32,
        umask: u32,
    ) -> io::Result<Entry> {
        self.writable()?;
        component(name)?;
        self.may_change(ctx, inode, name)?;
        match mode & libc::S_IFMT {
            libc::S_IFREG | libc::S_IFIFO | libc::S_IFSOCK => {}
            _ => return Err(err(libc::EPERM)),
        }
        self.room()?;
        let e = self
            .inner
            .mknod(ctx, inode, name, safe_mode(mode, false), 0, umask)?;
        self.admit(ctx, e)
    }

    fn mkdir(
        &self,
        ctx: &Context,
        parent: u64,
        name: &CStr,
        mode: u32,
        umask: u32,
    ) -> io::Result<Entry> {
        self.writable()?;
        component(name)?;
        self.may_change(ctx, parent, name)?;
        self.room()?;
        let e = self
            .inner
            .mkdir(ctx, parent, name, safe_mode(mode, true), umask)?;
        self.admit(ctx, e)
    }

    fn unlink(&self, ctx: &Context, parent: u64, name: &CStr) -> io::Result<()> {
        self.writable()?;
        component(name)?;
        self.may_change(ctx, parent, name)?;
        self.inner.unlink(ctx, parent, name)
    }

    fn rmdir(&self, ctx: &Context, parent: u64, name: &CStr) -> io::Result<()> {
        self.writable()?;
        component(name)?;
        self.may_change(ctx, parent, name)?;
        self.inner.rmdir(ctx, parent, name)
    }

    fn rename(
        &self,
        ctx: &Context,
        olddir: u64,
        oldname: &CStr,
        newdir: u64,
        newname: &CStr,
        flags: u32,
    ) -> io::Result<()> {
        self.writable()?;
        component(oldname)?;
        component(newname)?;
        self.may_change(ctx, olddir, oldname)?;
        self.may_change(ctx, newdir, newname)?;
        // RENAME_WHITEOUT would create a device node.
        if flags & !(RENAME_NOREPLACE | RENAME_EXCHANGE) != 0 {
            return Err(err(libc::EINVAL));
        }
        self.inner
            .rename(ctx, olddir, oldname, newdir, newname, flags)
    }

    fn link(&self, ctx: &Context, inode: u64, newparent: u64, newname: &CStr) -> io::Result<Entry> {
        self.writable()?;
        component(newname)?;
        self.may_change(ctx, newparent, newname)?;
        // Not PassthroughFs's link: its linkat(AT_EMPTY_PATH) needs
        // CAP_DAC_READ_SEARCH on the host (before Linux 6.10), which a
        // user's or a jailed vmapp does not have. Through /proc/self/fd, as
        // virtiofsd does, it needs nothing.
        let src = self.reopen(ctx, inode, false)?;
        let dir = self.reopen(ctx, newparent, true)?;
        let from = std::ffi::CString::new(format!("/proc/self/fd/{}", src.as_raw_fd()))
            .map_err(|_| err(libc::EINVAL))?;
        // SAFETY: valid strings and fds; the return value is checked.
        let r = unsafe {
            libc::linkat(
                libc::AT_FDCWD,
                from.as_ptr(),
                dir.as_raw_fd(),
                newname.as_ptr(),
                libc::AT_SYMLINK_FOLLOW,
            )
        };
        if r != 0 {
            return Err(io::Error::last_os_error());
        }
        let e = self.inner.lookup(ctx, newparent, newname)?;
        self.admit(ctx, e)
    }

    fn open(
        &self,
        ctx: &Context,
        inode: u64,
        flags: u32,
        fuse_flags: u32,
    ) -> io::Result<(Option<u64>, OpenOptions, Option<u32>)> {
        self.openable(ctx, inode, flags)?;
        self.handle_room()?;
        let r = self.inner.open(ctx, inode, host_flags(flags), fuse_flags)?;
        self.took_handle(r.0);
        self.opened_with(r.0, host_flags(flags));
        Ok(r)
    }

    fn create(
        &self,
        ctx: &Context,
        parent: u64,
        name: &CStr,
        mut args: CreateIn,
    ) -> io::Result<(Entry, Option<u64>, OpenOptions, Option<u32>)> {
        self.writable()?;
        component(name)?;
        self.may_change(ctx, parent, name)?;
        self.room()?;
        self.handle_room()?;
        args.mode = safe_mode(args.mode, false);
        let exclusive = args.flags & libc::O_EXCL as u32 != 0;
        let excl = CreateIn {
            flags: host_flags(args.flags) | libc::O_EXCL as u32,
            ..args
        };
        match self.inner.create(ctx, parent, name, excl) {
            Err(e) if !exclusive && e.raw_os_error() == Some(libc::EEXIST) => {
                // An existing entry is opened like OPEN opens it: only a
                // regular file, never through a symlink, never a FIFO.
                let entry = self.lookup(ctx, parent, name)?;
                let opened = self.openable(ctx, entry.inode, args.flags).and_then(|()| {
                    self.inner
                        .open(ctx, entry.inode, host_flags(args.flags), args.fuse_flags)
                });
                match opened {
                    Ok((h, o, p)) => {
                        self.took_handle(h);
                        self.opened_with(h, host_flags(args.flags));
                        Ok((entry, h, o, p))
                    }
                    Err(e) => {
                        self.forget(ctx, entry.inode, 1);
                        Err(e)
                    }
                }
            }
            Ok((entry, h, o, p)) => {
                self.took_handle(h);
                self.opened_with(h, host_flags(args.flags) | libc::O_EXCL as u32);
                Ok((self.admit(ctx, entry)?, h, o, p))
            }
            Err(e) => Err(e),
        }
    }

    fn read(
        &self,
        ctx: &Context,
        inode: u64,
        handle: u64,
        w: &mut dyn ZeroCopyWriter,
        size: u32,
        offset: u64,
        lock_owner: Option<u64>,
        flags: u32,
    ) -> io::Result<usize> {
        // The guest's flags go unused: the handle's own are passed.
        let _ = flags;
        let flags = self.flags_of(handle)?;
        self.inner
            .read(ctx, inode, handle, w, size, offset, lock_owner, flags)
    }

    fn write(
        &self,
        ctx: &Context,
        inode: u64,
        handle: u64,
        r: &mut dyn ZeroCopyReader,
        size: u32,
        offset: u64,
        lock_owner: Option<u64>,
        delayed_write: bool,
        flags: u32,
        fuse_flags: u32,
    ) -> io::Result<usize> {
        self.writable()?;
        // The guest's flags go unused: the handle's own are passed.
        let _ = flags;
        let flags = self.flags_of(handle)?;
        self.inner.write(
            ctx,
            inode,
            handle,
            r,
            size,
            offset,
            lock_owner,
            delayed_write,
            flags,
            fuse_flags,
        )
    }

    fn flush(&self, ctx: &Context, inode: u64, handle: u64, lock_owner: u64) -> io::Result<()> {
        self.inner.flush(ctx, inode, handle, lock_owner)
    }

    fn fsync(&self, ctx: &Context, inode: u64, datasync: bool, handle: u64) -> io::Result<()> {
        self.inner.fsync(ctx, inode, datasync, handle)
    }

    fn fallocate(
        &self,
        ctx: &Context,
        inode: u64,
        handle: u64,
        mode: u32,
        offset: u64,
        length: u64,
    ) -> io::Result<()> {
        self.writable()?;
        self.inner
            .fallocate(ctx, inode, handle, mode, offset, length)
    }

    fn release(
        &self,
        ctx: &Context,
        inode: u64,
        flags: u32,
        handle: u64,
        flush: bool,
        flock_release: bool,
        lock_owner: Option<u64>,
    ) -> io::Result<()> {
        self.inner
            .release(ctx, inode, flags, handle, flush, flock_release, lock_owner)?;
        self.dropped_handle();
        self.open_flags
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .remove(&handle);
        Ok(())
    }

    fn statfs(&self, ctx: &Context, inode: u64) -> io::Result<statvfs64> {
        let mut st = self.inner.statfs(ctx, inode)?;
        if self.read_only {
            st.f_flag |= libc::ST_RDONLY;
        }
        Ok(st)
    }

    fn setxattr(
        &self,
        _ctx: &Context,
        _inode: u64,
        _name: &CStr,
        _value: &[u8],
        _flags: u32,
    ) -> io::Result<()> {
        self.writable()?;
        Err(err(libc::EOPNOTSUPP))
    }

    fn removexattr(&self, _ctx: &Context, _inode: u64, _name: &CStr) -> io::Result<()> {
        self.writable()?;
        Err(err(libc::EOPNOTSUPP))
    }

    fn opendir(
        &self,
        ctx: &Context,
        inode: u64,
        flags: u32,
    ) -> io::Result<(Option<u64>, OpenOptions)> {
        if self.kind(ctx, inode)? != libc::S_IFDIR {
            return Err(err(libc::ENOTDIR));
        }
        self.handle_room()?;
        let r = self.inner.opendir(ctx, inode, host_flags(flags))?;
        self.took_handle(r.0);
        Ok(r)
    }

    fn readdir(
        &self,
        ctx: &Context,
        inode: u64,
        handle: u64,
        size: u32,
        offset: u64,
        add_entry: &mut dyn FnMut(DirEntry) -> io::Result<usize>,
    ) -> io::Result<()> {
        let Some(view) = &self.view else {
            return self
                .inner
                .readdir(ctx, inode, handle, size, offset, add_entry);
        };
        // A hidden entry is skipped (its offset still moves the listing on):
        // by name, and, where the view hides what others may not read, by
        // what the entry is (a listing shows what a lookup would).
        let dir = self.identity(ctx, inode)?;
        let dirfd = if view.hides_by_mode(dir) {
            Some(self.reopen(ctx, inode, true)?)
        } else {
            None
        };
        self.inner
            .readdir(ctx, inode, handle, size, offset, &mut |d| {
                let shown = view.may_look_up(dir, d.name)
                    && (d.name == b"." || d.name == b".." || {
                        match &dirfd {
                            Some(fd) => {
                                stat_at(fd, d.name).is_some_and(|st| view.may_show(dir, &st))
                            }
                            None => true,
                        }
                    });
                if shown {
                    add_entry(d)
                } else {
                    Ok(1)
                }
            })
    }

    fn readdirplus(
        &self,
        ctx: &Context,
        inode: u64,
        handle: u64,
        size: u32,
        offset: u64,
        add_entry: &mut dyn FnMut(DirEntry, Entry) -> io::Result<usize>,
    ) -> io::Result<()> {
        // Not negotiated with a view: a guest that asks anyway is refused.
        if self.view.is_some() {
            return Err(err(libc::ENOSYS));
        }
        // Near the budget the listing goes on (an error here would fail the
        // guest's getdents: Linux does not fall back to READDIR), but hands
        // out no inode: node id 0 means "no attributes", and the guest looks
        // the entry up when it uses it, which the budget governs.
        if self.held().len() + READDIRPLUS_ROOM > self.max_inodes {
            return self
                .inner
                .readdir(ctx, inode, handle, size, offset, &mut |d| {
                    add_entry(d, unlooked_entry())
                });
        }
        self.inner
            .readdirplus(ctx, inode, handle, size, offset, &mut |d, e| {
                let ino = e.inode;
                let n = add_entry(d, e)?;
                if n > 0 {
                    *self.held().entry(ino).or_insert(0) += 1;
                }
                Ok(n)
            })
    }

    fn fsyncdir(&self, ctx: &Context, inode: u64, datasync: bool, handle: u64) -> io::Result<()> {
        self.inner.fsyncdir(ctx, inode, datasync, handle)
    }

    fn releasedir(&self, ctx: &Context, inode: u64, flags: u32, handle: u64) -> io::Result<()> {
        self.inner.releasedir(ctx, inode, flags, handle)?;
        self.dropped_handle();
        Ok(())
    }

    fn access(&self, ctx: &Context, inode: u64, mask: u32) -> io::Result<()> {
        if self.read_only && mask & libc::W_OK as u32 != 0 {
            return Err(err(libc::EROFS));
        }
        self.inner.access(ctx, inode, mask)
    }

    fn lseek(
        &self,
        ctx: &Context,
        inode: u64,
        handle: u64,
        offset: u64,
        whence: u32,
    ) -> io::Result<u64> {
        self.inner.lseek(ctx, inode, handle, offset, whence)
    }

    fn id_remap(&self, ctx: &mut Context) -> io::Result<()> {
        // Every request runs with vmapp's own credentials: PassthroughFs
        // switches credentials only for a non-zero uid/gid.
        ctx.uid = 0;
        ctx.gid = 0;
        Ok(())
    }
}

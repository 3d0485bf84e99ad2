//! vmapp's jail (after Firecracker's jailer and crosvm's minijail, without
//! root): the process that runs the VM lives in its own user, mount, PID,
//! IPC and network namespaces, in a root that holds only what this VM needs
//! (its kernel, initramfs, disks, shares, runtime directory and `/dev/kvm`),
//! with `no_new_privs` and, where the kernel has it, Landlock (no program can
//! be executed, nothing written outside the VM's writable paths).
//!
//! [`enter`] forks: the parent stays outside, waits, passes stop signals on
//! (the first SIGINT/SIGTERM/SIGHUP as SIGTERM, a second one or SIGQUIT as
//! SIGKILL) and returns the child's status; the child (PID 1 of
//! the new PID namespace) builds the root, moves into it and goes on to run
//! the VM. The compositor's socket is not in the root and abstract sockets
//! belong to the network namespace, so only the wl-proxy process (started
//! before) holds a compositor connection. Call it while the process has one
//! thread: user namespaces refuse multi-threaded callers.

use std::ffi::CString;
use std::io;
use std::os::fd::{FromRawFd, OwnedFd};
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};

/// Errors building the jail.
#[derive(Debug, thiserror::Error)]
pub enum JailError {
    /// A namespace could not be created (user namespaces disabled?).
    #[error("cannot create the jail's namespaces ({0}); user namespaces may be disabled here: run with --jail=off")]
    Unshare(io::Error),
    /// A step of building the jail failed.
    #[error("jail: {what}: {err}")]
    Step {
        /// What was being done.
        what: String,
        /// Why it failed.
        err: io::Error,
    },
}

fn step(what: impl Into<String>) -> impl FnOnce(io::Error) -> JailError {
    let what = what.into();
    move |err| JailError::Step { what, err }
}

fn check(r: libc::c_int, what: impl Into<String>) -> Result<(), JailError> {
    if r < 0 {
        return Err(step(what)(io::Error::last_os_error()));
    }
    Ok(())
}

/// What the jail holds.
#[derive(Debug, Default)]
pub struct Spec {
    /// Host paths bound at the same path: (path, writable). Files and
    /// directories (directories with what is mounted below them); a symlink
    /// is copied as a symlink.
    pub paths: Vec<(PathBuf, bool)>,
    /// Writable directories bound without what is mounted below them (the
    /// runtime directory holding `scratch`).
    pub runtime: Vec<PathBuf>,
    /// An empty directory the jail's root is built on (it must not be under
    /// any of `paths`' directories but the runtime one).
    pub scratch: PathBuf,
    /// Paths under `paths` hidden in the jail (an empty file or directory
    /// mounted over each): what the guest's view hides, for a vmapp that
    /// runs as root and could otherwise read it (`/etc/shadow`).
    pub masked: Vec<PathBuf>,
}

/// Most entries [`unreadable_by_others`] looks at in one tree.
const MASK_SCAN_LIMIT: usize = 20_000;

/// The entries under `tree` that other users may not read (files without
/// `o+r`, directories without `o+rx`; not descended into), looking at most
/// at [`MASK_SCAN_LIMIT`] entries; symlinks are left alone (the view does
/// not follow them out of its trees).
pub fn unreadable_by_others(tree: &Path) -> Vec<PathBuf> {
    use std::os::unix::fs::PermissionsExt;
    let mut out = Vec::new();
    let mut todo = vec![tree.to_path_buf()];
    let mut seen = 0;
    while let Some(dir) = todo.pop() {
        let Ok(rd) = std::fs::read_dir(&dir) else {
            continue;
        };
        for e in rd.flatten() {
            seen += 1;
            if seen > MASK_SCAN_LIMIT {
                tracing::warn!(
                    "jail: {} has too many entries to look through",
                    tree.display()
                );
                return out;
            }
            let Ok(md) = e.metadata() else { continue };
            let mode = md.permissions().mode();
            if md.is_dir() {
                if mode & 0o005 != 0o005 {
                    out.push(e.path());
                } else {
                    todo.push(e.path());
                }
            } else if md.is_file() && mode & 0o004 == 0 {
                out.push(e.path());
            }
        }
    }
    out
}

/// Checks that the directory of a user's vsock socket `sock` (`--vsock
/// PATH`) may be bound into the jail whole, as it must be (the VMM binds
/// PATH and connects to the `PATH_PORT` sockets host programs make there):
/// it must be this user's, closed to others, and hold nothing but this
/// VM's sockets — else the jailed VMM would reach every other socket there
/// (with `$XDG_RUNTIME_DIR/vm.sock`: the session bus, the compositor,
/// PipeWire), and another user could bind a `PATH_PORT` first.
pub fn check_vsock_dir(sock: &Path) -> Result<(), JailError> {
    use std::os::unix::fs::MetadataExt;
    let refuse = |why: String| JailError::Step {
        what: format!("--vsock {}", sock.display()),
        err: io::Error::other(why),
    };
    let (Some(dir), Some(name)) = (sock.parent(), sock.file_name()) else {
        return Err(refuse("not a socket path".into()));
    };
    let dir = if dir.as_os_str().is_empty() {
        Path::new(".")
    } else {
        dir
    };
    let md = std::fs::symlink_metadata(dir).map_err(step(format!("{}", dir.display())))?;
    // SAFETY: getuid has no preconditions.
    let uid = unsafe { libc::getuid() };
    if !md.is_dir() || md.uid() != uid || md.mode() & 0o077 != 0 {
        return Err(refuse(format!(
            "the jail binds its directory {} whole: it must be yours and 0700 (or use --jail=off)",
            dir.display()
        )));
    }
    let name = name.as_bytes();
    for e in std::fs::read_dir(dir).map_err(step(format!("{}", dir.display())))? {
        let e = e.map_err(step(format!("{}", dir.display())))?;
        let n = e.file_name();
        let n = n.as_bytes();
        let ours = n == name || (n.starts_with(name) && n.get(name.len()) == Some(&b'_'));
        if !ours {
            return Err(refuse(format!(
                "the jail binds its directory {} whole, which holds {:?} besides this VM's sockets: give the VM a directory of its own (or use --jail=off)",
                dir.display(),
                String::from_utf8_lossy(n)
            )));
        }
    }
    Ok(())
}

/// Which side of [`enter`]'s fork this is.
#[derive(Debug)]
pub enum Side {
    /// Outside: the jailed child has ended with this status.
    Parent(u8),
    /// Inside: go on and run the VM.
    Child,
}

const STOP_SIGNALS: [libc::c_int; 4] = [libc::SIGINT, libc::SIGTERM, libc::SIGHUP, libc::SIGQUIT];

/// Enters the jail (see the module documentation).
pub fn enter(spec: &Spec) -> Result<Side, JailError> {
    // SAFETY: getuid/getgid have no preconditions.
    let (uid, gid) = unsafe { (libc::getuid(), libc::getgid()) };
    let mut waited = STOP_SIGNALS.to_vec();
    waited.push(libc::SIGCHLD);
    let set = crate::stop::sigset(&waited);
    // SAFETY: a blank sigset_t for the old mask.
    let mut old: libc::sigset_t = unsafe { std::mem::zeroed() };
    // SAFETY: valid set pointers.
    unsafe { libc::pthread_sigmask(libc::SIG_BLOCK, &set, &mut old) };
    let flags = libc::CLONE_NEWUSER
        | libc::CLONE_NEWNS
        | libc::CLONE_NEWPID
        | libc::CLONE_NEWIPC
        | libc::CLONE_NEWNET;
    // SAFETY: unshare takes flags only.
    if unsafe { libc::unshare(flags) } < 0 {
        let e = io::Error::last_os_error();
        // SAFETY: restores the mask saved above.
        unsafe { libc::pthread_sigmask(libc::SIG_SETMASK, &old, std::ptr::null_mut()) };
        return Err(JailError::Unshare(e));
    }
    // Our own ids only: what an unprivileged user may map.
    let _ = std::fs::write("/proc/self/setgroups", "deny");
    std::fs::write("/proc/self/uid_map", format!("{uid} {uid} 1")).map_err(step("uid_map"))?;
    std::fs::write("/proc/self/gid_map", format!("{gid} {gid} 1")).map_err(step("gid_map"))?;
    // SAFETY: this process has one thread (unshare would have refused a
    // user namespace otherwise), so the child may run any code.
    let pid = unsafe { libc::fork() };
    check(pid, "fork")?;
    if pid > 0 {
        // Outside the jail, in the host's namespaces: from here on it only
        // waits, passes signals on, stops the helpers and removes the
        // runtime directory.
        seccomp_policies::install_default(seccomp_policies::ThreadKind::JailParent)
            .map_err(|e| step("seccomp")(io::Error::other(e.to_string())))?;
        return Ok(Side::Parent(wait_child(pid, &set)));
    }
    // SAFETY: restores the mask saved above; PDEATHSIG takes plain values.
    unsafe {
        libc::pthread_sigmask(libc::SIG_SETMASK, &old, std::ptr::null_mut());
        libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL);
    }
    build_root(spec)?;
    // SAFETY: plain prctl.
    let r = unsafe { libc::prctl(libc::PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0) };
    check(r, "no_new_privs")?;
    match landlock(spec) {
        Ok(abi) => tracing::info!("jail: Landlock ABI {abi} enforced"),
        Err(e)
            if e.raw_os_error() == Some(libc::ENOSYS)
                || e.raw_os_error() == Some(libc::EOPNOTSUPP) =>
        {
            tracing::warn!(
                "jail: this kernel has no Landlock; the jail is namespaces and no_new_privs only"
            )
        }
        Err(e) => return Err(step("landlock")(e)),
    }
    Ok(Side::Child)
}

/// The parent's side: waits for the child and passes stop signals on: the
/// first SIGINT, SIGTERM or SIGHUP as SIGTERM (the jailed vmapp then stops
/// its VM gracefully, see `stop`), a second one or SIGQUIT as SIGKILL.
fn wait_child(pid: libc::pid_t, set: &libc::sigset_t) -> u8 {
    let mut stopped_by = None;
    let mut asked = false;
    loop {
        let mut status = 0;
        // SAFETY: waits for our own child.
        let r = unsafe { libc::waitpid(pid, &mut status, libc::WNOHANG) };
        if r == pid {
            // Killed on our behalf: vmapp's status is the signal it got.
            if let Some(sig) = stopped_by {
                return 128u8.wrapping_add(sig as u8);
            }
            if libc::WIFEXITED(status) {
                return libc::WEXITSTATUS(status) as u8;
            }
            if libc::WIFSIGNALED(status) {
                return 128u8.wrapping_add(libc::WTERMSIG(status) as u8);
            }
        } else if r < 0 && io::Error::last_os_error().raw_os_error() == Some(libc::ECHILD) {
            return 70;
        }
        let mut sig = 0;
        // SAFETY: valid set and out pointer.
        unsafe { libc::sigwait(set, &mut sig) };
        if sig == libc::SIGQUIT || (asked && STOP_SIGNALS.contains(&sig)) {
            stopped_by.get_or_insert(sig);
            // SAFETY: our own child.
            unsafe { libc::kill(pid, libc::SIGKILL) };
        } else if STOP_SIGNALS.contains(&sig) {
            asked = true;
            // SAFETY: our own child.
            unsafe { libc::kill(pid, libc::SIGTERM) };
        }
    }
}

fn cstr(p: &Path) -> Result<CString, JailError> {
    CString::new(p.as_os_str().as_bytes())
        .map_err(|_| step(format!("{}", p.display()))(io::Error::from_raw_os_error(libc::EINVAL)))
}

fn mount(
    src: Option<&Path>,
    dst: &Path,
    fstype: Option<&str>,
    flags: libc::c_ulong,
) -> Result<(), JailError> {
    let s = src.map(cstr).transpose()?;
    let d = cstr(dst)?;
    let t = fstype.map(|t| CString::new(t).unwrap_or_default());
    // SAFETY: valid NUL-terminated strings or null pointers.
    let r = unsafe {
        libc::mount(
            s.as_ref().map_or(std::ptr::null(), |s| s.as_ptr()),
            d.as_ptr(),
            t.as_ref().map_or(std::ptr::null(), |t| t.as_ptr()),
            flags,
            std::ptr::null(),
        )
    };
    check(r, format!("mount {}", dst.display()))
}

/// The flags a read-only remount of a bind must keep (the kernel refuses to
/// drop locked ones).
fn kept_flags(p: &Path) -> libc::c_ulong {
    let Ok(c) = cstr(p) else { return 0 };
    // SAFETY: statvfs is plain data, filled by the call.
    let mut st: libc::statvfs = unsafe { std::mem::zeroed() };
    // SAFETY: valid path and out pointer.
    if unsafe { libc::statvfs(c.as_ptr(), &mut st) } != 0 {
        return 0;
    }
    let mut f = 0;
    for (st_flag, ms) in [
        (libc::ST_NOSUID, libc::MS_NOSUID),
        (libc::ST_NODEV, libc::MS_NODEV),
        (libc::ST_NOEXEC, libc::MS_NOEXEC),
        (libc::ST_NOATIME, libc::MS_NOATIME),
        (libc::ST_NODIRATIME, libc::MS_NODIRATIME),
        (libc::ST_RELATIME, libc::MS_RELATIME),
    ] {
        if st.f_flag & st_flag != 0 {
            f |= ms;
        }
    }
    f
}

/// Binds `src` at `dst` (made first in the new root), read-only unless
/// `writable`, with what is mounted below it if `recursive`.
fn bind(src: &Path, dst: &Path, writable: bool, recursive: bool) -> Result<(), JailError> {
    // A path that is not there is left out: the VMM reports it as the
    // missing disk, share or kernel it is.
    let Ok(lmd) = std::fs::symlink_metadata(src) else {
        return Ok(());
    };
    if let Some(parent) = dst.parent() {
        std::fs::create_dir_all(parent).map_err(step(format!("mkdir {}", parent.display())))?;
    }
    if lmd.file_type().is_symlink() {
        let target = std::fs::read_link(src).map_err(step(format!("{}", src.display())))?;
        return std::os::unix::fs::symlink(target, dst)
            .map_err(step(format!("symlink {}", dst.display())));
    }
    let md = std::fs::metadata(src).map_err(step(format!("{}", src.display())))?;
    if md.is_dir() {
        std::fs::create_dir_all(dst).map_err(step(format!("mkdir {}", dst.display())))?;
    } else if !dst.exists() {
        std::fs::write(dst, b"").map_err(step(format!("create {}", dst.display())))?;
    }
    let rec = if recursive { libc::MS_REC } else { 0 };
    mount(Some(src), dst, None, libc::MS_BIND | rec)?;
    if !writable {
        let flags = libc::MS_BIND | libc::MS_REMOUNT | libc::MS_RDONLY | kept_flags(dst);
        mount(None, dst, None, flags)?;
    }
    Ok(())
}

/// Mounts an empty read-only file or directory over each of
/// `spec.masked` in the root being built at `root`.
fn mask(spec: &Spec, root: &Path) -> Result<(), JailError> {
    if spec.masked.is_empty() {
        return Ok(());
    }
    let empty_dir = root.join(".empty-dir");
    let empty_file = root.join(".empty-file");
    std::fs::create_dir_all(&empty_dir).map_err(step("mkdir .empty-dir"))?;
    std::fs::write(&empty_file, b"").map_err(step("create .empty-file"))?;
    // Closed to others, as what they cover was: the guest's view (which
    // hides what others may not read) goes on hiding them.
    for p in [&empty_dir, &empty_file] {
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(p, std::fs::Permissions::from_mode(0o000))
            .map_err(step("chmod the empty stand-ins"))?;
    }
    for p in &spec.masked {
        let at = root.join(p.strip_prefix("/").unwrap_or(p));
        let Ok(md) = std::fs::symlink_metadata(&at) else {
            continue;
        };
        let src = if md.is_dir() {
            &empty_dir
        } else if md.is_file() {
            &empty_file
        } else {
            continue;
        };
        mount(Some(src), &at, None, libc::MS_BIND)?;
        let flags = libc::MS_BIND | libc::MS_REMOUNT | libc::MS_RDONLY | kept_flags(&at);
        mount(None, &at, None, flags)?;
    }
    Ok(())
}

/// Builds the root on `spec.scratch` and moves into it.
fn build_root(spec: &Spec) -> Result<(), JailError> {
    let root = spec.scratch.as_path();
    // A mount namespace of the child's own: the parent shares the one it
    // unshared, and pivot_root would move the parent's root too (leaving it
    // unable to remove the runtime directory, a mount point there).
    // SAFETY: unshare takes flags only.
    let rc = unsafe { libc::unshare(libc::CLONE_NEWNS) };
    check(rc, "unshare mount namespace")?;
    mount(None, Path::new("/"), None, libc::MS_REC | libc::MS_PRIVATE)?;
    std::fs::create_dir_all(root).map_err(step("scratch directory"))?;
    mount(
        Some(Path::new("tmpfs")),
        root,
        Some("tmpfs"),
        libc::MS_NOSUID,
    )?;
    let inside = |p: &Path| root.join(p.strip_prefix("/").unwrap_or(p));
    for (p, writable) in &spec.paths {
        bind(p, &inside(p), *writable, true)?;
    }
    for p in &spec.runtime {
        bind(p, &inside(p), true, false)?;
    }
    for dev in ["/dev/kvm", "/dev/null"] {
        bind(Path::new(dev), &inside(Path::new(dev)), true, false)?;
    }
    mask(spec, root)?;
    // This PID namespace's /proc, mounted while the host's is still in
    // reach (the kernel lets a user namespace mount proc only then).
    let proc_dir = root.join("proc");
    std::fs::create_dir_all(&proc_dir).map_err(step("mkdir /proc"))?;
    mount(
        Some(Path::new("proc")),
        &proc_dir,
        Some("proc"),
        libc::MS_NOSUID | libc::MS_NODEV | libc::MS_NOEXEC,
    )?;
    let old = root.join(".old");
    std::fs::create_dir_all(&old).map_err(step("mkdir .old"))?;
    let (r, o) = (cstr(root)?, cstr(&old)?);
    // SAFETY: valid paths.
    let rc = unsafe { libc::syscall(libc::SYS_pivot_root, r.as_ptr(), o.as_ptr()) };
    check(rc as libc::c_int, "pivot_root")?;
    std::env::set_current_dir("/").map_err(step("chdir /"))?;
    // SAFETY: valid path.
    let rc = unsafe { libc::umount2(c"/.old".as_ptr(), libc::MNT_DETACH) };
    check(rc, "detach the old root")?;
    let _ = std::fs::remove_dir("/.old");
    // Nothing new appears in the root itself.
    mount(
        None,
        Path::new("/"),
        None,
        libc::MS_BIND | libc::MS_REMOUNT | libc::MS_RDONLY | libc::MS_NOSUID,
    )
}

// Landlock's ABI (linux/landlock.h).
const LANDLOCK_CREATE_RULESET_VERSION: u32 = 1;
const LANDLOCK_RULE_PATH_BENEATH: libc::c_int = 1;
const FS_EXECUTE: u64 = 1 << 0;
const FS_WRITE_FILE: u64 = 1 << 1;
const FS_READ_FILE: u64 = 1 << 2;
const FS_READ_DIR: u64 = 1 << 3;
const FS_REMOVE_DIR: u64 = 1 << 4;
const FS_REMOVE_FILE: u64 = 1 << 5;
const FS_MAKE_CHAR: u64 = 1 << 6;
const FS_MAKE_DIR: u64 = 1 << 7;
const FS_MAKE_REG: u64 = 1 << 8;
const FS_MAKE_SOCK: u64 = 1 << 9;
const FS_MAKE_FIFO: u64 = 1 << 10;
const FS_MAKE_BLOCK: u64 = 1 << 11;
const FS_MAKE_SYM: u64 = 1 << 12;
const FS_REFER: u64 = 1 << 13;
const FS_TRUNCATE: u64 = 1 << 14;

#[repr(C)]
struct RulesetAttr {
    handled_access_fs: u64,
}

#[repr(C, packed)]
struct PathBeneathAttr {
    allowed_access: u64,
    parent_fd: i32,
}

/// What Landlock may handle at `abi` (device ioctls, ABI 5, are left alone:
/// the VMM's life is ioctls on /dev/kvm).
fn handled(abi: i64) -> u64 {
    let mut h = FS_EXECUTE
        | FS_WRITE_FILE
        | FS_READ_FILE
        | FS_READ_DIR
        | FS_REMOVE_DIR
        | FS_REMOVE_FILE
        | FS_MAKE_CHAR
        | FS_MAKE_DIR
        | FS_MAKE_REG
        | FS_MAKE_SOCK
        | FS_MAKE_FIFO
        | FS_MAKE_BLOCK
        | FS_MAKE_SYM;
    if abi >= 2 {
        h |= FS_REFER;
    }
    if abi >= 3 {
        h |= FS_TRUNCATE;
    }
    h
}

/// Restricts this thread (and what it starts) to reading the jail, writing
/// only its writable paths, and executing nothing.
pub fn landlock(spec: &Spec) -> io::Result<i64> {
    let writable: Vec<&Path> = spec
        .paths
        .iter()
        .filter(|(_, w)| *w)
        .map(|(p, _)| p.as_path())
        .chain(spec.runtime.iter().map(PathBuf::as_path))
        .chain([Path::new("/dev/kvm"), Path::new("/dev/null")])
        .collect();
    restrict(&[Path::new("/")], &writable)
}

/// Landlock: read everything under `readable`, also change what is under
/// `writable`, execute nothing.
pub fn restrict(readable: &[&Path], writable: &[&Path]) -> io::Result<i64> {
    // SAFETY: the version query takes no attribute.
    let abi = unsafe {
        libc::syscall(
            libc::SYS_landlock_create_ruleset,
            std::ptr::null::<RulesetAttr>(),
            0usize,
            LANDLOCK_CREATE_RULESET_VERSION,
        )
    };
    if abi < 1 {
        return Err(io::Error::last_os_error());
    }
    let all = handled(abi);
    let attr = RulesetAttr {
        handled_access_fs: all,
    };
    // SAFETY: a valid attribute of the size passed.
    let fd = unsafe {
        libc::syscall(
            libc::SYS_landlock_create_ruleset,
            &attr,
            std::mem::size_of::<RulesetAttr>(),
            0u32,
        )
    };
    if fd < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: a new fd this function owns.
    let ruleset = unsafe { OwnedFd::from_raw_fd(fd as i32) };
    let read = FS_READ_FILE | FS_READ_DIR;
    let write = all & !FS_EXECUTE & !FS_MAKE_CHAR & !FS_MAKE_BLOCK;
    for (paths, access) in [(readable, read), (writable, write)] {
        for p in paths {
            add_rule(&ruleset, p, access)?;
        }
    }
    // SAFETY: a valid ruleset fd; no_new_privs is set by the caller.
    if unsafe {
        libc::syscall(
            libc::SYS_landlock_restrict_self,
            std::os::fd::AsRawFd::as_raw_fd(&ruleset),
            0u32,
        )
    } < 0
    {
        return Err(io::Error::last_os_error());
    }
    Ok(abi)
}

fn add_rule(ruleset: &OwnedFd, p: &Path, mut access: u64) -> io::Result<()> {
    let c = CString::new(p.as_os_str().as_bytes())
        .map_err(|_| io::Error::from_raw_os_error(libc::EINVAL))?;
    // SAFETY: a valid path; the fd is owned below.
    let fd = unsafe { libc::open(c.as_ptr(), libc::O_PATH | libc::O_CLOEXEC) };
    if fd < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: a new fd this function owns.
    let f = unsafe { OwnedFd::from_raw_fd(fd) };
    if !std::fs::metadata(p)?.is_dir() {
        // Directory rights do not apply to a file.
        access &= FS_EXECUTE | FS_WRITE_FILE | FS_READ_FILE | FS_TRUNCATE;
    }
    let attr = PathBeneathAttr {
        allowed_access: access,
        parent_fd: std::os::fd::AsRawFd::as_raw_fd(&f),
    };
    // SAFETY: a valid ruleset fd and a valid attribute.
    let r = unsafe {
        libc::syscall(
            libc::SYS_landlock_add_rule,
            std::os::fd::AsRawFd::as_raw_fd(ruleset),
            LANDLOCK_RULE_PATH_BENEATH,
            &attr,
            0u32,
        )
    };
    if r < 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn what_others_cannot_read_is_found_for_masking() {
        use std::os::unix::fs::PermissionsExt;
        let t = tempfile::tempdir().unwrap();
        let r = t.path();
        let set = |p: &str, m| {
            std::fs::set_permissions(r.join(p), std::fs::Permissions::from_mode(m)).unwrap()
        };
        for d in ["ssl", "ssl/private", "ssl/certs"] {
            std::fs::create_dir(r.join(d)).unwrap();
        }
        for f in ["shadow", "passwd", "ssl/private/key", "ssl/certs/ca"] {
            std::fs::write(r.join(f), "x").unwrap();
        }
        set("shadow", 0o640);
        set("passwd", 0o644);
        set("ssl/private", 0o710);
        set("ssl/certs/ca", 0o644);
        let mut got = unreadable_by_others(r);
        got.sort();
        assert_eq!(got, vec![r.join("shadow"), r.join("ssl/private")]);
    }

    #[test]
    fn a_vsock_directory_is_bound_only_when_it_is_the_vms_own() {
        use std::os::unix::fs::PermissionsExt;
        let t = tempfile::tempdir().unwrap();
        let d = t.path().join("vm");
        std::fs::create_dir(&d).unwrap();
        let mode = |m| std::fs::set_permissions(&d, std::fs::Permissions::from_mode(m)).unwrap();
        mode(0o700);
        let sock = d.join("v.sock");
        check_vsock_dir(&sock).unwrap();
        std::fs::write(d.join("v.sock"), "").unwrap();
        std::fs::write(d.join("v.sock_1234"), "").unwrap();
        check_vsock_dir(&sock).unwrap();
        // Another socket there (the session bus, say) would be reachable.
        std::fs::write(d.join("bus"), "").unwrap();
        let e = check_vsock_dir(&sock).unwrap_err().to_string();
        assert!(e.contains("\"bus\""), "{e}");
        std::fs::remove_file(d.join("bus")).unwrap();
        std::fs::write(d.join("v.sockX"), "").unwrap();
        assert!(check_vsock_dir(&sock).is_err(), "only PATH and PATH_PORT");
        std::fs::remove_file(d.join("v.sockX")).unwrap();
        // Open to others: another user could bind PATH_PORT first.
        mode(0o1777);
        assert!(check_vsock_dir(&sock)
            .unwrap_err()
            .to_string()
            .contains("0700"));
    }

    /// Runs `f` in a forked child; its exit status.
    fn in_child(f: impl FnOnce() -> i32) -> i32 {
        // SAFETY: the test's child runs `f` and exits without returning.
        let pid = unsafe { libc::fork() };
        assert!(pid >= 0);
        if pid == 0 {
            let code = f();
            // SAFETY: leaves the child without running the test harness's exit.
            unsafe { libc::_exit(code) };
        }
        let mut st = 0;
        // SAFETY: our child.
        unsafe { libc::waitpid(pid, &mut st, 0) };
        libc::WEXITSTATUS(st)
    }

    #[test]
    fn landlock_allows_reading_writing_the_writable_and_nothing_else() {
        let t = tempfile::tempdir().unwrap();
        let (ro, rw) = (t.path().join("ro"), t.path().join("rw"));
        std::fs::create_dir_all(&ro).unwrap();
        std::fs::create_dir_all(&rw).unwrap();
        std::fs::write(ro.join("f"), "x").unwrap();
        std::fs::copy("/bin/true", rw.join("true")).unwrap();
        let code = in_child(|| {
            // SAFETY: plain prctl.
            unsafe { libc::prctl(libc::PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0) };
            if restrict(&[&ro], &[&rw]).is_err() {
                return 10;
            }
            let denied =
                |r: io::Result<()>| r.is_err_and(|e| e.raw_os_error() == Some(libc::EACCES));
            if std::fs::read(ro.join("f")).is_err() {
                return 11;
            }
            if std::fs::write(rw.join("new"), "y").is_err() {
                return 12;
            }
            if !denied(std::fs::write(ro.join("g"), "y")) {
                return 13;
            }
            if !denied(std::fs::read("/etc/passwd").map(drop)) {
                return 14;
            }
            // No program runs, even from the writable tree.
            if std::process::Command::new(rw.join("true")).status().is_ok() {
                return 15;
            }
            0
        });
        assert_eq!(code, 0, "landlock check {code} failed");
    }
}

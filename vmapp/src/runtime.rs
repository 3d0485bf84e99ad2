//! A running VM's private directory for its sockets (the agent's vsock
//! socket, the Wayland proxy's socket, the jail's scratch), 0700, removed
//! when the VM ends.
//!
//! An app profile's VM has a fixed one, `$XDG_RUNTIME_DIR/vmapp/NAME/`
//! (`/tmp/vmapp-UID/NAME/` without `XDG_RUNTIME_DIR`), held by an exclusive
//! `flock` on its `lock` file for as long as the VM runs: a second launch of
//! the same app finds the lock taken and says so, and a directory left by a
//! vmapp that was killed (its lock released with its last fd) is cleaned
//! and reused. Other VMs get a fresh `vmapp-XXXXXX` directory.

use std::ffi::CString;
use std::io::Write;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::{DirBuilderExt, MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};

/// Errors making a runtime directory.
#[derive(Debug, thiserror::Error)]
pub enum RuntimeError {
    /// The app's VM runs already.
    #[error("app {name} is already running (vmapp pid {pid}); stop it first")]
    Running {
        /// The app.
        name: String,
        /// The vmapp that holds it, as it wrote it.
        pid: String,
    },
    /// The directory is someone else's or not private.
    #[error("{}: {why}", path.display())]
    Unsafe {
        /// The directory.
        path: PathBuf,
        /// What is wrong.
        why: &'static str,
    },
    /// A file operation failed.
    #[error("{}: {source}", path.display())]
    Io {
        /// The path.
        path: PathBuf,
        /// The error.
        source: std::io::Error,
    },
}

fn io(path: &Path) -> impl FnOnce(std::io::Error) -> RuntimeError + '_ {
    move |source| RuntimeError::Io {
        path: path.to_path_buf(),
        source,
    }
}

/// A runtime directory; removed on drop.
pub struct RuntimeDir {
    path: PathBuf,
    _lock: Option<std::fs::File>,
}

/// The real user ID.
fn uid() -> u32 {
    // SAFETY: getuid has no preconditions.
    unsafe { libc::getuid() }
}

/// Where runtime directories live: `$XDG_RUNTIME_DIR` if it is this user's
/// and closed to others, else `/tmp/vmapp-UID` (made 0700 if missing).
/// Whichever it is must be this user's, a directory and not open to other
/// users, checked on every call: another local user who made
/// `/tmp/vmapp-UID` first (or opened it) could otherwise swap the VMs'
/// directories for theirs and answer vmapp's clients on their sockets.
pub fn base() -> Result<PathBuf, RuntimeError> {
    if let Some(xdg) = std::env::var_os("XDG_RUNTIME_DIR")
        .map(PathBuf::from)
        .filter(|p| p.is_absolute())
    {
        match std::fs::metadata(&xdg) {
            // Ours: it must be private too (a misconfiguration, said).
            Ok(md) if md.is_dir() && md.uid() == uid() => {
                check_private(&xdg, &md)?;
                return Ok(xdg);
            }
            // Another user's (left by `su`) or missing: not ours to use.
            Ok(_) | Err(_) => tracing::debug!(
                dir = %xdg.display(),
                "XDG_RUNTIME_DIR is not this user's directory; using /tmp"
            ),
        }
    }
    let dir = std::env::temp_dir().join(format!("vmapp-{}", uid()));
    private_dir(&dir)?;
    Ok(dir)
}

/// Checks that `md` (of `dir`, not followed if a symlink) is a directory of
/// ours that other users cannot enter.
fn check_private(dir: &Path, md: &std::fs::Metadata) -> Result<(), RuntimeError> {
    let why = if !md.is_dir() {
        Some("not a directory")
    } else if md.uid() != uid() {
        Some("belongs to another user")
    } else if md.permissions().mode() & 0o077 != 0 {
        Some("is open to other users (want 0700)")
    } else {
        None
    };
    match why {
        Some(why) => Err(RuntimeError::Unsafe {
            path: dir.to_path_buf(),
            why,
        }),
        None => Ok(()),
    }
}

/// Makes `dir` (0700) if missing and checks that it is ours and private
/// (a symlink is refused, not followed).
fn private_dir(dir: &Path) -> Result<(), RuntimeError> {
    match std::fs::DirBuilder::new().mode(0o700).create(dir) {
        Err(e) if e.kind() != std::io::ErrorKind::AlreadyExists => return Err(io(dir)(e)),
        _ => {}
    }
    let md = std::fs::symlink_metadata(dir).map_err(io(dir))?;
    check_private(dir, &md)
}

/// Opens the directory `dir` (not through a symlink) and checks again, on
/// what was opened, that it is ours and private: what follows works on this
/// descriptor, whatever is renamed meanwhile.
fn open_private(dir: &Path) -> Result<OwnedFd, RuntimeError> {
    let c = CString::new(dir.as_os_str().as_bytes()).map_err(|_| RuntimeError::Unsafe {
        path: dir.to_path_buf(),
        why: "has a NUL byte",
    })?;
    // SAFETY: a valid C string; the fd returned is owned below.
    let fd = unsafe {
        libc::open(
            c.as_ptr(),
            libc::O_RDONLY | libc::O_DIRECTORY | libc::O_NOFOLLOW | libc::O_CLOEXEC,
        )
    };
    if fd < 0 {
        return Err(io(dir)(std::io::Error::last_os_error()));
    }
    // SAFETY: open returned a new fd that nothing else owns.
    let fd = unsafe { OwnedFd::from_raw_fd(fd) };
    let f = std::fs::File::from(fd);
    let md = f.metadata().map_err(io(dir))?;
    check_private(dir, &md)?;
    Ok(f.into())
}

/// Opens (creating, 0600) `name` in the directory `dir`, not through a
/// symlink.
fn open_in(dir: &OwnedFd, name: &str, path: &Path) -> Result<std::fs::File, RuntimeError> {
    let c = CString::new(name).map_err(|_| RuntimeError::Unsafe {
        path: path.to_path_buf(),
        why: "has a NUL byte",
    })?;
    // SAFETY: a valid directory fd and C string; the fd returned is owned
    // below.
    let fd = unsafe {
        libc::openat(
            dir.as_raw_fd(),
            c.as_ptr(),
            libc::O_RDWR | libc::O_CREAT | libc::O_NOFOLLOW | libc::O_CLOEXEC,
            0o600 as libc::c_uint,
        )
    };
    if fd < 0 {
        return Err(io(path)(std::io::Error::last_os_error()));
    }
    // SAFETY: openat returned a new fd that nothing else owns.
    Ok(std::fs::File::from(unsafe { OwnedFd::from_raw_fd(fd) }))
}

/// Removes everything but `lock` from the directory open as `dir` (a
/// killed vmapp's sockets and scratch), through the descriptor.
fn clean(dir: &OwnedFd, path: &Path) -> Result<(), RuntimeError> {
    let via = PathBuf::from(format!("/proc/self/fd/{}", dir.as_raw_fd()));
    for e in std::fs::read_dir(&via).map_err(io(path))?.flatten() {
        if e.file_name() != "lock" {
            let p = via.join(e.file_name());
            // Not followed: a symlink is removed, not what it names.
            let r = if e.file_type().is_ok_and(|t| t.is_dir()) {
                std::fs::remove_dir_all(&p)
            } else {
                std::fs::remove_file(&p)
            };
            r.map_err(io(&path.join(e.file_name())))?;
        }
    }
    Ok(())
}

impl RuntimeDir {
    /// A fresh directory for a VM without a name.
    pub fn temp() -> Result<Self, RuntimeError> {
        let base = base()?;
        let t = tempfile::Builder::new()
            .prefix("vmapp-")
            .permissions(std::fs::Permissions::from_mode(0o700))
            .tempdir_in(&base)
            .map_err(io(&base))?;
        Ok(Self {
            path: t.keep(),
            _lock: None,
        })
    }

    /// The directory of app `name` (a checked profile name), taken for this
    /// run.
    pub fn named(name: &str) -> Result<Self, RuntimeError> {
        Self::named_in(&base()?, name)
    }

    fn named_in(base: &Path, name: &str) -> Result<Self, RuntimeError> {
        private_dir(base)?;
        let parent = base.join("vmapp");
        private_dir(&parent)?;
        let path = parent.join(name);
        private_dir(&path)?;
        let dir = open_private(&path)?;
        let lock_path = path.join("lock");
        let mut lock = open_in(&dir, "lock", &lock_path)?;
        // SAFETY: flock on an fd we own.
        if unsafe { libc::flock(lock.as_raw_fd(), libc::LOCK_EX | libc::LOCK_NB) } != 0 {
            let mut pid = String::new();
            let _ = std::io::Read::read_to_string(&mut lock, &mut pid);
            return Err(RuntimeError::Running {
                name: name.to_string(),
                pid: pid.trim().to_string(),
            });
        }
        // Ours now: whatever a killed vmapp left goes.
        clean(&dir, &path)?;
        lock.set_len(0).map_err(io(&lock_path))?;
        write!(lock, "{}", std::process::id()).map_err(io(&lock_path))?;
        Ok(Self {
            path,
            _lock: Some(lock),
        })
    }

    /// The directory.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// The VM's name: the app's, or the directory's (`vmapp-XXXXXX`).
    pub fn name(&self) -> String {
        self.path
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_default()
    }
}

/// The control socket's name in a runtime directory.
pub const CONTROL: &str = "control";

/// The runtime directory app `name` (a checked profile name) has while it
/// runs.
pub fn app_dir(name: &str) -> Result<PathBuf, RuntimeError> {
    Ok(base()?.join("vmapp").join(name))
}

/// Whether app `name`'s VM runs (its lock is held), whatever its state.
pub fn app_running(name: &str) -> bool {
    let Ok(dir) = app_dir(name) else {
        return false;
    };
    let Ok(f) = std::fs::File::open(dir.join("lock")) else {
        return false;
    };
    // SAFETY: flock on an fd we own; a shared lock we get is dropped with it.
    unsafe { libc::flock(f.as_raw_fd(), libc::LOCK_SH | libc::LOCK_NB) != 0 }
}

/// The control sockets of the VMs this user runs: (name, socket), apps
/// first, then VMs without a name.
pub fn control_sockets() -> Result<Vec<(String, PathBuf)>, RuntimeError> {
    let list = |dir: &Path, keep: &dyn Fn(&str) -> bool| -> Vec<(String, PathBuf)> {
        let mut v: Vec<(String, PathBuf)> = std::fs::read_dir(dir)
            .into_iter()
            .flatten()
            .flatten()
            .filter_map(|e| {
                let name = e.file_name().into_string().ok()?;
                let sock = e.path().join(CONTROL);
                (keep(&name) && sock.exists()).then_some((name, sock))
            })
            .collect();
        v.sort();
        v
    };
    let base = base()?;
    let mut all = list(&base.join("vmapp"), &|_| true);
    all.extend(list(&base, &|n| n.starts_with("vmapp-")));
    Ok(all)
}

impl Drop for RuntimeDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.path);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn mode(p: &Path) -> u32 {
        std::fs::metadata(p).unwrap().permissions().mode() & 0o777
    }

    #[test]
    fn an_app_dir_is_private_taken_once_and_cleaned_after_a_crash() {
        let t = tempfile::tempdir().unwrap();
        // A base open to others is refused, even when it is ours.
        std::fs::set_permissions(t.path(), std::fs::Permissions::from_mode(0o755)).unwrap();
        let e = RuntimeDir::named_in(t.path(), "app").err().expect("open");
        assert!(e.to_string().contains("0700"), "{e}");
        std::fs::set_permissions(t.path(), std::fs::Permissions::from_mode(0o700)).unwrap();
        let a = RuntimeDir::named_in(t.path(), "app").unwrap();
        let dir = t.path().join("vmapp/app");
        assert_eq!(a.path(), dir);
        assert_eq!(mode(&dir), 0o700);
        assert_eq!(mode(&t.path().join("vmapp")), 0o700);
        // A second run of the same app is refused, naming the holder.
        let e = RuntimeDir::named_in(t.path(), "app").err().expect("taken");
        assert!(
            e.to_string().contains(&std::process::id().to_string()),
            "{e}"
        );
        // Another app is independent.
        drop(RuntimeDir::named_in(t.path(), "other").unwrap());
        assert!(!t.path().join("vmapp/other").exists());
        drop(a);
        assert!(!dir.exists(), "removed when the VM ends");
        // What a killed vmapp leaves: its files and an unlocked lock file
        // (the kernel drops the lock with the process).
        std::fs::DirBuilder::new().mode(0o700).create(&dir).unwrap();
        std::fs::write(dir.join("lock"), "12345").unwrap();
        std::fs::write(dir.join("v.sock_1024"), "stale").unwrap();
        let a = RuntimeDir::named_in(t.path(), "app").unwrap();
        assert!(!dir.join("v.sock_1024").exists(), "stale state is cleaned");
        drop(a);
        // A directory open to others is refused.
        std::fs::DirBuilder::new().mode(0o755).create(&dir).unwrap();
        std::fs::set_permissions(&dir, std::fs::Permissions::from_mode(0o755)).unwrap();
        let e = RuntimeDir::named_in(t.path(), "app")
            .err()
            .expect("not private");
        assert!(e.to_string().contains("0700"), "{e}");
    }
}

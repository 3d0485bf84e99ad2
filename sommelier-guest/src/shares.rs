//! Shared directories (virtio-fs) in the default guest.
//!
//! vmapp describes them on the kernel command line:
//! - `vmapp.mount=TAG:HEXPATH[:ro]`: mount share TAG at the path (hex of its
//!   bytes), read-only if asked (the device enforces it anyway);
//! - `vmapp.root=TAG`: the host's `/`, shared read-only: the init builds a new
//!   root from it — every top-level directory of the host bound in, except the
//!   ones that are the guest's own (`/proc`, `/sys`, `/dev`, `/run`, `/tmp`,
//!   `/home`, `/root`, `/mnt`: fresh file systems) — and moves into it before running
//!   anything;
//! - `vmapp.home=HEXPATH`: `$HOME` in the guest (a private tmpfs, or the share
//!   `vmapp.homeshare=TAG`).

use std::os::unix::fs::symlink;
use std::path::Path;

use crate::{decode_hex, log, mount};

/// A share to mount.
#[derive(Debug, PartialEq, Eq)]
pub struct Mount {
    /// The virtio-fs tag.
    pub tag: String,
    /// Where it goes.
    pub path: String,
    /// Mount read-only.
    pub read_only: bool,
}

/// What the command line asks for.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct Plan {
    /// Plain shares.
    pub mounts: Vec<Mount>,
    /// Tag of the host's root, in host-root mode.
    pub root: Option<String>,
    /// `$HOME` in the guest.
    pub home: Option<String>,
    /// Tag of the share mounted at `$HOME`.
    pub home_share: Option<String>,
}

fn hex_path(h: &str) -> Option<String> {
    let p = String::from_utf8(decode_hex(h)?).ok()?;
    p.starts_with('/').then_some(p)
}

/// Reads the plan from the kernel command line (malformed words are logged
/// and ignored).
pub fn plan(cmdline: &str) -> Plan {
    let mut p = Plan::default();
    for w in cmdline.split_whitespace() {
        if let Some(v) = w.strip_prefix("vmapp.mount=") {
            let mut it = v.split(':');
            let (Some(tag), Some(path)) = (it.next(), it.next().and_then(hex_path)) else {
                log(&format!("ignoring malformed {w}"));
                continue;
            };
            p.mounts.push(Mount {
                tag: tag.to_string(),
                path,
                read_only: it.next() == Some("ro"),
            });
        } else if let Some(t) = w.strip_prefix("vmapp.root=") {
            p.root = Some(t.to_string());
        } else if let Some(h) = w.strip_prefix("vmapp.home=") {
            p.home = hex_path(h);
        } else if let Some(t) = w.strip_prefix("vmapp.homeshare=") {
            p.home_share = Some(t.to_string());
        }
    }
    p
}

/// Top-level host directories the guest replaces with its own.
const OWN: &[&str] = &[
    "proc",
    "sys",
    "dev",
    "run",
    "tmp",
    "home",
    "root",
    "mnt",
    "lost+found",
];

fn virtiofs(tag: &str, path: &str, read_only: bool) -> bool {
    let mut flags = libc::MS_NODEV;
    if read_only {
        flags |= libc::MS_RDONLY;
    }
    mount(tag, path, "virtiofs", flags, "")
}

/// Builds the new root from the host's (mounted at `host`) under `new`.
fn build_root(host: &Path, new: &Path) -> bool {
    if !mount(
        "tmpfs",
        &new.display().to_string(),
        "tmpfs",
        libc::MS_NODEV,
        "mode=0755",
    ) {
        return false;
    }
    let Ok(entries) = std::fs::read_dir(host) else {
        log("host root: cannot list /");
        return false;
    };
    for e in entries.flatten() {
        let name = e.file_name();
        let n = name.to_string_lossy();
        if OWN.contains(&n.as_ref()) {
            continue;
        }
        let (src, dst) = (host.join(&name), new.join(&name));
        let Ok(ft) = e.file_type() else { continue };
        if ft.is_symlink() {
            if let Ok(t) = std::fs::read_link(&src) {
                let _ = symlink(t, &dst);
            }
        } else if ft.is_dir() {
            let _ = std::fs::create_dir(&dst);
            mount(
                &src.display().to_string(),
                &dst.display().to_string(),
                "",
                libc::MS_BIND,
                "",
            );
        }
    }
    let n = new.display().to_string();
    let nodev = libc::MS_NOSUID | libc::MS_NODEV;
    mount(
        "proc",
        &format!("{n}/proc"),
        "proc",
        nodev | libc::MS_NOEXEC,
        "",
    ) && mount(
        "sysfs",
        &format!("{n}/sys"),
        "sysfs",
        nodev | libc::MS_NOEXEC,
        "",
    ) && mount(
        "devtmpfs",
        &format!("{n}/dev"),
        "devtmpfs",
        libc::MS_NOSUID,
        "mode=0755",
    ) && mount(
        "devpts",
        &format!("{n}/dev/pts"),
        "devpts",
        libc::MS_NOSUID | libc::MS_NOEXEC,
        "gid=5,mode=620",
    ) && mount("tmpfs", &format!("{n}/tmp"), "tmpfs", nodev, "mode=1777")
        && mount("tmpfs", &format!("{n}/run"), "tmpfs", nodev, "mode=0755")
        && mount("tmpfs", &format!("{n}/home"), "tmpfs", nodev, "mode=0755")
        && mount("tmpfs", &format!("{n}/root"), "tmpfs", nodev, "mode=0700")
        && mount("tmpfs", &format!("{n}/mnt"), "tmpfs", nodev, "mode=0755")
}

/// Moves this process into `new` as its root.
fn enter(new: &Path) -> bool {
    let Ok(c) = std::ffi::CString::new(new.as_os_str().as_encoded_bytes()) else {
        return false;
    };
    // SAFETY: a valid path; chdir/chroot take no other pointers.
    unsafe {
        libc::chdir(c.as_ptr()) == 0
            && libc::chroot(c".".as_ptr()) == 0
            && libc::chdir(c"/".as_ptr()) == 0
    }
}

/// Mounts what the plan says; in host-root mode, afterwards this process
/// runs in the new root. Returns false if host-root mode failed (the guest
/// then runs nothing: better than running the command in the wrong place).
pub fn apply(p: &Plan) -> bool {
    if let Some(tag) = &p.root {
        let host = Path::new("/vmapp-host");
        let new = Path::new("/vmapp-root");
        if !(virtiofs(tag, &host.display().to_string(), true) && build_root(host, new)) {
            log("host root: could not build the root file system");
            return false;
        }
        if !enter(new) {
            log(&format!(
                "host root: cannot enter it: {}",
                std::io::Error::last_os_error()
            ));
            return false;
        }
    }
    for m in &p.mounts {
        virtiofs(&m.tag, &m.path, m.read_only);
    }
    if let Some(home) = &p.home {
        let ok = match &p.home_share {
            Some(tag) => virtiofs(tag, home, false),
            None => mount("tmpfs", home, "tmpfs", libc::MS_NODEV, "mode=0700"),
        };
        if !ok {
            log(&format!("cannot mount $HOME at {home}"));
        }
    }
    true
}

#[cfg(test)]
mod tests {
    use super::*;

    fn hex(s: &str) -> String {
        s.bytes().map(|b| format!("{b:02x}")).collect()
    }

    #[test]
    fn reads_the_plan_from_the_command_line() {
        let c = format!(
            "console=ttyS0 vmapp.mount=data:{}:ro vmapp.mount=w:{} vmapp.root=vmapp-root vmapp.home={} vmapp.homeshare=h vmapp.mount=bad vmapp.mount=x:{}",
            hex("/data"),
            hex("/mnt/w"),
            hex("/home/me"),
            hex("relative"),
        );
        let p = plan(&c);
        assert_eq!(
            p.mounts,
            vec![
                Mount {
                    tag: "data".into(),
                    path: "/data".into(),
                    read_only: true
                },
                Mount {
                    tag: "w".into(),
                    path: "/mnt/w".into(),
                    read_only: false
                },
            ]
        );
        assert_eq!(p.root.as_deref(), Some("vmapp-root"));
        assert_eq!(p.home.as_deref(), Some("/home/me"));
        assert_eq!(p.home_share.as_deref(), Some("h"));
        assert_eq!(plan("quiet"), Plan::default());
    }
}

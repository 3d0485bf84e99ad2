//! Shared directories (virtio-fs) in the default guest.
//!
//! vmapp describes them on the kernel command line:
//! - `vmapp.mount=TAG:HEXPATH[:ro]`: mount share TAG at the path (hex of its
//!   bytes), read-only if asked (the device enforces it anyway);
//! - `vmapp.root=TAG`: the host's system trees (the device shows only its
//!   allowlist), shared read-only: the init builds a new root from them — an
//!   overlay with a tmpfs on top, so mount points can be made anywhere, made
//!   read-only again once everything is mounted — with its own `/proc`,
//!   `/sys`, `/dev`, `/run`, `/tmp`, `/var/tmp`, `/mnt`, `/root` and a
//!   per-VM `/etc/machine-id`, and moves into it before running anything;
//! - `vmapp.home=HEXPATH`: `$HOME` in the guest (a private tmpfs, or the share
//!   `vmapp.homeshare=TAG`), wherever it is on the host;
//! - `vmapp.keep=HEXHOSTPATH:HEXPATH`: a host tree under `$HOME` the guest
//!   still sees (bound read-only from the host's root over the private home),
//!   such as the user's Flatpak installation and fonts.

use std::path::Path;

use crate::{log, mount};
use sommelier_guest::proto::decode_hex;

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
    /// Host trees under `$HOME` that stay visible: (host path, guest path).
    pub keep: Vec<(String, String)>,
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
        } else if let Some(k) = w.strip_prefix("vmapp.keep=") {
            match k
                .split_once(':')
                .and_then(|(a, b)| Some((hex_path(a)?, hex_path(b)?)))
            {
                Some(pair) => p.keep.push(pair),
                None => log(&format!("ignoring malformed {w}")),
            }
        }
    }
    p
}

/// Directories of the new root that are the guest's own: fresh file
/// systems over whatever the host shows there.
const OWN: &[(&str, &str, &str, libc::c_ulong)] = &[
    (
        "proc",
        "proc",
        "",
        libc::MS_NOSUID | libc::MS_NODEV | libc::MS_NOEXEC,
    ),
    (
        "sys",
        "sysfs",
        "",
        libc::MS_NOSUID | libc::MS_NODEV | libc::MS_NOEXEC,
    ),
    ("dev", "devtmpfs", "mode=0755", libc::MS_NOSUID),
    (
        "dev/pts",
        "devpts",
        "gid=5,mode=620",
        libc::MS_NOSUID | libc::MS_NOEXEC,
    ),
    (
        "tmp",
        "tmpfs",
        "mode=1777",
        libc::MS_NOSUID | libc::MS_NODEV,
    ),
    (
        "var/tmp",
        "tmpfs",
        "mode=1777",
        libc::MS_NOSUID | libc::MS_NODEV,
    ),
    (
        "run",
        "tmpfs",
        "mode=0755",
        libc::MS_NOSUID | libc::MS_NODEV,
    ),
    (
        "mnt",
        "tmpfs",
        "mode=0755",
        libc::MS_NOSUID | libc::MS_NODEV,
    ),
    (
        "root",
        "tmpfs",
        "mode=0700",
        libc::MS_NOSUID | libc::MS_NODEV,
    ),
];

fn virtiofs(tag: &str, path: &str, read_only: bool) -> bool {
    let mut flags = libc::MS_NODEV;
    if read_only {
        flags |= libc::MS_RDONLY;
    }
    mount(tag, path, "virtiofs", flags, "")
}

/// The new root at `new`: the host's trees (mounted at `host`) under a
/// tmpfs, so mount points can be made anywhere, and the guest's own
/// directories.
fn build_root(host: &str, new: &str) -> bool {
    let scratch = "/vmapp-scratch";
    if !(mount("tmpfs", scratch, "tmpfs", libc::MS_NODEV, "mode=0755")
        && std::fs::create_dir_all(format!("{scratch}/upper")).is_ok()
        && std::fs::create_dir_all(format!("{scratch}/work")).is_ok()
        && mount(
            "overlay",
            new,
            "overlay",
            libc::MS_NODEV,
            &format!("lowerdir={host},upperdir={scratch}/upper,workdir={scratch}/work"),
        ))
    {
        return false;
    }
    OWN.iter()
        .all(|(dir, fs, opts, flags)| mount(fs, &format!("{new}/{dir}"), fs, *flags, opts))
        && machine_id(new)
}

/// A machine id of this VM's own (the host's is hidden by the device).
fn machine_id(new: &str) -> bool {
    let mut b = [0u8; 16];
    // SAFETY: getrandom writes at most b.len() bytes into b.
    let n = unsafe { libc::getrandom(b.as_mut_ptr().cast(), b.len(), 0) };
    if n != b.len() as isize {
        log("host root: no random bytes for the machine id");
        return false;
    }
    let id: String = b.iter().map(|x| format!("{x:02x}")).collect();
    std::fs::write(format!("{new}/etc/machine-id"), format!("{id}\n")).is_ok()
}

/// `$HOME` at `root` + the plan's home: a private tmpfs or the home share,
/// then the host trees under it that stay visible (from `host`).
fn mount_home(p: &Plan, root: &str, host: &str) {
    let Some(home) = &p.home else { return };
    let at = format!("{root}{home}");
    let ok = match &p.home_share {
        Some(tag) => virtiofs(tag, &at, false),
        None => mount("tmpfs", &at, "tmpfs", libc::MS_NODEV, "mode=0700"),
    };
    if !ok {
        log(&format!("cannot mount $HOME at {home}"));
        return;
    }
    for (src, dst) in p
        .keep
        .iter()
        .filter(|k| k.1.starts_with(&format!("{home}/")))
    {
        let (src, dst) = (format!("{host}{src}"), format!("{root}{dst}"));
        if mount(&src, &dst, "", libc::MS_BIND | libc::MS_REC, "") {
            // A bind takes the read-only flag only on a remount.
            mount(
                "",
                &dst,
                "",
                libc::MS_REMOUNT | libc::MS_BIND | libc::MS_RDONLY,
                "",
            );
        }
    }
}

/// Makes the mount at `path` read-only (its submounts keep their flags).
fn read_only(path: &str) -> bool {
    mount(
        "",
        path,
        "",
        libc::MS_REMOUNT | libc::MS_BIND | libc::MS_RDONLY,
        "",
    )
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
    let Some(tag) = &p.root else {
        for m in &p.mounts {
            virtiofs(&m.tag, &m.path, m.read_only);
        }
        mount_home(p, "", "");
        return true;
    };
    let (host, new) = ("/vmapp-host", "/vmapp-root");
    if !(virtiofs(tag, host, true) && build_root(host, new)) {
        log("host root: could not build the root file system");
        return false;
    }
    mount_home(p, new, host);
    for m in &p.mounts {
        virtiofs(&m.tag, &format!("{new}{}", m.path), m.read_only);
    }
    if !(read_only(new) && enter(Path::new(new))) {
        log(&format!(
            "host root: cannot enter it: {}",
            std::io::Error::last_os_error()
        ));
        return false;
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
            "console=ttyS0 vmapp.mount=data:{}:ro vmapp.mount=w:{} vmapp.root=vmapp-root vmapp.home={} vmapp.homeshare=h vmapp.mount=bad vmapp.mount=x:{} vmapp.keep={}:{} vmapp.keep={}:{} vmapp.keep=zz",
            hex("/data"),
            hex("/mnt/w"),
            hex("/home/me"),
            hex("relative"),
            hex("/var/home/me/.fonts"),
            hex("/home/me/.fonts"),
            hex("/x"),
            hex("rel/x"),
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
        assert_eq!(
            p.keep,
            [(
                "/var/home/me/.fonts".to_string(),
                "/home/me/.fonts".to_string()
            )]
        );
        assert_eq!(plan("quiet"), Plan::default());
    }
}

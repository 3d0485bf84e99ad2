//! A VM's network, with no network device: the guest relays its TAP
//! device's Ethernet frames over one vsock stream to host port
//! [`NET_PORT`], and on the host that stream ends at **passt**, a user-mode
//! network stack (NAT, DHCP, DNS forwarding) that needs no privileges.
//!
//! passt listens on the vsock device's `{uds_path}_{NET_PORT}`, so the
//! vsock device connects the guest's stream straight to it. The stream
//! carries QEMU's `-netdev stream` protocol (each Ethernet frame preceded by
//! its length, 4 bytes big-endian), which any guest can speak; the default
//! guest's relay is `sommelier_guest::net`. The port is one of the vsock
//! device's framed ports ([`VsockConfig::framed_ports`](crate::VsockConfig)):
//! it reads only the lengths and hands passt one whole frame per write; a
//! length out of range resets the stream. Garbage within valid lengths only
//! confuses the guest's own stream at passt, which discards what it cannot
//! parse.
//!
//! Turning the network off stops passt: its connections on the host close,
//! the guest's stream ends, and the guest's connects to the port are
//! refused until it is on again.

use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::os::unix::process::{CommandExt, ExitStatusExt};
use std::path::{Path, PathBuf};
use std::process::{Command, ExitStatus, Stdio};
use std::sync::{mpsc, Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

/// The host vsock port the guest's network stream connects to.
pub const NET_PORT: u32 = 1026;

/// Errors of the network.
#[derive(Debug, thiserror::Error)]
pub enum NetError {
    /// passt is not installed.
    #[error(
        "the network needs passt, which is not installed (Debian/Ubuntu/Fedora package `passt`)"
    )]
    NoPasst,
    /// A `--publish` value that does not parse.
    #[error("bad port forward {0:?}: expected HOSTPORT:GUESTPORT (1-65535)")]
    BadPublish(String),
    /// The VM has no vsock device to carry the network.
    #[error("the network needs a vsock device")]
    NoVsock,
    /// The VM was built without a network.
    #[error("this VM has no network")]
    NoNetwork,
    /// passt could not be started.
    #[error("cannot start passt: {0}")]
    Spawn(#[source] std::io::Error),
    /// passt ended before it listened.
    #[error("passt did not start: {0}")]
    NotListening(String),
}

/// A host loopback port forwarded to a guest port (`HOSTPORT:GUESTPORT`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Publish {
    /// The port on the host's 127.0.0.1.
    pub host: u16,
    /// The guest's port.
    pub guest: u16,
}

impl std::str::FromStr for Publish {
    type Err = NetError;
    fn from_str(s: &str) -> Result<Self, NetError> {
        let bad = || NetError::BadPublish(s.to_string());
        let (h, g) = s.split_once(':').ok_or_else(bad)?;
        let port = |p: &str| p.parse::<u16>().ok().filter(|p| *p > 0).ok_or_else(bad);
        Ok(Self {
            host: port(h)?,
            guest: port(g)?,
        })
    }
}

/// How a VM's network is set up.
#[derive(Clone, Debug, Default)]
pub struct NetConfig {
    /// The passt binary (default: `passt` on `PATH`).
    pub passt: Option<PathBuf>,
    /// Host loopback ports forwarded into the guest.
    pub publish: Vec<Publish>,
    /// Let the guest reach the host's own loopback services through the
    /// gateway address (passt's default; off, the gateway is only a
    /// router to the outside).
    pub host_loopback: bool,
    /// Where passt's messages go (default: discarded).
    pub log: Option<PathBuf>,
    /// The MTU passt offers the guest by DHCP. `None`: passt's own (65520)
    /// when the passt is release [`PASST_FIXED`] or later, else
    /// [`OLD_PASST_MTU`] (see [`passt_release`]).
    pub mtu: Option<u16>,
}

/// The passt release (YYYYMMDD) from which vmapp offers passt's own MTU.
/// Debian 12's 0.0~git20230309 loses its stream when a frame arrives in
/// pieces and stalls or resets long TCP flows, for QEMU too (measured);
/// 2025_05_03 does not (measured). The cut-off is the last of upstream's
/// fixes to its stream handling in its history (2024_07_26), not a
/// measurement: releases in between are treated as old.
pub const PASST_FIXED: u32 = 20240726;

/// The MTU given to the guest through an older passt: it stalled at once
/// at 65520 and carried short transfers at 16000 (measured).
pub const OLD_PASST_MTU: u16 = 16000;

/// The release date (YYYYMMDD) of the passt binary at `bin`, read from the
/// version it embeds (upstream's `2025_05_03.587980c`, Debian's
/// `0.0~git20250503.587980c-2`, Fedora's `0^20250512.g8ec1341`); `None`
/// when it names none (Debian 12's says "unknown version"). The binary is
/// read rather than run: passt's `--version` writes into a buffer it never
/// flushes when stdout is not a terminal.
pub fn passt_release(bin: &Path) -> Option<u32> {
    let data = std::fs::read(bin).ok()?;
    // passt's log lines start with "%s VERSION: %s (%i)".
    let end = find(&data, b": %s (%i)")?;
    let start = data[..end].iter().rposition(|b| *b == 0)? + 1;
    let version = data[start..end].strip_prefix(b"%s ")?;
    release_date(version)
}

fn find(hay: &[u8], needle: &[u8]) -> Option<usize> {
    hay.windows(needle.len()).position(|w| w == needle)
}

/// The first date in `v`: eight digits in a row, or `YYYY_MM_DD`.
fn release_date(v: &[u8]) -> Option<u32> {
    let digits: Vec<u8> = v
        .iter()
        .map(|b| if *b == b'_' { b'x' } else { *b })
        .collect();
    for i in 0..digits.len() {
        let w = |n: usize| digits.get(i..i + n);
        if let Some(d) = w(10).filter(|d| {
            d[4] == b'x' && d[7] == b'x' && d.iter().filter(|c| c.is_ascii_digit()).count() == 8
        }) {
            let s: String = d
                .iter()
                .filter(|c| c.is_ascii_digit())
                .map(|c| *c as char)
                .collect();
            return s.parse().ok();
        }
        if let Some(d) = w(8).filter(|d| d.iter().all(u8::is_ascii_digit)) {
            let before = i.checked_sub(1).and_then(|j| digits.get(j));
            let after = digits.get(i + 8);
            if !before.is_some_and(u8::is_ascii_digit) && !after.is_some_and(u8::is_ascii_digit) {
                return std::str::from_utf8(d).ok()?.parse().ok();
            }
        }
    }
    None
}

impl NetConfig {
    /// The passt binary to run: the configured one, or `passt` on `PATH`.
    pub fn binary(&self) -> Result<PathBuf, NetError> {
        if let Some(p) = &self.passt {
            return Ok(p.clone());
        }
        let path = std::env::var_os("PATH").unwrap_or_else(|| "/usr/bin:/bin".into());
        std::env::split_paths(&path)
            .map(|d| d.join("passt"))
            .find(|p| p.is_file())
            .ok_or(NetError::NoPasst)
    }

    /// The MTU to give the guest through the passt at `bin`: the
    /// configured one, else `None` (passt's own) for a release that
    /// carries long transfers, else [`OLD_PASST_MTU`].
    pub fn mtu_for(&self, bin: &Path) -> Option<u16> {
        if self.mtu.is_some() {
            return self.mtu;
        }
        match passt_release(bin) {
            Some(d) if d >= PASST_FIXED => None,
            _ => Some(OLD_PASST_MTU),
        }
    }

    /// passt's arguments for a socket at `socket`, with the MTU `mtu`
    /// offered to the guest (`None`: passt's own).
    pub fn args(&self, socket: &Path, mtu: Option<u16>) -> Vec<std::ffi::OsString> {
        let mut a: Vec<std::ffi::OsString> = vec!["-f".into(), "-q".into()];
        if let Some(m) = mtu {
            a.push("-m".into());
            a.push(m.to_string().into());
        }
        // SAFETY: getuid has no preconditions.
        if unsafe { libc::getuid() } == 0 {
            // passt drops to `nobody` by default, which could not bind in a
            // root-only runtime directory; it keeps its own sandbox.
            a.extend(["--runas".into(), "0:0".into()]);
        }
        if !self.host_loopback {
            a.push("--no-map-gw".into());
        }
        for p in &self.publish {
            a.push("-t".into());
            a.push(format!("127.0.0.1/{}:{}", p.host, p.guest).into());
        }
        a.push("-s".into());
        a.push(socket.into());
        a
    }
}

/// Where passt listens for a VM whose vsock socket is `uds`.
pub fn socket_path(uds: &Path) -> PathBuf {
    let mut p = uds.as_os_str().to_owned();
    p.push(format!("_{NET_PORT}"));
    PathBuf::from(p)
}

/// A running passt, stopped (and waited for) when dropped.
///
/// passt is forked by a thread of its own (`passt`), which then waits for
/// it: the parent-death signal that stops passt when the VMM dies without
/// dropping this (killed, say) follows the thread that forked, not the
/// process, so forking from the caller's thread would stop passt as soon
/// as an embedder's short-lived thread that turned the network on ends.
/// It is signalled through a pidfd (Linux 5.3 or later), so a passt that
/// has ended and been reaped is never confused with a process that reused
/// its PID.
pub struct Passt {
    pid: u32,
    pidfd: OwnedFd,
    status: Arc<Mutex<Option<ExitStatus>>>,
    keeper: Option<JoinHandle<()>>,
    socket: PathBuf,
}

/// Opens passt's log for appending (0600, created if missing), only as a
/// plain file with one name: the log usually lives in a directory a jailed
/// VMM can write, and this runs outside the jail, so a symlink (followed
/// out of the jail), a FIFO (a hang) or a hard link to another file is
/// refused.
fn open_log(path: &Path) -> std::io::Result<std::fs::File> {
    use std::os::unix::fs::{MetadataExt, OpenOptionsExt};
    let f = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .mode(0o600)
        .custom_flags(libc::O_NOFOLLOW | libc::O_NONBLOCK)
        .open(path)?;
    let md = f.metadata()?;
    if !md.is_file() || md.nlink() != 1 {
        return Err(std::io::Error::new(
            std::io::ErrorKind::InvalidInput,
            format!("{}: not a plain file of its own", path.display()),
        ));
    }
    // Back to blocking writes for passt.
    // SAFETY: F_SETFL on an fd we own.
    if unsafe { libc::fcntl(f.as_raw_fd(), libc::F_SETFL, libc::O_APPEND) } < 0 {
        return Err(std::io::Error::last_os_error());
    }
    Ok(f)
}

/// `pidfd_open(2)`.
fn pidfd_open(pid: u32) -> std::io::Result<OwnedFd> {
    // SAFETY: plain integer arguments; the result is a new fd or -1.
    let fd = unsafe { libc::syscall(libc::SYS_pidfd_open, pid as libc::pid_t, 0) };
    if fd < 0 {
        return Err(std::io::Error::last_os_error());
    }
    // SAFETY: a new fd that nothing else owns.
    Ok(unsafe { OwnedFd::from_raw_fd(fd as RawFd) })
}

impl Passt {
    /// Starts passt listening at `socket`; returns once it listens.
    pub fn start(cfg: &NetConfig, socket: &Path) -> Result<Self, NetError> {
        let bin = cfg.binary()?;
        let _ = std::fs::remove_file(socket);
        let log = match &cfg.log {
            Some(p) => Stdio::from(open_log(p).map_err(NetError::Spawn)?),
            None => Stdio::null(),
        };
        let mtu = cfg.mtu_for(&bin);
        if mtu == Some(OLD_PASST_MTU) && cfg.mtu.is_none() {
            tracing::warn!(
                "{} names no passt release from 2024_07_26 on, which long transfers need; the guest gets MTU {OLD_PASST_MTU}",
                bin.display()
            );
        }
        let mut cmd = Command::new(&bin);
        cmd.args(cfg.args(socket, mtu))
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(log);
        // SAFETY: prctl takes plain values; async-signal-safe.
        unsafe {
            cmd.pre_exec(|| {
                libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGTERM);
                Ok(())
            });
        }
        let status = Arc::new(Mutex::new(None));
        let (tx, rx) = mpsc::channel();
        let st = status.clone();
        let keeper = std::thread::Builder::new()
            .name("passt".into())
            .spawn(move || keep(cmd, &tx, &st))
            .map_err(NetError::Spawn)?;
        let (pid, pidfd) = match rx.recv() {
            Ok(Ok(x)) => x,
            Ok(Err(e)) => {
                let _ = keeper.join();
                return Err(e);
            }
            Err(_) => {
                let _ = keeper.join();
                return Err(NetError::NotListening("its thread ended".into()));
            }
        };
        let p = Self {
            pid,
            pidfd,
            status,
            keeper: Some(keeper),
            socket: socket.to_path_buf(),
        };
        // passt binds its socket while it reads its configuration and
        // listens later: the file alone is not enough (a guest's connect in
        // between is refused).
        let deadline = Instant::now() + Duration::from_secs(10);
        while listening(socket) != Some(true) {
            if let Some(st) = p.exited() {
                return Err(NetError::NotListening(format!("it exited ({st})")));
            }
            if Instant::now() > deadline {
                return Err(NetError::NotListening(
                    "its socket did not listen within 10 s".into(),
                ));
            }
            std::thread::sleep(Duration::from_millis(10));
        }
        Ok(p)
    }

    /// How passt ended, if it has.
    pub fn exited(&self) -> Option<ExitStatus> {
        *self.status.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// passt's process ID.
    pub fn pid(&self) -> u32 {
        self.pid
    }

    fn signal(&self, sig: libc::c_int) {
        // SAFETY: our pidfd; a null siginfo means an ordinary kill. A passt
        // already reaped gives ESRCH, which is fine.
        unsafe {
            libc::syscall(
                libc::SYS_pidfd_send_signal,
                self.pidfd.as_raw_fd(),
                sig,
                std::ptr::null::<libc::siginfo_t>(),
                0,
            )
        };
    }
}

/// Whether a Unix socket bound at `path` in this network namespace listens
/// (`/proc/net/unix`: the flag `__SO_ACCEPTCON`); `None` when that table
/// cannot be read, or `path` is not UTF-8.
fn listening(path: &Path) -> Option<bool> {
    let table = std::fs::read_to_string("/proc/net/unix").ok()?;
    let path = path.to_str()?;
    Some(table.lines().skip(1).any(|l| listens_at(l, path)))
}

/// Whether a line of `/proc/net/unix` is a listening socket bound at
/// exactly `path` (not one whose path merely ends the same).
fn listens_at(line: &str, path: &str) -> bool {
    const ACCEPTCON: u32 = 1 << 16;
    // Num RefCount Protocol Flags Type St Inode, then the path (which may
    // hold spaces) after one space.
    let mut rest = line;
    for _ in 0..7 {
        rest = rest.trim_start_matches(' ');
        match rest.find(' ') {
            Some(i) => rest = &rest[i..],
            None => return false,
        }
    }
    rest.strip_prefix(' ') == Some(path)
        && line
            .split_whitespace()
            .nth(3)
            .and_then(|f| u32::from_str_radix(f, 16).ok())
            .is_some_and(|f| f & ACCEPTCON != 0)
}

/// What the `passt` thread hands back: passt's PID and pidfd.
type Started = Result<(u32, OwnedFd), NetError>;

/// The `passt` thread: forks passt, hands back its PID and pidfd, and waits
/// for it.
fn keep(mut cmd: Command, tx: &mpsc::Sender<Started>, status: &Mutex<Option<ExitStatus>>) {
    let mut child = match cmd.spawn() {
        Ok(c) => c,
        Err(e) => {
            let _ = tx.send(Err(match e.kind() {
                std::io::ErrorKind::NotFound => NetError::NoPasst,
                _ => NetError::Spawn(e),
            }));
            return;
        }
    };
    // The log and /dev/null are passt's now, not ours.
    drop(cmd);
    match pidfd_open(child.id()) {
        Ok(fd) => {
            let _ = tx.send(Ok((child.id(), fd)));
        }
        Err(e) => {
            let _ = child.kill();
            let _ = child.wait();
            let _ = tx.send(Err(NetError::Spawn(e)));
            return;
        }
    }
    // A wait that fails (an embedder that ignores SIGCHLD or reaps every
    // child itself) counts as ended, so that passt is not reported running
    // for ever.
    let st = child.wait().unwrap_or_else(|e| {
        tracing::warn!("passt: cannot wait for it ({e}); counting it as ended");
        std::process::ExitStatus::from_raw(0)
    });
    *status.lock().unwrap_or_else(|p| p.into_inner()) = Some(st);
}

impl Drop for Passt {
    fn drop(&mut self) {
        if self.exited().is_none() {
            self.signal(libc::SIGTERM);
            let deadline = Instant::now() + Duration::from_secs(2);
            while self.exited().is_none() && Instant::now() < deadline {
                std::thread::sleep(Duration::from_millis(5));
            }
            if self.exited().is_none() {
                self.signal(libc::SIGKILL);
            }
        }
        if let Some(k) = self.keeper.take() {
            let _ = k.join();
        }
        let _ = std::fs::remove_file(&self.socket);
    }
}

/// A VM's network switch: passt running (on) or not (off).
pub struct Network {
    cfg: NetConfig,
    socket: PathBuf,
    passt: Option<Passt>,
}

impl Network {
    /// A switch for the VM whose vsock socket is `uds`, initially off.
    pub fn new(cfg: NetConfig, uds: &Path) -> Self {
        Self {
            cfg,
            socket: socket_path(uds),
            passt: None,
        }
    }

    /// Turns the network on (starts passt unless it runs) or off (stops
    /// passt and waits until it has ended: nothing leaves after this
    /// returns).
    pub fn set(&mut self, on: bool) -> Result<(), NetError> {
        if on {
            if self.is_on() {
                return Ok(());
            }
            self.passt = Some(Passt::start(&self.cfg, &self.socket)?);
        } else {
            self.passt = None;
        }
        Ok(())
    }

    /// Whether passt runs. A passt that ended on its own is reported once
    /// (a warning) and counts as off.
    pub fn is_on(&mut self) -> bool {
        let Some(p) = self.passt.as_mut() else {
            return false;
        };
        if let Some(st) = p.exited() {
            tracing::warn!(
                "passt ended ({st}): the VM is offline until its network is turned on again"
            );
            self.passt = None;
            return false;
        }
        true
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn publish_parses_host_and_guest_ports() {
        let p: Publish = "8080:80".parse().unwrap();
        assert_eq!((p.host, p.guest), (8080, 80));
        for bad in [
            "80", "0:80", "80:0", "70000:80", "a:b", ":80", "80:", "1:2:3",
        ] {
            assert!(bad.parse::<Publish>().is_err(), "{bad}");
        }
    }

    #[test]
    fn passt_binds_published_ports_on_loopback_only() {
        let cfg = NetConfig {
            publish: vec![Publish {
                host: 8080,
                guest: 80,
            }],
            ..Default::default()
        };
        let a: Vec<String> = cfg
            .args(Path::new("/r/v.sock_1026"), None)
            .iter()
            .map(|s| s.to_string_lossy().into_owned())
            .collect();
        let t = a.iter().position(|x| x == "-t").unwrap();
        assert_eq!(a[t + 1], "127.0.0.1/8080:80");
        assert!(a.contains(&"--no-map-gw".to_string()));
        assert!(!a.contains(&"-m".to_string()), "passt's own MTU");
        assert_eq!(a.last().unwrap(), "/r/v.sock_1026");
        let a = cfg.args(Path::new("/r/v.sock_1026"), Some(16000));
        let m = a.iter().position(|x| x == "-m").unwrap();
        assert_eq!(a[m + 1], "16000");
        assert_eq!(
            socket_path(Path::new("/r/v.sock")),
            Path::new("/r/v.sock_1026")
        );
    }

    #[test]
    fn release_dates_in_each_packagers_version_format() {
        for (v, d) in [
            ("2025_05_03.587980c", Some(20250503)),
            ("0.0~git20250503.587980c-2+deb13u1", Some(20250503)),
            ("0.0~git20230309.7c7625d-1", Some(20230309)),
            ("0^20250512.g8ec1341-1.fc42", Some(20250512)),
            ("unknown version", None),
            ("123456789", None),
        ] {
            assert_eq!(release_date(v.as_bytes()), d, "{v}");
        }
    }

    /// A file laid out as passt's binary is around its log prefix.
    fn fake_passt(name: &str, version: &str) -> PathBuf {
        let p = std::env::temp_dir().join(format!("vmm-{name}-{}", std::process::id()));
        let mut data = b"\x7fELF\0junk\0%s\0".to_vec();
        data.extend_from_slice(format!("%s {version}: %s (%i)\0more\0").as_bytes());
        std::fs::write(&p, data).unwrap();
        p
    }

    #[test]
    fn an_old_or_unnamed_passt_gets_the_smaller_mtu() {
        let new = fake_passt("new", "0.0~git20250503.587980c-2+deb13u1");
        let old = fake_passt("old", "unknown version");
        let feb = fake_passt("feb", "0.0~git20240220.1e6f92b-1");
        let cfg = NetConfig::default();
        assert_eq!(passt_release(&new), Some(20250503));
        assert_eq!(cfg.mtu_for(&new), None);
        assert_eq!(passt_release(&old), None);
        assert_eq!(cfg.mtu_for(&old), Some(OLD_PASST_MTU));
        assert_eq!(cfg.mtu_for(&feb), Some(OLD_PASST_MTU));
        assert_eq!(cfg.mtu_for(Path::new("/nonexistent")), Some(OLD_PASST_MTU));
        let chosen = NetConfig {
            mtu: Some(1500),
            ..Default::default()
        };
        assert_eq!(chosen.mtu_for(&old), Some(1500));
        for p in [new, old, feb] {
            let _ = std::fs::remove_file(p);
        }
    }

    #[test]
    fn only_a_listener_at_exactly_the_path_counts() {
        let l = |p: &str| format!("0000000000000000: 00000002 00000000 00010000 0001 01 12345 {p}");
        assert!(listens_at(&l("/r/v.sock_1026"), "/r/v.sock_1026"));
        // Another user's socket whose path only ends the same.
        assert!(!listens_at(&l("/tmp/x /r/v.sock_1026"), "/r/v.sock_1026"));
        assert!(!listens_at(&l("/tmp/x/r/v.sock_1026"), "/r/v.sock_1026"));
        assert!(listens_at(&l("/a b/s"), "/a b/s"));
        // Bound, not listening; no path at all.
        let bound = "0000000000000000: 00000002 00000000 00000000 0001 01 12345 /r/s";
        assert!(!listens_at(bound, "/r/s"));
        assert!(!listens_at(
            "0000: 00000002 00000000 00010000 0001 01 12345",
            ""
        ));
    }

    #[test]
    fn a_bound_socket_listens_only_after_listen() {
        let dir = std::env::temp_dir().join(format!("vmm-listen-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("s.sock");
        // SAFETY: plain socket(2); checked below.
        let fd = unsafe { libc::socket(libc::AF_UNIX, libc::SOCK_STREAM, 0) };
        assert!(fd >= 0);
        // SAFETY: fd is ours.
        let fd = unsafe { OwnedFd::from_raw_fd(fd) };
        // SAFETY: sockaddr_un is plain data; all-zero is valid.
        let mut a: libc::sockaddr_un = unsafe { std::mem::zeroed() };
        a.sun_family = libc::AF_UNIX as libc::sa_family_t;
        for (d, b) in a.sun_path.iter_mut().zip(path.to_str().unwrap().bytes()) {
            *d = b as libc::c_char;
        }
        let len = std::mem::size_of::<libc::sockaddr_un>() as libc::socklen_t;
        // SAFETY: a is a valid sockaddr_un of len bytes.
        let r = unsafe { libc::bind(fd.as_raw_fd(), (&a as *const libc::sockaddr_un).cast(), len) };
        assert_eq!(r, 0);
        assert!(path.exists());
        assert_eq!(listening(&path), Some(false), "bound, not listening");
        // SAFETY: listen on our socket.
        assert_eq!(unsafe { libc::listen(fd.as_raw_fd(), 1) }, 0);
        assert_eq!(listening(&path), Some(true));
        assert_eq!(listening(&dir.join("other.sock")), Some(false));
        drop(fd);
        let _ = std::fs::remove_dir_all(&dir);
    }

    #[test]
    fn a_missing_passt_is_named() {
        let cfg = NetConfig {
            passt: Some("/nonexistent/passt".into()),
            ..Default::default()
        };
        let e = Passt::start(&cfg, Path::new("/tmp/vmapp-no-passt.sock"))
            .err()
            .unwrap();
        assert!(matches!(e, NetError::NoPasst), "{e}");
        assert!(e.to_string().contains("package `passt`"));
    }

    #[test]
    fn passt_outlives_the_thread_that_started_it() {
        let dir = std::env::temp_dir().join(format!("vmm-net-thread-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let sock = dir.join("p.sock");
        let s = sock.clone();
        let p = std::thread::spawn(move || Passt::start(&NetConfig::default(), &s))
            .join()
            .unwrap()
            .unwrap_or_else(|e| panic!("passt must start here: {e}"));
        std::thread::sleep(Duration::from_millis(300));
        assert!(p.exited().is_none(), "passt ended with its thread");
        std::os::unix::net::UnixStream::connect(&sock).expect("passt accepts");
        let pid = p.pid();
        drop(p);
        assert!(!Path::new(&format!("/proc/{pid}")).exists());
        let _ = std::fs::remove_dir_all(&dir);
    }

    #[test]
    fn passt_listens_and_stops() {
        let cfg = NetConfig::default();
        if cfg.binary().is_err() {
            panic!("passt is required for this test (package `passt`)");
        }
        let dir = std::env::temp_dir().join(format!("vmm-net-test-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let uds = dir.join("v.sock");
        let mut n = Network::new(cfg, &uds);
        assert!(!n.is_on());
        n.set(true).unwrap_or_else(|e| {
            panic!("passt must start here (it needs an interface with a default route): {e}")
        });
        assert!(n.is_on());
        let pid = n.passt.as_ref().unwrap().pid();
        std::os::unix::net::UnixStream::connect(socket_path(&uds)).expect("passt accepts");
        n.set(false).unwrap();
        assert!(!n.is_on());
        assert!(!socket_path(&uds).exists());
        assert!(
            !Path::new(&format!("/proc/{pid}")).exists(),
            "passt was reaped"
        );
        let _ = std::fs::remove_dir_all(&dir);
    }

    #[test]
    fn the_log_is_opened_only_as_a_plain_file_of_its_own() {
        let t = tempfile::tempdir().unwrap();
        // A plain file is appended to.
        let log = t.path().join("passt.log");
        std::fs::write(&log, "old\n").unwrap();
        std::io::Write::write_all(&mut open_log(&log).unwrap(), b"new\n").unwrap();
        assert_eq!(std::fs::read_to_string(&log).unwrap(), "old\nnew\n");
        // A symlink the jailed VMM put there (it can write the runtime
        // directory) is not followed out of the jail.
        let target = t.path().join("elsewhere");
        std::fs::write(&target, "untouched").unwrap();
        let link = t.path().join("link.log");
        std::os::unix::fs::symlink(&target, &link).unwrap();
        assert!(open_log(&link).is_err());
        // A dangling one would be created through.
        let link2 = t.path().join("link2.log");
        std::os::unix::fs::symlink(t.path().join("made"), &link2).unwrap();
        assert!(open_log(&link2).is_err());
        assert!(!t.path().join("made").exists());
        // A FIFO (nobody reading) neither blocks nor is taken.
        let fifo = t.path().join("fifo.log");
        let c = std::ffi::CString::new(fifo.to_str().unwrap()).unwrap();
        // SAFETY: a valid C string.
        assert_eq!(unsafe { libc::mkfifo(c.as_ptr(), 0o600) }, 0);
        assert!(open_log(&fifo).is_err());
        // A second name of another file (a hard link) is not taken either.
        let hard = t.path().join("hard.log");
        std::fs::hard_link(&target, &hard).unwrap();
        assert!(open_log(&hard).is_err());
        assert_eq!(std::fs::read_to_string(&target).unwrap(), "untouched");
    }
}

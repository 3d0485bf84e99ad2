//! Real compositors (sway and weston, headless) and a raw Wayland client for
//! the integration tests and the `wl-bench` benchmark (which includes this
//! file). A missing tool fails loudly.
#![allow(dead_code)]

use std::io::{Read, Write};
use std::os::fd::OwnedFd;
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

use wl_proxy::wire::{self, Writer};

/// The wl-proxy binary: `WL_PROXY_BIN`, else the one cargo built for these tests.
pub fn proxy_bin() -> PathBuf {
    std::env::var_os("WL_PROXY_BIN")
        .map(PathBuf::from)
        .or(option_env!("CARGO_BIN_EXE_wl-proxy").map(PathBuf::from))
        .expect("set WL_PROXY_BIN to the wl-proxy binary")
}

/// Fails unless every tool is installed.
pub fn require(tools: &[&str]) {
    for t in tools {
        let ok = Command::new("sh")
            .args(["-c", &format!("command -v {t}")])
            .stdout(Stdio::null())
            .status()
            .map(|s| s.success())
            .unwrap_or(false);
        assert!(ok, "missing tool {t}: install it (see .ci/run)");
    }
}

fn is_root() -> bool {
    // SAFETY: getuid has no preconditions.
    unsafe { libc::getuid() == 0 }
}

/// A headless compositor in its own runtime directory; killed on drop.
pub struct Compositor {
    pub dir: tempfile::TempDir,
    pub socket: PathBuf,
    child: Child,
    pub kind: &'static str,
}

impl Compositor {
    fn start(kind: &'static str, cmd: &[&str], extra_env: &[(&str, &str)]) -> Compositor {
        require(&[cmd[0], "setpriv"]);
        let dir = tempfile::Builder::new()
            .prefix("wlp-test-")
            .tempdir()
            .unwrap();
        let rt = dir.path().join("rt");
        std::fs::create_dir(&rt).unwrap();
        std::fs::write(
            rt.join("sway.conf"),
            "output HEADLESS-1 resolution 1280x720\n",
        )
        .unwrap();
        let mut c = if is_root() {
            // sway refuses to run as root: drop to nobody, who owns the runtime dir.
            // SAFETY: chown on a path we just created.
            let path = std::ffi::CString::new(rt.as_os_str().as_encoded_bytes()).unwrap();
            // SAFETY: `path` is a valid C string.
            assert_eq!(unsafe { libc::chown(path.as_ptr(), 65534, 65534) }, 0);
            let mut c = Command::new("setpriv");
            c.args(["--reuid=65534", "--regid=65534", "--clear-groups", "--"]);
            c.args(cmd);
            c
        } else {
            let mut c = Command::new(cmd[0]);
            c.args(&cmd[1..]);
            c
        };
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(&rt, std::fs::Permissions::from_mode(0o700)).unwrap();
        c.env_clear()
            .env("PATH", std::env::var_os("PATH").unwrap_or_default())
            .env("XDG_RUNTIME_DIR", &rt)
            .env("HOME", &rt)
            .current_dir(&rt)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(dir.path().join("log")).unwrap());
        for (k, v) in extra_env {
            c.env(k, v);
        }
        let child = c.spawn().unwrap();
        let mut comp = Compositor {
            socket: PathBuf::new(),
            dir,
            child,
            kind,
        };
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            let found = std::fs::read_dir(&rt).unwrap().flatten().find_map(|e| {
                let n = e.file_name().to_string_lossy().into_owned();
                (n.starts_with("wayland-") && !n.ends_with(".lock")).then(|| e.path())
            });
            if let Some(s) = found {
                if UnixStream::connect(&s).is_ok() {
                    comp.socket = s;
                    return comp;
                }
            }
            if let Ok(Some(st)) = comp.child.try_wait() {
                panic!("{kind} exited with {st}: {}", comp.log());
            }
            assert!(
                Instant::now() < deadline,
                "{kind} did not start: {}",
                comp.log()
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    pub fn sway() -> Compositor {
        Compositor::start(
            "sway",
            &["sway", "-c", "sway.conf"],
            &[
                ("WLR_BACKENDS", "headless"),
                ("WLR_LIBINPUT_NO_DEVICES", "1"),
                ("WLR_RENDERER", "pixman"),
            ],
        )
    }

    pub fn weston() -> Compositor {
        Compositor::start(
            "weston",
            &[
                "weston",
                "--backend=headless-backend.so",
                "--socket=wayland-1",
                "--width=1280",
                "--height=720",
                "--idle-time=0",
            ],
            &[],
        )
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    pub fn runtime_dir(&self) -> PathBuf {
        self.dir.path().join("rt")
    }

    pub fn log(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("log")).unwrap_or_default()
    }

    /// A command with the environment of a client of this compositor.
    pub fn client(&self, program: &str) -> Command {
        let mut c = Command::new(program);
        c.env("XDG_RUNTIME_DIR", self.runtime_dir())
            .env("WAYLAND_DISPLAY", &self.socket)
            .env_remove("WAYLAND_SOCKET")
            .env("HOME", self.runtime_dir())
            .stdin(Stdio::null());
        c
    }

    /// `wl-proxy [ARGS] -- COMMAND…` in front of this compositor.
    pub fn proxied(&self, args: &[&str], command: &[&str]) -> Command {
        let mut c = self.client(proxy_bin().to_str().unwrap());
        c.arg("--upstream")
            .arg(&self.socket)
            .args(args)
            .arg("--")
            .args(command);
        c
    }

    /// `swaymsg` against this sway.
    pub fn swaymsg(&self, args: &[&str]) -> String {
        let ipc = std::fs::read_dir(self.runtime_dir())
            .unwrap()
            .flatten()
            .map(|e| e.path())
            .find(|p| {
                p.file_name()
                    .unwrap()
                    .to_string_lossy()
                    .starts_with("sway-ipc.")
            })
            .expect("sway IPC socket");
        let o = Command::new("swaymsg")
            .env("SWAYSOCK", ipc)
            .args(args)
            .output()
            .unwrap();
        assert!(
            o.status.success(),
            "swaymsg: {}",
            String::from_utf8_lossy(&o.stderr)
        );
        String::from_utf8(o.stdout).unwrap()
    }
}

impl Drop for Compositor {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// `wl-proxy --listen` in front of a compositor; killed on drop.
pub struct ProxyProc {
    pub child: Child,
    pub socket: PathBuf,
}

impl ProxyProc {
    pub fn start(comp: &Compositor, policy: &str) -> ProxyProc {
        Self::start_with(comp, policy, Command::new(proxy_bin()))
    }

    /// Started with a soft RLIMIT_NOFILE of `soft` under this process's hard
    /// limit, as a desktop session gives its programs (soft 1024, a higher
    /// hard limit).
    pub fn start_with_nofile(comp: &Compositor, policy: &str, soft: u64) -> ProxyProc {
        use std::os::unix::process::CommandExt;
        let mut l = libc::rlimit {
            rlim_cur: 0,
            rlim_max: 0,
        };
        // SAFETY: getrlimit writes into `l`, a valid rlimit.
        assert_eq!(unsafe { libc::getrlimit(libc::RLIMIT_NOFILE, &mut l) }, 0);
        let hard = l.rlim_max;
        assert!(hard > soft, "this test needs a hard fd limit above {soft}");
        let mut c = Command::new(proxy_bin());
        // SAFETY: setrlimit is async-signal-safe; the child only calls it
        // between fork and exec, on its own stack values.
        unsafe {
            c.pre_exec(move || {
                let l = libc::rlimit {
                    rlim_cur: soft,
                    rlim_max: hard,
                };
                if libc::setrlimit(libc::RLIMIT_NOFILE, &l) != 0 {
                    return Err(std::io::Error::last_os_error());
                }
                Ok(())
            });
        }
        Self::start_with(comp, policy, c)
    }

    /// The proxy with both fd limits at `limit` and no way to raise them
    /// (CAP_SYS_RESOURCE dropped before exec, should the test run as root
    /// with it): what a desktop user's proxy has at the kernel's default
    /// hard limit of 4,096.
    pub fn start_with_hard_nofile(comp: &Compositor, policy: &str, limit: u64) -> ProxyProc {
        use std::os::unix::process::CommandExt;
        let mut c = Command::new(proxy_bin());
        // SAFETY: setrlimit and prctl are async-signal-safe; the child only
        // calls them between fork and exec, with plain values.
        unsafe {
            c.pre_exec(move || {
                let l = libc::rlimit {
                    rlim_cur: limit,
                    rlim_max: limit,
                };
                if libc::setrlimit(libc::RLIMIT_NOFILE, &l) != 0 {
                    return Err(std::io::Error::last_os_error());
                }
                // CAP_SYS_RESOURCE (24); EINVAL where capabilities are absent.
                libc::prctl(libc::PR_CAPBSET_DROP, 24, 0, 0, 0);
                Ok(())
            });
        }
        Self::start_with(comp, policy, c)
    }

    fn start_with(comp: &Compositor, policy: &str, mut cmd: Command) -> ProxyProc {
        let pol = comp.dir.path().join("policy.toml");
        std::fs::write(&pol, policy).unwrap();
        let socket = comp.dir.path().join("proxy.sock");
        let child = cmd
            .arg("--upstream")
            .arg(&comp.socket)
            .arg("--policy")
            .arg(&pol)
            .arg("--listen")
            .arg(&socket)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        let deadline = Instant::now() + Duration::from_secs(10);
        while UnixStream::connect(&socket).is_err() {
            assert!(
                Instant::now() < deadline,
                "wl-proxy did not start listening"
            );
            std::thread::sleep(Duration::from_millis(10));
        }
        ProxyProc { child, socket }
    }

    pub fn client(&self) -> RawClient {
        RawClient::connect(&self.socket)
    }
}

impl Drop for ProxyProc {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Runs `c` with a time limit; kills it when the limit passes.
pub fn output_within(mut c: Command, limit: Duration) -> Output {
    c.stdout(Stdio::piped()).stderr(Stdio::piped());
    let mut child = c.spawn().unwrap();
    let mut out = child.stdout.take().unwrap();
    let mut err = child.stderr.take().unwrap();
    let t1 = std::thread::spawn(move || {
        let mut v = Vec::new();
        let _ = out.read_to_end(&mut v);
        v
    });
    let t2 = std::thread::spawn(move || {
        let mut v = Vec::new();
        let _ = err.read_to_end(&mut v);
        v
    });
    let deadline = Instant::now() + limit;
    let status = loop {
        if let Some(s) = child.try_wait().unwrap() {
            break s;
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            panic!("{c:?} took longer than {limit:?}");
        }
        std::thread::sleep(Duration::from_millis(20));
    };
    Output {
        status,
        stdout: t1.join().unwrap(),
        stderr: t2.join().unwrap(),
    }
}

/// Interface names `wayland-info` printed.
pub fn globals_of(o: &Output) -> Vec<String> {
    assert!(
        o.status.success(),
        "wayland-info failed: {}",
        String::from_utf8_lossy(&o.stderr)
    );
    String::from_utf8_lossy(&o.stdout)
        .lines()
        .filter_map(|l| l.strip_prefix("interface: '"))
        .filter_map(|l| l.split('\'').next())
        .map(str::to_string)
        .collect()
}

/// A Wayland client written by hand: sends whatever bytes it is told to.
pub struct RawClient {
    pub sock: UnixStream,
    buf: Vec<u8>,
    next_id: u32,
}

/// One event as received.
#[derive(Debug, Clone)]
pub struct Event {
    pub object: u32,
    pub opcode: u16,
    pub body: Vec<u8>,
}

impl Event {
    pub fn word(&self, i: usize) -> u32 {
        u32::from_ne_bytes(self.body[i * 4..i * 4 + 4].try_into().unwrap())
    }

    /// The string argument starting at word `i`.
    pub fn string(&self, i: usize) -> String {
        let len = self.word(i) as usize;
        String::from_utf8_lossy(&self.body[i * 4 + 4..i * 4 + 4 + len - 1]).into_owned()
    }
}

impl RawClient {
    pub fn connect(path: &Path) -> RawClient {
        let sock = UnixStream::connect(path).unwrap();
        sock.set_read_timeout(Some(Duration::from_secs(10)))
            .unwrap();
        RawClient {
            sock,
            buf: Vec::new(),
            next_id: 2,
        }
    }

    pub fn new_id(&mut self) -> u32 {
        self.next_id += 1;
        self.next_id - 1
    }

    /// Sends raw bytes; `false` if the proxy has already hung up.
    pub fn send(&mut self, bytes: &[u8], fds: &[OwnedFd]) -> bool {
        use std::os::fd::AsRawFd;
        let raw: Vec<i32> = fds.iter().map(|f| f.as_raw_fd()).collect();
        let mut off = 0;
        while off < bytes.len() {
            match wl_proxy::conn::send(&self.sock, &bytes[off..], if off == 0 { &raw } else { &[] })
            {
                Ok(n) => off += n,
                Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {
                    std::thread::sleep(Duration::from_millis(1))
                }
                Err(_) => return false,
            }
        }
        true
    }

    /// The next event, or `None` at EOF.
    pub fn event(&mut self) -> Option<Event> {
        loop {
            if let Ok(h) = wire::header(&self.buf) {
                if self.buf.len() >= h.size {
                    let e = Event {
                        object: h.object,
                        opcode: h.opcode,
                        body: self.buf[8..h.size].to_vec(),
                    };
                    self.buf.drain(..h.size);
                    return Some(e);
                }
            }
            let mut tmp = [0u8; 4096];
            let mut fds = std::collections::VecDeque::new();
            match wl_proxy::conn::recv(&self.sock, &mut tmp, &mut fds) {
                Ok(0) => return None,
                Ok(n) => self.buf.extend_from_slice(&tmp[..n]),
                Err(wl_proxy::conn::ConnError::Io(e))
                    if e.kind() == std::io::ErrorKind::WouldBlock =>
                {
                    // recv is MSG_DONTWAIT: wait for readability ourselves.
                    use std::os::fd::AsRawFd;
                    let mut p = libc::pollfd {
                        fd: self.sock.as_raw_fd(),
                        events: libc::POLLIN,
                        revents: 0,
                    };
                    // SAFETY: one valid pollfd.
                    let r = unsafe { libc::poll(&mut p, 1, 10_000) };
                    assert!(r > 0, "no event within 10 s");
                }
                // The proxy hangs up with this client's bytes unread: a reset, read as EOF.
                Err(wl_proxy::conn::ConnError::Io(e))
                    if e.kind() == std::io::ErrorKind::ConnectionReset =>
                {
                    return None
                }
                Err(e) => panic!("recv: {e}"),
            }
        }
    }

    /// `wl_display.sync` and every event up to its `done`.
    pub fn roundtrip(&mut self) -> Option<Vec<Event>> {
        let cb = self.new_id();
        if !self.send(&Writer::new(1, 0).uint(cb).finish(), &[]) {
            return None;
        }
        let mut evs = Vec::new();
        loop {
            let e = self.event()?;
            if e.object == cb && e.opcode == 0 {
                return Some(evs);
            }
            if e.object == 1 && e.opcode == 0 {
                panic!("protocol error: {}", e.string(2));
            }
            evs.push(e);
        }
    }

    /// get_registry (as id 2 when first) and the globals: (name, interface, version).
    pub fn globals(&mut self) -> (u32, Vec<(u32, String, u32)>) {
        let reg = self.new_id();
        assert!(self.send(&Writer::new(1, 1).uint(reg).finish(), &[]));
        let evs = self.roundtrip().expect("registry roundtrip");
        let g = evs
            .iter()
            .filter(|e| e.object == reg && e.opcode == 0)
            .map(|e| {
                (
                    e.word(0),
                    e.string(1),
                    e.word(2 + (e.word(1) as usize).div_ceil(4)),
                )
            })
            .collect();
        (reg, g)
    }

    /// Reads until EOF; returns the `wl_display.error` (object, code, message) seen.
    pub fn expect_error(&mut self) -> (u32, u32, String) {
        let mut err = None;
        while let Some(e) = self.event() {
            if e.object == 1 && e.opcode == 0 {
                err = Some((e.word(0), e.word(1), e.string(2)));
            }
        }
        err.expect("disconnected without wl_display.error")
    }
}

/// `wl_registry.bind(name, interface, version)` as `id`.
pub fn bind(reg: u32, name: u32, iface: &str, version: u32, id: u32) -> Vec<u8> {
    Writer::new(reg, 0)
        .uint(name)
        .string(iface)
        .uint(version)
        .uint(id)
        .finish()
}

/// A file of `len` bytes, for wl_shm pools.
pub fn file_of(len: usize) -> OwnedFd {
    let mut f = tempfile::tempfile().unwrap();
    f.write_all(&vec![0u8; len]).unwrap();
    f.into()
}

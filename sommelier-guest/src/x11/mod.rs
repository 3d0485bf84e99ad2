//! X11 apps in the guest: `/init x11` owns the X display socket and, on the
//! first connection to it, starts a rootless Xwayland whose Wayland
//! connection it bridges to the guest's relay ([`xwl`]) and whose window
//! manager it is ([`xwm`]). Nothing of X11 leaves the guest: what reaches
//! the host is Xwayland's Wayland, renumbered, with xdg roles for its
//! windows, checked by the VM's wl-proxy like any client's.
//!
//! One Xwayland at a time: it ends when its last X client has gone (XFixes
//! disconnect mode), and the next connection starts another.

pub mod clip;
pub mod conn;
pub mod fuzz;
pub mod ids;
pub mod xwl;
pub mod xwm;

use std::collections::VecDeque;
use std::os::fd::{AsRawFd, OwnedFd};
use std::os::unix::net::{UnixListener, UnixStream};
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command};
use std::time::{Duration, Instant};

use x11rb::connection::Connection;

use crate::relay::{recv_with_fds, send_with_fds};
use conn::{ConnError, Live};
use xwl::{Xwl, XwlError};
use xwm::Wm;

/// Why an X server session ended.
#[derive(Debug, thiserror::Error)]
pub enum X11Error {
    /// Xwayland's Wayland broke the bridge's rules.
    #[error(transparent)]
    Wayland(#[from] XwlError),
    /// The window manager's connection failed.
    #[error(transparent)]
    Wm(#[from] ConnError),
    /// A socket or the process failed.
    #[error(transparent)]
    Io(#[from] std::io::Error),
    /// Xwayland did not take its window manager.
    #[error("Xwayland did not take its window manager within {0:?}")]
    NotReady(Duration),
    /// A command-line argument was wrong.
    #[error("usage: {0}")]
    Usage(String),
}

/// What `/init x11` is told.
#[derive(Debug, Clone)]
pub struct Opts {
    /// The display number (`:N`).
    pub display: u32,
    /// The Wayland socket Xwayland's connection goes to.
    pub upstream: PathBuf,
    /// The Xwayland binary.
    pub xwayland: String,
    /// Where the display's socket goes (`/tmp/.X11-unix`).
    pub socket_dir: PathBuf,
    /// A listening socket already made (by the init, which keeps it
    /// across restarts of this process).
    pub listen_fd: Option<i32>,
}

impl Opts {
    /// Parses `[--display N] [--upstream PATH] [--xwayland PATH]
    /// [--socket-dir DIR]`.
    pub fn parse(args: &[String]) -> Result<Self, X11Error> {
        let mut o = Opts {
            display: 0,
            upstream: PathBuf::from("/run/vmapp/wayland-0"),
            xwayland: "Xwayland".into(),
            socket_dir: PathBuf::from("/tmp/.X11-unix"),
            listen_fd: None,
        };
        let mut it = args.iter();
        while let Some(a) = it.next() {
            let v = it
                .next()
                .ok_or_else(|| X11Error::Usage(format!("{a} needs a value")))?;
            match a.as_str() {
                "--display" => {
                    o.display = v
                        .parse()
                        .map_err(|_| X11Error::Usage(format!("bad display {v}")))?
                }
                "--upstream" => o.upstream = v.into(),
                "--xwayland" => o.xwayland = v.clone(),
                "--socket-dir" => o.socket_dir = v.into(),
                "--listen-fd" => {
                    o.listen_fd = Some(
                        v.parse()
                            .map_err(|_| X11Error::Usage(format!("bad fd {v}")))?,
                    )
                }
                _ => return Err(X11Error::Usage(format!("unknown option {a}"))),
            }
        }
        Ok(o)
    }
}

/// `/init x11 …`: serves the display until killed.
pub fn main(args: &[String]) -> i32 {
    let o = match Opts::parse(args) {
        Ok(o) => o,
        Err(e) => {
            eprintln!("x11: {e}");
            return 2;
        }
    };
    let l = match o.listen_fd {
        // SAFETY: the init passes its listening socket as this fd, which
        // nothing else in this process owns.
        Some(fd) => Ok(unsafe { <UnixListener as std::os::fd::FromRawFd>::from_raw_fd(fd) }),
        None => listen(&o),
    };
    let l = match l {
        Ok(l) => l,
        Err(e) => {
            eprintln!("x11: cannot listen on display :{}: {e}", o.display);
            return 1;
        }
    };
    loop {
        if let Err(e) = wait_readable(&[l.as_raw_fd()], None) {
            eprintln!("x11: {e}");
            return 1;
        }
        if let Err(e) = session(&l, &o) {
            eprintln!("x11: Xwayland session ended: {e}");
            // A server that fails at once must not spin.
            std::thread::sleep(Duration::from_millis(500));
        }
    }
}

/// The display's listening socket, made before any X client comes.
pub fn listen(o: &Opts) -> std::io::Result<UnixListener> {
    std::fs::create_dir_all(&o.socket_dir)?;
    // Sticky and world-writable, as X expects of /tmp/.X11-unix.
    std::fs::set_permissions(
        &o.socket_dir,
        std::os::unix::fs::PermissionsExt::from_mode(0o1777),
    )?;
    let path = o.socket_dir.join(format!("X{}", o.display));
    let _ = std::fs::remove_file(&path);
    UnixListener::bind(path)
}

/// Polls `fds` for input; `Ok(index)` of the first ready one.
fn wait_readable(fds: &[i32], timeout: Option<Duration>) -> std::io::Result<Option<usize>> {
    let mut p: Vec<libc::pollfd> = fds
        .iter()
        .map(|&fd| libc::pollfd {
            fd,
            events: libc::POLLIN,
            revents: 0,
        })
        .collect();
    // Rounded up: a deadline less than 1 ms away must not spin.
    let ms = timeout.map_or(-1, |t| {
        t.as_micros().div_ceil(1000).min(i32::MAX as u128) as i32
    });
    loop {
        // SAFETY: a valid pollfd array for the call.
        let n = unsafe { libc::poll(p.as_mut_ptr(), p.len() as libc::nfds_t, ms) };
        if n < 0 {
            let e = std::io::Error::last_os_error();
            if e.raw_os_error() == Some(libc::EINTR) {
                continue;
            }
            return Err(e);
        }
        return Ok(p.iter().position(|p| p.revents != 0));
    }
}

/// Starts Xwayland on `listener` with its Wayland connection and window
/// manager socket, and bridges until it ends.
fn session(listener: &UnixListener, o: &Opts) -> Result<(), X11Error> {
    let up = UnixStream::connect(&o.upstream)?;
    let (wl, wl_x) = UnixStream::pair()?;
    let (wm, wm_x) = UnixStream::pair()?;
    let mut child = spawn_xwayland(o, listener, &wl_x, &wm_x)?;
    drop((wl_x, wm_x));
    let r = bridge(&mut child, wl, up, wm);
    // Xwayland ends itself once its last X client has gone (-terminate):
    // the connections it closes are no error then.
    let mut ended = false;
    for _ in 0..50 {
        match child.try_wait() {
            Ok(Some(st)) => {
                ended = st.success();
                break;
            }
            Ok(None) if r.is_err() => std::thread::sleep(Duration::from_millis(20)),
            _ => break,
        }
    }
    let _ = child.kill();
    let _ = child.wait();
    if ended {
        return Ok(());
    }
    r
}

fn spawn_xwayland(
    o: &Opts,
    listener: &UnixListener,
    wl: &UnixStream,
    wm: &UnixStream,
) -> std::io::Result<Child> {
    let fds = [listener.as_raw_fd(), wl.as_raw_fd(), wm.as_raw_fd()];
    let mut c = Command::new(&o.xwayland);
    c.arg(format!(":{}", o.display))
        .args(["-rootless", "-shm", "-terminate", "-nolisten", "tcp"])
        .args(["-listenfd", &fds[0].to_string()])
        .args(["-wm", &fds[2].to_string()])
        .env("WAYLAND_SOCKET", fds[1].to_string())
        .env_remove("WAYLAND_DISPLAY")
        .env_remove("DISPLAY");
    // SAFETY: between fork and exec the closure only calls fcntl, which is
    // async-signal-safe, on fds the parent holds open.
    unsafe {
        c.pre_exec(move || {
            for fd in fds {
                if libc::fcntl(fd, libc::F_SETFD, 0) < 0 {
                    return Err(std::io::Error::last_os_error());
                }
            }
            Ok(())
        });
    }
    c.spawn()
}

/// How long Xwayland may take to get ready (it waits for the
/// compositor's seats and outputs through the bridge).
const READY_WITHIN: Duration = Duration::from_secs(30);

/// Both directions of Xwayland's Wayland connection, with their partial
/// messages and fds.
struct Pump {
    xwl: Xwl,
    wl: UnixStream,
    up: UnixStream,
    xin: Vec<u8>,
    xfds: VecDeque<OwnedFd>,
    uin: Vec<u8>,
    ufds: VecDeque<OwnedFd>,
    buf: Vec<u8>,
}

/// Which side ended the session.
enum Ended {
    Xwayland,
    Upstream,
}

impl Pump {
    /// Reads what Xwayland sent and passes it on.
    fn read_x(&mut self) -> Result<Option<Ended>, X11Error> {
        let mut fds = Vec::new();
        let n = recv_with_fds(&self.wl, &mut self.buf, &mut fds)?;
        if n == 0 {
            return Ok(Some(Ended::Xwayland));
        }
        self.xin.extend_from_slice(&self.buf[..n]);
        self.xfds.extend(fds);
        let used = self.xwl.requests(&self.xin, &mut self.xfds)?;
        self.xin.drain(..used);
        Ok(None)
    }

    /// Reads what the compositor sent and passes it on.
    fn read_up(&mut self) -> Result<Option<Ended>, X11Error> {
        let mut fds = Vec::new();
        let n = recv_with_fds(&self.up, &mut self.buf, &mut fds)?;
        if n == 0 {
            return Ok(Some(Ended::Upstream));
        }
        self.uin.extend_from_slice(&self.buf[..n]);
        self.ufds.extend(fds);
        let used = self.xwl.events(&self.uin, &mut self.ufds)?;
        self.uin.drain(..used);
        Ok(None)
    }

    /// Writes out what the bridge has for either side.
    fn flush(&mut self) -> std::io::Result<()> {
        write_all(&self.up, &mut self.xwl.to_up, &mut self.xwl.to_up_fds)?;
        write_all(&self.wl, &mut self.xwl.to_x, &mut self.xwl.to_x_fds)
    }
}

/// Sends all of `bytes` with `fds`: at most 28 fds a message, each batch
/// with a few bytes, so that no fd arrives after the message that carries
/// it. (fds come with their messages, never without bytes.)
fn write_all(s: &UnixStream, bytes: &mut Vec<u8>, fds: &mut Vec<OwnedFd>) -> std::io::Result<()> {
    let mut pos = 0;
    while pos < bytes.len() {
        let batch: Vec<OwnedFd> = fds.drain(..fds.len().min(28)).collect();
        let end = if fds.is_empty() {
            bytes.len()
        } else {
            (pos + 4).min(bytes.len())
        };
        pos += send_with_fds(s, &bytes[pos..end], &batch)?;
    }
    bytes.clear();
    fds.clear();
    Ok(())
}

fn bridge(
    child: &mut Child,
    wl: UnixStream,
    up: UnixStream,
    wm: UnixStream,
) -> Result<(), X11Error> {
    let mut p = Pump {
        xwl: Xwl::new(),
        wl,
        up,
        xin: Vec::new(),
        xfds: VecDeque::new(),
        uin: Vec::new(),
        ufds: VecDeque::new(),
        buf: vec![0; 64 * 1024],
    };
    p.flush()?;
    // Xwayland takes its window manager only once its screen is up, which
    // needs the compositor's answers: the connection is made on a thread of
    // its own while this one carries Wayland, and says when it is done.
    let (done, done_r) = UnixStream::pair()?;
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::Builder::new()
        .name("x11-wm-connect".into())
        .spawn(move || {
            let _ = tx.send(Live::connect(wm));
            drop(done);
        })?;
    let start = Instant::now();
    let mut live = loop {
        let left = READY_WITHIN
            .checked_sub(start.elapsed())
            .ok_or(X11Error::NotReady(READY_WITHIN))?;
        let fds = [p.wl.as_raw_fd(), p.up.as_raw_fd(), done_r.as_raw_fd()];
        match wait_readable(&fds, Some(left))? {
            Some(0) => {
                if p.read_x()?.is_some() {
                    return Ok(());
                }
            }
            Some(1) => {
                if p.read_up()?.is_some() {
                    return Ok(());
                }
            }
            Some(_) => match rx.try_recv() {
                Ok(live) => break live?,
                Err(_) => return Err(X11Error::NotReady(READY_WITHIN)),
            },
            None => return Err(X11Error::NotReady(READY_WITHIN)),
        }
        p.flush()?;
        if let Some(st) = child.try_wait()? {
            return Err(std::io::Error::other(format!("Xwayland exited: {st}")).into());
        }
    };
    let mut wmgr = Wm::new(live.root);
    run(&mut p, &mut live, &mut wmgr)
}

/// The serving loop: Xwayland's Wayland, the compositor's, X events and
/// host selections being read for X apps.
fn run(p: &mut Pump, live: &mut Live, wmgr: &mut Wm) -> Result<(), X11Error> {
    loop {
        // Until nothing is left: a round trip made while handling one thing
        // (an atom, a property) may have queued X events that poll would
        // not see again.
        let mut busy = true;
        while busy {
            busy = false;
            while let Some(e) = live.conn.poll_for_event().map_err(ConnError::from)? {
                busy = true;
                wmgr.event(live, &mut p.xwl, &e)?;
            }
            while let Some(e) = p.xwl.wm.pop_front() {
                busy = true;
                wmgr.wayland_event(live, e);
            }
            while let Some((mime, fd)) = p.xwl.sends.pop_front() {
                busy = true;
                wmgr.clip.host_wants(live, &mime, fd);
            }
        }
        live.conn.flush().map_err(ConnError::from)?;
        p.flush()?;
        let mut fds = vec![
            p.wl.as_raw_fd(),
            p.up.as_raw_fd(),
            live.conn.stream().as_raw_fd(),
        ];
        fds.extend(wmgr.clip.incoming.iter().map(|t| t.fd.as_raw_fd()));
        // Woken for windows due to be reported as not shown and clipboard
        // conversions to give up.
        let timeout = wmgr
            .deadline()
            .map(|d| d.saturating_duration_since(Instant::now()));
        let ready = wait_readable(&fds, timeout)?;
        wmgr.timers(live, Instant::now());
        let ended = match ready {
            Some(0) => p.read_x()?,
            Some(1) => p.read_up()?,
            Some(i) if i >= 3 => {
                wmgr.clip.read_incoming(live, i - 3);
                None
            }
            _ => None,
        };
        match ended {
            Some(Ended::Xwayland) => return Ok(()),
            Some(Ended::Upstream) => {
                return Err(std::io::Error::other("the compositor closed the connection").into())
            }
            None => {}
        }
    }
}

/// The X display's socket path for `o`.
pub fn socket_path(o: &Opts) -> PathBuf {
    Path::new(&o.socket_dir).join(format!("X{}", o.display))
}

/// The init's side: makes display `:0`'s socket now (so an app started
/// next finds it) and keeps `/init x11` serving it, started again if it
/// ends (a crash closes the X apps' windows, not the VM). `upstream` is the
/// relay's socket, `xwayland` the server's binary.
pub fn supervise(upstream: &Path, xwayland: &str) -> std::io::Result<()> {
    let o = Opts {
        upstream: upstream.to_path_buf(),
        xwayland: xwayland.to_string(),
        ..Opts::parse(&[]).map_err(|e| std::io::Error::other(e.to_string()))?
    };
    let l = listen(&o)?;
    let up = o.upstream.display().to_string();
    let xw = o.xwayland.clone();
    std::thread::Builder::new()
        .name("x11-supervisor".into())
        .spawn(move || loop {
            let fd = l.as_raw_fd();
            let mut c = Command::new("/proc/self/exe");
            c.args(["x11", "--upstream", &up, "--xwayland", &xw])
                .args(["--listen-fd", &fd.to_string()]);
            // SAFETY: between fork and exec only fcntl, async-signal-safe,
            // on an fd this thread keeps open.
            unsafe {
                c.pre_exec(move || {
                    if libc::fcntl(fd, libc::F_SETFD, 0) < 0 {
                        return Err(std::io::Error::last_os_error());
                    }
                    Ok(())
                });
            }
            match c.spawn().and_then(|mut ch| ch.wait()) {
                Ok(st) => eprintln!("x11: display server ended ({st}); starting it again"),
                Err(e) => eprintln!("x11: cannot start the display server: {e}"),
            }
            std::thread::sleep(Duration::from_secs(1));
        })?;
    Ok(())
}

//! The event loop: one thread (`wl-proxy`) serves every client over epoll.
//! Each client has its own upstream connection to the compositor, its own
//! [`Session`], and bounded buffers in both directions (a side whose peer is
//! not draining is not read until it does).

use std::collections::VecDeque;
use std::io;
use std::os::fd::{AsRawFd, OwnedFd};
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::PathBuf;
use std::sync::mpsc::{channel, Receiver, Sender};
use std::sync::Arc;
use std::time::{Duration, Instant};

use ratelimit::{info_limited, warn_limited};
use vmm_sys_util::epoll::{ControlOperation, Epoll, EpollEvent, EventSet};
use vmm_sys_util::eventfd::{EventFd, EFD_NONBLOCK};

use crate::conn::{recv, ConnError, OutBuf, MAX_FDS_PER_SEND};
use crate::policy::{Limits, Policy};
use crate::session::{Session, Verdict, Violation};
use crate::wire::{self, WireError};

/// Errors of the proxy itself (not of one client).
#[derive(Debug, thiserror::Error)]
pub enum ProxyError {
    /// epoll, eventfd or accept failed.
    #[error("proxy I/O: {0}")]
    Io(#[from] io::Error),
    /// The proxy has stopped.
    #[error("the proxy has stopped")]
    Stopped,
    /// A client was not taken on (the proxy goes on serving the others).
    #[error("client refused: {0}")]
    Refused(String),
}

/// What a proxy needs to run.
#[derive(Debug, Clone)]
pub struct Config {
    /// The policy every client is held to.
    pub policy: Arc<Policy>,
    /// Window label: titles get `[TAG] `, app ids `TAG:`.
    pub tag: Option<String>,
    /// The compositor's socket.
    pub upstream: PathBuf,
}

impl Config {
    /// The compositor socket named by `WAYLAND_DISPLAY` (absolute, or
    /// relative to `XDG_RUNTIME_DIR`; default `wayland-0`).
    pub fn upstream_from_env() -> Option<PathBuf> {
        let d = std::env::var_os("WAYLAND_DISPLAY").unwrap_or_else(|| "wayland-0".into());
        let p = PathBuf::from(d);
        if p.is_absolute() {
            return Some(p);
        }
        Some(PathBuf::from(std::env::var_os("XDG_RUNTIME_DIR")?).join(p))
    }
}

enum Cmd {
    Add(UnixStream),
    Stop,
}

/// Controls a running [`Proxy`] from other threads.
#[derive(Debug, Clone)]
pub struct Handle {
    tx: Sender<Cmd>,
    wake: Arc<EventFd>,
}

impl Handle {
    /// Hands the proxy a connected client (e.g. one end of a socketpair).
    pub fn add_client(&self, stream: UnixStream) -> Result<(), ProxyError> {
        self.tx
            .send(Cmd::Add(stream))
            .map_err(|_| ProxyError::Stopped)?;
        self.wake.write(1)?;
        Ok(())
    }

    /// Makes [`Proxy::run`] return; every client is disconnected.
    pub fn stop(&self) {
        let _ = self.tx.send(Cmd::Stop);
        let _ = self.wake.write(1);
    }
}

const T_LISTEN: u64 = u64::MAX;
const T_WAKE: u64 = u64::MAX - 1;

/// Fds the proxy keeps for itself (epoll, eventfd, listener, stdio, logs).
const OWN_FDS: u64 = 32;
/// How long a listener whose `accept` failed (e.g. EMFILE) is left alone.
const ACCEPT_PAUSE: Duration = Duration::from_millis(100);

/// The most fds one client can make the proxy hold: its shm pools, what is
/// queued in each direction (a full queue, plus one `recvmsg` worth read and
/// not yet passed on, on both sides of the parser) and its two sockets.
/// Clients share one pool of fds (the fd limit less [`OWN_FDS`]); this is
/// what one may take of it at most, not what each is set aside.
pub fn fds_per_client(l: &Limits) -> u64 {
    let queued = 2 * (l.max_buffered_fds + MAX_FDS_PER_SEND) as u64;
    l.max_pools as u64 + 2 * queued + 2
}

/// Fds a `recvmsg` may bring at once: a client may read only while this
/// many more fit in the shared pool.
const RECV_FDS: u64 = MAX_FDS_PER_SEND as u64;

/// Raises this process's `RLIMIT_NOFILE`: both limits to 1,048,576 (or
/// `fs.nr_open` if lower) where the process may raise its hard limit
/// (`CAP_SYS_RESOURCE`; the kernel's default hard limit is 4096), else the
/// soft limit to the hard one. Returns the new soft limit. Process-wide, so
/// the library never calls it itself: the `wl-proxy` binary does, before
/// [`Proxy::new`]; an embedder may.
pub fn raise_fd_limit() -> io::Result<u64> {
    let nr_open = std::fs::read_to_string("/proc/sys/fs/nr_open")
        .ok()
        .and_then(|s| s.trim().parse::<u64>().ok())
        .unwrap_or(1 << 20);
    let want = nr_open.min(1 << 20);
    let mut l = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: getrlimit/setrlimit with a valid rlimit struct; checked.
    unsafe {
        if libc::getrlimit(libc::RLIMIT_NOFILE, &mut l) != 0 {
            return Err(io::Error::last_os_error());
        }
        if l.rlim_max < want {
            let up = libc::rlimit {
                rlim_cur: want,
                rlim_max: want,
            };
            // Fails with EPERM without CAP_SYS_RESOURCE: then the hard
            // limit stays as it is.
            if libc::setrlimit(libc::RLIMIT_NOFILE, &up) == 0 {
                return Ok(want);
            }
        }
        l.rlim_cur = l.rlim_max;
        if libc::setrlimit(libc::RLIMIT_NOFILE, &l) != 0 {
            return Err(io::Error::last_os_error());
        }
    }
    Ok(l.rlim_cur)
}

/// The soft `RLIMIT_NOFILE` (read only).
fn fd_limit() -> u64 {
    let mut l = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: getrlimit writes into a valid rlimit struct; checked.
    if unsafe { libc::getrlimit(libc::RLIMIT_NOFILE, &mut l) } != 0 {
        return 1024;
    }
    l.rlim_cur
}

/// Why a client's entry ends.
enum End {
    /// Normal end or I/O error; the reason is logged.
    Closed(&'static str),
    /// The client broke a rule: it gets a `wl_display.error`.
    Violation(Violation),
    /// The shared fd pool has no room for the client's next read: the
    /// proxy cuts whoever holds the most, then serves it again.
    Short,
}

impl From<Violation> for End {
    fn from(v: Violation) -> Self {
        End::Violation(v)
    }
}

#[derive(Default)]
struct InBuf {
    data: Vec<u8>,
    fds: VecDeque<OwnedFd>,
}

struct Client {
    serial: u64,
    down: UnixStream,
    up: UnixStream,
    session: Session,
    from_client: InBuf,
    from_server: InBuf,
    to_server: OutBuf,
    to_client: OutBuf,
    partial_since: Option<Instant>,
    down_eof: bool,
    up_eof: bool,
    /// Registered epoll events for (down, up); 0 = not registered.
    interest: [u32; 2],
    /// Fds it held when last counted (in [`Proxy::held`]).
    held: u64,
}

/// A validating proxy serving any number of clients on one thread.
pub struct Proxy {
    cfg: Config,
    tag: Option<Arc<str>>,
    epoll: Epoll,
    listener: Option<UnixListener>,
    clients: Vec<Option<Client>>,
    free: Vec<usize>,
    live: usize,
    serial: u64,
    rx: Receiver<Cmd>,
    handle: Handle,
    /// The policy's client limit.
    max_clients: usize,
    /// The fds clients may hold together (the fd limit less [`OWN_FDS`]),
    /// and what they hold now.
    fd_pool: u64,
    held: u64,
    /// When a listener taken out after a failed `accept` goes back.
    accept_paused: Option<Instant>,
}

impl Proxy {
    /// A proxy with no clients yet.
    pub fn new(cfg: Config) -> Result<Self, ProxyError> {
        let epoll = Epoll::new()?;
        let wake = Arc::new(EventFd::new(EFD_NONBLOCK)?);
        epoll.ctl(
            ControlOperation::Add,
            wake.as_raw_fd(),
            EpollEvent::new(EventSet::IN, T_WAKE),
        )?;
        let (tx, rx) = channel();
        let l = cfg.policy.limits;
        let fd_pool = fd_limit().saturating_sub(OWN_FDS);
        if fd_pool < fds_per_client(&l) {
            tracing::info!(
                "wl-proxy: the fd limit ({}) is below one client's most ({}); clients share it, \
                 and whoever holds the most is cut off when it runs short",
                fd_limit(),
                fds_per_client(&l),
            );
        }
        Ok(Proxy {
            max_clients: l.max_clients,
            fd_pool,
            held: 0,
            accept_paused: None,
            tag: cfg.tag.as_deref().map(Arc::from),
            cfg,
            epoll,
            listener: None,
            clients: Vec::new(),
            free: Vec::new(),
            live: 0,
            serial: 0,
            rx,
            handle: Handle { tx, wake },
        })
    }

    /// A handle for other threads.
    pub fn handle(&self) -> Handle {
        self.handle.clone()
    }

    /// Accepts clients from `listener` while running.
    pub fn listen(&mut self, listener: UnixListener) -> Result<(), ProxyError> {
        listener.set_nonblocking(true)?;
        self.epoll.ctl(
            ControlOperation::Add,
            listener.as_raw_fd(),
            EpollEvent::new(EventSet::IN, T_LISTEN),
        )?;
        self.listener = Some(listener);
        Ok(())
    }

    /// Number of connected clients.
    pub fn clients(&self) -> usize {
        self.live
    }

    fn limits(&self) -> Limits {
        self.cfg.policy.limits
    }

    /// Starts serving a connected client: opens its upstream connection.
    /// A client that cannot be served (too many clients, no compositor, a
    /// socket epoll refuses) gets [`ProxyError::Refused`] and is dropped;
    /// the proxy itself goes on.
    pub fn add_client(&mut self, down: UnixStream) -> Result<(), ProxyError> {
        if self.live >= self.max_clients {
            return Err(ProxyError::Refused(format!(
                "{} clients already",
                self.live
            )));
        }
        // Its two sockets, and room for its first read.
        if !self.make_room(2 + RECV_FDS, None) {
            return Err(ProxyError::Refused("the proxy is out of fds".into()));
        }
        let up = UnixStream::connect(&self.cfg.upstream).map_err(|e| {
            ProxyError::Refused(format!(
                "cannot reach the compositor at {}: {e}",
                self.cfg.upstream.display()
            ))
        })?;
        for s in [&down, &up] {
            s.set_nonblocking(true)
                .map_err(|e| ProxyError::Refused(format!("set_nonblocking: {e}")))?;
        }
        self.serial += 1;
        let c = Client {
            serial: self.serial,
            down,
            up,
            session: Session::new(self.cfg.policy.clone(), self.tag.clone()),
            from_client: InBuf::default(),
            from_server: InBuf::default(),
            to_server: OutBuf::default(),
            to_client: OutBuf::default(),
            partial_since: None,
            down_eof: false,
            up_eof: false,
            interest: [0, 0],
            held: 2,
        };
        let slot = match self.free.pop() {
            Some(s) => s,
            None => {
                self.clients.push(None);
                self.clients.len() - 1
            }
        };
        self.clients[slot] = Some(c);
        self.live += 1;
        self.held += 2;
        tracing::debug!(client = self.serial, "wl-proxy: client connected");
        if let Err(e) = self.update_interest(slot) {
            self.remove(slot, Some(End::Closed("epoll refused its socket")));
            return Err(ProxyError::Refused(format!("epoll: {e}")));
        }
        Ok(())
    }

    /// [`Proxy::add_client`] from the event loop: a refusal is logged.
    fn take_client(&mut self, down: UnixStream) {
        if let Err(e) = self.add_client(down) {
            warn_limited!("wl-proxy: {e}");
        }
    }

    /// Serves until [`Handle::stop`].
    pub fn run(&mut self) -> Result<(), ProxyError> {
        let mut events = vec![EpollEvent::default(); 64];
        loop {
            let timeout = self.next_timeout();
            let n = match self.epoll.wait(timeout, &mut events) {
                Ok(n) => n,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(e) => return Err(e.into()),
            };
            for ev in &events[..n] {
                match ev.data() {
                    T_WAKE => {
                        let _ = self.handle.wake.read();
                        while let Ok(cmd) = self.rx.try_recv() {
                            match cmd {
                                Cmd::Add(s) => self.take_client(s),
                                Cmd::Stop => {
                                    self.shutdown();
                                    return Ok(());
                                }
                            }
                        }
                    }
                    T_LISTEN => self.accept()?,
                    t => {
                        let slot = (t >> 1) as usize;
                        let upstream = t & 1 == 1;
                        self.on_event(slot, upstream, ev.events());
                    }
                }
            }
            self.check_timeouts()?;
        }
    }

    fn accept(&mut self) -> Result<(), ProxyError> {
        loop {
            let Some(l) = &self.listener else {
                return Ok(());
            };
            match l.accept() {
                Ok((s, _)) => self.take_client(s),
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => return Ok(()),
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(e) if e.kind() == io::ErrorKind::ConnectionAborted => continue,
                Err(e) => {
                    // The pending connection stays, so a level-triggered
                    // listener would wake us at once, again and again.
                    warn_limited!("wl-proxy: accept: {e}; pausing new clients");
                    self.epoll.ctl(
                        ControlOperation::Delete,
                        l.as_raw_fd(),
                        EpollEvent::default(),
                    )?;
                    self.accept_paused = Some(Instant::now() + ACCEPT_PAUSE);
                    return Ok(());
                }
            }
        }
    }

    fn on_event(&mut self, slot: usize, upstream: bool, events: u32) {
        let limits = self.limits();
        let others = self.held.saturating_sub(self.held_by(slot));
        let room = self.fd_pool.saturating_sub(others);
        let Some(Some(c)) = self.clients.get_mut(slot) else {
            return;
        };
        let res = c.service(upstream, events, &limits, room);
        let now = c.fds_held();
        self.held = others + now;
        c.held = now;
        match res {
            Err(End::Short) => {
                // Whoever holds the most goes (this client, if it is the
                // one); the others are served on (epoll reports this
                // client again, level-triggered).
                if !self.make_room(RECV_FDS, Some(slot)) {
                    self.remove(slot, Some(End::Violation(Violation::Fds(SHORT))));
                } else if let Err(e) = self.update_interest(slot) {
                    // What it read before running short waits to be
                    // written: its sides are watched for it.
                    warn_limited!("wl-proxy: epoll: {e}");
                    self.remove(slot, Some(End::Closed("epoll failed")));
                }
            }
            Ok(true) => {
                if let Err(e) = self.update_interest(slot) {
                    warn_limited!("wl-proxy: epoll: {e}");
                    self.remove(slot, Some(End::Closed("epoll failed")));
                }
            }
            Ok(false) => self.remove(slot, None),
            Err(end) => self.remove(slot, Some(end)),
        }
    }

    fn next_timeout(&self) -> i32 {
        let t = Duration::from_millis(self.limits().partial_message_timeout_ms);
        let now = Instant::now();
        self.clients
            .iter()
            .flatten()
            .filter_map(|c| c.partial_since)
            .map(|s| epoll_timeout(t.saturating_sub(s.elapsed())))
            .chain(
                self.accept_paused
                    .map(|at| epoll_timeout(at.saturating_duration_since(now))),
            )
            .min()
            .unwrap_or(-1)
    }

    fn check_timeouts(&mut self) -> Result<(), ProxyError> {
        if let (Some(at), Some(l)) = (self.accept_paused, &self.listener) {
            if Instant::now() >= at {
                self.epoll.ctl(
                    ControlOperation::Add,
                    l.as_raw_fd(),
                    EpollEvent::new(EventSet::IN, T_LISTEN),
                )?;
                self.accept_paused = None;
            }
        }
        let t = Duration::from_millis(self.limits().partial_message_timeout_ms);
        for slot in 0..self.clients.len() {
            let Some(Some(c)) = self.clients.get_mut(slot) else {
                continue;
            };
            match c.partial_since {
                // Not reading it (back-pressure): the client is not the one stalling.
                Some(_) if c.interest[0] & EventSet::IN.bits() == 0 => {
                    c.partial_since = Some(Instant::now())
                }
                Some(s) if s.elapsed() >= t => {
                    self.remove(
                        slot,
                        Some(End::Violation(Violation::Malformed {
                            object: 1,
                            reason: "incomplete message held open",
                        })),
                    );
                }
                _ => {}
            }
        }
        Ok(())
    }

    fn update_interest(&mut self, slot: usize) -> Result<(), ProxyError> {
        let limits = self.limits();
        let Some(Some(c)) = self.clients.get_mut(slot) else {
            return Ok(());
        };
        let want = c.wanted(&limits);
        for (side, &want) in want.iter().enumerate() {
            if want == c.interest[side] {
                continue;
            }
            let fd = if side == 0 {
                c.down.as_raw_fd()
            } else {
                c.up.as_raw_fd()
            };
            let ev = EpollEvent::new(
                EventSet::from_bits_truncate(want),
                ((slot as u64) << 1) | side as u64,
            );
            let op = match (c.interest[side], want) {
                (0, _) => ControlOperation::Add,
                (_, 0) => ControlOperation::Delete,
                _ => ControlOperation::Modify,
            };
            self.epoll.ctl(op, fd, ev)?;
            c.interest[side] = want;
        }
        Ok(())
    }

    /// The fds client `slot` held when last counted.
    fn held_by(&self, slot: usize) -> u64 {
        match self.clients.get(slot) {
            Some(Some(c)) => c.held,
            _ => 0,
        }
    }

    /// Makes `need` fds free in the shared pool by cutting off whoever
    /// holds the most, as often as needed; `asking` (the client that needs
    /// them) is cut only when it holds the most itself, and then false is
    /// returned. False too when nobody is left to cut.
    fn make_room(&mut self, need: u64, asking: Option<usize>) -> bool {
        while self.held + need > self.fd_pool {
            let hog = (0..self.clients.len())
                .filter(|&s| self.clients[s].is_some())
                .max_by_key(|&s| (self.held_by(s), Some(s) == asking));
            match hog {
                Some(h) if Some(h) == asking => return false,
                Some(h) => self.remove(h, Some(End::Violation(Violation::Fds(SHORT)))),
                None => return false,
            }
        }
        true
    }

    fn remove(&mut self, slot: usize, end: Option<End>) {
        let Some(c) = self.clients.get_mut(slot).and_then(Option::take) else {
            return;
        };
        self.free.push(slot);
        self.live -= 1;
        self.held = self.held.saturating_sub(c.held);
        for (side, fd) in [(0, c.down.as_raw_fd()), (1, c.up.as_raw_fd())] {
            if c.interest[side] != 0 {
                let _ = self
                    .epoll
                    .ctl(ControlOperation::Delete, fd, EpollEvent::default());
            }
        }
        let (n, commits) = (c.serial, c.session.commits());
        match end {
            None => info_limited!("wl-proxy: client {n} disconnected ({commits} surface commits)"),
            Some(End::Closed(why)) => {
                info_limited!(
                    "wl-proxy: client {n} disconnected ({commits} surface commits): {why}"
                )
            }
            Some(End::Short) => {
                info_limited!(
                    "wl-proxy: client {n} disconnected ({commits} surface commits): out of fds"
                )
            }
            Some(End::Violation(v)) => {
                warn_limited!("wl-proxy: client {n} disconnected ({commits} surface commits): {v}");
                // The compositor connection goes first, so nothing more reaches it.
                let _ = c.up.shutdown(std::net::Shutdown::Both);
                drop(c.up);
                let msg = c.session.error_event(&v);
                let _ = crate::conn::send(&c.down, &msg, &[]);
            }
        }
    }

    fn shutdown(&mut self) {
        for slot in 0..self.clients.len() {
            self.remove(slot, Some(End::Closed("proxy stopped")));
        }
    }
}

/// epoll_wait's timeout for `left` to go: rounded up past it.
fn epoll_timeout(left: Duration) -> i32 {
    i32::try_from(left.as_millis())
        .unwrap_or(i32::MAX)
        .saturating_add(1)
}

/// Why a client is cut off when the shared fd pool runs short.
const SHORT: &str = "holds the most fds while the proxy is short of them";

impl Client {
    /// The fds the proxy holds for it: its two sockets, its shm pools and
    /// what is queued either way.
    fn fds_held(&self) -> u64 {
        let queued = self.from_client.fds.len()
            + self.from_server.fds.len()
            + self.to_server.fd_count()
            + self.to_client.fd_count();
        (2 + self.session.pool_count() + queued) as u64
    }

    /// Epoll interest for (client socket, upstream socket).
    fn wanted(&self, l: &Limits) -> [u32; 2] {
        let room = |o: &OutBuf| o.len() < l.max_buffered_bytes && o.fd_count() < l.max_buffered_fds;
        let mut w = [0u32; 2];
        if !self.down_eof && room(&self.to_server) {
            w[0] |= EventSet::IN.bits();
        }
        if !self.to_client.is_empty() {
            w[0] |= EventSet::OUT.bits();
        }
        if !self.up_eof && room(&self.to_client) {
            w[1] |= EventSet::IN.bits();
        }
        if !self.to_server.is_empty() {
            w[1] |= EventSet::OUT.bits();
        }
        w
    }

    /// Handles readiness on one side, holding at most `room` fds.
    /// `Ok(false)` when the client is done.
    fn service(&mut self, upstream: bool, events: u32, l: &Limits, room: u64) -> Result<bool, End> {
        let readable = events
            & (EventSet::IN | EventSet::HANG_UP | EventSet::ERROR | EventSet::READ_HANG_UP).bits()
            != 0;
        if readable {
            self.read_side(!upstream, l, room)?;
        }
        if !self.to_server.is_empty() {
            match self.to_server.flush(&self.up) {
                Ok(_) => {}
                Err(_) => return Err(End::Closed("compositor connection lost")),
            }
        }
        if !self.to_client.is_empty() {
            match self.to_client.flush(&self.down) {
                Ok(_) => {}
                Err(_) => return Err(End::Closed("client connection lost")),
            }
        }
        // A side that has gone away ends the client once what it sent is delivered.
        if self.down_eof && self.to_server.is_empty() {
            return Ok(false);
        }
        if self.up_eof && self.to_client.is_empty() {
            return Err(End::Closed("compositor closed the connection"));
        }
        Ok(true)
    }

    fn read_side(&mut self, from_client: bool, l: &Limits, room: u64) -> Result<(), End> {
        let mut tmp = [0u8; 16384];
        loop {
            if self.fds_held() + RECV_FDS > room {
                return Err(End::Short);
            }
            let (sock, inb, out) = if from_client {
                (&self.down, &mut self.from_client, &self.to_server)
            } else {
                (&self.up, &mut self.from_server, &self.to_client)
            };
            if out.len() >= l.max_buffered_bytes || out.fd_count() >= l.max_buffered_fds {
                return Ok(());
            }
            match recv(sock, &mut tmp, &mut inb.fds) {
                Ok(0) => {
                    if from_client {
                        self.down_eof = true;
                        self.partial_since = None;
                    } else {
                        self.up_eof = true;
                    }
                    return Ok(());
                }
                Ok(n) => {
                    inb.data.extend_from_slice(&tmp[..n]);
                    if inb.fds.len() > l.max_buffered_fds {
                        return Err(Violation::Fds("too many fds queued").into());
                    }
                    self.process(from_client)?;
                    // A short read drained the socket: skip the EAGAIN round
                    // (epoll is level-triggered and reports anything newer).
                    if n < tmp.len() {
                        return Ok(());
                    }
                }
                Err(ConnError::Io(e)) if e.kind() == io::ErrorKind::WouldBlock => return Ok(()),
                Err(ConnError::Io(e)) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(ConnError::FdsTruncated) if from_client => {
                    return Err(Violation::Fds("too many fds in one send").into())
                }
                Err(_) if from_client => return Err(End::Closed("client connection lost")),
                Err(_) => return Err(End::Closed("compositor connection lost")),
            }
        }
    }

    /// Validates and forwards every complete message buffered from one side.
    fn process(&mut self, from_client: bool) -> Result<(), End> {
        let Client {
            session,
            from_client: fc,
            from_server: fs,
            to_server,
            to_client,
            ..
        } = self;
        let (inb, out) = if from_client {
            (fc, to_server)
        } else {
            (fs, to_client)
        };
        let mut off = 0;
        let res = loop {
            let rest = &inb.data[off..];
            let h = match wire::header(rest) {
                Ok(h) if rest.len() >= h.size => h,
                Ok(_) | Err(WireError::NeedBytes) => break Ok(()),
                Err(_) => {
                    let object = rest
                        .get(..4)
                        .map_or(0, |b| u32::from_ne_bytes([b[0], b[1], b[2], b[3]]));
                    break Err(Violation::Malformed {
                        object,
                        reason: "bad message size",
                    });
                }
            };
            let msg = &rest[..h.size];
            let fds = inb.fds.make_contiguous();
            let r = if from_client {
                session.request(msg, fds)
            } else {
                session.event(msg, fds)
            };
            let (verdict, nfds) = match r {
                Ok(v) => v,
                Err(e) => break Err(e),
            };
            let taken = inb.fds.drain(..nfds);
            match verdict {
                Verdict::Forward => out.push(msg, taken),
                Verdict::Replace(b) => out.push(&b, taken),
                Verdict::Drop => drop(taken),
            }
            off += h.size;
        };
        inb.data.drain(..off);
        res?;
        if inb.data.is_empty() {
            if !inb.fds.is_empty() {
                return Err(if from_client {
                    Violation::Fds("fds without a message").into()
                } else {
                    Violation::Upstream("fds without a message".into()).into()
                });
            }
            if from_client {
                self.partial_since = None;
            }
        } else if from_client && self.partial_since.is_none() {
            self.partial_since = Some(Instant::now());
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::fd::OwnedFd;

    /// A proxy whose "compositor" is a bare listener of the test's own.
    fn proxy(limits: &str) -> (Proxy, UnixListener, tempfile::TempDir) {
        let dir = tempfile::tempdir().unwrap();
        let upstream = dir.path().join("comp");
        let listener = UnixListener::bind(&upstream).unwrap();
        let policy = Policy::from_toml(&format!("[limits]\n{limits}")).unwrap();
        let cfg = Config {
            policy: Arc::new(policy),
            tag: None,
            upstream,
        };
        (Proxy::new(cfg).unwrap(), listener, dir)
    }

    /// Review finding 5: a refused client was reported as added.
    #[test]
    fn a_refused_client_is_an_error() {
        let (mut p, listener, dir) = proxy("max_clients = 1\n");
        p.add_client(UnixStream::pair().unwrap().0).unwrap();
        let r = p.add_client(UnixStream::pair().unwrap().0);
        assert!(matches!(r, Err(ProxyError::Refused(_))), "{r:?}");
        assert_eq!(p.clients(), 1);

        // The compositor has gone.
        drop(listener);
        std::fs::remove_file(dir.path().join("comp")).unwrap();
        let (mut q, ..) = proxy("");
        q.cfg.upstream = dir.path().join("comp");
        let r = q.add_client(UnixStream::pair().unwrap().0);
        assert!(matches!(r, Err(ProxyError::Refused(_))), "{r:?}");
        assert_eq!(q.clients(), 0);
    }

    /// Review finding 5: one client's epoll_ctl failure stopped the whole
    /// proxy. A "stream" that is really a regular file cannot join epoll;
    /// the proxy drops it and serves the next client.
    #[test]
    fn one_clients_epoll_failure_does_not_stop_the_proxy() {
        let (mut p, listener, _dir) = proxy("");
        let h = p.handle();
        let t = std::thread::spawn(move || p.run());
        let file: OwnedFd = tempfile::tempfile().unwrap().into();
        h.add_client(UnixStream::from(file)).unwrap();
        let (good, _peer) = UnixStream::pair().unwrap();
        h.add_client(good).unwrap();
        // The proxy reaches the compositor for each client it serves; the
        // file is refused at epoll, after its upstream connection.
        listener.set_nonblocking(false).unwrap();
        let _a = listener.accept().unwrap();
        let _b = listener.accept().unwrap();
        h.stop();
        assert!(t.join().unwrap().is_ok());
    }

    /// Review finding 5: a timeout beyond i32 milliseconds wrapped to a
    /// negative epoll timeout (wait forever). It is capped instead.
    #[test]
    fn a_huge_partial_message_timeout_does_not_wrap() {
        assert_eq!(epoll_timeout(Duration::from_millis(u64::MAX)), i32::MAX);
        assert_eq!(
            epoll_timeout(Duration::from_millis(3_000_000_000)),
            i32::MAX
        );
        assert_eq!(epoll_timeout(Duration::from_millis(10)), 11);
        assert_eq!(epoll_timeout(Duration::ZERO), 1);
    }
}

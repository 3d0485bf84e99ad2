//! The proxy's threads: an accept loop on the VM's socket, and for each
//! guest connection a connection to the host's server and two threads, one
//! per direction, that pass each packet through the connection's
//! [`Session`]. The mode can change at any time: `off` cuts every
//! connection, a step down from `full` cuts those that record.

use std::collections::HashMap;
use std::io::Write;
use std::net::Shutdown;
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, AtomicU8, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};

use ratelimit::warn_limited;

use crate::policy::{Limits, Mode, ServerVerdict, Session, Verdict};
use crate::wire::{self, Sizes};

/// Errors starting the proxy.
#[derive(Debug, thiserror::Error)]
pub enum ProxyError {
    /// The listening socket could not be made.
    #[error("cannot listen on {path}: {source}")]
    Listen {
        /// Where.
        path: PathBuf,
        /// Why.
        source: std::io::Error,
    },
    /// A thread could not be started.
    #[error("cannot start a thread: {0}")]
    Thread(std::io::Error),
}

/// How a VM's proxy is set up.
#[derive(Debug, Clone)]
pub struct Config {
    /// The host's sound server (`$PULSE_SERVER`'s path, or
    /// `$XDG_RUNTIME_DIR/pulse/native`); `None`: there is none, every
    /// connection is refused with one message.
    pub upstream: Option<PathBuf>,
    /// The VM's label, put on its client's and streams' names.
    pub tag: String,
    /// The switch at start.
    pub mode: Mode,
    /// Bounds.
    pub limits: Limits,
    /// What the server gets as the cookie ([`crate::host_cookie`]).
    pub cookie: Vec<u8>,
}

/// The server's packets may be as large as PulseAudio allows.
const SERVER_SIZES: Sizes = Sizes {
    command: 16 << 20,
    data: 16 << 20,
};

/// A connection as `set_mode` sees it: its sockets (the server's once
/// connected) and its session.
struct Conn {
    guest: UnixStream,
    server: Option<UnixStream>,
    session: Option<Arc<Mutex<Session>>>,
}

impl Conn {
    fn cut(&self) {
        if let Some(s) = &self.server {
            let _ = s.shutdown(Shutdown::Both);
        }
        let _ = self.guest.shutdown(Shutdown::Both);
    }
}

impl Shared {
    /// Registers a new guest connection, if the VM has room for it (and
    /// its audio is not off); its id.
    fn admit(&self, guest: &UnixStream) -> Option<u64> {
        let tag = &self.cfg.tag;
        let mut conns = lock(&self.conns);
        if mode_from(self.mode.load(Ordering::SeqCst)) == Mode::Off {
            warn_limited!("audio [{tag}]: a connection refused: the VM's audio is off");
            return None;
        }
        if conns.len() >= self.cfg.limits.connections {
            warn_limited!(
                "audio [{tag}]: a connection refused: the VM has {} already",
                conns.len()
            );
            return None;
        }
        let id = self.next.fetch_add(1, Ordering::Relaxed);
        let guest = guest.try_clone().ok()?;
        conns.insert(
            id,
            Conn {
                guest,
                server: None,
                session: None,
            },
        );
        Some(id)
    }
}

/// State shared by the proxy's threads.
pub struct Shared {
    cfg: Config,
    mode: AtomicU8,
    conns: Mutex<HashMap<u64, Conn>>,
    next: AtomicU64,
    streams: Arc<AtomicUsize>,
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

fn mode_from(v: u8) -> Mode {
    match v {
        0 => Mode::Off,
        1 => Mode::Playback,
        _ => Mode::Full,
    }
}

fn mode_to(m: Mode) -> u8 {
    match m {
        Mode::Off => 0,
        Mode::Playback => 1,
        Mode::Full => 2,
    }
}

/// A running proxy: the handle an embedder keeps.
#[derive(Clone)]
pub struct Proxy {
    shared: Arc<Shared>,
}

impl Proxy {
    /// A proxy with `cfg` (nothing listens yet: see [`Proxy::listen`]).
    pub fn new(cfg: Config) -> Self {
        let mode = mode_to(cfg.mode);
        Self {
            shared: Arc::new(Shared {
                cfg,
                mode: AtomicU8::new(mode),
                conns: Mutex::new(HashMap::new()),
                next: AtomicU64::new(0),
                streams: Arc::new(AtomicUsize::new(0)),
            }),
        }
    }

    /// Binds `path` (a stale socket there is replaced).
    pub fn listen(path: &Path) -> Result<UnixListener, ProxyError> {
        let _ = std::fs::remove_file(path);
        UnixListener::bind(path).map_err(|source| ProxyError::Listen {
            path: path.to_path_buf(),
            source,
        })
    }

    /// The current mode.
    pub fn mode(&self) -> Mode {
        mode_from(self.shared.mode.load(Ordering::SeqCst))
    }

    /// Connections open now.
    pub fn connections(&self) -> usize {
        lock(&self.shared.conns).len()
    }

    /// Switches the mode; returns once the connections the new mode does
    /// not allow are cut (their streams end on the server at once).
    pub fn set_mode(&self, mode: Mode) {
        self.shared.mode.store(mode_to(mode), Ordering::SeqCst);
        // Connections read the mode under their session's lock: one that
        // took the old mode finishes that packet before this looks at it.
        let conns = lock(&self.shared.conns);
        for c in conns.values() {
            let cut = match mode {
                Mode::Off => true,
                Mode::Playback => c.session.as_ref().is_some_and(|s| lock(s).records()),
                Mode::Full => false,
            };
            if cut {
                c.cut();
            }
        }
    }

    /// Serves `listener` for ever: one pair of threads per connection, at
    /// most [`Limits::connections`] at once. A failed accept (out of fds,
    /// say) is retried after a pause.
    pub fn serve(&self, listener: &UnixListener) -> ! {
        loop {
            match listener.accept() {
                Ok((guest, _)) => {
                    let Some(id) = self.shared.admit(&guest) else {
                        continue;
                    };
                    let shared = self.shared.clone();
                    let r = std::thread::Builder::new()
                        .name("audio-conn".into())
                        .spawn(move || connection(&shared, id, guest));
                    if let Err(e) = r {
                        lock(&self.shared.conns).remove(&id);
                        warn_limited!("audio proxy: cannot start a connection's thread: {e}");
                    }
                }
                Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
                Err(e) => {
                    warn_limited!("audio proxy: accepting: {e}");
                    std::thread::sleep(std::time::Duration::from_millis(100));
                }
            }
        }
    }

    /// Serves `listener` on a thread of its own.
    pub fn spawn(&self, listener: UnixListener) -> Result<(), ProxyError> {
        let me = self.clone();
        std::thread::Builder::new()
            .name("audio-accept".into())
            .spawn(move || me.serve(&listener))
            .map(drop)
            .map_err(ProxyError::Thread)
    }
}

/// One guest connection (registered as `id`), from accept to close.
fn connection(shared: &Arc<Shared>, id: u64, guest: UnixStream) {
    if let Err(why) = serve_connection(shared, id, &guest) {
        warn_limited!(
            "audio [{}]: a guest connection cut off: {why}",
            shared.cfg.tag
        );
    }
    if let Some(c) = lock(&shared.conns).remove(&id) {
        c.cut();
    }
}

/// How long a new connection has to authenticate.
const HANDSHAKE: std::time::Duration = std::time::Duration::from_secs(10);

fn serve_connection(shared: &Arc<Shared>, id: u64, guest: &UnixStream) -> Result<(), String> {
    let tag = &shared.cfg.tag;
    let server = match shared.cfg.upstream.as_deref().map(UnixStream::connect) {
        Some(Ok(s)) => s,
        failed => {
            static ONCE: std::sync::Once = std::sync::Once::new();
            let why = match failed {
                Some(Err(e)) => e.to_string(),
                _ => "neither PULSE_SERVER nor XDG_RUNTIME_DIR names one".into(),
            };
            ONCE.call_once(|| {
                tracing::warn!("audio [{tag}]: no sound server ({why}): the VM's apps play nothing")
            });
            return Ok(());
        }
    };
    let session = Arc::new(Mutex::new(Session::new(
        tag,
        shared.cfg.limits,
        shared.cfg.cookie.clone(),
        shared.streams.clone(),
    )));
    let clones = (guest.try_clone(), server.try_clone(), server.try_clone());
    let (Ok(to_guest), Ok(s2), Ok(s3)) = clones else {
        return Err("out of file descriptors".into());
    };
    match lock(&shared.conns).get_mut(&id) {
        Some(c) => {
            c.server = Some(s2);
            c.session = Some(session.clone());
        }
        None => return Ok(()),
    }
    // A mode switch between admission and here: the connection reads the
    // mode with each packet, under the session's lock.
    let _ = guest.set_read_timeout(Some(HANDSHAKE));
    // Both directions write to the guest (replies, and refusals).
    let to_guest = Arc::new(Mutex::new(to_guest));
    let back = {
        let (shared, session, to_guest) = (shared.clone(), session.clone(), to_guest.clone());
        std::thread::Builder::new()
            .name("audio-server".into())
            .spawn(move || server_to_guest(&shared, s3, &session, &to_guest))
    };
    let r = guest_to_server(shared, guest, &server, &session, &to_guest);
    let _ = server.shutdown(Shutdown::Both);
    let _ = guest.shutdown(Shutdown::Both);
    if let Ok(t) = back {
        let _ = t.join();
    }
    r
}

/// The guest's packets: checked, then passed on, rewritten, refused or
/// the end. `Err` names why the connection was cut.
fn guest_to_server(
    shared: &Shared,
    mut guest: &UnixStream,
    mut server: &UnixStream,
    session: &Mutex<Session>,
    to_guest: &Mutex<UnixStream>,
) -> Result<(), String> {
    let sizes = shared.cfg.limits.sizes();
    let mut buf = Vec::new();
    let mut handshake = true;
    loop {
        match wire::read_packet(&mut guest, sizes, &mut buf) {
            Ok(Some(_)) => {}
            Ok(None) => return Ok(()),
            Err(wire::WireError::Io(e))
                if matches!(
                    e.kind(),
                    std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
                ) =>
            {
                return Err(format!("no AUTH within {} s", HANDSHAKE.as_secs()));
            }
            Err(wire::WireError::Io(_)) => return Ok(()),
            Err(e) => return Err(e.to_string()),
        }
        let verdict = {
            let mut s = lock(session);
            let mode = mode_from(shared.mode.load(Ordering::SeqCst));
            let v = s.client_packet(&buf, mode);
            if handshake && s.version() != 0 {
                // Authenticated: it may stay idle (one syscall, not one a packet).
                handshake = false;
                let _ = guest.set_read_timeout(None);
            }
            v
        };
        let r = match verdict {
            Verdict::Forward => server.write_all(&buf),
            Verdict::Rewrite(p) => server.write_all(&p),
            Verdict::Refuse { reply, why } => {
                warn_limited!("audio [{}]: refused: {why}", shared.cfg.tag);
                lock(to_guest).write_all(&reply)
            }
            Verdict::Close(why) => return Err(why),
        };
        if r.is_err() {
            return Ok(());
        }
    }
}

/// The server's packets, to the guest.
fn server_to_guest(
    shared: &Shared,
    mut server: UnixStream,
    session: &Mutex<Session>,
    to_guest: &Mutex<UnixStream>,
) {
    let mut buf = Vec::new();
    while let Ok(Some(_)) = wire::read_packet(&mut server, SERVER_SIZES, &mut buf) {
        let verdict = {
            let mut s = lock(session);
            let mode = mode_from(shared.mode.load(Ordering::SeqCst));
            s.server_packet(&buf, mode)
        };
        let r = match verdict {
            ServerVerdict::Forward => lock(to_guest).write_all(&buf),
            ServerVerdict::Rewrite(p) => lock(to_guest).write_all(&p),
            ServerVerdict::Drop => Ok(()),
        };
        if r.is_err() {
            break;
        }
    }
    // The server went away: the guest's side ends too.
    let _ = lock(to_guest).shutdown(Shutdown::Both);
}

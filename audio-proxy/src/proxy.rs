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
    /// `$XDG_RUNTIME_DIR/pulse/native`).
    pub upstream: PathBuf,
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

struct Conn {
    guest: UnixStream,
    server: UnixStream,
    session: Arc<Mutex<Session>>,
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
        let conns = lock(&self.shared.conns);
        for c in conns.values() {
            let cut = match mode {
                Mode::Off => true,
                Mode::Playback => lock(&c.session).records(),
                Mode::Full => false,
            };
            if cut {
                let _ = c.server.shutdown(Shutdown::Both);
                let _ = c.guest.shutdown(Shutdown::Both);
            }
        }
    }

    /// Serves `listener` until accepting fails: one pair of threads per
    /// connection.
    pub fn serve(&self, listener: &UnixListener) -> std::io::Error {
        loop {
            match listener.accept() {
                Ok((guest, _)) => {
                    let shared = self.shared.clone();
                    let r = std::thread::Builder::new()
                        .name("audio-conn".into())
                        .spawn(move || connection(&shared, guest));
                    if let Err(e) = r {
                        warn_limited!("audio proxy: cannot start a connection's thread: {e}");
                    }
                }
                Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
                Err(e) => return e,
            }
        }
    }

    /// Serves `listener` on a thread of its own.
    pub fn spawn(&self, listener: UnixListener) -> Result<(), ProxyError> {
        let me = self.clone();
        std::thread::Builder::new()
            .name("audio-accept".into())
            .spawn(move || {
                let e = me.serve(&listener);
                tracing::warn!("audio proxy: accepting ended: {e}");
            })
            .map(drop)
            .map_err(ProxyError::Thread)
    }
}

/// One guest connection, from accept to close.
fn connection(shared: &Arc<Shared>, guest: UnixStream) {
    let tag = &shared.cfg.tag;
    if mode_from(shared.mode.load(Ordering::SeqCst)) == Mode::Off {
        warn_limited!("audio [{tag}]: a connection refused: the VM's audio is off");
        return;
    }
    let server = match UnixStream::connect(&shared.cfg.upstream) {
        Ok(s) => s,
        Err(e) => {
            static ONCE: std::sync::Once = std::sync::Once::new();
            ONCE.call_once(|| {
                tracing::warn!(
                    "audio [{tag}]: no sound server at {} ({e}): the VM's apps play nothing",
                    shared.cfg.upstream.display()
                )
            });
            return;
        }
    };
    let session = Arc::new(Mutex::new(Session::new(
        tag,
        shared.cfg.limits,
        shared.cfg.cookie.clone(),
        shared.streams.clone(),
    )));
    let (Ok(g2), Ok(g3), Ok(s3)) = (guest.try_clone(), guest.try_clone(), server.try_clone())
    else {
        return;
    };
    let id = shared.next.fetch_add(1, Ordering::Relaxed);
    lock(&shared.conns).insert(
        id,
        Conn {
            guest: g3,
            server: s3,
            session: session.clone(),
        },
    );
    // Both directions write to the guest (replies, and refusals).
    let to_guest = Arc::new(Mutex::new(g2));
    let back = {
        let (shared, session, to_guest) = (shared.clone(), session.clone(), to_guest.clone());
        let server = match server.try_clone() {
            Ok(s) => s,
            Err(_) => {
                lock(&shared.conns).remove(&id);
                return;
            }
        };
        std::thread::Builder::new()
            .name("audio-server".into())
            .spawn(move || server_to_guest(&shared, server, &session, &to_guest))
    };
    if let Err(why) = guest_to_server(shared, &guest, &server, &session, &to_guest) {
        warn_limited!("audio [{tag}]: a guest connection cut off: {why}");
    }
    let _ = server.shutdown(Shutdown::Both);
    let _ = guest.shutdown(Shutdown::Both);
    if let Ok(t) = back {
        let _ = t.join();
    }
    lock(&shared.conns).remove(&id);
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
    loop {
        match wire::read_packet(&mut guest, sizes, &mut buf) {
            Ok(Some(_)) => {}
            Ok(None) => return Ok(()),
            Err(wire::WireError::Io(_)) => return Ok(()),
            Err(e) => return Err(e.to_string()),
        }
        let mode = mode_from(shared.mode.load(Ordering::SeqCst));
        let verdict = lock(session).client_packet(&buf, mode);
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
        let mode = mode_from(shared.mode.load(Ordering::SeqCst));
        let verdict = lock(session).server_packet(&buf, mode);
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

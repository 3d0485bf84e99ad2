//! A running VM's control socket, `control` in its runtime directory: what
//! `vmapp list`, `vmapp stop` and `vmapp exec` talk to.
//!
//! The protocol (version 1) is one request and one reply per connection,
//! each a single line of JSON (at most [`MAX_LINE`] bytes):
//!
//! | request | reply |
//! |---|---|
//! | `{"version":1,"op":"status"}` | `{"version":1,"ok":true,"status":{…}}` ([`Status`]) |
//! | `{"version":1,"op":"stop"}` | `{"version":1,"ok":true}` once the guest has been asked to shut down (the power button) |
//! | `{"version":1,"op":"stop","force":true}` | `{"version":1,"ok":true}` once the VM is being stopped at once |
//! | `{"version":1,"op":"net","on":false}` | `{"version":1,"ok":true}` once the network is off (passt has ended) or on (passt listens) |
//! | `{"version":1,"op":"audio","mode":"off"}` | `{"version":1,"ok":true}` once the audio proxy has the new mode (`off`: every stream of the VM has ended; `playback`: every record stream) |
//!
//! Anything else gets `{"version":1,"ok":false,"error":"…"}`. A request
//! must arrive within [`REQUEST_TIMEOUT`] of connecting. Only the user the
//! VM runs as may ask (checked with `SO_PEERCRED`, on top of the runtime
//! directory's 0700). A further command does not travel through this
//! socket: [`Status::exec_socket`] names the VM's vsock socket, where the
//! client asks for the guest's `exec_port` itself
//! ([`vmm::agent::exec`]), so the command's streams never pass through the
//! VMM process.

use std::io::{Read, Write};
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use serde::{Deserialize, Serialize};

/// The protocol version.
pub const VERSION: u32 = 1;
/// Longest request line, in bytes.
pub const MAX_LINE: usize = 4096;
/// Longest reply line a client reads, in bytes (a status carries the VM's
/// whole command line).
const MAX_REPLY: usize = 4 << 20;
/// How long the server waits for a client's request.
pub const REQUEST_TIMEOUT: Duration = Duration::from_secs(2);
/// How long a client waits for the reply.
const REPLY_TIMEOUT: Duration = Duration::from_secs(10);

/// Errors of the control socket.
#[derive(Debug, thiserror::Error)]
pub enum ControlError {
    /// The socket cannot be created or reached.
    #[error("{}: {source}", path.display())]
    Io {
        /// The socket.
        path: PathBuf,
        /// The error.
        source: std::io::Error,
    },
    /// The socket is served by another user (checked with `SO_PEERCRED`
    /// before anything is sent).
    #[error("{}: served by uid {uid}, not by this user: refused", path.display())]
    NotOurs {
        /// The socket.
        path: PathBuf,
        /// Who serves it.
        uid: u32,
    },
    /// The other side broke the protocol.
    #[error("control socket: {0}")]
    Protocol(String),
    /// The VM refused the request.
    #[error("{0}")]
    Refused(String),
    /// The thread could not be started or filtered.
    #[error(transparent)]
    Seccomp(#[from] seccomp_policies::SeccompError),
}

/// A running VM as its control socket describes it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Status {
    /// The app's name (its runtime directory's name for a VM without one).
    pub name: String,
    /// vmapp's process ID, as the host sees it.
    pub pid: u32,
    /// Seconds since the VM started.
    pub uptime_s: u64,
    /// Guest RAM, MiB.
    pub memory_mib: u64,
    /// vCPUs.
    pub vcpus: u8,
    /// The VM's command (empty: an interactive shell).
    pub command: Vec<String>,
    /// The vsock device's socket where further commands can be run, if the
    /// guest's agent accepts them.
    pub exec_socket: Option<PathBuf>,
    /// The guest port of that agent.
    pub exec_port: Option<u32>,
    /// Whether the network is on (absent: the VM has none).
    #[serde(default)]
    pub network: Option<bool>,
    /// The audio mode, `off`, `playback` or `full` (absent: the VM has no
    /// audio proxy).
    #[serde(default)]
    pub audio: Option<String>,
}

/// Sets the audio mode (`Some`) or asks (`None`); returns the mode.
pub type AudioSwitch = Box<dyn Fn(Option<&str>) -> Result<String, String> + Send>;

/// Turns the network on or off (`Some`) or asks (`None`); returns whether it
/// is on.
pub type NetSwitch = Box<dyn Fn(Option<bool>) -> Result<bool, String> + Send>;

/// What the server answers with; `uptime_s` is filled in per request.
pub struct Served {
    /// The fixed part of the status.
    pub status: Status,
    /// When the VM started.
    pub started: Instant,
    /// Stops the VM: at once with `true` ([`vmm::Stopper::stop`]), else
    /// through the guest ([`vmm::Stopper::shutdown`]).
    pub stop: Box<dyn Fn(bool) + Send>,
    /// The VM's network switch, if it has a network.
    pub net: Option<NetSwitch>,
    /// The VM's audio switch, if it has an audio proxy.
    pub audio: Option<AudioSwitch>,
    /// The control thread's seccomp mode.
    pub seccomp: seccomp_policies::Mode,
}

/// The server: a `control` thread answering on the socket until dropped.
pub struct ControlServer {
    path: PathBuf,
    done: Arc<AtomicBool>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl Drop for ControlServer {
    fn drop(&mut self) {
        self.done.store(true, Ordering::SeqCst);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
        let _ = std::fs::remove_file(&self.path);
    }
}

fn io(path: &Path) -> impl FnOnce(std::io::Error) -> ControlError + '_ {
    move |source| ControlError::Io {
        path: path.to_path_buf(),
        source,
    }
}

/// Listens on `path` and answers on a thread of its own (`control`, under
/// its seccomp filter), one client at a time.
pub fn serve(path: &Path, served: Served) -> Result<ControlServer, ControlError> {
    let _ = std::fs::remove_file(path);
    let listener = UnixListener::bind(path).map_err(io(path))?;
    listener.set_nonblocking(true).map_err(io(path))?;
    let done = Arc::new(AtomicBool::new(false));
    let d = done.clone();
    // SAFETY: getuid has no preconditions.
    let owner = unsafe { libc::getuid() };
    let (ready_tx, ready) = std::sync::mpsc::channel();
    let thread = std::thread::Builder::new()
        .name("control".into())
        .spawn(move || {
            let r =
                seccomp_policies::install(seccomp_policies::ThreadKind::Control, served.seccomp);
            let ok = r.is_ok();
            let _ = ready_tx.send(r);
            if ok {
                accept_loop(&listener, &served, owner, &d);
            }
        })
        .map_err(io(path))?;
    let server = ControlServer {
        path: path.to_path_buf(),
        done,
        thread: Some(thread),
    };
    match ready.recv() {
        Ok(Ok(())) => Ok(server),
        Ok(Err(e)) => Err(e.into()),
        Err(_) => Err(ControlError::Protocol("the control thread ended".into())),
    }
}

fn accept_loop(listener: &UnixListener, served: &Served, owner: u32, done: &AtomicBool) {
    while !done.load(Ordering::SeqCst) {
        if !devices::wait_readable(listener, Some(Duration::from_millis(200))) {
            continue;
        }
        let Ok((conn, _)) = listener.accept() else {
            continue;
        };
        handle(conn, served, owner);
    }
}

/// Reads one line of at most `max` bytes before `deadline`.
fn read_line(s: &mut UnixStream, deadline: Instant, max: usize) -> Result<String, String> {
    let mut buf = Vec::new();
    let mut chunk = [0u8; 4096];
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        if left.is_zero() || !devices::wait_readable(&*s, Some(left)) {
            return Err("no request in time".into());
        }
        let n = match s.read(&mut chunk) {
            Ok(0) => return Err("the line ended early".into()),
            Ok(n) => n,
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
            Err(e) => return Err(e.to_string()),
        };
        buf.extend_from_slice(&chunk[..n]);
        if let Some(end) = buf.iter().position(|&b| b == b'\n') {
            buf.truncate(end);
            return String::from_utf8(buf).map_err(|_| "not UTF-8".into());
        }
        if buf.len() > max {
            return Err(format!("line longer than {max} bytes"));
        }
    }
}

/// What a request asks for.
#[derive(Debug, PartialEq, Eq)]
enum Op {
    Status,
    Stop { force: bool },
    Net { on: bool },
    Audio { mode: String },
}

fn parse_request(line: &str) -> Result<Op, String> {
    let v: serde_json::Value = serde_json::from_str(line).map_err(|e| format!("not JSON: {e}"))?;
    let obj = v.as_object().ok_or("not a JSON object")?;
    match obj.get("version").and_then(serde_json::Value::as_u64) {
        Some(v) if v == u64::from(VERSION) => {}
        Some(v) => return Err(format!("protocol version {v}; this VM speaks {VERSION}")),
        None => return Err("no \"version\"".into()),
    }
    let op = obj.get("op").and_then(serde_json::Value::as_str);
    let allowed: &[&str] = match op {
        Some("status") => &["version", "op"],
        Some("stop") => &["version", "op", "force"],
        Some("net") => &["version", "op", "on"],
        Some("audio") => &["version", "op", "mode"],
        Some(other) => return Err(format!("unknown op {other:?}")),
        None => return Err("no \"op\"".into()),
    };
    if let Some(k) = obj.keys().find(|k| !allowed.contains(&k.as_str())) {
        return Err(format!("unknown key {k:?}"));
    }
    match op {
        Some("stop") => match obj.get("force") {
            None => Ok(Op::Stop { force: false }),
            Some(serde_json::Value::Bool(force)) => Ok(Op::Stop { force: *force }),
            Some(_) => Err("\"force\" must be true or false".into()),
        },
        Some("net") => match obj.get("on") {
            Some(serde_json::Value::Bool(on)) => Ok(Op::Net { on: *on }),
            _ => Err("\"on\" must be true or false".into()),
        },
        Some("audio") => match obj.get("mode").and_then(serde_json::Value::as_str) {
            Some(m @ ("off" | "playback" | "full")) => Ok(Op::Audio { mode: m.into() }),
            _ => Err("\"mode\" must be \"off\", \"playback\" or \"full\"".into()),
        },
        _ => Ok(Op::Status),
    }
}

fn reply_json(served: &Served, op: Result<Op, String>) -> serde_json::Value {
    let fail = |e: String| serde_json::json!({"version": VERSION, "ok": false, "error": e});
    match op {
        Ok(Op::Status) => {
            let mut status = served.status.clone();
            status.uptime_s = served.started.elapsed().as_secs();
            status.network = served.net.as_ref().and_then(|n| n(None).ok());
            status.audio = served.audio.as_ref().and_then(|a| a(None).ok());
            serde_json::json!({"version": VERSION, "ok": true, "status": status})
        }
        Ok(Op::Stop { force }) => {
            (served.stop)(force);
            serde_json::json!({"version": VERSION, "ok": true})
        }
        Ok(Op::Net { on }) => match served.net.as_ref().map(|n| n(Some(on))) {
            Some(Ok(_)) => serde_json::json!({"version": VERSION, "ok": true}),
            Some(Err(e)) => fail(e),
            None => fail("this VM has no network (launch it with --net)".into()),
        },
        Ok(Op::Audio { mode }) => match served.audio.as_ref().map(|a| a(Some(&mode))) {
            Some(Ok(_)) => serde_json::json!({"version": VERSION, "ok": true}),
            Some(Err(e)) => fail(e),
            None => {
                fail("this VM has no audio proxy (not the default guest, or --vsock given)".into())
            }
        },
        Err(e) => fail(e),
    }
}

/// Answers one client (a peer other than `owner` gets an error).
fn handle(mut conn: UnixStream, served: &Served, owner: u32) {
    let op = if vmm::agent::peer_uid(&conn) != Some(owner) {
        Err("only the VM's owner may use its control socket".to_string())
    } else {
        read_line(&mut conn, Instant::now() + REQUEST_TIMEOUT, MAX_LINE)
            .and_then(|l| parse_request(&l))
    };
    let mut out = reply_json(served, op).to_string();
    out.push('\n');
    // A fresh socket's buffer holds a short reply: this does not block.
    let _ = conn.write_all(out.as_bytes());
}

/// Sends one request line to the control socket at `path`; returns the
/// reply's fields (an error for `"ok": false`). A socket another user
/// serves is refused before the request is sent.
pub fn request(path: &Path, req: &serde_json::Value) -> Result<serde_json::Value, ControlError> {
    let mut s = UnixStream::connect(path).map_err(io(path))?;
    // SAFETY: getuid has no preconditions.
    let me = unsafe { libc::getuid() };
    match vmm::agent::peer_uid(&s) {
        Some(u) if u == me => {}
        other => {
            return Err(ControlError::NotOurs {
                path: path.to_path_buf(),
                uid: other.unwrap_or(u32::MAX),
            })
        }
    }
    let mut line = req.to_string();
    line.push('\n');
    s.write_all(line.as_bytes()).map_err(io(path))?;
    let reply = read_line(&mut s, Instant::now() + REPLY_TIMEOUT, MAX_REPLY)
        .map_err(ControlError::Protocol)?;
    let v: serde_json::Value =
        serde_json::from_str(&reply).map_err(|e| ControlError::Protocol(e.to_string()))?;
    match v.get("ok") {
        Some(serde_json::Value::Bool(true)) => Ok(v),
        _ => Err(ControlError::Refused(
            v.get("error")
                .and_then(serde_json::Value::as_str)
                .unwrap_or("malformed reply")
                .to_string(),
        )),
    }
}

/// The status of the VM whose control socket is `path`.
pub fn status(path: &Path) -> Result<Status, ControlError> {
    let v = request(
        path,
        &serde_json::json!({"version": VERSION, "op": "status"}),
    )?;
    serde_json::from_value(v.get("status").cloned().unwrap_or_default())
        .map_err(|e| ControlError::Protocol(e.to_string()))
}

/// Asks the VM whose control socket is `path` to shut down (`force`: to
/// stop at once).
pub fn stop(path: &Path, force: bool) -> Result<(), ControlError> {
    request(
        path,
        &serde_json::json!({"version": VERSION, "op": "stop", "force": force}),
    )
    .map(|_| ())
}

/// Sets the audio mode (`off`, `playback`, `full`) of the VM whose control
/// socket is `path`.
pub fn set_audio(path: &Path, mode: &str) -> Result<(), ControlError> {
    request(
        path,
        &serde_json::json!({"version": VERSION, "op": "audio", "mode": mode}),
    )
    .map(|_| ())
}

/// Turns the network of the VM whose control socket is `path` on or off.
pub fn set_network(path: &Path, on: bool) -> Result<(), ControlError> {
    request(
        path,
        &serde_json::json!({"version": VERSION, "op": "net", "on": on}),
    )
    .map(|_| ())
}

#[cfg(test)]
mod tests;

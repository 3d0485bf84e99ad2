//! vmapp's side of the guest agent protocol (`sommelier_guest::proto`): the
//! agent in the default guest connects to CID 2 port
//! [`AGENT_PORT`](sommelier_guest::proto::AGENT_PORT), which the vsock device
//! maps to the Unix socket `{vsock path}_1024` this module listens on.
//! Further commands in a running VM ([`exec`]) go the other way: the host
//! connects to the vsock device's socket, asks for the guest's
//! [`EXEC_PORT`], and speaks the same protocol on that stream.

use std::io::{Read, Write};
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use sommelier_guest::proto::{self, ty, ProtoError};
pub use sommelier_guest::proto::{Exit, Run, AGENT_PORT, EXEC_PORT};

/// Errors talking to the agent.
#[derive(Debug, thiserror::Error)]
pub enum AgentError {
    /// The agent socket cannot be created.
    #[error("cannot listen for the guest agent on {0}: {1}")]
    Listen(PathBuf, std::io::Error),
    /// The stream or the protocol failed.
    #[error(transparent)]
    Proto(#[from] ProtoError),
    /// The agent could not start the command.
    #[error("in the guest: {0}")]
    Start(String),
    /// The agent thread's seccomp filter could not be installed.
    #[error(transparent)]
    Seccomp(#[from] seccomp_policies::SeccompError),
    /// The VM's vsock socket cannot be reached.
    #[error("cannot reach the VM at {0}: {1}")]
    Connect(PathBuf, std::io::Error),
    /// Nothing in the guest accepts commands on the port.
    #[error("the guest does not accept commands on vsock port {0} (it accepts them once booted, in the default guest of a VM with a runtime directory)")]
    NoExec(u32),
    /// The VM has no vsock device to run commands through.
    #[error("the VM has no vsock device")]
    NoVsock,
    /// The VM stopped before the command ended.
    #[error("the VM stopped before the command ended")]
    Stopped,
    /// The socket is served by another user than the caller.
    #[error("{}: served by uid {uid}, not by this user: refused", path.display())]
    NotOurs {
        /// The socket.
        path: PathBuf,
        /// Who serves it.
        uid: u32,
    },
    /// The agent spoke another protocol version.
    #[error("the guest agent speaks protocol version {0}, vmapp speaks {v}", v = proto::VERSION)]
    Version(u32),
}

/// The path the agent's connections arrive on for a vsock device at `uds`.
pub fn agent_socket_path(uds: &Path) -> PathBuf {
    let mut p = uds.as_os_str().to_owned();
    p.push(format!("_{AGENT_PORT}"));
    PathBuf::from(p)
}

/// A listening agent endpoint. It takes one connection, the agent's, and
/// then stops listening: nothing else in the guest can open streams that
/// vmapp would never read.
pub struct AgentHost {
    listener: Option<UnixListener>,
    path: PathBuf,
}

impl Drop for AgentHost {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.path);
    }
}

impl AgentHost {
    /// Listens on `{uds}_1024` (before the VM boots).
    pub fn listen(uds: &Path) -> Result<Self, AgentError> {
        let path = agent_socket_path(uds);
        let _ = std::fs::remove_file(&path);
        let listener =
            UnixListener::bind(&path).map_err(|e| AgentError::Listen(path.clone(), e))?;
        Ok(Self {
            listener: Some(listener),
            path,
        })
    }

    /// Takes the agent's connection (`None` once `vm_done` is set), then
    /// stops listening: later connections to its port are refused (the
    /// guest gets a reset), and none waits in a backlog.
    fn accept_agent(&mut self, vm_done: &AtomicBool) -> Option<UnixStream> {
        let listener = self.listener.take()?;
        let stream = loop {
            if vm_done.load(Ordering::SeqCst) {
                return None;
            }
            if devices::wait_readable(&listener, Some(Duration::from_millis(100))) {
                if let Ok((s, _)) = listener.accept() {
                    break s;
                }
            }
        };
        drop(listener);
        let _ = std::fs::remove_file(&self.path);
        Some(stream)
    }

    /// Waits for the agent (giving up once `vm_done` is set), sends `run`,
    /// forwards `stdin` and the command's output, and returns how the command
    /// ended — `None` if the VM stopped first.
    pub fn serve(
        mut self,
        run: &Run,
        vm_done: &AtomicBool,
        stdin: Option<Box<dyn Read + Send>>,
        mut stdout: impl Write,
        mut stderr: impl Write,
    ) -> Result<Option<Exit>, AgentError> {
        match self.accept_agent(vm_done) {
            Some(stream) => session(stream, run, stdin, &mut stdout, &mut stderr),
            None => Ok(None),
        }
    }
}

/// Runs a further command in a running VM: connects to its vsock device's
/// socket `uds`, asks for the guest's `port` (the default guest's agent
/// listens on [`EXEC_PORT`] when started with `vmapp.exec=PORT`), and runs
/// `run` there as [`AgentHost::serve`] does, with its own stdio. Returns
/// how the command ended. A socket served by another user than the
/// caller's is refused ([`AgentError::NotOurs`]) before anything is sent.
pub fn exec(
    uds: &Path,
    port: u32,
    run: &Run,
    stdin: Option<Box<dyn Read + Send>>,
    mut stdout: impl Write,
    mut stderr: impl Write,
) -> Result<Exit, AgentError> {
    let mut s = UnixStream::connect(uds).map_err(|e| AgentError::Connect(uds.into(), e))?;
    match peer_uid(&s) {
        Some(u) if u == current_uid() => {}
        other => {
            return Err(AgentError::NotOurs {
                path: uds.into(),
                uid: other.unwrap_or(u32::MAX),
            })
        }
    }
    match connect_port(&mut s, port) {
        Ok(true) => {}
        Ok(false) => return Err(AgentError::NoExec(port)),
        Err(e) => return Err(AgentError::Connect(uds.into(), e)),
    }
    session(s, run, stdin, &mut stdout, &mut stderr)?.ok_or(AgentError::Stopped)
}

pub use devices::peer_uid;

fn current_uid() -> u32 {
    // SAFETY: getuid has no preconditions.
    unsafe { libc::getuid() }
}

/// [`exec`] without stdin, tried again every half second while nothing
/// listens on the guest's `port` yet (the guest may still be booting), for
/// at most `within`; then [`AgentError::NoExec`]. Any other error ends it.
pub fn exec_when_ready(
    uds: &Path,
    port: u32,
    run: &Run,
    within: Duration,
    mut stdout: impl Write,
    mut stderr: impl Write,
) -> Result<Exit, AgentError> {
    let start = std::time::Instant::now();
    loop {
        match exec(uds, port, run, None, &mut stdout, &mut stderr) {
            Err(AgentError::NoExec(_)) if start.elapsed() < within => {
                let left = within.saturating_sub(start.elapsed());
                std::thread::sleep(left.min(Duration::from_millis(500)));
            }
            r => return r,
        }
    }
}

/// The vsock device's host-side handshake: `CONNECT <port>\n`, answered
/// with `OK <host port>\n` once the guest accepts (read a byte at a time:
/// what follows is the guest's), or the stream closed if nothing listens.
fn connect_port(s: &mut UnixStream, port: u32) -> std::io::Result<bool> {
    s.set_read_timeout(Some(Duration::from_secs(30)))?;
    s.write_all(format!("CONNECT {port}\n").as_bytes())?;
    let mut line = Vec::new();
    let mut b = [0u8; 1];
    while line.len() < 32 {
        if s.read(&mut b)? == 0 {
            return Ok(false);
        }
        if b[0] == b'\n' {
            break;
        }
        line.push(b[0]);
    }
    s.set_read_timeout(None)?;
    Ok(line.starts_with(b"OK "))
}

/// One command on an agent stream: checks the agent's HELLO, sends `run`,
/// forwards `stdin` and the command's output, and returns how the command
/// ended — `None` if the stream ended first.
fn session(
    stream: UnixStream,
    run: &Run,
    stdin: Option<Box<dyn Read + Send>>,
    stdout: &mut impl Write,
    stderr: &mut impl Write,
) -> Result<Option<Exit>, AgentError> {
    let mut r = stream.try_clone().map_err(ProtoError::from)?;
    match proto::read_frame(&mut r)? {
        Some((ty::HELLO, v)) if v.len() == 4 => {
            let v = u32::from_le_bytes([v[0], v[1], v[2], v[3]]);
            if v != proto::VERSION {
                return Err(AgentError::Version(v));
            }
        }
        Some(_) => return Err(ProtoError::Malformed("expected HELLO").into()),
        None => return Ok(None),
    }
    let w = Arc::new(Mutex::new(stream));
    proto::write_frame(&mut *lock(&w), ty::RUN, &run.encode())?;
    if let Some(mut input) = stdin {
        let w = w.clone();
        std::thread::Builder::new()
            .name("agent-stdin".into())
            .spawn(move || {
                // On the stack: nothing for malloc to trim (see vmapp's main).
                let mut buf = [0u8; 32 * 1024];
                loop {
                    let n = match input.read(&mut buf) {
                        Ok(n) => n,
                        Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
                        Err(_) => 0,
                    };
                    let (t, p) = if n == 0 {
                        (ty::STDIN_EOF, &buf[..0])
                    } else {
                        (ty::STDIN, &buf[..n])
                    };
                    if proto::write_frame(&mut *lock(&w), t, p).is_err() || n == 0 {
                        return;
                    }
                }
            })
            .map_err(ProtoError::from)?;
    } else {
        proto::write_frame(&mut *lock(&w), ty::STDIN_EOF, &[])?;
    }
    let mut start_error = None;
    while let Some((t, p)) = proto::read_frame(&mut r)? {
        match t {
            ty::STDOUT => {
                stdout.write_all(&p).map_err(ProtoError::from)?;
                stdout.flush().map_err(ProtoError::from)?;
            }
            ty::STDERR => {
                stderr.write_all(&p).map_err(ProtoError::from)?;
                stderr.flush().map_err(ProtoError::from)?;
            }
            ty::ERROR => start_error = Some(String::from_utf8_lossy(&p).into_owned()),
            ty::EXIT => {
                // Closing our end tells the agent everything arrived.
                let _ = lock(&w).shutdown(std::net::Shutdown::Both);
                return Ok(Some(Exit::decode(&p)?));
            }
            _ => return Err(ProtoError::Malformed("unexpected frame from the agent").into()),
        }
    }
    // The agent waits for our end to close before the guest goes on (a
    // command that could not start: the stdin thread may still hold it).
    let _ = lock(&w).shutdown(std::net::Shutdown::Both);
    match start_error {
        Some(e) => Err(AgentError::Start(e)),
        None => Ok(None),
    }
}

fn lock(w: &Mutex<UnixStream>) -> std::sync::MutexGuard<'_, UnixStream> {
    w.lock().unwrap_or_else(|p| p.into_inner())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Review finding 3 (issue 19): the agent's listener stayed open, never
    /// accepting again, for the whole run; a guest could connect to port
    /// 1024 a thousand times and pin a stream buffer for each. Once the
    /// agent is there, nothing else can connect.
    #[test]
    fn only_one_agent_connection_is_ever_taken() {
        let dir = tempfile::tempdir().unwrap();
        let uds = dir.path().join("v.sock");
        let host = AgentHost::listen(&uds).unwrap();
        let path = agent_socket_path(&uds);
        let done = AtomicBool::new(false);
        let (second_tx, second_rx) = std::sync::mpsc::channel();
        let agent = std::thread::spawn(move || {
            let mut s = UnixStream::connect(&path).unwrap();
            proto::write_frame(&mut s, ty::HELLO, &proto::VERSION.to_le_bytes()).unwrap();
            // RUN and STDIN_EOF arrive: the host has accepted us.
            assert_eq!(proto::read_frame(&mut s).unwrap().unwrap().0, ty::RUN);
            assert_eq!(proto::read_frame(&mut s).unwrap().unwrap().0, ty::STDIN_EOF);
            second_tx.send(UnixStream::connect(&path).is_ok()).unwrap();
            proto::write_frame(&mut s, ty::EXIT, &Exit::Code(3).encode()).unwrap();
        });
        let run = Run {
            argv: vec!["true".into()],
            env: vec![],
            cwd: String::new(),
            keep_running: false,
        };
        let exit = host
            .serve(&run, &done, None, std::io::sink(), std::io::sink())
            .unwrap();
        agent.join().unwrap();
        assert_eq!(exit, Some(Exit::Code(3)));
        assert!(!second_rx.recv().unwrap(), "a second connection was taken");
    }

    /// CI of 7fc4bd2..5a60415: a command that could not start lost its error
    /// message now and then (the agent went on to power off while the
    /// message was still in the guest's vsock queue). The agent now waits
    /// for the host to close its end; the host must close it even while
    /// its stdin thread still holds the stream (stdin that never ends).
    #[test]
    fn a_command_that_cannot_start_gets_its_stream_closed_by_the_host() {
        let dir = tempfile::tempdir().unwrap();
        let uds = dir.path().join("v.sock");
        let host = AgentHost::listen(&uds).unwrap();
        let path = agent_socket_path(&uds);
        let done = AtomicBool::new(false);
        let agent = std::thread::spawn(move || {
            let mut s = UnixStream::connect(&path).unwrap();
            proto::write_frame(&mut s, ty::HELLO, &proto::VERSION.to_le_bytes()).unwrap();
            assert_eq!(proto::read_frame(&mut s).unwrap().unwrap().0, ty::RUN);
            proto::write_frame(&mut s, ty::ERROR, b"cannot run \"nope\"").unwrap();
            s.shutdown(std::net::Shutdown::Write).unwrap();
            s.set_read_timeout(Some(std::time::Duration::from_secs(10)))
                .unwrap();
            // Whatever comes (STDIN frames), then the end, not the timeout.
            loop {
                match proto::read_frame(&mut s) {
                    Ok(Some(_)) => continue,
                    Ok(None) => return true,
                    Err(_) => return false,
                }
            }
        });
        let run = Run {
            argv: vec!["nope".into()],
            env: vec![],
            cwd: String::new(),
            keep_running: false,
        };
        // stdin that never ends while the test runs.
        let (stdin_r, _stdin_w) = UnixStream::pair().unwrap();
        let r = host.serve(
            &run,
            &done,
            Some(Box::new(stdin_r)),
            std::io::sink(),
            std::io::sink(),
        );
        assert!(
            matches!(r, Err(AgentError::Start(ref m)) if m.contains("nope")),
            "{r:?}"
        );
        assert!(agent.join().unwrap(), "the host never closed the stream");
    }

    /// A stand-in for the vsock device's socket: answers one `CONNECT`
    /// with `reply` (closing when it is empty), then runs `agent` on the
    /// stream.
    fn device(
        dir: &Path,
        reply: &'static str,
        agent: impl FnOnce(UnixStream) + Send + 'static,
    ) -> (PathBuf, std::thread::JoinHandle<String>) {
        let uds = dir.join("v.sock");
        let l = UnixListener::bind(&uds).unwrap();
        let t = std::thread::spawn(move || {
            let (mut s, _) = l.accept().unwrap();
            let mut line = Vec::new();
            let mut b = [0u8; 1];
            while s.read(&mut b).unwrap() == 1 && b[0] != b'\n' {
                line.push(b[0]);
            }
            if !reply.is_empty() {
                s.write_all(reply.as_bytes()).unwrap();
                agent(s);
            }
            String::from_utf8(line).unwrap()
        });
        (uds, t)
    }

    #[test]
    fn exec_asks_for_the_port_and_returns_the_commands_output_and_status() {
        let dir = tempfile::tempdir().unwrap();
        let (uds, dev) = device(dir.path(), "OK 77\n", |mut s| {
            proto::write_frame(&mut s, ty::HELLO, &proto::VERSION.to_le_bytes()).unwrap();
            let (t, p) = proto::read_frame(&mut s).unwrap().unwrap();
            assert_eq!(t, ty::RUN);
            assert_eq!(Run::decode(&p).unwrap().argv, ["echo", "x"]);
            assert_eq!(proto::read_frame(&mut s).unwrap().unwrap().0, ty::STDIN_EOF);
            proto::write_frame(&mut s, ty::STDOUT, b"out").unwrap();
            proto::write_frame(&mut s, ty::STDERR, b"err").unwrap();
            proto::write_frame(&mut s, ty::EXIT, &Exit::Code(4).encode()).unwrap();
        });
        let run = Run {
            argv: vec!["echo".into(), "x".into()],
            env: vec![],
            cwd: String::new(),
            keep_running: false,
        };
        let (mut out, mut err) = (Vec::new(), Vec::new());
        let exit = exec(&uds, EXEC_PORT, &run, None, &mut out, &mut err).unwrap();
        assert_eq!(exit, Exit::Code(4));
        assert_eq!((&out[..], &err[..]), (&b"out"[..], &b"err"[..]));
        assert_eq!(dev.join().unwrap(), format!("CONNECT {EXEC_PORT}"));
    }

    /// A stand-in device that refuses `refusals` CONNECTs (the guest's agent
    /// not up yet), then answers and runs a command that exits 5.
    fn late_agent(dir: &Path, refusals: usize) -> (PathBuf, std::thread::JoinHandle<usize>) {
        let uds = dir.join("late.sock");
        let l = UnixListener::bind(&uds).unwrap();
        let t = std::thread::spawn(move || {
            for n in 0.. {
                let (mut s, _) = l.accept().unwrap();
                let mut b = [0u8; 1];
                while s.read(&mut b).unwrap() == 1 && b[0] != b'\n' {}
                if n < refusals {
                    continue;
                }
                s.write_all(b"OK 77\n").unwrap();
                proto::write_frame(&mut s, ty::HELLO, &proto::VERSION.to_le_bytes()).unwrap();
                while let Ok(Some((t, _))) = proto::read_frame(&mut s) {
                    if t == ty::STDIN_EOF {
                        break;
                    }
                }
                proto::write_frame(&mut s, ty::EXIT, &Exit::Code(5).encode()).unwrap();
                return n + 1;
            }
            unreachable!()
        });
        (uds, t)
    }

    #[test]
    fn exec_when_ready_waits_for_a_late_agent_and_gives_up_in_time() {
        let dir = tempfile::tempdir().unwrap();
        let run = Run {
            argv: vec!["true".into()],
            env: vec![],
            cwd: String::new(),
            keep_running: false,
        };
        let (uds, dev) = late_agent(dir.path(), 2);
        let (out, err) = (std::io::sink(), std::io::sink());
        let exit = exec_when_ready(&uds, 9, &run, Duration::from_secs(30), out, err).unwrap();
        assert_eq!(exit, Exit::Code(5));
        assert_eq!(dev.join().unwrap(), 3, "two refusals, then the agent");
        // An agent that never comes: NoExec once `within` has passed.
        let never = dir.path().join("never");
        std::fs::create_dir(&never).unwrap();
        let (uds, _dev) = late_agent(&never, usize::MAX);
        let t = std::time::Instant::now();
        let within = Duration::from_millis(1200);
        let e = exec_when_ready(&uds, 9, &run, within, std::io::sink(), std::io::sink());
        assert!(matches!(e, Err(AgentError::NoExec(9))), "{e:?}");
        assert!(
            t.elapsed() >= within && t.elapsed() < within * 3,
            "{:?}",
            t.elapsed()
        );
    }

    #[test]
    fn exec_where_nothing_listens_in_the_guest_says_so() {
        let dir = tempfile::tempdir().unwrap();
        let (uds, dev) = device(dir.path(), "", |_| {});
        let run = Run {
            argv: vec!["true".into()],
            env: vec![],
            cwd: String::new(),
            keep_running: false,
        };
        let e = exec(&uds, 9, &run, None, std::io::sink(), std::io::sink()).unwrap_err();
        assert!(matches!(e, AgentError::NoExec(9)), "{e}");
        dev.join().unwrap();
        let e = exec(
            &dir.path().join("none"),
            9,
            &run,
            None,
            std::io::sink(),
            std::io::sink(),
        )
        .unwrap_err();
        assert!(matches!(e, AgentError::Connect(..)), "{e}");
    }
}

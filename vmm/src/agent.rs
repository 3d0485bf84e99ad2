//! vmapp's side of the guest agent protocol (`sommelier_guest::proto`): the
//! agent in the default guest connects to CID 2 port
//! [`AGENT_PORT`](sommelier_guest::proto::AGENT_PORT), which the vsock device
//! maps to the Unix socket `{vsock path}_1024` this module listens on.

use std::io::{Read, Write};
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use sommelier_guest::proto::{self, ty, ProtoError};
pub use sommelier_guest::proto::{Exit, Run, AGENT_PORT};

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
        let Some(stream) = self.accept_agent(vm_done) else {
            return Ok(None);
        };
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
        match start_error {
            Some(e) => Err(AgentError::Start(e)),
            None => Ok(None),
        }
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
}

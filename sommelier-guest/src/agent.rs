//! The guest agent: connects to vmapp over vsock, runs the command it is sent
//! and streams its stdin/stdout/stderr and exit status (protocol in
//! `sommelier_guest::proto`). With an exec port it also accepts the host's
//! streams for further commands in the running VM ([`listen_sessions`]),
//! one thread each, with the same protocol.

use std::io::{Read, Write};
use std::os::unix::process::{CommandExt, ExitStatusExt};
use std::process::{Command, Stdio};
use std::sync::{Arc, Mutex};

use sommelier_guest::proto::{self, ty, Exit, Run};

/// The outcome: the command's status and whether to keep the VM running.
pub struct Outcome {
    /// Shell-style exit status.
    pub status: u8,
    /// vmapp asked to keep the VM running.
    pub keep_running: bool,
}

fn send(w: &Mutex<std::fs::File>, t: u8, payload: &[u8]) -> Result<(), proto::ProtoError> {
    let mut g = w.lock().unwrap_or_else(|p| p.into_inner());
    proto::write_frame(&mut *g, t, payload)
}

/// Reads vmapp's frames on a thread of their own, each to `frame`, until
/// vmapp closes the stream: the receiver's sender is gone then.
fn until_closed(
    mut r: std::fs::File,
    mut frame: impl FnMut(u8, Vec<u8>) + Send + 'static,
) -> std::sync::mpsc::Receiver<()> {
    let (closed_tx, closed) = std::sync::mpsc::channel::<()>();
    std::thread::spawn(move || {
        let _closed = closed_tx;
        while let Ok(Some((t, p))) = proto::read_frame(&mut r) {
            frame(t, p);
        }
    });
    closed
}

/// Pumps `from` into frames of type `t`.
fn pump(mut from: impl Read, w: Arc<Mutex<std::fs::File>>, t: u8) {
    let mut buf = vec![0u8; 32 * 1024];
    loop {
        match from.read(&mut buf) {
            Ok(0) => return,
            Ok(n) => {
                if send(&w, t, &buf[..n]).is_err() {
                    return;
                }
            }
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
            Err(_) => return,
        }
    }
}

/// The command `run` asks for, with piped stdio, in its own process group
/// (which the power button stops as a whole).
fn command(run: &Run, base_env: &[(String, String)]) -> Command {
    let mut cmd = Command::new(&run.argv[0]);
    cmd.args(&run.argv[1..]).env_clear();
    for (k, v) in base_env {
        cmd.env(k, v);
    }
    for kv in &run.env {
        if let Some((k, v)) = kv.split_once('=') {
            cmd.env(k, v);
        }
    }
    cmd.current_dir(if run.cwd.is_empty() { "/" } else { &run.cwd })
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .process_group(0);
    cmd
}

/// Which command a stream runs: the VM's own, whose end powers the VM off,
/// or a further one.
#[derive(Clone, Copy, PartialEq, Eq)]
pub enum Role {
    /// The VM's command (the power button's application).
    Main,
    /// A further command (`vmapp exec`).
    Session,
}

fn track(role: Role, pid: i32) {
    match role {
        Role::Main => crate::power::set_app(pid),
        Role::Session => crate::power::add_session(pid),
    }
}

fn untrack(role: Role, pid: i32) {
    match role {
        Role::Main => crate::power::set_app(0),
        Role::Session => crate::power::remove_session(pid),
    }
}

/// Accepts the host's streams on vsock `port` and runs each one's command
/// on a thread of its own, until the VM ends.
pub fn listen_sessions(port: u32, base_env: Vec<(String, String)>) {
    let listener = match sommelier_guest::vsock_socket::listen(port) {
        Ok(l) => l,
        Err(e) => {
            crate::log(&format!("agent: cannot listen on vsock port {port}: {e}"));
            return;
        }
    };
    let base_env = Arc::new(base_env);
    std::thread::spawn(move || loop {
        match sommelier_guest::vsock_socket::accept(&listener) {
            Ok(s) => {
                let env = base_env.clone();
                std::thread::spawn(move || {
                    if let Err(e) = serve(s, &env, Role::Session) {
                        crate::log(&format!("agent: session: {e}"));
                    }
                });
            }
            Err(e) => {
                crate::log(&format!("agent: accept: {e}"));
                std::thread::sleep(std::time::Duration::from_secs(1));
            }
        }
    });
}

/// The command could not start: says why, ends the stream (which tells
/// vmapp) and waits, 10 s at most, until vmapp has closed its end: powering
/// off before that could leave the message in the guest's vsock queue.
fn start_failed(
    w: &Mutex<std::fs::File>,
    r: std::fs::File,
    run: &Run,
    e: &std::io::Error,
) -> Result<Outcome, proto::ProtoError> {
    let msg = format!("cannot run {:?}: {e}", run.argv[0]);
    send(w, ty::ERROR, msg.as_bytes())?;
    {
        let g = w.lock().unwrap_or_else(|p| p.into_inner());
        // SAFETY: shutdown(2) on a socket we own; no memory is passed.
        unsafe { libc::shutdown(std::os::fd::AsRawFd::as_raw_fd(&*g), libc::SHUT_WR) };
    }
    let closed = until_closed(r, |_, _| {});
    let _ = closed.recv_timeout(std::time::Duration::from_secs(10));
    Ok(Outcome {
        status: if e.kind() == std::io::ErrorKind::NotFound {
            127
        } else {
            126
        },
        keep_running: run.keep_running,
    })
}

/// Runs the agent on `sock` (connected to vmapp).
pub fn serve(
    sock: std::fs::File,
    base_env: &[(String, String)],
    role: Role,
) -> Result<Outcome, proto::ProtoError> {
    let mut r = sock.try_clone()?;
    let w = Arc::new(Mutex::new(sock));
    send(&w, ty::HELLO, &proto::VERSION.to_le_bytes())?;
    let run = loop {
        match proto::read_frame(&mut r)? {
            Some((ty::RUN, p)) => break Run::decode(&p)?,
            Some(_) => continue,
            None => return Err(proto::ProtoError::Malformed("vmapp closed before RUN")),
        }
    };
    let mut cmd = command(&run, base_env);
    let mut child = match cmd.spawn() {
        Ok(c) => c,
        Err(e) => return start_failed(&w, r, &run, &e),
    };
    let out = child.stdout.take().map(|o| {
        let w = w.clone();
        std::thread::spawn(move || pump(o, w, ty::STDOUT))
    });
    let err = child.stderr.take().map(|e| {
        let w = w.clone();
        std::thread::spawn(move || pump(e, w, ty::STDERR))
    });
    let mut stdin = child.stdin.take();
    // Host → command stdin; ends at STDIN_EOF or when vmapp goes away.
    let closed = until_closed(r, move |t, p| match t {
        ty::STDIN => {
            if let Some(s) = stdin.as_mut() {
                if s.write_all(&p).is_err() {
                    stdin = None;
                }
            }
        }
        ty::STDIN_EOF => stdin = None,
        _ => {}
    });
    let pid = child.id() as i32;
    track(role, pid);
    let st = child.wait();
    untrack(role, pid);
    let st = st?;
    for t in [out, err].into_iter().flatten() {
        let _ = t.join();
    }
    let exit = match (st.code(), st.signal()) {
        (Some(c), _) => Exit::Code(c as u8),
        (None, Some(s)) => Exit::Signal(s as u8),
        _ => Exit::Code(255),
    };
    send(&w, ty::EXIT, &exit.encode())?;
    // vmapp closes the stream once it has everything; powering off before
    // that could leave our last bytes in the guest's vsock queue.
    let _ = closed.recv_timeout(std::time::Duration::from_secs(10));
    Ok(Outcome {
        status: exit.status(),
        keep_running: run.keep_running,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::net::UnixStream;

    /// CI of 7fc4bd2..5a60415: `vmapp launch -- no-such-program` lost the
    /// agent's error now and then: the agent returned at once and the guest
    /// powered off with the message still in its vsock queue. It now ends
    /// its stream after the error and waits for vmapp to close the other end.
    #[test]
    fn a_command_that_cannot_start_ends_the_stream_and_waits_for_vmapp() {
        let (guest, mut host) = UnixStream::pair().unwrap();
        let vmapp = std::thread::spawn(move || {
            assert_eq!(proto::read_frame(&mut host).unwrap().unwrap().0, ty::HELLO);
            let run = Run {
                argv: vec!["/nonexistent/program".into()],
                env: vec![],
                cwd: String::new(),
                keep_running: false,
            };
            proto::write_frame(&mut host, ty::RUN, &run.encode()).unwrap();
            let (t, p) = proto::read_frame(&mut host).unwrap().unwrap();
            assert_eq!(t, ty::ERROR);
            assert!(String::from_utf8_lossy(&p).contains("/nonexistent/program"));
            // Then the end of the agent's stream.
            assert!(proto::read_frame(&mut host).unwrap().is_none());
            std::thread::sleep(std::time::Duration::from_millis(300));
            std::time::Instant::now()
        });
        let sock = std::fs::File::from(std::os::fd::OwnedFd::from(guest));
        let out = serve(sock, &[], Role::Session).unwrap();
        let returned = std::time::Instant::now();
        let closed = vmapp.join().unwrap();
        assert_eq!(out.status, 127);
        assert!(
            returned >= closed,
            "the agent went on before vmapp closed the stream"
        );
    }
}

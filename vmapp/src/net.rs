//! A jailed VM's network switch. The jail gives vmapp's VM process a
//! network namespace of its own, so passt, which needs the host's, cannot be
//! started from there: before entering the jail vmapp starts a small helper
//! (`vmapp __net-helper`, in the host's namespaces) that owns the VM's
//! [`vmm::net::Network`], and keeps one end of a socket pair to it. Each
//! request is one byte (`1` on, `0` off, `?` ask); each answer one line
//! (`on`, `off`, or `error: …`). When vmapp's end closes, the helper stops
//! passt and exits. A VM without the jail uses [`vmm::VmBuilder::network`]
//! instead.

use std::io::{Read, Write};
use std::os::fd::{AsRawFd, FromRawFd};
use std::os::unix::net::UnixStream;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitCode, Stdio};
use std::time::Duration;

use vmm::net::{NetConfig, Network, Publish};

/// The helper's first argument.
pub const HELPER_ARG: &str = "__net-helper";
/// The fd the helper finds its end of the socket pair at.
const HELPER_FD: i32 = 3;
/// How long a request may take (starting passt included).
const ANSWER_TIMEOUT: Duration = Duration::from_secs(20);

/// Errors of the helper and its switch.
#[derive(Debug, thiserror::Error)]
pub enum NetHelperError {
    /// The helper could not be started or reached.
    #[error("network helper: {0}")]
    Io(#[from] std::io::Error),
    /// The helper refused (passt failed).
    #[error("{0}")]
    Refused(String),
    /// The network's own error.
    #[error(transparent)]
    Net(#[from] vmm::net::NetError),
}

/// vmapp's side: the switch. The helper stops passt and ends when every
/// copy of it is closed (the jail's parent holds one until the VM ends).
/// Dropping it only closes: the thread that drops it (vmapp's `control`)
/// may not wait for processes, so the helper is reaped through
/// [`NetHelper`].
pub struct NetSwitch {
    stream: UnixStream,
    /// A request went unanswered: a late answer could be read as the next
    /// one's, so the switch refuses from then on.
    broken: bool,
}

/// The helper process, reaped when dropped (drop it after the switch, on a
/// thread that may wait: vmapp's main thread, or the jail's parent).
pub struct NetHelper {
    child: Child,
}

impl Drop for NetHelper {
    fn drop(&mut self) {
        let _ = self.child.wait();
    }
}

impl NetSwitch {
    /// Starts the helper for the VM whose vsock socket is `uds`, with the
    /// network on or off; returns once passt listens (when on).
    pub fn spawn(
        cfg: &NetConfig,
        uds: &Path,
        on: bool,
    ) -> Result<(Self, NetHelper), NetHelperError> {
        cfg.binary()?;
        let (mine, theirs) = UnixStream::pair()?;
        let mut cmd = Command::new(std::env::current_exe()?);
        cmd.arg(HELPER_ARG).arg(uds);
        if cfg.host_loopback {
            cmd.arg("--host-loopback");
        }
        for p in &cfg.publish {
            cmd.arg("--publish").arg(format!("{}:{}", p.host, p.guest));
        }
        if let Some(l) = &cfg.log {
            cmd.arg("--log").arg(l);
        }
        if let Some(m) = cfg.mtu {
            cmd.arg("--mtu").arg(m.to_string());
        }
        // Above fd 3, so that the child's dup2 to fd 3 is never a no-op
        // (which would leave close-on-exec set) and stdio set-up, done
        // before it, cannot overwrite it.
        let theirs = above_helper_fd(theirs)?;
        let fd = theirs.as_raw_fd();
        cmd.stdin(Stdio::null()).stdout(Stdio::null());
        // Its own process group: a terminal's Ctrl-C or hang-up reaches
        // vmapp, which stops the VM in order, but not the helper and passt,
        // so the app keeps its network for its grace period.
        cmd.process_group(0);
        // SAFETY: between fork and exec only async-signal-safe calls: the
        // pair's end to fd 3, a clean signal mask (vmapp blocks its stop
        // signals), and death with vmapp.
        unsafe {
            cmd.pre_exec(move || {
                if libc::dup2(fd, HELPER_FD) < 0 {
                    return Err(std::io::Error::last_os_error());
                }
                let mut none: libc::sigset_t = std::mem::zeroed();
                libc::sigemptyset(&mut none);
                libc::pthread_sigmask(libc::SIG_SETMASK, &none, std::ptr::null_mut());
                libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL);
                Ok(())
            });
        }
        let child = cmd.spawn()?;
        drop(theirs);
        mine.set_read_timeout(Some(ANSWER_TIMEOUT))?;
        let helper = NetHelper { child };
        let mut s = Self {
            stream: mine,
            broken: false,
        };
        // On an error `helper` is dropped after `s`: the helper sees the end
        // of its socket and exits before it is waited for.
        s.set(Some(on))?;
        Ok((s, helper))
    }

    fn ask(&mut self, req: u8) -> Result<bool, NetHelperError> {
        if self.broken {
            return Err(NetHelperError::Refused(
                "the network helper stopped answering".into(),
            ));
        }
        let r = self.exchange(req);
        // No whole answer (timeout, error, or a line too long to be one):
        // what is left of it must not be read as the next one's.
        if matches!(r, Err(NetHelperError::Io(_))) {
            self.broken = true;
        }
        r
    }

    fn exchange(&mut self, req: u8) -> Result<bool, NetHelperError> {
        self.stream.write_all(&[req])?;
        // One short line per request: byte by byte, so nothing of a later
        // answer is read ahead.
        let mut line = Vec::new();
        let mut b = [0u8; 1];
        loop {
            match (&self.stream).read(&mut b) {
                Ok(0) => break,
                Ok(_) if b[0] == b'\n' => break,
                Ok(_) if line.len() < 4096 => line.push(b[0]),
                Ok(_) => {
                    return Err(NetHelperError::Io(std::io::Error::new(
                        std::io::ErrorKind::InvalidData,
                        "the network helper's answer is too long",
                    )))
                }
                Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
                Err(e) => return Err(e.into()),
            }
        }
        let line = String::from_utf8_lossy(&line);
        match line.trim_end() {
            "on" => Ok(true),
            "off" => Ok(false),
            "" => Err(NetHelperError::Refused("the network helper ended".into())),
            other => Err(NetHelperError::Refused(
                other.strip_prefix("error: ").unwrap_or(other).to_string(),
            )),
        }
    }

    /// Turns the network on or off (`Some`), or asks (`None`): whether it is
    /// on.
    pub fn set(&mut self, on: Option<bool>) -> Result<bool, NetHelperError> {
        let now = self.ask(match on {
            Some(true) => b'1',
            Some(false) => b'0',
            None => b'?',
        })?;
        if on == Some(true) && !now {
            return Err(NetHelperError::Refused(
                "passt ended as soon as it started (see passt.log in the VM's runtime directory)"
                    .into(),
            ));
        }
        Ok(now)
    }
}

/// `fd` moved above [`HELPER_FD`] (close-on-exec, as Rust opens every fd).
fn above_helper_fd(fd: UnixStream) -> std::io::Result<UnixStream> {
    if fd.as_raw_fd() > HELPER_FD {
        return Ok(fd);
    }
    // SAFETY: F_DUPFD_CLOEXEC on our own open fd returns a new fd or -1.
    let n = unsafe { libc::fcntl(fd.as_raw_fd(), libc::F_DUPFD_CLOEXEC, HELPER_FD + 1) };
    if n < 0 {
        return Err(std::io::Error::last_os_error());
    }
    // SAFETY: a new fd that nothing else owns.
    Ok(unsafe { UnixStream::from_raw_fd(n) })
}

/// The helper's arguments after [`HELPER_ARG`]: `UDS [--host-loopback]
/// [--publish H:G]… [--log FILE] [--mtu N]`.
fn parse(args: &[String]) -> Result<(PathBuf, NetConfig), String> {
    let mut it = args.iter();
    let uds = PathBuf::from(it.next().ok_or("no vsock socket")?);
    let mut cfg = NetConfig::default();
    while let Some(a) = it.next() {
        match a.as_str() {
            "--host-loopback" => cfg.host_loopback = true,
            "--publish" => {
                let p: Publish = it
                    .next()
                    .ok_or("--publish needs a value")?
                    .parse()
                    .map_err(|e: vmm::net::NetError| e.to_string())?;
                cfg.publish.push(p);
            }
            "--log" => cfg.log = Some(it.next().ok_or("--log needs a value")?.into()),
            "--mtu" => {
                let m = it.next().ok_or("--mtu needs a value")?;
                cfg.mtu = Some(m.parse().map_err(|_| format!("bad MTU {m:?}"))?);
            }
            other => return Err(format!("unknown argument {other:?}")),
        }
    }
    Ok((uds, cfg))
}

/// The helper process: serves requests on fd 3 until vmapp's end closes.
pub fn helper_main(args: &[String]) -> ExitCode {
    let (uds, cfg) = match parse(args) {
        Ok(x) => x,
        Err(e) => {
            eprintln!("vmapp {HELPER_ARG}: {e}");
            return ExitCode::from(2);
        }
    };
    // fd 3 must be the socket pair's end vmapp handed over, and must not
    // leak into passt.
    // SAFETY: fcntl on an fd number; fails cleanly when it is not open.
    if unsafe { libc::fcntl(HELPER_FD, libc::F_SETFD, libc::FD_CLOEXEC) } < 0 {
        eprintln!("vmapp {HELPER_ARG}: no socket at fd {HELPER_FD} (vmapp starts this helper)");
        return ExitCode::from(2);
    }
    // SAFETY: fd 3 is open (checked above) and was handed to us; we own it.
    let stream = unsafe { UnixStream::from_raw_fd(HELPER_FD) };
    // The helper takes requests from the jailed side, outside the jail: the
    // process that reads them (the relay) runs under a seccomp filter of its
    // own and passes on only well-formed one-byte requests; passt is
    // started and stopped by a child of it without a filter (passt inherits
    // none), which only ever hears from the relay.
    let (relay_end, launcher_end) = match UnixStream::pair() {
        Ok(p) => p,
        Err(e) => {
            eprintln!("vmapp {HELPER_ARG}: {e}");
            return ExitCode::from(2);
        }
    };
    // SAFETY: this process has one thread (it was just exec'd to be this
    // helper), so the child may run any code.
    match unsafe { libc::fork() } {
        0 => {
            drop((stream, relay_end));
            serve(&launcher_end, Network::new(cfg, &uds));
            ExitCode::SUCCESS
        }
        pid if pid > 0 => {
            drop(launcher_end);
            let code = relay(&stream, &relay_end);
            drop(relay_end);
            let mut st = 0;
            // SAFETY: waits for our own child.
            unsafe { libc::waitpid(pid, &mut st, 0) };
            code
        }
        _ => {
            eprintln!(
                "vmapp {HELPER_ARG}: fork: {}",
                std::io::Error::last_os_error()
            );
            ExitCode::from(2)
        }
    }
}

/// Longest answer the relay passes back (the launcher's lines are short).
const MAX_ANSWER: usize = 4096;

/// The relay: under its filter, passes each request byte that is one of
/// `1`, `0`, `?` from the jailed side (`from`) to the launcher and the
/// launcher's answer line back; anything else is answered with an error
/// here. Ends when either side closes.
fn relay(from: &UnixStream, launcher: &UnixStream) -> ExitCode {
    if let Err(e) = seccomp_policies::install_default(seccomp_policies::ThreadKind::NetHelper) {
        eprintln!("vmapp {HELPER_ARG}: {e}");
        return ExitCode::from(2);
    }
    relay_loop(from, launcher);
    ExitCode::SUCCESS
}

/// [`relay`]'s loop, without the filter.
fn relay_loop(from: &UnixStream, launcher: &UnixStream) {
    let mut byte = [0u8; 1];
    loop {
        match (&*from).read(&mut byte) {
            Ok(0) => return,
            Ok(_) if matches!(byte[0], b'0' | b'1' | b'?') => {
                let answer = (&*launcher)
                    .write_all(&byte)
                    .and_then(|()| read_answer(launcher));
                match answer {
                    Ok(a) if (&*from).write_all(&a).is_ok() => {}
                    _ => return,
                }
            }
            Ok(_) => {
                if (&*from).write_all(b"error: unknown request\n").is_err() {
                    return;
                }
            }
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
            Err(_) => return,
        }
    }
}

/// One answer line from the launcher (at most [`MAX_ANSWER`] bytes).
fn read_answer(launcher: &UnixStream) -> std::io::Result<Vec<u8>> {
    let mut line = Vec::new();
    let mut b = [0u8; 1];
    while line.len() < MAX_ANSWER {
        if (&*launcher).read(&mut b)? == 0 {
            return Err(std::io::ErrorKind::UnexpectedEof.into());
        }
        line.push(b[0]);
        if b[0] == b'\n' {
            return Ok(line);
        }
    }
    Err(std::io::Error::other("answer too long"))
}

/// The launcher: owns the network (passt), serves the relay's requests.
fn serve(stream: &UnixStream, mut net: Network) {
    let _ = stream.set_read_timeout(Some(Duration::from_millis(500)));
    let mut byte = [0u8; 1];
    loop {
        match (&*stream).read(&mut byte) {
            Ok(0) => break,
            Ok(_) => {
                let r = match byte[0] {
                    b'1' => net.set(true).map_err(|e| e.to_string()),
                    b'0' => net.set(false).map_err(|e| e.to_string()),
                    b'?' => Ok(()),
                    _ => Err("unknown request".to_string()),
                };
                let answer = match r {
                    Ok(()) if net.is_on() => "on\n".to_string(),
                    Ok(()) => "off\n".to_string(),
                    Err(e) => format!("error: {e}\n"),
                };
                if (&*stream).write_all(answer.as_bytes()).is_err() {
                    break;
                }
            }
            Err(e)
                if matches!(
                    e.kind(),
                    std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
                ) =>
            {
                // Reports a passt that ended on its own.
                net.is_on();
            }
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
            Err(_) => break,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A switch whose helper is the test, at the other end of `peer`.
    fn switch(timeout: Duration) -> (NetSwitch, UnixStream) {
        let (mine, peer) = UnixStream::pair().unwrap();
        mine.set_read_timeout(Some(timeout)).unwrap();
        let s = NetSwitch {
            stream: mine,
            broken: false,
        };
        (s, peer)
    }

    /// Answers each of `answers` to one request.
    fn helper(
        mut peer: UnixStream,
        answers: &'static [&'static str],
    ) -> std::thread::JoinHandle<Vec<u8>> {
        std::thread::spawn(move || {
            let mut asked = Vec::new();
            for a in answers {
                let mut b = [0u8; 1];
                if peer.read_exact(&mut b).is_err() {
                    break;
                }
                asked.push(b[0]);
                let _ = peer.write_all(a.as_bytes());
            }
            asked
        })
    }

    #[test]
    fn on_is_an_error_when_passt_ended_at_once() {
        let (mut s, peer) = switch(ANSWER_TIMEOUT);
        let h = helper(
            peer,
            &["off\n", "on\n", "off\n", "error: cannot start passt: x\n"],
        );
        let e = s.set(Some(true)).unwrap_err();
        assert!(e.to_string().contains("passt ended"), "{e}");
        assert!(s.set(Some(true)).unwrap());
        assert!(!s.set(Some(false)).unwrap());
        let e = s.set(Some(true)).unwrap_err();
        assert_eq!(e.to_string(), "cannot start passt: x");
        assert_eq!(h.join().unwrap(), b"1101");
    }

    #[test]
    fn an_overlong_answer_breaks_the_switch() {
        let (mut s, mut peer) = switch(ANSWER_TIMEOUT);
        peer.write_all(&[b'x'; 5000]).unwrap();
        peer.write_all(b"\non\n").unwrap();
        let e = s.set(None).unwrap_err();
        assert!(e.to_string().contains("too long"), "{e}");
        let e = s.set(None).unwrap_err();
        assert!(e.to_string().contains("stopped answering"), "{e}");
    }

    #[test]
    fn a_late_answer_is_never_taken_for_the_next_one() {
        let (mut s, mut peer) = switch(Duration::from_millis(200));
        let e = s.set(Some(false)).unwrap_err();
        assert!(matches!(e, NetHelperError::Io(_)), "{e}");
        // The answer comes late; the switch must not read it as the
        // answer to the next request.
        peer.write_all(b"on\n").unwrap();
        let e = s.set(None).unwrap_err();
        assert!(e.to_string().contains("stopped answering"), "{e}");
    }

    #[test]
    fn the_relay_passes_on_only_requests_and_their_answers() {
        let (mut jailed, from) = UnixStream::pair().unwrap();
        let (launcher, mut theirs) = UnixStream::pair().unwrap();
        let t = std::thread::spawn(move || relay_loop(&from, &launcher));
        // Garbage is answered by the relay itself; the launcher sees none.
        jailed.write_all(b"x").unwrap();
        let mut line = [0u8; 23];
        jailed.read_exact(&mut line).unwrap();
        assert_eq!(&line, b"error: unknown request\n");
        jailed.write_all(b"1").unwrap();
        let mut b = [0u8; 1];
        theirs.read_exact(&mut b).unwrap();
        assert_eq!(&b, b"1", "the first byte the launcher sees is the request");
        theirs.write_all(b"on\n").unwrap();
        let mut on = [0u8; 3];
        jailed.read_exact(&mut on).unwrap();
        assert_eq!(&on, b"on\n");
        // An answer that never ends is cut off, not relayed for ever.
        jailed.write_all(b"?").unwrap();
        theirs.read_exact(&mut b).unwrap();
        theirs.write_all(&[b'a'; MAX_ANSWER + 10]).unwrap();
        t.join().unwrap();
        let mut rest = Vec::new();
        jailed.read_to_end(&mut rest).unwrap();
        assert!(rest.is_empty(), "nothing of the overlong answer passed");
    }

    #[test]
    fn helper_arguments_round_trip() {
        let args: Vec<String> = [
            "/r/v.sock",
            "--host-loopback",
            "--publish",
            "8080:80",
            "--log",
            "/r/l",
            "--mtu",
            "1500",
        ]
        .map(String::from)
        .to_vec();
        let (uds, cfg) = parse(&args).unwrap();
        assert_eq!(uds, Path::new("/r/v.sock"));
        assert!(cfg.host_loopback);
        assert_eq!(
            cfg.publish,
            vec![Publish {
                host: 8080,
                guest: 80
            }]
        );
        assert_eq!(cfg.log.as_deref(), Some(Path::new("/r/l")));
        assert_eq!(cfg.mtu, Some(1500));
        assert!(parse(&["/r".into(), "--mtu".into(), "big".into()]).is_err());
        assert!(parse(&["/r".into(), "--publish".into()]).is_err());
        assert!(parse(&["/r".into(), "--publish".into(), "x".into()]).is_err());
        assert!(parse(&["/r".into(), "--bogus".into()]).is_err());
        assert!(parse(&[]).is_err());
    }
}

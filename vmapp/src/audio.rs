//! A VM's sound: its audio proxy (`audio-proxy`, one process per VM, in the
//! host's namespaces and outside the jail, under its own seccomp filter)
//! listening on the VM's vsock socket for guest port [`AUDIO_PORT`], and the
//! switch vmapp keeps to it: one end of a socket pair the proxy takes as
//! `--control-fd`, one mode a line, answered `ok MODE`. When every copy
//! of the switch is closed (the VM ended) the proxy exits.

use std::io::{BufRead, BufReader, Write};
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::os::unix::net::UnixStream;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

pub use audio_proxy::Mode;

/// The host port guest audio connections go to.
pub const AUDIO_PORT: u32 = 1027;
/// The fd the proxy finds its end of the switch at.
const CONTROL_FD: i32 = 3;

/// Errors starting or switching the proxy.
#[derive(Debug, thiserror::Error)]
pub enum AudioError {
    /// It could not be started or reached.
    #[error("audio proxy {}: {source}", path.display())]
    Io {
        /// The binary.
        path: PathBuf,
        /// Why.
        source: std::io::Error,
    },
    /// It ended or did not listen in time.
    #[error("audio proxy: {0}")]
    NotListening(String),
    /// It refused a mode or broke the protocol.
    #[error("audio proxy: {0}")]
    Switch(String),
}

/// How a VM's proxy is set up.
#[derive(Debug, Clone)]
pub struct AudioConfig {
    /// The `audio-proxy` binary.
    pub binary: PathBuf,
    /// The VM's vsock socket; the proxy listens on `{uds}_{AUDIO_PORT}`.
    pub vsock_uds: PathBuf,
    /// The label on the VM's client and stream names.
    pub tag: String,
    /// The mode at start.
    pub mode: Mode,
    /// The proxy's seccomp mode.
    pub seccomp: seccomp_policies::Mode,
}

/// The running proxy; dropping it stops it (SIGTERM, then waits).
pub struct AudioProcess {
    child: Child,
}

impl Drop for AudioProcess {
    fn drop(&mut self) {
        // SAFETY: kill on our own child's pid.
        unsafe { libc::kill(self.child.id() as i32, libc::SIGTERM) };
        let _ = self.child.wait();
    }
}

/// vmapp's end of the switch.
pub struct AudioSwitch {
    stream: UnixStream,
    mode: Mode,
    /// A request went unanswered: a late answer could be read as the next
    /// one's, so the switch refuses from then on.
    broken: bool,
}

/// The `audio-proxy` binary: beside the running executable, else `PATH`'s.
pub fn proxy_binary() -> PathBuf {
    std::env::current_exe()
        .ok()
        .and_then(|e| e.parent().map(|d| d.join("audio-proxy")))
        .filter(|p| p.exists())
        .unwrap_or_else(|| PathBuf::from("audio-proxy"))
}

/// Where the proxy listens for the VM whose vsock socket is `uds`.
pub fn listen_path(uds: &Path) -> PathBuf {
    let mut s = uds.as_os_str().to_owned();
    s.push(format!("_{AUDIO_PORT}"));
    PathBuf::from(s)
}

fn seccomp_arg(m: seccomp_policies::Mode) -> &'static str {
    match m {
        seccomp_policies::Mode::Kill => "kill",
        seccomp_policies::Mode::Log => "log",
        seccomp_policies::Mode::Off => "off",
    }
}

impl AudioProcess {
    /// Starts the proxy; returns once it listens.
    pub fn start(cfg: &AudioConfig) -> Result<(Self, AudioSwitch), AudioError> {
        let io = |source| AudioError::Io {
            path: cfg.binary.clone(),
            source,
        };
        let listen = listen_path(&cfg.vsock_uds);
        let _ = std::fs::remove_file(&listen);
        let (mine, theirs) = UnixStream::pair().map_err(io)?;
        // Above fd 3, so that the child's dup2 to fd 3 is never a no-op.
        // SAFETY: F_DUPFD_CLOEXEC on an fd we own gives a new fd we own.
        let high = unsafe { libc::fcntl(theirs.as_raw_fd(), libc::F_DUPFD_CLOEXEC, 10) };
        if high < 0 {
            return Err(io(std::io::Error::last_os_error()));
        }
        // SAFETY: `high` is a fresh fd nothing else owns.
        let theirs = unsafe { OwnedFd::from_raw_fd(high) };
        let fd = theirs.as_raw_fd();
        let mut c = Command::new(&cfg.binary);
        c.arg("--listen")
            .arg(&listen)
            .args(["--tag", &cfg.tag, "--mode", &cfg.mode.to_string()])
            .args(["--seccomp", seccomp_arg(cfg.seccomp)])
            .args(["--control-fd", &CONTROL_FD.to_string()])
            .stdin(Stdio::null())
            .stdout(Stdio::null());
        // Its own process group, as the network helper: a terminal's Ctrl-C
        // stops vmapp, which stops the VM in order; the proxy goes with it.
        c.process_group(0);
        // SAFETY: between fork and exec only async-signal-safe calls: the
        // switch's end to fd 3, a clean signal mask, death with vmapp.
        unsafe {
            c.pre_exec(move || {
                if libc::dup2(fd, CONTROL_FD) < 0 {
                    return Err(std::io::Error::last_os_error());
                }
                let mut none: libc::sigset_t = std::mem::zeroed();
                libc::sigemptyset(&mut none);
                libc::pthread_sigmask(libc::SIG_SETMASK, &none, std::ptr::null_mut());
                libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGTERM);
                Ok(())
            });
        }
        let child = c.spawn().map_err(io)?;
        drop(theirs);
        let mut p = AudioProcess { child };
        let t = Instant::now();
        while !listen.exists() {
            if let Ok(Some(st)) = p.child.try_wait() {
                return Err(AudioError::NotListening(format!("it exited: {st}")));
            }
            if t.elapsed() > Duration::from_secs(10) {
                return Err(AudioError::NotListening(
                    "it did not listen within 10 s".into(),
                ));
            }
            std::thread::sleep(Duration::from_millis(5));
        }
        mine.set_read_timeout(Some(Duration::from_secs(10)))
            .map_err(io)?;
        let switch = AudioSwitch {
            stream: mine,
            mode: cfg.mode,
            broken: false,
        };
        Ok((p, switch))
    }
}

impl AudioSwitch {
    /// The mode now.
    pub fn mode(&self) -> Mode {
        self.mode
    }

    /// Switches; returns once the proxy has cut what the mode forbids.
    pub fn set(&mut self, mode: Mode) -> Result<(), AudioError> {
        if self.broken {
            return Err(AudioError::Switch(
                "an earlier switch went unanswered".into(),
            ));
        }
        // Broken until the answer is read whole.
        self.broken = true;
        let broken = |e: std::io::Error| AudioError::Switch(e.to_string());
        self.stream
            .write_all(format!("{mode}\n").as_bytes())
            .map_err(broken)?;
        let mut line = String::new();
        BufReader::new(&self.stream)
            .read_line(&mut line)
            .map_err(broken)?;
        if line.trim() != format!("ok {mode}") {
            return Err(AudioError::Switch(format!("answered {:?}", line.trim())));
        }
        self.broken = false;
        self.mode = mode;
        Ok(())
    }
}

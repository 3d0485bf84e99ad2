//! The serial console's host side: where guest output goes and, for the
//! terminal, raw-mode input forwarded into the UART.

use std::io::Write;
use std::os::fd::AsRawFd;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use devices::bus::lock;
use devices::legacy::Serial;

/// Where the guest's serial console goes.
pub enum Console {
    /// This process's stdout; stdin is forwarded to the guest (raw mode on a terminal).
    Stdio,
    /// Appended to a file; no input.
    File(PathBuf),
    /// Discarded.
    None,
    /// Any writer the embedder provides; no input.
    Writer(Box<dyn Write + Send>),
}

impl std::fmt::Debug for Console {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Console::Stdio => write!(f, "Stdio"),
            Console::File(p) => write!(f, "File({})", p.display()),
            Console::None => write!(f, "None"),
            Console::Writer(_) => write!(f, "Writer"),
        }
    }
}

/// Errors setting up the console.
#[derive(Debug, thiserror::Error)]
pub enum ConsoleError {
    /// The console file cannot be opened.
    #[error("cannot open console file {0}: {1}")]
    File(String, std::io::Error),
}

impl Console {
    /// The writer the UART writes to.
    pub(crate) fn writer(&mut self) -> Result<Box<dyn Write + Send>, ConsoleError> {
        Ok(match std::mem::replace(self, Console::None) {
            Console::Stdio => {
                *self = Console::Stdio;
                Box::new(std::io::stdout())
            }
            Console::File(p) => {
                let f = std::fs::OpenOptions::new()
                    .create(true)
                    .append(true)
                    .open(&p)
                    .map_err(|e| ConsoleError::File(p.display().to_string(), e))?;
                Box::new(f)
            }
            Console::None => Box::new(std::io::sink()),
            Console::Writer(w) => w,
        })
    }
}

/// Puts a terminal into raw mode and restores it when dropped.
pub(crate) struct RawTerminal {
    saved: libc::termios,
}

impl RawTerminal {
    /// Raw mode for stdin if it is a terminal.
    pub(crate) fn enter() -> Option<Self> {
        let fd = std::io::stdin().as_raw_fd();
        // SAFETY: isatty only inspects the fd.
        if unsafe { libc::isatty(fd) } != 1 {
            return None;
        }
        // SAFETY: termios is plain data; tcgetattr fills it for a valid fd.
        let mut t: libc::termios = unsafe { std::mem::zeroed() };
        // SAFETY: fd is a terminal and t is a valid termios.
        if unsafe { libc::tcgetattr(fd, &mut t) } != 0 {
            return None;
        }
        let saved = t;
        // SAFETY: cfmakeraw only modifies the struct it is given.
        unsafe { libc::cfmakeraw(&mut t) };
        // SAFETY: fd is a terminal and t a valid termios.
        if unsafe { libc::tcsetattr(fd, libc::TCSANOW, &t) } != 0 {
            return None;
        }
        Some(Self { saved })
    }
}

impl Drop for RawTerminal {
    fn drop(&mut self) {
        // SAFETY: restores the attributes saved from the same fd.
        unsafe { libc::tcsetattr(std::io::stdin().as_raw_fd(), libc::TCSANOW, &self.saved) };
    }
}

/// Forwards stdin into the UART until `stop` is set or stdin ends; waits
/// while the UART's FIFO is full, so input is never dropped.
pub(crate) fn spawn_stdin_forwarder(
    serial: Arc<Mutex<Serial>>,
    stop: Arc<AtomicBool>,
    seccomp: seccomp_policies::Mode,
) -> std::io::Result<std::thread::JoinHandle<()>> {
    std::thread::Builder::new()
        .name("console-in".into())
        .spawn(move || {
            if let Err(e) =
                seccomp_policies::install(seccomp_policies::ThreadKind::ConsoleIn, seccomp)
            {
                tracing::error!("console input disabled: {e}");
                return;
            }
            let fd = std::io::stdin().as_raw_fd();
            let mut buf = [0u8; 64];
            while !stop.load(Ordering::Acquire) {
                let mut pfd = libc::pollfd {
                    fd,
                    events: libc::POLLIN,
                    revents: 0,
                };
                // SAFETY: pfd is a valid pollfd array of length 1.
                let r = unsafe { libc::poll(&mut pfd, 1, 100) };
                if r <= 0 {
                    continue;
                }
                // SAFETY: buf is valid for buf.len() bytes.
                let n = unsafe { libc::read(fd, buf.as_mut_ptr().cast(), buf.len()) };
                if n <= 0 {
                    return; // EOF or error: no more input.
                }
                let mut pending = &buf[..n as usize];
                while !pending.is_empty() && !stop.load(Ordering::Acquire) {
                    let taken = lock(&serial).enqueue(pending).unwrap_or(0);
                    pending = &pending[taken..];
                    if taken == 0 {
                        std::thread::sleep(Duration::from_millis(2));
                    }
                }
            }
        })
}

//! Per-thread seccomp filters for vmapp and wl-proxy.
//!
//! `policies/x86_64.json` (seccompiler's JSON format) has one filter per thread
//! kind; `build.rs` compiles each twice — default action *trap* (kill mode)
//! and *log* (log mode) — and embeds the BPF. A thread calls [`install`] with
//! its kind before it touches guest or client input. In kill mode a
//! forbidden syscall raises SIGSYS; the handler prints the thread's name and
//! the syscall and ends the process with status [`EXIT_SECCOMP`].
#![deny(missing_docs)]

use std::str::FromStr;
use std::sync::atomic::{AtomicU8, Ordering};
use std::sync::Once;

/// One compiled policy: (thread kind, BPF for kill mode, BPF for log mode,
/// the syscalls it has rules for).
pub type Filter = (
    &'static str,
    &'static [u8],
    &'static [u8],
    &'static [&'static str],
);

include!(concat!(env!("OUT_DIR"), "/filters.rs"));

/// Exit status after a seccomp violation in kill mode (128 + SIGSYS).
pub const EXIT_SECCOMP: i32 = 159;

/// Errors installing a filter.
#[derive(Debug, thiserror::Error)]
pub enum SeccompError {
    /// The kernel refused the filter.
    #[error("cannot install the {kind} seccomp filter: {source}")]
    Install {
        /// Thread kind.
        kind: &'static str,
        /// The cause.
        source: seccompiler::Error,
    },
    /// The SIGSYS handler could not be installed.
    #[error("cannot install the SIGSYS handler: {0}")]
    Handler(std::io::Error),
    /// Unknown `--seccomp` value.
    #[error("unknown seccomp mode {0:?} (kill, log or off)")]
    BadMode(String),
}

/// What a forbidden syscall does.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mode {
    /// SIGSYS: the process ends with a message naming the thread and syscall.
    Kill,
    /// The syscall runs and the kernel logs it (audit / kernel log).
    Log,
    /// No filter.
    Off,
}

impl FromStr for Mode {
    type Err = SeccompError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "kill" => Ok(Mode::Kill),
            "log" => Ok(Mode::Log),
            "off" => Ok(Mode::Off),
            other => Err(SeccompError::BadMode(other.to_string())),
        }
    }
}

/// The kinds of threads that have a filter.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ThreadKind {
    /// The VMM's main thread once the VM runs.
    Vmm,
    /// A vCPU thread (runs device register accesses too).
    Vcpu,
    /// The serial console's stdin forwarder.
    ConsoleIn,
    /// A virtio-blk I/O thread.
    VirtioBlk,
    /// The virtio-vsock worker.
    VirtioVsock,
    /// A virtio-fs worker (one per share).
    VirtioFs,
    /// The virtio-gpu worker, and rutabaga's cross-domain threads it starts.
    VirtioGpu,
    /// vmapp's guest-agent threads.
    Agent,
    /// vmapp's control-socket thread.
    Control,
    /// The Wayland proxy's event loop.
    WlProxy,
    /// wl-proxy's helper threads (signals, waiting for the command).
    WlProxyHelper,
    /// The audio proxy: every thread (accept, control, one pair per
    /// connection).
    AudioProxy,
    /// vmapp's jail parent: outside the jail, waits for the jailed child,
    /// passes stop signals on, then stops the helpers and removes the
    /// runtime directory.
    JailParent,
    /// vmapp's network helper relay: outside the jail, passes the jailed
    /// side's one-byte requests to the (unfiltered) process that runs passt.
    NetHelper,
}

impl ThreadKind {
    /// Every kind.
    pub const ALL: [ThreadKind; 14] = [
        ThreadKind::Vmm,
        ThreadKind::Vcpu,
        ThreadKind::ConsoleIn,
        ThreadKind::VirtioBlk,
        ThreadKind::VirtioVsock,
        ThreadKind::VirtioFs,
        ThreadKind::VirtioGpu,
        ThreadKind::Agent,
        ThreadKind::Control,
        ThreadKind::WlProxy,
        ThreadKind::WlProxyHelper,
        ThreadKind::AudioProxy,
        ThreadKind::JailParent,
        ThreadKind::NetHelper,
    ];

    /// Its key in the JSON.
    pub fn name(self) -> &'static str {
        match self {
            ThreadKind::Vmm => "vmm",
            ThreadKind::Vcpu => "vcpu",
            ThreadKind::ConsoleIn => "console_in",
            ThreadKind::VirtioBlk => "virtio_blk",
            ThreadKind::VirtioVsock => "virtio_vsock",
            ThreadKind::VirtioFs => "virtio_fs",
            ThreadKind::VirtioGpu => "virtio_gpu",
            ThreadKind::Agent => "agent",
            ThreadKind::Control => "control",
            ThreadKind::WlProxy => "wl_proxy",
            ThreadKind::WlProxyHelper => "wl_proxy_helper",
            ThreadKind::AudioProxy => "audio_proxy",
            ThreadKind::JailParent => "jail_parent",
            ThreadKind::NetHelper => "net_helper",
        }
    }

    fn entry(
        self,
    ) -> &'static (
        &'static str,
        &'static [u8],
        &'static [u8],
        &'static [&'static str],
    ) {
        FILTERS
            .iter()
            .find(|f| f.0 == self.name())
            .unwrap_or_else(|| unreachable!("build.rs compiles every kind"))
    }

    /// The syscalls this kind may make (some only with certain arguments).
    pub fn syscalls(self) -> &'static [&'static str] {
        self.entry().3
    }

    /// Its number of rules (a syscall, or a syscall with argument conditions).
    pub fn rules(self) -> usize {
        RULE_COUNTS
            .iter()
            .find(|r| r.0 == self.name())
            .map_or(0, |r| r.1)
    }
}

static DEFAULT_MODE: AtomicU8 = AtomicU8::new(0);

/// Sets the mode [`install_default`] uses (the process's `--seccomp`).
pub fn set_default_mode(mode: Mode) {
    DEFAULT_MODE.store(mode as u8, Ordering::Relaxed);
}

/// The mode set by [`set_default_mode`]; kill unless changed.
pub fn default_mode() -> Mode {
    match DEFAULT_MODE.load(Ordering::Relaxed) {
        0 => Mode::Kill,
        1 => Mode::Log,
        _ => Mode::Off,
    }
}

/// Installs `kind`'s filter in the calling thread with the default mode.
pub fn install_default(kind: ThreadKind) -> Result<(), SeccompError> {
    install(kind, default_mode())
}

/// Installs `kind`'s filter in the calling thread. Threads it creates later
/// inherit it (filters stack: a syscall must pass all of them).
pub fn install(kind: ThreadKind, mode: Mode) -> Result<(), SeccompError> {
    let e = kind.entry();
    let bytes = match mode {
        Mode::Off => return Ok(()),
        Mode::Kill => e.1,
        Mode::Log => e.2,
    };
    install_sigsys_handler()?;
    let prog: Vec<seccompiler::sock_filter> = bytes
        .chunks_exact(8)
        .map(|c| seccompiler::sock_filter {
            code: u16::from_ne_bytes([c[0], c[1]]),
            jt: c[2],
            jf: c[3],
            k: u32::from_ne_bytes([c[4], c[5], c[6], c[7]]),
        })
        .collect();
    seccompiler::apply_filter(&prog).map_err(|source| SeccompError::Install {
        kind: kind.name(),
        source,
    })
}

fn install_sigsys_handler() -> Result<(), SeccompError> {
    static ONCE: Once = Once::new();
    let mut res = Ok(());
    ONCE.call_once(|| {
        // SAFETY: an all-zero sigaction is valid; we set the handler and flags.
        let mut sa: libc::sigaction = unsafe { std::mem::zeroed() };
        sa.sa_sigaction = on_sigsys as *const () as usize;
        sa.sa_flags = libc::SA_SIGINFO;
        // SAFETY: `sa` is initialised and the handler only makes async-signal-safe calls.
        if unsafe { libc::sigaction(libc::SIGSYS, &sa, std::ptr::null_mut()) } != 0 {
            res = Err(SeccompError::Handler(std::io::Error::last_os_error()));
        }
    });
    res
}

/// Appends `s` to `buf` at `*n`, as far as it fits.
fn put(buf: &mut [u8], n: &mut usize, s: &[u8]) {
    for &b in s {
        if *n < buf.len() {
            buf[*n] = b;
            *n += 1;
        }
    }
}

fn put_hex(buf: &mut [u8], n: &mut usize, v: u64) {
    put(buf, n, b"0x");
    let mut started = false;
    for i in (0..16).rev() {
        let d = ((v >> (i * 4)) & 0xf) as u8;
        if d != 0 || started || i == 0 {
            started = true;
            put(buf, n, &[if d < 10 { b'0' + d } else { b'a' + d - 10 }]);
        }
    }
}

/// The violation message (no allocation: it runs in a signal handler).
fn message(buf: &mut [u8; 256], thread: &[u8], nr: i32, args: [u64; 3]) -> usize {
    let mut n = 0;
    put(buf, &mut n, b"seccomp: thread '");
    put(buf, &mut n, thread);
    put(buf, &mut n, b"' made a forbidden syscall ");
    let mut digits = [0u8; 12];
    let mut d = digits.len();
    let mut v = nr.unsigned_abs();
    loop {
        d -= 1;
        digits[d] = b'0' + (v % 10) as u8;
        v /= 10;
        if v == 0 {
            break;
        }
    }
    put(buf, &mut n, &digits[d..]);
    if let Some(name) = usize::try_from(nr).ok().and_then(|i| SYSCALL_NAMES.get(i)) {
        if !name.is_empty() {
            put(buf, &mut n, b" (");
            put(buf, &mut n, name.as_bytes());
            put(buf, &mut n, b")");
        }
    }
    put(buf, &mut n, b" with arguments ");
    for (i, a) in args.iter().enumerate() {
        if i > 0 {
            put(buf, &mut n, b", ");
        }
        put_hex(buf, &mut n, *a);
    }
    put(buf, &mut n, b", ...; stopping\n");
    n
}

extern "C" fn on_sigsys(_sig: libc::c_int, info: *mut libc::siginfo_t, ctx: *mut libc::c_void) {
    // x86_64 siginfo for SIGSYS: signo, errno, code, padding (16 bytes), then
    // `_sigsys { void *_call_addr; int _syscall; unsigned _arch; }`.
    // SAFETY: the kernel passes a valid siginfo_t for SA_SIGINFO handlers.
    let nr = unsafe { info.cast::<u8>().add(24).cast::<i32>().read_unaligned() };
    let mut name = [0u8; 17];
    // SAFETY: PR_GET_NAME writes at most 16 bytes into `name`.
    unsafe { libc::prctl(libc::PR_GET_NAME, name.as_mut_ptr()) };
    let len = name.iter().position(|&b| b == 0).unwrap_or(16);
    // SAFETY: for SA_SIGINFO handlers `ctx` is the interrupted thread's ucontext.
    let g = unsafe { &(*ctx.cast::<libc::ucontext_t>()).uc_mcontext.gregs };
    let args = [
        g[libc::REG_RDI as usize] as u64,
        g[libc::REG_RSI as usize] as u64,
        g[libc::REG_RDX as usize] as u64,
    ];
    let mut buf = [0u8; 256];
    let n = message(&mut buf, &name[..len], nr, args);
    // SAFETY: write and _exit are async-signal-safe and allowed in every filter.
    unsafe {
        libc::write(2, buf.as_ptr().cast(), n);
        libc::_exit(EXIT_SECCOMP);
    }
}

#[cfg(test)]
mod tests;

//! `wl-proxy`: sandbox Wayland clients behind a validating proxy.
//!
//! ```text
//! wl-proxy [--policy FILE] [--clipboard allow|deny] [--deny IFACE]… [--tag NAME] [--upstream SOCKET] --listen SOCKET
//! wl-proxy [--policy FILE] [--tag NAME] [--upstream SOCKET] -- COMMAND ARGS…
//! ```

use std::os::unix::net::UnixListener;
use std::path::PathBuf;
use std::process::Command;
use std::sync::Arc;

use anyhow::{bail, Context, Result};
use clap::Parser;
use seccomp_policies::ThreadKind;
use wl_proxy::{Config, Policy, Proxy};

/// A validating Wayland proxy: clients only get what the policy allows.
#[derive(Parser, Debug)]
#[command(name = "wl-proxy", version)]
struct Args {
    /// Policy file (TOML); keys it leaves out keep the built-in values.
    #[arg(long)]
    policy: Option<PathBuf>,
    /// Overrides the policy's clipboard switch (`deny` hides the data-device
    /// and primary-selection managers).
    #[arg(long, value_name = "allow|deny")]
    clipboard: Option<String>,
    /// Hides one more global (repeatable), on top of the policy's deny list:
    /// vmapp hides what its guest relay cannot carry (dmabuf, explicit sync).
    #[arg(long = "deny", value_name = "INTERFACE")]
    deny: Vec<String>,
    /// Label for windows: titles get "[NAME] ", app ids "NAME:".
    #[arg(long)]
    tag: Option<String>,
    /// The compositor's socket [default: $WAYLAND_DISPLAY in $XDG_RUNTIME_DIR].
    #[arg(long)]
    upstream: Option<PathBuf>,
    /// Serve clients on this socket path (removed again on exit).
    #[arg(long, conflicts_with = "command")]
    listen: Option<PathBuf>,
    /// What a syscall outside the thread's seccomp filter does: kill, log or off.
    #[arg(long, default_value = "kill")]
    seccomp: seccomp_policies::Mode,
    /// Print the built-in policy and exit.
    #[arg(long)]
    print_default_policy: bool,
    /// Run COMMAND with WAYLAND_DISPLAY pointing at a private proxy socket; exit with its status.
    #[arg(last = true)]
    command: Vec<String>,
}

fn main() {
    // glibc's malloc opens files on its own (the first new arena reads
    // /sys/devices/system/cpu/online, the first heap trim
    // /proc/sys/vm/overcommit_memory), which no seccomp filter here allows:
    // a fixed arena bound and no trimming keep it off the file system.
    // SAFETY: mallopt takes plain values; called before any thread starts.
    unsafe {
        libc::mallopt(libc::M_ARENA_MAX, 8);
        libc::mallopt(libc::M_TRIM_THRESHOLD, 1 << 30);
    }
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_env("WL_PROXY_LOG")
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("warn")),
        )
        .with_writer(std::io::stderr)
        .init();
    match run() {
        Ok(code) => std::process::exit(code),
        Err(e) => {
            eprintln!("wl-proxy: {e:#}");
            std::process::exit(1);
        }
    }
}

/// The proxy's configuration from the command line: the policy with the
/// flags that override it, the compositor's socket and the tag.
fn config(args: &Args) -> Result<Config> {
    let mut policy = match &args.policy {
        Some(p) => Policy::from_file(p)?,
        None => Policy::default(),
    };
    match args.clipboard.as_deref() {
        None => {}
        Some("allow") => policy.clipboard = wl_proxy::policy::Clipboard::Allow,
        Some("deny") => policy.clipboard = wl_proxy::policy::Clipboard::Deny,
        Some(other) => bail!("--clipboard must be allow or deny, not {other:?}"),
    }
    policy.deny.extend(args.deny.iter().cloned());
    let upstream = match args.upstream.clone() {
        Some(u) => u,
        None => Config::upstream_from_env()
            .context("no --upstream and no XDG_RUNTIME_DIR to find the compositor")?,
    };
    if let Some(tag) = &args.tag {
        if tag.is_empty() || tag.len() > 32 || tag.chars().any(char::is_control) {
            bail!("--tag must be 1-32 printable characters");
        }
    }
    Ok(Config {
        policy: Arc::new(policy),
        tag: args.tag.clone(),
        upstream,
    })
}

fn run() -> Result<i32> {
    let args = Args::parse();
    if args.print_default_policy {
        print!("{}", wl_proxy::policy::DEFAULT_POLICY);
        return Ok(0);
    }
    let cfg = config(&args)?;
    // Every client's fd budget (shm pools, queued fds) must fit under the
    // fd limit; a desktop's soft limit of 1024 holds less than one.
    if let Err(e) = wl_proxy::proxy::raise_fd_limit() {
        tracing::warn!("wl-proxy: cannot raise the fd limit: {e}");
    }
    let mut proxy = Proxy::new(cfg)?;
    if let Some(path) = &args.listen {
        let l =
            UnixListener::bind(path).with_context(|| format!("listen on {}", path.display()))?;
        proxy.listen(l)?;
        let handle = proxy.handle();
        // SIGINT/SIGTERM remove the socket and end the proxy (the proxy's own
        // filter has no unlink).
        let sigs = signals()?;
        let path = path.clone();
        let mode = args.seccomp;
        std::thread::Builder::new()
            .name("signals".into())
            .spawn(move || {
                if let Err(e) = seccomp_policies::install(ThreadKind::WlProxyHelper, mode) {
                    eprintln!("wl-proxy: {e}");
                    std::process::exit(1);
                }
                let mut sig = 0;
                // SAFETY: `sigs` is a valid, initialised signal set; `sig` is a valid out-pointer.
                unsafe { libc::sigwait(&sigs, &mut sig) };
                let _ = std::fs::remove_file(&path);
                handle.stop();
            })?;
        seccomp_policies::install(ThreadKind::WlProxy, args.seccomp)?;
        proxy.run()?;
        return Ok(0);
    }
    if args.command.is_empty() {
        bail!("give --listen SOCKET or -- COMMAND");
    }
    let dir = tempfile::Builder::new().prefix("wl-proxy-").tempdir()?;
    let sock = dir.path().join("wayland-proxy");
    proxy.listen(UnixListener::bind(&sock)?)?;
    let mut child = Command::new(&args.command[0])
        .args(&args.command[1..])
        .env("WAYLAND_DISPLAY", &sock)
        .env_remove("WAYLAND_SOCKET")
        .spawn()
        .with_context(|| format!("cannot run {}", args.command[0]))?;
    let handle = proxy.handle();
    let mode = args.seccomp;
    let waiter = std::thread::Builder::new()
        .name("wait-command".into())
        .spawn(move || {
            seccomp_policies::install(ThreadKind::WlProxyHelper, mode)?;
            let status = child.wait();
            // The socket's directory goes here: the proxy's filter has no unlink.
            drop(dir);
            handle.stop();
            Ok::<_, anyhow::Error>(status?)
        })?;
    seccomp_policies::install(ThreadKind::WlProxy, args.seccomp)?;
    proxy.run()?;
    let status = waiter
        .join()
        .map_err(|_| anyhow::anyhow!("waiter thread panicked"))??;
    use std::os::unix::process::ExitStatusExt;
    Ok(status
        .code()
        .unwrap_or_else(|| 128 + status.signal().unwrap_or(0)))
}

/// Blocks SIGINT and SIGTERM in every thread and returns the set, for sigwait.
fn signals() -> Result<libc::sigset_t> {
    let mut set = std::mem::MaybeUninit::<libc::sigset_t>::uninit();
    // SAFETY: sigemptyset initialises the set; sigaddset and pthread_sigmask get valid pointers.
    unsafe {
        libc::sigemptyset(set.as_mut_ptr());
        libc::sigaddset(set.as_mut_ptr(), libc::SIGINT);
        libc::sigaddset(set.as_mut_ptr(), libc::SIGTERM);
        let set = set.assume_init();
        if libc::pthread_sigmask(libc::SIG_BLOCK, &set, std::ptr::null_mut()) != 0 {
            bail!("pthread_sigmask failed");
        }
        Ok(set)
    }
}

//! Embedding the proxy: serve one client handed over as a connected socket
//! (as the VMM does with a guest's virtio-gpu cross-domain connection).
//!
//! `cargo run -p wl-proxy --example embed -- wayland-info` runs `wayland-info`
//! with `WAYLAND_SOCKET` set to one end of a socketpair; the other end goes to
//! the proxy, which connects to `$WAYLAND_DISPLAY` with the built-in policy.

use std::os::fd::AsRawFd;
use std::os::unix::net::UnixStream;
use std::os::unix::process::CommandExt;
use std::process::Command;
use std::sync::Arc;

use wl_proxy::{Config, Policy, Proxy};

fn main() -> anyhow::Result<()> {
    let cmd: Vec<String> = std::env::args().skip(1).collect();
    anyhow::ensure!(!cmd.is_empty(), "usage: embed COMMAND [ARGS…]");
    let cfg = Config {
        policy: Arc::new(Policy::default()),
        tag: Some("example".into()),
        upstream: Config::upstream_from_env()
            .ok_or_else(|| anyhow::anyhow!("no XDG_RUNTIME_DIR"))?,
    };
    let mut proxy = Proxy::new(cfg)?;
    let handle = proxy.handle();
    let thread = std::thread::Builder::new()
        .name("wl-proxy".into())
        .spawn(move || proxy.run())?;

    let (ours, theirs) = UnixStream::pair()?;
    handle.add_client(ours)?;
    let fd = theirs.as_raw_fd();
    let mut child = Command::new(&cmd[0]);
    child
        .args(&cmd[1..])
        .env("WAYLAND_SOCKET", fd.to_string())
        .env_remove("WAYLAND_DISPLAY");
    // SAFETY: pre_exec runs in the forked child before exec; fcntl is async-signal-safe.
    unsafe {
        child.pre_exec(move || {
            // Let the client inherit its end of the pair.
            if libc::fcntl(fd, libc::F_SETFD, 0) < 0 {
                return Err(std::io::Error::last_os_error());
            }
            Ok(())
        });
    }
    let status = child.status()?;
    drop(theirs);
    handle.stop();
    thread
        .join()
        .map_err(|_| anyhow::anyhow!("proxy thread panicked"))??;
    std::process::exit(status.code().unwrap_or(1));
}

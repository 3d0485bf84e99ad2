//! vsock throughput: vmapp's virtio-vsock (host side: Unix sockets) against
//! QEMU microvm's `vhost-vsock-device` (host side: AF_VSOCK through the host
//! kernel), same guest and measuring program (`/init bench vsock`), runs
//! alternating. The guest sends N MiB to the host, then receives N MiB; both
//! rates are measured in the guest.
//!
//! Run it through `cargo xtask bench vsock` (the emulated host loads
//! `vhost_vsock` for QEMU).

use std::io::{Read, Write};
use std::os::fd::OwnedFd;
use std::os::unix::fs::PermissionsExt;
use std::os::unix::net::{UnixListener, UnixStream};
use std::process::ExitCode;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use benches::{run_capture, Guest};
use clap::Parser;
use sommelier_guest::vsock_socket;

#[derive(Parser)]
struct Args {
    #[command(flatten)]
    guest: Guest,
    /// Runs per VMM.
    #[arg(long, default_value_t = 3)]
    runs: usize,
    /// MiB each way.
    #[arg(long, default_value_t = 256)]
    mib: u64,
}

const TX_PORT: u32 = 7000;
const RX_PORT: u32 = 7001;
const GUEST_CID: u32 = 3;
const METRICS: [(&str, &str); 2] = [
    ("vsock_tx_mbps", "guest → host (MB/s)"),
    ("vsock_rx_mbps", "host → guest (MB/s)"),
];

fn main() -> ExitCode {
    benches::exit("vsock-bench", run())
}

fn drain(mut s: impl Read) {
    let mut buf = vec![0u8; 256 * 1024];
    while matches!(s.read(&mut buf), Ok(n) if n > 0) {}
}

fn feed(mut s: impl Write, mib: u64) -> std::io::Result<()> {
    let buf = vec![0xa5u8; 64 * 1024];
    for _ in 0..mib * 16 {
        s.write_all(&buf)?;
    }
    Ok(())
}

/// The host's ends for one run: a sink the guest sends to, and a source
/// that connects to the guest once it listens.
enum HostSide {
    Unix(std::path::PathBuf),
    Vsock,
}

impl HostSide {
    fn start_sink(&self) -> Result<std::thread::JoinHandle<()>> {
        match self {
            HostSide::Unix(p) => {
                let path = format!("{}_{TX_PORT}", p.display());
                let _ = std::fs::remove_file(&path);
                let l = UnixListener::bind(&path).context("binding the sink")?;
                Ok(std::thread::spawn(move || {
                    if let Ok((s, _)) = l.accept() {
                        drain(s);
                    }
                }))
            }
            HostSide::Vsock => {
                let l = vsock_socket::listen(TX_PORT)
                    .context("AF_VSOCK listen on the host (is vhost_vsock loaded?)")?;
                Ok(std::thread::spawn(move || {
                    if let Ok(s) = vsock_socket::accept(&l) {
                        drain(s);
                    }
                }))
            }
        }
    }

    /// Connects to the guest's RX_PORT, retrying until it listens.
    fn connect(&self, deadline: Instant, vm_done: &AtomicBool) -> Result<std::fs::File> {
        loop {
            if Instant::now() > deadline || vm_done.load(Ordering::SeqCst) {
                bail!("the guest never listened on port {RX_PORT}");
            }
            match self {
                HostSide::Unix(p) => {
                    if let Ok(mut s) = UnixStream::connect(p) {
                        s.write_all(format!("CONNECT {RX_PORT}\n").as_bytes())?;
                        let mut line = Vec::new();
                        let mut b = [0u8; 1];
                        while s.read(&mut b).unwrap_or(0) == 1 && b[0] != b'\n' {
                            line.push(b[0]);
                        }
                        if line.starts_with(b"OK ") {
                            return Ok(std::fs::File::from(OwnedFd::from(s)));
                        }
                    }
                }
                HostSide::Vsock => {
                    if let Ok(s) = vsock_socket::connect(GUEST_CID, RX_PORT) {
                        return Ok(s);
                    }
                }
            }
            std::thread::sleep(Duration::from_millis(250));
        }
    }
}

fn run() -> Result<()> {
    let a = Args::parse();
    let dir = std::env::temp_dir().join(format!("vmapp-vsock-bench-{}", std::process::id()));
    std::fs::create_dir_all(&dir)?;
    // The jail binds the socket's directory whole: the VM's own, 0700.
    std::fs::set_permissions(&dir, std::fs::Permissions::from_mode(0o700))?;
    let sock = dir.join("v.sock");
    let sock_s = sock.display().to_string();
    let (cid, tx, rx, mib) = (
        GUEST_CID.to_string(),
        TX_PORT.to_string(),
        RX_PORT.to_string(),
        a.mib.to_string(),
    );
    let argv = ["/init", "bench", "vsock", "2", &tx, &rx, &mib];
    let dev = format!("vhost-vsock-device,guest-cid={cid}");
    let timeout = Duration::from_secs(1800);
    let mut results: benches::Results = [Vec::new(), Vec::new()];
    for i in 0..a.runs {
        let order = if i % 2 == 0 { [0, 1] } else { [1, 0] };
        for who in order {
            let (cmd, side) = if who == 0 {
                let _ = std::fs::remove_file(&sock);
                (
                    a.guest.vmapp(&["--vsock", &sock_s, "--cid", &cid], &argv),
                    HostSide::Unix(sock.clone()),
                )
            } else {
                (a.guest.qemu(&["-device", &dev], &argv), HostSide::Vsock)
            };
            let sink = side.start_sink()?;
            let done = Arc::new(AtomicBool::new(false));
            let d = done.clone();
            let vm = std::thread::spawn(move || {
                let r = run_capture(cmd, timeout);
                d.store(true, Ordering::SeqCst);
                r
            });
            // Closing after the data is the guest's end of stream.
            let source = side
                .connect(Instant::now() + timeout, &done)
                .and_then(|s| Ok(feed(&s, a.mib)?));
            let out = vm.join().map_err(|_| anyhow::anyhow!("VMM thread"))??;
            source.with_context(|| format!("guest output:\n{out}"))?;
            let _ = sink.join();
            benches::record(&mut results, who, i, "vsock-bench", &out, &METRICS)?;
        }
    }
    let _ = std::fs::remove_dir_all(&dir);
    let title = format!("metric (median of {} runs, {} MiB each way)", a.runs, a.mib);
    benches::print_table(&title, "QEMU microvm + vhost-vsock", &METRICS, &results);
    Ok(())
}

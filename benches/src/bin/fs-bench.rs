//! virtio-fs benchmark: vmapp's in-process virtio-fs against QEMU microvm's
//! `vhost-user-fs-device` with virtiofsd, sharing the same host directory,
//! same guest kernel and measuring program (`/init bench fs`), runs
//! alternating. Both serve with the same caching (`auto`: 1 s attribute and
//! entry timeouts, no DAX, no writeback cache).
//!
//! Measured in the guest: a sequential write (then fsync) and, after the
//! guest drops its caches, a sequential read of one large file (MB/s); and
//! create + stat + unlink of many small files (files per second).
//!
//! Run it through `cargo xtask bench fs` (virtiofsd: `--virtiofsd PATH`, by
//! default the one `cargo install virtiofsd` put under `target/virtiofsd`).

use std::process::{Command, ExitCode, Stdio};
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use benches::{run_capture, Guest};
use clap::Parser;

#[derive(Parser)]
struct Args {
    #[command(flatten)]
    guest: Guest,
    /// Runs per VMM.
    #[arg(long, default_value_t = 3)]
    runs: usize,
    /// MiB written and read sequentially.
    #[arg(long, default_value_t = 256)]
    mib: u64,
    /// Small files created, stat'ed and unlinked.
    #[arg(long, default_value_t = 10000)]
    files: u64,
    /// The virtiofsd binary (default: target/virtiofsd/bin/virtiofsd).
    #[arg(long)]
    virtiofsd: Option<String>,
}

const METRICS: [(&str, &str); 3] = [
    (
        "fs_seqwrite_mbps",
        "sequential write + fsync, 1 MiB blocks (MB/s)",
    ),
    (
        "fs_seqread_mbps",
        "sequential read, cold guest cache (MB/s)",
    ),
    (
        "fs_files_per_s",
        "create + stat + unlink of small files (files/s)",
    ),
];

fn main() -> ExitCode {
    benches::exit("fs-bench", run())
}

fn virtiofsd_path(a: &Args) -> Result<String> {
    if let Some(p) = &a.virtiofsd {
        return Ok(p.clone());
    }
    let vmapp = std::path::Path::new(&a.guest.vmapp);
    let p = vmapp
        .parent()
        .and_then(|d| d.parent())
        .and_then(|d| d.parent())
        .map(|t| t.join("virtiofsd/bin/virtiofsd"))
        .filter(|p| p.exists())
        .context("no virtiofsd: `cargo install virtiofsd --version 1.14.0 --no-default-features --root target/virtiofsd` (needs libcap-ng-dev), or pass --virtiofsd")?;
    Ok(p.display().to_string())
}

fn run() -> Result<()> {
    let a = Args::parse();
    let vfsd = virtiofsd_path(&a)?;
    let dir = std::env::temp_dir().join(format!("vmapp-fs-bench-{}", std::process::id()));
    let share = dir.join("share");
    std::fs::create_dir_all(&share)?;
    let share_s = share.display().to_string();
    let sock = dir.join("vfsd.sock");
    let sock_s = sock.display().to_string();
    let (mib, files) = (a.mib.to_string(), a.files.to_string());
    let argv = ["/init", "bench", "fs", "bench", &mib, &files];
    let share_arg = format!("{share_s}:bench");
    let memobj = format!(
        "memory-backend-memfd,id=mem,size={}M,share=on",
        a.guest.memory
    );
    let chardev = format!("socket,id=vfs,path={sock_s}");
    let timeout = Duration::from_secs(3600);
    let mut results: benches::Results = [Vec::new(), Vec::new()];
    for i in 0..a.runs {
        let order = if i % 2 == 0 { [0, 1] } else { [1, 0] };
        for who in order {
            let out = if who == 0 {
                run_capture(a.guest.vmapp(&["--share", &share_arg], &argv), timeout)?
            } else {
                let _ = std::fs::remove_file(&sock);
                let mut d = Command::new(&vfsd)
                    .args(["--socket-path", &sock_s, "--shared-dir", &share_s])
                    .args(["--cache", "auto", "--sandbox", "none"])
                    .stdin(Stdio::null())
                    .stdout(Stdio::null())
                    .stderr(Stdio::null())
                    .spawn()
                    .with_context(|| format!("starting {vfsd}"))?;
                let t = Instant::now();
                while !sock.exists() {
                    if t.elapsed() > Duration::from_secs(60) {
                        let _ = d.kill();
                        bail!("virtiofsd did not create its socket");
                    }
                    std::thread::sleep(Duration::from_millis(20));
                }
                let r = run_capture(
                    a.guest.qemu(
                        &[
                            "-object",
                            &memobj,
                            "-machine",
                            "memory-backend=mem",
                            "-chardev",
                            &chardev,
                            "-device",
                            "vhost-user-fs-device,chardev=vfs,tag=bench",
                        ],
                        &argv,
                    ),
                    timeout,
                );
                let _ = d.kill();
                let _ = d.wait();
                r?
            };
            benches::record(&mut results, who, i, "fs-bench", &out, &METRICS)?;
        }
    }
    let _ = std::fs::remove_dir_all(&dir);
    let title = format!(
        "metric (median of {} runs, {} MiB, 1 vCPU)",
        a.runs, a.guest.memory
    );
    benches::print_table(&title, "QEMU + virtiofsd", &METRICS, &results);
    Ok(())
}

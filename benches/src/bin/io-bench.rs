//! Block I/O benchmark: vmapp's virtio-blk against QEMU microvm's
//! `virtio-blk-device`, same raw image file, same guest kernel and measuring
//! program (`/init bench blk`, O_DIRECT in the guest), runs alternating.
//!
//! Measured in the guest: sequential 1 MiB writes and reads (MB/s) and 4 KiB
//! random reads at queue depth 1 (IOPS). Both VMMs use the host page cache
//! (vmapp: plain `preadv`/`pwritev`; QEMU: its default `cache=writeback`).
//!
//! Run it through `cargo xtask bench io`.

use std::process::ExitCode;
use std::time::Duration;

use anyhow::{Context, Result};
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
    #[arg(long, default_value_t = 128)]
    mib: u64,
    /// Seconds of random reads.
    #[arg(long, default_value_t = 5)]
    secs: u64,
}

const METRICS: [(&str, &str); 3] = [
    ("seqwrite_mbps", "sequential write, 1 MiB blocks (MB/s)"),
    ("seqread_mbps", "sequential read, 1 MiB blocks (MB/s)"),
    ("randread_iops", "random read, 4 KiB, QD1 (IOPS)"),
];

fn main() -> ExitCode {
    benches::exit("io-bench", run())
}

fn run() -> Result<()> {
    let a = Args::parse();
    let dir = std::env::temp_dir().join(format!("vmapp-io-bench-{}", std::process::id()));
    std::fs::create_dir_all(&dir)?;
    let img = dir.join("disk.img");
    let f = std::fs::File::create(&img).context("creating the disk image")?;
    f.set_len((a.mib + 64) << 20)?;
    drop(f);
    let img_s = img.display().to_string();
    let (mib, secs) = (a.mib.to_string(), a.secs.to_string());
    let argv = ["/init", "bench", "blk", "/dev/vda", &mib, &secs];
    let drive = format!("file={img_s},if=none,id=d0,format=raw");
    let timeout = Duration::from_secs(1200);
    let mut results: benches::Results = [Vec::new(), Vec::new()];
    for i in 0..a.runs {
        let order = if i % 2 == 0 { [0, 1] } else { [1, 0] };
        for who in order {
            let cmd = if who == 0 {
                a.guest.vmapp(&["--disk", &img_s], &argv)
            } else {
                a.guest.qemu(
                    &["-drive", &drive, "-device", "virtio-blk-device,drive=d0"],
                    &argv,
                )
            };
            let out = run_capture(cmd, timeout)?;
            benches::record(&mut results, who, i, "io-bench", &out, &METRICS)?;
        }
    }
    let _ = std::fs::remove_dir_all(&dir);
    let title = format!(
        "metric (median of {} runs, {} MiB, 1 vCPU)",
        a.runs, a.guest.memory
    );
    benches::print_table(&title, "QEMU microvm", &METRICS, &results);
    Ok(())
}

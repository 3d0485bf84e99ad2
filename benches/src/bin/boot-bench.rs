//! Boot benchmark: `vmapp launch` against `qemu-system-x86_64 -M microvm`,
//! same kernel, same initramfs, same memory and vCPUs, runs alternating.
//!
//! Measured per run: process start → the guest command's first line on the
//! serial console (both VMMs run the same `/init`, which runs the command
//! right after mounting and loading modules), the VMM's resident memory
//! outside guest RAM at that moment, and its peak RSS.
//!
//! Run it through `cargo xtask bench`, which prepares the guest image and runs
//! this where KVM boots stock kernels.

use std::process::ExitCode;
use std::time::Duration;

use anyhow::Result;
use benches::{median, run_until_marker, Guest, Run};
use clap::Parser;

#[derive(Parser)]
struct Args {
    #[command(flatten)]
    guest: Guest,
    /// Runs per VMM.
    #[arg(long, default_value_t = 10)]
    runs: usize,
}

const MARKER: &str = "@@bench-ready";

fn main() -> ExitCode {
    match run() {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("boot-bench: {e:#}");
            ExitCode::FAILURE
        }
    }
}

fn run() -> Result<()> {
    let a = Args::parse();
    let guest_cmd = ["sh", "-c", "echo @@bench-ready; sleep 1"];
    let timeout = Duration::from_secs(120);
    let guest_kib = a.guest.memory * 1024;
    let vmapp = || a.guest.vmapp(&[], &guest_cmd);
    let qemu = || a.guest.qemu(&[], &guest_cmd);

    let mut ours: Vec<Run> = Vec::new();
    let mut theirs: Vec<Run> = Vec::new();
    for i in 0..a.runs {
        // Alternate which goes first so drift on a noisy host hits both.
        let order: [bool; 2] = if i % 2 == 0 {
            [true, false]
        } else {
            [false, true]
        };
        for is_ours in order {
            let (name, cmd) = if is_ours {
                ("vmapp", vmapp())
            } else {
                ("qemu", qemu())
            };
            let r = run_until_marker(cmd, MARKER, guest_kib, timeout)?;
            eprintln!(
                "boot-bench: run {i} {name}: ready {:.0} ms, overhead RSS {} KiB, peak RSS {} KiB",
                r.ready.as_secs_f64() * 1000.0,
                r.mem.overhead_kib(),
                r.peak_rss_kib
            );
            if is_ours { &mut ours } else { &mut theirs }.push(r);
        }
    }

    let stat = |v: &[Run], f: fn(&Run) -> f64| median(&v.iter().map(f).collect::<Vec<_>>());
    let ready = |r: &Run| r.ready.as_secs_f64() * 1000.0;
    let over = |r: &Run| r.mem.overhead_kib() as f64 / 1024.0;
    let peak = |r: &Run| r.peak_rss_kib as f64 / 1024.0;
    println!(
        "| metric (median of {} runs, {} MiB, 1 vCPU) | vmapp | QEMU microvm | vmapp / QEMU |",
        a.runs, a.guest.memory
    );
    println!("|---|---|---|---|");
    for (name, f, unit) in [
        (
            "process start → guest command running",
            ready as fn(&Run) -> f64,
            "ms",
        ),
        ("VMM RSS outside guest RAM", over, "MiB"),
        ("peak RSS (guest pages touched included)", peak, "MiB"),
    ] {
        let (o, t) = (stat(&ours, f), stat(&theirs, f));
        println!("| {name} | {o:.1} {unit} | {t:.1} {unit} | {:.2} |", o / t);
    }
    Ok(())
}

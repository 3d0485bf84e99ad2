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

use std::process::{Command, ExitCode};
use std::time::Duration;

use anyhow::Result;
use benches::{median, run_until_marker, Run};
use clap::Parser;

#[derive(Parser)]
struct Args {
    /// The vmapp binary.
    #[arg(long)]
    vmapp: String,
    /// ELF vmlinux both VMMs boot (PVH entry).
    #[arg(long)]
    vmlinux: String,
    /// Initramfs both VMMs load.
    #[arg(long)]
    initramfs: String,
    /// Runs per VMM.
    #[arg(long, default_value_t = 10)]
    runs: usize,
    /// Guest memory (MiB).
    #[arg(long, default_value_t = 512)]
    memory: u64,
    /// QEMU binary.
    #[arg(long, default_value = "qemu-system-x86_64")]
    qemu: String,
}

const MARKER: &str = "@@bench-ready";

fn hex(s: &[&str]) -> String {
    s.join("\0").bytes().map(|b| format!("{b:02x}")).collect()
}

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
    let guest_kib = a.memory * 1024;
    let mem = a.memory.to_string();

    let vmapp = || {
        let mut c = Command::new(&a.vmapp);
        c.args([
            "launch",
            "--memory",
            &mem,
            "--cpus",
            "1",
            "--console",
            "stdio",
        ])
        .args(["--kernel", &a.vmlinux, "--initramfs", &a.initramfs])
        .args(["--cmdline", "quiet loglevel=0", "--"])
        .args(guest_cmd);
        c
    };
    // What vmapp puts on the command line, minus its virtio-mmio slots
    // (QEMU's microvm describes its own in its DSDT).
    let append = format!(
        "console=ttyS0 panic=-1 pci=off quiet loglevel=0 vmapp.cmd={}",
        hex(&guest_cmd)
    );
    let qemu = || {
        let mut c = Command::new(&a.qemu);
        c.args(["-M", "microvm,x-option-roms=off,rtc=off,isa-serial=on"])
            .args(["-accel", "kvm", "-cpu", "host", "-m", &mem, "-smp", "1"])
            .args([
                "-nodefaults",
                "-no-user-config",
                "-display",
                "none",
                "-no-reboot",
            ])
            .args([
                "-serial",
                "stdio",
                "-kernel",
                &a.vmlinux,
                "-initrd",
                &a.initramfs,
            ])
            .args(["-append", &append]);
        c
    };

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
        a.runs, a.memory
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

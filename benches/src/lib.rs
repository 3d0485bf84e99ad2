//! Helpers shared by the benchmark binaries: spawning a VMM, timing a marker
//! line on its console, sampling its memory, and summarising runs.

pub mod sway;

use std::io::{BufRead, BufReader};
use std::process::{Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};

/// The process that runs the VM of a VMM started as `pid`: vmapp's jailed
/// child when `pid` is vmapp with its jail (the parent only waits, with
/// little memory of its own), else `pid` itself.
pub fn vm_process(pid: i32) -> i32 {
    let children =
        std::fs::read_to_string(format!("/proc/{pid}/task/{pid}/children")).unwrap_or_default();
    let comm = |p: &str| std::fs::read_to_string(format!("/proc/{p}/comm")).unwrap_or_default();
    let own = comm(&pid.to_string());
    children
        .split_whitespace()
        .find(|c| comm(c) == own && own.trim() == "vmapp")
        .and_then(|c| c.parse().ok())
        .unwrap_or(pid)
}

/// Memory of a process, from `/proc/PID/smaps`.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct MemSample {
    /// Resident set, all mappings (KiB).
    pub rss_kib: u64,
    /// Resident set of the mappings at least as large as guest RAM (KiB).
    pub guest_rss_kib: u64,
}

impl MemSample {
    /// Resident memory that is not guest RAM: the VMM's own cost.
    pub fn overhead_kib(&self) -> u64 {
        self.rss_kib.saturating_sub(self.guest_rss_kib)
    }
}

/// Sums `Rss:` over the mappings of an smaps file; mappings whose `Size:` is at
/// least `guest_kib` count as guest RAM (both vmapp and QEMU map guest RAM as
/// one anonymous mapping per RAM range, and nothing else of theirs is that big).
pub fn parse_smaps(text: &str, guest_kib: u64) -> MemSample {
    let mut s = MemSample::default();
    let mut big = false;
    for line in text.lines() {
        let field = |name: &str| -> Option<u64> {
            line.strip_prefix(name)?
                .trim()
                .trim_end_matches("kB")
                .trim()
                .parse()
                .ok()
        };
        if let Some(size) = field("Size:") {
            big = size >= guest_kib;
        } else if let Some(rss) = field("Rss:") {
            s.rss_kib += rss;
            if big {
                s.guest_rss_kib += rss;
            }
        }
    }
    s
}

/// One VMM run.
#[derive(Clone, Copy, Debug)]
pub struct Run {
    /// Process start to the marker line on the console.
    pub ready: Duration,
    /// Memory when the marker appeared.
    pub mem: MemSample,
    /// Peak resident set over the whole run (KiB, `ru_maxrss`).
    pub peak_rss_kib: u64,
}

/// Spawns `cmd`, waits for a stdout line containing `marker`, samples the
/// process's memory then, and waits for it to exit successfully (killing it
/// after `timeout`).
pub fn run_until_marker(
    mut cmd: Command,
    marker: &str,
    guest_kib: u64,
    timeout: Duration,
) -> Result<Run> {
    let start = Instant::now();
    let mut child = spawn_piped(&mut cmd)?;
    let pid = child.id() as libc::pid_t;
    let stdout = child.stdout.take().context("stdout")?;
    let (tx, rx) = mpsc::channel();
    let marker = marker.to_string();
    let reader = std::thread::spawn(move || {
        let mut seen = Vec::new();
        for line in BufReader::new(stdout).lines().map_while(Result::ok) {
            if line.contains(&marker) {
                let _ = tx.send(start.elapsed());
            }
            seen.push(line);
        }
        seen.join("\n")
    });
    let mut stderr = child.stderr.take().context("stderr")?;
    let err_reader = std::thread::spawn(move || {
        use std::io::Read;
        let mut e = String::new();
        let _ = stderr.read_to_string(&mut e);
        e
    });
    let ready = rx.recv_timeout(timeout);
    let mem = match ready {
        Ok(_) => std::fs::read_to_string(format!("/proc/{}/smaps", vm_process(pid)))
            .map(|t| parse_smaps(&t, guest_kib))
            .unwrap_or_default(),
        Err(_) => {
            let _ = child.kill();
            MemSample::default()
        }
    };
    let mut status = 0;
    // SAFETY: an all-zero rusage is a valid value for wait4 to overwrite.
    let mut usage: libc::rusage = unsafe { std::mem::zeroed() };
    let mut killed = false;
    let r = loop {
        // SAFETY: pid is our child, not yet reaped; both pointers are valid.
        let r = unsafe { libc::wait4(pid, &mut status, libc::WNOHANG, &mut usage) };
        if r != 0 {
            break r;
        }
        if start.elapsed() > timeout && !killed {
            let _ = child.kill();
            killed = true;
        }
        std::thread::sleep(Duration::from_millis(5));
    };
    let out = reader.join().unwrap_or_default();
    let err = err_reader.join().unwrap_or_default();
    if killed {
        bail!("the VMM did not exit within {timeout:?}; output:\n{out}\n{err}");
    }
    let Ok(ready) = ready else {
        bail!("no marker within {timeout:?}; output:\n{out}\n{err}");
    };
    if r != pid || !libc::WIFEXITED(status) || libc::WEXITSTATUS(status) != 0 {
        bail!("the VMM did not exit cleanly (wait status {status:#x}); output:\n{out}\n{err}");
    }
    if mem.rss_kib == 0 {
        bail!("could not sample the VMM's memory");
    }
    Ok(Run {
        ready,
        mem,
        peak_rss_kib: usage.ru_maxrss as u64,
    })
}

/// Median of `v` (the mean of the middle two for an even count).
pub fn median(v: &[f64]) -> f64 {
    let mut s = v.to_vec();
    s.sort_by(f64::total_cmp);
    let n = s.len();
    match n {
        0 => f64::NAN,
        _ if n % 2 == 1 => s[n / 2],
        _ => (s[n / 2 - 1] + s[n / 2]) / 2.0,
    }
}

/// The same guest under both VMMs: kernel, initramfs, memory, binaries.
#[derive(clap::Args, Clone, Debug)]
pub struct Guest {
    /// The vmapp binary.
    #[arg(long)]
    pub vmapp: String,
    /// ELF vmlinux both VMMs boot (PVH entry).
    #[arg(long)]
    pub vmlinux: String,
    /// Initramfs both VMMs load.
    #[arg(long)]
    pub initramfs: String,
    /// Guest memory (MiB).
    #[arg(long, default_value_t = 512)]
    pub memory: u64,
    /// QEMU binary.
    #[arg(long, default_value = "qemu-system-x86_64")]
    pub qemu: String,
}

/// `argv` as the guest init reads `vmapp.cmd=`.
pub fn hex(argv: &[&str]) -> String {
    let argv: Vec<String> = argv.iter().map(|a| a.to_string()).collect();
    sommelier_guest::proto::encode_argv(&argv)
}

impl Guest {
    /// `vmapp launch` of `argv` with 1 vCPU, the serial console on stdout and
    /// the same quiet command line QEMU gets; `extra` goes before `--`.
    pub fn vmapp(&self, extra: &[&str], argv: &[&str]) -> Command {
        self.vmapp_cmdline("", extra, argv)
    }

    /// [`Guest::vmapp`] with `cmdline` added to the guest's command line.
    pub fn vmapp_cmdline(&self, cmdline: &str, extra: &[&str], argv: &[&str]) -> Command {
        let mem = self.memory.to_string();
        let cmdline = format!("quiet loglevel=0 {cmdline}");
        let mut c = Command::new(&self.vmapp);
        c.args([
            "launch",
            "--memory",
            &mem,
            "--cpus",
            "1",
            "--console",
            "stdio",
        ])
        .args(["--kernel", &self.vmlinux, "--initramfs", &self.initramfs])
        .args(["--cmdline", cmdline.trim_end()])
        .args(extra)
        .arg("--")
        .args(argv);
        c
    }

    /// `qemu-system-x86_64 -M microvm` running `argv` in the same guest, with
    /// what vmapp puts on the command line minus its virtio-mmio slots
    /// (microvm describes its own in its DSDT); `extra` are more QEMU options.
    pub fn qemu(&self, extra: &[&str], argv: &[&str]) -> Command {
        let mem = self.memory.to_string();
        let append = format!(
            "console=ttyS0 panic=-1 pci=off quiet loglevel=0 vmapp.cmd={}",
            hex(argv)
        );
        let mut c = Command::new(&self.qemu);
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
                &self.vmlinux,
                "-initrd",
                &self.initramfs,
            ])
            .args(["-append", &append])
            .args(extra);
        c
    }
}

/// Starts `cmd` with stdin closed and stdout/stderr piped.
fn spawn_piped(cmd: &mut Command) -> Result<std::process::Child> {
    cmd.stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .with_context(|| format!("cannot start {:?}", cmd.get_program()))
}

/// Runs `cmd` to completion (killed after `timeout`); returns its stdout.
pub fn run_capture(mut cmd: Command, timeout: Duration) -> Result<String> {
    let mut child = spawn_piped(&mut cmd)?;
    let mut out = child.stdout.take().context("stdout")?;
    let mut err = child.stderr.take().context("stderr")?;
    let ro = std::thread::spawn(move || {
        let mut s = String::new();
        let _ = std::io::Read::read_to_string(&mut out, &mut s);
        s
    });
    let re = std::thread::spawn(move || {
        let mut s = String::new();
        let _ = std::io::Read::read_to_string(&mut err, &mut s);
        s
    });
    let start = Instant::now();
    let status = loop {
        if let Some(st) = child.try_wait()? {
            break Some(st);
        }
        if start.elapsed() > timeout {
            let _ = child.kill();
            let _ = child.wait();
            break None;
        }
        std::thread::sleep(Duration::from_millis(20));
    };
    let out = ro.join().unwrap_or_default();
    let err = re.join().unwrap_or_default();
    match status {
        Some(st) if st.success() => Ok(out),
        Some(st) => bail!("{:?} failed ({st}):\n{out}\n{err}", cmd.get_program()),
        None => bail!(
            "{:?} did not finish within {timeout:?}:\n{out}\n{err}",
            cmd.get_program()
        ),
    }
}

/// The number after `@@key=` in `out`.
pub fn metric(out: &str, key: &str) -> Result<f64> {
    let k = format!("@@{key}=");
    out.lines()
        .find_map(|l| l.trim().strip_prefix(&k))
        .and_then(|v| v.trim().parse().ok())
        .with_context(|| format!("no {k} in the guest's output:\n{out}"))
}

/// Per-metric results of both VMMs: `[vmapp, reference]`, one `Vec` of
/// metric values per run.
pub type Results = [Vec<Vec<f64>>; 2];

/// Reads `metrics` from one run's guest output into `results[who]`.
pub fn record(
    results: &mut Results,
    who: usize,
    run: usize,
    tool: &str,
    out: &str,
    metrics: &[(&str, &str)],
) -> Result<()> {
    let v: Vec<f64> = metrics
        .iter()
        .map(|(k, _)| metric(out, k))
        .collect::<Result<_>>()?;
    eprintln!("{tool}: run {run} {}: {v:?}", ["vmapp", "qemu"][who]);
    results[who].push(v);
    Ok(())
}

/// Prints the markdown table of medians and ratios.
pub fn print_table(title: &str, reference: &str, metrics: &[(&str, &str)], results: &Results) {
    println!("| {title} | vmapp | {reference} | vmapp / QEMU |");
    println!("|---|---|---|---|");
    for (j, (_, label)) in metrics.iter().enumerate() {
        let m = |w: usize| median(&results[w].iter().map(|r| r[j]).collect::<Vec<_>>());
        let (ours, theirs) = (m(0), m(1));
        println!(
            "| {label} | {ours:.1} | {theirs:.1} | {:.2} |",
            ours / theirs
        );
    }
}

/// One row of [`print_table_spread`]: `median (min–max)`.
pub fn with_spread(v: &[f64]) -> String {
    let lo = v.iter().copied().fold(f64::INFINITY, f64::min);
    let hi = v.iter().copied().fold(f64::NEG_INFINITY, f64::max);
    format!("{:.1} ({lo:.1}–{hi:.1})", median(v))
}

/// [`print_table`] with each side's spread over the runs next to its
/// median: storage with latency varies run to run, and a median alone
/// hides a slow run of one side.
pub fn print_table_spread(
    title: &str,
    reference: &str,
    metrics: &[(&str, &str)],
    results: &Results,
) {
    println!("| {title} | vmapp median (min–max) | {reference} median (min–max) | vmapp / QEMU |");
    println!("|---|---|---|---|");
    for (j, (_, label)) in metrics.iter().enumerate() {
        let col = |w: usize| results[w].iter().map(|r| r[j]).collect::<Vec<_>>();
        let (ours, theirs) = (col(0), col(1));
        println!(
            "| {label} | {} | {} | {:.2} |",
            with_spread(&ours),
            with_spread(&theirs),
            median(&ours) / median(&theirs)
        );
    }
}

/// A benchmark binary's exit: the error on stderr, prefixed by its name.
pub fn exit(tool: &str, r: Result<()>) -> std::process::ExitCode {
    match r {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("{tool}: {e:#}");
            std::process::ExitCode::FAILURE
        }
    }
}

/// CPU ticks of every thread on this host, by "process/thread" name.
pub fn thread_ticks() -> Vec<(String, u64)> {
    sommelier_guest::procstat::thread_ticks(true)
}

pub use sommelier_guest::procstat::ticks_since;

/// KVM's event counters on this host (all VMs, `/sys/kernel/debug/kvm`;
/// empty where debugfs is not mounted).
pub fn kvm_stats() -> Vec<(&'static str, u64)> {
    [
        "exits",
        "mmio_exits",
        "io_exits",
        "irq_exits",
        "halt_exits",
        "irq_injections",
        "insn_emulation",
        "pf_taken",
    ]
    .into_iter()
    .filter_map(|n| {
        let v = std::fs::read_to_string(format!("/sys/kernel/debug/kvm/{n}")).ok()?;
        Some((n, v.trim().parse().ok()?))
    })
    .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn metrics_and_hex() {
        let out = "noise\r\n@@seqread_mbps=12.5\r\n@@x=abc\n";
        assert_eq!(metric(out, "seqread_mbps").unwrap(), 12.5);
        assert!(metric(out, "x").is_err());
        assert!(metric(out, "missing").is_err());
        assert_eq!(hex(&["a", "b"]), "610062");
    }

    #[test]
    fn a_spread_shows_the_slowest_and_fastest_run() {
        assert_eq!(with_spread(&[2.5, 10.8, 2.3]), "2.5 (2.3–10.8)");
        assert_eq!(with_spread(&[4.0]), "4.0 (4.0–4.0)");
    }

    #[test]
    fn smaps_separates_guest_ram() {
        let text = "\
55d0-55e0 r-xp 00000000 08:01 1 /usr/bin/vmapp
Size:                 64 kB
Rss:                  40 kB
7f00-7f20 rw-p 00000000 00:00 0
Size:             524288 kB
Rss:              100000 kB
7f30-7f31 rw-p 00000000 00:00 0
Size:               2048 kB
Rss:                1000 kB
";
        let s = parse_smaps(text, 524288);
        assert_eq!(s.rss_kib, 101040);
        assert_eq!(s.guest_rss_kib, 100000);
        assert_eq!(s.overhead_kib(), 1040);
    }

    #[test]
    fn median_of_odd_and_even() {
        assert_eq!(median(&[3.0, 1.0, 2.0]), 2.0);
        assert_eq!(median(&[4.0, 1.0, 3.0, 2.0]), 2.5);
        assert!(median(&[]).is_nan());
    }

    #[test]
    fn marker_timing_and_exit_of_a_real_process() {
        let mut c = Command::new("sh");
        c.args(["-c", "echo booting; sleep 0.2; echo @@ready; sleep 0.2"]);
        let r = run_until_marker(c, "@@ready", 1 << 30, Duration::from_secs(10)).unwrap();
        assert!(r.ready >= Duration::from_millis(200), "{r:?}");
        assert!(r.mem.rss_kib > 0 && r.peak_rss_kib > 0, "{r:?}");
        let mut c = Command::new("sh");
        c.args(["-c", "echo @@ready; exit 3"]);
        assert!(run_until_marker(c, "@@ready", 1 << 30, Duration::from_secs(10)).is_err());
        let mut c = Command::new("true");
        c.arg("no marker");
        assert!(run_until_marker(c, "@@ready", 1 << 30, Duration::from_secs(10)).is_err());
    }
}

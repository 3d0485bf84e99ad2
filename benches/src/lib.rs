//! Helpers shared by the benchmark binaries: spawning a VMM, timing a marker
//! line on its console, sampling its memory, and summarising runs.

use std::io::{BufRead, BufReader};
use std::process::{Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};

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
    let mut child = cmd
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .with_context(|| format!("cannot start {:?}", cmd.get_program()))?;
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
        Ok(_) => std::fs::read_to_string(format!("/proc/{pid}/smaps"))
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

#[cfg(test)]
mod tests {
    use super::*;

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

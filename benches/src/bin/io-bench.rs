//! Block I/O benchmark: vmapp's virtio-blk against QEMU microvm's
//! `virtio-blk-device` (`aio=io_uring`, the same cache mode), same raw image
//! file, same guest kernel, and the same measuring program in the guest:
//! a static `fio` (io_uring engine, `O_DIRECT` on `/dev/vda`) added to the
//! default initramfs. Runs alternate between the two VMMs.
//!
//! The matrix: sequential 1 MiB reads and writes at queue depth 1 and 16,
//! random 4 KiB reads and writes at depth 1 and 32, each on these backends:
//! - `hot`: the image in the host's page cache (tmpfs), `cache=writeback`;
//! - `delay`: storage with latency of its own, a dm-delay device (`--delay-ms`
//!   on every request) over a loop device over the image, opened
//!   `cache=none` (`O_DIRECT`) by both VMMs;
//! - `9p` (not by default): the image on a 9p mount with `cache=none` (in the
//!   emulated KVM host its writable `scratch` export, see xtask), `cache=none`.
//!
//! Run it through `cargo xtask bench io` (which builds the static fio).

use std::process::{Command, ExitCode};
use std::time::Duration;

use anyhow::{bail, Context, Result};
use benches::{run_capture, Guest};
use clap::Parser;

#[derive(Parser)]
struct Args {
    #[command(flatten)]
    guest: Guest,
    /// The static fio binary put into the guest.
    #[arg(long)]
    fio: String,
    /// Runs per VMM and backend.
    #[arg(long, default_value_t = 3)]
    runs: usize,
    /// Size of the image (MiB); fio works over all of it.
    #[arg(long, default_value_t = 256)]
    mib: u64,
    /// Seconds each fio job runs.
    #[arg(long, default_value_t = 4)]
    secs: u64,
    /// Backends, comma-separated: hot (page cache), delay (dm-delay),
    /// 9p (a 9p mount with cache=none).
    #[arg(long, default_value = "hot,delay")]
    backends: String,
    /// The delay backend's latency on every read and write (ms; dm-delay
    /// rounds it up to the kernel's timer tick).
    #[arg(long, default_value_t = 1)]
    delay_ms: u32,
    /// vmapp's engine (`aio=`): io_uring, or sync to see what the
    /// asynchronous engine changes.
    #[arg(long, default_value = "io_uring")]
    aio: String,
    /// A directory for the 9p backend's image that is already mounted
    /// (default: mount the emulated KVM host's 9p `scratch` export).
    #[arg(long)]
    slow_dir: Option<String>,
}

/// (job name, fio rw, block size, depth, metric label).
const JOBS: [(&str, &str, &str, u32, &str); 8] = [
    ("seqread-q1", "read", "1M", 1, "seq read 1 MiB QD1 (MB/s)"),
    (
        "seqread-q16",
        "read",
        "1M",
        16,
        "seq read 1 MiB QD16 (MB/s)",
    ),
    (
        "seqwrite-q1",
        "write",
        "1M",
        1,
        "seq write 1 MiB QD1 (MB/s)",
    ),
    (
        "seqwrite-q16",
        "write",
        "1M",
        16,
        "seq write 1 MiB QD16 (MB/s)",
    ),
    (
        "randread-q1",
        "randread",
        "4k",
        1,
        "rand read 4 KiB QD1 (IOPS)",
    ),
    (
        "randread-q32",
        "randread",
        "4k",
        32,
        "rand read 4 KiB QD32 (IOPS)",
    ),
    (
        "randwrite-q1",
        "randwrite",
        "4k",
        1,
        "rand write 4 KiB QD1 (IOPS)",
    ),
    (
        "randwrite-q32",
        "randwrite",
        "4k",
        32,
        "rand write 4 KiB QD32 (IOPS)",
    ),
];

fn main() -> ExitCode {
    benches::exit("io-bench", run())
}

/// fio's arguments: every job in turn (`stonewall`), terse output.
fn fio_argv(secs: u64) -> Vec<String> {
    let mut v: Vec<String> = [
        "/fio",
        "--filename=/dev/vda",
        "--direct=1",
        "--ioengine=io_uring",
        "--time_based",
        "--ramp_time=1",
        "--output-format=terse",
        "--terse-version=3",
    ]
    .iter()
    .map(|s| s.to_string())
    .collect();
    v.push(format!("--runtime={secs}"));
    for (name, rw, bs, depth, _) in JOBS {
        v.extend([
            format!("--name={name}"),
            format!("--rw={rw}"),
            format!("--bs={bs}"),
            format!("--iodepth={depth}"),
            "--stonewall".into(),
        ]);
    }
    v
}

/// The metric of each job from fio's terse (v3) lines: MB/s for the
/// sequential jobs, IOPS for the random ones.
fn parse_terse(out: &str) -> Result<Vec<f64>> {
    JOBS.iter()
        .map(|(name, rw, ..)| {
            let f: Vec<&str> = out
                .lines()
                .map(|l| l.trim().split(';').collect::<Vec<_>>())
                .find(|f| f.len() > 48 && f[0] == "3" && f[2] == *name)
                .with_context(|| format!("no terse line for fio job {name} in:\n{out}"))?;
            if f[4] != "0" {
                bail!("fio job {name} failed with error {}", f[4]);
            }
            let write = rw.contains("write");
            // 0-based: read bw KiB/s 6, IOPS 7; write bw 47, IOPS 48.
            let (bw, iops) = if write { (f[47], f[48]) } else { (f[6], f[7]) };
            let num = |s: &str| s.parse::<f64>().with_context(|| format!("{name}: {s:?}"));
            Ok(if rw.starts_with("rand") {
                num(iops)?
            } else {
                num(bw)? * 1024.0 / 1e6
            })
        })
        .collect()
}

/// The default initramfs with `/fio` added (a second cpio archive after
/// the first, which the kernel unpacks over it).
fn initramfs_with_fio(base: &str, fio: &str, out: &std::path::Path) -> Result<()> {
    let mut data = std::fs::read(base).with_context(|| format!("reading {base}"))?;
    let bin = std::fs::read(fio).with_context(|| format!("reading {fio}"))?;
    let mut c = vmapp::image::cpio::Cpio::new();
    c.file("fio", 0o755, &bin);
    while !data.len().is_multiple_of(4) {
        data.push(0);
    }
    c.finish(&mut data)?;
    std::fs::write(out, data)?;
    Ok(())
}

/// A backend: where the image lives and the cache mode both VMMs use.
struct Backend {
    name: &'static str,
    /// Directory of the image file (`hot`, `9p`).
    dir: std::path::PathBuf,
    direct: bool,
    /// What to undo: the 9p mount; the dm-delay device and its loop device.
    mounted: bool,
    delay: Option<(String, String)>,
}

fn sh(cmd: &str) -> Result<String> {
    let o = Command::new("sh").arg("-c").arg(cmd).output()?;
    if !o.status.success() {
        bail!("{cmd}: {}", String::from_utf8_lossy(&o.stderr));
    }
    Ok(String::from_utf8_lossy(&o.stdout).trim().to_string())
}

impl Backend {
    fn new(name: &str, root: &std::path::Path, a: &Args) -> Result<Self> {
        let mut b = Self {
            name: "hot",
            dir: root.to_path_buf(),
            direct: false,
            mounted: false,
            delay: None,
        };
        match (name, a.slow_dir.as_deref()) {
            ("hot", _) => {}
            ("delay", _) => {
                b.name = "delay";
                b.direct = true;
            }
            ("9p", Some(d)) => {
                b.name = "9p";
                b.dir = d.into();
                b.direct = true;
            }
            ("9p", None) => {
                b.name = "9p";
                b.dir = root.join("9p");
                b.direct = true;
                std::fs::create_dir_all(&b.dir)?;
                sh(&format!(
                    "mount -t 9p -o trans=virtio,version=9p2000.L,cache=none,msize=512000 scratch {}",
                    b.dir.display()
                ))
                .context("mounting the emulated KVM host's 9p scratch export (outside it, pass --slow-dir)")?;
                b.mounted = true;
            }
            _ => bail!("unknown backend {name} (hot, 9p, delay)"),
        }
        Ok(b)
    }

    /// The image, full of data (reads of holes would not touch the
    /// backend): a file, or for `delay` a dm-delay device over a loop
    /// device over that file (`delay_ms` on every read and write).
    fn image(&mut self, mib: u64, delay_ms: u32) -> Result<String> {
        let img = self
            .dir
            .join(format!("io-bench-{}.img", std::process::id()));
        sh(&format!(
            "dd if=/dev/urandom of={} bs=1M count={mib} status=none",
            img.display()
        ))?;
        if self.name != "delay" {
            return Ok(img.display().to_string());
        }
        let dm = format!("io-bench-{}", std::process::id());
        let lo = sh(&format!("losetup -f --show {}", img.display()))
            .context("losetup (util-linux) and the loop module")?;
        self.delay = Some((dm.clone(), lo.clone()));
        sh(&format!(
            "dmsetup create {dm} --table \"0 $(blockdev --getsz {lo}) delay {lo} 0 {delay_ms}\" && dmsetup mknodes {dm}"
        ))
        .context("dmsetup (package dmsetup) and the dm-delay module")?;
        Ok(format!("/dev/mapper/{dm}"))
    }
}

impl Drop for Backend {
    fn drop(&mut self) {
        if let Some((dm, lo)) = &self.delay {
            let _ = sh(&format!("dmsetup remove {dm}; losetup -d {lo}"));
        }
        // Before the 9p mount goes: the image lives on it.
        let _ = std::fs::remove_file(
            self.dir
                .join(format!("io-bench-{}.img", std::process::id())),
        );
        if self.mounted {
            let _ = sh(&format!("umount {}", self.dir.display()));
        }
    }
}

fn run() -> Result<()> {
    let a = Args::parse();
    let root = std::env::temp_dir().join(format!("vmapp-io-bench-{}", std::process::id()));
    std::fs::create_dir_all(&root)?;
    let mut guest = a.guest.clone();
    let initramfs = root.join("initramfs-fio.cpio");
    initramfs_with_fio(&a.guest.initramfs, &a.fio, &initramfs)?;
    guest.initramfs = initramfs.display().to_string();
    let argv = fio_argv(a.secs);
    let argv: Vec<&str> = argv.iter().map(String::as_str).collect();
    let timeout = Duration::from_secs(600 + 20 * a.secs * JOBS.len() as u64);
    let metrics: Vec<(&str, &str)> = JOBS.iter().map(|j| (j.0, j.4)).collect();
    for name in a.backends.split(',') {
        let mut backend = Backend::new(name, &root, &a)?;
        let img = backend.image(a.mib, a.delay_ms)?;
        let (cache, qcache) = if backend.direct {
            (",cache=none", "none")
        } else {
            ("", "writeback")
        };
        let disk = format!("{img}{cache},aio={}", a.aio);
        let drive = format!("file={img},if=none,id=d0,format=raw,cache={qcache},aio=io_uring");
        let mut results: benches::Results = [Vec::new(), Vec::new()];
        for i in 0..a.runs {
            let order = if i % 2 == 0 { [0, 1] } else { [1, 0] };
            for who in order {
                let cmd = if who == 0 {
                    guest.vmapp(&["--disk", &disk], &argv)
                } else {
                    guest.qemu(
                        &["-drive", &drive, "-device", "virtio-blk-device,drive=d0"],
                        &argv,
                    )
                };
                let out = run_capture(cmd, timeout)?;
                let v = parse_terse(&out)?;
                eprintln!(
                    "io-bench {}: run {i} {}: {v:?}",
                    backend.name,
                    ["vmapp", "qemu"][who]
                );
                results[who].push(v);
            }
        }
        drop(backend);
        let title = format!(
            "{} backend ({}; vmapp aio={}; median of {} runs, {} MiB image, 1 vCPU)",
            name,
            match name {
                "9p" => "9p cache=none, both VMMs cache=none".to_string(),
                "delay" => format!("dm-delay {} ms, both VMMs cache=none", a.delay_ms),
                _ => "page cache, both VMMs cache=writeback".to_string(),
            },
            a.aio,
            a.runs,
            a.mib
        );
        benches::print_table_spread(&title, "QEMU microvm", &metrics, &results);
        println!();
    }
    let _ = std::fs::remove_dir_all(&root);
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn terse_lines_give_each_jobs_metric() {
        let mut out = String::from("noise\n");
        for (k, (name, ..)) in JOBS.iter().enumerate() {
            let mut f = vec!["0"; 130];
            f[0] = "3";
            f[1] = "fio-3.33";
            f[2] = name;
            let (r, w) = (format!("{}", 1000 * (k + 1)), format!("{}", 7 * (k + 1)));
            f[6] = &r;
            f[7] = &w;
            f[47] = &r;
            f[48] = &w;
            out.push_str(&f.join(";"));
            out.push_str("\r\n");
        }
        let v = parse_terse(&out).unwrap();
        // seqread-q1: 1000 KiB/s; randread-q1 (k = 4): 35 IOPS.
        assert!((v[0] - 1.024).abs() < 1e-9, "{v:?}");
        assert_eq!(v[4], 35.0);
        assert_eq!(v[7], 56.0);
        assert!(parse_terse("noise").is_err());
        let failed = out.replacen("seqread-q1;0;0;", "seqread-q1;0;5;", 1);
        assert!(parse_terse(&failed).is_err());
    }

    #[test]
    fn every_job_runs_after_the_one_before() {
        let argv = fio_argv(3);
        assert_eq!(
            argv.iter().filter(|a| *a == "--stonewall").count(),
            JOBS.len()
        );
        assert!(argv.contains(&"--runtime=3".to_string()));
    }
}

//! The emulated KVM host, for machines whose `/dev/kvm` cannot run stock
//! kernels (PVM, or no VMX/SVM).
//!
//! QEMU's TCG emulates an AMD CPU with SVM and nested paging (`-cpu max`), so a
//! Debian kernel booted under it (the "L1 host") loads `kvm_amd` and gets a
//! real `/dev/kvm`. The L1 host mounts this machine's `/` read-only over 9p,
//! mounts fresh `/dev`, `/proc`, `/sys`, `/tmp`, `/run` inside it, and runs a
//! shell script chrooted there: the same binaries (a freshly built `target/`
//! included) run against L1's KVM. Output comes back over the serial port,
//! framed by markers, with the script's exit status.
//!
//! On a host with hardware virtualization, [`run_script`] runs the script
//! directly instead.
#![deny(missing_docs)]

use std::io::Read;
use std::os::fd::AsRawFd;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use vmapp::image::{self, Cpio};
use vmm::kvm_check::{self, KvmError};

pub mod fio;
pub mod passt;
pub mod source;

/// An exclusive lock on a file, held until dropped (the file closes).
pub(crate) struct Lock(#[allow(dead_code)] std::fs::File);

impl Lock {
    /// Waits for the lock on `path` (created if missing).
    pub(crate) fn take(path: &Path) -> Result<Self> {
        let f = std::fs::File::create(path)?;
        // SAFETY: flock on an fd we own, open for the call's duration.
        if unsafe { libc::flock(f.as_raw_fd(), libc::LOCK_EX) } != 0 {
            return Err(std::io::Error::last_os_error()).context("flock");
        }
        Ok(Self(f))
    }
}

/// Modules the L1 host loads, in this order (with their dependencies).
const L1_MODULES: &[&str] = &[
    "virtio_pci",
    "9pnet_virtio",
    "9p",
    "overlay",
    "vhost_vsock",
    "kvm_amd",
    "kvm_intel",
    // passt in network tests needs an interface with a default route.
    "tun",
    // The block benchmark's storage with latency: dm-delay over a loop device.
    "loop",
    "dm_delay",
];

/// The L1 host's `/init`.
const L1_INIT: &str = r#"#!/bin/sh
export PATH=/bin:/sbin:/usr/bin:/usr/sbin
mount -t proc proc /proc
mount -t sysfs sys /sys
mount -t devtmpfs dev /dev
stty -F /dev/console -opost 2>/dev/null
rel=$(uname -r)
for m in $(cat /etc/l1/modules); do insmod /lib/modules/$rel/$m 2>/dev/null; done
mkdir -p /host
mount -t 9p -o trans=virtio,version=9p2000.L,ro,cache=loose,msize=512000 host /host || echo "@@XTASK-L1 no 9p"
for d in dev proc sys tmp run; do :; done
mount -t devtmpfs dev /host/dev
mount -t proc proc /host/proc
mount -t sysfs sys /host/sys
# KVM's exit counters (/sys/kernel/debug/kvm), which the benchmarks report.
mount -t debugfs debugfs /host/sys/kernel/debug 2>/dev/null
mkdir -p /host/dev/pts && mount -t devpts -o ptmxmode=0666 devpts /host/dev/pts
# /tmp stays the host's /tmp (checkouts and scripts may live there), made
# writable by a tmpfs overlay whose writes vanish with the L1 host.
mkdir -p /ovl && mount -t tmpfs ovl /ovl && mkdir -p /ovl/u /ovl/w
mount -t overlay overlay -o lowerdir=/host/tmp,upperdir=/ovl/u,workdir=/ovl/w /host/tmp \
  || { echo "@@XTASK-L1 no overlay on /tmp"; mount -t tmpfs tmp /host/tmp; }
mount -t tmpfs run /host/run
script=$(sed -n 's/.*xtask\.script=\([^ ]*\).*/\1/p' /proc/cmdline)
[ -e /dev/kvm ] || echo "@@XTASK-L1 no /dev/kvm"
[ -n "$XTASK_L1_DEBUG" ] && cat /proc/mounts
# The script's own deadline comes before the host's, so that a script that
# overruns still reports what it printed (and status 124).
limit=$(sed -n 's/.*xtask\.limit=\([0-9]*\).*/\1/p' /proc/cmdline)
# The script runs with this machine's / as the root of its mount namespace,
# as on a real host (not in a chroot: user namespaces, which vmapp's jail
# uses, refuse a chrooted caller). switch_root moves /host (with what is
# mounted under it) to / and frees the initramfs.
exec switch_root /host /bin/sh -c '
echo "@@XTASK-L1-UP"
# A heartbeat on the console: a run the host has to kill shows whether the
# L1 host itself still ran (and how loaded it was) or had stopped.
(while sleep 60; do echo "@@XTASK-HEARTBEAT load $(cut -d" " -f1-3 /proc/loadavg)"; done) & hb=$!
: > /tmp/xtask.out
timeout -k 10 "$1" /bin/sh "$2" </dev/null >>/tmp/xtask.out 2>/tmp/xtask.err & sp=$!
# What the script prints also goes to the console as it comes, so that a
# run the host has to kill (the L1 host hung) still shows how far it got;
# tail reads the rest and ends once the script has.
tail -n +1 -f --pid=$sp /tmp/xtask.out | sed -u "s/^/@@XTASK-LIVE /"
wait $sp
rc=$?
kill $hb
echo
[ $rc = 124 ] && echo "xtask: the script overran its $1 s and was stopped" >> /tmp/xtask.err
echo "@@XTASK-STDOUT"
cat /tmp/xtask.out
echo "@@XTASK-STDERR"
cat /tmp/xtask.err
echo "@@XTASK-EXIT $rc"
sync
echo o > /proc/sysrq-trigger
sleep 60' sh "${limit:-3600}" "$script"
"#;

/// QEMU's arguments for an HMP monitor on `DIR/l1-monitor-PID.sock` when
/// `XTASK_DEBUG` is set (none otherwise).
fn debug_monitor(dir: &Path) -> Vec<String> {
    if std::env::var_os("XTASK_DEBUG").is_none() {
        return Vec::new();
    }
    let sock = dir.join(format!("l1-monitor-{}.sock", std::process::id()));
    eprintln!("xtask: L1 monitor on {}", sock.display());
    vec![
        "-monitor".into(),
        format!("unix:{},server=on,wait=off", sock.display()),
    ]
}

/// How commands that need KVM run on this machine.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Host {
    /// `/dev/kvm` runs stock kernels: run directly.
    Direct,
    /// Run inside the emulated KVM host (QEMU TCG with nested SVM).
    Emulated,
}

/// Detects which [`Host`] this machine needs. `XTASK_HOST=direct|emulated`
/// overrides the detection.
pub fn host() -> Host {
    match std::env::var("XTASK_HOST").as_deref() {
        Ok("direct") => return Host::Direct,
        Ok("emulated") => return Host::Emulated,
        _ => {}
    }
    match kvm_check::open() {
        Ok(_) => Host::Direct,
        Err(KvmError::Pvm | KvmError::NoHardwareVirt | KvmError::NoDevice) => Host::Emulated,
        // No permission or a missing capability: running directly gives the
        // user vmapp's own message.
        Err(_) => Host::Direct,
    }
}

/// What a script printed and how it ended.
#[derive(Clone, Debug)]
pub struct Output {
    /// Exit status of the script.
    pub status: i32,
    /// Its stdout.
    pub stdout: String,
    /// Its stderr.
    pub stderr: String,
}

/// Files of the emulated host, built from the same Debian kernel as the guest.
pub struct EmulatedHost {
    kernel: PathBuf,
    initramfs: PathBuf,
}

/// The workspace's target directory (absolute: it goes on `PATH`).
pub fn target_dir() -> PathBuf {
    let d = std::env::var_os("CARGO_TARGET_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| Path::new(env!("CARGO_MANIFEST_DIR")).join("../target"));
    std::path::absolute(&d).unwrap_or(d)
}

/// The guest-image cache `cargo xtask test` uses: `target/xdg-cache`,
/// whatever `XDG_CACHE_HOME` says. The tests run vmapp as root and as an
/// unprivileged user (uid 65534), with tmpfs mounted over `/root` and `/home`
/// in some: a user's own cache (`~/.cache`, root's 0700) is neither readable
/// by every test user nor visible in every test, and vmapp would then try to
/// download a guest where there is no network. Created 0755; fails, naming
/// the directory, when a directory on the way is closed to other users.
pub fn test_cache(target: &Path) -> Result<PathBuf> {
    use std::os::unix::fs::PermissionsExt;
    let dir = target.join("xdg-cache");
    std::fs::create_dir_all(dir.join("vmapp"))
        .with_context(|| format!("creating {}", dir.display()))?;
    for d in [dir.clone(), dir.join("vmapp")] {
        std::fs::set_permissions(&d, std::fs::Permissions::from_mode(0o755))?;
    }
    let dir = dir.canonicalize()?;
    for a in dir.ancestors() {
        let mode = std::fs::metadata(a)?.permissions().mode();
        if mode & 0o001 == 0 {
            bail!(
                "{} (mode {:o}) is closed to other users, and the tests run vmapp as uid 65534 \
                 too: put the checkout (or CARGO_TARGET_DIR) where every user may enter",
                a.display(),
                mode & 0o7777
            );
        }
    }
    Ok(dir)
}

/// The L1 host's writable 9p export (tag `scratch`), created if missing.
fn scratch_dir() -> Result<PathBuf> {
    let d = target_tmp().join("scratch");
    std::fs::create_dir_all(&d)?;
    Ok(d.canonicalize()?)
}

fn target_tmp() -> PathBuf {
    // Scripts must be visible inside L1, which sees this machine's `/`
    // read-only: keep them under the workspace's target dir.
    target_dir().join("xtask")
}

impl EmulatedHost {
    /// Builds (or reuses) the L1 host's initramfs in the vmapp cache.
    pub fn prepare() -> Result<Self> {
        let cache = image::cache_dir();
        let dir = cache.join("emulated-host");
        std::fs::create_dir_all(&dir)?;
        let _lock = Lock::take(&dir.join("lock"))?;
        let packages = image::resolve_packages()?;
        let stamp = format!(
            "{} {} {}\n{L1_INIT}{L1_MODULES:?}",
            packages.0.name, packages.0.version, packages.1.version
        );
        let tree = image::kernel_tree(&cache, packages)?;
        let initramfs = dir.join("l1.cpio");
        let stamp_path = dir.join("stamp");
        if std::fs::read_to_string(&stamp_path).ok().as_deref() != Some(stamp.as_str())
            || !initramfs.exists()
        {
            eprintln!("xtask: building the emulated KVM host's initramfs");
            let mods = image::modules::resolve(&tree.moddir, L1_MODULES)?;
            let mut c = Cpio::new();
            image::add_base(&mut c, &tree, &mods)?;
            c.dir("etc/l1");
            let list: Vec<&str> = mods.iter().map(|m| m.rel.as_str()).collect();
            c.file("etc/l1/modules", 0o644, list.join("\n").as_bytes());
            c.file("init", 0o755, L1_INIT.as_bytes());
            let mut buf = Vec::new();
            c.finish(&mut buf)?;
            std::fs::write(&initramfs, buf)?;
            std::fs::write(&stamp_path, &stamp)?;
        }
        Ok(Self {
            kernel: tree.vmlinux,
            initramfs,
        })
    }

    /// Runs `script` (sh) inside the L1 host; `timeout` bounds the whole run.
    ///
    /// Now and then the L1 host (QEMU TCG) stops at boot, idle, before the
    /// script starts; such a boot is abandoned after [`BOOT_LIMIT`] and the
    /// L1 host started again (at most [`BOOT_TRIES`] times), since nothing
    /// of the script ran yet.
    pub fn run(&self, script: &str, timeout: Duration) -> Result<Output> {
        let tmp = target_tmp();
        std::fs::create_dir_all(&tmp)?;
        let script_path = tmp.join(format!("script-{}-{}.sh", std::process::id(), unique()));
        std::fs::write(&script_path, script)?;
        let script_path = script_path.canonicalize()?;
        let mut tries = 0;
        let r = loop {
            tries += 1;
            match self.attempt(&script_path, timeout) {
                Err(Attempt::BootHang(console)) if tries < BOOT_TRIES => eprintln!(
                    "xtask: the emulated KVM host did not start the script within {BOOT_LIMIT:?} \
                     (stopped at boot); starting it again. Its console:\n{}",
                    last_lines(&console, 20)
                ),
                Err(Attempt::BootHang(console)) => {
                    break Err(anyhow::anyhow!(
                    "the emulated KVM host stopped at boot {tries} times; its console:\n{console}"
                ))
                }
                Err(Attempt::Failed(e)) => break Err(e),
                Ok(o) => break Ok(o),
            }
        };
        let _ = std::fs::remove_file(&script_path);
        r
    }

    fn spawn(
        &self,
        script_path: &Path,
        timeout: Duration,
        tmp: &Path,
    ) -> Result<std::process::Child> {
        let qemu = "qemu-system-x86_64";
        let child = Command::new(qemu)
            .args(["-accel", "tcg", "-cpu", "max", "-M", "q35", "-m", "3072", "-smp", "1"])
            .args(["-nodefaults", "-no-user-config", "-display", "none", "-no-reboot"])
            .args(["-serial", "stdio"])
            .arg("-kernel")
            .arg(&self.kernel)
            .arg("-initrd")
            .arg(&self.initramfs)
            .arg("-append")
            .arg(format!(
                "console=ttyS0 panic=-1 {} xtask.script={} xtask.limit={} {}",
                // With XTASK_DEBUG the L1 kernel's own messages (lockups,
                // hung tasks, OOM) reach the output too.
                if std::env::var_os("XTASK_DEBUG").is_some() {
                    "loglevel=6 sysctl.kernel.hung_task_timeout_secs=60"
                } else {
                    "quiet loglevel=0"
                },
                script_path.display(),
                script_limit(timeout).as_secs(),
                if std::env::var_os("XTASK_DEBUG").is_some() { "XTASK_L1_DEBUG=1" } else { "" }
            ))
            .args(["-virtfs", "local,path=/,mount_tag=host,security_model=none,readonly=on,multidevs=remap"])
            // A writable directory of this machine's, for benchmarks that
            // want storage with latency of its own (9p, `cache=none`):
            // `mount -t 9p -o trans=virtio,version=9p2000.L,cache=none scratch DIR`.
            .args(["-virtfs", &format!("local,path={},mount_tag=scratch,security_model=none,multidevs=remap", scratch_dir()?.display())])
            // With XTASK_DEBUG a monitor, to inspect (`info registers`,
            // `info lapic`) or poke (`nmi`) an L1 host that stopped.
            .args(debug_monitor(tmp))
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .with_context(|| format!("{qemu} is required for the emulated KVM host (apt-get install qemu-system-x86)"))?;
        Ok(child)
    }

    /// One boot of the L1 host running the script at `script_path`.
    fn attempt(&self, script_path: &Path, timeout: Duration) -> Result<Output, Attempt> {
        let mut child = self
            .spawn(script_path, timeout, &target_tmp())
            .map_err(Attempt::Failed)?;
        let console = Arc::new(Mutex::new(Vec::new()));
        let reader = {
            let mut stdout = child
                .stdout
                .take()
                .ok_or_else(|| Attempt::Failed(anyhow::anyhow!("qemu stdout")))?;
            let console = console.clone();
            std::thread::spawn(move || {
                let mut buf = [0u8; 4096];
                while let Ok(n) = stdout.read(&mut buf) {
                    if n == 0 {
                        break;
                    }
                    console
                        .lock()
                        .unwrap_or_else(|e| e.into_inner())
                        .extend_from_slice(&buf[..n]);
                }
            })
        };
        let start = Instant::now();
        let mut up = false;
        let status = loop {
            if let Some(s) = child.try_wait().map_err(|e| Attempt::Failed(e.into()))? {
                break Some(s);
            }
            if !up {
                up = started(&console.lock().unwrap_or_else(|e| e.into_inner()));
            }
            let hung_at_boot = !up && start.elapsed() > BOOT_LIMIT;
            if hung_at_boot || start.elapsed() > timeout {
                let _ = child.kill();
                let _ = child.wait();
                if hung_at_boot {
                    let _ = reader.join();
                    let raw = console.lock().unwrap_or_else(|e| e.into_inner()).clone();
                    return Err(Attempt::BootHang(
                        String::from_utf8_lossy(&raw).into_owned(),
                    ));
                }
                break None;
            }
            std::thread::sleep(Duration::from_millis(50));
        };
        let _ = reader.join();
        let raw = console.lock().unwrap_or_else(|e| e.into_inner()).clone();
        let text = String::from_utf8_lossy(&raw).replace("\r\n", "\n");
        let mut err = String::new();
        if let Some(mut e) = child.stderr.take() {
            let _ = e.read_to_string(&mut err);
        }
        finish(&text, &err, status, timeout).map_err(Attempt::Failed)
    }
}

/// How long the L1 host may take from its start to the script's: it boots
/// in well under a minute even on a loaded 2-core machine.
pub const BOOT_LIMIT: Duration = Duration::from_secs(180);
/// How many times the L1 host is started when it stops at boot.
pub const BOOT_TRIES: u32 = 3;

/// Why one boot of the L1 host gave no output.
enum Attempt {
    /// It never reached the script (its console so far).
    BootHang(String),
    /// Anything else.
    Failed(anyhow::Error),
}

/// Whether the console shows the L1 host has started the script.
fn started(console: &[u8]) -> bool {
    console
        .split(|b| *b == b'\n')
        .any(|l| l.strip_suffix(b"\r").unwrap_or(l) == b"@@XTASK-L1-UP")
}

/// The script's output from the L1 host's console, or why there is none.
fn finish(
    text: &str,
    err: &str,
    status: Option<std::process::ExitStatus>,
    timeout: Duration,
) -> Result<Output> {
    if std::env::var_os("XTASK_DEBUG").is_some() {
        eprintln!("xtask: emulated host console:\n{text}\n{err}");
    }
    let Some(status) = status else {
        bail!(
            "the emulated KVM host did not finish within {timeout:?}; its script's output so far:\n{}\nits console's last lines:\n{}\n{err}",
            live_lines(text),
            last_lines(text, 40)
        );
    };
    parse_output(text).with_context(|| {
        format!(
            "the emulated KVM host ended ({status}) without a result; it printed:\n{text}\n{err}"
        )
    })
}

/// The script's own deadline inside the L1 host: the run's timeout less
/// what booting the L1 host and printing the output take.
fn script_limit(timeout: Duration) -> Duration {
    timeout
        .saturating_sub(Duration::from_secs(120))
        .max(timeout / 2)
}

fn unique() -> u64 {
    use std::sync::atomic::{AtomicU64, Ordering};
    static N: AtomicU64 = AtomicU64::new(0);
    N.fetch_add(1, Ordering::Relaxed)
}

/// The script's stdout as the L1 host echoed it while the script ran.
pub fn live_lines(text: &str) -> String {
    text.lines()
        .filter_map(|l| l.strip_prefix("@@XTASK-LIVE "))
        .collect::<Vec<_>>()
        .join("\n")
}

/// The last `n` lines of `text` that are not live echoes.
fn last_lines(text: &str, n: usize) -> String {
    let rest: Vec<&str> = text
        .lines()
        .filter(|l| !l.starts_with("@@XTASK-LIVE "))
        .collect();
    rest[rest.len().saturating_sub(n)..].join("\n")
}

/// Splits the L1 console output into the script's stdout, stderr and status.
pub fn parse_output(text: &str) -> Option<Output> {
    // At the start of a line only: the live echo's lines carry the
    // script's output after a prefix.
    let text = format!("\n{text}");
    let (_, rest) = text.split_once("\n@@XTASK-STDOUT\n")?;
    let (stdout, rest) = rest.split_once("@@XTASK-STDERR\n")?;
    let (stderr, rest) = rest.rsplit_once("@@XTASK-EXIT ")?;
    let status = rest.lines().next()?.trim().parse().ok()?;
    Some(Output {
        status,
        stdout: stdout.to_string(),
        stderr: stderr.to_string(),
    })
}

/// Quotes `s` for sh.
pub fn sh_quote(s: &str) -> String {
    format!("'{}'", s.replace('\'', r"'\''"))
}

/// Runs `script` where KVM can boot stock kernels: directly, or inside the
/// emulated KVM host. The script runs in the current directory with the
/// current environment's `PATH`, `HOME`, `XDG_CACHE_HOME` and `RUST_LOG`.
pub fn run_script(script: &str, timeout: Duration) -> Result<Output> {
    let cwd = std::env::current_dir()?;
    let mut full = format!("cd {}\n", sh_quote(&cwd.display().to_string()));
    for var in [
        "PATH",
        "HOME",
        "XDG_CACHE_HOME",
        "RUST_LOG",
        "VMAPP_GUEST_INIT",
    ] {
        if let Ok(v) = std::env::var(var) {
            full.push_str(&format!("export {var}={}\n", sh_quote(&v)));
        }
    }
    full.push_str(script);
    full.push('\n');
    let start = Instant::now();
    let out = match host() {
        Host::Direct => {
            let o = Command::new("timeout")
                .arg(timeout.as_secs().to_string())
                .args(["sh", "-c", &full])
                .stdin(Stdio::null())
                .output()?;
            Ok(Output {
                status: o.status.code().unwrap_or(128),
                stdout: String::from_utf8_lossy(&o.stdout).into_owned(),
                stderr: String::from_utf8_lossy(&o.stderr).into_owned(),
            })
        }
        Host::Emulated => EmulatedHost::prepare()?.run(&full, timeout),
    };
    record_time(start.elapsed());
    out
}

/// Where `cargo xtask test` collects how long each script ran.
pub const TIMES_VAR: &str = "XTASK_SCRIPT_TIMES";

/// Appends "SECONDS NAME" (the calling thread's name: the test's) to the
/// file named by [`TIMES_VAR`], if set, so that the suite's slowest tests
/// show at its end.
fn record_time(took: Duration) {
    let Some(path) = std::env::var_os(TIMES_VAR) else {
        return;
    };
    let name = std::thread::current().name().unwrap_or("?").to_owned();
    let line = format!("{:6} {name}\n", took.as_secs());
    let f = std::fs::OpenOptions::new()
        .append(true)
        .create(true)
        .open(path);
    if let Ok(mut f) = f {
        // One short write with O_APPEND: lines of parallel tests do not mix.
        let _ = std::io::Write::write_all(&mut f, line.as_bytes());
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_script_deadline_comes_first() {
        assert_eq!(script_limit(Duration::from_secs(900)).as_secs(), 780);
        assert_eq!(script_limit(Duration::from_secs(100)).as_secs(), 50);
        assert!(script_limit(Duration::from_secs(10)) < Duration::from_secs(10));
    }

    #[test]
    fn parses_framed_output() {
        let t = "noise\n@@XTASK-STDOUT\nhello\n@@XTASK-STDERR\noops\n@@XTASK-EXIT 7\n";
        let o = parse_output(t).unwrap();
        assert_eq!(
            (o.status, o.stdout.as_str(), o.stderr.as_str()),
            (7, "hello\n", "oops\n")
        );
        assert!(parse_output("@@XTASK-STDOUT\nno end").is_none());
        // A script that prints the marker does not move the framing.
        let t = "@@XTASK-LIVE @@XTASK-STDOUT\n@@XTASK-LIVE x\n\n@@XTASK-STDOUT\n@@XTASK-STDOUT\nx\n@@XTASK-STDERR\n@@XTASK-EXIT 0\n";
        let o = parse_output(t).unwrap();
        assert_eq!(o.stdout, "@@XTASK-STDOUT\nx\n");
    }

    #[test]
    fn the_script_counts_as_started_only_at_the_l1_hosts_own_line() {
        assert!(started(b"boot noise\r\n@@XTASK-L1-UP\r\n"));
        assert!(started(b"@@XTASK-L1-UP\n@@XTASK-LIVE x\n"));
        assert!(!started(b""));
        assert!(!started(b"@@XTASK-L1-U"));
        // A script cannot fake it (its lines come prefixed), nor text in a line.
        assert!(!started(b"@@XTASK-LIVE @@XTASK-L1-UP\n"));
        assert!(!started(b"say @@XTASK-L1-UP\n"));
    }

    #[test]
    fn a_killed_run_shows_its_live_lines_apart_from_the_console() {
        let t = "boot\n@@XTASK-LIVE @@phase=fs\nkernel says\n@@XTASK-LIVE @@listed=3\n";
        assert_eq!(live_lines(t), "@@phase=fs\n@@listed=3");
        assert_eq!(last_lines(t, 1), "kernel says");
        assert_eq!(last_lines(t, 9), "boot\nkernel says");
    }

    #[test]
    fn the_test_cache_is_open_to_every_user_or_refused() {
        use std::os::unix::fs::PermissionsExt;
        let base = std::env::temp_dir().join(format!("xtask-cache-{}", std::process::id()));
        std::fs::create_dir_all(&base).unwrap();
        std::fs::set_permissions(&base, std::fs::Permissions::from_mode(0o755)).unwrap();
        let d = test_cache(&base).unwrap();
        let mode = std::fs::metadata(d.join("vmapp"))
            .unwrap()
            .permissions()
            .mode();
        assert_eq!(mode & 0o777, 0o755);
        // A closed directory on the way (root's home, typically) is named.
        std::fs::set_permissions(&base, std::fs::Permissions::from_mode(0o700)).unwrap();
        let e = test_cache(&base).unwrap_err().to_string();
        assert!(e.contains("closed to other users"), "{e}");
        std::fs::remove_dir_all(&base).unwrap();
    }

    #[test]
    fn quoting() {
        assert_eq!(sh_quote("a b"), "'a b'");
        assert_eq!(sh_quote("it's"), r"'it'\''s'");
    }
}

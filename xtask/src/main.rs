//! `cargo xtask`: the project's developer commands.
//!
//! - `cargo xtask run -- ARGS…`: builds the workspace (release) and runs
//!   `vmapp ARGS…` where KVM can boot stock kernels (directly or in the
//!   emulated KVM host).
//! - `cargo xtask test [ARGS…]`: builds every binary (the guest init included),
//!   then runs `cargo test --workspace ARGS…` with the guest-image cache in
//!   `target/xdg-cache` (see [`xtask::test_cache`]).
//! - `cargo xtask bench [boot|io|vsock|net|fs] [ARGS…]`: the boot, block-I/O,
//!   vsock, network or virtio-fs benchmark (vmapp vs QEMU microvm; for fs,
//!   QEMU + virtiofsd; for net, QEMU's virtio-net on passt),
//!   run where KVM can boot stock kernels.
//!   `cargo xtask bench gpu`: a guest app's frames/s and launch → mapped
//!   through vmapp's virtio-gpu + wl-proxy vs waypipe over vsock (headless
//!   sway in the same host).
//!   `cargo xtask bench x11`: an X11 app's frames/s and launch → mapped
//!   (Xwayland and the X11 bridge in the guest) vs a Wayland app's.
//! - `cargo xtask bench wl [ARGS…]`: wl-proxy vs a direct connection to a
//!   headless sway, and the parse + validate rate (criterion); no VM.
//! - `cargo xtask bench audio [--secs S] [--runs N]`: audio-proxy vs a plain
//!   socket relay (socat) in front of a headless PulseAudio; no VM.
//! - `cargo xtask sh SCRIPT`: runs a shell script where KVM can boot stock kernels.
//! - `cargo xtask host`: says whether this machine runs VMs directly or emulated.
//!
//! `test`, `bench`, `run` and `sh` put a pinned passt first on `PATH`
//! (built into `target/passt/` on first use; see `xtask::passt`); `run` and
//! `sh` go on with a warning where it cannot be built. `bench io` builds a
//! static fio for the guests (`target/fio/`, see `xtask::fio`).
//!
//! `XTASK_TIMEOUT=SECS` bounds `run`, `bench` and `sh` in the emulated host
//! (default 30 min, 4 h for `bench`).

use std::process::{Command, ExitCode};
use std::time::Duration;

use anyhow::{bail, Result};

fn cargo(args: &[&str]) -> Result<()> {
    let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
    let st = Command::new(cargo).args(args).status()?;
    if !st.success() {
        bail!("cargo {} failed", args.join(" "));
    }
    Ok(())
}

/// Puts the pinned passt ([`xtask::passt`]) first on `PATH` for everything
/// this command starts (the emulated host's scripts take `PATH` along).
/// `test` and `bench` need it; `run` and `sh` say why they go on without.
fn use_pinned_passt(required: bool) -> Result<()> {
    match xtask::passt::ensure(&xtask::target_dir()) {
        Ok(dir) => {
            std::env::set_var("PATH", xtask::passt::path_with(&dir)?);
            Ok(())
        }
        Err(e) if !required => {
            eprintln!("xtask: warning: {e:#}; `--net` uses the passt on PATH, if any");
            Ok(())
        }
        Err(e) => Err(e),
    }
}

/// `XTASK_TIMEOUT` in seconds, else `default`.
fn timeout(default: Duration) -> Duration {
    std::env::var("XTASK_TIMEOUT")
        .ok()
        .and_then(|s| s.parse().ok())
        .map(Duration::from_secs)
        .unwrap_or(default)
}

/// `cargo xtask bench [boot|io|vsock|net|fs|gpu|x11] [ARGS…]`: a VM benchmark, in
/// the emulated KVM host where /dev/kvm cannot run stock kernels.
fn bench(args: &[String]) -> Result<i32> {
    cargo(&["build", "--release", "--workspace", "--bins"])?;
    use_pinned_passt(true)?;
    let rel = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../target/x86_64-unknown-linux-gnu/release")
        .canonicalize()?;
    let vmapp = rel.join("vmapp");
    let prep = Command::new(&vmapp).arg("prepare").output()?;
    if !prep.status.success() {
        bail!(
            "vmapp prepare failed: {}",
            String::from_utf8_lossy(&prep.stderr)
        );
    }
    let prep = String::from_utf8_lossy(&prep.stdout).into_owned();
    let field = |k: &str| {
        prep.lines()
            .find_map(|l| l.strip_prefix(k))
            .map(str::to_string)
            .ok_or_else(|| anyhow::anyhow!("vmapp prepare printed no {k}"))
    };
    let (bin, rest) = match args.get(1).map(String::as_str) {
        Some("io") => ("io-bench", &args[2..]),
        Some("vsock") => ("vsock-bench", &args[2..]),
        Some("net") => ("net-bench", &args[2..]),
        Some("fs") => ("fs-bench", &args[2..]),
        Some("gpu") => ("gpu-bench", &args[2..]),
        Some("x11") => ("x11-bench", &args[2..]),
        Some("boot") => ("boot-bench", &args[2..]),
        _ => ("boot-bench", &args[1..]),
    };
    // passt needs an interface with a default route: a network namespace
    // whose only route leads to a TAP device nobody reads.
    let netns = if bin == "net-bench" {
        "unshare -n sh -c 'ip link set lo up && ip tuntap add dev t0 mode tap && ip link set t0 up \
            && ip addr add 192.0.2.2/24 dev t0 && ip route add default via 192.0.2.1 && exec \"$0\" \"$@\"' "
    } else {
        ""
    };
    let mut script = format!(
        "{netns}{} --vmapp {} --vmlinux {} --initramfs {}",
        xtask::sh_quote(&rel.join(bin).display().to_string()),
        xtask::sh_quote(&vmapp.display().to_string()),
        xtask::sh_quote(&field("vmlinux=")?),
        xtask::sh_quote(&field("initramfs=")?),
    );
    if bin == "io-bench" {
        let fio = xtask::fio::ensure(&xtask::target_dir())?;
        script.push_str(&format!(
            " --fio {}",
            xtask::sh_quote(&fio.display().to_string())
        ));
    }
    for a in rest {
        script.push(' ');
        script.push_str(&xtask::sh_quote(a));
    }
    if xtask::host() == xtask::Host::Emulated {
        eprintln!("xtask: running the benchmark inside the emulated KVM host");
    }
    let o = xtask::run_script(&script, timeout(Duration::from_secs(4 * 3600)))?;
    print!("{}", o.stdout);
    eprint!("{}", o.stderr);
    Ok(o.status)
}

/// `cargo xtask run -- VMAPP-ARGS…`: a release vmapp, directly or in the
/// emulated KVM host.
fn run(args: &[String]) -> Result<i32> {
    cargo(&["build", "--release", "--workspace", "--bins"])?;
    use_pinned_passt(false)?;
    let rest: Vec<&str> = args[1..]
        .iter()
        .map(String::as_str)
        .skip_while(|a| *a == "--")
        .collect();
    let vmapp = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../target/x86_64-unknown-linux-gnu/release/vmapp")
        .canonicalize()?;
    // The guest image is built here, where the cache is writable.
    let prep = Command::new(&vmapp).arg("prepare").output()?;
    if !prep.status.success() {
        bail!(
            "vmapp prepare failed: {}",
            String::from_utf8_lossy(&prep.stderr)
        );
    }
    let mut script = xtask::sh_quote(&vmapp.display().to_string());
    for a in rest {
        script.push(' ');
        script.push_str(&xtask::sh_quote(a));
    }
    if xtask::host() == xtask::Host::Direct {
        let st = Command::new("sh").args(["-c", &script]).status()?;
        return Ok(st.code().unwrap_or(1));
    }
    eprintln!("xtask: /dev/kvm cannot run stock kernels here; using the emulated KVM host");
    let o = xtask::run_script(&script, timeout(Duration::from_secs(1800)))?;
    print!("{}", o.stdout);
    eprint!("{}", o.stderr);
    Ok(o.status)
}

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let r = (|| -> Result<i32> {
        match args.first().map(String::as_str) {
            Some("run") => run(&args),
            Some("test") => {
                cargo(&["build", "--workspace", "--bins", "--examples"])?;
                use_pinned_passt(true)?;
                // Every test user reads the guest image from here.
                let cache = xtask::test_cache(&xtask::target_dir())?;
                std::env::set_var("XDG_CACHE_HOME", &cache);
                let mut a = vec!["test", "--workspace"];
                a.extend(args[1..].iter().map(String::as_str));
                let times = std::env::current_dir()?.join("target/script-times.txt");
                let _ = std::fs::remove_file(&times);
                std::env::set_var(xtask::TIMES_VAR, &times);
                let r = cargo(&a);
                if let Ok(t) = std::fs::read_to_string(&times) {
                    let mut lines: Vec<&str> = t.lines().collect();
                    lines.sort_by_key(|l| std::cmp::Reverse(l.trim().split(' ').next().and_then(|n| n.parse::<u64>().ok())));
                    eprintln!("xtask: seconds per VM script (slowest first):\n{}", lines.join("\n"));
                }
                r?;
                Ok(0)
            }
            Some("bench") if args.get(1).map(String::as_str) == Some("audio") => {
                // The audio proxy needs no VM: PulseAudio, the proxy and socat run here.
                cargo(&["build", "--release", "-p", "audio-proxy", "-p", "benches", "--bins"])?;
                let rel = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
                    .join("../target/x86_64-unknown-linux-gnu/release");
                let st = Command::new(rel.join("audio-bench")).args(&args[2..]).status()?;
                if !st.success() {
                    bail!("audio-bench failed");
                }
                Ok(0)
            }
            Some("bench") if args.get(1).map(String::as_str) == Some("wl") => {
                // The Wayland proxy needs no VM: sway and the proxy run here.
                cargo(&["build", "--release", "-p", "wl-proxy", "-p", "benches", "--bins"])?;
                let rel = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
                    .join("../target/x86_64-unknown-linux-gnu/release");
                let st = Command::new(rel.join("wl-bench")).args(&args[2..]).status()?;
                if !st.success() {
                    bail!("wl-bench failed");
                }
                cargo(&["bench", "-p", "benches", "--bench", "wl_parse"])?;
                Ok(0)
            }
            Some("bench") => bench(&args),
            Some("sh") => {
                use_pinned_passt(false)?;
                let script = args[1..].join(" ");
                let o = xtask::run_script(&script, timeout(Duration::from_secs(1800)))?;
                print!("{}", o.stdout);
                eprint!("{}", o.stderr);
                Ok(o.status)
            }
            Some("host") => {
                println!("{:?}", xtask::host());
                Ok(0)
            }
            _ => bail!("usage: cargo xtask run -- VMAPP-ARGS… | cargo xtask test [CARGO-TEST-ARGS…] | cargo xtask bench [boot|io|vsock|net|fs|gpu|x11|wl|audio] [--runs N] | cargo xtask sh SCRIPT | cargo xtask host"),
        }
    })();
    match r {
        Ok(c) => ExitCode::from(c as u8),
        Err(e) => {
            eprintln!("xtask: error: {e:#}");
            ExitCode::from(1)
        }
    }
}

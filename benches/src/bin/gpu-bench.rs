//! The Wayland path of a VM, side by side in one run: the same guest client
//! in the same VM (default guest, `--host-root`) shows its frames on a
//! headless sway through vmapp's virtio-gpu cross-domain relay and wl-proxy,
//! and through `waypipe` over vsock (the guest's waypipe server reaches the
//! host's waypipe client through socat and vmapp's vsock device). Both sides
//! of waypipe run with `--no-gpu` (shared memory only, as the relay) and its
//! default compression (lz4).
//!
//! - frames/s: `wl-color --bench` committing full 1280×720 XRGB frames, each
//!   followed by a `wl_display.sync` round trip (the frame reached sway);
//! - launch → mapped: from starting `vmapp launch -- foot` until sway's tree
//!   has foot's window (host clock), for both paths.
//!
//! Run it through `cargo xtask bench gpu`.

use std::os::unix::fs::DirBuilderExt;
use std::path::Path;
use std::process::{Child, Command, ExitCode, Stdio};
use std::time::Duration;

use anyhow::{Context, Result};
use benches::sway::{launch_to_map, Sway};
use benches::{median, run_capture};
use clap::Parser;

#[derive(Parser)]
struct Args {
    #[command(flatten)]
    guest: benches::Guest,
    /// Alternating runs of each path.
    #[arg(long, default_value_t = 3)]
    runs: usize,
    /// Seconds of frames per run.
    #[arg(long, default_value_t = 10)]
    seconds: u64,
}

const PORT: u32 = 5000;

/// foot as both paths launch it. Its scrolling optimisation maps a 512 MiB
/// (mostly untouched) shm pool, which waypipe's server must mirror and cannot
/// in the bench's guest ("Failed to allocate mirror"); it is off for both.
const FOOT: &str = "foot -o tweak.max-shm-pool-size-mb=0 sleep 60";

fn main() -> ExitCode {
    benches::exit("gpu-bench", run())
}

/// `vmapp launch --host-root` of `sh -c cmd`, with the Wayland relay in
/// front of `sway` (both paths run in the same kind of VM).
fn vmapp(a: &Args, sway: &Sway, vsock: &Path, cmd: &str) -> Command {
    let mut c = Command::new(&a.guest.vmapp);
    c.args(["launch", "--host-root", "--memory"])
        .arg(a.guest.memory.to_string());
    // wl-color sits beside vmapp, in a directory host-root mode does not show.
    if let Some(bins) = Path::new(&a.guest.vmapp).parent() {
        c.arg("--expose").arg(bins);
    }
    c.arg(format!("--wayland={}", sway.socket().display()));
    c.arg("--vsock").arg(vsock).args(["--", "sh", "-c", cmd]);
    c
}

/// The host's waypipe client, listening where the vsock device sends guest
/// connections to port PORT.
fn waypipe_client(sway: &Sway, vsock: &Path) -> Result<Child> {
    let sock = format!("{}_{PORT}", vsock.display());
    let _ = std::fs::remove_file(&sock);
    Command::new("waypipe")
        .args(["--no-gpu", "--socket", &sock, "client"])
        .env("WAYLAND_DISPLAY", sway.socket())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .context("waypipe (apt-get install waypipe)")
}

/// The guest's side of waypipe: socat carries its socket to the host's
/// vsock port, waypipe runs `app` behind it. socat's output goes nowhere
/// (inside `$(…)` a background writer would keep the substitution open) and
/// it is stopped once waypipe is done.
fn via_waypipe(app: &str) -> String {
    format!(
        "rm -f /tmp/wp.sock; \
         socat UNIX-LISTEN:/tmp/wp.sock,fork VSOCK-CONNECT:2:{PORT} </dev/null >/dev/null 2>&1 & S=$!; \
         while [ ! -S /tmp/wp.sock ]; do sleep 0.05; done; \
         waypipe --no-gpu --socket /tmp/wp.sock server -- {app}; kill $S"
    )
}

fn fps(out: &str, key: &str) -> Result<f64> {
    out.lines()
        .find_map(|l| l.strip_prefix(key))
        .and_then(|l| l.split("fps=").nth(1))
        .and_then(|v| v.trim().parse().ok())
        .with_context(|| format!("no {key} frames in:\n{out}"))
}

fn run() -> Result<()> {
    let a = Args::parse();
    let sway = Sway::start()?;
    let dir = tempfile::tempdir()?;
    // A directory of the VM's own for its vsock sockets: the jail binds it
    // whole (the compositor's runtime directory must not be).
    let vdir = dir.path().join("vs");
    std::fs::DirBuilder::new()
        .mode(0o700)
        .create(&vdir)
        .context("vsock directory")?;
    let vsock = vdir.join("v.sock");
    let color = Path::new(&a.guest.vmapp).with_file_name("wl-color");
    let bench = format!(
        "{} --bench --size 1280x720 --seconds {}",
        color.display(),
        a.seconds
    );
    let (mut ours, mut theirs, mut map_ours, mut map_theirs) = (vec![], vec![], vec![], vec![]);
    for run in 0..a.runs {
        // Both paths in one VM, their order alternating.
        let direct = format!("echo relay $({bench})");
        let wp = format!("echo waypipe $({})", via_waypipe(&bench));
        let cmd = if run % 2 == 0 {
            format!("{direct}; {wp}")
        } else {
            format!("{wp}; {direct}")
        };
        let mut client = waypipe_client(&sway, &vsock)?;
        let out = run_capture(vmapp(&a, &sway, &vsock, &cmd), Duration::from_secs(1200));
        let _ = client.kill();
        let _ = client.wait();
        let out = out?;
        let (f1, f2) = (fps(&out, "relay ")?, fps(&out, "waypipe ")?);
        eprintln!("gpu-bench: run {run}: relay {f1:.1} fps, waypipe {f2:.1} fps");
        ours.push(f1);
        theirs.push(f2);

        let m1 = launch_to_map(
            vmapp(&a, &sway, &vsock, FOOT),
            &sway,
            "\"app_id\": \"sh:foot\"",
        )?;
        let mut client = waypipe_client(&sway, &vsock)?;
        // The same VM as the relay's (the relay's runtime directory is where
        // waypipe's server makes its socket); only the path differs.
        let c = vmapp(&a, &sway, &vsock, &via_waypipe(FOOT));
        let m2 = launch_to_map(c, &sway, "\"app_id\": \"foot\"");
        let _ = client.kill();
        let _ = client.wait();
        let m2 = m2?;
        eprintln!(
            "gpu-bench: run {run}: foot mapped after {m1:.0} ms (relay), {m2:.0} ms (waypipe)"
        );
        map_ours.push(m1);
        map_theirs.push(m2);
    }
    println!("| metric (median of {} runs, 1280×720 XRGB frames) | vmapp (virtio-gpu + wl-proxy) | waypipe over vsock | vmapp / waypipe |", a.runs);
    println!("|---|---|---|---|");
    let (o, t) = (median(&ours), median(&theirs));
    println!(
        "| frames/s, commit + round trip | {o:.1} | {t:.1} | {:.2} |",
        o / t
    );
    let (o, t) = (median(&map_ours), median(&map_theirs));
    println!(
        "| `launch -- foot` → window mapped (ms) | {o:.0} | {t:.0} | {:.2} |",
        o / t
    );
    Ok(())
}

//! An X11 app's window against a Wayland app's, side by side in one run: the
//! same kind of VM (default guest, `--host-root`) shows full 1280×720 frames
//! on a headless sway (60 Hz), once from the raw X client `x-color --bench`
//! (rootless Xwayland in the guest → the X11 bridge → relay → virtio-gpu →
//! wl-proxy) and once from `wl-color --bench --paced` (relay → virtio-gpu →
//! wl-proxy), their order alternating.
//!
//! - frames/s: frames that reached the compositor, counted where they leave
//!   for it: wl-proxy's `wl_surface.commit` count for the VM's client (it logs
//!   it when the client goes), over the client's drawing time. The Wayland
//!   client waits for each frame's callback before the next (as toolkits do);
//!   Xwayland does the same for each X window, sending what the window holds
//!   whenever the last commit's callback is back. Two X clients: one drawing
//!   straight into its window with a round trip per frame (as Xlib/cairo
//!   toolkits draw), one presenting each frame with the Present extension and
//!   waiting for it to complete (as GL/Vulkan clients swap; Xwayland 22
//!   completes copy-mode Presents on its own ~60 Hz timer, so these frames
//!   wait for a timer tick too). The clients' own counts are printed beside.
//! - launch → mapped: from starting `vmapp launch` until sway's tree has the
//!   window (host clock): boot, plus the X server started on the first X
//!   connection for the X client.
//!
//! Run it through `cargo xtask bench x11`.

use std::path::Path;
use std::process::{Command, ExitCode};
use std::time::Duration;

use anyhow::{Context, Result};
use benches::median;
use benches::sway::{launch_and_wait, Sway};
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

fn main() -> ExitCode {
    benches::exit("x11-bench", run())
}

/// `vmapp launch --host-root` of `sh -c cmd` in front of `sway`, wl-proxy
/// logging each client's commits.
fn vmapp(a: &Args, sway: &Sway, cmd: &str) -> Command {
    let mut c = Command::new(&a.guest.vmapp);
    c.args(["launch", "--host-root", "--memory"])
        .arg(a.guest.memory.to_string());
    // The clients sit beside vmapp, in a directory host-root mode does not show.
    if let Some(bins) = Path::new(&a.guest.vmapp).parent() {
        c.arg("--expose").arg(bins);
    }
    c.arg(format!("--wayland={}", sway.socket().display()));
    c.args(["--", "sh", "-c", cmd]);
    c.env("WL_PROXY_LOG", "wl_proxy=info");
    c
}

/// The most commits one client of wl-proxy made (the app's connection: the
/// X11 bridge's for the X client).
fn commits(log: &str) -> Result<u64> {
    log.lines()
        .filter_map(|l| l.split(" surface commits)").next()?.rsplit('(').next())
        .filter_map(|n| n.trim().parse().ok())
        .max()
        .with_context(|| format!("wl-proxy logged no client's commits:\n{log}"))
}

/// The client's own `fps=` figure.
fn client_fps(out: &str) -> Result<f64> {
    out.lines()
        .find_map(|l| l.split("fps=").nth(1))
        .and_then(|v| v.trim().parse().ok())
        .with_context(|| format!("no fps= in:\n{out}"))
}

struct Sample {
    fps: f64,
    client_fps: f64,
    map_ms: f64,
}

fn sample(a: &Args, sway: &Sway, cmd: &str, pattern: &str) -> Result<Sample> {
    let l = launch_and_wait(
        vmapp(a, sway, cmd),
        sway,
        pattern,
        Duration::from_secs(1200),
    )?;
    Ok(Sample {
        fps: commits(&l.stderr)? as f64 / a.seconds as f64,
        client_fps: client_fps(&l.stdout)?,
        map_ms: l.map_ms,
    })
}

fn run() -> Result<()> {
    let a = Args::parse();
    let sway = Sway::start()?;
    let bin = |n: &str| Path::new(&a.guest.vmapp).with_file_name(n);
    let s = a.seconds;
    let x = format!(
        "{} --bench --size 1280x720 --seconds {s} --class xbench",
        bin("x-color").display()
    );
    let xp = format!("{x} --present");
    let x = format!("{x} --fps 60");
    let wl = format!(
        "{} --bench --paced --fps 60 --size 1280x720 --seconds {s}",
        bin("wl-color").display()
    );
    let kinds = [
        (x.as_str(), "\"app_id\": \"sh:xbench\"", "X11, drawing"),
        (xp.as_str(), "\"app_id\": \"sh:xbench\"", "X11, Present"),
        (wl.as_str(), "\"app_id\": \"sh:wl-color\"", "Wayland"),
    ];
    let mut got: [Vec<Sample>; 3] = Default::default();
    for run in 0..a.runs {
        // All three in turn, the order rotating from run to run.
        for k in 0..kinds.len() {
            let i = (run + k) % kinds.len();
            let (cmd, pattern, name) = kinds[i];
            let x = sample(&a, &sway, cmd, pattern)?;
            eprintln!(
                "x11-bench: run {run}: {name}: {:.1} frames/s reached sway (client counted {:.1}), mapped after {:.0} ms",
                x.fps, x.client_fps, x.map_ms
            );
            got[i].push(x);
        }
    }
    let [xs, xps, ws] = &got;
    let m = |v: &[Sample], f: fn(&Sample) -> f64| median(&v.iter().map(f).collect::<Vec<_>>());
    println!(
        "| metric (median of {} runs, 1280×720 frames, 60 Hz sway) | X11 app (Xwayland + bridge) | Wayland app | X11 / Wayland |",
        a.runs
    );
    println!("|---|---|---|---|");
    let wf = m(ws, |s| s.fps);
    for (name, v) in [
        ("drawing into its window", xs),
        ("Present, each frame completed", xps),
    ] {
        let xf = m(v, |s| s.fps);
        println!(
            "| frames/s reaching the compositor (X client {name}) | {xf:.1} | {wf:.1} | {:.2} |",
            xf / wf
        );
    }
    let (xm, wm) = (m(xs, |s| s.map_ms), m(ws, |s| s.map_ms));
    println!(
        "| `launch` → window mapped (ms; lower is better) | {xm:.0} | {wm:.0} | {:.2} |",
        xm / wm
    );
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn commits_takes_the_busiest_client() {
        let log = "INFO wl_proxy::proxy: wl-proxy: client 1 disconnected (3 surface commits)\n\
                   INFO wl_proxy::proxy: wl-proxy: client 2 disconnected (412 surface commits): closed\n\
                   WARN other line\n";
        assert_eq!(commits(log).unwrap(), 412);
        assert!(commits("no such line").is_err());
    }
}

//! wl-proxy against a direct connection to the same headless sway, side by
//! side in one run:
//! - `wl_display.sync` round trips: rate, p50 and p99 latency, direct and
//!   through the proxy (blocks of each alternate);
//! - memory per idle client: the proxy's RSS growth per connected client,
//!   next to sway's own growth per client.
//!
//! Run it through `cargo xtask bench wl`.

#[path = "../../../wl-proxy/tests/common/mod.rs"]
mod common;

use std::process::ExitCode;
use std::time::Instant;

use anyhow::{ensure, Context, Result};
use clap::Parser;
use common::{Compositor, ProxyProc, RawClient};

#[derive(Parser)]
struct Args {
    /// Timed round trips per path.
    #[arg(long, default_value_t = 20000)]
    roundtrips: usize,
    /// Idle clients for the memory figure.
    #[arg(long, default_value_t = 200)]
    clients: usize,
    /// Pin this benchmark, sway and the proxy to one CPU (no cross-CPU wakeups).
    #[arg(long)]
    cpu: Option<usize>,
}

fn pin(cpu: usize) -> Result<()> {
    // SAFETY: an all-zero cpu_set_t is an empty set; CPU_SET stays in bounds for cpu < 1024.
    unsafe {
        let mut set: libc::cpu_set_t = std::mem::zeroed();
        ensure!(cpu < 1024, "cpu {cpu} out of range");
        libc::CPU_SET(cpu, &mut set);
        ensure!(
            libc::sched_setaffinity(0, std::mem::size_of::<libc::cpu_set_t>(), &set) == 0,
            "sched_setaffinity: {}",
            std::io::Error::last_os_error()
        );
    }
    Ok(())
}

fn main() -> ExitCode {
    benches::exit("wl-bench", run(Args::parse()))
}

fn rss_kib(pid: u32) -> Result<u64> {
    let s = std::fs::read_to_string(format!("/proc/{pid}/status"))?;
    s.lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.split_whitespace().next())
        .and_then(|v| v.parse().ok())
        .context("no VmRSS")
}

fn percentile(sorted: &[f64], p: f64) -> f64 {
    sorted[((sorted.len() - 1) as f64 * p) as usize]
}

fn run(args: Args) -> Result<()> {
    if std::env::var_os("WL_PROXY_BIN").is_none() {
        let exe = std::env::current_exe()?;
        std::env::set_var("WL_PROXY_BIN", exe.with_file_name("wl-proxy"));
    }
    if let Some(c) = args.cpu {
        // Children (sway, wl-proxy) inherit the mask.
        pin(c)?;
    }
    let sway = Compositor::sway();
    let proxy = ProxyProc::start(
        &sway,
        &format!("[limits]\nmax_clients = {}\n", args.clients + 10),
    );
    let mut direct = RawClient::connect(&sway.socket);
    let mut proxied = proxy.client();
    // Warm up both paths.
    for _ in 0..1000 {
        ensure!(direct.roundtrip().is_some() && proxied.roundtrip().is_some());
    }
    let mut lat: [Vec<f64>; 2] = [Vec::new(), Vec::new()];
    let mut busy = [0f64; 2];
    let block = 1000;
    for _ in 0..args.roundtrips.div_ceil(block) {
        for (who, c) in [&mut direct, &mut proxied].into_iter().enumerate() {
            let t0 = Instant::now();
            for _ in 0..block {
                let t = Instant::now();
                ensure!(c.roundtrip().is_some(), "connection lost");
                lat[who].push(t.elapsed().as_secs_f64() * 1e6);
            }
            busy[who] += t0.elapsed().as_secs_f64();
        }
    }
    for l in &mut lat {
        l.sort_by(f64::total_cmp);
    }
    let rate = |w: usize| lat[w].len() as f64 / busy[w];

    // Memory per idle client: each binds its registry and waits.
    let before_proxy = rss_kib(proxy.child.id())?;
    let sway_pid = sway.pid();
    let before_sway = rss_kib(sway_pid)?;
    let mut idle = Vec::new();
    for _ in 0..args.clients {
        let mut c = proxy.client();
        let (_, g) = c.globals();
        ensure!(!g.is_empty());
        idle.push(c);
    }
    let after_proxy = rss_kib(proxy.child.id())?;
    let mid_sway = rss_kib(sway_pid)?;
    let mut idle_direct = Vec::new();
    for _ in 0..args.clients {
        let mut c = RawClient::connect(&sway.socket);
        c.globals();
        idle_direct.push(c);
    }
    let after_sway = rss_kib(sway_pid)?;
    let per = |a: u64, b: u64| (a.saturating_sub(b)) as f64 / args.clients as f64;
    let proxy_per = per(after_proxy, before_proxy);
    let sway_per = per(after_sway, mid_sway);
    eprintln!(
        "wl-bench: sway RSS {before_sway} → {mid_sway} (proxied clients) → {after_sway} KiB (direct clients)"
    );

    println!(
        "| wl_display.sync through wl-proxy | direct to sway | through wl-proxy | proxy / direct |"
    );
    println!("|---|---|---|---|");
    let row = |label: &str, d: f64, p: f64| {
        println!("| {label} | {d:.1} | {p:.1} | {:.2} |", p / d);
    };
    row("round trips/s", rate(0), rate(1));
    row(
        "p50 latency (µs)",
        percentile(&lat[0], 0.5),
        percentile(&lat[1], 0.5),
    );
    row(
        "p99 latency (µs)",
        percentile(&lat[0], 0.99),
        percentile(&lat[1], 0.99),
    );
    println!(
        "| added p50 latency (µs) | | {:.1} | |",
        percentile(&lat[1], 0.5) - percentile(&lat[0], 0.5)
    );
    println!(
        "| RSS per idle client (KiB): wl-proxy's growth vs sway's | {sway_per:.1} | {proxy_per:.1} | {:.2} |",
        proxy_per / sway_per.max(0.1)
    );
    drop(idle);
    drop(idle_direct);
    Ok(())
}

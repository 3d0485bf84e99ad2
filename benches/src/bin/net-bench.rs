//! TCP throughput through the network: vmapp `--net` (the guest's TAP
//! device relayed over vsock to passt) against QEMU microvm with a
//! `virtio-net-device` on its own passt (`-netdev stream`), with the same
//! guest, the same measuring program (`/init bench tcp`) and the same passt
//! options, runs alternating. The host side is a sink on 127.0.0.1:TX and a
//! source on 127.0.0.1:RX; the guest reaches them at its gateway address,
//! which passt maps to the host's loopback. Rates are measured in the guest.
//!
//! Run it through `cargo xtask bench net`, which gives it a network
//! namespace whose default route leads nowhere (passt needs one; nothing
//! leaves the machine).

use std::io::{Read, Write};
use std::net::TcpListener;
use std::process::ExitCode;
use std::time::Duration;

use anyhow::{Context, Result};
use benches::{run_capture, Guest};
use clap::Parser;

#[derive(Parser)]
struct Args {
    #[command(flatten)]
    guest: Guest,
    /// Runs per VMM.
    #[arg(long, default_value_t = 3)]
    runs: usize,
    /// MiB each way.
    #[arg(long, default_value_t = 256)]
    mib: u64,
}

const TX_PORT: u16 = 7100;
const RX_PORT: u16 = 7101;
/// The gateway passt hands out in `cargo xtask bench net`'s namespace.
const GW: &str = "192.0.2.1";
const METRICS: [(&str, &str); 2] = [
    ("net_tx_mbps", "TCP guest → host (MB/s)"),
    ("net_rx_mbps", "TCP host → guest (MB/s)"),
];

fn main() -> ExitCode {
    benches::exit("net-bench", run())
}

/// The sink and the source, each for one connection.
fn host_side(mib: u64) -> Result<[std::thread::JoinHandle<()>; 2]> {
    let sink = TcpListener::bind(("127.0.0.1", TX_PORT)).context("binding the sink")?;
    let source = TcpListener::bind(("127.0.0.1", RX_PORT)).context("binding the source")?;
    let a = std::thread::spawn(move || {
        if let Ok((mut s, _)) = sink.accept() {
            let mut buf = vec![0u8; 256 * 1024];
            while matches!(s.read(&mut buf), Ok(n) if n > 0) {}
        }
    });
    let b = std::thread::spawn(move || {
        if let Ok((mut s, _)) = source.accept() {
            // Both snapshots fall inside the guest's timed window (a scan of
            // /proc takes milliseconds; the transfer, seconds), alike for
            // both VMMs; the last one comes when the data is written, not
            // yet read (the sockets' buffers, a few hundred KiB, remain).
            let (ticks, kvm) = (benches::thread_ticks(), benches::kvm_stats());
            let buf = vec![0xa5u8; 256 * 1024];
            for _ in 0..mib * 4 {
                if s.write_all(&buf).is_err() {
                    break;
                }
            }
            report_host_costs(&ticks, &kvm, mib);
        }
    });
    Ok([a, b])
}

/// What the host → guest transfer cost this host, per MiB: CPU ticks of
/// its busiest threads and KVM's exit counters (stderr, for the reader).
fn report_host_costs(ticks: &[(String, u64)], kvm: &[(&str, u64)], mib: u64) {
    let per = |v: u64| v as f64 / mib.max(1) as f64;
    let top: Vec<String> = benches::ticks_since(ticks, &benches::thread_ticks())
        .iter()
        .take(8)
        .map(|(n, t)| format!("{n}={:.2}", per(*t)))
        .collect();
    eprintln!(
        "net-bench: host → guest, host CPU ticks per MiB: {}",
        top.join(" ")
    );
    let kvm: Vec<String> = benches::kvm_stats()
        .iter()
        .filter_map(|(n, a)| {
            let (_, b) = kvm.iter().find(|(m, _)| m == n)?;
            Some(format!("{n}={:.0}", per(a.saturating_sub(*b))))
        })
        .collect();
    eprintln!(
        "net-bench: host → guest, KVM events per MiB: {}",
        kvm.join(" ")
    );
}

/// Unblocks listeners a failed run left waiting.
fn unblock() {
    for p in [TX_PORT, RX_PORT] {
        let _ = std::net::TcpStream::connect(("127.0.0.1", p));
    }
}

fn run() -> Result<()> {
    let a = Args::parse();
    let dir = tempfile::tempdir()?;
    let qsock = dir.path().join("qemu-passt.sock");
    let qnet = format!(
        "stream,id=n0,server=off,addr.type=unix,addr.path={}",
        qsock.display()
    );
    let passt_cfg = vmm::net::NetConfig {
        host_loopback: true,
        ..Default::default()
    };
    let mib = a.mib.to_string();
    let (tx, rx) = (TX_PORT.to_string(), RX_PORT.to_string());
    let argv = ["/init", "bench", "tcp", GW, &tx, &rx, &mib];
    let qargv = ["/init", "bench", "tcp", GW, &tx, &rx, &mib, "static"];
    // Room for 0.25 MB/s each way (runs here go at 2 to 10), short enough
    // that a stalled transfer fails the run in minutes, with the guest's
    // output (which direction finished) in the error.
    let timeout = Duration::from_secs(120 + 8 * a.mib);
    let net_word = format!("vmapp.net={}", vmm::net::NET_PORT);
    let mut results: benches::Results = [Vec::new(), Vec::new()];
    for i in 0..a.runs {
        let order = if i % 2 == 0 { [0, 1] } else { [1, 0] };
        for who in order {
            let threads = host_side(a.mib)?;
            let (out, passt) = if who == 0 {
                let cmd =
                    a.guest
                        .vmapp_cmdline(&net_word, &["--net", "--net-host-loopback"], &argv);
                (run_capture(cmd, timeout), None)
            } else {
                let p = vmm::net::Passt::start(&passt_cfg, &qsock)?;
                let cmd = a.guest.qemu(
                    &["-netdev", &qnet, "-device", "virtio-net-device,netdev=n0"],
                    &qargv,
                );
                (run_capture(cmd, timeout), Some(p))
            };
            drop(passt);
            unblock();
            for t in threads {
                let _ = t.join();
            }
            let out = out?;
            for l in out.lines().filter(|l| l.starts_with("@@net_rx_per_mib")) {
                eprintln!("net-bench: run {i} {}: {l}", ["vmapp", "qemu"][who]);
            }
            benches::record(&mut results, who, i, "net-bench", &out, &METRICS)?;
        }
    }
    let title = format!("metric (median of {} runs, {} MiB each way)", a.runs, a.mib);
    benches::print_table(&title, "QEMU microvm + virtio-net", &METRICS, &results);
    Ok(())
}

//! The audio proxy against a plain socket relay (`socat`), each in front of
//! the same headless PulseAudio, side by side in one run:
//! - added latency: a low-latency playback client writes a click (what the
//!   server asks for, a click every 250 ms); a record client on the null
//!   sink's monitor, straight to the server, notes when it arrives. The
//!   median click → seen time per path, and the proxy's minus the relay's;
//! - CPU per stream: the relay process's CPU time (every thread's
//!   `schedstat`) over the same 48 kHz stereo stream, as % of one core.
//!
//! No VM: the guest's side (its socket relay and vsock) copies bytes and is
//! the same whichever host relay follows. Run it through `cargo xtask bench
//! audio`; as root it runs itself, the server and the relays as uid 65534.

use std::io::Cursor;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitCode, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::{bail, ensure, Context, Result};
use audio_proxy::client::RawClient;
use audio_proxy::wire::{self, DESCRIPTOR};
use clap::Parser;
use pulseaudio::protocol::{
    self as pa, ChannelMap, Command as Cmd, CreateRecordStreamReply, SampleSpec, TagStructRead,
    TagStructReader,
};

#[derive(Parser)]
struct Args {
    /// Seconds of audio per run.
    #[arg(long, default_value_t = 10)]
    secs: u64,
    /// Runs per path (paths alternate).
    #[arg(long, default_value_t = 3)]
    runs: usize,
    /// Set when re-run as the unprivileged user.
    #[arg(long, hide = true)]
    dir: Option<PathBuf>,
}

fn main() -> ExitCode {
    benches::exit("audio-bench", run(Args::parse()))
}

const RATE: u32 = 48000;
const FRAME: usize = 4;

/// Plays silence with a click every 250 ms for `secs` (20 ms buffer);
/// returns when each click was written.
fn play(path: &Path, secs: u64) -> Result<Vec<Instant>> {
    let mut c = RawClient::open(path, c"bench-player")?;
    let mut next_click = Instant::now() + Duration::from_millis(500);
    let mut clicks = Vec::new();
    c.play(secs as f64, RATE / 50 * FRAME as u32, |block, _| {
        if Instant::now() >= next_click {
            for f in block.chunks_exact_mut(2).take(2 * 48) {
                f.copy_from_slice(&i16::MAX.to_le_bytes());
            }
            clicks.push(Instant::now());
            next_click += Duration::from_millis(250);
        }
    })?;
    Ok(clicks)
}

/// Records the null sink's monitor straight from the server until `stop`;
/// returns when each click arrived.
fn record(server: &Path, ready: Arc<Mutex<bool>>, until: Instant) -> Result<Vec<Instant>> {
    let mut c = RawClient::open(server, c"bench-recorder")?;
    let reply = c.call(&Cmd::CreateRecordStream(pa::RecordStreamParams {
        sample_spec: SampleSpec {
            format: pa::SampleFormat::S16Le,
            sample_rate: RATE,
            channels: 1,
        },
        channel_map: ChannelMap::mono(),
        source_name: Some(c"null.monitor".into()),
        // 2.5 ms fragments.
        buffer_attr: pa::stream::BufferAttr {
            max_length: u32::MAX,
            target_length: u32::MAX,
            pre_buffering: u32::MAX,
            minimum_request_length: u32::MAX,
            fragment_size: RATE / 400 * 2,
        },
        flags: pa::stream::StreamFlags {
            adjust_latency: true,
            ..Default::default()
        },
        ..Default::default()
    }))?;
    CreateRecordStreamReply::read(
        &mut TagStructReader::new(&mut Cursor::new(&reply[..]), pa::MAX_VERSION),
        pa::MAX_VERSION,
    )?;
    *ready.lock().unwrap_or_else(|p| p.into_inner()) = true;
    c.socket
        .set_read_timeout(Some(Duration::from_millis(200)))?;
    let (mut seen, mut loud, mut buf) = (Vec::new(), false, Vec::new());
    let sizes = wire::Sizes {
        command: 1 << 24,
        data: 1 << 24,
    };
    while Instant::now() < until {
        let Ok(Some(d)) = wire::read_packet(&mut c.socket, sizes, &mut buf) else {
            continue;
        };
        if d.is_command() {
            continue;
        }
        let now = Instant::now();
        let any = buf[DESCRIPTOR..]
            .chunks_exact(2)
            .any(|s| i16::from_le_bytes([s[0], s[1]]).unsigned_abs() > 8000);
        if any && !loud {
            seen.push(now);
        }
        loud = any;
    }
    Ok(seen)
}

/// CPU time of every thread of `pid`, in ns.
fn cpu_ns(pid: u32) -> u64 {
    let Ok(tasks) = std::fs::read_dir(format!("/proc/{pid}/task")) else {
        return 0;
    };
    tasks
        .flatten()
        .filter_map(|t| std::fs::read_to_string(t.path().join("schedstat")).ok())
        .filter_map(|s| s.split_whitespace().next()?.parse::<u64>().ok())
        .sum()
}

fn wait_for(p: &Path) -> Result<()> {
    let t = Instant::now();
    while !p.exists() {
        ensure!(
            t.elapsed() < Duration::from_secs(20),
            "{} never appeared",
            p.display()
        );
        std::thread::sleep(Duration::from_millis(20));
    }
    Ok(())
}

struct Run {
    latency_ms: f64,
    cpu_pct: f64,
    clicks: usize,
}

/// One run through `relay` (a child listening on `sock`).
fn one(server: &Path, sock: &Path, mut relay: Child, secs: u64) -> Result<Run> {
    wait_for(sock)?;
    let ready = Arc::new(Mutex::new(false));
    let until = Instant::now() + Duration::from_secs(secs + 2);
    let rec = {
        let (server, ready) = (server.to_path_buf(), ready.clone());
        std::thread::spawn(move || record(&server, ready, until))
    };
    while !*ready.lock().unwrap_or_else(|p| p.into_inner()) {
        ensure!(!rec.is_finished(), "the recorder failed");
        std::thread::sleep(Duration::from_millis(10));
    }
    let cpu0 = cpu_ns(relay.id());
    let clicks = play(sock, secs)?;
    let cpu = cpu_ns(relay.id()).saturating_sub(cpu0);
    let seen = rec
        .join()
        .map_err(|_| anyhow::anyhow!("recorder panicked"))??;
    let _ = relay.kill();
    let _ = relay.wait();
    let _ = std::fs::remove_file(sock);
    let lat: Vec<f64> = clicks
        .iter()
        .filter_map(|c| {
            seen.iter()
                .find(|s| **s > *c && s.duration_since(*c) < Duration::from_millis(200))
                .map(|s| s.duration_since(*c).as_secs_f64() * 1e3)
        })
        .collect();
    ensure!(
        lat.len() * 2 >= clicks.len(),
        "heard {} of {} clicks",
        lat.len(),
        clicks.len()
    );
    Ok(Run {
        latency_ms: benches::median(&lat),
        cpu_pct: cpu as f64 / (secs as f64 * 1e9) * 100.0,
        clicks: lat.len(),
    })
}

fn run(a: Args) -> Result<()> {
    // SAFETY: getuid has no preconditions.
    if unsafe { libc::getuid() } == 0 && a.dir.is_none() {
        return as_user(&a);
    }
    let dir = match &a.dir {
        Some(d) => d.clone(),
        None => tempfile::tempdir()?.keep(),
    };
    let rt = dir.join("rt");
    std::fs::create_dir_all(&rt)?;
    std::fs::set_permissions(&rt, std::os::unix::fs::PermissionsExt::from_mode(0o700))?;
    let server = rt.join("pulse/native");
    let mut pulse = Command::new("pulseaudio")
        .args([
            "-n",
            "--daemonize=no",
            "--exit-idle-time=-1",
            "--load=module-native-protocol-unix",
        ])
        .args([
            "--load=module-null-sink sink_name=null",
            "--load=module-always-sink",
        ])
        .env("XDG_RUNTIME_DIR", &rt)
        .env("HOME", &dir)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .context("pulseaudio")?;
    wait_for(&server)?;
    std::thread::sleep(Duration::from_millis(500));
    let proxy_bin = std::env::current_exe()?.with_file_name("audio-proxy");
    let mut results: Vec<(&str, Run)> = Vec::new();
    for _ in 0..a.runs {
        for path in ["socat", "audio-proxy"] {
            let sock = dir.join(path);
            let child = if path == "socat" {
                Command::new("socat")
                    .arg(format!("UNIX-LISTEN:{}", sock.display()))
                    .arg(format!("UNIX-CONNECT:{}", server.display()))
                    .spawn()
                    .context("socat")?
            } else {
                Command::new(&proxy_bin)
                    .arg("--listen")
                    .arg(&sock)
                    .arg("--upstream")
                    .arg(&server)
                    .args(["--tag", "bench"])
                    .spawn()
                    .context("audio-proxy")?
            };
            let r = one(&server, &sock, child, a.secs)?;
            eprintln!(
                "audio-bench: {path}: click → heard {:.2} ms (median of {}), relay CPU {:.3} % of a core",
                r.latency_ms, r.clicks, r.cpu_pct
            );
            results.push((path, r));
        }
    }
    let _ = pulse.kill();
    let _ = pulse.wait();
    let med = |p: &str, f: fn(&Run) -> f64| {
        benches::median(
            &results
                .iter()
                .filter(|r| r.0 == p)
                .map(|r| f(&r.1))
                .collect::<Vec<_>>(),
        )
    };
    let (lp, lr) = (
        med("audio-proxy", |r| r.latency_ms),
        med("socat", |r| r.latency_ms),
    );
    let (cp, cr) = (
        med("audio-proxy", |r| r.cpu_pct),
        med("socat", |r| r.cpu_pct),
    );
    println!("| metric (48 kHz stereo s16, 20 ms buffer, {} s × {} runs) | audio-proxy | socat relay | difference |", a.secs, a.runs);
    println!("|---|---|---|---|");
    println!(
        "| click → heard on the monitor, median (ms) | {lp:.2} | {lr:.2} | {:+.2} ms |",
        lp - lr
    );
    println!(
        "| relay CPU per stream (% of one core) | {cp:.3} | {cr:.3} | {:.2}× |",
        cp / cr
    );
    Ok(())
}

/// Runs this benchmark again as uid 65534 (PulseAudio refuses root).
fn as_user(a: &Args) -> Result<()> {
    let dir = tempfile::tempdir()?.keep();
    std::fs::set_permissions(&dir, std::os::unix::fs::PermissionsExt::from_mode(0o755))?;
    let ok = Command::new("chown")
        .arg("65534:65534")
        .arg(&dir)
        .status()?
        .success();
    ensure!(ok, "chown");
    let st = Command::new("setpriv")
        .args(["--reuid=65534", "--regid=65534", "--clear-groups"])
        .arg(std::env::current_exe()?)
        .args(["--secs", &a.secs.to_string(), "--runs", &a.runs.to_string()])
        .arg("--dir")
        .arg(&dir)
        .env("HOME", &dir)
        .status()
        .context("setpriv")?;
    let _ = std::fs::remove_dir_all(&dir);
    if !st.success() {
        bail!("the benchmark as uid 65534 failed ({st})");
    }
    Ok(())
}

//! `audio-proxy`: one VM's validating PulseAudio-protocol proxy.
//!
//! ```text
//! audio-proxy --listen SOCKET [--upstream SOCKET] [--tag NAME] [--mode off|playback|full]
//!             [--control-fd FD] [--seccomp kill|log|off]
//! ```
//!
//! With `--control-fd`, the fd (a socket) takes one mode a line (`off`,
//! `playback`, `full`) and answers `ok MODE` once connections the new mode
//! does not allow are cut; the proxy exits when it closes (its VM ended).

use std::io::{BufRead, BufReader, Write};
use std::os::fd::FromRawFd;
use std::os::unix::net::UnixStream;
use std::path::PathBuf;

use anyhow::Result;
use audio_proxy::{Config, Limits, Mode, Proxy};
use clap::Parser;
use seccomp_policies::ThreadKind;

/// A validating PulseAudio-protocol proxy for one app VM.
#[derive(Parser, Debug)]
#[command(name = "audio-proxy", version)]
struct Args {
    /// Serve the VM's audio clients on this socket path (removed on exit).
    #[arg(long)]
    listen: PathBuf,
    /// The host's sound server [default: $PULSE_SERVER, else
    /// $XDG_RUNTIME_DIR/pulse/native].
    #[arg(long)]
    upstream: Option<PathBuf>,
    /// The VM's label: its client and streams show as "[NAME] …".
    #[arg(long, default_value = "vm")]
    tag: String,
    /// What the VM may do: nothing, play, or play and record.
    #[arg(long, default_value = "playback", value_name = "off|playback|full")]
    mode: Mode,
    /// A socket that switches the mode while it runs (one mode a line).
    #[arg(long, value_name = "FD")]
    control_fd: Option<i32>,
    /// Streams open at once in the VM.
    #[arg(long, default_value_t = Limits::default().streams)]
    max_streams: usize,
    /// What a syscall outside the proxy's seccomp filter does.
    #[arg(long, default_value = "kill")]
    seccomp: seccomp_policies::Mode,
}

fn main() {
    // glibc's malloc opens files on its own (arenas, trimming), which the
    // filter does not allow: a fixed arena bound and no trimming.
    // SAFETY: mallopt takes plain values; called before any thread starts.
    unsafe {
        libc::mallopt(libc::M_ARENA_MAX, 4);
        libc::mallopt(libc::M_TRIM_THRESHOLD, 1 << 30);
    }
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_env("AUDIO_PROXY_LOG")
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("warn")),
        )
        .with_writer(std::io::stderr)
        .with_ansi(false)
        .without_time()
        .init();
    if let Err(e) = run() {
        eprintln!("audio-proxy: {e:#}");
        std::process::exit(1);
    }
}

fn run() -> Result<()> {
    let a = Args::parse();
    // None: the guest's connections are refused, with one message.
    let upstream = a.upstream.or_else(audio_proxy::default_server);
    let proxy = Proxy::new(Config {
        upstream,
        tag: a.tag,
        mode: a.mode,
        limits: Limits {
            streams: a.max_streams,
            ..Limits::default()
        },
        cookie: audio_proxy::host_cookie(),
    });
    // SAFETY: the caller hands this fd over for the proxy's lifetime.
    let control = a
        .control_fd
        .map(|fd| unsafe { UnixStream::from_raw_fd(fd) });
    let listener = Proxy::listen(&a.listen)?;
    // glibc sets up its own signal handling on the first thread it
    // creates (rt_sigaction, which the filter does not allow): done here.
    std::thread::spawn(|| ())
        .join()
        .map_err(|_| anyhow::anyhow!("a first thread failed"))?;
    // Everything from here on handles the guest's input.
    seccomp_policies::install(ThreadKind::AudioProxy, a.seccomp)?;
    match control {
        Some(c) => {
            proxy.spawn(listener)?;
            let r = control_loop(&proxy, c);
            let _ = std::fs::remove_file(&a.listen);
            r
        }
        None => proxy.serve(&listener),
    }
}

/// Mode changes from vmapp until it closes the socket.
fn control_loop(proxy: &Proxy, c: UnixStream) -> Result<()> {
    let mut out = c.try_clone()?;
    for line in BufReader::new(c).lines() {
        let Ok(line) = line else { break };
        let answer = match line.trim().parse::<Mode>() {
            Ok(m) => {
                proxy.set_mode(m);
                format!("ok {m}\n")
            }
            Err(e) => format!("error {e}\n"),
        };
        if out.write_all(answer.as_bytes()).is_err() {
            break;
        }
    }
    Ok(())
}

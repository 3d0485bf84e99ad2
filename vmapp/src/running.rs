//! `vmapp list`, `vmapp stop NAME`, `vmapp exec NAME -- CMD` and a second
//! `vmapp launch NAME` while NAME runs: the command-line side of running
//! VMs, through their control sockets ([`vmapp::control`]).

use std::path::PathBuf;
use std::process::ExitCode;
use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use vmapp::control::{self, ControlError, Status};
use vmapp::{profile, runtime};
use vmm::agent::{AgentError, Run};

/// How long a client waits for a VM that is still starting: for its control
/// socket, then for its guest to accept commands.
const STARTING: Duration = Duration::from_secs(120);

/// The control socket of the VM called `name`: an app, or a VM without one
/// by its runtime directory's name (`vmapp-XXXXXX`, as `vmapp list` shows).
fn control_path(name: &str) -> anyhow::Result<PathBuf> {
    if name.starts_with("vmapp-") && !name.contains('/') {
        let dir = runtime::base()?.join(name);
        if dir.is_dir() {
            return Ok(dir.join(runtime::CONTROL));
        }
    }
    profile::check_name(name)?;
    Ok(runtime::app_dir(name)?.join(runtime::CONTROL))
}

/// The status of `name`'s VM, waiting while an app's VM is starting (its
/// lock held, its control socket not there yet).
fn status_waiting(name: &str) -> anyhow::Result<(PathBuf, Status)> {
    let path = control_path(name)?;
    let start = Instant::now();
    loop {
        match control::status(&path) {
            Ok(s) => return Ok((path, s)),
            Err(ControlError::Io { .. })
                if runtime::app_running(name) && start.elapsed() < STARTING =>
            {
                std::thread::sleep(Duration::from_millis(200));
            }
            Err(ControlError::Io { .. }) => bail!("{name} is not running"),
            Err(e) => return Err(e.into()),
        }
    }
}

fn human(secs: u64) -> String {
    match secs {
        0..=59 => format!("{secs}s"),
        60..=3599 => format!("{}m{:02}s", secs / 60, secs % 60),
        _ => format!("{}h{:02}m", secs / 3600, secs % 3600 / 60),
    }
}

/// `vmapp list`: every profile (running or not) and every running VM.
pub fn list() -> anyhow::Result<ExitCode> {
    let mut running: Vec<(String, Option<Status>)> = runtime::control_sockets()?
        .into_iter()
        .map(|(name, sock)| (name, control::status(&sock).ok()))
        .collect();
    for p in profile::names()? {
        if !running.iter().any(|(n, _)| *n == p) {
            running.push((p, None));
        }
    }
    running.sort_by(|a, b| a.0.cmp(&b.0));
    println!(
        "{:<20} {:<8} {:>8} {:>8} {:>7} {:>4} {:>3} {:>8}  COMMAND",
        "NAME", "STATE", "PID", "UPTIME", "MEMORY", "CPUS", "NET", "AUDIO"
    );
    for (name, st) in running {
        match st {
            Some(s) => println!(
                "{:<20} {:<8} {:>8} {:>8} {:>6}M {:>4} {:>3} {:>8}  {}",
                name,
                "running",
                s.pid,
                human(s.uptime_s),
                s.memory_mib,
                s.vcpus,
                match s.network {
                    Some(true) => "on",
                    Some(false) => "off",
                    None => "-",
                },
                s.audio.as_deref().unwrap_or("-"),
                s.command.join(" ")
            ),
            None => {
                let cmd = profile::Profile::load(&name)
                    .map(|p| p.command.join(" "))
                    .unwrap_or_default();
                println!(
                    "{name:<20} {:<8} {:>8} {:>8} {:>7} {:>4} {:>3} {:>8}  {cmd}",
                    "stopped", "-", "-", "-", "-", "-", "-"
                );
            }
        }
    }
    Ok(ExitCode::SUCCESS)
}

fn alive(pid: u32) -> bool {
    let Ok(pid) = libc::pid_t::try_from(pid) else {
        return false;
    };
    // SAFETY: signal 0 only checks that the process exists.
    unsafe { libc::kill(pid, 0) == 0 }
}

fn wait_gone(pid: u32, limit: Duration) -> bool {
    let end = Instant::now() + limit;
    while Instant::now() < end {
        if !alive(pid) {
            return true;
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    !alive(pid)
}

/// `vmapp stop NAME [--force] [--timeout S]`: the guest shuts down
/// gracefully (its app gets SIGTERM and a grace period); past `timeout`
/// seconds, or at once with `force`, the VM is stopped hard. Returns once
/// the VM's vmapp has exited.
pub fn stop(name: &str, force: bool, timeout: u64) -> anyhow::Result<ExitCode> {
    let path = control_path(name)?;
    let st = control::status(&path).map_err(|e| match e {
        ControlError::Io { .. } => anyhow::anyhow!("{name} is not running"),
        e => e.into(),
    })?;
    control::stop(&path, force)?;
    if wait_gone(
        st.pid,
        Duration::from_secs(if force { 30 } else { timeout }),
    ) {
        return Ok(ExitCode::SUCCESS);
    }
    eprintln!("vmapp: {name} did not shut down within {timeout} s; stopping it");
    // The socket may be gone already if the VM stopped meanwhile.
    let _ = control::stop(&path, true);
    if wait_gone(st.pid, Duration::from_secs(30)) {
        return Ok(ExitCode::SUCCESS);
    }
    bail!("{name} (vmapp pid {}) is still running", st.pid)
}

/// `vmapp net NAME on|off`: switches the VM's network; returns once it is
/// (off: passt has ended, nothing more leaves the VM).
pub fn net(name: &str, state: &str) -> anyhow::Result<ExitCode> {
    let on = match state {
        "on" => true,
        "off" => false,
        _ => bail!("usage: vmapp net NAME on|off"),
    };
    let path = control_path(name)?;
    control::set_network(&path, on).map_err(|e| match e {
        ControlError::Io { .. } => anyhow::anyhow!("{name} is not running"),
        e => e.into(),
    })?;
    Ok(ExitCode::SUCCESS)
}

/// `vmapp audio NAME off|playback|full`: switches the VM's sound; returns
/// once the audio proxy has cut what the new mode forbids.
pub fn audio(name: &str, mode: &str) -> anyhow::Result<ExitCode> {
    let path = control_path(name)?;
    control::set_audio(&path, mode).map_err(|e| match e {
        ControlError::Io { .. } => anyhow::anyhow!("{name} is not running"),
        e => e.into(),
    })?;
    Ok(ExitCode::SUCCESS)
}

/// `vmapp exec NAME [--env K=V]… [--workdir DIR] -- COMMAND…`: runs COMMAND
/// in NAME's running VM with this process's stdio; returns its status.
pub fn exec(name: &str, run: Run) -> anyhow::Result<ExitCode> {
    if run.argv.is_empty() {
        bail!("usage: vmapp exec NAME -- COMMAND [ARGS…]");
    }
    let (path, st) = status_waiting(name)?;
    let (Some(sock), Some(port)) = (st.exec_socket.clone(), st.exec_port) else {
        bail!("{name} runs a guest that does not accept further commands (not the default guest, or no vsock device)");
    };
    let start = Instant::now();
    loop {
        let stdin: Option<Box<dyn std::io::Read + Send>> = Some(Box::new(std::io::stdin()));
        match vmm::agent::exec(
            &sock,
            port,
            &run,
            stdin,
            std::io::stdout(),
            std::io::stderr(),
        ) {
            Ok(exit) => return Ok(ExitCode::from(exit.status())),
            // The guest has not started its agent yet: it is still booting.
            Err(AgentError::NoExec(_))
                if start.elapsed() < STARTING && control::status(&path).is_ok() =>
            {
                std::thread::sleep(Duration::from_millis(500));
            }
            Err(e) => return Err(e).with_context(|| format!("running {:?} in {name}", run.argv)),
        }
    }
}

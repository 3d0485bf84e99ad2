//! `vmapp`: run a command (or a shell) in a microVM booted from the
//! distribution's own kernel.

use std::io::IsTerminal;
use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Instant;

use anyhow::Context;
use clap::{Parser, Subcommand};
use vmm::agent::{AgentHost, Run, AGENT_PORT};
use vmm::wayland::{self, ProxyConfig, ProxyProcess};
use vmm::{image, Console, DiskConfig, ExitReason, GpuConfig, ShareConfig, VmBuilder, VsockConfig};

#[derive(Parser)]
#[command(
    name = "vmapp",
    version,
    about = "Run an application isolated in its own microVM"
)]
struct Cli {
    #[command(subcommand)]
    cmd: Cmd,
}

#[derive(Subcommand)]
enum Cmd {
    /// Boot a VM and run COMMAND in it (an interactive shell without one).
    Launch(Box<Launch>),
    /// Build or refresh the default guest (kernel and initramfs) in the cache.
    Prepare {
        /// Re-resolve the Debian package versions even if an image is cached.
        #[arg(long)]
        refresh: bool,
    },
}

#[derive(clap::Args)]
struct Launch {
    /// Kernel to boot (ELF vmlinux or bzImage); default: the prepared Debian kernel.
    #[arg(long)]
    kernel: Option<PathBuf>,
    /// Initramfs; default: the prepared one (none when --kernel is given).
    #[arg(long)]
    initramfs: Option<PathBuf>,
    /// Extra kernel command-line arguments, appended to the defaults.
    #[arg(long, default_value = "")]
    cmdline: String,
    /// Number of vCPUs.
    #[arg(long, default_value_t = 1)]
    cpus: u8,
    /// Guest memory in MiB.
    #[arg(long, default_value_t = 512)]
    memory: u64,
    /// Where the serial console goes: stdio, none, or a file path. Default:
    /// stdio for an interactive guest; stderr when the default guest runs a
    /// command through its agent (stdout is then the command's alone).
    #[arg(long)]
    console: Option<String>,
    /// Environment for the command, KEY=VALUE (repeatable; default guest).
    #[arg(long = "env", value_name = "KEY=VALUE")]
    envs: Vec<String>,
    /// Working directory of the command in the guest (default guest).
    #[arg(long)]
    workdir: Option<String>,
    /// Keep the VM running after the command exits (default guest).
    #[arg(long)]
    keep_running: bool,
    /// What a syscall outside a thread's seccomp filter does: kill (the
    /// process stops, naming the thread and syscall), log, or off.
    #[arg(long, default_value = "kill", value_name = "kill|log|off")]
    seccomp: seccomp_policies::Mode,
    /// A virtio-blk disk, PATH[,ro][,serial=ID]; repeat for more (vda, vdb, …).
    /// Writable images are locked exclusively, read-only ones shared.
    #[arg(long = "disk", value_name = "PATH[,ro][,serial=ID]")]
    disks: Vec<String>,
    /// A virtio-vsock device whose host side is this Unix socket (Firecracker's
    /// protocol: connect, send `CONNECT <port>\n`; guest connections to port P
    /// go to PATH_P).
    #[arg(long, value_name = "PATH")]
    vsock: Option<PathBuf>,
    /// The guest's vsock CID.
    #[arg(long, default_value_t = 3)]
    cid: u64,
    /// Share a host directory (virtio-fs), HOSTDIR:TAG[,ro][,path=GUESTDIR];
    /// repeatable. The default guest mounts it at GUESTDIR (default
    /// /mnt/TAG); other guests `mount -t virtiofs TAG DIR`. `ro` is enforced
    /// by the device.
    #[arg(long = "share", value_name = "HOSTDIR:TAG[,ro][,path=GUESTDIR]")]
    shares: Vec<String>,
    /// Share the host's / read-only and run the command from it (default
    /// guest): any program installed on the host runs isolated in the VM.
    /// /tmp, /run and $HOME are private to the guest.
    #[arg(long)]
    host_root: bool,
    /// With --host-root: share DIR (writable) as the guest's $HOME instead of
    /// an empty private one.
    #[arg(long, value_name = "DIR")]
    home: Option<PathBuf>,
    /// Show the app's windows on the host's Wayland desktop, through a
    /// validating wl-proxy (virtio-gpu cross-domain). On by default when
    /// WAYLAND_DISPLAY is set; SOCKET overrides the compositor's socket.
    #[arg(long, value_name = "SOCKET", num_args = 0..=1, default_missing_value = "")]
    wayland: Option<String>,
    /// No Wayland, even with WAYLAND_DISPLAY set.
    #[arg(long, conflicts_with = "wayland")]
    no_wayland: bool,
    /// wl-proxy policy file (TOML) for this VM's apps.
    #[arg(long, value_name = "FILE")]
    wl_policy: Option<PathBuf>,
    /// Clipboard and drag-and-drop for this VM's apps.
    #[arg(long, value_name = "allow|deny", value_parser = ["allow", "deny"])]
    clipboard: Option<String>,
    /// Label for the VM's windows ("[NAME] title"); default: the command's name.
    #[arg(long, value_name = "NAME")]
    tag: Option<String>,
    /// Boot the bzImage of the default guest instead of its vmlinux.
    #[arg(long)]
    bzimage: bool,
    /// The command to run in the guest, and its arguments.
    #[arg(last = true)]
    command: Vec<String>,
}

/// A private (0700) directory for the agent's sockets, removed on drop.
fn socket_dir() -> std::io::Result<tempfile::TempDir> {
    let base = std::env::var_os("XDG_RUNTIME_DIR")
        .map(PathBuf::from)
        .filter(|p| p.is_dir())
        .unwrap_or_else(std::env::temp_dir);
    tempfile::Builder::new().prefix("vmapp-").tempdir_in(base)
}

fn hex(argv: &[String]) -> String {
    argv.join("\0")
        .bytes()
        .map(|b| format!("{b:02x}"))
        .collect()
}

/// The tag of the host's root in `--host-root` mode, and of `--home`.
const ROOT_TAG: &str = "vmapp-root";
const HOME_TAG: &str = "vmapp-home";

/// `$HOME` in the guest: the host's, so programs find their usual paths.
fn guest_home() -> String {
    std::env::var("HOME")
        .ok()
        .filter(|h| h.starts_with('/') && h != "/" && !h.contains(char::is_whitespace))
        .unwrap_or_else(|| "/root".into())
}

/// The host's `/`, read-only, without what is the guest's own or private
/// to the host (the device refuses to enter these).
fn host_root_share(home: &str) -> ShareConfig {
    let mut s = ShareConfig::new("/", ROOT_TAG);
    s.read_only = true;
    s.hidden = [
        "/proc", "/sys", "/dev", "/run", "/tmp", "/home", "/root", "/mnt", home,
    ]
    .iter()
    .map(PathBuf::from)
    .chain(std::env::var_os("XDG_RUNTIME_DIR").map(PathBuf::from))
    .collect();
    s
}

/// This VM's wl-proxy in front of the compositor (its socket is set once
/// the VM's private directory exists).
fn proxy_config(a: &Launch) -> anyhow::Result<ProxyConfig> {
    let upstream = wayland::compositor_socket(a.wayland.as_deref())?;
    let tag = a.tag.clone().unwrap_or_else(|| {
        a.command
            .first()
            .and_then(|c| std::path::Path::new(c).file_name())
            .map(|n| n.to_string_lossy().chars().take(32).collect())
            .unwrap_or_else(|| "vm".into())
    });
    let cfg = ProxyConfig {
        binary: wayland::proxy_binary(),
        upstream,
        listen: PathBuf::new(),
        policy: a.wl_policy.clone(),
        clipboard: a.clipboard.clone(),
        tag,
        seccomp: match a.seccomp {
            seccomp_policies::Mode::Kill => "kill",
            seccomp_policies::Mode::Log => "log",
            seccomp_policies::Mode::Off => "off",
        }
        .into(),
    };
    Ok(cfg)
}

fn launch(a: Launch, start: Instant) -> anyhow::Result<ExitCode> {
    // Bad descriptions fail before the (possibly slow) guest preparation.
    let disks = a
        .disks
        .iter()
        .map(|d| DiskConfig::parse(d))
        .collect::<Result<Vec<_>, _>>()?;
    let mut shares = a
        .shares
        .iter()
        .map(|s| ShareConfig::parse(s))
        .collect::<Result<Vec<_>, _>>()?;
    if let Some(s) = shares
        .iter()
        .find(|s| s.tag == ROOT_TAG || s.tag == HOME_TAG)
    {
        anyhow::bail!(
            "the share tag {:?} is reserved for --host-root and --home",
            s.tag
        );
    }
    if a.home.is_some() && !a.host_root {
        anyhow::bail!("--home needs --host-root");
    }
    if a.host_root && a.kernel.is_some() {
        anyhow::bail!("--host-root needs the default guest (no --kernel)");
    }
    let home = guest_home();
    let want_wayland =
        !a.no_wayland && (a.wayland.is_some() || std::env::var_os("WAYLAND_DISPLAY").is_some());
    let proxy_cfg = if want_wayland {
        Some(proxy_config(&a)?)
    } else {
        None
    };
    let (kernel, initramfs, default_guest) = match a.kernel {
        Some(k) => (k, a.initramfs, false),
        None => {
            let init = image::default_init_path()?;
            let img = image::prepare(&image::cache_dir(), &init, false)
                .context("preparing the default guest")?;
            let k = if a.bzimage { img.bzimage } else { img.vmlinux };
            (k, a.initramfs.or(Some(img.initramfs)), true)
        }
    };
    // The default guest runs a command through its vsock agent (separate
    // stdout/stderr, binary-safe stdin); a terminal session and other guests
    // use the serial console.
    let interactive = std::io::stdin().is_terminal() && std::io::stdout().is_terminal();
    let agent = default_guest && !a.command.is_empty() && !interactive;
    let console = match a.console.as_deref() {
        Some("stdio") => Console::Stdio,
        None if !agent => Console::Stdio,
        None => Console::Writer(Box::new(std::io::stderr())),
        Some("none") => Console::None,
        Some(p) => Console::File(PathBuf::from(p)),
    };
    let mut b = VmBuilder::new(kernel)
        .seccomp(a.seccomp)
        .memory_mib(a.memory)
        .vcpus(a.cpus)
        .console(console)
        .start_time(start)
        .min_mmio_slots(4);
    for d in disks {
        b = b.disk(d);
    }
    if default_guest {
        for s in &shares {
            b = b.append_cmdline(&format!(
                "vmapp.mount={}:{}{}",
                s.tag,
                hex(&[s.mount_point()]),
                if s.read_only { ":ro" } else { "" }
            ));
        }
    }
    if a.host_root {
        shares.push(host_root_share(&home));
        b = b.append_cmdline(&format!(
            "vmapp.root={ROOT_TAG} vmapp.home={}",
            hex(std::slice::from_ref(&home))
        ));
        if let Some(h) = &a.home {
            shares.push(ShareConfig::new(h, HOME_TAG));
            b = b.append_cmdline(&format!("vmapp.homeshare={HOME_TAG}"));
        }
    }
    for s in shares {
        b = b.share(s);
    }
    let tmp = if agent || want_wayland {
        Some(socket_dir()?)
    } else {
        None
    };
    let vsock = match (a.vsock.clone(), agent, &tmp) {
        (Some(p), _, _) => Some(p),
        (None, true, Some(d)) => Some(d.path().join("v.sock")),
        _ => None,
    };
    let proxy = match (&tmp, proxy_cfg) {
        (Some(d), Some(mut cfg)) => {
            cfg.listen = d.path().join("wayland-0");
            let p = ProxyProcess::start(&cfg)?;
            b = b.gpu(GpuConfig {
                wayland_socket: p.socket().to_path_buf(),
                shm_size: wayland::DEFAULT_WINDOW,
            });
            if default_guest {
                b = b.append_cmdline("vmapp.wayland=1");
            }
            Some(p)
        }
        _ => None,
    };
    if let Some(p) = &vsock {
        b = b.vsock(VsockConfig {
            cid: a.cid,
            uds_path: p.clone(),
        });
    }
    if let Some(i) = initramfs {
        b = b.initramfs(i);
    }
    if default_guest {
        b = b.append_cmdline("quiet loglevel=0");
    }
    let host = match (&vsock, agent) {
        (Some(p), true) => {
            b = b.append_cmdline(&format!("vmapp.agent={AGENT_PORT}"));
            Some(AgentHost::listen(p)?)
        }
        _ => {
            if !a.command.is_empty() {
                b = b.append_cmdline(&format!("vmapp.cmd={}", hex(&a.command)));
            }
            None
        }
    };
    if a.console.as_deref().unwrap_or("stdio") == "stdio" && interactive {
        b = b.append_cmdline("vmapp.tty=1");
    }
    let vm = b.append_cmdline(&a.cmdline).build()?;
    let done = Arc::new(AtomicBool::new(false));
    let agent_thread = match host {
        Some(h) => {
            let run = Run {
                argv: a.command.clone(),
                env: a.envs.clone(),
                cwd: a
                    .workdir
                    .clone()
                    .or_else(|| a.host_root.then(|| home.clone()))
                    .unwrap_or_default(),
                keep_running: a.keep_running,
            };
            let done = done.clone();
            Some(
                std::thread::Builder::new()
                    .name("agent".into())
                    .spawn(move || {
                        // Before anything from the guest arrives.
                        seccomp_policies::install_default(seccomp_policies::ThreadKind::Agent)?;
                        let stdin: Box<dyn std::io::Read + Send> = Box::new(std::io::stdin());
                        h.serve(
                            &run,
                            &done,
                            Some(stdin),
                            std::io::stdout(),
                            std::io::stderr(),
                        )
                    })?,
            )
        }
        None => None,
    };
    let exit = vm.run();
    done.store(true, Ordering::SeqCst);
    let agent_result = agent_thread.map(|t| t.join());
    drop(proxy);
    drop(tmp);
    let exit = exit?;
    if let Some(r) = agent_result {
        match r {
            Ok(Ok(Some(e)))
                if exit.reason != ExitReason::Panic && exit.reason != ExitReason::TripleFault =>
            {
                return Ok(ExitCode::from(e.status()));
            }
            Ok(Err(e)) => eprintln!("vmapp: error: {e}"),
            _ => {}
        }
    }
    Ok(match exit.reason {
        ExitReason::PowerOff => ExitCode::from(exit.app_exit_status.unwrap_or(0)),
        ExitReason::Reset => {
            match exit.app_exit_status {
                // The application finished; the guest rebooting after that is a stop.
                Some(code) => ExitCode::from(code),
                None => {
                    eprintln!("vmapp: error: the guest rebooted (or panicked before it could report a panic)");
                    ExitCode::from(70)
                }
            }
        }
        ExitReason::Panic => {
            eprintln!("vmapp: error: the guest kernel panicked");
            ExitCode::from(70)
        }
        ExitReason::TripleFault => {
            eprintln!("vmapp: error: the guest triple-faulted");
            ExitCode::from(70)
        }
    })
}

fn main() -> ExitCode {
    let start = Instant::now();
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("warn")),
        )
        .with_writer(std::io::stderr)
        .without_time()
        .init();
    let cli = Cli::parse();
    let r = match cli.cmd {
        Cmd::Launch(a) => launch(*a, start),
        Cmd::Prepare { refresh } => (|| {
            let init = image::default_init_path()?;
            let img = image::prepare(&image::cache_dir(), &init, refresh)?;
            println!("release={}", img.release);
            println!("vmlinux={}", img.vmlinux.display());
            println!("bzimage={}", img.bzimage.display());
            println!("initramfs={}", img.initramfs.display());
            Ok(ExitCode::SUCCESS)
        })(),
    };
    match r {
        Ok(c) => c,
        Err(e) => {
            eprintln!("vmapp: error: {e:#}");
            ExitCode::from(1)
        }
    }
}

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

mod apps;
mod running;
use sommelier_guest::proto;
use vmapp::control;
use vmapp::image;
use vmapp::runtime::{self, RuntimeDir, RuntimeError};
use vmm::agent::{AgentHost, Run, AGENT_PORT, EXEC_PORT};
use vmm::wayland::{self, ProxyConfig, ProxyProcess};
use vmm::{
    Console, DiskConfig, ExitReason, Exposure, GpuConfig, ShareConfig, VmBuilder, VsockConfig,
};

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
    /// `vmapp launch NAME [options] [-- COMMAND…]` runs the app profile NAME,
    /// the options given here overriding (or adding to) the profile's.
    #[command(args_override_self = true)]
    Launch(Box<Launch>),
    /// Save an app profile ($XDG_CONFIG_HOME/vmapp/apps/NAME.toml):
    /// `vmapp create NAME [launch options] -- COMMAND [ARGS…]`.
    Create {
        /// The app's name: letters, digits, '.', '_', '-'.
        name: String,
        /// Launch options, then `--` and the command.
        #[arg(allow_hyphen_values = true, trailing_var_arg = true)]
        rest: Vec<String>,
    },
    /// Write an application-menu entry that launches the app profile NAME
    /// ($XDG_DATA_HOME/applications/vmapp-NAME.desktop); --remove takes it
    /// away.
    Desktop {
        /// The app's name.
        name: String,
        /// Remove the entry.
        #[arg(long)]
        remove: bool,
    },
    /// Remove an app profile.
    Destroy {
        /// The app's name.
        name: String,
        /// Remove its data directory too ($XDG_DATA_HOME/vmapp/NAME, the
        /// guest's $HOME in host-root mode).
        #[arg(long)]
        data: bool,
        /// Do not ask.
        #[arg(long)]
        yes: bool,
    },
    /// List the app profiles and the running VMs (name, state, vmapp's pid,
    /// uptime, memory, vCPUs, command).
    List,
    /// Stop a running VM: its guest shuts down gracefully (the app gets
    /// SIGTERM, then SIGKILL after a grace period); returns once it has.
    Stop {
        /// The app's name (or a VM's name as `vmapp list` shows it).
        name: String,
        /// Stop at once, without the guest's shutdown.
        #[arg(long)]
        force: bool,
        /// Seconds to wait for the graceful shutdown before stopping hard.
        #[arg(long, default_value_t = 30)]
        timeout: u64,
    },
    /// Turn a running VM's network (launched with --net) off or on. Off
    /// stops its passt: the guest's link goes down, its connections fail,
    /// and nothing more leaves the VM once this returns.
    Net {
        /// The app's name (or a VM's name as `vmapp list` shows it).
        name: String,
        /// `on` or `off`.
        #[arg(value_parser = ["on", "off"])]
        state: String,
    },
    /// Switch a running VM's sound: `off` ends its streams at once,
    /// `playback` ends its record streams, `full` lets it record too.
    Audio {
        /// The app's name (or a VM's name as `vmapp list` shows it).
        name: String,
        /// `off`, `playback` or `full`.
        #[arg(value_parser = ["off", "playback", "full"])]
        mode: String,
    },
    /// Run COMMAND in a running VM, with this terminal's stdio; exits with
    /// its status.
    Exec {
        /// The app's name (or a VM's name as `vmapp list` shows it).
        name: String,
        /// Environment for the command, KEY=VALUE (repeatable).
        #[arg(long = "env", value_name = "KEY=VALUE")]
        envs: Vec<String>,
        /// Working directory of the command in the guest.
        #[arg(long)]
        workdir: Option<String>,
        /// The command and its arguments.
        #[arg(last = true, required = true)]
        command: Vec<String>,
    },
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
    /// A virtio-blk disk, PATH[,ro][,serial=ID][,cache=writeback|none][,aio=auto|io_uring|sync];
    /// repeat for more (vda, vdb, …). Writable images are locked exclusively,
    /// read-only ones shared. cache=none bypasses the host page cache
    /// (O_DIRECT); aio=auto (the default) serves the disk with io_uring where
    /// the kernel allows it, else one synchronous request at a time.
    #[arg(long = "disk", value_name = "PATH[,OPTIONS]")]
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
    /// Run the command from the host's system trees, shared read-only
    /// (default guest): any program installed on the host runs isolated in
    /// the VM. The guest sees /usr, /etc (without secrets), /opt, Flatpak
    /// installations, fonts and themes, nothing else of the host; /tmp,
    /// /run, /var/tmp and $HOME are its own.
    #[arg(long)]
    host_root: bool,
    /// With --host-root: show the guest this host directory too, at the same
    /// path, read-only unless `,rw`; repeatable.
    #[arg(long = "expose", value_name = "HOSTDIR[,rw]")]
    expose: Vec<String>,
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
    /// No X display in the default guest. With windows on, X11 apps get
    /// `DISPLAY=:0`, served by a rootless Xwayland in the guest (started on
    /// their first connection) whose windows go through the same wl-proxy.
    #[arg(long)]
    no_x11: bool,
    /// wl-proxy policy file (TOML) for this VM's apps.
    #[arg(long, value_name = "FILE")]
    wl_policy: Option<PathBuf>,
    /// Clipboard and drag-and-drop for this VM's apps.
    #[arg(long, value_name = "allow|deny", value_parser = ["allow", "deny"])]
    clipboard: Option<String>,
    /// Label for the VM's windows ("[NAME] title"); default: the command's name.
    #[arg(long, value_name = "NAME")]
    tag: Option<String>,
    /// Run the VM in vmapp's jail (own user, mount, PID, IPC and network
    /// namespaces, a root with only this VM's files, no_new_privs,
    /// Landlock); `off` for debugging.
    #[arg(long, default_value = "on", value_name = "on|off", value_parser = ["on", "off"])]
    jail: String,
    /// Give the guest a network: NAT through passt on the host (which must
    /// be installed), carried over vsock; no network device. The default
    /// guest configures it by DHCP. `vmapp net NAME off|on` switches it
    /// while the VM runs.
    #[arg(long)]
    net: bool,
    /// With --net: let the guest reach the host's own loopback services
    /// (127.0.0.1) at its gateway address.
    #[arg(long, requires = "net")]
    net_host_loopback: bool,
    /// With --net: forward the host's 127.0.0.1:HOSTPORT to the guest's
    /// GUESTPORT (TCP); repeatable.
    #[arg(long = "publish", value_name = "HOSTPORT:GUESTPORT", requires = "net")]
    publish: Vec<String>,
    /// Sound (default guest): the guest's PulseAudio-protocol clients reach
    /// the host's sound server through a validating audio proxy; `playback`
    /// lets them play, `full` record too. `vmapp audio NAME MODE` switches
    /// it while the VM runs.
    #[arg(long, default_value = "playback", value_name = "off|playback|full",
          value_parser = ["off", "playback", "full"])]
    audio: String,
    /// Boot the bzImage of the default guest instead of its vmlinux.
    #[arg(long)]
    bzimage: bool,
    /// The command to run in the guest, and its arguments.
    #[arg(last = true)]
    command: Vec<String>,
    /// The app profile this run is of (set by `vmapp launch NAME`).
    #[arg(long, hide = true)]
    app: Option<String>,
}

/// A path as the default guest's command line carries it.
fn hex(path: &str) -> String {
    proto::encode_hex(path.as_bytes())
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

/// The host trees a host-root guest sees, read-only (where they exist).
const HOST_TREES: &[&str] = &[
    "/usr",
    "/bin",
    "/sbin",
    "/lib",
    "/lib32",
    "/lib64",
    "/libx32",
    "/etc",
    "/opt",
    "/var/lib/flatpak",
    "/var/cache/fontconfig",
    "/nix/store",
];

/// Trees under the user's `$HOME` it sees too: Flatpak apps, fonts, icons
/// and themes.
const HOME_TREES: &[&str] = &[
    ".local/share/flatpak",
    ".local/share/fonts",
    ".local/share/icons",
    ".local/share/themes",
    ".fonts",
    ".icons",
    ".themes",
];

/// Hidden in those trees even when others may read them (what others may
/// not read is hidden anyway); the guest writes its own machine id.
const HOST_DENY: &[&str] = &[
    "/etc/machine-id",
    "/etc/shadow",
    "/etc/shadow-",
    "/etc/gshadow",
    "/etc/gshadow-",
    "/etc/NetworkManager/system-connections",
];

/// The host's system trees (the device shows only these) and the kernel
/// command line words that tell the guest which trees under `$HOME` to keep.
fn host_root_share(home: &str) -> (ShareConfig, Vec<String>) {
    let mut s = ShareConfig::new("/", ROOT_TAG);
    s.read_only = true;
    // The host's home may be reached through a symlink (/home → var/home):
    // the device takes real directories only.
    let real_home = std::fs::canonicalize(home).unwrap_or_else(|_| PathBuf::from(home));
    let mut allow: Vec<PathBuf> = HOST_TREES.iter().map(PathBuf::from).collect();
    let mut keep = Vec::new();
    for t in HOME_TREES {
        let src = real_home.join(t);
        if src.is_dir() {
            keep.push(format!(
                "vmapp.keep={}:{}",
                hex(&src.display().to_string()),
                hex(&format!("{home}/{t}"))
            ));
            allow.push(src);
        }
    }
    s.expose = Some(Exposure {
        allow,
        deny: HOST_DENY.iter().map(PathBuf::from).collect(),
        public_only: true,
    });
    (s, keep)
}

/// `--expose HOSTDIR[,rw]`: a share of its own, mounted at the same path.
fn exposed_share(spec: &str, i: usize) -> anyhow::Result<ShareConfig> {
    let (path, rw) = match spec.strip_suffix(",rw") {
        Some(p) => (p, true),
        None => (spec.strip_suffix(",ro").unwrap_or(spec), false),
    };
    let real = std::fs::canonicalize(path)
        .with_context(|| format!("--expose {spec}: cannot resolve {path}"))?;
    if !real.is_dir() {
        anyhow::bail!("--expose {spec}: {} is not a directory", real.display());
    }
    let mut s = ShareConfig::new(&real, format!("vmapp-x{i}"));
    s.read_only = !rw;
    s.guest_path = Some(real.display().to_string());
    Ok(s)
}

/// The VM's label on its windows and sound streams: `--tag`, else the
/// command's name.
fn vm_tag(a: &Launch) -> String {
    a.tag.clone().unwrap_or_else(|| {
        a.command
            .first()
            .and_then(|c| std::path::Path::new(c).file_name())
            .map(|n| n.to_string_lossy().chars().take(32).collect())
            .unwrap_or_else(|| "vm".into())
    })
}

/// This VM's wl-proxy in front of the compositor (its socket is set once
/// the VM's private directory exists).
fn proxy_config(a: &Launch) -> anyhow::Result<ProxyConfig> {
    let upstream = wayland::compositor_socket(a.wayland.as_deref())?;
    let tag = vm_tag(a);
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

/// The user's shares and `--expose` directories, checked before the
/// (possibly slow) guest preparation.
fn user_shares(a: &Launch) -> anyhow::Result<Vec<ShareConfig>> {
    let mut shares = a
        .shares
        .iter()
        .map(|s| ShareConfig::parse(s))
        .collect::<Result<Vec<_>, _>>()?;
    if let Some(s) = shares.iter().find(|s| s.tag.starts_with("vmapp-")) {
        anyhow::bail!(
            "the share tag {:?}: tags starting with vmapp- are vmapp's own",
            s.tag
        );
    }
    if (a.home.is_some() || !a.expose.is_empty()) && !a.host_root {
        anyhow::bail!("--home and --expose need --host-root");
    }
    if a.host_root && a.kernel.is_some() {
        anyhow::bail!("--host-root needs the default guest (no --kernel)");
    }
    for (i, e) in a.expose.iter().enumerate() {
        shares.push(exposed_share(e, i)?);
    }
    Ok(shares)
}

/// The kernel, the initramfs, and whether they are the default guest's.
fn guest(a: &Launch) -> anyhow::Result<(PathBuf, Option<PathBuf>, bool)> {
    if let Some(k) = &a.kernel {
        return Ok((k.clone(), a.initramfs.clone(), false));
    }
    let init = image::default_init_path()?;
    let img =
        image::prepare(&image::cache_dir(), &init, false).context("preparing the default guest")?;
    let k = if a.bzimage { img.bzimage } else { img.vmlinux };
    Ok((k, a.initramfs.clone().or(Some(img.initramfs)), true))
}

/// Every share of this VM (the user's, then host-root mode's), and the
/// kernel command line words that tell the default guest where to mount
/// them and how to build its root.
fn all_shares(
    a: &Launch,
    mut shares: Vec<ShareConfig>,
    home: &str,
    default_guest: bool,
) -> (Vec<ShareConfig>, Vec<String>) {
    let mut words = Vec::new();
    if default_guest {
        for s in &shares {
            words.push(format!(
                "vmapp.mount={}:{}{}",
                s.tag,
                hex(&s.mount_point()),
                if s.read_only { ":ro" } else { "" }
            ));
        }
    }
    if a.host_root {
        let (root, keep) = host_root_share(home);
        shares.push(root);
        words.push(format!("vmapp.root={ROOT_TAG} vmapp.home={}", hex(home)));
        words.extend(keep);
        if let Some(h) = &a.home {
            shares.push(ShareConfig::new(h, HOME_TAG));
            words.push(format!("vmapp.homeshare={HOME_TAG}"));
        }
    }
    (shares, words)
}

/// What the jail holds: the files this VM uses, at their host paths.
fn jail_spec(
    kernel: &std::path::Path,
    initramfs: Option<&std::path::Path>,
    disks: &[DiskConfig],
    shares: &[ShareConfig],
    runtime: Vec<PathBuf>,
    scratch: PathBuf,
) -> vmapp::jail::Spec {
    let mut paths = vec![(kernel.to_path_buf(), false)];
    paths.extend(initramfs.map(|i| (i.to_path_buf(), false)));
    paths.extend(disks.iter().map(|d| (d.path.clone(), !d.read_only)));
    for s in shares {
        match &s.expose {
            // A view shows only its trees: the jail holds only those.
            Some(e) => paths.extend(
                e.allow
                    .iter()
                    .map(|t| s.host_dir.join(t.strip_prefix("/").unwrap_or(t)))
                    .filter(|p| std::fs::symlink_metadata(p).is_ok())
                    .map(|p| (p, false)),
            ),
            None => paths.push((s.host_dir.clone(), !s.read_only)),
        }
    }
    // The host's root itself is the jail's root.
    paths.retain(|(p, _)| p != std::path::Path::new("/"));
    vmapp::jail::Spec {
        paths,
        runtime,
        scratch,
        masked: masked_for_root(shares),
    }
}

/// What a vmapp run as root hides from its own jailed side: what the
/// guest's views hide (their deny lists, and in `/etc` what others may not
/// read), since root could read it there. Nothing for another user, who
/// cannot read it anyway.
fn masked_for_root(shares: &[ShareConfig]) -> Vec<PathBuf> {
    // SAFETY: geteuid has no preconditions.
    if unsafe { libc::geteuid() } != 0 {
        return Vec::new();
    }
    let mut masked = Vec::new();
    for e in shares
        .iter()
        .filter_map(|s| s.expose.as_ref().map(|e| (s, e)))
    {
        let (s, e) = e;
        let host = |t: &std::path::Path| s.host_dir.join(t.strip_prefix("/").unwrap_or(t));
        masked.extend(e.deny.iter().map(|d| host(d)));
        if e.public_only {
            for t in e.allow.iter().filter(|t| t.starts_with("/etc")) {
                masked.extend(vmapp::jail::unreadable_by_others(&host(t)));
            }
        }
    }
    masked
}

/// Where the serial console goes.
fn console(a: &Launch, agent: bool) -> Console {
    match a.console.as_deref() {
        Some("stdio") => Console::Stdio,
        None if !agent => Console::Stdio,
        None => Console::Writer(Box::new(std::io::stderr())),
        Some("none") => Console::None,
        Some(p) => Console::File(PathBuf::from(p)),
    }
}

/// A console file opened now (the jail does not hold its directory).
fn open_console(c: Console) -> anyhow::Result<Console> {
    Ok(match c {
        Console::File(p) => Console::Writer(Box::new(
            std::fs::OpenOptions::new()
                .create(true)
                .append(true)
                .open(&p)
                .with_context(|| format!("console file {}", p.display()))?,
        )),
        c => c,
    })
}

/// Starts this VM's wl-proxy (listening in `dir`) and adds the gpu device
/// that connects to it.
fn add_wayland(
    b: VmBuilder,
    mut cfg: ProxyConfig,
    dir: &std::path::Path,
    default_guest: bool,
    x11: bool,
) -> anyhow::Result<(VmBuilder, ProxyProcess)> {
    cfg.listen = dir.join("wayland-0");
    let p = ProxyProcess::start(&cfg)?;
    let mut b = b.gpu(GpuConfig {
        wayland_socket: p.socket().to_path_buf(),
        shm_size: wayland::DEFAULT_WINDOW,
    });
    if default_guest {
        b = b.append_cmdline("vmapp.wayland=1");
        if !x11 {
            b = b.append_cmdline("vmapp.x11=0");
        }
    }
    Ok((b, p))
}

/// The `agent` thread: runs the command through the guest's agent.
fn start_agent(
    h: AgentHost,
    run: Run,
    done: &Arc<AtomicBool>,
) -> std::io::Result<
    std::thread::JoinHandle<Result<Option<vmm::agent::Exit>, vmm::agent::AgentError>>,
> {
    let done = done.clone();
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
        })
}

/// How the command reaches the guest: through the agent (its host side
/// listening on the vsock device's socket), or on the kernel command line.
fn command_channel(
    mut b: VmBuilder,
    a: &Launch,
    vsock: Option<&PathBuf>,
    agent: bool,
    interactive: bool,
) -> anyhow::Result<(VmBuilder, Option<AgentHost>)> {
    let host = match (vsock, agent) {
        (Some(p), true) => {
            b = b.append_cmdline(&format!("vmapp.agent={AGENT_PORT}"));
            Some(AgentHost::listen(p)?)
        }
        _ => {
            if !a.command.is_empty() {
                b = b.append_cmdline(&format!("vmapp.cmd={}", proto::encode_argv(&a.command)));
            }
            None
        }
    };
    if a.console.as_deref().unwrap_or("stdio") == "stdio" && interactive {
        b = b.append_cmdline("vmapp.tty=1");
    }
    Ok((b.append_cmdline(&a.cmdline), host))
}

/// What the VM's control socket says about it ([`control`]).
struct ControlSpec {
    /// The runtime directory the socket goes in.
    dir: PathBuf,
    /// The VM's name.
    name: String,
    /// vmapp's process ID as the host sees it (taken before the jail).
    pid: u32,
    /// The VM's command.
    command: Vec<String>,
    /// Whether the guest accepts further commands (the default guest with
    /// a vsock device).
    exec: bool,
    /// The network's switch, if the VM has a network.
    net: Option<vmapp::net::NetSwitch>,
    /// The audio proxy's switch, if the VM has one.
    audio: Option<vmapp::audio::AudioSwitch>,
}

/// Starts the control socket of the VM `handle` runs.
fn start_control(
    c: ControlSpec,
    handle: &vmm::VmHandle,
    seccomp: seccomp_policies::Mode,
) -> Result<control::ControlServer, control::ControlError> {
    let info = handle.info();
    let stopper = handle.stopper();
    let served = control::Served {
        status: control::Status {
            name: c.name,
            pid: c.pid,
            uptime_s: 0,
            memory_mib: info.memory_mib,
            vcpus: info.vcpus,
            command: c.command,
            exec_socket: info.vsock.clone().filter(|_| c.exec),
            exec_port: (c.exec && info.vsock.is_some()).then_some(EXEC_PORT),
            network: None,
            audio: None,
        },
        started: Instant::now(),
        stop: Box::new(move |force| {
            if force {
                stopper.stop();
            } else {
                stopper.shutdown();
            }
        }),
        net: c.net.map(|n| {
            let n = std::sync::Mutex::new(n);
            Box::new(move |on: Option<bool>| {
                let mut n = n.lock().unwrap_or_else(|p| p.into_inner());
                n.set(on).map_err(|e| e.to_string())
            }) as control::NetSwitch
        }),
        audio: c.audio.map(|a| {
            let a = std::sync::Mutex::new(a);
            Box::new(move |mode: Option<&str>| {
                let mut a = a.lock().unwrap_or_else(|p| p.into_inner());
                if let Some(m) = mode {
                    let m = m
                        .parse()
                        .map_err(|e: audio_proxy::policy::PolicyError| e.to_string())?;
                    a.set(m).map_err(|e| e.to_string())?;
                }
                Ok(a.mode().to_string())
            }) as control::AudioSwitch
        }),
        seccomp,
    };
    control::serve(&c.dir.join(runtime::CONTROL), served)
}

/// Builds and runs the VM (with the agent thread and the control socket,
/// if any): vmapp's status.
fn run_vm(
    b: VmBuilder,
    host: Option<AgentHost>,
    run: Run,
    ctl: Option<ControlSpec>,
    seccomp: seccomp_policies::Mode,
) -> anyhow::Result<ExitCode> {
    let vm = b.build()?;
    let done = Arc::new(AtomicBool::new(false));
    let agent_thread = host.map(|h| start_agent(h, run, &done)).transpose()?;
    let handle = vm.start()?;
    let control = match ctl.map(|c| start_control(c, &handle, seccomp)).transpose() {
        Ok(c) => c,
        Err(e) => {
            handle.stop();
            let _ = handle.wait();
            return Err(e.into());
        }
    };
    vmapp::stop::watch(handle.stopper(), seccomp)?;
    // The library leaves the caller's thread alone; vmapp's main thread
    // only waits from here on, so it takes the event loop's filter too.
    seccomp_policies::install(seccomp_policies::ThreadKind::Vmm, seccomp)?;
    let exit = handle.wait();
    drop(control);
    done.store(true, Ordering::SeqCst);
    let agent_result = agent_thread.map(|t| t.join());
    let exit = exit?;
    if let Some(Ok(r)) = agent_result {
        match r {
            Ok(Some(e))
                if exit.reason != ExitReason::Panic && exit.reason != ExitReason::TripleFault =>
            {
                return Ok(ExitCode::from(e.status()));
            }
            Err(e) => eprintln!("vmapp: error: {e}"),
            _ => {}
        }
    }
    Ok(exit_code(&exit))
}

/// What the agent asks the guest to run.
fn run_request(a: &Launch, home: &str) -> Run {
    Run {
        argv: a.command.clone(),
        env: a.envs.clone(),
        cwd: a
            .workdir
            .clone()
            .or_else(|| a.host_root.then(|| home.to_string()))
            .unwrap_or_default(),
        keep_running: a.keep_running,
    }
}

/// The VM's builder with its size, console and seccomp mode.
fn builder(
    a: &Launch,
    kernel: &std::path::Path,
    agent: bool,
    start: Instant,
) -> anyhow::Result<VmBuilder> {
    Ok(VmBuilder::new(kernel)
        .seccomp(a.seccomp)
        .memory_mib(a.memory)
        .vcpus(a.cpus)
        .console(open_console(console(a, agent))?)
        .start_time(start)
        .min_mmio_slots(4))
}

/// Adds the VM's vsock device (the user's socket, or the agent's in the
/// runtime directory) and its Wayland path (a wl-proxy process and the gpu
/// device); returns the vsock socket's path and the proxy.
fn add_channels(
    mut b: VmBuilder,
    a: &Launch,
    runtime: Option<&std::path::Path>,
    agent: bool,
    proxy_cfg: Option<ProxyConfig>,
    default_guest: bool,
) -> anyhow::Result<(VmBuilder, Option<PathBuf>, Option<ProxyProcess>)> {
    // The default guest of an app always gets one, for `vmapp exec`.
    // So does any guest with a network (it travels over vsock).
    let vsock = match (a.vsock.clone(), agent || a.app.is_some(), runtime) {
        (Some(p), _, _) => Some(p),
        (None, true, Some(d)) if default_guest => Some(d.join("v.sock")),
        (None, _, Some(d)) if a.net => Some(d.join("v.sock")),
        // Sound travels over vsock too.
        (None, _, Some(d)) if default_guest && a.audio != "off" => Some(d.join("v.sock")),
        _ => None,
    };
    let mut proxy = None;
    if let (Some(d), Some(cfg)) = (runtime, proxy_cfg) {
        let (nb, p) = add_wayland(b, cfg, d, default_guest, !a.no_x11)?;
        (b, proxy) = (nb, Some(p));
    }
    if let Some(uds_path) = vsock.clone() {
        b = b.vsock(VsockConfig {
            cid: a.cid,
            uds_path,
            // passt takes the guest's frames over this stream (the helper
            // starts it, so the builder's own network is not used).
            framed_ports: if a.net {
                vec![vmm::net::NET_PORT]
            } else {
                Vec::new()
            },
        });
    }
    if default_guest {
        b = b.append_cmdline("quiet loglevel=0");
        if vsock.is_some() {
            b = b.append_cmdline(&format!("vmapp.exec={EXEC_PORT}"));
        }
        if a.net {
            b = b.append_cmdline(&format!("vmapp.net={}", vmm::net::NET_PORT));
        }
    }
    Ok((b, vsock, proxy))
}

/// The app's runtime directory, taken for this run — or, when the app runs
/// already, `Err` with the status of its command run in that VM instead.
fn take_app_dir(a: &Launch) -> anyhow::Result<Result<Option<RuntimeDir>, ExitCode>> {
    let Some(name) = &a.app else {
        return Ok(Ok(None));
    };
    match RuntimeDir::named(name) {
        Ok(d) => Ok(Ok(Some(d))),
        // Like opening a second window of the app: its command (or the one
        // given) runs in the running VM.
        Err(RuntimeError::Running { .. }) => {
            running::exec(name, run_request(a, &guest_home())).map(Err)
        }
        Err(e) => Err(e.into()),
    }
}

/// What the control socket of the VM in runtime directory `t` serves.
fn control_spec(
    t: &RuntimeDir,
    pid: u32,
    a: &Launch,
    exec: bool,
    switches: (
        Option<vmapp::net::NetSwitch>,
        Option<vmapp::audio::AudioSwitch>,
    ),
) -> ControlSpec {
    ControlSpec {
        dir: t.path().to_path_buf(),
        name: t.name(),
        pid,
        command: a.command.clone(),
        exec,
        net: switches.0,
        audio: switches.1,
    }
}

/// The VM's audio proxy (default guest, vmapp's own vsock socket), and the
/// guest's word that makes its sound socket.
fn start_audio(
    mut b: VmBuilder,
    a: &Launch,
    vsock: Option<&std::path::Path>,
    default_guest: bool,
) -> anyhow::Result<(
    VmBuilder,
    Option<vmapp::audio::AudioProcess>,
    Option<vmapp::audio::AudioSwitch>,
)> {
    let (Some(uds), true, None) = (vsock, default_guest, a.vsock.as_ref()) else {
        if a.audio == "full" {
            anyhow::bail!(
                "--audio full needs the default guest and vmapp's own vsock socket (no --vsock)"
            );
        }
        return Ok((b, None, None));
    };
    if a.audio == "off" && a.app.is_none() {
        return Ok((b, None, None));
    }
    let cfg = vmapp::audio::AudioConfig {
        binary: vmapp::audio::proxy_binary(),
        vsock_uds: uds.to_path_buf(),
        tag: vm_tag(a),
        mode: a.audio.parse()?,
        seccomp: a.seccomp,
    };
    let (p, switch) = vmapp::audio::AudioProcess::start(&cfg)
        .context("starting the VM's audio proxy (--audio off runs without one)")?;
    b = b.append_cmdline(&format!("vmapp.audio={}", vmapp::audio::AUDIO_PORT));
    Ok((b, Some(p), Some(switch)))
}

fn runtime_path(tmp: &Option<RuntimeDir>) -> Option<PathBuf> {
    tmp.as_ref().map(|t| t.path().to_path_buf())
}

/// The VM's network helper and passt (with `--net`), network on.
fn start_network(
    a: &Launch,
    vsock: Option<&std::path::Path>,
    runtime: Option<&std::path::Path>,
) -> anyhow::Result<(Option<vmapp::net::NetSwitch>, Option<vmapp::net::NetHelper>)> {
    if !a.net {
        return Ok((None, None));
    }
    // passt's socket must be in the private directory: in a shared one
    // another user could bind it first and take the guest's traffic.
    let (Some(uds), Some(dir)) = (vsock.filter(|_| a.vsock.is_none()), runtime) else {
        anyhow::bail!("--net needs vmapp's own vsock socket (not --vsock)");
    };
    let publish = a.publish.iter().map(|p| p.parse());
    let cfg = vmm::net::NetConfig {
        passt: None,
        publish: publish.collect::<Result<_, vmm::net::NetError>>()?,
        host_loopback: a.net_host_loopback,
        log: Some(dir.join("passt.log")),
        mtu: None,
    };
    let (switch, helper) = vmapp::net::NetSwitch::spawn(&cfg, uds, true)?;
    Ok((Some(switch), Some(helper)))
}

/// Moves into the jail: `Some(status)` in the parent, once the VM has
/// ended; `None` in the child, which goes on to run the VM.
fn enter_jail(
    spec: &vmapp::jail::Spec,
    seccomp: seccomp_policies::Mode,
    proxy: &mut Option<ProxyProcess>,
    tmp: &mut Option<RuntimeDir>,
) -> anyhow::Result<Option<ExitCode>> {
    // The jail's parent filters itself in this mode.
    seccomp_policies::set_default_mode(seccomp);
    match vmapp::jail::enter(spec)? {
        vmapp::jail::Side::Parent(code) => Ok(Some(ExitCode::from(code))),
        // The parent stops this VM's wl-proxy and removes the runtime
        // directory: its process is not in this PID namespace.
        vmapp::jail::Side::Child => {
            std::mem::forget(proxy.take());
            std::mem::forget(tmp.take());
            Ok(None)
        }
    }
}

/// The jail of a launch whose runtime directory is `t` (and its vsock
/// socket's directory, when given outside it).
fn launch_jail_spec(
    a: &Launch,
    t: &RuntimeDir,
    kernel: &std::path::Path,
    initramfs: Option<&std::path::Path>,
    disks: &[DiskConfig],
    shares: &[ShareConfig],
) -> anyhow::Result<vmapp::jail::Spec> {
    if let Some(v) = &a.vsock {
        vmapp::jail::check_vsock_dir(v)?;
    }
    let vsock_dir = a.vsock.as_ref().and_then(|v| v.parent());
    let runtime = [t.path()].into_iter().chain(vsock_dir).map(PathBuf::from);
    let scratch = t.path().join("jail");
    Ok(jail_spec(
        kernel,
        initramfs,
        disks,
        shares,
        runtime.collect(),
        scratch,
    ))
}

/// The VM's runtime directory: an app's always (its lock says the app
/// runs); another VM's when something needs a socket or the jail a scratch
/// place (`needed`).
fn runtime_dir(app_dir: Option<RuntimeDir>, needed: bool) -> anyhow::Result<Option<RuntimeDir>> {
    Ok(match app_dir {
        Some(d) => Some(d),
        None if needed => Some(RuntimeDir::temp()?),
        None => None,
    })
}

fn launch(a: Launch, start: Instant) -> anyhow::Result<ExitCode> {
    let app_dir = match take_app_dir(&a)? {
        Ok(d) => d,
        Err(code) => return Ok(code),
    };
    // As the host sees it (in the jail, vmapp is PID 1 of its namespace).
    let host_pid = std::process::id();
    // Stop signals go to one thread (`stop`); every thread inherits the mask.
    vmapp::stop::block();
    // Shares hold an fd per inode the guest caches (and vsock an fd per
    // stream): vmapp takes all the open files it may have.
    vmm::raise_open_files_limit();
    // Bad descriptions fail before the (possibly slow) guest preparation.
    let disks = a.disks.iter().map(|d| DiskConfig::parse(d));
    let disks = disks.collect::<Result<Vec<_>, _>>()?;
    let shares = user_shares(&a)?;
    let home = guest_home();
    let want_wayland =
        !a.no_wayland && (a.wayland.is_some() || std::env::var_os("WAYLAND_DISPLAY").is_some());
    let proxy_cfg = want_wayland.then(|| proxy_config(&a)).transpose()?;
    let (kernel, initramfs, default_guest) = guest(&a)?;
    // The default guest runs a command through its vsock agent (separate
    // stdout/stderr, binary-safe stdin); a terminal session and other guests
    // use the serial console.
    let interactive = std::io::stdin().is_terminal() && std::io::stdout().is_terminal();
    let agent = default_guest && !a.command.is_empty() && !interactive;
    let jailed = a.jail == "on";
    let mut b = builder(&a, &kernel, agent, start)?;
    let (shares, words) = all_shares(&a, shares, &home, default_guest);
    for w in words {
        b = b.append_cmdline(&w);
    }
    let needs_dir = agent || want_wayland || jailed || a.net || (default_guest && a.audio != "off");
    let mut tmp = runtime_dir(app_dir, needs_dir)?;
    let jail = tmp
        .as_ref()
        .filter(|_| jailed)
        .map(|t| launch_jail_spec(&a, t, &kernel, initramfs.as_deref(), &disks, &shares))
        .transpose()?;
    b = disks.into_iter().fold(b, VmBuilder::disk);
    b = shares.into_iter().fold(b, VmBuilder::share);
    let runtime = tmp.as_ref().map(|t| t.path());
    let (b, vsock, mut proxy) = add_channels(b, &a, runtime, agent, proxy_cfg, default_guest)?;
    let b = match initramfs {
        Some(i) => b.initramfs(i),
        None => b,
    };
    let (b, host) = command_channel(b, &a, vsock.as_ref(), agent, interactive)?;
    // Started here, in the host's namespaces, for the jail's sake.
    let (net, mut helper) = start_network(&a, vsock.as_deref(), runtime_path(&tmp).as_deref())?;
    let (mut b, mut audio, audio_switch) = start_audio(b, &a, vsock.as_deref(), default_guest)?;
    let exec = default_guest && vsock.is_some();
    let ctl = tmp
        .as_ref()
        .map(|t| control_spec(t, host_pid, &a, exec, (net, audio_switch)));
    if let Some(spec) = &jail {
        // Bad input and an unusable KVM are reported from here, where the
        // host can be looked at (/sys for a PVM host, for one).
        b = b.check()?;
        if let Some(code) = enter_jail(spec, a.seccomp, &mut proxy, &mut tmp)? {
            // The switches' copies first: the helpers then see their end.
            drop((host, ctl));
            drop((helper, proxy, audio, tmp));
            return Ok(code);
        }
        // The helpers are the parent's children, not this process's.
        std::mem::forget(helper.take());
        std::mem::forget(audio.take());
    }
    let code = run_vm(b, host, run_request(&a, &home), ctl, a.seccomp);
    // In this order (a tuple drops left to right).
    drop((helper, proxy, audio, tmp));
    code
}

/// vmapp's status for a VM that stopped without an agent's answer.
fn exit_code(exit: &vmm::VmExit) -> ExitCode {
    match exit.reason {
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
        ExitReason::Stopped => {
            eprintln!("vmapp: the VM was stopped");
            ExitCode::from(143)
        }
    }
}

fn main() -> ExitCode {
    let start = Instant::now();
    // glibc's malloc opens files on its own: the first new arena reads
    // /sys/devices/system/cpu/online (to bound the arena count) and the
    // first trim of an arena's heap /proc/sys/vm/overcommit_memory, from
    // whichever thread gets there, under a seccomp filter that allows no
    // openat (seen as SIGSYS in `agent-stdin`). A fixed arena bound and no
    // trimming keep malloc off the file system.
    // SAFETY: mallopt takes plain values; called before any thread starts.
    unsafe {
        libc::mallopt(libc::M_ARENA_MAX, 8);
        libc::mallopt(libc::M_TRIM_THRESHOLD, 1 << 30);
    }
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("warn")),
        )
        .with_writer(std::io::stderr)
        .without_time()
        .init();
    let args: Vec<String> = std::env::args().collect();
    if args.get(1).map(String::as_str) == Some(vmapp::net::HELPER_ARG) {
        return vmapp::net::helper_main(&args[2..]);
    }
    let r = match (args.get(1).map(String::as_str), apps::app_name(&args)) {
        (Some("create"), Some(name)) => apps::create(&args, name).map(|()| ExitCode::SUCCESS),
        (Some("destroy"), Some(name)) => apps::destroy(&args, name).map(|()| ExitCode::SUCCESS),
        (Some("desktop"), Some(name)) => apps::desktop(&args, name).map(|()| ExitCode::SUCCESS),
        (Some("launch"), Some(name)) => {
            apps::expand_launch(&args, name).and_then(|a| run(Cli::parse_from(a), start))
        }
        _ => run(Cli::parse(), start),
    };
    match r {
        Ok(c) => c,
        Err(e) => {
            eprintln!("vmapp: error: {e:#}");
            ExitCode::from(1)
        }
    }
}

fn run(cli: Cli, start: Instant) -> anyhow::Result<ExitCode> {
    match cli.cmd {
        Cmd::Launch(a) => launch(*a, start),
        // Reached only when NAME is missing or looks like an option.
        Cmd::Create { name, .. } | Cmd::Destroy { name, .. } | Cmd::Desktop { name, .. } => {
            vmapp::profile::check_name(&name)?;
            anyhow::bail!("usage: vmapp create NAME [options] -- COMMAND… | vmapp destroy NAME [--data] [--yes]")
        }
        Cmd::List => running::list(),
        Cmd::Net { name, state } => running::net(&name, &state),
        Cmd::Audio { name, mode } => running::audio(&name, &mode),
        Cmd::Stop {
            name,
            force,
            timeout,
        } => running::stop(&name, force, timeout),
        Cmd::Exec {
            name,
            envs,
            workdir,
            command,
        } => running::exec(
            &name,
            Run {
                argv: command,
                env: envs,
                cwd: workdir.unwrap_or_default(),
                keep_running: false,
            },
        ),
        Cmd::Prepare { refresh } => {
            let init = image::default_init_path()?;
            let img = image::prepare(&image::cache_dir(), &init, refresh)?;
            println!("release={}", img.release);
            println!("vmlinux={}", img.vmlinux.display());
            println!("bzimage={}", img.bzimage.display());
            println!("initramfs={}", img.initramfs.display());
            Ok(ExitCode::SUCCESS)
        }
    }
}

//! `vmapp`: run a command (or a shell) in a microVM booted from the
//! distribution's own kernel.

use std::io::IsTerminal;
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Instant;

use anyhow::Context;
use clap::{Parser, Subcommand};
use vmm::{image, Console, DiskConfig, ExitReason, VmBuilder, VsockConfig};

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
    Launch(Launch),
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
    /// Where the serial console goes: stdio, none, or a file path.
    #[arg(long, default_value = "stdio")]
    console: String,
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
    /// Boot the bzImage of the default guest instead of its vmlinux.
    #[arg(long)]
    bzimage: bool,
    /// The command to run in the guest, and its arguments.
    #[arg(last = true)]
    command: Vec<String>,
}

fn hex(argv: &[String]) -> String {
    argv.join("\0")
        .bytes()
        .map(|b| format!("{b:02x}"))
        .collect()
}

fn launch(a: Launch, start: Instant) -> anyhow::Result<ExitCode> {
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
    let console = match a.console.as_str() {
        "stdio" => Console::Stdio,
        "none" => Console::None,
        p => Console::File(PathBuf::from(p)),
    };
    let mut b = VmBuilder::new(kernel)
        .memory_mib(a.memory)
        .vcpus(a.cpus)
        .console(console)
        .start_time(start)
        .min_mmio_slots(4);
    for d in &a.disks {
        b = b.disk(DiskConfig::parse(d)?);
    }
    if let Some(p) = a.vsock {
        b = b.vsock(VsockConfig {
            cid: a.cid,
            uds_path: p,
        });
    }
    if let Some(i) = initramfs {
        b = b.initramfs(i);
    }
    if default_guest {
        b = b.append_cmdline("quiet loglevel=0");
    }
    if !a.command.is_empty() {
        b = b.append_cmdline(&format!("vmapp.cmd={}", hex(&a.command)));
    }
    if a.console == "stdio" && std::io::stdin().is_terminal() && std::io::stdout().is_terminal() {
        b = b.append_cmdline("vmapp.tty=1");
    }
    let exit = b.append_cmdline(&a.cmdline).build()?.run()?;
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
        Cmd::Launch(a) => launch(a, start),
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

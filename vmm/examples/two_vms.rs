//! An embedder running two VMs at once, running a further command in one
//! and stopping it through its handle: VM "a" runs `sleep 600` (with a
//! vsock device, its socket in a temporary directory, and the default
//! guest's exec port), VM "b" says hello and powers off; once b has
//! stopped, `a.exec` runs `uname -r` in a, then a is stopped from another
//! thread through a [`vmm::Stopper`]. Exits 0 if the command ran and a
//! stopped because it was asked to and b powered off.
//!
//! ```text
//! eval "$(vmapp prepare)"   # sets vmlinux=, initramfs=, ...
//! cargo run --example two_vms -- "$vmlinux" "$initramfs"
//! ```
//!
//! (The default guest runs the command `vmapp.cmd=` carries: its arguments
//! joined by NUL, in hex.) On a PVM host, run it inside the emulated KVM
//! host: `cargo xtask sh 'target/.../examples/two_vms ...'`.

use std::process::ExitCode;

use std::time::Duration;

use vmm::agent::{AgentError, Exit, Run, EXEC_PORT};
use vmm::{Console, ExitReason, VmBuilder, VmError, VmHandle, VsockConfig};

/// `argv` as the default guest's `vmapp.cmd=` carries it.
fn cmd(argv: &[&str]) -> String {
    let joined = argv.join("\0");
    let hex: String = joined.bytes().map(|b| format!("{b:02x}")).collect();
    format!("quiet loglevel=0 vmapp.cmd={hex}")
}

fn start(
    kernel: &str,
    initramfs: &str,
    argv: &[&str],
    console: Console,
    vsock: Option<&std::path::Path>,
) -> Result<VmHandle, VmError> {
    let mut b = VmBuilder::new(kernel)
        .initramfs(initramfs)
        .memory_mib(256)
        .console(console)
        .append_cmdline(&cmd(argv));
    if let Some(p) = vsock {
        b = b
            .vsock(VsockConfig {
                cid: 3,
                uds_path: p.to_path_buf(),
                framed_ports: Vec::new(),
            })
            .append_cmdline(&format!("vmapp.exec={EXEC_PORT}"));
    }
    b.build()?.start()
}

/// Runs `uname -r` in `vm` once its guest accepts commands (it may still
/// be booting); returns what it printed and how it ended.
fn uname(vm: &VmHandle) -> Result<(String, Exit), AgentError> {
    let run = Run {
        argv: vec!["uname".into(), "-r".into()],
        env: vec![],
        cwd: String::new(),
        keep_running: false,
    };
    let mut out = Vec::new();
    let exit = vm.exec_when_ready(&run, Duration::from_secs(120), &mut out, std::io::stderr())?;
    Ok((String::from_utf8_lossy(&out).trim().to_string(), exit))
}

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let [kernel, initramfs] = args.as_slice() else {
        eprintln!("usage: two_vms KERNEL INITRAMFS");
        return ExitCode::from(2);
    };
    let dir = match tempfile::tempdir() {
        Ok(d) => d,
        Err(e) => {
            eprintln!("two_vms: {e}");
            return ExitCode::from(1);
        }
    };
    let run = || -> Result<(ExitReason, ExitReason), VmError> {
        let sock = dir.path().join("a.sock");
        let a = start(
            kernel,
            initramfs,
            &["sleep", "600"],
            Console::None,
            Some(&sock),
        )?;
        let b = start(
            kernel,
            initramfs,
            &["echo", "b says hello"],
            Console::Stdio,
            None,
        )?;
        let b_exit = b.wait()?;
        println!(
            "two_vms: b stopped: {:?}; a still running: {}",
            b_exit.reason,
            !a.is_finished()
        );
        match uname(&a) {
            Ok((out, exit)) => println!("two_vms: in a: uname -r printed {out:?}, {exit:?}"),
            Err(e) => println!("two_vms: in a: {e}"),
        }
        // Any thread may stop a VM: here a helper thread does, while this
        // one waits.
        let stopper = a.stopper();
        std::thread::spawn(move || stopper.stop());
        let a_exit = a.wait()?;
        println!("two_vms: a stopped: {:?}", a_exit.reason);
        Ok((a_exit.reason, b_exit.reason))
    };
    match run() {
        Ok((ExitReason::Stopped, ExitReason::PowerOff)) => ExitCode::SUCCESS,
        Ok(other) => {
            eprintln!("two_vms: unexpected stops {other:?}");
            ExitCode::from(1)
        }
        Err(e) => {
            eprintln!("two_vms: {e}");
            ExitCode::from(1)
        }
    }
}

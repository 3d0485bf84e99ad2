//! An embedder running two VMs at once and stopping one through its handle:
//! VM "a" runs `sleep 600`, VM "b" says hello and powers off; once b has
//! stopped, a is stopped from another thread through a [`vmm::Stopper`].
//! Exits 0 if a stopped because it was asked to and b powered off.
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

use vmm::{Console, ExitReason, VmBuilder, VmError, VmHandle};

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
) -> Result<VmHandle, VmError> {
    VmBuilder::new(kernel)
        .initramfs(initramfs)
        .memory_mib(256)
        .console(console)
        .append_cmdline(&cmd(argv))
        .build()?
        .start()
}

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let [kernel, initramfs] = args.as_slice() else {
        eprintln!("usage: two_vms KERNEL INITRAMFS");
        return ExitCode::from(2);
    };
    let run = || -> Result<(ExitReason, ExitReason), VmError> {
        let a = start(kernel, initramfs, &["sleep", "600"], Console::None)?;
        let b = start(kernel, initramfs, &["echo", "b says hello"], Console::Stdio)?;
        let b_exit = b.wait()?;
        println!(
            "two_vms: b stopped: {:?}; a still running: {}",
            b_exit.reason,
            !a.is_finished()
        );
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

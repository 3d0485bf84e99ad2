//! An embedder's view of the `vmm` library: boot a kernel, let the guest run,
//! and report why it stopped.
//!
//! ```text
//! cargo run --example boot -- KERNEL [INITRAMFS] [CMDLINE...]
//! ```
//!
//! With the default guest built by `vmapp prepare`:
//!
//! ```text
//! eval "$(vmapp prepare)"   # sets vmlinux=, initramfs=, ...
//! cargo run --example boot -- "$vmlinux" "$initramfs" vmapp.cmd=$(printf 'uname -a' | xxd -p)
//! ```
//!
//! On a host whose `/dev/kvm` cannot run stock kernels (PVM), run it inside
//! the emulated KVM host: `cargo xtask sh 'target/.../examples/boot ...'`.

use std::process::ExitCode;
use std::time::Instant;

use vmm::{Console, ExitReason, VmBuilder};

fn main() -> ExitCode {
    let start = Instant::now();
    let mut args = std::env::args().skip(1);
    let Some(kernel) = args.next() else {
        eprintln!("usage: boot KERNEL [INITRAMFS] [CMDLINE...]");
        return ExitCode::from(2);
    };
    let mut builder = VmBuilder::new(kernel)
        .memory_mib(256)
        .vcpus(1)
        .console(Console::Stdio)
        .start_time(start);
    if let Some(initramfs) = args.next() {
        builder = builder.initramfs(initramfs);
    }
    let extra: Vec<String> = args.collect();
    if !extra.is_empty() {
        builder = builder.append_cmdline(&extra.join(" "));
    }

    let exit = match builder.build().and_then(|vm| vm.run()) {
        Ok(exit) => exit,
        Err(e) => {
            eprintln!("boot: {e}");
            return ExitCode::from(1);
        }
    };
    if let Some(t) = exit.boot_time {
        eprintln!("boot: guest init reached after {} ms", t.as_millis());
    }
    eprintln!(
        "boot: guest stopped: {:?}, application status {:?}",
        exit.reason, exit.app_exit_status
    );
    match exit.reason {
        ExitReason::PowerOff => ExitCode::from(exit.app_exit_status.unwrap_or(0)),
        ExitReason::Reset | ExitReason::Panic | ExitReason::TripleFault => ExitCode::from(70),
        ExitReason::Stopped => ExitCode::from(143),
    }
}

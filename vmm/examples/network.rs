//! An embedder giving its VM a network through the library alone
//! ([`VmBuilder::network`]): the guest fetches `http://GW:PORT/PATH` (a
//! server the caller runs on the host's 127.0.0.1, which passt maps to the
//! gateway address), the embedder turns the network off
//! ([`VmHandle::set_network`]) and the same fetch fails, then on again and
//! it works again. Prints `@@fetched=`, `@@off-rc=` and `@@back=`; exits 0
//! when the first and last fetches got `EXPECT` and the one while off did
//! not.
//!
//! ```text
//! eval "$(vmapp prepare)"
//! cargo run --example network -- "$vmlinux" "$initramfs" 192.0.2.1 8000 hello hello
//! ```
//!
//! passt needs a host interface with a default route; the network test
//! runs this in a network namespace of its own (`vmapp/tests/vm/net.rs`).

use std::process::ExitCode;
use std::time::Duration;

use vmm::agent::{AgentError, Run, EXEC_PORT};
use vmm::net::NetConfig;
use vmm::{Console, VmBuilder, VmHandle, VsockConfig};

/// `argv` as the default guest's `vmapp.cmd=` carries it.
fn cmd(argv: &[&str]) -> String {
    let hex: String = argv
        .join("\0")
        .bytes()
        .map(|b| format!("{b:02x}"))
        .collect();
    format!("quiet loglevel=0 vmapp.cmd={hex}")
}

/// Runs `sh -c script` in the guest once it accepts commands; returns its
/// stdout, trimmed.
fn sh(vm: &VmHandle, script: &str) -> Result<String, AgentError> {
    let run = Run {
        argv: vec!["sh".into(), "-c".into(), script.into()],
        env: vec![],
        cwd: String::new(),
        keep_running: false,
    };
    let mut out = Vec::new();
    vm.exec_when_ready(&run, Duration::from_secs(120), &mut out, std::io::stderr())?;
    Ok(String::from_utf8_lossy(&out).trim().to_string())
}

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let [kernel, initramfs, gw, port, path, expect] = args.as_slice() else {
        eprintln!("usage: network KERNEL INITRAMFS GATEWAY PORT PATH EXPECT");
        return ExitCode::from(2);
    };
    let dir = match tempfile::tempdir() {
        Ok(d) => d,
        Err(e) => {
            eprintln!("network: {e}");
            return ExitCode::from(1);
        }
    };
    let url = format!("http://{gw}:{port}/{path}");
    let run = || -> Result<(String, String, String), Box<dyn std::error::Error>> {
        let vm = VmBuilder::new(kernel)
            .initramfs(initramfs)
            .memory_mib(256)
            .console(Console::None)
            .vsock(VsockConfig {
                cid: 3,
                uds_path: dir.path().join("v.sock"),
                framed_ports: Vec::new(),
            })
            .network(NetConfig {
                host_loopback: true,
                ..Default::default()
            })
            .append_cmdline(&cmd(&["sleep", "600"]))
            .append_cmdline(&format!(
                "vmapp.exec={EXEC_PORT} vmapp.net={}",
                vmm::net::NET_PORT
            ))
            .build()?
            .start()?;
        // Until the relay has its lease, then the fetch.
        let fetch = format!(
            "i=0; until ip -4 addr show eth0 | grep -q inet; do i=$((i+1)); [ $i -gt 300 ] && break; sleep 0.1; done; \
             wget -q -O- {url}"
        );
        // Each value is printed as it comes, so a run cut short shows how
        // far it got.
        let fetched = sh(&vm, &fetch)?;
        println!("@@fetched={fetched}");
        vm.set_network(false)?;
        let off = sh(
            &vm,
            &format!("timeout 10 wget -q -O- {url} >/dev/null 2>&1; echo $?"),
        )?;
        println!("@@off-rc={off}");
        vm.set_network(true)?;
        let again = format!(
            "i=0; until r=$(timeout 5 wget -q -O- {url} 2>/dev/null); do i=$((i+1)); [ $i -gt 20 ] && break; sleep 0.5; done; echo \"$r\""
        );
        let back = sh(&vm, &again)?;
        println!("@@back={back}");
        vm.stop();
        let exit = vm.wait()?;
        eprintln!("network: the VM stopped: {:?}", exit.reason);
        Ok((fetched, off, back))
    };
    match run() {
        Ok((fetched, off, back)) => {
            if fetched == *expect && off != "0" && back == *expect {
                ExitCode::SUCCESS
            } else {
                ExitCode::from(1)
            }
        }
        Err(e) => {
            eprintln!("network: {e}");
            ExitCode::from(1)
        }
    }
}

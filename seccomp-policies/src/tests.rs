use super::*;
use std::process::Command;

/// Runs `child` below in a fresh copy of this test binary, with the filter
/// of `kind` installed in a thread named `thread` that then tries `what`.
fn run_child(kind: &str, mode: &str, what: &str, thread: &str) -> (Option<i32>, String) {
    let o = Command::new(std::env::current_exe().unwrap())
        .args(["--exact", "tests::child", "--nocapture", "--test-threads=1"])
        .env("SECCOMP_CHILD", format!("{kind}:{mode}:{what}:{thread}"))
        .output()
        .unwrap();
    (
        o.status.code(),
        String::from_utf8_lossy(&o.stderr).into_owned(),
    )
}

/// The child half: does nothing unless SECCOMP_CHILD is set.
#[test]
fn child() {
    let Ok(spec) = std::env::var("SECCOMP_CHILD") else {
        return;
    };
    let parts: Vec<String> = spec.split(':').map(str::to_string).collect();
    let kind = *ThreadKind::ALL
        .iter()
        .find(|k| k.name() == parts[0])
        .unwrap();
    let mode: Mode = parts[1].parse().unwrap();
    let what = parts[2].clone();
    let t = std::thread::Builder::new()
        .name(parts[3].clone())
        .spawn(move || {
            install(kind, mode).unwrap();
            // SAFETY: plain syscalls with valid arguments; their result is only printed.
            let r = unsafe {
                match what.as_str() {
                    "execve" => {
                        let argv = [c"/bin/true".as_ptr(), std::ptr::null()];
                        libc::execve(c"/bin/true".as_ptr(), argv.as_ptr(), std::ptr::null())
                    }
                    "socket_inet" => libc::socket(libc::AF_INET, libc::SOCK_STREAM, 0),
                    "socket_unix" => libc::socket(libc::AF_UNIX, libc::SOCK_STREAM, 0),
                    "ptrace" => libc::ptrace(libc::PTRACE_TRACEME, 0, 0, 0) as i32,
                    "mmap_exec" => {
                        let p = libc::mmap(
                            std::ptr::null_mut(),
                            4096,
                            libc::PROT_READ | libc::PROT_EXEC,
                            libc::MAP_PRIVATE | libc::MAP_ANONYMOUS,
                            -1,
                            0,
                        );
                        if p == libc::MAP_FAILED {
                            -1
                        } else {
                            0
                        }
                    }
                    "mmap" => {
                        let p = libc::mmap(
                            std::ptr::null_mut(),
                            4096,
                            libc::PROT_READ | libc::PROT_WRITE,
                            libc::MAP_PRIVATE | libc::MAP_ANONYMOUS,
                            -1,
                            0,
                        );
                        if p == libc::MAP_FAILED {
                            -1
                        } else {
                            0
                        }
                    }
                    other => panic!("unknown action {other}"),
                }
            };
            eprintln!("SURVIVED {r}");
        })
        .unwrap();
    t.join().unwrap();
}

#[test]
fn kill_mode_stops_forbidden_syscalls_and_names_them() {
    for (kind, what, thread, name) in [
        ("vcpu", "execve", "vcpu0", "execve"),
        ("vcpu", "socket_inet", "vcpu1", "socket"),
        ("virtio_blk", "ptrace", "virtio-blk", "ptrace"),
        ("virtio_blk", "execve", "virtio-blk", "execve"),
        ("virtio_vsock", "socket_inet", "virtio-vsock", "socket"),
        ("wl_proxy", "socket_inet", "wl-proxy", "socket"),
        ("wl_proxy", "execve", "wl-proxy", "execve"),
        ("vmm", "mmap_exec", "vmapp", "mmap"),
    ] {
        let (code, err) = run_child(kind, "kill", what, thread);
        assert_eq!(code, Some(EXIT_SECCOMP), "{kind}/{what}: {err}");
        assert!(
            err.contains(&format!("thread '{thread}' made a forbidden syscall"))
                && err.contains(&format!("({name})")),
            "{kind}/{what}: {err}"
        );
        assert!(!err.contains("SURVIVED"), "{err}");
    }
}

#[test]
fn allowed_syscalls_still_work() {
    for (kind, what) in [
        ("virtio_vsock", "socket_unix"),
        ("wl_proxy", "socket_unix"),
        ("vcpu", "mmap"),
    ] {
        let (code, err) = run_child(kind, "kill", what, "t");
        assert_eq!(code, Some(0), "{kind}/{what}: {err}");
        assert!(err.contains("SURVIVED"), "{err}");
        assert!(!err.contains("SURVIVED -1"), "{kind}/{what}: {err}");
    }
}

#[test]
fn log_and_off_modes_let_the_syscall_run() {
    for mode in ["log", "off"] {
        let (code, err) = run_child("vcpu", mode, "socket_inet", "vcpu0");
        assert_eq!(code, Some(0), "{mode}: {err}");
        assert!(
            err.contains("SURVIVED") && !err.contains("SURVIVED -1"),
            "{mode}: {err}"
        );
    }
}

#[test]
fn every_kind_has_a_filter_and_modes_parse() {
    for k in ThreadKind::ALL {
        assert!(k.syscalls().contains(&"exit_group"), "{k:?}");
        assert!(!k.syscalls().contains(&"execve"), "{k:?}");
        assert!(!k.syscalls().contains(&"ptrace"), "{k:?}");
    }
    assert_eq!("kill".parse::<Mode>().unwrap(), Mode::Kill);
    assert!("sometimes".parse::<Mode>().is_err());
    assert_eq!(default_mode(), Mode::Kill);
    assert!(SYSCALL_NAMES.len() > 300 && SYSCALL_NAMES[59] == "execve");
}

#[test]
fn message_without_allocation() {
    let mut buf = [0u8; 256];
    let n = message(&mut buf, b"vcpu0", 16, [3, 0xae80, 0]);
    assert_eq!(
        std::str::from_utf8(&buf[..n]).unwrap(),
        "seccomp: thread 'vcpu0' made a forbidden syscall 16 (ioctl) with arguments 0x3, 0xae80, 0x0, ...; stopping\n"
    );
}

/// The table in README.md matches the compiled policies.
#[test]
fn readme_table_is_current() {
    let readme = include_str!("../README.md");
    for k in ThreadKind::ALL {
        let row = readme
            .lines()
            .find(|l| l.contains(&format!("| `{}` |", k.name())))
            .unwrap_or_else(|| panic!("README has no row for {}", k.name()));
        let cells: Vec<&str> = row.split('|').map(str::trim).collect();
        assert_eq!(cells[3], k.syscalls().len().to_string(), "{row}");
        assert_eq!(cells[4], k.rules().to_string(), "{row}");
    }
}

//! `sommelier-guest`: the `/init` of vmapp's default guest.
//!
//! It mounts the pseudo file systems, writes the boot-timer port, loads the
//! kernel modules listed in `/etc/vmapp/modules` (dependencies from
//! `modules.dep`), runs the command vmapp passed on the kernel command line
//! (`vmapp.cmd=` hex of NUL-separated argv) or an interactive shell, reports
//! the exit status through the boot-status port and powers the VM off.

mod agent;
mod bench;
mod gpu_attack;
mod power;
mod shares;
mod vsock;
mod vsock_load;
mod wget;

use std::ffi::CString;
use std::os::unix::process::{CommandExt, ExitStatusExt};
use std::process::Command;

/// Boot-status port: +0 takes the boot-timer magic, +1 the exit status.
const BOOT_STATUS_PORT: u16 = 0x440;
const BOOT_DONE_MAGIC: u8 = 123;

fn log(msg: &str) {
    eprintln!("sommelier-guest: {msg}");
}

fn mount(src: &str, target: &str, fstype: &str, flags: libc::c_ulong, data: &str) -> bool {
    let _ = std::fs::create_dir_all(target);
    let (s, t, f, d) = (
        CString::new(src).unwrap_or_default(),
        CString::new(target).unwrap_or_default(),
        CString::new(fstype).unwrap_or_default(),
        CString::new(data).unwrap_or_default(),
    );
    // SAFETY: all pointers are valid NUL-terminated strings for the call.
    let r = unsafe { libc::mount(s.as_ptr(), t.as_ptr(), f.as_ptr(), flags, d.as_ptr().cast()) };
    if r != 0 {
        log(&format!(
            "mount {target}: {}",
            std::io::Error::last_os_error()
        ));
    }
    r == 0
}

/// Writes `val` to an I/O port of the boot-status device.
fn outb(port: u16, val: u8) {
    // SAFETY: ioperm grants this process access to the two ports only.
    if unsafe { libc::ioperm(u64::from(BOOT_STATUS_PORT) as libc::c_ulong, 2, 1) } != 0 {
        return;
    }
    // SAFETY: port access was granted above; the VMM's boot-status device
    // handles the write and nothing else lives at these ports.
    unsafe { std::arch::asm!("out dx, al", in("dx") port, in("al") val, options(nomem, nostack)) };
}

fn load_module(path: &str) {
    let Ok(f) = std::fs::File::open(path) else {
        log(&format!("module {path} missing"));
        return;
    };
    let params = CString::default();
    // SAFETY: finit_module with a valid fd and an empty parameter string.
    let r = unsafe {
        libc::syscall(
            libc::SYS_finit_module,
            std::os::fd::AsRawFd::as_raw_fd(&f),
            params.as_ptr(),
            0,
        )
    };
    if r != 0 {
        let e = std::io::Error::last_os_error();
        if e.raw_os_error() != Some(libc::EEXIST) {
            log(&format!("loading {path}: {e}"));
        }
    }
}

pub(crate) fn load_modules(list: &str) {
    let release = std::fs::read_to_string("/proc/sys/kernel/osrelease").unwrap_or_default();
    let dir = format!("/lib/modules/{}", release.trim());
    let dep = std::fs::read_to_string(format!("{dir}/modules.dep")).unwrap_or_default();
    let wanted = std::fs::read_to_string(list).unwrap_or_default();
    let mut loaded: Vec<String> = Vec::new();
    for name in wanted.lines().map(str::trim).filter(|l| !l.is_empty()) {
        let Some((m, deps)) = dep
            .lines()
            .filter_map(|l| l.split_once(':'))
            .find(|(m, _)| {
                std::path::Path::new(m).file_stem().is_some_and(|s| {
                    s.to_string_lossy().replace('-', "_") == name.replace('-', "_")
                })
            })
        else {
            log(&format!("module {name} not in modules.dep"));
            continue;
        };
        // modules.dep lists dependencies nearest first: load farthest first.
        for rel in deps.split_whitespace().rev().chain(std::iter::once(m)) {
            if !loaded.iter().any(|l| l == rel) {
                load_module(&format!("{dir}/{rel}"));
                loaded.push(rel.to_string());
            }
        }
    }
}

/// The command vmapp asked for, and whether the host side is a terminal.
fn command_from_cmdline(cmdline: &str) -> (Option<Vec<String>>, bool) {
    let mut cmd = None;
    let mut tty = false;
    for w in cmdline.split_whitespace() {
        if let Some(h) = w.strip_prefix("vmapp.cmd=") {
            cmd = sommelier_guest::proto::decode_argv(h);
        } else if ["vmapp.agent=", "vmapp.exec=", "vmapp.net=", "vmapp.audio="]
            .iter()
            .any(|p| w.starts_with(p))
        {
            // Handled by port_arg.
        } else if w == "vmapp.tty=1" {
            tty = true;
        }
    }
    (cmd, tty)
}

/// The port named by `vmapp.KEY=PORT` on the command line: the host's agent
/// listener (`agent`), the guest's own for further commands (`exec`), the
/// host's network (`net`).
fn port_arg(cmdline: &str, key: &str) -> Option<u32> {
    let prefix = format!("vmapp.{key}=");
    cmdline
        .split_whitespace()
        .find_map(|w| w.strip_prefix(prefix.as_str()))
        .and_then(|p| p.parse().ok())
}

const PATH: &str = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin";

/// The guest's runtime directory, where the Wayland relay listens.
const RUNTIME_DIR: &str = "/run/vmapp";

/// What a guest app needs to find the relay, and the toolkit switches that
/// make GTK, Qt, SDL, Clutter, Firefox and Electron use Wayland (and software
/// rendering: the relay carries shared-memory buffers only).
const WAYLAND_ENV: &[(&str, &str)] = &[
    ("WAYLAND_DISPLAY", "wayland-0"),
    ("XDG_RUNTIME_DIR", RUNTIME_DIR),
    ("XDG_SESSION_TYPE", "wayland"),
    ("GDK_BACKEND", "wayland"),
    ("QT_QPA_PLATFORM", "wayland"),
    ("SDL_VIDEODRIVER", "wayland"),
    ("CLUTTER_BACKEND", "wayland"),
    ("MOZ_ENABLE_WAYLAND", "1"),
    ("ELECTRON_OZONE_PLATFORM_HINT", "wayland"),
    ("LIBGL_ALWAYS_SOFTWARE", "1"),
];

/// Starts the Wayland relay once the GPU's render node is there.
fn start_wayland() -> bool {
    for _ in 0..200 {
        if std::path::Path::new("/dev/dri/renderD128").exists() {
            break;
        }
        std::thread::sleep(std::time::Duration::from_millis(25));
    }
    let _ = std::fs::create_dir_all(RUNTIME_DIR);
    let _ = std::fs::set_permissions(
        RUNTIME_DIR,
        std::os::unix::fs::PermissionsExt::from_mode(0o700),
    );
    match sommelier_guest::relay::serve(&std::path::Path::new(RUNTIME_DIR).join("wayland-0")) {
        Ok(()) => true,
        Err(e) => {
            log(&format!("wayland relay: {e}"));
            false
        }
    }
}

/// Where the guest finds Xwayland (host-root mode: the host's).
const XWAYLAND: &[&str] = &["/usr/bin/Xwayland", "/usr/local/bin/Xwayland"];

/// Display `:0` for X11 apps, unless `vmapp.x11=0` or the guest has no
/// Xwayland: its socket now, the server on the first connection.
fn start_x11(cmdline: &str) -> bool {
    if cmdline.split_whitespace().any(|w| w == "vmapp.x11=0") {
        return false;
    }
    let Some(xwayland) = XWAYLAND.iter().find(|p| std::path::Path::new(p).exists()) else {
        return false;
    };
    let relay = std::path::Path::new(RUNTIME_DIR).join("wayland-0");
    match sommelier_guest::x11::supervise(&relay, xwayland) {
        Ok(()) => true,
        Err(e) => {
            log(&format!("x11: {e}"));
            false
        }
    }
}

/// With `vmapp.audio=PORT`: the sound socket, relayed to the host's port.
fn start_audio(cmdline: &str) -> bool {
    let Some(port) = port_arg(cmdline, "audio") else {
        return false;
    };
    let path = std::path::Path::new(RUNTIME_DIR).join(sommelier_guest::audio::SOCKET);
    match sommelier_guest::audio::serve(&path, port) {
        Ok(()) => true,
        Err(e) => {
            log(&format!("audio: {e}"));
            false
        }
    }
}

/// What a guest app needs to find the sound socket (and no server of its
/// own is started for it).
const AUDIO_ENV: &[(&str, &str)] = &[
    ("XDG_RUNTIME_DIR", RUNTIME_DIR),
    ("PULSE_SERVER", "unix:/run/vmapp/pulse/native"),
];

/// The environment every command starts with.
fn base_env(home: &str, wayland: bool, audio: bool) -> Vec<(String, String)> {
    let mut env = vec![("PATH", PATH), ("HOME", home), ("TERM", "linux")];
    if wayland {
        env.extend_from_slice(WAYLAND_ENV);
    }
    if audio {
        env.extend(
            AUDIO_ENV
                .iter()
                .filter(|(k, _)| !(wayland && *k == "XDG_RUNTIME_DIR")),
        );
    }
    env.into_iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect()
}

/// Runs the command vmapp sends over vsock; returns (status, keep running).
fn run_agent(port: u32, base_env: &[(String, String)]) -> (u8, bool) {
    let mut last = None;
    for _ in 0..50 {
        match sommelier_guest::vsock_socket::connect(2, port) {
            Ok(s) => {
                return match agent::serve(s, base_env, agent::Role::Main) {
                    Ok(o) => (o.status, o.keep_running),
                    Err(e) => {
                        log(&format!("agent: {e}"));
                        (125, false)
                    }
                };
            }
            Err(e) => last = Some(e),
        }
        std::thread::sleep(std::time::Duration::from_millis(100));
    }
    log(&format!(
        "agent: cannot reach vmapp on vsock port {port}: {last:?}"
    ));
    (125, false)
}

/// Console line settings: a terminal on the host gets a cooked tty (the host
/// side is raw); a pipe gets no echo and no output processing, but keeps
/// canonical input so the host can signal end of input with ^D.
fn setup_console(tty: bool) {
    if tty {
        return;
    }
    // SAFETY: plain termios calls on fd 0, which is the console.
    unsafe {
        let mut t: libc::termios = std::mem::zeroed();
        if libc::tcgetattr(0, &mut t) == 0 {
            t.c_lflag &= !(libc::ECHO | libc::ECHOE | libc::ECHOK | libc::ECHONL | libc::ECHOCTL);
            t.c_oflag &= !libc::OPOST;
            libc::tcsetattr(0, libc::TCSANOW, &t);
        }
    }
}

fn status_code(st: std::process::ExitStatus) -> u8 {
    match (st.code(), st.signal()) {
        (Some(c), _) => c as u8,
        (None, Some(s)) => 128u8.wrapping_add(s as u8),
        _ => 255,
    }
}

fn run(argv: Option<Vec<String>>, home: &str, env: &[(String, String)]) -> u8 {
    let mut cmd = match &argv {
        Some(a) if !a.is_empty() => {
            let mut c = Command::new(&a[0]);
            c.args(&a[1..]);
            c
        }
        _ => {
            // An interactive shell with the serial port as controlling tty.
            let mut c = Command::new("/bin/sh");
            c.arg("-l");
            // SAFETY: between fork and exec only async-signal-safe calls.
            unsafe {
                c.pre_exec(|| {
                    libc::setsid();
                    libc::ioctl(0, libc::TIOCSCTTY, 1);
                    Ok(())
                });
            }
            c
        }
    };
    cmd.env_clear()
        .envs(env.iter().map(|(k, v)| (k, v)))
        .current_dir(home);
    if matches!(&argv, Some(a) if !a.is_empty()) {
        // Its own process group, which the power button stops as a whole.
        cmd.process_group(0);
    }
    match cmd.spawn().and_then(|mut child| {
        power::set_app(child.id() as i32);
        let st = child.wait();
        power::set_app(0);
        st
    }) {
        Ok(st) => status_code(st),
        Err(e) => {
            log(&format!("cannot run {:?}: {e}", argv.unwrap_or_default()));
            127
        }
    }
}

/// /proc, /sys, /dev, /dev/pts, /tmp and /run.
fn mount_basics() {
    let nodev = libc::MS_NOSUID | libc::MS_NODEV;
    mount("proc", "/proc", "proc", nodev | libc::MS_NOEXEC, "");
    mount("sysfs", "/sys", "sysfs", nodev | libc::MS_NOEXEC, "");
    mount("devtmpfs", "/dev", "devtmpfs", libc::MS_NOSUID, "mode=0755");
    mount(
        "devpts",
        "/dev/pts",
        "devpts",
        libc::MS_NOSUID | libc::MS_NOEXEC,
        "gid=5,mode=620",
    );
    mount("tmpfs", "/tmp", "tmpfs", nodev, "mode=1777");
    mount("tmpfs", "/run", "tmpfs", nodev, "mode=0755");
}

/// With `vmapp.net=PORT`: the TAP's modules and the network relay's thread.
fn start_network(cmdline: &str) {
    let Some(port) = port_arg(cmdline, "net") else {
        return;
    };
    load_modules("/etc/vmapp/modules-net");
    // Named, so the guest's own accounting (`/proc/*/task/*/stat`) tells it apart.
    if let Err(e) = std::thread::Builder::new()
        .name("net-down".into())
        .spawn(move || sommelier_guest::net::relay::run(port))
    {
        log(&format!("net: no relay thread: {e}"));
    }
}

fn main() {
    let args: Vec<String> = std::env::args().collect();
    // SAFETY: getpid has no preconditions.
    if unsafe { libc::getpid() } != 1 {
        // `/usr/bin/wget` is a link to this binary.
        if args
            .first()
            .is_some_and(|a| a.rsplit('/').next() == Some("wget"))
        {
            std::process::exit(wget::main(&args[1..]));
        }
        match args.get(1).map(String::as_str) {
            Some("vsock") => std::process::exit(vsock::main(&args[2..])),
            Some("bench") => std::process::exit(bench::main(&args[2..])),
            Some("gpu-attack") => std::process::exit(gpu_attack::main(&args[2..])),
            Some("x11") => std::process::exit(sommelier_guest::x11::main(&args[2..])),
            _ => {}
        }
    }
    mount_basics();
    outb(BOOT_STATUS_PORT, BOOT_DONE_MAGIC);
    load_modules("/etc/vmapp/modules");
    power::watch();
    let cmdline = std::fs::read_to_string("/proc/cmdline").unwrap_or_default();
    let wayland = cmdline.split_whitespace().any(|w| w == "vmapp.wayland=1");
    if wayland {
        load_modules("/etc/vmapp/modules-gpu");
    }
    let (argv, tty) = command_from_cmdline(&cmdline);
    setup_console(tty);
    let plan = shares::plan(&cmdline);
    if plan.root.is_some() {
        load_modules("/etc/vmapp/modules-host-root");
    }
    let home = plan.home.clone().unwrap_or_else(|| "/root".into());
    start_network(&cmdline);
    let (code, keep_running) = if !shares::apply(&plan) {
        (125, false)
    } else {
        // After the guest root is in place, so the socket is inside it.
        let wayland = wayland && start_wayland();
        let x11 = wayland && start_x11(&cmdline);
        let audio = start_audio(&cmdline);
        let mut env = base_env(&home, wayland, audio);
        if x11 {
            env.push(("DISPLAY".into(), ":0".into()));
        }
        if let Some(port) = port_arg(&cmdline, "exec") {
            agent::listen_sessions(port, env.clone());
        }
        match port_arg(&cmdline, "agent") {
            Some(port) => run_agent(port, &env),
            None => (run(argv, &home, &env), false),
        }
    };
    if keep_running {
        outb(BOOT_STATUS_PORT + 1, code);
        loop {
            std::thread::sleep(std::time::Duration::from_secs(3600));
        }
    }
    // Let the UART send everything the application wrote before powering off.
    // SAFETY: tcdrain on the console fds.
    unsafe {
        libc::tcdrain(1);
        libc::tcdrain(2);
    }
    outb(BOOT_STATUS_PORT + 1, code);
    // SAFETY: sync and reboot take no pointers; we are PID 1 and done.
    unsafe {
        libc::sync();
        libc::reboot(libc::RB_POWER_OFF);
    }
    // Power-off failed: PID 1 must not exit.
    loop {
        std::thread::sleep(std::time::Duration::from_secs(3600));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_command_and_tty_flag() {
        let hex = sommelier_guest::proto::encode_argv(&["sh".into(), "-c".into(), "exit 7".into()]);
        assert_eq!(hex, "7368002d6300657869742037");
        let (cmd, tty) = command_from_cmdline(&format!("console=ttyS0 vmapp.cmd={hex} quiet"));
        assert_eq!(cmd.unwrap(), vec!["sh", "-c", "exit 7"]);
        assert!(!tty);
        let (cmd, tty) = command_from_cmdline("console=ttyS0 vmapp.tty=1");
        assert_eq!(cmd, None);
        assert!(tty);
        assert_eq!(command_from_cmdline("vmapp.cmd=abc").0, None);
        assert_eq!(command_from_cmdline("vmapp.cmd=zz").0, None);
    }

    #[test]
    fn agent_and_exec_ports_come_from_their_own_words() {
        let c = "quiet vmapp.agent=1024 vmapp.exec=1025 vmapp.execx=9";
        assert_eq!(port_arg(c, "agent"), Some(1024));
        assert_eq!(port_arg(c, "exec"), Some(1025));
        assert_eq!(port_arg("vmapp.exec=", "exec"), None);
        assert_eq!(port_arg("vmapp.exec=-1 x", "exec"), None);
        assert_eq!(port_arg("xvmapp.exec=5", "exec"), None);
        assert_eq!(command_from_cmdline(c).0, None, "ports are not commands");
    }

    #[test]
    fn exit_codes_and_signals() {
        let st = Command::new("sh").args(["-c", "exit 7"]).status().unwrap();
        assert_eq!(status_code(st), 7);
        let st = Command::new("sh")
            .args(["-c", "kill -9 $$"])
            .status()
            .unwrap();
        assert_eq!(status_code(st), 137);
    }
}

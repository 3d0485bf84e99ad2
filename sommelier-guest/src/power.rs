//! The power button: how the default guest stops gracefully.
//!
//! vmapp (or an embedder, through `VmHandle::shutdown`) presses the ACPI
//! power button; Linux's `button` driver reports KEY_POWER on an input
//! device named "Power Button", which `evdev` exposes as `/dev/input/eventN`.
//! On a press the init sends SIGTERM to the application's process group
//! (and to those of further commands run through `vmapp exec`), waits up
//! to [`GRACE`] for it to end, then SIGKILLs the groups; the
//! application's end then takes the usual path (its status reported, the
//! console drained, `sync`, power off). With no application running (before
//! it starts, or after it ended under `--keep-running`) the init syncs and
//! powers off once the further commands have ended (at once with none).

use std::io::Read;
use std::sync::atomic::{AtomicI32, Ordering};
use std::sync::Mutex;
use std::time::{Duration, Instant};

/// How long the application has to end after SIGTERM.
pub const GRACE: Duration = Duration::from_secs(10);

const EV_KEY: u16 = 1;
const KEY_POWER: u16 = 116;

/// The running application's process group (0: none).
static APP: AtomicI32 = AtomicI32::new(0);

/// The process groups of further commands (`vmapp exec`) running now.
static SESSIONS: Mutex<Vec<i32>> = Mutex::new(Vec::new());

/// Records the application's process (the leader of its own group), or
/// none with 0.
pub fn set_app(pid: i32) {
    APP.store(pid, Ordering::SeqCst);
}

fn sessions() -> std::sync::MutexGuard<'static, Vec<i32>> {
    SESSIONS.lock().unwrap_or_else(|p| p.into_inner())
}

/// Records a further command's process (the leader of its own group).
pub fn add_session(pid: i32) {
    sessions().push(pid);
}

/// Forgets a further command's process.
pub fn remove_session(pid: i32) {
    sessions().retain(|&p| p != pid);
}

/// The event device of the power button, once the driver has made it.
fn find_button() -> Option<std::path::PathBuf> {
    for entry in std::fs::read_dir("/sys/class/input").ok()?.flatten() {
        let name = entry.file_name().to_string_lossy().into_owned();
        if !name.starts_with("event") {
            continue;
        }
        let dev = std::fs::read_to_string(entry.path().join("device/name")).unwrap_or_default();
        if dev.trim() == "Power Button" {
            return Some(std::path::Path::new("/dev/input").join(name));
        }
    }
    None
}

/// Whether `buf` (one `struct input_event`: 16 bytes of time, then type,
/// code and value) is the power key going down.
fn is_power_press(buf: &[u8; 24]) -> bool {
    let ty = u16::from_ne_bytes([buf[16], buf[17]]);
    let code = u16::from_ne_bytes([buf[18], buf[19]]);
    let value = i32::from_ne_bytes([buf[20], buf[21], buf[22], buf[23]]);
    ty == EV_KEY && code == KEY_POWER && value == 1
}

fn power_off() {
    // SAFETY: sync and reboot take no pointers; we are PID 1.
    unsafe {
        libc::sync();
        libc::reboot(libc::RB_POWER_OFF);
    }
}

fn signal_groups(groups: &[i32], sig: libc::c_int) {
    for &g in groups.iter().filter(|&&g| g > 0) {
        // SAFETY: a signal to a process group this init started.
        unsafe { libc::kill(-g, sig) };
    }
}

/// Ends the application and any further commands (or the VM, with none),
/// as the module says. The application's end powers the VM off through
/// the usual path; without one (before it starts, or under
/// `--keep-running`) the init powers off once the further commands ended.
fn press() {
    let app = APP.load(Ordering::SeqCst);
    let mut groups = sessions().clone();
    if app <= 0 && groups.is_empty() {
        crate::log("power button: no application; powering off");
        power_off();
        return;
    }
    crate::log("power button: stopping the application");
    groups.push(app);
    signal_groups(&groups, libc::SIGTERM);
    let ended = || {
        if app > 0 {
            APP.load(Ordering::SeqCst) != app
        } else {
            sessions().is_empty()
        }
    };
    let end = Instant::now() + GRACE;
    while Instant::now() < end && !ended() {
        std::thread::sleep(Duration::from_millis(100));
    }
    if !ended() {
        crate::log("power button: the application outlived its grace period; killing it");
        signal_groups(&groups, libc::SIGKILL);
    }
    if app <= 0 {
        power_off();
    }
}

/// Watches the power button on a thread of its own.
pub fn watch() {
    std::thread::spawn(|| {
        let start = Instant::now();
        let path = loop {
            if let Some(p) = find_button().filter(|p| p.exists()) {
                break p;
            }
            if start.elapsed() > Duration::from_secs(10) {
                crate::log("power button: no input device; graceful stop unavailable");
                return;
            }
            std::thread::sleep(Duration::from_millis(50));
        };
        let Ok(mut f) = std::fs::File::open(&path) else {
            crate::log(&format!("power button: cannot open {}", path.display()));
            return;
        };
        let mut buf = [0u8; 24];
        while f.read_exact(&mut buf).is_ok() {
            if is_power_press(&buf) {
                press();
            }
        }
    });
}

#[cfg(test)]
mod tests {
    use super::*;

    fn event(ty: u16, code: u16, value: i32) -> [u8; 24] {
        let mut b = [0u8; 24];
        b[16..18].copy_from_slice(&ty.to_ne_bytes());
        b[18..20].copy_from_slice(&code.to_ne_bytes());
        b[20..24].copy_from_slice(&value.to_ne_bytes());
        b
    }

    #[test]
    fn only_the_power_key_going_down_counts() {
        assert!(is_power_press(&event(EV_KEY, KEY_POWER, 1)));
        assert!(!is_power_press(&event(EV_KEY, KEY_POWER, 0)), "release");
        assert!(!is_power_press(&event(0, 0, 0)), "sync report");
        assert!(!is_power_press(&event(EV_KEY, 30, 1)), "another key");
    }
}

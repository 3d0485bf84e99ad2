//! The power button: how the default guest stops gracefully.
//!
//! vmapp (or an embedder, through `VmHandle::shutdown`) presses the ACPI
//! power button; Linux's `button` driver reports KEY_POWER on an input
//! device named "Power Button", which `evdev` exposes as `/dev/input/eventN`.
//! On a press the init sends SIGTERM to the application's process group,
//! waits up to [`GRACE`] for it to end, then SIGKILLs the group; the
//! application's end then takes the usual path (its status reported, the
//! console drained, `sync`, power off). With no application running (before
//! it starts, or after it ended under `--keep-running`) the init syncs and
//! powers off at once.

use std::io::Read;
use std::sync::atomic::{AtomicI32, Ordering};
use std::time::{Duration, Instant};

/// How long the application has to end after SIGTERM.
pub const GRACE: Duration = Duration::from_secs(10);

const EV_KEY: u16 = 1;
const KEY_POWER: u16 = 116;

/// The running application's process group (0: none).
static APP: AtomicI32 = AtomicI32::new(0);

/// Records the application's process (the leader of its own group), or
/// none with 0.
pub fn set_app(pid: i32) {
    APP.store(pid, Ordering::SeqCst);
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

/// Ends the application (or the VM, with none), as the module says.
fn press() {
    let pid = APP.load(Ordering::SeqCst);
    if pid <= 0 {
        crate::log("power button: no application; powering off");
        // SAFETY: sync and reboot take no pointers; we are PID 1.
        unsafe {
            libc::sync();
            libc::reboot(libc::RB_POWER_OFF);
        }
        return;
    }
    crate::log("power button: stopping the application");
    // SAFETY: signals to the application's own process group.
    unsafe { libc::kill(-pid, libc::SIGTERM) };
    let end = Instant::now() + GRACE;
    while Instant::now() < end {
        if APP.load(Ordering::SeqCst) != pid {
            return;
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    crate::log("power button: the application outlived its grace period; killing it");
    // SAFETY: as above.
    unsafe { libc::kill(-pid, libc::SIGKILL) };
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

//! Devices for the `vmm` crate: the MMIO/PIO bus, the virtio-mmio (version 2)
//! transport with its [`virtio::VirtioDevice`] trait, the virtio-blk,
//! virtio-vsock and virtio-fs devices, and the legacy platform
//! bits a stock x86_64 Linux kernel needs (8250 serial console, ACPI power
//! management registers, pvpanic, i8042 reset, boot-status port).
//!
//! Everything a guest can reach here treats the guest as hostile: a bad access
//! ends in an error for that device (a virtio device is marked as needing a
//! reset), never in a panic of the VMM.
#![deny(missing_docs)]

pub mod bus;
pub mod legacy;
pub use ratelimit::warn_limited;
pub mod fuzzing;
pub mod virtio;
pub mod worker;

/// Waits until `fd` is readable: `None` waits forever. Returns false on
/// timeout — never before it has passed (the milliseconds poll takes are
/// rounded up, EINTR is retried) — or on a poll error.
pub fn wait_readable(fd: &impl std::os::fd::AsRawFd, timeout: Option<std::time::Duration>) -> bool {
    let deadline = timeout.map(|t| std::time::Instant::now() + t);
    loop {
        // Whole milliseconds, rounded up: never less than asked for.
        let ms = deadline.map_or(-1, |d| {
            let left = d.saturating_duration_since(std::time::Instant::now());
            i32::try_from(left.as_micros().div_ceil(1000)).unwrap_or(i32::MAX)
        });
        let mut p = libc::pollfd {
            fd: fd.as_raw_fd(),
            events: libc::POLLIN,
            revents: 0,
        };
        // SAFETY: one valid pollfd for the duration of the call.
        match unsafe { libc::poll(&mut p, 1, ms) } {
            1 => return true,
            -1 if std::io::Error::last_os_error().kind() == std::io::ErrorKind::Interrupted => {}
            _ => return false,
        }
    }
}

/// The guest memory type every device works on.
pub type GuestMemory = vm_memory::GuestMemoryMmap<()>;

/// The user ID of the process at the other end of the Unix socket `s`
/// (`SO_PEERCRED`: who bound or connected it, as this process's user
/// namespace sees it), if the kernel says.
pub fn peer_uid(s: &impl std::os::fd::AsRawFd) -> Option<u32> {
    let mut cred = libc::ucred {
        pid: 0,
        uid: 0,
        gid: 0,
    };
    let mut len = std::mem::size_of::<libc::ucred>() as libc::socklen_t;
    // SAFETY: SO_PEERCRED writes at most `len` bytes into `cred`.
    let r = unsafe {
        libc::getsockopt(
            s.as_raw_fd(),
            libc::SOL_SOCKET,
            libc::SO_PEERCRED,
            (&mut cred as *mut libc::ucred).cast(),
            &mut len,
        )
    };
    (r == 0).then_some(cred.uid)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::{Duration, Instant};

    #[test]
    fn wait_readable_waits_at_least_the_timeout() {
        let (a, _b) = std::os::unix::net::UnixStream::pair().unwrap();
        for us in [1500, 2700, 999] {
            let t = Duration::from_micros(us);
            let start = Instant::now();
            assert!(!wait_readable(&a, Some(t)));
            assert!(start.elapsed() >= t, "{:?} < {t:?}", start.elapsed());
        }
    }
}

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
/// timeout (or a poll error, e.g. EINTR — callers loop or give up).
pub fn wait_readable(fd: &impl std::os::fd::AsRawFd, timeout: Option<std::time::Duration>) -> bool {
    let ms = timeout.map_or(-1, |t| i32::try_from(t.as_millis()).unwrap_or(i32::MAX));
    let mut p = libc::pollfd {
        fd: fd.as_raw_fd(),
        events: libc::POLLIN,
        revents: 0,
    };
    // SAFETY: one valid pollfd for the duration of the call.
    unsafe { libc::poll(&mut p, 1, ms) == 1 }
}

/// The guest memory type every device works on.
pub type GuestMemory = vm_memory::GuestMemoryMmap<()>;

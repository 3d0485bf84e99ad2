//! Devices for the `vmm` crate: the MMIO/PIO bus, the virtio-mmio (version 2)
//! transport with its [`virtio::VirtioDevice`] trait, and the legacy platform
//! bits a stock x86_64 Linux kernel needs (8250 serial console, ACPI power
//! management registers, pvpanic, i8042 reset, boot-status port).
//!
//! Everything a guest can reach here treats the guest as hostile: a bad access
//! ends in an error for that device (a virtio device is marked as needing a
//! reset), never in a panic of the VMM.
#![deny(missing_docs)]

pub mod bus;
pub mod legacy;
pub mod ratelimit;
pub mod virtio;

/// The guest memory type every device works on.
pub type GuestMemory = vm_memory::GuestMemoryMmap<()>;

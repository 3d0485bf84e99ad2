//! `vmm`: an embeddable KVM virtual machine monitor that boots stock Linux
//! distribution kernels (ELF `vmlinux` through PVH, or bzImage) on x86_64,
//! with ACPI-described virtio-mmio devices.
//!
//! Embedders build a VM with [`VmBuilder`] and call [`Vm::run`]; see
//! `examples/boot.rs`. The `vmapp` crate builds the CLI and the default
//! guest image on top of it.
#![deny(missing_docs)]

pub mod acpi;
pub mod agent;
pub mod boot;
pub mod console;
pub mod cpu;
pub mod fuzzing;
pub mod kvm_check;
pub mod layout;
pub mod memory;
pub mod net;
pub mod vm;
pub mod wayland;

pub use console::Console;
pub use devices::virtio::block::{Aio, Cache, DiskConfig};
pub use devices::virtio::fs::{raise_open_files_limit, Exposure, ShareConfig};
pub use devices::virtio::gpu::GpuConfig;
pub use devices::virtio::vsock::VsockConfig;
pub use vm::{ExitReason, Stopper, Vm, VmBuilder, VmError, VmExit, VmHandle, VmInfo, BASE_CMDLINE};

//! virtio-gpu (device id 16), cross-domain only: the guest's Wayland clients
//! reach the host compositor (through wl-proxy) over rutabaga_gfx's
//! cross-domain context. There is no rendering: one disabled scanout whose
//! 2D commands are answered here, the host-visible shared-memory window
//! (SHMSel 1) into which blobs are mapped — one KVM memory slot per mapped
//! blob, read-only where the host fd is — and fences completed out of order
//! without ever blocking the control queue.
//!
//! One worker thread (`virtio-gpu`, its own seccomp filter) owns rutabaga:
//! it is created on activation and dropped on reset, so a reset closes every
//! host Wayland connection. rutabaga's per-context threads are started by the
//! worker and inherit its filter.

mod guard;
pub mod protocol;
mod worker;

#[cfg(test)]
mod tests;

use std::path::PathBuf;
use std::sync::Arc;

use vmm_sys_util::eventfd::EventFd;

use seccomp_policies::ThreadKind;

use super::{
    read_config_bytes, ActivateError, ActiveQueue, GuestMapper, Interrupt, ShmRegion, VirtioDevice,
    VIRTIO_F_RING_EVENT_IDX,
};
use crate::worker::{Parked, WorkerError};
use crate::{warn_limited, GuestMemory};
use protocol::*;

pub use worker::Backend;

/// virtio device id of a GPU.
pub const VIRTIO_ID_GPU: u32 = 16;
/// Entries per queue (ring-1 fences park descriptors until the host answers).
pub const QUEUE_SIZE: u16 = 256;
/// Default size of the host-visible window.
pub const DEFAULT_SHM_SIZE: u64 = 8 << 30;

/// Errors setting up the GPU device.
#[derive(Debug, thiserror::Error)]
pub enum GpuError {
    /// The worker thread could not be started.
    #[error(transparent)]
    Worker(#[from] WorkerError),
    /// A bad configuration.
    #[error("virtio-gpu: {0}")]
    Config(String),
}

/// Where the device's host-visible window sits and how blobs get into it.
#[derive(Clone)]
pub struct ShmPlacement {
    /// Guest-physical base of the window.
    pub base: u64,
    /// Its length.
    pub len: u64,
    /// Adds and removes guest mappings.
    pub mapper: Arc<dyn GuestMapper>,
}

/// What the device connects to.
#[derive(Clone, Debug)]
pub struct GpuConfig {
    /// The Wayland socket each cross-domain context connects to (in vmapp:
    /// the VM's own wl-proxy).
    pub wayland_socket: PathBuf,
    /// Size of the host-visible window (a multiple of 4 KiB).
    pub shm_size: u64,
}

/// The virtio-gpu device.
pub struct Gpu {
    cfg: GpuConfig,
    config: [u8; 16],
    queue_sizes: [u16; 2],
    shm: Option<ShmPlacement>,
    regions: Vec<ShmRegion>,
    thread: Parked,
}

impl Gpu {
    /// A device whose contexts connect to `cfg.wayland_socket`. Starts its
    /// (parked) worker thread. The window is placed by
    /// [`VirtioDevice::place_shm`] before the guest runs.
    pub fn new(cfg: GpuConfig) -> Result<Self, GpuError> {
        if cfg.shm_size == 0 || !cfg.shm_size.is_multiple_of(4096) {
            return Err(GpuError::Config(format!(
                "window size {:#x} is not a positive multiple of 4 KiB",
                cfg.shm_size
            )));
        }
        // struct virtio_gpu_config: events_read, events_clear, num_scanouts,
        // num_capsets. One scanout (Linux 6.1 refuses zero), one capset
        // (cross-domain).
        // rustix (under rutabaga) reads the aux vector on first use, with
        // `open("/proc/self/auxv")` on kernels before 6.4: do it here, on the
        // caller's thread, so the worker's filter never needs `open`.
        let _ = rustix::param::page_size();
        let mut config = [0u8; 16];
        config[8..12].copy_from_slice(&1u32.to_le_bytes());
        config[12..16].copy_from_slice(&1u32.to_le_bytes());
        Ok(Self {
            cfg,
            config,
            queue_sizes: [QUEUE_SIZE; 2],
            shm: None,
            regions: Vec::new(),
            thread: Parked::spawn("virtio-gpu", ThreadKind::VirtioGpu)?,
        })
    }
}

impl VirtioDevice for Gpu {
    fn device_type(&self) -> u32 {
        VIRTIO_ID_GPU
    }

    fn queue_max_sizes(&self) -> &[u16] {
        &self.queue_sizes
    }

    fn features(&self) -> u64 {
        // VIRTIO_F_VERSION_1 is added by the transport.
        (1u64 << VIRTIO_GPU_F_VIRGL)
            | (1 << VIRTIO_GPU_F_RESOURCE_BLOB)
            | (1 << VIRTIO_GPU_F_CONTEXT_INIT)
            | (1 << VIRTIO_F_RING_EVENT_IDX)
    }

    fn read_config(&self, offset: u64, data: &mut [u8]) {
        read_config_bytes(&self.config, offset, data);
    }

    fn write_config(&mut self, offset: u64, _data: &[u8]) {
        // events_clear (offset 4) is the only writable field; we never raise
        // display events, so there is nothing to clear.
        if offset != 4 {
            warn_limited!("virtio-gpu: guest wrote read-only config at {offset:#x}");
        }
    }

    fn activate(
        &mut self,
        mem: GuestMemory,
        interrupt: Arc<Interrupt>,
        acked_features: u64,
        queues: Vec<ActiveQueue>,
    ) -> Result<(), ActivateError> {
        self.thread.stop();
        if queues.len() != 2 {
            return Err(ActivateError::BadQueues(format!(
                "{} queues, want 2 (control and cursor)",
                queues.len()
            )));
        }
        let Some(shm) = self.shm.clone() else {
            return Err(ActivateError::BadQueues(
                "the host-visible window was never placed".into(),
            ));
        };
        let kill = EventFd::new(libc::EFD_NONBLOCK)?;
        let job = worker::Job::new(
            self.cfg.wayland_socket.clone(),
            shm,
            mem,
            interrupt,
            acked_features,
            queues,
            &kill,
        )?;
        self.thread
            .serve(kill, move || job.run())
            .map_err(|e| ActivateError::BadQueues(e.to_string()))?;
        Ok(())
    }

    fn reset(&mut self) -> bool {
        // Ending the job drops rutabaga: every context, its host connection
        // and every blob mapping (slots first) go with it.
        // A worker stuck past its deadline leaves the device failed.
        self.thread.stop()
    }

    fn shm_regions(&self) -> &[ShmRegion] {
        &self.regions
    }

    fn shm_size(&self) -> u64 {
        self.cfg.shm_size
    }

    fn place_shm(&mut self, base: u64, mapper: Arc<dyn GuestMapper>) {
        self.regions = vec![ShmRegion {
            id: SHM_ID_HOST_VISIBLE,
            base,
            len: self.cfg.shm_size,
        }];
        self.shm = Some(ShmPlacement {
            base,
            len: self.cfg.shm_size,
            mapper,
        });
    }
}

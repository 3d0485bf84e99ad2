//! The virtio device model: the [`VirtioDevice`] trait that block, vsock, fs
//! and gpu implement, the interrupt a device raises, and the virtio-mmio
//! transport that puts a device on the MMIO bus.

pub mod block;
pub mod fs;
pub mod gpu;
pub mod mmio;
pub mod vsock;

use std::os::fd::AsRawFd;
use std::sync::atomic::{AtomicBool, AtomicU32, Ordering};
use std::sync::Arc;

use virtio_queue::{Queue, QueueT};
use vmm_sys_util::epoll::{ControlOperation, Epoll, EpollEvent, EventSet};
use vmm_sys_util::eventfd::EventFd;

use crate::GuestMemory;

/// VIRTIO_F_VERSION_1: the device is a modern (virtio 1.x) device.
pub const VIRTIO_F_VERSION_1: u32 = 32;
/// VIRTIO_F_ACCESS_PLATFORM is not offered; devices see guest-physical addresses.
/// VIRTIO_F_RING_EVENT_IDX.
pub const VIRTIO_F_RING_EVENT_IDX: u32 = 29;

/// Device status bits (virtio 1.2 §2.1).
pub mod status {
    /// The guest found the device.
    pub const ACKNOWLEDGE: u32 = 1;
    /// The guest knows how to drive the device.
    pub const DRIVER: u32 = 2;
    /// The driver is set up and ready to drive the device.
    pub const DRIVER_OK: u32 = 4;
    /// Feature negotiation is complete.
    pub const FEATURES_OK: u32 = 8;
    /// The device hit an error it cannot recover from without a reset.
    pub const DEVICE_NEEDS_RESET: u32 = 0x40;
    /// The guest gave up on the device.
    pub const FAILED: u32 = 0x80;
}

/// Interrupt status bit: a used buffer was added to a queue.
pub const INT_VRING: u32 = 1;
/// Interrupt status bit: the configuration changed.
pub const INT_CONFIG: u32 = 2;

/// The device's interrupt: the status register the guest reads and acks, and
/// the irqfd that injects the (edge-triggered) interrupt.
pub struct Interrupt {
    status: AtomicU32,
    irq: EventFd,
    needs_reset: AtomicBool,
}

impl Interrupt {
    /// An interrupt that signals `irq` (registered as an irqfd by the VMM).
    pub fn new(irq: EventFd) -> Arc<Self> {
        Arc::new(Self {
            status: AtomicU32::new(0),
            irq,
            needs_reset: AtomicBool::new(false),
        })
    }

    /// Tells the guest a queue has used buffers.
    pub fn signal_used_queue(&self) -> std::io::Result<()> {
        self.signal(INT_VRING)
    }

    /// Tells the guest the configuration (or the status) changed.
    pub fn signal_config_change(&self) -> std::io::Result<()> {
        self.signal(INT_CONFIG)
    }

    /// Called by a device's worker when the driver broke the queue protocol
    /// (e.g. an impossible available index): the transport then reports
    /// DEVICE_NEEDS_RESET and the guest is told through a config interrupt.
    pub fn set_needs_reset(&self) -> std::io::Result<()> {
        if self.needs_reset.swap(true, Ordering::SeqCst) {
            return Ok(());
        }
        self.signal_config_change()
    }

    /// Whether a worker asked for a reset since the last one.
    pub fn needs_reset(&self) -> bool {
        self.needs_reset.load(Ordering::SeqCst)
    }

    fn signal(&self, bit: u32) -> std::io::Result<()> {
        self.status.fetch_or(bit, Ordering::SeqCst);
        self.irq.write(1)
    }

    /// The InterruptStatus register.
    pub fn status(&self) -> u32 {
        self.status.load(Ordering::SeqCst)
    }

    fn ack(&self, bits: u32) {
        self.status.fetch_and(!bits, Ordering::SeqCst);
    }

    fn clear_needs_reset(&self) {
        self.needs_reset.store(false, Ordering::SeqCst);
    }
}

/// A shared-memory region a device exposes (virtio 1.2 §2.10), e.g. the
/// virtio-gpu host-visible region.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ShmRegion {
    /// Region id (SHMSel value).
    pub id: u8,
    /// Guest-physical base.
    pub base: u64,
    /// Length in bytes.
    pub len: u64,
}

/// Maps host memory into the guest's physical address space (the VMM's KVM
/// memory slots), for devices with a shared-memory region. A mapping stays
/// until [`unmap`](Self::unmap) is called with the handle `map` returned.
pub trait GuestMapper: Send + Sync {
    /// Maps `size` bytes at host address `host_addr` at guest-physical `gpa`,
    /// read-only unless `writable`. Returns a handle for `unmap`. The memory
    /// must stay mapped in the host until `unmap` returned.
    fn map(&self, gpa: u64, host_addr: u64, size: u64, writable: bool) -> std::io::Result<u32>;
    /// Removes a mapping made by `map`.
    fn unmap(&self, handle: u32) -> std::io::Result<()>;
}

/// A queue handed to a device on activation, with the eventfd the guest's
/// QueueNotify writes signal (an ioeventfd, or the transport on a trapped write).
pub struct ActiveQueue {
    /// The queue, as the driver configured it.
    pub queue: Queue,
    /// Signalled on QueueNotify for this queue.
    pub notify: EventFd,
}

/// Errors a device reports when it cannot start.
#[derive(Debug, thiserror::Error)]
pub enum ActivateError {
    /// The queues the driver set up do not fit the device.
    #[error("bad queue setup: {0}")]
    BadQueues(String),
    /// The worker thread or a host resource could not be set up.
    #[error("device activation failed")]
    Io(#[from] std::io::Error),
}

/// What a virtio device implements to sit behind a transport.
pub trait VirtioDevice: Send {
    /// The virtio device id (virtio 1.2 §5); 0 is a placeholder slot.
    fn device_type(&self) -> u32;
    /// Maximum size of each queue; the length is the number of queues.
    fn queue_max_sizes(&self) -> &[u16];
    /// Feature bits the device offers (VIRTIO_F_VERSION_1 is added by the transport).
    fn features(&self) -> u64;
    /// Reads device configuration space; bytes past its end read as zero.
    fn read_config(&self, offset: u64, data: &mut [u8]);
    /// Writes device configuration space; writes past its end are ignored.
    fn write_config(&mut self, offset: u64, data: &[u8]);
    /// Starts the device with the features the driver accepted.
    fn activate(
        &mut self,
        mem: GuestMemory,
        interrupt: Arc<Interrupt>,
        acked_features: u64,
        queues: Vec<ActiveQueue>,
    ) -> Result<(), ActivateError>;
    /// Stops the device and drops its queues; false if it cannot be reset (the
    /// transport then leaves it failed until the VM stops).
    fn reset(&mut self) -> bool;
    /// Shared-memory regions, indexed by their id.
    fn shm_regions(&self) -> &[ShmRegion] {
        &[]
    }
    /// Bytes of guest-physical address space the device's shared-memory
    /// region wants (0: none).
    fn shm_size(&self) -> u64 {
        0
    }
    /// Places the shared-memory region at `base` (called by the VMM before
    /// the guest runs, when [`shm_size`](Self::shm_size) is not 0); `mapper`
    /// puts host memory there.
    fn place_shm(&mut self, _base: u64, _mapper: std::sync::Arc<dyn GuestMapper>) {}
}

/// What a worker does with the outcome of serving a queue: interrupts the
/// guest if that is due; on a broken queue (an error) marks the device as
/// needing a reset. Returns false once the queue is broken.
pub fn queue_served<E: std::fmt::Display>(
    device: &str,
    outcome: Result<bool, E>,
    interrupt: &Interrupt,
) -> bool {
    match outcome {
        Ok(true) => {
            let _ = interrupt.signal_used_queue();
            true
        }
        Ok(false) => true,
        Err(e) => {
            crate::warn_limited!("{device}: broken queue: {e}; device needs reset");
            let _ = interrupt.set_needs_reset();
            false
        }
    }
}

/// A device worker's serving loop over its queues: one epoll that waits on
/// every queue's notify eventfd (token = queue index), on a kill eventfd
/// and, for an asynchronous engine, on its completion eventfd.
/// block and fs use it; vsock has host sockets to wait on too.
pub struct QueueWorker {
    device: &'static str,
    epoll: Epoll,
    queues: Vec<ActiveQueue>,
}

impl QueueWorker {
    /// Takes the driver's queues (event-idx as negotiated) and registers their
    /// notifies and `kill` (token: the queue count) with a new epoll.
    pub fn new(
        device: &'static str,
        mut queues: Vec<ActiveQueue>,
        acked_features: u64,
        kill: &EventFd,
    ) -> std::io::Result<Self> {
        let epoll = Epoll::new()?;
        let event_idx = acked_features & (1 << VIRTIO_F_RING_EVENT_IDX) != 0;
        for (i, aq) in queues.iter_mut().enumerate() {
            aq.queue.set_event_idx(event_idx);
            epoll.ctl(
                ControlOperation::Add,
                aq.notify.as_raw_fd(),
                EpollEvent::new(EventSet::IN, i as u64),
            )?;
        }
        epoll.ctl(
            ControlOperation::Add,
            kill.as_raw_fd(),
            EpollEvent::new(EventSet::IN, queues.len() as u64),
        )?;
        Ok(Self {
            device,
            epoll,
            queues,
        })
    }

    /// Also serves the first queue whenever `completions` (an engine's
    /// completion eventfd, token: the queue count + 1) is signalled. It is
    /// edge-triggered: the engine reads (resets) it itself, before it looks
    /// for completions, so it must stay open while the worker runs.
    pub fn watch_completions(&mut self, completions: &EventFd) -> std::io::Result<()> {
        self.epoll.ctl(
            ControlOperation::Add,
            completions.as_raw_fd(),
            EpollEvent::new(
                EventSet::IN | EventSet::EDGE_TRIGGERED,
                self.queues.len() as u64 + 1,
            ),
        )
    }

    /// Serves each notified queue with `serve(queue)` (which returns whether
    /// the guest is due an interrupt, as [`queue_served`] takes it) until
    /// `kill` is signalled. After a broken queue the device needs a reset and
    /// no queue is served again; an epoll failure also ends in needs-reset.
    pub fn run<E: std::fmt::Display>(
        mut self,
        interrupt: &Interrupt,
        mut serve: impl FnMut(&mut Queue) -> Result<bool, E>,
    ) {
        let mut events = vec![EpollEvent::default(); self.queues.len() + 2];
        let mut broken = false;
        let kill = self.queues.len() as u64;
        loop {
            let n = match self.epoll.wait(-1, &mut events) {
                Ok(n) => n,
                Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
                Err(e) => {
                    tracing::error!("{}: epoll failed: {e}", self.device);
                    let _ = interrupt.set_needs_reset();
                    return;
                }
            };
            for ev in &events[..n] {
                let token = ev.data();
                let aq = if token == kill {
                    return;
                } else if token == kill + 1 {
                    self.queues.first_mut()
                } else {
                    let aq = usize::try_from(token)
                        .ok()
                        .and_then(|i| self.queues.get_mut(i));
                    if let Some(aq) = &aq {
                        let _ = aq.notify.read();
                    }
                    aq
                };
                let Some(aq) = aq else {
                    return;
                };
                if broken {
                    continue;
                }
                broken = !queue_served(self.device, serve(&mut aq.queue), interrupt);
            }
        }
    }
}

/// Reads `data.len()` bytes at `offset` of `config`, zero-filling past its end.
pub fn read_config_bytes(config: &[u8], offset: u64, data: &mut [u8]) {
    data.fill(0);
    let Ok(off) = usize::try_from(offset) else {
        return;
    };
    if let Some(src) = config.get(off..) {
        let n = src.len().min(data.len());
        data[..n].copy_from_slice(&src[..n]);
    }
}

/// A placeholder for an empty slot: device id 0, which Linux skips.
#[derive(Default)]
pub struct EmptySlot;

impl VirtioDevice for EmptySlot {
    fn device_type(&self) -> u32 {
        0
    }
    fn queue_max_sizes(&self) -> &[u16] {
        &[]
    }
    fn features(&self) -> u64 {
        0
    }
    fn read_config(&self, _offset: u64, data: &mut [u8]) {
        data.fill(0);
    }
    fn write_config(&mut self, _offset: u64, _data: &[u8]) {}
    fn activate(
        &mut self,
        _mem: GuestMemory,
        _interrupt: Arc<Interrupt>,
        _acked_features: u64,
        _queues: Vec<ActiveQueue>,
    ) -> Result<(), ActivateError> {
        Err(ActivateError::BadQueues("empty slot".into()))
    }
    fn reset(&mut self) -> bool {
        true
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn config_reads_are_bounds_safe() {
        let cfg = [1u8, 2, 3];
        let mut b = [0xffu8; 4];
        read_config_bytes(&cfg, 1, &mut b);
        assert_eq!(b, [2, 3, 0, 0]);
        read_config_bytes(&cfg, 3, &mut b);
        assert_eq!(b, [0; 4]);
        read_config_bytes(&cfg, u64::MAX, &mut b);
        assert_eq!(b, [0; 4]);
    }

    #[test]
    fn interrupt_status_and_ack() {
        let irq = EventFd::new(libc::EFD_NONBLOCK).unwrap();
        let i = Interrupt::new(irq.try_clone().unwrap());
        i.signal_used_queue().unwrap();
        i.signal_config_change().unwrap();
        assert_eq!(i.status(), INT_VRING | INT_CONFIG);
        assert_eq!(irq.read().unwrap(), 2);
        i.ack(INT_VRING);
        assert_eq!(i.status(), INT_CONFIG);
    }
}

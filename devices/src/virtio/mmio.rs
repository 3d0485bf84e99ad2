//! The virtio-mmio transport, version 2 (virtio 1.2 §4.2.2).
//!
//! The guest drives the transport through 32-bit registers; device status
//! changes are checked against [`valid_transition`], queue setup is only
//! accepted while the driver is negotiating, and anything out of order marks
//! the device DEVICE_NEEDS_RESET (the guest resets it by writing 0 to Status).
//! Nothing the guest writes can panic the VMM.

use std::sync::Arc;

use virtio_queue::{Queue, QueueT};
use vmm_sys_util::eventfd::EventFd;

use super::{status::*, ActiveQueue, Interrupt, VirtioDevice, VIRTIO_F_VERSION_1};
use crate::bus::BusDevice;
use crate::{warn_limited, GuestMemory};

/// "virt" in little endian.
pub const MMIO_MAGIC: u32 = 0x7472_6976;
/// The transport version this implements (modern).
pub const MMIO_VERSION: u32 = 2;
/// Vendor id reported to the guest.
pub const VENDOR_ID: u32 = 0;
/// Size of one transport's MMIO window.
pub const MMIO_SIZE: u64 = 0x1000;

/// Register offsets.
pub mod reg {
    #![allow(missing_docs)]
    pub const MAGIC: u64 = 0x000;
    pub const VERSION: u64 = 0x004;
    pub const DEVICE_ID: u64 = 0x008;
    pub const VENDOR_ID: u64 = 0x00c;
    pub const DEVICE_FEATURES: u64 = 0x010;
    pub const DEVICE_FEATURES_SEL: u64 = 0x014;
    pub const DRIVER_FEATURES: u64 = 0x020;
    pub const DRIVER_FEATURES_SEL: u64 = 0x024;
    pub const QUEUE_SEL: u64 = 0x030;
    pub const QUEUE_NUM_MAX: u64 = 0x034;
    pub const QUEUE_NUM: u64 = 0x038;
    pub const QUEUE_READY: u64 = 0x044;
    pub const QUEUE_NOTIFY: u64 = 0x050;
    pub const INTERRUPT_STATUS: u64 = 0x060;
    pub const INTERRUPT_ACK: u64 = 0x064;
    pub const STATUS: u64 = 0x070;
    pub const QUEUE_DESC_LOW: u64 = 0x080;
    pub const QUEUE_DESC_HIGH: u64 = 0x084;
    pub const QUEUE_DRIVER_LOW: u64 = 0x090;
    pub const QUEUE_DRIVER_HIGH: u64 = 0x094;
    pub const QUEUE_DEVICE_LOW: u64 = 0x0a0;
    pub const QUEUE_DEVICE_HIGH: u64 = 0x0a4;
    pub const SHM_SEL: u64 = 0x0ac;
    pub const SHM_LEN_LOW: u64 = 0x0b0;
    pub const SHM_LEN_HIGH: u64 = 0x0b4;
    pub const SHM_BASE_LOW: u64 = 0x0b8;
    pub const SHM_BASE_HIGH: u64 = 0x0bc;
    pub const QUEUE_RESET: u64 = 0x0c0;
    pub const CONFIG_GENERATION: u64 = 0x0fc;
    pub const CONFIG: u64 = 0x100;
}

/// Whether the driver may move the device status from `from` to `to`
/// (virtio 1.2 §3.1.1: each step adds exactly the next bit). Writing 0
/// (reset) and setting FAILED are handled before this table.
pub fn valid_transition(from: u32, to: u32) -> bool {
    const STEPS: [u32; 5] = [
        0,
        ACKNOWLEDGE,
        ACKNOWLEDGE | DRIVER,
        ACKNOWLEDGE | DRIVER | FEATURES_OK,
        ACKNOWLEDGE | DRIVER | FEATURES_OK | DRIVER_OK,
    ];
    STEPS.windows(2).any(|w| w == [from, to])
}

/// A virtio device on the MMIO bus.
pub struct MmioTransport {
    device: Box<dyn VirtioDevice>,
    mem: GuestMemory,
    interrupt: Arc<Interrupt>,
    status: u32,
    device_features_sel: u32,
    driver_features_sel: u32,
    acked_features: u64,
    queue_sel: u32,
    queues: Vec<Queue>,
    notify: Vec<EventFd>,
    shm_sel: u32,
    config_generation: u32,
    active: bool,
}

/// Errors creating a transport.
#[derive(Debug, thiserror::Error)]
pub enum MmioError {
    /// A queue size the device asked for is not valid (power of two, ≤ 32768).
    #[error("invalid queue size {0}")]
    QueueSize(u16),
    /// An eventfd could not be created.
    #[error("cannot create an eventfd")]
    EventFd(#[from] std::io::Error),
}

impl MmioTransport {
    /// Wraps `device`; `irq` is the eventfd the VMM registered as its irqfd.
    pub fn new(
        device: Box<dyn VirtioDevice>,
        mem: GuestMemory,
        irq: EventFd,
    ) -> Result<Self, MmioError> {
        let mut queues = Vec::new();
        let mut notify = Vec::new();
        for &max in device.queue_max_sizes() {
            queues.push(Queue::new(max).map_err(|_| MmioError::QueueSize(max))?);
            notify.push(EventFd::new(libc::EFD_NONBLOCK)?);
        }
        Ok(Self {
            device,
            mem,
            interrupt: Interrupt::new(irq),
            status: 0,
            device_features_sel: 0,
            driver_features_sel: 0,
            acked_features: 0,
            queue_sel: 0,
            queues,
            notify,
            shm_sel: 0,
            config_generation: 0,
            active: false,
        })
    }

    /// The eventfds a QueueNotify write of each queue index signals; the VMM
    /// registers them as ioeventfds at `base + reg::QUEUE_NOTIFY` with the
    /// queue index as datamatch.
    pub fn queue_notify_eventfds(&self) -> impl Iterator<Item = (u32, &EventFd)> {
        self.notify.iter().enumerate().map(|(i, e)| (i as u32, e))
    }

    /// The device status register, with DEVICE_NEEDS_RESET when either the
    /// transport or one of the device's workers has asked for a reset.
    pub fn status(&self) -> u32 {
        if self.interrupt.needs_reset() {
            self.status | DEVICE_NEEDS_RESET
        } else {
            self.status
        }
    }

    /// The features offered: the device's plus VIRTIO_F_VERSION_1.
    fn offered_features(&self) -> u64 {
        self.device.features() | (1u64 << VIRTIO_F_VERSION_1)
    }

    fn needs_reset(&mut self, why: &str) {
        warn_limited!(
            device_type = self.device.device_type(),
            "virtio-mmio: {why}; device needs reset"
        );
        if self.status & DEVICE_NEEDS_RESET == 0 {
            self.status |= DEVICE_NEEDS_RESET;
            if self.status & DRIVER_OK != 0 {
                let _ = self.interrupt.signal_config_change();
            }
        }
    }

    fn selected_queue(&mut self) -> Option<&mut Queue> {
        self.queues.get_mut(self.queue_sel as usize)
    }

    /// Whether queue registers may be written now.
    fn queue_setup_allowed(&self) -> bool {
        self.status() & (FEATURES_OK | DRIVER_OK | DEVICE_NEEDS_RESET | FAILED) == FEATURES_OK
            && self
                .queues
                .get(self.queue_sel as usize)
                .is_some_and(|q| !q.ready())
    }

    fn reset(&mut self) {
        if self.active && !self.device.reset() {
            // The device cannot be reset: it stays failed.
            self.status = FAILED;
            return;
        }
        self.active = false;
        self.status = 0;
        self.device_features_sel = 0;
        self.driver_features_sel = 0;
        self.acked_features = 0;
        self.queue_sel = 0;
        self.shm_sel = 0;
        for q in &mut self.queues {
            q.reset();
        }
        self.interrupt.ack(u32::MAX);
        self.interrupt.clear_needs_reset();
        self.config_generation = self.config_generation.wrapping_add(1);
    }

    fn write_status(&mut self, v: u32) {
        if v == 0 {
            self.reset();
            return;
        }
        if v & FAILED != 0 {
            self.status |= FAILED;
            return;
        }
        let cur = self.status & !DEVICE_NEEDS_RESET;
        let new = v & !DEVICE_NEEDS_RESET;
        if new == cur {
            return;
        }
        if self.status() & (DEVICE_NEEDS_RESET | FAILED) != 0 || !valid_transition(cur, new) {
            self.needs_reset("invalid status transition");
            return;
        }
        match new & !cur {
            FEATURES_OK => {
                let offered = self.offered_features();
                let version1 = 1u64 << VIRTIO_F_VERSION_1;
                if self.acked_features & !offered != 0 || self.acked_features & version1 == 0 {
                    // Leave FEATURES_OK clear: the driver sees the refusal.
                    warn_limited!("virtio-mmio: driver accepted features the device refused");
                    return;
                }
                self.status = new;
            }
            DRIVER_OK => self.activate(new),
            _ => self.status = new,
        }
    }

    fn activate(&mut self, new_status: u32) {
        let mut active = Vec::new();
        for (q, evt) in self.queues.iter().zip(&self.notify) {
            if !q.ready() {
                continue;
            }
            let (Ok(queue), Ok(notify)) = (Queue::try_from(q.state()), evt.try_clone()) else {
                return self.needs_reset("cannot hand the queue to the device");
            };
            active.push(ActiveQueue { queue, notify });
        }
        self.status = new_status;
        match self.device.activate(
            self.mem.clone(),
            self.interrupt.clone(),
            self.acked_features,
            active,
        ) {
            Ok(()) => self.active = true,
            Err(e) => {
                warn_limited!("virtio-mmio: activation failed: {e}");
                self.needs_reset("activation failed");
            }
        }
    }

    fn read_reg(&self, offset: u64) -> u32 {
        let q = self.queues.get(self.queue_sel as usize);
        let shm = self
            .device
            .shm_regions()
            .iter()
            .find(|r| u32::from(r.id) == self.shm_sel);
        match offset {
            reg::MAGIC => MMIO_MAGIC,
            reg::VERSION => MMIO_VERSION,
            reg::DEVICE_ID => self.device.device_type(),
            reg::VENDOR_ID => VENDOR_ID,
            reg::DEVICE_FEATURES => match self.device_features_sel {
                0 => self.offered_features() as u32,
                1 => (self.offered_features() >> 32) as u32,
                _ => 0,
            },
            reg::QUEUE_NUM_MAX => q.map_or(0, |q| u32::from(q.max_size())),
            reg::QUEUE_READY => q.map_or(0, |q| u32::from(q.ready())),
            reg::INTERRUPT_STATUS => self.interrupt.status(),
            reg::STATUS => self.status(),
            reg::QUEUE_DESC_LOW => q.map_or(0, |q| q.desc_table() as u32),
            reg::QUEUE_DESC_HIGH => q.map_or(0, |q| (q.desc_table() >> 32) as u32),
            reg::QUEUE_DRIVER_LOW => q.map_or(0, |q| q.avail_ring() as u32),
            reg::QUEUE_DRIVER_HIGH => q.map_or(0, |q| (q.avail_ring() >> 32) as u32),
            reg::QUEUE_DEVICE_LOW => q.map_or(0, |q| q.used_ring() as u32),
            reg::QUEUE_DEVICE_HIGH => q.map_or(0, |q| (q.used_ring() >> 32) as u32),
            // A region that does not exist has length -1 (virtio 1.2 §4.2.2).
            reg::SHM_LEN_LOW => shm.map_or(u32::MAX, |r| r.len as u32),
            reg::SHM_LEN_HIGH => shm.map_or(u32::MAX, |r| (r.len >> 32) as u32),
            reg::SHM_BASE_LOW => shm.map_or(u32::MAX, |r| r.base as u32),
            reg::SHM_BASE_HIGH => shm.map_or(u32::MAX, |r| (r.base >> 32) as u32),
            reg::QUEUE_RESET => 0,
            reg::CONFIG_GENERATION => self.config_generation,
            _ => 0,
        }
    }

    fn write_reg(&mut self, offset: u64, v: u32) {
        match offset {
            reg::DEVICE_FEATURES_SEL => self.device_features_sel = v,
            reg::DRIVER_FEATURES_SEL => self.driver_features_sel = v,
            reg::DRIVER_FEATURES => {
                if self.status & (ACKNOWLEDGE | DRIVER | FEATURES_OK) != (ACKNOWLEDGE | DRIVER) {
                    return self.needs_reset("driver features written out of order");
                }
                match self.driver_features_sel {
                    0 => self.acked_features = (self.acked_features & !0xffff_ffff) | u64::from(v),
                    1 => {
                        self.acked_features =
                            (self.acked_features & 0xffff_ffff) | (u64::from(v) << 32)
                    }
                    _ if v == 0 => {}
                    _ => self.needs_reset("driver accepted features beyond bit 63"),
                }
            }
            reg::QUEUE_SEL => self.queue_sel = v,
            reg::QUEUE_NUM
            | reg::QUEUE_DESC_LOW
            | reg::QUEUE_DESC_HIGH
            | reg::QUEUE_DRIVER_LOW
            | reg::QUEUE_DRIVER_HIGH
            | reg::QUEUE_DEVICE_LOW
            | reg::QUEUE_DEVICE_HIGH => self.write_queue_reg(offset, v),
            reg::QUEUE_READY => self.write_queue_ready(v),
            reg::QUEUE_NOTIFY => match self.notify.get(v as usize) {
                Some(e) if self.status & DRIVER_OK != 0 => {
                    let _ = e.write(1);
                }
                _ => self.needs_reset("notify of a queue that is not live"),
            },
            reg::INTERRUPT_ACK => self.interrupt.ack(v),
            reg::STATUS => self.write_status(v),
            reg::SHM_SEL => self.shm_sel = v,
            _ => self.needs_reset("write to a read-only or unknown register"),
        }
    }

    fn write_queue_reg(&mut self, offset: u64, v: u32) {
        if !self.queue_setup_allowed() {
            return self.needs_reset("queue register written outside queue setup");
        }
        let Some(q) = self.selected_queue() else {
            return;
        };
        let ok = match offset {
            reg::QUEUE_NUM => u16::try_from(v).is_ok_and(|n| q.try_set_size(n).is_ok()),
            reg::QUEUE_DESC_LOW => set_low(q.desc_table(), v, |a| q.try_set_desc_table_address(a)),
            reg::QUEUE_DESC_HIGH => {
                set_high(q.desc_table(), v, |a| q.try_set_desc_table_address(a))
            }
            reg::QUEUE_DRIVER_LOW => {
                set_low(q.avail_ring(), v, |a| q.try_set_avail_ring_address(a))
            }
            reg::QUEUE_DRIVER_HIGH => {
                set_high(q.avail_ring(), v, |a| q.try_set_avail_ring_address(a))
            }
            reg::QUEUE_DEVICE_LOW => set_low(q.used_ring(), v, |a| q.try_set_used_ring_address(a)),
            reg::QUEUE_DEVICE_HIGH => {
                set_high(q.used_ring(), v, |a| q.try_set_used_ring_address(a))
            }
            _ => false,
        };
        if !ok {
            self.needs_reset("invalid queue size or misaligned ring address");
        }
    }

    fn write_queue_ready(&mut self, v: u32) {
        // Turning off a queue that is not on changes nothing: Linux does it
        // for every queue when its driver is removed, after the reset.
        let off_already = self
            .queues
            .get(self.queue_sel as usize)
            .is_some_and(|q| !q.ready());
        if v == 0 && off_already && self.status & DRIVER_OK == 0 {
            return;
        }
        if !self.queue_setup_allowed() {
            return self.needs_reset("queue ready written outside queue setup");
        }
        let event_idx = self.acked_features & (1 << super::VIRTIO_F_RING_EVENT_IDX) != 0;
        let mem = self.mem.clone();
        let Some(q) = self.selected_queue() else {
            return;
        };
        match v {
            0 => q.set_ready(false),
            1 => {
                q.set_event_idx(event_idx);
                q.set_ready(true);
                if !q.is_valid(&mem) {
                    q.set_ready(false);
                    self.needs_reset("queue rings outside guest memory");
                }
            }
            _ => self.needs_reset("invalid QueueReady value"),
        }
    }
}

fn set_low<E>(cur: u64, v: u32, f: impl FnOnce(vm_memory::GuestAddress) -> Result<(), E>) -> bool {
    f(vm_memory::GuestAddress((cur & !0xffff_ffff) | u64::from(v))).is_ok()
}

fn set_high<E>(cur: u64, v: u32, f: impl FnOnce(vm_memory::GuestAddress) -> Result<(), E>) -> bool {
    f(vm_memory::GuestAddress(
        (cur & 0xffff_ffff) | (u64::from(v) << 32),
    ))
    .is_ok()
}

impl BusDevice for MmioTransport {
    fn read(&mut self, offset: u64, data: &mut [u8]) {
        if offset >= reg::CONFIG {
            return self.device.read_config(offset - reg::CONFIG, data);
        }
        match <&mut [u8; 4]>::try_from(&mut *data) {
            Ok(b) if offset.is_multiple_of(4) => *b = self.read_reg(offset).to_le_bytes(),
            _ => {
                warn_limited!(
                    offset,
                    len = data.len(),
                    "virtio-mmio: unaligned register read"
                );
                data.fill(0);
            }
        }
    }

    fn write(&mut self, offset: u64, data: &[u8]) {
        if offset >= reg::CONFIG {
            if self.status & FAILED == 0 {
                self.device.write_config(offset - reg::CONFIG, data);
            }
            return;
        }
        match <[u8; 4]>::try_from(data) {
            Ok(b) if offset.is_multiple_of(4) => self.write_reg(offset, u32::from_le_bytes(b)),
            _ => self.needs_reset("register write that is not 32-bit aligned"),
        }
    }
}

#[cfg(test)]
mod tests;

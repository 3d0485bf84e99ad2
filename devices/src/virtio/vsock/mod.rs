//! virtio-vsock (virtio 1.2 §5.10) with a Firecracker-compatible Unix-socket
//! host side; see [`muxer`] for the protocol and the flow control.
//!
//! One worker thread per device owns the queues and every host stream and
//! waits in one epoll for queue notifications, host sockets and its kill
//! eventfd. Packet headers go through the `virtio-vsock` crate.

pub mod muxer;
#[cfg(test)]
mod tests;

use std::os::fd::AsRawFd;
use std::os::unix::net::UnixListener;
use std::path::PathBuf;
use std::sync::Arc;

use virtio_queue::{Queue, QueueT};
use vmm_sys_util::epoll::{ControlOperation, EpollEvent, EventSet};
use vmm_sys_util::eventfd::EventFd;

use super::{
    read_config_bytes, ActivateError, ActiveQueue, Interrupt, VirtioDevice, VIRTIO_F_RING_EVENT_IDX,
};
use crate::worker::Parked;
use crate::{warn_limited, GuestMemory};
pub use muxer::{Muxer, MuxerError};
use seccomp_policies::ThreadKind;

/// Virtio device id of a socket device.
pub const VIRTIO_ID_VSOCK: u32 = 19;
/// Queue size of each of the three queues (rx, tx, event).
pub const QUEUE_SIZE: u16 = 256;
/// The guest CID when none is configured.
pub const DEFAULT_CID: u64 = 3;

/// The vsock device's configuration.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct VsockConfig {
    /// The guest's context id (≥ 3).
    pub cid: u64,
    /// Host socket: host clients connect here; guest connections to port P
    /// go to `PATH_P`.
    pub uds_path: PathBuf,
    /// Host ports whose guest streams carry length-prefixed frames, written
    /// to the host peer whole (see [`muxer`]'s documentation): the network
    /// port when the VM has a network.
    pub framed_ports: Vec<u32>,
}

/// Errors creating the device.
#[derive(Debug, thiserror::Error)]
pub enum VsockError {
    /// CIDs 0–2 are reserved and 2^32−1 is VMADDR_CID_ANY.
    #[error("invalid guest CID {0} (it must be at least 3 and below 4294967295)")]
    BadCid(u64),
    /// The host socket.
    #[error(transparent)]
    Muxer(#[from] MuxerError),
    /// The worker thread could not start (or install its seccomp filter).
    #[error(transparent)]
    Thread(#[from] crate::worker::WorkerError),
}

/// The virtio-vsock device.
pub struct Vsock {
    cfg: VsockConfig,
    listener: UnixListener,
    config: [u8; 8],
    queue_sizes: [u16; 3],
    thread: Parked,
    /// The user the VMM runs as (host peers must be it, or root).
    owner: u32,
}

impl Vsock {
    /// Binds the host socket (a stale socket file nobody listens on is replaced).
    pub fn new(cfg: VsockConfig) -> Result<Self, VsockError> {
        if cfg.cid < 3 || cfg.cid >= u64::from(u32::MAX) {
            return Err(VsockError::BadCid(cfg.cid));
        }
        let listener = muxer::bind(&cfg.uds_path)?;
        Ok(Self {
            // Here, on the builder's thread: activation runs on a vCPU's,
            // whose filter has no getuid.
            // SAFETY: getuid has no preconditions.
            owner: unsafe { libc::getuid() },
            config: cfg.cid.to_le_bytes(),
            cfg,
            listener,
            queue_sizes: [QUEUE_SIZE; 3],
            thread: Parked::spawn("virtio-vsock", ThreadKind::VirtioVsock)?,
        })
    }
}

impl Drop for Vsock {
    fn drop(&mut self) {
        self.thread.stop();
        let _ = std::fs::remove_file(&self.cfg.uds_path);
    }
}

const TOKEN_RXQ: u64 = 0;
const TOKEN_TXQ: u64 = 1;
const TOKEN_EVQ: u64 = 2;
const TOKEN_KILL: u64 = 3;

struct Queues {
    rx: Queue,
    tx: Queue,
    rx_notify: EventFd,
    tx_notify: EventFd,
    ev_notify: EventFd,
}

fn run_worker(
    mut mux: Muxer,
    mem: GuestMemory,
    interrupt: Arc<Interrupt>,
    mut q: Queues,
    kill: EventFd,
) {
    let mut events = vec![EpollEvent::default(); 64];
    loop {
        let n = match mux.epoll().wait(-1, &mut events) {
            Ok(n) => n,
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
            Err(e) => {
                tracing::error!("vsock: epoll failed: {e}");
                let _ = interrupt.set_needs_reset();
                return;
            }
        };
        let (mut rx_used, mut tx_used) = (false, false);
        let mut result = Ok(());
        for ev in &events[..n] {
            let r = match ev.data() {
                TOKEN_KILL => return,
                TOKEN_RXQ => {
                    let _ = q.rx_notify.read();
                    Ok(())
                }
                TOKEN_TXQ => {
                    let _ = q.tx_notify.read();
                    mux.process_tx(&mem, &mut q.tx).map(|u| tx_used |= u)
                }
                TOKEN_EVQ => {
                    let _ = q.ev_notify.read();
                    Ok(())
                }
                t => {
                    mux.host_event(t, ev.event_set());
                    Ok(())
                }
            };
            if let Err(e) = r {
                result = Err(e);
            }
        }
        // The guest may have queued more tx while we worked; and whatever
        // became ready goes into rx buffers.
        if result.is_ok() {
            result = mux.process_tx(&mem, &mut q.tx).map(|u| tx_used |= u);
        }
        if result.is_ok() {
            result = mux.fill_rx(&mem, &mut q.rx).map(|u| rx_used |= u);
        }
        // One interrupt for both queues, and none the driver suppressed
        // (its used_event with EVENT_IDX, else VRING_AVAIL_F_NO_INTERRUPT).
        let notify = result.and_then(|()| {
            let tx = tx_used && q.tx.needs_notification(&mem)?;
            let rx = rx_used && q.rx.needs_notification(&mem)?;
            Ok(tx || rx)
        });
        match notify {
            Ok(true) => {
                let _ = interrupt.signal_used_queue();
            }
            Ok(false) => {}
            Err(e) => {
                warn_limited!("vsock: broken queue: {e}; device needs reset");
                let _ = interrupt.set_needs_reset();
                // Close every stream and wait for the guest's reset.
                drop(mux);
                while !crate::wait_readable(&kill, None) {}
                return;
            }
        }
    }
}

impl VirtioDevice for Vsock {
    fn device_type(&self) -> u32 {
        VIRTIO_ID_VSOCK
    }

    fn queue_max_sizes(&self) -> &[u16] {
        &self.queue_sizes
    }

    fn features(&self) -> u64 {
        1 << VIRTIO_F_RING_EVENT_IDX
    }

    fn read_config(&self, offset: u64, data: &mut [u8]) {
        read_config_bytes(&self.config, offset, data);
    }

    fn write_config(&mut self, offset: u64, _data: &[u8]) {
        warn_limited!("vsock: guest wrote read-only config at {offset:#x}");
    }

    fn activate(
        &mut self,
        mem: GuestMemory,
        interrupt: Arc<Interrupt>,
        acked_features: u64,
        queues: Vec<ActiveQueue>,
    ) -> Result<(), ActivateError> {
        self.thread.stop();
        let [rx, tx, ev]: [ActiveQueue; 3] = queues
            .try_into()
            .map_err(|q: Vec<_>| ActivateError::BadQueues(format!("{} queues, want 3", q.len())))?;
        let listener = self.listener.try_clone()?;
        let mux = Muxer::new(
            self.cfg.cid,
            self.cfg.uds_path.clone(),
            Some(listener),
            self.owner,
        )
        .map_err(|e| ActivateError::BadQueues(e.to_string()))?
        .frame_ports(&self.cfg.framed_ports);
        let kill = EventFd::new(libc::EFD_NONBLOCK)?;
        let k = kill.try_clone()?;
        for (fd, token) in [
            (rx.notify.as_raw_fd(), TOKEN_RXQ),
            (tx.notify.as_raw_fd(), TOKEN_TXQ),
            (ev.notify.as_raw_fd(), TOKEN_EVQ),
            (kill.as_raw_fd(), TOKEN_KILL),
        ] {
            mux.epoll().ctl(
                ControlOperation::Add,
                fd,
                EpollEvent::new(EventSet::IN, token),
            )?;
        }
        let mut rxq = rx.queue;
        let mut txq = tx.queue;
        let event_idx = acked_features & (1 << VIRTIO_F_RING_EVENT_IDX) != 0;
        rxq.set_event_idx(event_idx);
        txq.set_event_idx(event_idx);
        let q = Queues {
            rx: rxq,
            tx: txq,
            rx_notify: rx.notify,
            tx_notify: tx.notify,
            ev_notify: ev.notify,
        };
        self.thread
            .serve(kill, move || run_worker(mux, mem, interrupt, q, k))
            .map_err(|e| ActivateError::BadQueues(e.to_string()))?;
        Ok(())
    }

    fn reset(&mut self) -> bool {
        // A worker stuck past its deadline leaves the device failed.
        self.thread.stop()
    }
}

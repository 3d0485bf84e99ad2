//! The io_uring engine of virtio-blk: requests are submitted as they are
//! popped, up to [`DEPTH`] in flight, and complete in whatever order the
//! image's backend finishes them, so a slow backend's latency overlaps.
//!
//! The ring is made with the device, on the VMM's thread, and starts
//! disabled (`IORING_SETUP_R_DISABLED`) until it is locked down: the image's
//! descriptors are registered as fixed files and the completion eventfd is
//! registered, then `IORING_REGISTER_RESTRICTIONS` allows only `READV`,
//! `WRITEV` (writable disks) and `FSYNC`, only on fixed files, and no
//! register operation at all; only then is it enabled. So the I/O thread,
//! whose seccomp filter allows `io_uring_enter` but neither
//! `io_uring_setup` nor `io_uring_register`, can do nothing through the ring
//! but read, write and sync this image (seccomp does not see what the kernel
//! does on the ring's behalf; the restrictions do).
//!
//! A FLUSH is an `FSYNC` (`IORING_FSYNC_DATASYNC`) with `IOSQE_IO_DRAIN`:
//! it starts only once every request submitted before it has completed, so
//! the writes it makes durable include every write the guest had queued
//! before it. Short transfers continue where they stopped; a transfer that
//! fails completes with `VIRTIO_BLK_S_IOERR` and the others go on. A reset
//! waits for every request in flight before it returns (the guest may reuse
//! their buffers right after), without adding them to the used ring.

use std::os::fd::AsRawFd;

use io_uring::register::{Probe, Restriction};
use io_uring::{opcode, squeue, types, IoUring};
use virtio_queue::{Queue, QueueOwnedT, QueueT};
use vm_memory::GuestAddress;
use vmm_sys_util::eventfd::EventFd;

use super::request::{self, Action, RequestError};
use super::{Disk, Scratch, QUEUE_SIZE};
use crate::{warn_limited, GuestMemory};

/// Most requests in flight: one per descriptor of the queue.
pub const DEPTH: u16 = QUEUE_SIZE;
/// Most iovecs one `READV`/`WRITEV` takes (`UIO_MAXIOV`); a longer chain
/// continues as a short transfer would.
const MAX_IOVS: usize = 1024;
/// `-EAGAIN` completions one request may have before it fails.
const MAX_RETRIES: u8 = 16;

/// Why the io_uring engine cannot be set up, or stopped working.
#[derive(Debug, thiserror::Error)]
pub enum UringError {
    /// `io_uring_setup` failed (an old kernel, `kernel.io_uring_disabled`,
    /// a seccomp filter of the embedder's).
    #[error("io_uring_setup failed: {0}")]
    Setup(std::io::Error),
    /// The kernel's io_uring lacks an operation or feature the engine needs.
    #[error("the kernel's io_uring lacks {0}")]
    Missing(&'static str),
    /// Registering the image, the eventfd or the restrictions failed.
    #[error("io_uring_register ({what}) failed: {source}")]
    Register {
        /// What was being registered.
        what: &'static str,
        /// Why.
        source: std::io::Error,
    },
    /// The image could not be opened again for the ring.
    #[error("cannot open the image again for the ring: {0}")]
    Reopen(std::io::Error),
    /// The completion eventfd could not be made.
    #[error("cannot create the completion eventfd: {0}")]
    EventFd(std::io::Error),
    /// `io_uring_enter` failed for good: the device needs a reset.
    #[error("io_uring_enter failed: {0}")]
    Enter(std::io::Error),
    /// The queue is broken: the device needs a reset.
    #[error(transparent)]
    Queue(#[from] virtio_queue::Error),
}

/// What one slot's request does.
enum Work {
    /// FLUSH.
    Flush,
    /// READV (`write` false) or WRITEV; `iovs[first..]` and `offset` are
    /// what is left to do, `left` bytes of the request's `len`.
    Transfer {
        write: bool,
        fixed: u32,
        iovs: Vec<libc::iovec>,
        first: usize,
        offset: u64,
        left: u32,
        len: u32,
    },
}

/// A request in flight.
struct Slot {
    head: u16,
    status: GuestAddress,
    work: Work,
    retries: u8,
}

/// A disk's io_uring and the requests in flight on it.
pub struct Uring {
    ring: IoUring,
    completions: EventFd,
    /// Indexed by the SQE's user data.
    slots: Vec<Option<Slot>>,
    free: Vec<u16>,
    scratch: Scratch,
    /// Emptied iovec vectors, reused.
    spare: Vec<Vec<libc::iovec>>,
    /// Completions taken off the CQ, as (user data, result).
    cqes: Vec<(u64, i32)>,
    /// SQEs pushed and not yet handed to the kernel.
    unsubmitted: bool,
}

// SAFETY: the raw pointers Uring holds (iovecs) point into guest memory,
// which is shared with the guest and every device thread by design and
// outlives the device; they are only handed to the kernel, never
// dereferenced here. The ring itself is owned by one thread at a time.
unsafe impl Send for Uring {}

fn register(what: &'static str) -> impl FnOnce(std::io::Error) -> UringError {
    move |source| UringError::Register { what, source }
}

impl Uring {
    /// Makes the ring for `disk`, restricted to what the disk needs, and
    /// enables it.
    pub fn new(disk: &Disk) -> Result<Self, UringError> {
        let ring: IoUring = IoUring::builder()
            .setup_r_disabled()
            .build(u32::from(DEPTH))
            .map_err(UringError::Setup)?;
        if !ring.params().is_feature_nodrop() {
            return Err(UringError::Missing("IORING_FEAT_NODROP"));
        }
        let sub = ring.submitter();
        let mut probe = Probe::new();
        sub.register_probe(&mut probe).map_err(register("probe"))?;
        let mut ops = vec![opcode::Readv::CODE, opcode::Fsync::CODE];
        if !disk.read_only {
            ops.push(opcode::Writev::CODE);
        }
        for op in &ops {
            if !probe.is_supported(*op) {
                return Err(UringError::Missing("READV, WRITEV or FSYNC"));
            }
        }
        let buffered = disk.reopen().map_err(UringError::Reopen)?;
        sub.register_files(&disk.fds(&buffered))
            .map_err(register("files"))?;
        let completions = EventFd::new(libc::EFD_NONBLOCK).map_err(UringError::EventFd)?;
        sub.register_eventfd(completions.as_raw_fd())
            .map_err(register("eventfd"))?;
        let mut allowed: Vec<Restriction> = ops.into_iter().map(Restriction::sqe_op).collect();
        allowed.push(Restriction::sqe_flags_required(
            squeue::Flags::FIXED_FILE.bits(),
        ));
        allowed.push(Restriction::sqe_flags_allowed(
            squeue::Flags::IO_DRAIN.bits(),
        ));
        sub.register_restrictions(&mut allowed)
            .map_err(register("restrictions"))?;
        sub.register_enable_rings().map_err(register("enable"))?;
        Ok(Self {
            ring,
            completions,
            slots: (0..DEPTH).map(|_| None).collect(),
            free: (0..DEPTH).rev().collect(),
            scratch: Scratch::default(),
            spare: Vec::new(),
            cqes: Vec::with_capacity(usize::from(DEPTH)),
            unsubmitted: false,
        })
    }

    /// The eventfd the kernel signals when requests complete.
    pub fn completions(&self) -> &EventFd {
        &self.completions
    }

    /// Requests in flight.
    pub fn in_flight(&self) -> usize {
        self.slots.len() - self.free.len()
    }

    /// Completes what the kernel has finished, then takes new requests off
    /// the queue while a slot is free. Returns whether the guest is due an
    /// interrupt; an error means the device needs a reset.
    pub fn serve(
        &mut self,
        disk: &Disk,
        mem: &GuestMemory,
        queue: &mut Queue,
    ) -> Result<bool, UringError> {
        // Reset before looking, so that a completion after the look wakes
        // the worker again.
        let _ = self.completions.read();
        let mut used = false;
        // Until nothing moves: requests the kernel completes inline while
        // it takes them (page-cache hits) are taken at once, without a trip
        // through epoll, and the slots they free serve the next requests.
        loop {
            let (reaped, done) = self.reap(mem, queue)?;
            let (started, finished) = self.start(disk, mem, queue)?;
            used |= done | finished;
            if !reaped && !started {
                break;
            }
        }
        Ok(used && queue.needs_notification(mem)?)
    }

    /// Takes new requests off the queue while a slot is free and hands them
    /// to the kernel, without looking for completions: returns (whether any
    /// was queued, whether any completed at once).
    pub(super) fn start(
        &mut self,
        disk: &Disk,
        mem: &GuestMemory,
        queue: &mut Queue,
    ) -> Result<(bool, bool), UringError> {
        let r = self.pop(disk, mem, queue)?;
        self.submit()?;
        Ok(r)
    }

    /// Pops requests while slots are free: those that need no I/O (or are
    /// invalid) complete at once, the others are queued on the ring.
    /// Returns (whether any was queued, whether any completed).
    fn pop(
        &mut self,
        disk: &Disk,
        mem: &GuestMemory,
        queue: &mut Queue,
    ) -> Result<(bool, bool), UringError> {
        let mut used = false;
        let free = self.free.len();
        loop {
            queue.disable_notification(mem)?;
            loop {
                if self.free.is_empty() {
                    // Notifications stay off: completions bring us back.
                    return Ok((self.free.len() < free, used));
                }
                let Some(chain) = queue.iter(mem)?.next() else {
                    break;
                };
                let head = chain.head_index();
                let done = match request::prepare(disk, mem, chain, &mut self.scratch) {
                    None => Some(0),
                    Some(p) => match p.action {
                        Err(e) => Some(request::finish(mem, p.status, Err(e))),
                        Ok(Action::Done(n)) => Some(request::finish(mem, p.status, Ok(n))),
                        Ok(Action::Flush) => {
                            self.occupy(head, p.status, Work::Flush);
                            None
                        }
                        Ok(Action::Transfer { write, offset, len }) => {
                            let (_, fixed) = disk.fd_for(&self.scratch.iovs, offset, len);
                            let fresh = self.spare.pop().unwrap_or_default();
                            let iovs = std::mem::replace(&mut self.scratch.iovs, fresh);
                            let work = Work::Transfer {
                                write,
                                fixed,
                                iovs,
                                first: 0,
                                offset,
                                left: len,
                                len,
                            };
                            self.occupy(head, p.status, work);
                            None
                        }
                    },
                };
                if let Some(len) = done {
                    queue.add_used(mem, head, len)?;
                    used = true;
                }
            }
            if !queue.enable_notification(mem)? {
                return Ok((self.free.len() < free, used));
            }
        }
    }

    /// Puts a request into a free slot and queues its SQE.
    fn occupy(&mut self, head: u16, status: GuestAddress, work: Work) {
        let Some(i) = self.free.pop() else {
            return;
        };
        self.slots[usize::from(i)] = Some(Slot {
            head,
            status,
            work,
            retries: 0,
        });
        self.push(i);
    }

    /// Queues slot `i`'s (next) SQE.
    fn push(&mut self, i: u16) {
        let Some(slot) = &self.slots[usize::from(i)] else {
            return;
        };
        let entry = match &slot.work {
            Work::Flush => opcode::Fsync::new(types::Fixed(0))
                .flags(types::FsyncFlags::DATASYNC)
                .build()
                .flags(squeue::Flags::IO_DRAIN),
            Work::Transfer {
                write,
                fixed,
                iovs,
                first,
                offset,
                ..
            } => {
                let rest = &iovs[*first..];
                let n = rest.len().min(MAX_IOVS) as u32;
                if *write {
                    opcode::Writev::new(types::Fixed(*fixed), rest.as_ptr(), n)
                        .offset(*offset)
                        .build()
                } else {
                    opcode::Readv::new(types::Fixed(*fixed), rest.as_ptr(), n)
                        .offset(*offset)
                        .build()
                }
            }
        };
        let entry = entry.user_data(u64::from(i));
        // SAFETY: the iovecs live in the slot, untouched until the request
        // completes (the slot is only emptied on its completion, and a reset
        // waits for every completion); they point into guest memory that
        // stays mapped for the VM's lifetime (validated by get_slices).
        // There is room: the SQ has DEPTH entries and a slot has at most one
        // SQE queued or in flight.
        let pushed = unsafe { self.ring.submission().push(&entry) };
        debug_assert!(pushed.is_ok(), "one SQE per slot fits");
        self.unsubmitted = true;
    }

    /// Hands queued SQEs to the kernel.
    fn submit(&mut self) -> Result<(), UringError> {
        let mut tries = 0u32;
        while self.unsubmitted {
            match self.ring.submit() {
                Ok(_) => {}
                Err(e) if e.raw_os_error() == Some(libc::EINTR) => continue,
                Err(e)
                    if matches!(e.raw_os_error(), Some(libc::EAGAIN) | Some(libc::EBUSY))
                        && tries < 1000 =>
                {
                    // The kernel is short of memory for now.
                    tries += 1;
                    std::thread::sleep(std::time::Duration::from_millis(1));
                }
                Err(e) => return Err(UringError::Enter(e)),
            }
            self.unsubmitted = !self.ring.submission().is_empty();
        }
        Ok(())
    }

    /// Takes completions off the CQ until it is empty, finishing requests
    /// (and continuing short ones). Returns (whether there was any
    /// completion, whether any request finished).
    fn reap(&mut self, mem: &GuestMemory, queue: &mut Queue) -> Result<(bool, bool), UringError> {
        let mut any = false;
        let mut used = false;
        loop {
            self.cqes.clear();
            self.cqes
                .extend(self.ring.completion().map(|c| (c.user_data(), c.result())));
            if self.cqes.is_empty() {
                return Ok((any, used));
            }
            any = true;
            for k in 0..self.cqes.len() {
                let (data, res) = self.cqes[k];
                if let Some((head, len)) = self.complete(mem, data, res) {
                    queue.add_used(mem, head, len)?;
                    used = true;
                }
            }
        }
    }

    /// One completion: the request's (head, used length) when it is done;
    /// `None` when it continues (or the user data is not ours).
    fn complete(&mut self, mem: &GuestMemory, data: u64, res: i32) -> Option<(u16, u32)> {
        let i = u16::try_from(data).ok()?;
        let slot = self.slots.get_mut(usize::from(i))?.as_mut()?;
        let result = match &mut slot.work {
            Work::Flush if res < 0 => {
                Err(RequestError::Io(std::io::Error::from_raw_os_error(-res)))
            }
            Work::Flush => Ok(0),
            Work::Transfer { .. } if (res == -libc::EAGAIN || res == -libc::EINTR) => {
                slot.retries += 1;
                if slot.retries <= MAX_RETRIES {
                    self.push(i);
                    return None;
                }
                Err(RequestError::Io(std::io::Error::from_raw_os_error(-res)))
            }
            Work::Transfer { .. } if res < 0 => {
                Err(RequestError::Io(std::io::Error::from_raw_os_error(-res)))
            }
            Work::Transfer {
                write,
                iovs,
                first,
                offset,
                left,
                len,
                ..
            } => match u32::try_from(res).ok().filter(|&n| n > 0 && n <= *left) {
                None => Err(RequestError::Io(std::io::Error::new(
                    std::io::ErrorKind::UnexpectedEof,
                    "the disk image ended early",
                ))),
                Some(n) if n == *left => Ok(if *write { 0 } else { *len }),
                Some(n) => {
                    *left -= n;
                    *offset += u64::from(n);
                    *first += request::advance(&mut iovs[*first..], n as usize);
                    self.push(i);
                    return None;
                }
            },
        };
        let (head, status) = self.release(i)?;
        Some((head, request::finish(mem, status, result)))
    }

    /// Empties slot `i` (its iovec vector kept for reuse); returns the
    /// request's head and status address, `None` for a slot that is free or
    /// user data that is not a slot.
    fn release(&mut self, i: u16) -> Option<(u16, GuestAddress)> {
        let slot = self.slots.get_mut(usize::from(i))?.take()?;
        self.free.push(i);
        if let Work::Transfer { mut iovs, .. } = slot.work {
            iovs.clear();
            self.spare.push(iovs);
        }
        Some((slot.head, slot.status))
    }

    /// Waits until no request is in flight, dropping their results (the
    /// queue is being reset: the guest learns nothing of them).
    pub fn drain(&mut self) {
        if self.in_flight() > 0 {
            warn_limited!(
                "virtio-blk: reset with {} requests in flight; waiting for them",
                self.in_flight()
            );
        }
        while self.in_flight() > 0 {
            match self.ring.submit_and_wait(1) {
                Ok(_) => {}
                Err(e) if e.raw_os_error() == Some(libc::EINTR) => continue,
                Err(e) => {
                    tracing::error!("virtio-blk: waiting for requests in flight failed: {e}");
                    return;
                }
            }
            self.unsubmitted = false;
            let done: Vec<u64> = self.ring.completion().map(|c| c.user_data()).collect();
            for data in done {
                if let Ok(i) = u16::try_from(data) {
                    self.release(i);
                }
            }
        }
    }
}

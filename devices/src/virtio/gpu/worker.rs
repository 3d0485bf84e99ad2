//! The virtio-gpu worker: rutabaga (cross-domain only) behind the control
//! queue, the blob mappings of the host-visible window, and the fences.
//!
//! A command is read from its chain (bounded), decoded with checked lengths
//! and answered in the chain's writable part. A fenced command's answer is
//! held back (its descriptor "parked") until rutabaga reports the fence —
//! ring-1 fences of a cross-domain context complete only when the host sent
//! something — while later commands keep being served: used entries complete
//! out of order. rutabaga's fence callback only queues the fence and
//! signals an eventfd; this thread retires parked descriptors.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::mem::ManuallyDrop;
use std::os::fd::AsRawFd;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};

use rutabaga_gfx::{
    ResourceCreateBlob, Rutabaga, RutabagaBuilder, RutabagaFence, RutabagaFenceHandler,
    RutabagaIovec, RutabagaPath, RUTABAGA_CAPSET_CROSS_DOMAIN, RUTABAGA_PATH_TYPE_WAYLAND,
};
use virtio_queue::{Queue, QueueOwnedT, QueueT};
use vm_memory::{Bytes, GuestAddress, GuestMemory as _};
use vmm_sys_util::epoll::{ControlOperation, Epoll, EpollEvent, EventSet};
use vmm_sys_util::eventfd::EventFd;

use super::guard::ContextGuard;
use super::protocol::*;
use super::ShmPlacement;
use crate::virtio::{queue_served, ActiveQueue, Interrupt, VIRTIO_F_RING_EVENT_IDX};
use crate::{warn_limited, GuestMemory};

/// Largest command accepted (a cross-domain command's size is a u16).
pub const MAX_CMD: usize = 128 * 1024;
/// Most descriptors in one chain.
const MAX_DESCS: usize = 64;
/// Most backing entries of one blob.
pub const MAX_ENTRIES: u32 = 16 * 1024;
/// Most live contexts (each may hold a host connection and a thread).
pub const MAX_CONTEXTS: usize = 256;
/// Most live host blobs (each a host fd).
pub const MAX_HOST_BLOBS: usize = 4096;
/// Most live resources (blobs and 2D resources together).
pub const MAX_RESOURCES: usize = 64 * 1024;
const PAGE: u64 = 4096;

/// A fence timeline: a context's ring, or the device-global one.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
enum Timeline {
    Global,
    Ring(u32, u8),
}

impl Timeline {
    fn of(flags: u32, ctx_id: u32, ring_idx: u8) -> Self {
        if flags & FLAG_INFO_RING_IDX != 0 {
            Timeline::Ring(ctx_id, ring_idx)
        } else {
            Timeline::Global
        }
    }
}

/// A descriptor whose (already written) answer waits for its fence.
struct ParkedDesc {
    head: u16,
    len: u32,
    timeline: Timeline,
    fence_id: u64,
}

/// A blob mapped into the window.
struct Mapping {
    offset: u64,
    size: u64,
    handle: u32,
    /// Where the blob is mapped in this process (what the guest's window
    /// maps too).
    ptr: usize,
}

/// What handling one command produced.
struct Answer {
    bytes: Vec<u8>,
    /// The command's fence, when it must hold the answer back.
    fence: Option<RutabagaFence>,
}

type Completions = Arc<Mutex<Vec<RutabagaFence>>>;

/// The device state one worker thread owns: rutabaga and everything the
/// guest created through it.
pub struct Backend {
    /// Dropped by hand: only once no guest mapping of its memory is left.
    rutabaga: ManuallyDrop<Rutabaga>,
    mem: GuestMemory,
    shm: ShmPlacement,
    maps: BTreeMap<u32, Mapping>,
    local_2d: HashSet<u32>,
    resources: HashSet<u32>,
    /// Live contexts, each with its guard in front of rutabaga.
    contexts: HashMap<u32, ContextGuard>,
    /// Host blobs (host memory rutabaga allocated or the host sent), each
    /// with the bytes the guest had made real when it last unmapped it.
    /// Blobs are sparse and honest clients declare large ones (foot: a
    /// 512 MiB pool): what is capped, at half the guest's RAM, is what the
    /// guest has touched (resident pages of mapped blobs, and what unmapped
    /// ones kept), checked before each new blob and mapping.
    host_blobs: HashMap<u32, u64>,
    blob_cap: u64,
    /// The last fence created on each ring: a ring's fences must increase
    /// (rutabaga queues a job per ring-1 fence, released only by host data).
    ring_fences: HashMap<Timeline, u64>,
    completions: Completions,
    completed: HashMap<Timeline, u64>,
    parked: Vec<ParkedDesc>,
    fence_evt: EventFd,
    cmd: Vec<u8>,
}

/// Errors creating the backend.
#[derive(Debug, thiserror::Error)]
pub enum BackendError {
    /// rutabaga refused to start.
    #[error("rutabaga: {0}")]
    Rutabaga(String),
    /// An eventfd.
    #[error("eventfd: {0}")]
    Io(#[from] std::io::Error),
}

impl Backend {
    /// rutabaga with the cross-domain capset, its Wayland path `socket`.
    pub fn new(socket: PathBuf, mem: GuestMemory, shm: ShmPlacement) -> Result<Self, BackendError> {
        let completions: Completions = Arc::default();
        let fence_evt = EventFd::new(libc::EFD_NONBLOCK)?;
        let handler = {
            let completions = completions.clone();
            let evt = fence_evt.try_clone()?;
            // Runs on this thread (inside create_fence) or on a context's
            // thread: it only queues, it never waits for the worker.
            RutabagaFenceHandler::new(move |f: RutabagaFence| {
                completions
                    .lock()
                    .unwrap_or_else(|p| p.into_inner())
                    .push(f);
                let _ = evt.write(1);
            })
        };
        let rutabaga = RutabagaBuilder::new(1 << RUTABAGA_CAPSET_CROSS_DOMAIN, handler)
            .set_rutabaga_paths(Some(vec![RutabagaPath {
                path: socket,
                path_type: RUTABAGA_PATH_TYPE_WAYLAND,
            }]))
            .build()
            .map_err(|e| BackendError::Rutabaga(e.to_string()))?;
        // Half the guest's RAM: with all of its own RAM in use too, a guest
        // makes the host hold at most 1.5 times what it was given.
        let blob_cap = mem
            .iter()
            .map(vm_memory::GuestMemoryRegion::len)
            .sum::<u64>()
            / 2;
        Ok(Self {
            rutabaga: ManuallyDrop::new(rutabaga),
            mem,
            shm,
            maps: BTreeMap::new(),
            local_2d: HashSet::new(),
            resources: HashSet::new(),
            contexts: HashMap::new(),
            host_blobs: HashMap::new(),
            blob_cap,
            ring_fences: HashMap::new(),
            completions,
            completed: HashMap::new(),
            parked: Vec::new(),
            fence_evt,
            cmd: Vec::with_capacity(4096),
        })
    }

    /// Signalled when a fence completed: call [`retire_fences`](Self::retire_fences).
    pub fn fence_fd(&self) -> &EventFd {
        &self.fence_evt
    }

    /// Serves every available control-queue chain. Returns whether the
    /// guest is due an interrupt; an error means a broken queue.
    pub fn process_ctrl(&mut self, queue: &mut Queue) -> Result<bool, virtio_queue::Error> {
        let mem = self.mem.clone();
        let mut used = false;
        loop {
            queue.disable_notification(&mem)?;
            while let Some(chain) = queue.iter(&mem)?.next() {
                let head = chain.head_index();
                if self.parked.iter().any(|p| p.head == head) {
                    // Made available again while its answer waits: a
                    // broken driver (the used ring would get it twice).
                    return Err(virtio_queue::Error::InvalidChain);
                }
                let (readable, writable) = split_chain(&mem, chain, &mut self.cmd);
                let answer = match readable {
                    Some(()) => self.handle_guarded(),
                    None => Answer::error(&CtrlHdr::default(), resp::ERR_INVALID_PARAMETER),
                };
                let len = write_answer(&mem, &writable, &answer.bytes);
                match answer.fence {
                    Some(f) if !self.fence_done(&f) => self.parked.push(ParkedDesc {
                        head,
                        len,
                        timeline: Timeline::of(f.flags, f.ctx_id, f.ring_idx),
                        fence_id: f.fence_id,
                    }),
                    _ => {
                        queue.add_used(&mem, head, len)?;
                        used = true;
                    }
                }
            }
            if !queue.enable_notification(&mem)? {
                break;
            }
        }
        // Fences that completed while serving (ring 0 and global ones
        // complete inside create_fence).
        used |= self.retire_fences(queue)?;
        Ok(used && queue.needs_notification(&mem)?)
    }

    /// Consumes cursor-queue chains (there is no cursor: nothing to draw).
    pub fn process_cursor(&mut self, queue: &mut Queue) -> Result<bool, virtio_queue::Error> {
        let mem = self.mem.clone();
        let mut used = false;
        while let Some(chain) = queue.iter(&mem)?.next() {
            queue.add_used(&mem, chain.head_index(), 0)?;
            used = true;
        }
        Ok(used && queue.needs_notification(&mem)?)
    }

    /// Takes the fences rutabaga completed and returns the parked answers
    /// they release. Returns whether any used entry was added.
    pub fn retire_fences(&mut self, queue: &mut Queue) -> Result<bool, virtio_queue::Error> {
        let _ = self.fence_evt.read();
        self.drain_completions();
        let mem = self.mem.clone();
        let mut used = false;
        let mut i = 0;
        while i < self.parked.len() {
            let p = &self.parked[i];
            if self
                .completed
                .get(&p.timeline)
                .is_some_and(|&c| c >= p.fence_id)
            {
                let p = self.parked.swap_remove(i);
                queue.add_used(&mem, p.head, p.len)?;
                used = true;
            } else {
                i += 1;
            }
        }
        Ok(used)
    }

    /// Answers held back, waiting for their fence.
    pub fn parked(&self) -> usize {
        self.parked.len()
    }

    fn drain_completions(&mut self) {
        let done = std::mem::take(&mut *self.completions.lock().unwrap_or_else(|p| p.into_inner()));
        for f in done {
            let c = self
                .completed
                .entry(Timeline::of(f.flags, f.ctx_id, f.ring_idx))
                .or_insert(0);
            *c = (*c).max(f.fence_id);
        }
    }

    fn fence_done(&mut self, f: &RutabagaFence) -> bool {
        self.drain_completions();
        self.completed
            .get(&Timeline::of(f.flags, f.ctx_id, f.ring_idx))
            .is_some_and(|&c| c >= f.fence_id)
    }

    /// [`handle`](Self::handle), with a panic inside rutabaga turned into an
    /// error answer (the guest sees ERR_UNSPEC; the VMM keeps running).
    fn handle_guarded(&mut self) -> Answer {
        let hdr = CtrlHdr::decode(&self.cmd).unwrap_or_default();
        match std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| self.handle())) {
            Ok(a) => a,
            Err(_) => {
                warn_limited!("virtio-gpu: command {:#x} panicked in rutabaga", hdr.ty);
                Answer::error(&hdr, resp::ERR_UNSPEC)
            }
        }
    }

    /// Handles the command in `self.cmd`.
    fn handle(&mut self) -> Answer {
        let Some(hdr) = CtrlHdr::decode(&self.cmd) else {
            return Answer::error(&CtrlHdr::default(), resp::ERR_INVALID_PARAMETER);
        };
        let r = match hdr.ty {
            cmd::GET_DISPLAY_INFO => {
                return Answer::ok(&hdr, resp::OK_DISPLAY_INFO, &display_info())
            }
            cmd::GET_CAPSET_INFO => return self.capset_info(&hdr),
            cmd::GET_CAPSET => return self.capset(&hdr),
            cmd::RESOURCE_CREATE_2D => self.create_2d(),
            cmd::RESOURCE_UNREF => self.unref(),
            cmd::SET_SCANOUT
            | cmd::RESOURCE_FLUSH
            | cmd::TRANSFER_TO_HOST_2D
            | cmd::RESOURCE_ATTACH_BACKING
            | cmd::RESOURCE_DETACH_BACKING
            | cmd::SET_SCANOUT_BLOB => self.local_2d_cmd(hdr.ty),
            cmd::CTX_CREATE => self.ctx_create(&hdr),
            cmd::CTX_DESTROY => self.ctx_destroy(&hdr),
            cmd::CTX_ATTACH_RESOURCE | cmd::CTX_DETACH_RESOURCE => self.ctx_resource(&hdr),
            cmd::RESOURCE_CREATE_BLOB => self.create_blob(&hdr),
            cmd::SUBMIT_3D => self.submit(&hdr),
            cmd::RESOURCE_MAP_BLOB => return self.map_blob(&hdr),
            cmd::RESOURCE_UNMAP_BLOB => self.unmap_blob(),
            other => {
                warn_limited!("virtio-gpu: unsupported command {other:#x}");
                Err(resp::ERR_UNSPEC)
            }
        };
        match r {
            Ok(()) => self.fenced(&hdr, Answer::ok(&hdr, resp::OK_NODATA, &[])),
            Err(code) => Answer::error(&hdr, code),
        }
    }

    /// Attaches the command's fence to a successful answer.
    fn fenced(&mut self, hdr: &CtrlHdr, mut a: Answer) -> Answer {
        if hdr.flags & FLAG_FENCE == 0 {
            return a;
        }
        let f = RutabagaFence {
            flags: hdr.flags & (FLAG_FENCE | FLAG_INFO_RING_IDX),
            fence_id: hdr.fence_id,
            ctx_id: hdr.ctx_id,
            ring_idx: hdr.ring_idx,
        };
        let timeline = Timeline::of(f.flags, f.ctx_id, f.ring_idx);
        if let Timeline::Ring(..) = timeline {
            let stale = self
                .ring_fences
                .get(&timeline)
                .is_some_and(|&last| f.fence_id <= last);
            if stale || !self.contexts.contains_key(&f.ctx_id) {
                warn_limited!("virtio-gpu: fence {} refused on its ring", f.fence_id);
                return Answer::error(hdr, resp::ERR_INVALID_PARAMETER);
            }
        }
        match self.rutabaga.create_fence(f) {
            Ok(()) => {
                if let Timeline::Ring(..) = timeline {
                    self.ring_fences.insert(timeline, f.fence_id);
                }
                a.fence = Some(f);
                a
            }
            Err(e) => {
                warn_limited!("virtio-gpu: fence {} refused: {e}", hdr.fence_id);
                Answer::error(hdr, resp::ERR_UNSPEC)
            }
        }
    }

    fn capset_info(&mut self, hdr: &CtrlHdr) -> Answer {
        let Some(index) = le32(&self.cmd, 24) else {
            return Answer::error(hdr, resp::ERR_INVALID_PARAMETER);
        };
        match self.rutabaga.get_capset_info(index) {
            Ok((id, version, size)) => {
                let mut b = [0u8; 16];
                b[0..4].copy_from_slice(&id.to_le_bytes());
                b[4..8].copy_from_slice(&version.to_le_bytes());
                b[8..12].copy_from_slice(&size.to_le_bytes());
                Answer::ok(hdr, resp::OK_CAPSET_INFO, &b)
            }
            Err(_) => Answer::error(hdr, resp::ERR_INVALID_PARAMETER),
        }
    }

    fn capset(&mut self, hdr: &CtrlHdr) -> Answer {
        let (Some(id), Some(version)) = (le32(&self.cmd, 24), le32(&self.cmd, 28)) else {
            return Answer::error(hdr, resp::ERR_INVALID_PARAMETER);
        };
        // rutabaga falls back to its default component for unknown ids: only
        // a capset it lists (at a version it supports) is answered.
        let listed = (0..self.rutabaga.get_num_capsets()).any(|i| {
            self.rutabaga
                .get_capset_info(i)
                .is_ok_and(|(cid, max, _)| cid == id && version <= max)
        });
        if !listed {
            return Answer::error(hdr, resp::ERR_INVALID_PARAMETER);
        }
        match self.rutabaga.get_capset(id, version) {
            Ok(data) => Answer::ok(hdr, resp::OK_CAPSET, &data),
            Err(_) => Answer::error(hdr, resp::ERR_INVALID_PARAMETER),
        }
    }

    fn new_resource_id(&self, id: u32) -> Result<(), u32> {
        if id == 0 || self.resources.contains(&id) || self.local_2d.contains(&id) {
            return Err(resp::ERR_INVALID_RESOURCE_ID);
        }
        if self.resources.len() + self.local_2d.len() >= MAX_RESOURCES {
            return Err(resp::ERR_OUT_OF_MEMORY);
        }
        Ok(())
    }

    /// A 2D resource: remembered (so UNREF and the 2D commands succeed), never
    /// backed: there is no scanout to show it on.
    fn create_2d(&mut self) -> Result<(), u32> {
        let id = le32(&self.cmd, 24).ok_or(resp::ERR_INVALID_PARAMETER)?;
        le32(&self.cmd, 36).ok_or(resp::ERR_INVALID_PARAMETER)?;
        self.new_resource_id(id)?;
        self.local_2d.insert(id);
        Ok(())
    }

    fn local_2d_cmd(&self, ty: u32) -> Result<(), u32> {
        // Sizes of the fixed parts (header included).
        let need = match ty {
            cmd::SET_SCANOUT => 48,
            cmd::RESOURCE_FLUSH => 48,
            cmd::TRANSFER_TO_HOST_2D => 56,
            cmd::RESOURCE_ATTACH_BACKING | cmd::RESOURCE_DETACH_BACKING => 32,
            _ => 96,
        };
        if self.cmd.len() < need {
            return Err(resp::ERR_INVALID_PARAMETER);
        }
        if ty == cmd::SET_SCANOUT || ty == cmd::SET_SCANOUT_BLOB {
            let scanout = le32(&self.cmd, 40).ok_or(resp::ERR_INVALID_PARAMETER)?;
            if scanout != 0 {
                return Err(resp::ERR_INVALID_SCANOUT_ID);
            }
        }
        Ok(())
    }

    fn unref(&mut self) -> Result<(), u32> {
        let id = le32(&self.cmd, 24).ok_or(resp::ERR_INVALID_PARAMETER)?;
        if self.local_2d.remove(&id) {
            return Ok(());
        }
        if !self.resources.contains(&id) {
            return Err(resp::ERR_INVALID_RESOURCE_ID);
        }
        // Never free memory the guest can still reach: the slot goes first.
        self.remove_mapping(id)?;
        self.resources.remove(&id);
        self.host_blobs.remove(&id);
        self.rutabaga
            .unref_resource(id)
            .map_err(|_| resp::ERR_INVALID_RESOURCE_ID)
    }

    fn ctx_create(&mut self, hdr: &CtrlHdr) -> Result<(), u32> {
        let nlen = le32(&self.cmd, 24).ok_or(resp::ERR_INVALID_PARAMETER)?;
        let init = le32(&self.cmd, 28).ok_or(resp::ERR_INVALID_PARAMETER)?;
        if hdr.ctx_id == 0 || self.contexts.contains_key(&hdr.ctx_id) {
            return Err(resp::ERR_INVALID_CONTEXT_ID);
        }
        if self.contexts.len() >= MAX_CONTEXTS {
            return Err(resp::ERR_OUT_OF_MEMORY);
        }
        let n = (nlen as usize).min(64);
        let name = self
            .cmd
            .get(32..32 + n)
            .and_then(|b| std::str::from_utf8(b).ok())
            .map(|s| s.trim_end_matches('\0').to_string());
        self.rutabaga
            .create_context(hdr.ctx_id, init, name.as_deref())
            .map_err(|e| {
                warn_limited!("virtio-gpu: context {} not created: {e}", hdr.ctx_id);
                resp::ERR_UNSPEC
            })?;
        self.contexts.insert(hdr.ctx_id, ContextGuard::default());
        Ok(())
    }

    fn ctx_destroy(&mut self, hdr: &CtrlHdr) -> Result<(), u32> {
        if self.contexts.remove(&hdr.ctx_id).is_none() {
            return Err(resp::ERR_INVALID_CONTEXT_ID);
        }
        self.ring_fences
            .retain(|t, _| !matches!(t, Timeline::Ring(c, _) if *c == hdr.ctx_id));
        let r = self.rutabaga.destroy_context(hdr.ctx_id);
        // Whatever the context's fences were waiting for will not come:
        // release its parked answers now.
        let ctx = hdr.ctx_id;
        for p in &self.parked {
            if let Timeline::Ring(c, _) = p.timeline {
                if c == ctx {
                    self.completed
                        .entry(p.timeline)
                        .and_modify(|v| *v = (*v).max(p.fence_id))
                        .or_insert(p.fence_id);
                }
            }
        }
        let _ = self.fence_evt.write(1);
        r.map_err(|_| resp::ERR_INVALID_CONTEXT_ID)
    }

    fn ctx_resource(&mut self, hdr: &CtrlHdr) -> Result<(), u32> {
        let id = le32(&self.cmd, 24).ok_or(resp::ERR_INVALID_PARAMETER)?;
        if !self.contexts.contains_key(&hdr.ctx_id) {
            return Err(resp::ERR_INVALID_CONTEXT_ID);
        }
        if self.local_2d.contains(&id) {
            return Ok(());
        }
        if !self.resources.contains(&id) {
            return Err(resp::ERR_INVALID_RESOURCE_ID);
        }
        let r = if hdr.ty == cmd::CTX_ATTACH_RESOURCE {
            self.rutabaga.context_attach_resource(hdr.ctx_id, id)
        } else {
            self.rutabaga.context_detach_resource(hdr.ctx_id, id)
        };
        r.map_err(|_| resp::ERR_INVALID_RESOURCE_ID)
    }

    /// The host addresses of a blob's guest backing, each entry checked to
    /// lie inside one guest memory region.
    fn iovecs(&self, nr: u32) -> Result<Vec<RutabagaIovec>, u32> {
        if nr > MAX_ENTRIES {
            return Err(resp::ERR_INVALID_PARAMETER);
        }
        let mut v = Vec::with_capacity(nr as usize);
        for i in 0..nr as usize {
            let off = CREATE_BLOB_SIZE + i * MEM_ENTRY_SIZE;
            let (addr, len) = mem_entry(&self.cmd, off).ok_or(resp::ERR_INVALID_PARAMETER)?;
            let slice = self
                .mem
                .get_slice(GuestAddress(addr), len as usize)
                .map_err(|_| resp::ERR_INVALID_PARAMETER)?;
            v.push(RutabagaIovec {
                base: slice.ptr_guard_mut().as_ptr().cast(),
                len: len as usize,
            });
        }
        Ok(v)
    }

    fn create_blob(&mut self, hdr: &CtrlHdr) -> Result<(), u32> {
        let b = CreateBlob::decode(&self.cmd).ok_or(resp::ERR_INVALID_PARAMETER)?;
        self.new_resource_id(b.resource_id)?;
        if b.size == 0 || b.size > self.shm.len {
            return Err(resp::ERR_INVALID_PARAMETER);
        }
        let iovecs = match b.blob_mem {
            1 | 3 => Some(self.iovecs(b.nr_entries)?),
            2 if b.nr_entries == 0 => None,
            _ => return Err(resp::ERR_INVALID_PARAMETER),
        };
        if let Some(v) = &iovecs {
            let total = v.iter().try_fold(0u64, |t, i| t.checked_add(i.len as u64));
            if total.is_none_or(|t| t < b.size) {
                return Err(resp::ERR_INVALID_PARAMETER);
            }
        } else if self.host_blobs.len() >= MAX_HOST_BLOBS || self.blobs_full() {
            return Err(resp::ERR_OUT_OF_MEMORY);
        }
        let host = iovecs.is_none();
        let create = ResourceCreateBlob {
            blob_mem: b.blob_mem,
            blob_flags: b.blob_flags,
            blob_id: b.blob_id,
            size: b.size,
        };
        self.rutabaga
            .resource_create_blob(hdr.ctx_id, b.resource_id, create, iovecs, None)
            .map_err(|e| {
                warn_limited!("virtio-gpu: blob {} not created: {e}", b.resource_id);
                resp::ERR_UNSPEC
            })?;
        self.resources.insert(b.resource_id);
        if host {
            self.host_blobs.insert(b.resource_id, 0);
        }
        Ok(())
    }

    fn submit(&mut self, hdr: &CtrlHdr) -> Result<(), u32> {
        let size = le32(&self.cmd, 24).ok_or(resp::ERR_INVALID_PARAMETER)? as usize;
        let guard = self
            .contexts
            .get_mut(&hdr.ctx_id)
            .ok_or(resp::ERR_INVALID_CONTEXT_ID)?;
        let end = 32usize
            .checked_add(size)
            .ok_or(resp::ERR_INVALID_PARAMETER)?;
        let data = self
            .cmd
            .get_mut(32..end)
            .ok_or(resp::ERR_INVALID_PARAMETER)?;
        let checked = guard.check(data).map_err(|why| {
            warn_limited!("virtio-gpu: cross-domain submit refused: {why}");
            resp::ERR_INVALID_PARAMETER
        })?;
        let r = self.rutabaga.submit_command(hdr.ctx_id, data, &[]);
        guard.submitted(&checked, r.is_ok());
        r.map_err(|e| {
            warn_limited!("virtio-gpu: submit to context {} failed: {e}", hdr.ctx_id);
            resp::ERR_INVALID_PARAMETER
        })
    }

    fn map_blob(&mut self, hdr: &CtrlHdr) -> Answer {
        match self.try_map_blob() {
            Ok(info) => {
                let mut b = [0u8; 8];
                b[0..4].copy_from_slice(&info.to_le_bytes());
                let a = Answer::ok(hdr, resp::OK_MAP_INFO, &b);
                self.fenced(hdr, a)
            }
            Err(code) => Answer::error(hdr, code),
        }
    }

    fn try_map_blob(&mut self) -> Result<u32, u32> {
        let id = le32(&self.cmd, 24).ok_or(resp::ERR_INVALID_PARAMETER)?;
        let offset = le64(&self.cmd, 32).ok_or(resp::ERR_INVALID_PARAMETER)?;
        if !self.resources.contains(&id) {
            return Err(resp::ERR_INVALID_RESOURCE_ID);
        }
        if self.maps.contains_key(&id) || !offset.is_multiple_of(PAGE) {
            return Err(resp::ERR_INVALID_PARAMETER);
        }
        if self.host_blobs.contains_key(&id) && self.blobs_full() {
            return Err(resp::ERR_OUT_OF_MEMORY);
        }
        let info = self
            .rutabaga
            .map_info(id)
            .map_err(|_| resp::ERR_INVALID_PARAMETER)?;
        let m = self.rutabaga.map(id).map_err(|e| {
            warn_limited!("virtio-gpu: blob {id} cannot be mapped: {e}");
            resp::ERR_INVALID_PARAMETER
        })?;
        let fits = offset
            .checked_add(m.size)
            .is_some_and(|end| end <= self.shm.len);
        let overlaps = self
            .maps
            .values()
            .any(|o| offset < o.offset + o.size && o.offset < offset + m.size);
        if m.size == 0 || !m.size.is_multiple_of(PAGE) || !fits || overlaps {
            let _ = self.rutabaga.unmap(id);
            return Err(resp::ERR_INVALID_PARAMETER);
        }
        let writable = info & MAP_ACCESS_WRITE != 0;
        let gpa = self.shm.base + offset;
        match self.shm.mapper.map(gpa, m.ptr, m.size, writable) {
            Ok(handle) => {
                self.maps.insert(
                    id,
                    Mapping {
                        offset,
                        size: m.size,
                        handle,
                        ptr: m.ptr as usize,
                    },
                );
                Ok(info & 0x0f)
            }
            Err(e) => {
                warn_limited!("virtio-gpu: blob {id}: guest mapping failed: {e}");
                let _ = self.rutabaga.unmap(id);
                Err(resp::ERR_OUT_OF_MEMORY)
            }
        }
    }

    /// Whether the guest has made as much host blob memory real as it may:
    /// what unmapped blobs kept plus what mapped ones hold now.
    fn blobs_full(&self) -> bool {
        let mut total = 0u64;
        for (id, kept) in &self.host_blobs {
            total += match self.maps.get(id) {
                Some(m) => resident(m.ptr, m.size),
                None => *kept,
            };
        }
        let full = total >= self.blob_cap;
        if full {
            warn_limited!("virtio-gpu: host blobs hold half the guest's memory; refused");
        }
        full
    }

    /// Removes the guest mapping of `id` (if any), then rutabaga's.
    fn remove_mapping(&mut self, id: u32) -> Result<(), u32> {
        let Some(m) = self.maps.get(&id) else {
            return Ok(());
        };
        // What the guest made real stays with the blob once unmapped.
        if let Some(kept) = self.host_blobs.get_mut(&id) {
            *kept = (*kept).max(resident(m.ptr, m.size));
        }
        if let Err(e) = self.shm.mapper.unmap(m.handle) {
            // The guest can still reach the memory: keep it alive.
            warn_limited!("virtio-gpu: blob {id}: guest unmapping failed: {e}");
            return Err(resp::ERR_UNSPEC);
        }
        self.maps.remove(&id);
        let _ = self.rutabaga.unmap(id);
        Ok(())
    }

    fn unmap_blob(&mut self) -> Result<(), u32> {
        let id = le32(&self.cmd, 24).ok_or(resp::ERR_INVALID_PARAMETER)?;
        if !self.maps.contains_key(&id) {
            return Err(resp::ERR_INVALID_RESOURCE_ID);
        }
        self.remove_mapping(id)
    }
}

impl Drop for Backend {
    fn drop(&mut self) {
        // Slots first: rutabaga's memory goes with it.
        let mut leak = false;
        for (id, m) in std::mem::take(&mut self.maps) {
            if let Err(e) = self.shm.mapper.unmap(m.handle) {
                tracing::error!("virtio-gpu: blob {id} still mapped at reset: {e}");
                leak = true;
            }
        }
        if !leak {
            // SAFETY: dropped once, here, and never used again; no guest
            // mapping of its memory is left.
            unsafe { ManuallyDrop::drop(&mut self.rutabaga) };
        }
        // Otherwise rutabaga is leaked rather than freeing memory the guest
        // can still reach.
    }
}

impl Answer {
    fn ok(hdr: &CtrlHdr, ty: u32, body: &[u8]) -> Self {
        let mut bytes = hdr.response(ty).encode().to_vec();
        bytes.extend_from_slice(body);
        Answer { bytes, fence: None }
    }

    fn error(hdr: &CtrlHdr, ty: u32) -> Self {
        Answer {
            bytes: hdr.response(ty).encode().to_vec(),
            fence: None,
        }
    }
}

/// Bytes of `len` at `ptr` (a mapping of a blob) that are resident
/// (`mincore`): for a shared-memory blob, the pages anyone made real.
fn resident(ptr: usize, len: u64) -> u64 {
    let pages = len.div_ceil(PAGE) as usize;
    let mut v = vec![0u8; pages];
    // SAFETY: `ptr` is the start of a live mapping of `len` bytes (held in
    // `maps` until unmapped); mincore writes one byte per page into `v`.
    let r = unsafe { libc::mincore(ptr as *mut libc::c_void, len as usize, v.as_mut_ptr()) };
    if r != 0 {
        // Unknown: counted as all of it.
        return len;
    }
    v.iter().filter(|&&b| b & 1 != 0).count() as u64 * PAGE
}

/// `virtio_gpu_resp_display_info` body: scanout 0 present but disabled.
fn display_info() -> Vec<u8> {
    let mut b = vec![0u8; DISPLAY_INFO_SIZE - HDR_SIZE];
    b[8..12].copy_from_slice(&1280u32.to_le_bytes());
    b[12..16].copy_from_slice(&720u32.to_le_bytes());
    b
}

/// Reads the device-readable part of `chain` into `cmd` (at most
/// [`MAX_CMD`] bytes) and returns the writable descriptors. `None` for a
/// chain that is too long or points outside guest memory.
fn split_chain<M: std::ops::Deref<Target = GuestMemory>>(
    mem: &GuestMemory,
    chain: virtio_queue::DescriptorChain<M>,
    cmd: &mut Vec<u8>,
) -> (Option<()>, Vec<(GuestAddress, u32)>) {
    cmd.clear();
    let mut writable = Vec::new();
    let mut ok = true;
    for (n, d) in chain.enumerate() {
        if n >= MAX_DESCS {
            ok = false;
            break;
        }
        if d.is_write_only() {
            writable.push((d.addr(), d.len()));
            continue;
        }
        if !writable.is_empty() {
            // A readable descriptor after a writable one breaks the spec.
            ok = false;
            continue;
        }
        let len = d.len() as usize;
        let start = cmd.len();
        if start + len > MAX_CMD {
            ok = false;
            continue;
        }
        cmd.resize(start + len, 0);
        if mem.read_slice(&mut cmd[start..], d.addr()).is_err() {
            ok = false;
        }
    }
    (ok.then_some(()), writable)
}

/// Writes `bytes` across the writable descriptors; returns how many fit.
fn write_answer(mem: &GuestMemory, writable: &[(GuestAddress, u32)], bytes: &[u8]) -> u32 {
    let mut done = 0usize;
    for &(addr, len) in writable {
        if done == bytes.len() {
            break;
        }
        let n = (len as usize).min(bytes.len() - done);
        if mem.write_slice(&bytes[done..done + n], addr).is_err() {
            break;
        }
        done += n;
    }
    done as u32
}

/// The worker's serving job: built on activation, run on the worker thread.
pub(super) struct Job {
    socket: PathBuf,
    shm: ShmPlacement,
    mem: GuestMemory,
    interrupt: Arc<Interrupt>,
    queues: Vec<ActiveQueue>,
    epoll: Epoll,
}

const CTRL: u64 = 0;
const CURSOR: u64 = 1;
const KILL: u64 = 2;
const FENCE: u64 = 3;

impl Job {
    pub(super) fn new(
        socket: PathBuf,
        shm: ShmPlacement,
        mem: GuestMemory,
        interrupt: Arc<Interrupt>,
        acked_features: u64,
        mut queues: Vec<ActiveQueue>,
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
            EpollEvent::new(EventSet::IN, KILL),
        )?;
        Ok(Self {
            socket,
            shm,
            mem,
            interrupt,
            queues,
            epoll,
        })
    }

    /// Serves until killed; rutabaga lives and dies on this thread.
    pub(super) fn run(mut self) {
        let mut backend =
            match Backend::new(self.socket.clone(), self.mem.clone(), self.shm.clone()) {
                Ok(b) => b,
                Err(e) => {
                    tracing::error!("virtio-gpu: {e}; device needs reset");
                    let _ = self.interrupt.set_needs_reset();
                    return;
                }
            };
        if let Err(e) = self.epoll.ctl(
            ControlOperation::Add,
            backend.fence_fd().as_raw_fd(),
            EpollEvent::new(EventSet::IN, FENCE),
        ) {
            tracing::error!("virtio-gpu: epoll: {e}; device needs reset");
            let _ = self.interrupt.set_needs_reset();
            return;
        }
        let mut events = [EpollEvent::default(); 4];
        let mut broken = false;
        loop {
            let n = match self.epoll.wait(-1, &mut events) {
                Ok(n) => n,
                Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
                Err(e) => {
                    tracing::error!("virtio-gpu: epoll failed: {e}");
                    let _ = self.interrupt.set_needs_reset();
                    return;
                }
            };
            for ev in &events[..n] {
                let token = ev.data();
                if token == KILL {
                    return;
                }
                if let Some(aq) = self.queues.get(token as usize) {
                    let _ = aq.notify.read();
                }
                if broken {
                    let _ = backend.fence_fd().read();
                    continue;
                }
                let outcome = match token {
                    CTRL => backend.process_ctrl(&mut self.queues[0].queue),
                    CURSOR => backend.process_cursor(&mut self.queues[1].queue),
                    _ => {
                        let q = &mut self.queues[0].queue;
                        backend
                            .retire_fences(q)
                            .and_then(|u| Ok(u && q.needs_notification(&self.mem)?))
                    }
                };
                broken = !queue_served("virtio-gpu", outcome, &self.interrupt);
            }
        }
    }
}

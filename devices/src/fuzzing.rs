//! Entry points of the device fuzz targets (`fuzz/`), shared with the tests
//! that replay their corpora, so both run exactly the same code. Each takes
//! arbitrary bytes and must return without panicking.

use std::sync::{Arc, Mutex, OnceLock, PoisonError};

use virtio_queue::{Queue, QueueT};
use vm_memory::{Bytes, GuestAddress, GuestMemoryMmap};
use vmm_sys_util::eventfd::EventFd;

use crate::bus::BusDevice;
use crate::virtio::block::uring::Uring;
use crate::virtio::block::{process_queue, Aio, Disk, DiskConfig, Scratch};
use crate::virtio::mmio::MmioTransport;
use crate::virtio::{ActivateError, ActiveQueue, Interrupt, VirtioDevice};
use crate::GuestMemory;

/// Guest memory of the harnesses.
const MEM: usize = 0x2_0000;

fn mem() -> Option<GuestMemory> {
    GuestMemoryMmap::from_ranges(&[(GuestAddress(0), MEM)]).ok()
}

/// A device with two queues and a 16-byte config space that accepts any
/// activation with queues: the transport is what is under test.
struct Dummy {
    config: [u8; 16],
    sizes: [u16; 2],
    fail: bool,
}

impl VirtioDevice for Dummy {
    fn device_type(&self) -> u32 {
        0x7fff
    }
    fn queue_max_sizes(&self) -> &[u16] {
        &self.sizes
    }
    fn features(&self) -> u64 {
        0x0000_00ff_0000_00ff
    }
    fn read_config(&self, offset: u64, data: &mut [u8]) {
        crate::virtio::read_config_bytes(&self.config, offset, data);
    }
    fn write_config(&mut self, offset: u64, data: &[u8]) {
        if let Some(dst) = usize::try_from(offset)
            .ok()
            .and_then(|o| self.config.get_mut(o..o.checked_add(data.len())?))
        {
            dst.copy_from_slice(data);
        }
    }
    fn activate(
        &mut self,
        _mem: GuestMemory,
        _interrupt: Arc<Interrupt>,
        _acked: u64,
        queues: Vec<ActiveQueue>,
    ) -> Result<(), ActivateError> {
        if self.fail || queues.is_empty() {
            return Err(ActivateError::BadQueues("refused".into()));
        }
        Ok(())
    }
    fn reset(&mut self) -> bool {
        true
    }
}

/// virtio-mmio register accesses. Input: records of 7 bytes — `op` (bit 0:
/// write, bits 1–2: access size 1/2/4/8), `offset: u16 le`, `value: u32 le`.
/// The first byte decides whether the device refuses activation. Guest
/// memory (whose addresses the driver may program) holds the input itself.
/// Returns the device status register at the end.
pub fn mmio(data: &[u8]) -> u32 {
    let Some(m) = mem() else { return 0 };
    let Ok(irq) = EventFd::new(libc::EFD_NONBLOCK) else {
        return 0;
    };
    let fail = data.first().is_some_and(|b| b & 0x80 != 0);
    let dev = Dummy {
        config: [0x5a; 16],
        sizes: [16, 256],
        fail,
    };
    let Ok(mut t) = MmioTransport::new(Box::new(dev), m.clone(), irq) else {
        return 0;
    };
    let _ = m.write_slice(&data[..data.len().min(MEM)], GuestAddress(0));
    for r in data.get(1..).unwrap_or_default().chunks_exact(7) {
        let size = 1usize << ((r[0] >> 1) & 3);
        let offset = u64::from(u16::from_le_bytes([r[1], r[2]]));
        let mut v = [0u8; 8];
        v[..4].copy_from_slice(&r[3..7]);
        if r[0] & 1 == 1 {
            t.write(offset, &v[..size]);
        } else {
            t.read(offset, &mut v[..size]);
        }
    }
    t.status()
}

/// A 64-sector image in a temporary file, for [`blk_queue`].
fn image(aio: Aio) -> Option<(tempfile::NamedTempFile, Disk)> {
    let f = tempfile::NamedTempFile::new().ok()?;
    f.as_file().set_len(64 * 512).ok()?;
    let mut cfg = DiskConfig::new(f.path());
    cfg.aio = aio;
    let d = Disk::open(&cfg).ok()?;
    Some((f, d))
}

/// The synchronous engine's disk.
fn disk() -> Option<&'static Disk> {
    static D: OnceLock<Option<(tempfile::NamedTempFile, Disk)>> = OnceLock::new();
    D.get_or_init(|| image(Aio::Sync)).as_ref().map(|(_, d)| d)
}

/// The io_uring engine's disk (an image of its own) and ring.
type UringDisk = (tempfile::NamedTempFile, Disk, Uring);

fn uring_disk() -> Option<&'static Mutex<UringDisk>> {
    static D: OnceLock<Option<Mutex<UringDisk>>> = OnceLock::new();
    D.get_or_init(|| {
        let (f, d) = image(Aio::IoUring)?;
        let u = Uring::new(&d).ok()?;
        Some(Mutex::new((f, d, u)))
    })
    .as_ref()
}

/// Where [`blk_queue`] puts the split queue's rings.
pub const BLK_DESC: u64 = 0x0;
/// Available ring.
pub const BLK_AVAIL: u64 = 0x1000;
/// Used ring.
pub const BLK_USED: u64 = 0x2000;

/// virtio-blk requests: the input is guest memory from address 0 — a
/// descriptor table at [`BLK_DESC`], the available ring at [`BLK_AVAIL`],
/// headers and buffers anywhere — served from a 16-entry queue until it is
/// empty or broken, once by the synchronous engine and once (on fresh
/// memory and an image of its own) by the io_uring engine. Returns each
/// one's used index.
pub fn blk_queue(data: &[u8]) -> (u16, u16) {
    (blk_queue_sync(data), blk_queue_uring(data))
}

/// The input in fresh guest memory, and its queue.
fn blk_setup(data: &[u8]) -> Option<(GuestMemory, Queue)> {
    let m = mem()?;
    let _ = m.write_slice(&data[..data.len().min(MEM)], GuestAddress(0));
    let mut q = queue_at(BLK_DESC, 16)?;
    q.set_event_idx(data.first().is_some_and(|b| b & 1 == 1));
    Some((m, q))
}

fn blk_queue_sync(data: &[u8]) -> u16 {
    let (Some((m, mut q)), Some(d)) = (blk_setup(data), disk()) else {
        return 0;
    };
    let mut scratch = Scratch::default();
    // At most a few passes: a broken queue returns an error, an empty one false.
    for _ in 0..4 {
        if !matches!(process_queue(d, &m, &mut q, &mut scratch), Ok(true)) {
            break;
        }
    }
    m.read_obj::<u16>(GuestAddress(BLK_USED + 2)).unwrap_or(0)
}

fn blk_queue_uring(data: &[u8]) -> u16 {
    let (Some((m, mut q)), Some(u)) = (blk_setup(data), uring_disk()) else {
        return 0;
    };
    let mut guard = u.lock().unwrap_or_else(PoisonError::into_inner);
    let (_, d, ring) = &mut *guard;
    for _ in 0..8 {
        match ring.serve(d, &m, &mut q) {
            Err(_) => break,
            Ok(false) if ring.in_flight() == 0 => break,
            Ok(_) => {}
        }
        if ring.in_flight() > 0
            && !crate::wait_readable(ring.completions(), Some(std::time::Duration::from_secs(5)))
        {
            break;
        }
    }
    // Nothing may still write into this input's memory once it is gone.
    ring.drain();
    m.read_obj::<u16>(GuestAddress(BLK_USED + 2)).unwrap_or(0)
}

/// Where [`vsock_queues`] puts the rx queue (the tx queue uses the
/// [`blk_queue`] layout).
pub const VSOCK_RX_DESC: u64 = 0x4000;

fn queue_at(desc: u64, size: u16) -> Option<Queue> {
    let mut q = Queue::new(size).ok()?;
    q.set_desc_table_address(Some(desc as u32), Some(0));
    q.set_avail_ring_address(Some((desc + 0x1000) as u32), Some(0));
    q.set_used_ring_address(Some((desc + 0x2000) as u32), Some(0));
    q.set_ready(true);
    Some(q)
}

/// Host ports [`vsock_queues`] listens on: a plain one and a framed one
/// (as the network's), so guest streams reach the data path; other ports
/// refuse.
pub const VSOCK_FUZZ_PORTS: [u32; 2] = [8, 1026];

/// The temporary directory of [`vsock_queues`] and its listeners.
struct VsockHost {
    dir: tempfile::TempDir,
    listeners: Vec<std::os::unix::net::UnixListener>,
}

fn vsock_host() -> Option<&'static VsockHost> {
    static HOST: OnceLock<Option<VsockHost>> = OnceLock::new();
    HOST.get_or_init(|| {
        let dir = tempfile::tempdir().ok()?;
        let mut listeners = Vec::new();
        for p in VSOCK_FUZZ_PORTS {
            let l = std::os::unix::net::UnixListener::bind(dir.path().join(format!("v.sock_{p}")))
                .ok()?;
            l.set_nonblocking(true).ok()?;
            listeners.push(l);
        }
        Some(VsockHost { dir, listeners })
    })
    .as_ref()
}

/// virtio-vsock packets: the input is guest memory with a tx queue (layout
/// of [`blk_queue`]) and an rx queue at [`VSOCK_RX_DESC`]. The muxer takes
/// the guest's packets (requests to host ports, with and without a
/// listener, data, credit updates, shutdowns, resets; port 1026 framed),
/// then answers into rx, twice over. Returns the used indexes (tx, rx).
pub fn vsock_queues(data: &[u8]) -> (u16, u16) {
    let Some(host) = vsock_host() else {
        return (0, 0);
    };
    let Some(m) = mem() else { return (0, 0) };
    let _ = m.write_slice(&data[..data.len().min(MEM)], GuestAddress(0));
    let Ok(mux) = crate::virtio::vsock::Muxer::new(3, host.dir.path().join("v.sock"), None, 0)
    else {
        return (0, 0);
    };
    let mut mux = mux.frame_ports(&VSOCK_FUZZ_PORTS[1..]);
    let (Some(mut tx), Some(mut rx)) = (queue_at(BLK_DESC, 16), queue_at(VSOCK_RX_DESC, 16)) else {
        return (0, 0);
    };
    for _ in 0..2 {
        if mux.process_tx(&m, &mut tx).is_err() || mux.fill_rx(&m, &mut rx).is_err() {
            break;
        }
    }
    // The streams of this run end here: their backlog must not fill up.
    for l in &host.listeners {
        while l.accept().is_ok() {}
    }
    let used = |at: u64| m.read_obj::<u16>(GuestAddress(at + 0x2002)).unwrap_or(0);
    (used(BLK_DESC), used(VSOCK_RX_DESC))
}

/// A share for [`fs_queue`]: a temporary directory with a file, a
/// subdirectory and a symlink out, served read-write (`ro == false`) or
/// read-only, initialised (FUSE_INIT) once.
fn fs_share(ro: bool) -> Option<&'static crate::virtio::fs::FsFuzz> {
    static RW: OnceLock<Option<crate::virtio::fs::FsFuzz>> = OnceLock::new();
    static RO: OnceLock<Option<crate::virtio::fs::FsFuzz>> = OnceLock::new();
    (if ro { &RO } else { &RW })
        .get_or_init(|| crate::virtio::fs::FsFuzz::new(ro))
        .as_ref()
}

/// virtio-fs requests: the input's first byte picks a read-only (odd) or
/// writable share, the rest is guest memory with the queue layout of
/// [`blk_queue`]: FUSE requests (any opcode, any lengths) served by the
/// device's request path, the transport's screen included. Returns the used
/// index.
pub fn fs_queue(data: &[u8]) -> u16 {
    let Some((&sel, rest)) = data.split_first() else {
        return 0;
    };
    let (Some(m), Some(share)) = (mem(), fs_share(sel & 1 == 1)) else {
        return 0;
    };
    let _ = m.write_slice(&rest[..rest.len().min(MEM)], GuestAddress(0));
    let Some(mut q) = queue_at(BLK_DESC, 16) else {
        return 0;
    };
    for _ in 0..4 {
        if !matches!(share.process(&m, &mut q), Ok(true)) {
            break;
        }
    }
    m.read_obj::<u16>(GuestAddress(BLK_USED + 2)).unwrap_or(0)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn harnesses_accept_anything() {
        mmio(&[]);
        mmio(&[0xff; 100]);
        blk_queue(&[]);
        blk_queue(&[0xff; 0x3000]);
        vsock_queues(&[]);
        vsock_queues(&[0xff; 0x8000]);
    }

    #[test]
    fn vsock_harness_answers_a_request_with_a_reset() {
        // tx: one 44-byte REQUEST header from guest port 1000 to host port 7 (no listener).
        let mut g = vec![0u8; 0x8000];
        let mut hdr = [0u8; 44];
        hdr[0..8].copy_from_slice(&3u64.to_le_bytes()); // src_cid
        hdr[8..16].copy_from_slice(&2u64.to_le_bytes()); // dst_cid
        hdr[16..20].copy_from_slice(&1000u32.to_le_bytes()); // src_port
        hdr[20..24].copy_from_slice(&7u32.to_le_bytes()); // dst_port
        hdr[28..30].copy_from_slice(&1u16.to_le_bytes()); // type STREAM
        hdr[30..32].copy_from_slice(&1u16.to_le_bytes()); // op REQUEST
        hdr[36..40].copy_from_slice(&65536u32.to_le_bytes()); // buf_alloc
        g[0x3000..0x3000 + 44].copy_from_slice(&hdr);
        let desc = |g: &mut Vec<u8>, at: usize, addr: u64, len: u32, flags: u16| {
            g[at..at + 8].copy_from_slice(&addr.to_le_bytes());
            g[at + 8..at + 12].copy_from_slice(&len.to_le_bytes());
            g[at + 12..at + 14].copy_from_slice(&flags.to_le_bytes());
        };
        desc(&mut g, 0, 0x3000, 44, 0);
        g[0x1002..0x1004].copy_from_slice(&1u16.to_le_bytes());
        // rx: one writable 4 KiB buffer.
        desc(&mut g, VSOCK_RX_DESC as usize, 0x7000, 0x1000, 2);
        g[0x5002..0x5004].copy_from_slice(&1u16.to_le_bytes());
        assert_eq!(vsock_queues(&g), (1, 1));
    }

    #[test]
    fn blk_harness_reaches_the_request_path() {
        // One IN request for sector 0: header (16 B), 512 B data, status byte.
        let mut g = vec![0u8; 0x4000];
        let desc = |g: &mut Vec<u8>, i: usize, addr: u64, len: u32, flags: u16, next: u16| {
            let o = BLK_DESC as usize + i * 16;
            g[o..o + 8].copy_from_slice(&addr.to_le_bytes());
            g[o + 8..o + 12].copy_from_slice(&len.to_le_bytes());
            g[o + 12..o + 14].copy_from_slice(&flags.to_le_bytes());
            g[o + 14..o + 16].copy_from_slice(&next.to_le_bytes());
        };
        desc(&mut g, 0, 0x3000, 16, 1, 1);
        desc(&mut g, 1, 0x3100, 512, 1 | 2, 2);
        desc(&mut g, 2, 0x3f00, 1, 2, 0);
        let a = BLK_AVAIL as usize;
        g[a + 2..a + 4].copy_from_slice(&1u16.to_le_bytes()); // idx = 1, ring[0] = 0
        g[0x3f00] = 0xff;
        let m = mem().unwrap();
        m.write_slice(&g, GuestAddress(0)).unwrap();
        let mut q = queue_at(BLK_DESC, 16).unwrap();
        assert!(process_queue(disk().unwrap(), &m, &mut q, &mut Scratch::default()).unwrap());
        assert_eq!(
            m.read_obj::<u8>(GuestAddress(0x3f00)).unwrap(),
            0,
            "status OK"
        );
        // The harness serves the same request, on both engines.
        assert_eq!(blk_queue(&g), (1, 1));
    }
}

/// Guest memory of the virtio-gpu harness (room for rings and blobs).
const GPU_MEM: usize = 0x10_0000;
/// Where the harness puts command `i`, and its answer buffer.
const GPU_CMD: u64 = 0x1_0000;
const GPU_RESP: u64 = 0x8_0000;
/// The harness's host-visible window.
const GPU_WINDOW: u64 = 1 << 32;
const GPU_WINDOW_LEN: u64 = 16 << 20;

/// A guest mapper that checks the device's promises: every mapping lies
/// inside the window, none overlaps another, every unmap names a live one.
#[derive(Default)]
struct CheckedMapper {
    live: std::sync::Mutex<std::collections::HashMap<u32, (u64, u64)>>,
    next: std::sync::atomic::AtomicU32,
}

impl crate::virtio::GuestMapper for CheckedMapper {
    fn map(&self, gpa: u64, _host: u64, size: u64, _w: bool) -> std::io::Result<u32> {
        let mut live = crate::bus::lock(&self.live);
        let end = gpa.checked_add(size).expect("mapping wraps");
        assert!(
            gpa >= GPU_WINDOW && end <= GPU_WINDOW + GPU_WINDOW_LEN,
            "outside the window"
        );
        assert!(size > 0 && size.is_multiple_of(4096), "not page-sized");
        for &(g, s) in live.values() {
            assert!(end <= g || gpa >= g + s, "overlapping mappings");
        }
        let h = self.next.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        live.insert(h, (gpa, size));
        Ok(h)
    }
    fn unmap(&self, handle: u32) -> std::io::Result<()> {
        assert!(
            crate::bus::lock(&self.live).remove(&handle).is_some(),
            "unmap of nothing"
        );
        Ok(())
    }
}

/// The listening "compositor" of [`gpu_commands`]: a live socket, so that an
/// INIT connects and starts rutabaga's per-context thread, and SENDs reach
/// a host end.
struct GpuHost {
    dir: tempfile::TempDir,
    listener: std::os::unix::net::UnixListener,
}

fn gpu_host() -> Option<&'static GpuHost> {
    static HOST: OnceLock<Option<GpuHost>> = OnceLock::new();
    HOST.get_or_init(|| {
        let dir = tempfile::tempdir().ok()?;
        let listener = std::os::unix::net::UnixListener::bind(dir.path().join("wayland-0")).ok()?;
        listener.set_nonblocking(true).ok()?;
        Some(GpuHost { dir, listener })
    })
    .as_ref()
}

/// Takes the connections INITs made; each is greeted with a few bytes (the
/// host's side of a channel: a guest POLL then gets a RECEIVE) and kept open
/// in `conns` until the run ends.
fn gpu_accept(host: &GpuHost, conns: &mut Vec<std::os::unix::net::UnixStream>) {
    use std::io::Write;
    while let Ok((mut c, _)) = host.listener.accept() {
        let _ = c.set_nonblocking(true);
        let _ = c.write(b"\x01\x00\x01\x00\x0c\x00\x00\x00");
        conns.push(c);
    }
}

/// virtio-gpu control-queue command sequences. Input: records of
/// `len: u16 le` and `len` bytes (at most 4096), each one command, put on
/// the control queue with a 512-byte answer buffer; the byte after the
/// length chooses (bit 0) whether the command is served alone or batched
/// with the next. The first 8 KiB of guest memory hold the two rings of a
/// cross-domain context at 0x4000 and 0x5000. rutabaga's Wayland socket is
/// live (INIT connects; the host end greets and stays open), so its
/// per-context threads, pipes and SENDs are reached. Returns the used index.
pub fn gpu_commands(data: &[u8]) -> u16 {
    use crate::virtio::gpu::{Backend, ShmPlacement};
    let Ok(m) = GuestMemoryMmap::from_ranges(&[(GuestAddress(0), GPU_MEM)]) else {
        return 0;
    };
    let mapper = Arc::new(CheckedMapper::default());
    let shm = ShmPlacement {
        base: GPU_WINDOW,
        len: GPU_WINDOW_LEN,
        mapper: mapper.clone(),
    };
    let Some(host) = gpu_host() else {
        return 0;
    };
    let Ok(mut b) = Backend::new(host.dir.path().join("wayland-0"), m.clone(), shm) else {
        return 0;
    };
    let mut conns = Vec::new();
    let Some(mut q) = queue_at(BLK_DESC, 64) else {
        return 0;
    };
    let mut rest = data;
    let mut n: u16 = 0;
    let mut used = 0;
    while rest.len() >= 2 && n < 32 {
        let len = usize::from(u16::from_le_bytes([rest[0], rest[1]])).min(4096);
        let cmd = &rest[2..2 + len.min(rest.len() - 2)];
        rest = &rest[2 + cmd.len()..];
        let (c, r) = (
            GPU_CMD + u64::from(n) * 0x1000,
            GPU_RESP + u64::from(n) * 0x200,
        );
        let _ = m.write_slice(cmd, GuestAddress(c));
        // Two descriptors (2n, 2n+1): the command, then the answer.
        let d = BLK_DESC + u64::from(n) * 32;
        let _ = m.write_obj(c, GuestAddress(d));
        let _ = m.write_obj(cmd.len() as u32, GuestAddress(d + 8));
        let _ = m.write_obj(1u16, GuestAddress(d + 12));
        let _ = m.write_obj(2 * n + 1, GuestAddress(d + 14));
        let _ = m.write_obj(r, GuestAddress(d + 16));
        let _ = m.write_obj(512u32, GuestAddress(d + 24));
        let _ = m.write_obj(2u16, GuestAddress(d + 28));
        let _ = m.write_obj(2 * n, GuestAddress(BLK_AVAIL + 4 + 2 * u64::from(n)));
        n += 1;
        let _ = m.write_obj(n, GuestAddress(BLK_AVAIL + 2));
        let batch = cmd.first().is_some_and(|x| x & 1 == 1) && !rest.is_empty();
        if !batch {
            if b.process_ctrl(&mut q).is_err() {
                break;
            }
            gpu_accept(host, &mut conns);
            used = m.read_obj::<u16>(GuestAddress(BLK_USED + 2)).unwrap_or(0);
        }
    }
    let _ = b.process_ctrl(&mut q);
    let _ = b.retire_fences(&mut q);
    gpu_accept(host, &mut conns);
    // Dropping the backend ends every context and joins its thread: a hang
    // here is a finding (libFuzzer's timeout).
    drop(b);
    drop(conns);
    assert!(
        crate::bus::lock(&mapper.live).is_empty(),
        "a mapping outlived the device"
    );
    used.max(m.read_obj::<u16>(GuestAddress(BLK_USED + 2)).unwrap_or(0))
}

/// Builders of the `virtio_gpu` seeds ([`gpu_seeds`]).
mod gpu_seed {
    use crate::virtio::gpu::protocol::{cmd, FLAG_FENCE, FLAG_INFO_RING_IDX};

    /// A control header: type, flags, fence, context, ring.
    pub fn hdr(ty: u32, flags: u32, fence: u64, ctx: u32, ring: u8) -> Vec<u8> {
        let mut b = Vec::with_capacity(24);
        b.extend_from_slice(&ty.to_le_bytes());
        b.extend_from_slice(&flags.to_le_bytes());
        b.extend_from_slice(&fence.to_le_bytes());
        b.extend_from_slice(&ctx.to_le_bytes());
        b.extend_from_slice(&[ring, 0, 0, 0]);
        b
    }

    pub fn words(mut b: Vec<u8>, v: &[u32]) -> Vec<u8> {
        for x in v {
            b.extend_from_slice(&x.to_le_bytes());
        }
        b
    }

    /// A cross-domain command header.
    pub fn xd(c: u8, ring: u8, size: u16) -> Vec<u8> {
        let mut b = vec![c, ring];
        b.extend_from_slice(&size.to_le_bytes());
        b.extend_from_slice(&[0; 4]);
        b
    }

    pub fn submit(ctx: u32, fence: Option<(u64, u8)>, data: &[u8]) -> Vec<u8> {
        let h = match fence {
            Some((f, ring)) => hdr(
                cmd::SUBMIT_3D,
                FLAG_FENCE | FLAG_INFO_RING_IDX,
                f,
                ctx,
                ring,
            ),
            None => hdr(cmd::SUBMIT_3D, 0, 0, ctx, 0),
        };
        let mut b = words(h, &[data.len() as u32, 0]);
        b.extend_from_slice(data);
        b
    }

    /// RESOURCE_CREATE_BLOB: guest memory at `at` (mem 1) or a host blob
    /// (mem 2, `blob_id` from the context).
    pub fn blob(ctx: u32, id: u32, host: Option<u64>, size: u64, at: u64) -> Vec<u8> {
        let (mem, n) = if host.is_some() { (2, 0) } else { (1, 1) };
        let mut b = words(
            hdr(cmd::RESOURCE_CREATE_BLOB, 0, 0, ctx, 0),
            &[id, mem, 3, n],
        );
        b.extend_from_slice(&host.unwrap_or(0).to_le_bytes());
        b.extend_from_slice(&size.to_le_bytes());
        if host.is_none() {
            b.extend_from_slice(&at.to_le_bytes());
            b.extend_from_slice(&(size as u32).to_le_bytes());
            b.extend_from_slice(&0u32.to_le_bytes());
        }
        b
    }

    /// A context with its query and channel rings (resources 1 and 2 at
    /// 0x4000 and 0x5000), INIT with the Wayland channel (or none).
    pub fn context(ctx: u32, channel: u32) -> Vec<Vec<u8>> {
        let mut create = words(hdr(cmd::CTX_CREATE, 0, 0, ctx, 0), &[4, 5]);
        create.extend_from_slice(&[0; 64]);
        let mut v = vec![create];
        for (id, at) in [(1, 0x4000), (2, 0x5000)] {
            v.push(blob(0, id, None, 4096, at));
            v.push(words(hdr(cmd::CTX_ATTACH_RESOURCE, 0, 0, ctx, 0), &[id, 0]));
        }
        v.push(submit(ctx, None, &words(xd(1, 0, 20), &[1, 2, channel])));
        v
    }

    /// A SEND of one byte with `ids` (identifier, type).
    pub fn send(ctx: u32, ids: &[(u32, u32)]) -> Vec<u8> {
        let mut b = words(xd(4, 0, 353), &[ids.len() as u32, 1]);
        b.resize(352, 0);
        for (i, &(id, ty)) in ids.iter().enumerate() {
            b[16 + 4 * i..20 + 4 * i].copy_from_slice(&id.to_le_bytes());
            b[128 + 4 * i..132 + 4 * i].copy_from_slice(&ty.to_le_bytes());
        }
        b.push(b'x');
        submit(ctx, None, &b)
    }

    /// Records (`len: u16 le`, bytes) of `cmds`.
    pub fn records(cmds: &[Vec<u8>]) -> Vec<u8> {
        let mut out = Vec::new();
        for c in cmds {
            out.extend_from_slice(&(c.len() as u16).to_le_bytes());
            out.extend_from_slice(c);
        }
        out
    }
}

/// The `virtio_gpu` seeds of the sequences a hostile guest used against
/// rutabaga (`fuzz/seeds/virtio_gpu/`, written by `cargo run -p devices
/// --example gpu_seeds`): INIT again on a live context, read-pipe SENDs
/// with ids the host would not assign, host blobs created, mapped,
/// unmapped and freed past the memory cap. Each: (name, input, commands).
pub fn gpu_seeds() -> Vec<(&'static str, Vec<u8>, usize)> {
    use crate::virtio::gpu::protocol::cmd;
    use gpu_seed::*;
    let poll = |ctx, fence| submit(ctx, Some((fence, 1)), &words(xd(3, 1, 16), &[0, 0]));
    let destroy = hdr(cmd::CTX_DESTROY, 0, 0, 1, 0);
    let mut init_twice = context(1, 1);
    init_twice.push(submit(1, None, &words(xd(1, 0, 20), &[1, 2, 0])));
    init_twice.push(submit(1, None, &words(xd(1, 0, 20), &[1, 2, 1])));
    init_twice.push(poll(1, 5));
    init_twice.push(destroy.clone());
    let mut pipes = context(1, 1);
    for ids in [
        &[(0x8000_0001, 3)][..],
        &[(0x1234, 3)],
        &[(0x8000_0002, 3), (0x8000_0003, 3)],
        &[(1, 1), (0x8000_0002, 3)],
        &[(0x8000_0002, 3)],
    ] {
        pipes.push(send(1, ids));
    }
    pipes.push(poll(1, 9));
    pipes.push(destroy.clone());
    let mut blobs = context(1, 0);
    // GET_IMAGE_REQUIREMENTS: 64 KiB as one R8 row; its item is id 2.
    let req = words(xd(2, 0, 24), &[65536, 1, 0x2020_3852, 0x11]);
    blobs.push(submit(1, Some((1, 0)), &req));
    let map = |id: u32, off: u64| {
        let mut b = words(hdr(cmd::RESOURCE_MAP_BLOB, 0, 0, 0, 0), &[id, 0]);
        b.extend_from_slice(&off.to_le_bytes());
        b
    };
    for id in 10..26 {
        blobs.push(blob(1, id, Some(2), 65536, 0));
    }
    blobs.push(map(10, 0));
    blobs.push(words(hdr(cmd::RESOURCE_UNMAP_BLOB, 0, 0, 0, 0), &[10, 0]));
    blobs.push(map(10, 0x10000));
    blobs.push(words(hdr(cmd::RESOURCE_UNREF, 0, 0, 0, 0), &[10, 0]));
    blobs.push(blob(1, 30, Some(2), 65536, 0));
    blobs.push(destroy);
    [
        ("init_twice", init_twice),
        ("pipe_sends", pipes),
        ("blobs", blobs),
    ]
    .into_iter()
    .map(|(n, c)| (n, records(&c), c.len()))
    .collect()
}

//! virtio-gpu driven with raw control-queue commands over real guest memory
//! and real split queues (virtio-queue's driver side), with rutabaga's real
//! cross-domain context talking to a real Unix socket.

use std::collections::HashMap;
use std::io::{Read, Write};
use std::os::unix::net::UnixListener;
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use virtio_queue::desc::split::Descriptor as SplitDescriptor;
use virtio_queue::desc::RawDescriptor;
use virtio_queue::mock::MockSplitQueue;
use virtio_queue::Queue;
use vm_memory::{Bytes, GuestAddress, GuestMemoryMmap};
use vmm_sys_util::eventfd::EventFd;

use super::protocol::{cmd, resp, CtrlHdr, FLAG_FENCE, FLAG_INFO_RING_IDX};
use super::*;
use crate::virtio::{ActiveQueue, GuestMapper, Interrupt, VirtioDevice};

const F_NEXT: u16 = 1;
const F_WRITE: u16 = 2;
const MEM_SIZE: usize = 16 << 20;
const CMD: u64 = 0x10_0000;
const RESP: u64 = 0x40_0000;
/// The control queue's used ring (see [`Driver::queue`]).
const USED: u64 = 0x2000;
const QUERY_RING: u64 = 0x80_0000;
const CHANNEL_RING: u64 = 0x80_1000;
const WINDOW: u64 = 1 << 32;
const WINDOW_LEN: u64 = 64 << 20;

/// Records what the device maps into the guest (a VMM would make KVM slots).
#[derive(Default)]
struct Recorder {
    next: AtomicU32,
    live: Mutex<HashMap<u32, (u64, u64, u64, bool)>>,
}

impl GuestMapper for Recorder {
    fn map(&self, gpa: u64, host: u64, size: u64, writable: bool) -> std::io::Result<u32> {
        let h = self.next.fetch_add(1, Ordering::SeqCst);
        self.live
            .lock()
            .unwrap()
            .insert(h, (gpa, host, size, writable));
        Ok(h)
    }
    fn unmap(&self, handle: u32) -> std::io::Result<()> {
        self.live
            .lock()
            .unwrap()
            .remove(&handle)
            .map(|_| ())
            .ok_or_else(|| std::io::Error::other("unknown handle"))
    }
}

/// A driver: guest memory, the control queue and the device's used ring.
struct Driver {
    mem: &'static GuestMemory,
    q: MockSplitQueue<'static, GuestMemory>,
    next_desc: u16,
    next_slot: u64,
    /// The used index when each head was last posted: only entries after
    /// it answer that posting (heads come round again once the descriptor
    /// table wraps, and an old entry for the same head must not pass for
    /// the new one: it did, under load, before the device had answered).
    posted_at: std::collections::HashMap<u16, u16>,
}

impl Driver {
    fn new() -> Self {
        let mem: &'static GuestMemory = Box::leak(Box::new(
            GuestMemoryMmap::from_ranges(&[(GuestAddress(0), MEM_SIZE)]).unwrap(),
        ));
        let q = MockSplitQueue::new(mem, QUEUE_SIZE);
        Driver {
            mem,
            q,
            next_desc: 0,
            next_slot: 0,
            posted_at: std::collections::HashMap::new(),
        }
    }

    /// The device's queue, its used ring at [`USED`]: virtio-queue 0.17's
    /// mock places the used ring inside the avail ring (its `end()` counts
    /// elements as bytes: rust-vmm/vm-virtio#400), so past half a ring of
    /// chains the device's used-ring header overwrote avail entries and it
    /// read `VRING_USED_F_NO_NOTIFY` (1) as a head.
    fn queue(&self) -> Queue {
        let mut q: Queue = self.q.create_queue().unwrap();
        self.mem
            .write_slice(&[0; 4 + 8 * QUEUE_SIZE as usize + 2], GuestAddress(USED))
            .unwrap();
        q.try_set_used_ring_address(GuestAddress(USED)).unwrap();
        q
    }

    /// Puts `cmd` (and a `resp_len` answer buffer) on the avail ring; returns
    /// the chain's head and where its answer goes.
    fn push_raw(&mut self, descs: &[(u64, u32, bool)]) -> (u16, u64) {
        let head = self.next_desc;
        let raw: Vec<RawDescriptor> = descs
            .iter()
            .enumerate()
            .map(|(i, &(a, l, w))| {
                let mut flags = if w { F_WRITE } else { 0 };
                let next = if i + 1 < descs.len() {
                    flags |= F_NEXT;
                    head + i as u16 + 1
                } else {
                    0
                };
                RawDescriptor::from(SplitDescriptor::new(a, l, flags, next))
            })
            .collect();
        // Before the chain is visible: the device may answer at once.
        self.posted_at.insert(head, self.used_idx());
        self.q.add_desc_chains(&raw, head).unwrap();
        self.next_desc = (head + descs.len() as u16) % QUEUE_SIZE;
        (head, descs.last().map_or(0, |d| d.0))
    }

    fn push(&mut self, cmd: &[u8], resp_len: u32) -> (u16, u64) {
        let slot = self.next_slot;
        self.next_slot = (slot + 1) % 64;
        let c = CMD + slot * 0x1_0000;
        let r = RESP + slot * 0x1000;
        self.mem.write_slice(cmd, GuestAddress(c)).unwrap();
        self.mem.write_slice(&[0xaa; 64], GuestAddress(r)).unwrap();
        self.push_raw(&[(c, cmd.len() as u32, false), (r, resp_len, true)])
    }

    /// Makes the chain at `head` available again (what a broken or hostile
    /// driver may do while the device still holds it).
    fn repost(&mut self, head: u16) {
        let avail = self.q.avail();
        let idx = avail.idx().load();
        avail
            .ring()
            .ref_at(idx as usize % QUEUE_SIZE as usize)
            .unwrap()
            .store(head);
        avail.idx().store(idx.wrapping_add(1));
    }

    fn used_idx(&self) -> u16 {
        self.mem.read_obj::<u16>(GuestAddress(USED + 2)).unwrap()
    }

    /// Used entry `i` (ring position, wrapped): (id, len).
    fn used_entry(&self, i: u16) -> (u32, u32) {
        let at = USED + 4 + 8 * u64::from(i % QUEUE_SIZE);
        let r = |a| self.mem.read_obj::<u32>(GuestAddress(a)).unwrap();
        (r(at), r(at + 4))
    }

    /// The used entry for `head`, if the device returned it.
    fn used_len(&self, head: u16) -> Option<u32> {
        let from = self.posted_at.get(&head).copied().unwrap_or(0);
        let mut i = from;
        while i != self.used_idx() {
            let (id, len) = self.used_entry(i);
            if id == u32::from(head) {
                return Some(len);
            }
            i = i.wrapping_add(1);
        }
        None
    }

    fn answer(&self, at: u64, len: usize) -> Vec<u8> {
        let mut b = vec![0u8; len];
        self.mem.read_slice(&mut b, GuestAddress(at)).unwrap();
        b
    }
}

fn hdr(ty: u32, ctx: u32) -> Vec<u8> {
    CtrlHdr {
        ty,
        ctx_id: ctx,
        ..Default::default()
    }
    .encode()
    .to_vec()
}

fn fenced(ty: u32, ctx: u32, fence: u64, ring: Option<u8>) -> Vec<u8> {
    CtrlHdr {
        ty,
        flags: FLAG_FENCE
            | if ring.is_some() {
                FLAG_INFO_RING_IDX
            } else {
                0
            },
        fence_id: fence,
        ctx_id: ctx,
        ring_idx: ring.unwrap_or(0),
    }
    .encode()
    .to_vec()
}

fn u32s(mut b: Vec<u8>, v: &[u32]) -> Vec<u8> {
    for x in v {
        b.extend_from_slice(&x.to_le_bytes());
    }
    b
}

fn ctx_create(ctx: u32) -> Vec<u8> {
    let mut b = u32s(hdr(cmd::CTX_CREATE, ctx), &[4, 5]);
    let mut name = [0u8; 64];
    name[..4].copy_from_slice(b"test");
    b.extend_from_slice(&name);
    b
}

fn create_blob(
    ctx: u32,
    id: u32,
    mem: u32,
    flags: u32,
    blob_id: u64,
    size: u64,
    entries: &[(u64, u32)],
) -> Vec<u8> {
    let mut b = u32s(
        hdr(cmd::RESOURCE_CREATE_BLOB, ctx),
        &[id, mem, flags, entries.len() as u32],
    );
    b.extend_from_slice(&blob_id.to_le_bytes());
    b.extend_from_slice(&size.to_le_bytes());
    for &(a, l) in entries {
        b.extend_from_slice(&a.to_le_bytes());
        b.extend_from_slice(&l.to_le_bytes());
        b.extend_from_slice(&0u32.to_le_bytes());
    }
    b
}

fn submit(head: Vec<u8>, data: &[u8]) -> Vec<u8> {
    let mut b = u32s(head, &[data.len() as u32, 0]);
    b.extend_from_slice(data);
    b
}

/// A cross-domain command header: cmd, ring_idx, cmd_size, pad.
fn xd(cmd: u8, ring: u8, size: u16) -> Vec<u8> {
    let mut b = vec![cmd, ring];
    b.extend_from_slice(&size.to_le_bytes());
    b.extend_from_slice(&[0; 4]);
    b
}

fn map_blob(id: u32, offset: u64) -> Vec<u8> {
    let mut b = u32s(hdr(cmd::RESOURCE_MAP_BLOB, 0), &[id, 0]);
    b.extend_from_slice(&offset.to_le_bytes());
    b
}

fn resp_type(b: &[u8]) -> u32 {
    u32::from_le_bytes(b[0..4].try_into().unwrap())
}

struct Running {
    gpu: Gpu,
    interrupt: Arc<Interrupt>,
    notify: EventFd,
    mapper: Arc<Recorder>,
    _dir: tempfile::TempDir,
    listener: UnixListener,
}

/// The device on its worker thread (under its seccomp filter), its
/// Wayland socket a listener in a temporary directory.
fn start(d: &Driver) -> Running {
    let dir = tempfile::tempdir().unwrap();
    let sock = dir.path().join("wayland-0");
    let listener = UnixListener::bind(&sock).unwrap();
    let mut gpu = Gpu::new(GpuConfig {
        wayland_socket: sock,
        shm_size: WINDOW_LEN,
    })
    .unwrap();
    let mapper = Arc::new(Recorder::default());
    gpu.place_shm(WINDOW, mapper.clone());
    assert_eq!(gpu.shm_regions()[0].id, 1);
    assert_eq!(gpu.shm_regions()[0].len, WINDOW_LEN);
    let notify = EventFd::new(libc::EFD_NONBLOCK).unwrap();
    let cursor = Driver::new();
    let queues = vec![
        ActiveQueue {
            queue: d.queue(),
            notify: notify.try_clone().unwrap(),
        },
        ActiveQueue {
            queue: cursor.queue(),
            notify: EventFd::new(libc::EFD_NONBLOCK).unwrap(),
        },
    ];
    let irq = EventFd::new(libc::EFD_NONBLOCK).unwrap();
    let interrupt = Interrupt::new(irq);
    gpu.activate(d.mem.clone(), interrupt.clone(), 0, queues)
        .unwrap();
    Running {
        gpu,
        interrupt,
        notify,
        mapper,
        _dir: dir,
        listener,
    }
}

impl Running {
    /// Sends `cmd` and waits for its answer (`None`: not answered in 5 s).
    fn call(&self, d: &mut Driver, cmd: &[u8], resp_len: u32) -> Option<(u32, Vec<u8>)> {
        let (head, at) = d.push(cmd, resp_len);
        self.notify.write(1).unwrap();
        wait_used(d, head, Duration::from_secs(5)).map(|len| (len, d.answer(at, resp_len as usize)))
    }
}

fn memfd_with(data: &[u8]) -> std::fs::File {
    use std::os::fd::FromRawFd;
    // SAFETY: a NUL-terminated name; checked.
    let fd = unsafe { libc::memfd_create(c"t".as_ptr(), libc::MFD_CLOEXEC) };
    assert!(fd >= 0);
    // SAFETY: a new fd nothing else owns.
    let mut f = unsafe { std::fs::File::from_raw_fd(fd) };
    f.write_all(data).unwrap();
    f
}

fn send_fd(s: &std::os::unix::net::UnixStream, data: &[u8], f: &std::fs::File) {
    use std::os::fd::AsRawFd;
    let mut cmsg = [0u64; 4];
    let mut iov = libc::iovec {
        iov_base: data.as_ptr() as *mut _,
        iov_len: data.len(),
    };
    // SAFETY: a zeroed msghdr whose buffers outlive the call, with one
    // SCM_RIGHTS header holding one fd.
    unsafe {
        let mut msg: libc::msghdr = std::mem::zeroed();
        msg.msg_iov = &mut iov;
        msg.msg_iovlen = 1;
        msg.msg_control = cmsg.as_mut_ptr().cast();
        msg.msg_controllen = libc::CMSG_SPACE(4) as usize;
        let c = libc::CMSG_FIRSTHDR(&msg);
        (*c).cmsg_level = libc::SOL_SOCKET;
        (*c).cmsg_type = libc::SCM_RIGHTS;
        (*c).cmsg_len = libc::CMSG_LEN(4) as usize;
        (libc::CMSG_DATA(c) as *mut i32).write_unaligned(f.as_raw_fd());
        assert_eq!(libc::sendmsg(s.as_raw_fd(), &msg, 0), data.len() as isize);
    }
}

fn recv_fd(s: &std::os::unix::net::UnixStream) -> (Vec<u8>, Vec<std::os::fd::OwnedFd>) {
    use std::os::fd::{AsRawFd, FromRawFd};
    let mut buf = [0u8; 64];
    let mut cmsg = [0u64; 8];
    let mut iov = libc::iovec {
        iov_base: buf.as_mut_ptr().cast(),
        iov_len: buf.len(),
    };
    let mut fds = Vec::new();
    // SAFETY: a zeroed msghdr whose buffers outlive the call; the control
    // data is walked with the libc macros.
    let n = unsafe {
        let mut msg: libc::msghdr = std::mem::zeroed();
        msg.msg_iov = &mut iov;
        msg.msg_iovlen = 1;
        msg.msg_control = cmsg.as_mut_ptr().cast();
        msg.msg_controllen = std::mem::size_of_val(&cmsg);
        let n = libc::recvmsg(s.as_raw_fd(), &mut msg, 0);
        let mut c = libc::CMSG_FIRSTHDR(&msg);
        while !c.is_null() {
            let k = ((*c).cmsg_len as usize - libc::CMSG_LEN(0) as usize) / 4;
            for i in 0..k {
                let fd = (libc::CMSG_DATA(c) as *const i32).add(i).read_unaligned();
                fds.push(std::os::fd::OwnedFd::from_raw_fd(fd));
            }
            c = libc::CMSG_NXTHDR(&msg, c);
        }
        n
    };
    assert!(n > 0);
    (buf[..n as usize].to_vec(), fds)
}

fn wait_used(d: &Driver, head: u16, limit: Duration) -> Option<u32> {
    let t = Instant::now();
    loop {
        if let Some(l) = d.used_len(head) {
            return Some(l);
        }
        if t.elapsed() > limit {
            return None;
        }
        std::thread::sleep(Duration::from_millis(2));
    }
}

/// The probe a Linux 6.1 driver makes, then a cross-domain Wayland channel
/// end to end: rings, INIT (rutabaga connects to the socket), a parked
/// POLL released by host data, a SEND, and teardown on CTX_DESTROY.
#[test]
fn probe_and_cross_domain_channel_end_to_end() {
    let mut d = Driver::new();
    let r = start(&d);

    let (len, a) = r.call(&mut d, &hdr(cmd::GET_DISPLAY_INFO, 0), 408).unwrap();
    assert_eq!((len, resp_type(&a)), (408, resp::OK_DISPLAY_INFO));
    let (_, a) = r
        .call(&mut d, &u32s(hdr(cmd::GET_CAPSET_INFO, 0), &[0, 0]), 40)
        .unwrap();
    assert_eq!(resp_type(&a), resp::OK_CAPSET_INFO);
    assert_eq!(
        &a[24..36],
        &u32s(vec![], &[5, 0, 16])[..],
        "cross-domain capset (5, v0, 16 bytes)"
    );
    let (_, a) = r
        .call(&mut d, &u32s(hdr(cmd::GET_CAPSET_INFO, 0), &[1, 0]), 40)
        .unwrap();
    assert_eq!(
        resp_type(&a),
        resp::ERR_INVALID_PARAMETER,
        "only one capset"
    );
    let (len, a) = r
        .call(&mut d, &u32s(hdr(cmd::GET_CAPSET, 0), &[5, 0]), 40)
        .unwrap();
    assert_eq!((len, resp_type(&a)), (40, resp::OK_CAPSET));
    let channels = u32::from_le_bytes(a[28..32].try_into().unwrap());
    assert_ne!(channels & (1 << 1), 0, "the Wayland channel is offered");

    let ok = |x: Option<(u32, Vec<u8>)>| resp_type(&x.expect("answered").1);
    assert_eq!(ok(r.call(&mut d, &ctx_create(1), 24)), resp::OK_NODATA);
    for (id, at) in [(1, QUERY_RING), (2, CHANNEL_RING)] {
        let c = create_blob(0, id, 1, 1, 0, 4096, &[(at, 4096)]);
        assert_eq!(ok(r.call(&mut d, &c, 24)), resp::OK_NODATA);
        let c = u32s(hdr(cmd::CTX_ATTACH_RESOURCE, 1), &[id, 0]);
        assert_eq!(ok(r.call(&mut d, &c, 24)), resp::OK_NODATA);
    }
    let init = u32s(xd(1, 0, 20), &[1, 2, 1]);
    assert_eq!(
        ok(r.call(&mut d, &submit(hdr(cmd::SUBMIT_3D, 1), &init), 24)),
        resp::OK_NODATA
    );
    let (mut host, _) = r
        .listener
        .accept()
        .expect("rutabaga connected to the socket");
    host.set_read_timeout(Some(Duration::from_secs(5))).unwrap();

    // POLL on the channel ring: parked until the host says something, while
    // other commands keep being answered.
    let poll = submit(
        fenced(cmd::SUBMIT_3D, 1, 100, Some(1)),
        &u32s(xd(3, 1, 16), &[0, 0]),
    );
    let (poll_head, poll_at) = d.push(&poll, 24);
    r.notify.write(1).unwrap();
    let (_, a) = r.call(&mut d, &hdr(cmd::GET_DISPLAY_INFO, 0), 408).unwrap();
    assert_eq!(resp_type(&a), resp::OK_DISPLAY_INFO);
    assert_eq!(d.used_len(poll_head), None, "the POLL waits for host data");

    host.write_all(b"hello").unwrap();
    let len = wait_used(&d, poll_head, Duration::from_secs(5)).expect("POLL completed");
    assert_eq!(len, 24);
    let a = d.answer(poll_at, 24);
    let h = CtrlHdr::decode(&a).unwrap();
    assert_eq!(
        (h.ty, h.fence_id, h.ctx_id, h.ring_idx),
        (resp::OK_NODATA, 100, 1, 1)
    );
    assert_eq!(h.flags, FLAG_FENCE | FLAG_INFO_RING_IDX, "fence echoed");
    let ring = d.answer(CHANNEL_RING, 352 + 5);
    assert_eq!(ring[0], 5, "RECEIVE");
    assert_eq!(u32::from_le_bytes(ring[12..16].try_into().unwrap()), 5);
    assert_eq!(&ring[352..], b"hello");

    // The host passes a memfd (a keymap): it reaches the guest as a BLOB
    // identifier with its size, typed by rutabaga on the worker's thread
    // (under its seccomp filter).
    let poll = submit(
        fenced(cmd::SUBMIT_3D, 1, 101, Some(1)),
        &u32s(xd(3, 1, 16), &[0, 0]),
    );
    let (poll_head, _) = d.push(&poll, 24);
    r.notify.write(1).unwrap();
    let memfd = memfd_with(b"keymap");
    send_fd(&host, b"km", &memfd);
    wait_used(&d, poll_head, Duration::from_secs(5)).expect("POLL completed");
    let ring = d.answer(CHANNEL_RING, 352 + 2);
    let w = |o: usize| u32::from_le_bytes(ring[o..o + 4].try_into().unwrap());
    assert_eq!(
        (ring[0], w(8), w(12)),
        (5, 1, 2),
        "RECEIVE, one identifier, 2 bytes"
    );
    assert_eq!((w(16 + 112), w(16 + 224)), (1, 6), "a BLOB of 6 bytes");
    assert_eq!(&ring[352..], b"km");

    // A guest read pipe (a paste target): the host gets a pipe's write end
    // with the message; what the host writes comes back as READ events.
    let mut send = u32s(xd(4, 0, 352 + 3), &[1, 3]);
    send.resize(16 + 4 * 28, 0);
    send[16..20].copy_from_slice(&0x8000_0001u32.to_le_bytes());
    send.extend_from_slice(&3u32.to_le_bytes());
    send.resize(352, 0);
    send.extend_from_slice(b"rcv");
    assert_eq!(
        ok(r.call(&mut d, &submit(hdr(cmd::SUBMIT_3D, 1), &send), 24)),
        resp::OK_NODATA
    );
    let (data, mut fds) = recv_fd(&host);
    assert_eq!(data, b"rcv");
    let mut w = std::fs::File::from(fds.pop().expect("the pipe's write end came with it"));
    let poll = submit(
        fenced(cmd::SUBMIT_3D, 1, 102, Some(1)),
        &u32s(xd(3, 1, 16), &[0, 0]),
    );
    let (poll_head, _) = d.push(&poll, 24);
    r.notify.write(1).unwrap();
    w.write_all(b"pasted").unwrap();
    drop(w);
    wait_used(&d, poll_head, Duration::from_secs(5)).expect("POLL completed");
    let ring = d.answer(CHANNEL_RING, 24 + 6);
    let w = |o: usize| u32::from_le_bytes(ring[o..o + 4].try_into().unwrap());
    assert_eq!((ring[0], w(8)), (6, 0x8000_0001), "READ from the pipe");
    assert_eq!(&ring[24..24 + w(16) as usize], &b"pasted"[..w(16) as usize]);
    // Then its end (the host's write end closed): a READ with hang_up.
    let mut fence = 110;
    loop {
        let poll = submit(
            fenced(cmd::SUBMIT_3D, 1, fence, Some(1)),
            &u32s(xd(3, 1, 16), &[0, 0]),
        );
        fence += 1;
        let (poll_head, _) = d.push(&poll, 24);
        r.notify.write(1).unwrap();
        wait_used(&d, poll_head, Duration::from_secs(5)).expect("POLL completed");
        let ring = d.answer(CHANNEL_RING, 24);
        let w = |o: usize| u32::from_le_bytes(ring[o..o + 4].try_into().unwrap());
        assert_eq!((ring[0], w(8)), (6, 0x8000_0001));
        if w(12) == 1 {
            break;
        }
        assert!(fence < 120, "no hang-up");
    }

    // A host write pipe (the compositor wants the guest's selection): the
    // guest's WRITE commands come out of the pipe's read end.
    let poll = submit(
        fenced(cmd::SUBMIT_3D, 1, 130, Some(1)),
        &u32s(xd(3, 1, 16), &[0, 0]),
    );
    let (poll_head, _) = d.push(&poll, 24);
    r.notify.write(1).unwrap();
    let (mut rd, wr) = std::io::pipe().unwrap();
    send_fd(
        &host,
        b"snd",
        &std::fs::File::from(std::os::fd::OwnedFd::from(wr)),
    );
    wait_used(&d, poll_head, Duration::from_secs(5)).expect("POLL completed");
    let ring = d.answer(CHANNEL_RING, 352 + 3);
    let w = |o: usize| u32::from_le_bytes(ring[o..o + 4].try_into().unwrap());
    assert_eq!(
        (ring[0], w(8), w(16 + 112)),
        (5, 1, 4),
        "RECEIVE with one WRITE_PIPE"
    );
    let pipe_id = w(16);
    let mut wcmd = u32s(xd(7, 0, 24 + 4), &[pipe_id, 1, 4, 0]);
    wcmd.extend_from_slice(b"data");
    assert_eq!(
        ok(r.call(&mut d, &submit(hdr(cmd::SUBMIT_3D, 1), &wcmd), 24)),
        resp::OK_NODATA
    );
    let mut got = Vec::new();
    rd.read_to_end(&mut got).unwrap();
    assert_eq!(got, b"data", "written, then hung up");

    let mut send = u32s(xd(4, 0, 352 + 5), &[0, 5]);
    send.resize(352, 0);
    send.extend_from_slice(b"world");
    assert_eq!(
        ok(r.call(&mut d, &submit(hdr(cmd::SUBMIT_3D, 1), &send), 24)),
        resp::OK_NODATA
    );
    let mut got = [0u8; 5];
    host.read_exact(&mut got).unwrap();
    assert_eq!(&got, b"world");

    assert_eq!(
        ok(r.call(&mut d, &hdr(cmd::CTX_DESTROY, 1), 24)),
        resp::OK_NODATA
    );
    let mut rest = Vec::new();
    assert_eq!(
        host.read_to_end(&mut rest).unwrap(),
        0,
        "the host connection closed with the context"
    );
    drop(r.gpu);
}

/// Host-visible blobs: GET_IMAGE_REQUIREMENTS on the query ring, a HOST3D
/// blob, MAP_BLOB into the window (a writable mapping of the host memory),
/// refusals for bad offsets, and unmapping before the memory is freed.
#[test]
fn host_blobs_map_into_the_window_and_are_unmapped_first() {
    let mut d = Driver::new();
    let mut r = start(&d);
    let ok = |x: Option<(u32, Vec<u8>)>| resp_type(&x.expect("answered").1);
    assert_eq!(ok(r.call(&mut d, &ctx_create(1), 24)), resp::OK_NODATA);
    for (id, at) in [(1, QUERY_RING), (2, CHANNEL_RING)] {
        assert_eq!(
            ok(r.call(
                &mut d,
                &create_blob(0, id, 1, 1, 0, 4096, &[(at, 4096)]),
                24
            )),
            resp::OK_NODATA
        );
        assert_eq!(
            ok(r.call(
                &mut d,
                &u32s(hdr(cmd::CTX_ATTACH_RESOURCE, 1), &[id, 0]),
                24
            )),
            resp::OK_NODATA
        );
    }
    // INIT without a channel: only the query ring.
    let init = u32s(xd(1, 0, 20), &[1, 2, 0]);
    assert_eq!(
        ok(r.call(&mut d, &submit(hdr(cmd::SUBMIT_3D, 1), &init), 24)),
        resp::OK_NODATA
    );
    // 8192 bytes as one R8 row, LINEAR|SCANOUT.
    let req = u32s(xd(2, 0, 24), &[8192, 1, 0x2020_3852, 0x11]);
    let a = r
        .call(
            &mut d,
            &submit(fenced(cmd::SUBMIT_3D, 1, 7, Some(0)), &req),
            24,
        )
        .unwrap()
        .1;
    assert_eq!(resp_type(&a), resp::OK_NODATA);
    let reqs = d.answer(QUERY_RING, 64);
    let size = u64::from_le_bytes(reqs[40..48].try_into().unwrap());
    let blob_id = u32::from_le_bytes(reqs[48..52].try_into().unwrap());
    assert_eq!(size, 8192);

    let c = create_blob(1, 3, 2, 3, u64::from(blob_id), size, &[]);
    assert_eq!(ok(r.call(&mut d, &c, 24)), resp::OK_NODATA);
    let bad = [
        (map_blob(3, 4095), "unaligned"),
        (map_blob(3, WINDOW_LEN - 4096), "past the window"),
        (map_blob(3, u64::MAX - 4095), "offset overflow"),
        (map_blob(99, 0), "unknown resource"),
    ];
    for (c, why) in &bad {
        let t = ok(r.call(&mut d, c, 32));
        assert!(t >= resp::ERR_UNSPEC, "{why}: {t:#x}");
    }
    assert!(r.mapper.live.lock().unwrap().is_empty());
    let (len, a) = r.call(&mut d, &map_blob(3, 0x10000), 32).unwrap();
    assert_eq!((len, resp_type(&a)), (32, resp::OK_MAP_INFO));
    assert_eq!(
        u32::from_le_bytes(a[24..28].try_into().unwrap()),
        1,
        "cached"
    );
    let live: Vec<_> = r.mapper.live.lock().unwrap().values().copied().collect();
    assert_eq!(live.len(), 1);
    let (gpa, host, len, writable) = live[0];
    assert_eq!((gpa, len, writable), (WINDOW + 0x10000, 8192, true));
    // SAFETY: the device keeps this host mapping (8192 bytes) alive while
    // it is mapped into the guest, which it still is.
    unsafe { std::ptr::write_volatile(host as *mut u8, 0x5a) };
    assert!(
        ok(r.call(&mut d, &map_blob(3, 0x20000), 32)) >= resp::ERR_UNSPEC,
        "mapped twice"
    );

    // UNREF of a mapped blob removes the guest mapping first.
    assert_eq!(
        ok(r.call(&mut d, &u32s(hdr(cmd::RESOURCE_UNREF, 0), &[3, 0]), 24)),
        resp::OK_NODATA
    );
    assert!(r.mapper.live.lock().unwrap().is_empty());
    let a = ok(r.call(&mut d, &u32s(hdr(cmd::RESOURCE_UNMAP_BLOB, 0), &[3, 0]), 24));
    assert_eq!(a, resp::ERR_INVALID_RESOURCE_ID);

    // A mapping still present at reset is removed by the reset.
    let req = u32s(xd(2, 0, 24), &[4096, 1, 0x2020_3852, 0x11]);
    r.call(
        &mut d,
        &submit(fenced(cmd::SUBMIT_3D, 1, 8, Some(0)), &req),
        24,
    )
    .unwrap();
    let blob_id = u32::from_le_bytes(d.answer(QUERY_RING + 48, 4)[..].try_into().unwrap());
    assert_eq!(
        ok(r.call(
            &mut d,
            &create_blob(1, 4, 2, 3, u64::from(blob_id), 4096, &[]),
            24
        )),
        resp::OK_NODATA
    );
    assert_eq!(ok(r.call(&mut d, &map_blob(4, 0), 32)), resp::OK_MAP_INFO);
    assert_eq!(r.mapper.live.lock().unwrap().len(), 1);
    assert!(r.gpu.reset());
    assert!(
        r.mapper.live.lock().unwrap().is_empty(),
        "reset unmapped the blob"
    );
}

/// Hostile command sequences: each gets an error answer (or a zero-length
/// used entry when there is nowhere to answer), and the device keeps serving.
#[test]
fn hostile_commands_get_errors_and_the_device_keeps_serving() {
    let mut d = Driver::new();
    let r = start(&d);
    let huge_entries = {
        let mut b = create_blob(0, 9, 1, 1, 0, 4096, &[]);
        b[36..40].copy_from_slice(&u32::MAX.to_le_bytes());
        b
    };
    let cases: Vec<(Vec<u8>, &str)> = vec![
        (vec![1, 2, 3], "shorter than a header"),
        (hdr(0x9999, 0), "unknown command"),
        (hdr(cmd::RESOURCE_CREATE_3D, 0), "3D"),
        (hdr(cmd::GET_CAPSET_INFO, 0), "missing index"),
        (u32s(hdr(cmd::GET_CAPSET, 0), &[77, 0]), "unknown capset"),
        (
            u32s(hdr(cmd::RESOURCE_UNREF, 0), &[12345, 0]),
            "unref of nothing",
        ),
        (u32s(hdr(cmd::CTX_DESTROY, 0), &[]), "destroy of no context"),
        (hdr(cmd::CTX_CREATE, 0), "context 0, short"),
        (
            submit(hdr(cmd::SUBMIT_3D, 42), &[1, 2, 3, 4]),
            "submit to no context",
        ),
        (
            create_blob(0, 9, 1, 1, 0, 4096, &[(MEM_SIZE as u64 - 100, 4096)]),
            "backing outside memory",
        ),
        (
            create_blob(0, 9, 1, 1, 0, 8192, &[(QUERY_RING, 4096)]),
            "backing smaller than the blob",
        ),
        (
            create_blob(0, 9, 1, 1, 0, 1 << 40, &[(QUERY_RING, 4096)]),
            "huge blob",
        ),
        (huge_entries, "four billion entries"),
        (
            create_blob(0, 0, 1, 1, 0, 4096, &[(QUERY_RING, 4096)]),
            "resource id 0",
        ),
        (
            create_blob(5, 9, 2, 3, 1234, 4096, &[]),
            "host blob of no context",
        ),
        (create_blob(0, 9, 7, 3, 0, 4096, &[]), "unknown blob memory"),
        (map_blob(1, 0), "map of nothing"),
        (
            u32s(hdr(cmd::SET_SCANOUT, 0), &[0, 0, 64, 64, 3, 1]),
            "scanout 3",
        ),
    ];
    for (c, why) in &cases {
        let (len, a) = r
            .call(&mut d, c, 24)
            .unwrap_or_else(|| panic!("{why}: no answer"));
        assert_eq!(len, 24, "{why}");
        assert!(
            resp_type(&a) >= resp::ERR_UNSPEC,
            "{why}: {:#x}",
            resp_type(&a)
        );
    }
    assert_eq!(
        resp_type(&r.call(&mut d, &ctx_create(1), 24).unwrap().1),
        resp::OK_NODATA
    );
    assert!(
        resp_type(&r.call(&mut d, &ctx_create(1), 24).unwrap().1) >= resp::ERR_UNSPEC,
        "context twice"
    );
    let (_, a) = r
        .call(&mut d, &submit(hdr(cmd::SUBMIT_3D, 1), &[0xff; 64]), 24)
        .unwrap();
    assert!(
        resp_type(&a) >= resp::ERR_UNSPEC,
        "garbage cross-domain command"
    );
    let mut lying = submit(hdr(cmd::SUBMIT_3D, 1), &[0; 8]);
    lying[24..28].copy_from_slice(&0xffff_fff0u32.to_le_bytes());
    let (_, a) = r.call(&mut d, &lying, 24).unwrap();
    assert!(
        resp_type(&a) >= resp::ERR_UNSPEC,
        "submit size past the command"
    );
    // A cross-domain command whose own size lies.
    let mut x = u32s(xd(4, 0, 60000), &[0, 50000]);
    x.resize(352, 0);
    let (_, a) = r
        .call(&mut d, &submit(hdr(cmd::SUBMIT_3D, 1), &x), 24)
        .unwrap();
    assert!(
        resp_type(&a) >= resp::ERR_UNSPEC,
        "SEND size past the command"
    );
    // Cross-domain commands that claim a size of 0 (or less than their
    // header): rutabaga 0.1.85 steps through a buffer by each command's own
    // size and looped on these for ever (found by the virtio_gpu fuzz target).
    for size in [0u16, 4] {
        let mut x = xd(3, 0, size);
        x.extend(xd(3, 0, 8));
        let (_, a) = r
            .call(&mut d, &submit(hdr(cmd::SUBMIT_3D, 1), &x), 24)
            .unwrap_or_else(|| panic!("cross-domain command of size {size}: the worker hung"));
        assert!(resp_type(&a) >= resp::ERR_UNSPEC, "size {size}");
    }

    // Chains the device cannot answer into: descriptors outside memory, no
    // writable part, a readable descriptor after a writable one.
    let (h1, _) = d.push_raw(&[(MEM_SIZE as u64 + 0x1000, 24, false), (RESP, 24, true)]);
    let (h2, _) = d.push_raw(&[(CMD, 24, false)]);
    let (h3, _) = d.push_raw(&[(RESP, 24, true), (CMD, 24, false)]);
    let (h4, _) = d.push_raw(&[(CMD, 24, false), (u64::MAX - 8, 24, true)]);
    r.notify.write(1).unwrap();
    for h in [h1, h2, h3, h4] {
        assert!(
            wait_used(&d, h, Duration::from_secs(5)).is_some(),
            "chain {h} returned"
        );
    }
    assert_eq!(d.used_len(h2), Some(0));
    let (_, a) = r.call(&mut d, &hdr(cmd::GET_DISPLAY_INFO, 0), 408).unwrap();
    assert_eq!(resp_type(&a), resp::OK_DISPLAY_INFO, "still serving");
}

#[test]
fn config_features_and_window_placement() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = GpuConfig {
        wayland_socket: dir.path().join("none"),
        shm_size: 4096 * 3 + 1,
    };
    assert!(Gpu::new(cfg.clone()).is_err(), "window not page-sized");
    let gpu = Gpu::new(GpuConfig {
        shm_size: DEFAULT_SHM_SIZE,
        ..cfg
    })
    .unwrap();
    assert_eq!(gpu.device_type(), 16);
    let f = gpu.features();
    for bit in [0, 3, 4] {
        assert_ne!(f & (1 << bit), 0, "feature {bit}");
    }
    assert_eq!(f & (1 << 1 | 1 << 2), 0, "no EDID, no UUID");
    let mut c = [0u8; 16];
    gpu.read_config(0, &mut c);
    assert_eq!(
        &c[8..16],
        &u32s(vec![], &[1, 1])[..],
        "one scanout, one capset"
    );
    assert!(gpu.shm_regions().is_empty(), "not placed yet");
    assert_eq!(gpu.shm_size(), DEFAULT_SHM_SIZE);
}

fn ok(x: Option<(u32, Vec<u8>)>) -> u32 {
    resp_type(&x.expect("answered").1)
}

/// Context `ctx` with its two rings (resources `ctx*10+1`, `ctx*10+2`),
/// initialised with the Wayland channel; returns the host's end.
fn wayland_context(r: &Running, d: &mut Driver, ctx: u32) -> std::os::unix::net::UnixStream {
    assert_eq!(ok(r.call(d, &ctx_create(ctx), 24)), resp::OK_NODATA);
    let (q, c) = (ctx * 10 + 1, ctx * 10 + 2);
    for (id, at) in [(q, QUERY_RING), (c, CHANNEL_RING)] {
        let b = create_blob(0, id, 1, 1, 0, 4096, &[(at, 4096)]);
        assert_eq!(ok(r.call(d, &b, 24)), resp::OK_NODATA);
        let a = u32s(hdr(cmd::CTX_ATTACH_RESOURCE, ctx), &[id, 0]);
        assert_eq!(ok(r.call(d, &a, 24)), resp::OK_NODATA);
    }
    let init = u32s(xd(1, 0, 20), &[q, c, 1]);
    assert_eq!(
        ok(r.call(d, &submit(hdr(cmd::SUBMIT_3D, ctx), &init), 24)),
        resp::OK_NODATA
    );
    r.listener.accept().expect("rutabaga connected").0
}

/// A second INIT on a running context (rutabaga 0.1.85 replaced the state
/// its thread waits on, and destroying the context then joined that thread
/// for ever): refused, and the context, the device and its worker still
/// stop at once.
#[test]
fn a_second_init_is_refused_and_the_device_still_stops() {
    let mut d = Driver::new();
    let mut r = start(&d);
    let mut host = wayland_context(&r, &mut d, 1);
    for channel in [0, 1] {
        let again = u32s(xd(1, 0, 20), &[11, 12, channel]);
        let t = ok(r.call(&mut d, &submit(hdr(cmd::SUBMIT_3D, 1), &again), 24));
        assert_eq!(
            t,
            resp::ERR_INVALID_PARAMETER,
            "INIT again (channel {channel})"
        );
    }
    let t = Instant::now();
    assert_eq!(
        r.call(&mut d, &hdr(cmd::CTX_DESTROY, 1), 24)
            .map(|a| resp_type(&a.1)),
        Some(resp::OK_NODATA),
        "the context is destroyed (its thread joined)"
    );
    let mut rest = Vec::new();
    assert_eq!(host.read_to_end(&mut rest).unwrap(), 0);
    // And on a second context, never stopped by hand: the reset does it.
    let _host = wayland_context(&r, &mut d, 2);
    let again = u32s(xd(1, 0, 20), &[21, 22, 0]);
    let a = ok(r.call(&mut d, &submit(hdr(cmd::SUBMIT_3D, 2), &again), 24));
    assert_eq!(a, resp::ERR_INVALID_PARAMETER);
    assert!(r.gpu.reset(), "the worker stopped");
    assert!(t.elapsed() < Duration::from_secs(4), "{:?}", t.elapsed());
}

fn open_fds() -> usize {
    std::fs::read_dir("/proc/self/fd").unwrap().count()
}

/// SENDs with a read pipe rutabaga would refuse after making the pipe
/// (0.1.85 kept each one's read end until the context went): refused first,
/// so no host pipe is left per command; a good one still works.
#[test]
fn refused_read_pipes_leave_no_host_pipe_behind() {
    let mut d = Driver::new();
    let r = start(&d);
    let host = wayland_context(&r, &mut d, 1);
    let pipe_send = |ids: &[(u32, u32)]| {
        let mut b = u32s(xd(4, 0, 353), &[ids.len() as u32, 1]);
        b.resize(352, 0);
        b.push(b'p');
        for (i, &(id, ty)) in ids.iter().enumerate() {
            b[16 + 4 * i..20 + 4 * i].copy_from_slice(&id.to_le_bytes());
            b[128 + 4 * i..132 + 4 * i].copy_from_slice(&ty.to_le_bytes());
        }
        submit(hdr(cmd::SUBMIT_3D, 1), &b)
    };
    let before = open_fds();
    // 300 SENDs: past every ring's wrap.
    for i in 0..300u32 {
        let bad = match i % 3 {
            0 => pipe_send(&[(0x1234, 3)]),
            1 => pipe_send(&[(0x8000_0005 + i, 3)]),
            _ => pipe_send(&[(0x8000_0001, 3), (0x8000_0002, 3)]),
        };
        let t = ok(r.call(&mut d, &bad, 24));
        assert!(t >= resp::ERR_UNSPEC, "SEND {i}: {t:#x}");
    }
    let grown = open_fds().saturating_sub(before);
    assert!(grown < 20, "{grown} fds more after 300 refused pipe SENDs");
    // The id the host assigns goes through; the host gets the write end.
    let good = pipe_send(&[(0x8000_0001, 3)]);
    assert_eq!(ok(r.call(&mut d, &good, 24)), resp::OK_NODATA);
    host.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    let (data, fds) = recv_fd(&host);
    assert_eq!((data.as_slice(), fds.len()), (&b"p"[..], 1));
}

/// Host blobs are host memory, sparse until touched: what is capped is
/// what the guest has made real — half its RAM (8 of 16 MiB here) —, not
/// what it declared (an honest terminal declares a 512 MiB pool); a blob
/// keeps what it was given when unmapped, and UNREF gives back.
#[test]
fn host_blobs_are_capped_at_half_the_guests_memory_touched() {
    let mut d = Driver::new();
    let r = start(&d);
    assert_eq!(ok(r.call(&mut d, &ctx_create(1), 24)), resp::OK_NODATA);
    for (id, at) in [(1, QUERY_RING), (2, CHANNEL_RING)] {
        let b = create_blob(0, id, 1, 1, 0, 4096, &[(at, 4096)]);
        assert_eq!(ok(r.call(&mut d, &b, 24)), resp::OK_NODATA);
        let a = u32s(hdr(cmd::CTX_ATTACH_RESOURCE, 1), &[id, 0]);
        assert_eq!(ok(r.call(&mut d, &a, 24)), resp::OK_NODATA);
    }
    let init = u32s(xd(1, 0, 20), &[1, 2, 0]);
    assert_eq!(
        ok(r.call(&mut d, &submit(hdr(cmd::SUBMIT_3D, 1), &init), 24)),
        resp::OK_NODATA
    );
    // 4 MiB as one R8 row.
    let size = 4u64 << 20;
    let req = u32s(xd(2, 0, 24), &[size as u32, 1, 0x2020_3852, 0x11]);
    let a = ok(r.call(
        &mut d,
        &submit(fenced(cmd::SUBMIT_3D, 1, 1, Some(0)), &req),
        24,
    ));
    assert_eq!(a, resp::OK_NODATA);
    let reqs = d.answer(QUERY_RING, 64);
    assert_eq!(u64::from_le_bytes(reqs[40..48].try_into().unwrap()), size);
    let blob_id = u64::from(u32::from_le_bytes(reqs[48..52].try_into().unwrap()));
    // Declared but untouched: any number (four here, 16 MiB) is fine.
    for id in 100..104 {
        let c = create_blob(1, id, 2, 3, blob_id, size, &[]);
        assert_eq!(
            ok(r.call(&mut d, &c, 24)),
            resp::OK_NODATA,
            "sparse blob {id}"
        );
    }
    // Touched through the window: two fill the 8 MiB.
    let touch = |r: &Running, id: u32| {
        let live = r.mapper.live.lock().unwrap();
        let (_, host, len, _) = *live
            .values()
            .find(|m| m.0 == WINDOW + u64::from(id - 100) * size)
            .unwrap();
        for off in (0..len).step_by(4096) {
            // SAFETY: the device keeps this mapping alive while mapped.
            unsafe { std::ptr::write_volatile((host + off) as *mut u8, 1) };
        }
    };
    for id in [100, 101] {
        let m = map_blob(id, u64::from(id - 100) * size);
        assert_eq!(ok(r.call(&mut d, &m, 32)), resp::OK_MAP_INFO, "map {id}");
        touch(&r, id);
    }
    // Full: no new blob, no new mapping.
    let c = create_blob(1, 104, 2, 3, blob_id, size, &[]);
    assert_eq!(ok(r.call(&mut d, &c, 24)), resp::ERR_OUT_OF_MEMORY);
    let m = map_blob(102, 2 * size);
    assert_eq!(ok(r.call(&mut d, &m, 32)), resp::ERR_OUT_OF_MEMORY);
    // Unmapped, a touched blob still counts; freed, it does not.
    let unmap = u32s(hdr(cmd::RESOURCE_UNMAP_BLOB, 0), &[101, 0]);
    assert_eq!(ok(r.call(&mut d, &unmap, 24)), resp::OK_NODATA);
    assert_eq!(ok(r.call(&mut d, &c, 24)), resp::ERR_OUT_OF_MEMORY);
    let unref = u32s(hdr(cmd::RESOURCE_UNREF, 0), &[101, 0]);
    assert_eq!(ok(r.call(&mut d, &unref, 24)), resp::OK_NODATA);
    assert_eq!(ok(r.call(&mut d, &c, 24)), resp::OK_NODATA, "room again");
}

/// Fenced answers are bounded by the queue: a ring's fence ids must grow
/// (rutabaga queues a job per ring-1 fence), and a descriptor made
/// available again while its answer is parked breaks the queue (needs
/// reset) instead of being parked twice.
#[test]
fn parked_answers_stay_bounded_by_the_queue() {
    let mut d = Driver::new();
    let r = start(&d);
    let _host = wayland_context(&r, &mut d, 1);
    let poll = |fence| {
        submit(
            fenced(cmd::SUBMIT_3D, 1, fence, Some(1)),
            &u32s(xd(3, 1, 16), &[0, 0]),
        )
    };
    let (head, _) = d.push(&poll(10), 24);
    r.notify.write(1).unwrap();
    // A fence not after the ring's last: refused at once.
    for f in [10, 9, 1] {
        let t = ok(r.call(&mut d, &poll(f), 24));
        assert_eq!(t, resp::ERR_INVALID_PARAMETER, "fence {f}");
    }
    assert_eq!(d.used_len(head), None, "the POLL waits");
    // A ring fence of a context that does not exist (on a command that
    // otherwise succeeds) is refused: each would be remembered for ever.
    for ctx in [7, 8, 9] {
        let flush = u32s(fenced(cmd::RESOURCE_FLUSH, ctx, 1, Some(1)), &[0; 6]);
        let t = ok(r.call(&mut d, &flush, 24));
        assert_eq!(t, resp::ERR_INVALID_PARAMETER, "context {ctx}");
    }
    assert!(!r.interrupt.needs_reset());
    d.repost(head);
    r.notify.write(1).unwrap();
    let t = Instant::now();
    while !r.interrupt.needs_reset() {
        assert!(t.elapsed() < Duration::from_secs(5), "no needs-reset");
        std::thread::sleep(Duration::from_millis(5));
    }
}

/// Calls past the descriptor table's wrap (128 two-descriptor chains), the
/// avail ring's (256) and round again are each answered, under their own
/// head. (Past 128 the harness used to see an answer under head 1: the
/// mock's used ring lay inside its avail ring; see `Driver::queue`.)
#[test]
fn calls_past_every_ring_wrap_are_each_answered() {
    let mut d = Driver::new();
    let r = start(&d);
    for i in 0..600 {
        let (len, a) = r
            .call(&mut d, &hdr(cmd::GET_DISPLAY_INFO, 0), 408)
            .unwrap_or_else(|| panic!("call {i} was not answered"));
        assert_eq!(
            (len, resp_type(&a)),
            (408, resp::OK_DISPLAY_INFO),
            "call {i}"
        );
    }
}

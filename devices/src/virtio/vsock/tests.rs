//! Muxer tests over real guest memory and split queues (driven the way the
//! Linux driver drives them) and real Unix sockets.

use std::io::{ErrorKind, Read, Write};
use std::os::fd::AsRawFd;
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::PathBuf;

use virtio_queue::desc::split::Descriptor as SplitDescriptor;
use virtio_queue::desc::RawDescriptor;
use virtio_queue::mock::MockSplitQueue;
use virtio_queue::{Queue, QueueT};
use vm_memory::{Bytes, GuestAddress, GuestMemoryMmap};
use vmm_sys_util::epoll::EpollEvent;

use super::muxer::*;
use crate::GuestMemory;

const CID: u64 = 3;
const HDR: usize = 44;
const F_NEXT: u16 = 1;
const F_WRITE: u16 = 2;
const TX_BUF: u64 = 0x10_0000;
const RX_BUF: u64 = 0x20_0000;
const RX_DATA: u64 = 0x30_0000;
const QSIZE: u16 = 256;

struct Hdr {
    src_cid: u64,
    dst_cid: u64,
    src_port: u32,
    dst_port: u32,
    len: u32,
    ty: u16,
    op: u16,
    flags: u32,
    buf_alloc: u32,
    fwd_cnt: u32,
}

impl Hdr {
    fn guest(src_port: u32, dst_port: u32, op: u16) -> Self {
        Self {
            src_cid: CID,
            dst_cid: HOST_CID,
            src_port,
            dst_port,
            len: 0,
            ty: TYPE_STREAM,
            op,
            flags: 0,
            buf_alloc: 1 << 20,
            fwd_cnt: 0,
        }
    }

    fn bytes(&self) -> [u8; HDR] {
        let mut b = [0u8; HDR];
        b[0..8].copy_from_slice(&self.src_cid.to_le_bytes());
        b[8..16].copy_from_slice(&self.dst_cid.to_le_bytes());
        b[16..20].copy_from_slice(&self.src_port.to_le_bytes());
        b[20..24].copy_from_slice(&self.dst_port.to_le_bytes());
        b[24..28].copy_from_slice(&self.len.to_le_bytes());
        b[28..30].copy_from_slice(&self.ty.to_le_bytes());
        b[30..32].copy_from_slice(&self.op.to_le_bytes());
        b[32..36].copy_from_slice(&self.flags.to_le_bytes());
        b[36..40].copy_from_slice(&self.buf_alloc.to_le_bytes());
        b[40..44].copy_from_slice(&self.fwd_cnt.to_le_bytes());
        b
    }

    fn parse(b: &[u8]) -> Self {
        let u32_at = |o: usize| u32::from_le_bytes(b[o..o + 4].try_into().unwrap());
        let u64_at = |o: usize| u64::from_le_bytes(b[o..o + 8].try_into().unwrap());
        let u16_at = |o: usize| u16::from_le_bytes(b[o..o + 2].try_into().unwrap());
        Self {
            src_cid: u64_at(0),
            dst_cid: u64_at(8),
            src_port: u32_at(16),
            dst_port: u32_at(20),
            len: u32_at(24),
            ty: u16_at(28),
            op: u16_at(30),
            flags: u32_at(32),
            buf_alloc: u32_at(36),
            fwd_cnt: u32_at(40),
        }
    }
}

/// The guest driver's side: both queues and their descriptor allocation.
struct Guest<'a> {
    mem: &'a GuestMemory,
    rxm: MockSplitQueue<'a, GuestMemory>,
    txm: MockSplitQueue<'a, GuestMemory>,
    rx: Queue,
    tx: Queue,
    rx_next: u16,
    tx_next: u16,
    rx_seen: u16,
}

fn add_chain(m: &MockSplitQueue<'_, GuestMemory>, next: &mut u16, descs: &[(u64, u32, bool)]) {
    if *next as usize + descs.len() > QSIZE as usize {
        *next = 0;
    }
    let base = *next;
    let raw: Vec<RawDescriptor> = descs
        .iter()
        .enumerate()
        .map(|(i, &(a, l, w))| {
            let last = i + 1 == descs.len();
            let flags = if w { F_WRITE } else { 0 } | if last { 0 } else { F_NEXT };
            RawDescriptor::from(SplitDescriptor::new(a, l, flags, base + i as u16 + 1))
        })
        .collect();
    m.add_desc_chains(&raw, base).unwrap();
    *next += descs.len() as u16;
}

impl<'a> Guest<'a> {
    fn new(mem: &'a GuestMemory) -> Self {
        let rxm = MockSplitQueue::create(mem, GuestAddress(0), QSIZE);
        let txm = MockSplitQueue::create(mem, GuestAddress(0x8000), QSIZE);
        let rx = rxm.create_queue().unwrap();
        let tx = txm.create_queue().unwrap();
        Self {
            mem,
            rxm,
            txm,
            rx,
            tx,
            rx_next: 0,
            tx_next: 0,
            rx_seen: 0,
        }
    }

    fn send(&mut self, mux: &mut Muxer, h: Hdr, data: &[u8]) {
        let mut h = h;
        h.len = data.len() as u32;
        self.mem
            .write_slice(&h.bytes(), GuestAddress(TX_BUF))
            .unwrap();
        self.mem
            .write_slice(data, GuestAddress(TX_BUF + 0x1000))
            .unwrap();
        let mut d = vec![(TX_BUF, HDR as u32, false)];
        if !data.is_empty() {
            d.push((TX_BUF + 0x1000, data.len() as u32, false));
        }
        add_chain(&self.txm, &mut self.tx_next, &d);
        assert!(mux.process_tx(self.mem, &mut self.tx).unwrap());
    }

    /// Offers one rx buffer and lets the muxer fill it.
    fn recv(&mut self, mux: &mut Muxer) -> Option<(Hdr, Vec<u8>)> {
        add_chain(
            &self.rxm,
            &mut self.rx_next,
            &[(RX_BUF, HDR as u32, true), (RX_DATA, 4096, true)],
        );
        mux.fill_rx(self.mem, &mut self.rx).unwrap();
        let used = self.rxm.used().idx().load();
        if used == self.rx_seen {
            // Take the offered buffer back out of the avail ring.
            let idx = self.rxm.avail().idx().load();
            self.rxm.avail().idx().store(idx.wrapping_sub(1));
            self.rx_next -= 2;
            return None;
        }
        self.rx_seen = used;
        let mut b = [0u8; HDR];
        self.mem.read_slice(&mut b, GuestAddress(RX_BUF)).unwrap();
        let h = Hdr::parse(&b);
        let mut data = vec![0u8; h.len as usize];
        self.mem
            .read_slice(&mut data, GuestAddress(RX_DATA))
            .unwrap();
        Some((h, data))
    }
}

fn uid() -> u32 {
    // SAFETY: getuid has no preconditions.
    unsafe { libc::getuid() }
}

fn mem() -> GuestMemory {
    GuestMemoryMmap::from_ranges(&[(GuestAddress(0), 0x40_0000)]).unwrap()
}

/// Dispatches whatever host-side events are ready.
fn pump(mux: &mut Muxer) {
    for _ in 0..3 {
        let mut ev = [EpollEvent::default(); 64];
        let n = mux.epoll().wait(50, &mut ev).unwrap();
        for e in &ev[..n] {
            mux.host_event(e.data(), e.event_set());
        }
    }
}

struct Env {
    _dir: tempfile::TempDir,
    path: PathBuf,
    mux: Muxer,
}

fn env() -> Env {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("v.sock");
    let l = bind(&path).unwrap();
    let mux = Muxer::new(CID, path.clone(), Some(l), uid()).unwrap();
    Env {
        _dir: dir,
        path,
        mux,
    }
}

fn port_path(p: &std::path::Path, port: u32) -> PathBuf {
    PathBuf::from(format!("{}_{port}", p.display()))
}

/// Guest connects to host port 52 (`PATH_52`); returns the host's stream.
fn guest_connect(e: &mut Env, g: &mut Guest) -> UnixStream {
    let srv = UnixListener::bind(port_path(&e.path, 52)).unwrap();
    g.send(&mut e.mux, Hdr::guest(1000, 52, op::REQUEST), &[]);
    let (h, _) = g.recv(&mut e.mux).expect("a reply");
    assert_eq!(
        (h.op, h.src_port, h.dst_port, h.dst_cid),
        (op::RESPONSE, 52, 1000, CID)
    );
    assert_eq!(h.buf_alloc, BUF_ALLOC);
    let (s, _) = srv.accept().unwrap();
    s
}

#[test]
fn guest_initiated_stream_echoes_both_ways() {
    let mut e = env();
    let m = mem();
    let mut g = Guest::new(&m);
    let mut host = guest_connect(&mut e, &mut g);
    g.send(&mut e.mux, Hdr::guest(1000, 52, op::RW), b"hello host");
    let mut b = [0u8; 10];
    host.read_exact(&mut b).unwrap();
    assert_eq!(&b, b"hello host");
    host.write_all(b"hello guest").unwrap();
    pump(&mut e.mux);
    let mut got = None;
    for _ in 0..4 {
        if let Some((h, d)) = g.recv(&mut e.mux) {
            if h.op == op::RW {
                got = Some((h, d));
                break;
            }
        }
    }
    let (h, d) = got.expect("data for the guest");
    assert_eq!((h.src_port, h.dst_port, h.ty), (52, 1000, TYPE_STREAM));
    assert_eq!(d, b"hello guest");
    // The host half-closes: the guest is told, and can still send.
    host.shutdown(std::net::Shutdown::Write).unwrap();
    pump(&mut e.mux);
    let (h, _) = g.recv(&mut e.mux).expect("shutdown");
    assert_eq!((h.op, h.flags), (op::SHUTDOWN, SHUTDOWN_SEND));
    g.send(&mut e.mux, Hdr::guest(1000, 52, op::RW), b"tail");
    let mut b = [0u8; 4];
    host.read_exact(&mut b).unwrap();
    assert_eq!(&b, b"tail");
    // The guest finishes too: the host sees EOF and the stream is gone.
    let mut h = Hdr::guest(1000, 52, op::SHUTDOWN);
    h.flags = SHUTDOWN_SEND;
    g.send(&mut e.mux, h, &[]);
    assert_eq!(host.read(&mut b).unwrap(), 0);
    assert_eq!(e.mux.connections(), 0);
    let mut ops = Vec::new();
    while let Some((h, _)) = g.recv(&mut e.mux) {
        ops.push(h.op);
    }
    assert_eq!(ops.last(), Some(&op::RST), "{ops:?}");
}

#[test]
fn connecting_to_an_unbound_port_is_reset_at_once() {
    let mut e = env();
    let m = mem();
    let mut g = Guest::new(&m);
    g.send(&mut e.mux, Hdr::guest(1000, 77, op::REQUEST), &[]);
    let (h, _) = g.recv(&mut e.mux).expect("a reply");
    assert_eq!((h.op, h.src_port, h.dst_port), (op::RST, 77, 1000));
    assert_eq!(e.mux.connections(), 0);
}

#[test]
fn host_initiated_connect_protocol() {
    let mut e = env();
    let m = mem();
    let mut g = Guest::new(&m);
    let mut c = UnixStream::connect(&e.path).unwrap();
    c.write_all(b"CONNECT 5000\nearly-data").unwrap();
    pump(&mut e.mux);
    let (h, _) = g.recv(&mut e.mux).expect("request to the guest");
    assert_eq!(
        (h.op, h.dst_port, h.dst_cid, h.src_cid),
        (op::REQUEST, 5000, CID, HOST_CID)
    );
    assert!(h.src_port >= 1 << 30);
    let local = h.src_port;
    g.send(&mut e.mux, Hdr::guest(5000, local, op::RESPONSE), &[]);
    let mut line = [0u8; 64];
    let want = format!("OK {local}\n");
    c.read_exact(&mut line[..want.len()]).unwrap();
    assert_eq!(&line[..want.len()], want.as_bytes());
    // Bytes sent right after the CONNECT line are stream data, not lost.
    pump(&mut e.mux);
    let (h, d) = g.recv(&mut e.mux).expect("early data");
    assert_eq!((h.op, d.as_slice()), (op::RW, &b"early-data"[..]));
}

#[test]
fn garbage_instead_of_connect_closes_that_client_only() {
    let mut e = env();
    let m = mem();
    let mut g = Guest::new(&m);
    let mut bad = UnixStream::connect(&e.path).unwrap();
    bad.write_all(b"GET / HTTP/1.1\r\n\r\n").unwrap();
    let mut long = UnixStream::connect(&e.path).unwrap();
    long.write_all(&[b'A'; 100]).unwrap();
    pump(&mut e.mux);
    let mut b = [0u8; 8];
    for s in [&mut bad, &mut long] {
        match s.read(&mut b) {
            Ok(0) => {}
            Err(e) if e.kind() == ErrorKind::ConnectionReset => {}
            r => panic!("not closed: {r:?}"),
        }
    }
    assert!(g.recv(&mut e.mux).is_none(), "nothing reaches the guest");
    // A well-behaved client still works.
    let mut c = UnixStream::connect(&e.path).unwrap();
    c.write_all(b"CONNECT 9\n").unwrap();
    pump(&mut e.mux);
    assert_eq!(g.recv(&mut e.mux).unwrap().0.op, op::REQUEST);
}

/// A guest stream to host port 52 with 1000 bytes of guest credit, the host
/// peer having written 5000: returns the host's end once exactly the
/// guest's 1000 have reached its rx queue.
fn stream_with_credit_used_up(e: &mut Env, g: &mut Guest<'_>) -> UnixStream {
    let srv = UnixListener::bind(port_path(&e.path, 52)).unwrap();
    let mut h = Hdr::guest(1000, 52, op::REQUEST);
    h.buf_alloc = 1000;
    g.send(&mut e.mux, h, &[]);
    assert_eq!(g.recv(&mut e.mux).unwrap().0.op, op::RESPONSE);
    let (mut host, _) = srv.accept().unwrap();
    host.write_all(&[7u8; 5000]).unwrap();
    assert_eq!(rx_bytes(e, g), 1000, "exactly the guest's buffer");
    host
}

/// Bytes of host data the muxer puts in the guest's rx queue now (control
/// packets such as credit updates aside).
fn rx_bytes(e: &mut Env, g: &mut Guest<'_>) -> usize {
    let mut total = 0;
    for _ in 0..10 {
        pump(&mut e.mux);
        while let Some((h, d)) = g.recv(&mut e.mux) {
            if h.op == op::RW {
                total += d.len();
            }
        }
    }
    total
}

#[test]
fn host_data_respects_the_guest_credit() {
    let mut e = env();
    let m = mem();
    let mut g = Guest::new(&m);
    let _host = stream_with_credit_used_up(&mut e, &mut g);
    // The guest consumed it all: more flows.
    let mut h = Hdr::guest(1000, 52, op::CREDIT_UPDATE);
    h.buf_alloc = 1000;
    h.fwd_cnt = 1000;
    g.send(&mut e.mux, h, &[]);
    assert_eq!(rx_bytes(&mut e, &mut g), 1000);
}

/// Linux sends a CREDIT_UPDATE only when its free space falls below 64 KiB;
/// the rest of the time its credit travels in the headers of the packets it
/// sends anyway (data on the same stream, the network relay's ACK frames).
/// Credit arriving that way must resume a stream paused for lack of it.
#[test]
fn credit_in_a_data_packets_header_resumes_host_data() {
    let mut e = env();
    let m = mem();
    let mut g = Guest::new(&m);
    let mut host = stream_with_credit_used_up(&mut e, &mut g);
    // The guest consumed it all and says so in the header of its own data.
    let mut h = Hdr::guest(1000, 52, op::RW);
    h.buf_alloc = 1000;
    h.fwd_cnt = 1000;
    g.send(&mut e.mux, h, b"ack");
    let mut got = [0u8; 3];
    host.read_exact(&mut got).unwrap();
    assert_eq!(&got, b"ack");
    let more = rx_bytes(&mut e, &mut g);
    assert_eq!(more, 1000, "the credit in the data packet was not used");
}

/// `avail_event` of a queue (VIRTIO_F_RING_EVENT_IDX): after the used ring.
fn avail_event(m: &GuestMemory, q: &MockSplitQueue<'_, GuestMemory>) -> u16 {
    let at = q.used_addr().0 + 4 + 8 * u64::from(QSIZE);
    m.read_obj(GuestAddress(at)).unwrap()
}

/// With EVENT_IDX the guest kicks only when asked: the muxer asks for the
/// tx packet after the last it served, and for an rx kick only when data
/// waits and the guest has no buffer for it.
#[test]
fn with_event_idx_kicks_are_asked_for_only_where_needed() {
    let mut e = env();
    let m = mem();
    let mut g = Guest::new(&m);
    g.rx.set_event_idx(true);
    g.tx.set_event_idx(true);
    let mut host = guest_connect(&mut e, &mut g);
    // One tx packet served: the next one kicks.
    assert_eq!(avail_event(&m, &g.txm), 1);
    g.send(&mut e.mux, Hdr::guest(1000, 52, op::RW), b"hi");
    assert_eq!(avail_event(&m, &g.txm), 2);
    let mut got = [0u8; 2];
    host.read_exact(&mut got).unwrap();
    // rx: whatever the muxer had for the guest (a credit update) taken,
    // no more work: nothing asked.
    while g.recv(&mut e.mux).is_some() {}
    let before = avail_event(&m, &g.rxm);
    e.mux.fill_rx(&m, &mut g.rx).unwrap();
    assert_eq!(avail_event(&m, &g.rxm), before, "no work, no kick wanted");
    // Host data and no buffer: the guest's next buffer must kick.
    host.write_all(b"data").unwrap();
    pump(&mut e.mux);
    e.mux.fill_rx(&m, &mut g.rx).unwrap();
    let next = g.rxm.avail().idx().load();
    assert_ne!(next, before);
    assert_eq!(avail_event(&m, &g.rxm), next, "out of buffers: kick asked");
    let (h, d) = g.recv(&mut e.mux).expect("the data");
    assert_eq!((h.op, d.as_slice()), (op::RW, &b"data"[..]));
}

#[test]
fn a_guest_that_never_reads_rx_stalls_the_host_writer() {
    let mut e = env();
    let m = mem();
    let mut g = Guest::new(&m);
    let mut host = guest_connect(&mut e, &mut g);
    host.set_nonblocking(true).unwrap();
    let chunk = [1u8; 65536];
    let mut written = 0usize;
    for _ in 0..1000 {
        match host.write(&chunk) {
            Ok(n) => written += n,
            Err(err) if err.kind() == ErrorKind::WouldBlock => {
                pump(&mut e.mux);
                // Still blocked after the muxer ran: it is not draining into memory.
                match host.write(&chunk) {
                    Err(err) if err.kind() == ErrorKind::WouldBlock => break,
                    Ok(n) => written += n,
                    Err(err) => panic!("{err}"),
                }
            }
            Err(err) => panic!("{err}"),
        }
    }
    assert!(written < 16 << 20, "the host could write {written} bytes");
}

#[test]
fn a_guest_overrunning_its_credit_is_reset() {
    let mut e = env();
    let m = mem();
    let mut g = Guest::new(&m);
    let _host = guest_connect(&mut e, &mut g); // never reads
    let data = vec![3u8; 60000];
    let mut reset = false;
    for _ in 0..200 {
        g.send(&mut e.mux, Hdr::guest(1000, 52, op::RW), &data);
        while let Some((h, _)) = g.recv(&mut e.mux) {
            if h.op == op::RST {
                reset = true;
            }
        }
        if reset {
            break;
        }
    }
    assert!(reset);
    assert_eq!(e.mux.connections(), 0);
}

#[test]
fn malformed_packets_are_dropped() {
    let mut e = env();
    let m = mem();
    let mut g = Guest::new(&m);
    // Write-only tx head, a header shorter than 44 bytes, a length beyond the maximum.
    add_chain(&g.txm, &mut g.tx_next, &[(TX_BUF, HDR as u32, true)]);
    add_chain(&g.txm, &mut g.tx_next, &[(TX_BUF, 20, false)]);
    let mut h = Hdr::guest(1, 2, op::RW);
    h.len = MAX_PKT_DATA + 1;
    m.write_slice(&h.bytes(), GuestAddress(TX_BUF + 0x2000))
        .unwrap();
    add_chain(
        &g.txm,
        &mut g.tx_next,
        &[
            (TX_BUF + 0x2000, HDR as u32, false),
            (TX_BUF + 0x3000, 4096, false),
        ],
    );
    assert!(e.mux.process_tx(&m, &mut g.tx).unwrap());
    assert_eq!(g.txm.used().idx().load(), 3);
    // Wrong CIDs are dropped; an unknown type gets a reset.
    let mut h = Hdr::guest(1, 52, op::REQUEST);
    h.src_cid = 7;
    g.send(&mut e.mux, h, &[]);
    assert!(g.recv(&mut e.mux).is_none());
    let mut h = Hdr::guest(1, 52, op::REQUEST);
    h.ty = 2;
    g.send(&mut e.mux, h, &[]);
    assert_eq!(g.recv(&mut e.mux).unwrap().0.op, op::RST);
    // A device-readable rx buffer is consumed with length 0.
    g.send(&mut e.mux, Hdr::guest(1, 99, op::REQUEST), &[]);
    add_chain(&g.rxm, &mut g.rx_next, &[(RX_BUF, HDR as u32, false)]);
    e.mux.fill_rx(&m, &mut g.rx).unwrap();
    let last = g.rxm.used().idx().load() - 1;
    assert_eq!(
        g.rxm
            .used()
            .ring()
            .ref_at(last as usize)
            .unwrap()
            .load()
            .len(),
        0
    );
    assert_eq!(e.mux.connections(), 0);
}

/// Whether the muxer's epoll has anything ready right now.
fn ready_now(mux: &Muxer) -> usize {
    let mut ev = [EpollEvent::default(); 64];
    mux.epoll().wait(0, &mut ev).unwrap()
}

/// Review finding 1: a stream that is not polled for anything (no guest
/// credit, host EOF already seen, or RESPONSE still pending) stayed in the
/// epoll set with an empty mask, and epoll reports EPOLLHUP regardless: a
/// host peer that hung up woke the worker again and again.
#[test]
fn a_paused_stream_whose_host_peer_hangs_up_does_not_spin() {
    // No guest credit.
    let mut e = env();
    let m = mem();
    let mut g = Guest::new(&m);
    let srv = UnixListener::bind(port_path(&e.path, 52)).unwrap();
    let mut h = Hdr::guest(1000, 52, op::REQUEST);
    h.buf_alloc = 0;
    g.send(&mut e.mux, h, &[]);
    assert_eq!(g.recv(&mut e.mux).unwrap().0.op, op::RESPONSE);
    let (mut host, _) = srv.accept().unwrap();
    host.write_all(b"unread").unwrap();
    drop(host);
    pump(&mut e.mux);
    assert_eq!(ready_now(&e.mux), 0, "no credit");

    // Host EOF already seen and told to the guest, guest still open.
    let mut e = env();
    let m = mem();
    let mut g = Guest::new(&m);
    let host = guest_connect(&mut e, &mut g);
    host.shutdown(std::net::Shutdown::Write).unwrap();
    pump(&mut e.mux);
    assert_eq!(g.recv(&mut e.mux).unwrap().0.op, op::SHUTDOWN);
    drop(host);
    pump(&mut e.mux);
    assert_eq!(ready_now(&e.mux), 0, "after host EOF");

    // A host client whose REQUEST the guest has not answered yet.
    let mut e = env();
    let mut c = UnixStream::connect(&e.path).unwrap();
    c.write_all(b"CONNECT 5000\n").unwrap();
    pump(&mut e.mux);
    assert_eq!(e.mux.connections(), 1);
    drop(c);
    pump(&mut e.mux);
    assert_eq!(ready_now(&e.mux), 0, "RESPONSE pending");
}

/// Review finding 2: a guest connect to a host listener whose backlog is
/// full blocked the worker in connect(2) (and with it device reset and VM
/// exit). It now gets a reset at once.
#[test]
fn a_full_host_backlog_does_not_block_the_worker() {
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        let mut e = env();
        let m = mem();
        let mut g = Guest::new(&m);
        let srv = UnixListener::bind(port_path(&e.path, 52)).unwrap();
        // SAFETY: listen(2) on a socket we own, to shrink its backlog.
        assert_eq!(unsafe { libc::listen(srv.as_raw_fd(), 0) }, 0);
        let mut held = Vec::new();
        loop {
            let s = nonblocking_connect(&port_path(&e.path, 52));
            match s {
                Some(s) => held.push(s),
                None => break,
            }
        }
        g.send(&mut e.mux, Hdr::guest(1000, 52, op::REQUEST), &[]);
        let op = g.recv(&mut e.mux).map(|(h, _)| h.op);
        let _ = tx.send(op);
        drop(held);
    });
    let got = rx
        .recv_timeout(std::time::Duration::from_secs(10))
        .expect("the worker blocked in connect");
    assert_eq!(got, Some(op::RST));
}

/// A non-blocking connect from the test itself: `None` once the backlog is
/// full (EAGAIN).
fn nonblocking_connect(path: &std::path::Path) -> Option<std::os::fd::OwnedFd> {
    use std::os::fd::FromRawFd;
    use std::os::unix::ffi::OsStrExt;
    // SAFETY: plain socket/connect calls on a sockaddr_un we fill in; the
    // new fd is owned at once.
    unsafe {
        let fd = libc::socket(libc::AF_UNIX, libc::SOCK_STREAM | libc::SOCK_NONBLOCK, 0);
        assert!(fd >= 0);
        let fd = std::os::fd::OwnedFd::from_raw_fd(fd);
        let mut a: libc::sockaddr_un = std::mem::zeroed();
        a.sun_family = libc::AF_UNIX as libc::sa_family_t;
        for (d, s) in a.sun_path.iter_mut().zip(path.as_os_str().as_bytes()) {
            *d = *s as libc::c_char;
        }
        let r = libc::connect(
            fd.as_raw_fd(),
            (&a as *const libc::sockaddr_un).cast(),
            std::mem::size_of::<libc::sockaddr_un>() as libc::socklen_t,
        );
        (r == 0).then_some(fd)
    }
}

/// Review finding 3: a payload split over several descriptors (the spec
/// allows any split; Linux sends fragmented skbs that way) was dropped
/// without a word, silently corrupting the stream. It is gathered now, and
/// a chain shorter than its header's length resets the stream.
#[test]
fn a_payload_over_several_descriptors_arrives_whole() {
    let mut e = env();
    let m = mem();
    let mut g = Guest::new(&m);
    let mut host = guest_connect(&mut e, &mut g);
    host.set_read_timeout(Some(std::time::Duration::from_secs(5)))
        .unwrap();
    let mut h = Hdr::guest(1000, 52, op::RW);
    h.len = 10;
    m.write_slice(&h.bytes(), GuestAddress(TX_BUF)).unwrap();
    m.write_slice(b"hello", GuestAddress(TX_BUF + 0x1000))
        .unwrap();
    m.write_slice(b" host", GuestAddress(TX_BUF + 0x2000))
        .unwrap();
    add_chain(
        &g.txm,
        &mut g.tx_next,
        &[
            (TX_BUF, HDR as u32, false),
            (TX_BUF + 0x1000, 5, false),
            (TX_BUF + 0x2000, 5, false),
        ],
    );
    assert!(e.mux.process_tx(&m, &mut g.tx).unwrap());
    let mut b = [0u8; 10];
    host.read_exact(&mut b).unwrap();
    assert_eq!(&b, b"hello host");
    // Header and payload in one descriptor (Linux 6.2+) still works.
    let mut h = Hdr::guest(1000, 52, op::RW);
    h.len = 4;
    m.write_slice(&h.bytes(), GuestAddress(TX_BUF)).unwrap();
    m.write_slice(b"more", GuestAddress(TX_BUF + HDR as u64))
        .unwrap();
    add_chain(&g.txm, &mut g.tx_next, &[(TX_BUF, HDR as u32 + 4, false)]);
    e.mux.process_tx(&m, &mut g.tx).unwrap();
    let mut b = [0u8; 4];
    host.read_exact(&mut b).unwrap();
    assert_eq!(&b, b"more");
    // Descriptors that hold less than the header says: the stream is reset.
    let mut h = Hdr::guest(1000, 52, op::RW);
    h.len = 100;
    m.write_slice(&h.bytes(), GuestAddress(TX_BUF)).unwrap();
    add_chain(
        &g.txm,
        &mut g.tx_next,
        &[(TX_BUF, HDR as u32, false), (TX_BUF + 0x1000, 60, false)],
    );
    e.mux.process_tx(&m, &mut g.tx).unwrap();
    assert_eq!(e.mux.connections(), 0);
    let mut ops = Vec::new();
    while let Some((h, _)) = g.recv(&mut e.mux) {
        ops.push(h.op);
    }
    assert_eq!(ops.last(), Some(&op::RST), "{ops:?}");
}

/// Frames as the network's stream carries them: 4-byte big-endian length,
/// then the frame (each frame's bytes tell its index and position).
fn frames(sizes: &[usize]) -> (Vec<u8>, Vec<usize>) {
    let mut stream = Vec::new();
    let mut ends = Vec::new();
    for (i, &n) in sizes.iter().enumerate() {
        stream.extend_from_slice(&(n as u32).to_be_bytes());
        stream.extend((0..n).map(|k| (i * 7 + k) as u8));
        ends.push(stream.len());
    }
    (stream, ends)
}

/// Reads what the host peer has now, without waiting.
fn read_now(host: &mut UnixStream, into: &mut Vec<u8>) {
    host.set_nonblocking(true).unwrap();
    let mut b = vec![0u8; 1 << 20];
    loop {
        match host.read(&mut b) {
            Ok(0) => break,
            Ok(n) => into.extend_from_slice(&b[..n]),
            Err(e) if e.kind() == ErrorKind::WouldBlock => break,
            Err(e) => panic!("{e}"),
        }
    }
    host.set_nonblocking(false).unwrap();
}

/// A muxer whose host port 52 is framed.
fn framed_env() -> Env {
    let mut e = env();
    e.mux = Muxer::new(CID, e.path.clone(), None, uid())
        .unwrap()
        .frame_ports(&[52]);
    e
}

#[test]
fn a_framed_stream_reaches_the_host_in_whole_frames_however_the_guest_cuts_it() {
    let mut e = framed_env();
    let m = mem();
    let mut g = Guest::new(&m);
    let mut host = guest_connect(&mut e, &mut g);
    let (stream, ends) = frames(&[14, 1500, 16000, 60, 15, 16000, FRAME_MAX, 14]);
    let mut got = Vec::new();
    // Packets cut anywhere: inside a length, right after it, mid-frame.
    let mut rest = &stream[..];
    for cut in [1, 2, 3, 4093, 3000, 5, 16003, 7000].iter().cycle() {
        if rest.is_empty() {
            break;
        }
        let (part, r) = rest.split_at((*cut).min(rest.len()));
        rest = r;
        g.send(&mut e.mux, Hdr::guest(1000, 52, op::RW), part);
        read_now(&mut host, &mut got);
        assert!(
            got.is_empty() || ends.contains(&got.len()),
            "the host saw {} bytes: not a frame boundary",
            got.len()
        );
        while g.recv(&mut e.mux).is_some() {}
    }
    assert_eq!(got, stream);
    assert_eq!(e.mux.connections(), 1);
}

#[test]
fn a_frame_length_out_of_range_resets_only_that_stream() {
    for bad in [0u32, 13, FRAME_MAX as u32 + 1, u32::MAX] {
        let mut e = framed_env();
        let m = mem();
        let mut g = Guest::new(&m);
        let mut host = guest_connect(&mut e, &mut g);
        let (good, _) = frames(&[100]);
        let mut data = good.clone();
        data.extend_from_slice(&bad.to_be_bytes());
        data.extend_from_slice(&[1; 20]);
        g.send(&mut e.mux, Hdr::guest(1000, 52, op::RW), &data);
        assert_eq!(e.mux.connections(), 0, "length {bad}");
        let mut got = Vec::new();
        host.read_to_end(&mut got).unwrap();
        assert_eq!(got, good, "the frame before the bad one got through");
        let mut ops = Vec::new();
        while let Some((h, _)) = g.recv(&mut e.mux) {
            ops.push(h.op);
        }
        assert_eq!(ops.last(), Some(&op::RST), "{ops:?}");
    }
}

#[test]
fn framed_data_survives_a_host_peer_that_reads_late() {
    let mut e = framed_env();
    let m = mem();
    let mut g = Guest::new(&m);
    let mut host = guest_connect(&mut e, &mut g);
    let (stream, ends) = frames(&[FRAME_MAX; 18]);
    let mut got = Vec::new();
    let mut sent = 0;
    while sent < stream.len() {
        // Up to three largest frames before the host reads (within the
        // guest's credit): the host socket fills and writes come out short.
        let burst_end = (sent + 3 * (FRAME_MAX + 4)).min(stream.len());
        for p in stream[sent..burst_end].chunks(MAX_PKT_DATA as usize) {
            g.send(&mut e.mux, Hdr::guest(1000, 52, op::RW), p);
        }
        sent = burst_end;
        for _ in 0..50 {
            read_now(&mut host, &mut got);
            pump(&mut e.mux);
            while g.recv(&mut e.mux).is_some() {}
            if got.len() == sent {
                break;
            }
        }
        assert_eq!(got.len(), sent, "everything sent so far arrived");
        assert!(ends.contains(&got.len()));
    }
    assert_eq!(got, stream);
}

/// The environment variable that makes
/// [`framed_traffic_runs_under_the_worker_filter`] the filtered child.
const FILTER_CHILD: &str = "VSOCK_TEST_FILTER_CHILD";

/// Framed traffic whose frames wrap around the stream's buffer, with the
/// worker thread's seccomp filter installed (in a child process: a
/// forbidden syscall ends the process).
#[test]
fn framed_traffic_runs_under_the_worker_filter() {
    let Some(parent) = std::env::var_os(FILTER_CHILD) else {
        let dir = tempfile::tempdir().unwrap();
        let out = std::process::Command::new(std::env::current_exe().unwrap())
            .args([
                "--exact",
                "virtio::vsock::tests::framed_traffic_runs_under_the_worker_filter",
                "--nocapture",
                "--test-threads=1",
            ])
            .env(FILTER_CHILD, dir.path())
            .output()
            .unwrap();
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(
            out.status.success() && String::from_utf8_lossy(&out.stdout).contains("1 passed"),
            "{:?}\n{err}",
            out.status
        );
        return;
    };
    // Everything that touches the file system first: the filter allows none
    // of it (the directory is left to the parent to remove).
    let dir = tempfile::tempdir_in(parent).unwrap().keep();
    let path = dir.join("v.sock");
    let mux = Muxer::new(CID, path.clone(), None, uid())
        .unwrap()
        .frame_ports(&[52]);
    let mut e = Env {
        _dir: tempfile::tempdir_in(&dir).unwrap(),
        path,
        mux,
    };
    let m = mem();
    let mut g = Guest::new(&m);
    let mut host = guest_connect(&mut e, &mut g);
    host.set_nonblocking(true).unwrap();
    seccomp_policies::install(
        seccomp_policies::ThreadKind::VirtioVsock,
        seccomp_policies::Mode::Kill,
    )
    .unwrap();
    // Odd frame sizes and a host that reads late: the buffer fills, drains
    // from its front and wraps, and frames straddle its end.
    let (stream, _) = frames(&[
        FRAME_MAX, 40_000, 777, FRAME_MAX, 30_001, 14, 65_000, 50_000, FRAME_MAX, 12_345,
    ]);
    let mut got = Vec::new();
    let mut buf = vec![0u8; 100_000];
    for p in stream.chunks(50_000) {
        g.send(&mut e.mux, Hdr::guest(1000, 52, op::RW), p);
        // Read a little only: what is left stays in the buffer.
        if let Ok(n) = host.read(&mut buf) {
            got.extend_from_slice(&buf[..n]);
        }
        pump(&mut e.mux);
        while g.recv(&mut e.mux).is_some() {}
    }
    for _ in 0..200 {
        match host.read(&mut buf) {
            Ok(n) if n > 0 => got.extend_from_slice(&buf[..n]),
            _ => {}
        }
        pump(&mut e.mux);
        while g.recv(&mut e.mux).is_some() {}
        if got.len() == stream.len() {
            break;
        }
    }
    assert!(
        got == stream,
        "{} of {} bytes arrived intact",
        got.len(),
        stream.len()
    );
    // And host → guest, several rx buffers per read.
    let sent = pattern(20 * 4096 + 7);
    host.set_nonblocking(false).unwrap();
    host.write_all(&sent).unwrap();
    pump(&mut e.mux);
    let back: Vec<u8> = g
        .recv_batch(&mut e.mux, 32, None)
        .into_iter()
        .flat_map(|(_, _, d)| d)
        .collect();
    assert!(
        back == sent,
        "{} of {} bytes came back",
        back.len(),
        sent.len()
    );
    std::mem::forget(e);
}

/// Review finding: a framed stream holding only part of a frame asked for
/// EPOLLOUT, which a writable host socket reports at once and for ever:
/// the worker spun until the guest sent the rest (a hostile guest never
/// does).
#[test]
fn a_framed_stream_with_half_a_frame_does_not_spin() {
    let mut e = framed_env();
    let m = mem();
    let mut g = Guest::new(&m);
    let mut host = guest_connect(&mut e, &mut g);
    let (stream, _) = frames(&[1000]);
    let mut got = Vec::new();
    for part in [&stream[..2], &stream[2..600]] {
        g.send(&mut e.mux, Hdr::guest(1000, 52, op::RW), part);
        while g.recv(&mut e.mux).is_some() {}
        pump(&mut e.mux);
        assert_eq!(ready_now(&e.mux), 0, "{} bytes of a frame", part.len());
        read_now(&mut host, &mut got);
        assert!(got.is_empty());
    }
    g.send(&mut e.mux, Hdr::guest(1000, 52, op::RW), &stream[600..]);
    read_now(&mut host, &mut got);
    assert_eq!(got, stream);
}

/// CI of 7fc4bd2..5a60415 (a guest's last bytes lost): a guest that closes
/// (SHUTDOWN with both flags, as Linux sends on close) while its data still
/// waits for a host peer that reads slowly must not lose that data: the
/// stream stays until it is delivered, then the host sees EOF.
#[test]
fn data_waiting_for_a_slow_host_reader_survives_the_guests_close() {
    let mut e = env();
    let m = mem();
    let mut g = Guest::new(&m);
    let mut host = guest_connect(&mut e, &mut g);
    // All the credit the guest has: more than a Unix socket holds.
    let chunk: Vec<u8> = (0..16 * 1024u32).map(|i| (i % 251) as u8).collect();
    let chunks = BUF_ALLOC as usize / chunk.len();
    for _ in 0..chunks {
        g.send(&mut e.mux, Hdr::guest(1000, 52, op::RW), &chunk);
    }
    let mut h = Hdr::guest(1000, 52, op::SHUTDOWN);
    h.flags = SHUTDOWN_SEND | SHUTDOWN_RCV;
    g.send(&mut e.mux, h, &[]);
    host.set_read_timeout(Some(std::time::Duration::from_secs(5)))
        .unwrap();
    let mut got = Vec::new();
    let mut buf = vec![0u8; 64 * 1024];
    loop {
        pump(&mut e.mux);
        match host.read(&mut buf) {
            Ok(0) => break,
            Ok(n) => got.extend_from_slice(&buf[..n]),
            Err(err) => panic!("after {} bytes: {err}", got.len()),
        }
    }
    assert_eq!(got.len(), chunks * chunk.len(), "every byte, then EOF");
    assert!(got.chunks(chunk.len()).all(|c| c == chunk.as_slice()));
    pump(&mut e.mux);
    assert_eq!(e.mux.connections(), 0, "the stream is gone once delivered");
}

/// Where the batch tests' rx buffers live: header at the base, 4 KiB of
/// data 0x100 after it.
const BATCH_BUFS: u64 = 0x38_0000;

impl Guest<'_> {
    /// Offers `n` rx buffers (the one at `bad`, if any, read-only and so
    /// unusable), lets the muxer fill them in one go, and returns what it
    /// put in the used ring, in order: (buffer index, header, data).
    fn recv_batch(
        &mut self,
        mux: &mut Muxer,
        n: usize,
        bad: Option<usize>,
    ) -> Vec<(usize, Hdr, Vec<u8>)> {
        for i in 0..n {
            let base = BATCH_BUFS + i as u64 * 0x2000;
            let w = bad != Some(i);
            add_chain(
                &self.rxm,
                &mut self.rx_next,
                &[(base, HDR as u32, w), (base + 0x100, 4096, w)],
            );
        }
        mux.fill_rx(self.mem, &mut self.rx).unwrap();
        let used = self.rxm.used().idx().load();
        let mut out = Vec::new();
        while self.rx_seen != used {
            let slot = (self.rx_seen % QSIZE) as usize;
            let e = self.rxm.used().ring().ref_at(slot).unwrap().load();
            self.rx_seen = self.rx_seen.wrapping_add(1);
            // The head descriptor's address names the buffer (the rx
            // queue's descriptor table is at 0, 16 bytes per entry).
            let base: u64 = self
                .mem
                .read_obj(GuestAddress(u64::from(e.id()) * 16))
                .unwrap();
            let i = ((base - BATCH_BUFS) / 0x2000) as usize;
            if e.len() == 0 {
                out.push((i, Hdr::guest(0, 0, 0), Vec::new()));
                continue;
            }
            let mut b = [0u8; HDR];
            self.mem.read_slice(&mut b, GuestAddress(base)).unwrap();
            let h = Hdr::parse(&b);
            assert_eq!(e.len(), HDR as u32 + h.len, "used length = header + data");
            let mut data = vec![0u8; h.len as usize];
            self.mem
                .read_slice(&mut data, GuestAddress(base + 0x100))
                .unwrap();
            out.push((i, h, data));
        }
        out
    }
}

fn pattern(n: usize) -> Vec<u8> {
    (0..n).map(|i| (i % 251) as u8).collect()
}

/// Host data fills as many rx buffers as it needs in one read, in the
/// order the guest offered them, and the buffers it does not need stay the
/// guest's: the next data goes into the first of them.
#[test]
fn host_data_fills_several_rx_buffers_at_once_and_leaves_the_rest() {
    let mut e = env();
    let m = mem();
    let mut g = Guest::new(&m);
    let mut host = guest_connect(&mut e, &mut g);
    let sent = pattern(10 * 4096 + 100);
    host.write_all(&sent).unwrap();
    pump(&mut e.mux);
    let got = g.recv_batch(&mut e.mux, 16, None);
    assert_eq!(got.len(), 11, "ten full buffers and one with 100 bytes");
    let idx: Vec<usize> = got.iter().map(|(i, _, _)| *i).collect();
    assert_eq!(idx, (0..11).collect::<Vec<_>>(), "in the order offered");
    assert!(got
        .iter()
        .all(|(_, h, _)| h.op == op::RW && h.dst_port == 1000));
    let data: Vec<u8> = got.iter().flat_map(|(_, _, d)| d.clone()).collect();
    assert_eq!(data, sent);
    // The five left over are still available: the next data takes the
    // first of them (buffer 11), not a later one.
    host.write_all(b"next").unwrap();
    pump(&mut e.mux);
    let got = g.recv_batch(&mut e.mux, 0, None);
    assert_eq!(got.len(), 1);
    assert_eq!((got[0].0, got[0].2.as_slice()), (11, &b"next"[..]));
}

/// One read takes no more than the guest's credit, however many buffers
/// are offered.
#[test]
fn a_batch_stops_at_the_guests_credit() {
    let mut e = env();
    let m = mem();
    let mut g = Guest::new(&m);
    let srv = UnixListener::bind(port_path(&e.path, 52)).unwrap();
    let mut h = Hdr::guest(1000, 52, op::REQUEST);
    h.buf_alloc = 10_000;
    g.send(&mut e.mux, h, &[]);
    assert_eq!(g.recv(&mut e.mux).unwrap().0.op, op::RESPONSE);
    let (mut host, _) = srv.accept().unwrap();
    host.write_all(&pattern(50_000)).unwrap();
    pump(&mut e.mux);
    let got = g.recv_batch(&mut e.mux, 16, None);
    let lens: Vec<usize> = got.iter().map(|(_, _, d)| d.len()).collect();
    assert_eq!(lens, [4096, 4096, 1808]);
    let data: Vec<u8> = got.iter().flat_map(|(_, _, d)| d.clone()).collect();
    assert_eq!(data, pattern(50_000)[..10_000]);
}

/// An unusable rx buffer among good ones ends the batch before it; it is
/// returned unused, and the data goes on, in order, in the buffers after it.
#[test]
fn a_bad_rx_buffer_in_a_batch_is_returned_and_no_data_is_lost() {
    let mut e = env();
    let m = mem();
    let mut g = Guest::new(&m);
    let mut host = guest_connect(&mut e, &mut g);
    let sent = pattern(4 * 4096);
    host.write_all(&sent).unwrap();
    pump(&mut e.mux);
    let got = g.recv_batch(&mut e.mux, 6, Some(2));
    let idx: Vec<usize> = got.iter().map(|(i, _, _)| *i).collect();
    assert_eq!(
        idx,
        [0, 1, 2, 3, 4],
        "two filled, the bad one returned, two more"
    );
    assert!(got[2].2.is_empty(), "the bad buffer carries nothing");
    let data: Vec<u8> = got.iter().flat_map(|(_, _, d)| d.clone()).collect();
    assert_eq!(data, sent);
}

/// A guest rx buffer whose data area is empty can carry no data: it was
/// given back each time and the stream re-armed, with its data still
/// waiting, so the worker woke again and again while the guest did
/// nothing. It is now returned used (length 0), and the data waits for a
/// real buffer.
#[test]
fn an_rx_buffer_without_room_for_data_does_not_spin_the_worker() {
    let mut e = env();
    let m = mem();
    let mut g = Guest::new(&m);
    let mut host = guest_connect(&mut e, &mut g);
    host.write_all(b"waiting").unwrap();
    pump(&mut e.mux);
    add_chain(
        &g.rxm,
        &mut g.rx_next,
        &[(RX_BUF, HDR as u32, true), (RX_DATA, 0, true)],
    );
    e.mux.fill_rx(&m, &mut g.rx).unwrap();
    assert_eq!(
        g.rxm.used().idx().load(),
        g.rx_seen.wrapping_add(1),
        "returned used"
    );
    g.rx_seen = g.rx_seen.wrapping_add(1);
    let zero = g
        .rxm
        .used()
        .ring()
        .ref_at(usize::from(g.rx_seen.wrapping_sub(1) % QSIZE));
    assert_eq!(zero.unwrap().load().len(), 0);
    assert_eq!(ready_now(&e.mux), 0, "the stream must not wake the worker");
    let (h, d) = g
        .recv(&mut e.mux)
        .expect("the data, in the next real buffer");
    assert_eq!((h.op, d.as_slice()), (op::RW, &b"waiting"[..]));
}

/// `cmd` as uid 65534 (the test runs as root, as CI does).
fn as_other_user(args: &[&str]) -> std::process::Child {
    // SAFETY: geteuid has no preconditions.
    let euid = unsafe { libc::geteuid() };
    assert_eq!(euid, 0, "this test acts as another user: run it as root");
    std::process::Command::new("setpriv")
        .args(["--reuid", "65534", "--regid", "65534", "--clear-groups"])
        .args(args)
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .expect("setpriv and socat (.ci/run installs them)")
}

/// Another local user's sockets, where the VMM's vsock socket lives in a
/// directory they can write (`--vsock` in a shared place): their listener
/// for a guest port gets a reset instead of the guest's stream, and their
/// client of the VMM's socket never reaches the guest.
#[test]
fn another_users_host_peers_are_refused_both_ways() {
    use std::os::unix::fs::PermissionsExt;
    let mut e = env();
    let dir = e.path.parent().unwrap().to_path_buf();
    std::fs::set_permissions(&dir, std::fs::Permissions::from_mode(0o777)).unwrap();
    let theirs = port_path(&e.path, 52);
    let listen = format!("UNIX-LISTEN:{}", theirs.display());
    let mut server = as_other_user(&["socat", &listen, "-"]);
    let t = std::time::Instant::now();
    while !theirs.exists() {
        assert!(t.elapsed().as_secs() < 10, "socat did not listen");
        std::thread::sleep(std::time::Duration::from_millis(10));
    }
    let m = mem();
    let mut g = Guest::new(&m);
    g.send(&mut e.mux, Hdr::guest(1000, 52, op::REQUEST), &[]);
    let (h, _) = g.recv(&mut e.mux).expect("a reply");
    assert_eq!((h.op, h.src_port), (op::RST, 52), "their listener refused");
    let _ = server.kill();
    let _ = server.wait();
    // Their client of the VMM's own socket.
    let connect = format!("UNIX-CONNECT:{}", e.path.display());
    let mut client = as_other_user(&["socat", "-", &connect]);
    client
        .stdin
        .take()
        .unwrap()
        .write_all(b"CONNECT 5000\n")
        .unwrap();
    for _ in 0..20 {
        pump(&mut e.mux);
        assert!(
            g.recv(&mut e.mux).is_none(),
            "their CONNECT reached the guest"
        );
    }
    let _ = client.kill();
    let _ = client.wait();
    // Our own user's are served.
    std::fs::remove_file(&theirs).unwrap();
    let mut ours = guest_connect(&mut e, &mut g);
    g.send(&mut e.mux, Hdr::guest(1000, 52, op::RW), b"hi");
    let mut b = [0u8; 2];
    ours.read_exact(&mut b).unwrap();
}

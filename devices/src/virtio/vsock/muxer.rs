//! The host side of virtio-vsock: guest streams mapped onto Unix sockets with
//! Firecracker's protocol.
//!
//! - Host-initiated: a client connects to the listening socket `PATH`, writes
//!   `CONNECT <port>\n` and, once the guest accepts, reads `OK <host port>\n`.
//! - Guest-initiated to CID 2 port P: the muxer connects to `PATH_P`; nothing
//!   listening means the guest gets a reset at once.
//!
//! Flow control follows the virtio spec's credit scheme both ways: each host
//! stream has a buffer of [`BUF_ALLOC`] bytes for guest data the host peer has
//! not read yet (a guest that overruns the credit it was given gets a reset),
//! and host data is only read when the guest has credit and an rx buffer for
//! it, so a guest that never reads its rx queue stalls its streams instead of
//! making the VMM buffer. Streams whose data cannot go anywhere are not polled.
//!
//! Streams to a *framed* host port ([`Muxer::frame_ports`]) carry
//! length-prefixed frames (4 bytes big-endian, then [`FRAME_MIN`] to
//! [`FRAME_MAX`] bytes: QEMU's `-netdev stream` protocol). The muxer writes
//! their guest data to the host peer one frame per write(2), never more and
//! never before the whole frame is there, as QEMU does, so a peer that
//! expects frames to arrive whole (passt does: it loses a length split
//! across its reads) sees them whole as long as its socket takes each write
//! whole (a Unix socket takes a write of up to ~32 KiB at once or not at
//! all; a longer one may be taken in part when the socket is nearly full,
//! and its rest follows first). A length out of range resets the stream.

use std::collections::{HashMap, VecDeque};
use std::io::{ErrorKind, Read, Write};
use std::ops::Deref;
use std::os::fd::{AsRawFd, RawFd};
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::{Path, PathBuf};

use virtio_queue::{DescriptorChain, Queue, QueueOwnedT, QueueT};
use virtio_vsock::packet::{VsockPacket, PKT_HEADER_SIZE};
use vm_memory::bitmap::{Bitmap, BitmapSlice};
use vm_memory::Bytes;
use vmm_sys_util::epoll::{ControlOperation, Epoll, EpollEvent, EventSet};

use crate::{warn_limited, GuestMemory};

/// The host's CID.
pub const HOST_CID: u64 = 2;
/// Bytes of guest data buffered per stream before the host peer reads them.
pub const BUF_ALLOC: u32 = 256 * 1024;
/// Largest packet payload accepted from the guest.
pub const MAX_PKT_DATA: u32 = 64 * 1024;
/// Smallest frame on a framed stream (an Ethernet header).
pub const FRAME_MIN: usize = 14;
/// Largest frame on a framed stream (a 65535-byte MTU and the header).
pub const FRAME_MAX: usize = 65_535 + 14;
/// Most streams at once.
pub const MAX_CONNS: usize = 1024;
/// Most control packets waiting for rx buffers.
const MAX_PENDING_CTRL: usize = 4096;
/// Longest `CONNECT <port>\n` line.
const MAX_CONNECT_LINE: usize = 32;
/// First port handed out for host-initiated streams (as Firecracker does).
const FIRST_LOCAL_PORT: u32 = 1 << 30;

/// Stream socket type.
pub const TYPE_STREAM: u16 = 1;
/// Packet operations (virtio 1.2 §5.10.6).
#[allow(missing_docs)]
pub mod op {
    pub const REQUEST: u16 = 1;
    pub const RESPONSE: u16 = 2;
    pub const RST: u16 = 3;
    pub const SHUTDOWN: u16 = 4;
    pub const RW: u16 = 5;
    pub const CREDIT_UPDATE: u16 = 6;
    pub const CREDIT_REQUEST: u16 = 7;
}
/// SHUTDOWN flag: the peer will receive no more data.
pub const SHUTDOWN_RCV: u32 = 1;
/// SHUTDOWN flag: the peer will send no more data.
pub const SHUTDOWN_SEND: u32 = 2;

/// Epoll tokens below this are the worker's; streams use `fd + TOKEN_BASE`.
pub const TOKEN_BASE: u64 = 16;
/// The listening socket's token.
pub const TOKEN_LISTENER: u64 = 4;

#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
struct Key {
    /// Host-side port.
    local: u32,
    /// Guest-side port.
    peer: u32,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum State {
    /// We sent REQUEST for a host client; waiting for the guest's RESPONSE.
    LocalInit,
    Established,
}

struct Conn {
    stream: UnixStream,
    state: State,
    /// Guest data the host peer has not taken yet (≤ BUF_ALLOC).
    txbuf: VecDeque<u8>,
    /// Bytes of guest data written to the host stream (our fwd_cnt).
    fwd_cnt: u32,
    /// fwd_cnt last told to the guest.
    fwd_cnt_sent: u32,
    /// Bytes sent to the guest.
    rx_cnt: u32,
    peer_buf_alloc: u32,
    peer_fwd_cnt: u32,
    /// Polled for reading (only while its data can go somewhere).
    armed_in: bool,
    /// Queued in `want_rx`.
    queued: bool,
    /// The guest will send no more.
    guest_shut_send: bool,
    /// The guest will read no more: once its data is delivered, the stream
    /// ends.
    guest_shut_recv: bool,
    /// The host peer will send no more (its stream hit EOF).
    host_eof: bool,
    /// Leading bytes of `txbuf` that are ours (the `OK` line), not guest data.
    uncounted: usize,
    /// Epoll mask armed (one-shot: an event disarms it, 0); `u32::MAX`
    /// when not in the epoll set.
    interest: u32,
    /// Guest data goes to the host peer in whole frames.
    framed: bool,
    /// Bytes of a frame whose head the host peer already has.
    frame_left: usize,
}

impl Conn {
    fn new(stream: UnixStream, state: State) -> Self {
        Self {
            stream,
            state,
            txbuf: VecDeque::new(),
            fwd_cnt: 0,
            fwd_cnt_sent: 0,
            rx_cnt: 0,
            peer_buf_alloc: 0,
            peer_fwd_cnt: 0,
            armed_in: false,
            queued: false,
            guest_shut_send: false,
            guest_shut_recv: false,
            host_eof: false,
            uncounted: 0,
            interest: u32::MAX,
            framed: false,
            frame_left: 0,
        }
    }

    /// How many bytes at the front of `txbuf` may go to the host peer in
    /// one write: all of them, or on a framed stream the rest of a frame
    /// begun or the next whole frame (0: not all there yet). `Err` carries
    /// a frame length out of range.
    fn next_write(&self) -> Result<usize, u32> {
        if !self.framed {
            return Ok(self.txbuf.len());
        }
        if self.frame_left > 0 {
            return Ok(self.frame_left.min(self.txbuf.len()));
        }
        let mut head = [0u8; 4];
        for (d, s) in head.iter_mut().zip(self.txbuf.iter()) {
            *d = *s;
        }
        if self.txbuf.len() < 4 {
            return Ok(0);
        }
        let len = u32::from_be_bytes(head);
        let n = len as usize;
        if !(FRAME_MIN..=FRAME_MAX).contains(&n) {
            return Err(len);
        }
        Ok(if self.txbuf.len() >= 4 + n { 4 + n } else { 0 })
    }

    fn peer_credit(&self) -> u32 {
        let in_flight = self.rx_cnt.wrapping_sub(self.peer_fwd_cnt);
        self.peer_buf_alloc.saturating_sub(in_flight)
    }
}

/// A host client that has not finished its `CONNECT` line.
struct Pending {
    stream: UnixStream,
    line: Vec<u8>,
}

/// A control packet waiting for an rx buffer.
#[derive(Clone, Copy, Debug)]
struct Ctrl {
    key: Key,
    op: u16,
    flags: u32,
}

/// Errors setting up the host side.
#[derive(Debug, thiserror::Error)]
pub enum MuxerError {
    /// The listening socket.
    #[error("cannot listen on vsock socket {path}: {source}")]
    Listen {
        /// Its path.
        path: PathBuf,
        /// Why.
        source: std::io::Error,
    },
    /// epoll.
    #[error("vsock epoll: {0}")]
    Epoll(#[from] std::io::Error),
}

/// Binds `path`, replacing a stale socket nobody listens on.
pub fn bind(path: &PathBuf) -> Result<UnixListener, MuxerError> {
    let err = |source| MuxerError::Listen {
        path: path.clone(),
        source,
    };
    match UnixListener::bind(path) {
        Ok(l) => Ok(l),
        Err(e) if e.kind() == ErrorKind::AddrInUse => {
            use std::os::unix::fs::FileTypeExt;
            let is_sock = std::fs::metadata(path).is_ok_and(|m| m.file_type().is_socket());
            if is_sock && UnixStream::connect(path).is_err() {
                std::fs::remove_file(path).map_err(err)?;
                UnixListener::bind(path).map_err(err)
            } else {
                Err(err(e))
            }
        }
        Err(e) => Err(err(e)),
    }
}

/// Connects to a host listener without ever blocking the worker: a
/// listener whose backlog is full refuses at once (EAGAIN), and the guest
/// gets a reset as if nothing listened.
fn connect_nonblocking(path: &Path) -> std::io::Result<UnixStream> {
    use std::os::fd::{FromRawFd, OwnedFd};
    use std::os::unix::ffi::OsStrExt;
    let bytes = path.as_os_str().as_bytes();
    // SAFETY: sockaddr_un is plain old data; all zeroes is a valid value.
    let mut addr: libc::sockaddr_un = unsafe { std::mem::zeroed() };
    if bytes.len() >= addr.sun_path.len() || bytes.contains(&0) {
        return Err(ErrorKind::InvalidInput.into());
    }
    addr.sun_family = libc::AF_UNIX as libc::sa_family_t;
    for (d, &b) in addr.sun_path.iter_mut().zip(bytes) {
        *d = b as libc::c_char;
    }
    // SAFETY: socket(2) with constant arguments; the fd is owned at once.
    let fd = unsafe {
        libc::socket(
            libc::AF_UNIX,
            libc::SOCK_STREAM | libc::SOCK_NONBLOCK | libc::SOCK_CLOEXEC,
            0,
        )
    };
    if fd < 0 {
        return Err(std::io::Error::last_os_error());
    }
    // SAFETY: `fd` is a new socket nothing else owns.
    let fd = unsafe { OwnedFd::from_raw_fd(fd) };
    // SAFETY: `addr` is a valid sockaddr_un of the length given.
    let r = unsafe {
        libc::connect(
            fd.as_raw_fd(),
            (&addr as *const libc::sockaddr_un).cast(),
            std::mem::size_of::<libc::sockaddr_un>() as libc::socklen_t,
        )
    };
    if r != 0 {
        return Err(std::io::Error::last_os_error());
    }
    Ok(UnixStream::from(fd))
}

/// All streams of one device.
pub struct Muxer {
    cid: u64,
    uds: PathBuf,
    epoll: Epoll,
    listener: Option<UnixListener>,
    conns: HashMap<Key, Conn>,
    by_fd: HashMap<RawFd, Key>,
    pending: HashMap<RawFd, Pending>,
    ctrl: VecDeque<Ctrl>,
    want_rx: VecDeque<Key>,
    next_local: u32,
    framed: Vec<u32>,
    /// The user this VMM runs as: host peers of another user (but root)
    /// are refused.
    owner: u32,
}

impl Muxer {
    /// A muxer for guest `cid` whose host side is `uds` (`listener` bound to
    /// it), serving host peers of user `owner` (the VMM's) and root.
    pub fn new(
        cid: u64,
        uds: PathBuf,
        listener: Option<UnixListener>,
        owner: u32,
    ) -> Result<Self, MuxerError> {
        let epoll = Epoll::new()?;
        if let Some(l) = &listener {
            l.set_nonblocking(true)?;
            epoll.ctl(
                ControlOperation::Add,
                l.as_raw_fd(),
                EpollEvent::new(EventSet::IN, TOKEN_LISTENER),
            )?;
        }
        Ok(Self {
            cid,
            uds,
            epoll,
            listener,
            conns: HashMap::new(),
            by_fd: HashMap::new(),
            pending: HashMap::new(),
            ctrl: VecDeque::new(),
            want_rx: VecDeque::new(),
            next_local: FIRST_LOCAL_PORT,
            framed: Vec::new(),
            owner,
        })
    }

    /// Whether the host peer of `s` is this VMM's own user or root (who can
    /// reach the VMM anyway). In a user namespace, users it does not map
    /// (root outside a jail among them) show as the overflow id.
    fn trusted(&self, s: &UnixStream) -> bool {
        matches!(crate::peer_uid(s), Some(u) if u == self.owner || u == 0)
    }

    /// Makes guest streams to these host ports framed (see the module's
    /// documentation).
    pub fn frame_ports(mut self, ports: &[u32]) -> Self {
        self.framed = ports.to_vec();
        self
    }

    /// The epoll the worker waits on (queue and kill eventfds are added to it).
    pub fn epoll(&self) -> &Epoll {
        &self.epoll
    }

    /// Number of open streams.
    pub fn connections(&self) -> usize {
        self.conns.len()
    }

    fn push_ctrl(&mut self, key: Key, op: u16, flags: u32) {
        if self.ctrl.len() >= MAX_PENDING_CTRL {
            warn_limited!("vsock: guest is not reading its rx queue; dropping a control packet");
            return;
        }
        self.ctrl.push_back(Ctrl { key, op, flags });
    }

    /// Polls the stream for what it can use now. Streams are registered
    /// one-shot: an event disarms the stream until this arms it again
    /// (one `EPOLL_CTL_MOD`). epoll reports EPOLLHUP and EPOLLERR whatever
    /// the mask, so a level-triggered stream that wants nothing would wake
    /// the worker again and again once its peer hung up; one-shot, it wakes
    /// it once at most. (Leaving the set and joining it again instead costs
    /// two calls and, for the removal, an RCU callback each time.)
    fn set_interest(&mut self, key: Key) {
        let Some(c) = self.conns.get_mut(&key) else {
            return;
        };
        let mut ev = EventSet::empty();
        if c.armed_in {
            ev |= EventSet::IN;
        }
        // Only when there is something to write: a framed stream holding
        // part of a frame waits for the guest, not for the host socket
        // (which is writable, and would wake the worker for ever).
        if c.next_write() != Ok(0) {
            ev |= EventSet::OUT;
        }
        let bits = ev.bits();
        if bits == c.interest {
            return;
        }
        let fd = c.stream.as_raw_fd();
        let op = if c.interest == u32::MAX {
            ControlOperation::Add
        } else {
            ControlOperation::Modify
        };
        c.interest = bits;
        let ev = ev | EventSet::ONE_SHOT;
        if let Err(e) = self
            .epoll
            .ctl(op, fd, EpollEvent::new(ev, fd as u64 + TOKEN_BASE))
        {
            tracing::error!("vsock: epoll_ctl: {e}");
        }
    }

    fn add_conn(&mut self, key: Key, conn: Conn) {
        self.by_fd.insert(conn.stream.as_raw_fd(), key);
        self.conns.insert(key, conn);
        self.set_interest(key);
    }

    fn remove_conn(&mut self, key: Key) {
        if let Some(c) = self.conns.remove(&key) {
            let fd = c.stream.as_raw_fd();
            let _ = self
                .epoll
                .ctl(ControlOperation::Delete, fd, EpollEvent::default());
            self.by_fd.remove(&fd);
        }
    }

    fn reset_conn(&mut self, key: Key) {
        self.remove_conn(key);
        self.push_ctrl(key, op::RST, 0);
    }

    fn arm(&mut self, key: Key) {
        if let Some(c) = self.conns.get_mut(&key) {
            if c.state == State::Established
                && !c.host_eof
                && !c.guest_shut_recv
                && !c.queued
                && c.peer_credit() > 0
            {
                c.armed_in = true;
            }
        }
        self.set_interest(key);
    }

    /// Serves the guest's tx queue. An error means the queue is broken.
    pub fn process_tx(
        &mut self,
        mem: &GuestMemory,
        q: &mut Queue,
    ) -> Result<bool, virtio_queue::Error> {
        let mut used = false;
        loop {
            // No kicks while we drain; re-enabled (and re-checked) after.
            q.disable_notification(mem)?;
            while let Some(chain) = q.iter(mem)?.next() {
                self.tx_packet(mem, q, chain)?;
                used = true;
            }
            if !q.enable_notification(mem)? {
                return Ok(used);
            }
        }
    }

    /// Serves one tx packet and returns its buffer.
    fn tx_packet<M>(
        &mut self,
        mem: &GuestMemory,
        q: &mut Queue,
        mut chain: DescriptorChain<M>,
    ) -> Result<(), virtio_queue::Error>
    where
        M: Deref<Target = GuestMemory> + Clone,
    {
        let head = chain.head_index();
        let whole = chain.clone();
        match VsockPacket::from_tx_virtq_chain(mem, &mut chain, MAX_PKT_DATA) {
            Ok(pkt) => self.guest_packet(&pkt),
            Err(
                virtio_vsock::packet::Error::DescriptorLengthTooSmall
                | virtio_vsock::packet::Error::DescriptorChainTooShort,
            ) => self.gathered_packet(mem, whole),
            Err(e) => warn_limited!("vsock: bad tx packet: {e}"),
        }
        q.add_used(mem, head, 0)
    }

    /// A tx packet split over descriptors in a way `VsockPacket` does not
    /// take (payload over several, or the header itself split; the spec
    /// allows any split): gathered into a copy. A chain holding less than
    /// its header says resets the stream, so data is never lost silently.
    fn gathered_packet<M>(&mut self, mem: &GuestMemory, chain: DescriptorChain<M>)
    where
        M: Deref<Target = GuestMemory>,
    {
        let cap = PKT_HEADER_SIZE + MAX_PKT_DATA as usize;
        let mut bytes = Vec::new();
        for d in chain {
            if d.is_write_only() || bytes.len() >= cap {
                break;
            }
            let start = bytes.len();
            let take = (d.len() as usize).min(cap - start);
            bytes.resize(start + take, 0);
            if mem.read_slice(&mut bytes[start..], d.addr()).is_err() {
                warn_limited!("vsock: tx descriptor outside guest memory");
                return;
            }
        }
        if bytes.len() < PKT_HEADER_SIZE {
            warn_limited!("vsock: tx packet with a short header dropped");
            return;
        }
        let (hdr, data) = bytes.split_at_mut(PKT_HEADER_SIZE);
        let mut raw = [0u8; PKT_HEADER_SIZE];
        raw.copy_from_slice(hdr);
        let len = u32::from_le_bytes([raw[24], raw[25], raw[26], raw[27]]) as usize;
        let have = data.len();
        let short = have < len;
        let data = &mut data[..len.min(have)];
        // SAFETY: `hdr` and `data` outlive `pkt`, which only this call uses.
        let Ok(mut pkt) = (unsafe { VsockPacket::new(hdr, (len > 0).then_some(data)) }) else {
            return;
        };
        if pkt.set_header_from_raw(&raw).is_err() {
            return;
        }
        if short {
            warn_limited!("vsock: tx payload shorter than its header says");
            let key = Key {
                local: pkt.dst_port(),
                peer: pkt.src_port(),
            };
            if pkt.src_cid() == self.cid && self.conns.contains_key(&key) {
                self.reset_conn(key);
            }
            return;
        }
        self.guest_packet(&pkt);
    }

    fn guest_packet<B: BitmapSlice>(&mut self, pkt: &VsockPacket<B>) {
        let key = Key {
            local: pkt.dst_port(),
            peer: pkt.src_port(),
        };
        if pkt.src_cid() != self.cid || pkt.dst_cid() != HOST_CID {
            warn_limited!(
                "vsock: packet from cid {} to cid {} dropped",
                pkt.src_cid(),
                pkt.dst_cid()
            );
            return;
        }
        if pkt.type_() != TYPE_STREAM {
            if pkt.op() != op::RST {
                self.push_ctrl(key, op::RST, 0);
            }
            return;
        }
        let mut resumed = false;
        if let Some(c) = self.conns.get_mut(&key) {
            c.peer_buf_alloc = pkt.buf_alloc();
            c.peer_fwd_cnt = pkt.fwd_cnt();
            // Every header carries the guest's credit, not only
            // CREDIT_UPDATE (which Linux sends only when it is nearly out of
            // space): a stream paused for lack of credit resumes on any.
            resumed = c.peer_credit() > 0 && !c.armed_in && !c.queued;
        }
        if resumed {
            self.arm(key);
        }
        match pkt.op() {
            op::REQUEST => self.guest_connect(key, pkt.buf_alloc(), pkt.fwd_cnt()),
            op::RESPONSE => match self.conns.get_mut(&key) {
                Some(c) if c.state == State::LocalInit => {
                    c.state = State::Established;
                    let line = format!("OK {}\n", key.local);
                    c.uncounted = line.len();
                    c.txbuf.extend(line.as_bytes());
                    self.flush(key);
                    self.arm(key);
                }
                _ => self.push_ctrl(key, op::RST, 0),
            },
            op::RW => self.guest_data(key, pkt),
            op::CREDIT_UPDATE => {
                if self.conns.contains_key(&key) {
                    self.arm(key);
                } else {
                    self.push_ctrl(key, op::RST, 0);
                }
            }
            op::CREDIT_REQUEST => {
                if let Some(c) = self.conns.get_mut(&key) {
                    c.fwd_cnt_sent = c.fwd_cnt;
                    self.push_ctrl(key, op::CREDIT_UPDATE, 0);
                } else {
                    self.push_ctrl(key, op::RST, 0);
                }
            }
            op::SHUTDOWN => self.guest_shutdown(key, pkt.flags()),
            op::RST => self.remove_conn(key),
            other => {
                warn_limited!("vsock: unknown op {other}");
                self.reset_conn(key);
            }
        }
    }

    /// The guest shut one or both directions: what it sent still reaches
    /// the host peer (however slowly the peer reads: `flush` goes on from
    /// the peer's EPOLLOUT); both directions shut end the stream once that
    /// is done.
    fn guest_shutdown(&mut self, key: Key, flags: u32) {
        let Some(c) = self.conns.get_mut(&key) else {
            self.push_ctrl(key, op::RST, 0);
            return;
        };
        if flags & SHUTDOWN_SEND != 0 {
            c.guest_shut_send = true;
        }
        if flags & SHUTDOWN_RCV != 0 {
            c.guest_shut_recv = true;
            c.armed_in = false;
        }
        self.flush(key);
    }

    fn guest_connect(&mut self, key: Key, buf_alloc: u32, fwd_cnt: u32) {
        if self.conns.contains_key(&key) {
            self.reset_conn(key);
            return;
        }
        if self.conns.len() >= MAX_CONNS {
            warn_limited!("vsock: too many streams; refusing port {}", key.local);
            self.push_ctrl(key, op::RST, 0);
            return;
        }
        let mut path = self.uds.clone().into_os_string();
        path.push(format!("_{}", key.local));
        match connect_nonblocking(Path::new(&path)) {
            // Another user's listener (bound first in a shared directory)
            // gets nothing from the guest.
            Ok(s) if !self.trusted(&s) => {
                warn_limited!(
                    "vsock: the listener for port {} is another user's; refused",
                    key.local
                );
                self.push_ctrl(key, op::RST, 0);
            }
            Ok(s) => {
                let mut c = Conn::new(s, State::Established);
                c.framed = self.framed.contains(&key.local);
                c.peer_buf_alloc = buf_alloc;
                c.peer_fwd_cnt = fwd_cnt;
                self.add_conn(key, c);
                self.push_ctrl(key, op::RESPONSE, 0);
                self.arm(key);
            }
            Err(_) => self.push_ctrl(key, op::RST, 0),
        }
    }

    fn guest_data<B: BitmapSlice>(&mut self, key: Key, pkt: &VsockPacket<B>) {
        let Some(c) = self.conns.get_mut(&key) else {
            self.push_ctrl(key, op::RST, 0);
            return;
        };
        if c.state != State::Established || c.guest_shut_send {
            self.reset_conn(key);
            return;
        }
        let Some(data) = pkt.data_slice() else {
            return;
        };
        let len = (pkt.len() as usize).min(data.len());
        if c.txbuf.len() + len > BUF_ALLOC as usize {
            warn_limited!("vsock: guest overran its credit on port {}", key.local);
            self.reset_conn(key);
            return;
        }
        // Straight from guest memory to the host stream when nothing is
        // queued before it; only what the stream does not take is copied.
        let mut off = 0;
        if c.txbuf.is_empty() && len > 0 && !c.framed {
            let guard = data.ptr_guard();
            // SAFETY: the guard points at `data.len()` ≥ len bytes of mapped
            // guest memory; send reads at most len of them.
            let n = unsafe {
                libc::send(
                    c.stream.as_raw_fd(),
                    guard.as_ptr().cast(),
                    len,
                    libc::MSG_NOSIGNAL | libc::MSG_DONTWAIT,
                )
            };
            if n >= 0 {
                off = n as usize;
                c.fwd_cnt = c.fwd_cnt.wrapping_add(n as u32);
            } else {
                let e = std::io::Error::last_os_error();
                if !matches!(e.kind(), ErrorKind::WouldBlock | ErrorKind::Interrupted) {
                    self.reset_conn(key);
                    return;
                }
            }
        }
        if off < len {
            let mut buf = vec![0u8; len - off];
            let copied = data
                .subslice(off, len - off)
                .map(|d| d.copy_to(&mut buf[..]))
                .unwrap_or(0);
            if copied != len - off {
                self.reset_conn(key);
                return;
            }
            c.txbuf.extend(buf);
        }
        self.flush(key);
    }

    /// Writes buffered guest data to the host stream.
    fn flush(&mut self, key: Key) {
        let Some(c) = self.conns.get_mut(&key) else {
            return;
        };
        let mut failed = false;
        while !c.txbuf.is_empty() {
            let want = match c.next_write() {
                Ok(0) => break,
                Ok(n) => n,
                Err(len) => {
                    warn_limited!(
                        "vsock: frame length {len} out of range on port {}; stream reset",
                        key.local
                    );
                    failed = true;
                    break;
                }
            };
            // One write(2) of contiguous bytes (the worker's filter allows
            // no writev): a frame that wraps around the ring is moved to
            // its front first, once per trip around the ring.
            if c.txbuf.as_slices().0.len() < want {
                c.txbuf.make_contiguous();
            }
            let res = c.stream.write(&c.txbuf.as_slices().0[..want]);
            match res {
                Ok(0) => {
                    failed = true;
                    break;
                }
                Ok(n) => {
                    c.txbuf.drain(..n);
                    if c.framed {
                        c.frame_left = want - n;
                    }
                    let ours = n.min(c.uncounted);
                    c.uncounted -= ours;
                    c.fwd_cnt = c.fwd_cnt.wrapping_add((n - ours) as u32);
                }
                Err(e) if e.kind() == ErrorKind::WouldBlock => break,
                Err(e) if e.kind() == ErrorKind::Interrupted => {}
                Err(_) => {
                    failed = true;
                    break;
                }
            }
        }
        if failed {
            self.reset_conn(key);
            return;
        }
        if c.guest_shut_send && c.next_write() == Ok(0) {
            // A frame the guest ended in the middle of: the peer never
            // gets its head.
            c.txbuf.clear();
        }
        if c.txbuf.is_empty() && c.guest_shut_send {
            let _ = c.stream.shutdown(std::net::Shutdown::Write);
            if c.host_eof || c.guest_shut_recv {
                // Both directions are done.
                self.reset_conn(key);
                return;
            }
        }
        // Tell the guest about freed space once a quarter of the buffer is free.
        if c.fwd_cnt.wrapping_sub(c.fwd_cnt_sent) >= BUF_ALLOC / 4
            || (c.txbuf.is_empty() && c.fwd_cnt != c.fwd_cnt_sent)
        {
            c.fwd_cnt_sent = c.fwd_cnt;
            self.push_ctrl(key, op::CREDIT_UPDATE, 0);
        }
        self.set_interest(key);
    }

    /// Handles an epoll event on the listener or a stream.
    pub fn host_event(&mut self, token: u64, events: EventSet) {
        if token == TOKEN_LISTENER {
            self.accept();
            return;
        }
        let Some(fd) = token.checked_sub(TOKEN_BASE).map(|f| f as RawFd) else {
            return;
        };
        if self.pending.contains_key(&fd) {
            self.handshake(fd);
            return;
        }
        let Some(&key) = self.by_fd.get(&fd) else {
            return;
        };
        if let Some(c) = self.conns.get_mut(&key) {
            // The event disarmed the stream (one-shot).
            if c.interest != u32::MAX {
                c.interest = 0;
            }
        }
        // A hang-up or error flushes too: a stream waiting to write learns
        // from the failed write that its peer is gone (and is reset), not
        // from being woken for OUT again and again.
        if events.intersects(EventSet::OUT | EventSet::HANG_UP | EventSet::ERROR) {
            self.flush(key);
        }
        let Some(c) = self.conns.get_mut(&key) else {
            return;
        };
        if events.intersects(EventSet::IN | EventSet::HANG_UP | EventSet::ERROR) && c.armed_in {
            // Read when an rx buffer is there: disarm until then.
            c.armed_in = false;
            if !c.queued {
                c.queued = true;
                self.want_rx.push_back(key);
            }
        }
        self.set_interest(key);
    }

    fn accept(&mut self) {
        let Some(l) = &self.listener else {
            return;
        };
        loop {
            match l.accept() {
                Ok((s, _)) => {
                    if self.pending.len() + self.conns.len() >= MAX_CONNS
                        || !self.trusted(&s)
                        || s.set_nonblocking(true).is_err()
                    {
                        continue;
                    }
                    let fd = s.as_raw_fd();
                    if self
                        .epoll
                        .ctl(
                            ControlOperation::Add,
                            fd,
                            EpollEvent::new(EventSet::IN, fd as u64 + TOKEN_BASE),
                        )
                        .is_ok()
                    {
                        self.pending.insert(
                            fd,
                            Pending {
                                stream: s,
                                line: Vec::new(),
                            },
                        );
                    }
                }
                Err(e) if e.kind() == ErrorKind::Interrupted => {}
                Err(_) => return,
            }
        }
    }

    /// Reads a host client's `CONNECT <port>\n`, one byte at a time so no
    /// stream data after it is consumed.
    fn handshake(&mut self, fd: RawFd) {
        let Some(p) = self.pending.get_mut(&fd) else {
            return;
        };
        let mut byte = [0u8; 1];
        let done = loop {
            match p.stream.read(&mut byte) {
                Ok(0) => break Err(()),
                Ok(_) if byte[0] == b'\n' => break Ok(()),
                Ok(_) if p.line.len() >= MAX_CONNECT_LINE => break Err(()),
                Ok(_) => p.line.push(byte[0]),
                Err(e) if e.kind() == ErrorKind::WouldBlock => return,
                Err(e) if e.kind() == ErrorKind::Interrupted => {}
                Err(_) => break Err(()),
            }
        };
        let Some(p) = self.pending.remove(&fd) else {
            return;
        };
        let _ = self
            .epoll
            .ctl(ControlOperation::Delete, fd, EpollEvent::default());
        let port = done.ok().and_then(|()| {
            std::str::from_utf8(&p.line)
                .ok()?
                .strip_prefix("CONNECT ")?
                .trim()
                .parse::<u32>()
                .ok()
        });
        let Some(port) = port else {
            warn_limited!("vsock: host client sent no valid CONNECT line; closing it");
            return;
        };
        let mut local = self.next_local;
        while self.conns.keys().any(|k| k.local == local) {
            local = local.wrapping_add(1).max(FIRST_LOCAL_PORT);
        }
        self.next_local = local.wrapping_add(1).max(FIRST_LOCAL_PORT);
        let key = Key { local, peer: port };
        self.add_conn(key, Conn::new(p.stream, State::LocalInit));
        self.push_ctrl(key, op::REQUEST, 0);
    }

    /// Whether anything waits for an rx buffer.
    pub fn has_rx_work(&self) -> bool {
        !self.ctrl.is_empty() || !self.want_rx.is_empty()
    }

    /// Moves control packets and host data into the guest's rx queue.
    pub fn fill_rx(
        &mut self,
        mem: &GuestMemory,
        q: &mut Queue,
    ) -> Result<bool, virtio_queue::Error> {
        let mut used = false;
        while self.has_rx_work() {
            let Some(buf) = next_rx_buf(mem, q)? else {
                // Out of buffers with work waiting: ask the guest to kick
                // when it adds some (it may have just done so).
                if q.enable_notification(mem)? {
                    continue;
                }
                break;
            };
            let (head, mut pkt) = match buf {
                RxBuf::Good(head, pkt) => (head, pkt),
                RxBuf::Bad(head) => {
                    q.add_used(mem, head, 0)?;
                    used = true;
                    continue;
                }
            };
            if let Some(c) = self.ctrl.pop_front() {
                self.header(&mut pkt, c.key, c.op, c.flags);
                q.add_used(mem, head, pkt.header_slice().len() as u32)?;
                used = true;
                continue;
            }
            if data_room(&pkt) == 0 {
                // No room for data: given back, it would come round again
                // and again while a stream's data waited. Returned unused.
                warn_limited!("vsock: rx buffer without room for data");
                q.add_used(mem, head, 0)?;
                used = true;
                continue;
            }
            let mut bufs = vec![(head, pkt)];
            let filled = self.host_data(mem, q, &mut bufs)?;
            for (head, pkt) in bufs.iter().take(filled) {
                let len = (pkt.header_slice().len() as u32).saturating_add(pkt.len());
                q.add_used(mem, *head, len)?;
            }
            // Buffers left over go back, last taken first.
            for _ in filled..bufs.len() {
                q.go_to_previous_position();
            }
            used |= filled > 0;
        }
        Ok(used)
    }

    fn header<B: BitmapSlice>(&self, pkt: &mut VsockPacket<B>, key: Key, op: u16, flags: u32) {
        let (buf_alloc, fwd_cnt) = self
            .conns
            .get(&key)
            .map_or((0, 0), |c| (BUF_ALLOC, c.fwd_cnt));
        pkt.set_src_cid(HOST_CID)
            .set_dst_cid(self.cid)
            .set_src_port(key.local)
            .set_dst_port(key.peer)
            .set_type(TYPE_STREAM)
            .set_op(op)
            .set_flags(flags)
            .set_len(0)
            .set_buf_alloc(buf_alloc)
            .set_fwd_cnt(fwd_cnt);
    }

    /// Reads one stream's data into the rx buffers `bufs` (taking more
    /// from `q`, up to [`RX_BATCH`], while the stream's credit goes beyond
    /// them) with one `readv`, and writes their headers. Returns how many
    /// of `bufs`, from the front, are filled (0: no stream had any data);
    /// the caller gives the rest back.
    fn host_data<'a>(
        &mut self,
        mem: &'a GuestMemory,
        q: &mut Queue,
        bufs: &mut Vec<(u16, VsockPacket<'a, DataBitmap>)>,
    ) -> Result<usize, virtio_queue::Error> {
        while let Some(key) = self.want_rx.pop_front() {
            let Some(c) = self.conns.get_mut(&key) else {
                continue;
            };
            c.queued = false;
            let credit = c.peer_credit() as usize;
            if credit == 0 || c.state != State::Established {
                self.arm(key);
                continue;
            }
            let fd = c.stream.as_raw_fd();
            take_more_rx_bufs(mem, q, bufs, credit)?;
            match read_into(fd, bufs, credit).map(|(n, asked)| (n, n < asked)) {
                Ok((0, _)) => {
                    if let Some(used) = self.host_eof(key, bufs) {
                        return Ok(used);
                    }
                }
                Ok((n, drained)) => return Ok(self.host_read(key, bufs, n, drained)),
                Err(e)
                    if e.kind() == ErrorKind::WouldBlock || e.kind() == ErrorKind::Interrupted =>
                {
                    self.arm(key);
                }
                Err(_) => {
                    // The RST goes out with the next buffer.
                    self.reset_conn(key);
                }
            }
        }
        Ok(0)
    }

    /// The host peer will send no more (it may still read): a half-close,
    /// as with TCP, told in the first of `bufs` (`Some(1)`); `None` when
    /// the stream is gone instead (both directions done).
    fn host_eof(
        &mut self,
        key: Key,
        bufs: &mut [(u16, VsockPacket<'_, DataBitmap>)],
    ) -> Option<usize> {
        let c = self.conns.get_mut(&key)?;
        c.host_eof = true;
        if c.guest_shut_send && c.txbuf.is_empty() {
            self.reset_conn(key);
            return None;
        }
        let (_, pkt) = bufs.first_mut()?;
        self.header(pkt, key, op::SHUTDOWN, SHUTDOWN_SEND);
        self.set_interest(key);
        Some(1)
    }

    /// Accounts `n` bytes read into `bufs` and writes their headers;
    /// returns how many buffers, from the front, hold data. A stream the
    /// short read `drained` waits for more; another stays queued.
    fn host_read(
        &mut self,
        key: Key,
        bufs: &mut [(u16, VsockPacket<'_, DataBitmap>)],
        n: usize,
        drained: bool,
    ) -> usize {
        if let Some(c) = self.conns.get_mut(&key) {
            c.rx_cnt = c.rx_cnt.wrapping_add(n as u32);
            c.fwd_cnt_sent = c.fwd_cnt;
        }
        if drained {
            self.arm(key);
        } else if let Some(c) = self.conns.get_mut(&key) {
            // More may be waiting: stay queued behind the others.
            c.queued = true;
            self.want_rx.push_back(key);
        }
        let mut left = n;
        let mut filled = 0;
        for (_, pkt) in bufs.iter_mut() {
            let here = left.min(data_room(pkt));
            if here == 0 {
                break;
            }
            self.header(pkt, key, op::RW, 0);
            pkt.set_len(here as u32);
            left -= here;
            filled += 1;
        }
        filled
    }
}

/// Bytes of data one rx buffer takes: its data area, at most
/// [`MAX_PKT_DATA`] (a single-descriptor buffer is not bounded otherwise).
fn data_room(pkt: &VsockPacket<'_, DataBitmap>) -> usize {
    pkt.data_slice()
        .map_or(0, |d| d.len().min(MAX_PKT_DATA as usize))
}

/// The most rx buffers one read from a host stream fills (128 KiB in a
/// Linux guest's 4 KiB buffers): one `readv` instead of one `read` each.
const RX_BATCH: usize = 32;

type DataBitmap = <<GuestMemory as vm_memory::GuestMemory>::R as vm_memory::GuestMemoryRegion>::B;

/// An rx buffer from the guest: usable, or one to return unused.
enum RxBuf<'a> {
    Good(u16, VsockPacket<'a, DataBitmap>),
    Bad(u16),
}

/// Takes the next rx buffer the guest made available, if any.
fn next_rx_buf<'a>(
    mem: &'a GuestMemory,
    q: &mut Queue,
) -> Result<Option<RxBuf<'a>>, virtio_queue::Error> {
    let Some(mut chain) = q.iter(mem)?.next() else {
        return Ok(None);
    };
    let head = chain.head_index();
    Ok(Some(
        match VsockPacket::from_rx_virtq_chain(mem, &mut chain, MAX_PKT_DATA) {
            Ok(p) => RxBuf::Good(head, p),
            Err(e) => {
                warn_limited!("vsock: bad rx buffer: {e}");
                RxBuf::Bad(head)
            }
        },
    ))
}

/// Bytes of data `bufs` hold.
fn rx_room(bufs: &[(u16, VsockPacket<'_, DataBitmap>)]) -> usize {
    bufs.iter().map(|(_, p)| data_room(p)).sum()
}

/// Takes more rx buffers while `bufs` hold less than `want` bytes and
/// fewer than [`RX_BATCH`] buffers. A bad buffer is left where it is (the
/// next single take returns it unused), so the ones taken here stay the
/// last taken and can be given back.
fn take_more_rx_bufs<'a>(
    mem: &'a GuestMemory,
    q: &mut Queue,
    bufs: &mut Vec<(u16, VsockPacket<'a, DataBitmap>)>,
    want: usize,
) -> Result<(), virtio_queue::Error> {
    while bufs.len() < RX_BATCH && rx_room(bufs) < want {
        match next_rx_buf(mem, q)? {
            Some(RxBuf::Good(head, p)) => bufs.push((head, p)),
            Some(RxBuf::Bad(_)) => {
                q.go_to_previous_position();
                break;
            }
            None => break,
        }
    }
    Ok(())
}

/// One `readv` from `fd` into the data areas of `bufs` (each at most
/// [`MAX_PKT_DATA`]), at most `max` bytes: (bytes read, bytes asked for).
fn read_into(
    fd: RawFd,
    bufs: &[(u16, VsockPacket<'_, DataBitmap>)],
    max: usize,
) -> std::io::Result<(usize, usize)> {
    let mut left = max;
    let mut guards = Vec::with_capacity(bufs.len());
    let mut iov = Vec::with_capacity(bufs.len());
    for (_, pkt) in bufs {
        let Some(data) = pkt.data_slice() else {
            break;
        };
        let len = data_room(pkt).min(left);
        if len == 0 {
            break;
        }
        let guard = data.ptr_guard_mut();
        iov.push(libc::iovec {
            iov_base: guard.as_ptr().cast(),
            iov_len: len,
        });
        guards.push((guard, data));
        left -= len;
    }
    if iov.is_empty() {
        return Err(ErrorKind::WouldBlock.into());
    }
    // SAFETY: each iovec covers `len` ≤ its data area's length of mapped
    // guest memory (an rx buffer the device owns until it is used), kept
    // mapped by `guards` for the call; readv writes only inside them.
    let r = unsafe { libc::readv(fd, iov.as_ptr(), iov.len() as libc::c_int) };
    if r < 0 {
        return Err(std::io::Error::last_os_error());
    }
    let mut n = r as usize;
    for (iov, (_, data)) in iov.iter().zip(&guards) {
        let here = n.min(iov.iov_len);
        if here == 0 {
            break;
        }
        data.bitmap().mark_dirty(0, here);
        n -= here;
    }
    Ok((r as usize, max - left))
}

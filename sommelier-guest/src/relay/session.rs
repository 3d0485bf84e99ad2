//! One guest Wayland client and its cross-domain context.
//!
//! [`Tracker`] is the pure part (framing, object interfaces, registry
//! filtering), shared with the unit tests and the fuzz target; [`Session`]
//! adds the fds, the pools and the pipes.

use std::collections::{HashMap, VecDeque};
use std::fs::File;
use std::io::{Read, Write};
use std::os::fd::{AsRawFd, OwnedFd};
use std::os::unix::net::UnixStream;

use wl_proxy::protocol::{self, ArgKind, IfaceId, Message};
use wl_proxy::wire::{self, Value, WireError, HEADER};

use super::virtgpu::{self, id_type, xd, Bo, Context, Host, Mapping};
use super::{recv_with_fds, send_with_fds};

/// Why a session ends.
#[derive(Debug, thiserror::Error)]
pub enum RelayError {
    /// The client broke the protocol (or sent something the relay cannot carry).
    #[error("protocol: {0}")]
    Protocol(String),
    /// The host (wl-proxy or the compositor) closed the connection.
    #[error("the host closed the connection")]
    HostClosed,
    /// The client closed its connection.
    #[error("the client closed the connection")]
    ClientClosed,
    /// The device or a socket failed.
    #[error(transparent)]
    Io(#[from] std::io::Error),
}

impl From<WireError> for RelayError {
    fn from(e: WireError) -> Self {
        RelayError::Protocol(format!("{e:?}"))
    }
}

/// Which way a message goes.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Dir {
    /// Client → host (requests).
    Request,
    /// Host → client (events).
    Event,
}

/// One framed, parsed message.
#[derive(Debug)]
pub struct Parsed {
    /// Target object.
    pub object: u32,
    /// Its interface.
    pub iface: IfaceId,
    /// Opcode.
    pub opcode: u16,
    /// Total size in bytes.
    pub size: usize,
    /// fds it carries.
    pub fds: usize,
    /// Its signature.
    pub msg: &'static Message,
}

/// Interfaces the relay acts on.
struct Ifaces {
    display: IfaceId,
    registry: IfaceId,
    shm: IfaceId,
    shm_pool: IfaceId,
    buffer: IfaceId,
    surface: IfaceId,
}

fn iface(name: &str) -> IfaceId {
    protocol::lookup(name).unwrap_or(IfaceId::MAX)
}

/// Framing and object tracking for one connection, both directions.
pub struct Tracker {
    objs: HashMap<u32, IfaceId>,
    known: Ifaces,
}

/// Most live objects one client may have.
pub const MAX_OBJECTS: usize = 65536;

impl Default for Tracker {
    fn default() -> Self {
        Self::new()
    }
}

impl Tracker {
    /// A connection with only `wl_display` (id 1).
    pub fn new() -> Self {
        let known = Ifaces {
            display: iface("wl_display"),
            registry: iface("wl_registry"),
            shm: iface("wl_shm"),
            shm_pool: iface("wl_shm_pool"),
            buffer: iface("wl_buffer"),
            surface: iface("wl_surface"),
        };
        let mut objs = HashMap::new();
        objs.insert(1, known.display);
        Tracker { objs, known }
    }

    /// The next complete message at the start of `buf` (given `fds` queued
    /// fds), its new objects recorded. `Ok(None)` means more bytes or fds
    /// are needed.
    pub fn next(&mut self, buf: &[u8], fds: usize, dir: Dir) -> Result<Option<Parsed>, RelayError> {
        let h = match wire::header(buf) {
            Ok(h) => h,
            Err(WireError::NeedBytes) => return Ok(None),
            Err(e) => return Err(e.into()),
        };
        if buf.len() < h.size {
            return Ok(None);
        }
        let iface = *self
            .objs
            .get(&h.object)
            .ok_or_else(|| RelayError::Protocol(format!("unknown object {}", h.object)))?;
        let i = protocol::interface(iface);
        let list = match dir {
            Dir::Request => i.requests,
            Dir::Event => i.events,
        };
        let msg = list
            .get(usize::from(h.opcode))
            .ok_or_else(|| RelayError::Protocol(format!("{}: no opcode {}", i.name, h.opcode)))?;
        if msg.fds > fds {
            return Ok(None);
        }
        let mut created = Vec::new();
        wire::parse_args::<RelayError>(&buf[HEADER..h.size], fds, msg, |arg, v| {
            match v {
                Value::NewId(id) => created.push((id, arg.interface)),
                Value::NewIdDyn { interface, id, .. } => {
                    created.push((id, protocol::lookup(interface)));
                }
                _ => {}
            }
            Ok(())
        })?;
        for (id, ifc) in created {
            let ifc = ifc
                .ok_or_else(|| RelayError::Protocol("new object of an unknown interface".into()))?;
            if self.objs.len() >= MAX_OBJECTS && !self.objs.contains_key(&id) {
                return Err(RelayError::Protocol("too many objects".into()));
            }
            self.objs.insert(id, ifc);
        }
        Ok(Some(Parsed {
            object: h.object,
            iface,
            opcode: h.opcode,
            size: h.size,
            fds: msg.fds,
            msg,
        }))
    }

    /// A `wl_registry.global` event the relay passes on: `None` hides a
    /// global it has no signature for; otherwise the message with its
    /// version capped at what the relay can parse.
    pub fn filter_global(&self, p: &Parsed, bytes: &[u8]) -> Option<Vec<u8>> {
        if p.iface != self.known.registry || p.opcode != 0 {
            return Some(bytes.to_vec());
        }
        let mut name = None;
        let mut iface_name = None;
        let mut version = 0;
        let _ = wire::parse_args::<WireError>(&bytes[HEADER..], 0, p.msg, |_, v| {
            match v {
                Value::Uint(u) if name.is_none() => name = Some(u),
                Value::Str(Some(s)) => iface_name = Some(s.to_string()),
                Value::Uint(u) => version = u,
                _ => {}
            }
            Ok(())
        });
        let ifc = protocol::lookup(iface_name.as_deref()?)?;
        let cap = version.min(protocol::interface(ifc).version);
        let mut out = bytes.to_vec();
        let n = out.len();
        out[n - 4..].copy_from_slice(&cap.to_le_bytes());
        Some(out)
    }

    /// The object's interface name (for messages and tests).
    pub fn interface_of(&self, id: u32) -> Option<&'static str> {
        self.objs.get(&id).map(|&i| protocol::interface(i).name)
    }
}

/// The fuzz target's entry point (also replayed by the tests): records of
/// `flags: u8` (bit 0: event, bits 1–2: fds queued) `len: u16 le` and `len`
/// bytes, appended to that direction's stream and framed as far as they go.
/// Returns how many messages were accepted.
pub fn fuzz(data: &[u8]) -> usize {
    let mut t = Tracker::new();
    let mut bufs = [Vec::new(), Vec::new()];
    let mut n = 0;
    for (flags, chunk) in fuzz_records(data) {
        let d = usize::from(flags & 1);
        let dir = if d == 1 { Dir::Event } else { Dir::Request };
        bufs[d].extend_from_slice(chunk);
        let fds = usize::from((flags >> 1) & 3);
        loop {
            match t.next(&bufs[d], fds, dir) {
                Ok(Some(p)) => {
                    let bytes: Vec<u8> = bufs[d].drain(..p.size).collect();
                    if dir == Dir::Event {
                        let _ = t.filter_global(&p, &bytes);
                    }
                    for i in 0..p.msg.args.len() {
                        let _ = arg_u32(&bytes, &p, i);
                    }
                    n += 1;
                }
                Ok(None) => break,
                Err(_) => return n,
            }
        }
    }
    n
}

/// The records of the relay's fuzz inputs: `flags: u8`, `len: u16 le`,
/// then `len` bytes (fewer at the end of the input).
pub fn fuzz_records(data: &[u8]) -> impl Iterator<Item = (u8, &[u8])> {
    let mut rest = data;
    std::iter::from_fn(move || {
        if rest.len() < 3 {
            return None;
        }
        let flags = rest[0];
        let len = usize::from(u16::from_le_bytes([rest[1], rest[2]]));
        let chunk = &rest[3..3 + len.min(rest.len() - 3)];
        rest = &rest[3 + chunk.len()..];
        Some((flags, chunk))
    })
}

fn arg_u32(bytes: &[u8], p: &Parsed, index: usize) -> Option<u32> {
    // Word offset of argument `index` for signatures of fixed-size arguments
    // before it (the relay reads only such arguments).
    let mut off = HEADER;
    for a in p.msg.args.iter().take(index) {
        match a.kind {
            ArgKind::Fd => {}
            ArgKind::Int | ArgKind::Uint | ArgKind::Fixed | ArgKind::Object | ArgKind::NewId => {
                off += 4
            }
            _ => return None,
        }
    }
    Some(u32::from_le_bytes(
        bytes.get(off..off + 4)?.try_into().ok()?,
    ))
}

/// A client's wl_shm pool and the host blob that mirrors it.
struct Pool {
    client_fd: OwnedFd,
    guest: Mapping,
    host: Option<Bo>,
    capacity: u64,
    buffers: usize,
    destroyed: bool,
}

struct ShmBuffer {
    pool: u64,
    offset: usize,
    stride: usize,
    height: usize,
    /// Rows changed since this buffer was last copied to the host (a
    /// client redraws what changed in *any* frame since it last drew into
    /// this buffer, and declares only the latest frame's damage).
    dirty: Rows,
    /// The surface it was last attached to.
    surface: u32,
}

/// A range of rows `[start, end)`; empty when start >= end.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Rows(pub usize, pub usize);

impl Rows {
    const EMPTY: Rows = Rows(usize::MAX, 0);
    const ALL: Rows = Rows(0, usize::MAX);

    fn union(self, o: Rows) -> Rows {
        Rows(self.0.min(o.0), self.1.max(o.1))
    }

    /// Byte range of these rows in a buffer (clamped to it).
    pub fn bytes(self, stride: usize, height: usize) -> Option<(usize, usize)> {
        let (a, b) = (self.0.min(height), self.1.min(height));
        (a < b).then(|| (a * stride, (b - a) * stride))
    }
}

/// What one entry of the relay's poll set watches.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Slot {
    Client,
    Host,
    WritePipe(u32),
    ReadPipe(u32),
}

/// Host → guest pipe data waiting for the guest reader.
struct ReadPipe {
    fd: File,
    pending: Vec<u8>,
    hang_up: bool,
}

/// Most bytes buffered for a guest pipe reader that does not read.
const MAX_PIPE_BUFFER: usize = 16 << 20;

/// One client and its context.
pub struct Session<H: Host = Context> {
    ctx: H,
    client: UnixStream,
    t: Tracker,
    cin: Vec<u8>,
    cfds: VecDeque<OwnedFd>,
    hin: Vec<u8>,
    hfds: VecDeque<OwnedFd>,
    pools: HashMap<u64, Pool>,
    pool_ids: HashMap<u32, u64>,
    next_pool: u64,
    buffers: HashMap<u32, ShmBuffer>,
    attached: HashMap<u32, u32>,
    damage: HashMap<u32, Rows>,
    write_pipes: Vec<(u32, File)>,
    read_pipes: HashMap<u32, ReadPipe>,
    batch: Vec<u8>,
    batch_ids: Vec<(u32, u32)>,
    /// Host blobs of freed pools, released once the batch that may still
    /// name them has gone.
    releasing: Vec<Bo>,
}

impl<H: Host> Session<H> {
    /// A session for `client` over `ctx`.
    pub fn new(ctx: H, client: UnixStream) -> Self {
        Session {
            ctx,
            client,
            t: Tracker::new(),
            cin: Vec::new(),
            cfds: VecDeque::new(),
            hin: Vec::new(),
            hfds: VecDeque::new(),
            pools: HashMap::new(),
            pool_ids: HashMap::new(),
            next_pool: 0,
            buffers: HashMap::new(),
            attached: HashMap::new(),
            damage: HashMap::new(),
            write_pipes: Vec::new(),
            read_pipes: HashMap::new(),
            batch: Vec::new(),
            batch_ids: Vec::new(),
            releasing: Vec::new(),
        }
    }

    /// Requests as if the client had sent them, with `fds` (the fuzz
    /// harness).
    pub(crate) fn client_input(
        &mut self,
        bytes: &[u8],
        fds: Vec<OwnedFd>,
    ) -> Result<(), RelayError> {
        self.cin.extend_from_slice(bytes);
        self.cfds.extend(fds);
        self.client_bytes()
    }

    /// A channel event as if the host had sent it (the fuzz harness).
    pub(crate) fn host_input(&mut self, ev: &[u8]) -> Result<(), RelayError> {
        self.host_event(ev)
    }

    /// Releases every host blob (the fuzz harness's end of a run).
    pub(crate) fn end(&mut self) {
        self.teardown();
    }

    /// Relays until either side ends.
    pub fn run(&mut self) -> Result<(), RelayError> {
        let r = self.run_inner();
        self.teardown();
        match r {
            Err(RelayError::ClientClosed) => Ok(()),
            other => other,
        }
    }

    fn teardown(&mut self) {
        for b in self.releasing.drain(..) {
            self.ctx.close(b);
        }
        for (_, p) in self.pools.drain() {
            if let Some(b) = p.host {
                self.ctx.close(b);
            }
        }
    }

    /// What each entry of the poll set watches. The set is built before
    /// `poll` and acted on after it, when handling the host's events may have
    /// added pipes: entries name their pipe, never an index into the lists.
    fn poll_set(&self) -> (Vec<libc::pollfd>, Vec<Slot>) {
        let fd = |fd: i32, events: i16| libc::pollfd {
            fd,
            events,
            revents: 0,
        };
        let mut pfd = vec![
            fd(self.client.as_raw_fd(), libc::POLLIN),
            fd(self.ctx.fd().as_raw_fd(), libc::POLLIN),
        ];
        let mut slots = vec![Slot::Client, Slot::Host];
        for (id, f) in &self.write_pipes {
            pfd.push(fd(f.as_raw_fd(), libc::POLLIN));
            slots.push(Slot::WritePipe(*id));
        }
        for (id, p) in &self.read_pipes {
            if !p.pending.is_empty() {
                pfd.push(fd(p.fd.as_raw_fd(), libc::POLLOUT));
                slots.push(Slot::ReadPipe(*id));
            }
        }
        (pfd, slots)
    }

    fn run_inner(&mut self) -> Result<(), RelayError> {
        let mut event = Vec::new();
        let mut buf = vec![0u8; 64 * 1024];
        loop {
            let (mut pfd, slots) = self.poll_set();
            // SAFETY: a valid pollfd array for the call.
            let n = unsafe { libc::poll(pfd.as_mut_ptr(), pfd.len() as libc::nfds_t, -1) };
            if n < 0 {
                let e = std::io::Error::last_os_error();
                if e.raw_os_error() == Some(libc::EINTR) {
                    continue;
                }
                return Err(e.into());
            }
            for (p, slot) in pfd.iter().zip(&slots) {
                if p.revents == 0 {
                    continue;
                }
                match *slot {
                    Slot::Host => {
                        if self.ctx.take_event(&mut event)? {
                            self.host_event(&event)?;
                            self.ctx.poll()?;
                        }
                    }
                    Slot::Client => {
                        let mut fds = Vec::new();
                        let n = recv_with_fds(&self.client, &mut buf, &mut fds)?;
                        if n == 0 {
                            return Err(RelayError::ClientClosed);
                        }
                        self.cin.extend_from_slice(&buf[..n]);
                        self.cfds.extend(fds);
                        self.client_bytes()?;
                    }
                    Slot::WritePipe(id) => self.pump_write_pipe(id, &mut buf)?,
                    Slot::ReadPipe(id) => self.flush_read_pipe(id),
                }
            }
        }
    }

    /// Requests: framed, translated where needed, batched into SENDs.
    fn client_bytes(&mut self) -> Result<(), RelayError> {
        let mut off = 0;
        while let Some(p) = self
            .t
            .next(&self.cin[off..], self.cfds.len(), Dir::Request)?
        {
            let bytes = self.cin[off..off + p.size].to_vec();
            off += p.size;
            let fds: Vec<OwnedFd> = self.cfds.drain(..p.fds).collect();
            let ids = self.request(&p, &bytes, fds)?;
            // The host takes a read pipe only as the first identifier of
            // its SEND, one per SEND: such a request starts a SEND of its
            // own and ends it.
            let pipe = ids.iter().any(|&(_, t)| t == id_type::READ_PIPE);
            if pipe
                || self.batch.len() + bytes.len() > virtgpu::MAX_SEND_DATA
                || self.batch_ids.len() + ids.len() > virtgpu::MAX_IDENTIFIERS
            {
                self.flush()?;
            }
            self.batch.extend_from_slice(&bytes);
            self.batch_ids.extend(ids);
            if pipe {
                self.flush()?;
            }
        }
        self.cin.drain(..off);
        self.flush()
    }

    fn flush(&mut self) -> Result<(), RelayError> {
        if !self.batch.is_empty() || !self.batch_ids.is_empty() {
            self.ctx.send(&self.batch, &self.batch_ids)?;
            self.batch.clear();
            self.batch_ids.clear();
        }
        for b in self.releasing.drain(..) {
            self.ctx.close(b);
        }
        Ok(())
    }

    /// Acts on one request; returns the identifiers its fds become.
    fn request(
        &mut self,
        p: &Parsed,
        bytes: &[u8],
        fds: Vec<OwnedFd>,
    ) -> Result<Vec<(u32, u32)>, RelayError> {
        let k = &self.t.known;
        let name = p.msg.name;
        if p.iface == k.shm && name == "create_pool" {
            let id = arg_u32(bytes, p, 0).unwrap_or(0);
            let size = arg_u32(bytes, p, 2).unwrap_or(0) as i32;
            let fd = fds
                .into_iter()
                .next()
                .ok_or_else(|| RelayError::Protocol("no fd".into()))?;
            return self
                .create_pool(id, size, fd)
                .map(|res| vec![(res, id_type::BLOB)]);
        }
        if p.iface == k.shm_pool {
            self.shm_pool_request(p, bytes)?;
        } else if p.iface == k.buffer && name == "destroy" {
            if let Some(b) = self.buffers.remove(&p.object) {
                self.release_pool_ref(b.pool);
            }
        } else if p.iface == k.surface {
            self.surface_request(p, bytes);
        }
        // Any other fd must be the write end of a pipe (a paste target).
        let mut ids = Vec::new();
        for fd in fds {
            if !is_pipe_write_end(&fd) {
                return Err(RelayError::Protocol(format!(
                    "{name}: an fd the relay cannot carry"
                )));
            }
            let id = self.ctx.next_read_pipe_id();
            let f = File::from(fd);
            set_nonblocking(&f);
            self.read_pipes.insert(
                id,
                ReadPipe {
                    fd: f,
                    pending: Vec::new(),
                    hang_up: false,
                },
            );
            ids.push((id, id_type::READ_PIPE));
        }
        Ok(ids)
    }

    /// `wl_shm_pool` requests: buffers, resizes, destruction.
    fn shm_pool_request(&mut self, p: &Parsed, bytes: &[u8]) -> Result<(), RelayError> {
        match p.msg.name {
            "create_buffer" => {
                let (Some(id), Some(offset), Some(h), Some(stride)) = (
                    arg_u32(bytes, p, 0),
                    arg_u32(bytes, p, 1),
                    arg_u32(bytes, p, 3),
                    arg_u32(bytes, p, 4),
                ) else {
                    return Err(RelayError::Protocol("create_buffer".into()));
                };
                let key = *self
                    .pool_ids
                    .get(&p.object)
                    .ok_or_else(|| RelayError::Protocol("no pool".into()))?;
                if (stride as usize).checked_mul(h as usize).is_none() {
                    return Err(RelayError::Protocol("buffer size".into()));
                }
                if let Some(pool) = self.pools.get_mut(&key) {
                    pool.buffers += 1;
                }
                if let Some(old) = self.buffers.insert(
                    id,
                    ShmBuffer {
                        pool: key,
                        offset: offset as usize,
                        stride: stride as usize,
                        height: h as usize,
                        dirty: Rows::ALL,
                        surface: 0,
                    },
                ) {
                    self.release_pool_ref(old.pool);
                }
            }
            "resize" => {
                let size = arg_u32(bytes, p, 0).unwrap_or(0) as i32;
                self.resize_pool(p.object, size)?;
            }
            "destroy" => {
                if let Some(key) = self.pool_ids.remove(&p.object) {
                    if let Some(pool) = self.pools.get_mut(&key) {
                        pool.destroyed = true;
                    }
                    self.maybe_free_pool(key);
                }
            }
            _ => {}
        }
        Ok(())
    }

    /// `wl_surface` requests: attachments, damage, commits.
    fn surface_request(&mut self, p: &Parsed, bytes: &[u8]) {
        match p.msg.name {
            "attach" => {
                let b = arg_u32(bytes, p, 0).unwrap_or(0);
                self.attached.insert(p.object, b);
            }
            "damage_buffer" => {
                let (y, h) = (arg_u32(bytes, p, 1), arg_u32(bytes, p, 3));
                let r = match (y, h) {
                    (Some(y), Some(h)) => {
                        let y = (y as i32).max(0) as usize;
                        Rows(y, y.saturating_add((h as i32).max(0) as usize))
                    }
                    _ => Rows::ALL,
                };
                let d = self.damage.entry(p.object).or_insert(Rows::EMPTY);
                *d = d.union(r);
            }
            // Surface coordinates (scale, transform, viewport): all rows.
            "damage" => {
                self.damage.insert(p.object, Rows::ALL);
            }
            "commit" => {
                let d = self.damage.remove(&p.object).unwrap_or(Rows::EMPTY);
                self.commit(p.object, d);
            }
            "destroy" => {
                self.attached.remove(&p.object);
                self.damage.remove(&p.object);
            }
            _ => {}
        }
    }

    fn create_pool(&mut self, id: u32, size: i32, fd: OwnedFd) -> Result<u32, RelayError> {
        if size <= 0 {
            return Err(RelayError::Protocol("pool size".into()));
        }
        file_holds(&fd, size)?;
        let size = size as u64;
        // Room to grow: clients (cursor themes) resize pools.
        let capacity = size
            .max(size.saturating_mul(2).min(size + (64 << 20)))
            .max(1 << 20)
            .div_ceil(4096)
            * 4096;
        let guest = Mapping::of_file(&fd, size as usize)?;
        let req = self.ctx.requirements(
            u32::try_from(capacity).map_err(|_| RelayError::Protocol("pool too large".into()))?,
        )?;
        let host = self.ctx.host_blob(req.blob_id, req.size, true)?;
        let res = host.res_handle;
        let key = self.next_pool;
        self.next_pool += 1;
        self.pools.insert(
            key,
            Pool {
                client_fd: fd,
                guest,
                host: Some(host),
                capacity: req.size,
                buffers: 0,
                destroyed: false,
            },
        );
        if let Some(old) = self.pool_ids.insert(id, key) {
            if let Some(p) = self.pools.get_mut(&old) {
                p.destroyed = true;
            }
            self.maybe_free_pool(old);
        }
        Ok(res)
    }

    fn resize_pool(&mut self, id: u32, size: i32) -> Result<(), RelayError> {
        let key = *self
            .pool_ids
            .get(&id)
            .ok_or_else(|| RelayError::Protocol("no pool".into()))?;
        let pool = self
            .pools
            .get_mut(&key)
            .ok_or_else(|| RelayError::Protocol("no pool".into()))?;
        if size <= 0 || size as u64 > pool.capacity {
            return Err(RelayError::Protocol(format!(
                "pool resized to {size} bytes, past the {} the host mirror holds",
                pool.capacity
            )));
        }
        file_holds(&pool.client_fd, size)?;
        pool.guest = Mapping::of_file(&pool.client_fd, size as usize)?;
        Ok(())
    }

    fn release_pool_ref(&mut self, key: u64) {
        if let Some(p) = self.pools.get_mut(&key) {
            p.buffers = p.buffers.saturating_sub(1);
        }
        self.maybe_free_pool(key);
    }

    fn maybe_free_pool(&mut self, key: u64) {
        if self
            .pools
            .get(&key)
            .is_some_and(|p| p.destroyed && p.buffers == 0)
        {
            if let Some(mut p) = self.pools.remove(&key) {
                // The batch being built may still create it on the host.
                self.releasing.extend(p.host.take());
            }
        }
    }

    /// A surface commit: the damage goes to every buffer of the surface;
    /// the newly attached buffer's dirty rows are copied to the host.
    fn commit(&mut self, surface: u32, damage: Rows) {
        let attached = self.attached.remove(&surface);
        for b in self.buffers.values_mut().filter(|b| b.surface == surface) {
            b.dirty = b.dirty.union(damage);
        }
        let Some(id) = attached.filter(|&b| b != 0) else {
            return;
        };
        let Some(b) = self.buffers.get_mut(&id) else {
            return;
        };
        if b.surface != surface {
            // First use on this surface: everything is new to the host.
            b.surface = surface;
            b.dirty = Rows::ALL;
        }
        let rows = std::mem::replace(&mut b.dirty, Rows::EMPTY);
        let Some((start, len)) = rows.bytes(b.stride, b.height) else {
            return;
        };
        let Some(pool) = self.pools.get(&b.pool) else {
            return;
        };
        if let Some(host) = pool.host.as_ref().and_then(|h| h.map.as_ref()) {
            if !host.copy_from(&pool.guest, b.offset.saturating_add(start), len) {
                eprintln!("wl-relay: buffer {id} lies outside its pool");
            }
        }
    }

    /// A channel-ring event from the host.
    fn host_event(&mut self, ev: &[u8]) -> Result<(), RelayError> {
        match ev.first().copied() {
            Some(xd::RECEIVE) => self.receive(ev),
            Some(xd::READ) => {
                let w = |o: usize| u32::from_le_bytes(ev[o..o + 4].try_into().unwrap_or_default());
                let (id, hang_up, size) = (w(8), w(12) != 0, w(16) as usize);
                let data = ev.get(24..24 + size).unwrap_or_default();
                if let Some(p) = self.read_pipes.get_mut(&id) {
                    if p.pending.len() + data.len() > MAX_PIPE_BUFFER {
                        // A reader that never reads: give up on this paste.
                        self.read_pipes.remove(&id);
                        return Ok(());
                    }
                    p.pending.extend_from_slice(data);
                    p.hang_up |= hang_up;
                    self.flush_read_pipe(id);
                }
                Ok(())
            }
            _ => Ok(()),
        }
    }

    fn receive(&mut self, ev: &[u8]) -> Result<(), RelayError> {
        let w = |o: usize| u32::from_le_bytes(ev[o..o + 4].try_into().unwrap_or_default());
        let nids = (w(8) as usize).min(virtgpu::MAX_IDENTIFIERS);
        let size = w(12) as usize;
        if nids == 0 && size == 0 {
            return Err(RelayError::HostClosed);
        }
        for i in 0..nids {
            let (id, ty, sz) = (w(16 + i * 4), w(16 + 112 + i * 4), w(16 + 224 + i * 4));
            let fd = match ty {
                id_type::BLOB => {
                    let bo = self.ctx.host_blob(id, u64::from(sz), false)?;
                    let mut data = vec![0u8; sz as usize];
                    if let Some(m) = &bo.map {
                        m.read(0, &mut data);
                    }
                    self.ctx.close(bo);
                    virtgpu::sealed_memfd(&data)?
                }
                id_type::WRITE_PIPE => {
                    let (r, wr) = pipe()?;
                    set_nonblocking(&r);
                    self.write_pipes.push((id, r));
                    wr.into()
                }
                other => {
                    return Err(RelayError::Protocol(format!(
                        "host sent identifier type {other}"
                    )))
                }
            };
            self.hfds.push_back(fd);
        }
        let data = ev
            .get(virtgpu::SEND_RECEIVE_HDR..virtgpu::SEND_RECEIVE_HDR + size)
            .ok_or_else(|| RelayError::Protocol("RECEIVE past the ring".into()))?;
        self.hin.extend_from_slice(data);
        self.host_bytes()
    }

    /// Events: framed, registry filtered, forwarded with their fds.
    fn host_bytes(&mut self) -> Result<(), RelayError> {
        let mut off = 0;
        let mut out = Vec::new();
        let mut fds = Vec::new();
        while let Some(p) = self.t.next(&self.hin[off..], self.hfds.len(), Dir::Event)? {
            let bytes = &self.hin[off..off + p.size];
            off += p.size;
            fds.extend(self.hfds.drain(..p.fds));
            if let Some(b) = self.t.filter_global(&p, bytes) {
                out.extend_from_slice(&b);
            }
        }
        self.hin.drain(..off);
        let mut sent = 0;
        let mut first = true;
        while sent < out.len() || (first && !fds.is_empty()) {
            let f: &[OwnedFd] = if first { &fds } else { &[] };
            let n = send_with_fds(&self.client, &out[sent..], f)?;
            first = false;
            sent += n;
            if n == 0 && out.is_empty() {
                break;
            }
        }
        Ok(())
    }

    fn pump_write_pipe(&mut self, id: u32, buf: &mut [u8]) -> Result<(), RelayError> {
        let Some(i) = self.write_pipes.iter().position(|(p, _)| *p == id) else {
            return Ok(());
        };
        let cap = buf.len().min(virtgpu::MAX_WRITE_DATA);
        match self.write_pipes[i].1.read(&mut buf[..cap]) {
            Ok(n) if n > 0 => self.ctx.write_pipe(id, &buf[..n], false)?,
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {}
            // EOF or a read error: the writer is done, hang up the host pipe.
            _ => {
                self.ctx.write_pipe(id, &[], true)?;
                self.write_pipes.remove(i);
            }
        }
        Ok(())
    }

    fn flush_read_pipe(&mut self, id: u32) {
        let Some(p) = self.read_pipes.get_mut(&id) else {
            return;
        };
        while !p.pending.is_empty() {
            match p.fd.write(&p.pending) {
                Ok(n) => {
                    p.pending.drain(..n);
                }
                Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => return,
                Err(_) => {
                    self.read_pipes.remove(&id);
                    return;
                }
            }
        }
        if p.hang_up {
            self.read_pipes.remove(&id);
        }
    }
}

/// A client's pool file must hold the size it claims: the relay reads the
/// mapping, and a page past the file's end is a SIGBUS.
fn file_holds(fd: &OwnedFd, size: i32) -> Result<(), RelayError> {
    // SAFETY: fstat on a valid fd with a zeroed out-struct.
    let st = unsafe {
        let mut st: libc::stat = std::mem::zeroed();
        if libc::fstat(fd.as_raw_fd(), &mut st) != 0 {
            return Err(std::io::Error::last_os_error().into());
        }
        st
    };
    if st.st_size < i64::from(size) {
        return Err(RelayError::Protocol(format!(
            "a pool of {size} bytes in a file of {}",
            st.st_size
        )));
    }
    Ok(())
}

fn is_pipe_write_end(fd: &OwnedFd) -> bool {
    // SAFETY: fstat/fcntl on a valid fd with a zeroed out-struct.
    unsafe {
        let mut st: libc::stat = std::mem::zeroed();
        if libc::fstat(fd.as_raw_fd(), &mut st) != 0 || st.st_mode & libc::S_IFMT != libc::S_IFIFO {
            return false;
        }
        libc::fcntl(fd.as_raw_fd(), libc::F_GETFL) & libc::O_ACCMODE == libc::O_WRONLY
    }
}

fn set_nonblocking(f: &File) {
    // SAFETY: fcntl on a valid fd with integer arguments.
    unsafe {
        let fl = libc::fcntl(f.as_raw_fd(), libc::F_GETFL);
        libc::fcntl(f.as_raw_fd(), libc::F_SETFL, fl | libc::O_NONBLOCK);
    }
}

fn pipe() -> std::io::Result<(File, File)> {
    use std::os::fd::FromRawFd;
    let mut p = [0i32; 2];
    // SAFETY: pipe2 fills the two-element array.
    if unsafe { libc::pipe2(p.as_mut_ptr(), libc::O_CLOEXEC) } != 0 {
        return Err(std::io::Error::last_os_error());
    }
    // SAFETY: both fds are new and owned by nothing else.
    Ok(unsafe { (File::from_raw_fd(p[0]), File::from_raw_fd(p[1])) })
}

#[cfg(test)]
mod tests {
    use super::*;
    use wl_proxy::wire::Writer;

    #[test]
    fn frames_tracks_new_objects_and_waits_for_bytes_and_fds() {
        let mut t = Tracker::new();
        // wl_display.get_registry(new_id 2)
        let m = Writer::new(1, 1).uint(2).finish();
        assert!(
            t.next(&m[..6], 0, Dir::Request).unwrap().is_none(),
            "needs bytes"
        );
        let p = t.next(&m, 0, Dir::Request).unwrap().unwrap();
        assert_eq!((p.size, p.fds), (12, 0));
        assert_eq!(t.interface_of(2), Some("wl_registry"));
        // wl_registry.bind(name 1, "wl_shm", 1, new_id 3)
        let m = Writer::new(2, 0)
            .uint(1)
            .string("wl_shm")
            .uint(1)
            .uint(3)
            .finish();
        t.next(&m, 0, Dir::Request).unwrap().unwrap();
        assert_eq!(t.interface_of(3), Some("wl_shm"));
        // wl_shm.create_pool(new_id 4, fd, size): waits for its fd.
        let m = Writer::new(3, 0).uint(4).uint(4096).finish();
        assert!(
            t.next(&m, 0, Dir::Request).unwrap().is_none(),
            "needs an fd"
        );
        let p = t.next(&m, 1, Dir::Request).unwrap().unwrap();
        assert_eq!(p.fds, 1);
        assert_eq!(t.interface_of(4), Some("wl_shm_pool"));
        assert_eq!(arg_u32(&m, &p, 0), Some(4));
        assert_eq!(arg_u32(&m, &p, 2), Some(4096), "the fd takes no bytes");
    }

    #[test]
    fn damaged_rows_accumulate_per_buffer() {
        let r = Rows(10, 20).union(Rows(5, 12));
        assert_eq!(r, Rows(5, 20));
        assert_eq!(r.bytes(100, 15), Some((500, 1000)), "clamped to the height");
        assert_eq!(Rows::EMPTY.bytes(100, 15), None);
        assert_eq!(Rows::EMPTY.union(Rows(3, 4)), Rows(3, 4));
        assert_eq!(Rows::ALL.bytes(4, 3), Some((0, 12)));
        assert_eq!(Rows(7, 7).bytes(4, 30), None, "zero rows");
    }

    #[test]
    fn malformed_and_unknown_messages_are_errors() {
        let mut t = Tracker::new();
        let bad: Vec<Vec<u8>> = vec![
            Writer::new(9, 0).finish(),                 // unknown object
            Writer::new(1, 99).finish(),                // unknown opcode
            Writer::new(1, 1).finish(),                 // get_registry without its id
            Writer::new(1, 1).uint(0).finish(),         // null new_id
            Writer::new(1, 0).uint(5).uint(7).finish(), // trailing bytes
            vec![1, 0, 0, 0, 0, 0, 7, 0],               // size not a multiple of 4
            vec![1, 0, 0, 0, 0, 0, 4, 0],               // size below the header
        ];
        for (i, m) in bad.iter().enumerate() {
            assert!(t.next(m, 0, Dir::Request).is_err(), "case {i}");
        }
        // A bind to an interface the relay cannot parse.
        let reg = Writer::new(1, 1).uint(2).finish();
        t.next(&reg, 0, Dir::Request).unwrap();
        let m = Writer::new(2, 0)
            .uint(1)
            .string("no_such_iface")
            .uint(1)
            .uint(3)
            .finish();
        assert!(t.next(&m, 0, Dir::Request).is_err());
    }

    #[test]
    fn globals_are_capped_or_hidden() {
        let mut t = Tracker::new();
        t.next(&Writer::new(1, 1).uint(2).finish(), 0, Dir::Request)
            .unwrap();
        let g = |name: &str, v: u32| Writer::new(2, 0).uint(7).string(name).uint(v).finish();
        let m = g("wl_compositor", 99);
        let p = t.next(&m, 0, Dir::Event).unwrap().unwrap();
        let out = t.filter_global(&p, &m).unwrap();
        let cap = protocol::interface(protocol::lookup("wl_compositor").unwrap()).version;
        assert_eq!(
            u32::from_le_bytes(out[out.len() - 4..].try_into().unwrap()),
            cap
        );
        let m = g("wl_compositor", 1);
        let p = t.next(&m, 0, Dir::Event).unwrap().unwrap();
        assert_eq!(
            t.filter_global(&p, &m).unwrap(),
            m,
            "lower versions pass as they are"
        );
        let m = g("vendor_secret_v1", 1);
        let p = t.next(&m, 0, Dir::Event).unwrap().unwrap();
        assert!(t.filter_global(&p, &m).is_none(), "unknown global hidden");
    }
}

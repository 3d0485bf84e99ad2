//! One client's view of the protocol: validates every message in both
//! directions against the object table and the policy, and decides whether
//! it is forwarded as is, rewritten, or dropped.

use std::collections::HashMap;
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, OwnedFd};
use std::sync::Arc;

use crate::objects::{Object, ObjectError, Objects, State};
use crate::policy::Policy;
use crate::protocol::{interface, ArgKind, IfaceId, Known, Message};
use crate::wire::{self, Value, WireError, Writer, HEADER, SERVER_ID_START};

/// `wl_display.error` codes.
pub mod code {
    /// Unknown object or wrong interface.
    pub const INVALID_OBJECT: u32 = 0;
    /// Bad opcode or malformed arguments.
    pub const INVALID_METHOD: u32 = 1;
    /// A resource limit was hit.
    pub const NO_MEMORY: u32 = 2;
    /// The compositor misbehaved.
    pub const IMPLEMENTATION: u32 = 3;
    /// `wl_shm.error.invalid_fd`, sent on the `wl_shm` object.
    pub const SHM_INVALID_FD: u32 = 2;
}

/// Most arguments any message in the tables has (checked by a test).
pub const MAX_ARGS: usize = 24;

/// Why a client is disconnected.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum Violation {
    /// The bytes break the wire format.
    #[error("malformed message to {object}: {reason}")]
    Malformed {
        /// Target object.
        object: u32,
        /// What is wrong.
        reason: &'static str,
    },
    /// The target or an argument is not a live object.
    #[error("unknown object {0}")]
    UnknownObject(u32),
    /// The opcode does not exist at the object's version.
    #[error("invalid opcode {opcode} for {interface} v{version} (object {object})")]
    BadOpcode {
        /// Target object.
        object: u32,
        /// Its interface.
        interface: &'static str,
        /// Its version.
        version: u32,
        /// The opcode.
        opcode: u16,
    },
    /// An object argument has the wrong interface.
    #[error("object {arg} is not a {expected}")]
    WrongInterface {
        /// The argument's id.
        arg: u32,
        /// The interface the signature wants.
        expected: &'static str,
    },
    /// A new id that is in use or outside the sender's range.
    #[error("invalid new id {0}")]
    BadNewId(u32),
    /// The client has too many objects.
    #[error("too many objects")]
    TooManyObjects,
    /// `wl_registry.bind` to something the proxy did not advertise.
    #[error("bind refused: {0}")]
    Bind(String),
    /// A `wl_shm` pool whose fd is not a file as large as it claims.
    #[error("bad shm pool: {0}")]
    ShmPool(&'static str),
    /// The fd count does not match the signatures.
    #[error("{0}")]
    Fds(&'static str),
    /// The compositor sent something the proxy cannot parse.
    #[error("compositor sent an invalid message: {0}")]
    Upstream(String),
}

impl Violation {
    /// The object and code of the `wl_display.error` the client gets.
    pub fn error_target(&self) -> (u32, u32) {
        match self {
            Violation::Malformed { object, .. } => (*object, code::INVALID_METHOD),
            Violation::BadOpcode { object, .. } => (*object, code::INVALID_METHOD),
            Violation::TooManyObjects => (1, code::NO_MEMORY),
            Violation::Upstream(_) => (1, code::IMPLEMENTATION),
            Violation::Fds(_) => (1, code::INVALID_METHOD),
            _ => (1, code::INVALID_OBJECT),
        }
    }
}

impl From<ObjectError> for Violation {
    fn from(e: ObjectError) -> Self {
        match e {
            ObjectError::BadNewId(id) => Violation::BadNewId(id),
            ObjectError::TooMany => Violation::TooManyObjects,
        }
    }
}

/// What to do with a valid message.
#[derive(Debug, PartialEq, Eq)]
pub enum Verdict {
    /// Send it on unchanged.
    Forward,
    /// Send these bytes instead (same fds).
    Replace(Vec<u8>),
    /// Do not send it (its fds are closed).
    Drop,
}

/// A global the proxy advertised to this client.
#[derive(Debug, Clone, Copy)]
struct Global {
    iface: IfaceId,
    version: u32,
}

/// Per-client protocol state.
#[derive(Debug)]
pub struct Session {
    objects: Objects,
    policy: Arc<Policy>,
    tag: Option<Arc<str>>,
    globals: HashMap<u32, Global>,
    pools: HashMap<u32, OwnedFd>,
    known: &'static Known,
    commits: u64,
}

struct ArgErr(Violation);
impl From<WireError> for ArgErr {
    fn from(e: WireError) -> Self {
        ArgErr(match e {
            WireError::NeedFds => Violation::Fds("too few fds for the message"),
            WireError::NeedBytes => Violation::Malformed {
                object: 0,
                reason: "message too short",
            },
            WireError::Malformed(reason) => Violation::Malformed { object: 0, reason },
        })
    }
}
impl From<Violation> for ArgErr {
    fn from(v: Violation) -> Self {
        ArgErr(v)
    }
}

/// A message's decoded arguments (no allocation).
struct Args<'a> {
    vals: [Value<'a>; MAX_ARGS],
    n: usize,
}

impl Session {
    /// A new client's state.
    pub fn new(policy: Arc<Policy>, tag: Option<Arc<str>>) -> Self {
        let known = Known::get();
        Session {
            objects: Objects::new(known.display, policy.limits.max_objects),
            policy,
            tag,
            globals: HashMap::new(),
            pools: HashMap::new(),
            known,
            commits: 0,
        }
    }

    /// The `wl_display.error` event that tells the client why it is cut off.
    pub fn error_event(&self, v: &Violation) -> Vec<u8> {
        let (object, code) = v.error_target();
        let object = if self.objects.live(object).is_some() {
            object
        } else {
            1
        };
        display_error(object, code, &v.to_string())
    }

    /// The shm pools this client holds (an fd each).
    pub fn pool_count(&self) -> usize {
        self.pools.len()
    }

    /// `wl_surface.commit` requests this client has made (logged when it
    /// goes; the benchmarks count frames that reached the compositor by it).
    pub fn commits(&self) -> u64 {
        self.commits
    }

    /// Number of objects the client has.
    pub fn object_count(&self) -> usize {
        self.objects.len()
    }

    /// Number of fds the message at the start of `buf` carries, once its
    /// header is known (so the caller can tell whether they have arrived).
    /// `client` says which direction it travels.
    pub fn fds_needed(&self, h: &wire::Header, client: bool) -> Option<usize> {
        let o = self.objects.get(h.object)?;
        let i = interface(o.iface);
        let msgs = if client { i.requests } else { i.events };
        msgs.get(usize::from(h.opcode)).map(|m| m.fds)
    }

    fn decode<'a>(
        &self,
        body: &'a [u8],
        nfds: usize,
        msg: &'static Message,
        object: u32,
        from_client: bool,
    ) -> Result<Args<'a>, Violation> {
        let mut a = Args {
            vals: [Value::Uint(0); MAX_ARGS],
            n: 0,
        };
        let res = wire::parse_args(body, nfds, msg, |arg, v| {
            if a.n == MAX_ARGS {
                return Err(ArgErr(Violation::Malformed {
                    object,
                    reason: "too many arguments",
                }));
            }
            if let (Value::Object(id), true) = (v, id_nonzero(v)) {
                let o = if from_client {
                    self.objects.live(id)
                } else {
                    self.objects.get(id)
                };
                let o = o.ok_or(Violation::UnknownObject(id))?;
                if let Some(want) = arg.interface {
                    if want != o.iface {
                        return Err(ArgErr(Violation::WrongInterface {
                            arg: id,
                            expected: interface(want).name,
                        }));
                    }
                }
            }
            debug_assert!(arg.kind != ArgKind::Fd || matches!(v, Value::Fd(_)));
            a.vals[a.n] = v;
            a.n += 1;
            Ok(())
        });
        match res {
            Ok(()) => Ok(a),
            Err(ArgErr(Violation::Malformed { reason, .. })) => {
                Err(Violation::Malformed { object, reason })
            }
            Err(ArgErr(v)) => Err(v),
        }
    }

    /// Validates one complete request (`buf` holds exactly the message) with
    /// `fds` the fds queued from the client (the message's come first).
    /// Returns what to do and how many fds the message owns.
    pub fn request(&mut self, buf: &[u8], fds: &[OwnedFd]) -> Result<(Verdict, usize), Violation> {
        let h = wire::header(buf).map_err(|_| Violation::Malformed {
            object: 0,
            reason: "bad header",
        })?;
        let obj = self
            .objects
            .live(h.object)
            .ok_or(Violation::UnknownObject(h.object))?;
        let iface = interface(obj.iface);
        let msg = iface
            .requests
            .get(usize::from(h.opcode))
            .filter(|m| m.since <= obj.version)
            .ok_or(Violation::BadOpcode {
                object: h.object,
                interface: iface.name,
                version: obj.version,
                opcode: h.opcode,
            })?;
        let args = self.decode(&buf[HEADER..h.size], fds.len(), msg, h.object, true)?;
        let vals = &args.vals[..args.n];
        let k = self.known;
        let mut verdict = Verdict::Forward;

        // Special cases first: they may refuse the message.
        if obj.iface == k.registry && h.opcode == 0 {
            self.check_bind(vals)?;
        } else if obj.iface == k.shm && h.opcode == 0 {
            if self.pools.len() >= self.policy.limits.max_pools {
                return Err(Violation::ShmPool("too many shm pools"));
            }
            self.check_pool(vals, fds, None)?;
        } else if obj.iface == k.shm_pool && h.opcode == 2 {
            self.check_pool(vals, fds, Some(h.object))?;
        } else if obj.iface == k.surface && h.opcode == 6 {
            self.commits += 1;
        } else if obj.iface == k.xdg_toplevel && (h.opcode == 2 || h.opcode == 3) {
            if let Some(Value::Str(Some(s))) = vals.first() {
                let new = self.label(s, h.opcode == 2);
                if new != *s {
                    verdict =
                        Verdict::Replace(Writer::new(h.object, h.opcode).string(&new).finish());
                }
            }
        }

        // Then the objects it creates.
        self.create_objects(msg, vals, obj, h.object, h.opcode)?;
        if obj.iface == k.shm {
            if let (Some(Value::NewId(id)), Some(fd)) = (vals.first(), fds.first()) {
                let dup = fd
                    .try_clone()
                    .map_err(|_| Violation::ShmPool("cannot keep the pool fd"))?;
                self.pools.insert(*id, dup);
            }
        }
        if msg.destructor {
            self.objects.kill(h.object);
            self.pools.remove(&h.object);
        }
        Ok((verdict, msg.fds))
    }

    /// Records the objects a client request creates (typed new_ids take the
    /// interface the signature names; an untyped one is `wl_registry.bind`'s
    /// alone).
    fn create_objects(
        &mut self,
        msg: &Message,
        vals: &[Value<'_>],
        obj: Object,
        object: u32,
        opcode: u16,
    ) -> Result<(), Violation> {
        let k = self.known;
        for (arg, v) in msg.args.iter().zip(vals) {
            match *v {
                Value::NewId(id) => {
                    let child = arg.interface.unwrap_or(obj.iface);
                    self.objects.create_client(id, child, obj.version)?;
                }
                Value::NewIdDyn { .. } if !(obj.iface == k.registry && opcode == 0) => {
                    return Err(Violation::Malformed {
                        object,
                        reason: "untyped new_id outside wl_registry.bind",
                    });
                }
                Value::NewIdDyn {
                    interface: name,
                    version,
                    id,
                } => {
                    let child = crate::protocol::lookup(name)
                        .ok_or_else(|| Violation::Bind(name.to_string()))?;
                    self.objects.create_client(id, child, version)?;
                }
                _ => {}
            }
        }
        Ok(())
    }

    fn check_bind(&self, vals: &[Value<'_>]) -> Result<(), Violation> {
        let [Value::Uint(name), Value::NewIdDyn {
            interface: iname,
            version,
            ..
        }] = vals
        else {
            return Err(Violation::Bind("malformed bind".into()));
        };
        let g = self
            .globals
            .get(name)
            .ok_or_else(|| Violation::Bind(format!("global {name} was not advertised")))?;
        let want = interface(g.iface).name;
        if *iname != want {
            return Err(Violation::Bind(format!(
                "global {name} is {want}, not {iname}"
            )));
        }
        if *version == 0 || *version > g.version {
            return Err(Violation::Bind(format!(
                "{want} version {version} above {}",
                g.version
            )));
        }
        Ok(())
    }

    /// `wl_shm.create_pool(id, fd, size)` or `wl_shm_pool.resize(size)`: the
    /// fd must be a regular file (a memfd is one) at least `size` bytes long.
    fn check_pool(
        &self,
        vals: &[Value<'_>],
        fds: &[OwnedFd],
        pool: Option<u32>,
    ) -> Result<(), Violation> {
        let (fd, size) = match (pool, vals) {
            (None, [Value::NewId(_), Value::Fd(0), Value::Int(size)]) => {
                (fds.first().map(|f| f.as_raw_fd()), *size)
            }
            (Some(p), [Value::Int(size)]) => (self.pools.get(&p).map(|f| f.as_raw_fd()), *size),
            _ => return Err(Violation::ShmPool("malformed")),
        };
        let fd = fd.ok_or(Violation::ShmPool("no fd"))?;
        if size <= 0 {
            return Err(Violation::ShmPool("size must be positive"));
        }
        // SAFETY: `fd` belongs to an OwnedFd that outlives this call.
        let fd = unsafe { BorrowedFd::borrow_raw(fd) };
        let st = fstat(fd).map_err(|_| Violation::ShmPool("fstat failed"))?;
        if st.st_mode & libc::S_IFMT != libc::S_IFREG {
            return Err(Violation::ShmPool("fd is not a file or memfd"));
        }
        if st.st_size < i64::from(size) {
            return Err(Violation::ShmPool("fd is smaller than the pool"));
        }
        Ok(())
    }

    /// A sanitised title or app id with the tag.
    fn label(&self, s: &str, title: bool) -> String {
        let mut out = String::with_capacity(s.len() + 16);
        match (&self.tag, title) {
            (Some(t), true) => {
                out.push('[');
                out.push_str(t);
                out.push_str("] ");
            }
            (Some(t), false) => {
                out.push_str(t);
                out.push(':');
            }
            (None, _) => {}
        }
        let max = self.policy.limits.max_title_bytes;
        for c in s.chars() {
            let c = if c.is_control() || is_bidi_control(c) {
                '\u{fffd}'
            } else {
                c
            };
            if out.len() + c.len_utf8() > max {
                break;
            }
            out.push(c);
        }
        out
    }

    /// Validates one complete event from the compositor.
    pub fn event(
        &mut self,
        buf: &[u8],
        fds: &mut [OwnedFd],
    ) -> Result<(Verdict, usize), Violation> {
        let up = |v: Violation| Violation::Upstream(v.to_string());
        let h = wire::header(buf).map_err(|_| Violation::Upstream("bad header".into()))?;
        let obj = self
            .objects
            .get(h.object)
            .ok_or_else(|| Violation::Upstream(format!("event for unknown object {}", h.object)))?;
        let iface = interface(obj.iface);
        let msg = iface
            .events
            .get(usize::from(h.opcode))
            .filter(|m| m.since <= obj.version)
            .ok_or_else(|| {
                Violation::Upstream(format!("bad event opcode {} for {}", h.opcode, iface.name))
            })?;
        let args = self
            .decode(&buf[HEADER..h.size], fds.len(), msg, h.object, false)
            .map_err(up)?;
        let vals = &args.vals[..args.n];
        let k = self.known;
        let mut verdict = Verdict::Forward;
        if obj.iface == k.display && h.opcode == 1 {
            // delete_id: the client may reuse the id now.
            if let [Value::Uint(id)] = vals {
                self.objects.remove(*id);
            }
        } else if obj.iface == k.registry && h.opcode == 0 {
            verdict = self.on_global(h.object, vals);
        } else if obj.iface == k.registry && h.opcode == 1 {
            if let [Value::Uint(name)] = vals {
                if !self.globals.contains_key(name) {
                    verdict = Verdict::Drop;
                }
            }
        } else if obj.iface == k.keyboard && h.opcode == 0 {
            // keymap(format, fd, size): the client only reads it.
            if let ([_, _, Value::Uint(size)], Some(fd)) = (vals, fds.first_mut()) {
                if !read_only(fd.as_fd()) {
                    *fd = sealed_copy(fd.as_fd(), *size).map_err(|e| {
                        Violation::Upstream(format!("a writable keymap that cannot be copied: {e}"))
                    })?;
                }
            }
        }
        for (arg, v) in msg.args.iter().zip(vals) {
            if let Value::NewIdDyn { .. } = v {
                return Err(Violation::Upstream("untyped new_id in an event".into()));
            }
            if let Value::NewId(id) = *v {
                let child = arg.interface.unwrap_or(obj.iface);
                if id < SERVER_ID_START {
                    return Err(Violation::Upstream(format!(
                        "server created client id {id}"
                    )));
                }
                self.objects
                    .create_server(id, child, obj.version)
                    .map_err(|e| up(e.into()))?;
            }
        }
        for fd in fds.iter().take(msg.fds) {
            unblock_pipe(fd.as_fd());
        }
        if msg.destructor {
            // A client id waits for delete_id; a server id is gone now.
            if h.object >= SERVER_ID_START {
                self.objects.remove(h.object);
            } else if self.objects.get(h.object).map(|o| o.state) == Some(State::Live) {
                self.objects.kill(h.object);
            }
        }
        Ok((verdict, msg.fds))
    }

    fn on_global(&mut self, registry: u32, vals: &[Value<'_>]) -> Verdict {
        let [Value::Uint(name), Value::Str(Some(iname)), Value::Uint(version)] = vals else {
            return Verdict::Drop;
        };
        match self.policy.advertise(iname, *version) {
            Some((iface, v)) => {
                self.globals.insert(*name, Global { iface, version: v });
                if v == *version {
                    Verdict::Forward
                } else {
                    Verdict::Replace(
                        Writer::new(registry, 0)
                            .uint(*name)
                            .string(iname)
                            .uint(v)
                            .finish(),
                    )
                }
            }
            None => {
                tracing::debug!(global = %iname, "hidden from the client");
                Verdict::Drop
            }
        }
    }
}

fn id_nonzero(v: Value<'_>) -> bool {
    matches!(v, Value::Object(id) if id != 0)
}

fn is_bidi_control(c: char) -> bool {
    matches!(c, '\u{200e}' | '\u{200f}' | '\u{202a}'..='\u{202e}' | '\u{2066}'..='\u{2069}')
}

/// Whether a client can write through `fd`: opened read-only, or sealed
/// against writes.
pub fn read_only(fd: BorrowedFd<'_>) -> bool {
    // SAFETY: fcntl queries on an open fd.
    let (fl, seals) = unsafe {
        (
            libc::fcntl(fd.as_raw_fd(), libc::F_GETFL),
            libc::fcntl(fd.as_raw_fd(), libc::F_GET_SEALS),
        )
    };
    (fl >= 0 && fl & libc::O_ACCMODE == libc::O_RDONLY)
        || (seals >= 0 && seals & (libc::F_SEAL_WRITE | libc::F_SEAL_FUTURE_WRITE) != 0)
}

/// Largest keymap copied (xkb keymaps are tens of KiB).
const MAX_KEYMAP: u32 = 16 << 20;

/// The first `size` bytes of `fd` in a new memfd sealed against every
/// change: what a client gets instead of a keymap it could write (and
/// with it, a compositor that shares one writable keymap, every other
/// client's).
pub fn sealed_copy(fd: BorrowedFd<'_>, size: u32) -> std::io::Result<OwnedFd> {
    use std::os::fd::FromRawFd;
    if size == 0 || size > MAX_KEYMAP {
        return Err(std::io::Error::other(format!("size {size}")));
    }
    // Read, not mapped: whoever else holds the writable file may shrink it
    // meanwhile, and a mapping read past the end is a SIGBUS.
    let mut data = vec![0u8; size as usize];
    let mut got = 0;
    while got < data.len() {
        // SAFETY: pread into the unfilled part of `data`, from an open fd.
        let n = unsafe {
            libc::pread(
                fd.as_raw_fd(),
                data[got..].as_mut_ptr().cast(),
                data.len() - got,
                got as libc::off_t,
            )
        };
        match n {
            0 => break,
            n if n > 0 => got += n as usize,
            _ => {
                let e = std::io::Error::last_os_error();
                if e.kind() != std::io::ErrorKind::Interrupted {
                    return Err(e);
                }
            }
        }
    }
    // SAFETY: a NUL-terminated name and flags.
    let m = unsafe {
        libc::memfd_create(
            c"keymap".as_ptr(),
            libc::MFD_CLOEXEC | libc::MFD_ALLOW_SEALING,
        )
    };
    if m < 0 {
        return Err(std::io::Error::last_os_error());
    }
    // SAFETY: a new fd nothing else owns.
    let mut f = std::fs::File::from(unsafe { OwnedFd::from_raw_fd(m) });
    // What the file no longer held reads as zeros.
    std::io::Write::write_all(&mut f, &data)?;
    let seals = libc::F_SEAL_SHRINK | libc::F_SEAL_GROW | libc::F_SEAL_WRITE | libc::F_SEAL_SEAL;
    // SAFETY: fcntl on our memfd.
    if unsafe { libc::fcntl(f.as_raw_fd(), libc::F_ADD_SEALS, seals) } != 0 {
        return Err(std::io::Error::last_os_error());
    }
    Ok(OwnedFd::from(f))
}

/// Pipe buffer given to a pipe a client writes into (what a host reader
/// that falls behind has as slack).
pub const CLIENT_PIPE_SIZE: libc::c_int = 1 << 20;

/// A pipe the compositor hands a client (the write end of a paste: a host
/// app reads the other end) is made non-blocking with a larger buffer. The
/// client is a VM's relay, whose writes happen on the VM's gpu worker: a
/// host app that never reads must not freeze the VM's every window; one
/// that falls more than [`CLIENT_PIPE_SIZE`] behind loses the rest of that
/// paste instead. Other fds are left alone.
pub fn unblock_pipe(fd: BorrowedFd<'_>) {
    if !fstat(fd).is_ok_and(|st| st.st_mode & libc::S_IFMT == libc::S_IFIFO) {
        return;
    }
    // SAFETY: fcntl on an open fd with plain integer arguments; failures
    // leave it as it was.
    unsafe {
        let fl = libc::fcntl(fd.as_raw_fd(), libc::F_GETFL);
        if fl >= 0 {
            libc::fcntl(fd.as_raw_fd(), libc::F_SETFL, fl | libc::O_NONBLOCK);
        }
        libc::fcntl(fd.as_raw_fd(), libc::F_SETPIPE_SZ, CLIENT_PIPE_SIZE);
    }
}

fn fstat(fd: BorrowedFd<'_>) -> std::io::Result<libc::stat> {
    let mut st = std::mem::MaybeUninit::<libc::stat>::uninit();
    // SAFETY: `st` is a valid out-pointer for one `stat`; `fd` is open.
    let r = unsafe { libc::fstat(fd.as_raw_fd(), st.as_mut_ptr()) };
    if r != 0 {
        return Err(std::io::Error::last_os_error());
    }
    // SAFETY: fstat succeeded and filled `st`.
    Ok(unsafe { st.assume_init() })
}

/// A `wl_display.error` event.
pub fn display_error(object: u32, code: u32, message: &str) -> Vec<u8> {
    let mut m: String = message.chars().filter(|c| !c.is_control()).collect();
    let mut cut = m.len().min(1024);
    while !m.is_char_boundary(cut) {
        cut -= 1;
    }
    m.truncate(cut);
    Writer::new(1, 0)
        .uint(object)
        .uint(code)
        .string(&m)
        .finish()
}

#[cfg(test)]
mod tests;

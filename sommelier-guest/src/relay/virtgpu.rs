//! The guest's virtio-gpu DRM device (`/dev/dri/renderD128`) as the relay
//! uses it: one fd and one cross-domain context per Wayland client, its query
//! and channel rings, host-visible blobs, and the commands of the
//! cross-domain protocol (rutabaga_gfx 0.1.85's wire format).

use std::fs::File;
use std::io;
use std::os::fd::{AsRawFd, OwnedFd};

/// DRM ioctl numbers (`_IOWR('d', nr, size)`).
const fn iowr(nr: u32, size: u32) -> libc::c_ulong {
    ((3u32 << 30) | (size << 16) | (0x64 << 8) | nr) as libc::c_ulong
}
const fn iow(nr: u32, size: u32) -> libc::c_ulong {
    ((1u32 << 30) | (size << 16) | (0x64 << 8) | nr) as libc::c_ulong
}
const MAP: libc::c_ulong = iowr(0x41, 16);
const EXECBUFFER: libc::c_ulong = iowr(0x42, 40);
const GETPARAM: libc::c_ulong = iowr(0x43, 16);
const RESOURCE_INFO: libc::c_ulong = iowr(0x45, 16);
const WAIT: libc::c_ulong = iowr(0x48, 8);
const GET_CAPS: libc::c_ulong = iowr(0x49, 24);
const CREATE_BLOB: libc::c_ulong = iowr(0x4a, 48);
const CONTEXT_INIT: libc::c_ulong = iowr(0x4b, 16);
const GEM_CLOSE: libc::c_ulong = iow(0x09, 8);

const EXECBUF_RING_IDX: u32 = 0x04;
const BLOB_MEM_GUEST: u32 = 1;
const BLOB_MEM_HOST3D: u32 = 2;
const BLOB_FLAG_MAPPABLE: u32 = 1;
const BLOB_FLAG_SHAREABLE: u32 = 2;
const CAPSET_CROSS_DOMAIN: u64 = 5;
const CHANNEL_WAYLAND: u32 = 1;

/// Cross-domain commands.
pub mod xd {
    /// Guest → host: set the rings and connect the channel.
    pub const INIT: u8 = 1;
    /// Guest → host: allocation requirements (answer in the query ring).
    pub const GET_IMAGE_REQUIREMENTS: u8 = 2;
    /// Guest → host: wake me (fence on ring 1) with the next event.
    pub const POLL: u8 = 3;
    /// Guest → host: bytes and identifiers for the host socket.
    pub const SEND: u8 = 4;
    /// Host → guest: bytes and identifiers from the host socket.
    pub const RECEIVE: u8 = 5;
    /// Host → guest: data from a host pipe the guest reads.
    pub const READ: u8 = 6;
    /// Guest → host: data for a host pipe the guest writes.
    pub const WRITE: u8 = 7;
}

/// Identifier types.
pub mod id_type {
    /// A host blob (memfd): a `res_handle` guest → host, a blob id host → guest.
    pub const BLOB: u32 = 1;
    /// A pipe whose read end is the host's (data flows host → guest).
    pub const READ_PIPE: u32 = 3;
    /// A pipe whose write end is the host's... the guest writes (guest → host).
    pub const WRITE_PIPE: u32 = 4;
}

/// Most identifiers in one SEND/RECEIVE.
pub const MAX_IDENTIFIERS: usize = 28;
/// Size of a SEND/RECEIVE header (data follows).
pub const SEND_RECEIVE_HDR: usize = 8 + 8 + 3 * 4 * MAX_IDENTIFIERS;
/// Most data bytes in one SEND (the command size is a u16; Sommelier's cap).
pub const MAX_SEND_DATA: usize = 3744;
/// Size of a READ/WRITE header.
pub const READ_WRITE_HDR: usize = 24;
/// Most data bytes in one WRITE.
pub const MAX_WRITE_DATA: usize = 4096 - READ_WRITE_HDR;
/// The first id of a guest read pipe (per context).
pub const READ_PIPE_START: u32 = 0x8000_0000;
/// Bytes of each ring.
pub const RING_SIZE: usize = 4096;

fn ioctl<T>(fd: &impl AsRawFd, req: libc::c_ulong, arg: &mut T) -> io::Result<()> {
    loop {
        // SAFETY: `arg` is a repr(C) struct of the size encoded in `req`, valid
        // and exclusively borrowed for the call.
        let r = unsafe { libc::ioctl(fd.as_raw_fd(), req, arg as *mut T) };
        if r == 0 {
            return Ok(());
        }
        let e = io::Error::last_os_error();
        if e.raw_os_error() != Some(libc::EINTR) && e.raw_os_error() != Some(libc::EAGAIN) {
            return Err(e);
        }
    }
}

/// A mapping of a blob (host-visible window or guest ring), unmapped on drop.
pub struct Mapping {
    ptr: *mut u8,
    len: usize,
}

// SAFETY: the mapping is plain shared memory; its owner serialises access.
unsafe impl Send for Mapping {}

impl Mapping {
    fn new(fd: &impl AsRawFd, offset: u64, len: usize, writable: bool) -> io::Result<Self> {
        let prot = libc::PROT_READ | if writable { libc::PROT_WRITE } else { 0 };
        // SAFETY: a new shared mapping of `len` bytes of the DRM fd at the
        // offset VIRTGPU_MAP gave; checked for failure below.
        let p = unsafe {
            libc::mmap(
                std::ptr::null_mut(),
                len,
                prot,
                libc::MAP_SHARED,
                fd.as_raw_fd(),
                offset as libc::off_t,
            )
        };
        if p == libc::MAP_FAILED {
            return Err(io::Error::last_os_error());
        }
        Ok(Mapping { ptr: p.cast(), len })
    }

    /// `len` bytes of fresh anonymous shared memory (a stand-in for a host
    /// blob where there is no device: the relay's fuzz harness).
    pub fn anonymous(len: usize) -> io::Result<Self> {
        // SAFETY: a new anonymous shared mapping; checked below.
        let p = unsafe {
            libc::mmap(
                std::ptr::null_mut(),
                len,
                libc::PROT_READ | libc::PROT_WRITE,
                libc::MAP_SHARED | libc::MAP_ANONYMOUS,
                -1,
                0,
            )
        };
        if p == libc::MAP_FAILED {
            return Err(io::Error::last_os_error());
        }
        Ok(Mapping { ptr: p.cast(), len })
    }

    /// Maps `len` bytes of a client's file (its wl_shm pool) read-only.
    pub fn of_file(fd: &impl AsRawFd, len: usize) -> io::Result<Self> {
        Self::new(fd, 0, len, false)
    }

    /// Bytes mapped.
    pub fn len(&self) -> usize {
        self.len
    }

    /// Whether nothing is mapped.
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// Copies `len` bytes at `off` of `src` to the same place here.
    /// Returns false when the range is outside either mapping.
    pub fn copy_from(&self, src: &Mapping, off: usize, len: usize) -> bool {
        let Some(end) = off.checked_add(len) else {
            return false;
        };
        if end > self.len || end > src.len {
            return false;
        }
        // SAFETY: both ranges were checked to lie inside live mappings; they
        // are distinct mappings, so they do not overlap.
        unsafe { std::ptr::copy_nonoverlapping(src.ptr.add(off), self.ptr.add(off), len) };
        true
    }

    /// Writes a byte into every page (what makes the host's memory real).
    pub fn touch(&self) {
        for off in (0..self.len).step_by(4096) {
            // SAFETY: `off` lies inside the mapping.
            unsafe { self.ptr.add(off).write_volatile(1) };
        }
    }

    /// Reads `out.len()` bytes at `off`.
    pub fn read(&self, off: usize, out: &mut [u8]) -> bool {
        if off.checked_add(out.len()).is_none_or(|e| e > self.len) {
            return false;
        }
        // SAFETY: the range lies inside the mapping (checked above).
        unsafe { std::ptr::copy_nonoverlapping(self.ptr.add(off), out.as_mut_ptr(), out.len()) };
        true
    }
}

impl Drop for Mapping {
    fn drop(&mut self) {
        // SAFETY: unmapping exactly what `new` mapped.
        unsafe { libc::munmap(self.ptr.cast(), self.len) };
    }
}

/// A GEM buffer of this context: its handles, and its mapping if any.
pub struct Bo {
    /// GEM handle (local to the fd).
    pub handle: u32,
    /// Resource id (host-wide), the SEND identifier.
    pub res_handle: u32,
    /// The mapping.
    pub map: Option<Mapping>,
}

/// One cross-domain context on its own DRM fd.
pub struct Context {
    fd: File,
    query: Bo,
    channel: Bo,
    next_read_pipe: u32,
}

#[repr(C)]
#[derive(Default)]
struct CreateBlob {
    blob_mem: u32,
    blob_flags: u32,
    bo_handle: u32,
    res_handle: u32,
    size: u64,
    pad: u32,
    cmd_size: u32,
    cmd: u64,
    blob_id: u64,
}

#[repr(C)]
#[derive(Default)]
struct Execbuffer {
    flags: u32,
    size: u32,
    command: u64,
    bo_handles: u64,
    num_bo_handles: u32,
    fence_fd: i32,
    ring_idx: u32,
    pad: u32,
}

/// What the host asked for the memory of one image.
#[derive(Debug, Clone, Copy)]
pub struct Requirements {
    /// Allocation size.
    pub size: u64,
    /// The id to create the blob with.
    pub blob_id: u32,
}

impl Context {
    /// Opens the render node and sets up a Wayland channel: capabilities
    /// checked, context initialised, both rings created and mapped, INIT
    /// sent and the first POLL queued.
    pub fn open() -> io::Result<Self> {
        let fd = std::fs::OpenOptions::new()
            .read(true)
            .write(true)
            .open("/dev/dri/renderD128")?;
        for (param, want) in [(1u64, 1u64), (3, 1), (4, 1), (6, 1)] {
            let mut v: i32 = 0;
            let mut p = [param, &mut v as *mut i32 as u64];
            ioctl(&fd, GETPARAM, &mut p)?;
            if v as u64 != want {
                return Err(io::Error::other(format!("virtio-gpu param {param} is {v}")));
            }
        }
        let mut caps = [0u32; 4];
        let mut gc = [5u32, 0, 0, 0, 16, 0];
        let addr = caps.as_mut_ptr() as u64;
        gc[2] = addr as u32;
        gc[3] = (addr >> 32) as u32;
        ioctl(&fd, GET_CAPS, &mut gc)?;
        if caps[1] & (1 << CHANNEL_WAYLAND) == 0 {
            return Err(io::Error::other("the host offers no Wayland channel"));
        }
        let params: [u64; 6] = [1, CAPSET_CROSS_DOMAIN, 2, 2, 3, 1 << 1];
        let mut init = [3u32, 0, 0, 0];
        let pa = params.as_ptr() as u64;
        init[2] = pa as u32;
        init[3] = (pa >> 32) as u32;
        ioctl(&fd, CONTEXT_INIT, &mut init)?;
        let query = Self::blob(
            &fd,
            BLOB_MEM_GUEST,
            BLOB_FLAG_MAPPABLE,
            0,
            RING_SIZE as u64,
            true,
        )?;
        let channel = Self::blob(
            &fd,
            BLOB_MEM_GUEST,
            BLOB_FLAG_MAPPABLE,
            0,
            RING_SIZE as u64,
            true,
        )?;
        let ctx = Context {
            fd,
            query,
            channel,
            next_read_pipe: READ_PIPE_START,
        };
        let mut cmd = header(xd::INIT, 0, 20);
        cmd.extend_from_slice(&ctx.query.res_handle.to_le_bytes());
        cmd.extend_from_slice(&ctx.channel.res_handle.to_le_bytes());
        cmd.extend_from_slice(&CHANNEL_WAYLAND.to_le_bytes());
        ctx.exec(&cmd, None)?;
        ctx.poll()?;
        Ok(ctx)
    }

    fn blob(
        fd: &File,
        mem: u32,
        flags: u32,
        blob_id: u64,
        size: u64,
        writable: bool,
    ) -> io::Result<Bo> {
        let mut b = CreateBlob {
            blob_mem: mem,
            blob_flags: flags,
            size,
            blob_id,
            ..Default::default()
        };
        ioctl(fd, CREATE_BLOB, &mut b)?;
        let mut bo = Bo {
            handle: b.bo_handle,
            res_handle: b.res_handle,
            map: None,
        };
        if flags & BLOB_FLAG_MAPPABLE != 0 {
            let mut m = [0u64, 0];
            m[1] = u64::from(b.bo_handle);
            let r = ioctl(fd, MAP, &mut m).and_then(|()| {
                Mapping::new(
                    fd,
                    m[0],
                    usize::try_from(size).map_err(io::Error::other)?,
                    writable,
                )
            });
            match r {
                Ok(map) => bo.map = Some(map),
                Err(e) => {
                    close_handle(fd, bo.handle);
                    return Err(e);
                }
            }
        }
        Ok(bo)
    }

    /// The fd to poll: readable when the channel ring has an event.
    pub fn fd(&self) -> &File {
        &self.fd
    }

    fn exec(&self, cmd: &[u8], ring: Option<(u32, u32)>) -> io::Result<()> {
        let mut handles = [0u32; 1];
        let mut e = Execbuffer {
            size: cmd.len() as u32,
            command: cmd.as_ptr() as u64,
            fence_fd: -1,
            ..Default::default()
        };
        if let Some((idx, bo)) = ring {
            handles[0] = bo;
            e.flags = EXECBUF_RING_IDX;
            e.ring_idx = idx;
            e.bo_handles = handles.as_ptr() as u64;
            e.num_bo_handles = 1;
        }
        ioctl(&self.fd, EXECBUFFER, &mut e)
    }

    /// Submits raw cross-domain commands (no ring): what the host makes of
    /// them shows only on its side.
    pub fn submit_raw(&self, cmd: &[u8]) -> io::Result<()> {
        self.exec(cmd, None)
    }

    /// The resource ids of the query and channel rings.
    pub fn rings(&self) -> (u32, u32) {
        (self.query.res_handle, self.channel.res_handle)
    }

    /// Asks the host for the next channel event (exactly one is outstanding).
    pub fn poll(&self) -> io::Result<()> {
        let mut cmd = header(xd::POLL, 1, 16);
        cmd.extend_from_slice(&[0; 8]);
        self.exec(&cmd, Some((1, self.channel.handle)))
    }

    /// Takes the DRM event that says the channel ring holds an event, and
    /// copies the event out (the next event overwrites the ring).
    pub fn take_event(&self, out: &mut Vec<u8>) -> io::Result<bool> {
        let mut ev = [0u8; 64];
        // SAFETY: reading into a local buffer of its size.
        let n = unsafe { libc::read(self.fd.as_raw_fd(), ev.as_mut_ptr().cast(), ev.len()) };
        if n < 0 {
            let e = io::Error::last_os_error();
            return if e.kind() == io::ErrorKind::WouldBlock {
                Ok(false)
            } else {
                Err(e)
            };
        }
        out.clear();
        out.resize(RING_SIZE, 0);
        let map = self
            .channel
            .map
            .as_ref()
            .ok_or_else(|| io::Error::other("no ring"))?;
        map.read(0, out);
        Ok(n > 0)
    }

    /// Sends bytes and identifiers ((id, type)) to the host socket.
    pub fn send(&self, data: &[u8], ids: &[(u32, u32)]) -> io::Result<()> {
        if data.len() > MAX_SEND_DATA || ids.len() > MAX_IDENTIFIERS {
            return Err(io::Error::other("SEND too large"));
        }
        let size = SEND_RECEIVE_HDR + data.len();
        let mut cmd = header(xd::SEND, 0, size as u16);
        cmd.extend_from_slice(&(ids.len() as u32).to_le_bytes());
        cmd.extend_from_slice(&(data.len() as u32).to_le_bytes());
        let mut arr = vec![0u8; 3 * 4 * MAX_IDENTIFIERS];
        for (i, &(id, ty)) in ids.iter().enumerate() {
            arr[i * 4..i * 4 + 4].copy_from_slice(&id.to_le_bytes());
            let t = 4 * MAX_IDENTIFIERS + i * 4;
            arr[t..t + 4].copy_from_slice(&ty.to_le_bytes());
        }
        cmd.extend_from_slice(&arr);
        cmd.extend_from_slice(data);
        self.exec(&cmd, None)
    }

    /// Sends data for the host pipe `id` (guest writes, host reads).
    pub fn write_pipe(&self, id: u32, data: &[u8], hang_up: bool) -> io::Result<()> {
        let size = READ_WRITE_HDR + data.len();
        let mut cmd = header(xd::WRITE, 0, size as u16);
        for v in [id, u32::from(hang_up), data.len() as u32, 0] {
            cmd.extend_from_slice(&v.to_le_bytes());
        }
        cmd.extend_from_slice(data);
        self.exec(&cmd, None)
    }

    /// The id the host expects for this context's next read pipe.
    pub fn next_read_pipe_id(&mut self) -> u32 {
        self.next_read_pipe = self.next_read_pipe.wrapping_add(1);
        self.next_read_pipe
    }

    /// Host memory requirements of a `size`-byte linear buffer.
    pub fn requirements(&self, size: u32) -> io::Result<Requirements> {
        let mut cmd = header(xd::GET_IMAGE_REQUIREMENTS, 0, 24);
        // One R8 row of `size` bytes, LINEAR | SCANOUT.
        for v in [size, 1, 0x2020_3852, 0x11] {
            cmd.extend_from_slice(&v.to_le_bytes());
        }
        self.exec(&cmd, Some((0, self.query.handle)))?;
        let mut w = [self.query.handle, 0];
        loop {
            match ioctl(&self.fd, WAIT, &mut w) {
                Ok(()) => break,
                Err(e) if e.raw_os_error() == Some(libc::EBUSY) => {
                    std::thread::sleep(std::time::Duration::from_micros(100))
                }
                Err(e) => return Err(e),
            }
        }
        let mut r = [0u8; 64];
        let map = self
            .query
            .map
            .as_ref()
            .ok_or_else(|| io::Error::other("no ring"))?;
        map.read(0, &mut r);
        let size = u64::from_le_bytes(r[40..48].try_into().unwrap_or_default());
        let blob_id = u32::from_le_bytes(r[48..52].try_into().unwrap_or_default());
        if size == 0 {
            return Err(io::Error::other("the host gave no memory requirements"));
        }
        Ok(Requirements { size, blob_id })
    }

    /// A host-visible blob (the host's memfd), mapped here.
    pub fn host_blob(&self, blob_id: u32, size: u64, writable: bool) -> io::Result<Bo> {
        let size = size.div_ceil(4096) * 4096;
        let mut bo = Self::blob(
            &self.fd,
            BLOB_MEM_HOST3D,
            BLOB_FLAG_MAPPABLE | BLOB_FLAG_SHAREABLE,
            u64::from(blob_id),
            size,
            writable,
        )?;
        let mut info = [bo.handle, 0, 0, 0];
        if let Err(e) = ioctl(&self.fd, RESOURCE_INFO, &mut info) {
            self.close(std::mem::replace(
                &mut bo,
                Bo {
                    handle: 0,
                    res_handle: 0,
                    map: None,
                },
            ));
            return Err(e);
        }
        bo.res_handle = info[1];
        Ok(bo)
    }

    /// Closes a blob: the kernel unmaps and releases the host resource.
    pub fn close(&self, mut bo: Bo) {
        bo.map = None;
        if bo.handle != 0 {
            close_handle(&self.fd, bo.handle);
        }
    }
}

fn close_handle(fd: &File, handle: u32) {
    let mut c = [handle, 0];
    let _ = ioctl(fd, GEM_CLOSE, &mut c);
}

impl Drop for Context {
    fn drop(&mut self) {
        // The rings' mappings go before the fd (closing it destroys the
        // context and the host connection).
        self.query.map = None;
        self.channel.map = None;
    }
}

/// What the relay needs of the host side: [`Context`], the device's
/// cross-domain context; the relay's fuzz harness has a stand-in.
pub trait Host {
    /// The fd to poll for channel events.
    fn fd(&self) -> &File;
    /// Takes the channel event, if one came.
    fn take_event(&self, out: &mut Vec<u8>) -> io::Result<bool>;
    /// Asks for the next channel event.
    fn poll(&self) -> io::Result<()>;
    /// Sends bytes and identifiers to the host socket.
    fn send(&self, data: &[u8], ids: &[(u32, u32)]) -> io::Result<()>;
    /// Sends data for a host pipe.
    fn write_pipe(&self, id: u32, data: &[u8], hang_up: bool) -> io::Result<()>;
    /// The id the host expects for the next read pipe.
    fn next_read_pipe_id(&mut self) -> u32;
    /// Host memory requirements of a linear buffer.
    fn requirements(&self, size: u32) -> io::Result<Requirements>;
    /// A host-visible blob, mapped here.
    fn host_blob(&self, blob_id: u32, size: u64, writable: bool) -> io::Result<Bo>;
    /// Releases a blob.
    fn close(&self, bo: Bo);
}

impl Host for Context {
    fn fd(&self) -> &File {
        Context::fd(self)
    }
    fn take_event(&self, out: &mut Vec<u8>) -> io::Result<bool> {
        Context::take_event(self, out)
    }
    fn poll(&self) -> io::Result<()> {
        Context::poll(self)
    }
    fn send(&self, data: &[u8], ids: &[(u32, u32)]) -> io::Result<()> {
        Context::send(self, data, ids)
    }
    fn write_pipe(&self, id: u32, data: &[u8], hang_up: bool) -> io::Result<()> {
        Context::write_pipe(self, id, data, hang_up)
    }
    fn next_read_pipe_id(&mut self) -> u32 {
        Context::next_read_pipe_id(self)
    }
    fn requirements(&self, size: u32) -> io::Result<Requirements> {
        Context::requirements(self, size)
    }
    fn host_blob(&self, blob_id: u32, size: u64, writable: bool) -> io::Result<Bo> {
        Context::host_blob(self, blob_id, size, writable)
    }
    fn close(&self, bo: Bo) {
        Context::close(self, bo)
    }
}

/// A cross-domain command header.
pub fn header(cmd: u8, ring: u8, size: u16) -> Vec<u8> {
    let mut b = Vec::with_capacity(usize::from(size));
    b.push(cmd);
    b.push(ring);
    b.extend_from_slice(&size.to_le_bytes());
    b.extend_from_slice(&[0; 4]);
    b
}

/// A memfd holding `data`, sealed against changes (keymaps, format tables).
pub fn sealed_memfd(data: &[u8]) -> io::Result<OwnedFd> {
    use std::io::Write;
    use std::os::fd::FromRawFd;
    // SAFETY: a NUL-terminated name; the result is checked.
    let fd = unsafe {
        libc::memfd_create(
            c"vmapp-relay".as_ptr(),
            libc::MFD_CLOEXEC | libc::MFD_ALLOW_SEALING,
        )
    };
    if fd < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: memfd_create returned a new fd that nothing else owns.
    let mut f = unsafe { File::from_raw_fd(fd) };
    f.write_all(data)?;
    // SAFETY: fcntl on our own fd with a plain integer argument.
    unsafe {
        libc::fcntl(
            f.as_raw_fd(),
            libc::F_ADD_SEALS,
            libc::F_SEAL_SHRINK | libc::F_SEAL_GROW | libc::F_SEAL_WRITE | libc::F_SEAL_SEAL,
        )
    };
    Ok(f.into())
}

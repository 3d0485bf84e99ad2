//! virtio-fs (virtio 1.2 §5.11): a host directory shared with the guest,
//! served in-process by fuse-backend-rs straight from the descriptor chains.
//!
//! Two queues: `hiprio` (FORGET, BATCH_FORGET, INTERRUPT) and one request
//! queue; one worker thread serves both. No DAX window. Every request first
//! meets [`screen`]: in a read-only share any opcode that could modify the
//! host directory is answered with `EROFS` before fuse-backend-rs decodes
//! it; then [`Share`] (see `share.rs`) checks names, file types, identity and
//! hidden paths before PassthroughFs makes any host system call. A request
//! that cannot be parsed gets an error reply (or none, for requests without
//! replies) and the device keeps serving; only a broken queue (an impossible
//! available index) marks the device as needing a reset.

pub mod share;
#[cfg(test)]
mod tests;
pub mod view;

use std::path::PathBuf;
use std::sync::Arc;

use fuse_backend_rs::api::server::Server;
use fuse_backend_rs::transport::{Reader, VirtioFsWriter, Writer};
use virtio_queue::{DescriptorChain, Queue, QueueOwnedT, QueueT};
use vm_memory::ByteValued;
use vmm_sys_util::eventfd::EventFd;

use super::VIRTIO_F_RING_EVENT_IDX;
use super::{read_config_bytes, ActivateError, ActiveQueue, Interrupt, QueueWorker, VirtioDevice};
use crate::worker::Parked;
use crate::{warn_limited, GuestMemory};
use seccomp_policies::ThreadKind;

pub use share::{Share, ShareError};
pub use view::Exposure;

/// Virtio device id of a file-system device.
pub const VIRTIO_ID_FS: u32 = 26;
/// Size of each queue.
pub const QUEUE_SIZE: u16 = 1024;
/// Longest tag (virtio 1.2 §5.11.4: `u8 tag[36]`, NUL-padded).
pub const TAG_MAX: usize = 36;

/// FUSE opcodes this module looks at (the FUSE protocol, `fuse_opcode`).
pub mod opcode {
    #![allow(missing_docs)]
    pub const SETATTR: u32 = 4;
    pub const SYMLINK: u32 = 6;
    pub const MKNOD: u32 = 8;
    pub const MKDIR: u32 = 9;
    pub const UNLINK: u32 = 10;
    pub const RMDIR: u32 = 11;
    pub const RENAME: u32 = 12;
    pub const LINK: u32 = 13;
    pub const OPEN: u32 = 14;
    pub const WRITE: u32 = 16;
    pub const SETXATTR: u32 = 21;
    pub const REMOVEXATTR: u32 = 24;
    pub const CREATE: u32 = 35;
    pub const FALLOCATE: u32 = 43;
    pub const RENAME2: u32 = 45;
    pub const COPY_FILE_RANGE: u32 = 47;
    pub const SETUPMAPPING: u32 = 48;
    pub const TMPFILE: u32 = 51;
    pub const FORGET: u32 = 2;
    pub const BATCH_FORGET: u32 = 42;
    pub const INTERRUPT: u32 = 36;
}

/// Opcodes that modify the file system whatever their arguments.
const MODIFYING: &[u32] = &[
    opcode::SETATTR,
    opcode::SYMLINK,
    opcode::MKNOD,
    opcode::MKDIR,
    opcode::UNLINK,
    opcode::RMDIR,
    opcode::RENAME,
    opcode::LINK,
    opcode::WRITE,
    opcode::SETXATTR,
    opcode::REMOVEXATTR,
    opcode::CREATE,
    opcode::FALLOCATE,
    opcode::RENAME2,
    opcode::COPY_FILE_RANGE,
    opcode::SETUPMAPPING,
    opcode::TMPFILE,
];

/// The FUSE request header (`fuse_in_header`).
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct InHeader {
    /// Total length of the request.
    pub len: u32,
    /// The operation.
    pub opcode: u32,
    /// Request id, echoed in the reply.
    pub unique: u64,
    /// The inode the request is about.
    pub nodeid: u64,
    /// Caller's uid.
    pub uid: u32,
    /// Caller's gid.
    pub gid: u32,
    /// Caller's pid.
    pub pid: u32,
    /// Total extension length (in 8-byte units), or padding.
    pub padding: u32,
}
// SAFETY: plain integers, no padding (40 bytes, 8-byte aligned fields).
unsafe impl ByteValued for InHeader {}

/// The FUSE reply header (`fuse_out_header`).
#[repr(C)]
#[derive(Clone, Copy, Debug, Default)]
pub struct OutHeader {
    /// Total length of the reply.
    pub len: u32,
    /// 0 or a negated errno.
    pub error: i32,
    /// The request's id.
    pub unique: u64,
}
// SAFETY: plain integers, no padding (16 bytes).
unsafe impl ByteValued for OutHeader {}

/// Errors describing a share.
#[derive(Debug, thiserror::Error)]
pub enum FsError {
    /// The `--share` value is malformed.
    #[error("bad share description {spec:?}: {why}")]
    BadSpec {
        /// What the user wrote.
        spec: String,
        /// What is wrong with it.
        why: &'static str,
    },
    /// The directory cannot be served.
    #[error(transparent)]
    Share(#[from] ShareError),
    /// The worker thread could not start (or install its seccomp filter).
    #[error(transparent)]
    Thread(#[from] crate::worker::WorkerError),
}

/// One shared directory: `HOSTDIR:TAG[,ro][,path=GUESTDIR]` on the command line.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ShareConfig {
    /// The host directory.
    pub host_dir: PathBuf,
    /// The tag the guest mounts it by (`mount -t virtiofs TAG DIR`).
    pub tag: String,
    /// The guest may only read (enforced by the device).
    pub read_only: bool,
    /// Where vmapp's default guest mounts it (default `/mnt/TAG`).
    pub guest_path: Option<String>,
    /// What of `host_dir` the guest sees (`None`: all of it).
    pub expose: Option<Exposure>,
}

impl ShareConfig {
    /// A writable share of `host_dir` under `tag`.
    pub fn new(host_dir: impl Into<PathBuf>, tag: impl Into<String>) -> Self {
        Self {
            host_dir: host_dir.into(),
            tag: tag.into(),
            read_only: false,
            guest_path: None,
            expose: None,
        }
    }

    /// Parses `HOSTDIR:TAG[,ro][,rw][,path=GUESTDIR]`.
    pub fn parse(spec: &str) -> Result<Self, FsError> {
        let bad = |why| FsError::BadSpec {
            spec: spec.to_string(),
            why,
        };
        let mut parts = spec.split(',');
        let first = parts.next().unwrap_or_default();
        let (dir, tag) = first
            .rsplit_once(':')
            .ok_or_else(|| bad("expected HOSTDIR:TAG"))?;
        if dir.is_empty() {
            return Err(bad("no host directory"));
        }
        let mut cfg = Self::new(dir, tag);
        cfg.check_tag().map_err(bad)?;
        for opt in parts {
            match opt.split_once('=') {
                None if opt == "ro" => cfg.read_only = true,
                None if opt == "rw" => cfg.read_only = false,
                Some(("path", p)) if p.starts_with('/') && !p.contains(char::is_whitespace) => {
                    cfg.guest_path = Some(p.to_string())
                }
                Some(("path", _)) => return Err(bad("path= must be absolute, without spaces")),
                _ => return Err(bad("options are ro, rw and path=GUESTDIR")),
            }
        }
        Ok(cfg)
    }

    /// Tags are 1–36 bytes of `[A-Za-z0-9_.-]` (they travel on the kernel
    /// command line and become mount sources).
    pub fn check_tag(&self) -> Result<(), &'static str> {
        let t = self.tag.as_bytes();
        if t.is_empty() || t.len() > TAG_MAX {
            return Err("the tag must be 1 to 36 bytes");
        }
        if !t
            .iter()
            .all(|c| c.is_ascii_alphanumeric() || b"_.-".contains(c))
        {
            return Err("the tag may only hold letters, digits, '_', '.' and '-'");
        }
        Ok(())
    }

    /// Where the default guest mounts the share.
    pub fn mount_point(&self) -> String {
        self.guest_path
            .clone()
            .unwrap_or_else(|| format!("/mnt/{}", self.tag))
    }
}

/// What [`screen`] decided about a request.
#[derive(Debug, PartialEq, Eq)]
pub enum Screened {
    /// Hand it to the file server (the header, for an error reply).
    Serve(InHeader),
    /// Answer it with this errno without decoding it further.
    Refuse(InHeader, i32),
    /// Not even a header: answer nothing useful (a zero-length reply).
    Malformed,
}

/// The first look at a request: its header, and in a read-only share
/// whether it would modify anything.
pub fn screen(
    mem: &GuestMemory,
    chain: &DescriptorChain<&GuestMemory>,
    read_only: bool,
) -> Screened {
    let Ok(mut r) = Reader::from_descriptor_chain(mem, chain.clone()) else {
        return Screened::Malformed;
    };
    let Ok(h) = r.read_obj::<InHeader>() else {
        return Screened::Malformed;
    };
    if read_only {
        if MODIFYING.contains(&h.opcode) {
            return Screened::Refuse(h, libc::EROFS);
        }
        if h.opcode == opcode::OPEN {
            // fuse_open_in: flags, open_flags.
            let Ok(flags) = r.read_obj::<u32>() else {
                return Screened::Refuse(h, libc::EINVAL);
            };
            if share::open_writes(flags) || flags & libc::O_TRUNC as u32 != 0 {
                return Screened::Refuse(h, libc::EROFS);
            }
        }
    }
    Screened::Serve(h)
}

/// Writes an error reply for `h`; returns the used length.
fn reply_error(
    mem: &GuestMemory,
    chain: DescriptorChain<&GuestMemory>,
    h: &InHeader,
    errno: i32,
) -> u32 {
    if matches!(
        h.opcode,
        opcode::FORGET | opcode::BATCH_FORGET | opcode::INTERRUPT
    ) {
        return 0;
    }
    let out = OutHeader {
        len: std::mem::size_of::<OutHeader>() as u32,
        error: -errno,
        unique: h.unique,
    };
    let Ok(w) = VirtioFsWriter::new(mem, chain) else {
        return 0;
    };
    let mut w: Writer<'_, ()> = w.into();
    if std::io::Write::write_all(&mut w, out.as_slice()).is_err() || w.commit(None).is_err() {
        return 0;
    }
    u32::try_from(w.bytes_written()).unwrap_or(0)
}

/// Serves one request chain; returns the used length.
pub fn handle_chain(
    server: &Server<Share>,
    read_only: bool,
    mem: &GuestMemory,
    chain: DescriptorChain<&GuestMemory>,
) -> u32 {
    let h = match screen(mem, &chain, read_only) {
        Screened::Serve(h) => h,
        Screened::Refuse(h, errno) => return reply_error(mem, chain, &h, errno),
        Screened::Malformed => {
            warn_limited!("virtio-fs: request without a FUSE header");
            return 0;
        }
    };
    let (Ok(r), Ok(w)) = (
        Reader::from_descriptor_chain(mem, chain.clone()),
        VirtioFsWriter::new(mem, chain.clone()),
    ) else {
        return 0;
    };
    match server.handle_message(r, w.into(), None, None) {
        Ok(n) => u32::try_from(n).unwrap_or(0),
        Err(e) => {
            warn_limited!("virtio-fs: malformed request: {e}");
            // The server may not have answered: the guest gets an error for
            // this request rather than a reply it cannot parse.
            reply_error(mem, chain, &h, libc::EINVAL)
        }
    }
}

/// Serves every available request of `queue`; returns whether the guest
/// needs an interrupt. An error means the queue itself is broken.
pub fn process_queue(
    server: &Server<Share>,
    read_only: bool,
    mem: &GuestMemory,
    queue: &mut Queue,
) -> Result<bool, virtio_queue::Error> {
    let mut used = false;
    loop {
        queue.disable_notification(mem)?;
        while let Some(chain) = queue.iter(mem)?.next() {
            let head = chain.head_index();
            let len = handle_chain(server, read_only, mem, chain);
            queue.add_used(mem, head, len)?;
            used = true;
        }
        if !queue.enable_notification(mem)? {
            break;
        }
    }
    Ok(used && queue.needs_notification(mem)?)
}

/// A file server over a temporary share, for the fuzz harness
/// (`crate::fuzzing::fs_queue`).
pub struct FsFuzz {
    server: Server<Share>,
    read_only: bool,
    _dir: tempfile::TempDir,
}

impl FsFuzz {
    /// A share with a file, a directory and a symlink to `/etc`, after
    /// FUSE_INIT; the read-only one shows them through a view (as host-root
    /// mode does) that hides a fourth entry, `secret`, and `dir/secret`.
    pub fn new(read_only: bool) -> Option<Self> {
        let dir = tempfile::tempdir().ok()?;
        std::fs::write(dir.path().join("file"), b"fuzz").ok()?;
        std::fs::create_dir(dir.path().join("dir")).ok()?;
        std::fs::write(dir.path().join("secret"), b"hidden").ok()?;
        std::fs::write(dir.path().join("dir/secret"), b"hidden").ok()?;
        std::os::unix::fs::symlink("/etc", dir.path().join("etc")).ok()?;
        let mut share = Share::new(dir.path(), read_only).ok()?;
        if read_only {
            share = share.expose(&Exposure {
                allow: ["/file", "/dir", "/etc"].map(PathBuf::from).to_vec(),
                deny: vec!["/dir/secret".into()],
                public_only: true,
            });
        }
        let server = Server::new(share);
        let mem = vm_memory::GuestMemoryMmap::from_ranges(&[(vm_memory::GuestAddress(0), 0x4000)])
            .ok()?;
        let mut q = Queue::new(4).ok()?;
        q.set_desc_table_address(Some(0), Some(0));
        q.set_avail_ring_address(Some(0x1000), Some(0));
        q.set_used_ring_address(Some(0x2000), Some(0));
        q.set_ready(true);
        // One chain: INIT (7.31) at 0x3000, reply buffer at 0x3100.
        let h = InHeader {
            len: 56,
            opcode: 26,
            unique: 1,
            ..Default::default()
        };
        use vm_memory::Bytes;
        let at = vm_memory::GuestAddress;
        mem.write_obj(h, at(0x3000)).ok()?;
        mem.write_slice(
            &[7, 0, 0, 0, 31, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0],
            at(0x3028),
        )
        .ok()?;
        for (i, (addr, len, flags, next)) in [(0x3000u64, 56u32, 1u16, 1u16), (0x3100, 256, 2, 0)]
            .into_iter()
            .enumerate()
        {
            let d = i as u64 * 16;
            mem.write_obj(addr, at(d)).ok()?;
            mem.write_obj(len, at(d + 8)).ok()?;
            mem.write_obj(flags, at(d + 12)).ok()?;
            mem.write_obj(next, at(d + 14)).ok()?;
        }
        mem.write_obj(0u16, at(0x1004)).ok()?;
        mem.write_obj(1u16, at(0x1002)).ok()?;
        process_queue(&server, read_only, &mem, &mut q).ok()?;
        Some(Self {
            server,
            read_only,
            _dir: dir,
        })
    }

    /// Serves `queue` like the device does.
    pub fn process(
        &self,
        mem: &GuestMemory,
        queue: &mut Queue,
    ) -> Result<bool, virtio_queue::Error> {
        process_queue(&self.server, self.read_only, mem, queue)
    }
}

/// The virtio-fs device.
pub struct Fs {
    server: Arc<Server<Share>>,
    read_only: bool,
    config: Vec<u8>,
    queue_sizes: [u16; 2],
    thread: Parked,
}

/// The open-files limit a share asks for: the file server holds an `O_PATH`
/// fd for every inode the guest has looked up and not yet forgotten, so a
/// guest that keeps 10,000 files cached needs 10,000 fds. virtiofsd asks for
/// the same (1,000,000, or the kernel's `fs.nr_open` if lower).
const OPEN_FILES_WANTED: u64 = 1_000_000;

/// Raises this process's `RLIMIT_NOFILE` (a process-wide change, so the
/// library never does it on its own: the embedder calls it before creating
/// shares): both limits to a million (capped by `fs.nr_open`) where the
/// process may raise its hard limit (`CAP_SYS_RESOURCE`), else the soft
/// limit to the hard one. A share's inode budget is a third of the soft
/// limit when the share is created (see [`share::default_max_inodes`]), so with the
/// usual soft limit of 1024 a guest can keep only 1024 files cached.
pub fn raise_open_files_limit() {
    let nr_open = std::fs::read_to_string("/proc/sys/fs/nr_open")
        .ok()
        .and_then(|s| s.trim().parse::<u64>().ok())
        .unwrap_or(OPEN_FILES_WANTED);
    let want = OPEN_FILES_WANTED.min(nr_open);
    let mut r = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: getrlimit with a valid rlimit struct to fill.
    if unsafe { libc::getrlimit(libc::RLIMIT_NOFILE, &mut r) } != 0 {
        return;
    }
    if r.rlim_max < want {
        let up = libc::rlimit {
            rlim_cur: want,
            rlim_max: want,
        };
        // SAFETY: setrlimit with a valid rlimit struct; failing (EPERM
        // without CAP_SYS_RESOURCE) changes nothing.
        if unsafe { libc::setrlimit(libc::RLIMIT_NOFILE, &up) } == 0 {
            return;
        }
    }
    if r.rlim_cur < r.rlim_max {
        r.rlim_cur = r.rlim_max;
        // SAFETY: setrlimit with a valid rlimit struct.
        if unsafe { libc::setrlimit(libc::RLIMIT_NOFILE, &r) } != 0 {
            tracing::warn!(
                "virtio-fs: cannot raise the open-files limit: {}",
                std::io::Error::last_os_error()
            );
        }
    }
}

impl Fs {
    /// A device serving `cfg.host_dir` under `cfg.tag`. Starts its (parked)
    /// worker thread.
    pub fn new(cfg: &ShareConfig) -> Result<Self, FsError> {
        cfg.check_tag().map_err(|why| FsError::BadSpec {
            spec: cfg.tag.clone(),
            why,
        })?;
        let mut share = Share::new(&cfg.host_dir, cfg.read_only)?;
        if let Some(e) = &cfg.expose {
            share = share.expose(e);
        }
        // struct virtio_fs_config: tag[36], num_request_queues.
        let mut c = vec![0u8; TAG_MAX + 4];
        c[..cfg.tag.len()].copy_from_slice(cfg.tag.as_bytes());
        c[TAG_MAX..].copy_from_slice(&1u32.to_le_bytes());
        Ok(Self {
            server: Arc::new(Server::new(share)),
            read_only: cfg.read_only,
            config: c,
            queue_sizes: [QUEUE_SIZE; 2],
            thread: Parked::spawn("virtio-fs", ThreadKind::VirtioFs)?,
        })
    }
}

impl VirtioDevice for Fs {
    fn device_type(&self) -> u32 {
        VIRTIO_ID_FS
    }

    fn queue_max_sizes(&self) -> &[u16] {
        &self.queue_sizes
    }

    fn features(&self) -> u64 {
        // VIRTIO_F_VERSION_1 is added by the transport.
        1u64 << VIRTIO_F_RING_EVENT_IDX
    }

    fn read_config(&self, offset: u64, data: &mut [u8]) {
        read_config_bytes(&self.config, offset, data);
    }

    fn write_config(&mut self, offset: u64, _data: &[u8]) {
        warn_limited!("virtio-fs: guest wrote read-only config at {offset:#x}");
    }

    fn activate(
        &mut self,
        mem: GuestMemory,
        interrupt: Arc<Interrupt>,
        acked_features: u64,
        queues: Vec<ActiveQueue>,
    ) -> Result<(), ActivateError> {
        self.thread.stop();
        if queues.len() != 2 {
            return Err(ActivateError::BadQueues(format!(
                "{} queues, want 2 (hiprio and one request queue)",
                queues.len()
            )));
        }
        let kill = EventFd::new(libc::EFD_NONBLOCK)?;
        // Both queues (hiprio, requests) carry FUSE requests and are served
        // alike.
        let worker = QueueWorker::new("virtio-fs", queues, acked_features, &kill)?;
        let server = self.server.clone();
        let ro = self.read_only;
        self.thread
            .serve(kill, move || {
                worker.run(&interrupt, |q| process_queue(&server, ro, &mem, q))
            })
            .map_err(|e| ActivateError::BadQueues(e.to_string()))?;
        Ok(())
    }

    fn reset(&mut self) -> bool {
        // A worker stuck past its deadline leaves the device failed.
        self.thread.stop()
    }
}

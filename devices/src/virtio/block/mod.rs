//! virtio-blk (virtio 1.2 §5.2) over a raw image file or block device.
//!
//! One queue, served by one I/O thread per disk that reads and writes guest
//! memory in place. Two engines: io_uring (the default where the kernel
//! offers it: requests are submitted as they are popped and complete out of
//! order, up to [`QUEUE_SIZE`] in flight, see [`uring`]) and synchronous
//! `preadv`/`pwritev`, one request at a time (`aio=sync`, and the fallback).
//! `cache=none` opens the image with `O_DIRECT` too and sends every suitably
//! aligned transfer through that descriptor, bypassing the host page cache.
//! Every request is validated before it touches the file (descriptor
//! directions, lengths, sector ranges with checked arithmetic); a bad request
//! completes with `VIRTIO_BLK_S_IOERR` or `VIRTIO_BLK_S_UNSUPP` and the device
//! keeps going. Only a broken queue (an impossible available index) marks the
//! device as needing a reset.
//!
//! Images are locked like QEMU locks them: exclusively when writable, shared
//! when read-only, so a second VM cannot open a disk another VM writes.

mod request;
#[cfg(test)]
mod tests;
pub mod uring;

use std::fs::{File, OpenOptions};
use std::io::{Seek, SeekFrom};
use std::os::fd::{AsRawFd, RawFd};
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use virtio_queue::{Queue, QueueOwnedT, QueueT};
use vmm_sys_util::eventfd::EventFd;

use super::VIRTIO_F_RING_EVENT_IDX;
use super::{read_config_bytes, ActivateError, ActiveQueue, Interrupt, QueueWorker, VirtioDevice};
use crate::worker::Parked;
use crate::{warn_limited, GuestMemory};
use seccomp_policies::ThreadKind;

pub use request::{
    RequestType, Scratch, Status, MAX_DISCARD_SECTORS, MAX_DISCARD_SEG, SEG_MAX,
    VIRTIO_BLK_ID_BYTES,
};

/// Virtio device id of a block device.
pub const VIRTIO_ID_BLOCK: u32 = 2;
/// Bytes per virtio-blk sector (always 512, whatever the image's block size).
pub const SECTOR_SIZE: u64 = 512;
/// Size of the request queue.
pub const QUEUE_SIZE: u16 = 256;

/// Feature bits (virtio 1.2 §5.2.3).
pub mod features {
    /// Maximum number of segments in a request is in `seg_max`.
    pub const SEG_MAX: u32 = 2;
    /// The device is read-only.
    pub const RO: u32 = 5;
    /// Block size of the disk is in `blk_size`.
    pub const BLK_SIZE: u32 = 6;
    /// Cache flush command support.
    pub const FLUSH: u32 = 9;
    /// Discard command support.
    pub const DISCARD: u32 = 13;
    /// Write-zeroes command support.
    pub const WRITE_ZEROES: u32 = 14;
}

/// Errors opening a disk or parsing its description.
#[derive(Debug, thiserror::Error)]
pub enum BlockError {
    /// The `--disk` value is malformed.
    #[error("bad disk description {spec:?}: {why}")]
    BadSpec {
        /// What the user wrote.
        spec: String,
        /// What is wrong with it.
        why: &'static str,
    },
    /// The image cannot be opened. (`why` is in the message, so it is not
    /// also a `source`: a chain printed whole names it once.)
    #[error("cannot open disk image {path}: {why}")]
    Open {
        /// The image.
        path: PathBuf,
        /// Why.
        why: std::io::Error,
    },
    /// Another process (another VM) holds a conflicting lock on the image.
    #[error("disk image {path} is in use by another VM (it is locked {held}); refusing to open it {wanted}")]
    Locked {
        /// The image.
        path: PathBuf,
        /// The lock another process holds, as far as it can be told.
        held: &'static str,
        /// The access this VM asked for.
        wanted: &'static str,
    },
    /// The queue or the worker thread could not be set up.
    #[error("disk I/O thread setup failed: {0}")]
    Worker(#[from] std::io::Error),
    /// The I/O thread could not start (or install its seccomp filter).
    #[error(transparent)]
    Thread(#[from] crate::worker::WorkerError),
    /// `aio=io_uring` was asked for and the kernel does not offer it.
    #[error("disk {path}: aio=io_uring is not available here: {why}")]
    Uring {
        /// The image.
        path: PathBuf,
        /// Why.
        why: uring::UringError,
    },
}

/// How the host caches the image (QEMU's `cache=` modes of the same names).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum Cache {
    /// Through the host page cache; FLUSH is `fdatasync`.
    #[default]
    Writeback,
    /// `O_DIRECT`: aligned transfers bypass the host page cache (the others
    /// go through it); FLUSH is still `fdatasync`.
    None,
}

/// Which I/O engine serves the disk.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum Aio {
    /// io_uring where the kernel allows it, else synchronous (said once).
    #[default]
    Auto,
    /// io_uring or an error.
    IoUring,
    /// One synchronous `preadv`/`pwritev` at a time.
    Sync,
}

/// One disk of a VM:
/// `PATH[,ro][,serial=ID][,cache=writeback|none][,aio=auto|io_uring|sync]`
/// on the command line.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct DiskConfig {
    /// Raw image file or block device.
    pub path: PathBuf,
    /// The guest may only read it (enforced by the device, advertised as VIRTIO_BLK_F_RO).
    pub read_only: bool,
    /// What `GET_ID` returns (at most 20 bytes); the file name when unset.
    pub serial: Option<String>,
    /// Host caching.
    pub cache: Cache,
    /// I/O engine.
    pub aio: Aio,
}

impl DiskConfig {
    /// A writable disk without a serial.
    pub fn new(path: impl Into<PathBuf>) -> Self {
        Self {
            path: path.into(),
            read_only: false,
            serial: None,
            cache: Cache::Writeback,
            aio: Aio::Auto,
        }
    }

    /// Parses `PATH[,ro][,serial=ID][,cache=writeback|none][,aio=auto|io_uring|sync]`.
    pub fn parse(spec: &str) -> Result<Self, BlockError> {
        let bad = |why| BlockError::BadSpec {
            spec: spec.to_string(),
            why,
        };
        let mut parts = spec.split(',');
        let path = parts
            .next()
            .filter(|p| !p.is_empty())
            .ok_or_else(|| bad("no path"))?;
        let mut cfg = Self::new(path);
        for opt in parts {
            match opt.split_once('=') {
                None if opt == "ro" => cfg.read_only = true,
                None if opt == "rw" => cfg.read_only = false,
                Some(("serial", id)) => {
                    if id.len() > VIRTIO_BLK_ID_BYTES {
                        return Err(bad("serial is longer than 20 bytes"));
                    }
                    cfg.serial = Some(id.to_string());
                }
                Some(("cache", "writeback")) => cfg.cache = Cache::Writeback,
                Some(("cache", "none")) => cfg.cache = Cache::None,
                Some(("aio", "auto")) => cfg.aio = Aio::Auto,
                Some(("aio", "io_uring")) => cfg.aio = Aio::IoUring,
                Some(("aio", "sync")) => cfg.aio = Aio::Sync,
                _ => {
                    return Err(bad(
                        "options are ro, rw, serial=ID, cache=writeback|none and aio=auto|io_uring|sync",
                    ))
                }
            }
        }
        Ok(cfg)
    }
}

/// An open, locked disk image: what the I/O thread works on.
#[derive(Debug)]
pub struct Disk {
    /// Opened without `O_DIRECT`: flushes, discards and transfers that do
    /// not suit `direct`.
    file: File,
    /// With `cache=none`: the same image opened with `O_DIRECT`.
    direct: Option<Direct>,
    sectors: u64,
    read_only: bool,
    id: [u8; VIRTIO_BLK_ID_BYTES],
    aio: Aio,
    path: PathBuf,
}

/// The image opened with `O_DIRECT`, and what that asks of a transfer.
#[derive(Debug)]
struct Direct {
    file: File,
    /// Image offsets and lengths are multiples of this.
    offset_align: u32,
    /// Buffer addresses and lengths are multiples of this.
    mem_align: u32,
}

/// The alignment `O_DIRECT` asks of `file`: `statx`'s `STATX_DIOALIGN`
/// (Linux 6.1) where the file system reports it, the block device's logical
/// block size, else a page (what every file system accepts).
fn dio_align(file: &File) -> (u32, u32) {
    // SAFETY: statx is plain data; all-zero is a valid value.
    let mut st: libc::statx = unsafe { std::mem::zeroed() };
    // SAFETY: statx writes only into `st`; the path is an empty C string.
    let r = unsafe {
        libc::statx(
            file.as_raw_fd(),
            c"".as_ptr(),
            libc::AT_EMPTY_PATH,
            libc::STATX_DIOALIGN | libc::STATX_TYPE,
            &mut st,
        )
    };
    if r == 0 && st.stx_mask & libc::STATX_DIOALIGN != 0 && st.stx_dio_offset_align != 0 {
        return (st.stx_dio_offset_align, st.stx_dio_mem_align.max(1));
    }
    if r == 0 && u32::from(st.stx_mode) & libc::S_IFMT == libc::S_IFBLK {
        let mut size: libc::c_int = 0;
        // SAFETY: BLKSSZGET writes one int into `size`.
        if unsafe { libc::ioctl(file.as_raw_fd(), libc::BLKSSZGET, &mut size) } == 0 && size > 0 {
            return (size as u32, size as u32);
        }
    }
    (4096, 4096)
}

fn lock(file: &File, path: &Path, read_only: bool) -> Result<(), BlockError> {
    let op = if read_only {
        libc::LOCK_SH
    } else {
        libc::LOCK_EX
    };
    // SAFETY: flock on a file descriptor we own; no memory is passed.
    let r = unsafe { libc::flock(file.as_raw_fd(), op | libc::LOCK_NB) };
    if r == 0 {
        return Ok(());
    }
    let e = std::io::Error::last_os_error();
    if e.raw_os_error() == Some(libc::EWOULDBLOCK) {
        return Err(BlockError::Locked {
            path: path.to_path_buf(),
            held: if read_only {
                "for writing"
            } else {
                "for reading or writing"
            },
            wanted: if read_only {
                "read-only"
            } else {
                "for writing"
            },
        });
    }
    Err(BlockError::Open {
        path: path.to_path_buf(),
        why: e,
    })
}

impl Disk {
    /// Opens and locks the image; the capacity is its size rounded down to
    /// whole sectors.
    pub fn open(cfg: &DiskConfig) -> Result<Self, BlockError> {
        let open_err = |why| BlockError::Open {
            path: cfg.path.clone(),
            why,
        };
        let mut file = OpenOptions::new()
            .read(true)
            .write(!cfg.read_only)
            .open(&cfg.path)
            .map_err(open_err)?;
        lock(&file, &cfg.path, cfg.read_only)?;
        let direct = match cfg.cache {
            Cache::Writeback => None,
            Cache::None => Some(Self::open_direct(cfg)?),
        };
        let bytes = file.seek(SeekFrom::End(0)).map_err(open_err)?;
        if !bytes.is_multiple_of(SECTOR_SIZE) {
            tracing::warn!(
                path = %cfg.path.display(),
                "disk image size {bytes} is not a multiple of {SECTOR_SIZE}; the tail is not visible to the guest"
            );
        }
        let mut id = [0u8; VIRTIO_BLK_ID_BYTES];
        let serial = match &cfg.serial {
            Some(s) => s.clone(),
            None => cfg
                .path
                .file_name()
                .map(|n| n.to_string_lossy().into_owned())
                .unwrap_or_default(),
        };
        let n = serial.len().min(VIRTIO_BLK_ID_BYTES);
        id[..n].copy_from_slice(&serial.as_bytes()[..n]);
        Ok(Self {
            file,
            direct,
            sectors: bytes / SECTOR_SIZE,
            read_only: cfg.read_only,
            id,
            aio: cfg.aio,
            path: cfg.path.clone(),
        })
    }

    /// The image again, with `O_DIRECT` (the lock is on the first open).
    fn open_direct(cfg: &DiskConfig) -> Result<Direct, BlockError> {
        let file = OpenOptions::new()
            .read(true)
            .write(!cfg.read_only)
            .custom_flags(libc::O_DIRECT)
            .open(&cfg.path)
            .map_err(|e| BlockError::Open {
                path: cfg.path.clone(),
                why: if e.raw_os_error() == Some(libc::EINVAL) {
                    std::io::Error::other("cache=none: its file system does not support O_DIRECT")
                } else {
                    e
                },
            })?;
        let (offset_align, mem_align) = dio_align(&file);
        Ok(Direct {
            file,
            offset_align: offset_align.clamp(SECTOR_SIZE as u32, 4096),
            mem_align: mem_align.min(4096),
        })
    }

    /// The block size the guest is told (`blk_size`): what `O_DIRECT` needs
    /// of offsets with `cache=none`, so that the guest's own I/O suits it.
    pub fn block_size(&self) -> u32 {
        self.direct
            .as_ref()
            .map_or(SECTOR_SIZE as u32, |d| d.offset_align)
    }

    /// The descriptor a transfer of `len` bytes at `offset` between the
    /// image and `iovs` goes through, and its index among
    /// [`fds`](Self::fds): the `O_DIRECT` one when everything is aligned
    /// as it needs, else the buffered one.
    fn fd_for(&self, iovs: &[libc::iovec], offset: u64, len: u32) -> (RawFd, u32) {
        if let Some(d) = &self.direct {
            let o = u64::from(d.offset_align);
            let m = d.mem_align as usize;
            let aligned = offset.is_multiple_of(o)
                && u64::from(len).is_multiple_of(o)
                && iovs.iter().all(|v| {
                    (v.iov_base as usize).is_multiple_of(m) && v.iov_len.is_multiple_of(m)
                });
            if aligned {
                return (d.file.as_raw_fd(), 1);
            }
        }
        (self.file.as_raw_fd(), 0)
    }

    /// The image opened again, buffered, for an io_uring to hold: the ring
    /// lets go of its files some time after it is dropped (the kernel tears
    /// it down asynchronously), and the lock must go with the disk, so the
    /// ring never holds the locked file. Checked to be the same inode.
    fn reopen(&self) -> std::io::Result<File> {
        use std::os::unix::fs::MetadataExt;
        let f = OpenOptions::new()
            .read(true)
            .write(!self.read_only)
            .open(&self.path)?;
        let (a, b) = (self.file.metadata()?, f.metadata()?);
        if (a.dev(), a.ino()) != (b.dev(), b.ino()) {
            return Err(std::io::Error::other(
                "the image was replaced while it was opened",
            ));
        }
        Ok(f)
    }

    /// The descriptors an io_uring registers, in the order
    /// [`fd_for`](Self::fd_for) numbers them: `buffered` (see
    /// [`reopen`](Self::reopen)), then the `O_DIRECT` one.
    fn fds(&self, buffered: &File) -> Vec<RawFd> {
        let mut v = vec![buffered.as_raw_fd()];
        v.extend(self.direct.as_ref().map(|d| d.file.as_raw_fd()));
        v
    }

    /// Capacity in 512-byte sectors.
    pub fn sectors(&self) -> u64 {
        self.sectors
    }

    /// Whether the guest may only read.
    pub fn read_only(&self) -> bool {
        self.read_only
    }
}

/// Serves every available request of `queue`; returns whether the guest
/// needs an interrupt. An error means the queue itself is broken.
pub fn process_queue(
    disk: &Disk,
    mem: &GuestMemory,
    queue: &mut Queue,
    scratch: &mut Scratch,
) -> Result<bool, virtio_queue::Error> {
    let mut used = false;
    loop {
        queue.disable_notification(mem)?;
        while let Some(chain) = queue.iter(mem)?.next() {
            let head = chain.head_index();
            let len = request::handle(disk, mem, chain, scratch);
            queue.add_used(mem, head, len)?;
            used = true;
        }
        if !queue.enable_notification(mem)? {
            break;
        }
    }
    Ok(used && queue.needs_notification(mem)?)
}

/// The virtio-blk device.
pub struct Block {
    disk: Arc<Disk>,
    /// The io_uring engine, unless the disk is served synchronously.
    uring: Option<Arc<Mutex<uring::Uring>>>,
    config: Vec<u8>,
    features: u64,
    queue_sizes: [u16; 1],
    thread: Parked,
}

/// Says once per process that io_uring is unavailable.
fn warn_no_uring(e: &uring::UringError) {
    static ONCE: std::sync::Once = std::sync::Once::new();
    ONCE.call_once(|| {
        tracing::warn!("virtio-blk: io_uring is not available ({e}); disks are served synchronously, one request at a time");
    });
}

impl Block {
    /// Opens (and locks) the disk described by `cfg`.
    pub fn new(cfg: &DiskConfig) -> Result<Self, BlockError> {
        Self::with_disk(Disk::open(cfg)?)
    }

    /// A device over an already open disk: makes its io_uring (as the
    /// disk's `aio` says) and starts its (parked) I/O thread.
    pub fn with_disk(disk: Disk) -> Result<Self, BlockError> {
        let uring = match disk.aio {
            Aio::Sync => None,
            Aio::Auto => uring::Uring::new(&disk).inspect_err(warn_no_uring).ok(),
            Aio::IoUring => Some(uring::Uring::new(&disk).map_err(|why| BlockError::Uring {
                path: disk.path.clone(),
                why,
            })?),
        };
        Ok(Self {
            config: config_space(&disk),
            features: features_of(&disk),
            disk: Arc::new(disk),
            uring: uring.map(|u| Arc::new(Mutex::new(u))),
            queue_sizes: [QUEUE_SIZE],
            thread: Parked::spawn("virtio-blk", ThreadKind::VirtioBlk)?,
        })
    }

    /// Whether the io_uring engine serves the disk.
    pub fn uses_io_uring(&self) -> bool {
        self.uring.is_some()
    }
}

fn features_of(disk: &Disk) -> u64 {
    use features::*;
    // VIRTIO_F_VERSION_1 is added by the transport.
    let mut f = (1u64 << VIRTIO_F_RING_EVENT_IDX) | (1 << SEG_MAX) | (1 << BLK_SIZE) | (1 << FLUSH);
    if disk.read_only {
        f |= 1 << RO;
    } else {
        f |= (1 << DISCARD) | (1 << WRITE_ZEROES);
    }
    f
}

/// struct virtio_blk_config, up to write_zeroes_may_unmap.
fn config_space(disk: &Disk) -> Vec<u8> {
    let mut c = vec![0u8; 60];
    c[0..8].copy_from_slice(&disk.sectors.to_le_bytes());
    c[12..16].copy_from_slice(&request::SEG_MAX.to_le_bytes());
    c[20..24].copy_from_slice(&disk.block_size().to_le_bytes());
    c[34..36].copy_from_slice(&1u16.to_le_bytes());
    c[36..40].copy_from_slice(&MAX_DISCARD_SECTORS.to_le_bytes());
    c[40..44].copy_from_slice(&MAX_DISCARD_SEG.to_le_bytes());
    c[44..48].copy_from_slice(&1u32.to_le_bytes());
    c[48..52].copy_from_slice(&MAX_DISCARD_SECTORS.to_le_bytes());
    c[52..56].copy_from_slice(&MAX_DISCARD_SEG.to_le_bytes());
    c[56] = 1;
    c
}

/// The engine's lock: held by the I/O thread while it serves, taken by
/// nobody else meanwhile (`activate` and `reset` stop the thread first).
fn lock_uring(u: &Mutex<uring::Uring>) -> std::sync::MutexGuard<'_, uring::Uring> {
    u.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
}

impl VirtioDevice for Block {
    fn device_type(&self) -> u32 {
        VIRTIO_ID_BLOCK
    }

    fn queue_max_sizes(&self) -> &[u16] {
        &self.queue_sizes
    }

    fn features(&self) -> u64 {
        self.features
    }

    fn read_config(&self, offset: u64, data: &mut [u8]) {
        read_config_bytes(&self.config, offset, data);
    }

    fn write_config(&mut self, offset: u64, _data: &[u8]) {
        // Nothing is writable without VIRTIO_BLK_F_CONFIG_WCE.
        warn_limited!("virtio-blk: guest wrote read-only config at {offset:#x}");
    }

    fn activate(
        &mut self,
        mem: GuestMemory,
        interrupt: Arc<Interrupt>,
        acked_features: u64,
        queues: Vec<ActiveQueue>,
    ) -> Result<(), ActivateError> {
        self.thread.stop();
        let [aq]: [ActiveQueue; 1] = queues
            .try_into()
            .map_err(|q: Vec<_>| ActivateError::BadQueues(format!("{} queues, want 1", q.len())))?;
        let kill = EventFd::new(libc::EFD_NONBLOCK)?;
        let mut worker = QueueWorker::new("virtio-blk", vec![aq], acked_features, &kill)?;
        let disk = self.disk.clone();
        let uring = self.uring.clone();
        if let Some(u) = &uring {
            worker.watch_completions(lock_uring(u).completions())?;
        }
        // The worker wakes on `kill` through its epoll.
        self.thread
            .serve(kill, move || match uring {
                Some(u) => {
                    let mut u = lock_uring(&u);
                    worker.run(&interrupt, |q| u.serve(&disk, &mem, q));
                    u.drain();
                }
                None => {
                    let mut scratch = Scratch::default();
                    worker.run(&interrupt, |q| process_queue(&disk, &mem, q, &mut scratch))
                }
            })
            .map_err(|e| ActivateError::BadQueues(e.to_string()))?;
        Ok(())
    }

    fn reset(&mut self) -> bool {
        // A worker stuck past its deadline leaves the device failed.
        self.thread.stop()
    }
}

//! virtio-blk (virtio 1.2 §5.2) over a raw image file or block device.
//!
//! One queue, served by one I/O thread per disk that reads and writes guest
//! memory in place (`preadv`/`pwritev` straight into the guest's buffers).
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

use std::fs::{File, OpenOptions};
use std::io::{Seek, SeekFrom};
use std::os::fd::AsRawFd;
use std::path::{Path, PathBuf};
use std::sync::Arc;

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
    /// The image cannot be opened.
    #[error("cannot open disk image {path}: {source}")]
    Open {
        /// The image.
        path: PathBuf,
        /// Why.
        source: std::io::Error,
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
}

/// One disk of a VM: `PATH[,ro][,serial=ID]` on the command line.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct DiskConfig {
    /// Raw image file or block device.
    pub path: PathBuf,
    /// The guest may only read it (enforced by the device, advertised as VIRTIO_BLK_F_RO).
    pub read_only: bool,
    /// What `GET_ID` returns (at most 20 bytes); the file name when unset.
    pub serial: Option<String>,
}

impl DiskConfig {
    /// A writable disk without a serial.
    pub fn new(path: impl Into<PathBuf>) -> Self {
        Self {
            path: path.into(),
            read_only: false,
            serial: None,
        }
    }

    /// Parses `PATH[,ro][,serial=ID]`.
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
                _ => return Err(bad("options are ro, rw and serial=ID")),
            }
        }
        Ok(cfg)
    }
}

/// An open, locked disk image: what the I/O thread works on.
#[derive(Debug)]
pub struct Disk {
    file: File,
    sectors: u64,
    read_only: bool,
    id: [u8; VIRTIO_BLK_ID_BYTES],
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
        source: e,
    })
}

impl Disk {
    /// Opens and locks the image; the capacity is its size rounded down to
    /// whole sectors.
    pub fn open(cfg: &DiskConfig) -> Result<Self, BlockError> {
        let open_err = |source| BlockError::Open {
            path: cfg.path.clone(),
            source,
        };
        let mut file = OpenOptions::new()
            .read(true)
            .write(!cfg.read_only)
            .open(&cfg.path)
            .map_err(open_err)?;
        lock(&file, &cfg.path, cfg.read_only)?;
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
            sectors: bytes / SECTOR_SIZE,
            read_only: cfg.read_only,
            id,
        })
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
    config: Vec<u8>,
    features: u64,
    queue_sizes: [u16; 1],
    thread: Parked,
}

impl Block {
    /// Opens (and locks) the disk described by `cfg`.
    pub fn new(cfg: &DiskConfig) -> Result<Self, BlockError> {
        Self::with_disk(Disk::open(cfg)?)
    }

    /// A device over an already open disk. Starts its (parked) I/O thread.
    pub fn with_disk(disk: Disk) -> Result<Self, BlockError> {
        use features::*;
        // VIRTIO_F_VERSION_1 is added by the transport.
        let mut f =
            (1u64 << VIRTIO_F_RING_EVENT_IDX) | (1 << SEG_MAX) | (1 << BLK_SIZE) | (1 << FLUSH);
        if disk.read_only {
            f |= 1 << RO;
        } else {
            f |= (1 << DISCARD) | (1 << WRITE_ZEROES);
        }
        // struct virtio_blk_config, up to write_zeroes_may_unmap.
        let mut c = vec![0u8; 60];
        c[0..8].copy_from_slice(&disk.sectors.to_le_bytes());
        c[12..16].copy_from_slice(&request::SEG_MAX.to_le_bytes());
        c[20..24].copy_from_slice(&(SECTOR_SIZE as u32).to_le_bytes());
        c[34..36].copy_from_slice(&1u16.to_le_bytes());
        c[36..40].copy_from_slice(&MAX_DISCARD_SECTORS.to_le_bytes());
        c[40..44].copy_from_slice(&MAX_DISCARD_SEG.to_le_bytes());
        c[44..48].copy_from_slice(&1u32.to_le_bytes());
        c[48..52].copy_from_slice(&MAX_DISCARD_SECTORS.to_le_bytes());
        c[52..56].copy_from_slice(&MAX_DISCARD_SEG.to_le_bytes());
        c[56] = 1;
        Ok(Self {
            disk: Arc::new(disk),
            config: c,
            features: f,
            queue_sizes: [QUEUE_SIZE],
            thread: Parked::spawn("virtio-blk", ThreadKind::VirtioBlk)?,
        })
    }
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
        let worker = QueueWorker::new("virtio-blk", vec![aq], acked_features, &kill)?;
        let disk = self.disk.clone();
        // The worker wakes on `kill` through its epoll.
        self.thread
            .serve(kill, move || {
                let mut scratch = Scratch::default();
                worker.run(&interrupt, |q| process_queue(&disk, &mem, q, &mut scratch))
            })
            .map_err(|e| ActivateError::BadQueues(e.to_string()))?;
        Ok(())
    }

    fn reset(&mut self) -> bool {
        self.thread.stop();
        true
    }
}

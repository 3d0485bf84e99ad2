//! Parsing, validation and execution of one virtio-blk request.
//!
//! A request is `struct virtio_blk_req { le32 type; le32 reserved; le64
//! sector; u8 data[]; u8 status; }` spread over a descriptor chain: the
//! device-readable part first (header, then data for OUT/DISCARD/
//! WRITE_ZEROES), then the device-writable part (data for IN/GET_ID), whose
//! last byte is the status.

use std::os::fd::{AsRawFd, RawFd};

use virtio_queue::desc::split::Descriptor;
use virtio_queue::DescriptorChain;
use vm_memory::{Address, Bytes, GuestAddress, GuestMemory as _};

use super::{Disk, SECTOR_SIZE};
use crate::{warn_limited, GuestMemory};

/// Bytes `GET_ID` returns.
pub const VIRTIO_BLK_ID_BYTES: usize = 20;
/// Most data segments in one request (advertised in `seg_max`).
pub const SEG_MAX: u32 = 254;
/// Most sectors in one DISCARD/WRITE_ZEROES segment.
pub const MAX_DISCARD_SECTORS: u32 = 1 << 22;
/// Most segments in one DISCARD/WRITE_ZEROES request.
pub const MAX_DISCARD_SEG: u32 = 32;
/// Header bytes.
const HEADER: usize = 16;
/// Bytes of one DISCARD/WRITE_ZEROES segment.
const SEGMENT: usize = 16;
/// Descriptors a chain may have: header, status and SEG_MAX data segments.
const MAX_DESCS: usize = SEG_MAX as usize + 2;

/// Request types (virtio 1.2 §5.2.6).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[repr(u32)]
pub enum RequestType {
    /// Read.
    In = 0,
    /// Write.
    Out = 1,
    /// Flush the write cache.
    Flush = 4,
    /// Device id string.
    GetId = 8,
    /// Discard sectors.
    Discard = 11,
    /// Zero sectors.
    WriteZeroes = 13,
}

impl RequestType {
    fn from_u32(v: u32) -> Option<Self> {
        Some(match v {
            0 => Self::In,
            1 => Self::Out,
            4 => Self::Flush,
            8 => Self::GetId,
            11 => Self::Discard,
            13 => Self::WriteZeroes,
            _ => return None,
        })
    }
}

/// Request status byte.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[repr(u8)]
pub enum Status {
    /// Success.
    Ok = 0,
    /// The request failed or was malformed.
    IoErr = 1,
    /// The request type or a flag is not supported.
    Unsupp = 2,
}

/// Buffers reused from request to request (one per I/O thread).
#[derive(Default)]
pub struct Scratch {
    descs: Vec<Descriptor>,
    pub(super) iovs: Vec<libc::iovec>,
}

/// Why a request failed; each maps to a status byte and a log line.
#[derive(Debug, thiserror::Error)]
pub(super) enum RequestError {
    #[error("descriptor chain has no writable status byte")]
    NoStatus,
    #[error("descriptor chain has more than {MAX_DESCS} descriptors")]
    TooManyDescriptors,
    #[error("a device-readable descriptor follows a device-writable one")]
    BadOrder,
    #[error("a descriptor is outside guest memory")]
    BadAddress,
    #[error("request header is shorter than {HEADER} bytes")]
    ShortHeader,
    #[error("unknown request type {0}")]
    UnknownType(u32),
    #[error("data buffers have the wrong direction for the request")]
    WrongDirection,
    #[error("data length {0} is not a multiple of 512")]
    Unaligned(u64),
    #[error("sectors {sector}+{count} are beyond the disk's {capacity}")]
    OutOfRange {
        sector: u64,
        count: u64,
        capacity: u64,
    },
    #[error("write to a read-only disk")]
    ReadOnly,
    #[error("bad discard/write-zeroes segment list ({0})")]
    BadSegments(&'static str),
    #[error("unsupported flags {0:#x}")]
    UnsupportedFlags(u32),
    #[error("data of {0} bytes is too long for one request")]
    TooLong(u64),
    #[error("I/O error: {0}")]
    Io(#[from] std::io::Error),
}

impl RequestError {
    fn status(&self) -> Status {
        match self {
            Self::UnknownType(_) | Self::UnsupportedFlags(_) => Status::Unsupp,
            _ => Status::IoErr,
        }
    }
}

/// A guest buffer span.
#[derive(Clone, Copy)]
struct Span {
    addr: GuestAddress,
    len: u64,
}

/// The request split into its parts.
struct Parsed {
    /// Device-readable spans (header included).
    readable: Vec<Span>,
    /// Device-writable data spans (status excluded).
    writable: Vec<Span>,
    status: GuestAddress,
    /// A device-readable descriptor follows a device-writable one.
    bad_order: bool,
}

fn total(spans: &[Span]) -> u64 {
    spans.iter().map(|s| s.len).sum()
}

fn parse(mem: &GuestMemory, descs: &[Descriptor]) -> Result<Parsed, RequestError> {
    let last = descs.last().ok_or(RequestError::NoStatus)?;
    if !last.is_write_only() || last.len() == 0 {
        return Err(RequestError::NoStatus);
    }
    let status = last
        .addr()
        .checked_add(u64::from(last.len()) - 1)
        .filter(|a| mem.address_in_range(*a))
        .ok_or(RequestError::NoStatus)?;
    let mut readable = Vec::new();
    let mut writable = Vec::new();
    let n = descs.len();
    let mut seen_writable = false;
    let mut bad_order = false;
    for (i, d) in descs.iter().enumerate() {
        let mut len = u64::from(d.len());
        if i + 1 == n {
            len -= 1;
        }
        // Addresses are checked when the spans are used.
        let span = Span {
            addr: d.addr(),
            len,
        };
        if d.is_write_only() {
            seen_writable = true;
            if len > 0 {
                writable.push(span);
            }
        } else if seen_writable {
            bad_order = true;
        } else {
            readable.push(span);
        }
    }
    Ok(Parsed {
        readable,
        writable,
        status,
        bad_order,
    })
}

/// Reads `buf.len()` bytes from the start of `spans`.
fn gather(mem: &GuestMemory, spans: &[Span], buf: &mut [u8]) -> Result<(), RequestError> {
    let mut done = 0;
    for s in spans {
        if done == buf.len() {
            break;
        }
        let n = (buf.len() - done).min(s.len as usize);
        mem.read_slice(&mut buf[done..done + n], s.addr)
            .map_err(|_| RequestError::BadAddress)?;
        done += n;
    }
    if done < buf.len() {
        return Err(RequestError::ShortHeader);
    }
    Ok(())
}

/// Drops the first `skip` bytes of `spans`.
fn skip(spans: &[Span], mut skip: u64) -> Result<Vec<Span>, RequestError> {
    let mut out = Vec::new();
    for s in spans {
        if skip >= s.len {
            skip -= s.len;
            continue;
        }
        out.push(Span {
            addr: s.addr.checked_add(skip).ok_or(RequestError::BadAddress)?,
            len: s.len - skip,
        });
        skip = 0;
    }
    Ok(out)
}

fn check_range(disk: &Disk, sector: u64, bytes: u64) -> Result<u64, RequestError> {
    if !bytes.is_multiple_of(SECTOR_SIZE) {
        return Err(RequestError::Unaligned(bytes));
    }
    let count = bytes / SECTOR_SIZE;
    match sector.checked_add(count) {
        Some(end) if end <= disk.sectors => Ok(sector * SECTOR_SIZE),
        _ => Err(RequestError::OutOfRange {
            sector,
            count,
            capacity: disk.sectors,
        }),
    }
}

/// Builds iovecs over guest memory for `spans`.
fn iovecs(
    mem: &GuestMemory,
    spans: &[Span],
    out: &mut Vec<libc::iovec>,
) -> Result<(), RequestError> {
    out.clear();
    for s in spans {
        for slice in mem.get_slices(s.addr, s.len as usize) {
            let slice = slice.map_err(|_| RequestError::BadAddress)?;
            out.push(libc::iovec {
                iov_base: slice.ptr_guard_mut().as_ptr().cast(),
                iov_len: slice.len(),
            });
        }
    }
    Ok(())
}

/// preadv/pwritev until every iovec is done.
fn rw_all(
    fd: RawFd,
    mut iovs: &mut [libc::iovec],
    mut offset: u64,
    write: bool,
) -> std::io::Result<()> {
    while !iovs.is_empty() {
        let cnt = iovs.len().min(1024) as libc::c_int;
        let off = offset as libc::off_t;
        // SAFETY: every iovec points into guest memory that stays mapped for
        // the VM's lifetime (validated by get_slices); the kernel reads or
        // writes at most iov_len bytes of each.
        let n = unsafe {
            if write {
                libc::pwritev(fd, iovs.as_ptr(), cnt, off)
            } else {
                libc::preadv(fd, iovs.as_ptr(), cnt, off)
            }
        };
        if n < 0 {
            let e = std::io::Error::last_os_error();
            if e.kind() == std::io::ErrorKind::Interrupted {
                continue;
            }
            return Err(e);
        }
        if n == 0 {
            return Err(std::io::Error::new(
                std::io::ErrorKind::UnexpectedEof,
                "the disk image ended early",
            ));
        }
        offset += n as u64;
        let done = advance(iovs, n as usize);
        iovs = &mut iovs[done..];
    }
    Ok(())
}

/// Moves `iovs` on by `n` transferred bytes: returns how many leading
/// iovecs are used up and shortens the one `n` ends inside.
pub(super) fn advance(iovs: &mut [libc::iovec], mut n: usize) -> usize {
    for (i, iov) in iovs.iter_mut().enumerate() {
        if n < iov.iov_len {
            // SAFETY: n < iov_len, so the advanced pointer stays inside the
            // same guest buffer.
            iov.iov_base = unsafe { iov.iov_base.cast::<u8>().add(n) }.cast();
            iov.iov_len -= n;
            return i;
        }
        n -= iov.iov_len;
    }
    iovs.len()
}

fn fallocate(disk: &Disk, mode: libc::c_int, offset: u64, len: u64) -> std::io::Result<()> {
    loop {
        // SAFETY: fallocate on a descriptor we own; no memory is passed.
        let r = unsafe {
            libc::fallocate(
                disk.file.as_raw_fd(),
                mode,
                offset as libc::off_t,
                len as libc::off_t,
            )
        };
        if r == 0 {
            return Ok(());
        }
        let e = std::io::Error::last_os_error();
        if e.kind() != std::io::ErrorKind::Interrupted {
            return Err(e);
        }
    }
}

fn is_unsupported(e: &std::io::Error) -> bool {
    matches!(
        e.raw_os_error(),
        Some(libc::EOPNOTSUPP) | Some(libc::ENOSYS)
    )
}

fn write_zeroes(disk: &Disk, offset: u64, len: u64, unmap: bool) -> std::io::Result<()> {
    let keep = libc::FALLOC_FL_KEEP_SIZE;
    if unmap {
        match fallocate(disk, libc::FALLOC_FL_PUNCH_HOLE | keep, offset, len) {
            Err(e) if is_unsupported(&e) => {}
            r => return r,
        }
    }
    match fallocate(disk, libc::FALLOC_FL_ZERO_RANGE | keep, offset, len) {
        Err(e) if is_unsupported(&e) => {}
        r => return r,
    }
    use std::os::unix::fs::FileExt;
    let zeros = vec![0u8; 64 * 1024];
    let mut done = 0;
    while done < len {
        let n = (len - done).min(zeros.len() as u64) as usize;
        disk.file.write_all_at(&zeros[..n], offset + done)?;
        done += n as u64;
    }
    Ok(())
}

/// Validates a parsed request and does what needs no waiting (GET_ID,
/// DISCARD and WRITE_ZEROES); a transfer leaves its iovecs in `iovs`.
fn prepare_parsed(
    disk: &Disk,
    mem: &GuestMemory,
    p: &Parsed,
    iovs: &mut Vec<libc::iovec>,
) -> Result<Action, RequestError> {
    if p.bad_order {
        return Err(RequestError::BadOrder);
    }
    let mut hdr = [0u8; HEADER];
    gather(mem, &p.readable, &mut hdr)?;
    let ty = u32::from_le_bytes([hdr[0], hdr[1], hdr[2], hdr[3]]);
    let mut s = [0u8; 8];
    s.copy_from_slice(&hdr[8..16]);
    let sector = u64::from_le_bytes(s);
    let ty = RequestType::from_u32(ty).ok_or(RequestError::UnknownType(ty))?;
    let data_in = skip(&p.readable, HEADER as u64)?;
    let in_len = total(&data_in);
    let out_len = total(&p.writable);
    match ty {
        RequestType::In => {
            if in_len != 0 {
                return Err(RequestError::WrongDirection);
            }
            let offset = check_range(disk, sector, out_len)?;
            iovecs(mem, &p.writable, iovs)?;
            transfer(false, offset, out_len)
        }
        RequestType::Out => {
            if out_len != 0 {
                return Err(RequestError::WrongDirection);
            }
            if disk.read_only {
                return Err(RequestError::ReadOnly);
            }
            let offset = check_range(disk, sector, in_len)?;
            iovecs(mem, &data_in, iovs)?;
            transfer(true, offset, in_len)
        }
        // Nothing of a read-only disk's can be unwritten.
        RequestType::Flush if disk.read_only => Ok(Action::Done(0)),
        RequestType::Flush => Ok(Action::Flush),
        RequestType::GetId => {
            if in_len != 0 {
                return Err(RequestError::WrongDirection);
            }
            get_id(disk, mem, &p.writable, out_len)
        }
        RequestType::Discard | RequestType::WriteZeroes => {
            if out_len != 0 {
                return Err(RequestError::WrongDirection);
            }
            if disk.read_only {
                return Err(RequestError::ReadOnly);
            }
            discard_or_zero(disk, mem, ty, &data_in, in_len)
        }
    }
}

/// GET_ID: the serial into the guest's buffers (at most 20 bytes).
fn get_id(
    disk: &Disk,
    mem: &GuestMemory,
    writable: &[Span],
    out_len: u64,
) -> Result<Action, RequestError> {
    let mut left = VIRTIO_BLK_ID_BYTES.min(out_len as usize);
    let mut done = 0;
    for span in writable {
        if left == 0 {
            break;
        }
        let n = left.min(span.len as usize);
        mem.write_slice(&disk.id[done..done + n], span.addr)
            .map_err(|_| RequestError::BadAddress)?;
        done += n;
        left -= n;
    }
    Ok(Action::Done(done as u32))
}

/// DISCARD or WRITE_ZEROES over the segment list in `data_in` (`in_len`
/// bytes): every segment is validated before the file is touched.
fn discard_or_zero(
    disk: &Disk,
    mem: &GuestMemory,
    ty: RequestType,
    data_in: &[Span],
    in_len: u64,
) -> Result<Action, RequestError> {
    if in_len == 0 || !in_len.is_multiple_of(SEGMENT as u64) {
        return Err(RequestError::BadSegments("length"));
    }
    if in_len / SEGMENT as u64 > u64::from(MAX_DISCARD_SEG) {
        return Err(RequestError::BadSegments("too many"));
    }
    let mut segs = vec![0u8; in_len as usize];
    gather(mem, data_in, &mut segs)?;
    // Validate every segment before touching the file.
    let mut todo = Vec::new();
    for seg in segs.chunks_exact(SEGMENT) {
        let mut b = [0u8; 8];
        b.copy_from_slice(&seg[0..8]);
        let start = u64::from_le_bytes(b);
        let count = u32::from_le_bytes([seg[8], seg[9], seg[10], seg[11]]);
        let flags = u32::from_le_bytes([seg[12], seg[13], seg[14], seg[15]]);
        let allowed = if ty == RequestType::WriteZeroes { 1 } else { 0 };
        if flags & !allowed != 0 {
            return Err(RequestError::UnsupportedFlags(flags));
        }
        if count > MAX_DISCARD_SECTORS {
            return Err(RequestError::BadSegments("segment too large"));
        }
        let bytes = u64::from(count) * SECTOR_SIZE;
        let offset = check_range(disk, start, bytes)?;
        todo.push((offset, bytes, flags & 1 != 0));
    }
    for (offset, bytes, unmap) in todo {
        if bytes == 0 {
            continue;
        }
        if ty == RequestType::Discard {
            let mode = libc::FALLOC_FL_PUNCH_HOLE | libc::FALLOC_FL_KEEP_SIZE;
            match fallocate(disk, mode, offset, bytes) {
                // Discard is a hint: nothing to do where holes are unsupported.
                Err(e) if is_unsupported(&e) => {}
                r => r?,
            }
        } else {
            write_zeroes(disk, offset, bytes, unmap)?;
        }
    }
    Ok(Action::Done(0))
}

/// What a valid request asks of the image once validated.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) enum Action {
    /// Done already (GET_ID, DISCARD, WRITE_ZEROES, a read-only disk's
    /// FLUSH): the data bytes written to the guest.
    Done(u32),
    /// Read (`write` false) into or write from the guest buffers in the
    /// scratch iovecs, `len` bytes at byte `offset` of the image.
    Transfer {
        /// Guest to image.
        write: bool,
        /// Byte offset in the image.
        offset: u64,
        /// Bytes (at most 4 GiB: the data of one descriptor chain).
        len: u32,
    },
    /// Make every completed write durable.
    Flush,
}

fn transfer(write: bool, offset: u64, len: u64) -> Result<Action, RequestError> {
    let len = u32::try_from(len).map_err(|_| RequestError::TooLong(len))?;
    Ok(Action::Transfer { write, offset, len })
}

/// A request taken off the queue: where its status byte goes and what it
/// asks for (or why it is refused).
pub(super) struct Prepared {
    /// The status byte's guest address.
    pub status: GuestAddress,
    /// The validated action, or the error to report.
    pub action: Result<Action, RequestError>,
}

/// Parses and validates one chain, building a transfer's iovecs in
/// `scratch.iovs`. `None`: the chain has no status byte to report into (the
/// guest gets it back with used length 0).
pub(super) fn prepare(
    disk: &Disk,
    mem: &GuestMemory,
    chain: DescriptorChain<&GuestMemory>,
    scratch: &mut Scratch,
) -> Option<Prepared> {
    scratch.descs.clear();
    let mut count = 0usize;
    let mut last = None;
    for d in chain {
        count += 1;
        if count <= MAX_DESCS {
            scratch.descs.push(d);
        }
        last = Some(d);
    }
    if count > MAX_DESCS {
        // Keep only the status descriptor so the guest still learns of the error.
        scratch.descs.clear();
        scratch.descs.extend(last);
    }
    let p = match parse(mem, &scratch.descs) {
        Ok(p) => p,
        Err(e) => {
            warn_limited!("virtio-blk: dropped request: {e}");
            return None;
        }
    };
    let action = if count > MAX_DESCS {
        Err(RequestError::TooManyDescriptors)
    } else {
        prepare_parsed(disk, mem, &p, &mut scratch.iovs)
    };
    Some(Prepared {
        status: p.status,
        action,
    })
}

/// Writes a finished request's status byte; returns the used length (data
/// bytes written to the guest, plus the status byte).
pub(super) fn finish(
    mem: &GuestMemory,
    status: GuestAddress,
    result: Result<u32, RequestError>,
) -> u32 {
    let (st, written) = match result {
        Ok(n) => (Status::Ok, n),
        Err(e) => {
            warn_limited!("virtio-blk: request failed: {e}");
            (e.status(), 0)
        }
    };
    if mem.write_obj(st as u8, status).is_err() {
        return 0;
    }
    written.saturating_add(1)
}

/// Serves one request chain synchronously; returns the used length.
pub(super) fn handle(
    disk: &Disk,
    mem: &GuestMemory,
    chain: DescriptorChain<&GuestMemory>,
    scratch: &mut Scratch,
) -> u32 {
    let Some(p) = prepare(disk, mem, chain, scratch) else {
        return 0;
    };
    let result = p.action.and_then(|a| match a {
        Action::Done(n) => Ok(n),
        Action::Transfer { write, offset, len } => {
            let (fd, _) = disk.fd_for(&scratch.iovs, offset, len);
            rw_all(fd, &mut scratch.iovs, offset, write)?;
            Ok(if write { 0 } else { len })
        }
        Action::Flush => {
            disk.file.sync_data()?;
            Ok(0)
        }
    });
    finish(mem, p.status, result)
}

//! Socket I/O with fds (SCM_RIGHTS) and the bounded buffers between the two
//! sides of a client.

use std::collections::VecDeque;
use std::io;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::os::unix::net::UnixStream;

/// libwayland sends at most this many fds with one `sendmsg` and sizes its
/// receive buffer for exactly this many.
pub const MAX_FDS_PER_SEND: usize = 28;

/// Errors of the socket layer.
#[derive(Debug, thiserror::Error)]
pub enum ConnError {
    /// A system call failed.
    #[error("{0}")]
    Io(#[from] io::Error),
    /// The peer sent more fds in one go than any libwayland peer does.
    #[error("too many fds in one send")]
    FdsTruncated,
}

// Room for MAX_FDS_PER_SEND fds in a control message, 8-byte aligned.
const CMSG_SPACE: usize = 16 + MAX_FDS_PER_SEND * 4 + 8;

#[repr(C, align(8))]
struct CmsgBuf([u8; CMSG_SPACE]);

/// Reads into `buf`, appending received fds to `fds`. `Ok(0)` is EOF.
pub fn recv(
    sock: &UnixStream,
    buf: &mut [u8],
    fds: &mut VecDeque<OwnedFd>,
) -> Result<usize, ConnError> {
    let mut iov = libc::iovec {
        iov_base: buf.as_mut_ptr().cast(),
        iov_len: buf.len(),
    };
    let mut cmsg = CmsgBuf([0; CMSG_SPACE]);
    // SAFETY: an all-zero msghdr is valid; the pointers set below outlive the call.
    let mut msg: libc::msghdr = unsafe { std::mem::zeroed() };
    msg.msg_iov = &mut iov;
    msg.msg_iovlen = 1;
    msg.msg_control = cmsg.0.as_mut_ptr().cast();
    msg.msg_controllen = CMSG_SPACE as _;
    // SAFETY: `msg` points at `iov` (over `buf`) and `cmsg`, both live and sized as declared.
    let n = unsafe {
        libc::recvmsg(
            sock.as_raw_fd(),
            &mut msg,
            libc::MSG_CMSG_CLOEXEC | libc::MSG_DONTWAIT,
        )
    };
    if n < 0 {
        return Err(io::Error::last_os_error().into());
    }
    // Take ownership of every fd that arrived before judging the message.
    // SAFETY: `msg` was filled by recvmsg; CMSG_FIRSTHDR/NXTHDR stay within msg_controllen.
    let mut c = unsafe { libc::CMSG_FIRSTHDR(&msg) };
    while !c.is_null() {
        // SAFETY: `c` is a valid cmsghdr inside `cmsg` (checked non-null by the loop).
        let hdr = unsafe { &*c };
        if hdr.cmsg_level == libc::SOL_SOCKET && hdr.cmsg_type == libc::SCM_RIGHTS {
            // SAFETY: CMSG_LEN(0) is a pure size computation.
            let data_len =
                (hdr.cmsg_len as usize).saturating_sub(unsafe { libc::CMSG_LEN(0) } as usize);
            // SAFETY: the data of an SCM_RIGHTS cmsg is `data_len / 4` fds.
            let data = unsafe { libc::CMSG_DATA(c) } as *const RawFd;
            for i in 0..data_len / 4 {
                // SAFETY: in bounds of the cmsg data; possibly unaligned, hence read_unaligned.
                let fd = unsafe { data.add(i).read_unaligned() };
                // SAFETY: the kernel just installed this fd for us; nobody else owns it.
                fds.push_back(unsafe { OwnedFd::from_raw_fd(fd) });
            }
        }
        // SAFETY: as above.
        c = unsafe { libc::CMSG_NXTHDR(&msg, c) };
    }
    if msg.msg_flags & libc::MSG_CTRUNC != 0 {
        return Err(ConnError::FdsTruncated);
    }
    Ok(n as usize)
}

/// Sends `data` with `fds` attached to its first byte. Returns bytes sent.
pub fn send(sock: &UnixStream, data: &[u8], fds: &[RawFd]) -> io::Result<usize> {
    debug_assert!(fds.len() <= MAX_FDS_PER_SEND);
    let mut iov = libc::iovec {
        iov_base: data.as_ptr() as *mut _,
        iov_len: data.len(),
    };
    let mut cmsg = CmsgBuf([0; CMSG_SPACE]);
    // SAFETY: an all-zero msghdr is valid.
    let mut msg: libc::msghdr = unsafe { std::mem::zeroed() };
    msg.msg_iov = &mut iov;
    msg.msg_iovlen = 1;
    if !fds.is_empty() {
        // SAFETY: pure size computations.
        let (space, len) = unsafe {
            (
                libc::CMSG_SPACE((fds.len() * 4) as u32) as usize,
                libc::CMSG_LEN((fds.len() * 4) as u32) as usize,
            )
        };
        msg.msg_control = cmsg.0.as_mut_ptr().cast();
        msg.msg_controllen = space as _;
        // SAFETY: msg_control has room for one cmsg of `space` bytes (≤ CMSG_SPACE).
        let c = unsafe { &mut *libc::CMSG_FIRSTHDR(&msg) };
        c.cmsg_level = libc::SOL_SOCKET;
        c.cmsg_type = libc::SCM_RIGHTS;
        c.cmsg_len = len as _;
        // SAFETY: CMSG_DATA of that cmsg has room for fds.len() ints.
        let data = unsafe { libc::CMSG_DATA(c) } as *mut RawFd;
        for (i, fd) in fds.iter().enumerate() {
            // SAFETY: in bounds, see above.
            unsafe { data.add(i).write_unaligned(*fd) };
        }
    }
    // SAFETY: `msg` points at live buffers of the declared sizes.
    let n = unsafe {
        libc::sendmsg(
            sock.as_raw_fd(),
            &msg,
            libc::MSG_DONTWAIT | libc::MSG_NOSIGNAL,
        )
    };
    if n < 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(n as usize)
}

/// Bytes and fds waiting to be sent to one side. Each fd is tied to the
/// offset of the message that carries it, so it leaves with that message.
#[derive(Debug, Default)]
pub struct OutBuf {
    data: VecDeque<u8>,
    /// Stream offset of `data[0]`.
    base: u64,
    fds: VecDeque<(u64, OwnedFd)>,
}

impl OutBuf {
    /// Bytes queued.
    pub fn len(&self) -> usize {
        self.data.len()
    }

    /// Whether nothing is queued.
    pub fn is_empty(&self) -> bool {
        self.data.is_empty()
    }

    /// Fds queued.
    pub fn fd_count(&self) -> usize {
        self.fds.len()
    }

    /// Queues one message and its fds.
    pub fn push(&mut self, msg: &[u8], fds: impl Iterator<Item = OwnedFd>) {
        let at = self.base + self.data.len() as u64;
        self.fds.extend(fds.map(|f| (at, f)));
        self.data.extend(msg);
    }

    /// Sends as much as the socket takes. `Ok(true)` when everything is out.
    pub fn flush(&mut self, sock: &UnixStream) -> io::Result<bool> {
        self.data.make_contiguous();
        while !self.data.is_empty() {
            // Stop before the message whose fds would exceed one send's worth.
            let mut end = self.data.len();
            if let Some((at, _)) = self.fds.get(MAX_FDS_PER_SEND) {
                end = (at - self.base) as usize;
            }
            if end == 0 {
                return Err(io::Error::new(
                    io::ErrorKind::InvalidData,
                    "message with too many fds",
                ));
            }
            // Fds leave with the first byte of this chunk.
            let limit = self.base + end as u64;
            let mut raw = [0 as RawFd; MAX_FDS_PER_SEND];
            let mut nfds = 0;
            for (at, f) in self.fds.iter().take(MAX_FDS_PER_SEND) {
                if *at >= limit {
                    break;
                }
                raw[nfds] = f.as_raw_fd();
                nfds += 1;
            }
            let chunk = &self.data.as_slices().0[..end];
            match send(sock, chunk, &raw[..nfds]) {
                Ok(n) => {
                    // The receiver holds its own copies now; close ours.
                    self.fds.drain(..nfds);
                    self.data.drain(..n);
                    self.base += n as u64;
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => return Ok(false),
                Err(e) => return Err(e),
            }
        }
        Ok(true)
    }
}

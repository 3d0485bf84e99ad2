//! The guest Wayland relay: guest apps connect to `$XDG_RUNTIME_DIR/wayland-0`;
//! each connection gets its own virtio-gpu cross-domain context, whose host
//! side is a connection to the VM's wl-proxy. Bytes travel as they are (object
//! ids unchanged); what cannot cross the VM boundary is translated:
//!
//! - `wl_shm` pools: the client's memfd is mirrored by a host blob of the
//!   same size, and a committed buffer's bytes are copied into it;
//! - pipes (clipboard, drag-and-drop) both ways, through the host's pipe ids;
//! - fds from the host (keymaps, format tables) become sealed guest memfds;
//! - globals the relay has no signature for are hidden, versions capped at
//!   what it can parse.
//!
//! Every message is framed and parsed with wl-proxy's tables; a client
//! that breaks the protocol, or sends an fd the relay cannot carry, is
//! disconnected (its context closes, so its host connection and windows go).

pub mod fuzz;
pub mod session;
pub mod virtgpu;

use std::os::fd::{AsRawFd, OwnedFd};
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::Path;

/// Serves guest Wayland clients on `path` until the process ends: one
/// thread per client.
pub fn serve(path: &Path) -> std::io::Result<()> {
    let _ = std::fs::remove_file(path);
    let l = UnixListener::bind(path)?;
    std::thread::Builder::new()
        .name("wl-relay".into())
        .spawn(move || {
            for c in l.incoming() {
                let Ok(c) = c else { continue };
                let _ = std::thread::Builder::new()
                    .name("wl-client".into())
                    .spawn(move || run_client(c));
            }
        })?;
    Ok(())
}

fn run_client(client: UnixStream) {
    let ctx = match virtgpu::Context::open() {
        Ok(c) => c,
        Err(e) => {
            eprintln!("wl-relay: no cross-domain channel: {e}");
            return;
        }
    };
    let mut s = session::Session::new(ctx, client);
    match s.run() {
        // A client that closes its socket while messages are in flight gets
        // ECONNRESET/EPIPE: an ordinary end.
        Err(session::RelayError::Io(e))
            if matches!(e.raw_os_error(), Some(libc::ECONNRESET) | Some(libc::EPIPE)) => {}
        Err(e) => eprintln!("wl-relay: client ended: {e}"),
        Ok(()) => {}
    }
}

/// Receives bytes and fds (SCM_RIGHTS) from a Unix socket. Ok(0) is EOF.
pub fn recv_with_fds(
    sock: &impl AsRawFd,
    buf: &mut [u8],
    fds: &mut Vec<OwnedFd>,
) -> std::io::Result<usize> {
    use std::os::fd::FromRawFd;
    let mut cmsg = [0u64; 64];
    let mut iov = libc::iovec {
        iov_base: buf.as_mut_ptr().cast(),
        iov_len: buf.len(),
    };
    // SAFETY: zeroed msghdr is valid; pointers set below outlive the call.
    let mut msg: libc::msghdr = unsafe { std::mem::zeroed() };
    msg.msg_iov = &mut iov;
    msg.msg_iovlen = 1;
    msg.msg_control = cmsg.as_mut_ptr().cast();
    msg.msg_controllen = std::mem::size_of_val(&cmsg);
    // SAFETY: msg points to valid buffers for the call.
    let n = unsafe { libc::recvmsg(sock.as_raw_fd(), &mut msg, libc::MSG_CMSG_CLOEXEC) };
    if n < 0 {
        return Err(std::io::Error::last_os_error());
    }
    // SAFETY: walking the control buffer the kernel filled, with the libc macros.
    unsafe {
        let mut c = libc::CMSG_FIRSTHDR(&msg);
        while !c.is_null() {
            if (*c).cmsg_level == libc::SOL_SOCKET && (*c).cmsg_type == libc::SCM_RIGHTS {
                let data = libc::CMSG_DATA(c) as *const i32;
                let len = (*c).cmsg_len as usize - libc::CMSG_LEN(0) as usize;
                for i in 0..len / 4 {
                    fds.push(OwnedFd::from_raw_fd(data.add(i).read_unaligned()));
                }
            }
            c = libc::CMSG_NXTHDR(&msg, c);
        }
    }
    if msg.msg_flags & libc::MSG_CTRUNC != 0 {
        return Err(std::io::Error::other("too many fds"));
    }
    Ok(n as usize)
}

/// Sends bytes with fds; returns how many bytes went (fds go with the first).
pub fn send_with_fds(sock: &impl AsRawFd, buf: &[u8], fds: &[OwnedFd]) -> std::io::Result<usize> {
    let mut cmsg = [0u64; 64];
    let mut iov = libc::iovec {
        iov_base: buf.as_ptr() as *mut _,
        iov_len: buf.len(),
    };
    // SAFETY: zeroed msghdr is valid; pointers set below outlive the call.
    let mut msg: libc::msghdr = unsafe { std::mem::zeroed() };
    msg.msg_iov = &mut iov;
    msg.msg_iovlen = 1;
    if !fds.is_empty() {
        let bytes = fds.len() * 4;
        // SAFETY: CMSG_SPACE is a pure size computation.
        let space = unsafe { libc::CMSG_SPACE(bytes as u32) } as usize;
        if space > std::mem::size_of_val(&cmsg) {
            return Err(std::io::Error::other("too many fds"));
        }
        msg.msg_control = cmsg.as_mut_ptr().cast();
        msg.msg_controllen = space;
        // SAFETY: the control buffer is large enough for one SCM_RIGHTS
        // header with `fds.len()` descriptors (checked above).
        unsafe {
            let c = libc::CMSG_FIRSTHDR(&msg);
            (*c).cmsg_level = libc::SOL_SOCKET;
            (*c).cmsg_type = libc::SCM_RIGHTS;
            (*c).cmsg_len = libc::CMSG_LEN(bytes as u32) as usize;
            let data = libc::CMSG_DATA(c) as *mut i32;
            for (i, f) in fds.iter().enumerate() {
                data.add(i).write_unaligned(f.as_raw_fd());
            }
        }
    }
    // SAFETY: msg points to valid buffers for the call.
    let n = unsafe { libc::sendmsg(sock.as_raw_fd(), &msg, libc::MSG_NOSIGNAL) };
    if n < 0 {
        return Err(std::io::Error::last_os_error());
    }
    Ok(n as usize)
}

//! AF_VSOCK stream sockets over libc (std has none): used by the guest's
//! `/init vsock` and `/init bench` tools and by the host side of the vsock
//! benchmark.

use std::fs::File;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};

fn socket() -> std::io::Result<OwnedFd> {
    // SAFETY: plain socket(2) call; the result is checked before use.
    let fd = unsafe { libc::socket(libc::AF_VSOCK, libc::SOCK_STREAM | libc::SOCK_CLOEXEC, 0) };
    if fd < 0 {
        return Err(std::io::Error::last_os_error());
    }
    // SAFETY: fd is a fresh descriptor we own.
    Ok(unsafe { OwnedFd::from_raw_fd(fd) })
}

fn addr(cid: u32, port: u32) -> libc::sockaddr_vm {
    // SAFETY: sockaddr_vm is plain data; all-zero is a valid value.
    let mut a: libc::sockaddr_vm = unsafe { std::mem::zeroed() };
    a.svm_family = libc::AF_VSOCK as libc::sa_family_t;
    a.svm_cid = cid;
    a.svm_port = port;
    a
}

const ADDR_LEN: libc::socklen_t = std::mem::size_of::<libc::sockaddr_vm>() as libc::socklen_t;

/// Connects a stream to `cid:port`.
pub fn connect(cid: u32, port: u32) -> std::io::Result<File> {
    let s = socket()?;
    let a = addr(cid, port);
    // SAFETY: a is a valid sockaddr_vm of ADDR_LEN bytes.
    let r = unsafe {
        libc::connect(
            s.as_raw_fd(),
            (&a as *const libc::sockaddr_vm).cast(),
            ADDR_LEN,
        )
    };
    if r != 0 {
        return Err(std::io::Error::last_os_error());
    }
    Ok(File::from(s))
}

/// Listens on `port` of any local CID.
pub fn listen(port: u32) -> std::io::Result<OwnedFd> {
    let s = socket()?;
    let a = addr(libc::VMADDR_CID_ANY, port);
    // SAFETY: a is a valid sockaddr_vm of ADDR_LEN bytes.
    if unsafe {
        libc::bind(
            s.as_raw_fd(),
            (&a as *const libc::sockaddr_vm).cast(),
            ADDR_LEN,
        )
    } != 0
    {
        return Err(std::io::Error::last_os_error());
    }
    // SAFETY: listen on our socket.
    if unsafe { libc::listen(s.as_raw_fd(), 128) } != 0 {
        return Err(std::io::Error::last_os_error());
    }
    Ok(s)
}

/// Accepts one connection.
pub fn accept(l: &OwnedFd) -> std::io::Result<File> {
    // SAFETY: accept without a peer address.
    let fd = unsafe {
        libc::accept4(
            l.as_raw_fd(),
            std::ptr::null_mut(),
            std::ptr::null_mut(),
            libc::SOCK_CLOEXEC,
        )
    };
    if fd < 0 {
        return Err(std::io::Error::last_os_error());
    }
    // SAFETY: fd is a fresh descriptor we own.
    Ok(File::from(unsafe { OwnedFd::from_raw_fd(fd) }))
}

/// Shuts both directions of a vsock stream (the peer sees its end; a
/// thread blocked reading it returns).
pub fn shutdown(f: &File) {
    // SAFETY: shutdown on an fd the File owns; no memory is passed.
    unsafe { libc::shutdown(f.as_raw_fd(), libc::SHUT_RDWR) };
}

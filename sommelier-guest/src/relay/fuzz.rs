//! The `wl_relay_session` fuzz harness: a whole relay [`Session`] — its
//! pools, buffers, host blobs, surface commits and pipes — against a
//! stand-in for the host side ([`FakeHost`]: blobs are anonymous shared
//! memory, SENDs are checked for their limits and dropped), so that what a
//! guest client sends reaches the relay's sizing and copying code.

use std::fs::File;
use std::io;
use std::os::fd::{FromRawFd, OwnedFd};
use std::os::unix::net::UnixStream;

use super::session::Session;
use super::virtgpu::{self, Bo, Host, Mapping, Requirements};

/// Largest host blob the stand-in hands out (the device caps blobs at its
/// window size).
const MAX_BLOB: u64 = 64 << 20;
/// Size of each pool file the harness gives the client.
const POOL_FILE: i64 = 64 * 1024;

/// The host side without a device.
pub struct FakeHost {
    fd: File,
    next_read_pipe: u32,
    /// Live blobs by resource handle: a SEND naming another one fails, as
    /// the device's does ("invalid resource id"), and loses its batch.
    blobs: std::cell::RefCell<std::collections::HashSet<u32>>,
    next_res: std::cell::Cell<u32>,
}

impl FakeHost {
    fn new() -> io::Result<Self> {
        Ok(FakeHost {
            fd: File::open("/dev/null")?,
            next_read_pipe: virtgpu::READ_PIPE_START,
            blobs: Default::default(),
            next_res: std::cell::Cell::new(1),
        })
    }
}

impl Host for FakeHost {
    fn fd(&self) -> &File {
        &self.fd
    }
    fn take_event(&self, _out: &mut Vec<u8>) -> io::Result<bool> {
        Ok(false)
    }
    fn poll(&self) -> io::Result<()> {
        Ok(())
    }
    fn send(&self, data: &[u8], ids: &[(u32, u32)]) -> io::Result<()> {
        assert!(
            data.len() <= virtgpu::MAX_SEND_DATA,
            "SEND past its data limit"
        );
        assert!(
            ids.len() <= virtgpu::MAX_IDENTIFIERS,
            "SEND past its identifiers"
        );
        let pipes = ids
            .iter()
            .filter(|i| i.1 == virtgpu::id_type::READ_PIPE)
            .count();
        assert!(
            pipes == 0 || (pipes == 1 && ids[0].1 == virtgpu::id_type::READ_PIPE),
            "a read pipe that the host would refuse: {ids:?}"
        );
        let blobs = self.blobs.borrow();
        if let Some(&(res, _)) = ids
            .iter()
            .find(|&&(res, t)| t == virtgpu::id_type::BLOB && !blobs.contains(&res))
        {
            return Err(io::Error::other(format!("invalid resource id {res}")));
        }
        Ok(())
    }
    fn write_pipe(&self, _id: u32, data: &[u8], _hang_up: bool) -> io::Result<()> {
        assert!(
            data.len() <= virtgpu::MAX_WRITE_DATA,
            "WRITE past its limit"
        );
        Ok(())
    }
    fn next_read_pipe_id(&mut self) -> u32 {
        self.next_read_pipe = self.next_read_pipe.wrapping_add(1);
        self.next_read_pipe
    }
    fn requirements(&self, size: u32) -> io::Result<Requirements> {
        Ok(Requirements {
            size: u64::from(size).div_ceil(4096) * 4096,
            blob_id: 2,
        })
    }
    fn host_blob(&self, _blob_id: u32, size: u64, _writable: bool) -> io::Result<Bo> {
        let size = size.div_ceil(4096) * 4096;
        if size == 0 || size > MAX_BLOB {
            return Err(io::Error::other("blob size"));
        }
        let res = self.next_res.get();
        self.next_res.set(res.wrapping_add(1));
        self.blobs.borrow_mut().insert(res);
        Ok(Bo {
            handle: res,
            res_handle: res,
            map: Some(Mapping::anonymous(size as usize)?),
        })
    }
    fn close(&self, bo: Bo) {
        self.blobs.borrow_mut().remove(&bo.res_handle);
    }
}

/// A pool file of [`POOL_FILE`] bytes.
fn pool_file() -> io::Result<OwnedFd> {
    // SAFETY: a NUL-terminated name and flags; the fd is owned below.
    let fd = unsafe { libc::memfd_create(c"pool".as_ptr(), libc::MFD_CLOEXEC) };
    if fd < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: a new fd nothing else owns.
    let fd = unsafe { OwnedFd::from_raw_fd(fd) };
    File::from(fd.try_clone()?).set_len(POOL_FILE as u64)?;
    Ok(fd)
}

/// An event as the channel ring carries it: a RECEIVE without identifiers.
fn receive(bytes: &[u8]) -> Vec<u8> {
    let mut ev = vec![0u8; virtgpu::SEND_RECEIVE_HDR];
    ev[0] = virtgpu::xd::RECEIVE;
    ev[12..16].copy_from_slice(&(bytes.len() as u32).to_le_bytes());
    ev.extend_from_slice(bytes);
    ev
}

/// Records as `relay::session::fuzz` takes them
/// ([`fuzz_records`](super::session::fuzz_records)): bit 0 of `flags` is the direction
/// (client request / host event), bits 1–2 how many pool files come with a
/// request. Requests go through the relay's client path, events (wrapped in
/// a RECEIVE) through its host path, until one fails. Returns how many
/// records were taken.
pub fn session(data: &[u8]) -> usize {
    let Ok(host) = FakeHost::new() else { return 0 };
    let Ok((client, _peer)) = UnixStream::pair() else {
        return 0;
    };
    // What the relay writes to the client must not block the harness.
    if client.set_nonblocking(true).is_err() {
        return 0;
    }
    let mut s = Session::new(host, client);
    let mut n = 0;
    for (flags, chunk) in super::session::fuzz_records(data) {
        let r = if flags & 1 == 0 {
            let fds: io::Result<Vec<OwnedFd>> =
                (0..(flags >> 1) & 3).map(|_| pool_file()).collect();
            match fds {
                Ok(fds) => s.client_input(chunk, fds),
                Err(_) => break,
            }
        } else {
            s.host_input(&receive(chunk))
        };
        if r.is_err() {
            break;
        }
        n += 1;
    }
    s.end();
    n
}

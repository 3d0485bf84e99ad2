//! The guest's side of the network: keeps a stream to the host's network
//! port, takes a DHCP lease over it, and relays frames between it and the
//! TAP device until the host ends the stream; then the link goes down and
//! the relay tries again every second.
//!
//! Frames cross in batches: everything the TAP has queued goes to the host
//! in one write (up to [`BATCH`] bytes), and each read from the host yields
//! as many frames as it holds. A slow host blocks the write, so frames back
//! up in the kernel's TAP queue (which drops, as a full NIC does) rather
//! than in a buffer of ours.

use std::fs::File;
use std::io::{IoSlice, Read, Write};
use std::os::fd::AsRawFd;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use super::dhcp::{self, Lease};
use super::tap::Tap;
use super::{push_frame, vnet, Deframer, NetError, MAX_FRAME};
use crate::vsock_socket;

/// The most bytes one write to the host carries.
pub const BATCH: usize = 256 << 10;
/// The largest MTU the guest takes, whatever DHCP offers: passt offers
/// 65520, and the vsock device's framed port carries frames up to a
/// 65535-byte MTU. (Debian 12's passt, 0.0~git20230309, stalled at 65520
/// and lost long transfers at any MTU; the passt `cargo xtask` builds,
/// 2025_05_03, carries both directions at 65520.)
pub const MAX_MTU: u16 = 65520;
/// How long the DHCP exchange may take.
const DHCP_TIMEOUT: Duration = Duration::from_secs(10);

fn log(msg: &str) {
    eprintln!("sommelier-guest: net: {msg}");
}

/// Waits until `fd` is readable or `ms` pass: whether it is.
fn readable(fd: &impl AsRawFd, ms: i32) -> Result<bool, NetError> {
    let mut p = libc::pollfd {
        fd: fd.as_raw_fd(),
        events: libc::POLLIN,
        revents: 0,
    };
    // SAFETY: one valid pollfd.
    let r = unsafe { libc::poll(&mut p, 1, ms) };
    if r < 0 {
        let e = std::io::Error::last_os_error();
        if e.kind() == std::io::ErrorKind::Interrupted {
            return Ok(false);
        }
        return Err(NetError::Io("poll", e));
    }
    Ok(r > 0)
}

/// One DHCP step: sends `msg`, waits for an answer of type `want`.
fn exchange(
    s: &mut File,
    d: &mut Deframer,
    msg: &[u8],
    mac: [u8; 6],
    xid: u32,
    want: u8,
) -> Result<Lease, NetError> {
    let mut out = Vec::with_capacity(msg.len() + 4);
    push_frame(&mut out, msg);
    s.write_all(&out).map_err(|e| NetError::Io("send", e))?;
    let deadline = Instant::now() + DHCP_TIMEOUT;
    loop {
        while let Some(f) = d.next_frame()? {
            if let Some((kind, lease)) = dhcp::answer(f, mac, xid) {
                if kind == want {
                    return Ok(lease);
                }
            }
        }
        let left = deadline.saturating_duration_since(Instant::now());
        if left.is_zero() {
            return Err(NetError::NoLease("no answer in time"));
        }
        if readable(s, left.as_millis().min(1000) as i32)? {
            let n = s.read(d.space()).map_err(|e| NetError::Io("receive", e))?;
            if n == 0 {
                return Err(NetError::Closed);
            }
            d.filled(n);
        }
    }
}

/// DISCOVER, OFFER, REQUEST, ACK.
fn lease(s: &mut File, d: &mut Deframer, mac: [u8; 6]) -> Result<Lease, NetError> {
    let now = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH);
    let xid = now
        .map(|d| d.subsec_nanos() ^ d.as_secs() as u32)
        .unwrap_or(0x7a11);
    let offer = exchange(s, d, &dhcp::message(mac, xid, None), mac, xid, dhcp::OFFER)?;
    exchange(
        s,
        d,
        &dhcp::message(mac, xid, Some(&offer)),
        mac,
        xid,
        dhcp::ACK,
    )
}

/// Writes the lease's resolvers where the guest's resolver looks. The
/// guest's `/etc` may be read-only (a host-root guest): then the file is
/// written under `/run` and mounted over `/etc/resolv.conf`.
fn set_resolvers(dns: &[[u8; 4]]) {
    if dns.is_empty() {
        return;
    }
    let text: String = dns
        .iter()
        .map(|a| format!("nameserver {}.{}.{}.{}\n", a[0], a[1], a[2], a[3]))
        .collect();
    if std::fs::write("/etc/resolv.conf", &text).is_ok() {
        return;
    }
    // A host-root guest's `/etc/resolv.conf` may link into `/run` (systemd-
    // resolved's stub), which is the guest's own: write the link's target.
    if let Ok(target) = std::fs::read_link("/etc/resolv.conf") {
        let target = std::path::Path::new("/etc").join(target);
        if target.starts_with("/run/") || target.starts_with("/etc/../run/") {
            if let Some(dir) = target.parent() {
                let _ = std::fs::create_dir_all(dir);
            }
            if std::fs::write(&target, &text).is_ok() {
                return;
            }
        }
    }
    let own = "/run/vmapp-resolv.conf";
    if std::fs::write(own, &text).is_err() {
        log("cannot write the resolvers");
        return;
    }
    static MOUNTED: AtomicBool = AtomicBool::new(false);
    if MOUNTED.swap(true, Ordering::SeqCst) {
        return;
    }
    let (src, dst) = (c"/run/vmapp-resolv.conf", c"/etc/resolv.conf");
    // SAFETY: valid NUL-terminated paths; a plain bind mount.
    let r = unsafe {
        libc::mount(
            src.as_ptr(),
            dst.as_ptr(),
            std::ptr::null(),
            libc::MS_BIND,
            std::ptr::null(),
        )
    };
    if r != 0 {
        log(&format!("resolv.conf: {}", std::io::Error::last_os_error()));
    }
}

/// TAP → host, batched, until `stop` or an error.
fn uplink(tap: &File, s: &mut File, stop: &AtomicBool) -> Result<(), NetError> {
    let mut out = Vec::with_capacity(BATCH + MAX_FRAME + 4);
    let mut frame = vec![0u8; vnet::HDR_LEN + MAX_FRAME];
    while !stop.load(Ordering::Relaxed) {
        if !readable(tap, 500)? {
            continue;
        }
        out.clear();
        while out.len() < BATCH {
            match (&*tap).read(&mut frame) {
                // Each frame behind its header (offloads are never on, so
                // the frame is complete as it is).
                Ok(n) if n > vnet::HDR_LEN => push_frame(&mut out, &frame[vnet::HDR_LEN..n]),
                Ok(n) if n > 0 => {}
                Ok(_) => break,
                Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => break,
                Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
                Err(e) => return Err(NetError::Io("TAP read", e)),
            }
        }
        if !out.is_empty() {
            s.write_all(&out).map_err(|e| match e.kind() {
                // The host ended the stream.
                std::io::ErrorKind::BrokenPipe | std::io::ErrorKind::ConnectionReset => {
                    NetError::Closed
                }
                _ => NetError::Io("send", e),
            })?;
        }
    }
    Ok(())
}

/// Host → TAP until the stream ends.
fn downlink(tap: &File, s: &mut File, d: &mut Deframer) -> Result<(), NetError> {
    loop {
        while let Some(f) = d.next_frame()? {
            let hdr = vnet::into_tap(f);
            let iov = [IoSlice::new(&hdr), IoSlice::new(f)];
            // A frame the guest's stack cannot take now is dropped, as a
            // NIC with a full ring drops it.
            let _ = (&*tap).write_vectored(&iov);
        }
        let n = s.read(d.space()).map_err(|e| NetError::Io("receive", e))?;
        if n == 0 {
            return Err(NetError::Closed);
        }
        d.filled(n);
    }
}

/// One connection's life: lease, link up, relay; the link goes down after.
fn session(tap: &Tap, mut s: File) -> Result<(), NetError> {
    let mac = tap.iface().mac()?;
    let mut d = Deframer::new();
    let mut l = lease(&mut s, &mut d, mac)?;
    l.mtu = l.mtu.map(|m| m.min(MAX_MTU));
    if let Err(e) = tap.iface().up(&l) {
        // Nothing half-configured stays behind.
        let _ = tap.iface().down();
        return Err(e);
    }
    set_resolvers(&l.dns);
    log(&format!(
        "up: {}.{}.{}.{}",
        l.addr[0], l.addr[1], l.addr[2], l.addr[3]
    ));
    let stop = Arc::new(AtomicBool::new(false));
    let up_stream = s.try_clone().map_err(|e| NetError::Io("dup", e))?;
    let tap_file = tap.file().try_clone().map_err(|e| NetError::Io("dup", e))?;
    let st = stop.clone();
    let up = std::thread::Builder::new()
        .name("net-up".into())
        .spawn(move || {
            let mut up_stream = up_stream;
            let r = uplink(&tap_file, &mut up_stream, &st);
            st.store(true, Ordering::SeqCst);
            // SAFETY: shutdown on our own open socket wakes the downlink's read.
            unsafe { libc::shutdown(up_stream.as_raw_fd(), libc::SHUT_RDWR) };
            r
        });
    let up = up.map_err(|e| NetError::Io("thread", e))?;
    let r = downlink(tap.file(), &mut s, &mut d);
    stop.store(true, Ordering::SeqCst);
    // SAFETY: shutdown on our own socket wakes a blocked writer.
    unsafe { libc::shutdown(s.as_raw_fd(), libc::SHUT_RDWR) };
    let up_result = up.join().unwrap_or(Ok(()));
    tap.iface().down()?;
    match (r, up_result) {
        // The uplink failed first and its shutdown ended the downlink.
        (Err(NetError::Closed), Err(e)) => Err(e),
        (r, u) => r.and(u),
    }
}

/// Makes the calling thread SCHED_BATCH: woken by data, it waits for the
/// next tick or for the waker to sleep instead of preempting it.
fn batch_scheduling() {
    let p = libc::sched_param { sched_priority: 0 };
    // SAFETY: changes only the calling thread's policy; `p` is valid.
    if unsafe { libc::sched_setscheduler(0, libc::SCHED_BATCH, &p) } != 0 {
        log(&format!("SCHED_BATCH: {}", std::io::Error::last_os_error()));
    }
}

/// Runs the guest's network on host port `port`, forever (a thread).
pub fn run(port: u32) {
    batch_scheduling();
    let tap = match Tap::open("eth0") {
        Ok(t) => t,
        Err(e) => {
            log(&format!("no TAP device: {e}"));
            return;
        }
    };
    let mut said = false;
    loop {
        match vsock_socket::connect(2, port) {
            Ok(s) => {
                said = false;
                match session(&tap, s) {
                    Err(NetError::Closed) => log("down: the host ended the network"),
                    Err(e) => log(&format!("down: {e}")),
                    Ok(()) => {}
                }
            }
            Err(e) if !said => {
                log(&format!(
                    "the host's network is off ({e}); retrying every second"
                ));
                said = true;
            }
            Err(_) => {}
        }
        std::thread::sleep(Duration::from_secs(1));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_relay_thread_is_batch_scheduled_and_no_other() {
        let t = std::thread::spawn(|| {
            batch_scheduling();
            // SAFETY: queries the calling thread's policy.
            unsafe { libc::sched_getscheduler(0) }
        });
        assert_eq!(t.join().unwrap(), libc::SCHED_BATCH);
        // SAFETY: as above.
        assert_eq!(unsafe { libc::sched_getscheduler(0) }, libc::SCHED_OTHER);
    }
}

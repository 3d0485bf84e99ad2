//! `/init bench …`: I/O measurements taken inside the guest, the same binary
//! under every VMM the benchmarks compare (`benches/`):
//!
//! - `bench blk DEV MIB SECS`: sequential 1 MiB O_DIRECT write then read of
//!   the first MIB MiB, then 4 KiB O_DIRECT random reads for SECS seconds.
//!   Prints `@@seqwrite_mbps=`, `@@seqread_mbps=`, `@@randread_iops=`.
//! - `bench vsock CID TXPORT RXPORT MIB`: sends MIB MiB to CID:TXPORT and
//!   waits for the peer to close (`@@vsock_tx_mbps=`), then listens on RXPORT
//!   and reads one stream to its end (`@@vsock_rx_mbps=`).
//! - `bench fs TAG MIB NFILES`: mounts the virtio-fs share TAG, writes a MIB
//!   MiB file in 1 MiB blocks and fsyncs it (`@@fs_seqwrite_mbps=`), drops
//!   the guest's caches and reads it back (`@@fs_seqread_mbps=`), then
//!   creates, stats and unlinks NFILES small files (`@@fs_files_per_s=`:
//!   files through all three steps per second).
//! - `bench tcp HOST TXPORT RXPORT MIB [static]`: sends MIB MiB over TCP to
//!   HOST:TXPORT and waits for the peer to close (`@@net_tx_mbps=`), then
//!   connects to HOST:RXPORT and reads to the end (`@@net_rx_mbps=`). It
//!   waits up to 2 minutes for the network to come up. With `static`, it
//!   first loads a virtio-net driver and gives `eth0` 192.0.2.2/24, MTU
//!   65520 and HOST as its router (for a VMM with a network device).

use std::alloc::{alloc_zeroed, dealloc, Layout};
use std::os::unix::fs::{FileExt, OpenOptionsExt};
use std::time::{Duration, Instant};

/// A page-aligned buffer, as O_DIRECT needs.
struct Aligned {
    ptr: *mut u8,
    layout: Layout,
}

impl Aligned {
    fn new(len: usize) -> Option<Self> {
        let layout = Layout::from_size_align(len, 4096).ok()?;
        // SAFETY: the layout has a non-zero size (callers pass ≥ 4096).
        let ptr = unsafe { alloc_zeroed(layout) };
        (!ptr.is_null()).then_some(Self { ptr, layout })
    }

    fn as_mut(&mut self) -> &mut [u8] {
        // SAFETY: ptr owns layout.size() initialised (zeroed) bytes.
        unsafe { std::slice::from_raw_parts_mut(self.ptr, self.layout.size()) }
    }
}

impl Drop for Aligned {
    fn drop(&mut self) {
        // SAFETY: allocated with this layout in `new`.
        unsafe { dealloc(self.ptr, self.layout) };
    }
}

/// Reads `r` to its end in `chunk`-byte reads: the bytes, and the time from
/// the first read's return to the end.
fn read_timed(mut r: impl std::io::Read, chunk: usize) -> std::io::Result<(u64, Duration)> {
    let mut buf = vec![0u8; chunk];
    let (mut n, mut t) = (0u64, None);
    loop {
        let k = r.read(&mut buf)?;
        t.get_or_insert_with(Instant::now);
        if k == 0 {
            break;
        }
        n += k as u64;
    }
    Ok((n, t.map_or(Duration::ZERO, |t| t.elapsed())))
}

fn mbps(bytes: u64, d: Duration) -> f64 {
    bytes as f64 / (1 << 20) as f64 / d.as_secs_f64().max(1e-9)
}

fn blk(dev: &str, mib: u64, secs: u64) -> std::io::Result<()> {
    let f = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .custom_flags(libc::O_DIRECT)
        .open(dev)?;
    let mut buf = Aligned::new(1 << 20).ok_or(std::io::ErrorKind::OutOfMemory)?;
    for (i, b) in buf.as_mut().iter_mut().enumerate() {
        *b = (i * 31 % 251) as u8;
    }
    let t = Instant::now();
    for i in 0..mib {
        f.write_all_at(buf.as_mut(), i << 20)?;
    }
    f.sync_data()?;
    println!("@@seqwrite_mbps={:.1}", mbps(mib << 20, t.elapsed()));
    let t = Instant::now();
    for i in 0..mib {
        f.read_exact_at(buf.as_mut(), i << 20)?;
    }
    println!("@@seqread_mbps={:.1}", mbps(mib << 20, t.elapsed()));
    let mut small = Aligned::new(4096).ok_or(std::io::ErrorKind::OutOfMemory)?;
    let blocks = (mib << 20) / 4096;
    let mut x: u64 = 0x9e37_79b9_7f4a_7c15;
    let mut n = 0u64;
    let t = Instant::now();
    let end = Duration::from_secs(secs);
    while t.elapsed() < end {
        // xorshift64: a cheap, fixed pseudo-random offset sequence.
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        f.read_exact_at(small.as_mut(), (x % blocks) * 4096)?;
        n += 1;
    }
    println!(
        "@@randread_iops={:.0}",
        n as f64 / t.elapsed().as_secs_f64()
    );
    Ok(())
}

fn vsock(cid: u32, txport: u32, rxport: u32, mib: u64) -> std::io::Result<()> {
    use std::io::{Read, Write};
    let buf = vec![0x5au8; 64 * 1024];
    let t = Instant::now();
    let mut s = sommelier_guest::vsock_socket::connect(cid, txport)?;
    for _ in 0..mib * 16 {
        s.write_all(&buf)?;
    }
    // SAFETY: shutdown on our socket.
    unsafe { libc::shutdown(std::os::fd::AsRawFd::as_raw_fd(&s), libc::SHUT_WR) };
    let mut rest = Vec::new();
    s.read_to_end(&mut rest)?;
    println!("@@vsock_tx_mbps={:.1}", mbps(mib << 20, t.elapsed()));
    let l = sommelier_guest::vsock_socket::listen(rxport)?;
    println!("@@vsock-listening");
    let c = sommelier_guest::vsock_socket::accept(&l)?;
    let (n, d) = read_timed(c, 64 * 1024)?;
    println!("@@vsock_rx_mbps={:.1}", mbps(n, d));
    Ok(())
}

fn drop_caches() -> std::io::Result<()> {
    // SAFETY: sync takes no arguments.
    unsafe { libc::sync() };
    std::fs::write("/proc/sys/vm/drop_caches", "3")
}

fn fs(tag: &str, mib: u64, nfiles: u64) -> std::io::Result<()> {
    use std::io::{Read, Write};
    let dir = "/mnt/bench";
    std::fs::create_dir_all(dir)?;
    let (src, target, fstype) = (
        std::ffi::CString::new(tag)?,
        std::ffi::CString::new(dir)?,
        c"virtiofs",
    );
    // SAFETY: valid NUL-terminated strings; no data argument.
    let r = unsafe {
        libc::mount(
            src.as_ptr(),
            target.as_ptr(),
            fstype.as_ptr(),
            0,
            std::ptr::null(),
        )
    };
    if r != 0 {
        return Err(std::io::Error::last_os_error());
    }
    let big = format!("{dir}/big");
    let buf: Vec<u8> = (0..1 << 20).map(|i| (i * 31 % 251) as u8).collect();
    let t = Instant::now();
    let mut f = std::fs::File::create(&big)?;
    for _ in 0..mib {
        f.write_all(&buf)?;
    }
    f.sync_all()?;
    drop(f);
    println!("@@fs_seqwrite_mbps={:.1}", mbps(mib << 20, t.elapsed()));
    drop_caches()?;
    let mut rbuf = vec![0u8; 1 << 20];
    let t = Instant::now();
    let mut f = std::fs::File::open(&big)?;
    let mut n = 0u64;
    loop {
        let r = f.read(&mut rbuf)?;
        if r == 0 {
            break;
        }
        n += r as u64;
    }
    println!("@@fs_seqread_mbps={:.1}", mbps(n, t.elapsed()));
    std::fs::remove_file(&big)?;
    let t = Instant::now();
    for i in 0..nfiles {
        std::fs::write(format!("{dir}/f{i}"), b"x")?;
    }
    for i in 0..nfiles {
        std::fs::symlink_metadata(format!("{dir}/f{i}"))?;
    }
    for i in 0..nfiles {
        std::fs::remove_file(format!("{dir}/f{i}"))?;
    }
    println!(
        "@@fs_files_per_s={:.0}",
        nfiles as f64 / t.elapsed().as_secs_f64()
    );
    // SAFETY: a valid path string.
    unsafe { libc::umount(target.as_ptr()) };
    Ok(())
}

/// `eth0` of a guest with a virtio-net device, configured as passt's DHCP
/// would (passt hands out the host's address).
fn static_eth0(router: std::net::Ipv4Addr) -> std::io::Result<()> {
    crate::load_modules("/etc/vmapp/modules-bench");
    for _ in 0..100 {
        if std::path::Path::new("/sys/class/net/eth0").exists() {
            break;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    let lease = sommelier_guest::net::dhcp::Lease {
        addr: [192, 0, 2, 2],
        mask: [255, 255, 255, 0],
        router: Some(router.octets()),
        dns: Vec::new(),
        mtu: Some(65520),
        server: None,
    };
    sommelier_guest::net::tap::Iface::new("eth0")
        .and_then(|i| i.up(&lease))
        .map_err(std::io::Error::other)
}

/// The receiving side of a TCP connection as the guest's kernel sees it.
fn tcp_info(s: &std::net::TcpStream) -> String {
    use std::os::fd::AsRawFd;
    // SAFETY: tcp_info is plain data; all-zero is a valid value.
    let mut i: libc::tcp_info = unsafe { std::mem::zeroed() };
    let mut len = std::mem::size_of::<libc::tcp_info>() as libc::socklen_t;
    // SAFETY: an out-value of its own size on our own socket.
    let r = unsafe {
        libc::getsockopt(
            s.as_raw_fd(),
            libc::IPPROTO_TCP,
            libc::TCP_INFO,
            (&mut i as *mut libc::tcp_info).cast(),
            &mut len,
        )
    };
    if r != 0 {
        return String::new();
    }
    format!(
        "tcp_rcv_mss={} tcp_advmss={} tcp_rcv_ssthresh={} tcp_rcv_space={} tcp_rcv_rtt_us={}",
        i.tcpi_rcv_mss, i.tcpi_advmss, i.tcpi_rcv_ssthresh, i.tcpi_rcv_space, i.tcpi_rcv_rtt
    )
}

/// The guest's CPU and event counters (`/proc/stat`, `/proc/interrupts`),
/// to show where a transfer's time goes.
struct Counters {
    /// user, nice, system, idle, iowait, irq, softirq, steal (ticks).
    cpu: [u64; 8],
    ctxt: u64,
    intr: u64,
    /// Interrupts of the virtio devices and the local timer/rescheduling/call-function IPIs.
    lines: Vec<(String, u64)>,
    /// CPU ticks (user + system) per thread name, over every thread.
    tasks: Vec<(String, u64)>,
    /// eth0's received frames and bytes, and sent frames.
    eth0: (u64, u64, u64),
}

fn eth0_counts() -> (u64, u64, u64) {
    let read = |f: &str| {
        std::fs::read_to_string(format!("/sys/class/net/eth0/statistics/{f}"))
            .ok()
            .and_then(|v| v.trim().parse().ok())
            .unwrap_or(0)
    };
    (read("rx_packets"), read("rx_bytes"), read("tx_packets"))
}

impl Counters {
    fn now() -> Option<Self> {
        let stat = std::fs::read_to_string("/proc/stat").ok()?;
        let mut c = Counters {
            cpu: [0; 8],
            ctxt: 0,
            intr: 0,
            lines: Vec::new(),
            tasks: sommelier_guest::procstat::thread_ticks(false),
            eth0: eth0_counts(),
        };
        for l in stat.lines() {
            let mut w = l.split_whitespace();
            match w.next() {
                Some("cpu") => {
                    for (i, v) in w.take(8).enumerate() {
                        c.cpu[i] = v.parse().ok()?;
                    }
                }
                Some("ctxt") => c.ctxt = w.next()?.parse().ok()?,
                Some("intr") => c.intr = w.next()?.parse().ok()?,
                _ => {}
            }
        }
        let irqs = std::fs::read_to_string("/proc/interrupts").ok()?;
        for l in irqs.lines().skip(1) {
            let mut w = l.split_whitespace();
            let Some(name) = w.next() else {
                continue;
            };
            let name = name.trim_end_matches(':').to_string();
            // Every CPU's column (the benchmark guest has one).
            let rest: Vec<&str> = w.collect();
            let n = rest
                .iter()
                .map_while(|v| v.parse::<u64>().ok())
                .fold(0u64, u64::saturating_add);
            let label = rest.last().copied().unwrap_or("");
            if label.contains("virtio") || matches!(name.as_str(), "LOC" | "RES" | "CAL") {
                c.lines.push((format!("{name}:{label}"), n));
            }
        }
        Some(c)
    }

    /// The counters' growth from `self` to `b` per MiB of `bytes`.
    fn per_mib(&self, b: &Counters, bytes: u64) -> String {
        let mib = (bytes as f64 / (1 << 20) as f64).max(1.0 / 1024.0);
        let names = [
            "user", "nice", "sys", "idle", "iowait", "irq", "softirq", "steal",
        ];
        let mut out = String::new();
        for (i, n) in names.iter().enumerate() {
            let d = b.cpu[i].saturating_sub(self.cpu[i]);
            out += &format!("{n}_ticks={:.1} ", d as f64 / mib);
        }
        out += &format!(
            "ctxt={:.0} intr={:.0}",
            b.ctxt.saturating_sub(self.ctxt) as f64 / mib,
            b.intr.saturating_sub(self.intr) as f64 / mib
        );
        for (name, n) in &b.lines {
            let was = self
                .lines
                .iter()
                .find(|(m, _)| m == name)
                .map_or(0, |(_, v)| *v);
            out += &format!(" {name}={:.0}", n.saturating_sub(was) as f64 / mib);
        }
        let frames = b.eth0.0.saturating_sub(self.eth0.0);
        let fbytes = b.eth0.1.saturating_sub(self.eth0.1);
        out += &format!(
            " eth0_frames={:.0} eth0_avg_frame={} eth0_sent={:.0}",
            frames as f64 / mib,
            fbytes.checked_div(frames).unwrap_or(0),
            b.eth0.2.saturating_sub(self.eth0.2) as f64 / mib
        );
        let tasks = sommelier_guest::procstat::ticks_since(&self.tasks, &b.tasks);
        for (name, d) in tasks.iter().take(8) {
            out += &format!(" task[{name}]={:.1}", *d as f64 / mib);
        }
        out
    }
}

fn tcp(host: &str, tx: u16, rx: u16, mib: u64, static_cfg: bool) -> std::io::Result<()> {
    use std::io::{Read, Write};
    use std::net::TcpStream;
    let ip: std::net::Ipv4Addr = host
        .parse()
        .map_err(|_| std::io::Error::from(std::io::ErrorKind::InvalidInput))?;
    if static_cfg {
        static_eth0(ip)?;
    }
    let deadline = Instant::now() + Duration::from_secs(120);
    let mut s = loop {
        match TcpStream::connect((ip, tx)) {
            Ok(s) => break s,
            Err(_) if Instant::now() < deadline => std::thread::sleep(Duration::from_millis(200)),
            Err(e) => return Err(e),
        }
    };
    let buf = vec![0x5au8; 256 * 1024];
    let t = Instant::now();
    for _ in 0..mib * 4 {
        s.write_all(&buf)?;
    }
    s.shutdown(std::net::Shutdown::Write)?;
    let mut rest = Vec::new();
    s.read_to_end(&mut rest)?;
    println!("@@net_tx_mbps={:.1}", mbps(mib << 20, t.elapsed()));
    let before = Counters::now();
    let rs = TcpStream::connect((ip, rx))?;
    let (n, d) = read_timed(&rs, 256 * 1024)?;
    println!("@@net_rx_mbps={:.1}", mbps(n, d));
    if let (Some(a), Some(b)) = (before, Counters::now()) {
        println!("@@net_rx_per_mib {} {}", a.per_mib(&b, n), tcp_info(&rs));
    }
    Ok(())
}

/// Runs `bench ARGS`; returns the exit status.
pub fn main(args: &[String]) -> i32 {
    let r = match args {
        [k, dev, mib, secs] if k == "blk" => match (mib.parse(), secs.parse()) {
            (Ok(m), Ok(s)) => blk(dev, m, s),
            _ => Err(std::io::ErrorKind::InvalidInput.into()),
        },
        [k, tag, mib, n] if k == "fs" => match (mib.parse(), n.parse()) {
            (Ok(m), Ok(n)) => fs(tag, m, n),
            _ => Err(std::io::ErrorKind::InvalidInput.into()),
        },
        [k, cid, tx, rx, mib] if k == "vsock" => {
            match (cid.parse(), tx.parse(), rx.parse(), mib.parse()) {
                (Ok(c), Ok(t), Ok(r), Ok(m)) => vsock(c, t, r, m),
                _ => Err(std::io::ErrorKind::InvalidInput.into()),
            }
        }
        [k, host, tx, rx, mib, rest @ ..] if k == "tcp" && rest.len() <= 1 => {
            let st = rest.first().map(String::as_str);
            match (tx.parse(), rx.parse(), mib.parse(), st) {
                (Ok(t), Ok(r), Ok(m), None | Some("static")) => tcp(host, t, r, m, st.is_some()),
                _ => Err(std::io::ErrorKind::InvalidInput.into()),
            }
        }
        _ => {
            eprintln!("usage: bench blk DEV MIB SECS | bench vsock CID TXPORT RXPORT MIB | bench fs TAG MIB NFILES | bench tcp HOST TXPORT RXPORT MIB [static]");
            return 2;
        }
    };
    match r {
        Ok(()) => 0,
        Err(e) => {
            eprintln!("bench: {e}");
            1
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn counters_grow_and_are_reported_per_mib() {
        let a = Counters::now().expect("/proc/stat and /proc/interrupts");
        let spin = Instant::now();
        while spin.elapsed() < Duration::from_millis(60) {
            std::hint::black_box(0u64);
        }
        let b = Counters::now().unwrap();
        assert!(b.ctxt >= a.ctxt);
        let s = a.per_mib(&b, 2 << 20);
        for k in [
            "user_ticks=",
            "sys_ticks=",
            "ctxt=",
            "intr=",
            "eth0_frames=",
        ] {
            assert!(s.contains(k), "{k} missing in {s}");
        }
        // This process's threads are among those counted.
        let me = std::fs::read_to_string("/proc/self/comm").unwrap();
        let mine = |c: &Counters| c.tasks.iter().find(|t| t.0 == me.trim()).map(|t| t.1);
        assert!(mine(&b).is_some(), "{:?}", b.tasks);
        assert!(mine(&b) >= mine(&a));
    }
}

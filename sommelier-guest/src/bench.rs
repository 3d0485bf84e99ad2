//! `/init bench …`: I/O measurements taken inside the guest, the same binary
//! under every VMM the benchmarks compare (`benches/`):
//!
//! - `bench blk DEV MIB SECS`: sequential 1 MiB O_DIRECT write then read of
//!   the first MIB MiB, then 4 KiB O_DIRECT random reads for SECS seconds.
//!   Prints `@@seqwrite_mbps=`, `@@seqread_mbps=`, `@@randread_iops=`.

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

/// Runs `bench ARGS`; returns the exit status.
pub fn main(args: &[String]) -> i32 {
    let r = match args {
        [k, dev, mib, secs] if k == "blk" => match (mib.parse(), secs.parse()) {
            (Ok(m), Ok(s)) => blk(dev, m, s),
            _ => Err(std::io::ErrorKind::InvalidInput.into()),
        },
        _ => {
            eprintln!("usage: bench blk DEV MIB SECS");
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

//! Device-level tests over real guest memory and real split queues built the
//! way a driver builds them (virtio-queue's mock driver side).

use std::io::Write;
use std::os::unix::fs::FileExt;
use std::time::Duration;

use virtio_queue::desc::split::Descriptor as SplitDescriptor;
use virtio_queue::desc::RawDescriptor;
use virtio_queue::mock::MockSplitQueue;
use virtio_queue::Queue;
use vm_memory::{Bytes, GuestAddress, GuestMemory as _, GuestMemoryMmap};
use vmm_sys_util::eventfd::EventFd;

use super::*;
use crate::virtio::{ActiveQueue, Interrupt, VirtioDevice};

const F_WRITE: u16 = 2;
const MEM_SIZE: usize = 0x40_0000;
const HDR: u64 = 0x10_0000;
const DATA: u64 = 0x20_0000;
const STATUS: u64 = 0x30_0000;
const SECTORS: u64 = 64;

fn mem() -> GuestMemory {
    GuestMemoryMmap::from_ranges(&[(GuestAddress(0), MEM_SIZE)]).unwrap()
}

fn image(sectors: u64) -> tempfile::NamedTempFile {
    let mut f = tempfile::NamedTempFile::new().unwrap();
    let data: Vec<u8> = (0..sectors * 512).map(|i| (i % 251) as u8).collect();
    f.write_all(&data).unwrap();
    f
}

/// The engine the tests of this thread run on (see [`on_both_engines`]).
#[derive(Clone, Copy, Debug, PartialEq)]
enum Engine {
    Sync,
    Uring,
}

thread_local! {
    static ENGINE: std::cell::Cell<Engine> = const { std::cell::Cell::new(Engine::Sync) };
}

fn engine() -> Engine {
    ENGINE.with(|e| e.get())
}

/// Runs each listed test once per engine (`sync_engine::NAME`,
/// `uring_engine::NAME`).
macro_rules! on_both_engines {
    ($($name:ident),* $(,)?) => {
        mod sync_engine {
            $(#[test] fn $name() { super::ENGINE.with(|e| e.set(super::Engine::Sync)); super::$name() })*
        }
        mod uring_engine {
            $(#[test] fn $name() { super::ENGINE.with(|e| e.set(super::Engine::Uring)); super::$name() })*
        }
    };
}

on_both_engines!(
    write_then_read_back_across_split_buffers,
    header_split_across_descriptors,
    out_of_range_and_overflowing_sectors_fail,
    unaligned_length_fails,
    wrong_directions_fail,
    chains_without_a_usable_status_are_consumed_without_writing,
    buffers_outside_guest_memory_fail,
    short_header_and_unknown_type,
    get_id_returns_the_serial,
    read_only_disk_refuses_every_write,
    write_zeroes_and_discard,
    overlong_chains_fail_cleanly,
    an_impossible_avail_index_breaks_the_queue,
    worker_thread_serves_notifications_and_stops_on_reset,
    cache_none_reads_and_writes_aligned_and_unaligned_buffers,
    a_request_that_fails_mid_flight_fails_alone,
    the_image_lock_goes_with_the_device,
);

fn disk(f: &tempfile::NamedTempFile, read_only: bool) -> Disk {
    let mut cfg = DiskConfig::new(f.path());
    cfg.read_only = read_only;
    cfg.serial = Some("vmapp-disk-0".into());
    cfg.aio = match engine() {
        Engine::Sync => Aio::Sync,
        Engine::Uring => Aio::IoUring,
    };
    Disk::open(&cfg).unwrap()
}

/// Waits (at most 10 s) until the engine's completion eventfd fires.
fn wait_completion(u: &uring::Uring) {
    assert!(
        crate::wait_readable(u.completions(), Some(Duration::from_secs(10))),
        "no completion in 10 s"
    );
}

/// Serves `queue` on this thread's engine until nothing is in flight;
/// returns whether an interrupt was due, or the queue's error.
fn serve_all(d: &Disk, m: &GuestMemory, queue: &mut Queue) -> Result<bool, String> {
    match engine() {
        Engine::Sync => {
            process_queue(d, m, queue, &mut Scratch::default()).map_err(|e| e.to_string())
        }
        Engine::Uring => {
            let mut u = uring::Uring::new(d).unwrap();
            let mut irq = u.serve(d, m, queue).map_err(|e| e.to_string())?;
            while u.in_flight() > 0 {
                wait_completion(&u);
                irq |= u.serve(d, m, queue).map_err(|e| e.to_string())?;
            }
            Ok(irq)
        }
    }
}

fn header(m: &GuestMemory, ty: u32, sector: u64) {
    let mut h = [0u8; 16];
    h[0..4].copy_from_slice(&ty.to_le_bytes());
    h[8..16].copy_from_slice(&sector.to_le_bytes());
    m.write_slice(&h, GuestAddress(HDR)).unwrap();
}

/// (address, length, device-writable)
type D = (u64, u32, bool);

fn raw(descs: &[D]) -> Vec<RawDescriptor> {
    descs
        .iter()
        .map(|&(a, l, w)| {
            RawDescriptor::from(SplitDescriptor::new(a, l, if w { F_WRITE } else { 0 }, 0))
        })
        .collect()
}

/// Submits one chain, serves the queue, returns (used length, status byte).
fn submit(d: &Disk, m: &GuestMemory, descs: &[D]) -> (u32, u8) {
    m.write_obj(0xffu8, GuestAddress(STATUS)).unwrap();
    let q = MockSplitQueue::new(m, 512);
    q.build_desc_chain(&raw(descs)).unwrap();
    let mut queue: Queue = q.create_queue().unwrap();
    assert!(serve_all(d, m, &mut queue).unwrap(), "an interrupt is due");
    let used = q.used().ring().ref_at(0).unwrap().load();
    assert_eq!(q.used().idx().load(), 1, "the request was consumed");
    (used.len(), m.read_obj::<u8>(GuestAddress(STATUS)).unwrap())
}

fn status_d() -> D {
    (STATUS, 1, true)
}

fn file_bytes(f: &tempfile::NamedTempFile) -> Vec<u8> {
    std::fs::read(f.path()).unwrap()
}

fn write_then_read_back_across_split_buffers() {
    let f = image(SECTORS);
    let d = disk(&f, false);
    let m = mem();
    let pattern: Vec<u8> = (0..1024u32).map(|i| (i * 7 % 256) as u8).collect();
    m.write_slice(&pattern, GuestAddress(DATA)).unwrap();
    header(&m, 1, 3);
    // Data split 100 + 924 bytes across two descriptors.
    let (len, st) = submit(
        &d,
        &m,
        &[
            (HDR, 16, false),
            (DATA, 100, false),
            (DATA + 100, 924, false),
            status_d(),
        ],
    );
    assert_eq!((len, st), (1, Status::Ok as u8));
    assert_eq!(&file_bytes(&f)[3 * 512..5 * 512], &pattern[..]);

    header(&m, 0, 3);
    let out = DATA + 0x1_0000;
    let (len, st) = submit(
        &d,
        &m,
        &[
            (HDR, 16, false),
            (out, 1, true),
            (out + 1, 511, true),
            (out + 512, 512, true),
            status_d(),
        ],
    );
    assert_eq!((len, st), (1025, Status::Ok as u8));
    let mut back = vec![0u8; 1024];
    m.read_slice(&mut back, GuestAddress(out)).unwrap();
    assert_eq!(back, pattern);
}

fn header_split_across_descriptors() {
    let f = image(SECTORS);
    let d = disk(&f, false);
    let m = mem();
    header(&m, 0, 1);
    let (len, st) = submit(
        &d,
        &m,
        &[
            (HDR, 8, false),
            (HDR + 8, 8, false),
            (DATA, 512, true),
            status_d(),
        ],
    );
    assert_eq!((len, st), (513, Status::Ok as u8));
    let mut back = vec![0u8; 512];
    m.read_slice(&mut back, GuestAddress(DATA)).unwrap();
    assert_eq!(&back[..], &file_bytes(&f)[512..1024]);
}

fn out_of_range_and_overflowing_sectors_fail() {
    let f = image(SECTORS);
    let d = disk(&f, false);
    let m = mem();
    let before = file_bytes(&f);
    for (ty, sector) in [
        (0, SECTORS),
        (0, SECTORS - 1),
        (1, SECTORS - 1),
        (1, u64::MAX),
        (0, u64::MAX / 512 + 1),
    ] {
        header(&m, ty, sector);
        let dir = ty == 0;
        let (len, st) = submit(&d, &m, &[(HDR, 16, false), (DATA, 1024, dir), status_d()]);
        assert_eq!(
            (len, st),
            (1, Status::IoErr as u8),
            "type {ty} sector {sector}"
        );
    }
    assert_eq!(file_bytes(&f), before);
}

fn unaligned_length_fails() {
    let f = image(SECTORS);
    let d = disk(&f, false);
    let m = mem();
    let before = file_bytes(&f);
    header(&m, 1, 0);
    assert_eq!(
        submit(&d, &m, &[(HDR, 16, false), (DATA, 100, false), status_d()]).1,
        Status::IoErr as u8
    );
    header(&m, 0, 0);
    assert_eq!(
        submit(&d, &m, &[(HDR, 16, false), (DATA, 513, true), status_d()]).1,
        Status::IoErr as u8
    );
    assert_eq!(file_bytes(&f), before);
}

fn wrong_directions_fail() {
    let f = image(SECTORS);
    let d = disk(&f, false);
    let m = mem();
    let before = file_bytes(&f);
    // A read whose buffer is device-readable.
    header(&m, 0, 0);
    assert_eq!(
        submit(&d, &m, &[(HDR, 16, false), (DATA, 512, false), status_d()]).1,
        Status::IoErr as u8
    );
    // A write whose data is device-writable.
    header(&m, 1, 0);
    assert_eq!(
        submit(&d, &m, &[(HDR, 16, false), (DATA, 512, true), status_d()]).1,
        Status::IoErr as u8
    );
    // A readable descriptor after a writable one.
    header(&m, 1, 0);
    assert_eq!(
        submit(
            &d,
            &m,
            &[
                (HDR, 16, false),
                (DATA, 512, true),
                (DATA + 512, 512, false),
                status_d()
            ]
        )
        .1,
        Status::IoErr as u8
    );
    assert_eq!(file_bytes(&f), before);
}

fn chains_without_a_usable_status_are_consumed_without_writing() {
    let f = image(SECTORS);
    let d = disk(&f, false);
    let m = mem();
    let before = file_bytes(&f);
    header(&m, 1, 0);
    // Last descriptor readable: nowhere to put the status.
    assert_eq!(submit(&d, &m, &[(HDR, 16, false), (DATA, 512, false)]).0, 0);
    // Status outside guest memory.
    assert_eq!(
        submit(
            &d,
            &m,
            &[
                (HDR, 16, false),
                (DATA, 512, false),
                (MEM_SIZE as u64, 1, true)
            ]
        )
        .0,
        0
    );
    // Zero-length status.
    assert_eq!(
        submit(
            &d,
            &m,
            &[(HDR, 16, false), (DATA, 512, false), (STATUS, 0, true)]
        )
        .0,
        0
    );
    assert_eq!(file_bytes(&f), before);
    // The device still serves a good request afterwards.
    header(&m, 0, 0);
    assert_eq!(
        submit(&d, &m, &[(HDR, 16, false), (DATA, 512, true), status_d()]),
        (513, 0)
    );
}

fn buffers_outside_guest_memory_fail() {
    let f = image(SECTORS);
    let d = disk(&f, false);
    let m = mem();
    header(&m, 0, 0);
    let edge = MEM_SIZE as u64 - 256;
    assert_eq!(
        submit(&d, &m, &[(HDR, 16, false), (edge, 512, true), status_d()]).1,
        Status::IoErr as u8
    );
    assert_eq!(
        submit(
            &d,
            &m,
            &[(HDR, 16, false), (u64::MAX - 100, 512, true), status_d()]
        )
        .1,
        Status::IoErr as u8
    );
    // Header outside memory.
    assert_eq!(
        submit(
            &d,
            &m,
            &[(edge + 250, 16, false), (DATA, 512, true), status_d()]
        )
        .1,
        Status::IoErr as u8
    );
}

fn short_header_and_unknown_type() {
    let f = image(SECTORS);
    let d = disk(&f, false);
    let m = mem();
    header(&m, 0, 0);
    assert_eq!(
        submit(&d, &m, &[(HDR, 8, false), status_d()]).1,
        Status::IoErr as u8
    );
    header(&m, 99, 0);
    assert_eq!(
        submit(&d, &m, &[(HDR, 16, false), status_d()]),
        (1, Status::Unsupp as u8)
    );
}

fn get_id_returns_the_serial() {
    let f = image(SECTORS);
    let d = disk(&f, false);
    let m = mem();
    header(&m, 8, 0);
    let (len, st) = submit(&d, &m, &[(HDR, 16, false), (DATA, 20, true), status_d()]);
    assert_eq!((len, st), (21, 0));
    let mut id = [0u8; 20];
    m.read_slice(&mut id, GuestAddress(DATA)).unwrap();
    assert_eq!(&id[..12], b"vmapp-disk-0");
    assert_eq!(&id[12..], &[0; 8]);
}

fn read_only_disk_refuses_every_write() {
    let f = image(SECTORS);
    let d = disk(&f, true);
    let dev = Block::with_disk(disk(&f, true)).unwrap();
    assert_ne!(dev.features() & (1 << features::RO), 0);
    assert_eq!(dev.features() & (1 << features::DISCARD), 0);
    let m = mem();
    let before = file_bytes(&f);
    header(&m, 1, 0);
    assert_eq!(
        submit(&d, &m, &[(HDR, 16, false), (DATA, 512, false), status_d()]).1,
        Status::IoErr as u8
    );
    let seg = [0u8; 16];
    m.write_slice(&seg, GuestAddress(DATA)).unwrap();
    m.write_obj(1u32.to_le(), GuestAddress(DATA + 8)).unwrap();
    for ty in [11, 13] {
        header(&m, ty, 0);
        assert_eq!(
            submit(&d, &m, &[(HDR, 16, false), (DATA, 16, false), status_d()]).1,
            Status::IoErr as u8
        );
    }
    header(&m, 4, 0);
    assert_eq!(
        submit(&d, &m, &[(HDR, 16, false), status_d()]).1,
        Status::Ok as u8
    );
    assert_eq!(file_bytes(&f), before);
}

fn segment(m: &GuestMemory, at: u64, sector: u64, count: u32, flags: u32) {
    let mut s = [0u8; 16];
    s[0..8].copy_from_slice(&sector.to_le_bytes());
    s[8..12].copy_from_slice(&count.to_le_bytes());
    s[12..16].copy_from_slice(&flags.to_le_bytes());
    m.write_slice(&s, GuestAddress(at)).unwrap();
}

fn write_zeroes_and_discard() {
    let f = image(SECTORS);
    let d = disk(&f, false);
    let m = mem();
    // Zero sectors 2..4 and (with unmap) 10..11.
    segment(&m, DATA, 2, 2, 0);
    segment(&m, DATA + 16, 10, 1, 1);
    header(&m, 13, 0);
    assert_eq!(
        submit(&d, &m, &[(HDR, 16, false), (DATA, 32, false), status_d()]),
        (1, 0)
    );
    let b = file_bytes(&f);
    assert!(b[2 * 512..4 * 512].iter().all(|&x| x == 0));
    assert!(b[10 * 512..11 * 512].iter().all(|&x| x == 0));
    assert_ne!(&b[4 * 512..5 * 512], &[0u8; 512][..]);
    assert_eq!(b.len() as u64, SECTORS * 512, "size is kept");

    // Discard with the unmap flag is unsupported; a segment past the end
    // fails the whole request before anything is changed.
    segment(&m, DATA, 20, 1, 1);
    header(&m, 11, 0);
    assert_eq!(
        submit(&d, &m, &[(HDR, 16, false), (DATA, 16, false), status_d()]).1,
        Status::Unsupp as u8
    );
    segment(&m, DATA, 20, 1, 0);
    segment(&m, DATA + 16, SECTORS - 1, 2, 0);
    header(&m, 13, 0);
    assert_eq!(
        submit(&d, &m, &[(HDR, 16, false), (DATA, 32, false), status_d()]).1,
        Status::IoErr as u8
    );
    assert_eq!(file_bytes(&f), b);
    // Bad segment list length.
    assert_eq!(
        submit(&d, &m, &[(HDR, 16, false), (DATA, 20, false), status_d()]).1,
        Status::IoErr as u8
    );
    // A good discard succeeds (the range reads as zero or unchanged).
    header(&m, 11, 0);
    segment(&m, DATA, 20, 4, 0);
    assert_eq!(
        submit(&d, &m, &[(HDR, 16, false), (DATA, 16, false), status_d()]).1,
        Status::Ok as u8
    );
}

fn overlong_chains_fail_cleanly() {
    let f = image(SECTORS);
    let d = disk(&f, false);
    let m = mem();
    header(&m, 0, 0);
    let mut descs = vec![(HDR, 16, false)];
    for i in 0..300u64 {
        descs.push((DATA + i * 512, 512, true));
    }
    descs.push(status_d());
    assert_eq!(submit(&d, &m, &descs), (1, Status::IoErr as u8));
}

fn an_impossible_avail_index_breaks_the_queue() {
    let f = image(SECTORS);
    let d = disk(&f, false);
    let m = mem();
    let q = MockSplitQueue::new(&m, 16);
    let mut queue: Queue = q.create_queue().unwrap();
    q.avail().idx().store(u16::to_le(40));
    assert!(serve_all(&d, &m, &mut queue).is_err());
}

#[test]
fn images_are_locked() {
    let f = image(SECTORS);
    let rw = DiskConfig::new(f.path());
    let ro = DiskConfig {
        read_only: true,
        ..rw.clone()
    };
    let a = Disk::open(&rw).unwrap();
    let e = Disk::open(&rw).unwrap_err();
    assert!(matches!(e, BlockError::Locked { .. }), "{e}");
    assert!(e.to_string().contains("in use by another VM"));
    assert!(matches!(Disk::open(&ro), Err(BlockError::Locked { .. })));
    drop(a);
    let r1 = Disk::open(&ro).unwrap();
    let _r2 = Disk::open(&ro).unwrap();
    assert!(matches!(Disk::open(&rw), Err(BlockError::Locked { .. })));
    drop(r1);
    assert!(matches!(
        Disk::open(&DiskConfig::new("/nonexistent/disk.img")),
        Err(BlockError::Open { .. })
    ));
}

#[test]
fn disk_specs() {
    let c = DiskConfig::parse("/a/b.img,ro,serial=abc").unwrap();
    assert_eq!(
        c,
        DiskConfig {
            path: "/a/b.img".into(),
            read_only: true,
            serial: Some("abc".into()),
            cache: Cache::Writeback,
            aio: Aio::Auto,
        }
    );
    let c = DiskConfig::parse("x.img,cache=none,aio=sync").unwrap();
    assert_eq!((c.cache, c.aio), (Cache::None, Aio::Sync));
    let c = DiskConfig::parse("x.img,aio=io_uring,cache=writeback").unwrap();
    assert_eq!((c.cache, c.aio), (Cache::Writeback, Aio::IoUring));
    assert!(!DiskConfig::parse("x.img").unwrap().read_only);
    for bad in [
        "",
        ",ro",
        "x,rx",
        "x,serial=123456789012345678901",
        "x,foo=1",
        "x,cache=unsafe",
        "x,aio=native",
    ] {
        assert!(DiskConfig::parse(bad).is_err(), "{bad}");
    }
}

#[test]
fn config_space_describes_the_disk() {
    let f = image(SECTORS);
    let dev = Block::with_disk(disk(&f, false)).unwrap();
    let mut cap = [0u8; 8];
    dev.read_config(0, &mut cap);
    assert_eq!(u64::from_le_bytes(cap), SECTORS);
    let mut b = [0u8; 4];
    dev.read_config(20, &mut b);
    assert_eq!(u32::from_le_bytes(b), 512);
    dev.read_config(12, &mut b);
    assert_eq!(u32::from_le_bytes(b), SEG_MAX);
    let f = dev.features();
    for bit in [
        features::FLUSH,
        features::DISCARD,
        features::WRITE_ZEROES,
        features::SEG_MAX,
    ] {
        assert_ne!(f & (1 << bit), 0, "feature {bit}");
    }
}

fn worker_thread_serves_notifications_and_stops_on_reset() {
    let f = image(SECTORS);
    let mut dev = Block::with_disk(disk(&f, false)).unwrap();
    assert_eq!(dev.uses_io_uring(), engine() == Engine::Uring);
    let m = mem();
    let q = MockSplitQueue::new(&m, 16);
    header(&m, 0, 2);
    q.build_desc_chain(&raw(&[(HDR, 16, false), (DATA, 512, true), status_d()]))
        .unwrap();
    let irq = EventFd::new(libc::EFD_NONBLOCK).unwrap();
    let interrupt = Interrupt::new(irq.try_clone().unwrap());
    let notify = EventFd::new(libc::EFD_NONBLOCK).unwrap();
    let kick = notify.try_clone().unwrap();
    let queue: Queue = q.create_queue().unwrap();
    dev.activate(
        m.clone(),
        interrupt.clone(),
        1 << 32,
        vec![ActiveQueue { queue, notify }],
    )
    .unwrap();
    kick.write(1).unwrap();
    assert!(
        crate::wait_readable(&irq, Some(Duration::from_secs(10))),
        "no interrupt"
    );
    assert_eq!(q.used().idx().load(), 1);
    assert_eq!(m.read_obj::<u8>(GuestAddress(STATUS)).unwrap(), 0);
    let mut back = vec![0u8; 512];
    m.read_slice(&mut back, GuestAddress(DATA)).unwrap();
    let mut want = vec![0u8; 512];
    f.as_file().read_exact_at(&mut want, 1024).unwrap();
    assert_eq!(back, want);
    assert!(dev.reset());
    // A broken queue after re-activation asks for a reset instead of panicking.
    let queue: Queue = q.create_queue().unwrap();
    let notify = EventFd::new(libc::EFD_NONBLOCK).unwrap();
    let kick = notify.try_clone().unwrap();
    dev.activate(
        m.clone(),
        interrupt.clone(),
        1 << 32,
        vec![ActiveQueue { queue, notify }],
    )
    .unwrap();
    q.avail().idx().store(u16::to_le(1000));
    kick.write(1).unwrap();
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    while !interrupt.needs_reset() && std::time::Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(5));
    }
    assert!(interrupt.needs_reset());
    assert!(dev.reset());
    assert!(dev
        .activate(m, interrupt, 0, vec![])
        .is_err_and(|e| matches!(e, ActivateError::BadQueues(_))));
}

fn header_at(m: &GuestMemory, at: u64, ty: u32, sector: u64) {
    let mut h = [0u8; 16];
    h[0..4].copy_from_slice(&ty.to_le_bytes());
    h[8..16].copy_from_slice(&sector.to_le_bytes());
    m.write_slice(&h, GuestAddress(at)).unwrap();
}

/// Makes `chains` available at once, their descriptors from index 0 of the
/// table on.
fn add_chains(q: &MockSplitQueue<GuestMemory>, chains: &[Vec<D>]) {
    let mut table = Vec::new();
    for c in chains {
        let base = table.len() as u16;
        for (k, &(a, l, w)) in c.iter().enumerate() {
            let last = k + 1 == c.len();
            let flags = if w { F_WRITE } else { 0 } | if last { 0 } else { 1 };
            let next = if last { 0 } else { base + k as u16 + 1 };
            table.push(RawDescriptor::from(SplitDescriptor::new(a, l, flags, next)));
        }
    }
    q.add_desc_chains(&table, 0).unwrap();
}

/// Request `i`'s header, data and status addresses.
fn slot(i: u64) -> (u64, u64, u64) {
    (HDR + 16 * i, DATA + 512 * i, STATUS + i)
}

fn used_heads(q: &MockSplitQueue<GuestMemory>) -> Vec<u32> {
    let n = q.used().idx().load();
    (0..n)
        .map(|k| q.used().ring().ref_at(k as usize).unwrap().load().id())
        .collect()
}

fn cache_none_reads_and_writes_aligned_and_unaligned_buffers() {
    let f = image(SECTORS);
    let mut cfg = DiskConfig::new(f.path());
    cfg.cache = Cache::None;
    if engine() == Engine::Uring {
        cfg.aio = Aio::IoUring;
    } else {
        cfg.aio = Aio::Sync;
    }
    let d = Disk::open(&cfg).unwrap();
    let bs = d.block_size();
    assert!(bs.is_power_of_two() && (512..=4096).contains(&bs), "{bs}");
    let m = mem();
    let want = file_bytes(&f);
    // Aligned (a whole 4 KiB at sector 8 into a page): through O_DIRECT.
    let page = [libc::iovec {
        iov_base: m.get_host_address(GuestAddress(DATA)).unwrap().cast(),
        iov_len: 4096,
    }];
    assert_eq!(d.fd_for(&page, 8 * 512, 4096).1, 1, "O_DIRECT");
    header(&m, 0, 8);
    let (len, st) = submit(&d, &m, &[(HDR, 16, false), (DATA, 4096, true), status_d()]);
    assert_eq!((len, st), (4097, 0));
    let mut back = vec![0u8; 4096];
    m.read_slice(&mut back, GuestAddress(DATA)).unwrap();
    assert!(back == want[8 * 512..16 * 512], "O_DIRECT read");
    // A buffer one byte off alignment, at an odd sector: through the page cache.
    let odd = [libc::iovec {
        iov_base: m.get_host_address(GuestAddress(DATA + 1)).unwrap().cast(),
        iov_len: 512,
    }];
    assert_eq!(d.fd_for(&odd, 512, 512).1, 0, "buffered");
    header(&m, 0, 1);
    let (len, st) = submit(
        &d,
        &m,
        &[(HDR, 16, false), (DATA + 1, 512, true), status_d()],
    );
    assert_eq!((len, st), (513, 0));
    m.read_slice(&mut back[..512], GuestAddress(DATA + 1))
        .unwrap();
    assert!(back[..512] == want[512..1024], "buffered read");
    // Writes both ways land in the image.
    let pattern: Vec<u8> = (0..4096u32).map(|i| (i * 13 % 256) as u8).collect();
    m.write_slice(&pattern, GuestAddress(DATA)).unwrap();
    header(&m, 1, 16);
    let (_, st) = submit(&d, &m, &[(HDR, 16, false), (DATA, 4096, false), status_d()]);
    assert_eq!(st, 0);
    m.write_slice(&pattern[..512], GuestAddress(DATA + 1))
        .unwrap();
    header(&m, 1, 3);
    let (_, st) = submit(
        &d,
        &m,
        &[(HDR, 16, false), (DATA + 1, 512, false), status_d()],
    );
    assert_eq!(st, 0);
    let now = file_bytes(&f);
    assert!(now[16 * 512..24 * 512] == pattern[..], "O_DIRECT write");
    assert!(now[3 * 512..4 * 512] == pattern[..512], "buffered write");
    // The guest is told the block size O_DIRECT needs.
    drop(d);
    let dev = Block::with_disk(Disk::open(&cfg).unwrap()).unwrap();
    let mut b = [0u8; 4];
    dev.read_config(20, &mut b);
    assert_eq!(u32::from_le_bytes(b), bs);
}

fn a_request_that_fails_mid_flight_fails_alone() {
    let f = image(SECTORS);
    let d = disk(&f, false);
    // The image shrinks under the open disk (another program truncates
    // it): what was in range when the request was checked ends early.
    f.as_file().set_len(40 * 512).unwrap();
    let m = mem();
    let q = MockSplitQueue::new(&m, 64);
    // (type, sector, sectors): read ok, read 38..42 (2 sectors, then the
    // end), read 50 (past the end), write 10 (ok).
    let reqs = [(0u32, 0u64, 2u32), (0, 38, 4), (0, 50, 1), (1, 10, 1)];
    let mut chains = Vec::new();
    for (i, &(ty, sector, n)) in reqs.iter().enumerate() {
        let (h, data, st) = slot(i as u64 * 8);
        header_at(&m, h, ty, sector);
        m.write_obj(0xffu8, GuestAddress(st)).unwrap();
        chains.push(vec![
            (h, 16, false),
            (data, n * 512, ty == 0),
            (st, 1, true),
        ]);
    }
    add_chains(&q, &chains);
    let mut queue: Queue = q.create_queue().unwrap();
    serve_all(&d, &m, &mut queue).unwrap();
    let status: Vec<u8> = (0..4)
        .map(|i| m.read_obj(GuestAddress(slot(i * 8).2)).unwrap())
        .collect();
    assert_eq!(status, [0, 1, 1, 0]);
    assert_eq!(used_heads(&q).len(), 4);
}

/// `n` one-sector reads of sectors `i % SECTORS` into slot `i`.
fn reads(m: &GuestMemory, q: &MockSplitQueue<GuestMemory>, n: u64) {
    let mut chains = Vec::new();
    for i in 0..n {
        let (h, data, st) = slot(i);
        header_at(m, h, 0, i % SECTORS);
        m.write_obj(0xffu8, GuestAddress(st)).unwrap();
        chains.push(vec![(h, 16, false), (data, 512, true), (st, 1, true)]);
    }
    add_chains(q, &chains);
}

/// An image and its disk, on the io_uring engine (for this thread's tests).
fn uring_image() -> (tempfile::NamedTempFile, Disk) {
    ENGINE.with(|e| e.set(Engine::Uring));
    let f = image(SECTORS);
    let d = disk(&f, false);
    (f, d)
}

#[test]
fn uring_keeps_at_most_depth_requests_in_flight_and_completes_every_one() {
    let (f, d) = uring_image();
    let m = mem();
    let q = MockSplitQueue::new(&m, 1024);
    let n = 300u64;
    reads(&m, &q, n);
    let mut queue: Queue = q.create_queue().unwrap();
    let mut u = uring::Uring::new(&d).unwrap();
    u.start(&d, &m, &mut queue).unwrap();
    // Before any completion is taken, all DEPTH slots are busy and nothing
    // is used yet; the other 44 wait in the avail ring.
    assert_eq!(u.in_flight(), usize::from(uring::DEPTH));
    assert_eq!(q.used().idx().load(), 0);
    // With every slot busy nothing more starts, and that is no progress
    // (serve's loop must not spin while the kernel works).
    assert_eq!(u.start(&d, &m, &mut queue).unwrap(), (false, false));
    while q.used().idx().load() < n as u16 {
        assert!(u.in_flight() <= usize::from(uring::DEPTH));
        if u.in_flight() > 0 {
            wait_completion(&u);
        }
        u.serve(&d, &m, &mut queue).unwrap();
    }
    assert_eq!(u.in_flight(), 0);
    let mut heads = used_heads(&q);
    heads.sort_unstable();
    assert_eq!(heads, (0..n as u32).map(|i| i * 3).collect::<Vec<_>>());
    let want = file_bytes(&f);
    for i in 0..n {
        let (_, data, st) = slot(i);
        assert_eq!(
            m.read_obj::<u8>(GuestAddress(st)).unwrap(),
            0,
            "request {i}"
        );
        let mut got = vec![0u8; 512];
        m.read_slice(&mut got, GuestAddress(data)).unwrap();
        let s = (i % SECTORS) as usize * 512;
        assert!(got == want[s..s + 512], "request {i}");
    }
}

#[test]
fn uring_drain_waits_for_every_request_and_reports_none() {
    let (_image, d) = uring_image();
    let m = mem();
    let q = MockSplitQueue::new(&m, 1024);
    reads(&m, &q, 200);
    let mut queue: Queue = q.create_queue().unwrap();
    let mut u = uring::Uring::new(&d).unwrap();
    u.start(&d, &m, &mut queue).unwrap();
    assert_eq!(u.in_flight(), 200);
    u.drain();
    assert_eq!(u.in_flight(), 0);
    // The queue is being reset: no used entry, no status written.
    assert_eq!(q.used().idx().load(), 0);
    for i in 0..200 {
        assert_eq!(m.read_obj::<u8>(GuestAddress(slot(i).2)).unwrap(), 0xff);
    }
    // The ring serves the next queue as before.
    let q = MockSplitQueue::new(&m, 1024);
    reads(&m, &q, 3);
    let mut queue: Queue = q.create_queue().unwrap();
    u.serve(&d, &m, &mut queue).unwrap();
    while u.in_flight() > 0 {
        wait_completion(&u);
        u.serve(&d, &m, &mut queue).unwrap();
    }
    assert_eq!(used_heads(&q).len(), 3);
}

#[test]
fn uring_flush_completes_after_the_writes_queued_before_it() {
    let (f, d) = uring_image();
    let m = mem();
    let q = MockSplitQueue::new(&m, 256);
    let mut chains = Vec::new();
    for i in 0..8u64 {
        let (h, data, st) = slot(i);
        header_at(&m, h, 1, i * 4);
        m.write_slice(&[i as u8 + 1; 2048], GuestAddress(data + 0x1_0000 * i))
            .unwrap();
        chains.push(vec![
            (h, 16, false),
            (data + 0x1_0000 * i, 2048, false),
            (st, 1, true),
        ]);
    }
    let (h, _, st) = slot(8);
    header_at(&m, h, 4, 0);
    chains.push(vec![(h, 16, false), (st, 1, true)]);
    add_chains(&q, &chains);
    let mut queue: Queue = q.create_queue().unwrap();
    serve_all(&d, &m, &mut queue).unwrap();
    let heads = used_heads(&q);
    assert_eq!(heads.len(), 9);
    assert_eq!(
        *heads.last().unwrap(),
        8 * 3,
        "the flush completes last: {heads:?}"
    );
    let now = file_bytes(&f);
    for i in 0..8usize {
        assert!(now[i * 2048..(i + 1) * 2048]
            .iter()
            .all(|&b| b == i as u8 + 1));
    }
}

fn the_image_lock_goes_with_the_device() {
    let f = image(SECTORS);
    for _ in 0..3 {
        let dev = Block::with_disk(disk(&f, false)).unwrap();
        assert_eq!(dev.uses_io_uring(), engine() == Engine::Uring);
        // A VM restarted right away opens its disk again at once (the ring
        // is torn down asynchronously; it must not hold the locked file).
        drop(dev);
    }
}

/// Every message of `e`'s chain, as `{:#}` of anyhow prints it.
fn chain(e: &dyn std::error::Error) -> String {
    let mut s = e.to_string();
    let mut src = e.source();
    while let Some(c) = src {
        s.push_str(": ");
        s.push_str(&c.to_string());
        src = c.source();
    }
    s
}

#[test]
fn an_open_error_names_its_cause_once() {
    let e = Disk::open(&DiskConfig::new("/nonexistent/disk.img")).unwrap_err();
    let text = chain(&e);
    assert_eq!(text.matches("No such file").count(), 1, "{text}");
}

#[test]
fn without_a_ring_auto_falls_back_to_sync_and_io_uring_fails() {
    // Each image is unlinked once open: the ring cannot open it again for
    // itself, so io_uring is not available for that disk.
    let unlinked = |aio| {
        let f = image(SECTORS);
        let mut cfg = DiskConfig::new(f.path());
        cfg.aio = aio;
        let d = Disk::open(&cfg).unwrap();
        drop(f);
        d
    };
    let e = Block::with_disk(unlinked(Aio::IoUring))
        .err()
        .expect("aio=io_uring fails");
    assert!(matches!(e, BlockError::Uring { .. }), "{e}");
    assert!(
        e.to_string().contains("aio=io_uring is not available"),
        "{e}"
    );
    let dev = Block::with_disk(unlinked(Aio::Auto)).unwrap();
    assert!(
        !dev.uses_io_uring(),
        "auto falls back to the synchronous engine"
    );
}

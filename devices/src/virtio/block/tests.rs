//! Device-level tests over real guest memory and real split queues built the
//! way a driver builds them (virtio-queue's mock driver side).

use std::io::Write;
use std::os::unix::fs::FileExt;
use std::time::Duration;

use virtio_queue::desc::split::Descriptor as SplitDescriptor;
use virtio_queue::desc::RawDescriptor;
use virtio_queue::mock::MockSplitQueue;
use virtio_queue::Queue;
use vm_memory::{Bytes, GuestAddress, GuestMemoryMmap};
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

fn disk(f: &tempfile::NamedTempFile, read_only: bool) -> Disk {
    let mut cfg = DiskConfig::new(f.path());
    cfg.read_only = read_only;
    cfg.serial = Some("vmapp-disk-0".into());
    Disk::open(&cfg).unwrap()
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
    assert!(
        process_queue(d, m, &mut queue, &mut Scratch::default()).unwrap(),
        "an interrupt is due"
    );
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

#[test]
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

#[test]
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

#[test]
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

#[test]
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

#[test]
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

#[test]
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

#[test]
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

#[test]
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

#[test]
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

#[test]
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

#[test]
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

#[test]
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

#[test]
fn an_impossible_avail_index_breaks_the_queue() {
    let f = image(SECTORS);
    let d = disk(&f, false);
    let m = mem();
    let q = MockSplitQueue::new(&m, 16);
    let mut queue: Queue = q.create_queue().unwrap();
    q.avail().idx().store(u16::to_le(40));
    assert!(process_queue(&d, &m, &mut queue, &mut Scratch::default()).is_err());
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
            serial: Some("abc".into())
        }
    );
    assert!(!DiskConfig::parse("x.img").unwrap().read_only);
    for bad in [
        "",
        ",ro",
        "x,rx",
        "x,serial=123456789012345678901",
        "x,foo=1",
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

#[test]
fn worker_thread_serves_notifications_and_stops_on_reset() {
    let f = image(SECTORS);
    let mut dev = Block::with_disk(disk(&f, false)).unwrap();
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

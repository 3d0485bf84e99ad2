//! Raw FUSE requests through the device's request path (`process_queue`) over
//! real guest memory and real split queues, against real host directories.

use std::ffi::CString;
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::Path;

use virtio_queue::desc::split::Descriptor as SplitDescriptor;
use virtio_queue::desc::RawDescriptor;
use virtio_queue::mock::MockSplitQueue;
use virtio_queue::Queue;
use vm_memory::{Bytes, GuestAddress, GuestMemoryMmap};

use super::*;

const F_WRITE: u16 = 2;
const REQ: u64 = 0x10_0000;
const REP: u64 = 0x30_0000;
const MEM_SIZE: usize = 0x80_0000;

const LOOKUP: u32 = 1;
const GETATTR: u32 = 3;
const READLINK: u32 = 5;
const READ: u32 = 15;
const INIT: u32 = 26;
const OPENDIR: u32 = 27;
const READDIR: u32 = 28;
const READDIRPLUS: u32 = 44;
const RELEASE: u32 = 18;

const ENTRY_OUT: usize = 128;

struct Dev {
    server: Server<Share>,
    screen: bool,
    ro: bool,
    mem: GuestMemory,
    unique: u64,
}

/// A reply: the errno (positive) or 0, and the payload after the header.
#[derive(Debug)]
struct Reply {
    errno: i32,
    body: Vec<u8>,
}

impl Reply {
    fn ok(&self) -> &[u8] {
        assert_eq!(
            self.errno,
            0,
            "request failed: {}",
            std::io::Error::from_raw_os_error(self.errno)
        );
        &self.body
    }
    fn nodeid(&self) -> u64 {
        u64::from_le_bytes(self.ok()[0..8].try_into().unwrap())
    }
    /// fuse_entry_out.attr.mode, .uid
    fn entry_mode_uid(&self) -> (u32, u32) {
        let a = &self.ok()[40..];
        (
            u32::from_le_bytes(a[60..64].try_into().unwrap()),
            u32::from_le_bytes(a[68..72].try_into().unwrap()),
        )
    }
    fn fh(&self, at: usize) -> u64 {
        u64::from_le_bytes(self.ok()[at..at + 8].try_into().unwrap())
    }
}

fn dev(dir: &Path, ro: bool, screen: bool) -> Dev {
    let share = Share::new(dir, ro).unwrap();
    dev_with(share, screen)
}

fn dev_with(share: Share, screen: bool) -> Dev {
    let ro = share.read_only();
    let mut d = Dev {
        server: Server::new(share),
        screen,
        ro,
        mem: GuestMemoryMmap::from_ranges(&[(GuestAddress(0), MEM_SIZE)]).unwrap(),
        unique: 0,
    };
    // fuse_init_in: major 7, minor 31, max_readahead, flags.
    let r = d.call(INIT, 0, &le(&[7, 31, 0, 0]));
    assert_eq!(r.errno, 0, "INIT");
    d
}

fn le(words: &[u32]) -> Vec<u8> {
    words.iter().flat_map(|w| w.to_le_bytes()).collect()
}

fn le64(words: &[u64]) -> Vec<u8> {
    words.iter().flat_map(|w| w.to_le_bytes()).collect()
}

fn name(s: &str) -> Vec<u8> {
    CString::new(s).unwrap().into_bytes_with_nul()
}

fn cat(parts: &[&[u8]]) -> Vec<u8> {
    parts.concat()
}

impl Dev {
    /// Submits raw descriptors; returns the used length.
    fn submit(&self, descs: &[(u64, u32, bool)]) -> u32 {
        let q = MockSplitQueue::new(&self.mem, 16);
        let raw: Vec<RawDescriptor> = descs
            .iter()
            .map(|&(a, l, w)| {
                RawDescriptor::from(SplitDescriptor::new(a, l, if w { F_WRITE } else { 0 }, 0))
            })
            .collect();
        q.build_desc_chain(&raw).unwrap();
        let mut queue: Queue = q.create_queue().unwrap();
        let ro = self.screen && self.ro;
        process_queue(&self.server, ro, &self.mem, &mut queue).unwrap();
        assert_eq!(q.used().idx().load(), 1, "the request was consumed");
        q.used().ring().ref_at(0).unwrap().load().len()
    }

    fn raw(&mut self, opcode: u32, nodeid: u64, body: &[u8], hdr_len: Option<u32>) -> (u32, Reply) {
        self.unique += 1;
        let len = hdr_len.unwrap_or((40 + body.len()) as u32);
        let h = InHeader {
            len,
            opcode,
            unique: self.unique,
            nodeid,
            uid: 1234,
            gid: 1234,
            pid: 77,
            padding: 0,
        };
        self.mem.write_obj(h, GuestAddress(REQ)).unwrap();
        self.mem.write_slice(body, GuestAddress(REQ + 40)).unwrap();
        self.mem
            .write_slice(&[0xaa; 64], GuestAddress(REP))
            .unwrap();
        let used = self.submit(&[(REQ, 40 + body.len() as u32, false), (REP, 1 << 20, true)]);
        let out: OutHeader = self.mem.read_obj(GuestAddress(REP)).unwrap();
        let mut body = vec![0u8; (used as usize).saturating_sub(16)];
        self.mem
            .read_slice(&mut body, GuestAddress(REP + 16))
            .unwrap();
        if used > 0 {
            assert_eq!(out.len, used, "reply length");
            assert_eq!(out.unique, self.unique, "reply id");
        }
        (
            used,
            Reply {
                errno: -out.error,
                body,
            },
        )
    }

    fn call(&mut self, opcode: u32, nodeid: u64, body: &[u8]) -> Reply {
        let (used, r) = self.raw(opcode, nodeid, body, None);
        assert!(used >= 16, "opcode {opcode} got no reply");
        r
    }

    fn lookup(&mut self, parent: u64, n: &str) -> Reply {
        self.call(LOOKUP, parent, &name(n))
    }

    /// FORGET `nlookup` of `node` (a request without a reply).
    fn forget(&mut self, node: u64, nlookup: u64) {
        let (used, _) = self.raw(opcode::FORGET, node, &le64(&[nlookup]), None);
        assert_eq!(used, 0);
    }

    fn open(&mut self, node: u64, flags: i32) -> Reply {
        self.call(opcode::OPEN, node, &le(&[flags as u32, 0]))
    }

    fn create(&mut self, parent: u64, n: &str, flags: i32, mode: u32) -> Reply {
        self.call(
            opcode::CREATE,
            parent,
            &cat(&[&le(&[flags as u32, mode, 0o022, 0]), &name(n)]),
        )
    }

    fn write(&mut self, node: u64, fh: u64, off: u64, data: &[u8]) -> Reply {
        let mut b = le64(&[fh, off]);
        b.extend(le(&[data.len() as u32, 0]));
        b.extend(le64(&[0]));
        b.extend(le(&[0, 0]));
        b.extend(data);
        self.call(opcode::WRITE, node, &b)
    }

    fn read(&mut self, node: u64, fh: u64, off: u64, size: u32) -> Reply {
        let mut b = le64(&[fh, off]);
        b.extend(le(&[size, 0]));
        b.extend(le64(&[0]));
        b.extend(le(&[0, 0]));
        self.call(READ, node, &b)
    }

    /// READ with the open flags the guest's kernel sends along.
    fn read_flags(&mut self, node: u64, fh: u64, size: u32, flags: u32) -> Reply {
        let mut b = le64(&[fh, 0]);
        b.extend(le(&[size, 0]));
        b.extend(le64(&[0]));
        b.extend(le(&[flags, 0]));
        self.call(READ, node, &b)
    }

    fn setattr(&mut self, node: u64, valid: u32, size: u64, mode: u32, uid: u32) -> Reply {
        // fuse_setattr_in: valid, padding, fh, size, lock_owner, atime, mtime,
        // ctime, atimensec, mtimensec, ctimensec, mode, unused4, uid, gid, unused5.
        let mut b = le(&[valid, 0]);
        b.extend(le64(&[0, size, 0, 0, 0, 0]));
        b.extend(le(&[0, 0, 0, mode, 0, uid, uid, 0]));
        self.call(opcode::SETATTR, node, &b)
    }
}

/// Every file under `dir` with its bytes, mode and link target, for
/// "unchanged" checks.
fn snapshot(dir: &Path) -> Vec<(String, u32, Vec<u8>)> {
    let mut out = Vec::new();
    let mut todo = vec![dir.to_path_buf()];
    while let Some(d) = todo.pop() {
        let mut ents: Vec<_> = std::fs::read_dir(&d)
            .unwrap()
            .map(|e| e.unwrap().path())
            .collect();
        ents.sort();
        for p in ents {
            let md = std::fs::symlink_metadata(&p).unwrap();
            let content = if md.file_type().is_symlink() {
                std::fs::read_link(&p)
                    .unwrap()
                    .into_os_string()
                    .into_encoded_bytes()
            } else if md.is_file() {
                std::fs::read(&p).unwrap()
            } else {
                todo.push(p.clone());
                Vec::new()
            };
            out.push((p.display().to_string(), md.mode(), content));
        }
    }
    out
}

fn tree() -> tempfile::TempDir {
    let t = tempfile::tempdir().unwrap();
    std::fs::write(t.path().join("file"), b"hello, share").unwrap();
    std::fs::create_dir(t.path().join("dir")).unwrap();
    std::fs::write(t.path().join("dir/inner"), b"inner").unwrap();
    std::os::unix::fs::symlink("/etc/passwd", t.path().join("to-passwd")).unwrap();
    std::os::unix::fs::symlink("/etc", t.path().join("to-etc")).unwrap();
    t
}

#[test]
fn create_write_read_rename_unlink_round_trip() {
    let t = tree();
    let mut d = dev(t.path(), false, true);
    let c = d.create(1, "new", libc::O_RDWR, 0o644);
    let node = c.nodeid();
    let fh = c.fh(ENTRY_OUT);
    let data: Vec<u8> = (0..100_000u32).map(|i| (i % 253) as u8).collect();
    let w = d.write(node, fh, 0, &data);
    assert_eq!(
        u32::from_le_bytes(w.ok()[0..4].try_into().unwrap()),
        100_000
    );
    assert_eq!(std::fs::read(t.path().join("new")).unwrap(), data);
    assert_eq!(d.read(node, fh, 10, 20).ok(), &data[10..30]);
    // Owned by the user running the test, whatever uid the guest claimed.
    // SAFETY: geteuid has no preconditions.
    let me = unsafe { libc::geteuid() };
    assert_eq!(std::fs::metadata(t.path().join("new")).unwrap().uid(), me);
    assert_eq!(d.lookup(1, "new").entry_mode_uid().1, me);
    // rename, mkdir, rmdir, unlink, symlink, link, setattr size and mode.
    let r = d.call(
        opcode::RENAME,
        1,
        &cat(&[&le64(&[1]), &name("new"), &name("renamed")]),
    );
    r.ok();
    assert!(t.path().join("renamed").exists() && !t.path().join("new").exists());
    d.call(opcode::MKDIR, 1, &cat(&[&le(&[0o755, 0]), &name("sub")]))
        .ok();
    assert!(t.path().join("sub").is_dir());
    d.call(opcode::RMDIR, 1, &name("sub")).ok();
    assert!(!t.path().join("sub").exists());
    d.call(opcode::SYMLINK, 1, &cat(&[&name("ln"), &name("renamed")]))
        .ok();
    assert_eq!(
        std::fs::read_link(t.path().join("ln")).unwrap(),
        Path::new("renamed")
    );
    d.call(opcode::LINK, 1, &cat(&[&le64(&[node]), &name("hard")]))
        .ok();
    assert_eq!(std::fs::read(t.path().join("hard")).unwrap(), data);
    d.setattr(node, 8, 5, 0, 0).ok();
    assert_eq!(std::fs::read(t.path().join("renamed")).unwrap(), &data[..5]);
    d.setattr(node, 1, 0, 0o4755, 0).ok();
    let mode = std::fs::metadata(t.path().join("renamed"))
        .unwrap()
        .permissions()
        .mode();
    assert_eq!(mode & 0o7777, 0o755, "set-user-ID is stripped");
    d.call(opcode::UNLINK, 1, &name("hard")).ok();
    assert!(!t.path().join("hard").exists());
}

/// Every modifying request a guest can send, against a read-only share.
fn modifying_requests(d: &mut Dev, file: u64, dir: u64, fh: u64) -> Vec<(&'static str, Reply)> {
    vec![
        ("setattr mode", d.setattr(file, 1, 0, 0o600, 0)),
        ("setattr size", d.setattr(file, 8, 0, 0, 0)),
        ("setattr times", d.setattr(file, 16 | 32, 0, 0, 0)),
        (
            "symlink",
            d.call(opcode::SYMLINK, 1, &cat(&[&name("s"), &name("file")])),
        ),
        (
            "mknod",
            d.call(
                opcode::MKNOD,
                1,
                &cat(&[&le(&[libc::S_IFREG | 0o644, 0, 0, 0]), &name("n")]),
            ),
        ),
        (
            "mkdir",
            d.call(opcode::MKDIR, 1, &cat(&[&le(&[0o755, 0]), &name("m")])),
        ),
        ("unlink", d.call(opcode::UNLINK, 1, &name("file"))),
        ("rmdir", d.call(opcode::RMDIR, dir, &name("x"))),
        ("rmdir dir", d.call(opcode::RMDIR, 1, &name("dir"))),
        (
            "rename",
            d.call(
                opcode::RENAME,
                1,
                &cat(&[&le64(&[1]), &name("file"), &name("f2")]),
            ),
        ),
        (
            "rename2",
            d.call(
                opcode::RENAME2,
                1,
                &cat(&[&le64(&[1]), &le(&[0, 0]), &name("file"), &name("f3")]),
            ),
        ),
        (
            "link",
            d.call(opcode::LINK, 1, &cat(&[&le64(&[file]), &name("l")])),
        ),
        ("write", d.write(file, fh, 0, b"overwritten")),
        (
            "setxattr",
            d.call(
                opcode::SETXATTR,
                file,
                &cat(&[&le(&[1, 0]), &name("user.x"), b"v"]),
            ),
        ),
        (
            "removexattr",
            d.call(opcode::REMOVEXATTR, file, &name("user.x")),
        ),
        ("create", d.create(1, "c", libc::O_WRONLY, 0o644)),
        (
            "create existing",
            d.create(1, "file", libc::O_RDWR | libc::O_TRUNC, 0o644),
        ),
        (
            "fallocate",
            d.call(
                opcode::FALLOCATE,
                file,
                &cat(&[&le64(&[fh, 0, 4096]), &le(&[0, 0])]),
            ),
        ),
        (
            "copy_file_range",
            d.call(
                opcode::COPY_FILE_RANGE,
                file,
                &le64(&[fh, 0, file, fh, 100, 5, 0]),
            ),
        ),
        (
            "tmpfile",
            d.call(
                opcode::TMPFILE,
                1,
                &cat(&[&le(&[libc::O_RDWR as u32, 0o600, 0, 0]), &name("t")]),
            ),
        ),
        ("open wronly", d.open(file, libc::O_WRONLY)),
        ("open rdwr", d.open(file, libc::O_RDWR)),
        ("open trunc", d.open(file, libc::O_RDONLY | libc::O_TRUNC)),
    ]
}

fn read_only_refuses_everything(screen: bool) {
    let t = tree();
    let before = snapshot(t.path());
    let mut d = dev(t.path(), true, screen);
    let file = d.lookup(1, "file").nodeid();
    let dir = d.lookup(1, "dir").nodeid();
    let fh = d.open(file, libc::O_RDONLY).fh(0);
    assert_eq!(d.read(file, fh, 0, 5).ok(), b"hello");
    for (what, r) in modifying_requests(&mut d, file, dir, fh) {
        // Without the screen, the two opcodes fuse-backend-rs does not
        // implement at all answer ENOSYS: nothing is modified either way.
        let want = if !screen && matches!(what, "copy_file_range" | "tmpfile") {
            libc::ENOSYS
        } else {
            libc::EROFS
        };
        assert_eq!(r.errno, want, "{what} (screen {screen}): {r:?}");
    }
    assert_eq!(
        snapshot(t.path()),
        before,
        "the host directory is unchanged"
    );
    // Still serving.
    assert_eq!(d.read(file, fh, 7, 5).ok(), b"share");
}

#[test]
fn read_only_share_refuses_every_modification_at_the_transport() {
    read_only_refuses_everything(true);
}

#[test]
fn read_only_share_refuses_every_modification_in_the_file_system_too() {
    // The transport's opcode screen switched off: `Share` alone refuses.
    read_only_refuses_everything(false);
}

#[test]
fn names_cannot_leave_the_share() {
    let t = tree();
    let mut d = dev(&t.path().join("dir"), false, true);
    // `..` of the root is the root.
    assert_eq!(d.lookup(1, "..").nodeid(), 1);
    assert_eq!(
        d.lookup(1, "..").entry_mode_uid().0 & libc::S_IFMT,
        libc::S_IFDIR
    );
    assert_eq!(d.lookup(1, "../file").errno, libc::EINVAL);
    assert_eq!(d.lookup(1, "/etc").errno, libc::EINVAL);
    assert_eq!(d.lookup(1, "").errno, libc::EINVAL);
    assert_eq!(
        d.lookup(1, "file").errno,
        libc::ENOENT,
        "file is outside dir/"
    );
    assert_eq!(
        d.create(1, "../escaped", libc::O_RDWR, 0o644).errno,
        libc::EINVAL
    );
    assert_eq!(d.create(1, "..", libc::O_RDWR, 0o644).errno, libc::EINVAL);
    assert_eq!(
        d.call(opcode::MKDIR, 1, &cat(&[&le(&[0o755, 0]), &name("a/b")]))
            .errno,
        libc::EINVAL
    );
    let r = d.call(
        opcode::RENAME,
        1,
        &cat(&[&le64(&[1]), &name("inner"), &name("../moved")]),
    );
    assert_eq!(r.errno, libc::EINVAL);
    let r = d.call(opcode::SYMLINK, 1, &cat(&[&name("../x"), &name("/etc")]));
    assert_eq!(r.errno, libc::EINVAL);
    assert!(!t.path().join("escaped").exists() && !t.path().join("moved").exists());
    assert!(!t.path().join("x").exists());
    assert!(d.lookup(1, "inner").nodeid() > 1);
}

#[test]
fn symlinks_are_never_followed_on_the_host() {
    let t = tree();
    let mut d = dev(t.path(), false, true);
    let l = d.lookup(1, "to-passwd");
    assert_eq!(l.entry_mode_uid().0 & libc::S_IFMT, libc::S_IFLNK);
    let node = l.nodeid();
    // The guest may read the link text; the host never opens its target.
    assert_eq!(d.call(READLINK, node, &[]).ok(), b"/etc/passwd");
    assert_eq!(d.open(node, libc::O_RDONLY).errno, libc::ELOOP);
    assert_eq!(
        d.create(1, "to-passwd", libc::O_RDWR, 0o644).errno,
        libc::ELOOP
    );
    assert_eq!(d.setattr(node, 8, 0, 0, 0).errno, libc::EINVAL, "truncate");
    assert_eq!(
        d.setattr(node, 1, 0, 0o777, 0).errno,
        libc::EOPNOTSUPP,
        "chmod"
    );
    let etc = d.lookup(1, "to-etc").nodeid();
    assert_eq!(d.lookup(etc, "passwd").errno, libc::ENOTDIR);
    assert_eq!(d.call(OPENDIR, etc, &le(&[0, 0])).errno, libc::ENOTDIR);
    // /etc/passwd is untouched (the test may run as root: mode and size).
    let md = std::fs::metadata("/etc/passwd").unwrap();
    assert_ne!(md.len(), 0);
    assert_ne!(md.permissions().mode() & 0o777, 0o777);
}

#[test]
fn forged_nodeids_and_handles_reach_nothing() {
    let t = tree();
    let mut d = dev(t.path(), false, true);
    let file = d.lookup(1, "file").nodeid();
    let fh = d.open(file, libc::O_RDONLY).fh(0);
    for forged in [0u64, 2 + file, 0x7fff_ffff, u64::MAX] {
        assert_eq!(
            d.call(GETATTR, forged, &le(&[0, 0, 0, 0])).errno,
            libc::EBADF,
            "{forged}"
        );
        assert_eq!(
            d.open(forged, libc::O_RDONLY).errno,
            libc::EBADF,
            "{forged}"
        );
        assert_eq!(d.lookup(forged, "passwd").errno, libc::EBADF, "{forged}");
        let r = d.call(opcode::LINK, 1, &cat(&[&le64(&[forged]), &name("hard")]));
        assert_eq!(r.errno, libc::EBADF, "link {forged}");
        assert_ne!(
            d.read(file, fh + 1 + forged % 1000, 0, 10).errno,
            0,
            "fh {forged}"
        );
    }
    assert!(!t.path().join("hard").exists());
    assert_eq!(d.read(file, fh, 0, 5).ok(), b"hello");
}

#[test]
fn special_files_are_neither_created_nor_opened() {
    let t = tree();
    let fifo = CString::new(t.path().join("fifo").into_os_string().into_encoded_bytes()).unwrap();
    // SAFETY: a valid path string.
    assert_eq!(unsafe { libc::mkfifo(fifo.as_ptr(), 0o644) }, 0);
    let mut d = dev(t.path(), false, true);
    let node = d.lookup(1, "fifo").nodeid();
    // Opening a FIFO would block the worker: refused, at once.
    assert_eq!(d.open(node, libc::O_RDONLY).errno, libc::EACCES);
    assert_eq!(d.create(1, "fifo", libc::O_RDWR, 0o644).errno, libc::EACCES);
    assert_eq!(d.setattr(node, 8, 0, 0, 0).errno, libc::EINVAL);
    for kind in [libc::S_IFCHR, libc::S_IFBLK] {
        let r = d.call(
            opcode::MKNOD,
            1,
            &cat(&[&le(&[kind | 0o666, 0x0801, 0, 0]), &name("dev")]),
        );
        assert_eq!(r.errno, libc::EPERM);
    }
    assert!(!t.path().join("dev").exists());
    // RENAME_WHITEOUT makes a device node.
    let r = d.call(
        opcode::RENAME2,
        1,
        &cat(&[&le64(&[1]), &le(&[4, 0]), &name("file"), &name("w")]),
    );
    assert_eq!(r.errno, libc::EINVAL);
    let r = d.call(
        opcode::MKNOD,
        1,
        &cat(&[&le(&[libc::S_IFIFO | 0o644, 0, 0, 0]), &name("f2")]),
    );
    r.ok();
    assert!(t.path().join("f2").exists());
}

#[test]
fn ownership_stays_with_the_user_running_the_vmm() {
    let t = tree();
    let mut d = dev(t.path(), false, true);
    let file = d.lookup(1, "file").nodeid();
    // SAFETY: geteuid has no preconditions.
    let me = unsafe { libc::geteuid() };
    let other = if me == 4321 { 4322 } else { 4321 };
    assert_eq!(d.setattr(file, 2, 0, 0, other).errno, libc::EPERM);
    assert_eq!(std::fs::metadata(t.path().join("file")).unwrap().uid(), me);
    d.setattr(file, 2, 0, 0, me).ok();
}

/// The names READDIR lists in `node` (after OPENDIR).
fn list(d: &mut Dev, node: u64) -> Vec<String> {
    let fh = d.call(OPENDIR, node, &le(&[0, 0])).fh(0);
    let mut b = le64(&[fh, 0]);
    b.extend(le(&[64 * 1024, 0]));
    b.extend(le64(&[0]));
    b.extend(le(&[0, 0]));
    let r = d.call(READDIR, node, &b);
    let (mut at, body, mut names) = (0, r.ok().to_vec(), Vec::new());
    // fuse_dirent: ino, off, namelen, type, name padded to 8 bytes.
    while at + 24 <= body.len() {
        let len = u32::from_le_bytes(body[at + 16..at + 20].try_into().unwrap()) as usize;
        names.push(String::from_utf8_lossy(&body[at + 24..at + 24 + len]).into_owned());
        at += (24 + len).div_ceil(8) * 8;
    }
    names.sort();
    names
}

/// A host root in miniature: system trees, private files, a private home.
fn host_like() -> tempfile::TempDir {
    let t = tempfile::tempdir().unwrap();
    let r = t.path();
    for d in [
        "usr/bin",
        "etc/ssl/private",
        "srv",
        "var/tmp/other",
        "var/lib/flatpak/app",
        "var/lib/private",
        "home/me/.local/share/fonts",
    ] {
        std::fs::create_dir_all(r.join(d)).unwrap();
    }
    for (f, mode) in [
        ("usr/bin/prog", 0o755),
        ("etc/passwd", 0o644),
        ("etc/shadow", 0o640),
        ("etc/machine-id", 0o444),
        ("etc/ssh_host_key", 0o600),
        ("srv/secret", 0o644),
        ("var/tmp/other/notes", 0o644),
        ("var/lib/flatpak/app/data", 0o644),
        ("home/me/notes", 0o644),
        ("home/me/.local/share/fonts/f.ttf", 0o644),
    ] {
        std::fs::write(r.join(f), f).unwrap();
        std::fs::set_permissions(r.join(f), std::fs::Permissions::from_mode(mode)).unwrap();
    }
    for (d, mode) in [("etc/ssl/private", 0o710), ("home/me", 0o700)] {
        std::fs::set_permissions(r.join(d), std::fs::Permissions::from_mode(mode)).unwrap();
    }
    std::os::unix::fs::symlink("/srv/secret", r.join("usr/bin/to-secret")).unwrap();
    t
}

fn host_view() -> Exposure {
    Exposure {
        allow: [
            "/usr",
            "/etc",
            "/opt",
            "/var/lib/flatpak",
            "/home/me/.local/share/fonts",
        ]
        .map(std::path::PathBuf::from)
        .to_vec(),
        deny: vec!["/etc/machine-id".into(), "/etc/shadow".into()],
        public_only: true,
    }
}

/// Follows `path` from the root by lookups: the last reply.
fn walk(d: &mut Dev, path: &str) -> Reply {
    let mut node = 1;
    let mut last = d.lookup(1, ".");
    for c in path.split('/').filter(|c| !c.is_empty()) {
        last = d.lookup(node, c);
        if last.errno != 0 {
            return last;
        }
        node = last.nodeid();
    }
    last
}

#[test]
fn a_view_shows_only_the_allowed_trees() {
    let t = host_like();
    let share = Share::new(t.path(), true).unwrap().expose(&host_view());
    let mut d = dev_with(share, true);
    for shown in [
        "usr/bin/prog",
        "etc/passwd",
        "var/lib/flatpak/app/data",
        "home/me/.local/share/fonts/f.ttf",
        "usr/bin/to-secret",
    ] {
        assert_eq!(walk(&mut d, shown).errno, 0, "{shown}");
    }
    for hidden in [
        "srv",
        "srv/secret",
        "var/tmp",
        "var/lib/private",
        "home/me/notes",
        "home/me/.local/share/other",
        "etc/shadow",
        "etc/machine-id",
        "etc/ssh_host_key",
        "etc/ssl/private",
        "opt",
        // `..` leads back to a way, which shows only the way.
        "usr/../srv",
        "var/lib/flatpak/../private",
        "var/lib/flatpak/../../tmp",
        "home/me/.local/share/fonts/../../../notes",
        "usr/bin/../../var/tmp/other/notes",
    ] {
        assert_eq!(walk(&mut d, hidden).errno, libc::ENOENT, "{hidden}");
    }
    // Listings of ways show the way; inside trees, no denied name.
    assert_eq!(list(&mut d, 1), ["etc", "home", "usr", "var"]);
    let var = walk(&mut d, "var").nodeid();
    assert_eq!(list(&mut d, var), ["lib"]);
    let etc = walk(&mut d, "etc").nodeid();
    let names = list(&mut d, etc);
    assert!(names.contains(&"passwd".to_string()), "{names:?}");
    assert!(
        !names.iter().any(|n| n == "shadow" || n == "machine-id"),
        "{names:?}"
    );
    // Nor a name the view hides because others may not read it: a listing
    // shows what a lookup would.
    assert!(!names.iter().any(|n| n == "ssh_host_key"), "{names:?}");
    let ssl = walk(&mut d, "etc/ssl").nodeid();
    assert!(list(&mut d, ssl).is_empty(), "etc/ssl/private is hidden");
    // A link is text the guest resolves in its own tree: the host never
    // follows it.
    let l = walk(&mut d, "usr/bin/to-secret").nodeid();
    assert_eq!(d.open(l, libc::O_RDONLY).errno, libc::ELOOP);
    assert_eq!(d.call(READDIRPLUS, 1, &le(&[0; 10])).errno, libc::ENOSYS);
}

#[test]
fn nothing_is_made_or_removed_outside_the_trees_of_a_view() {
    let t = host_like();
    let share = Share::new(t.path(), false).unwrap().expose(&host_view());
    let mut d = dev_with(share, true);
    let etc = walk(&mut d, "etc").nodeid();
    let var = walk(&mut d, "var").nodeid();
    let usr = walk(&mut d, "usr").nodeid();
    assert_eq!(d.create(1, "new", libc::O_RDWR, 0o644).errno, libc::EACCES);
    assert_eq!(
        d.call(opcode::MKDIR, var, &cat(&[&le(&[0o755, 0]), &name("tmp")]))
            .errno,
        libc::EACCES
    );
    assert_eq!(d.call(opcode::UNLINK, 1, &name("srv")).errno, libc::EACCES);
    assert_eq!(d.call(opcode::RMDIR, var, &name("lib")).errno, libc::EACCES);
    assert_eq!(
        d.create(etc, "shadow", libc::O_RDWR, 0o644).errno,
        libc::EACCES
    );
    let r = d.call(
        opcode::RENAME,
        usr,
        &cat(&[&le64(&[etc]), &name("bin"), &name("shadow")]),
    );
    assert_eq!(r.errno, libc::EACCES);
    let r = d.call(opcode::SYMLINK, 1, &cat(&[&name("srv2"), &name("/srv")]));
    assert_eq!(r.errno, libc::EACCES);
    // Inside a tree a writable view is a writable share.
    d.create(usr, "made", libc::O_RDWR, 0o644).ok();
    assert!(t.path().join("usr/made").exists());
    assert!(!t.path().join("new").exists() && t.path().join("srv").exists());
    assert_eq!(
        std::fs::read(t.path().join("etc/shadow")).unwrap(),
        b"etc/shadow"
    );
}

#[test]
fn malformed_requests_get_errors_and_the_device_keeps_serving() {
    let t = tree();
    let mut d = dev(t.path(), false, true);
    // Unknown opcodes.
    for op in [0u32, 99, 4096, u32::MAX] {
        assert_eq!(d.call(op, 1, &[]).errno, libc::ENOSYS, "opcode {op}");
    }
    // A header whose length lies, both ways.
    let (used, r) = d.raw(LOOKUP, 1, &name("file"), Some(u32::MAX));
    assert!(used == 0 || r.errno != 0, "{r:?}");
    let (used, r) = d.raw(LOOKUP, 1, &name("file"), Some(8));
    assert!(used == 0 || r.errno != 0, "{r:?}");
    // Bodies that are too short, names without a NUL.
    assert_ne!(d.call(opcode::OPEN, 1, &[1, 2]).errno, 0);
    assert_ne!(d.call(LOOKUP, 1, b"file").errno, 0);
    assert_ne!(d.call(opcode::MKDIR, 1, &le(&[0o755])).errno, 0);
    assert_eq!(
        d.call(LOOKUP, 1, b"file\0/etc\0").errno,
        0,
        "a name ends at its NUL"
    );
    // A huge read is bounded by the reply buffer.
    let file = d.lookup(1, "file").nodeid();
    let fh = d.open(file, libc::O_RDONLY).fh(0);
    let r = d.read(file, fh, 0, u32::MAX);
    assert!(r.errno != 0 || r.body == b"hello, share", "{r:?}");
    let dh = d.call(OPENDIR, 1, &le(&[0, 0])).fh(0);
    let mut b = le64(&[dh, 0]);
    b.extend(le(&[u32::MAX, 0]));
    b.extend(le64(&[0]));
    b.extend(le(&[0, 0]));
    let r = d.call(READDIR, 1, &b);
    assert!(r.errno != 0 || !r.body.is_empty());
    // No header at all: a chain of one short readable descriptor, or only a
    // writable one.
    assert_eq!(d.submit(&[(REQ, 10, false), (REP, 4096, true)]), 0);
    assert_eq!(d.submit(&[(REP, 4096, true)]), 0);
    // A reply buffer too small for any reply.
    d.mem
        .write_obj(
            InHeader {
                len: 46,
                opcode: LOOKUP,
                unique: 9,
                nodeid: 1,
                ..Default::default()
            },
            GuestAddress(REQ),
        )
        .unwrap();
    d.mem
        .write_slice(&name("file"), GuestAddress(REQ + 40))
        .unwrap();
    assert!(d.submit(&[(REQ, 45, false), (REP, 8, true)]) <= 8);
    // Descriptors outside guest memory.
    assert_eq!(
        d.submit(&[(MEM_SIZE as u64 - 8, 64, false), (REP, 4096, true)]),
        0
    );
    // Still serving.
    assert_eq!(d.read(file, fh, 0, 5).ok(), b"hello");
}

#[test]
fn a_flood_of_requests_is_served_in_one_pass() {
    let t = tree();
    let d = dev(t.path(), false, true);
    let q = MockSplitQueue::new(&d.mem, 256);
    let mut descs = Vec::new();
    for i in 0..128u64 {
        let req = REQ + i * 0x100;
        let rep = REP + i * 0x1000;
        let h = InHeader {
            len: 45,
            opcode: LOOKUP,
            unique: 1000 + i,
            nodeid: 1,
            ..Default::default()
        };
        d.mem.write_obj(h, GuestAddress(req)).unwrap();
        d.mem
            .write_slice(&name("file"), GuestAddress(req + 40))
            .unwrap();
        let next = (2 * i + 1) as u16;
        descs.push(RawDescriptor::from(SplitDescriptor::new(req, 45, 1, next)));
        descs.push(RawDescriptor::from(SplitDescriptor::new(
            rep, 0x1000, F_WRITE, 0,
        )));
    }
    q.add_desc_chains(&descs, 0).unwrap();
    let mut queue: Queue = q.create_queue().unwrap();
    process_queue(&d.server, false, &d.mem, &mut queue).unwrap();
    assert_eq!(q.used().idx().load(), 128);
    for i in 0..128u64 {
        let out: OutHeader = d.mem.read_obj(GuestAddress(REP + i * 0x1000)).unwrap();
        assert_eq!((out.error, out.unique), (0, 1000 + i));
    }
}

#[test]
fn share_specs_parse() {
    let c = ShareConfig::parse("/srv/data:data,ro,path=/data").unwrap();
    assert_eq!(c.host_dir, Path::new("/srv/data"));
    assert_eq!((c.tag.as_str(), c.read_only), ("data", true));
    assert_eq!(c.mount_point(), "/data");
    let c = ShareConfig::parse("/a:b:tag").unwrap();
    assert_eq!(
        (c.host_dir.to_str().unwrap(), c.tag.as_str(), c.read_only),
        ("/a:b", "tag", false)
    );
    assert_eq!(c.mount_point(), "/mnt/tag");
    for bad in [
        "/srv",
        ":tag",
        "/srv:",
        "/srv:t g",
        "/srv:tag,bogus",
        "/srv:tag,path=rel",
        &format!("/srv:{}", "x".repeat(37)),
    ] {
        assert!(ShareConfig::parse(bad).is_err(), "{bad}");
    }
}

#[test]
fn device_config_space_has_the_tag() {
    let t = tree();
    let mut cfg = ShareConfig::new(t.path(), "mytag");
    cfg.read_only = true;
    let fs = Fs::new(&cfg).unwrap();
    let mut b = [0u8; 40];
    fs.read_config(0, &mut b);
    assert_eq!(&b[..5], b"mytag");
    assert!(b[5..36].iter().all(|&c| c == 0));
    assert_eq!(u32::from_le_bytes(b[36..40].try_into().unwrap()), 1);
    assert_eq!(fs.device_type(), VIRTIO_ID_FS);
    assert_eq!(fs.queue_max_sizes().len(), 2);
    assert!(Fs::new(&ShareConfig::new("/nonexistent-share-dir", "t")).is_err());
}

#[test]
fn thousands_of_inodes_in_use_fit_in_the_open_files_limit() {
    let t = tempfile::tempdir().unwrap();
    for i in 0..3000 {
        std::fs::write(t.path().join(format!("f{i}")), b"x").unwrap();
    }
    // Creating the device leaves the process's limits alone (an embedder's
    // choice); `raise_open_files_limit` raises the soft limit to the hard
    // one, and both to a million (or fs.nr_open) where the process may
    // raise its hard limit.
    let cap_sys_resource = std::fs::read_to_string("/proc/self/status")
        .unwrap()
        .lines()
        .find_map(|l| l.strip_prefix("CapEff:"))
        .map(|v| u64::from_str_radix(v.trim(), 16).unwrap() & (1 << 24) != 0)
        .unwrap();
    let nr_open: u64 = std::fs::read_to_string("/proc/sys/fs/nr_open")
        .unwrap()
        .trim()
        .parse()
        .unwrap();
    let mut r = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: get/setrlimit with a valid struct.
    unsafe {
        assert_eq!(libc::getrlimit(libc::RLIMIT_NOFILE, &mut r), 0);
        let hard = r.rlim_max;
        r.rlim_cur = 1024.min(hard);
        assert_eq!(libc::setrlimit(libc::RLIMIT_NOFILE, &r), 0);
        let _fs = Fs::new(&ShareConfig::new(t.path(), "many")).unwrap();
        assert_eq!(libc::getrlimit(libc::RLIMIT_NOFILE, &mut r), 0);
        assert_eq!(r.rlim_cur, 1024.min(hard), "Fs::new changed the fd limit");
        super::raise_open_files_limit();
        assert_eq!(libc::getrlimit(libc::RLIMIT_NOFILE, &mut r), 0);
        assert_eq!(r.rlim_cur, r.rlim_max);
        let want = super::OPEN_FILES_WANTED.min(nr_open);
        if cap_sys_resource {
            assert_eq!(r.rlim_cur, hard.max(want));
        } else {
            assert_eq!(r.rlim_cur, hard);
        }
    }
    let mut d = dev(t.path(), false, true);
    for i in 0..3000 {
        assert_eq!(d.lookup(1, &format!("f{i}")).errno, 0, "f{i}");
    }
}

/// Review finding 6 (issue 19): every inode the guest holds is an `O_PATH`
/// fd in the VMM, and a guest could hold as many as the process's fd limit,
/// starving every other part of the VMM of fds. Each share now has an inode
/// budget: past it a lookup answers ENFILE to the guest, and forgetting
/// makes room again.
#[test]
fn a_share_holds_no_more_inodes_than_its_budget() {
    let t = tempfile::tempdir().unwrap();
    for i in 0..40 {
        std::fs::write(t.path().join(format!("f{i}")), b"x").unwrap();
    }
    let share = Share::new(t.path(), false).unwrap().max_inodes(16);
    let mut d = dev_with(share, false);
    let mut held = Vec::new();
    let mut refused = 0;
    for i in 0..40 {
        let r = d.lookup(1, &format!("f{i}"));
        match r.errno {
            0 => held.push(r.nodeid()),
            libc::ENFILE => refused += 1,
            e => panic!("f{i}: errno {e}"),
        }
    }
    assert_eq!((held.len(), refused), (16, 24));
    // Looking up a held inode again costs nothing.
    assert_eq!(d.lookup(1, "f0").errno, 0);
    // READDIRPLUS would look up a whole directory at once. Near the budget
    // it still lists (the guest's getdents must not fail: found by the
    // hostile-guest suite, where ENOSYS ended `ls` after 350 of 3000 names),
    // but hands out no inode: every entry has node id 0, which Linux lists
    // and looks up only when used.
    let dir = d.call(OPENDIR, 1, &le(&[0, 0])).fh(0);
    // fuse_read_in: fh, offset, size, read_flags, lock_owner, flags, padding.
    let body = cat(&[
        &le64(&[dir, 0]),
        &le(&[64 * 1024, 0]),
        &le64(&[0]),
        &le(&[0, 0]),
    ]);
    let r = d.call(READDIRPLUS, 1, &body);
    assert_eq!(r.errno, 0);
    // fuse_direntplus: fuse_entry_out (nodeid first; 128 bytes), then
    // fuse_dirent (ino, off, namelen, type, name padded to 8 bytes).
    let (body, mut at, mut names) = (r.ok().to_vec(), 0, Vec::new());
    while at + 152 <= body.len() {
        assert_eq!(u64::from_le_bytes(body[at..at + 8].try_into().unwrap()), 0);
        let len = u32::from_le_bytes(body[at + 144..at + 148].try_into().unwrap()) as usize;
        names.push(String::from_utf8_lossy(&body[at + 152..at + 152 + len]).into_owned());
        at += (152 + len).div_ceil(8) * 8;
    }
    assert_eq!(
        names.iter().filter(|n| n.starts_with('f')).count(),
        40,
        "{names:?}"
    );
    assert_eq!(d.lookup(1, "f33").errno, libc::ENFILE, "nothing was held");
    // FORGET gives room back (f0 was looked up twice).
    d.forget(held[0], 2);
    d.forget(held[1], 1);
    assert_eq!(d.lookup(1, "f30").errno, 0);
    assert_eq!(d.lookup(1, "f31").errno, 0);
    assert_eq!(d.lookup(1, "f32").errno, libc::ENFILE);
    // Creating counts too.
    assert_eq!(d.create(1, "new", libc::O_RDWR, 0o600).errno, libc::ENFILE);
    assert!(!t.path().join("new").exists());
}

/// Open handles are fds too (found by the virtio_fs fuzz target: the fuzzer
/// itself ran out of fds): they share the inode budget's bound, and
/// RELEASE gives room back.
#[test]
fn open_handles_are_bounded_too() {
    let t = tempfile::tempdir().unwrap();
    std::fs::write(t.path().join("f"), b"x").unwrap();
    let share = Share::new(t.path(), false).unwrap().max_inodes(4);
    let mut d = dev_with(share, false);
    let f = d.lookup(1, "f").nodeid();
    let mut fhs = Vec::new();
    // Half the inode budget.
    for _ in 0..2 {
        fhs.push(d.open(f, libc::O_RDONLY).fh(0));
    }
    assert_eq!(d.open(f, libc::O_RDONLY).errno, libc::ENFILE);
    assert_eq!(d.call(OPENDIR, 1, &le(&[0, 0])).errno, libc::ENFILE);
    // fuse_release_in: fh, flags, release_flags, lock_owner.
    let body = cat(&[&le64(&[fhs[0]]), &le(&[0, 0]), &le64(&[0])]);
    assert_eq!(d.call(RELEASE, f, &body).errno, 0);
    assert_eq!(d.open(f, libc::O_RDONLY).errno, 0);
}

/// Runs `f` in a forked child that has no capability on the host (a user
/// namespace of its own, as vmapp's jail); its exit status.
fn unprivileged(f: impl FnOnce() -> i32) -> i32 {
    // SAFETY: the child runs `f` and leaves with _exit.
    let pid = unsafe { libc::fork() };
    assert!(pid >= 0);
    if pid == 0 {
        // SAFETY: unshare takes flags; _exit ends the child.
        let code = if unsafe { libc::unshare(libc::CLONE_NEWUSER) } == 0 {
            f()
        } else {
            99
        };
        // SAFETY: leaves the child without the harness's exit path.
        unsafe { libc::_exit(code) };
    }
    let mut st = 0;
    // SAFETY: our child.
    unsafe { libc::waitpid(pid, &mut st, 0) };
    libc::WEXITSTATUS(st)
}

/// Makes `linkat(…, AT_EMPTY_PATH)` fail with ENOENT in this thread, as
/// kernels before 6.10 do without CAP_DAC_READ_SEARCH.
fn refuse_linkat_empty_path() -> bool {
    const AT_EMPTY_PATH: u32 = 0x1000;
    let stmt = |code: u16, k: u32| libc::sock_filter {
        code,
        jt: 0,
        jf: 0,
        k,
    };
    let jeq = |k: u32, jt: u8, jf: u8| libc::sock_filter {
        code: (libc::BPF_JMP | libc::BPF_JEQ | libc::BPF_K) as u16,
        jt,
        jf,
        k,
    };
    let ld = (libc::BPF_LD | libc::BPF_W | libc::BPF_ABS) as u16;
    let ret = (libc::BPF_RET | libc::BPF_K) as u16;
    // seccomp_data: nr at 0, args at 16 (linkat's flags: args[4], low word).
    let mut prog = [
        stmt(ld, 0),
        jeq(libc::SYS_linkat as u32, 0, 3),
        stmt(ld, 16 + 4 * 8),
        stmt(
            (libc::BPF_ALU | libc::BPF_AND | libc::BPF_K) as u16,
            AT_EMPTY_PATH,
        ),
        jeq(0, 0, 1),
        stmt(ret, libc::SECCOMP_RET_ALLOW),
        stmt(ret, libc::SECCOMP_RET_ERRNO | libc::ENOENT as u32),
    ];
    let fprog = libc::sock_fprog {
        len: prog.len() as u16,
        filter: prog.as_mut_ptr(),
    };
    // SAFETY: a valid filter program that outlives the calls.
    unsafe {
        libc::prctl(libc::PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0) == 0
            && libc::prctl(libc::PR_SET_SECCOMP, libc::SECCOMP_MODE_FILTER, &fprog) == 0
    }
}

#[test]
fn hard_links_need_no_privilege() {
    // linkat(AT_EMPTY_PATH) wants CAP_DAC_READ_SEARCH on the host (before
    // Linux 6.10): a user's vmapp, or a jailed one, has none.
    let t = tree();
    let code = unprivileged(|| {
        if !refuse_linkat_empty_path() {
            return 97;
        }
        let mut d = dev(t.path(), false, true);
        let file = d.lookup(1, "file").nodeid();
        let dir = d.lookup(1, "dir").nodeid();
        let r = d.call(opcode::LINK, dir, &cat(&[&le64(&[file]), &name("hard")]));
        if r.errno != 0 {
            return r.errno;
        }
        let same = std::fs::metadata(t.path().join("dir/hard"))
            .map(|m| m.ino())
            .ok()
            == std::fs::metadata(t.path().join("file"))
                .map(|m| m.ino())
                .ok();
        if same {
            0
        } else {
            98
        }
    });
    assert_eq!(code, 0, "LINK failed with {code}");
}

/// This thread's file-system uid for a while (the device serves on the
/// calling thread here): as a user who owns nothing in the share and has no
/// CAP_FOWNER, what vmapp is when run by a user on host files.
struct FsUid(u32);

impl FsUid {
    fn set(uid: u32) -> FsUid {
        // SAFETY: setfsuid changes this thread's fsuid only; it returns the
        // previous one.
        let old = unsafe { libc::setfsuid(uid) } as u32;
        FsUid(old)
    }
}

impl Drop for FsUid {
    fn drop(&mut self) {
        // SAFETY: as above, back to the previous fsuid.
        unsafe { libc::setfsuid(self.0) };
    }
}

/// The guest's kernel opens with O_NOATIME (every exec does), which the
/// host refuses (EPERM) for a file vmapp's user does not own — every file of
/// a host-root share for a vmapp that is not root — and READ/WRITE carry
/// the guest's flags, which fuse-backend-rs 0.14 applied with F_SETFL,
/// closing the handle's fd when that failed (it had wrapped the borrowed
/// fd in a File): the next use of the handle hit another fd or aborted the
/// VMM. The host opens without O_NOATIME and keeps the flags it opened
/// with, whatever a READ says.
#[test]
fn the_guests_o_noatime_works_on_files_of_other_users_and_never_closes_a_handle() {
    use std::os::unix::fs::PermissionsExt;
    // SAFETY: geteuid has no preconditions.
    let euid = unsafe { libc::geteuid() };
    assert_eq!(
        euid, 0,
        "this test acts as another user: run it as root (CI does)"
    );
    let t = tree();
    std::fs::set_permissions(t.path(), std::fs::Permissions::from_mode(0o755)).unwrap();
    let mut d = dev(t.path(), true, true);
    let _as_user = FsUid::set(65534);
    let node = d.lookup(1, "file").nodeid();
    let noatime = (libc::O_RDONLY | libc::O_NOATIME) as u32;
    let o = d.open(node, noatime as i32);
    assert_eq!(o.errno, 0, "open with O_NOATIME");
    let fh = o.fh(0);
    for _ in 0..3 {
        let r = d.read_flags(node, fh, 5, noatime | libc::O_NONBLOCK as u32);
        assert_eq!(r.ok(), b"hello", "the handle still reads its file");
    }
    // A directory's handle is not a file's: READ on it is refused (with
    // O_DIRECT, which a directory refuses, fuse-backend-rs would have
    // closed the directory's fd), and the directory still lists.
    drop(_as_user);
    let dir = d.lookup(1, "dir").nodeid();
    let dh = d.call(OPENDIR, dir, &le(&[0, 0])).fh(0);
    let r = d.read_flags(dir, dh, 5, libc::O_DIRECT as u32);
    assert_eq!(r.errno, libc::EBADF);
    assert_eq!(list(&mut d, dir), ["inner"]);
}

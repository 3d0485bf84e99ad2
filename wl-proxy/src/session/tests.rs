use std::io::Write;

use super::*;
use crate::policy::Policy;

fn session(policy: &str, tag: Option<&str>) -> Session {
    Session::new(
        Arc::new(Policy::from_toml(policy).unwrap()),
        tag.map(Arc::from),
    )
}

fn req(s: &mut Session, m: Vec<u8>) -> Result<Verdict, Violation> {
    s.request(&m, &[]).map(|(v, _)| v)
}

fn ev(s: &mut Session, m: Vec<u8>) -> Result<Verdict, Violation> {
    s.event(&m, &mut []).map(|(v, _)| v)
}

/// get_registry as id 2, then the compositor offers `globals`.
fn with_registry(s: &mut Session, globals: &[(u32, &str, u32)]) -> Vec<Verdict> {
    assert_eq!(
        req(s, Writer::new(1, 1).uint(2).finish()),
        Ok(Verdict::Forward)
    );
    globals
        .iter()
        .map(|(n, i, v)| ev(s, Writer::new(2, 0).uint(*n).string(i).uint(*v).finish()).unwrap())
        .collect()
}

fn bind(name: u32, iface: &str, version: u32, id: u32) -> Vec<u8> {
    Writer::new(2, 0)
        .uint(name)
        .string(iface)
        .uint(version)
        .uint(id)
        .finish()
}

#[test]
fn registry_hides_denied_globals_and_caps_versions() {
    let mut s = session("", None);
    let v = with_registry(
        &mut s,
        &[
            (1, "wl_compositor", 6),
            (2, "zwlr_screencopy_manager_v1", 3),
            (3, "xdg_wm_base", 7),
            (4, "zwp_virtual_keyboard_manager_v1", 1),
        ],
    );
    assert_eq!(v[0], Verdict::Forward);
    assert_eq!(v[1], Verdict::Drop);
    assert_eq!(
        v[2],
        Verdict::Replace(
            Writer::new(2, 0)
                .uint(3)
                .string("xdg_wm_base")
                .uint(6)
                .finish()
        )
    );
    assert_eq!(v[3], Verdict::Drop);
    // global_remove of a hidden global is hidden too.
    assert_eq!(
        ev(&mut s, Writer::new(2, 1).uint(2).finish()),
        Ok(Verdict::Drop)
    );
    assert_eq!(
        ev(&mut s, Writer::new(2, 1).uint(1).finish()),
        Ok(Verdict::Forward)
    );
}

#[test]
fn bind_is_checked_against_what_was_advertised() {
    let mut s = session("", None);
    with_registry(
        &mut s,
        &[
            (1, "wl_compositor", 5),
            (2, "zwlr_screencopy_manager_v1", 3),
        ],
    );
    // The hidden name, a name never offered, a wrong interface, a too-high version.
    for (m, want) in [
        (
            bind(2, "zwlr_screencopy_manager_v1", 1, 3),
            "not advertised",
        ),
        (bind(9, "wl_compositor", 1, 3), "not advertised"),
        (bind(1, "wl_shm", 1, 3), "not wl_shm"),
        (bind(1, "wl_compositor", 6, 3), "above 5"),
        (bind(1, "wl_compositor", 0, 3), "above 5"),
    ] {
        let mut s2 = session("", None);
        with_registry(
            &mut s2,
            &[
                (1, "wl_compositor", 5),
                (2, "zwlr_screencopy_manager_v1", 3),
            ],
        );
        match req(&mut s2, m) {
            Err(Violation::Bind(msg)) => assert!(msg.contains(want), "{msg}"),
            other => panic!("{other:?}"),
        }
    }
    assert_eq!(
        req(&mut s, bind(1, "wl_compositor", 5, 3)),
        Ok(Verdict::Forward)
    );
    // create_surface (opcode 0) on the bound compositor creates id 4 at version 5.
    assert_eq!(
        req(&mut s, Writer::new(3, 0).uint(4).finish()),
        Ok(Verdict::Forward)
    );
    // wl_surface.offset is since 5: allowed.
    assert_eq!(
        req(&mut s, Writer::new(4, 10).uint(0).uint(0).finish()),
        Ok(Verdict::Forward)
    );
}

#[test]
fn objects_opcodes_and_versions() {
    let mut s = session("", None);
    with_registry(&mut s, &[(1, "wl_compositor", 4)]);
    req(&mut s, bind(1, "wl_compositor", 4, 3)).unwrap();
    req(&mut s, Writer::new(3, 0).uint(4).finish()).unwrap();
    // Unknown target.
    assert_eq!(
        req(&mut s, Writer::new(77, 0).finish()),
        Err(Violation::UnknownObject(77))
    );
    // Opcode out of range, and one newer than the object's version (offset, since 5).
    assert!(matches!(
        req(&mut s, Writer::new(4, 40).finish()),
        Err(Violation::BadOpcode { .. })
    ));
    assert!(matches!(
        req(&mut s, Writer::new(4, 10).uint(0).uint(0).finish()),
        Err(Violation::BadOpcode { version: 4, .. })
    ));
    // new_id reuse, and a gap.
    assert_eq!(
        req(&mut s, Writer::new(3, 0).uint(4).finish()),
        Err(Violation::BadNewId(4))
    );
    assert_eq!(
        req(&mut s, Writer::new(3, 0).uint(9).finish()),
        Err(Violation::BadNewId(9))
    );
    // An object argument of the wrong interface: attach(buffer = the compositor).
    assert!(matches!(
        req(&mut s, Writer::new(4, 1).uint(3).uint(0).uint(0).finish()),
        Err(Violation::WrongInterface { arg: 3, .. })
    ));
    // A null buffer is fine; a dead object is not.
    assert_eq!(
        req(&mut s, Writer::new(4, 1).uint(0).uint(0).uint(0).finish()),
        Ok(Verdict::Forward)
    );
    assert!(matches!(
        req(&mut s, Writer::new(4, 1).uint(50).uint(0).uint(0).finish()),
        Err(Violation::UnknownObject(50))
    ));
    // Malformed arguments name the target object.
    assert!(matches!(
        req(&mut s, Writer::new(4, 2).uint(0).finish()),
        Err(Violation::Malformed { object: 4, .. })
    ));
}

#[test]
fn destroy_then_delete_id_frees_the_id() {
    let mut s = session("", None);
    with_registry(&mut s, &[(1, "wl_compositor", 4)]);
    req(&mut s, bind(1, "wl_compositor", 4, 3)).unwrap();
    req(&mut s, Writer::new(3, 0).uint(4).finish()).unwrap();
    // frame callback 5, then wl_surface.destroy.
    req(&mut s, Writer::new(4, 3).uint(5).finish()).unwrap();
    req(&mut s, Writer::new(4, 0).finish()).unwrap();
    assert_eq!(
        req(&mut s, Writer::new(4, 0).finish()),
        Err(Violation::UnknownObject(4))
    );
    // Events to the zombie are still parsed; the id is not free yet.
    // (enter(output = the compositor) is parsed and found wrong, not unknown.)
    assert!(matches!(
        ev(&mut s, Writer::new(4, 0).uint(3).finish()),
        Err(Violation::Upstream(m)) if m.contains("not a wl_output")
    ));
    assert_eq!(
        req(&mut s, Writer::new(3, 0).uint(4).finish()),
        Err(Violation::BadNewId(4))
    );
    // callback.done is a destructor event; delete_id frees both.
    assert_eq!(
        ev(&mut s, Writer::new(5, 0).uint(1).finish()),
        Ok(Verdict::Forward)
    );
    let before = s.object_count();
    ev(&mut s, Writer::new(1, 1).uint(4).finish()).unwrap();
    ev(&mut s, Writer::new(1, 1).uint(5).finish()).unwrap();
    assert_eq!(s.object_count(), before - 2);
    assert_eq!(
        req(&mut s, Writer::new(3, 0).uint(4).finish()),
        Ok(Verdict::Forward)
    );
}

#[test]
fn object_limit() {
    let mut s = session("[limits]\nmax_objects = 10", None);
    with_registry(&mut s, &[(1, "wl_compositor", 4)]);
    req(&mut s, bind(1, "wl_compositor", 4, 3)).unwrap();
    let mut id = 4;
    let err = loop {
        match req(&mut s, Writer::new(3, 0).uint(id).finish()) {
            Ok(_) => id += 1,
            Err(e) => break e,
        }
    };
    assert_eq!(err, Violation::TooManyObjects);
    assert_eq!(id, 11);
    assert_eq!(
        s.error_event(&err),
        display_error(1, code::NO_MEMORY, "too many objects")
    );
}

fn memfd(len: usize) -> OwnedFd {
    let mut f = tempfile::tempfile().unwrap();
    f.write_all(&vec![0u8; len]).unwrap();
    f.into()
}

#[test]
fn shm_pool_fd_must_cover_its_size() {
    let mut s = session("", None);
    with_registry(&mut s, &[(1, "wl_shm", 1)]);
    req(&mut s, bind(1, "wl_shm", 1, 3)).unwrap();
    let pool = |id, size: i32| Writer::new(3, 0).uint(id).uint(size as u32).finish();
    let small = [memfd(100)];
    assert_eq!(
        s.request(&pool(4, 4096), &small),
        Err(Violation::ShmPool("fd is smaller than the pool"))
    );
    assert_eq!(
        s.request(&pool(4, 0), &small),
        Err(Violation::ShmPool("size must be positive"))
    );
    assert_eq!(
        s.request(&pool(4, 4096), &[]),
        Err(Violation::Fds("too few fds for the message"))
    );
    let (r, w) = std::io::pipe().unwrap();
    drop(w);
    let pipe: [OwnedFd; 1] = [r.into()];
    assert_eq!(
        s.request(&pool(4, 1), &pipe),
        Err(Violation::ShmPool("fd is not a file or memfd"))
    );
    let ok = [memfd(8192)];
    assert_eq!(s.request(&pool(4, 4096), &ok), Ok((Verdict::Forward, 1)));
    // resize within the file, then past it.
    assert_eq!(
        req(&mut s, Writer::new(4, 2).uint(8192).finish()),
        Ok(Verdict::Forward)
    );
    assert_eq!(
        req(&mut s, Writer::new(4, 2).uint(8193).finish()),
        Err(Violation::ShmPool("fd is smaller than the pool"))
    );
}

#[test]
fn toplevel_titles_are_tagged_and_sanitised() {
    let mut s = session("[limits]\nmax_title_bytes = 40", Some("work"));
    with_registry(&mut s, &[(1, "xdg_wm_base", 6), (2, "wl_compositor", 6)]);
    req(&mut s, bind(1, "xdg_wm_base", 6, 3)).unwrap();
    req(&mut s, bind(2, "wl_compositor", 6, 4)).unwrap();
    req(&mut s, Writer::new(4, 0).uint(5).finish()).unwrap(); // surface 5
    req(&mut s, Writer::new(3, 2).uint(6).uint(5).finish()).unwrap(); // xdg_surface 6
    req(&mut s, Writer::new(6, 1).uint(7).finish()).unwrap(); // toplevel 7
    let title = |t: &str| Writer::new(7, 2).string(t).finish();
    assert_eq!(
        req(&mut s, title("hi")),
        Ok(Verdict::Replace(title("[work] hi")))
    );
    assert_eq!(
        req(&mut s, title("a\x1b[2Jb\u{202e}c")),
        Ok(Verdict::Replace(title("[work] a\u{fffd}[2Jb\u{fffd}c")))
    );
    let long = "x".repeat(100);
    match req(&mut s, title(&long)).unwrap() {
        Verdict::Replace(m) => assert_eq!(m, title(&format!("[work] {}", &long[..33]))),
        v => panic!("{v:?}"),
    }
    assert_eq!(
        req(&mut s, Writer::new(7, 3).string("org.foot").finish()),
        Ok(Verdict::Replace(
            Writer::new(7, 3).string("work:org.foot").finish()
        ))
    );
}

#[test]
fn server_created_objects() {
    let mut s = session("", None);
    with_registry(
        &mut s,
        &[(1, "wl_data_device_manager", 3), (2, "wl_seat", 7)],
    );
    req(&mut s, bind(1, "wl_data_device_manager", 3, 3)).unwrap();
    req(&mut s, bind(2, "wl_seat", 7, 4)).unwrap();
    req(&mut s, Writer::new(3, 1).uint(5).uint(4).finish()).unwrap(); // get_data_device 5
    let offer = |id| Writer::new(5, 0).uint(id).finish();
    assert_eq!(ev(&mut s, offer(0xff00_0000)), Ok(Verdict::Forward));
    assert!(matches!(
        ev(&mut s, offer(0xff00_0000)),
        Err(Violation::Upstream(_))
    ));
    assert!(matches!(ev(&mut s, offer(6)), Err(Violation::Upstream(_))));
    // The client destroys the offer; the server may reuse the id.
    req(&mut s, Writer::new(0xff00_0000, 2).finish()).unwrap();
    assert_eq!(ev(&mut s, offer(0xff00_0000)), Ok(Verdict::Forward));
}

#[test]
fn tables_fit_the_argument_buffer() {
    let most = crate::protocol::INTERFACES
        .iter()
        .flat_map(|i| i.requests.iter().chain(i.events))
        .map(|m| m.args.len())
        .max()
        .unwrap();
    assert!(most <= MAX_ARGS, "{most}");
}

/// The write end of a paste pipe handed to a client (a VM's relay, whose
/// writes block the VM's gpu worker) becomes non-blocking with a 1 MiB
/// buffer; a regular file is left as it was.
#[test]
fn pipes_handed_to_clients_never_block_their_writer() {
    use std::io::Write;
    use std::os::fd::{AsFd, AsRawFd};
    let (_r, w) = std::io::pipe().unwrap();
    unblock_pipe(w.as_fd());
    // SAFETY: fcntl queries on an open fd.
    let (fl, size) = unsafe {
        (
            libc::fcntl(w.as_raw_fd(), libc::F_GETFL),
            libc::fcntl(w.as_raw_fd(), libc::F_GETPIPE_SZ),
        )
    };
    assert_ne!(fl & libc::O_NONBLOCK, 0);
    assert_eq!(size, CLIENT_PIPE_SIZE);
    // Nobody reads: the writer gets WouldBlock past the buffer, not a hang.
    let mut w = std::fs::File::from(std::os::fd::OwnedFd::from(w));
    let chunk = vec![0u8; 64 * 1024];
    let mut wrote = 0;
    let err = loop {
        match w.write(&chunk) {
            Ok(n) => wrote += n,
            Err(e) => break e,
        }
    };
    assert_eq!(err.kind(), std::io::ErrorKind::WouldBlock);
    assert_eq!(wrote, CLIENT_PIPE_SIZE as usize);
    let f = tempfile::tempfile().unwrap();
    unblock_pipe(f.as_fd());
    // SAFETY: as above.
    let fl = unsafe { libc::fcntl(f.as_raw_fd(), libc::F_GETFL) };
    assert_eq!(fl & libc::O_NONBLOCK, 0);
}

/// A keymap the client could write (a compositor that shares one writable
/// keymap between clients would let one rewrite every other's) reaches it
/// as a sealed copy; a read-only or sealed one passes as it is.
#[test]
fn a_writable_keymap_reaches_the_client_sealed() {
    use std::os::fd::{AsFd, AsRawFd};
    let mut f = tempfile::tempfile().unwrap();
    f.write_all(b"xkb_keymap { };").unwrap();
    let rw = f.as_fd();
    assert!(!read_only(rw));
    let copy = sealed_copy(rw, 15).unwrap();
    assert!(read_only(copy.as_fd()));
    let mut got = [0u8; 15];
    let c = std::fs::File::from(copy.try_clone().unwrap());
    std::os::unix::fs::FileExt::read_exact_at(&c, &mut got, 0).unwrap();
    assert_eq!(&got, b"xkb_keymap { };");
    // Writing it fails, through the fd and through a shared mapping.
    let mut w = std::fs::File::from(copy.try_clone().unwrap());
    assert!(w.write_all(b"x").is_err());
    // SAFETY: a shared writable mapping is asked for and must be refused.
    let m = unsafe {
        libc::mmap(
            std::ptr::null_mut(),
            15,
            libc::PROT_READ | libc::PROT_WRITE,
            libc::MAP_SHARED,
            copy.as_raw_fd(),
            0,
        )
    };
    assert_eq!(m, libc::MAP_FAILED);
    // A size past the file reads as zeros, not a fault.
    assert!(sealed_copy(rw, 4096).is_ok());
    assert!(sealed_copy(rw, 0).is_err());
    let ro = std::fs::File::open("/proc/self/exe").unwrap();
    assert!(read_only(ro.as_fd()));
}

#[test]
fn surface_commits_are_counted() {
    let mut s = session("", None);
    with_registry(&mut s, &[(1, "wl_compositor", 6)]);
    req(&mut s, bind(1, "wl_compositor", 6, 3)).unwrap();
    req(&mut s, Writer::new(3, 0).uint(4).finish()).unwrap(); // surface 4
    req(&mut s, Writer::new(3, 0).uint(5).finish()).unwrap(); // surface 5
    assert_eq!(s.commits(), 0);
    req(&mut s, Writer::new(4, 6).finish()).unwrap();
    req(&mut s, Writer::new(5, 6).finish()).unwrap();
    req(&mut s, Writer::new(4, 6).finish()).unwrap();
    // Other surface requests are not commits.
    req(
        &mut s,
        Writer::new(4, 9).uint(0).uint(0).uint(1).uint(1).finish(),
    )
    .unwrap();
    assert_eq!(s.commits(), 3);
}

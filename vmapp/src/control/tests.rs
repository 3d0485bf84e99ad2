use super::*;
use std::sync::Mutex;

/// A server with a fixed status that records stop requests; its thread
/// runs under the real `control` filter (a forbidden syscall kills the
/// test process).
fn server(dir: &Path) -> (ControlServer, PathBuf, Arc<Mutex<Vec<bool>>>) {
    let path = dir.join("control");
    let stops = Arc::new(Mutex::new(Vec::new()));
    let s = stops.clone();
    let served = Served {
        status: Status {
            name: "app".into(),
            pid: 42,
            uptime_s: 0,
            memory_mib: 256,
            vcpus: 2,
            // Longer than a request may be: replies may.
            command: vec!["foot".into(), "x".repeat(3 * MAX_LINE)],
            exec_socket: Some(dir.join("v.sock")),
            exec_port: Some(1025),
            network: None,
            audio: None,
        },
        started: Instant::now() - Duration::from_secs(5),
        stop: Box::new(move |force| s.lock().unwrap().push(force)),
        net: None,
        audio: None,
        seccomp: seccomp_policies::Mode::Kill,
    };
    (serve(&path, served).unwrap(), path, stops)
}

/// Sends raw bytes and returns the reply line.
fn raw(path: &Path, bytes: &[u8]) -> String {
    let mut s = UnixStream::connect(path).unwrap();
    let _ = s.write_all(bytes);
    let _ = s.shutdown(std::net::Shutdown::Write);
    let mut out = String::new();
    let _ = s.read_to_string(&mut out);
    out
}

#[test]
fn status_and_stop_round_trip() {
    let dir = tempfile::tempdir().unwrap();
    let (srv, path, stops) = server(dir.path());
    let st = status(&path).unwrap();
    assert_eq!((st.name.as_str(), st.pid, st.vcpus), ("app", 42, 2));
    assert!(st.uptime_s >= 5, "uptime is counted: {st:?}");
    assert_eq!(st.command[1].len(), 3 * MAX_LINE);
    assert_eq!(
        st.exec_socket.as_deref(),
        Some(dir.path().join("v.sock").as_path())
    );
    stop(&path, false).unwrap();
    stop(&path, true).unwrap();
    assert_eq!(*stops.lock().unwrap(), [false, true]);
    drop(srv);
    assert!(!path.exists(), "the socket goes with the server");
}

#[test]
fn the_network_switch_turns_and_status_shows_it() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("control");
    let state = Arc::new(Mutex::new(true));
    let st = state.clone();
    let served = Served {
        status: status_fixture(dir.path()),
        started: Instant::now(),
        stop: Box::new(|_| {}),
        net: Some(Box::new(move |on| {
            let mut s = st.lock().unwrap();
            match on {
                // The switch's own refusal reaches the client.
                Some(true) if *s => Err("already on".into()),
                Some(v) => {
                    *s = v;
                    Ok(v)
                }
                None => Ok(*s),
            }
        })),
        audio: None,
        seccomp: seccomp_policies::Mode::Kill,
    };
    let _srv = serve(&path, served).unwrap();
    assert_eq!(status(&path).unwrap().network, Some(true));
    set_network(&path, false).unwrap();
    assert!(!*state.lock().unwrap());
    assert_eq!(status(&path).unwrap().network, Some(false));
    set_network(&path, true).unwrap();
    let e = set_network(&path, true).unwrap_err();
    assert!(e.to_string().contains("already on"), "{e}");
    let r = raw(&path, b"{\"version\":1,\"op\":\"net\"}\n");
    assert!(r.contains("\"on\\\" must be true or false"), "{r}");
}

#[test]
fn a_vm_without_a_network_says_so() {
    let dir = tempfile::tempdir().unwrap();
    let (_srv, path, _) = server(dir.path());
    assert_eq!(status(&path).unwrap().network, None);
    let e = set_network(&path, false).unwrap_err();
    assert!(e.to_string().contains("no network"), "{e}");
}

fn status_fixture(dir: &Path) -> Status {
    Status {
        name: "app".into(),
        pid: 42,
        uptime_s: 0,
        memory_mib: 256,
        vcpus: 2,
        command: vec!["foot".into()],
        exec_socket: Some(dir.join("v.sock")),
        exec_port: Some(1025),
        network: None,
        audio: None,
    }
}

#[test]
fn the_audio_switch_turns_and_status_shows_it() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("control");
    let state = Arc::new(Mutex::new(String::from("playback")));
    let st = state.clone();
    let served = Served {
        status: status_fixture(dir.path()),
        started: Instant::now(),
        stop: Box::new(|_| {}),
        net: None,
        audio: Some(Box::new(move |m| {
            let mut s = st.lock().unwrap();
            if let Some(m) = m {
                *s = m.to_string();
            }
            Ok(s.clone())
        })),
        seccomp: seccomp_policies::Mode::Kill,
    };
    let _srv = serve(&path, served).unwrap();
    assert_eq!(status(&path).unwrap().audio.as_deref(), Some("playback"));
    set_audio(&path, "off").unwrap();
    assert_eq!(*state.lock().unwrap(), "off");
    assert_eq!(status(&path).unwrap().audio.as_deref(), Some("off"));
    let e = set_audio(&path, "loud").unwrap_err();
    assert!(e.to_string().contains("\"mode\" must be"), "{e}");
    assert_eq!(*state.lock().unwrap(), "off", "a bad mode changes nothing");
}

#[test]
fn a_vm_without_audio_says_so() {
    let dir = tempfile::tempdir().unwrap();
    let (_srv, path, _) = server(dir.path());
    assert_eq!(status(&path).unwrap().audio, None);
    let e = set_audio(&path, "off").unwrap_err();
    assert!(e.to_string().contains("no audio proxy"), "{e}");
}

#[test]
fn bad_requests_get_an_error_and_the_server_goes_on() {
    let dir = tempfile::tempdir().unwrap();
    let (_srv, path, stops) = server(dir.path());
    for (req, want) in [
        (&b"hello\n"[..], "not JSON"),
        (b"[1]\n", "not a JSON object"),
        (b"{\"op\":\"status\"}\n", "no \\\"version\\\""),
        (b"{\"version\":2,\"op\":\"status\"}\n", "protocol version 2"),
        (b"{\"version\":1}\n", "no \\\"op\\\""),
        (b"{\"version\":1,\"op\":\"reboot\"}\n", "unknown op"),
        (
            b"{\"version\":1,\"op\":\"status\",\"x\":1}\n",
            "unknown key",
        ),
        (
            b"{\"version\":1,\"op\":\"stop\",\"force\":\"yes\"}\n",
            "true or false",
        ),
        (b"\xff\xfe\n", "not UTF-8"),
        (b"{\"version\":1,", "ended early"),
    ] {
        let reply = raw(&path, req);
        assert!(
            reply.contains("\"ok\":false") && reply.contains(want),
            "{:?}: {reply}",
            String::from_utf8_lossy(req)
        );
    }
    // A line far past the limit, never ended: refused without reading it all.
    let mut s = UnixStream::connect(&path).unwrap();
    let big = vec![b'x'; 64 * MAX_LINE];
    let _ = s.write_all(&big);
    let mut reply = String::new();
    let _ = s.read_to_string(&mut reply);
    assert!(reply.contains("longer than"), "{reply}");
    assert!(stops.lock().unwrap().is_empty(), "nothing stopped the VM");
    assert_eq!(status(&path).unwrap().name, "app");
}

#[test]
fn a_silent_client_is_dropped_after_the_timeout() {
    let dir = tempfile::tempdir().unwrap();
    let (_srv, path, _) = server(dir.path());
    let t = Instant::now();
    let mut s = UnixStream::connect(&path).unwrap();
    let mut reply = String::new();
    s.read_to_string(&mut reply).unwrap();
    assert!(reply.contains("no request in time"), "{reply}");
    assert!(t.elapsed() >= REQUEST_TIMEOUT);
    // Dropped, not held for ever (loose: a loaded CI machine is slow).
    assert!(t.elapsed() < REQUEST_TIMEOUT * 15, "{:?}", t.elapsed());
    assert_eq!(status(&path).unwrap().pid, 42);
}

#[test]
fn the_peer_is_the_owner_here() {
    let (a, _b) = UnixStream::pair().unwrap();
    // SAFETY: getuid has no preconditions.
    assert_eq!(vmm::agent::peer_uid(&a), Some(unsafe { libc::getuid() }));
}

#[test]
fn a_client_gets_an_error_for_a_socket_nobody_serves() {
    let dir = tempfile::tempdir().unwrap();
    let e = status(&dir.path().join("control")).unwrap_err();
    assert!(matches!(e, ControlError::Io { .. }), "{e}");
}

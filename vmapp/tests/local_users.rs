//! Another local user (uid 65534) cannot make vmapp's clients talk to a
//! socket of theirs, with or without `XDG_RUNTIME_DIR`: no VM needed, the
//! "VMs" here are the other user's fake control sockets (`socat`), which
//! record every request that reaches them.
//!
//! Runs as root (it acts as both users through `setpriv`); needs `socat`
//! and `setpriv` (`.ci/run` installs them) and fails, naming the tool, where
//! one is missing.

use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

const VMAPP: &str = env!("CARGO_BIN_EXE_vmapp");
const THEM: &str = "65534";

fn need(tool: &str) {
    let ok = Command::new("sh")
        .args(["-c", &format!("command -v {tool}")])
        .stdout(Stdio::null())
        .status()
        .is_ok_and(|s| s.success());
    assert!(ok, "{tool} is missing (.ci/run installs it)");
}

fn chmod(p: &Path, mode: u32) {
    std::fs::set_permissions(p, std::fs::Permissions::from_mode(mode)).unwrap();
}

fn chown_them(p: &Path) {
    std::os::unix::fs::chown(p, Some(65534), Some(65534)).unwrap();
}

/// A scratch tree: `tmp/` (vmapp's `TMPDIR`), `marks/` (where the other
/// user's servers write each request they get, open to them) and their
/// directory `theirs/`.
struct Scratch {
    dir: tempfile::TempDir,
    servers: Vec<Child>,
}

impl Scratch {
    fn new() -> Scratch {
        // SAFETY: geteuid has no preconditions.
        let euid = unsafe { libc::geteuid() };
        assert_eq!(
            euid, 0,
            "this test acts as two users: run it as root (CI does)"
        );
        need("socat");
        need("setpriv");
        let dir = tempfile::tempdir().unwrap();
        chmod(dir.path(), 0o755);
        for (d, mode) in [("tmp", 0o1777), ("marks", 0o777), ("theirs", 0o777)] {
            std::fs::create_dir(dir.path().join(d)).unwrap();
            chmod(&dir.path().join(d), mode);
        }
        Scratch {
            dir,
            servers: Vec::new(),
        }
    }

    fn path(&self, p: &str) -> PathBuf {
        self.dir.path().join(p)
    }

    /// The other user serves a socket at `theirs/NAME` that appends each
    /// request line it gets to `marks/requests` and answers like a VM.
    fn serve_theirs(&mut self, name: &str) -> PathBuf {
        let sock = self.path("theirs").join(name);
        let marks = self.path("marks/requests");
        let reply = r#"{"version":1,"ok":true,"status":{"pid":1}}"#;
        let child = Command::new("setpriv")
            .args(["--reuid", THEM, "--regid", THEM, "--clear-groups", "socat"])
            .arg(format!("UNIX-LISTEN:{},fork", sock.display()))
            .arg(format!(
                "SYSTEM:read -r l && echo \"$l\" >> {} && echo '{reply}'",
                marks.display()
            ))
            .stderr(Stdio::null())
            .spawn()
            .expect("setpriv");
        self.servers.push(child);
        let end = Instant::now() + Duration::from_secs(10);
        while !sock.exists() {
            assert!(Instant::now() < end, "socat did not listen on {sock:?}");
            std::thread::sleep(Duration::from_millis(20));
        }
        sock
    }

    /// What reached the other user's servers.
    fn requests(&self) -> String {
        std::fs::read_to_string(self.path("marks/requests")).unwrap_or_default()
    }

    /// `vmapp ARGS` as root, with `TMPDIR` in the scratch tree and
    /// `XDG_RUNTIME_DIR` as given (unset for `None`).
    fn vmapp(&self, xdg: Option<&Path>, args: &[&str]) -> Output {
        let mut c = Command::new(VMAPP);
        c.args(args)
            .env("TMPDIR", self.path("tmp"))
            .env("XDG_CONFIG_HOME", self.path("cfg"))
            .env("XDG_DATA_HOME", self.path("data"))
            .env_remove("XDG_RUNTIME_DIR")
            .env_remove("WAYLAND_DISPLAY")
            .stdin(Stdio::null());
        if let Some(x) = xdg {
            c.env("XDG_RUNTIME_DIR", x);
        }
        c.output().expect("vmapp")
    }
}

impl Drop for Scratch {
    fn drop(&mut self) {
        for s in &mut self.servers {
            let _ = s.kill();
            let _ = s.wait();
        }
    }
}

/// Every client command, against app `app` (and `vmapp-fake`, a VM without
/// a name): each must fail, saying `why`, with nothing sent to the other
/// user's sockets.
fn every_client_refuses(s: &Scratch, xdg: Option<&Path>, why: &str) {
    let cmds: &[&[&str]] = &[
        &["list"],
        &["stop", "app"],
        &["stop", "vmapp-fake"],
        &["exec", "app", "--", "true"],
        &["net", "app", "off"],
        &["audio", "app", "off"],
        &["launch", "--app", "app", "--", "true"],
    ];
    for args in cmds {
        let o = s.vmapp(xdg, args);
        let err = String::from_utf8_lossy(&o.stderr);
        assert!(!o.status.success(), "vmapp {args:?} succeeded: {err}");
        assert!(
            err.contains(why),
            "vmapp {args:?}: want {why:?}, got: {err}"
        );
    }
    assert_eq!(s.requests(), "", "a request reached the other user");
}

/// Their sockets at the places vmapp's clients look: `BASE/vmapp/app/control`
/// and `BASE/vmapp-fake/control`.
fn plant(s: &mut Scratch, base: &Path) {
    for (dir, sock) in [("vmapp/app", "app"), ("vmapp-fake", "fake")] {
        let d = base.join(dir);
        std::fs::create_dir_all(&d).unwrap();
        let theirs = s.serve_theirs(sock);
        std::fs::rename(&theirs, d.join("control")).unwrap();
    }
}

#[test]
fn a_runtime_base_another_user_made_first_is_refused_not_used() {
    let mut s = Scratch::new();
    // Without XDG_RUNTIME_DIR, vmapp's base is TMPDIR/vmapp-0: they made it
    // first, open to all, with their sockets in it.
    let base = s.path("tmp/vmapp-0");
    plant(&mut s, &base);
    for p in [&base, &base.join("vmapp"), &base.join("vmapp/app")] {
        chmod(p, 0o777);
        chown_them(p);
    }
    every_client_refuses(&s, None, "belongs to another user");
    // Theirs but closed (0700): still theirs.
    chmod(&base, 0o700);
    every_client_refuses(&s, None, "belongs to another user");
    // An XDG_RUNTIME_DIR of theirs (a stale one after `su`) is not used:
    // vmapp falls back to TMPDIR/vmapp-0, still theirs, still refused.
    let xdg = s.path("xdg-theirs");
    std::fs::create_dir(&xdg).unwrap();
    chmod(&xdg, 0o700);
    chown_them(&xdg);
    plant(&mut s, &xdg);
    every_client_refuses(&s, Some(&xdg), "belongs to another user");
}

#[test]
fn an_xdg_runtime_dir_open_to_others_is_refused() {
    let mut s = Scratch::new();
    // Ours but open to everyone: they put their sockets in it.
    let xdg = s.path("xdg-open");
    std::fs::create_dir(&xdg).unwrap();
    chmod(&xdg, 0o777);
    plant(&mut s, &xdg);
    every_client_refuses(&s, Some(&xdg), "is open to other users");
}

#[test]
fn a_socket_served_by_another_user_is_refused_even_in_our_own_directory() {
    let mut s = Scratch::new();
    // Every directory ours and private, but the sockets theirs (moved in:
    // only the peer's credentials can tell).
    let xdg = s.path("xdg-ours");
    std::fs::create_dir(&xdg).unwrap();
    chmod(&xdg, 0o700);
    plant(&mut s, &xdg);
    for p in [
        xdg.join("vmapp"),
        xdg.join("vmapp/app"),
        xdg.join("vmapp-fake"),
    ] {
        chmod(&p, 0o700);
    }
    let cmds: &[&[&str]] = &[
        &["stop", "app"],
        &["stop", "vmapp-fake"],
        &["exec", "app", "--", "true"],
        &["net", "app", "off"],
        &["audio", "app", "off"],
    ];
    for args in cmds {
        let o = s.vmapp(Some(&xdg), args);
        let err = String::from_utf8_lossy(&o.stderr);
        assert!(!o.status.success(), "vmapp {args:?} succeeded: {err}");
        assert!(err.contains("served by uid 65534"), "vmapp {args:?}: {err}");
    }
    // `list` shows no status of theirs.
    let o = s.vmapp(Some(&xdg), &["list"]);
    let out = String::from_utf8_lossy(&o.stdout);
    assert!(!out.contains("running"), "{out}");
    // The agent's client (`vmapp exec` once it has a VM's vsock socket).
    let theirs = s.serve_theirs("vsock");
    let run = vmm::agent::Run {
        argv: vec!["true".into()],
        env: vec![],
        cwd: String::new(),
        keep_running: false,
    };
    let e = vmm::agent::exec(&theirs, 1025, &run, None, std::io::sink(), std::io::sink())
        .expect_err("their socket");
    assert!(
        matches!(e, vmm::agent::AgentError::NotOurs { uid: 65534, .. }),
        "{e}"
    );
    assert_eq!(s.requests(), "", "a request reached the other user");
}

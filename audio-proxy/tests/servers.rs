//! The proxy in front of real sound servers on this machine (no VM: the
//! guest's relay only carries bytes): PulseAudio and PipeWire run headless
//! as uid 65534, the proxy as that user too; `paplay` plays through it, and
//! a hostile client of our own tries what the policy forbids.
//!
//! Needs `pulseaudio`, `pipewire`, `pipewire-pulse`, `wireplumber`,
//! `pulseaudio-utils`, `dbus` and `sox` (`.ci/run` installs them); fails,
//! naming the tool, where one is missing.

use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use audio_proxy::client;

const PROXY: &str = env!("CARGO_BIN_EXE_audio-proxy");
const USER: &str = "65534";

fn need(tool: &str) {
    let ok = Command::new("sh")
        .args(["-c", &format!("command -v {tool}")])
        .stdout(Stdio::null())
        .status()
        .is_ok_and(|s| s.success());
    assert!(ok, "{tool} is missing (.ci/run installs it)");
}

/// `argv` as uid 65534.
fn as_user(argv: &[&str]) -> Command {
    let mut c = Command::new("setpriv");
    c.args(["--reuid", USER, "--regid", USER, "--clear-groups"])
        .args(argv);
    c
}

/// A sound server and the proxy in front of it, both as uid 65534.
struct Rig {
    dir: PathBuf,
    server: Child,
    proxy: Child,
}

impl Rig {
    fn env(&self, c: &mut Command) {
        c.env("XDG_RUNTIME_DIR", self.dir.join("rt"))
            .env("HOME", self.dir.join("home"))
            .env_remove("PULSE_SERVER");
    }

    /// `sh -c script` as the servers' user, with their environment.
    fn sh(&self, script: &str) -> String {
        let mut c = as_user(&["sh", "-c", script]);
        self.env(&mut c);
        let o = c.output().expect("setpriv");
        String::from_utf8_lossy(&o.stdout).into_owned() + &String::from_utf8_lossy(&o.stderr)
    }

    fn start(kind: &'static str) -> Rig {
        for t in [
            "setpriv",
            "pactl",
            "paplay",
            "pacat",
            "sox",
            "dbus-run-session",
        ] {
            need(t);
        }
        static N: std::sync::atomic::AtomicU32 = std::sync::atomic::AtomicU32::new(0);
        let n = N.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let dir = std::env::temp_dir().join(format!("audio-{kind}-{}-{n}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        for d in ["rt", "home"] {
            std::fs::create_dir_all(dir.join(d)).unwrap();
        }
        let script = match kind {
            "pulse" => {
                need("pulseaudio");
                "exec pulseaudio -n --daemonize=no --exit-idle-time=-1 \
                 --load=module-native-protocol-unix --load='module-null-sink sink_name=null' \
                 --load=module-always-sink"
            }
            _ => {
                for t in ["pipewire", "wireplumber", "pipewire-pulse"] {
                    need(t);
                }
                "exec dbus-run-session -- sh -c 'pipewire & sleep 1; wireplumber & sleep 1; \
                 exec pipewire-pulse'"
            }
        };
        Command::new("chown")
            .args(["-R", "65534:65534", dir.to_str().unwrap()])
            .status()
            .unwrap();
        std::fs::set_permissions(
            dir.join("rt"),
            std::os::unix::fs::PermissionsExt::from_mode(0o700),
        )
        .unwrap();
        let mut c = as_user(&["sh", "-c", script]);
        c.stdout(Stdio::null())
            .stderr(Stdio::null())
            .process_group(0);
        let mut rig = Rig {
            dir: dir.clone(),
            server: Command::new("true").spawn().unwrap(),
            proxy: Command::new("true").spawn().unwrap(),
        };
        rig.env(&mut c);
        rig.server = c.spawn().unwrap();
        let t = Instant::now();
        while !rig.sh("pactl info").contains("Server Name") {
            assert!(
                t.elapsed() < Duration::from_secs(30),
                "{kind} did not start"
            );
            std::thread::sleep(Duration::from_millis(200));
        }
        if kind == "pipewire" {
            rig.sh(
                "pactl load-module module-null-sink sink_name=null; pactl set-default-sink null",
            );
        }
        let mut c = as_user(&[PROXY]);
        c.arg("--listen")
            .arg(dir.join("proxy"))
            .args(["--tag", "vm1", "--max-streams", "8"])
            .stderr(Stdio::piped())
            .process_group(0);
        rig.env(&mut c);
        rig.proxy = c.spawn().unwrap();
        let t = Instant::now();
        while !dir.join("proxy").exists() {
            assert!(
                t.elapsed() < Duration::from_secs(10),
                "the proxy did not listen"
            );
            std::thread::sleep(Duration::from_millis(20));
        }
        rig
    }

    fn proxy_socket(&self) -> PathBuf {
        self.dir.join("proxy")
    }
}

impl Drop for Rig {
    fn drop(&mut self) {
        for c in [&mut self.proxy, &mut self.server] {
            // SAFETY: kill on our child's process group.
            unsafe { libc::kill(-(c.id() as i32), libc::SIGKILL) };
            let _ = c.wait();
        }
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// A tone file the servers' user can read.
fn tone(dir: &Path, secs: u32) -> PathBuf {
    let p = dir.join(format!("tone{secs}.wav"));
    let ok = Command::new("sox")
        .args(["-n", "-r", "48000", "-c", "2", "-b", "16"])
        .arg(&p)
        .args(["synth", &secs.to_string(), "sine", "440", "vol", "0.5"])
        .status()
        .unwrap()
        .success();
    assert!(ok);
    Command::new("chown")
        .args(["65534:65534"])
        .arg(&p)
        .status()
        .unwrap();
    p
}

/// The rough frequency sox hears in a raw mono s16 recording.
fn heard(rig: &Rig, raw: &str) -> f64 {
    let out = rig.sh(&format!(
        "sox -t raw -r 48000 -e signed -b 16 -c 1 {raw} -n silence 1 0.05 2% reverse silence 1 0.05 2% reverse stat 2>&1"
    ));
    out.lines()
        .find_map(|l| l.strip_prefix("Rough   frequency:"))
        .and_then(|v| v.trim().parse().ok())
        .unwrap_or(0.0)
}

fn plays_a_tagged_tone(kind: &'static str) {
    let rig = Rig::start(kind);
    let t = tone(&rig.dir, 20);
    let play = format!(
        "pacat -r --device=null.monitor --format=s16le --rate=48000 --channels=1 > {d}/rec.raw 2>/dev/null & R=$!; \
         sleep 0.5; PULSE_SERVER=unix:{} paplay {} > /dev/null 2>&1 & P=$!; sleep 3; \
         pactl list sink-inputs | grep -E 'media.name|application.name'; kill $R $P",
        rig.proxy_socket().display(),
        t.display(),
        d = rig.dir.display()
    );
    let names = rig.sh(&play);
    assert!(names.contains("media.name = \"[vm1] "), "{kind}: {names}");
    assert!(
        names.contains("application.name = \"[vm1] paplay\""),
        "{kind}: {names}"
    );
    let f = heard(&rig, &format!("{}/rec.raw", rig.dir.display()));
    assert!((430.0..450.0).contains(&f), "{kind}: heard {f} Hz");
}

#[test]
fn pulseaudio_plays_a_tagged_tone_through_the_proxy() {
    plays_a_tagged_tone("pulse");
}

#[test]
fn pipewire_plays_a_tagged_tone_through_the_proxy() {
    plays_a_tagged_tone("pipewire");
}

fn hostile_clients_are_refused(kind: &'static str) {
    let rig = Rig::start(kind);
    // Another app plays on the host, straight to the server.
    let t = tone(&rig.dir, 60);
    rig.sh(&format!("(paplay {} > /dev/null 2>&1 &)", t.display()));
    let t0 = Instant::now();
    while rig.sh("pactl list short sink-inputs").trim().is_empty() {
        assert!(t0.elapsed() < Duration::from_secs(10));
        std::thread::sleep(Duration::from_millis(100));
    }
    let before = |w: &str| rig.sh(&format!("pactl {w}"));
    let (modules, default, inputs) = (
        before("list short modules"),
        before("get-default-sink"),
        before("list short sink-inputs"),
    );
    let other_client: u32 = before("list short clients")
        .lines()
        .find(|l| l.ends_with("pacat"))
        .and_then(|l| l.split_whitespace().next()?.parse().ok())
        .expect("the host's paplay is a client");
    let other_input: u32 = inputs
        .split_whitespace()
        .next()
        .and_then(|i| i.parse().ok())
        .unwrap();
    let got = client::hostile(&rig.proxy_socket(), other_client, other_input).unwrap();
    // The proxy runs with --max-streams 8: the ninth stream cuts it off.
    let got: Vec<(&str, String)> = got.iter().map(|(n, o)| (*n, o.to_string())).collect();
    let want: Vec<(&str, String)> = client::HOSTILE_EXPECTED
        .iter()
        .map(|(n, o)| (*n, o.to_string()))
        .collect();
    assert_eq!(got, want, "{kind}");
    // The server is untouched and the other app still plays.
    assert_eq!(before("list short modules"), modules, "{kind}");
    assert_eq!(before("get-default-sink"), default, "{kind}");
    assert!(
        before("list short sink-inputs").contains(&format!("{other_input}\t")),
        "{kind}: the host's stream was not touched"
    );
}

#[test]
fn pulseaudio_is_untouched_by_hostile_clients() {
    hostile_clients_are_refused("pulse");
}

#[test]
fn pipewire_is_untouched_by_hostile_clients() {
    hostile_clients_are_refused("pipewire");
}

/// Review finding: nothing bounded a VM's connections (each is one to the
/// host's server, and PulseAudio serves 64 in all), and a connection that
/// never authenticated stayed.
#[test]
fn connections_are_capped_and_a_silent_one_is_cut() {
    let rig = Rig::start("pulse");
    let idle: Vec<_> = (0..16)
        .map(|_| client::RawClient::open(&rig.proxy_socket(), c"idle").unwrap())
        .collect();
    let over = client::RawClient::open(&rig.proxy_socket(), c"one too many");
    assert!(over.is_err(), "the 17th connection is refused");
    drop(idle);
    // Room again once they are gone.
    let t = Instant::now();
    let again = loop {
        match client::RawClient::open(&rig.proxy_socket(), c"again") {
            Ok(c) => break c,
            Err(e) if t.elapsed() > Duration::from_secs(10) => panic!("{e}"),
            Err(_) => std::thread::sleep(Duration::from_millis(100)),
        }
    };
    drop(again);
    // Silent: cut after its handshake time.
    let mut silent = std::os::unix::net::UnixStream::connect(rig.proxy_socket()).unwrap();
    silent
        .set_read_timeout(Some(Duration::from_secs(30)))
        .unwrap();
    let t = Instant::now();
    let n = std::io::Read::read(&mut silent, &mut [0u8; 16]).unwrap_or(0);
    assert_eq!(n, 0, "closed");
    assert!(t.elapsed() < Duration::from_secs(20), "{:?}", t.elapsed());
}

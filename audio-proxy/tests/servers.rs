//! The proxy in front of real sound servers on this machine (no VM: the
//! guest's relay only carries bytes): PulseAudio and PipeWire run headless
//! as uid 65534, the proxy as that user too; `paplay` plays through it, and
//! a hostile client of our own tries what the policy forbids.
//!
//! Needs `pulseaudio`, `pipewire`, `pipewire-pulse`, `wireplumber`,
//! `pulseaudio-utils`, `dbus` and `sox` (`.ci/run` installs them); fails,
//! naming the tool, where one is missing.

use std::io::{Cursor, Write};
use std::os::unix::net::UnixStream;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use audio_proxy::wire::{self, Descriptor, DESCRIPTOR};
use pulseaudio::protocol::{
    self as pa, AuthParams, ChannelMap, Command as Cmd, CommandTag, LoadModuleParams, Prop, Props,
    PulseError, SampleSpec, TagStructReader,
};

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
        let mut c = Command::new("setpriv");
        c.args([
            "--reuid",
            USER,
            "--regid",
            USER,
            "--clear-groups",
            "sh",
            "-c",
            script,
        ]);
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
        let mut c = Command::new("setpriv");
        c.args([
            "--reuid",
            USER,
            "--regid",
            USER,
            "--clear-groups",
            "sh",
            "-c",
            script,
        ])
        .stdout(Stdio::null())
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
        let mut c = Command::new("setpriv");
        c.args(["--reuid", USER, "--regid", USER, "--clear-groups", PROXY])
            .arg("--listen")
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

/// A raw client of the proxy.
struct Raw {
    s: UnixStream,
    seq: u32,
}

impl Raw {
    fn connect(rig: &Rig) -> Raw {
        let s = UnixStream::connect(rig.proxy_socket()).unwrap();
        s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
        let mut r = Raw { s, seq: 0 };
        let reply = r.call(&Cmd::Auth(AuthParams {
            version: pa::MAX_VERSION,
            supports_shm: true,
            supports_memfd: true,
            cookie: vec![9; 256],
        }));
        assert_eq!(reply, Ok(()), "AUTH through the proxy");
        let mut props = Props::new();
        props.set(Prop::ApplicationName, c"hostile");
        assert_eq!(r.call(&Cmd::SetClientName(props)), Ok(()));
        r
    }

    fn send(&mut self, c: &Cmd) -> u32 {
        self.seq += 1;
        let mut out = Vec::new();
        pa::write_command_message(&mut out, self.seq, c, pa::MAX_VERSION).unwrap();
        let _ = self.s.write_all(&out);
        self.seq
    }

    /// The answer to `c`: `Ok` for a reply, `Err(code)` for an error,
    /// `Err(None)` when the proxy closed the connection.
    fn call(&mut self, c: &Cmd) -> Result<(), Option<u32>> {
        let seq = self.send(c);
        self.answer(seq)
    }

    fn answer(&mut self, seq: u32) -> Result<(), Option<u32>> {
        let sizes = wire::Sizes {
            command: 1 << 24,
            data: 1 << 24,
        };
        let mut buf = Vec::new();
        loop {
            match wire::read_packet(&mut self.s, sizes, &mut buf) {
                Ok(Some(d)) if d.is_command() => {}
                Ok(Some(_)) => continue,
                _ => return Err(None),
            }
            let mut cur = Cursor::new(&buf[DESCRIPTOR..]);
            let mut ts = TagStructReader::new(&mut cur, pa::MAX_VERSION);
            let (Ok(tag), Ok(s)) = (ts.read_u32(), ts.read_u32()) else {
                return Err(None);
            };
            if s != seq {
                continue;
            }
            if tag == CommandTag::Error as u32 {
                return Err(ts.read_u32().ok());
            }
            return Ok(());
        }
    }

    fn closed(&mut self) -> bool {
        matches!(self.call(&Cmd::GetServerInfo), Err(None))
    }
}

fn playback(target: u32) -> Cmd {
    let mut props = Props::new();
    props.set(Prop::MediaName, c"flood");
    Cmd::CreatePlaybackStream(pa::PlaybackStreamParams {
        sample_spec: SampleSpec {
            format: pa::SampleFormat::S16Le,
            sample_rate: 48000,
            channels: 2,
        },
        channel_map: ChannelMap::stereo(),
        buffer_attr: pa::stream::BufferAttr {
            max_length: u32::MAX - 1,
            target_length: target,
            pre_buffering: u32::MAX,
            minimum_request_length: u32::MAX,
            fragment_size: u32::MAX,
        },
        props,
        flags: pa::stream::StreamFlags {
            start_corked: true,
            ..Default::default()
        },
        ..Default::default()
    })
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
    let mut c = Raw::connect(&rig);
    let access = Err(Some(PulseError::AccessDenied as u32));
    let denied = [
        Cmd::LoadModule(LoadModuleParams {
            name: c"module-null-sink".into(),
            arguments: Some(c"sink_name=evil".into()),
        }),
        Cmd::UnloadModule(0),
        Cmd::SetDefaultSink(c"evil".into()),
        Cmd::KillClient(other_client),
        Cmd::KillSinkInput(other_input),
        Cmd::GetClientInfoList,
        Cmd::GetSinkInputInfoList,
        Cmd::GetClientInfo(other_client),
        Cmd::Exit,
    ];
    for d in &denied {
        assert_eq!(c.call(d), access, "{kind}: {d:?}");
    }
    // Its own stream's volume: fine; another's: not its own.
    let r = c.call(&pa::Command::SetSinkInputVolume(
        pa::SetStreamVolumeParams {
            index: other_input,
            volume: pa::ChannelVolume::norm(2),
        },
    ));
    assert_eq!(r, Err(Some(PulseError::NoEntity as u32)), "{kind}");
    // Oversize buffer attributes are capped, not refused.
    assert_eq!(c.call(&playback(u32::MAX - 1)), Ok(()), "{kind}");
    assert!(!c.closed(), "{kind}: still connected");
    // Garbage: cut off.
    let mut g = Raw::connect(&rig);
    let _ = g.s.write_all(&wire::command_packet(b"\xffnot a tagstruct"));
    assert!(g.closed(), "{kind}: garbage");
    // An oversize packet: cut off.
    let mut o = Raw::connect(&rig);
    let big = Descriptor {
        length: 200 << 20,
        channel: wire::COMMAND_CHANNEL,
        offset: 0,
        flags: 0,
    };
    let _ = o.s.write_all(&big.encode());
    assert!(o.closed(), "{kind}: oversize");
    // A thousand streams: cut off at the VM's limit (8 here).
    let mut f = Raw::connect(&rig);
    let mut answered = 0;
    for _ in 0..1000 {
        if f.call(&playback(u32::MAX)).is_err() {
            break;
        }
        answered += 1;
    }
    assert!(f.closed(), "{kind}: the stream flood is cut off");
    assert!(answered <= 8, "{kind}: {answered} streams");
    // A command flood without reading answers: cut off, the proxy lives.
    let mut fl = Raw::connect(&rig);
    fl.s.set_nonblocking(true).unwrap();
    for _ in 0..20000 {
        fl.send(&Cmd::GetServerInfo);
    }
    fl.s.set_nonblocking(false).unwrap();
    assert!(fl.closed(), "{kind}: the command flood is cut off");
    // The server is untouched, the other app still plays, and a new client
    // of the VM still works.
    assert_eq!(before("list short modules"), modules, "{kind}");
    assert_eq!(before("get-default-sink"), default, "{kind}");
    assert!(
        before("list short sink-inputs").contains(&format!("{other_input}\t")),
        "{kind}: the host's stream was not touched"
    );
    let mut ok = Raw::connect(&rig);
    assert_eq!(ok.call(&Cmd::GetServerInfo), Ok(()), "{kind}");
    drop((c, ok));
}

#[test]
fn pulseaudio_is_untouched_by_hostile_clients() {
    hostile_clients_are_refused("pulse");
}

#[test]
fn pipewire_is_untouched_by_hostile_clients() {
    hostile_clients_are_refused("pipewire");
}

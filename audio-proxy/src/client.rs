//! A raw PulseAudio-protocol client, for the tests and the benchmark: it
//! speaks the wire format directly (no libpulse), so it can send what a
//! hostile guest would, and play or record with exact timing.

use std::io::{Cursor, Write};
use std::os::unix::net::UnixStream;
use std::path::Path;
use std::time::{Duration, Instant};

use pulseaudio::protocol::{
    self as pa, AuthParams, ChannelMap, Command, CommandTag, CreatePlaybackStreamReply, Prop,
    Props, SampleSpec, TagStructRead, TagStructReader,
};

use crate::wire::{self, Descriptor, DESCRIPTOR};

/// What went wrong.
#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    /// The socket failed.
    #[error("{0}")]
    Io(#[from] std::io::Error),
    /// The wire format could not be written or read.
    #[error("{0}")]
    Protocol(#[from] pa::ProtocolError),
    /// A packet could not be read.
    #[error("{0}")]
    Wire(#[from] wire::WireError),
    /// The peer closed the connection.
    #[error("the connection was closed")]
    Closed,
    /// The server (or the proxy) answered with an error.
    #[error("refused with error {0}")]
    Refused(u32),
}

/// The server's largest packets.
const SIZES: wire::Sizes = wire::Sizes {
    command: 1 << 24,
    data: 1 << 24,
};

/// A connection.
pub struct RawClient {
    /// The socket.
    pub socket: UnixStream,
    seq: u32,
    buf: Vec<u8>,
}

impl RawClient {
    /// Connects, authenticates (no shared memory: audio in the stream; a
    /// zero cookie) and names the client `name`.
    pub fn open(path: &Path, name: &std::ffi::CStr) -> Result<Self, ClientError> {
        let socket = UnixStream::connect(path)?;
        // Generous: the boot tests run it in a VM under an emulated host.
        socket.set_read_timeout(Some(Duration::from_secs(60)))?;
        let mut c = Self {
            socket,
            seq: 0,
            buf: Vec::new(),
        };
        c.call(&Command::Auth(AuthParams {
            version: pa::MAX_VERSION,
            supports_shm: false,
            supports_memfd: false,
            cookie: vec![0; 256],
        }))?;
        let mut props = Props::new();
        props.set(Prop::ApplicationName, name);
        c.call(&Command::SetClientName(props))?;
        Ok(c)
    }

    /// Sends `cmd`; returns its sequence number.
    pub fn send(&mut self, cmd: &Command) -> Result<u32, ClientError> {
        self.seq += 1;
        let mut out = Vec::new();
        pa::write_command_message(&mut out, self.seq, cmd, pa::MAX_VERSION)?;
        self.socket.write_all(&out)?;
        Ok(self.seq)
    }

    /// Sends `cmd`; returns its reply's body (after the tag and sequence).
    pub fn call(&mut self, cmd: &Command) -> Result<Vec<u8>, ClientError> {
        let seq = self.send(cmd)?;
        self.answer(seq)
    }

    /// The answer to request `seq` (packets before it are skipped).
    pub fn answer(&mut self, seq: u32) -> Result<Vec<u8>, ClientError> {
        loop {
            let d = wire::read_packet(&mut self.socket, SIZES, &mut self.buf)
                .map_err(|_| ClientError::Closed)?
                .ok_or(ClientError::Closed)?;
            if !d.is_command() {
                continue;
            }
            let mut cur = Cursor::new(&self.buf[DESCRIPTOR..]);
            let mut ts = TagStructReader::new(&mut cur, pa::MAX_VERSION);
            let (tag, s) = (ts.read_u32()?, ts.read_u32()?);
            if s != seq {
                continue;
            }
            if tag == CommandTag::Error as u32 {
                return Err(ClientError::Refused(ts.read_u32().unwrap_or(0)));
            }
            let at = DESCRIPTOR + cur.position() as usize;
            return Ok(self.buf[at..].to_vec());
        }
    }

    /// Reads the next packet: `Some(request length)` for a REQUEST.
    fn next_request(&mut self) -> Result<Option<usize>, ClientError> {
        let d = wire::read_packet(&mut self.socket, SIZES, &mut self.buf)?
            .ok_or(ClientError::Closed)?;
        if !d.is_command() {
            return Ok(None);
        }
        let mut cur = Cursor::new(&self.buf[DESCRIPTOR..]);
        Ok(
            match Command::read_tag_prefixed(&mut cur, pa::MAX_VERSION) {
                Ok((_, Command::Request(r))) => Some(r.length as usize),
                _ => None,
            },
        )
    }

    /// Plays 48 kHz stereo s16 for `secs`: `fill(block, frame)` writes each
    /// block the server asks for (`frame`: the index of its first frame).
    /// `target` is the buffer length in bytes.
    pub fn play(
        &mut self,
        secs: f64,
        target: u32,
        mut fill: impl FnMut(&mut [u8], u64),
    ) -> Result<(), ClientError> {
        let reply = self.call(&Command::CreatePlaybackStream(stereo_stream(
            u32::MAX,
            target,
            pa::stream::StreamFlags {
                adjust_latency: true,
                ..Default::default()
            },
        )))?;
        let r = CreatePlaybackStreamReply::read(
            &mut TagStructReader::new(&mut Cursor::new(&reply[..]), pa::MAX_VERSION),
            pa::MAX_VERSION,
        )?;
        let (channel, mut want) = (r.channel, r.requested_bytes as usize);
        let start = Instant::now();
        let mut frame = 0u64;
        while start.elapsed().as_secs_f64() < secs {
            if want == 0 {
                want += self.next_request()?.unwrap_or(0);
                continue;
            }
            let mut block = vec![0u8; want.min(64 << 10) / 4 * 4];
            fill(&mut block, frame);
            frame += block.len() as u64 / 4;
            let d = Descriptor {
                length: block.len() as u32,
                channel,
                offset: 0,
                flags: 0,
            };
            self.socket.write_all(&d.encode())?;
            self.socket.write_all(&block)?;
            want -= block.len();
        }
        Ok(())
    }
}

/// Fills `block` (stereo s16) with a sine of `hz` at half scale, its first
/// frame being `frame`.
pub fn sine(block: &mut [u8], frame: u64, hz: f64) {
    for (i, f) in block.chunks_exact_mut(4).enumerate() {
        let t = (frame + i as u64) as f64 / 48000.0;
        let v = ((t * hz * std::f64::consts::TAU).sin() * 16000.0) as i16;
        f[..2].copy_from_slice(&v.to_le_bytes());
        f[2..].copy_from_slice(&v.to_le_bytes());
    }
}

/// What became of one hostile attempt.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outcome {
    /// Answered with this error code.
    Refused(u32),
    /// The connection was cut.
    Closed,
    /// Answered with a reply: it was allowed.
    Allowed,
}

impl std::fmt::Display for Outcome {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Outcome::Refused(1) => f.write_str("access-denied"),
            Outcome::Refused(5) => f.write_str("no-entity"),
            Outcome::Refused(c) => write!(f, "error-{c}"),
            Outcome::Closed => f.write_str("closed"),
            Outcome::Allowed => f.write_str("allowed"),
        }
    }
}

fn outcome(r: Result<Vec<u8>, ClientError>) -> Outcome {
    match r {
        Ok(_) => Outcome::Allowed,
        Err(ClientError::Refused(c)) => Outcome::Refused(c),
        Err(_) => Outcome::Closed,
    }
}

/// A 48 kHz stereo s16 playback stream's parameters.
fn stereo_stream(
    max: u32,
    target: u32,
    flags: pa::stream::StreamFlags,
) -> pa::PlaybackStreamParams {
    pa::PlaybackStreamParams {
        sample_spec: SampleSpec {
            format: pa::SampleFormat::S16Le,
            sample_rate: 48000,
            channels: 2,
        },
        channel_map: ChannelMap::stereo(),
        buffer_attr: pa::stream::BufferAttr {
            max_length: max,
            target_length: target,
            pre_buffering: u32::MAX,
            minimum_request_length: u32::MAX,
            fragment_size: u32::MAX,
        },
        flags,
        ..Default::default()
    }
}

fn corked_stream(target: u32) -> Command {
    let mut p = stereo_stream(
        u32::MAX - 1,
        target,
        pa::stream::StreamFlags {
            start_corked: true,
            ..Default::default()
        },
    );
    p.props.set(Prop::MediaName, c"hostile");
    Command::CreatePlaybackStream(p)
}

/// What [`hostile`] must find through the proxy (whatever the VM's stream
/// limit, the thousand streams are cut off at it).
pub const HOSTILE_EXPECTED: &[(&str, &str)] = &[
    ("load-module", "access-denied"),
    ("unload-module", "access-denied"),
    ("set-default-sink", "access-denied"),
    ("kill-client", "access-denied"),
    ("kill-sink-input", "access-denied"),
    ("list-clients", "access-denied"),
    ("list-sink-inputs", "access-denied"),
    ("client-info", "access-denied"),
    ("other-volume", "no-entity"),
    ("exit", "access-denied"),
    ("oversize-attrs", "allowed"),
    ("after-all-that", "allowed"),
    ("garbage", "closed"),
    ("oversize-packet", "closed"),
    ("thousand-streams", "closed"),
    ("command-flood", "closed"),
    ("new-client", "allowed"),
];

/// 20,000 refused commands (`STAT`, answered by the proxy itself) in one
/// write, the answers drained on a thread of their own: past the packet
/// rate wherever the guest writes fast enough. Whether it was cut.
fn burst(path: &Path) -> Result<bool, ClientError> {
    let mut fl = RawClient::open(path, c"burst")?;
    let mut all = Vec::new();
    for seq in 0..20_000u32 {
        pa::write_command_message(&mut all, 1000 + seq, &Command::Stat, pa::MAX_VERSION)?;
    }
    fl.socket.set_read_timeout(Some(Duration::from_secs(5)))?;
    let mut reader = fl.socket.try_clone()?;
    let drain = std::thread::spawn(move || {
        let mut buf = vec![0u8; 64 << 10];
        loop {
            match std::io::Read::read(&mut reader, &mut buf) {
                Ok(0) => return true,
                Ok(_) => {}
                // Quiet for 5 s: still open. Reset or broken: cut.
                Err(e) => {
                    return !matches!(
                        e.kind(),
                        std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
                    )
                }
            }
        }
    });
    // Fails once the proxy has cut the connection: that is the point.
    let _ = fl.socket.write_all(&all);
    Ok(drain.join().unwrap_or(false))
}

/// Commands sent without reading their answers, as fast as the socket
/// takes them: a slow guest (one under an emulated host) never outruns
/// the packet rate, but its unanswered requests pile up. Whether it was cut.
fn unread_flood(path: &Path) -> Result<bool, ClientError> {
    let mut fl = RawClient::open(path, c"flood")?;
    fl.socket.set_nonblocking(true)?;
    for _ in 0..20000 {
        if fl.send(&Command::GetServerInfo).is_err() {
            break;
        }
    }
    fl.socket.set_nonblocking(false)?;
    // Cut off: every answer before the cut is skipped, then the end.
    let seq = fl.send(&Command::GetServerInfo).unwrap_or(0);
    Ok(matches!(fl.answer(seq), Err(ClientError::Closed)))
}

/// What a hostile guest tries on the socket at `path`, and what became of
/// each try: server management, another client (`other_client`) and its
/// stream (`other_input`), oversize buffer attributes, garbage, an oversize
/// packet, a thousand streams, a command flood. Each on a connection of its
/// own where it may cut that connection.
pub fn hostile(
    path: &Path,
    other_client: u32,
    other_input: u32,
) -> Result<Vec<(&'static str, Outcome)>, ClientError> {
    let mut out = Vec::new();
    let mut c = RawClient::open(path, c"hostile")?;
    let tries: [(&str, Command); 10] = [
        (
            "load-module",
            Command::LoadModule(pa::LoadModuleParams {
                name: c"module-null-sink".into(),
                arguments: Some(c"sink_name=evil".into()),
            }),
        ),
        ("unload-module", Command::UnloadModule(0)),
        ("set-default-sink", Command::SetDefaultSink(c"evil".into())),
        ("kill-client", Command::KillClient(other_client)),
        ("kill-sink-input", Command::KillSinkInput(other_input)),
        ("list-clients", Command::GetClientInfoList),
        ("list-sink-inputs", Command::GetSinkInputInfoList),
        ("client-info", Command::GetClientInfo(other_client)),
        (
            "other-volume",
            Command::SetSinkInputVolume(pa::SetStreamVolumeParams {
                index: other_input,
                volume: pa::ChannelVolume::norm(2),
            }),
        ),
        ("exit", Command::Exit),
    ];
    for (name, cmd) in &tries {
        out.push((*name, outcome(c.call(cmd))));
    }
    // Oversize attributes: capped, so the stream is created.
    out.push((
        "oversize-attrs",
        outcome(c.call(&corked_stream(u32::MAX - 1))),
    ));
    out.push(("after-all-that", outcome(c.call(&Command::GetServerInfo))));
    let mut g = RawClient::open(path, c"garbage")?;
    g.socket
        .write_all(&wire::command_packet(b"\xffnot a tagstruct"))?;
    out.push(("garbage", outcome(g.call(&Command::GetServerInfo))));
    let mut o = RawClient::open(path, c"oversize")?;
    let big = Descriptor {
        length: 200 << 20,
        channel: wire::COMMAND_CHANNEL,
        offset: 0,
        flags: 0,
    };
    o.socket.write_all(&big.encode())?;
    out.push(("oversize-packet", outcome(o.call(&Command::GetServerInfo))));
    let mut f = RawClient::open(path, c"streams")?;
    let last = (0..1000)
        .map(|_| outcome(f.call(&corked_stream(u32::MAX))))
        .find(|o| *o != Outcome::Allowed)
        .unwrap_or(Outcome::Allowed);
    out.push(("thousand-streams", last));
    let cut = burst(path)? || unread_flood(path)?;
    out.push((
        "command-flood",
        if cut {
            Outcome::Closed
        } else {
            Outcome::Allowed
        },
    ));
    drop(c);
    let mut ok = RawClient::open(path, c"after")?;
    out.push(("new-client", outcome(ok.call(&Command::GetServerInfo))));
    Ok(out)
}

//! The fuzz target's entry point: a sequence of packets from a hostile
//! guest, with the server's answers interleaved, through one session.

use std::sync::atomic::AtomicUsize;
use std::sync::Arc;

use crate::policy::{Limits, Mode, ServerVerdict, Session, Verdict};
use crate::wire;

/// Runs `data` through a session: the first byte picks the mode, then each
/// packet is read as a guest packet (or, after a 0xff marker byte, as a
/// server packet). Nothing here may panic.
pub fn session(data: &[u8]) {
    let Some((&m, mut rest)) = data.split_first() else {
        return;
    };
    let mode = match m % 3 {
        0 => Mode::Off,
        1 => Mode::Playback,
        _ => Mode::Full,
    };
    let limits = Limits {
        packets_per_s: u32::MAX / 4,
        ..Limits::default()
    };
    let mut s = Session::new("fuzz", limits, vec![0; 256], Arc::new(AtomicUsize::new(0)));
    let mut buf = Vec::new();
    while !rest.is_empty() {
        let server = rest[0] == 0xff;
        if server {
            rest = &rest[1..];
        }
        match wire::read_packet(&mut rest, limits.sizes(), &mut buf) {
            Ok(Some(_)) => {}
            _ => return,
        }
        if server {
            if let ServerVerdict::Rewrite(p) = s.server_packet(&buf, mode) {
                assert!(p.len() >= wire::DESCRIPTOR);
            }
        } else if let Verdict::Close(_) = s.client_packet(&buf, mode) {
            return;
        }
    }
}

use pulseaudio::protocol::{
    self as pa, AuthParams, ChannelMap, Command, CommandTag, CreatePlaybackStreamReply, Prop,
    Props, RecordStreamParams, SampleSpec, TagStructWrite, TagStructWriter,
};

const V: u16 = pa::MAX_VERSION;

fn cmd(seq: u32, c: &Command) -> Vec<u8> {
    let mut out = Vec::new();
    let _ = pa::write_command_message(&mut out, seq, c, V);
    out
}

/// A server packet, as the fuzz input marks it (0xff first).
fn server(body: &dyn Fn(&mut TagStructWriter<'_>)) -> Vec<u8> {
    let mut out = Vec::new();
    body(&mut TagStructWriter::new(&mut out, V));
    let mut p = vec![0xff];
    p.extend(wire::command_packet(&out));
    p
}

fn spec() -> SampleSpec {
    SampleSpec {
        format: pa::SampleFormat::S16Le,
        sample_rate: 48000,
        channels: 2,
    }
}

/// AUTH (claiming shared memory) and the server's answer.
fn authenticated() -> Vec<u8> {
    let mut v = cmd(
        1,
        &Command::Auth(AuthParams {
            version: V,
            supports_shm: true,
            supports_memfd: true,
            cookie: vec![0; 256],
        }),
    );
    v.extend(server(&|w| {
        let _ = w.write_u32(CommandTag::Reply as u32);
        let _ = w.write_u32(1);
        let _ = w.write_u32(u32::from(V));
    }));
    v
}

/// A named client's playback stream, the server's answer, and data.
fn playing() -> Vec<u8> {
    let mut props = Props::new();
    props.set(Prop::ApplicationName, c"paplay");
    let mut v = cmd(2, &Command::SetClientName(props.clone()));
    v.extend(cmd(
        3,
        &Command::CreatePlaybackStream(pa::PlaybackStreamParams {
            sample_spec: spec(),
            channel_map: ChannelMap::stereo(),
            props,
            ..Default::default()
        }),
    ));
    v.extend(server(&|w| {
        let _ = w.write_u32(CommandTag::Reply as u32);
        let _ = w.write_u32(3);
        let r = CreatePlaybackStreamReply {
            channel: 0,
            stream_index: 7,
            sample_spec: spec(),
            channel_map: ChannelMap::stereo(),
            ..Default::default()
        };
        let _ = r.write(w, V);
    }));
    let d = wire::Descriptor {
        length: 16,
        channel: 0,
        offset: 0,
        flags: 0,
    };
    v.extend(d.encode());
    v.extend([1u8; 16]);
    v
}

/// Seed inputs: a client that authenticates, names itself, opens a
/// playback stream, gets the server's answers and plays; one that tries
/// what the policy refuses; one that records in `full`.
pub fn seeds() -> Vec<(&'static str, Vec<u8>)> {
    let with = |mode: u8, rest: &[Vec<u8>]| {
        let mut v = vec![mode];
        v.extend(authenticated());
        rest.iter().for_each(|r| v.extend(r));
        v
    };
    let play = with(1, &[playing()]);
    let hostile = with(
        1,
        &[
            cmd(4, &Command::UnloadModule(0)),
            cmd(5, &Command::GetSinkInputInfoList),
            cmd(6, &Command::KillClient(0)),
        ],
    );
    let rec = RecordStreamParams {
        sample_spec: spec(),
        channel_map: ChannelMap::stereo(),
        ..Default::default()
    };
    let record = with(
        2,
        &[
            cmd(7, &Command::CreateRecordStream(rec)),
            cmd(8, &Command::GetSourceInfoList),
        ],
    );
    vec![("play", play), ("hostile", hostile), ("record", record)]
}

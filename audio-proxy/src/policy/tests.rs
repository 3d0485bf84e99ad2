use super::*;
use pulseaudio::protocol::{
    AuthParams, ChannelMap, CorkStreamParams, LoadModuleParams, PlaybackStreamParams,
    RecordStreamParams, SampleSpec, SetStreamVolumeParams,
};

const V: u16 = MAX_VERSION;

fn session(streams: &Arc<AtomicUsize>) -> Session {
    Session::new(
        "browser",
        Limits::default(),
        vec![7; COOKIE_LEN],
        streams.clone(),
    )
}

fn packet(seq: u32, cmd: &Command) -> Vec<u8> {
    let mut v = Vec::new();
    pa::write_command_message(&mut v, seq, cmd, V).unwrap();
    v
}

/// Decodes a packet the proxy sends on.
fn decode(p: &[u8]) -> (u32, Command) {
    Command::read_tag_prefixed(&mut Cursor::new(&p[DESCRIPTOR..]), V).unwrap()
}

fn reply(seq: u32, body: impl FnOnce(&mut TagStructWriter<'_>)) -> Vec<u8> {
    let mut out = Vec::new();
    let mut w = TagStructWriter::new(&mut out, V);
    w.write_u32(CommandTag::Reply as u32).unwrap();
    w.write_u32(seq).unwrap();
    body(&mut w);
    wire::command_packet(&out)
}

/// A session past AUTH (the server answered version 35 with shm).
fn authed(streams: &Arc<AtomicUsize>) -> Session {
    let mut s = session(streams);
    let auth = Command::Auth(AuthParams {
        version: V,
        supports_shm: true,
        supports_memfd: true,
        cookie: vec![1; COOKIE_LEN],
    });
    let Verdict::Rewrite(p) = s.client_packet(&packet(1, &auth), Mode::Playback) else {
        panic!("AUTH is rewritten");
    };
    let (_, Command::Auth(a)) = decode(&p) else {
        panic!()
    };
    assert!(!a.supports_shm && !a.supports_memfd);
    assert_eq!(
        a.cookie,
        vec![7; COOKIE_LEN],
        "the host's cookie, not the guest's"
    );
    let r = reply(1, |w| w.write_u32(u32::from(V) | 0xc000_0000).unwrap());
    let ServerVerdict::Rewrite(r) = s.server_packet(&r, Mode::Playback) else {
        panic!("the AUTH reply is rewritten");
    };
    let mut cur = Cursor::new(&r[DESCRIPTOR..]);
    let mut ts = TagStructReader::new(&mut cur, V);
    let (_, _, flags) = (ts.read_u32(), ts.read_u32(), ts.read_u32().unwrap());
    assert_eq!(flags, u32::from(V), "the guest is told of no shared memory");
    s
}

fn playback_params(name: &str) -> PlaybackStreamParams {
    let mut props = Props::new();
    props.set(Prop::MediaName, CString::new(name).unwrap());
    PlaybackStreamParams {
        sample_spec: SampleSpec {
            format: pa::SampleFormat::S16Le,
            sample_rate: 48000,
            channels: 2,
        },
        channel_map: ChannelMap::stereo(),
        buffer_attr: BufferAttr {
            max_length: u32::MAX,
            target_length: 1 << 30,
            pre_buffering: u32::MAX,
            minimum_request_length: u32::MAX,
            fragment_size: u32::MAX,
        },
        props,
        ..Default::default()
    }
}

/// Opens a playback stream; the server gives it `channel` and sink input
/// `index`.
fn open_playback(s: &mut Session, seq: u32, channel: u32, index: u32) -> PlaybackStreamParams {
    let cmd = Command::CreatePlaybackStream(playback_params("tone"));
    let Verdict::Rewrite(p) = s.client_packet(&packet(seq, &cmd), Mode::Playback) else {
        panic!("a playback stream is allowed");
    };
    let (_, Command::CreatePlaybackStream(sent)) = decode(&p) else {
        panic!()
    };
    let r = CreatePlaybackStreamReply {
        channel,
        stream_index: index,
        sample_spec: sent.sample_spec,
        channel_map: sent.channel_map,
        ..Default::default()
    };
    let r = reply(seq, |w| {
        pulseaudio::protocol::TagStructWrite::write(&r, w, V).unwrap()
    });
    assert_eq!(s.server_packet(&r, Mode::Playback), ServerVerdict::Forward);
    sent
}

fn data(channel: u32, flags: u32) -> Vec<u8> {
    let mut v = Descriptor {
        length: 4,
        channel,
        offset: 0,
        flags,
    }
    .encode()
    .to_vec();
    v.extend([0; 4]);
    v
}

#[test]
fn playback_streams_are_tagged_capped_and_carry_data() {
    let n = Arc::new(AtomicUsize::new(0));
    let mut s = authed(&n);
    let sent = open_playback(&mut s, 2, 5, 40);
    assert_eq!(
        sent.props.get(Prop::MediaName),
        Some(&b"[browser] tone\0"[..])
    );
    assert_eq!(sent.buffer_attr.target_length, 4 << 20, "capped");
    assert_eq!(
        sent.buffer_attr.max_length,
        u32::MAX,
        "server default stays"
    );
    assert_eq!(n.load(Ordering::Relaxed), 1);
    assert_eq!(
        s.client_packet(&data(5, 0), Mode::Playback),
        Verdict::Forward
    );
    // Another channel, or shared-memory flags: cut off.
    assert!(matches!(
        s.client_packet(&data(6, 0), Mode::Playback),
        Verdict::Close(_)
    ));
    assert!(matches!(
        s.client_packet(&data(5, 0x4000_0000), Mode::Playback),
        Verdict::Close(_)
    ));
    // Its own stream's volume and cork: yes. Another's: refused.
    let own = Command::SetSinkInputVolume(SetStreamVolumeParams {
        index: 40,
        volume: Default::default(),
    });
    assert_eq!(
        s.client_packet(&packet(3, &own), Mode::Playback),
        Verdict::Forward
    );
    let other = Command::SetSinkInputVolume(SetStreamVolumeParams {
        index: 41,
        volume: Default::default(),
    });
    assert!(matches!(
        s.client_packet(&packet(4, &other), Mode::Playback),
        Verdict::Refuse { .. }
    ));
    let cork = Command::CorkPlaybackStream(CorkStreamParams {
        channel: 5,
        cork: true,
    });
    assert_eq!(
        s.client_packet(&packet(5, &cork), Mode::Playback),
        Verdict::Forward
    );
    // Deleting it frees its place in the VM's count.
    let del = Command::DeletePlaybackStream(5);
    assert_eq!(
        s.client_packet(&packet(6, &del), Mode::Playback),
        Verdict::Forward
    );
    assert_eq!(n.load(Ordering::Relaxed), 0);
}

#[test]
fn the_server_and_other_clients_are_out_of_reach() {
    let n = Arc::new(AtomicUsize::new(0));
    let mut s = authed(&n);
    let denied = [
        Command::LoadModule(LoadModuleParams {
            name: CString::new("module-null-sink").unwrap(),
            arguments: None,
        }),
        Command::UnloadModule(0),
        Command::SetDefaultSink(CString::new("other").unwrap()),
        Command::KillClient(0),
        Command::KillSinkInput(0),
        Command::GetClientInfoList,
        Command::GetSinkInputInfoList,
        Command::GetSourceOutputInfoList,
        Command::GetModuleInfoList,
        Command::Exit,
        Command::Stat,
        Command::GetSourceInfoList,
    ];
    for (i, c) in denied.iter().enumerate() {
        let seq = 10 + i as u32;
        // Sources are listed in `full` only.
        let mode = if matches!(c, Command::GetSourceInfoList) {
            Mode::Playback
        } else {
            Mode::Full
        };
        match s.client_packet(&packet(seq, c), mode) {
            Verdict::Refuse { reply, .. } => {
                let (rseq, e) = decode(&reply);
                assert_eq!(
                    (rseq, e),
                    (seq, Command::Error(PulseError::AccessDenied)),
                    "{c:?}"
                );
            }
            v => panic!("{c:?}: {v:?}"),
        }
    }
    // What playing needs passes.
    for (seq, c) in [(30, Command::GetServerInfo), (31, Command::GetSinkInfoList)] {
        assert_eq!(
            s.client_packet(&packet(seq, &c), Mode::Playback),
            Verdict::Forward
        );
    }
    // A subscription keeps sink and server events only.
    let sub = Command::Subscribe(SubscriptionMask::all());
    let Verdict::Rewrite(p) = s.client_packet(&packet(32, &sub), Mode::Playback) else {
        panic!()
    };
    assert_eq!(
        decode(&p).1,
        Command::Subscribe(SubscriptionMask::SINK | SubscriptionMask::SERVER)
    );
}

fn record_params() -> RecordStreamParams {
    RecordStreamParams {
        sample_spec: SampleSpec {
            format: pa::SampleFormat::S16Le,
            sample_rate: 48000,
            channels: 1,
        },
        channel_map: ChannelMap::mono(),
        ..Default::default()
    }
}

#[test]
fn recording_needs_full() {
    let n = Arc::new(AtomicUsize::new(0));
    let mut s = authed(&n);
    let rec = Command::CreateRecordStream(record_params());
    assert!(matches!(
        s.client_packet(&packet(2, &rec), Mode::Playback),
        Verdict::Refuse { .. }
    ));
    assert!(!s.records());
    assert_eq!(n.load(Ordering::Relaxed), 0);
    assert!(matches!(
        s.client_packet(&packet(3, &rec), Mode::Full),
        Verdict::Rewrite(_)
    ));
    assert!(s.records(), "asked for: a step down to playback cuts it");
    // Recording straight from another client's stream: refused.
    let mut direct = record_params();
    direct.direct_on_input_index = Some(99);
    assert!(matches!(
        s.client_packet(&packet(4, &Command::CreateRecordStream(direct)), Mode::Full),
        Verdict::Refuse { .. }
    ));
}

#[test]
fn garbage_floods_and_too_many_streams_cut_the_connection() {
    let n = Arc::new(AtomicUsize::new(0));
    let mut s = session(&n);
    // Before AUTH, nothing else.
    let early = packet(1, &Command::GetServerInfo);
    assert!(matches!(
        s.client_packet(&early, Mode::Playback),
        Verdict::Close(_)
    ));
    let mut s = authed(&n);
    // An unknown command tag, and a truncated tagstruct.
    let mut bad = Vec::new();
    let mut w = TagStructWriter::new(&mut bad, V);
    w.write_u32(250).unwrap();
    w.write_u32(9).unwrap();
    assert!(matches!(
        s.client_packet(&wire::command_packet(&bad), Mode::Playback),
        Verdict::Close(_)
    ));
    let p = packet(9, &Command::CreatePlaybackStream(playback_params("x")));
    let cut = wire::command_packet(&p[DESCRIPTOR..p.len() - 3]);
    assert!(matches!(
        s.client_packet(&cut, Mode::Playback),
        Verdict::Close(_)
    ));
    // Trailing bytes the decoder does not read: refused, not passed on.
    let mut long = p[DESCRIPTOR..].to_vec();
    long.extend(b"L\0\0\0\x01");
    assert!(matches!(
        s.client_packet(&wire::command_packet(&long), Mode::Playback),
        Verdict::Refuse { .. }
    ));
    // The VM's stream limit, shared by its connections.
    let mut other = authed(&n);
    for i in 0..Limits::default().streams as u32 {
        let who = if i % 2 == 0 { &mut s } else { &mut other };
        open_playback(who, 100 + i, i, 1000 + i);
    }
    let more = packet(200, &Command::CreatePlaybackStream(playback_params("x")));
    assert!(matches!(
        s.client_packet(&more, Mode::Playback),
        Verdict::Close(_)
    ));
    drop(other);
    assert_eq!(n.load(Ordering::Relaxed), Limits::default().streams / 2);
    // A flood beyond the packet rate.
    let limits = Limits {
        packets_per_s: 10,
        ..Limits::default()
    };
    let mut f = Session::new("t", limits, vec![0; COOKIE_LEN], n.clone());
    let closed = (0..100).any(|i| {
        matches!(
            f.client_packet(&packet(i, &Command::GetServerInfo), Mode::Playback),
            Verdict::Close(_)
        )
    });
    assert!(closed);
}

#[test]
fn a_killed_stream_is_forgotten() {
    let n = Arc::new(AtomicUsize::new(0));
    let mut s = authed(&n);
    open_playback(&mut s, 2, 5, 40);
    let mut ev = Vec::new();
    let mut w = TagStructWriter::new(&mut ev, V);
    w.write_u32(CommandTag::PlaybackStreamKilled as u32)
        .unwrap();
    w.write_u32(u32::MAX).unwrap();
    w.write_u32(5).unwrap();
    assert_eq!(
        s.server_packet(&wire::command_packet(&ev), Mode::Playback),
        ServerVerdict::Forward
    );
    assert_eq!(n.load(Ordering::Relaxed), 0);
    assert!(matches!(
        s.client_packet(&data(5, 0), Mode::Playback),
        Verdict::Close(_)
    ));
}

#[test]
fn names_are_tagged_once() {
    let n = Arc::new(AtomicUsize::new(0));
    let s = session(&n);
    assert_eq!(s.tagged("Firefox").to_str().unwrap(), "[browser] Firefox");
    assert_eq!(
        s.tagged("[browser] Firefox").to_str().unwrap(),
        "[browser] Firefox"
    );
    assert_eq!(s.tagged(&"x".repeat(1000)).as_bytes().len(), 256);
}

/// Found by the fuzzer: a stream of 33+ channels without a volume made the
/// encoder panic (it builds a muted volume of that many channels).
#[test]
fn a_stream_with_too_many_channels_or_no_rate_is_refused() {
    let n = Arc::new(AtomicUsize::new(0));
    let mut s = authed(&n);
    let mut p = playback_params("x");
    p.cvolume = None;
    let good = packet(2, &Command::CreatePlaybackStream(p));
    // The sample spec follows the command's tag and sequence number:
    // 'a', format, channels, rate (big-endian).
    let at = DESCRIPTOR + 10;
    assert_eq!(good[at], b'a');
    for (channels, rate) in [(33u8, 48000u32), (0, 48000), (2, 0), (2, 1_000_000)] {
        let mut bad = good.clone();
        bad[at + 2] = channels;
        bad[at + 3..at + 7].copy_from_slice(&rate.to_be_bytes());
        let v = s.client_packet(&bad, Mode::Playback);
        assert!(
            matches!(v, Verdict::Refuse { .. }),
            "{channels} {rate}: {v:?}"
        );
    }
    assert_eq!(n.load(Ordering::Relaxed), 0);
}

/// Review finding: a request number still waiting for its answer, used
/// again, matched the first answer to the second request (a sink index
/// became the client's own index; a stream went uncounted).
#[test]
fn a_request_number_in_use_cuts_the_connection() {
    let n = Arc::new(AtomicUsize::new(0));
    let mut s = authed(&n);
    let lookup = Command::LookupSink(CString::new("null").unwrap());
    assert_eq!(
        s.client_packet(&packet(7, &lookup), Mode::Playback),
        Verdict::Forward
    );
    let name = Command::SetClientName(Props::new());
    assert!(matches!(
        s.client_packet(&packet(7, &name), Mode::Playback),
        Verdict::Close(_)
    ));
}

/// Review finding: properties went to the server as the guest wrote them:
/// `filter.apply` makes PulseAudio's module-filter-apply load a module,
/// `module-stream-restore.id` aims at another app's saved volume,
/// `media.role=phone` corks other apps, PipeWire's `target.object` picks
/// any node; an update in `Set` mode dropped the tagged names.
#[test]
fn only_known_properties_pass_and_names_stay_tagged() {
    let n = Arc::new(AtomicUsize::new(0));
    let mut s = authed(&n);
    let mut p = playback_params("tone");
    for (k, v) in [
        ("filter.apply", "echo-cancel"),
        (
            "module-stream-restore.id",
            "sink-input-by-application-name:Firefox",
        ),
        ("target.object", "alsa_input.mic"),
        ("media.role", "phone"),
        ("application.name", "Firefox"),
        ("media.title", "a song"),
    ] {
        p.props
            .set_bytes(CString::new(k).unwrap(), format!("{v}\0"));
    }
    let Verdict::Rewrite(out) = s.client_packet(
        &packet(2, &Command::CreatePlaybackStream(p)),
        Mode::Playback,
    ) else {
        panic!()
    };
    let (_, Command::CreatePlaybackStream(sent)) = decode(&out) else {
        panic!()
    };
    let keys: Vec<String> = sent
        .props
        .iter()
        .map(|(k, _)| k.to_string_lossy().into_owned())
        .collect();
    assert_eq!(
        keys,
        ["application.name", "media.name", "media.title"],
        "{keys:?}"
    );
    assert_eq!(
        sent.props.get(Prop::ApplicationName),
        Some(&b"[browser] Firefox\0"[..])
    );
    // A client's update: filtered the same way, never `Set` (which would
    // drop the tagged names).
    let mut up = Props::new();
    up.set_bytes(c"filter.apply", b"ladspa\0");
    up.set(Prop::ApplicationName, c"Other");
    let cmd = Command::UpdateClientProplist(pa::UpdateClientProplistParams {
        mode: pa::props::PropsUpdateMode::Set,
        props: up,
    });
    let Verdict::Rewrite(out) = s.client_packet(&packet(3, &cmd), Mode::Playback) else {
        panic!()
    };
    let (_, Command::UpdateClientProplist(u)) = decode(&out) else {
        panic!()
    };
    assert_eq!(u.mode, pa::props::PropsUpdateMode::Replace);
    assert!(u.props.get_bytes(c"filter.apply").is_none());
    assert_eq!(
        u.props.get(Prop::ApplicationName),
        Some(&b"[browser] Other\0"[..])
    );
}

/// Review finding: `off` was treated as `playback` by the policy, so a
/// connection accepted while the switch turned kept playing.
#[test]
fn off_cuts_every_packet() {
    let n = Arc::new(AtomicUsize::new(0));
    let mut s = authed(&n);
    assert!(matches!(
        s.client_packet(&packet(2, &Command::GetServerInfo), Mode::Off),
        Verdict::Close(_)
    ));
}

/// Review finding: an arbitrary's length comes from the guest and the
/// decoder allocates it before reading (up to 4 GiB): a length past the
/// packet is refused before decoding.
#[test]
fn an_arbitrary_longer_than_its_packet_is_refused_before_decoding() {
    let n = Arc::new(AtomicUsize::new(0));
    let mut s = session(&n);
    let auth = Command::Auth(AuthParams {
        version: V,
        supports_shm: false,
        supports_memfd: false,
        cookie: vec![0; COOKIE_LEN],
    });
    let mut p = packet(1, &auth);
    // 'x', then the length: make it 4 GiB - 1.
    let at = p.iter().rposition(|b| *b == b'x').unwrap();
    p[at + 1..at + 5].copy_from_slice(&u32::MAX.to_be_bytes());
    assert!(!tagstruct_fits(&p[DESCRIPTOR..]));
    assert!(matches!(
        s.client_packet(&p, Mode::Playback),
        Verdict::Close(_)
    ));
    assert!(tagstruct_fits(&packet(1, &auth)[DESCRIPTOR..]));
}

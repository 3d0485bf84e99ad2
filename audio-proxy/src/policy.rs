//! What a VM's audio client may say to the host's sound server: each
//! command from the guest is parsed whole (the `pulseaudio` crate's
//! decoder) and checked against the VM's [`Mode`]; what passes goes on as
//! it came, or rewritten where the policy changes it (no shared memory, the
//! host's cookie, the VM's tag on names, capped buffers, a narrower
//! subscription). Replies and events from the server are read where they
//! tell which streams are this connection's.

use std::collections::HashMap;
use std::ffi::CString;
use std::io::Cursor;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Instant;

use pulseaudio::protocol::{
    self as pa, stream::BufferAttr, Command, CommandTag, CreatePlaybackStreamReply,
    CreateRecordStreamReply, Prop, Props, PulseError, SubscriptionMask, TagStructRead,
    TagStructReader, TagStructWriter,
};

use crate::wire::{self, Descriptor, DESCRIPTOR};

/// The lowest protocol version the proxy speaks (PulseAudio 0.9.11).
pub const MIN_VERSION: u16 = pa::MIN_VERSION;
/// The highest: a newer client is told this one (what the decoder knows).
pub const MAX_VERSION: u16 = pa::MAX_VERSION;

/// The audio switch of a VM.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mode {
    /// No connection reaches the server.
    Off,
    /// Playback streams only.
    Playback,
    /// Playback and record streams.
    Full,
}

/// Errors of this module.
#[derive(Debug, thiserror::Error)]
pub enum PolicyError {
    /// Not `off`, `playback` or `full`.
    #[error("unknown audio mode {0:?} (off, playback or full)")]
    BadMode(String),
}

impl std::str::FromStr for Mode {
    type Err = PolicyError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "off" => Ok(Mode::Off),
            "playback" => Ok(Mode::Playback),
            "full" => Ok(Mode::Full),
            other => Err(PolicyError::BadMode(other.to_string())),
        }
    }
}

impl std::fmt::Display for Mode {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Mode::Off => "off",
            Mode::Playback => "playback",
            Mode::Full => "full",
        })
    }
}

/// Bounds on what one VM may ask for.
#[derive(Debug, Clone, Copy)]
pub struct Limits {
    /// Largest command packet from the guest.
    pub command_bytes: usize,
    /// Largest audio data packet from the guest.
    pub data_bytes: usize,
    /// Streams open at once in the whole VM.
    pub streams: usize,
    /// Largest buffer attribute (`maxlength`, `tlength`, …), in bytes.
    pub buffer_bytes: u32,
    /// Highest sample rate.
    pub rate: u32,
    /// Packets per second from one connection, sustained.
    pub packets_per_s: u32,
    /// Requests awaiting the server's answer on one connection.
    pub pending: usize,
    /// Connections open at once in the whole VM (each is one to the host's
    /// server, which may serve few: PulseAudio takes 64 in all).
    pub connections: usize,
}

impl Default for Limits {
    fn default() -> Self {
        Self {
            command_bytes: 64 << 10,
            data_bytes: 1 << 20,
            streams: 16,
            // PulseAudio's own MAX_MEMBLOCKQ_LENGTH.
            buffer_bytes: 4 << 20,
            rate: 384_000,
            packets_per_s: 4000,
            pending: 256,
            connections: 16,
        }
    }
}

impl Limits {
    /// The guest side's packet sizes.
    pub fn sizes(&self) -> wire::Sizes {
        wire::Sizes {
            command: self.command_bytes,
            data: self.data_bytes,
        }
    }
}

/// What becomes of a packet from the guest.
#[derive(Debug, PartialEq, Eq)]
pub enum Verdict {
    /// It goes to the server as it came.
    Forward,
    /// This packet goes to the server instead.
    Rewrite(Vec<u8>),
    /// Not sent; the guest gets this packet (an error reply) instead.
    Refuse {
        /// The error reply.
        reply: Vec<u8>,
        /// Why, for the log.
        why: String,
    },
    /// The connection is cut off.
    Close(String),
}

/// What becomes of a packet from the server.
#[derive(Debug, PartialEq, Eq)]
pub enum ServerVerdict {
    /// It goes to the guest as it came.
    Forward,
    /// This packet goes to the guest instead.
    Rewrite(Vec<u8>),
    /// Not passed on.
    Drop,
}

/// A request whose answer tells the proxy something.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Pending {
    Auth,
    ClientName,
    Playback,
    Record,
    Other,
}

/// Sustained rate with a burst of twice the rate.
#[derive(Debug)]
struct Bucket {
    tokens: f64,
    last: Instant,
    rate: f64,
}

impl Bucket {
    fn new(rate: u32) -> Self {
        Self {
            tokens: 2.0 * f64::from(rate),
            last: Instant::now(),
            rate: f64::from(rate),
        }
    }

    fn take(&mut self) -> bool {
        let now = Instant::now();
        let dt = now.duration_since(self.last).as_secs_f64();
        self.last = now;
        self.tokens = (self.tokens + dt * self.rate).min(2.0 * self.rate);
        if self.tokens >= 1.0 {
            self.tokens -= 1.0;
            true
        } else {
            false
        }
    }
}

/// One guest connection's state: what it negotiated and which streams
/// are its own.
#[derive(Debug)]
pub struct Session {
    tag: String,
    limits: Limits,
    cookie: Vec<u8>,
    /// The client's version (clamped) until the server answers AUTH, then
    /// the negotiated one; 0 before AUTH.
    version: u16,
    pending: HashMap<u32, Pending>,
    /// Playback channel → sink input index.
    playback: HashMap<u32, u32>,
    /// Record channel → source output index.
    record: HashMap<u32, u32>,
    client_index: Option<u32>,
    /// Streams of the whole VM (shared by its connections).
    vm_streams: Arc<AtomicUsize>,
    /// Streams this connection counts in `vm_streams` (asked for or open).
    counted: usize,
    bucket: Bucket,
}

impl Drop for Session {
    fn drop(&mut self) {
        self.vm_streams.fetch_sub(self.counted, Ordering::Relaxed);
    }
}

/// PulseAudio's channel limit (PA_CHANNELS_MAX).
pub const MAX_CHANNELS: u8 = 32;

/// PulseAudio's cookie length.
pub const COOKIE_LEN: usize = 256;

impl Session {
    /// A new connection of the VM tagged `tag`; `cookie` is what the
    /// server gets in AUTH instead of the guest's (the host user's cookie,
    /// or zeros where the server trusts the proxy's uid).
    pub fn new(tag: &str, limits: Limits, cookie: Vec<u8>, vm_streams: Arc<AtomicUsize>) -> Self {
        Self {
            tag: tag.to_string(),
            limits,
            cookie,
            version: 0,
            pending: HashMap::new(),
            playback: HashMap::new(),
            record: HashMap::new(),
            client_index: None,
            vm_streams,
            counted: 0,
            bucket: Bucket::new(limits.packets_per_s),
        }
    }

    /// Whether the connection has a record stream (asked for or open).
    pub fn records(&self) -> bool {
        !self.record.is_empty() || self.pending.values().any(|p| *p == Pending::Record)
    }

    /// The negotiated protocol version (0 before AUTH).
    pub fn version(&self) -> u16 {
        self.version
    }

    /// Checks one whole packet (descriptor included) from the guest.
    pub fn client_packet(&mut self, packet: &[u8], mode: Mode) -> Verdict {
        if !self.bucket.take() {
            return Verdict::Close(format!("more than {} packets/s", self.limits.packets_per_s));
        }
        let Some(head) = packet.first_chunk::<DESCRIPTOR>() else {
            return Verdict::Close("a packet shorter than its descriptor".into());
        };
        let d = Descriptor::parse(head);
        if d.length as usize != packet.len() - DESCRIPTOR {
            return Verdict::Close("a packet whose length disagrees with its descriptor".into());
        }
        if d.is_command() {
            self.client_command(&packet[DESCRIPTOR..], mode)
        } else {
            self.client_data(&d, mode)
        }
    }

    /// Audio data: only for this connection's playback streams, no shared
    /// memory (its release/revoke flags), a valid seek mode.
    fn client_data(&self, d: &Descriptor, mode: Mode) -> Verdict {
        if mode == Mode::Off {
            return Verdict::Close("the VM's audio is off".into());
        }
        if self.version == 0 {
            return Verdict::Close("data before AUTH".into());
        }
        if !self.playback.contains_key(&d.channel) {
            return Verdict::Close(format!(
                "data for channel {}, not its playback stream",
                d.channel
            ));
        }
        if d.flags & !0xff != 0 || d.flags & 0xff > 3 {
            return Verdict::Close(format!("data with flags {:#x}", d.flags));
        }
        Verdict::Forward
    }

    fn client_command(&mut self, payload: &[u8], mode: Mode) -> Verdict {
        if mode == Mode::Off {
            return Verdict::Close("the VM's audio is off".into());
        }
        if !tagstruct_fits(payload) {
            return Verdict::Close("a command whose values do not fit in it".into());
        }
        let parse_version = if self.version == 0 {
            MAX_VERSION
        } else {
            self.version
        };
        let mut cur = Cursor::new(payload);
        // The decoder must not take the proxy down on hostile input: a
        // panic in it counts as a malformed command.
        let parsed = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
            Command::read_tag_prefixed(&mut cur, parse_version)
        }));
        let (seq, cmd) = match parsed {
            Ok(Ok(c)) => c,
            Ok(Err(e)) => return Verdict::Close(format!("a malformed or unknown command: {e}")),
            Err(_) => return Verdict::Close("a malformed command (the decoder gave up)".into()),
        };
        if self.pending.len() >= self.limits.pending {
            return Verdict::Close(format!(
                "{} requests without reading the answers",
                self.limits.pending
            ));
        }
        if self.pending.contains_key(&seq) {
            // Its answer would be taken for the earlier request's.
            return Verdict::Close(format!("request {seq} sent again before its answer"));
        }
        if self.version == 0 && !matches!(cmd, Command::Auth(_)) {
            return Verdict::Close("a command before AUTH".into());
        }
        let whole = cur.position() as usize == payload.len();
        if !whole {
            // What the decoder does not read would be passed on unchecked
            // (or dropped in a rewrite).
            return self.refuse(
                seq,
                PulseError::NotSupported,
                "a command with more than the proxy reads",
            );
        }
        match self.decide(cmd, mode) {
            Decision::Forward(p) => {
                self.pending.insert(seq, p);
                Verdict::Forward
            }
            Decision::Rewrite(p, cmd) => match self.encode(seq, &cmd) {
                Ok(bytes) => {
                    self.pending.insert(seq, p);
                    Verdict::Rewrite(bytes)
                }
                Err(e) => Verdict::Close(format!("cannot re-encode: {e}")),
            },
            Decision::Refuse(err, why) => self.refuse(seq, err, why),
            Decision::Close(why) => Verdict::Close(why),
        }
    }

    fn refuse(&self, seq: u32, err: PulseError, why: &str) -> Verdict {
        match self.encode(seq, &Command::Error(err)) {
            Ok(reply) => Verdict::Refuse {
                reply,
                why: why.to_string(),
            },
            Err(e) => Verdict::Close(format!("{why} (and the refusal failed: {e})")),
        }
    }

    fn encode(&self, seq: u32, cmd: &Command) -> Result<Vec<u8>, pa::ProtocolError> {
        let mut v = Vec::new();
        let version = self.version.max(MIN_VERSION);
        // As with decoding: a panic in the encoder cuts the connection, not
        // the proxy.
        std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
            pa::write_command_message(&mut v, seq, cmd, version)
        }))
        .unwrap_or_else(|_| Err(pa::ProtocolError::Invalid("the encoder gave up".into())))?;
        Ok(v)
    }

    /// The policy proper: the command's family decides, the rest is
    /// refused.
    fn decide(&mut self, cmd: Command, mode: Mode) -> Decision {
        let full = mode == Mode::Full;
        let handled = self
            .connection_command(cmd, full)
            .or_else(|c| self.playback_command(*c))
            .or_else(|c| self.record_command(*c, full));
        match handled {
            Ok(d) => d,
            // Replies and events are the server's to send.
            Err(c) if matches!(*c, Command::Error(_) | Command::Reply | Command::Timeout) => {
                Decision::Close("a reply or error the server did not ask for".into())
            }
            // Everything else: modules, defaults, other clients and their
            // streams, device volumes and ports, cards, samples, suspend,
            // exit, extensions, and recording outside `full`.
            Err(other) => Decision::Refuse(PulseError::AccessDenied, name(&other)),
        }
    }

    /// The connection itself: AUTH, names, what the server and its sinks
    /// are, subscriptions.
    fn connection_command(&mut self, cmd: Command, full: bool) -> Result<Decision, Box<Command>> {
        use Command as C;
        Ok(match cmd {
            C::Auth(a) => self.auth(a),
            C::SetClientName(props) => {
                let mut props = allowed_props(&props);
                self.tag_prop(&mut props, Prop::ApplicationName, "app");
                rewrite(Pending::ClientName, C::SetClientName(props))
            }
            C::UpdateClientProplist(mut p) => {
                p.mode = update_mode(p.mode);
                p.props = allowed_props(&p.props);
                if p.props.get(Prop::ApplicationName).is_some() {
                    self.tag_prop(&mut p.props, Prop::ApplicationName, "app");
                }
                rewrite(Pending::Other, C::UpdateClientProplist(p))
            }
            C::GetClientInfo(i) if Some(i) == self.client_index => {
                Decision::Forward(Pending::Other)
            }
            C::GetServerInfo | C::GetSinkInfo(_) | C::GetSinkInfoList | C::LookupSink(_) => {
                Decision::Forward(Pending::Other)
            }
            C::GetSourceInfo(_) | C::GetSourceInfoList | C::LookupSource(_) if full => {
                Decision::Forward(Pending::Other)
            }
            C::Subscribe(mask) => {
                let mut allowed = SubscriptionMask::SINK | SubscriptionMask::SERVER;
                if full {
                    allowed |= SubscriptionMask::SOURCE;
                }
                rewrite(Pending::Other, C::Subscribe(mask & allowed))
            }
            other => return Err(Box::new(other)),
        })
    }

    /// AUTH, once: no shared memory (no fds cross vsock: audio travels in
    /// the stream), the host's cookie, a version the decoder knows.
    fn auth(&mut self, mut a: pa::AuthParams) -> Decision {
        if self.version != 0 {
            return Decision::Close("a second AUTH".into());
        }
        if a.version < MIN_VERSION {
            return Decision::Close(format!("protocol version {} is too old", a.version));
        }
        a.version = a.version.min(MAX_VERSION);
        a.supports_shm = false;
        a.supports_memfd = false;
        a.cookie = self.cookie.clone();
        self.version = a.version;
        rewrite(Pending::Auth, Command::Auth(a))
    }

    /// Playback streams: new ones checked, capped and tagged; the rest only
    /// on this connection's own streams and sink inputs.
    fn playback_command(&mut self, cmd: Command) -> Result<Decision, Box<Command>> {
        use Command as C;
        let other = || Pending::Other;
        Ok(match cmd {
            C::CreatePlaybackStream(mut p) => {
                if let Some(bad) = self.check_spec(&p.sample_spec) {
                    return Ok(bad);
                }
                if let Some(close) = self.count_stream() {
                    return Ok(close);
                }
                self.cap(&mut p.buffer_attr);
                self.tag_stream(&mut p.props, "playback");
                rewrite(Pending::Playback, C::CreatePlaybackStream(p))
            }
            C::DeletePlaybackStream(ch) => self.on_playback(ch, other, |s| s.forget(true, ch)),
            C::DrainPlaybackStream(ch)
            | C::FlushPlaybackStream(ch)
            | C::TriggerPlaybackStream(ch)
            | C::PrebufPlaybackStream(ch)
            | C::RemovePlaybackStreamProplist(ch) => self.on_playback(ch, other, |_| ()),
            C::GetPlaybackLatency(ref p) => self.on_playback(p.channel, other, |_| ()),
            C::CorkPlaybackStream(ref p) => self.on_playback(p.channel, other, |_| ()),
            C::SetPlaybackStreamName(mut p) => {
                if !self.playback.contains_key(&p.index) {
                    return Ok(not_its_own());
                }
                p.name = self.tagged(&p.name.to_string_lossy());
                rewrite(Pending::Other, C::SetPlaybackStreamName(p))
            }
            C::SetPlaybackStreamBufferAttr(mut p) => {
                if !self.playback.contains_key(&p.index) {
                    return Ok(not_its_own());
                }
                self.cap(&mut p.buffer_attr);
                rewrite(Pending::Other, C::SetPlaybackStreamBufferAttr(p))
            }
            C::UpdatePlaybackStreamProplist(mut p) => {
                if !self.playback.contains_key(&p.index) {
                    return Ok(not_its_own());
                }
                p.mode = update_mode(p.mode);
                p.props = allowed_props(&p.props);
                self.retag(&mut p.props);
                rewrite(Pending::Other, C::UpdatePlaybackStreamProplist(p))
            }
            C::UpdatePlaybackStreamSampleRate(ref p) => {
                if p.sample_rate == 0 || p.sample_rate > self.limits.rate {
                    return Ok(Decision::Refuse(
                        PulseError::Invalid,
                        "a sample rate out of range",
                    ));
                }
                self.on_playback(p.index, other, |_| ())
            }
            C::SetSinkInputVolume(ref p) => self.on_sink_input(p.index),
            C::SetSinkInputMute(ref p) => self.on_sink_input(p.index),
            C::GetSinkInputInfo(i) => self.on_sink_input(i),
            other => return Err(Box::new(other)),
        })
    }

    /// Record streams, in `full` only, on this connection's own streams.
    fn record_command(&mut self, cmd: Command, full: bool) -> Result<Decision, Box<Command>> {
        use Command as C;
        if !full {
            return Err(Box::new(cmd));
        }
        Ok(match cmd {
            C::CreateRecordStream(p) => self.create_record(p),
            C::DeleteRecordStream(ch) => self.on_record(ch, |s| s.forget(false, ch)),
            C::CorkRecordStream(ref p) => self.on_record(p.channel, |_| ()),
            C::FlushRecordStream(ch) | C::RemoveRecordStreamProplist(ch) => {
                self.on_record(ch, |_| ())
            }
            C::GetRecordLatency(ref p) => self.on_record(p.channel, |_| ()),
            C::SetRecordStreamName(mut p) => {
                if !self.record.contains_key(&p.index) {
                    return Ok(not_its_own());
                }
                p.name = self.tagged(&p.name.to_string_lossy());
                rewrite(Pending::Other, C::SetRecordStreamName(p))
            }
            C::SetRecordStreamBufferAttr(mut p) => {
                if !self.record.contains_key(&p.index) {
                    return Ok(not_its_own());
                }
                self.cap(&mut p.buffer_attr);
                rewrite(Pending::Other, C::SetRecordStreamBufferAttr(p))
            }
            C::UpdateRecordStreamProplist(mut p) => {
                if !self.record.contains_key(&p.index) {
                    return Ok(not_its_own());
                }
                p.mode = update_mode(p.mode);
                p.props = allowed_props(&p.props);
                self.retag(&mut p.props);
                rewrite(Pending::Other, C::UpdateRecordStreamProplist(p))
            }
            C::UpdateRecordStreamSampleRate(ref p) => {
                if p.sample_rate == 0 || p.sample_rate > self.limits.rate {
                    return Ok(Decision::Refuse(
                        PulseError::Invalid,
                        "a sample rate out of range",
                    ));
                }
                self.on_record(p.index, |_| ())
            }
            C::SetSourceOutputVolume(ref p) => self.on_source_output(p.index),
            C::SetSourceOutputMute(ref p) => self.on_source_output(p.index),
            C::GetSourceOutputInfo(i) => self.on_source_output(i),
            other => return Err(Box::new(other)),
        })
    }

    /// A record stream: not straight from another client's stream; checked,
    /// capped and tagged.
    fn create_record(&mut self, mut p: pa::RecordStreamParams) -> Decision {
        if let Some(bad) = self.check_spec(&p.sample_spec) {
            return bad;
        }
        if p.direct_on_input_index
            .is_some_and(|i| !self.owns_sink_input(i))
        {
            return Decision::Refuse(
                PulseError::AccessDenied,
                "recording another client's stream",
            );
        }
        if let Some(close) = self.count_stream() {
            return close;
        }
        self.cap(&mut p.buffer_attr);
        self.tag_stream(&mut p.props, "record");
        rewrite(Pending::Record, Command::CreateRecordStream(p))
    }

    /// A new stream's channels and rate within PulseAudio's bounds (the
    /// encoder builds a volume of that many channels: more than 32 panicked
    /// it).
    fn check_spec(&self, spec: &pa::SampleSpec) -> Option<Decision> {
        let channels_ok = (1..=MAX_CHANNELS).contains(&spec.channels);
        let rate_ok = (1..=self.limits.rate).contains(&spec.sample_rate);
        (!channels_ok || !rate_ok).then_some(Decision::Refuse(
            PulseError::Invalid,
            "a stream with no channels, more than 32, or a rate out of range",
        ))
    }

    fn count_stream(&mut self) -> Option<Decision> {
        let n = self.vm_streams.fetch_add(1, Ordering::Relaxed);
        if n >= self.limits.streams {
            self.vm_streams.fetch_sub(1, Ordering::Relaxed);
            return Some(Decision::Close(format!(
                "more than {} streams in the VM",
                self.limits.streams
            )));
        }
        self.counted += 1;
        None
    }

    fn uncount_stream(&mut self) {
        if self.counted > 0 {
            self.counted -= 1;
            self.vm_streams.fetch_sub(1, Ordering::Relaxed);
        }
    }

    fn forget(&mut self, playback: bool, ch: u32) {
        let gone = if playback {
            self.playback.remove(&ch)
        } else {
            self.record.remove(&ch)
        };
        if gone.is_some() {
            self.uncount_stream();
        }
    }

    fn on_playback(
        &mut self,
        ch: u32,
        p: impl FnOnce() -> Pending,
        then: impl FnOnce(&mut Self),
    ) -> Decision {
        if !self.playback.contains_key(&ch) {
            return not_its_own();
        }
        then(self);
        Decision::Forward(p())
    }

    fn on_record(&mut self, ch: u32, then: impl FnOnce(&mut Self)) -> Decision {
        if !self.record.contains_key(&ch) {
            return not_its_own();
        }
        then(self);
        Decision::Forward(Pending::Other)
    }

    fn owns_sink_input(&self, i: u32) -> bool {
        self.playback.values().any(|v| *v == i)
    }

    fn on_sink_input(&self, i: u32) -> Decision {
        if self.owns_sink_input(i) {
            Decision::Forward(Pending::Other)
        } else {
            not_its_own()
        }
    }

    fn on_source_output(&self, i: u32) -> Decision {
        if self.record.values().any(|v| *v == i) {
            Decision::Forward(Pending::Other)
        } else {
            not_its_own()
        }
    }

    /// Caps every buffer attribute (`u32::MAX` asks for the server's
    /// default and stays).
    fn cap(&self, b: &mut BufferAttr) {
        let max = self.limits.buffer_bytes;
        for v in [
            &mut b.max_length,
            &mut b.target_length,
            &mut b.pre_buffering,
            &mut b.minimum_request_length,
            &mut b.fragment_size,
        ] {
            if *v != u32::MAX && *v > max {
                *v = max;
            }
        }
    }

    /// `[tag] name`, at most 256 characters, no NUL.
    fn tagged(&self, name: &str) -> CString {
        let prefix = format!("[{}] ", self.tag);
        let name = name.strip_prefix(&prefix).unwrap_or(name);
        let s: String = format!("{prefix}{name}")
            .chars()
            .filter(|c| *c != '\0')
            .take(256)
            .collect();
        CString::new(s).unwrap_or_default()
    }

    /// A new stream's properties: the known ones only; its name and the
    /// client's it carries tagged.
    fn tag_stream(&self, props: &mut Props, fallback: &str) {
        *props = allowed_props(props);
        self.tag_prop(props, Prop::MediaName, fallback);
        self.retag(props);
    }

    /// The names an update carries, tagged.
    fn retag(&self, props: &mut Props) {
        for (p, fallback) in [(Prop::MediaName, "stream"), (Prop::ApplicationName, "app")] {
            if props.get(p).is_some() {
                self.tag_prop(props, p, fallback);
            }
        }
    }

    fn tag_prop(&self, props: &mut Props, prop: Prop, fallback: &str) {
        let current = props
            .get(prop)
            .map(|b| {
                let b = b.split(|c| *c == 0).next().unwrap_or_default();
                String::from_utf8_lossy(b).into_owned()
            })
            .filter(|s| !s.is_empty())
            .unwrap_or_else(|| fallback.to_string());
        props.set(prop, self.tagged(&current));
    }

    /// Checks one whole packet from the server (the user's own, trusted
    /// for its form, read for what it tells about this connection).
    pub fn server_packet(&mut self, packet: &[u8], mode: Mode) -> ServerVerdict {
        let Some(head) = packet.first_chunk::<DESCRIPTOR>() else {
            return ServerVerdict::Drop;
        };
        let d = Descriptor::parse(head);
        if !d.is_command() {
            // Recorded audio, for this connection's record streams only.
            return if mode == Mode::Full && self.record.contains_key(&d.channel) {
                ServerVerdict::Forward
            } else {
                ServerVerdict::Drop
            };
        }
        let payload = &packet[DESCRIPTOR..];
        let mut cur = Cursor::new(payload);
        let mut ts = TagStructReader::new(&mut cur, self.version.max(MIN_VERSION));
        let (Ok(tag), Ok(seq)) = (ts.read_u32(), ts.read_u32()) else {
            return ServerVerdict::Drop;
        };
        if tag == CommandTag::Reply as u32 || tag == CommandTag::Error as u32 {
            let Some(p) = self.pending.remove(&seq) else {
                return ServerVerdict::Forward;
            };
            if tag == CommandTag::Error as u32 {
                if matches!(p, Pending::Playback | Pending::Record) {
                    self.uncount_stream();
                }
                return ServerVerdict::Forward;
            }
            return self.reply(p, seq, &mut ts);
        }
        self.server_event(tag, &mut ts)
    }

    fn reply(&mut self, p: Pending, seq: u32, ts: &mut TagStructReader<'_>) -> ServerVerdict {
        let v = self.version.max(MIN_VERSION);
        match p {
            Pending::Auth => {
                let Ok(server) = ts.read_u32() else {
                    return ServerVerdict::Drop;
                };
                self.version = self.version.min((server & 0xffff) as u16).max(MIN_VERSION);
                // The guest is told the server has no shared memory either.
                let mut out = Vec::new();
                let mut w = TagStructWriter::new(&mut out, self.version);
                let ok = w.write_u32(CommandTag::Reply as u32).is_ok()
                    && w.write_u32(seq).is_ok()
                    && w.write_u32(server & 0xffff).is_ok();
                if ok {
                    ServerVerdict::Rewrite(wire::command_packet(&out))
                } else {
                    ServerVerdict::Drop
                }
            }
            Pending::ClientName => {
                self.client_index = ts.read_u32().ok();
                ServerVerdict::Forward
            }
            Pending::Playback => {
                if let Ok(r) = CreatePlaybackStreamReply::read(ts, v) {
                    self.playback.insert(r.channel, r.stream_index);
                } else {
                    self.uncount_stream();
                }
                ServerVerdict::Forward
            }
            Pending::Record => {
                if let Ok(r) = CreateRecordStreamReply::read(ts, v) {
                    self.record.insert(r.channel, r.stream_index);
                } else {
                    self.uncount_stream();
                }
                ServerVerdict::Forward
            }
            Pending::Other => ServerVerdict::Forward,
        }
    }

    fn server_event(&mut self, tag: u32, ts: &mut TagStructReader<'_>) -> ServerVerdict {
        if tag == CommandTag::PlaybackStreamKilled as u32 {
            if let Ok(ch) = ts.read_u32() {
                self.forget(true, ch);
            }
        } else if tag == CommandTag::RecordStreamKilled as u32 {
            if let Ok(ch) = ts.read_u32() {
                self.forget(false, ch);
            }
        } else if tag == CommandTag::EnableSrbchannel as u32
            || tag == CommandTag::RegisterMemfdShmid as u32
        {
            // Shared memory, which cannot cross: never offered on.
            return ServerVerdict::Drop;
        }
        ServerVerdict::Forward
    }
}

/// A decision before encoding.
enum Decision {
    Forward(Pending),
    Rewrite(Pending, Box<Command>),
    Refuse(PulseError, &'static str),
    Close(String),
}

/// Properties a guest may set: names, descriptions and icons of its
/// client and streams, a media role that does not cork others. Everything
/// else is dropped: module-filter-apply loads a module for `filter.apply`,
/// `module-stream-restore.id` and `application.id` address other apps'
/// saved settings, PipeWire's `target.object`/`node.*` pick any node.
const ALLOWED_PROPS: &[&str] = &[
    "application.name",
    "application.version",
    "application.icon_name",
    "application.language",
    "media.name",
    "media.title",
    "media.artist",
    "media.copyright",
    "media.software",
    "media.language",
    "media.icon_name",
    "media.role",
    "event.id",
    "event.description",
];

/// Roles that module-role-cork does not act on.
const ALLOWED_ROLES: &[&[u8]] = &[
    b"video\0",
    b"music\0",
    b"game\0",
    b"event\0",
    b"animation\0",
    b"production\0",
    b"a11y\0",
    b"test\0",
];

fn allowed_props(props: &Props) -> Props {
    let mut out = Props::new();
    for (k, v) in props.iter() {
        let key = k.to_bytes();
        let known = ALLOWED_PROPS.iter().any(|a| a.as_bytes() == key);
        let role_ok = key != b"media.role" || ALLOWED_ROLES.contains(&&v[..]);
        if known && role_ok {
            out.set_bytes(k, v);
        }
    }
    out
}

/// `Set` replaces the whole list, tagged names included: it becomes
/// `Replace` (the names it carries are tagged).
fn update_mode(m: pa::props::PropsUpdateMode) -> pa::props::PropsUpdateMode {
    match m {
        pa::props::PropsUpdateMode::Set => pa::props::PropsUpdateMode::Replace,
        other => other,
    }
}

fn rewrite(p: Pending, c: Command) -> Decision {
    Decision::Rewrite(p, Box::new(c))
}

fn not_its_own() -> Decision {
    Decision::Refuse(
        PulseError::NoEntity,
        "a stream, client or index that is not this connection's",
    )
}

/// A refused command's name, for the log.
fn name(c: &Command) -> &'static str {
    use Command as C;
    match c {
        C::LoadModule(_) | C::UnloadModule(_) => "loading or unloading a module",
        C::SetDefaultSink(_) | C::SetDefaultSource(_) => "changing the default device",
        C::KillClient(_) | C::KillSinkInput(_) | C::KillSourceOutput(_) => {
            "killing a client or stream"
        }
        C::MoveSinkInput(_) | C::MoveSourceOutput(_) => "moving a stream",
        C::SetSinkVolume(_) | C::SetSourceVolume(_) | C::SetSinkMute(_) | C::SetSourceMute(_) => {
            "changing a device's volume"
        }
        C::GetClientInfo(_) | C::GetClientInfoList => "listing other clients",
        C::GetSinkInputInfoList | C::GetSourceOutputInfoList => "listing other streams",
        C::SuspendSink(_) | C::SuspendSource(_) => "suspending a device",
        C::Exit => "stopping the server",
        C::CreateRecordStream(_)
        | C::GetSourceInfo(_)
        | C::GetSourceInfoList
        | C::LookupSource(_) => "recording (the VM's audio is playback only)",
        _ => "a command the policy does not allow",
    }
}

#[cfg(test)]
mod tests;

/// Whether every value of a tagstruct lies inside it: the decoder
/// allocates an arbitrary's length (up to 4 GiB, from the guest) before it
/// reads, so lengths are checked first. Unknown tags fail too.
pub fn tagstruct_fits(payload: &[u8]) -> bool {
    let mut rest = payload;
    let take = |rest: &mut &[u8], n: usize| -> Option<()> {
        *rest = rest.get(n..)?;
        Some(())
    };
    let mut fits = || -> Option<()> {
        while let Some((&tag, tail)) = rest.split_first() {
            rest = tail;
            match tag {
                b'N' | b'1' | b'0' | b'P' | b'f' => {}
                b'B' => take(&mut rest, 1)?,
                b'L' | b'V' => take(&mut rest, 4)?,
                b'R' | b'r' | b'T' | b'U' => take(&mut rest, 8)?,
                b'a' => take(&mut rest, 6)?,
                b't' => {
                    let end = rest.iter().position(|b| *b == 0)?;
                    take(&mut rest, end + 1)?;
                }
                b'x' => {
                    let len = u32::from_be_bytes(*rest.first_chunk::<4>()?) as usize;
                    take(&mut rest, 4usize.checked_add(len)?)?;
                }
                b'm' => {
                    let n = *rest.first()? as usize;
                    take(&mut rest, 1 + n)?;
                }
                b'v' => {
                    let n = *rest.first()? as usize;
                    take(&mut rest, 1 + 4 * n)?;
                }
                _ => return None,
            }
        }
        Some(())
    };
    fits().is_some()
}

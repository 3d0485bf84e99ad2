//! Desktop integration's wire format: what the guest's session-bus services
//! (notifications, the portal's file chooser, links, settings) ask of the
//! host's broker over one vsock stream, and its answers.
//!
//! Each frame is `len: u32` (little-endian, the bytes after it, at most
//! [`MAX_FRAME`]), `kind: u8`, `id: u32` (the guest's request number, echoed
//! in the answer), then the kind's fields: strings as `len: u16` + UTF-8,
//! integers little-endian. Nothing else crosses: no D-Bus, no fds. A frame
//! that does not parse exactly (short, long, bad UTF-8, unknown kind, a count
//! past its bound) is an error; the peer that sent it is cut off.

use thiserror::Error;

/// The host port the guest connects to (vsock, CID 2).
pub const PORT: u32 = 1028;

/// Largest frame (after its length field).
pub const MAX_FRAME: usize = 64 * 1024;

/// Longest string field (bytes): longer ones are refused, never cut (a cut
/// path or link would name something else); a guest service shortens
/// notification text itself.
pub const MAX_STR: usize = 16 * 1024;

/// Most paths one file-chooser answer carries.
pub const MAX_PATHS: usize = 64;

/// Why a frame was refused.
#[derive(Debug, Error, PartialEq, Eq)]
pub enum DesktopError {
    /// Fewer bytes than the frame's fields need.
    #[error("frame too short")]
    Short,
    /// Bytes left over after the kind's fields.
    #[error("{0} stray bytes after the frame's fields")]
    Trailing(usize),
    /// A length past [`MAX_FRAME`].
    #[error("frame of {0} bytes is larger than {MAX_FRAME}")]
    TooLarge(usize),
    /// A string that is not UTF-8.
    #[error("a string is not UTF-8")]
    Utf8,
    /// A kind this side does not take.
    #[error("unknown frame kind {0:#x}")]
    Kind(u8),
    /// A field out of its range.
    #[error("bad field: {0}")]
    Field(&'static str),
}

/// A notification's urgency (freedesktop's `urgency` hint).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Urgency {
    /// 0
    Low,
    /// 1
    Normal,
    /// 2
    Critical,
}

/// What the guest asks.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Request {
    /// `org.freedesktop.Notifications.Notify`.
    Notify {
        /// The app's name as it gave it.
        app: String,
        /// The notification's summary.
        summary: String,
        /// Its body (may carry markup; the host strips it).
        body: String,
        /// Urgency.
        urgency: Urgency,
        /// Milliseconds it shows (-1: the server's default, 0: until closed).
        timeout_ms: i32,
        /// The host id of a notification it replaces (0: none).
        replaces: u32,
    },
    /// `CloseNotification`: a host id it got earlier.
    CloseNotification(u32),
    /// Open a link in the user's browser (`OpenURI.OpenURI`).
    OpenUri(String),
    /// Pick files to read (`FileChooser.OpenFile`).
    OpenFile {
        /// The dialog's title.
        title: String,
        /// Several files.
        multiple: bool,
        /// A directory instead of files.
        directory: bool,
    },
    /// Pick where to save (`FileChooser.SaveFile`).
    SaveFile {
        /// The dialog's title.
        title: String,
        /// The name it suggests.
        name: String,
    },
    /// A setting (`Settings.ReadOne`): namespace, key.
    ReadSetting(String, String),
}

/// What the host answers (`id` is the request's).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Reply {
    /// Done; for `Notify`, the host's id of the notification.
    Done(u32),
    /// Files picked: their paths in the guest (granted to this VM).
    Paths(Vec<String>),
    /// A setting's value (`color-scheme`: 0 none, 1 dark, 2 light).
    Setting(u32),
    /// The user cancelled the dialog.
    Cancelled,
    /// Refused by the VM's policy, or rate-limited.
    Denied,
    /// The host's desktop could not do it (no service, an error).
    Failed,
}

/// What the host tells the guest unasked.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Event {
    /// A notification was closed: host id, freedesktop reason (1 expired,
    /// 2 dismissed, 3 closed by call, 4 other).
    NotificationClosed(u32, u32),
    /// The user clicked one of a notification's actions.
    ActionInvoked(u32, String),
}

/// One frame from the host.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum FromHost {
    /// The answer to request `id`.
    Reply(u32, Reply),
    /// An event.
    Event(Event),
}

mod kind {
    pub const NOTIFY: u8 = 1;
    pub const CLOSE: u8 = 2;
    pub const OPEN_URI: u8 = 3;
    pub const OPEN_FILE: u8 = 4;
    pub const SAVE_FILE: u8 = 5;
    pub const READ_SETTING: u8 = 6;
    pub const DONE: u8 = 0x81;
    pub const PATHS: u8 = 0x82;
    pub const SETTING: u8 = 0x83;
    pub const CANCELLED: u8 = 0x84;
    pub const DENIED: u8 = 0x85;
    pub const FAILED: u8 = 0x86;
    pub const CLOSED: u8 = 0xc1;
    pub const ACTION: u8 = 0xc2;
}

/// Builds one frame (the first error is kept for [`Out::done`]).
struct Out(Vec<u8>, Option<DesktopError>);

impl Out {
    fn new(kind: u8, id: u32) -> Self {
        let mut v = vec![0; 4];
        v.push(kind);
        v.extend_from_slice(&id.to_le_bytes());
        Out(v, None)
    }
    fn u8(mut self, v: u8) -> Self {
        self.0.push(v);
        self
    }
    fn u32(mut self, v: u32) -> Self {
        self.0.extend_from_slice(&v.to_le_bytes());
        self
    }
    fn str(mut self, s: &str) -> Self {
        if s.len() > MAX_STR {
            self.1
                .get_or_insert(DesktopError::Field("a string is longer than MAX_STR"));
            return self;
        }
        self.0.extend_from_slice(&(s.len() as u16).to_le_bytes());
        self.0.extend_from_slice(s.as_bytes());
        self
    }
    fn done(mut self) -> Result<Vec<u8>, DesktopError> {
        if let Some(e) = self.1 {
            return Err(e);
        }
        let len = self.0.len() - 4;
        if len > MAX_FRAME {
            return Err(DesktopError::TooLarge(len));
        }
        self.0[..4].copy_from_slice(&(len as u32).to_le_bytes());
        Ok(self.0)
    }
}

/// Reads one frame's fields.
struct In<'a>(&'a [u8]);

impl<'a> In<'a> {
    fn take(&mut self, n: usize) -> Result<&'a [u8], DesktopError> {
        if self.0.len() < n {
            return Err(DesktopError::Short);
        }
        let (a, b) = self.0.split_at(n);
        self.0 = b;
        Ok(a)
    }
    fn u8(&mut self) -> Result<u8, DesktopError> {
        Ok(self.take(1)?[0])
    }
    fn u32(&mut self) -> Result<u32, DesktopError> {
        let b = self.take(4)?;
        Ok(u32::from_le_bytes([b[0], b[1], b[2], b[3]]))
    }
    fn flag(&mut self) -> Result<bool, DesktopError> {
        match self.u8()? {
            0 => Ok(false),
            1 => Ok(true),
            _ => Err(DesktopError::Field("a flag is neither 0 nor 1")),
        }
    }
    fn str(&mut self) -> Result<String, DesktopError> {
        let b = self.take(2)?;
        let n = usize::from(u16::from_le_bytes([b[0], b[1]]));
        if n > MAX_STR {
            return Err(DesktopError::Field("a string is longer than MAX_STR"));
        }
        let s = self.take(n)?;
        std::str::from_utf8(s)
            .map(str::to_owned)
            .map_err(|_| DesktopError::Utf8)
    }
    fn end(&self) -> Result<(), DesktopError> {
        match self.0.len() {
            0 => Ok(()),
            n => Err(DesktopError::Trailing(n)),
        }
    }
}

/// The length of the frame at the start of `buf`, once its length field is
/// there (`Ok(None)`: not yet): the caller reads until it has that many.
pub fn frame_len(buf: &[u8]) -> Result<Option<usize>, DesktopError> {
    let Some(b) = buf.get(..4) else {
        return Ok(None);
    };
    let n = u32::from_le_bytes([b[0], b[1], b[2], b[3]]) as usize;
    if n > MAX_FRAME {
        return Err(DesktopError::TooLarge(n));
    }
    Ok(Some(4 + n))
}

/// A whole frame's body (after the length field): kind, id, fields.
fn open(frame: &[u8]) -> Result<(u8, u32, In<'_>), DesktopError> {
    let body = match frame_len(frame)? {
        Some(n) if n == frame.len() => &frame[4..],
        Some(_) => return Err(DesktopError::Field("length field disagrees with the frame")),
        None => return Err(DesktopError::Short),
    };
    let mut r = In(body);
    let kind = r.u8()?;
    let id = r.u32()?;
    Ok((kind, id, r))
}

impl Request {
    /// The frame for request `id`.
    pub fn encode(&self, id: u32) -> Result<Vec<u8>, DesktopError> {
        match self {
            Request::Notify {
                app,
                summary,
                body,
                urgency,
                timeout_ms,
                replaces,
            } => Out::new(kind::NOTIFY, id)
                .str(app)
                .str(summary)
                .str(body)
                .u8(*urgency as u8)
                .u32(*timeout_ms as u32)
                .u32(*replaces),
            Request::CloseNotification(n) => Out::new(kind::CLOSE, id).u32(*n),
            Request::OpenUri(u) => Out::new(kind::OPEN_URI, id).str(u),
            Request::OpenFile {
                title,
                multiple,
                directory,
            } => Out::new(kind::OPEN_FILE, id)
                .str(title)
                .u8(u8::from(*multiple))
                .u8(u8::from(*directory)),
            Request::SaveFile { title, name } => Out::new(kind::SAVE_FILE, id).str(title).str(name),
            Request::ReadSetting(ns, key) => Out::new(kind::READ_SETTING, id).str(ns).str(key),
        }
        .done()
    }

    /// Parses a whole frame from the guest: (id, request).
    pub fn decode(frame: &[u8]) -> Result<(u32, Request), DesktopError> {
        let (k, id, mut r) = open(frame)?;
        let req = match k {
            kind::NOTIFY => Request::Notify {
                app: r.str()?,
                summary: r.str()?,
                body: r.str()?,
                urgency: match r.u8()? {
                    0 => Urgency::Low,
                    1 => Urgency::Normal,
                    2 => Urgency::Critical,
                    _ => return Err(DesktopError::Field("urgency")),
                },
                timeout_ms: r.u32()? as i32,
                replaces: r.u32()?,
            },
            kind::CLOSE => Request::CloseNotification(r.u32()?),
            kind::OPEN_URI => Request::OpenUri(r.str()?),
            kind::OPEN_FILE => Request::OpenFile {
                title: r.str()?,
                multiple: r.flag()?,
                directory: r.flag()?,
            },
            kind::SAVE_FILE => Request::SaveFile {
                title: r.str()?,
                name: r.str()?,
            },
            kind::READ_SETTING => Request::ReadSetting(r.str()?, r.str()?),
            k => return Err(DesktopError::Kind(k)),
        };
        r.end()?;
        Ok((id, req))
    }
}

impl FromHost {
    /// The frame.
    pub fn encode(&self) -> Result<Vec<u8>, DesktopError> {
        match self {
            FromHost::Reply(id, r) => match r {
                Reply::Done(n) => Out::new(kind::DONE, *id).u32(*n),
                Reply::Paths(p) => {
                    if p.len() > MAX_PATHS {
                        return Err(DesktopError::Field("too many paths"));
                    }
                    p.iter()
                        .fold(Out::new(kind::PATHS, *id).u8(p.len() as u8), |o, s| {
                            o.str(s)
                        })
                }
                Reply::Setting(v) => Out::new(kind::SETTING, *id).u32(*v),
                Reply::Cancelled => Out::new(kind::CANCELLED, *id),
                Reply::Denied => Out::new(kind::DENIED, *id),
                Reply::Failed => Out::new(kind::FAILED, *id),
            },
            FromHost::Event(Event::NotificationClosed(n, why)) => {
                Out::new(kind::CLOSED, 0).u32(*n).u32(*why)
            }
            FromHost::Event(Event::ActionInvoked(n, action)) => {
                Out::new(kind::ACTION, 0).u32(*n).str(action)
            }
        }
        .done()
    }

    /// Parses a whole frame from the host.
    pub fn decode(frame: &[u8]) -> Result<FromHost, DesktopError> {
        let (k, id, mut r) = open(frame)?;
        let m = match k {
            kind::DONE => FromHost::Reply(id, Reply::Done(r.u32()?)),
            kind::PATHS => {
                let n = usize::from(r.u8()?);
                if n > MAX_PATHS {
                    return Err(DesktopError::Field("too many paths"));
                }
                let paths = (0..n).map(|_| r.str()).collect::<Result<_, _>>()?;
                FromHost::Reply(id, Reply::Paths(paths))
            }
            kind::SETTING => FromHost::Reply(id, Reply::Setting(r.u32()?)),
            kind::CANCELLED => FromHost::Reply(id, Reply::Cancelled),
            kind::DENIED => FromHost::Reply(id, Reply::Denied),
            kind::FAILED => FromHost::Reply(id, Reply::Failed),
            kind::CLOSED | kind::ACTION if id != 0 => {
                return Err(DesktopError::Field("an event's id is not 0"))
            }
            kind::CLOSED => FromHost::Event(Event::NotificationClosed(r.u32()?, r.u32()?)),
            kind::ACTION => FromHost::Event(Event::ActionInvoked(r.u32()?, r.str()?)),
            k => return Err(DesktopError::Kind(k)),
        };
        r.end()?;
        Ok(m)
    }
}

/// The fuzz target's entry: `data` is a stream of frames, its first byte
/// saying which side sent them (even: the guest, odd: the host). Each frame
/// that parses must encode back to the same bytes (a finding otherwise).
/// Returns the requests parsed, for the broker's checks.
#[doc(hidden)]
pub fn fuzz_frames(data: &[u8]) -> Vec<Request> {
    let Some((&side, mut rest)) = data.split_first() else {
        return Vec::new();
    };
    let mut reqs = Vec::new();
    while let Ok(Some(n)) = frame_len(rest) {
        let Some(frame) = rest.get(..n) else { break };
        rest = &rest[n..];
        if side % 2 == 0 {
            if let Ok((id, r)) = Request::decode(frame) {
                assert_eq!(r.encode(id).as_deref(), Ok(frame), "{r:?}");
                reqs.push(r);
            }
        } else if let Ok(m) = FromHost::decode(frame) {
            assert_eq!(m.encode().as_deref(), Ok(frame), "{m:?}");
        }
    }
    reqs
}

#[cfg(test)]
mod tests {
    use super::*;

    fn requests() -> Vec<Request> {
        vec![
            Request::Notify {
                app: "mail".into(),
                summary: "New mail ✉".into(),
                body: "<b>3</b> messages".into(),
                urgency: Urgency::Critical,
                timeout_ms: -1,
                replaces: 7,
            },
            Request::CloseNotification(9),
            Request::OpenUri("https://example.org/a?b=c".into()),
            Request::OpenFile {
                title: "Open".into(),
                multiple: true,
                directory: false,
            },
            Request::SaveFile {
                title: "Save".into(),
                name: "report.odt".into(),
            },
            Request::ReadSetting("org.freedesktop.appearance".into(), "color-scheme".into()),
        ]
    }

    fn from_host() -> Vec<FromHost> {
        vec![
            FromHost::Reply(1, Reply::Done(42)),
            FromHost::Reply(2, Reply::Paths(vec!["/run/vmapp/doc/1/a.txt".into()])),
            FromHost::Reply(3, Reply::Paths(vec![])),
            FromHost::Reply(4, Reply::Setting(1)),
            FromHost::Reply(5, Reply::Cancelled),
            FromHost::Reply(6, Reply::Denied),
            FromHost::Reply(7, Reply::Failed),
            FromHost::Event(Event::NotificationClosed(42, 2)),
            FromHost::Event(Event::ActionInvoked(42, "default".into())),
        ]
    }

    #[test]
    fn frames_round_trip() {
        for (i, r) in requests().into_iter().enumerate() {
            let f = r.encode(i as u32).unwrap();
            assert_eq!(frame_len(&f), Ok(Some(f.len())));
            assert_eq!(Request::decode(&f), Ok((i as u32, r)));
        }
        for m in from_host() {
            assert_eq!(FromHost::decode(&m.encode().unwrap()), Ok(m));
        }
    }

    /// Every cut of a valid frame, and every frame with a byte more, is
    /// refused (the length field is fixed up so the parser sees the cut).
    #[test]
    fn short_and_long_frames_are_refused() {
        let reframe = |body: &[u8]| {
            let mut f = (body.len() as u32).to_le_bytes().to_vec();
            f.extend_from_slice(body);
            f
        };
        for r in requests() {
            let f = r.encode(1).unwrap();
            for cut in 4..f.len() {
                assert!(
                    Request::decode(&reframe(&f[4..cut])).is_err(),
                    "{r:?} cut at {cut}"
                );
            }
            let mut long = f[4..].to_vec();
            long.push(0);
            assert_eq!(
                Request::decode(&reframe(&long)),
                Err(DesktopError::Trailing(1))
            );
            // A length field that disagrees with the bytes handed over.
            assert!(Request::decode(&f[..f.len() - 1]).is_err());
        }
        for m in from_host() {
            let f = m.encode().unwrap();
            for cut in 4..f.len() {
                assert!(
                    FromHost::decode(&reframe(&f[4..cut])).is_err(),
                    "{m:?} cut at {cut}"
                );
            }
        }
    }

    #[test]
    fn bad_fields_are_refused() {
        // Not UTF-8.
        let f = Out::new(kind::OPEN_URI, 1).u32(0).done().unwrap();
        let mut bad = f[..9].to_vec();
        bad.extend_from_slice(&[2, 0, 0xff, 0xfe]);
        let n = (bad.len() - 4) as u32;
        bad[..4].copy_from_slice(&n.to_le_bytes());
        assert_eq!(Request::decode(&bad), Err(DesktopError::Utf8));
        // An unknown kind, a host kind sent by the guest, a bad flag.
        let k = Out::new(0x7f, 1).done().unwrap();
        assert_eq!(Request::decode(&k), Err(DesktopError::Kind(0x7f)));
        let k = FromHost::Reply(1, Reply::Denied).encode().unwrap();
        assert_eq!(Request::decode(&k), Err(DesktopError::Kind(kind::DENIED)));
        let flag = Out::new(kind::OPEN_FILE, 1)
            .str("t")
            .u8(2)
            .u8(0)
            .done()
            .unwrap();
        assert!(matches!(
            Request::decode(&flag),
            Err(DesktopError::Field(_))
        ));
        // A frame longer than MAX_FRAME is refused from its length field on.
        let mut huge = ((MAX_FRAME + 1) as u32).to_le_bytes().to_vec();
        huge.push(kind::OPEN_URI);
        assert_eq!(frame_len(&huge), Err(DesktopError::TooLarge(MAX_FRAME + 1)));
        // An event's id is 0 (found by the fuzzer: any id parsed, and the
        // frame did not encode back the same).
        let mut ev = FromHost::Event(Event::NotificationClosed(7, 2))
            .encode()
            .unwrap();
        ev[5] = 64;
        assert!(matches!(FromHost::decode(&ev), Err(DesktopError::Field(_))));
        // More paths than MAX_PATHS.
        let many = FromHost::Reply(1, Reply::Paths(vec!["p".into(); MAX_PATHS + 1]));
        assert!(many.encode().is_err());
        let mut o = Out::new(kind::PATHS, 1).u8(MAX_PATHS as u8 + 1);
        for _ in 0..=MAX_PATHS {
            o = o.str("p");
        }
        assert!(FromHost::decode(&o.done().unwrap()).is_err());
    }

    /// A string past MAX_STR is refused both ways, never cut; a frame past
    /// MAX_FRAME cannot be built.
    #[test]
    fn long_strings_and_huge_frames_are_refused() {
        let ok = "é".repeat(MAX_STR / 2);
        let f = Request::OpenUri(ok.clone()).encode(1).unwrap();
        assert_eq!(Request::decode(&f), Ok((1, Request::OpenUri(ok))));
        let long = "x".repeat(MAX_STR + 1);
        assert!(Request::OpenUri(long.clone()).encode(1).is_err());
        let mut o = Out::new(kind::OPEN_URI, 1);
        o.0.extend_from_slice(&((MAX_STR + 1) as u16).to_le_bytes());
        o.0.extend_from_slice(long.as_bytes());
        assert!(matches!(
            Request::decode(&o.done().unwrap()),
            Err(DesktopError::Field(_))
        ));
        let paths = FromHost::Reply(1, Reply::Paths(vec!["p".repeat(MAX_STR); 5]));
        assert!(matches!(paths.encode(), Err(DesktopError::TooLarge(_))));
    }
}

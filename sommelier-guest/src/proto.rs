//! The vmapp ↔ guest agent protocol, version 1, over one vsock stream that the
//! agent opens to the host (CID 2, port [`AGENT_PORT`]) for the VM's command,
//! and over each stream the host opens to the guest's [`EXEC_PORT`] for a
//! further command in the running VM (`vmapp exec`, `VmHandle::exec`); both
//! kinds of stream carry the same frames.
//!
//! Every message is a frame: `type: u8`, `len: u32` little endian, then `len`
//! bytes (at most [`MAX_FRAME`]). The agent starts with `HELLO`; vmapp answers
//! with `RUN`; then both sides stream until the agent sends `EXIT` (or
//! `ERROR` when the command could not be started).

use std::io::{Read, Write};

/// Protocol version.
pub const VERSION: u32 = 1;
/// The host port the agent connects to.
pub const AGENT_PORT: u32 = 1024;
/// The guest port where the default guest's agent accepts further commands
/// (when its kernel command line has `vmapp.exec=PORT`, this port).
pub const EXEC_PORT: u32 = 1025;
/// Largest frame payload.
pub const MAX_FRAME: u32 = 1 << 20;

/// Frame types.
#[allow(missing_docs)]
pub mod ty {
    // agent → vmapp
    pub const HELLO: u8 = 0x01;
    pub const STDOUT: u8 = 0x10;
    pub const STDERR: u8 = 0x11;
    pub const EXIT: u8 = 0x12;
    pub const ERROR: u8 = 0x13;
    // vmapp → agent
    pub const RUN: u8 = 0x02;
    pub const STDIN: u8 = 0x20;
    pub const STDIN_EOF: u8 = 0x21;
}

/// Protocol errors.
#[derive(Debug)]
pub enum ProtoError {
    /// The stream failed.
    Io(std::io::Error),
    /// A frame longer than [`MAX_FRAME`].
    TooLong(u32),
    /// A payload that does not parse.
    Malformed(&'static str),
}

impl std::fmt::Display for ProtoError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::Io(e) => write!(f, "agent stream: {e}"),
            Self::TooLong(n) => write!(f, "agent frame of {n} bytes is too long"),
            Self::Malformed(w) => write!(f, "malformed agent message: {w}"),
        }
    }
}

impl std::error::Error for ProtoError {}

impl From<std::io::Error> for ProtoError {
    fn from(e: std::io::Error) -> Self {
        Self::Io(e)
    }
}

/// Writes one frame.
pub fn write_frame(w: &mut impl Write, ty: u8, payload: &[u8]) -> Result<(), ProtoError> {
    let len = u32::try_from(payload.len())
        .ok()
        .filter(|&l| l <= MAX_FRAME)
        .ok_or(ProtoError::TooLong(u32::MAX))?;
    let mut hdr = [0u8; 5];
    hdr[0] = ty;
    hdr[1..].copy_from_slice(&len.to_le_bytes());
    w.write_all(&hdr)?;
    w.write_all(payload)?;
    Ok(())
}

/// Reads one frame; `None` at a clean end of stream (between frames).
pub fn read_frame(r: &mut impl Read) -> Result<Option<(u8, Vec<u8>)>, ProtoError> {
    let mut hdr = [0u8; 5];
    let mut got = 0;
    while got < hdr.len() {
        match r.read(&mut hdr[got..]) {
            Ok(0) if got == 0 => return Ok(None),
            Ok(0) => return Err(ProtoError::Malformed("stream ended inside a frame header")),
            Ok(n) => got += n,
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e.into()),
        }
    }
    let len = u32::from_le_bytes([hdr[1], hdr[2], hdr[3], hdr[4]]);
    if len > MAX_FRAME {
        return Err(ProtoError::TooLong(len));
    }
    let mut payload = vec![0u8; len as usize];
    r.read_exact(&mut payload)?;
    Ok(Some((hdr[0], payload)))
}

/// What to run.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Run {
    /// Program and arguments (non-empty).
    pub argv: Vec<String>,
    /// `KEY=VALUE` entries added to the agent's base environment.
    pub env: Vec<String>,
    /// Working directory; empty for `/`.
    pub cwd: String,
    /// Keep the VM running after the command exits.
    pub keep_running: bool,
}

impl Run {
    /// `version u32 | flags u32 | argc u32 | envc u32 | argv… env… cwd`, each
    /// string NUL-terminated.
    pub fn encode(&self) -> Vec<u8> {
        let mut v = Vec::new();
        v.extend(VERSION.to_le_bytes());
        v.extend(u32::from(self.keep_running).to_le_bytes());
        v.extend((self.argv.len() as u32).to_le_bytes());
        v.extend((self.env.len() as u32).to_le_bytes());
        for s in self
            .argv
            .iter()
            .chain(&self.env)
            .chain(std::iter::once(&self.cwd))
        {
            v.extend(s.as_bytes());
            v.push(0);
        }
        v
    }

    /// Parses [`encode`](Self::encode)'s output.
    pub fn decode(b: &[u8]) -> Result<Self, ProtoError> {
        let word = |i: usize| -> Result<u32, ProtoError> {
            b.get(i * 4..i * 4 + 4)
                .map(|w| u32::from_le_bytes([w[0], w[1], w[2], w[3]]))
                .ok_or(ProtoError::Malformed("short RUN header"))
        };
        if word(0)? != VERSION {
            return Err(ProtoError::Malformed("unsupported protocol version"));
        }
        let flags = word(1)?;
        let argc = word(2)? as usize;
        let envc = word(3)? as usize;
        let mut strings = Vec::new();
        for s in b[16..].split_inclusive(|&c| c == 0) {
            let s = s
                .strip_suffix(&[0])
                .ok_or(ProtoError::Malformed("unterminated string"))?;
            strings.push(
                String::from_utf8(s.to_vec())
                    .map_err(|_| ProtoError::Malformed("string is not UTF-8"))?,
            );
        }
        if argc == 0 || argc.checked_add(envc).and_then(|n| n.checked_add(1)) != Some(strings.len())
        {
            return Err(ProtoError::Malformed("wrong string count"));
        }
        let cwd = strings.pop().unwrap_or_default();
        let env = strings.split_off(argc);
        Ok(Self {
            argv: strings,
            env,
            cwd,
            keep_running: flags & 1 != 0,
        })
    }
}

/// How the command ended: `EXIT` payload `[kind, value]`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Exit {
    /// It exited with this status.
    Code(u8),
    /// A signal killed it.
    Signal(u8),
}

impl Exit {
    /// The payload.
    pub fn encode(self) -> [u8; 2] {
        match self {
            Self::Code(c) => [0, c],
            Self::Signal(s) => [1, s],
        }
    }

    /// Parses the payload.
    pub fn decode(b: &[u8]) -> Result<Self, ProtoError> {
        match b {
            [0, c] => Ok(Self::Code(*c)),
            [1, s] => Ok(Self::Signal(*s)),
            _ => Err(ProtoError::Malformed("bad EXIT")),
        }
    }

    /// A shell-style status: the code, or 128 + signal.
    pub fn status(self) -> u8 {
        match self {
            Self::Code(c) => c,
            Self::Signal(s) => 128u8.saturating_add(s),
        }
    }
}

/// The kernel command line's share of the protocol: a serial-mode command
/// (`vmapp.cmd=`) and the paths of `vmapp.mount=`, `vmapp.home=`, … travel as
/// the hex of their bytes (a command's arguments joined by NUL), since the
/// kernel splits its command line at spaces and passes no quoting through.
pub fn encode_hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// Reads [`encode_hex`]'s output; `None` for anything else.
pub fn decode_hex(s: &str) -> Option<Vec<u8>> {
    if !s.len().is_multiple_of(2) {
        return None;
    }
    (0..s.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(s.get(i..i + 2)?, 16).ok())
        .collect()
}

/// A command and its arguments as `vmapp.cmd=` carries them.
pub fn encode_argv(argv: &[String]) -> String {
    encode_hex(argv.join("\0").as_bytes())
}

/// Reads [`encode_argv`]'s output.
pub fn decode_argv(s: &str) -> Option<Vec<String>> {
    let b = decode_hex(s)?;
    Some(
        b.split(|&c| c == 0)
            .map(|a| String::from_utf8_lossy(a).into_owned())
            .collect(),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn frames_round_trip_and_limits_hold() {
        let mut buf = Vec::new();
        write_frame(&mut buf, ty::STDOUT, b"hi\0there").unwrap();
        write_frame(&mut buf, ty::STDIN_EOF, b"").unwrap();
        let mut r = &buf[..];
        assert_eq!(
            read_frame(&mut r).unwrap(),
            Some((ty::STDOUT, b"hi\0there".to_vec()))
        );
        assert_eq!(read_frame(&mut r).unwrap(), Some((ty::STDIN_EOF, vec![])));
        assert_eq!(read_frame(&mut r).unwrap(), None);
        let huge = [ty::STDOUT, 0xff, 0xff, 0xff, 0xff];
        assert!(matches!(
            read_frame(&mut &huge[..]),
            Err(ProtoError::TooLong(_))
        ));
        assert!(read_frame(&mut &buf[..3]).is_err());
        assert!(read_frame(&mut &buf[..8]).is_err());
    }

    #[test]
    fn run_round_trips_and_rejects_garbage() {
        let r = Run {
            argv: vec!["sh".into(), "-c".into(), "echo é".into()],
            env: vec!["A=1".into()],
            cwd: "/tmp".into(),
            keep_running: true,
        };
        assert_eq!(Run::decode(&r.encode()).unwrap(), r);
        let mut bad = r.encode();
        bad.pop();
        assert!(Run::decode(&bad).is_err());
        assert!(Run::decode(&[1, 0, 0]).is_err());
        let mut v2 = r.encode();
        v2[0] = 2;
        assert!(Run::decode(&v2).is_err());
        let empty = Run::default().encode();
        assert!(Run::decode(&empty).is_err(), "argv must not be empty");
    }

    #[test]
    fn exit_statuses() {
        assert_eq!(Exit::decode(&Exit::Code(3).encode()).unwrap().status(), 3);
        assert_eq!(
            Exit::decode(&Exit::Signal(9).encode()).unwrap().status(),
            137
        );
        assert!(Exit::decode(&[2, 0]).is_err());
    }
}

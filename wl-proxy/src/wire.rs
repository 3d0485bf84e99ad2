//! The Wayland wire format: a pure, table-driven parser (bytes + signature in,
//! typed arguments out, no I/O) and the few encoders the proxy needs.
//!
//! Stricter than libwayland: a size that is not a multiple of 4 or above
//! [`MAX_MESSAGE`], trailing bytes, a string without its NUL, with an inner
//! NUL or not UTF-8, and a null where the signature does not allow one are all
//! malformed.

use crate::protocol::{Arg, ArgKind, Message};

/// Bytes in a message header.
pub const HEADER: usize = 8;
/// Largest message libwayland sends or accepts.
pub const MAX_MESSAGE: usize = 4096;
/// First id of the server's range.
pub const SERVER_ID_START: u32 = 0xff00_0000;

/// Why a message could not be parsed.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum WireError {
    /// The buffer ends before the message does.
    #[error("need more bytes")]
    NeedBytes,
    /// The message's fds have not all arrived.
    #[error("need more fds")]
    NeedFds,
    /// The message breaks the wire format; the connection must be closed.
    #[error("malformed message: {0}")]
    Malformed(&'static str),
}

/// A message header.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Header {
    /// Target object id.
    pub object: u32,
    /// Request or event opcode.
    pub opcode: u16,
    /// Total size in bytes, header included.
    pub size: usize,
}

fn word(buf: &[u8], at: usize) -> Option<u32> {
    let b = buf.get(at..at.checked_add(4)?)?;
    Some(u32::from_ne_bytes([b[0], b[1], b[2], b[3]]))
}

/// Reads the header at the start of `buf`.
pub fn header(buf: &[u8]) -> Result<Header, WireError> {
    let (Some(object), Some(w)) = (word(buf, 0), word(buf, 4)) else {
        return Err(WireError::NeedBytes);
    };
    let size = (w >> 16) as usize;
    if size < HEADER || !size.is_multiple_of(4) || size > MAX_MESSAGE {
        return Err(WireError::Malformed("bad message size"));
    }
    Ok(Header {
        object,
        opcode: (w & 0xffff) as u16,
        size,
    })
}

/// One decoded argument.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Value<'a> {
    /// `int`
    Int(i32),
    /// `uint`
    Uint(u32),
    /// `fixed`
    Fixed(i32),
    /// `string`; `None` is a null string.
    Str(Option<&'a str>),
    /// `object`; 0 is null.
    Object(u32),
    /// `new_id` of a known interface.
    NewId(u32),
    /// `new_id` whose interface travels in the message (`wl_registry.bind`).
    NewIdDyn {
        /// Interface name.
        interface: &'a str,
        /// Requested version.
        version: u32,
        /// The new id.
        id: u32,
    },
    /// `array`
    Array(&'a [u8]),
    /// `fd`: the `n`th fd of this message.
    Fd(usize),
}

/// Decodes the body (`message[HEADER..]`) of a message with signature `msg`,
/// given how many fds are queued. Calls `f` with each argument in order.
pub fn parse_args<'a, E: From<WireError>>(
    body: &'a [u8],
    fds_queued: usize,
    msg: &'static Message,
    mut f: impl FnMut(&'static Arg, Value<'a>) -> Result<(), E>,
) -> Result<(), E> {
    if msg.fds > fds_queued {
        return Err(WireError::NeedFds.into());
    }
    let mut pos = 0usize;
    let mut fd = 0usize;
    for arg in msg.args {
        let v = match arg.kind {
            ArgKind::Int => Value::Int(take_word(body, &mut pos)? as i32),
            ArgKind::Uint => Value::Uint(take_word(body, &mut pos)?),
            ArgKind::Fixed => Value::Fixed(take_word(body, &mut pos)? as i32),
            ArgKind::Object => {
                let id = take_word(body, &mut pos)?;
                if id == 0 && !arg.nullable {
                    return Err(WireError::Malformed("null object").into());
                }
                Value::Object(id)
            }
            ArgKind::NewId if arg.interface.is_none() => {
                let interface =
                    take_str(body, &mut pos)?.ok_or(WireError::Malformed("null interface name"))?;
                let version = take_word(body, &mut pos)?;
                let id = take_word(body, &mut pos)?;
                if id == 0 {
                    return Err(WireError::Malformed("null new_id").into());
                }
                Value::NewIdDyn {
                    interface,
                    version,
                    id,
                }
            }
            ArgKind::NewId => {
                let id = take_word(body, &mut pos)?;
                if id == 0 {
                    return Err(WireError::Malformed("null new_id").into());
                }
                Value::NewId(id)
            }
            ArgKind::Str => {
                let s = take_str(body, &mut pos)?;
                if s.is_none() && !arg.nullable {
                    return Err(WireError::Malformed("null string").into());
                }
                Value::Str(s)
            }
            ArgKind::Array => Value::Array(take_bytes(body, &mut pos)?),
            ArgKind::Fd => {
                fd += 1;
                Value::Fd(fd - 1)
            }
        };
        f(arg, v)?;
    }
    if pos != body.len() {
        return Err(WireError::Malformed("trailing bytes").into());
    }
    Ok(())
}

/// Where an object or new-id argument sits in a message body.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct IdSlot {
    /// Byte offset of the id in the body.
    pub offset: usize,
    /// A `new_id` (else an `object`).
    pub new: bool,
    /// Its interface, where the signature or the message names one.
    pub interface: Option<crate::protocol::IfaceId>,
}

/// The object and new-id arguments of a body (`message[HEADER..]`) with
/// signature `msg`, for a peer that renumbers objects. The body must be one
/// [`parse_args`] accepts.
pub fn id_slots(body: &[u8], msg: &'static Message) -> Result<Vec<IdSlot>, WireError> {
    let mut out = Vec::new();
    let mut pos = 0usize;
    for arg in msg.args {
        match arg.kind {
            ArgKind::Int | ArgKind::Uint | ArgKind::Fixed => {
                take_word(body, &mut pos)?;
            }
            ArgKind::Str | ArgKind::Array => {
                take_bytes(body, &mut pos)?;
            }
            ArgKind::Fd => {}
            ArgKind::Object | ArgKind::NewId => {
                let mut interface = arg.interface;
                if arg.kind == ArgKind::NewId && interface.is_none() {
                    let name = take_str(body, &mut pos)?;
                    interface = name.and_then(crate::protocol::lookup);
                    take_word(body, &mut pos)?;
                }
                out.push(IdSlot {
                    offset: pos,
                    new: arg.kind == ArgKind::NewId,
                    interface,
                });
                take_word(body, &mut pos)?;
            }
        }
    }
    if pos != body.len() {
        return Err(WireError::Malformed("trailing bytes"));
    }
    Ok(out)
}

fn take_word(body: &[u8], pos: &mut usize) -> Result<u32, WireError> {
    let w = word(body, *pos).ok_or(WireError::Malformed("message too short"))?;
    *pos += 4;
    Ok(w)
}

fn take_bytes<'a>(body: &'a [u8], pos: &mut usize) -> Result<&'a [u8], WireError> {
    let len = take_word(body, pos)? as usize;
    let padded = len
        .checked_add(3)
        .map(|l| l & !3)
        .ok_or(WireError::Malformed("array too long"))?;
    let end = pos
        .checked_add(padded)
        .filter(|&e| e <= body.len())
        .ok_or(WireError::Malformed("array past the end"))?;
    let b = &body[*pos..*pos + len];
    *pos = end;
    Ok(b)
}

fn take_str<'a>(body: &'a [u8], pos: &mut usize) -> Result<Option<&'a str>, WireError> {
    let b = take_bytes(body, pos)?;
    let Some((&last, text)) = b.split_last() else {
        return Ok(None);
    };
    if last != 0 {
        return Err(WireError::Malformed("string without NUL"));
    }
    if text.contains(&0) {
        return Err(WireError::Malformed("NUL inside a string"));
    }
    std::str::from_utf8(text)
        .map(Some)
        .map_err(|_| WireError::Malformed("string is not UTF-8"))
}

/// Builds messages for the few places the proxy writes its own.
#[derive(Debug, Default)]
pub struct Writer {
    buf: Vec<u8>,
}

impl Writer {
    /// Starts a message to `object` with `opcode`.
    pub fn new(object: u32, opcode: u16) -> Self {
        let mut buf = Vec::with_capacity(64);
        buf.extend_from_slice(&object.to_ne_bytes());
        buf.extend_from_slice(&(opcode as u32).to_ne_bytes());
        Writer { buf }
    }

    /// Appends a `uint` (or `int`, `object`, `new_id`).
    pub fn uint(mut self, v: u32) -> Self {
        self.buf.extend_from_slice(&v.to_ne_bytes());
        self
    }

    /// Appends a non-null string.
    pub fn string(mut self, s: &str) -> Self {
        let len = s.len() + 1;
        self.buf.extend_from_slice(&(len as u32).to_ne_bytes());
        self.buf.extend_from_slice(s.as_bytes());
        self.buf.push(0);
        while !self.buf.len().is_multiple_of(4) {
            self.buf.push(0);
        }
        self
    }

    /// Appends an array.
    pub fn array(mut self, a: &[u8]) -> Self {
        self.buf.extend_from_slice(&(a.len() as u32).to_ne_bytes());
        self.buf.extend_from_slice(a);
        while !self.buf.len().is_multiple_of(4) {
            self.buf.push(0);
        }
        self
    }

    /// Finishes the message: writes its size into the header.
    pub fn finish(mut self) -> Vec<u8> {
        let size = self.buf.len() as u32;
        let op = u32::from_ne_bytes([self.buf[4], self.buf[5], self.buf[6], self.buf[7]]);
        self.buf[4..8].copy_from_slice(&((size << 16) | (op & 0xffff)).to_ne_bytes());
        self.buf
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::protocol::{interface, lookup};

    fn msg(iface: &str, req: &str) -> &'static Message {
        let i = interface(lookup(iface).unwrap());
        i.requests.iter().find(|m| m.name == req).unwrap()
    }

    #[test]
    fn id_slots_find_objects_and_new_ids_past_strings() {
        let m = msg("wl_registry", "bind");
        let b = Writer::new(2, 0)
            .uint(7)
            .string("wl_seat")
            .uint(5)
            .uint(9)
            .finish();
        let s = id_slots(&b[HEADER..], m).unwrap();
        assert_eq!(s.len(), 1);
        assert!(s[0].new);
        assert_eq!(s[0].offset, 4 + 12 + 4);
        assert_eq!(s[0].interface, lookup("wl_seat"));
        let m = msg("wl_surface", "attach");
        let b = Writer::new(3, 1).uint(8).uint(0).uint(0).finish();
        let s = id_slots(&b[HEADER..], m).unwrap();
        assert_eq!((s[0].offset, s[0].new), (0, false));
        assert_eq!(s[0].interface, lookup("wl_buffer"));
        assert!(id_slots(&b[HEADER..HEADER + 4], m).is_err());
    }

    fn parse<'a>(
        buf: &'a [u8],
        fds: usize,
        m: &'static Message,
    ) -> Result<Vec<Value<'a>>, WireError> {
        let h = header(buf)?;
        if buf.len() < h.size {
            return Err(WireError::NeedBytes);
        }
        let mut out = Vec::new();
        parse_args(&buf[HEADER..h.size], fds, m, |_, v| {
            out.push(v);
            Ok::<_, WireError>(())
        })?;
        Ok(out)
    }

    #[test]
    fn header_rules() {
        assert_eq!(header(&[0; 7]), Err(WireError::NeedBytes));
        let h = Writer::new(3, 2).uint(9).finish();
        assert_eq!(
            header(&h),
            Ok(Header {
                object: 3,
                opcode: 2,
                size: 12
            })
        );
        for size in [0u32, 4, 10, 4100, 65532] {
            let mut b = 1u32.to_ne_bytes().to_vec();
            b.extend_from_slice(&(size << 16).to_ne_bytes());
            assert!(matches!(header(&b), Err(WireError::Malformed(_))), "{size}");
        }
    }

    #[test]
    fn bind_round_trip() {
        let b = Writer::new(2, 0)
            .uint(7)
            .string("wl_compositor")
            .uint(4)
            .uint(3)
            .finish();
        let v = parse(&b, 0, msg("wl_registry", "bind")).unwrap();
        assert_eq!(
            v,
            vec![
                Value::Uint(7),
                Value::NewIdDyn {
                    interface: "wl_compositor",
                    version: 4,
                    id: 3
                }
            ]
        );
    }

    #[test]
    fn strings() {
        let m = msg("xdg_toplevel", "set_title");
        let ok = Writer::new(5, 2).string("héllo").finish();
        assert_eq!(parse(&ok, 0, m).unwrap(), vec![Value::Str(Some("héllo"))]);
        // Null where not allowed.
        let null = Writer::new(5, 2).uint(0).finish();
        assert!(matches!(parse(&null, 0, m), Err(WireError::Malformed(_))));
        // No NUL terminator: length 4 over "abcd".
        let nonul = Writer::new(5, 2)
            .uint(4)
            .uint(u32::from_ne_bytes(*b"abcd"))
            .finish();
        assert_eq!(
            parse(&nonul, 0, m),
            Err(WireError::Malformed("string without NUL"))
        );
        // Inner NUL.
        let inner = Writer::new(5, 2)
            .uint(4)
            .uint(u32::from_ne_bytes(*b"a\0b\0"))
            .finish();
        assert_eq!(
            parse(&inner, 0, m),
            Err(WireError::Malformed("NUL inside a string"))
        );
        // Not UTF-8.
        let bad = Writer::new(5, 2)
            .uint(2)
            .uint(u32::from_ne_bytes([0xff, 0, 0, 0]))
            .finish();
        assert_eq!(
            parse(&bad, 0, m),
            Err(WireError::Malformed("string is not UTF-8"))
        );
        // Length past the end of the message.
        let long = Writer::new(5, 2).uint(100).uint(0).finish();
        assert_eq!(
            parse(&long, 0, m),
            Err(WireError::Malformed("array past the end"))
        );
        let huge = Writer::new(5, 2).uint(u32::MAX).finish();
        assert!(matches!(parse(&huge, 0, m), Err(WireError::Malformed(_))));
    }

    #[test]
    fn trailing_and_short() {
        let m = msg("wl_surface", "damage");
        let ok = Writer::new(5, 2).uint(0).uint(0).uint(1).uint(1).finish();
        assert_eq!(parse(&ok, 0, m).unwrap().len(), 4);
        let trailing = Writer::new(5, 2)
            .uint(0)
            .uint(0)
            .uint(1)
            .uint(1)
            .uint(9)
            .finish();
        assert_eq!(
            parse(&trailing, 0, m),
            Err(WireError::Malformed("trailing bytes"))
        );
        let short = Writer::new(5, 2).uint(0).uint(0).uint(1).finish();
        assert_eq!(
            parse(&short, 0, m),
            Err(WireError::Malformed("message too short"))
        );
        assert_eq!(parse(&ok[..12], 0, m), Err(WireError::NeedBytes));
    }

    #[test]
    fn fds_and_nulls() {
        let m = msg("wl_shm", "create_pool");
        let b = Writer::new(4, 0).uint(9).uint(4096).finish();
        assert_eq!(parse(&b, 0, m), Err(WireError::NeedFds));
        assert_eq!(
            parse(&b, 1, m).unwrap(),
            vec![Value::NewId(9), Value::Fd(0), Value::Int(4096)]
        );
        let zero = Writer::new(4, 0).uint(0).uint(4096).finish();
        assert_eq!(parse(&zero, 1, m), Err(WireError::Malformed("null new_id")));
        // wl_surface.attach allows a null buffer.
        let a = Writer::new(5, 1).uint(0).uint(0).uint(0).finish();
        assert!(parse(&a, 0, msg("wl_surface", "attach")).is_ok());
        // wl_pointer.set_cursor's surface is nullable, wl_surface.frame's new_id is not.
        let f = Writer::new(5, 3).uint(0).finish();
        assert!(parse(&f, 0, msg("wl_surface", "frame")).is_err());
    }

    #[test]
    fn arrays() {
        let m = msg("zwp_linux_buffer_params_v1", "add");
        assert!(m.fds == 1);
        let ev = &interface(lookup("wl_keyboard").unwrap()).events[1];
        assert_eq!(ev.name, "enter");
        let b = Writer::new(5, 1)
            .uint(1)
            .uint(3)
            .array(&[1, 2, 3, 4, 5])
            .finish();
        let v = parse(&b, 0, ev).unwrap();
        assert_eq!(v[2], Value::Array(&[1, 2, 3, 4, 5]));
        let mut bad = Writer::new(5, 1).uint(1).uint(3).uint(9).uint(0).finish();
        bad.truncate(bad.len()); // size 20: array claims 9 bytes, has 4
        assert_eq!(
            parse(&bad, 0, ev),
            Err(WireError::Malformed("array past the end"))
        );
    }
}

//! The PulseAudio native protocol's framing: every packet is a 20-byte
//! descriptor (length, channel, offset high and low, flags; big-endian)
//! followed by `length` bytes. Channel `u32::MAX` carries a command (a
//! tagstruct); any other channel is audio data for that stream.

use std::io::{ErrorKind, Read};

/// Bytes in a descriptor.
pub const DESCRIPTOR: usize = 20;
/// The channel of command packets.
pub const COMMAND_CHANNEL: u32 = u32::MAX;

/// Errors reading a packet.
#[derive(Debug, thiserror::Error)]
pub enum WireError {
    /// The peer went away in the middle of a packet, or reading failed.
    #[error("reading: {0}")]
    Io(#[from] std::io::Error),
    /// A packet longer than this side allows.
    #[error("a {kind} packet of {len} bytes (at most {max})")]
    TooBig {
        /// "command" or "data".
        kind: &'static str,
        /// What the descriptor says.
        len: u32,
        /// The limit.
        max: usize,
    },
}

/// A packet's descriptor.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Descriptor {
    /// Payload bytes.
    pub length: u32,
    /// `COMMAND_CHANNEL`, or a stream's channel.
    pub channel: u32,
    /// Seek offset (data packets).
    pub offset: u64,
    /// Seek mode in the low byte; SHM release/revoke in the high bits.
    pub flags: u32,
}

impl Descriptor {
    /// Parses the 20 descriptor bytes.
    pub fn parse(b: &[u8; DESCRIPTOR]) -> Self {
        let w = |i: usize| u32::from_be_bytes([b[i], b[i + 1], b[i + 2], b[i + 3]]);
        Self {
            length: w(0),
            channel: w(4),
            offset: (u64::from(w(8)) << 32) | u64::from(w(12)),
            flags: w(16),
        }
    }

    /// The 20 descriptor bytes.
    pub fn encode(&self) -> [u8; DESCRIPTOR] {
        let mut b = [0u8; DESCRIPTOR];
        b[0..4].copy_from_slice(&self.length.to_be_bytes());
        b[4..8].copy_from_slice(&self.channel.to_be_bytes());
        b[8..16].copy_from_slice(&self.offset.to_be_bytes());
        b[16..20].copy_from_slice(&self.flags.to_be_bytes());
        b
    }

    /// Whether this is a command packet.
    pub fn is_command(&self) -> bool {
        self.channel == COMMAND_CHANNEL
    }
}

/// Size limits for one direction.
#[derive(Debug, Clone, Copy)]
pub struct Sizes {
    /// Largest command packet payload.
    pub command: usize,
    /// Largest data packet payload.
    pub data: usize,
}

/// Reads one packet into `buf` (the whole packet: descriptor and payload).
/// `Ok(None)` when the peer closed between packets.
pub fn read_packet<R: Read>(
    r: &mut R,
    sizes: Sizes,
    buf: &mut Vec<u8>,
) -> Result<Option<Descriptor>, WireError> {
    let mut head = [0u8; DESCRIPTOR];
    let mut got = 0;
    while got < DESCRIPTOR {
        match r.read(&mut head[got..]) {
            Ok(0) if got == 0 => return Ok(None),
            Ok(0) => return Err(std::io::Error::from(ErrorKind::UnexpectedEof).into()),
            Ok(n) => got += n,
            Err(e) if e.kind() == ErrorKind::Interrupted => {}
            Err(e) => return Err(e.into()),
        }
    }
    let d = Descriptor::parse(&head);
    let (kind, max) = if d.is_command() {
        ("command", sizes.command)
    } else {
        ("data", sizes.data)
    };
    let len = d.length as usize;
    if len > max {
        return Err(WireError::TooBig {
            kind,
            len: d.length,
            max,
        });
    }
    buf.clear();
    buf.extend_from_slice(&head);
    buf.resize(DESCRIPTOR + len, 0);
    r.read_exact(&mut buf[DESCRIPTOR..])?;
    Ok(Some(d))
}

/// A command packet with `payload` (a tagstruct).
pub fn command_packet(payload: &[u8]) -> Vec<u8> {
    let d = Descriptor {
        length: payload.len() as u32,
        channel: COMMAND_CHANNEL,
        offset: 0,
        flags: 0,
    };
    let mut v = Vec::with_capacity(DESCRIPTOR + payload.len());
    v.extend_from_slice(&d.encode());
    v.extend_from_slice(payload);
    v
}

#[cfg(test)]
mod tests {
    use super::*;

    const SIZES: Sizes = Sizes {
        command: 64,
        data: 128,
    };

    #[test]
    fn a_descriptor_round_trips() {
        let d = Descriptor {
            length: 7,
            channel: 3,
            offset: 0x1_0000_0002,
            flags: 1,
        };
        assert_eq!(Descriptor::parse(&d.encode()), d);
    }

    #[test]
    fn reads_whole_packets_and_a_clean_end() {
        let mut bytes = command_packet(b"hello");
        bytes.extend(command_packet(b""));
        let mut r = &bytes[..];
        let mut buf = Vec::new();
        let d = read_packet(&mut r, SIZES, &mut buf).unwrap().unwrap();
        assert_eq!((d.length, &buf[DESCRIPTOR..]), (5, &b"hello"[..]));
        let d = read_packet(&mut r, SIZES, &mut buf).unwrap().unwrap();
        assert_eq!(d.length, 0);
        assert!(read_packet(&mut r, SIZES, &mut buf).unwrap().is_none());
    }

    #[test]
    fn an_oversize_or_cut_packet_is_an_error() {
        let big = command_packet(&[0u8; 65]);
        let e = read_packet(&mut &big[..], SIZES, &mut Vec::new()).unwrap_err();
        assert!(matches!(e, WireError::TooBig { len: 65, .. }), "{e}");
        // Data may be larger than commands, up to its own limit.
        let mut data = Descriptor {
            length: 100,
            channel: 0,
            offset: 0,
            flags: 0,
        }
        .encode()
        .to_vec();
        data.extend([0u8; 100]);
        assert!(read_packet(&mut &data[..], SIZES, &mut Vec::new()).is_ok());
        let cut = &command_packet(b"hello")[..22];
        assert!(read_packet(&mut &cut[..], SIZES, &mut Vec::new()).is_err());
        assert!(read_packet(&mut &cut[..10], SIZES, &mut Vec::new()).is_err());
    }
}

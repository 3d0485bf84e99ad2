//! The default guest's network: a TAP device whose Ethernet frames travel
//! over one vsock stream to the host, where passt (a user-mode network stack)
//! is the other end.
//!
//! # The frame protocol on the vsock port
//!
//! The guest connects to the host (CID 2) on port [`NET_PORT`] (the kernel
//! command line's `vmapp.net=PORT` names it). Both directions then carry
//! Ethernet frames, each preceded by its length as a 4-byte big-endian
//! integer and nothing else: QEMU's `-netdev stream` protocol, which passt
//! speaks on its Unix socket. A frame is [`MIN_FRAME`] to [`MAX_FRAME`]
//! bytes. The host side offers DHCP (the guest takes its address, netmask,
//! router, resolvers and MTU from it); when the host turns the network off
//! the stream ends, and connects are refused until it is on again. Any guest
//! that speaks this protocol gets the network; nothing else is needed.

pub mod dhcp;
pub mod relay;
pub mod tap;
pub mod vnet;

/// The host port the guest's network stream connects to.
pub const NET_PORT: u32 = 1026;
/// The smallest frame: an Ethernet header.
pub const MIN_FRAME: usize = 14;
/// The largest frame: a 65535-byte MTU plus the Ethernet header.
pub const MAX_FRAME: usize = 65_535 + 14;

/// Network errors.
#[derive(Debug, thiserror::Error)]
pub enum NetError {
    /// The host sent a length outside [`MIN_FRAME`]..=[`MAX_FRAME`].
    #[error("frame length {0} is out of range")]
    BadLength(u32),
    /// The host closed the stream.
    #[error("the host closed the network stream")]
    Closed,
    /// No usable DHCP answer in time.
    #[error("no DHCP lease: {0}")]
    NoLease(&'static str),
    /// A system call failed.
    #[error("{0}: {1}")]
    Io(&'static str, #[source] std::io::Error),
}

/// Splits the byte stream from the host into frames. Reads go straight into
/// [`space`](Self::space); [`next`](Self::next) then hands out each whole
/// frame in place.
pub struct Deframer {
    buf: Vec<u8>,
    start: usize,
    end: usize,
}

impl Default for Deframer {
    fn default() -> Self {
        Self::new()
    }
}

impl Deframer {
    /// A deframer with room for a few largest frames.
    pub fn new() -> Self {
        Self {
            buf: vec![0; 4 * (MAX_FRAME + 4)],
            start: 0,
            end: 0,
        }
    }

    /// Where the next read goes (never empty: a whole largest frame and its
    /// length always fit after compaction).
    pub fn space(&mut self) -> &mut [u8] {
        if self.buf.len() - self.end < MAX_FRAME + 4 {
            self.buf.copy_within(self.start..self.end, 0);
            self.end -= self.start;
            self.start = 0;
        }
        &mut self.buf[self.end..]
    }

    /// Takes `n` bytes just read into [`space`](Self::space).
    pub fn filled(&mut self, n: usize) {
        self.end = (self.end + n).min(self.buf.len());
    }

    /// The next whole frame, if one is there.
    pub fn next_frame(&mut self) -> Result<Option<&mut [u8]>, NetError> {
        let avail = &self.buf[self.start..self.end];
        let Some(head) = avail.get(..4) else {
            return Ok(None);
        };
        let len = u32::from_be_bytes([head[0], head[1], head[2], head[3]]);
        let n = len as usize;
        if !(MIN_FRAME..=MAX_FRAME).contains(&n) {
            return Err(NetError::BadLength(len));
        }
        if avail.len() < 4 + n {
            return Ok(None);
        }
        let at = self.start + 4;
        self.start = at + n;
        if self.start == self.end {
            (self.start, self.end) = (0, 0);
        }
        Ok(Some(&mut self.buf[at..at + n]))
    }
}

/// Appends `frame` with its length prefix to `out`.
pub fn push_frame(out: &mut Vec<u8>, frame: &[u8]) {
    out.extend_from_slice(&(frame.len() as u32).to_be_bytes());
    out.extend_from_slice(frame);
}

#[cfg(test)]
mod tests {
    use super::*;

    fn feed(d: &mut Deframer, bytes: &[u8]) {
        let s = d.space();
        s[..bytes.len()].copy_from_slice(bytes);
        d.filled(bytes.len());
    }

    #[test]
    fn frames_come_out_whole_however_the_stream_is_cut() {
        let mut stream = Vec::new();
        let frames: Vec<Vec<u8>> = (0..50u8)
            .map(|i| vec![i; MIN_FRAME + usize::from(i) * 997])
            .collect();
        for f in &frames {
            push_frame(&mut stream, f);
        }
        for cut in [1, 3, 4, 5, 1000, 65_536] {
            let mut d = Deframer::new();
            let mut got = Vec::new();
            for chunk in stream.chunks(cut) {
                feed(&mut d, chunk);
                while let Some(f) = d.next_frame().unwrap() {
                    got.push(f.to_vec());
                }
            }
            assert_eq!(got, frames, "cut {cut}");
        }
    }

    #[test]
    fn the_largest_frames_fit_back_to_back() {
        let mut d = Deframer::new();
        let big = vec![7u8; MAX_FRAME];
        let mut stream = Vec::new();
        for _ in 0..9 {
            push_frame(&mut stream, &big);
        }
        let mut n = 0;
        let mut rest = &stream[..];
        while !rest.is_empty() {
            let s = d.space();
            let k = s.len().min(rest.len());
            s[..k].copy_from_slice(&rest[..k]);
            d.filled(k);
            rest = &rest[k..];
            while let Some(f) = d.next_frame().unwrap() {
                assert_eq!(f.len(), MAX_FRAME);
                n += 1;
            }
        }
        assert_eq!(n, 9);
    }

    #[test]
    fn lengths_out_of_range_are_errors() {
        for len in [0u32, 13, MAX_FRAME as u32 + 1, u32::MAX] {
            let mut d = Deframer::new();
            feed(&mut d, &len.to_be_bytes());
            assert!(
                matches!(d.next_frame(), Err(NetError::BadLength(l)) if l == len),
                "{len}"
            );
        }
        let mut d = Deframer::new();
        feed(&mut d, &[0, 0]);
        assert!(d.next_frame().unwrap().is_none(), "half a length waits");
    }
}

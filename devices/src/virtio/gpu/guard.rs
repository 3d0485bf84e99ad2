//! What rutabaga_gfx 0.1.85's cross-domain context would mishandle, refused
//! before it sees it. Each guard is a bug or an unbounded resource there
//! that a guest can reach (to send upstream; the guards stay either way):
//!
//! - a cross-domain command whose own size is 0 (or under its header): its
//!   command loop steps by that size and never ends;
//! - a second `CROSS_DOMAIN_CMD_INIT` on a context whose worker thread is
//!   running replaces the state the thread waits on, so destroying the
//!   context joins that thread for ever (the VM can then never stop);
//! - a `SEND` with a read-pipe identifier creates the pipe and keeps its read
//!   end *before* checking the identifier the guest guessed: every refused
//!   `SEND` leaves a host pipe behind until the context goes. Read-pipe ids
//!   are a per-context counter bumped only by such `SEND`s, so the guard
//!   keeps its own copy and lets through only the id rutabaga will assign,
//!   in a `SEND` where nothing can fail before the pipe is made; what still
//!   fails afterwards is counted and bounded per context.

/// `CROSS_DOMAIN_CMD_INIT`.
const CMD_INIT: u8 = 1;
/// `CROSS_DOMAIN_CMD_SEND`.
const CMD_SEND: u8 = 4;
/// A cross-domain command's header.
const HDR: usize = 8;
/// `CrossDomainSendReceive` up to its data: header, count, data size, and
/// the identifiers, their types and sizes (28 each).
const SEND_FIXED: usize = 352;
/// Identifiers a `SEND` may carry.
const MAX_IDENTIFIERS: usize = 28;
/// `CROSS_DOMAIN_ID_TYPE_READ_PIPE`.
const ID_TYPE_READ_PIPE: u32 = 3;
/// Where rutabaga's read-pipe ids start (the first is one more).
const READ_PIPE_START: u32 = 0x8000_0000;
/// Most `SEND`s with a pipe that may have failed after rutabaga made the
/// pipe (each may leave it behind), per context; more are refused.
pub const MAX_FAILED_PIPE_SENDS: u32 = 16;

/// One context's guard state.
#[derive(Debug)]
pub(super) struct ContextGuard {
    /// An INIT was handed to rutabaga.
    initialized: bool,
    /// rutabaga's read-pipe counter, as it stands.
    read_pipe_id: u32,
    /// `SEND`s with a pipe that failed.
    failed_pipe_sends: u32,
}

impl Default for ContextGuard {
    fn default() -> Self {
        ContextGuard {
            initialized: false,
            read_pipe_id: READ_PIPE_START,
            failed_pipe_sends: 0,
        }
    }
}

/// What a checked buffer does, for [`ContextGuard::submitted`].
#[derive(Debug, Default, PartialEq, Eq)]
pub(super) struct Submission {
    init: bool,
    pipe: bool,
}

fn le32(b: &[u8], at: usize) -> Option<u32> {
    Some(u32::from_le_bytes(b.get(at..at + 4)?.try_into().ok()?))
}

/// The commands of a buffer: (command, its bytes). `None` if a command's
/// size is under its header or past the buffer.
fn commands(data: &[u8]) -> Option<Vec<(u8, &[u8])>> {
    let mut out = Vec::new();
    let mut rest = data;
    while !rest.is_empty() {
        let &[cmd, _, lo, hi] = rest.get(..4)? else {
            return None;
        };
        let size = usize::from(u16::from_le_bytes([lo, hi]));
        if size < HDR || size > rest.len() {
            return None;
        }
        out.push((cmd, &rest[..size]));
        rest = &rest[size..];
    }
    Some(out)
}

/// The read-pipe identifiers of a `SEND` (as rutabaga walks them: the
/// first `count` of 28), with their positions.
fn read_pipes(send: &[u8]) -> Vec<(usize, u32)> {
    let Some(n) = le32(send, 8).filter(|_| send.len() >= SEND_FIXED) else {
        return Vec::new();
    };
    (0..(n as usize).min(MAX_IDENTIFIERS))
        .filter_map(|i| {
            let ty = le32(send, 16 + 4 * MAX_IDENTIFIERS + 4 * i)?;
            (ty == ID_TYPE_READ_PIPE).then_some((i, le32(send, 16 + 4 * i)?))
        })
        .collect()
}

impl ContextGuard {
    /// Checks a `SUBMIT_3D` buffer for this context; the reason if refused.
    pub(super) fn check(&self, data: &[u8]) -> Result<Submission, &'static str> {
        let cmds = commands(data).ok_or("a command with a bad size")?;
        let inits = cmds.iter().filter(|(c, _)| *c == CMD_INIT).count();
        if inits > 1 || (inits == 1 && self.initialized) {
            return Err("a second INIT of a context");
        }
        let mut pipe = false;
        for (c, bytes) in &cmds {
            if *c != CMD_SEND {
                continue;
            }
            // rutabaga reads a SEND's fixed part and data from the rest of
            // the buffer, whatever the SEND's own size says: a SEND must
            // hold both, so that what is checked here is what it reads.
            let data = le32(bytes, 12).map_or(usize::MAX, |n| n as usize);
            if SEND_FIXED
                .checked_add(data)
                .is_none_or(|need| bytes.len() < need)
            {
                return Err("a SEND shorter than its fixed part and data");
            }
            let pipes = read_pipes(bytes);
            let Some(&(at, id)) = pipes.first() else {
                continue;
            };
            if cmds.len() != 1 || pipes.len() != 1 || at != 0 {
                return Err("a read pipe that is not the first and only one of a lone SEND");
            }
            if le32(bytes, 8).is_none_or(|n| n as usize > MAX_IDENTIFIERS) {
                return Err("too many identifiers");
            }
            if id != self.read_pipe_id.wrapping_add(1) {
                return Err("a read pipe id the host will not assign");
            }
            if self.failed_pipe_sends >= MAX_FAILED_PIPE_SENDS {
                return Err("too many failed SENDs with a pipe");
            }
            pipe = true;
        }
        Ok(Submission {
            init: inits == 1,
            pipe,
        })
    }

    /// Records what rutabaga did with a buffer [`check`](Self::check)
    /// passed (`ok`: whether it succeeded).
    pub(super) fn submitted(&mut self, s: &Submission, ok: bool) {
        self.initialized |= s.init;
        if s.pipe {
            // Made before anything else in the SEND could fail.
            self.read_pipe_id = self.read_pipe_id.wrapping_add(1);
            if !ok {
                self.failed_pipe_sends += 1;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn xd(cmd: u8, size: u16) -> Vec<u8> {
        let mut b = vec![cmd, 0];
        b.extend_from_slice(&size.to_le_bytes());
        b.extend_from_slice(&[0; 4]);
        b
    }

    /// A SEND with `ids` (identifier, type).
    fn send(ids: &[(u32, u32)]) -> Vec<u8> {
        let mut b = xd(CMD_SEND, SEND_FIXED as u16);
        b.resize(SEND_FIXED, 0);
        b[8..12].copy_from_slice(&(ids.len() as u32).to_le_bytes());
        for (i, &(id, ty)) in ids.iter().enumerate() {
            b[16 + 4 * i..20 + 4 * i].copy_from_slice(&id.to_le_bytes());
            let t = 16 + 4 * MAX_IDENTIFIERS + 4 * i;
            b[t..t + 4].copy_from_slice(&ty.to_le_bytes());
        }
        b
    }

    #[test]
    fn sizes_that_would_loop_or_overrun_are_refused() {
        let g = ContextGuard::default();
        assert!(g.check(&[]).is_ok());
        for bad in [xd(3, 0), xd(3, 4), xd(3, 9), vec![3, 0, 8]] {
            assert!(g.check(&bad).is_err(), "{bad:?}");
        }
        let mut two = xd(3, 8);
        two.extend(xd(3, 8));
        assert!(g.check(&two).is_ok());
    }

    #[test]
    fn init_once_per_context() {
        let mut g = ContextGuard::default();
        let init = xd(CMD_INIT, 20);
        let mut init = init.clone();
        init.resize(20, 0);
        let mut twice = init.clone();
        twice.extend(&init);
        assert!(g.check(&twice).is_err(), "two in one buffer");
        let s = g.check(&init).unwrap();
        g.submitted(&s, false);
        assert!(g.check(&init).is_err(), "even after a failed one");
    }

    #[test]
    fn a_send_must_hold_its_fixed_part_and_data() {
        let g = ContextGuard::default();
        // A 16-byte SEND whose identifiers rutabaga would read from the
        // command after it (a read pipe at offset 128 of the buffer).
        let mut short = xd(CMD_SEND, 16);
        short.extend_from_slice(&1u32.to_le_bytes());
        short.extend_from_slice(&0u32.to_le_bytes());
        let mut filler = xd(3, (SEND_FIXED - 16) as u16);
        filler.resize(SEND_FIXED - 16, 0);
        short.extend(filler);
        short[128..132].copy_from_slice(&ID_TYPE_READ_PIPE.to_le_bytes());
        assert!(g.check(&short).is_err());
        // Data it claims but does not carry.
        let mut claims = send(&[(1, 1)]);
        claims[12..16].copy_from_slice(&100u32.to_le_bytes());
        assert!(g.check(&claims).is_err());
        claims.extend([0u8; 100]);
        let n = claims.len() as u16;
        claims[2..4].copy_from_slice(&n.to_le_bytes());
        assert!(g.check(&claims).is_ok());
    }

    #[test]
    fn read_pipes_only_with_the_id_the_host_assigns() {
        let mut g = ContextGuard::default();
        let pipe = |id| send(&[(id, ID_TYPE_READ_PIPE)]);
        assert!(g.check(&pipe(0x8000_0002)).is_err(), "a guess ahead");
        assert!(g.check(&pipe(7)).is_err());
        let s = g.check(&pipe(0x8000_0001)).unwrap();
        g.submitted(&s, true);
        assert!(g.check(&pipe(0x8000_0001)).is_err(), "used");
        let s = g.check(&pipe(0x8000_0002)).unwrap();
        g.submitted(&s, true);
        // Not first, two of them, or beside another command: refused.
        let blob_first = send(&[(1, 1), (0x8000_0003, ID_TYPE_READ_PIPE)]);
        assert!(g.check(&blob_first).is_err());
        let two = send(&[
            (0x8000_0003, ID_TYPE_READ_PIPE),
            (0x8000_0004, ID_TYPE_READ_PIPE),
        ]);
        assert!(g.check(&two).is_err());
        let mut beside = pipe(0x8000_0003);
        beside.extend(xd(3, 8));
        assert!(g.check(&beside).is_err());
        // A pipe after the first `count` identifiers is not walked.
        let mut hidden = send(&[(1, 1), (0x8000_0009, ID_TYPE_READ_PIPE)]);
        hidden[8..12].copy_from_slice(&1u32.to_le_bytes());
        assert_eq!(g.check(&hidden), Ok(Submission::default()));
        // Failures after the pipe was made are bounded.
        for i in 0..MAX_FAILED_PIPE_SENDS {
            let s = g.check(&pipe(0x8000_0003 + i)).unwrap();
            g.submitted(&s, false);
        }
        let next = 0x8000_0003 + MAX_FAILED_PIPE_SENDS;
        assert!(g.check(&pipe(next)).is_err());
        // Other SENDs go on.
        assert!(g.check(&send(&[(1, 1)])).is_ok());
    }
}

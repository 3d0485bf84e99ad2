//! The entry point of the `wl_session` fuzz target (`fuzz/`), shared with the
//! test that replays its corpus, so both run exactly the same code.
//!
//! Input format: a sequence of records `[ctl: u8][len: u16 le][len bytes]`.
//! `ctl` bit 0 picks the direction (0 = request from the client, 1 = event
//! from the compositor), bits 1–2 how many fds travel with it. The bytes are
//! framed by the wire parser exactly as the proxy frames a socket stream, and
//! every complete message goes through [`Session::request`] or
//! [`Session::event`]. The session starts with a registry (id 2) that has
//! been offered one global of every interface the default policy allows, so
//! binds and everything after them are reachable.

use std::collections::VecDeque;
use std::os::fd::OwnedFd;
use std::sync::{Arc, OnceLock};

use crate::policy::Policy;
use crate::session::{Session, Verdict};
use crate::wire::{self, Writer};

/// Counts of what one input did, for tests that check the harness reaches
/// the validator.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct Outcome {
    /// Messages accepted (forwarded, rewritten or dropped by policy).
    pub accepted: usize,
    /// Messages that ended the session with a violation.
    pub violations: usize,
}

fn policy() -> Arc<Policy> {
    static P: OnceLock<Arc<Policy>> = OnceLock::new();
    P.get_or_init(|| Arc::new(Policy::default())).clone()
}

/// A fd to attach: a small regular file, so `wl_shm` pool checks run.
fn fd() -> Option<OwnedFd> {
    static F: OnceLock<Option<OwnedFd>> = OnceLock::new();
    F.get_or_init(|| {
        let f = tempfile::tempfile().ok()?;
        f.set_len(8192).ok()?;
        Some(f.into())
    })
    .as_ref()
    .and_then(|f| f.try_clone().ok())
}

/// A session with a registry that has seen every allowed global.
pub fn primed_session() -> Session {
    let policy = policy();
    let mut s = Session::new(policy.clone(), Some(Arc::from("fuzz")));
    let ok = s.request(&Writer::new(1, 1).uint(2).finish(), &[]).is_ok();
    debug_assert!(ok);
    for (n, (name, cap)) in policy.allow.iter().enumerate() {
        let ev = Writer::new(2, 0)
            .uint(n as u32 + 1)
            .string(name)
            .uint(*cap)
            .finish();
        let _ = s.event(&ev, &mut []);
    }
    s
}

/// Runs one fuzz input. Never panics for any input: that is what the fuzz
/// target checks.
pub fn run(data: &[u8]) -> Outcome {
    let mut out = Outcome::default();
    let mut s = primed_session();
    let mut bufs: [Vec<u8>; 2] = [Vec::new(), Vec::new()];
    let mut fds: [VecDeque<OwnedFd>; 2] = [VecDeque::new(), VecDeque::new()];
    let mut rest = data;
    while let [ctl, l0, l1, tail @ ..] = rest {
        let len = usize::from(u16::from_le_bytes([*l0, *l1])).min(tail.len());
        let (chunk, next) = tail.split_at(len);
        rest = next;
        let dir = usize::from(ctl & 1);
        for _ in 0..(ctl >> 1) & 3 {
            if let Some(f) = fd() {
                fds[dir].push_back(f);
            }
        }
        bufs[dir].extend_from_slice(chunk);
        loop {
            let h = match wire::header(&bufs[dir]) {
                Ok(h) if bufs[dir].len() >= h.size => h,
                Ok(_) | Err(wire::WireError::NeedBytes) => break,
                Err(_) => {
                    // The proxy would disconnect; start over with a fresh client.
                    out.violations += 1;
                    s = primed_session();
                    bufs[dir].clear();
                    break;
                }
            };
            let msg: Vec<u8> = bufs[dir].drain(..h.size).collect();
            let q = fds[dir].make_contiguous();
            let r = if dir == 0 {
                s.request(&msg, q)
            } else {
                s.event(&msg, q)
            };
            match r {
                Ok((v, n)) => {
                    out.accepted += 1;
                    fds[dir].drain(..n.min(fds[dir].len()));
                    if let Verdict::Replace(b) = v {
                        // A rewrite is itself a valid message.
                        debug_assert!(wire::header(&b).is_ok_and(|h| h.size == b.len()));
                    }
                }
                Err(v) => {
                    out.violations += 1;
                    let e = s.error_event(&v);
                    debug_assert!(wire::header(&e).is_ok_and(|h| h.size == e.len()));
                    s = primed_session();
                    fds[dir].clear();
                }
            }
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn record(dir: u8, fds: u8, msg: &[u8]) -> Vec<u8> {
        let mut r = vec![dir | (fds << 1)];
        r.extend_from_slice(&(msg.len() as u16).to_le_bytes());
        r.extend_from_slice(msg);
        r
    }

    #[test]
    fn harness_reaches_the_validator() {
        let mut input = Vec::new();
        // bind wl_compositor (its name is its rank in the allowlist + 1).
        let p = Policy::default();
        let name = p.allow.keys().position(|k| k == "wl_compositor").unwrap() as u32 + 1;
        input.extend(record(
            0,
            0,
            &Writer::new(2, 0)
                .uint(name)
                .string("wl_compositor")
                .uint(4)
                .uint(3)
                .finish(),
        ));
        // create_surface 4, split across two records.
        let m = Writer::new(3, 0).uint(4).finish();
        input.extend(record(0, 0, &m[..5]));
        input.extend(record(0, 0, &m[5..]));
        assert_eq!(
            run(&input),
            Outcome {
                accepted: 2,
                violations: 0
            }
        );
        // Then an unknown object.
        input.extend(record(0, 0, &Writer::new(99, 0).finish()));
        assert_eq!(
            run(&input),
            Outcome {
                accepted: 2,
                violations: 1
            }
        );
    }
}

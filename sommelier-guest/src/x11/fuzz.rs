//! The `x11_bridge` fuzz harness: the bridge's Wayland side ([`Xwl`]) fed
//! requests as Xwayland would send them, events as the compositor would,
//! and the window manager's pairings, in any order.
//!
//! Input: records of `flags: u8` `len: u16 le` and `len` bytes
//! ([`crate::relay::session::fuzz_records`]). `flags` bit 0: an event from
//! upstream (else a request from Xwayland), bits 1–2: fds with it; bit 3:
//! a window-manager call instead, its bytes `surface: u32`, `what: u8` (0 a
//! toplevel, 1 a popup of `parent: u32` at `x: i16`, `y: i16`, 2 the X
//! selection offered as `text/plain`, 3 the host's asked for as
//! `text/plain`, else unpair).

use std::collections::VecDeque;
use std::os::fd::OwnedFd;

use super::xwl::{Kind, Toplevel, Xwl};
use crate::relay::session::fuzz_records;

/// Runs one input; returns how many records were taken before the bridge
/// gave up (all of them if it never did).
pub fn bridge(data: &[u8]) -> usize {
    let mut b = Xwl::new();
    let mut bufs = [Vec::new(), Vec::new()];
    let mut fds: [VecDeque<OwnedFd>; 2] = [VecDeque::new(), VecDeque::new()];
    let mut taken = 0;
    for (flags, chunk) in fuzz_records(data) {
        if flags & 8 != 0 {
            wm_call(&mut b, chunk);
        } else {
            let d = usize::from(flags & 1);
            bufs[d].extend_from_slice(chunk);
            for _ in 0..(flags >> 1) & 3 {
                if let Ok(f) = std::fs::File::open("/dev/null") {
                    fds[d].push_back(f.into());
                }
            }
            let r = if d == 0 {
                b.requests(&bufs[0], &mut fds[0])
            } else {
                b.events(&bufs[1], &mut fds[1])
            };
            match r {
                Ok(n) => {
                    bufs[d].drain(..n);
                }
                Err(_) => return taken,
            }
        }
        // What the sockets would carry away.
        b.to_up.clear();
        b.to_up_fds.clear();
        b.to_x.clear();
        b.to_x_fds.clear();
        b.wm.clear();
        b.sends.clear();
        taken += 1;
    }
    taken
}

fn wm_call(b: &mut Xwl, c: &[u8]) {
    let u32_at = |i: usize| {
        c.get(i..i + 4)
            .map(|w| u32::from_le_bytes([w[0], w[1], w[2], w[3]]))
    };
    let i16_at = |i: usize| {
        c.get(i..i + 2)
            .map_or(0, |w| i16::from_le_bytes([w[0], w[1]]))
    };
    let Some(surface) = u32_at(0) else { return };
    match c.get(4) {
        Some(0) => {
            let t = Toplevel {
                title: String::from_utf8_lossy(c.get(5..).unwrap_or_default()).into_owned(),
                ..Toplevel::default()
            };
            let _ = b.pair(surface, Kind::Toplevel(t));
        }
        Some(1) => {
            let kind = Kind::Popup {
                parent: u32_at(5).unwrap_or(0),
                x: i16_at(9).into(),
                y: i16_at(11).into(),
                width: 100,
                height: 100,
            };
            let _ = b.pair(surface, kind);
        }
        Some(2) => {
            let _ = b.set_selection(&["text/plain".to_string()]);
        }
        Some(3) => {
            let _ = b.receive("text/plain");
        }
        _ => b.unpair(surface),
    }
}

//! The `desktop` fuzz target's entry: a stream of frames as a guest (or the
//! host) would send them, parsed, checked to encode back exactly, and each
//! request put through the policy as the broker would.

use sommelier_guest::desktop::{fuzz_frames, Request};

use crate::policy::{self, Flood, Policy};

/// Runs `data`; returns how many requests parsed.
pub fn frames(data: &[u8]) -> usize {
    let reqs = fuzz_frames(data);
    let p = Policy::default();
    let now = std::time::Instant::now();
    let mut flood = Flood::notifications(now);
    for r in &reqs {
        let _ = policy::allowed(&p, r);
        match r {
            Request::Notify {
                app,
                summary,
                body,
                urgency,
                timeout_ms,
                ..
            } => {
                let _ = flood.take(now);
                let n = policy::notification("vm", app, summary, body, *urgency, *timeout_ms);
                assert!(n.summary.chars().count() <= policy::MAX_SUMMARY + 64 + 6);
                assert!(n.body.chars().count() <= policy::MAX_BODY);
            }
            Request::OpenUri(u) => {
                let _ = policy::check_uri(u);
            }
            _ => {}
        }
        let _ = policy::audit_line(0, "fuzz", &format!("{r:?}"), "seen");
    }
    reqs.len()
}

//! The `desktop` fuzz target's entry: a stream of frames as a guest (or the
//! host) would send them, parsed, checked to encode back exactly, and each
//! request put through the policy and a broker (whose desktop checks that
//! no refused link reaches it).

use sommelier_guest::desktop::{fuzz_frames, Request};

use crate::policy::{self, Flood, Notification, Policy};
use crate::serve::{Broker, Desktop};

/// A desktop that does everything and shows nothing.
struct Null(u32);

impl Desktop for Null {
    fn notify(&mut self, _: &Notification, replaces: u32) -> Result<u32, String> {
        self.0 = self.0.wrapping_add(1);
        Ok(if replaces != 0 { replaces } else { self.0 })
    }
    fn close_notification(&mut self, _: u32) -> Result<(), String> {
        Ok(())
    }
    fn open_uri(&mut self, uri: &str, _: bool) -> Result<(), String> {
        assert!(
            policy::check_uri(uri).is_ok(),
            "a refused link reached the desktop"
        );
        Ok(())
    }
}

/// Runs `data`; returns how many requests parsed.
pub fn frames(data: &[u8]) -> usize {
    let reqs = fuzz_frames(data);
    let p = Policy::default();
    let now = std::time::Instant::now();
    let mut flood = Flood::notifications(now);
    let mut broker = Broker::new("vm", Policy::default(), Null(0));
    for r in &reqs {
        let _ = broker.handle(r, &mut std::io::sink());
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

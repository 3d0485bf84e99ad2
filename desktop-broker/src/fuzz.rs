//! The `desktop` fuzz target's entry: a stream of frames as a guest (or the
//! host) would send them, parsed, checked to encode back exactly, and each
//! request handled by a broker whose desktop checks that nothing it gets
//! breaks the policy's bounds.

use sommelier_guest::desktop::fuzz_frames;

use crate::policy::{self, Notification, Policy};
use crate::serve::{Broker, Desktop};

/// A desktop that does everything, shows nothing, and checks what it gets.
struct Null(u32);

impl Desktop for Null {
    fn notify(&mut self, n: &Notification, replaces: u32) -> Result<u32, String> {
        assert!(n.summary.chars().count() <= policy::MAX_SUMMARY + 64 + 6);
        assert!(n.body.chars().count() <= policy::MAX_BODY);
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
    let mut broker = Broker::new("vm", Policy::default(), Null(0));
    for r in &reqs {
        let _ = broker.handle(r, &mut std::io::sink());
    }
    reqs.len()
}

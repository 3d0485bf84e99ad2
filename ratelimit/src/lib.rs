//! Rate-limited logging for anything a guest or a Wayland client can trigger: each call site logs
//! at most once per interval and reports how many messages it swallowed.

#[doc(hidden)]
pub use tracing;

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::OnceLock;
use std::time::Instant;

/// Minimum time between two messages from one call site.
pub const INTERVAL_MS: u64 = 1000;

/// Per-call-site state; create one with the [`warn_limited!`](crate::warn_limited) macro.
pub struct RateLimit {
    next_ms: AtomicU64,
    suppressed: AtomicU64,
}

fn now_ms() -> u64 {
    static START: OnceLock<Instant> = OnceLock::new();
    START.get_or_init(Instant::now).elapsed().as_millis() as u64
}

impl RateLimit {
    /// A limiter that allows the first message.
    pub const fn new() -> Self {
        Self {
            next_ms: AtomicU64::new(0),
            suppressed: AtomicU64::new(0),
        }
    }

    /// `Some(n)` when a message may be logged now (`n` were swallowed before it).
    pub fn check(&self) -> Option<u64> {
        let now = now_ms();
        let next = self.next_ms.load(Ordering::Relaxed);
        if now >= next
            && self
                .next_ms
                .compare_exchange(
                    next,
                    now + INTERVAL_MS,
                    Ordering::Relaxed,
                    Ordering::Relaxed,
                )
                .is_ok()
        {
            Some(self.suppressed.swap(0, Ordering::Relaxed))
        } else {
            self.suppressed.fetch_add(1, Ordering::Relaxed);
            None
        }
    }
}

impl Default for RateLimit {
    fn default() -> Self {
        Self::new()
    }
}

#[doc(hidden)]
#[macro_export]
macro_rules! __limited {
    ($level:ident, $($arg:tt)*) => {{
        static LIMIT: $crate::RateLimit = $crate::RateLimit::new();
        if let Some(suppressed) = LIMIT.check() {
            $crate::tracing::$level!(suppressed, $($arg)*);
        }
    }};
}

/// `tracing::warn!`, limited to one message per second per call site.
#[macro_export]
macro_rules! warn_limited {
    ($($arg:tt)*) => { $crate::__limited!(warn, $($arg)*) };
}

/// `tracing::info!`, limited to one message per second per call site.
#[macro_export]
macro_rules! info_limited {
    ($($arg:tt)*) => { $crate::__limited!(info, $($arg)*) };
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn allows_first_then_counts_suppressed() {
        let l = RateLimit::new();
        assert_eq!(l.check(), Some(0));
        assert_eq!(l.check(), None);
        assert_eq!(l.check(), None);
        assert_eq!(l.suppressed.load(Ordering::Relaxed), 2);
    }
}

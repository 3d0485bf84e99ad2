//! What a guest's desktop request may become: the VM's switches, plain and
//! bounded notification text tagged with the VM's name, links the host may
//! open, a flood limit, and one audit line per decision.

use std::time::{Duration, Instant};

use sommelier_guest::desktop::{Request, Urgency};
use thiserror::Error;

/// Longest notification summary shown (characters, before the tag).
pub const MAX_SUMMARY: usize = 200;
/// Longest notification body shown (characters).
pub const MAX_BODY: usize = 2000;
/// Longest link opened (bytes).
pub const MAX_URI: usize = 4096;

/// Why a request was refused.
#[derive(Debug, Error, PartialEq, Eq)]
pub enum PolicyError {
    /// The VM's policy turns this kind off.
    #[error("{0} is off for this VM")]
    Off(&'static str),
    /// Past the flood limit.
    #[error("rate-limited")]
    RateLimited,
    /// A link the host does not open.
    #[error("link refused: {0}")]
    Uri(&'static str),
    /// A notification id the host's server did not give this VM.
    #[error("not this VM's notification")]
    NotOwn,
}

/// Where a VM's links go (`--open-uri`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum OpenUri {
    /// The host's OpenURI portal, which asks the user (the default).
    Host,
    /// The host's portal, asking even where it would not (`ask: true`).
    Ask,
    /// Never.
    Deny,
    /// Another app VM: its profile's name.
    Profile(String),
}

/// A VM's desktop-integration switches.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Policy {
    /// `--notifications on|off` (default on).
    pub notifications: bool,
    /// `--open-uri` (default host).
    pub open_uri: OpenUri,
    /// `--file-chooser on|off` (default on).
    pub file_chooser: bool,
}

impl Default for Policy {
    fn default() -> Self {
        Policy {
            notifications: true,
            open_uri: OpenUri::Host,
            file_chooser: true,
        }
    }
}

/// A notification as the host's server gets it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Notification {
    /// `[VM] app`.
    pub app: String,
    /// `[VM] summary`, plain text.
    pub summary: String,
    /// Plain text, bounded.
    pub body: String,
    /// Urgency, as asked.
    pub urgency: Urgency,
    /// Milliseconds, bounded to a minute (0 and -1 as asked).
    pub timeout_ms: i32,
}

/// `tag` and a guest's `Notify` fields made what the host shows: markup
/// stripped (tags dropped, the five XML entities decoded), control and
/// bidirectional-override characters replaced, lengths bounded, the VM's
/// tag in front of the app's name and the summary.
pub fn notification(
    tag: &str,
    app: &str,
    summary: &str,
    body: &str,
    urgency: Urgency,
    timeout_ms: i32,
) -> Notification {
    let tag = plain(tag, 64);
    Notification {
        app: format!("[{tag}] {}", plain(app, 64)),
        summary: format!("[{tag}] {}", plain(&strip_markup(summary), MAX_SUMMARY)),
        body: plain(&strip_markup(body), MAX_BODY),
        urgency,
        timeout_ms: match timeout_ms {
            -1 | 0 => timeout_ms,
            t => t.clamp(1, 60_000),
        },
    }
}

/// Text without markup: `<…>` tags dropped, `&amp; &lt; &gt; &quot; &apos;`
/// decoded (after the tags, so a decoded `<` stays text).
pub fn strip_markup(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    let mut in_tag = false;
    for c in s.chars() {
        match (in_tag, c) {
            (false, '<') => in_tag = true,
            (true, '>') => in_tag = false,
            (false, c) => out.push(c),
            (true, _) => {}
        }
    }
    out.replace("&lt;", "<")
        .replace("&gt;", ">")
        .replace("&quot;", "\"")
        .replace("&apos;", "'")
        .replace("&amp;", "&")
}

/// At most `max` characters, control characters (but newline and tab) and
/// bidirectional controls replaced with U+FFFD.
pub fn plain(s: &str, max: usize) -> String {
    s.chars()
        .take(max)
        .map(|c| {
            let bidi = matches!(c, '\u{202a}'..='\u{202e}' | '\u{2066}'..='\u{2069}' | '\u{200e}' | '\u{200f}');
            if (c.is_control() && c != '\n' && c != '\t') || bidi {
                '\u{fffd}'
            } else {
                c
            }
        })
        .collect()
}

/// Whether the host may open `uri`: `http`, `https` or `mailto`, at most
/// [`MAX_URI`] bytes, no whitespace or control characters, and a host for
/// the web ones. (`file:` would name the host's files; `javascript:`,
/// `data:` and custom schemes would start who knows what.)
pub fn check_uri(uri: &str) -> Result<(), PolicyError> {
    if uri.len() > MAX_URI {
        return Err(PolicyError::Uri("longer than 4096 bytes"));
    }
    if uri.chars().any(|c| c.is_whitespace() || c.is_control()) {
        return Err(PolicyError::Uri("whitespace or control characters"));
    }
    let (scheme, rest) = uri.split_once(':').ok_or(PolicyError::Uri("no scheme"))?;
    match scheme.to_ascii_lowercase().as_str() {
        "http" | "https" => {
            let host = rest
                .strip_prefix("//")
                .ok_or(PolicyError::Uri("no host"))?
                .split(['/', '?', '#'])
                .next()
                .unwrap_or_default();
            // user@host: the part after the last '@' is the host.
            let host = host.rsplit('@').next().unwrap_or_default();
            if host.is_empty() || host.starts_with(':') {
                return Err(PolicyError::Uri("no host"));
            }
            Ok(())
        }
        "mailto" if !rest.is_empty() => Ok(()),
        _ => Err(PolicyError::Uri("scheme not allowed")),
    }
}

/// A token bucket: `burst` at once, then `per_sec` a second.
#[derive(Debug)]
pub struct Flood {
    burst: f64,
    per_sec: f64,
    tokens: f64,
    at: Instant,
    /// Whether the last refusal has been logged (one line per flood).
    logged: bool,
}

impl Flood {
    /// Full, as of `now`.
    pub fn new(burst: u32, per_sec: u32, now: Instant) -> Self {
        Flood {
            burst: f64::from(burst),
            per_sec: f64::from(per_sec),
            tokens: f64::from(burst),
            at: now,
            logged: false,
        }
    }

    /// The default for notifications: a burst of 10, then 1 a second.
    pub fn notifications(now: Instant) -> Self {
        Flood::new(10, 1, now)
    }

    /// Takes a token at `now`: `Ok(())`, or `Err(first)` where `first`
    /// says this is the flood's first refusal (the one to log).
    pub fn take(&mut self, now: Instant) -> Result<(), bool> {
        let dt = now.saturating_duration_since(self.at);
        self.at = self.at.max(now);
        self.tokens = (self.tokens + dt.as_secs_f64() * self.per_sec).min(self.burst);
        if self.tokens >= 1.0 {
            self.tokens -= 1.0;
            if self.tokens >= 1.0 {
                // The flood is over once the bucket refills past one.
                self.logged = false;
            }
            return Ok(());
        }
        Err(!std::mem::replace(&mut self.logged, true))
    }

    /// How long until the next token.
    pub fn wait(&self) -> Duration {
        if self.tokens >= 1.0 || self.per_sec <= 0.0 {
            return Duration::ZERO;
        }
        Duration::from_secs_f64((1.0 - self.tokens) / self.per_sec)
    }
}

/// What the policy lets through for `req` (before any dialog or server):
/// `Ok(())` to go on, or why not.
pub fn allowed(p: &Policy, req: &Request) -> Result<(), PolicyError> {
    match req {
        Request::Notify { .. } | Request::CloseNotification(_) if !p.notifications => {
            Err(PolicyError::Off("notifications"))
        }
        Request::OpenUri(_) if p.open_uri == OpenUri::Deny => {
            Err(PolicyError::Off("opening links"))
        }
        Request::OpenUri(u) => check_uri(u),
        Request::OpenFile { .. } | Request::SaveFile { .. } if !p.file_chooser => {
            Err(PolicyError::Off("the file chooser"))
        }
        _ => Ok(()),
    }
}

/// One line of a VM's audit log: seconds since the epoch, kind, what, and
/// the decision, tab-separated, each field plain (no tabs or newlines) and
/// bounded, so a guest cannot forge lines.
pub fn audit_line(unix_secs: u64, kind: &str, what: &str, decision: &str) -> String {
    let field = |s: &str, max: usize| {
        plain(s, max)
            .chars()
            .map(|c| if c == '\t' || c == '\n' { ' ' } else { c })
            .collect::<String>()
    };
    format!(
        "{unix_secs}\t{}\t{}\t{}\n",
        field(kind, 32),
        field(what, 512),
        field(decision, 64)
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn notifications_are_plain_bounded_and_tagged() {
        let n = notification(
            "mail",
            "Thunder\u{202e}bird",
            "<b>New</b> &lt;mail&gt; &amp; more",
            "line1\nline2\x1b[2J <a href='x'>link</a>",
            Urgency::Normal,
            3_600_000,
        );
        assert_eq!(n.app, "[mail] Thunder\u{fffd}bird");
        assert_eq!(n.summary, "[mail] New <mail> & more");
        assert_eq!(n.body, "line1\nline2\u{fffd}[2J link");
        assert_eq!(n.timeout_ms, 60_000);
        let long = notification(
            "t",
            "a",
            &"s".repeat(500),
            &"b".repeat(5000),
            Urgency::Low,
            -1,
        );
        assert_eq!(long.summary.chars().count(), "[t] ".len() + MAX_SUMMARY);
        assert_eq!(long.body.chars().count(), MAX_BODY);
        assert_eq!(long.timeout_ms, -1);
        // A decoded "<" is text, not the start of a tag.
        assert_eq!(strip_markup("&lt;b&gt;x"), "<b>x");
        // An unclosed tag hides the rest (nothing of it is shown as markup).
        assert_eq!(strip_markup("a<b"), "a");
    }

    #[test]
    fn only_web_and_mail_links_are_opened() {
        for ok in [
            "https://example.org/a?b=c#d",
            "HTTP://example.org",
            "https://user@example.org:8080/",
            "mailto:someone@example.org",
        ] {
            assert_eq!(check_uri(ok), Ok(()), "{ok}");
        }
        for bad in [
            "file:///etc/passwd",
            "javascript:alert(1)",
            "data:text/html,hi",
            "ssh://host",
            "https://",
            "https:///path",
            "https://@/",
            "https://:80/",
            "http:example.org",
            "https://example.org/a b",
            "https://example.org/\n",
            "mailto:",
            "example.org",
        ] {
            assert!(check_uri(bad).is_err(), "{bad}");
        }
        assert!(check_uri(&format!("https://e.org/{}", "a".repeat(MAX_URI))).is_err());
    }

    #[test]
    fn a_flood_gets_a_burst_then_one_a_second_and_one_log_line() {
        let t0 = Instant::now();
        let mut f = Flood::notifications(t0);
        for _ in 0..10 {
            assert_eq!(f.take(t0), Ok(()));
        }
        assert_eq!(f.take(t0), Err(true), "the first refusal is logged");
        assert_eq!(f.take(t0), Err(false));
        assert!(f.wait() > Duration::from_millis(900));
        let t1 = t0 + Duration::from_secs(1);
        assert_eq!(f.take(t1), Ok(()));
        assert_eq!(f.take(t1), Err(false), "the same flood: not logged again");
        // A minute later the bucket is full again; a new flood logs again.
        let t2 = t1 + Duration::from_secs(60);
        for _ in 0..10 {
            assert_eq!(f.take(t2), Ok(()));
        }
        assert_eq!(f.take(t2), Err(true));
        // Time that goes backwards gives nothing.
        assert_eq!(f.take(t0), Err(false));
    }

    #[test]
    fn the_policy_switches_each_kind() {
        let notify = Request::Notify {
            app: "a".into(),
            summary: "s".into(),
            body: "b".into(),
            urgency: Urgency::Normal,
            timeout_ms: -1,
            replaces: 0,
        };
        let open = Request::OpenFile {
            title: "t".into(),
            multiple: false,
            directory: false,
        };
        let link = Request::OpenUri("https://example.org".into());
        let on = Policy::default();
        for r in [&notify, &open, &link] {
            assert_eq!(allowed(&on, r), Ok(()));
        }
        let off = Policy {
            notifications: false,
            open_uri: OpenUri::Deny,
            file_chooser: false,
        };
        for r in [&notify, &open, &link] {
            assert!(
                matches!(allowed(&off, r), Err(PolicyError::Off(_))),
                "{r:?}"
            );
        }
        assert!(allowed(&on, &Request::OpenUri("file:///etc/shadow".into())).is_err());
        let settings =
            Request::ReadSetting("org.freedesktop.appearance".into(), "color-scheme".into());
        assert_eq!(allowed(&off, &settings), Ok(()));
    }

    #[test]
    fn audit_lines_cannot_be_forged() {
        let l = audit_line(1, "uri", "https://e.org/\n0\tforged\tallowed", "allowed");
        assert_eq!(l.lines().count(), 1);
        assert_eq!(l.matches('\t').count(), 3);
        assert!(l.starts_with("1\turi\thttps://e.org/"));
        assert!(l.ends_with("\tallowed\n"));
    }
}

//! One guest stream: frames read, each request checked against the VM's
//! policy and flood limit, carried out by the host's desktop (a
//! [`Desktop`]), answered, and written to the audit log. A frame that does
//! not parse ends the stream; nothing the guest sends is passed on as it
//! came.

use std::io::{Read, Write};
use std::time::{Instant, SystemTime, UNIX_EPOCH};

use sommelier_guest::desktop::{frame_len, DesktopError, FromHost, Reply, Request};
use thiserror::Error;

use crate::policy::{self, Flood, Notification, OpenUri, Policy, PolicyError};

/// Why a guest stream ended.
#[derive(Debug, Error)]
pub enum ServeError {
    /// The stream failed.
    #[error("guest stream: {0}")]
    Io(#[from] std::io::Error),
    /// The guest sent a frame that does not parse.
    #[error("bad frame from the guest: {0}")]
    Frame(#[from] DesktopError),
}

/// What the host's desktop does for a VM (the user's session bus: the
/// notification server, the portals).
pub trait Desktop {
    /// Shows `n`; the server's id for it.
    fn notify(&mut self, n: &Notification, replaces: u32) -> Result<u32, String>;
    /// Closes the notification the server calls `id`.
    fn close_notification(&mut self, id: u32) -> Result<(), String>;
    /// Opens `uri` in the user's browser (through the host's portal, which
    /// asks when `ask`).
    fn open_uri(&mut self, uri: &str, ask: bool) -> Result<(), String>;
}

/// A VM's broker state: its tag, policy and flood limit.
pub struct Broker<D> {
    tag: String,
    policy: Policy,
    flood: Flood,
    desktop: D,
    /// Notification ids the host's server gave this VM (a guest may close
    /// or replace only its own).
    ours: Vec<u32>,
}

/// Most notification ids remembered per VM (the oldest are forgotten).
const MAX_IDS: usize = 256;

impl<D: Desktop> Broker<D> {
    /// A broker for the VM tagged `tag`.
    pub fn new(tag: &str, policy: Policy, desktop: D) -> Self {
        Broker {
            tag: tag.to_string(),
            policy,
            flood: Flood::notifications(Instant::now()),
            desktop,
            ours: Vec::new(),
        }
    }

    /// The desktop it drives.
    pub fn desktop(&self) -> &D {
        &self.desktop
    }

    /// Serves one guest stream until it ends: `Ok` when the guest closed it,
    /// an error for a broken stream or a bad frame. Each decision is one
    /// line in `audit`.
    pub fn serve(
        &mut self,
        mut s: impl Read + Write,
        audit: &mut impl Write,
    ) -> Result<(), ServeError> {
        let mut buf = Vec::new();
        let mut chunk = [0u8; 8192];
        loop {
            while let Some(n) = frame_len(&buf)? {
                if buf.len() < n {
                    break;
                }
                let (id, req) = Request::decode(&buf[..n])?;
                buf.drain(..n);
                let reply = self.handle(&req, audit);
                s.write_all(&FromHost::Reply(id, reply).encode()?)?;
            }
            let n = s.read(&mut chunk)?;
            if n == 0 {
                return Ok(());
            }
            buf.extend_from_slice(&chunk[..n]);
        }
    }

    /// One request: the policy's decision, then the desktop's answer.
    pub fn handle(&mut self, req: &Request, audit: &mut impl Write) -> Reply {
        let (kind, what) = describe(req);
        let reply = match policy::allowed(&self.policy, req) {
            Err(e) => Err(e),
            Ok(()) => self.carry_out(req),
        };
        let (decision, reply) = match reply {
            Ok(r) => ("allowed".to_string(), r),
            Err(PolicyError::RateLimited) => ("rate-limited".into(), Reply::Denied),
            Err(e) => (format!("denied: {e}"), Reply::Denied),
        };
        let decision = match &reply {
            Reply::Failed => "failed on the host".to_string(),
            _ => decision,
        };
        let now = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_or(0, |d| d.as_secs());
        let _ = audit.write_all(policy::audit_line(now, kind, &what, &decision).as_bytes());
        reply
    }

    fn carry_out(&mut self, req: &Request) -> Result<Reply, PolicyError> {
        Ok(match req {
            Request::Notify {
                app,
                summary,
                body,
                urgency,
                timeout_ms,
                replaces,
            } => {
                if let Err(first) = self.flood.take(Instant::now()) {
                    if first {
                        ratelimit::warn_limited!(
                            "desktop-broker: [{}] floods notifications: past 10, one a second",
                            self.tag
                        );
                    }
                    return Err(PolicyError::RateLimited);
                }
                let n = policy::notification(&self.tag, app, summary, body, *urgency, *timeout_ms);
                // Only its own notification may be replaced.
                let replaces = if self.ours.contains(replaces) {
                    *replaces
                } else {
                    0
                };
                match self.desktop.notify(&n, replaces) {
                    Ok(id) => {
                        if !self.ours.contains(&id) {
                            if self.ours.len() == MAX_IDS {
                                self.ours.remove(0);
                            }
                            self.ours.push(id);
                        }
                        Reply::Done(id)
                    }
                    Err(_) => Reply::Failed,
                }
            }
            Request::CloseNotification(id) if self.ours.contains(id) => {
                match self.desktop.close_notification(*id) {
                    Ok(()) => Reply::Done(*id),
                    Err(_) => Reply::Failed,
                }
            }
            Request::CloseNotification(_) => return Err(PolicyError::NotOwn),
            Request::OpenUri(u) => {
                let ask = match &self.policy.open_uri {
                    OpenUri::Host => false,
                    OpenUri::Ask => true,
                    // Another VM's profile: not built yet.
                    OpenUri::Profile(_) => return Ok(Reply::Failed),
                    OpenUri::Deny => return Err(PolicyError::Off("opening links")),
                };
                match self.desktop.open_uri(u, ask) {
                    Ok(()) => Reply::Done(0),
                    Err(_) => Reply::Failed,
                }
            }
            // The file chooser and settings come with the portal part.
            Request::OpenFile { .. } | Request::SaveFile { .. } | Request::ReadSetting(..) => {
                Reply::Failed
            }
        })
    }
}

/// The audit log's kind and what for `req`.
fn describe(req: &Request) -> (&'static str, String) {
    match req {
        Request::Notify { app, summary, .. } => ("notification", format!("{app}: {summary}")),
        Request::CloseNotification(id) => ("notification-close", id.to_string()),
        Request::OpenUri(u) => ("open-uri", u.clone()),
        Request::OpenFile { title, .. } => ("open-file", title.clone()),
        Request::SaveFile { name, .. } => ("save-file", name.clone()),
        Request::ReadSetting(ns, key) => ("setting", format!("{ns} {key}")),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use sommelier_guest::desktop::Urgency;
    use std::os::unix::net::UnixStream;

    /// What the broker asked of the host's desktop.
    #[derive(Default)]
    struct Seen {
        calls: Vec<String>,
        next: u32,
    }

    impl Desktop for Seen {
        fn notify(&mut self, n: &Notification, replaces: u32) -> Result<u32, String> {
            self.calls.push(format!(
                "notify {} | {} | {} | {replaces}",
                n.app, n.summary, n.body
            ));
            self.next += 1;
            Ok(if replaces != 0 { replaces } else { self.next })
        }
        fn close_notification(&mut self, id: u32) -> Result<(), String> {
            self.calls.push(format!("close {id}"));
            Ok(())
        }
        fn open_uri(&mut self, uri: &str, ask: bool) -> Result<(), String> {
            self.calls.push(format!("open {uri} ask={ask}"));
            Ok(())
        }
    }

    fn notify(summary: &str, replaces: u32) -> Request {
        Request::Notify {
            app: "mail".into(),
            summary: summary.into(),
            body: "<b>hi</b>".into(),
            urgency: Urgency::Normal,
            timeout_ms: -1,
            replaces,
        }
    }

    /// Frames in over a real socket, answers back, one audit line each.
    #[test]
    fn a_stream_of_requests_is_answered_and_audited() {
        let (guest, host) = UnixStream::pair().unwrap();
        let mut b = Broker::new("work", Policy::default(), Seen::default());
        let mut frames = Vec::new();
        for (i, r) in [
            notify("one", 0),
            notify("two", 1),
            Request::CloseNotification(1),
            Request::CloseNotification(99),
            Request::OpenUri("https://example.org".into()),
            Request::OpenUri("file:///etc/passwd".into()),
        ]
        .iter()
        .enumerate()
        {
            frames.extend(r.encode(i as u32).unwrap());
        }
        // Written in pieces that cut frames, then closed.
        let writer = std::thread::spawn(move || {
            let mut g = guest;
            for c in frames.chunks(7) {
                g.write_all(c).unwrap();
            }
            g.shutdown(std::net::Shutdown::Write).unwrap();
            let mut back = Vec::new();
            g.read_to_end(&mut back).unwrap();
            back
        });
        let mut audit = Vec::new();
        b.serve(&host, &mut audit).unwrap();
        drop(host);
        let back = writer.join().unwrap();
        let mut answers = Vec::new();
        let mut rest = &back[..];
        while let Ok(Some(n)) = frame_len(rest) {
            answers.push(FromHost::decode(&rest[..n]).unwrap());
            rest = &rest[n..];
        }
        assert_eq!(
            answers,
            [
                FromHost::Reply(0, Reply::Done(1)),
                FromHost::Reply(1, Reply::Done(1)),
                FromHost::Reply(2, Reply::Done(1)),
                FromHost::Reply(3, Reply::Denied),
                FromHost::Reply(4, Reply::Done(0)),
                FromHost::Reply(5, Reply::Denied),
            ]
        );
        assert_eq!(
            b.desktop().calls,
            [
                "notify [work] mail | [work] one | hi | 0",
                "notify [work] mail | [work] two | hi | 1",
                "close 1",
                "open https://example.org ask=false",
            ]
        );
        let audit = String::from_utf8(audit).unwrap();
        assert_eq!(audit.lines().count(), 6, "{audit}");
        assert!(audit
            .lines()
            .nth(5)
            .unwrap()
            .ends_with("\tdenied: link refused: scheme not allowed"));
    }

    /// A guest may not replace another's notification: it gets a new one.
    #[test]
    fn only_own_notifications_are_replaced() {
        let mut b = Broker::new("vm", Policy::default(), Seen::default());
        let mut audit = Vec::new();
        assert_eq!(b.handle(&notify("x", 77), &mut audit), Reply::Done(1));
        assert_eq!(b.desktop().calls[0], "notify [vm] mail | [vm] x | hi | 0");
    }

    /// A flood: ten at once, then refused (one log line), audited as such.
    #[test]
    fn a_notification_flood_is_refused_past_the_burst() {
        let mut b = Broker::new("vm", Policy::default(), Seen::default());
        let mut audit = Vec::new();
        let replies: Vec<Reply> = (0..15)
            .map(|i| b.handle(&notify(&i.to_string(), 0), &mut audit))
            .collect();
        assert!(replies[..10].iter().all(|r| matches!(r, Reply::Done(_))));
        assert!(replies[10..].iter().all(|r| *r == Reply::Denied));
        assert_eq!(b.desktop().calls.len(), 10);
        let audit = String::from_utf8(audit).unwrap();
        assert_eq!(audit.matches("\trate-limited").count(), 5);
    }

    /// A frame that does not parse ends the stream with an error; what came
    /// before it was answered.
    #[test]
    fn a_bad_frame_ends_the_stream() {
        let (mut guest, host) = UnixStream::pair().unwrap();
        let mut bytes = notify("ok", 0).encode(1).unwrap();
        bytes.extend_from_slice(&[5, 0, 0, 0, 0x7f, 0, 0, 0, 0]);
        guest.write_all(&bytes).unwrap();
        let mut b = Broker::new("vm", Policy::default(), Seen::default());
        let r = b.serve(&host, &mut std::io::sink());
        assert!(
            matches!(r, Err(ServeError::Frame(DesktopError::Kind(0x7f)))),
            "{r:?}"
        );
        assert_eq!(b.desktop().calls.len(), 1);
        // A length past the bound is refused before any body is read.
        let (mut guest, host) = UnixStream::pair().unwrap();
        guest.write_all(&u32::MAX.to_le_bytes()).unwrap();
        let r = b.serve(&host, &mut std::io::sink());
        assert!(
            matches!(r, Err(ServeError::Frame(DesktopError::TooLarge(_)))),
            "{r:?}"
        );
    }

    /// Switched off: refused before the desktop hears of it.
    #[test]
    fn switched_off_kinds_never_reach_the_desktop() {
        let p = Policy {
            notifications: false,
            open_uri: OpenUri::Deny,
            file_chooser: false,
        };
        let mut b = Broker::new("vm", p, Seen::default());
        let mut audit = Vec::new();
        for r in [
            notify("x", 0),
            Request::OpenUri("https://example.org".into()),
        ] {
            assert_eq!(b.handle(&r, &mut audit), Reply::Denied);
        }
        assert!(b.desktop().calls.is_empty());
    }
}

//! The clipboard on the window manager's X side: the host's selection
//! becomes the X `CLIPBOARD` (the window manager owns it and answers
//! requests with data read from the host), and an X app's `CLIPBOARD`
//! becomes a host selection (its targets as MIME types; the data converted
//! when a host app asks). The Wayland half is [`super::xwl`]'s data device.

use std::collections::VecDeque;
use std::io::Write;
use std::os::fd::AsRawFd;
use std::os::fd::OwnedFd;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use x11rb::protocol::xproto::SelectionRequestEvent;

use super::xwl::{Xwl, XwlError};

/// Largest selection carried either way (X properties without INCR).
pub const MAX_DATA: usize = 4 << 20;

/// The text MIME types, best first.
const TEXT_MIMES: &[&str] = &[
    "text/plain;charset=utf-8",
    "text/plain",
    "UTF8_STRING",
    "TEXT",
    "STRING",
];

/// Atoms the clipboard names by role.
#[derive(Debug, Clone, Copy, Default)]
pub struct ClipAtoms {
    /// `CLIPBOARD`
    pub clipboard: u32,
    /// `TARGETS`
    pub targets: u32,
    /// `UTF8_STRING`
    pub utf8: u32,
    /// `STRING`
    pub string: u32,
    /// `TEXT`
    pub text: u32,
}

/// The X requests the clipboard makes.
pub trait XClip {
    /// The atoms.
    fn clip_atoms(&self) -> ClipAtoms;
    /// An atom by name (interned).
    fn atom(&mut self, name: &str) -> u32;
    /// An atom's name.
    fn atom_name(&mut self, atom: u32) -> Option<String>;
    /// Takes (or gives up) `CLIPBOARD` for the window manager's window.
    fn own_clipboard(&mut self, own: bool);
    /// Answers a request: the property set to `data` (of type `type_`,
    /// format 8, or 32 for atoms), or refused (`None`).
    fn answer(&mut self, req: &SelectionRequestEvent, data: Option<(u32, u8, Vec<u8>)>);
    /// Asks the `CLIPBOARD` owner for `target` into the window manager's
    /// window; the answer comes as a `SelectionNotify`.
    fn convert(&mut self, target: u32);
    /// Reads (and deletes) the converted property: (type, bytes).
    fn take_converted(&mut self) -> Option<(u32, Vec<u8>)>;
}

/// A host selection being read for an X app.
#[derive(Debug)]
pub struct Incoming {
    /// The pipe the host app writes into.
    pub fd: OwnedFd,
    /// What has come so far.
    pub data: Vec<u8>,
    /// The request it answers.
    pub req: SelectionRequestEvent,
}

/// The clipboard's state on the X side.
#[derive(Debug, Default)]
pub struct Clipboard {
    /// The host's MIME types while the window manager owns `CLIPBOARD`.
    host: Option<Vec<String>>,
    /// Host selections being read.
    pub incoming: Vec<Incoming>,
    /// Host apps waiting for the X selection's data: target, pipe.
    waiting: VecDeque<(u32, OwnedFd)>,
    /// The conversion under way (one at a time: one property), its target
    /// and when it was asked for.
    converting: Option<(Conversion, u32, Instant)>,
    /// The X owner's best text target (UTF8_STRING, else STRING, else TEXT).
    x_text: Option<u32>,
    /// Writes to host pipes under way.
    sending: Arc<AtomicUsize>,
}

#[derive(Debug)]
enum Conversion {
    Targets,
    Data(OwnedFd),
}

/// An X owner that has not answered a conversion by then is given up on
/// (the host reader gets nothing) so later pastes are not held up.
pub const CONVERT_WITHIN: Duration = Duration::from_secs(5);

/// Most host selections read at once.
const MAX_INCOMING: usize = 16;
/// Most X selections being written to host apps at once.
const MAX_SENDING: usize = 16;

impl Clipboard {
    /// The host's selection changed (`mimes` empty: none).
    pub fn host_selection(&mut self, x: &mut impl XClip, mimes: Vec<String>) {
        let own = !mimes.is_empty();
        if own || self.host.is_some() {
            x.own_clipboard(own);
        }
        self.host = own.then_some(mimes);
    }

    /// Another X client took `CLIPBOARD` (`ours`: the window manager did).
    pub fn x_owner_changed(&mut self, x: &mut impl XClip, ours: bool, owner: u32) {
        if ours {
            return;
        }
        self.host = None;
        self.x_text = None;
        // What was being converted came from the old owner: its host
        // reader gets nothing (its pipe closes), and the new owner's
        // targets are asked for now.
        self.converting = None;
        if owner != 0 {
            self.start(x, Conversion::Targets, x.clip_atoms().targets);
        }
    }

    fn start(&mut self, x: &mut impl XClip, c: Conversion, target: u32) {
        self.converting = Some((c, target, Instant::now()));
        x.convert(target);
    }

    /// The X owner's text target, once its targets are known.
    pub fn x_text_target(&self) -> Option<u32> {
        self.x_text
    }

    /// When the conversion under way is to be given up.
    pub fn deadline(&self) -> Option<Instant> {
        self.converting.as_ref().map(|c| c.2 + CONVERT_WITHIN)
    }

    /// Gives up a conversion the X owner has not answered by `now`, and
    /// asks for the next.
    pub fn expire(&mut self, x: &mut impl XClip, now: Instant) {
        if self.deadline().is_some_and(|d| d <= now) {
            eprintln!(
                "x11: the clipboard's owner did not answer within {} s; paste given up",
                CONVERT_WITHIN.as_secs()
            );
            self.converting = None;
            self.next_conversion(x);
        }
    }

    /// The window manager lost `CLIPBOARD` to another client.
    pub fn lost(&mut self) {
        self.host = None;
    }

    /// An X app asks for the host's selection as `req.target`.
    pub fn request(
        &mut self,
        x: &mut impl XClip,
        xwl: &mut Xwl,
        req: SelectionRequestEvent,
    ) -> Result<(), XwlError> {
        let a = x.clip_atoms();
        let Some(mimes) = self.host.clone().filter(|_| req.selection == a.clipboard) else {
            x.answer(&req, None);
            return Ok(());
        };
        if req.target == a.targets {
            let mut atoms = vec![a.targets];
            if mimes.iter().any(|m| m.starts_with("text/")) {
                atoms.extend([a.utf8, a.string, a.text]);
            }
            for m in &mimes {
                atoms.push(x.atom(m));
            }
            let bytes = atoms.iter().flat_map(|v| v.to_ne_bytes()).collect();
            x.answer(&req, Some((4, 32, bytes)));
            return Ok(());
        }
        let name = x.atom_name(req.target).unwrap_or_default();
        let mime = if [a.utf8, a.string, a.text].contains(&req.target) {
            TEXT_MIMES
                .iter()
                .find(|t| mimes.iter().any(|m| m == *t))
                .map(|t| t.to_string())
                .or_else(|| mimes.iter().find(|m| m.starts_with("text/")).cloned())
        } else {
            mimes.iter().find(|m| **m == name).cloned()
        };
        let fd = match mime {
            Some(m) if self.incoming.len() < MAX_INCOMING => xwl.receive(&m)?,
            _ => None,
        };
        match fd {
            Some(fd) => {
                set_nonblocking(&fd);
                self.incoming.push(Incoming {
                    fd,
                    data: Vec::new(),
                    req,
                });
            }
            None => x.answer(&req, None),
        }
        Ok(())
    }

    /// Reads what has come for incoming transfer `i`; answers its request
    /// at the end of the data (or refuses it past [`MAX_DATA`]).
    pub fn read_incoming(&mut self, x: &mut impl XClip, i: usize) {
        let Some(t) = self.incoming.get_mut(i) else {
            return;
        };
        let mut buf = [0u8; 65536];
        let done = loop {
            match read_fd(&t.fd, &mut buf) {
                Ok(0) => break Some(true),
                Ok(n) if t.data.len() + n <= MAX_DATA => t.data.extend_from_slice(&buf[..n]),
                Ok(_) => break Some(false),
                Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
                Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => break None,
                Err(_) => break Some(false),
            }
        };
        if let Some(ok) = done {
            let t = self.incoming.remove(i);
            let a = x.clip_atoms();
            // TEXT is answered as UTF-8; STRING is Latin-1 (ICCCM).
            let (type_, data) = match t.req.target {
                tg if tg == a.text => (a.utf8, t.data),
                tg if tg == a.string => (tg, latin1(&t.data)),
                tg => (tg, t.data),
            };
            x.answer(&t.req, ok.then_some((type_, 8, data)));
        }
    }

    /// A host app asks for the X selection as `mime`, into `fd`.
    pub fn host_wants(&mut self, x: &mut impl XClip, mime: &str, fd: OwnedFd) {
        let a = x.clip_atoms();
        let target = if mime.starts_with("text/plain") || mime == "UTF8_STRING" {
            self.x_text.unwrap_or(a.utf8)
        } else {
            x.atom(mime)
        };
        if self.waiting.len() < MAX_INCOMING {
            self.waiting.push_back((target, fd));
        }
        self.next_conversion(x);
    }

    fn next_conversion(&mut self, x: &mut impl XClip) {
        if self.converting.is_some() {
            return;
        }
        if let Some((target, fd)) = self.waiting.pop_front() {
            self.start(x, Conversion::Data(fd), target);
        }
    }

    /// The owner answered the window manager's conversion to `target`
    /// (`ok`: the property is set). An answer for another target (a late
    /// one, after its conversion was given up) is ignored.
    pub fn converted(
        &mut self,
        x: &mut impl XClip,
        xwl: &mut Xwl,
        target: u32,
        ok: bool,
    ) -> Result<(), XwlError> {
        if self.converting.as_ref().is_some_and(|c| c.1 != target) {
            return Ok(());
        }
        let got = if ok { x.take_converted() } else { None };
        let a = x.clip_atoms();
        match self.converting.take().map(|c| (c.0, c.1)) {
            Some((Conversion::Targets, _)) => {
                let mut mimes = Vec::new();
                let mut text = Vec::new();
                if let Some((_, bytes)) = got {
                    for c in bytes.chunks_exact(4).take(256) {
                        let atom = u32::from_ne_bytes([c[0], c[1], c[2], c[3]]);
                        if [a.utf8, a.string, a.text].contains(&atom) {
                            text.push(atom);
                        } else if let Some(n) = x.atom_name(atom).filter(|n| n.contains('/')) {
                            mimes.push(n);
                        }
                    }
                }
                self.x_text = [a.utf8, a.string, a.text]
                    .into_iter()
                    .find(|t| text.contains(t));
                if self.x_text.is_some() {
                    mimes.splice(
                        0..0,
                        ["text/plain;charset=utf-8".to_string(), "text/plain".into()],
                    );
                }
                mimes.dedup();
                xwl.set_selection(&mimes)?;
            }
            Some((Conversion::Data(fd), target)) => {
                // STRING is Latin-1; the host gets UTF-8.
                let got = got.map(|(t, d)| {
                    if target == a.string {
                        (
                            t,
                            d.iter()
                                .map(|&b| char::from(b))
                                .collect::<String>()
                                .into_bytes(),
                        )
                    } else {
                        (t, d)
                    }
                });
                // A host app that reads slowly must not hold up the window
                // manager: the write has a thread of its own (at most
                // MAX_SENDING; past that the reader gets nothing).
                let sending = self.sending.clone();
                if let Some((_, data)) =
                    got.filter(|_| sending.load(Ordering::Relaxed) < MAX_SENDING)
                {
                    sending.fetch_add(1, Ordering::Relaxed);
                    let spawned = std::thread::Builder::new()
                        .name("x11-clip-send".into())
                        .spawn(move || {
                            let _ = std::fs::File::from(fd).write_all(&data);
                            sending.fetch_sub(1, Ordering::Relaxed);
                        });
                    if spawned.is_err() {
                        self.sending.fetch_sub(1, Ordering::Relaxed);
                    }
                }
            }
            None => {}
        }
        self.next_conversion(x);
        Ok(())
    }
}

/// UTF-8 text as Latin-1, characters past U+00FF as `?`.
fn latin1(utf8: &[u8]) -> Vec<u8> {
    String::from_utf8_lossy(utf8)
        .chars()
        .map(|c| u8::try_from(u32::from(c)).unwrap_or(b'?'))
        .collect()
}

fn read_fd(fd: &OwnedFd, buf: &mut [u8]) -> std::io::Result<usize> {
    // SAFETY: reads into a buffer of `buf.len()` bytes this function owns.
    let n = unsafe { libc::read(fd.as_raw_fd(), buf.as_mut_ptr().cast(), buf.len()) };
    if n < 0 {
        return Err(std::io::Error::last_os_error());
    }
    Ok(n as usize)
}

fn set_nonblocking(fd: &OwnedFd) {
    // SAFETY: fcntl on an fd this process owns.
    unsafe {
        let fl = libc::fcntl(fd.as_raw_fd(), libc::F_GETFL);
        if fl >= 0 {
            libc::fcntl(fd.as_raw_fd(), libc::F_SETFL, fl | libc::O_NONBLOCK);
        }
    }
}

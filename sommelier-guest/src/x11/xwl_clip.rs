//! The clipboard on the bridge's Wayland side: a data device of the
//! bridge's own on Xwayland's upstream connection, so the compositor's rules
//! hold for X apps as for any client: the host's selection arrives only while
//! one of Xwayland's surfaces has the keyboard focus, and a selection is set
//! only with the serial of an input event Xwayland got. (Under wl-proxy's
//! `clipboard = "deny"` there is no data device manager to bind: nothing.)
//!
//! The window manager ([`super::super::clip`]) carries the data to and from X.

use std::collections::HashMap;
use std::os::fd::{FromRawFd, OwnedFd};

use wl_proxy::wire::Writer;

use super::{iface_id, op, Arg, Own, WmEvent, Xwl, XwlError};

/// MIME types kept per offer, and their longest name.
const MAX_MIMES: usize = 64;
const MAX_MIME_LEN: usize = 256;
/// Live offers (the selection's and ones in flight).
const MAX_OFFERS: usize = 64;

/// The bridge's data device and what goes through it.
#[derive(Debug, Default)]
pub(super) struct Clip {
    pub(super) seat: Option<u32>,
    pub(super) manager: Option<u32>,
    device: Option<u32>,
    /// Live offers and their MIME types.
    offers: HashMap<u32, Vec<String>>,
    /// The host's selection.
    selection: Option<u32>,
    /// The X selection, offered to the host.
    source: Option<u32>,
}

impl Xwl {
    /// Gets the data device once the seat and the manager are bound.
    pub(super) fn clip_device(&mut self) -> Result<(), XwlError> {
        if let (Some(seat), Some(m), None) = (self.clip.seat, self.clip.manager, self.clip.device) {
            let d = self.new_own(iface_id("wl_data_device"), Own::DataDevice)?;
            self.send(
                Writer::new(m, op("wl_data_device_manager", "get_data_device"))
                    .uint(d)
                    .uint(seat),
            );
            self.clip.device = Some(d);
        }
        Ok(())
    }

    /// An event on the data device, an offer or the source.
    pub(super) fn clip_event(
        &mut self,
        u: u32,
        what: Own,
        name: &str,
        args: &[Arg],
        fd: Option<OwnedFd>,
    ) -> Result<(), XwlError> {
        let n = |i: usize| match args.get(i) {
            Some(Arg::N(v)) => *v as u32,
            _ => 0,
        };
        let text = |i: usize| match args.get(i) {
            Some(Arg::S(s)) => s.clone(),
            _ => String::new(),
        };
        match (what, name) {
            (Own::DataDevice, "data_offer") => {
                let o = n(0);
                if self.clip.offers.len() >= MAX_OFFERS {
                    return Err(XwlError::Protocol("too many data offers".into()));
                }
                self.ids.claim_server(o);
                self.own.insert(o, (iface_id("wl_data_offer"), Own::Offer));
                self.clip.offers.insert(o, Vec::new());
            }
            (Own::DataDevice, "selection") => self.host_selection(n(0)),
            // Drag and drop into X windows is not carried: the offer goes.
            (Own::DataDevice, "enter") => self.drop_offer(n(4)),
            (Own::Offer, "offer") => {
                let mime = text(0);
                if let Some(m) = self.clip.offers.get_mut(&u) {
                    if m.len() < MAX_MIMES && mime.len() <= MAX_MIME_LEN {
                        m.push(mime);
                    }
                }
            }
            (Own::Source, "send") => {
                if let (Some(fd), true) = (fd, self.clip.source == Some(u)) {
                    self.sends.push_back((text(0), fd));
                }
            }
            (Own::Source, "cancelled") => {
                self.destroy_own(u, "wl_data_source");
                if self.clip.source == Some(u) {
                    self.clip.source = None;
                }
            }
            _ => {}
        }
        Ok(())
    }

    /// The host's selection is offer `o` (0: none).
    fn host_selection(&mut self, o: u32) {
        if self.clip.source.is_some() {
            // The X selection, handed back: the window manager has it.
            if self.clip.selection != Some(o) {
                self.drop_offer(o);
            }
            return;
        }
        if let Some(old) = self.clip.selection.take() {
            if old != o {
                self.drop_offer(old);
            }
        }
        let mimes = match self.clip.offers.get(&o) {
            Some(m) => {
                self.clip.selection = Some(o);
                m.clone()
            }
            None => Vec::new(),
        };
        self.wm.push_back(WmEvent::Selection { mimes });
    }

    /// Destroys offer `o`. Its id stays the bridge's until the compositor
    /// makes another object with it (events may still be on their way).
    fn drop_offer(&mut self, o: u32) {
        if self.clip.offers.remove(&o).is_some() {
            self.destroy_own(o, "wl_data_offer");
        }
    }

    /// A pipe whose read end gets the host selection's data as `mime`, if
    /// the host offers it.
    pub fn receive(&mut self, mime: &str) -> Result<Option<OwnedFd>, XwlError> {
        let Some(o) = self.clip.selection else {
            return Ok(None);
        };
        if !self
            .clip
            .offers
            .get(&o)
            .is_some_and(|m| m.iter().any(|x| x == mime))
        {
            return Ok(None);
        }
        let mut fds = [0i32; 2];
        // SAFETY: pipe2 writes two fds into the array.
        if unsafe { libc::pipe2(fds.as_mut_ptr(), libc::O_CLOEXEC) } < 0 {
            return Err(XwlError::Protocol(format!(
                "pipe: {}",
                std::io::Error::last_os_error()
            )));
        }
        // SAFETY: pipe2 just made both fds; nothing else owns them.
        let (r, w) = unsafe { (OwnedFd::from_raw_fd(fds[0]), OwnedFd::from_raw_fd(fds[1])) };
        self.send(Writer::new(o, op("wl_data_offer", "receive")).string(mime));
        self.to_up_fds.push(w);
        Ok(Some(r))
    }

    /// Offers the X selection to the host as `mimes` (none: withdraws it).
    pub fn set_selection(&mut self, mimes: &[String]) -> Result<(), XwlError> {
        let (Some(dev), Some(m)) = (self.clip.device, self.clip.manager) else {
            return Ok(());
        };
        if let Some(old) = self.clip.source.take() {
            self.destroy_own(old, "wl_data_source");
        }
        let mut src = 0;
        if !mimes.is_empty() {
            src = self.new_own(iface_id("wl_data_source"), Own::Source)?;
            self.send(Writer::new(m, op("wl_data_device_manager", "create_data_source")).uint(src));
            for mime in mimes.iter().take(MAX_MIMES) {
                self.send(Writer::new(src, op("wl_data_source", "offer")).string(mime));
            }
            self.clip.source = Some(src);
        }
        let serial = self.serial;
        self.send(
            Writer::new(dev, op("wl_data_device", "set_selection"))
                .uint(src)
                .uint(serial),
        );
        Ok(())
    }
}

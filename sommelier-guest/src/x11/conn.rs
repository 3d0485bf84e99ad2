//! The window manager's live X connection ([`XServer`] over x11rb).

use x11rb::connection::Connection;
use x11rb::protocol::composite::{self, ConnectionExt as _};
use x11rb::protocol::xfixes::{self, ConnectionExt as _};
use x11rb::protocol::xproto::{
    AtomEnum, ChangeWindowAttributesAux, ClientMessageEvent, ConfigureWindowAux,
    ConnectionExt as _, CreateWindowAux, EventMask, InputFocus, PropMode, SelectionNotifyEvent,
    SelectionRequestEvent, WindowClass, SELECTION_NOTIFY_EVENT,
};
use x11rb::rust_connection::{DefaultStream, RustConnection};
use x11rb::wrapper::ConnectionExt as _;

use super::clip::{ClipAtoms, XClip, MAX_DATA};
use super::xwm::{Props, StateAtoms, XServer};

/// The atoms the window manager uses (generated, so undocumented).
#[allow(missing_docs)]
mod atoms {
    x11rb::atom_manager! {
        pub Atoms: AtomsCookie {
            WL_SURFACE_ID,
            WM_PROTOCOLS,
            WM_DELETE_WINDOW,
            WM_TAKE_FOCUS,
            WM_STATE,
            WM_S0,
            UTF8_STRING,
            _NET_WM_NAME,
            _NET_WM_STATE,
            _NET_WM_STATE_FULLSCREEN,
            _NET_WM_STATE_MAXIMIZED_VERT,
            _NET_WM_STATE_MAXIMIZED_HORZ,
            _NET_ACTIVE_WINDOW,
            _NET_SUPPORTED,
            _NET_SUPPORTING_WM_CHECK,
            _XWAYLAND_ALLOW_COMMITS,
            CLIPBOARD,
            TARGETS,
            TEXT,
            _VMAPP_SELECTION,
        }
    }
}
use atoms::Atoms;

/// Why the window manager could not start or go on.
#[derive(Debug, thiserror::Error)]
pub enum ConnError {
    /// Connecting to Xwayland failed.
    #[error("connecting to Xwayland: {0}")]
    Connect(#[from] x11rb::errors::ConnectError),
    /// The connection broke.
    #[error("X connection: {0}")]
    Connection(#[from] x11rb::errors::ConnectionError),
    /// A reply was an error.
    #[error("X: {0}")]
    Reply(#[from] x11rb::errors::ReplyError),
    /// No X id was left.
    #[error("X: {0}")]
    Id(#[from] x11rb::errors::ReplyOrIdError),
    /// Another window manager is there.
    #[error("another window manager owns the display")]
    Taken,
    /// Socket setup failed.
    #[error(transparent)]
    Io(#[from] std::io::Error),
}

/// The live connection.
pub struct Live {
    /// The connection.
    pub conn: RustConnection,
    /// The root window.
    pub root: u32,
    atoms: Atoms,
    /// The window manager's own window (`_NET_SUPPORTING_WM_CHECK`, the
    /// selections' owner and requestor).
    check: u32,
}

impl Live {
    /// Connects over Xwayland's `-wm` socket and becomes the window
    /// manager: substructure redirect on the root, every child redirected
    /// for Composite by hand (or Xwayland makes no surfaces), `WM_S0` owned
    /// (or Xwayland accepts no other clients), and the connection's end
    /// ends the server once the apps have gone (XFixes disconnect mode).
    pub fn connect(stream: std::os::unix::net::UnixStream) -> Result<Self, ConnError> {
        let (stream, _) = DefaultStream::from_unix_stream(stream)?;
        let conn = RustConnection::connect_to_stream(stream, 0)?;
        let root = conn.setup().roots[0].root;
        let atoms = Atoms::new(&conn)?.reply()?;
        conn.change_window_attributes(
            root,
            &ChangeWindowAttributesAux::new().event_mask(
                EventMask::SUBSTRUCTURE_REDIRECT
                    | EventMask::SUBSTRUCTURE_NOTIFY
                    | EventMask::PROPERTY_CHANGE,
            ),
        )?
        .check()
        .map_err(|_| ConnError::Taken)?;
        conn.composite_query_version(0, 4)?.reply()?;
        conn.composite_redirect_subwindows(root, composite::Redirect::MANUAL)?
            .check()?;
        conn.xfixes_query_version(6, 0)?.reply()?;
        conn.xfixes_set_client_disconnect_mode(xfixes::ClientDisconnectFlags::TERMINATE)?;
        let check = announce(&conn, root, &atoms)?;
        conn.set_selection_owner(check, atoms.WM_S0, x11rb::CURRENT_TIME)?;
        conn.xfixes_select_selection_input(
            check,
            atoms.CLIPBOARD,
            xfixes::SelectionEventMask::SET_SELECTION_OWNER
                | xfixes::SelectionEventMask::SELECTION_WINDOW_DESTROY
                | xfixes::SelectionEventMask::SELECTION_CLIENT_CLOSE,
        )?;
        conn.flush()?;
        Ok(Live {
            conn,
            root,
            atoms,
            check,
        })
    }

    fn property(
        &self,
        w: u32,
        atom: u32,
        max_words: u32,
    ) -> Option<x11rb::protocol::xproto::GetPropertyReply> {
        self.conn
            .get_property(false, w, atom, AtomEnum::ANY, 0, max_words)
            .ok()?
            .reply()
            .ok()
            .filter(|r| r.type_ != 0)
    }

    fn text(&self, w: u32, atom: u32) -> Option<String> {
        self.property(w, atom, 256)
            .filter(|r| r.format == 8)
            .map(|r| {
                String::from_utf8_lossy(&r.value)
                    .trim_end_matches('\0')
                    .to_string()
            })
    }

    fn words(&self, w: u32, atom: u32) -> Vec<u32> {
        self.property(w, atom, 64)
            .and_then(|r| r.value32().map(|v| v.collect()))
            .unwrap_or_default()
    }

    fn send_message(&self, w: u32, type_: u32, data: [u32; 5]) {
        let e = ClientMessageEvent::new(32, w, type_, data);
        let _ = self.conn.send_event(false, w, EventMask::NO_EVENT, e);
    }
}

/// The window manager's own window, named on the root as EWMH asks
/// (`_NET_SUPPORTING_WM_CHECK`, `_NET_SUPPORTED`): toolkits look for it.
fn announce(conn: &RustConnection, root: u32, atoms: &Atoms) -> Result<u32, ConnError> {
    let check = conn.generate_id()?;
    conn.create_window(
        0,
        check,
        root,
        -1,
        -1,
        1,
        1,
        0,
        WindowClass::INPUT_ONLY,
        0,
        &CreateWindowAux::new(),
    )?;
    for w in [root, check] {
        conn.change_property32(
            PropMode::REPLACE,
            w,
            atoms._NET_SUPPORTING_WM_CHECK,
            AtomEnum::WINDOW,
            &[check],
        )?;
    }
    conn.change_property8(
        PropMode::REPLACE,
        check,
        atoms._NET_WM_NAME,
        atoms.UTF8_STRING,
        b"vmapp",
    )?;
    conn.change_property32(
        PropMode::REPLACE,
        root,
        atoms._NET_SUPPORTED,
        AtomEnum::ATOM,
        &[
            atoms._NET_WM_NAME,
            atoms._NET_WM_STATE,
            atoms._NET_WM_STATE_FULLSCREEN,
            atoms._NET_WM_STATE_MAXIMIZED_VERT,
            atoms._NET_WM_STATE_MAXIMIZED_HORZ,
            atoms._NET_ACTIVE_WINDOW,
            atoms._NET_SUPPORTING_WM_CHECK,
        ],
    )?;
    Ok(check)
}

impl XClip for Live {
    fn clip_atoms(&self) -> ClipAtoms {
        ClipAtoms {
            clipboard: self.atoms.CLIPBOARD,
            targets: self.atoms.TARGETS,
            utf8: self.atoms.UTF8_STRING,
            string: AtomEnum::STRING.into(),
            text: self.atoms.TEXT,
        }
    }

    fn atom(&mut self, name: &str) -> u32 {
        self.conn
            .intern_atom(false, name.as_bytes())
            .ok()
            .and_then(|c| c.reply().ok())
            .map_or(0, |r| r.atom)
    }

    fn atom_name(&mut self, atom: u32) -> Option<String> {
        let r = self.conn.get_atom_name(atom).ok()?.reply().ok()?;
        String::from_utf8(r.name).ok()
    }

    fn own_clipboard(&mut self, own: bool) {
        let owner = if own { self.check } else { 0 };
        let _ = self
            .conn
            .set_selection_owner(owner, self.atoms.CLIPBOARD, x11rb::CURRENT_TIME);
    }

    fn answer(&mut self, req: &SelectionRequestEvent, data: Option<(u32, u8, Vec<u8>)>) {
        let mut property = if req.property == 0 {
            req.target
        } else {
            req.property
        };
        match data {
            Some((type_, format, bytes)) => {
                let len = bytes.len() as u32 / u32::from(format / 8);
                if self
                    .conn
                    .change_property(
                        PropMode::REPLACE,
                        req.requestor,
                        property,
                        type_,
                        format,
                        len,
                        &bytes,
                    )
                    .is_err()
                {
                    property = 0;
                }
            }
            None => property = 0,
        }
        let e = SelectionNotifyEvent {
            response_type: SELECTION_NOTIFY_EVENT,
            sequence: 0,
            time: req.time,
            requestor: req.requestor,
            selection: req.selection,
            target: req.target,
            property,
        };
        let _ = self
            .conn
            .send_event(false, req.requestor, EventMask::NO_EVENT, e);
    }

    fn convert(&mut self, target: u32) {
        let _ = self.conn.convert_selection(
            self.check,
            self.atoms.CLIPBOARD,
            target,
            self.atoms._VMAPP_SELECTION,
            x11rb::CURRENT_TIME,
        );
    }

    fn take_converted(&mut self) -> Option<(u32, Vec<u8>)> {
        let prop = self.atoms._VMAPP_SELECTION;
        let r = self
            .conn
            .get_property(
                false,
                self.check,
                prop,
                AtomEnum::ANY,
                0,
                (MAX_DATA / 4) as u32,
            )
            .ok()?
            .reply()
            .ok()?;
        let _ = self.conn.delete_property(self.check, prop);
        // INCR (the owner's transfer in pieces, past ~256 KiB for GTK) is
        // not carried: the host app gets nothing rather than a part.
        if r.type_ == 0 || r.bytes_after > 0 || self.atom_name(r.type_).as_deref() == Some("INCR") {
            return None;
        }
        Some((r.type_, r.value))
    }
}

impl XServer for Live {
    fn wm_window(&self) -> u32 {
        self.check
    }

    fn props(&mut self, w: u32) -> Props {
        let a = &self.atoms;
        let mut p = Props::default();
        p.toplevel.title = self
            .text(w, a._NET_WM_NAME)
            .or_else(|| self.text(w, AtomEnum::WM_NAME.into()))
            .unwrap_or_default();
        // WM_CLASS: instance NUL class NUL; the class names the app.
        if let Some(r) = self.property(w, AtomEnum::WM_CLASS.into(), 64) {
            let mut parts = r.value.split(|&b| b == 0);
            let instance = parts.next().unwrap_or_default();
            let class = parts.next().filter(|c| !c.is_empty()).unwrap_or(instance);
            p.toplevel.app_id = String::from_utf8_lossy(class).into_owned();
        }
        p.transient_for = self
            .words(w, AtomEnum::WM_TRANSIENT_FOR.into())
            .first()
            .copied()
            .filter(|&t| t != 0);
        let protocols = self.words(w, a.WM_PROTOCOLS);
        p.delete = protocols.contains(&a.WM_DELETE_WINDOW);
        p.take_focus = protocols.contains(&a.WM_TAKE_FOCUS);
        // WM_SIZE_HINTS: flags, 4 obsolete words, min w/h, max w/h, …
        let hints = self.words(w, AtomEnum::WM_NORMAL_HINTS.into());
        if hints.len() >= 9 {
            let clamp = |v: u32| (v.min(1 << 15)) as i32;
            if hints[0] & (1 << 4) != 0 {
                p.toplevel.min = (clamp(hints[5]), clamp(hints[6]));
            }
            if hints[0] & (1 << 5) != 0 {
                p.toplevel.max = (clamp(hints[7]), clamp(hints[8]));
            }
        }
        let states = self.words(w, a._NET_WM_STATE);
        p.toplevel.fullscreen = states.contains(&a._NET_WM_STATE_FULLSCREEN);
        p.toplevel.maximized = states.contains(&a._NET_WM_STATE_MAXIMIZED_VERT)
            && states.contains(&a._NET_WM_STATE_MAXIMIZED_HORZ);
        p
    }

    fn map(&mut self, w: u32) {
        let _ = self.conn.change_window_attributes(
            w,
            &ChangeWindowAttributesAux::new()
                .event_mask(EventMask::PROPERTY_CHANGE | EventMask::FOCUS_CHANGE),
        );
        let _ = self.conn.change_property32(
            PropMode::REPLACE,
            w,
            self.atoms.WM_STATE,
            self.atoms.WM_STATE,
            &[1, 0],
        );
        let _ = self.conn.map_window(w);
    }

    fn configure_request(&mut self, e: &x11rb::protocol::xproto::ConfigureRequestEvent) {
        let aux = ConfigureWindowAux::from_configure_request(e);
        let _ = self.conn.configure_window(e.window, &aux);
    }

    fn resize(&mut self, w: u32, width: u32, height: u32) {
        let _ = self
            .conn
            .configure_window(w, &ConfigureWindowAux::new().width(width).height(height));
    }

    fn focus(&mut self, w: u32, take_focus: bool) {
        let _ = self
            .conn
            .set_input_focus(InputFocus::POINTER_ROOT, w, x11rb::CURRENT_TIME);
        if take_focus {
            self.send_message(
                w,
                self.atoms.WM_PROTOCOLS,
                [self.atoms.WM_TAKE_FOCUS, 0, 0, 0, 0],
            );
        }
        let _ = self.conn.change_property32(
            PropMode::REPLACE,
            self.root,
            self.atoms._NET_ACTIVE_WINDOW,
            AtomEnum::WINDOW,
            &[w],
        );
    }

    fn close(&mut self, w: u32, delete: bool) {
        if delete {
            self.send_message(
                w,
                self.atoms.WM_PROTOCOLS,
                [self.atoms.WM_DELETE_WINDOW, 0, 0, 0, 0],
            );
        } else {
            let _ = self.conn.kill_client(w);
        }
    }

    fn withdrawn(&mut self, w: u32) {
        let _ = self.conn.change_property32(
            PropMode::REPLACE,
            w,
            self.atoms.WM_STATE,
            self.atoms.WM_STATE,
            &[0, 0],
        );
    }

    fn allow_commits(&mut self, w: u32, allow: bool) {
        let _ = self.conn.change_property32(
            PropMode::REPLACE,
            w,
            self.atoms._XWAYLAND_ALLOW_COMMITS,
            AtomEnum::CARDINAL,
            &[u32::from(allow)],
        );
    }

    fn surface_id_atom(&self) -> u32 {
        self.atoms.WL_SURFACE_ID
    }

    fn state_atoms(&self) -> StateAtoms {
        let a = &self.atoms;
        StateAtoms {
            state: a._NET_WM_STATE,
            fullscreen: a._NET_WM_STATE_FULLSCREEN,
            max_vert: a._NET_WM_STATE_MAXIMIZED_VERT,
            max_horz: a._NET_WM_STATE_MAXIMIZED_HORZ,
        }
    }

    fn set_state(&mut self, w: u32, fullscreen: bool, maximized: bool) {
        let a = &self.atoms;
        // The window's other states stay as they are.
        let ours = [
            a._NET_WM_STATE_FULLSCREEN,
            a._NET_WM_STATE_MAXIMIZED_VERT,
            a._NET_WM_STATE_MAXIMIZED_HORZ,
        ];
        let mut states: Vec<u32> = self
            .words(w, a._NET_WM_STATE)
            .into_iter()
            .filter(|s| !ours.contains(s))
            .take(64)
            .collect();
        if fullscreen {
            states.push(a._NET_WM_STATE_FULLSCREEN);
        }
        if maximized {
            states.extend([
                a._NET_WM_STATE_MAXIMIZED_VERT,
                a._NET_WM_STATE_MAXIMIZED_HORZ,
            ]);
        }
        let _ = self.conn.change_property32(
            PropMode::REPLACE,
            w,
            a._NET_WM_STATE,
            AtomEnum::ATOM,
            &states,
        );
    }

    fn watched(&self, atom: u32) -> bool {
        let a = &self.atoms;
        atom == a._NET_WM_NAME
            || atom == u32::from(AtomEnum::WM_NAME)
            || atom == u32::from(AtomEnum::WM_CLASS)
            || atom == u32::from(AtomEnum::WM_NORMAL_HINTS)
    }
}

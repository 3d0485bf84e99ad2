//! The X window manager of the bridge: it maps what X clients map, pairs
//! each X window with the `wl_surface` Xwayland made for it (the
//! `WL_SURFACE_ID` client message), and carries the window's properties to
//! its role ([`super::xwl`]) and the compositor's configures, focus and close
//! back to the window.
//!
//! The logic ([`Wm`]) is separate from the X connection ([`XServer`]), so
//! that the tests can drive it with X events of their own.

use std::collections::HashMap;
use std::time::{Duration, Instant};

use x11rb::protocol::xproto;
use x11rb::protocol::Event;

use super::clip::{Clipboard, XClip};
use super::xwl::{Kind, Toplevel, WmEvent, Xwl, XwlError};

/// What the window manager reads of a window when it maps.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Props {
    /// Title and app id, size hints, wanted states.
    pub toplevel: Toplevel,
    /// `WM_TRANSIENT_FOR`.
    pub transient_for: Option<u32>,
    /// `WM_PROTOCOLS` has `WM_DELETE_WINDOW`.
    pub delete: bool,
    /// `WM_PROTOCOLS` has `WM_TAKE_FOCUS`.
    pub take_focus: bool,
}

/// The X requests the window manager makes (a live connection, or the
/// tests' recorder).
pub trait XServer: XClip {
    /// The window manager's own window (it owns selections with it).
    fn wm_window(&self) -> u32;
    /// Reads the window's properties.
    fn props(&mut self, w: u32) -> Props;
    /// Maps a window (and marks it `NormalState`).
    fn map(&mut self, w: u32);
    /// Applies a client's configure request as it asked.
    fn configure_request(&mut self, e: &xproto::ConfigureRequestEvent);
    /// Resizes a window.
    fn resize(&mut self, w: u32, width: u32, height: u32);
    /// Gives a window the keyboard focus.
    fn focus(&mut self, w: u32, take_focus: bool);
    /// Asks a window to close (`WM_DELETE_WINDOW`), else kills its client.
    fn close(&mut self, w: u32, delete: bool);
    /// Marks a window withdrawn after its client unmapped it.
    fn withdrawn(&mut self, w: u32);
    /// Lets Xwayland commit a window's surface (`_XWAYLAND_ALLOW_COMMITS`).
    fn allow_commits(&mut self, w: u32, allow: bool);
    /// The atom `WL_SURFACE_ID`.
    fn surface_id_atom(&self) -> u32;
    /// Atoms whose change means re-reading the properties.
    fn watched(&self, atom: u32) -> bool;
    /// The `_NET_WM_STATE` atoms.
    fn state_atoms(&self) -> StateAtoms;
    /// Writes a window's `_NET_WM_STATE` (what the compositor granted).
    fn set_state(&mut self, w: u32, fullscreen: bool, maximized: bool);
}

/// `_NET_WM_STATE` and the states the bridge carries.
#[derive(Debug, Clone, Copy)]
pub struct StateAtoms {
    /// `_NET_WM_STATE`
    pub state: u32,
    /// `_NET_WM_STATE_FULLSCREEN`
    pub fullscreen: u32,
    /// `_NET_WM_STATE_MAXIMIZED_VERT`
    pub max_vert: u32,
    /// `_NET_WM_STATE_MAXIMIZED_HORZ`
    pub max_horz: u32,
}

#[derive(Debug, Default)]
struct Win {
    override_redirect: bool,
    x: i32,
    y: i32,
    width: u32,
    height: u32,
    mapped: bool,
    surface: Option<u32>,
    paired: bool,
    props: Props,
    /// When it was last mapped (its surface is due within [`PAIR_WITHIN`]).
    mapped_at: Option<Instant>,
    /// Logged as not shown (once per mapping).
    reported: bool,
    /// Fullscreen and maximized as the window's `_NET_WM_STATE` has them.
    state_prop: (bool, bool),
}

impl Win {
    /// Larger than any buffer the host takes.
    fn too_large(&self) -> bool {
        self.width > MAX_WIDTH || self.height > MAX_HEIGHT
    }

    /// When it is to be reported as not shown, if it is waiting.
    fn report_due(&self) -> Option<Instant> {
        let at = self.mapped_at.filter(|_| !self.paired && !self.reported)?;
        Some(if self.too_large() {
            at
        } else {
            at + PAIR_WITHIN
        })
    }
}

/// The window manager's state.
#[derive(Debug)]
pub struct Wm {
    root: u32,
    windows: HashMap<u32, Win>,
    by_surface: HashMap<u32, u32>,
    focused: Option<u32>,
    /// Most recently paired toplevels last (a menu's parent by default).
    order: Vec<u32>,
    /// The clipboard's X side.
    pub clip: Clipboard,
    /// Windows logged as not shown so far.
    reports: u32,
}

/// Most X windows the manager keeps track of.
pub const MAX_WINDOWS: usize = 65536;

/// A mapped window without its surface (or without a role) this long is
/// logged, once, as not shown.
pub const PAIR_WITHIN: Duration = Duration::from_secs(10);

/// The largest window shown (Qubes' bound on a window's buffer, which
/// wl-proxy's policy uses too); larger ones get no role, so Xwayland draws
/// nothing for them.
pub const MAX_WIDTH: u32 = 16384;
/// See [`MAX_WIDTH`].
pub const MAX_HEIGHT: u32 = 6144;

/// Windows logged as not shown, one line each, before the log goes quiet.
const MAX_REPORTS: u32 = 20;

impl Wm {
    /// A manager of `root`'s children.
    pub fn new(root: u32) -> Self {
        Wm {
            root,
            windows: HashMap::new(),
            by_surface: HashMap::new(),
            focused: None,
            order: Vec::new(),
            clip: Clipboard::default(),
            reports: 0,
        }
    }

    /// One X event.
    pub fn event(
        &mut self,
        x: &mut impl XServer,
        xwl: &mut Xwl,
        e: &Event,
    ) -> Result<(), XwlError> {
        match e {
            Event::CreateNotify(e) if e.parent == self.root && self.windows.len() < MAX_WINDOWS => {
                self.windows.insert(
                    e.window,
                    Win {
                        override_redirect: e.override_redirect,
                        x: e.x.into(),
                        y: e.y.into(),
                        width: e.width.into(),
                        height: e.height.into(),
                        ..Win::default()
                    },
                );
            }
            Event::DestroyNotify(e) => self.forget(xwl, e.window),
            Event::ReparentNotify(e)
                if e.parent == self.root && self.windows.len() < MAX_WINDOWS =>
            {
                self.windows.entry(e.window).or_insert(Win {
                    override_redirect: e.override_redirect,
                    x: e.x.into(),
                    y: e.y.into(),
                    ..Win::default()
                });
            }
            Event::ReparentNotify(e) => self.forget(xwl, e.window),
            Event::MapRequest(e) => {
                if let Some(w) = self.windows.get_mut(&e.window) {
                    w.props = x.props(e.window);
                    w.state_prop = (w.props.toplevel.fullscreen, w.props.toplevel.maximized);
                    x.allow_commits(e.window, false);
                }
                x.map(e.window);
            }
            Event::MapNotify(e) => {
                if let Some(w) = self.windows.get_mut(&e.window) {
                    if !w.mapped {
                        w.mapped_at = Some(Instant::now());
                        w.reported = false;
                    }
                    w.mapped = true;
                    w.override_redirect = e.override_redirect;
                }
                self.try_pair(x, xwl, e.window)?;
            }
            Event::UnmapNotify(e) => self.unmapped(x, xwl, e.window),
            Event::ConfigureRequest(e) => x.configure_request(e),
            Event::ConfigureNotify(e) => {
                if let Some(w) = self.windows.get_mut(&e.window) {
                    (w.x, w.y) = (e.x.into(), e.y.into());
                    (w.width, w.height) = (e.width.into(), e.height.into());
                    w.override_redirect = e.override_redirect;
                    if w.mapped && !w.paired {
                        // It may fit now.
                        self.try_pair(x, xwl, e.window)?;
                    }
                }
            }
            Event::PropertyNotify(e) if x.watched(e.atom) => {
                if let Some(w) = self.windows.get_mut(&e.window) {
                    w.props = x.props(e.window);
                    if let (true, Some(s)) = (w.paired && !w.override_redirect, w.surface) {
                        xwl.update(s, &w.props.toplevel);
                    }
                }
            }
            Event::ClientMessage(e) => self.client_message(x, xwl, e)?,
            e => self.selection_event(x, xwl, e)?,
        }
        Ok(())
    }

    /// Client messages: Xwayland's `WL_SURFACE_ID` (only its own, not one
    /// another client sent with SendEvent, which sets bit 7 of the type) and
    /// EWMH's `_NET_WM_STATE` (sent to the root with SendEvent by the client
    /// itself).
    fn client_message(
        &mut self,
        x: &mut impl XServer,
        xwl: &mut Xwl,
        e: &xproto::ClientMessageEvent,
    ) -> Result<(), XwlError> {
        if e.format != 32 {
            return Ok(());
        }
        if e.type_ == x.surface_id_atom() && e.response_type & 0x80 == 0 {
            let surface = e.data.as_data32()[0];
            let Some(w) = self.windows.get_mut(&e.window) else {
                return Ok(());
            };
            if w.paired {
                return Ok(());
            }
            if let Some(old) = w.surface.replace(surface) {
                self.by_surface.remove(&old);
            }
            self.by_surface.insert(surface, e.window);
            self.try_pair(x, xwl, e.window)?;
        } else if e.type_ == x.state_atoms().state {
            self.state_request(x, xwl, e.window, e.data.as_data32());
        }
        Ok(())
    }

    /// `_NET_WM_STATE`'s client message: `[action (0 remove, 1 add,
    /// 2 toggle), state, state, source, 0]`; fullscreen and maximized are
    /// asked of the compositor (before the map they are read with the
    /// window's properties).
    fn state_request(&mut self, x: &mut impl XServer, xwl: &mut Xwl, window: u32, d: [u32; 5]) {
        let a = x.state_atoms();
        let Some(w) = self.windows.get_mut(&window) else {
            return;
        };
        let t = &mut w.props.toplevel;
        let apply = |on: bool| match d[0] {
            0 => false,
            1 => true,
            2 => !on,
            _ => on,
        };
        let (mut fullscreen, mut maximized) = (t.fullscreen, t.maximized);
        if d[1..3].contains(&a.fullscreen) {
            fullscreen = apply(fullscreen);
        }
        if d[1..3].contains(&a.max_vert) || d[1..3].contains(&a.max_horz) {
            maximized = apply(maximized);
        }
        if (fullscreen, maximized) == (t.fullscreen, t.maximized) {
            return;
        }
        let (was_fullscreen, was_maximized) = (t.fullscreen, t.maximized);
        (t.fullscreen, t.maximized) = (fullscreen, maximized);
        if let (true, Some(s)) = (w.paired && !w.override_redirect, w.surface) {
            if fullscreen != was_fullscreen {
                xwl.set_fullscreen(s, fullscreen);
            }
            if maximized != was_maximized {
                xwl.set_maximized(s, maximized);
            }
        }
    }

    /// The clipboard's X events (selection requests, conversions, owners).
    fn selection_event(
        &mut self,
        x: &mut impl XServer,
        xwl: &mut Xwl,
        e: &Event,
    ) -> Result<(), XwlError> {
        let clipboard = x.clip_atoms().clipboard;
        match e {
            Event::SelectionRequest(e) => self.clip.request(x, xwl, *e)?,
            Event::SelectionNotify(e)
                if e.requestor == x.wm_window() && e.selection == clipboard =>
            {
                self.clip.converted(x, xwl, e.target, e.property != 0)?
            }
            Event::SelectionClear(e) if e.selection == clipboard => self.clip.lost(),
            Event::XfixesSelectionNotify(e) if e.selection == clipboard => {
                let ours = e.owner == x.wm_window();
                self.clip.x_owner_changed(x, ours, e.owner)
            }
            _ => {}
        }
        Ok(())
    }

    fn forget(&mut self, xwl: &mut Xwl, window: u32) {
        if let Some(w) = self.windows.remove(&window) {
            if let Some(s) = w.surface {
                self.by_surface.remove(&s);
                if w.paired {
                    xwl.unpair(s);
                }
            }
        }
        self.order.retain(|&o| o != window);
        if self.focused == Some(window) {
            self.focused = None;
        }
    }

    fn unmapped(&mut self, x: &mut impl XServer, xwl: &mut Xwl, window: u32) {
        let Some(w) = self.windows.get_mut(&window) else {
            return;
        };
        w.mapped = false;
        w.mapped_at = None;
        if let Some(s) = w.surface.take() {
            self.by_surface.remove(&s);
            if std::mem::take(&mut w.paired) {
                xwl.unpair(s);
            }
        }
        if !w.override_redirect {
            x.withdrawn(window);
        }
        self.order.retain(|&o| o != window);
        if self.focused == Some(window) {
            self.focused = None;
        }
    }

    /// A window both mapped and with its surface gets its role.
    fn try_pair(
        &mut self,
        x: &mut impl XServer,
        xwl: &mut Xwl,
        window: u32,
    ) -> Result<(), XwlError> {
        let Some(w) = self.windows.get(&window) else {
            return Ok(());
        };
        let (true, false, Some(surface)) = (w.mapped, w.paired, w.surface) else {
            return Ok(());
        };
        if w.too_large() {
            return Ok(());
        }
        let kind = if w.override_redirect {
            let Some(p) = self.parent_for(w) else {
                return Ok(());
            };
            let Some(parent) = self.windows.get(&p) else {
                return Ok(());
            };
            let Some(ps) = parent.surface else {
                return Ok(());
            };
            Kind::Popup {
                parent: ps,
                x: w.x - parent.x,
                y: w.y - parent.y,
                width: w.width as i32,
                height: w.height as i32,
            }
        } else {
            let mut t = w.props.toplevel.clone();
            t.parent = w
                .props
                .transient_for
                .and_then(|p| self.windows.get(&p))
                .filter(|p| p.paired)
                .and_then(|p| p.surface);
            Kind::Toplevel(t)
        };
        let toplevel = matches!(kind, Kind::Toplevel(_));
        if !xwl.pair(surface, kind)? {
            return Ok(());
        }
        if let Some(w) = self.windows.get_mut(&window) {
            w.paired = true;
        }
        if toplevel {
            self.order.push(window);
            self.retry_menus(x, xwl)?;
        } else {
            // Xwayland may draw it now: a popup needs no configure of the
            // window manager's.
            x.allow_commits(window, true);
        }
        Ok(())
    }

    /// Menus mapped while no window could be their parent get one now.
    fn retry_menus(&mut self, x: &mut impl XServer, xwl: &mut Xwl) -> Result<(), XwlError> {
        let waiting: Vec<u32> = self
            .windows
            .iter()
            .filter(|(_, w)| w.override_redirect && w.mapped && !w.paired && w.surface.is_some())
            .map(|(&id, _)| id)
            .collect();
        for w in waiting {
            self.try_pair(x, xwl, w)?;
        }
        Ok(())
    }

    /// A menu's or tooltip's parent: the window it is transient for, else
    /// the focused toplevel, else the last one mapped.
    fn parent_for(&self, w: &Win) -> Option<u32> {
        let ok = |p: &u32| {
            self.windows
                .get(p)
                .is_some_and(|p| p.paired && !p.override_redirect)
        };
        w.props
            .transient_for
            .filter(ok)
            .or(self.focused.filter(ok))
            .or_else(|| self.order.iter().rev().copied().find(ok))
    }

    /// What the compositor said about a paired window.
    pub fn wayland_event(&mut self, x: &mut impl XServer, e: WmEvent) {
        match e {
            WmEvent::Configure {
                surface,
                width,
                height,
                activated,
                fullscreen,
                maximized,
            } => {
                let Some(&window) = self.by_surface.get(&surface) else {
                    return;
                };
                x.allow_commits(window, true);
                let Some(w) = self.windows.get_mut(&window) else {
                    return;
                };
                if width > 0 && height > 0 && (width as u32, height as u32) != (w.width, w.height) {
                    x.resize(window, width as u32, height as u32);
                }
                // The window's _NET_WM_STATE says what was granted.
                let t = &mut w.props.toplevel;
                (t.fullscreen, t.maximized) = (fullscreen, maximized);
                if w.state_prop != (fullscreen, maximized) {
                    w.state_prop = (fullscreen, maximized);
                    x.set_state(window, fullscreen, maximized);
                }
                if activated && self.focused != Some(window) {
                    self.focused = Some(window);
                    x.focus(window, w.props.take_focus);
                }
                if !activated && self.focused == Some(window) {
                    self.focused = None;
                }
            }
            WmEvent::Close { surface } => {
                if let Some(&window) = self.by_surface.get(&surface) {
                    let delete = self.windows.get(&window).is_some_and(|w| w.props.delete);
                    x.close(window, delete);
                }
            }
            WmEvent::Selection { mimes } => self.clip.host_selection(x, mimes),
        }
    }

    /// When [`Wm::timers`] next has something to do.
    pub fn deadline(&self) -> Option<Instant> {
        [self.report_deadline(), self.clip.deadline()]
            .into_iter()
            .flatten()
            .min()
    }

    /// What is due at `now`: windows reported as not shown, a clipboard
    /// conversion given up.
    pub fn timers(&mut self, x: &mut impl XServer, now: Instant) {
        self.overdue(now);
        self.clip.expire(x, now);
    }

    /// When [`Wm::overdue`] next has a window to report.
    pub fn report_deadline(&self) -> Option<Instant> {
        self.windows.values().filter_map(Win::report_due).min()
    }

    /// The mapped windows still not shown at `now` (no surface or no role
    /// within [`PAIR_WITHIN`], or too large), each logged once and then
    /// left alone.
    pub fn overdue(&mut self, now: Instant) -> Vec<u32> {
        let mut due: Vec<u32> = self
            .windows
            .iter()
            .filter(|(_, w)| w.report_due().is_some_and(|d| d <= now))
            .map(|(&id, _)| id)
            .collect();
        due.sort_unstable();
        for id in &due {
            let Some(w) = self.windows.get_mut(id) else {
                continue;
            };
            w.reported = true;
            self.reports = self.reports.saturating_add(1);
            let why = if w.too_large() {
                format!(
                    "it is {}×{}, larger than {MAX_WIDTH}×{MAX_HEIGHT}",
                    w.width, w.height
                )
            } else {
                format!("no surface or role within {} s", PAIR_WITHIN.as_secs())
            };
            if self.reports <= MAX_REPORTS {
                eprintln!("x11: window {id:#x} is not shown: {why}");
            }
            if self.reports == MAX_REPORTS {
                eprintln!("x11: further windows not shown are not logged");
            }
        }
        due
    }

    /// The window paired with Xwayland's surface `s`.
    pub fn window_of(&self, s: u32) -> Option<u32> {
        self.by_surface.get(&s).copied()
    }
}

#[cfg(test)]
mod tests {
    use super::super::clip::ClipAtoms;
    use super::super::xwl::op;
    use super::super::xwl::tests::{bridge_with_surface, ev, feed_up, feed_x, take_up};
    use super::*;
    use wl_proxy::wire::Writer;
    use x11rb::protocol::xproto::*;

    const ROOT: u32 = 0x100;
    const SURFACE_ID: u32 = 300;
    const W: u32 = 0x20_0001;
    const MENU: u32 = 0x20_0005;

    /// What the window manager asked of X, in order.
    #[derive(Default)]
    struct Recorder {
        log: Vec<String>,
        props: Props,
        atoms: Vec<String>,
        converted: Option<(u32, Vec<u8>)>,
    }

    impl XClip for Recorder {
        fn clip_atoms(&self) -> ClipAtoms {
            ClipAtoms {
                clipboard: 500,
                targets: 501,
                utf8: 502,
                string: 31,
                text: 503,
            }
        }
        fn atom(&mut self, name: &str) -> u32 {
            match self.atoms.iter().position(|a| a == name) {
                Some(i) => 600 + i as u32,
                None => {
                    self.atoms.push(name.to_string());
                    600 + self.atoms.len() as u32 - 1
                }
            }
        }
        fn atom_name(&mut self, atom: u32) -> Option<String> {
            self.atoms.get(atom.checked_sub(600)? as usize).cloned()
        }
        fn own_clipboard(&mut self, own: bool) {
            self.log.push(format!("own clipboard {own}"));
        }
        fn answer(&mut self, req: &SelectionRequestEvent, data: Option<(u32, u8, Vec<u8>)>) {
            self.log.push(format!(
                "answer {:#x} {:?}",
                req.requestor,
                data.map(|d| d.2)
            ));
        }
        fn convert(&mut self, target: u32) {
            self.log.push(format!("convert {target}"));
        }
        fn take_converted(&mut self) -> Option<(u32, Vec<u8>)> {
            self.converted.take()
        }
    }

    impl XServer for Recorder {
        fn wm_window(&self) -> u32 {
            0x400
        }
        fn props(&mut self, _: u32) -> Props {
            self.props.clone()
        }
        fn map(&mut self, w: u32) {
            self.log.push(format!("map {w:#x}"));
        }
        fn configure_request(&mut self, e: &ConfigureRequestEvent) {
            self.log.push(format!(
                "configure {:#x} {}x{}",
                e.window, e.width, e.height
            ));
        }
        fn resize(&mut self, w: u32, width: u32, height: u32) {
            self.log.push(format!("resize {w:#x} {width}x{height}"));
        }
        fn focus(&mut self, w: u32, take_focus: bool) {
            self.log.push(format!("focus {w:#x} {take_focus}"));
        }
        fn close(&mut self, w: u32, delete: bool) {
            self.log.push(format!("close {w:#x} {delete}"));
        }
        fn withdrawn(&mut self, w: u32) {
            self.log.push(format!("withdrawn {w:#x}"));
        }
        fn allow_commits(&mut self, w: u32, allow: bool) {
            self.log.push(format!("commits {w:#x} {allow}"));
        }
        fn surface_id_atom(&self) -> u32 {
            SURFACE_ID
        }
        fn watched(&self, atom: u32) -> bool {
            atom == u32::from(AtomEnum::WM_NAME)
        }
        fn state_atoms(&self) -> StateAtoms {
            StateAtoms {
                state: NET_WM_STATE,
                fullscreen: FULLSCREEN,
                max_vert: MAX_VERT,
                max_horz: MAX_HORZ,
            }
        }
        fn set_state(&mut self, w: u32, fullscreen: bool, maximized: bool) {
            self.log.push(format!(
                "state {w:#x} fullscreen={fullscreen} maximized={maximized}"
            ));
        }
    }

    fn create(window: u32, x: i16, y: i16, or: bool) -> Event {
        Event::CreateNotify(CreateNotifyEvent {
            response_type: CREATE_NOTIFY_EVENT,
            sequence: 0,
            parent: ROOT,
            window,
            x,
            y,
            width: 640,
            height: 480,
            border_width: 0,
            override_redirect: or,
        })
    }

    fn map_notify(window: u32, or: bool) -> Event {
        Event::MapNotify(MapNotifyEvent {
            response_type: MAP_NOTIFY_EVENT,
            sequence: 0,
            event: ROOT,
            window,
            override_redirect: or,
        })
    }

    fn surface_id(window: u32, surface: u32) -> Event {
        Event::ClientMessage(ClientMessageEvent::new(
            32,
            window,
            SURFACE_ID,
            [surface, 0, 0, 0, 0],
        ))
    }

    /// The recorded sequence of a toplevel's life: created, map request,
    /// mapped, WL_SURFACE_ID, configured and focused by the compositor, a
    /// menu beside it, closed, unmapped.
    #[test]
    fn a_window_and_its_menu_from_map_request_to_unmap() {
        let mut x = Recorder::default();
        x.props.toplevel.title = "xterm".into();
        x.props.toplevel.app_id = "XTerm".into();
        x.props.delete = true;
        let mut xwl = bridge_with_surface();
        let mut wm = Wm::new(ROOT);
        wm.event(&mut x, &mut xwl, &create(W, 0, 0, false)).unwrap();
        wm.event(
            &mut x,
            &mut xwl,
            &Event::MapRequest(MapRequestEvent {
                response_type: MAP_REQUEST_EVENT,
                sequence: 0,
                parent: ROOT,
                window: W,
            }),
        )
        .unwrap();
        assert_eq!(x.log, ["commits 0x200001 false", "map 0x200001"]);
        // The surface id may come before the map notify: paired only once
        // both are there.
        wm.event(&mut x, &mut xwl, &surface_id(W, 4)).unwrap();
        assert!(take_up(&mut xwl).is_empty());
        wm.event(&mut x, &mut xwl, &map_notify(W, false)).unwrap();
        let up = take_up(&mut xwl);
        assert_eq!(
            (up[0].0, up[0].1),
            (3, op("xdg_wm_base", "get_xdg_surface"))
        );
        assert!(up.iter().any(|m| m.2.windows(6).any(|w| w == b"XTerm\0")));
        assert_eq!(wm.window_of(4), Some(W));
        // The compositor's configure: X commits allowed, resized, focused.
        feed_up(
            &mut xwl,
            Writer::new(11, ev("xdg_toplevel", "configure"))
                .uint(1280)
                .uint(695)
                .array(&4u32.to_ne_bytes())
                .finish(),
        );
        feed_up(
            &mut xwl,
            Writer::new(10, ev("xdg_surface", "configure"))
                .uint(5)
                .finish(),
        );
        while let Some(e) = xwl.wm.pop_front() {
            wm.wayland_event(&mut x, e);
        }
        assert_eq!(
            x.log[2..],
            [
                "commits 0x200001 true",
                "resize 0x200001 1280x695",
                "focus 0x200001 false"
            ]
        );
        // A menu (override-redirect) at (40, 60) from the window: a popup
        // of the focused window's surface, X commits allowed at once.
        feed_x(
            &mut xwl,
            Writer::new(3, op("wl_compositor", "create_surface"))
                .uint(8)
                .finish(),
            vec![],
        );
        take_up(&mut xwl);
        wm.event(&mut x, &mut xwl, &create(MENU, 40, 60, true))
            .unwrap();
        wm.event(&mut x, &mut xwl, &map_notify(MENU, true)).unwrap();
        wm.event(&mut x, &mut xwl, &surface_id(MENU, 8)).unwrap();
        let up = take_up(&mut xwl);
        // The positioner is upstream 14 (after the menu's surface 12 and its
        // xdg_surface 13).
        let anchor = up
            .iter()
            .find(|m| (m.0, m.1) == (14, op("xdg_positioner", "set_anchor_rect")))
            .expect("a positioner");
        assert_eq!(&anchor.2[..8], &[40, 0, 0, 0, 60, 0, 0, 0]);
        assert_eq!(x.log.last().unwrap(), "commits 0x200005 true");
        // Closed from the compositor: WM_DELETE_WINDOW, since it has it.
        feed_up(
            &mut xwl,
            Writer::new(11, ev("xdg_toplevel", "close")).finish(),
        );
        while let Some(e) = xwl.wm.pop_front() {
            wm.wayland_event(&mut x, e);
        }
        assert_eq!(x.log.last().unwrap(), "close 0x200001 true");
        // The client unmaps it: the menu's popup and the toplevel go.
        wm.event(
            &mut x,
            &mut xwl,
            &Event::UnmapNotify(UnmapNotifyEvent {
                response_type: UNMAP_NOTIFY_EVENT,
                sequence: 0,
                event: ROOT,
                window: W,
                from_configure: false,
            }),
        )
        .unwrap();
        let up = take_up(&mut xwl);
        assert_eq!(up[0].1, op("xdg_popup", "destroy"));
        assert!(up
            .iter()
            .any(|m| (m.0, m.1) == (11, op("xdg_toplevel", "destroy"))));
        assert_eq!(x.log.last().unwrap(), "withdrawn 0x200001");
        assert_eq!(wm.window_of(4), None);
    }

    #[test]
    fn windows_of_other_parents_and_unknown_ones_are_left_alone() {
        let mut x = Recorder::default();
        let mut xwl = bridge_with_surface();
        let mut wm = Wm::new(ROOT);
        let mut child = create(W, 0, 0, false);
        if let Event::CreateNotify(e) = &mut child {
            e.parent = 0x999;
        }
        wm.event(&mut x, &mut xwl, &child).unwrap();
        wm.event(&mut x, &mut xwl, &map_notify(W, false)).unwrap();
        wm.event(&mut x, &mut xwl, &surface_id(W, 4)).unwrap();
        // A menu with no toplevel to hang from.
        wm.event(&mut x, &mut xwl, &create(MENU, 0, 0, true))
            .unwrap();
        wm.event(&mut x, &mut xwl, &map_notify(MENU, true)).unwrap();
        wm.event(&mut x, &mut xwl, &surface_id(MENU, 4)).unwrap();
        assert!(take_up(&mut xwl).is_empty());
        assert!(x.log.is_empty(), "{:?}", x.log);
        // Configure and close for a surface no window has.
        wm.wayland_event(&mut x, WmEvent::Close { surface: 77 });
        assert!(x.log.is_empty());
    }

    /// Any X client can send a client message to the root: a forged
    /// `WL_SURFACE_ID` (sent with SendEvent) pairs nothing.
    #[test]
    fn a_forged_surface_id_pairs_nothing() {
        let mut x = Recorder::default();
        let mut xwl = bridge_with_surface();
        let mut wm = Wm::new(ROOT);
        wm.event(&mut x, &mut xwl, &create(W, 0, 0, false)).unwrap();
        wm.event(&mut x, &mut xwl, &map_notify(W, false)).unwrap();
        let mut forged = surface_id(W, 4);
        if let Event::ClientMessage(e) = &mut forged {
            e.response_type |= 0x80;
        }
        wm.event(&mut x, &mut xwl, &forged).unwrap();
        assert!(take_up(&mut xwl).is_empty());
        assert_eq!(wm.window_of(4), None);
        wm.event(&mut x, &mut xwl, &surface_id(W, 4)).unwrap();
        assert_eq!(wm.window_of(4), Some(W));
    }

    /// A window reparented to the root (an XEmbed icon undocked) is managed
    /// from then on; one reparented away is forgotten.
    #[test]
    fn windows_reparented_to_and_from_the_root_are_followed() {
        let mut x = Recorder::default();
        let mut xwl = bridge_with_surface();
        let mut wm = Wm::new(ROOT);
        let reparent = |window, parent| {
            Event::ReparentNotify(ReparentNotifyEvent {
                response_type: REPARENT_NOTIFY_EVENT,
                sequence: 0,
                event: ROOT,
                window,
                parent,
                x: 0,
                y: 0,
                override_redirect: false,
            })
        };
        wm.event(&mut x, &mut xwl, &reparent(W, ROOT)).unwrap();
        wm.event(&mut x, &mut xwl, &map_notify(W, false)).unwrap();
        wm.event(&mut x, &mut xwl, &surface_id(W, 4)).unwrap();
        assert_eq!(wm.window_of(4), Some(W));
        wm.event(&mut x, &mut xwl, &reparent(W, 0x999)).unwrap();
        assert_eq!(wm.window_of(4), None);
        assert!(take_up(&mut xwl)
            .iter()
            .any(|m| m.1 == op("xdg_toplevel", "destroy")));
    }

    /// A menu mapped before any window it could hang from (a splash, a
    /// tooltip of a window not yet shown) gets its popup once one is there.
    #[test]
    fn a_menu_without_a_parent_yet_waits_for_one() {
        let mut x = Recorder::default();
        let mut xwl = bridge_with_surface();
        let mut wm = Wm::new(ROOT);
        feed_x(
            &mut xwl,
            Writer::new(3, op("wl_compositor", "create_surface"))
                .uint(8)
                .finish(),
            vec![],
        );
        take_up(&mut xwl);
        wm.event(&mut x, &mut xwl, &create(MENU, 40, 60, true))
            .unwrap();
        wm.event(&mut x, &mut xwl, &map_notify(MENU, true)).unwrap();
        wm.event(&mut x, &mut xwl, &surface_id(MENU, 8)).unwrap();
        assert!(take_up(&mut xwl).is_empty());
        wm.event(&mut x, &mut xwl, &create(W, 0, 0, false)).unwrap();
        wm.event(&mut x, &mut xwl, &map_notify(W, false)).unwrap();
        wm.event(&mut x, &mut xwl, &surface_id(W, 4)).unwrap();
        // Two xdg surfaces made on xdg_wm_base (upstream 3): the window's
        // and the menu's.
        let up = take_up(&mut xwl);
        let made = up
            .iter()
            .filter(|m| (m.0, m.1) == (3, op("xdg_wm_base", "get_xdg_surface")))
            .count();
        assert_eq!(made, 2, "{up:?}");
    }

    /// An X app takes the clipboard while a host paste is being converted
    /// from the previous owner: the new owner's targets are asked for at
    /// once (the host must not keep the old list).
    #[test]
    fn a_new_x_owner_is_asked_for_its_targets_even_mid_conversion() {
        let mut x = Recorder::default();
        let mut wm = Wm::new(ROOT);
        let fd: std::os::fd::OwnedFd = std::fs::File::open("/dev/null").unwrap().into();
        wm.clip.host_wants(&mut x, "text/plain", fd);
        assert_eq!(x.log.last().unwrap(), "convert 502");
        wm.clip.x_owner_changed(&mut x, false, 0x999);
        assert_eq!(x.log.last().unwrap(), "convert 501");
    }

    fn configure_notify(window: u32, width: u16, height: u16) -> Event {
        Event::ConfigureNotify(ConfigureNotifyEvent {
            response_type: CONFIGURE_NOTIFY_EVENT,
            sequence: 0,
            event: ROOT,
            window,
            above_sibling: 0,
            x: 0,
            y: 0,
            width,
            height,
            border_width: 0,
            override_redirect: false,
        })
    }

    /// A window whose surface never comes is reported once, 10 s after it
    /// was mapped, and never again; a paired one never.
    #[test]
    fn a_window_never_paired_is_reported_once_after_10_s() {
        let mut x = Recorder::default();
        let mut xwl = bridge_with_surface();
        let mut wm = Wm::new(ROOT);
        let t0 = Instant::now();
        wm.event(&mut x, &mut xwl, &create(W, 0, 0, false)).unwrap();
        wm.event(&mut x, &mut xwl, &map_notify(W, false)).unwrap();
        let due = wm.report_deadline().unwrap();
        assert!(due >= t0 + PAIR_WITHIN);
        assert!(wm.overdue(due - Duration::from_millis(1)).is_empty());
        assert_eq!(wm.overdue(due), [W]);
        assert!(wm.overdue(due + PAIR_WITHIN).is_empty());
        assert_eq!(wm.report_deadline(), None);
        // Another, paired in time: nothing to report.
        wm.event(&mut x, &mut xwl, &create(MENU + 1, 0, 0, false))
            .unwrap();
        wm.event(&mut x, &mut xwl, &map_notify(MENU + 1, false))
            .unwrap();
        wm.event(&mut x, &mut xwl, &surface_id(MENU + 1, 4))
            .unwrap();
        assert_eq!(wm.report_deadline(), None);
        assert!(wm.overdue(due + PAIR_WITHIN * 3).is_empty());
    }

    /// A window larger than any buffer the host takes is not given a role
    /// (Xwayland draws nothing for it) until it is resized within bounds.
    #[test]
    fn an_absurdly_large_window_is_not_shown_until_it_fits() {
        let mut x = Recorder::default();
        let mut xwl = bridge_with_surface();
        let mut wm = Wm::new(ROOT);
        wm.event(&mut x, &mut xwl, &create(W, 0, 0, false)).unwrap();
        wm.event(&mut x, &mut xwl, &configure_notify(W, 30000, 200))
            .unwrap();
        wm.event(&mut x, &mut xwl, &map_notify(W, false)).unwrap();
        wm.event(&mut x, &mut xwl, &surface_id(W, 4)).unwrap();
        assert!(
            take_up(&mut xwl).is_empty(),
            "no role for a 30000 px window"
        );
        // Reported at once, not after 10 s.
        assert_eq!(wm.overdue(Instant::now()), [W]);
        wm.event(&mut x, &mut xwl, &configure_notify(W, 800, 600))
            .unwrap();
        let up = take_up(&mut xwl);
        assert_eq!(
            (up[0].0, up[0].1),
            (3, op("xdg_wm_base", "get_xdg_surface"))
        );
    }

    /// A pipe: (read end, write end).
    fn pipe() -> (std::fs::File, std::os::fd::OwnedFd) {
        let mut fds = [0; 2];
        // SAFETY: a valid array for pipe2's two fds.
        assert_eq!(unsafe { libc::pipe2(fds.as_mut_ptr(), libc::O_CLOEXEC) }, 0);
        // SAFETY: pipe2 just made both fds; each is owned once.
        unsafe {
            use std::os::fd::FromRawFd;
            (
                std::fs::File::from_raw_fd(fds[0]),
                std::os::fd::OwnedFd::from_raw_fd(fds[1]),
            )
        }
    }

    /// An X owner that never answers a conversion does not hold up later
    /// pastes: after CONVERT_WITHIN the host reader gets nothing (its pipe
    /// closes) and the next conversion is asked for.
    #[test]
    fn a_conversion_never_answered_is_given_up() {
        use std::io::Read;
        let mut x = Recorder::default();
        let mut wm = Wm::new(ROOT);
        let (mut r1, w1) = pipe();
        wm.clip.host_wants(&mut x, "text/plain", w1);
        assert_eq!(x.log.last().unwrap(), "convert 502");
        let (_r2, w2) = pipe();
        wm.clip.host_wants(&mut x, "image/png", w2);
        assert_eq!(x.log.len(), 1, "one conversion at a time: {:?}", x.log);
        let due = wm.deadline().expect("a deadline for the conversion");
        wm.timers(&mut x, due - Duration::from_millis(1));
        assert_eq!(x.log.len(), 1);
        wm.timers(&mut x, due);
        assert_eq!(x.log.last().unwrap(), "convert 600", "{:?}", x.log);
        let mut got = Vec::new();
        r1.read_to_end(&mut got).unwrap();
        assert!(got.is_empty());
    }

    /// An X owner offering only STRING (Latin-1) is offered to the host as
    /// text, converted as STRING and handed over as UTF-8.
    #[test]
    fn an_x_owner_with_only_string_is_pasted_as_utf8() {
        use std::io::Read;
        let mut x = Recorder::default();
        let mut xwl = bridge_with_surface();
        let mut wm = Wm::new(ROOT);
        wm.clip.x_owner_changed(&mut x, false, 0x999);
        assert_eq!(x.log.last().unwrap(), "convert 501");
        x.converted = Some((4, 31u32.to_ne_bytes().to_vec()));
        wm.clip.converted(&mut x, &mut xwl, 501, true).unwrap();
        assert_eq!(wm.clip.x_text_target(), Some(31));
        let (mut r, w) = pipe();
        wm.clip.host_wants(&mut x, "text/plain;charset=utf-8", w);
        assert_eq!(x.log.last().unwrap(), "convert 31");
        x.converted = Some((31, b"caf\xe9".to_vec()));
        wm.clip.converted(&mut x, &mut xwl, 31, true).unwrap();
        let mut got = String::new();
        r.read_to_string(&mut got).unwrap();
        assert_eq!(got, "café");
    }

    const NET_WM_STATE: u32 = 700;
    const FULLSCREEN: u32 = 701;
    const MAX_VERT: u32 = 702;
    const MAX_HORZ: u32 = 703;

    /// `_NET_WM_STATE` asked after the map (an EWMH client message, sent to
    /// the root): fullscreen and maximized are asked of the compositor, and
    /// what the compositor grants is written back to the window.
    #[test]
    fn net_wm_state_requests_reach_the_compositor_and_its_answer_the_window() {
        let mut x = Recorder::default();
        let mut xwl = bridge_with_surface();
        let mut wm = Wm::new(ROOT);
        wm.event(&mut x, &mut xwl, &create(W, 0, 0, false)).unwrap();
        wm.event(&mut x, &mut xwl, &map_notify(W, false)).unwrap();
        wm.event(&mut x, &mut xwl, &surface_id(W, 4)).unwrap();
        take_up(&mut xwl);
        let state = |action: u32, p1: u32, p2: u32| {
            let mut m = ClientMessageEvent::new(32, W, NET_WM_STATE, [action, p1, p2, 1, 0]);
            m.response_type |= 0x80; // sent with SendEvent, as EWMH says
            Event::ClientMessage(m)
        };
        let asked = |xwl: &mut Xwl| -> Vec<u16> {
            take_up(xwl)
                .into_iter()
                .filter(|m| m.0 == 11)
                .map(|m| m.1)
                .collect()
        };
        wm.event(&mut x, &mut xwl, &state(1, FULLSCREEN, 0))
            .unwrap();
        assert_eq!(asked(&mut xwl), [op("xdg_toplevel", "set_fullscreen")]);
        wm.event(&mut x, &mut xwl, &state(2, MAX_VERT, MAX_HORZ))
            .unwrap();
        assert_eq!(asked(&mut xwl), [op("xdg_toplevel", "set_maximized")]);
        wm.event(&mut x, &mut xwl, &state(0, FULLSCREEN, 0))
            .unwrap();
        assert_eq!(asked(&mut xwl), [op("xdg_toplevel", "unset_fullscreen")]);
        // Asking again for what is already asked sends nothing.
        wm.event(&mut x, &mut xwl, &state(1, MAX_HORZ, MAX_VERT))
            .unwrap();
        assert!(asked(&mut xwl).is_empty());
        // The compositor maximizes it: the window hears so.
        let mut states = Vec::new();
        for s in [1u32, 4] {
            states.extend_from_slice(&s.to_ne_bytes());
        }
        feed_up(
            &mut xwl,
            Writer::new(11, ev("xdg_toplevel", "configure"))
                .uint(1280)
                .uint(695)
                .array(&states)
                .finish(),
        );
        feed_up(
            &mut xwl,
            Writer::new(10, ev("xdg_surface", "configure"))
                .uint(5)
                .finish(),
        );
        while let Some(e) = xwl.wm.pop_front() {
            wm.wayland_event(&mut x, e);
        }
        assert!(
            x.log
                .contains(&"state 0x200001 fullscreen=false maximized=true".to_string()),
            "{:?}",
            x.log
        );
    }
}

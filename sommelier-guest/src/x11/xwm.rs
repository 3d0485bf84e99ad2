//! The X window manager of the bridge: it maps what X clients map, pairs
//! each X window with the `wl_surface` Xwayland made for it (the
//! `WL_SURFACE_ID` client message), and carries the window's properties to
//! its role ([`super::xwl`]) and the compositor's configures, focus and close
//! back to the window.
//!
//! The logic ([`Wm`]) is separate from the X connection ([`XServer`]), so
//! that the tests can drive it with X events of their own.

use std::collections::HashMap;

use x11rb::protocol::xproto;
use x11rb::protocol::Event;

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
pub trait XServer {
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
}

/// Most X windows the manager keeps track of.
pub const MAX_WINDOWS: usize = 65536;

impl Wm {
    /// A manager of `root`'s children.
    pub fn new(root: u32) -> Self {
        Wm {
            root,
            windows: HashMap::new(),
            by_surface: HashMap::new(),
            focused: None,
            order: Vec::new(),
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
            Event::MapRequest(e) => {
                if let Some(w) = self.windows.get_mut(&e.window) {
                    w.props = x.props(e.window);
                    x.allow_commits(e.window, false);
                }
                x.map(e.window);
            }
            Event::MapNotify(e) => {
                if let Some(w) = self.windows.get_mut(&e.window) {
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
            Event::ClientMessage(e) if e.type_ == x.surface_id_atom() && e.format == 32 => {
                let surface = e.data.as_data32()[0];
                if let Some(w) = self.windows.get_mut(&e.window) {
                    if w.paired {
                        return Ok(());
                    }
                    if let Some(old) = w.surface.replace(surface) {
                        self.by_surface.remove(&old);
                    }
                    self.by_surface.insert(surface, e.window);
                    self.try_pair(x, xwl, e.window)?;
                }
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
        xwl.pair(surface, kind)?;
        if let Some(w) = self.windows.get_mut(&window) {
            w.paired = true;
        }
        if toplevel {
            self.order.push(window);
        } else {
            // Xwayland may draw it now: a popup needs no configure of the
            // window manager's.
            x.allow_commits(window, true);
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
                ..
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
        }
    }

    /// The window paired with Xwayland's surface `s`.
    pub fn window_of(&self, s: u32) -> Option<u32> {
        self.by_surface.get(&s).copied()
    }
}

//! The Wayland half of the X11 bridge: Xwayland's Wayland connection,
//! passed upstream (to the guest's relay) with its ids renumbered, and roles
//! given to the surfaces of X windows.
//!
//! Rootless Xwayland makes a `wl_surface` for each mapped X window and draws
//! into it, but leaves roles to its window manager. The bridge holds back
//! what Xwayland commits to a surface without a role (its `attach` and
//! `commit`: a compositor refuses a buffer on an xdg surface before its first
//! configure) until the window manager pairs the surface with a window
//! ([`Xwl::pair`]): a managed window becomes an `xdg_toplevel`, an
//! override-redirect one (menu, tooltip) an `xdg_popup` placed relative to its
//! parent. A role Xwayland gives itself (a cursor, a drag icon) releases the
//! surface at once. Everything else passes as it came.
//!
//! Pure state: bytes and fds in, bytes and fds out (`to_up`, `to_x`) and
//! [`WmEvent`]s for the window manager; the I/O is the caller's.

use std::collections::{HashMap, VecDeque};
use std::os::fd::OwnedFd;

use wl_proxy::protocol::{self, IfaceId, Message};
use wl_proxy::wire::{self, Value, Writer, HEADER};

use super::ids::{IdError, IdMap, Owner};
use crate::relay::session::{Dir, RelayError, Tracker};

/// Why the bridge gives up on Xwayland's connection.
#[derive(Debug, thiserror::Error)]
pub enum XwlError {
    /// A message did not parse or named an object it may not.
    #[error("protocol: {0}")]
    Protocol(String),
    /// An id could not be renumbered.
    #[error(transparent)]
    Id(#[from] IdError),
}

impl From<RelayError> for XwlError {
    fn from(e: RelayError) -> Self {
        XwlError::Protocol(e.to_string())
    }
}

impl From<wire::WireError> for XwlError {
    fn from(e: wire::WireError) -> Self {
        XwlError::Protocol(format!("{e:?}"))
    }
}

/// What the window manager hears of a paired surface.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum WmEvent {
    /// The compositor configured a toplevel (0 × 0: the window decides).
    Configure {
        /// Xwayland's surface id.
        surface: u32,
        /// Suggested size.
        width: i32,
        /// Suggested size.
        height: i32,
        /// It has the keyboard focus.
        activated: bool,
        /// Fullscreen.
        fullscreen: bool,
        /// Maximized.
        maximized: bool,
    },
    /// The user closed the window.
    Close {
        /// Xwayland's surface id.
        surface: u32,
    },
}

/// What a surface is to become.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Kind {
    /// A window of its own.
    Toplevel(Toplevel),
    /// An override-redirect window at (`x`, `y`) from its parent's origin.
    Popup {
        /// The parent's surface (Xwayland's id), a toplevel or popup.
        parent: u32,
        /// Offset from the parent's top-left corner.
        x: i32,
        /// Offset from the parent's top-left corner.
        y: i32,
        /// Its size.
        width: i32,
        /// Its size.
        height: i32,
    },
}

/// A toplevel's properties.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Toplevel {
    /// Title (`_NET_WM_NAME`, else `WM_NAME`).
    pub title: String,
    /// App id (the class of `WM_CLASS`).
    pub app_id: String,
    /// A transient window's parent surface.
    pub parent: Option<u32>,
    /// Size hints (0: none).
    pub min: (i32, i32),
    /// Size hints (0: none).
    pub max: (i32, i32),
    /// Wants fullscreen.
    pub fullscreen: bool,
    /// Wants maximized.
    pub maximized: bool,
}

/// What Xwayland asked to show on a surface that could not show yet.
#[derive(Debug, Default)]
struct Held {
    /// The last `attach`: upstream buffer id (0 = none), x, y.
    attach: Option<(u32, i32, i32)>,
    commit: bool,
}

#[derive(Debug)]
enum Role {
    /// None yet: commits are held.
    None,
    /// Xwayland gave it one (cursor, drag icon, rootful window).
    Xwayland,
    /// The bridge's `xdg_surface` and its toplevel or popup, held until
    /// the first configure.
    Xdg {
        xdg_surface: u32,
        role: u32,
        popup: bool,
        parent: Option<u32>,
        configured: bool,
    },
}

#[derive(Debug)]
struct Surface {
    up: u32,
    role: Role,
    held: Held,
    /// The last toplevel configure, reported with the next xdg configure.
    pending: Option<WmEvent>,
}

impl Surface {
    fn holds(&self) -> bool {
        match self.role {
            Role::None => true,
            Role::Xwayland => false,
            Role::Xdg { configured, .. } => !configured,
        }
    }
}

/// The bridge's own upstream objects.
#[derive(Debug, Clone, Copy)]
enum Own {
    Registry,
    WmBase,
    XdgSurface(u32),
    Role(u32),
    Positioner,
}

/// Interface ids the bridge acts on.
struct Ifaces {
    registry: IfaceId,
    wm_base: IfaceId,
    xdg_surface: IfaceId,
    toplevel: IfaceId,
    popup: IfaceId,
    positioner: IfaceId,
}

fn iface(name: &str) -> IfaceId {
    protocol::lookup(name).unwrap_or(IfaceId::MAX)
}

/// The opcode of request `name` of `iface` (an opcode no interface has when
/// the tables lack it, which the compositor refuses).
fn op(iface: &str, name: &str) -> u16 {
    protocol::lookup(iface)
        .and_then(|i| {
            protocol::interface(i)
                .requests
                .iter()
                .position(|m| m.name == name)
        })
        .map_or(u16::MAX, |p| p as u16)
}

/// A request's object arguments as Xwayland named them, and its new
/// objects as (Xwayland's id, upstream id).
type Renumbered = (Vec<u32>, Vec<(u32, u32)>);

/// The xdg_wm_base version the bridge binds at most.
const WM_BASE_VERSION: u32 = 5;

/// Most X windows paired at once (each costs upstream objects).
pub const MAX_PAIRED: usize = 4096;

/// Xwayland's connection and the bridge's state.
pub struct Xwl {
    x: Tracker,
    ids: IdMap,
    surfaces: HashMap<u32, Surface>,
    own: HashMap<u32, (IfaceId, Own)>,
    wm_base: Option<u32>,
    waiting: HashMap<u32, Kind>,
    known: Ifaces,
    /// Bytes for upstream.
    pub to_up: Vec<u8>,
    /// fds for upstream, in message order.
    pub to_up_fds: Vec<OwnedFd>,
    /// Bytes for Xwayland.
    pub to_x: Vec<u8>,
    /// fds for Xwayland, in message order.
    pub to_x_fds: Vec<OwnedFd>,
    /// What the window manager has to act on.
    pub wm: VecDeque<WmEvent>,
}

impl Default for Xwl {
    fn default() -> Self {
        Self::new()
    }
}

impl Xwl {
    /// A bridge whose first upstream message gets its own registry.
    pub fn new() -> Self {
        let mut b = Xwl {
            x: Tracker::new(),
            ids: IdMap::new(),
            surfaces: HashMap::new(),
            own: HashMap::new(),
            wm_base: None,
            waiting: HashMap::new(),
            known: Ifaces {
                registry: iface("wl_registry"),
                wm_base: iface("xdg_wm_base"),
                xdg_surface: iface("xdg_surface"),
                toplevel: iface("xdg_toplevel"),
                popup: iface("xdg_popup"),
                positioner: iface("xdg_positioner"),
            },
            to_up: Vec::new(),
            to_up_fds: Vec::new(),
            to_x: Vec::new(),
            to_x_fds: Vec::new(),
            wm: VecDeque::new(),
        };
        if let Ok(r) = b.new_own(b.known.registry, Own::Registry) {
            b.send(Writer::new(1, op("wl_display", "get_registry")).uint(r));
        }
        b
    }

    fn new_own(&mut self, iface: IfaceId, what: Own) -> Result<u32, XwlError> {
        let u = self.ids.create_own()?;
        self.own.insert(u, (iface, what));
        Ok(u)
    }

    fn send(&mut self, w: Writer) {
        self.to_up.extend_from_slice(&w.finish());
    }

    /// Frames and passes on every complete request in `buf` (with `fds`
    /// queued); returns the bytes consumed.
    pub fn requests(&mut self, buf: &[u8], fds: &mut VecDeque<OwnedFd>) -> Result<usize, XwlError> {
        let mut off = 0;
        while let Some(p) = self.x.next(&buf[off..], fds.len(), Dir::Request)? {
            let mut m = buf[off..off + p.size].to_vec();
            off += p.size;
            let f: Vec<OwnedFd> = fds.drain(..p.fds).collect();
            self.request(p.iface, p.msg, &mut m, f)?;
        }
        Ok(off)
    }

    /// Renumbers one request and acts on what concerns roles.
    fn request(
        &mut self,
        ifc: IfaceId,
        msg: &'static Message,
        m: &mut [u8],
        fds: Vec<OwnedFd>,
    ) -> Result<(), XwlError> {
        let object = word(m, 0);
        let (x_args, new) = self.renumber_request(msg, m).map_err(|e| {
            XwlError::Protocol(format!(
                "{}.{}: {e}",
                protocol::interface(ifc).name,
                msg.name
            ))
        })?;
        let iname = protocol::interface(ifc).name;
        let mut forward = true;
        match (iname, msg.name) {
            ("wl_surface", "attach") => {
                if let Some(s) = self.surfaces.get_mut(&object).filter(|s| s.holds()) {
                    let (x, y) = (word(m, HEADER + 4) as i32, word(m, HEADER + 8) as i32);
                    s.held.attach = Some((word(m, HEADER), x, y));
                    forward = false;
                }
            }
            ("wl_surface", "commit") => {
                if let Some(s) = self.surfaces.get_mut(&object).filter(|s| s.holds()) {
                    s.held.commit = true;
                    forward = false;
                }
            }
            ("wl_surface", "destroy") => self.surface_gone(object),
            ("wl_buffer", "destroy") => {
                let u = word(m, 0);
                for s in self.surfaces.values_mut() {
                    if s.held.attach.is_some_and(|(b, ..)| b == u) {
                        s.held.attach = None;
                    }
                }
            }
            _ => {}
        }
        if forward {
            self.to_up.extend_from_slice(m);
            self.to_up_fds.extend(fds);
        }
        match (iname, msg.name) {
            ("wl_compositor", "create_surface") => {
                if let Some(&(x, _)) = new.first() {
                    self.surface_made(x)?;
                }
            }
            // Roles Xwayland gives: the surface shows from now on.
            ("wl_pointer", "set_cursor") => self.xwayland_role(x_args.get(1).copied()),
            ("wl_subcompositor", "get_subsurface") => self.xwayland_role(x_args.get(1).copied()),
            ("xdg_wm_base", "get_xdg_surface") => self.xwayland_role(x_args.get(1).copied()),
            ("wl_data_device", "start_drag") => self.xwayland_role(x_args.get(2).copied()),
            _ => {}
        }
        Ok(())
    }

    /// Rewrites a request's ids to upstream ones. Returns the object
    /// arguments as Xwayland named them (its ids, in order, new ids
    /// included) and the new objects as (Xwayland's id, upstream id).
    fn renumber_request(
        &mut self,
        msg: &'static Message,
        m: &mut [u8],
    ) -> Result<Renumbered, XwlError> {
        let slots = wire::id_slots(&m[HEADER..], msg)?;
        let object = word(m, 0);
        put(m, 0, self.ids.up(object)?);
        let mut args = Vec::with_capacity(slots.len());
        let mut new = Vec::new();
        for s in slots {
            let at = HEADER + s.offset;
            let x = word(m, at);
            args.push(x);
            let u = if s.new {
                let u = self.ids.create(x)?;
                new.push((x, u));
                u
            } else {
                self.ids.up(x)?
            };
            put(m, at, u);
        }
        Ok((args, new))
    }

    fn surface_made(&mut self, x: u32) -> Result<(), XwlError> {
        let up = self.ids.up(x)?;
        self.surfaces.insert(
            x,
            Surface {
                up,
                role: Role::None,
                held: Held::default(),
                pending: None,
            },
        );
        if let Some(k) = self.waiting.remove(&x) {
            self.pair(x, k)?;
        }
        Ok(())
    }

    fn xwayland_role(&mut self, surface: Option<u32>) {
        let Some(x) = surface else { return };
        if let Some(s) = self.surfaces.get_mut(&x) {
            if matches!(s.role, Role::None) {
                s.role = Role::Xwayland;
                self.release(x);
            }
        }
    }

    /// Sends what was held for surface `x`: its last buffer, all damaged,
    /// and a commit.
    fn release(&mut self, x: u32) {
        let Some(s) = self.surfaces.get_mut(&x) else {
            return;
        };
        let held = std::mem::take(&mut s.held);
        let up = s.up;
        if let Some((b, bx, by)) = held.attach {
            self.send(
                Writer::new(up, op("wl_surface", "attach"))
                    .uint(b)
                    .uint(bx as u32)
                    .uint(by as u32),
            );
            self.send(
                Writer::new(up, op("wl_surface", "damage"))
                    .uint(0)
                    .uint(0)
                    .uint(i32::MAX as u32)
                    .uint(i32::MAX as u32),
            );
        }
        if held.commit || held.attach.is_some() {
            self.send(Writer::new(up, op("wl_surface", "commit")));
        }
    }

    /// Xwayland destroys surface `x`: its role objects go first (popups
    /// before their parents).
    fn surface_gone(&mut self, x: u32) {
        self.unpair_inner(x, false);
        self.surfaces.remove(&x);
        self.waiting.remove(&x);
    }

    /// The window manager gives surface `x` (Xwayland's id) its role. A
    /// surface Xwayland has not made yet gets it when it does.
    pub fn pair(&mut self, x: u32, kind: Kind) -> Result<(), XwlError> {
        let Some(s) = self.surfaces.get(&x) else {
            if self.waiting.len() < MAX_PAIRED {
                self.waiting.insert(x, kind);
            }
            return Ok(());
        };
        if !matches!(s.role, Role::None) {
            return Ok(());
        }
        let Some(wm_base) = self.wm_base else {
            self.waiting.insert(x, kind);
            return Ok(());
        };
        let paired = self
            .surfaces
            .values()
            .filter(|s| matches!(s.role, Role::Xdg { .. }))
            .count();
        if paired >= MAX_PAIRED {
            return Ok(());
        }
        let up = s.up;
        let xs = self.new_own(self.known.xdg_surface, Own::XdgSurface(x))?;
        self.send(
            Writer::new(wm_base, op("xdg_wm_base", "get_xdg_surface"))
                .uint(xs)
                .uint(up),
        );
        let role = match &kind {
            Kind::Toplevel(t) => self.make_toplevel(x, xs, t)?,
            Kind::Popup {
                parent,
                x: px,
                y: py,
                width,
                height,
            } => match self.make_popup(x, xs, *parent, (*px, *py, *width, *height))? {
                Some(r) => r,
                None => {
                    self.send(Writer::new(xs, op("xdg_surface", "destroy")));
                    return Ok(());
                }
            },
        };
        self.send(Writer::new(up, op("wl_surface", "commit")));
        if let Some(s) = self.surfaces.get_mut(&x) {
            s.role = Role::Xdg {
                xdg_surface: xs,
                role,
                popup: matches!(kind, Kind::Popup { .. }),
                parent: match &kind {
                    Kind::Popup { parent, .. } => Some(*parent),
                    Kind::Toplevel(_) => None,
                },
                configured: false,
            };
        }
        Ok(())
    }

    fn make_toplevel(&mut self, x: u32, xs: u32, t: &Toplevel) -> Result<u32, XwlError> {
        let tl = self.new_own(self.known.toplevel, Own::Role(x))?;
        self.send(Writer::new(xs, op("xdg_surface", "get_toplevel")).uint(tl));
        self.set_toplevel(tl, t);
        if let Some(p) = t.parent.and_then(|p| self.toplevel_of(p)) {
            self.send(Writer::new(tl, op("xdg_toplevel", "set_parent")).uint(p));
        }
        if t.fullscreen {
            self.send(Writer::new(tl, op("xdg_toplevel", "set_fullscreen")).uint(0));
        } else if t.maximized {
            self.send(Writer::new(tl, op("xdg_toplevel", "set_maximized")));
        }
        Ok(tl)
    }

    /// Title, app id and size hints of toplevel `tl`.
    fn set_toplevel(&mut self, tl: u32, t: &Toplevel) {
        self.send(Writer::new(tl, op("xdg_toplevel", "set_title")).string(&clean(&t.title)));
        self.send(Writer::new(tl, op("xdg_toplevel", "set_app_id")).string(&clean(&t.app_id)));
        let (minw, minh) = (t.min.0.max(0) as u32, t.min.1.max(0) as u32);
        let (maxw, maxh) = (t.max.0.max(0) as u32, t.max.1.max(0) as u32);
        self.send(
            Writer::new(tl, op("xdg_toplevel", "set_min_size"))
                .uint(minw)
                .uint(minh),
        );
        self.send(
            Writer::new(tl, op("xdg_toplevel", "set_max_size"))
                .uint(maxw)
                .uint(maxh),
        );
    }

    /// A paired toplevel's title, app id or size hints changed.
    pub fn update(&mut self, x: u32, t: &Toplevel) {
        if let Some(tl) = self.toplevel_of(x) {
            self.set_toplevel(tl, t);
            if let Some(s) = self.surfaces.get(&x).filter(|s| !s.holds()) {
                let up = s.up;
                self.send(Writer::new(up, op("wl_surface", "commit")));
            }
        }
    }

    fn toplevel_of(&self, x: u32) -> Option<u32> {
        match self.surfaces.get(&x)?.role {
            Role::Xdg {
                role, popup: false, ..
            } => Some(role),
            _ => None,
        }
    }

    fn make_popup(
        &mut self,
        x: u32,
        xs: u32,
        parent: u32,
        (px, py, w, h): (i32, i32, i32, i32),
    ) -> Result<Option<u32>, XwlError> {
        let parent_xs = match self.surfaces.get(&parent).map(|s| &s.role) {
            Some(Role::Xdg { xdg_surface, .. }) => *xdg_surface,
            _ => return Ok(None),
        };
        let pos = self.new_own(self.known.positioner, Own::Positioner)?;
        let wm_base = self.wm_base.unwrap_or(0);
        self.send(Writer::new(wm_base, op("xdg_wm_base", "create_positioner")).uint(pos));
        let (w, h) = (w.clamp(1, 1 << 15) as u32, h.clamp(1, 1 << 15) as u32);
        self.send(
            Writer::new(pos, op("xdg_positioner", "set_size"))
                .uint(w)
                .uint(h),
        );
        self.send(
            Writer::new(pos, op("xdg_positioner", "set_anchor_rect"))
                .uint(px as u32)
                .uint(py as u32)
                .uint(1)
                .uint(1),
        );
        // Anchor top_left (5), gravity bottom_right (8): the popup's corner
        // sits on the anchor point, where X put the window.
        self.send(Writer::new(pos, op("xdg_positioner", "set_anchor")).uint(5));
        self.send(Writer::new(pos, op("xdg_positioner", "set_gravity")).uint(8));
        let popup = self.new_own(self.known.popup, Own::Role(x))?;
        self.send(
            Writer::new(xs, op("xdg_surface", "get_popup"))
                .uint(popup)
                .uint(parent_xs)
                .uint(pos),
        );
        self.send(Writer::new(pos, op("xdg_positioner", "destroy")));
        Ok(Some(popup))
    }

    /// The window of surface `x` was unmapped: its role objects go, and
    /// its buffer with them (a surface with a buffer cannot be given an
    /// xdg role again).
    pub fn unpair(&mut self, x: u32) {
        self.waiting.remove(&x);
        self.unpair_inner(x, true);
    }

    fn unpair_inner(&mut self, x: u32, clear: bool) {
        let children: Vec<u32> = self
            .surfaces
            .iter()
            .filter(|(_, s)| matches!(s.role, Role::Xdg { parent: Some(p), .. } if p == x))
            .map(|(&c, _)| c)
            .collect();
        for c in children {
            self.unpair_inner(c, clear);
        }
        let Some(s) = self.surfaces.get_mut(&x) else {
            return;
        };
        let Role::Xdg {
            xdg_surface,
            role,
            popup,
            ..
        } = std::mem::replace(&mut s.role, Role::None)
        else {
            return;
        };
        s.held = Held::default();
        s.pending = None;
        let up = s.up;
        let (ri, rn) = if popup {
            ("xdg_popup", "destroy")
        } else {
            ("xdg_toplevel", "destroy")
        };
        self.send(Writer::new(role, op(ri, rn)));
        self.send(Writer::new(xdg_surface, op("xdg_surface", "destroy")));
        if clear {
            self.send(
                Writer::new(up, op("wl_surface", "attach"))
                    .uint(0)
                    .uint(0)
                    .uint(0),
            );
            self.send(Writer::new(up, op("wl_surface", "commit")));
        }
    }

    /// Frames every complete event in `buf` (with `fds` queued): Xwayland's
    /// renumbered for it, the bridge's own acted on. Returns the bytes
    /// consumed.
    pub fn events(&mut self, buf: &[u8], fds: &mut VecDeque<OwnedFd>) -> Result<usize, XwlError> {
        let mut off = 0;
        loop {
            let rest = &buf[off..];
            let h = match wire::header(rest) {
                Ok(h) if rest.len() >= h.size => h,
                Ok(_) | Err(wire::WireError::NeedBytes) => return Ok(off),
                Err(e) => return Err(e.into()),
            };
            let mut m = rest[..h.size].to_vec();
            match self.ids.down(h.object) {
                Some(Owner::Bridge) => {
                    off += h.size;
                    self.own_event(&m)?;
                }
                Some(Owner::Xwayland(x)) => {
                    put(&mut m, 0, x);
                    let Some(p) = self.x.next(&m, fds.len(), Dir::Event)? else {
                        return Ok(off);
                    };
                    off += h.size;
                    let f: Vec<OwnedFd> = fds.drain(..p.fds).collect();
                    self.event(p.iface, p.msg, &mut m, f)?;
                }
                None => {
                    return Err(XwlError::Protocol(format!(
                        "event for unknown object {}",
                        h.object
                    )))
                }
            }
        }
    }

    /// One event for Xwayland: its ids renumbered, `delete_id` of the
    /// bridge's objects kept back.
    fn event(
        &mut self,
        ifc: IfaceId,
        msg: &'static Message,
        m: &mut [u8],
        fds: Vec<OwnedFd>,
    ) -> Result<(), XwlError> {
        let iname = protocol::interface(ifc).name;
        if (iname, msg.name) == ("wl_display", "delete_id") {
            match self.ids.delete(word(m, HEADER)) {
                Some(Owner::Xwayland(x)) => put(m, HEADER, x),
                Some(Owner::Bridge) => {
                    self.own.remove(&word(m, HEADER));
                    return Ok(());
                }
                None => return Ok(()),
            }
        } else {
            let error = (iname, msg.name) == ("wl_display", "error");
            for s in wire::id_slots(&m[HEADER..], msg)? {
                let at = HEADER + s.offset;
                match self.ids.down(word(m, at)) {
                    Some(Owner::Xwayland(x)) => put(m, at, x),
                    // An error about one of the bridge's objects: Xwayland
                    // hears it about its display (the connection ends).
                    _ if error => put(m, at, 1),
                    // Any other event naming the bridge's objects is not
                    // Xwayland's business.
                    _ => return Ok(()),
                }
            }
        }
        self.to_x.extend_from_slice(m);
        self.to_x_fds.extend(fds);
        Ok(())
    }

    /// An event for one of the bridge's own objects.
    fn own_event(&mut self, m: &[u8]) -> Result<(), XwlError> {
        let u = word(m, 0);
        let Some(&(ifc, what)) = self.own.get(&u) else {
            return Err(XwlError::Protocol(format!("event for deleted object {u}")));
        };
        let opcode = usize::from(word(m, 4) as u16);
        let msg = protocol::interface(ifc)
            .events
            .get(opcode)
            .ok_or_else(|| XwlError::Protocol(format!("no event {opcode}")))?;
        let mut args = Vec::new();
        wire::parse_args::<wire::WireError>(&m[HEADER..], 0, msg, |_, v| {
            args.push(match v {
                Value::Int(i) | Value::Fixed(i) => Arg::N(i),
                Value::Uint(u) | Value::Object(u) | Value::NewId(u) => Arg::N(u as i32),
                Value::Str(s) => Arg::S(s.unwrap_or("").to_string()),
                Value::Array(a) => Arg::A(a.to_vec()),
                Value::NewIdDyn { .. } | Value::Fd(_) => Arg::N(0),
            });
            Ok(())
        })?;
        let n = |i: usize| match args.get(i) {
            Some(Arg::N(v)) => *v,
            _ => 0,
        };
        match (what, msg.name) {
            (Own::Registry, "global") => {
                if let (Some(Arg::S(name)), None) = (args.get(1), self.wm_base) {
                    if name == "xdg_wm_base" {
                        let ver = (n(2) as u32).min(WM_BASE_VERSION);
                        let wb = self.new_own(self.known.wm_base, Own::WmBase)?;
                        self.send(
                            Writer::new(u, op("wl_registry", "bind"))
                                .uint(n(0) as u32)
                                .string("xdg_wm_base")
                                .uint(ver)
                                .uint(wb),
                        );
                        self.wm_base = Some(wb);
                        let waiting: Vec<(u32, Kind)> = self.waiting.drain().collect();
                        for (x, k) in waiting {
                            self.pair(x, k)?;
                        }
                    }
                }
            }
            (Own::WmBase, "ping") => {
                self.send(Writer::new(u, op("xdg_wm_base", "pong")).uint(n(0) as u32));
            }
            (Own::XdgSurface(x), "configure") => {
                self.send(Writer::new(u, op("xdg_surface", "ack_configure")).uint(n(0) as u32));
                self.configured(x);
            }
            (Own::Role(x), "configure") if ifc == self.known.toplevel => {
                let states: Vec<u32> = match args.get(2) {
                    Some(Arg::A(a)) => a
                        .chunks_exact(4)
                        .map(|c| u32::from_ne_bytes([c[0], c[1], c[2], c[3]]))
                        .collect(),
                    _ => Vec::new(),
                };
                if let Some(s) = self.surfaces.get_mut(&x) {
                    s.pending = Some(WmEvent::Configure {
                        surface: x,
                        width: n(0),
                        height: n(1),
                        maximized: states.contains(&1),
                        fullscreen: states.contains(&2),
                        activated: states.contains(&4),
                    });
                }
            }
            (Own::Role(x), "close") if ifc == self.known.toplevel => {
                self.wm.push_back(WmEvent::Close { surface: x });
            }
            _ => {}
        }
        Ok(())
    }

    /// The first (or a further) configure of surface `x`'s xdg surface:
    /// what was held shows, the window manager hears the toplevel's size.
    fn configured(&mut self, x: u32) {
        let Some(s) = self.surfaces.get_mut(&x) else {
            return;
        };
        if let Role::Xdg { configured, .. } = &mut s.role {
            let first = !*configured;
            *configured = true;
            if let Some(e) = s.pending.take() {
                self.wm.push_back(e);
            }
            if first {
                self.release(x);
            }
        }
    }

    /// Surfaces Xwayland has now (for tests and limits).
    pub fn surfaces(&self) -> usize {
        self.surfaces.len()
    }

    /// Whether surface `x` shows what Xwayland commits.
    pub fn shows(&self, x: u32) -> bool {
        self.surfaces.get(&x).is_some_and(|s| !s.holds())
    }
}

enum Arg {
    N(i32),
    S(String),
    A(Vec<u8>),
}

fn word(m: &[u8], at: usize) -> u32 {
    m.get(at..at + 4)
        .map_or(0, |b| u32::from_ne_bytes([b[0], b[1], b[2], b[3]]))
}

fn put(m: &mut [u8], at: usize, v: u32) {
    if let Some(b) = m.get_mut(at..at + 4) {
        b.copy_from_slice(&v.to_ne_bytes());
    }
}

/// A title or app id as the compositor may take it: no NULs or control
/// characters, at most 512 bytes on a character boundary.
fn clean(s: &str) -> String {
    let mut out: String = s.chars().filter(|c| !c.is_control()).collect();
    if out.len() > 512 {
        let mut end = 512;
        while !out.is_char_boundary(end) {
            end -= 1;
        }
        out.truncate(end);
    }
    out
}

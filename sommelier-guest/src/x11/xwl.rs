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

#[path = "xwl_clip.rs"]
mod clip;

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
    /// The host's selection (clipboard) changed: its MIME types, none when
    /// it was cleared. Only while one of Xwayland's surfaces has the focus.
    Selection {
        /// MIME types offered.
        mimes: Vec<String>,
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
    Seat,
    DataManager,
    DataDevice,
    Offer,
    Source,
    /// Destroyed by the bridge; its events (already on their way) are
    /// dropped until its id is deleted or made again.
    Dead,
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

use iface as iface_id;

/// The opcode of request `name` of `iface` (an opcode no interface has when
/// the tables lack it, which the compositor refuses).
pub(crate) fn op(iface: &str, name: &str) -> u16 {
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
    clip: clip::Clip,
    /// The last input serial Xwayland got (for `set_selection`).
    serial: u32,
    /// Host apps' requests for the X selection's data: (MIME type, the
    /// pipe to write it into).
    pub sends: VecDeque<(String, OwnedFd)>,
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
            clip: clip::Clip::default(),
            serial: 0,
            sends: VecDeque::new(),
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

    /// Destroys the bridge's object `u` (of `iface`, whose destructor is
    /// `destroy`), once: what the compositor sent it before it heard of
    /// that is dropped, never answered.
    fn destroy_own(&mut self, u: u32, iface: &str) {
        match self.own.get_mut(&u) {
            Some((_, what)) if !matches!(what, Own::Dead) => *what = Own::Dead,
            _ => return,
        }
        self.send(Writer::new(u, op(iface, "destroy")));
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
            ("wl_pointer", "set_cursor") => self.xwayland_role(x_args.first().copied()),
            ("wl_subcompositor", "get_subsurface") => self.xwayland_role(x_args.get(1).copied()),
            ("xdg_wm_base", "get_xdg_surface") => self.xwayland_role(x_args.get(1).copied()),
            ("wl_data_device", "start_drag") => self.xwayland_role(x_args.get(2).copied()),
            ("zwp_tablet_tool_v2", "set_cursor") => self.xwayland_role(x_args.first().copied()),
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
    /// surface Xwayland has not made yet gets it when it does. `Ok(false)`:
    /// no role, now or later (a popup whose parent has none, too many
    /// windows); the window manager may ask again.
    pub fn pair(&mut self, x: u32, kind: Kind) -> Result<bool, XwlError> {
        let Some(s) = self.surfaces.get(&x) else {
            if self.waiting.len() >= MAX_PAIRED {
                return Ok(false);
            }
            self.waiting.insert(x, kind);
            return Ok(true);
        };
        if !matches!(s.role, Role::None) {
            return Ok(true);
        }
        let Some(wm_base) = self.wm_base else {
            self.waiting.insert(x, kind);
            return Ok(true);
        };
        let paired = self
            .surfaces
            .values()
            .filter(|s| matches!(s.role, Role::Xdg { .. }))
            .count();
        if paired >= MAX_PAIRED {
            return Ok(false);
        }
        let up = s.up;
        if let Kind::Popup { parent, .. } = &kind {
            if !matches!(
                self.surfaces.get(parent).map(|p| &p.role),
                Some(Role::Xdg { .. })
            ) {
                // Its parent has gone (or never showed): nothing to place
                // it by.
                return Ok(false);
            }
        }
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
                    self.destroy_own(xs, "xdg_surface");
                    return Ok(false);
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
        Ok(true)
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
        let (mut maxw, mut maxh) = (t.max.0.max(0) as u32, t.max.1.max(0) as u32);
        // A maximum below the minimum is an error to some compositors
        // (the connection would go): no maximum then.
        if (maxw != 0 && maxw < minw) || (maxh != 0 && maxh < minh) {
            (maxw, maxh) = (0, 0);
        }
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

    /// Asks the compositor to make toplevel `x` fullscreen or not.
    pub fn set_fullscreen(&mut self, x: u32, on: bool) {
        if let Some(tl) = self.toplevel_of(x) {
            if on {
                self.send(Writer::new(tl, op("xdg_toplevel", "set_fullscreen")).uint(0));
            } else {
                self.send(Writer::new(tl, op("xdg_toplevel", "unset_fullscreen")));
            }
        }
    }

    /// Asks the compositor to maximize toplevel `x` or not.
    pub fn set_maximized(&mut self, x: u32, on: bool) {
        if let Some(tl) = self.toplevel_of(x) {
            let name = if on {
                "set_maximized"
            } else {
                "unset_maximized"
            };
            self.send(Writer::new(tl, op("xdg_toplevel", name)));
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
        self.destroy_own(pos, "xdg_positioner");
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
        self.destroy_own(role, if popup { "xdg_popup" } else { "xdg_toplevel" });
        self.destroy_own(xdg_surface, "xdg_surface");
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
                    let Some(msg) = self.own_message(&m)? else {
                        return Ok(off);
                    };
                    if fds.len() < msg.fds {
                        return Ok(off);
                    }
                    off += h.size;
                    let f: Vec<OwnedFd> = fds.drain(..msg.fds).collect();
                    self.own_event(&m, msg, f)?;
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
        if matches!(
            (iname, msg.name),
            ("wl_keyboard", "enter" | "key") | ("wl_pointer", "button")
        ) {
            self.serial = word(m, HEADER);
        }
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
                if s.new {
                    // The compositor made an object for Xwayland with an id
                    // the bridge had (a destroyed offer's): Xwayland's now.
                    let id = word(m, at);
                    self.ids.release_server(id);
                    self.own.remove(&id);
                }
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

    /// The signature of an event for one of the bridge's own objects.
    fn own_message(&self, m: &[u8]) -> Result<Option<&'static Message>, XwlError> {
        let u = word(m, 0);
        let Some(&(ifc, _)) = self.own.get(&u) else {
            return Err(XwlError::Protocol(format!("event for deleted object {u}")));
        };
        let opcode = usize::from(word(m, 4) as u16);
        protocol::interface(ifc)
            .events
            .get(opcode)
            .map(Some)
            .ok_or_else(|| XwlError::Protocol(format!("no event {opcode}")))
    }

    /// An event for one of the bridge's own objects (`fds`: the ones it
    /// carries).
    fn own_event(
        &mut self,
        m: &[u8],
        msg: &'static Message,
        mut fds: Vec<OwnedFd>,
    ) -> Result<(), XwlError> {
        let u = word(m, 0);
        let Some(&(ifc, what)) = self.own.get(&u) else {
            return Err(XwlError::Protocol(format!("event for deleted object {u}")));
        };
        let mut args = Vec::new();
        wire::parse_args::<wire::WireError>(&m[HEADER..], fds.len(), msg, |_, v| {
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
        let name = |i: usize| match args.get(i) {
            Some(Arg::S(s)) => s.as_str(),
            _ => "",
        };
        match (what, msg.name) {
            (Own::Dead, _) => {}
            (Own::Registry, "global") => self.global(u, n(0) as u32, name(1), n(2) as u32)?,
            (Own::DataDevice | Own::Offer | Own::Source, _) => {
                let fd = (!fds.is_empty()).then(|| fds.remove(0));
                self.clip_event(u, what, msg.name, &args, fd)?;
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

    /// A global on the bridge's registry `reg`: `xdg_wm_base` for roles,
    /// a seat and the data device manager for the clipboard.
    fn global(&mut self, reg: u32, name: u32, iface: &str, ver: u32) -> Result<(), XwlError> {
        let (ifc, own, ver) = match iface {
            "xdg_wm_base" if self.wm_base.is_none() => {
                (self.known.wm_base, Own::WmBase, ver.min(WM_BASE_VERSION))
            }
            "wl_seat" if self.clip.seat.is_none() => (iface_id("wl_seat"), Own::Seat, 1),
            "wl_data_device_manager" if self.clip.manager.is_none() => (
                iface_id("wl_data_device_manager"),
                Own::DataManager,
                ver.min(3),
            ),
            _ => return Ok(()),
        };
        let id = self.new_own(ifc, own)?;
        self.send(
            Writer::new(reg, op("wl_registry", "bind"))
                .uint(name)
                .string(iface)
                .uint(ver)
                .uint(id),
        );
        match own {
            Own::WmBase => {
                self.wm_base = Some(id);
                let waiting: Vec<(u32, Kind)> = self.waiting.drain().collect();
                for (x, k) in waiting {
                    self.pair(x, k)?;
                }
            }
            Own::Seat => self.clip.seat = Some(id),
            _ => self.clip.manager = Some(id),
        }
        self.clip_device()
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

/// A decoded argument of an event for the bridge's own objects.
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

#[cfg(test)]
pub(crate) mod tests {
    use super::*;

    /// (object, opcode, body) of each message in `b`.
    pub(crate) fn msgs(b: &[u8]) -> Vec<(u32, u16, Vec<u8>)> {
        let mut out = Vec::new();
        let mut off = 0;
        while off < b.len() {
            let h = wire::header(&b[off..]).unwrap();
            out.push((h.object, h.opcode, b[off + HEADER..off + h.size].to_vec()));
            off += h.size;
        }
        out
    }

    pub(crate) fn ev(iface: &str, name: &str) -> u16 {
        protocol::lookup(iface)
            .and_then(|i| {
                protocol::interface(i)
                    .events
                    .iter()
                    .position(|m| m.name == name)
            })
            .unwrap() as u16
    }

    pub(crate) fn feed_x(b: &mut Xwl, m: Vec<u8>, fds: Vec<OwnedFd>) {
        let mut q: VecDeque<OwnedFd> = fds.into();
        assert_eq!(b.requests(&m, &mut q).unwrap(), m.len());
    }

    pub(crate) fn feed_up(b: &mut Xwl, m: Vec<u8>) {
        let mut q = VecDeque::new();
        assert_eq!(b.events(&m, &mut q).unwrap(), m.len());
    }

    pub(crate) fn take_up(b: &mut Xwl) -> Vec<(u32, u16, Vec<u8>)> {
        msgs(&std::mem::take(&mut b.to_up))
    }

    fn fd() -> OwnedFd {
        std::fs::File::open("/dev/null").unwrap().into()
    }

    /// The bridge with its xdg_wm_base bound (upstream 3) and Xwayland's
    /// registry (2 → 4), compositor (3 → 5), shm (5 → 6), a pool (6 → 7),
    /// a buffer (7 → 8) and a surface (4 → 9).
    pub(crate) fn bridge_with_surface() -> Xwl {
        let mut b = Xwl::new();
        assert_eq!(
            take_up(&mut b),
            vec![(
                1,
                op("wl_display", "get_registry"),
                2u32.to_ne_bytes().to_vec()
            )]
        );
        feed_up(
            &mut b,
            Writer::new(2, ev("wl_registry", "global"))
                .uint(7)
                .string("xdg_wm_base")
                .uint(6)
                .finish(),
        );
        let bind = take_up(&mut b);
        assert_eq!((bind[0].0, bind[0].1), (2, op("wl_registry", "bind")));
        // Version capped, new id 3 (the next upstream id).
        assert_eq!(&bind[0].2[bind[0].2.len() - 8..], &[5, 0, 0, 0, 3, 0, 0, 0]);
        feed_x(
            &mut b,
            Writer::new(1, op("wl_display", "get_registry"))
                .uint(2)
                .finish(),
            vec![],
        );
        feed_x(
            &mut b,
            Writer::new(2, op("wl_registry", "bind"))
                .uint(1)
                .string("wl_compositor")
                .uint(4)
                .uint(3)
                .finish(),
            vec![],
        );
        feed_x(
            &mut b,
            Writer::new(3, op("wl_compositor", "create_surface"))
                .uint(4)
                .finish(),
            vec![],
        );
        feed_x(
            &mut b,
            Writer::new(2, op("wl_registry", "bind"))
                .uint(2)
                .string("wl_shm")
                .uint(1)
                .uint(5)
                .finish(),
            vec![],
        );
        feed_x(
            &mut b,
            Writer::new(5, op("wl_shm", "create_pool"))
                .uint(6)
                .uint(4096)
                .finish(),
            vec![fd()],
        );
        feed_x(
            &mut b,
            Writer::new(6, op("wl_shm_pool", "create_buffer"))
                .uint(7)
                .uint(0)
                .uint(32)
                .uint(32)
                .uint(128)
                .uint(0)
                .finish(),
            vec![],
        );
        let up = take_up(&mut b);
        // Renumbered: get_registry 2 → 4, bind → 5, create_surface → 6 on 5.
        assert_eq!(
            up[0],
            (
                1,
                op("wl_display", "get_registry"),
                4u32.to_ne_bytes().to_vec()
            )
        );
        assert_eq!((up[2].0, up[2].2.clone()), (5, 6u32.to_ne_bytes().to_vec()));
        assert_eq!(b.to_up_fds.len(), 1, "the pool's fd goes with it");
        b
    }

    #[test]
    fn a_surface_shows_nothing_until_its_toplevel_is_configured() {
        let mut b = bridge_with_surface();
        // Xwayland draws before any role: the frame request goes (its
        // callback must exist), attach and commit are held.
        feed_x(
            &mut b,
            Writer::new(4, op("wl_surface", "attach"))
                .uint(7)
                .uint(0)
                .uint(0)
                .finish(),
            vec![],
        );
        feed_x(
            &mut b,
            Writer::new(4, op("wl_surface", "frame")).uint(8).finish(),
            vec![],
        );
        feed_x(
            &mut b,
            Writer::new(4, op("wl_surface", "commit")).finish(),
            vec![],
        );
        let up = take_up(&mut b);
        assert_eq!(up.len(), 1, "{up:?}");
        assert_eq!((up[0].0, up[0].1), (6, op("wl_surface", "frame")));
        assert!(!b.shows(4));
        let t = Toplevel {
            title: "xterm\u{7}".into(),
            app_id: "XTerm".into(),
            ..Toplevel::default()
        };
        b.pair(4, Kind::Toplevel(t)).unwrap();
        let up = take_up(&mut b);
        let names: Vec<u16> = up.iter().map(|m| m.1).collect();
        assert_eq!(
            up[0],
            (
                3,
                op("xdg_wm_base", "get_xdg_surface"),
                [11u32.to_ne_bytes(), 6u32.to_ne_bytes()].concat()
            )
        );
        assert_eq!((up[1].0, up[1].1), (11, op("xdg_surface", "get_toplevel")));
        // The title without its control character; no attach before the
        // first commit, which is the last message.
        assert!(up
            .iter()
            .any(|m| m.0 == 12 && m.2.windows(6).any(|w| w == b"xterm\0")));
        assert!(!up
            .iter()
            .any(|m| m.0 == 6 && m.1 == op("wl_surface", "attach")));
        assert_eq!(*up.last().unwrap(), (6, op("wl_surface", "commit"), vec![]));
        assert!(names.len() >= 4);
        // The compositor configures: acked, the held buffer shows, the
        // window manager hears the size and focus.
        feed_up(
            &mut b,
            Writer::new(12, ev("xdg_toplevel", "configure"))
                .uint(800)
                .uint(600)
                .array(&4u32.to_ne_bytes())
                .finish(),
        );
        feed_up(
            &mut b,
            Writer::new(11, ev("xdg_surface", "configure"))
                .uint(77)
                .finish(),
        );
        let up = take_up(&mut b);
        assert_eq!(
            up[0],
            (
                11,
                op("xdg_surface", "ack_configure"),
                77u32.to_ne_bytes().to_vec()
            )
        );
        assert_eq!(up[1].0, 6);
        assert_eq!(up[1].1, op("wl_surface", "attach"));
        assert_eq!(
            &up[1].2[..4],
            &9u32.to_ne_bytes(),
            "the held buffer, upstream id"
        );
        assert_eq!(up.last().unwrap().1, op("wl_surface", "commit"));
        assert_eq!(
            b.wm.pop_front(),
            Some(WmEvent::Configure {
                surface: 4,
                width: 800,
                height: 600,
                activated: true,
                fullscreen: false,
                maximized: false
            })
        );
        assert!(b.shows(4));
        assert!(
            b.to_x.is_empty(),
            "Xwayland hears nothing of the bridge's objects"
        );
        // From now on commits pass as they come.
        feed_x(
            &mut b,
            Writer::new(4, op("wl_surface", "commit")).finish(),
            vec![],
        );
        assert_eq!(
            take_up(&mut b),
            vec![(6, op("wl_surface", "commit"), vec![])]
        );
        // Close from the compositor reaches the window manager.
        feed_up(
            &mut b,
            Writer::new(12, ev("xdg_toplevel", "close")).finish(),
        );
        assert_eq!(b.wm.pop_front(), Some(WmEvent::Close { surface: 4 }));
    }

    #[test]
    fn ids_are_renumbered_back_and_the_bridges_deletions_kept_back() {
        let mut b = bridge_with_surface();
        b.pair(4, Kind::Toplevel(Toplevel::default())).unwrap();
        take_up(&mut b);
        // An event for Xwayland's surface (upstream 6) naming its output.
        feed_up(
            &mut b,
            Writer::new(6, ev("wl_surface", "enter"))
                .uint(0xff00_0001)
                .finish(),
        );
        let x = msgs(&std::mem::take(&mut b.to_x));
        assert_eq!(
            x,
            vec![(
                4,
                ev("wl_surface", "enter"),
                0xff00_0001u32.to_ne_bytes().to_vec()
            )]
        );
        // Xwayland destroys its surface: the roles go first, then the
        // surface; the deletions come back renumbered, the bridge's own
        // are not Xwayland's business.
        feed_x(
            &mut b,
            Writer::new(4, op("wl_surface", "destroy")).finish(),
            vec![],
        );
        let up = take_up(&mut b);
        assert_eq!(
            up.iter().map(|m| (m.0, m.1)).collect::<Vec<_>>(),
            vec![
                (11, op("xdg_toplevel", "destroy")),
                (10, op("xdg_surface", "destroy")),
                (6, op("wl_surface", "destroy"))
            ]
        );
        for id in [11u32, 10, 6] {
            feed_up(
                &mut b,
                Writer::new(1, ev("wl_display", "delete_id"))
                    .uint(id)
                    .finish(),
            );
        }
        let x = msgs(&std::mem::take(&mut b.to_x));
        assert_eq!(
            x,
            vec![(
                1,
                ev("wl_display", "delete_id"),
                4u32.to_ne_bytes().to_vec()
            )]
        );
        // Id 4 is Xwayland's to use again; upstream it gets the lowest free one.
        feed_x(
            &mut b,
            Writer::new(3, op("wl_compositor", "create_surface"))
                .uint(4)
                .finish(),
            vec![],
        );
        assert_eq!(take_up(&mut b)[0].2, 6u32.to_ne_bytes().to_vec());
        assert_eq!(b.surfaces(), 1);
    }

    #[test]
    fn a_cursor_shows_at_once_and_unknown_objects_end_the_bridge() {
        let mut b = bridge_with_surface();
        feed_x(
            &mut b,
            Writer::new(4, op("wl_surface", "attach"))
                .uint(7)
                .uint(0)
                .uint(0)
                .finish(),
            vec![],
        );
        feed_x(
            &mut b,
            Writer::new(4, op("wl_surface", "commit")).finish(),
            vec![],
        );
        assert!(take_up(&mut b).is_empty());
        feed_x(
            &mut b,
            Writer::new(2, op("wl_registry", "bind"))
                .uint(3)
                .string("wl_seat")
                .uint(5)
                .uint(9)
                .finish(),
            vec![],
        );
        feed_x(
            &mut b,
            Writer::new(9, op("wl_seat", "get_pointer"))
                .uint(10)
                .finish(),
            vec![],
        );
        take_up(&mut b);
        feed_x(
            &mut b,
            Writer::new(10, op("wl_pointer", "set_cursor"))
                .uint(1)
                .uint(4)
                .uint(0)
                .uint(0)
                .finish(),
            vec![],
        );
        let up = take_up(&mut b);
        assert_eq!(
            up.iter().map(|m| (m.0, m.1)).collect::<Vec<_>>(),
            vec![
                (11, op("wl_pointer", "set_cursor")),
                (6, op("wl_surface", "attach")),
                (6, op("wl_surface", "damage")),
                (6, op("wl_surface", "commit"))
            ]
        );
        assert!(b.shows(4));
        // A request on an object Xwayland never made.
        let mut q = VecDeque::new();
        assert!(b.requests(&Writer::new(40, 0).finish(), &mut q).is_err());
        // An event for an upstream object nobody has.
        assert!(b.events(&Writer::new(99, 0).finish(), &mut q).is_err());
    }

    #[test]
    fn a_menu_is_a_popup_at_its_offset_and_goes_before_its_parent() {
        let mut b = bridge_with_surface();
        b.pair(4, Kind::Toplevel(Toplevel::default())).unwrap();
        feed_x(
            &mut b,
            Writer::new(3, op("wl_compositor", "create_surface"))
                .uint(8)
                .finish(),
            vec![],
        );
        take_up(&mut b);
        // The menu's surface (Xwayland 8, upstream 12) as a popup of 4
        // (xdg_surface 10): its xdg_surface 13, positioner 14, popup 15.
        b.pair(
            8,
            Kind::Popup {
                parent: 4,
                x: 40,
                y: 60,
                width: 160,
                height: 120,
            },
        )
        .unwrap();
        let up = take_up(&mut b);
        let anchor = up
            .iter()
            .find(|m| m.1 == op("xdg_positioner", "set_anchor_rect") && m.0 == 14)
            .unwrap();
        assert_eq!(
            anchor.2,
            [40u32, 60, 1, 1]
                .iter()
                .flat_map(|v| v.to_ne_bytes())
                .collect::<Vec<u8>>()
        );
        let popup = up
            .iter()
            .find(|m| m.0 == 13 && m.1 == op("xdg_surface", "get_popup"))
            .unwrap();
        assert_eq!(
            &popup.2[4..8],
            &10u32.to_ne_bytes(),
            "the parent's xdg_surface"
        );
        // The parent's window goes: the popup goes first.
        b.unpair(4);
        let up = take_up(&mut b);
        assert_eq!(
            up.iter().map(|m| (m.0, m.1)).take(4).collect::<Vec<_>>(),
            vec![
                (15, op("xdg_popup", "destroy")),
                (13, op("xdg_surface", "destroy")),
                (12, op("wl_surface", "attach")),
                (12, op("wl_surface", "commit"))
            ]
        );
        // A popup whose parent has no role is not made.
        b.pair(
            8,
            Kind::Popup {
                parent: 4,
                x: 0,
                y: 0,
                width: 1,
                height: 1,
            },
        )
        .unwrap();
        assert!(take_up(&mut b).is_empty());
        assert!(!b.shows(8));
    }

    /// The bridge with its clipboard: seat (upstream 10), data device
    /// manager (11), data device (12); Xwayland's keyboard (X 9, upstream
    /// 14) entered its surface with serial 55.
    fn bridge_with_clipboard() -> Xwl {
        let mut b = bridge_with_surface();
        feed_up(
            &mut b,
            Writer::new(2, ev("wl_registry", "global"))
                .uint(8)
                .string("wl_seat")
                .uint(7)
                .finish(),
        );
        feed_up(
            &mut b,
            Writer::new(2, ev("wl_registry", "global"))
                .uint(9)
                .string("wl_data_device_manager")
                .uint(3)
                .finish(),
        );
        let up = take_up(&mut b);
        assert_eq!(
            *up.last().unwrap(),
            (
                11,
                op("wl_data_device_manager", "get_data_device"),
                [12u32.to_ne_bytes(), 10u32.to_ne_bytes()].concat()
            )
        );
        feed_x(
            &mut b,
            Writer::new(2, op("wl_registry", "bind"))
                .uint(8)
                .string("wl_seat")
                .uint(5)
                .uint(8)
                .finish(),
            vec![],
        );
        feed_x(
            &mut b,
            Writer::new(8, op("wl_seat", "get_keyboard"))
                .uint(9)
                .finish(),
            vec![],
        );
        take_up(&mut b);
        feed_up(
            &mut b,
            Writer::new(14, ev("wl_keyboard", "enter"))
                .uint(55)
                .uint(6)
                .array(&[])
                .finish(),
        );
        let x = msgs(&std::mem::take(&mut b.to_x));
        assert_eq!(x[0].0, 9, "Xwayland's keyboard");
        assert_eq!(
            &x[0].2[4..8],
            &4u32.to_ne_bytes(),
            "its surface, renumbered"
        );
        b.to_up_fds.clear();
        b
    }

    #[test]
    fn the_hosts_selection_comes_to_the_window_manager_and_the_x_one_goes_to_the_host() {
        let mut b = bridge_with_clipboard();
        let offer = 0xff00_0001u32;
        feed_up(
            &mut b,
            Writer::new(12, ev("wl_data_device", "data_offer"))
                .uint(offer)
                .finish(),
        );
        feed_up(
            &mut b,
            Writer::new(offer, ev("wl_data_offer", "offer"))
                .string("text/plain")
                .finish(),
        );
        feed_up(
            &mut b,
            Writer::new(offer, ev("wl_data_offer", "offer"))
                .string("image/png")
                .finish(),
        );
        feed_up(
            &mut b,
            Writer::new(12, ev("wl_data_device", "selection"))
                .uint(offer)
                .finish(),
        );
        assert_eq!(
            b.wm.pop_front(),
            Some(WmEvent::Selection {
                mimes: vec!["text/plain".into(), "image/png".into()]
            })
        );
        assert!(
            b.to_x.is_empty(),
            "Xwayland hears nothing of the bridge's offers"
        );
        // An X app asks for it: a pipe, its write end to the host.
        let r = b.receive("text/plain").unwrap();
        assert!(r.is_some());
        let up = take_up(&mut b);
        assert_eq!((up[0].0, up[0].1), (offer, op("wl_data_offer", "receive")));
        assert_eq!(b.to_up_fds.len(), 1);
        assert!(
            b.receive("text/html").unwrap().is_none(),
            "a type the host does not offer"
        );
        // The X selection offered to the host with Xwayland's last serial.
        b.set_selection(&["text/plain;charset=utf-8".into()])
            .unwrap();
        let up = take_up(&mut b);
        assert_eq!(
            up[0],
            (
                11,
                op("wl_data_device_manager", "create_data_source"),
                15u32.to_ne_bytes().to_vec()
            )
        );
        assert_eq!((up[1].0, up[1].1), (15, op("wl_data_source", "offer")));
        assert_eq!(
            up[2],
            (
                12,
                op("wl_data_device", "set_selection"),
                [15u32.to_ne_bytes(), 55u32.to_ne_bytes()].concat()
            )
        );
        // The host wants it: the request and its pipe for the window manager.
        let m = Writer::new(15, ev("wl_data_source", "send"))
            .string("text/plain;charset=utf-8")
            .finish();
        let mut q: VecDeque<OwnedFd> = vec![fd()].into();
        assert_eq!(b.events(&m, &mut q).unwrap(), m.len());
        assert_eq!(b.sends.len(), 1);
        // The compositor hands the bridge's own selection back: no echo to X.
        feed_up(
            &mut b,
            Writer::new(12, ev("wl_data_device", "data_offer"))
                .uint(0xff00_0002)
                .finish(),
        );
        feed_up(
            &mut b,
            Writer::new(12, ev("wl_data_device", "selection"))
                .uint(0xff00_0002)
                .finish(),
        );
        assert!(b.wm.is_empty());
        // Someone else copies on the host: the source is cancelled, the new
        // selection reaches the window manager.
        feed_up(
            &mut b,
            Writer::new(15, ev("wl_data_source", "cancelled")).finish(),
        );
        assert_eq!(
            take_up(&mut b).last().unwrap().1,
            op("wl_data_source", "destroy")
        );
        feed_up(
            &mut b,
            Writer::new(12, ev("wl_data_device", "selection"))
                .uint(0)
                .finish(),
        );
        assert_eq!(b.wm.pop_front(), Some(WmEvent::Selection { mimes: vec![] }));
    }

    #[test]
    fn a_compositor_without_a_data_device_manager_gets_no_selection() {
        let mut b = bridge_with_surface();
        b.set_selection(&["text/plain".into()]).unwrap();
        assert!(take_up(&mut b).is_empty());
        assert!(b.receive("text/plain").unwrap().is_none());
    }

    #[test]
    fn events_for_roles_the_bridge_already_destroyed_get_no_answer() {
        let mut b = bridge_with_surface();
        b.pair(4, Kind::Toplevel(Toplevel::default())).unwrap();
        take_up(&mut b);
        // The window goes before the compositor's first configure arrives.
        b.unpair(4);
        take_up(&mut b);
        feed_up(
            &mut b,
            Writer::new(11, ev("xdg_toplevel", "configure"))
                .uint(9)
                .uint(9)
                .array(&[])
                .finish(),
        );
        feed_up(
            &mut b,
            Writer::new(10, ev("xdg_surface", "configure"))
                .uint(3)
                .finish(),
        );
        feed_up(
            &mut b,
            Writer::new(11, ev("xdg_toplevel", "close")).finish(),
        );
        assert!(
            take_up(&mut b).is_empty(),
            "a request on a destroyed object"
        );
        assert!(b.wm.is_empty());
        // Its delete_ids come and free the ids.
        for id in [11u32, 10] {
            feed_up(
                &mut b,
                Writer::new(1, ev("wl_display", "delete_id"))
                    .uint(id)
                    .finish(),
            );
        }
        assert!(b.to_x.is_empty());
    }

    /// Size hints whose maximum is below their minimum (which some
    /// compositors refuse, cutting the connection) lose their maximum.
    #[test]
    fn a_maximum_below_the_minimum_is_dropped() {
        let mut b = bridge_with_surface();
        let t = Toplevel {
            min: (400, 300),
            max: (200, 600),
            ..Toplevel::default()
        };
        b.pair(4, Kind::Toplevel(t)).unwrap();
        let up = take_up(&mut b);
        let size = |name| {
            up.iter()
                .find(|m| (m.0, m.1) == (11, op("xdg_toplevel", name)))
                .unwrap()
                .2
                .clone()
        };
        assert_eq!(
            size("set_min_size"),
            [400u32.to_ne_bytes(), 300u32.to_ne_bytes()].concat()
        );
        assert_eq!(
            size("set_max_size"),
            [0u32.to_ne_bytes(), 0u32.to_ne_bytes()].concat()
        );
    }
}

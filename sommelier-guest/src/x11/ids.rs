//! Object ids between Xwayland's connection and the upstream one.
//!
//! The X11 bridge speaks for Xwayland upstream and adds objects of its own
//! (roles for Xwayland's surfaces, a registry, `xdg_wm_base`), so the two
//! connections cannot share one id space: a compositor takes a client's new
//! id only if it is the next one or one it has freed (libwayland-server's
//! `wl_map_insert_at`). Client-made ids are translated; ids the server makes
//! (≥ `0xff00_0000`) are the same on both sides.

use std::collections::{BTreeSet, HashMap, HashSet};

/// The first id a server allocates.
pub const SERVER_BASE: u32 = 0xff00_0000;

/// Whose an upstream object is.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Owner {
    /// Xwayland's object with this id on its own connection.
    Xwayland(u32),
    /// The bridge's own (injected) object.
    Bridge,
}

/// Two-way map of client ids and the upstream id allocator.
#[derive(Debug)]
pub struct IdMap {
    x2u: HashMap<u32, u32>,
    u2x: HashMap<u32, Owner>,
    free: BTreeSet<u32>,
    next: u32,
    /// Server-made objects that belong to the bridge (offers on its data
    /// device).
    server_own: HashSet<u32>,
}

/// Why an id could not be mapped.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum IdError {
    /// Xwayland named an id it never created (or one still being deleted).
    #[error("unknown object {0}")]
    Unknown(u32),
    /// Xwayland created an id that is still live.
    #[error("object {0} created twice")]
    Reused(u32),
    /// Every upstream client id is in use.
    #[error("no upstream id left")]
    Exhausted,
}

impl Default for IdMap {
    fn default() -> Self {
        Self::new()
    }
}

impl IdMap {
    /// `wl_display` (1) on both sides, nothing else.
    pub fn new() -> Self {
        let mut m = IdMap {
            x2u: HashMap::new(),
            u2x: HashMap::new(),
            free: BTreeSet::new(),
            next: 2,
            server_own: HashSet::new(),
        };
        m.x2u.insert(1, 1);
        m.u2x.insert(1, Owner::Xwayland(1));
        m
    }

    fn alloc(&mut self) -> Result<u32, IdError> {
        if let Some(id) = self.free.pop_first() {
            return Ok(id);
        }
        if self.next >= SERVER_BASE {
            return Err(IdError::Exhausted);
        }
        self.next += 1;
        Ok(self.next - 1)
    }

    /// The upstream id for a new object Xwayland made with id `x`.
    pub fn create(&mut self, x: u32) -> Result<u32, IdError> {
        if x >= SERVER_BASE {
            return Err(IdError::Unknown(x));
        }
        if self.x2u.contains_key(&x) {
            return Err(IdError::Reused(x));
        }
        let u = self.alloc()?;
        self.x2u.insert(x, u);
        self.u2x.insert(u, Owner::Xwayland(x));
        Ok(u)
    }

    /// A new upstream id for an object of the bridge's own.
    pub fn create_own(&mut self) -> Result<u32, IdError> {
        let u = self.alloc()?;
        self.u2x.insert(u, Owner::Bridge);
        Ok(u)
    }

    /// Upstream id of Xwayland's `x` (server ids and null unchanged).
    pub fn up(&self, x: u32) -> Result<u32, IdError> {
        if x == 0 || x >= SERVER_BASE {
            return Ok(x);
        }
        self.x2u.get(&x).copied().ok_or(IdError::Unknown(x))
    }

    /// Who owns upstream id `u` (server ids: Xwayland's, unchanged, unless
    /// the bridge claimed them; null: Xwayland's).
    pub fn down(&self, u: u32) -> Option<Owner> {
        if self.server_own.contains(&u) {
            return Some(Owner::Bridge);
        }
        if u == 0 || u >= SERVER_BASE {
            return Some(Owner::Xwayland(u));
        }
        self.u2x.get(&u).copied()
    }

    /// The server deleted upstream id `u` (`wl_display.delete_id`): it is
    /// free again. Returns whose it was.
    pub fn delete(&mut self, u: u32) -> Option<Owner> {
        if u <= 1 || u >= SERVER_BASE {
            return None;
        }
        let owner = self.u2x.remove(&u)?;
        if let Owner::Xwayland(x) = owner {
            self.x2u.remove(&x);
        }
        self.free.insert(u);
        Some(owner)
    }

    /// A server-made object (`u` ≥ [`SERVER_BASE`]) that an event on one of
    /// the bridge's objects created: the bridge's, not Xwayland's.
    pub fn claim_server(&mut self, u: u32) -> bool {
        u >= SERVER_BASE && self.server_own.insert(u)
    }

    /// The bridge destroyed its server-made object `u`.
    pub fn release_server(&mut self, u: u32) {
        self.server_own.remove(&u);
    }

    /// Live objects on the upstream side.
    pub fn len(&self) -> usize {
        self.u2x.len()
    }

    /// Never: `wl_display` is always there.
    pub fn is_empty(&self) -> bool {
        false
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn upstream_ids_stay_dense_around_the_bridges_own() {
        let mut m = IdMap::new();
        assert_eq!(m.create(2), Ok(2));
        assert_eq!(m.create_own(), Ok(3));
        // Xwayland's next id is 3: upstream it is 4, the next free one.
        assert_eq!(m.create(3), Ok(4));
        assert_eq!(m.up(3), Ok(4));
        assert_eq!(m.down(4), Some(Owner::Xwayland(3)));
        assert_eq!(m.down(3), Some(Owner::Bridge));
        assert_eq!(m.create(3), Err(IdError::Reused(3)));
        // Deleted upstream ids are taken again, lowest first.
        assert_eq!(m.delete(3), Some(Owner::Bridge));
        assert_eq!(m.delete(2), Some(Owner::Xwayland(2)));
        assert_eq!(m.up(2), Err(IdError::Unknown(2)));
        assert_eq!(m.create(7), Ok(2));
        assert_eq!(m.create_own(), Ok(3));
        assert_eq!(m.create_own(), Ok(5));
        // Server ids and null pass unchanged; display is never freed.
        assert_eq!(m.up(0xff00_0001), Ok(0xff00_0001));
        assert_eq!(m.up(0), Ok(0));
        assert_eq!(m.delete(1), None);
        assert_eq!(m.delete(99), None);
        assert_eq!(m.create(SERVER_BASE), Err(IdError::Unknown(SERVER_BASE)));
        // A server object the bridge's data device made is the bridge's.
        assert!(m.claim_server(0xff00_0002));
        assert!(!m.claim_server(7));
        assert_eq!(m.down(0xff00_0002), Some(Owner::Bridge));
        m.release_server(0xff00_0002);
        assert_eq!(m.down(0xff00_0002), Some(Owner::Xwayland(0xff00_0002)));
    }
}

//! Per-connection object table: id → (interface, version, state), for the
//! client's ids (1 ..= 0xfeffffff) and the server's (≥ 0xff000000).

use crate::protocol::IfaceId;
use crate::wire::SERVER_ID_START;

/// Whether an object can still receive requests.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum State {
    /// Usable.
    Live,
    /// Destroyed; events may still arrive until the server acknowledges it.
    Zombie,
}

/// One tracked object.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Object {
    /// Its interface.
    pub iface: IfaceId,
    /// The version it was created with.
    pub version: u32,
    /// Live or destroyed.
    pub state: State,
}

/// Errors creating an object.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum ObjectError {
    /// The id is in use or outside the creator's range.
    #[error("invalid new id {0}")]
    BadNewId(u32),
    /// The client has as many objects as the policy allows.
    #[error("too many objects")]
    TooMany,
}

/// The table.
#[derive(Debug)]
pub struct Objects {
    client: Vec<Option<Object>>,
    server: Vec<Option<Object>>,
    count: usize,
    max: usize,
}

impl Objects {
    /// A table holding `wl_display` as object 1, limited to `max` objects.
    pub fn new(display: IfaceId, max: usize) -> Self {
        let mut o = Objects {
            client: Vec::new(),
            server: Vec::new(),
            count: 0,
            max,
        };
        o.client.push(Some(Object {
            iface: display,
            version: 1,
            state: State::Live,
        }));
        o.count = 1;
        o
    }

    fn slot(&self, id: u32) -> Option<&Option<Object>> {
        if id >= SERVER_ID_START {
            self.server.get((id - SERVER_ID_START) as usize)
        } else {
            self.client.get((id as usize).checked_sub(1)?)
        }
    }

    fn slot_mut(&mut self, id: u32) -> Option<&mut Option<Object>> {
        if id >= SERVER_ID_START {
            self.server.get_mut((id - SERVER_ID_START) as usize)
        } else {
            self.client.get_mut((id as usize).checked_sub(1)?)
        }
    }

    /// The object with `id`, live or zombie.
    pub fn get(&self, id: u32) -> Option<Object> {
        *self.slot(id)?
    }

    /// The object with `id` if it is live.
    pub fn live(&self, id: u32) -> Option<Object> {
        self.get(id).filter(|o| o.state == State::Live)
    }

    /// Number of tracked objects.
    pub fn len(&self) -> usize {
        self.count
    }

    /// Whether only `wl_display` is left (never true in practice).
    pub fn is_empty(&self) -> bool {
        self.count == 0
    }

    /// Creates `id` for the client: it must be in the client's range, free,
    /// and at most one past the table (libwayland's rule, which also keeps
    /// this table dense); the table never grows past the object limit.
    pub fn create_client(
        &mut self,
        id: u32,
        iface: IfaceId,
        version: u32,
    ) -> Result<(), ObjectError> {
        if id == 0 || id >= SERVER_ID_START {
            return Err(ObjectError::BadNewId(id));
        }
        let idx = (id - 1) as usize;
        let obj = Some(Object {
            iface,
            version,
            state: State::Live,
        });
        match idx.cmp(&self.client.len()) {
            std::cmp::Ordering::Less if self.client[idx].is_none() => {
                self.bump()?;
                self.client[idx] = obj;
            }
            std::cmp::Ordering::Equal => {
                self.grow(self.client.len())?;
                self.client.push(obj);
            }
            _ => return Err(ObjectError::BadNewId(id)),
        }
        Ok(())
    }

    /// Creates `id` for the server. A zombie in the slot is replaced: the
    /// server reuses its ids without telling the client.
    pub fn create_server(
        &mut self,
        id: u32,
        iface: IfaceId,
        version: u32,
    ) -> Result<(), ObjectError> {
        if id < SERVER_ID_START {
            return Err(ObjectError::BadNewId(id));
        }
        let idx = (id - SERVER_ID_START) as usize;
        let obj = Some(Object {
            iface,
            version,
            state: State::Live,
        });
        match idx.cmp(&self.server.len()) {
            std::cmp::Ordering::Less => match self.server[idx] {
                Some(o) if o.state == State::Live => return Err(ObjectError::BadNewId(id)),
                Some(_) => self.server[idx] = obj,
                None => {
                    self.bump()?;
                    self.server[idx] = obj;
                }
            },
            std::cmp::Ordering::Equal => {
                self.grow(self.server.len())?;
                self.server.push(obj);
            }
            std::cmp::Ordering::Greater => return Err(ObjectError::BadNewId(id)),
        }
        Ok(())
    }

    /// [`Objects::bump`] for an id one past a table of `len` entries: the
    /// table itself is bounded by the object limit too, so ids freed below
    /// cannot be traded for ever more slots.
    fn grow(&mut self, len: usize) -> Result<(), ObjectError> {
        if len >= self.max {
            return Err(ObjectError::TooMany);
        }
        self.bump()
    }

    fn bump(&mut self) -> Result<(), ObjectError> {
        if self.count >= self.max {
            return Err(ObjectError::TooMany);
        }
        self.count += 1;
        Ok(())
    }

    /// Marks `id` destroyed: it takes no more requests, but events for it are
    /// still parsed until [`Objects::remove`].
    pub fn kill(&mut self, id: u32) {
        if let Some(Some(o)) = self.slot_mut(id) {
            o.state = State::Zombie;
        }
    }

    /// Forgets `id` (`wl_display.delete_id`). Returns whether it existed.
    pub fn remove(&mut self, id: u32) -> bool {
        match self.slot_mut(id) {
            Some(s @ Some(_)) => {
                *s = None;
                self.count -= 1;
                true
            }
            _ => false,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn client_ids_are_dense_and_fresh() {
        let mut o = Objects::new(0, 10);
        assert!(o.live(1).is_some());
        assert_eq!(o.create_client(1, 3, 1), Err(ObjectError::BadNewId(1)));
        assert_eq!(o.create_client(3, 3, 1), Err(ObjectError::BadNewId(3)));
        o.create_client(2, 3, 1).unwrap();
        o.create_client(3, 4, 2).unwrap();
        assert_eq!(o.live(3).unwrap().version, 2);
        o.kill(2);
        assert!(o.live(2).is_none());
        assert_eq!(o.get(2).unwrap().state, State::Zombie);
        // A zombie's id is not free until the server deletes it.
        assert_eq!(o.create_client(2, 3, 1), Err(ObjectError::BadNewId(2)));
        assert!(o.remove(2));
        assert!(!o.remove(2));
        o.create_client(2, 5, 1).unwrap();
        assert_eq!(o.len(), 3);
        assert_eq!(o.create_client(0, 3, 1), Err(ObjectError::BadNewId(0)));
        assert_eq!(
            o.create_client(SERVER_ID_START, 3, 1),
            Err(ObjectError::BadNewId(SERVER_ID_START))
        );
    }

    #[test]
    fn server_ids_and_limit() {
        let mut o = Objects::new(0, 3);
        o.create_server(SERVER_ID_START, 1, 1).unwrap();
        assert_eq!(
            o.create_server(SERVER_ID_START, 1, 1),
            Err(ObjectError::BadNewId(SERVER_ID_START))
        );
        o.kill(SERVER_ID_START);
        o.create_server(SERVER_ID_START, 2, 1).unwrap();
        assert_eq!(o.create_server(5, 1, 1), Err(ObjectError::BadNewId(5)));
        o.create_client(2, 1, 1).unwrap();
        assert_eq!(o.create_client(3, 1, 1), Err(ObjectError::TooMany));
        assert_eq!(
            o.create_server(SERVER_ID_START + 1, 1, 1),
            Err(ObjectError::TooMany)
        );
    }

    /// Review finding 5: a client that creates one id past its table, has
    /// it deleted and does it again grew the table without bound while its
    /// live count stayed at two. The table is now as long as the object
    /// limit at most (libwayland reuses freed ids, so its table never grows
    /// past its peak object count).
    #[test]
    fn freed_holes_do_not_grow_the_table() {
        let mut o = Objects::new(0, 8);
        let mut refused = None;
        for id in 2..10_000u32 {
            if let Err(e) = o.create_client(id, 3, 1) {
                refused = Some((id, e));
                break;
            }
            o.kill(id);
            assert!(o.remove(id));
        }
        assert_eq!(refused, Some((9, ObjectError::TooMany)));
        assert!(o.client.len() <= 8);
        // The freed ids below stay usable.
        o.create_client(5, 3, 1).unwrap();
        // The same for the server's side.
        let mut o = Objects::new(0, 8);
        let mut n = 0;
        for i in 0..10_000u32 {
            if o.create_server(SERVER_ID_START + i, 3, 1).is_err() {
                break;
            }
            o.kill(SERVER_ID_START + i);
            o.remove(SERVER_ID_START + i);
            n += 1;
        }
        assert_eq!(n, 8);
        assert!(o.server.len() <= 8);
    }
}

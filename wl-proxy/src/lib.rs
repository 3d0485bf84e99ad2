//! wl-proxy: a validating Wayland proxy.
//!
//! Every message in both directions is parsed against the signatures of every
//! interface in the wayland-rs protocol crates, checked against the objects
//! the connection has created, and passed through the [`policy::Policy`]
//! before it reaches the compositor (requests) or the client (events). A
//! client that breaks a rule gets a `wl_display.error` and is disconnected;
//! nothing it sends reaches the compositor after that.
#![deny(missing_docs)]

pub mod conn;
pub mod fuzzing;
pub mod objects;
pub mod policy;
pub mod protocol;
pub mod proxy;
pub mod session;
pub mod wire;

pub use policy::Policy;
pub use proxy::{Config, Handle, Proxy, ProxyError};

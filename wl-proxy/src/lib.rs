//! wl-proxy: a validating Wayland proxy.
//!
//! Every message in both directions is parsed against the signatures of every
//! interface in the wayland-rs protocol crates, checked against the objects
//! the connection has created, and passed through the [`policy::Policy`]
//! before it reaches the compositor (requests) or the client (events). A
//! client that breaks a rule gets a `wl_display.error` and is disconnected;
//! nothing it sends reaches the compositor after that.
//!
//! ```no_run
//! use std::sync::Arc;
//! use wl_proxy::{Config, Policy, Proxy};
//!
//! let mut proxy = Proxy::new(Config {
//!     policy: Arc::new(Policy::default()),
//!     tag: Some("work".into()),
//!     upstream: "/run/user/1000/wayland-0".into(),
//! })?;
//! let handle = proxy.handle(); // Send + Clone: add clients, stop
//! std::thread::Builder::new().name("wl-proxy".into()).spawn(move || proxy.run())?;
//! let (ours, _theirs) = std::os::unix::net::UnixStream::pair()?;
//! handle.add_client(ours)?; // `_theirs` is the client's end
//! # Ok::<(), Box<dyn std::error::Error>>(())
//! ```
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

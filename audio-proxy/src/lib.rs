//! A validating PulseAudio-protocol proxy for app VMs.
//!
//! Each VM gets one proxy (its own process, `audio-proxy`, started by
//! vmapp; or an embedder's thread through [`Proxy`]). The guest's audio
//! clients reach it over vsock; for each connection it opens one to the
//! host's sound server (PulseAudio, or PipeWire's pipewire-pulse) and
//! passes every packet through the VM's policy ([`policy`]): playback of
//! its own streams, recording only in `full` mode, names tagged with the
//! VM's label, nothing that touches other clients, devices or the server.
#![deny(missing_docs)]

pub mod client;
pub mod policy;
pub mod proxy;
pub mod wire;

#[doc(hidden)]
pub mod fuzzing;

pub use policy::{Limits, Mode, Session};
pub use proxy::{Config, Proxy, ProxyError};

use std::path::PathBuf;

/// The host's sound server: `$PULSE_SERVER` when it names a Unix socket
/// (`unix:PATH` or a path), else `$XDG_RUNTIME_DIR/pulse/native`.
pub fn default_server() -> Option<PathBuf> {
    if let Ok(s) = std::env::var("PULSE_SERVER") {
        // The first entry that is a local socket.
        for e in s.split_whitespace() {
            let p = e.strip_prefix("unix:").unwrap_or(e);
            if p.starts_with('/') {
                return Some(PathBuf::from(p));
            }
        }
    }
    std::env::var_os("XDG_RUNTIME_DIR").map(|d| PathBuf::from(d).join("pulse/native"))
}

/// The host user's PulseAudio cookie (`$PULSE_COOKIE`, else
/// `~/.config/pulse/cookie`), or zeros when there is none (PipeWire and a
/// PulseAudio that trusts its own uid need none). The guest's own cookie
/// never reaches the server.
pub fn host_cookie() -> Vec<u8> {
    let path = std::env::var_os("PULSE_COOKIE")
        .map(PathBuf::from)
        .or_else(|| {
            std::env::var_os("XDG_CONFIG_HOME")
                .map(PathBuf::from)
                .or_else(|| std::env::var_os("HOME").map(|h| PathBuf::from(h).join(".config")))
                .map(|c| c.join("pulse/cookie"))
        });
    path.and_then(|p| std::fs::read(p).ok())
        .filter(|c| c.len() == policy::COOKIE_LEN)
        .unwrap_or_else(|| vec![0; policy::COOKIE_LEN])
}

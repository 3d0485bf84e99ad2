//! Shared between the guest init (`sommelier-guest`), vmapp and the
//! benchmarks: the agent protocol spoken over vsock, AF_VSOCK sockets, the guest's
//! network over vsock, and per-thread CPU accounting for the benchmarks.
#![deny(missing_docs)]

pub mod audio;
pub mod desktop;
pub mod net;
pub mod procstat;
pub mod proto;
pub mod relay;
pub mod vsock_socket;
pub mod x11;

/// What the default guest's busybox calls its wget applet: renamed (see
/// vmapp's image builder) so that the shell runs `/usr/bin/wget`, the
/// guest init's own, which survives `-T`.
pub const BUSYBOX_WGET: &str = "wgez";

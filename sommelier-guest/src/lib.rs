//! Shared between the guest init (`sommelier-guest`), vmapp and the
//! benchmarks: the agent protocol spoken over vsock, and AF_VSOCK sockets.
#![deny(missing_docs)]

pub mod proto;
pub mod relay;
pub mod vsock_socket;

//! Shared between the guest init (`sommelier-guest`), vmapp and the
//! benchmarks: the agent protocol spoken over vsock, AF_VSOCK sockets, and the
//! guest's network over vsock.
#![deny(missing_docs)]

pub mod net;
pub mod proto;
pub mod relay;
pub mod vsock_socket;

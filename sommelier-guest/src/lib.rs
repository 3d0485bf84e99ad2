//! Shared between the guest init (`sommelier-guest`) and vmapp: the agent
//! protocol spoken over vsock.
#![deny(missing_docs)]

pub mod proto;

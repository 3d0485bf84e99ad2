//! The host's side of an app VM's desktop integration (issue 31, first
//! part): what a guest's request may become before anything reaches the
//! user's desktop. Requests arrive in the wire format of
//! [`sommelier_guest::desktop`]; this crate decides.
//!
//! - [`policy`]: the VM's switches, notification text made plain and
//!   bounded, links checked, the flood limit, the audit log's lines;
//! - [`serve`]: one guest stream served: frames read, requests checked and
//!   carried out by the host's desktop (a [`serve::Desktop`]), answered and
//!   audited.
#![deny(missing_docs)]

#[doc(hidden)]
pub mod fuzz;
pub mod policy;
pub mod serve;

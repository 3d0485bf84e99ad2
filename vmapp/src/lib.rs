//! `vmapp`: runs a desktop application isolated in its own microVM, built on
//! the embeddable [`vmm`] library. This crate holds what is vmapp's own and
//! not an embedder's: the command line (`src/main.rs`) and the default guest
//! ([`image`]: a Debian kernel plus an initramfs whose `/init` is
//! `sommelier-guest`).
#![deny(missing_docs)]

pub mod audio;
pub mod control;
pub mod desktop;
pub mod image;
pub mod jail;
pub mod net;
pub mod profile;
pub mod runtime;
pub mod stop;

//! The integration tests that boot guests, in one test binary so that the
//! test harness keeps every core busy: each test is a run of the emulated
//! KVM host (one core each) or of KVM directly. Run through
//! `cargo xtask test`, which builds `sommelier-guest` first; one file with
//! `cargo xtask test --test vm -- jail::`.

mod common;

mod audio;
mod block;
mod boot;
mod fs;
mod hostile;
mod jail;
mod net;
mod vsock;
mod wayland;

//! The guest's X11 bridge: Xwayland's Wayland requests, the compositor's
//! events and the window manager's pairings, renumbered and given roles.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    let _ = sommelier_guest::x11::fuzz::bridge(data);
});

//! The guest Wayland relay's framing, object tracking and registry filter,
//! both directions.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    let _ = sommelier_guest::relay::session::fuzz(data);
});

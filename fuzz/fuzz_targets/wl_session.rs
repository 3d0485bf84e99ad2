//! Wayland wire parser + per-client validator (wl-proxy), both directions.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    wl_proxy::fuzzing::run(data);
});

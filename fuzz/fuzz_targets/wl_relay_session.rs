//! A whole guest relay session (pools, buffers, host blobs, commits, pipes)
//! against a stand-in for the virtio-gpu host side.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    let _ = sommelier_guest::relay::fuzz::session(data);
});

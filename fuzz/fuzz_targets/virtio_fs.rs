//! Guest memory holding a split virtqueue of FUSE requests, served by
//! virtio-fs's request path (transport screen, `Share`, PassthroughFs) over a
//! temporary directory, read-write or read-only.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    let _ = devices::fuzzing::fs_queue(data);
});

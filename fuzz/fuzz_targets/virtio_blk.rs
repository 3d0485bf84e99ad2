//! Guest memory holding a split virtqueue, served by virtio-blk's request path.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    let _ = devices::fuzzing::blk_queue(data);
});

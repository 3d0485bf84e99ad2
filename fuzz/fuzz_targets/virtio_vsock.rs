//! Guest memory holding virtio-vsock tx and rx queues, served by the muxer.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    let _ = devices::fuzzing::vsock_queues(data);
});

//! virtio-gpu control-queue command sequences over real guest memory,
//! served by the device's backend (rutabaga cross-domain).
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    let _ = devices::fuzzing::gpu_commands(data);
});

//! virtio-mmio register sequences against the transport (status state
//! machine, feature negotiation, queue setup, config space, SHM, notify).
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    let _ = devices::fuzzing::mmio(data);
});

//! ACPI tables, DSDT and the guest memory map from fuzzed VM configurations.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    let _ = vmm::fuzzing::acpi_config(data);
});

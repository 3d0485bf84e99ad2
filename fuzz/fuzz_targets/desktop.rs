//! Desktop integration's frames (guest requests, host answers) and the
//! broker's policy over each request.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    let _ = desktop_broker::fuzz::frames(data);
});

//! The audio proxy's framing, decoder and policy: a hostile guest's packets
//! with the server's answers interleaved.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    audio_proxy::fuzzing::session(data);
});

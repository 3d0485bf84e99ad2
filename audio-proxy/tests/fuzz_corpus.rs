//! Replays the `audio_session` fuzz corpus and seeds through the target's
//! entry point, and checks the seeds on disk are today's.

use std::path::Path;

#[test]
fn audio_session_corpus_replays_and_seeds_are_current() {
    let fuzz = Path::new(env!("CARGO_MANIFEST_DIR")).join("../fuzz");
    let mut n = 0;
    for dir in ["corpus/audio_session", "seeds/audio_session"] {
        for e in std::fs::read_dir(fuzz.join(dir)).unwrap() {
            audio_proxy::fuzzing::session(&std::fs::read(e.unwrap().path()).unwrap());
            n += 1;
        }
    }
    assert!(n >= 3);
    for (name, bytes) in audio_proxy::fuzzing::seeds() {
        let on_disk = std::fs::read(fuzz.join("seeds/audio_session").join(name)).unwrap();
        assert_eq!(on_disk, bytes, "{name}: rerun the fuzz_seeds example");
    }
}

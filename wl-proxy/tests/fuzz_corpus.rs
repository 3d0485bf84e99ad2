//! Replays the `wl_session` fuzz corpus (what the fuzzer kept, minimised)
//! and its hand-written seeds through the same entry point as the fuzz target.

use std::path::Path;

#[test]
fn wl_session_corpus_replays() {
    let fuzz = Path::new(env!("CARGO_MANIFEST_DIR")).join("../fuzz");
    let mut n = 0;
    let mut accepted = 0;
    for dir in ["corpus/wl_session", "seeds/wl_session"] {
        for e in std::fs::read_dir(fuzz.join(dir)).unwrap() {
            let data = std::fs::read(e.unwrap().path()).unwrap();
            accepted += wl_proxy::fuzzing::run(&data).accepted;
            n += 1;
        }
    }
    assert!(n >= 100, "the corpus has only {n} inputs");
    // The corpus reaches the validator, not only the framing.
    assert!(accepted >= 200, "{accepted}");
}

/// Every seed but the malformed one runs without a violation.
#[test]
fn seeds_are_valid_sessions() {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("../fuzz/seeds/wl_session");
    for s in ["toplevel", "shm", "seat", "registry"] {
        let data = std::fs::read(dir.join(s)).unwrap();
        let o = wl_proxy::fuzzing::run(&data);
        let want = if s == "registry" { 1 } else { 0 };
        assert_eq!(o.violations, want, "{s}: {o:?}");
        assert!(o.accepted >= 7, "{s}: {o:?}");
    }
}

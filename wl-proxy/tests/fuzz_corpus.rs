//! Replays the `wl_session` fuzz corpus (seeds and everything the fuzzer
//! kept) through the same entry point as the fuzz target.

use std::path::Path;

#[test]
fn wl_session_corpus_replays() {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("../fuzz/corpus/wl_session");
    let mut n = 0;
    let mut accepted = 0;
    for e in std::fs::read_dir(&dir).unwrap() {
        let data = std::fs::read(e.unwrap().path()).unwrap();
        accepted += wl_proxy::fuzzing::run(&data).accepted;
        n += 1;
    }
    assert!(n >= 5, "corpus at {} has {n} inputs", dir.display());
    // The seeds are valid sessions: most of their messages are accepted.
    assert!(accepted >= 40, "{accepted}");
}

/// Every seed but the malformed one runs without a violation.
#[test]
fn seeds_are_valid_sessions() {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("../fuzz/corpus/wl_session");
    for s in ["toplevel", "shm", "seat", "registry"] {
        let data = std::fs::read(dir.join(format!("seed-{s}"))).unwrap();
        let o = wl_proxy::fuzzing::run(&data);
        let want = if s == "registry" { 1 } else { 0 };
        assert_eq!(o.violations, want, "{s}: {o:?}");
        assert!(o.accepted >= 7, "{s}: {o:?}");
    }
}

//! Replays the `x11_bridge` fuzz corpus and seeds through the fuzz target's
//! entry point: the seed (a window drawn before its role, paired, configured,
//! a menu, closed, unmapped, destroyed) is taken record by record to its end.

use std::path::Path;

#[test]
fn x11_bridge_corpus_replays() {
    let fuzz = Path::new(env!("CARGO_MANIFEST_DIR")).join("../fuzz");
    let mut n = 0;
    for dir in ["corpus", "seeds"] {
        let Ok(rd) = std::fs::read_dir(fuzz.join(dir).join("x11_bridge")) else {
            assert_eq!(dir, "corpus", "the seeds are missing");
            continue;
        };
        for e in rd {
            let p = e.unwrap().path();
            let d = std::fs::read(&p).unwrap();
            let taken = sommelier_guest::x11::fuzz::bridge(&d);
            if p.ends_with("seeds/x11_bridge/window_and_menu") {
                assert_eq!(taken, 19, "every record of the seed is taken");
            }
            n += 1;
        }
    }
    assert!(n >= 1);
}

/// The clipboard seed (seat and data device manager bound, a host
/// selection offered and read, the X selection offered, sent, cancelled) is
/// taken to its end too.
#[test]
fn x11_bridge_clipboard_seed_is_taken_whole() {
    let p = Path::new(env!("CARGO_MANIFEST_DIR")).join("../fuzz/seeds/x11_bridge/clipboard");
    let d = std::fs::read(p).unwrap();
    assert_eq!(sommelier_guest::x11::fuzz::bridge(&d), 14);
}

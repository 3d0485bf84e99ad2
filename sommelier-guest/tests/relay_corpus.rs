//! Replays the `wl_relay` fuzz corpus and seeds through the fuzz target's
//! entry point.

use std::path::Path;

#[test]
fn wl_relay_corpus_replays() {
    let fuzz = Path::new(env!("CARGO_MANIFEST_DIR")).join("../fuzz");
    let mut n = 0;
    for dir in ["corpus", "seeds"] {
        let Ok(rd) = std::fs::read_dir(fuzz.join(dir).join("wl_relay")) else {
            assert_eq!(dir, "corpus", "the seeds are missing");
            continue;
        };
        for e in rd {
            let p = e.unwrap().path();
            let accepted = sommelier_guest::relay::session::fuzz(&std::fs::read(&p).unwrap());
            if p.ends_with("seeds/wl_relay/shm_window") {
                assert_eq!(accepted, 12, "every message of the seed is framed");
            }
            n += 1;
        }
    }
    assert!(n >= 1);
}

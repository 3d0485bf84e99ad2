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

/// The whole-session harness over its corpus and seeds: the window seed (a
/// pool, a buffer, a surface committed) is taken record by record to its
/// end, and a pool that claims more than its file holds is refused (the
/// relay would read past the file: SIGBUS), not mapped.
#[test]
fn wl_relay_session_corpus_replays() {
    let fuzz = Path::new(env!("CARGO_MANIFEST_DIR")).join("../fuzz");
    for dir in ["corpus", "seeds"] {
        let Ok(rd) = std::fs::read_dir(fuzz.join(dir).join("wl_relay_session")) else {
            assert_eq!(dir, "corpus", "the seeds are missing");
            continue;
        };
        for e in rd {
            let p = e.unwrap().path();
            let d = std::fs::read(&p).unwrap();
            let taken = sommelier_guest::relay::fuzz::session(&d);
            if p.ends_with("seeds/wl_relay_session/shm_window") {
                assert_eq!(taken, 8, "every record of the seed is taken");
                // The same window with a pool of 1 MiB in a 64 KiB file.
                let big = d
                    .windows(8)
                    .position(|w| w == [4, 0, 0, 0, 0, 0x10, 0, 0])
                    .expect("create_pool(4, fd, 4096) in the seed");
                let mut bad = d.clone();
                bad[big + 4..big + 8].copy_from_slice(&(1u32 << 20).to_le_bytes());
                let taken = sommelier_guest::relay::fuzz::session(&bad);
                assert!(taken < 8, "a pool bigger than its file was taken");
            }
        }
    }
}

/// A pool made and released within one read of the client's (its buffer
/// and the pool destroyed right away, as Xwayland does with GTK's windows):
/// the SEND that creates it must reach the host before its blob is
/// released, or the host refuses the whole batch ("invalid resource id") and
/// the messages in it are lost.
#[test]
fn a_pool_made_and_released_in_one_read_still_reaches_the_host() {
    use wl_proxy::wire::Writer;
    let fuzz = Path::new(env!("CARGO_MANIFEST_DIR")).join("../fuzz");
    let seed = std::fs::read(fuzz.join("seeds/wl_relay_session/shm_window")).unwrap();
    // The seed's first three records: get_registry, the wl_shm global, bind.
    let mut d = Vec::new();
    let mut rest = &seed[..];
    for _ in 0..3 {
        let n = 3 + usize::from(u16::from_le_bytes([rest[1], rest[2]]));
        d.extend_from_slice(&rest[..n]);
        rest = &rest[n..];
    }
    let msgs = [
        Writer::new(3, 0).uint(4).uint(4096).finish(),
        Writer::new(4, 0)
            .uint(5)
            .uint(0)
            .uint(32)
            .uint(32)
            .uint(128)
            .uint(0)
            .finish(),
        Writer::new(5, 0).finish(),
        Writer::new(4, 1).finish(),
    ]
    .concat();
    d.push(1 << 1);
    d.extend_from_slice(&(msgs.len() as u16).to_le_bytes());
    d.extend_from_slice(&msgs);
    assert_eq!(sommelier_guest::relay::fuzz::session(&d), 4);
}

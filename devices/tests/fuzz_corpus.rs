//! Replays the `virtio_mmio` and `virtio_blk` fuzz corpora and seeds through
//! the same entry points as the fuzz targets.

use std::path::{Path, PathBuf};

fn inputs(target: &str) -> Vec<(PathBuf, Vec<u8>)> {
    let fuzz = Path::new(env!("CARGO_MANIFEST_DIR")).join("../fuzz");
    let mut v = Vec::new();
    for dir in ["corpus", "seeds"] {
        for e in std::fs::read_dir(fuzz.join(dir).join(target)).unwrap() {
            let p = e.unwrap().path();
            v.push((p.clone(), std::fs::read(p).unwrap()));
        }
    }
    v
}

#[test]
fn virtio_mmio_corpus_replays() {
    let all = inputs("virtio_mmio");
    assert!(all.len() >= 2);
    for (p, d) in &all {
        devices::fuzzing::mmio(d);
        // The driver seed ends with a reset (status 0); the refused one too.
        if p.ends_with("seeds/virtio_mmio/driver") {
            assert_eq!(
                devices::fuzzing::mmio(&d[..d.len() - 7]),
                15,
                "DRIVER_OK reached"
            );
        }
    }
}

#[test]
fn virtio_blk_corpus_replays() {
    let all = inputs("virtio_blk");
    assert!(all.len() >= 2);
    for (p, d) in &all {
        let used = devices::fuzzing::blk_queue(d);
        if p.ends_with("seeds/virtio_blk/in_out_flush_getid") {
            assert_eq!(used, (4, 4), "all four requests served by both engines");
        }
        if p.ends_with("seeds/virtio_blk/discard_write_zeroes") {
            assert_eq!(used, (2, 2));
        }
    }
}

#[test]
fn virtio_vsock_corpus_replays() {
    let all = inputs("virtio_vsock");
    assert!(!all.is_empty());
    for (p, d) in &all {
        let (tx, rx) = devices::fuzzing::vsock_queues(d);
        if p.ends_with("seeds/virtio_vsock/request_rw_shutdown") {
            // Six packets taken; the refused REQUEST is answered in rx.
            assert_eq!(tx, 6);
            assert!(rx >= 1);
        }
        if p.ends_with("seeds/virtio_vsock/framed_and_plain") {
            // Five packets taken; in rx the two RESPONSEs, the plain
            // stream's credit update and the framed stream's RST for its
            // length out of range (unframed, it gets a credit update and
            // one more: 5).
            assert_eq!((tx, rx), (5, 4));
        }
    }
}

#[test]
fn virtio_fs_corpus_replays() {
    let all = inputs("virtio_fs");
    assert!(all.len() >= 2);
    for (p, d) in &all {
        let used = devices::fuzzing::fs_queue(d);
        if p.ends_with("seeds/virtio_fs/rw_ops") || p.ends_with("seeds/virtio_fs/ro_ops") {
            assert_eq!(used, 8, "every request answered");
        }
    }
}

#[test]
fn virtio_gpu_corpus_replays() {
    let all = inputs("virtio_gpu");
    assert!(!all.is_empty());
    for (p, d) in &all {
        let used = devices::fuzzing::gpu_commands(d);
        if p.ends_with("seeds/virtio_gpu/session") {
            // All 19 commands are answered; the POLL (parked: its context
            // has no host connection) when CTX_DESTROY releases it.
            assert_eq!(used, 19, "{}", p.display());
        }
    }
}

/// The seeds of what a hostile guest did to rutabaga (a second INIT that
/// hung the context's teardown, read-pipe SENDs that leaked host pipes,
/// host blobs past guest memory) are the files in `fuzz/seeds/virtio_gpu/`
/// (`cargo run -p devices --example gpu_seeds` writes them), and each runs
/// to its end with every command answered, within seconds.
#[test]
fn virtio_gpu_hostile_seeds_are_current_and_every_command_is_answered() {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("../fuzz/seeds/virtio_gpu");
    for (name, input, cmds) in devices::fuzzing::gpu_seeds() {
        let on_disk = std::fs::read(dir.join(name)).unwrap();
        assert!(on_disk == input, "{name}: stale, run the gpu_seeds example");
        let t = std::time::Instant::now();
        let used = devices::fuzzing::gpu_commands(&input);
        assert_eq!(usize::from(used), cmds, "{name}");
        assert!(t.elapsed().as_secs() < 4, "{name}: {:?}", t.elapsed());
    }
}

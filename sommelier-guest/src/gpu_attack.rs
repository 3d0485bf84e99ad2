//! `/init gpu-attack SECS`: a hostile guest program for the boot tests. For
//! SECS seconds it opens cross-domain contexts on the virtio-gpu render node
//! and sends what rutabaga_gfx 0.1.85 mishandled (issue 29, findings 2–4):
//! a second INIT on a running context, read-pipe SENDs with ids the host
//! would not assign, and host blobs created, mapped, touched and kept until
//! the host refuses more, then freed. Prints `@@gpu-rounds=N
//! blobs-max=M` (contexts opened, most blobs held at once).

use std::time::{Duration, Instant};

use sommelier_guest::relay::virtgpu::{header, id_type, xd, Context};

/// One round on a fresh context; returns how many blobs it held at once.
fn round() -> std::io::Result<usize> {
    let ctx = Context::open()?;
    let (q, c) = ctx.rings();
    for channel in [0u32, 1] {
        let mut init = header(xd::INIT, 0, 20);
        for v in [q, c, channel] {
            init.extend_from_slice(&v.to_le_bytes());
        }
        let _ = ctx.submit_raw(&init);
    }
    for i in 0..64u32 {
        let _ = ctx.send(b"x", &[(0x1000 + i, id_type::READ_PIPE)]);
        let _ = ctx.send(b"x", &[(0x8000_0005 + i, id_type::READ_PIPE)]);
    }
    let req = ctx.requirements(1 << 20)?;
    let mut held = Vec::new();
    while held.len() < 4096 {
        match ctx.host_blob(req.blob_id, req.size, true) {
            Ok(bo) => {
                if let Some(m) = &bo.map {
                    m.touch();
                }
                held.push(bo);
            }
            Err(_) => break,
        }
    }
    let most = held.len();
    for bo in held {
        ctx.close(bo);
    }
    Ok(most)
}

pub fn main(args: &[String]) -> i32 {
    let secs: u64 = match args.first().map(|s| s.parse()) {
        Some(Ok(s)) => s,
        _ => {
            eprintln!("usage: /init gpu-attack SECS");
            return 2;
        }
    };
    let end = Instant::now() + Duration::from_secs(secs);
    let (mut rounds, mut most) = (0u32, 0usize);
    while Instant::now() < end {
        match round() {
            Ok(n) => most = most.max(n),
            Err(e) => {
                eprintln!("gpu-attack: {e}");
                std::thread::sleep(Duration::from_millis(200));
            }
        }
        rounds += 1;
    }
    println!("@@gpu-rounds={rounds} blobs-max={most}");
    0
}

//! wl-proxy's parse + validate rate on a frame loop (attach, damage_buffer,
//! frame, commit; buffer release, callback done, delete_id), one core, no I/O.
//! Target: ≥ 1M messages/s. `cargo bench -p benches --bench wl_parse`

use std::io::Write;
use std::os::fd::OwnedFd;

use criterion::{criterion_group, criterion_main, Criterion, Throughput};
use wl_proxy::fuzzing::primed_session;
use wl_proxy::session::Session;
use wl_proxy::wire::Writer;
use wl_proxy::Policy;

fn name(g: &str) -> u32 {
    Policy::default().allow.keys().position(|k| k == g).unwrap() as u32 + 1
}

fn setup() -> Session {
    let mut s = primed_session();
    let bind = |n: &str, v: u32, id: u32| {
        Writer::new(2, 0)
            .uint(name(n))
            .string(n)
            .uint(v)
            .uint(id)
            .finish()
    };
    let mut f = tempfile::tempfile().unwrap();
    f.write_all(&[0; 4096]).unwrap();
    let fd: OwnedFd = f.into();
    s.request(&bind("wl_compositor", 4, 3), &[]).unwrap();
    s.request(&bind("wl_shm", 1, 4), &[]).unwrap();
    s.request(&Writer::new(4, 0).uint(5).uint(4096).finish(), &[fd])
        .unwrap();
    s.request(
        &Writer::new(5, 0)
            .uint(6)
            .uint(0)
            .uint(32)
            .uint(32)
            .uint(128)
            .uint(0)
            .finish(),
        &[],
    )
    .unwrap();
    s.request(&Writer::new(3, 0).uint(7).finish(), &[]).unwrap();
    s
}

fn frame(c: &mut Criterion) {
    let reqs = [
        Writer::new(7, 1).uint(6).uint(0).uint(0).finish(),
        Writer::new(7, 9).uint(0).uint(0).uint(32).uint(32).finish(),
        Writer::new(7, 3).uint(8).finish(),
        Writer::new(7, 6).finish(),
    ];
    let evs = [
        Writer::new(6, 0).finish(),
        Writer::new(8, 0).uint(1234).finish(),
        Writer::new(1, 1).uint(8).finish(),
    ];
    let mut s = setup();
    let mut g = c.benchmark_group("wl-proxy");
    g.throughput(Throughput::Elements((reqs.len() + evs.len()) as u64));
    g.bench_function("parse+validate frame loop", |b| {
        b.iter(|| {
            for m in &reqs {
                s.request(m, &[]).unwrap();
            }
            for m in &evs {
                s.event(m, &mut []).unwrap();
            }
        })
    });
    g.finish();
}

criterion_group!(benches, frame);
criterion_main!(benches);

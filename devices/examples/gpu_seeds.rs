//! Writes the `virtio_gpu` fuzz seeds ([`devices::fuzzing::gpu_seeds`]) to
//! `fuzz/seeds/virtio_gpu/`.

fn main() -> std::io::Result<()> {
    let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../fuzz/seeds/virtio_gpu");
    for (name, input, _) in devices::fuzzing::gpu_seeds() {
        std::fs::write(dir.join(name), input)?;
        println!("{name}");
    }
    Ok(())
}

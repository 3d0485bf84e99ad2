//! Writes the `audio_session` fuzz target's seeds: `cargo run -p
//! audio-proxy --example fuzz_seeds -- fuzz/seeds/audio_session`.

fn main() -> std::io::Result<()> {
    let dir = std::env::args()
        .nth(1)
        .unwrap_or_else(|| "fuzz/seeds/audio_session".into());
    std::fs::create_dir_all(&dir)?;
    for (name, bytes) in audio_proxy::fuzzing::seeds() {
        std::fs::write(std::path::Path::new(&dir).join(name), bytes)?;
    }
    Ok(())
}

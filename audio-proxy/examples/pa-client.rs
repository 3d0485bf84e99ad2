//! A raw PulseAudio-protocol client (no libpulse), for the boot tests:
//!
//! ```text
//! pa-client tone SOCKET SECS [HZ]         # plays a sine (440 Hz)
//! pa-client hostile SOCKET CLIENT INPUT   # what a hostile guest tries; NAME=OUTCOME lines
//! ```

use std::path::Path;
use std::process::ExitCode;

use audio_proxy::client::{self, RawClient};

fn main() -> ExitCode {
    let a: Vec<String> = std::env::args().skip(1).collect();
    let num = |i: usize| a.get(i).and_then(|v| v.parse().ok());
    let r = match (a.first().map(String::as_str), a.get(1)) {
        (Some("tone"), Some(sock)) => RawClient::open(Path::new(sock), c"pa-client")
            .and_then(|mut c| {
                let hz = num(3).unwrap_or(440.0);
                c.play(num(2).unwrap_or(5.0), 48000 * 4 / 10, |b, f| {
                    client::sine(b, f, hz)
                })
            })
            .map(|()| println!("tone-done")),
        (Some("hostile"), Some(sock)) => client::hostile(
            Path::new(sock),
            num(2).unwrap_or(0.0) as u32,
            num(3).unwrap_or(0.0) as u32,
        )
        .map(|v| {
            for (name, o) in v {
                println!("hostile-{name}={o}");
            }
        }),
        _ => {
            eprintln!(
                "usage: pa-client tone SOCKET SECS [HZ] | pa-client hostile SOCKET CLIENT INPUT"
            );
            return ExitCode::from(2);
        }
    };
    match r {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("pa-client: {e}");
            ExitCode::FAILURE
        }
    }
}

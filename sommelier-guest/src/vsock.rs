//! `/init vsock …`: a small AF_VSOCK tool for the default guest (busybox has
//! none), used by tests and handy for debugging:
//!
//! - `vsock connect CID PORT`: connects and relays stdin/stdout (stdin EOF
//!   half-closes the stream); exits 1 with a message if the connection is
//!   refused or reset.
//! - `vsock listen PORT`: accepts one connection and relays it the same way.
//! - `vsock echo PORT`: prints `@@listening`, then echoes every connection
//!   back to its sender, concurrently, forever.
//! - `vsock flood|storm|hold|sink …`: load for the hostile-guest tests
//!   (`vsock_load`).

use std::fs::File;
use std::io::{Read, Write};
use std::os::fd::AsRawFd;

use sommelier_guest::vsock_socket::{accept, connect, listen};

fn shutdown_write(f: &File) {
    // SAFETY: shutdown on a socket we own.
    unsafe { libc::shutdown(f.as_raw_fd(), libc::SHUT_WR) };
}

/// Copies `from` into `to` until EOF; returns the bytes copied.
fn copy(from: &mut impl Read, to: &mut impl Write) -> std::io::Result<u64> {
    let mut buf = vec![0u8; 64 * 1024];
    let mut n = 0u64;
    loop {
        let r = match from.read(&mut buf) {
            Ok(0) => return Ok(n),
            Ok(r) => r,
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
            Err(e) => return Err(e),
        };
        to.write_all(&buf[..r])?;
        n += r as u64;
    }
}

/// stdin → socket (half-closing at EOF) and socket → stdout.
fn relay(sock: File) -> i32 {
    let Ok(mut w) = sock.try_clone() else {
        return 1;
    };
    let t = std::thread::spawn(move || {
        let r = copy(&mut std::io::stdin().lock(), &mut w);
        shutdown_write(&w);
        r
    });
    let mut r = sock;
    let down = copy(&mut r, &mut std::io::stdout().lock());
    let _ = std::io::stdout().flush();
    let up = t
        .join()
        .unwrap_or_else(|_| Err(std::io::Error::other("stdin thread")));
    match (down, up) {
        (Ok(_), Ok(_)) => 0,
        (Err(e), _) | (_, Err(e)) => {
            eprintln!("vsock: {e}");
            1
        }
    }
}

fn num(s: Option<&String>) -> Option<u32> {
    s?.parse().ok()
}

/// Runs the tool with `args` (after `vsock`); returns the exit status.
pub fn main(args: &[String]) -> i32 {
    let usage = || {
        eprintln!(
            "usage: vsock connect CID PORT | listen PORT | echo PORT | flood CID PORT CONNS MIB \
             | storm CID PORT N | hold CID PORT N | sink PORT"
        );
        2
    };
    match args.first().map(String::as_str) {
        Some("connect") => {
            let (Some(cid), Some(port)) = (num(args.get(1)), num(args.get(2))) else {
                return usage();
            };
            match connect(cid, port) {
                Ok(s) => relay(s),
                Err(e) => {
                    eprintln!("vsock: connect to {cid}:{port}: {e}");
                    1
                }
            }
        }
        Some("listen") => {
            let Some(port) = num(args.get(1)) else {
                return usage();
            };
            match listen(port).and_then(|l| {
                println!("@@listening");
                accept(&l)
            }) {
                Ok(s) => relay(s),
                Err(e) => {
                    eprintln!("vsock: listen on {port}: {e}");
                    1
                }
            }
        }
        Some("echo") => {
            let Some(port) = num(args.get(1)) else {
                return usage();
            };
            let l = match listen(port) {
                Ok(l) => l,
                Err(e) => {
                    eprintln!("vsock: listen on {port}: {e}");
                    return 1;
                }
            };
            println!("@@listening");
            let _ = std::io::stdout().flush();
            loop {
                match accept(&l) {
                    Ok(mut s) => {
                        std::thread::spawn(move || {
                            if let Ok(mut w) = s.try_clone() {
                                let _ = copy(&mut s, &mut w);
                                shutdown_write(&w);
                            }
                        });
                    }
                    Err(e) => {
                        eprintln!("vsock: accept: {e}");
                        return 1;
                    }
                }
            }
        }
        _ => crate::vsock_load::main(args).unwrap_or_else(usage),
    }
}

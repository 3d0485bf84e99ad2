//! `/init vsock flood|storm|hold|sink …`: load a guest can put on the vsock
//! device, for the hostile-guest tests (and for trying a host's limits by
//! hand). Each prints one `@@…` summary line a test can read.
//!
//! - `flood CID PORT CONNS MIB`: CONNS streams at once, each writing MIB MiB
//!   as fast as the device takes them; `@@flood ok=K failed=F`.
//! - `storm CID PORT N`: N connects one after another, each closed at once;
//!   `@@storm connected=C failed=F`.
//! - `hold CID PORT N`: opens up to N streams and keeps them open, never
//!   reading or writing, until killed; `@@held=K` once they are open.
//! - `sink PORT`: accepts every connection and never reads from it, until
//!   killed; `@@listening` first.

use std::io::Write;

use sommelier_guest::vsock_socket::{accept, connect, listen};

fn arg(args: &[String], i: usize) -> Option<u32> {
    args.get(i)?.parse().ok()
}

/// Raises the soft fd limit to the hard one, for `hold` and `sink`.
fn raise_fd_limit() {
    let mut r = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: getrlimit/setrlimit with a valid rlimit struct.
    unsafe {
        if libc::getrlimit(libc::RLIMIT_NOFILE, &mut r) == 0 {
            r.rlim_cur = r.rlim_max;
            libc::setrlimit(libc::RLIMIT_NOFILE, &r);
        }
    }
}

fn say(line: &str) {
    let mut o = std::io::stdout().lock();
    let _ = writeln!(o, "{line}");
    let _ = o.flush();
}

fn flood(cid: u32, port: u32, conns: u32, mib: u32) -> i32 {
    let threads: Vec<_> = (0..conns)
        .map(|_| {
            std::thread::spawn(move || -> std::io::Result<()> {
                let mut s = connect(cid, port)?;
                let buf = vec![0x5au8; 1 << 20];
                for _ in 0..mib {
                    s.write_all(&buf)?;
                }
                Ok(())
            })
        })
        .collect();
    let ok = threads
        .into_iter()
        .map(|t| matches!(t.join(), Ok(Ok(()))))
        .filter(|ok| *ok)
        .count();
    say(&format!("@@flood ok={ok} failed={}", conns as usize - ok));
    0
}

fn storm(cid: u32, port: u32, n: u32) -> i32 {
    let connected = (0..n).filter(|_| connect(cid, port).is_ok()).count();
    say(&format!(
        "@@storm connected={connected} failed={}",
        n as usize - connected
    ));
    0
}

fn hold(cid: u32, port: u32, n: u32) -> i32 {
    raise_fd_limit();
    let held: Vec<_> = (0..n).map_while(|_| connect(cid, port).ok()).collect();
    say(&format!("@@held={}", held.len()));
    loop {
        std::thread::park();
    }
}

fn sink(port: u32) -> i32 {
    raise_fd_limit();
    let l = match listen(port) {
        Ok(l) => l,
        Err(e) => {
            eprintln!("vsock: listen on {port}: {e}");
            return 1;
        }
    };
    say("@@listening");
    let mut kept = Vec::new();
    loop {
        match accept(&l) {
            Ok(s) => kept.push(s),
            Err(e) => {
                eprintln!("vsock: accept: {e}");
                return 1;
            }
        }
    }
}

/// Runs `flood`, `storm`, `hold` or `sink` with `args` (the tool's name
/// first); `None` if `args` names none of them or lacks a number.
pub fn main(args: &[String]) -> Option<i32> {
    match args.first().map(String::as_str)? {
        "flood" => Some(flood(
            arg(args, 1)?,
            arg(args, 2)?,
            arg(args, 3)?,
            arg(args, 4)?,
        )),
        "storm" => Some(storm(arg(args, 1)?, arg(args, 2)?, arg(args, 3)?)),
        "hold" => Some(hold(arg(args, 1)?, arg(args, 2)?, arg(args, 3)?)),
        "sink" => Some(sink(arg(args, 1)?)),
        _ => None,
    }
}

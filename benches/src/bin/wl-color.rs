//! `wl-color`: a minimal wl_shm Wayland client (raw wire protocol, no
//! libwayland) that maps one xdg_toplevel filled with a known colour. The
//! tests use it to check that pixels from a guest app reach the host
//! compositor; the Wayland benchmark uses `--bench` to measure frames/s.
//!
//! ```text
//! wl-color [--color RRGGBB] [--title T] [--size WxH] [--seconds S] [--bench [--paced] [--fps N]]
//! ```
//! Without `--bench` it shows the colour for S seconds (default 2), or until
//! the window is closed, and exits.
//! With `--bench` it redraws and commits full frames for S seconds, each
//! followed by a `wl_display.sync` round trip, and prints `frames=N fps=F`;
//! with `--paced` each frame waits for its `wl_surface.frame` callback instead
//! (as toolkits, games and Xwayland pace theirs); `--fps N` draws at most N a
//! second (a toolkit's frame clock).

use std::io::{Read, Write};
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::os::unix::net::UnixStream;
use std::time::{Duration, Instant};

use wl_proxy::wire::{self, Writer, HEADER};

const BUFFERS: u32 = 3;

struct Args {
    color: u32,
    title: String,
    w: u32,
    h: u32,
    seconds: f64,
    bench: bool,
    paced: bool,
    fps: Option<f64>,
}

fn parse_args() -> Args {
    let mut a = Args {
        color: 0x00ff_8000,
        title: "wl-color".into(),
        w: 640,
        h: 480,
        seconds: 2.0,
        bench: false,
        paced: false,
        fps: None,
    };
    let v: Vec<String> = std::env::args().skip(1).collect();
    let mut i = 0;
    while i < v.len() {
        let next = v.get(i + 1).cloned().unwrap_or_default();
        match v[i].as_str() {
            "--color" => a.color = u32::from_str_radix(&next, 16).unwrap_or(a.color),
            "--title" => a.title = next,
            "--size" => {
                if let Some((w, h)) = next.split_once('x') {
                    a.w = w.parse().unwrap_or(a.w);
                    a.h = h.parse().unwrap_or(a.h);
                }
            }
            "--seconds" => a.seconds = next.parse().unwrap_or(a.seconds),
            "--fps" => a.fps = next.parse().ok(),
            "--bench" | "--paced" => {
                a.bench |= v[i] == "--bench";
                a.paced |= v[i] == "--paced";
                i += 1;
                continue;
            }
            other => {
                eprintln!("wl-color: unknown argument {other}");
                std::process::exit(2);
            }
        }
        i += 2;
    }
    a
}

struct Conn {
    s: UnixStream,
    buf: Vec<u8>,
}

/// An event: (object, opcode, body).
type Event = (u32, u16, Vec<u8>);

impl Conn {
    fn send(&mut self, m: &[u8]) {
        self.s
            .write_all(m)
            .unwrap_or_else(|e| die(&format!("send: {e}")));
    }

    fn send_fd(&mut self, m: &[u8], fd: OwnedFd) {
        match sommelier_guest::relay::send_with_fds(&self.s, m, &[fd]) {
            Ok(n) if n == m.len() => {}
            _ => die("sendmsg"),
        }
    }

    /// Handles the events already read, then waits up to `t` for more and
    /// handles them (answering pings, acking configures, exiting on close);
    /// a compositor that went away ends the client with status 1.
    fn idle(&mut self, t: Duration) {
        self.handle_buffered();
        let mut p = libc::pollfd {
            fd: self.s.as_raw_fd(),
            events: libc::POLLIN,
            revents: 0,
        };
        // SAFETY: one valid pollfd for the call.
        if unsafe { libc::poll(&mut p, 1, t.as_millis() as i32) } != 1 {
            return;
        }
        let mut b = [0u8; 4096];
        match self.s.read(&mut b) {
            Ok(0) | Err(_) => die("the compositor closed the connection"),
            Ok(n) => self.buf.extend_from_slice(&b[..n]),
        }
        self.handle_buffered();
    }

    /// Every complete event in the buffer (events that came in the same
    /// read as the one the frame loop waited for wait here).
    fn handle_buffered(&mut self) {
        while let Ok(h) = wire::header(&self.buf) {
            if self.buf.len() < h.size {
                break;
            }
            let (o, op, b) = self.event();
            match (o, op) {
                (6, 0) => self.send(&Writer::new(6, 3).uint(word(&b, 0)).finish()),
                // A new configure (the window was resized, e.g. tiled next to
                // another): ack it and commit, keeping the current buffer.
                (8, 0) => {
                    self.send(&Writer::new(8, 4).uint(word(&b, 0)).finish());
                    self.send(&Writer::new(7, 6).finish());
                }
                // xdg_toplevel.close (the user closed the window): done.
                (9, 1) => {
                    println!("wl-color: closed");
                    std::process::exit(0);
                }
                _ => {}
            }
        }
    }

    fn event(&mut self) -> Event {
        loop {
            if let Ok(h) = wire::header(&self.buf) {
                if self.buf.len() >= h.size {
                    let body = self.buf[HEADER..h.size].to_vec();
                    self.buf.drain(..h.size);
                    if h.object == 1 && h.opcode == 0 {
                        die(&format!(
                            "protocol error: {}",
                            String::from_utf8_lossy(&body[12..])
                        ));
                    }
                    return (h.object, h.opcode, body);
                }
            }
            let mut b = [0u8; 4096];
            match self.s.read(&mut b) {
                Ok(0) | Err(_) => die("the compositor closed the connection"),
                Ok(n) => self.buf.extend_from_slice(&b[..n]),
            }
        }
    }
}

fn die(msg: &str) -> ! {
    eprintln!("wl-color: {msg}");
    std::process::exit(1);
}

fn word(b: &[u8], i: usize) -> u32 {
    u32::from_ne_bytes(b[i * 4..i * 4 + 4].try_into().unwrap_or_default())
}

fn connect() -> UnixStream {
    let d = std::env::var("WAYLAND_DISPLAY").unwrap_or_else(|_| "wayland-0".into());
    let path = if d.starts_with('/') {
        d
    } else {
        format!(
            "{}/{d}",
            std::env::var("XDG_RUNTIME_DIR").unwrap_or_default()
        )
    };
    UnixStream::connect(&path).unwrap_or_else(|e| die(&format!("connect {path}: {e}")))
}

fn memfd(size: usize) -> (OwnedFd, *mut u32) {
    // SAFETY: memfd_create with a NUL-terminated name; checked.
    let fd = unsafe { libc::memfd_create(c"wl-color".as_ptr(), libc::MFD_CLOEXEC) };
    if fd < 0 {
        die("memfd_create");
    }
    // SAFETY: a new fd nothing else owns.
    let fd = unsafe { OwnedFd::from_raw_fd(fd) };
    // SAFETY: ftruncate and a shared mapping of that size; checked.
    let p = unsafe {
        if libc::ftruncate(fd.as_raw_fd(), size as libc::off_t) != 0 {
            die("ftruncate");
        }
        libc::mmap(
            std::ptr::null_mut(),
            size,
            libc::PROT_READ | libc::PROT_WRITE,
            libc::MAP_SHARED,
            fd.as_raw_fd(),
            0,
        )
    };
    if p == libc::MAP_FAILED {
        die("mmap");
    }
    (fd, p.cast())
}

fn main() {
    let a = parse_args();
    let mut c = Conn {
        s: connect(),
        buf: Vec::new(),
    };
    // Registry (2), a sync (3) to know when the globals are in.
    c.send(&Writer::new(1, 1).uint(2).finish());
    c.send(&Writer::new(1, 0).uint(3).finish());
    let mut globals = Vec::new();
    loop {
        let (o, op, b) = c.event();
        if o == 2 && op == 0 {
            let len = word(&b, 1) as usize;
            let name = String::from_utf8_lossy(&b[8..8 + len - 1]).into_owned();
            globals.push((word(&b, 0), name));
        } else if o == 3 {
            break;
        }
    }
    let mut bind = |iface: &str, version: u32, id: u32| {
        let Some(&(name, _)) = globals.iter().find(|(_, n)| n == iface) else {
            die(&format!("no {iface}"));
        };
        c.send(
            &Writer::new(2, 0)
                .uint(name)
                .string(iface)
                .uint(version)
                .uint(id)
                .finish(),
        );
    };
    bind("wl_compositor", 4, 4);
    bind("wl_shm", 1, 5);
    bind("xdg_wm_base", 1, 6);
    // Surface 7, xdg_surface 8, toplevel 9.
    c.send(&Writer::new(4, 0).uint(7).finish());
    c.send(&Writer::new(6, 2).uint(8).uint(7).finish());
    c.send(&Writer::new(8, 1).uint(9).finish());
    c.send(&Writer::new(9, 2).string(&a.title).finish());
    c.send(&Writer::new(9, 3).string("wl-color").finish());
    c.send(&Writer::new(7, 6).finish());
    loop {
        let (o, op, b) = c.event();
        match (o, op) {
            (6, 0) => c.send(&Writer::new(6, 3).uint(word(&b, 0)).finish()),
            (8, 0) => {
                c.send(&Writer::new(8, 4).uint(word(&b, 0)).finish());
                break;
            }
            _ => {}
        }
    }
    let (w, h) = (a.w, a.h);
    let frame = (w * h * 4) as usize;
    let (fd, px) = memfd(frame * BUFFERS as usize);
    c.send_fd(
        &Writer::new(5, 0)
            .uint(10)
            .uint((frame * BUFFERS as usize) as u32)
            .finish(),
        fd,
    );
    for i in 0..BUFFERS {
        // create_buffer(id, offset, w, h, stride, XRGB8888 = 1)
        c.send(
            &Writer::new(10, 0)
                .uint(11 + i)
                .uint(i * frame as u32)
                .uint(w)
                .uint(h)
                .uint(w * 4)
                .uint(1)
                .finish(),
        );
    }
    let fill = |i: u32, color: u32| {
        // SAFETY: buffer i lies inside the mapping of BUFFERS frames.
        let s =
            unsafe { std::slice::from_raw_parts_mut(px.add((i as usize) * frame / 4), frame / 4) };
        s.fill(color);
    };
    let mut free = [true; BUFFERS as usize];
    let mut next_id = 11 + BUFFERS;
    let start = Instant::now();
    let mut frames = 0u64;
    loop {
        // A free buffer (wait for a release if none).
        while !free.iter().any(|&f| f) {
            let (o, op, b) = c.event();
            if (11..11 + BUFFERS).contains(&o) && op == 0 {
                free[(o - 11) as usize] = true;
            } else if o == 6 && op == 0 {
                c.send(&Writer::new(6, 3).uint(word(&b, 0)).finish());
            }
        }
        let i = (0..BUFFERS).find(|&i| free[i as usize]).unwrap_or(0);
        free[i as usize] = false;
        let color = if a.bench {
            a.color ^ (frames as u32 & 0xff)
        } else {
            a.color
        };
        fill(i, color);
        c.send(&Writer::new(7, 1).uint(11 + i).uint(0).uint(0).finish());
        c.send(&Writer::new(7, 9).uint(0).uint(0).uint(w).uint(h).finish());
        let cb = next_id;
        next_id += 1;
        if a.paced {
            // wl_surface.frame: done once the compositor has shown it.
            c.send(&Writer::new(7, 3).uint(cb).finish());
        }
        c.send(&Writer::new(7, 6).finish());
        frames += 1;
        if !a.paced {
            // A round trip: the frame has reached the compositor.
            c.send(&Writer::new(1, 0).uint(cb).finish());
        }
        loop {
            let (o, op, b) = c.event();
            match (o, op) {
                (o, 0) if o == cb => break,
                (o, 0) if (11..11 + BUFFERS).contains(&o) => free[(o - 11) as usize] = true,
                (6, 0) => c.send(&Writer::new(6, 3).uint(word(&b, 0)).finish()),
                _ => {}
            }
        }
        if let Some(fps) = a.fps {
            let next = start + Duration::from_secs_f64((frames + 1) as f64 / fps);
            // Events wait in the socket (a release read here would be lost).
            std::thread::sleep(next.saturating_duration_since(Instant::now()));
        }
        let done = start.elapsed() >= Duration::from_secs_f64(a.seconds);
        if !a.bench {
            // Show the colour until the time is up, answering pings.
            while start.elapsed() < Duration::from_secs_f64(a.seconds) {
                c.idle(Duration::from_millis(20));
            }
            println!("wl-color: shown");
            return;
        }
        if done {
            break;
        }
    }
    let secs = start.elapsed().as_secs_f64();
    println!("frames={frames} fps={:.1}", frames as f64 / secs);
}

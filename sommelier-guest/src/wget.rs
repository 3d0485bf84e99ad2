//! `wget` in the default guest (`/usr/bin/wget` is a link to `/init`):
//! Debian 12's busybox-static 1.35 dies with a segmentation fault on `-T`
//! (during option parsing, whatever the URL), and scripts pass `-T` all the
//! time. This is a small HTTP/1.0 client for `http://` URLs with the
//! options scripts use: `-O FILE` (`-` for stdout), `-q`, `-T SECS` /
//! `--timeout=SECS` (each connect and read), `-U AGENT`, `--header=H`.
//! Anything else (an `https://` URL, other options) goes to busybox's applet,
//! without the timeout.

use std::io::{Read, Write};
use std::net::{TcpStream, ToSocketAddrs};
use std::time::Duration;

/// What the command line asked for.
#[derive(Debug, Default, PartialEq)]
struct Args {
    url: String,
    out: Option<String>,
    quiet: bool,
    timeout: Option<u64>,
    agent: Option<String>,
    headers: Vec<String>,
    /// What busybox gets if this client does not handle the request: the
    /// arguments without the timeout.
    rest: Vec<String>,
    /// Something this client does not know.
    foreign: bool,
}

fn parse(argv: &[String]) -> Args {
    let mut a = Args::default();
    let mut it = argv.iter();
    while let Some(s) = it.next() {
        let mut value = |a: &mut Args, name: &str| -> Option<String> {
            let v = it.next().cloned();
            if v.is_none() {
                a.foreign = true;
            }
            a.rest.push(name.to_string());
            if let Some(v) = &v {
                a.rest.push(v.clone());
            }
            v
        };
        match s.as_str() {
            "-T" => {
                a.timeout = it.next().and_then(|v| v.parse().ok());
            }
            t if t.starts_with("--timeout=") => a.timeout = t[10..].parse().ok(),
            t if t.starts_with("-T") => a.timeout = t[2..].parse().ok(),
            "-q" | "--quiet" => {
                a.quiet = true;
                a.rest.push(s.clone());
            }
            "-O" => a.out = value(&mut a, "-O"),
            t if t.starts_with("-O") && t.len() > 2 => {
                a.out = Some(t[2..].to_string());
                a.rest.push(s.clone());
            }
            "-U" => a.agent = value(&mut a, "-U"),
            t if t.starts_with("--header=") => {
                a.headers.push(t[9..].to_string());
                a.rest.push(s.clone());
            }
            t if t.starts_with('-') => {
                a.foreign = true;
                a.rest.push(s.clone());
            }
            _ => {
                if !a.url.is_empty() {
                    a.foreign = true;
                }
                a.url = s.clone();
                a.rest.push(s.clone());
            }
        }
    }
    a
}

/// `http://HOST[:PORT]/PATH` → (host, port, path).
fn split_url(url: &str) -> Option<(String, u16, String)> {
    let rest = url.strip_prefix("http://")?;
    let (hostport, path) = match rest.find('/') {
        Some(i) => (&rest[..i], &rest[i..]),
        None => (rest, "/"),
    };
    let (host, port) = match hostport.rsplit_once(':') {
        Some((h, p)) if !h.ends_with(']') || h.starts_with('[') => (h, p.parse().ok()?),
        _ => (hostport, 80),
    };
    if host.is_empty() || hostport.contains('@') {
        return None;
    }
    Some((
        host.trim_matches(['[', ']']).to_string(),
        port,
        path.to_string(),
    ))
}

fn fetch(a: &Args, host: &str, port: u16, path: &str) -> Result<(), String> {
    let t = a.timeout.map(Duration::from_secs);
    let addrs: Vec<_> = (host, port)
        .to_socket_addrs()
        .map_err(|e| format!("bad address '{host}': {e}"))?
        .collect();
    let mut s = None;
    for addr in &addrs {
        let r = match t {
            Some(t) => TcpStream::connect_timeout(addr, t),
            None => TcpStream::connect(addr),
        };
        if let Ok(c) = r {
            s = Some(c);
            break;
        }
    }
    let mut s = s.ok_or_else(|| format!("can't connect to remote host ({host})"))?;
    s.set_read_timeout(t).map_err(|e| e.to_string())?;
    s.set_write_timeout(t).map_err(|e| e.to_string())?;
    let mut req = format!(
        "GET {path} HTTP/1.0\r\nHost: {host}\r\nUser-Agent: {}\r\nConnection: close\r\n",
        a.agent.as_deref().unwrap_or("Wget")
    );
    for h in &a.headers {
        req.push_str(h);
        req.push_str("\r\n");
    }
    req.push_str("\r\n");
    s.write_all(req.as_bytes()).map_err(|e| e.to_string())?;
    let mut head = Vec::new();
    let mut b = [0u8; 1];
    while !head.ends_with(b"\r\n\r\n") {
        if head.len() > 64 * 1024 || s.read(&mut b).map_err(|e| e.to_string())? == 0 {
            return Err("bad server response".into());
        }
        head.push(b[0]);
    }
    let status = String::from_utf8_lossy(&head);
    let code = status.split_whitespace().nth(1).unwrap_or("");
    if !code.starts_with('2') {
        let line = status.lines().next().unwrap_or("").trim();
        return Err(format!("server returned error: {line}"));
    }
    let mut sink: Box<dyn Write> = match a.out.as_deref() {
        Some("-") => Box::new(std::io::stdout()),
        Some(f) => Box::new(std::fs::File::create(f).map_err(|e| format!("{f}: {e}"))?),
        None => {
            let name = path
                .rsplit('/')
                .next()
                .filter(|n| !n.is_empty())
                .unwrap_or("index.html");
            Box::new(std::fs::File::create(name).map_err(|e| format!("{name}: {e}"))?)
        }
    };
    let got = std::io::copy(&mut s, &mut sink).map_err(|e| e.to_string())?;
    sink.flush().map_err(|e| e.to_string())?;
    // A body cut short (the connection closed early) is an error, not a
    // smaller file.
    let want = status.lines().find_map(|l| {
        let (k, v) = l.split_once(':')?;
        k.trim()
            .eq_ignore_ascii_case("content-length")
            .then(|| v.trim().parse::<u64>().ok())?
    });
    match want {
        Some(w) if got < w => Err(format!("short read: {got} of {w} bytes")),
        _ => Ok(()),
    }
}

pub fn main(argv: &[String]) -> i32 {
    let a = parse(argv);
    let target = split_url(&a.url).filter(|_| !a.foreign);
    let Some((host, port, path)) = target else {
        // Not ours: busybox's applet, without the option it crashes on.
        let e = std::process::Command::new("/bin/busybox")
            .arg(sommelier_guest::BUSYBOX_WGET)
            .args(&a.rest)
            .status();
        return e.ok().and_then(|s| s.code()).unwrap_or(1);
    };
    if !a.quiet {
        eprintln!("Connecting to {host}:{port}");
    }
    match fetch(&a, &host, port, &path) {
        Ok(()) => 0,
        Err(e) => {
            eprintln!("wget: {e}");
            1
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn args(s: &str) -> Vec<String> {
        s.split_whitespace().map(String::from).collect()
    }

    #[test]
    fn the_options_scripts_use_are_understood() {
        for line in [
            "-T 20 -O- http://h/x",
            "-T20 -O - http://h/x",
            "--timeout=20 -O- http://h/x",
        ] {
            let a = parse(&args(line));
            assert_eq!(a.timeout, Some(20), "{line}");
            assert_eq!(a.out.as_deref(), Some("-"), "{line}");
            assert_eq!(a.url, "http://h/x");
            assert!(!a.foreign, "{line}");
            assert!(!a
                .rest
                .iter()
                .any(|r| r.starts_with("-T") || r.starts_with("--t")));
        }
        assert!(parse(&args("--spider http://h/")).foreign);
        assert!(parse(&args("-O")).foreign);
    }

    #[test]
    fn urls_split_into_host_port_and_path() {
        assert_eq!(
            split_url("http://10.0.2.2:8080/a/b?c"),
            Some(("10.0.2.2".into(), 8080, "/a/b?c".into()))
        );
        assert_eq!(split_url("http://h"), Some(("h".into(), 80, "/".into())));
        assert_eq!(
            split_url("http://[::1]:81/"),
            Some(("::1".into(), 81, "/".into()))
        );
        assert_eq!(split_url("https://h/"), None);
        assert_eq!(split_url("http://u:p@h/"), None);
        assert_eq!(split_url("http://h:bad/"), None);
    }

    #[test]
    fn a_local_server_is_fetched_with_a_timeout() {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let port = l.local_addr().unwrap().port();
        let srv = std::thread::spawn(move || {
            let (mut c, _) = l.accept().unwrap();
            let mut req = [0u8; 1024];
            let n = c.read(&mut req).unwrap();
            assert!(String::from_utf8_lossy(&req[..n]).starts_with("GET /f HTTP/1.0\r\n"));
            c.write_all(b"HTTP/1.0 200 OK\r\nContent-Length: 5\r\n\r\nhello")
                .unwrap();
        });
        let out = std::env::temp_dir().join(format!("wget-test-{}", std::process::id()));
        let a = parse(&args(&format!(
            "-q -T 5 -O {} http://127.0.0.1:{port}/f",
            out.display()
        )));
        assert_eq!(fetch(&a, "127.0.0.1", port, "/f"), Ok(()));
        srv.join().unwrap();
        assert_eq!(std::fs::read(&out).unwrap(), b"hello");
        // A body cut short is an error.
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let port = l.local_addr().unwrap().port();
        let srv = std::thread::spawn(move || {
            let (mut c, _) = l.accept().unwrap();
            let mut req = [0u8; 1024];
            let _ = c.read(&mut req).unwrap();
            c.write_all(b"HTTP/1.0 200 OK\r\nContent-Length: 50\r\n\r\nhello")
                .unwrap();
        });
        let e = fetch(&a, "127.0.0.1", port, "/f").unwrap_err();
        srv.join().unwrap();
        assert!(e.contains("short read"), "{e}");
        // A server that never answers: the timeout ends it.
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let port = l.local_addr().unwrap().port();
        let a = parse(&args(&format!(
            "-q -T 1 -O {} http://127.0.0.1:{port}/",
            out.display()
        )));
        let t = std::time::Instant::now();
        assert!(fetch(&a, "127.0.0.1", port, "/").is_err());
        assert!(t.elapsed() < Duration::from_secs(5));
        drop(l);
        let _ = std::fs::remove_file(&out);
    }
}

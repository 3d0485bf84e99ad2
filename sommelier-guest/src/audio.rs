//! The guest's sound socket: a PulseAudio-protocol socket
//! (`/run/vmapp/pulse/native`, what libpulse, pipewire-pulse clients, SDL,
//! GStreamer, Firefox and Chromium use) whose connections each travel over
//! a vsock stream of their own to the host, where the VM's audio proxy
//! checks every message before the host's sound server sees it. The relay
//! reads nothing: bytes go both ways as they come.

use std::fs::File;
use std::io::{Read, Write};
use std::net::Shutdown;
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::Path;

/// Where the socket goes under the guest's runtime directory.
pub const SOCKET: &str = "pulse/native";

/// Listens on `path` and relays each connection to the host's vsock
/// `port` (CID 2), on threads of its own; returns once listening.
pub fn serve(path: &Path, port: u32) -> std::io::Result<()> {
    if let Some(d) = path.parent() {
        std::fs::create_dir_all(d)?;
    }
    let _ = std::fs::remove_file(path);
    let l = UnixListener::bind(path)?;
    // Any user of the guest may play (the guest is the app's alone).
    std::fs::set_permissions(path, std::os::unix::fs::PermissionsExt::from_mode(0o666))?;
    std::thread::Builder::new()
        .name("audio-accept".into())
        .spawn(move || {
            for c in l.incoming().flatten() {
                let _ = std::thread::Builder::new()
                    .name("audio-relay".into())
                    .spawn(move || relay(c, port));
            }
        })?;
    Ok(())
}

/// One client: its bytes to the host and back until either side ends.
fn relay(client: UnixStream, port: u32) {
    // The host refuses when its audio is off or no proxy runs: the client
    // sees its connection closed.
    let Ok(host) = crate::vsock_socket::connect(2, port) else {
        return;
    };
    let (Ok(c2), Ok(h2)) = (client.try_clone(), host.try_clone()) else {
        return;
    };
    let up = std::thread::Builder::new()
        .name("audio-up".into())
        .spawn(move || copy(&client, &host));
    copy_down(h2, &c2);
    if let Ok(t) = up {
        let _ = t.join();
    }
}

/// Client → host; at the end both ends are shut so the other thread ends.
fn copy(from: &UnixStream, to: &File) {
    pump(from, to);
    crate::vsock_socket::shutdown(to);
    let _ = from.shutdown(Shutdown::Both);
}

/// Host → client.
fn copy_down(from: File, to: &UnixStream) {
    pump(&from, to);
    let _ = to.shutdown(Shutdown::Both);
    crate::vsock_socket::shutdown(&from);
}

/// Bytes from `from` to `to` until either ends.
fn pump(mut from: impl Read, mut to: impl Write) {
    let mut buf = vec![0u8; 64 << 10];
    loop {
        match from.read(&mut buf) {
            Ok(0) | Err(_) => break,
            Ok(n) => {
                if to.write_all(&buf[..n]).is_err() {
                    break;
                }
            }
        }
    }
}

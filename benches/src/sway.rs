//! A headless sway for the Wayland and X11 benchmarks, and the time from a
//! launch to its window in sway's tree.

use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};

/// A headless sway (pixman, one 1280×720 output) run as uid 65534.
pub struct Sway {
    child: Child,
    dir: tempfile::TempDir,
}

impl Sway {
    /// Starts it and waits for its socket.
    pub fn start() -> Result<Self> {
        let dir = tempfile::tempdir()?;
        let home = dir.path().join("home");
        std::fs::create_dir_all(&home)?;
        let _ = std::fs::create_dir_all("/dev/shm");
        let conf = home.join("sway.conf");
        std::fs::write(&conf, "output HEADLESS-1 resolution 1280x720\n")?;
        for p in [dir.path(), home.as_path()] {
            std::os::unix::fs::chown(p, Some(65534), Some(65534))?;
        }
        let child = Command::new("setpriv")
            .args(["--reuid=65534", "--regid=65534", "--clear-groups", "env"])
            .arg(format!("XDG_RUNTIME_DIR={}", dir.path().display()))
            .arg(format!("HOME={}", home.display()))
            .args([
                "WLR_BACKENDS=headless",
                "WLR_LIBINPUT_NO_DEVICES=1",
                "WLR_RENDERER=pixman",
            ])
            .arg("sway")
            .arg("-c")
            .arg(&conf)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .context("starting sway")?;
        let s = Sway { child, dir };
        let t = Instant::now();
        while !s.socket().exists() {
            if t.elapsed() > Duration::from_secs(20) {
                bail!("sway did not start");
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        Ok(s)
    }

    /// Its Wayland socket.
    pub fn socket(&self) -> PathBuf {
        self.dir.path().join("wayland-1")
    }

    /// Whether `swaymsg -t get_tree` shows `pattern`.
    pub fn swaymsg_has(&self, pattern: &str) -> bool {
        let ipc = std::fs::read_dir(self.dir.path()).ok().and_then(|mut d| {
            d.find_map(|e| {
                let p = e.ok()?.path();
                p.file_name()?
                    .to_str()?
                    .starts_with("sway-ipc")
                    .then_some(p)
            })
        });
        let Some(ipc) = ipc else { return false };
        Command::new("swaymsg")
            .args(["-s"])
            .arg(ipc)
            .args(["-t", "get_tree"])
            .output()
            .is_ok_and(|o| String::from_utf8_lossy(&o.stdout).contains(pattern))
    }
}

impl Drop for Sway {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Milliseconds from starting `c` until sway shows `pattern`.
pub fn launch_to_map(mut c: Command, sway: &Sway, pattern: &str) -> Result<f64> {
    let t = Instant::now();
    let mut child = c.stdout(Stdio::null()).stderr(Stdio::null()).spawn()?;
    let r = loop {
        if sway.swaymsg_has(pattern) {
            break Ok(t.elapsed().as_secs_f64() * 1000.0);
        }
        if t.elapsed() > Duration::from_secs(600) || child.try_wait()?.is_some() {
            break Err(anyhow::anyhow!("{pattern} never mapped"));
        }
        std::thread::sleep(Duration::from_millis(50));
    };
    let _ = child.kill();
    let _ = child.wait();
    r
}

/// What [`launch_and_wait`] saw.
pub struct Launched {
    /// Milliseconds from the start until sway showed the window.
    pub map_ms: f64,
    /// The command's output and log, once it ended.
    pub stdout: String,
    /// Its standard error.
    pub stderr: String,
}

/// Starts `c`, times it until sway shows `pattern`, then lets it run to its
/// end (at most `timeout` in all) and returns its output; a failure or a
/// window that never shows is an error.
pub fn launch_and_wait(
    mut c: Command,
    sway: &Sway,
    pattern: &str,
    timeout: Duration,
) -> Result<Launched> {
    let t = Instant::now();
    let mut child = crate::spawn_piped(&mut c)?;
    let read = |r: Option<Box<dyn std::io::Read + Send>>| {
        std::thread::spawn(move || {
            let mut s = String::new();
            if let Some(mut r) = r {
                let _ = r.read_to_string(&mut s);
            }
            s
        })
    };
    let out = read(child.stdout.take().map(|o| Box::new(o) as _));
    let err = read(child.stderr.take().map(|e| Box::new(e) as _));
    let mut map_ms = None;
    let status = loop {
        if map_ms.is_none() && sway.swaymsg_has(pattern) {
            map_ms = Some(t.elapsed().as_secs_f64() * 1000.0);
        }
        if let Some(st) = child.try_wait()? {
            break Some(st);
        }
        if t.elapsed() > timeout {
            let _ = child.kill();
            let _ = child.wait();
            break None;
        }
        std::thread::sleep(Duration::from_millis(if map_ms.is_some() {
            200
        } else {
            50
        }));
    };
    let stdout = out.join().unwrap_or_default();
    let stderr = err.join().unwrap_or_default();
    match (status, map_ms) {
        (Some(st), Some(map_ms)) if st.success() => Ok(Launched {
            map_ms,
            stdout,
            stderr,
        }),
        (Some(st), _) if !st.success() => bail!("{c:?} failed ({st}):\n{stdout}\n{stderr}"),
        (None, _) => bail!("{c:?} still running after {timeout:?}:\n{stdout}\n{stderr}"),
        _ => bail!("{pattern} never mapped:\n{stdout}\n{stderr}"),
    }
}

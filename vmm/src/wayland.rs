//! The host side of a VM's Wayland path: one `wl-proxy` process per VM,
//! connected to the user's compositor and listening on a socket in the VM's
//! private directory. virtio-gpu's cross-domain contexts connect to that
//! socket, so everything a guest app says passes the proxy's validation and
//! policy; the VMM process itself never talks to the compositor.

use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// Size of the virtio-gpu host-visible window vmapp gives a VM.
pub const DEFAULT_WINDOW: u64 = devices::virtio::gpu::DEFAULT_SHM_SIZE;

/// Globals the guest relay cannot carry, hidden from guest apps: buffers and
/// sync objects that are GPU handles (the relay only has shared memory).
pub const RELAY_HIDDEN: &[&str] = &[
    "zwp_linux_dmabuf_v1",
    "wl_drm",
    "wp_linux_drm_syncobj_manager_v1",
    "zwp_linux_explicit_synchronization_v1",
    "wp_drm_lease_device_v1",
];

/// Errors starting the proxy.
#[derive(Debug, thiserror::Error)]
pub enum WaylandError {
    /// No compositor socket.
    #[error("no Wayland compositor: {0}")]
    NoCompositor(String),
    /// The proxy could not be started.
    #[error("cannot start {path}: {source}")]
    Spawn {
        /// The binary.
        path: PathBuf,
        /// Why.
        source: std::io::Error,
    },
    /// The proxy ended before it listened.
    #[error("wl-proxy did not start listening ({0})")]
    NotListening(String),
}

/// How the VM's proxy is set up.
#[derive(Clone, Debug)]
pub struct ProxyConfig {
    /// The `wl-proxy` binary.
    pub binary: PathBuf,
    /// The compositor's socket.
    pub upstream: PathBuf,
    /// Where the proxy listens (in the VM's private directory).
    pub listen: PathBuf,
    /// The user's policy file, if any.
    pub policy: Option<PathBuf>,
    /// `allow` or `deny`, overriding the policy's clipboard switch.
    pub clipboard: Option<String>,
    /// The window label.
    pub tag: String,
    /// The proxy's seccomp mode (`kill`, `log`, `off`).
    pub seccomp: String,
}

/// The compositor socket `$WAYLAND_DISPLAY` names (a path, or a name in
/// `$XDG_RUNTIME_DIR`), or `explicit` when given.
pub fn compositor_socket(explicit: Option<&str>) -> Result<PathBuf, WaylandError> {
    let display = match explicit.filter(|s| !s.is_empty()) {
        Some(s) => s.to_string(),
        None => std::env::var("WAYLAND_DISPLAY")
            .map_err(|_| WaylandError::NoCompositor("WAYLAND_DISPLAY is not set".into()))?,
    };
    let p = Path::new(&display);
    let path = if p.is_absolute() {
        p.to_path_buf()
    } else {
        let rt = std::env::var_os("XDG_RUNTIME_DIR").ok_or_else(|| {
            WaylandError::NoCompositor(format!(
                "{display} is relative and XDG_RUNTIME_DIR is not set"
            ))
        })?;
        Path::new(&rt).join(p)
    };
    if !path.exists() {
        return Err(WaylandError::NoCompositor(format!(
            "{} does not exist",
            path.display()
        )));
    }
    Ok(path)
}

/// The running proxy; dropping it stops it (and removes its socket).
pub struct ProxyProcess {
    child: Child,
    listen: PathBuf,
}

impl ProxyProcess {
    /// Starts `wl-proxy` and waits (up to 10 s) until it listens.
    pub fn start(cfg: &ProxyConfig) -> Result<Self, WaylandError> {
        let mut c = Command::new(&cfg.binary);
        c.arg("--listen")
            .arg(&cfg.listen)
            .arg("--upstream")
            .arg(&cfg.upstream)
            .arg("--tag")
            .arg(&cfg.tag)
            .arg("--seccomp")
            .arg(&cfg.seccomp)
            .stdin(Stdio::null());
        if let Some(p) = &cfg.policy {
            c.arg("--policy").arg(p);
        }
        if let Some(cb) = &cfg.clipboard {
            c.arg("--clipboard").arg(cb);
        }
        for g in RELAY_HIDDEN {
            c.arg("--deny").arg(g);
        }
        // SAFETY: prctl is async-signal-safe; it only affects the child.
        unsafe {
            c.pre_exec(|| {
                // The proxy ends with the VMM, however the VMM ends.
                libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGTERM);
                Ok(())
            });
        }
        let child = c.spawn().map_err(|source| WaylandError::Spawn {
            path: cfg.binary.clone(),
            source,
        })?;
        let mut p = ProxyProcess {
            child,
            listen: cfg.listen.clone(),
        };
        let t = Instant::now();
        while !p.listen.exists() {
            if let Ok(Some(st)) = p.child.try_wait() {
                return Err(WaylandError::NotListening(format!("it exited: {st}")));
            }
            if t.elapsed() > Duration::from_secs(10) {
                return Err(WaylandError::NotListening("timed out".into()));
            }
            std::thread::sleep(Duration::from_millis(5));
        }
        Ok(p)
    }

    /// The socket guest connections go to.
    pub fn socket(&self) -> &Path {
        &self.listen
    }
}

impl Drop for ProxyProcess {
    fn drop(&mut self) {
        // SIGTERM: the proxy removes its socket and exits.
        // SAFETY: kill on our own child's pid.
        unsafe { libc::kill(self.child.id() as i32, libc::SIGTERM) };
        let t = Instant::now();
        while t.elapsed() < Duration::from_secs(2) {
            if let Ok(Some(_)) = self.child.try_wait() {
                return;
            }
            std::thread::sleep(Duration::from_millis(5));
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// The `wl-proxy` binary: beside the running executable, else from `PATH`.
pub fn proxy_binary() -> PathBuf {
    std::env::current_exe()
        .ok()
        .and_then(|e| e.parent().map(|d| d.join("wl-proxy")))
        .filter(|p| p.exists())
        .unwrap_or_else(|| PathBuf::from("wl-proxy"))
}

//! How vmapp stops a VM on a signal: the first SIGINT, SIGTERM or SIGHUP
//! presses the VM's ACPI power button ([`vmm::Stopper::shutdown`]: the
//! default guest ends the application — SIGTERM, a grace period, SIGKILL —
//! syncs and powers off, and vmapp exits with the application's status); a
//! second one, or a guest still running [`DEADLINE`] later, stops it at once
//! ([`vmm::Stopper::stop`], status 143).
//!
//! The signals are blocked from the start of `launch` (while vmapp has one
//! thread, so every thread inherits the mask) and taken by one `signals`
//! thread with `sigtimedwait`. With the jail, the parent outside forwards
//! the first signal to the jailed process as SIGTERM (see `jail`).

use std::time::Duration;

/// The signals that stop a VM.
pub const SIGNALS: [libc::c_int; 3] = [libc::SIGINT, libc::SIGTERM, libc::SIGHUP];

/// How long a guest has to power off after the power button.
pub const DEADLINE: Duration = Duration::from_secs(30);

/// Errors starting the watcher.
#[derive(Debug, thiserror::Error)]
pub enum StopError {
    /// The thread could not be started.
    #[error("cannot start the signal thread: {0}")]
    Thread(#[from] std::io::Error),
}

/// A signal set of `signals`.
pub fn sigset(signals: &[libc::c_int]) -> libc::sigset_t {
    // SAFETY: sigset_t is plain data; sigemptyset initialises it.
    let mut set: libc::sigset_t = unsafe { std::mem::zeroed() };
    // SAFETY: `set` is a valid sigset_t.
    unsafe { libc::sigemptyset(&mut set) };
    for &s in signals {
        // SAFETY: as above; `s` is a valid signal number.
        unsafe { libc::sigaddset(&mut set, s) };
    }
    set
}

/// Blocks [`SIGNALS`] in the calling thread and every thread it starts
/// later. Call it while the process has one thread.
pub fn block() {
    let set = sigset(&SIGNALS);
    // SAFETY: valid set pointer; the old mask is not wanted.
    unsafe { libc::pthread_sigmask(libc::SIG_BLOCK, &set, std::ptr::null_mut()) };
}

/// Waits for one of `set`, for at most `timeout`; `None` on timeout.
fn wait(set: &libc::sigset_t, timeout: Option<Duration>) -> Option<libc::c_int> {
    loop {
        let ts = timeout.map(|t| libc::timespec {
            tv_sec: t.as_secs() as libc::time_t,
            tv_nsec: libc::c_long::from(t.subsec_nanos() as i32),
        });
        let tsp = ts
            .as_ref()
            .map_or(std::ptr::null(), |t| t as *const libc::timespec);
        // SAFETY: valid set, no siginfo wanted, a valid or null timespec.
        let r = unsafe { libc::sigtimedwait(set, std::ptr::null_mut(), tsp) };
        if r > 0 {
            return Some(r);
        }
        if std::io::Error::last_os_error().raw_os_error() == Some(libc::EAGAIN) {
            return None;
        }
    }
}

/// Starts the `signals` thread for the VM behind `stopper`.
pub fn watch(stopper: vmm::Stopper, seccomp: seccomp_policies::Mode) -> Result<(), StopError> {
    std::thread::Builder::new()
        .name("signals".into())
        .spawn(move || {
            if let Err(e) = seccomp_policies::install(seccomp_policies::ThreadKind::Vmm, seccomp) {
                eprintln!("vmapp: error: {e}");
                stopper.stop();
                return;
            }
            let set = sigset(&SIGNALS);
            wait(&set, None);
            eprintln!(
                "vmapp: stopping the VM (the application has {} s; a second signal stops it at once)",
                DEADLINE.as_secs()
            );
            stopper.shutdown();
            if wait(&set, Some(DEADLINE)).is_none() {
                eprintln!("vmapp: the guest did not power off in time; stopping it");
            }
            stopper.stop();
        })?;
    Ok(())
}

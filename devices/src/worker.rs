//! Device worker threads. Each is started with its device — before any guest
//! code runs — installs its seccomp filter first thing, and then waits for
//! work: `activate` hands it the serving loop, `reset` waits for that loop to
//! end. So a worker never inherits a vCPU thread's filter, and a vCPU thread
//! never needs the right to create threads.

use std::sync::mpsc::{channel, Receiver, RecvTimeoutError, Sender};
use std::thread::JoinHandle;
use std::time::Duration;

use vmm_sys_util::eventfd::EventFd;

use seccomp_policies::ThreadKind;

type Job = Box<dyn FnOnce() + Send>;

/// How long [`Parked::stop`] waits for a serving loop to end before it
/// gives the thread up as stuck.
pub const STOP_DEADLINE: Duration = Duration::from_secs(5);

/// Errors of a worker thread.
#[derive(Debug, thiserror::Error)]
pub enum WorkerError {
    /// The thread could not be created.
    #[error("cannot start the {0} thread: {1}")]
    Spawn(String, std::io::Error),
    /// Its seccomp filter could not be installed.
    #[error("{0}")]
    Seccomp(String),
    /// The thread is gone.
    #[error("the worker thread has ended")]
    Gone,
    /// A job did not end when told to: the thread is given up.
    #[error("the worker thread is stuck in a job that did not end when stopped")]
    Stuck,
}

/// A parked worker thread.
#[derive(Debug)]
pub struct Parked {
    jobs: Option<Sender<Job>>,
    done: Receiver<()>,
    busy: bool,
    /// A job outlived its stop deadline: the thread is never waited for
    /// again (nor joined), and takes no more jobs.
    stuck: bool,
    kill: Option<EventFd>,
    thread: Option<JoinHandle<()>>,
}

impl Parked {
    /// Starts a thread called `name` that installs `kind`'s filter (in the
    /// process's default seccomp mode) and waits for jobs.
    pub fn spawn(name: &str, kind: ThreadKind) -> Result<Self, WorkerError> {
        let (jtx, jrx) = channel::<Job>();
        let (dtx, drx) = channel();
        let (rtx, rrx) = channel();
        let thread = std::thread::Builder::new()
            .name(name.into())
            .spawn(move || {
                let r = seccomp_policies::install_default(kind).map_err(|e| e.to_string());
                let ok = r.is_ok();
                let _ = rtx.send(r);
                if !ok {
                    return;
                }
                while let Ok(job) = jrx.recv() {
                    job();
                    if dtx.send(()).is_err() {
                        return;
                    }
                }
            })
            .map_err(|e| WorkerError::Spawn(name.into(), e))?;
        rrx.recv()
            .map_err(|_| WorkerError::Gone)?
            .map_err(WorkerError::Seccomp)?;
        Ok(Parked {
            jobs: Some(jtx),
            done: drx,
            busy: false,
            stuck: false,
            kill: None,
            thread: Some(thread),
        })
    }

    /// Runs `job` on the worker (after the previous one has been waited for).
    pub fn start(&mut self, job: impl FnOnce() + Send + 'static) -> Result<(), WorkerError> {
        self.recover();
        if self.stuck {
            return Err(WorkerError::Stuck);
        }
        self.wait();
        let jobs = self.jobs.as_ref().ok_or(WorkerError::Gone)?;
        jobs.send(Box::new(job)).map_err(|_| WorkerError::Gone)?;
        self.busy = true;
        Ok(())
    }

    /// Runs a device's serving loop, which must return once `kill` is
    /// signalled: [`stop`](Self::stop) does that (and keeps the fd open until then).
    pub fn serve(
        &mut self,
        kill: EventFd,
        job: impl FnOnce() + Send + 'static,
    ) -> Result<(), WorkerError> {
        self.stop();
        self.start(job)?;
        self.kill = Some(kill);
        Ok(())
    }

    /// Ends the serving loop started by [`serve`](Self::serve), if any, and
    /// waits for it, at most [`STOP_DEADLINE`]. Returns false if it did not
    /// end by then (or an earlier one did not): the thread is given up as
    /// stuck, so that a loop a guest wedged (inside a library's own
    /// threads, say) cannot make the VMM's stop path hang.
    pub fn stop(&mut self) -> bool {
        self.stop_within(STOP_DEADLINE)
    }

    /// [`stop`](Self::stop) with another deadline.
    pub fn stop_within(&mut self, deadline: Duration) -> bool {
        self.recover();
        if let Some(k) = self.kill.take() {
            let _ = k.write(1);
            if self.busy && !self.stuck {
                match self.done.recv_timeout(deadline) {
                    Ok(()) | Err(RecvTimeoutError::Disconnected) => self.busy = false,
                    Err(RecvTimeoutError::Timeout) => {
                        tracing::error!(
                            "a device worker did not stop within {deadline:?}; giving it up"
                        );
                        self.stuck = true;
                    }
                }
            }
        }
        !self.stuck
    }

    /// A job given up as stuck that has ended since (a slow one, not a
    /// wedged one) gives the thread back.
    fn recover(&mut self) {
        if self.stuck && self.done.try_recv().is_ok() {
            self.stuck = false;
            self.busy = false;
        }
    }

    /// Waits until the running job (if any) has returned (never for a
    /// stuck one).
    pub fn wait(&mut self) {
        if self.busy && !self.stuck {
            let _ = self.done.recv();
            self.busy = false;
        }
    }
}

impl Drop for Parked {
    fn drop(&mut self) {
        self.stop();
        self.wait();
        self.jobs = None;
        if let Some(t) = self.thread.take() {
            // A stuck thread is left to end with the process.
            if !self.stuck {
                let _ = t.join();
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::{AtomicUsize, Ordering};
    use std::sync::Arc;

    #[test]
    fn jobs_run_in_order_on_the_named_thread() {
        let mut p = Parked::spawn("test-worker", ThreadKind::VirtioBlk).unwrap();
        let n = Arc::new(AtomicUsize::new(0));
        for i in 0..3 {
            let n = n.clone();
            p.start(move || {
                assert_eq!(std::thread::current().name(), Some("test-worker"));
                assert_eq!(n.fetch_add(1, Ordering::SeqCst), i);
            })
            .unwrap();
        }
        p.wait();
        assert_eq!(n.load(Ordering::SeqCst), 3);
    }

    #[test]
    fn a_serving_loop_that_ignores_its_stop_is_given_up_not_waited_for() {
        let mut p = Parked::spawn("test-stuck", ThreadKind::VirtioBlk).unwrap();
        // A loop that never looks at its kill event (what a guest can make
        // of a library's worker that joins a thread waiting for ever).
        let (_hold, wedge) = channel::<()>();
        let kill = EventFd::new(libc::EFD_NONBLOCK).unwrap();
        p.serve(kill, move || {
            let _ = wedge.recv();
        })
        .unwrap();
        let t = std::time::Instant::now();
        assert!(!p.stop_within(Duration::from_millis(200)), "reported stuck");
        assert!(t.elapsed() < Duration::from_secs(2));
        assert!(!p.stop(), "still stuck");
        assert!(matches!(p.start(|| ()), Err(WorkerError::Stuck)));
        let t = std::time::Instant::now();
        drop(p);
        assert!(
            t.elapsed() < Duration::from_secs(1),
            "drop does not join it"
        );
        // A slow job (not a wedged one) that ends after its deadline gives
        // the thread back.
        let mut p = Parked::spawn("test-slow", ThreadKind::VirtioBlk).unwrap();
        let kill = EventFd::new(libc::EFD_NONBLOCK).unwrap();
        p.serve(kill, || std::thread::sleep(Duration::from_millis(300)))
            .unwrap();
        assert!(!p.stop_within(Duration::from_millis(50)), "late");
        std::thread::sleep(Duration::from_millis(400));
        assert!(p.stop(), "recovered once it ended");
        p.start(|| ()).unwrap();
        p.wait();
        // A loop that does stop is waited for.
        let mut p = Parked::spawn("test-stops", ThreadKind::VirtioBlk).unwrap();
        let kill = EventFd::new(libc::EFD_NONBLOCK).unwrap();
        let k = kill.try_clone().unwrap();
        p.serve(kill, move || {
            while k.read().is_err() {
                std::thread::sleep(Duration::from_millis(5));
            }
        })
        .unwrap();
        assert!(p.stop());
        p.start(|| ()).unwrap();
    }
}

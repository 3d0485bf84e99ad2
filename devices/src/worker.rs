//! Device worker threads. Each is started with its device — before any guest
//! code runs — installs its seccomp filter first thing, and then waits for
//! work: `activate` hands it the serving loop, `reset` waits for that loop to
//! end. So a worker never inherits a vCPU thread's filter, and a vCPU thread
//! never needs the right to create threads.

use std::sync::mpsc::{channel, Receiver, Sender};
use std::thread::JoinHandle;

use vmm_sys_util::eventfd::EventFd;

use seccomp_policies::ThreadKind;

type Job = Box<dyn FnOnce() + Send>;

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
}

/// A parked worker thread.
#[derive(Debug)]
pub struct Parked {
    jobs: Option<Sender<Job>>,
    done: Receiver<()>,
    busy: bool,
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
            kill: None,
            thread: Some(thread),
        })
    }

    /// Runs `job` on the worker (after the previous one has been waited for).
    pub fn start(&mut self, job: impl FnOnce() + Send + 'static) -> Result<(), WorkerError> {
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
    /// waits for it.
    pub fn stop(&mut self) {
        if let Some(k) = self.kill.take() {
            let _ = k.write(1);
            self.wait();
        }
    }

    /// Waits until the running job (if any) has returned.
    pub fn wait(&mut self) {
        if self.busy {
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
            let _ = t.join();
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
}

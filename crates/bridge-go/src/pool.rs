//! The threads Go calls run on, off the async runtime.
//!
//! Not tokio's blocking pool: a Go call stuck past its deadline cannot be cancelled, and a
//! runtime waits for its blocking tasks when it shuts down, so one stuck call would hold up
//! the host's shutdown. Here a call is handed to an idle thread directly (never queued
//! behind a busy, possibly stuck, one), or to a new thread when none is idle; threads idle for
//! [`IDLE_EXIT`] end.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Condvar, Mutex, MutexGuard, PoisonError};
use std::time::{Duration, Instant};

/// A call: runs on a pool thread and answers what delivers its result, which the thread calls
/// once it is back on the idle list, so that a caller answered at once finds it there.
pub(crate) type Job = Box<dyn FnOnce() -> Deliver + Send>;
/// Hands a finished call's result to its caller.
pub(crate) type Deliver = Box<dyn FnOnce() + Send>;

/// How long an idle thread waits for a call before it ends.
const IDLE_EXIT: Duration = Duration::from_secs(60);

/// How long a thread that just finished a call watches for the next before it sleeps: a
/// sleeping thread takes microseconds to wake, as long as a whole call of a small handler.
const SPIN: Duration = Duration::from_micros(20);

/// Threads for blocking calls, grown on demand.
#[derive(Default)]
pub(crate) struct Pool {
    idle: Arc<Mutex<Vec<Arc<Worker>>>>,
}

/// One thread's mailbox.
#[derive(Default)]
struct Worker {
    job: Mutex<Option<Job>>,
    /// Set with `job`, so that a spinning thread notices it without taking the lock.
    given: AtomicBool,
    ready: Condvar,
}

fn lock<T>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    // Jobs run outside every lock, so a poisoned lock only means a panic between two plain
    // assignments: the data is consistent.
    mutex.lock().unwrap_or_else(PoisonError::into_inner)
}

impl Pool {
    /// Runs `job` on a thread of the pool; fails only if no thread can be started.
    pub(crate) fn execute(&self, job: Job) -> std::io::Result<()> {
        let worker = lock(&self.idle).pop();
        match worker {
            Some(worker) => {
                let mut slot = lock(&worker.job);
                *slot = Some(job);
                worker.given.store(true, Ordering::Release);
                drop(slot);
                worker.ready.notify_one();
                Ok(())
            }
            None => {
                let idle = Arc::clone(&self.idle);
                std::thread::Builder::new()
                    .name("angzarr-go".into())
                    .spawn(move || serve(&idle, job))
                    .map(drop)
            }
        }
    }
}

/// A thread's life: run a job, offer itself as idle, wait for the next one.
fn serve(idle: &Mutex<Vec<Arc<Worker>>>, mut job: Job) {
    let me = Arc::new(Worker::default());
    loop {
        let deliver = job();
        // Idle before the caller hears back: a caller that sends its next call at once must
        // find this thread, not start another.
        lock(idle).push(Arc::clone(&me));
        deliver();
        let spin = Instant::now();
        while !me.given.load(Ordering::Acquire) && spin.elapsed() < SPIN {
            std::hint::spin_loop();
        }
        let mut slot = lock(&me.job);
        job = loop {
            if let Some(next) = slot.take() {
                me.given.store(false, Ordering::Relaxed);
                break next;
            }
            let (guard, wait) = me
                .ready
                .wait_timeout(slot, IDLE_EXIT)
                .unwrap_or_else(PoisonError::into_inner);
            slot = guard;
            if wait.timed_out() && slot.is_none() {
                // Leave, unless a caller has just taken this thread off the idle list: then
                // its job is on the way.
                let mut idle = lock(idle);
                if let Some(at) = idle.iter().position(|w| Arc::ptr_eq(w, &me)) {
                    idle.remove(at);
                    return;
                }
            }
        };
    }
}

//! The threads that call Python. Not tokio's blocking pool: a handler that never returns
//! would keep a blocking thread, and a tokio runtime waits for its blocking threads when it
//! shuts down. These threads are the logic's own and are never waited for.

use std::collections::VecDeque;
use std::panic::{AssertUnwindSafe, catch_unwind};
use std::sync::{Arc, Condvar, Mutex, MutexGuard, PoisonError};

use angzarr_ports::ClientLogicError;
use angzarr_proto::v1::{BusinessReply, ContextualCommand};
use prost::Message;
use pyo3::prelude::*;
use pyo3::types::PyBytes;
use tokio::sync::{OwnedSemaphorePermit, oneshot};

pub(crate) use crate::interpreter::Call;
use crate::{HANDLER, interpreter};

/// One call, from the caller to a worker.
pub(crate) struct Job {
    pub(crate) command: ContextualCommand,
    pub(crate) reply: oneshot::Sender<Result<BusinessReply, ClientLogicError>>,
    pub(crate) call: Arc<Call>,
    /// The caller's slot, held until the handler really returns.
    pub(crate) slot: OwnedSemaphorePermit,
}

/// Worker threads started on demand, at most one per slot, so that a call that holds a slot
/// always has a thread.
pub(crate) struct Pool {
    handler: Py<PyAny>,
    queue: Mutex<Queue>,
    ready: Condvar,
    max_threads: usize,
}

#[derive(Default)]
struct Queue {
    jobs: VecDeque<Job>,
    /// Workers waiting for a job.
    idle: usize,
    /// Workers alive (idle, busy or stuck in a handler).
    threads: usize,
    closed: bool,
}

impl Pool {
    pub(crate) fn new(handler: Py<PyAny>, max_threads: usize) -> Arc<Self> {
        Arc::new(Self {
            handler,
            queue: Mutex::default(),
            ready: Condvar::new(),
            max_threads,
        })
    }

    fn queue(&self) -> MutexGuard<'_, Queue> {
        self.queue.lock().unwrap_or_else(PoisonError::into_inner)
    }

    pub(crate) fn submit(self: &Arc<Self>, job: Job) {
        let mut queue = self.queue();
        queue.jobs.push_back(job);
        if queue.jobs.len() > queue.idle && queue.threads < self.max_threads {
            queue.threads += 1;
            let pool = self.clone();
            let started = std::thread::Builder::new()
                .name("angzarr-python".into())
                // CPython sizes its recursion limits for the usual 8 MiB main stack, not
                // Rust's 2 MiB default for threads.
                .stack_size(8 << 20)
                .spawn(move || worker(&pool));
            if let Err(error) = started {
                queue.threads -= 1;
                if queue.threads == 0 {
                    // Nobody will take the job: answer it now.
                    let message = format!("cannot start a Python worker thread: {error}");
                    for job in queue.jobs.drain(..) {
                        let _ = job
                            .reply
                            .send(Err(ClientLogicError::Failed(message.clone())));
                    }
                }
            }
        }
        drop(queue);
        self.ready.notify_one();
    }

    /// Lets the workers end once the queue is empty.
    pub(crate) fn close(&self) {
        self.queue().closed = true;
        self.ready.notify_all();
    }

    fn next(&self) -> Option<Job> {
        let mut queue = self.queue();
        loop {
            if let Some(job) = queue.jobs.pop_front() {
                return Some(job);
            }
            if queue.closed {
                return None;
            }
            queue.idle += 1;
            queue = self
                .ready
                .wait(queue)
                .unwrap_or_else(PoisonError::into_inner);
            queue.idle -= 1;
        }
    }
}

/// Counts a worker out however it ends.
struct Exit<'a>(&'a Pool);

impl Drop for Exit<'_> {
    fn drop(&mut self) {
        self.0.queue().threads -= 1;
    }
}

fn worker(pool: &Pool) {
    let _exit = Exit(pool);
    let _ = catch_unwind(AssertUnwindSafe(|| {
        // Attached for the thread's lifetime and detached while waiting: the thread keeps one
        // Python thread state (and one thread id) instead of making one per call.
        Python::attach(|py| {
            let thread = py
                .import("threading")
                .and_then(|threading| threading.call_method0("get_ident"))
                .and_then(|ident| ident.extract::<u64>())
                .ok();
            py.detach(|| {
                while let Some(job) = pool.next() {
                    run(pool, thread, job);
                }
            });
        });
    }));
}

fn run(pool: &Pool, thread: Option<u64>, job: Job) {
    let Job {
        command,
        reply,
        call,
        slot,
    } = job;
    if reply.is_closed() {
        // The caller gave up while the job was queued.
        return;
    }
    let outcome = catch_unwind(AssertUnwindSafe(|| {
        Python::attach(|py| decide(py, &pool.handler, thread, &call, &command))
    }))
    .unwrap_or_else(|panic| {
        let message = panic
            .downcast_ref::<&str>()
            .map(|s| (*s).to_owned())
            .or_else(|| panic.downcast_ref::<String>().cloned())
            .unwrap_or_else(|| "unknown panic payload".into());
        Err(ClientLogicError::Failed(format!(
            "the Python bridge panicked: {message}"
        )))
    });
    drop(slot);
    let _ = reply.send(outcome);
}

/// Calls the handler with the encoded command and decodes its reply.
fn decide(
    py: Python<'_>,
    handler: &Py<PyAny>,
    thread: Option<u64>,
    call: &Call,
    command: &ContextualCommand,
) -> Result<BusinessReply, ClientLogicError> {
    // Encoded straight into the `bytes` object: no intermediate buffer.
    let argument = PyBytes::new_with(py, command.encoded_len(), |mut buffer| {
        command
            .encode(&mut buffer)
            .map_err(|error| pyo3::exceptions::PyValueError::new_err(error.to_string()))
    })
    .map_err(|error| ClientLogicError::Failed(interpreter::describe(py, &error)))?;
    let started = match thread {
        Some(thread) => call.start(py, thread),
        None => true, // Without a thread id the call cannot be interrupted, only timed out.
    };
    if !started {
        return Err(ClientLogicError::Failed(
            "the caller gave up before the call started".into(),
        ));
    }
    let result = handler.bind(py).call1((argument,));
    call.finish(py);
    let reply = result.map_err(|error| interpreter::exception(py, &error))?;
    let bytes = reply.cast::<PyBytes>().map_err(|_| {
        let found = reply
            .get_type()
            .name()
            .map_or_else(|_| "?".into(), |name| name.to_string());
        ClientLogicError::InvalidReply(format!("{HANDLER} returned a {found}, not bytes"))
    })?;
    let reply = BusinessReply::decode(bytes.as_bytes())
        .map_err(|error| ClientLogicError::InvalidReply(format!("not a BusinessReply: {error}")))?;
    if reply.outcome.is_none() {
        return Err(ClientLogicError::InvalidReply(
            "the reply has neither events nor a rejection".into(),
        ));
    }
    Ok(reply)
}

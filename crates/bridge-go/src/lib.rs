#![doc = include_str!("../README.md")]

mod ffi;
mod pool;

use std::panic::{AssertUnwindSafe, catch_unwind};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU8, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant};

use angzarr_ports::{ClientLogic, ClientLogicError, async_trait};
use angzarr_proto::v1::{BusinessReply, ContextualCommand};
use prost::Message;
use tokio::sync::Semaphore;
use tokio::sync::oneshot::error::TryRecvError;

pub use ffi::ABI_VERSION;

/// Why a Go library could not be loaded. Each is a start-up error: the library is not the one
/// the configuration meant, or not built for this angzarr.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum LoadError {
    /// The dynamic loader could not load the file.
    #[error("cannot load the Go library {path}: {message}")]
    Open {
        /// The library's path.
        path: PathBuf,
        /// What the loader said.
        message: String,
    },
    /// The library lacks a function of the ABI: it is not an angzarr Go library (its package
    /// main must import `github.com/angzarr-io/angzarr/go/cshared`).
    #[error(
        "{path} is not an angzarr Go library: it does not export `{symbol}` ({message}); \
         its package main must import the angzarr module's cshared package"
    )]
    MissingSymbol {
        /// The library's path.
        path: PathBuf,
        /// The missing function.
        symbol: &'static str,
        /// What the loader said.
        message: String,
    },
    /// The library speaks another version of the ABI.
    #[error(
        "{path} speaks version {found} of the angzarr Go ABI, this angzarr speaks version \
         {expected}: rebuild it against the matching angzarr Go module"
    )]
    AbiVersion {
        /// The library's path.
        path: PathBuf,
        /// The version the library exports.
        found: u32,
        /// [`ABI_VERSION`].
        expected: u32,
    },
    /// Another Go library is loaded in this process already. Two Go runtimes in one process
    /// do not work reliably (signal handlers, thread-local storage), so one library serves
    /// every Go domain, dispatching on the command's cover domain.
    #[error(
        "cannot load the Go library {requested}: {loaded} is loaded already, and a process runs \
         one Go runtime; serve every Go domain from one library (angzarr.Domains)"
    )]
    AnotherLibrary {
        /// The library already loaded.
        loaded: PathBuf,
        /// The library asked for.
        requested: PathBuf,
    },
}

/// A Go library loaded in this process: at most one per process, loaded once and never
/// unloaded (a Go runtime cannot be).
pub struct GoLibrary {
    path: PathBuf,
    abi: ffi::Abi,
    pool: pool::Pool,
}

/// The library loaded in this process, if any.
static LOADED: Mutex<Loaded> = Mutex::new(Loaded::Nothing);

/// What this process loaded: a Go runtime, once started, stays.
enum Loaded {
    Nothing,
    Library(Arc<GoLibrary>),
    /// Opened (its Go runtime and init functions ran) and then refused (wrong ABI version,
    /// missing symbol): another library would start a second runtime.
    Refused(PathBuf),
}

impl GoLibrary {
    /// Loads the library at `path` and checks its ABI, or returns the library already loaded
    /// from that path: several domains share one library, and so one Go runtime. A different
    /// library while one is loaded is [`LoadError::AnotherLibrary`], refused before it is
    /// opened.
    ///
    /// Loading runs the library's Go init functions (where it registers its logic).
    pub fn load(path: impl AsRef<Path>) -> Result<Arc<Self>, LoadError> {
        let path = path.as_ref();
        // The same file under two names is one library; a bare name the loader searches for
        // is kept as it is.
        let requested = std::fs::canonicalize(path).unwrap_or_else(|_| path.to_owned());
        let mut loaded = LOADED.lock().unwrap_or_else(PoisonError::into_inner);
        let other = match &*loaded {
            Loaded::Library(library) if library.path == requested => {
                return Ok(Arc::clone(library));
            }
            Loaded::Library(library) => Some(&library.path),
            Loaded::Refused(path) if *path != requested => Some(path),
            Loaded::Refused(_) | Loaded::Nothing => None,
        };
        if let Some(other) = other {
            return Err(LoadError::AnotherLibrary {
                loaded: other.clone(),
                requested,
            });
        }
        let abi = match ffi::Abi::open(&requested) {
            Ok(abi) => abi,
            Err(refusal) => {
                if refusal.go_runtime {
                    *loaded = Loaded::Refused(requested);
                }
                return Err(refusal.error);
            }
        };
        let library = Arc::new(Self {
            abi,
            path: requested,
            pool: pool::Pool::default(),
        });
        *loaded = Loaded::Library(Arc::clone(&library));
        Ok(library)
    }

    /// The library's path (canonical when it names a file).
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// One call of the ABI on the calling thread, which it blocks: the encoded
    /// `ContextualCommand` in, the encoded `BusinessReply` out, or the library's typed error.
    /// Not for async code: [`GoLogic`] runs calls on threads of its own, with a deadline.
    pub fn call_blocking(
        &self,
        snapshot_every: u64,
        command: &[u8],
    ) -> Result<Vec<u8>, ClientLogicError> {
        self.abi.call(snapshot_every, command, |status, bytes| {
            status_result(status, bytes).map(|()| bytes.to_vec())
        })
    }

    /// Encodes, calls and decodes the reply in place.
    fn decide(
        &self,
        snapshot_every: u64,
        command: &ContextualCommand,
    ) -> Result<BusinessReply, ClientLogicError> {
        self.abi
            .call(snapshot_every, &command.encode_to_vec(), |status, bytes| {
                status_result(status, bytes)?;
                let reply = BusinessReply::decode(bytes).map_err(|error| {
                    ClientLogicError::InvalidReply(format!(
                        "{}: not an encoded BusinessReply: {error}",
                        self.path.display()
                    ))
                })?;
                if reply.outcome.is_none() {
                    return Err(ClientLogicError::InvalidReply(format!(
                        "{}: a reply with neither events nor a rejection",
                        self.path.display()
                    )));
                }
                Ok(reply)
            })
    }
}

/// The error a status of the ABI stands for (`Ok` for 0, whose bytes are the reply).
fn status_result(status: i32, bytes: &[u8]) -> Result<(), ClientLogicError> {
    let message = || String::from_utf8_lossy(bytes).into_owned();
    match status {
        0 => Ok(()),
        1 => Err(ClientLogicError::InvalidCommand(message())),
        2 => Err(ClientLogicError::InvalidHistory(message())),
        3 => Err(ClientLogicError::InvalidSnapshot(message())),
        4 => Err(ClientLogicError::Failed(message())),
        other => Err(ClientLogicError::InvalidReply(format!(
            "unknown status {other} from the Go library: {}",
            message()
        ))),
    }
}

/// The default of [`GoLogic::deadline`].
pub const DEFAULT_DEADLINE: Duration = Duration::from_secs(10);

/// The default of [`GoLogic::max_stuck_calls`].
pub const DEFAULT_MAX_STUCK_CALLS: usize = 16;

/// The default of [`GoLogic::max_in_flight`].
pub const DEFAULT_MAX_IN_FLIGHT: usize = 256;

/// Client logic in a Go library, as [`ClientLogic`]: one domain's view of a [`GoLibrary`]
/// (its snapshot interval, deadline and bound on stuck calls).
///
/// Each call runs on a thread of the library's own pool, never on the async runtime. A call
/// that misses its deadline is [`ClientLogicError::Timeout`], but its thread stays blocked in
/// Go until the Go function returns (a cgo call cannot be cancelled); while
/// [`max_stuck_calls`](Self::max_stuck_calls) such calls of this logic are still blocked,
/// further commands fail at once with [`ClientLogicError::Unavailable`] instead of piling up
/// threads.
pub struct GoLogic {
    library: Arc<GoLibrary>,
    snapshot_every: u64,
    deadline: Duration,
    max_stuck: usize,
    stuck: Arc<AtomicUsize>,
    max_in_flight: usize,
    /// One permit per call that may be in Go at once. A call holds its permit until it returns
    /// from Go, past its deadline or not: each holds a thread (and a Go thread), which Go caps
    /// for the whole process.
    in_flight: Arc<Semaphore>,
}

impl GoLogic {
    /// The logic of the library at `path` (see [`GoLibrary::load`]), without snapshots.
    pub fn load(path: impl AsRef<Path>) -> Result<Self, LoadError> {
        GoLibrary::load(path).map(Self::new)
    }

    /// The logic of `library`, without snapshots, with [`DEFAULT_DEADLINE`] and
    /// [`DEFAULT_MAX_STUCK_CALLS`].
    pub fn new(library: Arc<GoLibrary>) -> Self {
        Self {
            library,
            snapshot_every: 0,
            deadline: DEFAULT_DEADLINE,
            max_stuck: DEFAULT_MAX_STUCK_CALLS,
            stuck: Arc::default(),
            max_in_flight: DEFAULT_MAX_IN_FLIGHT,
            in_flight: Arc::new(Semaphore::new(DEFAULT_MAX_IN_FLIGHT)),
        }
    }

    /// Has the logic return the state as a snapshot whenever the aggregate's event count
    /// crosses a multiple of `events` (0 disables snapshots), as `NativeLogic` does: the
    /// value is passed to the library with every command.
    pub fn snapshot_every(mut self, events: u64) -> Self {
        self.snapshot_every = events;
        self
    }

    /// How long a call may take before it is [`ClientLogicError::Timeout`].
    pub fn deadline(mut self, deadline: Duration) -> Self {
        self.deadline = deadline;
        self
    }

    /// How many calls past their deadline may still be blocked in Go before commands are
    /// refused with [`ClientLogicError::Unavailable`].
    pub fn max_stuck_calls(mut self, calls: usize) -> Self {
        self.max_stuck = calls;
        self
    }

    /// How many calls may be in Go at once (each on a thread of its own) before commands are
    /// refused with [`ClientLogicError::Unavailable`]: a handler that hangs before any call
    /// has passed its deadline must not start a thread per command (Go aborts the process
    /// past 10,000 threads).
    pub fn max_in_flight(mut self, calls: usize) -> Self {
        self.max_in_flight = calls.min(Semaphore::MAX_PERMITS);
        self.in_flight = Arc::new(Semaphore::new(self.max_in_flight));
        self
    }

    /// The library.
    pub fn library(&self) -> &Arc<GoLibrary> {
        &self.library
    }
}

/// How long a caller looks for the answer, yielding, before it sleeps until woken.
const POLL_FOR: Duration = Duration::from_micros(20);

/// The states of one call, shared by the caller and the thread running it.
const RUNNING: u8 = 0;
const DONE: u8 = 1;
/// The caller gave up (deadline, or its future was dropped): the call counts as stuck until
/// it returns.
const ABANDONED: u8 = 2;

/// Counts the call as stuck if the caller leaves before it returned.
struct Abandon {
    call: Arc<AtomicU8>,
    stuck: Arc<AtomicUsize>,
}

impl Drop for Abandon {
    fn drop(&mut self) {
        if self.call.load(Ordering::Acquire) == RUNNING {
            // Counted first, so that the thread's decrement (after it sees ABANDONED) never
            // comes before the increment.
            self.stuck.fetch_add(1, Ordering::AcqRel);
            let abandoned =
                self.call
                    .compare_exchange(RUNNING, ABANDONED, Ordering::AcqRel, Ordering::Acquire);
            if abandoned.is_err() {
                self.stuck.fetch_sub(1, Ordering::AcqRel);
            }
        }
    }
}

#[async_trait]
impl ClientLogic for GoLogic {
    async fn handle(&self, command: ContextualCommand) -> Result<BusinessReply, ClientLogicError> {
        let stuck = self.stuck.load(Ordering::Acquire);
        if stuck >= self.max_stuck {
            return Err(ClientLogicError::Unavailable(format!(
                "{stuck} calls into {} are still blocked past their deadline",
                self.library.path.display()
            )));
        }
        // Moved into the job, and released when it returns from Go (or is never run).
        let Ok(in_flight) = Arc::clone(&self.in_flight).try_acquire_owned() else {
            return Err(ClientLogicError::Unavailable(format!(
                "{} calls into {} are in progress already",
                self.max_in_flight,
                self.library.path.display()
            )));
        };
        let (reply, answer) = tokio::sync::oneshot::channel();
        let call = Arc::new(AtomicU8::new(RUNNING));
        let job = {
            let library = Arc::clone(&self.library);
            let snapshot_every = self.snapshot_every;
            let call = Arc::clone(&call);
            let stuck = Arc::clone(&self.stuck);
            move || {
                let result = catch_unwind(AssertUnwindSafe(|| {
                    library.decide(snapshot_every, &command)
                }))
                .unwrap_or_else(|_| {
                    Err(ClientLogicError::Failed(
                        "the Go bridge panicked around the call".into(),
                    ))
                });
                if call.swap(DONE, Ordering::AcqRel) == ABANDONED {
                    stuck.fetch_sub(1, Ordering::AcqRel);
                }
                drop(in_flight);
                Box::new(move || {
                    let _ = reply.send(result);
                }) as pool::Deliver
            }
        };
        if let Err(error) = self.library.pool.execute(Box::new(job)) {
            return Err(ClientLogicError::Unavailable(format!(
                "cannot start a thread for a Go call: {error}"
            )));
        }
        let _abandon = Abandon {
            call,
            stuck: Arc::clone(&self.stuck),
        };
        let mut answer = answer;
        // A small handler answers within microseconds, about what waking a sleeping task costs:
        // look for the answer for a moment, yielding to the runtime's other tasks in between
        // (never blocking it), before sleeping until the answer wakes this task.
        let started = Instant::now();
        while started.elapsed() < POLL_FOR {
            match answer.try_recv() {
                Ok(result) => return result,
                Err(TryRecvError::Closed) => break,
                Err(TryRecvError::Empty) => tokio::task::yield_now().await,
            }
        }
        match tokio::time::timeout(self.deadline, answer).await {
            Ok(Ok(result)) => result,
            Ok(Err(_)) => Err(ClientLogicError::Failed(
                "the thread of the Go call ended without an answer".into(),
            )),
            Err(_) => Err(ClientLogicError::Timeout(self.deadline)),
        }
    }
}

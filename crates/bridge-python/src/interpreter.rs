//! The embedded interpreter: starting it with a typed error, describing exceptions, and
//! interrupting a handler past its deadline. The only `unsafe` of the crate is here.

// CPython calls pyo3 does not wrap; each block says why it is sound.
#![allow(unsafe_code)]

use std::mem::MaybeUninit;
use std::panic::{AssertUnwindSafe, catch_unwind};
use std::sync::mpsc::{Sender, channel};
use std::sync::{Arc, Mutex, MutexGuard, OnceLock, PoisonError};

use angzarr_ports::ClientLogicError;
use pyo3::exceptions::PyBaseException;
use pyo3::ffi;
use pyo3::prelude::*;
use pyo3::sync::PyOnceLock;
use pyo3::types::{PyDict, PyTracebackMethods, PyType};

/// Starts the interpreter once per process; later calls answer the first outcome.
///
/// Not pyo3's `Python::initialize`: `Py_InitializeEx` aborts the process when the standard
/// library cannot be found, `Py_InitializeFromConfig` answers a status that becomes
/// [`crate::LoadError::Init`]. Python's signal handlers are not installed, so Ctrl-C and
/// SIGTERM stay the host's.
pub(crate) fn initialize() -> Result<(), String> {
    static STARTED: OnceLock<Result<(), String>> = OnceLock::new();
    STARTED
        .get_or_init(|| {
            // SAFETY: `Py_IsInitialized` may be called at any time.
            if unsafe { ffi::Py_IsInitialized() } != 0 {
                // The host (or pyo3's `auto-initialize`) started it already.
                return Ok(());
            }
            let mut config = MaybeUninit::<ffi::PyConfig>::uninit();
            // SAFETY: `PyConfig_InitPythonConfig` initialises every field of the struct it is
            // given (the documented way to make a `PyConfig`), so it is initialised after it;
            // `Py_InitializeFromConfig` only reads it; `PyConfig_Clear` frees what the
            // initialisation allocated, once. The interpreter is not running yet (checked
            // above) and `OnceLock` runs this at most once, so nothing races the start.
            let status = unsafe {
                ffi::PyConfig_InitPythonConfig(config.as_mut_ptr());
                let config = config.assume_init_mut();
                config.install_signal_handlers = 0;
                config.parse_argv = 0;
                let status = ffi::Py_InitializeFromConfig(config);
                ffi::PyConfig_Clear(config);
                status
            };
            // SAFETY: `status` is the value `Py_InitializeFromConfig` returned.
            if unsafe { ffi::PyStatus_Exception(status) } != 0 {
                return Err(status_message(&status));
            }
            // SAFETY: a successful start leaves this thread holding the GIL with the main
            // thread state; releasing it is what pyo3's own `initialize` does, and what its
            // `Python::attach` expects (it reattaches this thread to that state).
            unsafe { ffi::PyEval_SaveThread() };
            Ok(())
        })
        .clone()
}

/// The text of a failed `PyStatus`: the C function that failed and its message.
fn status_message(status: &ffi::PyStatus) -> String {
    let text = |pointer: *const std::ffi::c_char| {
        (!pointer.is_null()).then(|| {
            // SAFETY: a non-null `func` or `err_msg` of a `PyStatus` is a static
            // NUL-terminated C string (CPython sets them from string literals).
            unsafe { std::ffi::CStr::from_ptr(pointer) }
                .to_string_lossy()
                .into_owned()
        })
    };
    match (text(status.func), text(status.err_msg)) {
        (Some(func), Some(message)) => format!("{func}: {message}"),
        (None, Some(message)) => message,
        (Some(func), None) => format!("{func} failed"),
        (None, None) => format!("exit code {}", status.exitcode),
    }
}

/// `Type: message` and the traceback of a Python exception, for [`ClientLogicError::Failed`]
/// and load errors.
pub(crate) fn describe(py: Python<'_>, error: &PyErr) -> String {
    let kind = error
        .get_type(py)
        .fully_qualified_name()
        .map_or_else(|_| "<unnamed exception>".into(), |name| name.to_string());
    let message = message(py, error);
    let mut text = if message.is_empty() {
        kind
    } else {
        format!("{kind}: {message}")
    };
    if let Some(traceback) = error.traceback(py).and_then(|tb| tb.format().ok()) {
        text.push_str("\nTraceback (most recent call last):\n");
        text.push_str(traceback.trim_end());
    }
    text
}

/// `str(exception)`, which may itself raise.
fn message(py: Python<'_>, error: &PyErr) -> String {
    error
        .value(py)
        .str()
        .map_or_else(|_| "<unprintable message>".into(), |text| text.to_string())
}

/// The error a handler's exception becomes: the classes of the `angzarr` package name their
/// kind in a class attribute `angzarr_error` (checked by name, so the bridge needs no import
/// of the package and works with any copy of it); anything else failed.
pub(crate) fn exception(py: Python<'_>, error: &PyErr) -> ClientLogicError {
    let kind = error
        .get_type(py)
        .getattr("angzarr_error")
        .ok()
        .and_then(|kind| kind.extract::<String>().ok());
    match kind.as_deref() {
        Some("invalid_command") => ClientLogicError::InvalidCommand(message(py, error)),
        Some("invalid_history") => ClientLogicError::InvalidHistory(message(py, error)),
        Some("invalid_snapshot") => ClientLogicError::InvalidSnapshot(message(py, error)),
        _ => ClientLogicError::Failed(describe(py, error)),
    }
}

/// One call's progress, for interrupting it past its deadline without ever raising in
/// another call that the same worker thread runs later.
#[derive(Debug, Default)]
pub(crate) struct Call {
    phase: Mutex<Phase>,
}

#[derive(Debug, Default)]
struct Phase {
    /// The Python thread id of the worker running the handler, once started.
    thread: Option<u64>,
    /// The caller gave up: do not start.
    abandoned: bool,
    /// An exception was scheduled in the handler's thread.
    interrupted: bool,
    /// The handler returned.
    done: bool,
}

impl Call {
    fn phase(&self) -> MutexGuard<'_, Phase> {
        self.phase.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Marks the handler as running on `thread`; false if the caller already gave up.
    /// Called under the GIL, right before the handler.
    pub(crate) fn start(&self, _py: Python<'_>, thread: u64) -> bool {
        let mut phase = self.phase();
        if phase.abandoned {
            return false;
        }
        phase.thread = Some(thread);
        true
    }

    /// Marks the handler as returned, and withdraws an exception scheduled too late to be
    /// raised in it (it would go off in the thread's next call). Called under the GIL, right
    /// after the handler, before any other Python code runs on this thread.
    pub(crate) fn finish(&self, py: Python<'_>) {
        let mut phase = self.phase();
        phase.done = true;
        if let (true, Some(thread)) = (phase.interrupted, phase.thread) {
            set_async_exc(py, thread, None);
        }
    }

    /// The caller gave up: a queued call will not start. True if the handler is running.
    fn abandon(&self) -> bool {
        let mut phase = self.phase();
        phase.abandoned = true;
        phase.thread.is_some() && !phase.done
    }

    /// Raises `DeadlineExceeded` in the handler, if it still runs.
    fn raise_deadline(&self, py: Python<'_>) {
        // Made (or found) before the lock: making it the first time may release the GIL,
        // and a handler finishing meanwhile would wait for the lock while holding the GIL.
        // Without the class (it could not be made) there is no interruption: the call still
        // timed out.
        let Ok(class) = deadline_exceeded(py) else {
            return;
        };
        let mut phase = self.phase();
        // The GIL and this lock are held, and `finish` takes both: the handler is still
        // between `start` and `finish`, so the exception can only go off in it (or be
        // withdrawn by `finish`).
        if let (Some(thread), false, false) = (phase.thread, phase.done, phase.interrupted) {
            set_async_exc(py, thread, Some(class.as_any()));
            phase.interrupted = true;
        }
    }
}

/// Schedules `exception` (a class) to be raised in the Python thread `thread` the next time
/// it runs Python code, or withdraws a scheduled one (`None`).
fn set_async_exc(_py: Python<'_>, thread: u64, exception: Option<&Bound<'_, PyAny>>) {
    let exception = exception.map_or(std::ptr::null_mut(), Bound::as_ptr);
    // SAFETY: the `Python` token proves the GIL is held, which `PyThreadState_SetAsyncExc`
    // requires; `exception` is null (withdraw) or a live class the caller borrows for the
    // duration of the call (CPython takes its own reference). The thread id is one that
    // `threading.get_ident` gave; an id without a thread state matches nothing. The C
    // parameter is an `unsigned long`, declared `long` by pyo3-ffi: the same bits.
    unsafe {
        ffi::PyThreadState_SetAsyncExc(thread as std::ffi::c_long, exception);
    }
}

/// `angzarr_bridge.DeadlineExceeded`, a `BaseException` (not an `Exception`, so that a
/// handler's `except Exception` does not swallow it).
fn deadline_exceeded(py: Python<'_>) -> PyResult<&Bound<'_, PyType>> {
    static CLASS: PyOnceLock<Py<PyType>> = PyOnceLock::new();
    CLASS
        .get_or_try_init(py, || {
            let namespace = PyDict::new(py);
            namespace.set_item("__module__", "angzarr_bridge")?;
            namespace.set_item(
                "__doc__",
                "Raised in a handler that ran past the bridge's deadline.",
            )?;
            let class = py.get_type::<PyType>().call1((
                "DeadlineExceeded",
                (py.get_type::<PyBaseException>(),),
                namespace,
            ))?;
            Ok(class.cast_into::<PyType>()?.unbind())
        })
        .map(|class| class.bind(py))
}

/// Gives up on `call`: a queued call will not start, a running handler gets
/// `DeadlineExceeded` raised in it the next time it runs Python code (a handler blocked in
/// C, such as `time.sleep` or a socket read, is not woken: its worker stays busy until it
/// returns). Never blocks: the GIL is taken on a thread of its own.
pub(crate) fn interrupt(call: Arc<Call>) {
    if !call.abandon() {
        return;
    }
    static INTERRUPTER: OnceLock<Option<Sender<Arc<Call>>>> = OnceLock::new();
    let interrupter = INTERRUPTER.get_or_init(|| {
        let (sender, receiver) = channel::<Arc<Call>>();
        std::thread::Builder::new()
            .name("angzarr-python-interrupter".into())
            .spawn(move || {
                for call in receiver {
                    let _ = catch_unwind(AssertUnwindSafe(|| {
                        Python::attach(|py| call.raise_deadline(py));
                    }));
                }
            })
            .ok()
            .map(|_| sender)
    });
    if let Some(sender) = interrupter {
        let _ = sender.send(call);
    }
}

#![doc = include_str!("../README.md")]

mod interpreter;
mod pool;

use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

use angzarr_ports::{ClientLogic, ClientLogicError, async_trait};
use angzarr_proto::v1::{BusinessReply, ContextualCommand};
use pyo3::prelude::*;
use pyo3::types::PyAnyMethods;
use tokio::sync::oneshot::error::TryRecvError;
use tokio::sync::{Semaphore, oneshot};

use crate::pool::{Call, Job, Pool};

/// The name of the function the configured module must expose: `handle(bytes) -> bytes`.
pub const HANDLER: &str = "handle";

/// Which Python module to load, and how calls into it are bounded.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PythonConfig {
    module: String,
    paths: Vec<PathBuf>,
    deadline: Duration,
    max_in_flight: usize,
}

impl PythonConfig {
    /// How long a call may take, queueing included, before [`ClientLogicError::Timeout`].
    pub const DEFAULT_DEADLINE: Duration = Duration::from_secs(10);
    /// How many calls may be in Python at once, stuck ones included.
    pub const DEFAULT_MAX_IN_FLIGHT: usize = 16;

    /// The module `module` (a dotted import name such as `bank` or `myapp.logic`), with the
    /// default deadline and bound.
    pub fn new(module: impl Into<String>) -> Self {
        Self {
            module: module.into(),
            paths: Vec::new(),
            deadline: Self::DEFAULT_DEADLINE,
            max_in_flight: Self::DEFAULT_MAX_IN_FLIGHT,
        }
    }

    /// Adds a directory to `sys.path` before the import, with `site.addsitedir` (so the
    /// `.pth` files of a virtualenv's `site-packages` are honoured). Repeatable; in order.
    pub fn path(mut self, directory: impl Into<PathBuf>) -> Self {
        self.paths.push(directory.into());
        self
    }

    /// Adds several directories, as [`path`](Self::path) does.
    pub fn paths(mut self, directories: impl IntoIterator<Item = impl Into<PathBuf>>) -> Self {
        self.paths.extend(directories.into_iter().map(Into::into));
        self
    }

    /// The deadline of one call, waiting for a free slot included.
    pub fn deadline(mut self, deadline: Duration) -> Self {
        self.deadline = deadline;
        self
    }

    /// How many calls may be in Python at once. A call past its deadline keeps its slot
    /// until the handler really returns (a thread cannot be killed), so this also bounds how
    /// many threads stuck handlers can hold; once every slot is stuck, calls time out.
    pub fn max_in_flight(mut self, calls: usize) -> Self {
        self.max_in_flight = calls;
        self
    }

    /// The module name.
    pub fn module(&self) -> &str {
        &self.module
    }
}

/// Why the Python logic could not be loaded.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum LoadError {
    /// The configuration cannot work (no module name, a zero bound...).
    #[error("invalid Python logic configuration: {0}")]
    InvalidConfig(String),
    /// The embedded interpreter could not start (no standard library where it looked...).
    #[error(
        "the Python interpreter could not start: {0} (is PYTHONHOME right, and is the \
         libpython it was built with installed?)"
    )]
    Init(String),
    /// A configured `sys.path` directory does not exist.
    #[error("the Python path entry {0} is not a directory")]
    PathNotFound(PathBuf),
    /// A configured `sys.path` directory belongs to another Python version (a virtualenv's
    /// `lib/pythonX.Y/site-packages`): its compiled packages cannot load in this interpreter.
    #[error(
        "the Python path entry {path} is for Python {found}, but the embedded interpreter is \
         Python {embedded}: make the virtualenv with Python {embedded}, or build angzarr \
         against Python {found}"
    )]
    VersionMismatch {
        /// The entry.
        path: PathBuf,
        /// The version its path names.
        found: String,
        /// The embedded interpreter's version.
        embedded: String,
    },
    /// The module, or a module it imports, cannot be found.
    #[error("Python module {module} not found: {message}")]
    ModuleNotFound {
        /// The configured module.
        module: String,
        /// What Python said (which module is missing).
        message: String,
    },
    /// Importing the module raised.
    #[error("importing Python module {module} failed: {message}")]
    Import {
        /// The configured module.
        module: String,
        /// The exception, with its traceback.
        message: String,
    },
    /// The module has no `handle` attribute.
    #[error("Python module {module} has no `{HANDLER}` function")]
    NoHandler {
        /// The configured module.
        module: String,
    },
    /// The module's `handle` cannot be called.
    #[error("{module}.{HANDLER} is a {found}, not a function")]
    HandlerNotCallable {
        /// The configured module.
        module: String,
        /// The type of what was found.
        found: String,
    },
}

/// Client logic in Python, in-process: the module's `handle(bytes) -> bytes` receives an
/// encoded `ContextualCommand` and answers an encoded `BusinessReply`.
///
/// Calls run on the logic's own threads, never on the async runtime; see the crate docs for
/// the threading model, error mapping and deadlines.
pub struct PythonLogic {
    module: String,
    pool: Arc<Pool>,
    slots: Arc<Semaphore>,
    deadline: Duration,
}

impl std::fmt::Debug for PythonLogic {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PythonLogic")
            .field("module", &self.module)
            .field("deadline", &self.deadline)
            .finish_non_exhaustive()
    }
}

impl PythonLogic {
    /// Starts the interpreter (once per process), extends `sys.path` and imports the module.
    ///
    /// Blocking (it runs the module's top level): call it at startup or on a blocking thread.
    /// Loading the same module twice gives two logics over the one imported module.
    pub fn load(config: PythonConfig) -> Result<Self, LoadError> {
        if config.module.is_empty() {
            return Err(LoadError::InvalidConfig("no module name".into()));
        }
        if config.max_in_flight == 0 {
            return Err(LoadError::InvalidConfig("max_in_flight is 0".into()));
        }
        if let Some(missing) = config.paths.iter().find(|path| !path.is_dir()) {
            return Err(LoadError::PathNotFound(missing.clone()));
        }
        interpreter::initialize().map_err(LoadError::Init)?;
        let handler = Python::attach(|py| {
            let version = py.version_info();
            let embedded = format!("{}.{}", version.major, version.minor);
            if let Some((path, found)) = config.paths.iter().find_map(|path| {
                python_version_of(path)
                    .filter(|found| *found != embedded)
                    .map(|found| (path, found))
            }) {
                return Err(LoadError::VersionMismatch {
                    path: path.clone(),
                    found,
                    embedded,
                });
            }
            import(py, &config)
        })?;
        Ok(Self {
            pool: Pool::new(handler, config.max_in_flight),
            slots: Arc::new(Semaphore::new(config.max_in_flight)),
            deadline: config.deadline,
            module: config.module,
        })
    }

    /// The loaded module's name.
    pub fn module(&self) -> &str {
        &self.module
    }

    /// The deadline of one call.
    pub fn deadline(&self) -> Duration {
        self.deadline
    }
}

/// The Python version a directory is for, if its path names one the way virtualenvs and
/// installations lay out their packages (`lib/python3.11/site-packages`).
fn python_version_of(path: &std::path::Path) -> Option<String> {
    // The last such component: the one that holds the packages, whatever directories the path
    // goes through before it.
    path.components().rev().find_map(|component| {
        let name = component.as_os_str().to_str()?;
        let (major, minor) = name.strip_prefix("python")?.split_once('.')?;
        let digits = |part: &str| !part.is_empty() && part.bytes().all(|b| b.is_ascii_digit());
        (digits(major) && digits(minor)).then(|| format!("{major}.{minor}"))
    })
}

/// Imports the module and finds its handler.
fn import(py: Python<'_>, config: &PythonConfig) -> Result<Py<PyAny>, LoadError> {
    let module = &config.module;
    let failed = |error: PyErr| LoadError::Import {
        module: module.clone(),
        message: interpreter::describe(py, &error),
    };
    if !config.paths.is_empty() {
        let site = py.import("site").map_err(failed)?;
        for path in &config.paths {
            site.call_method1("addsitedir", (path,)).map_err(failed)?;
        }
    }
    let imported = py.import(module.as_str()).map_err(|error| {
        if error.is_instance_of::<pyo3::exceptions::PyModuleNotFoundError>(py) {
            LoadError::ModuleNotFound {
                module: module.clone(),
                message: error.value(py).to_string(),
            }
        } else {
            failed(error)
        }
    })?;
    let handler = imported
        .getattr(HANDLER)
        .map_err(|_| LoadError::NoHandler {
            module: module.clone(),
        })?;
    if !handler.is_callable() {
        return Err(LoadError::HandlerNotCallable {
            module: module.clone(),
            found: handler
                .get_type()
                .name()
                .map_or_else(|_| "?".into(), |name| name.to_string()),
        });
    }
    Ok(handler.unbind())
}

#[async_trait]
impl ClientLogic for PythonLogic {
    async fn handle(&self, command: ContextualCommand) -> Result<BusinessReply, ClientLogicError> {
        let call = Arc::new(Call::default());
        let (reply, answer) = oneshot::channel();
        let attempt = async {
            // Waiting for a slot counts against the deadline: with every slot held by a stuck
            // handler, calls time out instead of piling up.
            let slot = self.slots.clone().acquire_owned().await.map_err(|_| {
                ClientLogicError::Unavailable("the Python logic is shut down".into())
            })?;
            self.pool.submit(Job {
                command,
                reply,
                call: call.clone(),
                slot,
            });
            // A small handler answers within microseconds, about what waking a sleeping task
            // costs on a multi-threaded runtime: look for the answer for a moment, yielding to
            // the runtime's other tasks in between (never blocking it), before sleeping.
            let mut answer = answer;
            let started = Instant::now();
            while started.elapsed() < POLL_FOR {
                match answer.try_recv() {
                    Ok(result) => return result,
                    Err(TryRecvError::Closed) => break,
                    Err(TryRecvError::Empty) => tokio::task::yield_now().await,
                }
            }
            answer.await.unwrap_or_else(|_| {
                Err(ClientLogicError::Failed(
                    "the Python worker dropped the call".into(),
                ))
            })
        };
        match tokio::time::timeout(self.deadline, attempt).await {
            Ok(outcome) => outcome,
            Err(_) => {
                // Raise in the handler if it runs Python code; a handler blocked in C (a
                // sleep, a socket) keeps its slot until it returns.
                interpreter::interrupt(call);
                Err(ClientLogicError::Timeout(self.deadline))
            }
        }
    }
}

/// How long a caller looks for the answer, yielding, before it sleeps until woken.
const POLL_FOR: Duration = Duration::from_micros(20);

impl Drop for PythonLogic {
    fn drop(&mut self) {
        self.slots.close();
        self.pool.close();
    }
}

#[cfg(test)]
mod tests {
    use std::path::Path;

    use super::python_version_of;

    #[test]
    fn the_python_version_of_a_site_packages_directory() {
        let of = |path: &str| python_version_of(Path::new(path));
        assert_eq!(
            of(".venv/lib/python3.12/site-packages").as_deref(),
            Some("3.12")
        );
        assert_eq!(of("/usr/lib/python3.11").as_deref(), Some("3.11"));
        assert_eq!(
            of("/home/me/python3.12/venvs/app/lib/python3.11/site-packages").as_deref(),
            Some("3.11")
        );
        // Not a version: names that only start like one.
        for path in [
            "examples/bank/python",
            "/opt/python3.12-tools",
            "/srv/python3",
            "python3.x",
        ] {
            assert_eq!(of(path), None, "{path}");
        }
    }
}

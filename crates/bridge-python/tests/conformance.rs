//! The cross-language suite over the bank written in Python (examples/bank/python/bank.py),
//! loaded in-process through the bridge.

mod common;

use std::sync::Arc;
use std::time::Duration;

use angzarr_bridge_python::PythonConfig;
use angzarr_conformance::bridge::{BridgeHarness, Fault};
use angzarr_ports::{ClientLogic, async_trait};

struct Python;

/// Loads `module` on a blocking thread (the import runs Python code).
async fn load(module: String, deadline: Duration) -> Arc<dyn ClientLogic> {
    tokio::task::spawn_blocking(move || common::load(&module, deadline))
        .await
        .map(|logic| Arc::new(logic) as Arc<dyn ClientLogic>)
        .expect("loading the Python logic panicked")
}

#[async_trait]
impl BridgeHarness for Python {
    async fn bank(&self, snapshot_every: u64) -> Arc<dyn ClientLogic> {
        load(
            common::bank_module(snapshot_every),
            PythonConfig::DEFAULT_DEADLINE,
        )
        .await
    }

    fn faults(&self) -> Vec<Fault> {
        vec![Fault::Fails, Fault::Hangs, Fault::MalformedReply]
    }

    async fn faulty(&self, _fault: Fault, deadline: Duration) -> Arc<dyn ClientLogic> {
        // One module serves every fault, on the fault's domain.
        load("bank_fixture".into(), deadline).await
    }
}

angzarr_conformance::bridge_suite!(Python);

/// The same Python bank and fixture, served out of process by `python -m angzarr.server` and
/// called through the gRPC bridge: the "any language over gRPC" path, with a server not
/// written in Rust.
mod grpc {
    use std::collections::HashMap;
    use std::io::{BufRead, BufReader};
    use std::path::PathBuf;
    use std::process::{Child, Command, Stdio};
    use std::sync::{Arc, Mutex};
    use std::time::Duration;

    use angzarr_bridge_grpc::{GrpcConfig, GrpcLogic};
    use angzarr_conformance::bridge::{BridgeHarness, Fault};
    use angzarr_ports::{ClientLogic, async_trait};

    use crate::common;

    /// The Python servers started so far, by module, killed when the harness is dropped.
    struct PythonServers {
        directory: tempfile::TempDir,
        servers: Mutex<HashMap<String, (Child, String)>>,
    }

    impl Drop for PythonServers {
        fn drop(&mut self) {
            for (_, (mut child, _)) in self.servers.lock().expect("not poisoned").drain() {
                let _ = child.kill();
                let _ = child.wait();
            }
        }
    }

    impl PythonServers {
        fn new() -> Self {
            Self {
                directory: tempfile::tempdir().expect("a temporary directory"),
                servers: Mutex::new(HashMap::new()),
            }
        }

        /// The target of a server of `module`'s `handle` on a Unix socket, started on first
        /// use; `fresh` starts another one (a server the test will kill).
        fn target(&self, module: &str, fresh: bool) -> String {
            let mut servers = self.servers.lock().expect("not poisoned");
            let key = if fresh {
                format!("{module}#{}", servers.len())
            } else {
                module.to_owned()
            };
            if let Some((_, target)) = servers.get(&key) {
                return target.clone();
            }
            let socket = self
                .directory
                .path()
                .join(format!("{}.sock", servers.len()));
            let target = format!("unix:{}", socket.display());
            let python = venv_python();
            let path = std::env::join_paths(common::paths()).expect("joinable paths");
            let mut child = Command::new(&python)
                .args(["-m", "angzarr.server", module, &target])
                .env("PYTHONPATH", path)
                .stdout(Stdio::piped())
                .spawn()
                .unwrap_or_else(|error| panic!("cannot start {}: {error}", python.display()));
            // The server prints one line once it listens.
            let mut line = String::new();
            let stdout = child.stdout.take().expect("piped stdout");
            BufReader::new(stdout)
                .read_line(&mut line)
                .expect("the server's first line");
            assert!(
                line.starts_with("serving"),
                "the Python server of {module} did not start: {line:?}"
            );
            servers.insert(key, (child, target.clone()));
            target
        }
    }

    /// The virtualenv's interpreter, next to its site-packages.
    fn venv_python() -> PathBuf {
        let site = common::site_packages();
        let venv = site
            .ancestors()
            .nth(3)
            .expect("site-packages is <venv>/lib/pythonX.Y/site-packages");
        venv.join("bin").join("python3")
    }

    fn grpc(target: &str, deadline: Duration) -> Arc<dyn ClientLogic> {
        let mut config = GrpcConfig::default();
        config.request_timeout = deadline;
        Arc::new(GrpcLogic::new(target, config).expect("a valid target"))
    }

    #[async_trait]
    impl BridgeHarness for PythonServers {
        async fn bank(&self, snapshot_every: u64) -> Arc<dyn ClientLogic> {
            let target = self.target(&common::bank_module(snapshot_every), false);
            grpc(&target, Duration::from_secs(10))
        }

        fn faults(&self) -> Vec<Fault> {
            Fault::ALL.to_vec()
        }

        async fn faulty(&self, fault: Fault, deadline: Duration) -> Arc<dyn ClientLogic> {
            let target = match fault {
                Fault::Unreachable => {
                    let nothing = self.directory.path().join("nobody-listens.sock");
                    format!("unix:{}", nothing.display())
                }
                // The fixture calls `os._exit` on `fault-dies`: a server of its own.
                Fault::DiesMidCall => self.target("bank_fixture", true),
                _ => self.target("bank_fixture", false),
            };
            grpc(&target, deadline)
        }

        fn cases(&self) -> u32 {
            32
        }
    }

    angzarr_conformance::bridge_suite!(PythonServers::new());
}

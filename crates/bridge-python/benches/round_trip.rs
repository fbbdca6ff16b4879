//! One command's round trip through the Python bridge: `ClientLogic::handle` awaited on a
//! tokio runtime, for a handler that answers a constant (the bridge's own cost) and for the
//! bank (a deposit on a warm account: its state as the snapshot, as the gateway hands it),
//! beside the native Rust bank. Prints p50, p99 and the mean of each.
//!
//! `cargo bench -p angzarr-bridge-python` (after `cargo xtask python`; set
//! `ANGZARR_TEST_PYTHON_SITE_PACKAGES` if the virtualenv is elsewhere).

use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant};

use angzarr_bridge_python::{PythonConfig, PythonLogic};
use angzarr_core::native::pack;
use angzarr_example_bank::proto::Account;
use angzarr_example_bank::{command, deposit};
use angzarr_ports::ClientLogic;
use angzarr_proto::v1::{ContextualCommand, EventBook, Snapshot};
use uuid::Uuid;

const WARMUP: usize = 2_000;
const CALLS: usize = 20_000;

fn site_packages() -> String {
    if let Some(path) = std::env::var_os("ANGZARR_TEST_PYTHON_SITE_PACKAGES") {
        return path.to_string_lossy().into_owned();
    }
    let venv = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../target/services/venv/lib");
    std::fs::read_dir(&venv)
        .ok()
        .into_iter()
        .flatten()
        .flatten()
        .map(|entry| entry.path().join("site-packages"))
        .find(|path| path.is_dir())
        .unwrap_or_else(|| {
            panic!(
                "no virtualenv in {}: run `cargo xtask python`",
                venv.display()
            )
        })
        .to_string_lossy()
        .into_owned()
}

fn python(module: &str) -> Arc<dyn ClientLogic> {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("../..");
    let config = PythonConfig::new(module).paths([
        site_packages().into(),
        root.join("python"),
        root.join("examples/bank/python"),
        root.join("crates/bridge-python/tests/python"),
    ]);
    Arc::new(PythonLogic::load(config).unwrap_or_else(|e| panic!("cannot load {module}: {e}")))
}

/// A deposit on an open account whose state comes as the snapshot, as on a warm aggregate.
fn warm_deposit() -> ContextualCommand {
    let account = Account {
        open: true,
        owner: "ada".into(),
        balance: 1_000,
    };
    ContextualCommand {
        events: Some(EventBook {
            snapshot: Some(Snapshot {
                sequence: 41,
                state: Some(pack(&account)),
            }),
            ..EventBook::default()
        }),
        command: Some(command(Uuid::new_v4(), &deposit(5))),
    }
}

fn measure(runtime: &tokio::runtime::Runtime, name: &str, logic: &Arc<dyn ClientLogic>) {
    let request = warm_deposit();
    let mut times: Vec<Duration> = Vec::with_capacity(CALLS);
    runtime.block_on(async {
        for i in 0..WARMUP + CALLS {
            let request = request.clone();
            let start = Instant::now();
            let reply = logic.handle(request).await;
            let elapsed = start.elapsed();
            assert!(reply.is_ok(), "{name}: {reply:?}");
            if i >= WARMUP {
                times.push(elapsed);
            }
        }
    });
    times.sort();
    let at = |q: f64| times[((times.len() as f64 * q) as usize).min(times.len() - 1)];
    let mean = times.iter().sum::<Duration>() / times.len() as u32;
    println!(
        "{name:<28} p50 {:>7.1} µs   p99 {:>7.1} µs   mean {:>7.1} µs   ({CALLS} calls)",
        at(0.50).as_secs_f64() * 1e6,
        at(0.99).as_secs_f64() * 1e6,
        mean.as_secs_f64() * 1e6,
    );
}

fn main() {
    // `cargo bench` passes `--bench`; `cargo test --benches` runs it once, briefly: only
    // check that it works then.
    if !std::env::args().any(|arg| arg == "--bench") {
        let runtime = tokio::runtime::Runtime::new().unwrap();
        let reply = runtime.block_on(python("bank").handle(warm_deposit()));
        assert!(reply.is_ok(), "{reply:?}");
        return;
    }
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    let native: Arc<dyn ClientLogic> = Arc::new(angzarr_example_bank::logic(0));
    measure(&runtime, "native Rust bank", &native);
    measure(&runtime, "python empty handler", &python("empty_handler"));
    measure(&runtime, "python bank", &python("bank"));
}

//! Every client-logic bridge side by side, in one run:
//!
//! 1. the round trip of one command through `ClientLogic::handle` (p50, p99 of sequential
//!    calls after a warm-up), for a handler that emits nothing and for the bank (a deposit on
//!    a warm account, whose state comes as the snapshot, as the gateway hands it over);
//! 2. commands per second through the whole pipeline (`Gateway` with the bank: accounts
//!    opened, then deposits), on the in-memory store and on SQLite, with one client on one
//!    account and with 16 concurrent clients on 16 accounts.
//!
//! The bridges: native Rust; Go in-process (the bridge's fixture library, which serves the
//! bank on `account` and an empty handler on `empty`, since a process runs one Go runtime);
//! Python in-process; gRPC to a Rust `serve_logic` on a runtime of its own (so that only the
//! transport is added), over a Unix socket and over loopback TCP; gRPC to the Python
//! package's server (`python -m angzarr.server`, a child process) over a Unix socket.
//!
//! ```sh
//! eval "$(cargo xtask python | grep ^export)"; eval "$(cargo xtask go build)"
//! cargo bench -p angzarr --features python,go-ffi --bench bridges
//! ```
//!
//! `cargo bench` passes `--bench`; without it (`cargo test --benches`) every case runs a few
//! calls, as a smoke test, and nothing is printed but a line.

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, ChildStdout, Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use angzarr_bridge_go::{GoLibrary, GoLogic};
use angzarr_bridge_grpc::{GrpcConfig, GrpcLogic, LogicListener, ServeConfig, serve_logic};
use angzarr_bridge_python::{PythonConfig, PythonLogic};
use angzarr_core::Gateway;
use angzarr_core::native::pack;
use angzarr_example_bank::{Account, DOMAIN, command, deposit, open};
use angzarr_ports::{BusinessReply, ClientLogic, ClientLogicError, ContextualCommand, Domain};
use angzarr_proto::v1::{EventBook, EventsEmitted, Snapshot, business_reply::Outcome};
use angzarr_store_memory::MemoryStore;
use angzarr_store_sqlite::{SqliteConfig, SqliteStore, Synchronous};
use tokio::runtime::Runtime;
use uuid::Uuid;

/// The bank's snapshot interval everywhere: `examples/bank/python/bank.py` fixes 100, so the
/// native, Go and Rust-served banks use it too and every bridge writes the same snapshots.
const SNAPSHOT_EVERY: u64 = 100;

/// The Go fixture's domain whose handler emits nothing.
const EMPTY_DOMAIN: &str = "empty";

/// Concurrent clients of the second pipeline figure, each on an account of its own.
const CLIENTS: usize = 16;

/// How much each case runs.
struct Scale {
    /// Round trips before the measured ones.
    warmup: usize,
    /// Measured round trips of an in-process bridge.
    calls: usize,
    /// Measured round trips over gRPC (ten times slower each).
    grpc_calls: usize,
    /// Pipeline: commands before the clock starts (caches filled, connections and worker
    /// threads up), as long as this.
    pipeline_warmup: Duration,
    /// Pipeline: how long the clients send commands.
    pipeline: Duration,
}

const FULL: Scale = Scale {
    warmup: 5_000,
    calls: 50_000,
    grpc_calls: 20_000,
    pipeline_warmup: Duration::from_millis(250),
    pipeline: Duration::from_millis(1_500),
};

const QUICK: Scale = Scale {
    warmup: 5,
    calls: 20,
    grpc_calls: 20,
    pipeline_warmup: Duration::from_millis(10),
    pipeline: Duration::from_millis(20),
};

/// Decides nothing: the bridge's own cost.
struct Empty;

#[angzarr_ports::async_trait]
impl ClientLogic for Empty {
    async fn handle(&self, _: ContextualCommand) -> Result<BusinessReply, ClientLogicError> {
        Ok(BusinessReply {
            outcome: Some(Outcome::Events(EventsEmitted::default())),
        })
    }
}

/// One bridge's logic: the empty handler and the bank.
struct Logic {
    empty: Arc<dyn ClientLogic>,
    bank: Arc<dyn ClientLogic>,
}

struct Bridge {
    name: &'static str,
    /// The goal for the empty handler's p50, in µs.
    goal_us: Option<f64>,
    /// Builds the logic. Called in the runtime that will drive it: a gRPC channel's
    /// connection is a task of the runtime that made it.
    make: Box<dyn Fn() -> Logic>,
    /// Over gRPC: fewer calls are measured.
    grpc: bool,
}

fn main() {
    let quick = !std::env::args().any(|arg| arg == "--bench");
    let scale = if quick { &QUICK } else { &FULL };
    let go_library = required("ANGZARR_TEST_GO_FIXTURE_LIB", "cargo xtask go build");
    let site_packages = required("ANGZARR_TEST_PYTHON_SITE_PACKAGES", "cargo xtask python");
    let dir = tempfile::tempdir().expect("a temporary directory");
    let started = Instant::now();

    // The gateway's kind of runtime: multi-thread, as many workers as cores.
    let client = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .expect("the client runtime");
    // The Rust logic servers' runtime, another process's in a deployment.
    let servers = tokio::runtime::Builder::new_multi_thread()
        .thread_name("logic-server")
        .enable_all()
        .build()
        .expect("the servers' runtime");
    let bank: Arc<dyn ClientLogic> = Arc::new(angzarr_example_bank::logic(SNAPSHOT_EVERY));
    let empty: Arc<dyn ClientLogic> = Arc::new(Empty);
    let uds = |name: &str| format!("unix:{}", dir.path().join(name).display());
    let rust_uds = [
        serve(&servers, empty.clone(), &uds("rust-empty.sock")),
        serve(&servers, bank.clone(), &uds("rust-bank.sock")),
    ];
    let rust_tcp = [
        serve(&servers, empty.clone(), "127.0.0.1:0"),
        serve(&servers, bank.clone(), "127.0.0.1:0"),
    ];
    let python_servers = [
        PythonServer::start(&site_packages, "empty_handler", &uds("python-empty.sock")),
        PythonServer::start(&site_packages, "bank", &uds("python-bank.sock")),
    ];
    let python_uds = python_servers
        .each_ref()
        .map(|server| server.target.clone());

    let go: Arc<dyn ClientLogic> = Arc::new(
        GoLogic::new(GoLibrary::load(&go_library).unwrap_or_else(|error| panic!("{error}")))
            .snapshot_every(SNAPSHOT_EVERY),
    );
    let python_empty = python_logic(&site_packages, "empty_handler");
    let python_bank = python_logic(&site_packages, "bank");

    let bridges = [
        Bridge {
            name: "native Rust",
            goal_us: Some(1.0),
            make: Box::new(move || Logic {
                empty: empty.clone(),
                bank: bank.clone(),
            }),
            grpc: false,
        },
        Bridge {
            name: "Go in-process",
            goal_us: Some(5.0),
            // One library, dispatching on the command's domain.
            make: Box::new(move || Logic {
                empty: go.clone(),
                bank: go.clone(),
            }),
            grpc: false,
        },
        Bridge {
            name: "Python in-process",
            goal_us: Some(10.0),
            make: Box::new(move || Logic {
                empty: python_empty.clone(),
                bank: python_bank.clone(),
            }),
            grpc: false,
        },
        grpc_bridge("gRPC UDS → Rust", Some(100.0), rust_uds),
        grpc_bridge("gRPC TCP → Rust", Some(150.0), rust_tcp),
        grpc_bridge("gRPC UDS → Python", None, python_uds),
    ];

    let current_thread = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("the current-thread runtime");
    let mut latencies = Vec::new();
    for bridge in &bridges {
        let calls = if bridge.grpc {
            scale.grpc_calls
        } else {
            scale.calls
        };
        let mut row = Vec::new();
        for (runtime, spawn) in [(&client, true), (&current_thread, false)] {
            let logic = {
                let _inside = runtime.enter();
                (bridge.make)()
            };
            for (handler, logic, command, events) in [
                ("empty", &logic.empty, warm_deposit(EMPTY_DOMAIN), 0),
                ("bank", &logic.bank, warm_deposit(DOMAIN), 1),
            ] {
                let what = format!("{} {handler}", bridge.name);
                check(runtime, &what, logic, &command, events);
                row.push(round_trips(
                    runtime,
                    spawn,
                    logic.clone(),
                    command,
                    scale.warmup,
                    calls,
                ));
                progress(quick, &what, started);
            }
        }
        latencies.push(row);
    }

    let mut rates = Vec::new();
    for bridge in &bridges {
        let logic = {
            let _inside = client.enter();
            (bridge.make)()
        };
        let mut row = Vec::new();
        for store in [Store::Memory, Store::Sqlite] {
            for clients in [1, CLIENTS] {
                let rate = client.block_on(pipeline(
                    store,
                    dir.path(),
                    logic.bank.clone(),
                    clients,
                    scale,
                ));
                row.push(rate);
            }
        }
        progress(quick, &format!("{} pipeline", bridge.name), started);
        rates.push(row);
    }
    let labels: Vec<_> = bridges.iter().map(|b| (b.name, b.goal_us)).collect();
    drop(python_servers);
    drop(bridges);
    drop(client);
    drop(current_thread);
    servers.shutdown_background();

    if quick {
        println!("bridges benchmark smoke run passed (run with `cargo bench` for figures)");
        return;
    }
    print_tables(&labels, &latencies, &rates, scale);
    eprintln!("whole run: {:.0?}", started.elapsed());
}

fn progress(quick: bool, what: &str, started: Instant) {
    if !quick {
        eprintln!("measured {what} ({:.0?} so far)", started.elapsed());
    }
}

/// A path a variable names, which must exist; the command that prepares it otherwise.
fn required(variable: &str, command: &str) -> PathBuf {
    let path = std::env::var_os(variable)
        .map(PathBuf::from)
        .unwrap_or_else(|| {
            panic!("{variable} is not set: run `{command}` and export the variables it prints")
        });
    assert!(
        path.exists(),
        "{variable}={} does not exist: run `{command}`",
        path.display()
    );
    path
}

fn root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../..")
}

/// Where the Python modules are: the `angzarr` package, the bank, the empty handler.
fn python_sources() -> [PathBuf; 3] {
    let root = root();
    [
        root.join("python"),
        root.join("examples/bank/python"),
        root.join("crates/bridge-python/tests/python"),
    ]
}

fn python_logic(site_packages: &Path, module: &str) -> Arc<dyn ClientLogic> {
    let mut paths = vec![site_packages.to_owned()];
    paths.extend(python_sources());
    let config = PythonConfig::new(module).paths(paths);
    Arc::new(PythonLogic::load(config).unwrap_or_else(|e| panic!("cannot load {module}: {e}")))
}

/// Serves `logic` on `target` on the servers' runtime; answers the target to call.
fn serve(runtime: &Runtime, logic: Arc<dyn ClientLogic>, target: &str) -> String {
    let listener = runtime
        .block_on(LogicListener::bind(target))
        .unwrap_or_else(|error| panic!("cannot listen on {target}: {error}"));
    let bound = listener.target().expect("the bound address").to_string();
    runtime.spawn(async move {
        serve_logic(
            logic,
            listener,
            &ServeConfig::default(),
            std::future::pending(),
        )
        .await
        .expect("the logic server failed");
    });
    bound
}

/// gRPC to the servers at `targets` (the empty handler's, the bank's).
fn grpc_bridge(name: &'static str, goal_us: Option<f64>, targets: [String; 2]) -> Bridge {
    let connect = |target: &str| -> Arc<dyn ClientLogic> {
        Arc::new(GrpcLogic::new(target, GrpcConfig::default()).expect("a valid target"))
    };
    Bridge {
        name,
        goal_us,
        make: Box::new(move || Logic {
            empty: connect(&targets[0]),
            bank: connect(&targets[1]),
        }),
        grpc: true,
    }
}

/// `python -m angzarr.server MODULE unix:PATH` with the virtualenv's interpreter, stopped
/// when dropped.
struct PythonServer {
    child: Child,
    target: String,
    // Held open: the server may write to it.
    _stdout: BufReader<ChildStdout>,
}

impl PythonServer {
    fn start(site_packages: &Path, module: &str, target: &str) -> Self {
        // <venv>/lib/python3.x/site-packages → <venv>/bin/python3
        let python = site_packages
            .ancestors()
            .nth(3)
            .expect("site-packages is three levels below the virtualenv")
            .join("bin/python3");
        let path = std::env::join_paths(python_sources()).expect("a PYTHONPATH");
        let mut child = Command::new(&python)
            .args(["-m", "angzarr.server", module, target])
            .env("PYTHONPATH", path)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .spawn()
            .unwrap_or_else(|error| panic!("cannot run {}: {error}", python.display()));
        // It prints a line once it serves.
        let mut stdout = BufReader::new(child.stdout.take().expect("piped stdout"));
        let mut line = String::new();
        let read = stdout.read_line(&mut line);
        if !matches!(read, Ok(n) if n > 0 && line.starts_with("serving")) {
            let _ = child.kill();
            panic!("the Python server of {module} did not start: {read:?} {line:?}");
        }
        Self {
            child,
            target: target.to_owned(),
            _stdout: stdout,
        }
    }
}

impl Drop for PythonServer {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A deposit on an open account of `domain` whose state comes as the snapshot, as the gateway
/// hands over a warm aggregate.
fn warm_deposit(domain: &str) -> ContextualCommand {
    let mut book = command(Uuid::new_v4(), &deposit(5));
    book.cover.as_mut().expect("a cover").domain = domain.into();
    let account = Account {
        open: true,
        owner: "ada".into(),
        balance: 1_000,
    };
    ContextualCommand {
        events: Some(EventBook {
            cover: book.cover.clone(),
            snapshot: Some(Snapshot {
                sequence: 41,
                state: Some(pack(&account)),
            }),
            pages: Vec::new(),
        }),
        command: Some(book),
    }
}

/// Fails unless `logic` answers `command` with `events` events: a figure of an error path
/// would mean nothing.
fn check(
    runtime: &Runtime,
    what: &str,
    logic: &Arc<dyn ClientLogic>,
    command: &ContextualCommand,
    events: usize,
) {
    let reply = runtime.block_on(logic.handle(command.clone()));
    match reply {
        Ok(BusinessReply {
            outcome: Some(Outcome::Events(emitted)),
        }) if emitted.pages.len() == events => {}
        other => panic!("{what}: expected {events} events, got {other:?}"),
    }
}

/// Latency percentiles of one case.
#[derive(Clone, Copy)]
struct Latency {
    p50: Duration,
    p99: Duration,
}

/// `calls` sequential round trips after `warmup` ones; with `spawn`, in a task (on a
/// worker thread, where the gateway's tasks run) rather than on the thread that blocks.
fn round_trips(
    runtime: &Runtime,
    spawn: bool,
    logic: Arc<dyn ClientLogic>,
    command: ContextualCommand,
    warmup: usize,
    calls: usize,
) -> Latency {
    let work = async move {
        let mut times = Vec::with_capacity(calls);
        for i in 0..warmup + calls {
            let command = command.clone();
            let start = Instant::now();
            let reply = logic.handle(command).await;
            let elapsed = start.elapsed();
            if let Err(error) = reply {
                panic!("a round trip failed: {error}");
            }
            if i >= warmup {
                times.push(elapsed);
            }
        }
        times
    };
    let mut times = if spawn {
        runtime
            .block_on(runtime.spawn(work))
            .expect("the measuring task")
    } else {
        runtime.block_on(work)
    };
    times.sort_unstable();
    let at = |q: f64| times[((times.len() as f64 * q) as usize).min(times.len() - 1)];
    Latency {
        p50: at(0.50),
        p99: at(0.99),
    }
}

#[derive(Clone, Copy)]
enum Store {
    Memory,
    Sqlite,
}

/// Commands per second through the gateway with `logic` as the bank, `clients` clients each
/// depositing on an account of its own (opened, and warmed up, off the clock).
async fn pipeline(
    store: Store,
    dir: &Path,
    logic: Arc<dyn ClientLogic>,
    clients: usize,
    scale: &Scale,
) -> f64 {
    let domain = Domain::new(DOMAIN).expect("a valid domain");
    let (gateway, sqlite) = match store {
        Store::Memory => {
            let store = Arc::new(MemoryStore::new());
            let gateway = Gateway::builder(store.clone(), store)
                .register(domain, logic)
                .build();
            (gateway, None)
        }
        Store::Sqlite => {
            let path = dir.join(format!("{}.sqlite3", Uuid::new_v4().simple()));
            let config = SqliteConfig::new(path).with_synchronous(Synchronous::Normal);
            let store = Arc::new(SqliteStore::open(config).expect("open SQLite"));
            let gateway = Gateway::builder(store.clone(), store.clone())
                .register(domain, logic)
                .build();
            (gateway, Some(store))
        }
    };
    let roots: Vec<Uuid> = (0..clients).map(|_| Uuid::new_v4()).collect();
    for root in &roots {
        gateway
            .execute(command(*root, &open("bench")))
            .await
            .expect("open an account");
    }
    deposits(&gateway, &roots, scale.pipeline_warmup).await;
    let started = Instant::now();
    let done = deposits(&gateway, &roots, scale.pipeline).await;
    let rate = done as f64 / started.elapsed().as_secs_f64();
    drop(gateway);
    if let Some(store) = sqlite.and_then(Arc::into_inner) {
        store.close().await;
    }
    rate
}

/// Deposits on each of `roots` from a task of its own, one command at a time, for `duration`;
/// answers how many were executed.
async fn deposits(gateway: &Gateway, roots: &[Uuid], duration: Duration) -> u64 {
    let deadline = Instant::now() + duration;
    let tasks: Vec<_> = roots
        .iter()
        .map(|&root| {
            let gateway = gateway.clone();
            tokio::spawn(async move {
                let mut done = 0u64;
                while Instant::now() < deadline {
                    gateway
                        .execute(command(root, &deposit(1)))
                        .await
                        .expect("a deposit");
                    done += 1;
                }
                done
            })
        })
        .collect();
    let mut done = 0;
    for task in tasks {
        done += task.await.expect("a client task");
    }
    done
}

fn micros(duration: Duration) -> String {
    format!("{:.1} µs", duration.as_secs_f64() * 1e6)
}

/// Prints the figures as markdown tables: a row per bridge (`bridges`: name, goal).
fn print_tables(
    bridges: &[(&str, Option<f64>)],
    latencies: &[Vec<Latency>],
    rates: &[Vec<f64>],
    scale: &Scale,
) {
    let cores = std::thread::available_parallelism().map_or(0, |n| n.get());
    println!(
        "\nRound trip of one command through `ClientLogic::handle`: sequential calls on a \
         multi-thread client runtime ({cores} cores), {} measured after {} (gRPC: {}), a warm \
         account (its state as the snapshot). Last two columns: the same p50s with the client \
         on a current-thread runtime.\n",
        scale.calls, scale.warmup, scale.grpc_calls
    );
    println!(
        "| bridge | empty p50 | empty p99 | bank p50 | bank p99 | goal (empty p50) | met \
         | empty p50, current-thread | bank p50, current-thread |"
    );
    println!("|---|---:|---:|---:|---:|---|---|---:|---:|");
    for ((name, goal), row) in bridges.iter().zip(latencies) {
        let [empty, bank, ct_empty, ct_bank] = [row[0], row[1], row[2], row[3]];
        let (goal, met) = match goal {
            Some(goal) => {
                let met = empty.p50.as_secs_f64() * 1e6 < *goal;
                (format!("< {goal} µs"), if met { "yes" } else { "**no**" })
            }
            None => ("none".to_owned(), "-"),
        };
        println!(
            "| {name} | {} | {} | {} | {} | {goal} | {met} | {} | {} |",
            micros(empty.p50),
            micros(empty.p99),
            micros(bank.p50),
            micros(bank.p99),
            micros(ct_empty.p50),
            micros(ct_bank.p50),
        );
    }
    println!(
        "\nCommands per second through `Gateway` with the bank (snapshot every \
         {SNAPSHOT_EVERY} events): accounts opened, {:.2?} of deposits off the clock, then \
         {:.2?} measured. SQLite in WAL mode with `synchronous = NORMAL` (no fsync per \
         commit).\n",
        scale.pipeline_warmup, scale.pipeline
    );
    println!(
        "| bridge | memory, 1 client | memory, {CLIENTS} clients | SQLite, 1 client \
         | SQLite, {CLIENTS} clients |"
    );
    println!("|---|---:|---:|---:|---:|");
    for ((name, _), row) in bridges.iter().zip(rates) {
        let cells: Vec<String> = row.iter().map(|rate| format!("{rate:.0}/s")).collect();
        println!("| {name} | {} |", cells.join(" | "));
    }
}

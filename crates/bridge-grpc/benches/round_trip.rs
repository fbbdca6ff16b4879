//! The round trip of one command through `GrpcLogic` to logic served by `serve_logic`: an
//! empty handler and the bank's, over a Unix socket and loopback TCP, with the client on a
//! current-thread and on a multi-thread runtime. The server runs on a runtime and thread of
//! its own, as it would in another process. Prints the latency percentiles of sequential
//! calls (one in flight at a time).
//!
//! `cargo bench -p angzarr-bridge-grpc --bench round_trip` (`ROUND_TRIP_CALLS` sets the
//! number of measured calls per case).

use std::sync::Arc;
use std::time::{Duration, Instant};

use angzarr_bridge_grpc::{GrpcConfig, GrpcLogic, LogicListener, ServeConfig, serve_logic};
use angzarr_ports::{BusinessReply, ClientLogic, ClientLogicError, ContextualCommand, async_trait};
use angzarr_proto::v1::{EventBook, EventsEmitted, Snapshot, business_reply::Outcome};
use tokio::sync::oneshot;
use uuid::Uuid;

/// Decides nothing: the cost of the bridge alone.
struct Empty;

#[async_trait]
impl ClientLogic for Empty {
    async fn handle(&self, _: ContextualCommand) -> Result<BusinessReply, ClientLogicError> {
        Ok(BusinessReply {
            outcome: Some(Outcome::Events(EventsEmitted::default())),
        })
    }
}

/// A deposit on an open account handed over as a snapshot, as the core does for a warm
/// aggregate.
fn deposit() -> ContextualCommand {
    let root = Uuid::new_v4();
    let command = angzarr_example_bank::command(root, &angzarr_example_bank::deposit(5));
    let account = angzarr_example_bank::Account {
        open: true,
        owner: "ann".into(),
        balance: 100,
    };
    ContextualCommand {
        events: Some(EventBook {
            cover: command.cover.clone(),
            snapshot: Some(Snapshot {
                sequence: 1,
                state: Some(pack_account(&account)),
            }),
            pages: Vec::new(),
        }),
        command: Some(command),
    }
}

fn pack_account(account: &angzarr_example_bank::Account) -> angzarr_proto::prost_types::Any {
    angzarr_proto::prost_types::Any {
        type_url: "type.googleapis.com/examples.bank.v1.Account".into(),
        value: prost::Message::encode_to_vec(account),
    }
}

/// Serves `logic` on `target` on a thread and runtime of its own; returns the target to call
/// and what stops it.
fn serve(logic: Arc<dyn ClientLogic>, target: &str) -> (String, oneshot::Sender<()>) {
    let (stop, stopped) = oneshot::channel::<()>();
    let (bound, target_rx) = std::sync::mpsc::channel();
    let target = target.to_owned();
    std::thread::spawn(move || {
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        runtime.block_on(async move {
            let listener = LogicListener::bind(&target).await.unwrap();
            bound.send(listener.target().unwrap().to_string()).unwrap();
            serve_logic(logic, listener, &ServeConfig::default(), async {
                let _ = stopped.await;
            })
            .await
            .unwrap();
        });
    });
    (target_rx.recv().unwrap(), stop)
}

struct Figures {
    p50: Duration,
    p99: Duration,
    mean: Duration,
}

fn measure(target: &str, command: &ContextualCommand, multi_thread: bool, calls: usize) -> Figures {
    let runtime = if multi_thread {
        tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .enable_all()
            .build()
    } else {
        tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
    }
    .unwrap();
    runtime.block_on(async {
        let logic = GrpcLogic::new(target, GrpcConfig::default()).unwrap();
        for _ in 0..calls / 5 {
            logic.handle(command.clone()).await.unwrap();
        }
        let mut latencies = Vec::with_capacity(calls);
        for _ in 0..calls {
            let command = command.clone();
            let start = Instant::now();
            let reply = logic.handle(command).await;
            latencies.push(start.elapsed());
            assert!(reply.is_ok());
        }
        latencies.sort();
        let total: Duration = latencies.iter().sum();
        Figures {
            p50: latencies[calls / 2],
            p99: latencies[calls * 99 / 100],
            mean: total / calls as u32,
        }
    })
}

fn main() {
    // `cargo bench` passes `--bench`; a filter argument, if any, selects cases by name.
    let filter: Option<String> = std::env::args().skip(1).find(|arg| !arg.starts_with("--"));
    // `cargo test --benches` (no `--bench`) runs a few calls per case: a smoke test.
    let measuring = std::env::args().any(|arg| arg == "--bench");
    let calls: usize = std::env::var("ROUND_TRIP_CALLS")
        .ok()
        .and_then(|n| n.parse().ok())
        .unwrap_or(if measuring { 20_000 } else { 100 });
    let dir = tempfile::tempdir().unwrap();
    let bank: Arc<dyn ClientLogic> = Arc::new(angzarr_example_bank::logic(0));
    let empty: Arc<dyn ClientLogic> = Arc::new(Empty);
    let command = deposit();

    // The in-process baseline: the bank's decision alone.
    let runtime = tokio::runtime::Builder::new_current_thread()
        .build()
        .unwrap();
    let native = runtime.block_on(async {
        let start = Instant::now();
        for _ in 0..calls {
            bank.handle(command.clone()).await.unwrap();
        }
        start.elapsed() / calls as u32
    });
    println!("bank in process (NativeLogic): mean {native:?}");
    println!("{:<34} {:>10} {:>10} {:>10}", "case", "p50", "p99", "mean");

    for (logic_name, logic) in [("empty", &empty), ("bank", &bank)] {
        for (transport, target) in [
            (
                "uds",
                format!(
                    "unix:{}",
                    dir.path().join(format!("{logic_name}.sock")).display()
                ),
            ),
            ("tcp", "127.0.0.1:0".to_owned()),
        ] {
            let (target, _stop) = serve(Arc::clone(logic), &target);
            for (runtime_name, multi_thread) in [("current-thread", false), ("multi-thread", true)]
            {
                let name = format!("{logic_name}/{transport}/{runtime_name}");
                if filter.as_ref().is_some_and(|f| !name.contains(f.as_str())) {
                    continue;
                }
                let figures = measure(&target, &command, multi_thread, calls);
                println!(
                    "{name:<34} {:>10.1?} {:>10.1?} {:>10.1?}",
                    figures.p50, figures.p99, figures.mean
                );
            }
        }
    }
}

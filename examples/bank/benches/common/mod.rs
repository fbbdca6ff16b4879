//! What the store benchmarks share: the runtime, the server variables, the commands they send,
//! the events they write, the timed pipelines, appends and rebuilds (so every store is
//! measured the same way), and the turns their variants take.

#![allow(dead_code, reason = "each benchmark uses part of it")]

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::time::Instant;

use angzarr_core::{Gateway, LoadedAggregate};
use angzarr_example_bank::proto::{BankEvent, Deposited, bank_event::Kind};
use angzarr_example_bank::{Account, DOMAIN, command, deposit, logic, open, replay};
use angzarr_ports::{AggregateId, Append, Domain, EventPage, EventStore, SnapshotStore};
use angzarr_proto::v1::CommandBook;
use prost_types::Any;
use uuid::Uuid;

/// Runs `bench` on a multi-threaded runtime. `cargo bench` passes `--bench`; without it
/// (`cargo test --benches`) the benchmark runs once, small, as a smoke test.
pub(crate) fn main<F: Future<Output = ()>>(bench: impl FnOnce(bool) -> F) {
    let quick = !std::env::args().any(|arg| arg == "--bench");
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .expect("runtime");
    runtime.block_on(bench(quick));
}

/// The value of `var`, which points the benchmark `bench` at its server; a missing one stops
/// the benchmark, saying how to start `services` (a `cargo xtask services up` argument list).
pub(crate) fn server_var(var: &str, bench: &str, services: &str) -> String {
    std::env::var(var).unwrap_or_else(|_| {
        panic!(
            "{var} is not set: the {bench} benchmark needs its server. Run `cargo xtask bench \
             -p angzarr-example-bank --bench {bench}`, which starts it, or `cargo xtask \
             services up {services}` and `set -a; . target/services/env; set +a` before \
             `cargo bench`."
        )
    })
}

/// One way of doing a figure's work, answering its throughput or its time.
pub(crate) type Variant<'a> = Box<dyn FnMut() -> Pin<Box<dyn Future<Output = f64> + 'a>> + 'a>;

/// Runs the variants in turns, `runs` times each, and answers each one's median, so that a
/// slow spell of the machine does not fall on one side only.
pub(crate) async fn rotate(runs: usize, mut variants: Vec<Variant<'_>>) -> Vec<f64> {
    // One of each first, unmeasured: connections open, scripts and statements get cached.
    for variant in &mut variants {
        variant().await;
    }
    let mut results = vec![Vec::with_capacity(runs); variants.len()];
    for _ in 0..runs {
        for (variant, results) in variants.iter_mut().zip(&mut results) {
            results.push(variant().await);
        }
    }
    results.into_iter().map(median).collect()
}

/// A gateway over `store` (events and snapshots) with the bank's logic, snapshotting every
/// `snapshot_every` events.
pub(crate) fn gateway<S: EventStore + SnapshotStore + 'static>(
    store: Arc<S>,
    snapshot_every: u64,
) -> Gateway {
    Gateway::builder(store.clone(), store)
        .register(
            Domain::new(DOMAIN).expect("valid"),
            Arc::new(logic(snapshot_every)),
        )
        .build()
}

/// Commands per second through the whole pipeline: `aggregates` clients, each on an account
/// of its own (opened first, off the clock), `commands` deposits in all.
pub(crate) async fn pipeline(
    gateway: &Gateway,
    aggregates: u64,
    commands: u64,
    kind: Commands,
) -> f64 {
    let roots: Vec<Uuid> = (0..aggregates).map(|_| Uuid::new_v4()).collect();
    let opened: Vec<_> = roots
        .iter()
        .map(|root| {
            let (gateway, root) = (gateway.clone(), *root);
            tokio::spawn(async move {
                gateway
                    .execute(command(root, &open("bench")))
                    .await
                    .expect("open");
            })
        })
        .collect();
    for task in opened {
        task.await.expect("open task");
    }
    let per_aggregate = commands / aggregates;
    let started = Instant::now();
    let tasks: Vec<_> = roots
        .iter()
        .map(|root| {
            let (gateway, root) = (gateway.clone(), *root);
            tokio::spawn(async move {
                for n in 0..per_aggregate {
                    gateway
                        .execute(kind.command(root, n))
                        .await
                        .expect("deposit");
                }
            })
        })
        .collect();
    for task in tasks {
        task.await.expect("client task");
    }
    (per_aggregate * aggregates) as f64 / started.elapsed().as_secs_f64()
}

/// The events the pipeline writes, one per command (each with a correlation id of its own, as
/// the core assigns one per command), for `clients` new aggregates.
pub(crate) fn work(clients: u64, commands: u64) -> Vec<(AggregateId, Vec<EventPage>)> {
    let per_client = commands / clients;
    (0..clients)
        .map(|_| {
            let pages = (0..per_client)
                .map(|sequence| deposited_page(sequence, &Uuid::new_v4().to_string()))
                .collect();
            (account(Uuid::new_v4()), pages)
        })
        .collect()
}

/// Events per second of the store alone: the pipeline's events appended one at a time with
/// `EventStore::append`, by `clients` concurrent tasks, each on an aggregate of its own.
pub(crate) async fn store_appends<S: EventStore + 'static>(
    store: &Arc<S>,
    clients: u64,
    commands: u64,
) -> f64 {
    let work = work(clients, commands);
    let appended: u64 = work.iter().map(|(_, pages)| pages.len() as u64).sum();
    let started = Instant::now();
    let tasks: Vec<_> = work
        .into_iter()
        .map(|(aggregate, pages)| {
            let store = store.clone();
            tokio::spawn(async move {
                for (sequence, page) in (0..).zip(pages) {
                    store
                        .append(&aggregate, Append::new(sequence, vec![page]))
                        .await
                        .expect("append");
                }
            })
        })
        .collect();
    for task in tasks {
        task.await.expect("store task");
    }
    appended as f64 / started.elapsed().as_secs_f64()
}

/// One account with `events` deposits, appended by `store` in batches of `batch` (one
/// correlation id per batch: the pages have the size of the pipeline's, and the history does
/// not cost an index entry per event).
pub(crate) async fn history<S: EventStore + ?Sized>(
    store: &S,
    events: u64,
    batch: u64,
) -> AggregateId {
    let aggregate = account(Uuid::new_v4());
    let mut next = 0;
    while next < events {
        let correlation_id = Uuid::new_v4().to_string();
        let pages: Vec<EventPage> = (next..(next + batch).min(events))
            .map(|sequence| deposited_page(sequence, &correlation_id))
            .collect();
        next = store
            .append(&aggregate, Append::new(next, pages))
            .await
            .expect("append history");
    }
    aggregate
}

/// A line of a figure table: the figure, ours, the baseline (same run), and ours against the
/// baseline as speeds (above 1, ours is faster).
pub(crate) struct Ratio {
    pub(crate) figure: String,
    pub(crate) ours: String,
    pub(crate) baseline: String,
    pub(crate) ratio: f64,
}

/// The two lines of an append figure: the pipeline, then the store alone, both against the
/// raw client's rate.
pub(crate) fn append_rows(
    figure: &str,
    [pipeline, store, raw]: [f64; 3],
    baseline: &str,
) -> [Ratio; 2] {
    [
        Ratio {
            figure: figure.to_owned(),
            ours: format!("{pipeline:.0}/s"),
            baseline: format!("{raw:.0}/s {baseline}"),
            ratio: pipeline / raw,
        },
        Ratio {
            figure: "... the store alone (`append` of the same pages, no core)".to_owned(),
            ours: format!("{store:.0}/s"),
            baseline: format!("{raw:.0}/s {baseline}"),
            ratio: store / raw,
        },
    ]
}

/// One way of appending a workload, `(clients, commands)` to its rate in commands per second.
pub(crate) type Appender<'a> = &'a dyn Fn(u64, u64) -> Pin<Box<dyn Future<Output = f64> + 'a>>;

/// The append figures of a store's benchmark: one client sending `sequential` commands, and
/// `aggregates` clients at once sending `concurrent` commands in all. Each is measured through
/// the core (`pipeline`), the store alone (`store`) and the raw client (`raw`, described by
/// `baseline` with its number of clients), taking turns, `runs` times, and each rate is the
/// median.
pub(crate) async fn append_figures<'a>(
    runs: usize,
    sequential: u64,
    (aggregates, concurrent): (u64, u64),
    [pipeline, store, raw]: [Appender<'a>; 3],
    baseline: &str,
) -> Vec<Ratio> {
    let plan = [
        (
            "commands/s, one client, 1 event per command".to_owned(),
            1,
            sequential,
        ),
        (
            format!("commands/s, {aggregates} aggregates at once"),
            aggregates,
            concurrent,
        ),
    ];
    let mut rows = Vec::new();
    for (figure, clients, commands) in plan {
        let rates = rotate(
            runs,
            vec![
                Box::new(move || pipeline(clients, commands)),
                Box::new(move || store(clients, commands)),
                Box::new(move || raw(clients, commands)),
            ],
        )
        .await;
        let rates = rates.try_into().expect("three variants");
        rows.extend(append_rows(
            &figure,
            rates,
            &format!("{baseline}, {clients} client(s)"),
        ));
    }
    rows
}

/// The rebuild figures of an aggregate of `events` events: the gateway's rebuild (load,
/// decode, fold) and load alone, against `raw_read` (answering its seconds; `true`: folding
/// too), which `baseline` names. Runs take turns; each figure is the median of `runs`.
pub(crate) async fn rebuild_rows<'a, F>(
    runs: usize,
    events: u64,
    gateway: &'a Gateway,
    aggregate: &'a AggregateId,
    raw_read: &'a (dyn Fn(bool) -> F + 'a),
    baseline: &str,
) -> [Ratio; 3]
where
    F: Future<Output = f64> + 'a,
{
    let times = rotate(
        runs,
        vec![
            Box::new(|| Box::pin(rebuild(gateway, aggregate))),
            Box::new(|| Box::pin(load(gateway, aggregate))),
            Box::new(|| Box::pin(raw_read(false))),
            Box::new(|| Box::pin(raw_read(true))),
        ],
    )
    .await;
    let [full, loaded, raw, raw_folded] = times[..] else {
        unreachable!("four variants");
    };
    let row = |figure: String, ours: f64, raw: f64, baseline: String| Ratio {
        figure,
        ours: format!("{:.1} ms", ours * 1e3),
        baseline: format!("{:.1} ms {baseline}", raw * 1e3),
        ratio: raw / ours,
    };
    [
        row(
            format!("rebuild {events} events (load, decode, fold)"),
            full,
            raw,
            format!("{baseline}, decoded"),
        ),
        row(
            "... load alone (read and decode, no fold)".to_owned(),
            loaded,
            raw,
            format!("{baseline}, decoded"),
        ),
        row(
            "... rebuild against a baseline that folds too".to_owned(),
            full,
            raw_folded,
            format!("{baseline}, decoded, folded"),
        ),
    ]
}

/// Prints `rows` as a Markdown table under `title`.
pub(crate) fn print_ratios(title: &str, rows: &[Ratio]) {
    println!("### {title}");
    println!();
    println!("| figure | angzarr | baseline (same run) | vs baseline |");
    println!("|---|---|---|---|");
    for row in rows {
        println!(
            "| {} | {} | {} | {:.2}x |",
            row.figure, row.ours, row.baseline, row.ratio
        );
    }
}

/// What the benchmark's commands carry.
#[derive(Debug, Clone, Copy)]
pub(crate) enum Commands {
    /// A deposit and nothing else: no request id, `retry_on_conflict` false.
    Plain,
    /// `retry_on_conflict` set.
    RetryOnConflict,
    /// A request id of its own.
    RequestId,
}

impl Commands {
    /// The `n`th deposit of one client into `root`.
    pub(crate) fn command(self, root: Uuid, n: u64) -> CommandBook {
        let mut book = command(root, &deposit(1));
        match self {
            Self::Plain => {}
            Self::RetryOnConflict => book.retry_on_conflict = true,
            Self::RequestId => book.request_id = format!("deposit-{n}"),
        }
        book
    }
}

pub(crate) fn median(mut values: Vec<f64>) -> f64 {
    values.sort_by(f64::total_cmp);
    values[values.len() / 2]
}

pub(crate) fn account(root: Uuid) -> AggregateId {
    AggregateId::new(Domain::new(DOMAIN).expect("valid"), root).expect("non-nil")
}

/// An event page as the pipeline writes it: a deposit, a timestamp, a correlation id.
pub(crate) fn deposited_page(sequence: u64, correlation_id: &str) -> EventPage {
    let event = BankEvent {
        kind: Some(Kind::Deposited(Deposited { amount: 1 })),
    };
    EventPage {
        sequence,
        created_at: Some(prost_types::Timestamp {
            seconds: 1_800_000_000,
            nanos: 0,
        }),
        payload: Some(Any::from_msg(&event).expect("encode")),
        correlation_id: correlation_id.to_owned(),
    }
}

/// Load (snapshot and later events), decode every event, fold it into the state. The loaded
/// pages are answered too, so that they are freed after the clock stops, as a baseline's are.
pub(crate) async fn fold_all(
    gateway: &Gateway,
    aggregate: &AggregateId,
) -> (Account, LoadedAggregate) {
    let loaded = gateway.load(aggregate).await.expect("load");
    let snapshot = loaded
        .snapshot
        .as_ref()
        .and_then(|snapshot| snapshot.state.as_ref());
    let state = replay(snapshot, &loaded.pages).expect("decode the history");
    (state, loaded)
}

/// Seconds to load alone: read and decode the pages, no fold.
pub(crate) async fn load(gateway: &Gateway, aggregate: &AggregateId) -> f64 {
    let started = Instant::now();
    let loaded = gateway.load(aggregate).await.expect("load");
    let elapsed = started.elapsed().as_secs_f64();
    assert!(!loaded.pages.is_empty(), "the history was read");
    std::hint::black_box(loaded);
    elapsed
}

/// Seconds to rebuild the state: [`fold_all`].
pub(crate) async fn rebuild(gateway: &Gateway, aggregate: &AggregateId) -> f64 {
    let started = Instant::now();
    let (state, loaded) = fold_all(gateway, aggregate).await;
    let elapsed = started.elapsed().as_secs_f64();
    assert!(state.balance > 0, "the fold saw the deposits");
    std::hint::black_box((state, loaded));
    elapsed
}

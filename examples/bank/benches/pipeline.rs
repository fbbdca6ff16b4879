//! The figures of `docs/benchmarks.md`, each measured beside its baseline in the same run:
//!
//! `cargo bench -p angzarr-example-bank --bench pipeline` (or `cargo xtask bench`)
//!
//! A plain harness rather than criterion: each figure is a throughput or a rebuild time set
//! against a raw rusqlite baseline on the same file system, and the ratio is what matters.
//! Each is the median of several runs.

mod common;

use std::sync::Arc;
use std::time::Instant;

use angzarr_core::Gateway;
use angzarr_example_bank::{DOMAIN, command, deposit, logic, open};
use angzarr_ports::{AggregateId, Append, Domain, EventPage, EventStore, SnapshotStore};
use angzarr_proto::v1::Snapshot;
use angzarr_store_sqlite::{SqliteConfig, SqliteStore};
use common::{account, deposited_page, fold_all, rebuild};
use prost::Message;
use prost_types::Any;
use rusqlite::Connection;
use uuid::Uuid;

const RUNS: usize = 5;
const SEQUENTIAL_COMMANDS: u64 = 1_000;
const CONCURRENT_AGGREGATES: u64 = 64;
const CONCURRENT_COMMANDS: u64 = 8_000;
const REBUILD_EVENTS: u64 = 100_000;
const FLAT_COMMANDS: u64 = 100_000;

fn main() {
    common::main(run);
}

struct Row {
    figure: &'static str,
    ours: String,
    baseline: String,
    ratio: f64,
    goal: &'static str,
    met: bool,
}

async fn run(quick: bool) {
    let scale = |n: u64| if quick { (n / 20).max(10) } else { n };
    let runs = if quick { 1 } else { RUNS };
    let dir = tempfile::tempdir().expect("a temporary directory");
    let mut rows = Vec::new();

    let raw = median(runs, || raw_inserts(dir.path(), scale(SEQUENTIAL_COMMANDS)));
    let single = median_async(runs, || pipeline(dir.path(), 1, scale(SEQUENTIAL_COMMANDS))).await;
    rows.push(Row {
        figure: "commands/s, one client, 1 event per command",
        ours: format!("{single:.0}/s"),
        baseline: format!("{raw:.0}/s raw INSERT, 1 txn each"),
        ratio: single / raw,
        goal: ">= 0.8x",
        met: single / raw >= 0.8,
    });
    let concurrent = median_async(runs, || {
        pipeline(
            dir.path(),
            CONCURRENT_AGGREGATES,
            scale(CONCURRENT_COMMANDS),
        )
    })
    .await;
    rows.push(Row {
        figure: "commands/s, 64 aggregates at once",
        ours: format!("{concurrent:.0}/s"),
        baseline: format!("{raw:.0}/s raw INSERT, 1 txn each"),
        ratio: concurrent / raw,
        goal: ">= 2x",
        met: concurrent / raw >= 2.0,
    });

    let flat = flat_cost(scale(FLAT_COMMANDS)).await;
    let [first, second, last] = flat.map(|p50| p50 * 1e6);
    rows.push(Row {
        figure: "p50 per command, one aggregate, snapshots off: last 1,000 of 100,000 vs first 1,000",
        ours: format!("{last:.1} us (commands 1,000-1,999: {second:.1} us)"),
        baseline: format!("{first:.1} us, first 1,000"),
        ratio: last / first,
        goal: "<= 1.1x",
        met: last / first <= 1.1,
    });

    let (store, gateway, aggregate) = history(dir.path(), scale(REBUILD_EVENTS)).await;
    let raw_read = median(runs * 2, || raw_select(store.path(), &aggregate));
    let full = median_async(runs * 2, || rebuild(&gateway, &aggregate)).await;
    rows.push(Row {
        figure: "rebuild 100,000 events (read, decode, fold)",
        ours: format!("{:.1} ms", full * 1e3),
        baseline: format!("{:.1} ms raw SELECT", raw_read * 1e3),
        ratio: full / raw_read,
        goal: "<= 1.3x and < 50 ms",
        met: full / raw_read <= 1.3 && full < 0.050,
    });
    let last = scale(REBUILD_EVENTS) - 1;
    let (state, _) = fold_all(&gateway, &aggregate).await;
    let snapshot = Snapshot {
        sequence: last,
        state: Some(Any::from_msg(&state).expect("encode")),
    };
    SnapshotStore::put(store.as_ref(), &aggregate, snapshot)
        .await
        .expect("put a snapshot");
    let with_snapshot = median_async(runs * 20, || rebuild(&gateway, &aggregate)).await;
    rows.push(Row {
        figure: "rebuild 100,000 events from a snapshot",
        ours: format!("{:.3} ms", with_snapshot * 1e3),
        baseline: format!("{:.1} ms raw SELECT of all events", raw_read * 1e3),
        ratio: with_snapshot / raw_read,
        goal: "< 1 ms",
        met: with_snapshot < 0.001,
    });
    drop(gateway);
    if let Ok(store) = Arc::try_unwrap(store) {
        store.close().await;
    }

    if quick {
        println!("benchmark smoke run passed (run with `cargo bench` for figures)");
        return;
    }
    println!("| figure | angzarr | baseline (same run) | ratio | goal | met |");
    println!("|---|---|---|---|---|---|");
    for row in rows {
        let met = if row.met { "yes" } else { "**no**" };
        println!(
            "| {} | {} | {} | {:.2}x | {} | {met} |",
            row.figure, row.ours, row.baseline, row.ratio, row.goal
        );
    }
}

fn median(runs: usize, mut measure: impl FnMut() -> f64) -> f64 {
    let mut values: Vec<f64> = (0..runs).map(|_| measure()).collect();
    values.sort_by(f64::total_cmp);
    values[values.len() / 2]
}

async fn median_async<F: Future<Output = f64>>(runs: usize, mut measure: impl FnMut() -> F) -> f64 {
    let mut values = Vec::with_capacity(runs);
    for _ in 0..runs {
        values.push(measure().await);
    }
    values.sort_by(f64::total_cmp);
    values[values.len() / 2]
}

fn fresh_store(dir: &std::path::Path) -> SqliteStore {
    let path = dir.join(format!("{}.sqlite3", Uuid::new_v4().simple()));
    SqliteStore::open(SqliteConfig::new(path)).expect("open the store")
}

/// The baseline: the rows the pipeline writes, inserted with rusqlite, one transaction each,
/// into the store's own schema with the store's durability settings.
fn raw_inserts(dir: &std::path::Path, count: u64) -> f64 {
    let store = fresh_store(dir);
    let path = store.path().to_owned();
    drop(store);
    let connection = Connection::open(&path).expect("open raw");
    connection
        .pragma_update(None, "journal_mode", "WAL")
        .expect("wal");
    connection
        .pragma_update(None, "synchronous", "FULL")
        .expect("synchronous");
    let root = Uuid::new_v4().to_string();
    let pages: Vec<(String, Vec<u8>)> = (0..count)
        .map(|sequence| {
            let page = deposited_page(sequence, &Uuid::new_v4().to_string());
            (page.correlation_id.clone(), page.encode_to_vec())
        })
        .collect();
    let mut insert = connection
        .prepare(
            "INSERT INTO events (domain, root, sequence, correlation_id, request_id, page) \
             VALUES (?1, ?2, ?3, ?4, NULL, ?5)",
        )
        .expect("prepare");
    let started = Instant::now();
    for (sequence, (correlation, page)) in pages.iter().enumerate() {
        insert
            .execute(rusqlite::params![
                DOMAIN,
                root,
                sequence as i64,
                correlation,
                page
            ])
            .expect("insert");
    }
    count as f64 / started.elapsed().as_secs_f64()
}

/// Commands through the whole pipeline: `aggregates` clients, each on its own account.
async fn pipeline(dir: &std::path::Path, aggregates: u64, commands: u64) -> f64 {
    let store = Arc::new(fresh_store(dir));
    let gateway = Gateway::builder(store.clone(), store.clone())
        .register(Domain::new(DOMAIN).expect("valid"), Arc::new(logic(100)))
        .build();
    let roots: Vec<Uuid> = (0..aggregates).map(|_| Uuid::new_v4()).collect();
    for root in &roots {
        gateway
            .execute(command(*root, &open("bench")))
            .await
            .expect("open");
    }
    let per_aggregate = commands / aggregates;
    let started = Instant::now();
    let tasks: Vec<_> = roots
        .iter()
        .map(|root| {
            let (gateway, root) = (gateway.clone(), *root);
            tokio::spawn(async move {
                for _ in 0..per_aggregate {
                    gateway
                        .execute(command(root, &deposit(1)))
                        .await
                        .expect("deposit");
                }
            })
        })
        .collect();
    for task in tasks {
        task.await.expect("client task");
    }
    let rate = (per_aggregate * aggregates) as f64 / started.elapsed().as_secs_f64();
    drop(gateway);
    if let Ok(store) = Arc::try_unwrap(store) {
        store.close().await;
    }
    rate
}

/// The p50 latency of the first 1,000 commands on one account, of the next 1,000, and of the
/// last 1,000 of `commands`, with snapshots off, over the in-memory store (its appends cost the
/// same at any length), so that only the pipeline's cost per command is compared.
async fn flat_cost(commands: u64) -> [f64; 3] {
    let store = Arc::new(angzarr_store_memory::MemoryStore::new());
    let gateway = Gateway::builder(store.clone(), store)
        .register(Domain::new(DOMAIN).expect("valid"), Arc::new(logic(0)))
        .build();
    let root = Uuid::new_v4();
    gateway
        .execute(command(root, &open("bench")))
        .await
        .expect("open");
    let mut latencies = Vec::with_capacity(commands as usize);
    for _ in 0..commands {
        let book = command(root, &deposit(1));
        let started = Instant::now();
        gateway.execute(book).await.expect("deposit");
        latencies.push(started.elapsed().as_secs_f64());
    }
    let window = 1_000.min(latencies.len() / 3).max(1);
    let p50 = |slice: &[f64]| {
        let mut sorted = slice.to_vec();
        sorted.sort_by(f64::total_cmp);
        sorted[sorted.len() / 2]
    };
    [
        p50(&latencies[..window]),
        p50(&latencies[window..2 * window]),
        p50(&latencies[latencies.len() - window..]),
    ]
}

/// One account with `events` deposits, written in large batches.
async fn history(dir: &std::path::Path, events: u64) -> (Arc<SqliteStore>, Gateway, AggregateId) {
    let store = Arc::new(fresh_store(dir));
    let gateway = Gateway::builder(store.clone(), store.clone())
        .register(Domain::new(DOMAIN).expect("valid"), Arc::new(logic(0)))
        .build();
    let aggregate = account(Uuid::new_v4());
    let mut next = 0;
    while next < events {
        let batch: Vec<EventPage> = (next..(next + 10_000).min(events))
            .map(|sequence| deposited_page(sequence, &Uuid::new_v4().to_string()))
            .collect();
        let append = Append {
            expected_sequence: next,
            events: batch,
            request: None,
        };
        next = store
            .append(&aggregate, append)
            .await
            .expect("append history");
    }
    (store, gateway, aggregate)
}

/// The baseline: the same rows' bytes, read with one SELECT.
fn raw_select(path: &std::path::Path, aggregate: &AggregateId) -> f64 {
    let connection = Connection::open(path).expect("open raw");
    let mut select = connection
        .prepare("SELECT page FROM events WHERE domain = ?1 AND root = ?2 ORDER BY sequence")
        .expect("prepare");
    let started = Instant::now();
    let rows = select
        .query_map(
            rusqlite::params![aggregate.domain().as_str(), aggregate.root().to_string()],
            |row| row.get::<_, Vec<u8>>(0),
        )
        .expect("query");
    let pages: Vec<Vec<u8>> = rows.collect::<Result<_, _>>().expect("rows");
    let elapsed = started.elapsed().as_secs_f64();
    std::hint::black_box(pages);
    elapsed
}

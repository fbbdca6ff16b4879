//! The PostgreSQL figures of `docs/benchmarks.md`, each measured beside its baseline in the
//! same run, on the server of `ANGZARR_TEST_POSTGRES_URL`:
//!
//! `cargo xtask bench -p angzarr-example-bank --bench postgres` (which starts the test server
//! if it is not running), or `cargo bench -p angzarr-example-bank --bench postgres` with the
//! variable set (`cargo xtask services up postgres`, then `set -a; . target/services/env; set +a`).
//!
//! A plain harness, as for SQLite (`pipeline.rs`): each figure is a throughput or a rebuild
//! time set against the raw driver doing the same on the same table, and the ratio is what
//! matters. The baselines use tokio-postgres through a deadpool pool of the store's size, with
//! their statements prepared once per connection as the store's are: one `INSERT` of the same
//! row (the encoded event page) per transaction, and one `SELECT page ... ORDER BY sequence`
//! of the same rows, decoded. Runs of the pipeline and of its baseline alternate, so that a
//! slow spell of the disk does not fall on one side only; each figure is the median.
//!
//! Round trips per command are counted at the store's ports (each call is one statement, one
//! round trip on this store), for the three kinds of command: plain, with `retry_on_conflict`,
//! and with a request id.

mod common;

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Instant;

use angzarr_example_bank::{DOMAIN, command, open};
use angzarr_ports::{
    AggregateEvents, AggregateId, Append, Domain, EventPage, EventStore, EventStoreError,
    RequestRecord, SequenceRange, Snapshot, SnapshotStore, SnapshotStoreError, StoreCapabilities,
    async_trait,
};
use angzarr_store_postgres::{PostgresConfig, PostgresStore};
use common::{Commands, account, deposited_page, load, rebuild, rotate};
use deadpool::managed::{self, Metrics, RecycleError, RecycleResult};
use futures_util::TryStreamExt;
use prost::Message;
use tokio_postgres::types::ToSql;
use tokio_postgres::{Client, NoTls, Statement};
use uuid::Uuid;

const RUNS: usize = 5;
/// Connections in the store's pool and in the baseline's.
const POOL_SIZE: usize = 64;
const SEQUENTIAL_COMMANDS: u64 = 1_000;
const CONCURRENT_AGGREGATES: u64 = 64;
const CONCURRENT_COMMANDS: u64 = 8_000;
const REBUILD_EVENTS: u64 = 100_000;
/// Commands whose store calls are counted.
const COUNTED_COMMANDS: u64 = 1_000;

fn main() {
    common::main(run);
}

struct Row {
    figure: &'static str,
    ours: String,
    baseline: String,
    /// Ours against the baseline, as speeds: above 1, ours is faster.
    ratio: f64,
    goal: &'static str,
    met: Option<bool>,
}

async fn run(quick: bool) {
    let scale = |n: u64| if quick { (n / 20).max(10) } else { n };
    let runs = if quick { 1 } else { RUNS };
    let bench = Bench::open().await;
    let mut rows = Vec::new();

    let sequential = scale(SEQUENTIAL_COMMANDS);
    let concurrent_commands = scale(CONCURRENT_COMMANDS);
    for (figure, aggregates, commands, kind, goal) in [
        (
            "commands/s, one client, 1 event per command",
            1,
            sequential,
            Commands::Plain,
            true,
        ),
        (
            "... the same with retry_on_conflict",
            1,
            sequential,
            Commands::RetryOnConflict,
            false,
        ),
        (
            "... the same with request ids",
            1,
            sequential,
            Commands::RequestId,
            false,
        ),
        (
            "commands/s, 64 aggregates at once",
            CONCURRENT_AGGREGATES,
            concurrent_commands,
            Commands::Plain,
            true,
        ),
        (
            "... the same with retry_on_conflict",
            CONCURRENT_AGGREGATES,
            concurrent_commands,
            Commands::RetryOnConflict,
            false,
        ),
    ] {
        let bench = &bench;
        let rates = rotate(
            runs,
            vec![
                Box::new(move || Box::pin(bench.pipeline(aggregates, commands, kind))),
                Box::new(move || Box::pin(bench.raw_inserts(aggregates, commands))),
            ],
        )
        .await;
        let [ours, raw] = rates[..] else {
            unreachable!("two variants");
        };
        let baseline = if aggregates == 1 {
            format!("{raw:.0}/s raw INSERT, 1 txn each")
        } else {
            format!("{raw:.0}/s, {aggregates} concurrent raw INSERT txns")
        };
        rows.push(Row {
            figure,
            ours: format!("{ours:.0}/s"),
            baseline,
            ratio: ours / raw,
            goal: if goal { ">= 0.8x" } else { "-" },
            met: goal.then_some(ours / raw >= 0.8),
        });
    }

    let aggregate = bench.history(scale(REBUILD_EVENTS)).await;
    let gateway = common::gateway(bench.store.clone(), 0);
    let times = rotate(
        runs * 2,
        vec![
            Box::new(|| Box::pin(rebuild(&gateway, &aggregate))),
            Box::new(|| Box::pin(bench.raw_select(&aggregate, true))),
        ],
    )
    .await;
    let [full, raw_read] = times[..] else {
        unreachable!("two variants");
    };
    let times = rotate(
        runs * 2,
        vec![
            Box::new(|| Box::pin(load(&gateway, &aggregate))),
            Box::new(|| Box::pin(bench.raw_select(&aggregate, false))),
        ],
    )
    .await;
    let [load, raw_collected] = times[..] else {
        unreachable!("two variants");
    };
    // Times, not speeds: the ratio is the baseline's time over ours.
    rows.push(Row {
        figure: "rebuild 100,000 events (load, decode, fold)",
        ours: format!("{:.1} ms", full * 1e3),
        baseline: format!(
            "{:.1} ms raw SELECT, rows decoded as they arrive",
            raw_read * 1e3
        ),
        ratio: raw_read / full,
        goal: ">= 0.9x",
        met: Some(raw_read / full >= 0.9),
    });
    rows.push(Row {
        figure: "... load alone (read and decode, no fold)",
        ours: format!("{:.1} ms", load * 1e3),
        baseline: format!(
            "{:.1} ms raw SELECT, rows collected then decoded",
            raw_collected * 1e3
        ),
        ratio: raw_collected / load,
        goal: "-",
        met: None,
    });
    drop(gateway);

    let counted = scale(COUNTED_COMMANDS);
    let mut trips = Vec::new();
    for (label, kind) in [
        ("plain", Commands::Plain),
        ("retry_on_conflict", Commands::RetryOnConflict),
        ("with a request id", Commands::RequestId),
    ] {
        trips.push((label, bench.round_trips(counted, kind).await));
    }
    bench.close().await;

    if quick {
        println!("benchmark smoke run passed (run with `cargo bench` for figures)");
        return;
    }
    println!("| figure | angzarr | baseline (same run) | vs baseline | goal | met |");
    println!("|---|---|---|---|---|---|");
    for row in rows {
        let met = match row.met {
            Some(true) => "yes",
            Some(false) => "**no**",
            None => "-",
        };
        println!(
            "| {} | {} | {} | {:.2}x | {} | {met} |",
            row.figure, row.ours, row.baseline, row.ratio, row.goal
        );
    }
    println!();
    println!("Round trips per command, one client (store calls; each is one statement):");
    for (label, calls) in trips {
        let total: f64 = calls.values().sum();
        let each: Vec<String> = calls
            .iter()
            .map(|(call, per)| format!("{call} {per:.2}"))
            .collect();
        println!("- {label}: {total:.2} ({})", each.join(", "));
    }
}

/// The store and the baseline's pool, over one fresh schema of the test server.
struct Bench {
    url: String,
    schema: String,
    store: Arc<PostgresStore>,
    raw: managed::Pool<Raw>,
}

impl Bench {
    async fn open() -> Self {
        let url = common::server_var("ANGZARR_TEST_POSTGRES_URL", "postgres", "postgres");
        let schema = format!("bench_{}", Uuid::new_v4().simple());
        let config = PostgresConfig::new(&url)
            .with_schema(&schema)
            .with_pool_size(POOL_SIZE);
        let store = PostgresStore::open(config)
            .await
            .expect("open the PostgreSQL store");
        let table = format!("\"{schema}\".events");
        let raw = Raw {
            config: url.parse().expect("a valid URL"),
            insert: format!(
                "INSERT INTO {table} (domain, root, sequence, correlation_id, page) \
                 VALUES ($1, $2, $3, $4, $5)"
            ),
            select: format!(
                "SELECT page FROM {table} WHERE domain = $1 AND root = $2 ORDER BY sequence"
            ),
        };
        let raw = managed::Pool::builder(raw)
            .max_size(POOL_SIZE)
            .build()
            .expect("the baseline's pool");
        Self {
            url,
            schema,
            store: Arc::new(store),
            raw,
        }
    }

    /// Commands through the whole pipeline: `aggregates` clients, each on an account of its
    /// own, snapshots every 100 events (the server's default), as in the SQLite benchmark.
    async fn pipeline(&self, aggregates: u64, commands: u64, kind: Commands) -> f64 {
        let gateway = common::gateway(self.store.clone(), 100);
        common::pipeline(&gateway, aggregates, commands, kind).await
    }

    /// The baseline: the rows the pipeline writes, inserted by `clients` concurrent tasks, each
    /// into a stream of its own, one `INSERT` (one implicit transaction) at a time, each on a
    /// connection taken from the pool for it.
    async fn raw_inserts(&self, clients: u64, commands: u64) -> f64 {
        let per_client = commands / clients;
        let work: Vec<(Uuid, Vec<RawRow>)> = (0..clients)
            .map(|_| {
                let rows = (0..per_client)
                    .map(|sequence| {
                        let page = deposited_page(sequence, &Uuid::new_v4().to_string());
                        (page.correlation_id.clone(), page.encode_to_vec())
                    })
                    .collect();
                (Uuid::new_v4(), rows)
            })
            .collect();
        let started = Instant::now();
        let tasks: Vec<_> = work
            .into_iter()
            .map(|(root, rows)| {
                let pool = self.raw.clone();
                tokio::spawn(async move {
                    for (sequence, (correlation, page)) in rows.iter().enumerate() {
                        let conn = pool.get().await.expect("a raw connection");
                        conn.client
                            .execute(
                                &conn.insert,
                                &[
                                    &DOMAIN,
                                    &root,
                                    &(sequence as i64),
                                    &correlation.as_bytes(),
                                    &page.as_slice(),
                                ],
                            )
                            .await
                            .expect("insert");
                    }
                })
            })
            .collect();
        for task in tasks {
            task.await.expect("raw task");
        }
        (per_client * clients) as f64 / started.elapsed().as_secs_f64()
    }

    /// One account with `events` deposits, appended in large batches.
    async fn history(&self, events: u64) -> AggregateId {
        let aggregate = account(Uuid::new_v4());
        let mut next = 0;
        while next < events {
            let batch: Vec<EventPage> = (next..(next + 10_000).min(events))
                .map(|sequence| deposited_page(sequence, &Uuid::new_v4().to_string()))
                .collect();
            next = self
                .store
                .append(&aggregate, Append::new(next, batch))
                .await
                .expect("append history");
        }
        // Statistics as autovacuum would leave them: without, the planner takes the stream
        // for a few rows and may sort it on disk after a bitmap scan (it did, for the
        // baseline's SELECT, which has no sequence range to narrow its estimate).
        let conn = self.raw.get().await.expect("a raw connection");
        conn.client
            .batch_execute(&format!("ANALYZE \"{}\".events", self.schema))
            .await
            .expect("analyze");
        aggregate
    }

    /// The baseline: the same rows' pages, read with one SELECT and decoded, each row as it
    /// arrives (`streamed`, as the store reads) or all rows first.
    async fn raw_select(&self, aggregate: &AggregateId, streamed: bool) -> f64 {
        let started = Instant::now();
        let conn = self.raw.get().await.expect("a raw connection");
        let domain = aggregate.domain().as_str();
        let root = aggregate.root();
        let decode =
            |row: &tokio_postgres::Row| EventPage::decode(row.get::<_, &[u8]>(0)).expect("decode");
        let pages: Vec<EventPage> = if streamed {
            let params: [&(dyn ToSql + Sync); 2] = [&domain, &root];
            let rows = conn
                .client
                .query_raw(&conn.select, params)
                .await
                .expect("select");
            let mut rows = std::pin::pin!(rows);
            let mut pages = Vec::new();
            while let Some(row) = rows.try_next().await.expect("a row") {
                pages.push(decode(&row));
            }
            pages
        } else {
            let rows = conn
                .client
                .query(&conn.select, &[&domain, &root])
                .await
                .expect("select");
            rows.iter().map(decode).collect()
        };
        let elapsed = started.elapsed().as_secs_f64();
        assert!(!pages.is_empty(), "the history was read");
        std::hint::black_box(pages);
        elapsed
    }

    /// The store calls of `commands` deposits by one client, per command.
    async fn round_trips(&self, commands: u64, kind: Commands) -> BTreeMap<&'static str, f64> {
        let counting = Arc::new(Counting {
            inner: self.store.clone(),
            calls: Mutex::default(),
        });
        let gateway = common::gateway(counting.clone(), 100);
        let root = Uuid::new_v4();
        gateway
            .execute(command(root, &open("bench")))
            .await
            .expect("open");
        counting.calls.lock().expect("calls").clear();
        for n in 0..commands {
            gateway
                .execute(kind.command(root, n))
                .await
                .expect("deposit");
        }
        let calls = counting.calls.lock().expect("calls");
        calls
            .iter()
            .map(|(call, count)| {
                (
                    *call,
                    count.load(Ordering::Relaxed) as f64 / commands as f64,
                )
            })
            .collect()
    }

    /// Drops the schema.
    async fn close(self) {
        let Self {
            url, schema, store, ..
        } = self;
        drop(store);
        let (client, connection) = tokio_postgres::connect(&url, NoTls).await.expect("connect");
        let connection = tokio::spawn(connection);
        client
            .batch_execute(&format!("DROP SCHEMA IF EXISTS \"{schema}\" CASCADE"))
            .await
            .expect("drop the benchmark's schema");
        drop(client);
        let _ = connection.await;
    }
}

/// A row of the baseline's inserts: the correlation id and the encoded page.
type RawRow = (String, Vec<u8>);

/// Opens the baseline's connections: the driver alone, its two statements prepared once per
/// connection.
struct Raw {
    config: tokio_postgres::Config,
    insert: String,
    select: String,
}

struct RawConn {
    client: Client,
    insert: Statement,
    select: Statement,
}

impl managed::Manager for Raw {
    type Type = RawConn;
    type Error = tokio_postgres::Error;

    async fn create(&self) -> Result<RawConn, tokio_postgres::Error> {
        let (client, connection) = self.config.connect(NoTls).await?;
        tokio::spawn(connection);
        let (insert, select) =
            tokio::try_join!(client.prepare(&self.insert), client.prepare(&self.select))?;
        Ok(RawConn {
            client,
            insert,
            select,
        })
    }

    async fn recycle(
        &self,
        conn: &mut RawConn,
        _: &Metrics,
    ) -> RecycleResult<tokio_postgres::Error> {
        if conn.client.is_closed() {
            return Err(RecycleError::message("the connection is closed"));
        }
        Ok(())
    }
}

/// The store, counting the calls the pipeline makes: on this store each is one statement,
/// one round trip (a lost race costs an append a second).
struct Counting {
    inner: Arc<PostgresStore>,
    calls: Mutex<BTreeMap<&'static str, AtomicU64>>,
}

impl Counting {
    fn count(&self, call: &'static str) {
        self.calls
            .lock()
            .expect("calls")
            .entry(call)
            .or_default()
            .fetch_add(1, Ordering::Relaxed);
    }
}

#[async_trait]
impl EventStore for Counting {
    fn capabilities(&self) -> StoreCapabilities {
        self.inner.capabilities()
    }

    async fn append(
        &self,
        aggregate: &AggregateId,
        append: Append,
    ) -> Result<u64, EventStoreError> {
        self.count("append");
        self.inner.append(aggregate, append).await
    }

    async fn read(
        &self,
        aggregate: &AggregateId,
        range: SequenceRange,
    ) -> Result<Vec<EventPage>, EventStoreError> {
        self.count("read");
        self.inner.read(aggregate, range).await
    }

    async fn next_sequence(&self, aggregate: &AggregateId) -> Result<u64, EventStoreError> {
        self.count("next_sequence");
        self.inner.next_sequence(aggregate).await
    }

    async fn list_roots(
        &self,
        domain: &Domain,
        after: Option<Uuid>,
        limit: usize,
    ) -> Result<Vec<Uuid>, EventStoreError> {
        self.count("list_roots");
        self.inner.list_roots(domain, after, limit).await
    }

    async fn list_domains(&self) -> Result<Vec<Domain>, EventStoreError> {
        self.count("list_domains");
        self.inner.list_domains().await
    }

    async fn find_by_correlation(&self, id: &str) -> Result<Vec<AggregateEvents>, EventStoreError> {
        self.count("find_by_correlation");
        self.inner.find_by_correlation(id).await
    }

    async fn find_by_request(
        &self,
        aggregate: &AggregateId,
        id: &str,
    ) -> Result<Option<RequestRecord>, EventStoreError> {
        self.count("find_by_request");
        self.inner.find_by_request(aggregate, id).await
    }
}

#[async_trait]
impl SnapshotStore for Counting {
    async fn get(&self, aggregate: &AggregateId) -> Result<Option<Snapshot>, SnapshotStoreError> {
        self.count("snapshot get");
        SnapshotStore::get(self.inner.as_ref(), aggregate).await
    }

    async fn put(
        &self,
        aggregate: &AggregateId,
        snapshot: Snapshot,
    ) -> Result<(), SnapshotStoreError> {
        self.count("snapshot put");
        SnapshotStore::put(self.inner.as_ref(), aggregate, snapshot).await
    }

    async fn delete(&self, aggregate: &AggregateId) -> Result<(), SnapshotStoreError> {
        self.count("snapshot delete");
        SnapshotStore::delete(self.inner.as_ref(), aggregate).await
    }
}

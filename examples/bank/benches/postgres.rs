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

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Instant;

use angzarr_core::Gateway;
use angzarr_example_bank::proto::{BankEvent, Deposited, bank_event::Kind};
use angzarr_example_bank::{Account, DOMAIN, command, deposit, logic, open, replay};
use angzarr_ports::{
    AggregateEvents, AggregateId, Append, Domain, EventPage, EventStore, EventStoreError,
    RequestRecord, SequenceRange, Snapshot, SnapshotStore, SnapshotStoreError, StoreCapabilities,
    async_trait,
};
use angzarr_store_postgres::{PostgresConfig, PostgresStore};
use deadpool::managed::{self, Metrics, RecycleError, RecycleResult};
use prost::Message;
use prost_types::Any;
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
    // `cargo bench` passes `--bench`; `cargo test --benches` runs this once as a smoke test.
    let quick = !std::env::args().any(|arg| arg == "--bench");
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .expect("runtime");
    runtime.block_on(run(quick));
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
    if std::env::var_os("REBUILD").is_some() {
        let aggregate = bench.history(100_000).await;
        let gateway = bench.gateway(bench.store.clone(), 0);
        for _ in 0..3 {
            let (full, raw_read) = alternate(
                10,
                || rebuild(&gateway, &aggregate),
                || bench.raw_select(&aggregate),
            )
            .await;
            let started = Instant::now();
            let mut load = 0.0;
            for _ in 0..10 {
                let s = Instant::now();
                let loaded = gateway.load(&aggregate).await.unwrap();
                load += s.elapsed().as_secs_f64();
                std::hint::black_box(loaded);
            }
            let _ = started;
            println!(
                "rebuild {:.1} ms, raw {:.1} ms, load only {:.1} ms",
                full * 1e3,
                raw_read * 1e3,
                load / 10.0 * 1e3
            );
        }
        bench.close().await;
        return;
    }
    if std::env::var_os("READS").is_some() {
        let agg = bench.history(100).await;
        for _ in 0..3 {
            let started = Instant::now();
            for _ in 0..1000 {
                bench.store.next_sequence(&agg).await.unwrap();
            }
            println!(
                "next_sequence {:.1} us",
                started.elapsed().as_secs_f64() / 1000.0 * 1e6
            );
            let gateway = bench.gateway(bench.store.clone(), 100);
            let root = Uuid::new_v4();
            gateway
                .execute(command(root, &open("bench")))
                .await
                .unwrap();
            let started = Instant::now();
            for _ in 0..1000 {
                let mut book = command(root, &deposit(1));
                book.retry_on_conflict = true;
                gateway.execute(book).await.unwrap();
            }
            println!(
                "pipeline retry_on_conflict {:.1} us",
                started.elapsed().as_secs_f64() / 1000.0 * 1e6
            );
            let started = Instant::now();
            for _ in 0..1000 {
                gateway.execute(command(root, &deposit(1))).await.unwrap();
            }
            println!(
                "pipeline plain {:.1} us",
                started.elapsed().as_secs_f64() / 1000.0 * 1e6
            );
        }
        bench.close().await;
        return;
    }
    if std::env::var_os("TRIPS").is_some() {
        let started = Instant::now();
        println!("{:?}", bench.round_trips(500, false).await);
        println!(
            "total {:.1} us/cmd, next_sequence {:.1} us, append {:.1} us",
            started.elapsed().as_secs_f64() / 500.0 * 1e6,
            NS.load(Ordering::Relaxed) as f64 / 500.0 / 1e3,
            AP.load(Ordering::Relaxed) as f64 / 500.0 / 1e3
        );
        bench.close().await;
        return;
    }
    if std::env::var_os("PIPELINE_ONLY").is_some() {
        for _ in 0..4 {
            let rate = bench.pipeline(1, 5000, false).await;
            println!("pipeline {rate:.0}/s");
        }
        bench.close().await;
        return;
    }
    if std::env::var_os("CHUNKS").is_some() {
        let gateway = bench.gateway(bench.store.clone(), 100);
        let root = Uuid::new_v4();
        gateway
            .execute(command(root, &open("bench")))
            .await
            .unwrap();
        let raw_root = Uuid::new_v4();
        let mut raw_seq = 0i64;
        let conn_pool = bench.raw.clone();
        let (mut ours, mut raw, mut direct) = (0.0, 0.0, 0.0);
        let chunk = 50;
        let direct_agg = account(Uuid::new_v4());
        let mut direct_next = 0u64;
        for _ in 0..60 {
            let pages: Vec<EventPage> = (0..chunk)
                .map(|i| deposited_page(direct_next + i as u64))
                .collect();
            let started = Instant::now();
            for page in pages {
                direct_next = bench
                    .store
                    .append(&direct_agg, Append::new(direct_next, vec![page]))
                    .await
                    .unwrap();
            }
            direct += started.elapsed().as_secs_f64();
            let started = Instant::now();
            for _ in 0..chunk {
                gateway.execute(command(root, &deposit(1))).await.unwrap();
            }
            ours += started.elapsed().as_secs_f64();
            let rows: Vec<(String, Vec<u8>)> = (0..chunk)
                .map(|s| {
                    let p = deposited_page(s);
                    (p.correlation_id.clone(), p.encode_to_vec())
                })
                .collect();
            let started = Instant::now();
            for (c, p) in &rows {
                let conn = conn_pool.get().await.unwrap();
                conn.client
                    .execute(
                        &conn.insert,
                        &[&DOMAIN, &raw_root, &raw_seq, &c.as_bytes(), &p.as_slice()],
                    )
                    .await
                    .unwrap();
                raw_seq += 1;
            }
            raw += started.elapsed().as_secs_f64();
        }
        let n = (60 * chunk) as f64;
        println!(
            "chunked: ours {:.1} us/cmd, direct append {:.1} us, raw {:.1} us/insert, ratio {:.2}",
            ours / n * 1e6,
            direct / n * 1e6,
            raw / n * 1e6,
            raw / ours
        );
        bench.close().await;
        return;
    }
    if std::env::var_os("EXPERIMENT").is_some() {
        experiment(&bench).await;
        bench.close().await;
        return;
    }
    let mut rows = Vec::new();

    let sequential = scale(SEQUENTIAL_COMMANDS);
    let (single, raw) = alternate(
        runs,
        || bench.pipeline(1, sequential, false),
        || bench.raw_inserts(1, sequential),
    )
    .await;
    rows.push(Row {
        figure: "commands/s, one client, 1 event per command",
        ours: format!("{single:.0}/s"),
        baseline: format!("{raw:.0}/s raw INSERT, 1 txn each"),
        ratio: single / raw,
        goal: ">= 0.8x",
        met: Some(single / raw >= 0.8),
    });
    let (with_ids, raw_again) = alternate(
        runs,
        || bench.pipeline(1, sequential, true),
        || bench.raw_inserts(1, sequential),
    )
    .await;
    rows.push(Row {
        figure: "commands/s, one client, with request ids",
        ours: format!("{with_ids:.0}/s"),
        baseline: format!("{raw_again:.0}/s raw INSERT, 1 txn each"),
        ratio: with_ids / raw_again,
        goal: "(none)",
        met: None,
    });

    let concurrent_commands = scale(CONCURRENT_COMMANDS);
    let (concurrent, raw_concurrent) = alternate(
        runs,
        || bench.pipeline(CONCURRENT_AGGREGATES, concurrent_commands, false),
        || bench.raw_inserts(CONCURRENT_AGGREGATES, concurrent_commands),
    )
    .await;
    rows.push(Row {
        figure: "commands/s, 64 aggregates at once",
        ours: format!("{concurrent:.0}/s"),
        baseline: format!("{raw_concurrent:.0}/s, 64 concurrent raw INSERT txns"),
        ratio: concurrent / raw_concurrent,
        goal: ">= 0.8x",
        met: Some(concurrent / raw_concurrent >= 0.8),
    });

    let aggregate = bench.history(scale(REBUILD_EVENTS)).await;
    let gateway = bench.gateway(bench.store.clone(), 0);
    let (full, raw_read) = alternate(
        runs * 2,
        || rebuild(&gateway, &aggregate),
        || bench.raw_select(&aggregate),
    )
    .await;
    // Times, not speeds: the ratio is the baseline's time over ours.
    rows.push(Row {
        figure: "rebuild 100,000 events (load, decode, fold)",
        ours: format!("{:.1} ms", full * 1e3),
        baseline: format!("{:.1} ms raw SELECT + decode", raw_read * 1e3),
        ratio: raw_read / full,
        goal: ">= 0.9x",
        met: Some(raw_read / full >= 0.9),
    });
    drop(gateway);

    let counted = scale(COUNTED_COMMANDS);
    let plain = bench.round_trips(counted, false).await;
    let idempotent = bench.round_trips(counted, true).await;
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
    for (label, calls) in [
        ("without a request id", plain),
        ("with a request id", idempotent),
    ] {
        let total: f64 = calls.values().sum();
        let each: Vec<String> = calls
            .iter()
            .map(|(call, per)| format!("{call} {per:.2}"))
            .collect();
        println!("- {label}: {total:.2} ({})", each.join(", "));
    }
}

/// Runs `ours` and `baseline` in turns, `runs` times each, and answers both medians.
async fn alternate<A, B>(
    runs: usize,
    mut ours: impl FnMut() -> A,
    mut baseline: impl FnMut() -> B,
) -> (f64, f64)
where
    A: Future<Output = f64>,
    B: Future<Output = f64>,
{
    // One of each first, unmeasured: both pools open their connections.
    ours().await;
    baseline().await;
    let (mut a, mut b) = (Vec::with_capacity(runs), Vec::with_capacity(runs));
    for _ in 0..runs {
        a.push(ours().await);
        b.push(baseline().await);
    }
    (median(a), median(b))
}

fn median(mut values: Vec<f64>) -> f64 {
    values.sort_by(f64::total_cmp);
    values[values.len() / 2]
}

fn account(root: Uuid) -> AggregateId {
    AggregateId::new(Domain::new(DOMAIN).expect("valid"), root).expect("non-nil")
}

/// An event page as the pipeline writes it: a deposit, a timestamp, a correlation id.
fn deposited_page(sequence: u64) -> EventPage {
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
        correlation_id: Uuid::new_v4().to_string(),
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
        let url = std::env::var("ANGZARR_TEST_POSTGRES_URL").unwrap_or_else(|_| {
            panic!(
                "ANGZARR_TEST_POSTGRES_URL is not set: the PostgreSQL benchmark needs a server. \
                 Run `cargo xtask bench -p angzarr-example-bank --bench postgres`, which starts \
                 one, or `cargo xtask services up postgres` and \
                 `set -a; . target/services/env; set +a` before `cargo bench`."
            )
        });
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

    /// A gateway over `store` with the bank's logic.
    fn gateway<S: EventStore + SnapshotStore + 'static>(
        &self,
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

    /// Commands through the whole pipeline: `aggregates` clients, each on an account of its
    /// own, snapshots every 100 events (the server's default), as in the SQLite benchmark.
    async fn pipeline(&self, aggregates: u64, commands: u64, request_ids: bool) -> f64 {
        let gateway = self.gateway(self.store.clone(), 100);
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
                        let mut book = command(root, &deposit(1));
                        if request_ids {
                            book.request_id = format!("deposit-{n}");
                        }
                        gateway.execute(book).await.expect("deposit");
                    }
                })
            })
            .collect();
        for task in tasks {
            task.await.expect("client task");
        }
        (per_aggregate * aggregates) as f64 / started.elapsed().as_secs_f64()
    }

    /// The baseline: the rows the pipeline writes, inserted by `clients` concurrent tasks, each
    /// into a stream of its own, one `INSERT` (one implicit transaction) at a time, each on a
    /// connection taken from the pool for it.
    async fn raw_inserts(&self, clients: u64, commands: u64) -> f64 {
        let per_client = commands / clients;
        let work: Vec<(Uuid, Vec<(String, Vec<u8>)>)> = (0..clients)
            .map(|_| {
                let rows = (0..per_client)
                    .map(|sequence| {
                        let page = deposited_page(sequence);
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
                .map(deposited_page)
                .collect();
            next = self
                .store
                .append(&aggregate, Append::new(next, batch))
                .await
                .expect("append history");
        }
        aggregate
    }

    /// The baseline: the same rows' pages, read with one SELECT and decoded.
    async fn raw_select(&self, aggregate: &AggregateId) -> f64 {
        let started = Instant::now();
        let conn = self.raw.get().await.expect("a raw connection");
        let rows = conn
            .client
            .query(
                &conn.select,
                &[&aggregate.domain().as_str(), &aggregate.root()],
            )
            .await
            .expect("select");
        let pages: Vec<EventPage> = rows
            .iter()
            .map(|row| EventPage::decode(row.get::<_, &[u8]>(0)).expect("decode"))
            .collect();
        let elapsed = started.elapsed().as_secs_f64();
        assert!(!pages.is_empty(), "the history was read");
        std::hint::black_box(pages);
        elapsed
    }

    /// The store calls of `commands` deposits by one client, per command.
    async fn round_trips(&self, commands: u64, request_ids: bool) -> BTreeMap<&'static str, f64> {
        let counting = Arc::new(Counting {
            inner: self.store.clone(),
            calls: Mutex::default(),
        });
        let gateway = self.gateway(counting.clone(), 100);
        let root = Uuid::new_v4();
        gateway
            .execute(command(root, &open("bench")))
            .await
            .expect("open");
        counting.calls.lock().expect("calls").clear();
        for n in 0..commands {
            let mut book = command(root, &deposit(1));
            if request_ids {
                book.request_id = format!("deposit-{n}");
            }
            gateway.execute(book).await.expect("deposit");
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

/// Load (snapshot and later events), decode every event, fold it into the state.
async fn fold_all(gateway: &Gateway, aggregate: &AggregateId) -> Account {
    let loaded = gateway.load(aggregate).await.expect("load");
    let snapshot = loaded.snapshot.and_then(|snapshot| snapshot.state);
    replay(snapshot.as_ref(), &loaded.pages).expect("decode the history")
}

async fn rebuild(gateway: &Gateway, aggregate: &AggregateId) -> f64 {
    let started = Instant::now();
    let state = fold_all(gateway, aggregate).await;
    let elapsed = started.elapsed().as_secs_f64();
    assert!(state.balance > 0, "the fold saw the deposits");
    std::hint::black_box(state);
    elapsed
}

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
        let started = Instant::now();
        let r = self.inner.append(aggregate, append).await;
        AP.fetch_add(started.elapsed().as_nanos() as u64, Ordering::Relaxed);
        r
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
        let started = Instant::now();
        let r = self.inner.next_sequence(aggregate).await;
        NS.fetch_add(started.elapsed().as_nanos() as u64, Ordering::Relaxed);
        r
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

/// Temporary: the server-side cost of the append statement against a plain insert.
async fn experiment(bench: &Bench) {
    let t = format!("\"{}\".events", bench.schema);
    let variants: Vec<(&str, String, bool)> = vec![
        ("plain insert", format!("INSERT INTO {t} (domain, root, sequence, correlation_id, request_id, request_digest, page) VALUES ($1, $2, $3, $6, $4, $5, $7)"), false),
        ("current cte", format!("
WITH head AS (
    SELECT coalesce(max(sequence) + 1, 0) AS next
    FROM {t} WHERE domain = $1 AND root = $2
), inserted AS (
    INSERT INTO {t}
        (domain, root, sequence, correlation_id, request_id, request_digest, page)
    SELECT $1, $2, $3::bigint + batch.ordinal - 1, batch.correlation_id, $4::bytea, $5::bytea,
        batch.page
    FROM head, unnest($6::bytea[], $7::bytea[]) WITH ORDINALITY
        AS batch (correlation_id, page, ordinal)
    WHERE head.next = $3::bigint
    RETURNING 1
)
SELECT head.next, (SELECT count(*) FROM inserted) FROM head"), true),
        ("no cte, one row", format!("
    INSERT INTO {t}
        (domain, root, sequence, correlation_id, request_id, request_digest, page)
    SELECT $1, $2, $3::bigint, $6::bytea, $4::bytea, $5::bytea, $7::bytea
    WHERE (SELECT coalesce(max(sequence) + 1, 0) FROM {t} WHERE domain = $1 AND root = $2) = $3::bigint"), false),
        ("exists one row", format!("
    INSERT INTO {t}
        (domain, root, sequence, correlation_id, request_id, request_digest, page)
    SELECT $1, $2, $3::bigint, $6::bytea, $4::bytea, $5::bytea, $7::bytea
    WHERE $3::bigint = 0 OR EXISTS (SELECT FROM {t} WHERE domain = $1 AND root = $2 AND sequence = $3::bigint - 1)"), false),
        ("exists2 one row", format!("
    INSERT INTO {t}
        (domain, root, sequence, correlation_id, request_id, request_digest, page)
    SELECT $1, $2, $3::bigint, $6::bytea, $4::bytea, $5::bytea, $7::bytea
    WHERE ($3::bigint = 0 OR EXISTS (SELECT FROM {t} WHERE domain = $1 AND root = $2 AND sequence = $3::bigint - 1))
      AND NOT EXISTS (SELECT FROM {t} WHERE domain = $1 AND root = $2 AND sequence = $3::bigint)"), false),
        ("exists2 arrays", format!("
    INSERT INTO {t}
        (domain, root, sequence, correlation_id, request_id, request_digest, page)
    SELECT $1, $2, $3::bigint + batch.ordinal - 1, batch.correlation_id, $4::bytea, $5::bytea,
        batch.page
    FROM unnest($6::bytea[], $7::bytea[]) WITH ORDINALITY
        AS batch (correlation_id, page, ordinal)
    WHERE ($3::bigint = 0 OR EXISTS (SELECT FROM {t} WHERE domain = $1 AND root = $2 AND sequence = $3::bigint - 1))
      AND NOT EXISTS (SELECT FROM {t} WHERE domain = $1 AND root = $2 AND sequence = $3::bigint)"), true),
        ("arrays, no check", format!("
    INSERT INTO {t}
        (domain, root, sequence, correlation_id, request_id, request_digest, page)
    SELECT $1, $2, $3::bigint + batch.ordinal - 1, batch.correlation_id, $4::bytea, $5::bytea,
        batch.page
    FROM unnest($6::bytea[], $7::bytea[]) WITH ORDINALITY
        AS batch (correlation_id, page, ordinal)"), true),
    ];
    let conn = bench.raw.get().await.unwrap();
    let none: Option<&[u8]> = None;
    let mut statements = Vec::new();
    for (_, sql, _) in &variants {
        statements.push(conn.client.prepare(sql).await.unwrap());
    }
    let roots: Vec<Uuid> = variants.iter().map(|_| Uuid::new_v4()).collect();
    let mut totals = vec![0.0; variants.len()];
    let chunk = 50;
    let mut next = 0i64;
    for _ in 0..40 {
        let rows: Vec<(String, Vec<u8>)> = (0..chunk)
            .map(|s| {
                let p = deposited_page(s);
                (p.correlation_id.clone(), p.encode_to_vec())
            })
            .collect();
        for (v, (_, _, arrays)) in variants.iter().enumerate() {
            let root = roots[v];
            let statement = &statements[v];
            let started = Instant::now();
            for (i, (c, p)) in rows.iter().enumerate() {
                let sequence = next + i as i64;
                if *arrays {
                    let cs: Vec<&[u8]> = vec![c.as_bytes()];
                    let ps: Vec<&[u8]> = vec![p.as_slice()];
                    conn.client
                        .query(
                            statement,
                            &[&DOMAIN, &root, &sequence, &none, &none, &cs, &ps],
                        )
                        .await
                        .unwrap();
                } else {
                    conn.client
                        .query(
                            statement,
                            &[
                                &DOMAIN,
                                &root,
                                &sequence,
                                &none,
                                &none,
                                &c.as_bytes(),
                                &p.as_slice(),
                            ],
                        )
                        .await
                        .unwrap();
                }
            }
            totals[v] += started.elapsed().as_secs_f64();
        }
        next += chunk as i64;
    }
    let mut line = String::new();
    for (v, (name, _, _)) in variants.iter().enumerate() {
        line.push_str(&format!(
            " {name} {:.1}us;",
            totals[v] / (40 * chunk) as f64 * 1e6
        ));
    }
    println!("{line}");
}

static NS: AtomicU64 = AtomicU64::new(0);
static AP: AtomicU64 = AtomicU64::new(0);

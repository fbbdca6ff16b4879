//! The Redis figures of `docs/benchmarks.md`, each measured beside its baseline in the same
//! run, on a single server (`ANGZARR_TEST_REDIS_URL`) and on a Redis Cluster
//! (`ANGZARR_TEST_REDIS_CLUSTER_URLS`, comma-separated node URLs):
//!
//! `cargo xtask bench -p angzarr-example-bank --bench redis` (which starts the test servers if
//! the variables are not set), or `cargo bench -p angzarr-example-bank --bench redis` with the
//! variables set (`cargo xtask services up redis redis-cluster`, then
//! `set -a; . target/services/env; set +a`).
//!
//! A plain harness, as for SQLite and PostgreSQL: each figure is a throughput or a rebuild time
//! set against the raw `redis` crate doing the same, over the same kind of connection as the
//! store's (a multiplexed connection to the single server; the crate's async cluster
//! connection to the cluster), with the store's timeouts. Baselines:
//!
//! - appends: one `EVALSHA` (`redis::Script::invoke_async`) per event of a minimal
//!   compare-and-append script (`ZCARD` against the expected sequence, then `ZADD` of the
//!   event), the member being the bytes the store stores (sequence, token, encoded page), by
//!   1 client or by 64 concurrent clients each on an aggregate of its own;
//! - reads: `ZRANGE key 0 -1` of the store's own events key, every member decoded (and, for
//!   the third rebuild row, folded with the bank's `replay`, as the pipeline does).
//!
//! Runs of the pipeline and of its baseline alternate; each figure is the median.
//!
//! Requests per command are counted on the servers, with `MONITOR` on every node: each
//! request the store sends (not the commands its scripts run) is one line. Every key of a run
//! carries the run's prefix, which the count filters on, and the keys are removed at the end.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Instant;

use angzarr_core::{Gateway, LoadedAggregate};
use angzarr_example_bank::proto::{BankEvent, Deposited, bank_event::Kind};
use angzarr_example_bank::{Account, DOMAIN, command, deposit, logic, open, replay};
use angzarr_ports::{AggregateId, Append, Domain, EventPage, EventStore};
use angzarr_proto::v1::CommandBook;
use angzarr_store_redis::{RedisConfig, RedisStore};
use futures_util::StreamExt;
use prost::Message;
use prost_types::Any;
use redis::aio::MultiplexedConnection;
use redis::cluster::ClusterClient;
use redis::cluster_async::ClusterConnection;
use redis::{AsyncConnectionConfig, Client, Cmd, FromRedisValue, RedisResult, Script};
use uuid::Uuid;

const RUNS: usize = 5;
const SEQUENTIAL_COMMANDS: u64 = 5_000;
const CONCURRENT_AGGREGATES: u64 = 64;
const CONCURRENT_COMMANDS: u64 = 32_000;
const REBUILD_EVENTS: u64 = 100_000;
/// Commands whose requests are counted.
const COUNTED_COMMANDS: u64 = 1_000;
/// Events per append when writing the rebuild's history.
const HISTORY_BATCH: u64 = 10_000;

/// The baseline's compare-and-append: the least a script must do to append one event at an
/// expected sequence.
const RAW_APPEND: &str = r"
local actual = redis.call('ZCARD', KEYS[1])
if actual ~= tonumber(ARGV[1]) then
  return {0, actual}
end
redis.call('ZADD', KEYS[1], ARGV[2], ARGV[3])
return {1, actual + 1}
";

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

/// What the benchmark's commands carry.
#[derive(Debug, Clone, Copy)]
enum Commands {
    /// A deposit and nothing else: no request id, `retry_on_conflict` false.
    Plain,
    /// `retry_on_conflict` set.
    RetryOnConflict,
    /// A request id of its own.
    RequestId,
}

impl Commands {
    /// The `n`th deposit of one client into `root`.
    fn command(self, root: Uuid, n: u64) -> CommandBook {
        let mut book = command(root, &deposit(1));
        match self {
            Self::Plain => {}
            Self::RetryOnConflict => book.retry_on_conflict = true,
            Self::RequestId => book.request_id = format!("deposit-{n}"),
        }
        book
    }
}

/// Where a run goes: its name, and how to configure the store for it.
struct Target {
    name: &'static str,
    urls: Vec<String>,
    cluster: bool,
}

fn targets() -> Vec<Target> {
    let var = |name: &str| {
        std::env::var(name).unwrap_or_else(|_| {
            panic!(
                "{name} is not set: the Redis benchmark needs a server and a cluster. Run \
                 `cargo xtask bench -p angzarr-example-bank --bench redis`, which starts them, \
                 or `cargo xtask services up redis redis-cluster` and \
                 `set -a; . target/services/env; set +a` before `cargo bench`."
            )
        })
    };
    let single = var("ANGZARR_TEST_REDIS_URL");
    let cluster = var("ANGZARR_TEST_REDIS_CLUSTER_URLS")
        .split(',')
        .map(|url| url.trim().to_owned())
        .filter(|url| !url.is_empty())
        .collect();
    vec![
        Target {
            name: "single node",
            urls: vec![single],
            cluster: false,
        },
        Target {
            name: "cluster",
            urls: cluster,
            cluster: true,
        },
    ]
}

async fn run(quick: bool) {
    if let Ok(what) = std::env::var("PROFILE_ONLY") {
        let cluster = what.starts_with("cluster-");
        let target = targets()
            .into_iter()
            .find(|t| t.cluster == cluster)
            .unwrap();
        let bench = Bench::open(target).await;
        let what = what.trim_start_matches("cluster-");
        let mut rates = Vec::new();
        for _ in 0..5 {
            rates.push(match what {
                "p1" => bench.pipeline(1, 20_000, Commands::Plain).await,
                "p64" => bench.pipeline(64, 64_000, Commands::Plain).await,
                "r1" => bench.raw_appends(1, 20_000).await,
                "r64" => bench.raw_appends(64, 64_000).await,
                "s1" => bench.store_appends(1, 20_000).await,
                "s64" => bench.store_appends(64, 64_000).await,
                _ => panic!(),
            });
        }
        println!("{what}: {rates:.0?}");
        bench.close().await;
        return;
    }
    let mut reports = Vec::new();
    for target in targets() {
        let bench = Bench::open(target).await;
        let report = bench.measure(quick).await;
        bench.close().await;
        reports.push(report);
    }
    if quick {
        println!("benchmark smoke run passed (run with `cargo bench` for figures)");
        return;
    }
    for (name, rows, requests) in reports {
        println!("### {name}");
        println!();
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
        println!("Requests per command, one client (counted on the servers with MONITOR):");
        for (label, counts) in requests {
            let total: f64 = counts.values().sum();
            let each: Vec<String> = counts
                .iter()
                .map(|(command, per)| format!("{command} {per:.2}"))
                .collect();
            println!("- {label}: {total:.2} ({})", each.join(", "));
        }
        println!();
    }
}

type Report = (
    &'static str,
    Vec<Row>,
    Vec<(&'static str, BTreeMap<String, f64>)>,
);

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
    // One of each first, unmeasured: connections open, the scripts get cached.
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
fn deposited_page(sequence: u64, correlation_id: &str) -> EventPage {
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

/// The member the store keeps for an event: its sequence and an append token (8 bytes each,
/// big-endian), then the encoded page.
fn event_member(page: &EventPage, token: u64) -> Vec<u8> {
    let mut member = Vec::with_capacity(16 + page.encoded_len());
    member.extend_from_slice(&page.sequence.to_be_bytes());
    member.extend_from_slice(&token.to_be_bytes());
    page.encode(&mut member).expect("a Vec grows");
    member
}

/// The page of a stored member, as the store reads it.
fn decode_member(member: &[u8]) -> EventPage {
    let (sequence, rest) = member.split_at(8);
    let page = EventPage::decode(&rest[8..]).expect("decode");
    assert_eq!(
        page.sequence.to_be_bytes(),
        sequence,
        "the member's sequence"
    );
    page
}

/// The raw client's connection: the same kind as the store's.
#[derive(Clone)]
enum RawConnection {
    Single(MultiplexedConnection),
    Cluster(ClusterConnection),
}

impl RawConnection {
    async fn open(target: &Target) -> Self {
        if target.cluster {
            let client = ClusterClient::builder(target.urls.iter().map(String::as_str))
                .connection_timeout(RedisConfig::DEFAULT_CONNECTION_TIMEOUT)
                .response_timeout(RedisConfig::DEFAULT_RESPONSE_TIMEOUT)
                .retries(RedisConfig::DEFAULT_CLUSTER_RETRIES)
                .build()
                .expect("a cluster client");
            Self::Cluster(client.get_async_connection().await.expect("connect"))
        } else {
            let client = Client::open(target.urls[0].as_str()).expect("a client");
            let config = AsyncConnectionConfig::new()
                .set_connection_timeout(Some(RedisConfig::DEFAULT_CONNECTION_TIMEOUT))
                .set_response_timeout(Some(RedisConfig::DEFAULT_RESPONSE_TIMEOUT));
            Self::Single(
                client
                    .get_multiplexed_async_connection_with_config(&config)
                    .await
                    .expect("connect"),
            )
        }
    }

    async fn query<T: FromRedisValue>(&mut self, cmd: &Cmd) -> RedisResult<T> {
        match self {
            Self::Single(connection) => cmd.query_async(connection).await,
            Self::Cluster(connection) => cmd.query_async(connection).await,
        }
    }

    /// Runs the compare-and-append script: `{1, next}` or `{0, actual}`.
    async fn append(&mut self, script: &Script, key: &str, expected: u64, member: &[u8]) -> bool {
        let mut invocation = script.prepare_invoke();
        invocation.key(key).arg(expected).arg(expected).arg(member);
        let (status, _): (i64, i64) = match self {
            Self::Single(connection) => invocation.invoke_async(connection).await,
            Self::Cluster(connection) => invocation.invoke_async(connection).await,
        }
        .expect("the raw append");
        status == 1
    }
}

/// One target's store, its baseline's connection, and a key prefix of the run's own.
struct Bench {
    target: Target,
    prefix: String,
    store: Arc<RedisStore>,
    raw: RawConnection,
    script: Script,
}

impl Bench {
    async fn open(target: Target) -> Self {
        let prefix = format!("bench_{}", Uuid::new_v4().simple());
        let config = if target.cluster {
            RedisConfig::cluster(target.urls.clone())
        } else {
            RedisConfig::single(target.urls[0].clone())
        }
        .with_key_prefix(&prefix);
        let store = RedisStore::open(config)
            .await
            .expect("open the Redis store");
        let raw = RawConnection::open(&target).await;
        Self {
            target,
            prefix,
            store: Arc::new(store),
            raw,
            script: Script::new(RAW_APPEND),
        }
    }

    async fn measure(&self, quick: bool) -> Report {
        let scale = |n: u64| if quick { (n / 20).max(10) } else { n };
        let runs = if quick { 1 } else { RUNS };
        let mut rows = Vec::new();

        for (figure, aggregates, commands) in [
            (
                "commands/s, one client, 1 event per command",
                1,
                scale(SEQUENTIAL_COMMANDS),
            ),
            (
                "commands/s, 64 aggregates at once",
                CONCURRENT_AGGREGATES,
                scale(CONCURRENT_COMMANDS),
            ),
        ] {
            let (ours, raw) = alternate(
                runs,
                || self.pipeline(aggregates, commands, Commands::Plain),
                || self.raw_appends(aggregates, commands),
            )
            .await;
            let baseline = if aggregates == 1 {
                format!("{raw:.0}/s raw EVALSHA, one at a time")
            } else {
                format!("{raw:.0}/s, {aggregates} concurrent raw EVALSHA clients")
            };
            rows.push(Row {
                figure,
                ours: format!("{ours:.0}/s"),
                baseline,
                ratio: ours / raw,
                goal: ">= 0.8x",
                met: Some(ours / raw >= 0.8),
            });
        }

        let aggregate = self.history(scale(REBUILD_EVENTS)).await;
        let gateway = self.gateway(0);
        let (full, raw_read) = alternate(
            runs * 2,
            || rebuild(&gateway, &aggregate),
            || self.raw_read(&aggregate, false),
        )
        .await;
        let (load, raw_load) = alternate(
            runs * 2,
            || load(&gateway, &aggregate),
            || self.raw_read(&aggregate, false),
        )
        .await;
        let (full_again, raw_folded) = alternate(
            runs * 2,
            || rebuild(&gateway, &aggregate),
            || self.raw_read(&aggregate, true),
        )
        .await;
        // Times, not speeds: the ratio is the baseline's time over ours.
        rows.push(Row {
            figure: "rebuild 100,000 events (load, decode, fold)",
            ours: format!("{:.1} ms", full * 1e3),
            baseline: format!("{:.1} ms raw ZRANGE, decoded", raw_read * 1e3),
            ratio: raw_read / full,
            goal: ">= 0.9x",
            met: Some(raw_read / full >= 0.9),
        });
        rows.push(Row {
            figure: "... load alone (read and decode, no fold)",
            ours: format!("{:.1} ms", load * 1e3),
            baseline: format!("{:.1} ms raw ZRANGE, decoded", raw_load * 1e3),
            ratio: raw_load / load,
            goal: "-",
            met: None,
        });
        rows.push(Row {
            figure: "... rebuild against a baseline that folds too",
            ours: format!("{:.1} ms", full_again * 1e3),
            baseline: format!(
                "{:.1} ms raw ZRANGE, decoded, folded with `replay`",
                raw_folded * 1e3
            ),
            ratio: raw_folded / full_again,
            goal: "-",
            met: None,
        });
        drop(gateway);

        let counted = scale(COUNTED_COMMANDS);
        let mut requests = Vec::new();
        for (label, kind) in [
            ("plain", Commands::Plain),
            ("retry_on_conflict", Commands::RetryOnConflict),
            ("with a request id", Commands::RequestId),
        ] {
            requests.push((label, self.requests(counted, kind).await));
        }
        (self.target.name, rows, requests)
    }

    /// A gateway over the store with the bank's logic.
    fn gateway(&self, snapshot_every: u64) -> Gateway {
        Gateway::builder(self.store.clone(), self.store.clone())
            .register(
                Domain::new(DOMAIN).expect("valid"),
                Arc::new(logic(snapshot_every)),
            )
            .build()
    }

    /// Opens an account for each root (not timed).
    async fn open_accounts(gateway: &Gateway, roots: &[Uuid]) {
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
    }

    /// Commands through the whole pipeline: `aggregates` clients, each on an account of its
    /// own, snapshots every 100 events (the server's default), as in the other benchmarks.
    async fn pipeline(&self, aggregates: u64, commands: u64, kind: Commands) -> f64 {
        let gateway = self.gateway(100);
        let roots: Vec<Uuid> = (0..aggregates).map(|_| Uuid::new_v4()).collect();
        Self::open_accounts(&gateway, &roots).await;
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

    /// The baseline: the events the pipeline writes, appended by `clients` concurrent tasks,
    /// each to a sorted set of its own (in the store's key spelling, so that they spread over
    /// the cluster's slots alike), one compare-and-append script at a time.
    async fn raw_appends(&self, clients: u64, commands: u64) -> f64 {
        let per_client = commands / clients;
        let work: Vec<(String, Vec<Vec<u8>>)> = (0..clients)
            .map(|_| {
                let key = format!("{{{}:raw:{}}}:e", self.prefix, Uuid::new_v4());
                let members = (0..per_client)
                    .map(|sequence| {
                        let page = deposited_page(sequence, &Uuid::new_v4().to_string());
                        event_member(&page, rand_token())
                    })
                    .collect();
                (key, members)
            })
            .collect();
        let started = Instant::now();
        let tasks: Vec<_> = work
            .into_iter()
            .map(|(key, members)| {
                let mut raw = self.raw.clone();
                let script = self.script.clone();
                tokio::spawn(async move {
                    for (sequence, member) in members.iter().enumerate() {
                        let appended = raw.append(&script, &key, sequence as u64, member).await;
                        assert!(appended, "the raw append met its expected sequence");
                    }
                })
            })
            .collect();
        for task in tasks {
            task.await.expect("raw task");
        }
        (per_client * clients) as f64 / started.elapsed().as_secs_f64()
    }

    async fn store_appends(&self, clients: u64, commands: u64) -> f64 {
        let per_client = commands / clients;
        let started = Instant::now();
        let tasks: Vec<_> = (0..clients)
            .map(|_| {
                let store = self.store.clone();
                tokio::spawn(async move {
                    let aggregate = account(Uuid::new_v4());
                    for sequence in 0..per_client {
                        let page = deposited_page(sequence, &Uuid::new_v4().to_string());
                        store
                            .append(&aggregate, Append::new(sequence, vec![page]))
                            .await
                            .unwrap();
                    }
                })
            })
            .collect();
        for task in tasks {
            task.await.expect("raw task");
        }
        (per_client * clients) as f64 / started.elapsed().as_secs_f64()
    }

    /// One account with `events` deposits, appended by the store in large batches (one
    /// correlation id per batch: the pages have the size of the pipeline's, and the history
    /// does not cost a correlation set per event).
    async fn history(&self, events: u64) -> AggregateId {
        let aggregate = account(Uuid::new_v4());
        let mut next = 0;
        while next < events {
            let correlation_id = Uuid::new_v4().to_string();
            let batch: Vec<EventPage> = (next..(next + HISTORY_BATCH).min(events))
                .map(|sequence| deposited_page(sequence, &correlation_id))
                .collect();
            next = self
                .store
                .append(&aggregate, Append::new(next, batch))
                .await
                .expect("append history");
        }
        aggregate
    }

    /// The baseline: the store's events key read with one `ZRANGE`, each member decoded (and
    /// folded, if `fold`).
    async fn raw_read(&self, aggregate: &AggregateId, fold: bool) -> f64 {
        let key = format!(
            "{{{}:{}:{}}}:e",
            self.prefix,
            aggregate.domain(),
            aggregate.root().hyphenated()
        );
        let mut raw = self.raw.clone();
        let started = Instant::now();
        let members: Vec<Vec<u8>> = raw
            .query(redis::cmd("ZRANGE").arg(&key).arg(0).arg(-1))
            .await
            .expect("zrange");
        let pages: Vec<EventPage> = members.iter().map(|member| decode_member(member)).collect();
        // The reply's buffers are freed on the clock, as the store frees its own; the pages
        // after it, on both sides.
        drop(members);
        let state = fold.then(|| replay(None, &pages).expect("decode the history"));
        let elapsed = started.elapsed().as_secs_f64();
        assert!(!pages.is_empty(), "the history was read");
        std::hint::black_box((pages, state));
        elapsed
    }

    /// The requests the store sends for `commands` deposits by one client, per command, by
    /// command name: `MONITOR` on every node, counting the lines that name the run's keys and
    /// do not come from a script.
    async fn requests(&self, commands: u64, kind: Commands) -> BTreeMap<String, f64> {
        let gateway = self.gateway(100);
        let root = Uuid::new_v4();
        gateway
            .execute(command(root, &open("bench")))
            .await
            .expect("open");
        let marker = format!("{}:counted", self.prefix);
        let mut monitors = Vec::new();
        for url in &self.target.urls {
            let client = Client::open(url.as_str()).expect("a client");
            let monitor = client.get_async_monitor().await.expect("monitor");
            let (prefix, marker) = (self.prefix.clone(), marker.clone());
            monitors.push(tokio::spawn(async move {
                let mut lines = std::pin::pin!(monitor.into_on_message::<String>());
                let mut counts: BTreeMap<String, u64> = BTreeMap::new();
                while let Some(line) = lines.next().await {
                    if line.contains(&marker) {
                        break;
                    }
                    // `<time> [<db> <client address>] "COMMAND" "arg" ...`, or `[<db> lua]`
                    // for the commands a script runs.
                    let Some((client, rest)) = line.split_once("] ") else {
                        continue;
                    };
                    if client.ends_with(" lua") || !rest.contains(&prefix) {
                        continue;
                    }
                    let mut words = rest.split(' ').map(|word| word.trim_matches('"'));
                    let mut name = words.next().unwrap_or_default().to_uppercase();
                    if name == "EVALSHA" {
                        // Which script: the store's append has 3 keys in a cluster and 6 on
                        // a single server (it writes the indexes too), its lookup 2.
                        let keys = words.nth(1).unwrap_or_default();
                        name = format!("EVALSHA ({keys} keys)");
                    }
                    *counts.entry(name).or_default() += 1;
                }
                counts
            }));
        }
        for n in 0..commands {
            gateway
                .execute(kind.command(root, n))
                .await
                .expect("deposit");
        }
        let mut totals: BTreeMap<String, u64> = BTreeMap::new();
        for (url, monitor) in self.target.urls.iter().zip(monitors) {
            let client = Client::open(url.as_str()).expect("a client");
            let mut connection = client
                .get_multiplexed_async_connection()
                .await
                .expect("connect");
            let _: String = redis::cmd("ECHO")
                .arg(&marker)
                .query_async(&mut connection)
                .await
                .expect("echo");
            for (name, count) in monitor.await.expect("monitor task") {
                *totals.entry(name).or_default() += count;
            }
        }
        totals
            .into_iter()
            .map(|(name, count)| (name, count as f64 / commands as f64))
            .collect()
    }

    /// Removes the run's keys from every node.
    async fn close(self) {
        let Self { target, prefix, .. } = self;
        let pattern = format!("{{{prefix}[:}}]*");
        for url in &target.urls {
            let client = Client::open(url.as_str()).expect("a client");
            let mut connection = client
                .get_multiplexed_async_connection()
                .await
                .expect("connect");
            let mut cursor = 0_u64;
            loop {
                let (next, keys): (u64, Vec<String>) = redis::cmd("SCAN")
                    .arg(cursor)
                    .arg("MATCH")
                    .arg(&pattern)
                    .arg("COUNT")
                    .arg(1000)
                    .query_async(&mut connection)
                    .await
                    .expect("scan");
                if !keys.is_empty() {
                    let mut unlink = redis::pipe();
                    for key in &keys {
                        // One key per command: in a cluster, keys of different slots.
                        unlink.cmd("UNLINK").arg(key).ignore();
                    }
                    let () = unlink
                        .query_async(&mut connection)
                        .await
                        .expect("unlink the run's keys");
                }
                cursor = next;
                if cursor == 0 {
                    break;
                }
            }
        }
    }
}

/// A random append token, as the store makes one per append.
fn rand_token() -> u64 {
    let (high, low) = Uuid::new_v4().as_u64_pair();
    high ^ low
}

/// Load (snapshot and later events), decode every event, fold it into the state. The loaded
/// pages are answered too, so that they are freed after the clock stops, as the baseline's are.
async fn fold_all(gateway: &Gateway, aggregate: &AggregateId) -> (Account, LoadedAggregate) {
    let loaded = gateway.load(aggregate).await.expect("load");
    let snapshot = loaded
        .snapshot
        .as_ref()
        .and_then(|snapshot| snapshot.state.as_ref());
    let state = replay(snapshot, &loaded.pages).expect("decode the history");
    (state, loaded)
}

/// Load alone: read and decode the pages, no fold.
async fn load(gateway: &Gateway, aggregate: &AggregateId) -> f64 {
    let started = Instant::now();
    let loaded = gateway.load(aggregate).await.expect("load");
    let elapsed = started.elapsed().as_secs_f64();
    assert!(!loaded.pages.is_empty(), "the history was read");
    std::hint::black_box(loaded);
    elapsed
}

async fn rebuild(gateway: &Gateway, aggregate: &AggregateId) -> f64 {
    let started = Instant::now();
    let (state, loaded) = fold_all(gateway, aggregate).await;
    let elapsed = started.elapsed().as_secs_f64();
    assert!(state.balance > 0, "the fold saw the deposits");
    std::hint::black_box((state, loaded));
    elapsed
}

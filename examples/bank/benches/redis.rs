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
//!   the last rebuild row, folded with the bank's `replay`, as the pipeline does). The reply's
//!   buffers are freed on the clock (the store frees its own), the pages after it, on both
//!   sides.
//!
//! Two more append figures split the pipeline's cost: the store alone (`EventStore::append`
//! of the same pages, no core), and the raw client sending exactly the store's requests (its
//! own append script, read from the store's source, with the store's keys and arguments; in a
//! cluster the correlation index `SADD` first, as the store does).
//!
//! Runs of the variants of one figure take turns; each figure is the median (of 5 runs for
//! appends, of 20 for reads).
//!
//! Requests per command are counted on the servers, with `MONITOR` on every node: each
//! request the store sends (not the commands its scripts run) is one line. Every key of a run
//! carries the run's prefix, which the count filters on, and the keys are removed at the end.

mod common;

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Instant;

use angzarr_example_bank::{command, open, replay};
use angzarr_ports::{AggregateId, EventPage};
use angzarr_store_redis::{RedisConfig, RedisStore};
use common::{Commands, load, rebuild, rotate};
use futures_util::StreamExt;
use prost::Message;
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
const MINIMAL_APPEND: &str = r"
local actual = redis.call('ZCARD', KEYS[1])
if actual ~= tonumber(ARGV[1]) then
  return {0, actual}
end
redis.call('ZADD', KEYS[1], ARGV[2], ARGV[3])
return {1, actual + 1}
";

/// The store's own append script, taken from its source so that it cannot drift.
fn store_append_script() -> &'static str {
    const SOURCE: &str = include_str!("../../../crates/store-redis/src/script.rs");
    const START: &str = "pub(crate) const APPEND: &str = r#\"";
    let start = SOURCE.find(START).expect("the store's append script") + START.len();
    let len = SOURCE[start..]
        .find("\"#;")
        .expect("the end of the append script");
    &SOURCE[start..start + len]
}

fn main() {
    common::main(run);
}

struct Row {
    figure: String,
    ours: String,
    baseline: String,
    /// Ours against the baseline, as speeds: above 1, ours is faster.
    ratio: f64,
    goal: &'static str,
    met: Option<bool>,
}

/// Where a run goes: its name, and how to configure the store for it.
struct Target {
    name: &'static str,
    urls: Vec<String>,
    cluster: bool,
}

fn targets() -> Vec<Target> {
    let var = |name: &str| common::server_var(name, "redis", "redis redis-cluster");
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

/// One target's figures: its name, the table's rows, and the requests per command by kind.
type Report = (
    &'static str,
    Vec<Row>,
    Vec<(&'static str, BTreeMap<String, f64>)>,
);

async fn run(quick: bool) {
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

/// A random append token, as the store makes one per append.
fn token() -> u64 {
    let (high, low) = Uuid::new_v4().as_u64_pair();
    high ^ low
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

/// The member of the store's correlation index for the events `from..to` of one append:
/// `len(id)` (4 bytes, big-endian), the id, then both sequences (8 bytes each).
fn correlation_member(id: &str, from: u64, to: u64) -> Vec<u8> {
    let mut member = Vec::with_capacity(4 + id.len() + 16);
    member.extend_from_slice(&u32::try_from(id.len()).expect("short").to_be_bytes());
    member.extend_from_slice(id.as_bytes());
    member.extend_from_slice(&from.to_be_bytes());
    member.extend_from_slice(&to.to_be_bytes());
    member
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

    /// Runs an append script (`EVALSHA`, `EVAL` the first time): whether it answered
    /// success (`{1, next}`).
    async fn append(&mut self, script: &Script, keys: &[String], args: &[Vec<u8>]) -> bool {
        let mut invocation = script.prepare_invoke();
        for key in keys {
            invocation.key(key);
        }
        for arg in args {
            invocation.arg(arg);
        }
        let (status, _): (i64, redis::Value) = match self {
            Self::Single(connection) => invocation.invoke_async(connection).await,
            Self::Cluster(connection) => invocation.invoke_async(connection).await,
        }
        .expect("the raw append");
        status == 1
    }
}

/// What a raw client sends for one event.
struct RawAppend {
    /// In a cluster, the `SADD` the store sends before its script.
    before: Option<Cmd>,
    keys: Vec<String>,
    args: Vec<Vec<u8>>,
}

/// One target's store, its baseline's connection, and a key prefix of the run's own.
struct Bench {
    target: Target,
    prefix: String,
    store: Arc<RedisStore>,
    raw: RawConnection,
    minimal: Script,
    store_script: Script,
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
        // A server started just now may still be loading its append-only file (the runs
        // before this one wrote a lot): wait for it.
        let deadline = Instant::now() + std::time::Duration::from_secs(120);
        let store = loop {
            match RedisStore::open(config.clone()).await {
                Err(error)
                    if error.to_string().to_lowercase().contains("loading")
                        && Instant::now() < deadline =>
                {
                    tokio::time::sleep(std::time::Duration::from_millis(200)).await;
                }
                opened => break opened.expect("open the Redis store"),
            }
        };
        let raw = RawConnection::open(&target).await;
        Self {
            target,
            prefix,
            store: Arc::new(store),
            raw,
            minimal: Script::new(MINIMAL_APPEND),
            store_script: Script::new(store_append_script()),
        }
    }

    async fn measure(&self, quick: bool) -> Report {
        let scale = |n: u64| if quick { (n / 20).max(10) } else { n };
        let runs = if quick { 1 } else { RUNS };
        let mut rows = Vec::new();

        for (figure, clients, commands) in [
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
            let rates = rotate(
                runs,
                vec![
                    Box::new(move || Box::pin(self.pipeline(clients, commands, Commands::Plain))),
                    Box::new(move || {
                        Box::pin(common::store_appends(&self.store, clients, commands))
                    }),
                    Box::new(move || Box::pin(self.raw_appends(clients, commands, false))),
                    Box::new(move || Box::pin(self.raw_appends(clients, commands, true))),
                ],
            )
            .await;
            let [pipeline, store, store_requests, minimal] = rates[..] else {
                unreachable!("four variants");
            };
            let baseline = if clients == 1 {
                format!("{minimal:.0}/s raw EVALSHA, minimal script, one at a time")
            } else {
                format!("{minimal:.0}/s, {clients} concurrent raw EVALSHA clients, minimal script")
            };
            let sadd = if self.target.cluster { "SADD and " } else { "" };
            for (figure, ours, goal) in [
                (figure.to_owned(), pipeline, true),
                (
                    "... the store alone (`append` of the same pages, no core)".to_owned(),
                    store,
                    false,
                ),
                (
                    format!("... raw: the store's requests ({sadd}EVALSHA of its own script)"),
                    store_requests,
                    false,
                ),
            ] {
                rows.push(Row {
                    figure,
                    ours: format!("{ours:.0}/s"),
                    baseline: baseline.clone(),
                    ratio: ours / minimal,
                    goal: if goal { ">= 0.8x" } else { "-" },
                    met: goal.then_some(ours / minimal >= 0.8),
                });
            }
        }

        let aggregate =
            common::history(self.store.as_ref(), scale(REBUILD_EVENTS), HISTORY_BATCH).await;
        let gateway = common::gateway(self.store.clone(), 0);
        // Reads are short and their times spread (the allocator's state weighs): more runs.
        let times = rotate(
            runs * 4,
            vec![
                Box::new(|| Box::pin(rebuild(&gateway, &aggregate))),
                Box::new(|| Box::pin(load(&gateway, &aggregate))),
                Box::new(|| Box::pin(self.raw_read(&aggregate, false))),
                Box::new(|| Box::pin(self.raw_read(&aggregate, true))),
            ],
        )
        .await;
        let [full, load, raw_read, raw_folded] = times[..] else {
            unreachable!("four variants");
        };
        // Times, not speeds: the ratio is the baseline's time over ours.
        for (figure, ours, raw, baseline, goal) in [
            (
                "rebuild 100,000 events (load, decode, fold)",
                full,
                raw_read,
                "raw ZRANGE, decoded",
                true,
            ),
            (
                "... load alone (read and decode, no fold)",
                load,
                raw_read,
                "raw ZRANGE, decoded",
                false,
            ),
            (
                "... rebuild against a baseline that folds too",
                full,
                raw_folded,
                "raw ZRANGE, decoded, folded with `replay`",
                false,
            ),
        ] {
            rows.push(Row {
                figure: figure.to_owned(),
                ours: format!("{:.1} ms", ours * 1e3),
                baseline: format!("{:.1} ms {baseline}", raw * 1e3),
                ratio: raw / ours,
                goal: if goal { ">= 0.9x" } else { "-" },
                met: goal.then_some(raw / ours >= 0.9),
            });
        }
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

    /// Commands through the whole pipeline: `aggregates` clients, each on an account of its
    /// own, snapshots every 100 events (the server's default), as in the other benchmarks.
    async fn pipeline(&self, aggregates: u64, commands: u64, kind: Commands) -> f64 {
        let gateway = common::gateway(self.store.clone(), 100);
        common::pipeline(&gateway, aggregates, commands, kind).await
    }

    /// What the store sends to append `page` to `aggregate` (one event, no request id, one
    /// correlation id): its keys and arguments, built ahead, under a domain of the baseline's
    /// own.
    fn store_request(&self, root: Uuid, page: &EventPage) -> RawAppend {
        let (prefix, domain, root) = (&self.prefix, "raw", root.hyphenated().to_string());
        let tag = format!("{{{prefix}:{domain}:{root}}}");
        let sequence = page.sequence;
        let id = &page.correlation_id;
        let mut keys = vec![format!("{tag}:e"), format!("{tag}:q"), format!("{tag}:c")];
        let mut args = vec![
            sequence.to_string().into_bytes(),
            b"1".to_vec(),
            sequence.to_string().into_bytes(),
            event_member(page, token()),
            Vec::new(),
            b"1".to_vec(),
            correlation_member(id, sequence, sequence + 1),
        ];
        let correlation_set = format!("{{{prefix}:{id}}}:corr");
        let aggregate_member = format!("{domain} {root}");
        let before = if self.target.cluster {
            Some(
                redis::cmd("SADD")
                    .arg(&correlation_set)
                    .arg(&aggregate_member)
                    .clone(),
            )
        } else {
            keys.extend([
                format!("{{{prefix}}}:domains"),
                format!("{{{prefix}:{domain}}}:roots"),
                correlation_set,
            ]);
            args.extend([
                domain.as_bytes().to_vec(),
                root.into_bytes(),
                aggregate_member.into_bytes(),
            ]);
            None
        };
        RawAppend { before, keys, args }
    }

    /// The baselines: the pipeline's events appended by the raw client, by `clients`
    /// concurrent tasks, each to an aggregate of its own, one event at a time. `minimal`: one
    /// `EVALSHA` of the minimal compare-and-append script to the store's events key spelling
    /// (so that the keys spread over a cluster's slots alike); otherwise exactly the store's
    /// requests.
    async fn raw_appends(&self, clients: u64, commands: u64, minimal: bool) -> f64 {
        let work: Vec<Vec<RawAppend>> = common::work(clients, commands)
            .into_iter()
            .map(|(aggregate, pages)| {
                let root = aggregate.root();
                pages
                    .iter()
                    .map(|page| {
                        let mut request = self.store_request(root, page);
                        if minimal {
                            // The expected sequence, then score and member as the store
                            // sends them.
                            let member = std::mem::take(&mut request.args[3]);
                            let score = std::mem::take(&mut request.args[2]);
                            let expected = std::mem::take(&mut request.args[0]);
                            request.before = None;
                            request.keys.truncate(1);
                            request.args = vec![expected, score, member];
                        }
                        request
                    })
                    .collect()
            })
            .collect();
        let appended: u64 = work.iter().map(|requests| requests.len() as u64).sum();
        let script = if minimal {
            &self.minimal
        } else {
            &self.store_script
        };
        let started = Instant::now();
        let tasks: Vec<_> = work
            .into_iter()
            .map(|requests| {
                let mut raw = self.raw.clone();
                let script = script.clone();
                tokio::spawn(async move {
                    for request in requests {
                        if let Some(before) = &request.before {
                            let _: i64 = raw.query(before).await.expect("the raw SADD");
                        }
                        let appended = raw.append(&script, &request.keys, &request.args).await;
                        assert!(appended, "the raw append met its expected sequence");
                    }
                })
            })
            .collect();
        for task in tasks {
            task.await.expect("raw task");
        }
        appended as f64 / started.elapsed().as_secs_f64()
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
        let gateway = common::gateway(self.store.clone(), 100);
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

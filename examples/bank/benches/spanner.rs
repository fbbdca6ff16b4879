//! The Spanner figures, each measured beside its baseline in the same run, on the emulator at
//! `ANGZARR_TEST_SPANNER_EMULATOR_HOST`: `cargo xtask bench -p angzarr-example-bank --bench
//! spanner` (which starts it if the variable is not set), or `cargo xtask services up spanner`,
//! then `set -a; . target/services/env; set +a`, then `cargo bench -p angzarr-example-bank
//! --bench spanner`. The emulator is an in-memory process, not Spanner: the figures compare
//! the store with the raw client over the same server, they say nothing of Spanner's latency.
//!
//! Baselines, through `gcloud-spanner` with the store's channels and sessions:
//!
//! - appends: one read-write transaction per event, the least a compare-and-append needs:
//!   `BeginTransaction`, a read of the stream's head row, then a commit of the head's update
//!   and the event's insert (no domain row, no index entry), with the store's retry of aborted
//!   transactions, by 1 client or by 64 concurrent clients each on an aggregate of its own;
//! - reads: one single-use strong read of the stream's key range in `events`, every page
//!   decoded (and, for the last rebuild row, folded with the bank's `replay`, as the pipeline
//!   does).
//!
//! The run sizes are the emulator's: it runs one read-write transaction at a time and aborts
//! any other that overlaps it, so 64 concurrent clients mostly wait in the abort-retry loop
//! (both sides, with the same backoff); and each strong read waits 47 to 70 ms, which the
//! rebuild pays twice (snapshot, then events) and the baseline once. Appends: 1,000 commands
//! (one client) or 640 (64 clients, 10 each) per run; the rebuild reads 100,000 events. Each
//! figure is the median of 5 runs (20 for reads), the variants of one figure taking turns;
//! the whole takes about 1.5 minutes.

mod common;

use std::sync::Arc;
use std::time::{Duration, Instant};

use angzarr_example_bank::replay;
use angzarr_ports::{AggregateId, EventPage};
use angzarr_store_spanner::{Endpoint, SpannerConfig, SpannerStore};
use common::{Commands, rebuild_rows};
use gcloud_gax::conn::Environment;
use gcloud_gax::grpc::{Code, Status};
use gcloud_spanner::client::{ChannelConfig, Client, ClientConfig};
use gcloud_spanner::key::{Key, KeyRange, RangeKind};
use gcloud_spanner::mutation::{insert, insert_or_update};
use gcloud_spanner::value::CommitTimestamp;
use prost::Message;
use uuid::Uuid;

const RUNS: usize = 5;
const SEQUENTIAL_COMMANDS: u64 = 1_000;
const CONCURRENT_AGGREGATES: u64 = 64;
const CONCURRENT_COMMANDS: u64 = 640;
const REBUILD_EVENTS: u64 = 100_000;
/// Events per append when writing the rebuild's history (the store's largest batch).
const HISTORY_BATCH: u64 = SpannerConfig::MAX_BATCH_LEN as u64;
const PROJECT: &str = "angzarr-bench";
const INSTANCE: &str = "angzarr";
const DATABASE: &str = "bench";
/// The baseline's domain: its streams never meet the store's.
const RAW_DOMAIN: &str = "raw";

fn main() {
    common::main(run);
}

async fn run(quick: bool) {
    let bench = Bench::open().await;
    let scale = |n: u64| if quick { (n / 20).max(64) } else { n };
    let runs = if quick { 1 } else { RUNS };
    let mut rows = common::append_figures(
        runs,
        scale(SEQUENTIAL_COMMANDS),
        (CONCURRENT_AGGREGATES, scale(CONCURRENT_COMMANDS)),
        [
            &|clients, commands| Box::pin(bench.pipeline(clients, commands)),
            &|clients, commands| Box::pin(common::store_appends(&bench.store, clients, commands)),
            &|clients, commands| Box::pin(bench.raw_appends(clients, commands)),
        ],
        "raw read-write transactions",
    )
    .await;

    let events = scale(REBUILD_EVENTS);
    let aggregate = common::history(bench.store.as_ref(), events, HISTORY_BATCH).await;
    let gateway = common::gateway(bench.store.clone(), 0);
    let raw_read = |fold| bench.raw_read(&aggregate, fold);
    rows.extend(
        rebuild_rows(
            runs * 4,
            events,
            &gateway,
            &aggregate,
            &raw_read,
            "raw strong read",
        )
        .await,
    );
    if quick {
        println!("benchmark smoke run passed (run with `cargo bench` for figures)");
        return;
    }
    common::print_ratios("Spanner emulator", &rows);
}

struct Bench {
    namespace: String,
    store: Arc<SpannerStore>,
    raw: Client,
}

impl Bench {
    async fn open() -> Self {
        let host = common::server_var("ANGZARR_TEST_SPANNER_EMULATOR_HOST", "spanner", "spanner");
        let namespace = format!("bench_{}", Uuid::new_v4().simple());
        let config = SpannerConfig::new(PROJECT, INSTANCE, DATABASE)
            .with_endpoint(Endpoint::Emulator(host.clone()))
            .with_namespace(&namespace)
            .with_create_if_missing(true);
        let store = SpannerStore::open(config.clone())
            .await
            .expect("open the Spanner store");
        // The store's channels and session pool.
        let mut raw = ClientConfig {
            channel_config: ChannelConfig {
                num_channels: config.channels,
                ..ChannelConfig::default()
            },
            environment: Environment::Emulator(host),
            ..ClientConfig::default()
        };
        raw.session_config.min_opened = config.channels;
        raw.session_config.max_opened = config.channels * 100;
        let database = format!("projects/{PROJECT}/instances/{INSTANCE}/databases/{DATABASE}");
        let raw = Client::new(database, raw)
            .await
            .expect("connect the raw client");
        Self {
            namespace,
            store: Arc::new(store),
            raw,
        }
    }

    /// Commands per second through the core, `aggregates` clients each on its own aggregate.
    async fn pipeline(&self, aggregates: u64, commands: u64) -> f64 {
        let gateway = common::gateway(self.store.clone(), 100);
        common::pipeline(&gateway, aggregates, commands, Commands::Plain).await
    }

    /// Events per second of the minimal compare-and-append, one read-write transaction each.
    async fn raw_appends(&self, clients: u64, commands: u64) -> f64 {
        let work = common::work(clients, commands);
        let appended: u64 = work.iter().map(|(_, pages)| pages.len() as u64).sum();
        let started = Instant::now();
        let tasks: Vec<_> = work
            .into_iter()
            .map(|(aggregate, pages)| {
                let raw = self.raw.clone();
                let namespace = self.namespace.clone();
                let root = aggregate.root().as_bytes().to_vec();
                tokio::spawn(async move {
                    for page in pages {
                        raw_append(&raw, &namespace, &root, &page).await;
                    }
                })
            })
            .collect();
        for task in tasks {
            task.await.expect("raw task");
        }
        appended as f64 / started.elapsed().as_secs_f64()
    }

    /// Seconds to read the stream's events with one single-use strong read and decode every
    /// page.
    async fn raw_read(&self, aggregate: &AggregateId, fold: bool) -> f64 {
        let domain = aggregate.domain().as_str();
        let root = aggregate.root().as_bytes().to_vec();
        let prefix = Key::composite(&[&self.namespace, &domain, &root]);
        let range = KeyRange::new(prefix.clone(), prefix, RangeKind::ClosedClosed);
        let started = Instant::now();
        let mut transaction = self.raw.single().await.expect("a read-only transaction");
        let mut rows = transaction
            .read("events", &["page"], range)
            .await
            .expect("read");
        let mut pages = Vec::new();
        while let Some(row) = rows.next().await.expect("a row") {
            let page = row.column::<Vec<u8>>(0).expect("a page");
            pages.push(EventPage::decode(page.as_slice()).expect("decode"));
        }
        let state = fold.then(|| replay(None, &pages).expect("decode the history"));
        let elapsed = started.elapsed().as_secs_f64();
        assert!(!pages.is_empty(), "the history was read");
        std::hint::black_box((pages, state));
        elapsed
    }
}

/// Appends `page` at its sequence to the baseline's stream `root`: begin, read the head, check
/// it, write the head and the event, commit; an aborted transaction (which wrote nothing) is
/// tried again after the store's backoff.
async fn raw_append(raw: &Client, namespace: &String, root: &Vec<u8>, page: &EventPage) {
    let sequence = i64::try_from(page.sequence).expect("small");
    let encoded = page.encode_to_vec();
    for attempt in 1u32.. {
        let mut transaction = raw
            .begin_read_write_transaction()
            .await
            .expect("begin a transaction");
        let key = Key::composite(&[namespace, &RAW_DOMAIN, root]);
        let head = match transaction
            .read_row("streams", &["next_sequence"], key)
            .await
        {
            Ok(row) => row.map(|row| row.column::<i64>(0).expect("the head")),
            Err(status) if status.code() == Code::Aborted => {
                tokio::time::sleep(backoff(attempt)).await;
                continue;
            }
            Err(status) => panic!("the raw head read failed: {status}"),
        };
        assert_eq!(
            head.unwrap_or(0),
            sequence,
            "the raw append met its expected sequence"
        );
        transaction.buffer_write(vec![
            insert_or_update(
                "streams",
                &["namespace", "domain", "root", "next_sequence"],
                &[namespace, &RAW_DOMAIN, root, &(sequence + 1)],
            ),
            insert(
                "events",
                &[
                    "namespace",
                    "domain",
                    "root",
                    "sequence",
                    "page",
                    "committed_at",
                ],
                &[
                    namespace,
                    &RAW_DOMAIN,
                    root,
                    &sequence,
                    &encoded,
                    &CommitTimestamp::new(),
                ],
            ),
        ]);
        match transaction.end(Ok::<_, Status>(()), None).await {
            Ok(_) => return,
            Err(status) if status.code() == Code::Aborted => {
                tokio::time::sleep(backoff(attempt)).await;
            }
            Err(status) => panic!("the raw commit failed: {status}"),
        }
    }
}

/// The store's wait before try `attempt + 1` of an aborted append: exponential from 2 ms to
/// 100 ms, with full jitter.
fn backoff(attempt: u32) -> Duration {
    let ceiling = 2u64.saturating_mul(1 << attempt.min(6)).min(100);
    let jitter = (Uuid::new_v4().as_u128() % 1000) as u64;
    Duration::from_micros(ceiling * jitter)
}

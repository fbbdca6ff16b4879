//! The DynamoDB figures, each measured beside its baseline in the same run, on the emulator at
//! `ANGZARR_TEST_DYNAMODB_ENDPOINT`: `cargo xtask bench -p angzarr-example-bank --bench
//! dynamodb` (which starts it if the variable is not set), or `cargo xtask services up
//! dynamodb`, then `set -a; . target/services/env; set +a`, then `cargo bench -p
//! angzarr-example-bank --bench dynamodb`. The emulator is moto (Python, serving one request at
//! a time, as `cargo xtask services` runs it), not DynamoDB: the figures compare the store with
//! the raw SDK over the same server, they say nothing of DynamoDB's latency.
//!
//! Baselines, through `aws-sdk-dynamodb` with the same endpoint and credentials:
//!
//! - appends: one `TransactWriteItems` per event with the least a compare-and-append needs (the
//!   head `Put` conditional on its `next`, and the event's `Put`), by 1 client or by 64
//!   concurrent clients each on an aggregate of its own;
//! - reads: one paginated, strongly consistent `Query` of the store's own stream partition,
//!   every event decoded (and, for the last rebuild row, folded with the bank's `replay`, as
//!   the pipeline does).
//!
//! The run sizes are moto's: each of its transactions deep-copies every table it touches, so
//! a transaction costs the size of its tables (a few milliseconds on a table of a few hundred
//! items, over a second at 20,000). Every append run (core, store, raw) therefore writes into
//! tables of its own, created before and deleted after it: 200 commands (one client) or 320
//! (64 clients, 5 each). The rebuild reads 10,000 events, not 100,000 (moto sorts and
//! serialises the whole partition for each 1 MB page: 100,000 events would take minutes per
//! read); its history is loaded with `BatchWriteItem` in the store's layout (event items and
//! the head), since the store's transactions of 32 events would each copy the growing table.
//! The store's attempt timeout is 60 s here: moto's queue holds 64 clients' requests for
//! seconds, and the default 5 s would time them out and resend them. Each figure is the median
//! of 5 runs, the variants of one figure taking turns; the whole takes about 3 minutes.

mod common;

use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use angzarr_example_bank::replay;
use angzarr_ports::{AggregateId, EventPage};
use angzarr_store_dynamodb::{DynamoDbConfig, DynamoDbStore};
use aws_sdk_dynamodb::Client;
use aws_sdk_dynamodb::config::{BehaviorVersion, Credentials, Region};
use aws_sdk_dynamodb::primitives::Blob;
use aws_sdk_dynamodb::types::{AttributeValue, Put, PutRequest, TransactWriteItem, WriteRequest};
use common::{Commands, rebuild_rows};
use prost::Message;
use uuid::Uuid;

const RUNS: usize = 5;
const SEQUENTIAL_COMMANDS: u64 = 200;
const CONCURRENT_AGGREGATES: u64 = 64;
const CONCURRENT_COMMANDS: u64 = 320;
const REBUILD_EVENTS: u64 = 10_000;
/// moto's fixed region and credentials.
const REGION: &str = "us-east-1";
const KEY: &str = "test";
/// The store's head item's sort key (2^64, above every sequence), and its attributes.
const HEAD_SEQ: &str = "18446744073709551616";

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
            &|clients, commands| Box::pin(bench.store_appends(clients, commands)),
            &|clients, commands| Box::pin(bench.raw_appends(clients, commands)),
        ],
        "raw TransactWriteItems",
    )
    .await;

    let events = if quick { 500 } else { REBUILD_EVENTS };
    let (store, namespace) = bench.fresh_store().await;
    let aggregate = bench.history(&namespace, events).await;
    let gateway = common::gateway(store, 0);
    let raw_read = |fold| bench.raw_read(&namespace, &aggregate, fold);
    rows.extend(
        rebuild_rows(
            runs,
            events,
            &gateway,
            &aggregate,
            &raw_read,
            "raw Query, paginated",
        )
        .await,
    );
    drop(gateway);
    bench.drop_tables(&namespace).await;
    if quick {
        println!("benchmark smoke run passed (run with `cargo bench` for figures)");
        return;
    }
    common::print_ratios("DynamoDB emulator (moto)", &rows);
}

/// The events and index tables of `namespace`.
fn tables(namespace: &str) -> (String, String) {
    (format!("{namespace}_events"), format!("{namespace}_index"))
}

struct Bench {
    endpoint: String,
    raw: Client,
}

impl Bench {
    async fn open() -> Self {
        let endpoint = common::server_var("ANGZARR_TEST_DYNAMODB_ENDPOINT", "dynamodb", "dynamodb");
        let config = aws_sdk_dynamodb::Config::builder()
            .behavior_version(BehaviorVersion::latest())
            .endpoint_url(&endpoint)
            .region(Region::new(REGION))
            .credentials_provider(Credentials::new(KEY, KEY, None, None, "bench"))
            .build();
        Self {
            endpoint,
            raw: Client::from_conf(config),
        }
    }

    /// A store over tables of its own (created now; [`Self::drop_tables`] deletes them), and
    /// its namespace, which names the tables too.
    async fn fresh_store(&self) -> (Arc<DynamoDbStore>, String) {
        let namespace = format!("bench_{}", Uuid::new_v4().simple());
        let (events, index) = tables(&namespace);
        let config = DynamoDbConfig::new()
            .with_endpoint(&self.endpoint)
            .with_region(REGION)
            .with_static_credentials(KEY, KEY)
            .with_tables(events, index)
            .with_namespace(&namespace)
            // moto would keep every stream record and copy them with the table.
            .with_create_with_stream(false)
            // moto serves one request at a time: 64 clients' requests wait in its queue for
            // seconds, and the default 5 s per attempt would time out and resend them.
            .with_operation_timeout(Duration::from_secs(60))
            .with_create_if_missing(true);
        let store = DynamoDbStore::open(config)
            .await
            .expect("open the DynamoDB store");
        (Arc::new(store), namespace)
    }

    async fn drop_tables(&self, namespace: &str) {
        let (events, index) = tables(namespace);
        for table in [events, index] {
            self.raw
                .delete_table()
                .table_name(table)
                .send()
                .await
                .expect("delete a table");
        }
    }

    /// Commands per second through the core, `aggregates` clients each on its own aggregate,
    /// in fresh tables.
    async fn pipeline(&self, aggregates: u64, commands: u64) -> f64 {
        let (store, namespace) = self.fresh_store().await;
        let gateway = common::gateway(store, 100);
        let rate = common::pipeline(&gateway, aggregates, commands, Commands::Plain).await;
        drop(gateway);
        self.drop_tables(&namespace).await;
        rate
    }

    /// Events per second through `EventStore::append`, one event per append, in fresh tables.
    async fn store_appends(&self, clients: u64, commands: u64) -> f64 {
        let (store, namespace) = self.fresh_store().await;
        let rate = common::store_appends(&store, clients, commands).await;
        drop(store);
        self.drop_tables(&namespace).await;
        rate
    }

    /// Events per second of the minimal compare-and-append, one `TransactWriteItems` each, in
    /// fresh tables (the store's, created by opening it).
    async fn raw_appends(&self, clients: u64, commands: u64) -> f64 {
        let (store, namespace) = self.fresh_store().await;
        drop(store);
        let (table, _) = tables(&namespace);
        let work = common::work(clients, commands);
        let appended: u64 = work.iter().map(|(_, pages)| pages.len() as u64).sum();
        let started = Instant::now();
        let tasks: Vec<_> = work
            .into_iter()
            .map(|(aggregate, pages)| {
                let raw = self.raw.clone();
                let table = table.clone();
                let key = format!("{namespace}#raw#{}", aggregate.root().hyphenated());
                tokio::spawn(async move {
                    for page in pages {
                        let sequence = page.sequence;
                        let head = Put::builder()
                            .table_name(&table)
                            .item("pk", s(&key))
                            .item("seq", n(HEAD_SEQ))
                            .item("next", n(sequence + 1))
                            .expression_attribute_names("#next", "next");
                        let head = if sequence == 0 {
                            head.condition_expression("attribute_not_exists(#next)")
                        } else {
                            head.condition_expression("#next = :expected")
                                .expression_attribute_values(":expected", n(sequence))
                        };
                        let event = Put::builder()
                            .table_name(&table)
                            .item("pk", s(&key))
                            .item("seq", n(sequence))
                            .item("e", AttributeValue::B(Blob::new(page.encode_to_vec())));
                        raw.transact_write_items()
                            .transact_items(
                                TransactWriteItem::builder()
                                    .put(head.build().expect("a put"))
                                    .build(),
                            )
                            .transact_items(
                                TransactWriteItem::builder()
                                    .put(event.build().expect("a put"))
                                    .build(),
                            )
                            .send()
                            .await
                            .expect("the raw append met its expected sequence");
                    }
                })
            })
            .collect();
        for task in tasks {
            task.await.expect("raw task");
        }
        let rate = appended as f64 / started.elapsed().as_secs_f64();
        self.drop_tables(&namespace).await;
        rate
    }

    /// An aggregate with `events` deposits (one correlation id), written in the store's
    /// layout with `BatchWriteItem` (25 items a request): the event items, then the head.
    async fn history(&self, namespace: &str, events: u64) -> AggregateId {
        let aggregate = common::account(Uuid::new_v4());
        let (table, _) = tables(namespace);
        let key = stream_key(namespace, &aggregate);
        let correlation_id = Uuid::new_v4().to_string();
        let items: Vec<HashMap<String, AttributeValue>> = (0..events)
            .map(|sequence| {
                let page = common::deposited_page(sequence, &correlation_id);
                HashMap::from([
                    ("pk".to_owned(), s(&key)),
                    ("seq".to_owned(), n(sequence)),
                    (
                        "e".to_owned(),
                        AttributeValue::B(Blob::new(page.encode_to_vec())),
                    ),
                ])
            })
            .chain([HashMap::from([
                ("pk".to_owned(), s(&key)),
                ("seq".to_owned(), n(HEAD_SEQ)),
                ("next".to_owned(), n(events)),
            ])])
            .collect();
        for chunk in items.chunks(25) {
            let mut requests: Vec<WriteRequest> = chunk
                .iter()
                .map(|item| {
                    let put = PutRequest::builder()
                        .set_item(Some(item.clone()))
                        .build()
                        .expect("a put request");
                    WriteRequest::builder().put_request(put).build()
                })
                .collect();
            while !requests.is_empty() {
                let output = self
                    .raw
                    .batch_write_item()
                    .request_items(&table, requests)
                    .send()
                    .await
                    .expect("write the history");
                requests = output
                    .unprocessed_items
                    .and_then(|mut unprocessed| unprocessed.remove(&table))
                    .unwrap_or_default();
            }
        }
        aggregate
    }

    /// Seconds to read the store's stream partition with one paginated `Query` and decode
    /// every event (the head, the item without an event, is skipped).
    async fn raw_read(&self, namespace: &str, aggregate: &AggregateId, fold: bool) -> f64 {
        let (table, _) = tables(namespace);
        let query = self
            .raw
            .query()
            .table_name(table)
            .key_condition_expression("#pk = :pk")
            .expression_attribute_names("#pk", "pk")
            .expression_attribute_values(":pk", s(stream_key(namespace, aggregate)))
            .consistent_read(true);
        let started = Instant::now();
        let mut pages = Vec::new();
        let mut start = None;
        loop {
            let output = query
                .clone()
                .set_exclusive_start_key(start)
                .send()
                .await
                .expect("query");
            for item in output.items.unwrap_or_default() {
                if let Some(AttributeValue::B(event)) = item.get("e") {
                    pages.push(EventPage::decode(event.as_ref()).expect("decode"));
                }
            }
            match output.last_evaluated_key {
                Some(key) if !key.is_empty() => start = Some(key),
                _ => break,
            }
        }
        let state = fold.then(|| replay(None, &pages).expect("decode the history"));
        let elapsed = started.elapsed().as_secs_f64();
        assert!(!pages.is_empty(), "the history was read");
        std::hint::black_box((pages, state));
        elapsed
    }
}

/// The store's partition key of a stream: namespace, domain, hyphenated root.
fn stream_key(namespace: &str, aggregate: &AggregateId) -> String {
    format!(
        "{namespace}#{}#{}",
        aggregate.domain(),
        aggregate.root().hyphenated()
    )
}

fn s(value: impl Into<String>) -> AttributeValue {
    AttributeValue::S(value.into())
}

fn n(value: impl std::fmt::Display) -> AttributeValue {
    AttributeValue::N(value.to_string())
}

//! The Bigtable figures, each measured beside its baseline in the same run, on the emulator at
//! `ANGZARR_TEST_BIGTABLE_EMULATOR_HOST` (`cargo xtask services up bigtable`, then
//! `set -a; . target/services/env; set +a`; then `cargo bench -p angzarr-example-bank --bench
//! bigtable`). The emulator is an in-memory Go process, not Bigtable: the figures compare the
//! store with the raw client over the same server, they say nothing of Bigtable's latency.
//!
//! Baselines, through `bigtable_rs` over the same kind of connection:
//!
//! - appends: one `CheckAndMutateRow` per event, the least a compare-and-append can send
//!   (predicate on a head cell, the event cell and the new head), by 1 client or by 64
//!   concurrent clients each on an aggregate of its own;
//! - reads: one `ReadRows` of the stream row, every event decoded (and, for the last rebuild
//!   row, folded with the bank's `replay`, as the pipeline does).
//!
//! Runs of the variants of one figure take turns; each figure is the median (of 5 runs for
//! appends, of 20 for reads).

mod common;

use std::sync::Arc;
use std::time::Instant;

use angzarr_example_bank::replay;
use angzarr_ports::{AggregateId, EventPage};
use angzarr_store_bigtable::{BigtableConfig, BigtableStore};
use bigtable_rs::bigtable::{BigTable, BigTableConnection};
use bigtable_rs::google::bigtable::v2::{
    CheckAndMutateRowRequest, ColumnRange, Mutation, ReadRowsRequest, RowFilter, RowSet,
    ValueRange, column_range, mutation, row_filter, value_range,
};
use common::{Commands, rebuild_rows};
use prost::Message;
use uuid::Uuid;

const RUNS: usize = 5;
const SEQUENTIAL_COMMANDS: u64 = 2_000;
const CONCURRENT_AGGREGATES: u64 = 64;
const CONCURRENT_COMMANDS: u64 = 12_800;
/// Smaller than the other stores' 100,000: the emulator streams a row of 100,000 cells so
/// slowly that its HTTP/2 keep-alive times out.
const REBUILD_EVENTS: u64 = 20_000;
/// Events per append when writing the rebuild's history.
const HISTORY_BATCH: u64 = 10_000;
const PROJECT: &str = "angzarr-bench";
const INSTANCE: &str = "angzarr";
const TABLE: &str = "angzarr-bench";

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
        "raw CheckAndMutateRow",
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
            "raw ReadRows",
        )
        .await,
    );
    if quick {
        println!("benchmark smoke run passed (run with `cargo bench` for figures)");
        return;
    }
    common::print_ratios("Bigtable emulator", &rows);
}

struct Bench {
    namespace: String,
    store: Arc<BigtableStore>,
    raw: BigTable,
}

impl Bench {
    async fn open() -> Self {
        let endpoint = common::server_var(
            "ANGZARR_TEST_BIGTABLE_EMULATOR_HOST",
            "bigtable",
            "bigtable",
        );
        let namespace = format!("bench_{}", Uuid::new_v4().simple());
        let config = BigtableConfig::new(PROJECT, INSTANCE, TABLE)
            .with_endpoint(&endpoint)
            .with_namespace(&namespace)
            .with_create_if_missing(true);
        let store = BigtableStore::open(config)
            .await
            .expect("open the Bigtable store");
        let mut connection = BigTableConnection::new_with_emulator(
            &endpoint,
            PROJECT,
            INSTANCE,
            false,
            BigtableConfig::DEFAULT_CHANNELS,
            None,
        )
        .expect("connect the raw client");
        connection
            .configure_inner_client(|client| client.max_decoding_message_size(256 * 1024 * 1024));
        Self {
            namespace,
            store: Arc::new(store),
            raw: connection.client(),
        }
    }

    /// Commands per second through the core, `aggregates` clients each on its own aggregate.
    async fn pipeline(&self, aggregates: u64, commands: u64) -> f64 {
        let gateway = common::gateway(self.store.clone(), 100);
        common::pipeline(&gateway, aggregates, commands, Commands::Plain).await
    }

    /// Events per second of the minimal compare-and-append, one `CheckAndMutateRow` each.
    async fn raw_appends(&self, clients: u64, commands: u64) -> f64 {
        let work = common::work(clients, commands);
        let appended: u64 = work.iter().map(|(_, pages)| pages.len() as u64).sum();
        let table_name = self.raw.get_full_table_name(TABLE);
        let started = Instant::now();
        let tasks: Vec<_> = work
            .into_iter()
            .map(|(aggregate, pages)| {
                let mut raw = self.raw.clone();
                let table_name = table_name.clone();
                let key = format!("{}#raw#{}", self.namespace, aggregate.root().simple());
                tokio::spawn(async move {
                    for page in pages {
                        let sequence = page.sequence;
                        let head = ColumnRange {
                            family_name: "h".into(),
                            start_qualifier: Some(
                                column_range::StartQualifier::StartQualifierClosed(b"n".to_vec()),
                            ),
                            end_qualifier: Some(column_range::EndQualifier::EndQualifierClosed(
                                b"n".to_vec(),
                            )),
                        };
                        let mut filters = vec![
                            RowFilter {
                                filter: Some(row_filter::Filter::ColumnRangeFilter(head)),
                            },
                            RowFilter {
                                filter: Some(row_filter::Filter::CellsPerColumnLimitFilter(1)),
                            },
                        ];
                        if sequence > 0 {
                            let value = sequence.to_be_bytes().to_vec();
                            filters.push(RowFilter {
                                filter: Some(row_filter::Filter::ValueRangeFilter(ValueRange {
                                    start_value: Some(value_range::StartValue::StartValueClosed(
                                        value.clone(),
                                    )),
                                    end_value: Some(value_range::EndValue::EndValueClosed(value)),
                                })),
                            });
                        }
                        let mutations = vec![
                            set_cell("e", sequence.to_be_bytes().to_vec(), page.encode_to_vec()),
                            set_cell("h", b"n".to_vec(), (sequence + 1).to_be_bytes().to_vec()),
                        ];
                        let (true_mutations, false_mutations) = if sequence > 0 {
                            (mutations, Vec::new())
                        } else {
                            (Vec::new(), mutations)
                        };
                        let request = CheckAndMutateRowRequest {
                            table_name: table_name.clone(),
                            row_key: key.clone().into_bytes(),
                            predicate_filter: Some(RowFilter {
                                filter: Some(row_filter::Filter::Chain(row_filter::Chain {
                                    filters,
                                })),
                            }),
                            true_mutations,
                            false_mutations,
                            ..CheckAndMutateRowRequest::default()
                        };
                        let reply = raw
                            .check_and_mutate_row(request)
                            .await
                            .expect("the raw append");
                        assert_eq!(
                            reply.predicate_matched,
                            sequence > 0,
                            "the raw append met its expected sequence"
                        );
                    }
                })
            })
            .collect();
        for task in tasks {
            task.await.expect("raw task");
        }
        appended as f64 / started.elapsed().as_secs_f64()
    }

    /// Seconds to read the store's stream row with the raw client and decode every event
    /// (cells of these small events are never split over chunks).
    async fn raw_read(&self, aggregate: &AggregateId, fold: bool) -> f64 {
        let key = format!(
            "{}#e#{}#{}",
            self.namespace,
            aggregate.domain(),
            aggregate.root().simple()
        );
        let family = RowFilter {
            filter: Some(row_filter::Filter::FamilyNameRegexFilter("e".into())),
        };
        let request = ReadRowsRequest {
            table_name: self.raw.get_full_table_name(TABLE),
            rows: Some(RowSet {
                row_keys: vec![key.into_bytes()],
                row_ranges: Vec::new(),
            }),
            filter: Some(family),
            ..ReadRowsRequest::default()
        };
        let mut raw = self.raw.clone();
        let started = Instant::now();
        let mut stream = raw
            .get_client()
            .read_rows(request)
            .await
            .expect("read rows")
            .into_inner();
        let mut pages = Vec::new();
        while let Some(response) = stream.message().await.expect("a reply") {
            for chunk in response.chunks {
                pages.push(EventPage::decode(chunk.value.as_slice()).expect("decode"));
            }
        }
        let state = fold.then(|| replay(None, &pages).expect("decode the history"));
        let elapsed = started.elapsed().as_secs_f64();
        assert!(!pages.is_empty(), "the history was read");
        std::hint::black_box((pages, state));
        elapsed
    }
}

fn set_cell(family: &str, qualifier: Vec<u8>, value: Vec<u8>) -> Mutation {
    Mutation {
        mutation: Some(mutation::Mutation::SetCell(mutation::SetCell {
            family_name: family.to_owned(),
            column_qualifier: qualifier,
            timestamp_micros: 0,
            value,
        })),
    }
}

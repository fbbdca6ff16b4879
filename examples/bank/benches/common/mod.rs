//! What the store benchmarks share: the runtime, the commands they send, the events they
//! write, and the timed rebuilds (so every store is measured the same way).

#![allow(dead_code, reason = "each benchmark uses part of it")]

use std::future::Future;
use std::time::Instant;

use angzarr_core::{Gateway, LoadedAggregate};
use angzarr_example_bank::proto::{BankEvent, Deposited, bank_event::Kind};
use angzarr_example_bank::{Account, DOMAIN, command, deposit, replay};
use angzarr_ports::{AggregateId, Domain, EventPage};
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

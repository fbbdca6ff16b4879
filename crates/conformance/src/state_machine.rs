//! The state machine: random operations, run against the store under test and the in-memory
//! model side by side; every answer must be the same.

use std::fmt::Debug;

use angzarr_ports::{
    AggregateId, Append, Domain, EventPage, EventStore, EventStoreExt, SequenceRange, Snapshot,
    SnapshotStore, Uuid,
};
use angzarr_store_memory::MemoryStore;
use proptest::prelude::*;
use proptest::test_runner::{Config, TestCaseError, TestRunner};
use prost_types::{Any, Timestamp};

use crate::Harness;
use crate::compare::same;

/// Domains a sloppy key scheme would merge or split: they differ only in a separator or in case.
pub(crate) fn domains() -> Vec<Domain> {
    let long = "d".repeat(Domain::MAX_LEN);
    [
        "account",
        "account.v2",
        "account_v2",
        "account-v2",
        "Account",
        long.as_str(),
    ]
    .into_iter()
    .map(|name| Domain::new(name).expect("the suite's domains are valid"))
    .collect()
}

/// Correlation and request ids, with characters that stores must not take for separators.
const IDS: [&str; 4] = ["", "c1", "c:2#{x}/y", "ünï cödé"];
const ROOTS: usize = 3;

#[derive(Debug, Clone, Copy)]
struct Target {
    domain: usize,
    root: usize,
}

#[derive(Debug, Clone, Copy)]
enum Expected {
    Correct,
    Stale(u64),
    Future(u64),
}

/// An event or snapshot payload: arbitrary type URL and bytes.
#[derive(Debug, Clone)]
struct Payload {
    type_url: String,
    value: Vec<u8>,
}

#[derive(Debug, Clone)]
struct NewEvent {
    payload: Payload,
    created_at: Option<(i64, i32)>,
}

#[derive(Debug, Clone)]
enum Op {
    Append {
        at: Target,
        expected: Expected,
        events: Vec<NewEvent>,
        correlation: usize,
        request: Option<usize>,
    },
    AppendWithGap {
        at: Target,
        events: Vec<NewEvent>,
    },
    Read {
        at: Target,
        from: u64,
        to: Option<u64>,
    },
    NextSequence {
        at: Target,
    },
    ListRoots {
        domain: usize,
        after: Option<usize>,
        limit: usize,
    },
    ListDomains,
    FindByCorrelation {
        correlation: usize,
    },
    FindByRequest {
        at: Target,
        request: usize,
    },
    PutSnapshot {
        at: Target,
        sequence: u64,
        state: Payload,
    },
    GetSnapshot {
        at: Target,
    },
    DeleteSnapshot {
        at: Target,
    },
    Reopen,
}

#[derive(Debug, Clone)]
struct Case {
    roots: [Uuid; ROOTS],
    ops: Vec<Op>,
}

fn payload() -> impl Strategy<Value = Payload> {
    (".{0,12}", prop::collection::vec(any::<u8>(), 0..40))
        .prop_map(|(type_url, value)| Payload { type_url, value })
}

fn new_event() -> impl Strategy<Value = NewEvent> {
    let created_at = prop::option::of((0i64..4_000_000_000, 0i32..1_000_000_000));
    (payload(), created_at).prop_map(|(payload, created_at)| NewEvent {
        payload,
        created_at,
    })
}

fn target() -> impl Strategy<Value = Target> {
    (0..domains().len(), 0..ROOTS).prop_map(|(domain, root)| Target { domain, root })
}

fn op() -> impl Strategy<Value = Op> {
    let expected = prop_oneof![
        6 => Just(Expected::Correct),
        1 => (1u64..4).prop_map(Expected::Stale),
        1 => (1u64..4).prop_map(Expected::Future),
    ];
    let ids = 0..IDS.len();
    prop_oneof![
        12 => (target(), expected, prop::collection::vec(new_event(), 0..6), ids.clone(), prop::option::of(ids.clone()))
            .prop_map(|(at, expected, events, correlation, request)| Op::Append { at, expected, events, correlation, request }),
        1 => (target(), prop::collection::vec(new_event(), 2..4)).prop_map(|(at, events)| Op::AppendWithGap { at, events }),
        3 => (target(), 0u64..12, prop::option::of(0u64..14)).prop_map(|(at, from, to)| Op::Read { at, from, to }),
        1 => target().prop_map(|at| Op::NextSequence { at }),
        2 => (0..domains().len(), prop::option::of(0..ROOTS), 0usize..4)
            .prop_map(|(domain, after, limit)| Op::ListRoots { domain, after, limit }),
        1 => Just(Op::ListDomains),
        1 => ids.clone().prop_map(|correlation| Op::FindByCorrelation { correlation }),
        1 => (target(), ids).prop_map(|(at, request)| Op::FindByRequest { at, request }),
        2 => (target(), 0u64..20, payload()).prop_map(|(at, sequence, state)| Op::PutSnapshot { at, sequence, state }),
        1 => target().prop_map(|at| Op::GetSnapshot { at }),
        1 => target().prop_map(|at| Op::DeleteSnapshot { at }),
        1 => Just(Op::Reopen),
    ]
}

fn case() -> impl Strategy<Value = Case> {
    let roots = prop::array::uniform3(1u128..).prop_map(|roots| roots.map(Uuid::from_u128));
    (roots, prop::collection::vec(op(), 1..48)).prop_map(|(roots, ops)| Case { roots, ops })
}

/// The stores of one case and the aggregates its operations address.
struct Run<'h, H: Harness> {
    harness: &'h H,
    namespace: String,
    model: MemoryStore,
    store: Option<H::Store>,
    domains: Vec<Domain>,
    roots: [Uuid; ROOTS],
}

impl<H: Harness> Run<'_, H> {
    fn store(&self) -> &H::Store {
        self.store
            .as_ref()
            .expect("the store is open between operations")
    }

    fn aggregate(&self, at: Target) -> AggregateId {
        AggregateId::new(self.domains[at.domain].clone(), self.roots[at.root])
            .expect("roots are never nil")
    }

    fn pages(&self, first: u64, events: &[NewEvent], correlation: usize) -> Vec<EventPage> {
        (first..)
            .zip(events)
            .map(|(sequence, event)| EventPage {
                sequence,
                created_at: event
                    .created_at
                    .map(|(seconds, nanos)| Timestamp { seconds, nanos }),
                payload: Some(to_any(&event.payload)),
                correlation_id: IDS[correlation].to_owned(),
            })
            .collect()
    }

    async fn step(&mut self, op: &Op) -> Result<(), String> {
        match op {
            Op::Append {
                at,
                expected,
                events,
                correlation,
                request,
            } => {
                let aggregate = self.aggregate(*at);
                let next = self.model_next(&aggregate).await?;
                let expected_sequence = match *expected {
                    Expected::Correct => next,
                    Expected::Stale(by) => next.saturating_sub(by),
                    Expected::Future(by) => next + by,
                };
                let append = Append {
                    expected_sequence,
                    events: self.pages(expected_sequence, events, *correlation),
                    request_id: request.map(|request| IDS[request].to_owned()),
                };
                self.same_append(op, &aggregate, append).await
            }
            Op::AppendWithGap { at, events } => {
                let aggregate = self.aggregate(*at);
                let next = self.model_next(&aggregate).await?;
                let mut pages = self.pages(next, events, 0);
                for page in pages.iter_mut().skip(1) {
                    page.sequence += 1;
                }
                let append = Append {
                    expected_sequence: next,
                    events: pages,
                    request_id: None,
                };
                self.same_append(op, &aggregate, append).await
            }
            Op::Read { at, from, to } => {
                let (aggregate, range) = (
                    self.aggregate(*at),
                    SequenceRange {
                        from: *from,
                        to: *to,
                    },
                );
                same(
                    op,
                    self.model.read(&aggregate, range).await,
                    self.store().read(&aggregate, range).await,
                )
            }
            Op::NextSequence { at } => {
                let aggregate = self.aggregate(*at);
                same(
                    op,
                    self.model.next_sequence(&aggregate).await,
                    self.store().next_sequence(&aggregate).await,
                )
            }
            Op::ListRoots {
                domain,
                after,
                limit,
            } => {
                let (domain, after) = (&self.domains[*domain], after.map(|root| self.roots[root]));
                let model = self.model.list_roots(domain, after, *limit).await;
                same(
                    op,
                    model,
                    self.store().list_roots(domain, after, *limit).await,
                )
            }
            Op::ListDomains => same(
                op,
                self.model.list_domains().await,
                self.store().list_domains().await,
            ),
            Op::FindByCorrelation { correlation } => {
                let id = IDS[*correlation];
                same(
                    op,
                    self.model.find_by_correlation(id).await,
                    self.store().find_by_correlation(id).await,
                )
            }
            Op::FindByRequest { at, request } => {
                let (aggregate, id) = (self.aggregate(*at), IDS[*request]);
                let model = self.model.find_by_request(&aggregate, id).await;
                same(
                    op,
                    model,
                    self.store().find_by_request(&aggregate, id).await,
                )
            }
            Op::PutSnapshot {
                at,
                sequence,
                state,
            } => {
                let aggregate = self.aggregate(*at);
                let snapshot = Snapshot {
                    sequence: *sequence,
                    state: Some(to_any(state)),
                };
                let model = SnapshotStore::put(&self.model, &aggregate, snapshot.clone()).await;
                same(
                    op,
                    model,
                    SnapshotStore::put(self.store(), &aggregate, snapshot).await,
                )?;
                self.same_snapshot(&aggregate).await
            }
            Op::GetSnapshot { at } => self.same_snapshot(&self.aggregate(*at)).await,
            Op::DeleteSnapshot { at } => {
                let aggregate = self.aggregate(*at);
                let model = SnapshotStore::delete(&self.model, &aggregate).await;
                same(
                    op,
                    model,
                    SnapshotStore::delete(self.store(), &aggregate).await,
                )?;
                self.same_snapshot(&aggregate).await
            }
            Op::Reopen => {
                if self.harness.persistent() {
                    drop(self.store.take());
                    self.store = Some(self.harness.open(&self.namespace).await);
                    self.same_everything().await?;
                }
                Ok(())
            }
        }
    }

    /// The model's next sequence, which the operations' expected sequences are relative to.
    async fn model_next(&self, aggregate: &AggregateId) -> Result<u64, String> {
        self.model
            .next_sequence(aggregate)
            .await
            .map_err(|e| e.to_string())
    }

    /// Appends to both stores; the answers and the resulting streams must be the same.
    async fn same_append(
        &self,
        op: &Op,
        aggregate: &AggregateId,
        append: Append,
    ) -> Result<(), String> {
        let model = self.model.append(aggregate, append.clone()).await;
        let store = self.store().append(aggregate, append).await;
        same(op, model, store)?;
        self.same_stream(aggregate).await
    }

    async fn same_stream(&self, aggregate: &AggregateId) -> Result<(), String> {
        let what = format!("the whole stream of {aggregate}");
        same(
            &what,
            self.model.read_all(aggregate).await,
            self.store().read_all(aggregate).await,
        )?;
        let what = format!("the next sequence of {aggregate}");
        same(
            &what,
            self.model.next_sequence(aggregate).await,
            self.store().next_sequence(aggregate).await,
        )
    }

    async fn same_snapshot(&self, aggregate: &AggregateId) -> Result<(), String> {
        let what = format!("the snapshot of {aggregate}");
        let model = SnapshotStore::get(&self.model, aggregate).await;
        same(
            what,
            model,
            SnapshotStore::get(self.store(), aggregate).await,
        )
    }

    /// Compares every observable part of the two stores.
    async fn same_everything(&self) -> Result<(), String> {
        for domain in 0..self.domains.len() {
            for root in 0..ROOTS {
                let aggregate = self.aggregate(Target { domain, root });
                self.same_stream(&aggregate).await?;
                self.same_snapshot(&aggregate).await?;
            }
            let domain = &self.domains[domain];
            let model = self.model.list_roots(domain, None, ROOTS + 1).await;
            same(
                format!("the roots of {domain}"),
                model,
                self.store().list_roots(domain, None, ROOTS + 1).await,
            )?;
        }
        same(
            "the domains",
            self.model.list_domains().await,
            self.store().list_domains().await,
        )?;
        for id in IDS {
            let what = format!("the events of correlation id {id:?}");
            same(
                what,
                self.model.find_by_correlation(id).await,
                self.store().find_by_correlation(id).await,
            )?;
        }
        Ok(())
    }
}

fn to_any(payload: &Payload) -> Any {
    Any {
        type_url: payload.type_url.clone(),
        value: payload.value.clone(),
    }
}

/// What the harness asks for, or more if `PROPTEST_CASES` says so (a soak run); never fewer,
/// since a suite that runs too few cases can pass a broken store.
pub(crate) fn runner(default_cases: u32) -> TestRunner {
    let soak = std::env::var("PROPTEST_CASES")
        .ok()
        .and_then(|cases| cases.parse().ok());
    let cases = soak.map_or(default_cases, |soak: u32| soak.max(default_cases));
    TestRunner::new(Config {
        cases,
        failure_persistence: None,
        ..Config::default()
    })
}

pub(crate) async fn run<H: Harness>(harness: &H) {
    let runtime = tokio::runtime::Handle::current();
    let mut runner = runner(harness.cases());
    let result = runner.run(&case(), |case| {
        // Proptest's runner is synchronous; the case itself runs on the suite's runtime.
        tokio::task::block_in_place(|| runtime.block_on(run_case(harness, case)))
    });
    if let Err(failure) = result {
        panic!("the store disagrees with the model: {failure}");
    }
}

async fn run_case<H: Harness>(harness: &H, case: Case) -> Result<(), TestCaseError> {
    let namespace = crate::namespace();
    let store = harness.open(&namespace).await;
    let model = MemoryStore::with_capabilities(store.capabilities());
    let mut run = Run {
        harness,
        namespace,
        model,
        store: Some(store),
        domains: domains(),
        roots: case.roots,
    };
    let mut outcome = Ok(());
    for (index, op) in case.ops.iter().enumerate() {
        if let Err(difference) = run.step(op).await {
            outcome = Err(TestCaseError::fail(format!(
                "operation {index}, {difference}"
            )));
            break;
        }
    }
    if outcome.is_ok() {
        outcome = run
            .same_everything()
            .await
            .map_err(|difference| TestCaseError::fail(format!("at the end, {difference}")));
    }
    drop(run.store.take());
    harness.cleanup(&run.namespace).await;
    outcome
}

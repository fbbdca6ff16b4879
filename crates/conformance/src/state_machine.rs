//! The state machine: random operations, run against the store under test and the in-memory
//! model side by side; every answer must be the same.

use std::fmt::Debug;

use angzarr_ports::{
    AggregateId, Append, Domain, EventPage, EventStore, EventStoreExt, RequestKey, SequenceRange,
    Snapshot, SnapshotStore, StoreCapabilities, Uuid,
};
use angzarr_store_memory::MemoryStore;
use proptest::prelude::*;
use proptest::test_runner::{Config, RngAlgorithm, TestCaseError, TestRng, TestRunner};
use prost::Message;
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

/// Families of correlation and request ids that a sloppy store confuses: each differs from
/// the others of its family only in case, by a prefix or suffix, or by a character that a
/// LIKE, a glob, a regular expression, a quoting or a case-folding collation treats specially.
/// Each case draws one family, so that its appends and lookups collide inside it; every
/// family comes up in every run of a few dozen cases.
const ID_FAMILIES: [[&str; 4]; 6] = [
    ["c1", "C1", "c:2#{x}/y", "c:2#{X}/y"],
    ["c", "c1", "c10", "xc1"],
    ["a%b", "a_b", "aXb", "a\\b"],
    ["*", "?", "a*", "[a]"],
    ["'", "\"", "''", "a'b; --"],
    ["ünï cödé", "ÜNÏ CÖDÉ", "uni code", "ünï"],
];
/// Ids per case: the empty id (no correlation, yet a request id like any other) and a family.
const IDS: usize = 5;
const ROOTS: usize = 3;

/// The number line's edges: where a `u64` stored in a signed 64-bit column wraps.
const HUGE: [u64; 4] = [i64::MAX as u64, 1 << 63, u64::MAX - 1, u64::MAX];

/// Sizes of large snapshot states: 100 KiB, and the store's own limit (1 MiB if it declares
/// none).
const LARGE_SNAPSHOT: usize = 100 * 1024;
const DEFAULT_SNAPSHOT_LIMIT: usize = 1024 * 1024;

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
    /// At or beyond 2^63.
    Huge(usize),
}

/// A position in a stream, for reads: absolute, counted back from the stream's end, or at
/// the edge of the number line.
#[derive(Debug, Clone, Copy)]
enum Position {
    At(u64),
    FromEnd(u64),
    Huge(usize),
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

#[derive(Debug, Clone, Copy)]
enum LimitKind {
    BatchLen,
    EventBytes,
}

#[derive(Debug, Clone)]
enum SnapshotState {
    Unset,
    Small(Payload),
    /// `LARGE_SNAPSHOT` bytes.
    Large,
    /// Exactly the store's limit, or one byte over it.
    AtLimit {
        over: bool,
    },
}

#[derive(Debug, Clone)]
enum Op {
    Append {
        at: Target,
        expected: Expected,
        events: Vec<NewEvent>,
        correlation: usize,
        /// Another correlation id for every other event of the batch, as a batch of several
        /// commands (the core's group of a busy aggregate's queue) has: runs of ids, an id in
        /// two runs.
        interleaved: Option<usize>,
        request: Option<usize>,
    },
    /// Many one-event appends in a row, so that streams grow long and reads far from 0.
    AppendRun {
        at: Target,
        count: usize,
        correlation: usize,
    },
    /// A batch exactly at a declared limit (`over: false`) or one past it.
    AppendAtLimit {
        at: Target,
        limit: LimitKind,
        over: bool,
    },
    AppendWithGap {
        at: Target,
        events: Vec<NewEvent>,
    },
    Read {
        at: Target,
        from: Position,
        to: Option<Position>,
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
        sequence: Position,
        state: SnapshotState,
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
    family: usize,
    ops: Vec<Op>,
}

fn payload() -> impl Strategy<Value = Payload> {
    (".{0,12}", prop::collection::vec(any::<u8>(), 0..40))
        .prop_map(|(type_url, value)| Payload { type_url, value })
}

/// Timestamps over protobuf's whole range (years 1 to 9999), before 1970 as often as after,
/// with the edges of the nanoseconds.
fn created_at() -> impl Strategy<Value = Option<(i64, i32)>> {
    let seconds = -62_135_596_800i64..=253_402_300_799;
    let nanos = prop_oneof![Just(0), Just(999_999_999), 0i32..1_000_000_000];
    prop_oneof![
        1 => Just(None),
        1 => Just(Some((-1, 999_999_999))),
        4 => (seconds, nanos).prop_map(Some),
    ]
}

fn new_event() -> impl Strategy<Value = NewEvent> {
    (payload(), created_at()).prop_map(|(payload, created_at)| NewEvent {
        payload,
        created_at,
    })
}

/// Aggregates, with most operations on a few of them so that their streams grow long.
fn target() -> impl Strategy<Value = Target> {
    prop_oneof![
        2 => (0..2usize, 0..2usize).prop_map(|(domain, root)| Target { domain, root }),
        1 => (0..domains().len(), 0..ROOTS).prop_map(|(domain, root)| Target { domain, root }),
    ]
}

fn position() -> impl Strategy<Value = Position> {
    prop_oneof![
        3 => (0u64..12).prop_map(Position::At),
        3 => (0u64..6).prop_map(Position::FromEnd),
        1 => (0..HUGE.len()).prop_map(Position::Huge),
    ]
}

fn snapshot_state() -> impl Strategy<Value = SnapshotState> {
    prop_oneof![
        1 => Just(SnapshotState::Unset),
        6 => payload().prop_map(SnapshotState::Small),
        1 => Just(SnapshotState::Large),
        1 => any::<bool>().prop_map(|over| SnapshotState::AtLimit { over }),
    ]
}

fn op() -> impl Strategy<Value = Op> {
    let expected = prop_oneof![
        12 => Just(Expected::Correct),
        2 => (1u64..4).prop_map(Expected::Stale),
        2 => (1u64..4).prop_map(Expected::Future),
        1 => (0..HUGE.len()).prop_map(Expected::Huge),
    ];
    let ids = 0..IDS;
    let limit = prop_oneof![Just(LimitKind::BatchLen), Just(LimitKind::EventBytes)];
    prop_oneof![
        12 => (target(), expected, prop::collection::vec(new_event(), 0..6), ids.clone(), prop::option::weighted(0.25, ids.clone()), prop::option::of(ids.clone()))
            .prop_map(|(at, expected, events, correlation, interleaved, request)| Op::Append { at, expected, events, correlation, interleaved, request }),
        1 => (target(), 20usize..120, ids.clone())
            .prop_map(|(at, count, correlation)| Op::AppendRun { at, count, correlation }),
        1 => (target(), limit, any::<bool>()).prop_map(|(at, limit, over)| Op::AppendAtLimit { at, limit, over }),
        1 => (target(), prop::collection::vec(new_event(), 2..4)).prop_map(|(at, events)| Op::AppendWithGap { at, events }),
        4 => (target(), position(), prop::option::of(position())).prop_map(|(at, from, to)| Op::Read { at, from, to }),
        1 => target().prop_map(|at| Op::NextSequence { at }),
        2 => (0..domains().len(), prop::option::of(0..ROOTS), 0usize..4)
            .prop_map(|(domain, after, limit)| Op::ListRoots { domain, after, limit }),
        1 => Just(Op::ListDomains),
        2 => ids.clone().prop_map(|correlation| Op::FindByCorrelation { correlation }),
        2 => (target(), ids).prop_map(|(at, request)| Op::FindByRequest { at, request }),
        2 => (target(), position(), snapshot_state()).prop_map(|(at, sequence, state)| Op::PutSnapshot { at, sequence, state }),
        1 => target().prop_map(|at| Op::GetSnapshot { at }),
        1 => target().prop_map(|at| Op::DeleteSnapshot { at }),
        1 => Just(Op::Reopen),
    ]
}

/// Three roots that differ in their first bit, their last bit, or in everything.
fn roots() -> impl Strategy<Value = [Uuid; ROOTS]> {
    (1u128..u128::MAX >> 1)
        .prop_map(|base| [base, base ^ 1, base | 1 << 127].map(|root| Uuid::from_u128(root.max(1))))
}

/// Operations at the number line's edges and at each declared limit, run after every case's
/// random ones, on a stream that has events by then: a rare edge drawn by chance would be
/// missed by some runs.
fn edges(limits: &StoreCapabilities) -> Vec<Op> {
    let at = Target { domain: 0, root: 0 };
    let event = NewEvent {
        payload: Payload {
            type_url: "edge".into(),
            value: vec![1, 2, 3],
        },
        created_at: Some((-1, 999_999_999)),
    };
    let mut ops = vec![Op::Append {
        at,
        expected: Expected::Correct,
        events: vec![event.clone(), event.clone()],
        correlation: 0,
        interleaved: None,
        request: None,
    }];
    for huge in 0..HUGE.len() {
        ops.extend([
            Op::Read {
                at,
                from: Position::Huge(huge),
                to: None,
            },
            Op::Read {
                at,
                from: Position::FromEnd(1),
                to: Some(Position::Huge(huge)),
            },
            Op::Append {
                at,
                expected: Expected::Huge(huge),
                events: vec![event.clone()],
                correlation: 0,
                interleaved: None,
                request: None,
            },
            Op::PutSnapshot {
                at,
                sequence: Position::Huge(huge),
                state: SnapshotState::Unset,
            },
        ]);
    }
    for over in [false, true] {
        if limits.max_snapshot_bytes.is_some() {
            ops.push(Op::PutSnapshot {
                at,
                sequence: Position::FromEnd(1),
                state: SnapshotState::AtLimit { over },
            });
        }
        for limit in [LimitKind::BatchLen, LimitKind::EventBytes] {
            ops.push(Op::AppendAtLimit { at, limit, over });
        }
    }
    ops
}

fn case() -> impl Strategy<Value = Case> {
    (
        roots(),
        0..ID_FAMILIES.len(),
        prop::collection::vec(op(), 1..48),
    )
        .prop_map(|(roots, family, ops)| Case { roots, family, ops })
}

/// The stores of one case and the aggregates its operations address.
struct Run<'h, H: Harness> {
    harness: &'h H,
    namespace: String,
    model: MemoryStore,
    store: Option<H::Store>,
    domains: Vec<Domain>,
    roots: [Uuid; ROOTS],
    ids: [&'static str; IDS],
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

    fn aggregates(&self) -> impl Iterator<Item = AggregateId> + '_ {
        (0..self.domains.len())
            .flat_map(|domain| (0..ROOTS).map(move |root| Target { domain, root }))
            .map(|at| self.aggregate(at))
    }

    fn pages(&self, first: u64, events: &[NewEvent], correlation: usize) -> Vec<EventPage> {
        // Up to u64::MAX, where a batch is cut short (and must still be refused).
        (first..=u64::MAX)
            .zip(events)
            .map(|(sequence, event)| EventPage {
                sequence,
                created_at: event
                    .created_at
                    .map(|(seconds, nanos)| Timestamp { seconds, nanos }),
                payload: Some(to_any(&event.payload)),
                correlation_id: self.ids[correlation].to_owned(),
            })
            .collect()
    }

    /// [`Self::pages`], with every other event under `interleaved`'s id if set.
    fn interleaved_pages(
        &self,
        first: u64,
        events: &[NewEvent],
        correlation: usize,
        interleaved: Option<usize>,
    ) -> Vec<EventPage> {
        let mut pages = self.pages(first, events, correlation);
        if let Some(other) = interleaved {
            for page in pages.iter_mut().skip(1).step_by(2) {
                self.ids[other].clone_into(&mut page.correlation_id);
            }
        }
        pages
    }

    /// A request key for an id, whose digest also depends on where the append goes: several
    /// appends with one id carry different digests, and only the first one's must come back.
    fn request(&self, request: usize, expected_sequence: u64) -> RequestKey {
        let id = self.ids[request];
        let mut digest = [request as u8; 32];
        digest[..8].copy_from_slice(&expected_sequence.to_be_bytes());
        for (byte, from) in digest[8..].iter_mut().zip(id.bytes()) {
            *byte = from;
        }
        RequestKey::new(id, digest)
    }

    /// A position's sequence in the stream of `aggregate`, as the model has it.
    async fn sequence(&self, aggregate: &AggregateId, position: Position) -> Result<u64, String> {
        Ok(match position {
            Position::At(sequence) => sequence,
            Position::FromEnd(back) => self.model_next(aggregate).await?.saturating_sub(back),
            Position::Huge(index) => HUGE[index],
        })
    }

    async fn step(&mut self, op: &Op) -> Result<(), String> {
        match op {
            Op::Append {
                at,
                expected,
                events,
                correlation,
                interleaved,
                request,
            } => {
                let aggregate = self.aggregate(*at);
                let next = self.model_next(&aggregate).await?;
                let expected_sequence = match *expected {
                    Expected::Correct => next,
                    Expected::Stale(by) => next.saturating_sub(by),
                    Expected::Future(by) => next + by,
                    Expected::Huge(index) => HUGE[index],
                };
                let append = Append {
                    expected_sequence,
                    events: self.interleaved_pages(
                        expected_sequence,
                        events,
                        *correlation,
                        *interleaved,
                    ),
                    request: request.map(|request| self.request(request, expected_sequence)),
                };
                self.same_append(op, &aggregate, append).await
            }
            Op::AppendRun {
                at,
                count,
                correlation,
            } => {
                let aggregate = self.aggregate(*at);
                let event = NewEvent {
                    payload: Payload {
                        type_url: "run".into(),
                        value: Vec::new(),
                    },
                    created_at: Some((-1, 1)),
                };
                for _ in 0..*count {
                    let next = self.model_next(&aggregate).await?;
                    let mut events = self.pages(next, std::slice::from_ref(&event), *correlation);
                    if let Some(payload) = events[0].payload.as_mut() {
                        payload.value = next.to_be_bytes().to_vec();
                    }
                    let append = Append::new(next, events);
                    let (model, store) = (
                        self.model.append(&aggregate, append.clone()).await,
                        self.store().append(&aggregate, append).await,
                    );
                    same(op, model, store)?;
                }
                self.same_stream(&aggregate).await
            }
            Op::AppendAtLimit { at, limit, over } => {
                let aggregate = self.aggregate(*at);
                let next = self.model_next(&aggregate).await?;
                let capabilities = self.model.capabilities();
                let events = match limit {
                    LimitKind::BatchLen => {
                        // Very large limits are the large-batch property's business.
                        let Some(max) = capabilities.max_batch_len.filter(|max| *max <= 1_000)
                        else {
                            return Ok(());
                        };
                        let len = max + usize::from(*over);
                        let event = NewEvent {
                            payload: Payload {
                                type_url: "limit".into(),
                                value: vec![1; 3],
                            },
                            created_at: None,
                        };
                        self.pages(next, &vec![event; len], 0)
                    }
                    LimitKind::EventBytes => {
                        let Some(max) = capabilities.max_event_bytes else {
                            return Ok(());
                        };
                        vec![event_of_size(next, max + usize::from(*over))]
                    }
                };
                self.same_append(op, &aggregate, Append::new(next, events))
                    .await
            }
            Op::AppendWithGap { at, events } => {
                let aggregate = self.aggregate(*at);
                let next = self.model_next(&aggregate).await?;
                let mut pages = self.pages(next, events, 0);
                for page in pages.iter_mut().skip(1) {
                    page.sequence += 1;
                }
                self.same_append(op, &aggregate, Append::new(next, pages))
                    .await
            }
            Op::Read { at, from, to } => {
                let aggregate = self.aggregate(*at);
                let range = SequenceRange {
                    from: self.sequence(&aggregate, *from).await?,
                    to: match to {
                        Some(to) => Some(self.sequence(&aggregate, *to).await?),
                        None => None,
                    },
                };
                same(
                    (op, range),
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
                let id = self.ids[*correlation];
                same(
                    (op, id),
                    self.model.find_by_correlation(id).await,
                    self.store().find_by_correlation(id).await,
                )
            }
            Op::FindByRequest { at, request } => {
                let (aggregate, id) = (self.aggregate(*at), self.ids[*request]);
                let model = self.model.find_by_request(&aggregate, id).await;
                same(
                    (op, id),
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
                let sequence = self.sequence(&aggregate, *sequence).await?;
                let snapshot = self.snapshot(sequence, state);
                let model = SnapshotStore::put(&self.model, &aggregate, snapshot.clone()).await;
                let store = SnapshotStore::put(self.store(), &aggregate, snapshot).await;
                same(op, model, store)?;
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

    fn snapshot(&self, sequence: u64, state: &SnapshotState) -> Snapshot {
        let sized = |len: usize| {
            Some(Any {
                type_url: "type.googleapis.com/large.State".into(),
                value: (0..len).map(|i| (i * 7 % 251) as u8).collect(),
            })
        };
        let mut snapshot = Snapshot {
            sequence,
            state: match state {
                SnapshotState::Unset => None,
                SnapshotState::Small(payload) => Some(to_any(payload)),
                SnapshotState::Large => sized(LARGE_SNAPSHOT),
                SnapshotState::AtLimit { .. } => sized(0),
            },
        };
        if let SnapshotState::AtLimit { over } = state {
            let limit = self
                .model
                .capabilities()
                .max_snapshot_bytes
                .unwrap_or(DEFAULT_SNAPSHOT_LIMIT);
            grow_to(&mut snapshot, limit + usize::from(*over));
        }
        snapshot
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

    /// Compares every observable part of the two stores: streams, snapshots, request and
    /// correlation lookups, root listings page by page, domains.
    async fn same_everything(&self) -> Result<(), String> {
        for aggregate in self.aggregates() {
            self.same_stream(&aggregate).await?;
            self.same_snapshot(&aggregate).await?;
            for id in self.ids {
                same(
                    format!("the events of request id {id:?} of {aggregate}"),
                    self.model.find_by_request(&aggregate, id).await,
                    self.store().find_by_request(&aggregate, id).await,
                )?;
            }
        }
        for domain in &self.domains {
            for page_size in [1, 2, ROOTS + 1] {
                let mut after = None;
                loop {
                    let model = self.model.list_roots(domain, after, page_size).await;
                    let store = self.store().list_roots(domain, after, page_size).await;
                    let last = model.as_ref().ok().and_then(|page| page.last().copied());
                    same(
                        format!("the roots of {domain} after {after:?}, {page_size} a page"),
                        model,
                        store,
                    )?;
                    match last {
                        Some(last) => after = Some(last),
                        None => break,
                    }
                }
            }
        }
        same(
            "the domains",
            self.model.list_domains().await,
            self.store().list_domains().await,
        )?;
        for id in self.ids {
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

/// An event whose encoding is exactly `size` bytes (for sizes of a few bytes and more).
pub(crate) fn event_of_size(sequence: u64, size: usize) -> EventPage {
    let mut event = EventPage {
        sequence,
        created_at: None,
        payload: None,
        correlation_id: String::new(),
    };
    let mut payload = Any::default();
    fit(&mut payload, size, |payload| {
        event.payload = Some(payload.clone());
        event.encoded_len()
    });
    event.payload = Some(payload);
    event
}

/// Grows the state of `snapshot` until its encoding is exactly `size` bytes.
fn grow_to(snapshot: &mut Snapshot, size: usize) {
    let mut state = snapshot.state.take().unwrap_or_default();
    fit(&mut state, size, |state| {
        snapshot.state = Some(state.clone());
        snapshot.encoded_len()
    });
    snapshot.state = Some(state);
}

/// Resizes `any` until `encoded_len` of the message holding it is `size`: the value takes the
/// bulk, then the type URL is padded a byte at a time (a length prefix that gains a byte makes
/// a step of two, which the value gives back).
fn fit(any: &mut Any, size: usize, mut encoded_len: impl FnMut(&Any) -> usize) {
    any.type_url = "u".into();
    any.value.resize(size, 0x5a);
    for _ in 0..size + 64 {
        match encoded_len(any).cmp(&size) {
            std::cmp::Ordering::Equal => return,
            std::cmp::Ordering::Less => any.type_url.push('u'),
            std::cmp::Ordering::Greater => {
                if any.value.pop().is_none() {
                    return;
                }
            }
        }
    }
}

/// The seed of a run: `ANGZARR_SUITE_SEED` (to replay a failure) or a fresh one.
fn seed() -> [u8; 32] {
    let mut seed = [0; 32];
    match std::env::var("ANGZARR_SUITE_SEED") {
        Ok(hex) => {
            let bytes = (0..hex.len().min(64))
                .step_by(2)
                .map(|at| u8::from_str_radix(hex.get(at..at + 2).unwrap_or("0"), 16));
            for (byte, parsed) in seed.iter_mut().zip(bytes) {
                *byte = parsed.expect("ANGZARR_SUITE_SEED is 64 hexadecimal digits");
            }
        }
        Err(_) => {
            let random = Uuid::new_v4().as_u128().to_be_bytes();
            let more = Uuid::new_v4().as_u128().to_be_bytes();
            seed[..16].copy_from_slice(&random);
            seed[16..].copy_from_slice(&more);
        }
    }
    seed
}

/// A runner for `cases` cases, or more if `PROPTEST_CASES` says so (a soak run); never fewer,
/// since a suite that runs too few cases can pass a broken store. Its seed is returned so
/// that a failure can say how to replay it.
pub(crate) fn runner(default_cases: u32) -> (TestRunner, String) {
    let soak = std::env::var("PROPTEST_CASES")
        .ok()
        .and_then(|cases| cases.parse().ok());
    let cases = soak.map_or(default_cases, |soak: u32| soak.max(default_cases));
    let config = Config {
        cases,
        failure_persistence: None,
        ..Config::default()
    };
    let seed = seed();
    let replay = seed.iter().map(|byte| format!("{byte:02x}")).collect();
    let rng = TestRng::from_seed(RngAlgorithm::ChaCha, &seed);
    (TestRunner::new_with_rng(config, rng), replay)
}

pub(crate) async fn run<H: Harness>(harness: &H) {
    let runtime = tokio::runtime::Handle::current();
    let (mut runner, seed) = runner(harness.cases());
    let result = runner.run(&case(), |case| {
        // Proptest's runner is synchronous; the case itself runs on the suite's runtime.
        tokio::task::block_in_place(|| runtime.block_on(run_case(harness, case)))
    });
    if let Err(failure) = result {
        panic!(
            "the store disagrees with the model: {failure}\n(replay this run with ANGZARR_SUITE_SEED={seed})"
        );
    }
}

async fn run_case<H: Harness>(harness: &H, case: Case) -> Result<(), TestCaseError> {
    let namespace = crate::namespace();
    let store = harness.open(&namespace).await;
    let model = MemoryStore::with_capabilities(store.capabilities());
    let family = ID_FAMILIES[case.family];
    let mut run = Run {
        harness,
        namespace,
        model,
        store: Some(store),
        domains: domains(),
        roots: case.roots,
        ids: ["", family[0], family[1], family[2], family[3]],
    };
    let mut outcome = Ok(());
    let edges = edges(&run.model.capabilities());
    for (index, op) in case.ops.iter().chain(&edges).enumerate() {
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

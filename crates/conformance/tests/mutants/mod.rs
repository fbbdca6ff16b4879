//! Racy mutants: the model with one planted concurrency bug each. Every mutant answers exactly
//! as the model does while operations run one at a time, and misbehaves only when they overlap
//! (or, for some, only across two instances).

use std::collections::HashMap;
use std::panic::{AssertUnwindSafe, catch_unwind};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};

use angzarr_conformance::Harness;
use angzarr_ports::{
    AggregateEvents, AggregateId, Append, Domain, EventPage, EventStore, EventStoreError,
    RequestRecord, SequenceRange, Snapshot, SnapshotStore, SnapshotStoreError, StoreCapabilities,
    Uuid, async_trait, validate_append,
};
use angzarr_store_memory::MemoryStore;
use prost_types::Any;

/// The planted bugs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Bug {
    /// Reserves a batch's sequences first (a compare-and-set on a head counter, so conflicts
    /// are right), then writes its events one at a time: readers see part of a batch.
    HeadThenEvents,
    /// Checks the expected sequence, then appends at the end of the stream, under a lock of its
    /// own instance: atomic within one instance, not across two.
    LocalLock,
    /// A second instance has data of its own, as a harness whose `open` makes fresh state
    /// (and that forgot to override `open_another`) would give.
    PrivateState,
    /// Each instance keeps the request index of its own writes in process: a lookup through
    /// another instance finds nothing.
    PrivateRequestIndex,
    /// With more than 8 appends in flight (a full group commit), the overflow appends at the
    /// end of the stream without checking the expected sequence: only writers that really
    /// start together, more of them than a group holds, reach it.
    OverflowSkipsCheck,
    /// An append that overlaps another loses its request id.
    DropsRequestIdUnderRace,
    /// Overlapping appends to different aggregates exchange payloads, as a group commit that
    /// pairs pages with the wrong writer would; sequences stay right.
    MixesPagesAcrossAggregates,
}

impl Bug {
    /// Every bug.
    pub(crate) const ALL: [Self; 7] = [
        Self::HeadThenEvents,
        Self::LocalLock,
        Self::PrivateState,
        Self::PrivateRequestIndex,
        Self::OverflowSkipsCheck,
        Self::DropsRequestIdUnderRace,
        Self::MixesPagesAcrossAggregates,
    ];
}

/// What every instance of one mutant store shares; the model holds the data.
#[derive(Default)]
struct Shared {
    model: MemoryStore,
    /// Appends in progress, through any instance.
    in_flight: AtomicUsize,
    /// [`Bug::HeadThenEvents`]: the reserved end of each aggregate.
    heads: Mutex<HashMap<AggregateId, u64>>,
    /// [`Bug::MixesPagesAcrossAggregates`]: the payloads of the latest overlapping append, and
    /// its aggregate.
    group: Mutex<Option<(AggregateId, Vec<Option<Any>>)>>,
}

/// What one instance has to itself.
#[derive(Default)]
struct Local {
    /// [`Bug::LocalLock`]: serialises the appends of this instance only.
    lock: tokio::sync::Mutex<()>,
    /// [`Bug::PrivateRequestIndex`]: the request index of this instance's writes.
    requests: Mutex<HashMap<(AggregateId, String), RequestRecord>>,
}

/// One instance of a mutant store.
pub(crate) struct Mutant {
    bug: Bug,
    shared: Arc<Shared>,
    local: Local,
}

impl Mutant {
    fn new(bug: Bug, shared: Arc<Shared>) -> Self {
        Self {
            bug,
            shared,
            local: Local::default(),
        }
    }

    fn model(&self) -> &MemoryStore {
        &self.shared.model
    }

    /// [`Bug::HeadThenEvents`].
    async fn head_then_events(
        &self,
        aggregate: &AggregateId,
        append: Append,
    ) -> Result<u64, EventStoreError> {
        validate_append(&append, &self.capabilities())?;
        let end = {
            let mut heads = lock(&self.shared.heads);
            let head = heads.get(aggregate).copied().unwrap_or(0);
            if head != append.expected_sequence {
                return Err(EventStoreError::Conflict {
                    expected: append.expected_sequence,
                    actual: head,
                });
            }
            let end = head + append.events.len() as u64;
            heads.insert(aggregate.clone(), end);
            end
        };
        for event in append.events {
            let one = Append {
                expected_sequence: event.sequence,
                events: vec![event],
                request: append.request.clone(),
            };
            self.model().append(aggregate, one).await?;
            tokio::task::yield_now().await; // a reader may look here
        }
        Ok(end)
    }

    /// [`Bug::LocalLock`]'s two steps, without the lock.
    async fn check_then_append(
        &self,
        aggregate: &AggregateId,
        append: Append,
    ) -> Result<u64, EventStoreError> {
        validate_append(&append, &self.capabilities())?;
        let actual = self.model().next_sequence(aggregate).await?;
        if actual != append.expected_sequence {
            return Err(EventStoreError::Conflict {
                expected: append.expected_sequence,
                actual,
            });
        }
        self.append_at_end(aggregate, append).await
    }

    /// Appends the events at the end of the stream, wherever it is now, renumbered.
    async fn append_at_end(
        &self,
        aggregate: &AggregateId,
        mut append: Append,
    ) -> Result<u64, EventStoreError> {
        validate_append(&append, &self.capabilities())?;
        loop {
            let end = self.model().next_sequence(aggregate).await?;
            for (sequence, page) in (end..).zip(&mut append.events) {
                page.sequence = sequence;
            }
            append.expected_sequence = end;
            match self.model().append(aggregate, append.clone()).await {
                Err(EventStoreError::Conflict { .. }) => continue,
                result => return result,
            }
        }
    }

    /// [`Bug::MixesPagesAcrossAggregates`]: takes the payloads of the previous overlapping
    /// append if it was to another aggregate with as many events, and leaves its own.
    fn mix(&self, aggregate: &AggregateId, append: &mut Append) {
        let ours = append.events.iter().map(|page| page.payload.clone());
        let ours = (aggregate.clone(), ours.collect::<Vec<_>>());
        let mut group = lock(&self.shared.group);
        if let Some((other, theirs)) = group.replace(ours)
            && other != *aggregate
            && theirs.len() == append.events.len()
        {
            for (page, payload) in append.events.iter_mut().zip(theirs) {
                page.payload = payload;
            }
        }
    }

    /// [`Bug::PrivateRequestIndex`]: the model appends without the request id, which goes to
    /// this instance's index.
    async fn index_requests_locally(
        &self,
        aggregate: &AggregateId,
        mut append: Append,
    ) -> Result<u64, EventStoreError> {
        let request = append.request.take();
        let pages = append.events.clone();
        let end = self.model().append(aggregate, append).await?;
        if let Some(request) = request {
            let mut requests = lock(&self.local.requests);
            let record = requests
                .entry((aggregate.clone(), request.id))
                .or_insert_with(|| RequestRecord {
                    digest: Some(request.digest),
                    pages: Vec::new(),
                });
            record.pages.extend(pages);
        }
        Ok(end)
    }
}

/// Counts an append in flight while alive.
struct InFlight<'a>(&'a AtomicUsize);

impl<'a> InFlight<'a> {
    fn enter(count: &'a AtomicUsize) -> Self {
        count.fetch_add(1, Ordering::SeqCst);
        Self(count)
    }

    /// Appends in flight, this one included.
    fn count(&self) -> usize {
        self.0.load(Ordering::SeqCst)
    }
}

impl Drop for InFlight<'_> {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::SeqCst);
    }
}

fn lock<T>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    mutex
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner())
}

#[async_trait]
impl EventStore for Mutant {
    fn capabilities(&self) -> StoreCapabilities {
        self.model().capabilities()
    }

    async fn append(
        &self,
        aggregate: &AggregateId,
        mut append: Append,
    ) -> Result<u64, EventStoreError> {
        let in_flight = InFlight::enter(&self.shared.in_flight);
        // Let the appends that started with this one get here too.
        tokio::task::yield_now().await;
        match self.bug {
            Bug::HeadThenEvents => self.head_then_events(aggregate, append).await,
            Bug::LocalLock => {
                let _lock = self.local.lock.lock().await;
                self.check_then_append(aggregate, append).await
            }
            Bug::PrivateRequestIndex => self.index_requests_locally(aggregate, append).await,
            Bug::OverflowSkipsCheck if in_flight.count() > 8 => {
                self.append_at_end(aggregate, append).await
            }
            Bug::DropsRequestIdUnderRace if in_flight.count() > 1 => {
                append.request = None;
                self.model().append(aggregate, append).await
            }
            Bug::MixesPagesAcrossAggregates if in_flight.count() > 1 => {
                self.mix(aggregate, &mut append);
                self.model().append(aggregate, append).await
            }
            _ => self.model().append(aggregate, append).await,
        }
    }

    async fn read(
        &self,
        aggregate: &AggregateId,
        range: SequenceRange,
    ) -> Result<Vec<EventPage>, EventStoreError> {
        self.model().read(aggregate, range).await
    }

    async fn next_sequence(&self, aggregate: &AggregateId) -> Result<u64, EventStoreError> {
        self.model().next_sequence(aggregate).await
    }

    async fn list_roots(
        &self,
        domain: &Domain,
        after: Option<Uuid>,
        limit: usize,
    ) -> Result<Vec<Uuid>, EventStoreError> {
        self.model().list_roots(domain, after, limit).await
    }

    async fn list_domains(&self) -> Result<Vec<Domain>, EventStoreError> {
        self.model().list_domains().await
    }

    async fn find_by_correlation(
        &self,
        correlation_id: &str,
    ) -> Result<Vec<AggregateEvents>, EventStoreError> {
        self.model().find_by_correlation(correlation_id).await
    }

    async fn find_by_request(
        &self,
        aggregate: &AggregateId,
        request_id: &str,
    ) -> Result<Option<RequestRecord>, EventStoreError> {
        if self.bug == Bug::PrivateRequestIndex {
            let requests = lock(&self.local.requests);
            return Ok(requests
                .get(&(aggregate.clone(), request_id.to_owned()))
                .cloned());
        }
        self.model().find_by_request(aggregate, request_id).await
    }
}

#[async_trait]
impl SnapshotStore for Mutant {
    async fn get(&self, aggregate: &AggregateId) -> Result<Option<Snapshot>, SnapshotStoreError> {
        SnapshotStore::get(self.model(), aggregate).await
    }

    async fn put(
        &self,
        aggregate: &AggregateId,
        snapshot: Snapshot,
    ) -> Result<(), SnapshotStoreError> {
        SnapshotStore::put(self.model(), aggregate, snapshot).await
    }

    async fn delete(&self, aggregate: &AggregateId) -> Result<(), SnapshotStoreError> {
        SnapshotStore::delete(self.model(), aggregate).await
    }
}

/// Opens mutant stores with one bug.
pub(crate) struct Racy(pub(crate) Bug);

#[async_trait]
impl Harness for Racy {
    type Store = Mutant;

    async fn open(&self, _namespace: &str) -> Mutant {
        Mutant::new(self.0, Arc::default())
    }

    async fn open_another(&self, namespace: &str, first: &Mutant) -> Mutant {
        if self.0 == Bug::PrivateState {
            return self.open(namespace).await;
        }
        Mutant::new(self.0, Arc::clone(&first.shared))
    }

    fn persistent(&self) -> bool {
        false
    }
}

/// Runs `property` against a store with `bug`: `Err` with the panic message if it failed.
fn outcome<F: AsyncFnOnce(&Racy)>(bug: Bug, property: F) -> Result<(), String> {
    let outcome = catch_unwind(AssertUnwindSafe(|| {
        angzarr_conformance::run(Racy(bug), property)
    }));
    outcome.map_err(|panic| {
        panic
            .downcast_ref::<String>()
            .cloned()
            .or_else(|| panic.downcast_ref::<&str>().map(|s| (*s).to_owned()))
            .unwrap_or_default()
    })
}

/// Whether running `property` against a store with `bug` panics with `expected` in its
/// message; panics if it fails for another reason.
pub(crate) fn caught<F: AsyncFnOnce(&Racy)>(bug: Bug, property: F, expected: &str) -> bool {
    let Err(message) = outcome(bug, property) else {
        return false;
    };
    assert!(
        message.contains(expected),
        "{bug:?} failed the suite for another reason: {message}"
    );
    true
}

/// Panics unless running `property` against a store with `bug` passes.
pub(crate) fn passes<F: AsyncFnOnce(&Racy)>(bug: Bug, property: F, name: &str) {
    if let Err(message) = outcome(bug, property) {
        panic!("{bug:?} must pass {name}, as its bug only shows elsewhere; it failed: {message}");
    }
}

//! The suite must fail stores that break the contract: each mutant below is the model with one
//! plausible bug, and the state machine has to notice it.

use std::panic::{AssertUnwindSafe, catch_unwind};

use angzarr_conformance::{Harness, properties};
use angzarr_ports::{
    AggregateEvents, AggregateId, Append, Domain, EventPage, EventStore, EventStoreError,
    SequenceRange, Snapshot, SnapshotStore, SnapshotStoreError, StoreCapabilities, Uuid,
    async_trait,
};
use angzarr_store_memory::MemoryStore;

#[derive(Debug, Clone, Copy, PartialEq)]
enum Bug {
    /// Reads ignore the end of the range.
    IgnoresRangeEnd,
    /// Only the first event of a batch is kept: the append is not atomic.
    KeepsFirstEventOnly,
    /// Domains are folded to lower case when keys are built.
    CaseInsensitiveDomains,
    /// Root listings ignore the page cursor.
    ListRootsIgnoresAfter,
    /// Snapshot overwrites are lost.
    KeepsFirstSnapshot,
    /// An expected sequence ahead of the stream is accepted.
    AcceptsFutureSequence,
    /// The expected sequence is checked, then the events written, in two steps: racing
    /// writers can both pass the check.
    CheckThenWrite,
}

struct Mutant {
    bug: Bug,
    inner: MemoryStore,
}

impl Mutant {
    fn key(&self, aggregate: &AggregateId) -> AggregateId {
        if self.bug != Bug::CaseInsensitiveDomains {
            return aggregate.clone();
        }
        let domain = Domain::new(aggregate.domain().as_str().to_lowercase()).unwrap();
        AggregateId::new(domain, aggregate.root()).unwrap()
    }
}

#[async_trait]
impl EventStore for Mutant {
    fn capabilities(&self) -> StoreCapabilities {
        self.inner.capabilities()
    }

    async fn append(
        &self,
        aggregate: &AggregateId,
        mut append: Append,
    ) -> Result<u64, EventStoreError> {
        let key = self.key(aggregate);
        if self.bug == Bug::KeepsFirstEventOnly {
            append.events.truncate(1);
        }
        if self.bug == Bug::AcceptsFutureSequence {
            let actual = self.inner.next_sequence(&key).await?;
            if append.expected_sequence > actual && !append.events.is_empty() {
                for (sequence, page) in (actual..).zip(&mut append.events) {
                    page.sequence = sequence;
                }
                append.expected_sequence = actual;
            }
        }
        if self.bug == Bug::CheckThenWrite {
            let actual = self.inner.next_sequence(&key).await?;
            if actual != append.expected_sequence {
                return Err(EventStoreError::Conflict {
                    expected: append.expected_sequence,
                    actual,
                });
            }
            tokio::task::yield_now().await; // another writer may append here
            let end = self.inner.next_sequence(&key).await?;
            for (sequence, page) in (end..).zip(&mut append.events) {
                page.sequence = sequence;
            }
            append.expected_sequence = end;
        }
        self.inner.append(&key, append).await
    }

    async fn read(
        &self,
        aggregate: &AggregateId,
        mut range: SequenceRange,
    ) -> Result<Vec<EventPage>, EventStoreError> {
        if self.bug == Bug::IgnoresRangeEnd {
            range.to = None;
        }
        self.inner.read(&self.key(aggregate), range).await
    }

    async fn next_sequence(&self, aggregate: &AggregateId) -> Result<u64, EventStoreError> {
        self.inner.next_sequence(&self.key(aggregate)).await
    }

    async fn list_roots(
        &self,
        domain: &Domain,
        after: Option<Uuid>,
        limit: usize,
    ) -> Result<Vec<Uuid>, EventStoreError> {
        let after = if self.bug == Bug::ListRootsIgnoresAfter {
            None
        } else {
            after
        };
        self.inner.list_roots(domain, after, limit).await
    }

    async fn list_domains(&self) -> Result<Vec<Domain>, EventStoreError> {
        self.inner.list_domains().await
    }

    async fn find_by_correlation(
        &self,
        correlation_id: &str,
    ) -> Result<Vec<AggregateEvents>, EventStoreError> {
        self.inner.find_by_correlation(correlation_id).await
    }

    async fn find_by_request(
        &self,
        aggregate: &AggregateId,
        request_id: &str,
    ) -> Result<Vec<EventPage>, EventStoreError> {
        self.inner
            .find_by_request(&self.key(aggregate), request_id)
            .await
    }
}

#[async_trait]
impl SnapshotStore for Mutant {
    async fn get(&self, aggregate: &AggregateId) -> Result<Option<Snapshot>, SnapshotStoreError> {
        SnapshotStore::get(&self.inner, aggregate).await
    }

    async fn put(
        &self,
        aggregate: &AggregateId,
        snapshot: Snapshot,
    ) -> Result<(), SnapshotStoreError> {
        if self.bug == Bug::KeepsFirstSnapshot
            && SnapshotStore::get(&self.inner, aggregate).await?.is_some()
        {
            return Ok(());
        }
        SnapshotStore::put(&self.inner, aggregate, snapshot).await
    }

    async fn delete(&self, aggregate: &AggregateId) -> Result<(), SnapshotStoreError> {
        SnapshotStore::delete(&self.inner, aggregate).await
    }
}

struct MutantHarness(Bug);

#[async_trait]
impl Harness for MutantHarness {
    type Store = Mutant;

    async fn open(&self, _namespace: &str) -> Mutant {
        Mutant {
            bug: self.0,
            inner: MemoryStore::new(),
        }
    }

    fn persistent(&self) -> bool {
        false
    }

    fn cases(&self) -> u32 {
        256
    }
}

/// Whether running `property` against a store with `bug` panics with `expected` in its message.
fn caught<F: AsyncFnOnce(&MutantHarness)>(bug: Bug, property: F, expected: &str) -> bool {
    let outcome = catch_unwind(AssertUnwindSafe(|| {
        angzarr_conformance::run(MutantHarness(bug), property)
    }));
    let Err(panic) = outcome else { return false };
    let message = panic
        .downcast_ref::<String>()
        .cloned()
        .or_else(|| panic.downcast_ref::<&str>().map(|s| (*s).to_owned()))
        .unwrap_or_default();
    assert!(
        message.contains(expected),
        "{bug:?} failed the suite for another reason: {message}"
    );
    true
}

#[test]
fn the_state_machine_fails_every_mutant() {
    let bugs = [
        Bug::IgnoresRangeEnd,
        Bug::KeepsFirstEventOnly,
        Bug::CaseInsensitiveDomains,
        Bug::ListRootsIgnoresAfter,
        Bug::KeepsFirstSnapshot,
        Bug::AcceptsFutureSequence,
    ];
    for bug in bugs {
        let property = async |harness: &MutantHarness| properties::state_machine(harness).await;
        assert!(
            caught(bug, property, "disagrees with the model"),
            "the suite passed a store with the bug {bug:?}"
        );
    }
}

#[test]
fn the_race_property_fails_a_check_then_write_store() {
    let property =
        async |harness: &MutantHarness| properties::concurrent_writers_one_winner(harness).await;
    assert!(
        caught(Bug::CheckThenWrite, property, "round"),
        "the suite passed a non-atomic compare-and-append"
    );
}

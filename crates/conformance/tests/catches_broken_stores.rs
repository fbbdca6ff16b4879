//! The suite must fail stores that break the contract: each mutant below is the model with one
//! plausible bug, one for every port method and index, and the suite has to notice it, for the
//! right reason, in every run at the default case count (a bug caught in half of the runs is a
//! bug let through). The concurrency mutants are in `catches_racy_stores.rs`.

use std::collections::HashMap;
use std::panic::{AssertUnwindSafe, catch_unwind};
use std::sync::Mutex;

use angzarr_conformance::{Harness, properties};
use angzarr_ports::{
    AggregateEvents, AggregateId, Append, CommandDigest, Domain, EventPage, EventStore,
    EventStoreError, Limit, RequestRecord, SequenceRange, Snapshot, SnapshotStore,
    SnapshotStoreError, StoreCapabilities, Uuid, async_trait, validate_append,
};
use angzarr_store_memory::MemoryStore;
use prost_types::Any;

#[derive(Debug, Clone, Copy, PartialEq)]
enum Bug {
    /// Reads ignore the end of the range.
    IgnoresRangeEnd,
    /// A sequence of 2^63 or more, cast to a signed 64-bit column, wraps: a read from there
    /// starts at 0.
    ReadWrapsHugeSequences,
    /// Only the first event of a batch is kept: the append is not atomic.
    KeepsFirstEventOnly,
    /// Domains are folded to lower case when keys are built.
    CaseInsensitiveDomains,
    /// An expected sequence ahead of the stream is accepted.
    AcceptsFutureSequence,
    /// A conflict names the expected sequence as the actual one.
    WrongActualInConflict,
    /// The next sequence is the largest sequence (`SELECT max(sequence)` without the + 1).
    NextSequenceIsLastSequence,
    /// Times are kept to the microsecond, as in a PostgreSQL `timestamptz`.
    CreatedAtInMicroseconds,
    /// Times before 1970 are stored as 1970.
    CreatedAtBefore1970Clamped,
    /// Root listings ignore the page cursor.
    ListRootsIgnoresAfter,
    /// Root listings return one root more than asked.
    ListRootsOneTooMany,
    /// Domains are listed through a case-insensitive DISTINCT: `Account` hides `account`.
    ListDomainsCaseInsensitive,
    /// Correlation ids are matched with SQL LIKE: `%` and `_` are wildcards.
    CorrelationMatchedWithLike,
    /// Correlation ids are matched by prefix.
    CorrelationMatchedByPrefix,
    /// Correlation ids are compared under a case-folding collation.
    CorrelationCaseInsensitive,
    /// Request ids are compared under a case-folding collation.
    RequestIdsCaseInsensitive,
    /// Request ids are kept in a column three characters wide.
    RequestIdsTruncated,
    /// The request index is keyed by root alone: a lookup finds the request id of another
    /// domain's aggregate with the same root.
    RequestIndexIgnoresDomain,
    /// The command digest stored with a request id is lost.
    RequestDigestLost,
    /// A request id used by several appends comes back with the last one's digest.
    RequestDigestOfLastAppend,
    /// Snapshot overwrites are lost.
    KeepsFirstSnapshot,
    /// Deleting a snapshot does nothing.
    SnapshotDeleteIsNoop,
    /// A snapshot without state comes back with an empty one.
    UnsetSnapshotStateBecomesEmpty,
    /// Snapshot states are cut at 64 KiB.
    SnapshotsTruncatedAt64KiB,
    /// A batch exactly as long as the declared limit is refused (`>=` for `>`).
    BatchLimitOffByOne,
    /// The event size limit is checked on the payload's bytes, not the encoded event.
    EventSizeMeasuredOnPayload,
    /// Snapshots over the declared limit are stored anyway.
    SnapshotLimitIgnored,
    /// After a reopen, the request index is empty.
    LosesRequestIndexOnReopen,
    /// After a reopen, snapshots are gone.
    LosesSnapshotsOnReopen,
    /// The expected sequence is checked, then the events written, in two steps: racing
    /// writers can both pass the check.
    CheckThenWrite,
}

/// The limits of the limited harness, the same as the memory store's own suite runs with.
const LIMITS: StoreCapabilities = StoreCapabilities::UNLIMITED
    .with_max_batch_len(64)
    .with_max_event_bytes(2_000)
    .with_max_snapshot_bytes(200 * 1024);

struct Mutant {
    bug: Bug,
    /// Without limits: the mutant enforces `limits` itself.
    inner: MemoryStore,
    limits: StoreCapabilities,
    /// Whether this store value was opened over data written before.
    reopened: bool,
    /// The digest of the last append of each request id.
    last_digests: Mutex<HashMap<(AggregateId, String), CommandDigest>>,
}

impl Mutant {
    fn has(&self, bug: Bug) -> bool {
        self.bug == bug
    }

    fn key(&self, aggregate: &AggregateId) -> AggregateId {
        if !self.has(Bug::CaseInsensitiveDomains) {
            return aggregate.clone();
        }
        let domain = Domain::new(aggregate.domain().as_str().to_lowercase()).unwrap();
        AggregateId::new(domain, aggregate.root()).unwrap()
    }

    /// How the mutant spells a request id in its index.
    fn request_key(&self, id: &str) -> String {
        match self.bug {
            Bug::RequestIdsCaseInsensitive => id.to_lowercase(),
            Bug::RequestIdsTruncated => id.chars().take(3).collect(),
            _ => id.to_owned(),
        }
    }

    /// Every aggregate with events, in key order.
    async fn aggregates(&self) -> Vec<AggregateId> {
        let mut aggregates = Vec::new();
        for domain in self.inner.list_domains().await.unwrap() {
            for root in self
                .inner
                .list_roots(&domain, None, usize::MAX)
                .await
                .unwrap()
            {
                aggregates.push(AggregateId::new(domain.clone(), root).unwrap());
            }
        }
        aggregates
    }

    /// A correlation lookup with a broken comparison.
    async fn find_correlated(
        &self,
        id: &str,
        matches: impl Fn(&str) -> bool,
    ) -> Vec<AggregateEvents> {
        let mut groups = Vec::new();
        for aggregate in self.aggregates().await {
            let pages: Vec<EventPage> = self
                .inner
                .read(&aggregate, SequenceRange::ALL)
                .await
                .unwrap()
                .into_iter()
                .filter(|page| !id.is_empty() && matches(&page.correlation_id))
                .collect();
            if !pages.is_empty() {
                groups.push(AggregateEvents { aggregate, pages });
            }
        }
        groups
    }
}

/// SQL LIKE: `%` is any run of characters, `_` any one character.
fn like(pattern: &[char], text: &[char]) -> bool {
    match pattern.split_first() {
        None => text.is_empty(),
        Some(('%', rest)) => (0..=text.len()).any(|skip| like(rest, &text[skip..])),
        Some((p, rest)) => text
            .split_first()
            .is_some_and(|(t, text)| (*p == '_' || p == t) && like(rest, text)),
    }
}

#[async_trait]
impl EventStore for Mutant {
    fn capabilities(&self) -> StoreCapabilities {
        self.limits.clone()
    }

    async fn append(
        &self,
        aggregate: &AggregateId,
        mut append: Append,
    ) -> Result<u64, EventStoreError> {
        let key = self.key(aggregate);
        // The inner store has no limits: the mutant checks them, as a real store would.
        let mut limits = self.limits.clone();
        if self.has(Bug::BatchLimitOffByOne) {
            limits.max_batch_len = limits.max_batch_len.map(|max| max - 1);
        }
        if self.has(Bug::EventSizeMeasuredOnPayload)
            && let Some(max) = limits.max_event_bytes.take()
        {
            let payload_size =
                |page: &EventPage| page.payload.as_ref().map_or(0, |p| p.value.len());
            if let Some(page) = append.events.iter().find(|page| payload_size(page) > max) {
                return Err(EventStoreError::LimitExceeded {
                    limit: Limit::EventBytes,
                    max,
                    actual: payload_size(page),
                });
            }
        }
        validate_append(&append, &limits)?;
        if let Some(request) = append.request.as_mut() {
            request.id = self.request_key(&request.id);
        }
        let request = append.request.clone();
        for page in &mut append.events {
            if let Some(created_at) = page.created_at.as_mut() {
                if self.has(Bug::CreatedAtInMicroseconds) {
                    created_at.nanos -= created_at.nanos % 1_000;
                }
                if self.has(Bug::CreatedAtBefore1970Clamped) && created_at.seconds < 0 {
                    created_at.seconds = 0;
                }
            }
        }
        if self.has(Bug::KeepsFirstEventOnly) {
            append.events.truncate(1);
        }
        let actual = self.inner.next_sequence(&key).await?;
        if self.has(Bug::AcceptsFutureSequence)
            && append.expected_sequence > actual
            && !append.events.is_empty()
        {
            for (sequence, page) in (actual..).zip(&mut append.events) {
                page.sequence = sequence;
            }
            append.expected_sequence = actual;
        }
        if self.has(Bug::CheckThenWrite) {
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
        let outcome = self.inner.append(&key, append).await;
        if let (Ok(_), Some(request)) = (&outcome, request) {
            let mut last = self.last_digests.lock().unwrap();
            last.insert((key, request.id), request.digest);
        }
        match outcome {
            Err(EventStoreError::Conflict { expected, .. })
                if self.has(Bug::WrongActualInConflict) =>
            {
                Err(EventStoreError::Conflict {
                    expected,
                    actual: expected,
                })
            }
            other => other,
        }
    }

    async fn read(
        &self,
        aggregate: &AggregateId,
        mut range: SequenceRange,
    ) -> Result<Vec<EventPage>, EventStoreError> {
        if self.has(Bug::IgnoresRangeEnd) {
            range.to = None;
        }
        if self.has(Bug::ReadWrapsHugeSequences) && range.from > i64::MAX as u64 {
            range.from = 0;
        }
        self.inner.read(&self.key(aggregate), range).await
    }

    async fn next_sequence(&self, aggregate: &AggregateId) -> Result<u64, EventStoreError> {
        let next = self.inner.next_sequence(&self.key(aggregate)).await?;
        Ok(if self.has(Bug::NextSequenceIsLastSequence) {
            next.saturating_sub(1)
        } else {
            next
        })
    }

    async fn list_roots(
        &self,
        domain: &Domain,
        after: Option<Uuid>,
        limit: usize,
    ) -> Result<Vec<Uuid>, EventStoreError> {
        match self.bug {
            Bug::ListRootsIgnoresAfter => self.inner.list_roots(domain, None, limit).await,
            Bug::ListRootsOneTooMany => self.inner.list_roots(domain, after, limit + 1).await,
            _ => self.inner.list_roots(domain, after, limit).await,
        }
    }

    async fn list_domains(&self) -> Result<Vec<Domain>, EventStoreError> {
        let mut domains = self.inner.list_domains().await?;
        if self.has(Bug::ListDomainsCaseInsensitive) {
            domains.dedup_by(|b, a| a.as_str().eq_ignore_ascii_case(b.as_str()));
        }
        Ok(domains)
    }

    async fn find_by_correlation(
        &self,
        correlation_id: &str,
    ) -> Result<Vec<AggregateEvents>, EventStoreError> {
        let id = correlation_id;
        Ok(match self.bug {
            Bug::CorrelationMatchedWithLike => {
                let pattern: Vec<char> = id.chars().collect();
                self.find_correlated(id, |stored| {
                    like(&pattern, &stored.chars().collect::<Vec<_>>())
                })
                .await
            }
            Bug::CorrelationMatchedByPrefix => {
                self.find_correlated(id, |stored| stored.starts_with(id))
                    .await
            }
            Bug::CorrelationCaseInsensitive => {
                self.find_correlated(id, |stored| stored.to_lowercase() == id.to_lowercase())
                    .await
            }
            _ => self.inner.find_by_correlation(id).await?,
        })
    }

    async fn find_by_request(
        &self,
        aggregate: &AggregateId,
        request_id: &str,
    ) -> Result<Option<RequestRecord>, EventStoreError> {
        if self.reopened && self.has(Bug::LosesRequestIndexOnReopen) {
            return Ok(None);
        }
        let id = self.request_key(request_id);
        let mut found = self
            .inner
            .find_by_request(&self.key(aggregate), &id)
            .await?;
        if self.has(Bug::RequestIndexIgnoresDomain) && found.is_none() {
            for domain in self.inner.list_domains().await? {
                let other = AggregateId::new(domain, aggregate.root()).unwrap();
                found = self.inner.find_by_request(&other, &id).await?;
                if found.is_some() {
                    break;
                }
            }
        }
        if self.has(Bug::RequestDigestLost)
            && let Some(record) = found.as_mut()
        {
            record.digest = None;
        }
        if self.has(Bug::RequestDigestOfLastAppend)
            && let Some(record) = found.as_mut()
            && let Some(last) = self
                .last_digests
                .lock()
                .unwrap()
                .get(&(self.key(aggregate), id))
        {
            record.digest = Some(*last);
        }
        Ok(found)
    }
}

#[async_trait]
impl SnapshotStore for Mutant {
    async fn get(&self, aggregate: &AggregateId) -> Result<Option<Snapshot>, SnapshotStoreError> {
        if self.reopened && self.has(Bug::LosesSnapshotsOnReopen) {
            return Ok(None);
        }
        let snapshot = SnapshotStore::get(&self.inner, aggregate).await?;
        Ok(snapshot.map(|mut snapshot| {
            if self.has(Bug::UnsetSnapshotStateBecomesEmpty) && snapshot.state.is_none() {
                snapshot.state = Some(Any::default());
            }
            if self.has(Bug::SnapshotsTruncatedAt64KiB)
                && let Some(state) = snapshot.state.as_mut()
            {
                state.value.truncate(64 * 1024);
            }
            snapshot
        }))
    }

    async fn put(
        &self,
        aggregate: &AggregateId,
        snapshot: Snapshot,
    ) -> Result<(), SnapshotStoreError> {
        if self.has(Bug::KeepsFirstSnapshot)
            && SnapshotStore::get(&self.inner, aggregate).await?.is_some()
        {
            return Ok(());
        }
        if !self.has(Bug::SnapshotLimitIgnored) {
            self.limits.check_snapshot(&snapshot)?;
        }
        SnapshotStore::put(&self.inner, aggregate, snapshot).await
    }

    async fn delete(&self, aggregate: &AggregateId) -> Result<(), SnapshotStoreError> {
        if self.has(Bug::SnapshotDeleteIsNoop) {
            return Ok(());
        }
        SnapshotStore::delete(&self.inner, aggregate).await
    }
}

/// Mutant stores of one bug: with the limits above or none, and persistent (namespaces kept
/// in memory for the life of the harness) or not.
struct MutantHarness {
    bug: Bug,
    limited: bool,
    persistent: bool,
    namespaces: Mutex<HashMap<String, MemoryStore>>,
}

impl MutantHarness {
    fn new(bug: Bug) -> Self {
        use Bug::*;
        Self {
            bug,
            limited: matches!(
                bug,
                BatchLimitOffByOne | EventSizeMeasuredOnPayload | SnapshotLimitIgnored
            ),
            persistent: matches!(bug, LosesRequestIndexOnReopen | LosesSnapshotsOnReopen),
            namespaces: Mutex::default(),
        }
    }
}

#[async_trait]
impl Harness for MutantHarness {
    type Store = Mutant;

    async fn open(&self, namespace: &str) -> Mutant {
        let mut namespaces = self.namespaces.lock().unwrap();
        let existing = namespaces.get(namespace).filter(|_| self.persistent);
        let reopened = existing.is_some();
        let inner = existing.cloned().unwrap_or_default();
        namespaces.insert(namespace.to_owned(), inner.clone());
        Mutant {
            bug: self.bug,
            inner,
            limits: if self.limited {
                LIMITS
            } else {
                StoreCapabilities::UNLIMITED
            },
            reopened,
            last_digests: Mutex::default(),
        }
    }

    fn persistent(&self) -> bool {
        self.persistent
    }

    async fn cleanup(&self, namespace: &str) {
        self.namespaces.lock().unwrap().remove(namespace);
    }
}

/// Whether running `property` against a store with `bug` panics with `expected` in its message.
fn caught<F: AsyncFnOnce(&MutantHarness)>(bug: Bug, property: F, expected: &str) -> bool {
    let outcome = catch_unwind(AssertUnwindSafe(|| {
        angzarr_conformance::run(MutantHarness::new(bug), property)
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

/// Every mutant the state machine alone must catch, run after run.
const STATE_MACHINE_CATCHES: [Bug; 29] = [
    Bug::IgnoresRangeEnd,
    Bug::ReadWrapsHugeSequences,
    Bug::KeepsFirstEventOnly,
    Bug::CaseInsensitiveDomains,
    Bug::AcceptsFutureSequence,
    Bug::WrongActualInConflict,
    Bug::NextSequenceIsLastSequence,
    Bug::CreatedAtInMicroseconds,
    Bug::CreatedAtBefore1970Clamped,
    Bug::ListRootsIgnoresAfter,
    Bug::ListRootsOneTooMany,
    Bug::ListDomainsCaseInsensitive,
    Bug::CorrelationMatchedWithLike,
    Bug::CorrelationMatchedByPrefix,
    Bug::CorrelationCaseInsensitive,
    Bug::RequestIdsCaseInsensitive,
    Bug::RequestIdsTruncated,
    Bug::RequestIndexIgnoresDomain,
    Bug::RequestDigestLost,
    Bug::RequestDigestOfLastAppend,
    Bug::KeepsFirstSnapshot,
    Bug::SnapshotDeleteIsNoop,
    Bug::UnsetSnapshotStateBecomesEmpty,
    Bug::SnapshotsTruncatedAt64KiB,
    Bug::BatchLimitOffByOne,
    Bug::EventSizeMeasuredOnPayload,
    Bug::SnapshotLimitIgnored,
    Bug::LosesRequestIndexOnReopen,
    Bug::LosesSnapshotsOnReopen,
];

#[test]
fn the_state_machine_fails_every_mutant() {
    let passed: Vec<Bug> = STATE_MACHINE_CATCHES
        .into_iter()
        .filter(|bug| {
            let property = async |harness: &MutantHarness| properties::state_machine(harness).await;
            !caught(*bug, property, "disagrees with the model")
        })
        .collect();
    assert!(
        passed.is_empty(),
        "the suite passed stores with the bugs {passed:?}"
    );
}

#[test]
fn the_limit_properties_fail_stores_that_misjudge_their_limits() {
    let mutants = [
        (Bug::BatchLimitOffByOne, "append a large batch"),
        (
            Bug::EventSizeMeasuredOnPayload,
            "an event over the declared size",
        ),
    ];
    for (bug, reason) in mutants {
        let property = async |harness: &MutantHarness| {
            properties::large_batch(harness).await;
            properties::declared_limits(harness).await;
        };
        assert!(
            caught(bug, property, reason),
            "the limit properties passed a store with the bug {bug:?}"
        );
    }
}

#[test]
fn the_reopen_property_fails_stores_that_lose_data_on_reopen() {
    for bug in [Bug::LosesRequestIndexOnReopen, Bug::LosesSnapshotsOnReopen] {
        let property =
            async |harness: &MutantHarness| properties::reopen_keeps_everything(harness).await;
        assert!(
            caught(bug, property, "changed across a reopen"),
            "the reopen property passed a store with the bug {bug:?}"
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

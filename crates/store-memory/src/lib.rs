#![doc = include_str!("../README.md")]

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex, MutexGuard};

use angzarr_ports::{
    AggregateEvents, AggregateId, Append, Domain, EventPage, EventStore, EventStoreError,
    RequestKey, RequestRecord, SequenceRange, Snapshot, SnapshotStore, SnapshotStoreError,
    StoreCapabilities, Uuid, async_trait, validate_append,
};

#[derive(Debug, Default)]
struct Stream {
    pages: Vec<EventPage>,
    /// The request key of each page, parallel to `pages`.
    requests: Vec<Option<RequestKey>>,
}

#[derive(Debug, Default)]
struct State {
    streams: BTreeMap<AggregateId, Stream>,
    snapshots: BTreeMap<AggregateId, Snapshot>,
}

/// An event and snapshot store held in memory: fast, simple, and gone with the process.
///
/// Clones share their data: a clone is a second instance of the same store, as a second
/// connection is to a database.
#[derive(Debug, Default, Clone)]
pub struct MemoryStore {
    state: Arc<Mutex<State>>,
    capabilities: StoreCapabilities,
}

impl MemoryStore {
    /// An empty store without limits.
    pub fn new() -> Self {
        Self::default()
    }

    /// An empty store that enforces `capabilities`' limits, to model a store that has them.
    pub fn with_capabilities(capabilities: StoreCapabilities) -> Self {
        Self {
            state: Arc::default(),
            capabilities,
        }
    }

    fn state(&self) -> MutexGuard<'_, State> {
        // Every mutation below completes before it can panic, so a poisoned lock still guards
        // consistent data.
        self.state
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }
}

#[async_trait]
impl EventStore for MemoryStore {
    fn capabilities(&self) -> StoreCapabilities {
        self.capabilities.clone()
    }

    async fn append(
        &self,
        aggregate: &AggregateId,
        append: Append,
    ) -> Result<u64, EventStoreError> {
        // Yield once, as any store that does I/O would: without it an append runs to completion
        // in one poll, so racing appends never interleave and the suite's races prove nothing
        // here (nor for mutants built on this store).
        let mut yielded = false;
        std::future::poll_fn(|context| {
            if std::mem::replace(&mut yielded, true) {
                return std::task::Poll::Ready(());
            }
            context.waker().wake_by_ref();
            std::task::Poll::Pending
        })
        .await;
        validate_append(&append, &self.capabilities)?;
        let mut state = self.state();
        let stream = state.streams.entry(aggregate.clone()).or_default();
        let actual = stream.pages.len() as u64;
        if actual != append.expected_sequence {
            if stream.pages.is_empty() {
                state.streams.remove(aggregate);
            }
            return Err(EventStoreError::Conflict {
                expected: append.expected_sequence,
                actual,
            });
        }
        let added = append.events.len();
        stream.pages.extend(append.events);
        stream
            .requests
            .extend(std::iter::repeat_n(append.request, added));
        Ok(stream.pages.len() as u64)
    }

    async fn read(
        &self,
        aggregate: &AggregateId,
        range: SequenceRange,
    ) -> Result<Vec<EventPage>, EventStoreError> {
        let state = self.state();
        let Some(stream) = state.streams.get(aggregate) else {
            return Ok(Vec::new());
        };
        let len = stream.pages.len() as u64;
        let end = range.to.map_or(len, |to| to.min(len));
        if range.from >= end {
            return Ok(Vec::new());
        }
        // Sequences are positions, so the range indexes the vector directly.
        Ok(stream.pages[range.from as usize..end as usize].to_vec())
    }

    async fn next_sequence(&self, aggregate: &AggregateId) -> Result<u64, EventStoreError> {
        Ok(self
            .state()
            .streams
            .get(aggregate)
            .map_or(0, |stream| stream.pages.len() as u64))
    }

    async fn list_roots(
        &self,
        domain: &Domain,
        after: Option<Uuid>,
        limit: usize,
    ) -> Result<Vec<Uuid>, EventStoreError> {
        let state = self.state();
        let roots = state
            .streams
            .keys()
            .filter(|id| id.domain() == domain && after.is_none_or(|after| id.root() > after))
            .map(AggregateId::root);
        // Keys are ordered by domain, then root, so the roots come out ascending.
        Ok(roots.take(limit).collect())
    }

    async fn list_domains(&self) -> Result<Vec<Domain>, EventStoreError> {
        let mut domains: Vec<Domain> = self
            .state()
            .streams
            .keys()
            .map(|id| id.domain().clone())
            .collect();
        domains.dedup();
        Ok(domains)
    }

    async fn find_by_correlation(
        &self,
        correlation_id: &str,
    ) -> Result<Vec<AggregateEvents>, EventStoreError> {
        if correlation_id.is_empty() {
            return Ok(Vec::new());
        }
        let state = self.state();
        let groups = state.streams.iter().filter_map(|(aggregate, stream)| {
            let pages: Vec<EventPage> = stream
                .pages
                .iter()
                .filter(|page| page.correlation_id == correlation_id)
                .cloned()
                .collect();
            (!pages.is_empty()).then(|| AggregateEvents {
                aggregate: aggregate.clone(),
                pages,
            })
        });
        Ok(groups.collect())
    }

    async fn find_by_request(
        &self,
        aggregate: &AggregateId,
        request_id: &str,
    ) -> Result<Option<RequestRecord>, EventStoreError> {
        let state = self.state();
        let Some(stream) = state.streams.get(aggregate) else {
            return Ok(None);
        };
        let mut matching =
            stream
                .pages
                .iter()
                .zip(&stream.requests)
                .filter_map(|(page, request)| {
                    let request = request.as_ref().filter(|key| key.id == request_id)?;
                    Some((page, request))
                });
        let Some((first, key)) = matching.next() else {
            return Ok(None);
        };
        let mut pages = vec![first.clone()];
        pages.extend(matching.map(|(page, _)| page.clone()));
        Ok(Some(RequestRecord {
            digest: Some(key.digest),
            pages,
        }))
    }
}

#[async_trait]
impl SnapshotStore for MemoryStore {
    async fn get(&self, aggregate: &AggregateId) -> Result<Option<Snapshot>, SnapshotStoreError> {
        Ok(self.state().snapshots.get(aggregate).cloned())
    }

    async fn put(
        &self,
        aggregate: &AggregateId,
        snapshot: Snapshot,
    ) -> Result<(), SnapshotStoreError> {
        self.capabilities.check_snapshot(&snapshot)?;
        self.state().snapshots.insert(aggregate.clone(), snapshot);
        Ok(())
    }

    async fn delete(&self, aggregate: &AggregateId) -> Result<(), SnapshotStoreError> {
        self.state().snapshots.remove(aggregate);
        Ok(())
    }
}

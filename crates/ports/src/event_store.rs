//! The event store port: per-aggregate streams of events with optimistic concurrency.

use std::ops::{Range, RangeFrom, RangeFull};

use angzarr_proto::v1::EventPage;
use async_trait::async_trait;
use uuid::Uuid;

use crate::{AggregateId, BoxError, Domain, IdError, Limit};

/// What a store guarantees beyond the contract, and the limits it imposes.
///
/// The core rejects a command that would exceed a limit before running anything, and the
/// conformance suite checks each store against the limits it declares here instead of forking
/// tests per store.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct StoreCapabilities {
    /// The most events one [`EventStore::append`] may carry; `None` for no limit.
    pub max_batch_len: Option<usize>,
    /// The largest encoded [`EventPage`] the store accepts, in bytes; `None` for no limit.
    pub max_event_bytes: Option<usize>,
    /// The most bytes of encoded events one [`EventStore::append`] may carry in all; `None`
    /// for no limit.
    pub max_batch_bytes: Option<usize>,
    /// The largest encoded [`Snapshot`](angzarr_proto::v1::Snapshot) the store keeps, in
    /// bytes; `None` for no limit. A larger one is refused with
    /// [`SnapshotStoreError::LimitExceeded`](crate::SnapshotStoreError::LimitExceeded).
    pub max_snapshot_bytes: Option<usize>,
    /// Appends to different aggregates have one total order that readers observe.
    pub global_order: bool,
}

impl StoreCapabilities {
    /// No limits and no global order.
    pub const UNLIMITED: Self = Self {
        max_batch_len: None,
        max_event_bytes: None,
        max_batch_bytes: None,
        max_snapshot_bytes: None,
        global_order: false,
    };

    /// Sets [`Self::max_batch_len`].
    pub const fn with_max_batch_len(mut self, len: usize) -> Self {
        self.max_batch_len = Some(len);
        self
    }

    /// Sets [`Self::max_event_bytes`].
    pub const fn with_max_event_bytes(mut self, bytes: usize) -> Self {
        self.max_event_bytes = Some(bytes);
        self
    }

    /// Sets [`Self::max_batch_bytes`].
    pub const fn with_max_batch_bytes(mut self, bytes: usize) -> Self {
        self.max_batch_bytes = Some(bytes);
        self
    }

    /// Sets [`Self::max_snapshot_bytes`].
    pub const fn with_max_snapshot_bytes(mut self, bytes: usize) -> Self {
        self.max_snapshot_bytes = Some(bytes);
        self
    }

    /// Checks a snapshot against [`Self::max_snapshot_bytes`], as every store's `put` must.
    pub fn check_snapshot(
        &self,
        snapshot: &angzarr_proto::v1::Snapshot,
    ) -> Result<(), crate::SnapshotStoreError> {
        let actual = prost::Message::encoded_len(snapshot);
        match self.max_snapshot_bytes {
            Some(max) if actual > max => {
                Err(crate::SnapshotStoreError::LimitExceeded { max, actual })
            }
            _ => Ok(()),
        }
    }

    /// Sets [`Self::global_order`].
    pub const fn with_global_order(mut self, global_order: bool) -> Self {
        self.global_order = global_order;
        self
    }

    /// Checks a batch against these limits, as every store's `append` must.
    pub fn check_batch(&self, events: &[EventPage]) -> Result<(), EventStoreError> {
        if let Some(max) = self.max_batch_len.filter(|max| events.len() > *max) {
            return Err(EventStoreError::LimitExceeded {
                limit: Limit::BatchLen,
                max,
                actual: events.len(),
            });
        }
        if self.max_event_bytes.is_none() && self.max_batch_bytes.is_none() {
            return Ok(());
        }
        // One pass over the encoded sizes, for both byte limits.
        let mut total = 0usize;
        for actual in events.iter().map(prost::Message::encoded_len) {
            if let Some(max) = self.max_event_bytes.filter(|max| actual > *max) {
                return Err(EventStoreError::LimitExceeded {
                    limit: Limit::EventBytes,
                    max,
                    actual,
                });
            }
            total = total.saturating_add(actual);
        }
        if let Some(max) = self.max_batch_bytes.filter(|max| total > *max) {
            return Err(EventStoreError::LimitExceeded {
                limit: Limit::BatchBytes,
                max,
                actual: total,
            });
        }
        Ok(())
    }
}

impl Default for StoreCapabilities {
    fn default() -> Self {
        Self::UNLIMITED
    }
}

/// A half-open range of sequences, `from..to`; `to: None` runs to the end of the stream.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct SequenceRange {
    /// The first sequence included.
    pub from: u64,
    /// The first sequence excluded; `None` for no end.
    pub to: Option<u64>,
}

impl SequenceRange {
    /// Every event.
    pub const ALL: Self = Self { from: 0, to: None };

    /// Whether `sequence` lies in the range.
    pub fn contains(&self, sequence: u64) -> bool {
        sequence >= self.from && self.to.is_none_or(|to| sequence < to)
    }
}

impl From<RangeFull> for SequenceRange {
    fn from(_: RangeFull) -> Self {
        Self::ALL
    }
}

impl From<RangeFrom<u64>> for SequenceRange {
    fn from(range: RangeFrom<u64>) -> Self {
        Self {
            from: range.start,
            to: None,
        }
    }
}

impl From<Range<u64>> for SequenceRange {
    fn from(range: Range<u64>) -> Self {
        Self {
            from: range.start,
            to: Some(range.end),
        }
    }
}

/// One atomic append to one aggregate.
#[derive(Debug, Clone, PartialEq)]
pub struct Append {
    /// The aggregate's next sequence as the writer saw it: the append succeeds only if the
    /// stream still ends there.
    pub expected_sequence: u64,
    /// The events, with sequences `expected_sequence, expected_sequence + 1, ...`. At least one.
    pub events: Vec<EventPage>,
    /// The idempotency key of the command that produced the events, and what that command
    /// was, stored with them so that [`EventStore::find_by_request`] finds them.
    pub request: Option<RequestKey>,
}

impl Append {
    /// An append of `events` at `expected_sequence`, without a request key.
    pub fn new(expected_sequence: u64, events: Vec<EventPage>) -> Self {
        Self {
            expected_sequence,
            events,
            request: None,
        }
    }

    /// Sets [`Self::request`].
    pub fn with_request(mut self, request: RequestKey) -> Self {
        self.request = Some(request);
        self
    }
}

/// A digest of a command (SHA-256 in the core), stored with its request id so that the same id
/// reused for a different command can be refused. Opaque to stores: they keep its bytes.
pub type CommandDigest = [u8; 32];

/// The request id of an append and the digest of the command it came from.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct RequestKey {
    /// The idempotency key, unique per aggregate: an arbitrary string of up to 256 bytes (any
    /// character, including separators and non-ASCII), so stores that put it in a key escape
    /// or hash it.
    pub id: String,
    /// What the command was.
    pub digest: CommandDigest,
}

impl RequestKey {
    /// A request key.
    pub fn new(id: impl Into<String>, digest: CommandDigest) -> Self {
        Self {
            id: id.into(),
            digest,
        }
    }
}

/// What a store holds for one request id of one aggregate: see [`EventStore::find_by_request`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RequestRecord {
    /// The digest stored with the events; `None` for events a store wrote before it kept
    /// digests (the caller then cannot tell which command they came from).
    pub digest: Option<CommandDigest>,
    /// The events appended with the request id, ascending; never empty.
    pub pages: Vec<EventPage>,
}

/// Events of one aggregate, in ascending sequence order.
#[derive(Debug, Clone, PartialEq)]
pub struct AggregateEvents {
    /// The aggregate.
    pub aggregate: AggregateId,
    /// Its events.
    pub pages: Vec<EventPage>,
}

/// Why an event store operation failed.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum EventStoreError {
    /// The stream did not end where the writer expected: another writer got there first.
    #[error("sequence conflict: expected next sequence {expected}, the stream is at {actual}")]
    Conflict {
        /// The `expected_sequence` of the append.
        expected: u64,
        /// The aggregate's actual next sequence.
        actual: u64,
    },
    /// The request is malformed (empty batch, wrong sequences, bad identity...).
    #[error("invalid argument: {0}")]
    InvalidArgument(String),
    /// The request exceeds one of the store's [`StoreCapabilities`] limits.
    #[error("{limit} {actual} exceeds the store's limit of {max}")]
    LimitExceeded {
        /// Which limit.
        limit: Limit,
        /// The limit.
        max: usize,
        /// What the request had.
        actual: usize,
    },
    /// The store cannot be reached or refused service for now; retrying later may succeed.
    /// Nothing of the failed operation is visible: a store that cannot tell whether a write
    /// was applied (an acknowledgement lost on the network) must not report it this way.
    #[error("event store unavailable: {0}")]
    Unavailable(#[source] BoxError),
    /// The store cannot tell whether the append was applied: the request may have reached the
    /// backend and the acknowledgement been lost (a connection cut after the request was sent,
    /// a timeout, a failover). Only [`EventStore::append`] returns it. The caller resolves it
    /// by reading the stream back at the expected sequence (the core does).
    #[error("the outcome of the append is unknown: {0}")]
    OutcomeUnknown(#[source] BoxError),
    /// Stored data could not be decoded.
    #[error("stored event data is corrupt: {0}")]
    Corrupt(String),
    /// Any other failure of the backend.
    #[error("event store failure: {0}")]
    Internal(#[source] BoxError),
}

impl From<IdError> for EventStoreError {
    fn from(error: IdError) -> Self {
        Self::InvalidArgument(error.to_string())
    }
}

/// Per-aggregate event streams with optimistic concurrency.
///
/// # Contract
/// - A stream is keyed by [`AggregateId`]; its events have sequences `0, 1, 2, ...` with no
///   gap and no duplicate, forever: events are never changed or removed.
/// - An unknown aggregate is an empty stream: reads return nothing and
///   [`next_sequence`](Self::next_sequence) returns 0. That is not an error.
/// - Each [`append`](Self::append) is atomic: after it returns, and after any crash, either
///   all of its events are visible to every reader or none is.
/// - Stores promise nothing across aggregates (no multi-aggregate transaction, no global
///   order) unless [`StoreCapabilities::global_order`] says so.
/// - Implementations are cheap to share (`Arc<dyn EventStore>`) and never block the async
///   runtime: blocking clients run on `spawn_blocking` or a thread of their own.
#[async_trait]
pub trait EventStore: Send + Sync + 'static {
    /// The store's guarantees and limits. Constant for the life of the store.
    fn capabilities(&self) -> StoreCapabilities;

    /// Appends `append.events` to the end of `aggregate`'s stream, atomically.
    ///
    /// Succeeds only if the stream's next sequence is `append.expected_sequence`; otherwise
    /// fails with [`EventStoreError::Conflict`] and writes nothing. Of several writers racing
    /// with the same expected sequence, exactly one wins. An empty batch, or events whose
    /// sequences do not run `expected_sequence, expected_sequence + 1, ...`, fail with
    /// [`EventStoreError::InvalidArgument`]; a batch over the store's limits with
    /// [`EventStoreError::LimitExceeded`]. Events are stored exactly as given (the caller sets
    /// `created_at` and `correlation_id`). Returns the stream's new next sequence.
    async fn append(&self, aggregate: &AggregateId, append: Append)
    -> Result<u64, EventStoreError>;

    /// The events of `aggregate` whose sequence lies in `range`, ascending. An empty or
    /// inverted range, or an unknown aggregate, gives an empty vector.
    async fn read(
        &self,
        aggregate: &AggregateId,
        range: SequenceRange,
    ) -> Result<Vec<EventPage>, EventStoreError>;

    /// The sequence the next event of `aggregate` will get: the number of events it has.
    async fn next_sequence(&self, aggregate: &AggregateId) -> Result<u64, EventStoreError>;

    /// Up to `limit` roots of `domain` that have at least one event, in ascending UUID order,
    /// starting strictly after `after`. An empty page means there are no more.
    async fn list_roots(
        &self,
        domain: &Domain,
        after: Option<Uuid>,
        limit: usize,
    ) -> Result<Vec<Uuid>, EventStoreError>;

    /// Every domain that has at least one event, in ascending order.
    async fn list_domains(&self) -> Result<Vec<Domain>, EventStoreError>;

    /// Every event whose `correlation_id` is `correlation_id`, grouped by aggregate (ascending
    /// by domain, then root), each group ascending by sequence. Nothing matches an empty id.
    async fn find_by_correlation(
        &self,
        correlation_id: &str,
    ) -> Result<Vec<AggregateEvents>, EventStoreError>;

    /// The events of `aggregate` appended with the request id `request_id` (all of them,
    /// ascending, should several appends have carried it) and the digest stored by the first
    /// of those appends; `None` if no event has that id. The empty
    /// id is an id like any other. The core calls it to make a repeated command return its
    /// first outcome, and to refuse the id reused for another command.
    async fn find_by_request(
        &self,
        aggregate: &AggregateId,
        request_id: &str,
    ) -> Result<Option<RequestRecord>, EventStoreError>;
}

/// Checks what every [`EventStore::append`] must refuse, whatever the backend: an empty
/// batch, sequences that do not run from `expected_sequence`, and the store's limits.
pub fn validate_append(
    append: &Append,
    capabilities: &StoreCapabilities,
) -> Result<(), EventStoreError> {
    if append.events.is_empty() {
        return Err(EventStoreError::InvalidArgument(
            "an append needs at least one event".into(),
        ));
    }
    for (offset, page) in (0u64..).zip(&append.events) {
        let wanted = append.expected_sequence.checked_add(offset);
        if wanted != Some(page.sequence) {
            return Err(EventStoreError::InvalidArgument(format!(
                "event {offset} of the batch has sequence {}, expected {}",
                page.sequence,
                append.expected_sequence.saturating_add(offset)
            )));
        }
    }
    capabilities.check_batch(&append.events)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn events(sizes: &[usize]) -> Vec<EventPage> {
        // Sequences from 1, so that every page encodes to the same size for the same payload.
        (1u64..)
            .zip(sizes)
            .map(|(sequence, size)| EventPage {
                sequence,
                payload: Some(angzarr_proto::prost_types::Any {
                    type_url: String::new(),
                    value: vec![0; *size],
                }),
                ..EventPage::default()
            })
            .collect()
    }

    #[test]
    fn a_batch_is_checked_against_each_declared_limit() {
        let batch = events(&[100, 100, 100]);
        let each = prost::Message::encoded_len(&batch[0]);
        let exceeded = |capabilities: StoreCapabilities| match capabilities.check_batch(&batch) {
            Err(EventStoreError::LimitExceeded { limit, max, actual }) => {
                Some((limit, max, actual))
            }
            Ok(()) => None,
            Err(other) => panic!("{other:?}"),
        };
        let limits = StoreCapabilities::UNLIMITED;
        assert_eq!(exceeded(limits.clone()), None);
        assert_eq!(exceeded(limits.clone().with_max_batch_len(3)), None);
        assert_eq!(
            exceeded(limits.clone().with_max_batch_len(2)),
            Some((Limit::BatchLen, 2, 3))
        );
        assert_eq!(exceeded(limits.clone().with_max_event_bytes(each)), None);
        assert_eq!(
            exceeded(limits.clone().with_max_event_bytes(each - 1)),
            Some((Limit::EventBytes, each - 1, each))
        );
        assert_eq!(
            exceeded(limits.clone().with_max_batch_bytes(3 * each)),
            None
        );
        assert_eq!(
            exceeded(limits.with_max_batch_bytes(3 * each - 1)),
            Some((Limit::BatchBytes, 3 * each - 1, 3 * each))
        );
    }
}

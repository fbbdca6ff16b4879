//! Conveniences over the ports, kept out of the traits so that the traits stay small.

use angzarr_proto::v1::EventPage;
use async_trait::async_trait;

use crate::{AggregateId, EventStore, EventStoreError, SequenceRange};

/// Shorthands for [`EventStore`] reads.
#[async_trait]
pub trait EventStoreExt: EventStore {
    /// Every event of `aggregate`.
    async fn read_all(&self, aggregate: &AggregateId) -> Result<Vec<EventPage>, EventStoreError> {
        self.read(aggregate, SequenceRange::ALL).await
    }

    /// The events of `aggregate` from `from` on.
    async fn read_from(
        &self,
        aggregate: &AggregateId,
        from: u64,
    ) -> Result<Vec<EventPage>, EventStoreError> {
        self.read(aggregate, (from..).into()).await
    }
}

impl<S: EventStore + ?Sized> EventStoreExt for S {}

//! The snapshot store port: the latest folded state of each aggregate.

use angzarr_proto::v1::Snapshot;
use async_trait::async_trait;

use crate::{AggregateId, BoxError, IdError};

/// Why a snapshot store operation failed.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum SnapshotStoreError {
    /// The request is malformed.
    #[error("invalid argument: {0}")]
    InvalidArgument(String),
    /// The encoded snapshot is larger than the store's
    /// [`max_snapshot_bytes`](crate::StoreCapabilities::max_snapshot_bytes); nothing was stored.
    #[error("a snapshot of {actual} bytes exceeds the store's limit of {max}")]
    LimitExceeded {
        /// The limit.
        max: usize,
        /// The encoded snapshot's size.
        actual: usize,
    },
    /// The store cannot be reached or refused service for now; retrying later may succeed.
    #[error("snapshot store unavailable: {0}")]
    Unavailable(#[source] BoxError),
    /// A stored snapshot could not be decoded.
    #[error("stored snapshot is corrupt: {0}")]
    Corrupt(String),
    /// Any other failure of the backend.
    #[error("snapshot store failure: {0}")]
    Internal(#[source] BoxError),
}

impl From<IdError> for SnapshotStoreError {
    fn from(error: IdError) -> Self {
        Self::InvalidArgument(error.to_string())
    }
}

/// The latest snapshot of each aggregate.
///
/// # Contract
/// - A snapshot is a cache of folded events: losing one costs a longer replay, never data. The
///   core therefore treats a failing snapshot store as "no snapshot" and carries on.
/// - One snapshot per aggregate; each operation on it is atomic.
/// - Never blocks the async runtime.
#[async_trait]
pub trait SnapshotStore: Send + Sync + 'static {
    /// The stored snapshot of `aggregate`, exactly as put; `None` if there is none.
    async fn get(&self, aggregate: &AggregateId) -> Result<Option<Snapshot>, SnapshotStoreError>;

    /// Stores `snapshot` as `aggregate`'s snapshot, replacing any previous one. A snapshot
    /// without `state`, or with any sequence (even one the stream has not reached), is stored
    /// as given: judging it is the core's business. One over the store's
    /// [`max_snapshot_bytes`](crate::StoreCapabilities::max_snapshot_bytes) fails with
    /// [`SnapshotStoreError::LimitExceeded`] and leaves the previous snapshot in place.
    async fn put(
        &self,
        aggregate: &AggregateId,
        snapshot: Snapshot,
    ) -> Result<(), SnapshotStoreError>;

    /// Removes `aggregate`'s snapshot. Removing a snapshot that does not exist succeeds.
    async fn delete(&self, aggregate: &AggregateId) -> Result<(), SnapshotStoreError>;
}

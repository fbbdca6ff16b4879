#![doc = include_str!("../README.md")]

mod client_logic;
mod event_store;
mod ext;
mod ids;
mod snapshot_store;

pub use client_logic::{ClientLogic, ClientLogicError};
pub use event_store::{
    AggregateEvents, Append, CommandDigest, EventStore, EventStoreError, RequestKey, RequestRecord,
    SequenceRange, StoreCapabilities, validate_append,
};
pub use ext::EventStoreExt;
pub use ids::{AggregateId, Domain, IdError, is_key_char, is_key_name};
pub use snapshot_store::{SnapshotStore, SnapshotStoreError};

pub use angzarr_proto::decode_event_page;
pub use angzarr_proto::v1::{BusinessReply, ContextualCommand, EventPage, Snapshot};
pub use async_trait::async_trait;
pub use uuid::Uuid;

/// The source of an `Unavailable` or `Internal` error: the backend's own error.
pub type BoxError = Box<dyn std::error::Error + Send + Sync + 'static>;

/// A limit a store declares in its [`StoreCapabilities`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum Limit {
    /// Events in one append.
    BatchLen,
    /// Bytes of one encoded event.
    EventBytes,
    /// Bytes of one encoded snapshot.
    SnapshotBytes,
    /// Bytes of all the encoded events of one append.
    BatchBytes,
}

impl std::fmt::Display for Limit {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Self::BatchLen => "batch length",
            Self::EventBytes => "event size in bytes",
            Self::SnapshotBytes => "snapshot size in bytes",
            Self::BatchBytes => "batch size in bytes",
        })
    }
}

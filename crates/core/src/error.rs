use angzarr_ports::{ClientLogicError, EventStoreError, IdError, Limit, SnapshotStoreError};

/// Why a command did not produce its events. Every variant means nothing was written.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum CommandError {
    /// The command is malformed: no cover, a bad domain or root, no command pages, a page
    /// without payload. Fix the command.
    #[error("invalid command: {0}")]
    InvalidCommand(String),
    /// No client logic is registered for the command's domain.
    #[error("unknown domain {0:?}: no client logic is registered for it")]
    UnknownDomain(String),
    /// The client logic refused the command; the reason is the logic's own words.
    #[error("command rejected: {0}")]
    Rejected(String),
    /// The aggregate was not at the expected sequence: the command's `expected_sequence` was
    /// stale, or other writers kept winning until the retries ran out. Reload and retry.
    #[error("sequence conflict: expected next sequence {expected}, the aggregate is at {actual}")]
    Conflict {
        /// The sequence the command (or the last attempt) expected.
        expected: u64,
        /// The aggregate's actual next sequence.
        actual: u64,
    },
    /// The command's `request_id` already produced events for a different command. The first
    /// command's outcome stands; send this one with a request id of its own.
    #[error(
        "request_id {request_id:?} was already used for a different command on this aggregate; \
         use a new request_id for a new command"
    )]
    RequestIdReused {
        /// The reused id.
        request_id: String,
    },
    /// The client logic returned events the framework will not store (wrong sequences,
    /// missing payloads): a bug in the logic.
    #[error("client logic returned invalid events: {0}")]
    InvalidEvents(String),
    /// The command, or the events it caused, exceed a limit of the gateway or the store.
    #[error("{limit} {actual} exceeds the limit of {max}")]
    LimitExceeded {
        /// Which limit.
        limit: Limit,
        /// The limit.
        max: usize,
        /// What the command had.
        actual: usize,
    },
    /// The client logic failed or could not be reached.
    #[error(transparent)]
    Logic(#[from] ClientLogicError),
    /// The event store failed.
    #[error(transparent)]
    Store(EventStoreError),
    /// The store lost the acknowledgement of the append and could not be read back to tell
    /// whether it was applied: the command may or may not have taken effect.
    #[error(
        "the outcome of the command is unknown (the store lost the acknowledgement of its append and could not be read back: {source}); {}",
        if *idempotent {
            "resending it with the same request_id is safe"
        } else {
            "it had no request_id, so resending it may apply it twice"
        }
    )]
    OutcomeUnknown {
        /// Whether the command had a `request_id`, which makes resending it safe.
        idempotent: bool,
        /// The store's last error.
        #[source]
        source: angzarr_ports::BoxError,
    },
    /// The aggregate's snapshot is ahead of its events and could not be deleted: deciding on
    /// it could be wrong, so nothing is decided until the snapshot store lets it go.
    #[error("the aggregate's snapshot is ahead of its events and could not be deleted: {0}")]
    SnapshotAhead(#[source] SnapshotStoreError),
}

impl From<IdError> for CommandError {
    fn from(error: IdError) -> Self {
        Self::InvalidCommand(error.to_string())
    }
}

impl From<EventStoreError> for CommandError {
    fn from(error: EventStoreError) -> Self {
        match error {
            EventStoreError::Conflict { expected, actual } => Self::Conflict { expected, actual },
            EventStoreError::LimitExceeded { limit, max, actual } => {
                Self::LimitExceeded { limit, max, actual }
            }
            other => Self::Store(other),
        }
    }
}

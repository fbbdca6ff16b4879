use angzarr_ports::{ClientLogicError, EventStoreError, IdError, Limit};

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

//! What "the same answer" means when a store is compared with the model.

use std::fmt::Debug;

use angzarr_ports::{EventStoreError, Limit, SnapshotStoreError};

/// An error, reduced to what the contract specifies about it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Kind {
    Conflict {
        expected: u64,
        actual: u64,
    },
    InvalidArgument,
    LimitExceeded {
        limit: Limit,
        max: usize,
        actual: usize,
    },
    /// Unspecified failures (unavailable, corrupt, internal): never right in the suite.
    Failure(String),
}

pub(crate) trait ErrorKind {
    fn kind(&self) -> Kind;
}

impl ErrorKind for EventStoreError {
    fn kind(&self) -> Kind {
        match self {
            Self::Conflict { expected, actual } => Kind::Conflict {
                expected: *expected,
                actual: *actual,
            },
            Self::InvalidArgument(_) => Kind::InvalidArgument,
            Self::LimitExceeded { limit, max, actual } => Kind::LimitExceeded {
                limit: *limit,
                max: *max,
                actual: *actual,
            },
            other => Kind::Failure(other.to_string()),
        }
    }
}

impl ErrorKind for SnapshotStoreError {
    fn kind(&self) -> Kind {
        match self {
            Self::InvalidArgument(_) => Kind::InvalidArgument,
            Self::LimitExceeded { max, actual } => Kind::LimitExceeded {
                limit: Limit::SnapshotBytes,
                max: *max,
                actual: *actual,
            },
            other => Kind::Failure(other.to_string()),
        }
    }
}

/// Reduces a result to what the contract specifies.
pub(crate) fn outcome<T, E: ErrorKind>(result: Result<T, E>) -> Result<T, Kind> {
    result.map_err(|error| error.kind())
}

/// Fails with a readable message unless the store answered as the model did.
pub(crate) fn same<T: PartialEq + Debug, E: ErrorKind, F: ErrorKind>(
    what: impl Debug,
    model: Result<T, E>,
    store: Result<T, F>,
) -> Result<(), String> {
    let (model, store) = (outcome(model), outcome(store));
    if model == store {
        Ok(())
    } else {
        Err(format!(
            "{what:?}:\n  model answered {model:?}\n  store answered {store:?}"
        ))
    }
}

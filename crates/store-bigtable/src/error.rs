//! Bigtable's errors, sorted into what the ports' callers can do about them.
//!
//! What matters most is whether a failed append may have been applied. An append is one
//! `CheckAndMutateRow`, which is not idempotent and is sent exactly once (neither
//! `bigtable_rs` nor tonic retries a request). A gRPC status the service answered with is the
//! service's answer to that one request: a refusal (`INVALID_ARGUMENT`, `NOT_FOUND`,
//! `PERMISSION_DENIED`, `RESOURCE_EXHAUSTED`...) applied nothing. A status made on the client
//! side from a broken connection, a timeout or a cancelled request (`UNAVAILABLE`,
//! `DEADLINE_EXCEEDED`, `CANCELLED`, `UNKNOWN`, `INTERNAL`, `ABORTED`) may follow a request
//! that reached the service: the outcome is unknown, except when the connection was refused,
//! which means nothing was sent.

use std::error::Error as _;
use std::fmt;
use std::time::Duration;

use angzarr_ports::{BoxError, EventStoreError, SnapshotStoreError};
use tonic::{Code, Status};

/// Why a [`BigtableStore`](crate::BigtableStore) could not be opened.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum OpenError {
    /// The configuration cannot work.
    #[error("invalid Bigtable store configuration: {0}")]
    InvalidConfig(String),
    /// No usable Google credentials were found in the standard chain (Application Default
    /// Credentials), or they were refused.
    #[error(
        "no usable Google credentials (Application Default Credentials: set \
         GOOGLE_APPLICATION_CREDENTIALS, run `gcloud auth application-default login`, or run \
         on Google Cloud): {0}"
    )]
    Credentials(#[source] BoxError),
    /// The service could not be reached in time.
    #[error("cannot reach Bigtable at {endpoint} within {timeout:?}: {reason}")]
    Connect {
        /// Where the store tried to connect.
        endpoint: String,
        /// The connect timeout.
        timeout: Duration,
        /// What happened.
        reason: String,
    },
    /// The table does not exist (and `create_if_missing` is off), or its instance does not.
    #[error("Bigtable table {0} not found (set create_if_missing to create it)")]
    TableNotFound(String),
    /// The service refused a request made at open: missing permissions, a table without the
    /// store's column families...
    #[error("Bigtable refused the store at open: {0}")]
    Refused(#[source] Status),
}

/// How a request to Bigtable failed.
#[derive(Debug)]
pub(crate) enum CallError {
    /// The request got a gRPC status (from the service, or made by the client).
    Status(Status),
    /// The request did not complete within the operation timeout.
    Timeout(Duration),
    /// The client could not make the request (no token, bad metadata): nothing was sent.
    NotSent(BoxError),
    /// A reply the store cannot read (a malformed `ReadRows` stream).
    Reply(String),
    /// The client failed after the request may have left (an I/O or transport error, its own
    /// timeout): an append's outcome is unknown.
    Lost(BoxError),
}

impl fmt::Display for CallError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Status(status) => write!(f, "{}: {}", status.code(), status.message()),
            Self::Timeout(timeout) => write!(f, "no reply within {timeout:?}"),
            Self::NotSent(error) => write!(f, "the request could not be made: {error}"),
            Self::Reply(message) => write!(f, "unreadable reply: {message}"),
            Self::Lost(error) => write!(f, "the request failed in flight: {error}"),
        }
    }
}

impl std::error::Error for CallError {}

impl From<bigtable_rs::bigtable::Error> for CallError {
    fn from(error: bigtable_rs::bigtable::Error) -> Self {
        use bigtable_rs::bigtable::Error;
        match error {
            Error::RpcError(status) => Self::Status(status),
            Error::ChunkError(message) => Self::Reply(message),
            // Raised before anything is sent: no token, no certificate, a bad header.
            error @ (Error::AccessTokenError(_)
            | Error::CertificateError(_)
            | Error::GCPAuthError(_)
            | Error::MetadataError(_)
            | Error::InvalidArgument(_)) => Self::NotSent(Box::new(error)),
            // Anything else may come after the request left: never "nothing was written".
            other => Self::Lost(Box::new(other)),
        }
    }
}

impl CallError {
    /// Whether the status says that the connection could not be made: nothing was sent.
    fn connection_refused(status: &Status) -> bool {
        let mut source = status.source();
        while let Some(error) = source {
            if let Some(io) = error.downcast_ref::<std::io::Error>()
                && io.kind() == std::io::ErrorKind::ConnectionRefused
            {
                return true;
            }
            source = error.source();
        }
        false
    }

    /// Whether a retry of a read may succeed.
    pub(crate) fn transient(&self) -> bool {
        match self {
            Self::Status(status) => matches!(
                status.code(),
                Code::Unavailable | Code::Unknown | Code::Aborted | Code::Internal
            ),
            Self::Timeout(_) | Self::NotSent(_) | Self::Reply(_) | Self::Lost(_) => false,
        }
    }
}

/// What kind of request failed, which decides what a lost reply means.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Op {
    /// The `CheckAndMutateRow` of an append: without a definite answer, its outcome is unknown.
    Append,
    /// A read, or a write whose repetition is harmless (an intent, a snapshot).
    Other,
}

/// A failure of the backend or of stored data, before it becomes one port's error.
#[derive(Debug)]
pub(crate) enum Failure {
    /// Not reachable, or refused service: retrying later may succeed; nothing was written.
    Unavailable(BoxError),
    /// The append may or may not have been applied.
    Unknown(BoxError),
    /// The stream did not end where the append expected.
    Conflict {
        /// The append's expected sequence.
        expected: u64,
        /// The stream's next sequence.
        actual: u64,
    },
    /// Stored data cannot be decoded.
    Corrupt(String),
    /// Anything else, such as a missing permission or column family.
    Internal(BoxError),
}

impl Failure {
    /// Stored data that does not decode.
    pub(crate) fn corrupt(what: impl fmt::Display) -> Self {
        Self::Corrupt(what.to_string())
    }

    /// Sorts the failure of a request of kind `op`.
    pub(crate) fn of(error: CallError, op: Op) -> Self {
        let boxed = |error: CallError| -> BoxError { Box::new(error) };
        match error {
            CallError::NotSent(_) => Self::Unavailable(boxed(error)),
            CallError::Reply(_) => Self::Internal(boxed(error)),
            CallError::Timeout(_) | CallError::Lost(_) => match op {
                Op::Append => Self::Unknown(boxed(error)),
                Op::Other => Self::Unavailable(boxed(error)),
            },
            CallError::Status(ref status) => match status.code() {
                // The service refused the request: nothing was applied.
                Code::ResourceExhausted | Code::Unauthenticated => Self::Unavailable(boxed(error)),
                Code::InvalidArgument
                | Code::FailedPrecondition
                | Code::OutOfRange
                | Code::NotFound
                | Code::AlreadyExists
                | Code::PermissionDenied
                | Code::Unimplemented => Self::Internal(boxed(error)),
                Code::Unavailable if CallError::connection_refused(status) => {
                    Self::Unavailable(boxed(error))
                }
                // A broken connection, a timeout, a cancelled request: the request may have
                // been applied.
                Code::Unavailable
                | Code::DeadlineExceeded
                | Code::Cancelled
                | Code::Unknown
                | Code::Internal
                | Code::Aborted
                | Code::DataLoss
                | Code::Ok => match op {
                    Op::Append => Self::Unknown(boxed(error)),
                    Op::Other => Self::Unavailable(boxed(error)),
                },
            },
        }
    }
}

impl From<Failure> for EventStoreError {
    fn from(failure: Failure) -> Self {
        match failure {
            Failure::Unavailable(error) => Self::Unavailable(error),
            Failure::Unknown(error) => Self::OutcomeUnknown(error),
            Failure::Conflict { expected, actual } => Self::Conflict { expected, actual },
            Failure::Corrupt(message) => Self::Corrupt(message),
            Failure::Internal(error) => Self::Internal(error),
        }
    }
}

impl From<Failure> for SnapshotStoreError {
    fn from(failure: Failure) -> Self {
        match failure {
            // Putting a snapshot twice is harmless: a lost reply is only unavailability.
            Failure::Unavailable(error) | Failure::Unknown(error) => Self::Unavailable(error),
            Failure::Corrupt(message) => Self::Corrupt(message),
            Failure::Internal(error) => Self::Internal(error),
            Failure::Conflict { expected, actual } => Self::Internal(
                format!("a sequence conflict ({expected} expected, {actual} found)").into(),
            ),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_a_definite_answer_settles_an_append() {
        for code in [
            Code::Unavailable,
            Code::DeadlineExceeded,
            Code::Cancelled,
            Code::Unknown,
            Code::Internal,
            Code::Aborted,
        ] {
            let error = CallError::Status(Status::new(code, "lost"));
            assert!(matches!(
                Failure::of(error, Op::Append),
                Failure::Unknown(_)
            ));
            let error = CallError::Status(Status::new(code, "lost"));
            assert!(matches!(
                Failure::of(error, Op::Other),
                Failure::Unavailable(_)
            ));
        }
        let timeout = CallError::Timeout(Duration::from_secs(1));
        assert!(matches!(
            Failure::of(timeout, Op::Append),
            Failure::Unknown(_)
        ));
        for code in [
            Code::InvalidArgument,
            Code::NotFound,
            Code::PermissionDenied,
        ] {
            let error = CallError::Status(Status::new(code, "refused"));
            assert!(matches!(
                Failure::of(error, Op::Append),
                Failure::Internal(_)
            ));
        }
        let quota = CallError::Status(Status::new(Code::ResourceExhausted, "quota"));
        assert!(matches!(
            Failure::of(quota, Op::Append),
            Failure::Unavailable(_)
        ));
    }
}

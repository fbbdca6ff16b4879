//! Spanner's errors, sorted into what the ports' callers can do about them.
//!
//! What matters most is whether a failed append may have been committed:
//!
//! - everything before the commit request (getting a session, beginning the transaction,
//!   reading the stream's head) writes nothing: any failure there is definite;
//! - a commit answered `ABORTED` wrote nothing (Spanner guarantees it), so the store tries
//!   the whole transaction again; `ALREADY_EXISTS`, `FAILED_PRECONDITION`, `INVALID_ARGUMENT`,
//!   `PERMISSION_DENIED`, `NOT_FOUND` are refusals, also definite;
//! - a commit without an answer (a timeout, a lost connection: `UNAVAILABLE`, `UNKNOWN`,
//!   `DEADLINE_EXCEEDED`, `CANCELLED`, `INTERNAL`) may have been applied: the outcome is
//!   unknown, and the commit is never re-sent.

use std::time::Duration;

use angzarr_ports::{BoxError, EventStoreError, SnapshotStoreError};
use gcloud_gax::grpc::{Code, Status};
use gcloud_spanner::client::Error as ClientError;
use gcloud_spanner::session::SessionError;

/// Why a [`SpannerStore`](crate::SpannerStore) could not be opened.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum OpenError {
    /// The configuration cannot work.
    #[error("invalid Spanner store configuration: {0}")]
    InvalidConfig(String),
    /// No usable credentials in Application Default Credentials.
    #[error(
        "no Google Cloud credentials: set GOOGLE_APPLICATION_CREDENTIALS, run `gcloud auth \
         application-default login`, or run where a metadata server provides them ({0})"
    )]
    Credentials(#[source] BoxError),
    /// The endpoint could not be reached.
    #[error("cannot connect to Spanner at {endpoint}: {source}")]
    Connect {
        /// The endpoint.
        endpoint: String,
        /// What failed.
        #[source]
        source: BoxError,
    },
    /// Spanner refused or failed a request made while opening (credentials refused, a
    /// missing database, a permission missing...).
    #[error("Spanner refused to open {database}: {source}")]
    Refused {
        /// The database path.
        database: String,
        /// Spanner's answer.
        #[source]
        source: BoxError,
    },
    /// The database's schema lacks the store's tables, and `create_if_missing` is off.
    #[error(
        "the database {database} has no angzarr schema ({missing} missing); open it once with \
         create_if_missing, or apply the DDL in the crate documentation"
    )]
    MissingSchema {
        /// The database path.
        database: String,
        /// The first missing table or index.
        missing: String,
    },
    /// Opening took longer than the connect and operation timeouts allow.
    #[error("opening the Spanner store at {endpoint} took longer than {after:?}")]
    Timeout {
        /// The endpoint.
        endpoint: String,
        /// The time allowed.
        after: Duration,
    },
}

/// A failure sorted by what the caller can do about it.
#[derive(Debug)]
pub(crate) enum Failure {
    /// Nothing was written; retrying later may succeed.
    Unavailable(BoxError),
    /// Stored data does not decode.
    Corrupt(String),
    /// Anything else.
    Internal(BoxError),
}

impl Failure {
    /// A gRPC status of a request that wrote nothing (a read, or a step before the commit).
    pub(crate) fn of_status(status: Status) -> Self {
        if is_transient(status.code()) {
            Self::Unavailable(Box::new(status))
        } else {
            Self::Internal(Box::new(status))
        }
    }

    /// An error of the client (session pool included) before anything was written.
    pub(crate) fn of_client(error: ClientError) -> Self {
        match error {
            ClientError::GRPC(status) | ClientError::InvalidSession(SessionError::GRPC(status)) => {
                Self::of_status(status)
            }
            ClientError::InvalidSession(error) => Self::Unavailable(Box::new(error)),
            ClientError::Connection(error) => Self::Unavailable(Box::new(error)),
            ClientError::ParseError(error) => Self::Corrupt(error.to_string()),
            other => Self::Internal(Box::new(other)),
        }
    }

    /// No answer within `after`: for a read, nothing to undo.
    pub(crate) fn timed_out(after: Duration) -> Self {
        Self::Unavailable(format!("Spanner gave no answer within {after:?}").into())
    }
}

/// Codes that mean "not now": retrying later may work, and nothing was written.
pub(crate) fn is_transient(code: Code) -> bool {
    matches!(
        code,
        Code::Unavailable
            | Code::DeadlineExceeded
            | Code::Cancelled
            | Code::ResourceExhausted
            | Code::Aborted
            | Code::Unknown
            | Code::Unauthenticated
    )
}

/// Whether a gRPC status says the transaction aborted (and wrote nothing), so the whole
/// transaction may be tried again. A session that the server no longer knows (`NOT_FOUND`)
/// cannot have committed either.
pub(crate) fn is_abort(status: &Status) -> bool {
    status.code() == Code::Aborted
        || (status.code() == Code::NotFound && status.message().contains("Session not found"))
}

/// What a commit's error says about the append it carried.
#[derive(Debug, PartialEq, Eq)]
pub(crate) enum CommitOutcome {
    /// Aborted: nothing written, try the transaction again.
    Aborted,
    /// A key the commit inserts is taken: another writer got there first.
    Conflict,
    /// Refused, definitely not written; `transient` if later may work.
    Refused {
        /// Whether retrying later may work.
        transient: bool,
    },
    /// No usable answer: the commit may have been applied.
    Unknown,
}

impl CommitOutcome {
    /// Sorts the status a commit failed with.
    pub(crate) fn of(status: &Status) -> Self {
        if is_abort(status) {
            return Self::Aborted;
        }
        match status.code() {
            Code::AlreadyExists => Self::Conflict,
            Code::ResourceExhausted | Code::Unauthenticated | Code::PermissionDenied => {
                Self::Refused { transient: true }
            }
            Code::InvalidArgument
            | Code::FailedPrecondition
            | Code::NotFound
            | Code::OutOfRange
            | Code::Unimplemented => Self::Refused { transient: false },
            // Unavailable, Unknown, DeadlineExceeded, Cancelled, Internal, DataLoss: the
            // request may have reached the server before the answer was lost.
            _ => Self::Unknown,
        }
    }
}

impl From<Failure> for EventStoreError {
    fn from(failure: Failure) -> Self {
        match failure {
            Failure::Unavailable(error) => Self::Unavailable(error),
            Failure::Corrupt(message) => Self::Corrupt(message),
            Failure::Internal(error) => Self::Internal(error),
        }
    }
}

impl From<Failure> for SnapshotStoreError {
    fn from(failure: Failure) -> Self {
        match failure {
            Failure::Unavailable(error) => Self::Unavailable(error),
            Failure::Corrupt(message) => Self::Corrupt(message),
            Failure::Internal(error) => Self::Internal(error),
        }
    }
}

impl From<ClientError> for Failure {
    fn from(error: ClientError) -> Self {
        Self::of_client(error)
    }
}

impl From<Status> for Failure {
    fn from(status: Status) -> Self {
        Self::of_status(status)
    }
}

impl From<SessionError> for Failure {
    fn from(error: SessionError) -> Self {
        Self::of_client(ClientError::InvalidSession(error))
    }
}

impl From<gcloud_spanner::row::Error> for Failure {
    fn from(error: gcloud_spanner::row::Error) -> Self {
        Self::Corrupt(format!("a stored column does not decode: {error}"))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_a_commit_without_answer_is_unknown() {
        for code in [
            Code::Unavailable,
            Code::Unknown,
            Code::DeadlineExceeded,
            Code::Cancelled,
            Code::Internal,
        ] {
            assert_eq!(
                CommitOutcome::of(&Status::new(code, "x")),
                CommitOutcome::Unknown
            );
        }
        assert_eq!(
            CommitOutcome::of(&Status::new(Code::Aborted, "x")),
            CommitOutcome::Aborted
        );
        assert_eq!(
            CommitOutcome::of(&Status::new(Code::NotFound, "Session not found: s")),
            CommitOutcome::Aborted
        );
        assert_eq!(
            CommitOutcome::of(&Status::new(Code::AlreadyExists, "Row [..] exists")),
            CommitOutcome::Conflict
        );
        assert_eq!(
            CommitOutcome::of(&Status::new(Code::InvalidArgument, "too many mutations")),
            CommitOutcome::Refused { transient: false }
        );
    }
}

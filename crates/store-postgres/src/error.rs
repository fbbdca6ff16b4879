//! PostgreSQL's errors, sorted into what the ports' callers can do about them.

use std::fmt;

use angzarr_ports::{BoxError, EventStoreError, SnapshotStoreError};
use deadpool::managed::PoolError;
use tokio_postgres::error::{DbError, Severity, SqlState};

/// Why a [`PostgresStore`](crate::PostgresStore) could not be opened.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum OpenError {
    /// The configuration cannot work.
    #[error("invalid PostgreSQL store configuration: {0}")]
    InvalidConfig(String),
    /// The server could not be reached, refused the credentials, or failed to set up the
    /// schema.
    #[error("cannot open the PostgreSQL store ({url}): {source}")]
    Postgres {
        /// The server's URL, password masked.
        url: String,
        /// The driver's error.
        #[source]
        source: tokio_postgres::Error,
    },
    /// The server did not answer within the connect and operation timeouts.
    #[error("cannot open the PostgreSQL store ({url}): no answer within {after:?}")]
    Timeout {
        /// The server's URL, password masked.
        url: String,
        /// How long the store waited.
        after: std::time::Duration,
    },
    /// The server is older than PostgreSQL 13, which brought the `xid8` type the schema uses.
    #[error("PostgreSQL {found} is too old: the store needs version 13 or later")]
    ServerTooOld {
        /// The server's `server_version_num`.
        found: i32,
    },
    /// The schema was written by a newer version of this crate.
    #[error("the schema has version {found}; this version of the store supports up to {supported}")]
    SchemaTooNew {
        /// The version stored in the schema's `schema_version` table.
        found: i32,
        /// The newest schema version this crate knows.
        supported: i32,
    },
}

/// A failure of the backend or of stored data, before it becomes one port's error.
#[derive(Debug)]
pub(crate) enum Failure {
    /// The server cannot be reached or refused service for now; nothing was written.
    Unavailable(BoxError),
    /// Stored data cannot be decoded.
    Corrupt(String),
    /// Anything else, such as a bug.
    Internal(BoxError),
}

impl Failure {
    /// Stored data that does not decode.
    pub(crate) fn corrupt(what: impl fmt::Display) -> Self {
        Self::Corrupt(what.to_string())
    }

    /// The server gave no answer within `timeout`.
    pub(crate) fn timed_out(timeout: std::time::Duration) -> Self {
        Self::Unavailable(format!("PostgreSQL gave no answer within {timeout:?}").into())
    }
}

/// What a failed statement says about the server, the connection and the statement.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Kind {
    /// Transient: the connection or the server is failing, or refused for now.
    Unavailable,
    /// The server reports damaged data.
    Corrupt,
    /// Anything else: a bug, a schema changed under the store, a limit of the server.
    Internal,
}

impl Kind {
    /// The kind of a failed read, or of any statement whose failure leaves nothing behind.
    pub(crate) fn of(error: &tokio_postgres::Error) -> Self {
        match error.as_db_error() {
            // Not from the server: the connection was lost or broke.
            None => Self::Unavailable,
            Some(db) => Self::of_db(db.code(), db.parsed_severity()),
        }
    }

    /// The kind of an error the server reported with `code` and `severity`.
    pub(crate) fn of_db(code: &SqlState, severity: Option<Severity>) -> Self {
        if matches!(severity, Some(Severity::Fatal | Severity::Panic)) {
            // The server ended the session (shutdown, terminated backend, crash).
            return Self::Unavailable;
        }
        match code.code().get(..2) {
            // Connection exception, insufficient resources (too many connections, disk
            // full, out of memory), operator intervention (shutdown, cancel, a standby after
            // a failover), system error (I/O), transaction rollback (serialization failure,
            // deadlock).
            Some("08" | "53" | "57" | "58" | "40") => return Self::Unavailable,
            Some("XX") if *code != SqlState::INTERNAL_ERROR => return Self::Corrupt,
            _ => {}
        }
        if *code == SqlState::LOCK_NOT_AVAILABLE
            || *code == SqlState::READ_ONLY_SQL_TRANSACTION
            || *code == SqlState::CANNOT_CONNECT_NOW
        {
            // A lock timeout, or a server that became a read-only standby (failover).
            return Self::Unavailable;
        }
        Self::Internal
    }

    /// This kind, for `error`.
    pub(crate) fn failure(self, error: BoxError) -> Failure {
        match self {
            Self::Unavailable => Failure::Unavailable(error),
            Self::Corrupt => Failure::Corrupt(error.to_string()),
            Self::Internal => Failure::Internal(error),
        }
    }
}

impl From<tokio_postgres::Error> for Failure {
    fn from(error: tokio_postgres::Error) -> Self {
        Kind::of(&error).failure(Box::new(error))
    }
}

impl From<PoolError<tokio_postgres::Error>> for Failure {
    fn from(error: PoolError<tokio_postgres::Error>) -> Self {
        match error {
            // Opening a connection failed (refused, unreachable, authentication, preparing
            // the statements): nothing was sent for the operation.
            PoolError::Backend(error) => {
                let kind = match Kind::of(&error) {
                    // An error from the server while preparing, such as a missing table,
                    // still means this operation cannot be done now.
                    Kind::Internal => Kind::Internal,
                    _ => Kind::Unavailable,
                };
                kind.failure(Box::new(error))
            }
            // All connections busy for the whole acquire timeout, or opening one took too
            // long.
            error @ PoolError::Timeout(_) => Failure::Unavailable(Box::new(error)),
            error => Failure::Internal(Box::new(error)),
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

/// How a failed append statement ended, as far as the client can tell.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum AppendFailure {
    /// Another writer stored an event at one of the batch's sequences first (a duplicate
    /// primary key): a conflict; nothing of the batch was written.
    Conflict,
    /// A serialization failure or a deadlock: nothing was written, and trying again may
    /// succeed.
    Retry,
    /// The server reported an error and rolled the statement back: nothing was written.
    Failed(Kind),
    /// The statement may have been applied: the connection was lost or the session ended
    /// after the request went out, before the answer came back.
    Unknown,
}

impl AppendFailure {
    /// How `error`, from running the append statement, ended.
    pub(crate) fn of(error: &tokio_postgres::Error) -> Self {
        match error.as_db_error() {
            None => Self::Unknown,
            Some(db) => Self::of_db(db),
        }
    }

    fn of_db(db: &DbError) -> Self {
        Self::of_code(db.code(), db.parsed_severity())
    }

    /// An ERROR rolls the statement (and its implicit transaction) back. A FATAL or PANIC
    /// ends the session and may come after the commit: a backend terminated while it waits
    /// for synchronous replication has already committed locally, and says so only in a
    /// warning.
    pub(crate) fn of_code(code: &SqlState, severity: Option<Severity>) -> Self {
        match severity {
            Some(Severity::Fatal | Severity::Panic) => Self::Unknown,
            _ if *code == SqlState::UNIQUE_VIOLATION => Self::Conflict,
            _ if *code == SqlState::T_R_SERIALIZATION_FAILURE
                || *code == SqlState::T_R_DEADLOCK_DETECTED =>
            {
                Self::Retry
            }
            _ => Self::Failed(Kind::of_db(code, severity)),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn transient_server_errors_are_unavailable_and_damage_is_corrupt() {
        for code in [
            SqlState::CONNECTION_FAILURE,
            SqlState::TOO_MANY_CONNECTIONS,
            SqlState::DISK_FULL,
            SqlState::OUT_OF_MEMORY,
            SqlState::ADMIN_SHUTDOWN,
            SqlState::QUERY_CANCELED,
            SqlState::CANNOT_CONNECT_NOW,
            SqlState::IO_ERROR,
            SqlState::T_R_SERIALIZATION_FAILURE,
            SqlState::T_R_DEADLOCK_DETECTED,
            SqlState::LOCK_NOT_AVAILABLE,
            SqlState::READ_ONLY_SQL_TRANSACTION,
        ] {
            assert_eq!(
                Kind::of_db(&code, Some(Severity::Error)),
                Kind::Unavailable,
                "{code:?}"
            );
        }
        for code in [SqlState::DATA_CORRUPTED, SqlState::INDEX_CORRUPTED] {
            assert_eq!(Kind::of_db(&code, Some(Severity::Error)), Kind::Corrupt);
        }
        for code in [
            SqlState::UNDEFINED_TABLE,
            SqlState::SYNTAX_ERROR,
            SqlState::PROGRAM_LIMIT_EXCEEDED,
            SqlState::INTERNAL_ERROR,
        ] {
            assert_eq!(Kind::of_db(&code, Some(Severity::Error)), Kind::Internal);
        }
        // Whatever the code, a session the server ended is transient for a read.
        assert_eq!(
            Kind::of_db(&SqlState::UNDEFINED_TABLE, Some(Severity::Fatal)),
            Kind::Unavailable
        );
    }

    #[test]
    fn an_append_is_unknown_only_when_the_server_may_have_committed_it() {
        let error = Some(Severity::Error);
        assert_eq!(
            AppendFailure::of_code(&SqlState::UNIQUE_VIOLATION, error),
            AppendFailure::Conflict
        );
        for code in [
            SqlState::T_R_SERIALIZATION_FAILURE,
            SqlState::T_R_DEADLOCK_DETECTED,
        ] {
            assert_eq!(AppendFailure::of_code(&code, error), AppendFailure::Retry);
        }
        // An ERROR rolled the statement back: a definite failure, whatever its cause.
        assert_eq!(
            AppendFailure::of_code(&SqlState::ADMIN_SHUTDOWN, error),
            AppendFailure::Failed(Kind::Unavailable)
        );
        assert_eq!(
            AppendFailure::of_code(&SqlState::UNDEFINED_TABLE, error),
            AppendFailure::Failed(Kind::Internal)
        );
        // The session ended: the commit may have happened first.
        for severity in [Severity::Fatal, Severity::Panic] {
            for code in [SqlState::ADMIN_SHUTDOWN, SqlState::UNIQUE_VIOLATION] {
                assert_eq!(
                    AppendFailure::of_code(&code, Some(severity)),
                    AppendFailure::Unknown
                );
            }
        }
    }

    #[test]
    fn pool_timeouts_are_unavailable() {
        let failure = Failure::from(PoolError::<tokio_postgres::Error>::Timeout(
            deadpool::managed::TimeoutType::Wait,
        ));
        assert!(matches!(
            EventStoreError::from(failure),
            EventStoreError::Unavailable(_)
        ));
        assert!(matches!(
            SnapshotStoreError::from(Failure::timed_out(std::time::Duration::from_secs(1))),
            SnapshotStoreError::Unavailable(_)
        ));
    }
}

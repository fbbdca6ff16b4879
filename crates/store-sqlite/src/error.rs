//! SQLite's errors, sorted into what the ports' callers can do about them.

use std::error::Error;
use std::fmt;
use std::sync::Arc;

use angzarr_ports::{BoxError, EventStoreError, SnapshotStoreError};
use rusqlite::ErrorCode;

/// Why a [`SqliteStore`](crate::SqliteStore) could not be opened.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum OpenError {
    /// The configuration cannot work.
    #[error("invalid SQLite store configuration: {0}")]
    InvalidConfig(String),
    /// SQLite failed to open or set up the database.
    #[error("cannot open the SQLite database: {0}")]
    Sqlite(#[from] rusqlite::Error),
    /// The file system refused write-ahead logging (SQLite kept another journal mode), so
    /// readers and the writer would block each other.
    #[error("SQLite could not switch to WAL mode (journal mode is {0:?})")]
    NoWal(String),
    /// The file was written by a newer version of this crate.
    #[error(
        "the database has schema version {found}; this version of the store supports up to {supported}"
    )]
    SchemaTooNew {
        /// The file's `PRAGMA user_version`.
        found: i64,
        /// The newest schema version this crate knows.
        supported: i64,
    },
}

/// A failure of the backend or of stored data, before it becomes one port's error.
#[derive(Debug)]
pub(crate) enum Failure {
    /// Busy, locked, out of disk, I/O error, writing stopped: retrying later may succeed.
    Unavailable(BoxError),
    /// Stored data cannot be decoded.
    Corrupt(String),
    /// Anything else, such as a bug.
    Internal(BoxError),
}

impl Failure {
    /// Writing has stopped (a commit panicked, or the store is closing), so no write can be
    /// done.
    pub(crate) fn writer_gone() -> Self {
        Self::Unavailable("the SQLite store has stopped writing".into())
    }

    /// Stored data that does not decode.
    pub(crate) fn corrupt(what: impl fmt::Display) -> Self {
        Self::Corrupt(what.to_string())
    }
}

/// The three ways a failure is reported.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Kind {
    Unavailable,
    Corrupt,
    Internal,
}

impl Kind {
    fn of(error: &rusqlite::Error) -> Self {
        match error {
            rusqlite::Error::SqliteFailure(error, _) => match error.code {
                // Another process holds a lock, or the disk is failing or full: transient, and
                // SQLite guarantees the failed statement changed nothing.
                ErrorCode::DatabaseBusy
                | ErrorCode::DatabaseLocked
                | ErrorCode::SystemIoFailure
                | ErrorCode::DiskFull
                | ErrorCode::CannotOpen => Self::Unavailable,
                ErrorCode::DatabaseCorrupt | ErrorCode::NotADatabase => Self::Corrupt,
                _ => Self::Internal,
            },
            // A column holds something the schema does not allow: the file was tampered with.
            rusqlite::Error::FromSqlConversionFailure(..)
            | rusqlite::Error::InvalidColumnType(..)
            | rusqlite::Error::IntegralValueOutOfRange(..)
            | rusqlite::Error::Utf8Error(..) => Self::Corrupt,
            _ => Self::Internal,
        }
    }

    fn failure(self, error: BoxError) -> Failure {
        match self {
            Self::Unavailable => Failure::Unavailable(error),
            Self::Corrupt => Failure::Corrupt(error.to_string()),
            Self::Internal => Failure::Internal(error),
        }
    }
}

impl From<rusqlite::Error> for Failure {
    fn from(error: rusqlite::Error) -> Self {
        Kind::of(&error).failure(Box::new(error))
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

/// The failure of a whole group commit, handed to every write of the group.
#[derive(Debug, Clone)]
pub(crate) struct GroupFailure {
    kind: Kind,
    cause: Arc<dyn Error + Send + Sync>,
}

impl GroupFailure {
    /// `BEGIN` or `COMMIT` failed.
    pub(crate) fn new(error: rusqlite::Error) -> Self {
        Self {
            kind: Kind::of(&error),
            cause: Arc::new(error),
        }
    }

    /// SQLite rolled the group's transaction back by itself, as it does after some errors
    /// (disk full, I/O error...) in one of the group's writes.
    pub(crate) fn rolled_back() -> Self {
        Self {
            kind: Kind::Unavailable,
            cause: Arc::from(BoxError::from(
                "SQLite rolled back the group commit after an error in one of its writes",
            )),
        }
    }

    /// This failure, for one write of the group.
    pub(crate) fn to_failure(&self) -> Failure {
        self.kind
            .failure(Box::new(SharedCause(Arc::clone(&self.cause))))
    }
}

/// One error shared by several failures.
#[derive(Debug)]
struct SharedCause(Arc<dyn Error + Send + Sync>);

impl fmt::Display for SharedCause {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Display::fmt(&self.0, f)
    }
}

impl Error for SharedCause {
    fn source(&self) -> Option<&(dyn Error + 'static)> {
        self.0.source()
    }
}

#[cfg(test)]
mod tests {
    use rusqlite::ffi;

    use super::*;

    fn sqlite(code: i32) -> rusqlite::Error {
        rusqlite::Error::SqliteFailure(ffi::Error::new(code), None)
    }

    #[test]
    fn transient_errors_are_unavailable_and_bad_data_is_corrupt() {
        for code in [
            ffi::SQLITE_BUSY,
            ffi::SQLITE_LOCKED,
            ffi::SQLITE_IOERR,
            ffi::SQLITE_IOERR_FSYNC,
            ffi::SQLITE_FULL,
            ffi::SQLITE_CANTOPEN,
        ] {
            assert!(matches!(
                EventStoreError::from(Failure::from(sqlite(code))),
                EventStoreError::Unavailable(_)
            ));
        }
        assert!(matches!(
            SnapshotStoreError::from(Failure::from(sqlite(ffi::SQLITE_CORRUPT))),
            SnapshotStoreError::Corrupt(_)
        ));
        let wrong_type =
            rusqlite::Error::InvalidColumnType(0, "page".into(), rusqlite::types::Type::Text);
        assert!(matches!(Failure::from(wrong_type), Failure::Corrupt(_)));
        assert!(matches!(
            EventStoreError::from(Failure::from(sqlite(ffi::SQLITE_CONSTRAINT))),
            EventStoreError::Internal(_)
        ));
    }

    #[test]
    fn a_group_failure_keeps_its_kind_and_message_for_every_write() {
        let group = GroupFailure::new(sqlite(ffi::SQLITE_BUSY));
        for _ in 0..2 {
            let EventStoreError::Unavailable(source) = group.to_failure().into() else {
                panic!("not unavailable");
            };
            assert_eq!(source.to_string(), sqlite(ffi::SQLITE_BUSY).to_string());
        }
    }
}

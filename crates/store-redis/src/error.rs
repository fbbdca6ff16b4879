//! Redis's errors, sorted into what the ports' callers can do about them.
//!
//! What matters most is whether a failed append may have been applied. A reply from the server,
//! even an error, means the server decided: every error reply the append script can get
//! (`OOM`, `BUSY`, `LOADING`, `READONLY`, `TRYAGAIN`, `CLUSTERDOWN`, `MOVED`...) comes before
//! its first write, so nothing was written. Without a reply (a connection lost after the
//! request was handed to the socket, a timeout, a garbled reply) the script may have run: the
//! outcome is unknown. Failing to connect means nothing was sent.

use std::fmt;

use angzarr_ports::{BoxError, EventStoreError, SnapshotStoreError};
use redis::{ErrorKind, RedisError, ServerErrorKind};

/// Why a [`RedisStore`](crate::RedisStore) could not be opened.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum OpenError {
    /// The configuration cannot work.
    #[error("invalid Redis store configuration: {0}")]
    InvalidConfig(String),
    /// The server or cluster could not be reached, refused the credentials, or failed.
    #[error("cannot connect to Redis: {0}")]
    Connect(#[source] RedisError),
    /// The server is not what the configuration says: a cluster node opened as a single
    /// server, or the other way round.
    #[error("wrong Redis topology: {0}")]
    WrongTopology(String),
}

/// How a request to Redis failed.
#[derive(Debug)]
pub(crate) enum CallError {
    /// No connection could be made: the request was never sent.
    NotSent(RedisError),
    /// The request was handed to a connection; `error` says what happened then.
    Sent(RedisError),
    /// The server replied with something the store never writes or asks for.
    Reply(String),
}

/// What kind of operation failed, which decides what a lost reply means.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Op {
    /// An append script: without a reply, its outcome is unknown.
    Append,
    /// A read, or a write whose repetition is harmless (an index entry, a snapshot).
    Other,
}

/// A failure of the backend or of stored data, before it becomes one port's error.
#[derive(Debug)]
pub(crate) enum Failure {
    /// Not reachable, or refused service: retrying later may succeed; nothing was written.
    Unavailable(BoxError),
    /// The append may or may not have been applied.
    Unknown(BoxError),
    /// The request is malformed.
    Invalid(String),
    /// Stored data cannot be decoded.
    Corrupt(String),
    /// Anything else, such as a bug or a missing permission.
    Internal(BoxError),
}

impl Failure {
    /// Stored data that does not decode.
    pub(crate) fn corrupt(what: impl fmt::Display) -> Self {
        Self::Corrupt(what.to_string())
    }

    /// A request the store cannot make.
    pub(crate) fn invalid(what: impl fmt::Display) -> Self {
        Self::Invalid(what.to_string())
    }

    /// Sorts the failure of a request of kind `op`.
    pub(crate) fn of(error: CallError, op: Op) -> Self {
        let error = match error {
            CallError::NotSent(error) => return Self::Unavailable(Box::new(error)),
            CallError::Reply(message) if op == Op::Append => {
                return Self::Unknown(message.into());
            }
            CallError::Reply(message) => return Self::Internal(message.into()),
            CallError::Sent(error) => error,
        };
        match error.kind() {
            // The server (or cluster) is busy, starting, failing over or moving the slot: it
            // refused the request, which can succeed later.
            ErrorKind::Server(
                ServerErrorKind::BusyLoading
                | ServerErrorKind::TryAgain
                | ServerErrorKind::ClusterDown
                | ServerErrorKind::MasterDown
                | ServerErrorKind::ReadOnly
                | ServerErrorKind::Moved
                | ServerErrorKind::Ask,
            ) => Self::Unavailable(Box::new(error)),
            ErrorKind::Extension => match error.code() {
                Some("OOM") => Self::Unavailable(
                    format!(
                        "Redis is out of memory (maxmemory reached, and the eviction policy \
                         keeps every key): nothing was written; free memory or raise maxmemory \
                         ({error})"
                    )
                    .into(),
                ),
                // A long script runs, a write quorum is missing, or persistence is failing
                // (`stop-writes-on-bgsave-error`): refused, nothing written.
                Some("BUSY" | "NOREPLICAS" | "MISCONF" | "LOADING") => {
                    Self::Unavailable(Box::new(error))
                }
                _ => Self::Internal(Box::new(error)),
            },
            ErrorKind::Io if error.is_connection_refusal() => Self::Unavailable(Box::new(error)),
            ErrorKind::ClusterConnectionNotFound | ErrorKind::AuthenticationFailed => {
                Self::Unavailable(Box::new(error))
            }
            // Sent, and no usable reply: lost connection, timeout, garbled reply.
            ErrorKind::Io | ErrorKind::Parse => match op {
                Op::Append => Self::Unknown(Box::new(error)),
                Op::Other => Self::Unavailable(Box::new(error)),
            },
            _ => Self::Internal(Box::new(error)),
        }
    }
}

impl From<Failure> for EventStoreError {
    fn from(failure: Failure) -> Self {
        match failure {
            Failure::Unavailable(error) => Self::Unavailable(error),
            Failure::Unknown(error) => Self::OutcomeUnknown(error),
            Failure::Invalid(message) => Self::InvalidArgument(message),
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
            Failure::Invalid(message) => Self::InvalidArgument(message),
            Failure::Corrupt(message) => Self::Corrupt(message),
            Failure::Internal(error) => Self::Internal(error),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn server(reply: &str) -> CallError {
        let value = redis::parse_redis_value(reply.as_bytes()).expect("a RESP error");
        CallError::Sent(value.extract_error().expect_err("an error reply"))
    }

    fn io(kind: std::io::ErrorKind) -> CallError {
        CallError::Sent(std::io::Error::from(kind).into())
    }

    #[test]
    fn a_lost_reply_leaves_only_an_append_unknown() {
        use std::io::ErrorKind::*;
        for kind in [BrokenPipe, ConnectionReset, UnexpectedEof, TimedOut] {
            assert!(matches!(
                Failure::of(io(kind), Op::Append),
                Failure::Unknown(_)
            ));
            assert!(matches!(
                Failure::of(io(kind), Op::Other),
                Failure::Unavailable(_)
            ));
        }
        assert!(matches!(
            Failure::of(io(ConnectionRefused), Op::Append),
            Failure::Unavailable(_)
        ));
        let not_sent = CallError::NotSent(std::io::Error::from(TimedOut).into());
        assert!(matches!(
            Failure::of(not_sent, Op::Append),
            Failure::Unavailable(_)
        ));
        assert!(matches!(
            Failure::of(CallError::Reply("odd".into()), Op::Append),
            Failure::Unknown(_)
        ));
    }

    #[test]
    fn refusals_are_unavailable_and_mistakes_internal() {
        for reply in [
            "-OOM command not allowed when used memory > 'maxmemory'.\r\n",
            "-BUSY Redis is busy running a script.\r\n",
            "-LOADING Redis is loading the dataset in memory\r\n",
            "-READONLY You can't write against a read only replica.\r\n",
            "-TRYAGAIN Multiple keys request during rehashing of slot\r\n",
            "-CLUSTERDOWN The cluster is down\r\n",
            "-MOVED 3999 127.0.0.1:6381\r\n",
            "-MISCONF Errors writing to the AOF file\r\n",
        ] {
            assert!(
                matches!(
                    Failure::of(server(reply), Op::Append),
                    Failure::Unavailable(_)
                ),
                "{reply}"
            );
        }
        let oom = Failure::of(server("-OOM command not allowed\r\n"), Op::Append);
        assert!(
            EventStoreError::from(oom)
                .to_string()
                .contains("out of memory")
        );
        for reply in [
            "-WRONGTYPE Operation against a key holding the wrong kind of value\r\n",
            "-NOPERM this user has no permissions\r\n",
            "-ERR Error running script\r\n",
        ] {
            assert!(
                matches!(Failure::of(server(reply), Op::Append), Failure::Internal(_)),
                "{reply}"
            );
        }
    }
}

//! Redis's errors, sorted into what the ports' callers can do about them.
//!
//! What matters most is whether a failed append may have been applied.
//!
//! - **The append script's own answers are definite.** Its refusals (a key of the wrong type;
//!   `OOM`, `READONLY`, `MISCONF`, `NOREPLICAS` at its first write) are a reply, `{-1, error}`,
//!   not an error reply (see `script.rs`), like its conflicts: the script ran, found the stream
//!   at its expected sequence without its own first event, and wrote nothing. A copy of the
//!   same append applied earlier would have left the stream past that sequence, that event
//!   there, the events key a sorted set: no copy was applied, on one server and in a cluster
//!   alike ([`Failure::refused`]).
//! - **On one server** an append is sent once (after `NOSCRIPT`, which means the script did not
//!   run, as `EVAL`). An error reply is the server's answer to that one request, given before
//!   the script's first write (`BUSY`, `LOADING`, `MASTERDOWN`...): nothing was written. Without
//!   a reply (a connection lost after the request was handed to the socket, a timeout, a
//!   garbled reply) the script may have run: the outcome is unknown.
//! - **In a cluster** the client re-sends a request by itself after a lost connection, a
//!   timeout, a redirection or a `TRYAGAIN`/`CLUSTERDOWN` reply ([`Op::RetriedAppend`]). The
//!   error it finally returns may come from a later copy (`CLUSTERDOWN`, `MOVED`, a connection
//!   refused by a node killed right after it ran the first copy...) and says nothing about the
//!   first: every error of an append is an unknown outcome there.
//! - Failing to connect means nothing was sent.

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
    /// An append script sent once (to a single server): an error reply is the server's answer
    /// to it; without a reply, its outcome is unknown.
    Append,
    /// An append script handed to the cluster client, which may have sent it several times: any
    /// error may follow an earlier copy that ran, so every error leaves the outcome unknown.
    RetriedAppend,
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
            CallError::Reply(message) if op != Op::Other => return Self::Unknown(message.into()),
            CallError::Reply(message) => return Self::Internal(message.into()),
            // Whatever this error is, an earlier copy of the request may have been applied.
            CallError::Sent(error) if op == Op::RetriedAppend => {
                return Self::Unknown(
                    format!(
                        "the cluster client may have sent the append more than once, and an \
                         earlier copy may have been applied; the last attempt failed: {error}"
                    )
                    .into(),
                );
            }
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
                Some("OOM") => Self::out_of_memory(&error),
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
                Op::Append | Op::RetriedAppend => Self::Unknown(Box::new(error)),
                Op::Other => Self::Unavailable(Box::new(error)),
            },
            _ => Self::Internal(Box::new(error)),
        }
    }

    /// The append script's refusal, `reason` being the error Redis gave the command the script
    /// could not run (`OOM command not allowed...`, `WRONGTYPE ...`). Definite whatever the
    /// topology: this copy wrote nothing, and no earlier copy was applied.
    pub(crate) fn refused(reason: String) -> Self {
        match reason.split(' ').next() {
            Some("OOM") => Self::out_of_memory(&reason),
            // A replica (after a failover), failing persistence, a missing write quorum.
            Some("READONLY" | "MISCONF" | "NOREPLICAS") => {
                Self::Unavailable(format!("Redis refused the append: {reason}").into())
            }
            _ => Self::Internal(format!("Redis refused the append: {reason}").into()),
        }
    }

    fn out_of_memory(detail: &dyn fmt::Display) -> Self {
        Self::Unavailable(
            format!(
                "Redis is out of memory (maxmemory reached, and the eviction policy keeps every \
                 key): nothing was written; free memory or raise maxmemory ({detail})"
            )
            .into(),
        )
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

    #[test]
    fn every_error_of_a_retried_append_leaves_it_unknown() {
        use std::io::ErrorKind::*;
        // The cluster client may have sent the append before the error it finally returns:
        // refusals, redirections and failures to reconnect included.
        let mut errors: Vec<CallError> = [
            "-CLUSTERDOWN The cluster is down\r\n",
            "-TRYAGAIN Multiple keys request during rehashing of slot\r\n",
            "-MASTERDOWN Link with MASTER is down\r\n",
            "-MOVED 3999 127.0.0.1:6381\r\n",
            "-ASK 3999 127.0.0.1:6381\r\n",
            "-LOADING Redis is loading the dataset in memory\r\n",
            "-READONLY You can't write against a read only replica.\r\n",
            "-BUSY Redis is busy running a script.\r\n",
            "-OOM command not allowed when used memory > 'maxmemory'.\r\n",
            "-WRONGTYPE Operation against a key holding the wrong kind of value\r\n",
            "-NOPERM this user has no permissions\r\n",
            "-ERR Error running script\r\n",
        ]
        .into_iter()
        .map(server)
        .collect();
        errors.extend([ConnectionRefused, BrokenPipe, UnexpectedEof, TimedOut].map(io));
        for kind in [
            ErrorKind::ClusterConnectionNotFound,
            ErrorKind::AuthenticationFailed,
        ] {
            errors.push(CallError::Sent(RedisError::from((kind, "after a retry"))));
        }
        errors.push(CallError::Reply("odd".into()));
        for error in errors {
            let shown = format!("{error:?}");
            assert!(
                matches!(Failure::of(error, Op::RetriedAppend), Failure::Unknown(_)),
                "{shown}"
            );
        }
        // Never handed to a connection: nothing was sent.
        let not_sent = CallError::NotSent(std::io::Error::from(ConnectionRefused).into());
        assert!(matches!(
            Failure::of(not_sent, Op::RetriedAppend),
            Failure::Unavailable(_)
        ));
    }

    #[test]
    fn the_scripts_refusals_are_definite() {
        for (reason, unavailable) in [
            (
                "OOM command not allowed when used memory > 'maxmemory'.",
                true,
            ),
            (
                "READONLY You can't write against a read only replica.",
                true,
            ),
            ("MISCONF Errors writing to the AOF file", true),
            ("NOREPLICAS Not enough good replicas to write.", true),
            (
                "WRONGTYPE Operation against a key holding the wrong kind of value",
                false,
            ),
            ("NOPERM this user has no permissions", false),
        ] {
            match Failure::refused(reason.to_owned()) {
                Failure::Unavailable(error) => assert!(unavailable, "{reason}: {error}"),
                Failure::Internal(error) => assert!(!unavailable, "{reason}: {error}"),
                other => panic!("{reason}: {other:?}"),
            }
        }
        let oom = Failure::refused("OOM command not allowed".into());
        assert!(
            EventStoreError::from(oom)
                .to_string()
                .contains("out of memory")
        );
    }
}

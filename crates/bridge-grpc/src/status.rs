//! The one mapping between [`ClientLogicError`] and gRPC statuses, used by the client
//! ([`GrpcLogic`](crate::GrpcLogic)) one way and by the server ([`serve_logic`](crate::serve_logic))
//! the other, so that a Rust `ClientLogic` served over gRPC fails exactly as it does in process.
//!
//! | `ClientLogicError` | status code | `angzarr-invalid` trailer |
//! |---|---|---|
//! | `InvalidCommand(m)` | `INVALID_ARGUMENT` | `command` (or none) |
//! | `InvalidHistory(m)` | `INVALID_ARGUMENT` | `history` |
//! | `InvalidSnapshot(m)` | `INVALID_ARGUMENT` | `snapshot` |
//! | `Unavailable(m)` | `UNAVAILABLE` (retried first) | |
//! | `Timeout(_)` | `DEADLINE_EXCEEDED` | |
//! | `Failed(m)`, `InvalidReply(m)` | `INTERNAL` | |
//!
//! Read back, `INTERNAL` is `Failed(message)`, and every other code `Failed("CODE: message")`.

use std::time::Duration;

use angzarr_ports::ClientLogicError;
use tonic::metadata::{MetadataMap, MetadataValue};
use tonic::{Code, Status};

/// The trailer that says which part of the `ContextualCommand` an `INVALID_ARGUMENT` is about:
/// `command`, `history` or `snapshot`. Absent (or unknown) means `command`.
pub const INVALID_PART_TRAILER: &str = "angzarr-invalid";

/// The status that served logic answers `error` with.
pub fn error_status(error: &ClientLogicError) -> Status {
    let invalid = |part: &'static str, message: &str| {
        let mut metadata = MetadataMap::new();
        metadata.insert(INVALID_PART_TRAILER, MetadataValue::from_static(part));
        Status::with_metadata(Code::InvalidArgument, message, metadata)
    };
    match error {
        ClientLogicError::InvalidCommand(m) => invalid("command", m),
        ClientLogicError::InvalidHistory(m) => invalid("history", m),
        ClientLogicError::InvalidSnapshot(m) => invalid("snapshot", m),
        ClientLogicError::Unavailable(m) => Status::unavailable(m.as_str()),
        ClientLogicError::Timeout(after) => {
            Status::deadline_exceeded(format!("client logic timed out after {after:?}"))
        }
        ClientLogicError::Failed(m) => Status::internal(m.as_str()),
        // To the caller of served logic, logic that got a bad answer from further away failed.
        other => Status::internal(other.to_string()),
    }
}

/// The error a status answered by out-of-process logic means. `deadline` is what
/// `DEADLINE_EXCEEDED` reports as [`ClientLogicError::Timeout`] (the caller's own deadline).
pub fn status_error(status: &Status, deadline: Duration) -> ClientLogicError {
    let message = status.message().to_owned();
    match status.code() {
        Code::InvalidArgument => {
            let part = status.metadata().get(INVALID_PART_TRAILER);
            match part.and_then(|value| value.to_str().ok()) {
                Some("history") => ClientLogicError::InvalidHistory(message),
                Some("snapshot") => ClientLogicError::InvalidSnapshot(message),
                _ => ClientLogicError::InvalidCommand(message),
            }
        }
        Code::Unavailable => ClientLogicError::Unavailable(message),
        Code::DeadlineExceeded => ClientLogicError::Timeout(deadline),
        Code::Internal => ClientLogicError::Failed(message),
        code => ClientLogicError::Failed(format!("{}: {message}", code_name(code))),
    }
}

/// The code as the gRPC specification spells it.
fn code_name(code: Code) -> &'static str {
    match code {
        Code::Ok => "OK",
        Code::Cancelled => "CANCELLED",
        Code::Unknown => "UNKNOWN",
        Code::InvalidArgument => "INVALID_ARGUMENT",
        Code::DeadlineExceeded => "DEADLINE_EXCEEDED",
        Code::NotFound => "NOT_FOUND",
        Code::AlreadyExists => "ALREADY_EXISTS",
        Code::PermissionDenied => "PERMISSION_DENIED",
        Code::ResourceExhausted => "RESOURCE_EXHAUSTED",
        Code::FailedPrecondition => "FAILED_PRECONDITION",
        Code::Aborted => "ABORTED",
        Code::OutOfRange => "OUT_OF_RANGE",
        Code::Unimplemented => "UNIMPLEMENTED",
        Code::Internal => "INTERNAL",
        Code::Unavailable => "UNAVAILABLE",
        Code::DataLoss => "DATA_LOSS",
        Code::Unauthenticated => "UNAUTHENTICATED",
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const DEADLINE: Duration = Duration::from_millis(1234);

    #[test]
    fn every_error_round_trips() {
        let same = [
            ClientLogicError::InvalidCommand("unknown command type".into()),
            ClientLogicError::InvalidHistory("unknown event type".into()),
            ClientLogicError::InvalidSnapshot("old layout".into()),
            ClientLogicError::Unavailable("down".into()),
            ClientLogicError::Failed("boom".into()),
            ClientLogicError::Timeout(DEADLINE),
        ];
        for error in same {
            assert_eq!(status_error(&error_status(&error), DEADLINE), error);
        }
        // The caller's deadline is the one reported.
        assert_eq!(
            status_error(
                &error_status(&ClientLogicError::Timeout(Duration::from_secs(9))),
                DEADLINE
            ),
            ClientLogicError::Timeout(DEADLINE)
        );
        assert_eq!(
            status_error(
                &error_status(&ClientLogicError::InvalidReply("junk".into())),
                DEADLINE
            ),
            ClientLogicError::Failed("client logic gave an invalid reply: junk".into())
        );
    }

    #[test]
    fn foreign_statuses_map_by_code() {
        let status = |code, message: &str| Status::new(code, message);
        assert_eq!(
            status_error(&status(Code::InvalidArgument, "bad"), DEADLINE),
            ClientLogicError::InvalidCommand("bad".into())
        );
        assert_eq!(
            status_error(
                &status(Code::Unknown, "Exception calling application: x"),
                DEADLINE
            ),
            ClientLogicError::Failed("UNKNOWN: Exception calling application: x".into())
        );
        assert_eq!(
            status_error(&status(Code::Unimplemented, ""), DEADLINE),
            ClientLogicError::Failed("UNIMPLEMENTED: ".into())
        );
        let mut unknown_part = status(Code::InvalidArgument, "bad");
        unknown_part
            .metadata_mut()
            .insert(INVALID_PART_TRAILER, MetadataValue::from_static("nonsense"));
        assert_eq!(
            status_error(&unknown_part, DEADLINE),
            ClientLogicError::InvalidCommand("bad".into())
        );
    }
}

//! Typed errors to gRPC statuses: every error says what the caller should do.

use angzarr_core::CommandError;
use angzarr_ports::{ClientLogicError, EventStoreError, IdError, SnapshotStoreError};
use tonic::{Code, Status};

/// The status a failed command answers with.
///
/// | error | code | what the caller does |
/// |---|---|---|
/// | malformed command, bad domain or root | `INVALID_ARGUMENT` | fix the command |
/// | unknown domain | `NOT_FOUND` | fix the domain or register logic for it |
/// | rejected by the logic | `FAILED_PRECONDITION` | the command is not valid in this state |
/// | sequence conflict | `ABORTED` | reload and retry (or set `retry_on_conflict`) |
/// | `request_id` already used for another command | `ALREADY_EXISTS` | use a new request id |
/// | over a limit | `RESOURCE_EXHAUSTED` | send less |
/// | store or logic unreachable | `UNAVAILABLE` | retry later, with the same `request_id` |
/// | append outcome unknown, with a `request_id` | `UNAVAILABLE` | resend with the same `request_id` |
/// | append outcome unknown, without one | `UNKNOWN` | read the aggregate before deciding to resend |
/// | logic timed out | `DEADLINE_EXCEEDED` | retry with the same `request_id` |
/// | stored data undecodable | `DATA_LOSS` | operator attention |
/// | a bug in the client logic or the store | `INTERNAL` | operator attention |
pub fn command_status(error: CommandError) -> Status {
    let code = match &error {
        CommandError::InvalidCommand(_) => Code::InvalidArgument,
        CommandError::UnknownDomain(_) => Code::NotFound,
        CommandError::Rejected(_) => Code::FailedPrecondition,
        CommandError::Conflict { .. } => Code::Aborted,
        CommandError::RequestIdReused { .. } => Code::AlreadyExists,
        CommandError::LimitExceeded { .. } => Code::ResourceExhausted,
        CommandError::InvalidEvents(_) => Code::Internal,
        CommandError::Logic(error) => logic_code(error),
        CommandError::Store(error) => event_store_code(error),
        CommandError::SnapshotAhead(error) => snapshot_store_code(error),
        // A resend is safe only with a request id (it replays the first outcome): gRPC retry
        // policies resend UNAVAILABLE by themselves, so without one the answer must not be it.
        CommandError::OutcomeUnknown {
            idempotent: true, ..
        } => Code::Unavailable,
        CommandError::OutcomeUnknown { .. } => Code::Unknown,
        _ => Code::Internal,
    };
    Status::new(code, error.to_string())
}

fn logic_code(error: &ClientLogicError) -> Code {
    match error {
        ClientLogicError::InvalidCommand(_) => Code::InvalidArgument,
        ClientLogicError::Unavailable(_) => Code::Unavailable,
        ClientLogicError::Timeout(_) => Code::DeadlineExceeded,
        _ => Code::Internal,
    }
}

fn event_store_code(error: &EventStoreError) -> Code {
    match error {
        EventStoreError::Conflict { .. } => Code::Aborted,
        EventStoreError::InvalidArgument(_) => Code::InvalidArgument,
        EventStoreError::LimitExceeded { .. } => Code::ResourceExhausted,
        EventStoreError::Unavailable(_) | EventStoreError::OutcomeUnknown(_) => Code::Unavailable,
        EventStoreError::Corrupt(_) => Code::DataLoss,
        _ => Code::Internal,
    }
}

/// The status a failed query answers with.
pub fn event_store_status(error: EventStoreError) -> Status {
    Status::new(event_store_code(&error), error.to_string())
}

/// The status a failed snapshot read answers with.
pub fn snapshot_store_status(error: SnapshotStoreError) -> Status {
    Status::new(snapshot_store_code(&error), error.to_string())
}

fn snapshot_store_code(error: &SnapshotStoreError) -> Code {
    match error {
        SnapshotStoreError::InvalidArgument(_) => Code::InvalidArgument,
        SnapshotStoreError::LimitExceeded { .. } => Code::ResourceExhausted,
        SnapshotStoreError::Unavailable(_) => Code::Unavailable,
        SnapshotStoreError::Corrupt(_) => Code::DataLoss,
        _ => Code::Internal,
    }
}

/// A malformed identity in a query.
pub(crate) fn id_status(error: IdError) -> Status {
    Status::invalid_argument(error.to_string())
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use angzarr_ports::Limit;

    use super::*;

    #[test]
    fn every_command_error_has_the_code_that_tells_the_caller_what_to_do() {
        let cases = [
            (
                CommandError::InvalidCommand("x".into()),
                Code::InvalidArgument,
            ),
            (CommandError::UnknownDomain("x".into()), Code::NotFound),
            (CommandError::Rejected("x".into()), Code::FailedPrecondition),
            (
                CommandError::Conflict {
                    expected: 1,
                    actual: 2,
                },
                Code::Aborted,
            ),
            (
                CommandError::LimitExceeded {
                    limit: Limit::BatchLen,
                    max: 1,
                    actual: 2,
                },
                Code::ResourceExhausted,
            ),
            (CommandError::InvalidEvents("x".into()), Code::Internal),
            (
                CommandError::RequestIdReused {
                    request_id: "r".into(),
                },
                Code::AlreadyExists,
            ),
            (
                CommandError::SnapshotAhead(SnapshotStoreError::Unavailable("down".into())),
                Code::Unavailable,
            ),
            (
                CommandError::OutcomeUnknown {
                    idempotent: true,
                    source: "cut".into(),
                },
                Code::Unavailable,
            ),
            (
                CommandError::OutcomeUnknown {
                    idempotent: false,
                    source: "cut".into(),
                },
                Code::Unknown,
            ),
            (
                ClientLogicError::InvalidSnapshot("x".into()).into(),
                Code::Internal,
            ),
            (
                ClientLogicError::InvalidCommand("x".into()).into(),
                Code::InvalidArgument,
            ),
            (ClientLogicError::Failed("x".into()).into(), Code::Internal),
            (
                ClientLogicError::Unavailable("x".into()).into(),
                Code::Unavailable,
            ),
            (
                ClientLogicError::Timeout(Duration::from_secs(1)).into(),
                Code::DeadlineExceeded,
            ),
            (
                CommandError::Store(EventStoreError::Unavailable("down".into())),
                Code::Unavailable,
            ),
            (
                CommandError::Store(EventStoreError::Corrupt("x".into())),
                Code::DataLoss,
            ),
            (
                CommandError::Store(EventStoreError::Internal("x".into())),
                Code::Internal,
            ),
        ];
        for (error, code) in cases {
            let message = error.to_string();
            let status = command_status(error);
            assert_eq!((status.code(), status.message()), (code, message.as_str()));
        }
    }
}

//! DynamoDB's errors, sorted by what they say about a write: not sent, refused, or perhaps
//! applied.

use std::error::Error as StdError;

use angzarr_ports::{BoxError, EventStoreError, SnapshotStoreError};
use aws_sdk_dynamodb::config::http::HttpResponse;
use aws_sdk_dynamodb::error::{DisplayErrorContext, ProvideErrorMetadata, SdkError};

/// Why a [`DynamoDbStore`](crate::DynamoDbStore) could not be opened.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum OpenError {
    /// The configuration cannot work.
    #[error("invalid DynamoDB store configuration: {0}")]
    InvalidConfig(String),
    /// No region was configured nor found in the standard chain.
    #[error(
        "no AWS region: set DynamoDbConfig::region, AWS_REGION or a profile's region (the \
         endpoint alone does not give one)"
    )]
    NoRegion,
    /// DynamoDB could not be reached (wrong endpoint, network, DNS), or did not answer in time.
    #[error("cannot reach DynamoDB at {endpoint}: {reason}")]
    Connect {
        /// The endpoint tried (`AWS` for the regional endpoint).
        endpoint: String,
        /// What went wrong.
        reason: String,
    },
    /// No credentials could be found, or DynamoDB refused them.
    #[error("DynamoDB credentials: {0}")]
    Credentials(String),
    /// A table does not exist and `create_if_missing` is off.
    #[error("the DynamoDB table {0:?} does not exist (set create_if_missing to create it)")]
    MissingTable(String),
    /// A table exists with another key schema than the store's.
    #[error("the DynamoDB table {table:?} is not an angzarr table: {reason}")]
    WrongTable {
        /// The table.
        table: String,
        /// What differs.
        reason: String,
    },
    /// A table did not become active in time.
    #[error("the DynamoDB table {0:?} did not become active in time")]
    TableNotReady(String),
    /// DynamoDB refused a request made while opening (permissions, limits...).
    #[error("DynamoDB refused a request while opening the store: {0}")]
    Service(String),
}

/// What a failed request says about what it did.
#[derive(Debug)]
pub(crate) enum Attempt {
    /// Never sent (connection refused, no credentials, a request that could not be built):
    /// nothing was applied.
    NotSent(BoxError),
    /// Refused for now (throttling, a transaction in progress on the same items): nothing was
    /// applied, and trying again later may work.
    Throttled(BoxError),
    /// Sent without a usable answer (a timeout, a lost connection, a server error): it may
    /// have been applied.
    Unknown(BoxError),
    /// Refused for good (validation, permissions, a missing table): nothing was applied.
    Failed(BoxError),
}

/// Error codes of requests refused because of their rate: retrying later works.
const THROTTLING: [&str; 5] = [
    "ThrottlingException",
    "Throttling",
    "ProvisionedThroughputExceededException",
    "RequestLimitExceeded",
    "TransactionInProgressException",
];

/// Error codes of requests refused for their credentials: nothing was applied.
const CREDENTIALS: [&str; 5] = [
    "UnrecognizedClientException",
    "InvalidSignatureException",
    "ExpiredTokenException",
    "MissingAuthenticationTokenException",
    "IncompleteSignatureException",
];

/// `error` with its whole chain of causes, for a message.
pub(crate) fn described<E: StdError + 'static>(error: &E) -> String {
    DisplayErrorContext(error).to_string()
}

/// Sorts the failure of one request.
pub(crate) fn sort<E>(error: SdkError<E, HttpResponse>) -> Attempt
where
    E: ProvideErrorMetadata + StdError + Send + Sync + 'static,
{
    let message: BoxError = described(&error).into();
    match &error {
        SdkError::ConstructionFailure(_) => Attempt::NotSent(message),
        SdkError::DispatchFailure(failure) => {
            let refused = failure.is_user()
                || failure
                    .as_connector_error()
                    .is_some_and(|error| connection_refused(error));
            if refused {
                Attempt::NotSent(message)
            } else {
                Attempt::Unknown(message)
            }
        }
        SdkError::TimeoutError(_) | SdkError::ResponseError(_) => Attempt::Unknown(message),
        SdkError::ServiceError(service) => {
            let code = service.err().code().unwrap_or_default();
            if THROTTLING.contains(&code) {
                Attempt::Throttled(message)
            } else if CREDENTIALS.contains(&code) {
                Attempt::NotSent(message)
            } else if service.raw().status().is_server_error() {
                // `InternalServerError`, `ServiceUnavailable`, AWS's generic `InternalFailure`,
                // a proxy's 5xx without a code: the request may have been applied.
                Attempt::Unknown(message)
            } else {
                Attempt::Failed(message)
            }
        }
        _ => Attempt::Unknown(message),
    }
}

/// Whether a connection was refused: the request never left.
fn connection_refused(error: &(dyn StdError + 'static)) -> bool {
    let mut next = Some(error);
    while let Some(error) = next {
        if let Some(io) = error.downcast_ref::<std::io::Error>()
            && io.kind() == std::io::ErrorKind::ConnectionRefused
        {
            return true;
        }
        next = error.source();
    }
    false
}

/// Whether a service error is "this resource does not exist".
pub(crate) fn is_not_found<E, R>(error: &SdkError<E, R>) -> bool
where
    E: ProvideErrorMetadata,
{
    matches!(error, SdkError::ServiceError(service)
        if service.err().code() == Some("ResourceNotFoundException"))
}

/// Whether a service error is `code`.
pub(crate) fn has_code<E, R>(error: &SdkError<E, R>, code: &str) -> bool
where
    E: ProvideErrorMetadata,
{
    matches!(error, SdkError::ServiceError(service) if service.err().code() == Some(code))
}

/// A failure while opening, as an [`OpenError`].
pub(crate) fn open_error<E, R>(endpoint: &str, error: SdkError<E, R>) -> OpenError
where
    E: ProvideErrorMetadata + StdError + Send + Sync + 'static,
    R: std::fmt::Debug + Send + Sync + 'static,
{
    let credentials = match &error {
        SdkError::ServiceError(service) => service
            .err()
            .code()
            .is_some_and(|code| CREDENTIALS.contains(&code) || code == "AccessDeniedException"),
        SdkError::ConstructionFailure(_) | SdkError::DispatchFailure(_) => {
            let text = described(&error).to_lowercase();
            text.contains("credential") || text.contains("identity")
        }
        _ => false,
    };
    let reason = described(&error);
    if credentials {
        return OpenError::Credentials(reason);
    }
    match error {
        SdkError::ServiceError(_) => OpenError::Service(reason),
        _ => OpenError::Connect {
            endpoint: endpoint.to_owned(),
            reason,
        },
    }
}

/// A failure of the backend or of stored data, before it becomes one port's error.
#[derive(Debug)]
pub(crate) enum Failure {
    /// The stream did not end at the expected sequence.
    Conflict {
        /// The append's expected sequence.
        expected: u64,
        /// The stream's next sequence.
        actual: u64,
    },
    /// Not reachable or refused service: nothing was written.
    Unavailable(BoxError),
    /// The append may or may not have been applied.
    Unknown(BoxError),
    /// The request is malformed.
    Invalid(String),
    /// Stored data cannot be decoded.
    Corrupt(String),
    /// Anything else.
    Internal(BoxError),
}

impl Failure {
    /// The failure of a read (or of a write whose repetition is harmless): whatever it did, it
    /// changed nothing that matters.
    pub(crate) fn of_read<E>(error: SdkError<E, HttpResponse>) -> Self
    where
        E: ProvideErrorMetadata + StdError + Send + Sync + 'static,
    {
        match sort(error) {
            Attempt::NotSent(error) | Attempt::Throttled(error) | Attempt::Unknown(error) => {
                Self::Unavailable(error)
            }
            Attempt::Failed(error) => Self::Internal(error),
        }
    }

    pub(crate) fn corrupt(what: impl std::fmt::Display) -> Self {
        Self::Corrupt(what.to_string())
    }
}

impl From<Failure> for EventStoreError {
    fn from(failure: Failure) -> Self {
        match failure {
            Failure::Conflict { expected, actual } => Self::Conflict { expected, actual },
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
            // Putting a snapshot twice is harmless: a lost answer is only unavailability.
            Failure::Unavailable(error) | Failure::Unknown(error) => Self::Unavailable(error),
            Failure::Invalid(message) => Self::InvalidArgument(message),
            Failure::Corrupt(message) => Self::Corrupt(message),
            Failure::Internal(error) => Self::Internal(error),
            // Snapshots have no sequence condition: never raised for them.
            Failure::Conflict { expected, actual } => Self::Internal(
                format!("a sequence conflict ({expected} expected, {actual} found)").into(),
            ),
        }
    }
}

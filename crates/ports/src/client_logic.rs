//! The client logic port: the code, in any language, that decides what a command causes.

use angzarr_proto::v1::{BusinessReply, ContextualCommand};
use async_trait::async_trait;

/// Why client logic gave no reply. A refusal of the command is not an error: it is a
/// [`BusinessReply`] carrying a `Rejection`.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum ClientLogicError {
    /// The command cannot be understood (unknown payload type, undecodable bytes).
    #[error("invalid command: {0}")]
    InvalidCommand(String),
    /// The history handed to the logic cannot be understood (unknown event type...).
    #[error("invalid history: {0}")]
    InvalidHistory(String),
    /// The snapshot handed to the logic cannot be understood (an older state layout...). The
    /// core then deletes it and hands the logic every event instead.
    #[error("invalid snapshot: {0}")]
    InvalidSnapshot(String),
    /// The logic failed: a Python exception, a Go panic, a Rust panic, an error status.
    #[error("client logic failed: {0}")]
    Failed(String),
    /// The logic answered something that is not a valid `BusinessReply`.
    #[error("client logic gave an invalid reply: {0}")]
    InvalidReply(String),
    /// Out-of-process logic could not be reached.
    #[error("client logic unavailable: {0}")]
    Unavailable(String),
    /// The logic did not answer in time.
    #[error("client logic timed out after {0:?}")]
    Timeout(std::time::Duration),
}

/// Decides which events a command causes, given the aggregate's history.
///
/// # Contract
/// - The logic is a pure decision: it must not write anywhere. The framework appends what it
///   returns, or nothing.
/// - It receives the latest snapshot (if any) and every event after it, and answers with
///   events whose sequences continue the history, or with a rejection.
/// - Blocking implementations (in-process Python or Go) run on `spawn_blocking` so that the
///   async runtime is never blocked; a panic or exception becomes
///   [`ClientLogicError::Failed`] and never unwinds into the caller.
/// - It may be called concurrently for different aggregates, and again for the same command
///   when the framework retries after a sequence conflict.
#[async_trait]
pub trait ClientLogic: Send + Sync + 'static {
    /// Decides on `command`.
    async fn handle(&self, command: ContextualCommand) -> Result<BusinessReply, ClientLogicError>;
}

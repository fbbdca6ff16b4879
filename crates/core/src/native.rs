//! Client logic written in Rust, in-process: an [`Aggregate`] and the [`NativeLogic`] adapter
//! that gives it the [`ClientLogic`] interface.

use std::marker::PhantomData;
use std::panic::{AssertUnwindSafe, catch_unwind};

use angzarr_ports::{ClientLogic, ClientLogicError, async_trait};
use angzarr_proto::v1::{
    BusinessReply, ContextualCommand, EventPage, EventsEmitted, Rejection, business_reply::Outcome,
};
use prost::{Message, Name};
use prost_types::Any;

/// An aggregate's state and its decisions, in plain Rust.
///
/// The state, commands and events are protobuf messages (prost), so that they travel as
/// `google.protobuf.Any` and the state can be snapshotted. The framework folds the history
/// with [`apply`](Self::apply), then calls [`handle`](Self::handle) for each command page.
pub trait Aggregate: Message + Name + Default + 'static {
    /// The commands the aggregate accepts.
    type Command: Message + Name + Default;
    /// The events the aggregate emits.
    type Event: Message + Name + Default;

    /// Folds one event into the state. Must not fail: events are facts.
    fn apply(&mut self, event: &Self::Event);

    /// Decides which events `command` causes, or refuses it with [`reject`].
    fn handle(&self, command: Self::Command) -> Result<Vec<Self::Event>, Rejection>;
}

/// Decodes `google.protobuf.Any`s of one message type, checking each type URL against one
/// computed up front (`Any::to_msg` formats it anew for every message, which dominates a fold
/// of small events).
pub struct Unpacker<M> {
    type_url: String,
    message: PhantomData<fn() -> M>,
}

/// Why an `Any` could not be unpacked.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum UnpackError {
    /// The `Any` holds another type.
    #[error("expected a {expected}, found {found:?}")]
    WrongType {
        /// The type URL the unpacker wants.
        expected: String,
        /// The type URL of the `Any`.
        found: String,
    },
    /// The bytes are not a valid message of the type.
    #[error("undecodable {type_url}: {error}")]
    Undecodable {
        /// The type URL.
        type_url: String,
        /// What prost said.
        error: prost::DecodeError,
    },
}

impl<M: Message + Name + Default> Unpacker<M> {
    /// An unpacker of `M`s.
    pub fn new() -> Self {
        Self {
            type_url: M::type_url(),
            message: PhantomData,
        }
    }

    /// The message in `any`, if it holds an `M`.
    pub fn unpack(&self, any: &Any) -> Result<M, UnpackError> {
        if any.type_url != self.type_url {
            return Err(UnpackError::WrongType {
                expected: self.type_url.clone(),
                found: any.type_url.clone(),
            });
        }
        M::decode(any.value.as_slice()).map_err(|error| UnpackError::Undecodable {
            type_url: self.type_url.clone(),
            error,
        })
    }
}

impl<M: Message + Name + Default> Default for Unpacker<M> {
    fn default() -> Self {
        Self::new()
    }
}

/// Refuses a command: `return reject("insufficient funds")`.
pub fn reject<T>(reason: impl Into<String>) -> Result<T, Rejection> {
    Err(Rejection {
        reason: reason.into(),
    })
}

/// Runs an [`Aggregate`] as [`ClientLogic`], in-process.
///
/// A panic in the aggregate becomes [`ClientLogicError::Failed`]: it never unwinds into the
/// framework.
pub struct NativeLogic<A> {
    snapshot_every: Option<u64>,
    aggregate: PhantomData<fn() -> A>,
}

impl<A: Aggregate> NativeLogic<A> {
    /// The aggregate's logic, without snapshots.
    pub fn new() -> Self {
        Self {
            snapshot_every: None,
            aggregate: PhantomData,
        }
    }

    /// Returns the state as a snapshot whenever the aggregate's event count crosses a multiple
    /// of `events` (0 disables snapshots).
    pub fn snapshot_every(mut self, events: u64) -> Self {
        self.snapshot_every = (events > 0).then_some(events);
        self
    }

    /// Folds the history and decides; the part that runs user code.
    fn decide(&self, command: ContextualCommand) -> Result<BusinessReply, ClientLogicError> {
        let book = command.events.unwrap_or_default();
        let mut next_sequence = book
            .snapshot
            .as_ref()
            .map_or(0, |snapshot| snapshot.sequence + 1);
        let mut state = match book.snapshot.and_then(|snapshot| snapshot.state) {
            Some(state) => Unpacker::<A>::new()
                .unpack(&state)
                .map_err(|e| invalid_history("the snapshot", e))?,
            None => A::default(),
        };
        let events = Unpacker::<A::Event>::new();
        for page in &book.pages {
            let payload = page.payload.as_ref().ok_or_else(|| {
                ClientLogicError::InvalidHistory(format!("event {} has no payload", page.sequence))
            })?;
            let event = events
                .unpack(payload)
                .map_err(|e| invalid_history("an event", e))?;
            state.apply(&event);
            next_sequence = page.sequence + 1;
        }
        let first_sequence = next_sequence;
        let mut pages = Vec::new();
        for page in command.command.map(|book| book.pages).unwrap_or_default() {
            let payload = page.payload.unwrap_or_default();
            let command = Unpacker::<A::Command>::new()
                .unpack(&payload)
                .map_err(|error| ClientLogicError::InvalidCommand(error.to_string()))?;
            let events = match state.handle(command) {
                Ok(events) => events,
                Err(rejection) => {
                    return Ok(BusinessReply {
                        outcome: Some(Outcome::Rejection(rejection)),
                    });
                }
            };
            for event in events {
                state.apply(&event);
                let payload =
                    Any::from_msg(&event).map_err(|e| ClientLogicError::Failed(e.to_string()))?;
                pages.push(EventPage {
                    sequence: next_sequence,
                    payload: Some(payload),
                    ..EventPage::default()
                });
                next_sequence += 1;
            }
        }
        let crossed = |every: u64| next_sequence / every > first_sequence / every;
        let snapshot_state = match self.snapshot_every {
            Some(every) if crossed(every) => {
                Some(Any::from_msg(&state).map_err(|e| ClientLogicError::Failed(e.to_string()))?)
            }
            _ => None,
        };
        Ok(BusinessReply {
            outcome: Some(Outcome::Events(EventsEmitted {
                pages,
                snapshot_state,
            })),
        })
    }
}

impl<A: Aggregate> Default for NativeLogic<A> {
    fn default() -> Self {
        Self::new()
    }
}

/// Histories longer than this are folded on tokio's blocking pool rather than on the async
/// runtime's thread.
const FOLD_INLINE_LIMIT: usize = 1_024;

#[async_trait]
impl<A: Aggregate> ClientLogic for NativeLogic<A> {
    async fn handle(&self, command: ContextualCommand) -> Result<BusinessReply, ClientLogicError> {
        let events = command.events.as_ref().map_or(0, |book| book.pages.len());
        let logic = Self {
            snapshot_every: self.snapshot_every,
            aggregate: PhantomData,
        };
        match tokio::runtime::Handle::try_current() {
            Ok(runtime) if events > FOLD_INLINE_LIMIT => runtime
                .spawn_blocking(move || logic.decide_contained(command))
                .await
                .map_err(|error| {
                    ClientLogicError::Failed(format!("the fold was cancelled: {error}"))
                })?,
            _ => logic.decide_contained(command),
        }
    }
}

impl<A: Aggregate> NativeLogic<A> {
    /// [`Self::decide`], with a panic turned into [`ClientLogicError::Failed`].
    fn decide_contained(
        &self,
        command: ContextualCommand,
    ) -> Result<BusinessReply, ClientLogicError> {
        catch_unwind(AssertUnwindSafe(|| self.decide(command))).unwrap_or_else(|panic| {
            let message = panic
                .downcast_ref::<&str>()
                .map(|s| (*s).to_owned())
                .or_else(|| panic.downcast_ref::<String>().cloned())
                .unwrap_or_else(|| "unknown panic payload".into());
            Err(ClientLogicError::Failed(format!(
                "{} panicked: {message}",
                A::full_name()
            )))
        })
    }
}

fn invalid_history(what: &str, error: UnpackError) -> ClientLogicError {
    ClientLogicError::InvalidHistory(format!("{what}: {error}"))
}

//! Client logic written in Rust, in-process: an [`Aggregate`] and the [`NativeLogic`] adapter
//! that gives it the [`ClientLogic`] interface.

use std::marker::PhantomData;
use std::num::NonZeroU64;
use std::panic::{AssertUnwindSafe, catch_unwind};

use angzarr_ports::{ClientLogic, ClientLogicError, async_trait};
use angzarr_proto::v1::{
    BusinessReply, ContextualCommand, EventPage, EventsEmitted, Rejection, business_reply::Outcome,
};
use prost::{Message, Name};
use prost_types::Any;

use crate::snapshot_every::reaches_multiple;

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

/// The prefix of the type URLs this crate writes, the one every protobuf runtime packs `Any`
/// with (Python's `Any.Pack`, Go's `anypb.New`, grpcurl's JSON `@type`), so that events
/// written here unpack anywhere.
pub const TYPE_URL_PREFIX: &str = "type.googleapis.com/";

/// The type URL `M` is packed with: [`Name::type_url`] if the message names a domain of its
/// own, else [`TYPE_URL_PREFIX`] and its full name (prost's default has an empty prefix,
/// `/package.Message`, which other runtimes do not write).
pub fn type_url<M: Name>() -> String {
    let url = M::type_url();
    if url.starts_with('/') {
        format!("{TYPE_URL_PREFIX}{}", M::full_name())
    } else {
        url
    }
}

/// The full type name a type URL designates: the part after its last `/`, whatever comes
/// before (the protobuf rule). `None` if there is no `/`, which no valid type URL lacks.
pub fn type_name(type_url: &str) -> Option<&str> {
    type_url.rsplit_once('/').map(|(_, name)| name)
}

/// Packs `message` into a `google.protobuf.Any` under its standard [`type_url`].
pub fn pack<M: Message + Name>(message: &M) -> Any {
    Any {
        type_url: type_url::<M>(),
        value: message.encode_to_vec(),
    }
}

/// Packs and unpacks `google.protobuf.Any`s of one message type, with the type name and URL
/// computed up front (`Any::to_msg` and `Any::from_msg` format them anew for every message,
/// which dominates a fold of small events).
///
/// Any prefix is accepted on unpacking, since only the name after the last `/` identifies the
/// type; packing writes the standard one ([`type_url`]).
pub struct Unpacker<M> {
    full_name: String,
    type_url: String,
    message: PhantomData<fn() -> M>,
}

/// Why an `Any` could not be unpacked.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum UnpackError {
    /// The `Any` holds another type.
    #[error("expected a {expected}, found {found:?}")]
    WrongType {
        /// The full name of the type the unpacker wants.
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
            full_name: M::full_name(),
            type_url: type_url::<M>(),
            message: PhantomData,
        }
    }

    /// The message in `any`, if it holds an `M` (under any type URL prefix).
    pub fn unpack(&self, any: &Any) -> Result<M, UnpackError> {
        // The standard URL, as nearly every `Any` has, is one comparison; any other prefix is
        // looked past.
        if any.type_url != self.type_url && type_name(&any.type_url) != Some(&self.full_name) {
            return Err(UnpackError::WrongType {
                expected: self.full_name.clone(),
                found: any.type_url.clone(),
            });
        }
        M::decode(any.value.as_slice()).map_err(|error| UnpackError::Undecodable {
            type_url: any.type_url.clone(),
            error,
        })
    }

    /// `message` packed under the standard type URL, as [`pack`] does.
    pub fn pack(&self, message: &M) -> Any {
        Any {
            type_url: self.type_url.clone(),
            value: message.encode_to_vec(),
        }
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
    snapshot_every: Option<NonZeroU64>,
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
        self.snapshot_every = NonZeroU64::new(events);
        self
    }

    /// Folds the history and decides; the part that runs user code.
    fn decide(&self, command: ContextualCommand) -> Result<BusinessReply, ClientLogicError> {
        let book = command.events.unwrap_or_default();
        let (mut state, mut next_sequence) = match book.snapshot {
            // Folding from a default state would skip the events the snapshot claims to hold.
            Some(snapshot) => {
                let state = snapshot.state.ok_or_else(|| {
                    ClientLogicError::InvalidSnapshot("the snapshot has no state".into())
                })?;
                let state = Unpacker::<A>::new()
                    .unpack(&state)
                    .map_err(|e| ClientLogicError::InvalidSnapshot(e.to_string()))?;
                (state, snapshot.sequence.saturating_add(1))
            }
            None => (A::default(), 0),
        };
        let event_codec = Unpacker::<A::Event>::new();
        for page in &book.pages {
            let payload = page.payload.as_ref().ok_or_else(|| {
                ClientLogicError::InvalidHistory(format!("event {} has no payload", page.sequence))
            })?;
            let event = event_codec
                .unpack(payload)
                .map_err(|e| invalid_history("an event", e))?;
            state.apply(&event);
            next_sequence = page.sequence + 1;
        }
        let first_sequence = next_sequence;
        let commands = Unpacker::<A::Command>::new();
        let mut pages = Vec::new();
        for page in command.command.map(|book| book.pages).unwrap_or_default() {
            let payload = page.payload.unwrap_or_default();
            let command = commands
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
                pages.push(EventPage {
                    sequence: next_sequence,
                    payload: Some(event_codec.pack(&event)),
                    ..EventPage::default()
                });
                next_sequence += 1;
            }
        }
        // The state goes back with every reply that changed it, so that the next command is
        // handed it instead of the history; it is persisted only at the snapshot interval.
        let (snapshot_state, state) = match self.snapshot_every {
            _ if pages.is_empty() => (None, None),
            Some(every) if reaches_multiple(first_sequence, next_sequence - 1, every) => {
                (Some(pack(&state)), None)
            }
            _ => (None, Some(pack(&state))),
        };
        Ok(BusinessReply {
            outcome: Some(Outcome::Events(EventsEmitted {
                pages,
                snapshot_state,
                state,
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

#[cfg(test)]
mod tests {
    use super::*;
    use angzarr_proto::v1::{CommandBook, CommandPage, EventBook, Snapshot};

    /// A counter: every command adds its amount, as one event carrying it.
    #[derive(Clone, PartialEq, prost::Message)]
    struct Counter {
        #[prost(uint64, tag = "1")]
        total: u64,
    }

    #[derive(Clone, PartialEq, prost::Message)]
    struct Add {
        #[prost(uint64, tag = "1")]
        amount: u64,
    }

    /// A message that names its own type URL domain.
    #[derive(Clone, PartialEq, prost::Message)]
    struct Branded {}

    impl Name for Counter {
        const NAME: &'static str = "Counter";
        const PACKAGE: &'static str = "test.v1";
    }

    impl Name for Add {
        const NAME: &'static str = "Add";
        const PACKAGE: &'static str = "test.v1";
    }

    impl Name for Branded {
        const NAME: &'static str = "Branded";
        const PACKAGE: &'static str = "test.v1";
        fn type_url() -> String {
            "example.com/types/test.v1.Branded".into()
        }
    }

    impl Aggregate for Counter {
        type Command = Add;
        type Event = Add;

        fn apply(&mut self, event: &Add) {
            self.total += event.amount;
        }

        fn handle(&self, command: Add) -> Result<Vec<Add>, Rejection> {
            Ok(vec![command])
        }
    }

    fn any(type_url: &str, message: &impl Message) -> Any {
        Any {
            type_url: type_url.into(),
            value: message.encode_to_vec(),
        }
    }

    /// Decides `command` after a snapshot at sequence 0 and the `history` that follows it,
    /// snapshotting every event.
    fn decide(history: Vec<Any>, snapshot: Any, command: Any) -> BusinessReply {
        let pages = (1u64..)
            .zip(history)
            .map(|(sequence, payload)| EventPage {
                sequence,
                payload: Some(payload),
                ..EventPage::default()
            })
            .collect();
        let contextual = ContextualCommand {
            events: Some(EventBook {
                snapshot: Some(Snapshot {
                    sequence: 0,
                    state: Some(snapshot),
                }),
                pages,
                ..EventBook::default()
            }),
            command: Some(CommandBook {
                pages: vec![CommandPage {
                    payload: Some(command),
                }],
                ..CommandBook::default()
            }),
        };
        NativeLogic::<Counter>::new()
            .snapshot_every(1)
            .decide_contained(contextual)
            .unwrap()
    }

    #[test]
    fn packing_writes_the_standard_prefix_unless_the_message_names_its_own() {
        assert_eq!(type_url::<Add>(), "type.googleapis.com/test.v1.Add");
        assert_eq!(
            pack(&Add { amount: 3 }),
            any("type.googleapis.com/test.v1.Add", &Add { amount: 3 })
        );
        assert_eq!(
            Unpacker::<Add>::new().pack(&Add { amount: 3 }),
            pack(&Add { amount: 3 })
        );
        assert_eq!(type_url::<Branded>(), "example.com/types/test.v1.Branded");
    }

    #[test]
    fn any_prefix_unpacks_and_only_the_name_after_the_last_slash_counts() {
        let unpacker = Unpacker::<Add>::new();
        let add = Add { amount: 7 };
        for url in [
            "type.googleapis.com/test.v1.Add",
            "/test.v1.Add",
            "example.com/a/b/test.v1.Add",
            "https://types.example.com/test.v1.Add",
        ] {
            assert_eq!(unpacker.unpack(&any(url, &add)), Ok(add.clone()), "{url}");
        }
        for url in [
            "test.v1.Add",
            "",
            "type.googleapis.com/test.v1.Add/",
            "type.googleapis.com/test.v1.Addition",
            "type.googleapis.com/other.test.v1.Add",
            "type.googleapis.com/v1.Add",
        ] {
            assert!(
                matches!(
                    unpacker.unpack(&any(url, &add)),
                    Err(UnpackError::WrongType { .. })
                ),
                "{url:?} was accepted"
            );
        }
        let error = unpacker.unpack(&any("x/Nope", &add)).unwrap_err();
        assert_eq!(
            error.to_string(),
            r#"expected a test.v1.Add, found "x/Nope""#
        );
    }

    #[test]
    fn logic_accepts_commands_and_history_from_any_runtime_and_emits_the_standard_prefix() {
        let history = vec![
            any("/test.v1.Add", &Add { amount: 1 }),
            any("type.googleapis.com/test.v1.Add", &Add { amount: 2 }),
        ];
        let snapshot = any("/test.v1.Counter", &Counter { total: 10 });
        let command = any("type.googleapis.com/test.v1.Add", &Add { amount: 5 });
        let Some(Outcome::Events(emitted)) = decide(history, snapshot, command).outcome else {
            panic!("the command was not accepted");
        };
        let [page] = emitted.pages.as_slice() else {
            panic!("expected one event, got {:?}", emitted.pages);
        };
        assert_eq!(page.sequence, 3);
        assert_eq!(
            page.payload,
            Some(any("type.googleapis.com/test.v1.Add", &Add { amount: 5 }))
        );
        assert_eq!(
            emitted.snapshot_state,
            Some(any(
                "type.googleapis.com/test.v1.Counter",
                &Counter { total: 18 }
            ))
        );
    }

    #[test]
    fn a_command_of_another_type_is_invalid() {
        let contextual = ContextualCommand {
            command: Some(CommandBook {
                pages: vec![CommandPage {
                    payload: Some(any(
                        "type.googleapis.com/test.v1.Counter",
                        &Counter::default(),
                    )),
                }],
                ..CommandBook::default()
            }),
            ..ContextualCommand::default()
        };
        let error = NativeLogic::<Counter>::new()
            .decide_contained(contextual)
            .unwrap_err();
        assert_eq!(
            error,
            ClientLogicError::InvalidCommand(
                r#"expected a test.v1.Add, found "type.googleapis.com/test.v1.Counter""#.into()
            )
        );
    }
}

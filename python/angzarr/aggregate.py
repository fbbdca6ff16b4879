"""Aggregates in plain Python: a state message, `@handles` and `@applies` methods.

The decision rules are those of the Rust `NativeLogic`, so that the same domain written in
either language stores the same bytes: the state is rebuilt from the snapshot and the events
after it, each command page is handled in turn on the state its predecessors left, and the
reply carries the new state (`snapshot_state` when the event count crosses a multiple of
`snapshot_every`, else `state`; neither when nothing was emitted).
"""

from __future__ import annotations

from typing import Callable, Iterable

from google.protobuf.any_pb2 import Any
from google.protobuf.message import DecodeError, Message

from angzarr.errors import InvalidCommand, InvalidHistory, InvalidSnapshot, Rejected
from angzarr.v1.types_pb2 import BusinessReply, ContextualCommand, Rejection

#: The prefix every protobuf runtime packs `Any` with; only the name after the last `/` is
#: read when unpacking.
TYPE_URL_PREFIX = "type.googleapis.com/"

_U64_MAX = 2**64 - 1


def type_name(type_url: str) -> str | None:
    """The full type name of a type URL: the part after its last `/`; None without one."""
    _, slash, name = type_url.rpartition("/")
    return name if slash else None


def type_url(message_type: type[Message]) -> str:
    """The type URL `message_type` is packed with."""
    return TYPE_URL_PREFIX + message_type.DESCRIPTOR.full_name


def pack(message: Message) -> Any:
    """`message` in an `Any` under the standard type URL."""
    return Any(type_url=type_url(type(message)), value=message.SerializeToString())


def handles(command_type: type[Message]):
    """Marks a method of an `Aggregate` as the handler of `command_type`.

    The method receives the command and returns the events it causes: one message, a list,
    or None for none. It refuses the command with `reject(reason)` (or by returning a
    `Rejected`). `self.state` is the current state; handlers must not change it."""

    def mark(method):
        method._angzarr_handles = command_type
        return method

    return mark


def applies(event_type: type[Message]):
    """Marks a method of an `Aggregate` as the fold of `event_type` into `self.state`."""

    def mark(method):
        method._angzarr_applies = event_type
        return method

    return mark


class Aggregate:
    """The base of an aggregate: set `state` to the state's message class, and write the
    `@handles` and `@applies` methods.

    When the commands or events travel inside an envelope message (a `oneof` of every
    command or event type, as in the bank example), set `commands` or `events` to it:
    commands are then unwrapped before dispatch, and events are wrapped in it before they
    are stored. An envelope whose `oneof` is unset is dispatched as itself.
    """

    #: The state's message class; also the snapshot's.
    state_type: type[Message]
    #: The envelope commands arrive in, if any.
    commands: type[Message] | None = None
    #: The envelope events are stored in, if any.
    events: type[Message] | None = None

    _handlers: dict[str, tuple[type[Message], Callable]]
    _appliers: dict[str, tuple[type[Message], Callable]]
    _wrap_names: dict[str, str]

    def __init__(self, state: Message):
        self.state = state

    def __init_subclass__(cls, **kwargs):
        super().__init_subclass__(**kwargs)
        cls._handlers, cls._appliers = {}, {}
        for klass in reversed(cls.__mro__):
            for attribute in vars(klass).values():
                for marker, table in (
                    ("_angzarr_handles", cls._handlers),
                    ("_angzarr_applies", cls._appliers),
                ):
                    message_type = getattr(attribute, marker, None)
                    if message_type is not None:
                        table[message_type.DESCRIPTOR.full_name] = (message_type, attribute)
        # The envelope field of each event type, to wrap what handlers return.
        cls._wrap_names = {}
        if cls.events is not None:
            cls._wrap_names = {
                field.message_type.full_name: field.name
                for field in cls.events.DESCRIPTOR.fields
                if field.containing_oneof is not None and field.message_type is not None
            }

    @classmethod
    def logic(cls, snapshot_every: int = 0) -> "Logic":
        """The aggregate's decisions, snapshotting every `snapshot_every` events (0: never)."""
        return Logic(cls, snapshot_every)

    @classmethod
    def entry(cls, snapshot_every: int = 0) -> Callable[[bytes], bytes]:
        """The module-level entry point of the Python bridge: `handle = Bank.entry()`."""
        return cls.logic(snapshot_every).handle


_ONEOFS: dict[type, str | None] = {}


def _unwrap(message: Message) -> Message:
    """The message set in an envelope's oneof, or the envelope itself when none is."""
    message_type = type(message)
    try:
        oneof = _ONEOFS[message_type]
    except KeyError:
        oneofs = message.DESCRIPTOR.oneofs
        oneof = _ONEOFS[message_type] = oneofs[0].name if len(oneofs) == 1 else None
    if oneof is not None:
        which = message.WhichOneof(oneof)
        if which is not None:
            return getattr(message, which)
    return message


def _quoted(text: str) -> str:
    """Rust's `{:?}` of a string, so that messages read the same from either language."""
    return '"' + text.replace("\\", "\\\\").replace('"', '\\"') + '"'


class Logic:
    """An aggregate's decisions on `ContextualCommand`s (see `Aggregate.logic`).

    `handle(bytes) -> bytes` is the bridge's contract; `decide(message) -> message` is the
    same on messages, for the gRPC server and for dispatching in Python first."""

    def __init__(self, aggregate: type[Aggregate], snapshot_every: int = 0):
        if snapshot_every < 0:
            raise ValueError("snapshot_every must be 0 (never) or positive")
        self.aggregate = aggregate
        self.snapshot_every = snapshot_every
        self._state_name = aggregate.state_type.DESCRIPTOR.full_name
        self._state_url = type_url(aggregate.state_type)
        self._commands = self._accepted(aggregate.commands, aggregate._handlers)
        self._events = self._accepted(aggregate.events, aggregate._appliers)
        self._event_urls: dict[type[Message], str] = {}

    @staticmethod
    def _accepted(envelope, table) -> dict[str, type[Message]]:
        """Type name → class of what may arrive: the envelope alone if there is one (as the
        Rust logic, which accepts its one command type), else the registered types."""
        if envelope is not None:
            return {envelope.DESCRIPTOR.full_name: envelope}
        return {name: message_type for name, (message_type, _) in table.items()}

    def handle(self, command: bytes) -> bytes:
        """Decides on an encoded `ContextualCommand`; answers an encoded `BusinessReply`."""
        try:
            contextual = ContextualCommand.FromString(command)
        except DecodeError as error:
            raise InvalidCommand(f"not a ContextualCommand: {error}") from None
        return self.decide(contextual).SerializeToString()

    def decide(self, command: ContextualCommand) -> BusinessReply:
        """Folds the history and decides on every command page."""
        book = command.events
        if book.HasField("snapshot"):
            snapshot = book.snapshot
            if not snapshot.HasField("state"):
                raise InvalidSnapshot("the snapshot has no state")
            state = self._unpack_state(snapshot.state)
            next_sequence = min(snapshot.sequence + 1, _U64_MAX)
        else:
            state = self.aggregate.state_type()
            next_sequence = 0
        aggregate = self.aggregate(state)
        for page in book.pages:
            if not page.HasField("payload"):
                raise InvalidHistory(f"event {page.sequence} has no payload")
            self._apply(aggregate, self._unpack_event(page.payload))
            next_sequence = page.sequence + 1
        first_sequence = next_sequence
        reply = BusinessReply()
        emitted = reply.events
        emitted.SetInParent()
        handlers = self.aggregate._handlers
        for command_page in command.command.pages:
            message = _unwrap(self._unpack(command_page.payload, self._commands, self.aggregate.commands, InvalidCommand, ""))
            entry = handlers.get(message.DESCRIPTOR.full_name)
            if entry is None:
                raise InvalidCommand(f"no handler for {message.DESCRIPTOR.full_name}")
            try:
                events = entry[1](aggregate, message)
            except Rejected as rejected:
                return BusinessReply(rejection=Rejection(reason=rejected.reason))
            if isinstance(events, Rejected):
                return BusinessReply(rejection=Rejection(reason=events.reason))
            if isinstance(events, Rejection):
                return BusinessReply(rejection=events)
            for event in _events(events):
                stored = self._wrap(event)
                self._apply(aggregate, _unwrap(stored))
                # Filled in place: building an EventPage and an Any first would copy both.
                page = emitted.pages.add()
                page.sequence = next_sequence
                payload = page.payload
                payload.type_url = self._event_url(stored)
                payload.value = stored.SerializeToString()
                next_sequence += 1
        if next_sequence != first_sequence:
            every = self.snapshot_every
            state_any = emitted.snapshot_state if every and next_sequence // every > first_sequence // every else emitted.state
            state_any.type_url = self._state_url
            state_any.value = aggregate.state.SerializeToString()
        return reply

    def _unpack(self, payload: Any, accepted, envelope, error, what) -> Message:
        name = type_name(payload.type_url)
        message_type = accepted.get(name) if name is not None else None
        if message_type is None:
            expected = envelope.DESCRIPTOR.full_name if envelope is not None else " or ".join(sorted(accepted)) or "nothing"
            raise error(f"{what}expected a {expected}, found {_quoted(payload.type_url)}")
        try:
            return message_type.FromString(payload.value)
        except DecodeError as decode_error:
            raise error(f"{what}undecodable {payload.type_url}: {decode_error}") from None

    def _unpack_state(self, payload: Any) -> Message:
        return self._unpack(payload, {self._state_name: self.aggregate.state_type}, self.aggregate.state_type, InvalidSnapshot, "")

    def _unpack_event(self, payload: Any) -> Message:
        return _unwrap(self._unpack(payload, self._events, self.aggregate.events, InvalidHistory, "an event: "))

    def _apply(self, aggregate: Aggregate, event: Message) -> None:
        entry = self.aggregate._appliers.get(event.DESCRIPTOR.full_name)
        if entry is not None:
            entry[1](aggregate, event)

    def _wrap(self, event: Message) -> Message:
        """`event` in the events envelope, if the aggregate has one."""
        envelope = self.aggregate.events
        if envelope is None or type(event) is envelope:
            return event
        field = self.aggregate._wrap_names.get(event.DESCRIPTOR.full_name)
        if field is None:
            raise TypeError(f"{event.DESCRIPTOR.full_name} is not an event of {envelope.DESCRIPTOR.full_name}")
        return envelope(**{field: event})

    def _event_url(self, event: Message) -> str:
        url = self._event_urls.get(type(event))
        if url is None:
            url = self._event_urls[type(event)] = type_url(type(event))
        return url


def _events(emitted) -> Iterable[Message]:
    if emitted is None:
        return ()
    if isinstance(emitted, Message):
        return (emitted,)
    return emitted

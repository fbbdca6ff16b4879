import datetime

from google.protobuf import any_pb2 as _any_pb2
from google.protobuf import timestamp_pb2 as _timestamp_pb2
from google.protobuf.internal import containers as _containers
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Iterable as _Iterable, Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class Cover(_message.Message):
    __slots__ = ("domain", "root", "correlation_id")
    DOMAIN_FIELD_NUMBER: _ClassVar[int]
    ROOT_FIELD_NUMBER: _ClassVar[int]
    CORRELATION_ID_FIELD_NUMBER: _ClassVar[int]
    domain: str
    root: str
    correlation_id: str
    def __init__(self, domain: _Optional[str] = ..., root: _Optional[str] = ..., correlation_id: _Optional[str] = ...) -> None: ...

class EventPage(_message.Message):
    __slots__ = ("sequence", "created_at", "payload", "correlation_id")
    SEQUENCE_FIELD_NUMBER: _ClassVar[int]
    CREATED_AT_FIELD_NUMBER: _ClassVar[int]
    PAYLOAD_FIELD_NUMBER: _ClassVar[int]
    CORRELATION_ID_FIELD_NUMBER: _ClassVar[int]
    sequence: int
    created_at: _timestamp_pb2.Timestamp
    payload: _any_pb2.Any
    correlation_id: str
    def __init__(self, sequence: _Optional[int] = ..., created_at: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ..., payload: _Optional[_Union[_any_pb2.Any, _Mapping]] = ..., correlation_id: _Optional[str] = ...) -> None: ...

class Snapshot(_message.Message):
    __slots__ = ("sequence", "state")
    SEQUENCE_FIELD_NUMBER: _ClassVar[int]
    STATE_FIELD_NUMBER: _ClassVar[int]
    sequence: int
    state: _any_pb2.Any
    def __init__(self, sequence: _Optional[int] = ..., state: _Optional[_Union[_any_pb2.Any, _Mapping]] = ...) -> None: ...

class EventBook(_message.Message):
    __slots__ = ("cover", "snapshot", "pages")
    COVER_FIELD_NUMBER: _ClassVar[int]
    SNAPSHOT_FIELD_NUMBER: _ClassVar[int]
    PAGES_FIELD_NUMBER: _ClassVar[int]
    cover: Cover
    snapshot: Snapshot
    pages: _containers.RepeatedCompositeFieldContainer[EventPage]
    def __init__(self, cover: _Optional[_Union[Cover, _Mapping]] = ..., snapshot: _Optional[_Union[Snapshot, _Mapping]] = ..., pages: _Optional[_Iterable[_Union[EventPage, _Mapping]]] = ...) -> None: ...

class CommandPage(_message.Message):
    __slots__ = ("payload",)
    PAYLOAD_FIELD_NUMBER: _ClassVar[int]
    payload: _any_pb2.Any
    def __init__(self, payload: _Optional[_Union[_any_pb2.Any, _Mapping]] = ...) -> None: ...

class CommandBook(_message.Message):
    __slots__ = ("cover", "pages", "expected_sequence", "request_id", "retry_on_conflict")
    COVER_FIELD_NUMBER: _ClassVar[int]
    PAGES_FIELD_NUMBER: _ClassVar[int]
    EXPECTED_SEQUENCE_FIELD_NUMBER: _ClassVar[int]
    REQUEST_ID_FIELD_NUMBER: _ClassVar[int]
    RETRY_ON_CONFLICT_FIELD_NUMBER: _ClassVar[int]
    cover: Cover
    pages: _containers.RepeatedCompositeFieldContainer[CommandPage]
    expected_sequence: int
    request_id: str
    retry_on_conflict: bool
    def __init__(self, cover: _Optional[_Union[Cover, _Mapping]] = ..., pages: _Optional[_Iterable[_Union[CommandPage, _Mapping]]] = ..., expected_sequence: _Optional[int] = ..., request_id: _Optional[str] = ..., retry_on_conflict: _Optional[bool] = ...) -> None: ...

class ContextualCommand(_message.Message):
    __slots__ = ("events", "command")
    EVENTS_FIELD_NUMBER: _ClassVar[int]
    COMMAND_FIELD_NUMBER: _ClassVar[int]
    events: EventBook
    command: CommandBook
    def __init__(self, events: _Optional[_Union[EventBook, _Mapping]] = ..., command: _Optional[_Union[CommandBook, _Mapping]] = ...) -> None: ...

class EventsEmitted(_message.Message):
    __slots__ = ("pages", "snapshot_state", "state")
    PAGES_FIELD_NUMBER: _ClassVar[int]
    SNAPSHOT_STATE_FIELD_NUMBER: _ClassVar[int]
    STATE_FIELD_NUMBER: _ClassVar[int]
    pages: _containers.RepeatedCompositeFieldContainer[EventPage]
    snapshot_state: _any_pb2.Any
    state: _any_pb2.Any
    def __init__(self, pages: _Optional[_Iterable[_Union[EventPage, _Mapping]]] = ..., snapshot_state: _Optional[_Union[_any_pb2.Any, _Mapping]] = ..., state: _Optional[_Union[_any_pb2.Any, _Mapping]] = ...) -> None: ...

class Rejection(_message.Message):
    __slots__ = ("reason",)
    REASON_FIELD_NUMBER: _ClassVar[int]
    reason: str
    def __init__(self, reason: _Optional[str] = ...) -> None: ...

class BusinessReply(_message.Message):
    __slots__ = ("events", "rejection")
    EVENTS_FIELD_NUMBER: _ClassVar[int]
    REJECTION_FIELD_NUMBER: _ClassVar[int]
    events: EventsEmitted
    rejection: Rejection
    def __init__(self, events: _Optional[_Union[EventsEmitted, _Mapping]] = ..., rejection: _Optional[_Union[Rejection, _Mapping]] = ...) -> None: ...

class CommandResponse(_message.Message):
    __slots__ = ("events", "replayed")
    EVENTS_FIELD_NUMBER: _ClassVar[int]
    REPLAYED_FIELD_NUMBER: _ClassVar[int]
    events: EventBook
    replayed: bool
    def __init__(self, events: _Optional[_Union[EventBook, _Mapping]] = ..., replayed: _Optional[bool] = ...) -> None: ...

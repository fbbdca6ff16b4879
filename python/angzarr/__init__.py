"""Client logic for angzarr in Python.

Write an `Aggregate` (a state message, `@handles` and `@applies` methods), then expose it to
the in-process bridge with `handle = MyAggregate.entry()`, or serve it over gRPC with
`angzarr.server.serve(MyAggregate.logic(), address)`. See the README.
"""

from angzarr.aggregate import (
    TYPE_URL_PREFIX,
    Aggregate,
    Logic,
    applies,
    handles,
    pack,
    type_name,
    type_url,
)
from angzarr.errors import (
    AngzarrError,
    InvalidCommand,
    InvalidHistory,
    InvalidSnapshot,
    Rejected,
    reject,
)

__all__ = [
    "TYPE_URL_PREFIX",
    "Aggregate",
    "AngzarrError",
    "InvalidCommand",
    "InvalidHistory",
    "InvalidSnapshot",
    "Logic",
    "Rejected",
    "applies",
    "handles",
    "pack",
    "reject",
    "type_name",
    "type_url",
]

"""The exceptions a handler raises to say what went wrong.

The bridge and the gRPC server recognise `InvalidCommand`, `InvalidHistory` and
`InvalidSnapshot` by their class attribute `angzarr_error` (so any copy of this package
works); every other exception is a failure of the logic, reported with its traceback.
"""


class AngzarrError(Exception):
    """The base of the errors with a meaning for the framework."""

    #: The `ClientLogicError` this becomes: `invalid_command`, `invalid_history` or
    #: `invalid_snapshot`.
    angzarr_error = ""


class InvalidCommand(AngzarrError):
    """The command cannot be understood (unknown type, undecodable bytes)."""

    angzarr_error = "invalid_command"


class InvalidHistory(AngzarrError):
    """An event of the history cannot be understood."""

    angzarr_error = "invalid_history"


class InvalidSnapshot(AngzarrError):
    """The snapshot cannot be read (an older state layout...): the framework then deletes it
    and hands over every event instead."""

    angzarr_error = "invalid_snapshot"


class Rejected(Exception):
    """Refuses the command: not an error, it becomes a `Rejection` with this reason, which
    the caller receives as is. Raise it with `reject(reason)`, or return it."""

    def __init__(self, reason: str):
        super().__init__(reason)
        self.reason = reason


def reject(reason: str):
    """Refuses the command with `reason` (raises `Rejected`)."""
    raise Rejected(reason)

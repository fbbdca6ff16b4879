"""The bank on the domain `account`, and misbehaving logic on the other domains, for the
bridge's tests (the cross-language suite sends each fault to `Fault::domain()`)."""

import os
import sys
import time

from angzarr.v1.types_pb2 import ContextualCommand
from bank import Bank


def _fails(command):
    raise RuntimeError(f"the fixture fails on purpose ({len(command)} bytes)")


def _hangs(command):
    # Short sleeps, so that the bridge can interrupt the handler between two of them.
    while True:
        time.sleep(0.01)


def _hangs_in_c(command):
    # One long sleep in C, which no interruption reaches: the worker stays busy.
    time.sleep(3600)


def _exits(command):
    sys.exit(3)


def _dies(command):
    # The whole process, at once: only ever sent to a fixture served out of process.
    os._exit(3)


FAULTS = {
    "fault-fails": _fails,
    "fault-hangs": _hangs,
    "fault-hangs-in-c": _hangs_in_c,
    "fault-malformed": lambda command: b"\xff\xff\xff\xff",
    "fault-not-bytes": lambda command: "a str",
    "fault-empty-reply": lambda command: b"",
    "fault-exits": _exits,
    "fault-dies": _dies,
}


def fixture(snapshot_every=0):
    """A `handle` serving the bank with `snapshot_every`, and the faults."""
    bank = Bank.logic(snapshot_every)

    def handle(command: bytes) -> bytes:
        contextual = ContextualCommand.FromString(command)
        fault = FAULTS.get(contextual.command.cover.domain)
        if fault is not None:
            return fault(command)
        return bank.decide(contextual).SerializeToString()

    return handle


handle = fixture()

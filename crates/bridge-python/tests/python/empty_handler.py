"""The cheapest possible logic, for measuring the bridge itself: one constant reply
(`BusinessReply` with empty events)."""

REPLY = b"\n\x00"


def handle(command):
    return REPLY

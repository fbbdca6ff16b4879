"""Serves client logic out of process, behind `angzarr.v1.BusinessLogic.Handle` (grpcio).

    from angzarr.server import serve
    serve(Bank.logic(snapshot_every=100), "127.0.0.1:50052")   # or "unix:/run/bank.sock"

Errors become the gRPC statuses the host's gRPC bridge (`angzarr-bridge-grpc`) reads back as
the same `ClientLogicError`: `InvalidCommand` / `InvalidHistory` / `InvalidSnapshot` →
INVALID_ARGUMENT with the trailing metadata `angzarr-invalid: command|history|snapshot`, any
other exception → INTERNAL with its type, message and traceback.

Run a module's `handle` from the command line: `python -m angzarr.server MODULE ADDRESS`.
"""

from __future__ import annotations

import importlib
import sys
import traceback
from concurrent import futures

import grpc

from angzarr.v1.types_pb2 import BusinessReply, ContextualCommand

_SERVICE = "angzarr.v1.BusinessLogic"
# The exception's `angzarr_error` → the `angzarr-invalid` trailer of an INVALID_ARGUMENT.
_INVALID_PARTS = {
    "invalid_command": "command",
    "invalid_history": "history",
    "invalid_snapshot": "snapshot",
}


class Server:
    """A started server: `port` is the bound TCP port (0 for a unix socket)."""

    def __init__(self, server: grpc.Server, port: int):
        self.grpc = server
        self.port = port

    def wait(self, timeout: float | None = None) -> bool:
        """Blocks until the server stops (or `timeout` seconds pass)."""
        return self.grpc.wait_for_termination(timeout)

    def stop(self, grace: float | None = None):
        """Stops serving, letting calls in flight finish for `grace` seconds."""
        return self.grpc.stop(grace)


def _abort(context: grpc.ServicerContext, error: BaseException):
    kind = getattr(type(error), "angzarr_error", "")
    part = _INVALID_PARTS.get(kind)
    if part is None:
        details = "".join(traceback.format_exception(type(error), error, error.__traceback__))
        name = type(error).__qualname__
        module = type(error).__module__
        if module not in ("builtins", "__main__"):
            name = f"{module}.{name}"
        context.abort(grpc.StatusCode.INTERNAL, f"{name}: {error}\n{details}".strip())
    context.set_trailing_metadata((("angzarr-invalid", part),))
    context.abort(grpc.StatusCode.INVALID_ARGUMENT, str(error))


def _handler(logic):
    """A gRPC method handler over a `Logic` (messages) or a `handle(bytes) -> bytes`."""
    decide = getattr(logic, "decide", None)
    if decide is not None:

        def on_messages(request: ContextualCommand, context):
            try:
                return decide(request)
            except Exception as error:  # Every failure is the caller's to see, typed.
                _abort(context, error)

        return grpc.unary_unary_rpc_method_handler(
            on_messages,
            request_deserializer=ContextualCommand.FromString,
            response_serializer=BusinessReply.SerializeToString,
        )

    def on_bytes(request: bytes, context):
        try:
            return logic(request)
        except Exception as error:
            _abort(context, error)

    # No (de)serializers: the bytes go to the handler as the bridge would pass them.
    return grpc.unary_unary_rpc_method_handler(on_bytes)


def serve(logic, address: str, *, max_workers: int = 16, block: bool = True) -> Server:
    """Serves `logic` on `address` (`host:port`, port 0 for any, or `unix:/path`).

    `logic` is an `Aggregate.logic(...)` or any object with `decide(ContextualCommand) ->
    BusinessReply`, or a plain `handle(bytes) -> bytes` (what the in-process bridge calls).
    Blocks until the server stops unless `block` is false; returns the `Server`."""
    server = grpc.server(futures.ThreadPoolExecutor(max_workers=max_workers))
    server.add_generic_rpc_handlers(
        (grpc.method_handlers_generic_handler(_SERVICE, {"Handle": _handler(logic)}),)
    )
    port = server.add_insecure_port(address)
    if port == 0 and not address.startswith("unix:"):
        raise OSError(f"cannot listen on {address}")
    server.start()
    served = Server(server, port)
    if block:
        served.wait()
    return served


def main(argv: list[str]) -> int:
    if len(argv) != 3:
        print("usage: python -m angzarr.server MODULE ADDRESS", file=sys.stderr)
        return 2
    module = importlib.import_module(argv[1])
    served = serve(module.handle, argv[2], block=False)
    print(f"serving {argv[1]}.handle on {argv[2]} (port {served.port})", flush=True)
    served.wait()
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))

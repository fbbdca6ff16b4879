"""A client nobody here wrote: drives a running angzarr server with Python's grpcio.

Every message type is discovered through server reflection (v1alpha, which Python's client
speaks); nothing is generated from .proto files. Payloads are packed and unpacked with
protobuf's own `Any.Pack` / `Any.Unpack`, so this fails if the server's type URLs differ
from what every protobuf runtime writes.

Usage: python3 foreign_client.py HOST:PORT
Prints one line per check and exits 0 when all passed; a failure raises.
"""

import sys
import uuid

import grpc
from google.protobuf import any_pb2, descriptor_pool, message_factory
from grpc_reflection.v1alpha.proto_reflection_descriptor_database import (
    ProtoReflectionDescriptorDatabase,
)

STANDARD_PREFIX = "type.googleapis.com/"


def check(what, condition, detail=""):
    if not condition:
        raise AssertionError(f"{what}: {detail}")
    print(f"ok: {what}")


def main(address):
    channel = grpc.insecure_channel(address)
    grpc.channel_ready_future(channel).result(timeout=10)
    database = ProtoReflectionDescriptorDatabase(channel)
    pool = descriptor_pool.DescriptorPool(database)

    services = set(database.get_services())
    served = {
        "angzarr.v1.CommandGateway",
        "angzarr.v1.EventQuery",
        "grpc.health.v1.Health",
        "grpc.reflection.v1.ServerReflection",
        "grpc.reflection.v1alpha.ServerReflection",
    }
    check("reflection lists exactly the served services", services == served, sorted(services))

    # An unknown symbol is a NOT_FOUND answer in the stream, which the database turns into
    # a KeyError (a stream ended with an error status would raise grpc.RpcError instead).
    try:
        database.FindFileContainingSymbol("no.such.Symbol")
        check("an unknown symbol is not found", False, "it was found")
    except KeyError:
        check("an unknown symbol is not found", True)

    def message_class(name):
        return message_factory.GetMessageClass(pool.FindMessageTypeByName(name))

    def method(service, name):
        descriptor = pool.FindServiceByName(service).methods_by_name[name]
        request = message_factory.GetMessageClass(descriptor.input_type)
        response = message_factory.GetMessageClass(descriptor.output_type)
        call = channel.unary_unary(
            f"/{service}/{name}",
            request_serializer=request.SerializeToString,
            response_deserializer=response.FromString,
        )
        return request, call

    health_request, health_check = method("grpc.health.v1.Health", "Check")
    status = health_check(health_request(service="angzarr.v1.CommandGateway"), timeout=10)
    check("health resolves and answers through reflection", status.status == 1, status)

    bank_command = message_class("examples.bank.v1.BankCommand")
    bank_event = message_class("examples.bank.v1.BankEvent")
    command_book, execute = method("angzarr.v1.CommandGateway", "Execute")
    aggregate_query, get_event_book = method("angzarr.v1.EventQuery", "GetEventBook")

    root = uuid.uuid4()
    # Upper case without hyphens: accepted, and answered in the canonical form.
    spelled = root.hex.upper()

    def send(command):
        payload = any_pb2.Any()
        payload.Pack(command)  # protobuf's own packing: type.googleapis.com/<full name>
        book = command_book()
        book.cover.domain = "account"
        book.cover.root = spelled
        # The reflected `google.protobuf.Any` is another class than any_pb2.Any: same bytes.
        book.pages.add().payload.ParseFromString(payload.SerializeToString())
        return execute(book, timeout=10)

    opened = send(bank_command(open={"owner": "eve"}))
    check("an account opens with a command packed by Any.Pack", len(opened.events.pages) == 1)
    check(
        "the answer names the root in its canonical form",
        opened.events.cover.root == str(root),
        opened.events.cover.root,
    )
    deposited = send(bank_command(deposit={"amount": 250}))
    check("a deposit is accepted", len(deposited.events.pages) == 1)
    try:
        send(bank_command(withdraw={"amount": 1000}))
        check("an overdraft is refused", False, "it was accepted")
    except grpc.RpcError as error:
        check(
            "an overdraft is refused with FAILED_PRECONDITION",
            error.code() == grpc.StatusCode.FAILED_PRECONDITION,
            error,
        )

    history = get_event_book(aggregate_query(domain="account", root=str(root)), timeout=10)
    check("the history has two events", [p.sequence for p in history.pages] == [0, 1], history)
    events = []
    for page in history.pages:
        payload = any_pb2.Any()
        payload.ParseFromString(page.payload.SerializeToString())
        check(
            f"event {page.sequence} carries the standard type URL",
            payload.type_url == STANDARD_PREFIX + "examples.bank.v1.BankEvent",
            payload.type_url,
        )
        event = bank_event()
        check(f"event {page.sequence} unpacks with Any.Unpack", payload.Unpack(event))
        events.append(event)
    check("the first event opened eve's account", events[0].opened.owner == "eve", events[0])
    check("the second event deposited 250", events[1].deposited.amount == 250, events[1])
    print("foreign client: all checks passed")


if __name__ == "__main__":
    if len(sys.argv) != 2:
        sys.exit("usage: python3 foreign_client.py HOST:PORT")
    main(sys.argv[1])

"""Checks `angzarr.server.serve` over TCP and a unix socket, with a `Logic` and with a plain
`handle(bytes) -> bytes`; run by tests/grpc_server.rs with the virtualenv's Python."""

import os
import sys
import tempfile

import grpc

from angzarr import pack
from angzarr.server import serve
from angzarr.v1.services_pb2_grpc import BusinessLogicStub
from angzarr.v1.types_pb2 import ContextualCommand
from bank import Bank
from bank_fixture import handle as fixture
from bank_pb2 import BankCommand, Deposit, OpenAccount


def command(domain, payload):
    request = ContextualCommand()
    request.command.cover.domain = domain
    request.command.pages.add().payload.CopyFrom(payload)
    return request


def fails(call, code, metadata):
    try:
        call()
    except grpc.RpcError as error:
        assert error.code() == code, (error.code(), error.details())
        if metadata is not None:
            assert ("angzarr-invalid", metadata) in tuple(error.trailing_metadata()), error.trailing_metadata()
        return error.details()
    raise AssertionError("the call succeeded")


def check(address, logic):
    served = serve(logic, address, block=False)
    target = address if address.startswith("unix:") else f"127.0.0.1:{served.port}"
    with grpc.insecure_channel(target) as channel:
        stub = BusinessLogicStub(channel)
        reply = stub.Handle(command("account", pack(BankCommand(open=OpenAccount(owner="ada")))))
        assert reply.events.pages[0].sequence == 0, reply
        rejected = stub.Handle(command("account", pack(BankCommand(deposit=Deposit(amount=1)))))
        assert rejected.rejection.reason == "the account is not open", rejected
        bad = command("account", pack(BankCommand()))
        bad.command.pages[0].payload.value = b"\xff"
        fails(lambda: stub.Handle(bad), grpc.StatusCode.INVALID_ARGUMENT, "command")
        details = fails(
            lambda: stub.Handle(command("fault-fails", pack(BankCommand()))) if logic is fixture
            else stub.Handle(command("account", pack(OpenAccount()))),
            grpc.StatusCode.INTERNAL if logic is fixture else grpc.StatusCode.INVALID_ARGUMENT,
            None if logic is fixture else "command",
        )
        if logic is fixture:
            assert details.startswith("RuntimeError: the fixture fails on purpose"), details
            assert "Traceback (most recent call last)" in details, details
    served.stop(None)


with tempfile.TemporaryDirectory() as directory:
    check("unix:" + os.path.join(directory, "bank.sock"), Bank.logic(2))
check("127.0.0.1:0", fixture)
print("server checks passed")
sys.exit(0)

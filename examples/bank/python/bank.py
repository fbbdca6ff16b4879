"""The bank example in Python: the same decisions, events, snapshots and rejection texts as
the Rust bank (examples/bank/src/lib.rs). Load it with `python:bank`."""

from angzarr import Aggregate, applies, handles, reject
from bank_pb2 import (Account, AccountOpened, BankCommand, BankEvent, Deposit, Deposited,
                      OpenAccount, Withdraw, Withdrawn)

U64_MAX = 2**64 - 1


class Bank(Aggregate):
    state_type, commands, events = Account, BankCommand, BankEvent

    def must_be_open(self):
        if not self.state.open:
            reject("the account is not open")

    @handles(OpenAccount)
    def open(self, command):
        if self.state.open:
            reject("the account is already open")
        return AccountOpened(owner=command.owner)

    @handles(Deposit)
    def deposit(self, command):
        self.must_be_open()
        if command.amount == 0:
            reject("a deposit must be positive")
        if self.state.balance + command.amount > U64_MAX:
            reject("the balance would overflow")
        return Deposited(amount=command.amount)

    @handles(Withdraw)
    def withdraw(self, command):
        self.must_be_open()
        if command.amount > self.state.balance:
            reject("insufficient funds")
        return Withdrawn(amount=command.amount)

    @handles(BankCommand)  # The envelope with no command in it.
    def empty(self, command):
        self.must_be_open()
        reject("the command is empty")

    @applies(AccountOpened)
    def opened(self, event):
        self.state.open = True
        self.state.owner = event.owner

    @applies(Deposited)
    def deposited(self, event):
        self.state.balance += event.amount

    @applies(Withdrawn)
    def withdrawn(self, event):
        self.state.balance -= event.amount


handle = Bank.entry(snapshot_every=100)

#![doc = include_str!("../README.md")]

/// The generated messages of `proto/bank.proto`.
#[allow(missing_docs, unreachable_pub, clippy::all)]
pub mod proto {
    include!(concat!(env!("OUT_DIR"), "/examples.bank.v1.rs"));
}

/// The encoded `FileDescriptorSet` of `proto/bank.proto`, for gRPC server reflection: with it,
/// clients build the commands and read the events without the `.proto` file.
pub const FILE_DESCRIPTOR_SET: &[u8] =
    include_bytes!(concat!(env!("OUT_DIR"), "/bank_descriptor.bin"));

mod commands;

pub use commands::{command, deposit, open, replay, withdraw};
pub use proto::Account;

use angzarr_core::{Aggregate, NativeLogic, reject};
use angzarr_proto::v1::Rejection;
use proto::{bank_command::Kind as Command, bank_event::Kind as Event, *};

/// The domain the example registers under.
pub const DOMAIN: &str = "account";

impl Aggregate for Account {
    type Command = BankCommand;
    type Event = BankEvent;

    fn apply(&mut self, event: &BankEvent) {
        match &event.kind {
            Some(Event::Opened(opened)) => {
                self.open = true;
                self.owner.clone_from(&opened.owner);
            }
            Some(Event::Deposited(deposited)) => self.balance += deposited.amount,
            Some(Event::Withdrawn(withdrawn)) => self.balance -= withdrawn.amount,
            None => {}
        }
    }

    fn handle(&self, command: BankCommand) -> Result<Vec<BankEvent>, Rejection> {
        let event = match command.kind {
            Some(Command::Open(_)) if self.open => return reject("the account is already open"),
            Some(Command::Open(open)) => Event::Opened(AccountOpened { owner: open.owner }),
            _ if !self.open => return reject("the account is not open"),
            Some(Command::Deposit(Deposit { amount: 0 })) => {
                return reject("a deposit must be positive");
            }
            Some(Command::Deposit(Deposit { amount })) => match self.balance.checked_add(amount) {
                Some(_) => Event::Deposited(Deposited { amount }),
                None => return reject("the balance would overflow"),
            },
            Some(Command::Withdraw(w)) if w.amount > self.balance => {
                return reject("insufficient funds");
            }
            Some(Command::Withdraw(w)) => Event::Withdrawn(Withdrawn { amount: w.amount }),
            None => return reject("the command is empty"),
        };
        Ok(vec![BankEvent { kind: Some(event) }])
    }
}

/// The bank's client logic, snapshotting every `snapshot_every` events.
pub fn logic(snapshot_every: u64) -> NativeLogic<Account> {
    NativeLogic::new().snapshot_every(snapshot_every)
}

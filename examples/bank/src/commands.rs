//! Builders for the bank's commands and a replay of its events, for tests, benchmarks and
//! demos.

use angzarr_core::{Aggregate, UnpackError, Unpacker};
use angzarr_proto::v1::{CommandBook, CommandPage, Cover, EventPage};
use prost_types::Any;
use uuid::Uuid;

use crate::proto::{
    Account, BankCommand, BankEvent, Deposit, OpenAccount, Withdraw, bank_command::Kind,
};

/// Opens an account for `owner`.
pub fn open(owner: &str) -> BankCommand {
    BankCommand {
        kind: Some(Kind::Open(OpenAccount {
            owner: owner.to_owned(),
        })),
    }
}

/// Deposits `amount` cents.
pub fn deposit(amount: u64) -> BankCommand {
    BankCommand {
        kind: Some(Kind::Deposit(Deposit { amount })),
    }
}

/// Withdraws `amount` cents.
pub fn withdraw(amount: u64) -> BankCommand {
    BankCommand {
        kind: Some(Kind::Withdraw(Withdraw { amount })),
    }
}

/// A `CommandBook` carrying `command` for the account `root`.
pub fn command(root: Uuid, command: &BankCommand) -> CommandBook {
    let payload = angzarr_core::native::pack(command);
    CommandBook {
        cover: Some(Cover {
            domain: crate::DOMAIN.to_owned(),
            root: root.to_string(),
            ..Cover::default()
        }),
        pages: vec![CommandPage {
            payload: Some(payload),
        }],
        ..CommandBook::default()
    }
}

/// The account a history describes: `snapshot` (an `Account`, if any) with `pages` folded in.
pub fn replay(snapshot: Option<&Any>, pages: &[EventPage]) -> Result<Account, UnpackError> {
    let mut account: Account = snapshot
        .map(|state| Unpacker::new().unpack(state))
        .transpose()?
        .unwrap_or_default();
    let events = Unpacker::<BankEvent>::new();
    for page in pages {
        // A page without payload fails like any event that is not a BankEvent.
        account.apply(&events.unpack(page.payload.as_ref().unwrap_or(&Any::default()))?);
    }
    Ok(account)
}

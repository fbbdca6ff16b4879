//! What the Go bridge's tests share: the libraries `cargo xtask go build` builds, and the bank
//! scripted through the native logic and a Go library side by side.
#![allow(dead_code, unreachable_pub)]

use std::path::PathBuf;
use std::sync::Arc;

use angzarr_bridge_go::GoLibrary;
use angzarr_example_bank::{command, deposit, open, proto::BankCommand, withdraw};
use angzarr_ports::ClientLogic;
use angzarr_proto::v1::{
    BusinessReply, CommandPage, ContextualCommand, Cover, EventBook, EventPage, Snapshot,
    business_reply::Outcome,
};
use prost::Message;
use uuid::Uuid;

/// The library a test variable names. A missing one fails the test (never skips it): the
/// libraries are built by `cargo xtask go build`, which `cargo xtask test` runs.
pub fn path(variable: &str) -> PathBuf {
    let path = std::env::var_os(variable)
        .map(PathBuf::from)
        .unwrap_or_else(|| {
            panic!(
                "{variable} is not set: build the Go libraries with `cargo xtask go build` and \
             export the variables it prints (`cargo xtask test` does both)"
            )
        });
    assert!(
        path.is_file(),
        "{variable}={} does not exist: run `cargo xtask go build`",
        path.display()
    );
    path
}

/// The library a test variable names, loaded.
pub fn library(variable: &str) -> Arc<GoLibrary> {
    GoLibrary::load(path(variable)).unwrap_or_else(|error| panic!("{error}"))
}

/// Commands that go through every branch of the bank: each item is one command book.
pub fn script() -> Vec<Vec<BankCommand>> {
    vec![
        vec![deposit(5)],
        vec![open("ada")],
        vec![open("bob")],
        vec![deposit(0)],
        vec![deposit(1_000)],
        vec![withdraw(1_001)],
        vec![withdraw(300), deposit(42)],
        vec![deposit(7), withdraw(1_000_000)],
        vec![deposit(u64::MAX)],
        vec![BankCommand::default()],
        vec![withdraw(749)],
        vec![deposit(1), deposit(2), deposit(3)],
        vec![],
    ]
}

/// A `ContextualCommand` for the bank on `domain`: `history` after `snapshot`, then `pages`.
pub fn contextual(
    domain: &str,
    root: Uuid,
    snapshot: Option<Snapshot>,
    history: &[EventPage],
    pages: &[BankCommand],
) -> ContextualCommand {
    let mut book = command(root, &BankCommand::default());
    book.cover = Some(Cover {
        domain: domain.to_owned(),
        root: root.to_string(),
        correlation_id: "c0ffee".into(),
    });
    book.pages = pages
        .iter()
        .map(|page| CommandPage {
            payload: Some(angzarr_core::native::pack(page)),
        })
        .collect();
    ContextualCommand {
        events: Some(EventBook {
            cover: book.cover.clone(),
            snapshot,
            pages: history.to_vec(),
        }),
        command: Some(book),
    }
}

/// Runs [`script`] through the native bank and `go` (which answers the encoded reply for an
/// encoded command), asserting after each command that both replies have the same bytes.
/// The history each command sees is the one the gateway would hand over: the last snapshot
/// (with `keep_state`, also the state a reply returned, as the gateway keeps it in memory),
/// then the events after it.
pub async fn same_bytes_as_native(
    snapshot_every: u64,
    keep_state: bool,
    go: impl Fn(&[u8]) -> Vec<u8>,
) -> usize {
    let native = angzarr_example_bank::logic(snapshot_every);
    let root = Uuid::new_v4();
    let (mut snapshot, mut history) = (None::<Snapshot>, Vec::<EventPage>::new());
    let mut replies = 0;
    for pages in script() {
        let command = contextual("account", root, snapshot.clone(), &history, &pages);
        let expected = native.handle(command.clone()).await.unwrap();
        let got = go(&command.encode_to_vec());
        assert_eq!(
            BusinessReply::decode(got.as_slice()).unwrap(),
            expected,
            "snapshot_every {snapshot_every}, commands {pages:?}"
        );
        assert_eq!(
            got,
            expected.encode_to_vec(),
            "the same reply, but other bytes"
        );
        if let Some(Outcome::Events(emitted)) = expected.outcome {
            history.extend(emitted.pages);
            let state = emitted.state.filter(|_| keep_state);
            if let Some(state) = emitted.snapshot_state.or(state) {
                let sequence = history.last().unwrap().sequence;
                snapshot = Some(Snapshot {
                    sequence,
                    state: Some(state),
                });
                history.clear();
            }
        }
        replies += 1;
    }
    replies
}

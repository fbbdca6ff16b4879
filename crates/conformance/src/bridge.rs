//! The cross-language suite: client logic behind a bridge must decide exactly as the native
//! Rust logic does, and fail in typed ways that leave the host serving.
//!
//! A bridge's test file implements [`BridgeHarness`] for the bank example written in its
//! language and calls [`bridge_suite!`](crate::bridge_suite) once.

use std::sync::Arc;
use std::time::Duration;

use angzarr_core::{CommandError, Gateway, GatewayConfig};
use angzarr_example_bank::proto::{BankCommand, Deposit, OpenAccount, Withdraw, bank_command};
use angzarr_ports::{
    AggregateId, ClientLogic, ClientLogicError, Domain, EventStore, SequenceRange, SnapshotStore,
    async_trait,
};
use angzarr_proto::v1::{CommandBook, CommandPage, CommandResponse, Cover};
use angzarr_store_memory::MemoryStore;
use proptest::prelude::*;
use proptest::test_runner::TestCaseError;
use prost::Message;
use prost_types::Any;
use uuid::Uuid;

/// A way client logic can misbehave, and the error the bridge must turn it into.
///
/// The suite sends the fault's commands to the domain [`Fault::domain`], so a test fixture
/// in the bridge's language may serve every fault (and the bank) from one module, library or
/// server by dispatching on `command.cover.domain`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum Fault {
    /// The handler raises an exception, panics or answers an error status:
    /// [`ClientLogicError::Failed`], carrying what the handler said.
    Fails,
    /// The handler does not answer within the bridge's deadline:
    /// [`ClientLogicError::Timeout`].
    Hangs,
    /// The handler answers bytes that are not an encoded `BusinessReply`:
    /// [`ClientLogicError::InvalidReply`].
    MalformedReply,
    /// Nothing serves the logic (out-of-process bridges): [`ClientLogicError::Unavailable`].
    Unreachable,
    /// The process serving the logic dies while it handles the call (out-of-process bridges):
    /// [`ClientLogicError::Unavailable`] once the bridge's retries are spent.
    DiesMidCall,
}

impl Fault {
    /// Every fault.
    pub const ALL: [Fault; 5] = [
        Fault::Fails,
        Fault::Hangs,
        Fault::MalformedReply,
        Fault::Unreachable,
        Fault::DiesMidCall,
    ];

    /// The domain the suite sends this fault's commands to.
    pub fn domain(self) -> &'static str {
        match self {
            Fault::Fails => "fault-fails",
            Fault::Hangs => "fault-hangs",
            Fault::MalformedReply => "fault-malformed",
            Fault::Unreachable => "fault-unreachable",
            Fault::DiesMidCall => "fault-dies",
        }
    }

    /// Whether `error` is the one this fault must produce.
    pub fn expects(self, error: &ClientLogicError) -> bool {
        matches!(
            (self, error),
            (Fault::Fails, ClientLogicError::Failed(_))
                | (Fault::Hangs, ClientLogicError::Timeout(_))
                | (Fault::MalformedReply, ClientLogicError::InvalidReply(_))
                | (
                    Fault::Unreachable | Fault::DiesMidCall,
                    ClientLogicError::Unavailable(_)
                )
        )
    }
}

/// How the suite gets client logic through one bridge.
#[async_trait]
pub trait BridgeHarness: Send + Sync + 'static {
    /// The bank example written in the bridge's language, served through the bridge, with a
    /// snapshot every `snapshot_every` events (0: never) and the folded state returned with
    /// every reply that emitted events, exactly as `angzarr_example_bank::logic` does.
    async fn bank(&self, snapshot_every: u64) -> Arc<dyn ClientLogic>;

    /// The faults this bridge can be made to show ([`Fault::Unreachable`] and
    /// [`Fault::DiesMidCall`] only exist out of process).
    fn faults(&self) -> Vec<Fault>;

    /// Logic through the bridge that shows `fault` on every command, with the bridge's
    /// deadline set to `deadline`. Called only for the faults of [`faults`](Self::faults).
    async fn faulty(&self, fault: Fault, deadline: Duration) -> Arc<dyn ClientLogic>;

    /// How many random command sequences the equivalence property runs.
    fn cases(&self) -> u32 {
        64
    }
}

/// Expands to a module `bridge_conformance` with one `#[test]` per property of the
/// cross-language suite, each run against the [`BridgeHarness`] that `$harness` evaluates to.
#[macro_export]
macro_rules! bridge_suite {
    ($harness:expr) => {
        mod bridge_conformance {
            #[allow(unused_imports)]
            use super::*;

            $crate::bridge_suite!(@tests $harness; bank_matches_native, faults_are_typed_and_contained);
        }
    };
    (@tests $harness:expr; $($property:ident),* $(,)?) => {
        $(
            #[test]
            fn $property() {
                $crate::bridge::run($harness, async |harness| $crate::bridge::$property(harness).await);
            }
        )*
    };
}

/// Runs `property` against `harness` on a fresh multi-threaded runtime.
pub fn run<H: BridgeHarness, F: AsyncFnOnce(&H)>(harness: H, property: F) {
    crate::runtime().block_on(property(&harness));
}

/// The bank's command type, under the URL every protobuf runtime packs it with.
const BANK_COMMAND_URL: &str = "type.googleapis.com/examples.bank.v1.BankCommand";

/// One command page of a generated sequence: valid bank commands and the malformed payloads a
/// client can send.
#[derive(Debug, Clone)]
enum Page {
    Open(String),
    Deposit(u64),
    Withdraw(u64),
    /// A `BankCommand` with no command in it.
    Empty,
    /// A bank command under a type URL prefix other than the standard one (only the name after
    /// the last `/` may count).
    OtherPrefix(u64),
    /// An `Any` of a type the bank does not know.
    UnknownType,
    /// Bytes every protobuf runtime refuses to decode as a `BankCommand`.
    Undecodable(&'static [u8]),
}

/// Encodings that no conforming decoder accepts, whatever it does with unknown fields: a
/// truncated varint, a truncated length-delimited field, a string that is not UTF-8.
const UNDECODABLE: [&[u8]; 3] = [
    &[0x12, 0x02, 0x08],
    &[0x0a, 0x05, 0x0a, 0x01],
    &[0x0a, 0x03, 0x0a, 0x01, 0xff],
];

impl Page {
    fn payload(&self) -> Any {
        let command = |kind| BankCommand { kind: Some(kind) };
        let bank = |command: BankCommand| Any {
            type_url: BANK_COMMAND_URL.to_owned(),
            value: command.encode_to_vec(),
        };
        match self {
            Page::Open(owner) => bank(command(bank_command::Kind::Open(OpenAccount {
                owner: owner.clone(),
            }))),
            Page::Deposit(amount) => bank(command(bank_command::Kind::Deposit(Deposit {
                amount: *amount,
            }))),
            Page::Withdraw(amount) => bank(command(bank_command::Kind::Withdraw(Withdraw {
                amount: *amount,
            }))),
            Page::Empty => bank(BankCommand::default()),
            Page::OtherPrefix(amount) => Any {
                type_url: "example.com/bank/examples.bank.v1.BankCommand".to_owned(),
                value: command(bank_command::Kind::Deposit(Deposit { amount: *amount }))
                    .encode_to_vec(),
            },
            Page::UnknownType => Any {
                type_url: "type.googleapis.com/examples.bank.v1.CloseAccount".to_owned(),
                value: Vec::new(),
            },
            Page::Undecodable(bytes) => Any {
                type_url: BANK_COMMAND_URL.to_owned(),
                value: bytes.to_vec(),
            },
        }
    }
}

/// One command of a generated sequence.
#[derive(Debug, Clone)]
struct Step {
    /// Which of the case's accounts.
    account: usize,
    pages: Vec<Page>,
    /// `Some(true)`: the right `expected_sequence`; `Some(false)`: a stale one.
    expected: Option<bool>,
}

#[derive(Debug, Clone)]
struct EquivalenceCase {
    snapshot_every: u64,
    /// Whether the gateway keeps states in memory (else every command is handed the stored
    /// snapshot and the events after it, so the bridge's replay is exercised).
    cached: bool,
    steps: Vec<Step>,
}

fn amount() -> impl Strategy<Value = u64> {
    prop_oneof![
        3 => 0..3u64,
        6 => 1..1_000u64,
        1 => (u64::MAX - 3)..=u64::MAX,
    ]
}

fn page() -> impl Strategy<Value = Page> {
    prop_oneof![
        2 => "\\PC{0,12}".prop_map(Page::Open),
        6 => amount().prop_map(Page::Deposit),
        4 => amount().prop_map(Page::Withdraw),
        1 => Just(Page::Empty),
        1 => amount().prop_map(Page::OtherPrefix),
        1 => Just(Page::UnknownType),
        1 => prop::sample::select(UNDECODABLE.to_vec()).prop_map(Page::Undecodable),
    ]
}

fn step() -> impl Strategy<Value = Step> {
    (
        0..ACCOUNTS,
        prop::collection::vec(page(), 1..4),
        prop_oneof![6 => Just(None), 1 => Just(Some(true)), 1 => Just(Some(false))],
    )
        .prop_map(|(account, pages, expected)| Step {
            account,
            pages,
            expected,
        })
}

fn equivalence_case() -> impl Strategy<Value = EquivalenceCase> {
    (
        prop::sample::select(vec![0u64, 1, 2, 5, 100]),
        any::<bool>(),
        prop::collection::vec(step(), 1..24),
    )
        .prop_map(|(snapshot_every, cached, steps)| EquivalenceCase {
            snapshot_every,
            cached,
            steps,
        })
}

const ACCOUNTS: usize = 2;
const BANK_DOMAIN: &str = angzarr_example_bank::DOMAIN;

/// A gateway over a fresh in-memory store, serving `logic` on the bank's domain.
fn gateway(
    logic: Arc<dyn ClientLogic>,
    cached: bool,
    extra: Option<(&str, Arc<dyn ClientLogic>)>,
) -> (Gateway, Arc<MemoryStore>) {
    let store = Arc::new(MemoryStore::new());
    let mut config = GatewayConfig::default();
    if !cached {
        config.cached_events = 0;
    }
    let mut builder = Gateway::builder(store.clone(), store.clone())
        .config(config)
        .register(Domain::new(BANK_DOMAIN).expect("valid domain"), logic);
    if let Some((domain, logic)) = extra {
        builder = builder.register(Domain::new(domain).expect("valid domain"), logic);
    }
    (builder.build(), store)
}

/// What a command's outcome must agree on across bridges: the events as appended (less their
/// timestamps, which the framework sets), or the kind of error, with a rejection's reason.
#[derive(Debug, PartialEq, Eq)]
enum Outcome {
    Appended(Vec<(u64, String, Vec<u8>, String)>, bool),
    Rejected(String),
    LogicError(&'static str),
    Conflict { expected: u64, actual: u64 },
    OtherError(String),
}

fn outcome(result: Result<CommandResponse, CommandError>) -> Outcome {
    match result {
        Ok(response) => Outcome::Appended(
            response
                .events
                .unwrap_or_default()
                .pages
                .into_iter()
                .map(|page| {
                    let payload = page.payload.unwrap_or_default();
                    (
                        page.sequence,
                        payload.type_url,
                        payload.value,
                        page.correlation_id,
                    )
                })
                .collect(),
            response.replayed,
        ),
        Err(CommandError::Rejected(reason)) => Outcome::Rejected(reason),
        Err(CommandError::Logic(error)) => Outcome::LogicError(logic_error_kind(&error)),
        Err(CommandError::Conflict { expected, actual }) => Outcome::Conflict { expected, actual },
        // Gateway-side errors (invalid events, limits) do not depend on the bridge's wording.
        Err(other) => Outcome::OtherError(format!("{other}")),
    }
}

fn logic_error_kind(error: &ClientLogicError) -> &'static str {
    match error {
        ClientLogicError::InvalidCommand(_) => "InvalidCommand",
        ClientLogicError::InvalidHistory(_) => "InvalidHistory",
        ClientLogicError::InvalidSnapshot(_) => "InvalidSnapshot",
        ClientLogicError::Failed(_) => "Failed",
        ClientLogicError::InvalidReply(_) => "InvalidReply",
        ClientLogicError::Unavailable(_) => "Unavailable",
        ClientLogicError::Timeout(_) => "Timeout",
        _ => "another ClientLogicError",
    }
}

fn command_book(root: Uuid, pages: &[Page], expected_sequence: Option<u64>) -> CommandBook {
    CommandBook {
        cover: Some(Cover {
            domain: BANK_DOMAIN.to_owned(),
            root: root.to_string(),
            correlation_id: "bridge-suite".to_owned(),
        }),
        pages: pages
            .iter()
            .map(|page| CommandPage {
                payload: Some(page.payload()),
            })
            .collect(),
        expected_sequence,
        ..CommandBook::default()
    }
}

/// Everything stored for `aggregate`: its events (less timestamps) and its snapshot.
async fn stored(
    store: &MemoryStore,
    aggregate: &AggregateId,
) -> (Vec<(u64, Any, String)>, Option<(u64, Option<Any>)>) {
    let events = store
        .read(aggregate, SequenceRange::ALL)
        .await
        .expect("the memory store reads")
        .into_iter()
        .map(|page| {
            (
                page.sequence,
                page.payload.unwrap_or_default(),
                page.correlation_id,
            )
        })
        .collect();
    let snapshot = SnapshotStore::get(store, aggregate)
        .await
        .expect("the memory store reads snapshots")
        .map(|snapshot| (snapshot.sequence, snapshot.state));
    (events, snapshot)
}

async fn run_equivalence_case<H: BridgeHarness>(
    harness: &H,
    case: EquivalenceCase,
) -> Result<(), TestCaseError> {
    let native: Arc<dyn ClientLogic> = Arc::new(angzarr_example_bank::logic(case.snapshot_every));
    let (reference, reference_store) = gateway(native, case.cached, None);
    let (bridged, bridged_store) =
        gateway(harness.bank(case.snapshot_every).await, case.cached, None);
    let roots: Vec<Uuid> = (0..ACCOUNTS).map(|_| Uuid::new_v4()).collect();
    let aggregates: Vec<AggregateId> = roots
        .iter()
        .map(|root| AggregateId::parse(BANK_DOMAIN, &root.to_string()).expect("valid id"))
        .collect();
    for (index, step) in case.steps.iter().enumerate() {
        let next = reference_store
            .next_sequence(&aggregates[step.account])
            .await
            .expect("the memory store reads");
        let expected = step
            .expected
            .map(|right| if right { next } else { next + 1 });
        let command = command_book(roots[step.account], &step.pages, expected);
        let want = outcome(reference.execute(command.clone()).await);
        let got = outcome(bridged.execute(command).await);
        prop_assert_eq!(
            &got,
            &want,
            "command {} ({:?}) answered differently through the bridge than natively",
            index,
            step
        );
    }
    for aggregate in &aggregates {
        let want = stored(&reference_store, aggregate).await;
        let got = stored(&bridged_store, aggregate).await;
        prop_assert_eq!(
            got,
            want,
            "the bridge left other events or another snapshot than the native logic"
        );
    }
    Ok(())
}

/// Random command sequences (valid ones, rejected ones, malformed payloads, stale expected
/// sequences) give the same responses, stored events and snapshots through the bridge as
/// through the native Rust logic, byte for byte, with snapshots at several intervals and with
/// and without the gateway's state cache.
pub async fn bank_matches_native<H: BridgeHarness>(harness: &H) {
    let runtime = tokio::runtime::Handle::current();
    let (mut runner, seed) = crate::state_machine::runner(harness.cases());
    let result = runner.run(&equivalence_case(), |case| {
        // Proptest's runner is synchronous; the case itself runs on the suite's runtime.
        tokio::task::block_in_place(|| runtime.block_on(run_equivalence_case(harness, case)))
    });
    if let Err(failure) = result {
        panic!(
            "the bridge disagrees with the native logic: {failure}\n(replay this run with ANGZARR_SUITE_SEED={seed})"
        );
    }
}

/// How long the suite lets a bridge wait for logic that hangs. Every faulty call runs under
/// it, also those that answer at once: long enough for a loaded machine to answer them.
const FAULT_DEADLINE: Duration = Duration::from_secs(1);

/// Every fault the bridge can show gives its typed error, twice in a row, appends and
/// snapshots nothing, and leaves the host serving the bank next to it (also while a hung call
/// may still occupy the other side).
pub async fn faults_are_typed_and_contained<H: BridgeHarness>(harness: &H) {
    let faults = harness.faults();
    assert!(
        faults.contains(&Fault::Fails) && faults.contains(&Fault::MalformedReply),
        "every bridge can be made to fail and to answer malformed bytes"
    );
    for fault in faults {
        let faulty = harness.faulty(fault, FAULT_DEADLINE).await;
        let (gateway, store) = gateway(harness.bank(0).await, true, Some((fault.domain(), faulty)));
        let account = Uuid::new_v4();
        let opened = gateway
            .execute(command_book(account, &[Page::Open("ada".into())], None))
            .await;
        assert!(
            opened.is_ok(),
            "{fault:?}: the bank did not serve before the fault: {opened:?}"
        );

        let root = Uuid::new_v4();
        let aggregate = AggregateId::parse(fault.domain(), &root.to_string()).expect("valid id");
        for attempt in 1..=2 {
            let mut command = command_book(root, &[Page::Open("mallory".into())], None);
            command.cover.as_mut().expect("a cover").domain = fault.domain().to_owned();
            match gateway.execute(command).await {
                Err(CommandError::Logic(error)) if fault.expects(&error) => {
                    assert!(
                        !error.to_string().trim().is_empty(),
                        "{fault:?}: the error says nothing"
                    );
                }
                other => panic!(
                    "{fault:?} (attempt {attempt}): expected the matching ClientLogicError, got {other:?}"
                ),
            }
            let (events, snapshot) = stored(&store, &aggregate).await;
            assert!(
                events.is_empty() && snapshot.is_none(),
                "{fault:?}: a failed command left {events:?} and snapshot {snapshot:?}"
            );

            let deposited = gateway
                .execute(command_book(account, &[Page::Deposit(attempt)], None))
                .await;
            match deposited {
                Ok(response) => assert_eq!(
                    response.events.map(|book| book.pages.len()),
                    Some(1),
                    "{fault:?}: the bank's deposit after the fault appended another number of events"
                ),
                Err(error) => {
                    panic!("{fault:?}: the host stopped serving the bank after the fault: {error}")
                }
            }
        }
        let listed = store
            .list_roots(
                &Domain::new(fault.domain()).expect("valid domain"),
                None,
                10,
            )
            .await
            .expect("the memory store lists");
        assert!(
            listed.is_empty(),
            "{fault:?}: the faulty domain has roots {listed:?}"
        );
    }
}

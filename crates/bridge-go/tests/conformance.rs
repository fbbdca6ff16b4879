//! The Go bridge over the test library (`crates/bridge-go/tests/fixture`): the cross-language
//! suite, byte-for-byte equality with the native bank, and how each failure is reported.

mod common;

use std::sync::Arc;
use std::time::Duration;

use angzarr_bridge_go::{GoLibrary, GoLogic};
use angzarr_conformance::bridge::{BridgeHarness, Fault};
use angzarr_ports::{ClientLogic, ClientLogicError, async_trait};
use angzarr_proto::v1::{BusinessReply, CommandPage, ContextualCommand, EventPage, Snapshot};
use prost::Message;
use prost_types::Any;
use uuid::Uuid;

const FIXTURE: &str = "ANGZARR_TEST_GO_FIXTURE_LIB";

fn fixture() -> Arc<GoLibrary> {
    common::library(FIXTURE)
}

/// The fixture serves the bank on "account" and each fault on its domain.
struct Go(Arc<GoLibrary>);

#[async_trait]
impl BridgeHarness for Go {
    async fn bank(&self, snapshot_every: u64) -> Arc<dyn ClientLogic> {
        Arc::new(GoLogic::new(Arc::clone(&self.0)).snapshot_every(snapshot_every))
    }

    fn faults(&self) -> Vec<Fault> {
        vec![Fault::Fails, Fault::Hangs, Fault::MalformedReply]
    }

    async fn faulty(&self, _fault: Fault, deadline: Duration) -> Arc<dyn ClientLogic> {
        Arc::new(GoLogic::new(Arc::clone(&self.0)).deadline(deadline))
    }
}

angzarr_conformance::bridge_suite!(Go(fixture()));

/// A command for `domain` with one opaque payload.
fn to(domain: &str) -> ContextualCommand {
    common::contextual(
        domain,
        Uuid::new_v4(),
        None,
        &[],
        &[angzarr_example_bank::deposit(1)],
    )
}

fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap()
}

#[test]
fn the_go_bank_gives_the_native_bytes_with_and_without_snapshots() {
    let library = fixture();
    runtime().block_on(async {
        for snapshot_every in [0, 1, 2, 3, 100] {
            for keep_state in [false, true] {
                let replies = common::same_bytes_as_native(snapshot_every, keep_state, |command| {
                    library.call_blocking(snapshot_every, command).unwrap()
                })
                .await;
                assert_eq!(replies, common::script().len());
            }
        }
    });
}

#[test]
fn through_client_logic_the_go_bank_decides_as_the_native_one() {
    let logic = GoLogic::new(fixture()).snapshot_every(2);
    let runtime = runtime();
    let replies = runtime.block_on(common::same_bytes_as_native(2, true, |command| {
        let command = ContextualCommand::decode(command).unwrap();
        // A call from inside the runtime, as the gateway makes it.
        let reply = runtime_handle_block(&logic, command);
        reply.encode_to_vec()
    }));
    assert_eq!(replies, common::script().len());
}

/// Runs `logic.handle` on a separate runtime thread and waits for it (the closure passed to
/// `same_bytes_as_native` is synchronous).
fn runtime_handle_block(logic: &GoLogic, command: ContextualCommand) -> BusinessReply {
    std::thread::scope(|scope| {
        scope
            .spawn(|| {
                tokio::runtime::Builder::new_current_thread()
                    .enable_all()
                    .build()
                    .unwrap()
                    .block_on(logic.handle(command))
                    .unwrap()
            })
            .join()
            .unwrap()
    })
}

#[test]
fn errors_of_the_go_aggregate_are_the_native_ones() {
    let library = fixture();
    let native = angzarr_example_bank::logic(0);
    let go = GoLogic::new(Arc::clone(&library));
    let any = |type_url: &str, value: Vec<u8>| Any {
        type_url: type_url.into(),
        value,
    };
    let root = Uuid::new_v4();
    let account = "type.googleapis.com/examples.bank.v1.Account";
    let event = "type.googleapis.com/examples.bank.v1.BankEvent";
    let cases: Vec<(&str, ContextualCommand)> = vec![
        ("a command of another type", {
            let mut command = common::contextual("account", root, None, &[], &[]);
            command.command.as_mut().unwrap().pages = vec![CommandPage {
                payload: Some(any(account, vec![])),
            }];
            command
        }),
        ("a command without payload", {
            let mut command = common::contextual("account", root, None, &[], &[]);
            command.command.as_mut().unwrap().pages = vec![CommandPage { payload: None }];
            command
        }),
        (
            "an event of another type",
            common::contextual(
                "account",
                root,
                None,
                &[EventPage {
                    payload: Some(any(account, vec![])),
                    ..EventPage::default()
                }],
                &[angzarr_example_bank::deposit(1)],
            ),
        ),
        (
            "an event without payload",
            common::contextual(
                "account",
                root,
                None,
                &[EventPage::default()],
                &[angzarr_example_bank::deposit(1)],
            ),
        ),
        (
            "a snapshot without state",
            common::contextual(
                "account",
                root,
                Some(Snapshot::default()),
                &[],
                &[angzarr_example_bank::deposit(1)],
            ),
        ),
        (
            "a snapshot of another type",
            common::contextual(
                "account",
                root,
                Some(Snapshot {
                    sequence: 3,
                    state: Some(any(event, vec![])),
                }),
                &[],
                &[angzarr_example_bank::deposit(1)],
            ),
        ),
    ];
    runtime().block_on(async {
        for (case, command) in cases {
            let expected = native.handle(command.clone()).await.unwrap_err();
            let got = go.handle(command).await.unwrap_err();
            assert_eq!(got, expected, "{case}");
        }
    });
}

#[test]
fn a_go_panic_is_failed_with_its_message_and_stack_and_the_library_keeps_serving() {
    let logic = GoLogic::new(fixture());
    runtime().block_on(async {
        for _ in 0..3 {
            let Err(ClientLogicError::Failed(message)) = logic.handle(to("fault-fails")).await
            else {
                panic!("a panic must be Failed");
            };
            assert!(
                message.starts_with("panic: fault-fails: the handler panicked on purpose"),
                "{message}"
            );
            assert!(message.contains("goroutine"), "no stack in {message}");
            assert!(message.contains("main.failOnPurpose"), "{message}");
            assert!(logic.handle(to("account")).await.is_ok());
        }
    });
}

#[test]
fn go_errors_keep_their_kind() {
    let logic = GoLogic::new(fixture());
    runtime().block_on(async {
        assert_eq!(
            logic.handle(to("fault-error")).await,
            Err(ClientLogicError::InvalidHistory(
                "fault-error: this history is not mine".into()
            ))
        );
        assert_eq!(
            logic.handle(to("no-such-domain")).await,
            Err(ClientLogicError::InvalidCommand(
                r#"this library serves no domain "no-such-domain""#.into()
            ))
        );
        let Err(ClientLogicError::InvalidReply(message)) =
            logic.handle(to("fault-malformed")).await
        else {
            panic!("undecodable bytes must be InvalidReply");
        };
        assert!(
            message.contains("not an encoded BusinessReply"),
            "{message}"
        );
    });
    let library = fixture();
    let Err(ClientLogicError::InvalidCommand(message)) = library.call_blocking(0, &[0xff; 3])
    else {
        panic!("undecodable command bytes must be InvalidCommand");
    };
    assert!(
        message.starts_with("undecodable ContextualCommand"),
        "{message}"
    );
}

#[test]
fn stuck_calls_time_out_then_are_bounded_and_other_domains_keep_serving() {
    let deadline = Duration::from_millis(50);
    let hangs = GoLogic::new(fixture())
        .deadline(deadline)
        .max_stuck_calls(2);
    // Its own deadline, far from the hanging one's: a slow moment of a loaded machine must not
    // turn its answer into a timeout.
    let bank = GoLogic::new(fixture()).deadline(Duration::from_secs(10));
    runtime().block_on(async {
        for _ in 0..2 {
            assert_eq!(
                hangs.handle(to("fault-hangs")).await,
                Err(ClientLogicError::Timeout(deadline))
            );
        }
        // Two calls are still blocked in Go: the third is refused without a call.
        let Err(ClientLogicError::Unavailable(message)) = hangs.handle(to("fault-hangs")).await
        else {
            panic!("the bound on stuck calls must refuse the command");
        };
        assert!(message.contains("2 calls"), "{message}");
        // The bound is per logic: the bank of the same library still answers.
        assert!(bank.handle(to("account")).await.is_ok());
    });
}

/// A call gives its place back when it returns: one place serves any number of calls in turn.
#[test]
fn a_returned_call_gives_its_place_back() {
    let bank = GoLogic::new(fixture()).max_in_flight(1);
    runtime().block_on(async {
        for _ in 0..3 {
            assert!(bank.handle(to("account")).await.is_ok());
        }
    });
}

#[test]
fn calls_in_go_are_bounded_before_any_deadline_passes() {
    // A handler that hangs, a long deadline: nothing is stuck yet, but each call holds a
    // thread; past the bound, commands are refused at once instead of starting more.
    let hangs = Arc::new(
        GoLogic::new(fixture())
            .deadline(Duration::from_secs(60))
            .max_in_flight(3),
    );
    runtime().block_on(async {
        let calls: Vec<_> = (0..3)
            .map(|_| {
                let hangs = Arc::clone(&hangs);
                tokio::spawn(async move { hangs.handle(to("fault-hangs")).await })
            })
            .collect();
        tokio::time::sleep(Duration::from_millis(200)).await;
        let Err(ClientLogicError::Unavailable(message)) = hangs.handle(to("fault-hangs")).await
        else {
            panic!("the bound on calls in flight must refuse the command");
        };
        assert!(message.contains("3 calls"), "{message}");
        for call in calls {
            call.abort();
        }
    });
}

#[test]
fn concurrent_calls_from_many_threads_all_answer() {
    let logic = Arc::new(GoLogic::new(fixture()));
    runtime().block_on(async {
        let calls: Vec<_> = (0..64)
            .map(|_| {
                let logic = Arc::clone(&logic);
                tokio::spawn(async move {
                    let command = common::contextual(
                        "account",
                        Uuid::new_v4(),
                        None,
                        &[],
                        &[angzarr_example_bank::open("ada")],
                    );
                    logic.handle(command).await
                })
            })
            .collect();
        for call in calls {
            assert!(matches!(
                call.await.unwrap(),
                Ok(BusinessReply { outcome: Some(_) })
            ));
        }
    });
}

#[test]
fn the_same_library_is_loaded_once() {
    let first = fixture();
    let path = first.path().to_owned();
    // Another name for the same file.
    let other_name = path
        .parent()
        .unwrap()
        .join(".")
        .join(path.file_name().unwrap());
    assert!(Arc::ptr_eq(&first, &GoLibrary::load(other_name).unwrap()));
}

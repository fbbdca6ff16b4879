//! `GrpcLogic` and `serve_logic` directly: faults, the status mapping end to end, the retry
//! bound, and reconnection to a server that comes back.

mod common;

use std::sync::Arc;
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::Duration;

use angzarr_bridge_grpc::{GrpcConfig, GrpcLogic};
use angzarr_conformance::bridge::{BridgeHarness, Fault};
use angzarr_ports::{BusinessReply, ClientLogic, ClientLogicError, ContextualCommand, async_trait};
use angzarr_proto::v1::{EventBook, EventsEmitted, business_reply::Outcome};
use common::{ChildLogic, GrpcHarness, Transport};
use uuid::Uuid;

const TRANSPORTS: [Transport; 2] = [Transport::Unix, Transport::Tcp];

/// Opening an account, with no history.
fn open_account() -> ContextualCommand {
    let root = Uuid::new_v4();
    let command = angzarr_example_bank::command(root, &angzarr_example_bank::open("ann"));
    ContextualCommand {
        events: Some(EventBook {
            cover: command.cover.clone(),
            ..EventBook::default()
        }),
        command: Some(command),
    }
}

fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap()
}

#[test]
fn the_bank_decides_as_in_process() {
    runtime().block_on(async {
        let harness = GrpcHarness::new(Transport::Unix);
        let remote = harness.bank(0).await;
        let command = open_account();
        let native = angzarr_example_bank::logic(0).handle(command.clone()).await;
        assert!(matches!(
            &native,
            Ok(BusinessReply {
                outcome: Some(Outcome::Events(_))
            })
        ));
        assert_eq!(remote.handle(command).await, native);
    });
}

#[test]
fn faults_are_typed() {
    runtime().block_on(async {
        for transport in TRANSPORTS {
            let harness = GrpcHarness::new(transport);
            // Also the deadline of the faults that answer at once: room for a loaded machine.
            let deadline = Duration::from_secs(1);
            for fault in Fault::ALL {
                let logic = harness.faulty(fault, deadline).await;
                let mut command = open_account();
                command
                    .command
                    .as_mut()
                    .unwrap()
                    .cover
                    .as_mut()
                    .unwrap()
                    .domain = fault.domain().to_owned();
                let error = logic.handle(command).await.unwrap_err();
                assert!(fault.expects(&error), "{transport:?} {fault:?}: {error:?}");
                match error {
                    ClientLogicError::Failed(message) => {
                        assert_eq!(message, format!("UNKNOWN: {}", common::FAILS_MESSAGE));
                    }
                    ClientLogicError::Timeout(after) => assert_eq!(after, deadline),
                    // The process died during the first attempt; the retries found it gone.
                    ClientLogicError::Unavailable(message) if fault == Fault::DiesMidCall => {
                        assert!(message.contains("refused"), "{message}");
                        assert!(message.contains("; first attempt: "), "{message}");
                    }
                    _ => {}
                }
            }
        }
    });
}

/// Answers `error` to every command, or panics when there is none.
struct Fixed(Option<ClientLogicError>);

#[async_trait]
impl ClientLogic for Fixed {
    async fn handle(&self, _: ContextualCommand) -> Result<BusinessReply, ClientLogicError> {
        match &self.0 {
            Some(error) => Err(error.clone()),
            None => panic!("the logic has a bug"),
        }
    }
}

#[test]
fn rust_errors_round_trip() {
    runtime().block_on(async {
        let dir = tempfile::tempdir().unwrap();
        let mut config = GrpcConfig::default();
        config.retries = 0;
        let deadline = config.request_timeout;
        let cases = [
            (
                ClientLogicError::InvalidCommand("unknown command".into()),
                None,
            ),
            (
                ClientLogicError::InvalidHistory("unknown event".into()),
                None,
            ),
            (ClientLogicError::InvalidSnapshot("old layout".into()), None),
            (ClientLogicError::Failed("boom".into()), None),
            (
                ClientLogicError::Unavailable("the database is down".into()),
                None,
            ),
            // The caller's deadline is the one reported.
            (
                ClientLogicError::Timeout(Duration::from_millis(1)),
                Some(ClientLogicError::Timeout(deadline)),
            ),
            (
                ClientLogicError::InvalidReply("junk".into()),
                Some(ClientLogicError::Failed(
                    "client logic gave an invalid reply: junk".into(),
                )),
            ),
        ];
        for transport in TRANSPORTS {
            for (error, expected) in cases.clone() {
                let logic = Arc::new(Fixed(Some(error.clone())));
                let served = common::served(logic, transport, dir.path(), config.clone()).await;
                let got = served.handle(open_account()).await.unwrap_err();
                assert_eq!(got, expected.unwrap_or(error), "{transport:?}");
            }
            let served =
                common::served(Arc::new(Fixed(None)), transport, dir.path(), config.clone()).await;
            match served.handle(open_account()).await {
                Err(ClientLogicError::Failed(message)) => {
                    assert!(message.contains("panicked"), "{message}");
                }
                other => panic!("a panic gave {other:?}"),
            }
        }
    });
}

/// Unavailable for the first `failures` calls, then an empty reply; counts the calls.
struct Flaky {
    failures: u32,
    error: ClientLogicError,
    calls: AtomicU32,
}

#[async_trait]
impl ClientLogic for Flaky {
    async fn handle(&self, _: ContextualCommand) -> Result<BusinessReply, ClientLogicError> {
        if self.calls.fetch_add(1, Ordering::SeqCst) < self.failures {
            return Err(self.error.clone());
        }
        Ok(BusinessReply {
            outcome: Some(Outcome::Events(EventsEmitted::default())),
        })
    }
}

#[test]
fn retries_are_bounded() {
    runtime().block_on(async {
        let dir = tempfile::tempdir().unwrap();
        let unavailable = ClientLogicError::Unavailable("busy".into());
        // (retries, failures before success, error, calls expected, succeeds)
        let cases = [
            (2, 2, unavailable.clone(), 3, true),
            (2, 3, unavailable.clone(), 3, false),
            (2, 100, unavailable.clone(), 3, false),
            (0, 1, unavailable.clone(), 1, false),
            (5, 4, unavailable.clone(), 5, true),
            // Only unavailability is retried.
            (2, 1, ClientLogicError::Failed("no".into()), 1, false),
            (
                2,
                1,
                ClientLogicError::InvalidCommand("no".into()),
                1,
                false,
            ),
        ];
        for (retries, failures, error, calls, succeeds) in cases {
            let flaky = Arc::new(Flaky {
                failures,
                error: error.clone(),
                calls: AtomicU32::new(0),
            });
            let mut config = GrpcConfig::default();
            config.retries = retries;
            config.backoff = Duration::from_millis(1);
            let served = common::served(flaky.clone(), Transport::Unix, dir.path(), config).await;
            let result = served.handle(open_account()).await;
            let case = format!("{retries} retries, {failures} failures");
            assert_eq!(flaky.calls.load(Ordering::SeqCst), calls, "{case}");
            match result {
                Ok(_) => assert!(succeeds, "{case}"),
                Err(got) => {
                    assert!(!succeeds, "{case}");
                    match error {
                        ClientLogicError::Unavailable(_) => {
                            assert!(matches!(got, ClientLogicError::Unavailable(_)), "{case}")
                        }
                        error => assert_eq!(got, error, "{case}"),
                    }
                }
            }
        }
    });
}

#[test]
fn an_unreachable_target_is_named() {
    runtime().block_on(async {
        let dir = tempfile::tempdir().unwrap();
        for transport in TRANSPORTS {
            let target = common::unreachable_target(transport, dir.path());
            let logic = GrpcLogic::new(&target, GrpcConfig::default()).unwrap();
            match logic.handle(open_account()).await {
                Err(ClientLogicError::Unavailable(message)) => {
                    let shown = logic.target().to_string();
                    assert!(message.contains(&shown), "{message} does not name {shown}");
                    assert!(message.contains("3 attempts"), "{message}");
                }
                other => panic!("{transport:?}: {other:?}"),
            }
        }
    });
}

#[test]
fn reconnects_to_a_server_restarted_on_the_same_address() {
    runtime().block_on(async {
        let dir = tempfile::tempdir().unwrap();
        for transport in TRANSPORTS {
            let bank = || Arc::new(angzarr_example_bank::logic(0));
            let server = common::start(bank(), &common::fresh_target(transport, dir.path())).await;
            let target = server.target.clone();
            let mut config = GrpcConfig::default();
            config.backoff = Duration::from_millis(1);
            let logic = GrpcLogic::new(&target, config).unwrap();
            assert!(logic.handle(open_account()).await.is_ok(), "{transport:?}");
            server.stop().await;
            assert!(
                matches!(
                    logic.handle(open_account()).await,
                    Err(ClientLogicError::Unavailable(_))
                ),
                "{transport:?}: a stopped server answered"
            );
            let server = common::start(bank(), &target).await;
            assert_eq!(server.target, target);
            assert!(logic.handle(open_account()).await.is_ok(), "{transport:?}");
            server.stop().await;
        }
    });
}

#[test]
fn reconnects_to_a_killed_and_restarted_process() {
    runtime().block_on(async {
        let dir = tempfile::tempdir().unwrap();
        for transport in TRANSPORTS {
            let (mut child, target) = common::spawn_child(
                ChildLogic::Bank,
                &common::fresh_target(transport, dir.path()),
            )
            .await;
            let mut config = GrpcConfig::default();
            config.backoff = Duration::from_millis(1);
            let logic = GrpcLogic::new(&target, config).unwrap();
            assert!(logic.handle(open_account()).await.is_ok(), "{transport:?}");
            // SIGKILL: the socket file of a Unix socket stays behind.
            child.kill().await.unwrap();
            assert!(
                matches!(
                    logic.handle(open_account()).await,
                    Err(ClientLogicError::Unavailable(_))
                ),
                "{transport:?}: a killed server answered"
            );
            let (_child, restarted) = common::spawn_child(ChildLogic::Bank, &target).await;
            assert_eq!(restarted, target);
            assert!(logic.handle(open_account()).await.is_ok(), "{transport:?}");
        }
    });
}

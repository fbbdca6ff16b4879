//! The bridge's own behaviour: the bank decides as the Rust bank does, exceptions carry their
//! details, Python-side errors keep their kind, deadlines hold, and load errors are typed.

mod common;

use std::time::Duration;

use angzarr_bridge_python::{LoadError, PythonConfig, PythonLogic};
use angzarr_core::native::pack;
use angzarr_example_bank::proto::{Account, BankCommand};
use angzarr_example_bank::{command, deposit, open, withdraw};
use angzarr_ports::{ClientLogic, ClientLogicError};
use angzarr_proto::v1::{
    BusinessReply, CommandBook, CommandPage, ContextualCommand, Cover, EventBook, EventPage,
    Snapshot, business_reply::Outcome,
};
use prost::Message;
use prost_types::Any;
use uuid::Uuid;

const DEADLINE: Duration = Duration::from_secs(10);

fn contextual(book: EventBook, command: CommandBook) -> ContextualCommand {
    ContextualCommand {
        events: Some(book),
        command: Some(command),
    }
}

/// A command of `domain` whose payload is `payload`.
fn raw(domain: &str, payload: Any) -> CommandBook {
    CommandBook {
        cover: Some(Cover {
            domain: domain.into(),
            root: Uuid::new_v4().to_string(),
            ..Cover::default()
        }),
        pages: vec![CommandPage {
            payload: Some(payload),
        }],
        ..CommandBook::default()
    }
}

/// A history kept as the gateway keeps it: events appended, and replaced by the snapshot
/// when the logic returns one.
#[derive(Default)]
struct History(EventBook);

impl History {
    fn record(&mut self, reply: &BusinessReply) {
        let Some(Outcome::Events(emitted)) = &reply.outcome else {
            return;
        };
        self.0.pages.extend(emitted.pages.iter().cloned());
        if let (Some(state), Some(last)) = (&emitted.snapshot_state, emitted.pages.last()) {
            self.0.snapshot = Some(Snapshot {
                sequence: last.sequence,
                state: Some(state.clone()),
            });
            self.0.pages.clear();
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_python_bank_decides_byte_for_byte_as_the_rust_bank() {
    let root = Uuid::new_v4();
    let script: Vec<BankCommand> = vec![
        withdraw(1),
        BankCommand::default(),
        open("ada"),
        open("bob"),
        deposit(0),
        deposit(500),
        withdraw(501),
        withdraw(200),
        withdraw(0),
        BankCommand::default(),
        deposit(u64::MAX),
        deposit(u64::MAX - 300),
        withdraw(u64::MAX),
        deposit(7),
    ];
    for snapshot_every in [0, 1, 2, 3] {
        let python = common::load(&common::bank_module(snapshot_every), DEADLINE);
        let rust = angzarr_example_bank::logic(snapshot_every);
        let mut history = History::default();
        for (step, bank_command) in script.iter().enumerate() {
            let request = contextual(history.0.clone(), command(root, bank_command));
            let expected = rust.handle(request.clone()).await.unwrap();
            let actual = python.handle(request).await.unwrap();
            assert_eq!(
                actual.encode_to_vec(),
                expected.encode_to_vec(),
                "snapshot_every {snapshot_every}, step {step} ({bank_command:?}): \
                 python {actual:?}, rust {expected:?}"
            );
            history.record(&expected);
        }
        assert!(
            history.0.snapshot.is_some() == (snapshot_every > 0),
            "no snapshot was taken"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn several_commands_in_one_book_are_decided_in_turn() {
    let python = common::load(&common::bank_module(2), DEADLINE);
    let rust = angzarr_example_bank::logic(2);
    let mut book = command(Uuid::new_v4(), &open("ada"));
    for next in [deposit(5), withdraw(2), deposit(1)] {
        book.pages.push(CommandPage {
            payload: Some(pack(&next)),
        });
    }
    let request = contextual(EventBook::default(), book);
    let expected = rust.handle(request.clone()).await.unwrap();
    assert_eq!(python.handle(request).await.unwrap(), expected);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_exception_fails_with_its_type_message_and_traceback_and_the_host_serves_on() {
    let logic = common::load("bank_fixture", DEADLINE);
    let any = pack(&open("ada"));
    let error = logic
        .handle(contextual(
            EventBook::default(),
            raw("fault-fails", any.clone()),
        ))
        .await
        .unwrap_err();
    let ClientLogicError::Failed(text) = error else {
        panic!("expected Failed, got {error:?}");
    };
    assert!(
        text.starts_with("RuntimeError: the fixture fails on purpose ("),
        "{text}"
    );
    assert!(
        text.contains("Traceback (most recent call last):"),
        "{text}"
    );
    assert!(text.contains("bank_fixture.py"), "{text}");
    assert!(text.contains("in _fails"), "{text}");

    // sys.exit is an exception like any other: the process is not exited.
    let error = logic
        .handle(contextual(
            EventBook::default(),
            raw("fault-exits", any.clone()),
        ))
        .await
        .unwrap_err();
    assert!(
        matches!(&error, ClientLogicError::Failed(text) if text.starts_with("SystemExit: 3")),
        "{error:?}"
    );

    let reply = logic
        .handle(contextual(
            EventBook::default(),
            command(Uuid::new_v4(), &open("ada")),
        ))
        .await
        .unwrap();
    assert!(matches!(reply.outcome, Some(Outcome::Events(_))));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn replies_that_are_not_encoded_business_replies_are_invalid() {
    let logic = common::load("bank_fixture", DEADLINE);
    for (domain, expected) in [
        ("fault-malformed", "not a BusinessReply"),
        ("fault-not-bytes", "handle returned a str, not bytes"),
        (
            "fault-empty-reply",
            "the reply has neither events nor a rejection",
        ),
    ] {
        let error = logic
            .handle(contextual(
                EventBook::default(),
                raw(domain, pack(&open("x"))),
            ))
            .await
            .unwrap_err();
        assert!(
            matches!(&error, ClientLogicError::InvalidReply(text) if text.contains(expected)),
            "{domain}: {error:?}"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn python_side_errors_keep_their_kind() {
    let logic = common::load("bank", DEADLINE);
    let root = Uuid::new_v4();
    let bank_command_url = "type.googleapis.com/examples.bank.v1.BankCommand";

    // A malformed payload of the right type.
    let garbage = Any {
        type_url: bank_command_url.into(),
        value: vec![0xff, 0xff, 0xff],
    };
    let mut book = command(root, &open("ada"));
    book.pages[0].payload = Some(garbage);
    let error = logic
        .handle(contextual(EventBook::default(), book))
        .await
        .unwrap_err();
    assert!(
        matches!(&error, ClientLogicError::InvalidCommand(text)
            if text.starts_with(&format!("undecodable {bank_command_url}: "))),
        "{error:?}"
    );

    // A payload of another type: the text of the Rust logic.
    let mut book = command(root, &open("ada"));
    book.pages[0].payload = Some(pack(&Account::default()));
    let error = logic
        .handle(contextual(EventBook::default(), book))
        .await
        .unwrap_err();
    assert_eq!(
        error,
        ClientLogicError::InvalidCommand(
            r#"expected a examples.bank.v1.BankCommand, found "type.googleapis.com/examples.bank.v1.Account""#
                .into()
        )
    );

    // A snapshot of another type, or without state.
    for state in [Some(pack(&open("ada"))), None] {
        let book = EventBook {
            snapshot: Some(Snapshot { sequence: 0, state }),
            ..EventBook::default()
        };
        let error = logic
            .handle(contextual(book, command(root, &deposit(1))))
            .await
            .unwrap_err();
        assert!(
            matches!(error, ClientLogicError::InvalidSnapshot(_)),
            "{error:?}"
        );
    }

    // An event without payload, and one of another type.
    for payload in [None, Some(pack(&Account::default()))] {
        let book = EventBook {
            pages: vec![EventPage {
                sequence: 0,
                payload,
                ..EventPage::default()
            }],
            ..EventBook::default()
        };
        let error = logic
            .handle(contextual(book, command(root, &deposit(1))))
            .await
            .unwrap_err();
        assert!(
            matches!(error, ClientLogicError::InvalidHistory(_)),
            "{error:?}"
        );
    }
}

/// On a single-threaded runtime: if the bridge blocked the runtime's thread, the deadline's
/// timer could not fire and this test would hang instead of passing.
#[tokio::test(flavor = "current_thread")]
async fn a_hanging_handler_times_out_and_is_interrupted_so_its_slot_comes_back() {
    let deadline = Duration::from_millis(300);
    let logic = PythonLogic::load(
        PythonConfig::new("bank_fixture")
            .paths(common::paths())
            .deadline(deadline)
            .max_in_flight(1),
    )
    .unwrap();
    let error = logic
        .handle(contextual(
            EventBook::default(),
            raw("fault-hangs", pack(&open("x"))),
        ))
        .await
        .unwrap_err();
    assert_eq!(error, ClientLogicError::Timeout(deadline));
    // The only slot is the hanging call's until the interruption reaches it: without one,
    // every attempt would time out, since the handler loops forever.
    let mut attempts = 0;
    let reply = loop {
        attempts += 1;
        match logic
            .handle(contextual(
                EventBook::default(),
                command(Uuid::new_v4(), &open("ada")),
            ))
            .await
        {
            Ok(reply) => break reply,
            Err(ClientLogicError::Timeout(_)) if attempts < 30 => continue,
            Err(error) => panic!("the slot never came back: {error:?}"),
        }
    };
    assert!(matches!(reply.outcome, Some(Outcome::Events(_))));
}

#[tokio::test(flavor = "current_thread")]
async fn a_handler_stuck_in_c_keeps_its_slot_and_later_calls_time_out() {
    let deadline = Duration::from_millis(200);
    let logic = PythonLogic::load(
        PythonConfig::new("bank_fixture")
            .paths(common::paths())
            .deadline(deadline)
            .max_in_flight(1),
    )
    .unwrap();
    let stuck = logic
        .handle(contextual(
            EventBook::default(),
            raw("fault-hangs-in-c", pack(&open("x"))),
        ))
        .await;
    assert_eq!(stuck.unwrap_err(), ClientLogicError::Timeout(deadline));
    // time.sleep(3600) in C: the interruption waits for it, and so does the only slot.
    let next = logic
        .handle(contextual(
            EventBook::default(),
            command(Uuid::new_v4(), &open("ada")),
        ))
        .await;
    assert_eq!(next.unwrap_err(), ClientLogicError::Timeout(deadline));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_calls_all_get_their_answer() {
    let logic = std::sync::Arc::new(common::load("bank", DEADLINE));
    let calls: Vec<_> = (0..64)
        .map(|i| {
            let logic = logic.clone();
            tokio::spawn(async move {
                let owner = format!("owner {i}");
                let reply = logic
                    .handle(contextual(
                        EventBook::default(),
                        command(Uuid::new_v4(), &open(&owner)),
                    ))
                    .await
                    .unwrap();
                (owner, reply)
            })
        })
        .collect();
    for call in calls {
        let (owner, reply) = call.await.unwrap();
        let Some(Outcome::Events(emitted)) = reply.outcome else {
            panic!("{owner}: not accepted");
        };
        let state = emitted.state.expect("the state comes back with the events");
        assert_eq!(
            Account::decode(state.value.as_slice()).unwrap().owner,
            owner
        );
    }
}

#[test]
fn load_errors_are_typed() {
    let error = |module: &str| common::try_load(module, DEADLINE).unwrap_err();
    assert!(
        matches!(error("no_such_module_anywhere"), LoadError::ModuleNotFound { module, message }
            if module == "no_such_module_anywhere" && message.contains("no_such_module_anywhere")),
    );
    let LoadError::Import { message, .. } = error("broken_import") else {
        panic!("expected an import error");
    };
    assert!(
        message.starts_with("ValueError: this module refuses to be imported"),
        "{message}"
    );
    assert!(message.contains("broken_import.py"), "{message}");
    assert_eq!(
        error("no_handler"),
        LoadError::NoHandler {
            module: "no_handler".into()
        }
    );
    assert_eq!(
        error("handler_not_callable"),
        LoadError::HandlerNotCallable {
            module: "handler_not_callable".into(),
            found: "int".into()
        }
    );
    assert_eq!(
        PythonLogic::load(PythonConfig::new("bank").path("/no/such/directory")).unwrap_err(),
        LoadError::PathNotFound("/no/such/directory".into())
    );
    // A virtualenv of another Python: refused before its packages fail to import.
    let other = tempfile::tempdir().unwrap();
    let site_packages = other.path().join("lib/python3.99/site-packages");
    std::fs::create_dir_all(&site_packages).unwrap();
    let Err(LoadError::VersionMismatch {
        path,
        found,
        embedded,
    }) = PythonLogic::load(PythonConfig::new("bank").path(&site_packages))
    else {
        panic!("a site-packages of Python 3.99 was accepted");
    };
    assert_eq!((path, found.as_str()), (site_packages, "3.99"));
    assert!(embedded.starts_with("3."), "{embedded}");
    assert!(matches!(
        PythonLogic::load(PythonConfig::new("")).unwrap_err(),
        LoadError::InvalidConfig(_)
    ));
    assert!(matches!(
        PythonLogic::load(PythonConfig::new("bank").max_in_flight(0)).unwrap_err(),
        LoadError::InvalidConfig(_)
    ));
}

/// The variable that makes this test binary, run again as a child, try the failing start.
const CHILD: &str = "ANGZARR_BRIDGE_PYTHON_INIT_CHILD";

/// The interpreter starts once per process, so the failing start runs in a child process:
/// this test binary again, with a `PYTHONHOME` that has no standard library.
#[test]
fn an_interpreter_that_cannot_start_is_a_load_error_not_an_abort() {
    if std::env::var_os(CHILD).is_some() {
        let error = PythonLogic::load(PythonConfig::new("bank")).unwrap_err();
        assert!(matches!(error, LoadError::Init(_)), "{error:?}");
        println!("child: {error}");
        return;
    }
    let output = std::process::Command::new(std::env::current_exe().unwrap())
        .args([
            "--exact",
            "an_interpreter_that_cannot_start_is_a_load_error_not_an_abort",
            "--nocapture",
            "--test-threads=1",
        ])
        .env(CHILD, "1")
        .env("PYTHONHOME", "/nonexistent-python-home")
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&output.stdout);
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(
        output.status.success() && stdout.contains("child: the Python interpreter could not start"),
        "the child failed ({}):\n{stdout}\n{stderr}",
        output.status
    );
}

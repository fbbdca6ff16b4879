//! The command pipeline end to end, in-process: the bank's logic over the in-memory store.

use std::sync::Arc;

use angzarr_core::{CommandError, Gateway, GatewayConfig, NativeLogic};
use angzarr_example_bank::{Account, DOMAIN, command, deposit, logic, open, replay, withdraw};
use angzarr_ports::{
    AggregateId, Append, ClientLogic, ClientLogicError, Domain, EventStore, EventStoreExt,
    SnapshotStore, SnapshotStoreError, async_trait,
};
use angzarr_proto::v1::{
    BusinessReply, CommandBook, CommandPage, ContextualCommand, EventPage, EventsEmitted, Snapshot,
    business_reply::Outcome,
};
use angzarr_store_memory::MemoryStore;
use prost_types::Any;
use uuid::Uuid;

fn gateway_with(
    store: Arc<MemoryStore>,
    logic: Arc<dyn ClientLogic>,
    config: GatewayConfig,
) -> Gateway {
    Gateway::builder(store.clone(), store)
        .register(Domain::new(DOMAIN).unwrap(), logic)
        .config(config)
        .build()
}

fn bank(snapshot_every: u64) -> (Gateway, Arc<MemoryStore>) {
    let store = Arc::new(MemoryStore::new());
    (
        gateway_with(
            store.clone(),
            Arc::new(logic(snapshot_every)),
            GatewayConfig::default(),
        ),
        store,
    )
}

fn account(root: Uuid) -> AggregateId {
    AggregateId::new(Domain::new(DOMAIN).unwrap(), root).unwrap()
}

async fn fold(gateway: &Gateway, root: Uuid) -> Account {
    let loaded = gateway.load(&account(root)).await.unwrap();
    let snapshot = loaded.snapshot.and_then(|snapshot| snapshot.state);
    replay(snapshot.as_ref(), &loaded.pages).unwrap()
}

#[tokio::test]
async fn commands_append_events_with_sequences_correlation_and_time() {
    let (gateway, store) = bank(0);
    let root = Uuid::new_v4();
    let opened = gateway.execute(command(root, &open("ada"))).await.unwrap();
    let deposited = gateway.execute(command(root, &deposit(500))).await.unwrap();
    let withdrawn = gateway
        .execute(command(root, &withdraw(200)))
        .await
        .unwrap();
    let sequences = |response: &angzarr_proto::v1::CommandResponse| {
        response
            .events
            .as_ref()
            .unwrap()
            .pages
            .iter()
            .map(|page| page.sequence)
            .collect::<Vec<_>>()
    };
    assert_eq!(
        (
            sequences(&opened),
            sequences(&deposited),
            sequences(&withdrawn)
        ),
        (vec![0], vec![1], vec![2])
    );
    let stored = store.read_all(&account(root)).await.unwrap();
    assert_eq!(stored.len(), 3);
    for page in &stored {
        assert!(page.created_at.is_some(), "created_at is stamped");
        assert!(
            Uuid::try_parse(&page.correlation_id).is_ok(),
            "a correlation id is assigned: {page:?}"
        );
    }
    assert_eq!(
        opened.events.unwrap().pages[0],
        stored[0],
        "the answer holds exactly what was stored"
    );
    assert_eq!(fold(&gateway, root).await.balance, 300);
}

#[tokio::test]
async fn a_given_correlation_id_is_kept_and_findable() {
    let (gateway, store) = bank(0);
    let root = Uuid::new_v4();
    let mut book = command(root, &open("ada"));
    book.cover.as_mut().unwrap().correlation_id = "order-17".into();
    gateway.execute(book).await.unwrap();
    let found = store.find_by_correlation("order-17").await.unwrap();
    assert_eq!(
        (found.len(), found[0].aggregate.root(), found[0].pages.len()),
        (1, root, 1)
    );
}

#[tokio::test]
async fn an_overdraft_is_rejected_and_writes_nothing() {
    let (gateway, store) = bank(0);
    let root = Uuid::new_v4();
    gateway.execute(command(root, &open("ada"))).await.unwrap();
    gateway.execute(command(root, &deposit(100))).await.unwrap();
    let error = gateway
        .execute(command(root, &withdraw(101)))
        .await
        .unwrap_err();
    assert!(
        matches!(&error, CommandError::Rejected(reason) if reason == "insufficient funds"),
        "{error}"
    );
    assert_eq!(store.next_sequence(&account(root)).await.unwrap(), 2);
}

#[tokio::test]
async fn malformed_commands_get_typed_errors_and_write_nothing() {
    let (gateway, store) = bank(0);
    let root = Uuid::new_v4();
    let with = |edit: fn(&mut CommandBook)| {
        let mut book = command(root, &open("ada"));
        edit(&mut book);
        book
    };
    let invalid = [
        with(|book| book.cover = None),
        with(|book| book.cover.as_mut().unwrap().domain = "account:x".into()),
        with(|book| book.cover.as_mut().unwrap().root = Uuid::nil().to_string()),
        with(|book| book.cover.as_mut().unwrap().root = "not-a-uuid".into()),
        with(|book| book.pages.clear()),
        with(|book| book.pages[0].payload = None),
        with(|book| book.request_id = "r".repeat(1000)),
    ];
    for book in invalid {
        let error = gateway.execute(book.clone()).await.unwrap_err();
        assert!(
            matches!(error, CommandError::InvalidCommand(_)),
            "{book:?} gave {error}"
        );
    }
    let unknown = with(|book| book.cover.as_mut().unwrap().domain = "ledger".into());
    assert!(
        matches!(gateway.execute(unknown).await, Err(CommandError::UnknownDomain(domain)) if domain == "ledger")
    );
    let wrong_type = with(|book| {
        book.pages[0].payload = Some(Any {
            type_url: "x/Nope".into(),
            value: vec![1],
        })
    });
    assert!(matches!(
        gateway.execute(wrong_type).await,
        Err(CommandError::Logic(ClientLogicError::InvalidCommand(_)))
    ));
    assert_eq!(
        store.list_domains().await.unwrap(),
        Vec::<Domain>::new(),
        "nothing was written"
    );
}

/// The bank's logic, counting its calls and taking a millisecond to decide, so that
/// concurrent commands really interleave between their load and their append.
struct SlowBank {
    calls: std::sync::atomic::AtomicUsize,
}

#[async_trait]
impl ClientLogic for SlowBank {
    async fn handle(&self, command: ContextualCommand) -> Result<BusinessReply, ClientLogicError> {
        self.calls
            .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        tokio::time::sleep(std::time::Duration::from_millis(1)).await;
        logic(0).handle(command).await
    }
}

/// `count` gateways over one store, as `count` processes sharing a database would be.
fn processes(count: usize) -> (Vec<Gateway>, Arc<MemoryStore>, Arc<SlowBank>) {
    let store = Arc::new(MemoryStore::new());
    let slow = Arc::new(SlowBank {
        calls: Default::default(),
    });
    let gateways = (0..count)
        .map(|_| gateway_with(store.clone(), slow.clone(), GatewayConfig::default()))
        .collect();
    (gateways, store, slow)
}

#[tokio::test]
async fn a_stale_expected_sequence_is_a_conflict_and_never_retried() {
    let (gateways, store, slow) = processes(1);
    let gateway = &gateways[0];
    let root = Uuid::new_v4();
    gateway.execute(command(root, &open("ada"))).await.unwrap();
    let calls = slow.calls.load(std::sync::atomic::Ordering::Relaxed);
    let mut book = command(root, &deposit(5));
    book.expected_sequence = Some(0);
    book.retry_on_conflict = true; // never overrides an explicit expectation
    let error = gateway.execute(book.clone()).await.unwrap_err();
    assert!(
        matches!(
            error,
            CommandError::Conflict {
                expected: 0,
                actual: 1
            }
        ),
        "{error}"
    );
    assert_eq!(
        slow.calls.load(std::sync::atomic::Ordering::Relaxed),
        calls,
        "not decided, not retried"
    );
    book.expected_sequence = Some(1);
    gateway.execute(book).await.unwrap();
    assert_eq!(store.next_sequence(&account(root)).await.unwrap(), 2);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_repeated_request_id_returns_the_first_outcome_and_appends_nothing() {
    let (gateways, store, _) = processes(4);
    let root = Uuid::new_v4();
    gateways[0]
        .execute(command(root, &open("ada")))
        .await
        .unwrap();
    let mut book = command(root, &deposit(40));
    book.request_id = "deposit-1".into();
    let first = gateways[0].execute(book.clone()).await.unwrap();
    let mut again = book.clone();
    again.cover.as_mut().unwrap().correlation_id.clear(); // a new one is assigned to the repeat
    let again = gateways[1].execute(again).await.unwrap();
    assert!(!first.replayed && again.replayed);
    assert_eq!(
        first.events, again.events,
        "the same events, under the first correlation id"
    );
    // Duplicates racing through four processes: appended once, every other one a replay.
    book.request_id = "deposit-2".into();
    let racers: Vec<_> = (0..16)
        .map(|racer| {
            let (gateway, book) = (gateways[racer % 4].clone(), book.clone());
            tokio::spawn(async move { gateway.execute(book).await })
        })
        .collect();
    let mut replays = 0;
    for racer in racers {
        replays += usize::from(racer.await.unwrap().unwrap().replayed);
    }
    assert_eq!(replays, 15);
    assert_eq!(
        store.next_sequence(&account(root)).await.unwrap(),
        3,
        "each request id appended once"
    );
    assert_eq!(fold(&gateways[0], root).await.balance, 80);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn racing_processes_retry_on_conflict_only_when_asked() {
    let (gateways, store, _) = processes(4);
    let root = Uuid::new_v4();
    gateways[0]
        .execute(command(root, &open("ada")))
        .await
        .unwrap();
    let race = |retry: bool| {
        let tasks: Vec<_> = (0..16)
            .map(|racer| {
                let gateway = gateways[racer % 4].clone();
                let mut book = command(root, &deposit(1));
                book.retry_on_conflict = retry;
                tokio::spawn(async move { gateway.execute(book).await })
            })
            .collect();
        async move {
            let (mut succeeded, mut conflicts) = (0, 0);
            for task in tasks {
                match task.await.unwrap() {
                    Ok(_) => succeeded += 1,
                    Err(CommandError::Conflict { .. }) => conflicts += 1,
                    Err(other) => panic!("{other}"),
                }
            }
            (succeeded, conflicts)
        }
    };
    assert_eq!(race(true).await, (16, 0), "retried commands all succeed");
    let (succeeded, conflicts) = race(false).await;
    assert!(
        conflicts > 0,
        "four processes racing on one aggregate must collide"
    );
    assert_eq!(succeeded + conflicts, 16);
    assert_eq!(
        store.next_sequence(&account(root)).await.unwrap(),
        1 + 16 + succeeded
    );
    assert_eq!(fold(&gateways[0], root).await.balance, 16 + succeeded);
}

#[tokio::test]
async fn snapshots_are_taken_every_n_events_and_used_when_loading() {
    let (gateway, store) = bank(4);
    let root = Uuid::new_v4();
    gateway.execute(command(root, &open("ada"))).await.unwrap();
    for _ in 0..9 {
        gateway.execute(command(root, &deposit(10))).await.unwrap();
    }
    // Ten events (0..=9): snapshots after the 4th and the 8th, so the latest covers 0..=7.
    let snapshot = SnapshotStore::get(store.as_ref(), &account(root))
        .await
        .unwrap()
        .unwrap();
    assert_eq!(snapshot.sequence, 7);
    let loaded = gateway.load(&account(root)).await.unwrap();
    assert_eq!((loaded.pages.len(), loaded.next_sequence), (2, 10));
    assert_eq!(fold(&gateway, root).await.balance, 90);
}

/// The bank's logic, recording what each call was handed: (events, sequence of the snapshot).
#[derive(Default)]
struct Recording {
    handed: std::sync::Mutex<Vec<(usize, Option<u64>)>>,
}

#[async_trait]
impl ClientLogic for Recording {
    async fn handle(&self, command: ContextualCommand) -> Result<BusinessReply, ClientLogicError> {
        let book = command.events.clone().unwrap_or_default();
        let snapshot = book.snapshot.map(|snapshot| snapshot.sequence);
        self.handed
            .lock()
            .unwrap()
            .push((book.pages.len(), snapshot));
        logic(0).handle(command).await
    }
}

#[tokio::test]
async fn a_warm_aggregate_is_handed_its_folded_state_not_its_history_and_nothing_is_persisted() {
    let store = Arc::new(MemoryStore::new());
    let recording = Arc::new(Recording::default());
    let gateway = gateway_with(store.clone(), recording.clone(), GatewayConfig::default());
    let root = Uuid::new_v4();
    gateway.execute(command(root, &open("ada"))).await.unwrap();
    for _ in 0..50 {
        gateway.execute(command(root, &deposit(10))).await.unwrap();
    }
    let handed = recording.handed.lock().unwrap().clone();
    assert_eq!(handed[0], (0, None), "a new account has no history");
    for (command, handed) in handed.iter().enumerate().skip(1) {
        // The state after the previous command's event, and no event.
        assert_eq!(*handed, (0, Some(command as u64 - 1)), "command {command}");
    }
    // Snapshots are off: the state lives in memory only.
    let stored = SnapshotStore::get(store.as_ref(), &account(root)).await;
    assert_eq!(stored.unwrap(), None);
    assert_eq!(fold(&gateway, root).await.balance, 500);
    // Another process, with nothing in memory, folds the same state from the events.
    let cold = gateway_with(store.clone(), Arc::new(logic(0)), GatewayConfig::default());
    cold.execute(command(root, &withdraw(1))).await.unwrap();
    assert_eq!(fold(&cold, root).await.balance, 499);
}

#[tokio::test]
async fn a_history_too_long_to_cache_still_leaves_its_folded_state_cached() {
    let store = Arc::new(MemoryStore::new());
    let writer = gateway_with(store.clone(), Arc::new(logic(0)), GatewayConfig::default());
    let root = Uuid::new_v4();
    writer.execute(command(root, &open("ada"))).await.unwrap();
    for _ in 0..19 {
        writer.execute(command(root, &deposit(1))).await.unwrap();
    }
    // A budget of 80 keeps no entry over 10 events: the 20-event history is not kept.
    let mut config = GatewayConfig::default();
    config.cached_events = 80;
    let recording = Arc::new(Recording::default());
    let cold = gateway_with(store, recording.clone(), config);
    cold.execute(command(root, &deposit(1))).await.unwrap();
    cold.execute(command(root, &deposit(1))).await.unwrap();
    let handed = recording.handed.lock().unwrap().clone();
    assert_eq!(handed, [(20, None), (0, Some(20))]);
}

/// A snapshot store that is down: commands still work, from the events alone.
struct DownSnapshots;

#[async_trait]
impl SnapshotStore for DownSnapshots {
    async fn get(&self, _: &AggregateId) -> Result<Option<Snapshot>, SnapshotStoreError> {
        Err(SnapshotStoreError::Unavailable("down".into()))
    }
    async fn put(&self, _: &AggregateId, _: Snapshot) -> Result<(), SnapshotStoreError> {
        Err(SnapshotStoreError::Unavailable("down".into()))
    }
    async fn delete(&self, _: &AggregateId) -> Result<(), SnapshotStoreError> {
        Err(SnapshotStoreError::Unavailable("down".into()))
    }
}

#[tokio::test]
async fn a_failing_snapshot_store_only_costs_a_longer_replay() {
    let events = Arc::new(MemoryStore::new());
    let gateway = Gateway::builder(events.clone(), Arc::new(DownSnapshots))
        .register(Domain::new(DOMAIN).unwrap(), Arc::new(logic(1)))
        .build();
    let root = Uuid::new_v4();
    gateway.execute(command(root, &open("ada"))).await.unwrap();
    gateway.execute(command(root, &deposit(7))).await.unwrap();
    assert_eq!(events.next_sequence(&account(root)).await.unwrap(), 2);
}

/// What scripted client logic answers, given the aggregate's next sequence.
type Script = fn(u64) -> Result<BusinessReply, ClientLogicError>;

/// Whether a command failed as it should.
type Expectation = fn(&CommandError) -> bool;

/// Client logic that answers whatever it is told to.
struct Scripted(Script);

#[async_trait]
impl ClientLogic for Scripted {
    async fn handle(&self, command: ContextualCommand) -> Result<BusinessReply, ClientLogicError> {
        let next = command.events.unwrap().pages.len() as u64;
        (self.0)(next)
    }
}

fn emitted(pages: Vec<EventPage>) -> Result<BusinessReply, ClientLogicError> {
    Ok(BusinessReply {
        outcome: Some(Outcome::Events(EventsEmitted {
            pages,
            snapshot_state: None,
            state: None,
        })),
    })
}

fn event(sequence: u64, bytes: usize) -> EventPage {
    let payload = Any {
        type_url: "test/Event".into(),
        value: vec![1; bytes],
    };
    EventPage {
        sequence,
        payload: Some(payload),
        ..EventPage::default()
    }
}

#[tokio::test]
async fn bad_replies_from_client_logic_write_nothing() {
    let cases: [(Script, Expectation); 6] = [
        (
            |next| emitted(vec![event(next + 1, 1)]),
            |e| matches!(e, CommandError::InvalidEvents(_)),
        ),
        (
            |next| emitted(vec![event(next, 1), event(next, 1)]),
            |e| matches!(e, CommandError::InvalidEvents(_)),
        ),
        (
            |next| {
                emitted(vec![EventPage {
                    payload: None,
                    ..event(next, 1)
                }])
            },
            |e| matches!(e, CommandError::InvalidEvents(_)),
        ),
        (
            |next| emitted(vec![event(next, 2000)]),
            |e| matches!(e, CommandError::LimitExceeded { .. }),
        ),
        (
            |next| emitted((next..next + 11).map(|s| event(s, 1)).collect()),
            |e| matches!(e, CommandError::LimitExceeded { .. }),
        ),
        (
            |_| Ok(BusinessReply { outcome: None }),
            |e| matches!(e, CommandError::Logic(ClientLogicError::InvalidReply(_))),
        ),
    ];
    let mut config = GatewayConfig::default();
    config.max_event_bytes = 1000;
    config.max_events_per_command = 10;
    for (index, (reply, expected)) in cases.into_iter().enumerate() {
        let store = Arc::new(MemoryStore::new());
        let gateway = gateway_with(store.clone(), Arc::new(Scripted(reply)), config.clone());
        let error = gateway
            .execute(command(Uuid::new_v4(), &open("ada")))
            .await
            .unwrap_err();
        assert!(expected(&error), "case {index}: {error}");
        assert!(
            store.list_domains().await.unwrap().is_empty(),
            "case {index} wrote something"
        );
    }
}

#[tokio::test]
async fn a_panic_in_native_logic_is_a_typed_error() {
    #[derive(Clone, PartialEq, prost::Message)]
    struct Boom {}
    impl prost::Name for Boom {
        const NAME: &'static str = "Boom";
        const PACKAGE: &'static str = "test";
    }
    impl angzarr_core::Aggregate for Boom {
        type Command = Boom;
        type Event = Boom;
        fn apply(&mut self, _: &Boom) {}
        fn handle(&self, _: Boom) -> Result<Vec<Boom>, angzarr_proto::v1::Rejection> {
            panic!("kaboom")
        }
    }
    let store = Arc::new(MemoryStore::new());
    let gateway = gateway_with(
        store.clone(),
        Arc::new(NativeLogic::<Boom>::new()),
        GatewayConfig::default(),
    );
    let mut book = command(Uuid::new_v4(), &open("ada"));
    book.pages = vec![CommandPage {
        payload: Some(Any::from_msg(&Boom {}).unwrap()),
    }];
    let error = gateway.execute(book).await.unwrap_err();
    assert!(
        matches!(&error, CommandError::Logic(ClientLogicError::Failed(m)) if m.contains("kaboom")),
        "{error}"
    );
}

#[tokio::test]
async fn several_command_pages_are_decided_in_order() {
    let (gateway, _) = bank(0);
    let root = Uuid::new_v4();
    let mut book = command(root, &open("ada"));
    for next in [deposit(50), withdraw(20)] {
        book.pages.push(command(root, &next).pages.remove(0));
    }
    let response = gateway.execute(book).await.unwrap();
    assert_eq!(response.events.unwrap().pages.len(), 3);
    assert_eq!(fold(&gateway, root).await.balance, 30);
    // A rejection of any page rejects the whole command.
    let mut book = command(root, &deposit(5));
    book.pages
        .push(command(root, &withdraw(1000)).pages.remove(0));
    assert!(matches!(
        gateway.execute(book).await,
        Err(CommandError::Rejected(_))
    ));
    assert_eq!(fold(&gateway, root).await.balance, 30);
}

#[tokio::test]
async fn a_history_cached_by_one_process_never_hides_writes_of_another() {
    let (gateways, store, _) = processes(2);
    let (first, second) = (&gateways[0], &gateways[1]);
    let root = Uuid::new_v4();
    first.execute(command(root, &open("ada"))).await.unwrap();
    first.execute(command(root, &deposit(100))).await.unwrap(); // cached by `first`
    second.execute(command(root, &withdraw(100))).await.unwrap();
    // On its cached balance of 100, `first` would allow this; the real balance is 0. The other
    // write came just before: it may be a race, so without retries the command fails...
    let overdraft = first.execute(command(root, &withdraw(60))).await;
    assert!(
        matches!(overdraft, Err(CommandError::Conflict { .. })),
        "{overdraft:?}"
    );
    // ...and, once the history is current again, is decided on the current state.
    let overdraft = first.execute(command(root, &withdraw(60))).await;
    assert!(
        matches!(overdraft, Err(CommandError::Rejected(_))),
        "{overdraft:?}"
    );
    // With retries, a stale history is reloaded at once.
    let retrying = |mut book: CommandBook| {
        book.retry_on_conflict = true;
        book
    };
    second
        .execute(retrying(command(root, &deposit(50))))
        .await
        .unwrap();
    // On its cached balance of 0, `first` would refuse this; the real balance is 50.
    first
        .execute(retrying(command(root, &withdraw(30))))
        .await
        .unwrap();
    second
        .execute(retrying(command(root, &deposit(1))))
        .await
        .unwrap();
    // The client read sequence 6 elsewhere; `first` has not seen it, yet must accept it.
    let mut current = command(root, &deposit(1));
    current.expected_sequence = Some(6);
    first.execute(current).await.unwrap();
    assert_eq!(store.next_sequence(&account(root)).await.unwrap(), 7);
    assert_eq!(fold(first, root).await.balance, 22);
}

#[tokio::test]
async fn a_write_provably_older_than_the_command_is_no_race_even_without_retries() {
    let (gateways, store, _) = processes(1);
    let gateway = &gateways[0];
    let root = Uuid::new_v4();
    gateway.execute(command(root, &open("ada"))).await.unwrap(); // cached
    // Another gateway's deposit, stamped a minute before the next command arrives.
    let deposited = angzarr_example_bank::proto::BankEvent {
        kind: Some(angzarr_example_bank::proto::bank_event::Kind::Deposited(
            angzarr_example_bank::proto::Deposited { amount: 70 },
        )),
    };
    let stamped = std::time::SystemTime::now() - std::time::Duration::from_secs(60);
    let event = EventPage {
        sequence: 1,
        created_at: Some(stamped.into()),
        payload: Some(Any::from_msg(&deposited).unwrap()),
        correlation_id: "elsewhere".into(),
    };
    store
        .append(&account(root), Append::new(1, vec![event]))
        .await
        .unwrap();
    // On its cached balance of 0, the gateway would refuse this; decided on the current state.
    let withdrawn = gateway.execute(command(root, &withdraw(50))).await.unwrap();
    assert_eq!(withdrawn.events.unwrap().pages[0].sequence, 2);
    // The same write stamped now is a possible race: without retries, a conflict.
    let now = EventPage {
        sequence: 3,
        created_at: Some(std::time::SystemTime::now().into()),
        payload: Some(Any::from_msg(&deposited).unwrap()),
        correlation_id: "elsewhere".into(),
    };
    store
        .append(&account(root), Append::new(3, vec![now]))
        .await
        .unwrap();
    // Allowed on the cached balance of 20 as on the real one of 90: only the race decides.
    let raced = gateway.execute(command(root, &withdraw(10))).await;
    assert!(
        matches!(raced, Err(CommandError::Conflict { .. })),
        "{raced:?}"
    );
}

#[tokio::test]
async fn a_snapshot_ahead_of_the_events_is_ignored() {
    let (gateway, store) = bank(0);
    let root = Uuid::new_v4();
    gateway.execute(command(root, &open("ada"))).await.unwrap();
    // A snapshot claiming five events, over a stream of one (restored from another backup...).
    let state = Any::from_msg(&Account {
        open: true,
        owner: "ada".into(),
        balance: 999,
    })
    .unwrap();
    let snapshot = Snapshot {
        sequence: 4,
        state: Some(state),
    };
    SnapshotStore::put(store.as_ref(), &account(root), snapshot)
        .await
        .unwrap();
    let fresh = gateway_with(store.clone(), Arc::new(logic(0)), GatewayConfig::default());
    let response = fresh.execute(command(root, &withdraw(500))).await;
    assert!(
        matches!(response, Err(CommandError::Rejected(_))),
        "decided on the events: {response:?}"
    );
    let deposited = fresh.execute(command(root, &deposit(5))).await.unwrap();
    assert_eq!(
        deposited.events.unwrap().pages[0].sequence,
        1,
        "appended at the end of the stream"
    );
}

/// Client logic that, the first time it is called after [`Interfering::arm`], has other
/// commands executed through another gateway (another process) before it decides: a race
/// placed exactly between the load and the append.
struct Interfering {
    other: Gateway,
    pending: tokio::sync::Mutex<Vec<CommandBook>>,
}

impl Interfering {
    fn new(other: Gateway) -> Arc<Self> {
        Arc::new(Self {
            other,
            pending: Default::default(),
        })
    }

    async fn arm(&self, commands: Vec<CommandBook>) {
        *self.pending.lock().await = commands;
    }
}

#[async_trait]
impl ClientLogic for Interfering {
    async fn handle(&self, command: ContextualCommand) -> Result<BusinessReply, ClientLogicError> {
        let pending = std::mem::take(&mut *self.pending.lock().await);
        for interference in pending {
            self.other.execute(interference).await.unwrap();
        }
        logic(0).handle(command).await
    }
}

/// A gateway whose logic interferes through a second gateway over the same store.
fn interfered(config: GatewayConfig) -> (Gateway, Arc<Interfering>, Arc<MemoryStore>) {
    let store = Arc::new(MemoryStore::new());
    let other = gateway_with(store.clone(), Arc::new(logic(0)), GatewayConfig::default());
    let interfering = Interfering::new(other);
    let gateway = gateway_with(store.clone(), interfering.clone(), config);
    (gateway, interfering, store)
}

fn without_cache() -> GatewayConfig {
    let mut config = GatewayConfig::default();
    config.cached_events = 0;
    config
}

#[tokio::test]
async fn a_race_lost_without_retries_fails_alike_after_a_load_and_after_a_cache_hit() {
    // The same race, placed between decision and append, once on a history loaded for the
    // command and once on one cached by the previous command.
    for config in [without_cache(), GatewayConfig::default()] {
        let cached = config.cached_events > 0;
        let (gateway, interfering, store) = interfered(config);
        let root = Uuid::new_v4();
        gateway.execute(command(root, &open("ada"))).await.unwrap();
        interfering.arm(vec![command(root, &deposit(7))]).await;
        let outcome = gateway.execute(command(root, &deposit(1))).await;
        assert!(
            matches!(
                outcome,
                Err(CommandError::Conflict {
                    expected: 1,
                    actual: 2
                })
            ),
            "cached history: {cached}, {outcome:?}"
        );
        assert_eq!(store.next_sequence(&account(root)).await.unwrap(), 2);
        // With retries, the same race is decided again and succeeds.
        interfering.arm(vec![command(root, &deposit(7))]).await;
        let mut retried = command(root, &deposit(1));
        retried.retry_on_conflict = true;
        gateway.execute(retried).await.unwrap();
        assert_eq!(fold(&gateway, root).await.balance, 15, "cached: {cached}");
    }
}

#[tokio::test]
async fn a_retry_that_decided_on_an_old_state_answers_with_the_first_outcome() {
    for config in [without_cache(), GatewayConfig::default()] {
        let (gateway, interfering, store) = interfered(config);
        let root = Uuid::new_v4();
        gateway.execute(command(root, &open("ada"))).await.unwrap();
        let mut withdrawal = command(root, &withdraw(100));
        withdrawal.request_id = "withdrawal-1".into();
        // While the retry decides on a balance of 0 (and so would refuse it), the first
        // attempt succeeds elsewhere after a deposit.
        interfering
            .arm(vec![command(root, &deposit(100)), withdrawal.clone()])
            .await;
        let retry = gateway.execute(withdrawal).await.unwrap();
        assert!(retry.replayed, "{retry:?}");
        assert_eq!(retry.events.unwrap().pages[0].sequence, 2);
        assert_eq!(store.next_sequence(&account(root)).await.unwrap(), 3);
    }
}

#[tokio::test]
async fn a_request_id_reused_for_another_command_is_refused_and_the_first_outcome_stands() {
    let (gateways, store, _) = processes(2);
    let root = Uuid::new_v4();
    gateways[0]
        .execute(command(root, &open("ada")))
        .await
        .unwrap();
    let mut first = command(root, &deposit(40));
    first.request_id = "deposit-1".into();
    gateways[0].execute(first.clone()).await.unwrap();
    let mut other = command(root, &deposit(41));
    other.request_id = first.request_id.clone();
    let mut expecting = first.clone();
    expecting.expected_sequence = Some(1);
    for (gateway, book) in [(0, &other), (1, &other), (1, &expecting)] {
        let refused = gateways[gateway].execute(book.clone()).await;
        assert!(
            matches!(&refused, Err(CommandError::RequestIdReused { request_id }) if request_id == "deposit-1"),
            "{refused:?}"
        );
    }
    // The same command again, through either process, with another correlation id and a
    // type URL with another prefix, is a repeat.
    let mut again = first.clone();
    again.cover.as_mut().unwrap().correlation_id = "another".into();
    if let Some(payload) = again.pages[0].payload.as_mut() {
        let name = payload.type_url.rsplit('/').next().unwrap().to_owned();
        payload.type_url = format!("example.com/{name}");
    }
    assert!(gateways[1].execute(again).await.unwrap().replayed);
    assert_eq!(store.next_sequence(&account(root)).await.unwrap(), 2);
    assert_eq!(fold(&gateways[0], root).await.balance, 40);
}

#[tokio::test]
async fn a_snapshot_found_ahead_is_deleted_and_never_trusted_once_the_stream_reaches_it() {
    let (gateway, store) = bank(0);
    let root = Uuid::new_v4();
    gateway.execute(command(root, &open("ada"))).await.unwrap();
    let rich = Any::from_msg(&Account {
        open: true,
        owner: "ada".into(),
        balance: 999,
    })
    .unwrap();
    let ahead = Snapshot {
        sequence: 3,
        state: Some(rich),
    };
    SnapshotStore::put(store.as_ref(), &account(root), ahead)
        .await
        .unwrap();
    let fresh = || gateway_with(store.clone(), Arc::new(logic(0)), without_cache());
    fresh().execute(command(root, &deposit(5))).await.unwrap();
    assert_eq!(
        SnapshotStore::get(store.as_ref(), &account(root))
            .await
            .unwrap(),
        None,
        "deleted when found ahead"
    );
    for _ in 0..4 {
        fresh().execute(command(root, &deposit(5))).await.unwrap();
    }
    // The stream is now past the old snapshot's sequence; the balance is 25, not 999 + 5.
    let overdraft = fresh().execute(command(root, &withdraw(500))).await;
    assert!(
        matches!(overdraft, Err(CommandError::Rejected(_))),
        "{overdraft:?}"
    );
}

/// A snapshot store whose deletes fail: a snapshot ahead of the events cannot be removed.
struct Undeletable(MemoryStore);

#[async_trait]
impl SnapshotStore for Undeletable {
    async fn get(&self, aggregate: &AggregateId) -> Result<Option<Snapshot>, SnapshotStoreError> {
        SnapshotStore::get(&self.0, aggregate).await
    }

    async fn put(
        &self,
        aggregate: &AggregateId,
        snapshot: Snapshot,
    ) -> Result<(), SnapshotStoreError> {
        SnapshotStore::put(&self.0, aggregate, snapshot).await
    }

    async fn delete(&self, _: &AggregateId) -> Result<(), SnapshotStoreError> {
        Err(SnapshotStoreError::Unavailable("deletes are down".into()))
    }
}

#[tokio::test]
async fn a_snapshot_ahead_that_cannot_be_deleted_fails_the_command_and_writes_nothing() {
    let store = Arc::new(MemoryStore::new());
    let snapshots = Arc::new(Undeletable(MemoryStore::new()));
    let gateway = Gateway::builder(store.clone(), snapshots.clone())
        .register(Domain::new(DOMAIN).unwrap(), Arc::new(logic(0)))
        .build();
    let root = Uuid::new_v4();
    gateway.execute(command(root, &open("ada"))).await.unwrap();
    let ahead = Snapshot {
        sequence: 5,
        state: Some(Any::from_msg(&Account::default()).unwrap()),
    };
    SnapshotStore::put(snapshots.as_ref(), &account(root), ahead)
        .await
        .unwrap();
    let fresh = Gateway::builder(store.clone(), snapshots)
        .register(Domain::new(DOMAIN).unwrap(), Arc::new(logic(0)))
        .build();
    let outcome = fresh.execute(command(root, &deposit(5))).await;
    assert!(
        matches!(outcome, Err(CommandError::SnapshotAhead(_))),
        "{outcome:?}"
    );
    assert_eq!(store.next_sequence(&account(root)).await.unwrap(), 1);
}

#[tokio::test]
async fn a_snapshot_without_state_or_that_does_not_decode_only_costs_a_replay() {
    let undecodable = Any {
        type_url: Any::from_msg(&Account::default()).unwrap().type_url,
        value: vec![0xff, 0xff, 0xff],
    };
    let another_type = Any {
        type_url: "type.googleapis.com/examples.bank.v1.AccountV0".into(),
        value: Vec::new(),
    };
    for state in [None, Some(undecodable), Some(another_type)] {
        let (gateway, store) = bank(0);
        let root = Uuid::new_v4();
        for book in [
            command(root, &open("ada")),
            command(root, &deposit(10)),
            command(root, &deposit(20)),
        ] {
            gateway.execute(book).await.unwrap();
        }
        let broken = Snapshot {
            sequence: 1,
            state: state.clone(),
        };
        SnapshotStore::put(store.as_ref(), &account(root), broken)
            .await
            .unwrap();
        for config in [without_cache(), GatewayConfig::default()] {
            let fresh = gateway_with(store.clone(), Arc::new(logic(0)), config);
            let withdrawn = fresh.execute(command(root, &withdraw(15))).await;
            assert!(withdrawn.is_ok(), "snapshot state {state:?}: {withdrawn:?}");
        }
        assert_eq!(fold(&gateway, root).await.balance, 0, "state {state:?}");
    }
}

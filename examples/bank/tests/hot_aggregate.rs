//! Commands queued on one busy aggregate are decided one after another and appended together,
//! each keeping its own outcome.

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use angzarr_core::{CommandError, Gateway, GatewayConfig};
use angzarr_example_bank::{Account, DOMAIN, command, deposit, logic, open, replay, withdraw};
use angzarr_ports::{
    AggregateEvents, AggregateId, Append, Domain, EventStore, EventStoreError, EventStoreExt,
    RequestRecord, SequenceRange, StoreCapabilities, async_trait,
};
use angzarr_proto::v1::{CommandBook, EventPage};
use angzarr_store_memory::MemoryStore;
use uuid::Uuid;

/// The memory store, with appends that take a few milliseconds (as an fsync would), so that
/// concurrent commands queue, and counted. `interfere` runs once before the first append of
/// more than one event: another process's write, between the group's load and its append.
struct SlowAppends {
    inner: Arc<MemoryStore>,
    appends: AtomicUsize,
    events: AtomicUsize,
    interfere: tokio::sync::Mutex<Option<(Gateway, CommandBook)>>,
}

impl SlowAppends {
    fn new(inner: Arc<MemoryStore>) -> Arc<Self> {
        Arc::new(Self {
            inner,
            appends: AtomicUsize::new(0),
            events: AtomicUsize::new(0),
            interfere: Default::default(),
        })
    }
}

#[async_trait]
impl EventStore for SlowAppends {
    fn capabilities(&self) -> StoreCapabilities {
        self.inner.capabilities()
    }

    async fn append(
        &self,
        aggregate: &AggregateId,
        append: Append,
    ) -> Result<u64, EventStoreError> {
        if append.events.len() > 1
            && let Some((other, command)) = self.interfere.lock().await.take()
        {
            other
                .execute(command)
                .await
                .expect("the other process writes");
        }
        tokio::time::sleep(Duration::from_millis(3)).await;
        self.appends.fetch_add(1, Ordering::Relaxed);
        self.events
            .fetch_add(append.events.len(), Ordering::Relaxed);
        self.inner.append(aggregate, append).await
    }

    async fn read(
        &self,
        aggregate: &AggregateId,
        range: SequenceRange,
    ) -> Result<Vec<EventPage>, EventStoreError> {
        self.inner.read(aggregate, range).await
    }

    async fn next_sequence(&self, aggregate: &AggregateId) -> Result<u64, EventStoreError> {
        self.inner.next_sequence(aggregate).await
    }

    async fn list_roots(
        &self,
        domain: &Domain,
        after: Option<Uuid>,
        limit: usize,
    ) -> Result<Vec<Uuid>, EventStoreError> {
        self.inner.list_roots(domain, after, limit).await
    }

    async fn list_domains(&self) -> Result<Vec<Domain>, EventStoreError> {
        self.inner.list_domains().await
    }

    async fn find_by_correlation(
        &self,
        correlation_id: &str,
    ) -> Result<Vec<AggregateEvents>, EventStoreError> {
        self.inner.find_by_correlation(correlation_id).await
    }

    async fn find_by_request(
        &self,
        aggregate: &AggregateId,
        request_id: &str,
    ) -> Result<Option<RequestRecord>, EventStoreError> {
        self.inner.find_by_request(aggregate, request_id).await
    }
}

fn account(root: Uuid) -> AggregateId {
    AggregateId::new(Domain::new(DOMAIN).unwrap(), root).unwrap()
}

fn gateway_over(
    store: &Arc<SlowAppends>,
    memory: &Arc<MemoryStore>,
    config: GatewayConfig,
) -> Gateway {
    Gateway::builder(store.clone(), memory.clone())
        .register(Domain::new(DOMAIN).unwrap(), Arc::new(logic(0)))
        .config(config)
        .build()
}

fn hot(config: GatewayConfig) -> (Gateway, Arc<SlowAppends>, Arc<MemoryStore>) {
    let memory = Arc::new(MemoryStore::new());
    let store = SlowAppends::new(memory.clone());
    (gateway_over(&store, &memory, config), store, memory)
}

fn without_cache() -> GatewayConfig {
    let mut config = GatewayConfig::default();
    config.cached_events = 0;
    config
}

async fn balance(store: &MemoryStore, root: Uuid) -> Account {
    let pages = store.read_all(&account(root)).await.unwrap();
    let sequences: Vec<u64> = pages.iter().map(|page| page.sequence).collect();
    assert_eq!(
        sequences,
        (0..pages.len() as u64).collect::<Vec<_>>(),
        "gapless"
    );
    replay(None, &pages).unwrap()
}

/// Sends every command at once and answers their outcomes in the same order.
async fn all_at_once(
    gateway: &Gateway,
    commands: Vec<CommandBook>,
) -> Vec<Result<angzarr_proto::v1::CommandResponse, CommandError>> {
    let tasks: Vec<_> = commands
        .into_iter()
        .map(|command| {
            let gateway = gateway.clone();
            tokio::spawn(async move { gateway.execute(command).await })
        })
        .collect();
    let mut outcomes = Vec::new();
    for task in tasks {
        outcomes.push(task.await.unwrap());
    }
    outcomes
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn queued_deposits_are_appended_together_each_with_its_own_events() {
    for config in [GatewayConfig::default(), without_cache()] {
        let (gateway, store, memory) = hot(config);
        let root = Uuid::new_v4();
        gateway.execute(command(root, &open("ada"))).await.unwrap();
        let deposits: Vec<CommandBook> = (1..=64).map(|n| command(root, &deposit(n))).collect();
        let outcomes = all_at_once(&gateway, deposits).await;

        let mut sequences = Vec::new();
        let mut correlations = std::collections::BTreeSet::new();
        for (n, outcome) in (1..=64u64).zip(outcomes) {
            let events = outcome.expect("every deposit succeeds").events.unwrap();
            let [page] = events.pages.as_slice() else {
                panic!("deposit {n} answered {} events", events.pages.len());
            };
            let cover = events.cover.unwrap();
            assert_eq!(
                page.correlation_id, cover.correlation_id,
                "its own correlation id"
            );
            correlations.insert(cover.correlation_id);
            let stored = memory
                .read(&account(root), (page.sequence..page.sequence + 1).into())
                .await
                .unwrap();
            assert_eq!(
                stored.as_slice(),
                std::slice::from_ref(page),
                "its event as stored"
            );
            sequences.push(page.sequence);
        }
        sequences.sort_unstable();
        assert_eq!(sequences, (1..=64).collect::<Vec<u64>>());
        assert_eq!(correlations.len(), 64);
        assert_eq!(balance(&memory, root).await.balance, (1..=64).sum::<u64>());
        let appends = store.appends.load(Ordering::Relaxed);
        assert!(
            appends < 32,
            "64 queued deposits took {appends} appends: they were not grouped"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_rejected_command_fails_alone_and_the_next_ones_see_the_state_before_it() {
    let (gateway, _store, memory) = hot(GatewayConfig::default());
    let root = Uuid::new_v4();
    gateway.execute(command(root, &open("ada"))).await.unwrap();
    gateway.execute(command(root, &deposit(10))).await.unwrap();
    let withdrawals: Vec<CommandBook> = (0..30).map(|_| command(root, &withdraw(1))).collect();
    let outcomes = all_at_once(&gateway, withdrawals).await;
    let accepted = outcomes.iter().filter(|outcome| outcome.is_ok()).count();
    let refused: Vec<_> = outcomes
        .iter()
        .filter_map(|outcome| match outcome {
            Err(CommandError::Rejected(reason)) => Some(reason.as_str()),
            _ => None,
        })
        .collect();
    assert_eq!(accepted, 10, "{outcomes:?}");
    assert_eq!(refused, ["insufficient funds"; 20]);
    assert_eq!(balance(&memory, root).await.balance, 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn an_expected_sequence_is_checked_against_the_state_just_before_its_command() {
    for config in [GatewayConfig::default(), without_cache()] {
        let (gateway, _store, memory) = hot(config);
        let root = Uuid::new_v4();
        gateway.execute(command(root, &open("ada"))).await.unwrap();
        gateway.execute(command(root, &deposit(1))).await.unwrap();
        // 16 commands at once that all expect the aggregate at sequence 2: the first decided
        // moves it to 3, so each of the others must see 3.
        let expecting: Vec<CommandBook> = (0..16)
            .map(|_| {
                let mut book = command(root, &deposit(5));
                book.expected_sequence = Some(2);
                book
            })
            .collect();
        let outcomes = all_at_once(&gateway, expecting).await;
        let won = outcomes.iter().filter(|outcome| outcome.is_ok()).count();
        assert_eq!(
            won, 1,
            "exactly one command found the aggregate at 2: {outcomes:?}"
        );
        for outcome in &outcomes {
            if let Err(error) = outcome {
                assert!(
                    matches!(
                        error,
                        CommandError::Conflict {
                            expected: 2,
                            actual: 3
                        }
                    ),
                    "{error:?}"
                );
            }
        }
        assert_eq!(balance(&memory, root).await.balance, 6);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_group_that_loses_a_race_fails_only_the_command_that_met_it_unless_it_may_retry() {
    for may_retry in [false, true] {
        let (gateway, store, memory) = hot(without_cache());
        let other = gateway_over(&store, &memory, GatewayConfig::default());
        let root = Uuid::new_v4();
        gateway.execute(command(root, &open("ada"))).await.unwrap();
        // Once a group has loaded and decided, another process deposits first.
        *store.interfere.lock().await = Some((other, command(root, &deposit(1000))));
        let commands: Vec<CommandBook> = (0..16)
            .map(|_| {
                let mut book = command(root, &deposit(10));
                book.retry_on_conflict = may_retry;
                book
            })
            .collect();
        let outcomes = all_at_once(&gateway, commands).await;
        let conflicts = outcomes
            .iter()
            .filter(|outcome| matches!(outcome, Err(CommandError::Conflict { .. })))
            .count();
        let accepted = outcomes.iter().filter(|outcome| outcome.is_ok()).count();
        // Alone, only the command whose load and append straddled the other write would have
        // lost; those behind it would have loaded after it.
        let lost = usize::from(!may_retry);
        assert_eq!(
            (conflicts, accepted),
            (lost, 16 - lost),
            "retry_on_conflict {may_retry}: {outcomes:?}"
        );
        assert!(
            store.interfere.lock().await.is_none(),
            "the other process wrote in the middle of a group"
        );
        assert_eq!(
            balance(&memory, root).await.balance,
            1000 + 10 * accepted as u64,
            "every acknowledged deposit stored once, nothing else"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn commands_with_a_request_id_are_appended_alone_and_replay_their_own_events() {
    let (gateway, store, memory) = hot(GatewayConfig::default());
    let root = Uuid::new_v4();
    gateway.execute(command(root, &open("ada"))).await.unwrap();
    let before = store.appends.load(Ordering::Relaxed);
    let with_ids: Vec<CommandBook> = (0..16)
        .map(|n| {
            let mut book = command(root, &deposit(n + 1));
            book.request_id = format!("deposit-{n}");
            book
        })
        .collect();
    let outcomes = all_at_once(&gateway, with_ids.clone()).await;
    assert!(outcomes.iter().all(Result::is_ok), "{outcomes:?}");
    assert_eq!(store.appends.load(Ordering::Relaxed) - before, 16);
    for (book, first) in with_ids.into_iter().zip(outcomes) {
        let again = gateway.execute(book).await.unwrap();
        assert!(again.replayed);
        assert_eq!(
            again.events.unwrap().pages,
            first.unwrap().events.unwrap().pages
        );
    }
    assert_eq!(balance(&memory, root).await.balance, (1..=16).sum::<u64>());
}

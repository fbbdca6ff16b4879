//! Appends whose acknowledgement is lost: the core resolves them before answering, so that no
//! command is reported failed whose events were stored, and none reported stored whose events
//! were not. (The stores' own tests lose acknowledgements on a real network, through
//! `angzarr_conformance::faults::FaultyProxy`.)

use std::sync::{Arc, Mutex};

use angzarr_core::{CommandError, Gateway};
use angzarr_example_bank::proto::{BankEvent, Deposited, bank_event::Kind};
use angzarr_example_bank::{DOMAIN, command, deposit, logic, open};
use angzarr_ports::{
    AggregateEvents, AggregateId, Append, Domain, EventPage, EventStore, EventStoreError,
    EventStoreExt, RequestRecord, SequenceRange, StoreCapabilities, Uuid, async_trait,
};
use angzarr_store_memory::MemoryStore;
use prost_types::Any;

/// What the next appends meet, in order; once the script is out, appends go through.
#[derive(Debug, Clone, Copy)]
enum Fault {
    /// Applied, but the acknowledgement is lost.
    AppliedAckLost,
    /// Lost on the way: not applied, and the client cannot tell.
    LostBeforeApply,
    /// Lost on the way, and another writer appends a deposit of 1 meanwhile.
    LostWhileAnotherWrites,
    /// The store is down: this append is unavailable, and so are reads until the next
    /// append that is not.
    Down,
}

struct Faulty {
    inner: MemoryStore,
    script: Mutex<Vec<Fault>>,
}

impl Faulty {
    fn new(script: Vec<Fault>) -> Arc<Self> {
        Arc::new(Self {
            inner: MemoryStore::new(),
            script: Mutex::new(script.into_iter().rev().collect()),
        })
    }

    fn next_fault(&self) -> Option<Fault> {
        self.script.lock().unwrap().pop()
    }

    fn is_down(&self) -> bool {
        matches!(self.script.lock().unwrap().last(), Some(Fault::Down))
    }
}

fn lost() -> EventStoreError {
    EventStoreError::OutcomeUnknown("connection reset after the request was sent".into())
}

fn down() -> EventStoreError {
    EventStoreError::Unavailable("connection refused".into())
}

#[async_trait]
impl EventStore for Faulty {
    fn capabilities(&self) -> StoreCapabilities {
        self.inner.capabilities()
    }

    async fn append(
        &self,
        aggregate: &AggregateId,
        append: Append,
    ) -> Result<u64, EventStoreError> {
        match self.next_fault() {
            None => self.inner.append(aggregate, append).await,
            Some(Fault::AppliedAckLost) => {
                self.inner.append(aggregate, append).await?;
                Err(lost())
            }
            Some(Fault::LostBeforeApply) => Err(lost()),
            Some(Fault::LostWhileAnotherWrites) => {
                let next = self.inner.next_sequence(aggregate).await?;
                let deposited = BankEvent {
                    kind: Some(Kind::Deposited(Deposited { amount: 1 })),
                };
                let event = EventPage {
                    sequence: next,
                    payload: Some(Any::from_msg(&deposited).unwrap()),
                    ..EventPage::default()
                };
                self.inner
                    .append(aggregate, Append::new(next, vec![event]))
                    .await?;
                Err(lost())
            }
            Some(Fault::Down) => Err(down()),
        }
    }

    async fn read(
        &self,
        aggregate: &AggregateId,
        range: SequenceRange,
    ) -> Result<Vec<EventPage>, EventStoreError> {
        if self.is_down() {
            return Err(down());
        }
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

    async fn find_by_correlation(&self, id: &str) -> Result<Vec<AggregateEvents>, EventStoreError> {
        self.inner.find_by_correlation(id).await
    }

    async fn find_by_request(
        &self,
        aggregate: &AggregateId,
        id: &str,
    ) -> Result<Option<RequestRecord>, EventStoreError> {
        self.inner.find_by_request(aggregate, id).await
    }
}

fn gateway(store: &Arc<Faulty>) -> Gateway {
    Gateway::builder(store.clone(), Arc::new(MemoryStore::new()))
        .register(Domain::new(DOMAIN).unwrap(), Arc::new(logic(0)))
        .build()
}

fn account(root: Uuid) -> AggregateId {
    AggregateId::new(Domain::new(DOMAIN).unwrap(), root).unwrap()
}

/// Opens an account through `store` (no fault yet), then runs a deposit of 5 into the faults.
async fn deposit_through(
    script: Vec<Fault>,
    retry: bool,
) -> (Result<u64, CommandError>, Vec<EventPage>) {
    let store = Faulty::new(Vec::new());
    let gateway = gateway(&store);
    let root = Uuid::new_v4();
    gateway.execute(command(root, &open("ada"))).await.unwrap();
    *store.script.lock().unwrap() = script.into_iter().rev().collect();
    let mut book = command(root, &deposit(5));
    book.request_id = "deposit-5".into();
    book.retry_on_conflict = retry;
    let outcome = gateway
        .execute(book)
        .await
        .map(|response| response.events.unwrap().pages.len() as u64);
    store.script.lock().unwrap().clear();
    let stored = store.inner.read_all(&account(root)).await.unwrap();
    (outcome, stored)
}

#[tokio::test]
async fn a_lost_acknowledgement_of_an_applied_append_is_a_success_stored_once() {
    for script in [
        vec![Fault::AppliedAckLost],
        vec![Fault::AppliedAckLost, Fault::LostBeforeApply, Fault::Down],
    ] {
        let (outcome, stored) = deposit_through(script.clone(), false).await;
        assert_eq!(outcome.unwrap(), 1, "{script:?}");
        assert_eq!(stored.len(), 2, "opened, deposited once: {script:?}");
    }
}

#[tokio::test]
async fn a_lost_request_is_sent_again_and_stored_once() {
    for script in [
        vec![Fault::LostBeforeApply],
        vec![Fault::LostBeforeApply, Fault::Down, Fault::LostBeforeApply],
    ] {
        let (outcome, stored) = deposit_through(script.clone(), false).await;
        assert_eq!(outcome.unwrap(), 1, "{script:?}");
        assert_eq!(stored.len(), 2, "{script:?}");
    }
}

#[tokio::test]
async fn a_lost_request_that_another_writer_overtook_is_a_conflict_or_a_retry() {
    let (outcome, stored) = deposit_through(vec![Fault::LostWhileAnotherWrites], false).await;
    assert!(
        matches!(
            outcome,
            Err(CommandError::Conflict {
                expected: 1,
                actual: 2
            })
        ),
        "{outcome:?}"
    );
    assert_eq!(stored.len(), 2, "only the other writer's deposit");
    let (outcome, stored) = deposit_through(vec![Fault::LostWhileAnotherWrites], true).await;
    assert_eq!(outcome.unwrap(), 1);
    assert_eq!(stored.len(), 3, "the other deposit, then ours once");
}

#[tokio::test]
async fn an_outcome_that_cannot_be_resolved_is_reported_unknown_and_safe_to_resend() {
    for (first, applied) in [
        (Fault::AppliedAckLost, true),
        (Fault::LostBeforeApply, false),
    ] {
        let store = Faulty::new(Vec::new());
        let gateway = gateway(&store);
        let root = Uuid::new_v4();
        gateway.execute(command(root, &open("ada"))).await.unwrap();
        // Down for longer than the core keeps trying.
        let mut script = vec![Fault::Down; 50];
        script.push(first);
        *store.script.lock().unwrap() = script;
        let mut book = command(root, &deposit(5));
        book.request_id = "deposit-5".into();
        let outcome = gateway.execute(book.clone()).await;
        match &outcome {
            Err(
                error @ CommandError::OutcomeUnknown {
                    idempotent: true, ..
                },
            ) => {
                assert!(
                    error.to_string().contains("same request_id is safe"),
                    "{error}"
                );
            }
            other => panic!("{other:?}"),
        }
        // The store is back: the resend is the first outcome, or the first application.
        store.script.lock().unwrap().clear();
        let resent = gateway.execute(book).await.unwrap();
        assert_eq!(resent.replayed, applied);
        assert_eq!(store.inner.read_all(&account(root)).await.unwrap().len(), 2);
    }
}

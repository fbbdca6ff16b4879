//! The properties of the suite. Each takes a [`Harness`] and panics with a readable message when
//! the store breaks the contract; [`store_suite!`](crate::store_suite) makes one test of each.

use std::sync::Arc;

use angzarr_ports::{
    AggregateId, Append, Domain, EventPage, EventStore, EventStoreError, EventStoreExt, Limit,
    RequestKey, RequestRecord, Snapshot, SnapshotStore, Uuid,
};
use proptest::prelude::*;
use prost_types::Any;

use crate::{Harness, concurrency, namespace, state_machine};

pub use crate::concurrency::{readers_see_whole_batches, two_instances_one_winner};

/// Random sequences of appends (correct, stale and future expected sequences, empty batches,
/// gaps), reads of every range, next sequences, root and domain listings, correlation and
/// request lookups, snapshot puts, overwrites, gets and deletes, and (for persistent stores)
/// reopens: the store must answer every one exactly as the in-memory model does.
pub async fn state_machine<H: Harness>(harness: &H) {
    state_machine::run(harness).await;
}

/// Writers racing to append at the same expected sequence, started together by a barrier: 16
/// racers on each of 3 aggregates at once, for 8 rounds, half of them carrying request ids. Of
/// each race exactly one wins, every other gets a conflict naming the winner's end, the stored
/// batch and the request and correlation indexes are the winner's (a loser's ids find nothing),
/// and the streams have no gap and no duplicate.
pub async fn concurrent_writers_one_winner<H: Harness>(harness: &H) {
    let ns = namespace();
    let store = harness.open(&ns).await;
    concurrency::race(vec![Arc::new(store)], concurrency::Race::SHARP).await;
    harness.cleanup(&ns).await;
}

/// Many aggregates written at once, their writers started together: every append succeeds,
/// and every stream holds exactly the pages its writer appended (a group commit that mixed
/// pages between aggregates fails), each batch found by its request id on its own aggregate
/// only (every writer uses the same ids).
pub async fn concurrent_aggregates_all_succeed<H: Harness>(harness: &H) {
    const AGGREGATES: usize = 32;
    const BATCHES: u64 = 10;
    let ns = namespace();
    let store = Arc::new(harness.open(&ns).await);
    let barrier = Arc::new(tokio::sync::Barrier::new(AGGREGATES));
    let tasks: Vec<_> = (0..AGGREGATES)
        .map(|index| {
            let (store, barrier) = (Arc::clone(&store), Arc::clone(&barrier));
            tokio::spawn(async move {
                let aggregate = aggregate("parallel");
                let mut appended = Vec::new();
                barrier.wait().await;
                for batch in 0..BATCHES {
                    let events = pages(batch * 2, 2, &format!("aggregate {index} batch {batch}"));
                    let request = format!("batch {batch}");
                    let append =
                        concurrency::append(batch * 2, events.clone(), Some(request.as_str()));
                    store
                        .append(&aggregate, append)
                        .await
                        .expect("an uncontended append failed");
                    appended.push(events);
                }
                (aggregate, appended)
            })
        })
        .collect();
    for task in tasks {
        let (aggregate, batches) = task.await.expect("writer task panicked");
        let stream = store.read_all(&aggregate).await.expect("read a stream");
        assert_eq!(
            stream,
            batches.concat(),
            "the pages of {aggregate} are not what its writer appended"
        );
        for (batch, events) in batches.iter().enumerate() {
            let request = format!("batch {batch}");
            assert_eq!(
                concurrency::find_request(&*store, &aggregate, &request).await,
                concurrency::request_record(&request, events),
                "the request index of {aggregate} is not what its writer appended"
            );
        }
    }
    drop(store);
    harness.cleanup(&ns).await;
}

/// A batch of 10,000 events (or the store's declared maximum, if smaller) round-trips, found
/// by its request id; right after it, the next sequence, reads near its end and a further
/// append are right. One event more than a declared maximum is refused and writes nothing.
pub async fn large_batch<H: Harness>(harness: &H) {
    let ns = namespace();
    let store = harness.open(&ns).await;
    let max = store.capabilities().max_batch_len;
    let len = max.map_or(10_000, |max| max.min(10_000));
    let aggregate = aggregate("large");
    let events = pages(0, len, "large");
    let request = RequestKey::new("big", [7; 32]);
    let append = Append::new(0, events.clone()).with_request(request.clone());
    let end = len as u64;
    assert_eq!(
        store
            .append(&aggregate, append)
            .await
            .expect("append a large batch"),
        end
    );
    assert_eq!(
        store
            .next_sequence(&aggregate)
            .await
            .expect("next sequence"),
        end,
        "the next sequence right after a large batch"
    );
    assert_eq!(
        store
            .read_all(&aggregate)
            .await
            .expect("read a large batch"),
        events
    );
    let tail = store
        .read(&aggregate, (end.saturating_sub(3)..end + 5).into())
        .await
        .expect("read the end of a large batch");
    assert_eq!(
        tail,
        events[len.saturating_sub(3)..],
        "a read across the end"
    );
    assert_eq!(
        store
            .find_by_request(&aggregate, "big")
            .await
            .expect("find a large batch"),
        Some(RequestRecord {
            digest: Some(request.digest),
            pages: events.clone()
        })
    );
    let after = Append::new(end, pages(end, 2, "after"));
    assert_eq!(
        store
            .append(&aggregate, after.clone())
            .await
            .expect("append after a large batch"),
        end + 2
    );
    assert_eq!(
        store
            .read_from(&aggregate, end - 1)
            .await
            .expect("read across both"),
        [&events[len - 1..], &after.events[..]].concat()
    );
    if let Some(max) = max {
        let other = self::aggregate("too-large");
        let append = Append::new(0, pages(0, max + 1, "too large"));
        match store.append(&other, append).await {
            Err(EventStoreError::LimitExceeded {
                limit: Limit::BatchLen,
                max: refused_at,
                actual,
            }) => assert_eq!((refused_at, actual), (max, max + 1), "the limit error"),
            other => panic!("a batch over the declared maximum gave {other:?}"),
        }
        assert_eq!(
            store.next_sequence(&other).await.expect("next sequence"),
            0,
            "a refused batch left events"
        );
    }
    drop(store);
    harness.cleanup(&ns).await;
}

/// Events of exactly the declared size limit (measured on the encoded event) round-trip,
/// whatever their bytes; a batch with one event a byte over it is refused whole, with the
/// limit and that event's size in the error. Without a declared limit, a 256 KiB event
/// round-trips.
pub async fn declared_limits<H: Harness>(harness: &H) {
    let ns = namespace();
    let store = harness.open(&ns).await;
    let aggregate = aggregate("limits");
    let max = store.capabilities().max_event_bytes;
    let event = state_machine::event_of_size(0, max.unwrap_or(256 * 1024));
    store
        .append(&aggregate, Append::new(0, vec![event.clone()]))
        .await
        .expect("an event of exactly the size limit");
    assert_eq!(
        store.read_all(&aggregate).await.expect("read it back"),
        vec![event.clone()]
    );
    if let Some(max) = max {
        // The oversized event comes second, with the right sequence: a store must check
        // every event, and its sequences are no excuse.
        let fits = pages(1, 1, "fits");
        let oversized = state_machine::event_of_size(2, max + 1);
        let append = Append::new(1, [fits, vec![oversized]].concat());
        match store.append(&aggregate, append).await {
            Err(EventStoreError::LimitExceeded {
                limit: Limit::EventBytes,
                max: refused_at,
                actual,
            }) => assert_eq!((refused_at, actual), (max, max + 1), "the limit error"),
            other => panic!("an event over the declared size gave {other:?}"),
        }
        assert_eq!(
            store
                .next_sequence(&aggregate)
                .await
                .expect("next sequence"),
            1,
            "a refused batch left events"
        );
    }
    drop(store);
    harness.cleanup(&ns).await;
}

/// Arbitrary domain strings are either refused by [`Domain::new`] (so they never reach a
/// store) or round-trip, and never touch another domain's aggregates.
pub async fn domain_names<H: Harness>(harness: &H) {
    let ns = namespace();
    let store = harness.open(&ns).await;
    let root = Uuid::from_u128(42);
    // A neighbour that keys built by concatenation could collide with.
    let neighbour = AggregateId::new(Domain::new("a").expect("valid"), root).expect("non-nil");
    let append = Append {
        expected_sequence: 0,
        events: pages(0, 1, "neighbour"),
        request: None,
    };
    store
        .append(&neighbour, append)
        .await
        .expect("append to the neighbour");
    let names = prop_oneof![
        any::<String>(),
        "[a:#/{}. _-]{0,6}",
        "[a-zA-Z0-9_.-]{1,70}",
        Just("a".to_owned()),
        Just("a:".to_owned()),
        Just("a#".to_owned()),
    ];
    let (mut runner, seed) = state_machine::runner(256);
    let accepted = std::cell::RefCell::new(std::collections::BTreeSet::new());
    let neighbour_len = std::cell::Cell::new(1u64);
    let result = runner.run(&names, |name| {
        let Ok(domain) = Domain::new(name.clone()) else {
            // Refused: the name cannot reach any store.
            return Ok(());
        };
        let handle = tokio::runtime::Handle::current();
        tokio::task::block_in_place(|| {
            handle.block_on(async {
                let aggregate = AggregateId::new(domain.clone(), root).expect("non-nil");
                let next = store.next_sequence(&aggregate).await.map_err(fail)?;
                let events = pages(next, 1, &name);
                let append = Append {
                    expected_sequence: next,
                    events: events.clone(),
                    request: None,
                };
                store.append(&aggregate, append).await.map_err(fail)?;
                let stream = store.read_all(&aggregate).await.map_err(fail)?;
                prop_assert_eq!(stream.last(), events.last());
                if aggregate == neighbour {
                    neighbour_len.set(next + 1);
                }
                let neighbour_stream = store.read_all(&neighbour).await.map_err(fail)?;
                prop_assert_eq!(
                    neighbour_stream.len() as u64,
                    neighbour_len.get(),
                    "{} touched the neighbour",
                    domain
                );
                accepted.borrow_mut().insert(domain);
                Ok(())
            })
        })
    });
    if let Err(failure) = result {
        panic!("domain names: {failure}\n(replay this run with ANGZARR_SUITE_SEED={seed})");
    }
    let mut accepted = accepted.into_inner();
    accepted.insert(neighbour.domain().clone());
    let listed = store.list_domains().await.expect("list domains");
    assert_eq!(
        listed,
        accepted.into_iter().collect::<Vec<_>>(),
        "every accepted domain is listed, once"
    );
    drop(store);
    harness.cleanup(&ns).await;
}

/// A persistent store, dropped and reopened, holds exactly what it held: every event and
/// snapshot byte for byte, the request and correlation indexes, the roots and domains. (The
/// state machine also reopens stores at random points.)
pub async fn reopen_keeps_everything<H: Harness>(harness: &H) {
    if !harness.persistent() {
        return;
    }
    let ns = namespace();
    let store = harness.open(&ns).await;
    let domain = Domain::new("reopen").expect("valid domain");
    let aggregates: Vec<AggregateId> = (1..=5u128)
        .map(|root| AggregateId::new(domain.clone(), Uuid::from_u128(root)).expect("non-nil"))
        .collect();
    for (index, aggregate) in aggregates.iter().enumerate() {
        let request = RequestKey::new(format!("r{index}"), [index as u8; 32]);
        let append = Append::new(0, pages(0, index + 1, "before")).with_request(request);
        store
            .append(aggregate, append)
            .await
            .expect("append before reopening");
        let snapshot = Snapshot {
            sequence: index as u64,
            state: (index % 2 == 0).then(|| packed("state", vec![index as u8; 3])),
        };
        SnapshotStore::put(&store, aggregate, snapshot)
            .await
            .expect("put a snapshot");
    }
    let before = everything(&store, &aggregates, &domain).await;
    drop(store);
    let store = harness.open(&ns).await;
    let after = everything(&store, &aggregates, &domain).await;
    assert_eq!(after, before, "the store changed across a reopen");
    for aggregate in &aggregates {
        let next = store.next_sequence(aggregate).await.expect("next sequence");
        store
            .append(aggregate, Append::new(next, pages(next, 1, "after")))
            .await
            .expect("append after reopening continues the stream");
    }
    drop(store);
    harness.cleanup(&ns).await;
}

/// Every observable part of `aggregates`, read back, for comparing before and after a reopen.
/// Every read must succeed: failing the same way twice is no proof that nothing changed.
async fn everything<S: EventStore + SnapshotStore>(
    store: &S,
    aggregates: &[AggregateId],
    domain: &Domain,
) -> String {
    let mut seen = Vec::new();
    for (index, aggregate) in aggregates.iter().enumerate() {
        let request = format!("r{index}");
        seen.push(format!(
            "{:?} {:?} {:?} {:?}",
            store.read_all(aggregate).await.expect("read"),
            store.next_sequence(aggregate).await.expect("next sequence"),
            SnapshotStore::get(store, aggregate)
                .await
                .expect("get a snapshot"),
            store
                .find_by_request(aggregate, &request)
                .await
                .expect("find by request"),
        ));
    }
    let correlated = store.find_by_correlation("before").await;
    seen.push(format!("{:?}", correlated.expect("find by correlation")));
    for limit in [1, 2, 10] {
        let roots = store.list_roots(domain, None, limit).await;
        seen.push(format!("{:?}", roots.expect("list roots")));
    }
    seen.push(format!(
        "{:?}",
        store.list_domains().await.expect("list domains")
    ));
    seen.join("\n")
}

fn fail(error: EventStoreError) -> TestCaseError {
    TestCaseError::fail(error.to_string())
}

fn aggregate(domain: &str) -> AggregateId {
    AggregateId::new(Domain::new(domain).expect("valid domain"), Uuid::new_v4())
        .expect("non-nil root")
}

fn packed(type_url: &str, value: Vec<u8>) -> Any {
    Any {
        type_url: type_url.to_owned(),
        value,
    }
}

/// `len` events from sequence `first`, each payload naming its position and `label`.
fn pages(first: u64, len: usize, label: &str) -> Vec<EventPage> {
    (first..first + len as u64)
        .map(|sequence| EventPage {
            sequence,
            payload: Some(packed(
                "type.example/Event",
                format!("{label} #{sequence}").into_bytes(),
            )),
            correlation_id: label.to_owned(),
            ..EventPage::default()
        })
        .collect()
}

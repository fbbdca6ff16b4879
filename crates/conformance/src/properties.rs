//! The properties of the suite. Each takes a [`Harness`] and panics with a readable message when
//! the store breaks the contract; [`store_suite!`](crate::store_suite) makes one test of each.

use std::sync::Arc;

use angzarr_ports::{
    AggregateId, Append, Domain, EventPage, EventStore, EventStoreError, EventStoreExt, Limit,
    Snapshot, SnapshotStore, Uuid,
};
use proptest::prelude::*;
use prost_types::Any;

use crate::{Harness, namespace, state_machine};

/// Random sequences of appends (correct, stale and future expected sequences, empty batches,
/// gaps), reads of every range, next sequences, root and domain listings, correlation and
/// request lookups, snapshot puts, overwrites, gets and deletes, and (for persistent stores)
/// reopens: the store must answer every one exactly as the in-memory model does.
pub async fn state_machine<H: Harness>(harness: &H) {
    state_machine::run(harness).await;
}

/// Writers racing to append at the same expected sequence: exactly one wins, every other gets
/// a conflict naming the winner's end, and the stream has no gap and no duplicate.
pub async fn concurrent_writers_one_winner<H: Harness>(harness: &H) {
    const WRITERS: usize = 8;
    let ns = namespace();
    let store = Arc::new(harness.open(&ns).await);
    let aggregate = aggregate("race");
    let mut next = 0;
    for round in 0..10u64 {
        // Batches of different lengths and labels tell the winner apart.
        let batches: Vec<Vec<EventPage>> = (0..WRITERS)
            .map(|writer| {
                pages(
                    next,
                    1 + writer % 3,
                    &format!("round {round} writer {writer}"),
                )
            })
            .collect();
        let tasks: Vec<_> = batches
            .iter()
            .map(|events| {
                let (store, aggregate) = (Arc::clone(&store), aggregate.clone());
                let append = Append {
                    expected_sequence: next,
                    events: events.clone(),
                    request_id: None,
                };
                tokio::spawn(async move { store.append(&aggregate, append).await })
            })
            .collect();
        let mut winners = Vec::new();
        let mut conflicts = Vec::new();
        for (writer, task) in tasks.into_iter().enumerate() {
            match task.await.expect("append task panicked") {
                Ok(new_next) => winners.push((writer, new_next)),
                Err(EventStoreError::Conflict { expected, actual }) => {
                    conflicts.push((expected, actual))
                }
                Err(other) => panic!("round {round}: writer {writer} failed with {other}"),
            }
        }
        assert_eq!(
            winners.len(),
            1,
            "round {round}: exactly one writer must win, got {winners:?}"
        );
        let (winner, new_next) = winners[0];
        assert_eq!(
            new_next,
            next + 1 + (winner % 3) as u64,
            "round {round}: the winner's new next sequence"
        );
        for (expected, actual) in conflicts {
            assert_eq!(
                (expected, actual),
                (next, new_next),
                "round {round}: a loser's conflict"
            );
        }
        let stored = store
            .read(&aggregate, (next..new_next).into())
            .await
            .expect("read the round");
        assert_eq!(
            stored, batches[winner],
            "round {round}: the stored events are the winner's"
        );
        next = new_next;
    }
    let stream = store
        .read_all(&aggregate)
        .await
        .expect("read the raced stream");
    let sequences: Vec<u64> = stream.iter().map(|page| page.sequence).collect();
    assert_eq!(
        sequences,
        (0..next).collect::<Vec<_>>(),
        "the raced stream has a gap or a duplicate"
    );
    drop(store);
    harness.cleanup(&ns).await;
}

/// Many aggregates written at once: every append succeeds and every stream is whole.
pub async fn concurrent_aggregates_all_succeed<H: Harness>(harness: &H) {
    const AGGREGATES: usize = 32;
    const BATCHES: u64 = 10;
    let ns = namespace();
    let store = Arc::new(harness.open(&ns).await);
    let tasks: Vec<_> = (0..AGGREGATES)
        .map(|index| {
            let store = Arc::clone(&store);
            tokio::spawn(async move {
                let aggregate = aggregate("parallel");
                for batch in 0..BATCHES {
                    let events = pages(batch * 2, 2, &format!("aggregate {index} batch {batch}"));
                    let append = Append {
                        expected_sequence: batch * 2,
                        events,
                        request_id: None,
                    };
                    store
                        .append(&aggregate, append)
                        .await
                        .expect("an uncontended append failed");
                }
                aggregate
            })
        })
        .collect();
    for task in tasks {
        let aggregate = task.await.expect("writer task panicked");
        let stream = store.read_all(&aggregate).await.expect("read a stream");
        let sequences: Vec<u64> = stream.iter().map(|page| page.sequence).collect();
        assert_eq!(
            sequences,
            (0..BATCHES * 2).collect::<Vec<_>>(),
            "stream of {aggregate}"
        );
    }
    drop(store);
    harness.cleanup(&ns).await;
}

/// A batch of 10,000 events (or the store's declared maximum, if smaller) round-trips; one
/// event more than a declared maximum is refused and writes nothing.
pub async fn large_batch<H: Harness>(harness: &H) {
    let ns = namespace();
    let store = harness.open(&ns).await;
    let max = store.capabilities().max_batch_len;
    let len = max.map_or(10_000, |max| max.min(10_000));
    let aggregate = aggregate("large");
    let events = pages(0, len, "large");
    let append = Append {
        expected_sequence: 0,
        events: events.clone(),
        request_id: Some("big".into()),
    };
    assert_eq!(
        store
            .append(&aggregate, append)
            .await
            .expect("append a large batch"),
        len as u64
    );
    assert_eq!(
        store
            .read_all(&aggregate)
            .await
            .expect("read a large batch"),
        events
    );
    assert_eq!(
        store
            .find_by_request(&aggregate, "big")
            .await
            .expect("find a large batch"),
        events
    );
    if let Some(max) = max {
        let other = self::aggregate("too-large");
        let append = Append {
            expected_sequence: 0,
            events: pages(0, max + 1, "too large"),
            request_id: None,
        };
        match store.append(&other, append).await {
            Err(EventStoreError::LimitExceeded {
                limit: Limit::BatchLen,
                ..
            }) => {}
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

/// Payloads up to the declared event size limit round-trip, whatever their bytes; one over it
/// is refused whole. Without a declared limit, a 256 KiB event round-trips.
pub async fn declared_limits<H: Harness>(harness: &H) {
    let ns = namespace();
    let store = harness.open(&ns).await;
    let aggregate = aggregate("limits");
    let max = store.capabilities().max_event_bytes;
    let mut event = pages(0, 1, "")[0].clone();
    let overhead = prost::Message::encoded_len(&event) + 8;
    let fits = max.map_or(256 * 1024, |max| max.saturating_sub(overhead));
    if let Some(payload) = event.payload.as_mut() {
        payload.value = (0..fits).map(|i| (i * 31 % 256) as u8).collect();
    }
    let append = Append {
        expected_sequence: 0,
        events: vec![event.clone()],
        request_id: None,
    };
    store
        .append(&aggregate, append)
        .await
        .expect("an event within the limit");
    assert_eq!(
        store.read_all(&aggregate).await.expect("read it back"),
        vec![event.clone()]
    );
    if let Some(max) = max {
        event.sequence = 1;
        if let Some(payload) = event.payload.as_mut() {
            payload.value = vec![7; max + 1];
        }
        let second = pages(1, 1, "fits")[0].clone();
        let append = Append {
            expected_sequence: 1,
            events: vec![second, event],
            request_id: None,
        };
        match store.append(&aggregate, append).await {
            Err(EventStoreError::LimitExceeded {
                limit: Limit::EventBytes,
                ..
            }) => {}
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
        request_id: None,
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
    let mut runner = state_machine::runner(256);
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
                    request_id: None,
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
        panic!("domain names: {failure}");
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
/// snapshot, byte for byte. (The state machine also reopens stores at random points.)
pub async fn reopen_keeps_everything<H: Harness>(harness: &H) {
    if !harness.persistent() {
        return;
    }
    let ns = namespace();
    let store = harness.open(&ns).await;
    let aggregates: Vec<AggregateId> = (0..5).map(|_| aggregate("reopen")).collect();
    for (index, aggregate) in aggregates.iter().enumerate() {
        let append = Append {
            expected_sequence: 0,
            events: pages(0, index + 1, "before"),
            request_id: None,
        };
        store
            .append(aggregate, append)
            .await
            .expect("append before reopening");
        let snapshot = Snapshot {
            sequence: index as u64,
            state: Some(packed("state", vec![index as u8; 3])),
        };
        SnapshotStore::put(&store, aggregate, snapshot)
            .await
            .expect("put a snapshot");
    }
    let mut before = Vec::new();
    for aggregate in &aggregates {
        let snapshot = SnapshotStore::get(&store, aggregate)
            .await
            .expect("get a snapshot");
        before.push((store.read_all(aggregate).await.expect("read"), snapshot));
    }
    drop(store);
    let store = harness.open(&ns).await;
    for (aggregate, before) in aggregates.iter().zip(before) {
        let snapshot = SnapshotStore::get(&store, aggregate)
            .await
            .expect("get a snapshot after reopening");
        let after = (
            store
                .read_all(aggregate)
                .await
                .expect("read after reopening"),
            snapshot,
        );
        assert_eq!(after, before, "{aggregate} changed across a reopen");
        let next = after.0.len() as u64;
        let append = Append {
            expected_sequence: next,
            events: pages(next, 1, "after"),
            request_id: None,
        };
        store
            .append(aggregate, append)
            .await
            .expect("append after reopening continues the stream");
    }
    drop(store);
    harness.cleanup(&ns).await;
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

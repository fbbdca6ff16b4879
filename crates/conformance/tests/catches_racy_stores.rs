//! The suite must fail stores whose bugs show only under concurrency: each mutant of
//! `mutants/mod.rs` is the model with one planted race, and the concurrency property aimed at
//! it has to fail it, for the right reason, while the sequential state machine passes it.

mod mutants;

use angzarr_conformance::properties;
use mutants::{Bug, Racy, caught, passes};

#[test]
fn readers_fail_a_store_that_shows_a_batch_one_event_at_a_time() {
    let property = async |harness: &Racy| properties::readers_see_whole_batches(harness).await;
    assert!(
        caught(Bug::HeadThenEvents, property, "part of a batch"),
        "the suite passed a store whose readers see part of a batch"
    );
}

#[test]
fn two_instances_fail_a_store_locked_in_process() {
    let property = async |harness: &Racy| properties::two_instances_one_winner(harness).await;
    assert!(
        caught(Bug::LocalLock, property, "exactly one writer must win"),
        "the suite passed a store whose appends are atomic within one instance only"
    );
}

#[test]
fn two_instances_fail_a_second_instance_with_data_of_its_own() {
    let property = async |harness: &Racy| properties::two_instances_one_winner(harness).await;
    assert!(
        caught(Bug::PrivateState, property, "exactly one writer must win"),
        "the suite passed a harness whose second instance shares nothing"
    );
}

#[test]
fn two_instances_fail_a_request_index_kept_in_process() {
    let property = async |harness: &Racy| properties::two_instances_one_winner(harness).await;
    assert!(
        caught(Bug::PrivateRequestIndex, property, "the request index"),
        "the suite passed a store whose request index one instance cannot see"
    );
}

#[test]
fn the_race_fails_a_store_that_skips_the_check_when_crowded() {
    let property =
        async |harness: &Racy| properties::concurrent_writers_one_winner(harness).await;
    assert!(
        caught(Bug::OverflowSkipsCheck, property, "exactly one writer must win"),
        "the suite passed a store that skips the conflict check under a crowd of writers"
    );
}

#[test]
fn the_race_fails_a_store_that_drops_request_ids_under_race() {
    let property =
        async |harness: &Racy| properties::concurrent_writers_one_winner(harness).await;
    assert!(
        caught(Bug::DropsRequestIdUnderRace, property, "the request index"),
        "the suite passed a store that loses request ids when appends overlap"
    );
}

#[test]
fn concurrent_aggregates_fail_a_store_that_mixes_pages() {
    let property =
        async |harness: &Racy| properties::concurrent_aggregates_all_succeed(harness).await;
    assert!(
        caught(
            Bug::MixesPagesAcrossAggregates,
            property,
            "not what its writer appended"
        ),
        "the suite passed a store that mixes pages between aggregates written at once"
    );
}

/// The bugs are races, not plain errors: one operation at a time, every mutant is the model.
#[test]
fn the_state_machine_passes_every_racy_mutant() {
    for bug in Bug::ALL {
        let property = async |harness: &Racy| properties::state_machine(harness).await;
        passes(bug, property, "the state machine");
    }
}

/// Each of these bugs is caught by the property written for it and by nothing older.
#[test]
fn only_the_new_properties_fail_their_mutants() {
    let race = async |harness: &Racy| properties::concurrent_writers_one_winner(harness).await;
    passes(Bug::HeadThenEvents, race, "the race");
    let aggregates =
        async |harness: &Racy| properties::concurrent_aggregates_all_succeed(harness).await;
    passes(Bug::HeadThenEvents, aggregates, "concurrent aggregates");
    for bug in [Bug::LocalLock, Bug::PrivateState, Bug::PrivateRequestIndex] {
        let race =
            async |harness: &Racy| properties::concurrent_writers_one_winner(harness).await;
        passes(bug, race, "the race through one instance");
    }
}

// SCRATCH: the old concurrency properties (git HEAD), adapted to the new Append.
mod old {
    use std::sync::Arc;
    use angzarr_conformance::{Harness, namespace};
    use angzarr_ports::{AggregateId, Append, Domain, EventPage, EventStore, EventStoreError, EventStoreExt, Uuid};
    use prost_types::Any;

    fn aggregate(domain: &str) -> AggregateId {
        AggregateId::new(Domain::new(domain).unwrap(), Uuid::new_v4()).unwrap()
    }
    fn pages(first: u64, len: usize, label: &str) -> Vec<EventPage> {
        (first..first + len as u64).map(|sequence| EventPage { sequence, payload: Some(Any { type_url: "type.example/Event".into(), value: format!("{label} #{sequence}").into_bytes() }), correlation_id: label.to_owned(), ..EventPage::default() }).collect()
    }
    pub async fn race<H: Harness>(harness: &H) {
        const WRITERS: usize = 8;
        let ns = namespace();
        let store = Arc::new(harness.open(&ns).await);
        let aggregate = aggregate("race");
        let mut next = 0;
        for round in 0..10u64 {
            let batches: Vec<Vec<EventPage>> = (0..WRITERS).map(|writer| pages(next, 1 + writer % 3, &format!("round {round} writer {writer}"))).collect();
            let tasks: Vec<_> = batches.iter().map(|events| {
                let (store, aggregate) = (Arc::clone(&store), aggregate.clone());
                let append = Append::new(next, events.clone());
                tokio::spawn(async move { store.append(&aggregate, append).await })
            }).collect();
            let mut winners = Vec::new();
            let mut conflicts = Vec::new();
            for (writer, task) in tasks.into_iter().enumerate() {
                match task.await.unwrap() {
                    Ok(n) => winners.push((writer, n)),
                    Err(EventStoreError::Conflict { expected, actual }) => conflicts.push((expected, actual)),
                    Err(other) => panic!("{other}"),
                }
            }
            assert_eq!(winners.len(), 1, "round {round}: one winner {winners:?}");
            let (winner, new_next) = winners[0];
            assert_eq!(new_next, next + 1 + (winner % 3) as u64);
            for c in conflicts { assert_eq!(c, (next, new_next)); }
            let stored = store.read(&aggregate, (next..new_next).into()).await.unwrap();
            assert_eq!(stored, batches[winner]);
            next = new_next;
        }
        let stream = store.read_all(&aggregate).await.unwrap();
        let seqs: Vec<u64> = stream.iter().map(|p| p.sequence).collect();
        assert_eq!(seqs, (0..next).collect::<Vec<_>>());
    }
    pub async fn aggregates<H: Harness>(harness: &H) {
        let ns = namespace();
        let store = Arc::new(harness.open(&ns).await);
        let tasks: Vec<_> = (0..32).map(|index| {
            let store = Arc::clone(&store);
            tokio::spawn(async move {
                let aggregate = aggregate("parallel");
                for batch in 0..10u64 {
                    let events = pages(batch * 2, 2, &format!("aggregate {index} batch {batch}"));
                    store.append(&aggregate, Append::new(batch * 2, events)).await.unwrap();
                }
                aggregate
            })
        }).collect();
        for task in tasks {
            let aggregate = task.await.unwrap();
            let seqs: Vec<u64> = store.read_all(&aggregate).await.unwrap().iter().map(|p| p.sequence).collect();
            assert_eq!(seqs, (0..20).collect::<Vec<_>>());
        }
    }
}

#[test]
fn scratch_old_suite_passes_every_racy_mutant() {
    for _ in 0..10 {
        for bug in Bug::ALL {
            passes(bug, async |h: &Racy| old::race(h).await, "old race");
            passes(bug, async |h: &Racy| old::aggregates(h).await, "old aggregates");
        }
    }
}

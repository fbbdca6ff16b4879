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
    let property = async |harness: &Racy| properties::concurrent_writers_one_winner(harness).await;
    assert!(
        caught(
            Bug::OverflowSkipsCheck,
            property,
            "exactly one writer must win"
        ),
        "the suite passed a store that skips the conflict check under a crowd of writers"
    );
}

#[test]
fn the_race_fails_a_store_that_drops_request_ids_under_race() {
    let property = async |harness: &Racy| properties::concurrent_writers_one_winner(harness).await;
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
        let race = async |harness: &Racy| properties::concurrent_writers_one_winner(harness).await;
        passes(bug, race, "the race through one instance");
    }
}

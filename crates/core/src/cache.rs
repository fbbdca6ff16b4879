//! Recently used histories, so that a command for an aggregate this process just wrote need
//! not read its history back from the store.
//!
//! The gateway takes an entry out for the length of a command and puts it back only once the
//! command's outcome is known to match the store: after a successful append (whose
//! expected-sequence check proves the history was current), or after confirming the
//! aggregate's next sequence when nothing was appended. A history another process has moved
//! past is caught by those checks, dropped, and reloaded. A command whose future is dropped
//! midway leaves no entry behind.

use std::collections::HashMap;
use std::sync::{Mutex, MutexGuard};

use angzarr_ports::AggregateId;

use crate::LoadedAggregate;

pub(crate) struct HistoryCache {
    state: Mutex<State>,
    /// The most weight held, over all entries; 0 disables the cache.
    budget: usize,
}

#[derive(Default)]
struct State {
    entries: HashMap<AggregateId, LoadedAggregate>,
    weight: usize,
}

/// How many bytes of a cached state weigh as much as one event.
const STATE_BYTES_PER_EVENT: usize = 1024;

/// An entry's share of the budget: one for the entry itself, one per event, and one per KiB of
/// the state it holds (the logic's folded state, handed back in place of the events, would
/// otherwise weigh nothing however large).
fn weight(history: &LoadedAggregate) -> usize {
    let state_bytes = history
        .snapshot
        .as_ref()
        .and_then(|snapshot| snapshot.state.as_ref())
        .map_or(0, |state| state.value.len());
    1 + history.pages.len() + state_bytes.div_ceil(STATE_BYTES_PER_EVENT)
}

impl HistoryCache {
    pub(crate) fn new(budget: usize) -> Self {
        Self {
            state: Mutex::default(),
            budget,
        }
    }

    /// Whether [`Self::insert`] would keep `history`: the gateway copies a history to cache
    /// only if so.
    pub(crate) fn would_keep(&self, history: &LoadedAggregate) -> bool {
        weight(history) <= self.largest_entry()
    }

    /// One long history must not push every other entry out: none weighs over an eighth of the
    /// budget (so a budget under 8 keeps nothing).
    fn largest_entry(&self) -> usize {
        self.budget / 8
    }

    fn state(&self) -> MutexGuard<'_, State> {
        // Every update leaves the map and its weight consistent before it can panic.
        self.state
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// Removes and returns the entry of `aggregate`.
    pub(crate) fn take(&self, aggregate: &AggregateId) -> Option<LoadedAggregate> {
        let mut state = self.state();
        let history = state.entries.remove(aggregate)?;
        state.weight -= weight(&history);
        Some(history)
    }

    /// Caches `history` as current, evicting other entries if the budget requires.
    pub(crate) fn insert(&self, aggregate: &AggregateId, history: LoadedAggregate) {
        let added = weight(&history);
        let mut state = self.state();
        if added > self.largest_entry() {
            if let Some(replaced) = state.entries.remove(aggregate) {
                state.weight -= weight(&replaced);
            }
            return;
        }
        if let Some(replaced) = state.entries.insert(aggregate.clone(), history) {
            state.weight -= weight(&replaced);
        }
        state.weight += added;
        // Which entries go does not matter for correctness; the map's order is as good as any.
        while state.weight > self.budget {
            let Some(victim) = state.entries.keys().find(|id| *id != aggregate).cloned() else {
                break;
            };
            if let Some(removed) = state.entries.remove(&victim) {
                state.weight -= weight(&removed);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use angzarr_ports::{Domain, Uuid};
    use angzarr_proto::v1::EventPage;

    use super::*;

    fn aggregate() -> AggregateId {
        AggregateId::new(Domain::new("a").unwrap(), Uuid::new_v4()).unwrap()
    }

    fn history(events: usize) -> LoadedAggregate {
        let pages = (0..events as u64)
            .map(|sequence| EventPage {
                sequence,
                ..EventPage::default()
            })
            .collect();
        LoadedAggregate {
            snapshot: None,
            pages,
            next_sequence: events as u64,
        }
    }

    #[test]
    fn the_budget_bounds_entries_even_empty_ones() {
        let cache = HistoryCache::new(80);
        let ids: Vec<AggregateId> = (0..200).map(|_| aggregate()).collect();
        for id in &ids {
            cache.insert(id, history(0));
        }
        assert!(cache.state().entries.len() <= 80);
        assert!(cache.state().weight <= 80);
        let long = aggregate();
        cache.insert(&long, history(0));
        cache.insert(&long, history(10)); // weighs over an eighth of the budget: not cached
        assert!(
            cache.take(&long).is_none(),
            "neither the long history nor the one it replaced"
        );
    }

    #[test]
    fn a_zero_budget_caches_nothing() {
        let cache = HistoryCache::new(0);
        let id = aggregate();
        cache.insert(&id, history(0));
        assert!(!cache.would_keep(&history(0)) && cache.take(&id).is_none());
    }

    #[test]
    fn a_budget_under_eight_keeps_nothing_and_says_so() {
        for budget in 1..8 {
            let cache = HistoryCache::new(budget);
            let id = aggregate();
            assert!(!cache.would_keep(&history(0)), "budget {budget}");
            cache.insert(&id, history(0));
            assert!(cache.take(&id).is_none(), "budget {budget}");
        }
        let cache = HistoryCache::new(8);
        assert!(cache.would_keep(&history(0)) && !cache.would_keep(&history(1)));
    }

    #[test]
    fn a_large_state_weighs_by_its_size() {
        let mut history = history(0);
        history.snapshot = Some(angzarr_proto::v1::Snapshot {
            sequence: 0,
            state: Some(prost_types::Any {
                type_url: "type.googleapis.com/test.State".into(),
                value: vec![0; 10 * STATE_BYTES_PER_EVENT + 1],
            }),
        });
        assert_eq!(weight(&history), 1 + 11);
        // A budget whose largest entry is 8 cannot keep it.
        assert!(!HistoryCache::new(64).would_keep(&history));
        assert!(HistoryCache::new(96).would_keep(&history));
    }

    #[test]
    fn taking_removes_the_entry() {
        let cache = HistoryCache::new(100);
        let id = aggregate();
        cache.insert(&id, history(3));
        assert_eq!(cache.take(&id).map(|h| h.next_sequence), Some(3));
        assert!(cache.take(&id).is_none());
        assert_eq!(cache.state().weight, 0);
    }
}

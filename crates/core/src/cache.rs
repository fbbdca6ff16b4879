//! Recently used histories, so that a command for an aggregate this process just wrote need
//! not read its history back from the store.
//!
//! A cached history can be stale only if another process wrote the aggregate; the append's
//! expected-sequence check then fails, and the gateway drops the entry, reloads from the store
//! and decides again. So the cache can make a command slower, never wrong. Entries are used
//! and updated only under the aggregate's lock.

use std::collections::HashMap;
use std::sync::{Mutex, MutexGuard};

use angzarr_ports::AggregateId;
use angzarr_proto::v1::{EventPage, Snapshot};

use crate::LoadedAggregate;

pub(crate) struct HistoryCache {
    state: Mutex<State>,
    /// The most events held, over all entries; 0 disables the cache.
    budget: usize,
}

#[derive(Default)]
struct State {
    entries: HashMap<AggregateId, LoadedAggregate>,
    events: usize,
}

impl HistoryCache {
    pub(crate) fn new(budget: usize) -> Self {
        Self {
            state: Mutex::default(),
            budget,
        }
    }

    fn state(&self) -> MutexGuard<'_, State> {
        // Every update leaves the map and its count consistent before it can panic.
        self.state
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    pub(crate) fn get(&self, aggregate: &AggregateId) -> Option<LoadedAggregate> {
        self.state().entries.get(aggregate).cloned()
    }

    pub(crate) fn remove(&self, aggregate: &AggregateId) {
        let mut state = self.state();
        if let Some(removed) = state.entries.remove(aggregate) {
            state.events -= removed.pages.len();
        }
    }

    /// Caches a history just loaded from the store.
    pub(crate) fn insert(&self, aggregate: &AggregateId, history: &LoadedAggregate) {
        // One long history must not push every other entry out.
        if history.pages.len() > self.budget / 8 {
            return self.remove(aggregate);
        }
        let mut state = self.state();
        let added = history.pages.len();
        if let Some(replaced) = state.entries.insert(aggregate.clone(), history.clone()) {
            state.events -= replaced.pages.len();
        }
        state.events += added;
        state.evict(self.budget, aggregate);
    }

    /// Records a successful append at `expected_sequence` (and the snapshot stored after it).
    pub(crate) fn appended(
        &self,
        aggregate: &AggregateId,
        expected_sequence: u64,
        pages: &[EventPage],
        snapshot: Option<Snapshot>,
    ) {
        let mut state = self.state();
        let Some(entry) = state.entries.get_mut(aggregate) else {
            return;
        };
        if entry.next_sequence != expected_sequence {
            // Not the history the append was decided on: forget it.
            let stale = entry.pages.len();
            state.entries.remove(aggregate);
            state.events -= stale;
            return;
        }
        let before = entry.pages.len();
        entry.pages.extend_from_slice(pages);
        entry.next_sequence = expected_sequence + pages.len() as u64;
        if let Some(snapshot) = snapshot {
            entry.pages.retain(|page| page.sequence > snapshot.sequence);
            entry.snapshot = Some(snapshot);
        }
        let after = entry.pages.len();
        state.events = state.events + after - before;
        if after > self.budget / 8 {
            state.entries.remove(aggregate);
            state.events -= after;
        }
        state.evict(self.budget, aggregate);
    }
}

impl State {
    /// Drops entries other than `keep` until the budget holds. Which ones does not matter for
    /// correctness; the map's order is as good as any.
    fn evict(&mut self, budget: usize, keep: &AggregateId) {
        while self.events > budget {
            let Some(victim) = self.entries.keys().find(|id| *id != keep).cloned() else {
                break;
            };
            if let Some(removed) = self.entries.remove(&victim) {
                self.events -= removed.pages.len();
            }
        }
    }
}

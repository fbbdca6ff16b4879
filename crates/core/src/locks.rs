//! One command at a time per aggregate, within this process.
//!
//! Commands for the same aggregate would otherwise load the same version, decide, and all but
//! one would lose at the append; under contention, retries could starve. Queueing them here
//! turns those conflicts into waiting. Writers in other processes are still caught by the
//! store's expected-sequence check.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, MutexGuard};

use angzarr_ports::AggregateId;
use tokio::sync::OwnedMutexGuard;

type Slot = Arc<tokio::sync::Mutex<()>>;

#[derive(Default)]
pub(crate) struct AggregateLocks {
    slots: Mutex<HashMap<AggregateId, Slot>>,
}

/// Held while a command runs; the aggregate's slot is removed when nobody else wants it.
pub(crate) struct AggregateGuard<'a> {
    locks: &'a AggregateLocks,
    aggregate: AggregateId,
    slot: Slot,
    held: Option<OwnedMutexGuard<()>>,
}

impl AggregateLocks {
    fn slots(&self) -> MutexGuard<'_, HashMap<AggregateId, Slot>> {
        // The map is consistent after every operation on it, even a panicking one.
        self.slots
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    pub(crate) async fn lock(&self, aggregate: &AggregateId) -> AggregateGuard<'_> {
        // Built before waiting, so that a cancelled wait still cleans up in `drop`.
        let mut guard = self.unheld(aggregate);
        guard.held = Some(Arc::clone(&guard.slot).lock_owned().await);
        guard
    }

    /// The aggregate's lock if nobody holds or awaits it, without waiting.
    pub(crate) fn try_lock(&self, aggregate: &AggregateId) -> Option<AggregateGuard<'_>> {
        // Dropping the unheld guard on failure releases the slot as a cancelled wait does.
        let mut guard = self.unheld(aggregate);
        guard.held = Some(Arc::clone(&guard.slot).try_lock_owned().ok()?);
        Some(guard)
    }

    /// A guard on the aggregate's slot (made if missing) that does not hold its lock yet.
    fn unheld(&self, aggregate: &AggregateId) -> AggregateGuard<'_> {
        AggregateGuard {
            locks: self,
            aggregate: aggregate.clone(),
            slot: Arc::clone(self.slots().entry(aggregate.clone()).or_default()),
            held: None,
        }
    }
}

impl Drop for AggregateGuard<'_> {
    fn drop(&mut self) {
        self.held.take();
        let mut slots = self.locks.slots();
        // Two references, the map's and ours: nobody else holds or waits for this slot, and
        // nobody can take one while we hold the map.
        if Arc::strong_count(&self.slot) == 2 {
            slots.remove(&self.aggregate);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use angzarr_ports::{Domain, Uuid};

    #[tokio::test]
    async fn slots_are_released_when_unused() {
        let locks = AggregateLocks::default();
        let aggregate = AggregateId::new(Domain::new("a").unwrap(), Uuid::new_v4()).unwrap();
        let first = locks.lock(&aggregate).await;
        let waiting = locks.lock(&aggregate);
        tokio::pin!(waiting);
        assert!(
            futures_poll_once(waiting.as_mut()).await.is_none(),
            "the second command waits"
        );
        drop(first);
        drop(waiting.await);
        assert!(locks.slots().is_empty());
    }

    async fn futures_poll_once<F: std::future::Future + Unpin>(future: F) -> Option<F::Output> {
        tokio::time::timeout(std::time::Duration::from_millis(20), future)
            .await
            .ok()
    }
}

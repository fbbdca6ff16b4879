//! The model against the suite: the state machine is trivially satisfied here, but the
//! concurrency, limit and domain properties are not. Run twice: without limits, and with every
//! limit a store can declare, so that the suite's limit branches run (no real store declares
//! them all).

use angzarr_conformance::Harness;
use angzarr_ports::{StoreCapabilities, async_trait};
use angzarr_store_memory::MemoryStore;

struct Memory;

#[async_trait]
impl Harness for Memory {
    type Store = MemoryStore;

    async fn open(&self, _namespace: &str) -> MemoryStore {
        MemoryStore::new()
    }

    /// A clone: it shares the first instance's data.
    async fn open_another(&self, _namespace: &str, first: &MemoryStore) -> MemoryStore {
        first.clone()
    }

    fn persistent(&self) -> bool {
        false
    }
}

angzarr_conformance::store_suite!(Memory);

/// The model with small limits of every kind.
struct LimitedMemory;

/// Small enough that the state machine's boundary batches are cheap, large enough for the
/// concurrency properties' batches.
const LIMITS: StoreCapabilities = StoreCapabilities::UNLIMITED
    .with_max_batch_len(64)
    .with_max_event_bytes(2_000)
    .with_max_snapshot_bytes(200 * 1024);

#[async_trait]
impl Harness for LimitedMemory {
    type Store = MemoryStore;

    async fn open(&self, _namespace: &str) -> MemoryStore {
        MemoryStore::with_capabilities(LIMITS)
    }

    async fn open_another(&self, _namespace: &str, first: &MemoryStore) -> MemoryStore {
        first.clone()
    }

    fn persistent(&self) -> bool {
        false
    }
}

angzarr_conformance::store_suite!(with_limits, LimitedMemory);

//! The model against the suite: the state machine is trivially satisfied here, but the
//! concurrency, limit and domain properties are not.

use angzarr_conformance::Harness;
use angzarr_ports::async_trait;
use angzarr_store_memory::MemoryStore;

struct Memory;

#[async_trait]
impl Harness for Memory {
    type Store = MemoryStore;

    async fn open(&self, _namespace: &str) -> MemoryStore {
        MemoryStore::new()
    }

    fn persistent(&self) -> bool {
        false
    }
}

angzarr_conformance::store_suite!(Memory);

//! The conformance suite against the Bigtable emulator (`ANGZARR_TEST_BIGTABLE_EMULATOR_HOST`,
//! started by `cargo xtask services up bigtable`). Each namespace is a row-key prefix in one
//! table per test process; reopening is a new client over the same emulator. A variable that
//! is not set fails the tests: a backend that is not tested is not skipped silently.

mod common;

use angzarr_conformance::Harness;
use angzarr_ports::async_trait;
use angzarr_store_bigtable::BigtableStore;

/// Small declared limits, so that the suite's at-the-limit cases stay small; the default
/// limits go through the same checks.
const MAX_EVENT_BYTES: usize = 256 * 1024;
const MAX_SNAPSHOT_BYTES: usize = 1024 * 1024;

struct Bigtable;

#[async_trait]
impl Harness for Bigtable {
    type Store = BigtableStore;

    async fn open(&self, namespace: &str) -> BigtableStore {
        let config = common::config(namespace)
            .with_max_event_bytes(MAX_EVENT_BYTES)
            .with_max_snapshot_bytes(MAX_SNAPSHOT_BYTES);
        BigtableStore::open(config)
            .await
            .expect("open the Bigtable store")
    }

    fn persistent(&self) -> bool {
        true
    }
}

angzarr_conformance::store_suite!(Bigtable);

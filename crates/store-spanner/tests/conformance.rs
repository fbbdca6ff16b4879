//! The conformance suite against the Spanner emulator (`ANGZARR_TEST_SPANNER_EMULATOR_HOST`,
//! started by `cargo xtask services up spanner`). Every case shares one database; each
//! namespace is the first column of every key, as in production several stores would share
//! one database. Reopening is a new client over the same database. The variable not set fails
//! the tests: a backend that is not tested is not skipped silently.

mod common;

use angzarr_conformance::Harness;
use angzarr_ports::async_trait;
use angzarr_store_spanner::SpannerStore;

/// Small declared limits, so that the suite's at-the-limit cases stay small. The defaults
/// (2,000 events, 10 MiB cells) are not exercised by the suite: see the README.
const MAX_BATCH_LEN: usize = 500;
const MAX_EVENT_BYTES: usize = 256 * 1024;
const MAX_SNAPSHOT_BYTES: usize = 1024 * 1024;

struct Spanner {
    host: String,
}

#[async_trait]
impl Harness for Spanner {
    type Store = SpannerStore;

    async fn open(&self, namespace: &str) -> SpannerStore {
        let config = common::config(&self.host, "conformance", namespace)
            .with_max_batch_len(MAX_BATCH_LEN)
            .with_max_event_bytes(MAX_EVENT_BYTES)
            .with_max_snapshot_bytes(MAX_SNAPSHOT_BYTES);
        SpannerStore::open(config)
            .await
            .expect("open the Spanner store")
    }

    fn persistent(&self) -> bool {
        true
    }

    /// The emulator answers every strong read-only read after 47 to 70 ms, whatever it reads
    /// (a read in a read-write transaction takes 1 ms, a stale read under 1 ms: it waits for
    /// the read timestamp to be safe), and a state-machine case makes a few hundred reads,
    /// 15 to 25 s a case: 8 cases keep the suite at about four minutes. `PROPTEST_CASES`
    /// raises it for a soak run.
    fn cases(&self) -> u32 {
        8
    }
}

angzarr_conformance::store_suite!(Spanner {
    host: common::emulator_host(),
});

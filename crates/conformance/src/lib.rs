#![doc = include_str!("../README.md")]

pub mod bridge;
mod compare;
mod concurrency;
pub mod faults;
pub mod properties;
mod state_machine;

use angzarr_ports::{EventStore, SnapshotStore, async_trait};

/// How the suite gets stores of one adapter.
///
/// Each test case asks for a store in a fresh `namespace` (a random name), so that cases and
/// concurrent runs never see each other's data.
#[async_trait]
pub trait Harness: Send + Sync + 'static {
    /// The store under test.
    type Store: EventStore + SnapshotStore;

    /// Opens the store of `namespace`: empty the first time, and after a reopen, holding
    /// everything written before (if [`persistent`](Self::persistent)). `namespace` is 32
    /// lowercase hexadecimal characters; map it to a file, a database, a table prefix...
    async fn open(&self, namespace: &str) -> Self::Store;

    /// Whether the data outlives the store value: the suite then drops stores mid-case and
    /// reopens them, and checks that nothing changed.
    fn persistent(&self) -> bool;

    /// Opens a second instance of the store of `namespace` while `first` (opened by
    /// [`open`](Self::open)) stays open: a second connection, pool or client over the same
    /// data, as a second process would have. The suite races writers across both.
    ///
    /// The default opens the store again, which is right wherever `open` connects to shared
    /// data (a file, a server); a harness whose `open` makes fresh state must override it (the
    /// race across instances then finds two winners). Every backend can: a second process over
    /// the same database is the normal deployment.
    async fn open_another(&self, namespace: &str, first: &Self::Store) -> Self::Store {
        let _ = first;
        self.open(namespace).await
    }

    /// Removes what `namespace` left behind, after the case that used it.
    async fn cleanup(&self, namespace: &str) {
        let _ = namespace;
    }

    /// How many random cases the state machine runs. Lower it for slow remote stores;
    /// `PROPTEST_CASES` can raise it for a soak run, never lower it.
    fn cases(&self) -> u32 {
        64
    }
}

/// Runs `property` against `harness` on a fresh multi-threaded runtime: what each test of
/// [`store_suite!`] does.
pub fn run<H: Harness, F: AsyncFnOnce(&H)>(harness: H, property: F) {
    runtime().block_on(property(&harness));
}

/// The runtime each property runs on: several workers, so that racing tasks really race.
pub(crate) fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(4)
        .enable_all()
        .build()
        .expect("cannot start the tokio runtime")
}

/// A fresh namespace name.
pub fn namespace() -> String {
    uuid::Uuid::new_v4().simple().to_string()
}

/// Expands to a module `conformance` with one `#[test]` per property of the suite, each run
/// against the harness that `$harness` evaluates to (evaluated once per test). See the crate
/// documentation. `store_suite!(module_name, $harness)` names the module, to run the suite
/// twice in one test file (say, with and without declared limits).
#[macro_export]
macro_rules! store_suite {
    ($harness:expr) => {
        $crate::store_suite!(conformance, $harness);
    };
    ($module:ident, $harness:expr) => {
        mod $module {
            #[allow(unused_imports)]
            use super::*;

            $crate::store_suite!(@tests $harness;
                state_machine,
                concurrent_writers_one_winner,
                concurrent_aggregates_all_succeed,
                readers_see_whole_batches,
                two_instances_one_winner,
                large_batch,
                declared_limits,
                domain_names,
                reopen_keeps_everything,
            );
        }
    };
    (@tests $harness:expr; $($property:ident),* $(,)?) => {
        $(
            #[test]
            fn $property() {
                $crate::run($harness, async |harness| $crate::properties::$property(harness).await);
            }
        )*
    };
}

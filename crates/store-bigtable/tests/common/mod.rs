//! What the Bigtable store's test files share: the emulator's address and the test table.

#![allow(dead_code, reason = "each test file uses a part")]

use angzarr_store_bigtable::BigtableConfig;

/// The emulator's `host:port`; a missing variable fails the test, saying how to start it.
pub(crate) fn emulator() -> String {
    std::env::var("ANGZARR_TEST_BIGTABLE_EMULATOR_HOST").unwrap_or_else(|_| {
        panic!(
            "ANGZARR_TEST_BIGTABLE_EMULATOR_HOST is not set: start the emulator with `cargo \
             xtask services up bigtable` and load target/services/env (or run `cargo xtask test`)"
        )
    })
}

/// A table of this test process: each namespace isolates one case inside it.
pub(crate) fn table() -> String {
    format!("angzarr-test-{}", std::process::id())
}

/// The configuration of `namespace` in the test table on the emulator at `endpoint`.
pub(crate) fn config_at(endpoint: &str, namespace: &str) -> BigtableConfig {
    BigtableConfig::new("angzarr-test", "angzarr", table())
        .with_endpoint(endpoint)
        .with_namespace(namespace)
        .with_create_if_missing(true)
}

/// The configuration of `namespace` in the test table on the emulator.
pub(crate) fn config(namespace: &str) -> BigtableConfig {
    config_at(&emulator(), namespace)
}

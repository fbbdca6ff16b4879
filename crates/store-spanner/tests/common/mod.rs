//! What the Spanner store's test files share: the emulator's address and a configuration.

#![allow(dead_code, reason = "each test file uses a part")]

use angzarr_store_spanner::{Endpoint, SpannerConfig};

/// The emulator's `host:port`; a missing variable fails the test, saying how to start it.
pub(crate) fn emulator_host() -> String {
    std::env::var("ANGZARR_TEST_SPANNER_EMULATOR_HOST").unwrap_or_else(|_| {
        panic!(
            "ANGZARR_TEST_SPANNER_EMULATOR_HOST is not set: start the emulator with `cargo \
             xtask services up spanner` and load target/services/env (or run `cargo xtask test`)"
        )
    })
}

/// The project and instance every test uses on the emulator (created by the first `open`).
pub(crate) const PROJECT: &str = "angzarr-test";
pub(crate) const INSTANCE: &str = "angzarr";

/// A configuration for `database` and `namespace` on the emulator at `host`, creating what
/// is missing.
pub(crate) fn config(host: &str, database: &str, namespace: &str) -> SpannerConfig {
    SpannerConfig::new(PROJECT, INSTANCE, database)
        .with_endpoint(Endpoint::Emulator(host.to_owned()))
        .with_namespace(namespace)
        .with_create_if_missing(true)
}

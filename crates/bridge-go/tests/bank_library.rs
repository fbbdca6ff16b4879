//! The bank example's own Go library (`examples/bank/go`), in its own process (one Go library
//! per process): the cross-language suite's equivalence property (the fixture library shows
//! the faults) and the native bytes.

mod common;

use std::sync::Arc;
use std::time::Duration;

use angzarr_bridge_go::{GoLibrary, GoLogic};
use angzarr_conformance::bridge::{BridgeHarness, Fault};
use angzarr_ports::{ClientLogic, async_trait};

struct Bank(Arc<GoLibrary>);

#[async_trait]
impl BridgeHarness for Bank {
    async fn bank(&self, snapshot_every: u64) -> Arc<dyn ClientLogic> {
        Arc::new(GoLogic::new(Arc::clone(&self.0)).snapshot_every(snapshot_every))
    }

    fn faults(&self) -> Vec<Fault> {
        Vec::new()
    }

    async fn faulty(&self, fault: Fault, _deadline: Duration) -> Arc<dyn ClientLogic> {
        unreachable!("the bank library shows no fault, asked for {fault:?}")
    }
}

#[test]
fn bank_matches_native() {
    angzarr_conformance::bridge::run(
        Bank(common::library("ANGZARR_TEST_GO_BANK_LIB")),
        async |harness| angzarr_conformance::bridge::bank_matches_native(harness).await,
    );
}

#[test]
fn the_bank_library_gives_the_native_bytes() {
    let library = common::library("ANGZARR_TEST_GO_BANK_LIB");
    let runtime = tokio::runtime::Builder::new_current_thread()
        .build()
        .unwrap();
    for snapshot_every in [0, 1, 3] {
        for keep_state in [false, true] {
            runtime.block_on(common::same_bytes_as_native(
                snapshot_every,
                keep_state,
                |command| library.call_blocking(snapshot_every, command).unwrap(),
            ));
        }
    }
}

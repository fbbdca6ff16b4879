//! One command's round trip through the Go bridge, for a handler that emits nothing and for
//! the bank, beside the native bank: p50 and p99 of single calls, one at a time.
//!
//! ```sh
//! cargo xtask go build && export ANGZARR_TEST_GO_FIXTURE_LIB=$PWD/target/go/fixture.so
//! cargo bench -p angzarr-bridge-go --bench round_trip
//! ```
//!
//! `call_blocking` is the ABI call on the calling thread (encode, cgo, Go's decode and encode,
//! decode); `GoLogic::handle` adds the hand-off to a thread of the bridge's pool and back to
//! the async task, which is what the gateway pays.

use std::hint::black_box;
use std::time::{Duration, Instant};

use angzarr_bridge_go::{GoLibrary, GoLogic};
use angzarr_example_bank::{command, deposit};
use angzarr_ports::ClientLogic;
use angzarr_proto::v1::{ContextualCommand, EventBook, Snapshot};
use prost::Message;
use uuid::Uuid;

const WARMUP: usize = 20_000;
const SAMPLES: usize = 200_000;

/// `cargo bench` passes `--bench`; `cargo test --benches` runs a few calls: a smoke test.
fn measuring() -> bool {
    std::env::args().any(|arg| arg == "--bench")
}

fn main() {
    let path = std::env::var_os("ANGZARR_TEST_GO_FIXTURE_LIB")
        .expect("ANGZARR_TEST_GO_FIXTURE_LIB is not set: run `cargo xtask go build`");
    let library = GoLibrary::load(path).unwrap_or_else(|error| panic!("{error}"));
    let empty = contextual("empty");
    let bank = contextual("account");
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();

    println!("{:<44} {:>9} {:>9}", "round trip", "p50", "p99");
    for (name, command) in [("empty", &empty), ("bank", &bank)] {
        let encoded = command.encode_to_vec();
        report(&format!("call_blocking, {name} handler (bytes)"), || {
            black_box(library.call_blocking(0, &encoded).unwrap());
        });
        let logic = GoLogic::new(library.clone()).snapshot_every(100);
        report(&format!("GoLogic::handle, {name} handler"), || {
            black_box(runtime.block_on(logic.handle(command.clone())).unwrap());
        });
    }
    let native = angzarr_example_bank::logic(100);
    report("NativeLogic::handle, bank", || {
        black_box(runtime.block_on(native.handle(bank.clone())).unwrap());
    });
}

/// A deposit on an open account handed over as its in-memory state, as the gateway does for
/// a warm aggregate.
fn contextual(domain: &str) -> ContextualCommand {
    let root = Uuid::new_v4();
    let mut book = command(root, &deposit(5));
    book.cover.as_mut().unwrap().domain = domain.into();
    let account = angzarr_example_bank::Account {
        open: true,
        owner: "ada".into(),
        balance: 1_000,
    };
    ContextualCommand {
        events: Some(EventBook {
            cover: book.cover.clone(),
            snapshot: Some(Snapshot {
                sequence: 41,
                state: Some(angzarr_core::native::pack(&account)),
            }),
            pages: Vec::new(),
        }),
        command: Some(book),
    }
}

fn report(name: &str, mut call: impl FnMut()) {
    let (warmup, samples) = if measuring() {
        (WARMUP, SAMPLES)
    } else {
        (10, 100)
    };
    for _ in 0..warmup {
        call();
    }
    let mut samples: Vec<Duration> = (0..samples)
        .map(|_| {
            let start = Instant::now();
            call();
            start.elapsed()
        })
        .collect();
    samples.sort_unstable();
    let at = |q: f64| samples[((samples.len() as f64 * q) as usize).min(samples.len() - 1)];
    println!(
        "{name:<44} {:>7.2}µs {:>7.2}µs",
        at(0.50).as_secs_f64() * 1e6,
        at(0.99).as_secs_f64() * 1e6
    );
}

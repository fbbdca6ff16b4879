//! Crash safety: a process appending to the store is killed (SIGKILL) at an arbitrary moment,
//! and the file it leaves must hold every acknowledged append whole, and no append in part.
//!
//! The test re-runs this test binary as the child process, selecting [`crash_child`] and
//! telling it what to do through environment variables; run normally, [`crash_child`] does
//! nothing.

use std::collections::BTreeSet;
use std::io::{BufRead, BufReader, Read, Write};
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::mpsc;
use std::thread::JoinHandle;
use std::time::Duration;

use angzarr_ports::{AggregateId, Append, Domain, EventPage, EventStore, EventStoreExt, Uuid};
use angzarr_proto::prost_types::Any;
use angzarr_store_sqlite::{SqliteConfig, SqliteStore};

/// The database file the child appends to; its absence means "not the child".
const DB_VAR: &str = "ANGZARR_SQLITE_CRASH_DB";
/// Which run of the child this is, so that batch numbers stay unique across runs.
const RUN_VAR: &str = "ANGZARR_SQLITE_CRASH_RUN";
/// Concurrent writers in the child, each on its own aggregate, so that appends get committed
/// in groups.
const WRITERS: u128 = 4;
/// Acknowledged batches to wait for before killing the child.
const ACKS_BEFORE_KILL: usize = 200;
/// Each run starts numbering batches here times its run number.
const BATCHES_PER_RUN: u64 = 1_000_000;
const ACK: &str = "ACK ";

/// The aggregates the child writes to: fixed, so that every run continues the same streams.
fn aggregates() -> Vec<AggregateId> {
    let domain = Domain::new("crash").unwrap();
    (1..=WRITERS)
        .map(|n| AggregateId::new(domain.clone(), Uuid::from_u128(n)).unwrap())
        .collect()
}

/// The size of batch `batch`: 1 to 7 events.
fn batch_size(batch: u64) -> u64 {
    batch % 7 + 1
}

/// Event `index` of batch `batch`: its payload says which batch it belongs to and how big
/// that batch is, so that a partial batch is recognised.
fn event(sequence: u64, batch: u64, index: u64) -> EventPage {
    EventPage {
        sequence,
        payload: Some(Any {
            type_url: "type.googleapis.com/test.CrashEvent".into(),
            value: format!("{batch}/{}/{index}", batch_size(batch)).into_bytes(),
        }),
        correlation_id: format!("batch {batch}"),
        ..EventPage::default()
    }
}

/// The child: appends batches as fast as it can until it is killed, printing the number of
/// each acknowledged batch.
#[test]
fn crash_child() {
    let Some(db) = std::env::var_os(DB_VAR) else {
        return;
    };
    let run: u64 = std::env::var(RUN_VAR).unwrap().parse().unwrap();
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .build()
        .unwrap();
    runtime.block_on(async {
        let store = Arc::new(SqliteStore::open(SqliteConfig::new(db)).unwrap());
        let next_batch = Arc::new(AtomicU64::new(run * BATCHES_PER_RUN));
        let mut writers = tokio::task::JoinSet::new();
        for aggregate in aggregates() {
            let (store, next_batch) = (Arc::clone(&store), Arc::clone(&next_batch));
            writers.spawn(async move {
                let mut next = store.next_sequence(&aggregate).await.unwrap();
                loop {
                    let batch = next_batch.fetch_add(1, Ordering::Relaxed);
                    let events = (0..batch_size(batch))
                        .map(|index| event(next + index, batch, index))
                        .collect();
                    let append = Append {
                        expected_sequence: next,
                        events,
                        request: None,
                    };
                    next = store.append(&aggregate, append).await.unwrap();
                    // Straight to stdout, bypassing the test harness's capture.
                    let mut stdout = std::io::stdout().lock();
                    writeln!(stdout, "{ACK}{batch}").unwrap();
                    stdout.flush().unwrap();
                }
            });
        }
        // The writers only stop on a failure, which the parent reports with this message.
        let stopped = writers.join_next().await;
        panic!("a writer stopped: {stopped:?}");
    });
}

/// Starts the child on `db` and returns it with a channel of the batches it acknowledges, fed
/// by a thread that ends when the child's stdout does.
fn spawn_child(db: &std::path::Path, run: u64) -> (Child, mpsc::Receiver<u64>, JoinHandle<()>) {
    let mut child = Command::new(std::env::current_exe().unwrap())
        .args(["crash_child", "--exact", "--nocapture", "--test-threads=1"])
        .env(DB_VAR, db)
        .env(RUN_VAR, run.to_string())
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let stdout = BufReader::new(child.stdout.take().unwrap());
    let (acks, acknowledged) = mpsc::channel();
    let reader = std::thread::spawn(move || {
        for line in stdout.lines() {
            let Ok(line) = line else { break };
            // The harness may print on the same line ("test crash_child ... ").
            if let Some((_, batch)) = line.split_once(ACK)
                && acks.send(batch.trim().parse().unwrap()).is_err()
            {
                break;
            }
        }
    });
    (child, acknowledged, reader)
}

/// Checks the streams after a crash: sequences run from 0 without a gap, every batch is whole
/// and in one piece, and every acknowledged batch is there. Returns the batches found.
async fn check(store: &SqliteStore, acknowledged: &BTreeSet<u64>) -> BTreeSet<u64> {
    let mut found = BTreeSet::new();
    for aggregate in aggregates() {
        let pages = store.read_all(&aggregate).await.unwrap();
        assert_eq!(
            store.next_sequence(&aggregate).await.unwrap(),
            pages.len() as u64
        );
        let mut pages = pages.iter().enumerate().peekable();
        while let Some((position, first)) = pages.next() {
            assert_eq!(
                first.sequence, position as u64,
                "{aggregate}: sequences have a gap"
            );
            let (batch, size, index) = parse(first);
            assert_eq!(
                index, 0,
                "{aggregate}: batch {batch} starts at event {index}"
            );
            assert_eq!(size, batch_size(batch));
            assert!(found.insert(batch), "batch {batch} is stored twice");
            for expected_index in 1..size {
                let (position, page) = pages
                    .next()
                    .unwrap_or_else(|| panic!("{aggregate}: batch {batch} is cut short"));
                assert_eq!(
                    page.sequence, position as u64,
                    "{aggregate}: sequences have a gap"
                );
                assert_eq!(
                    parse(page),
                    (batch, size, expected_index),
                    "{aggregate}: batch {batch} is not whole"
                );
            }
        }
    }
    let lost: Vec<_> = acknowledged.difference(&found).collect();
    assert!(lost.is_empty(), "acknowledged batches were lost: {lost:?}");
    found
}

/// (batch, batch size, index in the batch) of an event.
fn parse(page: &EventPage) -> (u64, u64, u64) {
    let text = std::str::from_utf8(&page.payload.as_ref().unwrap().value).unwrap();
    let fields: Vec<u64> = text
        .split('/')
        .map(|field| field.parse().unwrap())
        .collect();
    assert_eq!(page.correlation_id, format!("batch {}", fields[0]));
    (fields[0], fields[1], fields[2])
}

/// Kills a child appending to the store three times in a row, checking the file after each
/// crash and letting the next child carry on from what the previous one left.
#[tokio::test]
async fn acknowledged_appends_survive_a_kill_and_no_append_is_partial() {
    let dir = tempfile::tempdir().unwrap();
    let db = SqliteConfig::in_dir(dir.path()).path;
    let mut acknowledged = BTreeSet::new();
    for run in 0..3 {
        let (mut child, acks, reader) = spawn_child(&db, run);
        let mut acked_this_run = 0;
        while acked_this_run < ACKS_BEFORE_KILL {
            match acks.recv_timeout(Duration::from_secs(60)) {
                Ok(batch) => {
                    acknowledged.insert(batch);
                    acked_this_run += 1;
                }
                Err(error) => {
                    let _ = child.kill();
                    let mut stderr = String::new();
                    child
                        .stderr
                        .take()
                        .unwrap()
                        .read_to_string(&mut stderr)
                        .unwrap();
                    panic!("run {run}: the child stopped acknowledging ({error}):\n{stderr}");
                }
            }
        }
        // SIGKILL on Unix: no destructor, no flush, no clean close.
        child.kill().unwrap();
        child.wait().unwrap();
        // Acknowledgements still in the pipe count too: those batches were committed.
        reader.join().unwrap();
        acknowledged.extend(acks.try_iter());

        let store = SqliteStore::open(SqliteConfig::new(&db)).unwrap();
        let found = check(&store, &acknowledged).await;
        assert!(found.len() >= acknowledged.len());
        store.close().await;
    }
}

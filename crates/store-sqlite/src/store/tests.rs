use std::collections::BTreeSet;
use std::sync::Arc;
use std::time::Duration;

use angzarr_ports::EventStoreExt;
use angzarr_proto::prost_types::{Any, Timestamp};
use tempfile::TempDir;

use angzarr_ports::{CommandDigest, RequestKey};

use super::*;
use crate::keys;

fn open(dir: &TempDir) -> SqliteStore {
    SqliteStore::open(SqliteConfig::in_dir(dir.path())).unwrap()
}

fn aggregate(domain: &str) -> AggregateId {
    AggregateId::new(Domain::new(domain).unwrap(), Uuid::new_v4()).unwrap()
}

/// An event with every field set, so that round trips are checked field by field.
fn page(sequence: u64, correlation_id: &str) -> EventPage {
    EventPage {
        sequence,
        created_at: Some(Timestamp {
            seconds: 1_700_000_000 + (sequence % 1_000_000) as i64,
            nanos: 123_456_789,
        }),
        payload: Some(Any {
            type_url: "type.googleapis.com/test.Deposited".into(),
            value: format!("event {sequence}").into_bytes(),
        }),
        correlation_id: correlation_id.into(),
    }
}

fn batch(from: u64, len: u64, correlation_id: &str, request_id: Option<&str>) -> Append {
    Append {
        expected_sequence: from,
        events: (0..len)
            .map(|offset| page(from + offset, correlation_id))
            .collect(),
        request: request_id.map(|id| RequestKey::new(id, digest(id))),
    }
}

/// A digest for a request id: what the core would derive from the command.
fn digest(request_id: &str) -> CommandDigest {
    let mut digest = [0; 32];
    for (byte, from) in digest.iter_mut().zip(request_id.bytes().cycle()) {
        *byte = from;
    }
    digest
}

/// The events stored with `request_id`, after checking the digest stored with them.
async fn requested(
    store: &SqliteStore,
    aggregate: &AggregateId,
    request_id: &str,
) -> Vec<EventPage> {
    match store.find_by_request(aggregate, request_id).await.unwrap() {
        None => Vec::new(),
        Some(record) => {
            assert_eq!(record.digest, Some(digest(request_id)));
            record.pages
        }
    }
}

/// A raw connection to the store's file, to look at or damage what it stored.
fn raw(store: &SqliteStore) -> Connection {
    Connection::open(store.path()).unwrap()
}

#[tokio::test]
async fn events_round_trip_exactly() {
    let dir = tempfile::tempdir().unwrap();
    let store = open(&dir);
    let account = aggregate("account");
    let mut first = batch(0, 3, "c1", Some("r1"));
    // Default-valued fields that are present must stay present.
    first.events[0].created_at = Some(Timestamp::default());
    first.events[0].payload = Some(Any::default());
    first.events[1].created_at = None;
    first.events[1].payload = None;
    let second = batch(3, 2, "c2", None);
    let mut expected = first.events.clone();
    expected.extend(second.events.clone());

    assert_eq!(store.append(&account, first).await.unwrap(), 3);
    assert_eq!(store.append(&account, second).await.unwrap(), 5);

    assert_eq!(store.read_all(&account).await.unwrap(), expected);
    assert_eq!(store.next_sequence(&account).await.unwrap(), 5);
    assert_eq!(
        store.read(&account, (1..4).into()).await.unwrap(),
        expected[1..4]
    );
    assert_eq!(store.read_from(&account, 4).await.unwrap(), expected[4..]);
    assert_eq!(
        store.read(&account, (2..99).into()).await.unwrap(),
        expected[2..]
    );
    assert_eq!(requested(&store, &account, "r1").await, expected[..3]);
    assert!(requested(&store, &account, "r2").await.is_empty());
    let correlated = store.find_by_correlation("c2").await.unwrap();
    assert_eq!(
        correlated,
        vec![AggregateEvents {
            aggregate: account.clone(),
            pages: expected[3..].to_vec()
        }]
    );
}

#[tokio::test]
async fn empty_inverted_and_huge_ranges_and_unknown_aggregates_give_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let store = open(&dir);
    let account = aggregate("account");
    store
        .append(&account, batch(0, 3, "c", None))
        .await
        .unwrap();
    let beyond_i64 = i64::MAX as u64 + 1;
    for range in [
        (2..2).into(),
        SequenceRange {
            from: 3,
            to: Some(1),
        },
        (3..).into(),
        (beyond_i64..).into(),
        (u64::MAX..).into(),
    ] {
        assert_eq!(store.read(&account, range).await.unwrap(), [], "{range:?}");
    }
    // An end beyond what SQLite can store is no end.
    assert_eq!(
        store
            .read(&account, (1..beyond_i64).into())
            .await
            .unwrap()
            .len(),
        2
    );
    assert_eq!(
        store
            .read(&account, (1..u64::MAX).into())
            .await
            .unwrap()
            .len(),
        2
    );

    let unknown = aggregate("account");
    assert_eq!(store.next_sequence(&unknown).await.unwrap(), 0);
    assert_eq!(store.read_all(&unknown).await.unwrap(), []);
    assert_eq!(requested(&store, &unknown, "r").await, []);
    assert_eq!(store.find_by_correlation("").await.unwrap(), []);
    assert_eq!(store.find_by_correlation("nope").await.unwrap(), []);
    assert!(
        store
            .list_roots(&Domain::new("other").unwrap(), None, 10)
            .await
            .unwrap()
            .is_empty()
    );
}

#[tokio::test]
async fn an_empty_correlation_id_or_request_id_is_stored_but_only_the_latter_is_found() {
    let dir = tempfile::tempdir().unwrap();
    let store = open(&dir);
    let account = aggregate("account");
    store
        .append(&account, batch(0, 2, "", Some("")))
        .await
        .unwrap();
    store.append(&account, batch(2, 1, "", None)).await.unwrap();
    // As in the reference model: an empty request id is an id, an absent one is not.
    assert_eq!(requested(&store, &account, "").await.len(), 2);
    assert_eq!(store.find_by_correlation("").await.unwrap(), []);
}

#[tokio::test]
async fn a_stale_expected_sequence_conflicts_and_writes_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let store = open(&dir);
    let account = aggregate("account");
    store
        .append(&account, batch(0, 2, "c", None))
        .await
        .unwrap();
    for expected in [0, 1, 3, i64::MAX as u64, u64::MAX] {
        let error = store
            .append(&account, batch(expected, 1, "c", None))
            .await
            .unwrap_err();
        assert!(
            matches!(error, EventStoreError::Conflict { expected: e, actual: 2 } if e == expected),
            "{error:?}"
        );
    }
    // A conflict on an empty stream does not create it.
    let other = aggregate("account");
    let error = store
        .append(&other, batch(1, 1, "c", None))
        .await
        .unwrap_err();
    assert!(matches!(
        error,
        EventStoreError::Conflict {
            expected: 1,
            actual: 0
        }
    ));
    assert_eq!(
        store.list_roots(account.domain(), None, 10).await.unwrap(),
        [account.root()]
    );
    assert_eq!(store.next_sequence(&account).await.unwrap(), 2);
}

#[tokio::test]
async fn malformed_appends_are_refused_before_reaching_the_writer() {
    let dir = tempfile::tempdir().unwrap();
    let store = open(&dir);
    let account = aggregate("account");
    let empty = Append {
        expected_sequence: 0,
        events: Vec::new(),
        request: None,
    };
    let mut gap = batch(0, 2, "c", None);
    gap.events[1].sequence = 5;
    let mut late = batch(1, 1, "c", None);
    late.expected_sequence = 0;
    for append in [empty, gap, late] {
        let error = store.append(&account, append).await.unwrap_err();
        assert!(
            matches!(error, EventStoreError::InvalidArgument(_)),
            "{error:?}"
        );
    }
    assert_eq!(store.next_sequence(&account).await.unwrap(), 0);
    assert_eq!(
        store.capabilities(),
        StoreCapabilities::UNLIMITED.with_global_order(true)
    );
}

#[tokio::test]
async fn a_sequence_beyond_sqlite_integers_is_an_invalid_argument() {
    let dir = tempfile::tempdir().unwrap();
    let store = open(&dir);
    let account = aggregate("account");
    // Fake a stream that has reached i64::MAX, which no real one will.
    let key = keys::aggregate(&account);
    raw(&store)
        .execute(
            "INSERT INTO events (domain, root, sequence, correlation_id, page) VALUES (?1, ?2, ?3, '', x'')",
            rusqlite::params![key.domain, key.root, i64::MAX],
        )
        .unwrap();
    let next = i64::MAX as u64 + 1;
    assert_eq!(store.next_sequence(&account).await.unwrap(), next);
    let error = store
        .append(&account, batch(next, 1, "c", None))
        .await
        .unwrap_err();
    assert!(
        matches!(error, EventStoreError::InvalidArgument(_)),
        "{error:?}"
    );
    assert_eq!(store.next_sequence(&account).await.unwrap(), next);
}

#[tokio::test]
async fn ten_thousand_events_fit_in_one_append() {
    let dir = tempfile::tempdir().unwrap();
    let store = open(&dir);
    let account = aggregate("account");
    assert_eq!(
        store
            .append(&account, batch(0, 10_000, "c", Some("r")))
            .await
            .unwrap(),
        10_000
    );
    let pages = store.read_all(&account).await.unwrap();
    assert_eq!(pages.len(), 10_000);
    assert!(
        pages
            .iter()
            .enumerate()
            .all(|(i, page)| page.sequence == i as u64)
    );
    assert_eq!(requested(&store, &account, "r").await.len(), 10_000);
}

#[tokio::test]
async fn a_corrupt_page_anywhere_in_a_long_read_is_reported() {
    let dir = tempfile::tempdir().unwrap();
    let store = open(&dir);
    let account = aggregate("account");
    store
        .append(&account, batch(0, 10_000, "c", None))
        .await
        .unwrap();
    let conn = raw(&store);
    // Long reads decode on a second thread after the first few thousand events: damage both
    // parts in turn.
    for (damaged, repaired) in [(9_000, None), (100, Some(9_000))] {
        if let Some(repaired) = repaired {
            let page = page(repaired, "c").encode_to_vec();
            conn.execute(
                "UPDATE events SET page = ?1 WHERE sequence = ?2",
                rusqlite::params![page, repaired as i64],
            )
            .unwrap();
        }
        conn.execute(
            "UPDATE events SET page = x'ff' WHERE sequence = ?1",
            [damaged as i64],
        )
        .unwrap();
        let error = store.read_all(&account).await.unwrap_err();
        assert!(matches!(error, EventStoreError::Corrupt(_)), "{error:?}");
        assert_eq!(
            store.read_from(&account, damaged + 1).await.unwrap().len() as u64,
            9_999 - damaged
        );
    }
}

#[tokio::test]
async fn roots_and_domains_are_listed_in_order_one_page_at_a_time() {
    let dir = tempfile::tempdir().unwrap();
    let store = open(&dir);
    let mut roots: Vec<Uuid> = (0..40).map(|_| Uuid::new_v4()).collect();
    roots.extend([
        Uuid::from_u128(1),
        Uuid::from_u128(0xa << 120),
        Uuid::from_u128(0x9f << 120),
        Uuid::max(),
    ]);
    let account = Domain::new("account").unwrap();
    for (i, root) in roots.iter().enumerate() {
        let id = AggregateId::new(account.clone(), *root).unwrap();
        store
            .append(&id, batch(0, 1 + i as u64 % 3, "c", None))
            .await
            .unwrap();
    }
    for domain in ["b.ledger", "Zeta", "9lives", "a-b", "a_b"] {
        store
            .append(&aggregate(domain), batch(0, 1, "c", None))
            .await
            .unwrap();
    }
    roots.sort();

    let mut listed = Vec::new();
    let mut after = None;
    loop {
        let page = store.list_roots(&account, after, 7).await.unwrap();
        assert!(page.len() <= 7);
        let Some(last) = page.last() else { break };
        after = Some(*last);
        listed.extend(page);
    }
    assert_eq!(listed, roots);
    assert!(
        store
            .list_roots(&account, None, 0)
            .await
            .unwrap()
            .is_empty()
    );
    assert!(
        store
            .list_roots(&account, Some(Uuid::max()), 5)
            .await
            .unwrap()
            .is_empty()
    );
    assert_eq!(
        store.list_roots(&account, Some(roots[2]), 2).await.unwrap(),
        roots[3..5]
    );
    assert_eq!(
        store.list_roots(&account, None, usize::MAX).await.unwrap(),
        roots
    );

    let domains: Vec<String> = store
        .list_domains()
        .await
        .unwrap()
        .iter()
        .map(ToString::to_string)
        .collect();
    let mut expected = vec!["9lives", "Zeta", "a-b", "a_b", "account", "b.ledger"];
    expected.sort_unstable();
    assert_eq!(domains, expected);
}

#[tokio::test]
async fn correlated_events_are_grouped_by_aggregate_in_order() {
    let dir = tempfile::tempdir().unwrap();
    let store = open(&dir);
    let mut aggregates: Vec<AggregateId> = ["b", "a", "b", "a", "c"]
        .into_iter()
        .map(aggregate)
        .collect();
    for (i, id) in aggregates.iter().enumerate() {
        store.append(id, batch(0, 2, "other", None)).await.unwrap();
        store
            .append(id, batch(2, 1 + i as u64, "wanted", None))
            .await
            .unwrap();
        store
            .append(id, batch(3 + i as u64, 1, "other", None))
            .await
            .unwrap();
    }
    let found = store.find_by_correlation("wanted").await.unwrap();
    aggregates.sort();
    assert_eq!(
        found
            .iter()
            .map(|group| group.aggregate.clone())
            .collect::<Vec<_>>(),
        aggregates
    );
    for group in found {
        assert!(
            group
                .pages
                .iter()
                .all(|page| page.correlation_id == "wanted")
        );
        assert!(
            group
                .pages
                .windows(2)
                .all(|pair| pair[0].sequence + 1 == pair[1].sequence)
        );
        assert_eq!(group.pages[0].sequence, 2);
    }
}

#[tokio::test]
async fn snapshots_are_put_replaced_and_deleted() {
    let dir = tempfile::tempdir().unwrap();
    let store = open(&dir);
    let account = aggregate("account");
    assert_eq!(store.get(&account).await.unwrap(), None);
    store.delete(&account).await.unwrap();
    let snapshot = |sequence| Snapshot {
        sequence,
        state: Some(Any {
            type_url: "type.googleapis.com/test.State".into(),
            value: vec![1, 2, 3],
        }),
    };
    store.put(&account, snapshot(3)).await.unwrap();
    assert_eq!(store.get(&account).await.unwrap(), Some(snapshot(3)));
    // Any u64 is a valid snapshot sequence for the port.
    store.put(&account, snapshot(u64::MAX)).await.unwrap();
    assert_eq!(store.get(&account).await.unwrap(), Some(snapshot(u64::MAX)));
    assert_eq!(store.get(&aggregate("account")).await.unwrap(), None);
    store.delete(&account).await.unwrap();
    assert_eq!(store.get(&account).await.unwrap(), None);
}

#[tokio::test]
async fn reopening_the_file_keeps_everything() {
    let dir = tempfile::tempdir().unwrap();
    let account = aggregate("account");
    let snapshot = Snapshot {
        sequence: 1,
        state: None,
    };
    let store = open(&dir);
    store
        .append(&account, batch(0, 2, "c", Some("r")))
        .await
        .unwrap();
    store.put(&account, snapshot.clone()).await.unwrap();
    store.close().await;

    let store = open(&dir);
    assert_eq!(
        store.read_all(&account).await.unwrap(),
        batch(0, 2, "c", None).events
    );
    assert_eq!(requested(&store, &account, "r").await.len(), 2);
    assert_eq!(store.get(&account).await.unwrap(), Some(snapshot));
    store
        .append(&account, batch(2, 1, "c", None))
        .await
        .unwrap();
    drop(store);

    let store = open(&dir);
    assert_eq!(store.next_sequence(&account).await.unwrap(), 3);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_appends_to_different_aggregates_all_commit() {
    let dir = tempfile::tempdir().unwrap();
    let store = Arc::new(
        SqliteStore::open(SqliteConfig::in_dir(dir.path()).with_max_group_size(16)).unwrap(),
    );
    let aggregates: Vec<AggregateId> = (0..64).map(|_| aggregate("account")).collect();
    let tasks: Vec<_> = aggregates
        .iter()
        .cloned()
        .map(|id| {
            let store = Arc::clone(&store);
            tokio::spawn(async move {
                for round in 0..5 {
                    store.append(&id, batch(round * 2, 2, "c", None)).await?;
                }
                Ok::<_, EventStoreError>(())
            })
        })
        .collect();
    for task in tasks {
        task.await.unwrap().unwrap();
    }
    for id in &aggregates {
        assert_eq!(store.next_sequence(id).await.unwrap(), 10);
    }
    let listed: BTreeSet<Uuid> = store
        .list_roots(&Domain::new("account").unwrap(), None, 100)
        .await
        .unwrap()
        .into_iter()
        .collect();
    assert_eq!(listed, aggregates.iter().map(AggregateId::root).collect());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn of_writers_racing_on_one_aggregate_exactly_one_wins() {
    let dir = tempfile::tempdir().unwrap();
    let store = Arc::new(open(&dir));
    let account = aggregate("account");
    store
        .append(&account, batch(0, 1, "c", None))
        .await
        .unwrap();
    for round in 0..10u64 {
        let expected = 1 + round * 3;
        let barrier = Arc::new(tokio::sync::Barrier::new(16));
        let racers: Vec<_> = (0..16)
            .map(|racer| {
                let (store, account, barrier) =
                    (Arc::clone(&store), account.clone(), Arc::clone(&barrier));
                tokio::spawn(async move {
                    barrier.wait().await;
                    store
                        .append(
                            &account,
                            batch(expected, 3, &format!("racer {racer}"), None),
                        )
                        .await
                })
            })
            .collect();
        let mut winners = Vec::new();
        for (racer, outcome) in racers.into_iter().enumerate() {
            match outcome.await.unwrap() {
                Ok(next) => winners.push((racer, next)),
                Err(EventStoreError::Conflict {
                    expected: e,
                    actual,
                }) => {
                    assert_eq!((e, actual), (expected, expected + 3));
                }
                Err(other) => panic!("{other:?}"),
            }
        }
        assert_eq!(winners.len(), 1, "{winners:?}");
        let (winner, next) = winners[0];
        assert_eq!(next, expected + 3);
        let written = store.read_from(&account, expected).await.unwrap();
        assert!(
            written
                .iter()
                .all(|page| page.correlation_id == format!("racer {winner}"))
        );
    }
    assert_eq!(store.next_sequence(&account).await.unwrap(), 31);
}

#[tokio::test]
async fn undecodable_stored_data_is_corrupt() {
    let dir = tempfile::tempdir().unwrap();
    let store = open(&dir);
    let account = aggregate("account");
    store
        .append(&account, batch(0, 2, "c", Some("r")))
        .await
        .unwrap();
    store
        .put(
            &account,
            Snapshot {
                sequence: 1,
                state: None,
            },
        )
        .await
        .unwrap();
    let conn = raw(&store);
    // 0xff is field 31 with wire type 7, which does not exist.
    conn.execute("UPDATE events SET page = x'ff' WHERE sequence = 1", [])
        .unwrap();
    conn.execute("UPDATE snapshots SET state = x'ff'", [])
        .unwrap();

    let error = store.read_all(&account).await.unwrap_err();
    assert!(
        matches!(&error, EventStoreError::Corrupt(message) if message.contains(&account.to_string())),
        "{error:?}"
    );
    assert!(matches!(
        store.find_by_correlation("c").await,
        Err(EventStoreError::Corrupt(_))
    ));
    assert!(matches!(
        store.find_by_request(&account, "r").await,
        Err(EventStoreError::Corrupt(_))
    ));
    assert!(matches!(
        store.get(&account).await,
        Err(SnapshotStoreError::Corrupt(_))
    ));
    // The intact event is still readable, and so is the stream's length.
    assert_eq!(store.read(&account, (0..1).into()).await.unwrap().len(), 1);
    assert_eq!(store.next_sequence(&account).await.unwrap(), 2);

    conn.execute("UPDATE events SET root = 'not a uuid'", [])
        .unwrap();
    assert!(matches!(
        store.list_roots(account.domain(), None, 5).await,
        Err(EventStoreError::Corrupt(_))
    ));
}

#[tokio::test]
async fn a_write_lock_held_by_another_process_makes_writes_unavailable_not_stuck() {
    let dir = tempfile::tempdir().unwrap();
    let config = SqliteConfig::in_dir(dir.path()).with_busy_timeout(Duration::from_millis(50));
    let store = SqliteStore::open(config).unwrap();
    let account = aggregate("account");
    let other = raw(&store);
    other.execute_batch("BEGIN IMMEDIATE").unwrap();

    let error = store
        .append(&account, batch(0, 1, "c", None))
        .await
        .unwrap_err();
    assert!(
        matches!(error, EventStoreError::Unavailable(_)),
        "{error:?}"
    );
    assert!(matches!(
        store.put(&account, Snapshot::default()).await,
        Err(SnapshotStoreError::Unavailable(_))
    ));
    // Readers are not blocked by a writer (WAL).
    assert_eq!(store.next_sequence(&account).await.unwrap(), 0);

    other.execute_batch("COMMIT").unwrap();
    assert_eq!(
        store
            .append(&account, batch(0, 1, "c", None))
            .await
            .unwrap(),
        1
    );
}

// A current-thread runtime commits on the blocking pool; a multi-thread one in the caller's
// own task (`block_in_place`), where the panic must not unwind into the caller.
#[tokio::test]
async fn writes_fail_as_unavailable_once_a_commit_panicked() {
    a_panicking_commit_stops_writes().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn writes_fail_as_unavailable_once_a_commit_panicked_in_the_callers_task() {
    // In a task, on a worker thread, rather than in the test's `block_on`.
    tokio::spawn(a_panicking_commit_stops_writes())
        .await
        .unwrap();
}

async fn a_panicking_commit_stops_writes() {
    let dir = tempfile::tempdir().unwrap();
    let store = open(&dir);
    let account = aggregate("account");
    store
        .append(&account, batch(0, 1, "c", None))
        .await
        .unwrap();
    let died = store
        .submit(|_reply: tokio::sync::oneshot::Sender<()>| Job::Panic)
        .await;
    assert!(matches!(died, Err(Failure::Unavailable(_))));
    for _ in 0..3 {
        let error = store
            .append(&account, batch(1, 1, "c", None))
            .await
            .unwrap_err();
        assert!(
            matches!(error, EventStoreError::Unavailable(_)),
            "{error:?}"
        );
        assert!(matches!(
            store.delete(&account).await,
            Err(SnapshotStoreError::Unavailable(_))
        ));
    }
    // Reads still work, and nothing was lost.
    assert_eq!(store.next_sequence(&account).await.unwrap(), 1);
    // Closing does not wait for a commit that will never come.
    store.close().await;
}

/// Polls `future` once, as a caller that gives up before the answer does.
fn poll_once<F: Future>(future: F) {
    let mut future = std::pin::pin!(future);
    let mut context = std::task::Context::from_waker(std::task::Waker::noop());
    let _ = future.as_mut().poll(&mut context);
}

async fn abandoned_writes_are_committed_before_the_store_closes() {
    let dir = tempfile::tempdir().unwrap();
    let store = open(&dir);
    let aggregates: Vec<AggregateId> = (0..20).map(|_| aggregate("account")).collect();
    for id in &aggregates {
        // Queued by the first poll, then dropped: the write must still be committed.
        poll_once(store.append(id, batch(0, 3, "c", None)));
        poll_once(store.put(id, Snapshot::default()));
    }
    store.close().await;
    let store = open(&dir);
    for id in &aggregates {
        assert_eq!(store.next_sequence(id).await.unwrap(), 3);
        assert_eq!(store.get(id).await.unwrap(), Some(Snapshot::default()));
    }
}

#[tokio::test]
async fn abandoned_writes_are_committed_before_the_store_closes_on_a_current_thread_runtime() {
    abandoned_writes_are_committed_before_the_store_closes().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn abandoned_writes_are_committed_before_the_store_closes_on_a_multi_thread_runtime() {
    tokio::spawn(abandoned_writes_are_committed_before_the_store_closes())
        .await
        .unwrap();
}

/// A minimal executor, to run writes outside any tokio runtime.
fn block_on<F: Future>(future: F) -> F::Output {
    struct Unpark(std::thread::Thread);
    impl std::task::Wake for Unpark {
        fn wake(self: Arc<Self>) {
            self.0.unpark();
        }
    }
    let mut future = std::pin::pin!(future);
    let waker = std::task::Waker::from(Arc::new(Unpark(std::thread::current())));
    let mut context = std::task::Context::from_waker(&waker);
    loop {
        if let std::task::Poll::Ready(output) = future.as_mut().poll(&mut context) {
            return output;
        }
        std::thread::park();
    }
}

#[test]
fn writes_work_outside_a_tokio_runtime() {
    let dir = tempfile::tempdir().unwrap();
    let store = open(&dir);
    let account = aggregate("account");
    for round in 0..3 {
        let next = block_on(store.append(&account, batch(round * 2, 2, "c", None))).unwrap();
        assert_eq!(next, round * 2 + 2);
    }
    block_on(store.put(&account, Snapshot::default())).unwrap();
    drop(store);
    let conn = Connection::open(SqliteConfig::in_dir(dir.path()).path).unwrap();
    let stored: i64 = conn
        .query_row("SELECT count(*) FROM events", [], |row| row.get(0))
        .unwrap();
    assert_eq!(stored, 6);
}

#[test]
fn a_store_needs_a_real_file_and_workable_settings() {
    let dir = tempfile::tempdir().unwrap();
    for config in [
        SqliteConfig::new(":memory:"),
        SqliteConfig::new(""),
        SqliteConfig::in_dir(dir.path()).with_max_group_size(0),
        SqliteConfig::in_dir(dir.path()).with_busy_timeout(Duration::MAX),
    ] {
        assert!(matches!(
            SqliteStore::open(config),
            Err(OpenError::InvalidConfig(_))
        ));
    }
    assert!(matches!(
        SqliteStore::open(SqliteConfig::in_dir(dir.path().join("missing"))),
        Err(OpenError::Sqlite(_))
    ));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn any_group_size_works() {
    for max_group_size in [1, usize::MAX] {
        let dir = tempfile::tempdir().unwrap();
        let config = SqliteConfig::in_dir(dir.path()).with_max_group_size(max_group_size);
        let store = Arc::new(SqliteStore::open(config).unwrap());
        let tasks: Vec<_> = (0..8)
            .map(|_| {
                let store = Arc::clone(&store);
                tokio::spawn(
                    async move { store.append(&aggregate("a"), batch(0, 2, "c", None)).await },
                )
            })
            .collect();
        for task in tasks {
            assert_eq!(task.await.unwrap().unwrap(), 2);
        }
        let domain = Domain::new("a").unwrap();
        assert_eq!(store.list_roots(&domain, None, 100).await.unwrap().len(), 8);
    }
}

#[tokio::test]
async fn a_version_1_database_is_migrated_and_its_request_ids_have_no_digest() {
    let dir = tempfile::tempdir().unwrap();
    let config = SqliteConfig::in_dir(dir.path());
    let account = aggregate("account");
    let key = keys::aggregate(&account);
    {
        let conn = Connection::open(&config.path).unwrap();
        conn.execute_batch(schema::V1).unwrap();
        conn.pragma_update(None, "user_version", 1).unwrap();
        conn.execute(
            "INSERT INTO events (domain, root, sequence, correlation_id, request_id, page) \
             VALUES (?1, ?2, 0, 'c', 'r', ?3)",
            rusqlite::params![key.domain, key.root, page(0, "c").encode_to_vec()],
        )
        .unwrap();
    }
    let store = SqliteStore::open(config).unwrap();
    let record = store.find_by_request(&account, "r").await.unwrap().unwrap();
    assert_eq!((record.digest, record.pages), (None, vec![page(0, "c")]));
    store
        .append(&account, batch(1, 1, "c", Some("s")))
        .await
        .unwrap();
    assert_eq!(requested(&store, &account, "s").await, vec![page(1, "c")]);
}

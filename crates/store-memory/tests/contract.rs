//! The model checked against the contract itself. The conformance suite compares every store
//! with this one, so when the model runs the suite it is compared with itself: these tests,
//! written from the `# Contract` and method docs of `angzarr-ports`, are what checks the oracle.

use angzarr_ports::{
    AggregateEvents, AggregateId, Append, Domain, EventPage, EventStore, EventStoreError,
    EventStoreExt, Limit, RequestKey, RequestRecord, SequenceRange, Snapshot, SnapshotStore,
    SnapshotStoreError, StoreCapabilities, Uuid,
};
use angzarr_store_memory::MemoryStore;
use prost::Message;
use prost_types::{Any, Timestamp};

fn aggregate(domain: &str, root: u128) -> AggregateId {
    AggregateId::new(Domain::new(domain).unwrap(), Uuid::from_u128(root)).unwrap()
}

fn page(sequence: u64, correlation_id: &str) -> EventPage {
    EventPage {
        sequence,
        created_at: Some(Timestamp {
            seconds: -5,
            nanos: 7,
        }),
        payload: Some(Any {
            type_url: "t".into(),
            value: sequence.to_be_bytes().to_vec(),
        }),
        correlation_id: correlation_id.into(),
    }
}

fn pages(from: u64, len: u64, correlation_id: &str) -> Vec<EventPage> {
    (from..=u64::MAX)
        .take(len as usize)
        .map(|s| page(s, correlation_id))
        .collect()
}

fn key(id: &str, digest: u8) -> RequestKey {
    RequestKey::new(id, [digest; 32])
}

#[tokio::test]
async fn an_unknown_aggregate_is_an_empty_stream() {
    let store = MemoryStore::new();
    let unknown = aggregate("a", 1);
    assert_eq!(store.read_all(&unknown).await.unwrap(), []);
    assert_eq!(store.next_sequence(&unknown).await.unwrap(), 0);
    assert_eq!(store.find_by_request(&unknown, "r").await.unwrap(), None);
    assert_eq!(store.list_domains().await.unwrap(), []);
    assert_eq!(SnapshotStore::get(&store, &unknown).await.unwrap(), None);
}

#[tokio::test]
async fn appends_continue_the_stream_and_store_events_exactly_as_given() {
    let store = MemoryStore::new();
    let id = aggregate("a", 1);
    assert_eq!(
        store
            .append(&id, Append::new(0, pages(0, 2, "c")))
            .await
            .unwrap(),
        2
    );
    assert_eq!(
        store
            .append(&id, Append::new(2, pages(2, 1, "c")))
            .await
            .unwrap(),
        3
    );
    assert_eq!(store.read_all(&id).await.unwrap(), pages(0, 3, "c"));
    assert_eq!(store.next_sequence(&id).await.unwrap(), 3);
}

#[tokio::test]
async fn a_stream_not_ending_at_the_expected_sequence_is_a_conflict_that_writes_nothing() {
    let store = MemoryStore::new();
    let id = aggregate("a", 1);
    store
        .append(&id, Append::new(0, pages(0, 2, "c")))
        .await
        .unwrap();
    for expected in [0, 1, 3, u64::MAX] {
        let append = Append::new(expected, pages(expected, 1, "c"));
        match store.append(&id, append).await {
            Err(EventStoreError::Conflict {
                expected: e,
                actual,
            }) => {
                assert_eq!((e, actual), (expected, 2));
            }
            other => panic!("expected {expected}: {other:?}"),
        }
    }
    // A conflict on an unknown aggregate does not make it known.
    let other = aggregate("b", 1);
    assert!(
        store
            .append(&other, Append::new(1, pages(1, 1, "c")))
            .await
            .is_err()
    );
    assert_eq!(store.read_all(&id).await.unwrap(), pages(0, 2, "c"));
    assert_eq!(
        store.list_domains().await.unwrap(),
        [Domain::new("a").unwrap()]
    );
}

#[tokio::test]
async fn empty_batches_and_wrong_sequences_are_invalid_arguments() {
    let store = MemoryStore::new();
    let id = aggregate("a", 1);
    let gap = vec![page(0, ""), page(2, "")];
    let offset = pages(1, 2, "");
    for events in [Vec::new(), gap, offset] {
        assert!(matches!(
            store.append(&id, Append::new(0, events)).await,
            Err(EventStoreError::InvalidArgument(_))
        ));
    }
    assert_eq!(store.next_sequence(&id).await.unwrap(), 0);
}

#[tokio::test]
async fn reads_return_the_half_open_range_ascending() {
    let store = MemoryStore::new();
    let id = aggregate("a", 1);
    store
        .append(&id, Append::new(0, pages(0, 5, "")))
        .await
        .unwrap();
    let read = |from, to| {
        let store = &store;
        let id = &id;
        async move { store.read(id, SequenceRange { from, to }).await.unwrap() }
    };
    assert_eq!(read(1, Some(3)).await, pages(1, 2, ""));
    assert_eq!(read(3, None).await, pages(3, 2, ""));
    assert_eq!(read(4, Some(100)).await, pages(4, 1, ""));
    assert_eq!(read(3, Some(3)).await, []);
    assert_eq!(read(4, Some(2)).await, []);
    assert_eq!(read(5, None).await, []);
    assert_eq!(read(1 << 63, None).await, []);
    assert_eq!(read(u64::MAX, Some(u64::MAX)).await, []);
    assert_eq!(read(0, Some(u64::MAX)).await, pages(0, 5, ""));
}

#[tokio::test]
async fn roots_are_listed_ascending_after_the_cursor_a_page_at_a_time() {
    let store = MemoryStore::new();
    for root in [3, 1, 2] {
        let id = aggregate("a", root);
        store
            .append(&id, Append::new(0, pages(0, 1, "")))
            .await
            .unwrap();
    }
    store
        .append(&aggregate("b", 9), Append::new(0, pages(0, 1, "")))
        .await
        .unwrap();
    let domain = Domain::new("a").unwrap();
    let roots = |after: Option<u128>, limit| {
        let (store, domain) = (&store, &domain);
        async move {
            let after = after.map(Uuid::from_u128);
            let roots = store.list_roots(domain, after, limit).await.unwrap();
            roots
                .into_iter()
                .map(|root| root.as_u128())
                .collect::<Vec<_>>()
        }
    };
    assert_eq!(roots(None, 10).await, [1, 2, 3]);
    assert_eq!(roots(None, 2).await, [1, 2]);
    assert_eq!(roots(Some(2), 2).await, [3]);
    assert_eq!(roots(Some(3), 2).await, Vec::<u128>::new());
    assert_eq!(roots(Some(0), 0).await, Vec::<u128>::new());
    assert_eq!(
        store.list_domains().await.unwrap(),
        [Domain::new("a").unwrap(), Domain::new("b").unwrap()]
    );
}

#[tokio::test]
async fn correlation_lookups_group_by_aggregate_and_never_match_the_empty_id() {
    let store = MemoryStore::new();
    let (b2, a1, a2) = (aggregate("b", 2), aggregate("a", 1), aggregate("a", 2));
    store
        .append(&b2, Append::new(0, pages(0, 1, "x")))
        .await
        .unwrap();
    store
        .append(&a2, Append::new(0, pages(0, 2, "x")))
        .await
        .unwrap();
    store
        .append(&a1, Append::new(0, pages(0, 1, "")))
        .await
        .unwrap();
    store
        .append(&a1, Append::new(1, pages(1, 1, "x")))
        .await
        .unwrap();
    store
        .append(&a1, Append::new(2, pages(2, 1, "X")))
        .await
        .unwrap();
    let found = store.find_by_correlation("x").await.unwrap();
    let expected = vec![
        AggregateEvents {
            aggregate: a1,
            pages: pages(1, 1, "x"),
        },
        AggregateEvents {
            aggregate: a2,
            pages: pages(0, 2, "x"),
        },
        AggregateEvents {
            aggregate: b2,
            pages: pages(0, 1, "x"),
        },
    ];
    assert_eq!(found, expected);
    assert_eq!(store.find_by_correlation("").await.unwrap(), []);
}

#[tokio::test]
async fn request_lookups_find_every_event_of_the_id_with_the_first_digest() {
    let store = MemoryStore::new();
    let id = aggregate("a", 1);
    let other = aggregate("b", 1);
    store
        .append(
            &id,
            Append::new(0, pages(0, 2, "")).with_request(key("r", 1)),
        )
        .await
        .unwrap();
    store
        .append(&id, Append::new(2, pages(2, 1, "")))
        .await
        .unwrap();
    store
        .append(
            &id,
            Append::new(3, pages(3, 1, "")).with_request(key("r", 2)),
        )
        .await
        .unwrap();
    store
        .append(
            &id,
            Append::new(4, pages(4, 1, "")).with_request(key("", 3)),
        )
        .await
        .unwrap();
    let record = |pages, digest| {
        Some(RequestRecord {
            digest: Some([digest; 32]),
            pages,
        })
    };
    let expected = [pages(0, 2, ""), pages(3, 1, "")].concat();
    assert_eq!(
        store.find_by_request(&id, "r").await.unwrap(),
        record(expected, 1)
    );
    assert_eq!(
        store.find_by_request(&id, "").await.unwrap(),
        record(pages(4, 1, ""), 3)
    );
    assert_eq!(store.find_by_request(&id, "R").await.unwrap(), None);
    assert_eq!(store.find_by_request(&other, "r").await.unwrap(), None);
}

#[tokio::test]
async fn declared_limits_are_enforced_on_the_encoded_sizes_at_the_boundary() {
    // Sequence 0 is not encoded at all (the proto3 default): sequence 1 is the larger.
    let size = page(1, "").encoded_len();
    let snapshot = Snapshot {
        sequence: 0,
        state: Some(Any::default()),
    };
    let limits = StoreCapabilities::UNLIMITED
        .with_max_batch_len(2)
        .with_max_event_bytes(size)
        .with_max_snapshot_bytes(snapshot.encoded_len());
    let store = MemoryStore::with_capabilities(limits);
    let id = aggregate("a", 1);
    store
        .append(&id, Append::new(0, pages(0, 2, "")))
        .await
        .unwrap();
    match store.append(&id, Append::new(2, pages(2, 3, ""))).await {
        Err(EventStoreError::LimitExceeded { limit, max, actual }) => {
            assert_eq!((limit, max, actual), (Limit::BatchLen, 2, 3));
        }
        other => panic!("{other:?}"),
    }
    let mut large = page(2, "");
    large.correlation_id = "c".into();
    match store.append(&id, Append::new(2, vec![large.clone()])).await {
        Err(EventStoreError::LimitExceeded { limit, max, actual }) => {
            assert_eq!(
                (limit, max, actual),
                (Limit::EventBytes, size, large.encoded_len())
            );
        }
        other => panic!("{other:?}"),
    }
    SnapshotStore::put(&store, &id, snapshot.clone())
        .await
        .unwrap();
    let mut larger = snapshot.clone();
    larger.sequence = 1;
    match SnapshotStore::put(&store, &id, larger.clone()).await {
        Err(SnapshotStoreError::LimitExceeded { max, actual }) => {
            assert_eq!(
                (max, actual),
                (snapshot.encoded_len(), larger.encoded_len())
            );
        }
        other => panic!("{other:?}"),
    }
    assert_eq!(
        SnapshotStore::get(&store, &id).await.unwrap(),
        Some(snapshot)
    );
    assert_eq!(store.next_sequence(&id).await.unwrap(), 2);
}

#[tokio::test]
async fn snapshots_are_kept_as_put_replaced_and_deleted() {
    let store = MemoryStore::new();
    let id = aggregate("a", 1);
    let unset = Snapshot {
        sequence: u64::MAX,
        state: None,
    };
    SnapshotStore::put(&store, &id, unset.clone())
        .await
        .unwrap();
    assert_eq!(SnapshotStore::get(&store, &id).await.unwrap(), Some(unset));
    let set = Snapshot {
        sequence: 3,
        state: Some(Any::default()),
    };
    SnapshotStore::put(&store, &id, set.clone()).await.unwrap();
    assert_eq!(SnapshotStore::get(&store, &id).await.unwrap(), Some(set));
    SnapshotStore::delete(&store, &id).await.unwrap();
    SnapshotStore::delete(&store, &id).await.unwrap();
    assert_eq!(SnapshotStore::get(&store, &id).await.unwrap(), None);
}

//! The network failing at the worst moments, wrong settings at open, and DynamoDB's own limits,
//! against the emulator (`ANGZARR_TEST_DYNAMODB_ENDPOINT`):
//!
//! - a port nobody listens on, an endpoint that accepts connections and never answers, a
//!   missing table, a table of another key schema, a bad table name or limits that cannot fit
//!   a transaction, a missing region and missing credentials fail `open` within seconds, with
//!   errors that say which;
//! - through a fault-injecting TCP proxy: an append whose acknowledgement is lost is retried
//!   with its token and recognised as its own (success, written once); one whose every answer
//!   is lost is `OutcomeUnknown`, written whole; one whose every request is lost is
//!   `OutcomeUnknown` too (the client cannot tell a request lost on the way from an answer
//!   lost on the way back) and wrote nothing; a read without an answer is `Unavailable`;
//!   against a server that went away (connections refused) appends, reads and snapshot reads
//!   are `Unavailable` and nothing is written; and the store reconnects by itself;
//! - appends that would break a transaction's 4 MB or an item's 400 KB (only ids far beyond
//!   the port's 256 bytes can, within the declared limits) are refused before anything is
//!   sent, with errors naming the limit, and leave nothing behind; so are batches and events
//!   over the declared limits, and snapshots over theirs.
//!
//! moto ignores `ClientRequestToken`, so the retry of an applied attempt meets the head it
//! wrote itself: that is the store's token comparison at work (see the README), which the
//! conformance suite never reaches.

mod common;

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use angzarr_conformance::faults::FaultyProxy;
use angzarr_ports::{
    AggregateId, Append, Domain, EventPage, EventStore, EventStoreError, EventStoreExt, RequestKey,
    Snapshot, SnapshotStore, SnapshotStoreError, Uuid,
};
use angzarr_store_dynamodb::{DynamoDbConfig, DynamoDbStore, OpenError};

fn aggregate() -> AggregateId {
    AggregateId::new(Domain::new("faults").expect("valid"), Uuid::new_v4()).expect("non-nil")
}

/// `len` events from `first`, each with a correlation id of `label` (one index item per
/// append).
fn pages(first: u64, len: u64, label: &str) -> Vec<EventPage> {
    (first..first + len)
        .map(|sequence| EventPage {
            sequence,
            correlation_id: label.to_owned(),
            ..EventPage::default()
        })
        .collect()
}

/// The emulator's `host:port`, for the proxy.
fn emulator_addr() -> SocketAddr {
    let endpoint = common::endpoint();
    endpoint
        .strip_prefix("http://")
        .unwrap_or(&endpoint)
        .trim_end_matches('/')
        .parse()
        .expect("the emulator is at http://<numeric host:port>")
}

/// The emulator's configuration for `namespace`'s tables, with short timeouts.
fn quick(endpoint: &str, namespace: &str) -> DynamoDbConfig {
    common::config(endpoint, namespace)
        .with_connect_timeout(Duration::from_secs(2))
        .with_operation_timeout(Duration::from_secs(2))
        .with_max_attempts(3)
}

/// A free loopback port nobody listens on.
fn closed_port() -> SocketAddr {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|listener| listener.local_addr())
        .expect("a free port")
}

/// Runs `work` with every request cut, after it reaches the server (`after`) or before: the
/// cut is armed before `work` starts, and again every millisecond, which the store's retries of
/// a transaction (10 ms apart at least) cannot slip through. (The SDK's own retries of reads
/// are jittered from 0 ms: a read under it should be tried once.)
async fn every_request_cut<T>(
    proxy: &FaultyProxy,
    after: bool,
    work: impl std::future::Future<Output = T>,
) -> T {
    let arm = || {
        if after {
            proxy.cut_after_next_request();
        } else {
            proxy.cut_before_next_request();
        }
    };
    arm();
    let rearm = async {
        loop {
            tokio::time::sleep(Duration::from_millis(1)).await;
            arm();
        }
    };
    let outcome = tokio::select! {
        outcome = work => outcome,
        _ = rearm => unreachable!("the cuts are armed forever"),
    };
    proxy.heal();
    outcome
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_wrong_endpoint_fails_open_within_seconds() {
    let closed = closed_port();
    let endpoint = format!("http://{closed}");
    for create in [true, false] {
        let started = Instant::now();
        let config = quick(&endpoint, "wrong").with_create_if_missing(create);
        match DynamoDbStore::open(config).await {
            Err(error @ OpenError::Connect { .. }) => {
                assert!(error.to_string().contains(&endpoint), "{error}");
            }
            other => panic!("a closed port gave {other:?}"),
        }
        assert!(
            started.elapsed() < Duration::from_secs(10),
            "took {:?}",
            started.elapsed()
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_silent_endpoint_fails_open_within_the_timeouts() {
    let (silent, task) = angzarr_conformance::faults::silent_server().await;
    let config = quick(&format!("http://{silent}"), "silent")
        .with_connect_timeout(Duration::from_secs(1))
        .with_operation_timeout(Duration::from_secs(1));
    let started = Instant::now();
    match DynamoDbStore::open(config).await {
        Err(OpenError::Connect { .. }) => {}
        other => panic!("a silent endpoint gave {other:?}"),
    }
    // The probe is bounded by connect + operation timeouts (2 s).
    assert!(
        started.elapsed() < Duration::from_secs(6),
        "took {:?}",
        started.elapsed()
    );
    task.abort();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_missing_table_is_a_clear_error_unless_created() {
    let endpoint = common::endpoint();
    let namespace = angzarr_conformance::namespace();
    let (events, _) = common::tables(&namespace);
    let config = quick(&endpoint, &namespace).with_create_if_missing(false);
    match DynamoDbStore::open(config).await {
        Err(error @ OpenError::MissingTable(_)) => {
            assert!(error.to_string().contains(&events), "{error}");
            assert!(error.to_string().contains("create_if_missing"), "{error}");
        }
        other => panic!("a missing table gave {other:?}"),
    }
    // With create_if_missing, the same configuration works.
    let store = DynamoDbStore::open(quick(&endpoint, &namespace))
        .await
        .expect("open, creating the tables");
    assert_eq!(store.next_sequence(&aggregate()).await.expect("read"), 0);
    common::cleanup(&endpoint, &namespace).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_table_of_another_schema_is_refused() {
    use aws_sdk_dynamodb::types::{
        AttributeDefinition, BillingMode, KeySchemaElement, KeyType, ScalarAttributeType,
    };

    let endpoint = common::endpoint();
    let namespace = angzarr_conformance::namespace();
    let (events, _) = common::tables(&namespace);
    // Someone else's table under the events table's name: a partition key `id` only.
    common::raw_client(&endpoint)
        .create_table()
        .table_name(&events)
        .key_schema(
            KeySchemaElement::builder()
                .attribute_name("id")
                .key_type(KeyType::Hash)
                .build()
                .expect("key"),
        )
        .attribute_definitions(
            AttributeDefinition::builder()
                .attribute_name("id")
                .attribute_type(ScalarAttributeType::S)
                .build()
                .expect("attribute"),
        )
        .billing_mode(BillingMode::PayPerRequest)
        .send()
        .await
        .expect("create a foreign table");
    let outcome = DynamoDbStore::open(quick(&endpoint, &namespace)).await;
    common::cleanup(&endpoint, &namespace).await;
    match outcome {
        Err(error @ OpenError::WrongTable { .. }) => {
            assert!(error.to_string().contains(&events), "{error}");
        }
        other => panic!("a foreign table gave {other:?}"),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn table_names_and_limits_that_cannot_work_are_refused_before_connecting() {
    // Nothing listens there: an error other than `InvalidConfig` would mean a connection was
    // tried first.
    let endpoint = format!("http://{}", closed_port());
    let base = quick(&endpoint, "limits");
    let long = "t".repeat(256);
    for (config, says) in [
        (base.clone().with_tables("ab", "index"), "3 to 255"),
        (base.clone().with_tables("events", "a/b"), "3 to 255"),
        (base.clone().with_tables(long.as_str(), "index"), "3 to 255"),
        (base.clone().with_tables("same", "same"), "must differ"),
        (base.clone().with_namespace("a#b"), "namespace"),
        // 49 events: 2 × 49 + 3 items, over 100 per transaction.
        (base.clone().with_max_batch_len(49), "100"),
        // An event item over 400 KB.
        (base.clone().with_max_event_bytes(400 * 1024), "event"),
        // 32 events of 200 KiB: over 4 MB.
        (
            base.clone()
                .with_max_batch_len(32)
                .with_max_event_bytes(200 * 1024),
            "4 MB",
        ),
        (base.clone().with_max_snapshot_bytes(400 * 1024), "one item"),
    ] {
        match DynamoDbStore::open(config.clone()).await {
            Err(error @ OpenError::InvalidConfig(_)) => {
                assert!(error.to_string().contains(says), "{config:?}: {error}");
            }
            other => panic!("{config:?} gave {other:?}"),
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_missing_region_fails_open_within_seconds() {
    // The standard chain finds no region here (no AWS_REGION, no profile, no instance
    // metadata). Skipped where one exists.
    if aws_configured() {
        eprintln!("an AWS region or profile is configured: nothing to test");
        return;
    }
    let started = Instant::now();
    let config = DynamoDbConfig::new()
        .with_endpoint(common::endpoint())
        .with_static_credentials("test", "test")
        .with_connect_timeout(Duration::from_secs(2))
        .with_operation_timeout(Duration::from_secs(2));
    match DynamoDbStore::open(config).await {
        Err(error @ OpenError::NoRegion) => assert!(error.to_string().contains("AWS_REGION")),
        other => panic!("a missing region gave {other:?}"),
    }
    assert!(
        started.elapsed() < Duration::from_secs(10),
        "took {:?}",
        started.elapsed()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn missing_credentials_fail_open_within_seconds() {
    // The emulator, but no static credentials: the standard chain finds none on this machine
    // (no environment keys, no profile, no container or instance role), so the probe cannot
    // be signed. Skipped where credentials exist.
    if aws_configured() {
        eprintln!("AWS credentials or a profile are configured: nothing to test");
        return;
    }
    let started = Instant::now();
    let config = DynamoDbConfig::new()
        .with_endpoint(common::endpoint())
        .with_region("us-east-1")
        .with_connect_timeout(Duration::from_secs(2))
        .with_operation_timeout(Duration::from_secs(2));
    match DynamoDbStore::open(config).await {
        Err(error @ OpenError::Credentials(_)) => eprintln!("{error}"),
        other => panic!("missing credentials gave {other:?}"),
    }
    assert!(
        started.elapsed() < Duration::from_secs(10),
        "took {:?}",
        started.elapsed()
    );
}

/// Whether the standard chain could find a region or credentials on this machine.
fn aws_configured() -> bool {
    let in_env = [
        "AWS_REGION",
        "AWS_DEFAULT_REGION",
        "AWS_ACCESS_KEY_ID",
        "AWS_PROFILE",
        "AWS_CONFIG_FILE",
        "AWS_SHARED_CREDENTIALS_FILE",
        "AWS_WEB_IDENTITY_TOKEN_FILE",
        "AWS_CONTAINER_CREDENTIALS_RELATIVE_URI",
        "AWS_CONTAINER_CREDENTIALS_FULL_URI",
    ]
    .iter()
    .any(|var| std::env::var_os(var).is_some());
    let in_home = std::env::var_os("HOME").is_some_and(|home| {
        let aws = std::path::Path::new(&home).join(".aws");
        aws.join("config").exists() || aws.join("credentials").exists()
    });
    in_env || in_home
}

/// A store through a proxy and a direct one over the same tables and namespace, and the
/// namespace (to clean up).
async fn through_proxy() -> (FaultyProxy, DynamoDbStore, DynamoDbStore, String) {
    let endpoint = common::endpoint();
    let proxy = FaultyProxy::start(emulator_addr())
        .await
        .expect("start the proxy");
    let namespace = angzarr_conformance::namespace();
    let direct = DynamoDbStore::open(quick(&endpoint, &namespace))
        .await
        .expect("open directly");
    let proxied = DynamoDbStore::open(
        quick(&format!("http://{}", proxy.addr()), &namespace).with_create_if_missing(false),
    )
    .await
    .expect("open through the proxy");
    (proxy, proxied, direct, namespace)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn lost_acknowledgements_and_requests_never_leave_half_a_batch_or_a_false_answer() {
    let (proxy, proxied, direct, namespace) = through_proxy().await;
    let aggregate = aggregate();
    // The first append also registers the domain (a request of its own): done healthy, so
    // that the cuts below fall on the transactions.
    let mut stream = pages(0, 2, "healthy");
    proxied
        .append(&aggregate, Append::new(0, stream.clone()))
        .await
        .expect("append through a healthy proxy");

    // One acknowledgement lost: the store sends the transaction again with its token; moto
    // ignores tokens and cancels it on the head, which carries this append's token: success,
    // written once.
    proxy.cut_after_next_request();
    let before = proxy.cuts();
    let batch = pages(2, 3, "one lost reply");
    let end = proxied
        .append(&aggregate, Append::new(2, batch.clone()))
        .await
        .expect("an append whose first reply was lost is recognised as applied");
    assert_eq!(end, 5);
    assert_eq!(proxy.cuts(), before + 1, "the proxy cut the append once");
    stream.extend(batch);
    assert_eq!(
        direct.read_all(&aggregate).await.expect("read"),
        stream,
        "written exactly once"
    );

    // Every acknowledgement lost: the first attempt was applied, no answer came back, so the
    // outcome is unknown; the batch is there whole, and found by its request id (how the core
    // resolves an unknown outcome).
    let batch = pages(5, 3, "every reply lost");
    let append = Append::new(5, batch.clone()).with_request(RequestKey::new("lost", [7; 32]));
    let outcome = every_request_cut(&proxy, true, proxied.append(&aggregate, append)).await;
    match outcome {
        Err(EventStoreError::OutcomeUnknown(_)) => {}
        other => panic!("an append without any answer gave {other:?}"),
    }
    stream.extend(batch.clone());
    assert_eq!(
        direct.read_all(&aggregate).await.expect("read"),
        stream,
        "the applied attempt is there whole, once"
    );
    let found = direct
        .find_by_request(&aggregate, "lost")
        .await
        .expect("find the append");
    assert_eq!(found.map(|record| record.pages), Some(batch));

    // Every request lost on the way: nothing was applied, but the client cannot know its
    // request did not arrive, so the outcome is unknown too, and nothing is written.
    let next = stream.len() as u64;
    let lost = Append::new(next, pages(next, 2, "lost requests"));
    let outcome = every_request_cut(&proxy, false, proxied.append(&aggregate, lost)).await;
    match outcome {
        Err(EventStoreError::OutcomeUnknown(_)) => {}
        other => panic!("an append whose requests were lost gave {other:?}"),
    }
    assert_eq!(
        direct.read_all(&aggregate).await.expect("read"),
        stream,
        "a lost request wrote something"
    );

    // A read without an answer is `Unavailable` (tried once, by a client that does not retry).
    let once = DynamoDbStore::open(
        quick(&format!("http://{}", proxy.addr()), &namespace)
            .with_create_if_missing(false)
            .with_max_attempts(1),
    )
    .await
    .expect("open through the proxy");
    let read = every_request_cut(&proxy, true, once.read_all(&aggregate)).await;
    assert!(
        matches!(read, Err(EventStoreError::Unavailable(_))),
        "a read without answers gave {read:?}"
    );

    // Every connection closed while idle: the store reconnects by itself.
    proxy.cut_all();
    tokio::time::sleep(Duration::from_millis(100)).await;
    assert_eq!(
        proxied
            .read_all(&aggregate)
            .await
            .expect("a read reconnects"),
        stream
    );
    let next = stream.len() as u64;
    let healed = pages(next, 1, "healed");
    proxied
        .append(&aggregate, Append::new(next, healed.clone()))
        .await
        .expect("appends work again");
    stream.extend(healed);

    // The server gone. At once, the append may still find the idle connection open and send
    // on it: the client cannot tell whether that request arrived, so `OutcomeUnknown` is as
    // right as `Unavailable`; nothing is written either way.
    drop(proxy);
    let next = stream.len() as u64;
    let append = proxied
        .append(&aggregate, Append::new(next, pages(next, 1, "gone")))
        .await;
    assert!(
        matches!(
            append,
            Err(EventStoreError::Unavailable(_) | EventStoreError::OutcomeUnknown(_))
        ),
        "an append to a server that just went away gave {append:?}"
    );
    // Once the closed connection is seen, every connection is refused: nothing can be sent,
    // so `Unavailable`, within seconds, and nothing written.
    tokio::time::sleep(Duration::from_millis(200)).await;
    let started = Instant::now();
    let append = proxied
        .append(&aggregate, Append::new(next, pages(next, 1, "refused")))
        .await;
    assert!(
        matches!(append, Err(EventStoreError::Unavailable(_))),
        "an append to a server that went away gave {append:?}"
    );
    let read = proxied.read_all(&aggregate).await;
    assert!(
        matches!(read, Err(EventStoreError::Unavailable(_))),
        "a read from a server that went away gave {read:?}"
    );
    let snapshot = proxied.get(&aggregate).await;
    assert!(
        matches!(snapshot, Err(SnapshotStoreError::Unavailable(_))),
        "a snapshot read from a server that went away gave {snapshot:?}"
    );
    assert!(
        started.elapsed() < Duration::from_secs(10),
        "took {:?}",
        started.elapsed()
    );
    assert_eq!(direct.read_all(&aggregate).await.expect("read"), stream);
    common::cleanup(&common::endpoint(), &namespace).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn appends_over_dynamodb_limits_are_refused_whole_before_sending() {
    let endpoint = common::endpoint();
    let namespace = angzarr_conformance::namespace();
    let store = DynamoDbStore::open(quick(&endpoint, &namespace))
        .await
        .expect("open");
    let capabilities = store.capabilities();
    let max_len = capabilities.max_batch_len.expect("declared");
    let max_bytes = capabilities.max_event_bytes.expect("declared");
    assert_eq!(max_len, DynamoDbConfig::DEFAULT_MAX_BATCH_LEN);
    assert_eq!(max_bytes, DynamoDbConfig::DEFAULT_MAX_EVENT_BYTES);
    let aggregate = aggregate();

    // The declared limits: one event too many, one byte too many.
    let too_long = pages(0, max_len as u64 + 1, "too long");
    match store.append(&aggregate, Append::new(0, too_long)).await {
        Err(EventStoreError::LimitExceeded { max, actual, .. }) => {
            assert_eq!((max, actual), (max_len, max_len + 1));
        }
        other => panic!("{} events gave {other:?}", max_len + 1),
    }
    let mut too_big = pages(0, 1, "");
    too_big[0].correlation_id = "x".repeat(max_bytes);
    match store.append(&aggregate, Append::new(0, too_big)).await {
        Err(EventStoreError::LimitExceeded { max, actual, .. }) => {
            assert_eq!(max, max_bytes);
            assert!(actual > max_bytes);
        }
        other => panic!("an event over {max_bytes} bytes gave {other:?}"),
    }

    // Within the declared limits, but DynamoDB's would break: only an id far beyond the
    // port's 256 bytes can do that. A request item over 400 KB:
    let append = Append::new(0, pages(0, 1, "a"))
        .with_request(RequestKey::new("r".repeat(401 * 1024), [1; 32]));
    match store.append(&aggregate, append).await {
        Err(EventStoreError::InvalidArgument(message)) => {
            assert!(message.contains("409600"), "{message}");
        }
        other => panic!("a 401 KiB request item gave {other:?}"),
    }
    // A full batch of the largest events (each with its own correlation id, so 67 items)
    // and a request item of 300 KB: every item fits, the transaction is over 4 MB.
    let full: Vec<EventPage> = (0..max_len as u64)
        .map(|sequence| {
            let mut page = pages(sequence, 1, "")[0].clone();
            let id = format!("{sequence:04}");
            let padding = max_bytes - 16 - id.len();
            page.correlation_id = id + &"y".repeat(padding);
            page
        })
        .collect();
    assert!(full.iter().all(|page| {
        let len = prost::Message::encoded_len(page);
        len <= max_bytes && len > max_bytes - 64
    }));
    let append =
        Append::new(0, full).with_request(RequestKey::new("q".repeat(300 * 1024), [2; 32]));
    match store.append(&aggregate, append).await {
        Err(EventStoreError::InvalidArgument(message)) => {
            assert!(message.contains("4000000"), "{message}");
        }
        other => panic!("a transaction over 4 MB gave {other:?}"),
    }

    // Nothing of the refused appends is visible: no event, no head, no root entry.
    assert_eq!(store.next_sequence(&aggregate).await.expect("read"), 0);
    assert!(store.read_all(&aggregate).await.expect("read").is_empty());
    let roots = store
        .list_roots(aggregate.domain(), None, 10)
        .await
        .expect("list roots");
    assert!(!roots.contains(&aggregate.root()), "{roots:?}");
    // And the stream still takes a valid append at 0.
    store
        .append(&aggregate, Append::new(0, pages(0, 1, "fine")))
        .await
        .expect("a valid append");

    // A snapshot over its declared limit is refused, and the stored one is untouched.
    let max_snapshot = capabilities.max_snapshot_bytes.expect("declared");
    let mut snapshot = Snapshot {
        sequence: 1,
        ..Snapshot::default()
    };
    store
        .put(&aggregate, snapshot.clone())
        .await
        .expect("a small snapshot");
    let mut state = snapshot.state.clone().unwrap_or_default();
    state.value = vec![0; max_snapshot];
    let mut big = snapshot.clone();
    big.state = Some(state);
    big.sequence = 2;
    match store.put(&aggregate, big).await {
        Err(SnapshotStoreError::LimitExceeded { max, .. }) => assert_eq!(max, max_snapshot),
        other => panic!("a snapshot over {max_snapshot} bytes gave {other:?}"),
    }
    snapshot.sequence = 1;
    assert_eq!(store.get(&aggregate).await.expect("get"), Some(snapshot));
    common::cleanup(&endpoint, &namespace).await;
}

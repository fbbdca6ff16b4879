//! Start-up errors and network failures, against the emulator
//! (`ANGZARR_TEST_SPANNER_EMULATOR_HOST`):
//!
//! - a wrong endpoint or a missing database fails `open` clearly within seconds;
//! - through a fault-injecting TCP proxy, requests of appends and reads lost on the way or
//!   without their answer: an append is then a success (written once), `Unavailable`
//!   (nothing written) or `OutcomeUnknown` (written whole or not at all), never a conflict
//!   or half a batch; reads are `Unavailable`; and the store reconnects by itself.
//!
//! The proxy cuts "the next request", which for an append is its `BeginTransaction`: the
//! client library re-sends that one (safely: nothing was written) on a new connection, so
//! these rounds end in success. A lost commit acknowledgement cannot be aimed at through the
//! proxy (the commit is the third request of the append); its classification is covered by
//! the unit tests of `error.rs`, and the commit is never re-sent.

mod common;

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use angzarr_conformance::faults::FaultyProxy;
use angzarr_ports::{
    AggregateId, Append, Domain, EventPage, EventStore, EventStoreError, EventStoreExt, Uuid,
};
use angzarr_store_spanner::{Endpoint, OpenError, SpannerConfig, SpannerStore};

fn aggregate() -> AggregateId {
    AggregateId::new(Domain::new("faults").expect("valid"), Uuid::new_v4()).expect("non-nil")
}

fn pages(first: u64, len: u64, label: &str) -> Vec<EventPage> {
    (first..first + len)
        .map(|sequence| EventPage {
            sequence,
            correlation_id: label.to_owned(),
            ..EventPage::default()
        })
        .collect()
}

fn quick(config: SpannerConfig) -> SpannerConfig {
    config
        .with_connect_timeout(Duration::from_secs(2))
        .with_operation_timeout(Duration::from_secs(2))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_wrong_endpoint_fails_open_within_seconds() {
    // A loopback port nobody listens on.
    let closed = std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|listener| listener.local_addr())
        .expect("a free port");
    let config = quick(common::config(
        &closed.to_string(),
        "faults",
        &angzarr_conformance::namespace(),
    ));
    let started = Instant::now();
    let error = SpannerStore::open(config)
        .await
        .expect_err("nothing listens there");
    assert!(
        started.elapsed() < Duration::from_secs(5),
        "took {:?}",
        started.elapsed()
    );
    assert!(
        matches!(error, OpenError::Connect { .. } | OpenError::Timeout { .. }),
        "{error}"
    );
    assert!(error.to_string().contains(&closed.to_string()), "{error}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_missing_database_fails_open_unless_created() {
    let host = common::emulator_host();
    let database = format!("missing-{}", &Uuid::new_v4().simple().to_string()[..8]);
    let started = Instant::now();
    let error = SpannerStore::open(quick(
        common::config(&host, &database, "ns").with_create_if_missing(false),
    ))
    .await
    .expect_err("the database does not exist");
    assert!(started.elapsed() < Duration::from_secs(5));
    assert!(matches!(error, OpenError::Refused { .. }), "{error}");
    assert!(error.to_string().contains(&database), "{error}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_cloud_without_credentials_fails_open_within_seconds() {
    // No emulator: Google Cloud, with credentials from the standard chain, of which this test
    // machine has none. Skipped where credentials exist: it would reach the real service.
    let gcloud_login = std::env::var_os("HOME").is_some_and(|home| {
        std::path::Path::new(&home)
            .join(".config/gcloud/application_default_credentials.json")
            .exists()
    });
    if std::env::var_os("GOOGLE_APPLICATION_CREDENTIALS").is_some() || gcloud_login {
        eprintln!("credentials are configured: nothing to test");
        return;
    }
    let config = SpannerConfig::new("my-project", "events", "bank")
        .with_connect_timeout(Duration::from_secs(3));
    assert_eq!(config.endpoint, Endpoint::Cloud);
    let started = Instant::now();
    match SpannerStore::open(config).await {
        Err(error @ OpenError::Credentials(_)) => eprintln!("{error}"),
        other => panic!("missing credentials gave {:?}", other.err()),
    }
    assert!(
        started.elapsed() < Duration::from_secs(8),
        "{:?}",
        started.elapsed()
    );
}

/// A store through a proxy (one channel, so that its requests go through one connection)
/// and a direct one, over the same namespace.
async fn through_proxy() -> (FaultyProxy, SpannerStore, SpannerStore) {
    let host = common::emulator_host();
    let server: SocketAddr = host.parse().expect("a numeric host:port");
    let proxy = FaultyProxy::start(server).await.expect("start the proxy");
    let namespace = angzarr_conformance::namespace();
    let direct = SpannerStore::open(common::config(&host, "faults", &namespace))
        .await
        .expect("open directly");
    let proxied = SpannerStore::open(
        quick(common::config(
            &proxy.addr().to_string(),
            "faults",
            &namespace,
        ))
        .with_create_if_missing(false)
        .with_channels(1),
    )
    .await
    .expect("open through the proxy");
    (proxy, proxied, direct)
}

/// Appends through the proxy until one succeeds: the client has a working connection again.
async fn warm(proxied: &SpannerStore, direct: &SpannerStore, aggregate: &AggregateId) -> u64 {
    for _ in 0..20 {
        let next = direct.next_sequence(aggregate).await.expect("read");
        match proxied
            .append(aggregate, Append::new(next, pages(next, 1, "warm")))
            .await
        {
            Ok(next) => return next,
            Err(EventStoreError::Unavailable(_) | EventStoreError::OutcomeUnknown(_)) => {
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
            Err(other) => panic!("the client did not recover: {other}"),
        }
    }
    panic!("the client did not recover after 20 appends");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn lost_requests_and_answers_never_leave_half_a_batch_or_a_false_answer() {
    let (proxy, proxied, direct) = through_proxy().await;
    let aggregate = aggregate();
    for round in 0..6u64 {
        let before = warm(&proxied, &direct, &aggregate).await;
        if round % 2 == 0 {
            proxy.cut_after_next_request();
        } else {
            proxy.cut_before_next_request();
        }
        let batch = pages(before, 3, &format!("cut {round}"));
        let outcome = proxied
            .append(&aggregate, Append::new(before, batch.clone()))
            .await;
        proxy.heal();
        let stream = direct.read_all(&aggregate).await.expect("read");
        let after = &stream[before as usize..];
        match outcome {
            Ok(end) => {
                assert_eq!(end, before + 3, "round {round}");
                assert_eq!(
                    after,
                    batch.as_slice(),
                    "round {round}: success not written"
                );
            }
            Err(EventStoreError::Unavailable(error)) => {
                assert!(
                    after.is_empty(),
                    "round {round}: `Unavailable` wrote: {error}"
                );
            }
            Err(EventStoreError::OutcomeUnknown(_)) => assert!(
                after.is_empty() || after == batch.as_slice(),
                "round {round}: neither whole nor absent: {} of 3 events",
                after.len()
            ),
            Err(other) => panic!("round {round}: a lost request gave {other}"),
        }
    }
    assert!(proxy.cuts() >= 6);

    // A read whose request is lost is `Unavailable`, or succeeds once the client has
    // reconnected by itself; never wrong.
    warm(&proxied, &direct, &aggregate).await;
    proxy.cut_before_next_request();
    match proxied.read_all(&aggregate).await {
        Ok(stream) => assert_eq!(stream, direct.read_all(&aggregate).await.expect("read")),
        Err(error) => assert!(matches!(error, EventStoreError::Unavailable(_)), "{error}"),
    }
    proxy.heal();

    // The proxy gone: the endpoint refuses connections, and nothing could be sent.
    drop(proxy);
    let next = direct.next_sequence(&aggregate).await.expect("read");
    let append = proxied
        .append(&aggregate, Append::new(next, pages(next, 1, "refused")))
        .await;
    assert!(
        matches!(append, Err(EventStoreError::Unavailable(_))),
        "an append to an unreachable endpoint gave {append:?}"
    );
    assert_eq!(direct.next_sequence(&aggregate).await.expect("read"), next);
}

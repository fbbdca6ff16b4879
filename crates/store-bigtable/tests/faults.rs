//! The network failing at the worst moments, and wrong settings at open:
//!
//! - through a fault-injecting proxy, an append whose acknowledgement is lost is an unknown
//!   outcome (and was applied whole or not at all), one whose request is lost writes nothing,
//!   and the store reconnects by itself;
//! - a wrong endpoint, an endpoint that accepts connections and never answers, a missing
//!   table and missing credentials fail `open` within seconds, with errors that say so.

mod common;

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use angzarr_conformance::faults::FaultyProxy;
use angzarr_ports::{
    AggregateId, Append, Domain, EventPage, EventStore, EventStoreError, EventStoreExt, RequestKey,
    Uuid,
};
use angzarr_store_bigtable::{BigtableConfig, BigtableStore, OpenError};
use prost_types::Any;

fn aggregate() -> AggregateId {
    AggregateId::new(Domain::new("faults").expect("valid"), Uuid::new_v4()).expect("non-nil")
}

/// `len` events from `first`, without correlation id (the append is one request).
fn pages(first: u64, len: u64, label: &str) -> Vec<EventPage> {
    (first..first + len)
        .map(|sequence| EventPage {
            sequence,
            payload: Some(Any {
                type_url: "type.example/Fault".into(),
                value: format!("{label} #{sequence}").into_bytes(),
            }),
            ..EventPage::default()
        })
        .collect()
}

fn emulator_addr() -> SocketAddr {
    common::emulator()
        .parse()
        .expect("the emulator is at a numeric host:port")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn lost_acknowledgement_is_an_unknown_outcome() {
    let proxy = FaultyProxy::start(emulator_addr())
        .await
        .expect("start a proxy");
    let namespace = angzarr_conformance::namespace();
    // One connection, so that the cut one is the one the next request uses.
    let through = BigtableStore::open(
        common::config_at(&proxy.addr().to_string(), &namespace).with_channels(1),
    )
    .await
    .expect("open through the proxy");
    let direct = BigtableStore::open(common::config(&namespace))
        .await
        .expect("open directly");
    let aggregate = aggregate();
    let mut stream = pages(0, 2, "before");
    through
        .append(&aggregate, Append::new(0, stream.clone()))
        .await
        .expect("append through a healthy proxy");

    // The request reaches the emulator, its reply is lost.
    proxy.cut_after_next_request();
    let batch = pages(2, 3, "lost reply");
    let append = Append::new(2, batch.clone()).with_request(RequestKey::new("lost reply", [1; 32]));
    match through.append(&aggregate, append).await {
        Err(EventStoreError::OutcomeUnknown(_)) => {}
        other => panic!("an append whose reply was lost gave {other:?}"),
    }
    assert_eq!(proxy.cuts(), 1, "the proxy cut the append");
    let stored = direct.read_all(&aggregate).await.expect("read directly");
    let with_batch = [stream.clone(), batch.clone()].concat();
    assert!(
        stored == stream || stored == with_batch,
        "a lost reply left part of a batch: {} events",
        stored.len()
    );
    // The request went through before the reply was lost: the whole batch is there, and
    // found by its request id (how the core resolves the unknown outcome).
    assert_eq!(stored, with_batch);
    let found = direct
        .find_by_request(&aggregate, "lost reply")
        .await
        .expect("find the lost reply's append");
    assert_eq!(found.map(|record| record.pages), Some(batch));
    stream = stored;

    // The store reconnects by itself (a read first: reads are retried on a broken connection).
    assert_eq!(
        through
            .read_all(&aggregate)
            .await
            .expect("a read reconnects"),
        stream
    );
    let next = stream.len() as u64;
    let after = pages(next, 1, "after the lost reply");
    through
        .append(&aggregate, Append::new(next, after.clone()))
        .await
        .expect("an append after a lost reply");
    stream.extend(after);

    // The request never reaches the emulator.
    proxy.cut_before_next_request();
    let next = stream.len() as u64;
    match through
        .append(
            &aggregate,
            Append::new(next, pages(next, 2, "lost request")),
        )
        .await
    {
        Err(EventStoreError::OutcomeUnknown(_) | EventStoreError::Unavailable(_)) => {}
        other => panic!("an append whose request was lost gave {other:?}"),
    }
    assert_eq!(
        direct.read_all(&aggregate).await.expect("read directly"),
        stream,
        "a lost request wrote something"
    );

    // Every connection closed while idle: the store carries on.
    proxy.cut_all();
    tokio::time::sleep(Duration::from_millis(100)).await;
    assert_eq!(
        through
            .read_all(&aggregate)
            .await
            .expect("a read reconnects"),
        stream
    );
    let next = stream.len() as u64;
    through
        .append(&aggregate, Append::new(next, pages(next, 1, "healed")))
        .await
        .expect("appends work again");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_silent_endpoint_fails_open_within_the_connect_timeout() {
    let (silent, task) = angzarr_conformance::faults::silent_server().await;
    // Opening needs an answer: a silent endpoint fails open within the connect timeout.
    let config = common::config_at(&silent.to_string(), &angzarr_conformance::namespace())
        .with_create_if_missing(false)
        .with_connect_timeout(Duration::from_secs(1));
    let started = Instant::now();
    match BigtableStore::open(config).await {
        Err(OpenError::Connect { .. }) => {}
        other => panic!("a silent endpoint gave {other:?}"),
    }
    assert!(
        started.elapsed() < Duration::from_secs(3),
        "{:?}",
        started.elapsed()
    );
    task.abort();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn wrong_endpoint_fails_open_within_seconds() {
    // A port nobody listens on.
    let closed = std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|listener| listener.local_addr())
        .expect("a free port");
    let started = Instant::now();
    let config = common::config_at(&closed.to_string(), "wrong")
        .with_connect_timeout(Duration::from_secs(2));
    match BigtableStore::open(config).await {
        Err(error @ OpenError::Connect { .. }) => {
            assert!(error.to_string().contains(&closed.to_string()), "{error}");
        }
        other => panic!("a closed port gave {other:?}"),
    }
    assert!(
        started.elapsed() < Duration::from_secs(5),
        "{:?}",
        started.elapsed()
    );
    // Without create_if_missing, the first request is the probe: the same error.
    let config = common::config_at(&closed.to_string(), "wrong")
        .with_create_if_missing(false)
        .with_connect_timeout(Duration::from_secs(2));
    assert!(matches!(
        BigtableStore::open(config).await,
        Err(OpenError::Connect { .. })
    ));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_missing_table_is_a_clear_error() {
    let config = BigtableConfig::new("angzarr-test", "angzarr", "no-such-table")
        .with_endpoint(common::emulator());
    match BigtableStore::open(config).await {
        Err(error @ OpenError::TableNotFound(_)) => {
            assert!(error.to_string().contains("no-such-table"), "{error}");
        }
        other => panic!("a missing table gave {other:?}"),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn missing_credentials_fail_open_within_seconds() {
    // No endpoint: the real service, with credentials from the standard chain, of which this
    // test machine has none (no GOOGLE_APPLICATION_CREDENTIALS, no gcloud login, no metadata
    // server). Skipped where credentials exist: it would reach the real service.
    let gcloud_login = std::env::var_os("HOME").is_some_and(|home| {
        std::path::Path::new(&home)
            .join(".config/gcloud/application_default_credentials.json")
            .exists()
    });
    if std::env::var_os("GOOGLE_APPLICATION_CREDENTIALS").is_some()
        || std::env::var_os("BIGTABLE_EMULATOR_HOST").is_some()
        || gcloud_login
    {
        eprintln!("credentials or an emulator are configured: nothing to test");
        return;
    }
    let started = Instant::now();
    let config = BigtableConfig::new("angzarr-test", "angzarr", "events")
        .with_connect_timeout(Duration::from_secs(3));
    match BigtableStore::open(config).await {
        // Only `Credentials`: `Connect` would mean credentials were found after all.
        Err(error @ OpenError::Credentials(_)) => {
            eprintln!("{error}");
        }
        other => panic!("missing credentials gave {other:?}"),
    }
    assert!(
        started.elapsed() < Duration::from_secs(8),
        "{:?}",
        started.elapsed()
    );
}

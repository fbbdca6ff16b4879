//! Network failures at the worst moments, through a fault-injecting TCP proxy between the
//! store and a real server (`ANGZARR_TEST_POSTGRES_URL`): an acknowledgement lost after the
//! append reached the server is `OutcomeUnknown`, and the append is then whole or absent; a
//! request lost before it is never reported as applied and leaves nothing; a server that
//! cannot be reached is `Unavailable`; and the pool recovers each time.

use std::net::{SocketAddr, ToSocketAddrs};
use std::str::FromStr;
use std::time::Duration;

use angzarr_conformance::faults::FaultyProxy;
use angzarr_ports::{
    AggregateId, Append, Domain, EventPage, EventStore, EventStoreError, EventStoreExt, Uuid,
};
use angzarr_store_postgres::{PostgresConfig, PostgresStore};
use tokio_postgres::config::Host;

fn url() -> String {
    std::env::var("ANGZARR_TEST_POSTGRES_URL").unwrap_or_else(|_| {
        panic!(
            "ANGZARR_TEST_POSTGRES_URL is not set: these tests need a PostgreSQL server \
             (`cargo xtask services up postgres`, then `set -a; . target/services/env; set +a`)"
        )
    })
}

/// The server's address, and the URL with that address replaced by `via`.
fn through(via: Option<SocketAddr>) -> (SocketAddr, String) {
    let config = tokio_postgres::Config::from_str(&url()).expect("a valid URL");
    let host = match config.get_hosts().first() {
        Some(Host::Tcp(host)) => host.clone(),
        _ => panic!("the fault tests need a server reached over TCP"),
    };
    let port = config.get_ports().first().copied().unwrap_or(5432);
    let server = (host.as_str(), port)
        .to_socket_addrs()
        .expect("resolve the server")
        .next()
        .expect("an address");
    let address = via.unwrap_or(server);
    let user = config.get_user().unwrap_or("postgres");
    let password = config
        .get_password()
        .map(|password| format!(":{}", String::from_utf8_lossy(password)))
        .unwrap_or_default();
    let database = config.get_dbname().unwrap_or(user);
    (
        server,
        format!("postgres://{user}{password}@{address}/{database}"),
    )
}

/// A store through a fresh proxy (one pooled connection, so that "the next request" is the
/// store's), and a direct one over the same schema, to see what really happened.
struct Setup {
    proxy: FaultyProxy,
    proxied: PostgresStore,
    direct: PostgresStore,
    schema: String,
}

impl Setup {
    async fn new() -> Self {
        let (server, direct_url) = through(None);
        let proxy = FaultyProxy::start(server).await.expect("start the proxy");
        let (_, proxied_url) = through(Some(proxy.addr()));
        let schema = format!("faults_{}", Uuid::new_v4().simple());
        let config = |url: String| {
            PostgresConfig::new(url)
                .with_schema(&schema)
                .with_pool_size(1)
                .with_connect_timeout(Duration::from_secs(2))
                .with_acquire_timeout(Duration::from_secs(2))
                .with_operation_timeout(Duration::from_secs(5))
        };
        let direct = PostgresStore::open(config(direct_url))
            .await
            .expect("open directly");
        let proxied = PostgresStore::open(config(proxied_url))
            .await
            .expect("open through the proxy");
        Self {
            proxy,
            proxied,
            direct,
            schema,
        }
    }

    /// Appends through the proxy until one succeeds: the pool has a working connection again.
    async fn warm(&self, aggregate: &AggregateId, label: &str) -> u64 {
        for _ in 0..5 {
            let next = self.direct.next_sequence(aggregate).await.expect("read");
            match self
                .proxied
                .append(aggregate, Append::new(next, pages(next, 1, label)))
                .await
            {
                Ok(next) => return next,
                Err(EventStoreError::Unavailable(_) | EventStoreError::OutcomeUnknown(_)) => {
                    tokio::time::sleep(Duration::from_millis(50)).await;
                }
                Err(other) => panic!("the pool did not recover: {other}"),
            }
        }
        panic!("the pool did not recover after 5 appends");
    }

    /// Closes the stores and drops the schema.
    async fn close(self) {
        let Self { schema, .. } = self;
        drop_schema(&schema).await;
    }
}

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

/// The acknowledgement of an append is lost after the server got it: `OutcomeUnknown`, never a
/// failure or a success; the stream then holds the whole batch or none of it; and the next
/// append through the proxy works.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_lost_acknowledgement_is_an_unknown_outcome_and_the_append_is_whole_or_absent() {
    let setup = Setup::new().await;
    let aggregate = aggregate();
    for (round, len) in [1u64, 3, 200].into_iter().enumerate() {
        let before = setup.warm(&aggregate, "warm").await;
        let batch = pages(before, len, &format!("cut {round}"));
        setup.proxy.cut_after_next_request();
        let outcome = setup
            .proxied
            .append(&aggregate, Append::new(before, batch.clone()))
            .await;
        assert!(
            matches!(outcome, Err(EventStoreError::OutcomeUnknown(_))),
            "round {round}: a lost acknowledgement gave {outcome:?}"
        );
        let stream = setup.direct.read_all(&aggregate).await.expect("read");
        let after = &stream[before as usize..];
        assert!(
            after.is_empty() || after == batch.as_slice(),
            "round {round}: the append is neither whole nor absent: {} of {len} events",
            after.len()
        );
        // The server had the request before the cut: it commits it.
        assert_eq!(
            after,
            batch.as_slice(),
            "round {round}: the append was lost"
        );
    }
    assert!(setup.proxy.cuts() >= 3);
    setup.warm(&aggregate, "after").await;
    setup.close().await;
}

/// A request lost before it reached the server: reported `Unavailable` or `OutcomeUnknown`
/// (the client cannot tell it from a lost answer), never applied; then the pool recovers.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_request_lost_on_the_way_is_never_reported_applied_and_writes_nothing() {
    let setup = Setup::new().await;
    let aggregate = aggregate();
    for round in 0..3 {
        let before = setup.warm(&aggregate, "warm").await;
        setup.proxy.cut_before_next_request();
        let outcome = setup
            .proxied
            .append(&aggregate, Append::new(before, pages(before, 2, "lost")))
            .await;
        assert!(
            matches!(
                outcome,
                Err(EventStoreError::OutcomeUnknown(_) | EventStoreError::Unavailable(_))
            ),
            "round {round}: a lost request gave {outcome:?}"
        );
        assert_eq!(
            setup.direct.next_sequence(&aggregate).await.expect("read"),
            before,
            "round {round}: a lost request wrote events"
        );
    }
    // Reads lose their request too, and are `Unavailable`.
    setup.warm(&aggregate, "warm").await;
    setup.proxy.cut_before_next_request();
    let read = setup.proxied.read_all(&aggregate).await;
    assert!(
        matches!(read, Err(EventStoreError::Unavailable(_))),
        "a lost read gave {read:?}"
    );
    setup.warm(&aggregate, "after").await;
    setup.close().await;
}

/// Every connection cut while idle: the pool notices and reconnects. The server out of reach:
/// appends and reads fail with `Unavailable`, since nothing could be sent.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_pool_recovers_from_cut_connections_and_an_unreachable_server_is_unavailable() {
    let setup = Setup::new().await;
    let aggregate = aggregate();
    let next = setup.warm(&aggregate, "warm").await;
    setup.proxy.cut_all();
    // Time for the driver to see its socket closed, as it would between two commands.
    tokio::time::sleep(Duration::from_millis(100)).await;
    assert_eq!(
        setup
            .proxied
            .append(&aggregate, Append::new(next, pages(next, 1, "idle cut")))
            .await
            .expect("a connection cut while idle is replaced"),
        next + 1
    );

    // Out of reach: the proxy is gone, and its port refuses connections.
    let Setup {
        proxy,
        proxied,
        direct,
        schema,
    } = setup;
    drop(proxy);
    tokio::time::sleep(Duration::from_millis(100)).await;
    let append = proxied
        .append(
            &aggregate,
            Append::new(next + 1, pages(next + 1, 1, "refused")),
        )
        .await;
    assert!(
        matches!(append, Err(EventStoreError::Unavailable(_))),
        "an append to an unreachable server gave {append:?}"
    );
    let read = proxied.next_sequence(&aggregate).await;
    assert!(
        matches!(read, Err(EventStoreError::Unavailable(_))),
        "a read from an unreachable server gave {read:?}"
    );
    assert_eq!(
        direct.next_sequence(&aggregate).await.expect("read"),
        next + 1
    );
    drop(proxied);
    drop(direct);
    drop_schema(&schema).await;
}

async fn drop_schema(schema: &str) {
    let (client, connection) = tokio_postgres::connect(&url(), tokio_postgres::NoTls)
        .await
        .expect("connect");
    let connection = tokio::spawn(connection);
    client
        .batch_execute(&format!("DROP SCHEMA IF EXISTS \"{schema}\" CASCADE"))
        .await
        .expect("drop the schema");
    drop(client);
    let _ = connection.await;
}

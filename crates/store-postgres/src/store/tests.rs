//! Tests against a real server (`ANGZARR_TEST_POSTGRES_URL`): migrations, plans, and how
//! failures reach the ports. The conformance suite (`tests/conformance.rs`) covers the
//! contract; the network faults are in `tests/faults.rs`.

use std::str::FromStr;
use std::time::{Duration, Instant};

use angzarr_ports::{
    AggregateId, Append, Domain, EventPage, EventStore, EventStoreError, EventStoreExt,
};
use tokio_postgres::Client;

use super::*;
use crate::sql::Sql;

fn url() -> String {
    std::env::var("ANGZARR_TEST_POSTGRES_URL").unwrap_or_else(|_| {
        panic!(
            "ANGZARR_TEST_POSTGRES_URL is not set: these tests need a PostgreSQL server \
             (`cargo xtask services up postgres`, then `set -a; . target/services/env; set +a`)"
        )
    })
}

/// A schema of its own, dropped when the test ends well.
struct Scratch {
    schema: String,
    admin: Client,
}

impl Scratch {
    async fn new() -> Self {
        let config = tokio_postgres::Config::from_str(&url()).expect("a valid URL");
        Self {
            schema: format!("t_{}", Uuid::new_v4().simple()),
            admin: pool::connect(&config).await.expect("connect as admin"),
        }
    }

    fn config(&self) -> PostgresConfig {
        PostgresConfig::new(url()).with_schema(&self.schema)
    }

    async fn open(&self) -> PostgresStore {
        PostgresStore::open(self.config())
            .await
            .expect("open the store")
    }

    fn sql(&self, template: &str) -> String {
        schema::with_schema(template, &self.schema)
    }

    async fn drop_schema(self) {
        self.admin
            .batch_execute(&self.sql("DROP SCHEMA IF EXISTS {schema} CASCADE"))
            .await
            .expect("drop the test schema");
    }
}

fn aggregate() -> AggregateId {
    AggregateId::new(Domain::new("account").expect("valid"), Uuid::new_v4()).expect("non-nil")
}

fn pages(first: u64, len: u64) -> Vec<EventPage> {
    (first..first + len)
        .map(|sequence| EventPage {
            sequence,
            correlation_id: "c".into(),
            ..EventPage::default()
        })
        .collect()
}

/// Servers that start together on a fresh database all come up, and the schema is made once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stores_opening_a_fresh_schema_at_once_migrate_it_once() {
    let scratch = Scratch::new().await;
    let opens: Vec<_> = (0..8)
        .map(|_| tokio::spawn(PostgresStore::open(scratch.config())))
        .collect();
    let mut stores = Vec::new();
    for open in opens {
        stores.push(open.await.expect("no panic").expect("every open succeeds"));
    }
    let rows = scratch
        .admin
        .query(
            &scratch.sql("SELECT version FROM {schema}.schema_version"),
            &[],
        )
        .await
        .expect("read the version");
    let versions: Vec<i32> = rows.iter().map(|row| row.get(0)).collect();
    assert_eq!(versions, [schema::VERSION]);
    // Every store works on the one schema.
    let aggregate = aggregate();
    for (index, store) in stores.iter().enumerate() {
        let index = index as u64;
        store
            .append(&aggregate, Append::new(index, pages(index, 1)))
            .await
            .expect("append through each store");
    }
    assert_eq!(
        stores[0].next_sequence(&aggregate).await.expect("read"),
        stores.len() as u64
    );
    drop(stores);
    scratch.drop_schema().await;
}

#[tokio::test]
async fn a_newer_schema_is_refused_and_the_current_one_is_left_alone() {
    let scratch = Scratch::new().await;
    drop(scratch.open().await);
    // Reopening at the current version migrates nothing and keeps the data.
    let store = scratch.open().await;
    let aggregate = aggregate();
    store
        .append(&aggregate, Append::new(0, pages(0, 2)))
        .await
        .expect("append");
    drop(store);
    let store = scratch.open().await;
    assert_eq!(store.read_all(&aggregate).await.expect("read"), pages(0, 2));
    drop(store);
    scratch
        .admin
        .execute(
            &scratch.sql("UPDATE {schema}.schema_version SET version = version + 1"),
            &[],
        )
        .await
        .expect("pretend a newer version wrote the schema");
    match PostgresStore::open(scratch.config()).await {
        Err(OpenError::SchemaTooNew { found, supported }) => {
            assert_eq!((found, supported), (schema::VERSION + 1, schema::VERSION));
        }
        other => panic!("a newer schema gave {other:?}"),
    }
    scratch.drop_schema().await;
}

/// A server that cannot be reached, or that never answers, fails the open quickly with the
/// address in the message and never the password.
#[tokio::test]
async fn an_unreachable_or_silent_server_fails_the_open_quickly() {
    // A port nobody listens on: connection refused.
    let closed = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
    let port = closed.local_addr().expect("address").port();
    drop(closed);
    let config = PostgresConfig::new(format!("postgres://u:hunter2@127.0.0.1:{port}/db"));
    let started = Instant::now();
    let error = PostgresStore::open(config)
        .await
        .expect_err("nothing listens");
    assert!(matches!(error, OpenError::Postgres { .. }), "{error}");
    assert!(
        error.to_string().contains(&format!("127.0.0.1:{port}")),
        "{error}"
    );
    assert!(!error.to_string().contains("hunter2"), "{error}");
    assert!(started.elapsed() < Duration::from_secs(5));

    // A port that accepts connections and never answers.
    let silent = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let port = silent.local_addr().expect("address").port();
    let held = tokio::spawn(async move {
        let mut held = Vec::new();
        while let Ok((socket, _)) = silent.accept().await {
            held.push(socket);
        }
    });
    let config = PostgresConfig::new(format!("postgres://u@127.0.0.1:{port}/db"))
        .with_connect_timeout(Duration::from_millis(300))
        .with_operation_timeout(Duration::from_millis(300));
    let started = Instant::now();
    let error = PostgresStore::open(config)
        .await
        .expect_err("nothing answers");
    assert!(
        matches!(
            error,
            OpenError::Postgres { .. } | OpenError::Timeout { .. }
        ),
        "{error}"
    );
    assert!(started.elapsed() < Duration::from_secs(2));
    held.abort();

    // A database that does not exist.
    let mut missing = tokio_postgres::Config::from_str(&url()).expect("a valid URL");
    missing.dbname("angzarr_no_such_database");
    let user = missing.get_user().unwrap_or("postgres").to_owned();
    let host = match missing.get_hosts().first() {
        Some(tokio_postgres::config::Host::Tcp(host)) => host.clone(),
        _ => "127.0.0.1".to_owned(),
    };
    let port = missing.get_ports().first().copied().unwrap_or(5432);
    let config = PostgresConfig::new(format!(
        "postgres://{user}@{host}:{port}/angzarr_no_such_database"
    ));
    let error = PostgresStore::open(config).await.expect_err("no database");
    assert!(matches!(error, OpenError::Postgres { .. }), "{error}");
}

/// A session the server ends in the middle of an append (here, terminated while it waits
/// for a lock) is an unknown outcome: a FATAL may follow a commit. A statement the server
/// cancels with an ERROR was rolled back: `Unavailable`, nothing written. Either way the
/// store goes on working.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_append_ended_by_the_server_is_unknown_and_one_cancelled_is_unavailable() {
    let scratch = Scratch::new().await;
    let application = format!("angzarr_{}", Uuid::new_v4().simple());
    let separator = if url().contains('?') { '&' } else { '?' };
    let config = PostgresConfig::new(format!(
        "{}{separator}application_name={application}",
        url()
    ))
    .with_schema(&scratch.schema)
    .with_pool_size(1);
    let store = Arc::new(PostgresStore::open(config).await.expect("open"));
    let aggregate = aggregate();
    // The pool opens its connection (and prepares, which would wait for the lock too) now.
    assert_eq!(store.next_sequence(&aggregate).await.expect("read"), 0);

    for (stop, expect_unknown) in [("pg_terminate_backend", true), ("pg_cancel_backend", false)] {
        let mut locker =
            pool::connect(&tokio_postgres::Config::from_str(&url()).expect("a valid URL"))
                .await
                .expect("connect");
        let lock = locker.transaction().await.expect("begin");
        lock.batch_execute(&scratch.sql("LOCK TABLE {schema}.events IN EXCLUSIVE MODE"))
            .await
            .expect("lock the events");
        let appending = {
            let (store, aggregate) = (Arc::clone(&store), aggregate.clone());
            tokio::spawn(async move { store.append(&aggregate, Append::new(0, pages(0, 3))).await })
        };
        // Wait until the append waits for the lock, then stop its backend.
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            let stopped: Vec<bool> = scratch
                .admin
                .query(
                    &format!(
                        "SELECT {stop}(pid) FROM pg_stat_activity
                         WHERE application_name = $1 AND wait_event_type = 'Lock'"
                    ),
                    &[&application],
                )
                .await
                .expect("find the append")
                .iter()
                .map(|row| row.get(0))
                .collect();
            if stopped == [true] {
                break;
            }
            assert!(
                Instant::now() < deadline,
                "the append never waited for the lock"
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        let outcome = appending.await.expect("no panic");
        if expect_unknown {
            assert!(
                matches!(outcome, Err(EventStoreError::OutcomeUnknown(_))),
                "{outcome:?}"
            );
        } else {
            assert!(
                matches!(outcome, Err(EventStoreError::Unavailable(_))),
                "{outcome:?}"
            );
        }
        lock.rollback().await.expect("unlock");
        assert_eq!(
            store
                .next_sequence(&aggregate)
                .await
                .expect("the store works"),
            0,
            "{stop}: the append was rolled back"
        );
    }
    store
        .append(&aggregate, Append::new(0, pages(0, 3)))
        .await
        .expect("the store works again");
    drop(store);
    scratch.drop_schema().await;
}

/// Finding a stream's end (to read it, and to check an append's expected sequence) is one
/// backward step in the primary key however long the stream, before and after the table is
/// analyzed, with generic and custom plans. (`max(sequence)` was planned, on a table not yet
/// analyzed, as an aggregate over the whole stream: commands slowed down as streams grew.)
#[tokio::test]
async fn the_end_of_a_stream_is_found_in_one_index_step_however_long_the_stream() {
    let scratch = Scratch::new().await;
    let store = scratch.open().await;
    let aggregate = aggregate();
    let length = 2_000;
    store
        .append(&aggregate, Append::new(0, pages(0, length)))
        .await
        .expect("append");
    let sql = Sql::new(&scratch.schema);
    let key = format!("'account', '{}'", aggregate.root());
    // The appends' arguments make them insert, at the stream's end.
    let arguments = [
        key.clone(),
        format!("{key}, {length}, NULL, NULL, 'c', 'p'"),
        format!("{key}, {length}, NULL, NULL, '{{c}}', '{{p}}'"),
    ];
    for (index, statement) in sql.heads().into_iter().enumerate() {
        scratch
            .admin
            .batch_execute(&format!("PREPARE head_{index} AS {statement}"))
            .await
            .expect("prepare");
    }
    for analyzed in [false, true] {
        if analyzed {
            scratch
                .admin
                .batch_execute(&scratch.sql("ANALYZE {schema}.events"))
                .await
                .expect("analyze");
        }
        for mode in ["force_generic_plan", "force_custom_plan"] {
            for (index, arguments) in arguments.iter().enumerate() {
                let explain = format!(
                    "SET plan_cache_mode = {mode}; BEGIN; \
                     EXPLAIN (ANALYZE, COSTS OFF, TIMING OFF, SUMMARY OFF) \
                     EXECUTE head_{index}({arguments})"
                );
                let plan: Vec<String> = scratch
                    .admin
                    .simple_query(&explain)
                    .await
                    .expect("explain")
                    .into_iter()
                    .filter_map(|message| match message {
                        tokio_postgres::SimpleQueryMessage::Row(row) => {
                            row.get(0).map(str::to_owned)
                        }
                        _ => None,
                    })
                    .collect();
                scratch
                    .admin
                    .batch_execute("ROLLBACK")
                    .await
                    .expect("roll back");
                let plan = plan.join("\n");
                let scanned: Vec<u64> = plan
                    .lines()
                    .filter(|line| line.contains(" Scan "))
                    .filter_map(|line| line.split("actual rows=").nth(1))
                    .filter_map(|rows| rows.split_whitespace().next()?.parse().ok())
                    .collect();
                assert!(
                    !scanned.is_empty() && scanned.iter().all(|rows| *rows <= 1),
                    "statement {index}, {mode}, analyzed: {analyzed}: the scan reads more \
                     than one row\n{plan}"
                );
            }
        }
    }
    drop(store);
    scratch.drop_schema().await;
}

/// All connections busy for the whole acquire timeout: `Unavailable`, nothing sent.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_pool_that_stays_busy_is_unavailable() {
    let scratch = Scratch::new().await;
    let config = scratch
        .config()
        .with_pool_size(1)
        .with_acquire_timeout(Duration::from_millis(200));
    let store = Arc::new(PostgresStore::open(config).await.expect("open"));
    let mut locker = pool::connect(&tokio_postgres::Config::from_str(&url()).expect("URL"))
        .await
        .expect("connect");
    let lock = locker.transaction().await.expect("begin");
    lock.batch_execute(&scratch.sql("LOCK TABLE {schema}.events IN EXCLUSIVE MODE"))
        .await
        .expect("lock the events");
    let aggregate = aggregate();
    let blocked = {
        let (store, aggregate) = (Arc::clone(&store), aggregate.clone());
        tokio::spawn(async move { store.append(&aggregate, Append::new(0, pages(0, 1))).await })
    };
    tokio::time::sleep(Duration::from_millis(100)).await;
    let read = store.next_sequence(&aggregate).await;
    assert!(
        matches!(read, Err(EventStoreError::Unavailable(_))),
        "{read:?}"
    );
    lock.rollback().await.expect("unlock");
    assert_eq!(blocked.await.expect("no panic").expect("appended"), 1);
    drop(store);
    scratch.drop_schema().await;
}

/// Stored bytes that do not decode are `Corrupt`; a table dropped under the store is an
/// internal error, not a transient one.
#[tokio::test]
async fn undecodable_data_is_corrupt_and_a_missing_table_is_internal() {
    let scratch = Scratch::new().await;
    let store = scratch.open().await;
    let aggregate = aggregate();
    store
        .append(&aggregate, Append::new(0, pages(0, 2)))
        .await
        .expect("append");
    scratch
        .admin
        .execute(
            &scratch.sql("UPDATE {schema}.events SET page = '\\xff'::bytea WHERE sequence = 1"),
            &[],
        )
        .await
        .expect("damage an event");
    let read = store.read_all(&aggregate).await;
    assert!(matches!(read, Err(EventStoreError::Corrupt(_))), "{read:?}");
    scratch
        .admin
        .execute(
            &scratch.sql(
                "INSERT INTO {schema}.snapshots (domain, root, sequence, state)
                 VALUES ($1, $2, 0, '\\xff'::bytea)",
            ),
            &[&aggregate.domain().as_str(), &aggregate.root()],
        )
        .await
        .expect("damage a snapshot");
    let snapshot = SnapshotStore::get(&store, &aggregate).await;
    assert!(
        matches!(snapshot, Err(SnapshotStoreError::Corrupt(_))),
        "{snapshot:?}"
    );
    scratch
        .admin
        .batch_execute(&scratch.sql("DROP TABLE {schema}.events"))
        .await
        .expect("drop the events");
    let read = store.next_sequence(&aggregate).await;
    assert!(
        matches!(read, Err(EventStoreError::Internal(_))),
        "{read:?}"
    );
    drop(store);
    scratch.drop_schema().await;
}

/// Every statement that reads can run from an index without sorting, whatever the table's
/// size (sequential scans, bitmap scans and sorts are disabled, so that an empty table does
/// not hide a missing index: the planner uses them anyway when it has nothing else).
#[tokio::test]
async fn every_read_can_use_an_index_without_a_sort() {
    let scratch = Scratch::new().await;
    drop(scratch.open().await);
    scratch
        .admin
        .batch_execute(
            "SET enable_seqscan = off; SET enable_bitmapscan = off; SET enable_sort = off;
             SET plan_cache_mode = force_generic_plan",
        )
        .await
        .expect("settings");
    let sql = Sql::new(&scratch.schema);
    for (index, statement) in sql.reads().into_iter().enumerate() {
        let name = format!("read_{index}");
        scratch
            .admin
            .batch_execute(&format!("PREPARE {name} AS {statement}"))
            .await
            .expect("prepare");
        let types: Vec<String> = scratch
            .admin
            .query_one(
                "SELECT parameter_types::text[] FROM pg_prepared_statements WHERE name = $1",
                &[&name],
            )
            .await
            .expect("look it up")
            .get(0);
        let arguments: Vec<String> = types.iter().map(|kind| format!("NULL::{kind}")).collect();
        let arguments = if arguments.is_empty() {
            String::new()
        } else {
            format!("({})", arguments.join(", "))
        };
        let plan: Vec<String> = scratch
            .admin
            .query(&format!("EXPLAIN EXECUTE {name}{arguments}"), &[])
            .await
            .expect("explain")
            .iter()
            .map(|row| row.get(0))
            .collect();
        let plan = plan.join("\n");
        assert!(
            !plan.contains("Seq Scan") && !plan.contains("Sort"),
            "{statement}\n{plan}"
        );
    }
    scratch.drop_schema().await;
}

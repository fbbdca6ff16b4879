//! Two `angzarr serve` processes over one PostgreSQL database, and over one Redis server,
//! racing on the same aggregates: no gap, no duplicate, every acknowledged command present. And
//! a store that cannot be reached is a clear error at start-up, within seconds.
//!
//! The servers come from `cargo xtask test` (or `cargo xtask services up`), which exports
//! `ANGZARR_TEST_POSTGRES_URL` and `ANGZARR_TEST_REDIS_URL`; without them these tests fail.

mod common;

use std::collections::HashMap;
use std::process::Stdio;
use std::time::{Duration, Instant};

use angzarr_example_bank::{command, deposit, open};
use angzarr_proto::v1::{AggregateQuery, EventPage};
use common::{Server, angzarr};
use uuid::Uuid;

fn required(variable: &str) -> String {
    std::env::var(variable).unwrap_or_else(|_| {
        panic!("{variable} is not set: run `cargo xtask test`, which starts the servers")
    })
}

const ACCOUNTS: usize = 4;
const CLIENTS: usize = 16;
const DEPOSITS: usize = 10;

/// Two servers over the store that `kind` and `url` name, in a namespace of their own.
fn two_servers(kind: &str, url: &str) -> (Server, Server, tempfile::TempDir) {
    let dir = tempfile::tempdir().unwrap();
    let namespace = format!("e2e_{}", Uuid::new_v4().simple());
    let env = [
        ("ANGZARR_STORE_KIND", kind),
        ("ANGZARR_STORE_URL", url),
        ("ANGZARR_STORE_NAMESPACE", namespace.as_str()),
    ];
    let first = Server::start(dir.path(), &env);
    let second = Server::start(dir.path(), &env);
    (first, second, dir)
}

async fn stream(server: &Server, root: Uuid) -> Vec<EventPage> {
    let query = AggregateQuery {
        domain: "account".into(),
        root: root.to_string(),
        ..AggregateQuery::default()
    };
    let mut client = server.query().await;
    client
        .get_event_book(query)
        .await
        .unwrap()
        .into_inner()
        .pages
}

async fn race(servers: [&Server; 2]) {
    let accounts: Vec<Uuid> = (0..ACCOUNTS).map(|_| Uuid::new_v4()).collect();
    let mut gateway = servers[0].gateway().await;
    for root in &accounts {
        gateway
            .execute(command(*root, &open("shared")))
            .await
            .unwrap();
    }
    let mut clients = Vec::new();
    for client in 0..CLIENTS {
        let mut gateway = servers[client % 2].gateway().await;
        let accounts = accounts.clone();
        clients.push(tokio::spawn(async move {
            let mut acknowledged = Vec::new();
            for deposit_number in 0..DEPOSITS {
                let root = accounts[(client + deposit_number) % ACCOUNTS];
                let mut book = command(root, &deposit(1));
                book.retry_on_conflict = true;
                book.request_id = Uuid::new_v4().to_string();
                let response = gateway.execute(book).await.unwrap().into_inner();
                acknowledged.push((root, response.events.unwrap().pages));
            }
            acknowledged
        }));
    }
    let mut acknowledged: HashMap<Uuid, Vec<EventPage>> = HashMap::new();
    for client in clients {
        for (root, pages) in client.await.unwrap() {
            acknowledged.entry(root).or_default().extend(pages);
        }
    }
    for root in accounts {
        // Read through the other server than most writes of the account.
        let stored = stream(servers[1], root).await;
        let sequences: Vec<u64> = stored.iter().map(|page| page.sequence).collect();
        assert_eq!(
            sequences,
            (0..stored.len() as u64).collect::<Vec<_>>(),
            "gap or duplicate"
        );
        let acknowledged = &acknowledged[&root];
        assert_eq!(
            stored.len(),
            1 + acknowledged.len(),
            "one event per acknowledged deposit"
        );
        for page in acknowledged {
            assert_eq!(
                &stored[page.sequence as usize], page,
                "an acknowledged event, as stored"
            );
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn two_servers_over_one_postgres_lose_and_duplicate_nothing() {
    let (first, second, _dir) = two_servers("postgres", &required("ANGZARR_TEST_POSTGRES_URL"));
    race([&first, &second]).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn two_servers_over_one_redis_lose_and_duplicate_nothing() {
    let (first, second, _dir) = two_servers("redis", &required("ANGZARR_TEST_REDIS_URL"));
    race([&first, &second]).await;
}

/// `angzarr serve` over a store nobody listens at: it must exit with an error naming the
/// store within seconds, not hang.
fn refused_at_start(kind: &str, url: &str) {
    let dir = tempfile::tempdir().unwrap();
    let started = Instant::now();
    let output = angzarr()
        .args(["serve", "--listen", "127.0.0.1:0", "--data-dir"])
        .arg(dir.path())
        .env("ANGZARR_STORE_KIND", kind)
        .env("ANGZARR_STORE_URL", url)
        .env("ANGZARR_STORE_CONNECT_TIMEOUT_MS", "2000")
        .stdin(Stdio::null())
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert_eq!(output.status.code(), Some(1), "{stderr}");
    assert!(stderr.contains("cannot open the"), "{stderr}");
    assert!(
        !stderr.contains("hunter2"),
        "the password is masked: {stderr}"
    );
    assert!(
        started.elapsed() < Duration::from_secs(15),
        "took {:?}",
        started.elapsed()
    );
}

#[test]
fn an_unreachable_store_is_a_clear_error_at_start_within_seconds() {
    // Port 1 on loopback: nothing listens, the connection is refused at once.
    refused_at_start("postgres", "postgres://app:hunter2@127.0.0.1:1/angzarr");
    refused_at_start("redis", "redis://:hunter2@127.0.0.1:1");
}

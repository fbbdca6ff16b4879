//! Two `angzarr serve` processes over one store, racing on the same aggregates: no gap, no
//! duplicate, every acknowledged command present; over PostgreSQL, Redis, and (with the
//! binary's features of the same names) DynamoDB, Bigtable and Spanner on their emulators. And
//! a store that cannot be reached, or credentials that cannot be found, is a clear error at
//! start-up, within seconds.
//!
//! The servers come from `cargo xtask test` (or `cargo xtask services up`), which exports
//! `ANGZARR_TEST_POSTGRES_URL`, `ANGZARR_TEST_REDIS_URL`, `ANGZARR_TEST_DYNAMODB_ENDPOINT`,
//! `ANGZARR_TEST_BIGTABLE_EMULATOR_HOST` and `ANGZARR_TEST_SPANNER_EMULATOR_HOST`; without them
//! these tests fail. `cargo xtask test` builds the binary with every store feature.

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

/// Two servers over the store `settings` describe, in a namespace of their own.
fn two_servers(settings: &[(&str, &str)]) -> (Server, Server, tempfile::TempDir) {
    let dir = tempfile::tempdir().unwrap();
    let namespace = format!("e2e_{}", &Uuid::new_v4().simple().to_string()[..12]);
    let mut env = settings.to_vec();
    env.push(("ANGZARR_STORE_NAMESPACE", namespace.as_str()));
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
    let url = required("ANGZARR_TEST_POSTGRES_URL");
    let (first, second, _dir) = two_servers(&[
        ("ANGZARR_STORE_KIND", "postgres"),
        ("ANGZARR_STORE_URL", &url),
    ]);
    race([&first, &second]).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn two_servers_over_one_redis_lose_and_duplicate_nothing() {
    let url = required("ANGZARR_TEST_REDIS_URL");
    let (first, second, _dir) =
        two_servers(&[("ANGZARR_STORE_KIND", "redis"), ("ANGZARR_STORE_URL", &url)]);
    race([&first, &second]).await;
}

/// Dummy credentials for moto, through the AWS SDK's standard chain (the environment).
#[cfg(feature = "dynamodb")]
const AWS_TEST_CREDENTIALS: [(&str, &str); 2] = [
    ("AWS_ACCESS_KEY_ID", "test"),
    ("AWS_SECRET_ACCESS_KEY", "test"),
];

#[cfg(feature = "dynamodb")]
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn two_servers_over_one_dynamodb_lose_and_duplicate_nothing() {
    let endpoint = required("ANGZARR_TEST_DYNAMODB_ENDPOINT");
    let mut settings = vec![
        ("ANGZARR_STORE_KIND", "dynamodb"),
        ("ANGZARR_STORE_ENDPOINT", endpoint.as_str()),
        ("ANGZARR_STORE_REGION", "us-east-1"),
        ("ANGZARR_STORE_CREATE_IF_MISSING", "true"),
    ];
    settings.extend(AWS_TEST_CREDENTIALS);
    let (first, second, _dir) = two_servers(&settings);
    race([&first, &second]).await;
}

#[cfg(feature = "bigtable")]
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn two_servers_over_one_bigtable_lose_and_duplicate_nothing() {
    let endpoint = required("ANGZARR_TEST_BIGTABLE_EMULATOR_HOST");
    let (first, second, _dir) = two_servers(&[
        ("ANGZARR_STORE_KIND", "bigtable"),
        ("ANGZARR_STORE_ENDPOINT", endpoint.as_str()),
        ("ANGZARR_STORE_PROJECT", "angzarr-e2e"),
        ("ANGZARR_STORE_INSTANCE", "angzarr"),
        ("ANGZARR_STORE_CREATE_IF_MISSING", "true"),
    ]);
    race([&first, &second]).await;
}

#[cfg(feature = "spanner")]
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn two_servers_over_one_spanner_lose_and_duplicate_nothing() {
    let endpoint = required("ANGZARR_TEST_SPANNER_EMULATOR_HOST");
    let (first, second, _dir) = two_servers(&[
        ("ANGZARR_STORE_KIND", "spanner"),
        ("ANGZARR_STORE_ENDPOINT", endpoint.as_str()),
        ("ANGZARR_STORE_PROJECT", "angzarr-e2e"),
        ("ANGZARR_STORE_INSTANCE", "angzarr"),
        ("ANGZARR_STORE_DATABASE", "e2e"),
        ("ANGZARR_STORE_CREATE_IF_MISSING", "true"),
    ]);
    race([&first, &second]).await;
}

/// `angzarr serve` over a store nobody listens at: it must exit with an error naming the
/// store within seconds, not hang.
fn refused_at_start(settings: &[(&str, &str)], expected: &str) {
    let dir = tempfile::tempdir().unwrap();
    let started = Instant::now();
    let output = angzarr()
        .args(["serve", "--listen", "127.0.0.1:0", "--data-dir"])
        .arg(dir.path())
        .envs(settings.iter().copied())
        .env("ANGZARR_STORE_CONNECT_TIMEOUT_MS", "2000")
        .env("ANGZARR_STORE_OPERATION_TIMEOUT_MS", "2000")
        .stdin(Stdio::null())
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert_eq!(output.status.code(), Some(1), "{stderr}");
    assert!(stderr.contains("cannot open the"), "{stderr}");
    assert!(
        stderr.contains(expected),
        "expected {expected:?} in: {stderr}"
    );
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
    refused_at_start(
        &[
            ("ANGZARR_STORE_KIND", "postgres"),
            (
                "ANGZARR_STORE_URL",
                "postgres://app:hunter2@127.0.0.1:1/angzarr",
            ),
        ],
        "PostgreSQL",
    );
    refused_at_start(
        &[
            ("ANGZARR_STORE_KIND", "redis"),
            ("ANGZARR_STORE_URL", "redis://:hunter2@127.0.0.1:1"),
        ],
        "Redis",
    );
}

#[cfg(feature = "dynamodb")]
#[test]
fn dynamodb_unreachable_or_without_credentials_is_a_clear_error_at_start_within_seconds() {
    let mut unreachable = vec![
        ("ANGZARR_STORE_KIND", "dynamodb"),
        ("ANGZARR_STORE_ENDPOINT", "http://127.0.0.1:1"),
        ("ANGZARR_STORE_REGION", "us-east-1"),
    ];
    unreachable.extend(AWS_TEST_CREDENTIALS);
    refused_at_start(&unreachable, "DynamoDB");
    // The real service, with no credentials anywhere in the chain (no variables, no profile
    // files, no instance metadata): refused before anything is sent.
    let endpoint = required("ANGZARR_TEST_DYNAMODB_ENDPOINT");
    refused_at_start(
        &[
            ("ANGZARR_STORE_KIND", "dynamodb"),
            ("ANGZARR_STORE_ENDPOINT", endpoint.as_str()),
            ("ANGZARR_STORE_REGION", "us-east-1"),
            ("AWS_ACCESS_KEY_ID", ""),
            ("AWS_SECRET_ACCESS_KEY", ""),
            ("AWS_PROFILE", "angzarr-no-such-profile"),
            ("AWS_CONFIG_FILE", "/nonexistent/angzarr/config"),
            (
                "AWS_SHARED_CREDENTIALS_FILE",
                "/nonexistent/angzarr/credentials",
            ),
            ("AWS_EC2_METADATA_DISABLED", "true"),
        ],
        "credentials",
    );
}

#[cfg(feature = "bigtable")]
#[test]
fn bigtable_unreachable_is_a_clear_error_at_start_within_seconds() {
    refused_at_start(
        &[
            ("ANGZARR_STORE_KIND", "bigtable"),
            ("ANGZARR_STORE_ENDPOINT", "127.0.0.1:1"),
            ("ANGZARR_STORE_PROJECT", "angzarr-e2e"),
            ("ANGZARR_STORE_INSTANCE", "angzarr"),
        ],
        "Bigtable",
    );
}

#[cfg(feature = "spanner")]
#[test]
fn spanner_unreachable_is_a_clear_error_at_start_within_seconds() {
    refused_at_start(
        &[
            ("ANGZARR_STORE_KIND", "spanner"),
            ("ANGZARR_STORE_ENDPOINT", "127.0.0.1:1"),
            ("ANGZARR_STORE_PROJECT", "angzarr-e2e"),
            ("ANGZARR_STORE_INSTANCE", "angzarr"),
            ("ANGZARR_STORE_DATABASE", "e2e"),
        ],
        "Spanner",
    );
}

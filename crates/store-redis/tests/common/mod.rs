//! What the Redis store's test files share: the servers' addresses, and removing a namespace.

#![allow(dead_code, reason = "each test file uses a part")]

/// The value of `name`; a missing one fails the test, saying how to start the servers.
pub(crate) fn variable(name: &str) -> String {
    std::env::var(name).unwrap_or_else(|_| {
        panic!(
            "{name} is not set: start the servers with `cargo xtask services up redis \
             redis-cluster` and load target/services/env (or run `cargo xtask test`)"
        )
    })
}

/// The single server's URL.
pub(crate) fn single_url() -> String {
    variable("ANGZARR_TEST_REDIS_URL")
}

/// The URL of every master of the test cluster.
pub(crate) fn cluster_urls() -> Vec<String> {
    variable("ANGZARR_TEST_REDIS_CLUSTER_URLS")
        .split(',')
        .map(|url| url.trim().to_owned())
        .filter(|url| !url.is_empty())
        .collect()
}

/// The `host:port` of a `redis://host:port` URL without credentials.
pub(crate) fn address(url: &str) -> String {
    url.trim_start_matches("redis://")
        .trim_end_matches('/')
        .to_owned()
}

/// Removes every key of `namespace` (the store's key prefix) from the servers at `urls`:
/// they all start with `{namespace`. Tests only: it scans the whole keyspace of each node.
pub(crate) async fn cleanup(urls: &[String], namespace: &str) {
    for url in urls {
        let client = redis::Client::open(url.as_str()).expect("a Redis URL");
        let mut connection = client
            .get_multiplexed_async_connection()
            .await
            .expect("connect for cleanup");
        let mut cursor = 0u64;
        loop {
            let (next, keys): (u64, Vec<Vec<u8>>) = redis::cmd("SCAN")
                .arg(cursor)
                .arg("MATCH")
                .arg(format!("{{{namespace}*"))
                .arg("COUNT")
                .arg(1000)
                .query_async(&mut connection)
                .await
                .expect("scan a namespace");
            if !keys.is_empty() {
                // One key per command: in a cluster, keys of several slots cannot meet.
                let mut unlink = redis::pipe();
                for key in &keys {
                    unlink.cmd("UNLINK").arg(key).ignore();
                }
                let () = unlink
                    .query_async(&mut connection)
                    .await
                    .expect("unlink a namespace's keys");
            }
            cursor = next;
            if cursor == 0 {
                break;
            }
        }
    }
}

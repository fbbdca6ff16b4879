//! What the DynamoDB store's test files share: the emulator's endpoint and a configuration
//! for it.

#![allow(dead_code, reason = "each test file uses a part")]

use std::time::Duration;

use angzarr_store_dynamodb::DynamoDbConfig;

/// The tables of a namespace: one pair per namespace, since moto copies a whole table for
/// every transaction (small tables keep it fast), and deleting them cleans a case up.
pub(crate) fn tables(namespace: &str) -> (String, String) {
    (format!("{namespace}_events"), format!("{namespace}_index"))
}

/// The emulator's endpoint; a missing one fails the test, saying how to start it.
pub(crate) fn endpoint() -> String {
    std::env::var("ANGZARR_TEST_DYNAMODB_ENDPOINT").unwrap_or_else(|_| {
        panic!(
            "ANGZARR_TEST_DYNAMODB_ENDPOINT is not set: start the emulator with `cargo xtask \
             services up dynamodb` and load target/services/env (or run `cargo xtask test`)"
        )
    })
}

/// A configuration for `endpoint` and the tables of `namespace`, with the emulator's dummy
/// credentials.
pub(crate) fn config(endpoint: &str, namespace: &str) -> DynamoDbConfig {
    let (events, index) = tables(namespace);
    DynamoDbConfig::new()
        .with_endpoint(endpoint)
        .with_region("us-east-1")
        .with_static_credentials("test", "test")
        .with_tables(events, index)
        .with_namespace("test")
        // moto measures a binary attribute by its base64 text, a third over its size: the
        // default (399 KiB, right for DynamoDB) would be refused by it.
        .with_max_snapshot_bytes(256 * 1024)
        // moto keeps every stream record, with both images, and copies them with the table
        // in every transaction.
        .with_create_with_stream(false)
        .with_create_if_missing(true)
        .with_connect_timeout(Duration::from_secs(2))
        .with_operation_timeout(Duration::from_secs(10))
}

/// A raw client of the emulator, to set up or clean up what the store would not.
pub(crate) fn raw_client(endpoint: &str) -> aws_sdk_dynamodb::Client {
    let config = aws_sdk_dynamodb::Config::builder()
        .behavior_version(aws_sdk_dynamodb::config::BehaviorVersion::latest())
        .endpoint_url(endpoint)
        .region(aws_sdk_dynamodb::config::Region::new("us-east-1"))
        .credentials_provider(aws_sdk_dynamodb::config::Credentials::new(
            "test", "test", None, None, "test",
        ))
        .build();
    aws_sdk_dynamodb::Client::from_conf(config)
}

/// Deletes the tables of `namespace`.
pub(crate) async fn cleanup(endpoint: &str, namespace: &str) {
    let client = raw_client(endpoint);
    let (events, index) = tables(namespace);
    for table in [events, index] {
        let _ = client.delete_table().table_name(table).send().await;
    }
}

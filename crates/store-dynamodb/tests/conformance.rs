//! The conformance suite against a DynamoDB emulator (`ANGZARR_TEST_DYNAMODB_ENDPOINT`,
//! started by `cargo xtask services up dynamodb`). Each namespace gets a pair of tables
//! (moto copies a whole table per transaction: small tables keep it fast), deleted after the
//! case; reopening is a new client. moto must serve one request at a time, as xtask's
//! `moto_serialized.py` does: its transactions are not atomic under concurrency (see the
//! README). A variable that is not set fails the tests: a backend that is not tested is not
//! skipped silently.

mod common;

use angzarr_conformance::Harness;
use angzarr_ports::async_trait;
use angzarr_store_dynamodb::DynamoDbStore;

struct DynamoDb {
    endpoint: String,
}

#[async_trait]
impl Harness for DynamoDb {
    type Store = DynamoDbStore;

    async fn open(&self, namespace: &str) -> DynamoDbStore {
        DynamoDbStore::open(common::config(&self.endpoint, namespace))
            .await
            .expect("open the DynamoDB store")
    }

    fn persistent(&self) -> bool {
        true
    }

    async fn cleanup(&self, namespace: &str) {
        common::cleanup(&self.endpoint, namespace).await;
    }
}

angzarr_conformance::store_suite!(DynamoDb {
    endpoint: common::endpoint()
});

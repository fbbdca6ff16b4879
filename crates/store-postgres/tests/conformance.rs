//! The conformance suite against a real PostgreSQL server: one schema per namespace (created
//! by the store when it opens, dropped by `cleanup`), reopened with a new pool to check
//! persistence, and opened twice at once for two instances, as two servers would.
//!
//! The server comes from `ANGZARR_TEST_POSTGRES_URL` (`cargo xtask services up postgres`
//! starts one and writes the variable to `target/services/env`).

use angzarr_conformance::Harness;
use angzarr_ports::async_trait;
use angzarr_store_postgres::{PostgresConfig, PostgresStore};

struct Postgres {
    url: String,
}

impl Postgres {
    fn new() -> Self {
        let url = std::env::var("ANGZARR_TEST_POSTGRES_URL").unwrap_or_else(|_| {
            panic!(
                "ANGZARR_TEST_POSTGRES_URL is not set: the PostgreSQL suite needs a server. \
                 Run `cargo xtask test --backend postgres`, or `cargo xtask services up postgres` \
                 and `set -a; . target/services/env; set +a` before `cargo test`."
            )
        });
        Self { url }
    }

    fn schema(namespace: &str) -> String {
        format!("ns_{namespace}")
    }
}

#[async_trait]
impl Harness for Postgres {
    type Store = PostgresStore;

    async fn open(&self, namespace: &str) -> PostgresStore {
        let config = PostgresConfig::new(&self.url)
            .with_schema(Self::schema(namespace))
            .with_pool_size(8);
        PostgresStore::open(config)
            .await
            .expect("open the PostgreSQL store")
    }

    fn persistent(&self) -> bool {
        true
    }

    async fn cleanup(&self, namespace: &str) {
        let (client, connection) = tokio_postgres::connect(&self.url, tokio_postgres::NoTls)
            .await
            .expect("connect to drop the namespace");
        let connection = tokio::spawn(connection);
        let schema = Self::schema(namespace);
        client
            .batch_execute(&format!("DROP SCHEMA IF EXISTS \"{schema}\" CASCADE"))
            .await
            .expect("drop the namespace's schema");
        drop(client);
        let _ = connection.await;
    }
}

angzarr_conformance::store_suite!(Postgres::new());

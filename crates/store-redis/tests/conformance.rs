//! The conformance suite against real Redis servers, twice: a single server
//! (`ANGZARR_TEST_REDIS_URL`) and a three-master Redis Cluster
//! (`ANGZARR_TEST_REDIS_CLUSTER_URLS`, the masters' URLs separated by commas), both started by
//! `cargo xtask services up redis redis-cluster`. Each namespace is a key prefix; reopening is
//! a new client over the same server. A variable that is not set fails the tests: a backend
//! that is not tested is not skipped silently.

mod common;

use angzarr_conformance::Harness;
use angzarr_ports::async_trait;
use angzarr_store_redis::{RedisConfig, RedisStore};

/// Small declared limits, so that the suite's at-the-limit cases stay small; the default
/// limits (Redis's own, 512 MiB) go through the same checks.
const MAX_EVENT_BYTES: usize = 256 * 1024;
const MAX_SNAPSHOT_BYTES: usize = 1024 * 1024;

struct Redis {
    cluster: bool,
    /// The server, or every master of the cluster (cleanup scans each).
    urls: Vec<String>,
}

impl Redis {
    fn single() -> Self {
        Self {
            cluster: false,
            urls: vec![common::single_url()],
        }
    }

    fn cluster() -> Self {
        Self {
            cluster: true,
            urls: common::cluster_urls(),
        }
    }

    fn config(&self, namespace: &str) -> RedisConfig {
        let config = if self.cluster {
            RedisConfig::cluster(self.urls.clone())
        } else {
            RedisConfig::single(self.urls[0].clone())
        };
        config
            .with_key_prefix(namespace)
            .with_max_event_bytes(MAX_EVENT_BYTES)
            .with_max_snapshot_bytes(MAX_SNAPSHOT_BYTES)
    }
}

#[async_trait]
impl Harness for Redis {
    type Store = RedisStore;

    async fn open(&self, namespace: &str) -> RedisStore {
        RedisStore::open(self.config(namespace))
            .await
            .expect("open the Redis store")
    }

    fn persistent(&self) -> bool {
        true
    }

    async fn cleanup(&self, namespace: &str) {
        common::cleanup(&self.urls, namespace).await;
    }
}

angzarr_conformance::store_suite!(single, Redis::single());
angzarr_conformance::store_suite!(cluster, Redis::cluster());

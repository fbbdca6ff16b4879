//! How to reach the Redis server or cluster of a [`RedisStore`](crate::RedisStore).

use std::fmt;
use std::time::Duration;

use crate::error::OpenError;

/// Where the data lives: one server (with or without replicas), or a Redis Cluster.
#[derive(Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum Topology {
    /// One Redis server (a primary; MemoryDB and Memorystore in non-cluster mode, a local
    /// `redis-server`), at a `redis://` or `rediss://` URL such as
    /// `redis://:password@127.0.0.1:6379/0`.
    Single {
        /// The server's URL.
        url: String,
    },
    /// A Redis Cluster, discovered from any of these nodes' URLs; the client follows the
    /// cluster's slot map and its `MOVED`/`ASK` redirections.
    Cluster {
        /// URLs of some of the cluster's nodes (one is enough; more survive a node being down
        /// at start).
        urls: Vec<String>,
    },
}

impl fmt::Debug for Topology {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Single { url } => f.debug_struct("Single").field("url", &masked(url)).finish(),
            Self::Cluster { urls } => f
                .debug_struct("Cluster")
                .field(
                    "urls",
                    &urls.iter().map(|url| masked(url)).collect::<Vec<_>>(),
                )
                .finish(),
        }
    }
}

/// How to open a [`RedisStore`](crate::RedisStore).
///
/// ```
/// use std::time::Duration;
/// use angzarr_store_redis::RedisConfig;
///
/// let config = RedisConfig::single("redis://:secret@127.0.0.1:6379")
///     .with_key_prefix("bank")
///     .with_response_timeout(Duration::from_secs(2));
/// // The password never shows in logs.
/// assert!(!format!("{config:?}").contains("secret"));
/// let cluster = RedisConfig::cluster(["redis://10.0.0.1:6379", "redis://10.0.0.2:6379"]);
/// assert_eq!(cluster.key_prefix, "angzarr");
/// ```
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct RedisConfig {
    /// The server or cluster.
    pub topology: Topology,
    /// What every key starts with (inside its hash tag): several stores can share one server
    /// or cluster under different prefixes. 1 to 64 characters of `[A-Za-z0-9_.-]`.
    /// Default: [`RedisConfig::DEFAULT_KEY_PREFIX`].
    pub key_prefix: String,
    /// How long connecting to a node may take. Default:
    /// [`RedisConfig::DEFAULT_CONNECTION_TIMEOUT`].
    pub connection_timeout: Duration,
    /// How long a reply may take. An append whose reply does not come in time fails with
    /// `OutcomeUnknown` (it may still be applied). Default:
    /// [`RedisConfig::DEFAULT_RESPONSE_TIMEOUT`].
    pub response_timeout: Duration,
    /// How many times the cluster client re-sends a request after a redirection, a
    /// `TRYAGAIN`/`CLUSTERDOWN` reply or a lost connection (ignored for a single server, whose
    /// requests are never re-sent). Since an earlier copy may have run, an append that fails in
    /// a cluster is `OutcomeUnknown` whatever the last error, unless the append script itself
    /// refused it. Default: [`RedisConfig::DEFAULT_CLUSTER_RETRIES`].
    pub cluster_retries: u32,
    /// Where to connect to cluster nodes that announce an address this process cannot reach
    /// (behind NAT or a port forward, or announced by IP while their TLS certificates name
    /// hosts): `(announced, reachable)` pairs of `host:port`. Empty by default.
    pub cluster_address_map: Vec<(String, String)>,
    /// The largest encoded event accepted, declared in the store's capabilities. Default:
    /// [`RedisConfig::DEFAULT_MAX_EVENT_BYTES`], what a Redis server accepts in one value.
    pub max_event_bytes: usize,
    /// The largest encoded snapshot accepted. Default:
    /// [`RedisConfig::DEFAULT_MAX_SNAPSHOT_BYTES`], Redis's largest string.
    pub max_snapshot_bytes: usize,
}

impl RedisConfig {
    /// The default [`RedisConfig::key_prefix`].
    pub const DEFAULT_KEY_PREFIX: &str = "angzarr";
    /// The longest [`RedisConfig::key_prefix`].
    pub const MAX_KEY_PREFIX_LEN: usize = 64;
    /// The default [`RedisConfig::connection_timeout`].
    pub const DEFAULT_CONNECTION_TIMEOUT: Duration = Duration::from_secs(2);
    /// The default [`RedisConfig::response_timeout`]: generous, since a reply that times out
    /// leaves an append's outcome unknown.
    pub const DEFAULT_RESPONSE_TIMEOUT: Duration = Duration::from_secs(10);
    /// The default [`RedisConfig::cluster_retries`].
    pub const DEFAULT_CLUSTER_RETRIES: u32 = 16;
    /// The default [`RedisConfig::max_snapshot_bytes`]: 512 MiB, Redis's largest string (and
    /// its default `proto-max-bulk-len`, the largest value a request may carry).
    pub const DEFAULT_MAX_SNAPSHOT_BYTES: usize = 512 * 1024 * 1024;
    /// The default [`RedisConfig::max_event_bytes`]: 512 MiB less the 16 bytes stored before
    /// each event in its sorted-set member.
    pub const DEFAULT_MAX_EVENT_BYTES: usize =
        Self::DEFAULT_MAX_SNAPSHOT_BYTES - crate::keys::EVENT_HEADER_LEN;

    /// One server at `url`, with the default settings.
    pub fn single(url: impl Into<String>) -> Self {
        Self::new(Topology::Single { url: url.into() })
    }

    /// A Redis Cluster reached through `urls`, with the default settings.
    pub fn cluster<I: IntoIterator<Item = S>, S: Into<String>>(urls: I) -> Self {
        Self::new(Topology::Cluster {
            urls: urls.into_iter().map(Into::into).collect(),
        })
    }

    fn new(topology: Topology) -> Self {
        Self {
            topology,
            key_prefix: Self::DEFAULT_KEY_PREFIX.to_owned(),
            connection_timeout: Self::DEFAULT_CONNECTION_TIMEOUT,
            response_timeout: Self::DEFAULT_RESPONSE_TIMEOUT,
            cluster_retries: Self::DEFAULT_CLUSTER_RETRIES,
            cluster_address_map: Vec::new(),
            max_event_bytes: Self::DEFAULT_MAX_EVENT_BYTES,
            max_snapshot_bytes: Self::DEFAULT_MAX_SNAPSHOT_BYTES,
        }
    }

    /// Sets [`Self::key_prefix`].
    pub fn with_key_prefix(mut self, key_prefix: impl Into<String>) -> Self {
        self.key_prefix = key_prefix.into();
        self
    }

    /// Sets [`Self::connection_timeout`].
    pub fn with_connection_timeout(mut self, timeout: Duration) -> Self {
        self.connection_timeout = timeout;
        self
    }

    /// Sets [`Self::response_timeout`].
    pub fn with_response_timeout(mut self, timeout: Duration) -> Self {
        self.response_timeout = timeout;
        self
    }

    /// Sets [`Self::cluster_retries`].
    pub fn with_cluster_retries(mut self, retries: u32) -> Self {
        self.cluster_retries = retries;
        self
    }

    /// Adds to [`Self::cluster_address_map`]: connect to `reachable` for the node that
    /// announces itself as `announced` (both `host:port`).
    pub fn with_cluster_address(
        mut self,
        announced: impl Into<String>,
        reachable: impl Into<String>,
    ) -> Self {
        self.cluster_address_map
            .push((announced.into(), reachable.into()));
        self
    }

    /// Sets [`Self::max_event_bytes`].
    pub fn with_max_event_bytes(mut self, bytes: usize) -> Self {
        self.max_event_bytes = bytes;
        self
    }

    /// Sets [`Self::max_snapshot_bytes`].
    pub fn with_max_snapshot_bytes(mut self, bytes: usize) -> Self {
        self.max_snapshot_bytes = bytes;
        self
    }

    /// Refuses settings that cannot work.
    pub(crate) fn validate(&self) -> Result<(), OpenError> {
        let invalid = |message: String| Err(OpenError::InvalidConfig(message));
        if !crate::keys::valid_prefix(&self.key_prefix) {
            return invalid(format!(
                "key prefix {:?}: use 1 to {} characters of [A-Za-z0-9_.-]",
                self.key_prefix,
                Self::MAX_KEY_PREFIX_LEN
            ));
        }
        if let Topology::Cluster { urls } = &self.topology
            && urls.is_empty()
        {
            return invalid("a cluster needs at least one node URL".into());
        }
        for address in self.cluster_address_map.iter().flat_map(|(a, b)| [a, b]) {
            if address.parse::<redis::cluster::NodeAddress>().is_err() {
                return invalid(format!("{address:?} is not a host:port address"));
            }
        }
        if self.connection_timeout.is_zero() || self.response_timeout.is_zero() {
            return invalid("timeouts must be longer than zero".into());
        }
        if self.max_event_bytes > Self::DEFAULT_MAX_EVENT_BYTES
            || self.max_snapshot_bytes > Self::DEFAULT_MAX_SNAPSHOT_BYTES
        {
            return invalid(format!(
                "Redis holds at most {} bytes of event and {} bytes of snapshot",
                Self::DEFAULT_MAX_EVENT_BYTES,
                Self::DEFAULT_MAX_SNAPSHOT_BYTES
            ));
        }
        Ok(())
    }
}

/// `url` with the password of its user information replaced by `***`.
pub(crate) fn masked(url: &str) -> String {
    let Some((scheme, rest)) = url.split_once("://") else {
        return url.to_owned();
    };
    let authority_end = rest.find(['/', '?', '#']).unwrap_or(rest.len());
    let Some(at) = rest[..authority_end].rfind('@') else {
        return url.to_owned();
    };
    let user = match rest[..at].split_once(':') {
        Some((user, _password)) => format!("{user}:***"),
        // `redis://secret@host`: some clients read a lone user part as the password.
        None => "***".to_owned(),
    };
    format!("{scheme}://{user}{}", &rest[at..])
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn passwords_are_masked() {
        for (url, shown) in [
            ("redis://127.0.0.1:6379", "redis://127.0.0.1:6379"),
            ("redis://:pw@host:1/0", "redis://:***@host:1/0"),
            ("rediss://user:p@ss:w@host", "rediss://user:***@host"),
            ("redis://secret@host", "redis://***@host"),
            ("redis://host/0?x=a@b", "redis://host/0?x=a@b"),
            ("not a url", "not a url"),
        ] {
            assert_eq!(masked(url), shown);
        }
        let config = RedisConfig::cluster(["redis://:one@a", "redis://:two@b"]);
        let shown = format!("{config:?}");
        assert!(!shown.contains("one") && !shown.contains("two"), "{shown}");
    }

    #[test]
    fn unusable_settings_are_refused() {
        let good = RedisConfig::single("redis://h");
        assert!(good.validate().is_ok());
        for bad in [
            good.clone().with_key_prefix(""),
            good.clone().with_key_prefix("a{b}"),
            good.clone().with_key_prefix("a:b"),
            good.clone().with_key_prefix("x".repeat(65)),
            good.clone().with_response_timeout(Duration::ZERO),
            good.clone().with_max_snapshot_bytes(usize::MAX),
            good.clone().with_cluster_address("127.0.0.1:1", "nowhere"),
            RedisConfig::cluster(Vec::<String>::new()),
        ] {
            assert!(bad.validate().is_err(), "{bad:?} was accepted");
        }
    }
}

//! Builds the configured store and client logic and wires them into the core.

use std::sync::Arc;

use angzarr_core::Gateway;
use angzarr_ports::{Domain, EventStore, SnapshotStore};
use angzarr_proto::prost::Message;
use angzarr_proto::prost_types::FileDescriptorSet;
#[cfg(feature = "bigtable")]
use angzarr_store_bigtable::{BigtableConfig, BigtableStore};
#[cfg(feature = "dynamodb")]
use angzarr_store_dynamodb::{DynamoDbConfig, DynamoDbStore};
use angzarr_store_memory::MemoryStore;
#[cfg(feature = "postgres")]
use angzarr_store_postgres::{PostgresConfig, PostgresStore};
#[cfg(feature = "redis")]
use angzarr_store_redis::{RedisConfig, RedisStore};
#[cfg(feature = "spanner")]
use angzarr_store_spanner::{Endpoint as SpannerEndpoint, SpannerConfig, SpannerStore};
#[cfg(feature = "sqlite")]
use angzarr_store_sqlite::{SqliteConfig, SqliteStore, Synchronous};
use anyhow::Context;
use anyhow::bail;

use crate::config::{self, Config, StoreKind};

/// The store the server runs on, kept so that it can be closed cleanly.
pub(crate) enum OpenedStore {
    #[cfg(feature = "sqlite")]
    Sqlite(Arc<SqliteStore>),
    #[cfg(feature = "postgres")]
    Postgres(Arc<PostgresStore>, String),
    #[cfg(feature = "redis")]
    Redis(Arc<RedisStore>, String),
    #[cfg(feature = "dynamodb")]
    Dynamodb(Arc<DynamoDbStore>, String),
    #[cfg(feature = "bigtable")]
    Bigtable(Arc<BigtableStore>, String),
    #[cfg(feature = "spanner")]
    Spanner(Arc<SpannerStore>, String),
    Memory(Arc<MemoryStore>),
}

impl OpenedStore {
    pub(crate) async fn open(config: &config::Store) -> anyhow::Result<Self> {
        match config.kind {
            StoreKind::Memory => Ok(Self::Memory(Arc::new(MemoryStore::new()))),
            #[cfg(not(feature = "sqlite"))]
            StoreKind::Sqlite => {
                bail!("this build has no SQLite store: rebuild with `--features sqlite`")
            }
            #[cfg(feature = "sqlite")]
            StoreKind::Sqlite => {
                let dir = &config.data_dir;
                std::fs::create_dir_all(dir).with_context(|| {
                    format!("cannot create the data directory {}", dir.display())
                })?;
                let synchronous = match config.synchronous {
                    config::Synchronous::Full => Synchronous::Full,
                    config::Synchronous::Normal => Synchronous::Normal,
                };
                let sqlite = SqliteConfig::in_dir(dir).with_synchronous(synchronous);
                let path = sqlite.path.clone();
                let store = tokio::task::spawn_blocking(move || SqliteStore::open(sqlite))
                    .await
                    .context("opening the SQLite store panicked")?
                    .with_context(|| format!("cannot open the SQLite store {}", path.display()))?;
                Ok(Self::Sqlite(Arc::new(store)))
            }
            #[cfg(not(feature = "postgres"))]
            StoreKind::Postgres => {
                bail!("this build has no PostgreSQL store: rebuild with `--features postgres`")
            }
            #[cfg(feature = "postgres")]
            StoreKind::Postgres => {
                let postgres = PostgresConfig::new(config.url.as_str())
                    .with_schema(config.namespace.as_str())
                    .with_pool_size(config.pool_size)
                    .with_connect_timeout(config.connect_timeout())
                    .with_operation_timeout(config.operation_timeout());
                let described = format!("PostgreSQL at {}", postgres.redacted_url());
                // Opening connects and migrates: bounded, so a wrong host or password is an
                // error within seconds, never a hang.
                let store = PostgresStore::open(postgres)
                    .await
                    .with_context(|| format!("cannot open the {described}"))?;
                Ok(Self::Postgres(Arc::new(store), described))
            }
            #[cfg(not(feature = "dynamodb"))]
            StoreKind::Dynamodb => {
                bail!("this build has no DynamoDB store: rebuild with `--features dynamodb`")
            }
            #[cfg(not(feature = "bigtable"))]
            StoreKind::Bigtable => {
                bail!("this build has no Bigtable store: rebuild with `--features bigtable`")
            }
            #[cfg(not(feature = "spanner"))]
            StoreKind::Spanner => {
                bail!("this build has no Spanner store: rebuild with `--features spanner`")
            }
            #[cfg(feature = "dynamodb")]
            StoreKind::Dynamodb => {
                let mut dynamodb = DynamoDbConfig::new()
                    .with_tables(
                        format!("{}_events", config.table),
                        format!("{}_index", config.table),
                    )
                    .with_namespace(config.namespace.as_str())
                    .with_create_if_missing(config.create_if_missing)
                    .with_connect_timeout(config.connect_timeout())
                    .with_operation_timeout(config.operation_timeout());
                if !config.endpoint.is_empty() {
                    dynamodb = dynamodb.with_endpoint(config.endpoint.as_str());
                }
                if !config.region.is_empty() {
                    dynamodb = dynamodb.with_region(config.region.as_str());
                }
                let described = format!(
                    "DynamoDB tables {}, {} at {}",
                    dynamodb.events_table,
                    dynamodb.index_table,
                    dynamodb.endpoint.as_deref().unwrap_or("AWS")
                );
                let store = DynamoDbStore::open(dynamodb)
                    .await
                    .with_context(|| format!("cannot open the {described}"))?;
                Ok(Self::Dynamodb(Arc::new(store), described))
            }
            #[cfg(feature = "bigtable")]
            StoreKind::Bigtable => {
                let mut bigtable = BigtableConfig::new(
                    config.project.as_str(),
                    config.instance.as_str(),
                    config.table.as_str(),
                )
                .with_namespace(config.namespace.as_str())
                .with_create_if_missing(config.create_if_missing)
                .with_connect_timeout(config.connect_timeout())
                .with_operation_timeout(config.operation_timeout());
                if !config.endpoint.is_empty() {
                    bigtable = bigtable.with_endpoint(config.endpoint.as_str());
                }
                let described = format!(
                    "Bigtable table {} of projects/{}/instances/{} at {}",
                    bigtable.table,
                    bigtable.project,
                    bigtable.instance,
                    bigtable.endpoint.as_deref().unwrap_or("Google Cloud")
                );
                let store = BigtableStore::open(bigtable)
                    .await
                    .with_context(|| format!("cannot open the {described}"))?;
                Ok(Self::Bigtable(Arc::new(store), described))
            }
            #[cfg(feature = "spanner")]
            StoreKind::Spanner => {
                // Like Google's own clients: the emulator's variable when nothing is configured.
                let emulator = std::env::var("SPANNER_EMULATOR_HOST").unwrap_or_default();
                let endpoint = match (config.endpoint.as_str(), emulator.as_str()) {
                    ("", "") => SpannerEndpoint::Cloud,
                    ("", emulator) => SpannerEndpoint::Emulator(emulator.to_owned()),
                    (endpoint, _) => match endpoint.strip_prefix("https://") {
                        Some(tls) => SpannerEndpoint::Custom(tls.to_owned()),
                        None => SpannerEndpoint::Emulator(endpoint.to_owned()),
                    },
                };
                let spanner = SpannerConfig::new(
                    config.project.as_str(),
                    config.instance.as_str(),
                    config.database.as_str(),
                )
                .with_endpoint(endpoint)
                .with_namespace(config.namespace.as_str())
                .with_create_if_missing(config.create_if_missing)
                .with_connect_timeout(config.connect_timeout())
                .with_operation_timeout(config.operation_timeout());
                let described = format!(
                    "Spanner database projects/{}/instances/{}/databases/{} ({:?})",
                    spanner.project, spanner.instance, spanner.database, spanner.endpoint
                );
                let store = SpannerStore::open(spanner)
                    .await
                    .with_context(|| format!("cannot open the {described}"))?;
                Ok(Self::Spanner(Arc::new(store), described))
            }
            #[cfg(not(feature = "redis"))]
            StoreKind::Redis => {
                bail!("this build has no Redis store: rebuild with `--features redis`")
            }
            #[cfg(feature = "redis")]
            StoreKind::Redis => {
                let urls: Vec<&str> = config.url.split(',').map(str::trim).collect();
                let redis = if config.cluster {
                    RedisConfig::cluster(urls)
                } else if let [url] = urls.as_slice() {
                    RedisConfig::single(*url)
                } else {
                    bail!(
                        "store.url holds several URLs: set store.cluster = true for a Redis Cluster"
                    )
                };
                let redis = redis
                    .with_key_prefix(config.namespace.as_str())
                    .with_connection_timeout(config.connect_timeout())
                    .with_response_timeout(config.operation_timeout());
                let described = format!("Redis {:?}", redis.topology);
                let store = RedisStore::open(redis)
                    .await
                    .with_context(|| format!("cannot open the {described}"))?;
                Ok(Self::Redis(Arc::new(store), described))
            }
        }
    }

    pub(crate) fn describe(&self) -> String {
        match self {
            #[cfg(feature = "sqlite")]
            Self::Sqlite(store) => format!("SQLite at {}", store.path().display()),
            #[cfg(feature = "postgres")]
            Self::Postgres(_, described) => described.clone(),
            #[cfg(feature = "redis")]
            Self::Redis(_, described) => described.clone(),
            #[cfg(feature = "dynamodb")]
            Self::Dynamodb(_, described) => described.clone(),
            #[cfg(feature = "bigtable")]
            Self::Bigtable(_, described) => described.clone(),
            #[cfg(feature = "spanner")]
            Self::Spanner(_, described) => described.clone(),
            Self::Memory(_) => "memory (nothing survives a restart)".to_owned(),
        }
    }

    pub(crate) fn event_store(&self) -> Arc<dyn EventStore> {
        match self {
            #[cfg(feature = "sqlite")]
            Self::Sqlite(store) => store.clone(),
            #[cfg(feature = "postgres")]
            Self::Postgres(store, _) => store.clone(),
            #[cfg(feature = "redis")]
            Self::Redis(store, _) => store.clone(),
            #[cfg(feature = "dynamodb")]
            Self::Dynamodb(store, _) => store.clone(),
            #[cfg(feature = "bigtable")]
            Self::Bigtable(store, _) => store.clone(),
            #[cfg(feature = "spanner")]
            Self::Spanner(store, _) => store.clone(),
            Self::Memory(store) => store.clone(),
        }
    }

    pub(crate) fn snapshot_store(&self) -> Arc<dyn SnapshotStore> {
        match self {
            #[cfg(feature = "sqlite")]
            Self::Sqlite(store) => store.clone(),
            #[cfg(feature = "postgres")]
            Self::Postgres(store, _) => store.clone(),
            #[cfg(feature = "redis")]
            Self::Redis(store, _) => store.clone(),
            #[cfg(feature = "dynamodb")]
            Self::Dynamodb(store, _) => store.clone(),
            #[cfg(feature = "bigtable")]
            Self::Bigtable(store, _) => store.clone(),
            #[cfg(feature = "spanner")]
            Self::Spanner(store, _) => store.clone(),
            Self::Memory(store) => store.clone(),
        }
    }

    /// Waits for queued writes and closes the store, once nothing else holds it.
    pub(crate) async fn close(self) {
        match self {
            #[cfg(feature = "sqlite")]
            Self::Sqlite(store) => match Arc::try_unwrap(store) {
                Ok(store) => store.close().await,
                Err(store) => {
                    // A connection or stream task still holds it: the last handle to go closes
                    // it, finishing queued writes as it drops.
                    tracing::warn!("the store is still in use; it will close when released");
                    drop(store);
                }
            },
            // Their writes are acknowledged by the server before a command answers: dropping
            // the pool or connection is all there is to closing.
            #[cfg(feature = "postgres")]
            Self::Postgres(..) => {}
            #[cfg(feature = "redis")]
            Self::Redis(..) => {}
            #[cfg(feature = "dynamodb")]
            Self::Dynamodb(..) => {}
            #[cfg(feature = "bigtable")]
            Self::Bigtable(..) => {}
            #[cfg(feature = "spanner")]
            Self::Spanner(..) => {}
            Self::Memory(_) => {}
        }
    }
}

/// The descriptor sets of the configured domains' messages, each once, for server reflection:
/// built-in logic's own, and the files `descriptor_set` names, each checked here so that a
/// wrong one stops start-up naming its domain and file.
pub(crate) fn descriptor_sets(config: &Config) -> anyhow::Result<Vec<Vec<u8>>> {
    let mut sets: Vec<Vec<u8>> = Vec::new();
    for domain in &config.domains {
        let built_in = crate::logic::descriptor_set(&domain.logic).map(<[u8]>::to_vec);
        let file = match &domain.descriptor_set {
            Some(path) => Some(descriptor_set_file(path).with_context(|| {
                format!(
                    "domain {:?}: descriptor_set {}",
                    domain.name,
                    path.display()
                )
            })?),
            None => None,
        };
        for set in built_in.into_iter().chain(file) {
            if !sets.contains(&set) {
                sets.push(set);
            }
        }
    }
    Ok(sets)
}

/// The encoded `FileDescriptorSet` in the file at `path`, if reflection can serve it.
fn descriptor_set_file(path: &std::path::Path) -> anyhow::Result<Vec<u8>> {
    let set = std::fs::read(path).context("cannot read the file")?;
    let files = <FileDescriptorSet as Message>::decode(set.as_slice())
        .context("not an encoded FileDescriptorSet")?
        .file;
    anyhow::ensure!(!files.is_empty(), "no file descriptor in it");
    angzarr_server::check_descriptor_set(&set).context(
        "not servable by reflection (made without --include_imports, so that a file it \
         imports is missing?)",
    )?;
    Ok(set)
}

pub(crate) fn gateway(config: &Config, store: &OpenedStore) -> anyhow::Result<Gateway> {
    let mut builder = Gateway::builder(store.event_store(), store.snapshot_store())
        .config(config.gateway_config());
    for domain in &config.domains {
        let name = Domain::new(domain.name.as_str())?;
        builder = builder.register(name, crate::logic::build(domain)?);
    }
    Ok(builder.build())
}

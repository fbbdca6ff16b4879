//! Configuration: defaults, then a TOML file, then `ANGZARR_<SECTION>_<KEY>` environment
//! variables, then command-line flags; later sources win.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::{Context, bail};
use serde::{Deserialize, Serialize};

/// The effective configuration of the server.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub(crate) struct Config {
    pub(crate) server: Server,
    pub(crate) store: Store,
    pub(crate) limits: Limits,
    pub(crate) log: Log,
    pub(crate) domains: Vec<DomainConfig>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub(crate) struct Server {
    /// Where to listen. Loopback unless deliberately configured otherwise.
    pub(crate) listen: SocketAddr,
    pub(crate) max_message_bytes: usize,
    pub(crate) request_timeout_ms: u64,
    /// After SIGINT/SIGTERM, how long in-flight requests may take to finish.
    pub(crate) shutdown_grace_ms: u64,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub(crate) enum StoreKind {
    Sqlite,
    Memory,
    Postgres,
    Redis,
    Dynamodb,
    Bigtable,
    Spanner,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub(crate) enum Synchronous {
    /// Every acknowledged command is on disk (fsync per group commit).
    Full,
    /// Survives a process crash, may lose the last commits on power loss.
    Normal,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub(crate) struct Store {
    pub(crate) kind: StoreKind,
    /// Where the SQLite file lives.
    pub(crate) data_dir: PathBuf,
    pub(crate) synchronous: Synchronous,
    /// PostgreSQL: a libpq URL or connection string. Redis: `redis://` or `rediss://` URL; for
    /// a cluster, the URLs of some of its nodes separated by commas.
    pub(crate) url: String,
    /// Redis: the URLs are nodes of a Redis Cluster.
    pub(crate) cluster: bool,
    /// PostgreSQL: the most connections kept open.
    pub(crate) pool_size: usize,
    /// PostgreSQL and Redis: how long connecting may take.
    pub(crate) connect_timeout_ms: u64,
    /// PostgreSQL and Redis: how long one request may take before it fails (an append then has
    /// an unknown outcome, which the core resolves).
    pub(crate) operation_timeout_ms: u64,
    /// PostgreSQL: the schema of the store's tables. Redis, DynamoDB, Bigtable and Spanner:
    /// the prefix of every key, so that several deployments can share one database.
    pub(crate) namespace: String,
    /// DynamoDB: the endpoint URL (empty: AWS's, for the region). Bigtable and Spanner: an
    /// emulator's `host:port` (empty: Google's service). The vendors' own variables
    /// (`AWS_ENDPOINT_URL`, `BIGTABLE_EMULATOR_HOST`, `SPANNER_EMULATOR_HOST`) apply when it
    /// is empty.
    pub(crate) endpoint: String,
    /// DynamoDB: the AWS region (empty: from the standard chain, `AWS_REGION` or the profile).
    pub(crate) region: String,
    /// Bigtable and Spanner: the Google Cloud project.
    pub(crate) project: String,
    /// Bigtable and Spanner: the instance.
    pub(crate) instance: String,
    /// Spanner: the database.
    pub(crate) database: String,
    /// DynamoDB and Bigtable: the table (DynamoDB: the prefix of the store's tables).
    pub(crate) table: String,
    /// DynamoDB, Bigtable and Spanner: create what is missing at start (tables; the Spanner
    /// instance and database), instead of failing.
    pub(crate) create_if_missing: bool,
}

impl Store {
    pub(crate) fn connect_timeout(&self) -> Duration {
        Duration::from_millis(self.connect_timeout_ms)
    }

    pub(crate) fn operation_timeout(&self) -> Duration {
        Duration::from_millis(self.operation_timeout_ms)
    }
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub(crate) struct Limits {
    pub(crate) max_events_per_command: usize,
    pub(crate) max_event_bytes: usize,
    pub(crate) max_command_pages: usize,
    pub(crate) max_conflict_retries: u32,
    /// Events of recently written histories kept in memory (0: none).
    pub(crate) cached_events: usize,
    /// How far the clocks of the servers sharing a store may disagree (see `retry_on_conflict`
    /// in `proto/angzarr/v1/types.proto`).
    pub(crate) max_clock_skew_ms: u64,
    /// How many commands queued on one busy aggregate are appended together (1: none).
    pub(crate) max_group_commands: usize,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub(crate) enum LogFormat {
    Text,
    Json,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub(crate) struct Log {
    /// A `RUST_LOG`-style filter; `RUST_LOG` itself wins over it.
    pub(crate) filter: String,
    pub(crate) format: LogFormat,
}

/// Which client logic serves a domain.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct DomainConfig {
    pub(crate) name: String,
    /// `"bank"` (built in), `"python:<module>"`, `"go:<library.so>"` or `"grpc:<target>"`.
    pub(crate) logic: String,
    /// Snapshot every this many events (0: never). Built-in and Go logic are built with it;
    /// for Python and gRPC logic, which must return their `state`, the host stores that state
    /// at this interval (and also stores the snapshots their own code returns).
    #[serde(default)]
    pub(crate) snapshot_every: u64,
    /// Bridged logic: how long one command may take before it fails with a timeout.
    #[serde(default = "default_logic_timeout_ms")]
    pub(crate) timeout_ms: u64,
    /// Python logic: directories put before the interpreter's own on `sys.path` (the code's
    /// directory, a virtualenv's site-packages).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub(crate) python_path: Vec<PathBuf>,
    /// Bridged logic: an encoded `FileDescriptorSet` of the domain's commands, events and state
    /// (`protoc --include_imports --descriptor_set_out=FILE`, `buf build -o FILE`), served by
    /// reflection so that clients can build its commands without `.proto` files, as they can
    /// for built-in logic. A relative path is from the working directory.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub(crate) descriptor_set: Option<PathBuf>,
}

fn default_logic_timeout_ms() -> u64 {
    5_000
}

impl DomainConfig {
    pub(crate) fn timeout(&self) -> Duration {
        Duration::from_millis(self.timeout_ms)
    }
}

impl Default for Server {
    fn default() -> Self {
        Self {
            listen: SocketAddr::from(([127, 0, 0, 1], 50051)),
            max_message_bytes: 4 * 1024 * 1024,
            request_timeout_ms: 10_000,
            shutdown_grace_ms: 10_000,
        }
    }
}

impl Default for Store {
    fn default() -> Self {
        Self {
            kind: StoreKind::Sqlite,
            data_dir: PathBuf::from("./angzarr-data"),
            synchronous: Synchronous::Full,
            url: String::new(),
            cluster: false,
            pool_size: 16,
            connect_timeout_ms: 5_000,
            operation_timeout_ms: 5_000,
            namespace: "angzarr".into(),
            endpoint: String::new(),
            region: String::new(),
            project: String::new(),
            instance: String::new(),
            database: String::new(),
            table: "angzarr".into(),
            create_if_missing: false,
        }
    }
}

impl Default for Limits {
    fn default() -> Self {
        let core = angzarr_core::GatewayConfig::default();
        Self {
            max_events_per_command: core.max_events_per_command,
            max_event_bytes: core.max_event_bytes,
            max_command_pages: core.max_command_pages,
            max_conflict_retries: core.max_conflict_retries,
            cached_events: core.cached_events,
            max_clock_skew_ms: core.max_clock_skew.as_millis() as u64,
            max_group_commands: core.max_group_commands,
        }
    }
}

impl Default for Log {
    fn default() -> Self {
        Self {
            filter: "info".into(),
            format: LogFormat::Text,
        }
    }
}

impl Default for Config {
    fn default() -> Self {
        Self {
            server: Server::default(),
            store: Store::default(),
            limits: Limits::default(),
            log: Log::default(),
            domains: vec![DomainConfig {
                name: "account".into(),
                logic: "bank".into(),
                snapshot_every: 100,
                timeout_ms: default_logic_timeout_ms(),
                python_path: Vec::new(),
                descriptor_set: None,
            }],
        }
    }
}

impl Server {
    pub(crate) fn request_timeout(&self) -> Duration {
        Duration::from_millis(self.request_timeout_ms)
    }

    pub(crate) fn shutdown_grace(&self) -> Duration {
        Duration::from_millis(self.shutdown_grace_ms)
    }
}

const ENV_PREFIX: &str = "ANGZARR_";
/// The sections environment variables may set (`[[domains]]` is a list: file only).
const SECTIONS: [&str; 4] = ["server", "store", "limits", "log"];

impl Config {
    /// Defaults, overlaid with `file` (if any) and then with the `ANGZARR_*` variables of `env`.
    pub(crate) fn load(
        file: Option<&Path>,
        env: impl IntoIterator<Item = (String, String)>,
    ) -> anyhow::Result<Self> {
        let mut table = match file {
            Some(path) => {
                let text = std::fs::read_to_string(path).with_context(|| {
                    format!("cannot read the configuration file {}", path.display())
                })?;
                text.parse::<toml::Table>()
                    .with_context(|| format!("invalid configuration file {}", path.display()))?
            }
            None => toml::Table::new(),
        };
        let defaults =
            toml::Table::try_from(Config::default()).context("cannot render the defaults")?;
        for (name, value) in env {
            let Some(key) = name.strip_prefix(ENV_PREFIX) else {
                continue;
            };
            if key == "CONFIG" {
                continue; // the path of the file itself, read by the command line
            }
            if key.starts_with("TEST_") {
                continue; // the test suite's connection variables (`cargo xtask services`)
            }
            let (section, field) = match key.split_once('_') {
                Some((section, field)) if SECTIONS.contains(&section.to_lowercase().as_str()) => {
                    (section.to_lowercase(), field.to_lowercase())
                }
                _ => bail!(
                    "{name}: expected ANGZARR_<SECTION>_<KEY> with a section among {SECTIONS:?}, \
                     such as ANGZARR_SERVER_LISTEN"
                ),
            };
            let typed = env_value(&value, defaults.get(&section).and_then(|s| s.get(&field)));
            table
                .entry(section.clone())
                .or_insert_with(|| toml::Value::Table(toml::Table::new()))
                .as_table_mut()
                .with_context(|| format!("{name}: [{section}] is not a section"))?
                .insert(field, typed);
        }
        let origin = file.map_or_else(
            || "the environment".to_owned(),
            |path| path.display().to_string(),
        );
        let config: Config = toml::Value::Table(table).try_into().with_context(|| {
            format!("invalid configuration (from {origin} and ANGZARR_* variables)")
        })?;
        config.validate()?;
        Ok(config)
    }

    fn validate(&self) -> anyhow::Result<()> {
        if self.domains.is_empty() {
            bail!("no [[domains]] are configured: the server would have nothing to do");
        }
        for domain in &self.domains {
            angzarr_ports::Domain::new(domain.name.as_str())
                .with_context(|| format!("invalid [[domains]] name {:?}", domain.name))?;
        }
        if self.server.request_timeout_ms == 0 {
            bail!("server.request_timeout_ms must be positive");
        }
        let networked = !matches!(self.store.kind, StoreKind::Sqlite | StoreKind::Memory);
        let by_url = matches!(self.store.kind, StoreKind::Postgres | StoreKind::Redis);
        if by_url && self.store.url.is_empty() {
            bail!(
                "store.url is required for the {:?} store (ANGZARR_STORE_URL, or url in [store])",
                self.store.kind
            );
        }
        if networked
            && (self.store.connect_timeout().is_zero() || self.store.operation_timeout().is_zero())
        {
            bail!("store.connect_timeout_ms and store.operation_timeout_ms must be positive");
        }
        // A lost acknowledgement is resolved by resending and reading back, which takes a few
        // store operations: with less time left, the client only ever hears DEADLINE_EXCEEDED.
        if networked && self.store.operation_timeout() * 2 > self.server.request_timeout() {
            bail!(
                "store.operation_timeout_ms ({}) must be at most half of server.request_timeout_ms \
                 ({}), so that an append whose acknowledgement is lost can be resolved in time",
                self.store.operation_timeout_ms,
                self.server.request_timeout_ms
            );
        }
        let google = matches!(self.store.kind, StoreKind::Bigtable | StoreKind::Spanner);
        if google && (self.store.project.is_empty() || self.store.instance.is_empty()) {
            bail!(
                "store.project and store.instance are required for the {:?} store \
                 (ANGZARR_STORE_PROJECT, ANGZARR_STORE_INSTANCE)",
                self.store.kind
            );
        }
        if self.store.kind == StoreKind::Spanner && self.store.database.is_empty() {
            bail!("store.database is required for the Spanner store (ANGZARR_STORE_DATABASE)");
        }
        Ok(())
    }

    /// The configuration as TOML, with secrets masked.
    pub(crate) fn to_masked_toml(&self) -> anyhow::Result<String> {
        let mut value = toml::Value::try_from(self).context("cannot render the configuration")?;
        mask_secrets(&mut value);
        Ok(toml::to_string_pretty(&value)?)
    }

    pub(crate) fn gateway_config(&self) -> angzarr_core::GatewayConfig {
        let mut config = angzarr_core::GatewayConfig::default();
        config.max_events_per_command = self.limits.max_events_per_command;
        config.max_event_bytes = self.limits.max_event_bytes;
        config.max_command_pages = self.limits.max_command_pages;
        config.max_conflict_retries = self.limits.max_conflict_retries;
        config.cached_events = self.limits.cached_events;
        config.max_clock_skew = Duration::from_millis(self.limits.max_clock_skew_ms);
        config.max_group_commands = self.limits.max_group_commands.max(1);
        config
    }
}

/// Environment values are text: each is read as the type of the setting it overrides, so
/// that `ANGZARR_SERVER_REQUEST_TIMEOUT_MS=500` is a number and `ANGZARR_STORE_DATA_DIR=2024`
/// a path. Text that does not parse stays text, and deserializing names the setting.
fn env_value(value: &str, default: Option<&toml::Value>) -> toml::Value {
    let text = || toml::Value::String(value.to_owned());
    match default {
        Some(toml::Value::Integer(_)) => {
            value.parse().map_or_else(|_| text(), toml::Value::Integer)
        }
        Some(toml::Value::Boolean(_)) => {
            value.parse().map_or_else(|_| text(), toml::Value::Boolean)
        }
        Some(toml::Value::Float(_)) => value.parse().map_or_else(|_| text(), toml::Value::Float),
        _ => text(),
    }
}

/// Masks values of keys that name secrets, and passwords inside URLs, wherever they are.
fn mask_secrets(value: &mut toml::Value) {
    const SECRET_WORDS: [&str; 5] = ["password", "secret", "token", "credential", "key"];
    match value {
        toml::Value::Table(table) => {
            for (key, value) in table.iter_mut() {
                let key = key.to_lowercase();
                if SECRET_WORDS.iter().any(|word| key.contains(word)) && value.is_str() {
                    *value = toml::Value::String("********".into());
                } else {
                    mask_secrets(value);
                }
            }
        }
        toml::Value::Array(items) => items.iter_mut().for_each(mask_secrets),
        toml::Value::String(text) => {
            // Several URLs may share one setting (a Redis Cluster's nodes).
            let masked: Vec<String> = text.split(',').map(mask_url).collect();
            *text = masked.join(",");
        }
        _ => {}
    }
}

/// `scheme://user:password@host` → `scheme://user:********@host`, and the `password=...` of a
/// libpq `key=value` connection string.
fn mask_url(text: &str) -> String {
    if let Some((scheme, rest)) = text.split_once("://")
        && let Some((userinfo, host)) = rest.rsplit_once('@')
        && let Some((user, _)) = userinfo.split_once(':')
    {
        return format!("{scheme}://{user}:********@{host}");
    }
    // A libpq `key=value` string, or a URL's query: everything after `password` up to the end of
    // its value (quoted or not) goes.
    let lower = text.to_ascii_lowercase();
    let Some(at) = lower.find("password") else {
        return text.to_owned();
    };
    let after = &text[at + "password".len()..];
    let Some(equals) = after
        .find('=')
        .filter(|equals| after[..*equals].trim().is_empty())
    else {
        return text.to_owned();
    };
    let value = after[equals + 1..].trim_start();
    let value_start = text.len() - value.len();
    let value_len = match value.strip_prefix('\'') {
        Some(quoted) => quoted.find('\'').map_or(value.len(), |end| end + 2),
        None => value
            .find(|c: char| c.is_whitespace() || c == '&')
            .unwrap_or(value.len()),
    };
    let rest = mask_url(&text[value_start + value_len..]);
    format!("{}********{rest}", &text[..value_start])
}

#[cfg(test)]
mod tests {
    use super::*;

    fn env(pairs: &[(&str, &str)]) -> Vec<(String, String)> {
        pairs
            .iter()
            .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
            .collect()
    }

    #[test]
    fn environment_overrides_the_file() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("angzarr.toml");
        std::fs::write(
            &path,
            "[server]\nlisten = \"127.0.0.1:1\"\nrequest_timeout_ms = 5\n",
        )
        .unwrap();
        let config = Config::load(
            Some(&path),
            env(&[
                ("ANGZARR_STORE_DATA_DIR", "2024"),
                ("ANGZARR_SERVER_REQUEST_TIMEOUT_MS", "750"),
                ("ANGZARR_STORE_KIND", "memory"),
                ("ANGZARR_TEST_POSTGRES_URL", "postgres://127.0.0.1/x"),
                ("OTHER", "x"),
            ]),
        )
        .unwrap();
        assert_eq!(config.server.listen, SocketAddr::from(([127, 0, 0, 1], 1)));
        assert_eq!(config.server.request_timeout_ms, 750);
        assert_eq!(config.store.kind, StoreKind::Memory);
        assert_eq!(config.store.data_dir, PathBuf::from("2024"));
        let error =
            Config::load(None, env(&[("ANGZARR_SERVER_REQUEST_TIMEOUT_MS", "soon")])).unwrap_err();
        assert!(
            format!("{error:#}").contains("request_timeout_ms"),
            "{error:#}"
        );
    }

    #[test]
    fn a_malformed_file_is_named_with_its_line() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("bad.toml");
        std::fs::write(&path, "[server]\nlisten = \n").unwrap();
        let error = format!("{:#}", Config::load(Some(&path), []).unwrap_err());
        assert!(
            error.contains("bad.toml") && error.contains("line 2"),
            "{error}"
        );
        std::fs::write(&path, "[server]\nlisen = \"127.0.0.1:1\"\n").unwrap();
        let error = format!("{:#}", Config::load(Some(&path), []).unwrap_err());
        assert!(error.contains("lisen"), "{error}");
    }

    #[test]
    fn secrets_are_masked_when_printed() {
        let mut value: toml::Value = toml::from_str(
            "[a]\nurl = \"postgres://app:hunter2@db:5432/x\"\napi_token = \"abc\"\nplain = \"visible\"\n",
        )
        .unwrap();
        mask_secrets(&mut value);
        let printed = toml::to_string(&value).unwrap();
        assert!(
            !printed.contains("hunter2") && !printed.contains("abc"),
            "{printed}"
        );
        assert!(
            printed.contains("visible") && printed.contains("postgres://app:********@db:5432/x")
        );
        let mut store: toml::Value = toml::from_str(
            "url = \"redis://:s3cret@a:1, redis://:s3cret@b:2\"\nconninfo = \"host=db password=s3cret user=app\"\n",
        )
        .unwrap();
        mask_secrets(&mut store);
        let printed = toml::to_string(&store).unwrap();
        assert!(!printed.contains("s3cret"), "{printed}");
        assert!(
            printed.contains("host=db password=******** user=app"),
            "{printed}"
        );
    }

    #[test]
    fn networked_stores_need_a_url() {
        let error = Config::load(None, env(&[("ANGZARR_STORE_KIND", "postgres")])).unwrap_err();
        assert!(format!("{error:#}").contains("store.url"), "{error:#}");
        let config = Config::load(
            None,
            env(&[
                ("ANGZARR_STORE_KIND", "redis"),
                ("ANGZARR_STORE_URL", "redis://a:1,redis://b:2"),
                ("ANGZARR_STORE_CLUSTER", "true"),
                ("ANGZARR_STORE_OPERATION_TIMEOUT_MS", "250"),
            ]),
        )
        .unwrap();
        assert!(config.store.cluster);
        assert_eq!(config.store.operation_timeout(), Duration::from_millis(250));
    }

    #[test]
    fn the_defaults_are_the_embedded_setup_on_loopback() {
        let config = Config::load(None, []).unwrap();
        assert!(config.server.listen.ip().is_loopback());
        assert_eq!(config.store.kind, StoreKind::Sqlite);
        assert_eq!(config.domains[0].name, "account");
        assert!(Config::load(None, env(&[("ANGZARR_NOPE", "1")])).is_err());
    }
}

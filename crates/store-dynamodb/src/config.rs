//! How to reach DynamoDB and lay the store out in it.

use std::fmt;
use std::time::Duration;

use crate::error::OpenError;
use crate::keys;

/// How tables the store creates are billed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum Billing {
    /// On-demand capacity (`PAY_PER_REQUEST`): no capacity to plan, billed per request.
    OnDemand,
    /// Provisioned capacity, in read and write capacity units per second, for each table.
    Provisioned {
        /// Read capacity units.
        read_capacity: u32,
        /// Write capacity units.
        write_capacity: u32,
    },
}

/// Static credentials given in the configuration instead of the standard chain (for an
/// emulator, or a process that gets its keys from elsewhere). Never printed.
#[derive(Clone, PartialEq, Eq)]
pub(crate) struct StaticCredentials {
    pub(crate) access_key_id: String,
    pub(crate) secret_access_key: String,
    pub(crate) session_token: Option<String>,
}

impl fmt::Debug for StaticCredentials {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("StaticCredentials(***)")
    }
}

/// How to open a [`DynamoDbStore`](crate::DynamoDbStore).
///
/// ```
/// use std::time::Duration;
/// use angzarr_store_dynamodb::DynamoDbConfig;
///
/// let config = DynamoDbConfig::new()
///     .with_endpoint("http://127.0.0.1:8000")
///     .with_region("us-east-1")
///     .with_namespace("bank")
///     .with_static_credentials("test", "very-secret")
///     .with_create_if_missing(true)
///     .with_operation_timeout(Duration::from_secs(2));
/// // The secret never shows in logs.
/// assert!(!format!("{config:?}").contains("very-secret"));
/// assert_eq!(config.events_table, "angzarr_events");
/// ```
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct DynamoDbConfig {
    /// A custom endpoint (an emulator, a VPC endpoint), such as `http://127.0.0.1:8000`;
    /// `None` for AWS's regional endpoint.
    pub endpoint: Option<String>,
    /// The AWS region; `None` takes it from the standard chain (`AWS_REGION`, the profile,
    /// instance metadata).
    pub region: Option<String>,
    /// The table of events and stream heads. Default: `angzarr_events`.
    pub events_table: String,
    /// The table of indexes (roots, domains, request and correlation ids) and snapshots.
    /// Default: `angzarr_index`.
    pub index_table: String,
    /// What every key starts with: several stores share the tables under different
    /// namespaces. 1 to 64 characters of `[A-Za-z0-9_.-]`. Default: `angzarr`.
    pub namespace: String,
    /// Create missing tables at open (and wait until they are active). Default: `false`.
    pub create_if_missing: bool,
    /// How created tables are billed. Default: [`Billing::OnDemand`].
    pub billing: Billing,
    /// Turn DynamoDB Streams on (new images) when creating the events table, to feed
    /// projections. Default: `true`.
    pub create_with_stream: bool,
    /// How long connecting may take. Default: 5 s.
    pub connect_timeout: Duration,
    /// How long one request may take (each attempt of it). An append whose reply does not
    /// come in time is retried with the same idempotency token, then reported
    /// `OutcomeUnknown`. Default: 5 s.
    pub operation_timeout: Duration,
    /// How long to wait for a table being created to become active. Default: 60 s.
    pub table_ready_timeout: Duration,
    /// How many times a request is sent at most (1 = never retried) after a throttling
    /// answer, a server error or a lost connection. Default: 3.
    pub max_attempts: u32,
    /// The most events of one append, declared in the capabilities. Default and maximum:
    /// [`DynamoDbConfig::DEFAULT_MAX_BATCH_LEN`] (see the README: one transaction).
    pub max_batch_len: usize,
    /// The largest encoded event accepted, declared in the capabilities. Default:
    /// [`DynamoDbConfig::DEFAULT_MAX_EVENT_BYTES`]. `max_batch_len` events of this size must
    /// fit one transaction, which [`DynamoDbStore::open`](crate::DynamoDbStore::open) checks.
    pub max_event_bytes: usize,
    /// The largest encoded snapshot accepted. Default and maximum:
    /// [`DynamoDbConfig::DEFAULT_MAX_SNAPSHOT_BYTES`] (one item).
    pub max_snapshot_bytes: usize,
    pub(crate) credentials: Option<StaticCredentials>,
}

impl DynamoDbConfig {
    /// The default [`Self::events_table`].
    pub const DEFAULT_EVENTS_TABLE: &str = "angzarr_events";
    /// The default [`Self::index_table`].
    pub const DEFAULT_INDEX_TABLE: &str = "angzarr_index";
    /// The default [`Self::namespace`].
    pub const DEFAULT_NAMESPACE: &str = "angzarr";
    /// The longest [`Self::namespace`].
    pub const MAX_NAMESPACE_LEN: usize = 64;
    /// The default [`Self::connect_timeout`].
    pub const DEFAULT_CONNECT_TIMEOUT: Duration = Duration::from_secs(5);
    /// The default [`Self::operation_timeout`].
    pub const DEFAULT_OPERATION_TIMEOUT: Duration = Duration::from_secs(5);
    /// The default [`Self::table_ready_timeout`].
    pub const DEFAULT_TABLE_READY_TIMEOUT: Duration = Duration::from_secs(60);
    /// The default [`Self::max_attempts`].
    pub const DEFAULT_MAX_ATTEMPTS: u32 = 3;
    /// The default and largest [`Self::max_batch_len`]: an append of `n` events writes up to
    /// `2n + 3` items, and a transaction holds 100.
    pub const DEFAULT_MAX_BATCH_LEN: usize = 32;
    /// The default [`Self::max_event_bytes`]: 120 KiB, so that 32 of them and the index items
    /// fit a 4 MB transaction.
    pub const DEFAULT_MAX_EVENT_BYTES: usize = 120 * 1024;
    /// The default and largest [`Self::max_snapshot_bytes`]: a 400 KiB item less 1 KiB for its
    /// key and attribute names.
    pub const DEFAULT_MAX_SNAPSHOT_BYTES: usize = keys::MAX_ITEM_BYTES - 1024;

    /// The defaults: AWS through the standard chain, tables `angzarr_events` and
    /// `angzarr_index`, namespace `angzarr`, tables not created.
    pub fn new() -> Self {
        Self {
            endpoint: None,
            region: None,
            events_table: Self::DEFAULT_EVENTS_TABLE.to_owned(),
            index_table: Self::DEFAULT_INDEX_TABLE.to_owned(),
            namespace: Self::DEFAULT_NAMESPACE.to_owned(),
            create_if_missing: false,
            billing: Billing::OnDemand,
            create_with_stream: true,
            connect_timeout: Self::DEFAULT_CONNECT_TIMEOUT,
            operation_timeout: Self::DEFAULT_OPERATION_TIMEOUT,
            table_ready_timeout: Self::DEFAULT_TABLE_READY_TIMEOUT,
            max_attempts: Self::DEFAULT_MAX_ATTEMPTS,
            max_batch_len: Self::DEFAULT_MAX_BATCH_LEN,
            max_event_bytes: Self::DEFAULT_MAX_EVENT_BYTES,
            max_snapshot_bytes: Self::DEFAULT_MAX_SNAPSHOT_BYTES,
            credentials: None,
        }
    }

    /// Sets [`Self::endpoint`].
    pub fn with_endpoint(mut self, endpoint: impl Into<String>) -> Self {
        self.endpoint = Some(endpoint.into());
        self
    }

    /// Sets [`Self::region`].
    pub fn with_region(mut self, region: impl Into<String>) -> Self {
        self.region = Some(region.into());
        self
    }

    /// Sets [`Self::events_table`] and [`Self::index_table`].
    pub fn with_tables(mut self, events: impl Into<String>, index: impl Into<String>) -> Self {
        self.events_table = events.into();
        self.index_table = index.into();
        self
    }

    /// Sets [`Self::namespace`].
    pub fn with_namespace(mut self, namespace: impl Into<String>) -> Self {
        self.namespace = namespace.into();
        self
    }

    /// Sets [`Self::create_if_missing`].
    pub fn with_create_if_missing(mut self, create: bool) -> Self {
        self.create_if_missing = create;
        self
    }

    /// Sets [`Self::billing`].
    pub fn with_billing(mut self, billing: Billing) -> Self {
        self.billing = billing;
        self
    }

    /// Sets [`Self::create_with_stream`].
    pub fn with_create_with_stream(mut self, stream: bool) -> Self {
        self.create_with_stream = stream;
        self
    }

    /// Uses these credentials instead of the standard chain. They are never printed.
    pub fn with_static_credentials(
        mut self,
        access_key_id: impl Into<String>,
        secret_access_key: impl Into<String>,
    ) -> Self {
        self.credentials = Some(StaticCredentials {
            access_key_id: access_key_id.into(),
            secret_access_key: secret_access_key.into(),
            session_token: None,
        });
        self
    }

    /// Adds a session token to the static credentials (temporary credentials).
    pub fn with_session_token(mut self, token: impl Into<String>) -> Self {
        if let Some(credentials) = self.credentials.as_mut() {
            credentials.session_token = Some(token.into());
        }
        self
    }

    /// Sets [`Self::connect_timeout`].
    pub fn with_connect_timeout(mut self, timeout: Duration) -> Self {
        self.connect_timeout = timeout;
        self
    }

    /// Sets [`Self::operation_timeout`].
    pub fn with_operation_timeout(mut self, timeout: Duration) -> Self {
        self.operation_timeout = timeout;
        self
    }

    /// Sets [`Self::table_ready_timeout`].
    pub fn with_table_ready_timeout(mut self, timeout: Duration) -> Self {
        self.table_ready_timeout = timeout;
        self
    }

    /// Sets [`Self::max_attempts`].
    pub fn with_max_attempts(mut self, attempts: u32) -> Self {
        self.max_attempts = attempts;
        self
    }

    /// Sets [`Self::max_batch_len`].
    pub fn with_max_batch_len(mut self, len: usize) -> Self {
        self.max_batch_len = len;
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
        for table in [&self.events_table, &self.index_table] {
            if !keys::valid_table_name(table) {
                return invalid(format!(
                    "table name {table:?}: DynamoDB takes 3 to 255 characters of [A-Za-z0-9_.-]"
                ));
            }
        }
        if self.events_table == self.index_table {
            return invalid("the events and index tables must differ".into());
        }
        if !keys::valid_namespace(&self.namespace) {
            return invalid(format!(
                "namespace {:?}: use 1 to {} characters of [A-Za-z0-9_.-]",
                self.namespace,
                Self::MAX_NAMESPACE_LEN
            ));
        }
        if self.connect_timeout.is_zero()
            || self.operation_timeout.is_zero()
            || self.table_ready_timeout.is_zero()
        {
            return invalid("timeouts must be longer than zero".into());
        }
        if self.max_attempts == 0 {
            return invalid("max_attempts must be at least 1".into());
        }
        if let Billing::Provisioned {
            read_capacity,
            write_capacity,
        } = self.billing
            && (read_capacity == 0 || write_capacity == 0)
        {
            return invalid("provisioned capacities must be at least 1".into());
        }
        if self.max_snapshot_bytes > Self::DEFAULT_MAX_SNAPSHOT_BYTES {
            return invalid(format!(
                "a snapshot is one item: at most {} bytes",
                Self::DEFAULT_MAX_SNAPSHOT_BYTES
            ));
        }
        if let Err(message) = keys::batch_fits(self.max_batch_len, self.max_event_bytes) {
            return invalid(message);
        }
        Ok(())
    }
}

impl Default for DynamoDbConfig {
    fn default() -> Self {
        Self::new()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn secrets_are_never_printed() {
        let config = DynamoDbConfig::new()
            .with_static_credentials("AKIDEXAMPLE", "wJalrXUtnFEMI")
            .with_session_token("session-secret");
        let shown = format!("{config:?}");
        assert!(
            !shown.contains("wJalrXUtnFEMI") && !shown.contains("session-secret"),
            "{shown}"
        );
    }

    #[test]
    fn unusable_settings_are_refused() {
        let good = DynamoDbConfig::new();
        assert!(good.validate().is_ok());
        for bad in [
            good.clone().with_tables("ab", "index"),
            good.clone().with_tables("a b c", "index"),
            good.clone().with_tables("x".repeat(256), "index"),
            good.clone().with_tables("same", "same"),
            good.clone().with_namespace(""),
            good.clone().with_namespace("a#b"),
            good.clone().with_namespace("x".repeat(65)),
            good.clone().with_operation_timeout(Duration::ZERO),
            good.clone().with_max_attempts(0),
            good.clone().with_max_batch_len(0),
            good.clone().with_max_batch_len(49),
            good.clone().with_max_event_bytes(200 * 1024),
            good.clone().with_max_snapshot_bytes(400 * 1024),
            good.clone().with_billing(Billing::Provisioned {
                read_capacity: 0,
                write_capacity: 1,
            }),
        ] {
            assert!(bad.validate().is_err(), "{bad:?} was accepted");
        }
        // Fewer, larger events, or more, smaller ones.
        assert!(
            good.clone()
                .with_max_batch_len(8)
                .with_max_event_bytes(380 * 1024)
                .validate()
                .is_ok()
        );
        assert!(
            good.with_max_batch_len(48)
                .with_max_event_bytes(64 * 1024)
                .validate()
                .is_ok()
        );
    }
}

//! Where a [`BigtableStore`](crate::BigtableStore) keeps its data, and its limits.

use std::time::Duration;

use crate::error::OpenError;

/// How to open a [`BigtableStore`](crate::BigtableStore).
///
/// The configuration holds no secret: on Google Cloud the store takes its credentials from
/// the standard chain (Application Default Credentials: `GOOGLE_APPLICATION_CREDENTIALS`, the
/// gcloud user credentials, the metadata server), so its `Debug` output is safe to log.
///
/// ```
/// use std::time::Duration;
/// use angzarr_store_bigtable::BigtableConfig;
///
/// let config = BigtableConfig::new("my-project", "my-instance", "events")
///     .with_namespace("bank")
///     .with_create_if_missing(true)
///     .with_operation_timeout(Duration::from_secs(2));
/// assert_eq!(config.endpoint, None); // the real service, with Application Default Credentials
/// let emulator = config.with_endpoint("127.0.0.1:8086");
/// assert_eq!(emulator.endpoint.as_deref(), Some("127.0.0.1:8086"));
/// ```
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct BigtableConfig {
    /// The `host:port` of a Bigtable emulator (plain text, no credentials); `None` for the real
    /// service at `bigtable.googleapis.com`, with credentials from the standard chain (when
    /// `BIGTABLE_EMULATOR_HOST` is set, the underlying client connects to that emulator
    /// instead, as every Google client does).
    pub endpoint: Option<String>,
    /// The Google Cloud project.
    pub project: String,
    /// The Bigtable instance.
    pub instance: String,
    /// The table: 1 to 50 characters of `[A-Za-z0-9_.-]`, as Bigtable wants.
    pub table: String,
    /// What every row key starts with: several stores can share a table under different
    /// namespaces. 1 to 64 characters of `[A-Za-z0-9_.-]`. Default:
    /// [`BigtableConfig::DEFAULT_NAMESPACE`].
    pub namespace: String,
    /// Create the table and its column families at open if it does not exist (needs the
    /// `bigtable.tables.create` permission). Default: `false`.
    pub create_if_missing: bool,
    /// How long `open` may take to reach the service and prove that the table answers
    /// (finding credentials included). Default: [`BigtableConfig::DEFAULT_CONNECT_TIMEOUT`].
    pub connect_timeout: Duration,
    /// How long one request may take. An append whose reply does not come in time fails with
    /// `OutcomeUnknown` (it may still be applied). Default:
    /// [`BigtableConfig::DEFAULT_OPERATION_TIMEOUT`].
    pub operation_timeout: Duration,
    /// How many gRPC connections requests are spread over. Default:
    /// [`BigtableConfig::DEFAULT_CHANNELS`].
    pub channels: usize,
    /// The most events one append may carry, declared in the store's capabilities. Default and
    /// maximum: [`BigtableConfig::MAX_BATCH_LEN`].
    pub max_batch_len: usize,
    /// The largest encoded event accepted, declared in the store's capabilities. Default and
    /// maximum: [`BigtableConfig::MAX_EVENT_BYTES`].
    pub max_event_bytes: usize,
    /// The largest encoded snapshot accepted, declared in the store's capabilities. Default
    /// and maximum: [`BigtableConfig::MAX_SNAPSHOT_BYTES`].
    pub max_snapshot_bytes: usize,
}

impl BigtableConfig {
    /// The default [`BigtableConfig::namespace`].
    pub const DEFAULT_NAMESPACE: &str = "angzarr";
    /// The longest [`BigtableConfig::namespace`].
    pub const MAX_NAMESPACE_LEN: usize = 64;
    /// The longest [`BigtableConfig::table`] (Bigtable's own limit).
    pub const MAX_TABLE_LEN: usize = 50;
    /// The default [`BigtableConfig::connect_timeout`].
    pub const DEFAULT_CONNECT_TIMEOUT: Duration = Duration::from_secs(5);
    /// The default [`BigtableConfig::operation_timeout`].
    pub const DEFAULT_OPERATION_TIMEOUT: Duration = Duration::from_secs(5);
    /// The default [`BigtableConfig::channels`].
    pub const DEFAULT_CHANNELS: usize = 4;
    /// The largest [`BigtableConfig::max_batch_len`]: an append is one `CheckAndMutateRow`
    /// of at most two mutations per event plus two, well under Bigtable's 100,000 mutations per
    /// request (and the suite's 10,000-event batch fits).
    pub const MAX_BATCH_LEN: usize = 10_000;
    /// The largest [`BigtableConfig::max_event_bytes`]: 1 MiB. Events are cells of one row per
    /// stream, which should stay under about 100 MB: large payloads belong in object storage,
    /// referenced by the event.
    pub const MAX_EVENT_BYTES: usize = 1024 * 1024;
    /// The most bytes of encoded events one append may carry in all: a larger batch is refused
    /// with `LimitExceeded` (declared as `max_batch_bytes`) before anything is sent (Bigtable refuses requests over 256 MB,
    /// and one append should not make a row grow by more than a fraction of its ~100 MB
    /// budget).
    pub const MAX_BATCH_BYTES: usize = 64 * 1024 * 1024;
    /// The largest [`BigtableConfig::max_snapshot_bytes`]: 10 MiB, Bigtable's recommended
    /// largest cell.
    pub const MAX_SNAPSHOT_BYTES: usize = 10 * 1024 * 1024;

    /// The table `table` of `instance` in `project`, with the default settings.
    pub fn new(
        project: impl Into<String>,
        instance: impl Into<String>,
        table: impl Into<String>,
    ) -> Self {
        Self {
            endpoint: None,
            project: project.into(),
            instance: instance.into(),
            table: table.into(),
            namespace: Self::DEFAULT_NAMESPACE.to_owned(),
            create_if_missing: false,
            connect_timeout: Self::DEFAULT_CONNECT_TIMEOUT,
            operation_timeout: Self::DEFAULT_OPERATION_TIMEOUT,
            channels: Self::DEFAULT_CHANNELS,
            max_batch_len: Self::MAX_BATCH_LEN,
            max_event_bytes: Self::MAX_EVENT_BYTES,
            max_snapshot_bytes: Self::MAX_SNAPSHOT_BYTES,
        }
    }

    /// Sets [`Self::endpoint`]: an emulator's `host:port`.
    pub fn with_endpoint(mut self, endpoint: impl Into<String>) -> Self {
        self.endpoint = Some(endpoint.into());
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

    /// Sets [`Self::channels`].
    pub fn with_channels(mut self, channels: usize) -> Self {
        self.channels = channels;
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
        for (what, value, max) in [
            ("project", &self.project, 128),
            ("instance", &self.instance, 128),
            ("table", &self.table, Self::MAX_TABLE_LEN),
            ("namespace", &self.namespace, Self::MAX_NAMESPACE_LEN),
        ] {
            if !crate::keys::valid_name(value, max) {
                return invalid(format!(
                    "{what} {value:?}: use 1 to {max} characters of [A-Za-z0-9_.-]"
                ));
            }
        }
        if let Some(endpoint) = &self.endpoint {
            let uri = format!("http://{endpoint}");
            if endpoint.is_empty() || tonic::transport::Endpoint::from_shared(uri).is_err() {
                return invalid(format!("endpoint {endpoint:?} is not a host:port address"));
            }
        }
        if self.connect_timeout.is_zero() || self.operation_timeout.is_zero() {
            return invalid("timeouts must be longer than zero".into());
        }
        if self.channels == 0 {
            return invalid("at least one channel is needed".into());
        }
        if self.max_batch_len == 0 || self.max_batch_len > Self::MAX_BATCH_LEN {
            return invalid(format!(
                "max_batch_len must be 1 to {}",
                Self::MAX_BATCH_LEN
            ));
        }
        if self.max_event_bytes > Self::MAX_EVENT_BYTES
            || self.max_snapshot_bytes > Self::MAX_SNAPSHOT_BYTES
        {
            return invalid(format!(
                "the store holds events of at most {} bytes and snapshots of at most {}",
                Self::MAX_EVENT_BYTES,
                Self::MAX_SNAPSHOT_BYTES
            ));
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn unusable_settings_are_refused() {
        let good = BigtableConfig::new("p", "i", "t");
        assert!(good.validate().is_ok());
        assert!(
            good.clone()
                .with_endpoint("127.0.0.1:8086")
                .validate()
                .is_ok()
        );
        for bad in [
            good.clone().with_namespace(""),
            good.clone().with_namespace("a#b"),
            good.clone().with_namespace("x".repeat(65)),
            BigtableConfig::new("p/x", "i", "t"),
            BigtableConfig::new("p", "", "t"),
            BigtableConfig::new("p", "i", "x".repeat(51)),
            good.clone().with_endpoint(""),
            good.clone().with_endpoint("a b"),
            good.clone().with_operation_timeout(Duration::ZERO),
            good.clone().with_channels(0),
            good.clone().with_max_batch_len(0),
            good.clone()
                .with_max_batch_len(BigtableConfig::MAX_BATCH_LEN + 1),
            good.clone().with_max_event_bytes(usize::MAX),
            good.clone().with_max_snapshot_bytes(usize::MAX),
        ] {
            assert!(bad.validate().is_err(), "{bad:?} was accepted");
        }
    }
}

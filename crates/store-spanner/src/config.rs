//! Where the database of a [`SpannerStore`](crate::SpannerStore) is, and how to use it.

use std::time::Duration;

use crate::error::OpenError;

/// How the store reaches Spanner.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
#[non_exhaustive]
pub enum Endpoint {
    /// Google Cloud's endpoint (`spanner.googleapis.com`) over TLS, with credentials from
    /// Application Default Credentials (`GOOGLE_APPLICATION_CREDENTIALS`, the gcloud user
    /// credentials, or the metadata server). The default.
    #[default]
    Cloud,
    /// The Spanner emulator at `host:port`, over plaintext gRPC and without credentials (what
    /// `SPANNER_EMULATOR_HOST` holds; the store never reads that variable itself).
    Emulator(String),
    /// Another TLS endpoint of the data API (a regional endpoint, Private Service Connect),
    /// with Application Default Credentials. Instance and database administration, used only
    /// by [`SpannerConfig::create_if_missing`], still goes to Google Cloud's endpoint.
    Custom(String),
}

/// How to open a [`SpannerStore`](crate::SpannerStore).
///
/// Credentials are never part of the configuration: they come from Google's standard chain
/// (Application Default Credentials), so `Debug` shows nothing secret.
///
/// ```
/// use std::time::Duration;
/// use angzarr_store_spanner::{Endpoint, SpannerConfig};
///
/// let config = SpannerConfig::new("my-project", "events", "bank")
///     .with_namespace("prod")
///     .with_operation_timeout(Duration::from_secs(3));
/// assert_eq!(config.endpoint, Endpoint::Cloud);
/// let emulator = SpannerConfig::new("test-project", "test", "angzarr")
///     .with_endpoint(Endpoint::Emulator("127.0.0.1:9010".into()))
///     .with_create_if_missing(true);
/// assert!(emulator.create_if_missing);
/// ```
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct SpannerConfig {
    /// How to reach Spanner. Default: [`Endpoint::Cloud`].
    pub endpoint: Endpoint,
    /// The Google Cloud project id.
    pub project: String,
    /// The Spanner instance id.
    pub instance: String,
    /// The database id.
    pub database: String,
    /// The first column of every key: several stores can share one database under different
    /// namespaces. 1 to 64 characters of `[A-Za-z0-9_.-]`. Default:
    /// [`SpannerConfig::DEFAULT_NAMESPACE`].
    pub namespace: String,
    /// Create the instance (if [`Self::instance_config`] is set, or on the emulator), the
    /// database and the schema when they are missing. Default: `false`, in which case `open`
    /// fails if any is missing.
    pub create_if_missing: bool,
    /// The instance configuration of an instance created by [`Self::create_if_missing`],
    /// such as `regional-europe-west1` (with [`Self::processing_units`]). Default: none, so a
    /// missing instance is an error rather than a bill; the emulator needs none (it uses
    /// `emulator-config`).
    pub instance_config: Option<String>,
    /// The compute capacity of an instance created by [`Self::create_if_missing`]. Default:
    /// 100 (the smallest).
    pub processing_units: i32,
    /// How long connecting may take. Default: [`SpannerConfig::DEFAULT_CONNECT_TIMEOUT`].
    pub connect_timeout: Duration,
    /// How long one request may take. A commit without an answer in time is an unknown
    /// outcome. Default: [`SpannerConfig::DEFAULT_OPERATION_TIMEOUT`].
    pub operation_timeout: Duration,
    /// How many times an append is tried in all when Spanner aborts its transaction (lock
    /// contention; the emulator aborts every transaction that overlaps another). Default:
    /// [`SpannerConfig::DEFAULT_MAX_ATTEMPTS`].
    pub max_attempts: u32,
    /// How long an append may keep trying after aborts before it gives up with
    /// `Unavailable`. Default: [`SpannerConfig::DEFAULT_RETRY_DEADLINE`].
    pub retry_deadline: Duration,
    /// How many gRPC channels the client opens (each carries up to 100 sessions). Default: 4.
    pub channels: usize,
    /// The most events one append may carry. Default and maximum:
    /// [`SpannerConfig::MAX_BATCH_LEN`], what fits Spanner's 80,000 mutations per commit.
    pub max_batch_len: usize,
    /// The largest encoded event accepted. Default and maximum:
    /// [`SpannerConfig::MAX_CELL_BYTES`].
    pub max_event_bytes: usize,
    /// The largest encoded snapshot accepted. Default and maximum:
    /// [`SpannerConfig::MAX_CELL_BYTES`].
    pub max_snapshot_bytes: usize,
}

impl SpannerConfig {
    /// The default [`SpannerConfig::namespace`].
    pub const DEFAULT_NAMESPACE: &str = "angzarr";
    /// The default [`SpannerConfig::connect_timeout`].
    pub const DEFAULT_CONNECT_TIMEOUT: Duration = Duration::from_secs(5);
    /// The default [`SpannerConfig::operation_timeout`].
    pub const DEFAULT_OPERATION_TIMEOUT: Duration = Duration::from_secs(5);
    /// The default [`SpannerConfig::max_attempts`].
    pub const DEFAULT_MAX_ATTEMPTS: u32 = 200;
    /// The default [`SpannerConfig::retry_deadline`].
    pub const DEFAULT_RETRY_DEADLINE: Duration = Duration::from_secs(30);
    /// The largest [`SpannerConfig::max_batch_len`]: an event costs 22 mutations (10 columns,
    /// 5 in the correlation index, 7 in the request index) and a commit holds at most 80,000;
    /// 2,000 events leave room to spare.
    pub const MAX_BATCH_LEN: usize = 2_000;
    /// Spanner's largest cell, 10 MiB: the largest event or snapshot.
    pub const MAX_CELL_BYTES: usize = 10 * 1024 * 1024;

    /// The database `database` of instance `instance` in project `project`, on Google Cloud,
    /// with the default settings.
    pub fn new(
        project: impl Into<String>,
        instance: impl Into<String>,
        database: impl Into<String>,
    ) -> Self {
        Self {
            endpoint: Endpoint::Cloud,
            project: project.into(),
            instance: instance.into(),
            database: database.into(),
            namespace: Self::DEFAULT_NAMESPACE.to_owned(),
            create_if_missing: false,
            instance_config: None,
            processing_units: 100,
            connect_timeout: Self::DEFAULT_CONNECT_TIMEOUT,
            operation_timeout: Self::DEFAULT_OPERATION_TIMEOUT,
            max_attempts: Self::DEFAULT_MAX_ATTEMPTS,
            retry_deadline: Self::DEFAULT_RETRY_DEADLINE,
            channels: 4,
            max_batch_len: Self::MAX_BATCH_LEN,
            max_event_bytes: Self::MAX_CELL_BYTES,
            max_snapshot_bytes: Self::MAX_CELL_BYTES,
        }
    }

    /// Sets [`Self::endpoint`].
    pub fn with_endpoint(mut self, endpoint: Endpoint) -> Self {
        self.endpoint = endpoint;
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

    /// Sets [`Self::instance_config`] and [`Self::processing_units`].
    pub fn with_instance_config(
        mut self,
        instance_config: impl Into<String>,
        processing_units: i32,
    ) -> Self {
        self.instance_config = Some(instance_config.into());
        self.processing_units = processing_units;
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

    /// Sets [`Self::max_attempts`] and [`Self::retry_deadline`].
    pub fn with_abort_retries(mut self, max_attempts: u32, deadline: Duration) -> Self {
        self.max_attempts = max_attempts;
        self.retry_deadline = deadline;
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

    /// `projects/P/instances/I`.
    pub(crate) fn instance_path(&self) -> String {
        format!("projects/{}/instances/{}", self.project, self.instance)
    }

    /// `projects/P/instances/I/databases/D`.
    pub(crate) fn database_path(&self) -> String {
        format!("{}/databases/{}", self.instance_path(), self.database)
    }

    /// Refuses settings that cannot work.
    pub(crate) fn validate(&self) -> Result<(), OpenError> {
        let invalid = |message: String| Err(OpenError::InvalidConfig(message));
        // Google's rules, loosened to what cannot break a resource path.
        let resource_id = |id: &str, max: usize| {
            let bytes = id.as_bytes();
            (2..=max).contains(&bytes.len())
                && bytes[0].is_ascii_lowercase()
                && bytes.iter().all(|b| {
                    b.is_ascii_lowercase() || b.is_ascii_digit() || matches!(b, b'-' | b'_')
                })
        };
        for (what, id, max) in [
            ("project", &self.project, 30),
            ("instance", &self.instance, 64),
            ("database", &self.database, 30),
        ] {
            if !resource_id(id, max) {
                return invalid(format!(
                    "{what} id {id:?}: use 2 to {max} characters of [a-z0-9_-], starting with \
                     a lowercase letter"
                ));
            }
        }
        if !crate::keys::valid_namespace(&self.namespace) {
            return invalid(format!(
                "namespace {:?}: use 1 to 64 characters of [A-Za-z0-9_.-]",
                self.namespace
            ));
        }
        if let Endpoint::Emulator(address) | Endpoint::Custom(address) = &self.endpoint
            && address.trim().is_empty()
        {
            return invalid("the endpoint's address is empty".into());
        }
        if self.connect_timeout.is_zero()
            || self.operation_timeout.is_zero()
            || self.retry_deadline.is_zero()
        {
            return invalid("timeouts must be longer than zero".into());
        }
        if self.max_attempts == 0 || self.channels == 0 || self.processing_units <= 0 {
            return invalid("attempts, channels and processing units must be at least 1".into());
        }
        if self.max_batch_len == 0 || self.max_batch_len > Self::MAX_BATCH_LEN {
            return invalid(format!(
                "max_batch_len must be 1 to {} (Spanner's mutations per commit)",
                Self::MAX_BATCH_LEN
            ));
        }
        if self.max_event_bytes > Self::MAX_CELL_BYTES
            || self.max_snapshot_bytes > Self::MAX_CELL_BYTES
        {
            return invalid(format!(
                "a Spanner cell holds at most {} bytes of event or snapshot",
                Self::MAX_CELL_BYTES
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
        let good = SpannerConfig::new("test-project", "test", "angzarr");
        assert!(good.validate().is_ok());
        for bad in [
            SpannerConfig::new("", "test", "db"),
            SpannerConfig::new("p/x", "test", "db"),
            SpannerConfig::new("project", "Test", "db"),
            SpannerConfig::new("project", "test", "d".repeat(31)),
            good.clone().with_namespace(""),
            good.clone().with_namespace("a/b"),
            good.clone().with_namespace("x".repeat(65)),
            good.clone().with_operation_timeout(Duration::ZERO),
            good.clone().with_abort_retries(0, Duration::from_secs(1)),
            good.clone().with_max_batch_len(0),
            good.clone()
                .with_max_batch_len(SpannerConfig::MAX_BATCH_LEN + 1),
            good.clone().with_max_snapshot_bytes(usize::MAX),
            good.clone().with_endpoint(Endpoint::Emulator(" ".into())),
        ] {
            assert!(bad.validate().is_err(), "{bad:?} was accepted");
        }
    }
}

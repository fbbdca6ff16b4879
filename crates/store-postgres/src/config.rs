//! How to open a [`PostgresStore`](crate::PostgresStore).

use std::fmt;
use std::str::FromStr;
use std::time::Duration;

use tokio_postgres::config::SslMode;

use crate::error::OpenError;

/// Where a [`PostgresStore`](crate::PostgresStore) keeps its data, and how it connects.
///
/// ```
/// use std::time::Duration;
/// use angzarr_store_postgres::PostgresConfig;
///
/// let config = PostgresConfig::new("postgres://angzarr:secret@db.internal/angzarr")
///     .with_schema("billing")
///     .with_pool_size(32)
///     .with_operation_timeout(Duration::from_secs(10));
/// // The password never shows.
/// assert!(!format!("{config:?}").contains("secret"));
/// ```
#[derive(Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct PostgresConfig {
    /// The server and database, as a libpq connection string: a URL
    /// (`postgres://user:password@host:port/database?options`) or `key=value` pairs. Several
    /// hosts with `target_session_attrs=read-write` connect to whichever is the primary.
    /// `Debug` and [`PostgresConfig::redacted_url`] mask the password.
    pub url: String,
    /// The PostgreSQL schema that holds the store's tables, created if missing: one database
    /// can hold several independent stores. Letters, digits and `_`, not starting with a
    /// digit, at most 63 bytes; case is kept. Default: [`PostgresConfig::DEFAULT_SCHEMA`].
    pub schema: String,
    /// The most connections the store keeps open. Default:
    /// [`PostgresConfig::DEFAULT_POOL_SIZE`].
    pub pool_size: usize,
    /// How long opening one connection (TCP, authentication, preparing the statements) may
    /// take, unless the URL sets `connect_timeout`. Default:
    /// [`PostgresConfig::DEFAULT_CONNECT_TIMEOUT`].
    pub connect_timeout: Duration,
    /// How long an operation waits for a free connection when all `pool_size` are busy, before
    /// failing with `Unavailable`. Default: [`PostgresConfig::DEFAULT_ACQUIRE_TIMEOUT`].
    pub acquire_timeout: Duration,
    /// How long the server may take to answer one statement. An append that gets no answer in
    /// time fails with `OutcomeUnknown` (the server may still apply it), any other operation
    /// with `Unavailable`; the connection is dropped either way. Default:
    /// [`PostgresConfig::DEFAULT_OPERATION_TIMEOUT`].
    pub operation_timeout: Duration,
}

impl PostgresConfig {
    /// The default [`PostgresConfig::schema`]: PostgreSQL's own default schema.
    pub const DEFAULT_SCHEMA: &str = "public";
    /// The default [`PostgresConfig::pool_size`].
    pub const DEFAULT_POOL_SIZE: usize = 16;
    /// The default [`PostgresConfig::connect_timeout`].
    pub const DEFAULT_CONNECT_TIMEOUT: Duration = Duration::from_secs(5);
    /// The default [`PostgresConfig::acquire_timeout`].
    pub const DEFAULT_ACQUIRE_TIMEOUT: Duration = Duration::from_secs(10);
    /// The default [`PostgresConfig::operation_timeout`].
    pub const DEFAULT_OPERATION_TIMEOUT: Duration = Duration::from_secs(30);

    /// The database at `url`, with the default settings.
    pub fn new(url: impl Into<String>) -> Self {
        Self {
            url: url.into(),
            schema: Self::DEFAULT_SCHEMA.to_owned(),
            pool_size: Self::DEFAULT_POOL_SIZE,
            connect_timeout: Self::DEFAULT_CONNECT_TIMEOUT,
            acquire_timeout: Self::DEFAULT_ACQUIRE_TIMEOUT,
            operation_timeout: Self::DEFAULT_OPERATION_TIMEOUT,
        }
    }

    /// Sets [`Self::schema`].
    pub fn with_schema(mut self, schema: impl Into<String>) -> Self {
        self.schema = schema.into();
        self
    }

    /// Sets [`Self::pool_size`].
    pub fn with_pool_size(mut self, pool_size: usize) -> Self {
        self.pool_size = pool_size;
        self
    }

    /// Sets [`Self::connect_timeout`].
    pub fn with_connect_timeout(mut self, timeout: Duration) -> Self {
        self.connect_timeout = timeout;
        self
    }

    /// Sets [`Self::acquire_timeout`].
    pub fn with_acquire_timeout(mut self, timeout: Duration) -> Self {
        self.acquire_timeout = timeout;
        self
    }

    /// Sets [`Self::operation_timeout`].
    pub fn with_operation_timeout(mut self, timeout: Duration) -> Self {
        self.operation_timeout = timeout;
        self
    }

    /// [`Self::url`] with the password, if any, replaced by `***`: safe to log or print.
    pub fn redacted_url(&self) -> String {
        redact(&self.url)
    }

    /// The driver's configuration, after refusing settings that cannot work.
    pub(crate) fn driver_config(&self) -> Result<tokio_postgres::Config, OpenError> {
        if self.pool_size == 0 {
            return Err(OpenError::InvalidConfig(
                "pool_size must be at least 1".into(),
            ));
        }
        if !is_plain_identifier(&self.schema) {
            return Err(OpenError::InvalidConfig(format!(
                "schema {:?} is not a plain identifier (letters, digits and _, not starting \
                 with a digit, at most 63 bytes)",
                self.schema
            )));
        }
        for (name, timeout) in [
            ("connect_timeout", self.connect_timeout),
            ("acquire_timeout", self.acquire_timeout),
            ("operation_timeout", self.operation_timeout),
        ] {
            if timeout.is_zero() {
                return Err(OpenError::InvalidConfig(format!("{name} must not be zero")));
            }
        }
        // The driver's own message names the bad part without echoing the password.
        let mut config = tokio_postgres::Config::from_str(&self.url).map_err(|error| {
            OpenError::InvalidConfig(format!(
                "the URL {} is invalid: {error}",
                self.redacted_url()
            ))
        })?;
        if config.get_ssl_mode() == SslMode::Require {
            return Err(OpenError::InvalidConfig(
                "sslmode=require: this build of the store has no TLS support".into(),
            ));
        }
        if config.get_connect_timeout().is_none() {
            config.connect_timeout(self.connect_timeout);
        }
        if config.get_application_name().is_none() {
            config.application_name("angzarr");
        }
        Ok(config)
    }
}

impl fmt::Debug for PostgresConfig {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("PostgresConfig")
            .field("url", &self.redacted_url())
            .field("schema", &self.schema)
            .field("pool_size", &self.pool_size)
            .field("connect_timeout", &self.connect_timeout)
            .field("acquire_timeout", &self.acquire_timeout)
            .field("operation_timeout", &self.operation_timeout)
            .finish()
    }
}

/// Whether `name` can name a schema without surprises: it is quoted in every statement
/// anyway, so this only keeps names readable and within PostgreSQL's 63 bytes.
fn is_plain_identifier(name: &str) -> bool {
    let mut chars = name.chars();
    name.len() <= 63
        && chars
            .next()
            .is_some_and(|first| first.is_ascii_alphabetic() || first == '_')
        && chars.all(|c| c.is_ascii_alphanumeric() || c == '_')
}

/// A connection string with its password masked, in both the URL and the `key=value` forms.
fn redact(url: &str) -> String {
    let Some((scheme, rest)) = ["postgres://", "postgresql://"]
        .iter()
        .find_map(|scheme| url.strip_prefix(scheme).map(|rest| (*scheme, rest)))
    else {
        return redact_pairs(url);
    };
    // As libpq and the driver read it: the credentials run to the first `@`.
    let (credentials, rest) = match rest.split_once('@') {
        Some((credentials, rest)) => {
            let credentials = match credentials.split_once(':') {
                Some((user, _)) => format!("{user}:***@"),
                None => format!("{credentials}@"),
            };
            (credentials, rest)
        }
        None => (String::new(), rest),
    };
    let rest = match rest.split_once('?') {
        Some((path, query)) => {
            let params: Vec<String> = query
                .split('&')
                .map(|param| match param.split_once('=') {
                    Some(("password", _)) => "password=***".to_owned(),
                    _ => param.to_owned(),
                })
                .collect();
            format!("{path}?{}", params.join("&"))
        }
        None => rest.to_owned(),
    };
    format!("{scheme}{credentials}{rest}")
}

/// `key=value` pairs with the value of `password` masked. Values may be quoted (`'a b'`,
/// with `\'` and `\\` escapes), and spaces may surround `=`.
fn redact_pairs(pairs: &str) -> String {
    let mut out = String::with_capacity(pairs.len());
    let mut rest = pairs;
    loop {
        let trimmed = rest.trim_start();
        out.push_str(&rest[..rest.len() - trimmed.len()]);
        rest = trimmed;
        if rest.is_empty() {
            return out;
        }
        let key_end = rest
            .find(|c: char| c == '=' || c.is_whitespace())
            .unwrap_or(rest.len());
        let key = &rest[..key_end];
        let after_key = &rest[key_end..];
        let after_eq = after_key.trim_start();
        let Some(value_start) = after_eq.strip_prefix('=') else {
            // Not a pair: keep it as it is.
            out.push_str(rest);
            return out;
        };
        let value = value_start.trim_start();
        let value_len = if let Some(quoted) = value.strip_prefix('\'') {
            let mut escaped = false;
            let close = quoted.char_indices().find(|(_, c)| {
                let closes = *c == '\'' && !escaped;
                escaped = *c == '\\' && !escaped;
                closes
            });
            close.map_or(value.len(), |(at, _)| at + 2)
        } else {
            value.find(char::is_whitespace).unwrap_or(value.len())
        };
        out.push_str(&rest[..rest.len() - value.len()]);
        if key == "password" {
            out.push_str("***");
        } else {
            out.push_str(&value[..value_len]);
        }
        rest = &value[value_len..];
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn passwords_are_masked_in_every_form() {
        for (url, redacted) in [
            (
                "postgres://user:s3cret@host:5432/db",
                "postgres://user:***@host:5432/db",
            ),
            (
                "postgresql://user:p%40ss:w@host/db?password=x&sslmode=disable",
                "postgresql://user:***@host/db?password=***&sslmode=disable",
            ),
            ("postgres://user@host/db", "postgres://user@host/db"),
            ("postgres://host/db", "postgres://host/db"),
            (
                "host=h password=s3cret user=u",
                "host=h password=*** user=u",
            ),
            (
                "host=h password = 'a \\' b' dbname=d",
                "host=h password = *** dbname=d",
            ),
            ("host=h password=", "host=h password=***"),
        ] {
            assert_eq!(redact(url), redacted, "{url}");
        }
        let config = PostgresConfig::new("postgres://u:hunter2@h/d");
        assert!(!format!("{config:?}").contains("hunter2"));
    }

    #[test]
    fn settings_that_cannot_work_are_refused() {
        let good = PostgresConfig::new("postgres://u@127.0.0.1/d");
        assert!(good.driver_config().is_ok());
        for bad in [
            good.clone().with_pool_size(0),
            good.clone().with_schema(""),
            good.clone().with_schema("1st"),
            good.clone().with_schema("a-b"),
            good.clone().with_schema("s".repeat(64)),
            good.clone().with_operation_timeout(Duration::ZERO),
            PostgresConfig::new("postgres://u:pw@h/d?sslmode=require"),
            PostgresConfig::new("postgres://u:pw@h/d?nonsense=1"),
        ] {
            let error = bad.driver_config().expect_err("refused");
            assert!(
                matches!(error, OpenError::InvalidConfig(_)),
                "{bad:?}: {error}"
            );
            assert!(!error.to_string().contains("pw@"), "{error}");
        }
        assert!(good.with_schema("Ns_9").driver_config().is_ok());
    }
}

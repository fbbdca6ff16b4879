//! The tables, their migrations, and how a store brings a database up to date when it opens.

use tokio_postgres::Client;

use crate::error::OpenError;
use crate::keys;

/// `MIGRATIONS[n]` takes a schema from version `n` (the `schema_version` table's) to `n + 1`.
/// `{schema}` stands for the quoted schema name. Append only: a released migration never
/// changes.
const MIGRATIONS: &[&str] = &[V1];

/// The schema version this crate writes.
pub(crate) const VERSION: i32 = MIGRATIONS.len() as i32;

/// The first schema. See the README for the reasons behind each choice.
const V1: &str = r#"
CREATE TABLE {schema}.events (
    domain         text COLLATE "C" NOT NULL,
    root           uuid   NOT NULL,
    sequence       bigint NOT NULL CHECK (sequence >= 0),
    correlation_id bytea  NOT NULL,   -- copy of the page's, for its index
    request_id     bytea,             -- NULL when the append had none
    request_digest bytea,             -- the command's 32-byte digest, with request_id
    page           bytea  NOT NULL,   -- the whole EventPage, protobuf-encoded
    -- The appending transaction: the global position of the projection feed to come.
    transaction_id xid8   NOT NULL DEFAULT pg_current_xact_id(),
    PRIMARY KEY (domain, root, sequence),
    CHECK ((request_id IS NULL) = (request_digest IS NULL)),
    CHECK (octet_length(request_digest) = 32)
);

CREATE INDEX events_by_correlation ON {schema}.events (correlation_id, domain, root, sequence)
    WHERE correlation_id <> ''::bytea;

CREATE INDEX events_by_request ON {schema}.events (domain, root, request_id, sequence)
    WHERE request_id IS NOT NULL;

CREATE TABLE {schema}.snapshots (
    domain   text COLLATE "C" NOT NULL,
    root     uuid   NOT NULL,
    sequence bigint NOT NULL, -- informational: the encoded snapshot is authoritative
    state    bytea  NOT NULL, -- the whole Snapshot, protobuf-encoded
    PRIMARY KEY (domain, root)
);
"#;

/// The table that records the schema's version: one row.
const VERSION_TABLE: &str = "
CREATE TABLE IF NOT EXISTS {schema}.schema_version (
    version integer NOT NULL,
    one_row boolean PRIMARY KEY DEFAULT true CHECK (one_row)
)";

/// The first key of the advisory lock that serializes migrations ("angz"); the second is a
/// hash of the schema name, so that stores in different schemas do not wait for each other.
/// It is a session lock taken before the migration's transaction begins, not a transaction
/// lock: a transaction that waited for a lock may still see the catalog as it was before
/// (PostgreSQL reads the invalidations of committed DDL when a transaction starts or locks a
/// table, not when it gets an advisory lock), and would miss the tables another server made.
const LOCK_CLASS: i32 = 0x616e_677a;

/// The oldest server with `xid8` and `pg_current_xact_id()`.
const MIN_SERVER_VERSION: i32 = 130_000;

/// `template` with `{schema}` replaced by the quoted name of `schema`.
pub(crate) fn with_schema(template: &str, schema: &str) -> String {
    template.replace("{schema}", &keys::quote_identifier(schema))
}

/// Brings `schema` to [`VERSION`], creating it if needed.
///
/// An up-to-date schema costs two reads. Otherwise the migration runs in one transaction, so a
/// crash leaves the previous version, under an advisory lock, so that servers starting
/// together migrate one after the other: the second finds the work done. `client` is the
/// store's own, closed after this, which releases the lock whatever happens.
pub(crate) async fn migrate(client: &mut Client, schema: &str) -> Result<(), MigrateError> {
    let server: i32 = client
        .query_one("SELECT current_setting('server_version_num')::integer", &[])
        .await?
        .try_get(0)?;
    if server < MIN_SERVER_VERSION {
        return Err(OpenError::ServerTooOld { found: server }.into());
    }
    if check(version(client, schema).await?)? {
        return Ok(());
    }
    client
        .execute(
            "SELECT pg_advisory_lock($1, hashtext($2))",
            &[&LOCK_CLASS, &schema],
        )
        .await?;
    let tx = client.transaction().await?;
    let found = version(&tx, schema).await?;
    if check(found)? {
        return Ok(());
    }
    let exists: bool = tx
        .query_one(
            "SELECT EXISTS (SELECT 1 FROM pg_namespace WHERE nspname = $1)",
            &[&schema],
        )
        .await?
        .try_get(0)?;
    if !exists {
        // Only when missing: CREATE SCHEMA IF NOT EXISTS needs the CREATE privilege on the
        // database even when the schema exists.
        tx.batch_execute(&with_schema("CREATE SCHEMA {schema}", schema))
            .await?;
    }
    tx.batch_execute(&with_schema(VERSION_TABLE, schema))
        .await?;
    // `found` is within 0..VERSION here.
    for migration in &MIGRATIONS[usize::try_from(found).unwrap_or_default()..] {
        tx.batch_execute(&with_schema(migration, schema)).await?;
    }
    tx.execute(
        &with_schema(
            "INSERT INTO {schema}.schema_version (version) VALUES ($1)
             ON CONFLICT (one_row) DO UPDATE SET version = excluded.version",
            schema,
        ),
        &[&VERSION],
    )
    .await?;
    tx.commit().await?;
    client
        .execute(
            "SELECT pg_advisory_unlock($1, hashtext($2))",
            &[&LOCK_CLASS, &schema],
        )
        .await?;
    tracing::info!(
        schema,
        from = found,
        to = VERSION,
        "migrated the PostgreSQL store's schema"
    );
    Ok(())
}

/// Whether a schema at version `found` is up to date; an error if it is newer than this crate.
fn check(found: i32) -> Result<bool, OpenError> {
    if found > VERSION {
        return Err(OpenError::SchemaTooNew {
            found,
            supported: VERSION,
        });
    }
    Ok(found == VERSION)
}

/// The version of `schema`: 0 if the schema or its version table does not exist.
async fn version(
    client: &impl tokio_postgres::GenericClient,
    schema: &str,
) -> Result<i32, tokio_postgres::Error> {
    let table = with_schema("{schema}.schema_version", schema);
    let exists: Option<String> = client
        .query_one("SELECT to_regclass($1)::text", &[&table])
        .await?
        .try_get(0)?;
    if exists.is_none() {
        return Ok(0);
    }
    let row = client
        .query_opt(
            &with_schema("SELECT version FROM {schema}.schema_version", schema),
            &[],
        )
        .await?;
    row.map_or(Ok(0), |row| row.try_get(0))
}

/// Why a migration failed: the server's error, or what the store refuses.
#[derive(Debug)]
pub(crate) enum MigrateError {
    /// A statement failed.
    Postgres(tokio_postgres::Error),
    /// The server or the schema is not one this crate can use.
    Refused(OpenError),
}

impl From<tokio_postgres::Error> for MigrateError {
    fn from(error: tokio_postgres::Error) -> Self {
        Self::Postgres(error)
    }
}

impl From<OpenError> for MigrateError {
    fn from(error: OpenError) -> Self {
        Self::Refused(error)
    }
}

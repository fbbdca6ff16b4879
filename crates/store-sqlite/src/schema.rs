//! The database layout, its migrations, and the settings of every connection.

use std::path::Path;
use std::time::Duration;

use rusqlite::{Connection, OpenFlags, TransactionBehavior};

use crate::config::{SqliteConfig, Synchronous};
use crate::error::OpenError;

/// `MIGRATIONS[n]` takes a database from schema version `n` (its `PRAGMA user_version`) to
/// `n + 1`. Append only: a released migration never changes.
const MIGRATIONS: &[&str] = &[V1, V2];

/// The schema version this crate writes.
pub(crate) const VERSION: i64 = MIGRATIONS.len() as i64;

/// The first schema. See the README for the reasons behind each choice.
pub(crate) const V1: &str = "
CREATE TABLE events (
    domain         TEXT    NOT NULL,
    root           TEXT    NOT NULL, -- lowercase hyphenated UUID
    sequence       INTEGER NOT NULL,
    correlation_id TEXT    NOT NULL, -- copy of the page's, for its index
    request_id     TEXT,
    page           BLOB    NOT NULL, -- the whole EventPage, protobuf-encoded
    PRIMARY KEY (domain, root, sequence)
) WITHOUT ROWID, STRICT;

CREATE INDEX events_by_correlation ON events (correlation_id) WHERE correlation_id <> '';

CREATE INDEX events_by_request ON events (domain, root, request_id) WHERE request_id IS NOT NULL;

CREATE TABLE snapshots (
    domain   TEXT    NOT NULL,
    root     TEXT    NOT NULL,
    sequence INTEGER NOT NULL, -- informational: the encoded snapshot is authoritative
    state    BLOB    NOT NULL, -- the whole Snapshot, protobuf-encoded
    PRIMARY KEY (domain, root)
) WITHOUT ROWID, STRICT;
";

/// The digest of the command each request id came from, so that the id reused for another
/// command can be refused. NULL for events written before: their command is unknown.
const V2: &str = "
ALTER TABLE events ADD COLUMN request_digest BLOB; -- 32 bytes when request_id is set
";

/// The WAL file is truncated back to this size after a checkpoint, rather than keeping the
/// size of the largest group commit forever.
const JOURNAL_SIZE_LIMIT: i64 = 64 * 1024 * 1024;

/// Opens (creating if needed) and migrates the database, and returns the connection that will
/// do every write.
pub(crate) fn open_writer(config: &SqliteConfig) -> Result<Connection, OpenError> {
    let flags = OpenFlags::SQLITE_OPEN_READ_WRITE
        | OpenFlags::SQLITE_OPEN_CREATE
        | OpenFlags::SQLITE_OPEN_NO_MUTEX;
    // Without SQLITE_OPEN_URI, a path that looks like `file:...` is a file name, not a URI.
    let mut conn = Connection::open_with_flags(&config.path, flags)?;
    conn.busy_timeout(config.busy_timeout)?;
    // WAL lets readers run during a write and makes a commit one sequential append (and one
    // fsync) to the log. The mode is stored in the file.
    let mode: String =
        conn.pragma_update_and_check(None, "journal_mode", "WAL", |row| row.get(0))?;
    if !mode.eq_ignore_ascii_case("wal") {
        return Err(OpenError::NoWal(mode));
    }
    conn.pragma_update(None, "synchronous", config.synchronous.pragma_value())?;
    // On macOS fsync does not flush the drive's cache and F_FULLFSYNC does; elsewhere a no-op.
    conn.pragma_update(None, "fullfsync", config.synchronous == Synchronous::Full)?;
    conn.pragma_update(None, "journal_size_limit", JOURNAL_SIZE_LIMIT)?;
    migrate(&mut conn)?;
    Ok(conn)
}

/// Opens one more connection for reads on the database that [`open_writer`] set up.
pub(crate) fn open_reader(path: &Path, busy_timeout: Duration) -> rusqlite::Result<Connection> {
    // Read-write at the SQLite level because WAL readers update the shared-memory index;
    // `query_only` makes sure this connection never changes the database.
    let flags = OpenFlags::SQLITE_OPEN_READ_WRITE | OpenFlags::SQLITE_OPEN_NO_MUTEX;
    let conn = Connection::open_with_flags(path, flags)?;
    conn.busy_timeout(busy_timeout)?;
    conn.pragma_update(None, "query_only", true)?;
    Ok(conn)
}

/// Brings the schema to [`VERSION`], in one transaction so that a crash leaves the previous
/// version, and under the write lock so that two processes opening the file do not both
/// migrate it.
fn migrate(conn: &mut Connection) -> Result<(), OpenError> {
    let tx = conn.transaction_with_behavior(TransactionBehavior::Immediate)?;
    let found: i64 = tx.pragma_query_value(None, "user_version", |row| row.get(0))?;
    let applied = usize::try_from(found)
        .ok()
        .filter(|applied| *applied <= MIGRATIONS.len())
        .ok_or(OpenError::SchemaTooNew {
            found,
            supported: VERSION,
        })?;
    if applied == MIGRATIONS.len() {
        return Ok(());
    }
    for migration in &MIGRATIONS[applied..] {
        tx.execute_batch(migration)?;
    }
    tx.pragma_update(None, "user_version", VERSION)?;
    tx.commit()?;
    tracing::info!(
        from = found,
        to = VERSION,
        "migrated the SQLite store's schema"
    );
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_newer_schema_is_refused_and_the_current_one_is_left_alone() {
        let dir = tempfile::tempdir().unwrap();
        let config = SqliteConfig::in_dir(dir.path());
        drop(open_writer(&config).unwrap());
        // Reopening at the current version migrates nothing.
        let conn = open_writer(&config).unwrap();
        let version: i64 = conn
            .pragma_query_value(None, "user_version", |row| row.get(0))
            .unwrap();
        assert_eq!(version, VERSION);
        conn.pragma_update(None, "user_version", VERSION + 1)
            .unwrap();
        drop(conn);
        assert!(matches!(
            open_writer(&config),
            Err(OpenError::SchemaTooNew { found, supported: VERSION }) if found == VERSION + 1
        ));
    }
}

//! [`SqliteStore`]: the ports over one SQLite file.

use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use angzarr_ports::{
    AggregateEvents, AggregateId, Append, Domain, EventPage, EventStore, EventStoreError,
    RequestRecord, SequenceRange, Snapshot, SnapshotStore, SnapshotStoreError, StoreCapabilities,
    Uuid, async_trait, validate_append,
};
use prost::Message;
use rusqlite::Connection;

use crate::config::SqliteConfig;
use crate::error::{Failure, OpenError};
use crate::schema;
use crate::sql;
use crate::writer::{Batch, Job, Writer};

/// No limit on batches or events (SQLite's own limit on one value, 1 GB, is far beyond any
/// sensible event), and one global order: SQLite has a single writer, and appends become
/// visible in the order they commit.
const CAPABILITIES: StoreCapabilities = StoreCapabilities::UNLIMITED.with_global_order(true);

/// An [`EventStore`] and [`SnapshotStore`] in one SQLite file: durable, embedded, and safe to
/// share between tasks (`Arc<SqliteStore>`).
///
/// Writes are committed in groups on one connection, by the caller that finds no commit in
/// progress; reads run on the blocking thread pool, each with a connection of its own. See the crate documentation for the
/// guarantees and the design.
///
/// Dropping the store waits for the writes already queued to be committed; in async code
/// prefer [`SqliteStore::close`], which waits without blocking the runtime.
#[derive(Debug)]
pub struct SqliteStore {
    writer: Writer,
    readers: Arc<ReadPool>,
}

impl SqliteStore {
    /// Opens the database at `config.path`, creating or migrating it as needed.
    ///
    /// This blocks on file I/O (and on another process's lock, up to the busy timeout): call it
    /// at startup, or inside `spawn_blocking`.
    pub fn open(config: SqliteConfig) -> Result<Self, OpenError> {
        config.validate()?;
        let conn = schema::open_writer(&config)?;
        let writer = Writer::new(conn, &config)?;
        let readers = Arc::new(ReadPool {
            path: config.path,
            busy_timeout: config.busy_timeout,
            max_idle: config.read_pool_size,
            idle: Mutex::default(),
        });
        Ok(Self { writer, readers })
    }

    /// The database file.
    pub fn path(&self) -> &Path {
        &self.readers.path
    }

    /// Stops the store: waits, without blocking the runtime, until the writes already queued
    /// are committed, then closes every connection.
    pub async fn close(self) {
        self.writer.close().await;
    }

    /// Runs `read` on the blocking thread pool with a read connection.
    async fn read_with<T: Send + 'static>(
        &self,
        read: impl FnOnce(&mut Connection) -> Result<T, Failure> + Send + 'static,
    ) -> Result<T, Failure> {
        let pool = Arc::clone(&self.readers);
        tokio::task::spawn_blocking(move || pool.with(read))
            .await
            .map_err(|error| Failure::Internal(error.into()))?
    }

    /// Hands `job` to the writer and waits for its answer.
    #[cfg(test)]
    pub(crate) async fn submit<T>(
        &self,
        job: impl FnOnce(tokio::sync::oneshot::Sender<T>) -> Job,
    ) -> Result<T, Failure> {
        self.writer.submit(job).await
    }
}

/// Read connections. WAL lets any number of them read while the writer writes, each from the
/// snapshot of its own transaction.
#[derive(Debug)]
struct ReadPool {
    path: PathBuf,
    busy_timeout: Duration,
    /// How many idle connections are kept.
    max_idle: usize,
    idle: Mutex<Vec<Connection>>,
}

impl ReadPool {
    /// Runs `read` with an idle connection, or a new one if none is idle.
    fn with<T>(
        &self,
        read: impl FnOnce(&mut Connection) -> Result<T, Failure>,
    ) -> Result<T, Failure> {
        // Its own statement, so that the lock is not held while a connection is opened.
        let idle = self.idle().pop();
        let mut conn = match idle {
            Some(conn) => conn,
            None => schema::open_reader(&self.path, self.busy_timeout)?,
        };
        let result = read(&mut conn);
        // Every read leaves the connection as it found it (statements reset, transactions
        // ended), even when it fails, so the connection can be reused.
        let mut idle = self.idle();
        if idle.len() < self.max_idle {
            idle.push(conn);
        }
        result
    }

    fn idle(&self) -> MutexGuard<'_, Vec<Connection>> {
        // Push and pop cannot leave the vector half-changed, so a poisoned lock is still good.
        self.idle
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }
}

#[async_trait]
impl EventStore for SqliteStore {
    fn capabilities(&self) -> StoreCapabilities {
        CAPABILITIES
    }

    async fn append(
        &self,
        aggregate: &AggregateId,
        append: Append,
    ) -> Result<u64, EventStoreError> {
        validate_append(&append, &CAPABILITIES)?;
        let aggregate = aggregate.clone();
        let batch = Batch::encode(append);
        Ok(self
            .writer
            .submit(|reply| Job::Append {
                aggregate,
                batch,
                reply,
            })
            .await??)
    }

    async fn read(
        &self,
        aggregate: &AggregateId,
        range: SequenceRange,
    ) -> Result<Vec<EventPage>, EventStoreError> {
        let aggregate = aggregate.clone();
        Ok(self
            .read_with(move |conn| sql::read(conn, &aggregate, range))
            .await?)
    }

    async fn next_sequence(&self, aggregate: &AggregateId) -> Result<u64, EventStoreError> {
        let aggregate = aggregate.clone();
        Ok(self
            .read_with(move |conn| sql::next_sequence(conn, &crate::keys::aggregate(&aggregate)))
            .await?)
    }

    async fn list_roots(
        &self,
        domain: &Domain,
        after: Option<Uuid>,
        limit: usize,
    ) -> Result<Vec<Uuid>, EventStoreError> {
        if limit == 0 {
            return Ok(Vec::new());
        }
        let domain = domain.clone();
        Ok(self
            .read_with(move |conn| sql::list_roots(conn, &domain, after, limit))
            .await?)
    }

    async fn list_domains(&self) -> Result<Vec<Domain>, EventStoreError> {
        Ok(self.read_with(sql::list_domains).await?)
    }

    async fn find_by_correlation(
        &self,
        correlation_id: &str,
    ) -> Result<Vec<AggregateEvents>, EventStoreError> {
        if correlation_id.is_empty() {
            return Ok(Vec::new());
        }
        let correlation_id = correlation_id.to_owned();
        Ok(self
            .read_with(move |conn| sql::find_by_correlation(conn, &correlation_id))
            .await?)
    }

    async fn find_by_request(
        &self,
        aggregate: &AggregateId,
        request_id: &str,
    ) -> Result<Option<RequestRecord>, EventStoreError> {
        let aggregate = aggregate.clone();
        let request_id = request_id.to_owned();
        Ok(self
            .read_with(move |conn| sql::find_by_request(conn, &aggregate, &request_id))
            .await?)
    }
}

#[async_trait]
impl SnapshotStore for SqliteStore {
    async fn get(&self, aggregate: &AggregateId) -> Result<Option<Snapshot>, SnapshotStoreError> {
        let aggregate = aggregate.clone();
        Ok(self
            .read_with(move |conn| sql::get_snapshot(conn, &aggregate))
            .await?)
    }

    async fn put(
        &self,
        aggregate: &AggregateId,
        snapshot: Snapshot,
    ) -> Result<(), SnapshotStoreError> {
        let aggregate = aggregate.clone();
        let (sequence, state) = (snapshot.sequence, snapshot.encode_to_vec());
        Ok(self
            .writer
            .submit(|reply| Job::PutSnapshot {
                aggregate,
                sequence,
                state,
                reply,
            })
            .await??)
    }

    async fn delete(&self, aggregate: &AggregateId) -> Result<(), SnapshotStoreError> {
        let aggregate = aggregate.clone();
        Ok(self
            .writer
            .submit(|reply| Job::DeleteSnapshot { aggregate, reply })
            .await??)
    }
}

#[cfg(test)]
mod tests;

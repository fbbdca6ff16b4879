//! [`PostgresStore`]: the ports over one PostgreSQL schema.

use std::sync::Arc;
use std::time::Duration;

use angzarr_ports::{
    AggregateEvents, AggregateId, Append, Domain, EventPage, EventStore, EventStoreError,
    RequestRecord, SequenceRange, Snapshot, SnapshotStore, SnapshotStoreError, StoreCapabilities,
    Uuid, async_trait, validate_append,
};
use prost::Message;
use tokio::time::error::Elapsed;

use crate::config::PostgresConfig;
use crate::error::{AppendFailure, Failure, OpenError};
use crate::keys;
use crate::pool::{self, Manager, Pool, Pooled};
use crate::schema::{self, MigrateError};
use crate::sql::{self, Batch, Conn, Sql};

/// No limit on batches or events declared: a `bytea` value holds up to 1 GB, and a whole
/// batch travels in one message of at most 1 GB. No global order is promised either: see the
/// crate documentation for the order the projection feed will give instead.
const CAPABILITIES: StoreCapabilities = StoreCapabilities::UNLIMITED;

/// How many times an append is tried again after a serialization failure or a deadlock,
/// which leave nothing behind.
const RETRIES: u32 = 3;

/// An [`EventStore`] and [`SnapshotStore`] in one schema of a PostgreSQL database, over a pool
/// of connections: safe to share between tasks (`Arc<PostgresStore>`), and between processes
/// (several servers over one database).
///
/// Every operation is one prepared statement on a pooled connection, one round trip. See the
/// crate documentation for the schema and the guarantees.
#[derive(Debug)]
pub struct PostgresStore {
    pool: Pool,
    operation_timeout: Duration,
}

/// Runs `$operation`, an expression over `$conn: &Conn`, on a pooled connection within the
/// operation timeout; a connection that timed out leaves the pool.
macro_rules! on_connection {
    ($store:expr, |$conn:ident| $operation:expr) => {{
        let store: &PostgresStore = $store;
        let pooled = store.connection().await?;
        let outcome = {
            let $conn: &Conn = &pooled;
            tokio::time::timeout(store.operation_timeout, $operation).await
        };
        store.settle(pooled, outcome)
    }};
}

impl PostgresStore {
    /// Connects to the database of `config`, creates or migrates the schema as needed, and
    /// opens the pool (whose connections are opened on demand).
    ///
    /// Fails within the connect and operation timeouts if the server cannot be reached, the
    /// credentials are refused, or the schema is newer than this crate.
    pub async fn open(config: PostgresConfig) -> Result<Self, OpenError> {
        let driver = config.driver_config()?;
        let url = config.redacted_url();
        // A connection of its own: it checks the address and the credentials before the
        // store exists, and the pool's connections prepare statements over tables that must
        // exist first.
        let migrate = async {
            let mut client = pool::connect(&driver).await?;
            schema::migrate(&mut client, &config.schema).await
        };
        let deadline = config.connect_timeout + config.operation_timeout;
        match tokio::time::timeout(deadline, migrate).await {
            Err(Elapsed { .. }) => {
                return Err(OpenError::Timeout {
                    url,
                    after: deadline,
                });
            }
            Ok(Err(MigrateError::Postgres(source))) => {
                return Err(OpenError::Postgres { url, source });
            }
            Ok(Err(MigrateError::Refused(error))) => return Err(error),
            Ok(Ok(())) => {}
        }
        let manager = Manager::new(driver, Arc::new(Sql::new(&config.schema)));
        let pool = Pool::builder(manager)
            .max_size(config.pool_size)
            .wait_timeout(Some(config.acquire_timeout))
            .create_timeout(Some(config.connect_timeout))
            .runtime(deadpool::Runtime::Tokio1)
            .build()
            .map_err(|error| OpenError::InvalidConfig(error.to_string()))?;
        Ok(Self {
            pool,
            operation_timeout: config.operation_timeout,
        })
    }

    /// A connection from the pool: `Unavailable` if none can be had in time.
    async fn connection(&self) -> Result<Pooled, Failure> {
        Ok(self.pool.get().await?)
    }

    /// The result of an operation on `pooled`; one that timed out drops the connection,
    /// which may still be waiting for the answer (or for a dead peer).
    fn settle<T>(
        &self,
        pooled: Pooled,
        outcome: Result<Result<T, Failure>, Elapsed>,
    ) -> Result<T, Failure> {
        outcome.unwrap_or_else(|_| {
            drop(Pooled::take(pooled));
            Err(Failure::timed_out(self.operation_timeout))
        })
    }

    /// Runs the append statement until it gives a definite answer or may have been applied.
    async fn try_append(
        &self,
        aggregate: &AggregateId,
        (expected_sequence, expected): (u64, i64),
        batch: &Batch,
    ) -> Result<u64, EventStoreError> {
        let mut retries = 0;
        loop {
            // Nothing has been sent before this succeeds: a failure here is `Unavailable`.
            let pooled = self.connection().await?;
            let outcome = tokio::time::timeout(
                self.operation_timeout,
                sql::append(&pooled, aggregate, expected, batch),
            )
            .await;
            match outcome {
                Ok(Ok(inserted)) if inserted > 0 => {
                    return Ok(expected_sequence + batch.len() as u64);
                }
                // The check refused it: the stream does not end at the expected sequence.
                Ok(Ok(_)) => {}
                Ok(Err(error)) => match AppendFailure::of(&error) {
                    // Another writer stored one of the batch's sequences first; the insert
                    // waited for it to commit.
                    AppendFailure::Conflict => {}
                    AppendFailure::Retry if retries < RETRIES => {
                        retries += 1;
                        tracing::debug!(%error, retries, "retrying an append");
                        continue;
                    }
                    AppendFailure::Retry => {
                        return Err(EventStoreError::Unavailable(Box::new(error)));
                    }
                    AppendFailure::Failed(kind) => {
                        return Err(kind.failure(Box::new(error)).into());
                    }
                    AppendFailure::Unknown => {
                        drop(Pooled::take(pooled));
                        return Err(EventStoreError::OutcomeUnknown(Box::new(error)));
                    }
                },
                Err(Elapsed { .. }) => {
                    drop(Pooled::take(pooled));
                    return Err(EventStoreError::OutcomeUnknown(
                        format!(
                            "PostgreSQL gave no answer to the append within {:?}",
                            self.operation_timeout
                        )
                        .into(),
                    ));
                }
            }
            // A conflict: nothing was written. A fresh read sees where the stream ends now,
            // the writers that got there first included.
            let outcome = tokio::time::timeout(
                self.operation_timeout,
                sql::next_sequence(&pooled, aggregate),
            )
            .await;
            let actual = self.settle(pooled, outcome)?;
            if actual == expected_sequence && retries < RETRIES {
                // The stream was short of the expected sequence when the check ran, and
                // another writer has brought it there since: the append may go in now.
                retries += 1;
                continue;
            }
            return Err(EventStoreError::Conflict {
                expected: expected_sequence,
                actual,
            });
        }
    }
}

#[async_trait]
impl EventStore for PostgresStore {
    fn capabilities(&self) -> StoreCapabilities {
        CAPABILITIES
    }

    async fn append(
        &self,
        aggregate: &AggregateId,
        append: Append,
    ) -> Result<u64, EventStoreError> {
        validate_append(&append, &CAPABILITIES)?;
        let expected = append.expected_sequence;
        // `validate_append` checked that the last sequence is a u64.
        let last = expected + (append.events.len() as u64 - 1);
        let Some(expected_i64) =
            keys::sequence(expected).filter(|_| keys::sequence(last).is_some())
        else {
            // No event is stored beyond i64::MAX: as in the model, this is a conflict unless
            // the stream really ends at `expected` (2^63 events, which no stream reaches).
            let actual = self.next_sequence(aggregate).await?;
            return Err(if actual == expected {
                EventStoreError::InvalidArgument(format!(
                    "sequence {last} is beyond the largest the store keeps, {}",
                    i64::MAX
                ))
            } else {
                EventStoreError::Conflict { expected, actual }
            });
        };
        let batch = Batch::encode(append.events, append.request);
        self.try_append(aggregate, (expected, expected_i64), &batch)
            .await
    }

    async fn read(
        &self,
        aggregate: &AggregateId,
        range: SequenceRange,
    ) -> Result<Vec<EventPage>, EventStoreError> {
        Ok(on_connection!(self, |conn| sql::read(
            conn, aggregate, range
        ))?)
    }

    async fn next_sequence(&self, aggregate: &AggregateId) -> Result<u64, EventStoreError> {
        Ok(on_connection!(self, |conn| sql::next_sequence(
            conn, aggregate
        ))?)
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
        Ok(on_connection!(self, |conn| sql::list_roots(
            conn, domain, after, limit
        ))?)
    }

    async fn list_domains(&self) -> Result<Vec<Domain>, EventStoreError> {
        Ok(on_connection!(self, |conn| sql::list_domains(conn))?)
    }

    async fn find_by_correlation(
        &self,
        correlation_id: &str,
    ) -> Result<Vec<AggregateEvents>, EventStoreError> {
        if correlation_id.is_empty() {
            return Ok(Vec::new());
        }
        Ok(on_connection!(self, |conn| sql::find_by_correlation(
            conn,
            correlation_id
        ))?)
    }

    async fn find_by_request(
        &self,
        aggregate: &AggregateId,
        request_id: &str,
    ) -> Result<Option<RequestRecord>, EventStoreError> {
        Ok(on_connection!(self, |conn| sql::find_by_request(
            conn, aggregate, request_id
        ))?)
    }
}

#[async_trait]
impl SnapshotStore for PostgresStore {
    async fn get(&self, aggregate: &AggregateId) -> Result<Option<Snapshot>, SnapshotStoreError> {
        Ok(on_connection!(self, |conn| sql::get_snapshot(
            conn, aggregate
        ))?)
    }

    /// A put whose answer is lost is reported `Unavailable` although it may have been
    /// applied: the port has no unknown outcome for snapshots, and a snapshot is a cache.
    async fn put(
        &self,
        aggregate: &AggregateId,
        snapshot: Snapshot,
    ) -> Result<(), SnapshotStoreError> {
        CAPABILITIES.check_snapshot(&snapshot)?;
        let state = snapshot.encode_to_vec();
        Ok(on_connection!(self, |conn| sql::put_snapshot(
            conn,
            aggregate,
            snapshot.sequence,
            &state
        ))?)
    }

    async fn delete(&self, aggregate: &AggregateId) -> Result<(), SnapshotStoreError> {
        Ok(on_connection!(self, |conn| sql::delete_snapshot(
            conn, aggregate
        ))?)
    }
}

#[cfg(test)]
mod tests;

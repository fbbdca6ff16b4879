//! [`SpannerStore`]: the ports over one Spanner database.

use std::fmt;
use std::sync::Arc;
use std::time::{Duration, Instant};

use angzarr_ports::{
    AggregateEvents, AggregateId, Append, Domain, EventPage, EventStore, EventStoreError,
    RequestRecord, SequenceRange, Snapshot, SnapshotStore, SnapshotStoreError, StoreCapabilities,
    Uuid, async_trait, validate_append,
};
use gcloud_gax::conn::Environment;
use gcloud_gax::grpc::{Code, Status};
use gcloud_gax::retry::RetrySetting;
use gcloud_googleapis::spanner::v1::Mutation;
use gcloud_spanner::client::{ChannelConfig, Client, ClientConfig};
use gcloud_spanner::key::{Key, KeyRange, KeySet, RangeKind};
use gcloud_spanner::mutation::{delete, insert, insert_or_update};
use gcloud_spanner::row::Row;
use gcloud_spanner::statement::Statement;
use gcloud_spanner::transaction::{CallOptions, ReadOptions};
use gcloud_spanner::transaction_rw::{CommitOptions, ReadWriteTransaction};
use gcloud_spanner::value::CommitTimestamp;
use prost::Message;

use crate::config::{Endpoint, SpannerConfig};
use crate::error::{CommitOutcome, Failure, OpenError, is_abort};
use crate::{keys, schema};

/// The columns of an event row, in the order [`event_mutations`] gives their values.
const EVENT_COLUMNS: [&str; 10] = [
    "namespace",
    "domain",
    "root",
    "sequence",
    "correlation_hash",
    "request_hash",
    "request_id",
    "request_digest",
    "page",
    "committed_at",
];

/// An [`EventStore`] and [`SnapshotStore`] in one Spanner database, under one namespace.
///
/// Cheap to clone (clones share one client and its session pool), and safe to share between
/// processes: every guarantee holds across them. See the crate documentation for the schema.
#[derive(Clone)]
pub struct SpannerStore {
    inner: Arc<Inner>,
}

struct Inner {
    client: Client,
    database: String,
    namespace: String,
    capabilities: StoreCapabilities,
    operation_timeout: Duration,
    max_attempts: u32,
    retry_deadline: Duration,
}

impl fmt::Debug for SpannerStore {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("SpannerStore")
            .field("database", &self.inner.database)
            .field("namespace", &self.inner.namespace)
            .finish_non_exhaustive()
    }
}

/// What one try of an append came to.
enum Attempt {
    /// A definite answer (success, conflict, failure) or an unknown outcome.
    Done(Result<u64, EventStoreError>),
    /// Spanner aborted the transaction: nothing was written, it may be tried again.
    Aborted(Status),
}

/// What a read reads: a table, or one of its indexes, and how many rows at most.
#[derive(Clone, Copy)]
struct Table {
    name: &'static str,
    index: &'static str,
    /// At most this many rows; 0 for all.
    limit: i64,
}

impl Table {
    const EVENTS: Self = Self::named("events");
    const STREAMS: Self = Self::named("streams");
    const DOMAINS: Self = Self::named("domains");
    const BY_CORRELATION: Self = Self {
        index: "events_by_correlation",
        ..Self::EVENTS
    };
    const BY_REQUEST: Self = Self {
        index: "events_by_request",
        ..Self::EVENTS
    };

    const fn named(name: &'static str) -> Self {
        Self {
            name,
            index: "",
            limit: 0,
        }
    }
}

/// How an endpoint is shown in errors.
pub(crate) fn describe(endpoint: &Endpoint) -> String {
    match endpoint {
        Endpoint::Cloud => "spanner.googleapis.com".to_owned(),
        Endpoint::Emulator(host) => format!("the emulator at {host}"),
        Endpoint::Custom(url) => url.clone(),
    }
}

impl SpannerStore {
    /// Connects to the database of `config` (creating the instance, database and schema
    /// first if [`SpannerConfig::create_if_missing`] says so and they are missing) and checks
    /// its schema.
    ///
    /// Fails within the connect and operation timeouts (plus the time Spanner takes to create
    /// what is missing) if the endpoint cannot be reached, there are no credentials, they are
    /// refused, or the database or its schema is missing.
    pub async fn open(config: SpannerConfig) -> Result<Self, OpenError> {
        config.validate()?;
        let endpoint = describe(&config.endpoint);
        let deadline = config.connect_timeout + config.operation_timeout;
        if config.create_if_missing {
            // Schema changes are long-running operations: minutes on Google Cloud.
            let allowance = deadline + SCHEMA_CHANGE_ALLOWANCE;
            let ensure = async {
                let environment = environment(&config).await?;
                schema::ensure(&config, environment).await
            };
            tokio::time::timeout(allowance, ensure)
                .await
                .map_err(|_| OpenError::Timeout {
                    endpoint: endpoint.clone(),
                    after: allowance,
                })??;
        }
        let connect = async {
            let client = Self::client(&config).await?;
            check_schema(&client, &config).await?;
            Ok::<_, OpenError>(client)
        };
        let client = tokio::time::timeout(deadline, connect)
            .await
            .map_err(|_| OpenError::Timeout {
                endpoint,
                after: deadline,
            })??;
        let capabilities = StoreCapabilities::UNLIMITED
            .with_max_batch_len(config.max_batch_len)
            .with_max_event_bytes(config.max_event_bytes)
            .with_max_snapshot_bytes(config.max_snapshot_bytes);
        Ok(Self {
            inner: Arc::new(Inner {
                client,
                database: config.database_path(),
                namespace: config.namespace,
                capabilities,
                operation_timeout: config.operation_timeout,
                max_attempts: config.max_attempts,
                retry_deadline: config.retry_deadline,
            }),
        })
    }

    async fn client(config: &SpannerConfig) -> Result<Client, OpenError> {
        let mut client_config = ClientConfig {
            channel_config: ChannelConfig {
                num_channels: config.channels,
                connect_timeout: config.connect_timeout,
                timeout: config.operation_timeout,
                ..ChannelConfig::default()
            },
            ..ClientConfig::default()
        };
        // A few sessions at start (which checks the database and the credentials), the
        // rest on demand.
        client_config.session_config.min_opened = config.channels;
        client_config.session_config.max_opened = config.channels * 100;
        client_config.session_config.session_get_timeout = config.operation_timeout;
        if let Endpoint::Custom(url) = &config.endpoint {
            client_config.endpoint = url.clone();
        }
        client_config.environment = environment(config).await?;
        let database = config.database_path();
        Client::new(database.clone(), client_config)
            .await
            .map_err(|error| match error {
                gcloud_spanner::client::Error::Connection(source) => OpenError::Connect {
                    endpoint: describe(&config.endpoint),
                    source: Box::new(source),
                },
                other => OpenError::Refused {
                    database,
                    source: Box::new(other),
                },
            })
    }

    fn ns(&self) -> &String {
        &self.inner.namespace
    }

    /// The key of `aggregate` in `streams` and `snapshots`.
    fn key(&self, aggregate: &AggregateId) -> Key {
        Key::composite(&[
            self.ns(),
            &aggregate.domain().as_str(),
            &keys::root(aggregate),
        ])
    }

    /// Runs `work` within the operation timeout.
    async fn timed<T>(&self, work: impl Future<Output = Result<T, Failure>>) -> Result<T, Failure> {
        let after = self.inner.operation_timeout;
        tokio::time::timeout(after, work)
            .await
            .unwrap_or_else(|_| Err(Failure::timed_out(after)))
    }

    /// Reads the rows of `keys` from `table` in a single-use strong read, handing each to
    /// `each`, in key order.
    async fn read_rows(
        &self,
        table: Table,
        columns: &[&str],
        keys: KeySet,
        mut each: impl FnMut(Row) -> Result<(), Failure> + Send,
    ) -> Result<(), Failure> {
        // The operation timeout bounds the wait for the first rows and between rows, not the
        // whole stream: a long stream takes longer to send than any one request should.
        let mut transaction = self
            .timed(async { Ok(self.inner.client.single().await?) })
            .await?;
        let options = ReadOptions {
            index: table.index.to_owned(),
            limit: table.limit,
            call_options: CallOptions::default(),
        };
        let mut rows = self
            .timed(async {
                Ok(transaction
                    .read_with_option(table.name, columns, keys, options)
                    .await?)
            })
            .await?;
        while let Some(row) = self.timed(async { Ok(rows.next().await?) }).await? {
            each(row)?;
        }
        Ok(())
    }

    /// Reads one row of `table` by `key` in a single-use strong read.
    async fn read_row(
        &self,
        table: &str,
        columns: &[&str],
        key: Key,
    ) -> Result<Option<Row>, Failure> {
        self.timed(async {
            let mut transaction = self.inner.client.single().await?;
            Ok(transaction.read_row(table, columns, key).await?)
        })
        .await
    }

    /// Commits `mutations` in a transaction of their own, re-sent as needed: only for writes
    /// that may be applied twice (snapshots).
    async fn apply(&self, mutations: Vec<Mutation>) -> Result<(), Failure> {
        self.timed(async {
            self.inner.client.apply_at_least_once(mutations).await?;
            Ok(())
        })
        .await
    }

    /// Tries the append until it gets a definite answer or may have been applied, as long as
    /// Spanner only aborts it (which guarantees it wrote nothing), within the attempt count
    /// and the retry deadline.
    async fn try_append(
        &self,
        aggregate: &AggregateId,
        append: &Append,
        new_end: i64,
    ) -> Result<u64, EventStoreError> {
        let expected = append.expected_sequence;
        let started = Instant::now();
        let mut attempt = 0u32;
        loop {
            attempt += 1;
            // Encoded per attempt, into the transaction's own buffer: the first attempt, the
            // one that nearly always commits, copies nothing.
            let events = event_mutations(self.ns(), aggregate, append);
            let status = match self.append_once(aggregate, expected, events, new_end).await {
                Attempt::Done(result) => return result,
                Attempt::Aborted(status) => status,
            };
            let backoff = backoff(attempt);
            if attempt >= self.inner.max_attempts
                || started.elapsed() + backoff > self.inner.retry_deadline
            {
                return Err(EventStoreError::Unavailable(
                    format!(
                        "Spanner aborted the append's transaction {attempt} times in {:?} \
                         (nothing was written); the last abort: {status}",
                        started.elapsed()
                    )
                    .into(),
                ));
            }
            tracing::debug!(%status, attempt, "retrying an aborted append");
            tokio::time::sleep(backoff).await;
        }
    }

    /// One read-write transaction: read the stream's head, check it, write the head and the
    /// events, commit.
    async fn append_once(
        &self,
        aggregate: &AggregateId,
        expected: u64,
        events: Vec<Mutation>,
        new_end: i64,
    ) -> Attempt {
        let after = self.inner.operation_timeout;
        let begun = tokio::time::timeout(after, self.inner.client.begin_read_write_transaction());
        let mut transaction = match begun.await {
            Err(_) => return Attempt::Done(Err(Failure::timed_out(after).into())),
            Ok(Err(gcloud_spanner::client::Error::GRPC(status))) if is_abort(&status) => {
                return Attempt::Aborted(status);
            }
            Ok(Err(error)) => return Attempt::Done(Err(Failure::of_client(error).into())),
            Ok(Ok(transaction)) => transaction,
        };
        let read = tokio::time::timeout(
            after,
            transaction.read_row("streams", &["next_sequence"], self.key(aggregate)),
        );
        let head = match read.await {
            Ok(Err(status)) if is_abort(&status) => return Attempt::Aborted(status),
            Ok(Ok(row)) => row.map(|row| row.column::<i64>(0)).transpose(),
            Ok(Err(status)) => {
                self.roll_back(&mut transaction).await;
                return Attempt::Done(Err(Failure::of_status(status).into()));
            }
            Err(_) => {
                self.roll_back(&mut transaction).await;
                return Attempt::Done(Err(Failure::timed_out(after).into()));
            }
        };
        let head = match head.map_err(Failure::from).and_then(stored_sequence) {
            Ok(head) => head,
            Err(failure) => {
                self.roll_back(&mut transaction).await;
                return Attempt::Done(Err(failure.into()));
            }
        };
        let actual = head.unwrap_or(0);
        if actual != expected {
            self.roll_back(&mut transaction).await;
            return Attempt::Done(Err(EventStoreError::Conflict { expected, actual }));
        }

        let domain = aggregate.domain().as_str();
        let root = keys::root(aggregate);
        let mut mutations = Vec::with_capacity(events.len() + 2);
        // The parent row first: events are interleaved in it.
        mutations.push(insert_or_update(
            "streams",
            &["namespace", "domain", "root", "next_sequence"],
            &[self.ns(), &domain, &root, &new_end],
        ));
        if head.is_none() {
            mutations.push(insert_or_update(
                "domains",
                &["namespace", "domain"],
                &[self.ns(), &domain],
            ));
        }
        let appended = events.len() as u64;
        mutations.extend(events);
        transaction.buffer_write(mutations);
        let options = CommitOptions {
            // Never re-sent: a second copy could be answered for a first that was applied.
            call_options: CallOptions {
                retry: Some(no_retry()),
                ..CallOptions::default()
            },
            ..CommitOptions::default()
        };
        let commit =
            tokio::time::timeout(after, transaction.end(Ok::<_, Status>(()), Some(options)));
        let status = match commit.await {
            Ok(Ok(_)) => return Attempt::Done(Ok(expected + appended)),
            Ok(Err(status)) => status,
            Err(_) => {
                return Attempt::Done(Err(EventStoreError::OutcomeUnknown(
                    format!("Spanner gave no answer to the commit within {after:?}").into(),
                )));
            }
        };
        Attempt::Done(Err(match CommitOutcome::of(&status) {
            CommitOutcome::Aborted => return Attempt::Aborted(status),
            CommitOutcome::Unknown => EventStoreError::OutcomeUnknown(Box::new(status)),
            CommitOutcome::Refused { transient: true } => {
                EventStoreError::Unavailable(Box::new(status))
            }
            CommitOutcome::Refused { transient: false } => {
                EventStoreError::Internal(Box::new(status))
            }
            // The head read in the transaction makes this unreachable; should a key be taken
            // all the same, it is taken by another writer's events.
            CommitOutcome::Conflict => match self.next_sequence(aggregate).await {
                Ok(actual) => EventStoreError::Conflict { expected, actual },
                Err(error) => error,
            },
        }))
    }

    /// Ends `transaction` without committing, so that it holds no lock (and, on the
    /// emulator, lets the next transaction run). A failure leaves Spanner to expire it.
    async fn roll_back(&self, transaction: &mut ReadWriteTransaction) {
        let rollback = transaction.end::<(), Status>(
            Err(Status::new(Code::Cancelled, "the append does not commit")),
            None,
        );
        let _ = tokio::time::timeout(self.inner.operation_timeout, rollback).await;
    }
}

/// Extra time `open` allows for creating the instance, database and schema.
const SCHEMA_CHANGE_ALLOWANCE: Duration = Duration::from_secs(300);

/// The client environment of `config`: the emulator, or Google Cloud with Application
/// Default Credentials (never `SPANNER_EMULATOR_HOST`: the configuration alone decides).
async fn environment(config: &SpannerConfig) -> Result<Environment, OpenError> {
    use gcloud_spanner::apiv1::conn_pool::{AUDIENCE, SCOPES};
    use gcloud_spanner::client::google_cloud_auth::{project, token};

    if let Endpoint::Emulator(host) = &config.endpoint {
        return Ok(Environment::Emulator(host.clone()));
    }
    let auth = project::Config::default()
        .with_audience(AUDIENCE)
        .with_scopes(&SCOPES);
    let source = token::DefaultTokenSourceProvider::new(auth)
        .await
        .map_err(|error| OpenError::Credentials(Box::new(error)))?;
    Ok(Environment::GoogleCloud(Box::new(source)))
}

/// Checks, in one query, that every table and index of the schema exists (which also proves
/// the database, the credentials and the endpoint work).
async fn check_schema(client: &Client, config: &SpannerConfig) -> Result<(), OpenError> {
    let database = config.database_path();
    let refused = |source: Failure| OpenError::Refused {
        database: database.clone(),
        source: match source {
            Failure::Unavailable(error) | Failure::Internal(error) => error,
            Failure::Corrupt(message) => message.into(),
        },
    };
    let statement = Statement::new(
        "SELECT table_name AS name FROM information_schema.tables WHERE table_schema = '' \
         UNION ALL \
         SELECT index_name AS name FROM information_schema.indexes \
         WHERE table_schema = '' AND index_type = 'INDEX'",
    );
    let mut names = Vec::new();
    let work = async {
        let mut transaction = client.single().await?;
        let mut rows = transaction.query(statement).await?;
        while let Some(row) = rows.next().await? {
            names.push(row.column::<String>(0)?);
        }
        Ok::<_, Failure>(())
    };
    work.await.map_err(refused)?;
    match schema::OBJECTS
        .iter()
        .find(|(name, _)| !names.iter().any(|found| found == name))
    {
        Some((missing, _)) => Err(OpenError::MissingSchema {
            database,
            missing: (*missing).to_owned(),
        }),
        None => Ok(()),
    }
}

/// A sequence as stored in `streams.next_sequence`; a negative one is corrupt.
fn stored_sequence(value: Option<i64>) -> Result<Option<u64>, Failure> {
    value
        .map(|value| {
            u64::try_from(value)
                .map_err(|_| Failure::Corrupt(format!("a stream's next sequence is {value}")))
        })
        .transpose()
}

/// A retry setting that never retries.
fn no_retry() -> RetrySetting {
    RetrySetting {
        from_millis: 1,
        max_delay: None,
        factor: 1,
        take: 0,
        codes: Vec::new(),
    }
}

/// The wait before try `attempt + 1` of an aborted append: exponential from 2 ms to 100 ms,
/// with full jitter, so that writers aborted together do not come back together.
fn backoff(attempt: u32) -> Duration {
    let ceiling = 2u64.saturating_mul(1 << attempt.min(6)).min(100);
    let jitter = (Uuid::new_v4().as_u128() % 1000) as u64;
    Duration::from_micros(ceiling * jitter)
}

/// The insert mutations of `append`'s events.
fn event_mutations(namespace: &String, aggregate: &AggregateId, append: &Append) -> Vec<Mutation> {
    let domain = aggregate.domain().as_str();
    let root = keys::root(aggregate);
    let (request_hash, request_id, request_digest) = match &append.request {
        Some(request) => (
            Some(keys::id_hash(&request.id)),
            Some(request.id.as_bytes().to_vec()),
            Some(request.digest.to_vec()),
        ),
        None => (None, None, None),
    };
    // The events of one command share its correlation id: hashed once per run of equal ids.
    // The mutation copies the hash in, so the one kept is lent, never cloned.
    let mut hashed: Option<(&str, Option<Vec<u8>>)> = None;
    append
        .events
        .iter()
        .map(|page| {
            // `validate_append` and the caller checked every sequence fits an INT64.
            let sequence = keys::sequence(page.sequence).unwrap_or(i64::MAX);
            let id = page.correlation_id.as_str();
            if hashed.as_ref().is_none_or(|(last, _)| *last != id) {
                hashed = Some((id, (!id.is_empty()).then(|| keys::id_hash(id))));
            }
            let correlation_hash = hashed.as_ref().map_or(&None, |(_, hash)| hash);
            insert(
                "events",
                &EVENT_COLUMNS,
                &[
                    namespace,
                    &domain,
                    &root,
                    &sequence,
                    correlation_hash,
                    &request_hash,
                    &request_id,
                    &request_digest,
                    &page.encode_to_vec(),
                    &CommitTimestamp::new(),
                ],
            )
        })
        .collect()
}

fn decode_page(bytes: &[u8]) -> Result<EventPage, Failure> {
    angzarr_ports::decode_event_page(bytes)
        .map_err(|error| Failure::Corrupt(format!("a stored event: {error}")))
}

#[async_trait]
impl EventStore for SpannerStore {
    fn capabilities(&self) -> StoreCapabilities {
        self.inner.capabilities.clone()
    }

    async fn append(
        &self,
        aggregate: &AggregateId,
        append: Append,
    ) -> Result<u64, EventStoreError> {
        validate_append(&append, &self.inner.capabilities)?;
        let expected = append.expected_sequence;
        // `validate_append` checked that the last sequence is a u64; the end may not be.
        let end = expected.checked_add(append.events.len() as u64);
        let Some(new_end) = end.and_then(keys::sequence) else {
            // No event is stored at or beyond i64::MAX: as in the reference model, this is a
            // conflict unless the stream really ends at `expected` (which no stream reaches).
            let actual = self.next_sequence(aggregate).await?;
            return Err(if actual == expected {
                EventStoreError::InvalidArgument(format!(
                    "a batch ending at sequence {} goes beyond the largest the store keeps, {}",
                    expected.saturating_add(append.events.len() as u64 - 1),
                    i64::MAX - 1
                ))
            } else {
                EventStoreError::Conflict { expected, actual }
            });
        };
        self.try_append(aggregate, &append, new_end).await
    }

    async fn read(
        &self,
        aggregate: &AggregateId,
        range: SequenceRange,
    ) -> Result<Vec<EventPage>, EventStoreError> {
        // Nothing is stored beyond i64::MAX: a range starting there is empty, and an end
        // there is no end.
        let Some(from) = keys::sequence(range.from) else {
            return Ok(Vec::new());
        };
        let to = range.to.and_then(keys::sequence);
        if to.is_some_and(|to| to <= from) {
            return Ok(Vec::new());
        }
        let (domain, root) = (aggregate.domain().as_str(), keys::root(aggregate));
        let start = Key::composite(&[self.ns(), &domain, &root, &from]);
        let range = match to {
            Some(to) => KeyRange::new(
                start,
                Key::composite(&[self.ns(), &domain, &root, &to]),
                RangeKind::ClosedOpen,
            ),
            // The stream's key prefix, closed: every key that starts with it.
            None => KeyRange::new(
                start,
                Key::composite(&[self.ns(), &domain, &root]),
                RangeKind::ClosedClosed,
            ),
        };
        let mut pages = Vec::new();
        self.read_rows(Table::EVENTS, &["page"], range.into(), |row| {
            pages.push(decode_page(&row.column::<Vec<u8>>(0)?)?);
            Ok(())
        })
        .await?;
        Ok(pages)
    }

    async fn next_sequence(&self, aggregate: &AggregateId) -> Result<u64, EventStoreError> {
        let row = self
            .read_row("streams", &["next_sequence"], self.key(aggregate))
            .await?;
        let head = row
            .map(|row| row.column::<i64>(0))
            .transpose()
            .map_err(Failure::from)?;
        Ok(stored_sequence(head)?.unwrap_or(0))
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
        let prefix = Key::composite(&[self.ns(), &domain.as_str()]);
        let range = match after {
            Some(after) => KeyRange::new(
                Key::composite(&[self.ns(), &domain.as_str(), &after.as_bytes().to_vec()]),
                prefix,
                RangeKind::OpenClosed,
            ),
            None => KeyRange::new(prefix.clone(), prefix, RangeKind::ClosedClosed),
        };
        let table = Table {
            limit: i64::try_from(limit).unwrap_or(i64::MAX),
            ..Table::STREAMS
        };
        let mut roots = Vec::new();
        self.read_rows(table, &["root"], range.into(), |row| {
            roots.push(parse_root(&row.column::<Vec<u8>>(0)?)?);
            Ok(())
        })
        .await?;
        Ok(roots)
    }

    async fn list_domains(&self) -> Result<Vec<Domain>, EventStoreError> {
        let prefix = Key::composite(&[self.ns()]);
        let range = KeyRange::new(prefix.clone(), prefix, RangeKind::ClosedClosed);
        let mut domains = Vec::new();
        self.read_rows(Table::DOMAINS, &["domain"], range.into(), |row| {
            domains.push(parse_domain(row.column::<String>(0)?)?);
            Ok(())
        })
        .await?;
        Ok(domains)
    }

    async fn find_by_correlation(
        &self,
        correlation_id: &str,
    ) -> Result<Vec<AggregateEvents>, EventStoreError> {
        if correlation_id.is_empty() {
            return Ok(Vec::new());
        }
        // The index gives the keys of the events, the table their pages: two reads, each at
        // its own strong timestamp, which is consistent since events never change.
        let prefix = Key::composite(&[self.ns(), &keys::id_hash(correlation_id)]);
        let range = KeyRange::new(prefix.clone(), prefix, RangeKind::ClosedClosed);
        let mut found = Vec::new();
        let columns = ["domain", "root", "sequence"];
        self.read_rows(Table::BY_CORRELATION, &columns, range.into(), |row| {
            let (domain, root) = (row.column::<String>(0)?, row.column::<Vec<u8>>(1)?);
            let sequence = row.column::<i64>(2)?;
            found.push(Key::composite(&[self.ns(), &domain, &root, &sequence]));
            Ok(())
        })
        .await?;
        if found.is_empty() {
            return Ok(Vec::new());
        }
        let mut events = Vec::with_capacity(found.len());
        let columns = ["domain", "root", "sequence", "page"];
        self.read_rows(Table::EVENTS, &columns, found.into(), |row| {
            let page = decode_page(&row.column::<Vec<u8>>(3)?)?;
            // The hash is the index's key; the id itself is in the page.
            if page.correlation_id == correlation_id {
                let domain = parse_domain(row.column::<String>(0)?)?;
                let root = parse_root(&row.column::<Vec<u8>>(1)?)?;
                let aggregate = AggregateId::new(domain, root)
                    .map_err(|error| Failure::Corrupt(format!("a stored aggregate: {error}")))?;
                events.push((aggregate, page));
            }
            Ok(())
        })
        .await?;
        events.sort_by(|(a, x), (b, y)| a.cmp(b).then(x.sequence.cmp(&y.sequence)));
        let mut groups: Vec<AggregateEvents> = Vec::new();
        for (aggregate, page) in events {
            match groups.last_mut() {
                Some(group) if group.aggregate == aggregate => group.pages.push(page),
                _ => groups.push(AggregateEvents {
                    aggregate,
                    pages: vec![page],
                }),
            }
        }
        Ok(groups)
    }

    async fn find_by_request(
        &self,
        aggregate: &AggregateId,
        request_id: &str,
    ) -> Result<Option<RequestRecord>, EventStoreError> {
        let (domain, root) = (aggregate.domain().as_str(), keys::root(aggregate));
        let prefix = Key::composite(&[self.ns(), &domain, &root, &keys::id_hash(request_id)]);
        let range = KeyRange::new(prefix.clone(), prefix, RangeKind::ClosedClosed);
        // Index order ends with the sequence: the first entry is the first append's.
        let mut digest = None;
        let mut found = Vec::new();
        let columns = ["sequence", "request_id", "request_digest"];
        self.read_rows(Table::BY_REQUEST, &columns, range.into(), |row| {
            if row.column::<Vec<u8>>(1)? != request_id.as_bytes() {
                return Ok(());
            }
            if digest.is_none() {
                let bytes = row.column::<Vec<u8>>(2)?;
                digest = Some(<[u8; 32]>::try_from(bytes.as_slice()).map_err(|_| {
                    Failure::Corrupt(format!("a stored digest of {} bytes", bytes.len()))
                })?);
            }
            let sequence = row.column::<i64>(0)?;
            found.push(Key::composite(&[self.ns(), &domain, &root, &sequence]));
            Ok(())
        })
        .await?;
        let Some(digest) = digest else {
            return Ok(None);
        };
        let mut pages = Vec::with_capacity(found.len());
        self.read_rows(Table::EVENTS, &["page"], found.into(), |row| {
            pages.push(decode_page(&row.column::<Vec<u8>>(0)?)?);
            Ok(())
        })
        .await?;
        pages.sort_by_key(|page| page.sequence);
        Ok(Some(RequestRecord {
            digest: Some(digest),
            pages,
        }))
    }
}

fn parse_domain(name: String) -> Result<Domain, Failure> {
    Domain::new(name).map_err(|error| Failure::Corrupt(format!("a stored domain: {error}")))
}

fn parse_root(bytes: &[u8]) -> Result<Uuid, Failure> {
    keys::parse_root(bytes)
        .ok_or_else(|| Failure::Corrupt(format!("a stored root of {} bytes", bytes.len())))
}

#[async_trait]
impl SnapshotStore for SpannerStore {
    async fn get(&self, aggregate: &AggregateId) -> Result<Option<Snapshot>, SnapshotStoreError> {
        let Some(row) = self
            .read_row("snapshots", &["snapshot"], self.key(aggregate))
            .await?
        else {
            return Ok(None);
        };
        let bytes = row.column::<Vec<u8>>(0).map_err(Failure::from)?;
        Snapshot::decode(bytes.as_slice())
            .map(Some)
            .map_err(|error| SnapshotStoreError::Corrupt(format!("a stored snapshot: {error}")))
    }

    /// A put whose answer is lost is reported `Unavailable` although it may have been
    /// applied: the port has no unknown outcome for snapshots, and a snapshot is a cache.
    async fn put(
        &self,
        aggregate: &AggregateId,
        snapshot: Snapshot,
    ) -> Result<(), SnapshotStoreError> {
        self.inner.capabilities.check_snapshot(&snapshot)?;
        let upsert = insert_or_update(
            "snapshots",
            &["namespace", "domain", "root", "snapshot", "written_at"],
            &[
                self.ns(),
                &aggregate.domain().as_str(),
                &keys::root(aggregate),
                &snapshot.encode_to_vec(),
                &CommitTimestamp::new(),
            ],
        );
        Ok(self.apply(vec![upsert]).await?)
    }

    async fn delete(&self, aggregate: &AggregateId) -> Result<(), SnapshotStoreError> {
        Ok(self
            .apply(vec![delete("snapshots", self.key(aggregate))])
            .await?)
    }
}

//! Every statement the store runs, prepared once per connection, and the functions that run
//! them. Values are always bound as parameters; the schema is the only name spliced into the
//! text, quoted, when the store opens.

use std::fmt;

use angzarr_ports::{
    AggregateEvents, AggregateId, CommandDigest, Domain, EventPage, RequestKey, RequestRecord,
    SequenceRange, Snapshot, Uuid,
};
use futures_util::TryStreamExt;
use prost::Message;
use tokio_postgres::types::ToSql;
use tokio_postgres::{Client, Row, Statement};

use crate::error::Failure;
use crate::keys;
use crate::schema::with_schema;

/// Appends one event, in one statement and so in one implicit transaction, if the stream's
/// next sequence is the expected one ($3); the command tag says whether it inserted the event
/// (1) or not (0: a conflict).
///
/// The check is an init plan, evaluated once, on the statement's snapshot, before anything is
/// inserted: one backward step in the primary key (see [`NEXT_SEQUENCE`]). A writer that raced
/// it to the same sequence either committed first (the check fails, or the insert waits for
/// its key and fails with a duplicate key) or comes second (and fails the same way), so of
/// writers racing at one expected sequence exactly one inserts.
///
/// A plain `INSERT ... SELECT`, not a `WITH` query that also answers the stream's end: that
/// one costs the server a quarter more per append, and a conflict is rare enough to pay a
/// second round trip for the end.
const APPEND_ONE: &str = "
INSERT INTO {schema}.events
    (domain, root, sequence, correlation_id, request_id, request_digest, page)
SELECT $1, $2, $3::bigint, $6::bytea, $4::bytea, $5::bytea, $7::bytea
WHERE coalesce((SELECT sequence + 1 FROM {schema}.events
                WHERE domain = $1 AND root = $2 ORDER BY sequence DESC LIMIT 1), 0) = $3::bigint";

/// Appends a batch as [`APPEND_ONE`] appends one event, its pages and correlation ids passed
/// as arrays. Sequences are numbered by `WITH ORDINALITY` from the expected one, so a batch
/// has no gap whatever the caller sent. (Arrays cost the server more than plain parameters,
/// hence a statement of its own for the usual batch of one.)
const APPEND: &str = "
INSERT INTO {schema}.events
    (domain, root, sequence, correlation_id, request_id, request_digest, page)
SELECT $1, $2, $3::bigint + batch.ordinal - 1, batch.correlation_id, $4::bytea, $5::bytea,
    batch.page
FROM unnest($6::bytea[], $7::bytea[]) WITH ORDINALITY AS batch (correlation_id, page, ordinal)
WHERE coalesce((SELECT sequence + 1 FROM {schema}.events
                WHERE domain = $1 AND root = $2 ORDER BY sequence DESC LIMIT 1), 0) = $3::bigint";

/// The largest sequence of an aggregate: one backward step in the primary key. Written with
/// `ORDER BY ... LIMIT 1`, not `max(sequence)`, which PostgreSQL may plan (it did, on a table
/// not yet analyzed) as an aggregate over every event of the stream.
const NEXT_SEQUENCE: &str = "SELECT sequence FROM {schema}.events
    WHERE domain = $1 AND root = $2 ORDER BY sequence DESC LIMIT 1";

/// Events of an aggregate with a sequence in `$3..=$4`: one range of the primary key.
const READ: &str = "SELECT page FROM {schema}.events
    WHERE domain = $1 AND root = $2 AND sequence BETWEEN $3 AND $4
    ORDER BY sequence";

/// Events of an aggregate appended with a request id, through the request index (whose
/// entries end with the sequence, so rows come out in order).
const FIND_BY_REQUEST: &str = "SELECT page, request_digest FROM {schema}.events
    WHERE domain = $1 AND root = $2 AND request_id = $3
    ORDER BY sequence";

/// Events with a correlation id. The `<> ''` term repeats the partial index's condition so
/// that the planner can use the index for any bound value; its entries end with the primary
/// key, so rows come out in order without a sort.
const FIND_BY_CORRELATION: &str = "SELECT domain, root, page FROM {schema}.events
    WHERE correlation_id = $1 AND correlation_id <> ''::bytea
    ORDER BY domain, root, sequence";

/// Up to `$3` roots of a domain after `$2`: a loose index scan, one primary key descent per
/// root however many events each has. PostgreSQL evaluates a recursive query only as far as
/// the `LIMIT` reads it, and the whole page comes from one snapshot.
const LIST_ROOTS: &str = "
WITH RECURSIVE roots (root) AS (
    (SELECT root FROM {schema}.events WHERE domain = $1 AND root > $2 ORDER BY root LIMIT 1)
    UNION ALL
    SELECT (SELECT e.root FROM {schema}.events e
            WHERE e.domain = $1 AND e.root > roots.root ORDER BY e.root LIMIT 1)
    FROM roots WHERE roots.root IS NOT NULL
)
SELECT root FROM roots WHERE root IS NOT NULL LIMIT $3";

/// Every domain: a loose index scan, as for roots.
const LIST_DOMAINS: &str = "
WITH RECURSIVE domains (domain) AS (
    (SELECT domain FROM {schema}.events ORDER BY domain LIMIT 1)
    UNION ALL
    SELECT (SELECT e.domain FROM {schema}.events e
            WHERE e.domain > domains.domain ORDER BY e.domain LIMIT 1)
    FROM domains WHERE domains.domain IS NOT NULL
)
SELECT domain FROM domains WHERE domain IS NOT NULL";

/// The snapshot of an aggregate.
const GET_SNAPSHOT: &str = "SELECT state FROM {schema}.snapshots WHERE domain = $1 AND root = $2";

/// Stores or replaces the snapshot of an aggregate.
const PUT_SNAPSHOT: &str = "INSERT INTO {schema}.snapshots (domain, root, sequence, state)
    VALUES ($1, $2, $3, $4)
    ON CONFLICT (domain, root) DO UPDATE SET sequence = excluded.sequence, state = excluded.state";

/// Removes the snapshot of an aggregate.
const DELETE_SNAPSHOT: &str = "DELETE FROM {schema}.snapshots WHERE domain = $1 AND root = $2";

/// The text of every statement, for one schema.
#[derive(Debug)]
pub(crate) struct Sql {
    append_one: String,
    append: String,
    next_sequence: String,
    read: String,
    find_by_request: String,
    find_by_correlation: String,
    list_roots: String,
    list_domains: String,
    get_snapshot: String,
    put_snapshot: String,
    delete_snapshot: String,
}

impl Sql {
    /// The statements over the tables of `schema`.
    pub(crate) fn new(schema: &str) -> Self {
        let sql = |template| with_schema(template, schema);
        Self {
            append_one: sql(APPEND_ONE),
            append: sql(APPEND),
            next_sequence: sql(NEXT_SEQUENCE),
            read: sql(READ),
            find_by_request: sql(FIND_BY_REQUEST),
            find_by_correlation: sql(FIND_BY_CORRELATION),
            list_roots: sql(LIST_ROOTS),
            list_domains: sql(LIST_DOMAINS),
            get_snapshot: sql(GET_SNAPSHOT),
            put_snapshot: sql(PUT_SNAPSHOT),
            delete_snapshot: sql(DELETE_SNAPSHOT),
        }
    }

    /// The statements that look for a stream's end: `next_sequence`, then the two appends,
    /// for tests that inspect their plans.
    #[cfg(test)]
    pub(crate) fn heads(&self) -> [&str; 3] {
        [&self.next_sequence, &self.append_one, &self.append]
    }

    /// Every statement's text, for tests that inspect their plans.
    #[cfg(test)]
    pub(crate) fn reads(&self) -> [&str; 7] {
        [
            &self.next_sequence,
            &self.read,
            &self.find_by_request,
            &self.find_by_correlation,
            &self.list_roots,
            &self.list_domains,
            &self.get_snapshot,
        ]
    }
}

/// The statements, prepared on one connection.
#[derive(Debug)]
pub(crate) struct Statements {
    append_one: Statement,
    append: Statement,
    next_sequence: Statement,
    read: Statement,
    find_by_request: Statement,
    find_by_correlation: Statement,
    list_roots: Statement,
    list_domains: Statement,
    get_snapshot: Statement,
    put_snapshot: Statement,
    delete_snapshot: Statement,
}

impl Statements {
    /// Prepares every statement on `client`, all at once: the driver pipelines them, so this
    /// costs one round trip, once per connection.
    pub(crate) async fn prepare(client: &Client, sql: &Sql) -> Result<Self, tokio_postgres::Error> {
        let (
            append_one,
            append,
            next_sequence,
            read,
            find_by_request,
            find_by_correlation,
            list_roots,
            list_domains,
            get_snapshot,
            put_snapshot,
            delete_snapshot,
        ) = tokio::try_join!(
            client.prepare(&sql.append_one),
            client.prepare(&sql.append),
            client.prepare(&sql.next_sequence),
            client.prepare(&sql.read),
            client.prepare(&sql.find_by_request),
            client.prepare(&sql.find_by_correlation),
            client.prepare(&sql.list_roots),
            client.prepare(&sql.list_domains),
            client.prepare(&sql.get_snapshot),
            client.prepare(&sql.put_snapshot),
            client.prepare(&sql.delete_snapshot),
        )?;
        Ok(Self {
            append_one,
            append,
            next_sequence,
            read,
            find_by_request,
            find_by_correlation,
            list_roots,
            list_domains,
            get_snapshot,
            put_snapshot,
            delete_snapshot,
        })
    }
}

/// A pooled connection: the driver's client and its prepared statements.
#[derive(Debug)]
pub(crate) struct Conn {
    pub(crate) client: Client,
    pub(crate) statements: Statements,
}

/// A batch ready to append: every page encoded, with the columns copied out of it.
#[derive(Debug)]
pub(crate) struct Batch {
    pages: Vec<Vec<u8>>,
    correlation_ids: Vec<String>,
    request: Option<RequestKey>,
}

impl Batch {
    /// Encodes the pages of an append.
    pub(crate) fn encode(events: Vec<EventPage>, request: Option<RequestKey>) -> Self {
        let pages = events.iter().map(Message::encode_to_vec).collect();
        let correlation_ids = events.into_iter().map(|page| page.correlation_id).collect();
        Self {
            pages,
            correlation_ids,
            request,
        }
    }

    /// How many events the batch holds.
    pub(crate) fn len(&self) -> usize {
        self.pages.len()
    }
}

/// Runs the append statement (the one-event one for a batch of one) and answers how many
/// events it inserted: all of them, or none when the stream's next sequence was not the
/// expected one. Every error is the driver's, even one reading the answer, for the caller to
/// sort into conflicts and unknown outcomes: once the statement has been sent, only the
/// server's own error says that it was not applied.
pub(crate) async fn append(
    conn: &Conn,
    aggregate: &AggregateId,
    expected: i64,
    batch: &Batch,
) -> Result<u64, tokio_postgres::Error> {
    let domain = aggregate.domain().as_str();
    let root = aggregate.root();
    let request_id = batch.request.as_ref().map(|key| key.id.as_bytes());
    let digest = batch.request.as_ref().map(|key| key.digest.as_slice());
    if let ([page], [correlation_id]) = (batch.pages.as_slice(), batch.correlation_ids.as_slice()) {
        return conn
            .client
            .execute(
                &conn.statements.append_one,
                &[
                    &domain,
                    &root,
                    &expected,
                    &request_id,
                    &digest,
                    &correlation_id.as_bytes(),
                    &page.as_slice(),
                ],
            )
            .await;
    }
    let correlation_ids: Vec<&[u8]> = batch
        .correlation_ids
        .iter()
        .map(|id| id.as_bytes())
        .collect();
    let pages: Vec<&[u8]> = batch.pages.iter().map(Vec::as_slice).collect();
    conn.client
        .execute(
            &conn.statements.append,
            &[
                &domain,
                &root,
                &expected,
                &request_id,
                &digest,
                &correlation_ids,
                &pages,
            ],
        )
        .await
}

/// The next sequence of `aggregate`: one past its largest.
pub(crate) async fn next_sequence(conn: &Conn, aggregate: &AggregateId) -> Result<u64, Failure> {
    let row = conn
        .client
        .query_opt(
            &conn.statements.next_sequence,
            &[&aggregate.domain().as_str(), &aggregate.root()],
        )
        .await?;
    let Some(row) = row else {
        return Ok(0);
    };
    let largest: i64 = row.try_get(0).map_err(Failure::corrupt)?;
    // At most i64::MAX, so adding one cannot overflow a u64.
    Ok(keys::parse_sequence(largest)? + 1)
}

/// The events of `aggregate` in `range`, ascending.
pub(crate) async fn read(
    conn: &Conn,
    aggregate: &AggregateId,
    range: SequenceRange,
) -> Result<Vec<EventPage>, Failure> {
    // Stored sequences are at most i64::MAX: nothing starts beyond it, and an end beyond it
    // is no end.
    let Some(from) = keys::sequence(range.from) else {
        return Ok(Vec::new());
    };
    let last = match range.to {
        Some(to) if to <= range.from => return Ok(Vec::new()),
        // `to > from >= 0`, so `to - 1` does not underflow.
        Some(to) => keys::sequence(to - 1).unwrap_or(i64::MAX),
        None => i64::MAX,
    };
    let domain = aggregate.domain().as_str();
    let root = aggregate.root();
    let params: [&(dyn ToSql + Sync); 4] = [&domain, &root, &from, &last];
    // Each row is decoded as it arrives, while the driver's connection task reads the next
    // ones: the decoding overlaps the transfer, and no row outlives its page.
    let rows = conn.client.query_raw(&conn.statements.read, params).await?;
    let mut rows = std::pin::pin!(rows);
    let mut pages = Vec::new();
    while let Some(row) = rows.try_next().await? {
        pages.push(page(&row, 0, aggregate)?);
    }
    Ok(pages)
}

/// The events of `aggregate` appended with `request_id`, ascending, and the first one's digest.
pub(crate) async fn find_by_request(
    conn: &Conn,
    aggregate: &AggregateId,
    request_id: &str,
) -> Result<Option<RequestRecord>, Failure> {
    let rows = conn
        .client
        .query(
            &conn.statements.find_by_request,
            &[
                &aggregate.domain().as_str(),
                &aggregate.root(),
                &request_id.as_bytes(),
            ],
        )
        .await?;
    let Some(first) = rows.first() else {
        return Ok(None);
    };
    let digest: Option<&[u8]> = first.try_get(1).map_err(Failure::corrupt)?;
    let digest = digest
        .map(|bytes| {
            CommandDigest::try_from(bytes).map_err(|_| {
                Failure::corrupt(format_args!(
                    "a request digest of {aggregate} has {} bytes, not 32",
                    bytes.len()
                ))
            })
        })
        .transpose()?;
    let pages = rows
        .iter()
        .map(|row| page(row, 0, aggregate))
        .collect::<Result<_, _>>()?;
    Ok(Some(RequestRecord { digest, pages }))
}

/// Every event with `correlation_id`, grouped by aggregate in ascending order.
pub(crate) async fn find_by_correlation(
    conn: &Conn,
    correlation_id: &str,
) -> Result<Vec<AggregateEvents>, Failure> {
    let rows = conn
        .client
        .query(
            &conn.statements.find_by_correlation,
            &[&correlation_id.as_bytes()],
        )
        .await?;
    let mut groups: Vec<AggregateEvents> = Vec::new();
    for row in &rows {
        let domain: &str = row.try_get(0).map_err(Failure::corrupt)?;
        let root: Uuid = row.try_get(1).map_err(Failure::corrupt)?;
        let same_aggregate = |group: &&mut AggregateEvents| {
            group.aggregate.root() == root && group.aggregate.domain().as_str() == domain
        };
        if let Some(group) = groups.last_mut().filter(same_aggregate) {
            let page = page(row, 2, &group.aggregate)?;
            group.pages.push(page);
        } else {
            let aggregate =
                AggregateId::new(keys::parse_domain(domain)?, root).map_err(Failure::corrupt)?;
            let pages = vec![page(row, 2, &aggregate)?];
            groups.push(AggregateEvents { aggregate, pages });
        }
    }
    Ok(groups)
}

/// Up to `limit` roots of `domain` after `after`, ascending.
pub(crate) async fn list_roots(
    conn: &Conn,
    domain: &Domain,
    after: Option<Uuid>,
    limit: usize,
) -> Result<Vec<Uuid>, Failure> {
    // Roots are never nil, so "after nil" is "from the first".
    let after = after.unwrap_or_else(Uuid::nil);
    let limit = i64::try_from(limit).unwrap_or(i64::MAX);
    let rows = conn
        .client
        .query(
            &conn.statements.list_roots,
            &[&domain.as_str(), &after, &limit],
        )
        .await?;
    rows.iter()
        .map(|row| row.try_get(0).map_err(Failure::corrupt))
        .collect()
}

/// Every domain that has events, ascending.
pub(crate) async fn list_domains(conn: &Conn) -> Result<Vec<Domain>, Failure> {
    let rows = conn
        .client
        .query(&conn.statements.list_domains, &[])
        .await?;
    rows.iter()
        .map(|row| keys::parse_domain(row.try_get(0).map_err(Failure::corrupt)?))
        .collect()
}

/// The snapshot of `aggregate`, if any.
pub(crate) async fn get_snapshot(
    conn: &Conn,
    aggregate: &AggregateId,
) -> Result<Option<Snapshot>, Failure> {
    let row = conn
        .client
        .query_opt(
            &conn.statements.get_snapshot,
            &[&aggregate.domain().as_str(), &aggregate.root()],
        )
        .await?;
    row.map(|row| {
        let state: &[u8] = row.try_get(0).map_err(Failure::corrupt)?;
        decode(state, aggregate)
    })
    .transpose()
}

/// Stores `state`, an encoded snapshot, as the snapshot of `aggregate`.
pub(crate) async fn put_snapshot(
    conn: &Conn,
    aggregate: &AggregateId,
    sequence: u64,
    state: &[u8],
) -> Result<(), Failure> {
    conn.client
        .execute(
            &conn.statements.put_snapshot,
            &[
                &aggregate.domain().as_str(),
                &aggregate.root(),
                &keys::snapshot_sequence(sequence),
                &state,
            ],
        )
        .await?;
    Ok(())
}

/// Removes the snapshot of `aggregate`, if any.
pub(crate) async fn delete_snapshot(conn: &Conn, aggregate: &AggregateId) -> Result<(), Failure> {
    conn.client
        .execute(
            &conn.statements.delete_snapshot,
            &[&aggregate.domain().as_str(), &aggregate.root()],
        )
        .await?;
    Ok(())
}

/// The encoded page in column `column` of `row`, decoded from the row's buffer.
fn page(row: &Row, column: usize, aggregate: &AggregateId) -> Result<EventPage, Failure> {
    let bytes: &[u8] = row.try_get(column).map_err(Failure::corrupt)?;
    angzarr_ports::decode_event_page(bytes)
        .map_err(|error| undecodable::<EventPage>(aggregate, &error))
}

/// Decodes a stored message of `aggregate`.
fn decode<M: Message + Default>(bytes: &[u8], aggregate: &impl fmt::Display) -> Result<M, Failure> {
    M::decode(bytes).map_err(|error| undecodable::<M>(aggregate, &error))
}

/// The error of a stored message of `aggregate` that does not decode.
fn undecodable<M>(aggregate: &impl fmt::Display, error: &prost::DecodeError) -> Failure {
    Failure::corrupt(format_args!(
        "undecodable {} of {aggregate}: {error}",
        std::any::type_name::<M>()
            .rsplit("::")
            .next()
            .unwrap_or("message")
    ))
}

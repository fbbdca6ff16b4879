//! Every statement the store runs, as functions over a connection. Values are always bound
//! as parameters, and keys come from [`crate::keys`]. Statements are prepared once per
//! connection (`prepare_cached`).

use std::fmt;
use std::sync::mpsc;

use angzarr_ports::{
    AggregateEvents, AggregateId, CommandDigest, Domain, EventPage, RequestKey, RequestRecord,
    SequenceRange, Snapshot, Uuid,
};
use prost::Message;
use rusqlite::{CachedStatement, Connection, OptionalExtension, Params, Row, params};

use crate::error::Failure;
use crate::keys::{self, AggregateKey};

/// The largest sequence of an aggregate.
const NEXT_SEQUENCE: &str = "SELECT max(sequence) FROM events WHERE domain = ?1 AND root = ?2";

/// Whether an aggregate has the event at a sequence.
const EVENT_AT: &str = "SELECT 1 FROM events WHERE domain = ?1 AND root = ?2 AND sequence = ?3";

/// Whether an aggregate has an event at a sequence or later.
const EVENT_FROM: &str =
    "SELECT 1 FROM events WHERE domain = ?1 AND root = ?2 AND sequence >= ?3 LIMIT 1";

/// Events of an aggregate in `from..to`.
const READ_RANGE: &str = "SELECT page FROM events
    WHERE domain = ?1 AND root = ?2 AND sequence >= ?3 AND sequence < ?4
    ORDER BY sequence";

/// Events of an aggregate from `from` on.
const READ_FROM: &str = "SELECT page FROM events
    WHERE domain = ?1 AND root = ?2 AND sequence >= ?3
    ORDER BY sequence";

/// Events of an aggregate appended with a request id. Without statistics SQLite prefers the
/// primary key, which would step through every event of the aggregate; the request index goes
/// straight to the matching ones, already in sequence order (an index entry ends with the
/// primary key).
const FIND_BY_REQUEST: &str = "SELECT page, request_digest FROM events INDEXED BY events_by_request
    WHERE domain = ?1 AND root = ?2 AND request_id = ?3
    ORDER BY sequence";

/// Events with a correlation id. The `<> ''` term repeats the partial index's condition, which
/// SQLite cannot infer from a bound parameter; the index ends with the primary key, so rows
/// come out in order without a sort.
const FIND_BY_CORRELATION: &str = "SELECT domain, root, page FROM events
    WHERE correlation_id = ?1 AND correlation_id <> ''
    ORDER BY domain, root, sequence";

/// The first root of a domain after a given one. Called once per root listed: a loose index
/// scan, one primary key seek per root however many events each has. (`SELECT DISTINCT root`
/// only skips ahead when SQLite's statistics suggest it; without them it may step through every
/// event of the domain.)
const NEXT_ROOT: &str = "SELECT min(root) FROM events WHERE domain = ?1 AND root > ?2";

/// The first domain after a given one: a loose index scan, as for roots.
const NEXT_DOMAIN: &str = "SELECT min(domain) FROM events WHERE domain > ?1";

/// Stores one event.
const INSERT_EVENT: &str = "INSERT INTO events
    (domain, root, sequence, correlation_id, request_id, request_digest, page)
    VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7)";

/// Stores or replaces the snapshot of an aggregate.
const PUT_SNAPSHOT: &str = "INSERT INTO snapshots (domain, root, sequence, state)
    VALUES (?1, ?2, ?3, ?4)
    ON CONFLICT (domain, root) DO UPDATE SET sequence = excluded.sequence, state = excluded.state";

/// Removes the snapshot of an aggregate.
const DELETE_SNAPSHOT: &str = "DELETE FROM snapshots WHERE domain = ?1 AND root = ?2";

/// The snapshot of an aggregate.
const GET_SNAPSHOT: &str = "SELECT state FROM snapshots WHERE domain = ?1 AND root = ?2";

/// The next sequence of the aggregate: one past its largest (a primary key lookup, and the
/// same as counting because sequences have no gaps).
pub(crate) fn next_sequence(conn: &Connection, key: &AggregateKey<'_>) -> Result<u64, Failure> {
    let largest: Option<i64> = conn
        .prepare_cached(NEXT_SEQUENCE)?
        .query_row(params![key.domain, key.root], |row| row.get(0))?;
    match largest {
        // At most i64::MAX, so adding one cannot overflow a u64.
        Some(largest) => Ok(keys::parse_sequence(largest)? + 1),
        None => Ok(0),
    }
}

/// Whether `next` is the next sequence of the aggregate: whether its last event is `next - 1`,
/// or, for 0, whether it has none. The same answer as comparing with [`next_sequence`], in two
/// forward seeks: SQLite evaluates `max(sequence)` by seeking past the aggregate's last key and
/// stepping back, which measured about ten times slower (some 10 µs), and every append checks
/// this.
pub(crate) fn is_next_sequence(
    conn: &Connection,
    key: &AggregateKey<'_>,
    next: u64,
) -> Result<bool, Failure> {
    let rest_from = match next.checked_sub(1) {
        // Nothing at all, not even a (corrupt) negative sequence, for an empty stream.
        None => i64::MIN,
        Some(last) => {
            // No event is stored beyond i64::MAX.
            let Some(last) = keys::sequence(last) else {
                return Ok(false);
            };
            if !exists(conn, EVENT_AT, key, last)? {
                return Ok(false);
            }
            match keys::sequence(next) {
                Some(next) => next,
                None => return Ok(true),
            }
        }
    };
    Ok(!exists(conn, EVENT_FROM, key, rest_from)?)
}

/// Whether `query` finds a row for the aggregate and the sequence.
fn exists(
    conn: &Connection,
    query: &str,
    key: &AggregateKey<'_>,
    sequence: i64,
) -> Result<bool, Failure> {
    Ok(conn
        .prepare_cached(query)?
        .query_row(params![key.domain, key.root, sequence], |_| Ok(()))
        .optional()?
        .is_some())
}

/// Stores one event.
pub(crate) fn insert_event(
    conn: &Connection,
    key: &AggregateKey<'_>,
    sequence: i64,
    correlation_id: &str,
    request: Option<&RequestKey>,
    page: &[u8],
) -> Result<(), Failure> {
    conn.prepare_cached(INSERT_EVENT)?.execute(params![
        key.domain,
        key.root,
        sequence,
        correlation_id,
        request.map(|request| request.id.as_str()),
        request.map(|request| request.digest.as_slice()),
        page
    ])?;
    Ok(())
}

/// The events of `aggregate` in `range`, ascending.
pub(crate) fn read(
    conn: &Connection,
    aggregate: &AggregateId,
    range: SequenceRange,
) -> Result<Vec<EventPage>, Failure> {
    // Stored sequences are at most i64::MAX: nothing starts beyond it, and an end beyond it is
    // no end.
    let Some(from) = keys::sequence(range.from) else {
        return Ok(Vec::new());
    };
    if range.to.is_some_and(|to| to <= range.from) {
        return Ok(Vec::new());
    }
    let key = keys::aggregate(aggregate);
    match range.to.and_then(keys::sequence) {
        Some(to) => pages(
            conn.prepare_cached(READ_RANGE)?,
            params![key.domain, key.root, from, to],
            aggregate,
        ),
        None => pages(
            conn.prepare_cached(READ_FROM)?,
            params![key.domain, key.root, from],
            aggregate,
        ),
    }
}

/// The events of `aggregate` appended with `request_id`, ascending, and the first one's digest.
pub(crate) fn find_by_request(
    conn: &Connection,
    aggregate: &AggregateId,
    request_id: &str,
) -> Result<Option<RequestRecord>, Failure> {
    let key = keys::aggregate(aggregate);
    let mut statement = conn.prepare_cached(FIND_BY_REQUEST)?;
    let mut rows = statement.query(params![key.domain, key.root, request_id])?;
    let Some(first) = rows.next()? else {
        return Ok(None);
    };
    let digest = match first
        .get_ref(1)?
        .as_blob_or_null()
        .map_err(Failure::corrupt)?
    {
        None => None,
        Some(bytes) => Some(CommandDigest::try_from(bytes).map_err(|_| {
            Failure::corrupt(format_args!(
                "a request digest of {aggregate} has {} bytes, not 32",
                bytes.len()
            ))
        })?),
    };
    let mut pages = vec![decode_page(page_blob(first)?, aggregate)?];
    while let Some(row) = rows.next()? {
        pages.push(decode_page(page_blob(row)?, aggregate)?);
    }
    Ok(Some(RequestRecord { digest, pages }))
}

/// Every event with `correlation_id`, grouped by aggregate in ascending order.
pub(crate) fn find_by_correlation(
    conn: &Connection,
    correlation_id: &str,
) -> Result<Vec<AggregateEvents>, Failure> {
    if correlation_id.is_empty() {
        return Ok(Vec::new());
    }
    let mut statement = conn.prepare_cached(FIND_BY_CORRELATION)?;
    let mut rows = statement.query([correlation_id])?;
    let mut groups: Vec<AggregateEvents> = Vec::new();
    while let Some(row) = rows.next()? {
        let domain = row.get_ref(0)?.as_str().map_err(Failure::corrupt)?;
        let root = keys::parse_root(row.get_ref(1)?.as_str().map_err(Failure::corrupt)?)?;
        let page = row.get_ref(2)?.as_blob().map_err(Failure::corrupt)?;
        let same_aggregate = |group: &&mut AggregateEvents| {
            group.aggregate.root() == root && group.aggregate.domain().as_str() == domain
        };
        if let Some(group) = groups.last_mut().filter(same_aggregate) {
            group.pages.push(decode_page(page, &group.aggregate)?);
        } else {
            let aggregate =
                AggregateId::new(keys::parse_domain(domain)?, root).map_err(Failure::corrupt)?;
            let pages = vec![decode_page(page, &aggregate)?];
            groups.push(AggregateEvents { aggregate, pages });
        }
    }
    Ok(groups)
}

/// Up to `limit` roots of `domain` after `after`, ascending.
pub(crate) fn list_roots(
    conn: &mut Connection,
    domain: &Domain,
    after: Option<Uuid>,
    limit: usize,
) -> Result<Vec<Uuid>, Failure> {
    // One transaction, so that the whole page is read from one snapshot.
    let tx = conn.transaction()?;
    let mut next_root = tx.prepare_cached(NEXT_ROOT)?;
    let mut after = after.map(keys::root).unwrap_or_default();
    let mut roots = Vec::with_capacity(limit.min(1024));
    while roots.len() < limit {
        let next: Option<String> =
            next_root.query_row(params![domain.as_str(), after], |row| row.get(0))?;
        let Some(next) = next else { break };
        roots.push(keys::parse_root(&next)?);
        after = next;
    }
    Ok(roots)
}

/// Every domain that has events, ascending.
pub(crate) fn list_domains(conn: &mut Connection) -> Result<Vec<Domain>, Failure> {
    let tx = conn.transaction()?;
    let mut next_domain = tx.prepare_cached(NEXT_DOMAIN)?;
    let mut after = String::new();
    let mut domains = Vec::new();
    while let Some(next) = next_domain.query_row([&after], |row| row.get::<_, Option<String>>(0))? {
        domains.push(keys::parse_domain(&next)?);
        after = next;
    }
    Ok(domains)
}

/// The snapshot of `aggregate`, if any.
pub(crate) fn get_snapshot(
    conn: &Connection,
    aggregate: &AggregateId,
) -> Result<Option<Snapshot>, Failure> {
    let key = keys::aggregate(aggregate);
    let mut statement = conn.prepare_cached(GET_SNAPSHOT)?;
    let state = statement
        .query_row(params![key.domain, key.root], |row| {
            // Decoded here, from SQLite's buffer, rather than from a copy.
            Ok(row
                .get_ref(0)?
                .as_blob()
                .map_err(Failure::corrupt)
                .and_then(|state| decode(state, aggregate)))
        })
        .optional()?;
    state.transpose()
}

/// Stores `state`, an encoded snapshot, as the snapshot of `aggregate`.
pub(crate) fn put_snapshot(
    conn: &Connection,
    aggregate: &AggregateId,
    sequence: u64,
    state: &[u8],
) -> Result<(), Failure> {
    let key = keys::aggregate(aggregate);
    conn.prepare_cached(PUT_SNAPSHOT)?.execute(params![
        key.domain,
        key.root,
        keys::snapshot_sequence(sequence),
        state
    ])?;
    Ok(())
}

/// Removes the snapshot of `aggregate`, if any.
pub(crate) fn delete_snapshot(conn: &Connection, aggregate: &AggregateId) -> Result<(), Failure> {
    let key = keys::aggregate(aggregate);
    conn.prepare_cached(DELETE_SNAPSHOT)?
        .execute(params![key.domain, key.root])?;
    Ok(())
}

/// Rows a read decodes by itself before it hands decoding to a second thread.
const DECODE_ALONE: usize = 4096;

/// Runs a query whose first column is an encoded page of `aggregate`, and decodes the pages.
fn pages(
    mut statement: CachedStatement<'_>,
    params: impl Params,
    aggregate: &AggregateId,
) -> Result<Vec<EventPage>, Failure> {
    let mut rows = statement.query(params)?;
    let mut pages = Vec::new();
    // Most reads are short: decoded here, straight from SQLite's buffer, without a copy.
    while pages.len() < DECODE_ALONE {
        let Some(row) = rows.next()? else {
            return Ok(pages);
        };
        pages.push(decode_page(page_blob(row)?, aggregate)?);
    }
    // A long read: stepping through SQLite's rows and decoding them cost about the same, so a
    // second thread decodes what this one reads. Copying the blobs into chunks for it costs
    // far less than decoding them.
    std::thread::scope(|scope| {
        let (chunks, to_decode) = mpsc::sync_channel::<Chunk>(4);
        let decoder = scope.spawn(move || {
            for chunk in to_decode {
                for blob in chunk.blobs() {
                    pages.push(decode_page(blob, aggregate)?);
                }
            }
            Ok::<_, Failure>(pages)
        });
        let read = (|| {
            let mut chunk = Chunk::default();
            while let Some(row) = rows.next()? {
                chunk.push(page_blob(row)?);
                // A failed send means the decoder stopped at a corrupt page: its error wins.
                if chunk.len() == DECODE_ALONE && chunks.send(std::mem::take(&mut chunk)).is_err() {
                    return Ok(());
                }
            }
            let _ = chunks.send(chunk);
            Ok::<_, Failure>(())
        })();
        drop(chunks);
        let decoded = decoder
            .join()
            .unwrap_or_else(|panic| std::panic::resume_unwind(panic));
        read.and(decoded)
    })
}

/// The encoded page of a row, in SQLite's buffer.
fn page_blob<'row>(row: &'row Row<'_>) -> Result<&'row [u8], Failure> {
    row.get_ref(0)?.as_blob().map_err(Failure::corrupt)
}

/// Encoded pages, back to back in one buffer.
#[derive(Default)]
struct Chunk {
    bytes: Vec<u8>,
    ends: Vec<usize>,
}

impl Chunk {
    fn push(&mut self, blob: &[u8]) {
        self.bytes.extend_from_slice(blob);
        self.ends.push(self.bytes.len());
    }

    fn len(&self) -> usize {
        self.ends.len()
    }

    fn blobs(&self) -> impl Iterator<Item = &[u8]> {
        let starts = std::iter::once(0).chain(self.ends.iter().copied());
        starts
            .zip(&self.ends)
            .map(|(start, end)| &self.bytes[start..*end])
    }
}

/// Decodes a stored message of `aggregate`.
fn decode<M: Message + Default>(bytes: &[u8], aggregate: &impl fmt::Display) -> Result<M, Failure> {
    M::decode(bytes).map_err(|error| undecodable::<M>(aggregate, &error))
}

/// Decodes a stored event of `aggregate`: [`decode`], with a copy less of its payload (see
/// `angzarr_ports::decode_event_page`).
fn decode_page(bytes: &[u8], aggregate: &impl fmt::Display) -> Result<EventPage, Failure> {
    angzarr_ports::decode_event_page(bytes)
        .map_err(|error| undecodable::<EventPage>(aggregate, &error))
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

#[cfg(test)]
mod tests {
    use angzarr_ports::{AggregateId, Domain, Uuid};
    use rusqlite::params;

    use crate::config::SqliteConfig;
    use crate::keys;
    use crate::schema;

    /// `is_next_sequence` answers as `next_sequence` does, whatever is stored, and every edge
    /// of the i64 range.
    #[test]
    fn the_next_sequence_check_agrees_with_the_stream_end() {
        let dir = tempfile::tempdir().unwrap();
        let conn = schema::open_writer(&SqliteConfig::in_dir(dir.path())).unwrap();
        let max = i64::MAX;
        let streams: [&[i64]; 7] = [
            &[],
            &[0],
            &[0, 1, 2],
            // Gaps and negative sequences cannot be appended, but a damaged file may hold
            // them: the check must not take such a stream for an empty or a shorter one.
            &[0, 1, 5],
            &[3],
            &[-1],
            &[max - 1, max],
        ];
        let candidates = [
            0,
            1,
            2,
            3,
            4,
            5,
            6,
            max as u64 - 1,
            max as u64,
            max as u64 + 1,
            max as u64 + 2,
            u64::MAX,
        ];
        for stored in streams {
            let aggregate =
                AggregateId::new(Domain::new("account").unwrap(), Uuid::new_v4()).unwrap();
            let key = keys::aggregate(&aggregate);
            for sequence in stored {
                conn.execute(
                    "INSERT INTO events (domain, root, sequence, correlation_id, page) \
                     VALUES (?1, ?2, ?3, '', x'')",
                    params![key.domain, key.root, sequence],
                )
                .unwrap();
            }
            let end = super::next_sequence(&conn, &key).ok();
            for next in candidates {
                assert_eq!(
                    super::is_next_sequence(&conn, &key, next).unwrap(),
                    end == Some(next),
                    "stored {stored:?}, next {next}"
                );
            }
        }
    }

    /// Every read seeks an index: no scan of a table, no sort.
    #[test]
    fn every_read_seeks_an_index() {
        let dir = tempfile::tempdir().unwrap();
        let conn = schema::open_writer(&SqliteConfig::in_dir(dir.path())).unwrap();
        for query in [
            super::NEXT_SEQUENCE,
            super::EVENT_AT,
            super::EVENT_FROM,
            super::READ_RANGE,
            super::READ_FROM,
            super::FIND_BY_REQUEST,
            super::FIND_BY_CORRELATION,
            super::NEXT_ROOT,
            super::NEXT_DOMAIN,
            super::GET_SNAPSHOT,
        ] {
            let mut plan = conn
                .prepare(&format!("EXPLAIN QUERY PLAN {query}"))
                .unwrap();
            let unbound = std::iter::repeat_n(rusqlite::types::Null, plan.parameter_count());
            let steps: Vec<String> = plan
                .query_map(rusqlite::params_from_iter(unbound), |row| row.get(3))
                .unwrap()
                .map(Result::unwrap)
                .collect();
            assert!(
                steps
                    .iter()
                    .all(|step| step.starts_with("SEARCH ") && !step.contains("TEMP B-TREE")),
                "{query}: {steps:?}"
            );
        }
    }
}

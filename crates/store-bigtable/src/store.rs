//! [`BigtableStore`]: the ports over one Bigtable table.

use std::collections::BTreeSet;
use std::fmt;
use std::sync::Arc;

use angzarr_ports::{
    AggregateEvents, AggregateId, Append, Domain, EventPage, EventStore, EventStoreError,
    RequestRecord, SequenceRange, Snapshot, SnapshotStore, SnapshotStoreError, StoreCapabilities,
    Uuid, async_trait, validate_append,
};
use bigtable_rs::google::bigtable::v2::{
    ColumnRange, RowFilter, RowRange, RowSet, ValueRange, column_range, row_filter, row_range,
    value_range,
};
use prost::Message;

use crate::client::{Cell, Client, Row, delete_row, set_cell};
use crate::config::BigtableConfig;
use crate::connect;
use crate::error::{CallError, Failure, Op, OpenError};
use crate::keys::{self, IndexEntry, Keys};

/// How many sequence ranges one read of indexed events asks for (Bigtable bounds a filter's
/// size at 20 KB; a range is about 30 bytes).
const RANGES_PER_READ: usize = 256;

/// An [`EventStore`] and [`SnapshotStore`] over one Bigtable table, cheap to clone and share
/// (clones share the connections).
///
/// Each stream is one row; every append is one `CheckAndMutateRow` on it. See the crate
/// documentation for the key layout and the guarantees.
#[derive(Clone)]
pub struct BigtableStore {
    inner: Arc<Inner>,
}

struct Inner {
    client: Client,
    keys: Keys,
    capabilities: StoreCapabilities,
    table: String,
    namespace: String,
}

impl fmt::Debug for BigtableStore {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("BigtableStore")
            .field("table", &self.inner.table)
            .field("namespace", &self.inner.namespace)
            .finish_non_exhaustive()
    }
}

impl BigtableStore {
    /// Connects to the table of `config` (creating it first if `create_if_missing` is set and
    /// it does not exist), and proves that it answers, within the connect timeout: a wrong
    /// endpoint, missing credentials or a missing table fail here, within seconds.
    pub async fn open(config: BigtableConfig) -> Result<Self, OpenError> {
        config.validate()?;
        let (connection, credentials) = connect::connect(&config).await?;
        if config.create_if_missing {
            connect::create_table(&config, credentials.as_ref()).await?;
        }
        let client = Client::new(connection, &config.table, config.operation_timeout)
            .map_err(|error| OpenError::InvalidConfig(error.to_string()))?;
        let keys = Keys::new(&config.namespace);
        // One empty row: proves the endpoint, the credentials and the table.
        let probe = RowSet {
            row_keys: vec![keys.streams()],
            row_ranges: Vec::new(),
        };
        let probed = tokio::time::timeout(
            config.connect_timeout,
            client.read_rows(probe, head_filter(true), 1),
        )
        .await;
        match probed {
            Err(_) => {
                return Err(OpenError::Connect {
                    endpoint: connect::endpoint_name(&config),
                    timeout: config.connect_timeout,
                    reason: "no answer".into(),
                });
            }
            Ok(Err(CallError::Status(status))) => {
                return Err(connect::open_error(&config, status));
            }
            Ok(Err(CallError::NotSent(error))) => return Err(OpenError::Credentials(error)),
            Ok(Err(error)) => {
                return Err(OpenError::Connect {
                    endpoint: connect::endpoint_name(&config),
                    timeout: config.connect_timeout,
                    reason: error.to_string(),
                });
            }
            Ok(Ok(_)) => {}
        }
        let capabilities = StoreCapabilities::UNLIMITED
            .with_max_batch_len(config.max_batch_len)
            .with_max_batch_bytes(BigtableConfig::MAX_BATCH_BYTES)
            .with_max_event_bytes(config.max_event_bytes)
            .with_max_snapshot_bytes(config.max_snapshot_bytes);
        Ok(Self {
            inner: Arc::new(Inner {
                client,
                keys,
                capabilities,
                table: config.table,
                namespace: config.namespace,
            }),
        })
    }

    /// Reads `rows` through `filter`, sorting the failure as a read's.
    async fn read_rows(
        &self,
        rows: RowSet,
        filter: RowFilter,
        limit: i64,
    ) -> Result<Vec<Row>, Failure> {
        self.inner
            .client
            .read_rows(rows, filter, limit)
            .await
            .map_err(|error| Failure::of(error, Op::Other))
    }

    /// The cells of one row that pass `filter`; none if the row does not exist.
    async fn read_row(&self, key: Vec<u8>, filter: RowFilter) -> Result<Vec<Cell>, Failure> {
        let rows = self.read_rows(one_row(key), filter, 1).await?;
        Ok(rows
            .into_iter()
            .next()
            .map(|row| row.cells)
            .unwrap_or_default())
    }

    /// The stream's next sequence, from its head cell.
    async fn head(&self, aggregate: &AggregateId) -> Result<u64, Failure> {
        let cells = self
            .read_row(self.inner.keys.stream(aggregate), head_filter(false))
            .await?;
        match cells.first() {
            Some(cell) => keys::parse_sequence(&cell.value),
            None => Ok(0),
        }
    }

    /// The index cells of `id` in `family` of the stream row `key`, ascending by first
    /// sequence.
    async fn index(
        &self,
        key: Vec<u8>,
        family: &str,
        id: &str,
    ) -> Result<Vec<IndexEntry>, Failure> {
        let (low, high) = keys::index_qualifiers(id);
        let filter = chain(vec![column_range(family, low, Some(high), true), latest()]);
        let mut entries = Vec::new();
        for cell in self.read_row(key, filter).await? {
            let with_digest = family == keys::REQUESTS;
            if let Some(entry) = keys::parse_index(&cell.qualifier, &cell.value, id, with_digest)? {
                entries.push(entry);
            }
        }
        entries.sort_by_key(|entry| entry.first);
        Ok(entries)
    }

    /// The events of stream row `key` in the ranges of `entries`, ascending.
    async fn indexed_events(
        &self,
        key: &[u8],
        entries: &[IndexEntry],
    ) -> Result<Vec<EventPage>, Failure> {
        let mut pages = Vec::new();
        for group in entries.chunks(RANGES_PER_READ) {
            let ranges = group
                .iter()
                .map(|entry| event_range(entry.first, Some(entry.end)))
                .collect();
            let filter = chain(vec![interleave(ranges), latest()]);
            let cells = self.read_row(key.to_vec(), filter).await?;
            pages.extend(events(&cells)?);
        }
        pages.sort_by_key(|page| page.sequence);
        pages.dedup_by_key(|page| page.sequence);
        let wanted: u64 = entries.iter().map(|entry| entry.end - entry.first).sum();
        if pages.len() as u64 != wanted {
            return Err(Failure::corrupt(format!(
                "the index names {wanted} events, the stream holds {} of them",
                pages.len()
            )));
        }
        Ok(pages)
    }

    /// Writes, before an append, the intent rows of the batch's correlation ids: a reader
    /// that finds the events by their correlation id finds the aggregate through them.
    async fn write_intents(
        &self,
        aggregate: &AggregateId,
        correlation_ids: &BTreeSet<&str>,
    ) -> Result<(), Failure> {
        for id in correlation_ids {
            let key = self.inner.keys.intent(id, aggregate);
            let mutation = set_cell(keys::CORRELATIONS, keys::INTENT.to_vec(), Vec::new());
            self.inner
                .client
                .mutate_row(key, vec![mutation])
                .await
                .map_err(|error| Failure::of(error, Op::Other))?;
        }
        Ok(())
    }

    async fn try_append(&self, aggregate: &AggregateId, append: Append) -> Result<u64, Failure> {
        let expected = append.expected_sequence;
        let Some(end) = u64::try_from(append.events.len())
            .ok()
            .and_then(|len| expected.checked_add(len))
        else {
            // No stream reaches the end of the number line: the stream is not there.
            return Err(self.conflict(aggregate, expected).await);
        };
        let runs = correlation_runs(&append.events);
        let correlation_ids: BTreeSet<&str> = runs.iter().map(|(id, _, _)| *id).collect();
        self.write_intents(aggregate, &correlation_ids).await?;

        let mut mutations = Vec::with_capacity(append.events.len() + runs.len() + 2);
        for (id, first, run_end) in &runs {
            mutations.push(set_cell(
                keys::CORRELATIONS,
                keys::index_qualifier(id, *first),
                keys::correlation_value(*run_end, id),
            ));
        }
        if let Some(request) = &append.request {
            mutations.push(set_cell(
                keys::REQUESTS,
                keys::index_qualifier(&request.id, expected),
                keys::request_value(&request.digest, end, &request.id),
            ));
        }
        for page in &append.events {
            mutations.push(set_cell(
                keys::EVENTS,
                keys::sequence(page.sequence),
                page.encode_to_vec(),
            ));
        }
        mutations.push(set_cell(
            keys::HEAD,
            keys::NEXT.to_vec(),
            keys::sequence(end),
        ));

        // At 0 the row must have no head (apply when the predicate finds nothing); past 0 its
        // head must hold `expected` (apply when it does). `latest()` keeps an older version of
        // the head from matching, should one survive.
        let (predicate, on_match) = if expected == 0 {
            (head_filter(false), false)
        } else {
            let equals = RowFilter {
                filter: Some(row_filter::Filter::ValueRangeFilter(ValueRange {
                    start_value: Some(value_range::StartValue::StartValueClosed(keys::sequence(
                        expected,
                    ))),
                    end_value: Some(value_range::EndValue::EndValueClosed(keys::sequence(
                        expected,
                    ))),
                })),
            };
            (chain(vec![head_filter(false), equals]), true)
        };
        let matched = self
            .inner
            .client
            .check_and_mutate(
                self.inner.keys.stream(aggregate),
                predicate,
                on_match,
                mutations,
            )
            .await
            .map_err(|error| Failure::of(error, Op::Append))?;
        if matched == on_match {
            Ok(end)
        } else {
            Err(self.conflict(aggregate, expected).await)
        }
    }

    /// The conflict of an append at `expected`, naming the stream's real end.
    async fn conflict(&self, aggregate: &AggregateId, expected: u64) -> Failure {
        match self.head(aggregate).await {
            Ok(actual) => Failure::Conflict { expected, actual },
            Err(failure) => failure,
        }
    }
}

#[async_trait]
impl EventStore for BigtableStore {
    fn capabilities(&self) -> StoreCapabilities {
        self.inner.capabilities.clone()
    }

    async fn append(
        &self,
        aggregate: &AggregateId,
        append: Append,
    ) -> Result<u64, EventStoreError> {
        validate_append(&append, &self.inner.capabilities)?;
        Ok(self.try_append(aggregate, append).await?)
    }

    async fn read(
        &self,
        aggregate: &AggregateId,
        range: SequenceRange,
    ) -> Result<Vec<EventPage>, EventStoreError> {
        if range.to.is_some_and(|to| to <= range.from) {
            return Ok(Vec::new());
        }
        let filter = chain(vec![event_range(range.from, range.to), latest()]);
        let cells = self
            .read_row(self.inner.keys.stream(aggregate), filter)
            .await?;
        Ok(events(&cells)?)
    }

    async fn next_sequence(&self, aggregate: &AggregateId) -> Result<u64, EventStoreError> {
        Ok(self.head(aggregate).await?)
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
        let keys = &self.inner.keys;
        let prefix = keys.domain_streams(domain);
        let start = match after {
            Some(after) => row_range::StartKey::StartKeyOpen(keys.root_stream(domain, after)),
            None => row_range::StartKey::StartKeyClosed(prefix.clone()),
        };
        let rows = RowSet {
            row_keys: Vec::new(),
            row_ranges: vec![RowRange {
                start_key: Some(start),
                end_key: Some(row_range::EndKey::EndKeyOpen(keys::prefix_end(&prefix))),
            }],
        };
        let limit = i64::try_from(limit).unwrap_or(i64::MAX);
        let rows = self.read_rows(rows, head_filter(true), limit).await?;
        let mut roots = Vec::with_capacity(rows.len());
        for row in rows {
            roots.push(Keys::aggregate_of(&row.key)?.root());
        }
        Ok(roots)
    }

    async fn list_domains(&self) -> Result<Vec<Domain>, EventStoreError> {
        // A skip scan: the first stream row from `start`, then past all of its domain's rows.
        let keys = &self.inner.keys;
        let streams = keys.streams();
        let end = keys::prefix_end(&streams);
        let mut start = streams;
        let mut domains = Vec::new();
        loop {
            let rows = RowSet {
                row_keys: Vec::new(),
                row_ranges: vec![RowRange {
                    start_key: Some(row_range::StartKey::StartKeyClosed(start)),
                    end_key: Some(row_range::EndKey::EndKeyOpen(end.clone())),
                }],
            };
            let rows = self.read_rows(rows, head_filter(true), 1).await?;
            let Some(row) = rows.first() else {
                return Ok(domains);
            };
            let domain = keys.domain_of(&row.key)?;
            start = keys::prefix_end(&keys.domain_streams(&domain));
            domains.push(domain);
        }
    }

    async fn find_by_correlation(
        &self,
        correlation_id: &str,
    ) -> Result<Vec<AggregateEvents>, EventStoreError> {
        if correlation_id.is_empty() {
            return Ok(Vec::new());
        }
        let keys = &self.inner.keys;
        let prefix = keys.intents(correlation_id);
        let rows = RowSet {
            row_keys: Vec::new(),
            row_ranges: vec![RowRange {
                start_key: Some(row_range::StartKey::StartKeyClosed(prefix.clone())),
                end_key: Some(row_range::EndKey::EndKeyOpen(keys::prefix_end(&prefix))),
            }],
        };
        let filter = chain(vec![latest(), strip()]);
        let intents = self.read_rows(rows, filter, 0).await?;
        // Intent rows sort by (domain, root), the order the port wants. Each is checked against
        // the stream's own index, written with its events: an intent whose append never
        // happened finds nothing there.
        let mut found = Vec::new();
        for intent in intents {
            let aggregate = Keys::aggregate_of(&intent.key)?;
            let key = keys.stream(&aggregate);
            let entries = self
                .index(key.clone(), keys::CORRELATIONS, correlation_id)
                .await?;
            if entries.is_empty() {
                continue;
            }
            let pages = self.indexed_events(&key, &entries).await?;
            if pages
                .iter()
                .any(|page| page.correlation_id != correlation_id)
            {
                return Err(Failure::corrupt(format!(
                    "the correlation index of {aggregate} names events of another id"
                ))
                .into());
            }
            found.push(AggregateEvents { aggregate, pages });
        }
        Ok(found)
    }

    async fn find_by_request(
        &self,
        aggregate: &AggregateId,
        request_id: &str,
    ) -> Result<Option<RequestRecord>, EventStoreError> {
        let key = self.inner.keys.stream(aggregate);
        let entries = self.index(key.clone(), keys::REQUESTS, request_id).await?;
        let Some(first) = entries.first() else {
            return Ok(None);
        };
        let digest = first.digest;
        let pages = self.indexed_events(&key, &entries).await?;
        Ok(Some(RequestRecord { digest, pages }))
    }
}

#[async_trait]
impl SnapshotStore for BigtableStore {
    async fn get(&self, aggregate: &AggregateId) -> Result<Option<Snapshot>, SnapshotStoreError> {
        let filter = chain(vec![
            column_range(
                keys::SNAPSHOTS,
                keys::SNAPSHOT.to_vec(),
                Some(keys::SNAPSHOT.to_vec()),
                true,
            ),
            latest(),
        ]);
        let cells = self
            .read_row(self.inner.keys.snapshot(aggregate), filter)
            .await?;
        let Some(cell) = cells.first() else {
            return Ok(None);
        };
        Snapshot::decode(cell.value.as_slice())
            .map(Some)
            .map_err(|error| {
                SnapshotStoreError::Corrupt(format!("snapshot of {aggregate}: {error}"))
            })
    }

    async fn put(
        &self,
        aggregate: &AggregateId,
        snapshot: Snapshot,
    ) -> Result<(), SnapshotStoreError> {
        self.inner.capabilities.check_snapshot(&snapshot)?;
        let mutation = set_cell(
            keys::SNAPSHOTS,
            keys::SNAPSHOT.to_vec(),
            snapshot.encode_to_vec(),
        );
        self.inner
            .client
            .mutate_row(self.inner.keys.snapshot(aggregate), vec![mutation])
            .await
            .map_err(|error| Failure::of(error, Op::Other))?;
        Ok(())
    }

    async fn delete(&self, aggregate: &AggregateId) -> Result<(), SnapshotStoreError> {
        self.inner
            .client
            .mutate_row(self.inner.keys.snapshot(aggregate), vec![delete_row()])
            .await
            .map_err(|error| Failure::of(error, Op::Other))?;
        Ok(())
    }
}

/// The runs of consecutive events carrying the same non-empty correlation id: (id, first
/// sequence, end sequence).
fn correlation_runs(events: &[EventPage]) -> Vec<(&str, u64, u64)> {
    let mut runs: Vec<(&str, u64, u64)> = Vec::new();
    for page in events {
        let id = page.correlation_id.as_str();
        if id.is_empty() {
            continue;
        }
        match runs.last_mut() {
            Some((last, _, end)) if *last == id && *end == page.sequence => *end += 1,
            _ => runs.push((id, page.sequence, page.sequence + 1)),
        }
    }
    runs
}

/// The pages of event cells, checked against their qualifiers.
fn events(cells: &[Cell]) -> Result<Vec<EventPage>, Failure> {
    let mut pages = Vec::with_capacity(cells.len());
    for cell in cells {
        let sequence = keys::parse_sequence(&cell.qualifier)?;
        let page = angzarr_ports::decode_event_page(cell.value.as_slice())
            .map_err(|error| Failure::corrupt(format!("event {sequence}: {error}")))?;
        if page.sequence != sequence {
            return Err(Failure::corrupt(format!(
                "the event stored at {sequence} has sequence {}",
                page.sequence
            )));
        }
        pages.push(page);
    }
    Ok(pages)
}

fn one_row(key: Vec<u8>) -> RowSet {
    RowSet {
        row_keys: vec![key],
        row_ranges: Vec::new(),
    }
}

fn chain(filters: Vec<RowFilter>) -> RowFilter {
    RowFilter {
        filter: Some(row_filter::Filter::Chain(row_filter::Chain { filters })),
    }
}

/// The union of `filters` (Bigtable refuses an interleave of fewer than two).
fn interleave(mut filters: Vec<RowFilter>) -> RowFilter {
    if filters.len() == 1
        && let Some(only) = filters.pop()
    {
        return only;
    }
    RowFilter {
        filter: Some(row_filter::Filter::Interleave(row_filter::Interleave {
            filters,
        })),
    }
}

/// The newest version of each column only. Every cell is written at timestamp 0 and the
/// families keep one version, so there is one; this makes sure of it.
fn latest() -> RowFilter {
    RowFilter {
        filter: Some(row_filter::Filter::CellsPerColumnLimitFilter(1)),
    }
}

/// Replaces every value with the empty string.
fn strip() -> RowFilter {
    RowFilter {
        filter: Some(row_filter::Filter::StripValueTransformer(true)),
    }
}

/// The columns of `family` from `start` (closed) to `end` (closed or open; `None`: the end).
fn column_range(family: &str, start: Vec<u8>, end: Option<Vec<u8>>, end_closed: bool) -> RowFilter {
    let end_qualifier = end.map(|end| {
        if end_closed {
            column_range::EndQualifier::EndQualifierClosed(end)
        } else {
            column_range::EndQualifier::EndQualifierOpen(end)
        }
    });
    RowFilter {
        filter: Some(row_filter::Filter::ColumnRangeFilter(ColumnRange {
            family_name: family.to_owned(),
            start_qualifier: Some(column_range::StartQualifier::StartQualifierClosed(start)),
            end_qualifier,
        })),
    }
}

/// The event cells of sequences `from..to`.
fn event_range(from: u64, to: Option<u64>) -> RowFilter {
    column_range(
        keys::EVENTS,
        keys::sequence(from),
        to.map(keys::sequence),
        false,
    )
}

/// The head cell (latest version), its value stripped if `stripped`.
fn head_filter(stripped: bool) -> RowFilter {
    let mut filters = vec![
        column_range(
            keys::HEAD,
            keys::NEXT.to_vec(),
            Some(keys::NEXT.to_vec()),
            true,
        ),
        latest(),
    ];
    if stripped {
        filters.push(strip());
    }
    chain(filters)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn page(sequence: u64, correlation: &str) -> EventPage {
        EventPage {
            sequence,
            correlation_id: correlation.to_owned(),
            ..EventPage::default()
        }
    }

    #[test]
    fn correlation_runs_split_where_the_id_changes() {
        let events = [
            page(4, "a"),
            page(5, "a"),
            page(6, ""),
            page(7, "a"),
            page(8, "b"),
            page(9, "b"),
        ];
        assert_eq!(
            correlation_runs(&events),
            [("a", 4, 6), ("a", 7, 8), ("b", 8, 10)]
        );
    }
}

//! [`RedisStore`]: the ports over a Redis server or cluster.

use std::collections::BTreeSet;
use std::fmt;
use std::sync::Arc;

use angzarr_ports::{
    AggregateEvents, AggregateId, Append, Domain, EventPage, EventStore, EventStoreError,
    RequestRecord, SequenceRange, Snapshot, SnapshotStore, SnapshotStoreError, StoreCapabilities,
    Uuid, async_trait, validate_append,
};
use futures_util::future::try_join_all;
use prost::Message;
use redis::{Cmd, cmd};

use crate::config::RedisConfig;
use crate::connection::{Connection, convert};
use crate::error::{CallError, Failure, Op, OpenError};
use crate::keys::{self, Keys, SEQUENCE_LIMIT};
use crate::script::{self, Script};

/// The most roots one listing request asks Redis for.
const ROOTS_PER_REQUEST: usize = 1000;

/// An [`EventStore`] and [`SnapshotStore`] over one Redis server or a Redis Cluster, cheap to
/// clone and share (clones share the connections).
///
/// Every append is one Lua script on the aggregate's slot. See the crate documentation for the
/// key layout and the guarantees.
#[derive(Clone)]
pub struct RedisStore {
    inner: Arc<Inner>,
}

struct Inner {
    connection: Connection,
    keys: Keys,
    capabilities: StoreCapabilities,
    prefix: String,
    append: Script,
    lookup: Script,
}

impl fmt::Debug for RedisStore {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("RedisStore")
            .field("cluster", &self.inner.connection.is_cluster())
            .field("key_prefix", &self.inner.prefix)
            .finish_non_exhaustive()
    }
}

impl RedisStore {
    /// Connects to the server or cluster of `config` and checks that it answers, as the
    /// topology it is configured as. Nothing is created: keys appear with the first writes.
    pub async fn open(config: RedisConfig) -> Result<Self, OpenError> {
        config.validate()?;
        let connection = Connection::open(&config).await?;
        let keys = Keys::new(&config.key_prefix);
        // Proves that the slot is served and that the credentials may read our keys.
        let probe: Result<i64, CallError> =
            connection.query(cmd("EXISTS").arg(keys.domains())).await;
        probe.map_err(|error| match error {
            CallError::NotSent(error) | CallError::Sent(error) => OpenError::Connect(error),
            CallError::Reply(message) => OpenError::WrongTopology(message),
        })?;
        let capabilities = StoreCapabilities::UNLIMITED
            .with_max_event_bytes(config.max_event_bytes)
            .with_max_snapshot_bytes(config.max_snapshot_bytes)
            // One server runs one command or script at a time, and reads are served by it:
            // appends have one order that every reader sees. A cluster has one per slot.
            .with_global_order(!connection.is_cluster());
        Ok(Self {
            inner: Arc::new(Inner {
                connection,
                keys,
                capabilities,
                prefix: config.key_prefix,
                append: Script::new(script::APPEND),
                lookup: Script::new(script::LOOKUP),
            }),
        })
    }

    /// Whether the store is over a Redis Cluster.
    pub fn is_cluster(&self) -> bool {
        self.inner.connection.is_cluster()
    }

    /// Sends a read, or a write that may be repeated.
    async fn query<T: redis::FromRedisValue>(&self, cmd: &Cmd) -> Result<T, Failure> {
        self.inner
            .connection
            .query(cmd)
            .await
            .map_err(|error| Failure::of(error, Op::Other))
    }

    /// The pages stored under `members`.
    fn pages(members: &[Vec<u8>]) -> Result<Vec<EventPage>, Failure> {
        // Collecting into a `Result` loses the length: sized once, not regrown.
        let mut pages = Vec::with_capacity(members.len());
        for member in members {
            pages.push(keys::parse_event_member(member)?);
        }
        Ok(pages)
    }

    /// The events of `aggregate` recorded in its `index` under `id`, and the index members.
    async fn lookup(
        &self,
        index: &str,
        events: &str,
        id: &str,
        tail: usize,
    ) -> Result<(Vec<Vec<u8>>, Vec<EventPage>), Failure> {
        let (min, max) = keys::id_range(id, tail)?;
        let tail = tail.to_string();
        let reply = self
            .inner
            .lookup
            .run(
                &self.inner.connection,
                &[index, events],
                &[&min, &max, tail.as_bytes()],
            )
            .await
            .and_then(convert::<(Vec<Vec<u8>>, Vec<Vec<u8>>)>)
            .map_err(|error| Failure::of(error, Op::Other))?;
        let (members, pages) = reply;
        Ok((members, Self::pages(&pages)?))
    }

    /// Whether `aggregate` has at least one event.
    async fn has_events(&self, aggregate: &AggregateId) -> Result<bool, Failure> {
        let events = self.inner.keys.aggregate(aggregate).events;
        self.query(cmd("EXISTS").arg(events)).await
    }

    /// Writes the index entries an append needs in other slots than its aggregate's, before
    /// the append: a reader that sees its events then finds them listed. Entries whose append
    /// never comes are ignored by the readers (see the crate documentation).
    async fn index_before_append(
        &self,
        aggregate: &AggregateId,
        first_events: bool,
        correlation_ids: &BTreeSet<&str>,
    ) -> Result<(), Failure> {
        let keys = &self.inner.keys;
        let mut writes = Vec::new();
        if first_events {
            // An aggregate's first append is at sequence 0, so these are written before any
            // of its events exist, and never needed again.
            writes.push(
                cmd("ZADD")
                    .arg(keys.domains())
                    .arg(0)
                    .arg(aggregate.domain().as_str())
                    .clone(),
            );
            writes.push(
                cmd("ZADD")
                    .arg(keys.roots(aggregate.domain()))
                    .arg(0)
                    .arg(keys::root(aggregate.root()))
                    .clone(),
            );
        }
        let member = keys::aggregate_member(aggregate);
        for id in correlation_ids {
            writes.push(cmd("SADD").arg(keys.correlation(id)).arg(&member).clone());
        }
        try_join_all(writes.iter().map(|write| self.query::<redis::Value>(write))).await?;
        Ok(())
    }

    async fn append_checked(
        &self,
        aggregate: &AggregateId,
        append: Append,
    ) -> Result<u64, EventStoreError> {
        validate_append(&append, &self.inner.capabilities)?;
        let expected = append.expected_sequence;
        let len = append.events.len() as u64;
        let Some(end) = expected
            .checked_add(len)
            .filter(|end| *end <= SEQUENCE_LIMIT)
        else {
            // No stream gets near 2^53 events, so such an append cannot be at the end of its
            // stream: answer as the model does, with the stream's real end.
            let actual = self.next_sequence(aggregate).await?;
            if actual != expected {
                return Err(EventStoreError::Conflict { expected, actual });
            }
            return Err(EventStoreError::InvalidArgument(format!(
                "the Redis store keeps sequences below 2^53; this append would reach {expected} + {len}"
            )));
        };
        let keys = &self.inner.keys;
        let aggregate_keys = keys.aggregate(aggregate);
        let token = token();

        let mut args: Vec<Vec<u8>> = Vec::with_capacity(2 * append.events.len() + 8);
        args.push(expected.to_string().into_bytes());
        args.push(len.to_string().into_bytes());
        for page in &append.events {
            args.push(keys::score(page.sequence).into_bytes());
            args.push(keys::event_member(page.sequence, token, page)?);
        }
        args.push(match &append.request {
            Some(request) => keys::request_member(&request.id, expected, end, &request.digest)?,
            None => Vec::new(),
        });
        let runs = correlation_runs(&append.events);
        args.push(runs.len().to_string().into_bytes());
        for (id, from, to) in &runs {
            args.push(keys::correlation_member(id, *from, *to)?);
        }
        let correlation_ids: BTreeSet<&str> = runs.iter().map(|(id, _, _)| *id).collect();

        let mut script_keys = vec![
            aggregate_keys.events,
            aggregate_keys.requests,
            aggregate_keys.correlations,
        ];
        if self.inner.connection.is_cluster() {
            self.index_before_append(aggregate, expected == 0, &correlation_ids)
                .await?;
        } else {
            // One server: the indexes are written by the script itself, in the same step.
            script_keys.push(keys.domains());
            script_keys.push(keys.roots(aggregate.domain()));
            script_keys.extend(correlation_ids.iter().map(|id| keys.correlation(id)));
            args.push(aggregate.domain().as_str().as_bytes().to_vec());
            args.push(keys::root(aggregate.root()).into_bytes());
            args.push(keys::aggregate_member(aggregate).into_bytes());
        }

        // The cluster client re-sends a request by itself (after a lost connection, a
        // redirection, `TRYAGAIN`...): the error it returns may follow a copy that ran.
        let op = if self.inner.connection.is_cluster() {
            Op::RetriedAppend
        } else {
            Op::Append
        };
        let script_keys: Vec<&str> = script_keys.iter().map(String::as_str).collect();
        let args: Vec<&[u8]> = args.iter().map(Vec::as_slice).collect();
        let (status, value): (i64, redis::Value) = self
            .inner
            .append
            .run(&self.inner.connection, &script_keys, &args)
            .await
            .and_then(convert)
            .map_err(|error| Failure::of(error, op))?;
        if status == -1 {
            // Refused before the first write, and no earlier copy was applied (see the script).
            let reason: String = convert(value).map_err(|error| Failure::of(error, op))?;
            return Err(Failure::refused(reason).into());
        }
        let next = convert::<i64>(value)
            .and_then(|next| {
                u64::try_from(next).map_err(|_| {
                    CallError::Reply(format!("the append script answered a sequence of {next}"))
                })
            })
            .map_err(|error| Failure::of(error, op))?;
        match status {
            1 => Ok(next),
            0 => Err(EventStoreError::Conflict {
                expected,
                actual: next,
            }),
            _ => Err(Failure::of(
                CallError::Reply(format!("the append script answered status {status}")),
                op,
            )
            .into()),
        }
    }
}

/// A random token that tells this append's events from any other append's.
fn token() -> [u8; 8] {
    // A v4 UUID's fixed bits sit at different places in its halves: their XOR is random.
    let (high, low) = Uuid::new_v4().as_u64_pair();
    (high ^ low).to_be_bytes()
}

/// The runs of consecutive events with the same non-empty correlation id: `(id, from, to)`.
fn correlation_runs(events: &[EventPage]) -> Vec<(&str, u64, u64)> {
    let mut runs: Vec<(&str, u64, u64)> = Vec::new();
    for page in events.iter().filter(|page| !page.correlation_id.is_empty()) {
        match runs.last_mut() {
            Some((id, _, to)) if *id == page.correlation_id && *to == page.sequence => *to += 1,
            _ => runs.push((&page.correlation_id, page.sequence, page.sequence + 1)),
        }
    }
    runs
}

#[async_trait]
impl EventStore for RedisStore {
    fn capabilities(&self) -> StoreCapabilities {
        self.inner.capabilities.clone()
    }

    async fn append(
        &self,
        aggregate: &AggregateId,
        append: Append,
    ) -> Result<u64, EventStoreError> {
        self.append_checked(aggregate, append).await
    }

    async fn read(
        &self,
        aggregate: &AggregateId,
        range: SequenceRange,
    ) -> Result<Vec<EventPage>, EventStoreError> {
        // Stored sequences are below 2^53, where scores are exact: cut the range there.
        let to = range.to.map_or(SEQUENCE_LIMIT, |to| to.min(SEQUENCE_LIMIT));
        if range.from >= to {
            return Ok(Vec::new());
        }
        let events = self.inner.keys.aggregate(aggregate).events;
        let members: Vec<Vec<u8>> = self
            .query(
                cmd("ZRANGEBYSCORE")
                    .arg(events)
                    .arg(keys::score(range.from))
                    .arg(format!("({to}")),
            )
            .await?;
        Ok(Self::pages(&members)?)
    }

    async fn next_sequence(&self, aggregate: &AggregateId) -> Result<u64, EventStoreError> {
        // Streams are gapless from 0: the number of events is the next sequence.
        let events = self.inner.keys.aggregate(aggregate).events;
        Ok(self.query(cmd("ZCARD").arg(events)).await?)
    }

    async fn list_roots(
        &self,
        domain: &Domain,
        after: Option<Uuid>,
        limit: usize,
    ) -> Result<Vec<Uuid>, EventStoreError> {
        let key = self.inner.keys.roots(domain);
        // `(` makes the bound exclusive: roots strictly after `after`.
        let mut min =
            after.map_or_else(|| "-".to_owned(), |after| format!("({}", keys::root(after)));
        let mut roots = Vec::new();
        while roots.len() < limit {
            let want = (limit - roots.len()).min(ROOTS_PER_REQUEST);
            let listed: Vec<Vec<u8>> = self
                .query(
                    cmd("ZRANGEBYLEX")
                        .arg(&key)
                        .arg(&min)
                        .arg("+")
                        .arg("LIMIT")
                        .arg(0)
                        .arg(want),
                )
                .await?;
            let candidates = listed
                .iter()
                .map(|text| keys::parse_root(text))
                .collect::<Result<Vec<Uuid>, Failure>>()?;
            // An entry whose append never came (its writer died, or the append failed) has no
            // events: it is not listed.
            let live = try_join_all(candidates.iter().map(|root| async move {
                let aggregate =
                    AggregateId::new(domain.clone(), *root).map_err(Failure::corrupt)?;
                Ok::<_, Failure>(self.has_events(&aggregate).await?.then_some(*root))
            }))
            .await?;
            roots.extend(live.into_iter().flatten());
            match candidates.last() {
                Some(last) if candidates.len() == want => min = format!("({}", keys::root(*last)),
                _ => break,
            }
        }
        roots.truncate(limit);
        Ok(roots)
    }

    async fn list_domains(&self) -> Result<Vec<Domain>, EventStoreError> {
        let listed: Vec<Vec<u8>> = self
            .query(
                cmd("ZRANGEBYLEX")
                    .arg(self.inner.keys.domains())
                    .arg("-")
                    .arg("+"),
            )
            .await?;
        let domains = listed
            .iter()
            .map(|text| keys::parse_domain(text))
            .collect::<Result<Vec<Domain>, Failure>>()?;
        // A domain is listed once one of its roots has events.
        let live = try_join_all(domains.into_iter().map(|domain| async move {
            let roots = self.list_roots(&domain, None, 1).await?;
            Ok::<_, EventStoreError>((!roots.is_empty()).then_some(domain))
        }))
        .await?;
        Ok(live.into_iter().flatten().collect())
    }

    async fn find_by_correlation(
        &self,
        correlation_id: &str,
    ) -> Result<Vec<AggregateEvents>, EventStoreError> {
        if correlation_id.is_empty() {
            return Ok(Vec::new());
        }
        let members: Vec<Vec<u8>> = self
            .query(cmd("SMEMBERS").arg(self.inner.keys.correlation(correlation_id)))
            .await?;
        let mut aggregates = members
            .iter()
            .map(|member| keys::parse_aggregate_member(member))
            .collect::<Result<Vec<AggregateId>, Failure>>()?;
        aggregates.sort();
        // The set only says where to look; each aggregate's own index, written with its
        // events, says what is there (nothing, if the append that added it failed).
        let groups = try_join_all(aggregates.into_iter().map(|aggregate| async move {
            let aggregate_keys = self.inner.keys.aggregate(&aggregate);
            let (_, pages) = self
                .lookup(
                    &aggregate_keys.correlations,
                    &aggregate_keys.events,
                    correlation_id,
                    keys::CORRELATION_TAIL_LEN,
                )
                .await?;
            Ok::<_, Failure>((!pages.is_empty()).then_some(AggregateEvents { aggregate, pages }))
        }))
        .await?;
        Ok(groups.into_iter().flatten().collect())
    }

    async fn find_by_request(
        &self,
        aggregate: &AggregateId,
        request_id: &str,
    ) -> Result<Option<RequestRecord>, EventStoreError> {
        let aggregate_keys = self.inner.keys.aggregate(aggregate);
        let (members, pages) = self
            .lookup(
                &aggregate_keys.requests,
                &aggregate_keys.events,
                request_id,
                keys::REQUEST_TAIL_LEN,
            )
            .await?;
        let Some(first) = members.first() else {
            return Ok(None);
        };
        if pages.is_empty() {
            return Err(Failure::corrupt(format_args!(
                "request id {request_id:?} of {aggregate} is indexed without events"
            ))
            .into());
        }
        Ok(Some(RequestRecord {
            // Members sort by their first sequence: the first is the first append's.
            digest: Some(keys::request_digest(first)?),
            pages,
        }))
    }
}

#[async_trait]
impl SnapshotStore for RedisStore {
    async fn get(&self, aggregate: &AggregateId) -> Result<Option<Snapshot>, SnapshotStoreError> {
        let key = self.inner.keys.aggregate(aggregate).snapshot;
        let stored: Option<Vec<u8>> = self.query(cmd("GET").arg(key)).await?;
        stored
            .map(|bytes| Snapshot::decode(bytes.as_slice()))
            .transpose()
            .map_err(|error| SnapshotStoreError::Corrupt(error.to_string()))
    }

    async fn put(
        &self,
        aggregate: &AggregateId,
        snapshot: Snapshot,
    ) -> Result<(), SnapshotStoreError> {
        self.inner.capabilities.check_snapshot(&snapshot)?;
        let key = self.inner.keys.aggregate(aggregate).snapshot;
        let _: redis::Value = self
            .query(cmd("SET").arg(key).arg(snapshot.encode_to_vec()))
            .await?;
        Ok(())
    }

    async fn delete(&self, aggregate: &AggregateId) -> Result<(), SnapshotStoreError> {
        let key = self.inner.keys.aggregate(aggregate).snapshot;
        let _: redis::Value = self.query(cmd("DEL").arg(key)).await?;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn page(sequence: u64, correlation: &str) -> EventPage {
        EventPage {
            sequence,
            correlation_id: correlation.into(),
            ..EventPage::default()
        }
    }

    #[test]
    fn correlation_runs_group_consecutive_ids() {
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

    #[test]
    fn tokens_differ() {
        let tokens: BTreeSet<[u8; 8]> = (0..1000).map(|_| token()).collect();
        assert_eq!(tokens.len(), 1000);
    }
}

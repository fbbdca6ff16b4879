//! The command pipeline: load, decide, validate, append, snapshot.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::SystemTime;

use angzarr_ports::{
    AggregateId, Append, ClientLogic, ClientLogicError, CommandDigest, Domain, EventStore,
    EventStoreError, EventStoreExt, RequestKey, SnapshotStore, StoreCapabilities,
};
use angzarr_proto::v1::{
    BusinessReply, CommandBook, CommandResponse, ContextualCommand, Cover, EventBook, EventPage,
    EventsEmitted, Snapshot, business_reply::Outcome,
};
use sha2::{Digest, Sha256};
use tracing::Instrument;

use crate::CommandError;
use crate::cache::HistoryCache;
use crate::locks::AggregateLocks;
use group::CommandQueues;

mod group;

/// Limits and policies of a [`Gateway`].
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct GatewayConfig {
    /// How often a command with `retry_on_conflict` is reloaded and re-run after losing a race.
    pub max_conflict_retries: u32,
    /// The most events one command may cause. The store's own limit applies too.
    pub max_events_per_command: usize,
    /// The largest encoded event accepted, in bytes. The store's own limit applies too.
    pub max_event_bytes: usize,
    /// The most command pages in one `CommandBook`.
    pub max_command_pages: usize,
    /// The longest `request_id` or `correlation_id` accepted, in bytes.
    pub max_id_len: usize,
    /// How many events of recently used histories are kept in memory, so that a command for
    /// an aggregate written recently need not read it back; a folded state weighs one event per
    /// KiB. 0 disables the cache.
    pub cached_events: usize,
    /// How far the clocks of the gateways sharing a store may disagree. An append that
    /// conflicts with events another gateway stamped more than this before the command arrived
    /// met a history cached here before that write, not a race: the command is decided again
    /// on the current state even without `retry_on_conflict`.
    pub max_clock_skew: std::time::Duration,
    /// How many commands queued on one aggregate are decided one after another and appended
    /// together, in one write (one fsync), when it is busy. Each keeps its own outcome; commands
    /// with a `request_id` are always appended alone. 1 disables grouping.
    pub max_group_commands: usize,
}

impl Default for GatewayConfig {
    fn default() -> Self {
        Self {
            max_conflict_retries: 8,
            max_events_per_command: 10_000,
            max_event_bytes: 1024 * 1024,
            max_command_pages: 100,
            max_id_len: 256,
            cached_events: 100_000,
            max_clock_skew: std::time::Duration::from_millis(500),
            max_group_commands: 64,
        }
    }
}

/// Executes commands: the core of angzarr.
///
/// For each command it loads the aggregate (latest snapshot and the events after it), hands it
/// with the command to the domain's [`ClientLogic`], checks the events that come back, appends
/// them atomically at the sequence it loaded, and stores the snapshot the logic returned.
/// Cheap to clone; clones share everything.
#[derive(Clone)]
pub struct Gateway {
    inner: Arc<Inner>,
}

struct Inner {
    events: Arc<dyn EventStore>,
    snapshots: Arc<dyn SnapshotStore>,
    logic: HashMap<Domain, Arc<dyn ClientLogic>>,
    config: GatewayConfig,
    locks: AggregateLocks,
    /// Commands waiting for a busy aggregate, to be decided and appended as a group.
    queues: CommandQueues,
    cache: HistoryCache,
    /// The tighter of the gateway's and the store's limits, checked before appending.
    limits: StoreCapabilities,
}

/// Builds a [`Gateway`].
pub struct GatewayBuilder {
    events: Arc<dyn EventStore>,
    snapshots: Arc<dyn SnapshotStore>,
    logic: HashMap<Domain, Arc<dyn ClientLogic>>,
    config: GatewayConfig,
}

impl GatewayBuilder {
    /// Routes commands for `domain` to `logic`, replacing any logic registered before.
    pub fn register(mut self, domain: Domain, logic: Arc<dyn ClientLogic>) -> Self {
        self.logic.insert(domain, logic);
        self
    }

    /// Replaces the default [`GatewayConfig`].
    pub fn config(mut self, config: GatewayConfig) -> Self {
        self.config = config;
        self
    }

    /// The gateway.
    pub fn build(self) -> Gateway {
        let store = self.events.capabilities();
        let tighter =
            |ours: usize, theirs: Option<usize>| theirs.map_or(ours, |theirs| ours.min(theirs));
        let limits = StoreCapabilities::UNLIMITED
            .with_max_batch_len(tighter(
                self.config.max_events_per_command,
                store.max_batch_len,
            ))
            .with_max_event_bytes(tighter(self.config.max_event_bytes, store.max_event_bytes));
        let limits = match store.max_batch_bytes {
            Some(bytes) => limits.with_max_batch_bytes(bytes),
            None => limits,
        };
        let inner = Inner {
            limits,
            events: self.events,
            snapshots: self.snapshots,
            logic: self.logic,
            locks: AggregateLocks::default(),
            queues: CommandQueues::default(),
            cache: HistoryCache::new(self.config.cached_events),
            config: self.config,
        };
        Gateway {
            inner: Arc::new(inner),
        }
    }
}

/// An aggregate as loaded: its latest snapshot and the events after it.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct LoadedAggregate {
    /// The latest snapshot, if one was stored and could be read.
    pub snapshot: Option<Snapshot>,
    /// Every event after the snapshot (all events without one).
    pub pages: Vec<EventPage>,
    /// The sequence the next event will get.
    pub next_sequence: u64,
}

impl Gateway {
    /// Starts building a gateway over these stores.
    pub fn builder(
        events: Arc<dyn EventStore>,
        snapshots: Arc<dyn SnapshotStore>,
    ) -> GatewayBuilder {
        GatewayBuilder {
            events,
            snapshots,
            logic: HashMap::new(),
            config: GatewayConfig::default(),
        }
    }

    /// The event store commands are appended to.
    pub fn event_store(&self) -> &Arc<dyn EventStore> {
        &self.inner.events
    }

    /// The snapshot store.
    pub fn snapshot_store(&self) -> &Arc<dyn SnapshotStore> {
        &self.inner.snapshots
    }

    /// The domains that have client logic, in no particular order.
    pub fn domains(&self) -> impl Iterator<Item = &Domain> {
        self.inner.logic.keys()
    }

    /// Loads `aggregate`: its latest snapshot and the events after it.
    ///
    /// A snapshot is only a cache. A snapshot store that fails, or a snapshot without state,
    /// is treated as no snapshot. A snapshot ahead of the events (its events were lost, or it
    /// was written elsewhere) is deleted, since events appended later would otherwise reach
    /// its sequence and make it look valid; if it cannot be deleted the load fails rather
    /// than risk that. An event store that fails is an error.
    pub async fn load(&self, aggregate: &AggregateId) -> Result<LoadedAggregate, CommandError> {
        let snapshot = match self.inner.snapshots.get(aggregate).await {
            Ok(snapshot) => snapshot,
            Err(error) => {
                tracing::warn!(%aggregate, %error, "snapshot unavailable, replaying every event");
                None
            }
        };
        let Some(snapshot) = snapshot else {
            return self.load_events_only(aggregate).await;
        };
        if snapshot.state.is_none() {
            tracing::warn!(%aggregate, snapshot = snapshot.sequence, "ignoring a snapshot without state, replaying every event");
            return self.load_events_only(aggregate).await;
        }
        let Some(from) = snapshot.sequence.checked_add(1) else {
            return self.discard_snapshot_ahead(aggregate, &snapshot).await;
        };
        let mut pages = self.inner.events.read_from(aggregate, from).await?;
        if pages.is_empty() {
            // Nothing after the snapshot: make sure the events reach it, or the aggregate would
            // be decided, and appended to, past the end of its stream.
            let next_sequence = self.inner.events.next_sequence(aggregate).await?;
            if next_sequence < from {
                return self.discard_snapshot_ahead(aggregate, &snapshot).await;
            }
            if next_sequence > from {
                // Another process appended in between: read what it wrote.
                pages = self.inner.events.read_from(aggregate, from).await?;
            }
        }
        let next_sequence = pages.last().map_or(from, |last| last.sequence + 1);
        Ok(LoadedAggregate {
            snapshot: Some(snapshot),
            pages,
            next_sequence,
        })
    }

    /// Deletes a snapshot found ahead of the events, then loads the events alone.
    async fn discard_snapshot_ahead(
        &self,
        aggregate: &AggregateId,
        snapshot: &Snapshot,
    ) -> Result<LoadedAggregate, CommandError> {
        tracing::warn!(%aggregate, snapshot = snapshot.sequence, "deleting a snapshot ahead of the events");
        self.inner
            .snapshots
            .delete(aggregate)
            .await
            .map_err(CommandError::SnapshotAhead)?;
        self.load_events_only(aggregate).await
    }

    async fn load_events_only(
        &self,
        aggregate: &AggregateId,
    ) -> Result<LoadedAggregate, CommandError> {
        let pages = self.inner.events.read_all(aggregate).await?;
        let next_sequence = pages.last().map_or(0, |last| last.sequence + 1);
        Ok(LoadedAggregate {
            snapshot: None,
            pages,
            next_sequence,
        })
    }

    /// Executes `command`: on success, answers with the events it appended.
    ///
    /// Nothing is written unless every check passed; a failed command leaves the store as it
    /// was. With a non-empty `request_id`, a command that already appended events answers with
    /// them (`replayed`) and appends nothing. (A command that appended nothing leaves no trace
    /// to find, so repeating it decides again.)
    pub async fn execute(&self, mut command: CommandBook) -> Result<CommandResponse, CommandError> {
        let Some(cover) = command.cover.as_mut() else {
            return Err(CommandError::InvalidCommand(
                "the command has no cover".into(),
            ));
        };
        if cover.correlation_id.is_empty() {
            cover.correlation_id = uuid::Uuid::new_v4().to_string();
        }
        // Stored in canonical form whatever the spelling: the logic and the answer see that form.
        if let Ok(root) = uuid::Uuid::try_parse(&cover.root) {
            cover.root = root.to_string();
        }
        let span = tracing::info_span!(
            "command",
            domain = %cover.domain,
            root = %cover.root,
            correlation_id = %cover.correlation_id,
        );
        self.execute_in_span(command).instrument(span).await
    }

    async fn execute_in_span(&self, command: CommandBook) -> Result<CommandResponse, CommandError> {
        let aggregate = self.validate(&command)?;
        let logic = self
            .inner
            .logic
            .get(aggregate.domain())
            .ok_or_else(|| CommandError::UnknownDomain(aggregate.domain().to_string()))?;
        if command.request_id.is_empty() && self.inner.config.max_group_commands > 1 {
            // Released here unless nobody else wants the aggregate, so that the group that
            // will decide this command can take it.
            let alone = self
                .inner
                .locks
                .try_lock(&aggregate)
                .filter(|_| self.inner.queues.is_empty(&aggregate));
            let Some(_one_at_a_time) = alone else {
                // Busy: queued, to be decided with the others waiting.
                return self
                    .execute_grouped(aggregate, Arc::clone(logic), command)
                    .await;
            };
            let command = Command {
                book: &command,
                request: None,
                arrived: SystemTime::now(),
            };
            let retries = self.retries(&command);
            return self
                .run_alone(&aggregate, logic.as_ref(), command, retries)
                .await;
        }
        let request = (!command.request_id.is_empty())
            .then(|| RequestKey::new(command.request_id.clone(), command_digest(&command)));
        let command = Command {
            book: &command,
            request: request.as_ref(),
            arrived: SystemTime::now(),
        };
        let _one_at_a_time = self.inner.locks.lock(&aggregate).await;
        let retries = self.retries(&command);
        self.run_alone(&aggregate, logic.as_ref(), command, retries)
            .await
    }

    /// How many lost races a command may retry after.
    fn retries(&self, command: &Command<'_>) -> u32 {
        if command.book.retry_on_conflict {
            self.inner.config.max_conflict_retries
        } else {
            0
        }
    }

    /// Runs `command` by itself, holding the aggregate's lock: load, decide, append, and
    /// again after a stale cache, an unusable snapshot, or a lost race it may retry
    /// (`retries_left` more).
    async fn run_alone(
        &self,
        aggregate: &AggregateId,
        logic: &dyn ClientLogic,
        command: Command<'_>,
        mut retries_left: u32,
    ) -> Result<CommandResponse, CommandError> {
        let mut source = Source::Cache;
        loop {
            match self.attempt(aggregate, logic, command, source).await {
                Attempt::Done(result) => return result,
                // The command never saw the current state, so this is no lost race: decide
                // again on a fresh load.
                Attempt::StaleCache => {
                    tracing::debug!("the cached history was stale, reloading");
                    source = Source::Store;
                }
                Attempt::SnapshotUnusable => source = Source::EventsOnly,
                Attempt::LostRace { expected, actual } if retries_left > 0 => {
                    tracing::debug!(expected, actual, retries_left, "lost a race, reloading");
                    retries_left -= 1;
                    let lost = self.inner.config.max_conflict_retries - retries_left;
                    tokio::time::sleep(backoff(lost)).await;
                    source = Source::Store;
                }
                Attempt::LostRace { expected, actual } => {
                    return Err(CommandError::Conflict { expected, actual });
                }
            }
        }
    }

    fn validate(&self, command: &CommandBook) -> Result<AggregateId, CommandError> {
        let invalid = |message: &str| Err(CommandError::InvalidCommand(message.to_owned()));
        let Some(cover) = &command.cover else {
            return invalid("the command has no cover");
        };
        let aggregate = AggregateId::parse(&cover.domain, &cover.root)?;
        if command.pages.is_empty() {
            return invalid("the command has no pages");
        }
        if command.pages.iter().any(|page| page.payload.is_none()) {
            return invalid("a command page has no payload");
        }
        let max = self.inner.config.max_command_pages;
        if command.pages.len() > max {
            return Err(CommandError::InvalidCommand(format!(
                "the command has {} pages, at most {max} are accepted",
                command.pages.len()
            )));
        }
        let max = self.inner.config.max_id_len;
        if command.request_id.len() > max || cover.correlation_id.len() > max {
            return Err(CommandError::InvalidCommand(format!(
                "request_id and correlation_id may have at most {max} bytes"
            )));
        }
        Ok(aggregate)
    }

    /// Where an attempt gets the aggregate's history from.
    async fn history(
        &self,
        aggregate: &AggregateId,
        source: Source,
    ) -> Result<(LoadedAggregate, bool), CommandError> {
        if source == Source::Cache {
            // Taken out rather than copied: if this attempt fails, or its future is dropped,
            // the entry is gone and the next command reloads from the store.
            if let Some(cached) = self.inner.cache.take(aggregate) {
                return Ok((cached, true));
            }
        }
        let loaded = if source == Source::EventsOnly {
            self.load_events_only(aggregate).await?
        } else {
            self.load(aggregate).await?
        };
        Ok((loaded, false))
    }

    /// One round of load, decide and append.
    async fn attempt(
        &self,
        aggregate: &AggregateId,
        logic: &dyn ClientLogic,
        command: Command<'_>,
        source: Source,
    ) -> Attempt {
        let (history, from_cache) = match self.history(aggregate, source).await {
            Ok(loaded) => loaded,
            Err(error) => return Attempt::Done(Err(error)),
        };
        let next_sequence = history.next_sequence;
        // Looked up after loading: a first attempt that appended before the load is found
        // here, and one that appends after it makes our append conflict, and we look again.
        match self.replay(aggregate, command).await {
            Ok(None) => {}
            Ok(Some(replay)) => return Attempt::Done(Ok(replay)),
            Err(error) => return Attempt::Done(Err(error)),
        }
        if let Some(expected) = command
            .book
            .expected_sequence
            .filter(|expected| *expected != next_sequence)
        {
            if from_cache && self.is_stale(aggregate, next_sequence).await {
                return Attempt::StaleCache;
            }
            // The client's own expectation: never retried.
            return Attempt::Done(Err(CommandError::Conflict {
                expected,
                actual: next_sequence,
            }));
        }
        let kept = self
            .inner
            .cache
            .would_keep(&history)
            .then(|| history.clone());
        let had_snapshot = history.snapshot.is_some();
        let cover = command.book.cover.clone();
        let contextual = ContextualCommand {
            events: Some(EventBook {
                cover: cover.clone(),
                snapshot: history.snapshot,
                pages: history.pages,
            }),
            command: Some(command.book.clone()),
        };
        let decided = match logic.handle(contextual).await {
            Ok(reply) => accepted_events(reply),
            Err(
                error
                @ (ClientLogicError::InvalidSnapshot(_) | ClientLogicError::InvalidHistory(_)),
            ) if had_snapshot => {
                // A snapshot is only a cache: one the logic cannot read is dropped, and the
                // events replayed.
                tracing::warn!(%aggregate, %error, "the logic could not use the snapshot, deleting it and replaying every event");
                if let Err(error) = self.inner.snapshots.delete(aggregate).await {
                    tracing::warn!(%aggregate, %error, "could not delete the unusable snapshot");
                }
                return Attempt::SnapshotUnusable;
            }
            Err(error) => Err(error.into()),
        };
        let EventsEmitted {
            mut pages,
            snapshot_state,
            state,
        } = match decided {
            Ok(emitted) if !emitted.pages.is_empty() => emitted,
            // Nothing will be appended, so no store checks that the history was current.
            outcome => {
                if from_cache && self.is_stale(aggregate, next_sequence).await {
                    return Attempt::StaleCache;
                }
                // A first attempt elsewhere may have appended since this one looked: its
                // outcome, not this decision on an older state, is the answer.
                match self.replay(aggregate, command).await {
                    Ok(None) => {}
                    Ok(Some(replay)) => return Attempt::Done(Ok(replay)),
                    Err(error) => return Attempt::Done(Err(error)),
                }
                if let Some(kept) = kept {
                    self.inner.cache.insert(aggregate, kept);
                }
                return Attempt::Done(outcome.map(|_| response(cover, Vec::new(), false)));
            }
        };
        if let Err(error) = self.check_events(&mut pages, next_sequence, cover.as_ref()) {
            // Decided on a stale history, the logic might have answered otherwise.
            if from_cache && self.is_stale(aggregate, next_sequence).await {
                return Attempt::StaleCache;
            }
            return Attempt::Done(Err(error));
        }
        let written = pages;
        match self
            .append_resolving(aggregate, next_sequence, &written, command.request)
            .await
        {
            Ok(_) => {}
            Err(EventStoreError::OutcomeUnknown(source)) => {
                return Attempt::Done(Err(CommandError::OutcomeUnknown {
                    idempotent: command.request.is_some(),
                    source,
                }));
            }
            Err(EventStoreError::Conflict { expected, actual }) => {
                return match self.replay(aggregate, command).await {
                    Ok(Some(replay)) => Attempt::Done(Ok(replay)),
                    // With retries, a stale cache costs none of them.
                    Ok(None) if from_cache && command.book.retry_on_conflict => Attempt::StaleCache,
                    Ok(None)
                        if from_cache
                            && self
                                .written_before_arrival(aggregate, command, expected..actual)
                                .await =>
                    {
                        Attempt::StaleCache
                    }
                    Ok(None) => Attempt::LostRace { expected, actual },
                    Err(error) => Attempt::Done(Err(error)),
                };
            }
            Err(error) => return Attempt::Done(Err(error.into())),
        }
        // The state after these events, whether or not it is persisted: the next command is
        // handed it in place of the history, so its cost does not grow with the history.
        let folded = snapshot_state.clone().or(state);
        self.store_snapshot(aggregate, &written, snapshot_state)
            .await;
        let next_sequence = next_sequence + written.len() as u64;
        // Cached even when the history before it was too long to keep: a small state is what
        // makes the next command cheap.
        let cached = match (folded, written.last()) {
            (Some(state), Some(last)) => Some(LoadedAggregate {
                snapshot: Some(Snapshot {
                    sequence: last.sequence,
                    state: Some(state),
                }),
                pages: Vec::new(),
                next_sequence,
            }),
            _ => kept.map(|mut kept| {
                kept.pages.extend_from_slice(&written);
                kept.next_sequence = next_sequence;
                kept
            }),
        };
        if let Some(cached) = cached {
            self.inner.cache.insert(aggregate, cached);
        }
        Attempt::Done(Ok(response(cover, written, false)))
    }

    /// Appends, and resolves an unknown outcome (a lost acknowledgement) before answering.
    ///
    /// The same append is sent again: its expected-sequence check lets at most one copy in,
    /// whichever arrives first, so resending is safe even if the first copy is still on its way.
    /// A conflict is then read back: the stored events byte for byte ours mean the first copy
    /// landed; anything else means another writer won. Only when the store stays unreachable
    /// does the outcome stay unknown.
    async fn append_resolving(
        &self,
        aggregate: &AggregateId,
        expected_sequence: u64,
        events: &[EventPage],
        request: Option<&RequestKey>,
    ) -> Result<u64, EventStoreError> {
        // The store takes its batch by value; the caller keeps `events` for its answer, so each
        // send copies them once, and only a resend copies them again.
        let append = || Append {
            expected_sequence,
            events: events.to_vec(),
            request: request.cloned(),
        };
        let mut unknown = match self.inner.events.append(aggregate, append()).await {
            Err(EventStoreError::OutcomeUnknown(error)) => error,
            outcome => return outcome,
        };
        let end = expected_sequence + events.len() as u64;
        for round in 0..OUTCOME_RESOLUTION_ROUNDS {
            tracing::warn!(%aggregate, error = %unknown, round, "the outcome of an append is unknown, resolving it");
            tokio::time::sleep(resolution_delay(round)).await;
            match self.inner.events.append(aggregate, append()).await {
                Ok(next) => return Ok(next),
                Err(EventStoreError::Conflict { expected, actual }) => {
                    let range = (expected_sequence..end).into();
                    match self.inner.events.read(aggregate, range).await {
                        Ok(stored) if stored == events => return Ok(end),
                        Ok(_) => return Err(EventStoreError::Conflict { expected, actual }),
                        Err(error) => unknown = Box::new(error),
                    }
                }
                Err(
                    EventStoreError::OutcomeUnknown(error) | EventStoreError::Unavailable(error),
                ) => {
                    unknown = error;
                }
                Err(other) => unknown = Box::new(other),
            }
        }
        Err(EventStoreError::OutcomeUnknown(unknown))
    }

    /// Whether every event in `sequences` (those another writer appended past a cached
    /// history) was provably written before `command` arrived: stamped earlier than its arrival
    /// by more than the clocks of two gateways may disagree. Such writes are no race, so the
    /// proto's `retry_on_conflict` rule lets the command be decided again on the current state.
    /// Anything else, or a read that fails, counts as a race.
    async fn written_before_arrival(
        &self,
        aggregate: &AggregateId,
        command: Command<'_>,
        sequences: std::ops::Range<u64>,
    ) -> bool {
        let Some(deadline) = command
            .arrived
            .checked_sub(self.inner.config.max_clock_skew)
        else {
            return false;
        };
        let deadline = prost_types::Timestamp::from(deadline);
        let Ok(written) = self
            .inner
            .events
            .read(aggregate, sequences.clone().into())
            .await
        else {
            return false;
        };
        written.len() as u64 == sequences.end - sequences.start
            && written.iter().all(|page| {
                page.created_at.is_some_and(|created| {
                    (created.seconds, created.nanos) < (deadline.seconds, deadline.nanos)
                })
            })
    }

    /// Whether the aggregate moved past `next_sequence` (or cannot be checked).
    async fn is_stale(&self, aggregate: &AggregateId, next_sequence: u64) -> bool {
        self.inner
            .events
            .next_sequence(aggregate)
            .await
            .map_or(true, |actual| actual != next_sequence)
    }

    /// Stores the snapshot the logic returned, at the last written event. A failure only
    /// costs a longer replay later, so it is logged, not returned.
    async fn store_snapshot(
        &self,
        aggregate: &AggregateId,
        written: &[EventPage],
        state: Option<prost_types::Any>,
    ) {
        let (Some(last), Some(state)) = (written.last(), state) else {
            return;
        };
        let snapshot = Snapshot {
            sequence: last.sequence,
            state: Some(state),
        };
        self.store_snapshot_at(aggregate, snapshot).await;
    }

    /// Stores `snapshot`, whose events are appended; a failure is logged, as above.
    async fn store_snapshot_at(&self, aggregate: &AggregateId, snapshot: Snapshot) {
        if let Err(error) = self.inner.snapshots.put(aggregate, snapshot).await {
            tracing::warn!(%error, "could not store the snapshot; the next load replays more events");
        }
    }

    /// The first outcome of `command`'s request id, if it already appended events; an error if
    /// they came from a different command.
    async fn replay(
        &self,
        aggregate: &AggregateId,
        command: Command<'_>,
    ) -> Result<Option<CommandResponse>, CommandError> {
        let Some(request) = command.request else {
            return Ok(None);
        };
        let Some(record) = self
            .inner
            .events
            .find_by_request(aggregate, &request.id)
            .await?
        else {
            return Ok(None);
        };
        // Events stored before digests were kept have none: they are taken as this command's.
        if record.digest.is_some_and(|digest| digest != request.digest) {
            return Err(CommandError::RequestIdReused {
                request_id: request.id.clone(),
            });
        }
        // The first outcome's correlation id, not one assigned to this repetition.
        let mut cover = command.book.cover.clone().unwrap_or_default();
        if let Some(first) = record.pages.first() {
            cover.correlation_id.clone_from(&first.correlation_id);
        }
        Ok(Some(response(Some(cover), record.pages, true)))
    }

    /// Checks the events the logic returned and stamps them with what the framework owns.
    fn check_events(
        &self,
        pages: &mut [EventPage],
        next_sequence: u64,
        cover: Option<&Cover>,
    ) -> Result<(), CommandError> {
        let created_at = prost_types::Timestamp::from(SystemTime::now());
        let correlation_id = cover
            .map(|cover| cover.correlation_id.as_str())
            .unwrap_or_default();
        for (offset, page) in (0u64..).zip(pages.iter_mut()) {
            let wanted = next_sequence + offset;
            if page.sequence != wanted {
                return Err(CommandError::InvalidEvents(format!(
                    "event {offset} has sequence {}, but the aggregate's next sequence is {wanted}",
                    page.sequence
                )));
            }
            if page.payload.is_none() {
                return Err(CommandError::InvalidEvents(format!(
                    "event {offset} has no payload"
                )));
            }
            page.created_at = Some(created_at);
            page.correlation_id = correlation_id.to_owned();
        }
        Ok(self.inner.limits.check_batch(pages)?)
    }
}

/// How many times an append whose outcome is unknown is sent again (and read back) before the
/// caller is told the outcome is unknown: 0.3 to 0.6 s of waiting in all (see
/// [`resolution_delay`]), plus the store's own timeouts.
const OUTCOME_RESOLUTION_ROUNDS: u32 = 6;

/// The wait before resending an append of unknown outcome for the `round`th time: 5 ms doubled
/// per round, plus up to as much again at random, so that a store failing over has time to come
/// back, and the resends of many commands spread out.
fn resolution_delay(round: u32) -> std::time::Duration {
    let floor = 5_000u64 << round.min(5);
    let random = uuid::Uuid::new_v4().as_u128() as u64;
    std::time::Duration::from_micros(floor + random % (floor + 1))
}

/// How long to wait after losing `lost` races in a row: a random time up to 0.5 ms doubled
/// per loss, at most 50 ms. Writers that lost together then retry apart, so that one of them
/// cannot keep losing to the others.
fn backoff(lost: u32) -> std::time::Duration {
    let ceiling = (500u64 << lost.min(7)).min(50_000);
    // Any uniform bits will do; a v4 UUID has 122 of them.
    let random = uuid::Uuid::new_v4().as_u128() as u64;
    std::time::Duration::from_micros(random % (ceiling + 1))
}

/// A validated command and its request key.
#[derive(Clone, Copy)]
struct Command<'c> {
    book: &'c CommandBook,
    request: Option<&'c RequestKey>,
    /// When the gateway received it, by this host's clock.
    arrived: SystemTime,
}

/// What identifies a command for its request id: its pages (by type name, whatever the type
/// URL's prefix, and bytes) and its expected sequence. Not the correlation id, which a retry
/// may leave for the gateway to assign again, nor `retry_on_conflict`.
fn command_digest(book: &CommandBook) -> CommandDigest {
    let mut hasher = Sha256::new();
    match book.expected_sequence {
        Some(expected) => {
            hasher.update([1]);
            hasher.update(expected.to_be_bytes());
        }
        None => hasher.update([0]),
    }
    for payload in book.pages.iter().filter_map(|page| page.payload.as_ref()) {
        let type_name = payload.type_url.rsplit('/').next().unwrap_or_default();
        // Length-prefixed, so that no two different commands hash the same bytes.
        for part in [type_name.as_bytes(), payload.value.as_slice()] {
            hasher.update((part.len() as u64).to_be_bytes());
            hasher.update(part);
        }
    }
    hasher.finalize().into()
}

/// Where an attempt takes the history from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Source {
    /// The history cache if it has the aggregate, else the stores.
    Cache,
    /// The snapshot and event stores.
    Store,
    /// The event store alone: the snapshot was unusable.
    EventsOnly,
}

/// How one round of [`Gateway::execute`] ended.
enum Attempt {
    /// The command's outcome.
    Done(Result<CommandResponse, CommandError>),
    /// Decided on a cached history that was not current: decide again on a fresh one.
    StaleCache,
    /// The logic could not read the snapshot: decide again on the events alone.
    SnapshotUnusable,
    /// Another writer appended between load and append.
    LostRace { expected: u64, actual: u64 },
}

fn accepted_events(reply: BusinessReply) -> Result<EventsEmitted, CommandError> {
    match reply.outcome {
        Some(Outcome::Events(events)) => Ok(events),
        Some(Outcome::Rejection(rejection)) => Err(CommandError::Rejected(rejection.reason)),
        None => Err(ClientLogicError::InvalidReply(
            "the reply has neither events nor a rejection".into(),
        )
        .into()),
    }
}

fn response(cover: Option<Cover>, pages: Vec<EventPage>, replayed: bool) -> CommandResponse {
    CommandResponse {
        events: Some(EventBook {
            cover,
            snapshot: None,
            pages,
        }),
        replayed,
    }
}

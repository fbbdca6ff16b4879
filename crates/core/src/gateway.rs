//! The command pipeline: load, decide, validate, append, snapshot.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::SystemTime;

use angzarr_ports::{
    AggregateId, Append, ClientLogic, ClientLogicError, Domain, EventStore, EventStoreExt, Limit,
    SnapshotStore,
};
use angzarr_proto::v1::{
    BusinessReply, CommandBook, CommandResponse, ContextualCommand, Cover, EventBook, EventPage,
    EventsEmitted, Snapshot, business_reply::Outcome,
};
use tracing::Instrument;

use crate::CommandError;
use crate::cache::HistoryCache;
use crate::locks::AggregateLocks;

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
    /// an aggregate written recently need not read it back. 0 disables the cache.
    pub cached_events: usize,
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
    cache: HistoryCache,
    /// The tighter of the gateway's and the store's limits.
    max_events_per_command: usize,
    max_event_bytes: usize,
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
        let inner = Inner {
            max_events_per_command: tighter(
                self.config.max_events_per_command,
                store.max_batch_len,
            ),
            max_event_bytes: tighter(self.config.max_event_bytes, store.max_event_bytes),
            events: self.events,
            snapshots: self.snapshots,
            logic: self.logic,
            locks: AggregateLocks::default(),
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
    /// A snapshot store that fails, or a snapshot that does not fit the events, is treated as
    /// no snapshot (a snapshot is only a cache); an event store that fails is an error.
    pub async fn load(&self, aggregate: &AggregateId) -> Result<LoadedAggregate, CommandError> {
        let snapshot = match self.inner.snapshots.get(aggregate).await {
            Ok(snapshot) => snapshot,
            Err(error) => {
                tracing::warn!(%aggregate, %error, "snapshot unavailable, replaying every event");
                None
            }
        };
        let from = snapshot
            .as_ref()
            .and_then(|snapshot| snapshot.sequence.checked_add(1));
        let pages = self
            .inner
            .events
            .read_from(aggregate, from.unwrap_or(0))
            .await?;
        let next_sequence = match (pages.last(), from) {
            (Some(last), _) => last.sequence + 1,
            (None, Some(after_snapshot)) => after_snapshot,
            (None, None) => 0,
        };
        Ok(LoadedAggregate {
            snapshot: snapshot.filter(|_| from.is_some()),
            pages,
            next_sequence,
        })
    }

    /// Executes `command`: on success, answers with the events it appended.
    ///
    /// Nothing is written unless every check passed; a failed command leaves the store as it
    /// was. With a non-empty `request_id`, a command that already succeeded answers with its
    /// first outcome (`replayed`) and appends nothing.
    pub async fn execute(&self, mut command: CommandBook) -> Result<CommandResponse, CommandError> {
        let cover = command.cover.get_or_insert_with(Cover::default);
        if cover.correlation_id.is_empty() {
            cover.correlation_id = uuid::Uuid::new_v4().to_string();
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
        let _one_at_a_time = self.inner.locks.lock(&aggregate).await;
        let attempts = if command.retry_on_conflict {
            self.inner.config.max_conflict_retries + 1
        } else {
            1
        };
        let mut attempt = 1;
        let mut trust_cache = true;
        loop {
            let (result, from_cache) = self
                .attempt(&aggregate, logic.as_ref(), &command, trust_cache)
                .await;
            match result {
                // Decided on a cached history that another process had moved past: the
                // command never saw the current state, so this is no lost race. Decide again.
                Err(CommandError::Conflict { .. }) if from_cache => {
                    tracing::debug!("the cached history was stale, reloading");
                    self.inner.cache.remove(&aggregate);
                    trust_cache = false;
                }
                Err(CommandError::Conflict { expected, actual }) if attempt < attempts => {
                    tracing::debug!(attempt, expected, actual, "lost a race, reloading");
                    attempt += 1;
                }
                result => return result,
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

    /// The history to decide on, and whether it came from the cache.
    async fn history(
        &self,
        aggregate: &AggregateId,
        trust_cache: bool,
    ) -> Result<(LoadedAggregate, bool), CommandError> {
        if trust_cache && let Some(cached) = self.inner.cache.get(aggregate) {
            return Ok((cached, true));
        }
        let loaded = self.load(aggregate).await?;
        self.inner.cache.insert(aggregate, &loaded);
        Ok((loaded, false))
    }

    /// One load, decide, append round, and whether it decided on a cached history. A lost
    /// race comes back as `Conflict`.
    async fn attempt(
        &self,
        aggregate: &AggregateId,
        logic: &dyn ClientLogic,
        command: &CommandBook,
        trust_cache: bool,
    ) -> (Result<CommandResponse, CommandError>, bool) {
        match self.history(aggregate, trust_cache).await {
            Ok((loaded, from_cache)) => (
                self.decide_and_append(aggregate, logic, command, loaded)
                    .await,
                from_cache,
            ),
            Err(error) => (Err(error), false),
        }
    }

    async fn decide_and_append(
        &self,
        aggregate: &AggregateId,
        logic: &dyn ClientLogic,
        command: &CommandBook,
        loaded: LoadedAggregate,
    ) -> Result<CommandResponse, CommandError> {
        // Looked up after loading: a first attempt that appended before the load is found
        // here, and one that appends after it makes our append conflict, and we look again.
        if let Some(replay) = self.replay(aggregate, command).await? {
            return Ok(replay);
        }
        if let Some(expected) = command
            .expected_sequence
            .filter(|expected| *expected != loaded.next_sequence)
        {
            return Err(CommandError::Conflict {
                expected,
                actual: loaded.next_sequence,
            });
        }
        let next_sequence = loaded.next_sequence;
        let cover = command.cover.clone();
        let contextual = ContextualCommand {
            events: Some(EventBook {
                cover: cover.clone(),
                snapshot: loaded.snapshot,
                pages: loaded.pages,
            }),
            command: Some(command.clone()),
        };
        let reply = logic.handle(contextual).await?;
        let EventsEmitted {
            mut pages,
            snapshot_state,
        } = accepted_events(reply)?;
        self.check_events(&mut pages, next_sequence, cover.as_ref())?;
        let Some(last_sequence) = pages.last().map(|page| page.sequence) else {
            return Ok(response(cover, Vec::new(), false));
        };
        let request_id = (!command.request_id.is_empty()).then(|| command.request_id.clone());
        let append = Append {
            expected_sequence: next_sequence,
            events: pages,
            request_id,
        };
        let written = append.events.clone();
        match self.inner.events.append(aggregate, append).await {
            Ok(_) => {}
            Err(error) => {
                let error = CommandError::from(error);
                if matches!(error, CommandError::Conflict { .. })
                    && let Some(replay) = self.replay(aggregate, command).await?
                {
                    return Ok(replay);
                }
                return Err(error);
            }
        }
        let mut stored_snapshot = None;
        if let Some(state) = snapshot_state {
            let snapshot = Snapshot {
                sequence: last_sequence,
                state: Some(state),
            };
            match self.inner.snapshots.put(aggregate, snapshot.clone()).await {
                Ok(()) => stored_snapshot = Some(snapshot),
                Err(error) => {
                    tracing::warn!(%error, "could not store the snapshot; the next load replays more events");
                }
            }
        }
        self.inner
            .cache
            .appended(aggregate, next_sequence, &written, stored_snapshot);
        Ok(response(cover, written, false))
    }

    /// The first outcome of `command`'s request id, if it already succeeded.
    async fn replay(
        &self,
        aggregate: &AggregateId,
        command: &CommandBook,
    ) -> Result<Option<CommandResponse>, CommandError> {
        if command.request_id.is_empty() {
            return Ok(None);
        }
        let pages = self
            .inner
            .events
            .find_by_request(aggregate, &command.request_id)
            .await?;
        Ok((!pages.is_empty()).then(|| response(command.cover.clone(), pages, true)))
    }

    /// Checks the events the logic returned and stamps them with what the framework owns.
    fn check_events(
        &self,
        pages: &mut [EventPage],
        next_sequence: u64,
        cover: Option<&Cover>,
    ) -> Result<(), CommandError> {
        let max = self.inner.max_events_per_command;
        if pages.len() > max {
            return Err(CommandError::LimitExceeded {
                limit: Limit::BatchLen,
                max,
                actual: pages.len(),
            });
        }
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
            let size = prost::Message::encoded_len(page);
            let max = self.inner.max_event_bytes;
            if size > max {
                return Err(CommandError::LimitExceeded {
                    limit: Limit::EventBytes,
                    max,
                    actual: size,
                });
            }
        }
        Ok(())
    }
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

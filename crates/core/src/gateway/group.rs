//! Commands queued on a busy aggregate, decided one after another and appended together.
//!
//! Without grouping, commands waiting for one aggregate each pay their own append (and fsync):
//! a hot aggregate runs at the rate of one client. Here the commands that queued while it was
//! busy are decided in arrival order, each against the state the previous ones leave, and
//! their events go to the store in one append at the sequence the group loaded. Each command
//! keeps its own outcome: a rejected or failed one fails alone and changes nothing for the
//! others, `expected_sequence` is checked against the state just before that command, and the
//! answer carries only that command's events. Commands with a `request_id` never join a group
//! (an append carries one request key, which would claim the others' events).
//!
//! The group runs in a task of its own, so that a client going away cannot cancel the
//! decisions of the others; a command whose client went away before its turn is skipped.
//! Anything unusual (a load that fails, an unreadable snapshot, a store limit, an expected
//! sequence met on a cached history) hands every command of the group back to the one-by-one
//! path, which handles it as before.

use std::collections::{HashMap, VecDeque};
use std::ops::Range;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::SystemTime;

use angzarr_ports::{AggregateId, ClientLogic, ClientLogicError, EventStoreError};
use angzarr_proto::v1::{
    CommandBook, CommandResponse, ContextualCommand, EventBook, EventPage, EventsEmitted, Snapshot,
};
use tokio::sync::oneshot;
use tracing::Instrument;

use super::{Command, Gateway, LoadedAggregate, Source, accepted_events, backoff, response};
use crate::CommandError;

type Reply = oneshot::Sender<Result<CommandResponse, CommandError>>;

/// A command waiting for its aggregate.
struct Queued {
    book: CommandBook,
    arrived: SystemTime,
    reply: Reply,
    retries_left: u32,
}

/// The commands waiting for each busy aggregate, in arrival order.
#[derive(Default)]
pub(super) struct CommandQueues {
    queues: Mutex<HashMap<AggregateId, Queue>>,
}

#[derive(Default)]
struct Queue {
    waiting: VecDeque<Queued>,
    /// Whether a drain that has not taken its group yet is on its way: it will take these.
    drain_pending: bool,
}

impl CommandQueues {
    fn queues(&self) -> MutexGuard<'_, HashMap<AggregateId, Queue>> {
        // Every operation leaves the map consistent before it could panic.
        self.queues
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    pub(super) fn is_empty(&self, aggregate: &AggregateId) -> bool {
        !self.queues().contains_key(aggregate)
    }

    /// Queues `queued`; answers whether a drain must be started for it (none is on its way).
    fn push(&self, aggregate: &AggregateId, queued: Queued) -> bool {
        let mut queues = self.queues();
        let queue = queues.entry(aggregate.clone()).or_default();
        queue.waiting.push_back(queued);
        !std::mem::replace(&mut queue.drain_pending, true)
    }

    /// Up to `max` waiting commands of `aggregate`, oldest first, for the pending drain; if
    /// some are left, answers true: the caller must see to them (another drain).
    fn take(&self, aggregate: &AggregateId, max: usize) -> (Vec<Queued>, bool) {
        let mut queues = self.queues();
        let Some(queue) = queues.get_mut(aggregate) else {
            return (Vec::new(), false);
        };
        let taken: Vec<Queued> = queue
            .waiting
            .drain(..max.min(queue.waiting.len()))
            .collect();
        let left = !queue.waiting.is_empty();
        // Commands queued from now on start a drain of their own, unless some are left, for
        // which the caller starts one.
        queue.drain_pending = left;
        if !left {
            queues.remove(aggregate);
        }
        (taken, left)
    }
}

/// What became of one command of a group attempt.
enum Decision {
    /// Its events are `range` of the group's batch.
    Appended(Range<usize>),
    /// Its outcome, which appends nothing.
    Answered(Result<CommandResponse, CommandError>),
    /// Its client went away before its turn: not decided.
    Skipped,
}

/// How a group's append failed, for each command it concerns.
enum Failure {
    Unknown(String),
    Corrupt(String),
    Internal(String),
}

impl Failure {
    fn error(&self) -> CommandError {
        match self {
            Failure::Unknown(message) => CommandError::OutcomeUnknown {
                idempotent: false,
                source: message.clone().into(),
            },
            Failure::Corrupt(message) => {
                CommandError::Store(EventStoreError::Corrupt(message.clone()))
            }
            Failure::Internal(message) => {
                CommandError::Store(EventStoreError::Internal(message.clone().into()))
            }
        }
    }
}

/// How one attempt at a group ended; each variant but `OneByOne` covers the first `decided`
/// commands, the rest forming the next group.
enum GroupAttempt {
    Done {
        decisions: Vec<Decision>,
        batch: Vec<EventPage>,
    },
    /// The append failed in a way that may have applied it (its outcome is unknown, or the
    /// store failed otherwise): `failure` says how, for every command it concerns.
    Failed {
        decisions: Vec<Decision>,
        failure: Failure,
        from_cache: bool,
    },
    /// Another writer appended since the load.
    LostRace {
        decisions: Vec<Decision>,
        expected: u64,
        actual: u64,
        /// Whether the group was decided on a cached history.
        from_cache: bool,
    },
    /// The cached history was not current and nothing was appended: decide again on a load.
    Reload,
    /// Something the group does not handle: every command goes the one-by-one way.
    OneByOne,
}

impl Gateway {
    /// Queues `command` behind the others waiting for `aggregate` and answers its outcome once
    /// a group has decided it.
    pub(super) async fn execute_grouped(
        &self,
        aggregate: AggregateId,
        logic: Arc<dyn ClientLogic>,
        command: CommandBook,
    ) -> Result<CommandResponse, CommandError> {
        let (reply, outcome) = oneshot::channel();
        let retries_left = if command.retry_on_conflict {
            self.inner.config.max_conflict_retries
        } else {
            0
        };
        let queued = Queued {
            book: command,
            arrived: SystemTime::now(),
            reply,
            retries_left,
        };
        // One drain on its way per busy aggregate: it takes the lock, then every command
        // queued by then.
        if self.inner.queues.push(&aggregate, queued) {
            self.spawn_drain(aggregate, logic);
        }
        outcome.await.unwrap_or_else(|_| {
            // A panic in the group's task, perhaps after its append: nothing says whether
            // this command's events were stored.
            Err(CommandError::OutcomeUnknown {
                idempotent: false,
                source: "the group deciding this command stopped before answering (a panic)".into(),
            })
        })
    }

    /// Starts the task that takes the aggregate's lock, then decides what is queued on it.
    fn spawn_drain(&self, aggregate: AggregateId, logic: Arc<dyn ClientLogic>) {
        let gateway = self.clone();
        let drain = async move {
            let _one_at_a_time = gateway.inner.locks.lock(&aggregate).await;
            let max = gateway.inner.config.max_group_commands;
            let (group, left) = gateway.inner.queues.take(&aggregate, max);
            if left {
                // Queued behind the lock, which this drain holds until its group is done.
                gateway.spawn_drain(aggregate.clone(), Arc::clone(&logic));
            }
            gateway.run_group(&aggregate, logic.as_ref(), group).await;
        };
        tokio::spawn(drain.in_current_span());
    }

    /// Decides `group` (held under the aggregate's lock) and answers each command.
    async fn run_group(
        &self,
        aggregate: &AggregateId,
        logic: &dyn ClientLogic,
        group: Vec<Queued>,
    ) {
        let mut group: Vec<Queued> = group;
        let mut source = Source::Cache;
        let mut lost = 0;
        loop {
            group.retain(|queued| !queued.reply.is_closed());
            if group.len() <= 1 {
                for queued in group {
                    self.answer_alone(aggregate, logic, queued).await;
                }
                return;
            }
            match self.attempt_group(aggregate, logic, &group, source).await {
                GroupAttempt::Done { decisions, batch } => {
                    let rest = group.split_off(decisions.len());
                    // The ranges follow one another in batch order: each answer takes its own
                    // events out of the batch, uncopied.
                    let mut events = batch.into_iter();
                    for (queued, decision) in group.into_iter().zip(decisions) {
                        let outcome = match decision {
                            Decision::Appended(range) => {
                                let pages = events.by_ref().take(range.len()).collect();
                                Ok(response(queued.book.cover, pages, false))
                            }
                            Decision::Answered(outcome) => outcome,
                            Decision::Skipped => continue,
                        };
                        let _ = queued.reply.send(outcome);
                    }
                    // Those that did not fit in the store's batch: the next group, on the
                    // state just cached.
                    group = rest;
                    source = Source::Cache;
                }
                GroupAttempt::Failed {
                    decisions,
                    failure,
                    from_cache,
                } => {
                    let mut rest = group.split_off(decisions.len());
                    let mut after_events = false;
                    let mut again = Vec::new();
                    for (queued, decision) in group.into_iter().zip(decisions) {
                        // Decided on a state that holds events of unknown fate: the same fate.
                        after_events |= matches!(decision, Decision::Appended(_));
                        let outcome = match decision {
                            Decision::Skipped => continue,
                            // Appended nothing, on a history that may be stale: decided again.
                            Decision::Answered(_) if !after_events && from_cache => {
                                again.push(queued);
                                continue;
                            }
                            Decision::Answered(outcome) if !after_events => outcome,
                            _ => Err(failure.error()),
                        };
                        let _ = queued.reply.send(outcome);
                    }
                    // The stream's end is unknown too: the rest go one by one, which reloads.
                    again.append(&mut rest);
                    for queued in again {
                        self.answer_alone(aggregate, logic, queued).await;
                    }
                    return;
                }
                GroupAttempt::LostRace {
                    decisions,
                    expected,
                    actual,
                    from_cache,
                } => {
                    let rest = group.split_off(decisions.len());
                    let mut again = Vec::with_capacity(group.len() + rest.len());
                    let mut seen_events = false;
                    for (mut queued, decision) in group.into_iter().zip(decisions) {
                        let appended = matches!(decision, Decision::Appended(_));
                        // Alone, only the first command to append met the other writer: those
                        // queued behind it would have loaded after it.
                        let first_to_append = appended && !seen_events;
                        let after_events = seen_events;
                        seen_events |= appended;
                        match decision {
                            Decision::Skipped => continue,
                            // Decided before any event of the group, on a history loaded from
                            // the store, an answer that appends nothing stands, as alone.
                            Decision::Answered(outcome) if !after_events && !from_cache => {
                                let _ = queued.reply.send(outcome);
                                continue;
                            }
                            _ if !first_to_append => {
                                again.push(queued);
                                continue;
                            }
                            _ => {}
                        }
                        // The race rule, as for a command alone: a cached history decided
                        // nothing, and a command that may retry does; otherwise it lost.
                        let stale = from_cache
                            && (queued.book.retry_on_conflict
                                || self
                                    .written_before_arrival(
                                        aggregate,
                                        self::command(&queued),
                                        expected..actual,
                                    )
                                    .await);
                        if stale {
                            again.push(queued);
                        } else if queued.retries_left > 0 {
                            queued.retries_left -= 1;
                            again.push(queued);
                        } else {
                            let _ = queued
                                .reply
                                .send(Err(CommandError::Conflict { expected, actual }));
                        }
                    }
                    if !from_cache {
                        lost += 1;
                        tokio::time::sleep(backoff(lost)).await;
                    }
                    again.extend(rest);
                    group = again;
                    source = Source::Store;
                }
                GroupAttempt::Reload => source = Source::Store,
                GroupAttempt::OneByOne => {
                    for queued in group {
                        self.answer_alone(aggregate, logic, queued).await;
                    }
                    return;
                }
            }
        }
    }

    /// Decides `queued` alone, as a command that never waited would be.
    async fn answer_alone(&self, aggregate: &AggregateId, logic: &dyn ClientLogic, queued: Queued) {
        if queued.reply.is_closed() {
            return;
        }
        let outcome = self
            .run_alone(aggregate, logic, command(&queued), queued.retries_left)
            .await;
        let _ = queued.reply.send(outcome);
    }

    /// One round: load, decide each command in turn, append every event in one batch.
    async fn attempt_group(
        &self,
        aggregate: &AggregateId,
        logic: &dyn ClientLogic,
        group: &[Queued],
        source: Source,
    ) -> GroupAttempt {
        let Ok((history, from_cache)) = self.history(aggregate, source).await else {
            return GroupAttempt::OneByOne;
        };
        // Whether a client's expected sequence missed because of a stale cache takes a check
        // of its own: the one-by-one path makes it.
        if from_cache
            && group
                .iter()
                .any(|queued| queued.book.expected_sequence.is_some())
        {
            self.inner.cache.insert(aggregate, history);
            return GroupAttempt::OneByOne;
        }
        let store = self.inner.events.capabilities();
        let mut batch_bytes = 0usize;
        let start = history.next_sequence;
        let mut next = start;
        // What the next command is handed: the latest state, and the events not folded in it.
        let mut snapshot = history.snapshot;
        let mut unfolded = history.pages;
        let mut persisted: Option<Snapshot> = None;
        let mut batch: Vec<EventPage> = Vec::new();
        let mut decisions = Vec::with_capacity(group.len());
        for queued in group {
            if queued.reply.is_closed() {
                decisions.push(Decision::Skipped);
                continue;
            }
            let cover = queued.book.cover.clone();
            if let Some(expected) = queued.book.expected_sequence.filter(|e| *e != next) {
                decisions.push(Decision::Answered(Err(CommandError::Conflict {
                    expected,
                    actual: next,
                })));
                continue;
            }
            let contextual = ContextualCommand {
                events: Some(EventBook {
                    cover: cover.clone(),
                    snapshot: snapshot.clone(),
                    pages: unfolded.clone(),
                }),
                command: Some(queued.book.clone()),
            };
            let emitted = match logic.handle(contextual).await {
                Ok(reply) => accepted_events(reply),
                Err(ClientLogicError::InvalidSnapshot(_) | ClientLogicError::InvalidHistory(_))
                    if snapshot.is_some() =>
                {
                    // The one-by-one path drops the snapshot and replays the events.
                    return GroupAttempt::OneByOne;
                }
                Err(error) => Err(error.into()),
            };
            let EventsEmitted {
                mut pages,
                snapshot_state,
                state,
            } = match emitted {
                Ok(emitted) if !emitted.pages.is_empty() => emitted,
                outcome => {
                    let outcome = outcome.map(|_| response(cover, Vec::new(), false));
                    decisions.push(Decision::Answered(outcome));
                    continue;
                }
            };
            if let Err(error) = self.check_events(&mut pages, next, cover.as_ref()) {
                decisions.push(Decision::Answered(Err(error)));
                continue;
            }
            let bytes: usize = match store.max_batch_bytes {
                Some(_) => pages.iter().map(prost::Message::encoded_len).sum(),
                None => 0,
            };
            let too_long = store
                .max_batch_len
                .is_some_and(|max| batch.len() + pages.len() > max);
            let too_large = store
                .max_batch_bytes
                .is_some_and(|max| batch_bytes + bytes > max);
            if (too_long || too_large) && !batch.is_empty() {
                // Past what one append may carry: this one and the rest form the next group.
                break;
            }
            let last = pages.last().map_or(next, |page| page.sequence);
            next += pages.len() as u64;
            match snapshot_state.clone().or(state) {
                Some(state) => {
                    snapshot = Some(Snapshot {
                        sequence: last,
                        state: Some(state),
                    });
                    unfolded.clear();
                }
                None => unfolded.extend(pages.iter().cloned()),
            }
            if let Some(state) = snapshot_state {
                persisted = Some(Snapshot {
                    sequence: last,
                    state: Some(state),
                });
            }
            decisions.push(Decision::Appended(batch.len()..batch.len() + pages.len()));
            batch_bytes += bytes;
            batch.extend(pages);
        }
        if batch.is_empty() {
            if from_cache && self.is_stale(aggregate, start).await {
                return GroupAttempt::Reload;
            }
            // Nothing appended: the history handed to the next command is the one loaded
            // (the cache drops it if it is too long to keep).
            let history = LoadedAggregate {
                snapshot,
                pages: unfolded,
                next_sequence: start,
            };
            self.inner.cache.insert(aggregate, history);
            return GroupAttempt::Done { decisions, batch };
        }
        match self.append_resolving(aggregate, start, &batch, None).await {
            Ok(_) => {}
            Err(EventStoreError::OutcomeUnknown(error)) => {
                let failure = Failure::Unknown(error.to_string());
                return GroupAttempt::Failed {
                    decisions,
                    failure,
                    from_cache,
                };
            }
            Err(EventStoreError::Conflict { expected, actual }) => {
                return GroupAttempt::LostRace {
                    decisions,
                    expected,
                    actual,
                    from_cache,
                };
            }
            // Nothing was applied (the contract of these errors): a store limit the batch broke
            // as a whole (a transaction's bytes), an outage. Each command meets it alone.
            Err(
                EventStoreError::LimitExceeded { .. }
                | EventStoreError::InvalidArgument(_)
                | EventStoreError::Unavailable(_),
            ) => return GroupAttempt::OneByOne,
            // Anything else may have been applied: as alone, its commands are told it failed,
            // and none is decided again.
            Err(EventStoreError::Corrupt(message)) => {
                let failure = Failure::Corrupt(message);
                return GroupAttempt::Failed {
                    decisions,
                    failure,
                    from_cache,
                };
            }
            Err(other) => {
                let failure = Failure::Internal(other.to_string());
                return GroupAttempt::Failed {
                    decisions,
                    failure,
                    from_cache,
                };
            }
        }
        if let Some(persisted) = persisted {
            self.store_snapshot_at(aggregate, persisted).await;
        }
        self.inner.cache.insert(
            aggregate,
            LoadedAggregate {
                snapshot,
                pages: unfolded,
                next_sequence: next,
            },
        );
        GroupAttempt::Done { decisions, batch }
    }
}

/// A queued command as the one-by-one path takes it.
fn command(queued: &Queued) -> Command<'_> {
    Command {
        book: &queued.book,
        request: None,
        arrived: queued.arrived,
    }
}

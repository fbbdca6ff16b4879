//! Writes: the only connection that writes, committing queued writes in groups.
//!
//! SQLite allows one writer at a time and a durable commit costs an fsync, so writes are
//! serialised anyway; batching every write that queued up meanwhile into one transaction
//! shares that fsync among them. Each write runs in a savepoint of its own, so that a conflict
//! or an invalid append fails alone while the rest of its group commits (a write alone in its
//! group needs none: if it fails, the transaction is rolled back).
//!
//! There is no writer thread: the caller that finds no commit in progress becomes the *leader*
//! and commits its own write, with whatever else is queued, on its own thread. A commit that
//! may wait (for an fsync, another connection's lock, a large write, or the WAL's restart after
//! a checkpoint, whose header is synced) first tells tokio to
//! move the runtime's other tasks elsewhere; one that does not (`synchronous = NORMAL`, a small
//! group, the lock free) is a few writes into the page cache and runs in place. WAL checkpoints,
//! which wait for the disk, run on the blocking pool instead of inside a commit. Writes that
//! arrive during a commit are queued, and their callers wait for an answer (*followers*). A
//! single client thus pays no hand-over between threads, and concurrent clients still share
//! commits. See the README's concurrency section for why.

use std::collections::VecDeque;
use std::panic::{AssertUnwindSafe, catch_unwind};
use std::sync::atomic::{AtomicBool, AtomicU32, Ordering};
use std::sync::{Arc, Condvar, Mutex, MutexGuard, PoisonError};
use std::time::Duration;

use angzarr_ports::{AggregateId, Append, EventStoreError, RequestKey, SnapshotStoreError};
use prost::Message;
use rusqlite::{Connection, ErrorCode, Transaction, TransactionBehavior};
use tokio::runtime::{Handle, RuntimeFlavor};
use tokio::sync::{Semaphore, oneshot};

use crate::config::SqliteConfig;
use crate::error::{Failure, GroupFailure};
use crate::keys;
use crate::sql;

/// An append, encoded by the caller before it is queued.
#[derive(Debug)]
pub(crate) struct Batch {
    expected_sequence: u64,
    request: Option<RequestKey>,
    events: Vec<EncodedEvent>,
}

/// One event of a [`Batch`].
#[derive(Debug)]
struct EncodedEvent {
    sequence: u64,
    correlation_id: String,
    page: Vec<u8>,
}

impl Batch {
    /// Encodes the events of a validated append.
    pub(crate) fn encode(append: Append) -> Self {
        let events = append
            .events
            .into_iter()
            .map(|mut page| EncodedEvent {
                page: page.encode_to_vec(),
                sequence: page.sequence,
                // Moved, not copied: the page is no longer needed once encoded.
                correlation_id: std::mem::take(&mut page.correlation_id),
            })
            .collect();
        Self {
            expected_sequence: append.expected_sequence,
            request: append.request,
            events,
        }
    }
}

/// A write, and where its answer goes.
#[derive(Debug)]
pub(crate) enum Job {
    /// An [`EventStore::append`](angzarr_ports::EventStore::append).
    Append {
        /// The aggregate appended to.
        aggregate: AggregateId,
        /// The events.
        batch: Batch,
        /// Where the new next sequence goes.
        reply: oneshot::Sender<Result<u64, EventStoreError>>,
    },
    /// A [`SnapshotStore::put`](angzarr_ports::SnapshotStore::put).
    PutSnapshot {
        /// The aggregate of the snapshot.
        aggregate: AggregateId,
        /// The snapshot's sequence.
        sequence: u64,
        /// The encoded snapshot.
        state: Vec<u8>,
        /// Where the outcome goes.
        reply: oneshot::Sender<Result<(), SnapshotStoreError>>,
    },
    /// A [`SnapshotStore::delete`](angzarr_ports::SnapshotStore::delete).
    DeleteSnapshot {
        /// The aggregate of the snapshot.
        aggregate: AggregateId,
        /// Where the outcome goes.
        reply: oneshot::Sender<Result<(), SnapshotStoreError>>,
    },
    /// Makes the commit panic, to test what callers see then.
    #[cfg(test)]
    Panic,
}

/// The longest queue, whatever the group size.
const MAX_QUEUE: usize = 4096;

/// A commit that leaves at least this many frames in the WAL is followed by a checkpoint
/// (SQLite's own `wal_autocheckpoint` default, which the writer's WAL hook replaces).
const CHECKPOINT_FRAMES: u32 = 1000;

/// The largest group (its encoded events and snapshots) committed in place on the runtime:
/// writing more into the page cache is no longer a matter of microseconds.
const IN_PLACE_MAX_BYTES: usize = 256 * 1024;

/// The write side of the store: the connection that writes, and the writes waiting for it.
#[derive(Debug)]
pub(crate) struct Writer {
    shared: Arc<Shared>,
}

/// What callers and the current leader share.
#[derive(Debug)]
struct Shared {
    state: Mutex<State>,
    /// Notified when a leader gives the connection back, or loses it.
    resigned: Condvar,
    /// One permit per free place in the queue: a caller takes one before queueing its write,
    /// and the leader gives them back as it takes writes from the queue. Closed once writing
    /// has stopped.
    room: Semaphore,
    /// The most writes committed in one transaction.
    max_group_size: usize,
    /// Whether a commit waits for an fsync (`synchronous = FULL`), and so must not run on a
    /// thread of the async runtime.
    commit_waits_for_disk: bool,
    /// How long a commit waits for another connection's write lock.
    busy_timeout: Duration,
    /// How many frames the WAL held after the last commit, as SQLite's WAL hook reports it.
    wal_frames: Arc<AtomicU32>,
    /// A checkpoint ran since the last commit: the next one may restart the WAL, which syncs
    /// its header even with `synchronous = NORMAL`, so it does not run in place.
    checkpointed: AtomicBool,
}

#[derive(Debug)]
struct State {
    /// Writes waiting for a commit. Never left non-empty without a leader: a leader gives the
    /// connection back only when it finds the queue empty, under this same lock.
    queue: VecDeque<Job>,
    conn: Conn,
}

/// Where the write connection is.
#[derive(Debug)]
enum Conn {
    /// No commit is in progress: the next caller takes the connection and leads.
    Idle(Connection),
    /// A leader has it.
    Leading,
    /// Writing has stopped: a commit panicked, or the store is closed.
    Stopped,
}

impl Writer {
    /// Writes with `conn`, opened with `config`, committing up to its `max_group_size` writes
    /// at a time.
    pub(crate) fn new(mut conn: Connection, config: &SqliteConfig) -> rusqlite::Result<Self> {
        let max_group_size = config.max_group_size;
        // A queue as long as a group: while one group commits, the next one fills up, and
        // callers beyond that wait (backpressure) instead of piling up memory.
        let room = Semaphore::new(max_group_size.min(MAX_QUEUE));
        // Replaces SQLite's automatic checkpoint, which would run inside the commit that
        // crosses the threshold: the leader checkpoints after such a commit, where it may block.
        let wal_frames = Arc::new(AtomicU32::new(0));
        conn.wal_hook(Some({
            let wal_frames = Arc::clone(&wal_frames);
            move |_: &mut rusqlite::hooks::Wal, frames: std::ffi::c_int| {
                wal_frames.store(u32::try_from(frames).unwrap_or(0), Ordering::Relaxed);
                Ok(())
            }
        }))?;
        Ok(Self {
            shared: Arc::new(Shared {
                state: Mutex::new(State {
                    queue: VecDeque::new(),
                    conn: Conn::Idle(conn),
                }),
                resigned: Condvar::new(),
                room,
                max_group_size,
                commit_waits_for_disk: config.synchronous.commit_syncs(),
                busy_timeout: config.busy_timeout,
                wal_frames,
                // The first commit may (re)start the WAL, which syncs its header.
                checkpointed: AtomicBool::new(true),
            }),
        })
    }

    /// Queues the job that `job` builds around its reply channel, commits it if no commit is
    /// in progress, and waits for the reply. Fails with `Unavailable` if writing has stopped.
    ///
    /// Cancel-safe in the sense that matters: once queued, a job is committed (or failed)
    /// whether or not its caller still waits for the answer.
    pub(crate) async fn submit<T>(
        &self,
        job: impl FnOnce(oneshot::Sender<T>) -> Job,
    ) -> Result<T, Failure> {
        let shared = &self.shared;
        // Waits while the queue is full; given back by the leader that takes the job.
        shared
            .room
            .acquire()
            .await
            .map_err(|_| Failure::writer_gone())?
            .forget();
        let (reply, answer) = oneshot::channel();
        let leader = {
            let mut state = shared.lock();
            let conn = match std::mem::replace(&mut state.conn, Conn::Leading) {
                Conn::Idle(conn) => Some(conn),
                Conn::Leading => None,
                Conn::Stopped => {
                    state.conn = Conn::Stopped;
                    return Err(Failure::writer_gone());
                }
            };
            state.queue.push_back(job(reply));
            conn.map(|conn| Leader {
                shared: Arc::clone(shared),
                conn: Some(conn),
            })
        };
        if let Some(leader) = leader {
            leader.lead();
        }
        // Both fail only if writing stopped with the job queued or in its group.
        answer.await.map_err(|_| Failure::writer_gone())
    }

    /// Waits, without blocking the async runtime, for the queued writes to be committed, then
    /// closes the connection.
    pub(crate) async fn close(self) {
        if let Err(error) = tokio::task::spawn_blocking(move || drop(self)).await {
            tracing::error!(%error, "could not close the SQLite write connection");
        }
    }
}

impl Drop for Writer {
    /// Waits for the current leader, if any, to commit every queued write and give the
    /// connection back, then closes it.
    fn drop(&mut self) {
        let shared = &self.shared;
        let mut state = shared.lock();
        while matches!(state.conn, Conn::Leading) {
            state = shared
                .resigned
                .wait(state)
                .unwrap_or_else(PoisonError::into_inner);
        }
        let conn = std::mem::replace(&mut state.conn, Conn::Stopped);
        drop(state);
        shared.room.close();
        // Closing the last connection checkpoints the log into the database file.
        drop(conn);
    }
}

impl Shared {
    fn lock(&self) -> MutexGuard<'_, State> {
        // Every critical section leaves the state consistent (it only moves values in and
        // out), so a poisoned lock is still good.
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

/// The caller (or blocking thread) that holds the write connection and commits the queue.
///
/// If it is dropped while still holding the connection (a commit panicked, or the task that
/// was to carry on leading never ran), writing stops and every queued write fails, rather than
/// waiting forever for a commit.
struct Leader {
    shared: Arc<Shared>,
    /// `None` once given back (or lost).
    conn: Option<Connection>,
}

impl Leader {
    /// Commits the group holding the new leader's own job, without blocking the runtime.
    fn lead(self) {
        match Handle::try_current() {
            Ok(handle) if handle.runtime_flavor() == RuntimeFlavor::MultiThread => {
                let restarts_log = self.shared.checkpointed.swap(false, Ordering::Relaxed);
                let rest = if self.shared.commit_waits_for_disk || restarts_log {
                    // On this thread: the runtime hands its other tasks to another thread
                    // meanwhile.
                    tokio::task::block_in_place(|| self.commit_own_group(false))
                } else {
                    // A commit without fsync costs less than handing this worker's tasks to
                    // another thread (through the front door, ~55 µs at p50 on two cores).
                    self.commit_own_group(true)
                };
                // The rest is done by a blocking thread, so that this caller is not held up by a
                // checkpoint or by other callers' writes.
                if let Some((leader, group)) = rest {
                    handle.spawn_blocking(move || leader.carry_on(group));
                }
            }
            // A current-thread runtime cannot hand its tasks over: commit on the blocking pool.
            Ok(handle) => {
                handle.spawn_blocking(move || self.commit_until_idle());
            }
            // Not in a tokio runtime: a thread of its own.
            Err(_) => {
                let spawned = std::thread::Builder::new()
                    .name("angzarr-sqlite-writer".into())
                    .spawn(move || self.commit_until_idle());
                if let Err(error) = spawned {
                    // The leader was dropped with the connection: writing has stopped.
                    tracing::error!(%error, "cannot start a thread to commit SQLite writes");
                }
            }
        }
    }

    /// Commits the group holding the leader's own job (`in_place`: only if that cannot wait,
    /// see [`Leader::commit_in_place`]). Returns the leader if more is to be done, where it may
    /// block: the group itself, if it was not committed in place; a checkpoint; the next group.
    fn commit_own_group(mut self, in_place: bool) -> Option<(Self, Option<Vec<Job>>)> {
        if let Some(group) = self.take_group() {
            if in_place {
                if let Some(group) = self.commit_in_place(group) {
                    return Some((self, Some(group)));
                }
            } else {
                self.commit(group);
            }
        }
        if self.checkpoint_due() {
            return Some((self, None));
        }
        self.take_group().map(|group| (self, Some(group)))
    }

    /// Commits `group` if any, then the rest of the queue, checkpointing when due.
    fn carry_on(mut self, group: Option<Vec<Job>>) {
        if let Some(group) = group {
            self.commit(group);
        }
        self.checkpoint_if_due();
        self.commit_until_idle();
    }

    /// Commits groups until the queue is empty, checkpointing when due, then gives the
    /// connection back.
    fn commit_until_idle(mut self) {
        while let Some(group) = self.take_group() {
            self.commit(group);
            self.checkpoint_if_due();
        }
    }

    /// Whether the last commit left enough in the WAL to checkpoint it.
    fn checkpoint_due(&self) -> bool {
        self.shared.wal_frames.load(Ordering::Relaxed) >= CHECKPOINT_FRAMES
    }

    /// Copies the WAL into the database file if due, as SQLite's automatic checkpoint would:
    /// `PASSIVE`, so that it never waits for readers. It blocks on the disk.
    fn checkpoint_if_due(&mut self) {
        if !self.checkpoint_due() {
            return;
        }
        let Some(conn) = self.conn.as_mut() else {
            return;
        };
        // Not due again before the next commit reports the WAL's size.
        self.shared.wal_frames.store(0, Ordering::Relaxed);
        self.shared.checkpointed.store(true, Ordering::Relaxed);
        if let Err(error) = conn.query_row("PRAGMA wal_checkpoint(PASSIVE)", [], |_| Ok(())) {
            // Nothing is lost: the WAL keeps the commits, and the next commit tries again.
            tracing::warn!(%error, "a SQLite WAL checkpoint failed");
        }
    }

    /// Takes the next group from the queue; if the queue is empty, gives the connection back
    /// instead and returns `None`. Also `None` once the connection is lost.
    fn take_group(&mut self) -> Option<Vec<Job>> {
        self.conn.as_ref()?;
        let mut state = self.shared.lock();
        let size = state.queue.len().min(self.shared.max_group_size);
        if size == 0 {
            // Under the lock that callers queue under: a job queued after this finds the
            // connection idle and leads.
            state.conn = self.conn.take().map_or(Conn::Stopped, Conn::Idle);
            drop(state);
            self.shared.resigned.notify_all();
            return None;
        }
        let group: Vec<Job> = state.queue.drain(..size).collect();
        drop(state);
        self.shared.room.add_permits(size);
        Some(group)
    }

    /// Commits `group`. A panic stops writing (see [`Leader::stop`]) instead of unwinding
    /// into the caller.
    fn commit(&mut self, mut group: Vec<Job>) {
        let Some(conn) = self.conn.as_mut() else {
            return;
        };
        // Off the runtime: a restart of the WAL this commit may do is done.
        self.shared.checkpointed.store(false, Ordering::Relaxed);
        // Unwinding drops the group's jobs, and with them their reply channels: their
        // callers see that writing has stopped.
        let committed = catch_unwind(AssertUnwindSafe(|| commit_group(conn, &mut group)));
        if committed.is_err() {
            tracing::error!("a SQLite group commit panicked: the store stops writing");
            self.stop();
        }
    }

    /// Commits `group` as [`Leader::commit`] does, unless that could hold the thread up: a
    /// group larger than [`IN_PLACE_MAX_BYTES`], or the write lock held by another connection
    /// (another store or process on the file), which this attempt does not wait for. Gives the
    /// group back untouched if so.
    fn commit_in_place(&mut self, mut group: Vec<Job>) -> Option<Vec<Job>> {
        if group.iter().map(Job::encoded_len).sum::<usize>() > IN_PLACE_MAX_BYTES {
            return Some(group);
        }
        let conn = self.conn.as_mut()?;
        let wait = self.shared.busy_timeout;
        let committed = catch_unwind(AssertUnwindSafe(|| {
            commit_group_unless_locked(conn, &mut group, wait)
        }));
        match committed {
            Ok(true) => None,
            Ok(false) => Some(group),
            Err(_) => {
                tracing::error!("a SQLite group commit panicked: the store stops writing");
                self.stop();
                None
            }
        }
    }

    /// Stops writing for good: drops the connection (SQLite rolls back whatever transaction
    /// was open) and fails every queued write.
    fn stop(&mut self) {
        let conn = self.conn.take();
        let stranded = {
            let mut state = self.shared.lock();
            state.conn = Conn::Stopped;
            std::mem::take(&mut state.queue)
        };
        self.shared.room.close();
        self.shared.resigned.notify_all();
        drop(stranded);
        drop(conn);
    }
}

impl Drop for Leader {
    fn drop(&mut self) {
        if self.conn.is_some() {
            tracing::error!("a SQLite commit was abandoned: the store stops writing");
            self.stop();
        }
    }
}

/// Runs every job of `group` in one transaction, commits, then answers each job. Leaves
/// `group` empty.
fn commit_group(conn: &mut Connection, group: &mut Vec<Job>) {
    match conn.transaction_with_behavior(TransactionBehavior::Immediate) {
        Ok(tx) => commit_group_in(tx, group),
        Err(error) => fail_group(group, error),
    }
}

/// [`commit_group`], unless another connection holds the write lock: then `false`, and
/// `group` untouched. Begins without waiting for the lock, then waits up to `wait` again.
fn commit_group_unless_locked(conn: &mut Connection, group: &mut Vec<Job>, wait: Duration) -> bool {
    if conn.busy_timeout(Duration::ZERO).is_err() {
        // Left to the blocking pool, which waits as configured.
        return false;
    }
    let error = match conn.transaction_with_behavior(TransactionBehavior::Immediate) {
        Ok(tx) => {
            restore_busy_timeout(&tx, wait);
            commit_group_in(tx, group);
            return true;
        }
        Err(error) => error,
    };
    restore_busy_timeout(conn, wait);
    if error.sqlite_error_code() == Some(ErrorCode::DatabaseBusy) {
        return false;
    }
    fail_group(group, error);
    true
}

fn restore_busy_timeout(conn: &Connection, wait: Duration) {
    if let Err(error) = conn.busy_timeout(wait) {
        // Setting a handler does not fail in practice; if it did, writes would fail at once
        // (as Unavailable) instead of waiting for another process's lock.
        tracing::error!(%error, "cannot restore the SQLite busy timeout");
    }
}

/// Fails every job of `group` with `error`, which stopped the group before it began.
fn fail_group(group: &mut Vec<Job>, error: rusqlite::Error) {
    let failure = GroupFailure::new(error);
    group.drain(..).for_each(|job| job.fail(&failure));
}

/// The rest of [`commit_group`], inside the transaction `tx` just begun.
fn commit_group_in(mut tx: Transaction<'_>, group: &mut Vec<Job>) {
    let alone = group.len() == 1;
    let mut done = Vec::with_capacity(group.len());
    let mut jobs = group.drain(..);
    for job in jobs.by_ref() {
        done.push(job.execute(&mut tx, alone));
        // After some errors (disk full, I/O error...) SQLite rolls back the whole transaction;
        // the next savepoint would then start a transaction of its own and commit on release.
        if tx.is_autocommit() {
            let failure = GroupFailure::rolled_back();
            // The job that caused it reports its own error.
            if let Some(cause) = done.pop() {
                if cause.failed() {
                    cause.send()
                } else {
                    cause.fail(&failure)
                }
            }
            done.into_iter().for_each(|done| done.fail(&failure));
            jobs.for_each(|job| job.fail(&failure));
            return;
        }
    }
    if alone && done.iter().any(Done::failed) {
        // Undoes what the lone job did before it failed (an event of its batch, say).
        if let Err(error) = tx.rollback() {
            tracing::error!(%error, "could not roll back a failed SQLite write");
        }
        done.into_iter().for_each(Done::send);
        return;
    }
    match tx.commit() {
        Ok(()) => done.into_iter().for_each(Done::send),
        Err(error) => {
            // Nothing of the group is visible: every write fails, even one that had failed on
            // its own (a conflict may have been with a write that is now rolled back).
            let failure = GroupFailure::new(error);
            done.into_iter().for_each(|done| done.fail(&failure));
        }
    }
}

impl Job {
    /// The bytes the job writes, about: its encoded events or snapshot.
    fn encoded_len(&self) -> usize {
        match self {
            Job::Append { batch, .. } => batch.events.iter().map(|event| event.page.len()).sum(),
            Job::PutSnapshot { state, .. } => state.len(),
            Job::DeleteSnapshot { .. } => 0,
            #[cfg(test)]
            Job::Panic => 0,
        }
    }

    /// Does the job inside `tx`, keeping its answer until the group commits.
    fn execute(self, tx: &mut Transaction<'_>, alone: bool) -> Done {
        match self {
            Job::Append {
                aggregate,
                batch,
                reply,
            } => Done::Append(
                reply,
                isolated(tx, alone, |conn| append(conn, &aggregate, &batch)),
            ),
            Job::PutSnapshot {
                aggregate,
                sequence,
                state,
                reply,
            } => Done::Snapshot(
                reply,
                isolated(tx, alone, |conn| {
                    Ok(sql::put_snapshot(conn, &aggregate, sequence, &state)?)
                }),
            ),
            Job::DeleteSnapshot { aggregate, reply } => Done::Snapshot(
                reply,
                isolated(tx, alone, |conn| {
                    Ok(sql::delete_snapshot(conn, &aggregate)?)
                }),
            ),
            #[cfg(test)]
            Job::Panic => panic!("writer panic requested by a test"),
        }
    }

    /// Answers with the failure of the whole group.
    fn fail(self, failure: &GroupFailure) {
        match self {
            Job::Append { reply, .. } => {
                Done::Append(reply, Err(failure.to_failure().into())).send()
            }
            Job::PutSnapshot { reply, .. } | Job::DeleteSnapshot { reply, .. } => {
                Done::Snapshot(reply, Err(failure.to_failure().into())).send()
            }
            #[cfg(test)]
            Job::Panic => {}
        }
    }
}

/// A job that ran, with its answer.
enum Done {
    Append(
        oneshot::Sender<Result<u64, EventStoreError>>,
        Result<u64, EventStoreError>,
    ),
    Snapshot(
        oneshot::Sender<Result<(), SnapshotStoreError>>,
        Result<(), SnapshotStoreError>,
    ),
}

impl Done {
    /// Whether the job failed on its own.
    fn failed(&self) -> bool {
        match self {
            Done::Append(_, answer) => answer.is_err(),
            Done::Snapshot(_, answer) => answer.is_err(),
        }
    }

    /// Answers the caller.
    fn send(self) {
        // A caller that gave up waiting is no longer there to hear the answer.
        match self {
            Done::Append(reply, answer) => _ = reply.send(answer),
            Done::Snapshot(reply, answer) => _ = reply.send(answer),
        }
    }

    /// Answers with the failure of the whole group instead.
    fn fail(self, failure: &GroupFailure) {
        match self {
            Done::Append(reply, _) => Done::Append(reply, Err(failure.to_failure().into())).send(),
            Done::Snapshot(reply, _) => {
                Done::Snapshot(reply, Err(failure.to_failure().into())).send()
            }
        }
    }
}

/// Runs the work of a job so that none of it is committed if it fails: in a savepoint, rolled
/// back on failure while the rest of the transaction is kept; or, for a job `alone` in its
/// group, as is, [`commit_group`] then rolling back the whole transaction instead (which spares
/// two statements per commit, the savepoint and its release).
fn isolated<T, E: From<Failure>>(
    tx: &mut Transaction<'_>,
    alone: bool,
    work: impl FnOnce(&Connection) -> Result<T, E>,
) -> Result<T, E> {
    if alone {
        work(tx)
    } else {
        in_savepoint(tx, work)
    }
}

/// Runs `work` in a savepoint: if it fails, its changes are undone and the rest of the
/// transaction is kept.
fn in_savepoint<T, E: From<Failure>>(
    tx: &mut Transaction<'_>,
    work: impl FnOnce(&Connection) -> Result<T, E>,
) -> Result<T, E> {
    let savepoint = tx.savepoint().map_err(Failure::from)?;
    // On error the savepoint is dropped, which rolls it back.
    let value = work(&savepoint)?;
    savepoint.commit().map_err(Failure::from)?;
    Ok(value)
}

/// Appends `batch` if the stream ends where it expects. The check and the inserts run in the
/// same write transaction, so no other write can come in between.
fn append(
    conn: &Connection,
    aggregate: &AggregateId,
    batch: &Batch,
) -> Result<u64, EventStoreError> {
    let key = keys::aggregate(aggregate);
    let expected = batch.expected_sequence;
    // The stream's actual end is only looked up for the error, which is rarer and costlier.
    if !sql::is_next_sequence(conn, &key, expected)? {
        let actual = sql::next_sequence(conn, &key)?;
        if actual != expected {
            return Err(EventStoreError::Conflict { expected, actual });
        }
    }
    let request = batch.request.as_ref();
    for event in &batch.events {
        // Only reachable by a stream of 2^63 events; the savepoint undoes earlier inserts.
        let sequence = keys::sequence(event.sequence).ok_or_else(|| {
            EventStoreError::InvalidArgument(format!(
                "sequence {} is beyond the largest the SQLite store keeps, {}",
                event.sequence,
                i64::MAX
            ))
        })?;
        sql::insert_event(
            conn,
            &key,
            sequence,
            &event.correlation_id,
            request,
            &event.page,
        )?;
    }
    // validate_append made the batch non-empty and contiguous, and the last sequence fits an
    // i64, so one past it fits a u64.
    Ok(expected + batch.events.len() as u64)
}

#[cfg(test)]
mod tests {
    use angzarr_ports::{Domain, EventPage, SequenceRange, Uuid};
    use tokio::sync::oneshot::Receiver;

    use super::*;
    use crate::config::{SqliteConfig, Synchronous};
    use crate::schema;

    type Answer = Receiver<Result<u64, EventStoreError>>;

    fn writer_connection(dir: &tempfile::TempDir) -> Connection {
        schema::open_writer(&SqliteConfig::in_dir(dir.path())).unwrap()
    }

    fn aggregate() -> AggregateId {
        AggregateId::new(Domain::new("account").unwrap(), Uuid::new_v4()).unwrap()
    }

    fn append(aggregate: &AggregateId, from: u64, len: u64, correlation_id: &str) -> (Job, Answer) {
        let (reply, answer) = oneshot::channel();
        (
            append_job(aggregate, from, len, correlation_id, reply),
            answer,
        )
    }

    fn append_job(
        aggregate: &AggregateId,
        from: u64,
        len: u64,
        correlation_id: &str,
        reply: oneshot::Sender<Result<u64, EventStoreError>>,
    ) -> Job {
        let events = (from..from + len)
            .map(|sequence| EventPage {
                sequence,
                correlation_id: correlation_id.into(),
                ..EventPage::default()
            })
            .collect();
        let batch = Batch::encode(Append::new(from, events));
        Job::Append {
            aggregate: aggregate.clone(),
            batch,
            reply,
        }
    }

    /// Commits `jobs` as one group and returns their answers.
    fn commit(
        conn: &mut Connection,
        jobs: Vec<(Job, Answer)>,
    ) -> Vec<Result<u64, EventStoreError>> {
        let (mut group, answers): (Vec<Job>, Vec<Answer>) = jobs.into_iter().unzip();
        commit_group(conn, &mut group);
        assert!(group.is_empty());
        answers
            .into_iter()
            .map(|answer| answer.blocking_recv().unwrap())
            .collect()
    }

    fn stored(conn: &Connection, aggregate: &AggregateId) -> usize {
        sql::read(conn, aggregate, SequenceRange::ALL)
            .unwrap()
            .len()
    }

    #[test]
    fn a_failing_write_fails_alone_and_the_rest_of_its_group_commits() {
        let dir = tempfile::tempdir().unwrap();
        let mut conn = writer_connection(&dir);
        let (a, b) = (aggregate(), aggregate());
        let (reply, snapshot_answer) = oneshot::channel();
        let put = Job::PutSnapshot {
            aggregate: a.clone(),
            sequence: 3,
            state: Vec::new(),
            reply,
        };
        let (mut group, answers): (Vec<Job>, Vec<Answer>) = [
            append(&a, 0, 2, "first"),
            // Sees the first write of its own group.
            append(&a, 0, 1, "stale"),
            append(&b, 0, 1, "other"),
            append(&a, 2, 2, "next"),
            append(&b, 5, 1, "gap"),
        ]
        .into_iter()
        .unzip();
        group.insert(4, put);
        commit_group(&mut conn, &mut group);
        let answers: Vec<_> = answers
            .into_iter()
            .map(|answer| answer.blocking_recv().unwrap())
            .collect();
        assert!(
            matches!(
                answers[..],
                [
                    Ok(2),
                    Err(EventStoreError::Conflict {
                        expected: 0,
                        actual: 2
                    }),
                    Ok(1),
                    Ok(4),
                    Err(EventStoreError::Conflict {
                        expected: 5,
                        actual: 1
                    })
                ]
            ),
            "{answers:?}"
        );
        assert!(snapshot_answer.blocking_recv().unwrap().is_ok());
        assert_eq!((stored(&conn, &a), stored(&conn, &b)), (4, 1));
        assert!(sql::get_snapshot(&conn, &a).unwrap().is_some());
    }

    #[test]
    fn a_failed_commit_fails_every_write_of_the_group_and_leaves_nothing() {
        let dir = tempfile::tempdir().unwrap();
        let mut conn = writer_connection(&dir);
        // A deferred foreign key violation lets every statement succeed and COMMIT fail.
        conn.execute_batch(
            "PRAGMA foreign_keys = ON;
             CREATE TABLE parent (id INTEGER PRIMARY KEY);
             CREATE TABLE child (id INTEGER REFERENCES parent (id) DEFERRABLE INITIALLY DEFERRED);
             CREATE TRIGGER poison AFTER INSERT ON events WHEN NEW.correlation_id = 'poison'
             BEGIN INSERT INTO child VALUES (1); END;",
        )
        .unwrap();
        let (a, b) = (aggregate(), aggregate());
        let answers = commit(
            &mut conn,
            vec![
                append(&a, 0, 1, "fine"),
                append(&a, 0, 1, "stale"),
                append(&b, 0, 1, "poison"),
            ],
        );
        assert!(
            answers
                .iter()
                .all(|answer| matches!(answer, Err(EventStoreError::Internal(_)))),
            "{answers:?}"
        );
        assert_eq!((stored(&conn, &a), stored(&conn, &b)), (0, 0));
        // The connection is usable again.
        assert!(matches!(
            commit(&mut conn, vec![append(&a, 0, 1, "fine")])[..],
            [Ok(1)]
        ));
    }

    #[test]
    fn a_write_that_makes_sqlite_roll_back_fails_its_whole_group() {
        let dir = tempfile::tempdir().unwrap();
        let mut conn = writer_connection(&dir);
        // RAISE(ROLLBACK) ends the whole transaction, as a full disk or an I/O error can.
        conn.execute_batch(
            "CREATE TRIGGER poison AFTER INSERT ON events WHEN NEW.correlation_id = 'poison'
             BEGIN SELECT RAISE(ROLLBACK, 'poisoned'); END;",
        )
        .unwrap();
        let (a, b, c) = (aggregate(), aggregate(), aggregate());
        let answers = commit(
            &mut conn,
            vec![
                append(&a, 0, 1, "before"),
                append(&b, 0, 1, "poison"),
                append(&c, 0, 1, "after"),
            ],
        );
        assert!(
            matches!(answers[0], Err(EventStoreError::Unavailable(_))),
            "{answers:?}"
        );
        assert!(
            matches!(&answers[1], Err(EventStoreError::Internal(error)) if error.to_string().contains("poisoned")),
            "{answers:?}"
        );
        assert!(
            matches!(answers[2], Err(EventStoreError::Unavailable(_))),
            "{answers:?}"
        );
        // In particular, the write after the rollback did not commit on its own.
        assert_eq!(
            (stored(&conn, &a), stored(&conn, &b), stored(&conn, &c)),
            (0, 0, 0)
        );
        assert!(conn.is_autocommit());
    }

    #[test]
    fn a_lone_write_that_fails_midway_leaves_nothing() {
        let dir = tempfile::tempdir().unwrap();
        let mut conn = writer_connection(&dir);
        // RAISE(ABORT) undoes the failing statement only: the first event stays inserted in the
        // transaction, and only rolling the transaction back removes it.
        conn.execute_batch(
            "CREATE TRIGGER poison AFTER INSERT ON events WHEN NEW.correlation_id = 'poison'
             BEGIN SELECT RAISE(ABORT, 'poisoned'); END;",
        )
        .unwrap();
        let a = aggregate();
        let (mut job, answer) = append(&a, 0, 2, "fine");
        if let Job::Append { batch, .. } = &mut job {
            batch.events[1].correlation_id = "poison".into();
        }
        let answers = commit(&mut conn, vec![(job, answer)]);
        assert!(
            matches!(&answers[..], [Err(EventStoreError::Internal(error))] if error.to_string().contains("poisoned")),
            "{answers:?}"
        );
        assert_eq!(stored(&conn, &a), 0);
        assert!(conn.is_autocommit());
        // So does a lone conflict, and the connection is usable again.
        assert!(matches!(
            commit(&mut conn, vec![append(&a, 1, 1, "fine")])[..],
            [Err(EventStoreError::Conflict {
                expected: 1,
                actual: 0
            })]
        ));
        assert!(matches!(
            commit(&mut conn, vec![append(&a, 0, 1, "fine")])[..],
            [Ok(1)]
        ));
        assert_eq!(stored(&conn, &a), 1);
    }

    /// Polls `future` once.
    fn poll_once<F: Future + Unpin>(future: &mut F) -> std::task::Poll<F::Output> {
        let mut context = std::task::Context::from_waker(std::task::Waker::noop());
        std::pin::Pin::new(future).poll(&mut context)
    }

    #[tokio::test]
    async fn a_full_queue_makes_callers_wait_and_the_leader_commits_all_of_it() {
        let dir = tempfile::tempdir().unwrap();
        let config = SqliteConfig::in_dir(dir.path()).with_max_group_size(2);
        let writer = Writer::new(writer_connection(&dir), &config).unwrap();
        // A commit is in progress: its leader holds the connection.
        let conn = match std::mem::replace(&mut writer.shared.lock().conn, Conn::Leading) {
            Conn::Idle(conn) => conn,
            other => panic!("{other:?}"),
        };
        let aggregates: Vec<AggregateId> = (0..3).map(|_| aggregate()).collect();
        let mut submits: Vec<_> = aggregates
            .iter()
            .map(|id| Box::pin(writer.submit(|reply| append_job(id, 0, 1, "c", reply))))
            .collect();
        for submit in &mut submits {
            assert!(poll_once(submit).is_pending());
        }
        // The queue holds two: the third caller waits for room.
        assert_eq!(writer.shared.lock().queue.len(), 2);
        let mut leader = Leader {
            shared: Arc::clone(&writer.shared),
            conn: Some(conn),
        };
        let group = leader.take_group().unwrap();
        assert_eq!(group.len(), 2);
        // Room again: the third is queued, and the leader takes it after the first group.
        assert!(poll_once(&mut submits[2]).is_pending());
        assert_eq!(writer.shared.lock().queue.len(), 1);
        leader.commit(group);
        leader.commit_until_idle();
        assert!(matches!(writer.shared.lock().conn, Conn::Idle(_)));
        for submit in submits {
            assert_eq!(submit.await.unwrap().unwrap(), 1);
        }
    }

    /// The WAL hook replaces SQLite's automatic checkpoint: the writer must checkpoint in its
    /// place, whether its commits run in place (`NORMAL`) or off the runtime (`FULL`), or the
    /// log would grow by every commit for good.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn the_log_is_checkpointed_whether_commits_run_in_place_or_not() {
        for synchronous in [Synchronous::Normal, Synchronous::Full] {
            let dir = tempfile::tempdir().unwrap();
            let config = SqliteConfig::in_dir(dir.path())
                .with_synchronous(synchronous)
                .with_max_group_size(8);
            let conn = schema::open_writer(&config).unwrap();
            let writer = Writer::new(conn, &config).unwrap();
            let a = aggregate();
            // One commit each, of at least one frame: twice the checkpoint threshold.
            let commits = 2 * u64::from(CHECKPOINT_FRAMES);
            for sequence in 0..commits {
                let appended = writer
                    .submit(|reply| append_job(&a, sequence, 1, "c", reply))
                    .await;
                assert_eq!(appended.unwrap().unwrap(), sequence + 1);
            }
            let wal = format!("{}-wal", SqliteConfig::DEFAULT_FILE_NAME);
            let log = std::fs::metadata(dir.path().join(wal)).unwrap().len();
            // Restarted after each checkpoint: never much more than the threshold's frames
            // (a frame is a 4 KiB page and a 24-byte header).
            let bound = 3 * u64::from(CHECKPOINT_FRAMES) / 2 * (4096 + 24);
            assert!(
                log < bound,
                "{synchronous:?}: a {log}-byte log after {commits} commits"
            );
            writer.close().await;
            let conn = writer_connection(&dir);
            assert_eq!(stored(&conn, &a), commits as usize, "{synchronous:?}");
        }
    }

    /// A commit in place does not wait for a write lock another connection holds (it would
    /// hold up the runtime's worker, here the only one, for up to the busy timeout): it leaves
    /// the waiting to the blocking pool, and commits once the lock is released.
    #[tokio::test(flavor = "multi_thread", worker_threads = 1)]
    async fn a_commit_in_place_leaves_waiting_for_a_lock_to_the_blocking_pool() {
        let dir = tempfile::tempdir().unwrap();
        let config = SqliteConfig::in_dir(dir.path())
            .with_synchronous(Synchronous::Normal)
            .with_busy_timeout(Duration::from_secs(3));
        let writer = Arc::new(Writer::new(schema::open_writer(&config).unwrap(), &config).unwrap());
        // The first commit starts the WAL, off the runtime; the next ones run in place.
        let first = aggregate();
        let started = writer.submit(|reply| append_job(&first, 0, 1, "c", reply));
        assert_eq!(started.await.unwrap().unwrap(), 1);
        let other = Connection::open(&config.path).unwrap();
        other.execute_batch("BEGIN IMMEDIATE").unwrap();
        let a = aggregate();
        let append = tokio::spawn({
            let (writer, a) = (Arc::clone(&writer), a.clone());
            async move {
                writer
                    .submit(|reply| append_job(&a, 0, 1, "c", reply))
                    .await
            }
        });
        // A task of the one worker, which releases the lock only if the append left the
        // worker free to run it (and to drive its timer).
        let release = tokio::spawn(async move {
            tokio::time::sleep(Duration::from_millis(100)).await;
            other.execute_batch("COMMIT").unwrap();
        });
        assert_eq!(append.await.unwrap().unwrap().unwrap(), 1);
        release.await.unwrap();
        Arc::into_inner(writer).unwrap().close().await;
        assert_eq!(stored(&writer_connection(&dir), &a), 1);
    }

    #[test]
    fn a_leader_that_never_ran_stops_writes_instead_of_stranding_them() {
        let dir = tempfile::tempdir().unwrap();
        let config = SqliteConfig::in_dir(dir.path()).with_max_group_size(8);
        let writer = Writer::new(writer_connection(&dir), &config).unwrap();
        let conn = match std::mem::replace(&mut writer.shared.lock().conn, Conn::Leading) {
            Conn::Idle(conn) => conn,
            other => panic!("{other:?}"),
        };
        let a = aggregate();
        let (job, answer) = append(&a, 0, 1, "c");
        writer.shared.lock().queue.push_back(job);
        // As when the runtime shuts down before running the blocking task of a leader.
        drop(Leader {
            shared: Arc::clone(&writer.shared),
            conn: Some(conn),
        });
        assert!(answer.blocking_recv().is_err());
        assert!(matches!(writer.shared.lock().conn, Conn::Stopped));
        assert!(writer.shared.room.is_closed());
        // Dropping the writer does not wait for a leader that is gone.
        drop(writer);
    }

    #[test]
    fn a_group_that_cannot_begin_fails_every_write() {
        let dir = tempfile::tempdir().unwrap();
        let mut conn = writer_connection(&dir);
        conn.busy_timeout(std::time::Duration::from_millis(10))
            .unwrap();
        let other = Connection::open(SqliteConfig::in_dir(dir.path()).path).unwrap();
        other.execute_batch("BEGIN IMMEDIATE").unwrap();
        let a = aggregate();
        let answers = commit(
            &mut conn,
            vec![append(&a, 0, 1, "x"), append(&a, 1, 1, "y")],
        );
        assert!(
            answers
                .iter()
                .all(|answer| matches!(answer, Err(EventStoreError::Unavailable(_)))),
            "{answers:?}"
        );
        other.execute_batch("ROLLBACK").unwrap();
        assert_eq!(stored(&conn, &a), 0);
    }
}

//! The writer thread: the only connection that writes, committing queued writes in groups.
//!
//! SQLite allows one writer at a time and a durable commit costs an fsync, so writes are
//! serialised on one thread anyway; batching every write that queued up meanwhile into one
//! transaction shares that fsync among them. Each write runs in a savepoint of its own, so that
//! a conflict or an invalid append fails alone while the rest of its group commits.

use std::thread::JoinHandle;

use angzarr_ports::{AggregateId, Append, EventStoreError, SnapshotStoreError};
use prost::Message;
use rusqlite::{Connection, Transaction, TransactionBehavior};
use tokio::sync::{mpsc, oneshot};

use crate::error::{Failure, GroupFailure};
use crate::keys;
use crate::sql;

/// An append, encoded by the caller so that the writer thread only does I/O.
#[derive(Debug)]
pub(crate) struct Batch {
    expected_sequence: u64,
    request_id: Option<String>,
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
            request_id: append.request_id,
            events,
        }
    }
}

/// A write for the writer thread, and where its answer goes.
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
    /// Makes the writer thread panic, to test what callers see then.
    #[cfg(test)]
    Panic,
}

/// The largest queue, and the most group slots allocated up front, whatever the group size.
const MAX_PREALLOCATED: usize = 4096;

/// The handle on the writer thread.
#[derive(Debug)]
pub(crate) struct Writer {
    /// `None` once the writer is stopping.
    jobs: Option<mpsc::Sender<Job>>,
    /// `None` once joined.
    thread: Option<JoinHandle<()>>,
}

impl Writer {
    /// Starts the thread that owns `conn` and commits up to `max_group_size` jobs at a time.
    pub(crate) fn spawn(conn: Connection, max_group_size: usize) -> std::io::Result<Self> {
        // A queue as long as a group: while one group commits, the next one fills up, and
        // senders beyond that wait (backpressure) instead of piling up memory.
        let (jobs, queue) = mpsc::channel(max_group_size.min(MAX_PREALLOCATED));
        let thread = std::thread::Builder::new()
            .name("angzarr-sqlite-writer".into())
            .spawn(move || run(conn, queue, max_group_size))?;
        Ok(Self {
            jobs: Some(jobs),
            thread: Some(thread),
        })
    }

    /// Queues the job that `job` builds around its reply channel, and waits for the reply.
    /// Fails with `Unavailable` if the writer thread has stopped.
    pub(crate) async fn submit<T>(
        &self,
        job: impl FnOnce(oneshot::Sender<T>) -> Job,
    ) -> Result<T, Failure> {
        let jobs = self.jobs.as_ref().ok_or_else(Failure::writer_gone)?;
        let (reply, answer) = oneshot::channel();
        // Both fail only when the thread is gone: it dropped the queue, or the job with it.
        jobs.send(job(reply))
            .await
            .map_err(|_| Failure::writer_gone())?;
        answer.await.map_err(|_| Failure::writer_gone())
    }

    /// Lets the thread finish the queued jobs and exit, and waits for it without blocking the
    /// async runtime.
    pub(crate) async fn close(mut self) {
        if let Some(thread) = self.stop() {
            match tokio::task::spawn_blocking(move || thread.join()).await {
                Ok(joined) => report(joined),
                Err(error) => {
                    tracing::error!(%error, "could not wait for the SQLite writer thread")
                }
            }
        }
    }

    /// Closes the queue, so that the thread exits once it is empty, and hands over the thread.
    fn stop(&mut self) -> Option<JoinHandle<()>> {
        self.jobs = None;
        self.thread.take()
    }
}

impl Drop for Writer {
    fn drop(&mut self) {
        if let Some(thread) = self.stop() {
            report(thread.join());
        }
    }
}

/// Logs how the writer thread ended.
fn report(joined: std::thread::Result<()>) {
    if joined.is_err() {
        tracing::error!("the SQLite writer thread panicked");
    }
}

/// The writer thread: takes a job, then whatever else is queued, and commits them together.
fn run(mut conn: Connection, mut queue: mpsc::Receiver<Job>, max_group_size: usize) {
    let mut group = Vec::with_capacity(max_group_size.min(MAX_PREALLOCATED));
    // Blocks for the first job, then takes what is queued without waiting; 0 once the store
    // dropped the sender and the queue is empty.
    while queue.blocking_recv_many(&mut group, max_group_size) > 0 {
        commit_group(&mut conn, &mut group);
    }
    tracing::debug!("the SQLite writer thread has stopped");
}

/// Runs every job of `group` in one transaction, commits, then answers each job. Leaves
/// `group` empty.
fn commit_group(conn: &mut Connection, group: &mut Vec<Job>) {
    let mut tx = match conn.transaction_with_behavior(TransactionBehavior::Immediate) {
        Ok(tx) => tx,
        Err(error) => {
            let failure = GroupFailure::new(error);
            group.drain(..).for_each(|job| job.fail(&failure));
            return;
        }
    };
    let mut done = Vec::with_capacity(group.len());
    let mut jobs = group.drain(..);
    for job in jobs.by_ref() {
        done.push(job.execute(&mut tx));
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
    /// Does the job inside `tx`, keeping its answer until the group commits.
    fn execute(self, tx: &mut Transaction<'_>) -> Done {
        match self {
            Job::Append {
                aggregate,
                batch,
                reply,
            } => Done::Append(
                reply,
                in_savepoint(tx, |conn| append(conn, &aggregate, &batch)),
            ),
            Job::PutSnapshot {
                aggregate,
                sequence,
                state,
                reply,
            } => Done::Snapshot(
                reply,
                in_savepoint(tx, |conn| {
                    Ok(sql::put_snapshot(conn, &aggregate, sequence, &state)?)
                }),
            ),
            Job::DeleteSnapshot { aggregate, reply } => Done::Snapshot(
                reply,
                in_savepoint(tx, |conn| Ok(sql::delete_snapshot(conn, &aggregate)?)),
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
    let actual = sql::next_sequence(conn, &key)?;
    if actual != batch.expected_sequence {
        return Err(EventStoreError::Conflict {
            expected: batch.expected_sequence,
            actual,
        });
    }
    let request_id = batch.request_id.as_deref();
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
            request_id,
            &event.page,
        )?;
    }
    // validate_append made the batch non-empty and contiguous, and the last sequence fits an
    // i64, so one past it fits a u64.
    Ok(actual + batch.events.len() as u64)
}

#[cfg(test)]
mod tests {
    use angzarr_ports::{Domain, EventPage, SequenceRange, Uuid};
    use tokio::sync::oneshot::Receiver;

    use super::*;
    use crate::config::SqliteConfig;
    use crate::schema;

    type Answer = Receiver<Result<u64, EventStoreError>>;

    fn writer_connection(dir: &tempfile::TempDir) -> Connection {
        schema::open_writer(&SqliteConfig::in_dir(dir.path())).unwrap()
    }

    fn aggregate() -> AggregateId {
        AggregateId::new(Domain::new("account").unwrap(), Uuid::new_v4()).unwrap()
    }

    fn append(aggregate: &AggregateId, from: u64, len: u64, correlation_id: &str) -> (Job, Answer) {
        let events = (from..from + len)
            .map(|sequence| EventPage {
                sequence,
                correlation_id: correlation_id.into(),
                ..EventPage::default()
            })
            .collect();
        let batch = Batch::encode(Append {
            expected_sequence: from,
            events,
            request_id: None,
        });
        let (reply, answer) = oneshot::channel();
        let job = Job::Append {
            aggregate: aggregate.clone(),
            batch,
            reply,
        };
        (job, answer)
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

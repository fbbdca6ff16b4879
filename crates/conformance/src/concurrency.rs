//! The concurrency properties: readers during writers, writers racing through one instance of
//! a store or through two, and the helpers the other concurrency properties share.
//!
//! Every task of a property waits at a [`Barrier`] before its first operation, so that they
//! really start together instead of in the order they were spawned.

use std::hash::{Hash, Hasher};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::time::Duration;

use angzarr_ports::{
    AggregateEvents, AggregateId, Append, CommandDigest, Domain, EventPage, EventStore,
    EventStoreError, EventStoreExt, RequestKey, RequestRecord, Uuid,
};
use prost_types::Any;
use tokio::sync::Barrier;

use crate::{Harness, namespace};

/// Per aggregate of [`readers_see_whole_batches`]: appends done, readings in progress, and
/// whether its writer holds its last batch.
struct Progress {
    appended: Vec<AtomicUsize>,
    reading: Vec<AtomicUsize>,
    held: Vec<AtomicBool>,
}

impl Progress {
    fn new(aggregates: usize) -> Self {
        Self {
            appended: (0..aggregates).map(|_| AtomicUsize::new(0)).collect(),
            reading: (0..aggregates).map(|_| AtomicUsize::new(0)).collect(),
            held: (0..aggregates).map(|_| AtomicBool::new(false)).collect(),
        }
    }
}

/// Readers (`read`, `next_sequence`, `find_by_correlation`, `find_by_request`) running while
/// writers append batches of several events: a reader sees all of a batch or none of it.
///
/// Each of 3 writers owns one aggregate and appends 25 batches of 4 events, each batch with a
/// correlation id and a request id of its own. Every read must be a prefix of what the writer
/// appends that ends on a batch boundary, and every lookup of a batch's correlation or request
/// id must give nothing or the whole batch. 4 readers start with the writers and keep reading
/// until the writers are done.
pub async fn readers_see_whole_batches<H: Harness>(harness: &H) {
    const WRITERS: usize = 3;
    const BATCHES: usize = 25;
    const BATCH_LEN: usize = 4;
    const READERS: usize = 4;
    // Enough for a slow store to overlap every write; a fast one stops much sooner.
    const MAX_ROUNDS: usize = 2_000;

    let ns = namespace();
    let store = Arc::new(harness.open(&ns).await);
    // What each writer will append, known in advance so that readers can check what they see.
    let plans: Arc<Vec<Plan>> = Arc::new(
        (0..WRITERS)
            .map(|writer| Plan::new(writer, BATCHES, BATCH_LEN))
            .collect(),
    );
    let barrier = Arc::new(Barrier::new(WRITERS + READERS));
    let writing = Arc::new(AtomicUsize::new(WRITERS));
    // Per aggregate: appends done, readings in progress, and whether its writer holds its last
    // batch. A reading overlapped a write if an append of its aggregate completed while it
    // ran. Neither a store whose reads are slower than its appends (an emulator: every write
    // lands before the first reading ends) nor one whose appends are too quick to be caught (the
    // memory store) would reliably show one, so each writer holds its last batch until a reading
    // of its aggregate is in progress, and that reading waits, after its first read, for the
    // append to complete: its later reads see the other side of it.
    let progress = Arc::new(Progress::new(WRITERS));

    let writers: Vec<_> = (0..WRITERS)
        .map(|writer| {
            let (store, plans) = (Arc::clone(&store), Arc::clone(&plans));
            let (barrier, writing) = (Arc::clone(&barrier), Arc::clone(&writing));
            let progress = Arc::clone(&progress);
            tokio::spawn(async move {
                let plan = &plans[writer];
                barrier.wait().await;
                for (index, batch) in plan.batches.iter().enumerate() {
                    let last = index + 1 == plan.batches.len();
                    if last {
                        progress.held[writer].store(true, Ordering::SeqCst);
                        // Bounded, in case every reader is done or failed (a reader's panic is
                        // reported below).
                        let deadline = tokio::time::Instant::now() + Duration::from_secs(120);
                        while progress.reading[writer].load(Ordering::SeqCst) == 0 {
                            assert!(
                                tokio::time::Instant::now() < deadline,
                                "no reading of aggregate {writer} started in 120 s"
                            );
                            tokio::time::sleep(Duration::from_millis(1)).await;
                        }
                    }
                    let expected = (index * BATCH_LEN) as u64;
                    let request = plan.request(index);
                    let append = append(expected, batch.clone(), Some(request.as_str()));
                    let next = store
                        .append(&plan.aggregate, append)
                        .await
                        .expect("an uncontended append failed");
                    assert_eq!(next, expected + BATCH_LEN as u64, "the new next sequence");
                    progress.appended[writer].fetch_add(1, Ordering::SeqCst);
                    if last {
                        progress.held[writer].store(false, Ordering::SeqCst);
                    }
                }
                writing.fetch_sub(1, Ordering::SeqCst);
            })
        })
        .collect();

    let readers: Vec<_> = (0..READERS)
        .map(|reader| {
            let (store, plans) = (Arc::clone(&store), Arc::clone(&plans));
            let (barrier, writing) = (Arc::clone(&barrier), Arc::clone(&writing));
            let progress = Arc::clone(&progress);
            tokio::spawn(async move {
                barrier.wait().await;
                let mut overlapped = 0;
                for round in 0..MAX_ROUNDS {
                    if writing.load(Ordering::SeqCst) == 0 {
                        break;
                    }
                    let index = (round + reader) % WRITERS;
                    let plan = &plans[index];
                    let appended = &progress.appended[index];
                    let before = appended.load(Ordering::SeqCst);
                    progress.reading[index].fetch_add(1, Ordering::SeqCst);
                    let straddle = async {
                        // The writer holds its last batch for this reading: let it land
                        // between this reading's first read and the others.
                        if progress.held[index].load(Ordering::SeqCst) {
                            let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
                            while appended.load(Ordering::SeqCst) == before
                                && tokio::time::Instant::now() < deadline
                            {
                                tokio::time::sleep(Duration::from_millis(1)).await;
                            }
                        }
                    };
                    plan.check_a_reading(&*store, BATCH_LEN, straddle).await;
                    progress.reading[index].fetch_sub(1, Ordering::SeqCst);
                    overlapped += usize::from(appended.load(Ordering::SeqCst) != before);
                    // A store whose reads never yield would otherwise keep this worker thread
                    // for all its rounds, and the writers would wait for the readers.
                    tokio::task::yield_now().await;
                }
                overlapped
            })
        })
        .collect();

    for task in writers {
        if let Err(error) = task.await {
            std::panic::resume_unwind(error.into_panic());
        }
    }
    let mut overlapped = 0;
    for task in readers {
        match task.await {
            Ok(readings) => overlapped += readings,
            Err(error) => std::panic::resume_unwind(error.into_panic()),
        }
    }
    // A property none of whose readings ran across a write checked nothing: each writer's
    // held last batch must have completed during a reading of its aggregate.
    assert!(
        overlapped >= WRITERS,
        "only {overlapped} readings ran across an append, expected one per writer at least: \
         the property checked too little"
    );
    for plan in plans.iter() {
        let stream = store
            .read_all(&plan.aggregate)
            .await
            .expect("read a stream");
        assert_eq!(
            stream,
            plan.stream(),
            "the stream of {} is not what its writer appended",
            plan.aggregate
        );
    }
    drop(store);
    harness.cleanup(&ns).await;
}

/// Writers racing through two instances of one store (two connections, pools or clients over
/// the same data, as two processes would have) to append at the same expected sequence: the
/// invariants of [`concurrent_writers_one_winner`](crate::properties::concurrent_writers_one_winner)
/// hold across instances, and each instance reads the other's writes, request and correlation
/// indexes included.
pub async fn two_instances_one_winner<H: Harness>(harness: &H) {
    let ns = namespace();
    let first = harness.open(&ns).await;
    let second = harness.open_another(&ns, &first).await;
    race(vec![Arc::new(first), Arc::new(second)], Race::SHARP).await;
    harness.cleanup(&ns).await;
}

/// The shape of a [`race`].
#[derive(Debug, Clone, Copy)]
pub(crate) struct Race {
    /// Races run one after another on each aggregate.
    pub(crate) rounds: u64,
    /// Aggregates raced on at once, each by its own racers.
    pub(crate) aggregates: usize,
    /// Racers per aggregate and round.
    pub(crate) racers: usize,
}

impl Race {
    /// 16 racers on each of 3 aggregates, 8 rounds: more racers than a group commit of 8
    /// holds, and never only one aggregate in flight.
    pub(crate) const SHARP: Self = Self {
        rounds: 8,
        aggregates: 3,
        racers: 16,
    };
}

/// Racers, started together by a barrier, append at the same expected sequence of each of
/// `shape.aggregates` aggregates at once, round after round; racer `r` writes through
/// `instances[r % instances.len()]`, and half of them carry a request id. Checks, for every
/// aggregate and round: exactly one racer wins, each loser's conflict names the winner's end,
/// every instance reads exactly the winner's batch, and every racer's request and correlation
/// ids, looked up through another instance than the racer's, find the winner's batch or
/// nothing for a loser; at the end, every instance reads each stream as the winners' batches
/// one after another. Drops the instances when done.
pub(crate) async fn race<S: EventStore>(instances: Vec<Arc<S>>, shape: Race) {
    let Race {
        rounds,
        aggregates,
        racers,
    } = shape;
    let ids: Vec<AggregateId> = (0..aggregates).map(|_| aggregate("race")).collect();
    let mut streams: Vec<Vec<EventPage>> = vec![Vec::new(); aggregates];
    let through = |racer: usize| &instances[racer % instances.len()];
    let other = |racer: usize| &instances[(racer + 1) % instances.len()];
    for round in 0..rounds {
        // Batches of different lengths and labels tell the winner apart.
        let contenders: Vec<Vec<Contender>> = (0..aggregates)
            .map(|target| {
                let next = streams[target].len() as u64;
                (0..racers)
                    .map(|racer| {
                        let label = format!("round {round} aggregate {target} racer {racer}");
                        // Through either instance, some racers with request ids, some without.
                        let request = (racer % 4 < 2).then(|| format!("request {label}"));
                        let events = batch(next, 1 + racer % 3, &label);
                        Contender { request, events }
                    })
                    .collect()
            })
            .collect();
        let barrier = Arc::new(Barrier::new(aggregates * racers));
        let tasks: Vec<Vec<_>> = contenders
            .iter()
            .enumerate()
            .map(|(target, contenders)| {
                let next = streams[target].len() as u64;
                let tasks = contenders.iter().enumerate().map(|(racer, contender)| {
                    let (store, barrier) = (Arc::clone(through(racer)), Arc::clone(&barrier));
                    let aggregate = ids[target].clone();
                    let append =
                        append(next, contender.events.clone(), contender.request.as_deref());
                    tokio::spawn(async move {
                        barrier.wait().await;
                        store.append(&aggregate, append).await
                    })
                });
                tasks.collect()
            })
            .collect();

        for (target, tasks) in tasks.into_iter().enumerate() {
            let (aggregate, contenders) = (&ids[target], &contenders[target]);
            let next = streams[target].len() as u64;
            let mut winners = Vec::new();
            let mut conflicts = Vec::new();
            for (racer, task) in tasks.into_iter().enumerate() {
                match task.await.expect("append task panicked") {
                    Ok(new_next) => winners.push((racer, new_next)),
                    Err(EventStoreError::Conflict { expected, actual }) => {
                        conflicts.push((expected, actual))
                    }
                    Err(error) => {
                        panic!("round {round}: racer {racer} on {aggregate} failed with {error}")
                    }
                }
            }
            assert_eq!(
                winners.len(),
                1,
                "round {round}: exactly one writer must win on {aggregate}, got {winners:?}"
            );
            let (winner, new_next) = winners[0];
            let won = &contenders[winner].events;
            assert_eq!(
                new_next,
                next + won.len() as u64,
                "round {round}: the winner's new next sequence on {aggregate}"
            );
            for (expected, actual) in conflicts {
                assert_eq!(
                    (expected, actual),
                    (next, new_next),
                    "round {round}: a loser's conflict on {aggregate}"
                );
            }
            for (index, store) in instances.iter().enumerate() {
                let stored = store
                    .read(aggregate, (next..new_next).into())
                    .await
                    .expect("read the round");
                assert_eq!(
                    &stored, won,
                    "round {round}: the stored events are the winner's, on {aggregate} through \
                     instance {index}"
                );
            }
            for (racer, contender) in contenders.iter().enumerate() {
                let store = other(racer);
                let pages: &[EventPage] = if racer == winner { won } else { &[] };
                if let Some(request) = &contender.request {
                    assert_eq!(
                        find_request(&**store, aggregate, request).await,
                        request_record(request, pages),
                        "round {round}: the request index, looked up through another instance \
                         than racer {racer}'s (the winner was racer {winner})"
                    );
                }
                let correlation = &contender.events[0].correlation_id;
                let found = store
                    .find_by_correlation(correlation)
                    .await
                    .expect("find by correlation");
                let expected: Vec<AggregateEvents> = (!pages.is_empty())
                    .then(|| AggregateEvents {
                        aggregate: aggregate.clone(),
                        pages: pages.to_vec(),
                    })
                    .into_iter()
                    .collect();
                assert_eq!(
                    found, expected,
                    "round {round}: the correlation index, looked up through another instance \
                     than racer {racer}'s (the winner was racer {winner})"
                );
            }
            streams[target].extend(won.iter().cloned());
        }
    }
    for (index, store) in instances.iter().enumerate() {
        for (aggregate, stream) in ids.iter().zip(&streams) {
            assert_eq!(
                &store
                    .read_all(aggregate)
                    .await
                    .expect("read a raced stream"),
                stream,
                "the raced stream of {aggregate}, read through instance {index}, has a gap, a \
                 duplicate or a loser's event"
            );
        }
    }
}

/// One racer's batch.
struct Contender {
    request: Option<String>,
    events: Vec<EventPage>,
}

/// What one writer of [`readers_see_whole_batches`] appends.
struct Plan {
    aggregate: AggregateId,
    batches: Vec<Vec<EventPage>>,
}

impl Plan {
    fn new(writer: usize, batches: usize, len: usize) -> Self {
        let aggregate = aggregate("readers");
        let batches = (0..batches)
            .map(|index| {
                let label = format!("writer {writer} batch {index}");
                batch((index * len) as u64, len, &label)
            })
            .collect();
        Self { aggregate, batches }
    }

    /// The request id of batch `index`. The same for every writer: request ids are scoped
    /// to their aggregate.
    fn request(&self, index: usize) -> String {
        format!("batch {index}")
    }

    /// Everything the writer appends.
    fn stream(&self) -> Vec<EventPage> {
        self.batches.concat()
    }

    /// One round of a reader: every kind of read, aimed at the batch most likely in flight.
    /// Checks one reading of the stream while it is written, awaiting `after_first_read`
    /// between its first read and the others.
    async fn check_a_reading<S: EventStore + ?Sized>(
        &self,
        store: &S,
        len: usize,
        after_first_read: impl Future<Output = ()>,
    ) {
        let aggregate = &self.aggregate;
        let stream = self.stream();
        let whole = |end: usize| end.is_multiple_of(len) && end <= stream.len();

        let next = store.next_sequence(aggregate).await.expect("next sequence") as usize;
        assert!(
            whole(next),
            "next_sequence of {aggregate} is {next}: part of a batch of {len} is visible"
        );
        after_first_read.await;
        let read = store.read_all(aggregate).await.expect("read a stream");
        assert!(
            whole(read.len()) && read == stream[..read.len()],
            "a read of {aggregate} saw part of a batch (or foreign events): {} events, \
             batches of {len}",
            read.len()
        );
        // From inside the batch after the one `next_sequence` saw end: probably in flight.
        let from = next + 1;
        let tail = store
            .read_from(aggregate, from as u64)
            .await
            .expect("read a range");
        let end = from + tail.len();
        assert!(
            tail.is_empty() || (whole(end) && tail == stream[from..end]),
            "a read of {aggregate} from {from} saw part of a batch (or foreign events): {} \
             events, batches of {len}",
            tail.len()
        );
        let index = (next / len).min(self.batches.len() - 1);
        let pages = &self.batches[index];
        let correlation = &pages[0].correlation_id;
        let found = store
            .find_by_correlation(correlation)
            .await
            .expect("find by correlation");
        let group = [AggregateEvents {
            aggregate: aggregate.clone(),
            pages: pages.clone(),
        }];
        assert!(
            found.is_empty() || found == group,
            "find_by_correlation of batch {index} of {aggregate} saw part of a batch (or \
             foreign events): {found:?}"
        );
        let request = self.request(index);
        let record = find_request(store, aggregate, &request).await;
        assert!(
            record.is_none() || record == request_record(&request, pages),
            "find_by_request of batch {index} of {aggregate} saw part of a batch (or foreign \
             events): {record:?}"
        );
    }
}

/// The one place the concurrency properties build an [`Append`]: `events` at
/// `expected_sequence`, with `request_id` (and a digest made from it) if given.
pub(crate) fn append(
    expected_sequence: u64,
    events: Vec<EventPage>,
    request_id: Option<&str>,
) -> Append {
    let append = Append::new(expected_sequence, events);
    match request_id {
        Some(id) => append.with_request(RequestKey::new(id, digest(id))),
        None => append,
    }
}

/// What `find_by_request` must answer for `request_id` once `pages` were appended with it
/// through [`append`]: `None` if `pages` is empty.
pub(crate) fn request_record(request_id: &str, pages: &[EventPage]) -> Option<RequestRecord> {
    (!pages.is_empty()).then(|| RequestRecord {
        digest: Some(digest(request_id)),
        pages: pages.to_vec(),
    })
}

/// The store's answer to a request lookup, to compare with [`request_record`]; panics if the
/// lookup fails.
pub(crate) async fn find_request<S: EventStore + ?Sized>(
    store: &S,
    aggregate: &AggregateId,
    request_id: &str,
) -> Option<RequestRecord> {
    store
        .find_by_request(aggregate, request_id)
        .await
        .expect("find by request")
}

/// A command digest made from the request id, so that every id has its own and an index that
/// mixes ids up shows it.
fn digest(request_id: &str) -> CommandDigest {
    let mut digest = [0; 32];
    for (chunk, salt) in digest.chunks_mut(8).zip(0u64..) {
        // `DefaultHasher::new` has fixed keys: the same id gets the same digest every time.
        let mut hasher = std::hash::DefaultHasher::new();
        (salt, request_id).hash(&mut hasher);
        chunk.copy_from_slice(&hasher.finish().to_le_bytes());
    }
    digest
}

/// A fresh aggregate of `domain`.
fn aggregate(domain: &str) -> AggregateId {
    AggregateId::new(Domain::new(domain).expect("valid domain"), Uuid::new_v4())
        .expect("non-nil root")
}

/// `len` events from sequence `first` with correlation id `label`, each payload naming `label`
/// and its sequence.
fn batch(first: u64, len: usize, label: &str) -> Vec<EventPage> {
    (first..first + len as u64)
        .map(|sequence| EventPage {
            sequence,
            payload: Some(Any {
                type_url: "type.example/Event".to_owned(),
                value: format!("{label} #{sequence}").into_bytes(),
            }),
            correlation_id: label.to_owned(),
            ..EventPage::default()
        })
        .collect()
}

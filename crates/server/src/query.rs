//! `EventQuery`: read access to the event store.

use std::pin::Pin;
use std::sync::Arc;

use angzarr_ports::{AggregateId, Domain, EventStore, SequenceRange, SnapshotStore, Uuid};
use angzarr_proto::v1::{
    AggregateQuery, CorrelationQuery, Cover, EventBook, EventPage, ListDomainsRequest,
    ListDomainsResponse, ListRootsRequest, ListRootsResponse, event_query_server::EventQuery,
};
use tokio::sync::mpsc;
use tokio_stream::Stream;
use tokio_stream::wrappers::ReceiverStream;
use tonic::{Request, Response, Status};

use crate::status::{event_store_status, id_status};

/// Events read from the store per round trip while streaming.
const STREAM_CHUNK: u64 = 1_000;
/// `ListRoots` page size when the request leaves it to the server, and the largest allowed.
const DEFAULT_ROOTS_PAGE: usize = 100;
const MAX_ROOTS_PAGE: usize = 1_000;

/// Serves `EventQuery` from an event store and a snapshot store.
pub struct EventQueryService {
    events: Arc<dyn EventStore>,
    snapshots: Arc<dyn SnapshotStore>,
}

impl EventQueryService {
    /// Reads from these stores.
    pub fn new(events: Arc<dyn EventStore>, snapshots: Arc<dyn SnapshotStore>) -> Self {
        Self { events, snapshots }
    }
}

type BoxStream<T> = Pin<Box<dyn Stream<Item = Result<T, Status>> + Send + 'static>>;

fn aggregate_of(query: &AggregateQuery) -> Result<AggregateId, Status> {
    AggregateId::parse(&query.domain, &query.root).map_err(id_status)
}

fn cover(aggregate: &AggregateId) -> Option<Cover> {
    Some(Cover {
        domain: aggregate.domain().to_string(),
        root: aggregate.root().to_string(),
        ..Cover::default()
    })
}

#[tonic::async_trait]
impl EventQuery for EventQueryService {
    async fn get_event_book(
        &self,
        request: Request<AggregateQuery>,
    ) -> Result<Response<EventBook>, Status> {
        let query = request.into_inner();
        let aggregate = aggregate_of(&query)?;
        let range = SequenceRange {
            from: query.from_sequence,
            to: query.to_sequence,
        };
        let mut snapshot = None;
        if query.use_snapshot && range.to.is_none() {
            // As in the core, a failing snapshot store only means reading every event.
            let stored = self
                .snapshots
                .get(&aggregate)
                .await
                .unwrap_or_else(|error| {
                    tracing::warn!(%aggregate, %error, "snapshot unavailable, reading every event");
                    None
                });
            // Only a snapshot with a state, inside the asked range, can stand in for its first
            // events.
            snapshot =
                stored.filter(|stored| stored.sequence >= range.from && stored.state.is_some());
        }
        let mut pages = match &snapshot {
            Some(stored) => {
                let after = SequenceRange {
                    from: stored.sequence.saturating_add(1),
                    to: None,
                };
                self.events.read(&aggregate, after).await
            }
            None => self.events.read(&aggregate, range).await,
        }
        .map_err(event_store_status)?;
        if let Some(stored) = &snapshot
            && pages.is_empty()
        {
            // A snapshot ahead of the events (the core deletes those) must not hide them.
            let next = self
                .events
                .next_sequence(&aggregate)
                .await
                .map_err(event_store_status)?;
            if next <= stored.sequence {
                snapshot = None;
                pages = self
                    .events
                    .read(&aggregate, range)
                    .await
                    .map_err(event_store_status)?;
            }
        }
        Ok(Response::new(EventBook {
            cover: cover(&aggregate),
            snapshot,
            pages,
        }))
    }

    type StreamEventsStream = BoxStream<EventPage>;

    async fn stream_events(
        &self,
        request: Request<AggregateQuery>,
    ) -> Result<Response<Self::StreamEventsStream>, Status> {
        let query = request.into_inner();
        let aggregate = aggregate_of(&query)?;
        let events = Arc::clone(&self.events);
        let (sender, receiver) = mpsc::channel(64);
        tokio::spawn(async move {
            let mut from = query.from_sequence;
            let end = query.to_sequence.unwrap_or(u64::MAX);
            while from < end {
                let to = from.saturating_add(STREAM_CHUNK).min(end);
                let chunk = match events
                    .read(&aggregate, SequenceRange { from, to: Some(to) })
                    .await
                {
                    Ok(chunk) => chunk,
                    Err(error) => {
                        let _ = sender.send(Err(event_store_status(error))).await;
                        return;
                    }
                };
                let complete = chunk.len() as u64 == to - from;
                for page in chunk {
                    if sender.send(Ok(page)).await.is_err() {
                        return; // the client went away
                    }
                }
                if !complete {
                    return; // the end of the stream
                }
                from = to;
            }
        });
        Ok(Response::new(Box::pin(ReceiverStream::new(receiver))))
    }

    async fn list_roots(
        &self,
        request: Request<ListRootsRequest>,
    ) -> Result<Response<ListRootsResponse>, Status> {
        let request = request.into_inner();
        let domain = Domain::new(request.domain).map_err(id_status)?;
        let after = match request.after.as_str() {
            "" => None,
            after => Some(
                Uuid::try_parse(after)
                    .map_err(|_| Status::invalid_argument("`after` is not a UUID"))?,
            ),
        };
        let limit = match request.limit as usize {
            0 => DEFAULT_ROOTS_PAGE,
            limit => limit.min(MAX_ROOTS_PAGE),
        };
        let roots = self
            .events
            .list_roots(&domain, after, limit)
            .await
            .map_err(event_store_status)?;
        Ok(Response::new(ListRootsResponse {
            roots: roots.iter().map(Uuid::to_string).collect(),
        }))
    }

    async fn list_domains(
        &self,
        _: Request<ListDomainsRequest>,
    ) -> Result<Response<ListDomainsResponse>, Status> {
        let domains = self
            .events
            .list_domains()
            .await
            .map_err(event_store_status)?;
        Ok(Response::new(ListDomainsResponse {
            domains: domains.iter().map(Domain::to_string).collect(),
        }))
    }

    type FindByCorrelationStream = BoxStream<EventBook>;

    async fn find_by_correlation(
        &self,
        request: Request<CorrelationQuery>,
    ) -> Result<Response<Self::FindByCorrelationStream>, Status> {
        let correlation_id = request.into_inner().correlation_id;
        if correlation_id.is_empty() {
            return Err(Status::invalid_argument("correlation_id is empty"));
        }
        let groups = self
            .events
            .find_by_correlation(&correlation_id)
            .await
            .map_err(event_store_status)?;
        let books = groups.into_iter().map(move |group| {
            let mut cover = cover(&group.aggregate);
            if let Some(cover) = cover.as_mut() {
                cover.correlation_id.clone_from(&correlation_id);
            }
            Ok(EventBook {
                cover,
                snapshot: None,
                pages: group.pages,
            })
        });
        Ok(Response::new(Box::pin(tokio_stream::iter(books))))
    }
}

#[cfg(test)]
mod tests {
    use angzarr_ports::{Append, Snapshot};
    use angzarr_store_memory::MemoryStore;
    use prost_types::Any;

    use super::*;

    #[tokio::test]
    async fn a_snapshot_ahead_of_the_events_or_without_state_never_hides_them() {
        let store = Arc::new(MemoryStore::new());
        let service = EventQueryService::new(store.clone(), store.clone());
        let root = Uuid::new_v4();
        let aggregate = AggregateId::new(Domain::new("a").unwrap(), root).unwrap();
        let events: Vec<EventPage> = (0..2)
            .map(|sequence| EventPage {
                sequence,
                ..EventPage::default()
            })
            .collect();
        store
            .append(&aggregate, Append::new(0, events.clone()))
            .await
            .unwrap();
        let query = AggregateQuery {
            domain: "a".into(),
            root: root.to_string(),
            use_snapshot: true,
            ..AggregateQuery::default()
        };
        let state = Some(Any::default());
        // Ahead, without state, at the head (nothing after it), and one event behind.
        let cases = [
            (5, state.clone()),
            (1, None),
            (1, state.clone()),
            (0, state),
        ];
        for (sequence, state) in cases {
            let used = state.is_some() && sequence < 2;
            let snapshot = Snapshot { sequence, state };
            SnapshotStore::put(store.as_ref(), &aggregate, snapshot.clone())
                .await
                .unwrap();
            let book = service
                .get_event_book(Request::new(query.clone()))
                .await
                .unwrap()
                .into_inner();
            let expected = if used {
                &events[sequence as usize + 1..]
            } else {
                &events[..]
            };
            assert_eq!(
                (book.snapshot, book.pages.as_slice()),
                (used.then_some(snapshot), expected),
                "snapshot at {sequence}"
            );
        }
    }
}

//! A snapshot interval the host sets, for client logic that returns its state.

use std::num::NonZeroU64;
use std::sync::Arc;

use angzarr_ports::{BusinessReply, ClientLogic, ClientLogicError, ContextualCommand, async_trait};
use angzarr_proto::v1::business_reply::Outcome;

/// Wraps client logic so that its aggregates are snapshotted every `events` events, whatever
/// its own code does: when a reply's events reach a multiple of `events` (counting from the
/// first event of the stream) and the logic returned its `state` but no `snapshot_state`, that
/// state is stored as the snapshot.
///
/// For logic whose interval is not the host's to set when it is built (Python, gRPC), so that
/// a domain's configured interval holds for every kind of logic. Logic that returns
/// `snapshot_state` itself keeps snapshotting at its own interval too; logic that returns no
/// `state` cannot be snapshotted by its host.
pub struct SnapshotEvery {
    logic: Arc<dyn ClientLogic>,
    events: NonZeroU64,
}

impl SnapshotEvery {
    /// `logic`, snapshotted every `events` events.
    pub fn new(logic: Arc<dyn ClientLogic>, events: NonZeroU64) -> Self {
        Self { logic, events }
    }
}

#[async_trait]
impl ClientLogic for SnapshotEvery {
    async fn handle(&self, command: ContextualCommand) -> Result<BusinessReply, ClientLogicError> {
        let mut reply = self.logic.handle(command).await?;
        if let Some(Outcome::Events(emitted)) = reply.outcome.as_mut()
            && emitted.snapshot_state.is_none()
            && let (Some(first), Some(last)) = (emitted.pages.first(), emitted.pages.last())
            && reaches_multiple(first.sequence, last.sequence, self.events)
        {
            // Moved, not copied: the core keeps `snapshot_state` in memory when `state` is
            // missing.
            emitted.snapshot_state = emitted.state.take();
        }
        Ok(reply)
    }
}

/// Whether the events `first..=last` include the `n`-th event of the stream, for some
/// multiple `n` of `every` (the event at sequence `s` is the `s + 1`-th): where a snapshot is
/// due.
pub(crate) fn reaches_multiple(first: u64, last: u64, every: NonZeroU64) -> bool {
    let every = u128::from(every.get());
    (u128::from(last) + 1) / every > u128::from(first) / every
}

#[cfg(test)]
mod tests {
    use angzarr_proto::v1::{EventPage, EventsEmitted, Rejection};
    use prost_types::Any;

    use super::*;

    /// Answers each command with the events and state it is given.
    struct Replies(BusinessReply);

    #[async_trait]
    impl ClientLogic for Replies {
        async fn handle(&self, _: ContextualCommand) -> Result<BusinessReply, ClientLogicError> {
            Ok(self.0.clone())
        }
    }

    fn state(name: &str) -> Option<Any> {
        Some(Any {
            type_url: format!("type.googleapis.com/{name}"),
            value: Vec::new(),
        })
    }

    fn emitted(sequences: std::ops::RangeInclusive<u64>, snapshot: Option<&str>) -> BusinessReply {
        BusinessReply {
            outcome: Some(Outcome::Events(EventsEmitted {
                pages: sequences
                    .map(|sequence| EventPage {
                        sequence,
                        ..EventPage::default()
                    })
                    .collect(),
                snapshot_state: snapshot.and_then(state),
                state: state("State"),
            })),
        }
    }

    async fn through_every_3(reply: BusinessReply) -> EventsEmitted {
        let logic = SnapshotEvery::new(Arc::new(Replies(reply)), NonZeroU64::new(3).unwrap());
        match logic
            .handle(ContextualCommand::default())
            .await
            .unwrap()
            .outcome
        {
            Some(Outcome::Events(emitted)) => emitted,
            other => panic!("{other:?}"),
        }
    }

    #[tokio::test]
    async fn the_state_becomes_the_snapshot_where_the_events_reach_a_multiple() {
        // The third event (sequence 2), alone or within a batch.
        for sequences in [2..=2, 0..=2, 1..=4, 2..=7] {
            let emitted = through_every_3(emitted(sequences.clone(), None)).await;
            assert_eq!(emitted.snapshot_state, state("State"), "{sequences:?}");
            assert_eq!(emitted.state, None, "{sequences:?}");
        }
        // Short of the next multiple.
        for sequences in [0..=1, 3..=4, 6..=6] {
            let emitted = through_every_3(emitted(sequences.clone(), None)).await;
            assert_eq!(emitted.snapshot_state, None, "{sequences:?}");
            assert_eq!(emitted.state, state("State"), "{sequences:?}");
        }
        // The end of the longest stream does not overflow.
        assert!(reaches_multiple(
            u64::MAX - 1,
            u64::MAX,
            NonZeroU64::new(1 << 32).unwrap()
        ));
    }

    #[tokio::test]
    async fn the_logics_own_snapshot_and_other_outcomes_pass_unchanged() {
        let own = through_every_3(emitted(0..=2, Some("Own"))).await;
        assert_eq!(own.snapshot_state, state("Own"));
        assert_eq!(own.state, state("State"));

        let rejection = BusinessReply {
            outcome: Some(Outcome::Rejection(Rejection {
                reason: "no".into(),
            })),
        };
        let logic = SnapshotEvery::new(
            Arc::new(Replies(rejection.clone())),
            NonZeroU64::new(1).unwrap(),
        );
        assert_eq!(
            logic.handle(ContextualCommand::default()).await.unwrap(),
            rejection
        );
    }
}

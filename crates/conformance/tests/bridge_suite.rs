//! The cross-language suite checked on itself: the native bank passes it, and bridges that
//! differ from it in the ways a port to another language can differ are caught.

use std::panic::AssertUnwindSafe;
use std::sync::Arc;
use std::time::Duration;

use angzarr_conformance::bridge::{self, BridgeHarness, Fault};
use angzarr_ports::{BusinessReply, ClientLogic, ClientLogicError, ContextualCommand, async_trait};
use angzarr_proto::v1::{EventsEmitted, Rejection, business_reply::Outcome};

/// How a stand-in bridge departs from the native bank.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Mutant {
    /// Faithful.
    None,
    /// A rejection's reason worded differently.
    RewordedRejection,
    /// Snapshots at another interval.
    SnapshotInterval,
    /// A payload it cannot decode is refused as a rejection, not as an invalid command.
    RejectsUndecodable,
    /// Only the standard type URL prefix is accepted.
    StrictTypeUrlPrefix,
    /// The failing handler's error comes back as the wrong kind.
    FailureMisreported,
    /// The failing handler's command is decided by the bank instead.
    FailureSwallowed,
}

struct StandIn(Mutant);

/// The native bank, altered as the mutant says.
struct Bank {
    inner: Arc<dyn ClientLogic>,
    mutant: Mutant,
}

#[async_trait]
impl ClientLogic for Bank {
    async fn handle(&self, command: ContextualCommand) -> Result<BusinessReply, ClientLogicError> {
        if self.mutant == Mutant::StrictTypeUrlPrefix {
            let pages = command.command.as_ref().map(|book| book.pages.as_slice());
            let foreign = pages.unwrap_or_default().iter().any(|page| {
                let url = page
                    .payload
                    .as_ref()
                    .map_or("", |any| any.type_url.as_str());
                !url.starts_with("type.googleapis.com/")
            });
            if foreign {
                return Err(ClientLogicError::InvalidCommand("unknown prefix".into()));
            }
        }
        let reply = self.inner.handle(command).await;
        match (self.mutant, reply) {
            (Mutant::RejectsUndecodable, Err(ClientLogicError::InvalidCommand(reason))) => {
                Ok(BusinessReply {
                    outcome: Some(Outcome::Rejection(Rejection { reason })),
                })
            }
            (
                Mutant::RewordedRejection,
                Ok(BusinessReply {
                    outcome: Some(Outcome::Rejection(r)),
                }),
            ) => Ok(BusinessReply {
                outcome: Some(Outcome::Rejection(Rejection {
                    reason: format!("{}.", r.reason),
                })),
            }),
            (_, reply) => reply,
        }
    }
}

/// A handler that fails as the fault says, the way a bridge reports it.
struct Faulty {
    fault: Fault,
    deadline: Duration,
    mutant: Mutant,
    bank: Arc<dyn ClientLogic>,
}

#[async_trait]
impl ClientLogic for Faulty {
    async fn handle(&self, command: ContextualCommand) -> Result<BusinessReply, ClientLogicError> {
        if self.fault == Fault::Fails {
            match self.mutant {
                Mutant::FailureMisreported => {
                    return Err(ClientLogicError::Unavailable("boom".into()));
                }
                Mutant::FailureSwallowed => return self.bank.handle(command).await,
                _ => {}
            }
        }
        match self.fault {
            Fault::Fails => Err(ClientLogicError::Failed("RuntimeError: boom".into())),
            Fault::Hangs => {
                let hang = tokio::time::sleep(Duration::from_secs(3600));
                match tokio::time::timeout(self.deadline, hang).await {
                    Ok(()) => Ok(BusinessReply {
                        outcome: Some(Outcome::Events(EventsEmitted::default())),
                    }),
                    Err(_) => Err(ClientLogicError::Timeout(self.deadline)),
                }
            }
            Fault::MalformedReply => Err(ClientLogicError::InvalidReply("not a reply".into())),
            _ => Err(ClientLogicError::Unavailable("nothing listens".into())),
        }
    }
}

#[async_trait]
impl BridgeHarness for StandIn {
    async fn bank(&self, snapshot_every: u64) -> Arc<dyn ClientLogic> {
        let interval = match self.0 {
            Mutant::SnapshotInterval => snapshot_every + 1,
            _ => snapshot_every,
        };
        Arc::new(Bank {
            inner: Arc::new(angzarr_example_bank::logic(interval)),
            mutant: self.0,
        })
    }

    fn faults(&self) -> Vec<Fault> {
        vec![Fault::Fails, Fault::Hangs, Fault::MalformedReply]
    }

    async fn faulty(&self, fault: Fault, deadline: Duration) -> Arc<dyn ClientLogic> {
        Arc::new(Faulty {
            fault,
            deadline,
            mutant: self.0,
            bank: self.bank(0).await,
        })
    }

    fn cases(&self) -> u32 {
        32
    }
}

angzarr_conformance::bridge_suite!(StandIn(Mutant::None));

/// Whether the equivalence property fails against the mutant.
fn equivalence_catches(mutant: Mutant) -> bool {
    std::panic::catch_unwind(AssertUnwindSafe(|| {
        bridge::run(StandIn(mutant), async |harness| {
            bridge::bank_matches_native(harness).await;
        });
    }))
    .is_err()
}

/// Whether the fault property fails against the mutant.
fn faults_catch(mutant: Mutant) -> bool {
    std::panic::catch_unwind(AssertUnwindSafe(|| {
        bridge::run(StandIn(mutant), async |harness| {
            bridge::faults_are_typed_and_contained(harness).await;
        });
    }))
    .is_err()
}

#[test]
fn a_reworded_rejection_is_caught() {
    assert!(equivalence_catches(Mutant::RewordedRejection));
}

#[test]
fn another_snapshot_interval_is_caught() {
    assert!(equivalence_catches(Mutant::SnapshotInterval));
}

#[test]
fn an_undecodable_command_rejected_instead_of_refused_is_caught() {
    assert!(equivalence_catches(Mutant::RejectsUndecodable));
}

#[test]
fn a_strict_type_url_prefix_is_caught() {
    assert!(equivalence_catches(Mutant::StrictTypeUrlPrefix));
}

#[test]
fn a_misreported_failure_is_caught() {
    assert!(faults_catch(Mutant::FailureMisreported));
}

#[test]
fn a_swallowed_failure_is_caught() {
    assert!(faults_catch(Mutant::FailureSwallowed));
}

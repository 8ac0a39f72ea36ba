//! The leader supervisor: starts the manager's loops when this member
//! leads and has caught up, and stops them when it no longer leads.
//!
//! A new leader's store may lack entries that its predecessor committed:
//! they are committed again by the new leader's first entry of its term,
//! but applied here only after that. Loops started at once decided from
//! that older view (and filled slots that already had tasks). So leading
//! goes through catching up: a read index, which openraft gives once this
//! term's first entry committed and a quorum confirmed this leader, and
//! then the wait until it is applied here. Only then do the loops start
//! and the dispatcher serve sessions. [`step`] is that decision, a pure
//! function of where the supervisor stands and what it saw;
//! [`lead_while_leader`] feeds it raft's metrics and the catch-up's
//! outcome.

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio_util::sync::CancellationToken;

use crate::dispatcher::Dispatcher;
use crate::write::RaftProposer;
use crate::{now_ms, Member, VERSION};
use flotilla_manager::{Orchestrator, Proposer, Rebalancer, Scheduler, StoreView, SystemClock};
use flotilla_raft::{RaftError, RaftNode};
use flotilla_store::Command;

/// How long a new leader waits for a quorum to confirm it (the read
/// index), and then for its store to apply that index, each time.
pub(crate) const CATCH_UP_TIMEOUT: Duration = Duration::from_secs(5);
/// Pause before trying to catch up again after a failed try.
const CATCH_UP_RETRY: Duration = Duration::from_millis(200);
/// How often leadership is looked at besides raft's metrics changing:
/// whether this member leads may change with time alone (a leader that no
/// quorum acknowledged lately).
const LOOK_EVERY: Duration = Duration::from_millis(100);

/// Where this member stands as leader, by raft term.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Lead {
    /// Not the leader: no loops, no sessions served.
    NotLeading,
    /// The leader of `term`, waiting for its read index to be applied.
    CatchingUp { term: u64 },
    /// The leader of `term`, caught up: loops run, sessions are served.
    Leading { term: u64 },
}

/// What the supervisor saw.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Event {
    /// Raft says whether this member leads, and in which term.
    Observed { leader: bool, term: u64 },
    /// The catch-up started in `term` finished: its read index is applied.
    CaughtUp { term: u64 },
    /// The catch-up started in `term` failed (no quorum confirmed this
    /// leader in time, or the store did not apply the index in time).
    CatchUpFailed { term: u64 },
}

/// What the supervisor does about it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Action {
    Nothing,
    /// Get a read index in `term` and wait until it is applied; after a
    /// pause when `retry`.
    CatchUp {
        term: u64,
        retry: bool,
    },
    /// Start the loops and serve sessions.
    Start,
    /// Stop the loops, sessions and any catch-up.
    Stop,
    /// Leading again in a new term without having been seen to lose it:
    /// stop, then catch up in `term`.
    StopAndCatchUp {
        term: u64,
    },
}

/// The supervisor's decision. The loops start only from `CatchingUp` on
/// the catch-up of the same term, and the caller observes leadership just
/// before it reports a catch-up, so a member that lost leadership (or got
/// it back in another term) meanwhile never starts them on an old read.
pub(crate) fn step(lead: Lead, event: Event) -> (Lead, Action) {
    use {Action as A, Event as E, Lead as L};
    match (lead, event) {
        (L::NotLeading, E::Observed { leader: true, term }) => {
            (L::CatchingUp { term }, A::CatchUp { term, retry: false })
        }
        (L::NotLeading, _) => (lead, A::Nothing),
        (L::CatchingUp { .. } | L::Leading { .. }, E::Observed { leader: false, .. }) => {
            (L::NotLeading, A::Stop)
        }
        (L::CatchingUp { term: now }, E::Observed { leader: true, term }) if term != now => {
            (L::CatchingUp { term }, A::CatchUp { term, retry: false })
        }
        (L::CatchingUp { term: now }, E::CaughtUp { term }) if term == now => {
            (L::Leading { term }, A::Start)
        }
        (L::CatchingUp { term: now }, E::CatchUpFailed { term }) if term == now => {
            (lead, A::CatchUp { term, retry: true })
        }
        (L::Leading { term: now }, E::Observed { leader: true, term }) if term != now => {
            (L::CatchingUp { term }, A::StopAndCatchUp { term })
        }
        (L::CatchingUp { .. } | L::Leading { .. }, _) => (lead, A::Nothing),
    }
}

/// Why a catch-up failed.
#[derive(Debug, thiserror::Error)]
pub(crate) enum CatchUpError {
    #[error("timed out after {0:?} waiting for a quorum to confirm this leader (read index)")]
    NoQuorum(Duration),
    #[error("getting a read index: {0}")]
    ReadIndex(RaftError),
    #[error(
        "timed out after {after:?} waiting for this store to apply the read index {index} (applied: {applied})"
    )]
    Apply {
        index: u64,
        applied: u64,
        after: Duration,
    },
}

/// A catch-up in flight: its term and outcome (the index it applied).
type CatchingUp = Pin<Box<dyn Future<Output = (u64, Result<u64, CatchUpError>)> + Send>>;

/// Gets a read index in `term` and waits until this store applied it.
async fn catch_up(raft: Arc<RaftNode>, term: u64, retry: bool) -> (u64, Result<u64, CatchUpError>) {
    if retry {
        tokio::time::sleep(CATCH_UP_RETRY).await;
    }
    let outcome = async {
        let index = raft
            .read_index(CATCH_UP_TIMEOUT)
            .await
            .map_err(|e| match e {
                RaftError::Timeout(after) => CatchUpError::NoQuorum(after),
                other => CatchUpError::ReadIndex(other),
            })?;
        if !raft.wait_applied(index, CATCH_UP_TIMEOUT).await {
            return Err(CatchUpError::Apply {
                index,
                applied: *raft.applied().borrow(),
                after: CATCH_UP_TIMEOUT,
            });
        }
        Ok(index)
    };
    (term, outcome.await)
}

/// Whether this member leads, and in which term.
fn observe(raft: &RaftNode) -> Event {
    let term = raft.raft().metrics().borrow().current_term;
    Event::Observed {
        leader: raft.is_leader(),
        term,
    }
}

/// Runs the manager's loops whenever this member leads and has caught up,
/// and stops them when it no longer leads.
pub(crate) async fn lead_while_leader(
    member: Arc<Member>,
    name: Option<String>,
    hostname: String,
    node_timeout: Duration,
    counters: crate::metrics::Counters,
    shutdown: CancellationToken,
) {
    let (Some(raft), Some(view), Some(dispatcher)) = (
        member.raft.clone(),
        member.view(),
        member.dispatcher.clone(),
    ) else {
        return;
    };
    let mut metrics = raft.raft().metrics();
    // The lease lapses without any metrics change when this member is cut
    // off from the other managers: watch it too.
    let mut lease = raft.leading();
    let mut look = tokio::time::interval(LOOK_EVERY);
    look.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut s = Supervisor {
        member,
        raft,
        view,
        dispatcher,
        name,
        hostname,
        node_timeout,
        counters,
        shutdown: shutdown.clone(),
        lead: Lead::NotLeading,
        loops: None,
        catching: None,
        since: Instant::now(),
    };
    loop {
        let seen = observe(&s.raft);
        s.on(seen);
        let mut catching = s.catching.take();
        tokio::select! {
            _ = shutdown.cancelled() => break,
            r = metrics.changed() => if r.is_err() { break },
            r = lease.changed() => if r.is_err() { break },
            _ = look.tick() => {}
            (term, outcome) = async {
                match catching.as_mut() {
                    Some(f) => f.await,
                    None => std::future::pending().await,
                }
            } => {
                catching = None;
                let seen = observe(&s.raft);
                s.on(seen);
                s.caught_up(term, outcome);
            }
        }
        // A catch-up still in flight goes on, unless a step replaced it.
        if s.catching.is_none() && s.lead != Lead::NotLeading {
            s.catching = catching;
        }
    }
    s.act(Action::Stop);
}

/// What runs while this member leads.
struct Supervisor {
    member: Arc<Member>,
    raft: Arc<RaftNode>,
    view: StoreView,
    dispatcher: Arc<Dispatcher>,
    name: Option<String>,
    hostname: String,
    node_timeout: Duration,
    /// Where the loops' proposals are counted (scheduling latency, nodes
    /// declared down).
    counters: crate::metrics::Counters,
    shutdown: CancellationToken,
    lead: Lead,
    /// The loops' token while they run.
    loops: Option<CancellationToken>,
    catching: Option<CatchingUp>,
    /// When the current catch-up started.
    since: Instant,
}

impl Supervisor {
    fn on(&mut self, event: Event) {
        let (lead, action) = step(self.lead, event);
        self.lead = lead;
        self.act(action);
    }

    /// The outcome of the catch-up started in `term`.
    fn caught_up(&mut self, term: u64, outcome: Result<u64, CatchUpError>) {
        let event = match outcome {
            Ok(index) => {
                if self.lead == (Lead::CatchingUp { term }) {
                    tracing::info!(
                        term,
                        index,
                        took_ms = self.since.elapsed().as_millis() as u64,
                        "leader caught up: starting orchestrator, scheduler, rebalancer and node watcher, serving sessions"
                    );
                }
                Event::CaughtUp { term }
            }
            Err(error) => {
                tracing::warn!(term, %error, "the new leader has not caught up yet; its loops wait; trying again");
                Event::CatchUpFailed { term }
            }
        };
        self.on(event);
    }

    fn act(&mut self, action: Action) {
        match action {
            Action::Nothing => {}
            Action::CatchUp { term, retry } => {
                if !retry {
                    tracing::info!(term, "became leader: catching up before starting the loops");
                    self.since = Instant::now();
                }
                self.catching = Some(Box::pin(catch_up(self.raft.clone(), term, retry)));
            }
            Action::Start => self.start(),
            Action::Stop => self.stop(),
            Action::StopAndCatchUp { term } => {
                self.stop();
                self.act(Action::CatchUp { term, retry: false });
            }
        }
    }

    fn stop(&mut self) {
        self.dispatcher.set_caught_up(false);
        self.catching = None;
        if let Some(token) = self.loops.take() {
            tracing::info!("no longer leader: stopping orchestrator, scheduler and dispatcher");
            token.cancel();
        }
    }

    fn start(&mut self) {
        let raft = &self.raft;
        let view = &self.view;
        let token = self.shutdown.child_token();
        let proposer: Arc<dyn Proposer> =
            Arc::new(RaftProposer::counting(raft.clone(), self.counters.clone()));
        let clock = Arc::new(SystemClock);
        tokio::spawn(
            Orchestrator::new(view.clone(), proposer.clone(), clock.clone()).run(token.clone()),
        );
        tokio::spawn(
            Scheduler::new(view.clone(), proposer.clone(), clock.clone()).run(token.clone()),
        );
        tokio::spawn(
            flotilla_manager::Allocator::new(view.clone(), proposer.clone(), clock.clone())
                .run(token.clone()),
        );
        tokio::spawn(Rebalancer::new(view.clone(), proposer, clock).run(token.clone()));
        tokio::spawn(
            flotilla_manager::NodeWatcher::new(
                view.clone(),
                Arc::new(RaftProposer::counting(raft.clone(), self.counters.clone())),
                Arc::new(SystemClock),
                self.dispatcher.heartbeats(),
                self.node_timeout,
            )
            .run(token.clone()),
        );
        tokio::spawn(crate::scheduled_backups::scheduled(
            view.clone(),
            token.clone(),
        ));
        tokio::spawn(refresh_own_node(
            raft.clone(),
            self.member.identity.node_id.clone(),
            self.name.clone(),
            self.hostname.clone(),
        ));
        self.dispatcher.set_caught_up(true);
        self.loops = Some(token);
    }
}

/// Marks this node ready with its current name, host name and version.
/// Field by field ([`Command::RefreshNode`]): a drain or a label change
/// that commits between a read of the record and this write stays.
pub(crate) async fn refresh_own_node(
    raft: Arc<RaftNode>,
    node_id: String,
    name: Option<String>,
    hostname: String,
) {
    let refresh = Command::RefreshNode {
        node_id,
        // A name given with --name wins; otherwise the stored one stays (it
        // may have been chosen at init from an older host name).
        name,
        hostname,
        version: VERSION.to_string(),
        entry_format: crate::announced_format(),
        at: now_ms(),
    };
    match raft.propose(refresh).await {
        Ok(Ok(_)) => {}
        Ok(Err(e)) => tracing::warn!(error = %e, "this node's record was not refreshed"),
        // In a rolling upgrade: the dispatcher's NodeSeen still marks this
        // node ready; its name and host name wait for the last manager.
        Err(e @ flotilla_raft::RaftError::FormatNotReady { .. }) => {
            tracing::info!(reason = %e, "this node's record is refreshed once every manager is upgraded")
        }
        Err(e) => tracing::warn!(error = %e, "could not refresh this node's record"),
    }
}

#[cfg(test)]
mod tests {
    use super::{step, Action, Event, Lead};

    /// Feeds `events` from `NotLeading`; returns the actions and where it
    /// ends.
    fn run(events: &[Event]) -> (Vec<Action>, Lead) {
        let mut lead = Lead::NotLeading;
        let mut actions = Vec::new();
        for event in events {
            let (next, action) = step(lead, *event);
            lead = next;
            if action != Action::Nothing {
                actions.push(action);
            }
        }
        (actions, lead)
    }

    const LEADER_3: Event = Event::Observed {
        leader: true,
        term: 3,
    };
    const FOLLOWER: Event = Event::Observed {
        leader: false,
        term: 3,
    };

    /// Before, the loops started as soon as raft said "leader".
    #[test]
    fn a_new_leader_starts_its_loops_only_once_caught_up() {
        let (actions, lead) = run(&[LEADER_3, LEADER_3, LEADER_3]);
        assert_eq!(
            actions,
            [Action::CatchUp {
                term: 3,
                retry: false
            }]
        );
        assert_eq!(lead, Lead::CatchingUp { term: 3 });
        let (actions, lead) = run(&[LEADER_3, LEADER_3, Event::CaughtUp { term: 3 }, LEADER_3]);
        assert_eq!(actions.last(), Some(&Action::Start));
        assert_eq!(lead, Lead::Leading { term: 3 });
    }

    #[test]
    fn leadership_lost_while_catching_up_starts_nothing() {
        let (actions, lead) = run(&[LEADER_3, FOLLOWER, Event::CaughtUp { term: 3 }]);
        assert_eq!(
            actions,
            [
                Action::CatchUp {
                    term: 3,
                    retry: false
                },
                Action::Stop
            ]
        );
        assert_eq!(lead, Lead::NotLeading);
    }

    /// Lost and won back in term 5 before term 3's catch-up reported: that
    /// read says nothing of term 5.
    #[test]
    fn a_catch_up_of_an_earlier_term_does_not_count() {
        let leader_5 = Event::Observed {
            leader: true,
            term: 5,
        };
        let (actions, lead) = run(&[LEADER_3, leader_5, Event::CaughtUp { term: 3 }]);
        assert!(!actions.contains(&Action::Start), "{actions:?}");
        assert_eq!(
            actions.last(),
            Some(&Action::CatchUp {
                term: 5,
                retry: false
            })
        );
        assert_eq!(lead, Lead::CatchingUp { term: 5 });
        let (_, lead) = run(&[LEADER_3, leader_5, Event::CaughtUp { term: 5 }]);
        assert_eq!(lead, Lead::Leading { term: 5 });
    }

    #[test]
    fn a_failed_catch_up_is_tried_again_while_leading() {
        let (actions, lead) = run(&[LEADER_3, Event::CatchUpFailed { term: 3 }]);
        assert_eq!(
            actions.last(),
            Some(&Action::CatchUp {
                term: 3,
                retry: true
            })
        );
        assert_eq!(lead, Lead::CatchingUp { term: 3 });
        // Not once it no longer leads.
        let (actions, _) = run(&[LEADER_3, FOLLOWER, Event::CatchUpFailed { term: 3 }]);
        assert_eq!(actions.last(), Some(&Action::Stop));
    }

    #[test]
    fn a_leader_that_loses_leadership_stops_and_catches_up_again_in_a_new_term() {
        let caught_up = Event::CaughtUp { term: 3 };
        let (actions, lead) = run(&[LEADER_3, caught_up, FOLLOWER]);
        assert_eq!(actions.last(), Some(&Action::Stop));
        assert_eq!(lead, Lead::NotLeading);
        let leader_4 = Event::Observed {
            leader: true,
            term: 4,
        };
        let (actions, lead) = run(&[LEADER_3, caught_up, leader_4]);
        assert_eq!(actions.last(), Some(&Action::StopAndCatchUp { term: 4 }));
        assert_eq!(lead, Lead::CatchingUp { term: 4 });
        // A follower stays one.
        assert_eq!(run(&[FOLLOWER, FOLLOWER]), (vec![], Lead::NotLeading));
    }
}

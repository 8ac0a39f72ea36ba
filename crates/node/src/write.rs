//! The write path: proposing a command through the local raft member,
//! forwarding it to the leader from a follower (and waiting until the
//! follower applied it: read your writes), and saying why a write cannot
//! commit when no quorum answers.

use std::sync::Arc;
use std::time::Duration;

use anyhow::Result;

use flotilla_manager::{ProposeError, ProposeFuture, Proposer};
use flotilla_raft::{RaftError, RaftNode};
use flotilla_store::Command;
use flotilla_transport::Target;

use crate::session::LeaderFinder;
use crate::{dispatcher, Member};

/// Proposes through the local raft member. A batch command (tasks,
/// assignments, statuses) is proposed in parts of at most
/// [`flotilla_store::MAX_BATCH`] items and, where the items are large,
/// [`flotilla_store::MAX_ENTRY_BYTES`], so that no raft entry is too large
/// to replicate within a heartbeat; the answer is the last part's, or the
/// first error (the loops reconcile what a failed part left undone).
///
/// The leader's loops propose through one that counts what `/metrics`
/// shows of them ([`RaftProposer::counting`]): how long tasks waited for a
/// node (creation to assignment) and how many nodes were declared down
/// for missing heartbeats.
pub(crate) struct RaftProposer {
    raft: Arc<RaftNode>,
    counters: Option<crate::metrics::Counters>,
}

impl RaftProposer {
    pub(crate) fn new(raft: Arc<RaftNode>) -> Self {
        RaftProposer {
            raft,
            counters: None,
        }
    }

    pub(crate) fn counting(raft: Arc<RaftNode>, counters: crate::metrics::Counters) -> Self {
        RaftProposer {
            raft,
            counters: Some(counters),
        }
    }

    /// What `command` adds to the counters once it commits.
    fn to_count(&self, command: &Command) -> Counted {
        match command {
            Command::AssignTasks { assignments, at } => {
                let state = self.raft.state();
                let state = state.read().unwrap_or_else(|p| p.into_inner());
                Counted::Waits(
                    assignments
                        .iter()
                        .filter_map(|(task, _)| state.tasks.get(task))
                        .map(|t| at.saturating_sub(t.created_at))
                        .collect(),
                )
            }
            Command::SetNodeState {
                node_ids,
                state: flotilla_types::NodeState::Down,
                ..
            } => Counted::Down(node_ids.len() as u64),
            _ => Counted::Nothing,
        }
    }
}

/// See [`RaftProposer::to_count`].
enum Counted {
    Nothing,
    /// Milliseconds from each task's creation to its assignment.
    Waits(Vec<u64>),
    Down(u64),
}

impl Proposer for RaftProposer {
    fn propose(&self, command: Command) -> ProposeFuture<'_> {
        Box::pin(async move {
            let counted = match &self.counters {
                Some(_) => self.to_count(&command),
                None => Counted::Nothing,
            };
            let mut answer = Ok(None);
            for part in command.parts(flotilla_store::MAX_BATCH, flotilla_store::MAX_ENTRY_BYTES) {
                answer = self.raft.propose(part).await.map_err(|e| match e {
                    RaftError::NotLeader { .. } => ProposeError::NotLeader,
                    other => ProposeError::Other(other.to_string()),
                })?;
                if answer.is_err() {
                    break;
                }
            }
            if let (Some(c), Ok(_)) = (&self.counters, &answer) {
                match counted {
                    Counted::Nothing => {}
                    Counted::Waits(waits) => {
                        for ms in waits {
                            c.scheduling_seconds.observe(ms as f64 / 1000.0);
                        }
                    }
                    Counted::Down(n) => {
                        c.heartbeat_timeouts.inc_by(n);
                    }
                }
            }
            Ok(answer)
        })
    }
}

/// Why a proposal through this member failed.
#[derive(Debug, thiserror::Error)]
pub enum ProposeFailure {
    #[error("this node is a worker: run this command on a manager")]
    Worker,
    #[error(transparent)]
    Raft(#[from] RaftError),
    #[error("no quorum: {reachable} of {managers} managers reachable (need {need})")]
    NoQuorum {
        reachable: usize,
        managers: usize,
        need: usize,
    },
    #[error("no leader is known yet ({reachable} of {managers} managers reachable); try again")]
    NoLeader { reachable: usize, managers: usize },
    #[error("forwarding to the leader at {addr}: {reason}")]
    Forward { addr: String, reason: String },
    /// The leader committed the write, but this member has not applied it
    /// within [`APPLY_WAIT`]: a read here would not show it yet.
    #[error(
        "the write committed (raft index {index}) but is not yet applied on this manager \
         after {}s; retry the read", APPLY_WAIT.as_secs()
    )]
    NotYetApplied { index: u64 },
}

/// How long a write may wait for a leader before it fails: long enough to
/// ride out an election (a dead leader is noticed after 0.6-0.9 s, and a
/// vote may split once), see ARCHITECTURE.md "Raft timings".
pub const WRITE_BUDGET: Duration = Duration::from_secs(3);

/// After this long without a leader, a write checks once whether a quorum
/// of managers can be reached at all, and fails at once if not: a manager
/// cut off from the others says so in about a second, not three.
pub const QUORUM_CHECK_AFTER: Duration = Duration::from_millis(1000);

/// How long a follower waits to apply a write the leader committed for it
/// before it says so instead of answering.
pub const APPLY_WAIT: Duration = Duration::from_secs(2);

/// What a follower answers for a write it forwarded: the leader committed
/// it at `index` with `result`; `applied_here` says whether this member
/// applied that index within [`APPLY_WAIT`].
pub(crate) fn forwarded_answer(
    result: flotilla_store::CommandResult,
    index: u64,
    applied_here: bool,
) -> Result<flotilla_store::CommandResult, ProposeFailure> {
    // A refusal changed nothing, so it is true here too, caught up or not.
    if applied_here || result.is_err() {
        Ok(result)
    } else {
        tracing::warn!(
            index,
            "forwarded write not applied here within {APPLY_WAIT:?}"
        );
        Err(ProposeFailure::NotYetApplied { index })
    }
}

impl Member {
    /// Proposes a command; a follower forwards it to the leader. While no
    /// leader answers, it retries until [`WRITE_BUDGET`] runs out and then
    /// says how many managers it can reach. Every try carries the same
    /// request ID, so that a try whose answer was lost (a reset, a 503, a
    /// leader change) and the retry apply once.
    pub async fn propose(
        &self,
        command: Command,
    ) -> Result<flotilla_store::CommandResult, ProposeFailure> {
        let raft = self.raft.as_ref().ok_or(ProposeFailure::Worker)?;
        let request = flotilla_types::new_id(rand::random());
        let start = tokio::time::Instant::now();
        let deadline = start + WRITE_BUDGET;
        let mut quorum_checked = false;
        loop {
            let mut left = deadline.saturating_duration_since(tokio::time::Instant::now());
            if !quorum_checked {
                // Wait no longer than the quorum check: a leader that lost
                // its quorum would hold the proposal until the budget ran
                // out. A retry carries the same request ID, so it applies
                // once even when the first attempt commits after all.
                let until_check = QUORUM_CHECK_AFTER.saturating_sub(start.elapsed());
                left = left.min(until_check.max(Duration::from_millis(100)));
            }
            // Each arm either answers or falls through to a retry.
            if raft.is_leader() {
                let proposal = raft.propose_request(command.clone(), Some(request.clone()));
                match tokio::time::timeout(left, proposal).await {
                    Ok(Ok((r, _))) => return Ok(r),
                    Ok(Err(RaftError::NotLeader { .. } | RaftError::Timeout(_))) | Err(_) => {}
                    Ok(Err(e)) => return Err(e.into()),
                }
            } else if let Some(addr) = self.leader_addr() {
                let forwarded = self
                    .client
                    .post::<_, (flotilla_store::CommandResult, u64)>(
                        Target::Manager,
                        &addr,
                        "/cluster/v1/propose",
                        &crate::wire::Forwarded {
                            request: Some(request.clone()),
                            command: command.clone(),
                        },
                        left.max(Duration::from_millis(100)),
                    )
                    .await;
                match forwarded {
                    Ok((r, index)) => {
                        // Read your writes: the caller reads this member's
                        // state next, so wait until it has the change.
                        let applied = raft.wait_applied(index, APPLY_WAIT).await;
                        return forwarded_answer(r, index, applied);
                    }
                    Err(e) if e.is_unreachable() => {}
                    Err(flotilla_transport::TransportError::Status { status: 503, .. }) => {}
                    Err(e) => {
                        return Err(ProposeFailure::Forward {
                            addr,
                            reason: e.to_string(),
                        })
                    }
                }
            }
            if tokio::time::Instant::now() + Duration::from_millis(100) >= deadline {
                return Err(self.quorum_failure().await);
            }
            if !quorum_checked && start.elapsed() >= QUORUM_CHECK_AFTER {
                quorum_checked = true;
                let failure = self.quorum_failure().await;
                if matches!(failure, ProposeFailure::NoQuorum { .. }) {
                    return Err(failure);
                }
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    /// Why no write can commit: counts the managers that answer a TCP
    /// connect on their cluster port right now.
    pub(crate) async fn quorum_failure(&self) -> ProposeFailure {
        let addrs: Vec<String> = match self.view() {
            Some(v) => dispatcher::manager_addrs(&v.read()),
            None => vec![],
        };
        let managers = addrs.len().max(1);
        let mut probes = tokio::task::JoinSet::new();
        for addr in addrs {
            probes.spawn(async move {
                let connect = tokio::net::TcpStream::connect(addr.as_str());
                matches!(
                    tokio::time::timeout(Duration::from_millis(200), connect).await,
                    Ok(Ok(_))
                )
            });
        }
        let reachable = probes.join_all().await.into_iter().filter(|ok| *ok).count();
        let need = managers / 2 + 1;
        if reachable < need {
            ProposeFailure::NoQuorum {
                reachable,
                managers,
                need,
            }
        } else {
            ProposeFailure::NoLeader {
                reachable,
                managers,
            }
        }
    }
}

/// How long `demote` looks for a leader that takes the removal: a leader
/// whose lease lapsed for a moment (a manager that just joined and is
/// catching up acknowledges late) or an election under way is waited out.
pub const REMOVE_BUDGET: Duration = Duration::from_secs(5);

/// Why one try of a removal failed.
#[derive(Debug, PartialEq)]
enum RemoveTry {
    /// No leader took it (none known, a 503, not the leader, unreachable):
    /// try again while the budget lasts.
    NoLeader(String),
    /// Refused for good.
    Failed(String),
}

impl From<RaftError> for RemoveTry {
    fn from(e: RaftError) -> Self {
        match e {
            RaftError::NotLeader { .. } => RemoveTry::NoLeader(e.to_string()),
            other => RemoveTry::Failed(other.to_string()),
        }
    }
}

impl From<flotilla_transport::TransportError> for RemoveTry {
    fn from(e: flotilla_transport::TransportError) -> Self {
        match e {
            flotilla_transport::TransportError::Status { status: 503, .. } => {
                RemoveTry::NoLeader(e.to_string())
            }
            e if e.is_unreachable() => RemoveTry::NoLeader(e.to_string()),
            e => RemoveTry::Failed(e.to_string()),
        }
    }
}

/// Runs `attempt` until it succeeds, fails for good, or `budget` runs out
/// while no leader takes it; the last error is the answer.
async fn until_a_leader_takes<F, Fut>(budget: Duration, mut attempt: F) -> Result<(), String>
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Result<(), RemoveTry>>,
{
    let deadline = tokio::time::Instant::now() + budget;
    loop {
        match attempt().await {
            Ok(()) => return Ok(()),
            Err(RemoveTry::Failed(e)) => return Err(e),
            Err(RemoveTry::NoLeader(e)) => {
                if tokio::time::Instant::now() + Duration::from_millis(100) >= deadline {
                    return Err(e);
                }
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        }
    }
}

impl Member {
    /// Takes the manager with raft ID `raft_id` out of the voters: here if
    /// this member leads, else through the leader; while no leader takes
    /// it, it tries again for up to [`REMOVE_BUDGET`].
    pub async fn remove_from_raft(&self, raft_id: u64) -> Result<(), String> {
        let raft = self.raft.as_ref().ok_or("this node is a worker")?;
        until_a_leader_takes(REMOVE_BUDGET, || async {
            if raft.is_leader() {
                return raft.remove_voter(raft_id).await.map_err(RemoveTry::from);
            }
            let addr = self
                .leader_addr()
                .ok_or_else(|| RemoveTry::NoLeader("no leader is known".into()))?;
            self.client
                .post::<_, ()>(
                    Target::Manager,
                    &addr,
                    "/cluster/v1/remove-manager",
                    &raft_id,
                    Duration::from_secs(20),
                )
                .await
                .map_err(RemoveTry::from)
        })
        .await
    }
}

impl crate::control::Writer for Member {
    fn propose(
        &self,
        command: Command,
    ) -> crate::control::WriteFuture<'_, Result<flotilla_store::CommandResult, ProposeFailure>>
    {
        Box::pin(Member::propose(self, command))
    }

    fn remove_manager(&self, raft_id: u64) -> crate::control::WriteFuture<'_, Result<(), String>> {
        Box::pin(self.remove_from_raft(raft_id))
    }

    fn leader(&self) -> Option<u64> {
        self.raft.as_ref().and_then(|r| r.leader())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use flotilla_store::StoreError;

    /// CI, `promote_and_demote_keep_tasks_running`: the leader's lease
    /// lapsed for a moment just after a manager joined, it answered the
    /// forwarded removal "not the leader", and `node demote` failed at
    /// once. A removal no leader took is tried again.
    #[tokio::test(start_paused = true)]
    async fn a_removal_no_leader_took_is_tried_again() {
        let tries = std::cell::Cell::new(0);
        let done = until_a_leader_takes(REMOVE_BUDGET, || {
            tries.set(tries.get() + 1);
            let n = tries.get();
            async move {
                match n {
                    1 => Err(RemoveTry::NoLeader("this manager is not the leader".into())),
                    2 => Err(RemoveTry::NoLeader("no leader is known".into())),
                    _ => Ok(()),
                }
            }
        })
        .await;
        assert_eq!(done, Ok(()));
        assert_eq!(tries.get(), 3);
    }

    #[tokio::test(start_paused = true)]
    async fn a_removal_stops_at_a_refusal_or_when_the_budget_runs_out() {
        let refused = until_a_leader_takes(REMOVE_BUDGET, || async {
            Err(RemoveTry::Failed("the last voter".into()))
        })
        .await;
        assert_eq!(refused, Err("the last voter".into()));
        let start = tokio::time::Instant::now();
        let lapsed = until_a_leader_takes(REMOVE_BUDGET, || async {
            Err(RemoveTry::NoLeader("no leader is known".into()))
        })
        .await;
        assert_eq!(lapsed, Err("no leader is known".into()));
        let waited = start.elapsed();
        assert!(waited <= REMOVE_BUDGET && waited >= REMOVE_BUDGET - Duration::from_millis(200));
    }

    #[test]
    fn not_the_leader_and_503_are_worth_another_try() {
        assert!(matches!(
            RemoveTry::from(RaftError::NotLeader { leader: None }),
            RemoveTry::NoLeader(_)
        ));
        assert!(matches!(
            RemoveTry::from(RaftError::Other("boom".into())),
            RemoveTry::Failed(_)
        ));
    }

    /// Issue 9, defect 10: a forwarded write the follower has not applied
    /// was answered OK, and the caller's next read missed it.
    #[test]
    fn a_forwarded_write_is_ok_only_once_applied_here() {
        let ok: flotilla_store::CommandResult = Ok(Some("s1".into()));
        assert_eq!(forwarded_answer(ok.clone(), 7, true).expect("applied"), ok);
        let e = forwarded_answer(ok, 7, false).expect_err("not applied here");
        assert!(
            matches!(e, ProposeFailure::NotYetApplied { index: 7 }),
            "{e:?}"
        );
        assert_eq!(
            e.to_string(),
            "the write committed (raft index 7) but is not yet applied on this manager \
             after 2s; retry the read"
        );
        // A refusal changed nothing: that is true whether or not this
        // member caught up.
        let refused: flotilla_store::CommandResult = Err(StoreError::ServiceNotFound("web".into()));
        assert_eq!(
            forwarded_answer(refused.clone(), 8, false).expect("refusal"),
            refused
        );
    }
}

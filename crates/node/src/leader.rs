//! The leader supervisor: starts the manager's loops when this member
//! becomes leader and stops them when it no longer is.

use std::sync::Arc;
use std::time::Duration;

use tokio_util::sync::CancellationToken;

use crate::write::RaftProposer;
use crate::{now_ms, Member, VERSION};
use flotilla_manager::{Orchestrator, Proposer, Rebalancer, Scheduler, SystemClock};
use flotilla_raft::RaftNode;
use flotilla_store::Command;
use flotilla_types::NodeState;

/// Runs the manager's loops whenever this member leads, and stops them when
/// it no longer does.
pub(crate) async fn lead_while_leader(
    member: Arc<Member>,
    name: Option<String>,
    hostname: String,
    node_timeout: Duration,
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
    let mut leading: Option<CancellationToken> = None;
    loop {
        let is_leader = raft.is_leader();
        match (is_leader, &leading) {
            (true, None) => {
                tracing::info!("became leader: starting orchestrator, scheduler and dispatcher");
                let token = shutdown.child_token();
                let proposer: Arc<dyn Proposer> = Arc::new(RaftProposer(raft.clone()));
                let clock = Arc::new(SystemClock);
                tokio::spawn(
                    Orchestrator::new(view.clone(), proposer.clone(), clock.clone())
                        .run(token.clone()),
                );
                tokio::spawn(
                    Scheduler::new(view.clone(), proposer.clone(), clock.clone())
                        .run(token.clone()),
                );
                tokio::spawn(Rebalancer::new(view.clone(), proposer, clock).run(token.clone()));
                tokio::spawn(
                    flotilla_manager::NodeWatcher::new(
                        view.clone(),
                        Arc::new(RaftProposer(raft.clone())),
                        Arc::new(SystemClock),
                        dispatcher.heartbeats(),
                        node_timeout,
                    )
                    .run(token.clone()),
                );
                tokio::spawn(refresh_own_node(
                    raft.clone(),
                    member.identity.node_id.clone(),
                    name.clone(),
                    hostname.clone(),
                ));
                leading = Some(token);
            }
            (false, Some(token)) => {
                tracing::info!("no longer leader: stopping orchestrator, scheduler and dispatcher");
                token.cancel();
                leading = None;
            }
            _ => {}
        }
        tokio::select! {
            _ = shutdown.cancelled() => break,
            r = metrics.changed() => if r.is_err() { break },
            r = lease.changed() => if r.is_err() { break },
        }
    }
    if let Some(token) = leading {
        token.cancel();
    }
}

/// Marks this node ready with its current name, address and version.
pub(crate) async fn refresh_own_node(
    raft: Arc<RaftNode>,
    node_id: String,
    name: Option<String>,
    hostname: String,
) {
    let node = {
        let state = raft.state();
        let state = match state.read() {
            Ok(s) => s,
            Err(p) => p.into_inner(),
        };
        state.nodes.get(&node_id).cloned()
    };
    let Some(mut node) = node else { return };
    node.state = NodeState::Ready;
    node.last_seen = now_ms();
    node.version = VERSION.to_string();
    // A name given with --name wins; otherwise the stored one stays (it may
    // have been chosen at init from an older host name).
    if let Some(name) = name {
        node.name = name;
    }
    node.hostname = hostname;
    if let Err(e) = raft.propose(Command::UpsertNode { node }).await {
        tracing::warn!(error = %e, "could not refresh this node's record");
    }
}

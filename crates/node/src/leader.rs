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
        }
    }
    if let Some(token) = leading {
        token.cancel();
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
        entry_format: flotilla_store::FORMAT,
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

//! Certificate renewal and role changes: a node gets a new certificate
//! from a manager and restarts itself in place to use it.

use std::path::Path;
use std::time::Duration;

use anyhow::{bail, Result};

use flotilla_pki::new_key_and_csr;
use flotilla_transport::Target;
use flotilla_types::NodeRole;

use crate::certs::NodeTls;
use crate::recovery::reexec;
use crate::session::LeaderFinder;
use crate::{identity, wire, Member};

/// Gets a certificate for this node's current role from a manager, stores
/// it, and restarts the daemon in place to use it.
pub(crate) async fn renew_and_restart(
    member: &Member,
    data_dir: &Path,
    managers: &[String],
    own: &str,
) -> Result<()> {
    let key = new_key_and_csr()?;
    let request = wire::RenewRequest {
        csr_pem: key.csr_pem,
    };
    let mut last = None;
    // Never ourselves: a manager that was just demoted is cut off from the
    // raft group, and its own view of its role is stale.
    let mut targets: Vec<String> = member.leader_addr().into_iter().collect();
    targets.extend(managers.iter().cloned());
    targets.retain(|t| t != own);
    targets.dedup();
    let mut answer = None;
    for target in targets {
        match member
            .client
            .post::<_, wire::RenewResponse>(
                Target::Manager,
                &target,
                "/cluster/v1/renew",
                &request,
                Duration::from_secs(10),
            )
            .await
        {
            Ok(a) => {
                answer = Some((a, Some(target)));
                break;
            }
            Err(e) => last = Some(e.to_string()),
        }
    }
    // The leader (the only manager, say) signs its own: its store's view
    // of its role is the cluster's. A follower never does: it may have
    // been demoted without knowing yet.
    if answer.is_none() && member.raft.as_ref().is_some_and(|r| r.is_leader()) {
        match crate::cluster::sign_renewal(member, &member.identity.node_id, &request.csr_pem) {
            Ok(a) => answer = Some((a, None)),
            Err(e) => last = Some(e.to_string()),
        }
    }
    if let Some((answer, target)) = answer {
        let tls = NodeTls {
            ca_pem: member.tls.ca_pem.clone(),
            cert_pem: answer.cert_pem,
            key_pem: key.key_pem,
        };
        let mut identity = member.identity.clone();
        identity.raft_id = answer.raft_id;
        if let Some(target) = target {
            if answer.role == NodeRole::Manager && !identity.managers.contains(&target) {
                identity.managers.push(target);
            }
        }
        if answer.role == NodeRole::Worker && member.raft.is_some() {
            if let Some(raft) = &member.raft {
                raft.shutdown().await;
            }
            // A worker keeps no copy of the replicated store: it
            // holds the CA key and the join secrets, and the
            // managers hold the data.
            std::fs::remove_file(data_dir.join("raft.redb"))?;
        } else if let Some(raft) = &member.raft {
            raft.shutdown().await;
        }
        // A manager of an autolocked cluster keeps its key sealed,
        // and hands the unlock key to its next run; a worker's key
        // is never sealed (workers are not locked, as in Swarm).
        let unlock = (answer.role == NodeRole::Manager)
            .then(|| member.autolock_key())
            .flatten();
        tls.store_with(data_dir, unlock.as_ref())?;
        identity::store(data_dir, &identity)?;
        tracing::warn!(role = %answer.role, "new node certificate stored: restarting in place");
        reexec(unlock.as_ref());
        return Ok(());
    }
    match last {
        Some(e) => bail!("{e}"),
        None => bail!("no manager is known to renew the certificate"),
    }
}

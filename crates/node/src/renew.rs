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
            Ok(answer) => {
                let tls = NodeTls {
                    ca_pem: member.tls.ca_pem.clone(),
                    cert_pem: answer.cert_pem,
                    key_pem: key.key_pem,
                };
                let mut identity = member.identity.clone();
                identity.raft_id = answer.raft_id;
                if answer.role == NodeRole::Manager && !identity.managers.contains(&target) {
                    identity.managers.push(target.clone());
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
            Err(e) => last = Some(e),
        }
    }
    match last {
        Some(e) => Err(e.into()),
        None => bail!("no manager is known to renew the certificate"),
    }
}

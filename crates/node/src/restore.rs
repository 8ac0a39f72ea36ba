//! `flotilla restore`: a fresh node becomes the only manager of the
//! cluster a backup holds ([`flotilla_backup`]), under a new cluster epoch.
//!
//! The steps, all on disk before the daemon restarts into them (as
//! force-new-cluster does, [`crate::recovery`]): a node certificate for
//! this node from the backup's CA (its key opened with the unlock key when
//! the backup was made under autolock); this node added to the state as a
//! manager; the state turned into a new group's with this node its only
//! manager ([`crate::recovery::new_group`]: the other managers removed,
//! their tasks orphaned so that they run elsewhere, the epoch a generation
//! up, so that the old managers cannot rejoin by accident); a raft store
//! seeded with it; node.json. Nothing is written before every check
//! passed, and the raft store is written last but one, so that a failed
//! restore leaves the node as fresh as it was (a second try starts over).

use flotilla_pki::{Ca, CaMaterial};

use crate::identity::{self, Identity};
use crate::keyring;
use crate::lifecycle::{allowed, failed, manager_tls, InitError, NodeCtx, Phase, Step};
use crate::now_ms;
use crate::recovery::{new_group, reexec};
use flotilla_backup::Backup;

/// What a restore made.
#[derive(Debug, Clone)]
pub struct Restored {
    pub identity: Identity,
    pub index: u64,
    pub services: u64,
    pub secrets: u64,
}

impl NodeCtx {
    /// Restores `backup` (already read and checked) on this fresh node;
    /// `unlock_key` opens a backup made under autolock. The daemon
    /// restarts into the restored cluster right after the answer.
    pub async fn restore(
        &self,
        backup: Backup,
        unlock_key: Option<&str>,
        advertise: Option<&str>,
    ) -> Result<Restored, InitError> {
        let mut phase = self.phase.lock().await;
        allowed(phase.stage(), Step::Restore)?;
        self.set_advertise(advertise);
        let mut state = backup.state;
        let cluster = state
            .cluster
            .clone()
            .ok_or_else(|| InitError::BadToken("the backup holds no cluster".into()))?;
        let (unlock, keys) = match (&cluster.autolock, unlock_key) {
            (None, _) => (None, keyring::plaintext_keys(&cluster)),
            (Some(_), None) => return Err(InitError::BadToken(
                "this backup was made under autolock: give its unlock key with --unlock-key-file"
                    .into(),
            )),
            (Some(sealed), Some(text)) => {
                let key = keyring::parse_unlock_key(text)
                    .map_err(|e| InitError::BadToken(e.to_string()))?;
                let keys = keyring::open_keys(&key, &cluster.id, sealed).map_err(|_| {
                    InitError::BadToken("the unlock key does not open this backup's keys".into())
                })?;
                (Some(key), keys)
            }
        };
        let ca = Ca::load(&CaMaterial {
            cert_pem: cluster.ca_cert_pem.clone(),
            key_pem: keys.ca_key_pem.clone(),
        })
        .map_err(|e| InitError::BadToken(format!("the backup's CA cannot be loaded: {e}")))?;
        let node_id = flotilla_types::new_id(rand::random());
        let tls = manager_tls(&ca, &cluster.ca_cert_pem, &node_id)?;
        let now = now_ms();
        let addr = self.cluster_addr();
        state
            .nodes
            .insert(node_id.clone(), self.own_manager_record(&node_id, 0, now));
        let group = new_group(
            &mut state,
            &node_id,
            now,
            flotilla_types::new_id(rand::random()),
        )
        .map_err(failed)?;
        let store = self.data_dir.join("raft.redb");
        if store.exists() {
            return Err(InitError::Refused(format!(
                "{} already exists: restore needs a fresh data dir",
                store.display()
            )));
        }
        let identity = Identity {
            cluster_id: cluster.id.clone(),
            node_id,
            raft_id: group.raft_id,
            managers: vec![addr.clone()],
            raft_member: group.raft_id,
            epoch: group.epoch.clone(),
        };
        tls.store_with(&self.data_dir, unlock.as_ref())
            .map_err(failed)?;
        flotilla_raft::storage::seed(&store, &state, group.raft_id, &addr).map_err(failed)?;
        identity::store(&self.data_dir, &identity).map_err(failed)?;
        tracing::warn!(
            cluster = %cluster.id,
            index = backup.header.index,
            epoch = %group.epoch,
            removed_managers = group.removed.len(),
            "restored from a backup: restarting as the cluster's only manager"
        );
        *phase = Phase::Restarting;
        self.restarting
            .store(true, std::sync::atomic::Ordering::SeqCst);
        tokio::spawn(async move {
            // Let the answer reach the client first.
            tokio::time::sleep(crate::reexec_delay()).await;
            reexec(unlock.as_ref());
        });
        Ok(Restored {
            identity,
            index: backup.header.index,
            services: state.services.len() as u64,
            secrets: state.secrets.len() as u64,
        })
    }
}

//! Autolock on a running manager: [`keep`] follows the store and keeps
//! this manager's side true, and [`unlock_key`] is the cluster endpoint
//! through which a manager gives the unlock key to another.
//!
//! What [`keep`] does, each time the store changes:
//! - autolock on and no key held that opens the cluster's keys (a new or
//!   promoted manager, or one that was down during a rotation): ask the
//!   other managers for it, over mutual TLS;
//! - autolock on: this manager's TLS key on disk sealed under the current
//!   unlock key; and, if this run saw it off (it was turned on, or this
//!   manager starts from a store of before), the raft log compacted into a
//!   snapshot and the store marked to be rewritten at the next start, so
//!   that entries from while it was off (keys in plaintext) leave the
//!   disk. A cluster made with `init --autolock`, or a manager that starts
//!   already locked, never had them: nothing to compact;
//! - autolock off: the TLS key on disk in plaintext, no key held.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use axum::extract::State;
use axum::{Extension, Json};
use serde::{Deserialize, Serialize};
use tokio_util::sync::CancellationToken;

use flotilla_transport::{Peer, Target};
use flotilla_types::{NodeRole, SealedData, SecretData};

use crate::cluster::{manager_peer, ClusterError};
use crate::keyring;
use crate::Member;

/// Marker file: the next start rewrites the raft store into a fresh file
/// (see [`flotilla_raft::storage::rewrite`]) before raft opens it.
pub(crate) const REWRITE_MARKER: &str = "rewrite-store";

/// At a start, before raft opens its store: rewrites it if autolock
/// marked it, so that what the log held before autolock was turned on
/// (keys in plaintext) leaves the disk with the old file. Also on a
/// manager that then waits locked: that needs no key.
pub(crate) fn rewrite_if_marked(data_dir: &std::path::Path) -> anyhow::Result<()> {
    let marker = data_dir.join(REWRITE_MARKER);
    let store = data_dir.join("raft.redb");
    if !marker.exists() {
        return Ok(());
    }
    if store.exists() {
        flotilla_raft::storage::rewrite(&store)?;
        tracing::info!("raft store rewritten without the entries purged before autolock");
    }
    std::fs::remove_file(&marker)?;
    Ok(())
}

/// The cluster endpoint's path.
pub(crate) const UNLOCK_KEY_PATH: &str = "/cluster/v1/unlock-key";

/// What a manager answers another.
#[derive(Clone, Serialize, Deserialize)]
pub(crate) struct UnlockKeyResponse {
    pub(crate) unlock_key: SecretData,
}

/// What this manager should do now, from what the store says and what it
/// holds: the pure part of [`keep`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Step {
    /// Nothing to do.
    Idle,
    /// Ask the other managers for the unlock key.
    Fetch,
    /// Write the TLS key sealed under this key (None: in plaintext).
    WriteKey(Option<SecretData>),
    /// Compact the raft log.
    Compact,
}

/// What [`keep`] remembers between rounds.
#[derive(Debug, Default)]
pub(crate) struct Kept {
    /// How the TLS key on disk is written now, once known.
    pub(crate) key_file: Option<Option<SecretData>>,
    /// Autolock was seen off in this run and the log not compacted since:
    /// it may hold keys in plaintext.
    pub(crate) compact_due: bool,
}

/// The next step for a cluster whose autolock is `sealed`, with `held`
/// the unlock key this manager holds for it.
pub(crate) fn next_step(
    sealed: Option<&SealedData>,
    held: Option<&SecretData>,
    kept: &Kept,
) -> Step {
    match (sealed, held) {
        (None, _) if kept.key_file != Some(None) => Step::WriteKey(None),
        (None, _) => Step::Idle,
        (Some(_), None) => Step::Fetch,
        (Some(_), Some(key)) if kept.key_file.as_ref() != Some(&Some(key.clone())) => {
            Step::WriteKey(Some(key.clone()))
        }
        (Some(_), Some(_)) if kept.compact_due => Step::Compact,
        (Some(_), Some(_)) => Step::Idle,
    }
}

/// How the key file is written now: plaintext (`Some(None)`), sealed
/// under `held` (`Some(Some(held))`), or otherwise (None: rewrite it).
fn key_file_state(
    member: &Member,
    data_dir: &std::path::Path,
    held: Option<&SecretData>,
) -> Option<Option<SecretData>> {
    let text = std::fs::read_to_string(crate::certs::key_path(data_dir)).ok()?;
    if !keyring::is_sealed_node_key(&text) {
        return Some(None);
    }
    let key = held?;
    keyring::open_node_key(key, &member.identity.node_id, &text)
        .ok()
        .map(|_| Some(key.clone()))
}

/// Keeps this manager's side of autolock true (see the module's doc)
/// until `token` is cancelled.
pub(crate) async fn keep(member: Arc<Member>, data_dir: PathBuf, token: CancellationToken) {
    let Some(raft) = member.raft.clone() else {
        return;
    };
    let mut applied = raft.applied();
    let mut kept = Kept::default();
    let mut told = false;
    loop {
        let (sealed, cluster_id) = {
            let state = raft.state();
            let state = state.read().unwrap_or_else(|p| p.into_inner());
            match state.cluster.as_ref() {
                Some(c) => (c.autolock.clone(), c.id.clone()),
                None => (None, String::new()),
            }
        };
        let wait = if cluster_id.is_empty() {
            Duration::from_secs(1)
        } else {
            let held = sealed
                .as_ref()
                .and_then(|s| member.keyring.key_for(&cluster_id, s));
            if kept.key_file.is_none() {
                kept.key_file = key_file_state(&member, &data_dir, held.as_ref());
            }
            if sealed.is_none() {
                kept.compact_due = true;
            }
            match next_step(sealed.as_ref(), held.as_ref(), &kept) {
                Step::Idle => Duration::from_secs(5),
                Step::Fetch => {
                    if fetch(&member, &raft, &cluster_id, sealed.as_ref()).await {
                        told = false;
                        Duration::ZERO
                    } else {
                        if !told {
                            tracing::warn!("autolock is on and no other manager gave this one the unlock key yet; retrying");
                            told = true;
                        }
                        Duration::from_secs(2)
                    }
                }
                Step::WriteKey(key) => {
                    if key.is_none() {
                        member.keyring.clear();
                    }
                    match member.tls.store_key(&data_dir, key.as_ref()) {
                        Ok(()) => {
                            tracing::info!(sealed = key.is_some(), "node key written");
                            kept.key_file = Some(key);
                            Duration::ZERO
                        }
                        Err(e) => {
                            tracing::warn!(error = %e, "cannot write the node key; retrying in 5 s");
                            Duration::from_secs(5)
                        }
                    }
                }
                Step::Compact => match raft.compact(Duration::from_secs(30)).await {
                    Ok(()) => {
                        // The purged entries stay in the file's free pages
                        // until the next start rewrites it.
                        let marked = std::fs::write(data_dir.join(REWRITE_MARKER), b"autolock\n");
                        if let Err(e) = marked {
                            tracing::warn!(error = %e, "cannot mark the raft store for rewriting");
                        }
                        tracing::info!("autolock: raft log compacted, earlier entries dropped; the store file is rewritten at the next start");
                        kept.compact_due = false;
                        Duration::ZERO
                    }
                    Err(e) => {
                        tracing::warn!(error = %e, "cannot compact the raft log yet; retrying in 5 s");
                        Duration::from_secs(5)
                    }
                },
            }
        };
        if wait.is_zero() {
            continue;
        }
        tokio::select! {
            _ = token.cancelled() => return,
            _ = applied.changed() => {}
            _ = tokio::time::sleep(wait) => {}
        }
    }
}

/// Asks each of `peers` in turn for the unlock key; true once one that
/// opens `sealed` is held.
async fn fetch(
    member: &Member,
    raft: &flotilla_raft::RaftNode,
    cluster_id: &str,
    sealed: Option<&SealedData>,
) -> bool {
    let Some(sealed) = sealed else {
        return true;
    };
    // The other managers (this one holds no key to give itself).
    let peers: Vec<String> = {
        let state = raft.state();
        let state = state.read().unwrap_or_else(|p| p.into_inner());
        let own = state.nodes.get(&member.identity.node_id).map(|n| &n.addr);
        crate::dispatcher::manager_addrs(&state)
            .into_iter()
            .filter(|a| Some(a) != own)
            .collect()
    };
    for peer in &peers {
        let answer = member
            .client
            .post::<_, UnlockKeyResponse>(
                Target::Manager,
                peer,
                UNLOCK_KEY_PATH,
                &(),
                Duration::from_secs(5),
            )
            .await;
        match answer {
            Ok(a) if keyring::open_keys(&a.unlock_key, cluster_id, sealed).is_ok() => {
                member.keyring.add(a.unlock_key);
                tracing::info!(%peer, "autolock: unlock key received");
                return true;
            }
            Ok(_) => {
                tracing::debug!(%peer, "a manager gave an unlock key that does not open the cluster's keys")
            }
            Err(e) => tracing::debug!(%peer, error = %e, "no unlock key from this manager"),
        }
    }
    false
}

/// `POST /cluster/v1/unlock-key`: the unlock key, to a manager of this
/// cluster (its certificate says manager, and so does the store) while
/// this one holds it. Workers never get it.
pub(crate) async fn unlock_key(
    State(m): State<Arc<Member>>,
    Extension(peer): Extension<Peer>,
) -> Result<Json<UnlockKeyResponse>, ClusterError> {
    let who = manager_peer(&peer)?;
    let raft = m
        .raft
        .clone()
        .ok_or_else(|| ClusterError::Forbidden("this node is a worker".into()))?;
    let (is_manager, sealed) = {
        let state = raft.state();
        let state = state
            .read()
            .map_err(|_| ClusterError::Internal("state lock poisoned".into()))?;
        let is_manager = state
            .nodes
            .get(&who.node_id)
            .is_some_and(|n| n.role == NodeRole::Manager);
        let sealed = state
            .cluster
            .as_ref()
            .and_then(|c| c.autolock.clone().map(|s| (c.id.clone(), s)));
        (is_manager, sealed)
    };
    if !is_manager {
        return Err(ClusterError::Forbidden(format!(
            "node {} is not a manager of this cluster",
            who.node_id
        )));
    }
    let (cluster_id, sealed) =
        sealed.ok_or_else(|| ClusterError::BadRequest("autolock is off".into()))?;
    let key = m
        .keyring
        .key_for(&cluster_id, &sealed)
        .ok_or_else(|| ClusterError::Unavailable("this manager is locked too".into()))?;
    Ok(Json(UnlockKeyResponse { unlock_key: key }))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sealed() -> SealedData {
        SealedData {
            nonce: SecretData(vec![1; 12]),
            ciphertext: SecretData(vec![2; 40]),
        }
    }

    #[test]
    fn on_a_manager_without_the_key_it_asks_for_it() {
        let kept = Kept::default();
        assert_eq!(next_step(Some(&sealed()), None, &kept), Step::Fetch);
    }

    #[test]
    fn with_the_key_the_node_key_is_sealed_then_the_log_compacted() {
        let key = SecretData(vec![3; 32]);
        let mut kept = Kept {
            key_file: Some(None),
            compact_due: true,
        };
        assert_eq!(
            next_step(Some(&sealed()), Some(&key), &kept),
            Step::WriteKey(Some(key.clone()))
        );
        kept.key_file = Some(Some(key.clone()));
        assert_eq!(next_step(Some(&sealed()), Some(&key), &kept), Step::Compact);
        kept.compact_due = false;
        assert_eq!(next_step(Some(&sealed()), Some(&key), &kept), Step::Idle);
        // A rotation: sealed anew under the new key, no second compaction.
        let new = SecretData(vec![4; 32]);
        assert_eq!(
            next_step(Some(&sealed()), Some(&new), &kept),
            Step::WriteKey(Some(new))
        );
    }

    #[test]
    fn a_manager_that_never_saw_autolock_off_has_nothing_to_compact() {
        let key = SecretData(vec![3; 32]);
        let kept = Kept {
            key_file: Some(Some(key.clone())),
            compact_due: false,
        };
        assert_eq!(next_step(Some(&sealed()), Some(&key), &kept), Step::Idle);
    }

    #[test]
    fn off_writes_the_node_key_in_plaintext_once() {
        let key = SecretData(vec![3; 32]);
        let mut kept = Kept {
            key_file: Some(Some(key)),
            compact_due: false,
        };
        assert_eq!(next_step(None, None, &kept), Step::WriteKey(None));
        kept.key_file = Some(None);
        assert_eq!(next_step(None, None, &kept), Step::Idle);
        // Unknown (the file could not be read): written.
        kept.key_file = None;
        assert_eq!(next_step(None, None, &kept), Step::WriteKey(None));
    }
}

//! The node's identity on disk (`node.json`): who it is and which cluster
//! it belongs to. Written once at `init` (or `join`), before raft starts.

use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

/// Why the identity file could not be used.
#[derive(Debug, thiserror::Error)]
pub enum IdentityError {
    #[error("cannot read {path}: {source}")]
    Read {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("{path} is damaged ({reason}); refusing to start rather than forget the cluster")]
    Corrupt { path: PathBuf, reason: String },
    #[error("cannot start: {path} is missing, but node.json says this manager already ran raft as member {raft_id} and may have voted; it must not start again under that ID with an empty log. Remove it from the cluster on another manager ('flotilla node rm --force {node_id}'), move this data dir aside and join again as a new manager")]
    LostRaftStore {
        path: PathBuf,
        raft_id: u64,
        node_id: String,
    },
    #[error("cannot write {path}: {source}")]
    Write {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
}

/// Who this node is.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Identity {
    pub cluster_id: String,
    pub node_id: String,
    /// Raft member ID; 0 for a worker.
    pub raft_id: u64,
    /// Cluster addresses of the managers, as last learned; a worker starts
    /// its session with one of them after a restart.
    #[serde(default)]
    pub managers: Vec<String>,
    /// The raft ID under which this node has started raft (0: never). Set
    /// before raft first starts, so that a manager whose raft store is
    /// lost is not started again under an ID it may have voted with
    /// ([`check_raft_store`]). Absent in node.json of older versions.
    #[serde(default)]
    pub raft_member: u64,
    /// The cluster epoch (raft group) this node follows: from `init`,
    /// `join` or force-new-cluster, and from the dispatcher's answers.
    /// Absent in node.json of older versions.
    #[serde(default)]
    pub epoch: flotilla_types::Epoch,
}

/// Whether a manager may start raft under `identity.raft_id` on the data
/// dir, given whether its raft store exists. A store that exists is
/// resumed; a missing one is fine only if raft never ran under this ID
/// (a new manager, or a promoted one, starts empty). A manager that ran
/// raft and lost its store would start with an empty log and no vote, and
/// could vote twice in one term: refused.
pub fn check_raft_store(
    data_dir: &Path,
    identity: &Identity,
    store_exists: bool,
) -> Result<(), IdentityError> {
    if !store_exists && identity.raft_id != 0 && identity.raft_member == identity.raft_id {
        return Err(IdentityError::LostRaftStore {
            path: data_dir.join("raft.redb"),
            raft_id: identity.raft_id,
            node_id: identity.node_id.clone(),
        });
    }
    Ok(())
}

fn path(data_dir: &Path) -> PathBuf {
    data_dir.join("node.json")
}

/// Reads the identity; `None` when the node was never initialized.
pub fn load(data_dir: &Path) -> Result<Option<Identity>, IdentityError> {
    let p = path(data_dir);
    match std::fs::read(&p) {
        Ok(bytes) => serde_json::from_slice(&bytes)
            .map(Some)
            .map_err(|e| IdentityError::Corrupt {
                path: p,
                reason: e.to_string(),
            }),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
        Err(source) => Err(IdentityError::Read { path: p, source }),
    }
}

/// Writes the identity atomically and durably.
pub fn store(data_dir: &Path, identity: &Identity) -> Result<(), IdentityError> {
    let p = path(data_dir);
    let tmp = data_dir.join("node.json.tmp");
    let write = || -> std::io::Result<()> {
        use std::io::Write;
        let bytes = serde_json::to_vec_pretty(identity).map_err(std::io::Error::other)?;
        let mut f = std::fs::File::create(&tmp)?;
        f.write_all(&bytes)?;
        f.sync_all()?;
        std::fs::rename(&tmp, &p)?;
        std::fs::File::open(data_dir)?.sync_all()
    };
    write().map_err(|source| IdentityError::Write { path: p, source })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trips_and_detects_damage() {
        let dir = tempfile::tempdir().expect("tempdir");
        assert_eq!(load(dir.path()).expect("load"), None);
        let id = Identity {
            cluster_id: "c".into(),
            node_id: "n".into(),
            raft_id: 1,
            managers: vec![],
            raft_member: 1,
            epoch: Default::default(),
        };
        store(dir.path(), &id).expect("store");
        assert_eq!(load(dir.path()).expect("load"), Some(id));
        std::fs::write(dir.path().join("node.json"), b"{not json").expect("write");
        let err = load(dir.path())
            .err()
            .map(|e| e.to_string())
            .unwrap_or_default();
        assert!(err.contains("damaged"), "{err}");
    }

    #[test]
    fn an_older_node_json_loads_without_the_new_fields() {
        let dir = tempfile::tempdir().expect("tempdir");
        std::fs::write(
            dir.path().join("node.json"),
            br#"{"cluster_id":"c","node_id":"n","raft_id":3}"#,
        )
        .expect("write");
        let id = load(dir.path()).expect("load").expect("some");
        assert_eq!(id.raft_member, 0);
    }

    #[test]
    fn a_manager_that_ran_raft_and_lost_its_store_is_refused() {
        let dir = Path::new("/data");
        let mut id = Identity {
            cluster_id: "c".into(),
            node_id: "n1".into(),
            raft_id: 3,
            managers: vec![],
            raft_member: 3,
            epoch: Default::default(),
        };
        assert!(
            check_raft_store(dir, &id, true).is_ok(),
            "a store is resumed"
        );
        let err = check_raft_store(dir, &id, false)
            .err()
            .map(|e| e.to_string())
            .unwrap_or_default();
        assert!(err.contains("/data/raft.redb is missing"), "{err}");
        assert!(err.contains("member 3"), "{err}");
        assert!(err.contains("node rm --force n1"), "{err}");
        assert!(!err.contains('\n'), "one line: {err}");
        // Never ran raft under this ID (joined or promoted, then stopped
        // before raft started): it starts empty.
        id.raft_member = 2;
        assert!(check_raft_store(dir, &id, false).is_ok());
        id.raft_member = 0;
        assert!(check_raft_store(dir, &id, false).is_ok());
        // A worker has no raft.
        id.raft_id = 0;
        assert!(check_raft_store(dir, &id, false).is_ok());
    }
}

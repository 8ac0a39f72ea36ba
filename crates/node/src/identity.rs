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
}

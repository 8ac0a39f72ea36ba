//! Autolock: the cluster's keys (the CA key and the data key) sealed under
//! an unlock key that only the managers' memory holds, as Swarm's
//! `--autolock`.
//!
//! With autolock on, the store keeps [`Cluster::autolock`] (the keys
//! sealed, AES-256-GCM bound to the cluster ID) and no plaintext key, and
//! each manager's own TLS key on disk is sealed under the same unlock key
//! ([`seal_node_key`]). A manager that restarts cannot read its TLS key,
//! so it neither joins the raft group nor reaches its peers until an
//! operator gives it the key (`flotilla unlock`). A running manager keeps
//! the unlock key in its [`Keyring`]; the others learn a new one (after a
//! rotation, or as a new manager) from a peer over mutual TLS.
//!
//! Everything here is pure but for the random draws: no sockets, no
//! store lock held.

use std::sync::RwLock;

use serde::{Deserialize, Serialize};

use flotilla_pki::seal;
use flotilla_store::State;
use flotilla_types::{Cluster, SealedData, SecretData};

/// Why a key could not be used.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum KeyError {
    /// Autolock is on and this manager holds no unlock key that opens the
    /// cluster's keys.
    #[error("this manager is locked: it holds no unlock key for the cluster's keys; run 'flotilla unlock' with the key 'flotilla unlock-key' showed")]
    Locked,
    #[error("invalid unlock key: it does not open this manager's keys")]
    WrongKey,
    #[error("not an unlock key: expected {UNLOCK_PREFIX}... as 'flotilla unlock-key' prints it")]
    Malformed,
    #[error("the cluster is not initialized")]
    NoCluster,
    #[error("{0}")]
    Seal(#[from] seal::SealError),
}

/// The keys autolock seals: what would let someone with a copy of a
/// manager's disk sign certificates, read secrets, or join the cluster.
#[derive(Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ClusterKeys {
    pub ca_key_pem: String,
    /// Empty while no secret was ever stored.
    #[serde(default)]
    pub data_key: SecretData,
    pub worker_secret: String,
    pub manager_secret: String,
}

impl ClusterKeys {
    /// `cluster` with these keys in its plaintext fields (in memory only).
    pub fn fill(&self, cluster: &Cluster) -> Cluster {
        Cluster {
            ca_key_pem: self.ca_key_pem.clone(),
            data_key: self.data_key.clone(),
            worker_secret: self.worker_secret.clone(),
            manager_secret: self.manager_secret.clone(),
            ..cluster.clone()
        }
    }
}

impl std::fmt::Debug for ClusterKeys {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("ClusterKeys(..)")
    }
}

/// How an unlock key starts when shown to people (Swarm's is `SWMKEY-1-`).
pub const UNLOCK_PREFIX: &str = "FLTKEY-1-";

/// A new random unlock key.
pub fn new_unlock_key() -> Result<SecretData, KeyError> {
    Ok(SecretData(seal::new_data_key()?))
}

/// The unlock key as people copy it: the prefix and 64 hex digits.
pub fn format_unlock_key(key: &SecretData) -> String {
    let hex: String = key.0.iter().map(|b| format!("{b:02x}")).collect();
    format!("{UNLOCK_PREFIX}{hex}")
}

/// Reads an unlock key as [`format_unlock_key`] writes it (surrounding
/// blanks ignored).
pub fn parse_unlock_key(text: &str) -> Result<SecretData, KeyError> {
    let hex = text
        .trim()
        .strip_prefix(UNLOCK_PREFIX)
        .ok_or(KeyError::Malformed)?;
    if hex.len() != 2 * seal::DATA_KEY_LEN || !hex.is_ascii() {
        return Err(KeyError::Malformed);
    }
    let bytes = (0..hex.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(&hex[i..i + 2], 16))
        .collect::<Result<Vec<u8>, _>>()
        .map_err(|_| KeyError::Malformed)?;
    Ok(SecretData(bytes))
}

fn keys_aad(cluster_id: &str) -> Vec<u8> {
    format!("flotilla-autolock:{cluster_id}").into_bytes()
}

/// Seals the cluster's keys under `unlock`.
pub fn seal_keys(
    unlock: &SecretData,
    cluster_id: &str,
    keys: &ClusterKeys,
) -> Result<SealedData, KeyError> {
    let plain = serde_json::to_vec(keys).map_err(|_| KeyError::Malformed)?;
    let (nonce, ciphertext) = seal::seal(&unlock.0, &keys_aad(cluster_id), &plain)?;
    Ok(SealedData {
        nonce: SecretData(nonce),
        ciphertext: SecretData(ciphertext),
    })
}

/// Opens what [`seal_keys`] sealed.
pub fn open_keys(
    unlock: &SecretData,
    cluster_id: &str,
    sealed: &SealedData,
) -> Result<ClusterKeys, KeyError> {
    let plain = seal::open(
        &unlock.0,
        &keys_aad(cluster_id),
        &sealed.nonce.0,
        &sealed.ciphertext.0,
    )
    .map_err(|_| KeyError::WrongKey)?;
    serde_json::from_slice(&plain).map_err(|_| KeyError::WrongKey)
}

/// The plaintext keys of a cluster without autolock.
pub fn plaintext_keys(cluster: &Cluster) -> ClusterKeys {
    ClusterKeys {
        ca_key_pem: cluster.ca_key_pem.clone(),
        data_key: cluster.data_key.clone(),
        worker_secret: cluster.worker_secret.clone(),
        manager_secret: cluster.manager_secret.clone(),
    }
}

/// The unlock keys this manager holds, newest first, and what one of them
/// opened last (so that a read does not open them each time).
#[derive(Default)]
pub struct Keyring {
    held: RwLock<Held>,
}

#[derive(Default)]
struct Held {
    /// Newest first; the previous one stays for a manager that was down
    /// during a rotation.
    unlock: Vec<SecretData>,
    opened: Option<Opened>,
}

/// The sealed keys last opened, with the unlock key that opened them.
struct Opened {
    sealed: SealedData,
    key: SecretData,
    keys: ClusterKeys,
}

/// How many unlock keys a keyring keeps.
const KEPT: usize = 2;

impl Keyring {
    fn held(&self) -> std::sync::RwLockReadGuard<'_, Held> {
        self.held.read().unwrap_or_else(|p| p.into_inner())
    }

    fn held_mut(&self) -> std::sync::RwLockWriteGuard<'_, Held> {
        self.held.write().unwrap_or_else(|p| p.into_inner())
    }

    /// Holds `key` as the newest unlock key.
    pub fn add(&self, key: SecretData) {
        let mut held = self.held_mut();
        held.unlock.retain(|k| k != &key);
        held.unlock.insert(0, key);
        held.unlock.truncate(KEPT);
    }

    /// Forgets every unlock key (autolock turned off).
    pub fn clear(&self) {
        let mut held = self.held_mut();
        held.unlock.clear();
        held.opened = None;
    }

    /// The newest unlock key held.
    pub fn newest(&self) -> Option<SecretData> {
        self.held().unlock.first().cloned()
    }

    /// The unlock key that opens `sealed` of `cluster_id` and what it
    /// opens (the last answer again while `sealed` is the same), the key
    /// made the newest.
    fn open(&self, cluster_id: &str, sealed: &SealedData) -> Option<(SecretData, ClusterKeys)> {
        let cached = self
            .held()
            .opened
            .as_ref()
            .filter(|o| &o.sealed == sealed)
            .map(|o| (o.key.clone(), o.keys.clone()));
        let (key, keys) = match cached {
            Some(hit) => hit,
            None => {
                let candidates = self.held().unlock.clone();
                let (key, keys) = candidates
                    .into_iter()
                    .find_map(|k| open_keys(&k, cluster_id, sealed).ok().map(|keys| (k, keys)))?;
                self.held_mut().opened = Some(Opened {
                    sealed: sealed.clone(),
                    key: key.clone(),
                    keys: keys.clone(),
                });
                (key, keys)
            }
        };
        if self.newest().as_ref() != Some(&key) {
            self.add(key.clone());
        }
        Some((key, keys))
    }

    /// The unlock key that opens `sealed` of `cluster_id`, made the newest.
    pub fn key_for(&self, cluster_id: &str, sealed: &SealedData) -> Option<SecretData> {
        self.open(cluster_id, sealed).map(|(key, _)| key)
    }

    /// The cluster's keys: from the store when autolock is off, else
    /// opened with an unlock key held here.
    pub fn keys(&self, cluster: &Cluster) -> Result<ClusterKeys, KeyError> {
        match &cluster.autolock {
            None => Ok(plaintext_keys(cluster)),
            Some(sealed) => self
                .open(&cluster.id, sealed)
                .map(|(_, keys)| keys)
                .ok_or(KeyError::Locked),
        }
    }

    /// `cluster` with its keys opened (the store's record itself when
    /// autolock is off).
    pub fn open_cluster(&self, cluster: &Cluster) -> Result<Cluster, KeyError> {
        if cluster.autolock.is_none() {
            return Ok(cluster.clone());
        }
        Ok(self.keys(cluster)?.fill(cluster))
    }

    /// [`Keyring::keys`] of the store's cluster.
    pub fn keys_of(&self, state: &State) -> Result<ClusterKeys, KeyError> {
        let cluster = state.cluster.as_ref().ok_or(KeyError::NoCluster)?;
        self.keys(cluster)
    }

    /// The data key, if the cluster has one and this manager can read it.
    pub fn data_key(&self, state: &State) -> Option<SecretData> {
        self.keys_of(state)
            .ok()
            .map(|k| k.data_key)
            .filter(|k| !k.is_empty())
    }
}

/// What the first line of a sealed node key says.
const SEALED_KEY_HEADER: &str = "FLOTILLA SEALED NODE KEY v1";

fn node_key_aad(node_id: &str) -> Vec<u8> {
    format!("flotilla-node-key:{node_id}").into_bytes()
}

/// A node's TLS key sealed under the unlock key, as `certs/node.key`
/// holds it under autolock: a header line, then the sealed data as JSON.
pub fn seal_node_key(
    unlock: &SecretData,
    node_id: &str,
    key_pem: &str,
) -> Result<String, KeyError> {
    let (nonce, ciphertext) = seal::seal(&unlock.0, &node_key_aad(node_id), key_pem.as_bytes())?;
    let sealed = SealedData {
        nonce: SecretData(nonce),
        ciphertext: SecretData(ciphertext),
    };
    let body = serde_json::to_string(&sealed).map_err(|_| KeyError::Malformed)?;
    Ok(format!("{SEALED_KEY_HEADER}\n{body}\n"))
}

/// Whether a key file's text is a sealed key.
pub fn is_sealed_node_key(text: &str) -> bool {
    text.starts_with(SEALED_KEY_HEADER)
}

/// Opens what [`seal_node_key`] wrote.
pub fn open_node_key(unlock: &SecretData, node_id: &str, text: &str) -> Result<String, KeyError> {
    let body = text
        .strip_prefix(SEALED_KEY_HEADER)
        .ok_or(KeyError::Malformed)?;
    let sealed: SealedData = serde_json::from_str(body.trim()).map_err(|_| KeyError::Malformed)?;
    let plain = seal::open(
        &unlock.0,
        &node_key_aad(node_id),
        &sealed.nonce.0,
        &sealed.ciphertext.0,
    )
    .map_err(|_| KeyError::WrongKey)?;
    String::from_utf8(plain).map_err(|_| KeyError::WrongKey)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cluster() -> Cluster {
        Cluster {
            ca_key_pem: "-----BEGIN PRIVATE KEY-----".into(),
            data_key: SecretData(vec![5; 32]),
            worker_secret: "W".into(),
            manager_secret: "M".into(),
            ..Cluster::bare("c1", 1)
        }
    }

    fn locked(unlock: &SecretData) -> Cluster {
        let c = cluster();
        let sealed = seal_keys(unlock, &c.id, &plaintext_keys(&c)).expect("seal");
        Cluster {
            ca_key_pem: String::new(),
            data_key: SecretData::default(),
            worker_secret: String::new(),
            manager_secret: String::new(),
            autolock: Some(sealed),
            ..c
        }
    }

    #[test]
    fn an_unlock_key_reads_back_and_bad_text_is_refused() {
        let key = new_unlock_key().expect("key");
        let text = format_unlock_key(&key);
        assert!(text.starts_with("FLTKEY-1-") && text.len() == 9 + 64);
        assert_eq!(parse_unlock_key(&format!(" {text}\n")), Ok(key));
        for bad in ["", "FLTKEY-1-zz", "SWMKEY-1-00", &text[..text.len() - 1]] {
            assert_eq!(parse_unlock_key(bad), Err(KeyError::Malformed), "{bad}");
        }
        let not_hex = format!("{UNLOCK_PREFIX}{}", "g".repeat(64));
        assert_eq!(parse_unlock_key(&not_hex), Err(KeyError::Malformed));
    }

    #[test]
    fn without_autolock_the_keys_are_the_stores() {
        let ring = Keyring::default();
        let keys = ring.keys(&cluster()).expect("keys");
        assert_eq!(keys, plaintext_keys(&cluster()));
    }

    #[test]
    fn a_locked_cluster_opens_with_its_unlock_key_only() {
        let unlock = new_unlock_key().expect("key");
        let c = locked(&unlock);
        let ring = Keyring::default();
        assert_eq!(ring.keys(&c), Err(KeyError::Locked));
        ring.add(new_unlock_key().expect("other"));
        assert_eq!(ring.keys(&c), Err(KeyError::Locked));
        ring.add(unlock.clone());
        assert_eq!(ring.keys(&c).expect("open"), plaintext_keys(&cluster()));
        assert_eq!(
            ring.open_cluster(&c).expect("open"),
            Cluster {
                autolock: c.autolock.clone(),
                ..cluster()
            }
        );
        assert_eq!(ring.data_key(&State::default()), None);
        // Bound to the cluster: another cluster's blob does not open.
        let moved = Cluster {
            id: "c2".into(),
            ..c.clone()
        };
        assert_eq!(Keyring::default().keys(&moved), Err(KeyError::Locked));
        let ring2 = Keyring::default();
        ring2.add(unlock);
        assert_eq!(ring2.keys(&moved), Err(KeyError::Locked));
    }

    #[test]
    fn after_a_rotation_the_previous_key_still_finds_the_new_one() {
        let old = new_unlock_key().expect("old");
        let new = new_unlock_key().expect("new");
        let ring = Keyring::default();
        ring.add(new.clone());
        ring.add(old.clone());
        // The store still holds the keys under the old one: it is found
        // and made the newest.
        let c = locked(&old);
        assert_eq!(
            ring.key_for(&c.id, c.autolock.as_ref().expect("sealed")),
            Some(old.clone())
        );
        assert_eq!(ring.newest(), Some(old));
        let c = locked(&new);
        assert!(ring.keys(&c).is_ok());
        assert_eq!(ring.newest(), Some(new));
        ring.clear();
        assert_eq!(ring.keys(&c), Err(KeyError::Locked));
    }

    #[test]
    fn a_sealed_node_key_opens_with_its_key_and_node_only() {
        let unlock = new_unlock_key().expect("key");
        let pem = "-----BEGIN PRIVATE KEY-----\nabc\n-----END PRIVATE KEY-----\n";
        let text = seal_node_key(&unlock, "n1", pem).expect("seal");
        assert!(is_sealed_node_key(&text));
        assert!(!is_sealed_node_key(pem));
        assert!(!text.contains("PRIVATE KEY"));
        assert_eq!(open_node_key(&unlock, "n1", &text).as_deref(), Ok(pem));
        let other = new_unlock_key().expect("other");
        assert_eq!(open_node_key(&other, "n1", &text), Err(KeyError::WrongKey));
        assert_eq!(open_node_key(&unlock, "n2", &text), Err(KeyError::WrongKey));
        assert_eq!(open_node_key(&unlock, "n1", pem), Err(KeyError::Malformed));
    }
}

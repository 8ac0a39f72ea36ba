//! Autolock on, off, and the unlock key shown or rotated: the rules over
//! the store and this manager's [`crate::keyring::Keyring`].
//!
//! A new unlock key goes into this manager's keyring before the command
//! that seals the keys under it is proposed, so that the keys stay
//! readable here the moment the command applies; the other managers get
//! it from a peer (see [`crate::autolock`]).

use flotilla_store::Command;
use flotilla_types::{Cluster, SecretData};

use super::{Control, ControlError};
use crate::keyring::{self, ClusterKeys, KeyError};

/// What the API answers: whether autolock is on, and the current key.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AutolockView {
    pub autolock: bool,
    /// Formatted for people (`FLTKEY-1-...`).
    pub unlock_key: Option<String>,
}

fn key_error(e: KeyError) -> ControlError {
    match e {
        KeyError::NoCluster => ControlError::Conflict(e.to_string()),
        other => ControlError::Unavailable(other.to_string()),
    }
}

const OFF: &str = "autolock is off: turn it on with 'flotilla cluster update --autolock=true'";

impl Control {
    /// Turns autolock on (drawing a new unlock key, and a data key if the
    /// cluster has none yet) or off. Turning on what is on, or off what is
    /// off, changes nothing.
    pub async fn set_autolock(&self, enabled: bool) -> Result<AutolockView, ControlError> {
        let cluster = self.cluster_record()?;
        let keys = self.keys.keys(&cluster).map_err(key_error)?;
        match (enabled, cluster.autolock.is_some()) {
            (true, true) => self.unlock_key(false).await,
            (false, false) => Ok(AutolockView {
                autolock: false,
                unlock_key: None,
            }),
            (true, false) => {
                let keys = if keys.data_key.is_empty() {
                    let data_key = flotilla_pki::seal::new_data_key()
                        .map_err(|e| ControlError::Unavailable(e.to_string()))?;
                    ClusterKeys {
                        data_key: SecretData(data_key),
                        ..keys
                    }
                } else {
                    keys
                };
                let unlock = self.seal_under_new_key(&cluster, &keys).await?;
                Ok(AutolockView {
                    autolock: true,
                    unlock_key: Some(keyring::format_unlock_key(&unlock)),
                })
            }
            (false, true) => {
                self.commit(Command::SetAutolock {
                    sealed: None,
                    ca_key_pem: keys.ca_key_pem,
                    data_key: keys.data_key,
                    worker_secret: keys.worker_secret,
                    manager_secret: keys.manager_secret,
                })
                .await?;
                self.keys.clear();
                Ok(AutolockView {
                    autolock: false,
                    unlock_key: None,
                })
            }
        }
    }

    /// The current unlock key, after replacing it with a new one if
    /// `rotate`. The previous key still unlocks a manager that was down
    /// during the rotation (its TLS key is sealed under that one); once
    /// unlocked, it learns the new key from a peer.
    pub async fn unlock_key(&self, rotate: bool) -> Result<AutolockView, ControlError> {
        let cluster = self.cluster_record()?;
        let Some(sealed) = cluster.autolock.as_ref() else {
            return Err(ControlError::Conflict(OFF.into()));
        };
        let key = if rotate {
            let keys = self.keys.keys(&cluster).map_err(key_error)?;
            self.seal_under_new_key(&cluster, &keys).await?
        } else {
            self.keys
                .key_for(&cluster.id, sealed)
                .ok_or_else(|| key_error(KeyError::Locked))?
        };
        Ok(AutolockView {
            autolock: true,
            unlock_key: Some(keyring::format_unlock_key(&key)),
        })
    }

    /// Seals `keys` under a new unlock key, held here first, and stores
    /// them; returns the key.
    async fn seal_under_new_key(
        &self,
        cluster: &Cluster,
        keys: &ClusterKeys,
    ) -> Result<SecretData, ControlError> {
        let unlock = keyring::new_unlock_key().map_err(key_error)?;
        self.keys.add(unlock.clone());
        self.reseal(cluster, keys, &unlock).await?;
        Ok(unlock)
    }

    /// Stores `keys` sealed under `unlock` (a key held here).
    async fn reseal(
        &self,
        cluster: &Cluster,
        keys: &ClusterKeys,
        unlock: &SecretData,
    ) -> Result<(), ControlError> {
        let sealed = keyring::seal_keys(unlock, &cluster.id, keys).map_err(key_error)?;
        self.commit(Command::SetAutolock {
            sealed: Some(sealed),
            ca_key_pem: String::new(),
            data_key: SecretData::default(),
            worker_secret: String::new(),
            manager_secret: String::new(),
        })
        .await?;
        Ok(())
    }

    /// Under autolock, a new join secret for `role` is sealed with the
    /// other keys under the current unlock key; false (nothing done) when
    /// autolock is off.
    pub(crate) async fn reseal_join_secret(
        &self,
        role: flotilla_types::NodeRole,
        secret: String,
    ) -> Result<bool, ControlError> {
        let cluster = self.cluster_record()?;
        let Some(sealed) = cluster.autolock.as_ref() else {
            return Ok(false);
        };
        let unlock = self
            .keys
            .key_for(&cluster.id, sealed)
            .ok_or_else(|| key_error(KeyError::Locked))?;
        let mut keys = self.keys.keys(&cluster).map_err(key_error)?;
        match role {
            flotilla_types::NodeRole::Worker => keys.worker_secret = secret,
            flotilla_types::NodeRole::Manager => keys.manager_secret = secret,
        }
        self.reseal(&cluster, &keys, &unlock).await?;
        Ok(true)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::control::testing::{cluster, Fake};
    use flotilla_types::NodeRole;

    /// A one-manager cluster whose CA key is `CA KEY`, and its control.
    fn control() -> Control {
        let mut state = cluster(&[("n1", NodeRole::Manager)]);
        if let Some(c) = state.cluster.as_mut() {
            c.ca_key_pem = "CA KEY".into();
        }
        Fake::new(state).control()
    }

    #[tokio::test]
    async fn on_seals_the_keys_off_gives_them_back() {
        let c = control();
        let before = c.read(|s| s.cluster.clone()).expect("cluster");
        assert!(before.data_key.is_empty());
        let on = c.set_autolock(true).await.expect("on");
        let key = keyring::parse_unlock_key(on.unlock_key.as_deref().expect("key")).expect("parse");
        let locked = c.read(|s| s.cluster.clone()).expect("cluster");
        assert!(locked.ca_key_pem.is_empty() && locked.data_key.is_empty());
        assert!(locked.worker_secret.is_empty() && locked.manager_secret.is_empty());
        let opened =
            keyring::open_keys(&key, &locked.id, locked.autolock.as_ref().expect("sealed"))
                .expect("open");
        assert_eq!(opened.ca_key_pem, "CA KEY");
        assert_eq!(opened.data_key.0.len(), 32, "a data key is drawn");
        // This manager still reads them; showing the key again gives it.
        assert_eq!(c.keys.keys(&locked).expect("held"), opened);
        assert_eq!(c.set_autolock(true).await.expect("again"), on);
        assert_eq!(c.unlock_key(false).await.expect("show"), on);
        let off = c.set_autolock(false).await.expect("off");
        assert_eq!(off.unlock_key, None);
        let plain = c.read(|s| s.cluster.clone()).expect("cluster");
        assert_eq!(plain.autolock, None);
        assert_eq!(plain.ca_key_pem, "CA KEY");
        assert_eq!(plain.data_key, opened.data_key);
        assert_eq!(plain.worker_secret, "worker-secret");
        assert_eq!(plain.manager_secret, "manager-secret");
        assert!(matches!(
            c.unlock_key(false).await,
            Err(ControlError::Conflict(m)) if m.contains("autolock is off")
        ));
    }

    #[tokio::test]
    async fn a_rotation_seals_under_a_new_key_and_the_old_one_no_longer_opens() {
        let c = control();
        let first = c.set_autolock(true).await.expect("on");
        let rotated = c.unlock_key(true).await.expect("rotate");
        assert_ne!(first.unlock_key, rotated.unlock_key);
        let cluster = c.read(|s| s.cluster.clone()).expect("cluster");
        let sealed = cluster.autolock.as_ref().expect("sealed");
        let parse = |v: &AutolockView| {
            keyring::parse_unlock_key(v.unlock_key.as_deref().expect("key")).expect("parse")
        };
        assert!(keyring::open_keys(&parse(&first), &cluster.id, sealed).is_err());
        assert!(keyring::open_keys(&parse(&rotated), &cluster.id, sealed).is_ok());
        assert_eq!(c.unlock_key(false).await.expect("show"), rotated);
    }

    #[tokio::test]
    async fn a_join_secret_rotated_under_autolock_is_sealed() {
        let c = control();
        c.set_autolock(true).await.expect("on");
        let before = c.read(|s| s.cluster.clone()).expect("cluster");
        let old = c.keys.keys(&before).expect("keys");
        c.rotate_join_secret(NodeRole::Worker)
            .await
            .expect("rotate");
        let after = c.read(|s| s.cluster.clone()).expect("cluster");
        assert!(after.worker_secret.is_empty(), "never in plaintext");
        let new = c.keys.keys(&after).expect("keys");
        assert_ne!(new.worker_secret, old.worker_secret);
        assert_eq!(new.manager_secret, old.manager_secret);
        assert_eq!(new.ca_key_pem, old.ca_key_pem);
        let opened = c.keys.open_cluster(&after).expect("open");
        assert_eq!(
            crate::control::cluster::join_role(&opened, &new.worker_secret),
            Some(NodeRole::Worker)
        );
        assert_eq!(
            crate::control::cluster::join_role(&opened, &old.worker_secret),
            None
        );
    }

    #[tokio::test]
    async fn a_manager_without_the_key_is_locked_out_of_every_change() {
        let c = control();
        c.set_autolock(true).await.expect("on");
        c.keys.clear();
        assert!(c.rotate_join_secret(NodeRole::Worker).await.is_err());
        for result in [
            c.unlock_key(false).await,
            c.unlock_key(true).await,
            c.set_autolock(false).await,
        ] {
            assert!(
                matches!(&result, Err(ControlError::Unavailable(m)) if m.contains("locked")),
                "{result:?}"
            );
        }
        assert!(c.read(|s| s.cluster.as_ref().is_some_and(|c| c.autolock.is_some())));
    }
}

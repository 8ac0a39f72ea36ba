//! Commands on the secrets table (secrets and configs) and the cluster's
//! data key that seals their data.
//!
//! The store never sees plaintext: a proposer seals the data before it
//! proposes ([`crate::Command::CreateSecret`]). What is checked here,
//! whoever proposed it: a name is taken once per kind, an object has a
//! version with data, a service names only secrets and versions that
//! exist, and an object in use is not removed.

use std::collections::BTreeSet;

use flotilla_types::{SealedData, Secret, SecretData, SecretKind, SecretVersion, ServiceSpec};

use super::{table, Change, State};

/// The plaintext fields of [`crate::Command::SetAutolock`].
pub(super) struct PlainKeys<'a> {
    pub(super) ca_key_pem: &'a str,
    pub(super) data_key: &'a SecretData,
    pub(super) worker_secret: &'a str,
    pub(super) manager_secret: &'a str,
}

impl PlainKeys<'_> {
    fn is_empty(&self) -> bool {
        self.ca_key_pem.is_empty()
            && self.data_key.is_empty()
            && self.worker_secret.is_empty()
            && self.manager_secret.is_empty()
    }
}
use crate::command::CommandResult;
use crate::error::StoreError;

impl State {
    /// Finds a secret or config of `kind` by ID, or by name.
    pub fn secret(&self, kind: SecretKind, id_or_name: &str) -> Option<&Secret> {
        self.secrets
            .get(id_or_name)
            .filter(|s| s.kind == kind)
            .or_else(|| {
                self.secrets
                    .values()
                    .find(|s| s.kind == kind && s.spec.name == id_or_name)
            })
    }

    /// The services whose spec (or the spec a rollback returns to) uses
    /// secret or config `id`, by name, in order.
    pub fn services_using(&self, id: &str) -> Vec<String> {
        let mut names: Vec<String> = self
            .services
            .values()
            .filter(|s| uses(&s.spec, id) || s.previous_spec.as_ref().is_some_and(|p| uses(p, id)))
            .map(|s| s.spec.name.clone())
            .collect();
        names.sort();
        names
    }

    /// The cluster's data key, once one is stored.
    pub fn data_key(&self) -> Option<&SecretData> {
        self.cluster
            .as_ref()
            .map(|c| &c.data_key)
            .filter(|k| !k.is_empty())
    }

    /// [`crate::Command::SetDataKey`]: the first key stored is kept (two
    /// managers that drew one at once agree on the first committed).
    pub(super) fn set_data_key(
        &mut self,
        key: &SecretData,
        changes: &mut Vec<Change>,
    ) -> CommandResult {
        self.require_cluster()?;
        if key.0.len() != 32 {
            return Err(StoreError::BadSecret {
                kind: "data key".into(),
                name: "of the cluster".into(),
                reason: format!("{} bytes, not 32", key.0.len()),
            });
        }
        if let Some(cluster) = self.cluster.as_mut() {
            // Under autolock the key is sealed away, and a plaintext one
            // drawn by a manager that did not know yet is not kept.
            if cluster.data_key.is_empty() && cluster.autolock.is_none() {
                cluster.data_key = key.clone();
                changes.push(Change::Cluster);
            }
        }
        Ok(None)
    }

    /// [`crate::Command::SetAutolock`]: on (or resealed) clears the
    /// plaintext keys and join secrets and keeps the sealed ones; off puts
    /// the plaintext back. Turning it on with plaintext in the command, or
    /// off without the CA key, is refused: the log must never get the
    /// first, and the cluster cannot sign certificates without the second.
    pub(super) fn set_autolock(
        &mut self,
        sealed: Option<&SealedData>,
        plain: PlainKeys<'_>,
        changes: &mut Vec<Change>,
    ) -> CommandResult {
        self.require_cluster()?;
        let bad = |reason: &str| StoreError::BadSecret {
            kind: "autolock".into(),
            name: "of the cluster".into(),
            reason: reason.into(),
        };
        match sealed {
            Some(_) if !plain.is_empty() => {
                return Err(bad("turning it on carries no plaintext key"))
            }
            Some(s) if s.ciphertext.is_empty() => return Err(bad("the sealed keys are empty")),
            None if plain.ca_key_pem.is_empty() => {
                return Err(bad("turning it off needs the CA key"))
            }
            None if !plain.data_key.is_empty() && plain.data_key.0.len() != 32 => {
                return Err(bad("the data key is not 32 bytes"))
            }
            _ => {}
        }
        if let Some(cluster) = self.cluster.as_mut() {
            match sealed {
                Some(s) => {
                    cluster.autolock = Some(s.clone());
                    cluster.ca_key_pem.clear();
                    cluster.data_key = SecretData::default();
                    cluster.worker_secret.clear();
                    cluster.manager_secret.clear();
                }
                None => {
                    cluster.autolock = None;
                    cluster.ca_key_pem = plain.ca_key_pem.to_string();
                    cluster.data_key = plain.data_key.clone();
                    cluster.worker_secret = plain.worker_secret.to_string();
                    cluster.manager_secret = plain.manager_secret.to_string();
                }
            }
            changes.push(Change::Cluster);
        }
        Ok(None)
    }

    /// [`crate::Command::CreateSecret`]: a new secret or config. Refused if
    /// its name is taken for its kind, its ID is taken, or it has no
    /// version.
    pub(super) fn create_secret(
        &mut self,
        secret: &Secret,
        changes: &mut Vec<Change>,
    ) -> CommandResult {
        self.require_cluster()?;
        let kind = secret.kind.noun().to_string();
        if self.secret(secret.kind, &secret.spec.name).is_some()
            || self.secrets.contains_key(&secret.id)
        {
            return Err(StoreError::SecretExists {
                kind,
                name: secret.spec.name.clone(),
            });
        }
        if secret.versions.is_empty() {
            return Err(StoreError::BadSecret {
                kind,
                name: secret.spec.name.clone(),
                reason: "no data".into(),
            });
        }
        table::insert(&mut self.secrets, &secret.id, secret.clone(), changes);
        Ok(Some(secret.id.clone()))
    }

    /// [`crate::Command::RemoveSecret`]: forgets one, refused while a
    /// service uses it (naming them).
    pub(super) fn remove_secret(&mut self, id: &str, changes: &mut Vec<Change>) -> CommandResult {
        let secret = self
            .secrets
            .get(id)
            .ok_or_else(|| StoreError::SecretNotFound {
                kind: "secret or config".into(),
                name: id.to_string(),
            })?;
        let users = self.services_using(id);
        if !users.is_empty() {
            return Err(StoreError::SecretInUse {
                kind: secret.kind.noun().into(),
                name: secret.spec.name.clone(),
                services: users.join(", "),
            });
        }
        table::remove(&mut self.secrets, id, changes);
        Ok(Some(id.to_string()))
    }

    /// [`crate::Command::AddSecretVersion`]: a new current version (the
    /// next number); then drops every older version that no service spec
    /// (nor the spec a rollback returns to) and no task that has not ended
    /// names.
    pub(super) fn add_secret_version(
        &mut self,
        id: &str,
        version: &SecretVersion,
        changes: &mut Vec<Change>,
    ) -> CommandResult {
        let in_use = self.versions_in_use(id);
        let secret = self
            .secrets
            .get_mut(id)
            .ok_or_else(|| StoreError::SecretNotFound {
                kind: "secret or config".into(),
                name: id.to_string(),
            })?;
        let next = secret.current().map_or(1, |v| v.version + 1);
        if version.version != next {
            return Err(StoreError::BadSecret {
                kind: secret.kind.noun().into(),
                name: secret.spec.name.clone(),
                reason: format!("version {} given, {next} expected", version.version),
            });
        }
        secret.versions.retain(|v| in_use.contains(&v.version));
        secret.versions.push(version.clone());
        changes.push(Change::Secret(id.to_string()));
        Ok(Some(id.to_string()))
    }

    /// The versions of secret `id` that a service spec or a task that has
    /// not ended names.
    fn versions_in_use(&self, id: &str) -> BTreeSet<u64> {
        let specs = self.services.values().flat_map(|s| {
            std::iter::once(&s.spec.task).chain(s.previous_spec.iter().map(|p| &p.task))
        });
        let tasks = self
            .tasks
            .values()
            .filter(|t| !t.status.state.is_terminal())
            .map(|t| &t.spec);
        specs
            .chain(tasks)
            .flat_map(|t| t.secrets.iter().chain(t.configs.iter()))
            .filter(|r| r.id == id)
            .map(|r| r.version)
            .collect()
    }

    /// Every secret and config a spec names exists, of its kind, at the
    /// version it names.
    pub(super) fn check_secrets_exist(&self, spec: &ServiceSpec) -> Result<(), StoreError> {
        let refs = [
            (SecretKind::Secret, &spec.task.secrets),
            (SecretKind::Config, &spec.task.configs),
        ];
        for (kind, refs) in refs {
            for r in refs.iter() {
                let found = self
                    .secrets
                    .get(&r.id)
                    .filter(|s| s.kind == kind && s.version(r.version).is_some());
                if found.is_none() {
                    return Err(StoreError::SecretNotFound {
                        kind: kind.noun().into(),
                        name: format!("{} (version {})", r.source, r.version),
                    });
                }
            }
        }
        Ok(())
    }
}

/// Whether a spec uses secret or config `id`.
fn uses(spec: &ServiceSpec, id: &str) -> bool {
    spec.task
        .secrets
        .iter()
        .chain(spec.task.configs.iter())
        .any(|r| r.id == id)
}

#[cfg(test)]
mod tests {
    use flotilla_types::{SealedData, SecretRef, SecretSpec, SecretVersion};

    use super::super::tests::{init, spec};
    use super::*;
    use crate::{Command, CommandResult, State};

    fn apply(s: &mut State, command: Command) -> CommandResult {
        let index = s.index + 1;
        s.apply(index, &command).0
    }

    fn secret(id: &str, kind: SecretKind, name: &str) -> Secret {
        Secret {
            id: id.into(),
            kind,
            spec: SecretSpec {
                name: name.into(),
                labels: Default::default(),
                template_driver: None,
            },
            created_at: 1,
            versions: vec![SecretVersion {
                version: 1,
                created_at: 1,
                size: 3,
                digest: "d".into(),
                data: SealedData::default(),
            }],
        }
    }

    fn using(name: &str, secret_id: &str, version: u64) -> flotilla_types::ServiceSpec {
        let mut spec = spec(name, 1);
        let mut r = SecretRef::to(SecretKind::Secret, "pw");
        r.id = secret_id.into();
        r.version = version;
        spec.task.secrets = vec![r];
        spec
    }

    #[test]
    fn names_are_taken_once_per_kind() {
        let mut s = init();
        let pw = secret("s1", SecretKind::Secret, "pw");
        assert!(apply(&mut s, Command::CreateSecret { secret: pw.clone() }).is_ok());
        let again = Command::CreateSecret {
            secret: secret("s2", SecretKind::Secret, "pw"),
        };
        assert_eq!(
            apply(&mut s, again).unwrap_err().to_string(),
            "secret pw already exists"
        );
        // A config may share a secret's name, as in Swarm.
        let config = secret("c1", SecretKind::Config, "pw");
        assert!(apply(&mut s, Command::CreateSecret { secret: config }).is_ok());
        assert_eq!(
            s.secret(SecretKind::Secret, "pw").map(|x| &x.id),
            Some(&pw.id)
        );
        assert_eq!(
            s.secret(SecretKind::Config, "pw").map(|x| x.id.as_str()),
            Some("c1")
        );
        assert!(
            s.secret(SecretKind::Config, "s1").is_none(),
            "an ID of the other kind"
        );
        let mut empty = secret("s3", SecretKind::Secret, "empty");
        empty.versions.clear();
        assert!(apply(&mut s, Command::CreateSecret { secret: empty }).is_err());
    }

    #[test]
    fn a_service_names_only_what_exists_and_keeps_it_from_removal() {
        let mut s = init();
        let create = |id: &str, spec| Command::CreateService {
            id: id.into(),
            spec,
            at: 2,
        };
        let missing = apply(&mut s, create("w1", using("web", "s1", 1)));
        assert_eq!(
            missing.unwrap_err().to_string(),
            "secret pw (version 1) not found"
        );
        let pw = secret("s1", SecretKind::Secret, "pw");
        apply(&mut s, Command::CreateSecret { secret: pw }).expect("secret");
        let wrong_version = apply(&mut s, create("w1", using("web", "s1", 2)));
        assert!(wrong_version.is_err());
        assert!(s.services.is_empty());
        apply(&mut s, create("w1", using("web", "s1", 1))).expect("service");
        let rm = apply(&mut s, Command::RemoveSecret { id: "s1".into() });
        assert_eq!(
            rm.unwrap_err().to_string(),
            "secret pw is in use by services web"
        );
        // Still named by the spec a rollback returns to.
        let update = Command::UpdateService {
            id: "w1".into(),
            spec: spec("web", 1),
            expected_version: None,
            at: 3,
        };
        apply(&mut s, update).expect("update");
        assert_eq!(s.services_using("s1"), vec!["web".to_string()]);
        apply(
            &mut s,
            Command::RemoveService {
                id: "w1".into(),
                at: 4,
            },
        )
        .expect("rm service");
        apply(&mut s, Command::RemoveSecret { id: "s1".into() }).expect("rm secret");
        assert!(s.secrets.is_empty());
    }

    #[test]
    fn a_new_version_is_the_next_and_unused_old_ones_go() {
        let mut s = init();
        let pw = secret("s1", SecretKind::Secret, "pw");
        let v1 = pw.versions[0].clone();
        apply(&mut s, Command::CreateSecret { secret: pw }).expect("secret");
        let create = Command::CreateService {
            id: "w1".into(),
            spec: using("web", "s1", 1),
            at: 2,
        };
        apply(&mut s, create).expect("service");
        let add = |v: u64| Command::AddSecretVersion {
            id: "s1".into(),
            version: SecretVersion {
                version: v,
                ..v1.clone()
            },
        };
        assert!(apply(&mut s, add(3)).is_err(), "not the next");
        apply(&mut s, add(2)).expect("v2");
        let kept: Vec<u64> = s.secrets["s1"].versions.iter().map(|v| v.version).collect();
        assert_eq!(kept, vec![1, 2], "v1 is still named by web");
        let update = Command::UpdateService {
            id: "w1".into(),
            spec: using("web", "s1", 2),
            expected_version: None,
            at: 3,
        };
        apply(&mut s, update).expect("web on v2");
        apply(&mut s, add(3)).expect("v3");
        let kept: Vec<u64> = s.secrets["s1"].versions.iter().map(|v| v.version).collect();
        assert_eq!(kept, vec![1, 2, 3], "v1 is what a rollback returns to");
        let update = Command::UpdateService {
            id: "w1".into(),
            spec: using("web", "s1", 3),
            expected_version: None,
            at: 4,
        };
        apply(&mut s, update).expect("web on v3");
        apply(&mut s, add(4)).expect("v4");
        let kept: Vec<u64> = s.secrets["s1"].versions.iter().map(|v| v.version).collect();
        assert_eq!(kept, vec![2, 3, 4]);
    }

    #[test]
    fn the_first_data_key_is_kept() {
        let mut s = init();
        let first = SecretData(vec![1; 32]);
        apply(&mut s, Command::SetDataKey { key: first.clone() }).expect("key");
        apply(
            &mut s,
            Command::SetDataKey {
                key: SecretData(vec![2; 32]),
            },
        )
        .expect("second");
        assert_eq!(s.data_key(), Some(&first));
        assert!(apply(
            &mut s,
            Command::SetDataKey {
                key: SecretData(vec![3; 5])
            }
        )
        .is_err());
    }

    fn sealed() -> SealedData {
        SealedData {
            nonce: SecretData(vec![7; 12]),
            ciphertext: SecretData(vec![9; 48]),
        }
    }

    #[test]
    fn autolock_clears_the_plaintext_keys_and_gives_them_back_when_off() {
        let mut s = init();
        if let Some(c) = s.cluster.as_mut() {
            c.ca_key_pem = "CA KEY".into();
        }
        let key = SecretData(vec![1; 32]);
        apply(&mut s, Command::SetDataKey { key: key.clone() }).expect("key");
        if let Some(c) = s.cluster.as_mut() {
            c.worker_secret = "W".into();
        }
        let on = Command::SetAutolock {
            sealed: Some(sealed()),
            ca_key_pem: String::new(),
            data_key: SecretData::default(),
            worker_secret: String::new(),
            manager_secret: String::new(),
        };
        apply(&mut s, on).expect("on");
        let c = s.cluster.clone().expect("cluster");
        assert_eq!(c.autolock, Some(sealed()));
        assert!(c.ca_key_pem.is_empty() && c.data_key.is_empty() && c.worker_secret.is_empty());
        assert_eq!(s.data_key(), None);
        // Nor does a join secret rotated by such a manager.
        let rotate = Command::RotateJoinSecret {
            role: flotilla_types::NodeRole::Worker,
            secret: "plain".into(),
        };
        assert!(apply(&mut s, rotate).is_err());
        // A data key drawn by a manager that did not know is not kept.
        apply(
            &mut s,
            Command::SetDataKey {
                key: SecretData(vec![2; 32]),
            },
        )
        .expect("ignored");
        assert_eq!(s.data_key(), None);
        let off = Command::SetAutolock {
            sealed: None,
            ca_key_pem: "CA KEY".into(),
            data_key: key.clone(),
            worker_secret: "W".into(),
            manager_secret: "M".into(),
        };
        apply(&mut s, off).expect("off");
        let c = s.cluster.clone().expect("cluster");
        assert_eq!(c.autolock, None);
        assert_eq!(c.ca_key_pem, "CA KEY");
        assert_eq!(
            (c.worker_secret.as_str(), c.manager_secret.as_str()),
            ("W", "M")
        );
        assert_eq!(s.data_key(), Some(&key));
    }

    #[test]
    fn autolock_never_takes_plaintext_on_and_needs_the_ca_key_off() {
        let mut s = init();
        let before = s.cluster.clone();
        for plaintext_on in [
            Command::SetAutolock {
                sealed: Some(sealed()),
                ca_key_pem: "CA KEY".into(),
                data_key: SecretData::default(),
                worker_secret: String::new(),
                manager_secret: String::new(),
            },
            Command::SetAutolock {
                sealed: Some(sealed()),
                ca_key_pem: String::new(),
                data_key: SecretData::default(),
                worker_secret: String::new(),
                manager_secret: "M".into(),
            },
        ] {
            assert!(apply(&mut s, plaintext_on).is_err());
        }
        let off_without_ca = Command::SetAutolock {
            sealed: None,
            ca_key_pem: String::new(),
            data_key: SecretData::default(),
            worker_secret: String::new(),
            manager_secret: String::new(),
        };
        assert!(apply(&mut s, off_without_ca).is_err());
        assert_eq!(s.cluster, before);
    }
}

//! Secrets and configs: create (sealing the data under the cluster's data
//! key before anything is proposed), remove, the resolution of the names
//! a service spec gives to the IDs and versions the store keeps, and the
//! opening of the files a node's tasks get.

use std::collections::{BTreeMap, BTreeSet};

use flotilla_pki::seal;
use flotilla_store::{Command, State};
use flotilla_types::{
    new_id, validate_name, SealedData, Secret, SecretData, SecretKind, SecretRef, SecretSpec,
    SecretVersion, ServiceSpec, Task, TaskFile, MAX_SECRET_BYTES,
};

use super::{Control, ControlError};
use crate::keyring::Keyring;

/// What a secret's data is bound to when sealed: its kind, ID and version.
pub fn binding(kind: SecretKind, id: &str, version: u64) -> Vec<u8> {
    format!("{kind}:{id}:{version}").into_bytes()
}

/// `secret X not found` (or config).
pub fn secret_not_found(kind: SecretKind, name: &str) -> ControlError {
    ControlError::NotFound(format!("{kind} {name} not found"))
}

impl Control {
    /// Creates a secret or config; returns its ID. With `reuse_identical`,
    /// one of that name whose current data is the same is answered
    /// instead, and one with other data is refused.
    pub async fn create_secret(
        &self,
        kind: SecretKind,
        spec: SecretSpec,
        data: SecretData,
        reuse_identical: bool,
    ) -> Result<String, ControlError> {
        validate_secret(kind, &spec, &data)?;
        let key = self.data_key().await?;
        let digest = seal::digest(&key.0, &data.0);
        let existing = self.read(|s| {
            s.secret(kind, &spec.name)
                .map(|x| (x.id.clone(), x.current().map(|v| v.digest.clone())))
        });
        if let Some((id, current)) = existing {
            return match (reuse_identical, current) {
                (true, Some(d)) if d == digest => Ok(id),
                (true, _) => Err(ControlError::Conflict(format!(
                    "{kind} {} already exists with other data; remove it first or give the new one another name",
                    spec.name
                ))),
                (false, _) => Err(ControlError::Conflict(format!(
                    "{kind} {} already exists",
                    spec.name
                ))),
            };
        }
        let id = new_id(rand::random());
        let (nonce, ciphertext) = seal::seal(&key.0, &binding(kind, &id, 1), &data.0)
            .map_err(|e| ControlError::Unavailable(e.to_string()))?;
        let at = self.now();
        let secret = Secret {
            id: id.clone(),
            kind,
            spec,
            created_at: at,
            versions: vec![SecretVersion {
                version: 1,
                created_at: at,
                size: data.0.len() as u64,
                digest,
                data: SealedData {
                    nonce: SecretData(nonce),
                    ciphertext: SecretData(ciphertext),
                },
            }],
        };
        self.commit(Command::CreateSecret { secret }).await?;
        Ok(id)
    }

    /// Gives secret or config `name` a new version with `data`, then rolls
    /// each service that uses it onto that version with the service's own
    /// update config (a rolling update, one slot at a time by default).
    /// The same data as the current version changes nothing. Returns its
    /// ID, its current version and the services rolled.
    pub async fn update_secret(
        &self,
        kind: SecretKind,
        name: &str,
        data: SecretData,
    ) -> Result<(String, u64, Vec<String>), ControlError> {
        let (id, spec, current) = self
            .read(|s| {
                s.secret(kind, name)
                    .map(|x| (x.id.clone(), x.spec.clone(), x.current().cloned()))
            })
            .ok_or_else(|| secret_not_found(kind, name))?;
        validate_secret(kind, &spec, &data)?;
        let key = self.data_key().await?;
        let digest = seal::digest(&key.0, &data.0);
        let version = match current {
            Some(v) if v.digest == digest => return Ok((id, v.version, Vec::new())),
            Some(v) => v.version + 1,
            None => 1,
        };
        let (nonce, ciphertext) = seal::seal(&key.0, &binding(kind, &id, version), &data.0)
            .map_err(|e| ControlError::Unavailable(e.to_string()))?;
        self.commit(Command::AddSecretVersion {
            id: id.clone(),
            version: SecretVersion {
                version,
                created_at: self.now(),
                size: data.0.len() as u64,
                digest,
                data: SealedData {
                    nonce: SecretData(nonce),
                    ciphertext: SecretData(ciphertext),
                },
            },
        })
        .await?;
        let users: Vec<String> = self.read(|s| {
            s.services
                .values()
                .filter(|svc| {
                    svc.spec
                        .task
                        .secrets
                        .iter()
                        .chain(svc.spec.task.configs.iter())
                        .any(|r| r.id == id)
                })
                .map(|svc| svc.spec.name.clone())
                .collect()
        });
        for service in &users {
            self.modify_service(service, |spec| {
                for r in spec
                    .task
                    .secrets
                    .iter_mut()
                    .chain(spec.task.configs.iter_mut())
                    .filter(|r| r.id == id)
                {
                    r.version = version;
                }
                Ok(())
            })
            .await?;
        }
        Ok((id, version, users))
    }

    /// Removes secret or config `name` (refused while in use); returns its
    /// ID and name.
    pub async fn remove_secret(
        &self,
        kind: SecretKind,
        name: &str,
    ) -> Result<(String, String), ControlError> {
        let (id, full) = self
            .read(|s| {
                s.secret(kind, name)
                    .map(|x| (x.id.clone(), x.spec.name.clone()))
            })
            .ok_or_else(|| secret_not_found(kind, name))?;
        self.commit(Command::RemoveSecret { id: id.clone() })
            .await?;
        Ok((id, full))
    }

    /// The cluster's data key: the stored one, or a new one drawn here and
    /// stored first (the first one committed wins, so it is read back).
    async fn data_key(&self) -> Result<SecretData, ControlError> {
        let keys = self
            .read(|s| self.keys.keys_of(s))
            .map_err(|e| ControlError::Unavailable(e.to_string()))?;
        if !keys.data_key.is_empty() {
            return Ok(keys.data_key);
        }
        let key = seal::new_data_key().map_err(|e| ControlError::Unavailable(e.to_string()))?;
        self.commit(Command::SetDataKey {
            key: SecretData(key),
        })
        .await?;
        self.read(|s| self.keys.data_key(s)).ok_or_else(|| {
            ControlError::Unavailable(
                "the cluster's data key was stored but is not read back".into(),
            )
        })
    }
}

/// The rules of a new secret or config.
pub fn validate_secret(
    kind: SecretKind,
    spec: &SecretSpec,
    data: &SecretData,
) -> Result<(), ControlError> {
    validate_name(&spec.name).map_err(|e| ControlError::Invalid(format!("{kind} {e}")))?;
    if let Some(bad) = spec.labels.keys().find(|k| k.is_empty() || k.contains('=')) {
        return Err(ControlError::Invalid(format!("invalid label key {bad:?}")));
    }
    if data.0.is_empty() {
        return Err(ControlError::Invalid(format!(
            "{kind} {}: the data is empty",
            spec.name
        )));
    }
    match spec.template_driver.as_deref() {
        None => {}
        Some("golang") => {
            let text = std::str::from_utf8(&data.0).map_err(|_| {
                ControlError::Invalid(format!(
                    "{kind} {}: a template must be UTF-8 text",
                    spec.name
                ))
            })?;
            flotilla_types::template::check_with_functions(text)
                .map_err(|e| ControlError::Invalid(format!("{kind} {}: {e}", spec.name)))?;
        }
        Some(other) => {
            return Err(ControlError::Invalid(format!(
                "{kind} {}: unknown template driver {other:?}: only golang",
                spec.name
            )))
        }
    }
    if data.0.len() > MAX_SECRET_BYTES {
        return Err(ControlError::Invalid(format!(
            "{kind} {}: {} bytes is over the limit of {} bytes (500 KB)",
            spec.name,
            data.0.len(),
            MAX_SECRET_BYTES
        )));
    }
    Ok(())
}

/// Gives each secret and config of `spec` the ID and version the store
/// keeps: a reference that already names a kept version keeps it (an
/// update of something else rolls nothing), any other gets the current
/// version of what its source names. Checks the targets: each valid, none
/// twice, none on a mount's target.
pub fn resolve_secrets(state: &State, spec: &mut ServiceSpec) -> Result<(), ControlError> {
    let mut paths: BTreeSet<String> = spec.task.mounts.iter().map(|m| m.target.clone()).collect();
    for (kind, refs) in [
        (SecretKind::Secret, &mut spec.task.secrets),
        (SecretKind::Config, &mut spec.task.configs),
    ] {
        for r in refs.iter_mut() {
            r.check(kind).map_err(ControlError::Invalid)?;
            let pinned = state
                .secrets
                .get(&r.id)
                .filter(|s| s.kind == kind && s.version(r.version).is_some());
            let found = match pinned {
                Some(s) => s,
                None => {
                    let s = state
                        .secret(kind, &r.source)
                        .ok_or_else(|| secret_not_found(kind, &r.source))?;
                    r.version = s.current().map(|v| v.version).unwrap_or(0);
                    s
                }
            };
            r.id = found.id.clone();
            r.source = found.spec.name.clone();
            let path = r.path_in_task(kind);
            if !paths.insert(path.clone()) {
                return Err(ControlError::Invalid(format!(
                    "{kind} {}: target {path} is already used by another secret, config or mount",
                    r.source
                )));
            }
        }
    }
    Ok(())
}

/// The files each of `tasks` gets, opened with the cluster's data key:
/// only tasks that are to run, only what their template names. A file
/// that does not open is left out and named in the second list (the
/// task then fails to start, saying so).
pub fn task_files<'a>(
    state: &State,
    keys: &Keyring,
    tasks: impl Iterator<Item = &'a Task>,
) -> (BTreeMap<String, Vec<TaskFile>>, Vec<String>) {
    let mut files = BTreeMap::new();
    let mut missing = Vec::new();
    let key = keys.data_key(state);
    let key = key.as_ref();
    for task in tasks {
        if task.desired_state != flotilla_types::DesiredState::Running {
            continue;
        }
        let refs = [
            (SecretKind::Secret, &task.spec.secrets),
            (SecretKind::Config, &task.spec.configs),
        ];
        let mut own = Vec::new();
        for (kind, refs) in refs {
            for r in refs.iter() {
                match open_ref(state, key, kind, r) {
                    Some(f) => own.push(f),
                    None => missing.push(format!("{kind} {} for task {}", r.source, task.id)),
                }
            }
        }
        if !own.is_empty() {
            files.insert(task.id.clone(), own);
        }
    }
    (files, missing)
}

fn open_ref(
    state: &State,
    key: Option<&SecretData>,
    kind: SecretKind,
    r: &SecretRef,
) -> Option<TaskFile> {
    let key = key?;
    let secret = state.secrets.get(&r.id).filter(|s| s.kind == kind)?;
    let version = secret.version(r.version)?;
    let plain = seal::open(
        &key.0,
        &binding(kind, &r.id, r.version),
        &version.data.nonce.0,
        &version.data.ciphertext.0,
    )
    .ok()?;
    Some(TaskFile {
        kind,
        path: r.path_in_task(kind),
        rel: r.path_in_dir(kind),
        uid: r.uid.parse().ok()?,
        gid: r.gid.parse().ok()?,
        mode: r.mode,
        data: SecretData(plain),
        template: secret.spec.template_driver.is_some(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::control::testing::{cluster, Fake};
    use flotilla_types::{NodeRole, ServiceMode, TaskTemplate};

    fn spec_with(name: &str, secrets: &[&str]) -> ServiceSpec {
        ServiceSpec {
            name: name.into(),
            mode: ServiceMode::Replicated { replicas: 1 },
            task: TaskTemplate {
                command: vec!["sleep".into(), "100".into()],
                secrets: secrets
                    .iter()
                    .map(|s| SecretRef::to(SecretKind::Secret, *s))
                    .collect(),
                ..Default::default()
            },
            ..Default::default()
        }
    }

    fn named(name: &str) -> SecretSpec {
        SecretSpec {
            name: name.into(),
            labels: Default::default(),
            template_driver: None,
        }
    }

    #[tokio::test]
    async fn data_is_sealed_before_it_is_proposed_and_opens_for_the_task() {
        let fake = Fake::new(cluster(&[("m1", NodeRole::Manager)]));
        let control = fake.control();
        let id = control
            .create_secret(
                SecretKind::Secret,
                named("pw"),
                SecretData(b"hunter2".to_vec()),
                false,
            )
            .await
            .expect("create");
        // Nothing the store holds (what raft logs and snapshots) has the
        // plaintext.
        let stored = control.read(|s| serde_json::to_string(s).expect("json"));
        assert!(!stored.contains("hunter2"));
        let b64 = serde_json::to_string(&SecretData(b"hunter2".to_vec())).expect("json");
        assert!(
            !stored.contains(b64.trim_matches('"')),
            "not even as base64"
        );
        let svc = control
            .create_service(spec_with("web", &["pw"]))
            .await
            .expect("service");
        let refs = control.read(|s| s.services[&svc].spec.task.secrets.clone());
        assert_eq!((refs[0].id.as_str(), refs[0].version), (id.as_str(), 1));
        // A task of it gets the file in the clear.
        let task = Task {
            id: "t1".into(),
            service_id: svc.clone(),
            service_name: "web".into(),
            slot: 1,
            node_id: Some("m1".into()),
            desired_state: flotilla_types::DesiredState::Running,
            status: flotilla_types::TaskStatus::new(flotilla_types::TaskState::New, 1, ""),
            spec: control.read(|s| s.services[&svc].spec.task.clone()),
            service_version: 1,
            created_at: 1,
            created_index: 1,
            restart_history: vec![],
            networks: vec![],
        };
        let (files, missing) =
            control.read(|s| task_files(s, &control.keys, std::iter::once(&task)));
        assert!(missing.is_empty(), "{missing:?}");
        let f = &files["t1"][0];
        assert_eq!(f.data.0, b"hunter2");
        assert_eq!(
            (f.path.as_str(), f.rel.as_str(), f.mode),
            ("/run/secrets/pw", "pw", 0o444)
        );
    }

    #[tokio::test]
    async fn an_update_adds_a_version_and_rolls_the_services_onto_it() {
        let fake = Fake::new(cluster(&[("m1", NodeRole::Manager)]));
        let control = fake.control();
        let data = |d: &[u8]| SecretData(d.to_vec());
        let id = control
            .create_secret(SecretKind::Secret, named("pw"), data(b"one"), false)
            .await
            .expect("create");
        let svc = control
            .create_service(spec_with("web", &["pw"]))
            .await
            .expect("service");
        let before = control.read(|s| s.services[&svc].version);
        let (same, v, rolled) = control
            .update_secret(SecretKind::Secret, "pw", data(b"one"))
            .await
            .expect("same data");
        assert_eq!(
            (same.as_str(), v, rolled.len()),
            (id.as_str(), 1, 0),
            "nothing to do"
        );
        let (_, v, rolled) = control
            .update_secret(SecretKind::Secret, "pw", data(b"two"))
            .await
            .expect("update");
        assert_eq!((v, rolled), (2, vec!["web".to_string()]));
        let (refs, version) = control.read(|s| {
            let svc = &s.services[&svc];
            (svc.spec.task.secrets.clone(), svc.version)
        });
        assert_eq!(refs[0].version, 2);
        assert!(version > before, "a new spec version: a rolling update");
        let e = control
            .update_secret(SecretKind::Secret, "nope", data(b"x"))
            .await
            .unwrap_err();
        assert_eq!(e.to_string(), "secret nope not found");
    }

    #[tokio::test]
    async fn names_data_and_targets_are_checked() {
        let fake = Fake::new(cluster(&[("m1", NodeRole::Manager)]));
        let control = fake.control();
        let make = |name: &str, data: &[u8], reuse: bool| {
            control.create_secret(
                SecretKind::Secret,
                named(name),
                SecretData(data.to_vec()),
                reuse,
            )
        };
        let id = make("pw", b"a", false).await.expect("create");
        let taken = make("pw", b"a", false).await.unwrap_err();
        assert_eq!(taken.to_string(), "secret pw already exists");
        // A stack deployed again reuses identical data, refuses other.
        assert_eq!(make("pw", b"a", true).await.expect("reuse"), id);
        let other = make("pw", b"b", true).await.unwrap_err();
        assert!(
            other.to_string().contains("already exists with other data"),
            "{other}"
        );
        let big = vec![b'x'; MAX_SECRET_BYTES + 1];
        let e = make("big", &big, false).await.unwrap_err();
        assert!(
            e.to_string().contains("over the limit of 512000 bytes"),
            "{e}"
        );
        assert!(make("empty", b"", false).await.is_err());
        assert!(make("bad name", b"x", false).await.is_err());
        let e = control
            .create_service(spec_with("web", &["nope"]))
            .await
            .unwrap_err();
        assert_eq!(e.to_string(), "secret nope not found");
        let mut twice = spec_with("web", &["pw", "pw"]);
        let e = control.create_service(twice.clone()).await.unwrap_err();
        assert!(e.to_string().contains("already used"), "{e}");
        twice.task.secrets[1].target = "../x".into();
        let e = control.create_service(twice).await.unwrap_err();
        assert!(e.to_string().contains(".."), "{e}");
        // In use: refused, naming the services.
        control
            .create_service(spec_with("web", &["pw"]))
            .await
            .expect("service");
        let e = control
            .remove_secret(SecretKind::Secret, "pw")
            .await
            .unwrap_err();
        assert_eq!(e.to_string(), "secret pw is in use by services web");
        assert!(matches!(
            control.remove_secret(SecretKind::Config, "pw").await,
            Err(ControlError::NotFound(_))
        ));
    }
}

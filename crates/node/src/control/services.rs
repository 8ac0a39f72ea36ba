//! Services: create, scale, replace (the whole spec, at a version), roll
//! back and remove. Every write of a spec is validated here first.

use flotilla_store::{Command, StoreError};
use flotilla_types::{new_id, ServiceMode, ServiceSpec};

use super::networks::resolve_networks;
use super::secrets::resolve_secrets;
use super::{service_not_found, Control, ControlError};

/// How often a read-modify-write of a spec is retried when another change
/// slipped in between the read and the write.
const MODIFY_ATTEMPTS: usize = 5;

impl Control {
    /// Creates a service; returns its ID.
    pub async fn create_service(&self, mut spec: ServiceSpec) -> Result<String, ControlError> {
        validate_spec(&spec)?;
        self.read(|s| resolve_networks(s, &mut spec).and_then(|()| resolve_secrets(s, &mut spec)))?;
        let id = new_id(rand::random());
        self.commit(Command::CreateService {
            id: id.clone(),
            spec,
            at: self.now(),
        })
        .await?;
        Ok(id)
    }

    /// Sets the replica count of a replicated service; returns its ID.
    pub async fn scale_service(&self, name: &str, replicas: u64) -> Result<String, ControlError> {
        check_replicas(replicas)?;
        self.modify_service(name, |spec| match spec.mode {
            ServiceMode::Replicated { .. } => {
                spec.mode = ServiceMode::Replicated { replicas };
                Ok(())
            }
            ServiceMode::ReplicatedJob { max_concurrent, .. } => {
                spec.mode = ServiceMode::ReplicatedJob {
                    replicas,
                    max_concurrent,
                };
                Ok(())
            }
            ServiceMode::Global | ServiceMode::GlobalJob => Err(ControlError::Invalid(format!(
                "service {name} is {}: scale applies to replicated services only",
                spec.mode.as_str()
            ))),
        })
        .await
    }

    /// Read-modify-write of a service's spec, with the version as a guard:
    /// retried if a concurrent change slipped in between.
    pub async fn modify_service(
        &self,
        name: &str,
        change: impl Fn(&mut ServiceSpec) -> Result<(), ControlError>,
    ) -> Result<String, ControlError> {
        for _ in 0..MODIFY_ATTEMPTS {
            let current = self
                .read(|s| s.service(name).cloned())
                .ok_or_else(|| service_not_found(name))?;
            let mut spec = current.spec.clone();
            change(&mut spec)?;
            validate_spec(&spec)?;
            self.read(|s| {
                resolve_networks(s, &mut spec).and_then(|()| resolve_secrets(s, &mut spec))
            })?;
            let written = self
                .commit(Command::UpdateService {
                    id: current.id.clone(),
                    spec,
                    expected_version: Some(current.version),
                    at: self.now(),
                })
                .await;
            match written {
                Ok(_) => return Ok(current.id),
                Err(ControlError::Store(StoreError::VersionConflict { .. })) => continue,
                Err(e) => return Err(e),
            }
        }
        Err(ControlError::Conflict(format!(
            "service {name} kept changing while it was being updated; try again"
        )))
    }

    /// Replaces the spec of service `name` with `spec`, if the service is
    /// still at `version` (any version when `None`); returns its ID.
    pub async fn replace_service(
        &self,
        name: &str,
        mut spec: ServiceSpec,
        version: Option<u64>,
    ) -> Result<String, ControlError> {
        validate_spec(&spec)?;
        self.read(|s| resolve_networks(s, &mut spec).and_then(|()| resolve_secrets(s, &mut spec)))?;
        let id = self.service_id(name)?;
        self.commit(Command::UpdateService {
            id: id.clone(),
            spec,
            expected_version: version,
            at: self.now(),
        })
        .await?;
        Ok(id)
    }

    /// Returns service `name` to the spec before its last change; returns
    /// its ID.
    pub async fn rollback_service(&self, name: &str) -> Result<String, ControlError> {
        let (id, version) = self
            .read(|s| s.service(name).map(|svc| (svc.id.clone(), svc.version)))
            .ok_or_else(|| service_not_found(name))?;
        // At the version read: a change that lands in between is not the
        // one the user asked to undo.
        self.commit(Command::RollbackService {
            id: id.clone(),
            at: self.now(),
            reason: None,
            expected_version: Some(version),
        })
        .await?;
        Ok(id)
    }

    /// Removes service `name` and its tasks; returns its ID and name.
    pub async fn remove_service(&self, name: &str) -> Result<(String, String), ControlError> {
        let (id, full) = self
            .read(|s| {
                s.service(name)
                    .map(|svc| (svc.id.clone(), svc.spec.name.clone()))
            })
            .ok_or_else(|| service_not_found(name))?;
        self.commit(Command::RemoveService {
            id: id.clone(),
            at: self.now(),
        })
        .await?;
        Ok((id, full))
    }

    fn service_id(&self, name: &str) -> Result<String, ControlError> {
        self.read(|s| s.service(name).map(|svc| svc.id.clone()))
            .ok_or_else(|| service_not_found(name))
    }
}

/// The most replicas a spec may ask for (the rule is in
/// [`ServiceSpec::validate`]).
pub use flotilla_types::MAX_REPLICAS;

/// A replica count the spec's rules allow, checked before the service is
/// read so that a typo fails the same way whatever the service.
pub fn check_replicas(replicas: u64) -> Result<(), ControlError> {
    flotilla_types::check_replicas(replicas).map_err(|e| ControlError::Invalid(e.to_string()))
}

/// The spec's own rules ([`ServiceSpec::validate`]), checked on every
/// write of a spec.
pub fn validate_spec(spec: &ServiceSpec) -> Result<(), ControlError> {
    spec.validate()
        .map_err(|e| ControlError::Invalid(e.to_string()))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::control::testing::{cluster, Fake};
    use flotilla_types::{NodeRole, TaskTemplate};

    fn spec(name: &str, replicas: u64) -> ServiceSpec {
        ServiceSpec {
            name: name.into(),
            mode: ServiceMode::Replicated { replicas },
            task: TaskTemplate {
                command: vec!["sleep".into(), "100".into()],
                ..Default::default()
            },
            ..Default::default()
        }
    }

    fn fake() -> std::sync::Arc<Fake> {
        Fake::new(cluster(&[("m1", NodeRole::Manager)]))
    }

    /// A store with service `web` of 2 replicas: the fake, its control
    /// layer and the service's ID.
    async fn with_web() -> (std::sync::Arc<Fake>, Control, String) {
        let fake = fake();
        let control = fake.control();
        let id = control
            .create_service(spec("web", 2))
            .await
            .expect("create");
        (fake, control, id)
    }

    fn replicas(fake: &Fake, name: &str) -> Option<u64> {
        fake.read(|s| match s.service(name).map(|svc| &svc.spec.mode) {
            Some(ServiceMode::Replicated { replicas }) => Some(*replicas),
            _ => None,
        })
    }

    #[tokio::test]
    async fn create_validates_before_it_writes() {
        let fake = fake();
        let e = fake.control().create_service(spec("bad name", 1)).await;
        assert!(matches!(e, Err(ControlError::Invalid(_))), "{e:?}");
        let e = fake
            .control()
            .create_service(spec("web", MAX_REPLICAS + 1))
            .await;
        assert!(matches!(e, Err(ControlError::Invalid(m)) if m.contains("at most")));
        assert!(fake.log.lock().expect("log").is_empty());
        let id = fake.control().create_service(spec("web", 2)).await;
        assert!(id.is_ok());
        let again = fake.control().create_service(spec("web", 2)).await;
        assert!(matches!(
            again,
            Err(ControlError::Store(StoreError::ServiceExists(_)))
        ));
    }

    /// A rollback whose failure action is to roll back again was accepted
    /// by the server (the CLI refused it).
    #[tokio::test]
    async fn a_rollback_that_rolls_back_is_refused() {
        let fake = fake();
        let mut bad = spec("web", 1);
        bad.rollback.failure_action = flotilla_types::FailureAction::Rollback;
        let e = fake.control().create_service(bad.clone()).await.err();
        assert_eq!(
            e.map(|e| e.to_string()).as_deref(),
            Some("rollback failure action must be pause or continue, not rollback")
        );
        fake.control()
            .create_service(spec("web", 1))
            .await
            .expect("create");
        let e = fake.control().replace_service("web", bad, None).await;
        assert!(matches!(e, Err(ControlError::Invalid(_))), "{e:?}");
    }

    #[tokio::test]
    async fn scale_applies_to_replicated_services_only() {
        let (fake, control, _) = with_web().await;
        control.scale_service("web", 5).await.expect("scale");
        assert_eq!(replicas(&fake, "web"), Some(5));
        let e = control.scale_service("web", MAX_REPLICAS + 1).await.err();
        assert_eq!(
            e.map(|e| e.to_string()).as_deref(),
            Some("invalid replicas 100001: at most 100000 are allowed")
        );
        let mut global = spec("agent", 0);
        global.mode = ServiceMode::Global;
        control.create_service(global).await.expect("create");
        let e = control.scale_service("agent", 3).await.err();
        assert_eq!(
            e.map(|e| e.to_string()).as_deref(),
            Some("service agent is global: scale applies to replicated services only")
        );
        assert!(matches!(
            control.scale_service("nope", 1).await,
            Err(ControlError::NotFound(_))
        ));
    }

    /// A write whose read went stale is tried again on the new version.
    #[tokio::test]
    async fn read_modify_write_retries_a_race_and_gives_up_in_the_end() {
        let (fake, control, id) = with_web().await;
        let bump = |s: &Fake| {
            let svc = s.read(|st| st.services[&id].clone());
            let mut spec = svc.spec;
            spec.labels.insert("raced".into(), "yes".into());
            Command::UpdateService {
                id: svc.id,
                spec,
                expected_version: None,
                at: 5,
            }
        };
        fake.race(bump(&fake), 1);
        control.scale_service("web", 4).await.expect("scale");
        assert_eq!(replicas(&fake, "web"), Some(4));
        assert!(fake.read(|s| s.services[&id].spec.labels.contains_key("raced")));
        fake.race(bump(&fake), MODIFY_ATTEMPTS);
        let e = control.scale_service("web", 6).await.err();
        assert_eq!(
            e.map(|e| e.to_string()).as_deref(),
            Some("service web kept changing while it was being updated; try again")
        );
        assert_eq!(replicas(&fake, "web"), Some(4));
    }

    #[tokio::test]
    async fn replace_guards_with_the_version_read() {
        let (fake, control, id) = with_web().await;
        let version = fake.read(|s| s.services[&id].version);
        control
            .replace_service("web", spec("web", 3), Some(version))
            .await
            .expect("replace");
        let stale = control
            .replace_service("web", spec("web", 4), Some(version))
            .await;
        assert!(matches!(
            stale,
            Err(ControlError::Store(StoreError::VersionConflict { .. }))
        ));
        let invalid = control
            .replace_service("web", spec("web", MAX_REPLICAS + 1), None)
            .await;
        assert!(matches!(invalid, Err(ControlError::Invalid(_))));
        assert_eq!(replicas(&fake, "web"), Some(3));
    }

    #[tokio::test]
    async fn rollback_and_remove() {
        let (fake, control, _) = with_web().await;
        assert!(matches!(
            control.rollback_service("web").await,
            Err(ControlError::Store(StoreError::NothingToRollBack(_)))
        ));
        let mut changed = spec("web", 2);
        changed.task.command = vec!["sleep".into(), "200".into()];
        control
            .replace_service("web", changed, None)
            .await
            .expect("replace");
        control.rollback_service("web").await.expect("rollback");
        let command = fake.read(|s| s.service("web").map(|svc| svc.spec.task.command.clone()));
        assert_eq!(command, Some(vec!["sleep".to_string(), "100".to_string()]));
        let (_, name) = control.remove_service("web").await.expect("remove");
        assert_eq!(name, "web");
        assert!(matches!(
            control.remove_service("web").await,
            Err(ControlError::NotFound(_))
        ));
    }
}

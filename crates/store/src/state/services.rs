//! Commands on the services table: create, update, roll back, remove, and
//! the orchestrator's word on a rolling update.
//!
//! A service's `version` is the raft index of the command that last changed
//! its spec; it is what optimistic concurrency (`expected_version`) and
//! update statuses are checked against.

use flotilla_types::{
    carry_over, DesiredState, PublishedPort, Service, ServiceSpec, UnixMs, UpdateState,
    UpdateStatus,
};

use super::{table, Change, State};
use crate::command::CommandResult;
use crate::error::StoreError;

impl State {
    /// [`crate::Command::CreateService`]: a new service at version
    /// `index`. Needs a cluster; refused if the name or the ID is taken.
    pub(super) fn create_service(
        &mut self,
        index: u64,
        id: &str,
        spec: &ServiceSpec,
        at: UnixMs,
        changes: &mut Vec<Change>,
    ) -> CommandResult {
        self.require_cluster()?;
        if self.service(&spec.name).is_some() || self.services.contains_key(id) {
            return Err(StoreError::ServiceExists(spec.name.clone()));
        }
        let published = self.published_for(id, spec, &[])?;
        self.check_networks_exist(spec)?;
        self.check_secrets_exist(spec)?;
        let service = Service {
            id: id.to_string(),
            spec: spec.clone(),
            version: index,
            created_at: at,
            updated_at: at,
            previous_spec: None,
            update_status: None,
            published,
            virtual_ips: Vec::new(),
        };
        table::insert(&mut self.services, id, service, changes);
        Ok(Some(id.to_string()))
    }

    /// [`crate::Command::UpdateService`]: replaces the spec, at version
    /// `index`. Refused if `expected_version` is set and the service has
    /// moved on, or if the new name is another service's. A change of the
    /// task template keeps the old spec as the rollback target and starts
    /// an update; a change of anything else (a scale) does neither.
    pub(super) fn update_service(
        &mut self,
        index: u64,
        id: &str,
        spec: &ServiceSpec,
        expected_version: Option<u64>,
        at: UnixMs,
        changes: &mut Vec<Change>,
    ) -> CommandResult {
        let renamed_to_taken = self
            .services
            .values()
            .any(|s| s.id != id && s.spec.name == spec.name);
        let before = self.service_by_id(id)?.published.clone();
        let published = self.published_for(id, spec, &before);
        let networks = self
            .check_networks_exist(spec)
            .and_then(|()| self.check_secrets_exist(spec));
        let service = self.service_mut(id)?;
        if let Some(expected) = expected_version {
            check_version(service, expected)?;
        }
        if renamed_to_taken {
            return Err(StoreError::ServiceExists(spec.name.clone()));
        }
        networks?;
        service.published = published?;
        service.virtual_ips = super::networks::kept_vips(spec, &service.virtual_ips);
        if service.spec.task != spec.task {
            // What `service rollback` returns to: the last spec
            // whose tasks differ, not a scale in between.
            service.previous_spec = Some(Box::new(service.spec.clone()));
            service.update_status = Some(UpdateStatus {
                state: UpdateState::Updating,
                started_at: at,
                completed_at: None,
                message: "update in progress".into(),
                version: index,
            });
        }
        service.spec = spec.clone();
        service.version = index;
        service.updated_at = at;
        table::touched::<Service>(id, changes);
        Ok(Some(id.to_string()))
    }

    /// [`crate::Command::RollbackService`]: swaps the spec with the
    /// rollback target (so that rolling back again returns), keeping the
    /// name and the replica count, and starts a rollback whose message is
    /// `reason` or, without one, that a user asked for it.
    pub(super) fn rollback_service(
        &mut self,
        index: u64,
        id: &str,
        at: UnixMs,
        reason: Option<&str>,
        expected_version: Option<u64>,
        changes: &mut Vec<Change>,
    ) -> CommandResult {
        let service = self.service_mut(id)?;
        if let Some(expected) = expected_version {
            check_version(service, expected)?;
        }
        let previous = service
            .previous_spec
            .as_deref()
            .cloned()
            .ok_or_else(|| StoreError::NothingToRollBack(service.spec.name.clone()))?;
        let before = service.published.clone();
        // The ports it returns to may have been taken meanwhile: then the
        // rollback is refused, and nothing changes.
        let published = self.published_for(id, &previous, &before)?;
        // So may a network it was on have been removed.
        self.check_networks_exist(&previous)?;
        let service = self.service_mut(id)?;
        service.previous_spec = None;
        service.published = published;
        service.virtual_ips = super::networks::kept_vips(&previous, &service.virtual_ips);
        let mut spec = previous;
        // The name and the replica count are not part of what is
        // rolled back, as in Swarm: a scale since stays.
        spec.name = service.spec.name.clone();
        spec.mode = service.spec.mode;
        service.previous_spec = Some(Box::new(std::mem::replace(&mut service.spec, spec)));
        service.version = index;
        service.updated_at = at;
        service.update_status = Some(UpdateStatus {
            state: UpdateState::RollbackStarted,
            started_at: at,
            completed_at: None,
            message: reason.map_or_else(|| "manually requested rollback".into(), String::from),
            version: index,
        });
        table::touched::<Service>(id, changes);
        Ok(Some(id.to_string()))
    }

    /// [`crate::Command::SetUpdateStatus`]: the orchestrator's progress on
    /// an update. Refused unless the service is still at `version`; the
    /// same status again is no change.
    pub(super) fn set_update_status(
        &mut self,
        id: &str,
        version: u64,
        status: &UpdateStatus,
        changes: &mut Vec<Change>,
    ) -> CommandResult {
        let service = self.service_mut(id)?;
        check_version(service, version)?;
        if service.update_status.as_ref() != Some(status) {
            service.update_status = Some(status.clone());
            table::touched::<Service>(id, changes);
        }
        Ok(Some(id.to_string()))
    }

    /// [`crate::Command::RemoveService`]: removes the service and tells its
    /// tasks to shut down; the orchestrator deletes them once they ended.
    pub(super) fn remove_service(&mut self, id: &str, changes: &mut Vec<Change>) -> CommandResult {
        if table::remove(&mut self.services, id, changes).is_none() {
            return Err(StoreError::ServiceNotFound(id.to_string()));
        }
        for task in self.tasks.values_mut().filter(|t| t.service_id == id) {
            if task.desired_state != DesiredState::Shutdown {
                task.desired_state = DesiredState::Shutdown;
                changes.push(Change::Task(task.id.clone()));
            }
        }
        Ok(Some(id.to_string()))
    }

    fn service_mut(&mut self, id: &str) -> Result<&mut Service, StoreError> {
        self.services
            .get_mut(id)
            .ok_or_else(|| StoreError::ServiceNotFound(id.to_string()))
    }

    fn service_by_id(&self, id: &str) -> Result<&Service, StoreError> {
        self.services
            .get(id)
            .ok_or_else(|| StoreError::ServiceNotFound(id.to_string()))
    }
}

impl State {
    /// The service that publishes `port` now, other than `id`.
    fn publisher_of(&self, id: &str, key: (u16, flotilla_types::Protocol)) -> Option<&Service> {
        self.services
            .values()
            .find(|s| s.id != id && s.published.iter().any(|p| p.key() == key))
    }

    /// The published ports service `id` gets with `spec`: the fixed ones,
    /// refused if another service publishes one, and those it had before
    /// for the ports without a number ([`carry_over`]); the allocator
    /// fills in the rest.
    fn published_for(
        &self,
        id: &str,
        spec: &ServiceSpec,
        before: &[PublishedPort],
    ) -> Result<Vec<PublishedPort>, StoreError> {
        let published: Vec<PublishedPort> = carry_over(&spec.task.ports, before)
            .into_iter()
            .flatten()
            .collect();
        for port in &published {
            if let Some(other) = self.publisher_of(id, port.key()) {
                return Err(port_taken(port, other));
            }
        }
        Ok(published)
    }

    /// [`crate::Command::AllocatePorts`]: the allocator's choice for the
    /// service at `version`: one port for each of the spec's, matching
    /// it, none published by another service.
    pub(super) fn allocate_ports(
        &mut self,
        id: &str,
        version: u64,
        ports: &[PublishedPort],
        changes: &mut Vec<Change>,
    ) -> CommandResult {
        let service = self.service_by_id(id)?;
        check_version(service, version)?;
        let name = service.spec.name.clone();
        let mismatch = |reason: String| StoreError::PortsMismatch {
            service: name.clone(),
            reason,
        };
        let spec_ports: Vec<&flotilla_types::PortConfig> = service
            .spec
            .task
            .ports
            .iter()
            .filter(|p| p.is_published())
            .collect();
        if ports.len() != spec_ports.len() {
            return Err(mismatch(format!(
                "{} ports for {} in the spec",
                ports.len(),
                spec_ports.len()
            )));
        }
        let mut keys = std::collections::BTreeSet::new();
        for (port, spec) in ports.iter().zip(spec_ports.iter().copied()) {
            let fits = port.target == spec.target
                && port.protocol == spec.protocol
                && port.mode == spec.mode
                && spec.published.is_none_or(|p| p == port.published)
                && port.published != 0;
            if !fits {
                return Err(mismatch(format!("{port} for {spec}")));
            }
            if !keys.insert(port.key()) {
                return Err(mismatch(format!("{port} twice")));
            }
            if let Some(other) = self.publisher_of(id, port.key()) {
                return Err(port_taken(port, other));
            }
        }
        let service = self.service_mut(id)?;
        if service.published != ports {
            service.published = ports.to_vec();
            table::touched::<Service>(id, changes);
        }
        Ok(Some(id.to_string()))
    }
}

fn port_taken(port: &PublishedPort, other: &Service) -> StoreError {
    StoreError::PortTaken {
        port: port.published,
        protocol: port.protocol.as_str().into(),
        service: other.spec.name.clone(),
    }
}

/// Refuses a change decided at `expected` if the service has moved on.
pub(super) fn check_version(service: &Service, expected: u64) -> Result<(), StoreError> {
    if service.version != expected {
        return Err(StoreError::VersionConflict {
            name: service.spec.name.clone(),
            expected,
            actual: service.version,
        });
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use flotilla_types::{PortConfig, PublishedPort, ServiceSpec};

    use super::super::tests::{init, spec};
    use crate::{Command, State, StoreError};

    fn with_ports(name: &str, ports: &[flotilla_types::PortConfig]) -> ServiceSpec {
        let mut s = spec(name, 1);
        s.task.ports = ports.to_vec();
        s
    }

    fn published(state: &State, id: &str) -> Vec<String> {
        state.services[id]
            .published
            .iter()
            .map(ToString::to_string)
            .collect()
    }

    /// Fixed ports are taken when the spec is written, so the second
    /// service that asks for one is refused, naming the first; the
    /// allocator's choice is checked against the spec and the others.
    #[test]
    fn a_published_port_belongs_to_one_service() {
        let fixed = PortConfig {
            published: Some(18080),
            ..PortConfig::target(8080)
        };
        let mut s = init();
        let create = |id: &str, spec: ServiceSpec| Command::CreateService {
            id: id.into(),
            spec,
            at: 3,
        };
        let (r, _) = s.apply(2, &create("s1", with_ports("web", &[fixed])));
        assert_eq!(r, Ok(Some("s1".into())));
        assert_eq!(published(&s, "s1"), ["*:18080->8080/tcp"]);
        let (r, _) = s.apply(3, &create("s2", with_ports("api", &[fixed])));
        let err = r.expect_err("taken");
        assert_eq!(
            err.to_string(),
            "port 18080/tcp is already published by service web"
        );
        assert!(!s.services.contains_key("s2"));

        // A port without a number waits for the allocator.
        let (r, _) = s.apply(
            4,
            &create("s2", with_ports("api", &[PortConfig::target(80)])),
        );
        assert!(r.is_ok());
        assert!(s.services["s2"].published.is_empty());
        let choice = |published| PublishedPort {
            published,
            target: 80,
            protocol: Default::default(),
            mode: Default::default(),
        };
        let allocate = |version, ports: Vec<PublishedPort>| Command::AllocatePorts {
            id: "s2".into(),
            version,
            ports,
        };
        // Not at the version it was decided for, taken, or not the spec's.
        let (r, _) = s.apply(5, &allocate(3, vec![choice(30000)]));
        assert!(
            matches!(r, Err(StoreError::VersionConflict { .. })),
            "{r:?}"
        );
        let (r, _) = s.apply(6, &allocate(4, vec![choice(18080)]));
        assert!(matches!(r, Err(StoreError::PortTaken { .. })), "{r:?}");
        let (r, _) = s.apply(7, &allocate(4, vec![]));
        assert!(matches!(r, Err(StoreError::PortsMismatch { .. })), "{r:?}");
        let (r, _) = s.apply(8, &allocate(4, vec![choice(30000)]));
        assert!(r.is_ok(), "{r:?}");
        assert_eq!(published(&s, "s2"), ["*:30000->80/tcp"]);

        // An update that keeps the port keeps the number; a scale too.
        let mut scaled = with_ports("api", &[PortConfig::target(80)]);
        scaled.mode = flotilla_types::ServiceMode::Replicated { replicas: 3 };
        let (r, _) = s.apply(
            9,
            &Command::UpdateService {
                id: "s2".into(),
                spec: scaled,
                expected_version: None,
                at: 4,
            },
        );
        assert!(r.is_ok());
        assert_eq!(published(&s, "s2"), ["*:30000->80/tcp"]);
        // Taking web's port in an update is refused, and changes nothing.
        let (r, _) = s.apply(
            10,
            &Command::UpdateService {
                id: "s2".into(),
                spec: with_ports("api", &[fixed]),
                expected_version: None,
                at: 5,
            },
        );
        assert!(matches!(r, Err(StoreError::PortTaken { .. })), "{r:?}");
        assert_eq!(s.services["s2"].spec.task.ports, [PortConfig::target(80)]);
        // Once web is gone, its port is free.
        let (r, _) = s.apply(
            11,
            &Command::RemoveService {
                id: "s1".into(),
                at: 6,
            },
        );
        assert!(r.is_ok());
        let (r, _) = s.apply(
            12,
            &Command::UpdateService {
                id: "s2".into(),
                spec: with_ports("api", &[fixed]),
                expected_version: None,
                at: 7,
            },
        );
        assert!(r.is_ok(), "{r:?}");
        assert_eq!(published(&s, "s2"), ["*:18080->8080/tcp"]);
    }
}

//! Commands on the services table: create, update, roll back, remove, and
//! the orchestrator's word on a rolling update.
//!
//! A service's `version` is the raft index of the command that last changed
//! its spec; it is what optimistic concurrency (`expected_version`) and
//! update statuses are checked against.

use flotilla_types::{DesiredState, Service, ServiceSpec, UnixMs, UpdateState, UpdateStatus};

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
        let service = Service {
            id: id.to_string(),
            spec: spec.clone(),
            version: index,
            created_at: at,
            updated_at: at,
            previous_spec: None,
            update_status: None,
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
        let service = self.service_mut(id)?;
        if let Some(expected) = expected_version {
            check_version(service, expected)?;
        }
        if renamed_to_taken {
            return Err(StoreError::ServiceExists(spec.name.clone()));
        }
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
            .take()
            .ok_or_else(|| StoreError::NothingToRollBack(service.spec.name.clone()))?;
        let mut spec = *previous;
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
}

/// Refuses a change decided at `expected` if the service has moved on.
fn check_version(service: &Service, expected: u64) -> Result<(), StoreError> {
    if service.version != expected {
        return Err(StoreError::VersionConflict {
            name: service.spec.name.clone(),
            expected,
            actual: service.version,
        });
    }
    Ok(())
}

//! Networks: create and remove, and the resolution of the network names a
//! service spec gives to the IDs the store keeps.

use flotilla_store::{Command, State};
use flotilla_types::{new_id, validate_name, NetworkSpec, ServiceSpec};

use super::{Control, ControlError};

impl Control {
    /// Creates a network; returns its ID. The store refuses a taken name
    /// or an overlapping subnet; the leader's allocator gives the rest.
    pub async fn create_network(&self, spec: NetworkSpec) -> Result<String, ControlError> {
        validate_network(&spec)?;
        let id = new_id(rand::random());
        self.commit(Command::CreateNetwork {
            id: id.clone(),
            spec,
            at: self.now(),
        })
        .await?;
        Ok(id)
    }

    /// Removes network `name` (refused while in use); returns its ID and
    /// name.
    pub async fn remove_network(&self, name: &str) -> Result<(String, String), ControlError> {
        let (id, full) = self
            .read(|s| s.network(name).map(|n| (n.id.clone(), n.spec.name.clone())))
            .ok_or_else(|| network_not_found(name))?;
        self.commit(Command::RemoveNetwork { id: id.clone() })
            .await?;
        Ok((id, full))
    }
}

/// `network X not found`.
pub fn network_not_found(name: &str) -> ControlError {
    ControlError::NotFound(format!("network {name} not found"))
}

/// The rules of a network spec that the types do not check by parsing.
pub fn validate_network(spec: &NetworkSpec) -> Result<(), ControlError> {
    validate_name(&spec.name).map_err(|e| ControlError::Invalid(format!("network {e}")))?;
    if let Some(bad) = spec.labels.keys().find(|k| k.is_empty() || k.contains('=')) {
        return Err(ControlError::Invalid(format!("invalid label key {bad:?}")));
    }
    Ok(())
}

/// Gives each network of `spec` by the ID of the network it names (an ID
/// or a name). A name that is no network is refused with its name.
pub fn resolve_networks(state: &State, spec: &mut ServiceSpec) -> Result<(), ControlError> {
    for attachment in &mut spec.task.networks {
        let network = state
            .network(&attachment.network)
            .ok_or_else(|| network_not_found(&attachment.network))?;
        attachment.network = network.id.clone();
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::control::testing::{cluster, Fake};
    use flotilla_types::{NetworkAttachment, NodeRole, ServiceMode, TaskTemplate};

    fn spec_on(name: &str, networks: &[&str]) -> ServiceSpec {
        ServiceSpec {
            name: name.into(),
            mode: ServiceMode::Replicated { replicas: 1 },
            task: TaskTemplate {
                command: vec!["sleep".into(), "100".into()],
                networks: networks.iter().map(|n| NetworkAttachment::to(*n)).collect(),
                ..Default::default()
            },
            ..Default::default()
        }
    }

    #[tokio::test]
    async fn a_service_names_networks_and_the_store_keeps_ids() {
        let fake = Fake::new(cluster(&[("m1", NodeRole::Manager)]));
        let control = fake.control();
        let id = control
            .create_network(NetworkSpec::named("front"))
            .await
            .expect("create");
        let svc = control
            .create_service(spec_on("web", &["front"]))
            .await
            .expect("service");
        let stored = control.read(|s| s.services[&svc].spec.task.networks.clone());
        assert_eq!(stored, vec![NetworkAttachment::to(id.clone())]);
        // By ID works as well; an unknown name is refused, naming it.
        assert!(control.create_service(spec_on("api", &[&id])).await.is_ok());
        let err = control
            .create_service(spec_on("db", &["back"]))
            .await
            .unwrap_err();
        assert_eq!(err.to_string(), "network back not found");
        // In use: refused, naming the services.
        let err = control.remove_network("front").await.unwrap_err();
        assert_eq!(
            err.to_string(),
            "network front is in use by services api, web"
        );
    }

    #[tokio::test]
    async fn bad_network_specs_are_refused() {
        let fake = Fake::new(cluster(&[("m1", NodeRole::Manager)]));
        let control = fake.control();
        let err = control
            .create_network(NetworkSpec::named("no spaces"))
            .await
            .unwrap_err();
        assert!(err.to_string().starts_with("network "), "{err}");
        assert!(matches!(
            control.remove_network("nope").await,
            Err(ControlError::NotFound(_))
        ));
    }
}

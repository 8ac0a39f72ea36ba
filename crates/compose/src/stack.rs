//! Stack files in the shape of Compose files, turned into Flotilla
//! service specs.
//!
//! Parsing, interpolation, merging of several files and validation live in
//! the rest of this crate; this module maps its model onto [`ServiceSpec`]s
//! (`to_spec`): a service with `image` runs on the docker driver, one with
//! only `command` on the process driver (`x-flotilla.driver` picks one
//! explicitly), and checks each with [`ServiceSpec::validate`], reporting
//! a broken rule at the line of the key it is about. Keys the model knows
//! but a `ServiceSpec` has no place for (yet) are named in one warning per
//! stack, as `docker stack deploy` names the options it ignores; nothing
//! is dropped silently.
//!
//! Container `labels` have no place of their own in a spec (there are no
//! container labels yet): they become service labels, under `deploy.labels`,
//! which win on the same key.
//!
//! Networks, as `docker stack deploy` makes them: each service joins the
//! networks it names, or the stack's `default` network when it names none;
//! the stack's networks ([`StackNetwork`]) are those its services use (the
//! file may declare `default` to configure it; an unused declaration is
//! named in a warning and not made). Under a stack name
//! ([`Stack::networks_for`], [`Stack::specs_for`]) a network is
//! `STACK_KEY`, unless the file fixes its name (`name:`) or it is
//! external, and service specs name networks by those full names. The
//! service's own short name is not added as an alias: the resolver answers
//! it.
//!
//! Secrets and configs, as `docker stack deploy` makes them: every
//! top-level entry that is not external is the stack's ([`StackSecret`],
//! in [`Stack::secrets`]), named `STACK_KEY` unless the file fixes its
//! name (`name:`) and labelled with [`NAMESPACE_LABEL`]
//! ([`Stack::secrets_for`]); service specs name them by those full names,
//! with the target the key gives by default (`/run/secrets/KEY`, `/KEY`
//! for a config), sorted by name as Swarm sorts them. Their data is read
//! by [`read_secret_data`], all of it before the first is created, and
//! checked against [`MAX_SECRET_BYTES`].

use std::collections::{BTreeMap, BTreeSet};

use flotilla_types::network::NetworkAttachment;
use flotilla_types::{
    validate_name, Driver, FailureAction, HealthCheck, HealthTest, MountKind, NetworkSpec, Ratio,
    ResourceSpec, Resources, SecretData, SecretKind, SecretSpec, ServiceSpec, SpecError,
    TaskTemplate, UpdateConfig, UpdateOrder, DEFAULT_HEALTH_INTERVAL_MS, DEFAULT_HEALTH_RETRIES,
    DEFAULT_HEALTH_TIMEOUT_MS, DEFAULT_STOP_GRACE_MS, MAX_SECRET_BYTES,
};

use crate as compose;
use crate::model::{section_of, SecretDef, SecretSource, DEFAULT_NETWORK};
use crate::{ComposeError, ComposeService};

/// The label Swarm puts on every service of a stack; `stack ls`, `stack rm`
/// and `--prune` find a stack's services by it.
pub const NAMESPACE_LABEL: &str = "com.docker.stack.namespace";

/// Why a stack was refused.
#[derive(Debug, thiserror::Error)]
pub enum StackError {
    #[error("cannot read stack file {path}: {source}")]
    Read {
        path: String,
        #[source]
        source: std::io::Error,
    },
    #[error("{path}: service {service}: {reason}")]
    Service {
        path: String,
        service: String,
        reason: String,
    },
    /// A service the Compose model accepted but no spec can be made of,
    /// at the line of the key that is in the way.
    #[error("{file}:{line}: {key}: {reason}")]
    At {
        file: String,
        line: u64,
        key: String,
        reason: String,
    },
    #[error("{path}: network {network}: {reason}")]
    Network {
        path: String,
        network: String,
        reason: String,
    },
    #[error("{path}: {kind} {key}: {reason}")]
    Secret {
        path: String,
        kind: SecretKind,
        key: String,
        reason: String,
    },
    #[error("invalid stack name {name:?}: {reason}")]
    StackName { name: String, reason: String },
    #[error("no stack file given")]
    NoFiles,
    /// Already names the file (and the line, where there is one).
    #[error(transparent)]
    Compose(#[from] ComposeError),
}

/// A parsed stack: service specs (names not yet prefixed, networks named
/// by their keys), the Compose model they came from (same order), the
/// networks the services use, and warnings about keys that were ignored.
#[derive(Debug, Clone)]
pub struct Stack {
    pub services: Vec<ServiceSpec>,
    pub compose: Vec<ComposeService>,
    /// The top-level named volumes.
    pub volumes: BTreeMap<String, compose::VolumeDef>,
    /// The networks the services use, by key (`default` among them when a
    /// service names none).
    pub networks: Vec<StackNetwork>,
    /// The top-level secrets, then the configs, each by key.
    pub secrets: Vec<StackSecret>,
    pub warnings: Vec<String>,
    /// The first file, which names the stack in messages.
    pub path: String,
}

/// A network of a stack: one the file declares and a service uses, or the
/// stack's `default`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StackNetwork {
    /// Its key in the file (`front`; `default` for the services that name
    /// none).
    pub key: String,
    /// Its name: in [`Stack::networks`] the key, or the name the file fixes
    /// (`name:`, an external network's name); in what
    /// [`Stack::networks_for`] returns the full name on the cluster
    /// ([`StackNetwork::name_in`]).
    pub name: String,
    /// Whether the stack's name prefixes it (`STACK_KEY`): not when the
    /// file fixes the name or the network is external.
    pub scoped: bool,
    /// It exists already: a deploy checks that it does and neither creates
    /// nor removes it.
    pub external: bool,
    /// What a deploy creates when it does not exist (unless external),
    /// named [`StackNetwork::name`]; [`Stack::networks_for`] adds the
    /// stack's [`NAMESPACE_LABEL`].
    pub spec: NetworkSpec,
}

impl StackNetwork {
    /// Its full name on the cluster under the stack name `stack`.
    pub fn name_in(&self, stack: &str) -> String {
        if self.scoped {
            format!("{stack}_{}", self.key)
        } else {
            self.name.clone()
        }
    }
}

/// A secret or config of a stack: a top-level entry of `secrets:` or
/// `configs:`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StackSecret {
    pub kind: SecretKind,
    /// Its key in the file, which services name it by.
    pub key: String,
    /// Its name: in [`Stack::secrets`] the key, or the name the file fixes
    /// (`name:`, an external one's name); in what [`Stack::secrets_for`]
    /// returns the full name on the cluster ([`StackSecret::name_in`]).
    pub name: String,
    /// Whether the stack's name prefixes it (`STACK_KEY`): not when the
    /// file fixes the name or it is external.
    pub scoped: bool,
    /// It exists already: a deploy checks that it does (when a service
    /// uses it) and neither creates nor removes it.
    pub external: bool,
    /// What a deploy creates (unless external): named
    /// [`StackSecret::name`], labelled as the file says;
    /// [`Stack::secrets_for`] adds the stack's [`NAMESPACE_LABEL`].
    pub spec: SecretSpec,
    /// Where the data comes from; `None` exactly when external.
    pub source: Option<SecretSource>,
    /// The file and line of the key that gives the data (`file:`,
    /// `environment:`, `content:`), or of the entry when external, for
    /// errors found once the data is read.
    pub at: (String, u64),
}

impl StackSecret {
    /// Its full name on the cluster under the stack name `stack`.
    pub fn name_in(&self, stack: &str) -> String {
        if self.scoped {
            format!("{stack}_{}", self.key)
        } else {
            self.name.clone()
        }
    }

    /// The key path of what gives its data (`secrets.KEY.file`), or of the
    /// entry.
    pub fn key_path(&self) -> String {
        let entry = format!("{}.{}", section_of(self.kind), self.key);
        match &self.source {
            Some(source) => format!("{entry}.{}", source.key()),
            None => entry,
        }
    }

    fn of(kind: SecretKind, key: &str, def: &SecretDef, files: &[(&str, &str)]) -> StackSecret {
        let name = def.name.clone().unwrap_or_else(|| key.to_string());
        let field = def.source.as_ref().map(SecretSource::key);
        let path: Vec<&str> = [section_of(kind), key].into_iter().chain(field).collect();
        StackSecret {
            kind,
            key: key.to_string(),
            name: name.clone(),
            scoped: def.name.is_none() && !def.external,
            external: def.external,
            spec: SecretSpec {
                name,
                labels: def.labels.clone(),
                template_driver: def.template_driver.clone(),
            },
            source: def.source.clone(),
            // The files name the key once parsed; the first file else.
            at: compose::locate(files, &path).unwrap_or_else(|| {
                let first = files.first().map(|(f, _)| *f).unwrap_or_default();
                (first.to_string(), 0)
            }),
        }
    }
}

/// Reads the data of each secret and config of `secrets` that a deploy
/// creates (the external ones are left out), through `read`, all of them
/// before any is created: a stack that cannot read its third secret
/// creates none. Each must hold 1 to [`MAX_SECRET_BYTES`] bytes. `read`
/// says why a source cannot be read (a missing file, an unset variable);
/// the error names the file and line of the key that gives the data. The
/// data comes back in the order of `secrets`.
pub fn read_secret_data<F>(
    secrets: &[StackSecret],
    mut read: F,
) -> Result<Vec<(&StackSecret, SecretData)>, StackError>
where
    F: FnMut(&SecretSource) -> Result<Vec<u8>, String>,
{
    let mut out = Vec::new();
    for s in secrets {
        let Some(source) = &s.source else {
            continue;
        };
        let at = |reason: String| StackError::At {
            file: s.at.0.clone(),
            line: s.at.1,
            key: s.key_path(),
            reason: compose::one_line(&reason),
        };
        let data = read(source).map_err(at)?;
        let what = match source {
            SecretSource::File(path) => path.clone(),
            SecretSource::Environment(var) => format!("environment variable {var}"),
            SecretSource::Content(_) => "the content".to_string(),
        };
        let noun = s.kind.noun();
        if data.len() > MAX_SECRET_BYTES {
            return Err(at(format!(
                "{what} holds more than {MAX_SECRET_BYTES} bytes: a {noun} holds at most {MAX_SECRET_BYTES} bytes (500 KB)"
            )));
        }
        if data.is_empty() {
            return Err(at(format!(
                "{what} is empty: a {noun} holds at least 1 byte"
            )));
        }
        out.push((s, SecretData(data)));
    }
    Ok(out)
}

fn check_stack_name(stack: &str) -> Result<(), StackError> {
    validate_name(stack).map_err(|e| StackError::StackName {
        name: stack.to_string(),
        reason: e.to_string(),
    })
}

impl Stack {
    /// The stack's networks as deployed under the stack name `stack`:
    /// named [`StackNetwork::name_in`] (checked as the daemon checks a
    /// name), those to create labelled with [`NAMESPACE_LABEL`], each full
    /// name once. Two keys may name one network (`name:`) if they ask for
    /// the same one.
    pub fn networks_for(&self, stack: &str) -> Result<Vec<StackNetwork>, StackError> {
        check_stack_name(stack)?;
        let mut out: Vec<StackNetwork> = Vec::new();
        for n in &self.networks {
            let mut n = n.clone();
            n.name = n.name_in(stack);
            validate_name(&n.name).map_err(|e| StackError::Network {
                path: self.path.clone(),
                network: n.key.clone(),
                reason: format!("network name {:?}: {e}", n.name),
            })?;
            n.spec.name = n.name.clone();
            if !n.external {
                n.spec
                    .labels
                    .insert(NAMESPACE_LABEL.to_string(), stack.to_string());
            }
            match out.iter().find(|o| o.name == n.name) {
                Some(o) if o.external == n.external && o.spec == n.spec => {}
                Some(o) => {
                    return Err(StackError::Network {
                        path: self.path.clone(),
                        network: n.key.clone(),
                        reason: format!(
                            "it and network {} are both named {}, with different options",
                            o.key, n.name
                        ),
                    })
                }
                None => out.push(n),
            }
        }
        Ok(out)
    }

    /// The stack's secrets and configs as deployed under the stack name
    /// `stack`: named [`StackSecret::name_in`] (checked as the daemon checks
    /// a name), those to create labelled with [`NAMESPACE_LABEL`], each
    /// full name of a kind once. Two keys may name one (`name:`) if they
    /// ask for the same one.
    pub fn secrets_for(&self, stack: &str) -> Result<Vec<StackSecret>, StackError> {
        check_stack_name(stack)?;
        let mut out: Vec<StackSecret> = Vec::new();
        for s in &self.secrets {
            let mut s = s.clone();
            s.name = s.name_in(stack);
            let bad = |reason: String| StackError::Secret {
                path: self.path.clone(),
                kind: s.kind,
                key: s.key.clone(),
                reason,
            };
            validate_name(&s.name).map_err(|e| bad(format!("name {:?}: {e}", s.name)))?;
            s.spec.name = s.name.clone();
            if !s.external {
                s.spec
                    .labels
                    .insert(NAMESPACE_LABEL.to_string(), stack.to_string());
            }
            match out.iter().find(|o| o.kind == s.kind && o.name == s.name) {
                Some(o) if o.external == s.external && o.spec == s.spec && o.source == s.source => {
                }
                Some(o) => {
                    return Err(bad(format!(
                        "it and {} {} are both named {}, with different data or labels",
                        o.kind, o.key, s.name
                    )))
                }
                None => out.push(s),
            }
        }
        Ok(out)
    }

    /// The specs as deployed under the stack name `stack`: named
    /// `STACK_SERVICE`, labelled with [`NAMESPACE_LABEL`], their networks
    /// named by their full names (in the order of those names, as Swarm
    /// sorts them), and so their secrets and configs (sorted by those
    /// names, then by target).
    pub fn specs_for(&self, stack: &str) -> Result<Vec<ServiceSpec>, StackError> {
        check_stack_name(stack)?;
        self.services
            .iter()
            .map(|spec| {
                let mut spec = spec.clone();
                let full = format!("{stack}_{}", spec.name);
                validate_name(&full).map_err(|e| StackError::Service {
                    path: self.path.clone(),
                    service: spec.name.clone(),
                    reason: format!("service name {full:?}: {e}"),
                })?;
                spec.name = full;
                spec.labels
                    .insert(NAMESPACE_LABEL.to_string(), stack.to_string());
                // Named volumes are the stack's own, STACK_KEY, unless the
                // file fixes their name (name:, external: true), as in Swarm.
                for m in &mut spec.task.mounts {
                    if m.kind == MountKind::Volume && !m.source.is_empty() {
                        m.source = match self.volumes.get(&m.source).and_then(|d| d.name.clone()) {
                            Some(fixed) => fixed,
                            None => format!("{stack}_{}", m.source),
                        };
                    }
                }
                for a in &mut spec.task.networks {
                    if let Some(n) = self.networks.iter().find(|n| n.key == a.network) {
                        a.network = n.name_in(stack);
                    }
                }
                spec.task.networks.sort_by(|a, b| a.network.cmp(&b.network));
                for (kind, refs) in [
                    (SecretKind::Secret, &mut spec.task.secrets),
                    (SecretKind::Config, &mut spec.task.configs),
                ] {
                    for r in refs.iter_mut() {
                        if let Some(s) = self
                            .secrets
                            .iter()
                            .find(|s| s.kind == kind && s.key == r.source)
                        {
                            r.source = s.name_in(stack);
                        }
                    }
                    refs.sort_by(|a, b| (&a.source, &a.target).cmp(&(&b.source, &b.target)));
                }
                Ok(spec)
            })
            .collect()
    }
}

/// Parses stack file text. `path` names the file in messages and locates
/// the `.env` file and `env_file` entries.
pub fn parse_stack(path: &str, text: &str) -> Result<Stack, StackError> {
    parse_stack_files(&[(path, text)])
}

/// Parses several stack files, later ones merged over earlier ones (see
/// [`compose::yaml::merge`]). Variables come from the process environment
/// over the `.env` file beside the first file.
pub fn parse_stack_files(files: &[(&str, &str)]) -> Result<Stack, StackError> {
    let first = files.first().ok_or(StackError::NoFiles)?.0;
    let vars = compose::variables_for(compose::dir_of(first))?;
    let parsed = compose::parse_compose(files, &vars)?;
    let mut warnings = parsed.warnings;
    let mut ignored = Ignored::default();
    let mut services = Vec::new();
    for svc in &parsed.services {
        let spec = to_spec(svc, &mut ignored)
            .and_then(|spec| match spec.validate() {
                Ok(()) => Ok(spec),
                Err(e) => Err(refusal(&e)),
            })
            .map_err(|(key, reason)| {
                let key = if key.is_empty() {
                    format!("services.{}", svc.name)
                } else {
                    format!("services.{}.{key}", svc.name)
                };
                let parts: Vec<&str> = key.split('.').collect();
                match compose::locate(files, &parts) {
                    Some((file, line)) => StackError::At {
                        file,
                        line,
                        key,
                        reason,
                    },
                    None => StackError::Service {
                        path: first.to_string(),
                        service: svc.name.clone(),
                        reason: format!("{key}: {reason}"),
                    },
                }
            })?;
        services.push(spec);
    }
    if let Some(w) = ignored.warning() {
        warnings.push(w);
    }
    let networks = stack_networks(&parsed.networks, &parsed.services, &mut warnings);
    let secrets = parsed
        .secrets
        .iter()
        .map(|(k, d)| StackSecret::of(SecretKind::Secret, k, d, files))
        .chain(
            parsed
                .configs
                .iter()
                .map(|(k, d)| StackSecret::of(SecretKind::Config, k, d, files)),
        )
        .collect();
    Ok(Stack {
        services,
        compose: parsed.services,
        volumes: parsed.volumes,
        networks,
        secrets,
        warnings,
        path: first.to_string(),
    })
}

/// The networks `services` use, from their declarations (`default` needs
/// none); declared networks no service uses are named in a warning, and
/// not made, as `docker stack deploy` makes only the networks its services
/// use.
fn stack_networks(
    defs: &BTreeMap<String, compose::NetworkDef>,
    services: &[ComposeService],
    warnings: &mut Vec<String>,
) -> Vec<StackNetwork> {
    let mut used: BTreeSet<&str> = BTreeSet::new();
    for s in services {
        if s.networks.is_empty() && !s.host_network {
            used.insert(DEFAULT_NETWORK);
        }
        used.extend(s.networks.keys().map(String::as_str));
    }
    let unused: Vec<&str> = defs
        .keys()
        .map(String::as_str)
        .filter(|k| !used.contains(k))
        .collect();
    if !unused.is_empty() {
        warnings.push(format!(
            "Not creating networks no service uses: {}",
            unused.join(", ")
        ));
    }
    used.into_iter()
        .map(|key| {
            let def = defs.get(key).cloned().unwrap_or_default();
            let scoped = def.name.is_none() && !def.external;
            let name = def.name.clone().unwrap_or_else(|| key.to_string());
            StackNetwork {
                key: key.to_string(),
                name: name.clone(),
                scoped,
                external: def.external,
                spec: NetworkSpec {
                    name,
                    labels: def.labels,
                    driver: def.driver,
                    internal: def.internal,
                    attachable: def.attachable,
                    encrypted: def.encrypted,
                    subnet: def.subnet,
                },
            }
        })
        .collect()
}

/// Keys that were set but have no place in a spec yet, with the services
/// that set them, in the order first seen.
#[derive(Debug, Default)]
struct Ignored(Vec<(&'static str, Vec<String>)>);

impl Ignored {
    fn note(&mut self, key: &'static str, service: &str) {
        match self.0.iter_mut().find(|(k, _)| *k == key) {
            Some((_, services)) => services.push(service.to_string()),
            None => self.0.push((key, vec![service.to_string()])),
        }
    }

    fn warning(&self) -> Option<String> {
        if self.0.is_empty() {
            return None;
        }
        let keys: Vec<String> = self
            .0
            .iter()
            .map(|(k, s)| format!("{k} ({})", s.join(", ")))
            .collect();
        Some(format!(
            "Ignoring options Flotilla does not act on yet: {}",
            keys.join(", ")
        ))
    }
}

/// Why a service has no spec: the key (below the service) in the way, and
/// the reason.
type Refusal = (&'static str, String);

/// A broken rule of the spec as the key of the Compose service it comes
/// from, in Compose's words where a test of this crate pins them.
fn refusal(e: &SpecError) -> Refusal {
    let key = match e {
        SpecError::Name(_) => "",
        SpecError::TooManyReplicas(_) => "deploy.replicas",
        SpecError::JobRestartsAny => "deploy.restart_policy.condition",
        SpecError::NoCommand => {
            return (
                "",
                "nothing to run: give `image` for a container, or `command` for a process".into(),
            )
        }
        SpecError::EmptyProgram | SpecError::NulInCommand => "command",
        SpecError::NoImage => return ("image", "the docker driver needs an `image`".into()),
        SpecError::ImageNeedsDocker => "image",
        SpecError::InitNeedsDocker => {
            return (
                "init",
                "init: true applies to containers (give `image`)".into(),
            )
        }
        SpecError::MountsNeedDocker => {
            return (
                "volumes",
                "volumes apply to containers (give `image`)".into(),
            )
        }
        SpecError::MountTarget(_) | SpecError::BindSource(_) => "volumes",
        SpecError::ImageHealthNeedsDocker => {
            return (
                "healthcheck",
                "without `test` it uses the image's own check, and a process has no image".into(),
            )
        }
        SpecError::HealthTiming => "healthcheck",
        SpecError::HealthPort | SpecError::HealthPath(_) | SpecError::HealthCommand => {
            "healthcheck.test"
        }
        SpecError::FailureRatio {
            config: "rollback", ..
        } => "deploy.rollback_config.max_failure_ratio",
        SpecError::FailureRatio { .. } => "deploy.update_config.max_failure_ratio",
        SpecError::RollbackFailureAction => "deploy.rollback_config.failure_action",
        SpecError::EnvName(_) => "environment",
        SpecError::PortNumber(_) | SpecError::DuplicatePublished(_) => "ports",
        SpecError::NetworkEmpty | SpecError::DuplicateNetwork(_) | SpecError::Alias(_) => {
            "networks"
        }
        SpecError::NeedsDocker(field) => {
            let key = container_key(field);
            return (key, format!("{key} applies to containers (give `image`)"));
        }
        SpecError::Template { field, .. } | SpecError::Capability(field, _) => container_key(field),
        SpecError::User(_) => "user",
        SpecError::WorkingDir(_) => "working_dir",
        SpecError::StopSignal(_) => "stop_signal",
        SpecError::Sysctl(_) => "sysctls",
        SpecError::Ulimit(_) => "ulimits",
        SpecError::ExtraHost(_) => "extra_hosts",
        SpecError::Dns(_) => "dns",
        SpecError::DnsSearch(_) => "dns_search",
        SpecError::LogDriver(_) => "logging",
        SpecError::PropagationNeedsBind(_) => "volumes",
        SpecError::PlacementPreference(_) => "deploy.placement.preferences",
    };
    (key, e.to_string())
}

/// The Compose key of a task template's field of how a task runs.
fn container_key(field: &str) -> &'static str {
    match field {
        "task.hostname" => "hostname",
        "task.read_only" => "read_only",
        "task.shm_size_bytes" => "shm_size",
        "task.sysctls" => "sysctls",
        "task.cap_add" => "cap_add",
        "task.cap_drop" => "cap_drop",
        "task.ulimits" => "ulimits",
        "task.extra_hosts" => "extra_hosts",
        "task.dns" => "dns",
        "task.dns_search" => "dns_search",
        "task.logging" => "logging",
        "task.env" => "environment",
        "task.mounts" => "volumes",
        _ => "",
    }
}

/// The spec of a Compose service, before [`ServiceSpec::validate`].
fn to_spec(svc: &ComposeService, ignored: &mut Ignored) -> Result<ServiceSpec, Refusal> {
    let driver = match svc.driver.as_deref() {
        Some("process") => Driver::Process,
        Some("docker") => Driver::Docker,
        Some(other) => {
            return Err((
                "x-flotilla.driver",
                format!("{other:?} is neither process nor docker"),
            ))
        }
        None if svc.image.is_some() => Driver::Docker,
        None => Driver::Process,
    };
    let (image, command, entrypoint) = match driver {
        Driver::Docker => (
            svc.image.clone(),
            svc.command.clone().unwrap_or_default(),
            svc.entrypoint.clone(),
        ),
        Driver::Process => {
            if svc.image.is_some() {
                ignored.note("image", &svc.name);
            }
            // A process has no image to hold an entrypoint: the two make up
            // its command line, as they would a container's.
            let mut command = svc.entrypoint.clone().unwrap_or_default();
            command.extend(svc.command.iter().flatten().cloned());
            (None, command, None)
        }
    };
    let health = svc
        .healthcheck
        .as_ref()
        .map(|h| health(h, &svc.name, ignored))
        .transpose()?;
    let d = &svc.deploy;
    let mut labels: BTreeMap<String, String> = svc.labels.clone();
    labels.extend(d.labels.clone());
    // By key here; `Stack::specs_for` gives the full names.
    let networks: Vec<NetworkAttachment> = if svc.host_network {
        Vec::new()
    } else if svc.networks.is_empty() {
        vec![NetworkAttachment::to(DEFAULT_NETWORK)]
    } else {
        svc.networks
            .iter()
            .map(|(key, n)| NetworkAttachment {
                network: key.clone(),
                aliases: n.aliases.clone(),
            })
            .collect()
    };
    Ok(ServiceSpec {
        name: svc.name.clone(),
        mode: d.mode,
        labels,
        task: TaskTemplate {
            driver,
            image,
            command,
            entrypoint,
            env: svc.environment.clone(),
            // A job's tasks run to completion: restarted on failure
            // unless the file says otherwise, as Docker does.
            restart: d.restart_policy.clone().unwrap_or_else(|| {
                if d.mode.is_job() {
                    flotilla_types::RestartPolicy {
                        condition: flotilla_types::RestartCondition::OnFailure,
                        ..Default::default()
                    }
                } else {
                    Default::default()
                }
            }),
            stop_grace_period_ms: svc.stop_grace_period_ms.unwrap_or(DEFAULT_STOP_GRACE_MS),
            constraints: d.constraints.clone(),
            preferences: d
                .spread
                .iter()
                .map(|s| flotilla_types::PlacementPreference::spread(s.as_str()))
                .collect(),
            max_replicas_per_node: d.max_replicas_per_node.unwrap_or(0),
            health,
            resources: ResourceSpec {
                limits: resources(&d.limits),
                reservations: resources(&d.reservations),
            },
            init: svc.init.unwrap_or(false),
            mounts: svc.volumes.clone(),
            ports: svc.ports.clone(),
            networks,
            secrets: svc.secrets.clone(),
            configs: svc.configs.clone(),
            hostname: svc.hostname.clone(),
            user: svc.user.clone(),
            working_dir: svc.working_dir.clone(),
            stop_signal: svc.stop_signal.clone(),
            read_only: svc.read_only.unwrap_or(false),
            shm_size_bytes: svc.shm_size.unwrap_or(0),
            sysctls: svc.sysctls.clone(),
            cap_add: svc.cap_add.clone(),
            cap_drop: svc.cap_drop.clone(),
            ulimits: svc.ulimits.clone(),
            extra_hosts: svc.extra_hosts.clone(),
            dns: svc.dns.clone(),
            dns_search: svc.dns_search.clone(),
            logging: svc.logging.clone(),
            ..TaskTemplate::default()
        },
        update: update_config(d.update_config.as_ref(), false)?,
        rollback: update_config(d.rollback_config.as_ref(), true)?,
        mesh: Default::default(),
        endpoint_mode: d.endpoint_mode.unwrap_or_default(),
    })
}

fn resources(r: &compose::Resources) -> Resources {
    Resources {
        nano_cpus: r.nano_cpus.unwrap_or(0),
        memory_bytes: r.memory_bytes.unwrap_or(0),
    }
}

/// Compose's `healthcheck` as a spec's, with Docker's default timings for
/// what is not given.
fn health(
    h: &compose::Healthcheck,
    service: &str,
    ignored: &mut Ignored,
) -> Result<HealthCheck, Refusal> {
    if h.start_interval_ms.is_some() {
        ignored.note("healthcheck.start_interval", service);
    }
    let test = if h.disable {
        HealthTest::None
    } else {
        let bad_test = |reason: String| ("healthcheck.test", reason);
        match h.test.split_first() {
            None => HealthTest::Image,
            Some((kind, rest)) => match kind.as_str() {
                "CMD" if rest.is_empty() => {
                    return Err(bad_test("CMD needs a command after it".into()))
                }
                "CMD" => HealthTest::Exec {
                    argv: rest.to_vec(),
                },
                "CMD-SHELL" if rest.join(" ").trim().is_empty() => {
                    return Err(bad_test("CMD-SHELL needs a command after it".into()))
                }
                "CMD-SHELL" => HealthTest::Shell {
                    command: rest.join(" "),
                },
                "NONE" => HealthTest::None,
                other => {
                    return Err(bad_test(format!(
                        "a list must start with CMD, CMD-SHELL or NONE, not {other:?}"
                    )))
                }
            },
        }
    };
    // 0 means Docker's default, as in Docker.
    let positive = |v: Option<u64>, default: u64| match v {
        None | Some(0) => default,
        Some(ms) => ms,
    };
    let retries = match h.retries {
        None => DEFAULT_HEALTH_RETRIES,
        Some(r) => {
            u32::try_from(r).map_err(|_| ("healthcheck.retries", format!("{r} is too large")))?
        }
    };
    Ok(HealthCheck {
        test,
        interval_ms: positive(h.interval_ms, DEFAULT_HEALTH_INTERVAL_MS),
        timeout_ms: positive(h.timeout_ms, DEFAULT_HEALTH_TIMEOUT_MS),
        retries,
        start_period_ms: h.start_period_ms.unwrap_or(0),
    })
}

/// `update_config` (or, with `rollback`, `rollback_config`) over Swarm's
/// defaults. The Compose model already checked the values; these errors are
/// a second line of defence, and the ranges are the spec's own rules.
fn update_config(
    u: Option<&compose::UpdateConfig>,
    rollback: bool,
) -> Result<UpdateConfig, Refusal> {
    let key = |update: &'static str, rollback_key: &'static str| {
        if rollback {
            rollback_key
        } else {
            update
        }
    };
    let mut out = UpdateConfig::default();
    let Some(u) = u else {
        return Ok(out);
    };
    if let Some(p) = u.parallelism {
        out.parallelism = p;
    }
    if let Some(d) = u.delay_ms {
        out.delay_ms = d;
    }
    if let Some(m) = u.monitor_ms {
        out.monitor_ms = m;
    }
    if let Some(a) = &u.failure_action {
        out.failure_action = FailureAction::parse(a).ok_or_else(|| {
            (
                key(
                    "deploy.update_config.failure_action",
                    "deploy.rollback_config.failure_action",
                ),
                format!("{a:?} is not continue, pause or rollback"),
            )
        })?;
    }
    if let Some(r) = u.max_failure_ratio {
        out.max_failure_ratio = Ratio(r);
    }
    if let Some(o) = &u.order {
        out.order = UpdateOrder::parse(o).ok_or_else(|| {
            (
                key("deploy.update_config.order", "deploy.rollback_config.order"),
                format!("{o:?} is not stop-first or start-first"),
            )
        })?;
    }
    Ok(out)
}

/// Reads and parses a stack file.
pub fn load_stack(path: &str) -> Result<Stack, StackError> {
    load_stack_files(&[path])
}

fn read_files(paths: &[&str]) -> Result<Vec<String>, StackError> {
    paths
        .iter()
        .map(|path| {
            std::fs::read_to_string(path).map_err(|source| StackError::Read {
                path: path.to_string(),
                source,
            })
        })
        .collect()
}

/// Reads and parses several stack files, later ones over earlier ones.
pub fn load_stack_files(paths: &[&str]) -> Result<Stack, StackError> {
    let texts = read_files(paths)?;
    let files: Vec<(&str, &str)> = paths
        .iter()
        .copied()
        .zip(texts.iter().map(String::as_str))
        .collect();
    parse_stack_files(&files)
}

/// The merged, interpolated Compose YAML of several files (`stack config`),
/// once the stack passed every check a deploy makes; and its warnings.
pub fn config_yaml(paths: &[&str]) -> Result<(String, Vec<String>), StackError> {
    let texts = read_files(paths)?;
    let files: Vec<(&str, &str)> = paths
        .iter()
        .copied()
        .zip(texts.iter().map(String::as_str))
        .collect();
    let stack = parse_stack_files(&files)?;
    let first = files.first().ok_or(StackError::NoFiles)?.0;
    let vars = compose::variables_for(compose::dir_of(first))?;
    Ok((compose::merged_yaml(&files, &vars)?, stack.warnings))
}

#[cfg(test)]
mod tests {
    use super::*;
    use flotilla_types::{Mount, PortConfig, Protocol, PublishMode, RestartCondition, ServiceMode};

    const EXAMPLE: &str = r#"
services:
  web:
    command: ["sh", "-c", "echo hello; sleep 100000"]
    environment:
      GREETING: hi
      COUNT: 3
    deploy:
      replicas: 3
      restart_policy:
        condition: on-failure
        delay: 1s
        max_attempts: 5
        window: 1m
      placement:
        constraints: ["node.role==manager"]
    stop_grace_period: 2s
    x-flotilla:
      driver: process
  agent:
    command: sleep 100000
    environment: ["A=1", "B=two words"]
    deploy:
      mode: global
    ports: ["80:80"]
"#;

    #[test]
    fn parses_the_compose_shape() {
        let stack = parse_stack("example.yml", EXAMPLE).expect("parse");
        assert_eq!(stack.services.len(), 2);
        let web = stack
            .services
            .iter()
            .find(|s| s.name == "web")
            .expect("web");
        assert_eq!(web.mode, ServiceMode::Replicated { replicas: 3 });
        assert_eq!(web.task.command, ["sh", "-c", "echo hello; sleep 100000"]);
        assert_eq!(web.task.env["COUNT"], "3");
        assert_eq!(web.task.restart.condition, RestartCondition::OnFailure);
        assert_eq!(web.task.restart.delay_ms, 1_000);
        assert_eq!(web.task.restart.max_attempts, 5);
        assert_eq!(web.task.restart.window_ms, 60_000);
        assert_eq!(web.task.stop_grace_period_ms, 2_000);
        assert_eq!(web.task.constraints[0].to_string(), "node.role==manager");
        let agent = stack
            .services
            .iter()
            .find(|s| s.name == "agent")
            .expect("agent");
        assert_eq!(agent.mode, ServiceMode::Global);
        assert_eq!(agent.task.command, ["sleep", "100000"]);
        assert_eq!(agent.task.env["B"], "two words");
        assert_eq!(
            agent.task.ports,
            [PortConfig {
                published: Some(80),
                ..PortConfig::target(80)
            }]
        );
        assert!(stack.warnings.is_empty(), "{:?}", stack.warnings);
    }

    #[test]
    fn volumes_become_mounts_and_named_ones_belong_to_the_stack() {
        let text = "services:\n  db:\n    image: pg:16\n    volumes:\n      - data:/var/lib/data\n      - ./conf:/etc/app:ro\n      - /srv/logs:/logs\n      - /scratch\n      - type: tmpfs\n        target: /tmp\n      - {type: volume, source: shared, target: /shared, read_only: true}\nvolumes:\n  data:\n  shared:\n    external: true\n";
        let stack = parse_stack("/stacks/app/s.yml", text).expect("parse");
        let specs = stack.specs_for("app").expect("specs");
        let m = &specs[0].task.mounts;
        let mount = |kind, source: &str, target: &str, read_only| Mount {
            kind,
            source: source.into(),
            target: target.into(),
            read_only,
            propagation: None,
        };
        assert_eq!(
            m,
            &vec![
                mount(MountKind::Volume, "app_data", "/var/lib/data", false),
                mount(MountKind::Bind, "/stacks/app/conf", "/etc/app", true),
                mount(MountKind::Bind, "/srv/logs", "/logs", false),
                mount(MountKind::Volume, "", "/scratch", false),
                mount(MountKind::Tmpfs, "", "/tmp", false),
                mount(MountKind::Volume, "shared", "/shared", true),
            ]
        );
        assert_eq!(
            bad_one("services:\n  db:\n    image: pg:16\n    volumes:\n      - data:/d\n"),
            "s.yml:5: services.db.volumes: undefined volume \"data\": declare it under the top-level volumes"
        );
        assert!(
            bad_one("services:\n  db:\n    image: pg:16\n    volumes: [\"/a:relative\"]\n")
                .contains("services.db.volumes[0]: target \"relative\" must be an absolute path")
        );
        assert!(
            bad_one("services:\n  db:\n    image: pg:16\n    volumes: [\"/a:/b:rx\"]\n")
                .contains("invalid volume mode \"rx\"")
        );
        assert!(
            bad_one("services:\n  db:\n    command: x\n    volumes: [\"/a:/b\"]\n")
                .contains("services.db.volumes: volumes apply to containers")
        );
        // A later file replaces the entry at the same target.
        let over = "services:\n  db:\n    volumes: [\"/other:/var/lib/data\"]\n";
        let merged = parse_stack_files(&[("/s/a.yml", text), ("/s/b.yml", over)]).expect("merge");
        let m = &merged.services[0].task.mounts;
        assert_eq!(m.len(), 6);
        assert!(m.contains(&mount(MountKind::Bind, "/other", "/var/lib/data", false)));
    }

    #[test]
    fn init_runs_containers_under_the_engines_init() {
        let (s, _) = one("services:\n  web:\n    image: app:1\n    init: true\n");
        assert!(s.task.init);
        let (s, _) = one("services:\n  web:\n    image: app:1\n");
        assert!(!s.task.init);
        assert!(
            bad_one("services:\n  web:\n    command: x\n    init: true\n")
                .contains("services.web.init: init: true applies to containers")
        );
        assert!(bad_one("services:\n  web:\n    image: app:1\n    init: maybe\n").contains("init"));
    }

    /// A container service with `key` (its YAML under the service).
    fn container_with(key: &str) -> (ServiceSpec, Vec<String>) {
        one(&format!("services:\n  web:\n    image: app:1\n{key}"))
    }

    #[test]
    fn hostname_is_a_template() {
        let (s, w) = container_with("    hostname: \"{{.Service.Name}}-{{.Task.Slot}}\"\n");
        assert_eq!(
            s.task.hostname.as_deref(),
            Some("{{.Service.Name}}-{{.Task.Slot}}")
        );
        assert!(w.is_empty(), "{w:?}");
        assert!(
            bad_one("services:\n  web:\n    image: app:1\n    hostname: \"{{.Task.Nope}}\"\n")
                .starts_with(
                    "s.yml:4: services.web.hostname: hostname: unknown placeholder {{.Task.Nope}}"
                )
        );
        // Templates in environment values and mount sources too.
        let e = bad_one(
            "services:\n  web:\n    image: app:1\n    environment:\n      A: \"{{.Oops}}\"\n",
        );
        assert!(
            e.starts_with(
                "s.yml:4: services.web.environment: environment variable A: unknown placeholder"
            ),
            "{e}"
        );
        let (s, _) = container_with("    environment:\n      WHERE: \"{{.Node.Hostname}}\"\n    volumes: [\"/srv/{{.Task.Slot}}:/data\"]\n");
        assert_eq!(s.task.env["WHERE"], "{{.Node.Hostname}}");
        assert_eq!(s.task.mounts[0].source, "/srv/{{.Task.Slot}}");
        assert_eq!(
            bad_one("services:\n  web:\n    command: x\n    hostname: h\n"),
            "s.yml:4: services.web.hostname: hostname applies to containers (give `image`)"
        );
    }

    #[test]
    fn user_working_dir_and_stop_signal_apply_to_containers_and_processes() {
        let (s, _) = container_with(
            "    user: \"1000:1000\"\n    working_dir: /srv\n    stop_signal: SIGINT\n",
        );
        assert_eq!(s.task.user.as_deref(), Some("1000:1000"));
        assert_eq!(s.task.working_dir.as_deref(), Some("/srv"));
        assert_eq!(s.task.stop_signal.as_deref(), Some("SIGINT"));
        let (p, w) = one("services:\n  job:\n    command: x\n    user: 1000\n    working_dir: /tmp\n    stop_signal: SIGQUIT\n");
        assert_eq!(p.task.driver, Driver::Process);
        assert_eq!(p.task.user.as_deref(), Some("1000"));
        assert_eq!(p.task.stop_signal.as_deref(), Some("SIGQUIT"));
        assert!(w.is_empty(), "{w:?}");
        assert_eq!(
            bad_one("services:\n  web:\n    image: a\n    stop_signal: SIGNOPE\n"),
            "s.yml:4: services.web.stop_signal: invalid stop signal \"SIGNOPE\": expected a name such as SIGINT, or a number from 1 to 64"
        );
        assert_eq!(
            bad_one("services:\n  web:\n    image: a\n    working_dir: srv\n"),
            "s.yml:4: services.web.working_dir: working directory \"srv\" must be an absolute path"
        );
        assert!(
            bad_one("services:\n  web:\n    image: a\n    user: \"a b\"\n")
                .starts_with("s.yml:4: services.web.user: invalid user")
        );
    }

    #[test]
    fn read_only_and_shm_size() {
        let (s, _) = container_with("    read_only: true\n    shm_size: 64m\n");
        assert!(s.task.read_only);
        assert_eq!(s.task.shm_size_bytes, 64 << 20);
        let (s, _) = container_with("    shm_size: 1048576\n");
        assert_eq!(s.task.shm_size_bytes, 1 << 20);
        assert!(
            bad_one("services:\n  web:\n    image: a\n    shm_size: lots\n")
                .starts_with("s.yml:4: services.web.shm_size: invalid size \"lots\"")
        );
        assert_eq!(
            bad_one("services:\n  web:\n    command: x\n    read_only: true\n"),
            "s.yml:4: services.web.read_only: read_only applies to containers (give `image`)"
        );
        assert_eq!(
            bad_one("services:\n  web:\n    command: x\n    shm_size: 1m\n"),
            "s.yml:4: services.web.shm_size: shm_size applies to containers (give `image`)"
        );
    }

    #[test]
    fn sysctls_in_both_forms() {
        let (s, _) = container_with(
            "    sysctls:\n      net.core.somaxconn: 1024\n      net.ipv4.tcp_syncookies: 0\n",
        );
        assert_eq!(s.task.sysctls["net.core.somaxconn"], "1024");
        assert_eq!(s.task.sysctls["net.ipv4.tcp_syncookies"], "0");
        let (s, _) = container_with("    sysctls:\n      - net.core.somaxconn=1024\n");
        assert_eq!(s.task.sysctls["net.core.somaxconn"], "1024");
        assert_eq!(
            bad_one("services:\n  web:\n    image: a\n    sysctls: [net.core.somaxconn]\n"),
            "s.yml:4: services.web.sysctls.net.core.somaxconn: sysctl net.core.somaxconn needs a value"
        );
        assert!(
            bad_one("services:\n  web:\n    image: a\n    sysctls: {\"bad name\": 1}\n")
                .starts_with("s.yml:4: services.web.sysctls: invalid sysctl \"bad name\"")
        );
    }

    #[test]
    fn capabilities() {
        let (s, _) = container_with("    cap_add: [NET_ADMIN, SYS_TIME]\n    cap_drop: [ALL]\n");
        assert_eq!(s.task.cap_add, ["NET_ADMIN", "SYS_TIME"]);
        assert_eq!(s.task.cap_drop, ["ALL"]);
        assert!(bad_one(
            "services:\n  web:\n    image: a\n    cap_add: [NET_ADMIN]\n    cap_drop: [NOPE]\n"
        )
        .starts_with("s.yml:5: services.web.cap_drop: unknown capability \"NOPE\""));
        assert_eq!(
            bad_one("services:\n  web:\n    command: x\n    cap_add: [NET_ADMIN]\n"),
            "s.yml:4: services.web.cap_add: cap_add applies to containers (give `image`)"
        );
    }

    #[test]
    fn ulimits_short_and_long() {
        let (s, _) = container_with("    ulimits:\n      nproc: 65535\n      nofile:\n        soft: 20000\n        hard: 40000\n");
        assert_eq!(
            s.task.ulimits,
            [
                flotilla_types::Ulimit {
                    name: "nproc".into(),
                    soft: 65535,
                    hard: 65535
                },
                flotilla_types::Ulimit {
                    name: "nofile".into(),
                    soft: 20000,
                    hard: 40000
                }
            ]
        );
        assert_eq!(
            bad_one("services:\n  web:\n    image: a\n    ulimits:\n      nofile: {soft: 2, hard: 1}\n"),
            "s.yml:5: services.web.ulimits.nofile: ulimit nofile: the soft limit 2 is above the hard limit 1"
        );
        assert!(
            bad_one("services:\n  web:\n    image: a\n    ulimits:\n      nofiles: 1\n")
                .starts_with("s.yml:5: services.web.ulimits.nofiles: unknown ulimit \"nofiles\"")
        );
        assert_eq!(
            bad_one("services:\n  web:\n    image: a\n    ulimits:\n      nofile: {soft: 2}\n"),
            "s.yml:5: services.web.ulimits.nofile: expected both soft and hard"
        );
    }

    #[test]
    fn extra_hosts_as_a_list_or_a_mapping() {
        let host = |name: &str, ip: &str| flotilla_types::ExtraHost {
            name: name.into(),
            ip: ip.into(),
        };
        let (s, _) = container_with(
            "    extra_hosts: [\"myhost:10.1.2.3\", \"other=10.0.0.9\", \"v6:::1\"]\n",
        );
        assert_eq!(
            s.task.extra_hosts,
            [
                host("myhost", "10.1.2.3"),
                host("other", "10.0.0.9"),
                host("v6", "::1")
            ]
        );
        let (s, _) = container_with("    extra_hosts:\n      myhost: 10.1.2.3\n");
        assert_eq!(s.task.extra_hosts, [host("myhost", "10.1.2.3")]);
        assert_eq!(
            bad_one("services:\n  web:\n    image: a\n    extra_hosts: [\"myhost:nope\"]\n"),
            "s.yml:4: services.web.extra_hosts[0]: host myhost: \"nope\" is not an IP address"
        );
    }

    #[test]
    fn dns_and_search_domains() {
        let (s, _) = container_with("    dns: 10.0.0.53\n    dns_search: example.org\n");
        assert_eq!(s.task.dns, ["10.0.0.53"]);
        assert_eq!(s.task.dns_search, ["example.org"]);
        let (s, _) = container_with(
            "    dns: [10.0.0.53, 10.0.0.54]\n    dns_search: [a.example, b.example]\n",
        );
        assert_eq!(s.task.dns, ["10.0.0.53", "10.0.0.54"]);
        assert_eq!(s.task.dns_search, ["a.example", "b.example"]);
        assert_eq!(
            bad_one("services:\n  web:\n    image: a\n    dns: dns.example\n"),
            "s.yml:4: services.web.dns: invalid DNS server \"dns.example\": expected an IP address"
        );
        assert_eq!(
            bad_one("services:\n  web:\n    command: x\n    dns_search: example.org\n"),
            "s.yml:4: services.web.dns_search: dns_search applies to containers (give `image`)"
        );
    }

    #[test]
    fn logging_driver_and_options() {
        let (s, _) = container_with("    logging:\n      driver: json-file\n      options:\n        max-size: 10m\n        max-file: 3\n");
        let l = s.task.logging.expect("logging");
        assert_eq!(l.name, "json-file");
        assert_eq!(l.options["max-size"], "10m");
        assert_eq!(l.options["max-file"], "3");
        // Options alone: the engine's default driver.
        let (s, _) = container_with("    logging:\n      options: {max-size: 1m}\n");
        assert_eq!(s.task.logging.expect("logging").name, "");
        assert_eq!(
            bad_one("services:\n  web:\n    image: a\n    logging:\n      drivr: x\n"),
            "s.yml:5: services.web.logging.drivr: unknown key \"drivr\""
        );
        assert_eq!(
            bad_one("services:\n  web:\n    command: x\n    logging: {driver: syslog}\n"),
            "s.yml:4: services.web.logging: logging applies to containers (give `image`)"
        );
    }

    #[test]
    fn bind_propagation_and_consistency() {
        let (s, w) = container_with("    volumes:\n      - type: bind\n        source: /srv\n        target: /data\n        consistency: cached\n        bind:\n          propagation: rslave\n      - /mnt:/mnt:ro,rshared\n");
        assert!(
            w.is_empty(),
            "consistency is accepted without a warning: {w:?}"
        );
        let m = &s.task.mounts;
        assert_eq!(m[0].propagation, Some(flotilla_types::Propagation::Rslave));
        assert_eq!(m[1].propagation, Some(flotilla_types::Propagation::Rshared));
        assert!(m[1].read_only);
        assert!(bad_one("services:\n  web:\n    image: a\n    volumes:\n      - type: bind\n        source: /srv\n        target: /data\n        bind: {propagation: sideways}\n")
            .starts_with("s.yml:8: services.web.volumes[0].bind.propagation: invalid propagation \"sideways\""));
        assert_eq!(
            bad_one("services:\n  web:\n    image: a\n    volumes:\n      - type: volume\n        source: data\n        target: /data\n        bind: {propagation: rslave}\nvolumes:\n  data:\n"),
            "s.yml:4: services.web.volumes: mount /data: propagation applies to bind mounts only"
        );
        assert!(bad_one("services:\n  web:\n    image: a\n    volumes:\n      - type: bind\n        source: /srv\n        target: /data\n        consistency: sometimes\n")
            .contains("\"sometimes\" is not consistent, cached or delegated"));
    }

    #[test]
    fn compose_without_swarm_keys_warn_that_swarm_ignores_them() {
        let (_, w) = one("services:\n  web:\n    image: a\n    container_name: web1\n    restart: always\n    build: .\n    depends_on: [db]\n  db:\n    image: b\n");
        assert_eq!(
            w,
            ["service web: Ignoring options that Swarm ignores too (only Compose without Swarm uses them): container_name, restart, build, depends_on"]
        );
    }

    #[test]
    fn refuses_bad_stacks() {
        let bad = bad_one;
        assert!(bad("services: [").contains("not valid"));
        assert!(bad("services: {}").contains("no services"));
        assert!(
            bad("services:\n  web:\n    x-flotilla: {driver: docker}\n    command: x\n")
                .contains("s.yml:2: services.web.image: the docker driver needs an `image`")
        );
        assert!(
            bad("services:\n  web:\n    command: x\n    x-flotilla: {driver: vm}\n")
                .contains("neither process nor docker")
        );
        assert!(
            bad("services:\n  web:\n    command: x\n    deploy:\n      replicas: -2\n")
                .contains("negative")
        );
        assert!(bad("services:\n  -web:\n    command: x\n").contains("invalid name"));
        assert!(bad("services:\n  web:\n    command: x\n    deploy:\n      placement:\n        constraints: [\"node.x==1\"]\n").contains("unknown key"));
        assert_eq!(
            bad("services:\n  web:\n    deploy:\n      replicas: 1\n"),
            "s.yml:2: services.web: nothing to run: give `image` for a container, or `command` for a process"
        );
    }

    fn one(text: &str) -> (ServiceSpec, Vec<String>) {
        let stack = parse_stack("s.yml", text).expect("parse");
        (stack.services[0].clone(), stack.warnings)
    }

    fn bad_one(text: &str) -> String {
        parse_stack("s.yml", text)
            .err()
            .map(|e| e.to_string())
            .unwrap_or_default()
    }

    #[test]
    fn image_means_the_docker_driver() {
        let (web, warnings) = one(
            "services:\n  web:\n    image: nginx:1.25\n    entrypoint: [/docker-entrypoint.sh]\n    command: nginx -g 'daemon off;'\n",
        );
        assert_eq!(web.task.driver, Driver::Docker);
        assert_eq!(web.task.image.as_deref(), Some("nginx:1.25"));
        assert_eq!(
            web.task.entrypoint,
            Some(vec!["/docker-entrypoint.sh".to_string()])
        );
        assert_eq!(web.task.command, ["nginx", "-g", "daemon off;"]);
        assert!(warnings.is_empty(), "{warnings:?}");
        let (plain, _) = one("services:\n  web:\n    image: redis\n");
        assert!(plain.task.command.is_empty(), "the image's own command");
        assert_eq!(plain.task.entrypoint, None);
        // A process has no image: its entrypoint and command make one line,
        // and an image it names is ignored out loud.
        let (p, warnings) = one(
            "services:\n  web:\n    image: busybox\n    entrypoint: sh -c\n    command: [\"echo hi\"]\n    x-flotilla: {driver: process}\n",
        );
        assert_eq!(p.task.driver, Driver::Process);
        assert_eq!(p.task.image, None);
        assert_eq!(p.task.command, ["sh", "-c", "echo hi"]);
        assert_eq!(
            warnings,
            ["Ignoring options Flotilla does not act on yet: image (web)"]
        );
    }

    #[test]
    fn labels_environment_and_grace() {
        let dir = tempfile::tempdir().expect("tempdir");
        let env = dir.path().join("web.env");
        std::fs::write(&env, "FROM_FILE=1\nSHARED=file\n").expect("write");
        let path = dir.path().join("s.yml");
        let text = "services:\n  web:\n    command: x\n    env_file: web.env\n    environment: [SHARED=inline]\n    labels: {a: container, b: container}\n    stop_grace_period: 1m30s\n    deploy:\n      labels: [b=service]\n";
        let stack = parse_stack(&path.display().to_string(), text).expect("parse");
        let web = &stack.services[0];
        assert_eq!(web.task.env["FROM_FILE"], "1");
        assert_eq!(web.task.env["SHARED"], "inline");
        assert_eq!(web.labels["a"], "container");
        assert_eq!(web.labels["b"], "service", "deploy.labels win");
        assert_eq!(web.task.stop_grace_period_ms, 90_000);
        let (d, _) = one("services:\n  web:\n    command: x\n");
        assert_eq!(d.task.stop_grace_period_ms, DEFAULT_STOP_GRACE_MS);
        assert_eq!(d.task.health, None);
        assert_eq!(d.update, UpdateConfig::default());
        assert_eq!(d.task.resources, ResourceSpec::default());
    }

    #[test]
    fn healthcheck_forms() {
        let hc = |h: &str| {
            let text = format!("services:\n  web:\n    image: x\n    healthcheck:\n{h}");
            parse_stack("s.yml", &text).map(|s| s.services[0].task.health.clone())
        };
        let test = |h: &str| hc(h).ok().flatten().map(|h| h.test);
        assert_eq!(
            test("      test: [\"CMD\", \"curl\", \"-f\", \"http://localhost/\"]\n"),
            Some(HealthTest::Exec {
                argv: vec!["curl".into(), "-f".into(), "http://localhost/".into()]
            })
        );
        assert_eq!(
            test("      test: [\"CMD-SHELL\", \"curl -f localhost || exit 1\"]\n"),
            Some(HealthTest::Shell {
                command: "curl -f localhost || exit 1".into()
            })
        );
        assert_eq!(
            test("      test: curl -f localhost\n"),
            Some(HealthTest::Shell {
                command: "curl -f localhost".into()
            })
        );
        assert_eq!(test("      test: [\"NONE\"]\n"), Some(HealthTest::None));
        assert_eq!(
            test("      test: [CMD, x]\n      disable: true\n"),
            Some(HealthTest::None)
        );
        assert_eq!(test("      interval: 5s\n"), Some(HealthTest::Image));
        // Docker's defaults for what is not given.
        let h = hc("      test: [CMD, x]\n").ok().flatten().expect("health");
        assert_eq!(
            (h.interval_ms, h.timeout_ms, h.retries, h.start_period_ms),
            (30_000, 30_000, 3, 0)
        );
        let h = hc("      test: [CMD, x]\n      interval: 2s\n      timeout: 1s\n      retries: 5\n      start_period: 10s\n")
            .ok()
            .flatten()
            .expect("health");
        assert_eq!(
            (h.interval_ms, h.timeout_ms, h.retries, h.start_period_ms),
            (2_000, 1_000, 5, 10_000)
        );
        let err = |h: &str| hc(h).err().map(|e| e.to_string()).unwrap_or_default();
        assert!(err("      test: [CMD]\n").contains("CMD needs a command"));
        assert!(err("      test: [CMD-SHELL, \" \"]\n").contains("CMD-SHELL needs a command"));
        assert!(err("      test: [RUN, x]\n").contains("must start with CMD, CMD-SHELL or NONE"));
        // 0 means Docker's default, as in Docker.
        let zero = hc("      test: [CMD, x]\n      interval: 0s\n      timeout: 0s\n")
            .ok()
            .flatten()
            .expect("health");
        assert_eq!(
            (zero.interval_ms, zero.timeout_ms),
            (DEFAULT_HEALTH_INTERVAL_MS, DEFAULT_HEALTH_TIMEOUT_MS)
        );
        assert!(err("      test: [CMD, x]\n      retries: 9999999999\n").contains("too large"));
        assert!(err("      test: [CMD, x]\n      retries: -1\n")
            .starts_with("s.yml:6: services.web.healthcheck.retries:"));
        // The same key serves the process driver, which has no image check.
        let (p, _) = one("services:\n  web:\n    command: x\n    healthcheck:\n      test: [CMD, test, -f, /tmp/ready]\n      interval: 1s\n");
        assert_eq!(p.task.driver, Driver::Process);
        assert_eq!(
            p.task.health.map(|h| (h.test, h.interval_ms)),
            Some((
                HealthTest::Exec {
                    argv: vec!["test".into(), "-f".into(), "/tmp/ready".into()]
                },
                1_000
            ))
        );
        // The error names the file and the line of the key in the way.
        assert!(bad_one(
            "services:\n  web:\n    command: x\n    healthcheck:\n      interval: 1s\n"
        )
        .starts_with("s.yml:4: services.web.healthcheck: without `test`"));
        let (_, w) =
            one("services:\n  web:\n    image: x\n    healthcheck:\n      start_interval: 1s\n");
        assert_eq!(
            w,
            ["Ignoring options Flotilla does not act on yet: healthcheck.start_interval (web)"]
        );
    }

    #[test]
    fn update_and_rollback_configs() {
        let (web, _) = one(
            "services:\n  web:\n    command: x\n    deploy:\n      update_config:\n        parallelism: 2\n        delay: 10s\n        failure_action: rollback\n        monitor: 1m\n        max_failure_ratio: 0.25\n        order: start-first\n      rollback_config:\n        parallelism: 0\n        failure_action: continue\n",
        );
        assert_eq!(
            web.update,
            UpdateConfig {
                parallelism: 2,
                delay_ms: 10_000,
                failure_action: FailureAction::Rollback,
                monitor_ms: 60_000,
                max_failure_ratio: Ratio(0.25),
                order: UpdateOrder::StartFirst,
            }
        );
        assert_eq!(
            web.rollback,
            UpdateConfig {
                parallelism: 0,
                failure_action: FailureAction::Continue,
                ..UpdateConfig::default()
            }
        );
        let e = bad_one("services:\n  web:\n    command: x\n    deploy:\n      rollback_config:\n        failure_action: rollback\n");
        assert_eq!(
            e,
            "s.yml:6: services.web.deploy.rollback_config.failure_action: rollback failure action must be pause or continue, not rollback"
        );
        let e = bad_one("services:\n  web:\n    command: x\n    deploy:\n      update_config:\n        order: random\n");
        assert!(e.contains("not stop-first or start-first"), "{e}");
        let e = bad_one("services:\n  web:\n    command: x\n    deploy:\n      update_config:\n        max_failure_ratio: 2\n");
        assert!(e.contains("not between 0 and 1"), "{e}");
    }

    #[test]
    fn resources_in_nano_cpus_and_bytes() {
        let (web, _) = one(
            "services:\n  web:\n    command: x\n    deploy:\n      resources:\n        limits: {cpus: \"0.5\", memory: 512M}\n        reservations: {cpus: 0.25, memory: 1G}\n",
        );
        assert_eq!(
            web.task.resources,
            ResourceSpec {
                limits: Resources {
                    nano_cpus: 500_000_000,
                    memory_bytes: 512 << 20
                },
                reservations: Resources {
                    nano_cpus: 250_000_000,
                    memory_bytes: 1 << 30
                },
            }
        );
        let e = bad_one("services:\n  web:\n    command: x\n    deploy:\n      resources:\n        limits: {cpus: half}\n");
        assert!(
            e.starts_with("s.yml:6: services.web.deploy.resources.limits.cpus: expected a number"),
            "{e}"
        );
        let e = bad_one("services:\n  web:\n    command: x\n    deploy:\n      resources:\n        limits: {cpus: \"-1\"}\n");
        assert!(e.contains("not a positive number of CPUs"), "{e}");
        let e = bad_one("services:\n  web:\n    command: x\n    deploy:\n      resources:\n        reservations:\n          memory: 12Q\n");
        assert!(
            e.starts_with("s.yml:7: services.web.deploy.resources.reservations.memory: invalid memory size \"12Q\""),
            "{e}"
        );
    }

    #[test]
    fn job_modes_convert_and_restart_on_failure() {
        let (job, _) = one("services:\n  migrate:\n    command: x\n    deploy:\n      mode: replicated-job\n      replicas: 3\n");
        assert_eq!(
            job.mode,
            ServiceMode::ReplicatedJob {
                replicas: 3,
                max_concurrent: 0
            }
        );
        assert_eq!(
            job.task.restart.condition,
            flotilla_types::RestartCondition::OnFailure
        );
        let (g, _) =
            one("services:\n  prune:\n    command: x\n    deploy:\n      mode: global-job\n");
        assert_eq!(g.mode, ServiceMode::GlobalJob);
    }

    #[test]
    fn placement_mode_and_restart() {
        let (web, _) = one("services:\n  web:\n    command: x\n    deploy:\n      mode: global\n      placement:\n        constraints: [node.labels.zone==a, node.role!=manager]\n      restart_policy: {condition: none}\n");
        assert_eq!(web.mode, ServiceMode::Global);
        let c: Vec<String> = web.task.constraints.iter().map(|c| c.to_string()).collect();
        assert_eq!(c, ["node.labels.zone==a", "node.role!=manager"]);
        assert_eq!(web.task.restart.condition, RestartCondition::None);
        assert_eq!(web.task.restart.delay_ms, 5_000, "Swarm's default delay");
        let e = bad_one("services:\n  web:\n    command: x\n    deploy:\n      placement:\n        constraints: [\"node.role=manager\"]\n");
        assert!(
            e.starts_with("s.yml:6: services.web.deploy.placement.constraints[0]:"),
            "{e}"
        );
        let e = bad_one("services:\n  web:\n    command: x\n    deploy:\n      replicas: -1\n");
        assert!(
            e.starts_with("s.yml:5: services.web.deploy.replicas: -1 is negative"),
            "{e}"
        );
        // The spec's own rules, at the line of the key they are about.
        assert_eq!(
            bad_one("services:\n  web:\n    command: x\n    deploy:\n      replicas: 1000000\n"),
            "s.yml:5: services.web.deploy.replicas: invalid replicas 1000000: at most 100000 are allowed"
        );
        assert_eq!(
            bad_one("services:\n  web:\n    command: [\"\", x]\n"),
            "s.yml:3: services.web.command: the command is empty"
        );
    }

    #[test]
    fn placement_preferences_and_the_limit_per_node_convert() {
        let (web, warnings) = one("services:\n  web:\n    command: x\n    deploy:\n      replicas: 4\n      placement:\n        preferences:\n          - spread: node.labels.zone\n          - spread: engine.labels.disk\n        max_replicas_per_node: 2\n");
        assert_eq!(
            web.task.preferences,
            [
                flotilla_types::PlacementPreference::spread("node.labels.zone"),
                flotilla_types::PlacementPreference::spread("engine.labels.disk"),
            ]
        );
        assert_eq!(web.task.max_replicas_per_node, 2);
        assert!(
            !warnings.iter().any(|w| w.contains("placement")),
            "{warnings:?}"
        );
        // Neither given: no preference, no limit.
        let (plain, _) = one("services:\n  web:\n    command: x\n");
        assert!(plain.task.preferences.is_empty());
        assert_eq!(plain.task.max_replicas_per_node, 0);
    }

    #[test]
    fn bad_placement_keys_are_refused_at_their_line() {
        assert_eq!(
            bad_one("services:\n  web:\n    command: x\n    deploy:\n      placement:\n        preferences: [{spread: node.hostname}]\n"),
            "s.yml:6: services.web.deploy.placement.preferences: invalid placement preference spread=node.hostname: spread over node.labels.KEY, engine.labels.KEY, node.platform.os or node.platform.arch"
        );
    }

    #[test]
    fn keys_without_a_place_make_one_warning_per_stack() {
        let stack = parse_stack(
            "s.yml",
            "services:\n  a:\n    image: x\n    ports: [\"80:80\"]\n    depends_on: [b]\n    deploy:\n      endpoint_mode: dnsrr\n      placement:\n        max_replicas_per_node: 1\n        preferences: [{spread: node.labels.zone}]\n  b:\n    image: y\n    ports: [\"81:81\"]\n    build: .\n    frobnicate: 1\n",
        )
        .expect("parse");
        let ours: Vec<&String> = stack
            .warnings
            .iter()
            .filter(|w| w.contains("does not act on"))
            .collect();
        // The placement keys are the spec's now.
        assert!(ours.is_empty(), "{ours:?}");
        assert_eq!(stack.services[0].task.max_replicas_per_node, 1);
        assert_eq!(stack.services[0].task.preferences.len(), 1);
        // The endpoint mode is the spec's now.
        assert_eq!(
            stack.services[0].endpoint_mode,
            flotilla_types::EndpointMode::Dnsrr
        );
        assert_eq!(
            stack.services[1].endpoint_mode,
            flotilla_types::EndpointMode::Vip
        );
        assert!(
            stack
                .warnings
                .iter()
                .any(|w| w
                    == "service b: Ignoring options that Swarm ignores too (only Compose without Swarm uses them): build"),
            "{:?}",
            stack.warnings
        );
        assert!(
            stack
                .warnings
                .iter()
                .any(|w| w == "service b: Ignoring unknown keys: frobnicate"),
            "{:?}",
            stack.warnings
        );
    }

    #[test]
    fn a_port_published_twice_is_refused() {
        let e = bad_one("services:\n  a:\n    image: x\n    ports: [\"8080:80\"]\n  b:\n    image: y\n    ports: [{target: 81, published: 8080}]\n");
        assert!(
            e.starts_with("s.yml:7: services.b.ports:")
                && e.contains("port 8080/tcp is already published by service a"),
            "{e}"
        );
    }

    fn ports_of(text: &str) -> Vec<PortConfig> {
        one(text).0.task.ports
    }

    fn port(published: Option<u16>, target: u16) -> PortConfig {
        PortConfig {
            published,
            ..PortConfig::target(target)
        }
    }

    /// `entry` as the second item of a block list of ports, on line 6.
    fn with_port(entry: &str) -> String {
        format!(
            "services:\n  web:\n    image: x\n    ports:\n      - \"8080:80\"\n      - {entry}\n"
        )
    }

    #[test]
    fn ports_short_syntax() {
        let short = |entry: &str| {
            ports_of(&format!(
                "services:\n  web:\n    image: x\n    ports:\n      - {entry}\n"
            ))
        };
        assert_eq!(short("\"8080\""), [port(None, 8080)]);
        assert_eq!(short("8080"), [port(None, 8080)], "a number");
        assert_eq!(short("\"18080:8080\""), [port(Some(18080), 8080)]);
        assert_eq!(short("18080:8080"), [port(Some(18080), 8080)], "plain");
        assert_eq!(short("\"18080:8080/tcp\""), [port(Some(18080), 8080)]);
        assert_eq!(
            short("\"3000-3005\""),
            (3000..=3005).map(|t| port(None, t)).collect::<Vec<_>>()
        );
        assert_eq!(
            short("\"9090-9091:8080-8081\""),
            [port(Some(9090), 8080), port(Some(9091), 8081)]
        );
        assert_eq!(
            short("\"8080-8081:80\""),
            [port(Some(8080), 80), port(Some(8081), 80)],
            "a published range onto one target"
        );
        // A host IP that means every address is what the mesh does.
        assert_eq!(short("\"0.0.0.0:8080:80\""), [port(Some(8080), 80)]);
        assert_eq!(short("\"[::]:8080:80\""), [port(Some(8080), 80)]);
        assert_eq!(short("\"0.0.0.0::80\""), [port(None, 80)]);
        // UDP is read as written (validation refuses it, see below).
        let stack = compose::parse_compose(
            &[(
                "s.yml",
                "services:\n  web:\n    image: x\n    ports: [\"53:53/udp\", \"5353:53/UDP\"]\n",
            )],
            &BTreeMap::new(),
        )
        .expect("parse");
        let udp = |published| PortConfig {
            protocol: Protocol::Udp,
            ..port(Some(published), 53)
        };
        assert_eq!(stack.services[0].ports, [udp(53), udp(5353)]);
    }

    #[test]
    fn ports_long_syntax() {
        let long = |entry: &str| {
            ports_of(&format!(
                "services:\n  web:\n    image: x\n    ports:\n      - {entry}\n"
            ))
        };
        assert_eq!(long("{target: 80}"), [port(None, 80)]);
        assert_eq!(
            long("{target: 80, published: 8080}"),
            [port(Some(8080), 80)]
        );
        assert_eq!(
            long("{target: \"80\", published: \"8080\", protocol: tcp, mode: ingress}"),
            [port(Some(8080), 80)]
        );
        assert_eq!(
            long("{target: 80, published: \"8080-8081\"}"),
            [port(Some(8080), 80), port(Some(8081), 80)],
            "a published range, as newer Compose writes it"
        );
        assert_eq!(long("{target: 80, published: 0}"), [port(None, 80)]);
        assert_eq!(
            long("{target: 80, published: 8080, host_ip: 0.0.0.0}"),
            [port(Some(8080), 80)]
        );
        // `name` and `app_protocol` are ignored out loud.
        let (web, w) = one("services:\n  web:\n    image: x\n    ports:\n      - target: 80\n        published: 8080\n        name: web\n        app_protocol: http\n        x-note: 1\n");
        assert_eq!(web.task.ports, [port(Some(8080), 80)]);
        assert_eq!(
            w,
            ["service web: Ignoring unsupported options: ports[0].name, ports[0].app_protocol"]
        );
        // Host mode is read as written (validation refuses it, see below).
        let stack = compose::parse_compose(
            &[(
                "s.yml",
                "services:\n  web:\n    image: x\n    ports: [{target: 80, published: 8080, protocol: udp, mode: host}]\n",
            )],
            &BTreeMap::new(),
        )
        .expect("parse");
        assert_eq!(
            stack.services[0].ports,
            [PortConfig {
                target: 80,
                published: Some(8080),
                protocol: Protocol::Udp,
                mode: PublishMode::Host,
            }]
        );
    }

    #[test]
    fn ports_are_interpolated_first() {
        let text = "services:\n  web:\n    image: x\n    ports:\n      - \"${FLOTILLA_TEST_UNSET_PORT:-8080}:80\"\n      - target: 81\n        published: \"${FLOTILLA_TEST_UNSET_PORT_2:-8081}\"\n";
        assert_eq!(ports_of(text), [port(Some(8080), 80), port(Some(8081), 81)]);
        let vars: BTreeMap<String, String> =
            [("FLOTILLA_TEST_UNSET_PORT".to_string(), "9999".to_string())].into();
        let stack = compose::parse_compose(&[("s.yml", text)], &vars).expect("parse");
        assert_eq!(
            stack.services[0].ports,
            [port(Some(9999), 80), port(Some(8081), 81)]
        );
        let e = bad_one("services:\n  web:\n    image: x\n    ports: [\"${FLOTILLA_TEST_UNSET_PORT:-http}:80\"]\n");
        assert_eq!(
            e,
            "s.yml:4: services.web.ports[0]: invalid port \"http\": expected a number"
        );
    }

    #[test]
    fn bad_ports_are_refused_at_their_line() {
        let at = "s.yml:6: services.web.ports[1]";
        for (entry, reason) in [
            ("\"0\"", "invalid port 0: ports are 1-65535"),
            ("\"70000:80\"", "invalid port 70000: ports are 1-65535"),
            ("\"8081:0\"", "invalid port 0: ports are 1-65535"),
            ("8081:80/sctp", "invalid protocol \"sctp\": expected tcp or udp"),
            (
                "\"8081-8083:80-81\"",
                "invalid port \"8081-8083:80-81\": the published range has 3 ports and the target range 2",
            ),
            ("\"90-80\"", "invalid port range \"90-80\": 90 is above 80"),
            ("http", "invalid port \"http\": expected a number"),
            ("\"8081:\"", "invalid port \"\": expected a number"),
            (
                "\"127.0.0.1:8081:80\"",
                "invalid port \"127.0.0.1:8081:80\": a host address is not supported; the mesh publishes on every node",
            ),
            (
                "\"[::1]:8081:80\"",
                "invalid port \"[::1]:8081:80\": a host address is not supported; the mesh publishes on every node",
            ),
            (
                "\"target=80\"",
                "invalid port \"target=80\": expected [PUBLISHED:]TARGET[/PROTOCOL], or a mapping",
            ),
            (
                "\"1-5000\"",
                "the range is 5000 ports wide; at most 1000 are allowed",
            ),
            ("true", "expected a port (a string or a number) or a mapping, found true"),
            ("\"8080:81\"", "port 8080/tcp is published twice"),
            ("\"8080:80/tcp\"", ""),
        ] {
            let e = bad_one(&with_port(entry));
            if reason.is_empty() {
                assert_eq!(e, "", "{entry}: the same entry again is one port");
            } else {
                assert_eq!(e, format!("{at}: {reason}"), "{entry}");
            }
        }
        // The long syntax: the entry's line, or the line of the bad key.
        for (entry, at, reason) in [
            (
                "published: 8081\n        protocol: tcp",
                "s.yml:6: services.web.ports[1]",
                "missing target",
            ),
            (
                "target: 0",
                "s.yml:6: services.web.ports[1].target",
                "invalid port 0: ports are 1-65535",
            ),
            (
                "target: 65536",
                "s.yml:6: services.web.ports[1].target",
                "invalid port 65536: ports are 1-65535",
            ),
            (
                "target: http",
                "s.yml:6: services.web.ports[1].target",
                "expected an integer, found \"http\"",
            ),
            (
                "target: 80\n        published: 70000",
                "s.yml:7: services.web.ports[1].published",
                "invalid port 70000: ports are 1-65535",
            ),
            (
                "target: 80\n        published: \"8081-8082:80\"",
                "s.yml:7: services.web.ports[1].published",
                "invalid port \"8081-8082:80\": expected a port or a range of ports",
            ),
            (
                "target: 80\n        published: [8081]",
                "s.yml:7: services.web.ports[1].published",
                "expected a port or a range of ports, found a list",
            ),
            (
                "target: 80\n        protocol: quic",
                "s.yml:7: services.web.ports[1].protocol",
                "invalid protocol \"quic\": expected tcp or udp",
            ),
            (
                "target: 80\n        mode: mesh",
                "s.yml:7: services.web.ports[1].mode",
                "invalid mode \"mesh\": expected ingress or host",
            ),
            (
                "target: 80\n        published: 8081\n        host_ip: 127.0.0.1",
                "s.yml:8: services.web.ports[1].host_ip",
                "host IP \"127.0.0.1\" is not supported; the mesh publishes on every node",
            ),
            (
                "target: 80\n        colour: red",
                "s.yml:7: services.web.ports[1].colour",
                "unknown key \"colour\"",
            ),
        ] {
            assert_eq!(
                bad_one(&with_port(entry)),
                format!("{at}: {reason}"),
                "{entry}"
            );
        }
        assert_eq!(
            bad_one("services:\n  web:\n    image: x\n    ports: 8080\n"),
            "s.yml:4: services.web.ports: expected a list, found 8080"
        );
    }

    #[test]
    fn udp_and_host_mode_are_read() {
        let stack = parse_stack(
            "s.yml",
            "services:\n  web:\n    image: x\n    ports:\n      - \"8080:80\"\n      - \"53:53/udp\"\n",
        )
        .expect("udp");
        assert_eq!(stack.services[0].task.ports[1].protocol, Protocol::Udp);
        let stack = parse_stack(
            "s.yml",
            "services:\n  web:\n    image: x\n    ports:\n      - target: 80\n        published: 8080\n        mode: host\n",
        )
        .expect("host mode");
        assert_eq!(stack.services[0].task.ports[0].mode, PublishMode::Host);
    }

    #[test]
    fn a_stack_converts_to_its_published_ports() {
        let text = "services:\n  web:\n    image: nginx\n    ports:\n      - \"18080:8080\"\n      - 8443\n      - target: 9090\n        published: \"19090\"\n      - \"3000-3001\"\n  api:\n    command: serve\n    ports: [{target: 80}, \"8081-8082:81-82\"]\n  db:\n    image: postgres\n";
        let stack = parse_stack("s.yml", text).expect("parse");
        assert!(stack.warnings.is_empty(), "{:?}", stack.warnings);
        let specs = stack.specs_for("shop").expect("specs");
        let ports: Vec<(&str, &[PortConfig])> = specs
            .iter()
            .map(|s| (s.name.as_str(), &s.task.ports[..]))
            .collect();
        assert_eq!(
            ports,
            [
                (
                    "shop_api",
                    &[port(None, 80), port(Some(8081), 81), port(Some(8082), 82)][..]
                ),
                ("shop_db", &[][..]),
                (
                    "shop_web",
                    &[
                        port(Some(18080), 8080),
                        port(None, 8443),
                        port(Some(19090), 9090),
                        port(None, 3000),
                        port(None, 3001)
                    ][..]
                ),
            ]
        );
    }

    #[test]
    fn merged_files_append_ports_and_repeat_none() {
        let base = "services:\n  web:\n    image: x\n    ports: [\"80:80\", \"8080\"]\n";
        let files = |over| parse_stack_files(&[("nodir/a.yml", base), ("nodir/b.yml", over)]);
        // Appended; the same entry again (as written, or once read) is one.
        let stack =
            files("services:\n  web:\n    ports: [\"80:80\", {target: 8080}, \"443:443\"]\n")
                .expect("merge");
        assert_eq!(
            stack.services[0].task.ports,
            [port(Some(80), 80), port(None, 8080), port(Some(443), 443)]
        );
        // Another target for a published port is another entry, and the
        // service would publish the port twice: refused at the entry that
        // repeats it, in the file that says it.
        let e = files("services:\n  web:\n    ports:\n      - \"80:8080\"\n")
            .err()
            .map(|e| e.to_string())
            .unwrap_or_default();
        assert_eq!(
            e,
            "nodir/b.yml:4: services.web.ports[2]: port 80/tcp is published twice"
        );
    }

    #[test]
    fn stack_names_and_labels() {
        let stack = parse_stack("s.yml", "services:\n  web:\n    command: x\n    deploy:\n      labels: {com.docker.stack.namespace: spoofed}\n").expect("parse");
        let specs = stack.specs_for("shop").expect("specs");
        assert_eq!(specs[0].name, "shop_web");
        assert_eq!(specs[0].labels[NAMESPACE_LABEL], "shop");
        let e = stack.specs_for("-bad").err().map(|e| e.to_string());
        assert!(e
            .unwrap_or_default()
            .starts_with("invalid stack name \"-bad\""),);
        let long = "x".repeat(200);
        let e = stack
            .specs_for(&long)
            .err()
            .map(|e| e.to_string())
            .unwrap_or_default();
        assert!(
            e.starts_with("invalid stack name") || e.contains("service web"),
            "{e}"
        );
    }

    #[test]
    fn later_files_merge_lists_by_key() {
        let base = "services:\n  web:\n    image: x\n    environment: [A=1, B=2, C]\n    labels: {l1: a, l2: b}\n    ports: [\"80:80\", \"443:443\", {target: 53, published: 53, protocol: udp}]\n    deploy:\n      labels: [d1=a]\n";
        let over = "services:\n  web:\n    environment: {B: over, D: new}\n    labels: [l2=over]\n    ports: [\"80:80\", {target: 53, published: \"53\", protocol: udp, mode: host}, \"9000:9000\", {target: 443, published: 443, mode: host}]\n    deploy:\n      labels: {d2: b}\n";
        let vars: BTreeMap<String, String> = [("C".to_string(), "from-vars".to_string())].into();
        let stack =
            compose::parse_compose(&[("a.yml", base), ("b.yml", over)], &vars).expect("parse");
        let web = &stack.services[0];
        let env: Vec<(&str, &str)> = web
            .environment
            .iter()
            .map(|(k, v)| (k.as_str(), v.as_str()))
            .collect();
        assert_eq!(
            env,
            [("A", "1"), ("B", "over"), ("C", "from-vars"), ("D", "new")]
        );
        assert_eq!(web.labels["l1"], "a");
        assert_eq!(web.labels["l2"], "over");
        assert_eq!(web.deploy.labels.len(), 2);
        // Ports are appended, as Compose merges them; an entry equal to an
        // earlier one (the same published port, target and protocol, in
        // either syntax) replaces it in place.
        let ports: Vec<String> = web.ports.iter().map(|p| p.to_string()).collect();
        assert_eq!(
            ports,
            [
                "80:80/tcp",
                "443:443/tcp (host)",
                "53:53/udp (host)",
                "9000:9000/tcp"
            ]
        );
        // An error in a merged-in entry still names the file it came from.
        let over = "services:\n  web:\n    environment: [\"=x\"]\n";
        let e = compose::parse_compose(&[("a.yml", base), ("b.yml", over)], &vars)
            .err()
            .map(|e| e.to_string())
            .unwrap_or_default();
        assert!(e.starts_with("b.yml:3: services.web.environment"), "{e}");
    }

    #[test]
    fn config_reads_back_as_the_same_stack() {
        let dir = tempfile::tempdir().expect("tempdir");
        let a = dir.path().join("a.yml");
        let b = dir.path().join("b.yml");
        std::fs::write(
            &a,
            "x-common: &common\n  GREETING: \"${FLOTILLA_TEST_UNSET_VAR:-hello}\"\nservices:\n  web:\n    command: [sh, -c, \"echo $$HOME\"]\n    environment:\n      <<: *common\n      N: \"3\"\n    deploy:\n      replicas: 2\n",
        )
        .expect("write");
        std::fs::write(&b, "services:\n  web:\n    environment: [EXTRA=1]\n").expect("write");
        let (a, b) = (a.display().to_string(), b.display().to_string());
        let (yaml, _) = config_yaml(&[&a, &b]).expect("config");
        assert!(!yaml.contains("x-common"), "{yaml}");
        assert!(yaml.contains("hello"), "{yaml}");
        let out = dir.path().join("out.yml");
        std::fs::write(&out, &yaml).expect("write");
        let again = load_stack(&out.display().to_string()).expect("reparse");
        let direct = load_stack_files(&[&a, &b]).expect("direct");
        assert_eq!(again.services, direct.services, "{yaml}");
        assert_eq!(direct.services[0].task.command[2], "echo $HOME");
        assert_eq!(direct.services[0].task.env["EXTRA"], "1");
        assert_eq!(
            direct.services[0].task.env.get("N").map(String::as_str),
            Some("3"),
            "{:?}",
            direct.services[0].task.env
        );
    }

    #[test]
    fn the_health_example_converts() {
        let path = concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/../../examples/health-stack.yml"
        );
        let stack = load_stack(path).expect("example");
        let web = stack
            .services
            .iter()
            .find(|s| s.name == "web")
            .expect("web");
        assert!(matches!(
            web.task.health.as_ref().map(|h| &h.test),
            Some(HealthTest::Shell { .. })
        ));
        assert_eq!(web.update.order, UpdateOrder::StartFirst);
        assert!(stack.warnings.is_empty(), "{:?}", stack.warnings);
    }

    // -----------------------------------------------------------------
    // Secrets and configs.

    mod secrets {
        use super::*;
        use flotilla_types::SecretRef;

        const SHOP: &str = "services:\n  web:\n    image: x\n    secrets:\n      - db_pass\n      - source: api_key\n        target: key.txt\n        uid: \"1000\"\n        gid: 1000\n        mode: 0400\n    configs:\n      - app_conf\n      - source: nginx\n        target: /etc/nginx/nginx.conf\n        mode: 0o440\n  worker:\n    command: work\n    secrets: [db_pass]\nsecrets:\n  db_pass:\n    file: ./db_pass.txt\n  api_key:\n    environment: API_KEY\nconfigs:\n  app_conf:\n    content: \"hello ${FLOTILLA_TEST_UNSET_WHO:-world}\"\n  nginx:\n    file: /etc/nginx.conf\n    labels: {team: web}\n";

        fn secret_ref(
            kind: SecretKind,
            source: &str,
            target: &str,
            ids: (&str, &str),
            mode: u32,
        ) -> SecretRef {
            SecretRef {
                target: target.into(),
                uid: ids.0.into(),
                gid: ids.1.into(),
                mode,
                ..SecretRef::to(kind, source)
            }
        }

        #[test]
        fn short_and_long_syntax_become_references_by_full_name() {
            let stack = parse_stack("/stacks/shop/s.yml", SHOP).expect("parse");
            assert!(stack.warnings.is_empty(), "{:?}", stack.warnings);
            let specs = stack.specs_for("shop").expect("specs");
            let web = specs.iter().find(|s| s.name == "shop_web").expect("web");
            // Sorted by full name; the target is the key as written.
            assert_eq!(
                web.task.secrets,
                [
                    secret_ref(
                        SecretKind::Secret,
                        "shop_api_key",
                        "key.txt",
                        ("1000", "1000"),
                        0o400
                    ),
                    secret_ref(
                        SecretKind::Secret,
                        "shop_db_pass",
                        "db_pass",
                        ("0", "0"),
                        0o444
                    ),
                ]
            );
            assert_eq!(
                web.task.secrets[1].path_in_task(SecretKind::Secret),
                "/run/secrets/db_pass"
            );
            assert_eq!(
                web.task.configs,
                [
                    secret_ref(
                        SecretKind::Config,
                        "shop_app_conf",
                        "/app_conf",
                        ("0", "0"),
                        0o444
                    ),
                    secret_ref(
                        SecretKind::Config,
                        "shop_nginx",
                        "/etc/nginx/nginx.conf",
                        ("0", "0"),
                        0o440
                    ),
                ]
            );
            // The manager fills these in.
            assert!(web
                .task
                .secrets
                .iter()
                .all(|r| r.id.is_empty() && r.version == 0));
            // The process driver takes them too.
            let worker = specs
                .iter()
                .find(|s| s.name == "shop_worker")
                .expect("worker");
            assert_eq!(worker.task.secrets[0].source, "shop_db_pass");
            // What the deploy creates: every entry, named and labelled.
            let all = stack.secrets_for("shop").expect("secrets");
            let summary: Vec<(SecretKind, &str, Option<&SecretSource>, bool)> = all
                .iter()
                .map(|s| (s.kind, s.spec.name.as_str(), s.source.as_ref(), s.external))
                .collect();
            assert_eq!(
                summary,
                [
                    (
                        SecretKind::Secret,
                        "shop_api_key",
                        Some(&SecretSource::Environment("API_KEY".into())),
                        false
                    ),
                    (
                        SecretKind::Secret,
                        "shop_db_pass",
                        Some(&SecretSource::File("/stacks/shop/db_pass.txt".into())),
                        false
                    ),
                    (
                        SecretKind::Config,
                        "shop_app_conf",
                        Some(&SecretSource::Content("hello world".into())),
                        false
                    ),
                    (
                        SecretKind::Config,
                        "shop_nginx",
                        Some(&SecretSource::File("/etc/nginx.conf".into())),
                        false
                    ),
                ]
            );
            for s in &all {
                assert_eq!(s.spec.labels[NAMESPACE_LABEL], "shop", "{s:?}");
                assert_eq!(s.name, s.spec.name);
            }
            assert_eq!(all[3].spec.labels["team"], "web");
            // Where each one's data is written, for errors once read.
            assert_eq!(all[1].at, ("/stacks/shop/s.yml".into(), 21));
            assert_eq!(all[1].key_path(), "secrets.db_pass.file");
            assert_eq!(all[2].at, ("/stacks/shop/s.yml".into(), 26));
        }

        #[test]
        fn external_and_named_entries_keep_their_names() {
            let text = "services:\n  web:\n    image: x\n    secrets: [ext, ext_named, legacy, fixed]\n    configs: [shared]\nsecrets:\n  ext:\n    external: true\n  ext_named:\n    external: true\n    name: real_one\n  legacy:\n    external:\n      name: old_style\n  fixed:\n    file: /run/pw\n    name: fixed_name\nconfigs:\n  shared:\n    external: true\n";
            let stack = parse_stack("nodir/s.yml", text).expect("parse");
            let all = stack.secrets_for("s").expect("secrets");
            let names: Vec<(&str, bool, bool)> = all
                .iter()
                .map(|s| {
                    (
                        s.name.as_str(),
                        s.external,
                        s.spec.labels.contains_key(NAMESPACE_LABEL),
                    )
                })
                .collect();
            assert_eq!(
                names,
                [
                    ("ext", true, false),
                    ("real_one", true, false),
                    ("fixed_name", false, true),
                    ("old_style", true, false),
                    ("shared", true, false),
                ]
            );
            assert!(all
                .iter()
                .filter(|s| s.external)
                .all(|s| s.source.is_none()));
            let specs = stack.specs_for("s").expect("specs");
            let sources: Vec<&str> = specs[0]
                .task
                .secrets
                .iter()
                .map(|r| r.source.as_str())
                .collect();
            assert_eq!(sources, ["ext", "fixed_name", "old_style", "real_one"]);
            // The target stays the key the service names it by.
            let targets: Vec<&str> = specs[0]
                .task
                .secrets
                .iter()
                .map(|r| r.target.as_str())
                .collect();
            assert_eq!(targets, ["ext", "fixed", "legacy", "ext_named"]);
            assert_eq!(specs[0].task.configs[0].source, "shared");
            assert_eq!(specs[0].task.configs[0].target, "/shared");
            // A name the daemon would refuse stops the deploy before it
            // starts; two keys may name one secret only alike.
            let shop = parse_stack("/stacks/shop/s.yml", SHOP).expect("parse");
            let long = shop
                .secrets_for(&"x".repeat(60))
                .err()
                .map(|e| e.to_string())
                .unwrap_or_default();
            assert!(
                long.starts_with("/stacks/shop/s.yml: secret api_key: name \"xxx"),
                "{long}"
            );
            let twice = "services:\n  web:\n    image: x\nsecrets:\n  a: {file: /a, name: one}\n  b: {file: /b, name: one}\n  c: {file: /a, name: two}\n  d: {file: /a, name: two}\n";
            let stack = parse_stack("nodir/s.yml", twice).expect("parse");
            let e = stack
                .secrets_for("s")
                .err()
                .map(|e| e.to_string())
                .unwrap_or_default();
            assert_eq!(
                e,
                "nodir/s.yml: secret b: it and secret a are both named one, with different data or labels"
            );
            let alike = twice.replace("{file: /b, name: one}", "{file: /a, name: one}");
            let stack = parse_stack("nodir/s.yml", &alike).expect("parse");
            assert_eq!(stack.secrets_for("s").expect("secrets").len(), 2);
            // A secret and a config may share a name: they are apart.
            let both = "services:\n  web:\n    image: x\nsecrets:\n  a: {file: /a}\nconfigs:\n  a: {file: /a}\n";
            let stack = parse_stack("nodir/s.yml", both).expect("parse");
            assert_eq!(stack.secrets_for("s").expect("secrets").len(), 2);
        }

        fn mode_of(mode: &str) -> Result<u32, String> {
            let text = format!("services:\n  web:\n    image: x\n    secrets:\n      - source: pw\n        mode: {mode}\nsecrets:\n  pw: {{file: /pw}}\n");
            parse_stack("s.yml", &text)
                .map(|s| s.services[0].task.secrets[0].mode)
                .map_err(|e| e.to_string())
        }

        #[test]
        fn modes_read_as_compose_reads_them() {
            for (mode, want) in [
                // A leading zero is octal, as Compose reads YAML.
                ("0440", 0o440),
                ("0400", 0o400),
                ("0777", 0o777),
                ("00", 0),
                ("0o440", 0o440),
                // A string is octal, with or without the zero.
                ("\"0440\"", 0o440),
                ("\"440\"", 0o440),
                ("\"${FLOTILLA_TEST_UNSET_MODE:-0600}\"", 0o600),
                // A plain integer is decimal, as in Compose.
                ("292", 0o444),
                ("0", 0),
                ("0x124", 0o444),
            ] {
                assert_eq!(mode_of(mode), Ok(want), "{mode}");
            }
            let at = "s.yml:6: services.web.secrets[0].mode";
            for (mode, reason) in [
                ("0999", "invalid file mode 0999: expected octal, like 0440"),
                (
                    "\"rw\"",
                    "invalid file mode \"rw\": expected octal, like 0440",
                ),
                (
                    "\"0o17777\"",
                    "invalid file mode \"0o17777\": expected octal, like 0440",
                ),
                (
                    "0o17777",
                    "invalid file mode 8191 (0o17777): expected octal, like 0440",
                ),
                ("-1", "invalid file mode -1: expected octal, like 0440"),
                ("1.5", "expected a file mode, like 0440, found 1.5"),
                ("[1]", "expected a file mode, like 0440, found a list"),
                ("true", "expected a file mode, like 0440, found true"),
            ] {
                assert_eq!(mode_of(mode), Err(format!("{at}: {reason}")), "{mode}");
            }
        }

        fn bad(text: &str) -> String {
            parse_stack("s.yml", text)
                .err()
                .map(|e| e.to_string())
                .unwrap_or_default()
        }

        #[test]
        fn a_service_names_only_declared_ones() {
            let head = "services:\n  web:\n    image: x\n";
            assert_eq!(
                bad(&format!("{head}    secrets:\n      - pw\n      - nope\nsecrets:\n  pw: {{file: /pw}}\n")),
                "s.yml:6: services.web.secrets[1]: service \"web\" refers to undefined secret nope: invalid compose project"
            );
            assert_eq!(
                bad(&format!("{head}    configs:\n      - source: nope\n        target: /x\n")),
                "s.yml:5: services.web.configs[0]: service \"web\" refers to undefined config nope: invalid compose project"
            );
            // A config is no secret.
            assert_eq!(
                bad(&format!("{head}    secrets: [pw]\nconfigs:\n  pw: {{file: /pw}}\n")),
                "s.yml:4: services.web.secrets[0]: service \"web\" refers to undefined secret pw: invalid compose project"
            );
        }

        #[test]
        fn bad_references_are_refused_at_their_line() {
            let with = |entry: &str| {
                bad(&format!("services:\n  web:\n    image: x\n    secrets:\n      - {entry}\nsecrets:\n  pw: {{file: /pw}}\n"))
            };
            for (entry, want) in [
                ("\"\"", "s.yml:5: services.web.secrets[0]: an empty secret name"),
                ("[pw]", "s.yml:5: services.web.secrets[0]: expected a secret name or a mapping, found a list"),
                ("target: x", "s.yml:5: services.web.secrets[0]: missing source"),
                ("source: pw\n        colour: red", "s.yml:6: services.web.secrets[0].colour: unknown key \"colour\""),
                ("source: pw\n        target: ../etc/passwd", "s.yml:5: services.web.secrets[0]: secret pw: target \"../etc/passwd\" must not contain '.' or '..'"),
                ("source: pw\n        uid: root", "s.yml:5: services.web.secrets[0]: secret pw: uid \"root\" is not a number"),
                ("source: pw\n        target: \"\"", "s.yml:5: services.web.secrets[0]: secret pw: empty target"),
            ] {
                assert_eq!(with(entry), want, "{entry}");
            }
            assert_eq!(
                bad("services:\n  web:\n    image: x\n    secrets: pw\nsecrets:\n  pw: {file: /pw}\n"),
                "s.yml:4: services.web.secrets: expected a list, found \"pw\""
            );
            // `x-` keys are ignored in an entry.
            let ok = with("source: pw\n        x-note: 1");
            assert_eq!(ok, "");
        }

        #[test]
        fn bad_top_level_entries_are_refused_at_their_line() {
            let with = |section: &str, entry: &str| {
                bad(&format!(
                    "services:\n  web:\n    image: x\n{section}:\n  pw:{entry}\n"
                ))
            };
            for (section, entry, want) in [
                ("secrets", "", "s.yml:5: secrets.pw: secret pw gives no data: set file, environment or external: true"),
                ("secrets", " {}", "s.yml:5: secrets.pw: secret pw gives no data: set file, environment or external: true"),
                ("configs", "\n    labels: {a: b}", "s.yml:5: configs.pw: config pw gives no data: set file, environment, content or external: true"),
                ("secrets", "\n    external: false", "s.yml:5: secrets.pw: secret pw gives no data: set file, environment or external: true"),
                ("secrets", "\n    file: /a\n    environment: PW", "s.yml:7: secrets.pw.environment: file and environment both give the data of secret pw: give one"),
                ("configs", "\n    content: x\n    file: /a", "s.yml:7: configs.pw.file: content and file both give the data of config pw: give one"),
                ("secrets", "\n    content: hunter2", "s.yml:6: secrets.pw.content: content is for configs; a secret's data comes from a file or an environment variable"),
                ("secrets", "\n    external: true\n    file: /a", "s.yml:7: secrets.pw.file: an external secret exists already and takes no data: remove file or external"),
                ("configs", "\n    external: true\n    labels: [a=b]", "s.yml:7: configs.pw.labels: labels apply to a config the stack creates, not to an external one"),
                ("secrets", "\n    file: /a\n    driver: vault", "s.yml:7: secrets.pw.driver: driver is not supported: secret data is stored by the cluster, as written"),
                ("configs", "\n    file: /a\n    template_driver: jinja", "s.yml:7: configs.pw.template_driver: unknown template driver \"jinja\": only golang"),
                ("secrets", "\n    file: /a\n    colour: red", "s.yml:7: secrets.pw.colour: unknown key \"colour\""),
                ("secrets", "\n    file: \"\"", "s.yml:6: secrets.pw.file: an empty path"),
                ("secrets", "\n    file: [a]", "s.yml:6: secrets.pw.file: expected a string, found a list"),
                ("secrets", "\n    environment: A=B", "s.yml:6: secrets.pw.environment: \"A=B\" is not the name of an environment variable"),
                ("secrets", "\n    file: /a\n    labels: {\"a=b\": c}", "s.yml:7: secrets.pw.labels: invalid label key \"a=b\""),
                ("secrets", "\n    file: /a\n    name: -bad", "s.yml:7: secrets.pw.name: invalid name \"-bad\": it must start with a letter or a digit"),
                ("secrets", "\n    external: {name: a}\n    name: b", "s.yml:6: secrets.pw.external.name: conflicts with secrets.pw.name; only use secrets.pw.name"),
                ("secrets", " [a]", "s.yml:5: secrets.pw: expected a mapping, found a list"),
                ("secrets", "\n    external: yes", "s.yml:6: secrets.pw.external: expected true or false, found \"yes\""),
            ] {
                assert_eq!(with(section, entry), want, "{section}: {entry}");
            }
            assert_eq!(
                bad("services:\n  web:\n    image: x\nsecrets: [pw]\n"),
                "s.yml:4: secrets: expected a mapping, found a list"
            );
            // `x-` keys are ignored; an empty section declares nothing.
            assert_eq!(with("secrets", "\n    file: /a\n    x-note: 1"), "");
            assert_eq!(
                bad("services:\n  web:\n    image: x\nsecrets:\nconfigs: {}\n"),
                ""
            );
        }

        #[test]
        fn files_are_relative_to_the_file_that_names_them() {
            let over = "secrets:\n  pw:\n    file: ../keys/pw.txt\n";
            let base = "services:\n  web:\n    image: x\n    secrets: [pw]\nsecrets:\n  pw: {file: ./pw.txt}\n";
            let one = parse_stack_files(&[("/stacks/app/a.yml", base)]).expect("one");
            assert_eq!(
                one.secrets[0].source,
                Some(SecretSource::File("/stacks/app/pw.txt".into()))
            );
            let merged =
                parse_stack_files(&[("/stacks/app/a.yml", base), ("/stacks/ops/b.yml", over)])
                    .expect("merged");
            assert_eq!(
                merged.secrets[0].source,
                Some(SecretSource::File("/stacks/keys/pw.txt".into()))
            );
            // The override names the line to blame.
            assert_eq!(merged.secrets[0].at, ("/stacks/ops/b.yml".into(), 3));
            let home = parse_stack_files(&[(
                "/stacks/app/a.yml",
                &base.replace("./pw.txt", "/abs/pw.txt"),
            )])
            .expect("absolute");
            assert_eq!(
                home.secrets[0].source,
                Some(SecretSource::File("/abs/pw.txt".into()))
            );
        }

        #[test]
        fn later_files_merge_references_by_path_and_labels_by_key() {
            let base = "services:\n  web:\n    image: x\n    secrets:\n      - db\n      - source: api\n        target: /keys/api\n    configs: [app]\nsecrets:\n  db: {file: /db, labels: {a: \"1\", b: \"2\"}}\n  api: {file: /api}\nconfigs:\n  app: {content: v1}\n";
            let over = "services:\n  web:\n    secrets:\n      - source: db\n        mode: 0400\n      - api\n    configs:\n      - source: app\n        target: /app\n        uid: \"5\"\nsecrets:\n  db:\n    labels: [b=over, c=3]\nconfigs:\n  app: {content: v2}\n";
            let stack =
                parse_stack_files(&[("nodir/a.yml", base), ("nodir/b.yml", over)]).expect("merge");
            let web = &stack.compose[0];
            let secrets: Vec<(&str, &str, u32)> = web
                .secrets
                .iter()
                .map(|r| (r.source.as_str(), r.target.as_str(), r.mode))
                .collect();
            // db at the same path: replaced in place; api at another: added.
            assert_eq!(
                secrets,
                [
                    ("db", "db", 0o400),
                    ("api", "/keys/api", 0o444),
                    ("api", "api", 0o444)
                ]
            );
            assert_eq!(web.configs.len(), 1);
            assert_eq!(web.configs[0].uid, "5");
            let db = stack.secrets.iter().find(|s| s.key == "db").expect("db");
            let labels: Vec<(&str, &str)> = db
                .spec
                .labels
                .iter()
                .map(|(k, v)| (k.as_str(), v.as_str()))
                .collect();
            assert_eq!(labels, [("a", "1"), ("b", "over"), ("c", "3")]);
            let app = stack.secrets.iter().find(|s| s.key == "app").expect("app");
            assert_eq!(app.source, Some(SecretSource::Content("v2".into())));
            // Within one file too, a later entry for a path wins.
            let again = "services:\n  web:\n    image: x\n    secrets:\n      - db\n      - source: db\n        target: db\n        mode: 0400\nsecrets:\n  db: {file: /db}\n";
            let stack = parse_stack("s.yml", again).expect("parse");
            assert_eq!(stack.services[0].task.secrets.len(), 1);
            assert_eq!(stack.services[0].task.secrets[0].mode, 0o400);
        }

        #[test]
        fn config_output_reads_back_with_the_same_secrets() {
            let dir = tempfile::tempdir().expect("tempdir");
            let path = dir.path().join("s.yml");
            let text = "services:\n  web:\n    image: x\n    secrets: [{source: pw, mode: 0400}]\n    configs: [app]\nsecrets:\n  pw: {file: ./pw.txt}\nconfigs:\n  app:\n    content: \"cost: $$5 ${FLOTILLA_TEST_UNSET_C:-ok}\"\n";
            std::fs::write(&path, text).expect("write");
            let path = path.display().to_string();
            let (yaml, _) = config_yaml(&[&path]).expect("config");
            let out = dir.path().join("out.yml");
            std::fs::write(&out, &yaml).expect("write");
            let again = load_stack(&out.display().to_string()).expect("reparse");
            let direct = load_stack(&path).expect("direct");
            assert_eq!(again.services, direct.services, "{yaml}");
            let sources = |s: &Stack| -> Vec<Option<SecretSource>> {
                s.secrets.iter().map(|x| x.source.clone()).collect()
            };
            assert_eq!(sources(&again), sources(&direct), "{yaml}");
            assert_eq!(
                direct.secrets[1].source,
                Some(SecretSource::Content("cost: $5 ok".into()))
            );
        }

        fn stack_secret(kind: SecretKind, key: &str, source: Option<SecretSource>) -> StackSecret {
            StackSecret {
                kind,
                key: key.into(),
                name: format!("s_{key}"),
                scoped: true,
                external: source.is_none(),
                spec: SecretSpec {
                    name: format!("s_{key}"),
                    labels: BTreeMap::new(),
                    template_driver: None,
                },
                at: ("s.yml".into(), 7),
                source,
            }
        }

        #[test]
        fn all_data_is_read_before_anything_is_created() {
            let file = |p: &str| Some(SecretSource::File(p.into()));
            let secrets = [
                stack_secret(SecretKind::Secret, "a", file("/a")),
                stack_secret(SecretKind::Secret, "ext", None),
                stack_secret(
                    SecretKind::Secret,
                    "b",
                    Some(SecretSource::Environment("B".into())),
                ),
                stack_secret(
                    SecretKind::Config,
                    "c",
                    Some(SecretSource::Content("conf".into())),
                ),
                stack_secret(SecretKind::Config, "d", file("/d")),
            ];
            let fs: BTreeMap<&str, Vec<u8>> = [
                ("/a", b"one".to_vec()),
                ("/d", vec![b'x'; MAX_SECRET_BYTES]),
            ]
            .into();
            let fake =
                |fs: &BTreeMap<&str, Vec<u8>>, s: &SecretSource| -> Result<Vec<u8>, String> {
                    match s {
                        SecretSource::File(p) => fs
                            .get(p.as_str())
                            .cloned()
                            .ok_or_else(|| format!("cannot read {p}: No such file or directory")),
                        SecretSource::Environment(v) if v == "B" => Ok(b"two".to_vec()),
                        SecretSource::Environment(v) => {
                            Err(format!("environment variable {v} is not set"))
                        }
                        SecretSource::Content(c) => Ok(c.clone().into_bytes()),
                    }
                };
            let mut asked = 0;
            let data = read_secret_data(&secrets, |s| {
                asked += 1;
                fake(&fs, s)
            })
            .expect("all read");
            let got: Vec<(&str, usize)> = data
                .iter()
                .map(|(s, d)| (s.key.as_str(), d.0.len()))
                .collect();
            // In order, externals left out, the largest allowed size taken.
            assert_eq!(got, [("a", 3), ("b", 3), ("c", 4), ("d", MAX_SECRET_BYTES)]);
            assert_eq!(asked, 4);
            // The third source fails: an error, and no data to create from.
            let mut broken = secrets.clone();
            broken[3].source = file("/missing");
            let mut asked = 0;
            let e = read_secret_data(&broken, |s| {
                asked += 1;
                fake(&fs, s)
            })
            .err()
            .map(|e| e.to_string())
            .unwrap_or_default();
            assert_eq!(
                e,
                "s.yml:7: configs.c.file: cannot read /missing: No such file or directory"
            );
            assert_eq!(asked, 3, "stops at the first that fails");
            let mut unset = secrets.clone();
            unset[2].source = Some(SecretSource::Environment("NOPE".into()));
            let e = read_secret_data(&unset, |s| fake(&fs, s))
                .err()
                .map(|e| e.to_string())
                .unwrap_or_default();
            assert_eq!(
                e,
                "s.yml:7: secrets.b.environment: environment variable NOPE is not set"
            );
            // Too large, or empty: named with the limit.
            let mut fs2 = fs.clone();
            fs2.insert("/d", vec![b'x'; MAX_SECRET_BYTES + 1]);
            fs2.insert("/a", Vec::new());
            let read2 = |big: &BTreeMap<&str, Vec<u8>>, s: &SecretSource| match s {
                SecretSource::File(p) => Ok(big.get(p.as_str()).cloned().unwrap_or_default()),
                _ => Ok(b"x".to_vec()),
            };
            let e = read_secret_data(&secrets[1..], |s| read2(&fs2, s))
                .err()
                .map(|e| e.to_string())
                .unwrap_or_default();
            assert_eq!(
                e,
                format!("s.yml:7: configs.d.file: /d holds more than {MAX_SECRET_BYTES} bytes: a config holds at most {MAX_SECRET_BYTES} bytes (500 KB)")
            );
            let e = read_secret_data(&secrets, |s| read2(&fs2, s))
                .err()
                .map(|e| e.to_string())
                .unwrap_or_default();
            assert_eq!(
                e,
                "s.yml:7: secrets.a.file: /a is empty: a secret holds at least 1 byte"
            );
        }
    }
}

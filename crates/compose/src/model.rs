//! The Compose model Flotilla keeps: every key a Swarm stack acts on, typed
//! and validated, and the conversion from a located YAML tree into it.
//!
//! Keys Compose knows but Flotilla does not model (`links`, `devices`, ...)
//! become one warning per service, as `docker stack deploy` prints
//! "Ignoring unsupported options"; those only Compose without Swarm acts on
//! (`build`, `container_name`, `depends_on`, `restart`) another, which says
//! Swarm ignores them too; keys Compose does not know a third.
//! `x-` keys are ignored everywhere, except `x-flotilla.driver`.
//!
//! Networks: the top-level `networks:` ([`NetworkDef`], overlay only) and
//! each service's `networks:` ([`ServiceNetwork`], list or map form) are
//! read and checked here (a driver other than overlay, a bad subnet, an
//! alias that is no DNS name, a service naming a network the file does not
//! declare); which of them a stack deploys, under which names, is
//! [`crate::stack`]'s business.
//!
//! Secrets and configs: the top-level `secrets:` and `configs:`
//! ([`SecretDef`]: data from a `file`, an `environment` variable or, for a
//! config, inline `content`; or `external`) and each service's
//! `secrets:`/`configs:` (short `- NAME` or long `- source: NAME` syntax,
//! read into [`SecretRef`]s that name the entry by its key). A service
//! naming one the file does not declare is refused at the entry. The data
//! itself is not read here: [`crate::stack::read_secret_data`] does that
//! for a deploy, before anything is created.

use std::collections::{BTreeMap, BTreeSet};

use serde::{Deserialize, Serialize};

use flotilla_types::network::{valid_alias, EndpointMode, NetworkDriver, Subnet};
use flotilla_types::secret::parse_mode;
use flotilla_types::{
    parse_duration_ms, parse_publish, validate_name, Constraint, FailureAction, Mount, MountKind,
    PortConfig, Propagation, Protocol, PublishMode, Ratio, RestartCondition, RestartPolicy,
    SecretKind, SecretRef, ServiceMode, SpecError, UpdateOrder,
};

use super::yaml::{describe, Key, Node, Value};
use super::{dir_of, read_dotenv, ComposeError};

/// Service keys of the Compose specification that Flotilla does not model.
const UNSUPPORTED_SERVICE_KEYS: &[&str] = &[
    "annotations",
    "attach",
    "blkio_config",
    "cgroup",
    "cgroup_parent",
    "cpu_count",
    "cpu_percent",
    "cpu_shares",
    "cpu_quota",
    "cpu_period",
    "cpu_rt_period",
    "cpu_rt_runtime",
    "cpus",
    "cpuset",
    "credential_spec",
    "develop",
    "device_cgroup_rules",
    "devices",
    "dns_opt",
    "domainname",
    "driver_opts",
    "expose",
    "extends",
    "external_links",
    "gpus",
    "group_add",
    "ipc",
    "isolation",
    "label_file",
    "links",
    "mac_address",
    "mem_limit",
    "mem_reservation",
    "mem_swappiness",
    "memswap_limit",
    "models",
    "oom_kill_disable",
    "oom_score_adj",
    "pid",
    "pids_limit",
    "platform",
    "post_start",
    "pre_stop",
    "privileged",
    "profiles",
    "provider",
    "pull_policy",
    "runtime",
    "scale",
    "security_opt",
    "stdin_open",
    "storage_opt",
    "tmpfs",
    "tty",
    "use_api_socket",
    "userns_mode",
    "uts",
    "volumes_from",
];

/// Service keys that only Compose without Swarm acts on: `docker stack
/// deploy` ignores them too, and the warning says so.
const SWARM_IGNORED_KEYS: &[&str] = &["build", "container_name", "depends_on", "restart"];

/// Top-level keys of the Compose specification that Flotilla does not model.
const UNSUPPORTED_TOP_KEYS: &[&str] = &["include", "models"];

/// Keys of a service's entry under `networks:` that Compose knows and
/// Flotilla does not act on: addresses are the leader's to give.
const UNSUPPORTED_SERVICE_NETWORK_KEYS: &[&str] = &[
    "ipv4_address",
    "ipv6_address",
    "link_local_ips",
    "priority",
    "gw_priority",
    "mac_address",
    "driver_opts",
    "interface_name",
];

/// The network of a stack's services that name none, as in Swarm: it
/// needs no declaration, and a file may declare it to configure it.
pub const DEFAULT_NETWORK: &str = "default";

/// Ranges wider than this in a port mapping are refused, so that a short
/// string cannot expand into a huge list.
const MAX_PORT_RANGE: usize = 1_000;

/// A parsed stack: its services (sorted by name), the top-level volumes,
/// networks, secrets and configs, and the warnings about keys that were
/// ignored.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ComposeStack {
    pub services: Vec<ComposeService>,
    pub warnings: Vec<String>,
    /// The top-level `volumes:`, by key.
    pub volumes: BTreeMap<String, VolumeDef>,
    /// The top-level `networks:`, by key.
    pub networks: BTreeMap<String, NetworkDef>,
    /// The top-level `secrets:`, by key.
    pub secrets: BTreeMap<String, SecretDef>,
    /// The top-level `configs:`, by key.
    pub configs: BTreeMap<String, SecretDef>,
}

/// A top-level `secrets:` or `configs:` entry: one the stack creates from
/// the data its source gives, or an existing one (`external`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SecretDef {
    /// The name when the file fixes one (`name:`; for an external one its
    /// name, the key unless `name:` or the legacy `external: {name: X}`
    /// says otherwise); otherwise the stack's name prefixes the key, as
    /// Swarm does.
    pub name: Option<String>,
    /// `external: true`: it exists already; the stack neither creates nor
    /// removes it, and the entry gives no data.
    pub external: bool,
    /// Where the data comes from; `None` exactly when external.
    pub source: Option<SecretSource>,
    /// `labels:` (a mapping or a `KEY=VALUE` list).
    pub labels: BTreeMap<String, String>,
    /// `template_driver: golang`: the data is a template expanded for each
    /// task.
    pub template_driver: Option<String>,
}

/// Where the data of a secret or config comes from. Only named here: a
/// deploy reads it ([`crate::stack::read_secret_data`]).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum SecretSource {
    /// `file:`: a path on the deploying machine, absolute (a relative one
    /// was resolved against the directory of the Compose file that says
    /// it; `~/` is under `$HOME`).
    File(String),
    /// `environment:`: the name of a variable of the deploying shell (over
    /// the `.env` file, as interpolation reads them).
    Environment(String),
    /// `content:` (configs only): the text, interpolated like the rest of
    /// the file.
    Content(String),
}

impl SecretSource {
    /// The key that gives it (`file`, `environment`, `content`).
    pub fn key(&self) -> &'static str {
        match self {
            SecretSource::File(_) => "file",
            SecretSource::Environment(_) => "environment",
            SecretSource::Content(_) => "content",
        }
    }
}

/// The top-level section of a kind: `secrets` or `configs`.
pub fn section_of(kind: SecretKind) -> &'static str {
    match kind {
        SecretKind::Secret => "secrets",
        SecretKind::Config => "configs",
    }
}

/// A top-level `networks:` entry: an overlay network of the stack, or an
/// existing one it joins (`external`).
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
pub struct NetworkDef {
    /// The network's name when the file fixes one (`name:`; for an
    /// external network its name, the key unless `name:` or the legacy
    /// `external: {name: X}` says otherwise); otherwise the stack's name
    /// prefixes the key, as Swarm does.
    pub name: Option<String>,
    /// `external: true`: it exists already; the stack neither creates nor
    /// removes it.
    pub external: bool,
    /// `driver:`; only overlay exists (another is refused).
    pub driver: NetworkDriver,
    pub internal: bool,
    pub attachable: bool,
    /// `driver_opts: {encrypted: ""}` (any value but `false`).
    pub encrypted: bool,
    /// Network labels (`labels:`, a mapping or a `KEY=VALUE` list).
    pub labels: BTreeMap<String, String>,
    /// `ipam.config[0].subnet`.
    pub subnet: Option<Subnet>,
}

/// A service's entry under `networks:` (the network is the entry's key).
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
pub struct ServiceNetwork {
    /// Further names the service answers to on that network, each a DNS
    /// name; repeats dropped.
    pub aliases: Vec<String>,
}

/// A top-level `volumes:` entry: a named volume of each node's engine.
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
pub struct VolumeDef {
    /// The engine's name for it when the file fixes one (`name:`, or
    /// `external: true`); otherwise the stack's name prefixes the key, as
    /// Swarm does.
    pub name: Option<String>,
}

/// One service, as Swarm would read it.
#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize)]
pub struct ComposeService {
    pub name: String,
    pub image: Option<String>,
    /// `command`, split like a shell when written as a string.
    pub command: Option<Vec<String>>,
    pub entrypoint: Option<Vec<String>>,
    /// `env_file` contents with `environment` over them; entries without a
    /// value took theirs from the variables, or were dropped if unset.
    pub environment: BTreeMap<String, String>,
    /// Container labels (`labels:`), not service labels.
    pub labels: BTreeMap<String, String>,
    /// `ports:`, short and long syntax, ranges expanded; an entry equal to
    /// an earlier one (same published port, target and protocol) replaces
    /// it, as Compose de-duplicates them.
    pub ports: Vec<PortConfig>,
    pub healthcheck: Option<Healthcheck>,
    pub stop_grace_period_ms: Option<u64>,
    /// `init: true`: run the container under the engine's init process.
    pub init: Option<bool>,
    /// `volumes:` of the service: bind mounts (relative paths resolved
    /// against the file's directory), named and anonymous volumes, tmpfs.
    /// Named volumes keep the file's key; the stack resolves the name.
    pub volumes: Vec<Mount>,
    pub deploy: ComposeDeploy,
    pub depends_on: Vec<String>,
    /// `networks:` by network key (the list form is keys without options);
    /// empty: the stack's `default` network, as in Swarm.
    pub networks: BTreeMap<String, ServiceNetwork>,
    /// `network_mode: host`: on the node's own network, on no overlay
    /// network (and not on the stack's default one).
    pub host_network: bool,
    /// `secrets:`, short and long syntax, each naming a top-level entry by
    /// its key (`source`; the stack gives the full name), with Swarm's
    /// defaults: target the key (`/run/secrets/KEY`), uid and gid 0, mode
    /// 0444. A later entry for the same path in the task replaces an
    /// earlier one, as Compose de-duplicates them.
    pub secrets: Vec<SecretRef>,
    /// `configs:`, as `secrets` (the target defaults to `/KEY`).
    pub configs: Vec<SecretRef>,
    /// `x-flotilla.driver`.
    pub driver: Option<String>,
    /// `hostname`, a template (`{{.Task.Slot}}`) expanded on the node.
    pub hostname: Option<String>,
    /// `user` (`USER[:GROUP]`).
    pub user: Option<String>,
    pub working_dir: Option<String>,
    pub stop_signal: Option<String>,
    pub read_only: Option<bool>,
    /// `shm_size` in bytes.
    pub shm_size: Option<u64>,
    /// `sysctls`, a mapping or a `KEY=VALUE` list.
    pub sysctls: BTreeMap<String, String>,
    pub cap_add: Vec<String>,
    pub cap_drop: Vec<String>,
    /// `ulimits`: `nproc: 65535` (soft and hard) or `nofile: {soft, hard}`.
    pub ulimits: Vec<flotilla_types::Ulimit>,
    /// `extra_hosts`: a `HOST:IP` (or `HOST=IP`) list or a mapping.
    pub extra_hosts: Vec<flotilla_types::ExtraHost>,
    /// `dns`, a string or a list.
    pub dns: Vec<String>,
    /// `dns_search`, a string or a list.
    pub dns_search: Vec<String>,
    /// `logging`: `driver` and `options`.
    pub logging: Option<flotilla_types::LogDriver>,
}

/// `healthcheck:`. `test` is normalised to the list form
/// (`["CMD-SHELL", "..."]` for a string).
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
pub struct Healthcheck {
    pub test: Vec<String>,
    pub interval_ms: Option<u64>,
    pub timeout_ms: Option<u64>,
    pub retries: Option<u64>,
    pub start_period_ms: Option<u64>,
    pub start_interval_ms: Option<u64>,
    /// `disable: true` or `test: ["NONE"]`.
    pub disable: bool,
}

/// `deploy:`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ComposeDeploy {
    /// Replicated (default 1 replica) or global.
    pub mode: ServiceMode,
    pub constraints: Vec<Constraint>,
    pub max_replicas_per_node: Option<u64>,
    /// `preferences: [{spread: node.labels.zone}]`, as the spread targets.
    pub spread: Vec<String>,
    pub restart_policy: Option<RestartPolicy>,
    pub update_config: Option<UpdateConfig>,
    pub rollback_config: Option<UpdateConfig>,
    pub limits: Resources,
    pub reservations: Resources,
    /// Service labels.
    pub labels: BTreeMap<String, String>,
    /// `vip` (the default) or `dnsrr`.
    pub endpoint_mode: Option<EndpointMode>,
}

impl Default for ComposeDeploy {
    fn default() -> Self {
        ComposeDeploy {
            mode: ServiceMode::Replicated { replicas: 1 },
            constraints: Vec::new(),
            max_replicas_per_node: None,
            spread: Vec::new(),
            restart_policy: None,
            update_config: None,
            rollback_config: None,
            limits: Resources::default(),
            reservations: Resources::default(),
            labels: BTreeMap::new(),
            endpoint_mode: None,
        }
    }
}

/// `update_config:` / `rollback_config:`.
#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize)]
pub struct UpdateConfig {
    pub parallelism: Option<u64>,
    pub delay_ms: Option<u64>,
    /// continue, pause or rollback (rollback only in update_config: a
    /// rule of the spec, checked by `ServiceSpec::validate`).
    pub failure_action: Option<String>,
    pub monitor_ms: Option<u64>,
    pub max_failure_ratio: Option<f64>,
    /// stop-first or start-first.
    pub order: Option<String>,
}

/// `resources.limits` / `resources.reservations`.
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
pub struct Resources {
    /// CPUs in billionths (`cpus: "0.5"` is 500_000_000).
    pub nano_cpus: Option<u64>,
    pub memory_bytes: Option<u64>,
}

type R<T> = Result<T, ComposeError>;

fn join(path: &str, key: &str) -> String {
    if path.is_empty() {
        key.to_string()
    } else {
        format!("{path}.{key}")
    }
}

fn expected(node: &Node, path: &str, what: &str) -> ComposeError {
    ComposeError::at(
        node,
        path,
        format!("expected {what}, found {}", describe(&node.value)),
    )
}

fn map<'a>(node: &'a Node, path: &str) -> R<&'a [(Key, Node)]> {
    match &node.value {
        Value::Map(m) => Ok(m),
        _ => Err(expected(node, path, "a mapping")),
    }
}

fn scalar_text(v: &Value) -> Option<String> {
    match v {
        Value::Str(s) => Some(s.clone()),
        // As Compose formats a number read as a float: `1e3` is "1000".
        Value::Float(f) => Some(f.to_string()),
        Value::Int(_) | Value::Bool(_) => Some(describe(v)),
        _ => None,
    }
}

fn string(node: &Node, path: &str) -> R<String> {
    scalar_text(&node.value).ok_or_else(|| expected(node, path, "a string"))
}

/// Integers may come as strings, since interpolation yields strings.
fn int(node: &Node, path: &str) -> R<i128> {
    match &node.value {
        Value::Int(i) => Ok(*i),
        Value::Str(s) => s
            .trim()
            .parse()
            .map_err(|_| expected(node, path, "an integer")),
        _ => Err(expected(node, path, "an integer")),
    }
}

fn uint(node: &Node, path: &str) -> R<u64> {
    let i = int(node, path)?;
    u64::try_from(i).map_err(|_| {
        ComposeError::at(
            node,
            path,
            format!("{i} is {}", if i < 0 { "negative" } else { "too large" }),
        )
    })
}

fn float(node: &Node, path: &str) -> R<f64> {
    let f = match &node.value {
        Value::Int(i) => *i as f64,
        Value::Float(f) => *f,
        Value::Str(s) => s
            .trim()
            .parse()
            .map_err(|_| expected(node, path, "a number"))?,
        _ => return Err(expected(node, path, "a number")),
    };
    if f.is_finite() {
        Ok(f)
    } else {
        Err(expected(node, path, "a finite number"))
    }
}

fn boolean(node: &Node, path: &str) -> R<bool> {
    match &node.value {
        Value::Bool(b) => Ok(*b),
        Value::Str(s) if s == "true" => Ok(true),
        Value::Str(s) if s == "false" => Ok(false),
        _ => Err(expected(node, path, "true or false")),
    }
}

fn duration(node: &Node, path: &str) -> R<u64> {
    let text = match &node.value {
        Value::Int(0) => return Ok(0),
        _ => string(node, path)?,
    };
    parse_duration_ms(&text).map_err(|e| ComposeError::at(node, path, e.to_string()))
}

fn string_list(node: &Node, path: &str) -> R<Vec<String>> {
    match &node.value {
        Value::Seq(items) => items
            .iter()
            .enumerate()
            .map(|(i, n)| string(n, &format!("{path}[{i}]")))
            .collect(),
        _ => Err(expected(node, path, "a list")),
    }
}

/// `command:`/`entrypoint:`/`healthcheck.test`: a string split like a shell,
/// or a list.
fn words(node: &Node, path: &str) -> R<Vec<String>> {
    match &node.value {
        Value::Str(s) => {
            flotilla_types::split_command(s).map_err(|e| ComposeError::at(node, path, e))
        }
        Value::Seq(_) => string_list(node, path),
        _ => Err(expected(node, path, "a string or a list")),
    }
}

/// `environment:`/`labels:` as a mapping or a `KEY=VALUE` list; entries with
/// no value are `None`.
fn pairs(node: &Node, path: &str) -> R<Vec<(String, Option<String>)>> {
    match &node.value {
        Value::Map(m) => m
            .iter()
            .map(|(k, v)| match &v.value {
                Value::Null => Ok((k.name.clone(), None)),
                _ => Ok((k.name.clone(), Some(string(v, &join(path, &k.name))?))),
            })
            .collect(),
        Value::Seq(items) => items
            .iter()
            .enumerate()
            .map(|(i, n)| {
                let p = format!("{path}[{i}]");
                let s = string(n, &p)?;
                match s.split_once('=') {
                    Some((k, v)) if !k.is_empty() => Ok((k.to_string(), Some(v.to_string()))),
                    None if !s.is_empty() => Ok((s, None)),
                    _ => Err(ComposeError::at(n, &p, format!("{s:?} is not KEY=VALUE"))),
                }
            })
            .collect(),
        _ => Err(expected(node, path, "a mapping or a list of KEY=VALUE")),
    }
}

fn labels(node: &Node, path: &str) -> R<BTreeMap<String, String>> {
    Ok(pairs(node, path)?
        .into_iter()
        .map(|(k, v)| (k, v.unwrap_or_default()))
        .collect())
}

/// Reports keys not in `known`, skipping `x-` keys.
fn unknown_keys(entries: &[(Key, Node)], path: &str, known: &[&str], out: &mut Vec<String>) {
    for (k, _) in entries {
        if !k.name.starts_with("x-") && !known.contains(&k.name.as_str()) {
            out.push(join(path, &k.name));
        }
    }
}

/// Converts the merged, interpolated tree.
pub(super) fn convert(
    root: &Node,
    first_file: &str,
    lookup: &dyn Fn(&str) -> Option<String>,
) -> R<ComposeStack> {
    let empty = || ComposeError::Empty {
        file: first_file.to_string(),
    };
    let top = match &root.value {
        Value::Null => return Err(empty()),
        _ => map(root, "(top level)")?,
    };
    let mut warnings = Vec::new();
    let mut ignored = Vec::new();
    let mut unknown = Vec::new();
    let mut services_node = None;
    let mut volumes = BTreeMap::new();
    let mut networks = BTreeMap::new();
    let mut secrets = BTreeMap::new();
    let mut configs = BTreeMap::new();
    for (k, v) in top {
        match k.name.as_str() {
            "services" => services_node = Some(v),
            "volumes" => volumes = volume_defs(v, &mut warnings)?,
            "networks" => networks = network_defs(v, &mut warnings)?,
            "secrets" => secrets = secret_defs(SecretKind::Secret, v, lookup)?,
            "configs" => configs = secret_defs(SecretKind::Config, v, lookup)?,
            "version" | "name" => {}
            n if n.starts_with("x-") => {}
            n if UNSUPPORTED_TOP_KEYS.contains(&n) => ignored.push(n.to_string()),
            n => unknown.push(n.to_string()),
        }
    }
    if !ignored.is_empty() {
        warnings.push(format!(
            "Ignoring unsupported top-level options: {}",
            ignored.join(", ")
        ));
    }
    if !unknown.is_empty() {
        warnings.push(format!(
            "Ignoring unknown top-level keys: {}",
            unknown.join(", ")
        ));
    }
    let services_node = services_node.ok_or_else(empty)?;
    let entries = match &services_node.value {
        Value::Null => return Err(empty()),
        _ => map(services_node, "services")?,
    };
    if entries.is_empty() {
        return Err(empty());
    }
    let mut services = Vec::new();
    let declared = Declared {
        secrets: &secrets,
        configs: &configs,
    };
    for (k, v) in entries {
        let path = join("services", &k.name);
        validate_name(&k.name).map_err(|e| ComposeError::at(v, &path, e.to_string()))?;
        services.push(service(
            &k.name,
            v,
            &path,
            lookup,
            &declared,
            &mut warnings,
        )?);
    }
    services.sort_by(|a, b| a.name.cmp(&b.name));
    check_stack(&services, entries, &volumes, &networks)?;
    Ok(ComposeStack {
        services,
        warnings,
        volumes,
        networks,
        secrets,
        configs,
    })
}

/// The top-level `volumes:`. Only local volumes exist: a `driver` other
/// than `local`, or `driver_opts`, is named in a warning.
fn volume_defs(node: &Node, warnings: &mut Vec<String>) -> R<BTreeMap<String, VolumeDef>> {
    let mut out = BTreeMap::new();
    if matches!(node.value, Value::Null) {
        return Ok(out);
    }
    let mut unsupported = Vec::new();
    for (k, v) in map(node, "volumes")? {
        let path = join("volumes", &k.name);
        let mut def = VolumeDef::default();
        let mut external = false;
        let entries = match &v.value {
            Value::Null => &[][..],
            _ => map(v, &path)?,
        };
        for (kk, vv) in entries {
            let p = join(&path, &kk.name);
            match kk.name.as_str() {
                "name" => def.name = Some(string(vv, &p)?),
                "external" => match &vv.value {
                    // The old form: `external: {name: NAME}`.
                    Value::Map(_) => {
                        external = true;
                        if let Some(n) = vv.get("name") {
                            def.name = Some(string(n, &join(&p, "name"))?);
                        }
                    }
                    _ => external = boolean(vv, &p)?,
                },
                "driver" => {
                    if string(vv, &p)? != "local" {
                        unsupported.push(p);
                    }
                }
                "driver_opts" => unsupported.push(p),
                "labels" => {}
                n if n.starts_with("x-") => {}
                other => return Err(ComposeError::at(vv, &p, format!("unknown key {other:?}"))),
            }
        }
        if external && def.name.is_none() {
            def.name = Some(k.name.clone());
        }
        out.insert(k.name.clone(), def);
    }
    if !unsupported.is_empty() {
        warnings.push(format!(
            "Ignoring unsupported volume options (volumes are each node's local volumes): {}",
            unsupported.join(", ")
        ));
    }
    Ok(out)
}

/// The top-level `networks:`. Options Compose knows that an overlay of
/// Flotilla has no use for (driver options other than `encrypted`, IPAM
/// gateways and ranges, a second IPAM config, IPv6, options of an external
/// network) are named in one warning, keys Compose does not know in
/// another.
fn network_defs(node: &Node, warnings: &mut Vec<String>) -> R<BTreeMap<String, NetworkDef>> {
    let mut out = BTreeMap::new();
    if matches!(node.value, Value::Null) {
        return Ok(out);
    }
    let mut unsupported = Vec::new();
    let mut unknown = Vec::new();
    for (k, v) in map(node, "networks")? {
        let path = join("networks", &k.name);
        let (def, set) = network_def(v, &path, &mut unsupported, &mut unknown)?;
        if def.external {
            // Swarm looks an external network up; what the file says it
            // would be is not asked of it.
            unsupported.extend(set.into_iter().map(|key| format!("{key} (external)")));
        }
        out.insert(k.name.clone(), def);
    }
    if !unsupported.is_empty() {
        warnings.push(format!(
            "Ignoring unsupported network options: {}",
            unsupported.join(", ")
        ));
    }
    if !unknown.is_empty() {
        warnings.push(format!(
            "Ignoring unknown network keys: {}",
            unknown.join(", ")
        ));
    }
    Ok(out)
}

/// One top-level network, and the keys set that describe a network to
/// create (which an external network ignores).
fn network_def(
    node: &Node,
    path: &str,
    unsupported: &mut Vec<String>,
    unknown: &mut Vec<String>,
) -> R<(NetworkDef, Vec<String>)> {
    let key = path.strip_prefix("networks.").unwrap_or(path);
    let entries = match &node.value {
        Value::Null => &[][..],
        _ => map(node, path)?,
    };
    let mut def = NetworkDef::default();
    let mut set = Vec::new();
    // The node that fixes the name, and its key path, for errors.
    let mut name_at: Option<(&Node, String)> = None;
    let mut legacy_name: Option<(String, &Node, String)> = None;
    for (k, v) in entries {
        let p = join(path, &k.name);
        if matches!(v.value, Value::Null) {
            continue;
        }
        match k.name.as_str() {
            "name" => {
                def.name = Some(string(v, &p)?);
                name_at = Some((v, p));
            }
            "external" => match &v.value {
                // The old form: `external: {name: NAME}`.
                Value::Map(m) => {
                    def.external = true;
                    for (ek, ev) in m {
                        let ep = join(&p, &ek.name);
                        match ek.name.as_str() {
                            "name" => legacy_name = Some((string(ev, &ep)?, ev, ep)),
                            n if n.starts_with("x-") => {}
                            _ => unknown.push(ep),
                        }
                    }
                }
                _ => def.external = boolean(v, &p)?,
            },
            "driver" => {
                let d = string(v, &p)?;
                def.driver = NetworkDriver::parse(&d).map_err(|e| ComposeError::at(v, &p, e))?;
            }
            "driver_opts" => {
                for (ok, ov) in map(v, &p)? {
                    if ok.name == "encrypted" {
                        // Docker's form is `encrypted: ""`; only "false"
                        // says no.
                        def.encrypted = !matches!(&ov.value, Value::Bool(false))
                            && scalar_text(&ov.value).as_deref() != Some("false");
                    } else {
                        unsupported.push(join(&p, &ok.name));
                    }
                }
                set.push(p);
            }
            "internal" => {
                def.internal = boolean(v, &p)?;
                set.push(p);
            }
            "attachable" => {
                def.attachable = boolean(v, &p)?;
                set.push(p);
            }
            "labels" => {
                def.labels = labels(v, &p)?;
                if let Some(bad) = def.labels.keys().find(|l| l.is_empty() || l.contains('=')) {
                    return Err(ComposeError::at(
                        v,
                        &p,
                        format!("invalid label key {bad:?}"),
                    ));
                }
                set.push(p);
            }
            "ipam" => {
                def.subnet = ipam(v, &p, unsupported, unknown)?;
                set.push(p);
            }
            "enable_ipv4" | "enable_ipv6" => unsupported.push(p),
            n if n.starts_with("x-") => {}
            _ => unknown.push(p),
        }
    }
    legacy_external_name(legacy_name, path, &mut def.name, &mut name_at)?;
    if def.external && def.name.is_none() {
        def.name = Some(key.to_string());
    }
    // The name on the cluster, or the part of it the stack's name
    // prefixes, is a name as the daemon checks it.
    let name = def.name.as_deref().unwrap_or(key);
    if let Err(e) = validate_name(name) {
        let (at, p) = name_at.unwrap_or((node, path.to_string()));
        return Err(ComposeError::at(at, &p, e.to_string()));
    }
    Ok((def, set))
}

/// A network's `ipam:`: the default driver and the subnet of its first
/// config entry; the rest is named in the warnings.
fn ipam(
    node: &Node,
    path: &str,
    unsupported: &mut Vec<String>,
    unknown: &mut Vec<String>,
) -> R<Option<Subnet>> {
    let mut subnet = None;
    for (k, v) in map(node, path)? {
        let p = join(path, &k.name);
        if matches!(v.value, Value::Null) {
            continue;
        }
        match k.name.as_str() {
            "driver" => {
                if string(v, &p)? != "default" {
                    unsupported.push(p);
                }
            }
            "config" => {
                let Value::Seq(items) = &v.value else {
                    return Err(expected(v, &p, "a list"));
                };
                for (i, item) in items.iter().enumerate() {
                    let ip = format!("{p}[{i}]");
                    // One subnet per network.
                    if i > 0 {
                        unsupported.push(ip);
                        continue;
                    }
                    for (ck, cv) in map(item, &ip)? {
                        let cp = join(&ip, &ck.name);
                        match ck.name.as_str() {
                            "subnet" => {
                                let text = string(cv, &cp)?;
                                subnet = Some(
                                    text.parse::<Subnet>()
                                        .map_err(|e| ComposeError::at(cv, &cp, e.to_string()))?,
                                );
                            }
                            "gateway" | "ip_range" | "aux_addresses" => unsupported.push(cp),
                            n if n.starts_with("x-") => {}
                            _ => unknown.push(cp),
                        }
                    }
                }
            }
            "options" => unsupported.push(p),
            n if n.starts_with("x-") => {}
            _ => unknown.push(p),
        }
    }
    Ok(subnet)
}

/// A service's `networks:`: a list of network keys, or a mapping of them
/// to `null` or `{aliases: [...]}`. Addresses and priorities go to the
/// ignored options (`networks.front.ipv4_address`).
fn service_networks(
    node: &Node,
    path: &str,
    ignored: &mut Vec<String>,
    unknown: &mut Vec<String>,
) -> R<BTreeMap<String, ServiceNetwork>> {
    let mut out: BTreeMap<String, ServiceNetwork> = BTreeMap::new();
    match &node.value {
        Value::Seq(items) => {
            for (i, n) in items.iter().enumerate() {
                let name = string(n, &format!("{path}[{i}]"))?;
                out.entry(name).or_default();
            }
        }
        Value::Map(entries) => {
            for (k, v) in entries {
                let p = join(path, &k.name);
                let fields = match &v.value {
                    Value::Null => &[][..],
                    _ => map(v, &p)?,
                };
                let mut net = ServiceNetwork::default();
                for (fk, fv) in fields {
                    let fp = join(&p, &fk.name);
                    let rel = format!("networks.{}.{}", k.name, fk.name);
                    if matches!(fv.value, Value::Null) {
                        continue;
                    }
                    match fk.name.as_str() {
                        "aliases" => {
                            for (i, a) in string_list(fv, &fp)?.into_iter().enumerate() {
                                if !valid_alias(&a) {
                                    let at = match &fv.value {
                                        Value::Seq(items) => items.get(i).unwrap_or(fv),
                                        _ => fv,
                                    };
                                    return Err(ComposeError::at(
                                        at,
                                        &format!("{fp}[{i}]"),
                                        SpecError::Alias(a).to_string(),
                                    ));
                                }
                                if !net.aliases.contains(&a) {
                                    net.aliases.push(a);
                                }
                            }
                        }
                        n if UNSUPPORTED_SERVICE_NETWORK_KEYS.contains(&n) => ignored.push(rel),
                        n if n.starts_with("x-") => {}
                        _ => unknown.push(rel),
                    }
                }
                out.insert(k.name.clone(), net);
            }
        }
        _ => return Err(expected(node, path, "a list or a mapping")),
    }
    Ok(out)
}

/// Where the entry for network `name` is written in a service's
/// `networks:` (a list item, or a key of the mapping).
fn network_entry_line(node: &Node, name: &str) -> (String, u64) {
    let found = match &node.value {
        Value::Seq(items) => items
            .iter()
            .find(|n| matches!(&n.value, Value::Str(s) if s == name))
            .map(|n| (n.file.to_string(), n.line)),
        Value::Map(entries) => entries
            .iter()
            .find(|(k, _)| k.name == name)
            .map(|(k, v)| (v.file.to_string(), if k.line > 0 { k.line } else { v.line })),
        _ => None,
    };
    found.unwrap_or_else(|| (node.file.to_string(), node.line))
}

/// A service's `volumes:`, short (`SRC:DST[:ro]`, `DST`) or long syntax.
fn mounts(
    node: &Node,
    path: &str,
    lookup: &dyn Fn(&str) -> Option<String>,
    ignored: &mut Vec<String>,
) -> R<Vec<Mount>> {
    let Value::Seq(items) = &node.value else {
        return Err(expected(node, path, "a list"));
    };
    let mut out: Vec<Mount> = Vec::new();
    for (i, n) in items.iter().enumerate() {
        let p = format!("{path}[{i}]");
        let mount = match &n.value {
            Value::Map(m) => {
                let mut mount = Mount {
                    kind: MountKind::Volume,
                    source: String::new(),
                    target: String::new(),
                    read_only: false,
                    propagation: None,
                };
                for (k, v) in m {
                    let kp = join(&p, &k.name);
                    match k.name.as_str() {
                        "type" => {
                            let t = string(v, &kp)?;
                            mount.kind = MountKind::parse(&t).ok_or_else(|| {
                                ComposeError::at(
                                    v,
                                    &kp,
                                    format!("{t:?} is not bind, volume or tmpfs"),
                                )
                            })?;
                        }
                        "source" => mount.source = string(v, &kp)?,
                        "target" => mount.target = string(v, &kp)?,
                        "read_only" => mount.read_only = boolean(v, &kp)?,
                        "bind" => {
                            for (bk, bv) in map(v, &kp)? {
                                let bp = join(&kp, &bk.name);
                                match bk.name.as_str() {
                                    "propagation" => {
                                        let text = string(bv, &bp)?;
                                        mount.propagation = Some(
                                            Propagation::parse(&text)
                                                .map_err(|e| ComposeError::at(bv, &bp, e))?,
                                        );
                                    }
                                    n if n.starts_with("x-") => {}
                                    n => ignored.push(format!("volumes[{i}].bind.{n}")),
                                }
                            }
                        }
                        // Docker on Linux ignores it: every mount is
                        // consistent there.
                        "consistency" => {
                            let c = string(v, &kp)?;
                            if !matches!(
                                c.as_str(),
                                "consistent" | "cached" | "delegated" | "default"
                            ) {
                                return Err(ComposeError::at(
                                    v,
                                    &kp,
                                    format!("{c:?} is not consistent, cached or delegated"),
                                ));
                            }
                        }
                        "volume" | "tmpfs" => ignored.push(format!("volumes[{i}].{}", k.name)),
                        n if n.starts_with("x-") => {}
                        other => {
                            return Err(ComposeError::at(v, &kp, format!("unknown key {other:?}")))
                        }
                    }
                }
                if mount.target.is_empty() {
                    return Err(ComposeError::at(n, &p, "missing target"));
                }
                if mount.kind == MountKind::Bind {
                    mount.source = host_path(n, &p, &mount.source, lookup)?;
                }
                mount
            }
            _ => {
                let text = string(n, &p)?;
                let parts: Vec<&str> = text.split(':').collect();
                let (source, target, mode) = match parts.as_slice() {
                    [t] => ("", *t, ""),
                    [s, t] => (*s, *t, ""),
                    [s, t, m] => (*s, *t, *m),
                    _ => {
                        return Err(ComposeError::at(
                            n,
                            &p,
                            format!("invalid volume {text:?}: expected [SOURCE:]TARGET[:MODE]"),
                        ))
                    }
                };
                let mut read_only = false;
                let mut propagation = None;
                for flag in mode.split(',').filter(|f| !f.is_empty()) {
                    match flag {
                        "ro" => read_only = true,
                        "rw" => read_only = false,
                        "rprivate" | "private" | "rshared" | "shared" | "rslave" | "slave" => {
                            propagation = Propagation::parse(flag).ok()
                        }
                        "z" | "Z" | "nocopy" | "cached" | "delegated" | "consistent" => {}
                        other => {
                            return Err(ComposeError::at(
                                n,
                                &p,
                                format!("invalid volume mode {other:?}: expected ro or rw"),
                            ))
                        }
                    }
                }
                let bind =
                    source.starts_with('/') || source.starts_with('.') || source.starts_with('~');
                Mount {
                    kind: if bind {
                        MountKind::Bind
                    } else {
                        MountKind::Volume
                    },
                    source: if bind {
                        host_path(n, &p, source, lookup)?
                    } else {
                        source.to_string()
                    },
                    target: target.to_string(),
                    read_only,
                    propagation,
                }
            }
        };
        // The spec's rule, here where the entry's line is known; the
        // conversion checks the rest of the mount (a bind's source).
        if let Err(SpecError::MountTarget(target)) = mount.validate() {
            return Err(ComposeError::at(
                n,
                &p,
                format!("target {target:?} must be an absolute path"),
            ));
        }
        // A later entry for the same target wins, as when files merge.
        out.retain(|m| m.target != mount.target);
        out.push(mount);
    }
    Ok(out)
}

/// A bind mount's source on the node: absolute as written, `./x` relative
/// to the directory of the file that says it, `~/x` under `$HOME`.
fn host_path(
    node: &Node,
    path: &str,
    source: &str,
    lookup: &dyn Fn(&str) -> Option<String>,
) -> R<String> {
    if source.starts_with('/') {
        return Ok(source.to_string());
    }
    if let Some(rest) = source.strip_prefix('~') {
        let home =
            lookup("HOME").ok_or_else(|| ComposeError::at(node, path, "~ needs HOME to be set"))?;
        return Ok(format!("{home}{rest}"));
    }
    if source.is_empty() {
        return Err(ComposeError::at(node, path, "a bind mount needs a source"));
    }
    let dir = dir_of(&node.file);
    let base = if dir.is_absolute() {
        dir.to_path_buf()
    } else {
        std::env::current_dir()
            .map_err(|e| ComposeError::at(node, path, format!("cannot resolve {source:?}: {e}")))?
            .join(dir)
    };
    let mut out = std::path::PathBuf::new();
    for part in base.join(source).components() {
        match part {
            std::path::Component::CurDir => {}
            std::path::Component::ParentDir => {
                out.pop();
            }
            other => out.push(other.as_os_str()),
        }
    }
    Ok(out.to_string_lossy().into_owned())
}

/// The top-level secrets and configs, for the services that name them.
struct Declared<'a> {
    secrets: &'a BTreeMap<String, SecretDef>,
    configs: &'a BTreeMap<String, SecretDef>,
}

impl Declared<'_> {
    fn of(&self, kind: SecretKind) -> &BTreeMap<String, SecretDef> {
        match kind {
            SecretKind::Secret => self.secrets,
            SecretKind::Config => self.configs,
        }
    }
}

/// An error at a mapping key (its own line, or its value's if unknown).
fn at_key(key: &Key, node: &Node, path: &str, reason: impl Into<String>) -> ComposeError {
    ComposeError::Invalid {
        file: node.file.to_string(),
        line: if key.line > 0 { key.line } else { node.line },
        path: super::one_line(path),
        reason: super::one_line(&reason.into()),
    }
}

/// The top-level `secrets:` or `configs:` (by `kind`).
fn secret_defs(
    kind: SecretKind,
    node: &Node,
    lookup: &dyn Fn(&str) -> Option<String>,
) -> R<BTreeMap<String, SecretDef>> {
    let section = section_of(kind);
    let mut out = BTreeMap::new();
    if matches!(node.value, Value::Null) {
        return Ok(out);
    }
    for (k, v) in map(node, section)? {
        let path = join(section, &k.name);
        out.insert(k.name.clone(), secret_def(kind, k, v, &path, lookup)?);
    }
    Ok(out)
}

/// One top-level secret or config: exactly one of `file`, `environment`,
/// `content` (configs only) or `external: true`, with `name` and `labels`.
/// Anything else (drivers, template drivers, unknown keys) is refused at
/// its line: nothing about a secret is ignored silently.
fn secret_def(
    kind: SecretKind,
    key: &Key,
    node: &Node,
    path: &str,
    lookup: &dyn Fn(&str) -> Option<String>,
) -> R<SecretDef> {
    let entries = match &node.value {
        Value::Null => &[][..],
        _ => map(node, path)?,
    };
    let noun = kind.noun();
    let mut def = SecretDef {
        name: None,
        external: false,
        source: None,
        labels: BTreeMap::new(),
        template_driver: None,
    };
    // The file and line of the key that gives the data, for errors.
    let mut source_at = (node.file.to_string(), node.line);
    // The node that fixes the name, and its key path, for errors.
    let mut name_at: Option<(&Node, String)> = None;
    let mut legacy_name: Option<(String, &Node, String)> = None;
    let mut labels_at: Option<(&Node, String)> = None;
    for (k, v) in entries {
        let p = join(path, &k.name);
        if matches!(v.value, Value::Null) {
            continue;
        }
        let source = match k.name.as_str() {
            "name" => {
                def.name = Some(string(v, &p)?);
                name_at = Some((v, p));
                None
            }
            "external" => {
                match &v.value {
                    // The old form: `external: {name: NAME}`.
                    Value::Map(m) => {
                        def.external = true;
                        for (ek, ev) in m {
                            let ep = join(&p, &ek.name);
                            match ek.name.as_str() {
                                "name" => legacy_name = Some((string(ev, &ep)?, ev, ep)),
                                n if n.starts_with("x-") => {}
                                other => {
                                    return Err(ComposeError::at(
                                        ev,
                                        &ep,
                                        format!("unknown key {other:?}"),
                                    ))
                                }
                            }
                        }
                    }
                    _ => def.external = boolean(v, &p)?,
                }
                None
            }
            "file" => {
                let file = string(v, &p)?;
                if file.trim().is_empty() {
                    return Err(ComposeError::at(v, &p, "an empty path"));
                }
                Some((SecretSource::File(host_path(v, &p, &file, lookup)?), v, p))
            }
            "environment" => {
                let var = string(v, &p)?;
                if var.is_empty() || var.contains(['=', '\0']) {
                    return Err(ComposeError::at(
                        v,
                        &p,
                        format!("{var:?} is not the name of an environment variable"),
                    ));
                }
                Some((SecretSource::Environment(var), v, p))
            }
            "content" if kind == SecretKind::Config => {
                Some((SecretSource::Content(string(v, &p)?), v, p))
            }
            "content" => {
                return Err(ComposeError::at(
                    v,
                    &p,
                    "content is for configs; a secret's data comes from a file or an environment variable",
                ))
            }
            "labels" => {
                def.labels = labels(v, &p)?;
                if let Some(bad) = def.labels.keys().find(|l| l.is_empty() || l.contains('=')) {
                    return Err(ComposeError::at(
                        v,
                        &p,
                        format!("invalid label key {bad:?}"),
                    ));
                }
                labels_at = Some((v, p));
                None
            }
            "template_driver" => {
                let driver = string(v, &p)?;
                if driver != "golang" {
                    return Err(ComposeError::at(
                        v,
                        &p,
                        format!("unknown template driver {driver:?}: only golang"),
                    ));
                }
                def.template_driver = Some(driver);
                None
            }
            "driver" | "driver_opts" => {
                return Err(ComposeError::at(
                    v,
                    &p,
                    format!(
                        "{} is not supported: {noun} data is stored by the cluster, as written",
                        k.name
                    ),
                ))
            }
            n if n.starts_with("x-") => None,
            other => return Err(ComposeError::at(v, &p, format!("unknown key {other:?}"))),
        };
        if let Some((source, v, p)) = source {
            if let Some(first) = &def.source {
                return Err(ComposeError::at(
                    v,
                    &p,
                    format!(
                        "{} and {} both give the data of {noun} {}: give one",
                        first.key(),
                        source.key(),
                        key.name
                    ),
                ));
            }
            def.source = Some(source);
            source_at = (v.file.to_string(), v.line);
        }
    }
    legacy_external_name(legacy_name, path, &mut def.name, &mut name_at)?;
    if def.external {
        if let Some(source) = &def.source {
            let (file, line) = source_at;
            return Err(ComposeError::Invalid {
                file,
                line,
                path: super::one_line(&join(path, source.key())),
                reason: super::one_line(&format!(
                    "an external {noun} exists already and takes no data: remove {} or external",
                    source.key()
                )),
            });
        }
        if let Some((n, p)) = labels_at {
            return Err(ComposeError::at(
                n,
                &p,
                format!("labels apply to a {noun} the stack creates, not to an external one"),
            ));
        }
        if def.name.is_none() {
            def.name = Some(key.name.clone());
        }
    } else if def.source.is_none() {
        let sources = match kind {
            SecretKind::Secret => "file, environment or external: true",
            SecretKind::Config => "file, environment, content or external: true",
        };
        return Err(at_key(
            key,
            node,
            path,
            format!("{noun} {} gives no data: set {sources}", key.name),
        ));
    }
    // The name on the cluster, or the part of it the stack's name
    // prefixes, is a name as the daemon checks it.
    let name = def.name.as_deref().unwrap_or(&key.name);
    if let Err(e) = validate_name(name) {
        return Err(match name_at {
            Some((at, p)) => ComposeError::at(at, &p, e.to_string()),
            None => at_key(key, node, path, e.to_string()),
        });
    }
    Ok(def)
}

/// A service's `secrets:` or `configs:` (by `kind`): a list of keys of
/// the top-level section (short syntax) or of mappings with `source`,
/// `target`, `uid`, `gid` and `mode` (long syntax). Each must name a
/// declared entry; a later entry for the same path in the task replaces
/// an earlier one.
fn service_refs(
    kind: SecretKind,
    node: &Node,
    path: &str,
    service: &str,
    declared: &Declared,
) -> R<Vec<SecretRef>> {
    let Value::Seq(items) = &node.value else {
        return Err(expected(node, path, "a list"));
    };
    let mut out: Vec<SecretRef> = Vec::new();
    for (i, n) in items.iter().enumerate() {
        let p = format!("{path}[{i}]");
        let r = match &n.value {
            Value::Map(m) => long_ref(kind, n, m, &p)?,
            Value::Str(_) => {
                let name = string(n, &p)?;
                if name.is_empty() {
                    return Err(ComposeError::at(n, &p, format!("an empty {kind} name")));
                }
                SecretRef::to(kind, name)
            }
            _ => return Err(expected(n, &p, &format!("a {kind} name or a mapping"))),
        };
        if !declared.of(kind).contains_key(&r.source) {
            return Err(ComposeError::at(
                n,
                &p,
                format!(
                    "service {service:?} refers to undefined {kind} {}: invalid compose project",
                    r.source
                ),
            ));
        }
        r.check(kind).map_err(|e| ComposeError::at(n, &p, e))?;
        let target = r.path_in_task(kind);
        out.retain(|o| o.path_in_task(kind) != target);
        out.push(r);
    }
    Ok(out)
}

/// A long-syntax entry of a service's `secrets:`/`configs:`.
fn long_ref(kind: SecretKind, node: &Node, entries: &[(Key, Node)], path: &str) -> R<SecretRef> {
    let mut source = None;
    let mut target = None;
    let mut uid = None;
    let mut gid = None;
    let mut mode = None;
    for (k, v) in entries {
        let kp = join(path, &k.name);
        if matches!(v.value, Value::Null) {
            continue;
        }
        match k.name.as_str() {
            "source" => source = Some(string(v, &kp)?),
            "target" => target = Some(string(v, &kp)?),
            "uid" => uid = Some(string(v, &kp)?),
            "gid" => gid = Some(string(v, &kp)?),
            "mode" => mode = Some(file_mode(v, &kp)?),
            n if n.starts_with("x-") => {}
            other => return Err(ComposeError::at(v, &kp, format!("unknown key {other:?}"))),
        }
    }
    let source = source
        .filter(|s| !s.is_empty())
        .ok_or_else(|| ComposeError::at(node, path, "missing source"))?;
    let mut r = SecretRef::to(kind, source);
    if let Some(t) = target {
        r.target = t;
    }
    if let Some(u) = uid {
        r.uid = u;
    }
    if let Some(g) = gid {
        r.gid = g;
    }
    if let Some(m) = mode {
        r.mode = m;
    }
    Ok(r)
}

/// `mode:` as Compose reads it. A string is octal (`"0440"`, `"440"`,
/// and `${MODE:-0440}` once interpolated). An integer is the number YAML
/// gives: `0o440` is 0o440, and a plain `440` is decimal 440 (0o670), as
/// in Compose. `0440` is octal, as Compose's YAML parser reads a leading
/// zero; the YAML 1.2 parser here reads no integer there and gives the
/// number 440.0 instead, so a whole number that is no integer is read by
/// its digits, in octal.
fn file_mode(node: &Node, path: &str) -> R<u32> {
    let bad = |text: String| {
        ComposeError::at(
            node,
            path,
            format!("invalid file mode {text}: expected octal, like 0440"),
        )
    };
    let mode = match &node.value {
        Value::Int(i) => u32::try_from(*i).map_err(|_| bad(i.to_string()))?,
        Value::Float(f) if f.fract() == 0.0 && *f >= 0.0 && *f < 1e9 => {
            let digits = format!("{}", *f as u64);
            parse_mode(&digits).map_err(|_| bad(format!("0{digits}")))?
        }
        Value::Str(s) => parse_mode(s.trim()).map_err(|_| bad(format!("{s:?}")))?,
        _ => return Err(expected(node, path, "a file mode, like 0440")),
    };
    if mode > 0o7777 {
        return Err(bad(format!("{mode} (0o{mode:o})")));
    }
    Ok(mode)
}

/// Checks across services: named volumes and networks are declared,
/// `depends_on` targets exist, and no two services publish the same
/// ingress port.
fn check_stack(
    services: &[ComposeService],
    entries: &[(Key, Node)],
    volumes: &BTreeMap<String, VolumeDef>,
    networks: &BTreeMap<String, NetworkDef>,
) -> R<()> {
    let node_of = |name: &str| entries.iter().find(|(k, _)| k.name == name).map(|(_, n)| n);
    let mut published: BTreeMap<(u16, Protocol), &str> = BTreeMap::new();
    for s in services {
        let Some(node) = node_of(&s.name) else {
            continue;
        };
        let path = join("services", &s.name);
        for m in &s.volumes {
            if m.kind == MountKind::Volume
                && !m.source.is_empty()
                && !volumes.contains_key(&m.source)
            {
                let at = node.get("volumes").unwrap_or(node);
                return Err(ComposeError::at(
                    at,
                    &join(&path, "volumes"),
                    format!(
                        "undefined volume {:?}: declare it under the top-level volumes",
                        m.source
                    ),
                ));
            }
        }
        if s.host_network && !s.networks.is_empty() {
            let at = node.get("network_mode").unwrap_or(node);
            return Err(ComposeError::at(
                at,
                &join(&path, "network_mode"),
                format!(
                    "service {:?} declares mutually exclusive `network_mode` and `networks`",
                    s.name
                ),
            ));
        }
        for name in s.networks.keys() {
            // `default` needs no declaration: it is the stack's own.
            if name == DEFAULT_NETWORK || networks.contains_key(name) {
                continue;
            }
            let at = node.get("networks").unwrap_or(node);
            let (file, line) = network_entry_line(at, name);
            return Err(ComposeError::Invalid {
                file,
                line,
                path: super::one_line(&join(&path, "networks")),
                reason: super::one_line(&format!(
                    "service {:?} refers to undefined network {name}: invalid compose project",
                    s.name
                )),
            });
        }
        for d in &s.depends_on {
            if !services.iter().any(|o| &o.name == d) {
                let at = node.get("depends_on").unwrap_or(node);
                return Err(ComposeError::at(
                    at,
                    &join(&path, "depends_on"),
                    format!("unknown service {d:?}"),
                ));
            }
        }
        for p in &s.ports {
            let (Some(key), PublishMode::Ingress) = (p.key(), p.mode) else {
                continue;
            };
            if let Some(other) = published.insert(key, &s.name) {
                let at = node.get("ports").unwrap_or(node);
                // Within a service, `ports` refused a repeat already.
                let (port, proto) = (key.0, key.1.as_str());
                return Err(ComposeError::at(
                    at,
                    &join(&path, "ports"),
                    format!("port {port}/{proto} is already published by service {other}"),
                ));
            }
        }
    }
    Ok(())
}

fn service(
    name: &str,
    node: &Node,
    path: &str,
    lookup: &dyn Fn(&str) -> Option<String>,
    declared: &Declared,
    warnings: &mut Vec<String>,
) -> R<ComposeService> {
    let entries = match &node.value {
        // `web:` with nothing under it is a service with no keys.
        Value::Null => &[][..],
        _ => map(node, path)?,
    };
    let mut s = ComposeService {
        name: name.to_string(),
        ..Default::default()
    };
    let mut ignored = Vec::new();
    let mut swarm_ignored = Vec::new();
    let mut unknown = Vec::new();
    let mut env_files: Vec<(String, BTreeMap<String, String>)> = Vec::new();
    let mut environment = Vec::new();
    for (k, v) in entries {
        let p = join(path, &k.name);
        let p = p.as_str();
        if matches!(v.value, Value::Null) && k.name != "environment" {
            // An explicit null means "not set", as Compose treats it.
            continue;
        }
        match k.name.as_str() {
            "image" => s.image = Some(string(v, p)?),
            "command" => s.command = Some(words(v, p)?),
            "entrypoint" => s.entrypoint = Some(words(v, p)?),
            "environment" => {
                environment = if matches!(v.value, Value::Null) {
                    Vec::new()
                } else {
                    pairs(v, p)?
                }
            }
            "env_file" => env_files = env_file(v, p)?,
            "labels" => s.labels = labels(v, p)?,
            "ports" => s.ports = ports(v, p, &mut ignored)?,
            "healthcheck" => s.healthcheck = Some(healthcheck(v, p, &mut unknown)?),
            "stop_grace_period" => s.stop_grace_period_ms = Some(duration(v, p)?),
            "init" => s.init = Some(boolean(v, p)?),
            "volumes" => s.volumes = mounts(v, p, lookup, &mut ignored)?,
            "deploy" => s.deploy = deploy(v, p, &mut ignored, &mut unknown)?,
            "networks" => s.networks = service_networks(v, p, &mut ignored, &mut unknown)?,
            "secrets" => s.secrets = service_refs(SecretKind::Secret, v, p, name, declared)?,
            "configs" => s.configs = service_refs(SecretKind::Config, v, p, name, declared)?,
            "network_mode" => {
                let mode = string(v, p)?;
                if mode != "host" {
                    return Err(ComposeError::at(
                        v,
                        p,
                        format!(
                            "network_mode {mode:?} is not supported: services join networks \
                             (`networks`), or the node's own with network_mode: host"
                        ),
                    ));
                }
                s.host_network = true;
            }
            "depends_on" => {
                s.depends_on = match &v.value {
                    Value::Map(m) => m.iter().map(|(k, _)| k.name.clone()).collect(),
                    _ => string_list(v, p)?,
                };
                swarm_ignored.push(k.name.clone());
            }
            "hostname" => s.hostname = Some(string(v, p)?),
            "user" => s.user = Some(string(v, p)?),
            "working_dir" => s.working_dir = Some(string(v, p)?),
            "stop_signal" => s.stop_signal = Some(string(v, p)?),
            "read_only" => s.read_only = Some(boolean(v, p)?),
            "shm_size" => s.shm_size = Some(size(v, p)?),
            "sysctls" => s.sysctls = sysctls(v, p)?,
            "cap_add" => s.cap_add = string_list(v, p)?,
            "cap_drop" => s.cap_drop = string_list(v, p)?,
            "ulimits" => s.ulimits = ulimits(v, p)?,
            "extra_hosts" => s.extra_hosts = extra_hosts(v, p)?,
            "dns" => s.dns = one_or_list(v, p)?,
            "dns_search" => s.dns_search = one_or_list(v, p)?,
            "logging" => s.logging = Some(logging(v, p)?),
            "x-flotilla" => {
                if let Some(d) = v.get("driver") {
                    s.driver = Some(string(d, &join(p, "driver"))?);
                }
            }
            n if n.starts_with("x-") => {}
            n if SWARM_IGNORED_KEYS.contains(&n) => swarm_ignored.push(n.to_string()),
            n if UNSUPPORTED_SERVICE_KEYS.contains(&n) => ignored.push(n.to_string()),
            n => unknown.push(n.to_string()),
        }
    }
    for (_, vars) in env_files {
        s.environment.extend(vars);
    }
    for (k, v) in environment {
        match v.or_else(|| lookup(&k)) {
            Some(v) => {
                s.environment.insert(k, v);
            }
            None => {
                s.environment.remove(&k);
            }
        }
    }
    if !ignored.is_empty() {
        warnings.push(format!(
            "service {name}: Ignoring unsupported options: {}",
            ignored.join(", ")
        ));
    }
    if !swarm_ignored.is_empty() {
        warnings.push(format!(
            "service {name}: Ignoring options that Swarm ignores too (only Compose without Swarm uses them): {}",
            swarm_ignored.join(", ")
        ));
    }
    if !unknown.is_empty() {
        warnings.push(format!(
            "service {name}: Ignoring unknown keys: {}",
            unknown.join(", ")
        ));
    }
    Ok(s)
}

/// A size in bytes: a number, or a string such as `64m`.
fn size(node: &Node, path: &str) -> R<u64> {
    let text = match &node.value {
        Value::Int(i) => return u64::try_from(*i).map_err(|_| expected(node, path, "a size")),
        _ => string(node, path)?,
    };
    flotilla_types::parse_memory(&text).ok_or_else(|| {
        ComposeError::at(
            node,
            path,
            format!(
                "invalid size {text:?}: expected bytes or a number with b, k, m or g, such as 64m"
            ),
        )
    })
}

/// A string or a list of strings (`dns`, `dns_search`).
fn one_or_list(node: &Node, path: &str) -> R<Vec<String>> {
    match &node.value {
        Value::Seq(_) => string_list(node, path),
        _ => Ok(vec![string(node, path)?]),
    }
}

/// `sysctls:` as a mapping or a `KEY=VALUE` list; every entry has a value.
fn sysctls(node: &Node, path: &str) -> R<BTreeMap<String, String>> {
    pairs(node, path)?
        .into_iter()
        .map(|(k, v)| match v {
            Some(v) => Ok((k, v)),
            None => Err(ComposeError::at(
                node.get(&k).unwrap_or(node),
                &join(path, &k),
                format!("sysctl {k} needs a value"),
            )),
        })
        .collect()
}

/// `ulimits:`: `NAME: N` (soft and hard alike) or `NAME: {soft: S, hard:
/// H}`.
fn ulimits(node: &Node, path: &str) -> R<Vec<flotilla_types::Ulimit>> {
    let mut out = Vec::new();
    for (k, v) in map(node, path)? {
        let p = join(path, &k.name);
        let limit = |n: &Node, p: &str| -> R<i64> {
            let i = int(n, p)?;
            i64::try_from(i).map_err(|_| expected(n, p, "a limit"))
        };
        let (soft, hard) = match &v.value {
            Value::Map(entries) => {
                let (mut soft, mut hard) = (None, None);
                for (lk, lv) in entries {
                    let lp = join(&p, &lk.name);
                    match lk.name.as_str() {
                        "soft" => soft = Some(limit(lv, &lp)?),
                        "hard" => hard = Some(limit(lv, &lp)?),
                        n if n.starts_with("x-") => {}
                        other => {
                            return Err(ComposeError::at(lv, &lp, format!("unknown key {other:?}")))
                        }
                    }
                }
                match (soft, hard) {
                    (Some(s), Some(h)) => (s, h),
                    _ => return Err(ComposeError::at(v, &p, "expected both soft and hard")),
                }
            }
            _ => {
                let n = limit(v, &p)?;
                (n, n)
            }
        };
        let u = flotilla_types::Ulimit {
            name: k.name.clone(),
            soft,
            hard,
        };
        // The rule of the spec, here where the entry's line is known.
        u.check().map_err(|e| ComposeError::at(v, &p, e))?;
        out.push(u);
    }
    Ok(out)
}

/// `extra_hosts:` as a `HOST:IP` / `HOST=IP` list or a `HOST: IP` mapping
/// (an address or a list of them).
fn extra_hosts(node: &Node, path: &str) -> R<Vec<flotilla_types::ExtraHost>> {
    let mut out = Vec::new();
    let mut push = |host: flotilla_types::ExtraHost, at: &Node, p: &str| -> R<()> {
        host.check().map_err(|e| ComposeError::at(at, p, e))?;
        out.push(host);
        Ok(())
    };
    match &node.value {
        Value::Seq(items) => {
            for (i, n) in items.iter().enumerate() {
                let p = format!("{path}[{i}]");
                let text = string(n, &p)?;
                let host = flotilla_types::ExtraHost::parse(&text)
                    .map_err(|e| ComposeError::at(n, &p, e))?;
                push(host, n, &p)?;
            }
        }
        Value::Map(entries) => {
            for (k, v) in entries {
                let p = join(path, &k.name);
                let ips = match &v.value {
                    Value::Seq(_) => string_list(v, &p)?,
                    _ => vec![string(v, &p)?],
                };
                for ip in ips {
                    let host = flotilla_types::ExtraHost {
                        name: k.name.clone(),
                        ip,
                    };
                    push(host, v, &p)?;
                }
            }
        }
        _ => return Err(expected(node, path, "a list of HOST:IP or a mapping")),
    }
    Ok(out)
}

/// `logging:`: `driver` (the engine's default when absent) and `options`.
fn logging(node: &Node, path: &str) -> R<flotilla_types::LogDriver> {
    let mut driver = flotilla_types::LogDriver {
        name: String::new(),
        options: BTreeMap::new(),
    };
    for (k, v) in map(node, path)? {
        let p = join(path, &k.name);
        if matches!(v.value, Value::Null) {
            continue;
        }
        match k.name.as_str() {
            "driver" => driver.name = string(v, &p)?,
            "options" => driver.options = labels(v, &p)?,
            n if n.starts_with("x-") => {}
            other => return Err(ComposeError::at(v, &p, format!("unknown key {other:?}"))),
        }
    }
    Ok(driver)
}

/// `env_file:` as a string, a list of strings, or a list of
/// `{path, required}`; read relative to the file that names it.
fn env_file(node: &Node, path: &str) -> R<Vec<(String, BTreeMap<String, String>)>> {
    let items: Vec<(String, bool, &Node)> = match &node.value {
        Value::Seq(items) => items
            .iter()
            .enumerate()
            .map(|(i, n)| {
                let p = format!("{path}[{i}]");
                match &n.value {
                    Value::Map(_) => {
                        let file = n
                            .get("path")
                            .ok_or_else(|| ComposeError::at(n, &p, "missing path"))?;
                        let required = n
                            .get("required")
                            .map(|r| boolean(r, &join(&p, "required")))
                            .transpose()?;
                        Ok((
                            string(file, &join(&p, "path"))?,
                            required.unwrap_or(true),
                            n,
                        ))
                    }
                    _ => Ok((string(n, &p)?, true, n)),
                }
            })
            .collect::<R<_>>()?,
        _ => vec![(string(node, path)?, true, node)],
    };
    items
        .into_iter()
        .map(|(file, required, n)| {
            let full = dir_of(&n.file).join(&file);
            let vars = read_dotenv(&full, required)
                .map_err(|e| ComposeError::at(n, path, e.to_string()))?;
            Ok((file, vars))
        })
        .collect()
}

/// `ports:`: each entry in the short syntax (`[PUBLISHED:]TARGET[/PROTOCOL]`
/// as a string or a number; ranges of the same length, or a published
/// range onto one target) or the long one (a mapping). The short text is
/// read by [`parse_publish`], the parser of the CLI's `--publish`, so that
/// both read a port alike. A host IP is refused: the mesh publishes on
/// every node, and `docker stack deploy` cannot honour one either (an
/// unspecified one, `0.0.0.0` or `::`, says just that and is dropped). UDP
/// and host mode are kept as written: `ServiceSpec::validate` refuses them
/// while the mesh cannot serve them. An entry equal to an earlier one (the
/// same published port, target and protocol) replaces it in place, as
/// Compose de-duplicates ports, in one file or across merged files; one
/// that publishes the same port and protocol onto another target is
/// refused at its line.
fn ports(node: &Node, path: &str, ignored: &mut Vec<String>) -> R<Vec<PortConfig>> {
    let Value::Seq(items) = &node.value else {
        return Err(expected(node, path, "a list"));
    };
    // Each port with the entry it came from.
    let mut out: Vec<(PortConfig, usize)> = Vec::new();
    let mut index: BTreeMap<(Option<u16>, u16, Protocol), usize> = BTreeMap::new();
    for (i, n) in items.iter().enumerate() {
        let p = format!("{path}[{i}]");
        let entry = match &n.value {
            Value::Map(m) => long_port(n, m, &p, i, ignored)?,
            Value::Str(_) | Value::Int(_) => short_port(n, &p, &string(n, &p)?)?,
            _ => {
                return Err(expected(
                    n,
                    &p,
                    "a port (a string or a number) or a mapping",
                ))
            }
        };
        if entry.len() > MAX_PORT_RANGE {
            return Err(ComposeError::at(
                n,
                &p,
                format!(
                    "the range is {} ports wide; at most {MAX_PORT_RANGE} are allowed",
                    entry.len()
                ),
            ));
        }
        for port in entry {
            match index.get(&(port.published, port.target, port.protocol)) {
                Some(&at) => out[at] = (port, i),
                None => {
                    index.insert((port.published, port.target, port.protocol), out.len());
                    out.push((port, i));
                }
            }
        }
    }
    // One published port and protocol per service, whatever the mode (a
    // rule of the spec too), reported here at the entry that repeats it.
    let mut published = BTreeSet::new();
    for (port, i) in &out {
        if let Some(key) = port.key() {
            if !published.insert(key) {
                return Err(ComposeError::at(
                    &items[*i],
                    &format!("{path}[{i}]"),
                    format!("port {}/{} is published twice", key.0, key.1.as_str()),
                ));
            }
        }
    }
    Ok(out.into_iter().map(|(port, _)| port).collect())
}

/// A short-syntax entry (`text` is the string, or the number as text).
fn short_port(node: &Node, path: &str, text: &str) -> R<Vec<PortConfig>> {
    let bad = |reason: String| ComposeError::at(node, path, reason);
    // `--publish` also takes `target=80,published=8080`; Compose writes
    // that as a mapping.
    if text.contains('=') {
        return Err(bad(format!(
            "invalid port {text:?}: expected [PUBLISHED:]TARGET[/PROTOCOL], or a mapping"
        )));
    }
    parse_publish(&without_unspecified_host(text)).map_err(bad)
}

/// `text` without a host IP that means every address (`0.0.0.0:8080:80`,
/// `[::]::80`); any other host IP is left for [`parse_publish`] to refuse.
fn without_unspecified_host(text: &str) -> String {
    let text = text.trim();
    let (spec, proto) = match text.rsplit_once('/') {
        Some((spec, proto)) => (spec, Some(proto)),
        None => (text, None),
    };
    let mut parts = spec.rsplitn(3, ':');
    let (Some(target), Some(published), Some(host)) = (parts.next(), parts.next(), parts.next())
    else {
        return text.to_string();
    };
    if !unspecified(host) {
        return text.to_string();
    }
    let mut out = match published {
        "" => target.to_string(),
        _ => format!("{published}:{target}"),
    };
    if let Some(proto) = proto {
        out.push('/');
        out.push_str(proto);
    }
    out
}

/// `0.0.0.0`, `::` or `[::]`: every address of the node.
fn unspecified(host: &str) -> bool {
    let host = host.trim();
    let host = host
        .strip_prefix('[')
        .and_then(|h| h.strip_suffix(']'))
        .unwrap_or(host);
    host.parse::<std::net::IpAddr>()
        .is_ok_and(|ip| ip.is_unspecified())
}

/// A long-syntax entry: `target` (required), `published` (a number, or a
/// string holding a port or a range), `protocol`, `mode`; `host_ip` as in
/// the short syntax; `name` and `app_protocol` go to the ignored options.
fn long_port(
    node: &Node,
    entries: &[(Key, Node)],
    path: &str,
    i: usize,
    ignored: &mut Vec<String>,
) -> R<Vec<PortConfig>> {
    let mut target = None;
    let mut published = None;
    let mut protocol = Protocol::Tcp;
    let mut mode = PublishMode::Ingress;
    for (k, v) in entries {
        let kp = join(path, &k.name);
        if matches!(v.value, Value::Null) {
            continue;
        }
        let at = |e: String| ComposeError::at(v, &kp, e);
        match k.name.as_str() {
            "target" => {
                let t = int(v, &kp)?;
                target = Some(u16::try_from(t).ok().filter(|t| *t != 0).ok_or_else(|| {
                    ComposeError::at(v, &kp, format!("invalid port {t}: ports are 1-65535"))
                })?);
            }
            "published" => published = Some((v, kp)),
            "protocol" => protocol = Protocol::parse(&string(v, &kp)?).map_err(at)?,
            "mode" => mode = PublishMode::parse(&string(v, &kp)?).map_err(at)?,
            "host_ip" => {
                let ip = string(v, &kp)?;
                if !unspecified(&ip) {
                    return Err(ComposeError::at(
                        v,
                        &kp,
                        format!(
                            "host IP {ip:?} is not supported; the mesh publishes on every node"
                        ),
                    ));
                }
            }
            "name" | "app_protocol" => ignored.push(format!("ports[{i}].{}", k.name)),
            n if n.starts_with("x-") => {}
            other => return Err(ComposeError::at(v, &kp, format!("unknown key {other:?}"))),
        }
    }
    let target = target.ok_or_else(|| ComposeError::at(node, path, "missing target"))?;
    let one = |published| PortConfig {
        target,
        published,
        protocol,
        mode,
    };
    let Some((v, kp)) = published else {
        return Ok(vec![one(None)]);
    };
    let text = match &v.value {
        Value::Int(_) | Value::Str(_) => string(v, &kp)?,
        _ => return Err(expected(v, &kp, "a port or a range of ports")),
    };
    if text.trim().is_empty() {
        return Ok(vec![one(None)]);
    }
    // A port, or a range published onto the one target, read as the short
    // syntax reads `PUBLISHED:TARGET`.
    if !text.trim().chars().all(|c| c.is_ascii_digit() || c == '-') {
        return Err(ComposeError::at(
            v,
            &kp,
            format!("invalid port {text:?}: expected a port or a range of ports"),
        ));
    }
    let ports = parse_publish(&format!("{}:{target}", text.trim()))
        .map_err(|e| ComposeError::at(v, &kp, e))?;
    Ok(ports.into_iter().map(|p| one(p.published)).collect())
}

fn healthcheck(node: &Node, path: &str, unknown: &mut Vec<String>) -> R<Healthcheck> {
    let entries = map(node, path)?;
    unknown_keys(
        entries,
        path,
        &[
            "test",
            "interval",
            "timeout",
            "retries",
            "start_period",
            "start_interval",
            "disable",
        ],
        unknown,
    );
    let mut h = Healthcheck::default();
    for (k, v) in entries {
        let p = join(path, &k.name);
        match k.name.as_str() {
            "test" => {
                h.test = match &v.value {
                    Value::Str(s) => vec!["CMD-SHELL".to_string(), s.clone()],
                    _ => string_list(v, &p)?,
                };
                if h.test.first().map(String::as_str) == Some("NONE") {
                    h.disable = true;
                }
            }
            "interval" => h.interval_ms = Some(duration(v, &p)?),
            "timeout" => h.timeout_ms = Some(duration(v, &p)?),
            "retries" => h.retries = Some(uint(v, &p)?),
            "start_period" => h.start_period_ms = Some(duration(v, &p)?),
            "start_interval" => h.start_interval_ms = Some(duration(v, &p)?),
            "disable" => h.disable |= boolean(v, &p)?,
            _ => {}
        }
    }
    Ok(h)
}

fn deploy(
    node: &Node,
    path: &str,
    ignored: &mut Vec<String>,
    unknown: &mut Vec<String>,
) -> R<ComposeDeploy> {
    let entries = map(node, path)?;
    unknown_keys(
        entries,
        path,
        &[
            "mode",
            "replicas",
            "placement",
            "restart_policy",
            "update_config",
            "rollback_config",
            "resources",
            "labels",
            "endpoint_mode",
        ],
        unknown,
    );
    let mut d = ComposeDeploy::default();
    let mut mode = None;
    let mut replicas = None;
    for (k, v) in entries {
        let p = join(path, &k.name);
        let p = p.as_str();
        if matches!(v.value, Value::Null) {
            continue;
        }
        match k.name.as_str() {
            "mode" => mode = Some((string(v, p)?, v)),
            "replicas" => {
                let r = int(v, p)?;
                replicas = Some((
                    u64::try_from(r).map_err(|_| {
                        ComposeError::at(
                            v,
                            p,
                            format!("{r} is {}", if r < 0 { "negative" } else { "too large" }),
                        )
                    })?,
                    v,
                ));
            }
            "placement" => placement(v, p, &mut d, unknown)?,
            "restart_policy" => d.restart_policy = Some(restart_policy(v, p, unknown)?),
            "update_config" => d.update_config = Some(update_config(v, p, unknown)?),
            "rollback_config" => d.rollback_config = Some(update_config(v, p, unknown)?),
            "resources" => resources(v, p, &mut d, ignored, unknown)?,
            "labels" => d.labels = labels(v, p)?,
            "endpoint_mode" => {
                let m = string(v, p)?;
                d.endpoint_mode =
                    Some(EndpointMode::parse(&m).map_err(|e| ComposeError::at(v, p, e))?);
            }
            _ => {}
        }
    }
    d.mode = match mode {
        None => ServiceMode::Replicated {
            replicas: replicas.map(|r| r.0).unwrap_or(1),
        },
        Some((m, _)) if m == "replicated" => ServiceMode::Replicated {
            replicas: replicas.map(|r| r.0).unwrap_or(1),
        },
        Some((m, _)) if m == "replicated-job" => ServiceMode::ReplicatedJob {
            replicas: replicas.map(|r| r.0).unwrap_or(1),
            max_concurrent: 0,
        },
        Some((m, n)) if m == "global" || m == "global-job" => {
            if let Some((_, rn)) = replicas {
                return Err(ComposeError::at(
                    rn,
                    &join(path, "replicas"),
                    format!("cannot be used with mode {m}"),
                ));
            }
            let _ = n;
            if m == "global" {
                ServiceMode::Global
            } else {
                ServiceMode::GlobalJob
            }
        }
        Some((m, n)) => {
            return Err(ComposeError::at(
                n,
                &join(path, "mode"),
                format!("{m:?} is none of replicated, global, replicated-job or global-job"),
            ))
        }
    };
    Ok(d)
}

/// The name an `external: {name: X}` (the legacy spelling) gives, unless
/// `name:` gives one too, which is refused at the legacy one.
fn legacy_external_name<'a>(
    legacy: Option<(String, &'a Node, String)>,
    path: &str,
    name: &mut Option<String>,
    name_at: &mut Option<(&'a Node, String)>,
) -> R<()> {
    if let Some((legacy, ln, lp)) = legacy {
        if name.is_some() {
            return Err(ComposeError::at(
                ln,
                &lp,
                format!("conflicts with {path}.name; only use {path}.name"),
            ));
        }
        *name = Some(legacy);
        *name_at = Some((ln, lp));
    }
    Ok(())
}

fn placement(node: &Node, path: &str, d: &mut ComposeDeploy, unknown: &mut Vec<String>) -> R<()> {
    let entries = map(node, path)?;
    unknown_keys(
        entries,
        path,
        &["constraints", "preferences", "max_replicas_per_node"],
        unknown,
    );
    for (k, v) in entries {
        let p = join(path, &k.name);
        match k.name.as_str() {
            "constraints" => {
                let Value::Seq(items) = &v.value else {
                    return Err(expected(v, &p, "a list"));
                };
                for (i, c) in items.iter().enumerate() {
                    let cp = format!("{p}[{i}]");
                    let text = string(c, &cp)?;
                    d.constraints.push(
                        text.parse::<Constraint>()
                            .map_err(|e| ComposeError::at(c, &cp, e.to_string()))?,
                    );
                }
            }
            "preferences" => {
                let Value::Seq(items) = &v.value else {
                    return Err(expected(v, &p, "a list"));
                };
                for (i, pref) in items.iter().enumerate() {
                    let pp = format!("{p}[{i}]");
                    let spread = pref
                        .get("spread")
                        .ok_or_else(|| expected(pref, &pp, "{spread: ...}"))?;
                    d.spread.push(string(spread, &join(&pp, "spread"))?);
                }
            }
            "max_replicas_per_node" => d.max_replicas_per_node = Some(uint(v, &p)?),
            _ => {}
        }
    }
    Ok(())
}

fn restart_policy(node: &Node, path: &str, unknown: &mut Vec<String>) -> R<RestartPolicy> {
    let entries = map(node, path)?;
    unknown_keys(
        entries,
        path,
        &["condition", "delay", "max_attempts", "window"],
        unknown,
    );
    let mut r = RestartPolicy::default();
    for (k, v) in entries {
        let p = join(path, &k.name);
        match k.name.as_str() {
            "condition" => {
                let c = string(v, &p)?;
                r.condition = RestartCondition::parse(&c).ok_or_else(|| {
                    ComposeError::at(v, &p, format!("{c:?} is not none, on-failure or any"))
                })?;
            }
            "delay" => r.delay_ms = duration(v, &p)?,
            "max_attempts" => r.max_attempts = uint(v, &p)?,
            "window" => r.window_ms = duration(v, &p)?,
            _ => {}
        }
    }
    Ok(r)
}

/// `update_config:` or `rollback_config:`; that a rollback does not roll
/// back is a rule of the spec, checked once it is made.
fn update_config(node: &Node, path: &str, unknown: &mut Vec<String>) -> R<UpdateConfig> {
    let entries = map(node, path)?;
    unknown_keys(
        entries,
        path,
        &[
            "parallelism",
            "delay",
            "failure_action",
            "monitor",
            "max_failure_ratio",
            "order",
        ],
        unknown,
    );
    let mut u = UpdateConfig::default();
    for (k, v) in entries {
        let p = join(path, &k.name);
        match k.name.as_str() {
            "parallelism" => u.parallelism = Some(uint(v, &p)?),
            "delay" => u.delay_ms = Some(duration(v, &p)?),
            "monitor" => u.monitor_ms = Some(duration(v, &p)?),
            "failure_action" => {
                let a = string(v, &p)?;
                if FailureAction::parse(&a).is_none() {
                    return Err(ComposeError::at(
                        v,
                        &p,
                        format!("{a:?} is not continue, pause or rollback"),
                    ));
                }
                u.failure_action = Some(a);
            }
            "max_failure_ratio" => {
                let f = float(v, &p)?;
                if Ratio::checked(f).is_none() {
                    return Err(ComposeError::at(
                        v,
                        &p,
                        format!("{f} is not between 0 and 1"),
                    ));
                }
                u.max_failure_ratio = Some(f);
            }
            "order" => {
                let o = string(v, &p)?;
                if UpdateOrder::parse(&o).is_none() {
                    return Err(ComposeError::at(
                        v,
                        &p,
                        format!("{o:?} is not stop-first or start-first"),
                    ));
                }
                u.order = Some(o);
            }
            _ => {}
        }
    }
    Ok(u)
}

fn resources(
    node: &Node,
    path: &str,
    d: &mut ComposeDeploy,
    ignored: &mut Vec<String>,
    unknown: &mut Vec<String>,
) -> R<()> {
    let entries = map(node, path)?;
    unknown_keys(entries, path, &["limits", "reservations"], unknown);
    for (k, v) in entries {
        let p = join(path, &k.name);
        let target = match k.name.as_str() {
            "limits" => &mut d.limits,
            "reservations" => &mut d.reservations,
            _ => continue,
        };
        for (rk, rv) in map(v, &p)? {
            let rp = join(&p, &rk.name);
            match rk.name.as_str() {
                "cpus" => {
                    let c = float(rv, &rp)?;
                    // 0 would mean no limit at all: a file says a number.
                    let nano = flotilla_types::Resources::nano_cpus_of(c)
                        .filter(|n| *n > 0)
                        .ok_or_else(|| {
                            ComposeError::at(
                                rv,
                                &rp,
                                format!(
                                    "{c} is not a positive number of CPUs (at least 0.000000001)"
                                ),
                            )
                        })?;
                    target.nano_cpus = Some(nano);
                }
                "memory" => {
                    let text = string(rv, &rp)?;
                    target.memory_bytes = Some(flotilla_types::parse_memory(&text).ok_or_else(|| {
                        ComposeError::at(rv, &rp, format!("invalid memory size {text:?}: expected bytes or a number with b, k, m or g, such as 512M"))
                    })?);
                }
                "pids" | "devices" | "generic_resources" => {
                    ignored.push(format!("deploy.resources.{}.{}", k.name, rk.name))
                }
                n if n.starts_with("x-") => {}
                n => unknown.push(format!("deploy.resources.{}.{n}", k.name)),
            }
        }
    }
    Ok(())
}

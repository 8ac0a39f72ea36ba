//! Ports: what a service publishes (`--publish`, Compose `ports`), what
//! the leader allocated for it, and where each task listens on its node.
//!
//! A service's task template lists its [`PortConfig`]s: the port each task
//! listens on (`target`) and the port the cluster publishes for it
//! (`published`, or none: the leader's allocator picks one from
//! [`DYNAMIC_PORTS`]). What was allocated is the service's
//! [`PublishedPort`] list; where a task's target port answers on its node
//! is the task's [`TaskPort`] list, reported by the agent.

use std::fmt;
use std::ops::RangeInclusive;

use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

/// Published ports the allocator hands out when none is asked for: the
/// same range as Swarm's, so firewall rules written for Swarm fit.
pub const DYNAMIC_PORTS: RangeInclusive<u16> = 30000..=32767;

/// The transport protocol of a port.
#[derive(
    Debug,
    Clone,
    Copy,
    PartialEq,
    Eq,
    Hash,
    PartialOrd,
    Ord,
    Default,
    Serialize,
    Deserialize,
    ToSchema,
)]
#[serde(rename_all = "lowercase")]
pub enum Protocol {
    #[default]
    Tcp,
    Udp,
}

impl Protocol {
    pub fn as_str(&self) -> &'static str {
        match self {
            Protocol::Tcp => "tcp",
            Protocol::Udp => "udp",
        }
    }

    pub fn parse(text: &str) -> Result<Protocol, String> {
        match text.to_ascii_lowercase().as_str() {
            "tcp" => Ok(Protocol::Tcp),
            "udp" => Ok(Protocol::Udp),
            other => Err(format!("invalid protocol {other:?}: expected tcp or udp")),
        }
    }
}

/// Where a published port answers.
#[derive(
    Debug,
    Clone,
    Copy,
    PartialEq,
    Eq,
    Hash,
    PartialOrd,
    Ord,
    Default,
    Serialize,
    Deserialize,
    ToSchema,
)]
#[serde(rename_all = "lowercase")]
pub enum PublishMode {
    /// On every node, balanced over the ready tasks on any node (the mesh).
    #[default]
    Ingress,
    /// Only on the nodes that run a task, straight to that task.
    Host,
}

impl PublishMode {
    pub fn as_str(&self) -> &'static str {
        match self {
            PublishMode::Ingress => "ingress",
            PublishMode::Host => "host",
        }
    }

    pub fn parse(text: &str) -> Result<PublishMode, String> {
        match text.to_ascii_lowercase().as_str() {
            "ingress" => Ok(PublishMode::Ingress),
            "host" => Ok(PublishMode::Host),
            other => Err(format!("invalid mode {other:?}: expected ingress or host")),
        }
    }
}

/// One port a service asks for.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize, ToSchema)]
pub struct PortConfig {
    /// The port each task listens on.
    pub target: u16,
    /// The port the cluster publishes; none lets the allocator choose.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub published: Option<u16>,
    #[serde(default)]
    pub protocol: Protocol,
    #[serde(default)]
    pub mode: PublishMode,
}

impl PortConfig {
    /// `target` over TCP, published where the allocator says, on the mesh.
    pub fn target(target: u16) -> PortConfig {
        PortConfig {
            target,
            published: None,
            protocol: Protocol::Tcp,
            mode: PublishMode::Ingress,
        }
    }

    /// The published port and protocol, which no other port of the
    /// cluster may share.
    pub fn key(&self) -> Option<(u16, Protocol)> {
        self.published.map(|p| (p, self.protocol))
    }

    /// Whether the cluster records a published port for it: a fixed one,
    /// or one the allocator chooses for the mesh. A host-mode port without
    /// a number is the node port each task's node gives it, as in Swarm,
    /// and is published nowhere else.
    pub fn is_published(&self) -> bool {
        self.published.is_some() || self.mode == PublishMode::Ingress
    }
}

impl fmt::Display for PortConfig {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.published {
            Some(p) => write!(f, "{p}:{}/{}", self.target, self.protocol.as_str())?,
            None => write!(f, "{}/{}", self.target, self.protocol.as_str())?,
        }
        if self.mode == PublishMode::Host {
            f.write_str(" (host)")?;
        }
        Ok(())
    }
}

/// A port the cluster publishes for a service, as allocated.
#[derive(
    Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize, ToSchema,
)]
pub struct PublishedPort {
    pub published: u16,
    pub target: u16,
    #[serde(default)]
    pub protocol: Protocol,
    #[serde(default)]
    pub mode: PublishMode,
}

impl PublishedPort {
    pub fn key(&self) -> (u16, Protocol) {
        (self.published, self.protocol)
    }
}

impl fmt::Display for PublishedPort {
    /// As Docker's `service ls` writes it: `*:18080->8080/tcp`; a host-mode
    /// port without the `*` (it answers only where a task runs).
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let star = match self.mode {
            PublishMode::Ingress => "*:",
            PublishMode::Host => "",
        };
        write!(
            f,
            "{star}{}->{}/{}",
            self.published,
            self.target,
            self.protocol.as_str()
        )
    }
}

/// Where one of a task's target ports answers on the task's node.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize, ToSchema)]
pub struct TaskPort {
    pub target: u16,
    #[serde(default)]
    pub protocol: Protocol,
    /// The port on the node's address.
    pub host_port: u16,
}

/// The published ports of a spec's `ports` that the cluster records
/// ([`PortConfig::is_published`]), one per such port in order: a fixed
/// one as it is; one without a number gets the port it had in `before`
/// (the service's allocation so far: same target, protocol and mode, each
/// used once, never a number the spec fixes), or `None`: the allocator
/// must choose. So a change of other fields keeps the ports clients
/// already use.
pub fn carry_over(ports: &[PortConfig], before: &[PublishedPort]) -> Vec<Option<PublishedPort>> {
    let fixed: Vec<(u16, Protocol)> = ports.iter().filter_map(PortConfig::key).collect();
    let mut spare: Vec<PublishedPort> = before
        .iter()
        .filter(|p| !fixed.contains(&p.key()))
        .copied()
        .collect();
    ports
        .iter()
        .filter(|p| p.is_published())
        .map(|port| match port.published {
            Some(published) => Some(PublishedPort {
                published,
                target: port.target,
                protocol: port.protocol,
                mode: port.mode,
            }),
            None => {
                let i = spare.iter().position(|p| {
                    p.target == port.target && p.protocol == port.protocol && p.mode == port.mode
                })?;
                Some(spare.remove(i))
            }
        })
        .collect()
}

/// Parses one `--publish` value: `PUBLISHED:TARGET[/PROTO]`,
/// `TARGET[/PROTO]`, ranges of equal length (`8080-8081:80-81`), or the
/// long form `published=P,target=T,protocol=udp,mode=host`. A published
/// port of 0 means "allocate one", as no published port does.
pub fn parse_publish(text: &str) -> Result<Vec<PortConfig>, String> {
    let text = text.trim();
    if text.contains('=') {
        return parse_long(text).map(|p| vec![p]);
    }
    let (ports, protocol) = match text.rsplit_once('/') {
        Some((ports, proto)) => (ports, Protocol::parse(proto)?),
        None => (text, Protocol::Tcp),
    };
    let (published, target) = match ports.rsplit_once(':') {
        Some((published, target)) => {
            if published.contains(':') {
                return Err(format!(
                    "invalid port {text:?}: a host address is not supported; the mesh publishes on every node"
                ));
            }
            (
                Some(port_range(published, true)?),
                port_range(target, false)?,
            )
        }
        None => (None, port_range(ports, false)?),
    };
    let mut configs = Vec::new();
    match published {
        None => {
            for target in target.clone() {
                configs.push(PortConfig {
                    protocol,
                    ..PortConfig::target(target)
                });
            }
        }
        Some(published) => {
            let (p_len, t_len) = (published.len(), target.len());
            if p_len != t_len && t_len != 1 {
                return Err(format!(
                    "invalid port {text:?}: the published range has {p_len} ports and the target range {t_len}"
                ));
            }
            for (i, published) in published.enumerate() {
                let target = if t_len == 1 {
                    *target.start()
                } else {
                    target.start() + i as u16
                };
                configs.push(PortConfig {
                    target,
                    published: (published != 0).then_some(published),
                    protocol,
                    mode: PublishMode::Ingress,
                });
            }
        }
    }
    Ok(configs)
}

fn parse_long(text: &str) -> Result<PortConfig, String> {
    let mut port = PortConfig::target(0);
    for field in text.split(',') {
        let (key, value) = field
            .split_once('=')
            .ok_or_else(|| format!("invalid port field {field:?}: expected KEY=VALUE"))?;
        let value = value.trim();
        match key.trim() {
            "target" => port.target = one_port(value, false)?,
            "published" => port.published = Some(one_port(value, true)?).filter(|p| *p != 0),
            "protocol" => port.protocol = Protocol::parse(value)?,
            "mode" => port.mode = PublishMode::parse(value)?,
            other => {
                return Err(format!(
                    "invalid port field {other:?}: expected published, target, protocol or mode"
                ))
            }
        }
    }
    if port.target == 0 {
        return Err(format!("invalid port {text:?}: target is required"));
    }
    Ok(port)
}

/// A port, `0` allowed only where `zero_ok` (a published port to allocate).
fn one_port(text: &str, zero_ok: bool) -> Result<u16, String> {
    let port: u32 = text
        .trim()
        .parse()
        .map_err(|_| format!("invalid port {text:?}: expected a number"))?;
    if port > u32::from(u16::MAX) || (port == 0 && !zero_ok) {
        return Err(format!("invalid port {port}: ports are 1-65535"));
    }
    Ok(port as u16)
}

fn port_range(text: &str, zero_ok: bool) -> Result<RangeInclusive<u16>, String> {
    match text.split_once('-') {
        Some((low, high)) => {
            let (low, high) = (one_port(low, false)?, one_port(high, false)?);
            if low > high {
                return Err(format!(
                    "invalid port range {text:?}: {low} is above {high}"
                ));
            }
            Ok(low..=high)
        }
        None => {
            let port = one_port(text, zero_ok)?;
            Ok(port..=port)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn port(published: Option<u16>, target: u16) -> PortConfig {
        PortConfig {
            published,
            ..PortConfig::target(target)
        }
    }

    #[test]
    fn short_forms_parse() {
        assert_eq!(
            parse_publish("18080:8080"),
            Ok(vec![port(Some(18080), 8080)])
        );
        assert_eq!(parse_publish("8080"), Ok(vec![port(None, 8080)]));
        assert_eq!(parse_publish("0:8080"), Ok(vec![port(None, 8080)]));
        let udp = parse_publish("53:53/udp").expect("udp");
        assert_eq!(udp[0].protocol, Protocol::Udp);
        assert_eq!(
            parse_publish("8080-8081:80-81"),
            Ok(vec![port(Some(8080), 80), port(Some(8081), 81)])
        );
        assert_eq!(
            parse_publish("8080-8081:80"),
            Ok(vec![port(Some(8080), 80), port(Some(8081), 80)])
        );
        assert_eq!(
            parse_publish("80-81"),
            Ok(vec![port(None, 80), port(None, 81)])
        );
    }

    #[test]
    fn the_long_form_parses() {
        assert_eq!(
            parse_publish("published=8080,target=80,protocol=udp,mode=host"),
            Ok(vec![PortConfig {
                target: 80,
                published: Some(8080),
                protocol: Protocol::Udp,
                mode: PublishMode::Host,
            }])
        );
        assert_eq!(parse_publish("target=80"), Ok(vec![port(None, 80)]));
    }

    #[test]
    fn bad_ports_are_refused_with_a_reason() {
        for (text, needle) in [
            ("0", "1-65535"),
            ("70000:80", "1-65535"),
            ("80:0", "1-65535"),
            ("x:80", "expected a number"),
            ("80/sctp", "tcp or udp"),
            ("8080-8082:80-81", "3 ports"),
            ("90-80", "above"),
            ("127.0.0.1:80:80", "host address"),
            ("published=80", "target is required"),
            ("target=80,color=red", "color"),
            ("target=80,mode=mesh", "ingress or host"),
        ] {
            let err = parse_publish(text).expect_err(text);
            assert!(err.contains(needle), "{text}: {err}");
        }
    }

    #[test]
    fn allocations_carry_over_to_the_same_target_only() {
        let was = |published, target| PublishedPort {
            published,
            target,
            protocol: Protocol::Tcp,
            mode: PublishMode::Ingress,
        };
        let before = [was(30000, 80), was(30001, 81)];
        let spec = [port(None, 81), port(None, 82), port(Some(9000), 80)];
        assert_eq!(
            carry_over(&spec, &before),
            vec![Some(was(30001, 81)), None, Some(was(9000, 80))]
        );
        // A number the spec now fixes is not handed to another port.
        let spec = [port(Some(30000), 90), port(None, 80)];
        assert_eq!(carry_over(&spec, &before), vec![Some(was(30000, 90)), None]);
    }

    #[test]
    fn published_ports_print_as_docker_does() {
        let p = PublishedPort {
            published: 18080,
            target: 8080,
            protocol: Protocol::Tcp,
            mode: PublishMode::Ingress,
        };
        assert_eq!(p.to_string(), "*:18080->8080/tcp");
        let host = PublishedPort {
            mode: PublishMode::Host,
            protocol: Protocol::Udp,
            ..p
        };
        assert_eq!(host.to_string(), "18080->8080/udp");
    }
}

//! Placement constraints, written as Swarm writes them:
//! `node.id==ID`, `node.hostname!=NAME`, `node.role==manager`,
//! `node.labels.KEY==VALUE`, `engine.labels.KEY==VALUE` (the labels of
//! the node's Docker Engine), `node.platform.os==linux`,
//! `node.platform.arch==x86_64`; and placement preferences
//! ([`PlacementPreference`], `spread=node.labels.zone`).

use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Serialize};
use thiserror::Error;

use crate::node::Node;

/// Why a constraint expression was refused.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
pub enum ConstraintError {
    #[error("invalid constraint {0:?}: expected KEY==VALUE or KEY!=VALUE")]
    NoOperator(String),
    #[error("invalid constraint {0:?}: unknown key {1:?} (use node.id, node.hostname, node.role, node.platform.os, node.platform.arch, node.labels.KEY or engine.labels.KEY)")]
    UnknownKey(String, String),
    #[error("invalid constraint {0:?}: the value is empty")]
    EmptyValue(String),
    #[error("invalid constraint {0:?}: node.role is either manager or worker")]
    BadRole(String),
}

/// What a constraint looks at.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ConstraintKey {
    NodeId,
    NodeHostname,
    NodeRole,
    NodeLabel(String),
    PlatformOs,
    PlatformArch,
    /// A label of the node's Docker Engine.
    EngineLabel(String),
}

/// `==` or `!=`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ConstraintOp {
    Eq,
    Ne,
}

/// One parsed constraint. Serialized as its text form.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Constraint {
    pub key: ConstraintKey,
    pub op: ConstraintOp,
    pub value: String,
}

impl Constraint {
    /// Whether `node` satisfies this constraint. A missing label never
    /// equals a value, and so always satisfies `!=`.
    pub fn matches(&self, node: &Node) -> bool {
        let actual: Option<&str> = match &self.key {
            // Swarm matches hostname against the node's name as shown in
            // `node ls`; we accept either.
            ConstraintKey::NodeHostname if node.hostname != self.value => Some(&node.name),
            key => key.value_of(node),
        };
        let equal = match &self.key {
            // Swarm compares platforms without case, and people write
            // Docker's and the kernel's names for the same architecture.
            ConstraintKey::PlatformOs | ConstraintKey::PlatformArch => {
                actual.is_some_and(|a| canonical_platform(a) == canonical_platform(&self.value))
            }
            _ => actual == Some(self.value.as_str()),
        };
        match self.op {
            ConstraintOp::Eq => equal,
            ConstraintOp::Ne => !equal,
        }
    }
}

/// Lower case, with Docker's architecture names mapped to the kernel's.
fn canonical_platform(name: &str) -> String {
    let lower = name.to_ascii_lowercase();
    match lower.as_str() {
        "amd64" | "x86-64" => "x86_64".to_string(),
        "arm64" => "aarch64".to_string(),
        _ => lower,
    }
}

impl ConstraintKey {
    /// What `node` has for this key; `None` for a label it lacks.
    pub fn value_of<'n>(&self, node: &'n Node) -> Option<&'n str> {
        match self {
            ConstraintKey::NodeId => Some(&node.id),
            ConstraintKey::NodeHostname => Some(&node.hostname),
            ConstraintKey::NodeRole => Some(node.role.as_str()),
            ConstraintKey::NodeLabel(k) => node.labels.get(k).map(String::as_str),
            ConstraintKey::PlatformOs => Some(node.platform.os.as_str()),
            ConstraintKey::PlatformArch => Some(node.platform.arch.as_str()),
            ConstraintKey::EngineLabel(k) => node.engine_labels.get(k).map(String::as_str),
        }
    }
}

impl FromStr for Constraint {
    type Err = ConstraintError;

    fn from_str(expr: &str) -> Result<Self, Self::Err> {
        let (lhs, op, rhs) = if let Some((l, r)) = expr.split_once("==") {
            (l, ConstraintOp::Eq, r)
        } else if let Some((l, r)) = expr.split_once("!=") {
            (l, ConstraintOp::Ne, r)
        } else {
            return Err(ConstraintError::NoOperator(expr.to_string()));
        };
        let lhs = lhs.trim();
        let value = rhs.trim().to_string();
        if value.is_empty() {
            return Err(ConstraintError::EmptyValue(expr.to_string()));
        }
        let key = match lhs {
            "node.id" => ConstraintKey::NodeId,
            "node.hostname" => ConstraintKey::NodeHostname,
            "node.role" => {
                if value != "manager" && value != "worker" {
                    return Err(ConstraintError::BadRole(expr.to_string()));
                }
                ConstraintKey::NodeRole
            }
            "node.platform.os" => ConstraintKey::PlatformOs,
            "node.platform.arch" => ConstraintKey::PlatformArch,
            other => {
                let label = |prefix: &str| other.strip_prefix(prefix).filter(|k| !k.is_empty());
                if let Some(k) = label("node.labels.") {
                    ConstraintKey::NodeLabel(k.to_string())
                } else if let Some(k) = label("engine.labels.") {
                    ConstraintKey::EngineLabel(k.to_string())
                } else {
                    return Err(ConstraintError::UnknownKey(
                        expr.to_string(),
                        other.to_string(),
                    ));
                }
            }
        };
        Ok(Constraint { key, op, value })
    }
}

impl fmt::Display for Constraint {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match &self.key {
            ConstraintKey::NodeId => write!(f, "node.id")?,
            ConstraintKey::NodeHostname => write!(f, "node.hostname")?,
            ConstraintKey::NodeRole => write!(f, "node.role")?,
            ConstraintKey::NodeLabel(k) => write!(f, "node.labels.{k}")?,
            ConstraintKey::PlatformOs => write!(f, "node.platform.os")?,
            ConstraintKey::PlatformArch => write!(f, "node.platform.arch")?,
            ConstraintKey::EngineLabel(k) => write!(f, "engine.labels.{k}")?,
        }
        let op = match self.op {
            ConstraintOp::Eq => "==",
            ConstraintOp::Ne => "!=",
        };
        write!(f, "{op}{}", self.value)
    }
}

impl Serialize for Constraint {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&self.to_string())
    }
}

impl<'de> Deserialize<'de> for Constraint {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let text = String::deserialize(d)?;
        text.parse().map_err(serde::de::Error::custom)
    }
}

/// A placement preference, as Swarm's `--placement-pref
/// spread=node.labels.zone`: the tasks of a service are divided evenly
/// over the values the nodes have for `spread` (nodes without one form a
/// group of their own), then within each group by the scheduler's usual
/// rule. Several preferences make a hierarchy: the second divides the
/// tasks of each group of the first. Kept as written: whether `spread`
/// names something a node has is a rule of the spec.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize, utoipa::ToSchema)]
pub struct PlacementPreference {
    /// `node.labels.KEY`, `engine.labels.KEY`, `node.platform.os` or
    /// `node.platform.arch`.
    #[schema(example = "node.labels.zone")]
    pub spread: String,
}

impl PlacementPreference {
    /// A preference to spread over `descriptor`.
    pub fn spread(descriptor: impl Into<String>) -> Self {
        PlacementPreference {
            spread: descriptor.into(),
        }
    }

    /// What the preference spreads over, or `None` when it names nothing
    /// a node has.
    pub fn key(&self) -> Option<ConstraintKey> {
        match self.spread.as_str() {
            "node.platform.os" => Some(ConstraintKey::PlatformOs),
            "node.platform.arch" => Some(ConstraintKey::PlatformArch),
            other => {
                let label = |prefix: &str| other.strip_prefix(prefix).filter(|k| !k.is_empty());
                if let Some(k) = label("node.labels.") {
                    Some(ConstraintKey::NodeLabel(k.to_string()))
                } else {
                    label("engine.labels.").map(|k| ConstraintKey::EngineLabel(k.to_string()))
                }
            }
        }
    }

    /// The value `node` has for what the preference spreads over; `None`
    /// (a group of its own) when it has none, or when the preference
    /// names nothing a node has.
    pub fn value_of<'n>(&self, node: &'n Node) -> Option<&'n str> {
        self.key().and_then(|key| key.value_of(node))
    }
}

impl FromStr for PlacementPreference {
    type Err = String;

    /// `spread=DESCRIPTOR`, as `docker service create --placement-pref`
    /// takes it. Only the syntax: the descriptor is checked by
    /// [`crate::ServiceSpec::validate`].
    fn from_str(text: &str) -> Result<Self, Self::Err> {
        match text.split_once('=') {
            Some((strategy, descriptor)) if strategy.trim() == "spread" => {
                Ok(PlacementPreference::spread(descriptor.trim()))
            }
            _ => Err(format!(
                "invalid placement preference {text:?}: expected spread=node.labels.KEY"
            )),
        }
    }
}

impl fmt::Display for PlacementPreference {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "spread={}", self.spread)
    }
}

/// A constraint is a string in the API: its text form.
impl utoipa::PartialSchema for Constraint {
    fn schema() -> utoipa::openapi::RefOr<utoipa::openapi::schema::Schema> {
        utoipa::openapi::ObjectBuilder::new()
            .schema_type(utoipa::openapi::schema::Type::String)
            .description(Some(
                "`KEY==VALUE` or `KEY!=VALUE`; KEY is node.id, node.hostname, node.role, \
                 node.platform.os, node.platform.arch, node.labels.NAME or engine.labels.NAME",
            ))
            .examples(["node.labels.zone==a"])
            .into()
    }
}

impl utoipa::ToSchema for Constraint {}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::node::{Availability, NodeRole, NodeState};

    fn node() -> Node {
        Node {
            id: "n1".into(),
            raft_id: 1,
            name: "alpha".into(),
            hostname: "host-a".into(),
            role: NodeRole::Manager,
            availability: Availability::Active,
            labels: [("zone".to_string(), "a".to_string())].into(),
            state: NodeState::Ready,
            addr: String::new(),
            api_addr: String::new(),
            version: "0".into(),
            resources: Default::default(),
            platform: crate::node::Platform {
                os: "linux".into(),
                arch: "x86_64".into(),
            },
            created_at: 0,
            last_seen: 0,
            entry_format: 0,
            overlay_error: None,
            engine_labels: Default::default(),
        }
    }

    fn c(s: &str) -> Constraint {
        s.parse().expect("valid constraint")
    }

    #[test]
    fn platform_constraints_as_swarm_stacks_write_them() {
        let n = node();
        assert!(c("node.platform.os == linux").matches(&n));
        assert!(c("node.platform.os==Linux").matches(&n));
        assert!(!c("node.platform.os != linux").matches(&n));
        assert!(c("node.platform.arch == x86_64").matches(&n));
        assert!(c("node.platform.arch == amd64").matches(&n));
        assert!(!c("node.platform.arch == aarch64").matches(&n));
        assert_eq!(
            c("node.platform.arch==amd64").to_string(),
            "node.platform.arch==amd64"
        );
        let unknown = "node.platform.kernel==6".parse::<Constraint>();
        assert!(unknown.is_err());
    }

    #[test]
    fn parses_and_prints() {
        for s in [
            "node.id==n1",
            "node.hostname!=x",
            "node.role==worker",
            "node.labels.zone==a",
        ] {
            assert_eq!(c(s).to_string(), s);
        }
        assert_eq!(
            c(" node.role == manager ").to_string(),
            "node.role==manager"
        );
    }

    #[test]
    fn refuses_malformed() {
        assert!(matches!(
            "node.role=manager".parse::<Constraint>(),
            Err(ConstraintError::NoOperator(_))
        ));
        assert!(matches!(
            "node.colour==red".parse::<Constraint>(),
            Err(ConstraintError::UnknownKey(..))
        ));
        assert!(matches!(
            "node.labels.==x".parse::<Constraint>(),
            Err(ConstraintError::UnknownKey(..))
        ));
        assert!(matches!(
            "node.id==".parse::<Constraint>(),
            Err(ConstraintError::EmptyValue(_))
        ));
        assert!(matches!(
            "node.role==boss".parse::<Constraint>(),
            Err(ConstraintError::BadRole(_))
        ));
    }

    #[test]
    fn matches_nodes() {
        let n = node();
        assert!(c("node.id==n1").matches(&n));
        assert!(!c("node.id!=n1").matches(&n));
        assert!(c("node.hostname==host-a").matches(&n));
        assert!(c("node.hostname==alpha").matches(&n));
        assert!(!c("node.hostname==beta").matches(&n));
        assert!(c("node.role==manager").matches(&n));
        assert!(!c("node.role==worker").matches(&n));
        assert!(c("node.labels.zone==a").matches(&n));
        assert!(!c("node.labels.zone==b").matches(&n));
        assert!(!c("node.labels.rack==1").matches(&n));
        assert!(c("node.labels.rack!=1").matches(&n));
    }

    #[test]
    fn engine_labels_are_the_engines() {
        let mut n = node();
        n.engine_labels.insert("disk".into(), "ssd".into());
        assert!(c("engine.labels.disk==ssd").matches(&n));
        assert!(!c("engine.labels.disk==hdd").matches(&n));
        assert!(c("engine.labels.gpu!=yes").matches(&n));
        // A node label of the same name is another thing.
        assert!(!c("engine.labels.zone==a").matches(&n));
        assert_eq!(
            c("engine.labels.disk == ssd").to_string(),
            "engine.labels.disk==ssd"
        );
        assert!(matches!(
            "engine.labels.==x".parse::<Constraint>(),
            Err(ConstraintError::UnknownKey(..))
        ));
    }

    #[test]
    fn preferences_parse_and_look_up_values() {
        let p: PlacementPreference = "spread=node.labels.zone".parse().expect("valid");
        assert_eq!(p, PlacementPreference::spread("node.labels.zone"));
        assert_eq!(p.to_string(), "spread=node.labels.zone");
        assert_eq!(
            " spread = engine.labels.disk "
                .parse::<PlacementPreference>()
                .map(|p| p.spread),
            Ok("engine.labels.disk".to_string())
        );
        for bad in ["node.labels.zone", "pack=node.labels.zone"] {
            assert!(bad.parse::<PlacementPreference>().is_err(), "{bad}");
        }
        let mut n = node();
        n.engine_labels.insert("disk".into(), "ssd".into());
        let value = |d: &str| {
            PlacementPreference::spread(d)
                .value_of(&n)
                .map(String::from)
        };
        assert_eq!(value("node.labels.zone").as_deref(), Some("a"));
        assert_eq!(value("node.labels.rack"), None);
        assert_eq!(value("engine.labels.disk").as_deref(), Some("ssd"));
        assert_eq!(value("node.platform.os").as_deref(), Some("linux"));
        assert_eq!(value("node.hostname"), None);
        assert_eq!(PlacementPreference::spread("node.id").key(), None);
        let json = serde_json::to_string(&p).expect("serialize");
        assert_eq!(json, r#"{"spread":"node.labels.zone"}"#);
    }

    #[test]
    fn serde_uses_text_form() {
        let json = serde_json::to_string(&c("node.labels.zone!=b")).expect("serialize");
        assert_eq!(json, "\"node.labels.zone!=b\"");
        let back: Constraint = serde_json::from_str(&json).expect("deserialize");
        assert_eq!(back, c("node.labels.zone!=b"));
    }
}

//! Networks: what `flotilla network create` and Compose `networks` ask
//! for ([`NetworkSpec`]), what the leader allocated for one ([`Network`]:
//! its subnet and VXLAN ID), how a service joins networks
//! ([`NetworkAttachment`], [`EndpointMode`]) and the addresses the leader
//! gives a service and its tasks on each ([`NetworkAddress`]).
//!
//! Addresses are IPv4. In a network's subnet the first address (`.1` of a
//! /24) is the gateway of the node's bridge and is never handed out; the
//! network and broadcast addresses are not hosts.

use std::collections::BTreeMap;
use std::fmt;
use std::net::Ipv4Addr;
use std::str::FromStr;

use serde::{Deserialize, Serialize};
use thiserror::Error;
use utoipa::ToSchema;

use crate::UnixMs;

/// Where subnets come from when a network names none: `10.64.0.0/10`
/// (10.64.0.0 to 10.127.255.255), one /19 per network in order, so 512
/// networks. Swarm's default pool is all of 10.0.0.0/8, which collides
/// with most private networks; a quarter of it is enough and leaves the
/// rest to the machines.
pub const DEFAULT_POOL: Subnet = Subnet {
    addr: Ipv4Addr::new(10, 64, 0, 0),
    prefix: 10,
};

/// The prefix of a subnet taken from the pool: 8,189 addresses for a
/// network's virtual addresses and tasks. Swarm gives a /24 (253), so a
/// service of more than about 250 tasks fails to deploy on a default
/// network (moby#31019); a /19 holds a service of 5,000 replicas.
pub const POOL_SUBNET_PREFIX: u8 = 19;

/// The shortest and longest prefixes a network's subnet may have: a /8
/// is 16 million addresses, a /29 the smallest with room for a few tasks.
pub const SUBNET_PREFIXES: std::ops::RangeInclusive<u8> = 8..=29;

/// VXLAN network identifiers handed out: 4096 and up, as Swarm's, below
/// the 24-bit limit.
pub const VNI_RANGE: std::ops::RangeInclusive<u32> = 4096..=0xFF_FFFF;

/// Why a subnet's text is not one.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
pub enum SubnetError {
    #[error("invalid subnet {0:?}: expected an IPv4 CIDR such as 10.0.9.0/24")]
    Syntax(String),
    #[error("invalid subnet {text:?}: the prefix must be {min} to {max}", min = SUBNET_PREFIXES.start(), max = SUBNET_PREFIXES.end())]
    Prefix { text: String },
    #[error("invalid subnet {text:?}: host bits are set (did you mean {suggest}?)")]
    HostBits { text: String, suggest: Subnet },
}

/// An IPv4 subnet, `10.0.9.0/24`, with no host bits set. JSON: the text.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Subnet {
    pub addr: Ipv4Addr,
    pub prefix: u8,
}

impl Subnet {
    fn mask(prefix: u8) -> u32 {
        if prefix == 0 {
            0
        } else {
            u32::MAX << (32 - u32::from(prefix.min(32)))
        }
    }

    /// The subnet of `prefix` bits that holds `addr`.
    pub fn containing(addr: Ipv4Addr, prefix: u8) -> Subnet {
        Subnet {
            addr: Ipv4Addr::from(u32::from(addr) & Subnet::mask(prefix)),
            prefix,
        }
    }

    pub fn contains(&self, ip: Ipv4Addr) -> bool {
        u32::from(ip) & Subnet::mask(self.prefix) == u32::from(self.addr)
    }

    /// Whether the two share an address (one holds the other's start).
    pub fn overlaps(&self, other: &Subnet) -> bool {
        self.contains(other.addr) || other.contains(self.addr)
    }

    /// How many addresses it holds, network and broadcast included.
    pub fn size(&self) -> u64 {
        1u64 << (32 - u32::from(self.prefix.min(32)))
    }

    /// The address `n` places after the network address.
    pub fn nth(&self, n: u64) -> Option<Ipv4Addr> {
        if n >= self.size() {
            return None;
        }
        u32::try_from(u64::from(u32::from(self.addr)) + n)
            .ok()
            .map(Ipv4Addr::from)
    }

    /// The gateway: the first host address, kept for the node's bridge.
    pub fn gateway(&self) -> Ipv4Addr {
        self.nth(1).unwrap_or(self.addr)
    }

    /// Whether `ip` may be given to a service or a task: in the subnet,
    /// neither the network, gateway nor broadcast address.
    pub fn assignable(&self, ip: Ipv4Addr) -> bool {
        let offset = u64::from(u32::from(ip)).wrapping_sub(u64::from(u32::from(self.addr)));
        self.contains(ip) && offset >= 2 && offset + 1 < self.size()
    }

    /// The addresses that may be handed out, in order.
    pub fn assignable_addrs(&self) -> impl Iterator<Item = Ipv4Addr> + '_ {
        (2..self.size().saturating_sub(1)).filter_map(|n| self.nth(n))
    }

    /// The subnets of `prefix` bits inside this one, in order.
    pub fn subnets(&self, prefix: u8) -> impl Iterator<Item = Subnet> + '_ {
        let count = if prefix < self.prefix {
            0
        } else {
            1u64 << u32::from(prefix - self.prefix)
        };
        let step = 1u64 << (32 - u32::from(prefix.min(32)));
        (0..count).filter_map(move |i| {
            let start = u64::from(u32::from(self.addr)) + i * step;
            u32::try_from(start).ok().map(|s| Subnet {
                addr: Ipv4Addr::from(s),
                prefix,
            })
        })
    }
}

impl fmt::Display for Subnet {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.addr, self.prefix)
    }
}

impl FromStr for Subnet {
    type Err = SubnetError;

    fn from_str(text: &str) -> Result<Subnet, SubnetError> {
        let syntax = || SubnetError::Syntax(text.to_string());
        let (addr, prefix) = text.trim().split_once('/').ok_or_else(syntax)?;
        let addr: Ipv4Addr = addr.parse().map_err(|_| syntax())?;
        if prefix.is_empty() || !prefix.bytes().all(|b| b.is_ascii_digit()) {
            return Err(syntax());
        }
        let prefix: u8 = prefix.parse().map_err(|_| syntax())?;
        if prefix > 32 {
            return Err(syntax());
        }
        if !SUBNET_PREFIXES.contains(&prefix) {
            return Err(SubnetError::Prefix {
                text: text.to_string(),
            });
        }
        let subnet = Subnet::containing(addr, prefix);
        if subnet.addr != addr {
            return Err(SubnetError::HostBits {
                text: text.to_string(),
                suggest: subnet,
            });
        }
        Ok(subnet)
    }
}

impl Serialize for Subnet {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

impl<'de> Deserialize<'de> for Subnet {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Subnet, D::Error> {
        let text = String::deserialize(d)?;
        text.parse().map_err(serde::de::Error::custom)
    }
}

impl utoipa::PartialSchema for Subnet {
    fn schema() -> utoipa::openapi::RefOr<utoipa::openapi::schema::Schema> {
        utoipa::openapi::ObjectBuilder::new()
            .schema_type(utoipa::openapi::schema::Type::String)
            .description(Some("An IPv4 subnet in CIDR form, e.g. 10.0.9.0/24"))
            .into()
    }
}

impl ToSchema for Subnet {}

/// The driver of a network. Only the overlay exists (Swarm's default for
/// services); Compose's `driver: overlay` names it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "lowercase")]
pub enum NetworkDriver {
    #[default]
    Overlay,
}

impl NetworkDriver {
    pub fn as_str(&self) -> &'static str {
        match self {
            NetworkDriver::Overlay => "overlay",
        }
    }

    pub fn parse(text: &str) -> Result<NetworkDriver, String> {
        match text {
            "overlay" => Ok(NetworkDriver::Overlay),
            other => Err(format!(
                "network driver {other:?} is not supported: Flotilla networks are overlay networks"
            )),
        }
    }
}

/// What a network is asked to be.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct NetworkSpec {
    pub name: String,
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub labels: BTreeMap<String, String>,
    #[serde(default)]
    pub driver: NetworkDriver,
    /// No route out of the network: its tasks reach only each other.
    #[serde(default)]
    pub internal: bool,
    /// Tasks other than a service's may attach (kept for Compose; every
    /// service may attach to any network).
    #[serde(default)]
    pub attachable: bool,
    /// Traffic of the network between nodes is encrypted (IPsec).
    #[serde(default)]
    pub encrypted: bool,
    /// The subnet asked for; none takes one from [`DEFAULT_POOL`].
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub subnet: Option<Subnet>,
}

impl NetworkSpec {
    /// An overlay of that name with every default.
    pub fn named(name: impl Into<String>) -> NetworkSpec {
        NetworkSpec {
            name: name.into(),
            labels: BTreeMap::new(),
            driver: NetworkDriver::Overlay,
            internal: false,
            attachable: false,
            encrypted: false,
            subnet: None,
        }
    }
}

/// A network in the store.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct Network {
    pub id: String,
    pub spec: NetworkSpec,
    pub created_at: UnixMs,
    /// Its subnet: the one asked for, else the leader's pick from the
    /// pool; none until the leader allocated it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub subnet: Option<Subnet>,
    /// Its VXLAN network identifier, chosen by the leader with the subnet.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub vni: Option<u32>,
    /// An encrypted network's key (32 bytes, hex), drawn by the leader with
    /// the subnet; shown by no view.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub key: Option<String>,
}

impl Network {
    /// Whether the leader has given it what its tasks need.
    pub fn allocated(&self) -> bool {
        self.subnet.is_some() && self.vni.is_some()
    }
}

/// How a service's name resolves on a network.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "lowercase")]
pub enum EndpointMode {
    /// One virtual address per network, balanced over the ready tasks.
    #[default]
    Vip,
    /// The ready tasks' own addresses (DNS round robin).
    Dnsrr,
}

impl EndpointMode {
    /// For `skip_serializing_if`: the default is left out of JSON.
    pub fn is_vip(&self) -> bool {
        *self == EndpointMode::Vip
    }

    pub fn as_str(&self) -> &'static str {
        match self {
            EndpointMode::Vip => "vip",
            EndpointMode::Dnsrr => "dnsrr",
        }
    }

    pub fn parse(text: &str) -> Result<EndpointMode, String> {
        match text {
            "vip" => Ok(EndpointMode::Vip),
            "dnsrr" => Ok(EndpointMode::Dnsrr),
            other => Err(format!(
                "invalid endpoint mode {other:?}: expected vip or dnsrr"
            )),
        }
    }
}

/// A service on one network: the network's ID and the further names the
/// service answers to on it.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize, ToSchema)]
pub struct NetworkAttachment {
    /// The network's ID (a name given by a user is resolved to it when
    /// the service is written).
    pub network: String,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub aliases: Vec<String>,
}

impl NetworkAttachment {
    pub fn to(network: impl Into<String>) -> NetworkAttachment {
        NetworkAttachment {
            network: network.into(),
            aliases: Vec::new(),
        }
    }
}

/// An address on a network: a service's virtual address or a task's own.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize, ToSchema)]
pub struct NetworkAddress {
    pub network: String,
    #[schema(value_type = String)]
    pub addr: Ipv4Addr,
}

/// What every node needs to know of the networks, computed by the leader
/// from the store and sent to each node with its session (as the mesh's
/// table is): for the node's resolver, the names on each network and
/// what they resolve to; for its data path, where each task of a network
/// runs.
#[derive(Debug, Clone, Default, PartialEq, Eq, Hash, Serialize, Deserialize, ToSchema)]
pub struct NetworkTable {
    pub networks: Vec<NetworkEntry>,
}

/// One allocated network in the [`NetworkTable`].
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize, ToSchema)]
pub struct NetworkEntry {
    pub network_id: String,
    pub name: String,
    pub subnet: Subnet,
    pub vni: u32,
    pub internal: bool,
    pub encrypted: bool,
    /// An encrypted network's key (hex), for the nodes' tunnels.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub key: Option<String>,
    /// The services on it, by name.
    pub services: Vec<NameEntry>,
    /// Every task that holds an address on it and has not ended.
    pub endpoints: Vec<Endpoint>,
}

impl NetworkEntry {
    /// The addresses of `service_id`'s tasks in rotation on this network,
    /// in address order: what its virtual address leads to.
    pub fn ready_addrs(&self, service_id: &str) -> Vec<Ipv4Addr> {
        let mut ready: Vec<Ipv4Addr> = self
            .endpoints
            .iter()
            .filter(|e| e.ready && e.service_id == service_id)
            .map(|e| e.addr)
            .collect();
        ready.sort();
        ready
    }
}

/// The names a service answers to on one network, and how they resolve.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize, ToSchema)]
pub struct NameEntry {
    pub service_id: String,
    /// Its full name, its name in its stack (`web` of `shop_web`) and its
    /// aliases on this network, lowercase, without duplicates.
    pub names: Vec<String>,
    pub endpoint_mode: EndpointMode,
    /// Its virtual address on this network (endpoint mode `vip`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schema(value_type = Option<String>)]
    pub vip: Option<Ipv4Addr>,
    /// The ports its tasks listen on, for SRV answers and the virtual
    /// address's forwarding.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub ports: Vec<crate::port::PortConfig>,
}

/// A task's address on one network and where it runs.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize, ToSchema)]
pub struct Endpoint {
    pub task_id: String,
    pub service_id: String,
    #[schema(value_type = String)]
    pub addr: Ipv4Addr,
    /// Its node, once placed.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub node_id: Option<String>,
    /// Its node's address, which the overlay sends its packets to.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schema(value_type = Option<String>)]
    pub node_addr: Option<std::net::IpAddr>,
    /// In rotation: desired running, running and (when checked) healthy, on
    /// a ready node. Only these are answered for `tasks.NAME` and reached
    /// through the virtual address.
    pub ready: bool,
}

/// Whether `name` can be a DNS label (an alias): 1 to 63 letters, digits,
/// `-` and `_`, not starting or ending with `-`.
pub fn valid_alias(name: &str) -> bool {
    let bytes = name.as_bytes();
    !bytes.is_empty()
        && bytes.len() <= 63
        && bytes
            .iter()
            .all(|b| b.is_ascii_alphanumeric() || *b == b'-' || *b == b'_' || *b == b'.')
        && !name.starts_with(['-', '.'])
        && !name.ends_with(['-', '.'])
        && !name.contains("..")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn net(text: &str) -> Subnet {
        text.parse().expect("subnet")
    }

    #[test]
    fn subnets_parse_print_and_refuse_host_bits() {
        assert_eq!(net("10.0.9.0/24").to_string(), "10.0.9.0/24");
        assert_eq!(
            "10.0.9.5/24".parse::<Subnet>().unwrap_err().to_string(),
            "invalid subnet \"10.0.9.5/24\": host bits are set (did you mean 10.0.9.0/24?)"
        );
        for bad in [
            "10.0.9.0",
            "10.0.9.0/",
            "10.0.9/24",
            "x/24",
            "10.0.9.0/33",
            "10.0.9.0/+4",
        ] {
            assert!(
                matches!(bad.parse::<Subnet>(), Err(SubnetError::Syntax(_))),
                "{bad}"
            );
        }
        assert!(matches!(
            "10.0.0.0/30".parse::<Subnet>(),
            Err(SubnetError::Prefix { .. })
        ));
        assert!(matches!(
            "0.0.0.0/0".parse::<Subnet>(),
            Err(SubnetError::Prefix { .. })
        ));
        let json = serde_json::to_string(&net("10.0.9.0/24")).expect("json");
        assert_eq!(json, "\"10.0.9.0/24\"");
        assert_eq!(
            serde_json::from_str::<Subnet>(&json).expect("back"),
            net("10.0.9.0/24")
        );
        assert!(serde_json::from_str::<Subnet>("\"10.0.9.1/24\"").is_err());
    }

    #[test]
    fn overlap_and_membership() {
        let a = net("10.0.0.0/16");
        assert!(a.overlaps(&net("10.0.9.0/24")));
        assert!(net("10.0.9.0/24").overlaps(&a));
        assert!(!a.overlaps(&net("10.1.0.0/16")));
        assert!(a.contains(Ipv4Addr::new(10, 0, 255, 255)));
        assert!(!a.contains(Ipv4Addr::new(10, 1, 0, 0)));
    }

    #[test]
    fn assignable_addresses_skip_network_gateway_and_broadcast() {
        let s = net("10.0.9.0/29");
        assert_eq!(s.gateway(), Ipv4Addr::new(10, 0, 9, 1));
        let all: Vec<Ipv4Addr> = s.assignable_addrs().collect();
        assert_eq!(
            all,
            (2..=6)
                .map(|i| Ipv4Addr::new(10, 0, 9, i))
                .collect::<Vec<_>>()
        );
        assert!(s.assignable(Ipv4Addr::new(10, 0, 9, 6)));
        for not in [0, 1, 7] {
            assert!(!s.assignable(Ipv4Addr::new(10, 0, 9, not)), "{not}");
        }
        assert!(!s.assignable(Ipv4Addr::new(10, 0, 10, 2)));
        assert_eq!(net("10.0.9.0/24").assignable_addrs().count(), 253);
    }

    #[test]
    fn the_pool_splits_into_its_subnets_in_order() {
        let mut subnets = DEFAULT_POOL.subnets(POOL_SUBNET_PREFIX);
        assert_eq!(subnets.next(), Some(net("10.64.0.0/19")));
        assert_eq!(subnets.next(), Some(net("10.64.32.0/19")));
        assert_eq!(DEFAULT_POOL.subnets(POOL_SUBNET_PREFIX).count(), 512);
        assert_eq!(
            DEFAULT_POOL.subnets(POOL_SUBNET_PREFIX).last(),
            Some(net("10.127.224.0/19"))
        );
        assert_eq!(net("10.64.0.0/19").assignable_addrs().count(), 8_189);
        assert_eq!(DEFAULT_POOL.subnets(24).count(), 16_384);
        assert_eq!(net("10.0.0.0/24").subnets(16).count(), 0);
    }

    #[test]
    fn aliases_are_dns_labels() {
        for good in ["db", "db-1", "my_db", "db.internal"] {
            assert!(valid_alias(good), "{good}");
        }
        for bad in ["", "-db", "db-", "d b", "db..x", ".db", &"x".repeat(64)] {
            assert!(!valid_alias(bad), "{bad:?}");
        }
    }
}

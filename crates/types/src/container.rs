//! How a task runs beyond its command: the keys of Docker's container
//! configuration a task template carries (`user`, `stop_signal`,
//! `ulimits`, `extra_hosts`, `logging`, bind propagation, ...), their
//! types, and the reading of what people type for them, shared by the
//! CLI's flags and the Compose keys. Which of them a process task honours
//! is a rule of the spec ([`crate::ServiceSpec::validate`]).

use std::collections::BTreeMap;
use std::net::IpAddr;

use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

/// A resource limit of the task's processes (`--ulimit nofile=1024:2048`,
/// Compose `ulimits`), as `setrlimit` takes it. -1 is unlimited.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct Ulimit {
    /// The limit's name without `RLIMIT_`, lower case: `nofile`, `nproc`.
    pub name: String,
    pub soft: i64,
    pub hard: i64,
}

/// The limits Docker knows by name.
pub const ULIMIT_NAMES: &[&str] = &[
    "as",
    "core",
    "cpu",
    "data",
    "fsize",
    "locks",
    "memlock",
    "msgqueue",
    "nice",
    "nofile",
    "nproc",
    "rss",
    "rtprio",
    "rttime",
    "sigpending",
    "stack",
];

impl Ulimit {
    /// Docker's `NAME=SOFT[:HARD]` (`nofile=1024:2048`, `nproc=65535`).
    pub fn parse(text: &str) -> Result<Ulimit, String> {
        let bad = || {
            format!("invalid ulimit {text:?}: expected NAME=SOFT[:HARD], such as nofile=1024:2048")
        };
        let (name, values) = text.split_once('=').ok_or_else(bad)?;
        let number = |v: &str| v.trim().parse::<i64>().map_err(|_| bad());
        let (soft, hard) = match values.split_once(':') {
            Some((s, h)) => (number(s)?, number(h)?),
            None => {
                let n = number(values)?;
                (n, n)
            }
        };
        Ok(Ulimit {
            name: name.trim().to_string(),
            soft,
            hard,
        })
    }

    /// A known name, values of -1 (unlimited) or more, and the soft limit
    /// within the hard one.
    pub fn check(&self) -> Result<(), String> {
        if !ULIMIT_NAMES.contains(&self.name.as_str()) {
            return Err(format!(
                "unknown ulimit {:?}: expected one of {}",
                self.name,
                ULIMIT_NAMES.join(", ")
            ));
        }
        let unlimited = |v: i64| v == -1;
        if self.soft < -1 || self.hard < -1 {
            return Err(format!(
                "ulimit {}: limits are -1 (unlimited) or more",
                self.name
            ));
        }
        if !unlimited(self.hard) && (unlimited(self.soft) || self.soft > self.hard) {
            return Err(format!(
                "ulimit {}: the soft limit {} is above the hard limit {}",
                self.name, self.soft, self.hard
            ));
        }
        Ok(())
    }
}

/// A line of the task's `/etc/hosts` (`--add-host NAME:IP`, Compose
/// `extra_hosts`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct ExtraHost {
    pub name: String,
    /// An IPv4 or IPv6 address.
    pub ip: String,
}

impl ExtraHost {
    /// `NAME:IP` or `NAME=IP` (the address may be IPv6: the name ends at
    /// the first separator).
    pub fn parse(text: &str) -> Result<ExtraHost, String> {
        let cut = text
            .find([':', '='])
            .ok_or_else(|| format!("invalid host {text:?}: expected NAME:IP"))?;
        Ok(ExtraHost {
            name: text[..cut].trim().to_string(),
            ip: text[cut + 1..].trim().to_string(),
        })
    }

    /// A name with no blanks, and an address.
    pub fn check(&self) -> Result<(), String> {
        if self.name.is_empty() || self.name.contains(char::is_whitespace) {
            return Err(format!("invalid host name {:?}", self.name));
        }
        let ip = self.ip.trim_start_matches('[').trim_end_matches(']');
        if ip.parse::<IpAddr>().is_err() {
            return Err(format!(
                "host {}: {:?} is not an IP address",
                self.name, self.ip
            ));
        }
        Ok(())
    }

    /// As Docker's `ExtraHosts` takes it: `NAME:IP`.
    pub fn engine_form(&self) -> String {
        let ip = self.ip.trim_start_matches('[').trim_end_matches(']');
        format!("{}:{ip}", self.name)
    }
}

/// The engine's log driver for a container (`--log-driver`, `--log-opt`,
/// Compose `logging`). Flotilla's own `service logs` reads the container's
/// output through the engine, so a driver that keeps nothing readable
/// (`none`) leaves it empty.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct LogDriver {
    pub name: String,
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub options: BTreeMap<String, String>,
}

/// How mounts under a bind mount propagate between the node and the
/// container (`--mount ...,bind-propagation=rslave`, Compose
/// `bind.propagation`), as Linux's shared subtrees.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "lowercase")]
pub enum Propagation {
    Rprivate,
    Private,
    Rshared,
    Shared,
    Rslave,
    Slave,
}

impl Propagation {
    pub fn as_str(&self) -> &'static str {
        match self {
            Propagation::Rprivate => "rprivate",
            Propagation::Private => "private",
            Propagation::Rshared => "rshared",
            Propagation::Shared => "shared",
            Propagation::Rslave => "rslave",
            Propagation::Slave => "slave",
        }
    }

    /// Parses one of the six modes; the error names them.
    pub fn parse(s: &str) -> Result<Self, String> {
        Ok(match s {
            "rprivate" => Propagation::Rprivate,
            "private" => Propagation::Private,
            "rshared" => Propagation::Rshared,
            "shared" => Propagation::Shared,
            "rslave" => Propagation::Rslave,
            "slave" => Propagation::Slave,
            _ => {
                return Err(format!(
                    "invalid propagation {s:?}: expected rprivate, private, rshared, shared, rslave or slave"
                ))
            }
        })
    }
}

/// Linux's signals by name, as Docker reads them (`SIGINT`, `INT`, any
/// case, `SIGRTMIN+3`).
const SIGNALS: &[(&str, i32)] = &[
    ("HUP", 1),
    ("INT", 2),
    ("QUIT", 3),
    ("ILL", 4),
    ("TRAP", 5),
    ("ABRT", 6),
    ("IOT", 6),
    ("BUS", 7),
    ("FPE", 8),
    ("KILL", 9),
    ("USR1", 10),
    ("SEGV", 11),
    ("USR2", 12),
    ("PIPE", 13),
    ("ALRM", 14),
    ("TERM", 15),
    ("STKFLT", 16),
    ("CHLD", 17),
    ("CONT", 18),
    ("STOP", 19),
    ("TSTP", 20),
    ("TTIN", 21),
    ("TTOU", 22),
    ("URG", 23),
    ("XCPU", 24),
    ("XFSZ", 25),
    ("VTALRM", 26),
    ("PROF", 27),
    ("WINCH", 28),
    ("IO", 29),
    ("POLL", 29),
    ("PWR", 30),
    ("SYS", 31),
];

const SIGRTMIN: i32 = 34;
const SIGRTMAX: i32 = 64;

/// The number of a stop signal as people write it: a number (1-64) or a
/// name with or without `SIG`, in any case (`SIGINT`, `int`,
/// `SIGRTMIN+2`, `RTMAX-1`). `None` for anything else.
pub fn parse_signal(text: &str) -> Option<i32> {
    let text = text.trim();
    if let Ok(n) = text.parse::<i32>() {
        return (1..=SIGRTMAX).contains(&n).then_some(n);
    }
    let upper = text.to_ascii_uppercase();
    let name = upper.strip_prefix("SIG").unwrap_or(&upper);
    if let Some(&(_, n)) = SIGNALS.iter().find(|(s, _)| *s == name) {
        return Some(n);
    }
    let realtime = |base: i32, rest: &str, sign: i32| -> Option<i32> {
        let offset = if rest.is_empty() {
            0
        } else {
            rest.parse::<i32>().ok()?
        };
        let n = base + sign * offset;
        (SIGRTMIN..=SIGRTMAX).contains(&n).then_some(n)
    };
    if let Some(rest) = name.strip_prefix("RTMIN") {
        return match rest.strip_prefix('+') {
            Some(r) if !r.is_empty() => realtime(SIGRTMIN, r, 1),
            None if rest.is_empty() => Some(SIGRTMIN),
            _ => None,
        };
    }
    if let Some(rest) = name.strip_prefix("RTMAX") {
        return match rest.strip_prefix('-') {
            Some(r) if !r.is_empty() => realtime(SIGRTMAX, r, -1),
            None if rest.is_empty() => Some(SIGRTMAX),
            _ => None,
        };
    }
    None
}

/// Linux's capabilities, without `CAP_`.
const CAPABILITIES: &[&str] = &[
    "CHOWN",
    "DAC_OVERRIDE",
    "DAC_READ_SEARCH",
    "FOWNER",
    "FSETID",
    "KILL",
    "SETGID",
    "SETUID",
    "SETPCAP",
    "LINUX_IMMUTABLE",
    "NET_BIND_SERVICE",
    "NET_BROADCAST",
    "NET_ADMIN",
    "NET_RAW",
    "IPC_LOCK",
    "IPC_OWNER",
    "SYS_MODULE",
    "SYS_RAWIO",
    "SYS_CHROOT",
    "SYS_PTRACE",
    "SYS_PACCT",
    "SYS_ADMIN",
    "SYS_BOOT",
    "SYS_NICE",
    "SYS_RESOURCE",
    "SYS_TIME",
    "SYS_TTY_CONFIG",
    "MKNOD",
    "LEASE",
    "AUDIT_WRITE",
    "AUDIT_CONTROL",
    "SETFCAP",
    "MAC_OVERRIDE",
    "MAC_ADMIN",
    "SYSLOG",
    "WAKE_ALARM",
    "BLOCK_SUSPEND",
    "AUDIT_READ",
    "PERFMON",
    "BPF",
    "CHECKPOINT_RESTORE",
];

/// Whether `name` is `ALL` or a Linux capability, with or without `CAP_`,
/// in any case, as Docker reads them.
pub fn valid_capability(name: &str) -> bool {
    let upper = name.to_ascii_uppercase();
    upper == "ALL" || CAPABILITIES.contains(&upper.strip_prefix("CAP_").unwrap_or(&upper))
}

/// Whether `user` is `USER[:GROUP]`, each a name or a number, with no
/// blanks.
pub fn valid_user(user: &str) -> bool {
    let part = |p: &str| !p.is_empty() && !p.contains(|c: char| c.is_whitespace() || c == '\0');
    match user.split_once(':') {
        Some((u, g)) => part(u) && part(g) && !g.contains(':'),
        None => part(user),
    }
}

/// Whether `name` is the name of a kernel parameter (`net.ipv4.ip_forward`,
/// also with `/`).
pub fn valid_sysctl(name: &str) -> bool {
    !name.is_empty()
        && name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-' | '/' | '*'))
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn signals_by_name_or_number() {
        assert_eq!(parse_signal("SIGINT"), Some(2));
        assert_eq!(parse_signal("int"), Some(2));
        assert_eq!(parse_signal("SIGQUIT"), Some(3));
        assert_eq!(parse_signal("15"), Some(15));
        assert_eq!(parse_signal("SIGRTMIN"), Some(34));
        assert_eq!(parse_signal("SIGRTMIN+3"), Some(37));
        assert_eq!(parse_signal("RTMAX-1"), Some(63));
        assert_eq!(parse_signal("SIGWINCH"), Some(28));
        for bad in ["", "0", "65", "-1", "SIGFOO", "RTMIN+31", "RTMIN+", "SIG"] {
            assert_eq!(parse_signal(bad), None, "{bad}");
        }
    }

    #[test]
    fn ulimits_parse_like_docker() {
        assert_eq!(
            Ulimit::parse("nofile=1024:2048"),
            Ok(Ulimit {
                name: "nofile".into(),
                soft: 1024,
                hard: 2048
            })
        );
        let nproc = Ulimit::parse("nproc=65535").unwrap();
        assert_eq!((nproc.soft, nproc.hard), (65535, 65535));
        assert_eq!(nproc.check(), Ok(()));
        assert!(Ulimit::parse("nofile").is_err());
        assert!(Ulimit::parse("nofile=a").is_err());
        let unknown = Ulimit::parse("files=1").unwrap();
        assert!(unknown.check().is_err());
        let inverted = Ulimit::parse("nofile=10:5").unwrap();
        assert_eq!(
            inverted.check(),
            Err("ulimit nofile: the soft limit 10 is above the hard limit 5".into())
        );
        let unlimited = Ulimit::parse("memlock=-1:-1").unwrap();
        assert_eq!(unlimited.check(), Ok(()));
    }

    #[test]
    fn extra_hosts_parse_like_docker() {
        let h = ExtraHost::parse("myhost:10.1.2.3").unwrap();
        assert_eq!((h.name.as_str(), h.ip.as_str()), ("myhost", "10.1.2.3"));
        assert_eq!(h.check(), Ok(()));
        let v6 = ExtraHost::parse("v6=::1").unwrap();
        assert_eq!(v6.ip, "::1");
        assert_eq!(v6.check(), Ok(()));
        assert_eq!(v6.engine_form(), "v6:::1");
        assert!(ExtraHost::parse("nohost").is_err());
        let bad = ExtraHost::parse("h:not-an-ip").unwrap();
        assert!(bad.check().is_err());
    }

    #[test]
    fn users_capabilities_and_sysctls() {
        for good in ["1000", "1000:1000", "www-data", "app:staff"] {
            assert!(valid_user(good), "{good}");
        }
        for bad in ["", ":1", "1:", "a b", "1:2:3"] {
            assert!(!valid_user(bad), "{bad}");
        }
        for good in ["ALL", "all", "NET_ADMIN", "cap_net_raw", "CAP_SYS_ADMIN"] {
            assert!(valid_capability(good), "{good}");
        }
        assert!(!valid_capability("NET_FOO"));
        assert!(valid_sysctl("net.ipv4.ip_unprivileged_port_start"));
        assert!(!valid_sysctl("net ipv4"));
        assert!(!valid_sysctl(""));
        assert_eq!(Propagation::parse("rslave"), Ok(Propagation::Rslave));
        assert!(Propagation::parse("slavish").is_err());
    }
}

//! The flags of `service create` that say how a task runs beyond its
//! command, Docker's names for them (`--hostname`, `--user`, `--workdir`,
//! `--stop-signal`, `--read-only`, `--sysctl`, `--cap-add`, `--cap-drop`,
//! `--ulimit`, `--dns`, `--dns-search`, `--log-driver`, `--log-opt`), and
//! `--add-host` for Docker's `--host` (which names the managers here).
//! They are read here; which apply to a process task is the spec's rule,
//! checked with the rest ([`super::flags::validate`]).

use anyhow::{anyhow, bail, Result};
use clap::Args;

use flotilla_types::{ExtraHost, LogDriver, TaskTemplate, Ulimit};

#[derive(Debug, Default, Args)]
pub struct RunFlags {
    /// A container's host name; may use templates such as
    /// '{{.Service.Name}}-{{.Task.Slot}}', as environment values and mount
    /// sources may
    #[arg(long)]
    pub hostname: Option<String>,
    /// The user the tasks run as: USER[:GROUP], names or numbers (a process
    /// task changes user only when the daemon runs as root)
    #[arg(short = 'u', long)]
    pub user: Option<String>,
    /// The directory the tasks start in (absolute)
    #[arg(short = 'w', long)]
    pub workdir: Option<String>,
    /// The signal that asks a task to stop, e.g. SIGINT [default: SIGTERM]
    #[arg(long)]
    pub stop_signal: Option<String>,
    /// Mount a container's root file system read-only
    #[arg(long)]
    pub read_only: bool,
    /// A container's namespaced kernel parameter, NAME=VALUE
    #[arg(long = "sysctl", value_name = "NAME=VALUE")]
    pub sysctl: Vec<String>,
    /// Add a capability to a container (ALL for every one)
    #[arg(long = "cap-add", value_name = "CAP")]
    pub cap_add: Vec<String>,
    /// Drop a capability from a container (ALL for every one)
    #[arg(long = "cap-drop", value_name = "CAP")]
    pub cap_drop: Vec<String>,
    /// A resource limit of a container's processes, NAME=SOFT[:HARD]
    #[arg(long = "ulimit", value_name = "NAME=SOFT[:HARD]")]
    pub ulimit: Vec<String>,
    /// A line of a container's /etc/hosts, NAME:IP (Docker's --host)
    #[arg(long = "add-host", value_name = "NAME:IP")]
    pub add_host: Vec<String>,
    /// A container's DNS server (on networks: after the node's resolver)
    #[arg(long = "dns", value_name = "IP")]
    pub dns: Vec<String>,
    /// A container's DNS search domain
    #[arg(long = "dns-search", value_name = "DOMAIN")]
    pub dns_search: Vec<String>,
    /// The engine's log driver for the containers, e.g. json-file
    #[arg(long)]
    pub log_driver: Option<String>,
    /// An option of the log driver, KEY=VALUE
    #[arg(long = "log-opt", value_name = "KEY=VALUE")]
    pub log_opt: Vec<String>,
}

impl RunFlags {
    /// Puts the flags that were given into `task`.
    pub fn apply(&self, task: &mut TaskTemplate) -> Result<()> {
        if let Some(h) = &self.hostname {
            task.hostname = Some(h.clone());
        }
        if let Some(u) = &self.user {
            task.user = Some(u.clone());
        }
        if let Some(w) = &self.workdir {
            task.working_dir = Some(w.clone());
        }
        if let Some(s) = &self.stop_signal {
            task.stop_signal = Some(s.clone());
        }
        if self.read_only {
            task.read_only = true;
        }
        for item in &self.sysctl {
            let (name, value) = item
                .split_once('=')
                .filter(|(k, _)| !k.is_empty())
                .ok_or_else(|| anyhow!("invalid --sysctl {item:?}: expected NAME=VALUE"))?;
            task.sysctls.insert(name.to_string(), value.to_string());
        }
        task.cap_add.extend(self.cap_add.iter().cloned());
        task.cap_drop.extend(self.cap_drop.iter().cloned());
        for u in &self.ulimit {
            task.ulimits
                .push(Ulimit::parse(u).map_err(|e| anyhow!("--ulimit: {e}"))?);
        }
        for h in &self.add_host {
            task.extra_hosts
                .push(ExtraHost::parse(h).map_err(|e| anyhow!("--add-host: {e}"))?);
        }
        task.dns.extend(self.dns.iter().cloned());
        task.dns_search.extend(self.dns_search.iter().cloned());
        if self.log_driver.is_some() || !self.log_opt.is_empty() {
            let mut driver = LogDriver {
                name: self.log_driver.clone().unwrap_or_default(),
                options: Default::default(),
            };
            for item in &self.log_opt {
                let Some((k, v)) = item.split_once('=').filter(|(k, _)| !k.is_empty()) else {
                    bail!("invalid --log-opt {item:?}: expected KEY=VALUE");
                };
                driver.options.insert(k.to_string(), v.to_string());
            }
            task.logging = Some(driver);
        }
        Ok(())
    }
}

/// The same keys on `service update`, in Docker's update spelling: a
/// value replaces, `-add` adds (or replaces the entry of the same name),
/// `-rm` removes by name.
#[derive(Debug, Default, Args)]
pub struct UpdateRunFlags {
    /// A container's new host name (templates allowed); "" removes it
    #[arg(long)]
    pub hostname: Option<String>,
    /// The user the tasks run as, USER[:GROUP]; "" for the image's or the
    /// daemon's
    #[arg(long)]
    pub user: Option<String>,
    /// The directory the tasks start in; "" for the default
    #[arg(long)]
    pub workdir: Option<String>,
    /// The signal that asks a task to stop; "" for SIGTERM
    #[arg(long)]
    pub stop_signal: Option<String>,
    /// Mount a container's root file system read-only (true or false)
    #[arg(long, value_name = "BOOL", num_args = 0..=1, default_missing_value = "true")]
    pub read_only: Option<bool>,
    /// Add or change a kernel parameter, NAME=VALUE
    #[arg(long = "sysctl-add", value_name = "NAME=VALUE")]
    pub sysctl_add: Vec<String>,
    /// Remove a kernel parameter
    #[arg(long = "sysctl-rm", value_name = "NAME")]
    pub sysctl_rm: Vec<String>,
    /// Add a capability (and stop dropping it)
    #[arg(long = "cap-add", value_name = "CAP")]
    pub cap_add: Vec<String>,
    /// Drop a capability (and stop adding it)
    #[arg(long = "cap-drop", value_name = "CAP")]
    pub cap_drop: Vec<String>,
    /// Add or change a resource limit, NAME=SOFT[:HARD]
    #[arg(long = "ulimit-add", value_name = "NAME=SOFT[:HARD]")]
    pub ulimit_add: Vec<String>,
    /// Remove a resource limit
    #[arg(long = "ulimit-rm", value_name = "NAME")]
    pub ulimit_rm: Vec<String>,
    /// Add or change a line of /etc/hosts, NAME:IP
    #[arg(long = "host-add", value_name = "NAME:IP")]
    pub host_add: Vec<String>,
    /// Remove the lines of /etc/hosts of a name
    #[arg(long = "host-rm", value_name = "NAME")]
    pub host_rm: Vec<String>,
    /// Add a DNS server
    #[arg(long = "dns-add", value_name = "IP")]
    pub dns_add: Vec<String>,
    /// Remove a DNS server
    #[arg(long = "dns-rm", value_name = "IP")]
    pub dns_rm: Vec<String>,
    /// Add a DNS search domain
    #[arg(long = "dns-search-add", value_name = "DOMAIN")]
    pub dns_search_add: Vec<String>,
    /// Remove a DNS search domain
    #[arg(long = "dns-search-rm", value_name = "DOMAIN")]
    pub dns_search_rm: Vec<String>,
    /// The engine's log driver; "" for the engine's default
    #[arg(long)]
    pub log_driver: Option<String>,
    /// Add or change an option of the log driver, KEY=VALUE
    #[arg(long = "log-opt", value_name = "KEY=VALUE")]
    pub log_opt: Vec<String>,
}

/// `Some(text)`, or `None` for "" (the flag that unsets a value).
fn set_or_clear(value: &str) -> Option<String> {
    (!value.is_empty()).then(|| value.to_string())
}

impl UpdateRunFlags {
    /// Changes `task` as the flags that were given say: removals first,
    /// then additions.
    pub fn apply(&self, task: &mut TaskTemplate) -> Result<()> {
        if let Some(h) = &self.hostname {
            task.hostname = set_or_clear(h);
        }
        if let Some(u) = &self.user {
            task.user = set_or_clear(u);
        }
        if let Some(w) = &self.workdir {
            task.working_dir = set_or_clear(w);
        }
        if let Some(s) = &self.stop_signal {
            task.stop_signal = set_or_clear(s);
        }
        if let Some(r) = self.read_only {
            task.read_only = r;
        }
        for name in &self.sysctl_rm {
            task.sysctls.remove(name);
        }
        for item in &self.sysctl_add {
            let (name, value) = item
                .split_once('=')
                .filter(|(k, _)| !k.is_empty())
                .ok_or_else(|| anyhow!("invalid --sysctl-add {item:?}: expected NAME=VALUE"))?;
            task.sysctls.insert(name.to_string(), value.to_string());
        }
        for cap in &self.cap_add {
            task.cap_drop.retain(|c| !c.eq_ignore_ascii_case(cap));
            if !task.cap_add.iter().any(|c| c.eq_ignore_ascii_case(cap)) {
                task.cap_add.push(cap.clone());
            }
        }
        for cap in &self.cap_drop {
            task.cap_add.retain(|c| !c.eq_ignore_ascii_case(cap));
            if !task.cap_drop.iter().any(|c| c.eq_ignore_ascii_case(cap)) {
                task.cap_drop.push(cap.clone());
            }
        }
        task.ulimits.retain(|u| !self.ulimit_rm.contains(&u.name));
        for item in &self.ulimit_add {
            let u = Ulimit::parse(item).map_err(|e| anyhow!("--ulimit-add: {e}"))?;
            task.ulimits.retain(|x| x.name != u.name);
            task.ulimits.push(u);
        }
        task.extra_hosts.retain(|h| !self.host_rm.contains(&h.name));
        for item in &self.host_add {
            let h = ExtraHost::parse(item).map_err(|e| anyhow!("--host-add: {e}"))?;
            task.extra_hosts.retain(|x| x.name != h.name);
            task.extra_hosts.push(h);
        }
        let edit = |list: &mut Vec<String>, rm: &[String], add: &[String]| {
            list.retain(|x| !rm.contains(x));
            for a in add {
                if !list.contains(a) {
                    list.push(a.clone());
                }
            }
        };
        edit(&mut task.dns, &self.dns_rm, &self.dns_add);
        edit(
            &mut task.dns_search,
            &self.dns_search_rm,
            &self.dns_search_add,
        );
        if let Some(driver) = &self.log_driver {
            task.logging = set_or_clear(driver).map(|name| LogDriver {
                name,
                options: Default::default(),
            });
        }
        for item in &self.log_opt {
            let Some((k, v)) = item.split_once('=').filter(|(k, _)| !k.is_empty()) else {
                bail!("invalid --log-opt {item:?}: expected KEY=VALUE");
            };
            task.logging
                .get_or_insert_with(|| LogDriver {
                    name: String::new(),
                    options: Default::default(),
                })
                .options
                .insert(k.to_string(), v.to_string());
        }
        Ok(())
    }
}

/// The flag that sets a field of the task template this module reads, or
/// names a template ([`flotilla_types::SpecError::field`]).
pub fn flag_of(field: &str) -> Option<&'static str> {
    Some(match field {
        "task.hostname" => "--hostname",
        "task.read_only" => "--read-only",
        "task.sysctls" => "--sysctl",
        "task.cap_add" => "--cap-add",
        "task.cap_drop" => "--cap-drop",
        "task.ulimits" => "--ulimit",
        "task.extra_hosts" => "--add-host",
        "task.dns" => "--dns",
        "task.dns_search" => "--dns-search",
        "task.logging" => "--log-driver",
        "task.env" => "--env",
        "task.mounts" => "--mount",
        _ => return None,
    })
}

#[cfg(test)]
mod tests {
    use super::super::flags::spec_from_args;
    use super::super::{Cli, Command, CreateArgs, ServiceCommand};
    use clap::Parser as _;

    fn create(flags: &[&str], command: &[&str]) -> Box<CreateArgs> {
        let mut argv = vec!["flotilla", "service", "create", "--name", "web"];
        argv.extend(flags);
        argv.push("--");
        argv.extend(command);
        match Cli::try_parse_from(argv) {
            Ok(Cli {
                command: Command::Service(ServiceCommand::Create(a)),
                ..
            }) => a,
            other => panic!("not a service create: {other:?}"),
        }
    }

    fn error(flags: &[&str], command: &[&str]) -> String {
        spec_from_args(&create(flags, command))
            .err()
            .map(|e| e.to_string())
            .unwrap_or_default()
    }

    #[test]
    fn update_flags_replace_add_and_remove() {
        use super::UpdateRunFlags;
        use flotilla_types::TaskTemplate;
        let mut task = TaskTemplate::default();
        let create = create(
            &[
                "--image",
                "busybox",
                "--hostname",
                "h",
                "--sysctl",
                "a.b=1",
                "--sysctl",
                "c.d=2",
                "--cap-drop",
                "ALL",
                "--ulimit",
                "nofile=1:2",
                "--add-host",
                "x:10.0.0.1",
                "--dns",
                "10.0.0.53",
            ],
            &[],
        );
        create.run.apply(&mut task).expect("create flags");
        let argv = [
            "flotilla",
            "service",
            "update",
            "--hostname",
            "",
            "--sysctl-rm",
            "a.b",
            "--sysctl-add",
            "c.d=3",
            "--cap-add",
            "ALL",
            "--ulimit-add",
            "nofile=5:6",
            "--host-rm",
            "x",
            "--host-add",
            "y:10.0.0.2",
            "--dns-rm",
            "10.0.0.53",
            "--dns-add",
            "10.0.0.54",
            "--read-only",
            "--log-opt",
            "max-size=1m",
            "web",
        ];
        let update: UpdateRunFlags = match Cli::try_parse_from(argv) {
            Ok(Cli {
                command: Command::Service(ServiceCommand::Update(a)),
                ..
            }) => a.run,
            other => panic!("not a service update: {other:?}"),
        };
        update.apply(&mut task).expect("update flags");
        assert_eq!(task.hostname, None, "\"\" removes it");
        assert_eq!(
            task.sysctls.into_iter().collect::<Vec<_>>(),
            vec![("c.d".to_string(), "3".to_string())]
        );
        assert!(task.cap_drop.is_empty() && task.cap_add == ["ALL"]);
        assert_eq!((task.ulimits.len(), task.ulimits[0].soft), (1, 5));
        assert_eq!(task.extra_hosts.len(), 1);
        assert_eq!(task.extra_hosts[0].name, "y");
        assert_eq!(task.dns, ["10.0.0.54"]);
        assert!(task.read_only);
        assert_eq!(
            task.logging.map(|l| l.options.get("max-size").cloned()),
            Some(Some("1m".to_string()))
        );
    }

    #[test]
    fn run_flags_go_into_the_template() {
        let args = create(
            &[
                "--image",
                "busybox",
                "--hostname",
                "{{.Service.Name}}-{{.Task.Slot}}",
                "-u",
                "1000:1000",
                "-w",
                "/tmp",
                "--stop-signal",
                "SIGINT",
                "--read-only",
                "--sysctl",
                "net.ipv4.ip_unprivileged_port_start=0",
                "--cap-add",
                "NET_ADMIN",
                "--cap-drop",
                "ALL",
                "--ulimit",
                "nofile=1024:2048",
                "--add-host",
                "myhost:10.1.2.3",
                "--dns",
                "10.0.0.53",
                "--dns-search",
                "example.org",
                "--log-driver",
                "json-file",
                "--log-opt",
                "max-size=10m",
            ],
            &[],
        );
        let spec = spec_from_args(&args).expect("spec");
        let t = &spec.task;
        assert_eq!(
            t.hostname.as_deref(),
            Some("{{.Service.Name}}-{{.Task.Slot}}")
        );
        assert_eq!(t.user.as_deref(), Some("1000:1000"));
        assert_eq!(t.working_dir.as_deref(), Some("/tmp"));
        assert_eq!(t.stop_signal.as_deref(), Some("SIGINT"));
        assert!(t.read_only);
        assert_eq!(t.sysctls["net.ipv4.ip_unprivileged_port_start"], "0");
        assert_eq!((t.cap_add.len(), t.cap_drop.len()), (1, 1));
        assert_eq!(
            (
                t.ulimits[0].name.as_str(),
                t.ulimits[0].soft,
                t.ulimits[0].hard
            ),
            ("nofile", 1024, 2048)
        );
        assert_eq!(t.extra_hosts[0].engine_form(), "myhost:10.1.2.3");
        assert_eq!(t.dns, ["10.0.0.53"]);
        assert_eq!(t.dns_search, ["example.org"]);
        let log = t.logging.as_ref().expect("logging");
        assert_eq!(
            (log.name.as_str(), log.options["max-size"].as_str()),
            ("json-file", "10m")
        );
    }

    #[test]
    fn a_process_takes_user_workdir_and_stop_signal() {
        let spec = spec_from_args(&create(
            &[
                "--user",
                "nobody",
                "--workdir",
                "/tmp",
                "--stop-signal",
                "2",
            ],
            &["sleep", "10"],
        ))
        .expect("spec");
        assert_eq!(spec.task.user.as_deref(), Some("nobody"));
        assert_eq!(spec.task.stop_signal.as_deref(), Some("2"));
    }

    #[test]
    fn mounts_take_bind_propagation_and_ignore_consistency() {
        use super::super::flags::parse_mount;
        let m =
            parse_mount("type=bind,src=/srv,dst=/data,bind-propagation=rslave,consistency=cached")
                .expect("mount");
        assert_eq!(m.propagation, Some(flotilla_types::Propagation::Rslave));
        assert!(
            parse_mount("type=bind,src=/srv,dst=/data,bind-propagation=up")
                .expect_err("bad")
                .contains("invalid propagation \"up\"")
        );
        assert_eq!(
            error(
                &[
                    "--image",
                    "b",
                    "--mount",
                    "type=volume,src=v,dst=/v,bind-propagation=rslave"
                ],
                &[]
            ),
            "--mount: mount /v: propagation applies to bind mounts only"
        );
    }

    #[test]
    fn bad_run_flags_name_the_flag() {
        assert_eq!(
            error(&["--read-only"], &["true"]),
            "--read-only applies to docker tasks only (give --image)"
        );
        assert_eq!(
            error(&["--add-host", "h:1.2.3.4"], &["true"]),
            "--add-host applies to docker tasks only (give --image)"
        );
        let image = ["--image", "busybox"];
        let with = |more: &[&str]| {
            let mut flags = image.to_vec();
            flags.extend(more);
            error(&flags, &[])
        };
        assert_eq!(
            with(&["--stop-signal", "SIGNOPE"]),
            "--stop-signal: invalid stop signal \"SIGNOPE\": expected a name such as SIGINT, or a number from 1 to 64"
        );
        assert_eq!(
            with(&["--workdir", "tmp"]),
            "--workdir: working directory \"tmp\" must be an absolute path"
        );
        assert!(with(&["--hostname", "{{.Task.Nope}}"])
            .starts_with("--hostname: hostname: unknown placeholder {{.Task.Nope}}"));
        assert_eq!(
            with(&["--sysctl", "novalue"]),
            "invalid --sysctl \"novalue\": expected NAME=VALUE"
        );
        assert!(with(&["--ulimit", "nofile"]).starts_with("--ulimit: invalid ulimit \"nofile\""));
        assert_eq!(
            with(&["--ulimit", "nofile=3:2"]),
            "--ulimit: ulimit nofile: the soft limit 3 is above the hard limit 2"
        );
        assert_eq!(
            with(&["--add-host", "h:nope"]),
            "--add-host: host h: \"nope\" is not an IP address"
        );
        assert_eq!(
            with(&["--cap-drop", "NOPE"]),
            "--cap-drop: unknown capability \"NOPE\": expected ALL or a Linux capability, such as NET_ADMIN"
        );
        assert_eq!(
            with(&["--dns", "dns.example"]),
            "--dns: invalid DNS server \"dns.example\": expected an IP address"
        );
        assert_eq!(
            with(&["--log-opt", "x"]),
            "invalid --log-opt \"x\": expected KEY=VALUE"
        );
        assert!(with(&["--user", "a b"]).starts_with("--user: invalid user"));
    }
}

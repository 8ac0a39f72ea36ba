//! The cluster under test: managers and workers, each a daemon on its own
//! network-namespace host, and the calls the suite makes of it outside the
//! recorded history (leader lookup, convergence, end state).

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use anyhow::{anyhow, bail, Context, Result};
use flotilla_api::client::Client;
use flotilla_api::model::ServiceView;
use flotilla_faults::{EndState, Seen};
use flotilla_testkit::net::{Host, Net};
use flotilla_testkit::{wait_until, Daemon};
use flotilla_types::{DesiredState, ServiceMode, ServiceSpec, TaskState, TaskTemplate};

/// The label the register services carry their value in.
pub const REG_LABEL: &str = "faults.reg";
const PORT: u16 = 4280;

pub fn bin() -> &'static Path {
    Path::new(env!("CARGO_BIN_EXE_flotilla"))
}

/// A spec of the suite: `sleep` tasks, and the register label if given.
pub fn spec(name: &str, replicas: u64, label: Option<&str>) -> ServiceSpec {
    ServiceSpec {
        name: name.into(),
        mode: ServiceMode::Replicated { replicas },
        labels: label
            .map(|l| {
                [(REG_LABEL.to_string(), l.to_string())]
                    .into_iter()
                    .collect()
            })
            .unwrap_or_default(),
        task: TaskTemplate {
            command: vec!["sleep".into(), "100000".into()],
            ..Default::default()
        },
        ..Default::default()
    }
}

/// What a read of a service shows the checker.
pub fn seen(v: &ServiceView) -> Seen {
    Seen {
        label: v.spec.labels.get(REG_LABEL).cloned(),
        replicas: match v.spec.mode {
            ServiceMode::Replicated { replicas } | ServiceMode::ReplicatedJob { replicas, .. } => {
                replicas
            }
            ServiceMode::Global | ServiceMode::GlobalJob => 0,
        },
    }
}

pub struct Node {
    pub name: String,
    pub host: Host,
    pub daemon: Daemon,
    pub manager: bool,
    /// Killed (not running) or paused by the nemesis.
    pub down: bool,
    pub paused: bool,
}

pub struct Cluster {
    // Dropped last: the daemons go first, then their namespaces.
    pub nodes: Vec<Node>,
    pub net: Net,
    pub rt: tokio::runtime::Runtime,
}

impl Cluster {
    /// Starts `managers` managers and `workers` workers, each on its own
    /// host; `env` is given to every daemon (the failpoint).
    pub fn start(managers: usize, workers: usize, extra: &[&str]) -> Result<Cluster> {
        let mut net = Net::new()?;
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()?;
        let mut nodes = Vec::new();
        for i in 0..managers + workers {
            let manager = i < managers;
            let name = if manager {
                format!("m{}", i + 1)
            } else {
                format!("w{}", i + 1 - managers)
            };
            let host = net.add_host()?;
            let mut args = vec!["--name", &name];
            args.extend_from_slice(extra);
            let daemon = Daemon::start_on(bin(), &host, PORT, &args)?;
            nodes.push(Node {
                name,
                host,
                daemon,
                manager,
                down: false,
                paused: false,
            });
        }
        let first = &nodes[0].daemon;
        first.ok(&["init"])?;
        let addr = format!("{}:{PORT}", nodes[0].host.addr);
        let token = |role: &str| -> Result<String> {
            Ok(first
                .ok(&["join-token", role, "-q"])?
                .stdout
                .trim()
                .to_string())
        };
        let (mt, wt) = (token("manager")?, token("worker")?);
        for n in &nodes[1..] {
            let t = if n.manager { &mt } else { &wt };
            n.daemon
                .ok(&["join", "--token", t, &addr])
                .with_context(|| format!("joining {}", n.name))?;
        }
        Ok(Cluster { nodes, net, rt })
    }

    pub fn socket(&self, i: usize) -> PathBuf {
        self.nodes[i].daemon.data_dir().join("flotilla.sock")
    }

    pub fn manager_sockets(&self) -> Vec<PathBuf> {
        (0..self.nodes.len())
            .filter(|&i| self.nodes[i].manager)
            .map(|i| self.socket(i))
            .collect()
    }

    pub fn client(&self, i: usize) -> Client {
        Client::unix(self.socket(i)).with_timeout(Duration::from_secs(3))
    }

    /// The index of the manager that says it leads, if one answers so.
    pub fn leader(&self) -> Option<usize> {
        (0..self.nodes.len())
            .filter(|&i| self.nodes[i].manager && !self.nodes[i].down && !self.nodes[i].paused)
            .find(|&i| {
                self.rt
                    .block_on(self.client(i).info())
                    .map(|info| info.is_leader)
                    .unwrap_or(false)
            })
    }

    /// One linearizable list of the services (no stale-read warning), from
    /// any manager.
    pub fn services(&self) -> Result<Vec<ServiceView>> {
        let mut last = String::from("no manager answered");
        for i in (0..self.nodes.len()).filter(|&i| self.nodes[i].manager) {
            let c = self.client(i);
            match self.rt.block_on(c.services()) {
                Ok(list) => {
                    let w = c.take_warnings();
                    if w.is_empty() {
                        return Ok(list);
                    }
                    last = format!("{}: {}", self.nodes[i].name, w.join("; "));
                }
                Err(e) => last = format!("{}: {e}", self.nodes[i].name),
            }
        }
        bail!("no linearizable list of services: {last}")
    }

    /// The end state, for the checker.
    pub fn end_state(&self) -> Result<EndState> {
        let list = wait_until(
            "a linearizable list of the services",
            Duration::from_secs(15),
            || Ok(self.services().ok()),
        )?;
        Ok(list.iter().map(|v| (v.name.clone(), seen(v))).collect())
    }

    /// Services not (yet) at their desired replicas: "name: 1 of 2
    /// running" each; empty when the cluster has converged.
    pub fn unconverged(&self) -> Result<Vec<String>> {
        let list = self.services()?;
        let mut out = Vec::new();
        for v in list {
            let want = seen(&v).replicas;
            let leader = self.leader().ok_or_else(|| anyhow!("no leader"))?;
            let tasks = self.rt.block_on(self.client(leader).tasks(&v.name))?;
            let running = tasks
                .iter()
                .filter(|t| {
                    t.current
                        && t.desired_state == DesiredState::Running
                        && t.state == TaskState::Running
                })
                .count() as u64;
            if running != want {
                out.push(format!("{}: {running} of {want} running", v.name));
            }
        }
        Ok(out)
    }

    /// Waits until every service runs its desired replicas; returns how
    /// long it took.
    pub fn converge(&self, timeout: Duration) -> Result<Duration> {
        let t0 = Instant::now();
        wait_until(
            "every service at its desired replicas",
            timeout,
            || match self.unconverged() {
                Ok(list) if list.is_empty() => Ok(Some(())),
                Ok(list) => Err(anyhow!("{}", list.join(", "))),
                Err(e) => Err(e),
            },
        )?;
        Ok(t0.elapsed())
    }
}

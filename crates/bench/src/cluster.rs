//! A multi-node cluster on this machine: one `flotilla daemon` process per
//! node, each with its own data dir and its own loopback address, set up
//! through the CLI (`init`, `join-token`, `join`) and always cleaned up.
//!
//! Every node gets its own environment mark (`FLOTILLA_BENCH_MARK`), kept
//! when the node is killed and started again, so that its task processes,
//! including those a SIGKILLed daemon left behind, are found at cleanup.

use std::fs::OpenOptions;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{anyhow, bail, Context, Result};
use flotilla_api::model::{NodeView, Reachability, TaskView};
use flotilla_api::Client;

use crate::procs::{self, MARK_VAR};

/// How long a daemon may take to answer on its socket after starting.
const READY_DEADLINE: Duration = Duration::from_secs(20);
/// How long one CLI invocation may take.
pub const CLI_DEADLINE: Duration = Duration::from_secs(30);
/// How long the daemons may take to exit after SIGTERM before SIGKILL.
const TERM_DEADLINE: Duration = Duration::from_secs(20);
/// Between polls of a condition.
const POLL: Duration = Duration::from_millis(50);
/// Typed-client calls: a daemon that does not answer within this is
/// treated as not answering (the cluster may be electing a leader).
const CLIENT_TIMEOUT: Duration = Duration::from_secs(5);
/// Environment variables of the CLI that would make it talk to something
/// else than the local daemon of the data dir it is given.
const CLI_ENV_REMOVE: [&str; 3] = ["FLOTILLA_HOST", "FLOTILLA_TLS_DIR", "FLOTILLA_DATA_DIR"];

/// One node: a daemon process (while it runs) and its data dir.
pub struct Node {
    pub name: String,
    pub manager: bool,
    /// Cluster address, `127.0.0.N:PORT`.
    pub addr: String,
    /// Client API address (for daemons that serve one), `127.0.0.N:PORT+1`.
    api_addr: String,
    pub data_dir: PathBuf,
    pub log_path: PathBuf,
    pub mark: String,
    child: Option<Child>,
    pub client: Client,
    /// Extra `flotilla daemon` arguments (the layout's).
    daemon_args: Vec<String>,
}

impl Node {
    /// Node `i` of `layout`, in `dir`, on 127.0.0.(first_ip + i); checks
    /// that its addresses are free. Not started.
    fn new(dir: &Path, layout: &Layout, i: usize, name: String, manager: bool) -> Result<Node> {
        let ip = format!("127.0.0.{}", usize::from(layout.first_ip) + i);
        let addr = format!("{ip}:{}", layout.port);
        let api_addr = format!("{ip}:{}", layout.port.saturating_add(1));
        for a in [&addr, &api_addr] {
            std::net::TcpListener::bind(a.as_str())
                .with_context(|| format!("{a} (for {name}) is not free; pick another --port"))?;
        }
        let node_dir = dir.join(&name);
        std::fs::create_dir_all(&node_dir)
            .with_context(|| format!("creating {}", node_dir.display()))?;
        let data_dir = node_dir.join("data");
        Ok(Node {
            client: Client::unix(data_dir.join("flotilla.sock")).with_timeout(CLIENT_TIMEOUT),
            log_path: node_dir.join("daemon.log"),
            data_dir,
            mark: procs::new_mark(&format!("failover-{name}")),
            name,
            manager,
            addr,
            api_addr,
            child: None,
            daemon_args: layout.daemon_args.clone(),
        })
    }

    /// The daemon's pid while it runs.
    pub fn pid(&self) -> Option<u32> {
        self.child.as_ref().map(Child::id)
    }

    pub fn is_running(&self) -> bool {
        self.child.is_some()
    }

    /// Task processes of this node (marked, not the daemon) alive now.
    pub fn task_pids(&self) -> Vec<u32> {
        procs::marked_pids(&self.mark, self.pid())
    }

    /// The last `n` lines of the daemon's log.
    pub fn log_tail(&self, n: usize) -> String {
        let text = std::fs::read_to_string(&self.log_path).unwrap_or_default();
        let lines: Vec<&str> = text.lines().collect();
        lines[lines.len().saturating_sub(n)..].join("\n")
    }

    fn with_log(&self, e: anyhow::Error) -> anyhow::Error {
        let tail = self.log_tail(10);
        if tail.is_empty() {
            e
        } else {
            e.context(format!(
                "log of {} ({}):\n{tail}",
                self.name,
                self.log_path.display()
            ))
        }
    }

    /// Starts the daemon on the node's data dir and address; the log is
    /// appended to, so that it covers every life of the node.
    fn spawn(&mut self, flotilla: &Path) -> Result<()> {
        if self.child.is_some() {
            bail!("{} is already running", self.name);
        }
        let log = OpenOptions::new()
            .create(true)
            .append(true)
            .open(&self.log_path)
            .with_context(|| format!("opening {}", self.log_path.display()))?;
        let log_err = log
            .try_clone()
            .with_context(|| format!("duplicating {}", self.log_path.display()))?;
        let mut cmd = Command::new(flotilla);
        cmd.arg("--data-dir")
            .arg(&self.data_dir)
            .args(["daemon", "--name", &self.name, "--listen", &self.addr])
            .args(&self.daemon_args)
            .env(MARK_VAR, &self.mark)
            // Daemons that serve a client API port (default 0.0.0.0:4281)
            // would collide on one machine; older daemons ignore this.
            .env("FLOTILLA_API_LISTEN", &self.api_addr)
            .env("NO_COLOR", "1")
            .stdin(Stdio::null())
            .stdout(log)
            .stderr(log_err);
        for var in CLI_ENV_REMOVE {
            cmd.env_remove(var);
        }
        let child = cmd.spawn().with_context(|| {
            format!(
                "cannot start {} daemon for {}",
                flotilla.display(),
                self.name
            )
        })?;
        self.child = Some(child);
        Ok(())
    }

    /// Waits until the daemon answers on its socket.
    async fn wait_ready(&mut self) -> Result<Duration> {
        let start = Instant::now();
        loop {
            if let Some(child) = self.child.as_mut() {
                if let Ok(Some(status)) = child.try_wait() {
                    self.child = None;
                    return Err(self.with_log(anyhow!(
                        "the daemon of {} exited before serving its API ({status})",
                        self.name
                    )));
                }
            }
            match self.client.info().await {
                Ok(_) => return Ok(start.elapsed()),
                Err(e) if start.elapsed() >= READY_DEADLINE => {
                    return Err(self.with_log(anyhow!(
                        "timed out after {READY_DEADLINE:?} waiting for the daemon of {} to answer on {}: {e}",
                        self.name,
                        self.client.socket().display()
                    )))
                }
                Err(_) => tokio::time::sleep(Duration::from_millis(20)).await,
            }
        }
    }

    /// SIGKILLs the daemon (not its tasks) and reaps it.
    fn kill9(&mut self) -> Result<()> {
        let mut child = self
            .child
            .take()
            .ok_or_else(|| anyhow!("{} is not running", self.name))?;
        child
            .kill()
            .with_context(|| format!("SIGKILL to the daemon of {}", self.name))?;
        let deadline = Duration::from_secs(10);
        if !procs::wait_child(&mut child, deadline) {
            bail!(
                "the daemon of {} (pid {}) had not exited {deadline:?} after SIGKILL",
                self.name,
                child.id()
            );
        }
        Ok(())
    }
}

/// Shape of the cluster.
#[derive(Debug, Clone)]
pub struct Layout {
    pub managers: usize,
    pub workers: usize,
    /// Where to copy the daemons' logs when the cluster stops (into a
    /// subdirectory named like the cluster's temporary directory).
    pub keep_logs: Option<PathBuf>,
    /// The first node gets 127.0.0.<first_ip>, the next one more, ...
    pub first_ip: u8,
    /// Cluster port of every node (each on its own address); the client
    /// API port is this plus one.
    pub port: u16,
    /// Extra arguments of every `flotilla daemon` (e.g. `--snapshot-every`).
    pub daemon_args: Vec<String>,
}

/// The running cluster. Dropping it stops every daemon and kills every
/// marked process, then removes the data dirs.
pub struct Cluster {
    flotilla: PathBuf,
    layout: Layout,
    pub nodes: Vec<Node>,
    keep_logs: Option<PathBuf>,
    cleaned: bool,
    // Dropped last: the daemons must be dead before their directories go.
    _dir: tempfile::TempDir,
}

/// What `node ls` on one manager says, for health checks and errors.
fn describe(nodes: &[NodeView]) -> String {
    let mut parts: Vec<String> = nodes
        .iter()
        .map(|n| match &n.manager_status {
            Some(m) => format!("{} {}/{}", n.name, n.status, m.as_str()),
            None => format!("{} {}", n.name, n.status),
        })
        .collect();
    parts.sort();
    parts.join(", ")
}

/// CLI arguments for messages, with join tokens left out.
fn shown(args: &[&str]) -> String {
    let mut out = Vec::with_capacity(args.len());
    let mut secret = false;
    for a in args {
        out.push(if secret { "<token>" } else { a });
        secret = *a == "--token";
    }
    out.join(" ")
}

impl Cluster {
    /// Starts the daemons, makes the first node the first manager and
    /// joins the others, managers first, through the CLI. Returns once
    /// every node is ready and the managers agree on one leader.
    pub async fn start(flotilla: &Path, layout: &Layout) -> Result<Cluster> {
        let total = layout.managers + layout.workers;
        if layout.managers == 0 || usize::from(layout.first_ip) + total > 255 {
            bail!("a cluster needs at least one manager and at most 255 addresses");
        }
        let dir = tempfile::Builder::new()
            .prefix("flotilla-bench-failover-")
            .tempdir()
            .context("creating a temporary directory for the cluster")?;
        let mut nodes = Vec::with_capacity(total);
        for i in 0..total {
            let manager = i < layout.managers;
            let name = if manager {
                format!("m{}", i + 1)
            } else {
                format!("w{}", i + 1 - layout.managers)
            };
            nodes.push(Node::new(dir.path(), layout, i, name, manager)?);
        }
        let mut cluster = Cluster {
            flotilla: flotilla.to_path_buf(),
            layout: layout.clone(),
            nodes,
            keep_logs: layout.keep_logs.clone(),
            cleaned: false,
            _dir: dir,
        };
        for node in &mut cluster.nodes {
            node.spawn(flotilla)?;
        }
        for node in &mut cluster.nodes {
            node.wait_ready().await?;
        }
        cluster.cli(0, &["init"]).await?;
        cluster
            .wait_healthy_among(1, Duration::from_secs(20), "the first manager to lead")
            .await?;
        let manager_token = cluster
            .cli(0, &["join-token", "manager", "-q"])
            .await?
            .trim()
            .to_string();
        let worker_token = cluster
            .cli(0, &["join-token", "worker", "-q"])
            .await?
            .trim()
            .to_string();
        if manager_token.is_empty() || worker_token.is_empty() {
            bail!("flotilla join-token -q printed no token");
        }
        let first = cluster.nodes[0].addr.clone();
        for i in 1..total {
            let token = if cluster.nodes[i].manager {
                &manager_token
            } else {
                &worker_token
            };
            cluster
                .cli(i, &["join", "--token", token, &first])
                .await
                .with_context(|| format!("joining {}", cluster.nodes[i].name))?;
            if cluster.nodes[i].manager {
                // One manager at a time: the next join changes the
                // membership again.
                cluster
                    .wait_healthy_among(
                        i + 1,
                        Duration::from_secs(60),
                        "the new manager to be reachable",
                    )
                    .await?;
            }
        }
        cluster
            .wait_healthy(Duration::from_secs(60), "every node to be ready")
            .await?;
        Ok(cluster)
    }

    /// Runs `flotilla --data-dir D ARGS` on node `idx`; returns its stdout,
    /// or fails with its stderr.
    pub async fn cli(&self, idx: usize, args: &[&str]) -> Result<String> {
        let (ok, stdout, stderr) = self.cli_status(idx, args).await?;
        if !ok {
            bail!(
                "flotilla {} on {} failed: {}",
                shown(args),
                self.nodes[idx].name,
                stderr.trim()
            );
        }
        Ok(stdout)
    }

    /// Runs the CLI on node `idx`: (exit 0, stdout, stderr). Fails only if
    /// it cannot run or takes longer than [`CLI_DEADLINE`].
    pub async fn cli_status(&self, idx: usize, args: &[&str]) -> Result<(bool, String, String)> {
        let node = &self.nodes[idx];
        let mut cmd = tokio::process::Command::new(&self.flotilla);
        cmd.arg("--data-dir")
            .arg(&node.data_dir)
            .args(args)
            .stdin(Stdio::null())
            .kill_on_drop(true);
        for var in CLI_ENV_REMOVE {
            cmd.env_remove(var);
        }
        let what = format!("flotilla {} on {}", shown(args), node.name);
        let out = tokio::time::timeout(CLI_DEADLINE, cmd.output())
            .await
            .map_err(|_| anyhow!("timed out after {CLI_DEADLINE:?} waiting for {what}"))?
            .with_context(|| format!("running {what}"))?;
        Ok((
            out.status.success(),
            String::from_utf8_lossy(&out.stdout).into_owned(),
            String::from_utf8_lossy(&out.stderr).into_owned(),
        ))
    }

    /// The running manager that says it leads, if exactly one does.
    pub async fn leader(&self) -> Result<usize> {
        let mut leaders = Vec::new();
        let mut errors = Vec::new();
        for (i, n) in self.nodes.iter().enumerate() {
            if !n.manager || !n.is_running() {
                continue;
            }
            match n.client.info().await {
                Ok(info) if info.is_leader => leaders.push(i),
                Ok(_) => {}
                Err(e) => errors.push(format!("{}: {e}", n.name)),
            }
        }
        match leaders.as_slice() {
            [one] => Ok(*one),
            [] => bail!(
                "no running manager says it leads{}",
                if errors.is_empty() {
                    String::new()
                } else {
                    format!(" ({})", errors.join("; "))
                }
            ),
            many => bail!(
                "{} managers say they lead: {}",
                many.len(),
                many.iter()
                    .map(|i| self.nodes[*i].name.as_str())
                    .collect::<Vec<_>>()
                    .join(", ")
            ),
        }
    }

    /// Waits for the one leader, up to `deadline`.
    pub async fn wait_leader(&self, deadline: Duration) -> Result<usize> {
        let start = Instant::now();
        loop {
            match self.leader().await {
                Ok(i) => return Ok(i),
                Err(e) if start.elapsed() >= deadline => {
                    bail!("timed out after {deadline:?} waiting for one leader: {e:#}")
                }
                Err(_) => tokio::time::sleep(POLL).await,
            }
        }
    }

    /// One check of the first `members` nodes (those that have joined
    /// so far): every running manager among them lists them all, all are
    /// ready, every manager is leader or reachable, and all managers name
    /// the same single leader. Ok gives the leader's name; Err says what is
    /// not yet so.
    async fn healthy_among(&self, members: usize) -> std::result::Result<String, String> {
        let members = &self.nodes[..members.min(self.nodes.len())];
        let mut leader_seen: Option<String> = None;
        for n in members.iter().filter(|n| n.manager) {
            if !n.is_running() {
                return Err(format!("{} is not running", n.name));
            }
            let list = n
                .client
                .nodes()
                .await
                .map_err(|e| format!("node ls on {}: {e}", n.name))?;
            let view = describe(&list);
            for want in members {
                let Some(got) = list.iter().find(|v| v.name == want.name) else {
                    return Err(format!("{} does not list {} ({view})", n.name, want.name));
                };
                if got.status != flotilla_types::NodeState::Ready {
                    return Err(format!(
                        "{} sees {} {} ({view})",
                        n.name, want.name, got.status
                    ));
                }
                if want.manager
                    && !matches!(
                        got.manager_status,
                        Some(Reachability::Leader | Reachability::Reachable)
                    )
                {
                    return Err(format!(
                        "{} sees manager {} {:?} ({view})",
                        n.name, want.name, got.manager_status
                    ));
                }
            }
            let leaders: Vec<&str> = list
                .iter()
                .filter(|v| v.manager_status == Some(Reachability::Leader))
                .map(|v| v.name.as_str())
                .collect();
            let [leader] = leaders.as_slice() else {
                return Err(format!(
                    "{} sees {} leaders ({view})",
                    n.name,
                    leaders.len()
                ));
            };
            match &leader_seen {
                Some(l) if l != leader => {
                    return Err(format!("managers disagree on the leader: {l} and {leader}"))
                }
                _ => leader_seen = Some((*leader).to_string()),
            }
        }
        Ok(leader_seen.unwrap_or_default())
    }

    /// Waits until the whole cluster is healthy (see
    /// [`Cluster::healthy_among`]); returns the leader's name.
    pub async fn wait_healthy(&self, deadline: Duration, what: &str) -> Result<String> {
        self.wait_healthy_among(self.nodes.len(), deadline, what)
            .await
    }

    async fn wait_healthy_among(
        &self,
        members: usize,
        deadline: Duration,
        what: &str,
    ) -> Result<String> {
        let start = Instant::now();
        loop {
            match self.healthy_among(members).await {
                Ok(leader) => return Ok(leader),
                Err(why) if start.elapsed() >= deadline => bail!(
                    "timed out after {deadline:?} waiting for {what} (all nodes ready, all managers reachable, one leader): {why}"
                ),
                Err(_) => tokio::time::sleep(POLL).await,
            }
        }
    }

    /// The tasks of `service` as manager `idx` lists them (`service ps`).
    pub async fn tasks(&self, idx: usize, service: &str) -> Result<Vec<TaskView>> {
        self.nodes[idx]
            .client
            .tasks(service)
            .await
            .map_err(|e| anyhow!("service ps {service} on {}: {e}", self.nodes[idx].name))
    }

    /// SIGKILLs the daemon of node `idx` (its tasks are left running, as
    /// a crashed daemon leaves them).
    pub fn kill(&mut self, idx: usize) -> Result<()> {
        self.nodes[idx].kill9()
    }

    /// Starts the daemon of node `idx` again on the same data dir and
    /// address; returns once it answers on its socket.
    pub async fn restart(&mut self, idx: usize) -> Result<Duration> {
        let flotilla = self.flotilla.clone();
        let node = &mut self.nodes[idx];
        node.spawn(&flotilla)?;
        node.wait_ready().await
    }

    /// Starts one more node on the next address and joins it as a manager
    /// through node 0; returns its index once `join` has returned.
    pub async fn add_manager(&mut self) -> Result<usize> {
        let i = self.nodes.len();
        if usize::from(self.layout.first_ip) + i > 255 {
            bail!("no loopback address left for another node");
        }
        let mut node = Node::new(
            self._dir.path(),
            &self.layout,
            i,
            format!("m{}", i + 1),
            true,
        )?;
        node.spawn(&self.flotilla)?;
        self.nodes.push(node);
        self.nodes[i].wait_ready().await?;
        let token = self
            .cli(0, &["join-token", "manager", "-q"])
            .await?
            .trim()
            .to_string();
        let first = self.nodes[0].addr.clone();
        self.cli(i, &["join", "--token", &token, &first])
            .await
            .with_context(|| format!("joining {}", self.nodes[i].name))?;
        Ok(i)
    }

    fn copy_logs(&self, dir: &Path) -> Result<PathBuf> {
        let name = self
            ._dir
            .path()
            .file_name()
            .map(|n| n.to_os_string())
            .unwrap_or_else(|| "cluster".into());
        let to = dir.join(name);
        std::fs::create_dir_all(&to).with_context(|| format!("creating {}", to.display()))?;
        for node in &self.nodes {
            let dest = to.join(format!("{}.log", node.name));
            if node.log_path.exists() {
                std::fs::copy(&node.log_path, &dest).with_context(|| {
                    format!("copying {} to {}", node.log_path.display(), dest.display())
                })?;
            }
        }
        Ok(to)
    }

    /// Stops every daemon (SIGTERM, SIGKILL after a deadline), then kills
    /// every process still carrying a node's mark. Returns notes on what
    /// had to be forced.
    pub fn shutdown(&mut self) -> Result<String> {
        if self.cleaned {
            return Ok(String::new());
        }
        self.cleaned = true;
        let mut notes = Vec::new();
        for node in &self.nodes {
            if let Some(pid) = node.pid() {
                procs::signal(pid, libc::SIGTERM);
            }
        }
        let start = Instant::now();
        for node in &mut self.nodes {
            if let Some(mut child) = node.child.take() {
                let left = TERM_DEADLINE.saturating_sub(start.elapsed());
                if !procs::wait_child(&mut child, left) {
                    notes.push(format!(
                        "daemon of {} ignored SIGTERM for {TERM_DEADLINE:?}; SIGKILLed it",
                        node.name
                    ));
                    let _ = child.kill();
                    let _ = child.wait();
                }
            }
        }
        let mut errors = Vec::new();
        let mut killed = 0;
        for node in &self.nodes {
            match procs::kill_marked(&node.mark, None, Duration::from_secs(10)) {
                Ok(n) => killed += n,
                Err(e) => errors.push(format!("{e:#}")),
            }
        }
        if killed > 0 {
            notes.push(format!(
                "{killed} leftover task process(es) SIGKILLed after the daemons exited"
            ));
        }
        if let Some(dir) = &self.keep_logs {
            match self.copy_logs(dir) {
                Ok(to) => notes.push(format!("daemon logs copied to {}", to.display())),
                Err(e) => errors.push(format!("{e:#}")),
            }
        }
        if errors.is_empty() {
            Ok(notes.join("; "))
        } else {
            Err(anyhow!("cleanup: {}", errors.join("; ")))
        }
    }
}

impl Drop for Cluster {
    fn drop(&mut self) {
        match self.shutdown() {
            Ok(notes) if !notes.is_empty() => eprintln!("cleanup: {notes}"),
            Ok(_) => {}
            Err(e) => eprintln!("cleanup failed: {e:#}"),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::shown;

    #[test]
    fn tokens_are_not_shown() {
        assert_eq!(
            shown(&["join", "--token", "FLT-1-secret", "127.0.0.11:24280"]),
            "join --token <token> 127.0.0.11:24280"
        );
        assert_eq!(
            shown(&["service", "scale", "web=10"]),
            "service scale web=10"
        );
    }
}

//! Test support for Flotilla: start the real `flotilla` binary as a node in
//! a temporary data dir, drive it through its CLI, and clean up every
//! process it started, also when a test fails.
//!
//! Every daemon gets a unique `FLOTILLA_TEST_MARK` in its environment.
//! Tasks inherit the daemon's environment, so the mark finds every process
//! a test caused, including tasks orphaned by a `kill -9` of the daemon.
//!
//! # Layout
//! - [`Daemon`]: one node process and its data dir, with its own address
//!   on loopback (`start_with`, or `start_named` on a [`free_port`] it
//!   keeps across restarts), which a test can kill (`kill9`), pause
//!   (`pause`/`resume`, SIGSTOP) and restart. [`strip_ansi`] reads its
//!   coloured log.
//! - [`image`]: busybox container images built locally (no registry).
//! - [`browser`]: a headless Chromium over the DevTools protocol, for the
//!   dashboard's tests.
//! - [`net`]: hosts in network namespaces on a private bridge, which a test
//!   can cut off and heal (partitions).
//! - [`wait_until`]: deadline-based polling (never a bare sleep).
//! - [`marked_pids`], [`kill_marked`]: finding and ending a test's processes.

pub mod browser;
pub mod image;
pub mod net;

use std::fs::File;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

use anyhow::{anyhow, bail, Context, Result};

/// The value of an unlabelled series in the `/metrics` of a node that
/// serves them plainly on `addr` (`--metrics-listen`).
pub fn metric(addr: &str, name: &str) -> Result<f64> {
    let (_, text) = http_get(addr, "/metrics", Duration::from_secs(5))?;
    metric_in(&text, name).ok_or_else(|| anyhow!("no series {name} in the metrics at {addr}"))
}

/// The value of the unlabelled series `name` in a scrape's `text`.
pub fn metric_in(text: &str, name: &str) -> Option<f64> {
    text.lines()
        .find_map(|l| l.strip_prefix(name)?.strip_prefix(' ')?.trim().parse().ok())
}

/// A loopback port free right now, for a daemon that must keep its
/// address across restarts (port 0 would draw a new one each start).
pub fn free_port() -> Result<u16> {
    Ok(std::net::TcpListener::bind("127.0.0.1:0")?
        .local_addr()?
        .port())
}

/// One HTTP/1.0 `GET path` to `addr` on a new connection, within
/// `timeout`: the status code and the body.
pub fn http_get(addr: &str, path: &str, timeout: Duration) -> Result<(u16, String)> {
    use std::io::{Read, Write};
    let sock: std::net::SocketAddr = addr.parse().context("address")?;
    let mut stream = std::net::TcpStream::connect_timeout(&sock, timeout)
        .with_context(|| format!("connecting to {addr}"))?;
    stream.set_read_timeout(Some(timeout))?;
    stream.set_write_timeout(Some(timeout))?;
    write!(stream, "GET {path} HTTP/1.0\r\nHost: {addr}\r\n\r\n")?;
    let mut raw = Vec::new();
    stream
        .read_to_end(&mut raw)
        .with_context(|| format!("reading the answer of {addr}"))?;
    let text = String::from_utf8_lossy(&raw).to_string();
    let (head, body) = text
        .split_once("\r\n\r\n")
        .ok_or_else(|| anyhow!("no HTTP answer from {addr}: {text:?}"))?;
    let code = head
        .split_whitespace()
        .nth(1)
        .and_then(|c| c.parse().ok())
        .ok_or_else(|| anyhow!("no status in {head:?}"))?;
    Ok((code, body.to_string()))
}

/// What `cksum` prints for `data` (checksum and length): a task can show
/// that it read a secret without showing the secret.
pub fn cksum(data: &str) -> Result<String> {
    use std::io::Write as _;
    let mut child = std::process::Command::new("cksum")
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .spawn()
        .context("starting cksum")?;
    if let Some(mut input) = child.stdin.take() {
        input.write_all(data.as_bytes())?;
    }
    let out = child.wait_with_output()?;
    Ok(String::from_utf8_lossy(&out.stdout).trim().to_string())
}

/// `text` without ANSI escape sequences (a daemon's log has colours).
pub fn strip_ansi(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    let mut chars = text.chars();
    while let Some(c) = chars.next() {
        if c == '\u{1b}' {
            // CSI: ESC [ params final-byte (0x40..=0x7e)
            for c in chars.by_ref() {
                if ('@'..='~').contains(&c) && c != '[' {
                    break;
                }
            }
        } else {
            out.push(c);
        }
    }
    out
}

/// Polls `check` every 50 ms until it yields a value or `timeout` passes;
/// the error names what was awaited and the last observation.
pub fn wait_until<T>(
    what: &str,
    timeout: Duration,
    mut check: impl FnMut() -> Result<Option<T>>,
) -> Result<T> {
    let deadline = Instant::now() + timeout;
    loop {
        let last = match check() {
            Ok(Some(v)) => return Ok(v),
            Ok(None) => "condition not met".to_string(),
            Err(e) => format!("{e:#}"),
        };
        if Instant::now() >= deadline {
            bail!("timed out after {timeout:?} waiting for {what} (last: {last})");
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// PIDs of live processes whose environment carries `FLOTILLA_TEST_MARK=mark`.
pub fn marked_pids(mark: &str) -> Vec<u32> {
    let needle = format!("FLOTILLA_TEST_MARK={mark}");
    let mut out = Vec::new();
    let Ok(entries) = std::fs::read_dir("/proc") else {
        return out;
    };
    for entry in entries.flatten() {
        let Some(pid) = entry
            .file_name()
            .to_str()
            .and_then(|s| s.parse::<u32>().ok())
        else {
            continue;
        };
        let Ok(env) = std::fs::read(entry.path().join("environ")) else {
            continue;
        };
        if !env.split(|b| *b == 0).any(|kv| kv == needle.as_bytes()) {
            continue;
        }
        // A zombie still shows its environment; it is already dead.
        let zombie = std::fs::read_to_string(entry.path().join("stat"))
            .ok()
            .and_then(|s| s.rsplit_once(") ").map(|(_, rest)| rest.starts_with('Z')))
            .unwrap_or(false);
        if !zombie {
            out.push(pid);
        }
    }
    out
}

/// Every file under `dir` (recursively) whose bytes hold `needle`.
pub fn files_holding(dir: &Path, needle: &[u8]) -> Vec<PathBuf> {
    let mut found = Vec::new();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        let Ok(entries) = std::fs::read_dir(&d) else {
            continue;
        };
        for entry in entries.flatten() {
            let path = entry.path();
            if path.is_dir() {
                stack.push(path);
            } else if let Ok(bytes) = std::fs::read(&path) {
                if bytes.windows(needle.len()).any(|w| w == needle) {
                    found.push(path);
                }
            }
        }
    }
    found
}

/// SIGKILLs every process carrying `mark`.
pub fn kill_marked(mark: &str) {
    for pid in marked_pids(mark) {
        // SAFETY: kill(2) with a pid we just read; a stale pid only fails.
        unsafe {
            libc::kill(pid as i32, libc::SIGKILL);
        }
    }
}

/// What a CLI call printed and how it ended.
#[derive(Debug)]
pub struct CliOutput {
    pub code: i32,
    pub stdout: String,
    pub stderr: String,
}

impl CliOutput {
    fn from(o: Output) -> Self {
        CliOutput {
            code: o.status.code().unwrap_or(-1),
            stdout: String::from_utf8_lossy(&o.stdout).into_owned(),
            stderr: String::from_utf8_lossy(&o.stderr).into_owned(),
        }
    }

    /// Fails unless the command exited 0.
    pub fn ok(self) -> Result<Self> {
        if self.code != 0 {
            bail!("command failed ({}): {}", self.code, self.stderr.trim());
        }
        Ok(self)
    }

    /// Parses stdout as JSON.
    pub fn json(&self) -> Result<serde_json::Value> {
        serde_json::from_str(&self.stdout).with_context(|| format!("not JSON: {}", self.stdout))
    }
}

/// What a CLI call that must fail printed: its one-line error (it failed,
/// said so on one line of stderr, and did not panic).
pub fn one_line_error(out: &CliOutput) -> String {
    assert_ne!(out.code, 0, "expected a failure, got stdout {}", out.stdout);
    let err = out.stderr.trim();
    assert_eq!(err.lines().count(), 1, "error must be one line: {err}");
    assert!(!err.contains("panicked"), "{err}");
    err.to_string()
}

/// A cluster on `hosts` of a [`net::Net`], one daemon each on cluster port
/// `port`, named `names`: the first runs `init`, the others join it as
/// workers.
pub fn cluster_on(
    bin: &Path,
    hosts: &[net::Host],
    port: u16,
    names: &[&str],
) -> Result<Vec<Daemon>> {
    cluster_on_with_env(bin, hosts, port, names, &[])
}

/// [`cluster_on`], with node `i` started with `envs[i]` added to its
/// environment (a node's own `DOCKER_HOST`, say).
pub fn cluster_on_with_env(
    bin: &Path,
    hosts: &[net::Host],
    port: u16,
    names: &[&str],
    envs: &[Vec<(String, String)>],
) -> Result<Vec<Daemon>> {
    let nodes: Vec<Daemon> = hosts
        .iter()
        .zip(names)
        .enumerate()
        .map(|(i, (h, name))| {
            let env: Vec<(&str, &str)> = envs
                .get(i)
                .map(|e| e.iter().map(|(k, v)| (k.as_str(), v.as_str())).collect())
                .unwrap_or_default();
            Daemon::launch(
                bin,
                &format!("{}:{port}", h.addr),
                &["--name", name],
                Some(h.ns.clone()),
                &env,
            )
        })
        .collect::<Result<_>>()?;
    let (Some(m), Some(first)) = (nodes.first(), hosts.first()) else {
        bail!("a cluster needs a host");
    };
    m.ok(&["init"])?;
    let token = m
        .ok(&["join-token", "worker", "-q"])?
        .stdout
        .trim()
        .to_string();
    let manager = format!("{}:{port}", first.addr);
    for n in &nodes[1..] {
        n.ok(&["join", "--token", &token, &manager])?;
    }
    Ok(nodes)
}

/// A `flotilla daemon` process with its own data dir.
pub struct Daemon {
    bin: PathBuf,
    dir: tempfile::TempDir,
    mark: String,
    child: Option<Child>,
    starts: u32,
    listen: String,
    extra: Vec<String>,
    /// Network namespace the daemon runs in, if any.
    netns: Option<String>,
    /// More environment for the daemon (kept across restarts).
    env: Vec<(String, String)>,
}

impl Daemon {
    /// Starts a daemon on a fresh data dir and waits until it answers; its
    /// cluster port is on a free loopback port.
    pub fn start(bin: &Path) -> Result<Daemon> {
        Self::start_with(bin, "127.0.0.1:0", &[])
    }

    /// Starts a daemon on `host` of a [`net::Net`]: it runs in the host's
    /// network namespace (`nsenter`, which keeps the file system, so the CLI
    /// still reaches its socket) and listens on the host's address.
    pub fn start_on(bin: &Path, host: &net::Host, port: u16, extra: &[&str]) -> Result<Daemon> {
        Self::launch(
            bin,
            &format!("{}:{port}", host.addr),
            extra,
            Some(host.ns.clone()),
            &[],
        )
    }

    /// Starts a daemon named `name` on a loopback port of its own, chosen
    /// now rather than by the daemon (port 0), so that it keeps its raft
    /// address when it restarts; `extra` are more daemon arguments.
    pub fn start_named(bin: &Path, name: &str, extra: &[&str]) -> Result<Daemon> {
        let mut args = vec!["--name", name];
        args.extend_from_slice(extra);
        Self::start_with(bin, &format!("127.0.0.1:{}", free_port()?), &args)
    }

    /// Starts a daemon named `name` as [`Daemon::start_named`] does, with
    /// `env` added to its environment (kept across restarts until
    /// [`Daemon::remove_env`]).
    pub fn start_named_with_env(
        bin: &Path,
        name: &str,
        extra: &[&str],
        env: &[(&str, &str)],
    ) -> Result<Daemon> {
        let mut args = vec!["--name", name];
        args.extend_from_slice(extra);
        Self::launch(
            bin,
            &format!("127.0.0.1:{}", free_port()?),
            &args,
            None,
            env,
        )
    }

    /// Drops `key` from the environment of the daemon's next starts.
    pub fn remove_env(&mut self, key: &str) {
        self.env.retain(|(k, _)| k != key);
    }

    /// Starts a daemon whose cluster port listens on `listen`, with extra
    /// daemon arguments.
    pub fn start_with(bin: &Path, listen: &str, extra: &[&str]) -> Result<Daemon> {
        Self::launch(bin, listen, extra, None, &[])
    }

    /// Starts a daemon as [`Daemon::start`] does, with `env` added to its
    /// environment (for this start and every restart).
    pub fn start_with_env(bin: &Path, env: &[(&str, &str)]) -> Result<Daemon> {
        Self::launch(bin, "127.0.0.1:0", &[], None, env)
    }

    fn launch(
        bin: &Path,
        listen: &str,
        extra: &[&str],
        netns: Option<String>,
        env: &[(&str, &str)],
    ) -> Result<Daemon> {
        // Short paths: a Unix socket path must fit in 108 bytes.
        let dir = tempfile::Builder::new()
            .prefix("flt-")
            .tempdir_in("/tmp")
            .context("making a data dir")?;
        let mut d = Daemon {
            bin: bin.to_path_buf(),
            dir,
            mark: format!("{:016x}", rand::random::<u64>()),
            child: None,
            starts: 0,
            listen: listen.to_string(),
            extra: extra.iter().map(|s| s.to_string()).collect(),
            netns,
            env: env
                .iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect(),
        };
        d.spawn()?;
        Ok(d)
    }

    /// The data dir.
    pub fn data_dir(&self) -> &Path {
        self.dir.path()
    }

    /// The mark carried by this daemon and its tasks.
    pub fn mark(&self) -> &str {
        &self.mark
    }

    /// PID of the daemon process, if it runs.
    pub fn pid(&self) -> Option<u32> {
        self.child.as_ref().map(|c| c.id())
    }

    fn log_path(&self) -> PathBuf {
        self.dir.path().join(format!("daemon-{}.log", self.starts))
    }

    fn spawn(&mut self) -> Result<()> {
        self.starts += 1;
        let log = File::create(self.log_path()).context("daemon log")?;
        let mut command = match &self.netns {
            Some(ns) => {
                let mut c = Command::new("nsenter");
                c.arg(format!("--net=/var/run/netns/{ns}"))
                    .arg("--")
                    .arg(&self.bin);
                c
            }
            None => Command::new(&self.bin),
        };
        let child = command
            .args(["daemon", "--data-dir"])
            .arg(self.dir.path())
            .args(["--listen", &self.listen])
            .args(["--api-listen", "127.0.0.1:0"])
            .args(self.extra.iter())
            .env("FLOTILLA_TEST_MARK", &self.mark)
            .env("FLOTILLA_LOG", "info")
            .envs(self.env.iter().map(|(k, v)| (k.as_str(), v.as_str())))
            .stdin(Stdio::null())
            .stdout(log.try_clone()?)
            .stderr(log)
            .spawn()
            .context("starting flotilla daemon")?;
        self.child = Some(child);
        // A daemon that exited fails the wait at once (an error inside the
        // poll would only be retried until the deadline).
        let exited = wait_until(
            "the daemon to answer on its socket",
            Duration::from_secs(15),
            || {
                if let Some(c) = self.child.as_mut() {
                    if let Some(status) = c.try_wait()? {
                        return Ok(Some(Some(status)));
                    }
                }
                Ok((self.cli(&["info", "--format", "json"]).code == 0).then_some(None))
            },
        )?;
        match exited {
            Some(status) => {
                self.child = None;
                bail!("daemon exited early with {status}: {}", self.log_tail())
            }
            None => Ok(()),
        }
    }

    /// The current daemon log, whole (a daemon that re-executes itself
    /// goes on writing it).
    pub fn log_text(&self) -> String {
        std::fs::read_to_string(self.log_path()).unwrap_or_default()
    }

    /// The last lines of the current daemon log.
    pub fn log_tail(&self) -> String {
        let text = self.log_text();
        let lines: Vec<&str> = text.lines().collect();
        lines[lines.len().saturating_sub(30)..].join("\n")
    }

    /// Runs `flotilla --data-dir DIR ARGS...`.
    pub fn cli(&self, args: &[&str]) -> CliOutput {
        self.run_cli(args, None)
    }

    /// Runs `flotilla --data-dir DIR ARGS...` with `input` on its stdin.
    pub fn cli_with_stdin(&self, args: &[&str], input: &str) -> CliOutput {
        self.run_cli(args, Some(input))
    }

    fn run_cli(&self, args: &[&str], input: Option<&str>) -> CliOutput {
        use std::io::Write as _;
        let child = Command::new(&self.bin)
            .arg("--data-dir")
            .arg(self.dir.path())
            .args(args)
            .stdin(if input.is_some() {
                Stdio::piped()
            } else {
                Stdio::null()
            })
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn();
        let out = child.and_then(|mut c| {
            if let (Some(text), Some(mut stdin)) = (input, c.stdin.take()) {
                stdin.write_all(text.as_bytes())?;
            }
            c.wait_with_output()
        });
        match out {
            Ok(o) => CliOutput::from(o),
            Err(e) => CliOutput {
                code: -1,
                stdout: String::new(),
                stderr: format!("cannot run flotilla: {e}"),
            },
        }
    }

    /// [`Daemon::cli_with_stdin`] of a command that must succeed.
    pub fn ok_with_stdin(&self, args: &[&str], input: &str) -> Result<CliOutput> {
        Self::must(self.cli_with_stdin(args, input), args)
    }

    /// Runs a CLI command that must succeed.
    pub fn ok(&self, args: &[&str]) -> Result<CliOutput> {
        Self::must(self.cli(args), args)
    }

    fn must(out: CliOutput, args: &[&str]) -> Result<CliOutput> {
        out.ok()
            .with_context(|| format!("flotilla {}", args.join(" ")))
    }

    /// The cluster address this node advertises (`node ls`), for `join`.
    pub fn cluster_addr(&self) -> Result<String> {
        let nodes = self.ok(&["node", "ls", "--format", "json"])?.json()?;
        nodes
            .as_array()
            .and_then(|a| a.iter().find(|n| n["is_self"] == true))
            .and_then(|n| n["addr"].as_str().map(String::from))
            .ok_or_else(|| anyhow!("node ls names no address for this node"))
    }

    /// Joins this (fresh) node to `manager`'s cluster as `role` (worker or
    /// manager), with a token just read from `manager`.
    pub fn join_cluster_of(&self, manager: &Daemon, role: &str) -> Result<()> {
        let token = manager
            .ok(&["join-token", role, "-q"])?
            .stdout
            .trim()
            .to_string();
        self.ok(&["join", "--token", &token, &manager.cluster_addr()?])?;
        Ok(())
    }

    /// `service ps NAME --format json`: every task of the service, history
    /// included.
    pub fn tasks(&self, name: &str) -> Result<Vec<serde_json::Value>> {
        let v = self
            .ok(&["service", "ps", name, "--format", "json"])?
            .json()?;
        v.as_array()
            .cloned()
            .ok_or_else(|| anyhow!("service ps {name} is not a list"))
    }

    /// `service inspect NAME --format json`: the one service.
    pub fn service(&self, name: &str) -> Result<serde_json::Value> {
        let v = self
            .ok(&["service", "inspect", name, "--format", "json"])?
            .json()?;
        v.get(0)
            .cloned()
            .ok_or_else(|| anyhow!("service inspect {name} is empty"))
    }

    /// `service create --name NAME --replicas N EXTRA... -d -- sleep
    /// 100000`: a service of idle processes.
    pub fn create_sleeping(&self, name: &str, replicas: u64, extra: &[&str]) -> Result<()> {
        let replicas = replicas.to_string();
        let mut args = vec!["service", "create", "--name", name, "--replicas", &replicas];
        args.extend_from_slice(extra);
        args.extend_from_slice(&["-d", "--", "sleep", "100000"]);
        self.ok(&args).map(|_| ())
    }

    /// Waits until service `name` wants `want` replicas and has that many
    /// ready.
    pub fn wait_ready(&self, name: &str, want: u64, within: Duration) -> Result<()> {
        wait_until(
            &format!("{name} to have {want} ready tasks"),
            within,
            || {
                let s = self.service(name)?;
                Ok(
                    (s["replicas"]["ready"] == want && s["replicas"]["desired"] == want)
                        .then_some(()),
                )
            },
        )
    }

    /// `kill -9` the daemon (its tasks keep running).
    pub fn kill9(&mut self) -> Result<()> {
        if let Some(mut c) = self.child.take() {
            c.kill().context("kill -9 daemon")?;
            c.wait().context("reaping daemon")?;
        }
        Ok(())
    }

    /// Freezes the daemon (SIGSTOP), as a machine that hangs: its sockets
    /// stay open but nothing answers. Its tasks keep running.
    pub fn pause(&self) -> Result<()> {
        self.signal(libc::SIGSTOP)
    }

    /// Thaws a paused daemon (SIGCONT).
    pub fn resume(&self) -> Result<()> {
        self.signal(libc::SIGCONT)
    }

    fn signal(&self, sig: i32) -> Result<()> {
        let pid = self.pid().context("the daemon is not running")?;
        // SAFETY: signalling our own child process.
        if unsafe { libc::kill(pid as i32, sig) } != 0 {
            bail!("kill({pid}, {sig}): {}", std::io::Error::last_os_error());
        }
        Ok(())
    }

    /// SIGTERM the daemon and wait for it to exit; returns its exit code.
    pub fn terminate(&mut self, timeout: Duration) -> Result<Option<i32>> {
        let Some(mut c) = self.child.take() else {
            return Ok(None);
        };
        // SAFETY: signalling our own child process.
        unsafe {
            libc::kill(c.id() as i32, libc::SIGTERM);
        }
        let status = wait_until("the daemon to exit after SIGTERM", timeout, || {
            Ok(c.try_wait()?)
        });
        match status {
            Ok(s) => Ok(s.code()),
            Err(e) => {
                let _ = c.kill();
                let _ = c.wait();
                Err(e)
            }
        }
    }

    /// Adds `args` to the daemon's arguments from its next start on.
    pub fn add_args(&mut self, args: &[&str]) {
        self.extra.extend(args.iter().map(|a| a.to_string()));
    }

    /// Drops `args` from the daemon's arguments from its next start on.
    pub fn remove_args(&mut self, args: &[&str]) {
        self.extra.retain(|a| !args.contains(&a.as_str()));
    }

    /// Starts the daemon again on the same data dir.
    pub fn restart(&mut self) -> Result<()> {
        if self.child.is_some() {
            self.terminate(Duration::from_secs(30))?;
        }
        self.spawn()
    }

    /// PIDs of this node's task processes (the daemon excluded).
    pub fn task_pids(&self) -> Vec<u32> {
        let me = self.pid();
        marked_pids(&self.mark)
            .into_iter()
            .filter(|p| Some(*p) != me)
            .collect()
    }
}

impl Drop for Daemon {
    fn drop(&mut self) {
        if std::thread::panicking() {
            eprintln!(
                "--- daemon log ({}) ---\n{}",
                self.log_path().display(),
                self.log_tail()
            );
        }
        if let Some(mut c) = self.child.take() {
            // SAFETY: signalling our own child process; a paused one must be
            // thawed to act on SIGTERM.
            unsafe {
                libc::kill(c.id() as i32, libc::SIGCONT);
                libc::kill(c.id() as i32, libc::SIGTERM);
            }
            let deadline = Instant::now() + Duration::from_secs(15);
            while Instant::now() < deadline {
                if let Ok(Some(_)) = c.try_wait() {
                    break;
                }
                std::thread::sleep(Duration::from_millis(20));
            }
            let _ = c.kill();
            let _ = c.wait();
        }
        kill_marked(&self.mark);
    }
}

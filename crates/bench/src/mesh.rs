//! `flotilla-bench mesh`: the routing mesh against HAProxy in front of the
//! same 3 backends on this machine, and the backends reached directly as
//! the limit, all driven by the same load generator (Debian's `wrk`) over
//! loopback.
//!
//! # What is measured, and how
//! 1. **Setup**: one fresh `flotilla daemon` (the [`Daemon`] guard), a
//!    service `web` of 3 replicas of `<flotilla> demo http` published on
//!    `--port` P (target 8080). The bench waits until the 3 current tasks
//!    run with an endpoint each and until P and every endpoint answer an
//!    HTTP GET. The 3 endpoint addresses (`IP:PORT` from the typed client's
//!    `tasks`, as `service ps --format json` shows them) are the backends of
//!    every path.
//! 2. **HAProxy** (Debian's `haproxy`, `apt-get install -y haproxy`):
//!    a config generated in a temporary directory, run in the foreground
//!    (`haproxy -f CFG -db`) and killed when the bench ends, whatever
//!    happens. Settings: `nbthread 2` (this is a 2-core machine), `maxconn
//!    8000` (HAProxy wants about 2 x maxconn descriptors; 8000 fits the
//!    usual limit of 20000), `mode tcp` (the mesh is a TCP proxy too),
//!    `balance leastconn` (the mesh's policy), no health checks, no
//!    logging, `timeout connect 5s`, `timeout client 30s`, `timeout server
//!    30s`; bound on 127.0.0.1:`--haproxy-port` (default P+1).
//! 3. **Paths**: `direct` is 3 `wrk` processes at once, one per backend,
//!    each with a third of `--connections` and `max(1, threads/3)` threads;
//!    their requests/s are summed, and their p50 and p99 are the highest of
//!    the three (the three backends are the same program, so they agree
//!    closely; the highest is the conservative pick). `haproxy` and `mesh`
//!    are one `wrk -t THREADS -c CONNECTIONS -d SECONDS --latency` against
//!    127.0.0.1:HAPROXY_PORT and 127.0.0.1:P.
//! 4. **Modes**: `keep-alive` (wrk's default HTTP/1.1 persistent
//!    connections) and `close`, a new TCP connection per request
//!    (`-H "Connection: close"`: the backend answers and closes, wrk
//!    reconnects).
//! 5. **Rounds**: per mode, `--rounds` rounds of the three paths, the
//!    starting path rotating each round (direct, haproxy, mesh; then
//!    haproxy, mesh, direct; ...), a 1 s pause between runs. Each figure in
//!    the table is the median over the rounds, taken per figure.
//! 6. **CPU per request**: utime+stime from `/proc/PID/stat` of the haproxy
//!    process and of the flotilla daemon (the mesh runs inside it; its idle
//!    CPU, measured over 2 s before the runs, is printed so that it can be
//!    discounted) before and after each run, divided by the run's requests,
//!    in µs. The 3 backends' CPU per request is printed too (the same work
//!    on every path). Clock-tick resolution (10 ms) is small against a 10 s
//!    run.
//!
//! wrk's `Socket errors` and `Non-2xx or 3xx responses` lines are parsed
//! and printed per run and summed in the table. The load generator, the
//! proxies and the backends share this machine's cores: every figure
//! includes that contention, equally for every path. The exit status is
//! non-zero only when setup failed (a missing tool, a daemon or service
//! that does not come up, HAProxy not answering).

use std::fmt::Write as _;
use std::path::{Path, PathBuf};
use std::process::{Child, Stdio};
use std::time::{Duration, Instant};

use anyhow::{anyhow, bail, Context, Result};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

use crate::daemon::Daemon;
use crate::procs;

/// The service's name and target port.
const SERVICE: &str = "web";
const TARGET: u16 = 8080;
const REPLICAS: usize = 3;
/// How long the tasks and the published port may take to come up.
const UP_DEADLINE: Duration = Duration::from_secs(60);
/// Pause between two wrk runs.
const PAUSE: Duration = Duration::from_secs(1);

pub struct Config {
    pub flotilla: PathBuf,
    pub port: u16,
    pub haproxy_port: u16,
    pub threads: usize,
    pub connections: usize,
    pub seconds: u64,
    pub rounds: usize,
    pub wrk: Option<PathBuf>,
    pub haproxy: Option<PathBuf>,
}

#[derive(Clone, Copy, PartialEq, Eq)]
enum Path3 {
    Direct,
    Haproxy,
    Mesh,
}

impl Path3 {
    const ALL: [Path3; 3] = [Path3::Direct, Path3::Haproxy, Path3::Mesh];

    fn name(self) -> &'static str {
        match self {
            Path3::Direct => "direct",
            Path3::Haproxy => "haproxy",
            Path3::Mesh => "mesh",
        }
    }
}

#[derive(Clone, Copy, PartialEq, Eq)]
enum Mode {
    KeepAlive,
    Close,
}

impl Mode {
    fn name(self) -> &'static str {
        match self {
            Mode::KeepAlive => "keep-alive",
            Mode::Close => "close",
        }
    }
}

/// What one wrk process printed.
#[derive(Debug, Default, Clone)]
struct Wrk {
    requests: u64,
    seconds: f64,
    rps: f64,
    p50_ms: f64,
    p99_ms: f64,
    /// connect, read, write, timeout.
    socket_errors: [u64; 4],
    non_2xx: u64,
}

impl Wrk {
    fn errors(&self) -> u64 {
        self.socket_errors.iter().sum::<u64>() + self.non_2xx
    }
}

/// One run of one path: wrk's figures and the CPU per request.
#[derive(Debug, Clone)]
struct Run {
    wrk: Wrk,
    /// The proxy's CPU per request (haproxy, or the daemon for the mesh;
    /// None for direct), and the backends', in µs.
    proxy_us: Option<f64>,
    backends_us: Option<f64>,
}

/// Finds a program on PATH, or in /usr/sbin and /sbin (where Debian puts
/// haproxy, not on a user's PATH).
fn find_program(given: Option<&Path>, name: &str) -> Result<PathBuf> {
    if let Some(p) = given {
        if procs::is_executable(p) {
            return Ok(p.to_path_buf());
        }
        bail!("{} is not an executable file", p.display());
    }
    let mut dirs: Vec<PathBuf> = std::env::var_os("PATH")
        .map(|p| std::env::split_paths(&p).collect())
        .unwrap_or_default();
    dirs.push(PathBuf::from("/usr/sbin"));
    dirs.push(PathBuf::from("/sbin"));
    dirs.into_iter()
        .map(|d| d.join(name))
        .find(|p| procs::is_executable(p))
        .ok_or_else(|| {
            anyhow!(
                "{name} not found: install it with `sudo apt-get install -y haproxy wrk` (or run scripts/bench-deps.sh), or pass --{name}"
            )
        })
}

/// utime+stime of a process (all its threads), in seconds.
fn cpu_seconds(pid: u32) -> Result<f64> {
    let path = format!("/proc/{pid}/stat");
    let stat = std::fs::read_to_string(&path).with_context(|| format!("reading {path}"))?;
    // The command name is in parentheses and may hold spaces: count the
    // fields after its closing one. Field 3 (state) is the first; utime and
    // stime are fields 14 and 15.
    let rest = stat
        .rsplit_once(')')
        .map(|(_, r)| r)
        .ok_or_else(|| anyhow!("malformed {path}"))?;
    let fields: Vec<&str> = rest.split_whitespace().collect();
    let tick = |i: usize| -> Result<u64> {
        fields
            .get(i)
            .and_then(|f| f.parse::<u64>().ok())
            .ok_or_else(|| anyhow!("no field {} in {path}", i + 3))
    };
    let ticks = tick(11)? + tick(12)?;
    // SAFETY: sysconf has no memory-safety preconditions.
    let hz = unsafe { libc::sysconf(libc::_SC_CLK_TCK) };
    let hz = if hz > 0 { hz as f64 } else { 100.0 };
    Ok(ticks as f64 / hz)
}

/// The summed CPU seconds of some processes; None if any cannot be read.
fn cpu_of(pids: &[u32]) -> Option<f64> {
    pids.iter()
        .map(|p| cpu_seconds(*p).ok())
        .sum::<Option<f64>>()
}

/// `12.5us`, `3.1ms`, `1.2s`, `1.0m` as milliseconds.
fn parse_ms(v: &str) -> Option<f64> {
    let (num, factor) = if let Some(n) = v.strip_suffix("us") {
        (n, 1e-3)
    } else if let Some(n) = v.strip_suffix("ms") {
        (n, 1.0)
    } else if let Some(n) = v.strip_suffix('s') {
        (n, 1e3)
    } else if let Some(n) = v.strip_suffix('m') {
        (n, 60e3)
    } else if let Some(n) = v.strip_suffix('h') {
        (n, 3600e3)
    } else {
        return None;
    };
    num.parse::<f64>().ok().map(|n| n * factor)
}

/// Parses wrk's `--latency` report.
fn parse_wrk(out: &str) -> Result<Wrk> {
    let mut w = Wrk::default();
    let (mut p50, mut p99, mut rps, mut total) = (None, None, None, None);
    for line in out.lines().map(str::trim) {
        let words: Vec<&str> = line.split_whitespace().collect();
        match words.as_slice() {
            ["50%", v] => p50 = parse_ms(v),
            ["99%", v] => p99 = parse_ms(v),
            ["Requests/sec:", v] => rps = v.parse::<f64>().ok(),
            [n, "requests", "in", d, ..] => {
                let secs = parse_ms(d.trim_end_matches(',')).map(|ms| ms / 1e3);
                total = n.parse::<u64>().ok().zip(secs);
            }
            ["Non-2xx", "or", "3xx", "responses:", n] => w.non_2xx = n.parse().unwrap_or(0),
            _ => {}
        }
        if let Some(rest) = line.strip_prefix("Socket errors:") {
            // "connect 0, read 0, write 0, timeout 0"
            for (i, part) in rest.split(',').enumerate().take(4) {
                w.socket_errors[i] = part
                    .split_whitespace()
                    .nth(1)
                    .and_then(|n| n.parse().ok())
                    .unwrap_or(0);
            }
        }
    }
    w.p50_ms = p50.ok_or_else(|| anyhow!("no 50% line in wrk's output"))?;
    w.p99_ms = p99.ok_or_else(|| anyhow!("no 99% line in wrk's output"))?;
    w.rps = rps.ok_or_else(|| anyhow!("no Requests/sec line in wrk's output"))?;
    (w.requests, w.seconds) = total.ok_or_else(|| anyhow!("no 'N requests in T' line"))?;
    Ok(w)
}

/// Runs one wrk process to completion.
async fn wrk_once(
    wrk: &Path,
    url: &str,
    threads: usize,
    connections: usize,
    seconds: u64,
    mode: Mode,
) -> Result<Wrk> {
    let mut cmd = tokio::process::Command::new(wrk);
    cmd.arg("-t")
        .arg(threads.to_string())
        .arg("-c")
        .arg(connections.to_string())
        .arg("-d")
        .arg(format!("{seconds}s"))
        .arg("--latency");
    if mode == Mode::Close {
        cmd.args(["-H", "Connection: close"]);
    }
    cmd.arg(url)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .kill_on_drop(true);
    let deadline = Duration::from_secs(seconds + 30);
    let out = tokio::time::timeout(deadline, cmd.output())
        .await
        .map_err(|_| anyhow!("wrk against {url} did not finish within {deadline:?}"))?
        .with_context(|| format!("running {}", wrk.display()))?;
    let stdout = String::from_utf8_lossy(&out.stdout);
    if !out.status.success() {
        bail!(
            "wrk against {url} failed ({}): {} {}",
            out.status,
            stdout.trim(),
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    parse_wrk(&stdout).with_context(|| format!("parsing wrk's output:\n{stdout}"))
}

/// The direct path: one wrk per backend at once, a third of the
/// connections each; requests summed, latencies the highest of the three.
async fn wrk_direct(
    wrk: &Path,
    backends: &[String],
    threads: usize,
    connections: usize,
    seconds: u64,
    mode: Mode,
) -> Result<Wrk> {
    let n = backends.len().max(1);
    let per_threads = (threads / n).max(1);
    let runs = backends.iter().enumerate().map(|(i, b)| {
        let c = (connections / n + usize::from(i < connections % n)).max(per_threads);
        let url = format!("http://{b}/");
        async move { wrk_once(wrk, &url, per_threads, c, seconds, mode).await }
    });
    let results = futures_join_all(runs).await;
    let mut sum = Wrk::default();
    for r in results {
        let r = r?;
        sum.requests += r.requests;
        sum.seconds = sum.seconds.max(r.seconds);
        sum.rps += r.rps;
        sum.p50_ms = sum.p50_ms.max(r.p50_ms);
        sum.p99_ms = sum.p99_ms.max(r.p99_ms);
        for i in 0..4 {
            sum.socket_errors[i] += r.socket_errors[i];
        }
        sum.non_2xx += r.non_2xx;
    }
    Ok(sum)
}

/// Awaits futures concurrently on the current-thread runtime, in order.
async fn futures_join_all<F, T>(futs: impl Iterator<Item = F>) -> Vec<T>
where
    F: std::future::Future<Output = T>,
{
    let mut set: Vec<std::pin::Pin<Box<F>>> = futs.map(Box::pin).collect();
    let mut out: Vec<Option<T>> = set.iter().map(|_| None).collect();
    std::future::poll_fn(|cx| {
        let mut pending = false;
        for (i, f) in set.iter_mut().enumerate() {
            if out[i].is_none() {
                match f.as_mut().poll(cx) {
                    std::task::Poll::Ready(v) => out[i] = Some(v),
                    std::task::Poll::Pending => pending = true,
                }
            }
        }
        if pending {
            std::task::Poll::Pending
        } else {
            std::task::Poll::Ready(())
        }
    })
    .await;
    out.into_iter().flatten().collect()
}

/// One HTTP GET with `Connection: close`; the body's first line.
async fn probe(addr: &str) -> Result<String> {
    let step = Duration::from_secs(2);
    let mut s = tokio::time::timeout(step, tokio::net::TcpStream::connect(addr))
        .await
        .map_err(|_| anyhow!("connect to {addr} timed out"))?
        .with_context(|| format!("connecting to {addr}"))?;
    s.write_all(b"GET / HTTP/1.1\r\nHost: bench\r\nConnection: close\r\n\r\n")
        .await
        .with_context(|| format!("writing to {addr}"))?;
    let mut buf = Vec::new();
    tokio::time::timeout(step, s.read_to_end(&mut buf))
        .await
        .map_err(|_| anyhow!("reading from {addr} timed out"))?
        .with_context(|| format!("reading from {addr}"))?;
    let text = String::from_utf8_lossy(&buf);
    if !text.starts_with("HTTP/1.1 200") {
        bail!(
            "{addr} answered {:?}",
            text.lines().next().unwrap_or_default()
        );
    }
    Ok(text
        .split("\r\n\r\n")
        .nth(1)
        .and_then(|b| b.lines().next())
        .unwrap_or_default()
        .to_string())
}

/// Probes until the address answers, up to `deadline`.
async fn wait_answers(addr: &str, deadline: Duration) -> Result<String> {
    let start = Instant::now();
    loop {
        match probe(addr).await {
            Ok(body) => return Ok(body),
            Err(e) if start.elapsed() >= deadline => {
                return Err(e.context(format!("{addr} did not answer within {deadline:?}")))
            }
            Err(_) => tokio::time::sleep(Duration::from_millis(100)).await,
        }
    }
}

/// Creates the service through the CLI and waits for its 3 tasks; returns
/// their endpoint addresses and pids.
async fn start_service(flotilla: &Path, d: &Daemon, port: u16) -> Result<(Vec<String>, Vec<u32>)> {
    let out = tokio::process::Command::new(flotilla)
        .arg("--data-dir")
        .arg(&d.data_dir)
        .args(["service", "create", "-d", "--name", SERVICE, "--replicas"])
        .arg(REPLICAS.to_string())
        .arg("--publish")
        .arg(format!("{port}:{TARGET}"))
        .arg("--")
        .arg(flotilla)
        .args(["demo", "http"])
        .stdin(Stdio::null())
        .kill_on_drop(true)
        .output()
        .await
        .context("running flotilla service create")?;
    if !out.status.success() {
        bail!(
            "flotilla service create failed ({}): {}",
            out.status,
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    let start = Instant::now();
    loop {
        let tasks = d.client.tasks(SERVICE).await;
        if let Ok(tasks) = &tasks {
            let ready: Vec<_> = tasks
                .iter()
                .filter(|t| {
                    t.current
                        && t.state == flotilla_types::task::TaskState::Running
                        && t.endpoints.iter().any(|e| e.target == TARGET)
                })
                .collect();
            if ready.len() == REPLICAS {
                let mut addrs = Vec::new();
                let mut pids = Vec::new();
                for t in ready {
                    if let Some(e) = t.endpoints.iter().find(|e| e.target == TARGET) {
                        addrs.push(e.address.clone());
                    }
                    pids.extend(t.pid);
                }
                return Ok((addrs, pids));
            }
        }
        if start.elapsed() >= UP_DEADLINE {
            bail!(
                "{REPLICAS} tasks of {SERVICE} not running with endpoints after {UP_DEADLINE:?} (last: {})",
                match tasks {
                    Ok(t) => format!("{} tasks", t.len()),
                    Err(e) => e.to_string(),
                }
            );
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// HAProxy in the foreground on a generated config; killed on drop.
struct Haproxy {
    child: Option<Child>,
    pid: u32,
    log: PathBuf,
    _dir: tempfile::TempDir,
}

impl Haproxy {
    fn config(port: u16, backends: &[String]) -> String {
        let mut cfg = String::from(
            "global\n    nbthread 2\n    maxconn 8000\n\ndefaults\n    mode tcp\n    timeout connect 5s\n    timeout client 30s\n    timeout server 30s\n\n",
        );
        let _ = write!(
            cfg,
            "frontend fe\n    bind 127.0.0.1:{port}\n    default_backend be\n\nbackend be\n    balance leastconn\n"
        );
        for (i, b) in backends.iter().enumerate() {
            let _ = writeln!(cfg, "    server s{i} {b}");
        }
        cfg
    }

    fn start(haproxy: &Path, port: u16, backends: &[String]) -> Result<Haproxy> {
        let dir = tempfile::Builder::new()
            .prefix("flotilla-bench-haproxy-")
            .tempdir()
            .context("creating a temporary directory for haproxy")?;
        let cfg = dir.path().join("haproxy.cfg");
        std::fs::write(&cfg, Self::config(port, backends))
            .with_context(|| format!("writing {}", cfg.display()))?;
        let log = dir.path().join("haproxy.log");
        let out =
            std::fs::File::create(&log).with_context(|| format!("creating {}", log.display()))?;
        let err = out.try_clone().context("duplicating the haproxy log")?;
        let child = std::process::Command::new(haproxy)
            .arg("-f")
            .arg(&cfg)
            .arg("-db")
            .stdin(Stdio::null())
            .stdout(out)
            .stderr(err)
            .spawn()
            .with_context(|| format!("cannot start {}", haproxy.display()))?;
        Ok(Haproxy {
            pid: child.id(),
            child: Some(child),
            log,
            _dir: dir,
        })
    }

    fn log_tail(&self) -> String {
        let text = std::fs::read_to_string(&self.log).unwrap_or_default();
        let lines: Vec<&str> = text.lines().collect();
        lines[lines.len().saturating_sub(10)..].join("\n")
    }
}

impl Drop for Haproxy {
    fn drop(&mut self) {
        if let Some(mut child) = self.child.take() {
            procs::signal(self.pid, libc::SIGTERM);
            if !procs::wait_child(&mut child, Duration::from_secs(5)) {
                let _ = child.kill();
                let _ = child.wait();
            }
        }
    }
}

fn median(mut v: Vec<f64>) -> Option<f64> {
    v.sort_by(f64::total_cmp);
    let n = v.len();
    if n == 0 {
        None
    } else if n % 2 == 1 {
        Some(v[n / 2])
    } else {
        Some((v[n / 2 - 1] + v[n / 2]) / 2.0)
    }
}

/// The medians over the rounds of one mode and path.
struct Row {
    rps: Option<f64>,
    p50: Option<f64>,
    p99: Option<f64>,
    proxy_us: Option<f64>,
    backends_us: Option<f64>,
    errors: u64,
    runs: usize,
}

impl Row {
    fn of(runs: &[Run]) -> Row {
        let m = |f: &dyn Fn(&Run) -> Option<f64>| median(runs.iter().filter_map(f).collect());
        Row {
            rps: m(&|r| Some(r.wrk.rps)),
            p50: m(&|r| Some(r.wrk.p50_ms)),
            p99: m(&|r| Some(r.wrk.p99_ms)),
            proxy_us: m(&|r| r.proxy_us),
            backends_us: m(&|r| r.backends_us),
            errors: runs.iter().map(|r| r.wrk.errors()).sum(),
            runs: runs.len(),
        }
    }
}

fn fmt(v: Option<f64>, digits: usize) -> String {
    v.map(|v| format!("{v:.digits$}"))
        .unwrap_or_else(|| "-".to_string())
}

fn ratio(a: Option<f64>, b: Option<f64>) -> Option<f64> {
    match (a, b) {
        (Some(a), Some(b)) if b > 0.0 => Some(a / b),
        _ => None,
    }
}

/// Runs the benchmark; Ok(false) when setup failed.
pub async fn run(cfg: &Config) -> Result<bool> {
    println!("== machine");
    for (k, v) in procs::machine_facts() {
        println!("  {k}: {v}");
    }
    let (wrk, haproxy) = match (
        find_program(cfg.wrk.as_deref(), "wrk"),
        find_program(cfg.haproxy.as_deref(), "haproxy"),
    ) {
        (Ok(w), Ok(h)) => (w, h),
        (w, h) => {
            for e in [w.err(), h.err()].into_iter().flatten() {
                println!("  setup FAILED: {e:#}");
            }
            return Ok(false);
        }
    };
    for (p, arg) in [(&wrk, "-v"), (&haproxy, "-v")] {
        let v = procs::run_blocking(&p.to_string_lossy(), &[arg], Duration::from_secs(5))
            .map(|o| {
                let mut s = String::from_utf8_lossy(&o.stdout).to_string();
                s.push_str(&String::from_utf8_lossy(&o.stderr));
                s.lines().next().unwrap_or_default().trim().to_string()
            })
            .unwrap_or_else(|e| format!("unknown ({e})"));
        println!("  {}: {v}", p.display());
    }
    let haproxy_port = cfg.haproxy_port;

    println!(
        "== setup: daemon, service {SERVICE} of {REPLICAS} x `flotilla demo http` published on {}",
        cfg.port
    );
    let d = match Daemon::start(&cfg.flotilla, "mesh").await {
        Ok(d) => d,
        Err(e) => {
            println!("  setup FAILED: {e:#}");
            return Ok(false);
        }
    };
    let (backends, backend_pids) = match start_service(&cfg.flotilla, &d, cfg.port).await {
        Ok(b) => b,
        Err(e) => {
            println!("  setup FAILED: {e:#}\n{}", d.log_tail(10));
            return Ok(false);
        }
    };
    println!(
        "  backends: {} (pids {backend_pids:?})",
        backends.join(", ")
    );
    for b in &backends {
        if let Err(e) = wait_answers(b, UP_DEADLINE).await {
            println!("  setup FAILED: {e:#}");
            return Ok(false);
        }
    }
    let mesh_addr = format!("127.0.0.1:{}", cfg.port);
    match wait_answers(&mesh_addr, UP_DEADLINE).await {
        Ok(body) => println!("  mesh {mesh_addr} answers: {body}"),
        Err(e) => {
            println!("  setup FAILED: {e:#}\n{}", d.log_tail(10));
            return Ok(false);
        }
    }
    let hp = match Haproxy::start(&haproxy, haproxy_port, &backends) {
        Ok(h) => h,
        Err(e) => {
            println!("  setup FAILED: {e:#}");
            return Ok(false);
        }
    };
    let hp_addr = format!("127.0.0.1:{haproxy_port}");
    match wait_answers(&hp_addr, Duration::from_secs(10)).await {
        Ok(body) => println!("  haproxy {hp_addr} (pid {}) answers: {body}", hp.pid),
        Err(e) => {
            println!("  setup FAILED: {e:#}\n{}", hp.log_tail());
            return Ok(false);
        }
    }
    let idle = Duration::from_secs(2);
    let before = cpu_seconds(d.pid).ok();
    tokio::time::sleep(idle).await;
    let idle_ms_per_s = match (before, cpu_seconds(d.pid).ok()) {
        (Some(a), Some(b)) => Some((b - a) * 1e3 / idle.as_secs_f64()),
        _ => None,
    };
    println!(
        "  daemon idle CPU: {} ms per s (pid {})",
        fmt(idle_ms_per_s, 1),
        d.pid
    );

    let mut runs: Vec<(Mode, Path3, Run)> = Vec::new();
    let mut failures: Vec<String> = Vec::new();
    for mode in [Mode::KeepAlive, Mode::Close] {
        println!(
            "== mode {}: {} rounds, wrk -t{} -c{} -d{}s --latency{}",
            mode.name(),
            cfg.rounds,
            cfg.threads,
            cfg.connections,
            cfg.seconds,
            if mode == Mode::Close {
                " -H 'Connection: close'"
            } else {
                ""
            }
        );
        for round in 0..cfg.rounds {
            for k in 0..Path3::ALL.len() {
                let path = Path3::ALL[(round + k) % Path3::ALL.len()];
                tokio::time::sleep(PAUSE).await;
                let proxy_pid = match path {
                    Path3::Direct => None,
                    Path3::Haproxy => Some(hp.pid),
                    Path3::Mesh => Some(d.pid),
                };
                let proxy_before = proxy_pid.and_then(|p| cpu_seconds(p).ok());
                let backends_before = cpu_of(&backend_pids);
                let result = match path {
                    Path3::Direct => {
                        wrk_direct(
                            &wrk,
                            &backends,
                            cfg.threads,
                            cfg.connections,
                            cfg.seconds,
                            mode,
                        )
                        .await
                    }
                    Path3::Haproxy | Path3::Mesh => {
                        let addr = if path == Path3::Haproxy {
                            &hp_addr
                        } else {
                            &mesh_addr
                        };
                        wrk_once(
                            &wrk,
                            &format!("http://{addr}/"),
                            cfg.threads,
                            cfg.connections,
                            cfg.seconds,
                            mode,
                        )
                        .await
                    }
                };
                let proxy_after = proxy_pid.and_then(|p| cpu_seconds(p).ok());
                let backends_after = cpu_of(&backend_pids);
                match result {
                    Ok(w) => {
                        let per_req = |a: Option<f64>, b: Option<f64>| match (a, b) {
                            (Some(a), Some(b)) if w.requests > 0 => {
                                Some((b - a) * 1e6 / w.requests as f64)
                            }
                            _ => None,
                        };
                        let run = Run {
                            proxy_us: per_req(proxy_before, proxy_after),
                            backends_us: per_req(backends_before, backends_after),
                            wrk: w,
                        };
                        let w = &run.wrk;
                        println!(
                            "  round {} {:<7} {:>9.0} req/s  p50 {:>7.3} ms  p99 {:>7.3} ms  proxy CPU {:>6} us/req  backends CPU {:>6} us/req  ({} requests in {:.2} s; socket errors connect {} read {} write {} timeout {}; non-2xx {})",
                            round + 1,
                            path.name(),
                            w.rps,
                            w.p50_ms,
                            w.p99_ms,
                            fmt(run.proxy_us, 2),
                            fmt(run.backends_us, 2),
                            w.requests,
                            w.seconds,
                            w.socket_errors[0],
                            w.socket_errors[1],
                            w.socket_errors[2],
                            w.socket_errors[3],
                            w.non_2xx
                        );
                        runs.push((mode, path, run));
                    }
                    Err(e) => {
                        println!("  round {} {} FAILED: {e:#}", round + 1, path.name());
                        failures.push(format!(
                            "{} {} round {}: {e:#}",
                            mode.name(),
                            path.name(),
                            round + 1
                        ));
                    }
                }
            }
        }
    }

    println!("== mesh stats");
    match d.client.mesh_stats().await {
        Ok(stats) => {
            for node in stats {
                for l in node.listeners {
                    println!(
                        "  port {} listening {} connections total {} max {} refused {}",
                        l.published, l.listening, l.total, l.max, l.refused
                    );
                    for b in l.backends {
                        println!(
                            "    backend {} total {} max {} errors {} retries {}",
                            b.addr, b.total, b.max, b.errors, b.retries
                        );
                    }
                }
            }
        }
        Err(e) => println!("  cannot read mesh stats: {e}"),
    }

    print_table(cfg, idle_ms_per_s, &runs, &failures);
    drop(hp);
    match d.stop() {
        Ok(notes) if !notes.is_empty() => println!("cleanup: {notes}"),
        Ok(_) => {}
        Err(e) => println!("cleanup FAILED: {e:#}"),
    }
    Ok(true)
}

fn print_table(
    cfg: &Config,
    idle_ms_per_s: Option<f64>,
    runs: &[(Mode, Path3, Run)],
    failures: &[String],
) {
    println!();
    println!(
        "== results: medians of {} rounds, wrk -t{} -c{} -d{}s, {REPLICAS} backends (`flotilla demo http`)",
        cfg.rounds, cfg.threads, cfg.connections, cfg.seconds
    );
    println!();
    println!("| mode | path | req/s | p50 ms | p99 ms | proxy CPU us/req | backends CPU us/req | errors | runs |");
    println!("|---|---|---:|---:|---:|---:|---:|---:|---:|");
    let mut ratios = Vec::new();
    for mode in [Mode::KeepAlive, Mode::Close] {
        let row = |p: Path3| {
            let rs: Vec<Run> = runs
                .iter()
                .filter(|(m, q, _)| *m == mode && *q == p)
                .map(|(_, _, r)| r.clone())
                .collect();
            Row::of(&rs)
        };
        let rows: Vec<(Path3, Row)> = Path3::ALL.iter().map(|p| (*p, row(*p))).collect();
        for (p, r) in &rows {
            println!(
                "| {} | {} | {} | {} | {} | {} | {} | {} | {} |",
                mode.name(),
                p.name(),
                fmt(r.rps, 0),
                fmt(r.p50, 3),
                fmt(r.p99, 3),
                fmt(r.proxy_us, 2),
                fmt(r.backends_us, 2),
                r.errors,
                r.runs
            );
        }
        let [(_, direct), (_, hap), (_, mesh)] = &rows[..] else {
            continue;
        };
        ratios.push((
            mode,
            [
                ratio(mesh.rps, hap.rps),
                ratio(mesh.p99, hap.p99),
                ratio(mesh.rps, direct.rps),
                ratio(mesh.p99, direct.p99),
                ratio(hap.rps, direct.rps),
                ratio(mesh.proxy_us, hap.proxy_us),
            ],
        ));
    }
    println!();
    println!("| mode | mesh/haproxy req/s (target >= 1) | mesh/haproxy p99 (target <= 1.2) | mesh/direct req/s | mesh/direct p99 | haproxy/direct req/s | mesh/haproxy CPU per req |");
    println!("|---|---:|---:|---:|---:|---:|---:|");
    for (mode, r) in &ratios {
        let met = |v: Option<f64>, ok: &dyn Fn(f64) -> bool| match v {
            Some(v) => format!("{v:.2} ({})", if ok(v) { "met" } else { "NOT met" }),
            None => "-".to_string(),
        };
        println!(
            "| {} | {} | {} | {} | {} | {} | {} |",
            mode.name(),
            met(r[0], &|v| v >= 1.0),
            met(r[1], &|v| v <= 1.2),
            fmt(r[2], 2),
            fmt(r[3], 2),
            fmt(r[4], 2),
            fmt(r[5], 2)
        );
    }
    println!();
    println!("direct: 3 wrk processes at once, one per backend, a third of the connections each; req/s summed, p50/p99 the highest of the three.");
    println!(
        "proxy CPU: haproxy's process, or the whole flotilla daemon for the mesh (idle: {} ms per s, included).",
        fmt(idle_ms_per_s, 1)
    );
    println!("errors: wrk's socket errors (connect, read, write, timeout) and non-2xx responses, summed over the rounds.");
    if !failures.is_empty() {
        println!("failed runs:");
        for f in failures {
            println!("  - {f}");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const OUT: &str = "Running 10s test @ http://127.0.0.1:18080/
  2 threads and 64 connections
  Thread Stats   Avg      Stdev     Max   +/- Stdev
    Latency   635.91us    0.89ms  12.92ms   93.69%
    Req/Sec    56.20k     8.07k   62.00k    86.54%
  Latency Distribution
     50%  250.00us
     75%  491.00us
     90%  700.00us
     99%    5.00ms
  1120000 requests in 10.10s, 416.67MB read
  Socket errors: connect 1, read 2, write 3, timeout 4
  Non-2xx or 3xx responses: 12
Requests/sec: 110891.09
Transfer/sec:     41.25MB
";

    #[test]
    fn parses_wrk() {
        let w = parse_wrk(OUT).expect("parse");
        assert!((w.p50_ms - 0.25).abs() < 1e-9);
        assert!((w.p99_ms - 5.0).abs() < 1e-9);
        assert_eq!(w.requests, 1_120_000);
        assert!((w.seconds - 10.1).abs() < 1e-9);
        assert!((w.rps - 110_891.09).abs() < 1e-6);
        assert_eq!(w.socket_errors, [1, 2, 3, 4]);
        assert_eq!(w.non_2xx, 12);
        assert_eq!(w.errors(), 22);
        assert!(parse_wrk("nothing").is_err());
    }

    #[test]
    fn units() {
        assert_eq!(parse_ms("1.50s"), Some(1500.0));
        assert_eq!(parse_ms("2.00m"), Some(120_000.0));
        assert_eq!(parse_ms("3ms"), Some(3.0));
        assert_eq!(parse_ms("x"), None);
    }

    #[test]
    fn medians() {
        assert_eq!(median(vec![3.0, 1.0, 2.0]), Some(2.0));
        assert_eq!(median(vec![4.0, 1.0, 2.0, 3.0]), Some(2.5));
        assert_eq!(median(vec![]), None);
    }

    #[test]
    fn haproxy_config() {
        let c = Haproxy::config(9, &["127.0.0.1:1".into(), "127.0.0.1:2".into()]);
        assert!(c.contains("bind 127.0.0.1:9"));
        assert!(c.contains("balance leastconn"));
        assert!(c.contains("mode tcp"));
        assert!(c.contains("server s1 127.0.0.1:2"));
    }
}

//! Write throughput against etcd, in one run (`flotilla-bench writes`).
//!
//! Both stores run as 3 members on loopback addresses of this machine, at
//! the same time, and are driven by the same client code: a minimal
//! HTTP/1.1 client with one keep-alive connection per client, each client
//! writing in a closed loop (next write when the last one answered).
//!
//! - **etcd** (Debian's etcd-server, 3.4): `POST /v3/kv/put` through its
//!   JSON gateway, each client its own key, the value a counter. Clients
//!   talk to the leader (found with `/v3/maintenance/status`).
//! - **Flotilla**: `PUT /v1/services/{name}` replacing the spec with one
//!   label changed, each client its own service of 0 replicas (so that no
//!   task starts and no rolling update runs), over the leader's Unix
//!   socket (the client API of a node; the TCP port of the API is mutual
//!   TLS, which etcd here is not).
//!
//! Each level of clients runs for `--seconds` on both, the side that goes
//! first alternating from level to level; the table gives writes/s, p50
//! and p99 of each and the ratios flotilla/etcd (throughput: > 1 is
//! better; p99: < 1 is better). Both write through fsync before they
//! answer (etcd's WAL, Flotilla's raft log in redb).

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{anyhow, bail, Context, Result};
use tokio::io::{AsyncBufReadExt, AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt, BufReader};

use crate::cluster::{Cluster, Layout};
use crate::stats::Summary;

/// What to measure.
#[derive(Debug, Clone)]
pub struct Config {
    pub flotilla: PathBuf,
    pub etcd: PathBuf,
    pub clients: Vec<usize>,
    pub seconds: u64,
    /// etcd's client ports are `port..port+3`, its peer ports
    /// `port+10..port+13`; Flotilla's cluster port is `port+20` on
    /// 127.0.0.41-43.
    pub port: u16,
    /// Where to copy the managers' logs when the run ends.
    pub keep_logs: Option<PathBuf>,
}

/// One side's result at one level.
#[derive(Debug, Clone)]
struct Level {
    writes_per_s: f64,
    latency: Option<Summary>,
    errors: usize,
    /// The first failed answer, to say what the errors were.
    first_error: Option<String>,
}

/// Where a client connects.
#[derive(Debug, Clone)]
enum Target {
    Tcp(String),
    Unix(PathBuf),
}

/// A write the client loop repeats with a new counter value.
trait Write: Send + Sync + 'static {
    /// Method, path and body of client `client`'s `n`th write.
    fn request(&self, client: usize, n: u64) -> (&'static str, String, Vec<u8>);
}

struct EtcdPut;

impl Write for EtcdPut {
    fn request(&self, client: usize, n: u64) -> (&'static str, String, Vec<u8>) {
        let body = format!(
            r#"{{"key":"{}","value":"{}"}}"#,
            base64(format!("bench/k{client}").as_bytes()),
            base64(n.to_string().as_bytes())
        );
        ("POST", "/v3/kv/put".to_string(), body.into_bytes())
    }
}

struct FlotillaLabel {
    specs: Vec<flotilla_types::ServiceSpec>,
}

impl Write for FlotillaLabel {
    fn request(&self, client: usize, n: u64) -> (&'static str, String, Vec<u8>) {
        let mut spec = self.specs[client % self.specs.len()].clone();
        spec.labels.insert("bench.n".to_string(), n.to_string());
        let path = format!("/v1/services/{}", spec.name);
        let body = flotilla_api::model::ServiceReplace {
            spec,
            version: None,
        };
        ("PUT", path, serde_json::to_vec(&body).unwrap_or_default())
    }
}

/// Runs the benchmark; false when a level failed on either side.
pub async fn run(cfg: &Config) -> Result<bool> {
    if cfg.clients.is_empty() || cfg.seconds == 0 {
        bail!("--clients and --seconds must not be empty or zero");
    }
    let max_clients = cfg.clients.iter().copied().max().unwrap_or(1);
    println!(
        "writes: 3 etcd members and 3 Flotilla managers on loopback; {} s per level; clients {:?}",
        cfg.seconds, cfg.clients
    );
    let etcd = Etcd::start(&cfg.etcd, cfg.port)
        .await
        .context("starting etcd")?;
    let etcd_leader = etcd.leader().await.context("finding etcd's leader")?;
    println!("  etcd: {} (leader {})", etcd.version, etcd_leader);

    let cluster = Cluster::start(
        &cfg.flotilla,
        &Layout {
            managers: 3,
            workers: 0,
            keep_logs: cfg.keep_logs.clone(),
            first_ip: 41,
            port: cfg.port.saturating_add(20),
            daemon_args: Vec::new(),
        },
    )
    .await
    .context("starting 3 Flotilla managers")?;
    let leader = cluster.wait_leader(Duration::from_secs(30)).await?;
    let leader_node = &cluster.nodes[leader];
    println!("  flotilla: leader {}", leader_node.name);
    let mut specs = Vec::with_capacity(max_clients);
    for c in 0..max_clients {
        let spec = crate::flotilla::sleep_spec(&format!("w{c}"), 0);
        leader_node
            .client
            .create_service(&spec)
            .await
            .with_context(|| format!("creating service w{c}"))?;
        specs.push(spec);
    }
    let flotilla_write = std::sync::Arc::new(FlotillaLabel { specs });
    let flotilla_target = Target::Unix(leader_node.data_dir.join("flotilla.sock"));
    let etcd_target = Target::Tcp(etcd_leader.clone());
    let etcd_write = std::sync::Arc::new(EtcdPut);

    let run_for = Duration::from_secs(cfg.seconds);
    let mut rows = Vec::new();
    let mut ok = true;
    for (i, &clients) in cfg.clients.iter().enumerate() {
        let etcd_first = i % 2 == 0;
        let mut e = None;
        let mut f = None;
        for side in 0..2 {
            if (side == 0) == etcd_first {
                e = Some(drive(&etcd_target, etcd_write.clone(), clients, run_for).await);
            } else {
                f = Some(drive(&flotilla_target, flotilla_write.clone(), clients, run_for).await);
            }
        }
        let (Some(e), Some(f)) = (e, f) else {
            continue;
        };
        for (name, level) in [("etcd", &e), ("flotilla", &f)] {
            match level {
                Ok(l) => println!(
                    "  {clients:>4} clients {name:>8}: {:>8.0} writes/s  {}  errors {}{}",
                    l.writes_per_s,
                    l.latency.map(|s| s.to_string()).unwrap_or_default(),
                    l.errors,
                    l.first_error
                        .as_ref()
                        .map(|e| format!(" (first: {e})"))
                        .unwrap_or_default()
                ),
                Err(err) => {
                    ok = false;
                    println!("  {clients:>4} clients {name:>8}: FAILED: {err:#}");
                }
            }
        }
        if let (Ok(e), Ok(f)) = (e, f) {
            rows.push((clients, e, f));
        }
    }
    println!();
    println!("clients  etcd w/s  flotilla w/s  ratio   etcd p50  flot p50   etcd p99  flot p99  p99 ratio");
    for (clients, e, f) in &rows {
        let p =
            |l: &Level, pick: fn(&Summary) -> f64| l.latency.map(|s| pick(&s)).unwrap_or(f64::NAN);
        println!(
            "{clients:>7}  {:>8.0}  {:>12.0}  {:>5.2}   {:>6.2} ms {:>6.2} ms  {:>6.2} ms {:>6.2} ms  {:>5.2}",
            e.writes_per_s,
            f.writes_per_s,
            f.writes_per_s / e.writes_per_s,
            p(e, |s| s.p50),
            p(f, |s| s.p50),
            p(e, |s| s.p99),
            p(f, |s| s.p99),
            p(f, |s| s.p99) / p(e, |s| s.p99),
        );
    }
    drop(cluster);
    drop(etcd);
    Ok(ok)
}

/// `clients` closed loops against `target` for `run_for`.
async fn drive<W: Write>(
    target: &Target,
    write: std::sync::Arc<W>,
    clients: usize,
    run_for: Duration,
) -> Result<Level> {
    let start = Instant::now();
    let end = start + run_for;
    let mut loops = tokio::task::JoinSet::new();
    for client in 0..clients {
        let target = target.clone();
        let write = write.clone();
        loops.spawn(async move {
            let mut latencies = Vec::new();
            let mut errors = 0usize;
            let mut first_error: Option<String> = None;
            let mut conn: Option<Conn> = None;
            let mut n = 0u64;
            while Instant::now() < end {
                n += 1;
                let (method, path, body) = write.request(client, n);
                let t0 = Instant::now();
                let c = match conn.take() {
                    Some(c) => c,
                    None => Conn::open(&target).await?,
                };
                match tokio::time::timeout(Duration::from_secs(10), c.call(method, &path, &body))
                    .await
                {
                    Ok(Ok((status, _, c))) if (200..300).contains(&status) => {
                        latencies.push(t0.elapsed());
                        conn = c;
                    }
                    Ok(Ok((status, body, c))) => {
                        errors += 1;
                        first_error.get_or_insert_with(|| {
                            format!("{status} {}", String::from_utf8_lossy(&body).trim())
                        });
                        conn = c;
                    }
                    Ok(Err(e)) => {
                        errors += 1;
                        first_error.get_or_insert_with(|| format!("{e:#}"));
                    }
                    Err(_) => {
                        errors += 1;
                        first_error.get_or_insert_with(|| "no answer within 10 s".into());
                    }
                }
            }
            anyhow::Ok((latencies, errors, first_error))
        });
    }
    let mut all = Vec::new();
    let mut errors = 0;
    let mut first_error = None;
    while let Some(joined) = loops.join_next().await {
        let (l, e, first) = joined.map_err(|e| anyhow!("client loop panicked: {e}"))??;
        all.extend(l);
        errors += e;
        first_error = first_error.or(first);
    }
    let elapsed = start.elapsed().as_secs_f64();
    if all.is_empty() {
        bail!("no write succeeded ({errors} errors)");
    }
    Ok(Level {
        writes_per_s: all.len() as f64 / elapsed,
        latency: Summary::of(&all),
        errors,
        first_error,
    })
}

trait Stream: AsyncRead + AsyncWrite + Unpin + Send {}
impl<T: AsyncRead + AsyncWrite + Unpin + Send> Stream for T {}

/// One keep-alive HTTP/1.1 connection.
struct Conn {
    io: BufReader<Box<dyn Stream>>,
    host: String,
}

impl Conn {
    async fn open(target: &Target) -> Result<Conn> {
        let (io, host): (Box<dyn Stream>, String) = match target {
            Target::Tcp(addr) => {
                let s = tokio::net::TcpStream::connect(addr.as_str())
                    .await
                    .with_context(|| format!("connecting to {addr}"))?;
                s.set_nodelay(true)?;
                (Box::new(s), addr.clone())
            }
            Target::Unix(path) => (
                Box::new(
                    tokio::net::UnixStream::connect(path)
                        .await
                        .with_context(|| format!("connecting to {}", path.display()))?,
                ),
                "flotilla".to_string(),
            ),
        };
        Ok(Conn {
            io: BufReader::new(io),
            host,
        })
    }

    /// Sends one request and reads its answer: the status, the body, and
    /// the connection back unless the server closes it.
    async fn call(
        mut self,
        method: &str,
        path: &str,
        body: &[u8],
    ) -> Result<(u16, Vec<u8>, Option<Conn>)> {
        let head = format!(
            "{method} {path} HTTP/1.1\r\nHost: {}\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n",
            self.host,
            body.len()
        );
        let w = self.io.get_mut();
        w.write_all(head.as_bytes()).await?;
        w.write_all(body).await?;
        w.flush().await?;
        let mut line = String::new();
        self.io.read_line(&mut line).await?;
        let status: u16 = line
            .split_whitespace()
            .nth(1)
            .and_then(|s| s.parse().ok())
            .ok_or_else(|| anyhow!("bad status line {line:?}"))?;
        let mut length = None;
        let mut chunked = false;
        let mut close = false;
        loop {
            line.clear();
            if self.io.read_line(&mut line).await? == 0 {
                bail!("connection closed in the headers");
            }
            let l = line.trim_end();
            if l.is_empty() {
                break;
            }
            if let Some((k, v)) = l.split_once(':') {
                let v = v.trim();
                match k.to_ascii_lowercase().as_str() {
                    "content-length" => length = v.parse::<usize>().ok(),
                    "transfer-encoding" => chunked = v.eq_ignore_ascii_case("chunked"),
                    "connection" => close = v.eq_ignore_ascii_case("close"),
                    _ => {}
                }
            }
        }
        let mut answer = Vec::new();
        if chunked {
            loop {
                line.clear();
                self.io.read_line(&mut line).await?;
                let size = usize::from_str_radix(line.trim(), 16)
                    .map_err(|_| anyhow!("bad chunk size {line:?}"))?;
                let mut chunk = vec![0u8; size + 2];
                self.io.read_exact(&mut chunk).await?;
                chunk.truncate(size);
                answer.extend(chunk);
                if size == 0 {
                    break;
                }
            }
        } else if let Some(n) = length {
            answer.resize(n, 0);
            self.io.read_exact(&mut answer).await?;
        } else {
            self.io.read_to_end(&mut answer).await?;
            close = true;
        }
        Ok((status, answer, (!close).then_some(self)))
    }
}

/// Standard base64 with padding (etcd's JSON gateway takes bytes so).
fn base64(bytes: &[u8]) -> String {
    const ABC: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    let mut out = String::with_capacity(bytes.len().div_ceil(3) * 4);
    for chunk in bytes.chunks(3) {
        let b = [
            chunk[0],
            chunk.get(1).copied().unwrap_or(0),
            chunk.get(2).copied().unwrap_or(0),
        ];
        let n = (u32::from(b[0]) << 16) | (u32::from(b[1]) << 8) | u32::from(b[2]);
        for i in 0..4 {
            if i <= chunk.len() {
                out.push(ABC[((n >> (18 - 6 * i)) & 63) as usize] as char);
            } else {
                out.push('=');
            }
        }
    }
    out
}

/// Three etcd members on loopback; killed on drop.
struct Etcd {
    children: Vec<Child>,
    clients: Vec<String>,
    version: String,
    _dir: tempfile::TempDir,
}

impl Etcd {
    async fn start(etcd: &Path, port: u16) -> Result<Etcd> {
        let out = crate::procs::run_blocking(
            &etcd.to_string_lossy(),
            &["--version"],
            Duration::from_secs(10),
        )
        .with_context(|| {
            format!(
                "{} --version (scripts/bench-deps.sh installs etcd-server)",
                etcd.display()
            )
        })?;
        let version = String::from_utf8_lossy(&out.stdout)
            .lines()
            .next()
            .unwrap_or("")
            .trim()
            .to_string();
        let dir = tempfile::Builder::new()
            .prefix("flotilla-bench-etcd-")
            .tempdir()?;
        let peer = |i: u16| format!("http://127.0.0.1:{}", port + 10 + i);
        let initial: Vec<String> = (0..3).map(|i| format!("e{i}={}", peer(i))).collect();
        let mut children = Vec::new();
        let mut clients = Vec::new();
        let mut me = Etcd {
            children: Vec::new(),
            clients: Vec::new(),
            version,
            _dir: dir,
        };
        for i in 0..3u16 {
            let client = format!("127.0.0.1:{}", port + i);
            std::net::TcpListener::bind(client.as_str())
                .with_context(|| format!("{client} is not free; pick another --port"))?;
            let log = std::fs::File::create(me._dir.path().join(format!("e{i}.log")))?;
            let child = Command::new(etcd)
                .args([
                    "--name",
                    &format!("e{i}"),
                    "--data-dir",
                    &me._dir.path().join(format!("e{i}")).to_string_lossy(),
                    "--listen-client-urls",
                    &format!("http://{client}"),
                    "--advertise-client-urls",
                    &format!("http://{client}"),
                    "--listen-peer-urls",
                    &peer(i),
                    "--initial-advertise-peer-urls",
                    &peer(i),
                    "--initial-cluster",
                    &initial.join(","),
                    "--initial-cluster-state",
                    "new",
                    "--initial-cluster-token",
                    "flotilla-bench",
                ])
                .stdin(Stdio::null())
                .stdout(log.try_clone()?)
                .stderr(log)
                .spawn()
                .with_context(|| format!("starting {}", etcd.display()))?;
            children.push(child);
            clients.push(client);
        }
        me.children = children;
        me.clients = clients;
        Ok(me)
    }

    /// The client address of the member that leads, waiting up to 30 s
    /// for the members to elect one.
    async fn leader(&self) -> Result<String> {
        let deadline = Instant::now() + Duration::from_secs(30);
        let mut last = String::new();
        while Instant::now() < deadline {
            for addr in &self.clients {
                match status(addr).await {
                    Ok((member, leader)) if member == leader && !leader.is_empty() => {
                        return Ok(addr.clone())
                    }
                    Ok(_) => {}
                    Err(e) => last = format!("{addr}: {e:#}"),
                }
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
        bail!("timed out after 30 s waiting for an etcd leader (last: {last})")
    }
}

/// A member's own ID and its leader's, from `/v3/maintenance/status`.
async fn status(addr: &str) -> Result<(String, String)> {
    let conn = Conn::open(&Target::Tcp(addr.to_string())).await?;
    let (code, body, _) = tokio::time::timeout(
        Duration::from_secs(2),
        conn.call("POST", "/v3/maintenance/status", b"{}"),
    )
    .await
    .map_err(|_| anyhow!("no status answer within 2 s"))??;
    if code != 200 {
        bail!("status answered {code}");
    }
    let v: serde_json::Value =
        serde_json::from_slice(&body).context("reading the status answer")?;
    let member = v["header"]["member_id"].as_str().unwrap_or("").to_string();
    let leader = v["leader"].as_str().unwrap_or("").to_string();
    Ok((member, leader))
}

impl Drop for Etcd {
    fn drop(&mut self) {
        for child in &mut self.children {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn base64_matches_the_standard_alphabet_and_padding() {
        assert_eq!(base64(b""), "");
        assert_eq!(base64(b"f"), "Zg==");
        assert_eq!(base64(b"fo"), "Zm8=");
        assert_eq!(base64(b"foo"), "Zm9v");
        assert_eq!(base64(b"bench/k12"), "YmVuY2gvazEy");
    }
}

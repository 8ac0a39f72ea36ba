//! Hosts on a private network: each in its own network namespace with its
//! own address on a bridge, so that a test can cut one off from the others
//! (its link goes down) and heal it again, or drop the packets of one link
//! in one direction (iptables inside the receiving host's namespace). Needs
//! root, iproute2 and iptables; the namespaces, links and bridge are
//! removed on drop.

use std::process::Command;
use std::sync::atomic::{AtomicU32, Ordering};

use anyhow::{bail, Context, Result};

static NEXT: AtomicU32 = AtomicU32::new(0);

fn ip(args: &[&str]) -> Result<()> {
    let out = Command::new("ip")
        .args(args)
        .output()
        .context("running ip")?;
    if !out.status.success() {
        bail!(
            "ip {}: {}",
            args.join(" "),
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    Ok(())
}

fn iptables(args: &[&str]) -> Result<()> {
    let out = Command::new("iptables")
        .args(args)
        .output()
        .context("running iptables")?;
    if !out.status.success() {
        bail!(
            "iptables {}: {}",
            args.join(" "),
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    Ok(())
}

/// One host: a network namespace with one address.
#[derive(Debug, Clone)]
pub struct Host {
    /// Namespace name, for `nsenter --net=/var/run/netns/NAME`.
    pub ns: String,
    /// Its address on the private network.
    pub addr: String,
    host_link: String,
}

/// A private network of hosts joined by a bridge.
#[derive(Debug)]
pub struct Net {
    tag: String,
    subnet: u32,
    bridge: String,
    hosts: Vec<Host>,
}

impl Net {
    /// Makes an empty network with its own /24.
    pub fn new() -> Result<Net> {
        let n = NEXT.fetch_add(1, Ordering::SeqCst);
        let tag = format!("{}{}", std::process::id() % 100_000, n);
        // One /24 per network, picked from the process ID and a counter so
        // that parallel tests and runs do not collide.
        let subnet = (std::process::id().wrapping_mul(7).wrapping_add(n)) % 250 + 1;
        let bridge = format!("flb{tag}");
        ip(&["link", "add", &bridge, "type", "bridge"])?;
        let net = Net {
            tag,
            subnet,
            bridge,
            hosts: Vec::new(),
        };
        ip(&["link", "set", &net.bridge, "up"])?;
        // Docker sets the FORWARD policy to DROP, and with br_netfilter that
        // drops traffic between ports of our bridge too: let ours through.
        let _ = iptables(&[
            "-I",
            "FORWARD",
            "-i",
            &net.bridge,
            "-o",
            &net.bridge,
            "-j",
            "ACCEPT",
        ]);
        Ok(net)
    }

    /// Gives this machine's own namespace an address on the network
    /// (`.1`), so that a test reaches the hosts' ports directly, as a
    /// client outside the cluster would.
    pub fn reach_from_here(&self) -> Result<String> {
        let addr = format!("10.213.{}.1", self.subnet);
        ip(&["addr", "add", &format!("{addr}/24"), "dev", &self.bridge])?;
        Ok(addr)
    }

    /// Adds a host and returns it.
    pub fn add_host(&mut self) -> Result<Host> {
        let i = self.hosts.len() + 1;
        let ns = format!("flt-{}-{i}", self.tag);
        let host_link = format!("flv{}h{i}", self.tag);
        let peer = format!("flv{}n{i}", self.tag);
        let addr = format!("10.213.{}.{}", self.subnet, i + 1);
        ip(&["netns", "add", &ns])?;
        let host = Host {
            ns: ns.clone(),
            addr: addr.clone(),
            host_link: host_link.clone(),
        };
        self.hosts.push(host.clone());
        ip(&[
            "link", "add", &host_link, "type", "veth", "peer", "name", &peer,
        ])?;
        ip(&["link", "set", &peer, "netns", &ns])?;
        ip(&["link", "set", &host_link, "master", &self.bridge])?;
        ip(&["link", "set", &host_link, "up"])?;
        ip(&["-n", &ns, "link", "set", "lo", "up"])?;
        ip(&[
            "-n",
            &ns,
            "addr",
            "add",
            &format!("{addr}/24"),
            "dev",
            &peer,
        ])?;
        ip(&["-n", &ns, "link", "set", &peer, "up"])?;
        Ok(host)
    }

    /// Cuts `host` off: its link to the bridge goes down.
    pub fn cut(&self, host: &Host) -> Result<()> {
        ip(&["link", "set", &host.host_link, "down"])
    }

    /// Reconnects a host that was cut off.
    pub fn heal(&self, host: &Host) -> Result<()> {
        ip(&["link", "set", &host.host_link, "up"])
    }
}

impl Net {
    /// Drops every packet `from` sends to `to` (one way: `to` still sends
    /// to `from`, but a TCP connection between them no longer completes).
    pub fn block(&self, from: &Host, to: &Host) -> Result<()> {
        ip(&[
            "netns", "exec", &to.ns, "iptables", "-w", "-A", "INPUT", "-s", &from.addr, "-j",
            "DROP",
        ])
    }

    /// Drops the packets between `a` and `b` both ways.
    pub fn block_both(&self, a: &Host, b: &Host) -> Result<()> {
        self.block(a, b)?;
        self.block(b, a)
    }

    /// Heals every host: links up, every blocked link open again.
    pub fn heal_all(&self) -> Result<()> {
        for h in &self.hosts {
            self.heal(h)?;
            ip(&["netns", "exec", &h.ns, "iptables", "-w", "-F", "INPUT"])?;
        }
        Ok(())
    }

    /// The hosts, in the order they were added.
    pub fn hosts(&self) -> &[Host] {
        &self.hosts
    }
}

impl Drop for Net {
    fn drop(&mut self) {
        for h in &self.hosts {
            let _ = ip(&["link", "del", &h.host_link]);
            let _ = ip(&["netns", "del", &h.ns]);
        }
        let _ = iptables(&[
            "-D",
            "FORWARD",
            "-i",
            &self.bridge,
            "-o",
            &self.bridge,
            "-j",
            "ACCEPT",
        ]);
        let _ = ip(&["link", "del", &self.bridge]);
    }
}

/// Network namespaces made by a test by name (`ip netns add`), removed on
/// drop, also when the test fails.
#[derive(Debug, Default)]
pub struct Namespaces(pub Vec<String>);

impl Drop for Namespaces {
    fn drop(&mut self) {
        for ns in &self.0 {
            let _ = ip(&["netns", "del", ns]);
        }
    }
}

/// Runs `f` on a thread that entered the network namespace `ns`: sockets
/// it makes belong to that namespace (and keep to it on other threads).
pub fn in_netns<T: Send + 'static>(ns: &str, f: impl FnOnce() -> T + Send + 'static) -> Result<T> {
    use std::os::fd::AsRawFd;
    let path = format!("/var/run/netns/{ns}");
    std::thread::spawn(move || -> Result<T> {
        let file = std::fs::File::open(&path).with_context(|| format!("opening {path}"))?;
        // SAFETY: setns on this thread only, with a valid descriptor of a
        // network namespace; the thread ends with the closure.
        let rc = unsafe { libc::setns(file.as_raw_fd(), libc::CLONE_NEWNET) };
        if rc != 0 {
            bail!("setns {path}: {}", std::io::Error::last_os_error());
        }
        Ok(f())
    })
    .join()
    .map_err(|_| anyhow::anyhow!("a thread in {ns} panicked"))?
}

/// A Docker Engine of a host's own (GUIDE.md, "Networking on these
/// machines"): `dockerd` started in the host's namespace with its own data
/// root, exec root, socket and default bridge, so that each host of a test
/// has its engine, as separate machines do. Stopped (its containers with
/// it) and its directory removed on drop, also when the test fails.
#[derive(Debug)]
pub struct Dockerd {
    dir: tempfile::TempDir,
    child: Option<std::process::Child>,
}

impl Dockerd {
    /// Starts an engine in `host`; `index` picks its default bridge's
    /// subnet (`172.31.INDEX.0/24`), and the engine carries the label
    /// `zone=zINDEX` (for `engine.labels` constraints). Waits at most 60 s
    /// for it to answer.
    pub fn start(host: &Host, index: u8) -> Result<Dockerd> {
        // Short: the socket path must fit in about 100 bytes.
        let dir = tempfile::Builder::new()
            .prefix("fd")
            .tempdir_in("/tmp")
            .context("making the engine's directory")?;
        let d = dir.path();
        std::fs::write(
            d.join("daemon.json"),
            format!(r#"{{"labels": ["zone=z{index}"]}}"#),
        )?;
        let log = std::fs::File::create(d.join("dockerd.log"))?;
        let child = Command::new("nsenter")
            .arg(format!("--net=/var/run/netns/{}", host.ns))
            .arg("--")
            .arg("dockerd")
            .arg("--config-file")
            .arg(d.join("daemon.json"))
            .arg("--data-root")
            .arg(d.join("root"))
            .arg("--exec-root")
            .arg(d.join("x"))
            .arg("-H")
            .arg(format!("unix://{}", d.join("docker.sock").display()))
            .arg("--pidfile")
            .arg(d.join("pid"))
            .arg("--bip")
            .arg(format!("172.31.{index}.1/24"))
            .stdin(std::process::Stdio::null())
            .stdout(log.try_clone()?)
            .stderr(log)
            .spawn()
            .context("starting dockerd (is it installed?)")?;
        let mut engine = Dockerd {
            dir,
            child: Some(child),
        };
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(60);
        loop {
            if engine
                .docker(&["info", "--format", "{{.ServerVersion}}"])?
                .status
                .success()
            {
                return Ok(engine);
            }
            if let Some(c) = engine.child.as_mut() {
                if let Some(status) = c.try_wait()? {
                    bail!(
                        "dockerd in {} exited ({status}): {}",
                        host.ns,
                        engine.log_tail()
                    );
                }
            }
            if std::time::Instant::now() > deadline {
                bail!(
                    "dockerd in {} did not answer in 60 s: {}",
                    host.ns,
                    engine.log_tail()
                );
            }
            std::thread::sleep(std::time::Duration::from_millis(200));
        }
    }

    /// `DOCKER_HOST` for this engine.
    pub fn docker_host(&self) -> String {
        format!("unix://{}", self.dir.path().join("docker.sock").display())
    }

    /// Runs the docker CLI against this engine.
    pub fn docker(&self, args: &[&str]) -> Result<std::process::Output> {
        Command::new("docker")
            .arg("-H")
            .arg(self.docker_host())
            .args(args)
            .stdin(std::process::Stdio::null())
            .output()
            .context("running docker")
    }

    /// Loads an image saved with `docker save` (a tar file).
    pub fn load(&self, tar: &std::path::Path) -> Result<()> {
        let tar = tar.display().to_string();
        let out = self.docker(&["load", "-q", "-i", &tar])?;
        if !out.status.success() {
            bail!(
                "docker load: {}",
                String::from_utf8_lossy(&out.stderr).trim()
            );
        }
        Ok(())
    }

    fn log_tail(&self) -> String {
        let text = std::fs::read_to_string(self.dir.path().join("dockerd.log")).unwrap_or_default();
        let lines: Vec<&str> = text.lines().collect();
        lines[lines.len().saturating_sub(5)..].join("\n")
    }
}

impl Drop for Dockerd {
    fn drop(&mut self) {
        if let Some(mut child) = self.child.take() {
            // SAFETY: kill has no memory preconditions; the pid is our child.
            unsafe { libc::kill(child.id() as i32, libc::SIGTERM) };
            let deadline = std::time::Instant::now() + std::time::Duration::from_secs(20);
            while std::time::Instant::now() < deadline {
                if matches!(child.try_wait(), Ok(Some(_))) {
                    break;
                }
                std::thread::sleep(std::time::Duration::from_millis(100));
            }
            let _ = child.kill();
            let _ = child.wait();
        }
        // What the engine left mounted under its root would stop the
        // directory's removal.
        let _ = Command::new("umount")
            .args(["-R", "-l"])
            .arg(self.dir.path().join("root"))
            .status();
        let _ = Command::new("umount")
            .args(["-R", "-l"])
            .arg(self.dir.path().join("x"))
            .status();
    }
}

//! Connections from a node's tasks to the virtual addresses of services
//! on their networks, forwarded with the mesh's rules: to a ready task of
//! the service on that network, on any node, and when a connect fails
//! (nothing was sent yet) on to the next one, each at most once.
//!
//! How a connection gets here: the node's bridge of a network holds the
//! network's virtual addresses, so a task's connection to one reaches its
//! own node, whose rules send it (any port) to the one listener of
//! [`serve`], at the same virtual address (so that connections to two
//! services stay apart at the proxy; `agent::netfilter::VipRedirect` says
//! why). The port the task asked for is read back from the connection's
//! NAT record (`SO_ORIGINAL_DST`); the task is known by its address
//! ([`VipTable::clients`]). The connection to the chosen task
//! is made from the client task's own network namespace ([`Sockets`]), so
//! it leaves from the client's address as a direct connection would: the
//! answer comes back to the client's namespace by the network's ordinary
//! path, the backend sees the client's address, and the client reaches
//! nothing its own networks do not.
//!
//! What decides is pure ([`route`], and [`crate::balance::pick`] in round
//! robin); the table is computed elsewhere (the agent's wiring loop) and
//! handed over in a [`tokio::sync::watch`].

use std::collections::BTreeMap;
use std::collections::HashMap;
use std::io;
use std::net::{IpAddr, Ipv4Addr, SocketAddr, SocketAddrV4};
use std::os::fd::{AsRawFd, FromRawFd, IntoRawFd, OwnedFd};
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use flotilla_types::mesh::Balance;
use thiserror::Error;
use tokio::net::{TcpListener, TcpSocket, TcpStream};
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tracing::{debug, warn};

use crate::balance::pick;
use crate::copy::{copy_both, CopyMode};

const RELAXED: Ordering = Ordering::Relaxed;

/// How long a connect to a task may take before the next task is tried.
/// Tasks of one network answer within milliseconds; a task that went away
/// without a word (its namespace removed, its node cut off) answers never,
/// and a client's own timeout is often 2 s.
pub const VIP_CONNECT_TIMEOUT: Duration = Duration::from_millis(500);

/// How long the connect to the last task not yet tried may take: with no
/// other to go to, a lost SYN is worth the kernel's retransmits.
pub const VIP_LAST_CONNECT_TIMEOUT: Duration = Duration::from_secs(3);

/// How long a task whose connect failed is tried last by new
/// connections: the table drops a dead task within about a second, and
/// until then each new connection would wait for it again.
pub const VIP_FAILED_FOR: Duration = Duration::from_secs(2);

/// What the node's virtual addresses lead to, and who may use them.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct VipTable {
    /// Each virtual address of a network this node holds.
    pub vips: BTreeMap<Ipv4Addr, VipRoute>,
    /// Each address of a task of this node, on one of its networks.
    pub clients: BTreeMap<Ipv4Addr, Client>,
}

/// One service's virtual address on one network.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct VipRoute {
    /// The network's VNI.
    pub vni: u32,
    pub service: String,
    /// The addresses of its ready tasks on that network, in a fixed order.
    pub backends: Vec<Ipv4Addr>,
}

/// A task of this node at one of its addresses.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Client {
    pub task_id: String,
    /// The network namespace the task runs in (`ip netns` name).
    pub netns: String,
    /// The VNI of the network this address is on.
    pub vni: u32,
}

/// Why a connection to a virtual address was not forwarded.
#[derive(Debug, Error)]
pub enum VipError {
    #[error("{0} is not the address of a task of this node")]
    UnknownClient(IpAddr),
    #[error("{0} is not a virtual address of this node")]
    NotVirtual(SocketAddr),
    #[error("{vip} is on another network than task {task}")]
    OtherNetwork { vip: Ipv4Addr, task: String },
    #[error("no task of {0} is ready")]
    NoBackend(String),
    #[error("every ready task of {service} failed ({tried} tried); last: {last}")]
    AllFailed {
        service: String,
        tried: usize,
        last: String,
    },
    #[error("cannot read the address the connection was for: {0}")]
    OriginalDst(#[source] io::Error),
    #[error(transparent)]
    Copy(#[from] crate::copy::CopyError),
}

/// The task at `client` and the route of `dst`, when `client` is a task
/// of this node on the network of virtual address `dst`.
pub fn route(
    table: &VipTable,
    client: IpAddr,
    dst: SocketAddr,
) -> Result<(&Client, &VipRoute), VipError> {
    let who = match client {
        IpAddr::V4(a) => table.clients.get(&a),
        IpAddr::V6(a) => a.to_ipv4_mapped().and_then(|a| table.clients.get(&a)),
    }
    .ok_or(VipError::UnknownClient(client))?;
    let vip = match dst.ip() {
        IpAddr::V4(a) => Some(a),
        IpAddr::V6(a) => a.to_ipv4_mapped(),
    };
    let (vip, to) = vip
        .and_then(|v| Some((v, table.vips.get(&v)?)))
        .ok_or(VipError::NotVirtual(dst))?;
    if to.vni != who.vni {
        return Err(VipError::OtherNetwork {
            vip,
            task: who.task_id.clone(),
        });
    }
    Ok((who, to))
}

/// Makes TCP sockets inside a task's network namespace. Blocking: it is
/// called off the runtime's threads.
pub trait Sockets: Send + Sync + 'static {
    /// `n` sockets (at least one) in `netns`, made in one go: entering a
    /// namespace is what costs.
    fn tcp_in(&self, netns: &str, n: usize) -> io::Result<Vec<OwnedFd>>;
}

/// What the proxy counts, for the node's metrics and tests.
#[derive(Debug, Default)]
pub struct VipStats {
    pub connections: AtomicU64,
    /// Connects that failed and were tried on another task.
    pub retries: AtomicU64,
    pub refused: AtomicU64,
}

/// The address a redirected connection was made to (`SO_ORIGINAL_DST`).
pub fn original_dst(stream: &TcpStream) -> io::Result<SocketAddr> {
    const SO_ORIGINAL_DST: libc::c_int = 80;
    // SAFETY: an all-zero sockaddr_in is valid; getsockopt writes at most
    // `len` bytes into it, on a socket we own.
    let mut addr: libc::sockaddr_in = unsafe { std::mem::zeroed() };
    let mut len = std::mem::size_of::<libc::sockaddr_in>() as libc::socklen_t;
    let rc = unsafe {
        libc::getsockopt(
            stream.as_raw_fd(),
            libc::SOL_IP,
            SO_ORIGINAL_DST,
            (&mut addr as *mut libc::sockaddr_in).cast(),
            &mut len,
        )
    };
    if rc != 0 {
        return Err(io::Error::last_os_error());
    }
    let ip = Ipv4Addr::from(u32::from_be(addr.sin_addr.s_addr));
    Ok(SocketAddr::V4(SocketAddrV4::new(
        ip,
        u16::from_be(addr.sin_port),
    )))
}

/// Makes the close of `stream` a reset (`SO_LINGER` of 0, which never
/// blocks).
fn reset_on_close(stream: &TcpStream) {
    let linger = libc::linger {
        l_onoff: 1,
        l_linger: 0,
    };
    // SAFETY: setsockopt on a socket we own, with a pointer to a linger
    // that lives across the call.
    unsafe {
        libc::setsockopt(
            stream.as_raw_fd(),
            libc::SOL_SOCKET,
            libc::SO_LINGER,
            (&linger as *const libc::linger).cast(),
            std::mem::size_of::<libc::linger>() as libc::socklen_t,
        );
    }
}

/// Sockets made ahead for each client task's namespace: making them
/// costs a thread that enters the namespace, which a connection should
/// not wait for (measured in `flotilla-bench overlay`). Below
/// [`SPARE_LOW`] they are made up to [`SPARE_HIGH`], in one go.
const SPARE_LOW: usize = 2;
const SPARE_HIGH: usize = 8;

/// The spare sockets of one namespace.
#[derive(Default)]
struct Spare {
    fds: Vec<OwnedFd>,
    /// Whether more are being made now.
    making: bool,
}

/// What every connection of one proxy shares.
struct Shared {
    sockets: Arc<dyn Sockets>,
    connect_timeout: Duration,
    cursor: AtomicUsize,
    stats: Arc<VipStats>,
    /// Unconnected sockets made ahead, by namespace. A socket holds its
    /// namespace (and the task's interfaces) alive: those of a task that
    /// left the table are closed at once.
    spare: Mutex<HashMap<String, Spare>>,
    /// When a connect to each task last failed.
    failed: Mutex<HashMap<SocketAddr, std::time::Instant>>,
}

impl Shared {
    fn spares(&self) -> std::sync::MutexGuard<'_, HashMap<String, Spare>> {
        self.spare.lock().unwrap_or_else(PoisonError::into_inner)
    }

    fn failures(&self) -> std::sync::MutexGuard<'_, HashMap<SocketAddr, std::time::Instant>> {
        self.failed.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Closes the spare sockets of namespaces no client of `table` is in.
    fn forget_gone(&self, table: &VipTable) {
        let live: std::collections::HashSet<&str> =
            table.clients.values().map(|c| c.netns.as_str()).collect();
        self.spares().retain(|ns, _| live.contains(ns.as_str()));
    }
}

/// Accepts on `listener` (where the node's rules send virtual
/// addresses) until `shutdown`, which ends the open connections too.
pub async fn serve(
    listener: TcpListener,
    table: watch::Receiver<Arc<VipTable>>,
    sockets: Arc<dyn Sockets>,
    connect_timeout: Duration,
    stats: Arc<VipStats>,
    shutdown: CancellationToken,
) {
    let shared = Arc::new(Shared {
        sockets,
        connect_timeout,
        cursor: AtomicUsize::new(0),
        stats,
        spare: Mutex::new(HashMap::new()),
        failed: Mutex::new(HashMap::new()),
    });
    let mut table = table;
    let mut watching = true;
    let conns = TaskTracker::new();
    loop {
        let accepted = tokio::select! {
            _ = shutdown.cancelled() => break,
            changed = table.changed(), if watching => {
                if changed.is_ok() {
                    let now = table.borrow_and_update().clone();
                    shared.forget_gone(&now);
                    shared.failures().retain(|_, at| at.elapsed() < VIP_FAILED_FOR);
                } else {
                    // The sender is gone: the last table stays, and
                    // `changed` would be ready at once on every turn.
                    watching = false;
                }
                continue;
            }
            accepted = listener.accept() => accepted,
        };
        match accepted {
            Ok((stream, peer)) => {
                let now = table.borrow().clone();
                let (shared, stop) = (shared.clone(), shutdown.clone());
                conns.spawn(async move {
                    tokio::select! {
                        _ = stop.cancelled() => {}
                        result = forward(stream, peer, &now, &shared) => {
                            if let Err(err) = result {
                                debug!(%peer, error = %err, "virtual address connection ended");
                            }
                        }
                    }
                });
            }
            Err(err) => {
                warn!(error = %err, "virtual address accept failed");
                tokio::select! {
                    _ = shutdown.cancelled() => break,
                    _ = tokio::time::sleep(Duration::from_millis(100)) => {}
                }
            }
        }
    }
    conns.close();
    conns.wait().await;
}

/// A TCP socket in `netns`: a spare one when there is, else one made on
/// a blocking thread; when the spares of `netns` run low, more are made
/// in the background.
async fn socket_in(shared: &Arc<Shared>, netns: &str) -> io::Result<TcpSocket> {
    let (spare, make) = {
        let mut spares = shared.spares();
        let these = spares.entry(netns.to_string()).or_default();
        let fd = these.fds.pop();
        let make =
            (!these.making && these.fds.len() < SPARE_LOW).then(|| SPARE_HIGH - these.fds.len());
        these.making |= make.is_some();
        (fd, make)
    };
    if let Some(n) = make {
        let (shared, ns) = (shared.clone(), netns.to_string());
        tokio::task::spawn_blocking(move || {
            let made = shared.sockets.tcp_in(&ns, n);
            // A namespace that left the table meanwhile has no entry: what
            // was made for it is closed here.
            if let Some(these) = shared.spares().get_mut(&ns) {
                these.making = false;
                these.fds.extend(made.into_iter().flatten());
            }
        });
    }
    let fd = match spare {
        Some(fd) => fd,
        None => {
            let (sockets, ns) = (shared.sockets.clone(), netns.to_string());
            tokio::task::spawn_blocking(move || sockets.tcp_in(&ns, 1))
                .await
                .map_err(io::Error::other)??
                .pop()
                .ok_or_else(|| io::Error::other("no socket made"))?
        }
    };
    // SAFETY: the descriptor is a TCP socket we were given and own.
    Ok(unsafe { TcpSocket::from_raw_fd(fd.into_raw_fd()) })
}

async fn forward(
    client: TcpStream,
    peer: SocketAddr,
    table: &VipTable,
    shared: &Arc<Shared>,
) -> Result<(), VipError> {
    let refused = |e| {
        shared.stats.refused.fetch_add(1, RELAXED);
        // A reset, not an end of stream: the caller's connect succeeded,
        // but nothing will answer on it.
        reset_on_close(&client);
        e
    };
    // A connection made to the listener itself has no NAT record: it is
    // for the listener's own address, which is no virtual address but in
    // tests.
    let dst = match original_dst(&client) {
        Ok(dst) => dst,
        Err(e) if e.raw_os_error() == Some(libc::ENOENT) => {
            client.local_addr().map_err(VipError::OriginalDst)?
        }
        Err(e) => return Err(refused(VipError::OriginalDst(e))),
    };
    let (who, to) = route(table, peer.ip(), dst).map_err(refused)?;
    let n = to.backends.len();
    if n == 0 {
        return Err(refused(VipError::NoBackend(to.service.clone())));
    }
    let start = shared.cursor.fetch_add(1, RELAXED);
    let mut tried = vec![false; n];
    // Tasks that failed a moment ago are tried last: a load of 1 against
    // 0 for least connections.
    let recent: Vec<bool> = {
        let failures = shared.failures();
        to.backends
            .iter()
            .map(|b| {
                failures
                    .get(&SocketAddr::new(IpAddr::V4(*b), dst.port()))
                    .is_some_and(|at| at.elapsed() < VIP_FAILED_FOR)
            })
            .collect()
    };
    let mut last = String::new();
    let backend = loop {
        let Some(i) = pick(Balance::LeastConnections, n, start, &tried, |i| {
            u64::from(recent[i])
        }) else {
            return Err(refused(VipError::AllFailed {
                service: to.service.clone(),
                tried: n,
                last,
            }));
        };
        if tried.iter().any(|t| *t) {
            shared.stats.retries.fetch_add(1, RELAXED);
        }
        tried[i] = true;
        let addr = SocketAddr::new(IpAddr::V4(to.backends[i]), dst.port());
        let socket = match socket_in(shared, &who.netns).await {
            Ok(s) => s,
            Err(err) => {
                // Every task would fail alike: the client's namespace is
                // gone or the node is out of descriptors.
                return Err(refused(VipError::AllFailed {
                    service: to.service.clone(),
                    tried: i + 1,
                    last: format!("cannot make a socket in {}: {err}", who.netns),
                }));
            }
        };
        let wait = if tried.iter().all(|t| *t) {
            shared.connect_timeout.max(VIP_LAST_CONNECT_TIMEOUT)
        } else {
            shared.connect_timeout
        };
        match tokio::time::timeout(wait, socket.connect(addr)).await {
            Ok(Ok(stream)) => {
                shared.failures().remove(&addr);
                break stream;
            }
            Ok(Err(err)) => last = format!("{addr}: {err}"),
            Err(_) => last = format!("{addr}: no answer within {wait:?}"),
        }
        shared.failures().insert(addr, std::time::Instant::now());
        debug!(service = %to.service, backend = %addr, error = %last,
            "virtual address connect failed; trying another task");
    };
    shared.stats.connections.fetch_add(1, RELAXED);
    let _ = backend.set_nodelay(true);
    let _ = client.set_nodelay(true);
    let (bytes_in, bytes_out) = (AtomicU64::new(0), AtomicU64::new(0));
    copy_both(
        CopyMode::Splice,
        &client,
        &backend,
        &bytes_in,
        &bytes_out,
        None,
    )
    .await?;
    Ok(())
}

/// [`Sockets`] in the caller's own namespace, whatever is asked: for
/// tests, and for a node whose tasks share its namespace.
#[derive(Debug, Default, Clone, Copy)]
pub struct HereSockets;

impl Sockets for HereSockets {
    fn tcp_in(&self, _netns: &str, n: usize) -> io::Result<Vec<OwnedFd>> {
        tcp_sockets(n)
    }
}

/// `n` (at least one) sockets of [`tcp_socket`].
pub fn tcp_sockets(n: usize) -> io::Result<Vec<OwnedFd>> {
    (0..n.max(1)).map(|_| tcp_socket()).collect()
}

/// A non-blocking IPv4 TCP socket of the network namespace the calling
/// thread is in.
pub fn tcp_socket() -> io::Result<OwnedFd> {
    // SAFETY: socket(2) with constant arguments; the result is checked.
    let fd = unsafe {
        libc::socket(
            libc::AF_INET,
            libc::SOCK_STREAM | libc::SOCK_NONBLOCK | libc::SOCK_CLOEXEC,
            0,
        )
    };
    if fd < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: a descriptor socket(2) just returned, owned by no one else.
    Ok(unsafe { OwnedFd::from_raw_fd(fd) })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn table() -> VipTable {
        let mut t = VipTable::default();
        t.vips.insert(
            Ipv4Addr::new(10, 0, 9, 2),
            VipRoute {
                vni: 4096,
                service: "web".into(),
                backends: vec![Ipv4Addr::new(10, 0, 9, 10), Ipv4Addr::new(10, 0, 9, 11)],
            },
        );
        t.vips.insert(
            Ipv4Addr::new(10, 0, 8, 2),
            VipRoute {
                vni: 4097,
                service: "db".into(),
                backends: vec![],
            },
        );
        t.clients.insert(
            Ipv4Addr::new(10, 0, 9, 5),
            Client {
                task_id: "c1".into(),
                netns: "flt-c1".into(),
                vni: 4096,
            },
        );
        t
    }

    /// [`serve`] on `listener` with `table`, in this namespace: its
    /// counters, its stop and its task.
    fn serving(
        listener: TcpListener,
        table: VipTable,
    ) -> (
        Arc<VipStats>,
        CancellationToken,
        tokio::task::JoinHandle<()>,
    ) {
        // The table never changes: its sender may go.
        let (_, rx) = watch::channel(Arc::new(table));
        let stats = Arc::new(VipStats::default());
        let stop = CancellationToken::new();
        let served = tokio::spawn(serve(
            listener,
            rx,
            Arc::new(HereSockets),
            VIP_CONNECT_TIMEOUT,
            stats.clone(),
            stop.clone(),
        ));
        (stats, stop, served)
    }

    fn sa(text: &str) -> SocketAddr {
        text.parse().expect("address")
    }

    #[test]
    fn a_task_reaches_the_virtual_addresses_of_its_own_networks_only() {
        let t = table();
        let client: IpAddr = "10.0.9.5".parse().expect("ip");
        let (who, to) = route(&t, client, sa("10.0.9.2:8080")).expect("routed");
        assert_eq!((who.task_id.as_str(), to.service.as_str()), ("c1", "web"));
        // A mapped address is the same task.
        let mapped: IpAddr = "::ffff:10.0.9.5".parse().expect("ip");
        assert!(route(&t, mapped, sa("10.0.9.2:80")).is_ok());
        assert!(matches!(
            route(&t, client, sa("10.0.8.2:5432")),
            Err(VipError::OtherNetwork { .. })
        ));
        assert!(matches!(
            route(&t, client, sa("10.0.9.3:80")),
            Err(VipError::NotVirtual(_))
        ));
        assert!(matches!(
            route(&t, "10.0.9.6".parse().expect("ip"), sa("10.0.9.2:80")),
            Err(VipError::UnknownClient(_))
        ));
    }

    /// On loopback, with no NAT: the listener's own address stands for the
    /// virtual address, 127.0.0.2 for a task that refuses (its port is
    /// closed) and 127.0.0.3 for one that answers. Every connection is
    /// answered.
    #[tokio::test]
    async fn a_connect_that_fails_is_tried_on_the_next_ready_task() {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("listen");
        let port = listener.local_addr().expect("addr").port();
        let live = TcpListener::bind(("127.0.0.3", port))
            .await
            .expect("backend");
        tokio::spawn(async move {
            while let Ok((mut s, _)) = live.accept().await {
                tokio::spawn(async move {
                    let _ = s.write_all(b"hello").await;
                });
            }
        });
        let mut t = VipTable::default();
        t.vips.insert(
            Ipv4Addr::LOCALHOST,
            VipRoute {
                vni: 1,
                service: "web".into(),
                backends: vec![Ipv4Addr::new(127, 0, 0, 2), Ipv4Addr::new(127, 0, 0, 3)],
            },
        );
        t.clients.insert(
            Ipv4Addr::LOCALHOST,
            Client {
                task_id: "c".into(),
                netns: "here".into(),
                vni: 1,
            },
        );
        let (stats, stop, served) = serving(listener, t);
        for i in 0..6 {
            let mut c = TcpStream::connect(("127.0.0.1", port))
                .await
                .expect("connect");
            let mut got = Vec::new();
            c.read_to_end(&mut got).await.expect("read");
            assert_eq!(got, b"hello", "connection {i}");
        }
        assert_eq!(stats.connections.load(RELAXED), 6);
        // The first connection met the closed one and went on; after that
        // failure the closed one is tried last, so no other waits for it.
        assert_eq!(stats.retries.load(RELAXED), 1);
        assert_eq!(stats.refused.load(RELAXED), 0);
        stop.cancel();
        served.await.expect("served");
    }

    /// CPU time of the calling thread.
    fn thread_cpu() -> Duration {
        let mut ts = libc::timespec {
            tv_sec: 0,
            tv_nsec: 0,
        };
        // SAFETY: clock_gettime writes one timespec we own.
        let rc = unsafe { libc::clock_gettime(libc::CLOCK_THREAD_CPUTIME_ID, &mut ts) };
        assert_eq!(rc, 0, "clock_gettime");
        Duration::new(ts.tv_sec as u64, ts.tv_nsec as u32)
    }

    /// When the table's sender is gone (the wiring loop ended first), the
    /// proxy keeps the last table and waits: it spun on the closed
    /// channel, a core's worth of CPU, before.
    #[test]
    fn a_proxy_whose_table_has_no_sender_waits_idle() {
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .expect("runtime");
        let used = runtime.block_on(async {
            let listener = TcpListener::bind("127.0.0.1:0").await.expect("listen");
            let (_, stop, served) = serving(listener, VipTable::default());
            let before = thread_cpu();
            tokio::time::sleep(Duration::from_millis(300)).await;
            let used = thread_cpu() - before;
            stop.cancel();
            served.await.expect("served");
            used
        });
        assert!(
            used < Duration::from_millis(100),
            "{used:?} of CPU in 300 ms"
        );
    }

    /// A task that is not of this node is refused with a reset.
    #[tokio::test]
    async fn a_stranger_is_refused() {
        use tokio::io::AsyncReadExt;
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("listen");
        let port = listener.local_addr().expect("addr").port();
        let (stats, stop, served) = serving(listener, VipTable::default());
        let mut c = TcpStream::connect(("127.0.0.1", port))
            .await
            .expect("connect");
        let mut got = Vec::new();
        let read = c.read_to_end(&mut got).await;
        assert!(read.is_err() || got.is_empty(), "{read:?} {got:?}");
        assert_eq!(stats.refused.load(RELAXED), 1);
        stop.cancel();
        served.await.expect("served");
    }
}

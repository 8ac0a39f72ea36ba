//! One published port's listener and the connections it accepts: bind
//! (retrying while another program holds the port), accept, pick a
//! backend, connect with retries, send the PROXY header, copy.

use std::io;
use std::net::{IpAddr, SocketAddr};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use thiserror::Error;
use tokio::net::{TcpListener, TcpSocket, TcpStream};
use tokio::runtime::Handle;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tracing::{debug, info, warn};

use crate::balance::pick;
use crate::copy::{copy_both, CopyMode};
use crate::proxy;
use crate::state::{now_ms, Held, PortState, Route};

const RELAXED: Ordering = Ordering::Relaxed;

/// Pending connections the kernel queues per port before accept.
const BACKLOG: u32 = 1024;

/// The pause before the second bind attempt of a port in use.
const FIRST_BIND_RETRY: Duration = Duration::from_millis(50);

/// Pause after an accept error (out of descriptors, most likely) so that
/// the loop does not spin while the condition lasts.
const ACCEPT_ERROR_PAUSE: Duration = Duration::from_millis(100);

/// Why a connection was not forwarded, or why its forwarding ended early.
#[derive(Debug, Error)]
pub enum ConnError {
    #[error("no backend in rotation")]
    NoBackend,
    #[error("over the service's cap of {0} connections")]
    OverCap(u64),
    #[error("every backend failed ({tried} tried); last: {last}")]
    AllFailed { tried: usize, last: String },
    #[error("cannot send the PROXY header to {addr}: {source}")]
    Proxy {
        addr: SocketAddr,
        #[source]
        source: io::Error,
    },
    #[error(transparent)]
    Copy(#[from] crate::copy::CopyError),
}

/// What every listener and connection of one mesh shares.
#[derive(Debug, Clone)]
pub struct Ctx {
    pub bind_ip: IpAddr,
    pub connect_timeout: Duration,
    pub bind_retry: Duration,
    pub copy: CopyMode,
    /// The mesh's shutdown: it ends connections too, whereas a listener's
    /// own stop token (its port left the table) ends only the listener.
    pub shutdown: CancellationToken,
    pub conns: TaskTracker,
    /// The data path's threads; empty: the caller's runtime.
    pub workers: Arc<[Worker]>,
    pub accept: AcceptMode,
}

/// How accepted connections reach the data path's threads.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub enum AcceptMode {
    /// One acceptor on the caller's runtime hands each connection to the
    /// thread with the fewest open connections.
    Handover,
    /// A socket per thread (`SO_REUSEPORT`), the kernel steering each new
    /// connection to the socket of the CPU that received it (a classic BPF
    /// program, `SO_ATTACH_REUSEPORT_CBPF`), each thread pinned to its
    /// CPU: no hand-over and no wake of another thread, unless the thread
    /// has far more open connections than another (one NIC queue sends
    /// everything to one CPU): then it hands the connection over.
    /// Where the kernel refuses the program, [`AcceptMode::Handover`].
    #[default]
    Steered,
}

/// The text stats show for a port that cannot be opened.
pub(crate) fn bind_error_text(addr: SocketAddr, err: &io::Error) -> String {
    if err.kind() == io::ErrorKind::AddrInUse {
        format!("address in use: {addr} is held by another program")
    } else {
        format!("cannot listen on {addr}: {err}")
    }
}

/// A TCP socket for `addr`'s family, to listen on.
fn listen_socket(addr: SocketAddr) -> io::Result<TcpSocket> {
    let socket = if addr.is_ipv4() {
        TcpSocket::new_v4()?
    } else {
        TcpSocket::new_v6()?
    };
    // So that a restarted node gets its ports back while connections of
    // the previous run linger in TIME_WAIT.
    socket.set_reuseaddr(true)?;
    Ok(socket)
}

fn bind(addr: SocketAddr) -> io::Result<TcpListener> {
    let socket = listen_socket(addr)?;
    socket.bind(addr)?;
    socket.listen(BACKLOG)
}

/// `n` sockets on `addr` in one `SO_REUSEPORT` group, the kernel choosing
/// among them by the receiving CPU (modulo `n`). Sockets of another
/// program on the port make the first bind fail, as [`bind`] does.
fn bind_steered(addr: SocketAddr, n: usize) -> io::Result<Vec<std::net::TcpListener>> {
    use std::os::fd::AsRawFd;
    let mut out: Vec<std::net::TcpListener> = Vec::with_capacity(n);
    let mut addr = addr;
    for i in 0..n {
        let socket = listen_socket(addr)?;
        socket.set_reuseport(true)?;
        if i == 0 {
            attach_cpu_steering(socket.as_raw_fd(), n as u32)?;
        }
        socket.bind(addr)?;
        let listener = socket.listen(BACKLOG)?;
        // Port 0: the others join the port the first one got.
        addr = listener.local_addr()?;
        out.push(listener.into_std()?);
    }
    Ok(out)
}

/// Attaches `A = cpu % n; return A` as the group's socket selector.
fn attach_cpu_steering(fd: std::os::fd::RawFd, n: u32) -> io::Result<()> {
    const SO_ATTACH_REUSEPORT_CBPF: libc::c_int = 51;
    // SKF_AD_OFF + SKF_AD_CPU: the ancillary load of the current CPU.
    const CPU: u32 = (-0x1000i32 + 36) as u32;
    let mut program = [
        libc::sock_filter {
            code: (libc::BPF_LD | libc::BPF_W | libc::BPF_ABS) as u16,
            jt: 0,
            jf: 0,
            k: CPU,
        },
        libc::sock_filter {
            code: (libc::BPF_ALU | libc::BPF_MOD | libc::BPF_K) as u16,
            jt: 0,
            jf: 0,
            k: n.max(1),
        },
        libc::sock_filter {
            code: (libc::BPF_RET | libc::BPF_A) as u16,
            jt: 0,
            jf: 0,
            k: 0,
        },
    ];
    let fprog = libc::sock_fprog {
        len: program.len() as u16,
        filter: program.as_mut_ptr(),
    };
    // SAFETY: setsockopt on a socket we own, with a pointer to a
    // sock_fprog that lives across the call; the kernel copies it.
    let rc = unsafe {
        libc::setsockopt(
            fd,
            libc::SOL_SOCKET,
            SO_ATTACH_REUSEPORT_CBPF,
            (&fprog as *const libc::sock_fprog).cast(),
            std::mem::size_of::<libc::sock_fprog>() as libc::socklen_t,
        )
    };
    if rc != 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

/// Accepts on `listener` until `stop`, giving each connection to
/// `take`; after an accept error (out of descriptors, most likely) it
/// pauses so that the loop does not spin while the condition lasts.
async fn accept_loop(
    listener: &TcpListener,
    port: &PortState,
    stop: &CancellationToken,
    mut take: impl FnMut(TcpStream, SocketAddr),
) {
    loop {
        let accepted = tokio::select! {
            _ = stop.cancelled() => return,
            accepted = listener.accept() => accepted,
        };
        match accepted {
            Ok((stream, peer)) => take(stream, peer),
            Err(err) => {
                warn!(port = port.published, error = %err, "mesh accept failed");
                tokio::select! {
                    _ = stop.cancelled() => return,
                    _ = tokio::time::sleep(ACCEPT_ERROR_PAUSE) => {}
                }
            }
        }
    }
}

/// The accept loop of one steered socket, on its thread's runtime: every
/// connection it accepts is served there, unless this thread has far more
/// open than another ([`here_or_least`]).
async fn accept_here(
    listener: std::net::TcpListener,
    index: usize,
    port: Arc<PortState>,
    ctx: Ctx,
    stop: CancellationToken,
) {
    let listener = match TcpListener::from_std(listener) {
        Ok(l) => l,
        Err(err) => {
            warn!(port = port.published, error = %err, "cannot register a mesh socket");
            return;
        }
    };
    accept_loop(
        &listener,
        &port,
        &stop,
        |stream, peer| match here_or_least(&ctx.workers, index) {
            Some(own) => {
                let (port, ctx2) = (port.clone(), ctx.clone());
                ctx.conns.spawn(async move {
                    let _open = own;
                    serve(stream, peer, port, ctx2).await;
                });
            }
            None => dispatch(stream, peer, &port, &ctx),
        },
    )
    .await;
}

/// Listens on the port until `stop` (the port left the table) or the
/// mesh's shutdown; while the port cannot be bound, retries every
/// `bind_retry` and shows why in the port's stats.
///
/// [`AcceptMode::Steered`] (the default): a socket per data-path thread,
/// the kernel choosing by the receiving CPU, each thread accepting and
/// serving its own (handing over only when it has far more open than
/// another). [`AcceptMode::Handover`]: the accept loop runs here, on the
/// caller's runtime, and each connection goes to the thread with the
/// fewest open. Measured against each other and against two designs
/// dropped before (a socket per thread chosen by the kernel's hash: bursts
/// on one thread, p99 1.6 times HAProxy's; one socket every thread accepts
/// on: each connection woke both) in docs/mesh.md.
pub async fn listen(port: Arc<PortState>, ctx: Ctx, stop: CancellationToken) {
    let addr = SocketAddr::new(ctx.bind_ip, port.published);
    let mut warned: Option<String> = None;
    let mut first = true;
    let steered = ctx.accept == AcceptMode::Steered && !ctx.workers.is_empty();
    let listener = loop {
        let bound = if steered {
            match bind_steered(addr, ctx.workers.len()) {
                Ok(sockets) => Ok(Bound::Steered(sockets)),
                Err(err) if err.kind() == io::ErrorKind::AddrInUse => Err(err),
                Err(err) => {
                    warn!(port = port.published, error = %err,
                        "cannot steer connections by CPU here; one acceptor hands them over");
                    bind(addr).map(Bound::One)
                }
            }
        } else {
            bind(addr).map(Bound::One)
        };
        match bound {
            Ok(listener) => break listener,
            // A port removed and added back in quick succession can find
            // its previous listener not yet dropped: one quick retry before
            // calling the port held by another program.
            Err(err) if first && err.kind() == io::ErrorKind::AddrInUse => {
                first = false;
                tokio::select! {
                    _ = stop.cancelled() => return,
                    _ = tokio::time::sleep(FIRST_BIND_RETRY) => {}
                }
            }
            Err(err) => {
                first = false;
                let text = bind_error_text(addr, &err);
                port.listening.store(false, RELAXED);
                port.set_error(Some(text.clone()));
                // Once per distinct error, not once per retry.
                if warned.as_deref() != Some(&text) {
                    let service = port.route().service_name.clone();
                    warn!(%service, port = port.published, error = %err,
                        "cannot open the published port; retrying every {:?}", ctx.bind_retry);
                    warned = Some(text);
                }
                tokio::select! {
                    _ = stop.cancelled() => return,
                    _ = tokio::time::sleep(ctx.bind_retry) => {}
                }
            }
        }
    };
    port.set_error(None);
    port.listening.store(true, RELAXED);
    info!(service = %port.route().service_name, port = port.published, "mesh listening");
    match listener {
        Bound::One(listener) => {
            accept_loop(&listener, &port, &stop, |stream, peer| {
                dispatch(stream, peer, &port, &ctx)
            })
            .await
        }
        Bound::Steered(sockets) => {
            // Each loop ends with `stop`.
            let loops = TaskTracker::new();
            for (index, (socket, worker)) in sockets.into_iter().zip(ctx.workers.iter()).enumerate()
            {
                let run = accept_here(socket, index, port.clone(), ctx.clone(), stop.clone());
                loops.spawn_on(run, &worker.handle);
            }
            loops.close();
            loops.wait().await;
        }
    }
    port.listening.store(false, RELAXED);
    debug!(port = port.published, "mesh listener closed");
}

/// What [`listen`] bound.
enum Bound {
    One(TcpListener),
    Steered(Vec<std::net::TcpListener>),
}

/// Hands an accepted connection to the data-path thread with the fewest
/// open connections (the caller's runtime when there is none).
fn dispatch(stream: TcpStream, peer: SocketAddr, port: &Arc<PortState>, ctx: &Ctx) {
    let (port, ctx2) = (port.clone(), ctx.clone());
    // Counted from now, so that the next accept already sees it.
    let Some(worker) = least_loaded(&ctx.workers) else {
        ctx.conns.spawn(serve(stream, peer, port, ctx2));
        return;
    };
    // Off this runtime's poller, onto the serving thread's (still
    // non-blocking).
    let stream = match stream.into_std() {
        Ok(stream) => stream,
        Err(err) => {
            debug!(port = port.published, %peer, error = %err, "cannot hand an accepted connection over");
            return;
        }
    };
    let handle = worker.handle.clone();
    let run = async move {
        let _open = worker;
        let stream = match TcpStream::from_std(stream) {
            Ok(stream) => stream,
            Err(err) => {
                debug!(port = port.published, %peer, error = %err, "cannot serve an accepted connection");
                return;
            }
        };
        serve(stream, peer, port, ctx2).await;
    };
    ctx.conns.spawn_on(run, &handle);
}

/// The data-path thread with the fewest open connections (ties go to the
/// first), counted one more until the returned reference is dropped.
fn least_loaded(workers: &Arc<[Worker]>) -> Option<WorkerRef> {
    let (index, worker) = workers
        .iter()
        .enumerate()
        .min_by_key(|(_, w)| w.open.load(RELAXED))?;
    worker.open.fetch_add(1, RELAXED);
    Some(WorkerRef {
        workers: workers.clone(),
        index,
    })
}

/// Thread `index` counted one more, unless it has far more open
/// connections than the least loaded (more than twice as many and 16
/// more): then None, and the connection is handed over.
fn here_or_least(workers: &Arc<[Worker]>, index: usize) -> Option<WorkerRef> {
    let own = workers.get(index)?.open.load(RELAXED);
    let least = workers
        .iter()
        .map(|w| w.open.load(RELAXED))
        .min()
        .unwrap_or(own);
    if own > least.saturating_mul(2) + 16 {
        return None;
    }
    workers[index].open.fetch_add(1, RELAXED);
    Some(WorkerRef {
        workers: workers.clone(),
        index,
    })
}

/// One data-path thread as the listeners see it: where to spawn, and how
/// many connections it serves now.
#[derive(Debug)]
pub struct Worker {
    pub handle: Handle,
    pub open: AtomicU64,
}

/// A [`Worker`] of the shared list, owned by a connection's future.
struct WorkerRef {
    workers: Arc<[Worker]>,
    index: usize,
}

impl std::ops::Deref for WorkerRef {
    type Target = Worker;
    fn deref(&self) -> &Worker {
        &self.workers[self.index]
    }
}

impl Drop for WorkerRef {
    fn drop(&mut self) {
        self.workers[self.index].open.fetch_sub(1, RELAXED);
    }
}

/// One accepted connection, from the choice of backend to its end.
async fn serve(client: TcpStream, peer: SocketAddr, port: Arc<PortState>, ctx: Ctx) {
    let route = port.route();
    let result = tokio::select! {
        _ = ctx.shutdown.cancelled() => return,
        result = forward(&client, peer, &port, &route, &ctx) => result,
    };
    match result {
        Ok(()) => {}
        Err(err @ (ConnError::NoBackend | ConnError::OverCap(_) | ConnError::AllFailed { .. })) => {
            if port.refuse() {
                warn!(service = %route.service_name, port = port.published, %peer, error = %err,
                    "mesh refused a connection (further refusals on this port logged at debug for a while)");
            } else {
                debug!(service = %route.service_name, port = port.published, %peer, error = %err,
                    "mesh refused a connection");
            }
        }
        Err(err) => {
            debug!(service = %route.service_name, port = port.published, %peer, error = %err,
                "mesh connection ended");
        }
    }
    // Dropping `client` closes it; refused clients see end of stream.
}

async fn forward(
    client: &TcpStream,
    peer: SocketAddr,
    port: &PortState,
    route: &Route,
    ctx: &Ctx,
) -> Result<(), ConnError> {
    if route.backends.is_empty() {
        return Err(ConnError::NoBackend);
    }
    let _service = Held::up_to(&route.service_open, route.max_connections)
        .ok_or(ConnError::OverCap(route.max_connections))?;

    let n = route.backends.len();
    let start = port.cursor.fetch_add(1, RELAXED);
    let mut tried = vec![false; n];
    let mut last_err = String::new();
    let mut failed: Option<usize> = None;
    let (index, backend, _held) = loop {
        let Some(i) = pick(route.balance, n, start, &tried, |i| {
            route.backends[i].current.load(RELAXED)
        }) else {
            return Err(ConnError::AllFailed {
                tried: n,
                last: last_err,
            });
        };
        // A retry is counted on the backend that failed, once another one
        // is there to take the connection.
        if let Some(f) = failed.take() {
            route.backends[f].retries.fetch_add(1, RELAXED);
        }
        tried[i] = true;
        let b = &route.backends[i];
        // Counted before the connect completes so that connections
        // accepted meanwhile see the load and go elsewhere.
        let held = Held::quiet(&b.current);
        b.last_check.store(now_ms(), RELAXED);
        let connected = tokio::time::timeout(ctx.connect_timeout, TcpStream::connect(b.addr)).await;
        match connected {
            Ok(Ok(stream)) => {
                b.last_ok.store(true, RELAXED);
                held.raise(&b.max);
                b.total.fetch_add(1, RELAXED);
                break (i, stream, held);
            }
            Ok(Err(err)) => last_err = format!("{}: {err}", b.addr),
            Err(_) => last_err = format!("{}: no answer within {:?}", b.addr, ctx.connect_timeout),
        }
        b.last_ok.store(false, RELAXED);
        b.errors.fetch_add(1, RELAXED);
        debug!(port = port.published, backend = %b.addr, task = %b.task_id, error = %last_err,
            "mesh backend connect failed; trying another");
        failed = Some(i);
    };
    let _listener = Held::up(&port.current, &port.max);
    port.total.fetch_add(1, RELAXED);
    let b = &route.backends[index];
    // The ends already chose how to batch their writes; Nagle on the
    // middle hop would only delay small ones again. Failing to set it
    // costs latency, not correctness.
    let _ = backend.set_nodelay(true);
    let _ = client.set_nodelay(true);

    if let Some(version) = route.proxy_protocol {
        // The address the client connected to, which on a wildcard
        // listener is the node's address the client used.
        let local = client
            .local_addr()
            .unwrap_or(SocketAddr::new(ctx.bind_ip, port.published));
        let header = proxy::header(version, peer, local);
        write_all(&backend, &header)
            .await
            .map_err(|source| ConnError::Proxy {
                addr: b.addr,
                source,
            })?;
    }
    copy_both(
        ctx.copy,
        client,
        &backend,
        &b.bytes_in,
        &b.bytes_out,
        route.idle_timeout,
    )
    .await?;
    Ok(())
}

async fn write_all(stream: &TcpStream, mut bytes: &[u8]) -> io::Result<()> {
    while !bytes.is_empty() {
        stream.writable().await?;
        match stream.try_write(bytes) {
            Ok(n) => bytes = &bytes[n..],
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => continue,
            Err(e) => return Err(e),
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Pins the calling thread to CPU `cpu`; false where it cannot be.
    fn pin(cpu: usize) -> bool {
        // SAFETY: as in `mesh::pin_to_cpu`.
        unsafe {
            let mut set: libc::cpu_set_t = std::mem::zeroed();
            libc::CPU_SET(cpu, &mut set);
            libc::sched_setaffinity(0, std::mem::size_of::<libc::cpu_set_t>(), &set) == 0
        }
    }

    /// The steered sockets share one port, and a connection made on CPU
    /// `c` (loopback: the handshake runs on the sender's CPU) is accepted
    /// by socket `c`.
    #[test]
    fn steered_sockets_share_a_port_and_take_their_cpus_connections() {
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .expect("runtime");
        let _in = runtime.enter();
        let sockets = bind_steered("127.0.0.1:0".parse().expect("addr"), 2).expect("bind");
        let port = sockets[0].local_addr().expect("addr").port();
        assert!(sockets
            .iter()
            .all(|s| s.local_addr().expect("addr").port() == port));
        for s in &sockets {
            s.set_nonblocking(true).expect("nonblocking");
        }
        let cpus = std::thread::available_parallelism().map_or(1, usize::from);
        let mut on_cpu = Vec::new();
        for cpu in 0..cpus.min(2) {
            let pinned = std::thread::spawn(move || {
                if !pin(cpu) {
                    return None;
                }
                let conns: Vec<_> = (0..5)
                    .map(|_| std::net::TcpStream::connect(("127.0.0.1", port)).expect("connect"))
                    .collect();
                Some(conns)
            })
            .join()
            .expect("thread");
            on_cpu.push((cpu, pinned));
        }
        let mut accepted = [0usize; 2];
        for (i, s) in sockets.iter().enumerate() {
            while s.accept().is_ok() {
                accepted[i] += 1;
            }
        }
        let made: usize = on_cpu.iter().filter(|(_, c)| c.is_some()).count() * 5;
        assert_eq!(accepted.iter().sum::<usize>(), made, "{accepted:?}");
        for (cpu, conns) in &on_cpu {
            if conns.is_some() && cpus >= 2 {
                assert_eq!(accepted[*cpu], 5, "CPU {cpu}'s connections: {accepted:?}");
            }
        }
    }

    #[test]
    fn a_thread_keeps_its_connection_unless_it_has_far_more_than_another() {
        let runtime = tokio::runtime::Builder::new_current_thread()
            .build()
            .expect("runtime");
        let workers: Arc<[Worker]> = (0..2)
            .map(|_| Worker {
                handle: runtime.handle().clone(),
                open: AtomicU64::new(0),
            })
            .collect();
        workers[0].open.store(20, RELAXED);
        workers[1].open.store(10, RELAXED);
        let kept = here_or_least(&workers, 0).expect("kept: 20 is not over 2 * 10 + 16");
        assert_eq!(workers[0].open.load(RELAXED), 21);
        drop(kept);
        assert_eq!(workers[0].open.load(RELAXED), 20);
        workers[0].open.store(37, RELAXED);
        assert!(here_or_least(&workers, 0).is_none(), "37 > 36: handed over");
        assert_eq!(workers[0].open.load(RELAXED), 37);
        assert!(here_or_least(&workers, 1).is_some());
    }
}

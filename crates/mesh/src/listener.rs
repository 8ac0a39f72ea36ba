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
}

/// The text stats show for a port that cannot be opened.
pub(crate) fn bind_error_text(addr: SocketAddr, err: &io::Error) -> String {
    if err.kind() == io::ErrorKind::AddrInUse {
        format!("address in use: {addr} is held by another program")
    } else {
        format!("cannot listen on {addr}: {err}")
    }
}

fn bind(addr: SocketAddr) -> io::Result<TcpListener> {
    let socket = if addr.is_ipv4() {
        TcpSocket::new_v4()?
    } else {
        TcpSocket::new_v6()?
    };
    // So that a restarted node gets its ports back while connections of
    // the previous run linger in TIME_WAIT.
    socket.set_reuseaddr(true)?;
    socket.bind(addr)?;
    socket.listen(BACKLOG)
}

/// Listens on the port until `stop` (the port left the table) or the
/// mesh's shutdown; while the port cannot be bound, retries every
/// `bind_retry` and shows why in the port's stats.
///
/// The accept loop runs here, on the caller's runtime; each accepted
/// connection goes to the data-path thread with the fewest open
/// connections, where it stays until it ends (HAProxy balances accepted
/// connections over its threads the same way). Two other designs were
/// measured (docs/mesh.md): a socket per thread with `SO_REUSEPORT` (the
/// kernel's hash put bursts of new connections on a busy thread while the
/// other idled: p99 1.6 times HAProxy's with a connection per request)
/// and one socket shared by every thread (each new connection woke both:
/// 1.19 times HAProxy's CPU per request).
pub async fn listen(port: Arc<PortState>, ctx: Ctx, stop: CancellationToken) {
    let addr = SocketAddr::new(ctx.bind_ip, port.published);
    let mut warned: Option<String> = None;
    let mut first = true;
    let listener = loop {
        match bind(addr) {
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
    loop {
        let accepted = tokio::select! {
            _ = stop.cancelled() => break,
            accepted = listener.accept() => accepted,
        };
        match accepted {
            Ok((stream, peer)) => dispatch(stream, peer, &port, &ctx),
            Err(err) => {
                warn!(port = port.published, error = %err, "mesh accept failed");
                tokio::select! {
                    _ = stop.cancelled() => break,
                    _ = tokio::time::sleep(ACCEPT_ERROR_PAUSE) => {}
                }
            }
        }
    }
    port.listening.store(false, RELAXED);
    debug!(port = port.published, "mesh listener closed");
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

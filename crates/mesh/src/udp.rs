//! UDP ports: forwarded by flow. The datagrams of one client address go
//! to one backend, through a socket of the flow's own connected to it,
//! so that the backend's answers come back on that socket and are sent
//! to the client from the published port. A flow ends after
//! [`FLOW_TIMEOUT`] (or the service's idle timeout) without a datagram
//! either way, and at once when its backend leaves rotation: the next
//! datagram of that client picks a backend in rotation, rather than
//! going for minutes to one that is gone (Swarm's moby#36878).
//!
//! One task per port owns the flow table (no lock); one task per flow
//! carries the answers back.

use std::collections::hash_map::Entry;
use std::collections::HashMap;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use tokio::net::UdpSocket;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;
use tracing::{debug, info, warn};

use crate::balance::pick;
use crate::listener::{bind_error_text, Ctx};
use crate::state::{now_ms, BackendState, PortState};

const RELAXED: Ordering = Ordering::Relaxed;

/// How long a flow lives without a datagram either way when the service
/// sets no idle timeout.
pub const FLOW_TIMEOUT: Duration = Duration::from_secs(30);
/// The largest datagram carried (the most UDP over IPv4 can hold).
const MAX_DATAGRAM: usize = 65_507;
/// How often idle flows and flows to departed backends are looked for.
const SWEEP: Duration = Duration::from_millis(250);

/// One client's flow.
struct Flow {
    socket: Arc<UdpSocket>,
    backend: Arc<BackendState>,
    /// Milliseconds since `epoch` of the last datagram either way.
    last: Arc<AtomicU64>,
    stop: CancellationToken,
}

impl Drop for Flow {
    fn drop(&mut self) {
        self.stop.cancel();
        self.backend.current.fetch_sub(1, RELAXED);
    }
}

/// Serves a UDP port until `stop` or the mesh's shutdown.
pub async fn serve(port: Arc<PortState>, ctx: Ctx, stop: CancellationToken) {
    let addr = SocketAddr::new(ctx.bind_ip, port.published);
    let socket = loop {
        match UdpSocket::bind(addr).await {
            Ok(s) => break Arc::new(s),
            Err(err) => {
                let text = bind_error_text(addr, &err);
                if port
                    .error
                    .lock()
                    .map(|e| e.as_deref() != Some(text.as_str()))
                    .unwrap_or(true)
                {
                    warn!(service = %port.route().service_name, port = port.published, error = %err,
                        "cannot open the published UDP port; retrying every {:?}", ctx.bind_retry);
                }
                port.listening.store(false, RELAXED);
                port.set_error(Some(text));
                tokio::select! {
                    _ = stop.cancelled() => return,
                    _ = tokio::time::sleep(ctx.bind_retry) => {}
                }
            }
        }
    };
    port.set_error(None);
    port.listening.store(true, RELAXED);
    info!(service = %port.route().service_name, port = port.published, "mesh listening (udp)");
    let epoch = Instant::now();
    let mut flows: HashMap<SocketAddr, Flow> = HashMap::new();
    let mut buf = vec![0u8; MAX_DATAGRAM];
    let mut sweep = tokio::time::interval(SWEEP);
    loop {
        let received = tokio::select! {
            _ = stop.cancelled() => break,
            _ = ctx.shutdown.cancelled() => break,
            _ = sweep.tick() => {
                let route = port.route();
                let timeout = route.idle_timeout.unwrap_or(FLOW_TIMEOUT);
                let now = epoch.elapsed().as_millis() as u64;
                let before = flows.len();
                flows.retain(|_, f| {
                    f.backend.in_rotation.load(RELAXED)
                        && route.backends.iter().any(|b| Arc::ptr_eq(b, &f.backend))
                        && now.saturating_sub(f.last.load(RELAXED)) < timeout.as_millis() as u64
                });
                if flows.len() != before {
                    port.current.store(flows.len() as u64, RELAXED);
                }
                continue;
            }
            received = socket.recv_from(&mut buf) => received,
        };
        let (n, client) = match received {
            Ok(r) => r,
            Err(err) => {
                // An ICMP error of an earlier send, most likely: the next
                // datagram is unaffected.
                debug!(port = port.published, error = %err, "udp receive failed");
                continue;
            }
        };
        let stale = flows
            .get(&client)
            .is_some_and(|f| !f.backend.in_rotation.load(RELAXED));
        if stale {
            flows.remove(&client);
        }
        let flow = match flows.entry(client) {
            Entry::Occupied(e) => e.into_mut(),
            Entry::Vacant(v) => match open_flow(&port, &ctx, &socket, client, epoch).await {
                Some(flow) => {
                    port.total.fetch_add(1, RELAXED);
                    v.insert(flow)
                }
                None => {
                    if port.refuse() {
                        warn!(service = %port.route().service_name, port = port.published,
                            "udp datagram dropped: no backend in rotation");
                    }
                    continue;
                }
            },
        };
        flow.last.store(epoch.elapsed().as_millis() as u64, RELAXED);
        let sent = flow.socket.send(&buf[..n]).await;
        port.current.store(flows.len() as u64, RELAXED);
        port.max.fetch_max(flows.len() as u64, RELAXED);
        let Some(flow) = flows.get(&client) else {
            continue;
        };
        match sent {
            Ok(sent) => {
                flow.backend.bytes_in.fetch_add(sent as u64, RELAXED);
            }
            Err(err) => {
                // The backend's port is closed (ICMP unreachable): the flow
                // ends, and the next datagram picks another backend.
                flow.backend.errors.fetch_add(1, RELAXED);
                flow.backend.last_ok.store(false, RELAXED);
                debug!(port = port.published, backend = %flow.backend.addr, error = %err,
                    "udp send to the backend failed; flow ended");
                flows.remove(&client);
                port.current.store(flows.len() as u64, RELAXED);
            }
        }
    }
    flows.clear();
    port.current.store(0, RELAXED);
    port.listening.store(false, RELAXED);
}

/// A new flow for `client`: a backend by the service's balance (least
/// flows, or round robin), a socket connected to it, and the task that
/// carries its answers back through `listener`.
async fn open_flow(
    port: &Arc<PortState>,
    ctx: &Ctx,
    listener: &Arc<UdpSocket>,
    client: SocketAddr,
    epoch: Instant,
) -> Option<Flow> {
    let route = port.route();
    let n = route.backends.len();
    let mut tried = vec![false; n];
    let start = port.cursor.fetch_add(1, RELAXED);
    while let Some(i) = pick(route.balance, n, start, &tried, |i| {
        route.backends[i].current.load(RELAXED)
    }) {
        tried[i] = true;
        let backend = route.backends[i].clone();
        let local: IpAddr = if backend.addr.is_ipv4() {
            Ipv4Addr::UNSPECIFIED.into()
        } else {
            Ipv6Addr::UNSPECIFIED.into()
        };
        let socket = match UdpSocket::bind((local, 0)).await {
            Ok(s) => s,
            Err(err) => {
                warn!(error = %err, "cannot open a udp socket for a flow");
                return None;
            }
        };
        backend.last_check.store(now_ms(), RELAXED);
        if let Err(err) = socket.connect(backend.addr).await {
            backend.errors.fetch_add(1, RELAXED);
            backend.last_ok.store(false, RELAXED);
            debug!(backend = %backend.addr, error = %err, "udp flow cannot reach the backend");
            continue;
        }
        backend.last_ok.store(true, RELAXED);
        backend.current.fetch_add(1, RELAXED);
        backend.total.fetch_add(1, RELAXED);
        backend
            .max
            .fetch_max(backend.current.load(RELAXED), RELAXED);
        let socket = Arc::new(socket);
        let last = Arc::new(AtomicU64::new(epoch.elapsed().as_millis() as u64));
        let stop = ctx.shutdown.child_token();
        let answers = {
            let (socket, listener, last, stop, backend) = (
                socket.clone(),
                listener.clone(),
                last.clone(),
                stop.clone(),
                backend.clone(),
            );
            async move {
                let mut buf = vec![0u8; MAX_DATAGRAM];
                loop {
                    let got = tokio::select! {
                        _ = stop.cancelled() => return,
                        got = socket.recv(&mut buf) => got,
                    };
                    let Ok(n) = got else {
                        // ICMP port unreachable for an earlier send: the
                        // table's next change or the timeout ends the flow.
                        continue;
                    };
                    last.store(epoch.elapsed().as_millis() as u64, RELAXED);
                    if let Ok(sent) = listener.send_to(&buf[..n], client).await {
                        backend.bytes_out.fetch_add(sent as u64, RELAXED);
                    }
                }
            }
        };
        ctx.conns.spawn(answers);
        return Some(Flow {
            socket,
            backend,
            last,
            stop,
        });
    }
    None
}

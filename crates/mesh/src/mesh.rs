//! [`Mesh`]: the listeners of one node, kept in step with the
//! [`MeshTable`] it is handed, and the snapshot of their counters.
//!
//! The table loop is the only writer of the port map and the routes; the
//! data path reads its own port's route and never takes the map's lock.

use std::collections::{BTreeMap, HashMap};
use std::net::{IpAddr, Ipv4Addr};
use std::sync::atomic::AtomicU64;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use flotilla_types::mesh::{MeshService, MeshStats, MeshTable};
use flotilla_types::port::Protocol;
use tokio::runtime::Handle;
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tracing::warn;

use crate::copy::CopyMode;
use crate::listener::{listen, Ctx};
use crate::state::{PortState, Route};

/// Connect timeout to a backend when none is configured.
pub const DEFAULT_CONNECT_TIMEOUT: Duration = Duration::from_secs(2);
/// Open connections per service and node when the service sets no cap:
/// bounds the memory a flood can take (two copy buffers per connection).
pub const DEFAULT_MAX_CONNECTIONS: u32 = 10_000;
/// How often a port that cannot be bound is tried again.
pub const DEFAULT_BIND_RETRY: Duration = Duration::from_secs(3);

/// How one node's mesh listens and forwards.
#[derive(Debug, Clone)]
pub struct MeshConfig {
    /// The address published ports listen on (the wildcard on a node).
    pub bind_ip: IpAddr,
    /// This node, as stats name it.
    pub node_id: String,
    pub connect_timeout: Duration,
    /// The cap of a service that sets no `max_connections`.
    pub default_max_connections: u32,
    pub bind_retry: Duration,
    pub copy: CopyMode,
    /// Threads of the data path's own: each runs a single-threaded
    /// runtime and the connections it accepts (or is handed), start to
    /// end. 0 runs the data path on the caller's runtime instead.
    pub workers: usize,
    /// How accepted connections reach those threads.
    pub accept: crate::listener::AcceptMode,
}

impl MeshConfig {
    /// Listening on every address of the node, with the defaults.
    pub fn new(node_id: impl Into<String>) -> MeshConfig {
        MeshConfig {
            bind_ip: IpAddr::V4(Ipv4Addr::UNSPECIFIED),
            node_id: node_id.into(),
            connect_timeout: DEFAULT_CONNECT_TIMEOUT,
            default_max_connections: DEFAULT_MAX_CONNECTIONS,
            bind_retry: DEFAULT_BIND_RETRY,
            copy: CopyMode::default(),
            workers: default_workers(),
            accept: crate::listener::AcceptMode::Steered,
        }
    }
}

/// One data-path thread per core the process may use.
pub fn default_workers() -> usize {
    std::thread::available_parallelism().map_or(1, usize::from)
}

/// The data path's threads: each runs a single-threaded runtime until the
/// mesh stops. A connection lives on the thread that accepted it, so its
/// wakeups never cross threads and the daemon's control work (raft, the
/// API, snapshot builds) never queues in front of its copy.
struct Workers {
    handles: Vec<Handle>,
    stop: CancellationToken,
    threads: Vec<std::thread::JoinHandle<()>>,
}

impl Workers {
    /// Starts `n` threads; a thread that cannot be started is left out
    /// (with a warning), and with none the caller's runtime serves.
    fn start(n: usize, pin: bool) -> Workers {
        let stop = CancellationToken::new();
        let mut handles = Vec::with_capacity(n);
        let mut threads = Vec::with_capacity(n);
        for i in 0..n {
            let runtime = match tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
            {
                Ok(runtime) => runtime,
                Err(err) => {
                    warn!(error = %err, "cannot start a mesh runtime; fewer data-path threads");
                    continue;
                }
            };
            let handle = runtime.handle().clone();
            let token = stop.clone();
            let spawned = std::thread::Builder::new()
                .name(format!("flotilla-mesh-{i}"))
                .spawn(move || {
                    if pin {
                        pin_to_cpu(i);
                    }
                    runtime.block_on(token.cancelled())
                });
            match spawned {
                Ok(thread) => {
                    handles.push(handle);
                    threads.push(thread);
                }
                Err(err) => {
                    warn!(error = %err, "cannot start a mesh thread; fewer data-path threads");
                }
            }
        }
        Workers {
            handles,
            stop,
            threads,
        }
    }

    /// Ends the threads; tasks still on them are dropped with their
    /// runtime. Called once every listener and connection has ended.
    async fn stop(mut self) {
        self.stop.cancel();
        let threads = std::mem::take(&mut self.threads);
        let joined = tokio::task::spawn_blocking(move || {
            for thread in threads {
                let _ = thread.join();
            }
        });
        let _ = joined.await;
    }
}

/// Pins the calling thread to the `i`-th CPU this process may use
/// (modulo their number); left unpinned if that cannot be done.
fn pin_to_cpu(i: usize) {
    let size = std::mem::size_of::<libc::cpu_set_t>();
    // SAFETY: cpu_set_t is plain data (zeroed is the empty set); the
    // CPU_* macros stay within it; sched_{get,set}affinity(0) act on the
    // calling thread with a set of the size given.
    unsafe {
        let mut allowed: libc::cpu_set_t = std::mem::zeroed();
        if libc::sched_getaffinity(0, size, &mut allowed) != 0 {
            return;
        }
        let cpus: Vec<usize> = (0..libc::CPU_SETSIZE as usize)
            .filter(|&c| libc::CPU_ISSET(c, &allowed))
            .collect();
        let Some(&cpu) = cpus.get(i % cpus.len().max(1)) else {
            return;
        };
        let mut set: libc::cpu_set_t = std::mem::zeroed();
        libc::CPU_SET(cpu, &mut set);
        if libc::sched_setaffinity(0, size, &set) != 0 {
            warn!(error = %std::io::Error::last_os_error(), "cannot pin a mesh thread");
        }
    }
}

impl Drop for Workers {
    /// A table loop dropped before its end still ends its threads.
    fn drop(&mut self) {
        self.stop.cancel();
    }
}

/// A port's state and the token that closes its listener.
struct Open {
    state: Arc<PortState>,
    stop: CancellationToken,
}

struct Inner {
    config: MeshConfig,
    ports: Mutex<BTreeMap<(u16, Protocol), Open>>,
}

/// One node's routing mesh. Cloning gives another handle to the same
/// mesh: keep one for [`Mesh::stats`] and give one to [`Mesh::run`].
#[derive(Clone)]
pub struct Mesh {
    inner: Arc<Inner>,
}

impl std::fmt::Debug for Mesh {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Mesh")
            .field("config", &self.inner.config)
            .finish_non_exhaustive()
    }
}

impl Mesh {
    pub fn new(config: MeshConfig) -> Mesh {
        Mesh {
            inner: Arc::new(Inner {
                config,
                ports: Mutex::new(BTreeMap::new()),
            }),
        }
    }

    /// The counters now, ports in order. Cheap enough to call per API
    /// request: it copies atomics and takes no lock the data path takes
    /// per connection.
    pub fn stats(&self) -> MeshStats {
        let ports = self
            .inner
            .ports
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        MeshStats {
            node_id: self.inner.config.node_id.clone(),
            listeners: ports.values().map(|open| open.state.stats()).collect(),
        }
    }

    /// Serves the table and follows its changes until `shutdown`, which
    /// closes every listener and connection. If the table's sender goes
    /// away, the last table keeps being served until `shutdown`.
    pub async fn run(self, mut table: watch::Receiver<MeshTable>, shutdown: CancellationToken) {
        let config = &self.inner.config;
        // Steered sockets are chosen by the receiving CPU: each thread on
        // its own CPU serves what that CPU received.
        let workers = Workers::start(
            config.workers,
            config.accept == crate::listener::AcceptMode::Steered,
        );
        let ctx = Ctx {
            bind_ip: config.bind_ip,
            connect_timeout: config.connect_timeout,
            bind_retry: config.bind_retry,
            copy: config.copy,
            shutdown: shutdown.clone(),
            conns: TaskTracker::new(),
            workers: workers
                .handles
                .iter()
                .map(|handle| crate::listener::Worker {
                    handle: handle.clone(),
                    open: AtomicU64::new(0),
                })
                .collect(),
            accept: config.accept,
        };
        let listeners = TaskTracker::new();
        let mut gauges: HashMap<String, Arc<AtomicU64>> = HashMap::new();
        loop {
            let current = table.borrow_and_update().clone();
            self.apply(&current, &ctx, &listeners, &mut gauges);
            tokio::select! {
                _ = shutdown.cancelled() => break,
                changed = table.changed() => {
                    if changed.is_err() {
                        shutdown.cancelled().await;
                        break;
                    }
                }
            }
        }
        {
            let mut ports = self
                .inner
                .ports
                .lock()
                .unwrap_or_else(PoisonError::into_inner);
            for open in ports.values() {
                open.stop.cancel();
            }
            ports.clear();
        }
        listeners.close();
        ctx.conns.close();
        listeners.wait().await;
        ctx.conns.wait().await;
        workers.stop().await;
    }

    /// Brings the listeners in line with `table`: new ports open, gone
    /// ports close (their connections go on), kept ports get their new
    /// route in place.
    fn apply(
        &self,
        table: &MeshTable,
        ctx: &Ctx,
        listeners: &TaskTracker,
        gauges: &mut HashMap<String, Arc<AtomicU64>>,
    ) {
        let default_cap = self.inner.config.default_max_connections;
        let mut wanted: BTreeMap<(u16, Protocol), (&MeshService, &flotilla_types::mesh::MeshPort)> =
            BTreeMap::new();
        for service in &table.services {
            for port in &service.ports {
                let key = (port.published, port.protocol);
                if let Some((other, _)) = wanted.get(&key) {
                    // The allocator never hands a port out twice; if a table
                    // says so anyway, the first service keeps it.
                    warn!(port = port.published, service = %service.service_name,
                        holder = %other.service_name, "published port listed twice; ignored");
                    continue;
                }
                wanted.insert(key, (service, port));
            }
        }
        gauges.retain(|id, _| table.services.iter().any(|s| &s.service_id == id));

        let mut ports = self
            .inner
            .ports
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        ports.retain(|published, open| {
            let keep = wanted.contains_key(published);
            if !keep {
                open.stop.cancel();
            }
            keep
        });
        for ((published, protocol), (service, port)) in wanted {
            let gauge = gauges
                .entry(service.service_id.clone())
                .or_default()
                .clone();
            let existing = ports
                .get(&(published, protocol))
                .map(|open| open.state.clone());
            let backends = port
                .backends
                .iter()
                .map(|b| match &existing {
                    Some(state) => state.backend_state(b),
                    None => Arc::new(crate::state::BackendState::new(b)),
                })
                .collect();
            let route = Route {
                service_name: service.service_name.clone(),
                balance: service.options.balance,
                proxy_protocol: service.options.proxy_protocol,
                idle_timeout: service.options.idle_timeout_ms.map(Duration::from_millis),
                max_connections: u64::from(service.options.max_connections.unwrap_or(default_cap)),
                service_open: gauge,
                backends,
            };
            match existing {
                Some(state) => state.set_route(route),
                None => {
                    let state = Arc::new(PortState::with_protocol(published, protocol, route));
                    let stop = ctx.shutdown.child_token();
                    match protocol {
                        Protocol::Tcp => {
                            listeners.spawn(listen(state.clone(), ctx.clone(), stop.clone()));
                        }
                        Protocol::Udp => {
                            listeners.spawn(crate::udp::serve(
                                state.clone(),
                                ctx.clone(),
                                stop.clone(),
                            ));
                        }
                    }
                    ports.insert((published, protocol), Open { state, stop });
                }
            }
        }
    }
}

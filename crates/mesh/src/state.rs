//! The shared state of the data path: one [`PortState`] per published
//! port, its current [`Route`] (service settings and backends in
//! rotation), and the counters of each [`BackendState`].
//!
//! A connection reads the route once, when it is accepted (a read lock and
//! an `Arc` clone), and from then on touches only atomics. The table
//! update swaps the route under the write lock; connections already open
//! keep the route they started with, which is what lets a backend leave
//! rotation without losing its open connections.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, PoisonError, RwLock};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use flotilla_types::mesh::{Backend, BackendStats, Balance, ListenerStats, ProxyProtocol};
use flotilla_types::port::Protocol;

/// Counters only go up except gauges, which guards bring back down.
const RELAXED: Ordering = Ordering::Relaxed;

/// Milliseconds since the Unix epoch, for `last_check`.
pub fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}

/// One backend's counters. Shared by every route that names the same
/// task at the same address, so that they survive table updates.
#[derive(Debug)]
pub struct BackendState {
    pub task_id: String,
    pub addr: SocketAddr,
    pub in_rotation: AtomicBool,
    pub current: AtomicU64,
    pub max: AtomicU64,
    pub total: AtomicU64,
    pub bytes_in: AtomicU64,
    pub bytes_out: AtomicU64,
    pub errors: AtomicU64,
    pub retries: AtomicU64,
    /// 0: never tried.
    pub last_check: AtomicU64,
    pub last_ok: AtomicBool,
}

impl BackendState {
    pub fn new(backend: &Backend) -> BackendState {
        BackendState {
            task_id: backend.task_id.clone(),
            addr: backend.addr,
            in_rotation: AtomicBool::new(true),
            current: AtomicU64::new(0),
            max: AtomicU64::new(0),
            total: AtomicU64::new(0),
            bytes_in: AtomicU64::new(0),
            bytes_out: AtomicU64::new(0),
            errors: AtomicU64::new(0),
            retries: AtomicU64::new(0),
            last_check: AtomicU64::new(0),
            last_ok: AtomicBool::new(false),
        }
    }

    pub fn same(&self, backend: &Backend) -> bool {
        self.task_id == backend.task_id && self.addr == backend.addr
    }

    pub fn stats(&self) -> BackendStats {
        let last_check = self.last_check.load(RELAXED);
        BackendStats {
            task_id: self.task_id.clone(),
            addr: self.addr.to_string(),
            in_rotation: self.in_rotation.load(RELAXED),
            current: self.current.load(RELAXED),
            max: self.max.load(RELAXED),
            total: self.total.load(RELAXED),
            bytes_in: self.bytes_in.load(RELAXED),
            bytes_out: self.bytes_out.load(RELAXED),
            errors: self.errors.load(RELAXED),
            retries: self.retries.load(RELAXED),
            last_check: (last_check != 0).then_some(last_check),
            last_ok: self.last_ok.load(RELAXED),
        }
    }
}

/// What a connection needs to know of its service, fixed for the life of
/// the connection.
#[derive(Debug)]
pub struct Route {
    pub service_name: String,
    pub balance: Balance,
    pub proxy_protocol: Option<ProxyProtocol>,
    pub idle_timeout: Option<Duration>,
    pub max_connections: u64,
    /// Connections open through this node to any port of the service: the
    /// cap is per service, so its ports share one gauge.
    pub service_open: Arc<AtomicU64>,
    pub backends: Vec<Arc<BackendState>>,
}

/// One published port: its listener's status, counters and route.
#[derive(Debug)]
pub struct PortState {
    pub published: u16,
    pub protocol: Protocol,
    route: RwLock<Arc<Route>>,
    pub listening: AtomicBool,
    pub error: Mutex<Option<String>>,
    pub current: AtomicU64,
    pub max: AtomicU64,
    pub total: AtomicU64,
    pub refused: AtomicU64,
    /// Where the next connection's walk over the backends starts.
    pub cursor: AtomicUsize,
    /// Backends that left rotation with connections still open; shown in
    /// stats until those end.
    departed: Mutex<Vec<Arc<BackendState>>>,
    /// When a refusal was last logged at warn, to rate-limit the log.
    last_refused_warn: AtomicU64,
}

/// Refusals are logged at warn at most this often per port.
const REFUSED_WARN_EVERY_MS: u64 = 10_000;

impl PortState {
    pub fn new(published: u16, route: Route) -> PortState {
        PortState::with_protocol(published, Protocol::Tcp, route)
    }

    pub fn with_protocol(published: u16, protocol: Protocol, route: Route) -> PortState {
        PortState {
            published,
            protocol,
            route: RwLock::new(Arc::new(route)),
            listening: AtomicBool::new(false),
            error: Mutex::new(None),
            current: AtomicU64::new(0),
            max: AtomicU64::new(0),
            total: AtomicU64::new(0),
            refused: AtomicU64::new(0),
            cursor: AtomicUsize::new(0),
            departed: Mutex::new(Vec::new()),
            last_refused_warn: AtomicU64::new(0),
        }
    }

    pub fn route(&self) -> Arc<Route> {
        self.route
            .read()
            .unwrap_or_else(PoisonError::into_inner)
            .clone()
    }

    /// The backend state for `backend`: the one this port already has for
    /// it (in rotation or departed), or a new one.
    pub fn backend_state(&self, backend: &Backend) -> Arc<BackendState> {
        let known = self
            .route()
            .backends
            .iter()
            .chain(
                self.departed
                    .lock()
                    .unwrap_or_else(PoisonError::into_inner)
                    .iter(),
            )
            .find(|b| b.same(backend))
            .cloned();
        known.unwrap_or_else(|| Arc::new(BackendState::new(backend)))
    }

    /// Puts `route` in place; backends of the old route it no longer names
    /// leave rotation and are kept for stats while they have connections.
    pub fn set_route(&self, route: Route) {
        let new = Arc::new(route);
        for b in &new.backends {
            b.in_rotation.store(true, RELAXED);
        }
        let old = std::mem::replace(
            &mut *self.route.write().unwrap_or_else(PoisonError::into_inner),
            new.clone(),
        );
        let mut departed = self.departed.lock().unwrap_or_else(PoisonError::into_inner);
        departed.retain(|d| !new.backends.iter().any(|b| Arc::ptr_eq(b, d)));
        for b in &old.backends {
            if !new.backends.iter().any(|n| Arc::ptr_eq(n, b)) {
                b.in_rotation.store(false, RELAXED);
                departed.push(b.clone());
            }
        }
        departed.retain(|d| d.current.load(RELAXED) > 0);
    }

    pub fn set_error(&self, error: Option<String>) {
        *self.error.lock().unwrap_or_else(PoisonError::into_inner) = error;
    }

    /// Counts a refused connection; true when it should be logged at warn.
    pub fn refuse(&self) -> bool {
        self.refused.fetch_add(1, RELAXED);
        let now = now_ms();
        let last = self.last_refused_warn.load(RELAXED);
        now.saturating_sub(last) >= REFUSED_WARN_EVERY_MS
            && self
                .last_refused_warn
                .compare_exchange(last, now, RELAXED, RELAXED)
                .is_ok()
    }

    pub fn stats(&self) -> ListenerStats {
        let route = self.route();
        let mut backends: Vec<BackendStats> = route.backends.iter().map(|b| b.stats()).collect();
        {
            let mut departed = self.departed.lock().unwrap_or_else(PoisonError::into_inner);
            departed.retain(|d| d.current.load(RELAXED) > 0);
            backends.extend(departed.iter().map(|d| d.stats()));
        }
        ListenerStats {
            service_name: route.service_name.clone(),
            published: self.published,
            protocol: self.protocol,
            listening: self.listening.load(RELAXED),
            error: self
                .error
                .lock()
                .unwrap_or_else(PoisonError::into_inner)
                .clone(),
            current: self.current.load(RELAXED),
            max: self.max.load(RELAXED),
            total: self.total.load(RELAXED),
            refused: self.refused.load(RELAXED),
            backends,
        }
    }
}

/// An open-connection gauge held up while the guard lives, with its
/// high-water mark; dropping the guard (also on cancellation or panic)
/// brings it back down.
pub struct Held<'a>(&'a AtomicU64);

impl<'a> Held<'a> {
    pub fn up(current: &'a AtomicU64, max: &AtomicU64) -> Held<'a> {
        let now = current.fetch_add(1, RELAXED) + 1;
        max.fetch_max(now, RELAXED);
        Held(current)
    }

    /// Holds `current` up without touching a high-water mark yet (see
    /// [`Held::raise`]): a connect attempt that fails should not count.
    pub fn quiet(current: &'a AtomicU64) -> Held<'a> {
        current.fetch_add(1, RELAXED);
        Held(current)
    }

    /// Raises `max` to the gauge's value now.
    pub fn raise(&self, max: &AtomicU64) {
        max.fetch_max(self.0.load(RELAXED), RELAXED);
    }

    /// Holds `current` up unless it is at `cap` already.
    pub fn up_to(current: &'a AtomicU64, cap: u64) -> Option<Held<'a>> {
        current
            .fetch_update(RELAXED, RELAXED, |n| (n < cap).then_some(n + 1))
            .ok()
            .map(|_| Held(current))
    }
}

impl Drop for Held<'_> {
    fn drop(&mut self) {
        self.0.fetch_sub(1, RELAXED);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn backend(task: &str, port: u16) -> Backend {
        Backend {
            task_id: task.into(),
            node_id: "n".into(),
            addr: SocketAddr::from(([127, 0, 0, 1], port)),
        }
    }

    fn route(backends: Vec<Arc<BackendState>>) -> Route {
        Route {
            service_name: "web".into(),
            balance: Balance::RoundRobin,
            proxy_protocol: None,
            idle_timeout: None,
            max_connections: 10,
            service_open: Arc::default(),
            backends,
        }
    }

    #[test]
    fn a_departed_backend_stays_while_busy_and_keeps_its_counters_if_back() {
        let (a, b) = (backend("a", 1), backend("b", 2));
        let port = PortState::new(80, route(vec![]));
        port.set_route(route(vec![port.backend_state(&a), port.backend_state(&b)]));
        let sa = port.backend_state(&a);
        let busy = Held::quiet(&sa.current);
        sa.total.store(7, RELAXED);

        port.set_route(route(vec![port.backend_state(&b)]));
        let stats = port.stats();
        let gone = stats
            .backends
            .iter()
            .find(|x| x.task_id == "a")
            .expect("kept");
        assert!(!gone.in_rotation && gone.current == 1);

        // Back in the table: the same counters, in rotation again.
        port.set_route(route(vec![port.backend_state(&a), port.backend_state(&b)]));
        let back = port.stats().backends.into_iter().find(|x| x.task_id == "a");
        assert_eq!(back.map(|x| (x.in_rotation, x.total)), Some((true, 7)));

        port.set_route(route(vec![port.backend_state(&b)]));
        drop(busy);
        assert!(port.stats().backends.iter().all(|x| x.task_id != "a"));
    }

    #[test]
    fn the_cap_holds() {
        let open = AtomicU64::new(0);
        let one = Held::up_to(&open, 2);
        let two = Held::up_to(&open, 2);
        assert!(one.is_some() && two.is_some());
        assert!(Held::up_to(&open, 2).is_none());
        drop(one);
        assert!(Held::up_to(&open, 2).is_some());
        assert_eq!(open.load(RELAXED), 1);
    }
}

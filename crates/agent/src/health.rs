//! Health checks: when to probe a task and what the results mean.
//!
//! - [`HealthMonitor`] is Docker's health state machine without I/O: the
//!   supervisor of a task asks it when the next probe is due, runs the probe
//!   through its driver and feeds the result back. Time is passed in, so the
//!   rules are tested without clocks.
//! - [`effective_check`] decides which check a task gets from its template
//!   and the check its image brings.
//! - [`http_probe`] and [`tcp_probe`] are the network probes, shared by the
//!   drivers: the process driver aims them at `127.0.0.1`, a container
//!   driver at the container's address.
//!
//! Docker's rules, as `HealthMonitor` applies them:
//! - The health starts [`Health::Starting`].
//! - A probe runs every `interval_ms`, counted from the end of the previous
//!   one, and is bounded by `timeout_ms`. One deliberate difference: Docker
//!   runs the first probe one interval after the start; Flotilla runs it at
//!   once, so that a task that is ready quickly is reported healthy quickly
//!   (rolling updates wait for that) instead of one interval later.
//! - A success makes the task [`Health::Healthy`] and resets the failure
//!   streak.
//! - `retries` failures in a row make it [`Health::Unhealthy`].
//! - While the task is still `Starting`, failures of probes that began
//!   within `start_period_ms` of the task's start do not count. A success
//!   during the start period makes the task healthy, and from then on every
//!   failure counts (Docker's start period only protects a task that has
//!   never been healthy).
//! - Zero timings and zero retries mean Docker's defaults (30 s, 30 s, 3), as
//!   an image's HEALTHCHECK without them does.

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use flotilla_types::{
    Health, HealthCheck, HealthTest, DEFAULT_HEALTH_INTERVAL_MS, DEFAULT_HEALTH_RETRIES,
    DEFAULT_HEALTH_TIMEOUT_MS,
};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

use crate::driver::Probe;

/// How much of an HTTP response is read at most: the status line must fit
/// in the first part, the rest is only drained so that the server sees a
/// polite client.
const HTTP_HEAD_MAX: usize = 1024;
const HTTP_DRAIN_MAX: usize = 64 * 1024;

/// Docker's health state machine for one task.
#[derive(Debug, Clone)]
pub struct HealthMonitor {
    interval: Duration,
    timeout: Duration,
    retries: u32,
    /// Probes that begin before this instant are within the start period.
    start_period_end: Instant,
    next_probe: Instant,
    health: Health,
    /// Failures in a row that counted.
    streak: u32,
    last_failure: Option<String>,
}

impl HealthMonitor {
    /// A monitor for a task that started running at `started_at`; the first
    /// probe is due at once.
    pub fn new(check: &HealthCheck, started_at: Instant) -> Self {
        let or_default =
            |ms: u64, default: u64| Duration::from_millis(if ms == 0 { default } else { ms });
        HealthMonitor {
            interval: or_default(check.interval_ms, DEFAULT_HEALTH_INTERVAL_MS),
            timeout: or_default(check.timeout_ms, DEFAULT_HEALTH_TIMEOUT_MS),
            retries: if check.retries == 0 {
                DEFAULT_HEALTH_RETRIES
            } else {
                check.retries
            },
            start_period_end: started_at + Duration::from_millis(check.start_period_ms),
            next_probe: started_at,
            health: Health::Starting,
            streak: 0,
            last_failure: None,
        }
    }

    /// Continues from a health observed earlier (a task adopted after an
    /// agent restart keeps being healthy until its probes say otherwise).
    /// An unhealthy task resumes with a full failure streak.
    pub fn resumed(mut self, health: Health) -> Self {
        self.health = health;
        if health == Health::Unhealthy {
            self.streak = self.retries;
        }
        self
    }

    /// The current health.
    pub fn health(&self) -> Health {
        self.health
    }

    /// When the next probe should start.
    pub fn next_probe(&self) -> Instant {
        self.next_probe
    }

    /// How long one probe may take.
    pub fn timeout(&self) -> Duration {
        self.timeout
    }

    /// Failures in a row that counted toward `retries`.
    pub fn failing_streak(&self) -> u32 {
        self.streak
    }

    /// What the last failed probe saw (also one during the start period);
    /// `None` until a probe failed.
    pub fn last_failure(&self) -> Option<&str> {
        self.last_failure.as_deref()
    }

    /// Takes the result of the probe that was due at [`Self::next_probe`]
    /// and ended at `now`. Returns the new health when it changed.
    ///
    /// Whether a failure falls in the start period is judged by when the
    /// probe began (as Docker does): the time it was due, which is when the
    /// supervisor starts it.
    pub fn feed(&mut self, result: Probe, now: Instant) -> Option<Health> {
        let probe_began = self.next_probe.min(now);
        self.next_probe = now + self.interval;
        let before = self.health;
        match result {
            Probe::Healthy => {
                self.streak = 0;
                self.health = Health::Healthy;
            }
            Probe::Unhealthy(output) => {
                self.last_failure = Some(output);
                let in_start_period =
                    self.health == Health::Starting && probe_began < self.start_period_end;
                if !in_start_period {
                    self.streak = self.streak.saturating_add(1);
                    if self.streak >= self.retries {
                        self.health = Health::Unhealthy;
                    }
                }
            }
        }
        (self.health != before).then_some(self.health)
    }
}

/// Whether the template leaves the check to the workload itself (no check
/// given, or [`HealthTest::Image`]): then the driver's
/// [`crate::Driver::own_health`] must be asked.
pub fn wants_own_check(template: Option<&HealthCheck>) -> bool {
    template.is_none_or(|c| c.test == HealthTest::Image)
}

/// The check a task runs, from its template's and the one the workload
/// brings (`own`, only consulted when [`wants_own_check`]):
/// - [`HealthTest::None`] disables checks, the workload's too;
/// - [`HealthTest::Image`] runs the workload's test with the template's
///   timings;
/// - no template check runs the workload's check as it is;
/// - any other test runs as given.
///
/// `None` means no check: the task's health stays unset.
pub fn effective_check(
    template: Option<&HealthCheck>,
    own: Option<HealthCheck>,
) -> Option<HealthCheck> {
    let runnable = |c: &HealthCheck| !matches!(c.test, HealthTest::None | HealthTest::Image);
    match template {
        Some(t) if t.test == HealthTest::None => None,
        Some(t) if t.test == HealthTest::Image => own.filter(runnable).map(|o| HealthCheck {
            test: o.test,
            ..t.clone()
        }),
        Some(t) => Some(t.clone()),
        None => own.filter(runnable),
    }
}

/// An HTTP/1.0 `GET path` on `addr`; healthy on a 2xx or 3xx status. The
/// whole exchange is bounded by `timeout`.
pub async fn http_probe(addr: SocketAddr, path: &str, timeout: Duration) -> Probe {
    if path
        .bytes()
        .any(|b| b.is_ascii_whitespace() || b.is_ascii_control())
    {
        return Probe::Unhealthy(format!("invalid health check path {path:?}"));
    }
    let path = if path.starts_with('/') {
        path.to_string()
    } else {
        format!("/{path}")
    };
    let deadline = tokio::time::Instant::now() + timeout;
    let exchange = async {
        let mut stream = TcpStream::connect(addr).await.map_err(connect_error)?;
        let request = format!(
            "GET {path} HTTP/1.0\r\nHost: {addr}\r\nUser-Agent: flotilla-health\r\nConnection: close\r\n\r\n"
        );
        stream
            .write_all(request.as_bytes())
            .await
            .map_err(|e| e.to_string())?;
        let mut head = Vec::with_capacity(256);
        let mut buf = [0u8; 512];
        while !head.windows(2).any(|w| w == b"\r\n") && head.len() < HTTP_HEAD_MAX {
            let n = stream.read(&mut buf).await.map_err(|e| e.to_string())?;
            if n == 0 {
                break;
            }
            head.extend_from_slice(&buf[..n]);
        }
        Ok::<_, String>((stream, head))
    };
    let (mut stream, head) = match tokio::time::timeout_at(deadline, exchange).await {
        Ok(Ok(got)) => got,
        Ok(Err(e)) => return Probe::Unhealthy(e),
        Err(_) => return Probe::Unhealthy(timed_out(timeout)),
    };
    let probe = match parse_status(&head) {
        Some(code) if (200..400).contains(&code) => Probe::Healthy,
        Some(code) => Probe::Unhealthy(format!("HTTP {code}")),
        None => Probe::Unhealthy("invalid HTTP response".to_string()),
    };
    // Reading the rest lets the server finish writing instead of failing on
    // a reset connection; the verdict is already known.
    let drain = async {
        let mut buf = [0u8; 4096];
        let mut total = head.len();
        while total < HTTP_DRAIN_MAX {
            match stream.read(&mut buf).await {
                Ok(0) | Err(_) => break,
                Ok(n) => total += n,
            }
        }
    };
    let _ = tokio::time::timeout_at(deadline, drain).await;
    probe
}

/// A TCP connection to `addr` within `timeout`.
pub async fn tcp_probe(addr: SocketAddr, timeout: Duration) -> Probe {
    match tokio::time::timeout(timeout, TcpStream::connect(addr)).await {
        Ok(Ok(_)) => Probe::Healthy,
        Ok(Err(e)) => Probe::Unhealthy(connect_error(e)),
        Err(_) => Probe::Unhealthy(timed_out(timeout)),
    }
}

/// The message of a probe that ran out of time.
pub fn timed_out(timeout: Duration) -> String {
    format!("probe timed out after {} ms", timeout.as_millis())
}

fn connect_error(e: std::io::Error) -> String {
    if e.kind() == std::io::ErrorKind::ConnectionRefused {
        "connection refused".to_string()
    } else {
        e.to_string()
    }
}

/// The status code of `HTTP/1.x NNN ...`.
fn parse_status(head: &[u8]) -> Option<u16> {
    let line = head.split(|b| *b == b'\n').next()?;
    let line = std::str::from_utf8(line).ok()?.trim_end();
    let mut parts = line.split(' ');
    if !parts.next()?.starts_with("HTTP/") {
        return None;
    }
    let code = parts.next()?;
    if code.len() != 3 {
        return None;
    }
    code.parse().ok()
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use tokio::net::TcpListener;

    fn check(retries: u32, start_period_ms: u64) -> HealthCheck {
        HealthCheck {
            test: HealthTest::Tcp { port: 1 },
            interval_ms: 100,
            timeout_ms: 50,
            retries,
            start_period_ms,
        }
    }

    fn ms(n: u64) -> Duration {
        Duration::from_millis(n)
    }

    fn fail(what: &str) -> Probe {
        Probe::Unhealthy(what.to_string())
    }

    #[test]
    fn the_first_probe_is_due_at_once_then_every_interval_after_the_last() {
        let t0 = Instant::now();
        let mut m = HealthMonitor::new(&check(3, 0), t0);
        assert_eq!(m.health(), Health::Starting);
        assert_eq!(m.next_probe(), t0);
        assert_eq!(m.timeout(), ms(50));
        // A probe that took 30 ms: the interval counts from its end.
        m.feed(fail("x"), t0 + ms(30));
        assert_eq!(m.next_probe(), t0 + ms(130));
    }

    #[test]
    fn a_success_makes_the_task_healthy() {
        let t0 = Instant::now();
        let mut m = HealthMonitor::new(&check(3, 0), t0);
        assert_eq!(m.feed(Probe::Healthy, t0), Some(Health::Healthy));
        assert_eq!(m.feed(Probe::Healthy, t0 + ms(100)), None);
        assert_eq!(m.health(), Health::Healthy);
        assert_eq!(m.last_failure(), None);
    }

    #[test]
    fn retries_failures_in_a_row_make_it_unhealthy() {
        let t0 = Instant::now();
        let mut m = HealthMonitor::new(&check(3, 0), t0);
        assert_eq!(m.feed(fail("one"), t0), None);
        assert_eq!(m.feed(fail("two"), t0 + ms(100)), None);
        assert_eq!(m.health(), Health::Starting);
        assert_eq!(m.failing_streak(), 2);
        assert_eq!(m.feed(fail("three"), t0 + ms(200)), Some(Health::Unhealthy));
        assert_eq!(m.last_failure(), Some("three"));
        // Further failures change nothing.
        assert_eq!(m.feed(fail("four"), t0 + ms(300)), None);
        assert_eq!(m.health(), Health::Unhealthy);
    }

    #[test]
    fn a_success_resets_the_failure_streak() {
        let t0 = Instant::now();
        let mut m = HealthMonitor::new(&check(2, 0), t0);
        m.feed(Probe::Healthy, t0);
        assert_eq!(m.feed(fail("a"), t0 + ms(100)), None);
        assert_eq!(m.feed(Probe::Healthy, t0 + ms(200)), None);
        assert_eq!(m.failing_streak(), 0);
        assert_eq!(m.feed(fail("b"), t0 + ms(300)), None);
        assert_eq!(m.health(), Health::Healthy);
        assert_eq!(m.feed(fail("c"), t0 + ms(400)), Some(Health::Unhealthy));
    }

    #[test]
    fn an_unhealthy_task_recovers_on_a_success() {
        let t0 = Instant::now();
        let mut m = HealthMonitor::new(&check(1, 0), t0);
        assert_eq!(m.feed(fail("a"), t0), Some(Health::Unhealthy));
        assert_eq!(m.feed(Probe::Healthy, t0 + ms(100)), Some(Health::Healthy));
    }

    #[test]
    fn failures_in_the_start_period_do_not_count() {
        let t0 = Instant::now();
        let mut m = HealthMonitor::new(&check(2, 250), t0);
        // Probes at 0, 100, 200 begin within the start period.
        for at in [0, 100, 200] {
            assert_eq!(m.feed(fail("refused"), t0 + ms(at)), None);
            assert_eq!(m.failing_streak(), 0);
        }
        assert_eq!(m.last_failure(), Some("refused"));
        // Due at 300: past the start period, they count.
        assert_eq!(m.next_probe(), t0 + ms(300));
        assert_eq!(m.feed(fail("refused"), t0 + ms(300)), None);
        assert_eq!(
            m.feed(fail("refused"), t0 + ms(400)),
            Some(Health::Unhealthy)
        );
    }

    #[test]
    fn the_start_period_is_judged_by_when_the_probe_began() {
        let t0 = Instant::now();
        let mut m = HealthMonitor::new(&check(1, 100), t0);
        m.feed(fail("x"), t0 + ms(10));
        // Due at 110 (past the start period): counts.
        assert_eq!(m.feed(fail("x"), t0 + ms(150)), Some(Health::Unhealthy));

        let mut m = HealthMonitor::new(&check(1, 100), t0);
        // Began at 0, ended (timed out) after the start period: not counted.
        assert_eq!(m.feed(fail("timeout"), t0 + ms(120)), None);
    }

    #[test]
    fn a_success_ends_the_start_period() {
        let t0 = Instant::now();
        let mut m = HealthMonitor::new(&check(1, 10_000), t0);
        assert_eq!(m.feed(Probe::Healthy, t0), Some(Health::Healthy));
        // Still within the start period, but the task was healthy: counts.
        assert_eq!(m.feed(fail("gone"), t0 + ms(100)), Some(Health::Unhealthy));
    }

    #[test]
    fn zero_timings_and_retries_mean_dockers_defaults() {
        let t0 = Instant::now();
        let c = HealthCheck {
            interval_ms: 0,
            timeout_ms: 0,
            retries: 0,
            ..check(0, 0)
        };
        let mut m = HealthMonitor::new(&c, t0);
        assert_eq!(m.timeout(), ms(DEFAULT_HEALTH_TIMEOUT_MS));
        m.feed(fail("x"), t0);
        assert_eq!(m.next_probe(), t0 + ms(DEFAULT_HEALTH_INTERVAL_MS));
        m.feed(fail("x"), t0);
        assert_eq!(m.health(), Health::Starting);
        assert_eq!(m.feed(fail("x"), t0), Some(Health::Unhealthy));
    }

    #[test]
    fn a_resumed_monitor_keeps_the_health_it_had() {
        let t0 = Instant::now();
        let mut m = HealthMonitor::new(&check(2, 0), t0).resumed(Health::Healthy);
        assert_eq!(m.next_probe(), t0);
        assert_eq!(m.feed(Probe::Healthy, t0), None);
        let m = HealthMonitor::new(&check(2, 0), t0).resumed(Health::Unhealthy);
        assert_eq!(m.failing_streak(), 2);
    }

    #[test]
    fn effective_checks_follow_the_template_then_the_image() {
        let own = HealthCheck {
            test: HealthTest::Shell {
                command: "curl -f localhost".into(),
            },
            interval_ms: 5_000,
            timeout_ms: 1_000,
            retries: 5,
            start_period_ms: 0,
        };
        let tcp = check(3, 0);
        let with = |test| HealthCheck {
            test,
            ..tcp.clone()
        };

        assert!(wants_own_check(None));
        assert!(wants_own_check(Some(&with(HealthTest::Image))));
        assert!(!wants_own_check(Some(&tcp)));
        assert!(!wants_own_check(Some(&with(HealthTest::None))));

        assert_eq!(effective_check(None, None), None);
        assert_eq!(effective_check(None, Some(own.clone())), Some(own.clone()));
        assert_eq!(
            effective_check(Some(&with(HealthTest::None)), Some(own.clone())),
            None
        );
        assert_eq!(
            effective_check(Some(&with(HealthTest::Image)), Some(own.clone())),
            Some(with(own.test.clone()))
        );
        assert_eq!(effective_check(Some(&with(HealthTest::Image)), None), None);
        assert_eq!(effective_check(Some(&tcp), Some(own.clone())), Some(tcp));
        // An image that disables its check ("NONE") means no check.
        assert_eq!(
            effective_check(None, Some(HealthCheck::new(HealthTest::None))),
            None
        );
    }

    #[test]
    fn status_lines_parse() {
        assert_eq!(parse_status(b"HTTP/1.0 200 OK\r\n"), Some(200));
        assert_eq!(
            parse_status(b"HTTP/1.1 503 Service Unavailable\r\nx"),
            Some(503)
        );
        assert_eq!(parse_status(b"HTTP/1.1 404"), Some(404));
        assert_eq!(parse_status(b"SSH-2.0-OpenSSH\r\n"), None);
        assert_eq!(parse_status(b"HTTP/1.1 20 OK\r\n"), None);
        assert_eq!(parse_status(b""), None);
    }

    /// A server that answers every connection with `response`, then closes.
    async fn serve(response: &'static str) -> (SocketAddr, tokio::task::JoinHandle<Vec<u8>>) {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let server = tokio::spawn(async move {
            let (mut conn, _) = listener.accept().await.unwrap();
            let mut request = Vec::new();
            let mut buf = [0u8; 1024];
            while !request.windows(4).any(|w| w == b"\r\n\r\n") {
                let n = conn.read(&mut buf).await.unwrap();
                if n == 0 {
                    break;
                }
                request.extend_from_slice(&buf[..n]);
            }
            conn.write_all(response.as_bytes()).await.unwrap();
            request
        });
        (addr, server)
    }

    #[tokio::test]
    async fn http_probes_judge_the_status() {
        let (addr, server) = serve("HTTP/1.0 204 No Content\r\n\r\n").await;
        assert_eq!(http_probe(addr, "/ready", ms(2_000)).await, Probe::Healthy);
        let request = String::from_utf8(server.await.unwrap()).unwrap();
        assert!(request.starts_with("GET /ready HTTP/1.0\r\n"), "{request}");

        let (addr, _server) = serve("HTTP/1.1 302 Found\r\nLocation: /x\r\n\r\n").await;
        assert_eq!(http_probe(addr, "/", ms(2_000)).await, Probe::Healthy);

        let (addr, _server) = serve("HTTP/1.1 500 Internal Server Error\r\n\r\noops").await;
        assert_eq!(
            http_probe(addr, "/", ms(2_000)).await,
            Probe::Unhealthy("HTTP 500".into())
        );

        let (addr, _server) = serve("hello\n").await;
        assert_eq!(
            http_probe(addr, "/", ms(2_000)).await,
            Probe::Unhealthy("invalid HTTP response".into())
        );
    }

    #[tokio::test]
    async fn http_probes_time_out_on_a_silent_server() {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        // Accepts (the kernel does) but never answers.
        let started = tokio::time::Instant::now();
        assert_eq!(
            http_probe(addr, "/", ms(200)).await,
            Probe::Unhealthy("probe timed out after 200 ms".into())
        );
        assert!(started.elapsed() < ms(2_000));
        drop(listener);
    }

    #[tokio::test]
    async fn probes_of_a_closed_port_are_refused() {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        assert_eq!(tcp_probe(addr, ms(2_000)).await, Probe::Healthy);
        drop(listener);
        let refused = Probe::Unhealthy("connection refused".into());
        assert_eq!(tcp_probe(addr, ms(2_000)).await, refused);
        assert_eq!(http_probe(addr, "/", ms(2_000)).await, refused);
    }

    #[tokio::test]
    async fn http_probes_refuse_paths_that_would_break_the_request() {
        let addr: SocketAddr = "127.0.0.1:1".parse().unwrap();
        assert!(matches!(
            http_probe(addr, "/a b", ms(100)).await,
            Probe::Unhealthy(m) if m.starts_with("invalid health check path")
        ));
    }
}

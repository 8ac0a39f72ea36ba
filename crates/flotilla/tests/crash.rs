//! Crash safety (issue 9, proof item 3): a manager killed with `kill -9` in
//! the middle of writes, of snapshot builds and of snapshot installs
//! restarts every time, with its log intact and the state that the
//! acknowledged writes say.
//!
//! What is written: registers, services of 0 replicas whose label `n` one
//! client thread each raises (1, 2, 3, ...) with `PUT /v1/services/{name}`
//! over the manager's Unix socket. A register's client knows the last value
//! a manager acknowledged and the last one it sent; a write in flight at
//! the kill may or may not have been applied. A service of pending tasks
//! (a constraint no node meets) makes a snapshot a few tens of KB of LZ4
//! over a few hundred KB of JSON, so that building and installing one
//! takes a while.
//!
//! - `writes_on_one_manager_survive_kill_9` (80 kills; the strongest check,
//!   the manager holds the only copy), `--snapshot-every 50`: writes run
//!   and the manager is killed at a random moment, or right after the write
//!   that makes it build a snapshot (the index comes from its log). After
//!   each kill it must start again on the same data dir; its raft log must
//!   reach the index of every acknowledged write and must not be purged
//!   past what the state machine holds; a read before any write must not
//!   miss an acknowledged write unless it warns that it may be stale (reads
//!   are linearizable); after one more acknowledged write (a barrier), each
//!   register holds a value between its last acknowledged and its last sent
//!   one.
//! - `managers_killed_in_snapshot_install_and_build_converge` (20 kills),
//!   three managers, `--snapshot-every 20`: first the leader, 4 times, right
//!   after the write that is due to make it build a snapshot; the survivors
//!   must hold every acknowledged write, and the old leader must start and
//!   converge. Then followers: killed during writes; the leader writes on
//!   until its log is compacted past them; started and killed again while
//!   they catch up (at a random moment, or just after the log says the
//!   snapshot install began); started again, they must converge to the
//!   leader's registers.
//! - `a_follower_killed_during_a_snapshot_install_starts_again`: the
//!   smallest case of the bug below, outside the 100 kills.
//!
//! Every restart is checked against openraft's start-up line
//! (`get_initial_state`: purged, applied, committed, last log id); the
//! summaries say how many restarts applied log entries again (the state
//! machine is written without fsync, so after a kill it is behind the
//! log), how many kills hit a snapshot build, and where the follower's
//! install was at each catch-up kill.
//!
//! **Found, and fixed: a follower killed while it installs a snapshot
//! never started again** (the second and third tests failed before the
//! fix). openraft 0.9 purges the follower's log up to the snapshot in the
//! same step as it hands the snapshot to the state machine, and the purge
//! committed (log writer, fsync) while `StateMachine::install_snapshot`
//! still decoded and wrote the state; killed in between, the store held a
//! log purged past its state machine and its stored snapshot, and every
//! start panicked in openraft's core (`purge_upto <= snapshot_last_log_id`)
//! while the daemon went on serving a stale state. The purge now waits for
//! the install (`flotilla_raft::storage`, `LogStore::purge`). Details in
//! the doc of the third test.
//!
//! Replay: the seed is printed at the start of each test (`crash: seed N`);
//! `FLOTILLA_CRASH_SEED=N` replays its schedule (the delays and choices;
//! the timing of the processes themselves is not replayed), and
//! `FLOTILLA_CRASH_KILLS=K` sets the total number of kills (a fifth of them
//! on three managers). When a test fails, the daemons' logs are kept in
//! `/tmp/flotilla-crash-SEED-TEST/`.
//!
//! ```text
//! FLOTILLA_CRASH_SEED=N cargo test -p flotilla --test crash -- --nocapture
//! ```

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use anyhow::{anyhow, bail, Context, Result};
use flotilla_api::client::{Client, ClientError};
use flotilla_testkit::{marked_pids, strip_ansi, wait_until, Daemon};
use flotilla_types::{ServiceMode, ServiceSpec, TaskTemplate};
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;

fn bin() -> &'static Path {
    Path::new(env!("CARGO_BIN_EXE_flotilla"))
}

/// One cluster at a time: the two tests together would overload a
/// two-core machine, and the timings of the kills would mean little.
static ONE_AT_A_TIME: Mutex<()> = Mutex::new(());

fn alone() -> std::sync::MutexGuard<'static, ()> {
    ONE_AT_A_TIME
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner())
}

/// The label a register keeps its value in.
const LABEL: &str = "n";
/// How many registers (and client threads) write at a time.
const REGISTERS: usize = 3;
/// Pending tasks in the store, so that building and installing a
/// snapshot takes a while (debug build: about 0.3 s to install 1,000).
const BALLAST_TASKS: u64 = 300;
/// How long one write or read may take.
const CALL_TIMEOUT: Duration = Duration::from_secs(5);

/// The run's seed and its kills.
struct Plan {
    seed: u64,
    /// Kills in the test on one manager.
    one: usize,
    /// Kills in the test on three managers.
    three: usize,
}

/// One seed for the run: both tests print and use the same.
static SEED: std::sync::OnceLock<u64> = std::sync::OnceLock::new();

impl Plan {
    fn from_env() -> Result<Plan> {
        let seed = match std::env::var("FLOTILLA_CRASH_SEED") {
            Ok(s) => s
                .trim()
                .parse()
                .with_context(|| format!("FLOTILLA_CRASH_SEED={s} is not a number"))?,
            Err(_) => *SEED.get_or_init(|| rand::random::<u64>() % 1_000_000),
        };
        let total: usize = match std::env::var("FLOTILLA_CRASH_KILLS") {
            Ok(s) => s
                .trim()
                .parse()
                .with_context(|| format!("FLOTILLA_CRASH_KILLS={s} is not a number"))?,
            Err(_) => 100,
        };
        let three = (total / 5).max(1);
        Ok(Plan {
            seed,
            one: total.saturating_sub(three),
            three,
        })
    }
}

/// Keeps the daemons' logs when a test fails: their data dirs go with
/// them. Declared after the daemons, so that it is dropped first; `done`
/// at the end of a test that passed.
struct KeepLogs {
    to: PathBuf,
    watched: Vec<(String, PathBuf)>,
    done: bool,
}

impl KeepLogs {
    fn new(seed: u64, test: &str) -> KeepLogs {
        KeepLogs {
            to: PathBuf::from(format!("/tmp/flotilla-crash-{seed}-{test}")),
            watched: Vec::new(),
            done: false,
        }
    }

    fn watch(&mut self, name: &str, d: &Daemon) {
        self.watched
            .push((name.to_string(), d.data_dir().to_path_buf()));
    }

    fn done(mut self) {
        self.done = true;
    }
}

impl Drop for KeepLogs {
    fn drop(&mut self) {
        if self.done {
            return;
        }
        for (name, dir) in &self.watched {
            let to = self.to.join(name);
            let _ = std::fs::create_dir_all(&to);
            for entry in std::fs::read_dir(dir).into_iter().flatten().flatten() {
                let file = entry.file_name();
                if file.to_string_lossy().starts_with("daemon-") {
                    let _ = std::fs::copy(entry.path(), to.join(file));
                }
            }
        }
        eprintln!("crash: the daemons' logs are kept in {}", self.to.display());
    }
}

/// A manager on a loopback port of its own, so that it keeps its raft
/// address when it restarts.
fn start_manager(name: &str, extra: &[&str]) -> Result<Daemon> {
    Daemon::start_named(bin(), name, extra)
}

fn socket(d: &Daemon) -> PathBuf {
    d.data_dir().join("flotilla.sock")
}

fn client(d: &Daemon) -> Client {
    Client::unix(socket(d)).with_timeout(CALL_TIMEOUT)
}

fn runtime() -> Result<tokio::runtime::Runtime> {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .context("a tokio runtime")
}

/// A service of 0 replicas, its register label at `value`.
fn spec(name: &str, value: u64) -> ServiceSpec {
    ServiceSpec {
        name: name.into(),
        mode: ServiceMode::Replicated { replicas: 0 },
        labels: [(LABEL.to_string(), value.to_string())]
            .into_iter()
            .collect(),
        task: TaskTemplate {
            command: vec!["sleep".into(), "100000".into()],
            ..Default::default()
        },
        ..Default::default()
    }
}

/// The ballast: `tasks` pending tasks that no node will run.
fn create_ballast(m: &Daemon, tasks: u64) -> Result<()> {
    m.ok(&[
        "service",
        "create",
        "--name",
        "ballast",
        "--replicas",
        &tasks.to_string(),
        "--constraint",
        "node.labels.nowhere==true",
        "-d",
        "--",
        "sleep",
        "100000",
    ])?;
    let info = wait_until(
        "the ballast's tasks to be created",
        Duration::from_secs(30),
        || {
            let info = m.ok(&["info", "--format", "json"])?.json()?;
            Ok((info["tasks"]["pending"].as_u64() == Some(tasks)).then_some(info))
        },
    )?;
    eprintln!(
        "crash: ballast of {} pending tasks",
        info["tasks"]["pending"]
    );
    Ok(())
}

/// One register: a service whose label one client raises.
struct Register {
    name: String,
    /// The highest value a manager acknowledged (or a read after a barrier
    /// showed).
    acked: AtomicU64,
    /// The highest value sent; it may or may not have been applied.
    sent: AtomicU64,
}

impl Register {
    fn new(name: String) -> Register {
        Register {
            name,
            acked: AtomicU64::new(0),
            sent: AtomicU64::new(0),
        }
    }

    /// After a barrier: the value read is known to be in the store.
    fn settle(&self, value: u64) {
        self.acked.store(value, Ordering::SeqCst);
        self.sent.store(value, Ordering::SeqCst);
    }

    fn bounds(&self) -> (u64, u64) {
        (
            self.acked.load(Ordering::SeqCst),
            self.sent.load(Ordering::SeqCst),
        )
    }
}

fn registers() -> Vec<Register> {
    (0..REGISTERS)
        .map(|i| Register::new(format!("r{i}")))
        .collect()
}

/// Creates the registers (at 0) and the barrier service.
fn create_registers(rt: &tokio::runtime::Runtime, m: &Daemon, regs: &[Register]) -> Result<()> {
    let c = client(m);
    for name in regs
        .iter()
        .map(|r| r.name.as_str())
        .chain(std::iter::once("barrier"))
    {
        rt.block_on(c.create_service(&spec(name, 0)))
            .with_context(|| format!("creating {name}"))?;
    }
    Ok(())
}

/// The client threads of one round, writing through one manager.
struct Writers<'a> {
    socket: PathBuf,
    regs: &'a [Register],
    stop: AtomicBool,
    /// Set just before a kill of the manager written to: errors from then
    /// on are expected.
    killing: AtomicBool,
    /// The highest raft index (the service's version) acknowledged.
    max_index: AtomicU64,
    /// Writes acknowledged in this round.
    acked_writes: AtomicU64,
    unexpected: Mutex<Vec<String>>,
}

impl<'a> Writers<'a> {
    fn new(d: &Daemon, regs: &'a [Register]) -> Writers<'a> {
        Writers {
            socket: socket(d),
            regs,
            stop: AtomicBool::new(false),
            killing: AtomicBool::new(false),
            max_index: AtomicU64::new(0),
            acked_writes: AtomicU64::new(0),
            unexpected: Mutex::new(Vec::new()),
        }
    }

    fn note(&self, what: String) {
        if let Ok(mut u) = self.unexpected.lock() {
            u.push(what);
        }
    }

    fn unexpected(&self) -> Vec<String> {
        self.unexpected
            .lock()
            .map(|u| u.clone())
            .unwrap_or_default()
    }

    /// Runs `main` while one thread per register writes; the threads stop
    /// when it returns, or at their first error.
    fn run<T>(&self, main: impl FnOnce() -> T) -> T {
        std::thread::scope(|s| {
            for reg in self.regs {
                s.spawn(move || self.write_loop(reg));
            }
            let out = main();
            self.stop.store(true, Ordering::SeqCst);
            out
        })
    }

    fn write_loop(&self, reg: &Register) {
        let rt = match runtime() {
            Ok(rt) => rt,
            Err(e) => return self.note(format!("{e:#}")),
        };
        let c = Client::unix(&self.socket).with_timeout(CALL_TIMEOUT);
        while !self.stop.load(Ordering::SeqCst) {
            let n = reg.sent.load(Ordering::SeqCst) + 1;
            reg.sent.store(n, Ordering::SeqCst);
            match rt.block_on(c.replace_service(&reg.name, &spec(&reg.name, n), None)) {
                Ok(view) => {
                    reg.acked.store(n, Ordering::SeqCst);
                    self.max_index.fetch_max(view.version, Ordering::SeqCst);
                    self.acked_writes.fetch_add(1, Ordering::SeqCst);
                }
                Err(e) => {
                    if matches!(e, ClientError::Unreachable { .. }) {
                        // Not connected: nothing was sent.
                        reg.sent.store(n - 1, Ordering::SeqCst);
                    }
                    if !self.killing.load(Ordering::SeqCst) {
                        self.note(format!("{} = {n}: {e}", reg.name));
                    }
                    return;
                }
            }
        }
    }

    /// Waits (polling every millisecond) until a write at raft index
    /// `index` or later was acknowledged.
    fn wait_index(&self, index: u64, timeout: Duration) -> Result<()> {
        let deadline = Instant::now() + timeout;
        while self.max_index.load(Ordering::SeqCst) < index {
            if Instant::now() > deadline {
                bail!(
                    "timed out after {timeout:?} waiting for a write at raft index {index} \
                     (highest acknowledged: {}; errors: {:?})",
                    self.max_index.load(Ordering::SeqCst),
                    self.unexpected()
                );
            }
            std::thread::sleep(Duration::from_millis(1));
        }
        Ok(())
    }

    /// Waits until `count` writes were acknowledged in this round.
    fn wait_writes(&self, count: u64, timeout: Duration) -> Result<()> {
        wait_until(&format!("{count} acknowledged writes"), timeout, || {
            let u = self.unexpected();
            if !u.is_empty() {
                bail!("writes failed: {u:?}");
            }
            Ok((self.acked_writes.load(Ordering::SeqCst) >= count).then_some(()))
        })
    }
}

/// A register's value as `d` answers it, and the answer's warnings (a
/// read that could not be linearized says it may be stale).
fn read(rt: &tokio::runtime::Runtime, d: &Daemon, name: &str) -> Result<(u64, Vec<String>)> {
    let c = client(d);
    let view = rt
        .block_on(c.service(name))
        .with_context(|| format!("reading {name}"))?;
    let value = view
        .spec
        .labels
        .get(LABEL)
        .ok_or_else(|| anyhow!("{name} has no label {LABEL}"))?
        .parse()
        .with_context(|| format!("{name}'s label {LABEL}"))?;
    Ok((value, c.take_warnings()))
}

/// Writes the barrier service through `d` until a write is acknowledged:
/// every write applied before it is then in the store.
fn barrier(rt: &tokio::runtime::Runtime, d: &Daemon, round: u64) -> Result<()> {
    let c = client(d);
    wait_until(
        "a write to the barrier service to be acknowledged",
        Duration::from_secs(20),
        || {
            rt.block_on(c.replace_service("barrier", &spec("barrier", round), None))?;
            Ok(Some(()))
        },
    )
}

/// Checks every register on `d` against what its client knows; returns
/// the values.
fn check_registers(
    rt: &tokio::runtime::Runtime,
    d: &Daemon,
    regs: &[Register],
    what: &str,
) -> Result<Vec<u64>> {
    let mut values = Vec::new();
    for reg in regs {
        let (acked, sent) = reg.bounds();
        let (value, warnings) = read(rt, d, &reg.name)?;
        if value < acked || value > sent {
            bail!(
                "{what}: {} = {value}, but the last acknowledged write was {acked} and the last \
                 sent {sent} (warnings: {warnings:?})",
                reg.name
            );
        }
        values.push(value);
    }
    Ok(values)
}

/// The lines of `d`'s logs, oldest start first: `daemon-N.log`, one per
/// start, ANSI colours taken out.
fn logs(d: &Daemon) -> Result<Vec<(u32, String)>> {
    logs_in(d.data_dir())
}

fn logs_in(dir: &Path) -> Result<Vec<(u32, String)>> {
    let mut out = Vec::new();
    for entry in std::fs::read_dir(dir)? {
        let entry = entry?;
        let name = entry.file_name().to_string_lossy().into_owned();
        let Some(n) = name
            .strip_prefix("daemon-")
            .and_then(|s| s.strip_suffix(".log"))
            .and_then(|s| s.parse::<u32>().ok())
        else {
            continue;
        };
        out.push((n, strip_ansi(&std::fs::read_to_string(entry.path())?)));
    }
    out.sort_by_key(|(n, _)| *n);
    Ok(out)
}

/// The log of `d`'s last start.
fn last_log(d: &Daemon) -> Result<String> {
    logs(d)?
        .pop()
        .map(|(_, text)| text)
        .ok_or_else(|| anyhow!("{} has no daemon log", d.data_dir().display()))
}

/// The last lines of `d`'s current log, without colours.
fn log_tail(d: &Daemon) -> String {
    last_log(d)
        .map(|l| tail(&l, 30))
        .unwrap_or_else(|e| format!("{e:#}"))
}

fn tail(text: &str, lines: usize) -> String {
    let all: Vec<&str> = text.lines().collect();
    all[all.len().saturating_sub(lines)..].join("\n")
}

/// What openraft found in the store at a start (`get_initial_state`):
/// raft indexes, `None` for none.
#[derive(Debug, Clone, Copy)]
struct Startup {
    purged: Option<u64>,
    applied: Option<u64>,
    committed: Option<u64>,
    last_log: Option<u64>,
}

impl Startup {
    fn parse(log: &str) -> Option<Startup> {
        let line = log.lines().find(|l| l.contains("get_initial_state"))?;
        let field = |key: &str| -> Option<Option<u64>> {
            let at = line.find(&format!(" {key}="))? + key.len() + 2;
            let value = line[at..].split_whitespace().next()?;
            if value == "None" {
                return Some(None);
            }
            // T1-N1-48: the index is the last part.
            value.rsplit('-').next()?.parse().ok().map(Some)
        };
        Some(Startup {
            purged: field("last_purged_log_id")?,
            applied: field("last_applied")?,
            committed: field("committed")?,
            last_log: field("last_log_id")?,
        })
    }

    /// Log entries past the state machine that this start applies again.
    fn replays(&self) -> bool {
        self.applied.unwrap_or(0) < self.last_log.unwrap_or(0)
    }

    /// Of those, entries known committed, which openraft applies before the
    /// member starts (the others once a leader commits them again).
    fn replays_committed(&self) -> bool {
        self.applied.unwrap_or(0) < self.committed.unwrap_or(0)
    }

    /// The store is whole: the log is not purged past what the state
    /// machine holds (those entries would be nowhere), and it reaches
    /// `acked_index`, the raft index of the last acknowledged write.
    fn check(&self, acked_index: u64) -> Result<()> {
        let applied = self.applied.unwrap_or(0);
        let purged = self.purged.unwrap_or(0);
        let last = self.last_log.unwrap_or(0).max(applied);
        if purged > applied {
            bail!(
                "the log is purged up to {purged} but the state machine holds only up to \
                 {applied}: the entries in between are nowhere, and openraft refuses to start \
                 (purge_upto <= snapshot_last_log_id). Known: openraft 0.9 purges a follower's \
                 log as soon as it hands a received snapshot to the state machine, and the \
                 purge can be on disk before the install is; see the doc of \
                 a_follower_killed_during_a_snapshot_install_starts_again. {self:?}"
            );
        }
        if last < acked_index {
            bail!("the store ends at raft index {last}, but a write at index {acked_index} was acknowledged: {self:?}");
        }
        Ok(())
    }
}

/// Indexes of the snapshots a manager's logs say it built.
fn built_snapshots(log: &str) -> Vec<u64> {
    log.lines()
        .filter_map(|l| {
            let at = l.find("snapshot built index=")? + "snapshot built index=".len();
            l[at..].split_whitespace().next()?.parse().ok()
        })
        .collect()
}

/// Whether the log's process was killed while it built a snapshot: a build
/// started and did not end.
fn building(log: &str) -> bool {
    let started = log
        .lines()
        .filter(|l| l.contains("worker_loop: build snapshot"))
        .count();
    let ended = log.lines().filter(|l| l.contains("BuildSnapshot")).count();
    started > ended
}

/// Where a follower's snapshot install was when it was killed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Install {
    /// No chunk had arrived.
    NotStarted,
    /// Chunks arrived, the install did not finish.
    During,
    /// The snapshot was installed.
    Done,
}

fn install_state(log: &str) -> Install {
    if log.contains("Done install complete snapshot") {
        Install::Done
    } else if log.contains("begin_receiving_snapshot")
        || log.contains("install_full_snapshot")
        || log.contains("install complete snapshot")
    {
        Install::During
    } else {
        Install::NotStarted
    }
}

/// What a test counted.
#[derive(Default, Debug)]
struct Stats {
    kills: usize,
    /// Kills while the killed manager was building a snapshot.
    during_build: usize,
    /// Kills of a follower during writes.
    follower_writes: usize,
    /// Kills of a follower catching up, by where its install was.
    install_not_started: usize,
    install_during: usize,
    install_done: usize,
    leader: usize,
    restarts: usize,
    /// Restarts that applied log entries again.
    replayed: usize,
    /// ... of which some before the member started (known committed).
    replayed_committed: usize,
    /// Reads right after a restart that warned they may be stale.
    stale_warned: usize,
    /// Writes in flight at the kill that turned out applied / not applied.
    in_flight_kept: usize,
    in_flight_lost: usize,
}

impl Stats {
    /// Checks the start just made of `d`, and counts it.
    fn restarted(&mut self, d: &Daemon, acked_index: u64, what: &str) -> Result<Startup> {
        let log = last_log(d)?;
        let startup = Startup::parse(&log).ok_or_else(|| {
            anyhow!(
                "{what}: no get_initial_state line in the log:\n{}",
                tail(&log, 30)
            )
        })?;
        startup
            .check(acked_index)
            .with_context(|| format!("{what}: log tail:\n{}", tail(&log, 30)))?;
        self.restarts += 1;
        if startup.replays() {
            self.replayed += 1;
        }
        if startup.replays_committed() {
            self.replayed_committed += 1;
        }
        Ok(startup)
    }

    /// Counts what happened to the writes in flight at a kill, from the
    /// values read after it and the bounds before.
    fn in_flight(&mut self, before: &[(u64, u64)], values: &[u64]) {
        for ((acked, sent), value) in before.iter().zip(values) {
            if sent > acked {
                if value > acked {
                    self.in_flight_kept += 1;
                } else {
                    self.in_flight_lost += 1;
                }
            }
        }
    }
}

/// Restarts `d` after a kill; a start that fails is the bug this test
/// looks for, so the error carries the log.
fn restart(d: &mut Daemon, what: &str) -> Result<()> {
    d.restart().with_context(|| {
        format!(
            "{what}: the manager did not start again; log tail:\n{}",
            log_tail(d)
        )
    })
}

/// When a test kills a manager it starts.
#[derive(Debug, Clone, Copy)]
enum Trigger {
    /// `delay` after its process appears.
    Delay(Duration),
    /// `delay` after its log first has a line holding the text.
    LogLine(&'static str, Duration),
}

/// The log line of a follower's snapshot install: openraft has the whole
/// snapshot, hands it to the state machine and (at once) purges the log.
const INSTALL_LINE: &str = "install_full_snapshot: meta";

/// Starts `d` and kills it with SIGKILL from another thread, as `trigger`
/// says, while this one waits for the start. Returns how long after the
/// process appeared the kill came, and whether the log line was seen (a
/// trigger by a line that does not come within 10 s kills anyway).
fn start_and_kill(d: &mut Daemon, trigger: Trigger) -> Result<(Duration, bool)> {
    let mark = d.mark().to_string();
    let dir = d.data_dir().to_path_buf();
    let starts_before = logs(d)?.last().map(|(n, _)| *n).unwrap_or(0);
    let (started, killed) = std::thread::scope(|s| {
        let killer = s.spawn(|| -> Result<(Duration, bool)> {
            let pid = wait_until(
                "the daemon's process to appear",
                Duration::from_secs(10),
                || Ok(marked_pids(&mark).first().copied()),
            )?;
            let t0 = Instant::now();
            let (seen, delay) = match trigger {
                Trigger::Delay(delay) => (true, delay),
                Trigger::LogLine(text, delay) => {
                    let mut seen = false;
                    while !seen && t0.elapsed() < Duration::from_secs(10) {
                        seen = logs_in(&dir)?
                            .last()
                            .is_some_and(|(n, l)| *n > starts_before && l.contains(text));
                        std::thread::sleep(Duration::from_millis(1));
                    }
                    (seen, delay)
                }
            };
            std::thread::sleep(delay);
            // SAFETY: kill(2) of the daemon this test started; a stale pid
            // only fails.
            if unsafe { libc::kill(pid as i32, libc::SIGKILL) } != 0 {
                bail!("the manager's process was gone before the kill: it died by itself");
            }
            Ok((t0.elapsed(), seen))
        });
        (d.restart(), killer.join())
    });
    let killed = killed.map_err(|_| anyhow!("the killer thread panicked"))??;
    if let Err(e) = started {
        if !format!("{e:#}").contains("signal: 9") {
            return Err(e.context("the manager failed to start (not killed by the test)"));
        }
    }
    // The process is dead now; the next `restart` reaps it.
    wait_until(
        "the killed daemon to be gone",
        Duration::from_secs(5),
        || Ok(marked_pids(&mark).is_empty().then_some(())),
    )?;
    Ok(killed)
}

/// Which of `managers` leads, as it says itself.
fn leader_of(managers: &[Daemon]) -> Result<usize> {
    wait_until("a manager to say it leads", Duration::from_secs(15), || {
        Ok(managers.iter().position(|m| {
            m.ok(&["info", "--format", "json"])
                .and_then(|o| o.json())
                .is_ok_and(|j| j["is_leader"] == true)
        }))
    })
}

fn token(m: &Daemon) -> Result<String> {
    Ok(m.ok(&["join-token", "manager", "-q"])?
        .stdout
        .trim()
        .to_string())
}

/// Waits until every manager answers every register with the same value,
/// by a read that was not stale, within what its client knows.
fn converge(
    rt: &tokio::runtime::Runtime,
    managers: &[Daemon],
    regs: &[Register],
    what: &str,
) -> Result<Vec<u64>> {
    let t0 = Instant::now();
    let mut last_seen = String::new();
    let values = wait_until(what, Duration::from_secs(30), || {
        let mut seen: Vec<Vec<u64>> = Vec::new();
        for m in managers {
            let mut row = Vec::new();
            for reg in regs {
                let (v, warnings) = read(rt, m, &reg.name)?;
                if !warnings.is_empty() {
                    last_seen = format!("{}: {}: {warnings:?}", m.data_dir().display(), reg.name);
                    return Ok(None);
                }
                row.push(v);
            }
            seen.push(row);
        }
        let first = seen.first().cloned().unwrap_or_default();
        if seen.iter().all(|r| *r == first) {
            return Ok(Some(first));
        }
        bail!("the managers differ: {seen:?}")
    })
    .with_context(|| {
        let tails: Vec<String> = managers
            .iter()
            .enumerate()
            .map(|(i, m)| format!("m{}'s log tail:\n{}", i + 1, log_tail(m)))
            .collect();
        format!("last warning: {last_seen}\n{}", tails.join("\n"))
    })?;
    for (reg, v) in regs.iter().zip(&values) {
        let (acked, sent) = reg.bounds();
        if *v < acked || *v > sent {
            bail!(
                "{what}: the managers agree on {} = {v}, but the last acknowledged write was \
                 {acked} and the last sent {sent}",
                reg.name
            );
        }
        reg.settle(*v);
    }
    eprintln!("crash:   converged in {:?}: {values:?}", t0.elapsed());
    Ok(values)
}

/// Three managers with `extra`, the first one leading, the ballast and the
/// registers created and on every manager.
fn three_managers(
    rt: &tokio::runtime::Runtime,
    extra: &[&str],
    ballast: u64,
    regs: &[Register],
) -> Result<Vec<Daemon>> {
    let m1 = start_manager("m1", extra)?;
    m1.ok(&["init"])?;
    let addr = m1.cluster_addr()?;
    let mut managers = vec![m1];
    for name in ["m2", "m3"] {
        let m = start_manager(name, extra)?;
        m.ok(&["join", "--token", &token(&managers[0])?, &addr])?;
        managers.push(m);
    }
    create_ballast(&managers[0], ballast)?;
    create_registers(rt, &managers[0], regs)?;
    converge(rt, &managers, regs, "the managers to agree at the start")?;
    Ok(managers)
}

/// Kills follower `f` `delay` into writes through `leader`, which go on
/// until `writes` were acknowledged: enough that the leader compacts its
/// log past the follower.
fn kill_follower_during_writes(
    managers: &mut [Daemon],
    leader: usize,
    f: usize,
    regs: &[Register],
    delay: Duration,
    writes: u64,
) -> Result<()> {
    let (low, high) = managers.split_at_mut(f.max(leader));
    let (l, fm) = if f > leader {
        (&low[leader], &mut high[0])
    } else {
        (&high[0], &mut low[f])
    };
    let writers = Writers::new(l, regs);
    writers
        .run(|| -> Result<()> {
            std::thread::sleep(delay);
            fm.kill9()?;
            writers.wait_writes(writes, Duration::from_secs(30))
        })
        .with_context(|| format!("the leader's log tail:\n{}", log_tail(l)))
}

#[test]
fn writes_on_one_manager_survive_kill_9() -> Result<()> {
    let _alone = alone();
    let plan = Plan::from_env()?;
    const EVERY: u64 = 50;
    let t_start = Instant::now();
    eprintln!(
        "crash: seed {} (FLOTILLA_CRASH_SEED={} replays it); {} kills of one manager, snapshot every {EVERY}",
        plan.seed, plan.seed, plan.one
    );
    let mut rng = ChaCha8Rng::seed_from_u64(plan.seed);
    let rt = runtime()?;
    let mut m = start_manager("m1", &["--snapshot-every", &EVERY.to_string()])?;
    let mut keep = KeepLogs::new(plan.seed, "one-manager");
    keep.watch("m1", &m);
    m.ok(&["init"])?;
    create_ballast(&m, BALLAST_TASKS)?;
    let regs = registers();
    create_registers(&rt, &m, &regs)?;
    let mut stats = Stats::default();
    let mut acked_index = 0;
    for k in 1..=plan.one {
        // Half the kills come right after the write that is due to start a
        // snapshot build, the others at any moment of the writes.
        let targeted = rng.random_bool(0.5);
        let delay = Duration::from_millis(if targeted {
            rng.random_range(0..20)
        } else {
            rng.random_range(20..400)
        });
        // The last snapshot is in this start's log or an earlier one; a
        // build that a kill cut short is due again at once.
        let last_snapshot = logs(&m)?
            .iter()
            .flat_map(|(_, l)| built_snapshots(l))
            .max()
            .unwrap_or(0);
        let target = (last_snapshot + EVERY).max(acked_index + 1);
        let writers = Writers::new(&m, &regs);
        let killed = writers.run(|| -> Result<()> {
            let reached = if targeted {
                writers.wait_index(target, Duration::from_secs(20))
            } else {
                Ok(())
            };
            std::thread::sleep(delay);
            writers.killing.store(true, Ordering::SeqCst);
            m.kill9()?;
            reached
        });
        let what = format!("kill {k} (seed {})", plan.seed);
        let before: Vec<(u64, u64)> = regs.iter().map(Register::bounds).collect();
        let log = last_log(&m)?;
        let unexpected = writers.unexpected();
        if !unexpected.is_empty() {
            bail!(
                "{what}: writes failed before the kill: {unexpected:?}\nlog tail:\n{}",
                tail(&log, 30)
            );
        }
        killed.with_context(|| format!("{what}: log tail:\n{}", tail(&log, 30)))?;
        stats.kills += 1;
        let during_build = building(&log);
        if during_build {
            stats.during_build += 1;
        }
        acked_index = acked_index.max(writers.max_index.load(Ordering::SeqCst));

        restart(&mut m, &what)?;
        let startup = stats.restarted(&m, acked_index, &what)?;
        // Reads before any write: linearizable, or they say they may be
        // stale.
        for reg in &regs {
            let (acked, sent) = reg.bounds();
            let (value, warnings) = read(&rt, &m, &reg.name)?;
            if value > sent || (value < acked && warnings.is_empty()) {
                bail!(
                    "{what}: right after the restart {} = {value}, but the last acknowledged \
                     write was {acked} and the last sent {sent}; the read did not warn \
                     ({startup:?})\nlog tail:\n{}",
                    reg.name,
                    log_tail(&m)
                );
            }
            if !warnings.is_empty() {
                stats.stale_warned += 1;
            }
        }
        barrier(&rt, &m, k as u64)
            .with_context(|| format!("{what}: log tail:\n{}", log_tail(&m)))?;
        let values = check_registers(&rt, &m, &regs, &what)
            .with_context(|| format!("{startup:?}; log tail:\n{}", log_tail(&m)))?;
        stats.in_flight(&before, &values);
        for (reg, v) in regs.iter().zip(&values) {
            reg.settle(*v);
        }
        eprintln!(
            "crash: {what}: {} after {delay:?}{}, index {acked_index}, {} writes; restart: {startup:?}; registers {values:?}",
            if targeted {
                format!("targeted at index {target}")
            } else {
                "random".into()
            },
            if during_build {
                ", during a snapshot build"
            } else {
                ""
            },
            writers.acked_writes.load(Ordering::SeqCst),
        );
    }
    let snapshots: usize = logs(&m)?
        .iter()
        .map(|(_, l)| built_snapshots(l).len())
        .sum();
    eprintln!(
        "crash: one manager, seed {}: {} kills ({} during a snapshot build, {} snapshots built in \
         all), {} restarts, {} of them applied log entries again ({} of them entries known \
         committed at the start); writes in flight at a kill: {} applied, {} not; {} reads right \
         after a restart warned they may be stale; {:?}",
        plan.seed,
        stats.kills,
        stats.during_build,
        snapshots,
        stats.restarts,
        stats.replayed,
        stats.replayed_committed,
        stats.in_flight_kept,
        stats.in_flight_lost,
        stats.stale_warned,
        t_start.elapsed()
    );
    keep.done();
    Ok(())
}

/// Fails while the bug of
/// [`a_follower_killed_during_a_snapshot_install_starts_again`] is open:
/// kept failing on purpose, not ignored (it failed at round 6, the first
/// catch-up kill timed by the log, in every run so far).
///
/// The follower's catch-up kills alternate between a
/// random moment after its start and a moment just after its log says it
/// installs the leader's snapshot (`install_full_snapshot`), which is when
/// the bug strikes. The leader kills run first, so that they are checked
/// even while that bug fails the follower rounds.
#[test]
fn managers_killed_in_snapshot_install_and_build_converge() -> Result<()> {
    let _alone = alone();
    let plan = Plan::from_env()?;
    const EVERY: u64 = 20;
    let t_start = Instant::now();
    let leader_kills = (plan.three / 5).max(1);
    let follower_kills = plan.three.saturating_sub(leader_kills);
    eprintln!(
        "crash: seed {} (FLOTILLA_CRASH_SEED={} replays it); {} kills on three managers \
         ({leader_kills} of the leader, {follower_kills} of followers), snapshot every {EVERY}",
        plan.seed, plan.seed, plan.three
    );
    // Another stream than the one-manager test's.
    let mut rng = ChaCha8Rng::seed_from_u64(plan.seed ^ 0x3333);
    let rt = runtime()?;
    let regs = registers();
    let mut managers = three_managers(
        &rt,
        &["--snapshot-every", &EVERY.to_string()],
        BALLAST_TASKS,
        &regs,
    )?;
    let mut keep = KeepLogs::new(plan.seed, "three-managers");
    for (i, m) in managers.iter().enumerate() {
        keep.watch(&format!("m{}", i + 1), m);
    }
    let mut stats = Stats::default();
    let mut round = 0u64;

    // The leader: killed right after the write that is due to make it
    // build a snapshot.
    for k in 1..=leader_kills {
        round += 1;
        let what = format!("round {round}, leader kill {k} (seed {})", plan.seed);
        let leader = leader_of(&managers)?;
        let last = built_snapshots(&last_log(&managers[leader])?)
            .into_iter()
            .max()
            .unwrap_or(0);
        let target = last + EVERY;
        let delay = Duration::from_millis(rng.random_range(0..20));
        let before_kill: Vec<(u64, u64)>;
        let log;
        {
            let l = &mut managers[leader];
            let writers = Writers::new(l, &regs);
            let killed = writers.run(|| -> Result<()> {
                let reached = writers.wait_index(target, Duration::from_secs(20));
                std::thread::sleep(delay);
                writers.killing.store(true, Ordering::SeqCst);
                l.kill9()?;
                reached
            });
            log = last_log(l)?;
            let unexpected = writers.unexpected();
            if !unexpected.is_empty() {
                bail!(
                    "{what}: writes failed before the kill: {unexpected:?}\nlog tail:\n{}",
                    tail(&log, 30)
                );
            }
            killed.with_context(|| format!("{what}: log tail:\n{}", tail(&log, 30)))?;
            before_kill = regs.iter().map(Register::bounds).collect();
        }
        stats.kills += 1;
        stats.leader += 1;
        let during_build = building(&log);
        if during_build {
            stats.during_build += 1;
        }
        // The survivors elect a leader and hold every acknowledged write.
        let survivor = (leader + 1) % managers.len();
        barrier(&rt, &managers[survivor], round).with_context(|| {
            format!(
                "{what}: the survivors took no write; m{}'s log:\n{}",
                survivor + 1,
                log_tail(&managers[survivor])
            )
        })?;
        let values = check_registers(&rt, &managers[survivor], &regs, &what)?;
        stats.in_flight(&before_kill, &values);
        for (reg, v) in regs.iter().zip(&values) {
            reg.settle(*v);
        }
        eprintln!(
            "crash: {what}: leader m{} killed {delay:?} after index {target}{}; the survivors hold {values:?}",
            leader + 1,
            if during_build {
                ", during a snapshot build"
            } else {
                ""
            }
        );
        restart(&mut managers[leader], &what)?;
        stats.restarted(&managers[leader], 0, &what)?;
        converge(
            &rt,
            &managers,
            &regs,
            &format!("{what}: the old leader m{} to catch up", leader + 1),
        )?;
    }

    // Followers: killed during writes, then again while they catch up.
    while stats.kills < plan.three {
        round += 1;
        let leader = leader_of(&managers)?;
        let f = {
            let others: Vec<usize> = (0..managers.len()).filter(|i| *i != leader).collect();
            others[rng.random_range(0..others.len())]
        };
        let what = format!("round {round} (seed {})", plan.seed);
        let delay = Duration::from_millis(rng.random_range(20..300));
        let writes = 3 * EVERY + rng.random_range(0..EVERY);
        kill_follower_during_writes(&mut managers, leader, f, &regs, delay, writes)
            .with_context(|| what.clone())?;
        stats.kills += 1;
        stats.follower_writes += 1;
        eprintln!(
            "crash: {what}: follower m{} killed {delay:?} into the writes; {writes} writes on m{}",
            f + 1,
            leader + 1
        );
        if stats.kills < plan.three {
            let trigger = if round % 2 == 0 {
                Trigger::LogLine(
                    INSTALL_LINE,
                    Duration::from_millis(rng.random_range(20..100)),
                )
            } else {
                Trigger::Delay(Duration::from_millis(rng.random_range(0..900)))
            };
            let (after, seen) = start_and_kill(&mut managers[f], trigger)
                .with_context(|| format!("{what}: starting m{} to kill it", f + 1))?;
            let log = last_log(&managers[f])?;
            // That start followed the kill during the writes.
            if let Some(startup) = Startup::parse(&log) {
                startup
                    .check(0)
                    .with_context(|| format!("{what}: m{} after the kill during writes", f + 1))?;
                stats.restarts += 1;
                if startup.replays() {
                    stats.replayed += 1;
                }
            }
            let install = install_state(&log);
            match install {
                Install::NotStarted => stats.install_not_started += 1,
                Install::During => stats.install_during += 1,
                Install::Done => stats.install_done += 1,
            }
            stats.kills += 1;
            eprintln!(
                "crash: {what}: follower m{} killed {after:?} after it started ({trigger:?}{}), \
                 snapshot install: {install:?}",
                f + 1,
                if seen { "" } else { ", line not seen" }
            );
        }
        restart(&mut managers[f], &what)?;
        stats.restarted(&managers[f], 0, &what)?;
        converge(
            &rt,
            &managers,
            &regs,
            &format!("{what}: m{} to catch up with the leader", f + 1),
        )?;
    }
    eprintln!(
        "crash: three managers, seed {}: {} kills: {} of the leader ({} during a snapshot build), \
         {} of followers during writes, {} of followers catching up (snapshot install not \
         started {}, under way {}, done {}); {} restarts, {} of them applied log entries again \
         ({} known committed at the start); writes in flight at a leader kill: {} applied, {} \
         not; {:?}",
        plan.seed,
        stats.kills,
        stats.leader,
        stats.during_build,
        stats.follower_writes,
        stats.install_not_started + stats.install_during + stats.install_done,
        stats.install_not_started,
        stats.install_during,
        stats.install_done,
        stats.restarts,
        stats.replayed,
        stats.replayed_committed,
        stats.in_flight_kept,
        stats.in_flight_lost,
        t_start.elapsed()
    );
    keep.done();
    Ok(())
}

/// A bug found by this file (it failed on the first try in every run
/// before the fix in `flotilla_raft::storage`). The smallest case of it,
/// outside the 100 kills.
///
/// A follower that catches up by snapshot and was killed while its state
/// machine installed the snapshot never started again: openraft 0.9's
/// `install_full_snapshot` (engine/handler/following_handler) sends the
/// snapshot to the state-machine worker and, in the same step, purges the
/// log up to the snapshot's last index; `PurgeLog` has no condition on the
/// install, so the log writer commits the purge (with fsync) while
/// `StateMachine::install_snapshot` still decodes and writes the state
/// (about 0.3 s for 1,000 tasks in a debug build). Killed in between, the
/// store holds a log purged up to the new snapshot, and the old state
/// machine and old snapshot: at the next start openraft's core panics
/// (`invalid state: expect: self.purge_upto() <= self.snapshot_last_log_id()`,
/// raft_state/mod.rs:194), every start again, and the daemon goes on
/// serving its API with a stale state (`info`: 0 managers reachable; reads
/// warn "no leader is known"). Its copy of the log is gone for good; the
/// cluster runs on with one manager less.
///
/// Steps: three managers, `--snapshot-every 20`, 1,000 pending tasks; a
/// follower killed; 70 writes; the follower started and killed 60 ms after
/// its log says `install_full_snapshot` (120 and 180 ms in the next tries);
/// started again: its `get_initial_state` shows `last_purged_log_id` above
/// `last_applied` (seen on the first try in every run before the fix). It
/// passes when a follower killed mid-install (three times) starts and
/// catches up.
#[test]
fn a_follower_killed_during_a_snapshot_install_starts_again() -> Result<()> {
    let _alone = alone();
    let rt = runtime()?;
    let regs = registers();
    let mut managers = three_managers(&rt, &["--snapshot-every", "20"], 1000, &regs)?;
    let mut keep = KeepLogs::new(0, "install");
    for (i, m) in managers.iter().enumerate() {
        keep.watch(&format!("m{}", i + 1), m);
    }
    let f = 2;
    let mut tries = 0u64;
    loop {
        tries += 1;
        let leader = leader_of(&managers)?;
        let f = if f == leader { 1 } else { f };
        kill_follower_during_writes(
            &mut managers,
            leader,
            f,
            &regs,
            Duration::from_millis(50),
            70,
        )?;
        // The purge is on disk some 30-60 ms after the line (its fsync), the
        // install some 300 ms after it.
        let delay = Duration::from_millis(60 * tries);
        let (after, seen) =
            start_and_kill(&mut managers[f], Trigger::LogLine(INSTALL_LINE, delay))?;
        let killed_log = last_log(&managers[f])?;
        let install = install_state(&killed_log);
        for line in killed_log.lines().filter(|l| {
            l.contains("install") || l.contains("purge_log") || l.contains("get_initial_state")
        }) {
            eprintln!(
                "crash:   killed start: {}",
                line.chars().take(220).collect::<String>()
            );
        }
        eprintln!(
            "crash: try {tries}: m{} killed {after:?} after it started (install line seen: \
             {seen}), snapshot install: {install:?}",
            f + 1
        );
        restart(&mut managers[f], "the follower's start after the kill")?;
        let what = format!("m{} killed during its snapshot install", f + 1);
        let startup = Startup::parse(&last_log(&managers[f])?);
        eprintln!("crash: try {tries}: the next start found {startup:?}");
        let checked = startup
            .ok_or_else(|| anyhow!("{what}: no get_initial_state line"))
            .and_then(|s| s.check(0));
        if let Err(e) = checked {
            bail!(
                "{what} cannot start again: {e:#}\nthe killed start's log:\n{}\nthe next \
                 start's log:\n{}",
                tail(&killed_log, 12),
                log_tail(&managers[f])
            );
        }
        converge(&rt, &managers, &regs, &format!("{what}: to catch up"))?;
        if tries >= 3 {
            // Killed mid-install (the log above says where) and it came
            // back every time.
            keep.done();
            return Ok(());
        }
    }
}

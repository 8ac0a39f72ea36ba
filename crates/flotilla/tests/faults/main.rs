//! The fault-injection suite: 5 managers and 3 workers, each on its own
//! network-namespace host; a nemesis kills, pauses and cuts off nodes at
//! seeded random times while clients create, write, scale, read and remove
//! services against random managers; after healing the cluster must
//! converge within 30 s and the history must pass `flotilla-faults`'
//! checker. See docs/faults.md.
//!
//! - `FLOTILLA_FAULTS_SEED=N` replays a run's schedule (the seed is printed
//!   at the start);
//! - `FLOTILLA_FAULTS_DURATION=SECONDS` sets how long faults run (default
//!   60);
//! - `FLOTILLA_FAULTS=kill,pause,...` chooses the faults (`all` for every
//!   one); by default the CI set, [`CI_FAULTS`]: every fault (see
//!   docs/faults.md).
//!
//! A second test runs a short history against daemons with the test-only
//! failpoint `FLOTILLA_TEST_FAILPOINT=ack-without-commit` and asserts that
//! the checker fails and names a lost write.

mod clients;
mod cluster;
mod nemesis;

use std::collections::BTreeMap;
use std::sync::atomic::Ordering;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use flotilla_faults::{EndState, Outcome};

use clients::Shared;
use cluster::Cluster;
use nemesis::Fault;

/// The faults of the short CI run: every fault, the leader included. Until
/// issue 9's defect 3 was fixed, the leader faults made the store create a
/// second task in a taken slot, and the CI run spared the leader
/// (`FLOTILLA_FAULTS=spare` still runs that set). See docs/faults.md.
const CI_FAULTS: &[Fault] = &nemesis::ALL;

/// The set that spares the leader.
const SPARE_FAULTS: &[Fault] = &[Fault::Kill, Fault::Pause, Fault::Cut, Fault::OneWay];

/// The two tests share the machine: one at a time.
static ONE_AT_A_TIME: Mutex<()> = Mutex::new(());

const REGISTERS: usize = 3;
const SCALED: usize = 2;

struct Run {
    seed: u64,
    clients: usize,
    faults: Vec<Fault>,
    spare_leader: bool,
    duration: Duration,
}

struct RunResult {
    report: flotilla_faults::Report,
    converged: Result<Duration>,
    ops: usize,
}

fn env_seed() -> u64 {
    match std::env::var("FLOTILLA_FAULTS_SEED") {
        Ok(s) => s.trim().parse().unwrap_or_else(|_| {
            eprintln!("faults: FLOTILLA_FAULTS_SEED={s:?} is not a number; using 1");
            1
        }),
        Err(_) => std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_nanos() as u64 % 1_000_000_007)
            .unwrap_or(1),
    }
}

/// The faults to run, and whether they spare the leader (the CI set only).
fn env_faults() -> Result<(Vec<Fault>, bool)> {
    match std::env::var("FLOTILLA_FAULTS") {
        Err(_) => Ok((CI_FAULTS.to_vec(), false)),
        Ok(s) if s.trim() == "ci" => Ok((CI_FAULTS.to_vec(), false)),
        Ok(s) if s.trim() == "spare" => Ok((SPARE_FAULTS.to_vec(), true)),
        Ok(s) if s.trim() == "all" => Ok((nemesis::ALL.to_vec(), false)),
        Ok(s) => Ok((
            s.split(',')
                .map(|f| Fault::parse(f.trim()))
                .collect::<Result<_>>()?,
            false,
        )),
    }
}

fn env_duration() -> Result<Duration> {
    match std::env::var("FLOTILLA_FAULTS_DURATION") {
        Err(_) => Ok(Duration::from_secs(60)),
        Ok(s) => Ok(Duration::from_secs(s.trim().parse().with_context(
            || format!("FLOTILLA_FAULTS_DURATION={s:?} is not a number of seconds"),
        )?)),
    }
}

/// Sets up the services, runs clients and nemesis, heals, converges and
/// checks.
fn run(cluster: &mut Cluster, run: &Run) -> Result<RunResult> {
    let registers: Vec<String> = (0..REGISTERS).map(|i| format!("reg-{i}")).collect();
    let scaled: Vec<String> = (0..SCALED).map(|i| format!("scale-{i}")).collect();
    let mut setup = EndState::new();
    let first = cluster.client(0);
    for r in &registers {
        let v = cluster
            .rt
            .block_on(first.create_service(&cluster::spec(r, 0, Some("v0"))))?;
        setup.insert(r.clone(), cluster::seen(&v));
    }
    for s in &scaled {
        let v = cluster
            .rt
            .block_on(first.create_service(&cluster::spec(s, 2, None)))?;
        setup.insert(s.clone(), cluster::seen(&v));
    }
    let start = Instant::now();
    let shared = Shared {
        start,
        sockets: cluster.manager_sockets(),
        registers,
        scaled,
        stop: false.into(),
        ops: Mutex::new(Vec::new()),
        snapshots: Mutex::new(Vec::new()),
    };
    let applied = std::thread::scope(|s| -> Result<Vec<nemesis::Applied>> {
        let mut handles = Vec::new();
        for id in 0..run.clients {
            let shared = &shared;
            let seed = run.seed;
            handles.push(s.spawn(move || clients::run_client(id, seed, shared)));
        }
        {
            let shared = &shared;
            let seed = run.seed;
            handles.push(s.spawn(move || clients::run_sampler(seed, shared)));
        }
        let applied = if run.faults.is_empty() {
            std::thread::sleep(run.duration);
            Ok(Vec::new())
        } else {
            nemesis::run(
                cluster,
                run.seed,
                &run.faults,
                run.spare_leader,
                start,
                run.duration,
            )
        };
        shared.stop.store(true, Ordering::SeqCst);
        for h in handles {
            match h.join() {
                Ok(r) => r?,
                Err(_) => bail!("a client thread panicked"),
            }
        }
        applied
    })?;
    let last_fault = applied.last().map(|a| a.healed).unwrap_or_default();
    let since = start.elapsed().saturating_sub(last_fault);
    let budget = Duration::from_secs(30).saturating_sub(since);
    // Within 30 s of the last fault, the wait for the clients and the
    // nemesis to finish included: a run whose clients took 46 s to stop
    // after the last fault passed with "converged 76.0s after the last
    // fault" before this check.
    let converged = cluster
        .converge(budget.max(Duration::from_secs(1)))
        .map(|d| d + since)
        .and_then(|d| {
            if d > Duration::from_secs(30) {
                anyhow::bail!(
                    "converged only {:.1}s after the last fault (the clients and the nemesis took {:.1}s to stop)",
                    d.as_secs_f64(),
                    since.as_secs_f64()
                )
            }
            Ok(d)
        });
    let end = cluster.end_state()?;
    let ops = shared.ops.into_inner().unwrap_or_default();
    let snapshots = shared.snapshots.into_inner().unwrap_or_default();
    let t0 = Instant::now();
    let report = flotilla_faults::check(&ops, &setup, &end, &snapshots);
    let checked_in = t0.elapsed();

    // The figures of the run.
    let mut by: BTreeMap<String, usize> = BTreeMap::new();
    for op in &ops {
        let kind = format!("{:?}", op.call)
            .split([' ', '{'])
            .next()
            .unwrap_or("")
            .to_string();
        let end = match &op.outcome {
            Outcome::Ok => "ok",
            Outcome::Read { warning: None, .. } => "ok",
            Outcome::Read {
                warning: Some(_), ..
            } => "stale-warned",
            Outcome::Failed(_) => "failed",
            Outcome::Unknown(_) => "unknown",
        };
        *by.entry(format!("{kind} {end}")).or_default() += 1;
    }
    let mut kinds: BTreeMap<String, usize> = BTreeMap::new();
    for a in &applied {
        *kinds.entry(format!("{:?}", a.fault)).or_default() += 1;
    }
    eprintln!(
        "faults: seed={} {} faults {:?}, {} ops in {:.0}s: {:?}",
        run.seed,
        applied.len(),
        kinds,
        ops.len(),
        start.elapsed().as_secs_f64(),
        by
    );
    match &converged {
        Ok(d) => eprintln!(
            "faults: converged {:.1}s after the last fault",
            d.as_secs_f64()
        ),
        Err(e) => eprintln!("faults: did not converge within 30 s of the last fault: {e:#}"),
    }
    eprintln!("faults: checked in {checked_in:?}: {report}");
    if !report.ok() || converged.is_err() {
        let path = std::env::temp_dir().join(format!("flotilla-faults-{}.json", run.seed));
        let dump = serde_json::json!({ "seed": run.seed, "setup": setup, "end": end, "ops": ops, "snapshots": snapshots });
        if std::fs::write(&path, dump.to_string()).is_ok() {
            eprintln!("faults: history written to {}", path.display());
        }
    }
    Ok(RunResult {
        report,
        converged,
        ops: ops.len(),
    })
}

#[test]
fn the_store_stays_honest_under_faults() -> Result<()> {
    let _one = ONE_AT_A_TIME.lock().unwrap_or_else(|e| e.into_inner());
    let (faults, spare_leader) = env_faults()?;
    let r = Run {
        seed: env_seed(),
        clients: 4,
        faults,
        spare_leader,
        duration: env_duration()?,
    };
    eprintln!(
        "faults: seed={} (FLOTILLA_FAULTS_SEED replays) duration={:?} faults={:?} spare_leader={}",
        r.seed, r.duration, r.faults, r.spare_leader
    );
    let mut cluster = Cluster::start(5, 3, &[])?;
    let out = run(&mut cluster, &r)?;
    assert!(out.ops > 0, "the clients made no call");
    assert!(
        out.report.ok(),
        "seed {}: the checker found violations: {}",
        r.seed,
        out.report
    );
    if let Err(e) = out.converged {
        panic!("seed {}: {e:#}", r.seed);
    }
    Ok(())
}

#[test]
fn a_build_that_acknowledges_writes_it_never_commits_fails_the_check() -> Result<()> {
    let _one = ONE_AT_A_TIME.lock().unwrap_or_else(|e| e.into_inner());
    std::env::set_var("FLOTILLA_TEST_FAILPOINT", "ack-without-commit");
    let cluster = Cluster::start(3, 0, &[]);
    std::env::remove_var("FLOTILLA_TEST_FAILPOINT");
    let mut cluster = cluster?;
    let r = Run {
        seed: 7,
        clients: 2,
        faults: Vec::new(),
        spare_leader: false,
        duration: Duration::from_secs(8),
    };
    let out = run(&mut cluster, &r)?;
    let text = out.report.to_string();
    assert!(
        !out.report.ok(),
        "the checker passed a broken build: {text}"
    );
    assert!(
        text.contains("is lost"),
        "the checker did not name the lost write: {text}"
    );
    Ok(())
}

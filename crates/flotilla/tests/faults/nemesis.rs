//! The nemesis: at seeded random times, one fault at a time, held for a
//! few seconds and then healed.

use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;

use crate::cluster::Cluster;

/// The kinds of fault.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Fault {
    /// `kill -9` a node (manager or worker), restart it when healed.
    Kill,
    /// SIGSTOP a node, SIGCONT when healed.
    Pause,
    /// Take a host's link down (cut off from every other host).
    Cut,
    /// Drop the packets from one manager to another, one way.
    OneWay,
    /// Drop every manager-to-manager packet between a minority and a
    /// majority of the managers; workers still reach all of them.
    ManagerSplit,
    /// Cut the leader's host off.
    IsolateLeader,
    /// `kill -9` the leader and start it again at once.
    RestartLeader,
}

pub const ALL: [Fault; 7] = [
    Fault::Kill,
    Fault::Pause,
    Fault::Cut,
    Fault::OneWay,
    Fault::ManagerSplit,
    Fault::IsolateLeader,
    Fault::RestartLeader,
];

impl Fault {
    pub fn parse(s: &str) -> Result<Fault> {
        Ok(match s {
            "kill" => Fault::Kill,
            "pause" => Fault::Pause,
            "cut" => Fault::Cut,
            "one-way" => Fault::OneWay,
            "manager-split" => Fault::ManagerSplit,
            "isolate-leader" => Fault::IsolateLeader,
            "restart-leader" => Fault::RestartLeader,
            other => bail!(
                "unknown fault {other:?} (kill, pause, cut, one-way, manager-split, isolate-leader, restart-leader)"
            ),
        })
    }
}

/// What the nemesis did, for the run's log.
#[derive(Debug, Clone)]
pub struct Applied {
    pub fault: Fault,
    pub healed: Duration,
}

/// How to heal what a fault did.
enum Undo {
    Restart(usize),
    Resume(usize),
    Link(usize),
    Rules,
    Nothing,
}

fn apply(
    c: &mut Cluster,
    fault: Fault,
    spare_leader: bool,
    rng: &mut ChaCha8Rng,
) -> Result<(String, Undo)> {
    let n = c.nodes.len();
    let leader = if spare_leader { c.leader() } else { None };
    let managers: Vec<usize> = (0..n)
        .filter(|&i| c.nodes[i].manager && Some(i) != leader)
        .collect();
    let others: Vec<usize> = (0..n).filter(|&i| Some(i) != leader).collect();
    let any = others[rng.random_range(0..others.len())];
    let m = |rng: &mut ChaCha8Rng| managers[rng.random_range(0..managers.len())];
    Ok(match fault {
        Fault::Kill => {
            c.nodes[any].daemon.kill9()?;
            c.nodes[any].down = true;
            (format!("kill -9 {}", c.nodes[any].name), Undo::Restart(any))
        }
        Fault::Pause => {
            c.nodes[any].daemon.pause()?;
            c.nodes[any].paused = true;
            (format!("pause {}", c.nodes[any].name), Undo::Resume(any))
        }
        Fault::Cut => {
            c.net.cut(&c.nodes[any].host)?;
            (format!("cut {} off", c.nodes[any].name), Undo::Link(any))
        }
        Fault::OneWay => {
            let a = m(rng);
            let mut b = m(rng);
            while b == a {
                b = m(rng);
            }
            c.net.block(&c.nodes[a].host, &c.nodes[b].host)?;
            (
                format!("drop {} -> {}", c.nodes[a].name, c.nodes[b].name),
                Undo::Rules,
            )
        }
        Fault::ManagerSplit => {
            let mut order = managers.clone();
            for i in (1..order.len()).rev() {
                order.swap(i, rng.random_range(0..=i));
            }
            let minority = &order[..order.len() / 2];
            let majority = &order[order.len() / 2..];
            for &a in minority {
                for &b in majority {
                    c.net.block_both(&c.nodes[a].host, &c.nodes[b].host)?;
                }
            }
            let names = |s: &[usize]| {
                s.iter()
                    .map(|&i| c.nodes[i].name.as_str())
                    .collect::<Vec<_>>()
                    .join(",")
            };
            (
                format!("split managers {} | {}", names(minority), names(majority)),
                Undo::Rules,
            )
        }
        Fault::IsolateLeader => match c.leader() {
            Some(l) => {
                c.net.cut(&c.nodes[l].host)?;
                (format!("isolate leader {}", c.nodes[l].name), Undo::Link(l))
            }
            None => ("isolate leader: no leader known".into(), Undo::Nothing),
        },
        Fault::RestartLeader => match c.leader() {
            Some(l) => {
                c.nodes[l].daemon.kill9()?;
                c.nodes[l].down = true;
                (
                    format!("restart leader {}", c.nodes[l].name),
                    Undo::Restart(l),
                )
            }
            None => ("restart leader: no leader known".into(), Undo::Nothing),
        },
    })
}

fn undo(c: &mut Cluster, u: Undo) -> Result<()> {
    match u {
        Undo::Restart(i) => {
            let node = &mut c.nodes[i];
            node.daemon
                .restart()
                .with_context(|| format!("restarting {}", node.name))?;
            node.down = false;
        }
        Undo::Resume(i) => {
            c.nodes[i].daemon.resume()?;
            c.nodes[i].paused = false;
        }
        Undo::Link(i) => c.net.heal(&c.nodes[i].host)?,
        Undo::Rules => c.net.heal_all()?,
        Undo::Nothing => {}
    }
    Ok(())
}

/// Runs faults of `kinds` until `duration` has passed since `start`; every
/// fault is healed before the next one and before it returns. With
/// `spare_leader`, node and link faults pick a node other than the
/// current leader (the leader can still change, e.g. when a follower cut
/// off comes back with a higher term).
pub fn run(
    c: &mut Cluster,
    seed: u64,
    kinds: &[Fault],
    spare_leader: bool,
    start: Instant,
    duration: Duration,
) -> Result<Vec<Applied>> {
    let mut rng = ChaCha8Rng::seed_from_u64(seed);
    let mut log = Vec::new();
    let end = start + duration;
    while Instant::now() < end {
        std::thread::sleep(Duration::from_millis(rng.random_range(1000..4000)));
        if Instant::now() >= end {
            break;
        }
        let fault = kinds[rng.random_range(0..kinds.len())];
        let at = start.elapsed();
        let (what, u) = apply(c, fault, spare_leader, &mut rng)?;
        let hold = match fault {
            Fault::RestartLeader => Duration::from_millis(rng.random_range(0..500)),
            _ => Duration::from_millis(rng.random_range(2000..7000)),
        };
        std::thread::sleep(hold);
        undo(c, u)?;
        let healed = start.elapsed();
        eprintln!(
            "faults: {:>7.1}s..{:>6.1}s {what}",
            at.as_secs_f64(),
            healed.as_secs_f64()
        );
        log.push(Applied { fault, healed });
    }
    Ok(log)
}

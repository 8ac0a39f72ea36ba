//! The clients: threads that call random managers through the API's Unix
//! sockets and record every call, and the sampler of `service ps`
//! snapshots.

use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use flotilla_api::client::{Client, ClientError};
use flotilla_faults::{Call, Op, Outcome, Snapshot, TaskSample, Time};
use flotilla_types::DesiredState;
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;

use crate::cluster::{seen, spec};

/// How long one call may take before its outcome is unknown.
pub const CALL_TIMEOUT: Duration = Duration::from_secs(8);

/// What the clients share: the managers' sockets, the clock, the records.
pub struct Shared {
    pub start: Instant,
    pub sockets: Vec<PathBuf>,
    pub registers: Vec<String>,
    pub scaled: Vec<String>,
    pub stop: AtomicBool,
    pub ops: Mutex<Vec<Op>>,
    pub snapshots: Mutex<Vec<Snapshot>>,
}

impl Shared {
    pub fn now(&self) -> Time {
        self.start.elapsed().as_nanos() as Time
    }
}

/// How a failed call ended: certain that nothing happened (a 4xx, or no
/// daemon to send it to), or unknown (it was sent and the answer did not
/// come, or came as a 5xx).
fn failure(e: &ClientError) -> Outcome {
    match e {
        ClientError::Api { status, .. } if *status < 500 => Outcome::Failed(e.to_string()),
        ClientError::Unreachable { .. } | ClientError::PermissionDenied { .. } => {
            Outcome::Failed(e.to_string())
        }
        _ => Outcome::Unknown(e.to_string()),
    }
}

async fn perform(client: &Client, call: &Call) -> Outcome {
    let done = |r: Result<(), ClientError>| match r {
        Ok(()) => Outcome::Ok,
        Err(e) => failure(&e),
    };
    match call {
        Call::Create {
            service,
            replicas,
            label,
        } => done(
            client
                .create_service(&spec(service, *replicas, label.as_deref()))
                .await
                .map(|_| ()),
        ),
        Call::WriteLabel { service, value } => done(
            client
                .replace_service(service, &spec(service, 0, Some(value)), None)
                .await
                .map(|_| ()),
        ),
        Call::Scale { service, replicas } => {
            done(client.scale(service, *replicas).await.map(|_| ()))
        }
        Call::Remove { service } => done(client.remove_service(service).await.map(|_| ())),
        Call::Read { service } => {
            let r = client.service(service).await;
            let warning = {
                let w = client.take_warnings();
                (!w.is_empty()).then(|| w.join("; "))
            };
            match r {
                Ok(v) => Outcome::Read {
                    seen: Some(seen(&v)),
                    warning,
                },
                Err(ClientError::Api { status: 404, .. }) => Outcome::Read {
                    seen: None,
                    warning,
                },
                Err(e) => match failure(&e) {
                    // A read that did not answer tells nothing.
                    Outcome::Failed(m) | Outcome::Unknown(m) => Outcome::Failed(m),
                    other => other,
                },
            }
        }
    }
}

/// One client: until `stop`, picks an operation and a manager at random
/// and records the call.
pub fn run_client(id: usize, seed: u64, shared: &Shared) -> anyhow::Result<()> {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    let mut rng = ChaCha8Rng::seed_from_u64(seed.wrapping_add(1 + id as u64));
    let mut n = 0u64;
    let mut mine: Vec<String> = Vec::new();
    while !shared.stop.load(Ordering::SeqCst) {
        n += 1;
        let target = rng.random_range(0..shared.sockets.len());
        let roll = rng.random_range(0..100);
        let pick =
            |rng: &mut ChaCha8Rng, from: &[String]| from[rng.random_range(0..from.len())].clone();
        let call = match roll {
            0..30 => Call::WriteLabel {
                service: pick(&mut rng, &shared.registers),
                value: format!("c{id}-{n}"),
            },
            30..60 => Call::Read {
                service: pick(&mut rng, &shared.registers),
            },
            60..72 => Call::Scale {
                service: pick(&mut rng, &shared.scaled),
                replicas: rng.random_range(0..4),
            },
            72..82 => Call::Read {
                service: pick(&mut rng, &shared.scaled),
            },
            82..92 if mine.len() < 4 => {
                let name = format!("churn-{id}-{n}");
                mine.push(name.clone());
                Call::Create {
                    service: name,
                    replicas: 1,
                    label: None,
                }
            }
            _ if !mine.is_empty() => Call::Remove {
                service: mine.remove(rng.random_range(0..mine.len())),
            },
            _ => continue,
        };
        let client = Client::unix(&shared.sockets[target]).with_timeout(CALL_TIMEOUT);
        let invoke = shared.now();
        let outcome = rt.block_on(perform(&client, &call));
        let complete = shared.now();
        if let Ok(mut ops) = shared.ops.lock() {
            ops.push(Op {
                client: id,
                call,
                invoke,
                complete,
                outcome,
            });
        }
        std::thread::sleep(Duration::from_millis(rng.random_range(10..60)));
    }
    Ok(())
}

/// Samples `service ps` of the scaled services from random managers until
/// `stop`.
pub fn run_sampler(seed: u64, shared: &Shared) -> anyhow::Result<()> {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    let mut rng = ChaCha8Rng::seed_from_u64(seed.wrapping_add(1000));
    while !shared.stop.load(Ordering::SeqCst) {
        let target = rng.random_range(0..shared.sockets.len());
        let client = Client::unix(&shared.sockets[target]).with_timeout(Duration::from_secs(3));
        for service in &shared.scaled {
            let at = shared.now();
            if let Ok(tasks) = rt.block_on(client.tasks(service)) {
                let tasks = tasks
                    .into_iter()
                    .map(|t| TaskSample {
                        id: t.id,
                        slot: t.slot,
                        desired_running: t.desired_state == DesiredState::Running,
                        node: t.node,
                        state: format!("{:?}", t.state),
                    })
                    .collect();
                if let Ok(mut s) = shared.snapshots.lock() {
                    s.push(Snapshot {
                        at,
                        source: format!("m{}", target + 1),
                        service: service.clone(),
                        tasks,
                    });
                }
            }
        }
        std::thread::sleep(Duration::from_millis(500));
    }
    Ok(())
}

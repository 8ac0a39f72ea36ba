//! The agent's side of its session with the leader's dispatcher: sends
//! status reports and heartbeats, receives assignments, and follows the
//! leader when it moves.

use std::sync::Arc;
use std::time::Duration;

use tokio::sync::{mpsc, watch};
use tokio_util::sync::CancellationToken;

use flotilla_agent::{Assignments, TaskReport};
use flotilla_store::TaskStatusUpdate;
use flotilla_transport::{ClusterClient, Target};
use flotilla_types::mesh::MeshTable;
use flotilla_types::{Epoch, NodeRole};

use super::dispatcher::{Dispatcher, LONG_POLL};
use super::wire::{SessionRequest, SessionResponse};
use super::VERSION;

/// Where this node's dispatcher is.
pub trait LeaderFinder: Send + Sync + 'static {
    /// The dispatcher in this process, when this node leads.
    fn local(&self) -> Option<Arc<Dispatcher>>;
    /// The leader's cluster address as far as this node knows.
    fn leader_addr(&self) -> Option<String>;
}

/// How often the labels of the node's Docker Engine are read again: they
/// change only when the engine restarts with other ones.
const ENGINE_LABELS_EVERY: Duration = Duration::from_secs(30);

/// The labels of the node's Docker Engine (`DOCKER_HOST` or the default
/// socket), read now and every [`ENGINE_LABELS_EVERY`] until `shutdown`;
/// none while no engine answers (a node without Docker).
fn watch_engine_labels(
    shutdown: CancellationToken,
) -> watch::Receiver<std::collections::BTreeMap<String, String>> {
    let (tx, rx) = watch::channel(Default::default());
    tokio::spawn(async move {
        let engine = flotilla_agent::DockerDriver::from_env();
        loop {
            let read = tokio::time::timeout(Duration::from_secs(5), engine.engine_labels()).await;
            // An engine that does not answer in time keeps the labels it
            // had; one that is not there has none.
            let labels = match read {
                Ok(Ok(labels)) => Some(labels),
                Ok(Err(e)) => {
                    tracing::debug!(error = %e, "no engine labels");
                    Some(Default::default())
                }
                Err(_) => None,
            };
            if let Some(labels) = labels {
                tx.send_if_modified(|have| {
                    let changed = *have != labels;
                    *have = labels;
                    changed
                });
            }
            tokio::select! {
                _ = shutdown.cancelled() => return,
                _ = tokio::time::sleep(ENGINE_LABELS_EVERY) => {}
            }
        }
    });
    rx
}

/// Runs the session until `shutdown`.
pub struct SessionClient {
    pub node_id: String,
    pub addr: String,
    /// This node's client API address, if it serves one.
    pub api_addr: String,
    pub client: ClusterClient,
    pub finder: Arc<dyn LeaderFinder>,
    /// Managers to try when no leader is known (from the last answer or
    /// from joining).
    pub managers: Vec<String>,
    /// The role this node's certificate states.
    pub role: NodeRole,
    /// The cluster epoch this node follows; a newer one from a
    /// dispatcher's answer replaces it (and is recorded in node.json).
    pub epoch: Epoch,
    /// Where `node.json` is, to record the managers' addresses.
    pub data_dir: Option<std::path::PathBuf>,
    /// Told once when the store gives this node another role (promote or
    /// demote): the new role and raft ID.
    pub role_changed: mpsc::UnboundedSender<(NodeRole, u64, Option<String>)>,
    /// Where the mesh tables from the dispatcher go (this node's mesh).
    pub mesh: watch::Sender<MeshTable>,
    /// Where the network tables go (this node's wiring).
    pub networks: watch::Sender<flotilla_types::network::NetworkTable>,
}

enum Outcome {
    Answer(Box<SessionResponse>),
    Failed(String),
    /// New reports arrived while the long poll waited.
    Interrupted(Vec<TaskReport>),
}

impl SessionClient {
    pub async fn run(
        mut self,
        assignments: watch::Sender<Arc<Assignments>>,
        mut reports: mpsc::UnboundedReceiver<Vec<TaskReport>>,
        shutdown: CancellationToken,
    ) {
        // What the node's kernel and privileges allow, found once and
        // reported with every round: the leader places tasks on networks
        // only where they can be wired. A node on a loopback address wires
        // nothing (see `member`), so it has nothing to probe.
        let loopback = self
            .addr
            .parse::<std::net::SocketAddr>()
            .is_ok_and(|a| a.ip().is_loopback());
        let overlay_error = if let Some(reason) = flotilla_agent::wiring::overridden() {
            Some(reason)
        } else if loopback {
            None
        } else {
            let timeout = flotilla_agent::wiring::PROBE_TIMEOUT;
            let probed = tokio::time::timeout(
                timeout,
                tokio::task::spawn_blocking(|| {
                    flotilla_agent::wiring::probe(&flotilla_agent::wiring::System::default())
                }),
            )
            .await;
            match probed {
                Ok(Ok(result)) => result.err(),
                Ok(Err(e)) => Some(format!("the overlay probe failed: {e}")),
                Err(_) => Some(format!(
                    "the overlay probe (ip netns, vxlan, bridge) did not finish within {timeout:?}"
                )),
            }
        };
        if let Some(reason) = &overlay_error {
            tracing::warn!(%reason, "this node cannot run tasks on overlay networks");
        }
        let engine_labels = watch_engine_labels(shutdown.clone());
        let mut pending: Vec<TaskReport> = Vec::new();
        let mut known_version = 0u64;
        let mut known_mesh = 0u64;
        let mut known_networks = 0u64;
        let mut redirect: Option<String> = None;
        let mut next_manager = 0usize;
        let mut failures = 0u32;
        loop {
            while let Ok(more) = reports.try_recv() {
                pending.extend(more);
            }
            let request = SessionRequest {
                node_id: self.node_id.clone(),
                reports: pending
                    .iter()
                    .map(|r| TaskStatusUpdate {
                        task_id: r.task_id.clone(),
                        status: r.status.clone(),
                    })
                    .collect(),
                known_version,
                addr: self.addr.clone(),
                api_addr: self.api_addr.clone(),
                version: VERSION.to_string(),
                role: Some(self.role),
                epoch: self.epoch.clone(),
                entry_format: crate::announced_format(),
                known_mesh: Some(known_mesh),
                overlay_error: overlay_error.clone(),
                known_networks: Some(known_networks),
                engine_labels: engine_labels.borrow().clone(),
            };
            let local = self.finder.local();
            // This node's own address is never a useful remote target: if
            // it led, `local` would be set (a manager removed from the raft
            // group may still think it leads).
            let own = self.addr.clone();
            let useful = |a: &String| !a.is_empty() && *a != own;
            let remote = redirect
                .clone()
                .filter(useful)
                .or_else(|| self.finder.leader_addr().filter(useful))
                .or_else(|| {
                    let others: Vec<&String> = self.managers.iter().filter(|a| useful(a)).collect();
                    if others.is_empty() {
                        return None;
                    }
                    next_manager = (next_manager + 1) % others.len();
                    others.get(next_manager).map(|a| (*a).clone())
                });
            let sent_reports = !pending.is_empty();
            let call = async {
                match (&local, &remote) {
                    (Some(d), _) => d.session(request).await.map_err(|e| e.to_string()),
                    (None, Some(addr)) => self
                        .client
                        .post::<_, SessionResponse>(
                            Target::Manager,
                            addr,
                            "/cluster/v1/session",
                            &request,
                            LONG_POLL + Duration::from_secs(4),
                        )
                        .await
                        .map_err(|e| e.to_string()),
                    (None, None) => Err("no manager is known".to_string()),
                }
            };
            let outcome = tokio::select! {
                _ = shutdown.cancelled() => return,
                r = call => match r {
                    Ok(a) => Outcome::Answer(Box::new(a)),
                    Err(e) => Outcome::Failed(e),
                },
                more = reports.recv(), if !sent_reports => match more {
                    Some(m) => Outcome::Interrupted(m),
                    None => return,
                },
            };
            match outcome {
                Outcome::Interrupted(more) => {
                    // Give a burst a moment to complete, then send it whole.
                    pending.extend(more);
                    tokio::time::sleep(Duration::from_millis(5)).await;
                }
                Outcome::Failed(e) => {
                    failures += 1;
                    redirect = None;
                    if failures == 1 || failures % 20 == 0 {
                        tracing::warn!(error = %e, target = ?remote, "session with the dispatcher failed; retrying");
                    }
                    let backoff = Duration::from_millis((100 * u64::from(failures)).min(1000));
                    tokio::select! {
                        _ = shutdown.cancelled() => return,
                        _ = tokio::time::sleep(backoff) => {}
                    }
                }
                Outcome::Answer(answer) => {
                    failures = 0;
                    // The manager admitted this epoch, so its own is the
                    // one to follow (none: in process, or an older one).
                    if answer.epoch != Epoch::default() && answer.epoch != self.epoch {
                        tracing::info!(from = %self.epoch, to = %answer.epoch, "following the cluster epoch of the managers");
                        self.epoch = answer.epoch.clone();
                        if let Some(dir) = &self.data_dir {
                            if let Ok(Some(mut identity)) = super::identity::load(dir) {
                                identity.epoch = self.epoch.clone();
                                if let Err(e) = super::identity::store(dir, &identity) {
                                    tracing::warn!(error = %e, "cannot record the cluster epoch");
                                }
                            }
                        }
                    }
                    if let Some(role) = answer.role {
                        if role != self.role {
                            tracing::info!(from = %self.role, to = %role, "this node's role changed");
                            let _ = self
                                .role_changed
                                .send((role, answer.raft_id, remote.clone()));
                            // Report it once; the daemon restarts in its new role.
                            self.role = role;
                        }
                    }
                    if !answer.managers.is_empty() && answer.managers != self.managers {
                        self.managers = answer.managers.clone();
                        // Remember them: after a restart this node must find
                        // the cluster even if the managers it joined through
                        // are gone.
                        if let Some(dir) = &self.data_dir {
                            if let Ok(Some(mut identity)) = super::identity::load(dir) {
                                identity.managers = self.managers.clone();
                                if let Err(e) = super::identity::store(dir, &identity) {
                                    tracing::warn!(error = %e, "cannot record the managers' addresses");
                                }
                            }
                        }
                    }
                    if let Some(to) = answer.redirect {
                        redirect = Some(to);
                        tokio::time::sleep(Duration::from_millis(50)).await;
                        continue;
                    }
                    redirect = None;
                    if sent_reports {
                        pending.clear();
                    }
                    known_version = answer.version;
                    if let Some(table) = answer.mesh {
                        self.mesh.send_replace(table);
                    }
                    known_mesh = answer.mesh_version;
                    if let Some(table) = answer.networks {
                        self.networks.send_replace(table);
                    }
                    known_networks = answer.networks_version;
                    if let Some(a) = answer.assignments {
                        assignments.send_replace(Arc::new(Assignments {
                            tasks: a.tasks,
                            known_task_ids: a.known_task_ids,
                            files: a.files,
                            ready: true,
                        }));
                    }
                }
            }
        }
    }
}

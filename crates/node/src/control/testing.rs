//! An in-memory store and writer for the control layer's tests: a
//! proposal is applied to the shared state at once and the applied index
//! bumped, as the raft member does once a command commits.

use std::sync::{Arc, Mutex, RwLock};

use tokio::sync::watch;

use flotilla_manager::{Clock, StoreView};
use flotilla_store::{Command, CommandResult, State};
use flotilla_types::{Availability, Cluster, Node, NodeRole, NodeState};

use super::{Control, WriteFuture, Writer};
use crate::ProposeFailure;

/// A state with a cluster and the named nodes (ID = name), managers with
/// raft IDs 1, 2, ... in order.
pub fn cluster(nodes: &[(&str, NodeRole)]) -> State {
    let mut state = State::default();
    let cluster = Cluster {
        worker_secret: "worker-secret".into(),
        manager_secret: "manager-secret".into(),
        ..Cluster::bare("cluster", 1)
    };
    let mut raft_id = 0;
    for (i, (name, role)) in nodes.iter().enumerate() {
        if *role == NodeRole::Manager {
            raft_id += 1;
        }
        let node = Node {
            id: name.to_string(),
            raft_id: if *role == NodeRole::Manager {
                raft_id
            } else {
                0
            },
            name: name.to_string(),
            hostname: name.to_string(),
            role: *role,
            availability: Availability::Active,
            labels: Default::default(),
            state: NodeState::Ready,
            addr: format!("10.0.0.{}:4280", i + 1),
            api_addr: String::new(),
            version: "test".into(),
            resources: Default::default(),
            platform: Default::default(),
            created_at: 1,
            last_seen: 1,
            entry_format: 0,
            overlay_error: None,
            engine_labels: Default::default(),
        };
        let command = if i == 0 {
            Command::InitCluster {
                cluster: cluster.clone(),
                node,
            }
        } else {
            Command::UpsertNode { node }
        };
        let index = state.index + 1;
        let (result, _) = state.apply(index, &command);
        assert!(result.is_ok(), "{result:?}");
    }
    if let Some(c) = state.cluster.as_mut() {
        c.next_raft_id = raft_id + 1;
    }
    state
}

struct FixedClock;

impl Clock for FixedClock {
    fn now_ms(&self) -> u64 {
        1_000
    }
}

/// The fake raft member.
pub struct Fake {
    state: Arc<RwLock<State>>,
    applied: watch::Sender<u64>,
    removed: Mutex<Vec<u64>>,
    refuse_removal: Mutex<Option<String>>,
    /// Committed one each just before the next proposals, as other
    /// clients' writes that race this one.
    races: Mutex<Vec<Command>>,
    /// Commands committed, in order.
    pub log: Mutex<Vec<Command>>,
}

impl Fake {
    pub fn new(state: State) -> Arc<Fake> {
        let (applied, _) = watch::channel(state.index);
        Arc::new(Fake {
            state: Arc::new(RwLock::new(state)),
            applied,
            removed: Mutex::new(Vec::new()),
            refuse_removal: Mutex::new(None),
            races: Mutex::new(Vec::new()),
            log: Mutex::new(Vec::new()),
        })
    }

    pub fn control(self: &Arc<Self>) -> Control {
        let view = StoreView {
            state: self.state.clone(),
            applied: self.applied.subscribe(),
        };
        Control::new(view, self.clone(), Arc::new(FixedClock), Default::default())
    }

    pub fn read<T>(&self, f: impl FnOnce(&State) -> T) -> T {
        f(&self.state.read().expect("state"))
    }

    /// Applies `command` as if another client's write committed.
    pub fn commit(&self, command: &Command) -> CommandResult {
        let mut state = self.state.write().expect("state");
        let index = state.index + 1;
        let (result, _) = state.apply(index, command);
        self.applied.send_replace(index);
        self.log.lock().expect("log").push(command.clone());
        result
    }

    /// Commits `command` just before each of the next `times` proposals.
    pub fn race(&self, command: Command, times: usize) {
        self.races
            .lock()
            .expect("races")
            .extend(std::iter::repeat_n(command, times));
    }

    /// Raft IDs taken out of the voters.
    pub fn removed(&self) -> Vec<u64> {
        self.removed.lock().expect("removed").clone()
    }

    /// Makes `remove_manager` fail with `reason`.
    pub fn refuse_removal(&self, reason: &str) {
        *self.refuse_removal.lock().expect("refuse") = Some(reason.into());
    }
}

impl Writer for Fake {
    fn propose(&self, command: Command) -> WriteFuture<'_, Result<CommandResult, ProposeFailure>> {
        Box::pin(async move {
            let race = self.races.lock().expect("races").pop();
            if let Some(other) = race {
                let _ = self.commit(&other);
            }
            Ok(self.commit(&command))
        })
    }

    fn remove_manager(&self, raft_id: u64) -> WriteFuture<'_, Result<(), String>> {
        Box::pin(async move {
            if let Some(reason) = self.refuse_removal.lock().expect("refuse").clone() {
                return Err(reason);
            }
            self.removed.lock().expect("removed").push(raft_id);
            Ok(())
        })
    }

    fn leader(&self) -> Option<u64> {
        Some(1)
    }
}

/// Marks node `id` down, as the dispatcher does when its heartbeats stop.
pub fn down(state: &mut State, id: &str) {
    if let Some(n) = state.nodes.get_mut(id) {
        n.state = NodeState::Down;
    }
}

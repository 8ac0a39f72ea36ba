//! A manager's raft member: the store opened, openraft started, and the few
//! operations the rest of the node needs.

use std::collections::BTreeMap;
use std::path::Path;
use std::sync::{Arc, RwLock};
use std::time::Duration;

use openraft::error::{ClientWriteError, InitializeError, RaftError as OpenraftError};
use openraft::{BasicNode, Config, SnapshotPolicy};
use tokio::sync::watch;

use flotilla_store::{Command, CommandResult, EntryError, RequestId, State};

use crate::lease::Lease;
use crate::network::{HttpNetwork, LocalOnlyNetwork};
use crate::storage::{self, OpenError};
use crate::Raft;

/// The group's progress as one member sees it ([`RaftNode::progress`]).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Progress {
    /// Raft IDs of the voters.
    pub voters: Vec<u64>,
    /// This member's last log index.
    pub last_log_index: u64,
    /// On the leader: the index up to which each member's log matches
    /// (learners included); `None` on a follower.
    pub matched: Option<BTreeMap<u64, u64>>,
}

/// How many bytes of a snapshot go in one InstallSnapshot.
pub const SNAPSHOT_CHUNK_BYTES: u64 = 1 << 20;
/// How long one InstallSnapshot chunk may take, its fsync included.
pub const SNAPSHOT_CHUNK_TIMEOUT_MS: u64 = 2_000;

/// Raft timings, chosen together (docs/store.md, "Raft timings"):
///
/// - `heartbeat_ms` (H) is also how long openraft 0.9 gives every
///   AppendEntries to finish, the follower's fsync included; openraft sends
///   a heartbeat on its tick, every 1.5 H.
/// - `election_min_ms` is the leader lease ([`crate::lease`]): a leader acts
///   only while a quorum acknowledged it this recently. It must exceed the
///   age an acknowledgement reaches on a healthy leader, one tick plus one
///   AppendEntries (2.5 H), with room for a late one: 4 H.
/// - `election_max_ms` is 1.5 times the lowest. openraft's followers refuse
///   other candidates for `election_max_ms` after the leader's last
///   heartbeat (its lease), and stand after that plus a timeout drawn anew
///   each term from `election_min_ms..election_max_ms` ([`crate::elect`]):
///   a dead leader is replaced 1.5-1.8 s after its last heartbeat with
///   these defaults (standing after the lease plus only the part of the
///   draw above the lowest, 0.9-1.2 s, made the fault suite stall; see
///   docs/store.md). Shorter ones (100/350/525 ms) let the lease lapse
///   dozens of times a minute on a loaded two-core machine (docs/store.md).
/// - After a failed AppendEntries, replication waits
///   [`crate::network::REPLICATION_BACKOFF`] (one H), far below an election
///   timeout, not openraft's 500 ms.
#[derive(Debug, Clone)]
pub struct RaftTimings {
    pub heartbeat_ms: u64,
    pub election_min_ms: u64,
    pub election_max_ms: u64,
    /// Build a snapshot (and purge the log) after this many entries.
    pub snapshot_every: u64,
    /// How long a write may wait to commit before it fails.
    pub write_timeout: Duration,
}

impl Default for RaftTimings {
    fn default() -> Self {
        RaftTimings {
            heartbeat_ms: 150,
            election_min_ms: 600,
            election_max_ms: 900,
            snapshot_every: 5_000,
            write_timeout: Duration::from_secs(5),
        }
    }
}

/// What went wrong with raft.
#[derive(Debug, thiserror::Error)]
pub enum RaftError {
    #[error(transparent)]
    Open(#[from] OpenError),
    #[error("raft failed to start: {0}")]
    Start(String),
    #[error("this manager is not the leader{}", leader_text(.leader))]
    NotLeader { leader: Option<u64> },
    #[error("timed out after {0:?} waiting for a raft write to commit")]
    Timeout(Duration),
    /// The command exists only from entry format `needs` on, and a manager
    /// still reads only `readable` (a rolling upgrade is under way).
    #[error(
        "this change needs raft entry format {needs}, and a manager of this cluster reads \
         only format {readable}: upgrade every manager first"
    )]
    FormatNotReady { needs: u32, readable: u32 },
    #[error("raft: {0}")]
    Other(String),
}

fn leader_text(leader: &Option<u64>) -> String {
    match leader {
        Some(id) => format!(" (raft member {id} is)"),
        None => " and no leader is known".to_string(),
    }
}

/// The raft member of this manager and the state it replicates.
pub struct RaftNode {
    raft: Raft,
    id: u64,
    state: Arc<RwLock<State>>,
    applied: watch::Receiver<u64>,
    write_timeout: Duration,
    initialized: std::sync::atomic::AtomicBool,
    epoch: crate::network::EpochSource,
    stopped: Arc<RwLock<Option<EntryError>>>,
    lease: Arc<Lease>,
    lease_watch: tokio::task::JoinHandle<()>,
    election_timer: tokio::task::JoinHandle<()>,
    batcher: crate::batch::Batcher,
    batcher_task: tokio::task::JoinHandle<()>,
    fence: tokio::task::JoinHandle<()>,
    /// Told how long each committed proposal took (the node's metrics).
    commit_observer: std::sync::OnceLock<CommitObserver>,
}

/// What [`RaftNode::observe_commits`] calls with each proposal's time from
/// submission to its answer (committed and applied).
pub type CommitObserver = Box<dyn Fn(Duration) + Send + Sync>;

/// How a member reaches the others.
enum Transport {
    /// The cluster port.
    Http(Box<flotilla_transport::ClusterClient>),
    /// Nobody (a lone member).
    Local,
    /// Members in this process.
    Memory(crate::network::MemoryNetwork),
}

impl RaftNode {
    /// Opens `<dir>/raft.redb` and starts openraft as member `id`.
    pub async fn start(dir: &Path, id: u64, timings: &RaftTimings) -> Result<Self, RaftError> {
        Self::start_with(dir, id, timings, None).await
    }

    /// Like [`RaftNode::start`], talking to other members through `client`
    /// (None: a member that never dials, for tests).
    pub async fn start_with(
        dir: &Path,
        id: u64,
        timings: &RaftTimings,
        client: Option<flotilla_transport::ClusterClient>,
    ) -> Result<Self, RaftError> {
        let transport = match client {
            Some(c) => Transport::Http(Box::new(c)),
            None => Transport::Local,
        };
        Self::start_inner(dir, id, timings, transport, None).await
    }

    /// Like [`RaftNode::start`], talking to the other members of `network`
    /// in this process (tests of a group without sockets). The caller
    /// registers the member's [`RaftNode::raft`] with the network.
    pub async fn start_in_memory(
        dir: &Path,
        id: u64,
        timings: &RaftTimings,
        network: crate::network::MemoryNetwork,
    ) -> Result<Self, RaftError> {
        Self::start_inner(dir, id, timings, Transport::Memory(network), None).await
    }

    /// Like [`RaftNode::start`], with `hook` called before every durable
    /// commit of the log (tests: a slow or failing disk).
    pub async fn start_with_sync_hook(
        dir: &Path,
        id: u64,
        timings: &RaftTimings,
        hook: Arc<dyn crate::log_writer::SyncHook>,
    ) -> Result<Self, RaftError> {
        Self::start_inner(dir, id, timings, Transport::Local, Some(hook)).await
    }

    async fn start_inner(
        dir: &Path,
        id: u64,
        timings: &RaftTimings,
        transport: Transport,
        hook: Option<Arc<dyn crate::log_writer::SyncHook>>,
    ) -> Result<Self, RaftError> {
        let path = dir.join("raft.redb");
        // A raft stopped in this process lets go of the file only when its
        // tasks have wound down; give that a moment instead of failing.
        let deadline = tokio::time::Instant::now() + Duration::from_secs(3);
        let (log, sm) = loop {
            match storage::open(&path) {
                Err(OpenError::Database {
                    source: redb::DatabaseError::DatabaseAlreadyOpen,
                    ..
                }) if tokio::time::Instant::now() < deadline => {
                    tokio::time::sleep(Duration::from_millis(20)).await;
                }
                other => break other?,
            }
        };
        let mut log = log;
        if let Some(hook) = hook {
            log.set_sync_hook(hook);
        }
        let log_state = openraft::storage::RaftLogStorage::get_log_state(&mut log)
            .await
            .map_err(|e| RaftError::Start(e.to_string()))?;
        let had_log = log_state.last_log_id.is_some() || sm.membership().log_id().is_some();
        let state = sm.shared();
        let applied = sm.applied();
        let stopped = sm.stopped();
        let config = Config {
            cluster_name: "flotilla".to_string(),
            heartbeat_interval: timings.heartbeat_ms,
            election_timeout_min: timings.election_min_ms,
            election_timeout_max: timings.election_max_ms,
            snapshot_policy: SnapshotPolicy::LogsSinceLast(timings.snapshot_every),
            // Members that lag a little catch up from the log; the rest get
            // the snapshot.
            max_in_snapshot_log_to_keep: (timings.snapshot_every / 10).max(1),
            // A snapshot goes in chunks, each given install_snapshot_timeout
            // to finish: openraft's 3 MiB in 200 ms does not hold for a
            // store of many tasks on a loaded machine.
            snapshot_max_chunk_size: SNAPSHOT_CHUNK_BYTES,
            install_snapshot_timeout: SNAPSHOT_CHUNK_TIMEOUT_MS,
            // openraft draws its election timeout once per process; the
            // timer in `elect` draws it again every term.
            enable_elect: false,
            ..Config::default()
        }
        .validate()
        .map_err(|e| RaftError::Start(e.to_string()))?;
        let config = Arc::new(config);
        let epoch = crate::network::EpochSource::new(state.clone());
        let greater_log = crate::elect::GreaterLog::default();
        let raft = match transport {
            Transport::Http(c) => {
                let network =
                    HttpNetwork::new(*c, epoch.clone()).with_greater_log(greater_log.clone());
                Raft::new(id, config, network, log, sm).await
            }
            Transport::Local => Raft::new(id, config, LocalOnlyNetwork, log, sm).await,
            Transport::Memory(network) => Raft::new(id, config, network, log, sm).await,
        }
        .map_err(|e| {
            // Applying what the log committed can stop at an entry this
            // version cannot read: say that, not openraft's wrapping.
            let stopped = stopped
                .read()
                .ok()
                .and_then(|s| s.as_ref().map(|e| e.to_string()));
            RaftError::Start(stopped.unwrap_or_else(|| e.to_string()))
        })?;
        let lease = Lease::new(Duration::from_millis(timings.election_min_ms));
        let lease_watch = tokio::spawn(lease.clone().watch(raft.clone()));
        let election_timer = tokio::spawn(crate::elect::run(
            raft.clone(),
            id,
            greater_log,
            crate::elect::Timeouts {
                min: Duration::from_millis(timings.election_min_ms),
                max: Duration::from_millis(timings.election_max_ms),
                // openraft's leader lease is election_timeout_max.
                lease: Duration::from_millis(timings.election_max_ms),
            },
        ));
        let (batcher, batcher_task) =
            crate::batch::Batcher::start(raft.clone(), state.clone(), timings.write_timeout);
        let fence = tokio::spawn(stop_when_superseded(raft.clone(), epoch.clone()));
        Ok(RaftNode {
            raft,
            id,
            state,
            applied,
            write_timeout: timings.write_timeout,
            initialized: std::sync::atomic::AtomicBool::new(had_log),
            epoch,
            stopped,
            lease,
            lease_watch,
            election_timer,
            batcher,
            batcher_task,
            fence,
            commit_observer: std::sync::OnceLock::new(),
        })
    }

    /// This member's raft ID.
    pub fn id(&self) -> u64 {
        self.id
    }

    /// The openraft handle, for metrics and membership changes.
    pub fn raft(&self) -> &Raft {
        &self.raft
    }

    /// The replicated state; read it, never write it.
    pub fn state(&self) -> Arc<RwLock<State>> {
        self.state.clone()
    }

    /// This member's cluster epoch; `None` while its state holds no
    /// cluster (a manager that just joined).
    pub fn epoch(&self) -> Option<flotilla_types::Epoch> {
        self.epoch.get()
    }

    /// Watch of the last applied raft index.
    pub fn applied(&self) -> watch::Receiver<u64> {
        self.applied.clone()
    }

    /// Why this member stopped, if it did: it met an entry its version
    /// cannot read (see `flotilla_store::entry`), or openraft's core
    /// stopped on a fatal error (a storage error, a panic). Either way it no
    /// longer votes, replicates or applies, while the daemon still serves
    /// its last state. Shown first by `info`.
    pub fn stopped(&self) -> Option<String> {
        if let Some(why) = self.epoch.superseded() {
            return Some(format!(
                "this manager's raft group was replaced by 'init --force-new-cluster' or \
                 'flotilla restore' on another node, and its raft member has stopped ({why}); to serve again, \
                 remove its data dir and join the cluster again"
            ));
        }
        let unreadable = {
            let stopped = match self.stopped.read() {
                Ok(s) => s,
                Err(p) => p.into_inner(),
            };
            stopped.as_ref().map(|e| e.to_string())
        };
        if unreadable.is_some() {
            return unreadable;
        }
        let running = self.raft.metrics().borrow().running_state.clone();
        match running {
            Ok(()) | Err(openraft::error::Fatal::Stopped) => None,
            Err(fatal) => Some(format!(
                "this manager's raft member has stopped ({fatal}): it no longer votes, \
                 replicates or applies, and what it shows may be stale; restart its daemon"
            )),
        }
    }

    /// Whether this member has a membership (was initialized or joined).
    pub fn is_initialized(&self) -> bool {
        self.initialized.load(std::sync::atomic::Ordering::SeqCst)
            || self
                .raft
                .metrics()
                .borrow()
                .membership_config
                .membership()
                .voter_ids()
                .next()
                .is_some()
    }

    /// The current leader's raft ID, if known. A member that believes it
    /// leads but is no longer leader, or whose lease has lapsed, knows no
    /// leader.
    pub fn leader(&self) -> Option<u64> {
        let current = self.raft.metrics().borrow().current_leader;
        match current {
            Some(l) if l == self.id && !self.is_leader() => None,
            other => other,
        }
    }

    /// What this member knows of the group's progress: the voters, the
    /// last log index, and on the leader how far each member's log matches.
    pub fn progress(&self) -> Progress {
        let m = self.raft.metrics();
        let m = m.borrow();
        Progress {
            voters: m.membership_config.membership().voter_ids().collect(),
            last_log_index: m.last_log_index.unwrap_or(0),
            matched: m.replication.as_ref().map(|r| {
                r.iter()
                    .map(|(id, log)| (*id, log.map_or(0, |l| l.index)))
                    .collect()
            }),
        }
    }

    /// Whether this member leads. Both the server state and the leader ID
    /// must say so (a leader removed from the group keeps its own ID as the
    /// last known leader after it steps down), and a quorum must have
    /// acknowledged it within the lowest election timeout ([`Lease`]):
    /// openraft 0.9 keeps a leader cut off from the others in the Leader
    /// state until it hears a higher vote.
    pub fn is_leader(&self) -> bool {
        let term = {
            let m = self.raft.metrics();
            let m = m.borrow();
            if m.state != openraft::ServerState::Leader || m.current_leader != Some(self.id) {
                return false;
            }
            m.current_term
        };
        self.lease.holds(term)
    }

    /// A watch that is true while this member leads under its lease
    /// ([`RaftNode::is_leader`]); it changes when the lease lapses, even
    /// when openraft reports nothing new.
    pub fn leading(&self) -> watch::Receiver<bool> {
        self.lease.leading()
    }

    /// Makes this member the only voter of a new raft group.
    pub async fn initialize_single(&self, addr: &str) -> Result<(), RaftError> {
        let members = BTreeMap::from([(self.id, BasicNode::new(addr))]);
        let result = self.raft.initialize(members).await;
        self.initialized
            .store(true, std::sync::atomic::Ordering::SeqCst);
        match result {
            Ok(()) => Ok(()),
            Err(OpenraftError::APIError(InitializeError::NotAllowed(_))) => Ok(()),
            Err(e) => Err(RaftError::Other(e.to_string())),
        }
    }

    /// Waits until this member leads under its lease, up to `timeout`.
    pub async fn wait_leader(&self, timeout: Duration) -> Result<(), RaftError> {
        let mut leading = self.leading();
        let led = tokio::time::timeout(timeout, leading.wait_for(|l| *l))
            .await
            .map_err(|_| RaftError::Timeout(timeout))?
            .map(|_| ())
            .map_err(|_| RaftError::Other("raft stopped while waiting to lead".into()));
        led
    }

    /// Proposes a command and waits for it to be committed and applied.
    pub async fn propose(&self, command: Command) -> Result<CommandResult, RaftError> {
        self.propose_at(command).await.map(|(r, _)| r)
    }

    /// Like [`RaftNode::propose`], also returning the raft index it was
    /// applied at, so that another member can wait until it has it too.
    pub async fn propose_at(&self, command: Command) -> Result<(CommandResult, u64), RaftError> {
        self.propose_request(command, None).await
    }

    /// Like [`RaftNode::propose_at`], for the client request `request`:
    /// proposed again (a retry), it applies once and answers the first
    /// result (`flotilla_store::state::Requests`). The entry is written in
    /// the newest format every manager reads; a command that needs a newer
    /// one is refused ([`RaftError::FormatNotReady`]).
    pub async fn propose_request(
        &self,
        command: Command,
        request: Option<RequestId>,
    ) -> Result<(CommandResult, u64), RaftError> {
        let readable = {
            let state = match self.state.read() {
                Ok(s) => s,
                Err(p) => p.into_inner(),
            };
            flotilla_store::writable_format(&state)
        };
        if command.format() > readable {
            return Err(RaftError::FormatNotReady {
                needs: command.format(),
                readable,
            });
        }
        // Through the batcher: written alone, or in one entry with the
        // proposals queued beside it (`batch`).
        let (reply, answer) = tokio::sync::oneshot::channel();
        if !self
            .batcher
            .submit(crate::batch::Proposal::new(command, request, reply))
        {
            return Err(RaftError::Other("the raft proposer has stopped".into()));
        }
        let submitted = tokio::time::Instant::now();
        match tokio::time::timeout(self.write_timeout, answer).await {
            Err(_) => Err(RaftError::Timeout(self.write_timeout)),
            Ok(Err(_)) => Err(RaftError::Other("the raft proposer has stopped".into())),
            Ok(Ok(answer)) => {
                if answer.is_ok() {
                    if let Some(observe) = self.commit_observer.get() {
                        observe(submitted.elapsed());
                    }
                }
                answer
            }
        }
    }

    /// Calls `observe` with the time each proposal on this member took to
    /// commit and apply; only the first observer set is kept.
    pub fn observe_commits(&self, observe: CommitObserver) {
        let _ = self.commit_observer.set(observe);
    }

    /// Adds a manager as a voter: first as a learner that catches up, then
    /// as a voter.
    pub async fn add_voter(&self, id: u64, addr: &str) -> Result<(), RaftError> {
        let already = self
            .raft
            .metrics()
            .borrow()
            .membership_config
            .membership()
            .voter_ids()
            .any(|v| v == id);
        if already {
            return Ok(());
        }
        let node = BasicNode::new(addr);
        let add = tokio::time::timeout(
            Duration::from_secs(30),
            self.raft.add_learner(id, node, true),
        )
        .await
        .map_err(|_| RaftError::Timeout(Duration::from_secs(30)))?;
        map_write(add)?;
        self.change_voters(
            openraft::ChangeMembers::AddVoterIds([id].into()),
            Duration::from_secs(30),
        )
        .await
    }

    /// Builds a snapshot of everything applied and drops the log before it,
    /// so that members that join later receive the snapshot. Needed after
    /// seeding a store: the seeded state is in no log entry.
    pub async fn compact(&self, timeout: Duration) -> Result<(), RaftError> {
        let applied = *self.applied.borrow();
        self.raft
            .trigger()
            .snapshot()
            .await
            .map_err(|e| RaftError::Other(e.to_string()))?;
        let built = self
            .raft
            .wait(Some(timeout))
            .metrics(
                |m| m.snapshot.map(|s| s.index >= applied).unwrap_or(false),
                "the snapshot to be built",
            )
            .await;
        built.map_err(|_| RaftError::Timeout(timeout))?;
        self.raft
            .trigger()
            .purge_log(applied)
            .await
            .map_err(|e| RaftError::Other(e.to_string()))
    }

    /// On the leader: confirms leadership with a quorum and returns the
    /// index a linearizable read must see (read index).
    pub async fn read_index(&self, timeout: Duration) -> Result<u64, RaftError> {
        match tokio::time::timeout(timeout, self.raft.ensure_linearizable()).await {
            Err(_) => Err(RaftError::Timeout(timeout)),
            Ok(Ok(id)) => Ok(id.map(|l| l.index).unwrap_or(0)),
            Ok(Err(OpenraftError::APIError(
                openraft::error::CheckIsLeaderError::ForwardToLeader(f),
            ))) => Err(RaftError::NotLeader {
                leader: f.leader_id,
            }),
            Ok(Err(e)) => Err(RaftError::Other(e.to_string())),
        }
    }

    /// Waits until this member has applied `index`, up to `timeout`.
    pub async fn wait_applied(&self, index: u64, timeout: Duration) -> bool {
        let mut applied = self.applied.clone();
        let reached = tokio::time::timeout(timeout, applied.wait_for(|i| *i >= index)).await;
        matches!(reached, Ok(Ok(_)))
    }

    /// Removes a manager from the voters (demote). The leader refuses to
    /// remove the last voter.
    pub async fn remove_voter(&self, id: u64) -> Result<(), RaftError> {
        if removal_applied(&self.raft.metrics().borrow(), id) {
            return Ok(());
        }
        let change = self
            .change_voters(
                openraft::ChangeMembers::RemoveVoters([id].into()),
                Duration::from_secs(15),
            )
            .await;
        match change {
            // A leader that removed itself steps down once the change
            // commits, and openraft may answer the change "forward to
            // leader" although it is done: done is what this member
            // applied.
            Err(RaftError::NotLeader { .. }) => {
                let applied = self
                    .raft
                    .wait(Some(Duration::from_secs(5)))
                    .metrics(|m| removal_applied(m, id), "the removal to be applied")
                    .await;
                match applied {
                    Ok(_) => Ok(()),
                    Err(_) => change,
                }
            }
            other => other,
        }
    }

    /// Changes the voters; a change still in flight (a manager just added
    /// or removed) must finish first, so this retries while it does, for
    /// up to `patience`.
    async fn change_voters(
        &self,
        changes: openraft::ChangeMembers<u64, BasicNode>,
        patience: Duration,
    ) -> Result<(), RaftError> {
        let deadline = tokio::time::Instant::now() + patience;
        loop {
            let change = tokio::time::timeout(
                patience,
                self.raft.change_membership(changes.clone(), false),
            )
            .await
            .map_err(|_| RaftError::Timeout(patience))?;
            match change {
                Err(OpenraftError::APIError(ClientWriteError::ChangeMembershipError(
                    openraft::error::ChangeMembershipError::InProgress(_),
                ))) if tokio::time::Instant::now() < deadline => {
                    tokio::time::sleep(Duration::from_millis(100)).await;
                }
                other => return map_write(other),
            }
        }
    }

    /// Stops openraft. The store is closed when the last handle drops.
    pub async fn shutdown(&self) {
        self.lease_watch.abort();
        self.election_timer.abort();
        self.batcher_task.abort();
        self.fence.abort();
        if let Err(e) = self.raft.shutdown().await {
            tracing::warn!(error = %e, "raft shutdown");
        }
    }
}

impl Drop for RaftNode {
    fn drop(&mut self) {
        self.lease_watch.abort();
        self.election_timer.abort();
        self.batcher_task.abort();
        self.fence.abort();
    }
}

/// Stops `raft` once a member of the group that replaced this one (by
/// `init --force-new-cluster`) refused its raft message as superseded:
/// without it, the managers that force-new-cluster removed went on as a
/// group of their own, with a leader that took writes.
async fn stop_when_superseded(raft: Raft, epoch: crate::network::EpochSource) {
    let mut superseded = epoch.watch_superseded();
    if superseded.wait_for(Option::is_some).await.is_err() {
        return;
    }
    tracing::error!("this manager's raft group was replaced: stopping its raft member");
    if let Err(e) = raft.shutdown().await {
        tracing::warn!(error = %e, "raft shutdown");
    }
}

/// Whether this member applied a membership without `id` among the voters
/// and with no change under way.
fn removal_applied(m: &openraft::RaftMetrics<u64, BasicNode>, id: u64) -> bool {
    let membership = m.membership_config.membership();
    let uniform = membership.get_joint_config().len() == 1;
    let applied = match (m.membership_config.log_id(), m.last_applied) {
        (Some(config), Some(applied)) => config.index <= applied.index,
        (None, _) => true,
        (Some(_), None) => false,
    };
    uniform && applied && !membership.voter_ids().any(|v| v == id)
}

fn map_write<T>(
    r: Result<T, OpenraftError<u64, ClientWriteError<u64, BasicNode>>>,
) -> Result<(), RaftError> {
    r.map(|_| ()).map_err(write_error)
}

/// A failed openraft write (a client write, a membership change) as this
/// crate says it: not the leader, naming the one it knows, or why else.
pub(crate) fn write_error(e: OpenraftError<u64, ClientWriteError<u64, BasicNode>>) -> RaftError {
    match e {
        OpenraftError::APIError(ClientWriteError::ForwardToLeader(f)) => RaftError::NotLeader {
            leader: f.leader_id,
        },
        e => RaftError::Other(e.to_string()),
    }
}

//! The raft network between managers.
//!
//! [`HttpNetwork`] carries raft messages over the cluster port (mutual TLS,
//! manager certificates only). [`LocalOnlyNetwork`] reaches nobody: for
//! tests of a lone member, which never dials (openraft does not dial
//! itself). [`MemoryNetwork`] carries messages between members in one
//! process: for tests of a group without sockets.

use openraft::error::{
    InstallSnapshotError, NetworkError, PayloadTooLarge, RPCError, RaftError, RemoteError,
    Unreachable,
};
use openraft::network::{RPCOption, RaftNetwork, RaftNetworkFactory};
use openraft::raft::{
    AppendEntriesRequest, AppendEntriesResponse, InstallSnapshotRequest, InstallSnapshotResponse,
    VoteRequest, VoteResponse,
};
use openraft::{BasicNode, SnapshotMeta, Vote};

use std::collections::BTreeMap;
use std::sync::{Arc, OnceLock, RwLock};

use flotilla_store::State;
use flotilla_types::Epoch;

use crate::TypeConfig;

#[derive(Debug, thiserror::Error)]
#[error("no raft transport: node {0} cannot be reached from a one-node cluster")]
struct NoTransport(u64);

/// Hands out [`LocalOnly`] clients.
#[derive(Debug, Clone, Default)]
pub struct LocalOnlyNetwork;

/// A raft client that reaches nobody.
#[derive(Debug)]
pub struct LocalOnly {
    target: u64,
}

impl RaftNetworkFactory<TypeConfig> for LocalOnlyNetwork {
    type Network = LocalOnly;

    async fn new_client(&mut self, target: u64, _node: &BasicNode) -> Self::Network {
        LocalOnly { target }
    }
}

impl LocalOnly {
    fn unreachable<E: std::error::Error>(&self) -> RPCError<u64, BasicNode, E> {
        RPCError::Unreachable(Unreachable::new(&NoTransport(self.target)))
    }
}

impl RaftNetwork<TypeConfig> for LocalOnly {
    async fn append_entries(
        &mut self,
        _rpc: AppendEntriesRequest<TypeConfig>,
        _option: RPCOption,
    ) -> Result<AppendEntriesResponse<u64>, RPCError<u64, BasicNode, RaftError<u64>>> {
        Err(self.unreachable())
    }

    async fn install_snapshot(
        &mut self,
        _rpc: InstallSnapshotRequest<TypeConfig>,
        _option: RPCOption,
    ) -> Result<
        InstallSnapshotResponse<u64>,
        RPCError<u64, BasicNode, RaftError<u64, InstallSnapshotError>>,
    > {
        Err(self.unreachable())
    }

    async fn vote(
        &mut self,
        _rpc: VoteRequest<u64>,
        _option: RPCOption,
    ) -> Result<VoteResponse<u64>, RPCError<u64, BasicNode, RaftError<u64>>> {
        Err(RPCError::Network(NetworkError::new(&NoTransport(
            self.target,
        ))))
    }
}

/// Members of one process, reached by raft ID: for tests of a group without
/// sockets. A member that is not registered (or was taken out) is
/// unreachable, as a stopped manager is.
#[derive(Clone, Default)]
pub struct MemoryNetwork {
    members: Arc<RwLock<BTreeMap<u64, crate::Raft>>>,
}

impl std::fmt::Debug for MemoryNetwork {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let ids: Vec<u64> = self
            .members
            .read()
            .map(|m| m.keys().copied().collect())
            .unwrap_or_default();
        f.debug_struct("MemoryNetwork")
            .field("members", &ids)
            .finish()
    }
}

impl MemoryNetwork {
    /// Makes member `id` reachable through `raft`.
    pub fn register(&self, id: u64, raft: crate::Raft) {
        if let Ok(mut m) = self.members.write() {
            m.insert(id, raft);
        }
    }

    /// Makes member `id` unreachable.
    pub fn unregister(&self, id: u64) {
        if let Ok(mut m) = self.members.write() {
            m.remove(&id);
        }
    }

    fn member(&self, id: u64) -> Option<crate::Raft> {
        self.members.read().ok().and_then(|m| m.get(&id).cloned())
    }
}

/// A client of one member of a [`MemoryNetwork`].
#[derive(Debug)]
pub struct MemoryMember {
    target: u64,
    network: MemoryNetwork,
}

impl RaftNetworkFactory<TypeConfig> for MemoryNetwork {
    type Network = MemoryMember;

    async fn new_client(&mut self, target: u64, _node: &BasicNode) -> Self::Network {
        MemoryMember {
            target,
            network: self.clone(),
        }
    }
}

impl MemoryMember {
    /// The target's raft, if registered; else None, and the caller
    /// answers [`MemoryMember::unreachable`].
    fn raft(&self) -> Option<crate::Raft> {
        self.network.member(self.target)
    }

    fn unreachable<E: std::error::Error>(&self) -> RPCError<u64, BasicNode, E> {
        RPCError::Unreachable(Unreachable::new(&NoTransport(self.target)))
    }
}

impl RaftNetwork<TypeConfig> for MemoryMember {
    async fn append_entries(
        &mut self,
        rpc: AppendEntriesRequest<TypeConfig>,
        _option: RPCOption,
    ) -> Result<AppendEntriesResponse<u64>, RPCError<u64, BasicNode, RaftError<u64>>> {
        let Some(raft) = self.raft() else {
            return Err(self.unreachable());
        };
        raft.append_entries(rpc)
            .await
            .map_err(|e| RPCError::RemoteError(RemoteError::new(self.target, e)))
    }

    async fn install_snapshot(
        &mut self,
        rpc: InstallSnapshotRequest<TypeConfig>,
        _option: RPCOption,
    ) -> Result<
        InstallSnapshotResponse<u64>,
        RPCError<u64, BasicNode, RaftError<u64, InstallSnapshotError>>,
    > {
        let Some(raft) = self.raft() else {
            return Err(self.unreachable());
        };
        raft.install_snapshot(rpc)
            .await
            .map_err(|e| RPCError::RemoteError(RemoteError::new(self.target, e)))
    }

    async fn vote(
        &mut self,
        rpc: VoteRequest<u64>,
        _option: RPCOption,
    ) -> Result<VoteResponse<u64>, RPCError<u64, BasicNode, RaftError<u64>>> {
        let Some(raft) = self.raft() else {
            return Err(self.unreachable());
        };
        raft.vote(rpc)
            .await
            .map_err(|e| RPCError::RemoteError(RemoteError::new(self.target, e)))
    }
}

/// Raft messages over the cluster port (mutual TLS; the callee must hold a
/// manager certificate). The member's address is its `BasicNode::addr`.
#[derive(Debug, Clone)]
pub struct HttpNetwork {
    client: flotilla_transport::ClusterClient,
    /// The cluster epoch each message carries.
    epoch: EpochSource,
    greater_log: crate::elect::GreaterLog,
}

impl HttpNetwork {
    pub fn new(client: flotilla_transport::ClusterClient, epoch: EpochSource) -> Self {
        HttpNetwork {
            client,
            epoch,
            greater_log: Default::default(),
        }
    }

    /// Reports a voter's answer that shows a log greater than this
    /// candidate's to `flag`, for the election timer ([`crate::elect`]).
    pub fn with_greater_log(mut self, flag: crate::elect::GreaterLog) -> Self {
        self.greater_log = flag;
        self
    }
}

/// How long replication to a member waits after a request to it failed
/// (unreachable, or timed out in the transport): one default heartbeat
/// interval. openraft's default of 500 ms was longer than an election
/// timeout, so one slow AppendEntries under load cost the leader its
/// followers' leases and an election followed.
pub const REPLICATION_BACKOFF: std::time::Duration = std::time::Duration::from_millis(150);

/// A raft client for one member.
#[derive(Debug)]
pub struct HttpMember {
    client: flotilla_transport::ClusterClient,
    target: u64,
    addr: String,
    epoch: EpochSource,
    greater_log: crate::elect::GreaterLog,
}

/// The cluster epoch of `state` (the default before it holds a cluster,
/// or in a store of an older version).
pub fn epoch_of(state: &State) -> Epoch {
    state
        .cluster
        .as_ref()
        .map(|c| c.epoch.clone())
        .unwrap_or_default()
}

/// A member's cluster epoch, read from its state until the state holds a
/// cluster, and kept from then on: it never changes while the process
/// runs (force-new-cluster restarts it), and raft messages, sent and
/// received, must not wait for the state's lock, which applies hold.
///
/// It also keeps whether a member of a newer group said that this one's
/// group was replaced by `init --force-new-cluster` (it answers a raft
/// message with 410 Gone): the member then stops ([`crate::RaftNode`]).
#[derive(Debug, Clone)]
pub struct EpochSource {
    state: Arc<RwLock<State>>,
    known: Arc<OnceLock<Epoch>>,
    superseded: tokio::sync::watch::Sender<Option<String>>,
}

impl EpochSource {
    pub fn new(state: Arc<RwLock<State>>) -> Self {
        EpochSource {
            state,
            known: Arc::new(OnceLock::new()),
            superseded: tokio::sync::watch::Sender::new(None),
        }
    }

    /// Records that a member of a newer group refused this one's raft
    /// message as superseded, with its reason (the first one is kept).
    pub fn mark_superseded(&self, reason: &str) {
        self.superseded.send_if_modified(|s| {
            if s.is_some() {
                return false;
            }
            *s = Some(reason.to_string());
            true
        });
    }

    /// Why this member's group was replaced, if a newer group said so.
    pub fn superseded(&self) -> Option<String> {
        self.superseded.borrow().clone()
    }

    /// A watch of [`EpochSource::superseded`].
    pub fn watch_superseded(&self) -> tokio::sync::watch::Receiver<Option<String>> {
        self.superseded.subscribe()
    }

    /// The epoch; `None` while the state holds no cluster (a manager that
    /// just joined).
    pub fn get(&self) -> Option<Epoch> {
        if let Some(e) = self.known.get() {
            return Some(e.clone());
        }
        let state = match self.state.read() {
            Ok(s) => s,
            Err(p) => p.into_inner(),
        };
        let epoch = state.cluster.as_ref()?.epoch.clone();
        Some(self.known.get_or_init(|| epoch).clone())
    }
}

/// What a member answers a raft message from a group that
/// `init --force-new-cluster` replaced (an older epoch generation): 410
/// Gone. The sender then stops.
pub const SUPERSEDED_STATUS: u16 = 410;

/// The query string of a raft message: `?epoch=GENERATION-ID`, so that a
/// member of another raft group of the cluster is refused
/// ([`Epoch::admits_peer`]). Senders of older versions send none, which
/// reads as the default epoch.
#[derive(Debug, Clone, Default, serde::Serialize, serde::Deserialize)]
pub struct EpochQuery {
    #[serde(default)]
    pub epoch: String,
}

/// `path` with the sender's epoch as its query.
pub fn with_epoch(path: &str, epoch: &Epoch) -> String {
    format!("{path}?epoch={epoch}")
}

impl RaftNetworkFactory<TypeConfig> for HttpNetwork {
    type Network = HttpMember;

    async fn new_client(&mut self, target: u64, node: &BasicNode) -> Self::Network {
        HttpMember {
            client: self.client.clone(),
            target,
            addr: node.addr.clone(),
            epoch: self.epoch.clone(),
            greater_log: self.greater_log.clone(),
        }
    }
}

/// The most bytes a raft endpoint buffers of one request: far above what
/// a sender puts in one (see [`APPEND_TARGET_BYTES`]), so that one large
/// entry still passes.
pub const MAX_RPC_BYTES: usize = 64 << 20;

/// What one AppendEntries aims to carry at most. openraft gives each
/// AppendEntries the heartbeat interval (150 ms by default) to finish, the
/// follower's fsync included, and sends up to `max_payload_entries`
/// entries in one: a request over this size is refused before it is sent
/// with a hint of how many entries fit, and openraft sends fewer. (An
/// entry over this size alone is sent as it is; the proposers split batch
/// commands so that entries stay well below it.)
pub const APPEND_TARGET_BYTES: usize = 128 << 10;

/// How many of `entries` entries fit in [`APPEND_TARGET_BYTES`] when they
/// take `bytes` in all; `None` when all of them do.
pub fn entries_that_fit(entries: usize, bytes: usize) -> Option<u64> {
    if entries <= 1 || bytes <= APPEND_TARGET_BYTES {
        return None;
    }
    let fit = (entries as u128 * APPEND_TARGET_BYTES as u128 / bytes as u128) as u64;
    Some(fit.clamp(1, entries as u64 - 1))
}

/// An InstallSnapshot chunk on the wire, but for its bytes: those travel
/// raw after it in a framed body ([`flotilla_transport::frame`]), not as
/// the JSON array of numbers that openraft's request would make of them
/// (3 to 4 times their size).
#[derive(Debug, Clone, serde::Serialize, serde::Deserialize)]
pub struct SnapshotChunk {
    pub vote: Vote<u64>,
    pub meta: SnapshotMeta<u64, BasicNode>,
    pub offset: u64,
    pub done: bool,
}

impl SnapshotChunk {
    /// Splits a request into the header and the bytes.
    pub fn of(rpc: InstallSnapshotRequest<TypeConfig>) -> (SnapshotChunk, Vec<u8>) {
        let InstallSnapshotRequest {
            vote,
            meta,
            offset,
            data,
            done,
        } = rpc;
        (
            SnapshotChunk {
                vote,
                meta,
                offset,
                done,
            },
            data,
        )
    }

    /// The request again, with its bytes.
    pub fn with(self, data: Vec<u8>) -> InstallSnapshotRequest<TypeConfig> {
        InstallSnapshotRequest {
            vote: self.vote,
            meta: self.meta,
            offset: self.offset,
            data,
            done: self.done,
        }
    }
}

/// Paths of the raft endpoints.
pub mod paths {
    pub const APPEND: &str = "/raft/v1/append";
    pub const VOTE: &str = "/raft/v1/vote";
    pub const SNAPSHOT: &str = "/raft/v1/snapshot";
}

impl HttpMember {
    /// `path` with this member's epoch.
    fn path(&self, path: &str) -> String {
        with_epoch(path, &self.epoch.get().unwrap_or_default())
    }

    async fn call<Req, Resp, E>(
        &self,
        path: &str,
        rpc: &Req,
        option: &RPCOption,
    ) -> Result<Resp, RPCError<u64, BasicNode, E>>
    where
        Req: serde::Serialize,
        Resp: serde::de::DeserializeOwned,
        E: std::error::Error + serde::de::DeserializeOwned,
    {
        let path = self.path(path);
        let answer: Result<Result<Resp, E>, flotilla_transport::TransportError> = self
            .client
            .post(
                flotilla_transport::Target::Manager,
                &self.addr,
                &path,
                rpc,
                option.hard_ttl(),
            )
            .await;
        self.answer(answer)
    }

    /// A callee's answer as openraft wants it.
    #[allow(clippy::result_large_err)] // openraft's error type, as its trait returns it
    fn answer<Resp, E>(
        &self,
        answer: Result<Result<Resp, E>, flotilla_transport::TransportError>,
    ) -> Result<Resp, RPCError<u64, BasicNode, E>>
    where
        E: std::error::Error,
    {
        match answer {
            Ok(Ok(resp)) => Ok(resp),
            Ok(Err(remote)) => Err(RPCError::RemoteError(openraft::error::RemoteError::new(
                self.target,
                remote,
            ))),
            Err(flotilla_transport::TransportError::Status {
                status: SUPERSEDED_STATUS,
                message,
            }) => {
                // A member of the group that replaced this one: stop. A
                // member that knows no epoch yet (it joined and holds no
                // cluster) sent the default one, and is not the one meant.
                if self.epoch.get().is_some() {
                    tracing::error!(member = %self.addr, reason = %message, "this manager's raft group was replaced");
                    self.epoch.mark_superseded(&message);
                }
                Err(RPCError::Unreachable(Unreachable::new(
                    &std::io::Error::other(message),
                )))
            }
            Err(e) if e.is_unreachable() => Err(RPCError::Unreachable(Unreachable::new(&e))),
            Err(e) => Err(RPCError::Network(NetworkError::new(&e))),
        }
    }
}

impl RaftNetwork<TypeConfig> for HttpMember {
    async fn append_entries(
        &mut self,
        rpc: AppendEntriesRequest<TypeConfig>,
        option: RPCOption,
    ) -> Result<AppendEntriesResponse<u64>, RPCError<u64, BasicNode, RaftError<u64>>> {
        // Encoded once: its size decides whether it goes.
        let body = serde_json::value::to_raw_value(&rpc)
            .map_err(|e| RPCError::Network(NetworkError::new(&e)))?;
        if let Some(fit) = entries_that_fit(rpc.entries.len(), body.get().len()) {
            return Err(RPCError::PayloadTooLarge(
                PayloadTooLarge::new_entries_hint(fit),
            ));
        }
        let started = std::time::Instant::now();
        let answer = self.call(paths::APPEND, &body, &option).await;
        tracing::debug!(
            to = %self.addr,
            entries = rpc.entries.len(),
            bytes = body.get().len(),
            ms = started.elapsed().as_secs_f64() * 1e3,
            "append entries sent"
        );
        answer
    }

    async fn install_snapshot(
        &mut self,
        rpc: InstallSnapshotRequest<TypeConfig>,
        option: RPCOption,
    ) -> Result<
        InstallSnapshotResponse<u64>,
        RPCError<u64, BasicNode, RaftError<u64, InstallSnapshotError>>,
    > {
        let (chunk, data) = SnapshotChunk::of(rpc);
        let path = self.path(paths::SNAPSHOT);
        let answer = self
            .client
            .post_frame(
                flotilla_transport::Target::Manager,
                &self.addr,
                &path,
                &chunk,
                &data,
                option.hard_ttl(),
            )
            .await;
        self.answer(answer)
    }

    async fn vote(
        &mut self,
        rpc: VoteRequest<u64>,
        option: RPCOption,
    ) -> Result<VoteResponse<u64>, RPCError<u64, BasicNode, RaftError<u64>>> {
        let answer: Result<VoteResponse<u64>, _> = self.call(paths::VOTE, &rpc, &option).await;
        if let Ok(resp) = &answer {
            if resp.last_log_id > rpc.last_log_id {
                self.greater_log.mark();
            }
        }
        answer
    }

    fn backoff(&self) -> openraft::network::Backoff {
        openraft::network::Backoff::new(std::iter::repeat(REPLICATION_BACKOFF))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_epoch_is_read_once_the_state_holds_a_cluster_and_kept() {
        let state = Arc::new(RwLock::new(State::default()));
        let source = EpochSource::new(state.clone());
        assert_eq!(source.get(), None, "a manager that just joined");
        let epoch = Epoch::first("abc".into());
        if let Ok(mut s) = state.write() {
            s.cluster = Some(flotilla_types::Cluster {
                epoch: epoch.clone(),
                ..flotilla_types::Cluster::bare("c", 1)
            });
        }
        assert_eq!(source.get(), Some(epoch.clone()));
        // Kept: no lock is taken again.
        let _held = state.write();
        assert_eq!(source.clone().get(), Some(epoch.clone()));
        assert_eq!(with_epoch(paths::VOTE, &epoch), "/raft/v1/vote?epoch=1-abc");
    }

    #[test]
    fn large_appends_are_cut_to_what_fits() {
        assert_eq!(entries_that_fit(300, APPEND_TARGET_BYTES), None);
        assert_eq!(entries_that_fit(1, APPEND_TARGET_BYTES * 10), None);
        assert_eq!(entries_that_fit(300, APPEND_TARGET_BYTES * 3), Some(100));
        assert_eq!(entries_that_fit(2, APPEND_TARGET_BYTES * 100), Some(1));
        assert_eq!(entries_that_fit(10, APPEND_TARGET_BYTES + 1), Some(9));
    }
}

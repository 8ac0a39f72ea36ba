//! The raft network between managers.
//!
//! A one-node cluster never sends raft messages (openraft does not dial
//! itself), so every call here reports the target as unreachable. The
//! multi-node transport (mutual TLS between managers) replaces this.

use openraft::error::{InstallSnapshotError, NetworkError, RPCError, RaftError, Unreachable};
use openraft::network::{RPCOption, RaftNetwork, RaftNetworkFactory};
use openraft::raft::{
    AppendEntriesRequest, AppendEntriesResponse, InstallSnapshotRequest, InstallSnapshotResponse,
    VoteRequest, VoteResponse,
};
use openraft::BasicNode;

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

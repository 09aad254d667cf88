//! Raft RPC to peers: openraft's network traits over the [`PeerClient`], with its
//! failures mapped to what openraft expects (unreachable vs. a network error vs. the
//! peer's own refusal).

// StorageError and RPCError are openraft's, fixed by its trait signatures.
#![allow(clippy::result_large_err)]

use openraft::error::{InstallSnapshotError, NetworkError, RPCError, RemoteError, Unreachable};
use openraft::network::{RPCOption, RaftNetwork, RaftNetworkFactory};
use openraft::raft::{
    AppendEntriesRequest, AppendEntriesResponse, InstallSnapshotRequest, InstallSnapshotResponse,
    VoteRequest, VoteResponse,
};

use super::peer::{PeerClient, PeerError};
use super::{typ, NodeId, Peer, TypeConfig};

/// Creates connections to peers.
#[derive(Clone)]
pub struct Network {
    peers: PeerClient,
}

impl Network {
    /// Raft's network over `peers`.
    pub fn new(peers: PeerClient) -> Self {
        Network { peers }
    }
}

/// An answer of `target` as openraft wants it.
fn rpc<Resp, E: std::error::Error>(
    target: NodeId,
    r: Result<Result<Resp, typ::RaftError<E>>, PeerError>,
) -> Result<Resp, typ::RpcError<E>> {
    match r {
        Ok(Ok(resp)) => Ok(resp),
        Ok(Err(e)) => Err(RPCError::RemoteError(RemoteError::new(target, e))),
        Err(e) if e.is_unreachable() => Err(RPCError::Unreachable(Unreachable::new(&e))),
        Err(e) => Err(RPCError::Network(NetworkError::new(&e))),
    }
}

/// The answer to an `AppendEntries` of which only the first `sent` entries fitted one
/// body: success up to the last one sent (openraft sends the rest next).
fn partial(
    a: AppendEntriesResponse<NodeId>,
    req: &AppendEntriesRequest<TypeConfig>,
    sent: usize,
) -> AppendEntriesResponse<NodeId> {
    match a {
        AppendEntriesResponse::Success if sent < req.entries.len() => {
            let last = sent.checked_sub(1).map(|i| req.entries[i].log_id);
            AppendEntriesResponse::PartialSuccess(last.or(req.prev_log_id))
        }
        a => a,
    }
}

impl RaftNetworkFactory<TypeConfig> for Network {
    type Network = Conn;

    async fn new_client(&mut self, target: NodeId, node: &Peer) -> Conn {
        Conn {
            peers: self.peers.clone(),
            target,
            base: node.addr.clone(),
        }
    }
}

/// A connection to one peer.
pub struct Conn {
    peers: PeerClient,
    target: NodeId,
    base: String,
}

impl RaftNetwork<TypeConfig> for Conn {
    async fn append_entries(
        &mut self,
        req: AppendEntriesRequest<TypeConfig>,
        option: RPCOption,
    ) -> Result<AppendEntriesResponse<NodeId>, typ::RpcError> {
        let r = self
            .peers
            .append(self.target, &self.base, &req, option.hard_ttl())
            .await;
        let r = r.map(|(answer, sent)| answer.map(|a| partial(a, &req, sent)));
        rpc(self.target, r)
    }

    async fn install_snapshot(
        &mut self,
        req: InstallSnapshotRequest<TypeConfig>,
        option: RPCOption,
    ) -> Result<InstallSnapshotResponse<NodeId>, typ::RpcError<InstallSnapshotError>> {
        let r = self
            .peers
            .install_snapshot(self.target, &self.base, &req, option.hard_ttl())
            .await;
        rpc(self.target, r)
    }

    async fn vote(
        &mut self,
        req: VoteRequest<NodeId>,
        option: RPCOption,
    ) -> Result<VoteResponse<NodeId>, typ::RpcError> {
        let r = self
            .peers
            .vote(self.target, &self.base, &req, option.hard_ttl())
            .await;
        rpc(self.target, r)
    }
}

#[cfg(test)]
mod tests {
    use openraft::{CommittedLeaderId, Entry, EntryPayload, LogId, Vote};

    use super::*;

    fn req(n: u64) -> AppendEntriesRequest<TypeConfig> {
        let id = |i| LogId::new(CommittedLeaderId::new(1, 1), i);
        AppendEntriesRequest {
            vote: Vote::new_committed(1, 1),
            prev_log_id: Some(id(10)),
            entries: (11..11 + n)
                .map(|i| Entry {
                    log_id: id(i),
                    payload: EntryPayload::Blank,
                })
                .collect(),
            leader_commit: None,
        }
    }

    #[test]
    fn a_cut_batch_is_answered_as_a_partial_success_up_to_the_last_entry_sent() {
        let r = req(5);
        let last = |i: usize| Some(r.entries[i].log_id);
        assert_eq!(
            partial(AppendEntriesResponse::Success, &r, 2),
            AppendEntriesResponse::PartialSuccess(last(1))
        );
        assert_eq!(
            partial(AppendEntriesResponse::Success, &r, 5),
            AppendEntriesResponse::Success
        );
        assert_eq!(
            partial(AppendEntriesResponse::Conflict, &r, 2),
            AppendEntriesResponse::Conflict
        );
        assert_eq!(
            partial(AppendEntriesResponse::Success, &req(0), 0),
            AppendEntriesResponse::Success
        );
    }
}

//! Raft RPC to peers over their HTTP port (`POST /cluster/raft/...`), with the cluster
//! secret in the `X-Baton-Cluster-Secret` header.

// StorageError and RPCError are openraft's, fixed by its trait signatures.
#![allow(clippy::result_large_err)]

use std::time::Duration;

use openraft::error::{InstallSnapshotError, NetworkError, RemoteError, Unreachable};
use openraft::network::{RPCOption, RaftNetwork, RaftNetworkFactory};
use openraft::raft::{
    AppendEntriesRequest, AppendEntriesResponse, InstallSnapshotRequest, InstallSnapshotResponse,
    VoteRequest, VoteResponse,
};
use serde::de::DeserializeOwned;
use serde::Serialize;

use super::{typ, NodeId, Peer, TypeConfig};

/// Header carrying the cluster secret on every peer request.
pub const SECRET_HEADER: &str = "x-baton-cluster-secret";
/// Header naming the Raft identity a request is meant for: a host that rejoined at the
/// same address under a new identity must not take its old identity's messages.
pub const TARGET_HEADER: &str = "x-baton-target-node";

/// Creates connections to peers.
#[derive(Clone)]
pub struct Network {
    client: reqwest::Client,
    secret: String,
}

impl Network {
    /// A network using `secret` to authenticate to peers.
    pub fn new(secret: String) -> Self {
        let client = reqwest::Client::builder()
            .connect_timeout(Duration::from_millis(500))
            .tcp_nodelay(true)
            .pool_idle_timeout(Duration::from_secs(30))
            .build()
            .unwrap_or_default();
        Network { client, secret }
    }

    /// Posts `req` as JSON to `url` and decodes a JSON `Result<Resp, Err>`.
    pub async fn post<Req, Resp, Err>(
        &self,
        target: NodeId,
        url: &str,
        req: &Req,
        timeout: Duration,
    ) -> Result<Resp, openraft::error::RPCError<NodeId, Peer, Err>>
    where
        Req: Serialize + ?Sized,
        Resp: DeserializeOwned,
        Err: std::error::Error + DeserializeOwned,
    {
        let mut rb = self.client.post(url).header(SECRET_HEADER, &self.secret);
        if target != 0 {
            rb = rb.header(TARGET_HEADER, target.to_string());
        }
        let resp = rb.timeout(timeout).json(req).send().await.map_err(|e| {
            if e.is_connect() {
                openraft::error::RPCError::Unreachable(Unreachable::new(&e))
            } else {
                openraft::error::RPCError::Network(NetworkError::new(&e))
            }
        })?;
        if resp.status() == reqwest::StatusCode::MISDIRECTED_REQUEST {
            let msg = format!("node {target} is not at this address any more");
            return Err(openraft::error::RPCError::Unreachable(Unreachable::new(
                &std::io::Error::other(msg),
            )));
        }
        if !resp.status().is_success() {
            let msg = format!("peer answered HTTP {}", resp.status());
            return Err(openraft::error::RPCError::Network(NetworkError::new(
                &std::io::Error::other(msg),
            )));
        }
        let res: Result<Resp, Err> = resp
            .json()
            .await
            .map_err(|e| openraft::error::RPCError::Network(NetworkError::new(&e)))?;
        res.map_err(|e| openraft::error::RPCError::RemoteError(RemoteError::new(target, e)))
    }
}

impl RaftNetworkFactory<TypeConfig> for Network {
    type Network = Conn;

    async fn new_client(&mut self, target: NodeId, node: &Peer) -> Conn {
        Conn {
            net: self.clone(),
            target,
            base: node.addr.trim_end_matches('/').to_string(),
        }
    }
}

/// A connection to one peer.
pub struct Conn {
    net: Network,
    target: NodeId,
    base: String,
}

impl RaftNetwork<TypeConfig> for Conn {
    async fn append_entries(
        &mut self,
        req: AppendEntriesRequest<TypeConfig>,
        option: RPCOption,
    ) -> Result<AppendEntriesResponse<NodeId>, typ::RpcError> {
        let url = format!("{}/cluster/raft/append", self.base);
        self.net
            .post(self.target, &url, &req, option.hard_ttl())
            .await
    }

    async fn install_snapshot(
        &mut self,
        req: InstallSnapshotRequest<TypeConfig>,
        option: RPCOption,
    ) -> Result<InstallSnapshotResponse<NodeId>, typ::RpcError<InstallSnapshotError>> {
        let url = format!("{}/cluster/raft/snapshot", self.base);
        self.net
            .post(
                self.target,
                &url,
                &req,
                option.hard_ttl().max(Duration::from_secs(10)),
            )
            .await
    }

    async fn vote(
        &mut self,
        req: VoteRequest<NodeId>,
        option: RPCOption,
    ) -> Result<VoteResponse<NodeId>, typ::RpcError> {
        let url = format!("{}/cluster/raft/vote", self.base);
        self.net
            .post(self.target, &url, &req, option.hard_ttl())
            .await
    }
}

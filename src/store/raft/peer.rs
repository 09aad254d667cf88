//! The one client of other hosts' peer routes (`/cluster/...`, see [`super::rpc`]):
//! Raft RPC, forwarded writes, joining, membership changes, the leader's metrics and
//! blob fetches. It alone sets the cluster secret and target headers, holds the
//! timeouts of peer traffic, and turns transport failures and refusals into
//! [`PeerError`].

use std::time::Duration;

use bytes::Bytes;
use openraft::error::InstallSnapshotError;
use openraft::raft::{
    AppendEntriesRequest, AppendEntriesResponse, InstallSnapshotRequest, InstallSnapshotResponse,
    VoteRequest, VoteResponse,
};
use reqwest::StatusCode;
use serde::de::DeserializeOwned;
use serde::Serialize;

use super::rpc::{
    self as wire, ClockReply, JoinRequest, Joined, NotLeader, PreVoteRequest, PreVoteResponse,
    ProposeRefused, Proposed, RemoveRequest, Removed, SECRET_HEADER, TARGET_HEADER,
};
use super::rpc::{ErrorBody, ErrorInfo};
use super::wire::{self as codec, WireError};
use super::{typ, NodeId, TypeConfig};
use crate::blobs::Digest;
use crate::store::Command;

/// Connecting to a peer. Members share a LAN: one that does not accept within this is
/// unreachable for now (Raft retries at its next heartbeat, writes at their next try).
const CONNECT: Duration = Duration::from_millis(500);
/// Idle keep-alive connections to peers are closed after this.
const IDLE: Duration = Duration::from_secs(30);
/// A write forwarded to the leader: its commit normally takes milliseconds.
const FORWARD: Duration = Duration::from_secs(10);
/// The leader's metrics, for status pages and read barriers: answered from memory.
const METRICS: Duration = Duration::from_secs(2);
/// A membership change waits for the new configuration to commit.
const MEMBERSHIP: Duration = Duration::from_secs(30);
/// Joining: the leader adds the host as a learner and answers once it caught up, which
/// may take a snapshot transfer.
const JOIN: Duration = Duration::from_secs(300);
/// Connecting to a blob holder.
const BLOB_CONNECT: Duration = Duration::from_secs(2);
/// Longest wait for the next bytes of a blob: a frozen holder must not stall
/// replication (no bound on the whole, a blob may be gigabytes).
const BLOB_READ: Duration = Duration::from_secs(10);

/// Why a peer request failed.
#[derive(Debug, thiserror::Error)]
pub enum PeerError {
    /// This host has no cluster secret, so it talks to no peer.
    #[error("this host has no cluster secret: clustering is disabled")]
    NoSecret,
    /// No connection could be made.
    #[error("cannot connect to {url}: {source}")]
    Unreachable {
        /// The request's URL.
        url: String,
        /// Cause.
        source: reqwest::Error,
    },
    /// The TLS handshake failed: a certificate not from `tls.ca` on either side, a
    /// missing client certificate, or plain HTTP against HTTPS.
    #[error(
        "TLS with {url} failed: {message} (check tls.ca, tls.cert and the peer's certificate)"
    )]
    Tls {
        /// The request's URL.
        url: String,
        /// rustls' reason (e.g. invalid peer certificate: UnknownIssuer).
        message: String,
    },
    /// The peer at that address is another Raft identity now (421).
    #[error("{url}: node {target} is not at this address any more")]
    Misdirected {
        /// The request's URL.
        url: String,
        /// The identity the request was meant for.
        target: NodeId,
    },
    /// The peer refused the cluster secret, or has clustering disabled (403).
    #[error("{url} refused this host: {}", message_of(.error))]
    Forbidden {
        /// The request's URL.
        url: String,
        /// Its error body, if it sent one.
        error: Option<Box<ErrorInfo>>,
    },
    /// Any other refusal (4xx/5xx), with the peer's error body when it sent one.
    #[error("{url} answered HTTP {status}: {}", message_of(.error))]
    Refused {
        /// The request's URL.
        url: String,
        /// HTTP status.
        status: u16,
        /// Its error body, if it sent one.
        error: Option<Box<ErrorInfo>>,
    },
    /// The request or the answer broke off or timed out.
    #[error("request to {url} failed: {source}")]
    Transport {
        /// The request's URL.
        url: String,
        /// Cause.
        source: reqwest::Error,
    },
    /// The request could not be encoded within its route's limit (not sent).
    #[error("request to {url} not sent: {source}")]
    Encode {
        /// The request's URL.
        url: String,
        /// Cause.
        source: WireError,
    },
    /// The answer is not the expected body.
    #[error("unexpected answer from {url}: {source}")]
    Decode {
        /// The request's URL.
        url: String,
        /// Cause.
        source: reqwest::Error,
    },
}

/// The errors behind `e`, outermost first. io::Error hides its inner error from
/// `source()`, so an io::Error wrapping one is opened.
fn causes(e: &reqwest::Error) -> Vec<&(dyn std::error::Error + 'static)> {
    let mut out = Vec::new();
    let mut cur: Option<&(dyn std::error::Error + 'static)> = Some(e);
    while let Some(err) = cur {
        out.push(err);
        cur = match err
            .downcast_ref::<std::io::Error>()
            .and_then(|io| io.get_ref())
        {
            Some(inner) => Some(inner as &(dyn std::error::Error + 'static)),
            None => err.source(),
        };
        if out.len() > 16 {
            break;
        }
    }
    out
}

/// rustls' reason when `e` is a TLS failure.
fn tls_failure(e: &reqwest::Error) -> Option<String> {
    causes(e)
        .into_iter()
        .find_map(|c| c.downcast_ref::<rustls::Error>().map(|t| t.to_string()))
}

fn message_of(e: &Option<Box<ErrorInfo>>) -> &str {
    e.as_ref()
        .map(|e| e.message.as_str())
        .unwrap_or("no error body")
}

impl PeerError {
    /// Whether the peer could not be reached at all (then Raft counts it as down).
    pub fn is_unreachable(&self) -> bool {
        matches!(
            self,
            PeerError::Unreachable { .. } | PeerError::Misdirected { .. } | PeerError::Tls { .. }
        )
    }

    /// The leader's address, when a host that does not lead refused a membership call.
    pub fn leader_hint(&self) -> Option<String> {
        let PeerError::Refused { error: Some(e), .. } = self else {
            return None;
        };
        let details = e.details.clone()?;
        serde_json::from_value::<NotLeader>(details).ok()?.leader
    }
}

/// The client of every peer route. Cheap to clone (connection pools are shared).
#[derive(Clone)]
pub struct PeerClient {
    /// Short requests: Raft RPC, forwarding, membership, metrics.
    rpc: reqwest::Client,
    /// Long streamed answers: blobs.
    bulk: reqwest::Client,
    secret: Option<String>,
}

impl PeerClient {
    /// A client authenticating with `secret`; without one every request fails with
    /// [`PeerError::NoSecret`].
    pub fn new(secret: Option<String>) -> Self {
        Self::with_tls(secret.clone(), None).unwrap_or_else(|_| PeerClient {
            rpc: reqwest::Client::new(),
            bulk: reqwest::Client::new(),
            secret,
        })
    }

    /// A client authenticating with `secret` that speaks `https://` with `tls` (trusting
    /// `tls.ca` only; presenting this host's certificate in mTLS mode).
    pub fn with_tls(
        secret: Option<String>,
        tls: Option<&crate::tls::Material>,
    ) -> Result<Self, crate::tls::TlsError> {
        let tls = tls.map(|m| m.client_config()).transpose()?;
        let build = |b: reqwest::ClientBuilder| {
            let b = match &tls {
                Some(c) => b.use_preconfigured_tls(c.clone()),
                None => b,
            };
            b.build()
                .map_err(|e| crate::tls::TlsError::Rustls(e.to_string()))
        };
        let rpc = build(
            reqwest::Client::builder()
                .connect_timeout(CONNECT)
                .tcp_nodelay(true)
                .pool_idle_timeout(IDLE),
        )?;
        let bulk = build(
            reqwest::Client::builder()
                .connect_timeout(BLOB_CONNECT)
                .read_timeout(BLOB_READ)
                .pool_idle_timeout(IDLE),
        )?;
        Ok(PeerClient { rpc, bulk, secret })
    }

    /// Whether this host can talk to peers (it has the cluster secret).
    pub fn has_secret(&self) -> bool {
        self.secret.is_some()
    }

    fn request(
        &self,
        client: &reqwest::Client,
        method: reqwest::Method,
        url: &str,
        target: Option<NodeId>,
    ) -> Result<reqwest::RequestBuilder, PeerError> {
        let secret = self.secret.as_ref().ok_or(PeerError::NoSecret)?;
        let mut rb = client.request(method, url).header(SECRET_HEADER, secret);
        if let Some(t) = target {
            rb = rb.header(TARGET_HEADER, t.to_string());
        }
        Ok(rb)
    }

    /// Sends, and maps a failure or a refusal.
    async fn send(
        rb: reqwest::RequestBuilder,
        url: &str,
        target: Option<NodeId>,
    ) -> Result<reqwest::Response, PeerError> {
        let url = url.to_string();
        let resp = rb.send().await.map_err(|source| {
            if let Some(message) = tls_failure(&source) {
                PeerError::Tls {
                    url: url.clone(),
                    message,
                }
            } else if source.is_connect() {
                PeerError::Unreachable {
                    url: url.clone(),
                    source,
                }
            } else {
                PeerError::Transport {
                    url: url.clone(),
                    source,
                }
            }
        })?;
        let status = resp.status();
        if status.is_success() {
            return Ok(resp);
        }
        if status == StatusCode::MISDIRECTED_REQUEST {
            return Err(PeerError::Misdirected {
                url,
                target: target.unwrap_or_default(),
            });
        }
        let error = resp
            .json::<ErrorBody>()
            .await
            .ok()
            .map(|b| Box::new(b.error));
        if status == StatusCode::FORBIDDEN {
            return Err(PeerError::Forbidden { url, error });
        }
        Err(PeerError::Refused {
            url,
            status: status.as_u16(),
            error,
        })
    }

    async fn decode<T: DeserializeOwned>(
        resp: reqwest::Response,
        url: &str,
    ) -> Result<T, PeerError> {
        resp.json().await.map_err(|source| {
            if source.is_decode() {
                PeerError::Decode {
                    url: url.to_string(),
                    source,
                }
            } else {
                PeerError::Transport {
                    url: url.to_string(),
                    source,
                }
            }
        })
    }

    /// POSTs `body` as JSON to `base` + `path` and decodes the JSON answer.
    async fn post<Req: Serialize + ?Sized, Resp: DeserializeOwned>(
        &self,
        base: &str,
        path: &str,
        target: Option<NodeId>,
        body: &Req,
        timeout: Duration,
    ) -> Result<Resp, PeerError> {
        let body = serde_json::to_vec(body).map_err(|e| PeerError::Encode {
            url: url(base, path),
            source: WireError::Malformed {
                what: "request",
                reason: e.to_string(),
            },
        })?;
        self.post_bytes(base, path, target, "application/json", body, timeout)
            .await
    }

    /// POSTs an encoded `body` to `base` + `path` and decodes the JSON answer. A body
    /// over the route's limit is not sent: the peer would refuse it.
    async fn post_bytes<Resp: DeserializeOwned>(
        &self,
        base: &str,
        path: &str,
        target: Option<NodeId>,
        content_type: &'static str,
        body: Vec<u8>,
        timeout: Duration,
    ) -> Result<Resp, PeerError> {
        let url = url(base, path);
        let max = wire::body_limit(path).unwrap_or(0);
        if body.len() > max {
            return Err(PeerError::Encode {
                url,
                source: WireError::TooLarge {
                    what: "request body",
                    size: body.len(),
                    max,
                },
            });
        }
        let rb = self
            .request(&self.rpc, reqwest::Method::POST, &url, target)?
            .timeout(timeout)
            .header(reqwest::header::CONTENT_TYPE, content_type)
            .body(body);
        let resp = Self::send(rb, &url, target).await?;
        Self::decode(resp, &url).await
    }

    /// Raft `AppendEntries` to member `target` at `base`, within `ttl`, with as many of
    /// `req`'s entries as fit one body: returns the answer and how many were sent.
    pub async fn append(
        &self,
        target: NodeId,
        base: &str,
        req: &AppendEntriesRequest<TypeConfig>,
        ttl: Duration,
    ) -> Result<(Result<AppendEntriesResponse<NodeId>, typ::RaftError>, usize), PeerError> {
        let (body, sent) = codec::encode_append(req).map_err(|source| PeerError::Encode {
            url: url(base, wire::APPEND),
            source,
        })?;
        let r = self
            .post_bytes(base, wire::APPEND, Some(target), codec::CBOR, body, ttl)
            .await?;
        Ok((r, sent))
    }

    /// Raft `Vote` to member `target` at `base`, within `ttl`.
    pub async fn vote(
        &self,
        target: NodeId,
        base: &str,
        req: &VoteRequest<NodeId>,
        ttl: Duration,
    ) -> Result<Result<VoteResponse<NodeId>, typ::RaftError>, PeerError> {
        self.post(base, wire::VOTE, Some(target), req, ttl).await
    }

    /// Pre-vote to member `target` at `base`, within `ttl` (see [`super::elect`]).
    pub async fn prevote(
        &self,
        target: NodeId,
        base: &str,
        req: &PreVoteRequest,
        ttl: Duration,
    ) -> Result<PreVoteResponse, PeerError> {
        self.post(base, wire::PREVOTE, Some(target), req, ttl).await
    }

    /// Raft `InstallSnapshot` (one chunk) to member `target` at `base`.
    pub async fn install_snapshot(
        &self,
        target: NodeId,
        base: &str,
        req: &InstallSnapshotRequest<TypeConfig>,
        ttl: Duration,
    ) -> Result<
        Result<InstallSnapshotResponse<NodeId>, typ::RaftError<InstallSnapshotError>>,
        PeerError,
    > {
        let body = codec::encode_chunk(req).map_err(|source| PeerError::Encode {
            url: url(base, wire::SNAPSHOT),
            source,
        })?;
        self.post_bytes(base, wire::SNAPSHOT, Some(target), codec::OCTETS, body, ttl)
            .await
    }

    /// Forwards a write to the leader at `base`.
    pub async fn propose(
        &self,
        base: &str,
        cmd: &Command,
    ) -> Result<Result<Proposed, ProposeRefused>, PeerError> {
        self.post(base, wire::PROPOSE, None, cmd, FORWARD).await
    }

    /// Asks the cluster member at `base` to add this host.
    pub async fn join(&self, base: &str, req: &JoinRequest) -> Result<Joined, PeerError> {
        self.post(base, wire::JOIN, None, req, JOIN).await
    }

    /// Asks the leader at `base` to take members out.
    pub async fn remove(&self, base: &str, req: &RemoveRequest) -> Result<Removed, PeerError> {
        self.post(base, wire::REMOVE, None, req, MEMBERSHIP).await
    }

    /// The wall clock and membership of the host at `base` (`baton doctor`), within
    /// `timeout`.
    pub async fn clock(&self, base: &str, timeout: Duration) -> Result<ClockReply, PeerError> {
        let url = url(base, wire::CLOCK);
        let rb = self
            .request(&self.rpc, reqwest::Method::GET, &url, None)?
            .timeout(timeout);
        let resp = Self::send(rb, &url, None).await?;
        Self::decode(resp, &url).await
    }

    /// `GET base+path` on a peer route, decoded as `T`, within `timeout`: for routes
    /// whose bodies belong to higher layers (the boot records), so this client need not
    /// know their types.
    pub async fn get_json<T: DeserializeOwned>(
        &self,
        base: &str,
        path: &str,
        timeout: Duration,
    ) -> Result<T, PeerError> {
        self.get(&url(base, path), timeout).await
    }

    async fn get<T: DeserializeOwned>(&self, url: &str, timeout: Duration) -> Result<T, PeerError> {
        let rb = self
            .request(&self.rpc, reqwest::Method::GET, url, None)?
            .timeout(timeout);
        let resp = Self::send(rb, url, None).await?;
        Self::decode(resp, url).await
    }

    /// The Raft metrics of the member at `base`.
    pub async fn metrics(&self, base: &str) -> Result<typ::Metrics, PeerError> {
        let url = url(base, wire::METRICS);
        let rb = self
            .request(&self.rpc, reqwest::Method::GET, &url, None)?
            .timeout(METRICS);
        let resp = Self::send(rb, &url, None).await?;
        Self::decode(resp, &url).await
    }

    /// Starts fetching blob `d` from the holder at `base`, from byte `from` on (a
    /// resumed fetch) when `from > 0`.
    pub async fn blob(&self, base: &str, d: &Digest, from: u64) -> Result<BlobBody, PeerError> {
        let url = url(base, &format!("{}/{d}", wire::BLOB));
        let mut rb = self.request(&self.bulk, reqwest::Method::GET, &url, None)?;
        if from > 0 {
            rb = rb.header(reqwest::header::RANGE, format!("bytes={from}-"));
        }
        let resp = Self::send(rb, &url, None).await?;
        Ok(BlobBody {
            resumed: resp.status() == StatusCode::PARTIAL_CONTENT,
            resp,
            url,
        })
    }
}

/// A blob arriving from a peer.
pub struct BlobBody {
    /// Whether the peer answered the range asked (else the body is the whole blob).
    pub resumed: bool,
    resp: reqwest::Response,
    url: String,
}

impl BlobBody {
    /// The next bytes; `None` at the end.
    pub async fn chunk(&mut self) -> Result<Option<Bytes>, PeerError> {
        self.resp
            .chunk()
            .await
            .map_err(|source| PeerError::Transport {
                url: self.url.clone(),
                source,
            })
    }
}

fn url(base: &str, path: &str) -> String {
    format!("{}{path}", base.trim_end_matches('/'))
}

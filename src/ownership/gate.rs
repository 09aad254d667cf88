//! The serve gate: "may this host answer for node X now?" — the product's central
//! safety rule, decided here and nowhere else. DHCP, TFTP and HTTP boot all ask
//! [`Gate::check`]; its refusals are one typed enum, mapped once to a TFTP error code,
//! an HTTP status and a metric label.
//!
//! Safety: a host answers for a node only while (a) its replica says it owns the node,
//! (b) its own lease is fresh, and (c) a migration flip to it was confirmed by the old
//! owner or the old owner is down. Peers take a host's nodes only after its lease plus
//! the grace ran out, and the old owner stops at its lease's end or as soon as it
//! applies the flip, so no instant has two hosts answering a node's DHCP.
//!
//! Boots in flight across a migration: firmware fetches its files from the host whose
//! offer it took. So a host that answered a node's DHCP keeps serving that node's
//! *files* (never its DHCP) to that node's own address (see [`crate::bindings`]) for a
//! short window after the node moved away ([`CONTINUE_WINDOW`], renewed by each file it
//! serves, at most [`CONTINUE_MAX`]), provided its lease stayed fresh all along. Files are
//! content-addressed, so both hosts serve the same bytes. A takeover never leaves such
//! a window open: the old owner's lease lapsed first, which closes every window.

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use crate::bindings::{Bindings, Learned};
use crate::clock::Millis;
use crate::ownership::state::{classify, HostState, LeaseTimes};
use crate::store::{Fence, Host, Node, Store};
use crate::wire::tftp::ErrorCode;
use crate::wire::token::BootToken;

/// Why this host does not answer for a node right now.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum NotServed {
    /// Another host owns it (per this replica).
    NotOwner,
    /// This host owns it but its lease is not fresh.
    LeaseStale,
    /// This host owns it since a migration the old owner has not confirmed yet.
    AwaitingOldOwner,
    /// A node file asked for by an address that is not this node's (`node_files =
    /// "bound"`, and `"token"` for a MAC-named config asked for without a token).
    WrongClient,
    /// A node file asked for with a boot token that is not the node's current one
    /// (`node_files = "token"`).
    BadToken,
    /// A node file other than a MAC-named config asked for without a boot token
    /// (`node_files = "token"`).
    NoToken,
}

impl NotServed {
    /// Label for logs, metrics and error details.
    pub fn label(self) -> &'static str {
        match self {
            NotServed::NotOwner => "not_owner",
            NotServed::LeaseStale => "lease_stale",
            NotServed::AwaitingOldOwner => "awaiting_old_owner",
            NotServed::WrongClient => "wrong_client",
            NotServed::BadToken => "bad_token",
            NotServed::NoToken => "no_token",
        }
    }

    /// True when the refusal is about who asks (`node_files`), not about which host
    /// answers: the requester is told so (TFTP ERROR 2, HTTP 403), the same way
    /// whatever the reason.
    pub fn is_client_refusal(self) -> bool {
        matches!(
            self,
            NotServed::WrongClient | NotServed::BadToken | NotServed::NoToken
        )
    }

    /// The TFTP error a refused read gets: an access violation, whatever the reason.
    pub fn tftp_code(self) -> ErrorCode {
        ErrorCode::AccessViolation
    }

    /// The HTTP status a refused request gets: another host serves it (409), or this
    /// host will once its lease or the old owner's confirmation arrives (503).
    pub fn http_status(self) -> u16 {
        match self {
            NotServed::NotOwner => 409,
            NotServed::LeaseStale | NotServed::AwaitingOldOwner => 503,
            NotServed::WrongClient | NotServed::BadToken | NotServed::NoToken => 403,
        }
    }

    /// A sentence for operators (logs, HTTP error bodies).
    pub fn explain(self) -> &'static str {
        match self {
            NotServed::NotOwner => "another host owns this node",
            NotServed::LeaseStale => "this host's lease is not fresh",
            NotServed::AwaitingOldOwner => {
                "the node's previous owner has not confirmed the migration yet"
            }
            NotServed::WrongClient => "the requester's address is not this node's",
            NotServed::BadToken => "the request's boot token is not this node's current one",
            NotServed::NoToken => "this node file is served only with the node's boot token",
        }
    }
}

impl std::fmt::Display for NotServed {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.explain())
    }
}

/// How long after a DHCP answer (or the last file served for it) a host may finish a
/// node's boot after the node migrated away.
pub const CONTINUE_WINDOW: Duration = Duration::from_secs(30);
/// The longest a boot may be finished by the old owner, from its DHCP answer.
pub const CONTINUE_MAX: Duration = Duration::from_secs(300);
/// How long after answering a node's DHCP a MAC-named config fetch binds the
/// requester's address to the node.
pub const BIND_AFTER_ANSWER: Duration = Duration::from_secs(60);

/// Who may fetch a node's files (its configs, scripts, kernel and ramdisk; shared
/// loaders are everyone's).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum NodeFileAccess {
    /// Anyone (dnsmasq's and tftpd-hpa's behaviour).
    Open,
    /// Only the node's own addresses: those its PXE exchange with this host showed
    /// (see [`crate::bindings`]) and those the operator set on it ([`is_node_address`]).
    #[default]
    Bound,
    /// Whoever names the node's current boot token in the file's URL; without one, its
    /// MAC-named configs as in `Bound` and nothing else ([`requester_rule`]).
    Token,
}

impl NodeFileAccess {
    /// Whether node files are fetched by token: rendered files and DHCP answers then
    /// carry the node's boot token.
    pub fn tokens(self) -> bool {
        self == NodeFileAccess::Token
    }
}

impl std::str::FromStr for NodeFileAccess {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "open" => Ok(NodeFileAccess::Open),
            "bound" => Ok(NodeFileAccess::Bound),
            "token" => Ok(NodeFileAccess::Token),
            _ => Err(format!("{s:?} is not one of: open, bound, token")),
        }
    }
}

impl std::fmt::Display for NodeFileAccess {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            NodeFileAccess::Open => "open",
            NodeFileAccess::Bound => "bound",
            NodeFileAccess::Token => "token",
        })
    }
}

/// What is asked for: DHCP answers are only ever the owner's; files may also finish a
/// boot this host answered.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Purpose {
    /// A DHCP offer or ACK.
    Answer,
    /// A boot file (TFTP or HTTP), asked for by `client`.
    Files {
        /// The requester's address.
        client: Option<IpAddr>,
        /// The boot token its name or URL carried (`_t/<token>/`), if any.
        token: Option<BootToken>,
    },
}

/// Why the gate lets a request through.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Serve {
    /// This host owns the node.
    Owner,
    /// This host finishes a boot it answered before the node migrated away.
    Continuing,
}

/// Everything the rule looks at, read from the local replica and this host's lease.
#[derive(Debug, Clone, Copy)]
pub struct Facts<'a> {
    /// This host's name.
    pub me: &'a str,
    /// The node, as this replica has it.
    pub node: &'a Node,
    /// Whether this host's own lease is fresh now.
    pub lease_fresh: bool,
    /// The host named by the node's migration fence, if the node has one: `None` when
    /// that host is no longer a member.
    pub fence_host: Option<&'a Host>,
    /// Wall-clock now.
    pub now: Millis,
    /// Lease timing (the same on every host).
    pub times: &'a LeaseTimes,
    /// What is asked for.
    pub purpose: Purpose,
    /// This host answered the node's DHCP within the continuation window.
    pub boot_in_flight: bool,
    /// For files: `Ok` when the requester may have them as the node itself
    /// ([`requester_rule`]), else why not.
    pub requester: Result<(), NotServed>,
}

/// The rule, pure: whether `f.me` may answer for `f.node` now.
///
/// A `migrating` node is served by its current owner until the flip; a draining host
/// serves what it still owns. Neither is a refusal.
pub fn check(f: &Facts<'_>) -> Result<Serve, NotServed> {
    let files = matches!(f.purpose, Purpose::Files { .. });
    if f.node.owner != f.me {
        if files && f.boot_in_flight && f.lease_fresh && f.requester.is_ok() {
            return Ok(Serve::Continuing);
        }
        return Err(NotServed::NotOwner);
    }
    if !f.lease_fresh {
        return Err(NotServed::LeaseStale);
    }
    if let Some(fence) = &f.node.fence {
        if !fence_cleared(fence, f.fence_host, f.now, f.times) {
            return Err(NotServed::AwaitingOldOwner);
        }
    }
    if files {
        f.requester?;
    }
    Ok(Serve::Owner)
}

/// The node-file rule, pure: whether a request for one of a node's files (or its boot
/// report) comes from the node itself, under `access`. TFTP, HTTP and the boot report
/// all get here through [`Gate::check`] and [`Gate::serves_files_to`].
///
/// - `open`: anyone.
/// - `bound`: `bound()` decides (the requester's address is the node's, see
///   [`is_node_address`]); a token in the URL is ignored.
/// - `token`: a request that carries the node's current token (`presented`, compared
///   in constant time with `node_token`) is the node's, from any address; one with
///   another token is refused ([`NotServed::BadToken`]). Without a token, what
///   firmware fetches by convention and so cannot name a token — `entry`: a config
///   named by one of the node's MACs, and the boot report — follows the `bound` rule,
///   and any other file is refused ([`NotServed::NoToken`]). A node without a token
///   (its files were rendered in another mode, or written by another tool) follows the
///   `bound` rule: its files name no token.
pub fn requester_rule(
    access: NodeFileAccess,
    node_token: Option<&BootToken>,
    presented: Option<&BootToken>,
    entry: bool,
    bound: impl FnOnce() -> bool,
) -> Result<(), NotServed> {
    let by_address = |bound: bool| bound.then_some(()).ok_or(NotServed::WrongClient);
    match access {
        NodeFileAccess::Open => Ok(()),
        NodeFileAccess::Bound => by_address(bound()),
        NodeFileAccess::Token => match (presented, node_token) {
            (Some(p), Some(t)) if p.matches(t) => Ok(()),
            (Some(_), _) => Err(NotServed::BadToken),
            (None, Some(_)) if !entry => Err(NotServed::NoToken),
            (None, _) => by_address(bound()),
        },
    }
}

/// Whether `path` (a node file's served path) names one of `node`'s MACs: a pxelinux,
/// GRUB or iPXE config that firmware asks for by its own MAC.
pub fn names_node_mac(node: &Node, path: &str) -> bool {
    let p = path.to_ascii_lowercase();
    node.macs.iter().any(|m| p.contains(&m.dashes()))
}

/// Whether `path` is an entry config of `node` for [`requester_rule`]: its file name
/// (not a directory: a node may be named after its MAC) names one of the node's MACs.
pub fn is_entry_config(node: &Node, path: &str) -> bool {
    names_node_mac(node, path.rsplit('/').next().unwrap_or(path))
}

/// Whether the new owner of a node flipped by migration may answer: the old owner
/// confirmed the flip (it had applied it when it sent a heartbeat), is down (its lease
/// and the grace ran out, as for a takeover), or is no longer a member.
pub fn fence_cleared(fence: &Fence, old: Option<&Host>, now: Millis, t: &LeaseTimes) -> bool {
    old.is_none_or(|h| h.seen_seq >= fence.seq || classify(h, now, t) == HostState::Down)
}

/// Whether `client` is one of `node`'s own addresses, the ones its files may go to in
/// `bound` mode: an address the operator set on the node (replicated, so it holds on
/// every host and after a takeover), or one this host learned from the node's own PXE
/// exchange (`learned`: the node [`crate::bindings`] ties `client` to, if any). An
/// operator-set address counts even when a PXE exchange tied it to another node.
pub fn is_node_address(node: &Node, client: IpAddr, learned: Option<&str>) -> bool {
    node.addresses.contains(&client.to_canonical()) || learned == Some(node.id.as_str())
}

/// This host's lease: fresh until the send time of the last committed renewal + TTL,
/// on the monotonic clock.
#[derive(Debug, Default)]
struct LeaseClock {
    until: Option<Instant>,
    /// When it last ran out before a renewal (closes every continuation window).
    lapsed_at: Option<Instant>,
}

/// This host's lease as sampled before a node was read: its end then. A node read after
/// the sample is judged by it, and an answer is sent only while it has not run out
/// ([`LeaseView::fresh`]). Why: a renewal after a lapse (a host paused past its TTL)
/// lands only once this replica applied every earlier entry, the takeovers of its
/// nodes included; a node read *before* that renewal but judged after it would be
/// answered from the stale replica while the new owner answers too. With the sample
/// first, a stale read meets the stale lease, and an unexpired sample means the lease
/// never lapsed between the read and now, so no peer can have taken the node.
#[derive(Debug, Clone, Copy)]
pub struct LeaseView {
    until: Option<Instant>,
}

impl LeaseView {
    /// Whether the sampled lease is still unexpired now (it has been fresh
    /// continuously since the sample).
    pub fn fresh(&self) -> bool {
        self.until.is_some_and(|u| Instant::now() < u)
    }
}

/// The gate handle the drivers share: this host's identity and lease, and the replica
/// to read nodes and hosts from.
#[derive(Clone)]
pub struct Gate {
    host: Arc<str>,
    store: Arc<Store>,
    times: LeaseTimes,
    lease: Arc<Mutex<LeaseClock>>,
    boots: Arc<Mutex<HashMap<String, InFlight>>>,
    bindings: Bindings,
    access: NodeFileAccess,
    refusals: Arc<Mutex<HashMap<String, Refusals>>>,
}

/// Node-file requests refused to other addresses, per node (for `baton node show`).
#[derive(Debug, Clone, Default)]
pub struct Refusals {
    /// How many.
    pub count: u64,
    /// The last one: requester and wall-clock time.
    pub last: Option<(IpAddr, Millis)>,
    /// Why the last one was refused.
    pub last_reason: Option<NotServed>,
}

/// Nodes whose refusals are remembered; beyond this the oldest entry goes.
const MAX_REFUSAL_NODES: usize = 4096;

/// A boot this host answered at `answered`: finishable until `until`, never past `cap`.
#[derive(Debug, Clone, Copy)]
struct InFlight {
    answered: Instant,
    until: Instant,
    cap: Instant,
}

impl Gate {
    /// A gate for `host`, whose lease is not fresh yet; `bindings` ties requesters'
    /// addresses to nodes.
    pub fn new(host: &str, store: Arc<Store>, times: LeaseTimes, bindings: Bindings) -> Self {
        Gate {
            host: host.into(),
            store,
            times,
            lease: Arc::default(),
            boots: Arc::default(),
            bindings,
            access: NodeFileAccess::default(),
            refusals: Arc::default(),
        }
    }

    /// Who may fetch node files.
    pub fn access(&self) -> NodeFileAccess {
        self.access
    }

    /// Addresses bound to `node` on this host, and the refusals of other addresses.
    pub fn access_of(&self, node: &str) -> (Vec<IpAddr>, Refusals) {
        let r = self
            .refusals
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .get(node)
            .cloned()
            .unwrap_or_default();
        (self.bindings.addresses_of(node), r)
    }

    fn note_refusal(&self, node: &str, client: Option<IpAddr>, why: NotServed) {
        let mut m = self.refusals.lock().unwrap_or_else(|p| p.into_inner());
        if m.len() >= MAX_REFUSAL_NODES && !m.contains_key(node) {
            if let Some(oldest) = m
                .iter()
                .min_by_key(|(_, r)| r.last.map(|l| l.1))
                .map(|(k, _)| k.clone())
            {
                m.remove(&oldest);
            }
        }
        let r = m.entry(node.to_string()).or_default();
        r.count += 1;
        r.last_reason = Some(why);
        if let Some(c) = client {
            r.last = Some((c, crate::clock::now_ms()));
        }
    }

    /// Sets who may fetch node files.
    pub fn with_access(mut self, access: NodeFileAccess) -> Self {
        self.access = access;
        self
    }

    /// Whether `client` is one of `node`'s own addresses ([`is_node_address`] over this
    /// host's bindings).
    fn is_own_address(&self, node: &Node, client: IpAddr) -> bool {
        let learned = self.bindings.node_of(client.to_canonical());
        is_node_address(node, client, learned.as_deref())
    }

    /// Whether requests about `node` that only the node itself may make and that carry
    /// no token (its boot report) are taken from `client`: [`requester_rule`], for a
    /// request firmware makes by convention. From anyone with `node_files = "open"`,
    /// else only from the node's own addresses ([`is_node_address`]).
    pub fn serves_files_to(&self, node: &Node, client: IpAddr) -> bool {
        self.requester(node, None, Some(client), None).is_ok()
    }

    /// Whether a request for `node`'s file `path` (`None`: its boot report) from
    /// `client`, with `token` in its name, is the node's: [`requester_rule`] under this
    /// host's `node_files`, with [`Gate::client_is_node`] as the address rule.
    fn requester(
        &self,
        node: &Node,
        path: Option<&str>,
        client: Option<IpAddr>,
        token: Option<BootToken>,
    ) -> Result<(), NotServed> {
        let entry = path.is_none_or(|p| is_entry_config(node, p));
        requester_rule(
            self.access,
            node.boot_token.as_ref(),
            token.as_ref(),
            entry,
            || self.client_is_node(node, path, client),
        )
    }

    /// Whether `client`'s address is the node's, for files of `node`. An address the
    /// operator set on the node or learned from the node's PXE exchange qualifies
    /// ([`is_node_address`]); so does, right after this host answered the node's DHCP,
    /// an unbound address that asks for a file named with one of the node's MACs (its
    /// pxelinux, GRUB or iPXE config): that is how firmware whose address server Baton
    /// cannot overhear shows its address.
    fn client_is_node(&self, node: &Node, path: Option<&str>, client: Option<IpAddr>) -> bool {
        let Some(client) = client.map(|c| c.to_canonical()) else {
            return false;
        };
        let learned = self.bindings.node_of(client);
        if is_node_address(node, client, learned.as_deref()) {
            return true;
        }
        if learned.is_some() {
            // Bound to another node.
            return false;
        }
        let named = path.is_some_and(|p| names_node_mac(node, p));
        let answered = self
            .boots
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .get(&node.id)
            .is_some_and(|f| f.answered.elapsed() < BIND_AFTER_ANSWER);
        if named && answered {
            self.bindings.learn(client, &node.id, Learned::ConfigFetch);
        }
        named && answered
    }

    /// Records that this host answered `node`'s DHCP now: it may finish that boot.
    pub fn note_answer(&self, node: &str) {
        let now = Instant::now();
        let mut b = self.boots.lock().unwrap_or_else(|p| p.into_inner());
        b.retain(|_, f| f.until > now);
        b.insert(
            node.to_string(),
            InFlight {
                answered: now,
                until: now + CONTINUE_WINDOW,
                cap: now + CONTINUE_MAX,
            },
        );
    }

    /// Whether `client` is finishing a boot of `node` that this host answered: the
    /// window is open, the address belongs to the node (or, with `node_files =
    /// "token"`, the request carries the node's token), and the lease has not lapsed
    /// since the answer. A file served for it renews the window (up to the cap).
    fn boot_in_flight(
        &self,
        node: &Node,
        client: Option<IpAddr>,
        token: Option<BootToken>,
    ) -> bool {
        let by_token = self.access.tokens()
            && token
                .zip(node.boot_token)
                .is_some_and(|(p, t)| p.matches(&t));
        if !by_token && !client.is_some_and(|c| self.is_own_address(node, c)) {
            return false;
        }
        let node = node.id.as_str();
        let lapsed_at = self
            .lease
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .lapsed_at;
        let now = Instant::now();
        let mut b = self.boots.lock().unwrap_or_else(|p| p.into_inner());
        match b.get_mut(node) {
            Some(f) if f.until > now && lapsed_at.is_none_or(|l| l < f.answered) => {
                f.until = (now + CONTINUE_WINDOW).min(f.cap);
                true
            }
            Some(_) => {
                b.remove(node);
                false
            }
            None => false,
        }
    }

    /// This host's name.
    pub fn host(&self) -> &str {
        &self.host
    }

    /// Lease timing.
    pub fn times(&self) -> &LeaseTimes {
        &self.times
    }

    /// Whether this host's lease is fresh now.
    pub fn lease_fresh(&self) -> bool {
        self.lease_until().is_some_and(|u| Instant::now() < u)
    }

    /// When the lease stops being fresh, unless renewed.
    pub fn lease_until(&self) -> Option<Instant> {
        self.lease.lock().unwrap_or_else(|p| p.into_inner()).until
    }

    /// Records a committed renewal sent at `sent`: fresh until `sent + TTL`.
    pub fn renew(&self, sent: Instant) {
        let until = sent + Duration::from_millis(self.times.ttl_ms);
        let mut l = self.lease.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(prev) = l.until.filter(|u| *u < sent) {
            // The lease ran out before this renewal was even sent.
            l.lapsed_at = Some(prev);
        }
        if l.until.is_none_or(|u| u < until) {
            l.until = Some(until);
        }
    }

    /// This host's lease as it stands now: take it *before* reading the node that
    /// [`Gate::check`] will judge (see [`LeaseView`]).
    pub fn lease_view(&self) -> LeaseView {
        LeaseView {
            until: self.lease_until(),
        }
    }

    /// Whether this host may answer `purpose` for `node` now ([`check`] over this
    /// replica); `path` is the node file asked for, if any (its served path, without the
    /// token prefix: the token comes in `purpose`). `lease` was taken before `node` was
    /// read.
    pub fn check(
        &self,
        lease: LeaseView,
        node: &Node,
        purpose: Purpose,
        path: Option<&str>,
    ) -> Result<Serve, NotServed> {
        let fence_host = match &node.fence {
            // A store error keeps the fence closed: better silent than doubled.
            Some(f) => match self.store.host(&f.host) {
                Ok(h) => h,
                Err(_) => return Err(NotServed::AwaitingOldOwner),
            },
            None => None,
        };
        let in_flight = match purpose {
            Purpose::Files { client, token } if node.owner != *self.host => {
                self.boot_in_flight(node, client, token)
            }
            _ => false,
        };
        let requester = match purpose {
            Purpose::Files { client, token } => self.requester(node, path, client, token),
            Purpose::Answer => Ok(()),
        };
        let verdict = check(&Facts {
            me: &self.host,
            node,
            lease_fresh: lease.fresh(),
            fence_host: fence_host.as_ref(),
            now: crate::clock::now_ms(),
            times: &self.times,
            purpose,
            boot_in_flight: in_flight,
            requester,
        });
        if let (Err(r), Purpose::Files { client, .. }) = (verdict, purpose) {
            if r.is_client_refusal() {
                self.note_refusal(&node.id, client, r);
            }
        }
        verdict
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::{HandoffState, ProvisionState};

    const T: LeaseTimes = LeaseTimes {
        interval_ms: 1000,
        ttl_ms: 3000,
        grace_ms: 1000,
    };

    fn node(owner: &str) -> Node {
        Node {
            id: "n1".into(),
            macs: vec![],
            group: "g".into(),
            arch: None,
            owner: owner.into(),
            epoch: 3,
            provision_state: ProvisionState::Available,
            handoff: HandoffState::None,
            boot_profile: None,
            last_token: 0,
            stuck: None,
            fence: None,
            addresses: Vec::new(),
            boot_token: None,
            created_at: 0,
            updated_at: 0,
        }
    }

    fn host(name: &str, last_heartbeat: Millis, seen_seq: u64) -> Host {
        Host {
            name: name.into(),
            group: "g".into(),
            addresses: vec![],
            registered_at: 0,
            last_heartbeat,
            draining: false,
            seen_seq,
        }
    }

    fn facts<'a>(n: &'a Node, fresh: bool, old: Option<&'a Host>, now: Millis) -> Facts<'a> {
        Facts {
            me: "h2",
            node: n,
            lease_fresh: fresh,
            fence_host: old,
            now,
            times: &T,
            purpose: Purpose::Answer,
            boot_in_flight: false,
            requester: Ok(()),
        }
    }

    const OWNER: Result<Serve, NotServed> = Ok(Serve::Owner);

    #[test]
    fn owner_with_a_fresh_lease_serves() {
        let n = node("h2");
        assert_eq!(check(&facts(&n, true, None, 10_000)), OWNER);
    }

    #[test]
    fn another_owner_is_refused_whatever_the_lease() {
        let n = node("h1");
        assert_eq!(
            check(&facts(&n, true, None, 10_000)),
            Err(NotServed::NotOwner)
        );
        assert_eq!(
            check(&facts(&n, false, None, 10_000)),
            Err(NotServed::NotOwner)
        );
    }

    #[test]
    fn stale_lease_is_refused() {
        let n = node("h2");
        assert_eq!(
            check(&facts(&n, false, None, 10_000)),
            Err(NotServed::LeaseStale)
        );
    }

    #[test]
    fn migrating_node_is_served_by_its_owner_until_the_flip() {
        let mut n = node("h2");
        n.handoff = HandoffState::Migrating {
            to: "h3".into(),
            since: 9_000,
        };
        assert_eq!(check(&facts(&n, true, None, 10_000)), OWNER);
        let mut me = facts(&n, true, None, 10_000);
        me.me = "h3";
        assert_eq!(
            check(&me),
            Err(NotServed::NotOwner),
            "target before the flip"
        );
    }

    #[test]
    fn fenced_flip_waits_for_the_old_owner() {
        let mut n = node("h2");
        n.fence = Some(Fence {
            host: "h1".into(),
            seq: 7,
        });
        let alive = host("h1", 10_000, 6);
        assert_eq!(
            check(&facts(&n, true, Some(&alive), 11_000)),
            Err(NotServed::AwaitingOldOwner),
            "alive, unconfirmed"
        );
        assert_eq!(
            check(&facts(&n, true, Some(&alive), 13_500)),
            Err(NotServed::AwaitingOldOwner),
            "suspect is not down"
        );
        assert_eq!(check(&facts(&n, true, Some(&alive), 14_001)), OWNER, "down");
        let confirmed = host("h1", 10_000, 7);
        assert_eq!(check(&facts(&n, true, Some(&confirmed), 11_000)), OWNER);
        assert_eq!(
            check(&facts(&n, true, None, 11_000)),
            OWNER,
            "old owner removed"
        );
        assert_eq!(
            check(&facts(&n, false, Some(&confirmed), 11_000)),
            Err(NotServed::LeaseStale),
            "a fresh lease is still needed"
        );
    }

    #[test]
    fn a_boot_in_flight_finishes_its_files_on_the_old_owner_but_never_its_dhcp() {
        let n = node("h1"); // migrated from h2 to h1
        let mut f = facts(&n, true, None, 10_000);
        f.boot_in_flight = true;
        assert_eq!(
            check(&f),
            Err(NotServed::NotOwner),
            "DHCP stays the owner's"
        );
        f.purpose = Purpose::Files {
            client: None,
            token: None,
        };
        assert_eq!(check(&f), Ok(Serve::Continuing));
        f.lease_fresh = false;
        assert_eq!(
            check(&f),
            Err(NotServed::NotOwner),
            "never without a fresh lease"
        );
        f.lease_fresh = true;
        f.boot_in_flight = false;
        assert_eq!(check(&f), Err(NotServed::NotOwner), "no boot answered here");
    }

    #[test]
    fn node_files_go_only_to_the_node_in_bound_mode() {
        let n = node("h2");
        let mut f = facts(&n, true, None, 10_000);
        f.purpose = Purpose::Files {
            client: None,
            token: None,
        };
        f.requester = Err(NotServed::WrongClient);
        assert_eq!(check(&f), Err(NotServed::WrongClient));
        f.requester = Ok(());
        assert_eq!(check(&f), OWNER);
        // DHCP answers are not about the requester's address.
        f.purpose = Purpose::Answer;
        f.requester = Err(NotServed::WrongClient);
        assert_eq!(check(&f), OWNER);
        // Ownership is decided first (metrics show why), then the client.
        let other = node("h1");
        let mut g = facts(&other, true, None, 10_000);
        g.purpose = Purpose::Files {
            client: None,
            token: None,
        };
        g.requester = Err(NotServed::WrongClient);
        assert_eq!(check(&g), Err(NotServed::NotOwner));
        // A boot in flight is finished only for the node itself.
        g.boot_in_flight = true;
        assert_eq!(check(&g), Err(NotServed::NotOwner));
        g.requester = Ok(());
        assert_eq!(check(&g), Ok(Serve::Continuing));
    }

    #[test]
    fn a_node_address_is_operator_set_or_learned_for_that_node() {
        let ip = |s: &str| s.parse::<IpAddr>().unwrap();
        let mut n = node("h2");
        n.addresses = vec![ip("10.0.0.5"), ip("fd00::5")];
        assert!(is_node_address(&n, ip("10.0.0.5"), None), "operator-set");
        assert!(is_node_address(&n, ip("fd00::5"), None));
        assert!(
            is_node_address(&n, ip("::ffff:10.0.0.5"), None),
            "an IPv4-mapped requester is its IPv4 address"
        );
        assert!(
            is_node_address(&n, ip("10.0.0.5"), Some("n2")),
            "the operator's word wins over a PXE exchange of another node"
        );
        assert!(is_node_address(&n, ip("10.0.0.9"), Some("n1")), "learned");
        assert!(!is_node_address(&n, ip("10.0.0.9"), Some("n2")));
        assert!(!is_node_address(&n, ip("10.0.0.9"), None));
        n.addresses.clear();
        assert!(!is_node_address(&n, ip("10.0.0.5"), None), "cleared");
    }

    /// A store with hosts h1..h3 and node n1 owned by `owner`, with `addresses` set.
    fn store_with(owner: &str, addresses: &[&str]) -> (tempfile::TempDir, Arc<Store>) {
        use crate::store::{Command, Outcome};
        let dir = tempfile::tempdir().unwrap();
        let store = Arc::new(Store::open(dir.path().join("baton.db")).unwrap());
        let mut cmds: Vec<Command> = ["h1", "h2", "h3"]
            .iter()
            .map(|h| Command::RegisterHost {
                name: h.to_string(),
                group: "g".into(),
                addresses: vec![],
                at: 1,
            })
            .collect();
        for (id, mac) in [("n1", 1u8), ("n2", 2)] {
            cmds.push(Command::EnrollNode {
                node: id.into(),
                macs: vec![crate::store::MacAddr([0x52, 0x54, 0, 0, 0, mac])],
                group: "g".into(),
                arch: None,
                owner: owner.into(),
                at: 2,
            });
        }
        cmds.push(Command::SetNodeAddresses {
            node: "n1".into(),
            addresses: addresses.iter().map(|a| a.parse().unwrap()).collect(),
            at: 3,
        });
        for c in cmds {
            assert!(
                matches!(store.apply(&c).unwrap(), Outcome::Applied(_)),
                "{c:?}"
            );
        }
        (dir, store)
    }

    fn files_from(ip: &str) -> Purpose {
        Purpose::Files {
            client: Some(ip.parse().unwrap()),
            token: None,
        }
    }

    #[test]
    fn bound_mode_serves_operator_set_addresses_on_any_owner() {
        let (_d, store) = store_with("h2", &["127.0.0.31"]);
        let n1 = store.node("n1").unwrap().unwrap();
        let bindings = Bindings::default();
        let gate = Gate::new("h2", store.clone(), T, bindings.clone());
        gate.renew(Instant::now());
        assert_eq!(
            gate.check(gate.lease_view(), &n1, files_from("127.0.0.31"), None),
            OWNER
        );
        assert_eq!(
            gate.check(gate.lease_view(), &n1, files_from("127.0.0.32"), None),
            Err(NotServed::WrongClient)
        );
        assert_eq!(
            gate.check(
                gate.lease_view(),
                &n1,
                Purpose::Files {
                    client: None,
                    token: None,
                },
                None
            ),
            Err(NotServed::WrongClient)
        );
        // A learned binding still qualifies, for its own node only.
        bindings.learn("127.0.0.32".parse().unwrap(), "n1", Learned::ClientAddress);
        assert_eq!(
            gate.check(gate.lease_view(), &n1, files_from("127.0.0.32"), None),
            OWNER
        );
        bindings.learn("127.0.0.31".parse().unwrap(), "n2", Learned::ClientAddress);
        assert_eq!(
            gate.check(gate.lease_view(), &n1, files_from("127.0.0.31"), None),
            OWNER,
            "the operator-set address stays n1's"
        );
        let n2 = store.node("n2").unwrap().unwrap();
        assert_eq!(
            gate.check(gate.lease_view(), &n2, files_from("127.0.0.31"), None),
            OWNER
        );
        assert!(gate.serves_files_to(&n1, "127.0.0.31".parse().unwrap()));
        assert!(!gate.serves_files_to(&n1, "127.0.0.33".parse().unwrap()));
        let (learned, refused) = gate.access_of("n1");
        assert_eq!(learned, vec!["127.0.0.32".parse::<IpAddr>().unwrap()]);
        assert_eq!(refused.count, 2);
        // Open mode: anyone.
        let open = Gate::new("h2", store.clone(), T, Bindings::default())
            .with_access(NodeFileAccess::Open);
        open.renew(Instant::now());
        assert_eq!(
            open.check(open.lease_view(), &n1, files_from("127.0.0.33"), None),
            OWNER
        );
        assert!(open.serves_files_to(&n1, "127.0.0.33".parse().unwrap()));
    }

    #[test]
    fn operator_set_addresses_hold_on_a_new_owner_that_learned_nothing() {
        // After a takeover the new owner's replica has the node's addresses, though its
        // own bindings (in memory, per host) saw none of the node's PXE exchanges.
        let (_d, store) = store_with("h3", &["127.0.0.31", "::1"]);
        let n1 = store.node("n1").unwrap().unwrap();
        let gate = Gate::new("h3", store, T, Bindings::default());
        gate.renew(Instant::now());
        assert_eq!(
            gate.check(gate.lease_view(), &n1, files_from("127.0.0.31"), None),
            OWNER
        );
        assert_eq!(
            gate.check(gate.lease_view(), &n1, files_from("::1"), None),
            OWNER
        );
        assert_eq!(
            gate.check(gate.lease_view(), &n1, files_from("127.0.0.1"), None),
            Err(NotServed::WrongClient)
        );
    }

    fn tok(b: u8) -> BootToken {
        BootToken::from_bytes([b; 16])
    }

    #[test]
    fn the_token_rule() {
        use NodeFileAccess::{Bound, Open, Token};
        let (t1, t2) = (tok(1), tok(2));
        let rule = |access, node: Option<&BootToken>, shown: Option<&BootToken>, entry, bound| {
            requester_rule(access, node, shown, entry, || bound)
        };
        // Open: anyone; bound: the address decides, a token is ignored.
        assert_eq!(rule(Open, Some(&t1), Some(&t2), false, false), Ok(()));
        assert_eq!(
            rule(Bound, Some(&t1), Some(&t1), false, false),
            Err(NotServed::WrongClient)
        );
        assert_eq!(rule(Bound, Some(&t1), Some(&t2), false, true), Ok(()));
        // Token: the node's current token from anywhere; any other token never.
        for entry in [false, true] {
            for bound in [false, true] {
                assert_eq!(rule(Token, Some(&t1), Some(&t1), entry, bound), Ok(()));
                assert_eq!(
                    rule(Token, Some(&t1), Some(&t2), entry, bound),
                    Err(NotServed::BadToken)
                );
                assert_eq!(
                    rule(Token, None, Some(&t2), entry, bound),
                    Err(NotServed::BadToken),
                    "a token for a node that has none"
                );
            }
        }
        // Without a token: MAC-named configs (and the boot report) by address, nothing
        // else at all.
        assert_eq!(rule(Token, Some(&t1), None, true, true), Ok(()));
        assert_eq!(
            rule(Token, Some(&t1), None, true, false),
            Err(NotServed::WrongClient)
        );
        assert_eq!(
            rule(Token, Some(&t1), None, false, true),
            Err(NotServed::NoToken)
        );
        // A node whose files carry no token follows the bound rule.
        assert_eq!(rule(Token, None, None, false, true), Ok(()));
        assert_eq!(
            rule(Token, None, None, false, false),
            Err(NotServed::WrongClient)
        );
        // The address rule runs only when it decides (it may learn a binding).
        let mut asked = false;
        let _ = requester_rule(Token, Some(&t1), Some(&t1), true, || {
            asked = true;
            true
        });
        assert!(!asked);
    }

    #[test]
    fn entry_configs_are_named_by_a_mac_in_their_file_name() {
        let mut n = node("h2");
        n.macs = vec![crate::store::MacAddr([0x52, 0x54, 0, 0xab, 0xcd, 0xef])];
        for entry in [
            "pxelinux.cfg/01-52-54-00-ab-cd-ef",
            "grub/grub.cfg-01-52-54-00-AB-CD-EF",
            "ipxe/52-54-00-ab-cd-ef.ipxe",
        ] {
            assert!(is_entry_config(&n, entry), "{entry}");
        }
        for other in [
            "nodes/52-54-00-ab-cd-ef/kernel",
            "nodes/n1/ramdisk",
            "pxelinux.cfg/01-52-54-00-ab-cd-ee",
        ] {
            assert!(!is_entry_config(&n, other), "{other}");
        }
    }

    #[test]
    fn token_mode_gate_serves_the_token_from_anywhere_and_entry_configs_by_address() {
        let (_d, store) = store_with("h2", &["127.0.0.31"]);
        let mut n1 = store.node("n1").unwrap().unwrap();
        n1.boot_token = Some(tok(7));
        let gate = Gate::new("h2", store.clone(), T, Bindings::default())
            .with_access(NodeFileAccess::Token);
        gate.renew(Instant::now());
        let files = |ip: &str, token| Purpose::Files {
            client: Some(ip.parse().unwrap()),
            token,
        };
        let kernel = Some("nodes/n1/kernel");
        let config = Some("ipxe/52-54-00-00-00-01.ipxe");
        for ip in ["127.0.0.31", "127.0.0.99", "::1"] {
            assert_eq!(
                gate.check(gate.lease_view(), &n1, files(ip, Some(tok(7))), kernel),
                OWNER,
                "{ip}"
            );
            assert_eq!(
                gate.check(gate.lease_view(), &n1, files(ip, Some(tok(8))), kernel),
                Err(NotServed::BadToken)
            );
            assert_eq!(
                gate.check(gate.lease_view(), &n1, files(ip, None), kernel),
                Err(NotServed::NoToken),
                "not even from the node's own address"
            );
        }
        assert_eq!(
            gate.check(gate.lease_view(), &n1, files("127.0.0.31", None), config),
            OWNER
        );
        assert_eq!(
            gate.check(gate.lease_view(), &n1, files("127.0.0.99", None), config),
            Err(NotServed::WrongClient)
        );
        // The boot report carries no token: the node's own addresses.
        assert!(gate.serves_files_to(&n1, "127.0.0.31".parse().unwrap()));
        assert!(!gate.serves_files_to(&n1, "127.0.0.99".parse().unwrap()));
        let (_, refused) = gate.access_of("n1");
        assert_eq!(refused.count, 7);
        assert_eq!(refused.last_reason, Some(NotServed::WrongClient));
        // Ownership still comes first: the right token does not make another owner's
        // node this host's.
        let other =
            Gate::new("h1", store, T, Bindings::default()).with_access(NodeFileAccess::Token);
        other.renew(Instant::now());
        assert_eq!(
            other.check(
                other.lease_view(),
                &n1,
                files("127.0.0.31", Some(tok(7))),
                kernel
            ),
            Err(NotServed::NotOwner)
        );
    }

    #[test]
    fn a_node_read_before_a_renewal_is_judged_by_the_lease_before_it() {
        // The double answer a SIGSTOP storm showed: a host paused past its TTL read a
        // node from its stale replica, its renewal (which applies the takeover first)
        // landed, and the stale node was judged against the fresh lease.
        let (_d, store) = store_with("h3", &["127.0.0.31"]);
        let n1 = store.node("n1").unwrap().unwrap();
        let gate = Gate::new("h3", store, T, Bindings::default());
        let before = gate.lease_view();
        assert!(!before.fresh(), "no renewal yet");
        gate.renew(Instant::now());
        assert_eq!(
            gate.check(before, &n1, Purpose::Answer, None),
            Err(NotServed::LeaseStale),
            "a read from before the renewal"
        );
        let after = gate.lease_view();
        assert!(after.fresh());
        assert_eq!(gate.check(after, &n1, Purpose::Answer, None), OWNER);
        // A sample stays fresh only until the lease it saw ends, renewed or not.
        let lapsed = LeaseView {
            until: Some(Instant::now()),
        };
        assert!(!lapsed.fresh());
        assert_eq!(
            gate.check(lapsed, &n1, Purpose::Answer, None),
            Err(NotServed::LeaseStale)
        );
    }

    #[test]
    fn draining_host_serves_what_it_still_owns() {
        // Draining is a host state, not a node state: the gate never looks at it, so
        // a draining owner keeps answering until each node has moved.
        let n = node("h2");
        assert_eq!(check(&facts(&n, true, None, 10_000)), OWNER);
    }

    #[test]
    fn modes_parse_and_print() {
        for m in [
            NodeFileAccess::Open,
            NodeFileAccess::Bound,
            NodeFileAccess::Token,
        ] {
            assert_eq!(m.to_string().parse::<NodeFileAccess>(), Ok(m));
        }
        assert!(NodeFileAccess::Token.tokens() && !NodeFileAccess::Bound.tokens());
        assert!("tokens"
            .parse::<NodeFileAccess>()
            .unwrap_err()
            .contains("token"));
    }

    #[test]
    fn every_refusal_maps_to_codes() {
        for r in [
            NotServed::NotOwner,
            NotServed::LeaseStale,
            NotServed::AwaitingOldOwner,
            NotServed::WrongClient,
            NotServed::BadToken,
            NotServed::NoToken,
        ] {
            assert_eq!(r.tftp_code(), ErrorCode::AccessViolation);
            assert_eq!(r.is_client_refusal(), r.http_status() == 403);
            assert!(matches!(r.http_status(), 403 | 409 | 503));
            assert!(!r.label().is_empty() && !r.explain().is_empty());
        }
    }
}

//! Client bindings: which node an IP address belongs to, learned from that node's own
//! PXE exchange (the address it asks the address server for in its DHCPREQUEST, its
//! `ciaddr`, the source of its udp/4011 request). TFTP and HTTP requests carry only an
//! address; this is how a file request is tied back to the node whose boot it is.
//!
//! Kept in memory on each host, bounded, and re-learned at the next boot: a binding is
//! a hint about a live boot, not state worth replicating. Addresses the operator sets on
//! a node are the replicated complement (a node field, see
//! [`crate::ownership::gate::is_node_address`]): they hold on any owner at once.

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// How long a learned binding holds without being seen again.
pub const BINDING_TTL: Duration = Duration::from_secs(3600);
/// Most bindings kept; the oldest go first.
pub const MAX_BINDINGS: usize = 65_536;

/// How an address was learned.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Learned {
    /// Option 50 of the node's DHCPREQUEST (to whichever server).
    RequestedAddress,
    /// `ciaddr` of one of its requests.
    ClientAddress,
    /// Source address of its udp/4011 request.
    BootServerSource,
    /// Asked for a file named with its MAC right after its DHCP answer.
    ConfigFetch,
}

#[derive(Debug, Clone)]
struct Binding {
    node: String,
    seen: Instant,
}

/// Address -> node, shared by the DHCP driver (which learns) and the file servers.
#[derive(Debug, Clone, Default)]
pub struct Bindings(Arc<Mutex<HashMap<IpAddr, Binding>>>);

impl Bindings {
    /// Records that `ip` belongs to `node` now.
    pub fn learn(&self, ip: IpAddr, node: &str, how: Learned) {
        if ip.is_unspecified() || ip.is_multicast() || is_broadcast(ip) {
            return;
        }
        let now = Instant::now();
        let mut m = self.0.lock().unwrap_or_else(|p| p.into_inner());
        if m.len() >= MAX_BINDINGS && !m.contains_key(&ip) {
            m.retain(|_, b| now.duration_since(b.seen) < BINDING_TTL);
            if m.len() >= MAX_BINDINGS {
                if let Some(oldest) = m.iter().min_by_key(|(_, b)| b.seen).map(|(k, _)| *k) {
                    m.remove(&oldest);
                }
            }
        }
        let prev = m.insert(
            ip,
            Binding {
                node: node.to_string(),
                seen: now,
            },
        );
        if prev.as_ref().is_none_or(|p| p.node != node) {
            tracing::debug!(node, client = %ip, how = ?how, "client address bound to node");
        }
    }

    /// The addresses bound to `node`, sorted.
    pub fn addresses_of(&self, node: &str) -> Vec<IpAddr> {
        let m = self.0.lock().unwrap_or_else(|p| p.into_inner());
        let mut v: Vec<IpAddr> = m
            .iter()
            .filter(|(_, b)| b.node == node && b.seen.elapsed() < BINDING_TTL)
            .map(|(ip, _)| *ip)
            .collect();
        v.sort();
        v
    }

    /// The node `ip` belongs to, if learned recently.
    pub fn node_of(&self, ip: IpAddr) -> Option<String> {
        let m = self.0.lock().unwrap_or_else(|p| p.into_inner());
        m.get(&ip)
            .filter(|b| b.seen.elapsed() < BINDING_TTL)
            .map(|b| b.node.clone())
    }
}

fn is_broadcast(ip: IpAddr) -> bool {
    matches!(ip, IpAddr::V4(v4) if v4.is_broadcast())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn learns_and_rebinds() {
        let b = Bindings::default();
        let ip: IpAddr = "10.0.0.5".parse().unwrap();
        assert_eq!(b.node_of(ip), None);
        b.learn(ip, "n1", Learned::RequestedAddress);
        assert_eq!(b.node_of(ip).as_deref(), Some("n1"));
        b.learn(ip, "n2", Learned::ClientAddress);
        assert_eq!(
            b.node_of(ip).as_deref(),
            Some("n2"),
            "the newest exchange wins"
        );
    }

    #[test]
    fn ignores_addresses_that_name_no_client() {
        let b = Bindings::default();
        for s in ["0.0.0.0", "255.255.255.255", "224.0.0.1"] {
            let ip: IpAddr = s.parse().unwrap();
            b.learn(ip, "n1", Learned::ClientAddress);
            assert_eq!(b.node_of(ip), None, "{s}");
        }
    }

    #[test]
    fn stays_bounded() {
        let b = Bindings::default();
        for i in 0..(MAX_BINDINGS as u32 + 10) {
            let ip = IpAddr::V4(std::net::Ipv4Addr::from(0x0a00_0000 + i));
            b.learn(ip, "n", Learned::ClientAddress);
        }
        assert!(b.0.lock().unwrap().len() <= MAX_BINDINGS);
    }
}

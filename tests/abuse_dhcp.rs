//! Proxy-DHCP under abuse (issue 16), against a real `baton serve` in network
//! namespaces this test creates (nothing it sends can leave them):
//!
//! ```text
//!   netns <p>-srv:    eth0 10.99.0.2/24   baton serve (proxy-DHCP on 0.0.0.0), clients
//!   netns <p>-relay:  eth0 10.99.0.1/24   a relay agent's udp/67 socket
//!   (both on one bridge: a harness `Segment`)
//! ```
//!
//! Requests naming a `giaddr` (broadcast, loopback, this host, off-link, a relay not
//! configured) get no answer anywhere; a configured relay gets it; answers per MAC are
//! rate-limited. Each case is followed by a normal PXE exchange that must succeed.

mod common;

use std::net::{Ipv4Addr, SocketAddr, UdpSocket};
use std::time::{Duration, Instant};

use baton::wire::dhcp::{emit_client, parse_reply, ClientMessage, ServerReply};
use dhcproto::v4::MessageType;
use serde_json::json;

use common::api::metric_value;
use common::host::{Host, HostBuilder};
use common::netns::{Netns, Segment};
use common::require::require_netns;

const SERVER: Ipv4Addr = Ipv4Addr::new(10, 99, 0, 2);
const RELAY: Ipv4Addr = Ipv4Addr::new(10, 99, 0, 1);

fn mac(i: u8) -> [u8; 6] {
    [0x52, 0x54, 0x00, 0x16, 0x00, i]
}

/// A PXE ROM's DISCOVER (or 4011 REQUEST) for `mac`, with `giaddr` in its relay field.
fn request(m: [u8; 6], t: MessageType, xid: u32, giaddr: Ipv4Addr, ciaddr: Ipv4Addr) -> Vec<u8> {
    let mut b = emit_client(&ClientMessage {
        msg_type: t,
        xid,
        secs: 0,
        broadcast: false,
        ciaddr,
        mac: m,
        arch: 0,
        nii: (1, 2, 1),
        vendor_class: "PXEClient:Arch:00000:UNDI:002001".into(),
        user_class: None,
        ipxe_options: None,
        uuid: [0; 17],
        max_size: 1472,
        requested_ip: None,
        server_id: None,
        boot_item: None,
    });
    b[24..28].copy_from_slice(&giaddr.octets());
    b
}

/// Replies for `xid` arriving on `sock` within `wait`.
fn replies(sock: &UdpSocket, xid: u32, wait: Duration) -> Vec<(ServerReply, SocketAddr)> {
    let mut out = Vec::new();
    let end = Instant::now() + wait;
    let mut buf = [0u8; 1500];
    while let Some(left) = end.checked_duration_since(Instant::now()) {
        sock.set_read_timeout(Some(left.max(Duration::from_millis(1))))
            .unwrap();
        match sock.recv_from(&mut buf) {
            Ok((n, from)) => {
                if let Ok(r) = parse_reply(&buf[..n]) {
                    if r.xid == xid {
                        out.push((r, from));
                    }
                }
            }
            Err(_) => break,
        }
    }
    out
}

struct Lab {
    // Dropped first, before the namespaces it runs in.
    baton: Host,
    seg: Segment,
    dhcp: SocketAddr,
    pxe: SocketAddr,
}

impl Lab {
    fn srv_ns(&self) -> &Netns {
        self.seg.member("srv")
    }

    fn relay_ns(&self) -> &Netns {
        self.seg.member("relay")
    }
}

/// The two namespaces on one segment, and the server with `toml` in the first (fixed
/// ports: the namespace is the test's own).
fn lab(toml: &str) -> Option<Lab> {
    if !require_netns() {
        return None;
    }
    let seg = Segment::new(
        "abuse",
        &[("srv", "10.99.0.2/24"), ("relay", "10.99.0.1/24")],
    )
    .unwrap_or_else(|e| panic!("cannot build the segment: {e}"));
    let baton = HostBuilder::pxe_temp()
        .netns(seg.member("srv").name())
        .config(toml)
        .start();
    for (id, m) in [("n1", 1u8), ("n2", 2), ("n3", 3)] {
        baton
            .api
            .post(
                "/v1/nodes",
                json!({ "id": id, "macs": [format!("52:54:00:16:00:{m:02x}")] }),
            )
            .expect(201);
        baton
            .api
            .put(
                &format!("/v1/nodes/{id}/profile"),
                json!({ "kind": "local" }),
            )
            .expect(200);
    }
    let (dhcp, pxe) = (
        SocketAddr::from((SERVER, baton.dhcp().port())),
        SocketAddr::from((SERVER, baton.pxe().port())),
    );
    Some(Lab {
        baton,
        seg,
        dhcp,
        pxe,
    })
}

/// In the server's namespace: a normal PXE exchange for `m` (DISCOVER -> OFFER, then
/// the 4011 REQUEST -> ACK) from a client socket on 10.99.0.2.
fn normal_exchange(dhcp: SocketAddr, pxe: SocketAddr, m: [u8; 6]) {
    let c = UdpSocket::bind((SERVER, 0)).unwrap();
    c.send_to(
        &request(
            m,
            MessageType::Discover,
            0x5001,
            Ipv4Addr::UNSPECIFIED,
            Ipv4Addr::UNSPECIFIED,
        ),
        dhcp,
    )
    .unwrap();
    let got = replies(&c, 0x5001, Duration::from_secs(3));
    assert!(
        got.iter().any(|(r, _)| r.msg_type == MessageType::Offer),
        "no OFFER: {got:?}"
    );
    c.send_to(
        &request(
            m,
            MessageType::Request,
            0x5002,
            Ipv4Addr::UNSPECIFIED,
            SERVER,
        ),
        pxe,
    )
    .unwrap();
    let got = replies(&c, 0x5002, Duration::from_secs(3));
    assert!(
        got.iter().any(|(r, _)| r.msg_type == MessageType::Ack),
        "no ACK on 4011: {got:?}"
    );
}

/// The issue's reflection: a request that arrived directly, naming broadcast,
/// loopback, this host or an off-link address as `giaddr`, was answered there. Now only
/// a configured relay gets an answer (at its udp/67), and nothing else does.
#[test]
fn answers_go_to_configured_relays_only() {
    let Some(lab) = lab("[dhcp]\nrelays = [\"10.99.0.1\", \"10.99.0.2\"]\n") else {
        return;
    };
    // The relay agent listens while the requests are sent.
    let relay_rx = std::thread::scope(|sc| {
        let listening = std::sync::Arc::new(std::sync::Barrier::new(2));
        let l2 = listening.clone();
        let relay = sc.spawn(|| {
            lab.relay_ns().run(move || {
                // Any address: a broadcast reflected onto the link would arrive too.
                let s = UdpSocket::bind((Ipv4Addr::UNSPECIFIED, 67)).unwrap();
                l2.wait();
                let mut got = Vec::new();
                let mut buf = [0u8; 1500];
                s.set_read_timeout(Some(Duration::from_secs(4))).unwrap();
                while let Ok((n, from)) = s.recv_from(&mut buf) {
                    if let Ok(r) = parse_reply(&buf[..n]) {
                        got.push((r.xid, from));
                    }
                }
                got
            })
        });
        listening.wait();
        let (dhcp, pxe) = (lab.dhcp, lab.pxe);
        lab.srv_ns().run(move || {
            let c = UdpSocket::bind((SERVER, 0)).unwrap();
            for (i, g) in [
                Ipv4Addr::BROADCAST,
                Ipv4Addr::LOCALHOST,
                SERVER,
                Ipv4Addr::new(203, 0, 113, 9),
                Ipv4Addr::new(10, 99, 0, 77),
            ]
            .into_iter()
            .enumerate()
            {
                let xid = 0x100 + i as u32;
                c.send_to(
                    &request(mac(1), MessageType::Discover, xid, g, Ipv4Addr::UNSPECIFIED),
                    dhcp,
                )
                .unwrap();
                let got = replies(&c, xid, Duration::from_millis(400));
                assert!(got.is_empty(), "giaddr {g}: answered {got:?}");
            }
            // The configured relay: answered at the relay, not at the sender.
            c.send_to(
                &request(
                    mac(1),
                    MessageType::Discover,
                    0x200,
                    RELAY,
                    Ipv4Addr::UNSPECIFIED,
                ),
                dhcp,
            )
            .unwrap();
            assert!(replies(&c, 0x200, Duration::from_millis(400)).is_empty());
            normal_exchange(dhcp, pxe, mac(2));
        });
        relay.join().unwrap()
    });
    eprintln!("relay received {relay_rx:?}");
    assert_eq!(relay_rx.len(), 1, "exactly the configured relay's answer");
    assert_eq!(relay_rx[0].0, 0x200);
    let m = lab.baton.api.metrics();
    let v = |name: &str| metric_value(&m, name).unwrap_or(0.0);
    assert_eq!(
        v("baton_dhcp_ignored_total{reason=\"untrusted_relay\"}"),
        4.0
    );
    // Listed, but this host: refused as a bad relay. Loopback and broadcast are never
    // valid relays (the config check refuses them), so they count as untrusted here.
    assert_eq!(v("baton_dhcp_ignored_total{reason=\"bad_relay\"}"), 1.0);
    assert!(v("baton_dhcp_answered_total{type=\"offer\"}") >= 2.0);
}

/// Answers per MAC are rate-limited and counted; other MACs are still answered.
#[test]
fn answers_are_rate_limited_per_mac() {
    let Some(lab) = lab("[dhcp]\nanswers_per_mac_minute = 5\n") else {
        return;
    };
    let (dhcp, pxe) = (lab.dhcp, lab.pxe);
    let answers = lab.srv_ns().run(move || {
        let c = UdpSocket::bind((SERVER, 0)).unwrap();
        for i in 0..20u32 {
            c.send_to(
                &request(
                    mac(1),
                    MessageType::Discover,
                    0x300 + i,
                    Ipv4Addr::UNSPECIFIED,
                    Ipv4Addr::UNSPECIFIED,
                ),
                dhcp,
            )
            .unwrap();
        }
        let mut n = 0;
        let end = Instant::now() + Duration::from_secs(2);
        let mut buf = [0u8; 1500];
        while let Some(left) = end.checked_duration_since(Instant::now()) {
            c.set_read_timeout(Some(left.max(Duration::from_millis(1))))
                .unwrap();
            match c.recv_from(&mut buf) {
                Ok((len, _)) if parse_reply(&buf[..len]).is_ok() => n += 1,
                Ok(_) => {}
                Err(_) => break,
            }
        }
        normal_exchange(dhcp, pxe, mac(3));
        n
    });
    let metrics = lab.baton.api.metrics();
    eprintln!("20 DISCOVERs for one MAC: {answers} answers");
    assert_eq!(answers, 5);
    assert_eq!(
        metric_value(
            &metrics,
            "baton_dhcp_ignored_total{reason=\"rate_limited\"}"
        ),
        Some(15.0)
    );
}

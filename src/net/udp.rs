//! UDP socket helpers the standard library and tokio do not offer: the destination
//! address of a received datagram (IP_PKTINFO), batched sends of a TFTP window with UDP
//! GSO (one `sendmsg` for up to 64 packets) or `sendmmsg`, and interface MTU lookup.
//!
//! Everything here is a thin, Linux-specific wrapper over libc; protocol logic lives
//! elsewhere.

use std::collections::HashMap;
use std::io::{self, IoSlice};
use std::mem::{size_of, zeroed};
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr, SocketAddrV4, SocketAddrV6};
use std::os::fd::AsRawFd;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Mutex;

use socket2::{Domain, Protocol, SockAddr, Socket, Type};
use tokio::io::Interest;
use tokio::net::UdpSocket;

/// A received datagram's addresses.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RecvMeta {
    /// Bytes received.
    pub len: usize,
    /// Sender.
    pub src: SocketAddr,
    /// Local address the datagram was sent to (from IP_PKTINFO), if known.
    pub dst_ip: Option<IpAddr>,
    /// Interface it arrived on, if known.
    pub ifindex: Option<u32>,
}

/// Most segments the kernel takes in one GSO send (UDP_MAX_SEGMENTS).
const GSO_MAX_SEGMENTS: usize = 64;
/// Most payload bytes in one GSO send (an IPv4 datagram's limit).
const GSO_MAX_BYTES: usize = 65_507;

/// Cleared the first time the kernel refuses UDP_SEGMENT; then windows go by sendmmsg.
static GSO_USABLE: AtomicBool = AtomicBool::new(true);

/// Whether GSO is still believed usable on this host.
pub fn gso_enabled() -> bool {
    GSO_USABLE.load(Ordering::Relaxed)
}

/// Disables GSO (e.g. by configuration); windows then go by `sendmmsg`.
pub fn disable_gso() {
    GSO_USABLE.store(false, Ordering::Relaxed);
}

/// Binds a non-blocking UDP socket; with `pktinfo` it reports each datagram's
/// destination address, needed to answer from the address a request came to.
pub fn bind(addr: SocketAddr, pktinfo: bool) -> io::Result<UdpSocket> {
    let domain = if addr.is_ipv4() {
        Domain::IPV4
    } else {
        Domain::IPV6
    };
    let s = Socket::new(domain, Type::DGRAM.nonblocking(), Some(Protocol::UDP))?;
    if pktinfo {
        let one: libc::c_int = 1;
        let (level, opt) = if addr.is_ipv4() {
            (libc::IPPROTO_IP, libc::IP_PKTINFO)
        } else {
            (libc::IPPROTO_IPV6, libc::IPV6_RECVPKTINFO)
        };
        setsockopt(&s, level, opt, one)?;
        if addr.is_ipv6() {
            // Dual-stack [::] sockets also see IPv4 datagrams: ask for their PKTINFO too.
            let _ = setsockopt(&s, libc::IPPROTO_IP, libc::IP_PKTINFO, one);
        }
    }
    // Roomier buffers absorb a burst of windows from many transfers at once.
    let _ = s.set_send_buffer_size(4 << 20);
    let _ = s.set_recv_buffer_size(4 << 20);
    s.bind(&SockAddr::from(addr))?;
    UdpSocket::from_std(s.into())
}

fn setsockopt(s: &Socket, level: libc::c_int, opt: libc::c_int, v: libc::c_int) -> io::Result<()> {
    // SAFETY: valid fd, pointer to a c_int of the stated length.
    let r = unsafe {
        libc::setsockopt(
            s.as_raw_fd(),
            level,
            opt,
            &v as *const _ as *const libc::c_void,
            size_of::<libc::c_int>() as libc::socklen_t,
        )
    };
    if r == 0 {
        Ok(())
    } else {
        Err(io::Error::last_os_error())
    }
}

/// Storage for a socket address in a C call, and its conversion back.
fn to_sockaddr(addr: &SocketAddr) -> (libc::sockaddr_storage, libc::socklen_t) {
    let sa = SockAddr::from(*addr);
    // SAFETY: sockaddr_storage is larger than any SockAddr; we copy `len` bytes.
    let mut storage: libc::sockaddr_storage = unsafe { zeroed() };
    unsafe {
        std::ptr::copy_nonoverlapping(
            sa.as_ptr() as *const u8,
            &mut storage as *mut _ as *mut u8,
            sa.len() as usize,
        );
    }
    (storage, sa.len())
}

fn from_sockaddr(storage: &libc::sockaddr_storage) -> Option<SocketAddr> {
    match storage.ss_family as libc::c_int {
        libc::AF_INET => {
            // SAFETY: family says this is a sockaddr_in.
            let sin: &libc::sockaddr_in =
                unsafe { &*(storage as *const _ as *const libc::sockaddr_in) };
            Some(SocketAddr::V4(SocketAddrV4::new(
                Ipv4Addr::from(u32::from_be(sin.sin_addr.s_addr)),
                u16::from_be(sin.sin_port),
            )))
        }
        libc::AF_INET6 => {
            // SAFETY: family says this is a sockaddr_in6.
            let sin6: &libc::sockaddr_in6 =
                unsafe { &*(storage as *const _ as *const libc::sockaddr_in6) };
            Some(SocketAddr::V6(SocketAddrV6::new(
                Ipv6Addr::from(sin6.sin6_addr.s6_addr),
                u16::from_be(sin6.sin6_port),
                sin6.sin6_flowinfo,
                sin6.sin6_scope_id,
            )))
        }
        _ => None,
    }
}

/// Receives one datagram with its destination address and interface.
pub async fn recv_meta(sock: &UdpSocket, buf: &mut [u8]) -> io::Result<RecvMeta> {
    sock.async_io(Interest::READABLE, || recv_meta_now(sock, buf))
        .await
}

fn recv_meta_now(sock: &UdpSocket, buf: &mut [u8]) -> io::Result<RecvMeta> {
    // SAFETY: all pointers refer to live locals sized as declared to the kernel.
    unsafe {
        let mut storage: libc::sockaddr_storage = zeroed();
        let mut iov = libc::iovec {
            iov_base: buf.as_mut_ptr() as *mut libc::c_void,
            iov_len: buf.len(),
        };
        let mut cbuf = [0u64; 16];
        let mut msg: libc::msghdr = zeroed();
        msg.msg_name = &mut storage as *mut _ as *mut libc::c_void;
        msg.msg_namelen = size_of::<libc::sockaddr_storage>() as libc::socklen_t;
        msg.msg_iov = &mut iov;
        msg.msg_iovlen = 1;
        msg.msg_control = cbuf.as_mut_ptr() as *mut libc::c_void;
        msg.msg_controllen = std::mem::size_of_val(&cbuf);
        let n = libc::recvmsg(sock.as_raw_fd(), &mut msg, 0);
        if n < 0 {
            return Err(io::Error::last_os_error());
        }
        let src = from_sockaddr(&storage)
            .ok_or_else(|| io::Error::new(io::ErrorKind::InvalidData, "unknown address family"))?;
        let (dst_ip, ifindex) = pktinfo(&msg);
        Ok(RecvMeta {
            len: n as usize,
            src,
            dst_ip,
            ifindex,
        })
    }
}

/// The destination address and interface a received message's IP_PKTINFO gives.
///
/// SAFETY: `msg` must be a header the kernel filled in, its control buffer still live.
unsafe fn pktinfo(msg: &libc::msghdr) -> (Option<IpAddr>, Option<u32>) {
    let (mut dst_ip, mut ifindex) = (None, None);
    let mut c = libc::CMSG_FIRSTHDR(msg);
    while !c.is_null() {
        let h = &*c;
        if h.cmsg_level == libc::IPPROTO_IP && h.cmsg_type == libc::IP_PKTINFO {
            let pi = &*(libc::CMSG_DATA(c) as *const libc::in_pktinfo);
            dst_ip = Some(IpAddr::V4(Ipv4Addr::from(u32::from_be(pi.ipi_addr.s_addr))));
            ifindex = Some(pi.ipi_ifindex as u32);
        } else if h.cmsg_level == libc::IPPROTO_IPV6 && h.cmsg_type == libc::IPV6_PKTINFO {
            let pi = &*(libc::CMSG_DATA(c) as *const libc::in6_pktinfo);
            dst_ip = Some(IpAddr::V6(Ipv6Addr::from(pi.ipi6_addr.s6_addr)));
            ifindex = Some(pi.ipi6_ifindex);
        }
        c = libc::CMSG_NXTHDR(msg, c);
    }
    (dst_ip, ifindex)
}

/// A datagram [`recv_drain`] put in one of its buffers.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Received {
    /// Bytes received (truncated to the buffer).
    pub len: usize,
    /// Sender.
    pub from: SocketAddr,
}

/// Receives the next datagram into `first`, and a second one into `second` when the
/// kernel already holds it, with one `recvmmsg`. When it held fewer than two, tokio's
/// readiness is cleared in the same step (race-free: tokio clears only if no readiness
/// event came in since), so the next call waits for the kernel's next event instead of
/// paying a `recvfrom` that only says EAGAIN, as a plain receive loop does per datagram.
pub async fn recv_drain(
    sock: &UdpSocket,
    first: &mut [u8],
    second: &mut [u8],
) -> io::Result<(Received, Option<Received>)> {
    loop {
        sock.readable().await?;
        let mut got = None;
        let r = sock.try_io(Interest::READABLE, || {
            let (a, b) = recv_two_now(sock, first, second)?;
            got = Some((a, b));
            if b.is_none() {
                // Drained: tell tokio, without another syscall to learn it.
                Err(io::ErrorKind::WouldBlock.into())
            } else {
                Ok(())
            }
        });
        if let Some(g) = got {
            return Ok(g);
        }
        match r {
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => continue,
            Err(e) => return Err(e),
            Ok(()) => continue,
        }
    }
}

fn recv_two_now(
    sock: &UdpSocket,
    first: &mut [u8],
    second: &mut [u8],
) -> io::Result<(Received, Option<Received>)> {
    // SAFETY: every mmsghdr points at live locals and buffers sized as declared.
    unsafe {
        let mut names: [libc::sockaddr_storage; 2] = zeroed();
        let mut iovs = [
            libc::iovec {
                iov_base: first.as_mut_ptr() as *mut libc::c_void,
                iov_len: first.len(),
            },
            libc::iovec {
                iov_base: second.as_mut_ptr() as *mut libc::c_void,
                iov_len: second.len(),
            },
        ];
        let mut msgs: [libc::mmsghdr; 2] = zeroed();
        for ((m, name), iov) in msgs.iter_mut().zip(names.iter_mut()).zip(iovs.iter_mut()) {
            m.msg_hdr.msg_name = name as *mut _ as *mut libc::c_void;
            m.msg_hdr.msg_namelen = size_of::<libc::sockaddr_storage>() as libc::socklen_t;
            m.msg_hdr.msg_iov = iov;
            m.msg_hdr.msg_iovlen = 1;
        }
        let n = libc::recvmmsg(
            sock.as_raw_fd(),
            msgs.as_mut_ptr(),
            2,
            libc::MSG_DONTWAIT,
            std::ptr::null_mut(),
        );
        if n < 0 {
            return Err(io::Error::last_os_error());
        }
        let get = |i: usize| -> io::Result<Received> {
            let from = from_sockaddr(&names[i]).ok_or_else(|| {
                io::Error::new(io::ErrorKind::InvalidData, "unknown address family")
            })?;
            Ok(Received {
                len: msgs[i].msg_len as usize,
                from,
            })
        };
        let a = get(0)?;
        let b = if n >= 2 { Some(get(1)?) } else { None };
        Ok((a, b))
    }
}

/// Buffers for [`recv_meta_batch`]: up to [`RecvBatch::CAP`] datagrams per syscall.
pub struct RecvBatch {
    bufs: Vec<Vec<u8>>,
    /// (buffer index, addresses) of each datagram of the last call.
    metas: Vec<(usize, RecvMeta)>,
}

impl RecvBatch {
    /// Most datagrams one call reads.
    pub const CAP: usize = 32;

    /// Buffers of `size` bytes each (a longer datagram is truncated).
    pub fn new(size: usize) -> Self {
        RecvBatch {
            bufs: (0..Self::CAP).map(|_| vec![0; size]).collect(),
            metas: Vec::with_capacity(Self::CAP),
        }
    }

    /// The datagrams of the last call: (addresses, bytes).
    pub fn iter(&self) -> impl Iterator<Item = (RecvMeta, &[u8])> {
        self.metas.iter().map(|(i, m)| {
            let b = &self.bufs[*i];
            (*m, &b[..m.len.min(b.len())])
        })
    }
}

/// Receives the datagrams the kernel holds, up to [`RecvBatch::CAP`], with one
/// `recvmmsg`, each with its destination address and interface (IP_PKTINFO). Waits for
/// the first. Like [`recv_drain`], a short batch clears tokio's readiness without a
/// further syscall.
pub async fn recv_meta_batch(sock: &UdpSocket, batch: &mut RecvBatch) -> io::Result<usize> {
    loop {
        sock.readable().await?;
        let mut got = 0;
        let r = sock.try_io(Interest::READABLE, || {
            got = recv_batch_now(sock, batch)?;
            if got < RecvBatch::CAP {
                Err(io::ErrorKind::WouldBlock.into())
            } else {
                Ok(())
            }
        });
        if got > 0 {
            return Ok(got);
        }
        match r {
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => continue,
            Err(e) => return Err(e),
            Ok(()) => continue,
        }
    }
}

fn recv_batch_now(sock: &UdpSocket, batch: &mut RecvBatch) -> io::Result<usize> {
    const N: usize = RecvBatch::CAP;
    batch.metas.clear();
    // SAFETY: every mmsghdr points at live locals and buffers sized as declared.
    unsafe {
        let mut names: [libc::sockaddr_storage; N] = zeroed();
        let mut cbufs: [[u64; 16]; N] = zeroed();
        let mut iovs: Vec<libc::iovec> = batch
            .bufs
            .iter_mut()
            .map(|b| libc::iovec {
                iov_base: b.as_mut_ptr() as *mut libc::c_void,
                iov_len: b.len(),
            })
            .collect();
        let mut msgs: [libc::mmsghdr; N] = zeroed();
        for (((m, name), iov), cbuf) in msgs
            .iter_mut()
            .zip(names.iter_mut())
            .zip(iovs.iter_mut())
            .zip(cbufs.iter_mut())
        {
            m.msg_hdr.msg_name = name as *mut _ as *mut libc::c_void;
            m.msg_hdr.msg_namelen = size_of::<libc::sockaddr_storage>() as libc::socklen_t;
            m.msg_hdr.msg_iov = iov;
            m.msg_hdr.msg_iovlen = 1;
            m.msg_hdr.msg_control = cbuf.as_mut_ptr() as *mut libc::c_void;
            m.msg_hdr.msg_controllen = std::mem::size_of_val(cbuf) as _;
        }
        let n = libc::recvmmsg(
            sock.as_raw_fd(),
            msgs.as_mut_ptr(),
            N as _,
            libc::MSG_DONTWAIT,
            std::ptr::null_mut(),
        );
        if n < 0 {
            return Err(io::Error::last_os_error());
        }
        let n = n as usize;
        for (i, (m, name)) in msgs[..n].iter().zip(names.iter()).enumerate() {
            // A datagram of an unknown family cannot be answered: skipped.
            if let Some(src) = from_sockaddr(name) {
                let (dst_ip, ifindex) = pktinfo(&m.msg_hdr);
                batch.metas.push((
                    i,
                    RecvMeta {
                        len: m.msg_len as usize,
                        src,
                        dst_ip,
                        ifindex,
                    },
                ));
            }
        }
        Ok(n)
    }
}

/// Sends packets to `dst`, given as (header, payload) pairs, all the same size but the
/// last. Uses UDP GSO in chunks of up to 64 packets when the kernel supports it, else
/// `sendmmsg`. `src_ip` picks the source address on a wildcard-bound socket.
pub async fn send_batch(
    sock: &UdpSocket,
    dst: SocketAddr,
    src_ip: Option<IpAddr>,
    packets: &[(&[u8], &[u8])],
) -> io::Result<()> {
    if let [(h, p)] = packets {
        // One packet (lock-step DATA, OACK, ERROR): one sendmsg, nothing allocated.
        return sock
            .async_io(Interest::WRITABLE, || send_one_now(sock, dst, src_ip, h, p))
            .await;
    }
    let mut i = 0;
    while i < packets.len() {
        let seg = packets[i].0.len() + packets[i].1.len();
        let per_gso = (GSO_MAX_BYTES / seg.max(1)).min(GSO_MAX_SEGMENTS);
        if gso_enabled() && per_gso >= 2 && packets.len() - i >= 2 {
            let n = per_gso.min(packets.len() - i);
            let chunk = &packets[i..i + n];
            match sock
                .async_io(Interest::WRITABLE, || {
                    send_gso_now(sock, dst, src_ip, chunk, seg)
                })
                .await
            {
                Ok(()) => {
                    i += n;
                    continue;
                }
                Err(e) if gso_refused(&e) => {
                    tracing::warn!(error = %e, "UDP GSO refused by the kernel; falling back to sendmmsg");
                    disable_gso();
                }
                Err(e) => return Err(e),
            }
        }
        let n = (packets.len() - i).min(64);
        let chunk = &packets[i..i + n];
        let sent = sock
            .async_io(Interest::WRITABLE, || {
                send_mmsg_now(sock, dst, src_ip, chunk)
            })
            .await?;
        i += sent.max(1);
    }
    Ok(())
}

fn gso_refused(e: &io::Error) -> bool {
    matches!(
        e.raw_os_error(),
        Some(libc::EIO) | Some(libc::EINVAL) | Some(libc::ENOPROTOOPT) | Some(libc::EOPNOTSUPP)
    )
}

/// Control-message buffer big enough for UDP_SEGMENT plus a PKTINFO.
#[repr(C, align(8))]
struct CmsgBuf([u8; 128]);

/// Fills `cbuf` with the control messages for a send; returns the length used.
///
/// SAFETY: `msg` must point `msg_control` at `cbuf` before this is called.
unsafe fn fill_cmsgs(
    msg: &mut libc::msghdr,
    cbuf: &mut CmsgBuf,
    seg: Option<u16>,
    src_ip: Option<IpAddr>,
) {
    let mut space = 0usize;
    if seg.is_some() {
        space += libc::CMSG_SPACE(size_of::<u16>() as u32) as usize;
    }
    match src_ip {
        Some(IpAddr::V4(_)) => {
            space += libc::CMSG_SPACE(size_of::<libc::in_pktinfo>() as u32) as usize
        }
        Some(IpAddr::V6(_)) => {
            space += libc::CMSG_SPACE(size_of::<libc::in6_pktinfo>() as u32) as usize
        }
        None => {}
    }
    if space == 0 {
        msg.msg_control = std::ptr::null_mut();
        msg.msg_controllen = 0;
        return;
    }
    msg.msg_control = cbuf.0.as_mut_ptr() as *mut libc::c_void;
    msg.msg_controllen = space as _;
    let mut c = libc::CMSG_FIRSTHDR(msg);
    if let Some(seg) = seg {
        (*c).cmsg_level = libc::SOL_UDP;
        (*c).cmsg_type = libc::UDP_SEGMENT;
        (*c).cmsg_len = libc::CMSG_LEN(size_of::<u16>() as u32) as _;
        std::ptr::write_unaligned(libc::CMSG_DATA(c) as *mut u16, seg);
        c = libc::CMSG_NXTHDR(msg, c);
    }
    match src_ip {
        Some(IpAddr::V4(ip)) => {
            (*c).cmsg_level = libc::IPPROTO_IP;
            (*c).cmsg_type = libc::IP_PKTINFO;
            (*c).cmsg_len = libc::CMSG_LEN(size_of::<libc::in_pktinfo>() as u32) as _;
            let mut pi: libc::in_pktinfo = zeroed();
            pi.ipi_spec_dst.s_addr = u32::from(ip).to_be();
            std::ptr::write_unaligned(libc::CMSG_DATA(c) as *mut libc::in_pktinfo, pi);
        }
        Some(IpAddr::V6(ip)) => {
            (*c).cmsg_level = libc::IPPROTO_IPV6;
            (*c).cmsg_type = libc::IPV6_PKTINFO;
            (*c).cmsg_len = libc::CMSG_LEN(size_of::<libc::in6_pktinfo>() as u32) as _;
            let mut pi: libc::in6_pktinfo = zeroed();
            pi.ipi6_addr.s6_addr = ip.octets();
            std::ptr::write_unaligned(libc::CMSG_DATA(c) as *mut libc::in6_pktinfo, pi);
        }
        None => {}
    }
}

fn send_gso_now(
    sock: &UdpSocket,
    dst: SocketAddr,
    src_ip: Option<IpAddr>,
    packets: &[(&[u8], &[u8])],
    seg: usize,
) -> io::Result<()> {
    let mut iov: Vec<IoSlice<'_>> = Vec::with_capacity(packets.len() * 2);
    for (h, p) in packets {
        iov.push(IoSlice::new(h));
        if !p.is_empty() {
            iov.push(IoSlice::new(p));
        }
    }
    send_iov_now(sock, dst, src_ip, &iov, Some(seg as u16))
}

/// Sends one datagram made of `header` and `payload` with one `sendmsg`.
fn send_one_now(
    sock: &UdpSocket,
    dst: SocketAddr,
    src_ip: Option<IpAddr>,
    header: &[u8],
    payload: &[u8],
) -> io::Result<()> {
    let iov = [IoSlice::new(header), IoSlice::new(payload)];
    let n = if payload.is_empty() { 1 } else { 2 };
    send_iov_now(sock, dst, src_ip, &iov[..n], None)
}

/// One `sendmsg` of `iov` to `dst`, from `src_ip` if given, cut into `seg`-byte
/// datagrams by UDP GSO if given.
fn send_iov_now(
    sock: &UdpSocket,
    dst: SocketAddr,
    src_ip: Option<IpAddr>,
    iov: &[IoSlice<'_>],
    seg: Option<u16>,
) -> io::Result<()> {
    let (mut storage, len) = to_sockaddr(&dst);
    let mut cbuf = CmsgBuf([0; 128]);
    // SAFETY: msghdr points at live locals; IoSlice is ABI-compatible with iovec.
    unsafe {
        let mut msg: libc::msghdr = zeroed();
        msg.msg_name = &mut storage as *mut _ as *mut libc::c_void;
        msg.msg_namelen = len;
        msg.msg_iov = iov.as_ptr() as *mut libc::iovec;
        msg.msg_iovlen = iov.len() as _;
        fill_cmsgs(&mut msg, &mut cbuf, seg, src_ip);
        if libc::sendmsg(sock.as_raw_fd(), &msg, 0) < 0 {
            return Err(io::Error::last_os_error());
        }
    }
    Ok(())
}

/// Sends with one `sendmmsg`; returns how many packets the kernel took.
fn send_mmsg_now(
    sock: &UdpSocket,
    dst: SocketAddr,
    src_ip: Option<IpAddr>,
    packets: &[(&[u8], &[u8])],
) -> io::Result<usize> {
    let (mut storage, len) = to_sockaddr(&dst);
    let mut iovs: Vec<[IoSlice<'_>; 2]> = packets
        .iter()
        .map(|(h, p)| [IoSlice::new(h), IoSlice::new(p)])
        .collect();
    let mut cbufs: Vec<CmsgBuf> = (0..packets.len()).map(|_| CmsgBuf([0; 128])).collect();
    // SAFETY: every mmsghdr points at live locals that outlive the call.
    unsafe {
        let mut msgs: Vec<libc::mmsghdr> = Vec::with_capacity(packets.len());
        for (iov, cbuf) in iovs.iter_mut().zip(cbufs.iter_mut()) {
            let mut m: libc::mmsghdr = zeroed();
            m.msg_hdr.msg_name = &mut storage as *mut _ as *mut libc::c_void;
            m.msg_hdr.msg_namelen = len;
            m.msg_hdr.msg_iov = iov.as_mut_ptr() as *mut libc::iovec;
            m.msg_hdr.msg_iovlen = if iov[1].is_empty() { 1 } else { 2 };
            fill_cmsgs(&mut m.msg_hdr, cbuf, None, src_ip);
            msgs.push(m);
        }
        let r = libc::sendmmsg(sock.as_raw_fd(), msgs.as_mut_ptr(), msgs.len() as _, 0);
        if r < 0 {
            return Err(io::Error::last_os_error());
        }
        Ok(r as usize)
    }
}

/// Sends one datagram, from `src_ip` when given (for wildcard-bound sockets).
pub async fn send_one(
    sock: &UdpSocket,
    dst: SocketAddr,
    src_ip: Option<IpAddr>,
    pkt: &[u8],
) -> io::Result<()> {
    if src_ip.is_none() {
        sock.send_to(pkt, dst).await?;
        return Ok(());
    }
    send_batch(sock, dst, src_ip, &[(pkt, &[])]).await
}

/// Sends one IPv4 datagram out of interface `ifindex` (needed for the limited broadcast
/// 255.255.255.255, which routing alone cannot place) from source `src_ip`.
pub async fn send_v4_via(
    sock: &UdpSocket,
    dst: SocketAddr,
    src_ip: Option<Ipv4Addr>,
    ifindex: Option<u32>,
    pkt: &[u8],
) -> io::Result<()> {
    if ifindex.is_none() && src_ip.is_none() {
        sock.send_to(pkt, dst).await?;
        return Ok(());
    }
    sock.async_io(Interest::WRITABLE, || {
        let (mut storage, len) = to_sockaddr(&dst);
        let mut iov = [IoSlice::new(pkt)];
        let mut cbuf = CmsgBuf([0; 128]);
        // SAFETY: msghdr points at live locals; one IP_PKTINFO cmsg fits the buffer.
        unsafe {
            let mut msg: libc::msghdr = zeroed();
            msg.msg_name = &mut storage as *mut _ as *mut libc::c_void;
            msg.msg_namelen = len;
            msg.msg_iov = iov.as_mut_ptr() as *mut libc::iovec;
            msg.msg_iovlen = 1;
            msg.msg_control = cbuf.0.as_mut_ptr() as *mut libc::c_void;
            msg.msg_controllen = libc::CMSG_SPACE(size_of::<libc::in_pktinfo>() as u32) as _;
            let c = libc::CMSG_FIRSTHDR(&msg);
            (*c).cmsg_level = libc::IPPROTO_IP;
            (*c).cmsg_type = libc::IP_PKTINFO;
            (*c).cmsg_len = libc::CMSG_LEN(size_of::<libc::in_pktinfo>() as u32) as _;
            let mut pi: libc::in_pktinfo = zeroed();
            pi.ipi_ifindex = ifindex.unwrap_or(0) as _;
            pi.ipi_spec_dst.s_addr = u32::from(src_ip.unwrap_or(Ipv4Addr::UNSPECIFIED)).to_be();
            std::ptr::write_unaligned(libc::CMSG_DATA(c) as *mut libc::in_pktinfo, pi);
            if libc::sendmsg(sock.as_raw_fd(), &msg, 0) < 0 {
                return Err(io::Error::last_os_error());
            }
        }
        Ok(())
    })
    .await
}

/// MTU of an interface by index, from sysfs; cached.
pub fn interface_mtu(ifindex: u32) -> Option<u32> {
    static CACHE: Mutex<Option<HashMap<u32, u32>>> = Mutex::new(None);
    if let Ok(g) = CACHE.lock() {
        if let Some(m) = g.as_ref().and_then(|m| m.get(&ifindex)) {
            return Some(*m);
        }
    }
    let mut name = [0 as libc::c_char; libc::IF_NAMESIZE];
    // SAFETY: buffer of IF_NAMESIZE as the call requires.
    let p = unsafe { libc::if_indextoname(ifindex, name.as_mut_ptr()) };
    if p.is_null() {
        return None;
    }
    // SAFETY: if_indextoname wrote a NUL-terminated name.
    let name = unsafe { std::ffi::CStr::from_ptr(name.as_ptr()) }
        .to_string_lossy()
        .into_owned();
    let mtu: u32 = std::fs::read_to_string(format!("/sys/class/net/{name}/mtu"))
        .ok()?
        .trim()
        .parse()
        .ok()?;
    if let Ok(mut g) = CACHE.lock() {
        g.get_or_insert_with(HashMap::new).insert(ifindex, mtu);
    }
    Some(mtu)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn pktinfo_reports_destination() {
        let a = bind("0.0.0.0:0".parse().unwrap(), true).unwrap();
        let port = a.local_addr().unwrap().port();
        let b = bind("127.0.0.1:0".parse().unwrap(), false).unwrap();
        b.send_to(b"hi", ("127.0.0.7", port)).await.unwrap();
        let mut buf = [0u8; 16];
        let m = recv_meta(&a, &mut buf).await.unwrap();
        assert_eq!(m.len, 2);
        assert_eq!(m.dst_ip, Some("127.0.0.7".parse().unwrap()));
        assert_eq!(m.src, b.local_addr().unwrap());
        assert!(interface_mtu(m.ifindex.unwrap()).unwrap() >= 1280);
    }

    #[tokio::test]
    async fn drain_reads_two_at_once_then_waits_for_the_next() {
        let rx = bind("127.0.0.1:0".parse().unwrap(), false).unwrap();
        let tx = bind("127.0.0.1:0".parse().unwrap(), false).unwrap();
        let to = rx.local_addr().unwrap();
        let (mut a, mut b) = ([0u8; 64], [0u8; 64]);
        for m in [&b"one"[..], b"two", b"three"] {
            tx.send_to(m, to).await.unwrap();
        }
        let (x, y) = recv_drain(&rx, &mut a, &mut b).await.unwrap();
        assert_eq!(
            (&a[..x.len], x.from),
            (&b"one"[..], tx.local_addr().unwrap())
        );
        assert_eq!(&b[..y.unwrap().len], b"two");
        // One left: read alone, and readiness is cleared without another syscall.
        let (x, y) = recv_drain(&rx, &mut a, &mut b).await.unwrap();
        assert_eq!((&a[..x.len], y), (&b"three"[..], None));
        // The next datagram, sent later, still wakes the receiver.
        let r = tokio::spawn(async move {
            let (mut a, mut b) = ([0u8; 64], [0u8; 64]);
            let (x, _) = recv_drain(&rx, &mut a, &mut b).await.unwrap();
            a[..x.len].to_vec()
        });
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
        tx.send_to(b"four", to).await.unwrap();
        let got = tokio::time::timeout(std::time::Duration::from_secs(5), r)
            .await
            .expect("woken by the later datagram")
            .unwrap();
        assert_eq!(got, b"four");
    }

    #[tokio::test]
    async fn batch_receive_reports_each_datagram_with_its_destination() {
        let rx = bind("0.0.0.0:0".parse().unwrap(), true).unwrap();
        let port = rx.local_addr().unwrap().port();
        let tx = bind("127.0.0.1:0".parse().unwrap(), false).unwrap();
        let n = RecvBatch::CAP + 3;
        for i in 0..n {
            let dst = format!("127.0.0.{}", 1 + i % 3);
            tx.send_to(format!("m{i}").as_bytes(), (dst.as_str(), port))
                .await
                .unwrap();
        }
        let mut batch = RecvBatch::new(2048);
        let mut seen = Vec::new();
        while seen.len() < n {
            let k = recv_meta_batch(&rx, &mut batch).await.unwrap();
            assert!((1..=RecvBatch::CAP).contains(&k));
            for (m, pkt) in batch.iter() {
                assert_eq!(m.src, tx.local_addr().unwrap());
                let i = seen.len();
                assert_eq!(pkt, format!("m{i}").as_bytes());
                assert_eq!(
                    m.dst_ip,
                    Some(format!("127.0.0.{}", 1 + i % 3).parse().unwrap())
                );
                assert!(m.ifindex.is_some());
                seen.push(i);
            }
        }
        // Later datagrams still wake the receiver after a short batch cleared readiness.
        tx.send_to(b"late", ("127.0.0.1", port)).await.unwrap();
        let k = tokio::time::timeout(
            std::time::Duration::from_secs(5),
            recv_meta_batch(&rx, &mut batch),
        )
        .await
        .expect("woken")
        .unwrap();
        assert_eq!(k, 1);
        assert_eq!(batch.iter().next().unwrap().1, b"late");
    }

    #[tokio::test]
    async fn batch_arrives_as_separate_datagrams_from_chosen_source() {
        let rx = bind("127.0.0.1:0".parse().unwrap(), false).unwrap();
        let tx = bind("0.0.0.0:0".parse().unwrap(), false).unwrap();
        let payload = vec![7u8; 100 * 300];
        let hdrs: Vec<[u8; 4]> = (0..100u16).map(crate::wire::tftp::data_header).collect();
        let mut pkts: Vec<(&[u8], &[u8])> = (0..100)
            .map(|i| (&hdrs[i][..], &payload[i * 300..(i + 1) * 300]))
            .collect();
        pkts[99].1 = &payload[..10];
        send_batch(
            &tx,
            rx.local_addr().unwrap(),
            Some("127.0.0.9".parse().unwrap()),
            &pkts,
        )
        .await
        .unwrap();
        let mut buf = [0u8; 2048];
        for i in 0..100u16 {
            let (n, from) = rx.recv_from(&mut buf).await.unwrap();
            assert_eq!(from.ip(), "127.0.0.9".parse::<IpAddr>().unwrap());
            assert_eq!(&buf[..4], &crate::wire::tftp::data_header(i));
            assert_eq!(n, if i == 99 { 14 } else { 304 });
        }
    }
}

//! Network interfaces: IPv4 address of an interface, interface index by name, and the
//! list of interfaces with their flags and IPv4 addresses.

use std::ffi::CStr;
use std::net::Ipv4Addr;

/// First IPv4 address of interface `ifindex`, from getifaddrs.
pub fn ipv4_of(ifindex: u32) -> Option<Ipv4Addr> {
    let mut name = [0 as libc::c_char; libc::IF_NAMESIZE];
    // SAFETY: buffer of IF_NAMESIZE as required.
    if unsafe { libc::if_indextoname(ifindex, name.as_mut_ptr()) }.is_null() {
        return None;
    }
    // SAFETY: if_indextoname wrote a NUL-terminated string.
    let want = unsafe { CStr::from_ptr(name.as_ptr()) }.to_owned();
    let mut head: *mut libc::ifaddrs = std::ptr::null_mut();
    // SAFETY: getifaddrs fills `head`; freed below.
    if unsafe { libc::getifaddrs(&mut head) } != 0 {
        return None;
    }
    let mut found = None;
    let mut p = head;
    while !p.is_null() {
        // SAFETY: p walks the list getifaddrs returned.
        let ifa = unsafe { &*p };
        if !ifa.ifa_addr.is_null() && !ifa.ifa_name.is_null() {
            // SAFETY: non-null name and address from getifaddrs.
            let fam = unsafe { (*ifa.ifa_addr).sa_family } as libc::c_int;
            let n = unsafe { CStr::from_ptr(ifa.ifa_name) };
            if fam == libc::AF_INET && n == want.as_c_str() {
                // SAFETY: AF_INET means sockaddr_in.
                let sin = unsafe { &*(ifa.ifa_addr as *const libc::sockaddr_in) };
                found = Some(Ipv4Addr::from(u32::from_be(sin.sin_addr.s_addr)));
                break;
            }
        }
        p = ifa.ifa_next;
    }
    // SAFETY: head came from getifaddrs.
    unsafe { libc::freeifaddrs(head) };
    found
}

/// Index of the interface named `name`.
pub fn index_of(name: &str) -> Option<u32> {
    let c = std::ffi::CString::new(name).ok()?;
    // SAFETY: valid C string.
    let i = unsafe { libc::if_nametoindex(c.as_ptr()) };
    (i != 0).then_some(i)
}

/// An interface as `getifaddrs` shows it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Interface {
    /// Name (`eth0`).
    pub name: String,
    /// Administratively up (IFF_UP).
    pub up: bool,
    /// The loopback interface.
    pub loopback: bool,
    /// Its IPv4 addresses.
    pub ipv4: Vec<Ipv4Addr>,
}

/// Every interface with its IPv4 addresses, in the order `getifaddrs` lists them.
pub fn list() -> Vec<Interface> {
    let mut out: Vec<Interface> = Vec::new();
    let mut head: *mut libc::ifaddrs = std::ptr::null_mut();
    // SAFETY: getifaddrs fills `head`; freed below.
    if unsafe { libc::getifaddrs(&mut head) } != 0 {
        return out;
    }
    let mut p = head;
    while !p.is_null() {
        // SAFETY: p walks the list getifaddrs returned.
        let ifa = unsafe { &*p };
        p = ifa.ifa_next;
        if ifa.ifa_name.is_null() {
            continue;
        }
        // SAFETY: non-null, NUL-terminated name from getifaddrs.
        let name = unsafe { CStr::from_ptr(ifa.ifa_name) }
            .to_string_lossy()
            .into_owned();
        let i = match out.iter().position(|i| i.name == name) {
            Some(i) => i,
            None => {
                out.push(Interface {
                    name,
                    up: ifa.ifa_flags & libc::IFF_UP as u32 != 0,
                    loopback: ifa.ifa_flags & libc::IFF_LOOPBACK as u32 != 0,
                    ipv4: Vec::new(),
                });
                out.len() - 1
            }
        };
        if ifa.ifa_addr.is_null() {
            continue;
        }
        // SAFETY: non-null address from getifaddrs.
        if unsafe { (*ifa.ifa_addr).sa_family } as libc::c_int == libc::AF_INET {
            // SAFETY: AF_INET means sockaddr_in.
            let sin = unsafe { &*(ifa.ifa_addr as *const libc::sockaddr_in) };
            out[i]
                .ipv4
                .push(Ipv4Addr::from(u32::from_be(sin.sin_addr.s_addr)));
        }
    }
    // SAFETY: head came from getifaddrs.
    unsafe { libc::freeifaddrs(head) };
    out
}

#[cfg(test)]
mod tests {
    #[test]
    fn loopback() {
        let i = super::index_of("lo").expect("lo exists");
        assert_eq!(super::ipv4_of(i), Some(std::net::Ipv4Addr::LOCALHOST));
        assert_eq!(super::index_of("no-such-if0"), None);
        let lo = super::list()
            .into_iter()
            .find(|i| i.name == "lo")
            .expect("lo listed");
        assert!(lo.loopback && lo.up);
        assert!(lo.ipv4.contains(&std::net::Ipv4Addr::LOCALHOST));
    }
}

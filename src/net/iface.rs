//! Network interfaces: IPv4 address of an interface, interface index by name.

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

#[cfg(test)]
mod tests {
    #[test]
    fn loopback() {
        let i = super::index_of("lo").expect("lo exists");
        assert_eq!(super::ipv4_of(i), Some(std::net::Ipv4Addr::LOCALHOST));
        assert_eq!(super::index_of("no-such-if0"), None);
    }
}

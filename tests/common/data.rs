//! Test data shared by every harness: deterministic pseudo-random bytes and the names
//! of test nodes (MACs, their pxelinux file).

/// Deterministic pseudo-random bytes (xorshift64*), different for each `seed`.
pub fn pattern(len: usize, seed: u64) -> Vec<u8> {
    let mut x = seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
    let mut v = Vec::with_capacity(len + 8);
    while v.len() < len {
        x ^= x >> 12;
        x ^= x << 25;
        x ^= x >> 27;
        v.extend_from_slice(&x.wrapping_mul(0x2545_F491_4F6C_DD1D).to_le_bytes());
    }
    v.truncate(len);
    v
}

/// MAC of test node `i`: `52:54:00:b7:XX:YY`.
pub fn mac(i: usize) -> [u8; 6] {
    [0x52, 0x54, 0x00, 0xb7, (i >> 8) as u8, i as u8]
}

/// `aa:bb:...` form.
pub fn mac_colons(m: [u8; 6]) -> String {
    m.iter()
        .map(|b| format!("{b:02x}"))
        .collect::<Vec<_>>()
        .join(":")
}

/// The node's pxelinux file: `pxelinux.cfg/01-aa-bb-...`.
pub fn pxelinux_path(m: [u8; 6]) -> String {
    format!(
        "pxelinux.cfg/01-{}",
        m.iter()
            .map(|b| format!("{b:02x}"))
            .collect::<Vec<_>>()
            .join("-")
    )
}

/// `aa:bb:cc:dd:ee:ff` as bytes; panics on anything else.
#[track_caller]
pub fn parse_mac(s: &str) -> [u8; 6] {
    let mut m = [0u8; 6];
    let parts: Vec<&str> = s.split(':').collect();
    assert_eq!(parts.len(), 6, "not a MAC: {s:?}");
    for (b, p) in m.iter_mut().zip(parts) {
        *b = u8::from_str_radix(p, 16).unwrap_or_else(|_| panic!("not a MAC: {s:?}"));
    }
    m
}

//! AFL target: `baton::fuzzing::dhcp_request`.
fn main() {
    afl::fuzz!(|data: &[u8]| baton::fuzzing::dhcp_request(data));
}

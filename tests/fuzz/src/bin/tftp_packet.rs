//! AFL target: `baton::fuzzing::tftp_packet`.
fn main() {
    afl::fuzz!(|data: &[u8]| baton::fuzzing::tftp_packet(data));
}

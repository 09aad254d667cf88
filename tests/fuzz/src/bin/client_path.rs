//! AFL target: `baton::fuzzing::client_path`.
fn main() {
    afl::fuzz!(|data: &[u8]| baton::fuzzing::client_path(data));
}

//! AFL target: `baton::fuzzing::http_range`.
fn main() {
    afl::fuzz!(|data: &[u8]| baton::fuzzing::http_range(data));
}

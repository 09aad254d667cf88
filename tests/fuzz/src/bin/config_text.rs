//! AFL target: `baton::fuzzing::config_text`.
fn main() {
    afl::fuzz!(|data: &[u8]| baton::fuzzing::config_text(data));
}

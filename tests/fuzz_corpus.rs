//! Replays the saved fuzz corpus (`tests/fuzz/corpus/<target>/`) through the same target
//! functions the AFL fuzzers call (`baton::fuzzing`), so every input a fuzzer found
//! interesting, and every past crash, is checked on each `cargo test`.

use std::path::Path;

#[test]
fn every_corpus_input_passes_its_target() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fuzz/corpus");
    let mut failures = Vec::new();
    for (name, target) in baton::fuzzing::TARGETS {
        let dir = root.join(name);
        let mut files: Vec<_> = std::fs::read_dir(&dir)
            .unwrap_or_else(|e| panic!("corpus of {name} missing at {}: {e}", dir.display()))
            .map(|e| e.unwrap().path())
            .filter(|p| p.is_file())
            .collect();
        files.sort();
        assert!(
            files.len() >= 5,
            "corpus of {name} has only {} inputs",
            files.len()
        );
        for f in &files {
            let data = std::fs::read(f).unwrap();
            // Collect every failing input rather than stopping at the first.
            if std::panic::catch_unwind(|| target(&data)).is_err() {
                failures.push(f.display().to_string());
            }
        }
        println!("{name}: {} inputs replayed", files.len());
    }
    assert!(failures.is_empty(), "inputs that fail: {failures:#?}");
}

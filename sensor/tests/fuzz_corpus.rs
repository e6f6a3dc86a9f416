//! Replays every file of `fuzz/corpus/<target>/` through its fuzz target's function (no
//! libFuzzer needed), so the suite re-checks each input the fuzzers found interesting or that
//! once crashed. `cargo xtask fuzz` grows the corpus; this keeps it from regressing.

use std::{fs, path::PathBuf};

#[test]
fn every_corpus_file_runs_through_its_target_without_panicking() {
    let root = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../fuzz/corpus");
    for (name, target) in sensor::fuzzing::TARGETS {
        let dir = root.join(name);
        let mut files: Vec<PathBuf> = fs::read_dir(&dir)
            .unwrap_or_else(|e| panic!("{}: {e}", dir.display()))
            .map(|e| e.map(|e| e.path()).unwrap_or_else(|e| panic!("{}: {e}", dir.display())))
            .collect();
        files.sort();
        assert!(!files.is_empty(), "{}: empty corpus", dir.display());
        for file in &files {
            let data = fs::read(file).unwrap_or_else(|e| panic!("{}: {e}", file.display()));
            let outcome = std::panic::catch_unwind(|| target(&data));
            assert!(outcome.is_ok(), "{name}: {} panicked", file.display());
        }
        eprintln!("{name}: {} corpus files", files.len());
    }
}

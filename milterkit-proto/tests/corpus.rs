//! The short fuzz run of CI: every input of the kept corpus (fuzz/corpus, seeded from the captures
//! and grown by cargo-fuzz) goes through its fuzzing entry point on stable Rust, no nightly.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::path::Path;

use milterkit_proto::fuzzing;

/// A fuzzing entry point.
type Entry = fn(&[u8]);

#[test]
fn every_kept_fuzz_input_passes_its_entry_point() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("../fuzz/corpus");
    let targets: [(&str, Entry); 5] = [
        ("frames", fuzzing::frames),
        ("commands", fuzzing::commands),
        ("responses", fuzzing::responses),
        ("milter_session", fuzzing::milter_session),
        ("mta_session", fuzzing::mta_session),
    ];
    let mut total = 0;
    for (name, entry) in targets {
        let dir = root.join(name);
        let files: Vec<_> = std::fs::read_dir(&dir)
            .unwrap_or_else(|e| panic!("{}: {e}", dir.display()))
            .map(|e| e.unwrap().path())
            .collect();
        assert!(!files.is_empty(), "{name}: empty corpus");
        for f in &files {
            entry(&std::fs::read(f).unwrap());
        }
        total += files.len();
    }
    println!("{total} corpus inputs replayed");
}

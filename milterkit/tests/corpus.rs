//! The short fuzz run of CI for the served connection: every kept input of
//! fuzz/corpus/served_connection goes through the entry point on stable Rust.
#![allow(clippy::unwrap_used, clippy::expect_used)]

#[test]
fn every_kept_fuzz_input_is_served_without_a_panic_or_a_hang() {
    let dir =
        std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../fuzz/corpus/served_connection");
    let files: Vec<_> = std::fs::read_dir(&dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .collect();
    assert!(!files.is_empty(), "empty corpus at {}", dir.display());
    for f in &files {
        milterkit::fuzzing::served_connection(&std::fs::read(f).unwrap());
    }
    println!("{} corpus inputs served", files.len());
}

//! Criterion benchmarks (placeholder, filled in next).
fn main() {}

//! Verification benchmarks (written below).

fn main() {}

//! parlor-bench: a load generator that speaks protocol v1 to a running Parlor.
fn main() {}

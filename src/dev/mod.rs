//! Development tools shipped in the binary: the simulated platform, the demo, and helpers the
//! integration tests and benchmarks share.

pub mod demo;
pub mod mock;
pub mod testkit;

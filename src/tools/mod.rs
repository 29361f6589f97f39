//! The tools around the proxy: the echo backend and the load generator.
pub mod bench;
pub mod echo;

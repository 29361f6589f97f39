//! The tools around the proxy: the echo backend (and, later, the load generator and demo).
pub mod echo;

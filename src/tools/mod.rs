//! The tools around the proxy: the echo backend, the load generator, the nginx importer.
pub mod bench;
pub mod echo;
pub mod nginx;

//! The tools around the proxy: the echo backend, the load generator, the demo that runs both
//! around the proxy, and the nginx importer.
pub mod bench;
pub mod demo;
pub mod echo;
pub mod nginx;

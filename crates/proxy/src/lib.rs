//! ringway: a WebSocket reverse proxy on io_uring, one worker thread per core.
#![deny(unsafe_code)]
#![warn(unsafe_op_in_unsafe_fn, clippy::undocumented_unsafe_blocks)]

pub mod admin;
pub mod app;
pub mod config;
#[doc(hidden)]
pub mod fuzzing;
pub mod h2;

pub mod http;
pub mod limits;
pub mod live;
pub mod metrics;
pub mod reactor;
pub mod session;
pub mod sys;
pub mod tls;
pub mod tuning;
pub mod upstream;
#[allow(unsafe_code)]
pub mod uring;
pub mod wire;
pub mod worker;
pub mod ws;

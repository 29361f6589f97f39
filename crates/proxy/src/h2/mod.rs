//! HTTP/2 (RFC 9113) on the server side, with RFC 8441's extended CONNECT: the frames
//! (`frame.rs`), HPACK decoding (`hpack.rs`), header blocks (`fields.rs`: the request
//! checks of §8, a stateless response encoder) and one connection's state machine
//! (`conn.rs`: streams, flow control, the bounds on what a peer may make this side hold or
//! do). Pure: bytes in, events to a [`Handler`] and bytes out; no socket, no clock of its own.

pub mod conn;
pub mod fields;
pub mod frame;
pub mod hpack;

pub use conn::{Connection, Handler, Settings, Tally};
pub use fields::Request;
pub use frame::Code;

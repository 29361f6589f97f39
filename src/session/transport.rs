//! The transport of one connection of a session: the seam between the socket (a reactor
//! [`Conn`]: fd, recv arming, send queue, half-close, cancel-then-close) and the protocol
//! code, which sees plaintext only. Bytes received into a pool buffer come out of
//! [`Transport::received`] as plaintext chunks, and plaintext chunks go in through
//! [`Transport::push`]; the protocol code never learns whether a connection is encrypted.
//!
//! `Plain` passes the pool buffer through untouched: a received buffer is the chunk that is
//! sent on the peer, no copy. A `Tls` variant (the TLS issue) decrypts records in place in
//! the same buffer and encrypts what is pushed, behind the same three calls.

use std::ops::{Deref, DerefMut};
use std::os::fd::RawFd;

use crate::reactor::{Conn, Sent, Sys};
use crate::uring::{Chunk, Side};

#[derive(Debug)]
pub enum Transport {
    /// Plaintext TCP.
    Plain(Conn),
}

impl Transport {
    pub fn plain(fd: RawFd) -> Transport {
        Transport::Plain(Conn::new(fd))
    }

    /// Bytes received on the socket, as plaintext for the protocol (`None`: nothing for it
    /// yet, the transport kept or consumed them).
    pub fn received(&mut self, _io: &mut impl Sys, c: Chunk) -> Option<Chunk> {
        match self {
            Transport::Plain(_) => Some(c),
        }
    }

    /// Queue plaintext for sending.
    pub fn push(&mut self, c: Chunk) {
        match self {
            Transport::Plain(conn) => conn.push(c),
        }
    }

    /// Start sending what is queued, if nothing is in flight.
    pub fn kick(&mut self, io: &mut impl Sys, side: Side) {
        match self {
            Transport::Plain(conn) => conn.kick(io, side),
        }
    }

    /// A send completed.
    pub fn on_sent(&mut self, io: &mut impl Sys, side: Side, res: i32, dropping: bool) -> Sent {
        match self {
            Transport::Plain(conn) => conn.on_sent(io, side, res, dropping),
        }
    }
}

/// The socket under the transport: its state is the same whatever the transport does.
impl Deref for Transport {
    type Target = Conn;

    fn deref(&self) -> &Conn {
        match self {
            Transport::Plain(conn) => conn,
        }
    }
}

impl DerefMut for Transport {
    fn deref_mut(&mut self) -> &mut Conn {
        match self {
            Transport::Plain(conn) => conn,
        }
    }
}

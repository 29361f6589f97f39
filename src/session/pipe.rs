//! One socket of a session: its fd, its receive state, and the queue of chunks waiting to be
//! sent on it (one send in flight at a time, so bytes stay in order).

use std::collections::VecDeque;
use std::os::fd::RawFd;

use crate::uring::Chunk;

/// Chunks that may wait to be sent on one socket (plus the one in flight). At this many, the
/// source side's recv is cancelled: backpressure instead of unbounded buffering. The limit is
/// soft: completions already posted before the cancel lands are still queued (bounded by the
/// worker's buffer ring).
pub const QUEUE: usize = 4;

/// State of the (multishot) recv on a socket.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Recv {
    /// Not armed.
    Off,
    /// Armed; completions will keep coming.
    On,
    /// A cancel was submitted; the final completion has not arrived yet.
    Cancelling,
}

/// Half-close of the write side.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Shut {
    Open,
    /// Shut down the write side once the queue is empty.
    Pending,
    /// `shutdown(SHUT_WR)` submitted or done.
    Done,
}

#[derive(Debug)]
pub struct Pipe {
    pub fd: RawFd,
    /// Ops in flight on `fd` (a multishot recv counts once until its last completion).
    pub ops: u8,
    pub recv: Recv,
    /// The peer has sent FIN: nothing more will be read.
    pub eof: bool,
    /// The recv stopped on ENOBUFS; waiting for buffers.
    pub parked: bool,
    pub shut: Shut,
    /// Being closed: no new ops; fd closed when `ops` reaches 0.
    pub retiring: bool,
    /// The socket is connected and may be sent on.
    pub ready: bool,
    pub sending: Option<Chunk>,
    queue: VecDeque<Chunk>,
    /// Bytes received on this socket.
    pub bytes_in: u64,
    /// When the send in flight was submitted or last made progress (ms).
    pub send_since_ms: u64,
}

impl Pipe {
    pub fn new(fd: RawFd) -> Pipe {
        Pipe {
            fd,
            ops: 0,
            recv: Recv::Off,
            eof: false,
            parked: false,
            shut: Shut::Open,
            retiring: false,
            ready: fd >= 0,
            sending: None,
            queue: VecDeque::new(),
            bytes_in: 0,
            send_since_ms: 0,
        }
    }

    /// Chunks queued or in flight.
    pub fn pending(&self) -> usize {
        self.queue.len() + usize::from(self.sending.is_some())
    }

    /// Nothing queued, nothing in flight.
    pub fn flushed(&self) -> bool {
        self.pending() == 0
    }

    pub fn push(&mut self, c: Chunk) {
        self.queue.push_back(c);
    }

    /// Put a chunk at the front (a head that must go before what is queued).
    pub fn push_front(&mut self, c: Chunk) {
        self.queue.push_front(c);
    }

    pub fn pop(&mut self) -> Option<Chunk> {
        let c = self.queue.pop_front();
        if self.queue.is_empty() && self.queue.capacity() > 2 * QUEUE {
            // A burst grew it; an idle session should not keep the memory.
            self.queue = VecDeque::new();
        }
        c
    }

    /// Take every queued chunk (to release them when the socket goes away).
    pub fn drain(&mut self) -> impl Iterator<Item = Chunk> + '_ {
        self.queue.drain(..)
    }

    /// Replace the fd (a new upstream attempt) keeping the queue.
    pub fn reset_fd(&mut self, fd: RawFd) {
        let queue = std::mem::take(&mut self.queue);
        *self = Pipe::new(fd);
        self.ready = false;
        self.queue = queue;
    }

    /// Whether the fd is open and usable for new ops.
    pub fn open(&self) -> bool {
        self.fd >= 0 && !self.retiring
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::uring::Src;

    fn c(i: u16) -> Chunk {
        Chunk {
            src: Src::Pool(i),
            off: 0,
            len: 1,
        }
    }

    #[test]
    fn fifo_with_front_insert() {
        let mut p = Pipe::new(3);
        p.push(c(1));
        p.push(c(2));
        p.push_front(c(0));
        p.push(c(3));
        assert_eq!(p.pending(), 4);
        for i in 0..4 {
            assert_eq!(p.pop(), Some(c(i)));
        }
        assert_eq!(p.pop(), None);
        assert!(p.flushed());
    }
}

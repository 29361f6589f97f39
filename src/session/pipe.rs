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
    /// The hang-up watch (a poll for POLLRDHUP) on this socket, armed while it is not read.
    pub hup: Recv,
    queue: Queue,
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
            hup: Recv::Off,
            queue: Queue::default(),
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
        self.queue.push(c);
    }

    pub fn pop(&mut self) -> Option<Chunk> {
        self.queue.pop()
    }

    /// Take every queued chunk (to release them when the socket goes away).
    pub fn drain(&mut self) -> Vec<Chunk> {
        let mut out = Vec::with_capacity(self.queue.len());
        while let Some(c) = self.queue.pop() {
            out.push(c);
        }
        out
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

/// A FIFO of chunks: the first lives in the session itself, so a session with at most one
/// chunk waiting allocates nothing; a burst spills into a heap deque, freed when it drains.
#[derive(Debug, Default)]
struct Queue {
    first: Option<Chunk>,
    /// Boxed on purpose: 8 bytes in every session instead of a 32-byte `VecDeque`, for the
    /// rare session that has more than one chunk waiting.
    #[allow(clippy::box_collection)]
    spill: Option<Box<VecDeque<Chunk>>>,
}

impl Queue {
    fn len(&self) -> usize {
        usize::from(self.first.is_some()) + self.spill.as_ref().map_or(0, |s| s.len())
    }

    fn push(&mut self, c: Chunk) {
        if self.first.is_none() {
            // Invariant: the spill is empty whenever `first` is.
            self.first = Some(c);
        } else {
            self.spill
                .get_or_insert_with(|| Box::new(VecDeque::with_capacity(QUEUE * 2)))
                .push_back(c);
        }
    }

    fn pop(&mut self) -> Option<Chunk> {
        let c = self.first.take()?;
        if let Some(s) = self.spill.as_mut() {
            self.first = s.pop_front();
            if s.is_empty() {
                self.spill = None;
            }
        }
        Some(c)
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
    fn fifo_through_inline_and_spill() {
        let mut p = Pipe::new(3);
        let mut next_out = 0;
        let mut next_in = 0;
        // Interleave pushes and pops so the queue crosses the inline/spill edge many times.
        for round in 0..50u16 {
            for _ in 0..(round % 7) {
                p.push(c(next_in));
                next_in += 1;
            }
            for _ in 0..(round % 5) {
                if let Some(x) = p.pop() {
                    assert_eq!(x, c(next_out));
                    next_out += 1;
                }
            }
            assert_eq!(p.pending(), usize::from(next_in - next_out));
        }
        while let Some(x) = p.pop() {
            assert_eq!(x, c(next_out));
            next_out += 1;
        }
        assert_eq!(next_in, next_out);
        assert!(p.flushed());
        assert!(
            p.queue.spill.is_none(),
            "an empty queue holds no heap memory"
        );
    }
}

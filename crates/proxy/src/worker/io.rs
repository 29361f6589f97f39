//! The `Io` a session gets from its worker: the reactor's socket effects over the ring, the
//! access log, and the worker's metrics for what the session observes.

use std::net::{IpAddr, SocketAddr};
use std::os::fd::RawFd;

use super::log::{write_access_log, write_open_log};
use crate::metrics::WorkerMetrics;
use crate::reactor::{Pipe, RingSys, Sys};
use crate::session::{AccessLog, Io, Observed};
use crate::uring::{Chunk, ConnId, Op};

/// The session's `Io` over the ring: the reactor's socket effects, plus the access log.
pub(super) struct WorkerIo<'a> {
    pub(super) sys: RingSys<'a>,
    pub(super) metrics: &'a WorkerMetrics,
    /// The worker's number.
    pub(super) worker: usize,
}

impl Sys for WorkerIo<'_> {
    fn now_ms(&self) -> u64 {
        self.sys.now_ms()
    }
    fn data(&self, bid: u16, len: u32) -> &[u8] {
        self.sys.data(bid, len)
    }
    fn data_mut(&mut self, bid: u16, len: u32) -> &mut [u8] {
        self.sys.data_mut(bid, len)
    }
    fn heap(&self, id: u32) -> &[u8] {
        self.sys.heap(id)
    }
    fn recycle(&mut self, v: Vec<u8>) {
        self.sys.recycle(v)
    }
    fn scratch(&mut self) -> Vec<u8> {
        self.sys.scratch()
    }
    fn put(&mut self, bytes: Vec<u8>) -> Chunk {
        self.sys.put(bytes)
    }
    fn release(&mut self, c: Chunk) {
        self.sys.release(c)
    }
    fn sent(&mut self, c: Chunk) {
        self.sys.sent(c)
    }
    fn recv(&mut self, fd: RawFd, id: ConnId, buffers: u32) {
        self.sys.recv(fd, id, buffers)
    }
    fn pool_low(&self) -> bool {
        self.sys.pool_low()
    }
    fn watch_hangup(&mut self, fd: RawFd, id: ConnId) {
        self.sys.watch_hangup(fd, id)
    }
    fn cancel(&mut self, id: ConnId, op: Op) {
        self.sys.cancel(id, op)
    }
    fn send(&mut self, fd: RawFd, id: ConnId, c: Chunk) {
        self.sys.send(fd, id, c)
    }
    fn connect(
        &mut self,
        addr: SocketAddr,
        source: Option<IpAddr>,
        id: ConnId,
    ) -> Result<RawFd, i32> {
        self.sys.connect(addr, source, id)
    }
    fn shutdown(&mut self, fd: RawFd) {
        self.sys.shutdown(fd)
    }
    fn close(&mut self, fd: RawFd) {
        self.sys.close(fd)
    }
    fn send_now(&mut self, fd: RawFd, bytes: &[u8]) -> bool {
        self.sys.send_now(fd, bytes)
    }
    fn park(&mut self, id: ConnId) {
        self.sys.park(id)
    }
    fn watch_ready(&mut self, fd: RawFd, id: ConnId, write: bool) {
        self.sys.watch_ready(fd, id, write)
    }
    fn splice(&mut self, from: RawFd, to: RawFd, len: u32) -> Result<u32, i32> {
        self.sys.splice(from, to, len)
    }
    fn pipe(&mut self) -> Option<Pipe> {
        self.sys.pipe()
    }
    fn pipe_back(&mut self, p: Pipe) {
        self.sys.pipe_back(p)
    }
    fn nonblocking(&mut self, fd: RawFd) -> bool {
        self.sys.nonblocking(fd)
    }
    fn socketpair(&mut self) -> Result<(RawFd, RawFd), i32> {
        self.sys.socketpair()
    }
}

impl Io for WorkerIo<'_> {
    fn observe(&mut self, what: Observed) {
        match what {
            Observed::Connected(ms) => self.metrics.connect.observe_ms(ms),
            Observed::TunnelOpened(ms) => self.metrics.tunnel_opened(ms),
            Observed::Spliced(n) => self.metrics.spliced(n),
            Observed::Http2Opened => self.metrics.h2.opened(),
            Observed::Http2Streams(n) => self.metrics.h2.streams(n),
            Observed::Http2Resets { sent, code, n } => self.metrics.h2.resets(sent, code, n),
            Observed::Http2Goaway(code) => self.metrics.h2.goaway(code),
            Observed::MessageDelayed => self.metrics.message_delayed(),
        }
    }

    fn as_dyn(&mut self) -> &mut dyn Io {
        self
    }

    fn log_open(&mut self, l: &AccessLog<'_>) {
        write_open_log(l);
    }

    fn worker(&self) -> usize {
        self.worker
    }

    fn log(&mut self, l: &AccessLog<'_>) {
        self.metrics.request_done(l.bytes_in, l.bytes_out);
        if l.write {
            write_access_log(l);
        }
    }
}

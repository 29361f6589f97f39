//! The io_uring room: ring setup, submission with a bounded backlog, the provided-buffer ring,
//! the store of heap bytes the kernel reads from, `user_data` and the timer wheel.
//!
//! This is the only module that turns buffer ids into pointers and pushes SQEs. Everything the
//! kernel may read or write is owned here and tracked: a buffer named by an SQE is never freed or
//! handed back to the kernel before that SQE's completion has been reaped (asserted).

pub mod counting;
pub mod pipe;
mod pool;
mod probe;
pub mod slots;
pub mod timer;
pub mod user_data;

use std::collections::VecDeque;
use std::io::{self, Write};
use std::net::SocketAddr;
use std::os::fd::RawFd;
use std::time::Duration;

use io_uring::types::{CancelBuilder, Fd, SubmitArgs, Timespec};
use io_uring::{IoUring, cqueue, opcode, squeue};

pub use pool::{BufPool, HeapStore};
use pool::{BufState, HeapData, HeapEntry};
#[cfg(test)]
use pool::{GROW_TO, TRIM_KEEP};
pub use probe::probe;
pub use user_data::{CONN_MAX, ConnId, GENERATION_MAX, Op, SLOT_CORE, UserData, next_generation};

/// `recv_capped` with this many buffers: a multishot recv without a cap, armed until it ends
/// (ENOBUFS, EOF, an error or a cancel).
pub const UNCAPPED: u32 = u32::MAX;

/// Buffer group id of the one provided-buffer ring each ring owns.
const BGID: u16 = 0;

/// The opcodes ringway submits; `probe` checks the kernel knows each of them.
pub const OPCODES_USED: &[(u8, &str)] = &[
    (opcode::AcceptMulti::CODE, "ACCEPT"),
    (opcode::RecvMulti::CODE, "RECV"),
    (opcode::Send::CODE, "SEND"),
    (opcode::Connect::CODE, "CONNECT"),
    (opcode::AsyncCancel2::CODE, "ASYNC_CANCEL"),
    (opcode::PollAdd::CODE, "POLL_ADD"),
    (opcode::Close::CODE, "CLOSE"),
];

/// A completion copied out of the CQ.
#[derive(Clone, Copy, Debug)]
pub struct Cqe {
    pub ud: UserData,
    pub res: i32,
    pub flags: u32,
}

impl Cqe {
    /// A multishot op stays armed after this completion.
    pub fn more(&self) -> bool {
        cqueue::more(self.flags)
    }

    /// The provided buffer this completion filled, if any.
    pub fn buf_id(&self) -> Option<u16> {
        cqueue::buffer_select(self.flags)
    }
}

/// Where the bytes of a send live.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Src {
    /// A buffer of the provided-buffer ring, filled by a recv.
    Pool(u16),
    /// Bytes in the heap store (request heads, error pages, frames we build).
    Heap(u32),
}

/// A byte range to send: `len` bytes from offset `off` of `src`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Chunk {
    pub src: Src,
    pub off: u32,
    pub len: u32,
}

/// Setup flags the ring ended up with (reported at startup).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum TaskrunMode {
    /// `SINGLE_ISSUER | DEFER_TASKRUN`: completions run only when this thread waits.
    Defer,
    /// `COOP_TASKRUN`.
    Coop,
    /// No taskrun flags (old kernel).
    Plain,
}

/// One thread's io_uring with its buffer ring and heap store.
pub struct Ring {
    uring: IoUring,
    backlog: VecDeque<squeue::Entry>,
    inflight: u64,
    mode: TaskrunMode,
    /// The provided-buffer ring registered with this io_uring.
    pub pool: BufPool,
    /// Heap bytes and addresses named by SQEs.
    pub heap: HeapStore,
    /// Empty pipes kept for the next splice (a tunnel's bulk frames).
    pub pipes: pipe::Pipes,
    /// The kernel ends a multishot recv after a byte limit (`sqe->optlen`, Linux 6.17+).
    recv_cap: bool,
    /// The kernel runs a socket's setsockopt as an `IORING_OP_URING_CMD` (Linux 6.7+).
    sockopt_cmd: bool,
    /// Heap ids of the addresses of connects in flight, by their `user_data`.
    connecting: std::collections::HashMap<u64, u32>,
}

/// Byte offset of `optlen` in the kernel's `struct io_uring_sqe` (a union with `file_index`
/// and `splice_fd_in`), which the io-uring crate's `RecvMulti` does not expose.
const SQE_OPTLEN: usize = 44;

/// `SOCKET_URING_OP_SETSOCKOPT` (`linux/io_uring.h`): `IORING_OP_URING_CMD`'s setsockopt.
const SOCKET_URING_OP_SETSOCKOPT: u32 = 3;

/// The value `TCP_NODELAY` is set to through the ring: a static, since the kernel reads it
/// when it runs the op.
static ONE: libc::c_int = 1;

/// An SQE that sets `TCP_NODELAY` on `fd`: the level and the option's name in `sqe->addr`'s
/// two halves, a pointer to the value in `sqe->optval` (the first bytes of the command area),
/// its length in `sqe->optlen`.
fn nodelay_sqe(fd: RawFd, ud: UserData) -> squeue::Entry {
    let level_name =
        u64::from(libc::IPPROTO_TCP as u32) | (u64::from(libc::TCP_NODELAY as u32) << 32);
    let mut cmd = [0u8; 16];
    cmd[..8].copy_from_slice(&(std::ptr::addr_of!(ONE) as u64).to_ne_bytes());
    let e = opcode::UringCmd16::new(Fd(fd), SOCKET_URING_OP_SETSOCKOPT)
        .addr(Some(level_name))
        .cmd(cmd)
        .build()
        .user_data(ud.0);
    with_optlen(e, std::mem::size_of::<libc::c_int>() as u32)
}

/// `e` with `sqe->optlen` set.
fn with_optlen(e: squeue::Entry, optlen: u32) -> squeue::Entry {
    const _: () = assert!(std::mem::size_of::<squeue::Entry>() == 64);
    // SAFETY: `squeue::Entry` is `#[repr(C)]` around the kernel's 64-byte `io_uring_sqe` (size
    // asserted above), plain data made of integers and unions of integers with no Drop: every
    // byte pattern is a valid value, so viewing it as bytes and back is sound.
    let mut raw: [u8; 64] = unsafe { std::mem::transmute(e) };
    raw[SQE_OPTLEN..SQE_OPTLEN + 4].copy_from_slice(&optlen.to_ne_bytes());
    // SAFETY: as above; only the four bytes of `optlen` changed.
    unsafe { std::mem::transmute::<[u8; 64], squeue::Entry>(raw) }
}

/// Sizes of a ring.
#[derive(Clone, Copy, Debug)]
pub struct RingConfig {
    pub sq_entries: u32,
    pub buffers: u16,
    pub buf_size: u32,
}

impl Ring {
    /// Set up a ring, trying `SINGLE_ISSUER | DEFER_TASKRUN`, then `COOP_TASKRUN`, then plain;
    /// register the buffer ring and fill it.
    pub fn new(cfg: RingConfig) -> io::Result<Ring> {
        let cq = cfg.sq_entries * 8;
        let build = |mode: TaskrunMode| {
            let mut b = IoUring::builder();
            b.setup_cqsize(cq).setup_submit_all();
            match mode {
                TaskrunMode::Defer => {
                    b.setup_single_issuer().setup_defer_taskrun();
                }
                TaskrunMode::Coop => {
                    b.setup_coop_taskrun();
                }
                TaskrunMode::Plain => {}
            }
            b.build(cfg.sq_entries).map(|u| (u, mode))
        };
        let (uring, mode) = build(TaskrunMode::Defer)
            .or_else(|_| build(TaskrunMode::Coop))
            .or_else(|_| build(TaskrunMode::Plain))?;
        let mut pool = BufPool::new(cfg.buffers, cfg.buf_size)?;
        // SAFETY: the ring memory is a page-aligned mapping of `buffers` entries owned by `pool`,
        // which lives in the same `Ring` and is dropped only after `Ring::drop` has drained the
        // io_uring (and the io_uring fd is closed before the pool's fields drop).
        unsafe {
            uring.submitter().register_buf_ring_with_flags(
                pool.ring.as_ptr() as u64,
                cfg.buffers,
                BGID,
                0,
            )?;
        }
        pool.grow_if_low();
        let mut ring = Ring {
            uring,
            backlog: VecDeque::new(),
            inflight: 0,
            mode,
            pool,
            heap: HeapStore::default(),
            pipes: pipe::Pipes::default(),
            recv_cap: false,
            sockopt_cmd: false,
            connecting: std::collections::HashMap::new(),
        };
        ring.recv_cap = ring.probe_recv_cap();
        ring.sockopt_cmd = ring.probe_sockopt_cmd();
        Ok(ring)
    }

    /// Whether this kernel ends a multishot recv at a byte limit. Older kernels ignore
    /// `sqe->optlen` and keep the recv armed, which is what this looks for: one byte waits on a
    /// socketpair, a recv capped at one byte reads it, and its completion must say it ended.
    fn probe_recv_cap(&mut self) -> bool {
        use std::os::fd::AsRawFd;
        let Ok((a, b)) = std::os::unix::net::UnixStream::pair() else {
            return false;
        };
        if (&b).write_all(b"x").is_err() {
            return false;
        }
        let ud = UserData::new(SLOT_CORE, 0, Op::Recv, ConnId::CLIENT);
        let e = opcode::RecvMulti::new(Fd(a.as_raw_fd()), BGID)
            .build()
            .user_data(ud.0);
        self.push(with_optlen(e, 1));
        let mut first = None;
        self.await_op(ud, |c| {
            first = Some(*c);
            true
        });
        let capped = first.is_some_and(|c| c.res == 1 && !c.more());
        if first.is_none_or(|c| c.more()) {
            // Still armed (the cap was ignored): cancel it and wait for its last completion
            // before the socket closes.
            let cancel = UserData::new(SLOT_CORE, 0, Op::Cancel, ConnId::CLIENT);
            self.cancel_op(ud, cancel);
            self.await_op(ud, |c| !c.more());
        }
        capped
    }

    /// Submit and reap (for up to about 5 s) until a completion of `ud` makes `done` say so;
    /// every buffer a completion carries goes back to the pool. For probes, before the ring
    /// serves anything else.
    fn await_op(&mut self, ud: UserData, mut done: impl FnMut(&Cqe) -> bool) -> bool {
        let mut cqes = Vec::with_capacity(8);
        for _ in 0..50 {
            if self.submit_and_wait(Duration::from_millis(100)).is_err() {
                return false;
            }
            self.reap(&mut cqes);
            let mut finished = false;
            for c in &cqes {
                self.pool.release_of(c);
                finished |= c.ud == ud && done(c);
            }
            if finished {
                return true;
            }
        }
        false
    }

    /// Whether this kernel sets a socket option through the ring: `TCP_NODELAY` set that way
    /// on a fresh socket must complete with 0 and read back as set.
    fn probe_sockopt_cmd(&mut self) -> bool {
        use std::os::fd::AsRawFd;
        let Ok(sock) = socket2::Socket::new(socket2::Domain::IPV4, socket2::Type::STREAM, None)
        else {
            return false;
        };
        let ud = UserData::new(SLOT_CORE, 0, Op::SockOpt, ConnId::CLIENT);
        self.push(nodelay_sqe(sock.as_raw_fd(), ud));
        let mut res = None;
        self.await_op(ud, |c| {
            res = Some(c.res);
            true
        });
        res == Some(0) && sock.tcp_nodelay().unwrap_or(false)
    }

    /// Whether [`Ring::set_nodelay`] can be used here (else a socket gets `TCP_NODELAY` by
    /// a syscall as it is made).
    pub fn sockopt_cmd(&self) -> bool {
        self.sockopt_cmd
    }

    /// Set `TCP_NODELAY` on a socket just made, through the ring (where [`Ring::sockopt_cmd`]):
    /// its completion, on `SLOT_CORE` (`Op::SockOpt`), says only whether it failed. It is set
    /// before anything is sent on the socket: SQEs run in the order submitted, and sends wait
    /// for the connect's completion.
    pub fn set_nodelay(&mut self, fd: RawFd) {
        let ud = UserData::new(SLOT_CORE, 0, Op::SockOpt, ConnId::CLIENT);
        self.push(nodelay_sqe(fd, ud));
    }

    /// Whether multishot recvs here stop at a byte cap ([`Ring::recv_capped`]).
    pub fn recv_cap(&self) -> bool {
        self.recv_cap
    }

    /// Arm a recv for about `buffers` pool buffers: where the kernel supports the cap, a
    /// multishot recv it ends after `buffers` × buffer-size bytes (exactly `buffers` buffers
    /// when data is plentiful, which is when a budget matters; a trickle can take a few more
    /// small ones before the owner sees them and cancels); a single recv (one buffer)
    /// otherwise. Either way its last completion comes without `IORING_CQE_F_MORE`.
    pub fn recv_capped(&mut self, fd: RawFd, ud: UserData, buffers: u32) {
        if buffers == UNCAPPED {
            return self.recv_multi(fd, ud);
        }
        if !self.recv_cap || buffers <= 1 {
            return self.recv_one(fd, ud);
        }
        let bytes = buffers.saturating_mul(self.pool.buf_size());
        let e = opcode::RecvMulti::new(Fd(fd), BGID).build().user_data(ud.0);
        self.push(with_optlen(e, bytes));
    }

    /// Which taskrun flags the kernel accepted.
    pub fn mode(&self) -> TaskrunMode {
        self.mode
    }

    /// Ops submitted whose last completion has not arrived.
    pub fn inflight(&self) -> u64 {
        self.inflight
    }

    /// SQEs waiting for room in the submission queue.
    pub fn backlog_len(&self) -> usize {
        self.backlog.len()
    }

    fn push(&mut self, e: squeue::Entry) {
        self.inflight += 1;
        if !self.backlog.is_empty() {
            self.backlog.push_back(e);
            return;
        }
        // SAFETY: every entry built in this module names only memory owned by `self.pool` or
        // `self.heap` and marked in-flight there (so not freed or reused before its CQE), or
        // no memory at all.
        if unsafe { self.uring.submission().push(&e) }.is_ok() {
            return;
        }
        // Full: hand what we have to the kernel and try once more before queueing.
        let _ = self.uring.submit();
        // SAFETY: as above.
        if unsafe { self.uring.submission().push(&e) }.is_err() {
            self.backlog.push_back(e);
        }
    }

    fn flush_backlog(&mut self) {
        while let Some(e) = self.backlog.front() {
            // SAFETY: entries in the backlog were built under the same rules as in `push`.
            if unsafe { self.uring.submission().push(e) }.is_err() {
                break;
            }
            self.backlog.pop_front();
        }
    }

    /// Submit everything and wait for at least one completion or `timeout`.
    pub fn submit_and_wait(&mut self, timeout: Duration) -> io::Result<()> {
        self.flush_backlog();
        let ts = Timespec::from(timeout);
        let args = SubmitArgs::new().timespec(&ts);
        match self.uring.submitter().submit_with_args(1, &args) {
            Ok(_) => Ok(()),
            Err(e) => match e.raw_os_error() {
                Some(libc::ETIME) | Some(libc::EINTR) | Some(libc::EBUSY) => Ok(()),
                _ => Err(e),
            },
        }
    }

    /// Submit without waiting.
    pub fn submit(&mut self) -> io::Result<()> {
        self.flush_backlog();
        match self.uring.submit() {
            Ok(_) => Ok(()),
            Err(e) if matches!(e.raw_os_error(), Some(libc::EINTR) | Some(libc::EBUSY)) => Ok(()),
            Err(e) => Err(e),
        }
    }

    /// Copy out up to `out.capacity()` completions. Buffer ids of recv completions are taken
    /// out of the pool here (the kernel is done with them).
    pub fn reap(&mut self, out: &mut Vec<Cqe>) {
        out.clear();
        let cap = out.capacity().max(1);
        let mut cq = self.uring.completion();
        cq.sync();
        for e in &mut cq {
            let c = Cqe {
                ud: UserData(e.user_data()),
                res: e.result(),
                flags: e.flags(),
            };
            if !c.more() {
                self.inflight = self.inflight.saturating_sub(1);
            }
            if let Some(bid) = c.buf_id() {
                self.pool.take(bid);
            }
            if c.ud.op() == Some(Op::Connect)
                && let Some(id) = self.connecting.remove(&c.ud.0)
            {
                // The kernel is done with the connect's address.
                self.heap.complete(id);
                self.heap.free(id);
            }
            out.push(c);
            if out.len() >= cap {
                break;
            }
        }
    }

    /// Arm a multishot accept on a listener.
    pub fn accept_multi(&mut self, fd: RawFd, ud: UserData) {
        let e = opcode::AcceptMulti::new(Fd(fd))
            .flags(libc::SOCK_CLOEXEC)
            .build()
            .user_data(ud.0);
        self.push(e);
    }

    /// Arm a single recv that draws one buffer from the pool when data arrives (an idle socket
    /// holds none). One completion, at most one buffer: what a per-session budget needs, which
    /// a multishot recv cannot give (the kernel may post dozens of buffers before the session
    /// sees the first and cancels).
    pub fn recv_one(&mut self, fd: RawFd, ud: UserData) {
        let e = opcode::Recv::new(Fd(fd), std::ptr::null_mut(), self.pool.buf_size())
            .buf_group(BGID)
            .build()
            .flags(squeue::Flags::BUFFER_SELECT)
            .user_data(ud.0);
        self.push(e);
    }

    /// Arm a one-shot poll that completes when the peer of `fd` hangs up (`POLLRDHUP`, or an
    /// error or full hang-up), without reading anything: how a socket that is not being read
    /// (its bytes are held back) still tells us its client has gone, as epoll's EPOLLRDHUP
    /// tells nginx.
    pub fn poll_hangup(&mut self, fd: RawFd, ud: UserData) {
        let e = opcode::PollAdd::new(Fd(fd), libc::POLLRDHUP as u32)
            .build()
            .user_data(ud.0);
        self.push(e);
    }

    /// Arm a one-shot poll that completes when `fd` is readable (an eventfd inbox, a socket
    /// a tunnel splices from).
    pub fn poll_in(&mut self, fd: RawFd, ud: UserData) {
        let e = opcode::PollAdd::new(Fd(fd), libc::POLLIN as u32)
            .build()
            .user_data(ud.0);
        self.push(e);
    }

    /// Arm a one-shot poll that completes when `fd` can be written (a socket a tunnel splices
    /// into, whose send buffer was full).
    pub fn poll_out(&mut self, fd: RawFd, ud: UserData) {
        let e = opcode::PollAdd::new(Fd(fd), libc::POLLOUT as u32)
            .build()
            .user_data(ud.0);
        self.push(e);
    }

    /// Arm a multishot recv drawing buffers from the pool.
    pub fn recv_multi(&mut self, fd: RawFd, ud: UserData) {
        let e = opcode::RecvMulti::new(Fd(fd), BGID).build().user_data(ud.0);
        self.push(e);
    }

    /// Send `chunk`. The source stays marked in flight until [`Ring::send_done`].
    pub fn send(&mut self, fd: RawFd, chunk: Chunk, ud: UserData) {
        let ptr = match chunk.src {
            Src::Pool(bid) => {
                let i = usize::from(bid);
                assert_eq!(
                    self.pool.state[i],
                    BufState::Held,
                    "send of buffer {bid} not held"
                );
                assert!(chunk.off + chunk.len <= self.pool.buf_size);
                self.pool.state[i] = BufState::Sending;
                // SAFETY: in bounds of the data mapping (checked above); the buffer is now
                // Sending, so it cannot be released to the kernel until send_done.
                unsafe {
                    self.pool
                        .data
                        .as_ptr()
                        .add(i * self.pool.buf_size as usize + chunk.off as usize)
                }
            }
            Src::Heap(id) => {
                let e = &mut self.heap.entries[id as usize];
                e.in_kernel += 1;
                match &e.data {
                    HeapData::Bytes(b) => {
                        assert!((chunk.off + chunk.len) as usize <= b.len());
                        // SAFETY: in bounds (checked); the Vec is neither freed nor resized
                        // while in_kernel is non-zero (asserted in free/take).
                        unsafe { b.as_ptr().add(chunk.off as usize) }
                    }
                    HeapData::Addr(_) => panic!("send of an address entry"),
                }
            }
        };
        let e = opcode::Send::new(Fd(fd), ptr, chunk.len)
            .flags(libc::MSG_NOSIGNAL)
            .build()
            .user_data(ud.0);
        self.push(e);
    }

    /// The send of `chunk` completed: its source may be released or freed again.
    pub fn send_done(&mut self, chunk: Chunk) {
        match chunk.src {
            Src::Pool(bid) => {
                let i = usize::from(bid);
                assert_eq!(
                    self.pool.state[i],
                    BufState::Sending,
                    "send_done of buffer {bid}"
                );
                self.pool.state[i] = BufState::Held;
            }
            Src::Heap(id) => self.heap.complete(id),
        }
    }

    /// Start a connect of `fd` to `addr`. Returns the heap id holding the address, to be passed
    /// to [`Ring::connect_done`] when the completion arrives.
    pub fn connect(&mut self, fd: RawFd, addr: SocketAddr, ud: UserData) {
        let sa = socket2::SockAddr::from(addr);
        let id = self.heap.entries.insert(HeapEntry {
            data: HeapData::Addr(Box::new(sa)),
            in_kernel: 1,
            shared: false,
        }) as u32;
        let (ptr, len) = match &self.heap.entries[id as usize].data {
            HeapData::Addr(sa) => (sa.as_ptr(), sa.len()),
            HeapData::Bytes(_) => unreachable!("entry inserted as an address"),
        };
        let e = opcode::Connect::new(Fd(fd), ptr.cast(), len)
            .build()
            .user_data(ud.0);
        self.push(e);
        // Freed when the connect's completion is reaped.
        self.connecting.insert(ud.0, id);
    }

    /// Close `fd`, which has no op in flight, through the ring: its completion (on
    /// `SLOT_CORE`, `Op::Close`) says only whether it failed. One SQE in the turn's batch
    /// instead of a `close(2)` of its own (two per proxied handshake). The fd number stays
    /// taken until the kernel has run it, so no socket made meanwhile can get it.
    pub fn close(&mut self, fd: RawFd) {
        let ud = UserData::new(SLOT_CORE, 0, Op::Close, ConnId::CLIENT);
        self.push(opcode::Close::new(Fd(fd)).build().user_data(ud.0));
    }

    /// Cancel the op(s) submitted with `target`.
    ///
    /// Always by `user_data`, never by fd: the kernel finds a `user_data` in its hash of pending
    /// polls, but a cancel by fd scans every pending request of the ring. Closing N connections
    /// by fd is then O(N²): at 500k connections (several processes of ~9k) closing stalled
    /// for minutes; by `user_data` it is immediate.
    pub fn cancel_op(&mut self, target: UserData, ud: UserData) {
        let e = opcode::AsyncCancel2::new(CancelBuilder::user_data(target.0).all())
            .build()
            .user_data(ud.0);
        self.push(e);
    }
}

impl Drop for Ring {
    fn drop(&mut self) {
        // Cancel and drain whatever is in flight so no buffer the kernel may still write is
        // unmapped under it (tokio-uring's Driver drop does the same).
        if self.inflight == 0 {
            return;
        }
        let e = opcode::AsyncCancel2::new(CancelBuilder::any())
            .build()
            .user_data(u64::MAX);
        self.push(e);
        let mut out = Vec::with_capacity(256);
        let deadline = std::time::Instant::now() + Duration::from_secs(2);
        while self.inflight > 0 && std::time::Instant::now() < deadline {
            if self.submit_and_wait(Duration::from_millis(50)).is_err() {
                break;
            }
            self.reap(&mut out);
            for c in &out {
                if let Some(bid) = c.buf_id() {
                    self.pool.state[usize::from(bid)] = BufState::Held;
                }
            }
        }
        if self.inflight > 0 {
            // Something never completed: leak the buffer memory rather than free it under
            // the kernel. Closing the io_uring fd afterwards tears the rest down.
            let pool = std::mem::replace(&mut self.pool, BufPool::empty());
            std::mem::forget(pool);
            let heap = std::mem::take(&mut self.heap);
            std::mem::forget(heap);
        }
    }
}

/// Take ownership of an fd returned by an accept completion.
pub fn socket_from_accepted(fd: RawFd) -> socket2::Socket {
    use std::os::fd::FromRawFd;
    // SAFETY: `fd` is the result of an accept CQE: a fresh descriptor that nothing else owns.
    // The Socket closes it on drop unless the caller takes it back with into_raw_fd.
    unsafe { socket2::Socket::from_raw_fd(fd) }
}

/// Take ownership of a descriptor this process was handed: listening sockets received over a
/// Unix socket (SCM_RIGHTS, a binary upgrade) or inherited from systemd (`LISTEN_FDS`), or a
/// session's socket handed over and refused (its session gave it up when it was exported).
pub fn socket_from_handed(fd: RawFd) -> socket2::Socket {
    use std::os::fd::FromRawFd;
    // SAFETY: the kernel installed `fd` in this process for us (SCM_RIGHTS gives fresh
    // descriptors; systemd's LISTEN_FDS are ours by contract, checked against LISTEN_PID), or
    // an exported session let go of it (`Handed` owns its descriptors until they are closed
    // or given up here), and nothing else in the process owns it; the Socket closes it on
    // drop.
    unsafe { socket2::Socket::from_raw_fd(fd) }
}

#[cfg(test)]
mod tests;

/// A descriptor its owner (a session's connection, a worker's pipe) keeps open for as long
/// as the call it is lent to runs.
fn lent(fd: RawFd) -> std::os::fd::BorrowedFd<'static> {
    // SAFETY: only called with a descriptor its owner holds open across the one syscall the
    // borrow is used for (`splice`, `set_nonblocking` below): a session's socket is closed
    // only once it is retired with nothing in flight, and a pipe only when it is dropped.
    unsafe { std::os::fd::BorrowedFd::borrow_raw(fd) }
}

/// splice(2) up to `len` bytes from `from` to `to` (one of them a pipe), without waiting:
/// how many moved, or the errno.
pub fn splice(from: RawFd, to: RawFd, len: u32) -> Result<u32, i32> {
    use nix::fcntl::SpliceFFlags;
    nix::fcntl::splice(
        lent(from),
        None,
        lent(to),
        None,
        len as usize,
        SpliceFFlags::SPLICE_F_MOVE | SpliceFFlags::SPLICE_F_NONBLOCK,
    )
    .map(|n| n as u32)
    .map_err(|e| e as i32)
}

/// Make `fd` non-blocking (`O_NONBLOCK`): whether it worked.
pub fn set_nonblocking(fd: RawFd) -> bool {
    use nix::fcntl::{FcntlArg, OFlag, fcntl};
    fcntl(lent(fd), FcntlArg::F_GETFL)
        .and_then(|f| {
            let flags = OFlag::from_bits_truncate(f) | OFlag::O_NONBLOCK;
            fcntl(lent(fd), FcntlArg::F_SETFL(flags))
        })
        .is_ok()
}

//! The io_uring room: ring setup, submission with a bounded backlog, the provided-buffer ring,
//! the store of heap bytes the kernel reads from, `user_data` and the timer wheel.
//!
//! This is the only module that turns buffer ids into pointers and pushes SQEs. Everything the
//! kernel may read or write is owned here and tracked: a buffer named by an SQE is never freed or
//! handed back to the kernel before that SQE's completion has been reaped (asserted).

pub mod slots;
pub mod timer;
pub mod user_data;

use std::collections::VecDeque;
use std::io::{self, Write};
use std::net::SocketAddr;
use std::os::fd::RawFd;
use std::ptr::NonNull;
use std::sync::atomic::{AtomicU16, Ordering};
use std::time::Duration;

use io_uring::types::{BufRingEntry, CancelBuilder, Fd, SubmitArgs, Timespec};
use io_uring::{IoUring, cqueue, opcode, squeue};
use slab::Slab;

pub use user_data::{GENERATION_MAX, Op, SLOT_CORE, Side, UserData, next_generation};

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

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum BufState {
    /// Offered to the kernel in the buffer ring; it may write it at any time.
    InRing,
    /// Handed to us by a recv completion; ours to read.
    Held,
    /// Named by a send in flight; the kernel reads it until the send completes.
    Sending,
}

/// The provided-buffer ring (`IORING_REGISTER_PBUF_RING`): fixed memory allocated once, buffers
/// lent to the kernel and returned by recv completions. An idle connection holds none.
pub struct BufPool {
    ring: NonNull<BufRingEntry>,
    ring_bytes: usize,
    data: NonNull<u8>,
    data_bytes: usize,
    buf_size: u32,
    mask: u16,
    tail: u16,
    state: Vec<BufState>,
    in_ring: u32,
    /// Buffers handed to the kernel at least once; the rest of the mapping has never been
    /// touched and costs no memory. The kernel takes buffers round-robin from the ring, so
    /// every buffer in circulation gets touched: circulating only as many as the load needs
    /// keeps the resident set at the peak demand instead of the whole pool.
    provided: u32,
}

/// Buffers put in circulation at start and at each growth step.
const POOL_STEP: u32 = 64;
fn mmap_anon(bytes: usize) -> io::Result<NonNull<u8>> {
    // SAFETY: an anonymous private mapping of `bytes` bytes; no existing memory is touched and
    // the result is checked for MAP_FAILED before use.
    let p = unsafe {
        libc::mmap(
            std::ptr::null_mut(),
            bytes,
            libc::PROT_READ | libc::PROT_WRITE,
            libc::MAP_PRIVATE | libc::MAP_ANONYMOUS,
            -1,
            0,
        )
    };
    if p == libc::MAP_FAILED {
        return Err(io::Error::last_os_error());
    }
    NonNull::new(p.cast()).ok_or_else(|| io::Error::other("mmap returned null"))
}

impl BufPool {
    /// Allocate `count` buffers of `buf_size` bytes. `count` is a power of two, at most 32768.
    fn new(count: u16, buf_size: u32) -> io::Result<BufPool> {
        assert!(
            count.is_power_of_two() && count <= 32768,
            "buffer count {count}"
        );
        assert!(buf_size >= 512, "buffer size {buf_size}");
        let ring_bytes = usize::from(count) * std::mem::size_of::<BufRingEntry>();
        let data_bytes = usize::from(count) * buf_size as usize;
        let ring = mmap_anon(ring_bytes)?.cast::<BufRingEntry>();
        let data = match mmap_anon(data_bytes) {
            Ok(d) => d,
            Err(e) => {
                // SAFETY: `ring` was mapped just above with `ring_bytes` and is not registered.
                unsafe { libc::munmap(ring.as_ptr().cast(), ring_bytes) };
                return Err(e);
            }
        };
        Ok(BufPool {
            ring,
            ring_bytes,
            data,
            data_bytes,
            buf_size,
            mask: count - 1,
            tail: 0,
            state: vec![BufState::Held; usize::from(count)],
            in_ring: 0,
            provided: 0,
        })
    }

    /// Put more never-used buffers in circulation when few are left in the ring. Call once per
    /// event-loop turn; returns how many were added.
    pub fn grow_if_low(&mut self) -> u32 {
        if self.in_ring >= POOL_STEP / 2 || self.provided >= self.count() {
            return 0;
        }
        let n = POOL_STEP.min(self.count() - self.provided);
        for bid in self.provided..self.provided + n {
            self.release(bid as u16);
        }
        self.provided += n;
        n
    }

    /// Buffers in circulation (touched at least once).
    pub fn provided(&self) -> u32 {
        self.provided
    }

    /// Size of every buffer in bytes.
    pub fn buf_size(&self) -> u32 {
        self.buf_size
    }

    /// How many buffers the kernel can pick from right now.
    pub fn available(&self) -> u32 {
        self.in_ring
    }

    /// Buffers not held by anyone: in the ring, or never put in circulation yet.
    pub fn free(&self) -> u32 {
        self.in_ring + (self.count() - self.provided)
    }

    /// Number of buffers in the pool.
    pub fn count(&self) -> u32 {
        u32::from(self.mask) + 1
    }

    fn publish_tail(&self) {
        // SAFETY: `self.ring` is the first entry of a live, page-aligned mapping of `count`
        // entries; the tail field overlays the first entry's `resv` as the kernel ABI defines.
        let tail = unsafe { BufRingEntry::tail(self.ring.as_ptr()) } as *const AtomicU16;
        // SAFETY: the tail is a u16 inside our mapping, shared with the kernel, which only reads
        // it; a Release store publishes the entries written before it.
        unsafe { (*tail).store(self.tail, Ordering::Release) };
    }

    /// Give back the buffer a completion carries, if it carries one: for a completion whose
    /// data nobody will use (its connection is gone, or it ended the recv).
    pub fn release_of(&mut self, c: &Cqe) {
        if let Some(bid) = c.buf_id() {
            self.release(bid);
        }
    }

    /// Give buffer `bid` back to the kernel. It must be held by us and not named by a send.
    pub fn release(&mut self, bid: u16) {
        let i = usize::from(bid);
        assert_eq!(
            self.state[i],
            BufState::Held,
            "release of buffer {bid} in wrong state"
        );
        let slot = usize::from(self.tail & self.mask);
        // SAFETY: `slot` < count, inside the ring mapping. The kernel only reads entries between
        // its head and our published tail; this slot is past the tail until we publish below.
        let entry = unsafe { &mut *self.ring.as_ptr().add(slot) };
        // SAFETY: `i` < count, so the offset stays inside the data mapping.
        let addr = unsafe { self.data.as_ptr().add(i * self.buf_size as usize) };
        entry.set_addr(addr as u64);
        entry.set_len(self.buf_size);
        entry.set_bid(bid);
        self.tail = self.tail.wrapping_add(1);
        self.publish_tail();
        self.state[i] = BufState::InRing;
        self.in_ring += 1;
    }

    /// A recv completion handed us buffer `bid`.
    pub fn take(&mut self, bid: u16) {
        let i = usize::from(bid);
        assert_eq!(
            self.state[i],
            BufState::InRing,
            "kernel returned buffer {bid} twice"
        );
        self.state[i] = BufState::Held;
        self.in_ring -= 1;
    }

    /// The first `len` bytes of a held buffer.
    pub fn bytes(&self, bid: u16, len: u32) -> &[u8] {
        let i = usize::from(bid);
        assert!(
            self.state[i] != BufState::InRing,
            "read of buffer {bid} owned by kernel"
        );
        assert!(len <= self.buf_size);
        // SAFETY: the buffer is not in the ring, so the kernel does not write it; the range is
        // inside the data mapping (i < count, len <= buf_size).
        unsafe {
            std::slice::from_raw_parts(
                self.data.as_ptr().add(i * self.buf_size as usize),
                len as usize,
            )
        }
    }

    /// A mutable view of a held buffer that no send names (the echo unmasks in place).
    pub fn bytes_mut(&mut self, bid: u16, len: u32) -> &mut [u8] {
        let i = usize::from(bid);
        assert_eq!(
            self.state[i],
            BufState::Held,
            "write of buffer {bid} not held"
        );
        assert!(len <= self.buf_size);
        // SAFETY: held and not sending, so neither the kernel nor a pending send reads or writes
        // it; the range is inside the data mapping.
        unsafe {
            std::slice::from_raw_parts_mut(
                self.data.as_ptr().add(i * self.buf_size as usize),
                len as usize,
            )
        }
    }
}

impl Drop for BufPool {
    fn drop(&mut self) {
        // SAFETY: both mappings were created in `new` with these sizes. The ring that used them
        // was drained (Ring::drop) or never created, so the kernel no longer references them.
        unsafe {
            libc::munmap(self.ring.as_ptr().cast(), self.ring_bytes);
            libc::munmap(self.data.as_ptr().cast(), self.data_bytes);
        }
    }
}

enum HeapData {
    /// The bytes live in the Vec's own allocation, which stays put when the slab grows.
    Bytes(Vec<u8>),
    /// Boxed for the same reason: the kernel may read the address after the slab has moved.
    Addr(Box<socket2::SockAddr>),
}

struct HeapEntry {
    data: HeapData,
    /// Ops in flight naming this entry. Several sends may read the same bytes at once (a
    /// frame every connection of the load generator sends); nothing may free it meanwhile.
    in_kernel: u32,
}

/// Bytes and socket addresses that an SQE points at, owned here until their completion.
#[derive(Default)]
pub struct HeapStore {
    entries: Slab<HeapEntry>,
    /// Emptied allocations of freed entries, handed out again by `scratch`, so building a
    /// response head or an error page does not allocate per message.
    spare: Vec<Vec<u8>>,
}

/// Allocations kept for reuse, and the largest one kept.
const SPARE_MAX: usize = 16;
const SPARE_CAPACITY_MAX: usize = 4 * 1024;

impl HeapStore {
    /// Store bytes to be sent; returns their id.
    pub fn put(&mut self, bytes: Vec<u8>) -> u32 {
        self.entries.insert(HeapEntry {
            data: HeapData::Bytes(bytes),
            in_kernel: 0,
        }) as u32
    }

    /// Length of stored bytes.
    pub fn len(&self, id: u32) -> usize {
        match &self.entries[id as usize].data {
            HeapData::Bytes(b) => b.len(),
            HeapData::Addr(_) => 0,
        }
    }

    /// Read stored bytes.
    pub fn bytes(&self, id: u32) -> &[u8] {
        match &self.entries[id as usize].data {
            HeapData::Bytes(b) => b,
            HeapData::Addr(_) => &[],
        }
    }

    /// The op naming entry `id` has completed.
    pub fn complete(&mut self, id: u32) {
        let e = &mut self.entries[id as usize];
        assert!(
            e.in_kernel > 0,
            "completion for heap entry {id} not in flight"
        );
        e.in_kernel -= 1;
    }

    /// Free entry `id`; it must not be named by an op in flight. Its allocation is kept for
    /// `scratch` when it is not too large.
    pub fn free(&mut self, id: u32) {
        let v = self.take(id);
        self.recycle(v);
    }

    /// An empty Vec to build bytes in, from a freed entry when there is one.
    pub fn scratch(&mut self) -> Vec<u8> {
        self.spare.pop().unwrap_or_default()
    }

    /// Keep `v`'s allocation for `scratch`.
    pub fn recycle(&mut self, mut v: Vec<u8>) {
        if self.spare.len() < SPARE_MAX && v.capacity() > 0 && v.capacity() <= SPARE_CAPACITY_MAX {
            v.clear();
            self.spare.push(v);
        }
    }

    /// Take the bytes back out (for reuse), freeing the id.
    pub fn take(&mut self, id: u32) -> Vec<u8> {
        assert!(
            self.entries[id as usize].in_kernel == 0,
            "take of heap entry {id} in flight"
        );
        match self.entries.remove(id as usize).data {
            HeapData::Bytes(b) => b,
            HeapData::Addr(_) => Vec::new(),
        }
    }

    /// Entries alive (for tests and leak checks).
    pub fn live(&self) -> usize {
        self.entries.len()
    }
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
    /// The kernel ends a multishot recv after a byte limit (`sqe->optlen`, Linux 6.17+).
    recv_cap: bool,
}

/// Byte offset of `optlen` in the kernel's `struct io_uring_sqe` (a union with `file_index`
/// and `splice_fd_in`), which the io-uring crate's `RecvMulti` does not expose.
const SQE_OPTLEN: usize = 44;

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
            recv_cap: false,
        };
        ring.recv_cap = ring.probe_recv_cap();
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
        let ud = UserData::new(SLOT_CORE, 0, Op::Recv, Side::Down);
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
            let cancel = UserData::new(SLOT_CORE, 0, Op::Cancel, Side::Down);
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

    /// Arm a one-shot poll that completes when `fd` is readable (an eventfd inbox).
    pub fn poll_in(&mut self, fd: RawFd, ud: UserData) {
        let e = opcode::PollAdd::new(Fd(fd), libc::POLLIN as u32)
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
    pub fn connect(&mut self, fd: RawFd, addr: SocketAddr, ud: UserData) -> u32 {
        let sa = socket2::SockAddr::from(addr);
        let id = self.heap.entries.insert(HeapEntry {
            data: HeapData::Addr(Box::new(sa)),
            in_kernel: 1,
        }) as u32;
        let (ptr, len) = match &self.heap.entries[id as usize].data {
            HeapData::Addr(sa) => (sa.as_ptr(), sa.len()),
            HeapData::Bytes(_) => unreachable!("entry inserted as an address"),
        };
        let e = opcode::Connect::new(Fd(fd), ptr.cast(), len)
            .build()
            .user_data(ud.0);
        self.push(e);
        id
    }

    /// The connect naming address `id` completed; frees the address.
    pub fn connect_done(&mut self, id: u32) {
        self.heap.complete(id);
        self.heap.free(id);
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

impl BufPool {
    /// A pool that owns nothing (used to move a live pool out for leaking).
    fn empty() -> BufPool {
        BufPool {
            ring: NonNull::dangling(),
            ring_bytes: 0,
            data: NonNull::dangling(),
            data_bytes: 0,
            buf_size: 0,
            mask: 0,
            tail: 0,
            state: Vec::new(),
            in_ring: 0,
            provided: 0,
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

/// Why io_uring cannot be used here, in one line, or `Ok` with the setup mode.
///
/// The probe rings live on a short-lived thread of their own. A thread that has used a ring
/// keeps io_uring task state; when the ring is torn down (asynchronously, after close) the
/// kernel's exit work sends that thread task work with TWA_SIGNAL, and a blocking socket call
/// with a timeout (SO_RCVTIMEO) in progress on it then fails with EINTR. Measured: a thread
/// that probed, then sat in timed reads, saw ~1 EINTR per probe. A thread that exits drops its
/// task state, so the caller's thread stays clean.
pub fn probe() -> Result<TaskrunMode, String> {
    std::thread::scope(|s| {
        s.spawn(probe_here)
            .join()
            .unwrap_or_else(|_| Err("the io_uring probe thread panicked".into()))
    })
}

fn probe_here() -> Result<TaskrunMode, String> {
    if let Ok(v) = std::fs::read_to_string("/proc/sys/kernel/io_uring_disabled") {
        match v.trim() {
            "2" => {
                return Err("io_uring is disabled: kernel.io_uring_disabled = 2; \
                            set it to 0 (sysctl -w kernel.io_uring_disabled=0)"
                    .into());
            }
            "1" => {
                // Allowed only for a group; setup below tells whether we are in it.
            }
            _ => {}
        }
    }
    let ring = match IoUring::new(8) {
        Ok(r) => r,
        Err(e) => {
            let why = match e.raw_os_error() {
                Some(libc::ENOSYS) => {
                    "the kernel has no io_uring (ENOSYS): needs Linux 6.1 or later"
                }
                Some(libc::EPERM) => {
                    "io_uring_setup is not permitted (EPERM): kernel.io_uring_disabled = 1 \
                     without the io_uring_group, or a seccomp profile (container runtime) \
                     blocks it; allow io_uring_setup/io_uring_enter/io_uring_register"
                }
                _ => "io_uring_setup failed",
            };
            return Err(format!("{why} ({e})"));
        }
    };
    let mut probe = io_uring::Probe::new();
    if let Err(e) = ring.submitter().register_probe(&mut probe) {
        return Err(format!(
            "io_uring opcode probe failed ({e}): needs Linux 6.1 or later"
        ));
    }
    let missing: Vec<&str> = OPCODES_USED
        .iter()
        .filter(|(c, _)| !probe.is_supported(*c))
        .map(|(_, n)| *n)
        .collect();
    if !missing.is_empty() {
        return Err(format!(
            "the kernel's io_uring lacks opcodes {}: needs Linux 6.1 or later",
            missing.join(", ")
        ));
    }
    drop(ring);
    let r = Ring::new(RingConfig {
        sq_entries: 8,
        buffers: 8,
        buf_size: 4096,
    })
    .map_err(|e| format!("io_uring buffer ring registration failed ({e}): needs Linux 5.19+"))?;
    Ok(r.mode())
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::{Read, Write};
    use std::os::fd::AsRawFd;

    fn ring() -> Option<Ring> {
        match probe() {
            Ok(_) => Some(
                Ring::new(RingConfig {
                    sq_entries: 64,
                    buffers: 16,
                    buf_size: 4096,
                })
                .unwrap(),
            ),
            Err(e) => {
                eprintln!("skipping: {e}");
                None
            }
        }
    }

    /// A capped recv with plenty of data waiting brings exactly its buffers and ends (on a
    /// kernel with the cap; a single recv brings one otherwise). What the budget rests on.
    #[test]
    fn capped_recv_brings_exactly_its_buffers() {
        let Some(mut r) = ring() else { return };
        eprintln!("multishot recv byte cap supported: {}", r.recv_cap());
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let mut c = std::net::TcpStream::connect(l.local_addr().unwrap()).unwrap();
        let (s, _) = l.accept().unwrap();
        c.write_all(&[7u8; 60_000]).unwrap();
        std::thread::sleep(Duration::from_millis(50));
        let ud = UserData::new(9, 1, Op::Recv, Side::Up);
        r.recv_capped(s.as_raw_fd(), ud, 3);
        let want = if r.recv_cap() { 3 } else { 1 };
        let mut out = Vec::with_capacity(16);
        let mut got = Vec::new();
        for _ in 0..50 {
            r.submit_and_wait(Duration::from_millis(50)).unwrap();
            r.reap(&mut out);
            got.extend(out.iter().copied());
            if got.iter().any(|c| !c.more()) {
                break;
            }
        }
        assert_eq!(got.len(), want, "{got:?}");
        assert!(got.iter().all(|c| c.res == 4096), "{got:?}");
        assert!(
            !got.last().unwrap().more(),
            "the last completion ends the recv"
        );
        for c in &got {
            r.pool.release_of(c);
        }
    }

    #[test]
    fn recv_into_pool_and_send_back() {
        let Some(mut r) = ring() else { return };
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let mut c = std::net::TcpStream::connect(l.local_addr().unwrap()).unwrap();
        let (s, _) = l.accept().unwrap();
        c.write_all(b"hello ring").unwrap();
        let ud = UserData::new(7, 3, Op::Recv, Side::Down);
        r.recv_multi(s.as_raw_fd(), ud);
        let mut out = Vec::with_capacity(16);
        let (bid, n) = loop {
            r.submit_and_wait(Duration::from_millis(100)).unwrap();
            r.reap(&mut out);
            if let Some(c) = out.first() {
                assert_eq!(c.ud, ud);
                break (c.buf_id().unwrap(), c.res as u32);
            }
        };
        assert_eq!(r.pool.bytes(bid, n), b"hello ring");
        assert_eq!(r.pool.available(), 15);
        assert_eq!(r.pool.provided(), 16);
        let chunk = Chunk {
            src: Src::Pool(bid),
            off: 6,
            len: n - 6,
        };
        let sud = UserData::new(7, 3, Op::Send, Side::Down);
        r.send(s.as_raw_fd(), chunk, sud);
        loop {
            r.submit_and_wait(Duration::from_millis(100)).unwrap();
            r.reap(&mut out);
            if let Some(c) = out.iter().find(|c| c.ud == sud) {
                assert_eq!(c.res, 4);
                break;
            }
        }
        r.send_done(chunk);
        r.pool.release(bid);
        assert_eq!(r.pool.available(), 16);
        let mut got = [0u8; 4];
        c.read_exact(&mut got).unwrap();
        assert_eq!(&got, b"ring");
        // The multishot recv is still armed: drop must cancel and drain it.
        assert_eq!(r.inflight(), 1);
        drop(r);
    }

    #[test]
    #[should_panic(expected = "wrong state")]
    fn double_release_is_caught() {
        let Some(mut r) = ring() else {
            panic!("wrong state (no io_uring)")
        };
        r.pool.release(0);
    }

    /// A timed blocking read on the thread that called `probe` is not interrupted (EINTR) by
    /// the probe rings' teardown. Fails without the probe's own thread (~1 EINTR per probe).
    #[test]
    fn probe_leaves_the_callers_timed_reads_alone() {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let mut c = std::net::TcpStream::connect(l.local_addr().unwrap()).unwrap();
        c.set_read_timeout(Some(Duration::from_millis(100)))
            .unwrap();
        let mut interrupted = 0;
        for _ in 0..5 {
            if probe().is_err() {
                return;
            }
            let t = std::time::Instant::now();
            while t.elapsed() < Duration::from_millis(150) {
                if let Err(e) = c.read(&mut [0u8; 8])
                    && e.kind() == std::io::ErrorKind::Interrupted
                {
                    interrupted += 1;
                }
            }
        }
        assert_eq!(interrupted, 0, "timed reads interrupted after probe()");
    }
}

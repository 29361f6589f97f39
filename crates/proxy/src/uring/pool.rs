//! The provided-buffer ring (the memory recvs land in) and the heap store (bytes and
//! addresses that SQEs point at), each owned here until the kernel is done with it.

use std::io;
use std::ptr::NonNull;
use std::sync::atomic::{AtomicU16, Ordering};

use io_uring::types::BufRingEntry;
use slab::Slab;

use super::Cqe;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) enum BufState {
    /// Offered to the kernel in the buffer ring; it may write it at any time.
    InRing,
    /// Handed to us by a recv completion; ours to read.
    Held,
    /// Named by a send in flight; the kernel reads it until the send completes.
    Sending,
    /// Kept out of circulation after a burst (`BufPool::settle`): nobody reads or writes it,
    /// and its pages are given back to the system.
    Parked,
}

/// The provided-buffer ring (`IORING_REGISTER_PBUF_RING`): fixed memory allocated once, buffers
/// lent to the kernel and returned by recv completions. An idle connection holds none.
pub struct BufPool {
    pub(super) ring: NonNull<BufRingEntry>,
    pub(super) ring_bytes: usize,
    pub(super) data: NonNull<u8>,
    pub(super) data_bytes: usize,
    pub(super) buf_size: u32,
    pub(super) mask: u16,
    pub(super) tail: u16,
    pub(super) state: Vec<BufState>,
    pub(super) in_ring: u32,
    /// Buffers handed to the kernel at least once; the rest of the mapping has never been
    /// touched and costs no memory. The kernel takes buffers round-robin from the ring, so
    /// every buffer in circulation gets touched: circulating only as many as the load needs
    /// keeps the resident set at the peak demand instead of the whole pool.
    pub(super) provided: u32,
    /// Buffers taken out of circulation once a burst has passed, last parked last; the first
    /// `advised` have had their pages given back (`madvise(MADV_DONTNEED)`). Growth takes
    /// them back before it touches a fresh one.
    pub(super) parked: Vec<u16>,
    pub(super) advised: usize,
    /// Buffers still to keep out of the ring as they come back (`release`).
    pub(super) trim: u32,
    /// The fewest buffers the ring held since `since_ms`: what the load left unused.
    pub(super) low: u32,
    pub(super) since_ms: u64,
    /// Recvs that found the ring empty and waited for a buffer to come back (ever).
    pub(super) waits: u64,
}

/// The pool grows when fewer than this many buffers are left in the ring.
const GROW_BELOW: u32 = 32;
/// How long the ring must keep buffers unused before they leave circulation, and how many
/// stay in the ring unused even then: above the growth threshold, so a trim does not make the
/// next turn grow again.
const TRIM_WINDOW_MS: u64 = 500;
pub(super) const TRIM_KEEP: u32 = GROW_BELOW + 8;
/// A growth fills the ring up to this many (at start too), and no further: a load whose
/// bursts vary (heartbeats due together) then keeps at most 8 more in circulation than the
/// trim leaves. Growing by a fixed step of 64 overshot by up to 64: 67–120 buffers in
/// circulation for bursts of ~15, where 55–63 do (`docs/design-notes.md`).
pub(super) const GROW_TO: u32 = TRIM_KEEP + 8;
pub(super) fn mmap_anon(bytes: usize) -> io::Result<NonNull<u8>> {
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
    pub(super) fn new(count: u16, buf_size: u32) -> io::Result<BufPool> {
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
            parked: Vec::new(),
            advised: 0,
            trim: 0,
            low: 0,
            since_ms: 0,
            waits: 0,
        })
    }

    /// Put more buffers in circulation when few are left in the ring: parked ones first, then
    /// never-used ones. Call once per event-loop turn; returns how many were added.
    pub fn grow_if_low(&mut self) -> u32 {
        if self.in_ring >= GROW_BELOW {
            return 0;
        }
        // The load came back: nothing more leaves circulation.
        self.trim = 0;
        let mut n = 0;
        while self.in_ring < GROW_TO {
            let bid = match self.parked.pop() {
                Some(bid) => bid,
                None if self.provided < self.count() => {
                    self.provided += 1;
                    (self.provided - 1) as u16
                }
                None => break,
            };
            self.state[usize::from(bid)] = BufState::Held;
            self.offer(bid);
            n += 1;
        }
        self.advised = self.advised.min(self.parked.len());
        n
    }

    /// Once per timer tick: when the ring kept more than `TRIM_KEEP` buffers unused for a
    /// whole window, that many more than the load needs leave circulation as they come back,
    /// and the pages of those that left are given back. The kernel takes buffers round-robin,
    /// so every buffer in circulation stays resident; without this, a burst's peak would stay
    /// the pool's resident set for good.
    pub fn settle(&mut self, now_ms: u64) {
        if now_ms < self.since_ms + TRIM_WINDOW_MS {
            return;
        }
        self.trim = self.low.saturating_sub(TRIM_KEEP);
        self.low = self.in_ring;
        self.since_ms = now_ms;
        self.give_back_parked();
    }

    /// Give the pages of newly parked buffers back to the system (a run of neighbours at once).
    fn give_back_parked(&mut self) {
        let fresh = &mut self.parked[self.advised..];
        fresh.sort_unstable();
        let size = self.buf_size as usize;
        let mut i = 0;
        while i < fresh.len() {
            let mut j = i + 1;
            while j < fresh.len() && fresh[j] == fresh[j - 1] + 1 {
                j += 1;
            }
            // SAFETY: buffers fresh[i..j] are parked: out of the ring, named by no recv or send
            // in flight, read by nobody; the range lies inside the data mapping. Their pages
            // read back as zeros when a buffer is used again, and nothing depends on what they
            // held.
            unsafe {
                libc::madvise(
                    self.data.as_ptr().add(usize::from(fresh[i]) * size).cast(),
                    (j - i) * size,
                    libc::MADV_DONTNEED,
                );
            }
            i = j;
        }
        self.advised = self.parked.len();
    }

    /// Buffers touched at least once.
    pub fn provided(&self) -> u32 {
        self.provided
    }

    /// Buffers in circulation: touched at least once and not parked.
    pub fn circulating(&self) -> u32 {
        self.provided - self.parked.len() as u32
    }

    /// A recv found the ring empty and waits for a buffer to come back.
    pub fn waited(&mut self) {
        self.waits += 1;
    }

    /// Recvs that found the ring empty and waited, since the pool was made.
    pub fn waits(&self) -> u64 {
        self.waits
    }

    /// Size of every buffer in bytes.
    pub fn buf_size(&self) -> u32 {
        self.buf_size
    }

    /// How many buffers the kernel can pick from right now.
    pub fn available(&self) -> u32 {
        self.in_ring
    }

    /// Buffers not held by anyone: in the ring, parked, or never put in circulation yet.
    pub fn free(&self) -> u32 {
        self.in_ring + self.parked.len() as u32 + (self.count() - self.provided)
    }

    /// Number of buffers in the pool.
    pub fn count(&self) -> u32 {
        u32::from(self.mask) + 1
    }

    pub(super) fn publish_tail(&self) {
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

    /// Give buffer `bid` back to the kernel, or park it while a trim is under way. It must be
    /// held by us and not named by a send.
    pub fn release(&mut self, bid: u16) {
        let i = usize::from(bid);
        assert_eq!(
            self.state[i],
            BufState::Held,
            "release of buffer {bid} in wrong state"
        );
        if self.trim > 0 {
            self.trim -= 1;
            self.state[i] = BufState::Parked;
            self.parked.push(bid);
            return;
        }
        self.offer(bid);
    }

    /// Put held buffer `bid` at the ring's tail.
    fn offer(&mut self, bid: u16) {
        let i = usize::from(bid);
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
        self.low = self.low.min(self.in_ring);
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

pub(super) enum HeapData {
    /// The bytes live in the Vec's own allocation, which stays put when the slab grows.
    Bytes(Vec<u8>),
    /// Boxed for the same reason: the kernel may read the address after the slab has moved.
    Addr(Box<socket2::SockAddr>),
}

pub(super) struct HeapEntry {
    pub(super) data: HeapData,
    /// Ops in flight naming this entry. Several sends may read the same bytes at once (a
    /// frame every connection of the load generator sends); nothing may free it meanwhile.
    pub(super) in_kernel: u32,
    /// Shared by many sends for the ring's whole life (`put_shared`): `free` leaves it.
    pub(super) shared: bool,
}

/// Bytes and socket addresses that an SQE points at, owned here until their completion.
pub struct HeapStore {
    pub(super) entries: Slab<HeapEntry>,
    /// Emptied allocations of freed entries, handed out again by `scratch`, so building a
    /// response head or an error page does not allocate per message.
    pub(super) spare: Vec<Vec<u8>>,
    /// How many allocations `spare` keeps, and the largest it keeps.
    pub(super) spare_max: usize,
    pub(super) spare_capacity_max: usize,
}

/// Allocations kept for reuse by default, and the largest one kept: enough for request and
/// response heads and error pages, little enough to stay out of the memory per connection.
const SPARE_MAX: usize = 16;
const SPARE_CAPACITY_MAX: usize = 4 * 1024;

impl Default for HeapStore {
    fn default() -> HeapStore {
        HeapStore {
            entries: Slab::new(),
            spare: Vec::new(),
            spare_max: SPARE_MAX,
            spare_capacity_max: SPARE_CAPACITY_MAX,
        }
    }
}

impl HeapStore {
    /// Store bytes to be sent; returns their id.
    pub fn put(&mut self, bytes: Vec<u8>) -> u32 {
        self.entries.insert(HeapEntry {
            data: HeapData::Bytes(bytes),
            in_kernel: 0,
            shared: false,
        }) as u32
    }

    /// Store bytes that many sends share for the ring's whole life (a frame every connection
    /// of the load generator sends): `free` leaves them.
    pub fn put_shared(&mut self, bytes: Vec<u8>) -> u32 {
        let id = self.put(bytes);
        self.entries[id as usize].shared = true;
        id
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
        if self.entries[id as usize].shared {
            return;
        }
        let v = self.take(id);
        self.recycle(v);
    }

    /// Keep up to `count` freed allocations of up to `capacity` bytes for reuse.
    pub fn keep_spares(&mut self, count: usize, capacity: usize) {
        self.spare_max = count;
        self.spare_capacity_max = capacity;
    }

    /// An empty Vec to build bytes in, from a freed entry when there is one.
    pub fn scratch(&mut self) -> Vec<u8> {
        self.spare.pop().unwrap_or_default()
    }

    /// Keep `v`'s allocation for `scratch`.
    pub fn recycle(&mut self, mut v: Vec<u8>) {
        if self.spare.len() < self.spare_max
            && v.capacity() > 0
            && v.capacity() <= self.spare_capacity_max
        {
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

impl BufPool {
    /// A pool that owns nothing (used to move a live pool out for leaking).
    pub(super) fn empty() -> BufPool {
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
            parked: Vec::new(),
            advised: 0,
            trim: 0,
            low: 0,
            since_ms: 0,
            waits: 0,
        }
    }
}

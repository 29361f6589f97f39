//! A global allocator that counts the heap bytes live right now, so memory is tested against
//! an exact figure (shown in `/status` as `heap_bytes`) instead of RSS, which moves in the
//! allocator's steps and with what the kernel decides to keep resident.
//!
//! It lives in the ring room because that is where ringway's `unsafe` is allowed (a
//! `GlobalAlloc` is an `unsafe impl`). It forwards every call to the system allocator
//! unchanged and adds the size to one of [`SHARDS`] counters, picked once per thread: each
//! thread adds to a cache line of its own, so the data path pays an uncontended atomic add
//! per allocation (and ringway's data path allocates nothing per message).

use std::alloc::{GlobalAlloc, Layout, System};
use std::cell::Cell;
use std::sync::atomic::{AtomicI64, AtomicUsize, Ordering};

/// Counters; threads past this many share them (still exact, only contended).
pub const SHARDS: usize = 64;

#[repr(align(128))]
struct Shard(AtomicI64);

static COUNTS: [Shard; SHARDS] = [const { Shard(AtomicI64::new(0)) }; SHARDS];
static NEXT: AtomicUsize = AtomicUsize::new(0);

thread_local! {
    /// This thread's shard (`usize::MAX` until its first allocation).
    static SHARD: Cell<usize> = const { Cell::new(usize::MAX) };
}

#[inline]
fn add(bytes: i64) {
    // `try_with`: a thread being torn down (its locals gone) still frees memory.
    let i = SHARD
        .try_with(|s| {
            let mut i = s.get();
            if i == usize::MAX {
                i = NEXT.fetch_add(1, Ordering::Relaxed) % SHARDS;
                s.set(i);
            }
            i
        })
        .unwrap_or(0);
    COUNTS[i].0.fetch_add(bytes, Ordering::Relaxed);
}

/// Heap bytes allocated through the global allocator and not yet freed (0 when the binary does
/// not install [`Counting`]).
pub fn live_bytes() -> u64 {
    let sum: i64 = COUNTS.iter().map(|c| c.0.load(Ordering::Relaxed)).sum();
    sum.max(0) as u64
}

/// The system allocator, counted. Installed by the `ringway` binary:
/// `#[global_allocator] static HEAP: Counting = Counting;`.
pub struct Counting;

// SAFETY: every method forwards to `System` with the caller's arguments unchanged and returns
// its result unchanged, so `System`'s guarantees are ours; the counting touches only atomics
// and a `const`-initialised thread-local without a destructor, and never allocates.
unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        // SAFETY: the caller's contract for `alloc` is passed on to `System` as it is.
        let p = unsafe { System.alloc(layout) };
        if !p.is_null() {
            add(layout.size() as i64);
        }
        p
    }

    unsafe fn alloc_zeroed(&self, layout: Layout) -> *mut u8 {
        // SAFETY: as in `alloc`.
        let p = unsafe { System.alloc_zeroed(layout) };
        if !p.is_null() {
            add(layout.size() as i64);
        }
        p
    }

    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        // SAFETY: `ptr` came from this allocator (hence from `System`) with `layout`.
        unsafe { System.dealloc(ptr, layout) };
        add(-(layout.size() as i64));
    }

    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        // SAFETY: `ptr` came from `System` with `layout`; the caller's contract holds.
        let p = unsafe { System.realloc(ptr, layout, new_size) };
        if !p.is_null() {
            add(new_size as i64 - layout.size() as i64);
        }
        p
    }
}

//! A hashed timer wheel, one per worker.
//!
//! Entries are keyed by slot, with an absolute due time in milliseconds. Entries are
//! never removed early: the owner keeps its current deadline itself and, when an entry fires,
//! checks it (re-inserting when the deadline has moved later). That makes "push the idle timeout
//! out" a plain store on the data path, with no wheel operation at all. When the owner goes
//! away it removes its current entry ([`TimerWheel::remove`]), so a storm of short sessions
//! does not leave an hour's worth of dead entries behind. A key slot has one entry at most, and
//! the wheel's lists run through an array indexed by key slot: setting a timer allocates
//! nothing. The wheel keeps no generation: an entry belongs to the slot's occupant of the
//! moment (its owner removes it when it goes), and the owner checks the due time it is handed
//! against its own mark, so an entry that outlived its owner would not be taken for another's.

/// A time on a worker's millisecond clock kept in 32 bits (the low bits of the clock), for
/// what every connection keeps: [`Stamp::at`] rebuilds the whole time from the clock now. It is
/// exact while the time is within 2^31 ms (24 days) of now, before or after: every timeout is
/// at most that long (`config::ms32`), so a stamp is always read before it could be mistaken.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Stamp(u32);

impl Stamp {
    /// The stamp of time `ms`.
    #[inline]
    pub const fn new(ms: u64) -> Stamp {
        Stamp(ms as u32)
    }

    /// The whole time, given the clock now.
    #[inline]
    pub fn at(self, now_ms: u64) -> u64 {
        // Branch-free (it is read after every event): the signed distance from now, added to
        // now; before the clock's start reads as its start. (The clock counts ms from a
        // worker's start: it never nears 2^63.)
        let ahead = i64::from(self.0.wrapping_sub(now_ms as u32) as i32);
        (now_ms as i64).wrapping_add(ahead).max(0) as u64
    }
}

/// A timer key: the slab slot of the owner that set it.
pub type TimerKey = u32;

/// No node: the end of a list, or (as `prev`) a node in no list.
const NIL: u32 = u32::MAX;
/// `prev` of a list's first node: this bit and the wheel slot whose list it heads.
const HEAD: u32 = 1 << 31;

/// The wheel's entry of one key slot, in the wheel's own array indexed by slot: the lists run
/// through these, so an entry costs no allocation of its own (12 bytes for every slot a key
/// ever used, against a 16-byte entry in a growing list of its wheel slot, and the list's and
/// the allocator's slack around it, ~50 bytes per idle tunnel). It keeps no generation (the
/// slot's is kept beside the slab): one was 4 bytes more for every held connection.
#[derive(Clone, Copy, Debug)]
struct Node {
    next: u32,
    /// The node before it; `HEAD | wheel slot` for a list's first; `NIL` when in no list.
    prev: u32,
    /// Due time; exact within 24 days of now, as every timeout is (`Stamp`).
    due: Stamp,
}

const UNLINKED: Node = Node {
    next: NIL,
    prev: NIL,
    due: Stamp::new(0),
};

pub struct TimerWheel {
    tick_ms: u64,
    /// The first node of each wheel slot's list (`NIL`: empty).
    heads: Vec<u32>,
    /// Indexed by a key's slot; grown to the highest slot that set a timer.
    nodes: Vec<Node>,
    /// Last tick processed.
    tick: u64,
    /// Where the next tick begins (ms): `advance` before it has nothing to do.
    next_ms: u64,
    len: usize,
}

impl TimerWheel {
    /// A wheel of `slots` slots of `tick_ms` milliseconds, starting at time `now_ms`.
    pub fn new(tick_ms: u64, slots: usize, now_ms: u64) -> TimerWheel {
        assert!(tick_ms > 0 && slots > 0 && slots < HEAD as usize);
        TimerWheel {
            tick_ms,
            heads: vec![NIL; slots],
            nodes: Vec::new(),
            tick: now_ms / tick_ms,
            next_ms: (now_ms / tick_ms + 1) * tick_ms,
            len: 0,
        }
    }

    /// Milliseconds per tick.
    pub fn tick_ms(&self) -> u64 {
        self.tick_ms
    }

    /// Entries in the wheel.
    pub fn len(&self) -> usize {
        self.len
    }

    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// Fire `key` at or after `due_ms` (within one tick), `due_ms` within 24 days of now. A key
    /// slot has one entry at most: one it had before (its owner's, or a gone owner's) is replaced.
    pub fn insert(&mut self, key: TimerKey, due_ms: u64) {
        // The due time is kept as a `Stamp`: it must be within 24 days of the wheel's time.
        debug_assert!(
            due_ms.abs_diff(self.tick * self.tick_ms) < 1 << 31,
            "timer due {due_ms} too far from {}",
            self.tick * self.tick_ms
        );
        let i = key as usize;
        if i >= self.nodes.len() {
            assert!(key < HEAD, "timer key slot {key}");
            self.nodes.resize(i + 1, UNLINKED);
        }
        if self.nodes[i].prev != NIL {
            self.unlink(key);
        }
        let t = (due_ms.div_ceil(self.tick_ms)).max(self.tick + 1);
        let w = (t % self.heads.len() as u64) as u32;
        let first = self.heads[w as usize];
        if first != NIL {
            self.nodes[first as usize].prev = key;
        }
        self.nodes[i] = Node {
            next: first,
            prev: HEAD | w,
            due: Stamp::new(due_ms),
        };
        self.heads[w as usize] = key;
        self.len += 1;
    }

    /// Remove the entry `key` inserted with `due_ms`, if it is still there (it may have fired).
    pub fn remove(&mut self, key: TimerKey, due_ms: u64) {
        if let Some(n) = self.nodes.get(key as usize)
            && n.prev != NIL
            && n.due == Stamp::new(due_ms)
        {
            self.unlink(key);
        }
    }

    /// Take node `i` out of its list.
    fn unlink(&mut self, i: u32) {
        let Node { next, prev, .. } = self.nodes[i as usize];
        if prev & HEAD != 0 {
            self.heads[(prev & !HEAD) as usize] = next;
        } else {
            self.nodes[prev as usize].next = next;
        }
        if next != NIL {
            self.nodes[next as usize].prev = prev;
        }
        self.nodes[i as usize] = UNLINKED;
        self.len -= 1;
    }

    /// Move time to `now_ms`; append every key whose due time has passed to `fired`, with the
    /// due time it was inserted with. Returns whether a tick passed.
    pub fn advance(&mut self, now_ms: u64, fired: &mut Vec<(TimerKey, u64)>) -> bool {
        if now_ms < self.next_ms {
            return false;
        }
        let now_tick = now_ms / self.tick_ms;
        let n = self.heads.len() as u64;
        let steps = (now_tick - self.tick).min(n);
        for s in 1..=steps {
            let mut i = self.heads[((self.tick + s) % n) as usize];
            while i != NIL {
                let node = self.nodes[i as usize];
                let due = node.due.at(now_ms);
                if due <= now_ms {
                    self.unlink(i);
                    fired.push((i, due));
                }
                i = node.next;
            }
        }
        self.tick = now_tick;
        self.next_ms = (now_tick + 1) * self.tick_ms;
        true
    }

    /// Milliseconds from `now_ms` to the start of the next tick (at least 1).
    pub fn until_next_tick(&self, now_ms: u64) -> u64 {
        self.next_ms.saturating_sub(now_ms).max(1)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_stamp_comes_back_whole_before_and_after_now_and_across_the_wrap() {
        // Around the wrap of the low 32 bits, 100 ms before it and 150 ms after.
        let wrap = (7u64 << 32) + (1u64 << 32);
        for (at, now) in [(wrap - 100, wrap + 150), (wrap + 150, wrap - 100)] {
            assert_eq!(Stamp::new(at).at(now), at);
        }
        // 24 days either way (the longest timeout, `config::ms32`), far from the wrap.
        let day = 86_400_000u64;
        let now = 40 * day + 12_345;
        for at in [now - 24 * day, now + 24 * day, now] {
            assert_eq!(Stamp::new(at).at(now), at);
        }
        // Early in the clock's life, a stamp from before a late start does not underflow.
        assert_eq!(Stamp::new(5).at(9), 5);
        assert_eq!(Stamp::new(u64::from(u32::MAX)).at(3), 0);
    }

    #[test]
    fn fires_at_due_time_not_before() {
        let mut w = TimerWheel::new(10, 8, 1000);
        w.insert(1, 1055);
        w.insert(2, 1500); // beyond one rotation: stays until its round comes
        let mut f = Vec::new();
        assert!(w.advance(1050, &mut f), "ticks passed");
        assert!(f.is_empty());
        assert!(!w.advance(1059, &mut f), "still in the tick of 1050");
        assert_eq!(w.until_next_tick(1059), 1);
        assert!(w.advance(1060, &mut f));
        assert_eq!(f, vec![(1, 1055)]);
        f.clear();
        for t in (1070..1500).step_by(10) {
            w.advance(t, &mut f);
            assert!(f.is_empty(), "fired early at {t}");
        }
        w.advance(1500, &mut f);
        assert_eq!(f, vec![(2, 1500)]);
        assert!(w.is_empty());
    }

    #[test]
    fn removed_entries_never_fire() {
        let mut w = TimerWheel::new(10, 4, 0);
        for k in 0..1000u32 {
            w.insert(k, 3_600_000 + u64::from(k));
        }
        assert_eq!(w.len(), 1000);
        // Removing with another due time is not this entry: it stays.
        w.remove(7, 3_600_008);
        assert_eq!(w.len(), 1000);
        // Out of order, from the middle, the front and the end of the lists.
        for k in (0..1000u32).rev().step_by(2).chain((0..1000u32).step_by(2)) {
            w.remove(k, 3_600_000 + u64::from(k));
        }
        assert!(w.is_empty());
        assert!(w.heads.iter().all(|&h| h == NIL));
        let mut f = Vec::new();
        w.advance(4_000_000, &mut f);
        assert!(f.is_empty());
        // Removing what is not there (already fired) is a no-op.
        w.remove(1, 5);
        w.remove(5000, 5);
        // Storm after storm over the same keys: the wheel's memory is bounded by the highest
        // key slot (the owner's slab), not by how many entries ever passed through it.
        for round in 0..20u64 {
            for k in 0..1000u32 {
                w.insert(k, 4_000_000 + round * 1000 + u64::from(k));
            }
            for k in 0..1000u32 {
                w.remove(k, 4_000_000 + round * 1000 + u64::from(k));
            }
        }
        assert!(w.is_empty());
        assert_eq!(w.nodes.len(), 1000);
        assert!(w.nodes.capacity() <= 2048, "{}", w.nodes.capacity());
    }

    #[test]
    fn a_key_has_one_entry_and_a_new_one_replaces_it() {
        let mut w = TimerWheel::new(10, 8, 0);
        w.insert(3, 500);
        w.insert(4, 500);
        w.insert(3, 40); // earlier: the entry moves
        w.insert(5, 40);
        assert_eq!(w.len(), 3);
        let mut f = Vec::new();
        w.advance(40, &mut f);
        f.sort();
        assert_eq!(f, vec![(3, 40), (5, 40)]);
        f.clear();
        // A later owner of the same slot replaces a stale entry too.
        w.insert(4, 100);
        assert_eq!(w.len(), 1);
        w.advance(1000, &mut f);
        assert_eq!(f, vec![(4, 100)]);
        assert!(w.is_empty());
    }

    #[test]
    fn past_due_fires_next_tick_and_big_jumps_visit_all() {
        let mut w = TimerWheel::new(10, 4, 0);
        w.insert(1, 0);
        for k in 0..20u32 {
            w.insert(k + 10, u64::from(k) * 7);
        }
        let mut f = Vec::new();
        w.advance(10_000, &mut f);
        assert_eq!(f.len(), 21);
        assert!(w.is_empty());
    }

    #[test]
    fn a_burst_over_every_slot_leaves_nothing_behind() {
        // A few entries in each slot, some fired, some removed by their owner: every list is
        // empty after.
        let mut w = TimerWheel::new(10, 64, 0);
        for k in 0..640u32 {
            w.insert(k, 10 * u64::from(k));
        }
        let mut f = Vec::new();
        w.advance(3200, &mut f);
        for k in 320..640u32 {
            w.remove(k, 10 * u64::from(k));
        }
        assert!(w.is_empty());
        assert!(w.heads.iter().all(|&h| h == NIL));
        assert!(w.nodes.iter().all(|n| n.prev == NIL));
    }
}

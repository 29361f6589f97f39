//! A hashed timer wheel, one per worker.
//!
//! Entries are `(slot, generation)` keys with an absolute due time in milliseconds. Entries are
//! never removed early: the owner keeps its current deadline itself and, when an entry fires,
//! checks it (re-inserting when the deadline has moved later). That makes "push the idle timeout
//! out" a plain store on the data path, with no wheel operation at all. When the owner goes
//! away it removes its current entry ([`TimerWheel::remove`]), so a storm of short sessions
//! does not leave an hour's worth of dead entries behind; slot lists shrink when they empty.

/// A time on a worker's millisecond clock kept in 32 bits (the low bits of the clock), for
/// what every connection keeps: [`Stamp::at`] rebuilds the whole time from the clock now. It is
/// exact while the time is within 2^31 ms (24 days) of now, before or after: every timeout is
/// at most that long (`config::ms32`), so a stamp is always read before it could be mistaken.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Stamp(u32);

impl Stamp {
    /// The stamp of time `ms`.
    #[inline]
    pub fn new(ms: u64) -> Stamp {
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

/// A timer key: slab slot and generation of the session that set it.
pub type TimerKey = (u32, u32);

pub struct TimerWheel {
    tick_ms: u64,
    slots: Vec<Vec<(TimerKey, u64)>>,
    /// Last tick processed.
    tick: u64,
    /// Where the next tick begins (ms): `advance` before it has nothing to do.
    next_ms: u64,
    len: usize,
}

impl TimerWheel {
    /// A wheel of `slots` slots of `tick_ms` milliseconds, starting at time `now_ms`.
    pub fn new(tick_ms: u64, slots: usize, now_ms: u64) -> TimerWheel {
        assert!(tick_ms > 0 && slots > 0);
        TimerWheel {
            tick_ms,
            slots: (0..slots).map(|_| Vec::new()).collect(),
            tick: now_ms / tick_ms,
            next_ms: (now_ms / tick_ms + 1) * tick_ms,
            len: 0,
        }
    }

    /// Milliseconds per tick.
    pub fn tick_ms(&self) -> u64 {
        self.tick_ms
    }

    /// Entries in the wheel (including ones their owner no longer cares about).
    pub fn len(&self) -> usize {
        self.len
    }

    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// Fire `key` at or after `due_ms` (within one tick).
    pub fn insert(&mut self, key: TimerKey, due_ms: u64) {
        let t = (due_ms.div_ceil(self.tick_ms)).max(self.tick + 1);
        let n = self.slots.len() as u64;
        self.slots[(t % n) as usize].push((key, due_ms));
        self.len += 1;
    }

    /// Remove the entry `key` inserted with `due_ms`, if it is still there (an entry already
    /// due may sit in the next tick's slot instead; it fires and is dropped by its owner).
    pub fn remove(&mut self, key: TimerKey, due_ms: u64) {
        let n = self.slots.len() as u64;
        for t in [due_ms.div_ceil(self.tick_ms), self.tick + 1] {
            let slot = &mut self.slots[(t % n) as usize];
            if let Some(i) = slot.iter().position(|&e| e == (key, due_ms)) {
                slot.swap_remove(i);
                self.len -= 1;
                shrink(slot);
                return;
            }
        }
    }

    /// Move time to `now_ms`; append every key whose due time has passed to `fired`, with the
    /// due time it was inserted with. Returns whether a tick passed.
    pub fn advance(&mut self, now_ms: u64, fired: &mut Vec<(TimerKey, u64)>) -> bool {
        if now_ms < self.next_ms {
            return false;
        }
        let now_tick = now_ms / self.tick_ms;
        let n = self.slots.len() as u64;
        let steps = (now_tick - self.tick).min(n);
        for i in 1..=steps {
            let idx = ((self.tick + i) % n) as usize;
            let slot = &mut self.slots[idx];
            let before = slot.len();
            slot.retain(|&(key, due)| {
                if due <= now_ms {
                    fired.push((key, due));
                    false
                } else {
                    true
                }
            });
            self.len -= before - slot.len();
            shrink(slot);
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

/// Give back a slot list's memory once a burst has passed: all of it when the list is empty,
/// half of it when a quarter or less is used. An empty list keeps nothing, so the wheel holds
/// memory for the entries in it and not for every slot a burst ever passed through (which
/// kept 4,096 slots × 2 workers × up to 16 entries, 2 MiB, filling up storm after storm).
fn shrink(slot: &mut Vec<(TimerKey, u64)>) {
    if slot.is_empty() {
        if slot.capacity() > 0 {
            *slot = Vec::new();
        }
    } else if slot.capacity() > 16 && slot.len() * 4 <= slot.capacity() {
        slot.shrink_to(slot.len() * 2);
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
        w.insert((1, 0), 1055);
        w.insert((2, 0), 1500); // beyond one rotation: stays until its round comes
        let mut f = Vec::new();
        assert!(w.advance(1050, &mut f), "ticks passed");
        assert!(f.is_empty());
        assert!(!w.advance(1059, &mut f), "still in the tick of 1050");
        assert_eq!(w.until_next_tick(1059), 1);
        assert!(w.advance(1060, &mut f));
        assert_eq!(f, vec![((1, 0), 1055)]);
        f.clear();
        for t in (1070..1500).step_by(10) {
            w.advance(t, &mut f);
            assert!(f.is_empty(), "fired early at {t}");
        }
        w.advance(1500, &mut f);
        assert_eq!(f, vec![((2, 0), 1500)]);
        assert!(w.is_empty());
    }

    #[test]
    fn removed_entries_never_fire_and_lists_shrink() {
        let mut w = TimerWheel::new(10, 4, 0);
        for k in 0..1000u32 {
            w.insert((k, 0), 3_600_000 + u64::from(k));
        }
        let grown: usize = w.slots.iter().map(|s| s.capacity()).sum();
        for k in 0..1000u32 {
            w.remove((k, 0), 3_600_000 + u64::from(k));
        }
        assert!(w.is_empty());
        let after: usize = w.slots.iter().map(|s| s.capacity()).sum();
        assert_eq!(after, 0, "slot lists kept {after} of {grown} entries");
        let mut f = Vec::new();
        w.advance(4_000_000, &mut f);
        assert!(f.is_empty());
        // Removing what is not there (already fired) is a no-op.
        w.remove((1, 0), 5);
    }

    #[test]
    fn past_due_fires_next_tick_and_big_jumps_visit_all() {
        let mut w = TimerWheel::new(10, 4, 0);
        w.insert((1, 1), 0);
        for k in 0..20u32 {
            w.insert((k + 10, 0), u64::from(k) * 7);
        }
        let mut f = Vec::new();
        w.advance(10_000, &mut f);
        assert_eq!(f.len(), 21);
        assert!(w.is_empty());
    }

    #[test]
    fn a_burst_over_every_slot_leaves_nothing_behind() {
        // A few entries in each slot (under the 16 a list used to keep), some fired, some
        // removed by their owner: the wheel keeps no memory for slots it has no entries in.
        let mut w = TimerWheel::new(10, 64, 0);
        for k in 0..640u32 {
            w.insert((k, 0), 10 * u64::from(k));
        }
        let mut f = Vec::new();
        w.advance(3200, &mut f);
        for k in 320..640u32 {
            w.remove((k, 0), 10 * u64::from(k));
        }
        assert!(w.is_empty());
        let kept: usize = w.slots.iter().map(|s| s.capacity()).sum();
        assert_eq!(kept, 0);
    }
}

//! A slab whose entries carry a generation, so a completion naming a freed (and maybe reused)
//! slot is recognised and dropped.

use slab::Slab;

use super::user_data::next_generation;

pub struct Slots<T> {
    slab: Slab<T>,
    /// Each slot's generation: the live entry's while it is occupied, the next one's while it
    /// is vacant (kept beside the slab, not in each entry: an entry is memory per session).
    generations: Vec<u32>,
}

impl<T> Slots<T> {
    pub fn with_capacity(n: usize) -> Slots<T> {
        Slots {
            slab: Slab::with_capacity(n),
            generations: Vec::with_capacity(n),
        }
    }

    /// Insert; returns `(slot, generation)`.
    pub fn insert(&mut self, f: impl FnOnce(u32, u32) -> T) -> (u32, u32) {
        let key = self.slab.vacant_key();
        if key >= self.generations.len() {
            self.generations.resize(key + 1, 0);
        }
        let generation = self.generations[key];
        self.slab.insert(f(key as u32, generation));
        (key as u32, generation)
    }

    /// The entry at `slot` if it is still the same incarnation.
    #[inline]
    pub fn get_mut(&mut self, slot: u32, generation: u32) -> Option<&mut T> {
        match self.generations.get(slot as usize) {
            Some(&g) if g == generation => self.slab.get_mut(slot as usize),
            _ => None,
        }
    }

    /// Whether `slot` holds incarnation `generation` (a vacant slot's generation is already
    /// the next one's, so this alone says the entry is there).
    #[inline]
    pub fn is_current(&self, slot: u32, generation: u32) -> bool {
        self.generations.get(slot as usize) == Some(&generation)
    }

    /// The live entry at `slot`, with its generation.
    #[inline]
    pub fn get_any_mut(&mut self, slot: u32) -> Option<(u32, &mut T)> {
        let g = *self.generations.get(slot as usize)?;
        Some((g, self.slab.get_mut(slot as usize)?))
    }

    /// Free `slot`; its next incarnation gets a new generation.
    pub fn remove(&mut self, slot: u32) -> T {
        let t = self.slab.remove(slot as usize);
        let g = &mut self.generations[slot as usize];
        *g = next_generation(*g);
        t
    }

    pub fn len(&self) -> usize {
        self.slab.len()
    }

    pub fn is_empty(&self) -> bool {
        self.slab.is_empty()
    }

    /// Slots of all live entries.
    pub fn keys(&self) -> Vec<u32> {
        self.slab.iter().map(|(k, _)| k as u32).collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reuse_bumps_generation() {
        let mut s = Slots::with_capacity(2);
        let (k, g) = s.insert(|_, _| "a");
        assert_eq!(s.remove(k), "a");
        let (k2, g2) = s.insert(|_, _| "b");
        assert_eq!(k, k2);
        assert_ne!(g, g2);
        assert!(s.get_mut(k, g).is_none());
        assert_eq!(s.get_mut(k2, g2), Some(&mut "b"));
        assert_eq!(s.get_any_mut(k2), Some((g2, &mut "b")));
        // A vacant slot answers to no generation, not even the one its next entry will get.
        s.remove(k2);
        let next = next_generation(g2);
        assert!(s.get_mut(k2, next).is_none() && s.get_any_mut(k2).is_none());
        assert!(s.get_mut(99, 0).is_none());
    }
}

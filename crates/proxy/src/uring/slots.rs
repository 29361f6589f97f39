//! A slab whose entries carry a generation, so a completion naming a freed (and maybe reused)
//! slot is recognised and dropped.

use slab::Slab;

use super::user_data::next_generation;

pub struct Slots<T> {
    slab: Slab<(u32, T)>,
    generations: Vec<u32>,
}

impl<T> Slots<T> {
    pub fn with_capacity(n: usize) -> Slots<T> {
        Slots {
            slab: Slab::with_capacity(n),
            generations: Vec::new(),
        }
    }

    /// Insert; returns `(slot, generation)`.
    pub fn insert(&mut self, f: impl FnOnce(u32, u32) -> T) -> (u32, u32) {
        let key = self.slab.vacant_key();
        if key >= self.generations.len() {
            self.generations.resize(key + 1, 0);
        }
        let generation = self.generations[key];
        self.slab.insert((generation, f(key as u32, generation)));
        (key as u32, generation)
    }

    /// The entry at `slot` if it is still the same incarnation.
    pub fn get_mut(&mut self, slot: u32, generation: u32) -> Option<&mut T> {
        match self.slab.get_mut(slot as usize) {
            Some((g, t)) if *g == generation => Some(t),
            _ => None,
        }
    }

    /// The live entry at `slot`, with its generation.
    pub fn get_any_mut(&mut self, slot: u32) -> Option<(u32, &mut T)> {
        self.slab.get_mut(slot as usize).map(|(g, t)| (*g, t))
    }

    /// Free `slot`; its next incarnation gets a new generation.
    pub fn remove(&mut self, slot: u32) -> T {
        let (g, t) = self.slab.remove(slot as usize);
        self.generations[slot as usize] = next_generation(g);
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
    }
}

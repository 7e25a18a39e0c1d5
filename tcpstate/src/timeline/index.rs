//! A hash index from 64-bit hashes to slots of the engine's slab.
//!
//! Open addressing with linear probing over `u32` slot numbers, kept at most half full: four
//! bytes per bucket, so about eight bytes per tracked connection, where a `HashMap<u64, u32>`
//! would spend about thirty-four. Keys live in the slab; callers pass closures that compare a
//! slot's key or recompute its hash.
//!
//! Not `hashbrown::HashTable<u32>`, measured as its replacement: a bucket there is the slot plus a
//! control byte, five bytes at the same power-of-two bucket count, so a full default table costs
//! 260 bytes per connection (the bound is 256); and with evictions at full occupancy its
//! tombstones make it double a table (270 bytes after 4M evicting inserts). It was faster there
//! (about 200 against 440 ns per evicting insert), since its tags spare most visits to the slab.

const EMPTY: u32 = u32::MAX;
const MIN_BUCKETS: usize = 16;

#[derive(Debug)]
pub(crate) struct Index {
    buckets: Vec<u32>,
    /// log2(buckets.len()).
    bits: u32,
    len: usize,
}

impl Index {
    pub fn new() -> Self {
        Index {
            buckets: vec![EMPTY; MIN_BUCKETS],
            bits: MIN_BUCKETS.trailing_zeros(),
            len: 0,
        }
    }

    #[cfg(test)]
    pub fn len(&self) -> usize {
        self.len
    }

    pub fn buckets(&self) -> usize {
        self.buckets.len()
    }

    fn mask(&self) -> usize {
        self.buckets.len() - 1
    }

    /// Fibonacci hashing: the top bits of a multiplication spread kernel addresses, which share
    /// their high bits and their alignment, over the whole table.
    fn home(&self, hash: u64) -> usize {
        (hash.wrapping_mul(0x9E37_79B9_7F4A_7C15) >> (64 - self.bits)) as usize
    }

    /// The first slot under `hash` for which `matches` holds.
    pub fn find(&self, hash: u64, mut matches: impl FnMut(u32) -> bool) -> Option<u32> {
        let mask = self.mask();
        let mut i = self.home(hash);
        loop {
            let b = self.buckets[i];
            if b == EMPTY {
                return None;
            }
            if matches(b) {
                return Some(b);
            }
            i = (i + 1) & mask;
        }
    }

    /// Adds `slot` under `hash`. `hash_of` gives any stored slot's hash (to grow the table).
    pub fn insert(&mut self, hash: u64, slot: u32, hash_of: impl Fn(u32) -> u64) {
        if (self.len + 1) * 2 > self.buckets.len() {
            self.grow(&hash_of);
        }
        self.place(hash, slot);
        self.len += 1;
    }

    fn place(&mut self, hash: u64, slot: u32) {
        let mask = self.mask();
        let mut i = self.home(hash);
        while self.buckets[i] != EMPTY {
            i = (i + 1) & mask;
        }
        self.buckets[i] = slot;
    }

    fn grow(&mut self, hash_of: &impl Fn(u32) -> u64) {
        let doubled = vec![EMPTY; self.buckets.len() * 2];
        let old = std::mem::replace(&mut self.buckets, doubled);
        self.bits += 1;
        for slot in old.into_iter().filter(|&s| s != EMPTY) {
            self.place(hash_of(slot), slot);
        }
    }

    /// Removes `slot`, stored under `hash`; returns whether it was there.
    pub fn remove(&mut self, hash: u64, slot: u32, hash_of: impl Fn(u32) -> u64) -> bool {
        let mask = self.mask();
        let mut hole = self.home(hash);
        loop {
            match self.buckets[hole] {
                EMPTY => return false,
                s if s == slot => break,
                _ => hole = (hole + 1) & mask,
            }
        }
        // Backward-shift deletion: pull later entries of the probe run into the hole when the
        // hole lies on their probe path, so lookups never stop early and no tombstones pile up.
        let mut j = (hole + 1) & mask;
        loop {
            let s = self.buckets[j];
            if s == EMPTY {
                break;
            }
            let home = self.home(hash_of(s));
            if (hole.wrapping_sub(home) & mask) < (j.wrapping_sub(home) & mask) {
                self.buckets[hole] = s;
                hole = j;
            }
            j = (j + 1) & mask;
        }
        self.buckets[hole] = EMPTY;
        self.len -= 1;
        true
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashMap;

    /// Random inserts and removes, checked against a HashMap, with keys chosen to collide a lot
    /// (few distinct high bits, like kernel addresses) so probe runs wrap and shift.
    #[test]
    fn matches_a_hashmap() {
        let mut keys: Vec<u64> = Vec::new(); // slot -> key
        let mut model: HashMap<u64, u32> = HashMap::new();
        let mut index = Index::new();
        let mut rng = 0x2545_F491_4F6C_DD1Du64;
        for _ in 0..200_000 {
            rng ^= rng << 13;
            rng ^= rng >> 7;
            rng ^= rng << 17;
            let key = 0xffff_8880_0000_0000 + (rng % 3000) * 2048;
            let hash_of = |s: u32| keys[s as usize];
            match model.get(&key) {
                Some(&slot) if rng & 1 == 0 => {
                    assert!(index.remove(key, slot, hash_of));
                    model.remove(&key);
                }
                Some(&slot) => {
                    assert_eq!(index.find(key, |s| keys[s as usize] == key), Some(slot));
                }
                None => {
                    assert_eq!(index.find(key, |s| keys[s as usize] == key), None);
                    let slot = keys.len() as u32;
                    keys.push(key);
                    let hash_of = |s: u32| keys[s as usize];
                    index.insert(key, slot, hash_of);
                    model.insert(key, slot);
                }
            }
            assert_eq!(index.len(), model.len());
        }
        for (&key, &slot) in &model {
            assert_eq!(index.find(key, |s| keys[s as usize] == key), Some(slot));
        }
        assert!(index.buckets() >= 2 * model.len());
    }

    #[test]
    fn duplicates_are_kept_apart() {
        let hashes = [7u64, 7, 7];
        let mut index = Index::new();
        for slot in 0..3 {
            index.insert(7, slot, |s| hashes[s as usize]);
        }
        assert!(index.remove(7, 1, |s| hashes[s as usize]));
        assert!(!index.remove(7, 1, |s| hashes[s as usize]));
        assert_eq!(index.find(7, |s| s == 2), Some(2));
        assert_eq!(index.find(7, |s| s == 0), Some(0));
        assert_eq!(index.find(7, |s| s == 1), None);
    }
}

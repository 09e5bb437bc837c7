//! A multiplicative hash for the engine's maps, whose keys are kernel
//! addresses and thread ids (chosen by the kernel, not by whoever sends
//! input): SipHash's flood resistance buys nothing here and cost a fifth of
//! replay time. FxHash's scheme (rotate, xor, multiply by an odd constant).
use std::{
    collections::{HashMap, HashSet},
    hash::{BuildHasherDefault, Hasher},
};

const K: u64 = 0x51_7c_c1_b7_27_22_0a_95;

#[derive(Default, Clone, Copy)]
pub struct IdHasher(u64);

impl IdHasher {
    fn add(&mut self, n: u64) {
        self.0 = (self.0.rotate_left(5) ^ n).wrapping_mul(K);
    }
}

impl Hasher for IdHasher {
    fn write(&mut self, bytes: &[u8]) {
        for chunk in bytes.chunks(8) {
            let mut b = [0u8; 8];
            b[..chunk.len()].copy_from_slice(chunk);
            self.add(u64::from_le_bytes(b));
        }
    }

    fn write_u64(&mut self, n: u64) {
        self.add(n);
    }

    fn write_u32(&mut self, n: u32) {
        self.add(n as u64);
    }

    fn write_usize(&mut self, n: usize) {
        self.add(n as u64);
    }

    /// The product's low bits keep the key's trailing zeros (aligned
    /// addresses): fold the well-mixed high half into them, since hashbrown
    /// picks the bucket from the low bits and the tag from the top ones.
    fn finish(&self) -> u64 {
        self.0 ^ (self.0 >> 32)
    }
}

pub type FastMap<K, V> = HashMap<K, V, BuildHasherDefault<IdHasher>>;
pub type FastSet<K> = HashSet<K, BuildHasherDefault<IdHasher>>;

#[cfg(test)]
mod tests {
    use super::*;

    fn hash(n: u64) -> u64 {
        let mut h = IdHasher::default();
        h.write_u64(n);
        h.finish()
    }

    #[test]
    fn aligned_addresses_spread_over_buckets_and_tags() {
        // hashbrown takes the bucket from the low bits and its tag from the
        // top 7: 64 KiB-aligned kernel addresses must spread over both.
        let keys: Vec<u64> = (0..4096u64)
            .map(|i| 0xffff_8881_0000_0000 + i * 0x1_0000)
            .collect();
        let buckets: FastSet<u64> = keys.iter().map(|k| hash(*k) & 4095).collect();
        let tags: FastSet<u64> = keys.iter().map(|k| hash(*k) >> 57).collect();
        // A uniform hash fills about 2590 of 4096; without the fold, 1.
        assert!(buckets.len() > 1500, "{} buckets", buckets.len());
        assert!(tags.len() > 100, "{} tags", tags.len());
    }
}

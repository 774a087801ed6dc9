//! A shared, lock-free pseudo-random source for randomized selectors.
//!
//! SplitMix64 (Steele, Lea, Flood, "Fast splittable pseudorandom number
//! generators", OOPSLA 2014): the state advances by a constant, so many
//! threads can draw from one generator with a single `fetch_add` and no
//! retry loop; each output is the mixed state. Not cryptographic — it only
//! has to spread picks.

use std::collections::hash_map::RandomState;
use std::hash::BuildHasher;
use std::sync::atomic::{AtomicU64, Ordering};

const GOLDEN_GAMMA: u64 = 0x9e37_79b9_7f4a_7c15;

#[derive(Debug)]
pub(crate) struct SplitMix64 {
    state: AtomicU64,
}

impl SplitMix64 {
    /// A generator that yields the same sequence for the same seed (tests).
    pub(crate) fn with_seed(seed: u64) -> Self {
        Self { state: AtomicU64::new(seed) }
    }

    /// A generator seeded from std's per-process random keys, so replicas
    /// do not make correlated choices.
    pub(crate) fn from_entropy() -> Self {
        Self::with_seed(RandomState::new().hash_one(GOLDEN_GAMMA))
    }

    pub(crate) fn next_u64(&self) -> u64 {
        let z = self.state.fetch_add(GOLDEN_GAMMA, Ordering::Relaxed).wrapping_add(GOLDEN_GAMMA);
        let z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        let z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }

    /// A value in `0..n` (`n > 0`), by Lemire's multiply-shift: no division
    /// and a bias below `n / 2^64`.
    pub(crate) fn below(&self, n: usize) -> usize {
        ((u128::from(self.next_u64()) * n as u128) >> 64) as usize
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn matches_reference_sequence() {
        // SplitMix64 seeded with 1234567, as in the reference implementation.
        let rng = SplitMix64::with_seed(1_234_567);
        let got: Vec<u64> = (0..3).map(|_| rng.next_u64()).collect();
        assert_eq!(got, [6_457_827_717_110_365_317, 3_203_168_211_198_807_973, 9_817_491_932_198_370_423]);
    }

    #[test]
    fn below_stays_in_range_and_covers_it() {
        let rng = SplitMix64::with_seed(7);
        let mut counts = [0u32; 5];
        for _ in 0..10_000 {
            counts[rng.below(5)] += 1;
        }
        for count in counts {
            assert!((1_800..2_200).contains(&count), "{counts:?}");
        }
    }
}

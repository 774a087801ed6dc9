//! Which endpoints may take a new request right now.
//!
//! Selectors are built once per snapshot, but health changes between
//! snapshots. Rather than rebuilding a selector when an endpoint goes down,
//! the caller passes an [`Availability`] with every pick and the selector
//! skips the endpoints it excludes. Health checking fills it in later; until
//! then callers pass [`Availability::All`].
//!
//! Every selector skips the same way: first a few cheap retries with its own
//! rule (next cursor value, next random draw, next hash probe), then a bounded
//! scan over the survivors ([`Availability::count`], [`Availability::nth`]) so
//! that a pick costs at most O(endpoints) even when almost everything is out.

use std::fmt;

/// How many times a selector retries its own rule before it falls back to
/// scanning the available endpoints.
pub(crate) const MAX_PROBES: usize = 16;

/// The endpoints a pick may choose from, by index into the backend's
/// endpoint list.
#[derive(Clone, Copy, Default)]
pub enum Availability<'a> {
    /// Every endpoint is available.
    #[default]
    All,
    /// A bit set: endpoint `i` is available when bit `i % 64` of word
    /// `i / 64` is set. Endpoints past the end of the slice are unavailable.
    Mask(&'a [u64]),
    /// Endpoint `i` is available when the predicate returns `true`.
    Predicate(&'a dyn Fn(usize) -> bool),
}

impl fmt::Debug for Availability<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::All => f.write_str("All"),
            Self::Mask(words) => f.debug_tuple("Mask").field(words).finish(),
            Self::Predicate(_) => f.write_str("Predicate(..)"),
        }
    }
}

impl Availability<'_> {
    /// True when nothing is excluded, so a selector can take its fast path.
    pub fn is_all(&self) -> bool {
        matches!(self, Self::All)
    }

    /// Whether endpoint `i` may take a new request.
    pub fn is_available(&self, i: usize) -> bool {
        match self {
            Self::All => true,
            Self::Mask(words) => words.get(i / 64).is_some_and(|word| word & (1 << (i % 64)) != 0),
            Self::Predicate(available) => available(i),
        }
    }

    /// How many of the endpoints `0..len` are available.
    pub fn count(&self, len: usize) -> usize {
        match self {
            Self::All => len,
            Self::Mask(words) => words
                .iter()
                .enumerate()
                .map(|(w, word)| (word & low_bits(len.saturating_sub(w * 64))).count_ones() as usize)
                .sum(),
            Self::Predicate(_) => (0..len).filter(|&i| self.is_available(i)).count(),
        }
    }

    /// The index of the `k`-th (from 0) available endpoint among `0..len`.
    pub fn nth(&self, len: usize, k: usize) -> Option<usize> {
        match self {
            Self::All => (k < len).then_some(k),
            Self::Mask(words) => {
                let mut k = k;
                for (w, word) in words.iter().enumerate() {
                    let word = word & low_bits(len.saturating_sub(w * 64));
                    let ones = word.count_ones() as usize;
                    if k < ones {
                        return Some(w * 64 + nth_set_bit(word, k));
                    }
                    k -= ones;
                }
                None
            }
            Self::Predicate(_) => (0..len).filter(|&i| self.is_available(i)).nth(k),
        }
    }
}

/// A word with the lowest `n` bits set (all 64 when `n >= 64`).
fn low_bits(n: usize) -> u64 {
    if n >= 64 { u64::MAX } else { (1 << n) - 1 }
}

/// The position of the `k`-th set bit of `word`; `k` must be below its
/// population count.
fn nth_set_bit(mut word: u64, k: usize) -> usize {
    for _ in 0..k {
        word &= word - 1;
    }
    word.trailing_zeros() as usize
}

// === impl EndpointMask ===

/// An owned bit set to build an [`Availability::Mask`] from.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct EndpointMask {
    words: Box<[u64]>,
}

impl EndpointMask {
    /// All of `len` endpoints available.
    pub fn all(len: usize) -> Self {
        let mut words = vec![u64::MAX; len.div_ceil(64)].into_boxed_slice();
        if let Some(last) = words.last_mut() {
            *last = low_bits(len - (len.div_ceil(64) - 1) * 64);
        }
        Self { words }
    }

    /// None of `len` endpoints available.
    pub fn none(len: usize) -> Self {
        Self { words: vec![0; len.div_ceil(64)].into_boxed_slice() }
    }

    /// Marks endpoint `i` available or not; indices past `len` are ignored.
    pub fn set(&mut self, i: usize, available: bool) {
        if let Some(word) = self.words.get_mut(i / 64) {
            if available {
                *word |= 1 << (i % 64);
            } else {
                *word &= !(1 << (i % 64));
            }
        }
    }

    pub fn as_availability(&self) -> Availability<'_> {
        Availability::Mask(&self.words)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn available_indices(a: Availability<'_>, len: usize) -> Vec<usize> {
        (0..len).filter(|&i| a.is_available(i)).collect()
    }

    #[test]
    fn count_and_nth_agree_with_is_available() {
        let mut mask = EndpointMask::all(130);
        for i in [0, 5, 63, 64, 100, 129] {
            mask.set(i, false);
        }
        let odd = |i: usize| i % 2 == 1;
        let cases: [(&str, Availability<'_>, usize); 5] = [
            ("all", Availability::All, 7),
            ("mask", mask.as_availability(), 130),
            ("mask shorter than len", Availability::Mask(&[0b1011]), 100),
            ("mask longer than len", Availability::Mask(&[u64::MAX, u64::MAX]), 70),
            ("predicate", Availability::Predicate(&odd), 9),
        ];
        for (name, a, len) in cases {
            let expected = available_indices(a, len);
            assert_eq!(a.count(len), expected.len(), "{name}");
            for (k, &i) in expected.iter().enumerate() {
                assert_eq!(a.nth(len, k), Some(i), "{name}: k={k}");
            }
            assert_eq!(a.nth(len, expected.len()), None, "{name}");
        }
    }

    #[test]
    fn mask_builder() {
        let mut mask = EndpointMask::none(3);
        assert_eq!(mask.as_availability().count(3), 0);
        mask.set(2, true);
        mask.set(99, true);
        assert_eq!(available_indices(mask.as_availability(), 3), [2]);
        assert_eq!(EndpointMask::all(64).as_availability().count(64), 64);
        assert_eq!(EndpointMask::all(65).as_availability().count(200), 65);
        assert_eq!(EndpointMask::all(0).as_availability().count(10), 0);
    }
}

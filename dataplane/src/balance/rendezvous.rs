//! Weighted rendezvous (highest-random-weight) hashing, for `IPHash` and
//! `ConsistentHash` over pools of moderate size.
//!
//! Every endpoint scores the key, `weight / -ln(u)` with `u` a uniform
//! draw from hashing the key with the endpoint's identity (Schindelhauer
//! and Schomaker's weighted form); the highest score owns the key. Removing
//! an endpoint moves exactly the keys it owned and no other; adding one
//! moves only the keys it now wins (its weight share). The result depends
//! only on the key and the endpoint set, so every replica agrees. A pick
//! costs one hash per endpoint, so [`super::Maglev`]'s table takes over for
//! large pools (see [`MAX_ENDPOINTS`]).

use std::net::SocketAddr;

use super::Availability;
use super::hash::{fmix64, hash_key};

/// Pools up to this size use rendezvous hashing; larger ones Maglev.
pub const MAX_ENDPOINTS: usize = 256;

#[derive(Debug)]
pub struct Rendezvous {
    /// Hash of each endpoint's identity (`ip:port`).
    ids: Box<[u64]>,
    weights: Box<[u32]>,
}

impl Rendezvous {
    pub fn new(endpoints: &[(SocketAddr, u32)]) -> Self {
        Self {
            ids: endpoints.iter().map(|(addr, _)| hash_key(addr.to_string().as_bytes())).collect(),
            weights: endpoints.iter().map(|(_, w)| *w).collect(),
        }
    }

    pub fn len(&self) -> usize {
        self.ids.len()
    }

    pub fn is_empty(&self) -> bool {
        self.ids.is_empty()
    }

    /// The available endpoint with the highest score for `key`.
    pub fn pick(&self, key: u64, available: Availability<'_>) -> Option<usize> {
        let mut best: Option<(f64, usize)> = None;
        for (i, (&id, &weight)) in self.ids.iter().zip(self.weights.iter()).enumerate() {
            if weight == 0 || !available.is_available(i) {
                continue;
            }
            // A uniform draw in (0, 1): 53 random bits, never exactly 0.
            let u = ((fmix64(key ^ id) >> 11) as f64 + 0.5) / (1u64 << 53) as f64;
            let score = f64::from(weight) / -u.ln();
            if best.is_none_or(|(b, _)| score > b) {
                best = Some((score, i));
            }
        }
        best.map(|(_, i)| i)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn mk(n: usize) -> Vec<(SocketAddr, u32)> {
        (0..n).map(|i| (SocketAddr::from(([10, 0, 0, i as u8 + 1], 8080)), 1)).collect()
    }

    fn owners(r: &Rendezvous, keys: u64) -> Vec<usize> {
        (0..keys).map(|k| r.pick(hash_key(&k.to_le_bytes()), Availability::All).unwrap()).collect()
    }

    #[test]
    fn removing_one_moves_only_its_keys_and_adding_one_moves_its_share() {
        let four = mk(4);
        let before = owners(&Rendezvous::new(&four), 10_000);
        // Remove endpoint 1: the others keep every key.
        let three: Vec<_> = four.iter().enumerate().filter(|(i, _)| *i != 1).map(|(_, e)| *e).collect();
        let after = owners(&Rendezvous::new(&three), 10_000);
        let map = [0, usize::MAX, 1, 2];
        for (b, a) in before.iter().zip(&after) {
            if *b != 1 {
                assert_eq!(map[*b], *a, "a key of a surviving endpoint moved");
            }
        }
        // Add a fifth: about a fifth of the keys move, all to it.
        let five = mk(5);
        let grown = owners(&Rendezvous::new(&five), 10_000);
        let moved = before.iter().zip(&grown).filter(|(b, g)| b != g).count();
        assert!(grown.iter().zip(&before).all(|(g, b)| g == b || *g == 4));
        let share = moved as f64 / 10_000.0;
        assert!((0.17..0.23).contains(&share), "{share}");
        // Spread is even within 10%.
        for i in 0..4 {
            let n = before.iter().filter(|o| **o == i).count();
            assert!((2250..2750).contains(&n), "endpoint {i}: {n}");
        }
    }

    #[test]
    fn weights_and_availability() {
        let mut eps = mk(2);
        eps[1].1 = 3;
        let r = Rendezvous::new(&eps);
        let heavy = owners(&r, 10_000).iter().filter(|o| **o == 1).count();
        assert!((7200..7800).contains(&heavy), "{heavy}");
        let only_zero = |i: usize| i == 0;
        assert_eq!(r.pick(42, Availability::Predicate(&only_zero)), Some(0));
        let none = |_: usize| false;
        assert_eq!(r.pick(42, Availability::Predicate(&none)), None);
    }
}

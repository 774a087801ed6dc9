//! Power of two choices.
//!
//! Draw two distinct endpoints at random and send the request to the less
//! loaded one (Mitzenmacher, "The Power of Two Choices in Randomized Load
//! Balancing", 2001; the default balancer of Envoy, linkerd and Finagle).
//! Compared with least connections it reads two counters instead of all of
//! them, and because replicas draw independently they do not all stampede
//! onto the same momentarily idle endpoint.
//!
//! Load is `(in_flight + 1) / weight`, as in least connections. On a tie,
//! the endpoint with the lower latency EWMA wins when both have one;
//! otherwise the first draw, itself random.
//!
//! Randomness comes from a SplitMix64 generator shared by all threads
//! through one atomic word. Unavailable (or weight 0) endpoints are rejected
//! and redrawn a bounded number of times; after that, both candidates are
//! drawn from a scan of the survivors.

use std::cmp::Ordering as CmpOrdering;
use std::sync::Arc;

use super::availability::{Availability, MAX_PROBES};
use super::load::{EndpointLoad, cmp_weighted_load, in_flight_at, latency_at};
use super::rng::SplitMix64;

#[derive(Debug)]
pub struct PowerOfTwoChoices {
    weights: Box<[u32]>,
    /// No weight is 0: with `Availability::All` every draw is eligible.
    all_weighted: bool,
    rng: SplitMix64,
}

impl PowerOfTwoChoices {
    /// A selector over endpoints `0..weights.len()`, seeded from the
    /// process's random keys.
    pub fn new(weights: &[u32]) -> Self {
        Self::with_rng(weights, SplitMix64::from_entropy())
    }

    /// A selector whose draws are reproducible (tests, simulations).
    pub fn with_seed(weights: &[u32], seed: u64) -> Self {
        Self::with_rng(weights, SplitMix64::with_seed(seed))
    }

    fn with_rng(weights: &[u32], rng: SplitMix64) -> Self {
        Self { weights: weights.into(), all_weighted: weights.iter().all(|&w| w > 0), rng }
    }

    pub fn len(&self) -> usize {
        self.weights.len()
    }

    pub fn is_empty(&self) -> bool {
        self.weights.is_empty()
    }

    /// The less loaded of two random available endpoints. `loads[i]` is
    /// endpoint `i`'s load; a missing entry counts as idle.
    pub fn pick(&self, loads: &[Arc<EndpointLoad>], available: Availability<'_>) -> Option<usize> {
        let n = self.weights.len();
        let eligible = |i: usize| self.weights[i] > 0 && available.is_available(i);
        let (a, b) = if available.is_all() && self.all_weighted {
            match n {
                0 => return None,
                1 => return Some(0),
                _ => self.two_distinct(n),
            }
        } else {
            match self.draw_eligible(&eligible) {
                Some(pair) => pair,
                None => self.draw_from_survivors(&eligible)?,
            }
        };
        match b {
            Some(b) if self.cmp(loads, b, a) == CmpOrdering::Less => Some(b),
            _ => Some(a),
        }
    }

    /// Two distinct indices in `0..n`, `n >= 2`.
    fn two_distinct(&self, n: usize) -> (usize, Option<usize>) {
        let a = self.rng.below(n);
        let b = self.rng.below(n - 1);
        (a, Some(b + usize::from(b >= a)))
    }

    /// Rejection sampling: a first eligible endpoint, then a distinct second
    /// one if the budget allows. `None` when no first one turned up.
    fn draw_eligible(&self, eligible: &impl Fn(usize) -> bool) -> Option<(usize, Option<usize>)> {
        let n = self.weights.len();
        if n == 0 {
            return None;
        }
        let mut draws = (0..MAX_PROBES).map(|_| self.rng.below(n));
        let a = draws.by_ref().find(|&i| eligible(i))?;
        let b = draws.find(|&i| i != a && eligible(i));
        Some((a, b.or_else(|| self.second_from_survivors(a, eligible))))
    }

    /// Both candidates from an explicit count of the survivors.
    fn draw_from_survivors(&self, eligible: &impl Fn(usize) -> bool) -> Option<(usize, Option<usize>)> {
        let survivors = (0..self.weights.len()).filter(|&i| eligible(i)).count();
        if survivors == 0 {
            return None;
        }
        let a = self.nth_survivor(self.rng.below(survivors), eligible)?;
        Some((a, self.second_from_survivors(a, eligible)))
    }

    /// A random survivor other than `a`, if there is one.
    fn second_from_survivors(&self, a: usize, eligible: &impl Fn(usize) -> bool) -> Option<usize> {
        let others = (0..self.weights.len()).filter(|&i| i != a && eligible(i)).count();
        if others == 0 {
            return None;
        }
        let k = self.rng.below(others);
        (0..self.weights.len()).filter(|&i| i != a && eligible(i)).nth(k)
    }

    fn nth_survivor(&self, k: usize, eligible: &impl Fn(usize) -> bool) -> Option<usize> {
        (0..self.weights.len()).filter(|&i| eligible(i)).nth(k)
    }

    /// Weighted load, then latency EWMA when both endpoints have one.
    fn cmp(&self, loads: &[Arc<EndpointLoad>], a: usize, b: usize) -> CmpOrdering {
        let by_load =
            cmp_weighted_load(in_flight_at(loads, a), self.weights[a], in_flight_at(loads, b), self.weights[b]);
        let by_latency = match (latency_at(loads, a), latency_at(loads, b)) {
            (Some(la), Some(lb)) => la.cmp(&lb),
            _ => CmpOrdering::Equal,
        };
        by_load.then(by_latency)
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;
    use crate::balance::EndpointMask;

    fn mk_loads(in_flight: &[u64]) -> Vec<Arc<EndpointLoad>> {
        in_flight.iter().map(|&n| EndpointLoad::with_in_flight(n)).collect()
    }

    fn counts(
        p2c: &PowerOfTwoChoices,
        loads: &[Arc<EndpointLoad>],
        available: Availability<'_>,
        picks: usize,
    ) -> Vec<u32> {
        let mut counts = vec![0; p2c.len()];
        for _ in 0..picks {
            counts[p2c.pick(loads, available).unwrap()] += 1;
        }
        counts
    }

    #[test]
    fn draws_are_distinct_and_cover_all_pairs() {
        let p2c = PowerOfTwoChoices::with_seed(&[1; 4], 1);
        let mut pairs = [[0u32; 4]; 4];
        for _ in 0..6_000 {
            let (a, b) = p2c.two_distinct(4);
            let b = b.unwrap();
            assert_ne!(a, b);
            pairs[a][b] += 1;
        }
        for (a, row) in pairs.iter().enumerate() {
            for (b, &count) in row.iter().enumerate() {
                if a != b {
                    assert!((400..600).contains(&count), "{a},{b}: {pairs:?}");
                }
            }
        }
    }

    #[test]
    fn two_endpoints_always_go_to_the_less_loaded() {
        let cases: [(&[u32], &[u64], usize); 3] = [
            // (weights, in-flight, expected every time)
            (&[1, 1], &[3, 2], 1),
            (&[1, 1], &[0, 1], 0),
            (&[1, 4], &[1, 4], 1), // 2/1 vs 5/4
        ];
        for (weights, in_flight, expected) in cases {
            let p2c = PowerOfTwoChoices::with_seed(weights, 42);
            let loads = mk_loads(in_flight);
            let got = counts(&p2c, &loads, Availability::All, 200);
            assert_eq!(got[expected], 200, "{weights:?} {in_flight:?}");
        }
    }

    #[test]
    fn the_most_loaded_never_wins_and_the_least_wins_most() {
        let p2c = PowerOfTwoChoices::with_seed(&[1; 4], 7);
        let loads = mk_loads(&[1, 0, 2, 9]);
        let got = counts(&p2c, &loads, Availability::All, 6_000);
        assert_eq!(got[3], 0, "{got:?}");
        // Endpoint 1 wins every draw it is in: 3 of the 6 pairs.
        assert!((2_800..3_200).contains(&got[1]), "{got:?}");
    }

    #[test]
    fn equal_loads_spread_evenly() {
        let p2c = PowerOfTwoChoices::with_seed(&[1; 5], 3);
        let loads = mk_loads(&[0; 5]);
        let got = counts(&p2c, &loads, Availability::All, 10_000);
        for count in &got {
            assert!((1_800..2_200).contains(count), "{got:?}");
        }
    }

    #[test]
    fn latency_breaks_ties() {
        let p2c = PowerOfTwoChoices::with_seed(&[1, 1], 9);
        let loads = mk_loads(&[2, 2]);
        loads[0].observe_latency(Duration::from_millis(40));
        loads[1].observe_latency(Duration::from_millis(5));
        assert_eq!(counts(&p2c, &loads, Availability::All, 100), [0, 100]);
    }

    /// `(name, weights, unavailable, endpoints allowed to win; empty: none)`
    type SkipCase = (&'static str, &'static [u32], &'static [usize], &'static [usize]);

    #[test]
    fn skips_unavailable_and_weight_zero() {
        let cases: [SkipCase; 5] = [
            ("one down", &[1, 1, 1], &[1], &[0, 2]),
            ("one left", &[1, 1, 1], &[0, 2], &[1]),
            ("weight zero", &[0, 1, 0], &[], &[1]),
            ("all down", &[1, 1], &[0, 1], &[]),
            ("empty", &[], &[], &[]),
        ];
        for (name, weights, down, allowed) in cases {
            let p2c = PowerOfTwoChoices::with_seed(weights, 5);
            let loads = mk_loads(&vec![0; weights.len()]);
            let mut mask = EndpointMask::all(weights.len());
            for &i in down {
                mask.set(i, false);
            }
            for _ in 0..100 {
                let got = p2c.pick(&loads, mask.as_availability());
                match got {
                    None => assert!(allowed.is_empty(), "{name}: None"),
                    Some(i) => assert!(allowed.contains(&i), "{name}: {i}"),
                }
            }
        }
    }

    #[test]
    fn survivors_are_compared_when_most_are_down() {
        // 64 endpoints, two up: rejection sampling mostly fails, the scan
        // must still compare both survivors.
        let p2c = PowerOfTwoChoices::with_seed(&[1; 64], 11);
        let loads = mk_loads(&[0; 64]);
        let _busy = loads[40].start();
        let up = |i: usize| i == 10 || i == 40;
        let got = counts(&p2c, &loads, Availability::Predicate(&up), 200);
        assert_eq!(got[10], 200, "{got:?}");
    }

    #[test]
    fn same_seed_same_choices() {
        let loads = mk_loads(&[0; 8]);
        let run = || {
            let p2c = PowerOfTwoChoices::with_seed(&[1; 8], 1234);
            (0..50).map(|_| p2c.pick(&loads, Availability::All).unwrap()).collect::<Vec<_>>()
        };
        assert_eq!(run(), run());
    }
}

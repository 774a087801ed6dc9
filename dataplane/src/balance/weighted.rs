//! Smooth weighted round robin.
//!
//! nginx's smooth weighted round robin (`ngx_http_upstream_get_peer`,
//! nginx 1.7.4+): on every turn each endpoint's running score grows by its
//! weight, the highest score is picked and loses the total weight. Over a
//! cycle of `sum(weights)` turns every endpoint is picked exactly `weight`
//! times, and the heavy endpoint's turns are spread through the cycle rather
//! than sent in a burst (weights 5,1,1 give `a a b a c a a`, not
//! `a a a a a b c`).
//!
//! The scores need a lock to be updated per request, so instead the whole
//! cycle is computed once at build time and requests walk it with one atomic
//! cursor. Weights are first divided by their greatest common divisor; if
//! the cycle would still exceed [`MAX_CYCLE`] turns they are scaled down
//! proportionally (rounding down, but never below 1), so each endpoint's
//! share is off by less than one turn in `MAX_CYCLE` relative to the sum.
//! Building costs O(cycle × endpoints).
//!
//! A weight of 0 means "no new requests". An unavailable endpoint is skipped
//! by taking the next cursor value, which keeps exact proportions among the
//! survivors; after [`MAX_PROBES`](super::availability::MAX_PROBES) misses
//! in a row, the pick falls back to a weighted choice among the survivors.

use std::fmt;
use std::sync::atomic::{AtomicUsize, Ordering};

use super::availability::{Availability, MAX_PROBES};

/// The longest precomputed cycle, in turns.
pub const MAX_CYCLE: u64 = 65_536;

pub struct WeightedRoundRobin {
    /// Endpoint indices, one per turn.
    cycle: Box<[u32]>,
    /// Weights as used in the cycle (reduced, maybe scaled).
    weights: Box<[u32]>,
    cursor: AtomicUsize,
}

impl fmt::Debug for WeightedRoundRobin {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("WeightedRoundRobin")
            .field("weights", &self.weights)
            .field("cycle_len", &self.cycle.len())
            .finish_non_exhaustive()
    }
}

impl WeightedRoundRobin {
    /// Builds the cycle for endpoints `0..weights.len()`.
    pub fn new(weights: &[u32]) -> Self {
        let weights = cycle_weights(weights);
        Self { cycle: smooth_cycle(&weights), weights, cursor: AtomicUsize::new(0) }
    }

    /// Number of endpoints (including weight 0 ones).
    pub fn len(&self) -> usize {
        self.weights.len()
    }

    pub fn is_empty(&self) -> bool {
        self.weights.is_empty()
    }

    /// The precomputed cycle of endpoint indices.
    pub fn cycle(&self) -> &[u32] {
        &self.cycle
    }

    /// The next endpoint in the cycle that is available.
    pub fn pick(&self, available: Availability<'_>) -> Option<usize> {
        if self.cycle.is_empty() {
            return None;
        }
        if available.is_all() {
            return Some(self.turn());
        }
        for _ in 0..MAX_PROBES {
            let i = self.turn();
            if available.is_available(i) {
                return Some(i);
            }
        }
        self.pick_among_survivors(available)
    }

    fn turn(&self) -> usize {
        let n = self.cursor.fetch_add(1, Ordering::Relaxed);
        self.cycle[n % self.cycle.len()] as usize
    }

    /// Weighted (not smooth) choice among the available endpoints: the
    /// cursor indexes their cumulative weights.
    fn pick_among_survivors(&self, available: Availability<'_>) -> Option<usize> {
        let survivors = || self.weights.iter().enumerate().filter(|&(i, &w)| w > 0 && available.is_available(i));
        let total: u64 = survivors().map(|(_, &w)| u64::from(w)).sum();
        if total == 0 {
            return None;
        }
        let mut target = self.cursor.fetch_add(1, Ordering::Relaxed) as u64 % total;
        for (i, &w) in survivors() {
            if target < u64::from(w) {
                return Some(i);
            }
            target -= u64::from(w);
        }
        None
    }
}

/// Weights divided by their GCD, then scaled so their sum fits `MAX_CYCLE`.
fn cycle_weights(weights: &[u32]) -> Box<[u32]> {
    let divisor = weights.iter().fold(0, |g, &w| gcd(g, w)).max(1);
    let reduced: Vec<u64> = weights.iter().map(|&w| u64::from(w / divisor)).collect();
    let sum: u64 = reduced.iter().sum();
    let scale = |w: u64| {
        if sum <= MAX_CYCLE || w == 0 {
            w
        } else {
            (u128::from(w) * u128::from(MAX_CYCLE) / u128::from(sum)).max(1) as u64
        }
    };
    reduced.iter().map(|&w| u32::try_from(scale(w)).unwrap_or(u32::MAX)).collect()
}

fn gcd(a: u32, b: u32) -> u32 {
    if b == 0 { a } else { gcd(b, a % b) }
}

/// nginx's smooth weighted round robin, run for one full cycle.
fn smooth_cycle(weights: &[u32]) -> Box<[u32]> {
    let total: i64 = weights.iter().map(|&w| i64::from(w)).sum();
    let mut score = vec![0i64; weights.len()];
    let mut cycle = Vec::with_capacity(usize::try_from(total).unwrap_or(0));
    for _ in 0..total {
        let mut best: Option<usize> = None;
        for (i, &w) in weights.iter().enumerate() {
            if w == 0 {
                continue;
            }
            score[i] += i64::from(w);
            if best.is_none_or(|b| score[i] > score[b]) {
                best = Some(i);
            }
        }
        let Some(best) = best else { break };
        score[best] -= total;
        cycle.push(u32::try_from(best).unwrap_or(u32::MAX));
    }
    cycle.into_boxed_slice()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::balance::EndpointMask;

    fn counts(picks: impl IntoIterator<Item = usize>, len: usize) -> Vec<u64> {
        let mut counts = vec![0; len];
        for i in picks {
            counts[i] += 1;
        }
        counts
    }

    #[test]
    fn follows_nginx_smooth_sequence() {
        let cases: [(&[u32], &str); 5] = [
            (&[5, 1, 1], "aabacaa"),
            (&[1, 3], "babb"),
            (&[2, 2], "ab"), // reduced by the GCD
            (&[1, 1, 1], "abc"),
            (&[0, 2, 1], "bcb"),
        ];
        for (weights, expected) in cases {
            let wrr = WeightedRoundRobin::new(weights);
            let got: String =
                (0..expected.len()).map(|_| char::from(b'a' + wrr.pick(Availability::All).unwrap() as u8)).collect();
            assert_eq!(got, expected, "{weights:?}");
        }
    }

    #[test]
    fn proportions_exact_over_a_cycle_and_never_bursty() {
        let cases: [&[u32]; 5] = [&[1, 3], &[5, 1, 1], &[3, 7, 11, 13], &[100, 1], &[1; 10]];
        for weights in cases {
            let wrr = WeightedRoundRobin::new(weights);
            let total: u64 = weights.iter().map(|&w| u64::from(w)).sum();
            let cycle = wrr.cycle();
            assert_eq!(cycle.len() as u64, total, "{weights:?}");
            let got = counts(cycle.iter().map(|&i| i as usize), weights.len());
            let want: Vec<u64> = weights.iter().map(|&w| u64::from(w)).collect();
            assert_eq!(got, want, "{weights:?}");

            // Smoothness: after any prefix of k turns, every endpoint has
            // been picked within one turn of its exact share k * w / total.
            let mut seen = vec![0i64; weights.len()];
            for (k, &i) in cycle.iter().enumerate() {
                seen[i as usize] += 1;
                for (j, &w) in weights.iter().enumerate() {
                    let ideal = (k as f64 + 1.0) * f64::from(w) / total as f64;
                    let error = (seen[j] as f64 - ideal).abs();
                    assert!(error < 1.0, "{weights:?}: turn {k}, endpoint {j} off by {error}");
                }
            }
        }
    }

    #[test]
    fn large_weights_are_scaled_to_a_bounded_cycle() {
        let cases: [&[u32]; 3] = [&[100_000, 1], &[u32::MAX, u32::MAX - 1, 3], &[70_000, 60_000]];
        for weights in cases {
            let wrr = WeightedRoundRobin::new(weights);
            let len = wrr.cycle().len() as u64;
            assert!(len <= MAX_CYCLE + weights.len() as u64, "{weights:?}: {len}");
            let got = counts(wrr.cycle().iter().map(|&i| i as usize), weights.len());
            let total: f64 = weights.iter().map(|&w| f64::from(w)).sum();
            for (j, &w) in weights.iter().enumerate() {
                assert!(got[j] >= 1, "{weights:?}: endpoint {j} lost its turns");
                let share = got[j] as f64 / len as f64;
                let want = f64::from(w) / total;
                assert!((share - want).abs() < 1e-4 + 1.0 / len as f64, "{weights:?}: {j}");
            }
        }
    }

    #[test]
    fn degenerate_weights() {
        let cases: [&[u32]; 3] = [&[], &[0], &[0, 0, 0]];
        for weights in cases {
            let wrr = WeightedRoundRobin::new(weights);
            assert_eq!(wrr.pick(Availability::All), None, "{weights:?}");
            assert_eq!(wrr.pick(Availability::Mask(&[1])), None, "{weights:?}");
        }
    }

    #[test]
    fn skipping_unavailable_keeps_proportions_among_survivors() {
        // a:1 b:1 c:2, b down: over 6 picks, c must get twice a's share.
        let wrr = WeightedRoundRobin::new(&[1, 1, 2]);
        let mut mask = EndpointMask::all(3);
        mask.set(1, false);
        let got = counts((0..300).map(|_| wrr.pick(mask.as_availability()).unwrap()), 3);
        assert_eq!(got, [100, 0, 200]);
    }

    #[test]
    fn falls_back_when_only_light_endpoints_survive() {
        // The only survivor appears once in 1001 turns.
        let wrr = WeightedRoundRobin::new(&[1000, 1, 0]);
        let mut mask = EndpointMask::all(3);
        mask.set(0, false);
        for _ in 0..50 {
            assert_eq!(wrr.pick(mask.as_availability()), Some(1));
        }
        mask.set(1, false);
        assert_eq!(wrr.pick(mask.as_availability()), None, "weight 0 never serves");
    }

    #[test]
    fn concurrent_picks_keep_exact_proportions() {
        let wrr = WeightedRoundRobin::new(&[1, 3]);
        let per_thread = 1_000; // 4 threads x 1000 = 1000 full cycles
        let picks: Vec<usize> = std::thread::scope(|s| {
            let workers: Vec<_> = (0..4)
                .map(|_| s.spawn(|| (0..per_thread).map(|_| wrr.pick(Availability::All).unwrap()).collect::<Vec<_>>()))
                .collect();
            workers.into_iter().flat_map(|w| w.join().unwrap()).collect()
        });
        assert_eq!(counts(picks, 2), [1_000, 3_000]);
    }
}

//! Least connections, weight-normalised.
//!
//! Picks the available endpoint with the lowest `(in_flight + 1) / weight`:
//! the load it would carry after taking this request, relative to its
//! capacity (the weighted "least_conn" of nginx and HAProxy's `leastconn`).
//! The `+ 1` lets weights count even when everything is idle.
//!
//! In-flight counts belong to the [`EndpointLoad`]s passed with each pick,
//! not to the selector, so they survive snapshot swaps. A pick reads them
//! with relaxed atomic loads; two concurrent picks may choose the same
//! endpoint, which the next picks correct.
//!
//! Ties (the common case under light load) are broken by rotation: the
//! selector's cursor chooses which of the tied endpoints wins, so equal
//! loads spread evenly instead of piling onto the lowest index.
//!
//! Cost: two passes over the endpoints, no allocation.

use std::cmp::Ordering as CmpOrdering;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};

use super::availability::Availability;
use super::load::{EndpointLoad, cmp_weighted_load, in_flight_at};

#[derive(Debug)]
pub struct LeastConnections {
    weights: Box<[u32]>,
    cursor: AtomicUsize,
}

impl LeastConnections {
    /// A selector over endpoints `0..weights.len()`; weight 0 endpoints get
    /// no new requests.
    pub fn new(weights: &[u32]) -> Self {
        Self { weights: weights.into(), cursor: AtomicUsize::new(0) }
    }

    pub fn len(&self) -> usize {
        self.weights.len()
    }

    pub fn is_empty(&self) -> bool {
        self.weights.is_empty()
    }

    /// The least loaded available endpoint. `loads[i]` is endpoint `i`'s
    /// load; a missing entry counts as idle.
    pub fn pick(&self, loads: &[Arc<EndpointLoad>], available: Availability<'_>) -> Option<usize> {
        let eligible = |i: usize| self.weights[i] > 0 && available.is_available(i);
        let cmp = |i: usize, (f, w): (u64, u32)| cmp_weighted_load(in_flight_at(loads, i), self.weights[i], f, w);

        // Pass 1: the lowest load, and how many endpoints share it.
        let mut least: Option<(usize, (u64, u32))> = None;
        let mut ties = 0;
        for i in (0..self.weights.len()).filter(|&i| eligible(i)) {
            let order = least.map_or(CmpOrdering::Less, |(_, best)| cmp(i, best));
            match order {
                CmpOrdering::Less => {
                    least = Some((i, (in_flight_at(loads, i), self.weights[i])));
                    ties = 1;
                }
                CmpOrdering::Equal => ties += 1,
                CmpOrdering::Greater => {}
            }
        }
        let (first, best) = least?;
        if ties == 1 {
            return Some(first);
        }

        // Pass 2: the tie the cursor points at. Loads may have moved since
        // pass 1; then the first least loaded endpoint is good enough.
        let chosen = self.cursor.fetch_add(1, Ordering::Relaxed) % ties;
        (0..self.weights.len())
            .filter(|&i| eligible(i) && cmp(i, best) == CmpOrdering::Equal)
            .nth(chosen)
            .or(Some(first))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::balance::EndpointMask;

    fn mk_loads(in_flight: &[u64]) -> Vec<Arc<EndpointLoad>> {
        in_flight.iter().map(|&n| EndpointLoad::with_in_flight(n)).collect()
    }

    struct Case {
        name: &'static str,
        weights: &'static [u32],
        in_flight: &'static [u64],
        unavailable: &'static [usize],
        expected: Option<usize>,
    }

    const fn case(
        name: &'static str,
        weights: &'static [u32],
        in_flight: &'static [u64],
        unavailable: &'static [usize],
        expected: Option<usize>,
    ) -> Case {
        Case { name, weights, in_flight, unavailable, expected }
    }

    #[test]
    fn picks_the_least_loaded() {
        let cases = [
            case("fewest wins", &[1, 1, 1], &[3, 1, 2], &[], Some(1)),
            case("weight normalised", &[1, 3], &[2, 3], &[], Some(1)), // 3/1 vs 4/3
            case("heavy idle preferred", &[1, 4], &[0, 0], &[], Some(1)),
            case("heavy until it is full", &[1, 4], &[0, 4], &[], Some(0)), // 1/1 vs 5/4
            case("skips unavailable", &[1, 1, 1], &[3, 1, 2], &[1], Some(2)),
            case("weight 0 never", &[0, 1], &[0, 9], &[], Some(1)),
            case("none available", &[1, 1], &[0, 0], &[0, 1], None),
            case("missing load is idle", &[1, 1, 1], &[5, 5], &[], Some(2)),
        ];
        for c in cases {
            let lc = LeastConnections::new(c.weights);
            let mut mask = EndpointMask::all(c.weights.len());
            for &i in c.unavailable {
                mask.set(i, false);
            }
            let loads = mk_loads(c.in_flight);
            assert_eq!(lc.pick(&loads, mask.as_availability()), c.expected, "{}", c.name);
        }
        assert_eq!(LeastConnections::new(&[]).pick(&[], Availability::All), None);
    }

    #[test]
    fn ties_rotate_over_the_tied_endpoints_only() {
        let lc = LeastConnections::new(&[1, 1, 1, 1]);
        let loads = mk_loads(&[2, 0, 5, 0]);
        let picks: Vec<_> = (0..6).map(|_| lc.pick(&loads, Availability::All).unwrap()).collect();
        assert_eq!(picks, [1, 3, 1, 3, 1, 3]);
    }

    #[test]
    fn guards_steer_new_requests_away() {
        // Each request is held open: the picks fill endpoints in proportion
        // to their weights, and a finished request frees its endpoint.
        let lc = LeastConnections::new(&[1, 2]);
        let loads = mk_loads(&[0, 0]);
        let mut held = Vec::new();
        for _ in 0..6 {
            let i = lc.pick(&loads, Availability::All).unwrap();
            held.push((i, loads[i].start()));
        }
        assert_eq!(loads[0].in_flight(), 2);
        assert_eq!(loads[1].in_flight(), 4);

        held.retain(|(i, _)| *i != 0);
        assert_eq!(lc.pick(&loads, Availability::All), Some(0));
    }
}

//! Strict rotation over a backend's endpoints.
//!
//! One atomic cursor, bumped per pick. Weights are ignored. An unavailable
//! endpoint is skipped by taking the next cursor value, so the survivors
//! keep an exact rotation among themselves (skipping to the neighbour
//! instead would hand it a double share).

use std::sync::atomic::{AtomicUsize, Ordering};

use super::availability::{Availability, MAX_PROBES};

/// A lock-free rotation cursor.
#[derive(Debug, Default)]
pub struct RoundRobin {
    next: AtomicUsize,
}

impl RoundRobin {
    /// The next item in rotation, or `None` for an empty slice.
    pub fn pick<'a, T>(&self, items: &'a [T]) -> Option<&'a T> {
        if items.is_empty() {
            return None;
        }
        let n = self.next.fetch_add(1, Ordering::Relaxed);
        items.get(n % items.len())
    }

    /// The index of the next available endpoint among `len`, or `None`
    /// when none is available.
    pub fn pick_index(&self, len: usize, available: Availability<'_>) -> Option<usize> {
        if len == 0 {
            return None;
        }
        if available.is_all() {
            return Some(self.next.fetch_add(1, Ordering::Relaxed) % len);
        }
        for _ in 0..len.min(MAX_PROBES) {
            let i = self.next.fetch_add(1, Ordering::Relaxed) % len;
            if available.is_available(i) {
                return Some(i);
            }
        }
        // Most endpoints are out: rotate over the survivors directly.
        let survivors = available.count(len);
        if survivors == 0 {
            return None;
        }
        available.nth(len, self.next.fetch_add(1, Ordering::Relaxed) % survivors)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::balance::EndpointMask;

    #[test]
    fn rotates_in_order_and_wraps() {
        let rr = RoundRobin::default();
        let items = ["a", "b", "c"];
        let picked: Vec<_> = (0..7).map(|_| *rr.pick(&items).unwrap()).collect();
        assert_eq!(picked, ["a", "b", "c", "a", "b", "c", "a"]);
    }

    #[test]
    fn empty_gives_none() {
        let rr = RoundRobin::default();
        let items: [u8; 0] = [];
        assert!(rr.pick(&items).is_none());
        assert_eq!(rr.pick_index(0, Availability::All), None);
    }

    #[test]
    fn pick_index_skips_unavailable_keeping_exact_rotation() {
        let cases: [(&str, usize, &[usize], &[usize]); 4] = [
            // (name, endpoints, unavailable, expected picks)
            ("all up", 3, &[], &[0, 1, 2, 0, 1, 2]),
            ("middle down", 3, &[1], &[0, 2, 0, 2, 0, 2]),
            ("all but one down", 4, &[0, 1, 3], &[2, 2, 2, 2]),
            ("all down", 2, &[0, 1], &[]),
        ];
        for (name, len, down, expected) in cases {
            let rr = RoundRobin::default();
            let mut mask = EndpointMask::all(len);
            for &i in down {
                mask.set(i, false);
            }
            let picks: Vec<_> =
                (0..expected.len().max(1)).filter_map(|_| rr.pick_index(len, mask.as_availability())).collect();
            assert_eq!(picks, expected, "{name}");
        }
    }

    #[test]
    fn pick_index_falls_back_when_most_are_down() {
        // 40 endpoints, only 38 and 39 up: more than MAX_PROBES misses in a row.
        let rr = RoundRobin::default();
        let up = |i: usize| i >= 38;
        let picks: Vec<_> = (0..4).map(|_| rr.pick_index(40, Availability::Predicate(&up)).unwrap()).collect();
        assert!(picks.iter().all(|&i| i >= 38), "{picks:?}");
        assert!(picks.contains(&38) && picks.contains(&39), "{picks:?}");
    }
}

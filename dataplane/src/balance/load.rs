//! Per-endpoint load: in-flight requests and a latency EWMA.
//!
//! Load-aware selectors (least connections, power of two choices) read it;
//! they never own it. An [`EndpointLoad`] is shared as `Arc` and lives beside
//! the snapshots, keyed by endpoint identity (see `LoadRegistry`), so that a
//! configuration change does not reset the counters (DESIGN.md, "State that
//! must outlive a snapshot").
//!
//! A request counts from the pick until its [`InFlightGuard`] drops. The
//! proxy keeps the guard inside the response body, so a stream or a
//! WebSocket counts until it ends, not until the headers went out (as
//! linkerd2-proxy does).

use std::cmp::Ordering as CmpOrdering;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

/// Weight of a new latency sample in the EWMA: 1/8, as TCP's smoothed RTT
/// (RFC 6298).
const EWMA_NEW_SAMPLE_EIGHTHS: u128 = 1;

/// Live load of one endpoint. All updates are single atomic operations.
#[derive(Debug, Default)]
pub struct EndpointLoad {
    in_flight: AtomicU64,
    /// Microseconds; 0 means no sample yet (real samples are stored as >= 1).
    latency_ewma_us: AtomicU64,
}

impl EndpointLoad {
    pub fn new() -> Self {
        Self::default()
    }

    /// Requests picked for this endpoint whose guard has not dropped yet.
    pub fn in_flight(&self) -> u64 {
        self.in_flight.load(Ordering::Relaxed)
    }

    /// Smoothed latency in microseconds, `None` before the first sample.
    pub fn latency_ewma_us(&self) -> Option<u64> {
        match self.latency_ewma_us.load(Ordering::Relaxed) {
            0 => None,
            us => Some(us),
        }
    }

    /// Folds one latency sample (e.g. time to response headers) into the
    /// EWMA. Lock-free: a compare-and-swap loop on one word.
    pub fn observe_latency(&self, latency: Duration) {
        let sample = u64::try_from(latency.as_micros()).unwrap_or(u64::MAX).max(1);
        let _always_some = self.latency_ewma_us.fetch_update(Ordering::Relaxed, Ordering::Relaxed, |old| {
            Some(if old == 0 { sample } else { ewma(old, sample) })
        });
    }

    /// Counts one more request in flight until the returned guard drops.
    pub fn start(self: &Arc<Self>) -> InFlightGuard {
        self.in_flight.fetch_add(1, Ordering::Relaxed);
        InFlightGuard { load: Arc::clone(self) }
    }

    #[cfg(test)]
    pub(crate) fn with_in_flight(in_flight: u64) -> Arc<Self> {
        let load = Self::new();
        load.in_flight.store(in_flight, Ordering::Relaxed);
        Arc::new(load)
    }
}

fn ewma(old: u64, sample: u64) -> u64 {
    let keep = 8 - EWMA_NEW_SAMPLE_EIGHTHS;
    let mixed = (u128::from(old) * keep + u128::from(sample) * EWMA_NEW_SAMPLE_EIGHTHS + 4) / 8;
    u64::try_from(mixed).unwrap_or(u64::MAX).max(1)
}

/// In-flight count of endpoint `i`; an endpoint without a load entry counts
/// as idle.
pub(crate) fn in_flight_at(loads: &[Arc<EndpointLoad>], i: usize) -> u64 {
    loads.get(i).map_or(0, |load| load.in_flight())
}

pub(crate) fn latency_at(loads: &[Arc<EndpointLoad>], i: usize) -> Option<u64> {
    loads.get(i).and_then(|load| load.latency_ewma_us())
}

/// Compares two endpoints by the load each would carry after taking one
/// more request, normalised by weight: `(in_flight + 1) / weight`.
///
/// The `+ 1` matters: with plain `in_flight / weight`, idle endpoints all tie
/// at zero and weights would be ignored whenever concurrency is low. Cross
/// multiplication in `u128` keeps it exact. Weights must be non-zero.
pub(crate) fn cmp_weighted_load(a_in_flight: u64, a_weight: u32, b_in_flight: u64, b_weight: u32) -> CmpOrdering {
    let a = (u128::from(a_in_flight) + 1) * u128::from(b_weight);
    let b = (u128::from(b_in_flight) + 1) * u128::from(a_weight);
    a.cmp(&b)
}

// === impl InFlightGuard ===

/// One request in flight on an endpoint; dropping it ends the count.
#[derive(Debug)]
#[must_use = "the request stops counting as in flight when the guard drops"]
pub struct InFlightGuard {
    load: Arc<EndpointLoad>,
}

impl InFlightGuard {
    pub fn load(&self) -> &EndpointLoad {
        &self.load
    }
}

impl Drop for InFlightGuard {
    fn drop(&mut self) {
        self.load.in_flight.fetch_sub(1, Ordering::Relaxed);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn guard_counts_until_dropped() {
        let load = Arc::new(EndpointLoad::new());
        let first = load.start();
        let second = load.start();
        assert_eq!(load.in_flight(), 2);
        drop(first);
        assert_eq!(load.in_flight(), 1);
        assert_eq!(second.load().in_flight(), 1);
        drop(second);
        assert_eq!(load.in_flight(), 0);
    }

    #[test]
    fn guards_balance_across_threads() {
        let load = Arc::new(EndpointLoad::new());
        std::thread::scope(|s| {
            for _ in 0..4 {
                s.spawn(|| {
                    for _ in 0..1_000 {
                        let _guard = load.start();
                    }
                });
            }
        });
        assert_eq!(load.in_flight(), 0);
    }

    #[test]
    fn latency_ewma() {
        let load = EndpointLoad::new();
        assert_eq!(load.latency_ewma_us(), None);
        let steps = [
            // (sample µs, expected EWMA µs)
            (800, 800),   // the first sample is taken as is
            (1_600, 900), // 800 + (1600 - 800) / 8
            (900, 900),   // steady
            (0, 788),     // a 0 µs sample counts as 1 µs
        ];
        for (sample, expected) in steps {
            load.observe_latency(Duration::from_micros(sample));
            assert_eq!(load.latency_ewma_us(), Some(expected), "after {sample}");
        }
    }

    #[test]
    fn weighted_load_order() {
        use CmpOrdering::*;
        let cases = [
            // (a in-flight, a weight, b in-flight, b weight, a vs b)
            (0, 1, 1, 1, Less),
            (2, 1, 2, 1, Equal),
            (0, 1, 0, 3, Greater), // idle: the heavier endpoint is preferred
            (3, 1, 7, 2, Equal),   // 4/1 vs 8/2
            (2, 1, 3, 3, Greater), // 3/1 vs 4/3
            (u64::MAX, u32::MAX, u64::MAX, u32::MAX, Equal),
        ];
        for (af, aw, bf, bw, expected) in cases {
            assert_eq!(cmp_weighted_load(af, aw, bf, bw), expected, "{af}/{aw} vs {bf}/{bw}");
        }
    }
}

//! Per-endpoint health state and its registry.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicU32, AtomicU64, Ordering};
use std::sync::{Arc, LazyLock};

use crate::balance::EndpointRegistry;
use std::time::{Duration, Instant};

use serde::Serialize;

/// The process-wide time base for ejection deadlines (atomics hold
/// milliseconds since it).
static EPOCH: LazyLock<Instant> = LazyLock::new(Instant::now);

fn now_ms() -> u64 {
    let since = crate::clock::coarse_now().saturating_duration_since(*EPOCH);
    u64::try_from(since.as_millis()).unwrap_or(u64::MAX)
}

/// Bumped whenever an endpoint may have become unavailable, or available
/// again, by an event (the active check's verdict changed, a passive
/// ejection began). An ejection that ends by time does not bump it; an
/// [`AvailabilitySummary`] rechecks at the deadline instead. Starts at 1:
/// a summary tag of 0 means "never computed".
static CHANGES: AtomicU64 = AtomicU64::new(1);

fn changed() {
    CHANGES.fetch_add(1, Ordering::AcqRel);
}

/// Whether all of a backend's endpoints take new requests, remembered
/// between requests, so that a pick does not read the health of every
/// endpoint (10,000 of them for a large Service) to learn that they all
/// do. Recomputed after any health event anywhere in the process, and, when
/// some endpoint was passively ejected, once its ejection ends.
#[derive(Debug, Default)]
pub struct AvailabilitySummary {
    /// `changes << 1 | all_available`, as of the [`CHANGES`] value read
    /// before the last scan; 0 until the first.
    tag: AtomicU64,
    /// When not all were available only because of ejections: the
    /// earliest ejection deadline (ms since [`EPOCH`]), after which the
    /// answer may have changed. `u64::MAX` when only an event can change it.
    recheck_at: AtomicU64,
    /// One scan at a time: the pair above is written only by its holder,
    /// and concurrent picks do not all read every endpoint.
    scanning: AtomicBool,
}

impl AvailabilitySummary {
    /// Are all of `health` available? `health` must be the same endpoints
    /// every time for one summary (a backend's, attached once).
    pub fn all_available(&self, health: &[Arc<EndpointHealth>]) -> bool {
        if health.is_empty() {
            return true;
        }
        let changes = CHANGES.load(Ordering::Acquire);
        let tag = self.tag.load(Ordering::Acquire);
        if tag >> 1 == changes {
            if tag & 1 == 1 {
                return true;
            }
            if now_ms() < self.recheck_at.load(Ordering::Relaxed) {
                return false;
            }
        }
        // Scan. An event during the scan bumps CHANGES past `changes`, so
        // the tag stored below is stale at once and the next call scans
        // again: a summary never says "all" for longer than it was true.
        // While another thread scans, "not all" sends this pick to the
        // per-endpoint check, which is always correct.
        if self.scanning.swap(true, Ordering::Acquire) {
            return false;
        }
        let now = now_ms();
        let mut all = true;
        let mut recheck_at = u64::MAX;
        for h in health {
            if !h.active_ok.load(Ordering::Relaxed) {
                all = false;
                continue;
            }
            let until = h.ejected_until.load(Ordering::Relaxed);
            if until != 0 && until > now {
                all = false;
                recheck_at = recheck_at.min(until);
            }
        }
        self.recheck_at.store(recheck_at, Ordering::Relaxed);
        self.tag.store(changes << 1 | u64::from(all), Ordering::Release);
        self.scanning.store(false, Ordering::Release);
        all
    }
}

/// Passive outlier detection settings (BalancerPolicy
/// `healthCheck.passive`), with the defaults used without a policy.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct PassiveConfig {
    /// Connect errors, resets and 502/503/504 in a row that eject.
    pub consecutive_failures: u32,
    /// First ejection; doubles on each repeat, capped at 10× this.
    pub ejection_time: Duration,
    /// Never eject more than this share of a backend's endpoints.
    pub max_ejection_percent: u32,
}

impl Default for PassiveConfig {
    fn default() -> Self {
        Self { consecutive_failures: 5, ejection_time: Duration::from_secs(30), max_ejection_percent: 50 }
    }
}

/// Health of one endpoint.
#[derive(Debug)]
pub struct EndpointHealth {
    addr: SocketAddr,
    /// Cleared by the active check after `unhealthyThreshold` failures.
    active_ok: AtomicBool,
    /// Passive ejection deadline (ms since [`EPOCH`]); 0 when not ejected.
    ejected_until: AtomicU64,
    consecutive_failures: AtomicU32,
    /// Ejections so far, for the doubling ejection time.
    ejections: AtomicU32,
    /// When the endpoint (re)joined the rotation: first seen or last
    /// recovered by the active check (ms since [`EPOCH`]); 0 = from the
    /// start (no slow start).
    joined_at: AtomicU64,
}

impl Serialize for EndpointHealth {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        use serde::ser::SerializeStruct;
        let mut st = s.serialize_struct("EndpointHealth", 4)?;
        st.serialize_field("endpoint", &self.addr)?;
        st.serialize_field("activeHealthy", &self.active_ok.load(Ordering::Relaxed))?;
        st.serialize_field("ejected", &self.is_ejected())?;
        st.serialize_field("consecutiveFailures", &self.consecutive_failures.load(Ordering::Relaxed))?;
        st.end()
    }
}

impl EndpointHealth {
    pub fn new(addr: SocketAddr) -> Self {
        Self {
            addr,
            active_ok: AtomicBool::new(true),
            ejected_until: AtomicU64::new(0),
            consecutive_failures: AtomicU32::new(0),
            ejections: AtomicU32::new(0),
            joined_at: AtomicU64::new(0),
        }
    }

    /// Marks the endpoint as joining now (slow start begins).
    pub fn mark_joined(&self) {
        self.joined_at.store(now_ms().max(1), Ordering::Relaxed);
    }

    /// Slow-start share in `[0, 1]`: how far into `window` the endpoint is
    /// since it joined, recovered or came back from an ejection.
    pub fn ramp(&self, window: Duration) -> f64 {
        let window_ms = window.as_millis() as f64;
        if window_ms <= 0.0 {
            return 1.0;
        }
        let since = self.joined_at.load(Ordering::Relaxed).max(self.ejected_until.load(Ordering::Relaxed));
        if since == 0 {
            return 1.0;
        }
        let elapsed = now_ms().saturating_sub(since) as f64;
        (elapsed / window_ms).clamp(0.0, 1.0)
    }

    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// May this endpoint take new requests?
    pub fn is_available(&self) -> bool {
        self.active_ok.load(Ordering::Relaxed) && !self.is_ejected()
    }

    pub fn is_ejected(&self) -> bool {
        let until = self.ejected_until.load(Ordering::Relaxed);
        until != 0 && until > now_ms()
    }

    pub fn active_ok(&self) -> bool {
        self.active_ok.load(Ordering::Relaxed)
    }

    /// Records the active check's verdict; returns true when it changed.
    /// Recovery starts a slow start.
    pub fn set_active(&self, ok: bool) -> bool {
        let changed = self.active_ok.swap(ok, Ordering::Relaxed) != ok;
        if changed {
            if ok {
                self.mark_joined();
            }
            self::changed();
        }
        changed
    }

    /// A request succeeded: the failure streak ends (and, after an
    /// ejection expired, the repeat counter decays).
    pub fn record_success(&self) {
        if self.consecutive_failures.swap(0, Ordering::Relaxed) != 0 && !self.is_ejected() {
            let _ = self.ejections.fetch_update(Ordering::Relaxed, Ordering::Relaxed, |n| Some(n.saturating_sub(1)));
        }
    }

    /// A request failed (connect error, reset, 502/503/504). Returns the
    /// ejection time when this failure ejects the endpoint; `may_eject`
    /// says whether the backend's ejection budget allows it (asked only
    /// when the streak reaches the threshold: it may read every endpoint).
    pub fn record_failure(&self, config: &PassiveConfig, may_eject: impl FnOnce() -> bool) -> Option<Duration> {
        let streak = self.consecutive_failures.fetch_add(1, Ordering::Relaxed) + 1;
        if streak < config.consecutive_failures.max(1) || self.is_ejected() || !may_eject() {
            return None;
        }
        let repeat = self.ejections.fetch_add(1, Ordering::Relaxed).min(10);
        let time = (config.ejection_time * 2u32.saturating_pow(repeat)).min(config.ejection_time * 10);
        let until = now_ms() + u64::try_from(time.as_millis()).unwrap_or(u64::MAX / 2);
        self.ejected_until.store(until.max(1), Ordering::Relaxed);
        self.consecutive_failures.store(0, Ordering::Relaxed);
        changed();
        Some(time)
    }
}

/// Health keyed by endpoint identity, so that it survives snapshot swaps
/// (an [`EndpointRegistry`]); an endpoint no snapshot lists is forgotten.
#[derive(Debug, Default)]
pub struct HealthRegistry {
    entries: EndpointRegistry<EndpointHealth>,
    /// After the first snapshot, new endpoints are marked as joining (slow
    /// start); those of the first snapshot are not.
    started: AtomicBool,
}

impl HealthRegistry {
    /// Call once the first snapshot's endpoints are resolved.
    pub fn mark_started(&self) {
        self.started.store(true, Ordering::Relaxed);
    }

    /// Forgets endpoints no snapshot lists and nothing else holds; once per
    /// snapshot build.
    pub fn sweep(&self) {
        self.entries.sweep();
    }

    /// The health of `endpoints`, in order, reusing live entries.
    pub fn resolve(&self, endpoints: impl IntoIterator<Item = SocketAddr>) -> Box<[Arc<EndpointHealth>]> {
        let joining = self.started.load(Ordering::Relaxed);
        self.entries.resolve_with(endpoints, |addr| {
            let fresh = EndpointHealth::new(addr);
            if joining {
                fresh.mark_joined();
            }
            fresh
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ejects_after_the_threshold_and_doubles_on_repeat() {
        let h = EndpointHealth::new("10.0.0.1:80".parse().unwrap());
        let cfg =
            PassiveConfig { consecutive_failures: 3, ejection_time: Duration::from_secs(10), max_ejection_percent: 50 };
        assert_eq!(h.record_failure(&cfg, || true), None);
        h.record_success();
        assert_eq!(h.record_failure(&cfg, || true), None);
        assert_eq!(h.record_failure(&cfg, || true), None);
        assert_eq!(h.record_failure(&cfg, || true), Some(Duration::from_secs(10)));
        assert!(h.is_ejected() && !h.is_available());
        // Expire it by hand, then a repeat ejection doubles.
        h.ejected_until.store(0, Ordering::Relaxed);
        assert!(h.is_available());
        for _ in 0..2 {
            assert_eq!(h.record_failure(&cfg, || true), None);
        }
        assert_eq!(h.record_failure(&cfg, || true), Some(Duration::from_secs(20)));
    }

    #[test]
    fn availability_summary_follows_events_and_ejection_deadlines() {
        let health: Vec<_> =
            (1..=3).map(|i| Arc::new(EndpointHealth::new(SocketAddr::from(([10, 0, 0, i], 80))))).collect();
        let summary = AvailabilitySummary::default();
        assert!(summary.all_available(&health));
        assert!(summary.all_available(&health), "remembered");
        health[1].set_active(false);
        assert!(!summary.all_available(&health), "an active-check failure is seen at once");
        health[1].set_active(true);
        assert!(summary.all_available(&health), "so is the recovery");

        let cfg = PassiveConfig {
            consecutive_failures: 1,
            ejection_time: Duration::from_secs(30),
            max_ejection_percent: 100,
        };
        assert!(health[2].record_failure(&cfg, || true).is_some());
        assert!(!summary.all_available(&health), "an ejection is seen at once");
        assert!(!summary.all_available(&health));
        assert!(summary.recheck_at.load(Ordering::Relaxed) > now_ms(), "rechecked when the ejection ends");
        // The clock reaching the deadline, without waiting for it: the
        // ejection is over, and so is the summary's recheck time.
        health[2].ejected_until.store(now_ms(), Ordering::Relaxed);
        assert!(!summary.all_available(&health), "no event: the summary waits for its deadline");
        summary.recheck_at.store(now_ms(), Ordering::Relaxed);
        assert!(summary.all_available(&health), "the ejection ended by time");
        assert!(AvailabilitySummary::default().all_available(&[]));
    }

    #[test]
    fn the_budget_can_forbid_ejection() {
        let h = EndpointHealth::new("10.0.0.1:80".parse().unwrap());
        let cfg = PassiveConfig { consecutive_failures: 1, ..PassiveConfig::default() };
        assert_eq!(h.record_failure(&cfg, || false), None);
        assert!(h.is_available());
    }

    #[test]
    fn registry_keeps_state_across_resolves_and_forgets_unlisted() {
        let reg = HealthRegistry::default();
        let a: SocketAddr = "10.0.0.1:80".parse().unwrap();
        let first = reg.resolve([a]);
        first[0].set_active(false);
        let second = reg.resolve([a]);
        assert!(!second[0].active_ok(), "state survives a new snapshot");
        drop((first, second));
        assert!(reg.resolve([a])[0].active_ok(), "a forgotten endpoint starts healthy");
    }
}

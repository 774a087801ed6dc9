//! Cheap readings of the clock, for what needs milliseconds rather than
//! nanoseconds: a connection's last activity (idle, release and head
//! deadlines), an idle upstream connection's age, passive-health
//! deadlines and the `Date` field.
//!
//! A precise reading (`Instant::now`, `CLOCK_MONOTONIC`) costs about 22 ns
//! on the benchmark machine (the vDSO reads the TSC); a coarse one
//! (`CLOCK_MONOTONIC_COARSE`, also from the vDSO) about 5 ns, and is as old
//! as the kernel's last tick (1 to 10 ms, by `CONFIG_HZ`). A proxied
//! keep-alive request read the clock about nine times; only its start and
//! its end (its duration, for metrics and the access log) need precision.
//!
//! A coarse reading is given as an [`Instant`]: the monotonic clock's
//! coarse and precise readings count from the same origin, so the offset
//! between the two, taken once, maps one onto the other. It may differ
//! from `Instant::now()` by up to one tick, either way.

use std::sync::LazyLock;
use std::time::{Duration, Instant, SystemTime};

/// A precise and a coarse reading taken together.
struct Base {
    precise: Instant,
    coarse: Duration,
}

static BASE: LazyLock<Base> = LazyLock::new(|| Base { coarse: monotonic_coarse(), precise: Instant::now() });

/// Now, to within one tick of the kernel's clock.
pub fn coarse_now() -> Instant {
    let base = &*BASE;
    base.precise + monotonic_coarse().saturating_sub(base.coarse)
}

/// The wall-clock time, to within one tick (for the `Date` field, which
/// counts seconds).
pub fn coarse_system_now() -> SystemTime {
    #[cfg(target_os = "linux")]
    {
        let now = rustix::time::clock_gettime(rustix::time::ClockId::RealtimeCoarse);
        let since = Duration::new(u64::try_from(now.tv_sec).unwrap_or(0), u32::try_from(now.tv_nsec).unwrap_or(0));
        SystemTime::UNIX_EPOCH + since
    }
    #[cfg(not(target_os = "linux"))]
    SystemTime::now()
}

#[cfg(target_os = "linux")]
fn monotonic_coarse() -> Duration {
    let now = rustix::time::clock_gettime(rustix::time::ClockId::MonotonicCoarse);
    Duration::new(u64::try_from(now.tv_sec).unwrap_or(0), u32::try_from(now.tv_nsec).unwrap_or(0))
}

/// Elsewhere, the precise clock (no coarse one is assumed).
#[cfg(not(target_os = "linux"))]
fn monotonic_coarse() -> Duration {
    static ORIGIN: LazyLock<Instant> = LazyLock::new(Instant::now);
    ORIGIN.elapsed()
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Larger than any kernel tick (CONFIG_HZ=100: 10 ms), with room for
    /// a slow test machine between the readings.
    const SLACK: Duration = Duration::from_millis(50);

    fn apart(a: Instant, b: Instant) -> Duration {
        a.checked_duration_since(b).unwrap_or_else(|| b - a)
    }

    #[test]
    fn a_coarse_reading_is_within_a_tick_of_a_precise_one_and_follows_it() {
        let first = coarse_now();
        assert!(apart(first, Instant::now()) < SLACK, "{:?}", apart(first, Instant::now()));
        std::thread::sleep(Duration::from_millis(120));
        let later = coarse_now();
        assert!(later >= first, "coarse time went back");
        let moved = later - first;
        assert!(moved >= Duration::from_millis(120) - SLACK, "coarse time moved only {moved:?} in 120 ms");
        assert!(apart(later, Instant::now()) < SLACK);
    }

    #[test]
    fn the_coarse_wall_clock_is_within_a_tick_of_the_precise_one() {
        let (coarse, precise) = (coarse_system_now(), SystemTime::now());
        let apart = precise.duration_since(coarse).unwrap_or_else(|e| e.duration());
        assert!(apart < SLACK, "{apart:?}");
    }
}

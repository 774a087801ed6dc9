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
//! A coarse reading is given as an [`Instant`]: the coarse and precise
//! monotonic clocks count from the same origin, so a precise reading of
//! the raw clock taken beside an `Instant` once maps every later coarse
//! reading onto `Instant`s. A coarse `Instant` is never later than
//! `Instant::now()`, and earlier by less than one tick.

use std::sync::LazyLock;
use std::time::{Duration, Instant, SystemTime};

/// An `Instant` and the raw monotonic clock, read together.
struct Base {
    instant: Instant,
    monotonic: Duration,
}

static BASE: LazyLock<Base> = LazyLock::new(|| Base { monotonic: monotonic(), instant: Instant::now() });

/// Now, as of the kernel's last tick: never later than `Instant::now()`.
pub fn coarse_now() -> Instant {
    let base = &*BASE;
    let now = monotonic_coarse();
    match now.checked_sub(base.monotonic) {
        Some(since) => base.instant + since,
        None => base.instant.checked_sub(base.monotonic - now).unwrap_or(base.instant),
    }
}

/// The wall-clock time, to within one tick (for the `Date` field, which
/// counts seconds).
pub fn coarse_system_now() -> SystemTime {
    #[cfg(target_os = "linux")]
    return SystemTime::UNIX_EPOCH + read(rustix::time::ClockId::RealtimeCoarse);
    #[cfg(not(target_os = "linux"))]
    SystemTime::now()
}

#[cfg(target_os = "linux")]
fn monotonic_coarse() -> Duration {
    read(rustix::time::ClockId::MonotonicCoarse)
}

/// The clock `Instant` reads.
#[cfg(target_os = "linux")]
fn monotonic() -> Duration {
    read(rustix::time::ClockId::Monotonic)
}

/// A clock's reading, as time since its origin.
#[cfg(target_os = "linux")]
fn read(clock: rustix::time::ClockId) -> Duration {
    let now = rustix::time::clock_gettime(clock);
    Duration::new(u64::try_from(now.tv_sec).unwrap_or(0), u32::try_from(now.tv_nsec).unwrap_or(0))
}

/// Elsewhere, the precise clock (no coarse one is assumed).
#[cfg(not(target_os = "linux"))]
fn monotonic_coarse() -> Duration {
    monotonic()
}

#[cfg(not(target_os = "linux"))]
fn monotonic() -> Duration {
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
    fn a_coarse_reading_is_never_later_than_a_precise_one() {
        // Over several ticks: a mapping off by a fixed amount would show
        // early in each tick.
        let start = Instant::now();
        while start.elapsed() < Duration::from_millis(40) {
            let coarse = coarse_now();
            let precise = Instant::now();
            assert!(coarse <= precise, "coarse {coarse:?} after precise {precise:?}");
        }
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

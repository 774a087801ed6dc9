//! Pacing for control-plane work while configuration churns.
//!
//! Parsing, compiling and publishing a large configuration takes
//! milliseconds of CPU. Where the controller shares a core with dataplane
//! threads, the kernel lets it run a whole time slice (a few milliseconds)
//! before a dataplane thread that woke up with a request gets the core
//! back, and those requests wait.
//!
//! A lone change should apply as fast as possible: someone is waiting for
//! it. But while changes keep coming, or when one change is bulk (a
//! rollout's EndpointSlices, a large apply), the latency of any one of
//! them matters less than that of the requests. So a source calls
//! [`caught_up`] when it starts applying everything received so far, and
//! [`behind`] when another change arrives meanwhile or the one at hand
//! holds at least [`BULK`] objects. Long loops call [`yield_point`], which,
//! while behind, yields the CPU every [`SLICE`] of work so that a waiting
//! request runs first. Slower applies then take in more changes each.

use std::cell::Cell;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

/// Work between two yields while behind.
pub const SLICE: Duration = Duration::from_micros(200);

/// Objects in one change from which it is applied paced.
pub const BULK: usize = 100;

/// A change arrived that the work in progress does not include.
static BEHIND: AtomicBool = AtomicBool::new(false);

thread_local! {
    static SINCE: Cell<Option<Instant>> = const { Cell::new(None) };
}

/// A change arrived that the work in progress does not include, or the
/// work at hand is bulk: pace it.
pub fn behind() {
    BEHIND.store(true, Ordering::Relaxed);
}

/// Work on every change received so far is starting.
pub fn caught_up() {
    BEHIND.store(false, Ordering::Relaxed);
}

/// Whether [`behind`] was called since the last [`caught_up`].
pub fn is_behind() -> bool {
    BEHIND.load(Ordering::Relaxed)
}

/// While behind, yields the CPU once this thread has worked
/// [`SLICE`] since its last yield. Cheap enough to call for every item of
/// a loop (one atomic load otherwise).
pub fn yield_point() {
    if !is_behind() {
        return;
    }
    SINCE.with(|since| {
        let now = Instant::now();
        match since.get() {
            Some(start) if now.duration_since(start) < SLICE => {}
            Some(_) => {
                std::thread::yield_now();
                since.set(Some(Instant::now()));
            }
            None => since.set(Some(now)),
        }
    });
}
